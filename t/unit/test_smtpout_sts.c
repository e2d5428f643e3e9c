/*
 * test_smtpout_sts.c - unit tests for the MTA-STS formats
 * (smtp-out/smtpout_sts_policy.c: policy, TXT id, MX patterns) and the HTTP
 * response reader of the policy fetch (smtp-out/smtpout_https.c), each
 * response fed whole, one byte at a time and in random splits.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "unit.h"

#include "msg.h"
#include "smtpout_https.h"
#include "smtpout_sts.h"

typedef size_t (*split_fn)(size_t i);

/* --- the policy ---------------------------------------------------------------------- */

static int
parse(const char *text, struct smtpout_sts_policy *p, char *err)
{
    memset(p, 0x55, sizeof *p);
    return smtpout_sts_parse(text, strlen(text), p, err, 160);
}

static void
test_policy(void **state)
{
    struct smtpout_sts_policy p;
    char err[160];

    (void)state;
    /* RFC 8461 section 3.2's example, CRLF */
    assert_int_equal(parse("version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\n"
                           "mx: *.example.net\r\nmx: backupmx.example.com\r\nmax_age: 604800\r\n",
                           &p, err),
                     0);
    assert_int_equal(p.mode, SMTPOUT_STS_ENFORCE);
    assert_int_equal(p.max_age, 604800);
    assert_int_equal(p.nmx, 3);
    assert_string_equal(p.mx[1], "*.example.net");
    /* LF, blanks around the colon, unknown fields, upper-case names */
    assert_int_equal(parse("version:STSv1\nmode :  testing \nextension: whatever\n"
                           "mx: MX1.Example.COM.\nmax_age: 99999999999\n",
                           &p, err),
                     -EINVAL); /* 11 digits: refused, not wrapped */
    assert_int_equal(parse("version:STSv1\nmode :  testing \nextension: whatever\n"
                           "mx: MX1.Example.COM.\nmax_age: 40000000\n",
                           &p, err),
                     0);
    assert_int_equal(p.mode, SMTPOUT_STS_TESTING);
    assert_int_equal(p.max_age, SMTPOUT_STS_MAX_AGE_MAX); /* capped */
    assert_string_equal(p.mx[0], "mx1.example.com");
    /* mode none needs no mx */
    assert_int_equal(parse("version: STSv1\nmode: none\nmax_age: 86400\n", &p, err), 0);
    assert_int_equal(p.mode, SMTPOUT_STS_NONE);
    /* what is refused, and why */
    assert_int_equal(parse("mode: enforce\nmx: a.test\nmax_age: 1\n", &p, err), -EINVAL);
    assert_string_equal(err, "no version: STSv1");
    assert_int_equal(parse("version: STSv2\nmode: enforce\nmx: a.test\nmax_age: 1\n", &p, err),
                     -EINVAL);
    assert_string_equal(err, "line 1: version is not STSv1");
    assert_int_equal(parse("version: STSv1\nmode: strict\nmx: a.test\nmax_age: 1\n", &p, err),
                     -EINVAL);
    assert_int_equal(parse("version: STSv1\nmode: enforce\nmax_age: 1\n", &p, err), -EINVAL);
    assert_string_equal(err, "no mx");
    assert_int_equal(parse("version: STSv1\nmode: enforce\nmx: a.test\n", &p, err), -EINVAL);
    assert_int_equal(parse("version: STSv1\nmode: enforce\nmx: a b.test\nmax_age: 1\n", &p, err),
                     -EINVAL);
    assert_int_equal(parse("version: STSv1\nmode: enforce\nmx: *.\nmax_age: 1\n", &p, err),
                     -EINVAL);
    assert_int_equal(parse("version: STSv1\nno colon here\n", &p, err), -EINVAL);
    assert_int_equal(parse("version: STSv1\nmode: enforce\nmx: a.test\nmax_age: -1\n", &p, err),
                     -EINVAL);
    /* a NUL inside is a bad line, never a shorter string */
    assert_int_equal(smtpout_sts_parse("version: STSv1\nmode: enf\0orce\nmx: a\nmax_age: 1\n", 46,
                                       &p, err, sizeof err),
                     -EINVAL);
}

static void
test_policy_limits(void **state)
{
    struct smtpout_sts_policy p;
    struct buf b = BUF_INIT;
    char err[160];

    (void)state;
    /* more mx lines than we keep: the first SMTPOUT_STS_MX_MAX count */
    buf_append_str(&b, "version: STSv1\nmode: enforce\nmax_age: 10\n");
    for (int i = 0; i < SMTPOUT_STS_MX_MAX + 5; i++)
        buf_printf(&b, "mx: mx%d.test\n", i);
    assert_int_equal(smtpout_sts_parse(b.data, b.len, &p, err, sizeof err), 0);
    assert_int_equal(p.nmx, SMTPOUT_STS_MX_MAX);
    /* an overlong line is an error, not a truncated value */
    buf_reset(&b);
    buf_append_str(&b, "version: STSv1\nmode: enforce\nmax_age: 10\nmx: ");
    for (int i = 0; i < 1100; i++)
        buf_append_str(&b, "a");
    assert_int_equal(smtpout_sts_parse(b.data, b.len, &p, err, sizeof err), -EINVAL);
    assert_string_equal(err, "line 4: line too long");
    buf_free(&b);
}

static void
test_txt_id(void **state)
{
    char id[SMTPOUT_STS_ID_MAX + 1];

    (void)state;
    assert_int_equal(smtpout_sts_txt_id("v=STSv1; id=20160831085700Z;", id), 0);
    assert_string_equal(id, "20160831085700Z");
    assert_int_equal(smtpout_sts_txt_id("v=STSv1;id=abc", id), 0);
    assert_string_equal(id, "abc");
    assert_int_equal(smtpout_sts_txt_id("v=STSv1; ext=1; id=Z9 ", id), 0);
    assert_string_equal(id, "Z9");
    assert_int_equal(smtpout_sts_txt_id("id=abc; v=STSv1", id), -EINVAL); /* v= first */
    assert_int_equal(smtpout_sts_txt_id("v=STSv1", id), -EINVAL);         /* no id */
    assert_int_equal(smtpout_sts_txt_id("v=STSv1; id=", id), -EINVAL);
    assert_int_equal(smtpout_sts_txt_id("v=STSv1; id=a-b", id), -EINVAL);
    assert_int_equal(smtpout_sts_txt_id("v=STSv1; id=123456789012345678901234567890123", id),
                     -EINVAL); /* 33 characters */
    assert_int_equal(smtpout_sts_txt_id("v=spf1 -all", id), -EINVAL);
}

static void
test_mx_match(void **state)
{
    struct smtpout_sts_policy p = { .nmx = 2 };

    (void)state;
    strcpy(p.mx[0], "mail.example.com");
    strcpy(p.mx[1], "*.example.net");
    assert_true(smtpout_sts_mx_match(&p, "mail.example.com"));
    assert_true(smtpout_sts_mx_match(&p, "MAIL.Example.com."));
    assert_false(smtpout_sts_mx_match(&p, "mail2.example.com"));
    assert_true(smtpout_sts_mx_match(&p, "mx1.example.net"));
    assert_false(smtpout_sts_mx_match(&p, "a.b.example.net")); /* one label only */
    assert_false(smtpout_sts_mx_match(&p, "example.net"));
    assert_false(smtpout_sts_mx_match(&p, ".example.net"));
    assert_false(smtpout_sts_mx_match(&p, "mx1.example.net.evil"));
}

/* --- the HTTP reader ------------------------------------------------------------------- */

/* read_response - BYTES through a reader in pieces SPLIT gives, then EOF; a summary line */
static void
read_response(struct buf *out, const char *bytes, size_t len, size_t max_body, split_fn split)
{
    struct smtpout_http_reader rd;
    enum smtpout_http_read rc = HTTP_READ_MORE;
    size_t pos = 0;

    smtpout_http_reader_init(&rd, max_body);
    for (size_t i = 0; pos < len && rc == HTTP_READ_MORE; i++) {
        size_t n = split(i);
        n = n > len - pos ? len - pos : n;
        rc = smtpout_http_reader_feed(&rd, bytes + pos, n);
        pos += n;
    }
    if (rc == HTTP_READ_MORE)
        rc = smtpout_http_reader_eof(&rd);
    if (rc == HTTP_READ_DONE)
        buf_printf(out, "done %d %s [%.*s]", rd.status, rd.content_type, (int)rd.body.len,
                   rd.body.data ? rd.body.data : "");
    else
        buf_printf(out, "error %s", rd.error);
    smtpout_http_reader_free(&rd);
}

static const char *
response(const char *bytes, size_t len, size_t max_body)
{
    static char text[4096];
    struct buf whole = BUF_INIT, other = BUF_INIT;

    read_response(&whole, bytes, len, max_body, unit_split_whole);
    read_response(&other, bytes, len, max_body, unit_split_one);
    assert_string_equal(other.data, whole.data);
    for (int round = 0; round < 20; round++) {
        buf_reset(&other);
        read_response(&other, bytes, len, max_body, unit_split_random);
        assert_string_equal(other.data, whole.data);
    }
    snprintf(text, sizeof text, "%s", whole.data);
    buf_free(&whole);
    buf_free(&other);
    return text;
}

#define RESP(lit, max) response(lit, sizeof(lit) - 1, max)

static void
test_http_reader(void **state)
{
    (void)state;
    srand(7);
    assert_string_equal(RESP("HTTP/1.0 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\n"
                             "Content-Length: 5\r\n\r\nhello and more",
                             100),
                        "done 200 text/plain [hello]");
    /* no Content-Length: the body runs to the end of the connection */
    assert_string_equal(RESP("HTTP/1.1 200 OK\nContent-Type: TEXT/PLAIN\n\nversion: STSv1\n", 100),
                        "done 200 text/plain [version: STSv1\n]");
    assert_string_equal(RESP("HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n", 100),
                        "done 404  []");
    assert_string_equal(RESP("HTTP/1.1 301 Moved\r\nLocation: https://x/\r\n\r\n", 100),
                        "done 301  []");
    /* hostile and broken responses */
    assert_string_equal(RESP("HTTP/1.1 200 OK\r\nContent-Length: 101\r\n\r\n", 100),
                        "error response body too large");
    assert_string_equal(RESP("HTTP/1.1 200 OK\r\n\r\n0123456789", 5),
                        "error response body too large");
    assert_string_equal(
        RESP("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n", 100),
        "error Transfer-Encoding in an HTTP/1.0 response");
    assert_string_equal(RESP("HTTP/1.1 200 OK\r\nContent-Length: 1x\r\n\r\n", 100),
                        "error bad Content-Length");
    assert_string_equal(RESP("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", 100),
                        "error connection closed before the response was complete");
    assert_string_equal(RESP("ICY 200 OK\r\n\r\n", 100), "error malformed HTTP status line");
    assert_string_equal(RESP("HTTP/1.1 2000 OK\r\n\r\n", 100), "error malformed HTTP status line");
    assert_string_equal(RESP("HTTP/1.1 200 OK\r\nno colon\r\n\r\n", 100),
                        "error malformed HTTP header line");
    assert_string_equal(RESP("HTTP/1.1 200 OK\r\n", 100),
                        "error connection closed before the response was complete");
}

static void
test_http_reader_bounds(void **state)
{
    struct buf b = BUF_INIT;

    (void)state;
    /* a header line over HTTP_LINE_MAX fails even before its end arrives */
    buf_append_str(&b, "HTTP/1.1 200 OK\r\nX-Long: ");
    for (int i = 0; i < HTTP_LINE_MAX; i++)
        buf_append_str(&b, "a");
    assert_string_equal(response(b.data, b.len, 100), "error HTTP header line too long");
    /* many short lines: the header section is bounded too */
    buf_reset(&b);
    buf_append_str(&b, "HTTP/1.1 200 OK\r\n");
    for (int i = 0; i < HTTP_HEAD_MAX / 10; i++)
        buf_append_str(&b, "X-A: 1234\r\n");
    assert_string_equal(response(b.data, b.len, 100), "error HTTP header section too large");
    buf_free(&b);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        UNIT_TEST(test_policy),   UNIT_TEST(test_policy_limits), UNIT_TEST(test_txt_id),
        UNIT_TEST(test_mx_match), UNIT_TEST(test_http_reader),   UNIT_TEST(test_http_reader_bounds),
    };

    msg_init("test_smtpout_sts");
    msg_also_stderr(0);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
