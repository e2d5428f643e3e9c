/*
 * test_cfg_parse.c - the configuration parser: lexing, blocks, includes,
 * every error path (each with its file:line and message), warnings
 *
 * Owns a temporary directory (created in the group setup, removed in the
 * teardown) holding include files and a DKIM key generated with OpenSSL.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

#include <cmocka.h>

#include "unit.h"


#include "cfg.h"
#include "test_keys.h"

static char tmpdir[] = "/tmp/test_cfg_parse.XXXXXX";
static char keyfile[256];
static char diags[1 << 17];
static unsigned nwarnings;

static void
collect(void *ctx, enum cfg_diag_level level, const char *file, unsigned line, const char *message)
{
    size_t used = strlen(diags);
    (void)ctx;
    if (level == CFG_DIAG_WARNING)
        nwarnings++;
    snprintf(diags + used, sizeof diags - used, "%s:%u: %s: %s\n", file ? file : "-", line,
             level == CFG_DIAG_ERROR ? "error" : "warning", message);
}

static struct cfg *
load_text(const char *text, unsigned *nerrors)
{
    diags[0] = 0;
    nwarnings = 0;
    return cfg_load_string("t.conf", text, collect, NULL, nerrors);
}

static void
assert_diag(const char *want)
{
    if (!strstr(diags, want))
        fail_msg("expected \"%s\" among the diagnostics:\n%s", want, diags);
}

/* expect_error - TEXT fails to load and the diagnostics contain WANT */
static void
expect_error(const char *text, const char *want)
{
    unsigned n = 0;
    struct cfg *c = load_text(text, &n);
    if (c) {
        cfg_free(c);
        fail_msg("loaded without error, expected \"%s\"", want);
    }
    assert_true(n >= 1);
    assert_diag(want);
}

static struct cfg *
expect_ok(const char *text)
{
    unsigned n = 99;
    struct cfg *c = load_text(text, &n);
    if (!c)
        fail_msg("load failed:\n%s", diags);
    assert_int_equal(n, 0);
    return c;
}

static void
write_file(const char *name, const char *text)
{
    char path[512];
    FILE *f;
    snprintf(path, sizeof path, "%s/%s", tmpdir, name);
    f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static int
group_setup(void **state)
{
    (void)state;
    if (!mkdtemp(tmpdir))
        return -1;
    snprintf(keyfile, sizeof keyfile, "%s/dkim.key", tmpdir);
    test_make_key(keyfile);
    return 0;
}

static int
group_teardown(void **state)
{
    char cmd[300];
    (void)state;
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

static const struct cfg_value *
domain_value(struct cfg *c, const char *domain, enum cfg_directive d)
{
    static struct cfg_resolved r;
    assert_int_equal(cfg_resolve_queue(c, domain, NULL, &r), 0);
    return r.v[d];
}

/* --- lexing --------------------------------------------------------------------------- */

static void
test_comments(void **state)
{
    struct cfg *c;
    (void)state;
    c = expect_ok("# a comment line\n"
                  "<!-- Handling the Giants: Gmail -->\n"
                  "<domain gmail.com>   # tag with a comment\n"
                  "  max-msg-rate 100/s <!-- Don't flood Google -->\n"
                  "  max-rcpt-per-transaction 100<!--no space-->\n"
                  "  <!-- a comment\n"
                  "       over three\n"
                  "       lines --> max-smtp-out 7\n"
                  "  retry-after 10m # trailing\n"
                  "</domain>\n");
    assert_int_equal(domain_value(c, "gmail.com", CFG_D_MAX_MSG_RATE)->num, 100);
    assert_int_equal(domain_value(c, "gmail.com", CFG_D_MAX_MSG_RATE)->line, 4);
    assert_int_equal(domain_value(c, "gmail.com", CFG_D_MAX_RCPT_PER_TRANSACTION)->num, 100);
    /* text after a multi-line comment continues the line the comment began on */
    assert_int_equal(domain_value(c, "gmail.com", CFG_D_MAX_SMTP_OUT)->num, 7);
    assert_int_equal(domain_value(c, "gmail.com", CFG_D_MAX_SMTP_OUT)->line, 6);
    assert_int_equal(domain_value(c, "gmail.com", CFG_D_RETRY_AFTER)->line, 9);
    cfg_free(c);
}

static void
test_unterminated_comment(void **state)
{
    (void)state;
    expect_error("host-name a.example\n<!-- never closed\nspool /x\n",
                 "t.conf:2: error: unterminated <!-- comment");
}

static void
test_quoted_strings(void **state)
{
    struct cfg *c;
    uint32_t u;
    const struct cfg_value *v;
    (void)state;
    c = expect_ok("<smtp-user bob>\n"
                  "  password \"p#ss \\\"word\\\\ <!-- x -->\"\n"
                  "</smtp-user>\n"
                  "host-name \"mta.example.com\"\n");
    u = cfg_find_scope(c, CFG_S_SMTP_USER, "bob");
    assert_int_not_equal(u, CFG_NONE);
    v = cfg_scope_get(c, u, CFG_D_PASSWORD);
    assert_non_null(v);
    assert_string_equal(cfg_str(c, v->text), "p#ss \"word\\ <!-- x -->");
    assert_string_equal(cfg_str(c, cfg_global(c, CFG_D_HOST_NAME)->text), "mta.example.com");
    cfg_free(c);
    expect_error("host-name \"unterminated\n", "t.conf:1: error: unterminated quoted string");
    expect_error("host-name \"a\" b\n", "t.conf:1: error: too many values for 'host-name'");
}

static void
test_key_equals_value(void **state)
{
    struct cfg *c;
    (void)state;
    c = expect_ok("# Authentication settings\n"
                  "auth_type = \"auth_file\"\n"
                  "auth_file=\"/etc/powermta/auth_file\"\n");
    assert_string_equal(cfg_str(c, cfg_global(c, CFG_D_AUTH_TYPE)->text), "auth_file");
    assert_string_equal(cfg_str(c, cfg_global(c, CFG_D_AUTH_FILE)->text),
                        "/etc/powermta/auth_file");
    assert_int_equal(cfg_global(c, CFG_D_AUTH_FILE)->line, 3);
    /* both are implemented (smtpd's AUTH against the file): no warning */
    assert_int_equal(nwarnings, 0);
    cfg_free(c);
}

static void
test_line_too_long(void **state)
{
    size_t n = 70000;
    char *text = malloc(n + 64);
    (void)state;
    assert_non_null(text);
    strcpy(text, "host-name a\nhost-name ");
    memset(text + strlen(text), 'x', n);
    strcpy(text + 22 + n, "\n");
    expect_error(text, "t.conf:2: error: line too long (more than 65536 bytes)");
    free(text);
}

/* --- directives and values ------------------------------------------------------------------ */

static void
test_unknown_directive(void **state)
{
    (void)state;
    expect_error(
        "<domain *>\n  max-smpt-out 20\n</domain>\n",
        "t.conf:2: error: unknown directive 'max-smpt-out' (did you mean 'max-smtp-out'?)");
    expect_error("\n\nfrobnicate-widgets yes\n",
                 "t.conf:3: error: unknown directive 'frobnicate-widgets'\n");
}

static void
test_wrong_scope(void **state)
{
    (void)state;
    expect_error("max-smtp-out 20\n",
                 "t.conf:1: error: directive 'max-smtp-out' is not allowed at global level; "
                 "it belongs in <domain>, <virtual-mta>");
    expect_error("<source 0/0>\n  bounce-after 1d\n</source>\n",
                 "t.conf:2: error: directive 'bounce-after' is not allowed in <source>; it belongs "
                 "in <domain>");
}

static void
test_bad_values(void **state)
{
    (void)state;
    expect_error("<domain *>\nuse-starttls maybe\n</domain>\n",
                 "t.conf:2: error: bad value 'maybe' for 'use-starttls' (expected yes or no)");
    expect_error(
        "<domain *>\nmax-smtp-out twenty\n</domain>\n",
        "t.conf:2: error: bad value 'twenty' for 'max-smtp-out' (expected a whole number)");
    expect_error("<domain *>\nqueue-priority 101\n</domain>\n",
                 "t.conf:2: error: value '101' for 'queue-priority' is out of range (0..100)");
    expect_error("<domain *>\nbounce-after 99999999999999999999d\n</domain>\n",
                 "t.conf:2: error: value '99999999999999999999d' for 'bounce-after' is too large");
    expect_error("<domain *>\nbounce-after 4x\n</domain>\n",
                 "t.conf:2: error: bad value '4x' for 'bounce-after' (expected a time interval");
    expect_error("<domain *>\nretry-after 10m,,1h\n</domain>\n",
                 "t.conf:2: error: bad value '10m,,1h' for 'retry-after' (expected a list");
    expect_error("<domain *>\nmax-msg-rate 0/h\n</domain>\n",
                 "t.conf:2: error: bad value '0/h' for 'max-msg-rate' (expected a rate");
    expect_error("<source 0/0>\nmax-message-size 10q\n</source>\n",
                 "t.conf:2: error: bad value '10q' for 'max-message-size' (expected a size");
    expect_error("<domain *>\ndkim-body-canon loose\n</domain>\n",
                 "t.conf:2: error: bad value 'loose' for 'dkim-body-canon' (expected one of "
                 "relaxed,simple)");
    expect_error("<domain *>\nmax-smtp-out\n</domain>\n",
                 "t.conf:2: error: missing value for 'max-smtp-out'");
    expect_error("<domain *>\nmax-smtp-out 20 30\n</domain>\n",
                 "t.conf:2: error: too many values for 'max-smtp-out': '20 30'");
    expect_error("<acct-file /x.csv>\nmax-size 100k\n</acct-file>\n",
                 "t.conf:2: error: max-size 100k is below the minimum of 1M");
    expect_error("<acct-file /x.csv>\nrecords d,zz\n</acct-file>\n",
                 "t.conf:2: error: unknown accounting record type 'zz'");
    expect_error("smtp-listener 127.0.0.1\n",
                 "t.conf:1: error: bad smtp-listener address '127.0.0.1' (expected IP:PORT)");
    expect_error("smtp-listener 127.0.0.1:99999\n", "t.conf:1: error: bad smtp-listener address");
    expect_error("smtp-source-host 300.1.1.1 a.example\n",
                 "t.conf:1: error: bad IP address '300.1.1.1' in smtp-source-host");
    expect_error("http-access 127.0.0.1 superuser\n",
                 "t.conf:1: error: unknown http-access level 'superuser'");
    expect_error("name-server 1.2.3\n", "t.conf:1: error: bad name-server '1.2.3'");
    expect_error("<domain *>\nmax-data-volume-rate 100M\n</domain>\n",
                 "t.conf:2: error: bad value '100M' for 'max-data-volume-rate' (expected a data "
                 "volume rate");
    expect_error("<domain *>\nsource-ip-max-smtp-out 10.0.0.0/8\n</domain>\n",
                 "t.conf:2: error: bad value for 'source-ip-max-smtp-out' (expected a CIDR and a "
                 "limit");
    expect_error("<domain *>\nsource-ip-max-smtp-out 10.0.0.0/33 4\n</domain>\n",
                 "t.conf:2: error: bad CIDR '10.0.0.0/33' for 'source-ip-max-smtp-out'");
    expect_error("<domain *>\nsource-ip-max-smtp-out 0/0 four\n</domain>\n",
                 "t.conf:2: error: bad limit 'four' for 'source-ip-max-smtp-out' (expected a whole "
                 "number)");
    expect_error("<domain *>\nsource-ip-max-msg-rate 0/0 10\n</domain>\n",
                 "t.conf:2: error: bad limit '10' for 'source-ip-max-msg-rate' (expected a rate");
    expect_error("<domain *>\nsource-ip-max-msg-rate 0/0 10/s 5\n</domain>\n",
                 "t.conf:2: error: bad value for 'source-ip-max-msg-rate'");
    expect_error("<domain *>\nsource-ip-max-data-volume-rate ::1 lots/s\n</domain>\n",
                 "t.conf:2: error: bad limit 'lots/s' for 'source-ip-max-data-volume-rate' "
                 "(expected a data volume rate");
}

static void
test_warmup_plans(void **state)
{
    struct cfg *c;
    const struct cfg_value *v;
    uint32_t s, it = 0, n = 0;
    (void)state;
    c = expect_ok("<warmup-plan fresh>\n  day 1 50\n  day 3 200\n  destination gmail.rollup\n"
                  "  destination *\n  max-deferral-rate 5%\n  overflow-virtual-mta spare\n"
                  "</warmup-plan>\n<warmup-plan dbl>\n  day 1 100\n"
                  "  double-every 2d until 50000\n</warmup-plan>\n"
                  "<virtual-mta spare>\n</virtual-mta>\n"
                  "<virtual-mta v>\n  warmup-plan fresh\n  cold-virtual-mta spare\n</virtual-mta>\n"
                  "<domain *>\n  max-cold-virtual-mta-msg 100/d\n</domain>\n");
    assert_int_equal(nwarnings, 0);
    s = cfg_find_scope(c, CFG_S_WARMUP_PLAN, "fresh");
    assert_int_not_equal(s, CFG_NONE);
    while ((v = cfg_scope_next(c, s, CFG_D_WARMUP_DAY, &it)) != NULL)
        n++;
    assert_int_equal(n, 2);
    v = cfg_scope_get(c, s, CFG_D_WARMUP_DAY);
    assert_int_equal(v->num, 1);
    assert_int_equal(v->num2, 50);
    assert_int_equal(cfg_scope_get(c, s, CFG_D_WARMUP_MAX_DEFERRAL_RATE)->num, 50000);
    v = cfg_scope_get(c, cfg_find_scope(c, CFG_S_WARMUP_PLAN, "dbl"), CFG_D_WARMUP_DOUBLE_EVERY);
    assert_int_equal(v->num, 2 * 86400);
    assert_int_equal(v->num2, 50000);
    cfg_free(c);
    expect_error("<warmup-plan a>\n  day 2 50\n</warmup-plan>\n",
                 "t.conf:1: error: <warmup-plan a> has no 'day 1' line");
    expect_error("<warmup-plan a>\n  destination *\n</warmup-plan>\n",
                 "t.conf:1: error: <warmup-plan a> has no steps");
    expect_error("<warmup-plan a>\n  day 1 5\n  day 1 6\n</warmup-plan>\n",
                 "t.conf:3: error: <warmup-plan a>: day 1 is given twice");
    expect_error("<warmup-plan a>\n  day 1 5\n  day 2 9\n  double-every 1d until 99\n"
                 "</warmup-plan>\n",
                 "t.conf:1: error: <warmup-plan a>: double-every grows from day 1 alone");
    expect_error("<warmup-plan a>\n  day 0 5\n</warmup-plan>\n",
                 "t.conf:2: error: bad value '0 5' for 'day' (expected a day and its cap");
    expect_error("<warmup-plan a>\n  day 1 5\n  double-every 30m until 99\n</warmup-plan>\n",
                 "t.conf:3: error: bad value '30m until 99' for 'double-every'");
    expect_error("<warmup-plan a>\n  day 1 5\n  max-deferral-rate 120%\n</warmup-plan>\n",
                 "t.conf:3: error: bad value '120%' for 'max-deferral-rate' (expected a "
                 "percentage");
    expect_error("<warmup-plan a>\n  day 1 5\n</warmup-plan>\n<warmup-plan a>\n  day 1 5\n"
                 "</warmup-plan>\n",
                 "t.conf:4: error: <warmup-plan a> is already defined at t.conf:1");
    expect_error("<virtual-mta v>\n  warmup-plan none\n</virtual-mta>\n",
                 "t.conf:2: error: warmup-plan 'none': no <warmup-plan> named 'none' is defined");
    expect_error("<warmup-plan a>\n  day 1 5\n  overflow-virtual-mta nowhere\n</warmup-plan>\n",
                 "t.conf:3: error: overflow-virtual-mta 'nowhere'");
}

static void
test_mx_rollup_lines(void **state)
{
    struct cfg *c;
    const struct cfg_value *v;
    uint32_t s, it = 0;
    (void)state;
    c = expect_ok("<mx-rollup-list>\n"
                  "  mx *.Google.TEST google.rollup\n"
                  "  mx mx?.example.net Example.Rollup\n"
                  "</mx-rollup-list>\n"
                  "<domain a.test>\n  queue-to merged.test\n  disable-mx-rollup yes\n</domain>\n");
    assert_int_equal(nwarnings, 0);
    s = cfg_find_scope(c, CFG_S_MX_ROLLUP_LIST, "");
    assert_int_not_equal(s, CFG_NONE);
    v = cfg_scope_next(c, s, CFG_D_MX, &it);
    assert_non_null(v);
    assert_string_equal(cfg_str(c, v->rollup.pattern), "*.google.test");
    assert_string_equal(cfg_str(c, v->rollup.name), "google.rollup");
    v = cfg_scope_next(c, s, CFG_D_MX, &it);
    assert_string_equal(cfg_str(c, v->rollup.name), "example.rollup");
    assert_string_equal(cfg_str(c, domain_value(c, "a.test", CFG_D_QUEUE_TO)->text), "merged.test");
    assert_int_equal(domain_value(c, "a.test", CFG_D_DISABLE_MX_ROLLUP)->num, 1);
    cfg_free(c);
    c = expect_ok("<mx-rollup-list>\n  mx *.yahoodns.net yahoo.rollup rollup-by-ip\n"
                  "</mx-rollup-list>\n");
    assert_int_equal(nwarnings, 1);
    assert_diag("t.conf:2: warning: rollup-by-ip is not implemented yet; yahoo.rollup rolls up "
                "by MX name");
    cfg_free(c);
    expect_error("<mx-rollup-list>\n  mx *.google.test\n</mx-rollup-list>\n",
                 "t.conf:2: error: bad mx line (expected MXNAME ROLLUP-NAME [rollup-by-ip]");
    expect_error("<mx-rollup-list>\n  mx *.google.test g.rollup by-ip\n</mx-rollup-list>\n",
                 "t.conf:2: error: bad mx line");
    expect_error("<mx-rollup-list>\n  mx mx[1].google.test g.rollup\n</mx-rollup-list>\n",
                 "t.conf:2: error: bad MX host pattern 'mx[1].google.test'");
    expect_error("<mx-rollup-list>\n  mx *.google.test g*.rollup\n</mx-rollup-list>\n",
                 "t.conf:2: error: bad rollup name 'g*.rollup'");
    expect_error("<domain a.test>\n  mx *.google.test g.rollup\n</domain>\n", "t.conf:2: error:");
}

static void
test_source_limits_decoded(void **state)
{
    struct cfg *c;
    const struct cfg_value *v;
    (void)state;
    c = expect_ok("<domain *>\n"
                  "  source-ip-max-smtp-out 10.1.0.0/16 4\n"
                  "  source-ip-max-msg-rate 0/0 100/h\n"
                  "  source-ip-max-connect-rate 2001:db8::/32 3/5s\n"
                  "  source-ip-max-data-volume-rate 192.0.2.7 50M/h\n"
                  "  max-data-volume-rate 1g/d\n"
                  "  backoff-max-data-volume-rate 100m/d\n"
                  "</domain>\n");
    assert_int_equal(nwarnings, 0);
    v = domain_value(c, "x.org", CFG_D_SOURCE_IP_MAX_SMTP_OUT);
    assert_int_equal(v->source.limit, 4);
    assert_int_equal(v->source.prefix, 16);
    assert_int_equal(v->source.addr[1], 1);
    assert_string_equal(cfg_str(c, v->text), "10.1.0.0/16 4");
    v = domain_value(c, "x.org", CFG_D_SOURCE_IP_MAX_MSG_RATE);
    assert_int_equal(v->source.limit, 100);
    assert_int_equal(v->source.period, 3600);
    assert_int_equal(v->source.prefix, 0);
    v = domain_value(c, "x.org", CFG_D_SOURCE_IP_MAX_CONNECT_RATE);
    assert_int_equal(v->source.limit, 3);
    assert_int_equal(v->source.period, 5);
    assert_int_equal(v->source.prefix, 32);
    v = domain_value(c, "x.org", CFG_D_SOURCE_IP_MAX_DATA_VOLUME_RATE);
    assert_int_equal(v->source.limit, 50LL << 20);
    assert_int_equal(v->source.prefix, 32);
    assert_int_equal(domain_value(c, "x.org", CFG_D_MAX_DATA_VOLUME_RATE)->num, 1LL << 30);
    assert_int_equal(domain_value(c, "x.org", CFG_D_BACKOFF_MAX_DATA_VOLUME_RATE)->num2, 86400);
    cfg_free(c);
}

static void
test_values_decoded(void **state)
{
    struct cfg *c;
    const struct cfg_value *v;
    uint32_t it = 0, n = 0;
    (void)state;
    c = expect_ok("name-server 127.0.0.1:5353\n"
                  "name-server [::1]:53\n"
                  "name-server 192.0.2.53\n"
                  "smtp-listener 0/0:25\n"
                  "smtp-listener [::1]:2525\n"
                  "<domain *>\n"
                  "  retry-after 10m,1h,4h\n"
                  "  max-msg-rate 3000/hour\n"
                  "  dkim-sign if-x-dkim-options-present\n"
                  "  route [192.0.2.1]:25\n"
                  "  max-rcpt-per-message 250\n"
                  "</domain>\n");
    while (cfg_scope_next(c, 0, CFG_D_NAME_SERVER, &it))
        n++;
    assert_int_equal(n, 3); /* repeatable: every line kept */
    v = domain_value(c, "x.org", CFG_D_RETRY_AFTER);
    assert_int_equal(v->list_len, 3);
    assert_int_equal(cfg_list(c, v)[2], 4 * 3600);
    v = domain_value(c, "x.org", CFG_D_MAX_MSG_RATE);
    assert_int_equal(v->num, 3000);
    assert_int_equal(v->num2, 3600);
    assert_string_equal(cfg_str(c, v->text), "3000/hour");
    assert_int_equal(domain_value(c, "x.org", CFG_D_DKIM_SIGN)->num, 2);
    assert_string_equal(cfg_str(c, domain_value(c, "x.org", CFG_D_SMTP_HOSTS)->text),
                        "[192.0.2.1]:25");
    assert_int_equal(domain_value(c, "x.org", CFG_D_MAX_RCPT_PER_TRANSACTION)->num, 250);
    cfg_free(c);
}

static void
test_later_line_replaces(void **state)
{
    struct cfg *c;
    (void)state;
    c = expect_ok("<domain *>\nmax-smtp-out 5\nmax-smtp-out 9\n</domain>\n");
    assert_int_equal(domain_value(c, "a.com", CFG_D_MAX_SMTP_OUT)->num, 9);
    assert_int_equal(domain_value(c, "a.com", CFG_D_MAX_SMTP_OUT)->line, 3);
    cfg_free(c);
}

static void
test_not_implemented_warns_once(void **state)
{
    struct cfg *c;
    (void)state;
    c = expect_ok(
        "<domain a.com>\nreuse-ssl-session no\n</domain>\n<domain b.com>\nreuse-ssl-session "
        "yes\n</domain>\n");
    assert_int_equal(nwarnings, 1);
    assert_diag("t.conf:2: warning: directive 'reuse-ssl-session' is not implemented yet; ignored");
    cfg_free(c);
    c = expect_ok("<transmissions-api>\n  anything goes here\n</transmissions-api>\n");
    assert_int_equal(nwarnings, 1);
    assert_diag("t.conf:1: warning: block <transmissions-api> is not implemented yet; ignored");
    cfg_free(c);
    /* one that would change where mail goes is refused, with its line */
    expect_error("<domain a.com>\n  max-smtp-out 2\n  reroute-to-virtual-mta other\n</domain>\n",
                 "t.conf:3: error: directive 'reroute-to-virtual-mta' is not implemented, and "
                 "ignoring it would change where mail goes");
    expect_error("<source 1.2.3.4>\n  bcc audit@example.com\n</source>\n",
                 "t.conf:2: error: directive 'bcc' is not implemented");
}

/* --- blocks -------------------------------------------------------------------------------- */

static void
test_block_errors(void **state)
{
    (void)state;
    expect_error("host-name a\n<domain x.com>\nmax-smtp-out 3\n",
                 "t.conf:2: error: <domain> is not closed by the end of t.conf");
    expect_error(
        "<virtual-mta v>\n<domain a.com>\n</virtual-mta>\n",
        "t.conf:3: error: mismatched </virtual-mta>: <domain> opened at t.conf:2 is not closed");
    expect_error("\n</domain>\n", "t.conf:2: error: </domain> without an open <domain>");
    expect_error("<domian x.com>\n</domian>\n", "t.conf:1: error: unknown block <domian>");
    expect_error("<domain x.com>\n<source 0/0>\n</source>\n</domain>\n",
                 "t.conf:2: error: <source> is not allowed inside <domain>");
    expect_error("<virtual-mta>\n</virtual-mta>\n",
                 "t.conf:1: error: <virtual-mta> needs an argument");
    expect_error("<domain x.com\n",
                 "t.conf:1: error: tag '<domain x.com' is missing its closing '>'");
    expect_error("<virtual-mta v1>\n</virtual-mta>\n<virtual-mta-pool v1>\n</virtual-mta-pool>\n",
                 "t.conf:3: error: <virtual-mta-pool v1> is already defined at t.conf:1");
}

static void
test_patterns_and_cidrs(void **state)
{
    (void)state;
    expect_error("<source 10.0.0.0/33>\n</source>\n",
                 "t.conf:1: error: bad CIDR '10.0.0.0/33' in <source>");
    expect_error("<source 10.0.0.256>\n</source>\n",
                 "t.conf:1: error: bad CIDR '10.0.0.256' in <source>");
    expect_error("<source {nobody}>\n</source>\n",
                 "t.conf:1: error: unknown reserved source name '{nobody}'");
    expect_error("<domain [10.0.0.0/40]>\n</domain>\n",
                 "t.conf:1: error: bad CIDR '[10.0.0.0/40]' in <domain>");
    expect_error("<domain a*b.com>\n</domain>\n", "t.conf:1: error: bad domain pattern 'a*b.com'");
    expect_error("<domain a.com,,b.com>\n</domain>\n",
                 "t.conf:1: error: empty domain pattern in <domain>");
}

static void
test_macros(void **state)
{
    struct cfg *c;
    uint32_t it = 0, n = 0;
    (void)state;
    c = expect_ok("domain-macro tlds com, fr\n"
                  "domain-macro brands hotmail, $more\n"
                  "domain-macro more live, msn\n"
                  "<domain $brands.$tlds>\n  max-smtp-out 4\n</domain>\n");
    while (cfg_next_scope(c, CFG_S_DOMAIN, &it) != CFG_NONE)
        n++;
    assert_int_equal(n, 6); /* 3 brands x 2 tlds, nested macro */
    assert_int_not_equal(cfg_find_scope(c, CFG_S_DOMAIN, "msn.fr"), CFG_NONE);
    assert_true(c->scopes[cfg_find_scope(c, CFG_S_DOMAIN, "live.com")].flags &
                CFG_SCOPE_FROM_MACRO);
    cfg_free(c);
    expect_error("<domain yahoo.$nope>\n</domain>\n",
                 "t.conf:1: error: unknown domain-macro '$nope'");
    expect_error("domain-macro a x, $b\ndomain-macro b $a\n<domain $a.com>\n</domain>\n",
                 "t.conf:3: error: domain-macro loop: '$a' refers to itself");
    expect_error("domain-macro a x\ndomain-macro a y\n",
                 "t.conf:2: error: domain-macro 'a' defined twice");
}

/* --- pattern lists ---------------------------------------------------------------------------- */

static void
test_reply_patterns(void **state)
{
    struct cfg *c;
    (void)state;
    c = expect_ok("<smtp-pattern-list l>\n"
                  "  reply /^421 .* too many errors/ mode=backoff\n"
                  "  reply /\\[TS03\\] All messages from/ mode=backoff, disable-source-ip, "
                  "reenable-after=1h\n"
                  "  reply /a\\/b/ skip-mx,defer-queue\n"
                  "  reply /x/ mode=backoff,backoff-to-normal-after=30m\n"
                  "</smtp-pattern-list>\n");
    cfg_free(c);
    expect_error(
        "<smtp-pattern-list l>\n\n  reply /(unclosed/ mode=backoff\n</smtp-pattern-list>\n",
        "t.conf:3: error: bad regular expression /(unclosed/: missing closing parenthesis");
    expect_error(
        "<smtp-pattern-list l>\nreply /x/ mode=backoff,mode=normal\n</smtp-pattern-list>\n",
        "t.conf:2: error: reply action mode=backoff cannot be combined with mode=normal");
    expect_error("<smtp-pattern-list l>\nreply /x/ skip-mx,bounce-queue\n</smtp-pattern-list>\n",
                 "t.conf:2: error: reply action skip-mx cannot be combined with bounce-queue");
    expect_error("<smtp-pattern-list l>\nreply /x/ reenable-after=1h\n</smtp-pattern-list>\n",
                 "t.conf:2: error: reply action reenable-after needs disable-source-ip");
    expect_error(
        "<smtp-pattern-list l>\nreply /x/ disable-source-ip,reenable-after=1h,reenable-after=2h\n"
        "</smtp-pattern-list>\n",
        "t.conf:2: error: reply action reenable-after given more than once");
    expect_error("<smtp-pattern-list l>\nreply /x/ explode\n</smtp-pattern-list>\n",
                 "t.conf:2: error: unknown reply action 'explode'");
    expect_error("<smtp-pattern-list l>\nreply /x/\n</smtp-pattern-list>\n",
                 "t.conf:2: error: reply /x/ has no action");
    expect_error("<smtp-pattern-list l>\nreply x mode=backoff\n</smtp-pattern-list>\n",
                 "t.conf:2: error: reply needs /REGEX/ followed by actions");
}

static void
test_other_pattern_lists(void **state)
{
    struct cfg *c;
    (void)state;
    c = expect_ok("<virtual-mta v>\n</virtual-mta>\n"
                  "<pattern-list p>\n"
                  "  mail-from /@billing\\./ virtual-mta=v\n"
                  "  rcpt-to /@gmail\\.com$/ call-to:q\n"
                  "  header X-Prio /^1/ recipient-priority=90\n"
                  "</pattern-list>\n<pattern-list q>\n</pattern-list>\n"
                  "<bounce-category-patterns>\n  /mailbox full/ quota-issues\n  // other\n"
                  "</bounce-category-patterns>\n");
    cfg_free(c);
    expect_error("<pattern-list p>\nmail-from /x/ virtual-mta=ghost\n</pattern-list>\n",
                 "t.conf:2: error: virtual-mta= 'ghost': no <virtual-mta> or <virtual-mta-pool> "
                 "named 'ghost'");
    expect_error("<pattern-list p>\nrcpt-to /x[/ virtual-mta=v\n</pattern-list>\n",
                 "t.conf:2: error: bad regular expression /x[/");
    expect_error("<pattern-list p>\nrcpt-to /x/ launch=now\n</pattern-list>\n",
                 "t.conf:2: error: unknown pattern result 'launch=now'");
    expect_error("<bounce-category-patterns>\n/spam/\n</bounce-category-patterns>\n",
                 "t.conf:2: error: bounce category pattern needs /REGEX/ and one category name");
    expect_error("<bounce-category-patterns>\n/sp(am/ spam-related\n</bounce-category-patterns>\n",
                 "t.conf:2: error: bad regular expression /sp(am/");
}

/* --- cross references, checked after the whole file
 * -------------------------------------------------- */

static void
test_cross_references(void **state)
{
    struct cfg *c;
    (void)state;
    /* a use before the definition is fine */
    c = expect_ok("<domain a.com>\n smtp-pattern-list later\n</domain>\n"
                  "<smtp-pattern-list later>\n reply /x/ mode=backoff\n</smtp-pattern-list>\n");
    cfg_free(c);
    expect_error("<virtual-mta-pool p>\n  virtual-mta ghost\n</virtual-mta-pool>\n",
                 "t.conf:2: error: virtual-mta 'ghost': no <virtual-mta> named 'ghost' is defined");
    expect_error("<domain a.com>\n\n  smtp-pattern-list nope\n</domain>\n",
                 "t.conf:3: error: smtp-pattern-list 'nope': no <smtp-pattern-list> named 'nope' "
                 "is defined");
    expect_error("<sender s@example.com>\n  vmta txn-vmtx\n</sender>\n",
                 "t.conf:2: error: vmta 'txn-vmtx': no <virtual-mta> or <virtual-mta-pool> named "
                 "'txn-vmtx'");
    expect_error("<source 0/0>\n  pattern-list pl\n</source>\n",
                 "t.conf:2: error: pattern-list 'pl': no <pattern-list> named 'pl' is defined");
    expect_error(
        "smtp-listener 127.0.0.1:25 source=feeders\n",
        "t.conf:1: error: smtp-listener source= 'feeders': no <source> named 'feeders' is defined");
    expect_error("<smtp-listener 127.0.0.1:465>\n  source nope\n</smtp-listener>\n",
                 "t.conf:2: error: source 'nope': no <source> named 'nope' is defined");
    expect_error("<smtp-user u>\n  source nope\n</smtp-user>\n",
                 "t.conf:2: error: source 'nope': no <source> named 'nope' is defined");
    expect_error("invalid-virtual-mta-fallback nowhere\n",
                 "t.conf:1: error: invalid-virtual-mta-fallback 'nowhere': no <virtual-mta> or");
    expect_error("<domain a.com>\n  backoff-reroute-to-virtual-mta v9\n</domain>\n",
                 "t.conf:2: error: backoff-reroute-to-virtual-mta 'v9': no <virtual-mta>");
}

static void
test_dkim_key_files(void **state)
{
    char text[1024];
    struct cfg *c;
    (void)state;
    snprintf(text, sizeof text,
             "domain-key s1,example.com,%s\n<domain a.com>\n dkim-selector s\n"
             " dkim-key-file %s\n</domain>\n",
             keyfile, keyfile);
    c = expect_ok(text);
    assert_int_equal(nwarnings, 0);
    cfg_free(c);
    /* a key every local user can read: loads, with a warning naming the mode */
    assert_int_equal(chmod(keyfile, 0644), 0);
    c = expect_ok(text);
    assert_int_equal(nwarnings, 2);
    assert_diag("is readable by every local user (mode 0644)");
    cfg_free(c);
    assert_int_equal(chmod(keyfile, 0600), 0);
    expect_error("domain-key s1,example.com,/nonexistent/key.pem\n",
                 "t.conf:1: error: cannot read DKIM key file '/nonexistent/key.pem': No such file "
                 "or directory");
    expect_error("<domain a.com>\n dkim-key-file /nonexistent/k.pem\n</domain>\n",
                 "t.conf:2: error: cannot read DKIM key file '/nonexistent/k.pem'");
    expect_error(
        "domain-key s1,example.com\n",
        "t.conf:1: error: bad domain-key 's1,example.com' (expected SELECTOR,DOMAIN,KEYFILE)");
}

/*
 * test_dkim_keys_that_cannot_sign - the load-time refusal table: every key
 * file that could not sign is an error at its file:line, in a domain-key
 * line and in a dkim-key-file alike (never a 451 on every message later)
 */
static void
test_dkim_keys_that_cannot_sign(void **state)
{
    static const struct {
        enum test_bad_key kind;
        const char *why;
    } bad[] = {
        { TEST_KEY_EC_P256, "a EC key, which cannot sign DKIM (an RSA key signs rsa-sha256, an "
                            "Ed25519 key ed25519-sha256)" },
        { TEST_KEY_ED448, "a ED448 key, which cannot sign DKIM" },
        { TEST_KEY_X25519, "a X25519 key, which cannot sign DKIM" },
        { TEST_KEY_RSA_512, "RSA key has 512 bits, fewer than 1024" },
        { TEST_KEY_ENCRYPTED, "encrypted private key (a key pmtad uses needs no passphrase)" },
        { TEST_KEY_PUBLIC, "not an unencrypted private key in PEM form" },
    };
    char path[300], text[700], want[800];
    (void)state;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(path, sizeof path, "%s/bad%zu.key", tmpdir, i);
        test_make_bad_key(path, bad[i].kind);
        snprintf(text, sizeof text, "host-name a\ndomain-key s,example.com,%s\n", path);
        snprintf(want, sizeof want, "t.conf:2: error: DKIM key file '%s': %s", path, bad[i].why);
        expect_error(text, want);
        snprintf(text, sizeof text, "<domain a.com>\n dkim-key-file %s\n</domain>\n", path);
        snprintf(want, sizeof want, "t.conf:2: error: DKIM key file '%s': %s", path, bad[i].why);
        expect_error(text, want);
    }
    snprintf(path, sizeof path, "%s/empty.key", tmpdir);
    test_make_bad_key(path, TEST_KEY_EMPTY);
    snprintf(text, sizeof text, "domain-key s,example.com,%s\n", path);
    snprintf(want, sizeof want,
             "t.conf:1: error: cannot read DKIM key file '%s': not a regular file of 1..65536 "
             "bytes",
             path);
    expect_error(text, want);
    snprintf(text, sizeof text, "domain-key s,example.com,%s\n", tmpdir);
    snprintf(want, sizeof want,
             "t.conf:1: error: cannot read DKIM key file '%s': not a regular file", tmpdir);
    expect_error(text, want);
}

/*
 * test_dkim_algorithms - Ed25519 keys sign where dkim-algorithm asks for
 * ed25519-sha256; a key of a type its domain does not sign with, an
 * algorithm without a key of its type, and a key no algorithm would use are
 * errors at file:line
 */
static void
test_dkim_algorithms(void **state)
{
    char ed[300], text[1200], want[900];
    struct cfg *c;
    (void)state;
    snprintf(ed, sizeof ed, "%s/ed25519.key", tmpdir);
    test_make_ed25519_key(ed);
    /* the case: an Ed25519 dkim-key-file, dkim-algorithm left at rsa-sha256 */
    snprintf(text, sizeof text, "<domain *>\n dkim-sign yes\n dkim-key-file %s\n</domain>\n", ed);
    snprintf(want, sizeof want,
             "t.conf:3: error: DKIM key file '%s' is an Ed25519 key, but <domain *> signs with "
             "dkim-algorithm rsa-sha256: add ed25519-sha256 to its dkim-algorithm",
             ed);
    expect_error(text, want);
    snprintf(text, sizeof text,
             "<domain *>\n dkim-sign yes\n dkim-algorithm ed25519-sha256\n dkim-selector e\n"
             " dkim-key-file %s\n</domain>\n",
             ed);
    c = expect_ok(text);
    cfg_free(c);
    /* an RSA dkim-key-file where only ed25519-sha256 is asked */
    snprintf(text, sizeof text,
             "<domain a.com>\n dkim-algorithm ed25519-sha256\n dkim-key-file %s\n</domain>\n"
             "domain-key e,a.com,%s\n",
             keyfile, ed);
    snprintf(want, sizeof want,
             "t.conf:3: error: DKIM key file '%s' is an RSA key, but <domain a.com> signs with "
             "dkim-algorithm ed25519-sha256",
             keyfile);
    expect_error(text, want);
    /* dual signing: both keys as domain-key lines */
    snprintf(text, sizeof text,
             "domain-key e,example.com,%s\ndomain-key r,example.com,%s\n<domain *>\n"
             " dkim-sign yes\n dkim-algorithm ed25519-sha256, rsa-sha256\n</domain>\n",
             ed, keyfile);
    c = expect_ok(text);
    cfg_free(c);
    /* an algorithm without a key of its type */
    snprintf(text, sizeof text,
             "domain-key r,example.com,%s\n<domain *>\n dkim-algorithm ed25519-sha256 "
             "rsa-sha256\n</domain>\n",
             keyfile);
    expect_error(text, "t.conf:3: error: dkim-algorithm ed25519-sha256: no Ed25519 key is "
                       "configured (domain-key or dkim-key-file)");
    /* an Ed25519 domain-key that no dkim-algorithm would use */
    snprintf(text, sizeof text, "host-name h\ndomain-key e,example.com,%s\n", ed);
    snprintf(want, sizeof want,
             "t.conf:2: error: DKIM key file '%s' is an Ed25519 key, but no <domain> has "
             "dkim-algorithm ed25519-sha256: it would never sign",
             ed);
    expect_error(text, want);
    expect_error("<domain a.com>\n dkim-algorithm rsa-sha1\n</domain>\n",
                 "t.conf:2: error: dkim-algorithm: unknown algorithm 'rsa-sha1' (rsa-sha256, "
                 "ed25519-sha256)");
    expect_error("<domain a.com>\n dkim-algorithm rsa-sha256,RSA-SHA256\n</domain>\n",
                 "t.conf:2: error: dkim-algorithm: rsa-sha256 listed twice");
}

/* submit-users, trusted-submit-users: names and @groups */
static void
test_submit_user_lists(void **state)
{
    struct cfg *c;
    (void)state;
    c = expect_ok("submit-users alice, bob @staff\ntrusted-submit-users @wheel,root\n");
    assert_string_equal(cfg_str(c, cfg_global(c, CFG_D_SUBMIT_USERS)->text), "alice, bob @staff");
    cfg_free(c);
    expect_error("submit-users alice, b<ad\n",
                 "t.conf:1: error: submit-users: 'b<ad' is neither a user name nor @group");
    expect_error("trusted-submit-users @\n",
                 "t.conf:1: error: trusted-submit-users: '@' is neither a user name nor @group");
}

/* --- includes
 * ------------------------------------------------------------------------------------- */

static void
test_includes(void **state)
{
    char path[512];
    unsigned n = 9;
    struct cfg *c;
    (void)state;
    write_file("main.conf", "include sub/*.conf\n"
                            "<domain a.com>\n  include dom.inc\n</domain>\n");
    snprintf(path, sizeof path, "mkdir -p %s/sub", tmpdir);
    assert_int_equal(system(path), 0);
    write_file("sub/10-first.conf", "host-name first.example\n");
    write_file("sub/20-second.conf", "postmaster pm@example.com\n");
    write_file("dom.inc", "max-smtp-out 3\n");
    snprintf(path, sizeof path, "%s/main.conf", tmpdir);
    diags[0] = 0;
    c = cfg_load(path, collect, NULL, &n);
    if (!c)
        fail_msg("%s", diags);
    assert_int_equal(n, 0);
    assert_string_equal(cfg_str(c, cfg_global(c, CFG_D_HOST_NAME)->text), "first.example");
    assert_non_null(strstr(cfg_str(c, cfg_global(c, CFG_D_HOST_NAME)->file), "sub/10-first.conf"));
    assert_non_null(cfg_global(c, CFG_D_POSTMASTER));
    assert_int_equal(domain_value(c, "a.com", CFG_D_MAX_SMTP_OUT)->num, 3);
    assert_non_null(
        strstr(cfg_str(c, domain_value(c, "a.com", CFG_D_MAX_SMTP_OUT)->file), "dom.inc"));
    cfg_free(c);
}

static void
test_include_errors(void **state)
{
    char path[512], want[600];
    unsigned n = 0;
    struct cfg *c;
    (void)state;
    write_file("loop-a.conf", "host-name a\ninclude loop-b.conf\n");
    write_file("loop-b.conf", "\ninclude loop-a.conf\n");
    snprintf(path, sizeof path, "%s/loop-a.conf", tmpdir);
    diags[0] = 0;
    c = cfg_load(path, collect, NULL, &n);
    assert_null(c);
    snprintf(want, sizeof want, "%s/loop-b.conf:2: error: include loop", tmpdir);
    assert_diag(want);

    write_file("self.conf", "host-name a\ninclude self.conf\n");
    snprintf(path, sizeof path, "%s/self.conf", tmpdir);
    diags[0] = 0;
    assert_null(cfg_load(path, collect, NULL, &n));
    snprintf(want, sizeof want, "%s/self.conf:2: error: include loop", tmpdir);
    assert_diag(want);

    /* An empty include file is no error: it adds nothing. */
    write_file("empty.inc", "");
    write_file("with-empty.conf", "include empty.inc\nhost-name a\n");
    snprintf(path, sizeof path, "%s/with-empty.conf", tmpdir);
    diags[0] = 0;
    c = cfg_load(path, collect, NULL, &n);
    assert_non_null(c);
    cfg_free(c);

    write_file("missing.conf", "host-name a\n\ninclude does-not-exist.conf\n");
    snprintf(path, sizeof path, "%s/missing.conf", tmpdir);
    diags[0] = 0;
    assert_null(cfg_load(path, collect, NULL, &n));
    snprintf(want, sizeof want,
             "%s/missing.conf:3: error: cannot read include file '%s/does-not-exist.conf'", tmpdir,
             tmpdir);
    assert_diag(want);

    write_file("unbalanced.inc", "<domain x.com>\n");
    write_file("unbalanced.conf", "include unbalanced.inc\n");
    snprintf(path, sizeof path, "%s/unbalanced.conf", tmpdir);
    diags[0] = 0;
    assert_null(cfg_load(path, collect, NULL, &n));
    snprintf(want, sizeof want, "%s/unbalanced.inc:1: error: <domain> is not closed by the end of",
             tmpdir);
    assert_diag(want);

    expect_error("<acct-file /x.csv>\n include foo.conf\n</acct-file>\n",
                 "t.conf:2: error: include is not allowed in <acct-file>");
    expect_error("include http://example.com/pmta.conf\n",
                 "t.conf:1: error: include from a URL is not supported");
    diags[0] = 0;
    assert_null(cfg_load("/nonexistent/pmta/config", collect, NULL, &n));
    assert_diag("cannot read configuration file '/nonexistent/pmta/config'");
}

/* --- error recovery
 * ---------------------------------------------------------------------------------- */

static void
test_reports_every_error(void **state)
{
    unsigned n = 0;
    (void)state;
    assert_null(load_text("max-smpt-out 1\n<domain *>\n max-smtp-out x\n</domain>\nbogus 1\n", &n));
    assert_int_equal(n, 3);
    assert_diag("t.conf:1: error: unknown directive 'max-smpt-out'");
    assert_diag("t.conf:3: error: bad value 'x' for 'max-smtp-out'");
    assert_diag("t.conf:5: error: unknown directive 'bogus'");
}

static void
test_error_cap(void **state)
{
    struct {
        char *p;
        size_t len;
    } t = { NULL, 0 };
    FILE *f = open_memstream(&t.p, &t.len);
    unsigned n = 0;
    (void)state;
    for (int i = 0; i < 300; i++)
        fprintf(f, "bogus-%d yes\n", i);
    fclose(f);
    assert_null(load_text(t.p, &n));
    assert_int_equal(n, 100);
    assert_diag("t.conf:100: error: too many errors; giving up");
    assert_null(strstr(diags, "bogus-150"));
    free(t.p);
}

/* every reply action loads without a warning (all are implemented) */
static void
test_reply_actions_load_silently(void **state)
{
    unsigned nerr = 0;
    struct cfg *c = load_text("<smtp-pattern-list l>\n"
                              "  reply /blocked/ bounce-queue\n"
                              "  reply /too many/ disable-source-ip,reenable-after=1h\n"
                              "  reply /rate limit/ mode=backoff,defer-queue\n"
                              "</smtp-pattern-list>\n",
                              &nerr);

    (void)state;
    assert_non_null(c);
    assert_int_equal(nerr, 0);
    assert_int_equal(nwarnings, 0);
    cfg_free(c);
}

/* the process counts take `auto` (their default): half the CPUs, at least one */
static void
test_process_counts_auto(void **state)
{
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    int64_t want = ncpu >= 4 ? ncpu / 2 : 1;
    unsigned nerr = 0;
    struct cfg *c = load_text("smtp-out-processes 3\n", &nerr);
    char shown[64], expect[64];

    (void)state;
    assert_non_null(c);
    assert_int_equal(nerr, 0);
    assert_int_equal(cfg_process_count(c, CFG_D_SMTPD_PROCESSES), want);
    assert_int_equal(cfg_process_count(c, CFG_D_SMTP_OUT_PROCESSES), 3);
    snprintf(expect, sizeof expect, "auto (%lld)", (long long)want);
    assert_string_equal(
        cfg_format_value(c, cfg_global(c, CFG_D_SMTPD_PROCESSES), shown, sizeof shown), expect);
    cfg_free(c);
    c = load_text("smtpd-processes auto\nsmtp-out-processes 0\n", &nerr);
    assert_int_equal(nerr, 0);
    assert_int_equal(cfg_process_count(c, CFG_D_SMTPD_PROCESSES), want);
    assert_int_equal(cfg_process_count(c, CFG_D_SMTP_OUT_PROCESSES), 0);
    cfg_free(c);
    expect_error("cleanup-processes auto\n", "bad value 'auto' for 'cleanup-processes'");
    expect_error("smtpd-processes 0\n", "out of range (1..256)");
}

/* test_address_lists - <address-list> and the processors: nesting, names, references */
static void
test_address_lists(void **state)
{
    struct cfg *c;
    struct cfg_addrlist *l;
    uint32_t s, it = 0;
    char path[512], text[2048];

    (void)state;
    snprintf(path, sizeof path, "%s/suppressed.txt", tmpdir);
    write_file("suppressed.txt", "# comment\nFoo@Example.COM\n\n  local-only  \n@whole.test\n");
    snprintf(text, sizeof text,
             "<address-list s1>\n address /^bounce\\+.*@/\n address a@b.test\n"
             " domain dom.test\n address-file %s\n</address-list>\n"
             "<domain *>\n suppression-lists s1\n</domain>\n"
             "<bounce-processor>\n deliver-unmatched-email no\n"
             " add-to-suppression-list s1\n <address-list>\n  domain bounces.test\n"
             " </address-list>\n</bounce-processor>\n"
             "<feedback-loop-processor>\n <address-list fbl>\n  address fbl@x.test\n"
             " </address-list>\n</feedback-loop-processor>\n",
             path);
    c = expect_ok(text);
    s = cfg_find_scope(c, CFG_S_ADDRESS_LIST, "s1");
    assert_int_not_equal(s, CFG_NONE);
    /* a processor's own list hangs under it and is not in the top-level namespace */
    assert_int_equal(cfg_find_scope(c, CFG_S_ADDRESS_LIST, "fbl"), CFG_NONE);
    while ((s = cfg_next_scope(c, CFG_S_ADDRESS_LIST, &it)) != CFG_NONE)
        if (c->scopes[s].parent)
            assert_true(c->scopes[c->scopes[s].parent].kind == CFG_S_BOUNCE_PROCESSOR ||
                        c->scopes[c->scopes[s].parent].kind == CFG_S_FBL_PROCESSOR);
    /* the matcher: addresses, local parts, domains, regexes, the file's entries, any case */
    l = cfg_addrlist_new(c, cfg_find_scope(c, CFG_S_ADDRESS_LIST, "s1"));
    assert_true(cfg_addrlist_match(l, "A@B.test"));
    assert_true(cfg_addrlist_match(l, "x@dom.test"));
    assert_false(cfg_addrlist_match(l, "x@sub.dom.test"));
    assert_true(cfg_addrlist_match(l, "bounce+123@anything.test"));
    assert_true(cfg_addrlist_match(l, "foo@example.com"));
    assert_true(cfg_addrlist_match(l, "LOCAL-ONLY@any.test"));
    assert_true(cfg_addrlist_match(l, "y@whole.test"));
    assert_false(cfg_addrlist_match(l, "nobody@example.com"));
    /* appended: matches at once, and is in the file for the next reader */
    assert_int_equal(cfg_addrlist_append(l, "New@Example.net"), 0);
    assert_true(cfg_addrlist_match(l, "new@example.net"));
    assert_int_equal(cfg_addrlist_append(l, "two\nlines@x.test"), -EINVAL);
    cfg_addrlist_free(l);
    l = cfg_addrlist_new(c, cfg_find_scope(c, CFG_S_ADDRESS_LIST, "s1"));
    assert_true(cfg_addrlist_match(l, "new@example.net"));
    cfg_addrlist_free(l);
    cfg_free(c);

    expect_error("<domain *>\n suppression-lists nosuch\n</domain>\n",
                 "suppression-lists 'nosuch': no <address-list> named 'nosuch'");
    expect_error("<bounce-processor>\n <address-list own>\n  domain a.test\n </address-list>\n"
                 "</bounce-processor>\n<domain *>\n suppression-lists own\n</domain>\n",
                 "no <address-list> named 'own'");
    expect_error("<address-list a>\n address /un(closed/\n</address-list>\n",
                 "bad regular expression");
    expect_error("<address-list a>\n address two words\n</address-list>\n",
                 "is not an address or a local part");
    expect_error("<address-list a>\n domain a@b\n</address-list>\n", "is not a domain");
    expect_error("<address-list>\n domain a.test\n</address-list>\n",
                 "<address-list> needs an argument");
    expect_error("<domain *>\n bcc-upon-delivery nodomain\n</domain>\n",
                 "is not an address with a domain");
    expect_error("<domain x.test>\n <address-list y>\n </address-list>\n</domain>\n",
                 "<address-list> is not allowed inside <domain>");
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        UNIT_TEST(test_comments),
        UNIT_TEST(test_unterminated_comment),
        UNIT_TEST(test_quoted_strings),
        UNIT_TEST(test_key_equals_value),
        UNIT_TEST(test_line_too_long),
        UNIT_TEST(test_unknown_directive),
        UNIT_TEST(test_wrong_scope),
        UNIT_TEST(test_bad_values),
        UNIT_TEST(test_values_decoded),
        UNIT_TEST(test_source_limits_decoded),
        UNIT_TEST(test_mx_rollup_lines),
        UNIT_TEST(test_warmup_plans),
        UNIT_TEST(test_later_line_replaces),
        UNIT_TEST(test_not_implemented_warns_once),
        UNIT_TEST(test_block_errors),
        UNIT_TEST(test_patterns_and_cidrs),
        UNIT_TEST(test_macros),
        UNIT_TEST(test_reply_patterns),
        UNIT_TEST(test_other_pattern_lists),
        UNIT_TEST(test_cross_references),
        UNIT_TEST(test_dkim_key_files),
        UNIT_TEST(test_dkim_keys_that_cannot_sign),
        UNIT_TEST(test_dkim_algorithms),
        UNIT_TEST(test_submit_user_lists),
        UNIT_TEST(test_includes),
        UNIT_TEST(test_include_errors),
        UNIT_TEST(test_reports_every_error),
        UNIT_TEST(test_error_cap),
        UNIT_TEST(test_process_counts_auto),
        UNIT_TEST(test_reply_actions_load_silently),
        UNIT_TEST(test_address_lists),
    };
    return cmocka_run_group_tests_name("cfg_parse", tests, group_setup, group_teardown);
}
