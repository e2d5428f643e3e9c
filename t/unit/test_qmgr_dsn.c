/*
 * test_qmgr_dsn.c - unit tests for qmgr/qmgr_dsn: the RFC 3464 report's
 * header and three parts, every delivery-status field, RET=FULL/HDRS and the
 * size cap, ENVID/ORCPT, delayed reports, 8-bit originals, hostile reply text
 * (CR/LF/NUL cannot add fields or end a part), the NOTIFY and null-sender
 * decisions. The same reports are parsed by Python's email package in
 * t/integration/test_dsn_parse.py (through t/unit/dsn_tool).
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "unit.h"

#include "buf.h"
#include "msg.h"
#include "xalloc.h"

#include "qmgr_dsn.h"

#define NOW ((time_t)1700000000) /* Tue, 14 Nov 2023 22:13:20 +0000 */

static const char original[] = "From: Alice <alice@sender.example>\r\n"
                               "To: bob@rcpt.example\r\n"
                               "Subject: quarterly report\r\n"
                               "Message-ID: <orig-1@sender.example>\r\n"
                               "\r\n"
                               "Hello Bob,\r\n"
                               "the body line that must only come back with RET=FULL.\r\n";

static struct qmgr_dsn_rcpt
one_rcpt(void)
{
    struct qmgr_dsn_rcpt r = {
        .final_rcpt = "bob@rcpt.example",
        .orcpt = "rfc822;Bob@Rcpt.Example",
        .action = QMGR_DSN_FAILED,
        .status = "5.1.1",
        .remote_mta = "mx.rcpt.example",
        .diag = "550 5.1.1 <bob@rcpt.example>: Recipient address rejected: User unknown",
        .last_attempt = NOW - 5,
    };
    return r;
}

static struct qmgr_dsn_input
base_input(const struct qmgr_dsn_rcpt *rcpts, size_t n)
{
    struct qmgr_dsn_input in = {
        .reporting_mta = "mta1.openpmta.example",
        .sender = "alice@sender.example",
        .envid = "ENV-42",
        .ret = QMGR_DSN_RET_FULL,
        .arrival = NOW - 3600,
        .now = NOW,
        .queue_id = "Q123",
        .message = original,
        .message_len = sizeof original - 1,
        .rcpts = rcpts,
        .nrcpts = n,
    };
    return in;
}

/* build - the DSN as a C string (caller frees); *FLAGS gets the result bits */
static char *
build(const struct qmgr_dsn_input *in, int *flags)
{
    struct buf out = BUF_INIT;
    int rc = qmgr_dsn_build(in, &out);

    assert_true(rc >= 0);
    if (flags)
        *flags = rc;
    return buf_detach(&out, NULL);
}

static void
assert_has(const char *hay, const char *needle)
{
    if (!strstr(hay, needle))
        fail_msg("missing \"%s\" in:\n%s", needle, hay);
}

static void
assert_lacks(const char *hay, const char *needle)
{
    if (strstr(hay, needle))
        fail_msg("unexpected \"%s\" in:\n%s", needle, hay);
}

/* boundary_of - the boundary parameter (static storage) */
static const char *
boundary_of(const char *dsn)
{
    static char b[128];
    const char *p = strstr(dsn, "boundary=\"");

    assert_non_null(p);
    p += 10;
    size_t n = strcspn(p, "\"");
    assert_true(n > 0 && n < sizeof b);
    memcpy(b, p, n);
    b[n] = 0;
    return b;
}

/* assert_wellformed - CRLF only, no line over 998 octets, no NUL */
static void
assert_wellformed(const char *dsn)
{
    size_t col = 0;

    for (const char *p = dsn; *p; p++) {
        if (*p == '\n')
            assert_true(p > dsn && p[-1] == '\r');
        if (*p == '\r')
            assert_int_equal(p[1], '\n');
        col = *p == '\n' ? 0 : col + 1;
        assert_true(col <= 998);
    }
}

static void
test_full_report_fields(void **state)
{
    struct qmgr_dsn_rcpt r = one_rcpt();
    struct qmgr_dsn_input in = base_input(&r, 1);
    int flags;
    char *dsn = build(&in, &flags);
    char delim[160];

    assert_int_equal(flags, 0);
    assert_wellformed(dsn);
    assert_has(dsn, "Date: Tue, 14 Nov 2023 22:13:20 +0000\r\n");
    assert_has(dsn, "From: Mail Delivery System <MAILER-DAEMON@mta1.openpmta.example>\r\n");
    assert_has(dsn, "To: <alice@sender.example>\r\n");
    assert_has(dsn, "Subject: Undelivered Mail Returned to Sender\r\n");
    assert_has(dsn, "Message-ID: <20231114221320.");
    assert_has(dsn, "@mta1.openpmta.example>\r\n");
    assert_has(dsn, "Auto-Submitted: auto-replied\r\n");
    assert_has(dsn, "MIME-Version: 1.0\r\n");
    assert_has(dsn,
               "Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"");
    assert_has(dsn, "Content-Transfer-Encoding: 7bit\r\n");
    /* part 2 */
    assert_has(dsn, "Content-Type: message/delivery-status\r\n\r\n"
                    "Reporting-MTA: dns; mta1.openpmta.example\r\n"
                    "Original-Envelope-Id: ENV-42\r\n"
                    "Arrival-Date: Tue, 14 Nov 2023 21:13:20 +0000\r\n"
                    "\r\n"
                    "Original-Recipient: rfc822;Bob@Rcpt.Example\r\n"
                    "Final-Recipient: rfc822; bob@rcpt.example\r\n"
                    "Action: failed\r\n"
                    "Status: 5.1.1\r\n"
                    "Remote-MTA: dns; mx.rcpt.example\r\n"
                    "Diagnostic-Code: smtp; 550 5.1.1 <bob@rcpt.example>: Recipient address\r\n"
                    " rejected: User unknown\r\n"
                    "Last-Attempt-Date: Tue, 14 Nov 2023 22:13:15 +0000\r\n");
    /* part 1 names the recipient and the reply; part 3 holds the whole original */
    assert_has(dsn,
               "Content-Type: text/plain; charset=us-ascii\r\n\r\nThis is the mail system at host "
               "mta1.openpmta.example.");
    assert_has(dsn, "<bob@rcpt.example>: failed (5.1.1), host mx.rcpt.example said: 550 5.1.1");
    assert_has(dsn, "Content-Type: message/rfc822\r\n\r\nFrom: Alice <alice@sender.example>\r\n");
    assert_has(dsn, "the body line that must only come back with RET=FULL.\r\n");
    /* the boundary delimits exactly three parts and is closed */
    snprintf(delim, sizeof delim, "\r\n--%s\r\n", boundary_of(dsn));
    int parts = 0;
    for (const char *p = dsn; (p = strstr(p, delim)) != NULL; p++)
        parts++;
    assert_int_equal(parts, 3);
    snprintf(delim, sizeof delim, "\r\n--%s--\r\n", boundary_of(dsn));
    assert_has(dsn, delim);
    free(dsn);
}

static void
test_ret_hdrs_returns_headers_only(void **state)
{
    struct qmgr_dsn_rcpt r = one_rcpt();
    struct qmgr_dsn_input in = base_input(&r, 1);
    int flags;
    char *dsn;

    in.ret = QMGR_DSN_RET_HDRS;
    dsn = build(&in, &flags);
    assert_int_equal(flags, QMGR_DSN_HDRS_ONLY);
    assert_has(dsn, "Content-Type: text/rfc822-headers\r\n\r\nFrom: Alice");
    assert_has(dsn, "Subject: quarterly report\r\n");
    assert_lacks(dsn, "the body line");
    assert_lacks(dsn, "message/rfc822");
    free(dsn);
}

static void
test_no_ret_returns_full_and_cap_falls_back(void **state)
{
    struct qmgr_dsn_rcpt r = one_rcpt();
    struct qmgr_dsn_input in = base_input(&r, 1);
    int flags;
    char *dsn;

    in.ret = QMGR_DSN_RET_NONE;
    dsn = build(&in, &flags);
    assert_int_equal(flags, 0);
    assert_has(dsn, "Content-Type: message/rfc822\r\n");
    assert_has(dsn, "the body line");
    free(dsn);

    in.max_return_size = 60; /* smaller than the original: headers only */
    dsn = build(&in, &flags);
    assert_int_equal(flags, QMGR_DSN_HDRS_ONLY);
    assert_has(dsn, "Content-Type: text/rfc822-headers\r\n");
    assert_lacks(dsn, "the body line");
    free(dsn);
}

static void
test_envid_and_orcpt_optional(void **state)
{
    struct qmgr_dsn_rcpt r = one_rcpt();
    struct qmgr_dsn_input in = base_input(&r, 1);
    char *dsn;

    in.envid = NULL;
    r.orcpt = NULL;
    r.remote_mta = NULL;
    r.diag = NULL;
    r.last_attempt = 0;
    in.arrival = 0;
    dsn = build(&in, NULL);
    assert_lacks(dsn, "Original-Envelope-Id");
    assert_lacks(dsn, "Original-Recipient");
    assert_lacks(dsn, "Remote-MTA");
    assert_lacks(dsn, "Diagnostic-Code");
    assert_lacks(dsn, "Last-Attempt-Date");
    assert_lacks(dsn, "Arrival-Date");
    assert_has(dsn,
               "Final-Recipient: rfc822; bob@rcpt.example\r\nAction: failed\r\nStatus: 5.1.1\r\n");
    free(dsn);

    /* an untyped ORCPT is reported as rfc822 */
    r.orcpt = "carol@x.example";
    in.envid = "";
    dsn = build(&in, NULL);
    assert_has(dsn, "Original-Recipient: rfc822;carol@x.example\r\n");
    assert_lacks(dsn, "Original-Envelope-Id");
    free(dsn);
}

static void
test_delayed_report(void **state)
{
    struct qmgr_dsn_rcpt r = one_rcpt();
    struct qmgr_dsn_input in = base_input(&r, 1);
    char *dsn;

    r.action = QMGR_DSN_DELAYED;
    r.status = "4.4.7";
    r.diag = "421 4.7.0 Try again later";
    r.will_retry_until = NOW + 86400;
    dsn = build(&in, NULL);
    assert_has(dsn, "Subject: Delayed Mail (still being retried)\r\n");
    assert_has(dsn, "Action: delayed\r\nStatus: 4.4.7\r\n");
    assert_has(dsn, "Will-Retry-Until: Wed, 15 Nov 2023 22:13:20 +0000\r\n");
    assert_has(dsn, "The mail system will keep trying");
    free(dsn);
}

static void
test_multiple_recipients_and_status_defaults(void **state)
{
    struct qmgr_dsn_rcpt r[3] = { one_rcpt(), one_rcpt(), one_rcpt() };
    struct qmgr_dsn_input in = base_input(r, 3);
    char *dsn;

    r[1].final_rcpt = "dan@rcpt.example";
    r[1].status = "5.1"; /* malformed: replaced by the action's generic code */
    r[2].final_rcpt = "eve@late.example";
    r[2].action = QMGR_DSN_DELAYED;
    r[2].status = NULL;
    dsn = build(&in, NULL);
    assert_has(dsn, "Subject: Undelivered Mail Returned to Sender\r\n");
    assert_has(dsn,
               "Final-Recipient: rfc822; dan@rcpt.example\r\nAction: failed\r\nStatus: 5.0.0\r\n");
    assert_has(dsn,
               "Final-Recipient: rfc822; eve@late.example\r\nAction: delayed\r\nStatus: 4.0.0\r\n");
    assert_has(dsn, "<dan@rcpt.example>: failed (5.0.0)");
    free(dsn);
}

static void
test_hostile_diagnostic_is_neutralised(void **state)
{
    struct qmgr_dsn_rcpt r = one_rcpt();
    struct qmgr_dsn_input in = base_input(&r, 1);
    char hostile[3000], *dsn;
    const char *evil = "550 no\r\nX-Injected: yes\r\n\r\n--=_openpmta_x--\r\nContent-Type: "
                       "text/html\n\x01\x7f\xff done";

    r.diag = evil;
    r.remote_mta = "mx.example\r\nBcc: victim@example";
    r.final_rcpt = "bob@rcpt.example\nX-Evil: 1";
    in.envid = "E\r\nX-Envid-Injected: 1";
    dsn = build(&in, NULL);
    assert_wellformed(dsn);
    assert_lacks(dsn, "\r\nX-Injected");
    assert_lacks(dsn, "\r\nBcc:");
    assert_lacks(dsn, "\r\nX-Evil");
    assert_lacks(dsn, "\r\nX-Envid-Injected");
    assert_lacks(dsn, "\r\nContent-Type: text/html");
    assert_lacks(dsn, "\r\n--=_openpmta_x--");
    assert_has(dsn, "Diagnostic-Code: smtp; 550 no X-Injected: yes --=_openpmta_x--");
    assert_has(dsn, "text/html ? done\r\n");
    assert_has(dsn, "Remote-MTA: dns; mx.example Bcc: victim@example\r\n");

    /* very long reply text is bounded and folded into lines below 998 octets */
    memset(hostile, 'A', sizeof hostile - 1);
    hostile[sizeof hostile - 1] = 0;
    r.diag = hostile;
    free(dsn);
    dsn = build(&in, NULL);
    assert_wellformed(dsn);
    const char *d = strstr(dsn,
                           "Diagnostic-Code: smtp;\r\n AAAA"); /* folded before the long word */
    assert_non_null(d);
    assert_int_equal(strspn(d + 25, "A"), QMGR_DSN_DIAG_MAX);
    free(dsn);
}

static void
test_8bit_original(void **state)
{
    static const char latin[] = "From: =?utf-8?q?J=C3=B6rg?= <j@sender.example>\r\n"
                                "Subject: caf\xc3\xa9\r\n"
                                "Content-Type: text/plain; charset=utf-8\r\n"
                                "Content-Transfer-Encoding: 8bit\r\n"
                                "\r\n"
                                "Gr\xc3\xbc\xc3\x9f"
                                "e\r\n";
    struct qmgr_dsn_rcpt r = one_rcpt();
    struct qmgr_dsn_input in = base_input(&r, 1);
    int flags;
    char *dsn;

    in.message = latin;
    in.message_len = sizeof latin - 1;
    dsn = build(&in, &flags);
    assert_int_equal(flags, QMGR_DSN_8BIT);
    assert_has(dsn, "\r\nContent-Transfer-Encoding: 8bit\r\n\r\nThis is a MIME-encapsulated");
    assert_has(dsn, "Content-Type: message/rfc822\r\nContent-Transfer-Encoding: 8bit\r\n\r\n");
    assert_has(dsn, "Gr\xc3\xbc\xc3\x9f"
                    "e\r\n");
    free(dsn);

    in.ret = QMGR_DSN_RET_HDRS; /* 8-bit header bytes count too */
    dsn = build(&in, &flags);
    assert_int_equal(flags, QMGR_DSN_8BIT | QMGR_DSN_HDRS_ONLY);
    assert_has(dsn, "Content-Type: text/rfc822-headers\r\nContent-Transfer-Encoding: 8bit\r\n");
    free(dsn);
}

static void
test_bare_lf_original_normalised(void **state)
{
    static const char lf[] = "Subject: lf\n\nline one\nline two\rline three";
    struct qmgr_dsn_rcpt r = one_rcpt();
    struct qmgr_dsn_input in = base_input(&r, 1);
    char *dsn;

    in.message = lf;
    in.message_len = sizeof lf - 1;
    dsn = build(&in, NULL);
    assert_wellformed(dsn);
    assert_has(dsn, "Subject: lf\r\n\r\nline one\r\nline two\r\nline three\r\n");
    free(dsn);
}

static void
test_postmaster_from_and_no_original(void **state)
{
    struct qmgr_dsn_rcpt r = one_rcpt();
    struct qmgr_dsn_input in = base_input(&r, 1);
    char *dsn;

    in.from = "postmaster@openpmta.example";
    in.message = NULL;
    in.message_len = 0;
    dsn = build(&in, NULL);
    assert_has(dsn, "From: postmaster@openpmta.example\r\n");
    assert_lacks(dsn, "message/rfc822");
    assert_lacks(dsn, "rfc822-headers");
    free(dsn);
}

static void
test_invalid_input_and_limit(void **state)
{
    struct qmgr_dsn_rcpt r = one_rcpt();
    struct qmgr_dsn_input in = base_input(&r, 1);
    struct buf out;

    buf_init(&out, 0);
    in.sender = "";
    assert_int_equal(qmgr_dsn_build(&in, &out), -EINVAL);
    in.sender = "<>";
    assert_int_equal(qmgr_dsn_build(&in, &out), -EINVAL);
    in.sender = "alice@sender.example";
    in.nrcpts = 0;
    assert_int_equal(qmgr_dsn_build(&in, &out), -EINVAL);
    in.nrcpts = 1;
    in.reporting_mta = NULL;
    assert_int_equal(qmgr_dsn_build(&in, &out), -EINVAL);
    assert_int_equal(out.len, 0);
    buf_free(&out);

    in.reporting_mta = "mta1.openpmta.example";
    buf_init(&out, 200); /* a ceiling too low: nothing is appended */
    assert_int_equal(qmgr_dsn_build(&in, &out), -EMSGSIZE);
    assert_int_equal(out.len, 0);
    buf_free(&out);
}

static void
test_notify_decisions(void **state)
{
    /* NOTIFY=NEVER: nothing, whatever else is set */
    assert_false(qmgr_dsn_wanted(QMGR_DSN_NOTIFY_NEVER, QMGR_DSN_FAILED, true));
    assert_false(qmgr_dsn_wanted(QMGR_DSN_NOTIFY_NEVER, QMGR_DSN_DELAYED, true));
    /* NOTIFY given: only what it lists */
    assert_false(qmgr_dsn_wanted(QMGR_DSN_NOTIFY_DELAY, QMGR_DSN_FAILED, true));
    assert_true(qmgr_dsn_wanted(QMGR_DSN_NOTIFY_DELAY, QMGR_DSN_DELAYED, false));
    assert_true(qmgr_dsn_wanted(QMGR_DSN_NOTIFY_FAILURE, QMGR_DSN_FAILED, false));
    assert_false(qmgr_dsn_wanted(QMGR_DSN_NOTIFY_FAILURE, QMGR_DSN_DELAYED, true));
    assert_false(qmgr_dsn_wanted(QMGR_DSN_NOTIFY_SUCCESS, QMGR_DSN_FAILED, true));
    assert_true(qmgr_dsn_wanted(QMGR_DSN_NOTIFY_SUCCESS, QMGR_DSN_DELIVERED, false));
    assert_true(qmgr_dsn_wanted(QMGR_DSN_NOTIFY_SUCCESS | QMGR_DSN_NOTIFY_FAILURE, QMGR_DSN_RELAYED,
                                false));
    /* no NOTIFY: failures yes, delays per configuration, successes no */
    assert_true(qmgr_dsn_wanted(0, QMGR_DSN_FAILED, false));
    assert_true(qmgr_dsn_wanted(0, QMGR_DSN_DELAYED, true));
    assert_false(qmgr_dsn_wanted(0, QMGR_DSN_DELAYED, false));
    assert_false(qmgr_dsn_wanted(0, QMGR_DSN_DELIVERED, true));
    /* never to the null sender */
    assert_true(qmgr_dsn_should_send("a@b.example", 0, QMGR_DSN_FAILED, false));
    assert_false(qmgr_dsn_should_send("", 0, QMGR_DSN_FAILED, false));
    assert_false(qmgr_dsn_should_send("<>", 0, QMGR_DSN_FAILED, false));
    assert_false(qmgr_dsn_should_send(NULL, QMGR_DSN_NOTIFY_FAILURE, QMGR_DSN_FAILED, false));
    assert_false(
        qmgr_dsn_should_send("a@b.example", QMGR_DSN_NOTIFY_NEVER, QMGR_DSN_FAILED, false));
}

static void
test_sanitize(void **state)
{
    char out[16];

    assert_string_equal(qmgr_dsn_sanitize(out, sizeof out, "  a\r\n\tb\x01\xe9 ", 100), "a b ?");
    assert_string_equal(qmgr_dsn_sanitize(out, sizeof out, "abcdefghijklmnopqrstuvwxyz", 100),
                        "abcdefghijklmno");
    assert_string_equal(qmgr_dsn_sanitize(out, sizeof out, "abcdef", 3), "abc");
    assert_string_equal(qmgr_dsn_sanitize(out, sizeof out, NULL, 3), "");
}

static void
test_status_and_diag_text(void **state)
{
    char out[300];

    (void)state;
    assert_string_equal(qmgr_dsn_status_text("5.1.1"), "bad destination mailbox address");
    assert_string_equal(qmgr_dsn_status_text("4.4.1"), "no answer from host");
    assert_string_equal(qmgr_dsn_status_text("5.4.7"), "delivery time expired");
    assert_string_equal(qmgr_dsn_status_text("4.2.0"), "other or undefined mailbox status");
    assert_string_equal(qmgr_dsn_status_text("4.2.99"), "other or undefined mailbox status");
    assert_string_equal(qmgr_dsn_status_text("5.7.26"), "multiple authentication checks failed");
    assert_string_equal(qmgr_dsn_status_text("2.0.0"), "success");
    assert_string_equal(qmgr_dsn_status_text("2.6.0"), "success");
    assert_string_equal(qmgr_dsn_status_text("5.9.0"), "other undefined status");
    assert_string_equal(qmgr_dsn_status_text("x"), "other undefined status");
    assert_string_equal(qmgr_dsn_status_text(NULL), "other undefined status");
    assert_string_equal(qmgr_dsn_status_field(out, sizeof out, "5.1.1", "5.0.0"),
                        "5.1.1 (bad destination mailbox address)");
    assert_string_equal(qmgr_dsn_status_field(out, sizeof out, "", "4.0.0"),
                        "4.0.0 (other undefined status)");
    assert_string_equal(qmgr_dsn_status_field(out, sizeof out, "5.1.1x", "5.0.0"),
                        "5.0.0 (other undefined status)");
    /* a reply: as received, code first */
    assert_string_equal(qmgr_dsn_diag_text(out, sizeof out, 550, "5.1.1", "550 5.1.1 no such user"),
                        "550 5.1.1 no such user");
    assert_string_equal(qmgr_dsn_diag_text(out, sizeof out, 550, "5.1.1", "no such user"),
                        "550 no such user");
    /* no reply: ours, marked, never "0 ..." */
    assert_string_equal(qmgr_dsn_diag_text(out, sizeof out, 0, "4.4.1",
                                           "4.4.1 connect to mx[192.0.2.1]:25: refused"),
                        "451 4.4.1 [internal] connect to mx[192.0.2.1]:25: refused");
    assert_string_equal(qmgr_dsn_diag_text(out, sizeof out, 0, "5.4.7", "message expired"),
                        "554 5.4.7 [internal] message expired");
    assert_string_equal(qmgr_dsn_diag_text(out, sizeof out, 0, NULL, NULL),
                        "451 4.0.0 [internal] ");
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        UNIT_TEST(test_full_report_fields),
        UNIT_TEST(test_ret_hdrs_returns_headers_only),
        UNIT_TEST(test_no_ret_returns_full_and_cap_falls_back),
        UNIT_TEST(test_envid_and_orcpt_optional),
        UNIT_TEST(test_delayed_report),
        UNIT_TEST(test_multiple_recipients_and_status_defaults),
        UNIT_TEST(test_hostile_diagnostic_is_neutralised),
        UNIT_TEST(test_8bit_original),
        UNIT_TEST(test_bare_lf_original_normalised),
        UNIT_TEST(test_postmaster_from_and_no_original),
        UNIT_TEST(test_invalid_input_and_limit),
        UNIT_TEST(test_notify_decisions),
        UNIT_TEST(test_sanitize),
        UNIT_TEST(test_status_and_diag_text),
    };

    msg_init("test_qmgr_dsn");
    return cmocka_run_group_tests(tests, NULL, NULL);
}
