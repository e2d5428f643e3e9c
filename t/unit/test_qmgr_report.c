/*
 * test_qmgr_report.c - unit tests for qmgr/qmgr_report_parse.c: real DSNs
 * from Postfix and ARF complaints (t/data/reports), broken and hostile
 * reports, and the parse of every sample being the same with LF or CRLF
 * line ends and after every cut (a truncated report never reads past its
 * end: run it under ASan).
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "unit.h"

#include "buf.h"
#include "msg.h"
#include "qmgr_report_parse.h"

static char *
slurp(const char *name, size_t *len)
{
    char path[1024];
    FILE *f;
    char *data;
    long n;

    snprintf(path, sizeof path, "%s/t/data/reports/%s", PMTA_SRCDIR, name);
    f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    n = ftell(f);
    rewind(f);
    data = malloc((size_t)n + 1);
    assert_int_equal(fread(data, 1, (size_t)n, f), (size_t)n);
    data[n] = 0;
    fclose(f);
    *len = (size_t)n;
    return data;
}

static struct qmgr_report *
parse(const char *data, size_t len, int want_rc)
{
    struct qmgr_report *r = calloc(1, sizeof *r);
    char why[200];

    assert_int_equal(qmgr_report_parse(data, len, r, why, sizeof why), want_rc);
    return r;
}

static void
done(struct qmgr_report *r)
{
    qmgr_report_free(r);
    free(r);
}

static void
test_postfix_failed(void **state)
{
    size_t len;
    char *data = slurp("postfix-failed.eml", &len);
    struct qmgr_report *r = parse(data, len, 0);

    (void)state;
    assert_int_equal(r->kind, QMGR_REPORT_DSN);
    assert_string_equal(r->reporting_mta, "mx.remote.test");
    assert_string_equal(r->envid, "env-123");
    assert_int_equal(r->nrcpts, 1);
    assert_string_equal(r->rcpts[0].final_rcpt, "nouser@remote.test");
    assert_string_equal(r->rcpts[0].orcpt, "nouser@remote.test");
    assert_string_equal(r->rcpts[0].action, "failed");
    assert_string_equal(r->rcpts[0].status, "5.1.1");
    assert_string_equal(r->rcpts[0].remote_mta, "127.0.0.31");
    /* folded over two lines in the DSN: unfolded, and spelled as accounting writes it */
    assert_string_equal(r->rcpts[0].diag, "smtp;550 5.1.1 <nouser@remote.test>: Recipient "
                                          "address rejected: User unknown");
    assert_string_equal(r->x_job, "job-42");
    assert_string_equal(r->x_virtual_mta, "v1");
    assert_string_equal(r->orig_to, "nouser@remote.test");
    assert_string_equal(r->orig_message_id, "<m1@sender.test>");
    assert_non_null(r->orig_headers);
    assert_true(r->orig_headers >= data && r->orig_headers + r->orig_headers_len <= data + len);
    assert_memory_equal(r->orig_headers, "Return-Path: <bounces@sender.test>", 34);
    done(r);
    free(data);
}

static void
test_postfix_relayed(void **state)
{
    size_t len;
    char *data = slurp("postfix-relayed.eml", &len);
    struct qmgr_report *r = parse(data, len, 0);

    (void)state;
    assert_int_equal(r->kind, QMGR_REPORT_DSN);
    assert_int_equal(r->nrcpts, 1);
    assert_string_equal(r->rcpts[0].action, "relayed");
    assert_string_equal(r->rcpts[0].status, "2.0.0");
    assert_string_equal(r->rcpts[0].final_rcpt, "ok@remote.test");
    done(r);
    free(data);
}

static void
test_arf(void **state)
{
    size_t len;
    char *data = slurp("arf-rfc5965.eml", &len);
    struct qmgr_report *r = parse(data, len, 0);

    (void)state;
    assert_int_equal(r->kind, QMGR_REPORT_ARF);
    assert_string_equal(r->feedback_type, "abuse");
    assert_string_equal(r->user_agent, "SomeGenerator/1.0");
    assert_string_equal(r->version, "1");
    assert_string_equal(r->source_ip, "192.0.2.1");
    assert_string_equal(r->reported_domain, "example.net");
    assert_string_equal(r->arf_reporting_mta, "mail.example.com");
    assert_string_equal(r->orig_rcpt_to, "<user@example.com>");
    assert_string_equal(r->orig_subject, "Earn money");
    done(r);
    free(data);

    data = slurp("arf-yahoo.eml", &len);
    r = parse(data, len, 0);
    assert_int_equal(r->kind, QMGR_REPORT_ARF);
    assert_string_equal(r->user_agent, "Yahoo!-Mail-Feedback/2.0");
    assert_string_equal(r->orig_rcpt_to, "alice.complainer@yahoo.test");
    assert_string_equal(r->arrival_date, "Tue, 12 Mar 2024 09:58:40 +0000");
    assert_string_equal(r->x_job, "job-7");
    assert_string_equal(r->x_virtual_mta, "v1");
    assert_string_equal(r->orig_to, "alice.complainer@yahoo.test");
    done(r);
    free(data);

    /* the original in base64: decoded into the report's own buffer */
    data = slurp("arf-base64.eml", &len);
    r = parse(data, len, 0);
    assert_int_equal(r->kind, QMGR_REPORT_ARF);
    assert_string_equal(r->source_ip, "203.0.113.9");
    assert_string_equal(r->x_job, "weekly-99");
    assert_string_equal(r->x_virtual_mta, "v2");
    assert_string_equal(r->x_envid, "env-99-bob");
    assert_string_equal(r->orig_to, "bob.reporter@cable.test");
    assert_ptr_equal(r->orig_headers, r->decoded);
    done(r);
    free(data);
}

static void
test_not_reports(void **state)
{
    static const char plain[] = "From: MAILER-DAEMON\r\nSubject: failure\r\n\r\nUser unknown\r\n";
    static const char mdn[] =
        "Content-Type: multipart/report; report-type=disposition-notification;"
        " boundary=x\r\n\r\n--x\r\n\r\n--x--\r\n";
    struct qmgr_report *r;

    (void)state;
    r = parse(plain, sizeof plain - 1, 0);
    assert_int_equal(r->kind, QMGR_REPORT_UNKNOWN);
    done(r);
    r = parse(mdn, sizeof mdn - 1, 0);
    assert_int_equal(r->kind, QMGR_REPORT_UNKNOWN);
    done(r);
    r = parse("", 0, 0);
    assert_int_equal(r->kind, QMGR_REPORT_UNKNOWN);
    done(r);
}

static void
test_broken_reports(void **state)
{
    static const char noboundary[] =
        "Content-Type: multipart/report; report-type=delivery-status\r\n\r\nx\r\n";
    static const char nostatus[] = "Content-Type: multipart/report; report-type=delivery-status; "
                                   "boundary=\"b\"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\n"
                                   "hi\r\n--b--\r\n";
    static const char norcpt[] = "Content-Type: multipart/report; report-type=delivery-status; "
                                 "boundary=b\r\n\r\n--b\r\nContent-Type: message/delivery-status"
                                 "\r\n\r\nReporting-MTA: dns; x\r\n\r\n--b--\r\n";
    static const char notype[] = "Content-Type: multipart/report; report-type=feedback-report; "
                                 "boundary=b\r\n\r\n--b\r\nContent-Type: message/feedback-report"
                                 "\r\n\r\nVersion: 1\r\n\r\n--b--\r\n";
    struct qmgr_report *r;

    (void)state;
    done(parse(noboundary, sizeof noboundary - 1, -EBADMSG));
    done(parse(nostatus, sizeof nostatus - 1, -EBADMSG));
    done(parse(norcpt, sizeof norcpt - 1, -EBADMSG));
    r = parse(notype, sizeof notype - 1, -EBADMSG);
    done(r);
}

static void
test_hostile_fields(void **state)
{
    struct buf b = BUF_INIT;
    struct qmgr_report *r;

    (void)state;
    /* more recipient blocks than kept; a value far over the field size; NULs and controls */
    buf_append_str(&b, "Content-Type: multipart/report; report-type=delivery-status; "
                       "boundary=b\r\n\r\n--b\r\nContent-Type: message/delivery-status\r\n\r\n"
                       "Reporting-MTA: dns; x\r\n\r\n");
    for (int i = 0; i < QMGR_REPORT_RCPTS_MAX + 10; i++)
        buf_printf(&b, "Final-Recipient: rfc822; u%d@x\r\nAction: failed\r\nStatus: 5.0.0\r\n\r\n",
                   i);
    buf_append_str(&b, "Final-Recipient: rfc822; long@x\r\nAction: failed\r\nDiagnostic-Code: "
                       "smtp; ");
    for (int i = 0; i < 5000; i++)
        buf_append_str(&b, "A");
    buf_append(&b, "\0\x01\x1b\r\n--b--\r\n", 12);
    r = parse(b.data, b.len, 0);
    assert_int_equal(r->nrcpts, QMGR_REPORT_RCPTS_MAX);
    assert_string_equal(r->rcpts[0].final_rcpt, "u0@x");
    done(r);
    buf_free(&b);
}

/* fuzz-found: an Action (or Feedback-Type) longer than its field was copied without its NUL */
static void
test_long_action_and_feedback_type(void **state)
{
    struct buf b = BUF_INIT;
    struct qmgr_report *r;

    (void)state;
    buf_append_str(&b, "Content-Type: multipart/report; report-type=delivery-status; "
                       "boundary=b\r\n\r\n--b\r\nContent-Type: message/delivery-status\r\n\r\n"
                       "Reporting-MTA: dns; x\r\n\r\nFinal-Recipient: rfc822; u@x\r\n"
                       "Action: FAILED-AND-A-GREAT-DEAL-MORE-THAN-FITS-IN-THE-FIELD\r\n"
                       "Status: 5.0.0\r\n\r\n--b--\r\n");
    r = parse(b.data, b.len, 0);
    assert_int_equal(r->nrcpts, 1);
    assert_int_equal(strlen(r->rcpts[0].action), sizeof r->rcpts[0].action - 1);
    assert_memory_equal(r->rcpts[0].action, "failed-and-a-great-deal-more-th", 31);
    done(r);
    buf_reset(&b);
    buf_append_str(&b, "Content-Type: multipart/report; report-type=feedback-report; "
                       "boundary=b\r\n\r\n--b\r\nContent-Type: message/feedback-report\r\n\r\n"
                       "Feedback-Type: ");
    for (int i = 0; i < 100; i++)
        buf_append_str(&b, "X");
    buf_append_str(&b, "\r\nVersion: 1\r\n\r\n--b--\r\n");
    r = parse(b.data, b.len, 0);
    assert_int_equal(strlen(r->feedback_type), sizeof r->feedback_type - 1);
    assert_int_equal(r->feedback_type[0], 'x');
    done(r);
    buf_free(&b);
}

/* test_every_cut - every prefix of every sample, LF and CRLF: no crash, no read past the end */
static void
test_every_cut(void **state)
{
    static const char *const names[] = { "postfix-failed.eml", "postfix-relayed.eml",
                                         "arf-rfc5965.eml", "arf-yahoo.eml", "arf-base64.eml" };

    (void)state;
    for (size_t k = 0; k < sizeof names / sizeof names[0]; k++) {
        size_t len, lflen = 0;
        char *data = slurp(names[k], &len), *lf = malloc(len + 1), why[200];
        struct qmgr_report *whole = parse(data, len, 0), *other;

        for (size_t i = 0; i < len; i++) /* the same message with LF line ends */
            if (data[i] != '\r')
                lf[lflen++] = data[i];
        other = parse(lf, lflen, 0);
        assert_int_equal(other->kind, whole->kind);
        assert_int_equal(other->nrcpts, whole->nrcpts);
        assert_string_equal(other->x_job, whole->x_job);
        assert_string_equal(other->feedback_type, whole->feedback_type);
        done(other);
        for (size_t cut = 0; cut < len; cut++) {
            char *copy = malloc(cut ? cut : 1); /* exactly CUT bytes: ASan sees any overread */
            struct qmgr_report r;

            memcpy(copy, data, cut);
            (void)qmgr_report_parse(copy, cut, &r, why, sizeof why);
            qmgr_report_free(&r);
            free(copy);
        }
        done(whole);
        free(lf);
        free(data);
    }
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        UNIT_TEST(test_postfix_failed),
        UNIT_TEST(test_postfix_relayed),
        UNIT_TEST(test_arf),
        UNIT_TEST(test_not_reports),
        UNIT_TEST(test_broken_reports),
        UNIT_TEST(test_hostile_fields),
        UNIT_TEST(test_long_action_and_feedback_type),
        UNIT_TEST(test_every_cut),
    };

    msg_init("test_qmgr_report");
    msg_also_stderr(0);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
