/*
 * test_cfg_resolve.c - effective settings: domain patterns, macros, nested
 * virtual-mta/pool blocks, sources by CIDR and name, defaults; the seed
 * snippets and the realistic sample config; snapshots (round trip and
 * corruption).
 *
 * Owns a temporary directory with generated DKIM keys and snapshot files.
 * DKIM key paths in the shipped configs (/etc/pmta/dkim.key in the seed,
 * /etc/pmta/dkim/ in the sample) are rewritten to that directory before the
 * text is loaded with cfg_load_string under the file's real name, so includes
 * and messages still refer to the shipped file.
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
#include <fcntl.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/stat.h>
#include <cmocka.h>

#include "unit.h"


#include "cfg.h"
#include "cfg_parse.h"
#include "test_keys.h"

#ifndef PMTA_SRCDIR
#define PMTA_SRCDIR "."
#endif

static char tmpdir[] = "/tmp/test_cfg_resolve.XXXXXX";
static char diags[1 << 16];
static struct cfg_resolved r;

static void
collect(void *ctx, enum cfg_diag_level level, const char *file, unsigned line, const char *message)
{
    size_t used = strlen(diags);
    (void)ctx;
    snprintf(diags + used, sizeof diags - used, "%s:%u: %s: %s\n", file ? file : "-", line,
             level == CFG_DIAG_ERROR ? "error" : "warning", message);
}

static struct cfg *
load_named(const char *name, const char *text)
{
    unsigned n = 99;
    struct cfg *c;
    diags[0] = 0;
    c = cfg_load_string(name, text, collect, NULL, &n);
    if (!c)
        fail_msg("load of %s failed:\n%s", name, diags);
    assert_int_equal(n, 0);
    return c;
}

static struct cfg *
load(const char *text)
{
    return load_named("t.conf", text);
}

static int
group_setup(void **state)
{
    static const char *const keys[] = { "dkim.key", "dkim/example.com.pem", "dkim/default.pem",
                                        "dkim/billing.pem" };
    char path[512];
    (void)state;
    if (!mkdtemp(tmpdir))
        return -1;
    snprintf(path, sizeof path, "%s/dkim", tmpdir);
    mkdir(path, 0700);
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        snprintf(path, sizeof path, "%s/%s", tmpdir, keys[i]);
        test_make_key(path);
    }
    snprintf(path, sizeof path, "%s/dkim/example.com.ed25519.pem", tmpdir);
    test_make_ed25519_key(path);
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

/* read_replaced - FILE's text with every FROM replaced by TO (caller frees) */
static char *
read_replaced(const char *file, const char *from, const char *to)
{
    FILE *f = fopen(file, "r");
    char *text = NULL, *out, *p, *hit;
    size_t cap = 0, len, n = 0;

    if (!f)
        fail_msg("cannot open %s", file);
    len = getdelim(&text, &cap, 0, f) > 0 ? strlen(text) : 0;
    fclose(f);
    for (p = text; (hit = strstr(p, from)) != NULL; p = hit + strlen(from))
        n++;
    out = malloc(len + n * strlen(to) + 1);
    assert_non_null(out);
    out[0] = 0;
    for (p = text; (hit = strstr(p, from)) != NULL; p = hit + strlen(from)) {
        strncat(out, p, (size_t)(hit - p));
        strcat(out, to);
    }
    strcat(out, p);
    free(text);
    return out;
}

static int64_t
qnum(struct cfg *c, const char *domain, const char *vmta, enum cfg_directive d)
{
    assert_int_equal(cfg_resolve_queue(c, domain, vmta, &r), 0);
    assert_non_null(r.v[d]);
    return r.v[d]->num;
}

static const char *
qtext(struct cfg *c, const char *domain, const char *vmta, enum cfg_directive d)
{
    static char out[256];
    assert_int_equal(cfg_resolve_queue(c, domain, vmta, &r), 0);
    assert_non_null(r.v[d]);
    return cfg_format_value(c, r.v[d], out, sizeof out);
}

/* --- domain patterns ----------------------------------------------------------------------- */

static void
test_domain_specificity(void **state)
{
    /* deliberately most specific first: file order must not matter */
    struct cfg *c = load("<domain example.com>\n max-smtp-out 4\n</domain>\n"
                         "<domain *.example.com>\n max-smtp-out 3\n retry-after 1h\n</domain>\n"
                         "<domain *.a.example.com>\n max-smtp-out 5\n</domain>\n"
                         "<domain [*.]b.example.com>\n max-smtp-out 6\n</domain>\n"
                         "<domain *>\n max-smtp-out 2\n bounce-after 1d\n</domain>\n");
    (void)state;
    assert_int_equal(qnum(c, "example.com", NULL, CFG_D_MAX_SMTP_OUT), 4);     /* exact */
    assert_int_equal(qnum(c, "x.example.com", NULL, CFG_D_MAX_SMTP_OUT), 3);   /* *.parent */
    assert_int_equal(qnum(c, "y.a.example.com", NULL, CFG_D_MAX_SMTP_OUT), 5); /* longer suffix */
    assert_int_equal(qnum(c, "a.example.com", NULL, CFG_D_MAX_SMTP_OUT),
                     3); /* *.a: subdomains only */
    assert_int_equal(qnum(c, "b.example.com", NULL, CFG_D_MAX_SMTP_OUT), 6); /* [*.]: itself too */
    assert_int_equal(qnum(c, "z.b.example.com", NULL, CFG_D_MAX_SMTP_OUT), 6);
    assert_int_equal(qnum(c, "other.org", NULL, CFG_D_MAX_SMTP_OUT), 2); /* only * */
    assert_int_equal(qnum(c, "notexample.com", NULL, CFG_D_MAX_SMTP_OUT),
                     2); /* not a suffix at a dot */
    /* inheritance: unset in the specific block comes from the general ones, then defaults */
    assert_int_equal(qnum(c, "y.a.example.com", NULL, CFG_D_RETRY_AFTER), 0);
    assert_int_equal(cfg_list(c, r.v[CFG_D_RETRY_AFTER])[0], 3600);
    assert_int_equal(qnum(c, "example.com", NULL, CFG_D_BOUNCE_AFTER), 86400);
    assert_int_equal(qnum(c, "example.com", NULL, CFG_D_QUEUE_PRIORITY), 50);
    assert_int_equal(r.v[CFG_D_QUEUE_PRIORITY]->file, 0); /* "default" */
    cfg_free(c);
}

static void
test_domain_case_and_dot(void **state)
{
    struct cfg *c = load("<domain Example.COM.>\n max-smtp-out 9\n</domain>\n"
                         "<domain a.com, B.com>\n max-smtp-out 8\n</domain>\n");
    (void)state;
    assert_int_equal(qnum(c, "example.com", NULL, CFG_D_MAX_SMTP_OUT), 9);
    assert_int_equal(qnum(c, "EXAMPLE.com.", NULL, CFG_D_MAX_SMTP_OUT), 9);
    assert_int_equal(qnum(c, "b.com", NULL, CFG_D_MAX_SMTP_OUT), 8);
    assert_int_equal(qnum(c, "a.com", NULL, CFG_D_MAX_SMTP_OUT), 8);
    assert_int_equal(qnum(c, "c.com", NULL, CFG_D_MAX_SMTP_OUT), 20); /* default */
    cfg_free(c);
}

static void
test_domain_cidr(void **state)
{
    struct cfg *c = load("<domain [192.0.2.0/24]>\n max-smtp-out 3\n</domain>\n"
                         "<domain [192.0.2.7]>\n max-smtp-out 4\n</domain>\n"
                         "<domain [2001:db8::/32]>\n max-smtp-out 5\n</domain>\n");
    (void)state;
    assert_int_equal(qnum(c, "[192.0.2.1]", NULL, CFG_D_MAX_SMTP_OUT), 3);
    assert_int_equal(qnum(c, "[192.0.2.7]", NULL, CFG_D_MAX_SMTP_OUT), 4); /* /32 beats /24 */
    assert_int_equal(qnum(c, "[198.51.100.1]", NULL, CFG_D_MAX_SMTP_OUT), 20);
    assert_int_equal(qnum(c, "[IPv6:2001:db8::1]", NULL, CFG_D_MAX_SMTP_OUT), 5);
    assert_int_equal(qnum(c, "192.0.2.1", NULL, CFG_D_MAX_SMTP_OUT), 20); /* not a literal */
    cfg_free(c);
}

static void
test_macro_vs_explicit(void **state)
{
    /* the explicit block comes first in the file and still wins over the macro */
    struct cfg *c = load("domain-macro tlds com, fr\n"
                         "<domain yahoo.com>\n max-smtp-out 9\n</domain>\n"
                         "<domain yahoo.$tlds>\n max-smtp-out 2\n max-msg-rate 10/m\n</domain>\n");
    (void)state;
    assert_int_equal(qnum(c, "yahoo.com", NULL, CFG_D_MAX_SMTP_OUT), 9);
    assert_int_equal(qnum(c, "yahoo.com", NULL, CFG_D_MAX_MSG_RATE), 10); /* rest inherited */
    assert_int_equal(qnum(c, "yahoo.fr", NULL, CFG_D_MAX_SMTP_OUT), 2);
    cfg_free(c);
}

static void
test_vmta_and_pool_nesting(void **state)
{
    struct cfg *c = load(
        "<domain gmail.com>\n max-smtp-out 10\n max-msg-rate 100/s\n bounce-after 2d\n</domain>\n"
        "<virtual-mta v1>\n <domain gmail.com>\n  max-smtp-out 30\n </domain>\n</virtual-mta>\n"
        "<virtual-mta v2>\n</virtual-mta>\n"
        "<virtual-mta v3>\n <domain *>\n  queue-priority 90\n </domain>\n</virtual-mta>\n"
        "<virtual-mta-pool p>\n virtual-mta v1\n virtual-mta v2\n"
        " <domain gmail.com>\n  max-smtp-out 25\n  max-msg-rate 600/m\n </domain>\n"
        "</virtual-mta-pool>\n");
    (void)state;
    assert_int_equal(qnum(c, "gmail.com", NULL, CFG_D_MAX_SMTP_OUT), 10);
    assert_int_equal(qnum(c, "gmail.com", "{default}", CFG_D_MAX_SMTP_OUT), 10);
    assert_int_equal(qnum(c, "gmail.com", "v1", CFG_D_MAX_SMTP_OUT), 30); /* vmta beats pool */
    assert_int_equal(qnum(c, "gmail.com", "v1", CFG_D_MAX_MSG_RATE),
                     600); /* pool beats top level */
    assert_int_equal(qnum(c, "gmail.com", "v1", CFG_D_BOUNCE_AFTER), 2 * 86400); /* top level */
    assert_int_equal(qnum(c, "gmail.com", "v2", CFG_D_MAX_SMTP_OUT), 25);        /* from its pool */
    assert_int_equal(qnum(c, "gmail.com", "p", CFG_D_MAX_SMTP_OUT), 25); /* the pool itself */
    /* a nested <domain *> is still after every top-level block, even the exact one */
    assert_int_equal(qnum(c, "gmail.com", "v3", CFG_D_QUEUE_PRIORITY), 90);
    assert_int_equal(qnum(c, "gmail.com", "v3", CFG_D_MAX_SMTP_OUT), 10);
    assert_int_equal(cfg_resolve_queue(c, "gmail.com", "nosuch", &r), -ENOENT);
    cfg_free(c);
}

static void
test_clear_with_empty_string(void **state)
{
    struct cfg *c = load("<domain *>\n smtp-pattern-list l\n max-smtp-out 3\n</domain>\n"
                         "<domain a.com>\n smtp-pattern-list \"\"\n max-smtp-out \"\"\n</domain>\n"
                         "<smtp-pattern-list l>\n reply /x/ mode=backoff\n</smtp-pattern-list>\n");
    (void)state;
    assert_int_equal(cfg_resolve_queue(c, "b.com", NULL, &r), 0);
    assert_string_equal(cfg_str(c, r.v[CFG_D_SMTP_PATTERN_LIST]->text), "l");
    assert_int_equal(cfg_resolve_queue(c, "a.com", NULL, &r), 0);
    assert_null(r.v[CFG_D_SMTP_PATTERN_LIST]);          /* no default: unset */
    assert_int_equal(r.v[CFG_D_MAX_SMTP_OUT]->num, 20); /* back to the default */
    cfg_free(c);
}

static void
test_backoff_fallback(void **state)
{
    struct cfg *c = load(
        "<domain a.com>\n max-msg-rate 100/h\n</domain>\n"
        "<domain b.com>\n max-msg-rate 100/h\n backoff-max-msg-rate 10/h\n</domain>\n");
    (void)state;
    assert_int_equal(qnum(c, "a.com", NULL, CFG_D_BACKOFF_MAX_MSG_RATE), 100);
    assert_int_equal(qnum(c, "b.com", NULL, CFG_D_BACKOFF_MAX_MSG_RATE), 10);
    assert_int_equal(qnum(c, "c.com", NULL, CFG_D_BACKOFF_MAX_MSG_RATE), 0); /* unlimited */
    assert_int_equal(qnum(c, "c.com", NULL, CFG_D_BACKOFF_MAX_SMTP_OUT), 20);
    assert_string_equal(qtext(c, "c.com", NULL, CFG_D_BACKOFF_RETRY_AFTER), "1h");
    cfg_free(c);
}

/* src_limit - the source-ip-max-smtp-out line for IPv4 address IP of DOMAIN's queue, or -1 */
static int64_t
src_limit(struct cfg *c, const char *domain, const char *ip, uint32_t *scope)
{
    const struct cfg_value *v;
    uint8_t addr[4];

    assert_int_equal(cfg_resolve_queue(c, domain, NULL, &r), 0);
    assert_int_equal(inet_pton(AF_INET, ip, addr), 1);
    v = cfg_source_ip_limit(c, r.v[CFG_D_SOURCE_IP_MAX_SMTP_OUT], AF_INET, addr, scope);
    return v ? v->source.limit : -1;
}

static void
test_source_ip_limits(void **state)
{
    struct cfg *c = load("<domain *>\n"
                         "  source-ip-max-smtp-out 0/0 10\n"
                         "  source-ip-max-smtp-out 10.1.0.0/16 4\n"
                         "  source-ip-max-smtp-out 10.1.2.3 1\n"
                         "  source-ip-max-smtp-out 10.1.0.0/16 7\n"
                         "</domain>\n"
                         "<domain gmail.com>\n"
                         "  source-ip-max-smtp-out 10.0.0.0/8 2\n"
                         "</domain>\n");
    uint32_t star, gmail;
    char pattern[64];
    (void)state;
    /* the longest prefix holding the address; the first of equal ones */
    assert_int_equal(src_limit(c, "a.com", "192.0.2.1", &star), 10);
    assert_int_equal(src_limit(c, "a.com", "10.1.9.9", NULL), 4);
    assert_int_equal(src_limit(c, "a.com", "10.1.2.3", NULL), 1);
    assert_string_equal(cfg_domain_pattern(c, star, pattern, sizeof pattern), "*");
    assert_int_equal(cfg_value_scope(c, r.v[CFG_D_SOURCE_IP_MAX_SMTP_OUT]), star);
    /* the most specific block that sets the directive: its lines alone */
    assert_int_equal(src_limit(c, "gmail.com", "10.1.2.3", &gmail), 2);
    assert_string_equal(cfg_domain_pattern(c, gmail, pattern, sizeof pattern), "gmail.com");
    assert_int_equal(src_limit(c, "gmail.com", "192.0.2.1", &gmail), -1);
    assert_int_equal(gmail, CFG_NONE);
    /* no line at all */
    cfg_free(c);
    c = load("<domain *>\n  max-smtp-out 3\n</domain>\n");
    assert_int_equal(src_limit(c, "a.com", "10.1.2.3", NULL), -1);
    cfg_free(c);
}

static void
test_mx_rollups(void **state)
{
    struct cfg *c = load("<mx-rollup-list>\n"
                         "  mx *.google.test google.rollup\n"
                         "  mx alt?.aspmx.l.google.com google-alt.rollup\n"
                         "</mx-rollup-list>\n"
                         "<mx-rollup-list>\n"
                         "  mx *.mail.example.net example.rollup\n"
                         "</mx-rollup-list>\n");
    (void)state;
    /* configured lines first, in file order, any case */
    assert_string_equal(cfg_mx_rollup(c, "MX1.Google.Test"), "google.rollup");
    assert_string_equal(cfg_mx_rollup(c, "alt1.aspmx.l.google.com"), "google-alt.rollup");
    assert_string_equal(cfg_mx_rollup(c, "in.mail.example.net"), "example.rollup");
    /* then the built-in list */
    assert_string_equal(cfg_mx_rollup(c, "aspmx.l.google.com"), "google.rollup");
    assert_string_equal(cfg_mx_rollup(c, "smtp.google.com"), "google.rollup");
    assert_string_equal(cfg_mx_rollup(c, "aspmx2.googlemail.com"), "google.rollup");
    assert_string_equal(cfg_mx_rollup(c, "hotmail-com.olc.protection.outlook.com"),
                        "outlook.rollup");
    assert_string_equal(cfg_mx_rollup(c, "contoso-com.mail.protection.outlook.com"),
                        "office365.rollup");
    assert_string_equal(cfg_mx_rollup(c, "mta6.am0.yahoodns.net"), "yahoo.rollup");
    assert_string_equal(cfg_mx_rollup(c, "mx-aol.mail.gm0.yahoodns.net"), "yahoo.rollup");
    /* not a provider's, and not a lookalike */
    assert_null(cfg_mx_rollup(c, "mx.example.org"));
    assert_null(cfg_mx_rollup(c, "google.com.evil.test"));
    assert_null(cfg_mx_rollup(c, "notgoogle.com"));
    cfg_free(c);
    assert_string_equal(cfg_mx_rollup(NULL, "alt4.aspmx.l.google.com"), "google.rollup");
}

/* --- sources -----------------------------------------------------------------------------------
 */

static struct sockaddr_storage
addr_of(const char *text)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    if (strchr(text, ':')) {
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
        s6->sin6_family = AF_INET6;
        assert_int_equal(inet_pton(AF_INET6, text, &s6->sin6_addr), 1);
    } else {
        struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
        s4->sin_family = AF_INET;
        assert_int_equal(inet_pton(AF_INET, text, &s4->sin_addr), 1);
    }
    return ss;
}

static int64_t
snum(struct cfg *c, const char *ip, const char *name, enum cfg_directive d)
{
    struct sockaddr_storage ss;
    if (ip)
        ss = addr_of(ip);
    assert_int_equal(cfg_resolve_session(c, ip ? (struct sockaddr *)&ss : NULL, name, NULL, &r), 0);
    return r.v[d]->num;
}

static void
test_sources(void **state)
{
    struct cfg *c = load(
        "<source 10.1.2.3>\n max-message-size 3M\n</source>\n"
        "<source 10.1.0.0/16>\n max-message-size 2M\n require-auth yes\n</source>\n"
        "<source 0/0>\n max-message-size 1M\n always-allow-relaying no\n</source>\n"
        "<source 10.0.0.0/8>\n always-allow-relaying yes\n</source>\n"
        "<source ::/0>\n max-message-size 6M\n</source>\n"
        "<source 2001:db8::/32>\n max-message-size 7M\n</source>\n"
        "<source feeders>\n max-message-size 9M\n</source>\n"
        "<source {auth}>\n always-allow-relaying yes\n</source>\n");
    (void)state;
    assert_int_equal(snum(c, "10.1.2.3", NULL, CFG_D_MAX_MESSAGE_SIZE), 3 << 20); /* /32 */
    assert_int_equal(snum(c, "10.1.2.3", NULL, CFG_D_REQUIRE_AUTH), 1);           /* from /16 */
    assert_int_equal(snum(c, "10.1.2.3", NULL, CFG_D_ALWAYS_ALLOW_RELAYING), 1);  /* from /8 */
    assert_int_equal(snum(c, "10.1.9.9", NULL, CFG_D_MAX_MESSAGE_SIZE), 2 << 20);
    assert_int_equal(snum(c, "10.200.0.1", NULL, CFG_D_MAX_MESSAGE_SIZE), 1 << 20); /* 0/0 */
    assert_int_equal(snum(c, "10.200.0.1", NULL, CFG_D_REQUIRE_AUTH), 0);           /* default */
    assert_int_equal(snum(c, "192.0.2.1", NULL, CFG_D_ALWAYS_ALLOW_RELAYING), 0);
    assert_int_equal(snum(c, "2001:db8::5", NULL, CFG_D_MAX_MESSAGE_SIZE), 7 << 20);
    assert_int_equal(snum(c, "2001:db9::5", NULL, CFG_D_MAX_MESSAGE_SIZE), 6 << 20);
    assert_int_equal(snum(c, "::ffff:10.1.2.3", NULL, CFG_D_MAX_MESSAGE_SIZE), 3 << 20);
    assert_int_equal(snum(c, "10.1.2.3", "feeders", CFG_D_MAX_MESSAGE_SIZE),
                     9 << 20); /* name last */
    assert_int_equal(snum(c, "10.1.2.3", "feeders", CFG_D_REQUIRE_AUTH), 1);
    assert_int_equal(snum(c, NULL, "{auth}", CFG_D_ALWAYS_ALLOW_RELAYING), 1);
    assert_int_equal(snum(c, NULL, NULL, CFG_D_MAX_MESSAGE_SIZE), CFG_NEVER);
    assert_int_equal(cfg_resolve_session(c, NULL, "nosuch", NULL, &r), -ENOENT);
    cfg_free(c);
}

/* other_value - a valid value of source directive D that is not its default, or NULL */
static const char *
other_value(enum cfg_directive d, char *buf, size_t size)
{
    const struct cfg_directive_info *info = cfg_directive_info(d);
    const char *dflt = info->default_text ? info->default_text : "";

    switch (info->type) {
    case CFG_T_BOOL:
        return strcmp(dflt, "yes") == 0 ? "no" : "yes";
    case CFG_T_INT:
        return strcmp(dflt, "7") == 0 ? "8" : "7";
    case CFG_T_SIZE:
        return "5M";
    case CFG_T_INTERVAL:
        return "7s";
    case CFG_T_RATE:
        return "7/h";
    case CFG_T_ENUM: {
        char word[64];
        for (int i = 0; *cfg__enum_word(d, i, word, sizeof word); i++)
            if (strcmp(word, dflt) != 0)
                return snprintf(buf, size, "%s", word), buf;
        return NULL;
    }
    case CFG_T_STRING:
        return "xx"; /* names a <virtual-mta xx> and a <pattern-list xx> below */
    default:
        return NULL; /* WORDS: the rest of the line, "" is not a reset there */
    }
}

/*
 * test_source_reset_every_directive - `NAME ""` in <source {auth}> (and in
 * the smtp-user's source) means the built-in default for every inheritable
 * <source> directive, whatever the layers below said: the bug where smtpd
 * gave an authenticated session no smtp-command-timeout at all
 */
static void
test_source_reset_every_directive(void **state)
{
    struct sockaddr_storage ss = addr_of("10.0.0.1");
    char text[2048], buf[64];
    int checked = 0;
    (void)state;
    for (int d = 0; d < CFG_D_COUNT; d++) {
        const struct cfg_directive_info *info = cfg_directive_info((enum cfg_directive)d);
        const char *value = other_value((enum cfg_directive)d, buf, sizeof buf);
        struct cfg *c;

        if (!(info->scopes & CFG_IN(CFG_S_SOURCE)) || (info->scopes & CFG_REPEATABLE) || !value ||
            info->status == CFG_REFUSED) /* refused at load: nothing to resolve */
            continue;
        for (int layer = 0; layer < 2; layer++) {
            /* layer 0: the reset is in the smtp-user's source; layer 1: in {auth} */
            if (layer == 0)
                snprintf(text, sizeof text,
                         "<virtual-mta xx>\n</virtual-mta>\n<pattern-list xx>\n</pattern-list>\n"
                         "<source 0/0>\n %s %s\n</source>\n<source lst>\n %s %s\n</source>\n"
                         "<source usrc>\n %s \"\"\n</source>\n"
                         "<smtp-user u>\n password p\n source usrc\n</smtp-user>\n",
                         info->name, value, info->name, value, info->name);
            else
                snprintf(text, sizeof text,
                         "<virtual-mta xx>\n</virtual-mta>\n<pattern-list xx>\n</pattern-list>\n"
                         "<source 0/0>\n %s %s\n</source>\n<source lst>\n %s %s\n</source>\n"
                         "<source {auth}>\n %s \"\"\n</source>\n",
                         info->name, value, info->name, value, info->name);
            c = load(text);
            assert_int_equal(cfg_resolve_session(c, (struct sockaddr *)&ss, "lst", NULL, &r), 0);
            if (r.v[d] == NULL || r.v[d]->file == 0)
                fail_msg("%s: the <source lst> value is not in force before AUTH", info->name);
            assert_int_equal(cfg_resolve_session(c, (struct sockaddr *)&ss, "lst", "u", &r), 0);
            if (info->default_text == NULL && r.v[d] != NULL)
                fail_msg("%s \"\": still set after AUTH (layer %d)", info->name, layer);
            if (info->default_text != NULL && r.v[d] != &c->values[d])
                fail_msg("%s \"\": not the built-in default %s after AUTH (layer %d)", info->name,
                         info->default_text, layer);
            cfg_free(c);
            checked++;
        }
    }
    assert_true(checked > 2 * 40);
}

/* test_session_layers - pickup relays by default; {auth} and the user's source after AUTH */
static void
test_session_layers(void **state)
{
    struct cfg *c = load("<source {auth}>\n max-message-size 2M\n</source>\n"
                         "<source big>\n max-message-size 9M\n</source>\n"
                         "<smtp-user U>\n password p\n source big\n</smtp-user>\n");
    (void)state;
    assert_int_equal(cfg_resolve_session(c, NULL, "{pickup}", NULL, &r), 0);
    assert_int_equal(r.v[CFG_D_ALWAYS_ALLOW_RELAYING]->num, 1);
    assert_int_equal(cfg_resolve_session(c, NULL, NULL, NULL, &r), 0);
    assert_int_equal(r.v[CFG_D_ALWAYS_ALLOW_RELAYING]->num, 0);
    assert_int_equal(cfg_resolve_session(c, NULL, NULL, "other", &r), 0);
    assert_int_equal(r.v[CFG_D_MAX_MESSAGE_SIZE]->num, 2 << 20);
    assert_int_equal(cfg_resolve_session(c, NULL, NULL, "U", &r), 0);
    assert_int_equal(r.v[CFG_D_MAX_MESSAGE_SIZE]->num, 9 << 20);
    assert_int_equal(cfg_resolve_session(c, NULL, NULL, "u", &r), 0); /* names match exactly */
    assert_int_equal(r.v[CFG_D_MAX_MESSAGE_SIZE]->num, 2 << 20);
    cfg_free(c);
    c = load("<source {pickup}>\n always-allow-relaying no\n</source>\n");
    assert_int_equal(cfg_resolve_session(c, NULL, "{pickup}", NULL, &r), 0);
    assert_int_equal(r.v[CFG_D_ALWAYS_ALLOW_RELAYING]->num, 0);
    cfg_free(c);
}

static void
test_vmta_settings(void **state)
{
    struct cfg *c = load(
        "host-name global.example\nsmtp-source-host 127.0.0.2 g.example\n"
        "<virtual-mta v1>\n smtp-source-host 127.0.0.10 a.example\n"
        " smtp-source-host 127.0.0.11 b.example\n max-smtp-out 40\n</virtual-mta>\n");
    uint32_t v, it = 0, n = 0;
    (void)state;
    assert_int_equal(cfg_resolve_vmta(c, "v1", &r), 0);
    assert_string_equal(cfg_str(c, r.v[CFG_D_SMTP_SOURCE_HOST]->text), "127.0.0.10 a.example");
    assert_string_equal(cfg_str(c, r.v[CFG_D_HOST_NAME]->text), "global.example");
    assert_int_equal(r.v[CFG_D_VMTA_MAX_SMTP_OUT]->num, 40);
    v = cfg_find_scope(c, CFG_S_VMTA, "v1");
    while (cfg_scope_next(c, v, CFG_D_SMTP_SOURCE_HOST, &it))
        n++;
    assert_int_equal(n, 2);
    assert_int_equal(cfg_resolve_vmta(c, NULL, &r), 0);
    assert_string_equal(cfg_str(c, r.v[CFG_D_SMTP_SOURCE_HOST]->text), "127.0.0.2 g.example");
    assert_int_equal(cfg_resolve_vmta(c, "v9", &r), -ENOENT);
    cfg_free(c);
}

static void
test_global_defaults(void **state)
{
    struct cfg *c = load("total-max-smtp-out 500\n");
    char out[64];
    (void)state;
    assert_int_equal(cfg_global(c, CFG_D_TOTAL_MAX_SMTP_OUT)->num, 500);
    assert_int_equal(cfg_global(c, CFG_D_TOTAL_MAX_SMTP_OUT)->line, 1);
    assert_int_equal(cfg_global(c, CFG_D_TOTAL_MAX_SMTP_IN)->num, 100);
    assert_int_equal(cfg_global(c, CFG_D_TOTAL_MAX_SMTP_IN)->file, 0);
    assert_int_equal(cfg_global(c, CFG_D_HTTP_MGMT_PORT)->num, 8080);
    assert_int_equal(cfg_global(c, CFG_D_QUEUE_MAP_SIZE)->num, 1LL << 30);
    assert_string_equal(cfg_str(c, cfg_global(c, CFG_D_SPOOL)->text), "/var/spool/pmta");
    assert_null(cfg_global(c, CFG_D_HOST_NAME));
    assert_string_equal(cfg_format_value(c, cfg_global(c, CFG_D_RUN_AS_ROOT), out, sizeof out),
                        "no");
    assert_int_equal(qnum(c, "x.com", NULL, CFG_D_CONNECT_TIMEOUT), 120);
    assert_int_equal(qnum(c, "x.com", NULL, CFG_D_SMTP_GREETING_TIMEOUT), 300);
    assert_int_equal(qnum(c, "x.com", NULL, CFG_D_DATA_SEND_TIMEOUT), 180);
    assert_int_equal(qnum(c, "x.com", NULL, CFG_D_RETRY_RECIPIENTS_AFTER), 600);
    assert_int_equal(qnum(c, "x.com", NULL, CFG_D_MAX_RCPT_PER_TRANSACTION), 1000);
    assert_string_equal(qtext(c, "x.com", NULL, CFG_D_BOUNCE_AFTER), "4d12h");
    cfg_free(c);
}

static void
test_block_forms(void **state)
{
    struct cfg *c = load(
        "<source feeders>\n</source>\n"
        "<smtp-listener 127.0.0.1:4650>\n immediate-tls yes\n source feeders\n</smtp-listener>\n"
        "smtp-listener 127.0.0.1:2525\n"
        "<spool /var/spool/alt>\n</spool>\n");
    uint32_t it = 0, l;
    const struct cfg_value *v;
    (void)state;
    v = cfg_scope_next(c, 0, CFG_D_SMTP_LISTENER, &it);
    assert_string_equal(cfg_str(c, v->text), "127.0.0.1:4650 source=feeders");
    assert_true(v->flags & CFG_VALUE_FROM_BLOCK);
    v = cfg_scope_next(c, 0, CFG_D_SMTP_LISTENER, &it);
    assert_string_equal(cfg_str(c, v->text), "127.0.0.1:2525");
    l = cfg_find_scope(c, CFG_S_LISTENER, "127.0.0.1:4650");
    assert_int_equal(cfg_scope_get(c, l, CFG_D_IMMEDIATE_TLS)->num, 1);
    assert_string_equal(cfg_str(c, cfg_global(c, CFG_D_SPOOL)->text), "/var/spool/alt");
    cfg_free(c);
}

/* --- the seed snippets
 * ----------------------------------------------------------------------------- */

static void
test_seed_gmail(void **state)
{
    char key[512];
    char *text;
    struct cfg *c;
    (void)state;
    snprintf(key, sizeof key, "%s/dkim.key", tmpdir);
    text = read_replaced(PMTA_SRCDIR "/conf/seed/seed-gmail.conf", "/etc/pmta/dkim.key", key);
    c = load_named(PMTA_SRCDIR "/conf/seed/seed-gmail.conf", text);
    assert_null(strstr(diags, "warning"));
    assert_int_equal(cfg_resolve_queue(c, "gmail.com", NULL, &r), 0);
    assert_int_equal(r.v[CFG_D_MAX_MSG_RATE]->num, 100);
    assert_int_equal(r.v[CFG_D_MAX_MSG_RATE]->num2, 1);
    assert_int_equal(r.v[CFG_D_MAX_MSG_RATE]->line, 7);
    assert_int_equal(r.v[CFG_D_MAX_RCPT_PER_TRANSACTION]->num, 100);
    assert_int_equal(r.v[CFG_D_MAX_SMTP_OUT]->num, 20);
    assert_int_not_equal(r.v[CFG_D_MAX_SMTP_OUT]->file, 0); /* from the file, not the default */
    assert_int_equal(cfg_list(c, r.v[CFG_D_RETRY_AFTER])[0], 600);
    assert_int_equal(r.v[CFG_D_DKIM_SIGN]->num, 1);
    assert_string_equal(cfg_str(c, r.v[CFG_D_DKIM_IDENTITY]->text), "@yourdomain.com");
    assert_string_equal(cfg_str(c, r.v[CFG_D_DKIM_SELECTOR]->text), "mail");
    assert_string_equal(cfg_str(c, r.v[CFG_D_DKIM_KEY_FILE]->text), key);
    /* another domain gets none of it */
    assert_int_equal(cfg_resolve_queue(c, "yahoo.com", NULL, &r), 0);
    assert_int_equal(r.v[CFG_D_DKIM_SIGN]->num, 0);
    assert_null(r.v[CFG_D_DKIM_SELECTOR]);
    cfg_free(c);
    free(text);
}

static void
test_seed_sender(void **state)
{
    char *text = read_replaced(PMTA_SRCDIR "/conf/seed/seed-sender.conf", "\x01", "");
    struct cfg *c;
    uint32_t s;
    (void)state;
    c = load_named("seed-sender.conf", text);
    s = cfg_find_scope(c, CFG_S_SENDER, "transactional@service.example.com");
    assert_int_not_equal(s, CFG_NONE);
    assert_string_equal(cfg_str(c, cfg_scope_get(c, s, CFG_D_SENDER_VMTA)->text), "txn-vmta");
    assert_int_not_equal(cfg_find_scope(c, CFG_S_VMTA, "txn-vmta"), CFG_NONE);
    assert_int_equal(cfg_scope_get(c, s, CFG_D_SENDER_MAX_MSG_RATE)->num, 3000);
    assert_int_equal(cfg_scope_get(c, s, CFG_D_SENDER_MAX_MSG_RATE)->num2, 3600);
    assert_int_equal(cfg_scope_get(c, s, CFG_D_SENDER_MAX_CONN)->num, 80);
    assert_string_equal(cfg_str(c, cfg_scope_get(c, s, CFG_D_SENDER_BOUNCE_SENDER)->text),
                        "bounces+service@example.com");
    /* every directive of the block takes effect: no "not implemented" warning */
    assert_null(strstr(diags, "not implemented"));
    cfg_free(c);
    free(text);
}

static void
test_seed_auth(void **state)
{
    char *text = read_replaced(PMTA_SRCDIR "/conf/seed/seed-auth.conf", "\x01", "");
    struct cfg *c;
    (void)state;
    c = load_named("seed-auth.conf", text);
    assert_string_equal(cfg_str(c, cfg_global(c, CFG_D_AUTH_TYPE)->text), "auth_file");
    assert_string_equal(cfg_str(c, cfg_global(c, CFG_D_AUTH_FILE)->text),
                        "/etc/powermta/auth_file");
    cfg_free(c);
    free(text);
}

/* --- the realistic sample
 * ---------------------------------------------------------------------------- */

static struct cfg *
load_realistic(void)
{
    char dir[512];
    char *text;
    struct cfg *c;
    snprintf(dir, sizeof dir, "%s/dkim/", tmpdir);
    text = read_replaced(PMTA_SRCDIR "/conf/samples/realistic.conf", "/etc/pmta/dkim/", dir);
    c = load_named(PMTA_SRCDIR "/conf/samples/realistic.conf", text);
    free(text);
    return c;
}

static void
test_realistic(void **state)
{
    struct cfg *c = load_realistic();
    uint32_t it = 0, n = 0, s;
    (void)state;
    assert_null(strstr(diags, "error"));
    while (cfg_next_scope(c, CFG_S_DOMAIN, &it) != CFG_NONE)
        n++;
    assert_true(n >= 30);
    /* gmail: top level, then pool-gmail, then vmta-gmail-1's own block */
    assert_int_equal(qnum(c, "gmail.com", NULL, CFG_D_MAX_SMTP_OUT), 10);
    assert_int_equal(qnum(c, "gmail.com", "vmta-gmail-2", CFG_D_MAX_SMTP_OUT), 25);
    assert_int_equal(qnum(c, "gmail.com", "vmta-gmail-1", CFG_D_MAX_SMTP_OUT), 30);
    assert_string_equal(qtext(c, "gmail.com", "vmta-gmail-1", CFG_D_MAX_MSG_RATE), "600/m");
    assert_string_equal(qtext(c, "googlemail.com", NULL, CFG_D_SMTP_PATTERN_LIST), "gmail-errors");
    assert_int_equal(qnum(c, "gmail.com", NULL, CFG_D_BACKOFF_MAX_SMTP_OUT), 2);
    /* signed twice where both keys match (Ed25519 first), from <domain *> */
    assert_string_equal(qtext(c, "gmail.com", NULL, CFG_D_DKIM_ALGORITHM),
                        "ed25519-sha256, rsa-sha256");
    /* inherited from <domain *> */
    assert_string_equal(qtext(c, "gmail.com", NULL, CFG_D_RETRY_AFTER), "10m,20m,1h,4h");
    assert_int_equal(qnum(c, "gmail.com", NULL, CFG_D_BOUNCE_AFTER), 3 * 86400);
    /* yahoo: macro, explicit override, pool-nested [*.] block */
    assert_string_equal(qtext(c, "yahoo.fr", NULL, CFG_D_MAX_MSG_RATE), "500/h");
    assert_string_equal(qtext(c, "yahoo.co.uk", NULL, CFG_D_MAX_MSG_RATE), "250/h");
    assert_int_equal(qnum(c, "yahoo.co.uk", NULL, CFG_D_MAX_SMTP_OUT), 8);
    assert_int_equal(qnum(c, "yahoo.com", "vmta-bulk-1", CFG_D_MAX_SMTP_OUT), 5);
    assert_string_equal(qtext(c, "yahoo.de", NULL, CFG_D_RETRY_AFTER), "15m,30m");
    /* microsoft: nested macros, explicit hotmail.com beats the expansion */
    assert_int_equal(qnum(c, "hotmail.com", NULL, CFG_D_MAX_SMTP_OUT), 12);
    assert_int_equal(qnum(c, "live.co.uk", NULL, CFG_D_MAX_SMTP_OUT), 4);
    assert_string_equal(qtext(c, "msn.fr", NULL, CFG_D_MAX_MSG_RATE), "100/15m");
    assert_string_equal(qtext(c, "outlook.com", NULL, CFG_D_SMTP_PATTERN_LIST), "microsoft-errors");
    /* others */
    assert_string_equal(qtext(c, "aol.com", NULL, CFG_D_MAX_MSG_RATE), "83/5s");
    assert_int_equal(qnum(c, "orange.fr", NULL, CFG_D_MAX_SMTP_OUT), 3);
    assert_int_equal(qnum(c, "cs.stanford.edu", NULL, CFG_D_QUEUE_PRIORITY), 30);
    assert_int_equal(qnum(c, "stanford.edu", NULL, CFG_D_MAX_SMTP_OUT), 2);
    assert_int_equal(qnum(c, "edu", NULL, CFG_D_MAX_SMTP_OUT), 20); /* *.edu: subdomains only */
    assert_int_equal(qnum(c, "irs.gov", NULL, CFG_D_REQUIRE_STARTTLS), 1);
    assert_int_equal(qnum(c, "gov", NULL, CFG_D_REQUIRE_STARTTLS), 1); /* [*.]gov: itself too */
    assert_int_equal(qnum(c, "[192.0.2.9]", NULL, CFG_D_USE_STARTTLS), 0);
    assert_int_equal(qnum(c, "example.com", NULL, CFG_D_DKIM_SIGN), 0);
    assert_int_equal(qnum(c, "random.org", "vmta-txn", CFG_D_QUEUE_PRIORITY), 90);
    assert_int_equal(qnum(c, "random.org", "vmta-bulk-2", CFG_D_QUEUE_PRIORITY), 20);
    assert_int_equal(qnum(c, "qq.com", NULL, CFG_D_BOUNCE_AFTER), 86400);
    /* vmtas, pools, lists, accounting, global */
    assert_int_equal(cfg_resolve_vmta(c, "vmta-bulk-1", &r), 0);
    assert_int_equal(r.v[CFG_D_VMTA_MAX_SMTP_OUT]->num, 400);
    assert_string_equal(cfg_str(c, r.v[CFG_D_SMTP_SOURCE_HOST]->text),
                        "127.0.0.12 bulk1.example.com");
    s = cfg_find_scope(c, CFG_S_SMTP_PATTERN_LIST, "gmail-errors");
    it = 0, n = 0;
    while (cfg_scope_next(c, s, CFG_D_REPLY, &it))
        n++;
    assert_int_equal(n, 5); /* four lines + one included */
    s = cfg_find_scope(c, CFG_S_ACCT_FILE, "/var/log/pmta/acct.csv");
    assert_int_equal(cfg_scope_get(c, s, CFG_D_MAX_SIZE)->num, 500LL << 20);
    assert_int_equal(cfg_scope_get(c, s, CFG_D_MOVE_INTERVAL)->num, 3600);
    assert_int_equal(cfg_global(c, CFG_D_TOTAL_MAX_SMTP_OUT)->num, 2000);
    assert_int_equal(cfg_global(c, CFG_D_QUEUE_MAP_SIZE)->num, 4LL << 30);
    assert_int_equal(snum(c, "10.9.9.9", NULL, CFG_D_MAX_MESSAGE_SIZE), 100 << 20);
    assert_int_equal(snum(c, "127.0.0.1", NULL, CFG_D_REQUIRE_AUTH), 0);
    assert_int_equal(snum(c, "192.0.2.1", NULL, CFG_D_REQUIRE_AUTH), 1);
    assert_int_equal(snum(c, "192.0.2.1", "feeders", CFG_D_SOURCE_MAX_RCPT_PER_MESSAGE), 5000);
    cfg_free(c);
}

/* --- snapshots
 * --------------------------------------------------------------------------------------- */

static void
snap_path(char *out, size_t size, const char *name)
{
    snprintf(out, size, "%s/%s", tmpdir, name);
}

static void
test_snapshot_roundtrip(void **state)
{
    struct cfg *c = load_realistic(), *m;
    struct cfg_resolved a, b;
    char path[512], x[128], y[128];
    int err = 0;
    (void)state;
    snap_path(path, sizeof path, "config.snap");
    assert_int_equal(cfg_snapshot_write(c, path), 0);
    m = cfg_snapshot_map(path, &err);
    assert_non_null(m);
    assert_int_equal(m->generation, c->generation);
    assert_int_equal(m->nscopes, c->nscopes);
    assert_int_equal(m->nvalues, c->nvalues);
    assert_int_equal(cfg_resolve_queue(c, "gmail.com", "vmta-gmail-1", &a), 0);
    assert_int_equal(cfg_resolve_queue(m, "gmail.com", "vmta-gmail-1", &b), 0);
    for (int d = 0; d < CFG_D_COUNT; d++) {
        assert_true((a.v[d] == NULL) == (b.v[d] == NULL));
        if (!a.v[d])
            continue;
        assert_string_equal(cfg_format_value(c, a.v[d], x, sizeof x),
                            cfg_format_value(m, b.v[d], y, sizeof y));
        assert_int_equal(a.v[d]->line, b.v[d]->line);
    }
    assert_int_equal(qnum(m, "hotmail.com", NULL, CFG_D_MAX_SMTP_OUT), 12);
    assert_int_equal(snum(m, "10.9.9.9", NULL, CFG_D_MAX_MESSAGE_SIZE), 100 << 20);
    snap_path(x, sizeof x, "config.snap.tmp");
    assert_int_equal(access(x, F_OK), -1); /* no temporary left behind */
    cfg_free(m);
    cfg_free(c);
}

/* the header layout of cfg_snapshot.c (format version 2) */
#define SNAP_HEADER      104
#define SNAP_CHECKSUM_AT 96

/* map_corrupted - copy the snapshot, apply EDIT at OFFSET (from the end if negative), optionally
 * fix the checksum */
static int
map_corrupted(const char *src, long offset, const void *edit, size_t n, int fix_checksum,
              long truncate_to)
{
    char path[512];
    FILE *f = fopen(src, "rb");
    unsigned char *data;
    long len;
    int err = 0;
    struct cfg *m;

    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    len = ftell(f);
    rewind(f);
    data = malloc((size_t)len);
    assert_int_equal(fread(data, 1, (size_t)len, f), (size_t)len);
    fclose(f);
    if (edit)
        memcpy(data + (offset < 0 ? len + offset : offset), edit, n);
    if (fix_checksum) { /* FNV-1a 64 over the body */
        uint64_t h = 0xcbf29ce484222325ull;
        for (long i = SNAP_HEADER; i < len; i++) {
            h ^= data[i];
            h *= 0x100000001b3ull;
        }
        memcpy(data + SNAP_CHECKSUM_AT, &h, 8);
    }
    snap_path(path, sizeof path, "bad.snap");
    f = fopen(path, "wb");
    fwrite(data, 1, (size_t)(truncate_to >= 0 ? truncate_to : len), f);
    fclose(f);
    free(data);
    m = cfg_snapshot_map(path, &err);
    if (m) {
        cfg_free(m);
        return 0;
    }
    return err;
}

static void
test_snapshot_corrupt(void **state)
{
    struct cfg *c = load("<domain a.com>\n max-smtp-out 3\n</domain>\n");
    char path[512];
    uint32_t huge = 0x7fffffff;
    uint64_t off = 8;
    int err = 0;
    (void)state;
    snap_path(path, sizeof path, "small.snap");
    assert_int_equal(cfg_snapshot_write(c, path), 0);
    cfg_free(c);
    assert_int_equal(map_corrupted(path, 0, NULL, 0, 1, -1), 0); /* the tool itself is right */
    assert_int_equal(map_corrupted(path, 0, "PMTACFG9", 8, 0, -1), -EPROTO); /* magic */
    assert_int_equal(map_corrupted(path, -3, "\xff", 1, 0, -1), -EPROTO);    /* checksum */
    assert_int_equal(map_corrupted(path, 0, NULL, 0, 0, 50), -EPROTO);       /* truncated header */
    assert_int_equal(map_corrupted(path, 0, NULL, 0, 0, 200), -EPROTO);      /* truncated body */
    assert_int_equal(map_corrupted(path, 36, &huge, 4, 0, -1), -EPROTO);     /* nscopes too big */
    assert_int_equal(map_corrupted(path, 56, &off, 8, 0, -1), -EPROTO); /* offset into header */
    assert_int_equal(map_corrupted(path, -1, "x", 1, 1, -1),
                     -EPROTO); /* string pool not NUL-ended */
    /* an in-body index out of range with a valid checksum: scope 0's name offset */
    assert_int_equal(map_corrupted(path, SNAP_HEADER + 4, &huge, 4, 1, -1), -EPROTO);
    /* a scope's value run past the end of the values array */
    assert_int_equal(map_corrupted(path, SNAP_HEADER + 48 + 16, &huge, 4, 1, -1), -EPROTO);
    /* a value's directive id out of range */
    assert_int_equal(map_corrupted(path, SNAP_HEADER + 48 * 2, "\xff\xff", 2, 1, -1), -EPROTO);
    /* a value's interval-list index out of range */
    assert_int_equal(map_corrupted(path, SNAP_HEADER + 48 * 2 + 16, &huge, 4, 1, -1), -EPROTO);
    assert_null(cfg_snapshot_map("/nonexistent/x.snap", &err));
    assert_int_equal(err, -ENOENT);
}

/* test_snapshot_corrupt_record - a structured value's record is checked like the rest */
static void
test_snapshot_corrupt_record(void **state)
{
    struct cfg *c = load("<smtp-pattern-list p>\n reply /x/ mode=backoff\n</smtp-pattern-list>\n");
    char path[512];
    uint32_t huge = 0x7fffffff;
    /* scopes: global and the list (48 bytes each); the reply is the first value after the
     * defaults; its record starts after the 24 bytes of common fields */
    long at = SNAP_HEADER + 48 * 2 + (long)sizeof(struct cfg_value) * CFG_D_COUNT +
              (long)offsetof(struct cfg_value, reply.regex);
    (void)state;
    assert_int_equal(c->values[CFG_D_COUNT].type, CFG_T_REPLY);
    snap_path(path, sizeof path, "reply.snap");
    assert_int_equal(cfg_snapshot_write(c, path), 0);
    cfg_free(c);
    assert_int_equal(map_corrupted(path, 0, NULL, 0, 1, -1), 0);
    assert_int_equal(map_corrupted(path, at, &huge, 4, 1, -1), -EPROTO);
}

/* --- --show-settings data
 * ------------------------------------------------------------------------------ */

static void
test_show_settings_data(void **state)
{
    struct cfg *c = load("<domain *>\n max-smtp-out 7\n</domain>\n");
    char out[64];
    int from_file = 0, from_default = 0;
    (void)state;
    assert_int_equal(cfg_resolve_queue(c, "x.com", NULL, &r), 0);
    for (int d = 0; d < CFG_D_COUNT; d++) {
        if (!r.v[d])
            continue;
        assert_non_null(cfg_format_value(c, r.v[d], out, sizeof out));
        if (r.v[d]->file)
            from_file++;
        else
            from_default++;
    }
    assert_int_equal(from_file, 1);
    assert_true(from_default > 40);
    assert_string_equal(cfg_str(c, r.v[CFG_D_MAX_SMTP_OUT]->file), "t.conf");
    assert_int_equal(r.v[CFG_D_MAX_SMTP_OUT]->line, 2);
    cfg_free(c);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        UNIT_TEST(test_domain_specificity),
        UNIT_TEST(test_domain_case_and_dot),
        UNIT_TEST(test_domain_cidr),
        UNIT_TEST(test_macro_vs_explicit),
        UNIT_TEST(test_vmta_and_pool_nesting),
        UNIT_TEST(test_clear_with_empty_string),
        UNIT_TEST(test_backoff_fallback),
        UNIT_TEST(test_source_ip_limits),
        UNIT_TEST(test_mx_rollups),
        UNIT_TEST(test_sources),
        UNIT_TEST(test_source_reset_every_directive),
        UNIT_TEST(test_session_layers),
        UNIT_TEST(test_vmta_settings),
        UNIT_TEST(test_global_defaults),
        UNIT_TEST(test_block_forms),
        UNIT_TEST(test_seed_gmail),
        UNIT_TEST(test_seed_sender),
        UNIT_TEST(test_seed_auth),
        UNIT_TEST(test_realistic),
        UNIT_TEST(test_snapshot_roundtrip),
        UNIT_TEST(test_snapshot_corrupt),
        UNIT_TEST(test_snapshot_corrupt_record),
        UNIT_TEST(test_show_settings_data),
    };
    return cmocka_run_group_tests_name("cfg_resolve", tests, group_setup, group_teardown);
}
