/*
 * fuzz_report.c - fuzz target: reports that come back to us, DSNs and ARF
 * complaints (qmgr/qmgr_report_parse.c)
 *
 * The input is one received message, any bytes. Checked beyond the
 * sanitizers, which is what qmgr_report_parse.h promises: the result is 0
 * (with a kind) or -EBADMSG with a reason; every value handed out ends
 * inside its field, is at most QMGR_REPORT_FIELD_MAX bytes and holds no
 * control byte; actions and feedback types are lower case; the recipient count is capped; the
 * original's header section lies inside the input or the report's own
 * decoded part. The same message with CRLF line ends turned into LF gives
 * the same report.
 */
#include <errno.h>
#include <stdbool.h>
#include <string.h>

#include "fuzz.h"
#include "qmgr_report_parse.h"

/* clean - a value: terminated within SIZE, no control byte */
static void
clean(const char *v, size_t size)
{
    const char *end = memchr(v, 0, size);

    FUZZ_CHECK(end != NULL);
    for (const char *p = v; p < end; p++)
        FUZZ_CHECK((unsigned char)*p >= 0x20 && *p != 0x7f);
}

static void
lower(const char *v, size_t size)
{
    clean(v, size);
    for (; *v; v++)
        FUZZ_CHECK(!(*v >= 'A' && *v <= 'Z'));
}

#define CLEAN(f) clean((f), sizeof(f))

static void
check_report(const struct qmgr_report *r, const char *data, size_t len)
{
    FUZZ_CHECK(r->kind == QMGR_REPORT_UNKNOWN || r->kind == QMGR_REPORT_DSN ||
               r->kind == QMGR_REPORT_ARF);
    FUZZ_CHECK(r->nrcpts <= QMGR_REPORT_RCPTS_MAX);
    if (r->kind == QMGR_REPORT_DSN)
        FUZZ_CHECK(r->nrcpts >= 1);
    CLEAN(r->reporting_mta);
    CLEAN(r->envid);
    CLEAN(r->arrival_date);
    for (size_t i = 0; i < r->nrcpts; i++) {
        const struct qmgr_report_rcpt *rc = &r->rcpts[i];

        CLEAN(rc->final_rcpt);
        CLEAN(rc->orcpt);
        CLEAN(rc->remote_mta);
        CLEAN(rc->diag);
        lower(rc->action, sizeof rc->action);
        CLEAN(rc->status);
    }
    lower(r->feedback_type, sizeof r->feedback_type);
    CLEAN(r->version);
    CLEAN(r->source_ip);
    CLEAN(r->user_agent);
    CLEAN(r->arf_reporting_mta);
    CLEAN(r->reported_domain);
    CLEAN(r->orig_mail_from);
    CLEAN(r->orig_rcpt_to);
    CLEAN(r->orig_to);
    CLEAN(r->orig_from);
    CLEAN(r->orig_subject);
    CLEAN(r->orig_message_id);
    CLEAN(r->x_job);
    CLEAN(r->x_virtual_mta);
    CLEAN(r->x_envid);
    if (r->orig_headers && r->orig_headers_len) {
        bool in_input = r->orig_headers >= data && r->orig_headers_len <= len &&
                        r->orig_headers <= data + len - r->orig_headers_len;
        volatile char sum = 0;

        FUZZ_CHECK(in_input || r->decoded != NULL);
        /* touch every byte: ASan says if it is not all inside a live buffer */
        for (size_t i = 0; i < r->orig_headers_len; i++)
            sum ^= r->orig_headers[i];
        (void)sum;
    }
}

/* same_report - the scalar outcome of A and B agree */
static void
same_report(const struct qmgr_report *a, const struct qmgr_report *b)
{
    FUZZ_CHECK(a->kind == b->kind && a->nrcpts == b->nrcpts);
    for (size_t i = 0; i < a->nrcpts; i++) {
        FUZZ_CHECK(strcmp(a->rcpts[i].final_rcpt, b->rcpts[i].final_rcpt) == 0);
        FUZZ_CHECK(strcmp(a->rcpts[i].status, b->rcpts[i].status) == 0);
        FUZZ_CHECK(strcmp(a->rcpts[i].action, b->rcpts[i].action) == 0);
    }
    FUZZ_CHECK(strcmp(a->feedback_type, b->feedback_type) == 0);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct qmgr_report r, lf;
    static int init;
    char why[256] = "", why2[256] = "";
    char *copy;
    size_t n = 0;
    int rc, rc2;

    if (!init++)
        fuzz_quiet_logs();
    rc = qmgr_report_parse((const char *)data, size, &r, why, sizeof why);
    FUZZ_CHECK(rc == 0 || (rc == -EBADMSG && *why && memchr(why, 0, sizeof why)));
    if (rc == 0)
        check_report(&r, (const char *)data, size);
    /* CRLF -> LF: line ends must not change what is read */
    if ((copy = malloc(size ? size : 1)) == NULL)
        abort();
    for (size_t i = 0; i < size; i++)
        if (!(data[i] == '\r' && i + 1 < size && data[i + 1] == '\n'))
            copy[n++] = (char)data[i];
    rc2 = qmgr_report_parse(copy, n, &lf, why2, sizeof why2);
    if (rc2 == 0)
        check_report(&lf, copy, n);
    if (n < size && memchr(copy, '\r', n) == NULL) {
        FUZZ_CHECK(rc == rc2);
        if (rc == 0)
            same_report(&r, &lf);
    }
    qmgr_report_free(&r);
    qmgr_report_free(&lf);
    free(copy);
    return 0;
}
