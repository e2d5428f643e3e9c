/*
 * test_cfg_values.c - unit grammars of the configuration language and the
 * directive table (lookup, aliases, suggestions, defaults)
 *
 * Owns nothing; pure function tests.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "unit.h"

#include "cfg.h"

static int64_t
num(int (*fn)(const char *, int64_t *), const char *s)
{
    int64_t v = -12345;
    assert_int_equal(fn(s, &v), 0);
    return v;
}

static void
test_bool(void **state)
{
    int64_t v;
    (void)state;
    assert_int_equal(num(cfg_parse_bool, "yes"), 1);
    assert_int_equal(num(cfg_parse_bool, "True"), 1);
    assert_int_equal(num(cfg_parse_bool, "ON"), 1);
    assert_int_equal(num(cfg_parse_bool, "no"), 0);
    assert_int_equal(num(cfg_parse_bool, "FALSE"), 0);
    assert_int_equal(num(cfg_parse_bool, "off"), 0);
    assert_int_equal(cfg_parse_bool("maybe", &v), -EINVAL);
    assert_int_equal(cfg_parse_bool("1", &v), -EINVAL);
    assert_int_equal(cfg_parse_bool("", &v), -EINVAL);
    assert_int_equal(cfg_parse_bool("yes ", &v), -EINVAL);
}

static void
test_int(void **state)
{
    int64_t v;
    (void)state;
    assert_int_equal(num(cfg_parse_int, "0"), 0);
    assert_int_equal(num(cfg_parse_int, "1200"), 1200);
    assert_int_equal(num(cfg_parse_int, "9223372036854775807"), INT64_MAX);
    assert_int_equal(cfg_parse_int("9223372036854775808", &v), -ERANGE);
    assert_int_equal(cfg_parse_int("99999999999999999999999", &v), -ERANGE);
    assert_int_equal(cfg_parse_int("-1", &v), -EINVAL);
    assert_int_equal(cfg_parse_int("12a", &v), -EINVAL);
    assert_int_equal(cfg_parse_int("", &v), -EINVAL);
    assert_int_equal(cfg_parse_int("1 2", &v), -EINVAL);
}

static void
test_size(void **state)
{
    int64_t v;
    (void)state;
    assert_int_equal(num(cfg_parse_size, "50M"), 50LL << 20);
    assert_int_equal(num(cfg_parse_size, "250m"), 250LL << 20);
    assert_int_equal(num(cfg_parse_size, "100k"), 100LL << 10);
    assert_int_equal(num(cfg_parse_size, "100K"), 100LL << 10);
    assert_int_equal(num(cfg_parse_size, "1g"), 1LL << 30);
    assert_int_equal(num(cfg_parse_size, "2T"), 2LL << 40);
    assert_int_equal(num(cfg_parse_size, "10b"), 10);
    assert_int_equal(num(cfg_parse_size, "10"), 10);
    assert_int_equal(num(cfg_parse_size, "unlimited"), CFG_NEVER);
    assert_int_equal(num(cfg_parse_size, "Unlimited"), CFG_NEVER);
    assert_int_equal(cfg_parse_size("10x", &v), -EINVAL);
    assert_int_equal(cfg_parse_size("10MB", &v), -EINVAL);
    assert_int_equal(cfg_parse_size("M", &v), -EINVAL);
    assert_int_equal(cfg_parse_size("", &v), -EINVAL);
    assert_int_equal(cfg_parse_size("99999999t", &v), -ERANGE);
    assert_int_equal(cfg_parse_size("8388608T", &v), -ERANGE); /* 2^63 bytes */
}

static void
test_interval(void **state)
{
    int64_t v;
    (void)state;
    assert_int_equal(num(cfg_parse_interval, "10m"), 600);
    assert_int_equal(num(cfg_parse_interval, "4d12h"), 4 * 86400 + 12 * 3600);
    assert_int_equal(num(cfg_parse_interval, "1w2d"), 9 * 86400);
    assert_int_equal(num(cfg_parse_interval, "1w2d3h4m5s"), 9 * 86400 + 3 * 3600 + 4 * 60 + 5);
    assert_int_equal(num(cfg_parse_interval, "300s"), 300);
    assert_int_equal(num(cfg_parse_interval, "300"), 300);
    assert_int_equal(num(cfg_parse_interval, "0"), 0);
    assert_int_equal(num(cfg_parse_interval, "1H"), 3600);
    assert_int_equal(num(cfg_parse_interval, "never"), CFG_NEVER);
    assert_int_equal(num(cfg_parse_interval, "Never"), CFG_NEVER);
    assert_int_equal(cfg_parse_interval("", &v), -EINVAL);
    assert_int_equal(cfg_parse_interval("10x", &v), -EINVAL);
    assert_int_equal(cfg_parse_interval("m", &v), -EINVAL);
    assert_int_equal(cfg_parse_interval("1.5h", &v), -EINVAL);
    assert_int_equal(cfg_parse_interval("-5m", &v), -EINVAL);
    assert_int_equal(cfg_parse_interval("10 m", &v), -EINVAL);
    assert_int_equal(cfg_parse_interval("99999999999999999w", &v), -ERANGE);
    assert_int_equal(cfg_parse_interval("9223372036854775807s1s", &v), -ERANGE);
}

static void
test_interval_list(void **state)
{
    int64_t v[8];
    (void)state;
    assert_int_equal(cfg_parse_interval_list("10m,1h,4h", v, 8), 3);
    assert_int_equal(v[0], 600);
    assert_int_equal(v[1], 3600);
    assert_int_equal(v[2], 4 * 3600);
    assert_int_equal(cfg_parse_interval_list("10m,10m,1h,4h,12h", v, 8), 5);
    assert_int_equal(v[4], 12 * 3600);
    assert_int_equal(cfg_parse_interval_list("15m", v, 8), 1);
    assert_int_equal(v[0], 900);
    assert_int_equal(cfg_parse_interval_list("10m,,1h", v, 8), -EINVAL);
    assert_int_equal(cfg_parse_interval_list("10m, 1h", v, 8), -EINVAL);
    assert_int_equal(cfg_parse_interval_list("10m,", v, 8), -EINVAL);
    assert_int_equal(cfg_parse_interval_list("", v, 8), -EINVAL);
    assert_int_equal(cfg_parse_interval_list("1m,2m,3m", v, 2), -EINVAL); /* too many */
    assert_int_equal(cfg_parse_interval_list("1m,99999999999999999w", v, 8), -ERANGE);
}

static void
rate(const char *s, int64_t count, int64_t period)
{
    int64_t c = -1, p = -1;
    assert_int_equal(cfg_parse_rate(s, &c, &p), 0);
    assert_int_equal(c, count);
    assert_int_equal(p, period);
}

static void
test_rate(void **state)
{
    int64_t c, p;
    (void)state;
    rate("unlimited", 0, 0);
    rate("0", 0, 0);
    rate("100/s", 100, 1);
    rate("83/5s", 83, 5);
    rate("100/15m", 100, 900);
    rate("500/h", 500, 3600);
    rate("10/m", 10, 60);
    rate("3000/hour", 3000, 3600); /* the seed's spelling */
    rate("5/minute", 5, 60);
    rate("1/second", 1, 1);
    rate("2/day", 2, 86400);
    rate("1/d", 1, 86400);
    rate("7/hr", 7, 3600);
    rate("9/min", 9, 60);
    rate("4/sec", 4, 1);
    rate("4/2hr", 4, 7200);
    assert_int_equal(cfg_parse_rate("0/h", &c, &p), -EINVAL); /* N must be non-zero */
    assert_int_equal(cfg_parse_rate("100", &c, &p), -EINVAL);
    assert_int_equal(cfg_parse_rate("100/", &c, &p), -EINVAL);
    assert_int_equal(cfg_parse_rate("100/x", &c, &p), -EINVAL);
    assert_int_equal(cfg_parse_rate("100/0s", &c, &p), -EINVAL);
    assert_int_equal(cfg_parse_rate("/h", &c, &p), -EINVAL);
    assert_int_equal(cfg_parse_rate("-1/h", &c, &p), -EINVAL);
    assert_int_equal(cfg_parse_rate("10/5", &c, &p), -EINVAL);
    assert_int_equal(cfg_parse_rate("100/h ", &c, &p), -EINVAL);
    assert_int_equal(cfg_parse_rate("99999999999999999999/h", &c, &p), -ERANGE);
    assert_int_equal(cfg_parse_rate("1/999999999999999999d", &c, &p), -ERANGE);
}

static void
volume(const char *s, int64_t bytes, int64_t period)
{
    int64_t b = -1, p = -1;
    assert_int_equal(cfg_parse_volume_rate(s, &b, &p), 0);
    assert_int_equal(b, bytes);
    assert_int_equal(p, period);
}

static void
test_volume_rate(void **state)
{
    int64_t b, p;
    (void)state;
    volume("unlimited", 0, 0);
    volume("0", 0, 0);
    volume("100M/h", 100LL << 20, 3600);
    volume("512k/5s", 512LL << 10, 5);
    volume("1g/d", 1LL << 30, 86400);
    volume("4096/s", 4096, 1);
    volume("10m/15min", 10LL << 20, 900);
    assert_int_equal(cfg_parse_volume_rate("0k/h", &b, &p), -EINVAL);
    assert_int_equal(cfg_parse_volume_rate("100M", &b, &p), -EINVAL);
    assert_int_equal(cfg_parse_volume_rate("100M/", &b, &p), -EINVAL);
    assert_int_equal(cfg_parse_volume_rate("/h", &b, &p), -EINVAL);
    assert_int_equal(cfg_parse_volume_rate("100q/h", &b, &p), -EINVAL);
    assert_int_equal(cfg_parse_volume_rate("unlimited/h", &b, &p), -EINVAL);
    assert_int_equal(cfg_parse_volume_rate("100M/0h", &b, &p), -EINVAL);
    assert_int_equal(cfg_parse_volume_rate("99999999999999t/h", &b, &p), -ERANGE);
}

static void
test_percent(void **state)
{
    int64_t ppm = -1;
    (void)state;
    assert_int_equal(cfg_parse_percent("10%", &ppm), 0);
    assert_int_equal(ppm, 100000);
    assert_int_equal(cfg_parse_percent("0.1%", &ppm), 0);
    assert_int_equal(ppm, 1000);
    assert_int_equal(cfg_parse_percent("0.0001%", &ppm), 0);
    assert_int_equal(ppm, 1);
    assert_int_equal(cfg_parse_percent("100%", &ppm), 0);
    assert_int_equal(ppm, 1000000);
    assert_int_equal(cfg_parse_percent("0%", &ppm), 0);
    assert_int_equal(ppm, 0);
    assert_int_equal(cfg_parse_percent("100.5%", &ppm), -EINVAL);
    assert_int_equal(cfg_parse_percent("101%", &ppm), -EINVAL);
    assert_int_equal(cfg_parse_percent("10", &ppm), -EINVAL);
    assert_int_equal(cfg_parse_percent("0.00001%", &ppm), -EINVAL);
    assert_int_equal(cfg_parse_percent("1.%", &ppm), -EINVAL);
    assert_int_equal(cfg_parse_percent("-1%", &ppm), -EINVAL);
    assert_int_equal(cfg_parse_percent("5%%", &ppm), -EINVAL);
}

static const char *
fmt(enum cfg_directive d, int64_t n, int64_t n2)
{
    static char out[64];
    struct cfg_value v;

    memset(&v, 0, sizeof v);
    v.directive = (uint16_t)d;
    v.type = (uint8_t)cfg_directive_info(d)->type;
    v.num = n;
    v.num2 = n2;
    return cfg_format_value(NULL, &v, out, sizeof out);
}

static void
test_format(void **state)
{
    (void)state;
    assert_string_equal(fmt(CFG_D_BOUNCE_AFTER, 4 * 86400 + 12 * 3600, 0), "4d12h");
    assert_string_equal(fmt(CFG_D_BOUNCE_AFTER, 9 * 86400, 0), "1w2d");
    assert_string_equal(fmt(CFG_D_BACKOFF_TO_NORMAL_AFTER, CFG_NEVER, 0), "never");
    assert_string_equal(fmt(CFG_D_MAX_MSG_RATE, 3000, 3600), "3000/h");
    assert_string_equal(fmt(CFG_D_MAX_MSG_RATE, 83, 5), "83/5s");
    assert_string_equal(fmt(CFG_D_MAX_MSG_RATE, 100, 900), "100/15m");
    assert_string_equal(fmt(CFG_D_MAX_MSG_RATE, 0, 0), "unlimited");
    assert_string_equal(fmt(CFG_D_MAX_DATA_VOLUME_RATE, 100LL << 20, 3600), "100M/h");
    assert_string_equal(fmt(CFG_D_MAX_DATA_VOLUME_RATE, 512LL << 10, 5), "512K/5s");
    assert_string_equal(fmt(CFG_D_MAX_DATA_VOLUME_RATE, 0, 0), "unlimited");
    assert_string_equal(fmt(CFG_D_WARMUP_MAX_DEFERRAL_RATE, 100000, 0), "10%");
    assert_string_equal(fmt(CFG_D_WARMUP_MAX_COMPLAINT_RATE, 2500, 0), "0.25%");
    assert_string_equal(fmt(CFG_D_WARMUP_DAY, 3, 200), "3 200");
    assert_string_equal(fmt(CFG_D_WARMUP_DOUBLE_EVERY, 86400, 50000), "1d until 50000");
    assert_string_equal(fmt(CFG_D_MAX_MESSAGE_SIZE, 50LL << 20, 0), "50M");
    assert_string_equal(fmt(CFG_D_MAX_MESSAGE_SIZE, 1000, 0), "1000");
    assert_string_equal(fmt(CFG_D_MAX_MESSAGE_SIZE, CFG_NEVER, 0), "unlimited");
    assert_string_equal(fmt(CFG_D_USE_STARTTLS, 1, 0), "yes");
    assert_string_equal(fmt(CFG_D_MAX_SMTP_OUT, 20, 0), "20");
    assert_string_equal(fmt(CFG_D_DKIM_BODY_CANON, 1, 0), "simple");
}

static void
test_directive_lookup(void **state)
{
    (void)state;
    assert_int_equal(cfg_directive_lookup("max-smtp-out", CFG_S_DOMAIN), CFG_D_MAX_SMTP_OUT);
    assert_int_equal(cfg_directive_lookup("max-smtp-out", CFG_S_VMTA), CFG_D_VMTA_MAX_SMTP_OUT);
    assert_int_equal(cfg_directive_lookup("max-smtp-out", CFG_S_GLOBAL), -1);
    /* one name, two meanings; and an alias */
    assert_int_equal(cfg_directive_lookup("max-rcpt-per-message", CFG_S_SOURCE),
                     CFG_D_SOURCE_MAX_RCPT_PER_MESSAGE);
    assert_int_equal(cfg_directive_lookup("max-rcpt-per-message", CFG_S_DOMAIN),
                     CFG_D_MAX_RCPT_PER_TRANSACTION);
    assert_int_equal(cfg_directive_lookup("route", CFG_S_DOMAIN), CFG_D_SMTP_HOSTS);
    assert_int_equal(cfg_directive_lookup("auth_type", CFG_S_GLOBAL), CFG_D_AUTH_TYPE);
    assert_int_equal(cfg_directive_lookup("auth_file", CFG_S_SOURCE), CFG_D_AUTH_FILE);
    assert_int_equal(cfg_directive_lookup("no-such-thing", CFG_S_GLOBAL), -1);
    assert_null(cfg_directive_info((enum cfg_directive)CFG_D_COUNT));
}

static void
test_directive_suggest(void **state)
{
    (void)state;
    assert_string_equal(cfg_directive_suggest("max-smpt-out"), "max-smtp-out"); /* transposition */
    assert_string_equal(cfg_directive_suggest("retry-afer"), "retry-after");    /* deletion */
    assert_string_equal(cfg_directive_suggest("bounce-aftr"), "bounce-after");
    assert_string_equal(cfg_directive_suggest("dkim-sing"), "dkim-sign");
    assert_null(cfg_directive_suggest("completely-unknown-thing"));
    assert_null(cfg_directive_suggest("max-smtp-out")); /* exact: nothing to suggest */
}

/* the defaults powermta.md documents, and the ones our extensions pick */
static void
test_directive_defaults(void **state)
{
    static const struct {
        enum cfg_directive d;
        const char *text;
    } want[] = {
        { CFG_D_MAX_SMTP_OUT, "20" },
        { CFG_D_MAX_RCPT_PER_TRANSACTION, "1000" },
        { CFG_D_RETRY_AFTER, "10m" },
        { CFG_D_BOUNCE_AFTER, "4d12h" },
        { CFG_D_BACKOFF_MAX_SMTP_OUT, "20" },
        { CFG_D_BACKOFF_RETRY_AFTER, "1h" },
        { CFG_D_QUEUE_PRIORITY, "50" },
        { CFG_D_RETRY_RECIPIENTS_AFTER, "10m" },
        { CFG_D_CONNECT_TIMEOUT, "2m" },
        { CFG_D_SMTP_GREETING_TIMEOUT, "5m" },
        { CFG_D_DATA_SEND_TIMEOUT, "3m" },
        { CFG_D_TOTAL_MAX_SMTP_IN, "100" },
        { CFG_D_TOTAL_MAX_SMTP_OUT, "1200" },
        { CFG_D_HTTP_MGMT_PORT, "8080" },
        { CFG_D_QUEUE_MAP_SIZE, "1G" },
        { CFG_D_MAX_MSG_RATE, "unlimited" },
        { CFG_D_MAX_MSG_PER_CONNECTION, "0" },
        { CFG_D_MOVE_INTERVAL, "1d" },
        { CFG_D_MAX_SIZE, "250M" },
        { CFG_D_DELETE_AFTER, "8d" },
    };
    (void)state;
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        assert_string_equal(cfg_directive_info(want[i].d)->default_text, want[i].text);
    assert_null(cfg_directive_info(CFG_D_SMTP_PATTERN_LIST)->default_text);
    assert_int_equal(cfg_directive_info(CFG_D_REUSE_SSL_SESSION)->status, CFG_NOT_IMPLEMENTED);
    assert_int_equal(cfg_directive_info(CFG_D_MAX_SMTP_OUT)->status, CFG_IMPLEMENTED);
}

/* table sanity: every directive is valid somewhere, and no two ids share a name in one scope */
static void
test_directive_table(void **state)
{
    (void)state;
    for (int d = 0; d < CFG_D_COUNT; d++) {
        const struct cfg_directive_info *a = cfg_directive_info((enum cfg_directive)d);
        assert_true(a->name[0] != 0);
        assert_true((a->scopes & ~CFG_REPEATABLE) != 0);
        for (int e = d + 1; e < CFG_D_COUNT; e++) {
            const struct cfg_directive_info *b = cfg_directive_info((enum cfg_directive)e);
            if (strcmp(a->name, b->name) == 0)
                assert_int_equal(a->scopes & b->scopes & ~CFG_REPEATABLE, 0);
        }
    }
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        UNIT_TEST(test_bool),
        UNIT_TEST(test_int),
        UNIT_TEST(test_size),
        UNIT_TEST(test_interval),
        UNIT_TEST(test_interval_list),
        UNIT_TEST(test_rate),
        UNIT_TEST(test_volume_rate),
        UNIT_TEST(test_percent),
        UNIT_TEST(test_format),
        UNIT_TEST(test_directive_lookup),
        UNIT_TEST(test_directive_suggest),
        UNIT_TEST(test_directive_defaults),
        UNIT_TEST(test_directive_table),
    };
    return cmocka_run_group_tests_name("cfg_values", tests, NULL, NULL);
}
