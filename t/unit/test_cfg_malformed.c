/*
 * test_cfg_malformed.c - what a typo or a fuzzer can feed the configuration
 * parser: each malformed tag, block, value and include is one file:line error,
 * never a crash, a hang or a configuration that loads
 *
 * The first case is the fuzz-found crash (`<>` made lowercase() dereference
 * NULL); the table holds its class. Every case is also loaded cut short at
 * every length, so that no prefix of a malformed line crashes either.
 * (Include loops and files are in test_cfg_parse, which has the files.)
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "unit.h"

#include "cfg.h"

static char diags[1 << 16];

static void
collect(void *ctx, enum cfg_diag_level level, const char *file, unsigned line, const char *message)
{
    size_t used = strlen(diags);

    (void)ctx;
    if (used + 1 < sizeof diags)
        snprintf(diags + used, sizeof diags - used, "%s:%u: %s: %s\n", file ? file : "-", line,
                 level == CFG_DIAG_ERROR ? "error" : "warning", message);
}

/* load - LEN bytes of TEXT as "t.conf"; the configuration (or NULL) */
static struct cfg *
load(const char *text, size_t len, unsigned *nerrors)
{
    diags[0] = 0;
    return cfg_load_buffer("t.conf", text, len, collect, NULL, nerrors);
}

/* refused_at - is TEXT refused with an error at t.conf:LINE that mentions WANT? (says why not) */
static int
refused_at(const char *text, size_t len, unsigned line, const char *want)
{
    char where[64];
    unsigned n = 0;
    struct cfg *c = load(text, len, &n);
    const char *p;

    if (c) {
        cfg_free(c);
        print_message("# loaded without error, expected t.conf:%u: %s\n", line, want);
        return 0;
    }
    snprintf(where, sizeof where, "t.conf:%u: error: ", line);
    for (p = strstr(diags, where); n > 0 && p; p = strstr(p + 1, where)) {
        const char *eol = strchr(p, '\n');
        const char *hit = strstr(p, want);
        if (hit && (!eol || hit < eol))
            return 1;
    }
    print_message("# expected \"%s%s\" among the diagnostics:\n%s", where, want, diags);
    return 0;
}

static void
expect_error_at(const char *text, size_t len, unsigned line, const char *want)
{
    if (!refused_at(text, len, line, want))
        fail();
}

static void
test_empty_tag_regression(void **state)
{
    (void)state;
    /* Found by fuzzing: `<>` crashed --check-config (and a reload took pmtad down). */
    expect_error_at("<>\n", 3, 1, "malformed tag '<>'");
    expect_error_at("host-name a\n\n<>", 16, 3, "malformed tag");
}

#define CASE(text, line, want)             \
    {                                      \
        text, sizeof(text) - 1, line, want \
    }

static const struct malformed {
    const char *text;
    size_t len;
    unsigned line;
    const char *want;
} cases[] = {
    /* tags */
    CASE("<\n", 1, "missing its closing '>'"),
    CASE("<>\n", 1, "malformed tag"),
    CASE("</>\n", 1, "malformed tag"),
    CASE("< domain *>\n", 1, "malformed tag '< domain *>'"),
    CASE("<domain*>\n</domain>\n", 1, "malformed tag"),
    CASE("<\"domain\" *>\n", 1, "malformed tag"),
    CASE("<domain *\n", 1, "missing its closing '>'"),
    CASE("<domain *>\n</domain\n", 2, "missing its closing '>'"),
    CASE("<domain *>\n</domain junk>\n", 2, "takes no argument"),
    CASE("<domain>\n</domain>\n", 1, "<domain> needs an argument"),
    CASE("<frobnicate x>\n</frobnicate>\n", 1, "unknown block <frobnicate>"),
    CASE("<source {bogus}>\n</source>\n", 1, "unknown reserved source name"),
    CASE("<domain a.com, ,b.com>\n</domain>\n", 1, "empty domain pattern"),
    CASE("<domain [300.0.0.0/8]>\n</domain>\n", 1, "bad CIDR"),
    CASE("<source 10.0.0.0/99>\n</source>\n", 1, "bad CIDR"),
    CASE("<domain a<b>\n</domain>\n", 1, "bad domain pattern"),
    /* blocks */
    CASE("host-name a\n<domain *>\nmax-smtp-out 5\n", 2, "<domain> is not closed by the end"),
    CASE("</domain>\n", 1, "</domain> without an open <domain>"),
    CASE("<domain *>\n</source>\n</domain>\n", 2, "</source> without an open <source>"),
    CASE("<virtual-mta a>\n<source 0/0>\n</source>\n</virtual-mta>\n", 2,
         "<source> is not allowed inside <virtual-mta>"),
    CASE("<domain a.com>\n<domain b.com>\n</domain>\n</domain>\n", 2,
         "<domain> is not allowed inside <domain>"),
    CASE("<virtual-mta a>\n<domain *>\n</virtual-mta>\n", 3, "mismatched </virtual-mta>"),
    CASE("<rewrite-list a>\n<a>\n<b>\n<c>\n<d>\n<e>\n<f>\n<g>\n<h>\n", 9, "nested too deeply"),
    CASE("<virtual-mta a>\n</virtual-mta>\n<virtual-mta a>\n</virtual-mta>\n", 3,
         "already defined"),
    /* lexer */
    CASE("host-name \"abc\n", 1, "unterminated quoted string"),
    CASE("\"\n", 1, "unterminated quoted string"),
    CASE("host-name a <!-- never closed\n", 1, "unterminated <!-- comment"),
    CASE("host-name a\0b\n", 1, "NUL byte"),
    CASE("host-name \xff\xfe\n", 1, "not valid UTF-8"),
    CASE("host-name \xc0\xaf\n", 1, "not valid UTF-8"),     /* overlong '/' */
    CASE("host-name \xed\xa0\x80\n", 1, "not valid UTF-8"), /* a surrogate */
    CASE("host-name \xe2\x82\n", 1, "not valid UTF-8"),     /* cut short */
    CASE("\\\n", 1, "unknown directive"),
    CASE("= yes\n", 1, "unknown directive"),
    CASE("host-name\n", 1, "missing value for 'host-name'"),
    CASE("host-name a b\n", 1, "too many values"),
    /* numbers, sizes, intervals, rates */
    CASE("total-max-smtp-out 99999999999999999999999999\n", 1, "out of range"),
    CASE("queue-map-size 99999999999999999999999999\n", 1, "too large"),
    CASE("total-max-smtp-out -1\n", 1, "bad value '-1'"),
    CASE("total-max-smtp-out 0\n", 1, "out of range"),
    CASE("queue-map-size -5M\n", 1, "bad value '-5M'"),
    CASE("queue-map-size 99999999999T\n", 1, "too large"),
    CASE("<source 0/0>\nmax-message-size -1\n</source>\n", 2, "bad value"),
    CASE("<domain *>\nmax-msg-rate 1/0s\n</domain>\n", 2, "bad value '1/0s'"),
    CASE("<domain *>\nmax-msg-rate 0/h\n</domain>\n", 2, "bad value"),
    CASE("<domain *>\nmax-msg-rate 5/\n</domain>\n", 2, "bad value"),
    CASE("<domain *>\nmax-msg-rate 5/99999999999999999999d\n</domain>\n", 2, "too large"),
    CASE("<domain *>\nretry-after 99999999999999999999w\n</domain>\n", 2, "too large"),
    CASE("<domain *>\nretry-after 10m,,1h\n</domain>\n", 2, "bad value"),
    CASE("<domain *>\nbounce-after 3x\n</domain>\n", 2, "bad value"),
    CASE("<domain *>\ndefault-smtp-port 65536\n</domain>\n", 2, "out of range"),
    /* structured values */
    CASE("<smtp-pattern-list p>\nreply /unterminated mode=backoff\n</smtp-pattern-list>\n", 2,
         "reply needs /REGEX/"),
    CASE("<smtp-pattern-list p>\nreply /(/ mode=backoff\n</smtp-pattern-list>\n", 2,
         "bad regular expression"),
    CASE("<smtp-pattern-list p>\nreply /x/ mode=sideways\n</smtp-pattern-list>\n", 2,
         "unknown reply action"),
    CASE("<pattern-list p>\nmail-from /x/\n</pattern-list>\n", 2, "pattern needs /REGEX/"),
    CASE("<domain *>\nsmtp-hosts [192.0.2.1]:99999\n</domain>\n", 2, "bad smtp-hosts"),
    CASE("<domain *>\nsmtp-hosts 300.1.2.3\n</domain>\n", 2, "bad smtp-hosts"),
    CASE("<domain *>\nsmtp-hosts [192.0.2.1]:0\n</domain>\n", 2, "bad smtp-hosts"),
    CASE("<domain *>\nsmtp-hosts a.example;;b.example\n</domain>\n", 2, "bad smtp-hosts"),
    CASE("<domain *>\nsmtp-hosts [300.1.1.1]\n</domain>\n", 2, "bad smtp-hosts"),
    CASE("smtp-listener 127.0.0.1:70000\n", 1, "bad smtp-listener address"),
    CASE("smtp-source-host 999.1.1.1 a.example\n", 1, "bad IP address"),
    CASE("<acct-file |>\n</acct-file>\n", 1, "empty command"),
    CASE("<acct-file \"|  \">\n</acct-file>\n", 1, "empty command"),
    CASE("<acct-file a b>\n</acct-file>\n", 1, "takes one name"),
    CASE("<acct-file |   >\n</acct-file>\n", 1, "empty command"),
    CASE("http-access 0/0 everything\n", 1, "unknown http-access level"),
    /* includes and macros */
    CASE("include\n", 1, "include needs one file name"),
    CASE("include \"\"\n", 1, "include needs one file name"),
    CASE("include /nonexistent/pmta.conf\n", 1, "cannot read include file"),
    CASE("include https://example.com/config\n", 1, "include from a URL"),
    CASE("domain-macro a $a\n<domain x.$a>\n</domain>\n", 2, "refers to itself"),
    CASE("<domain x.$nosuch>\n</domain>\n", 1, "unknown domain-macro"),
};

static void
test_malformed_table(void **state)
{
    int failures = 0;

    (void)state;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        if (!refused_at(cases[i].text, cases[i].len, cases[i].line, cases[i].want))
            failures++;
    assert_int_equal(failures, 0);
}

/* test_every_prefix - no truncation of a malformed case crashes or leaks */
static void
test_every_prefix(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        for (size_t len = 0; len <= cases[i].len; len++) {
            char *copy = malloc(len + 1);
            memcpy(copy, cases[i].text, len);
            copy[len] = 0;
            cfg_free(load(copy, len, NULL));
            free(copy);
        }
}

/* test_every_byte - each case with one byte replaced by each interesting value */
static void
test_every_byte(void **state)
{
    static const char swaps[] = { 0, '<', '>', '/', '"', '\\', '\n', '#', '$', ',', '\xff' };

    (void)state;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        for (size_t at = 0; at < cases[i].len; at++)
            for (size_t k = 0; k < sizeof swaps; k++) {
                char *copy = malloc(cases[i].len + 1);
                memcpy(copy, cases[i].text, cases[i].len + 1);
                copy[at] = swaps[k];
                cfg_free(load(copy, cases[i].len, NULL));
                free(copy);
            }
}

/* test_overlong_line - a line past the 64 KiB bound, and one that ends inside a tag */
static void
test_overlong_line(void **state)
{
    size_t len = 70000;
    char *text = malloc(len + 1);

    (void)state;
    memcpy(text, "host-name ", 10);
    memset(text + 10, 'a', len - 11);
    text[len - 1] = '\n';
    text[len] = 0;
    expect_error_at(text, len, 1, "line too long");
    text[0] = '<';
    expect_error_at(text, len, 1, "line too long");
    free(text);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        UNIT_TEST(test_empty_tag_regression), UNIT_TEST(test_malformed_table),
        UNIT_TEST(test_every_prefix),         UNIT_TEST(test_every_byte),
        UNIT_TEST(test_overlong_line),
    };

    return cmocka_run_group_tests_name("cfg_malformed", tests, NULL, NULL);
}
