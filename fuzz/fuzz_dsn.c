/*
 * fuzz_dsn.c - fuzz target: delivery status notifications (qmgr/qmgr_dsn.c)
 *
 * qmgr_dsn_build() writes remote reply text, addresses, ENVID, host names
 * and the original message (all peer-controlled) into a bounce. The input
 * gives all of them:
 *
 *   byte 0   RET (bits 0-1: none, full, headers, none), a From: given (2),
 *            a small max_return_size (3), no dates (4), empty fields mean
 *            NULL (5), a Diagnostic-Code type given (6)
 *   byte 1   recipients - 1 (bits 0-1) and the Action of the first three
 *            (two bits each)
 *   then NUL-separated: reporting MTA, sender, ENVID, queue id, and per
 *   recipient: final recipient, ORCPT, status, remote MTA, reply text,
 *   diagnostic type; whatever follows is the original message (any bytes).
 *
 * Checked beyond the sanitizers, which is what RFC 3464 and the header's
 * SECURITY note promise: no bare CR or LF anywhere; the report's header has
 * exactly the fields it writes, each once, ASCII, lines within 998 octets;
 * the boundary appears only on its delimiter lines (two or three, then the
 * closing one, which ends the message); the delivery-status part is 7-bit
 * and holds only delivery-status fields, one Final-Recipient per recipient,
 * so no reply text can add a field, a part or a recipient.
 */
#include <errno.h>
#include <stdbool.h>
#include <string.h>

#include "buf.h"
#include "fuzz.h"
#include "qmgr_dsn.h"

#define MAX_RCPTS 4

/* next_field - the text up to the next NUL (or the end); NULL when there is none */
static const char *
next_field(const uint8_t **p, const uint8_t *end, bool empty_is_null)
{
    const uint8_t *nul = memchr(*p, 0, (size_t)(end - *p));
    const char *s = (const char *)*p;

    if (nul == NULL)
        return NULL; /* the rest is the message */
    *p = nul + 1;
    return empty_is_null && *s == 0 ? NULL : s;
}

/* line_end - the CRLF ending the line at P, before END */
static const char *
line_end(const char *p, const char *end)
{
    const char *crlf = memmem(p, (size_t)(end - p), "\r\n", 2);

    FUZZ_CHECK(crlf != NULL);
    return crlf;
}

static bool
field_is(const char *line, size_t len, const char *const names[])
{
    for (; *names; names++) {
        size_t n = strlen(*names);

        if (len > n && strncasecmp(line, *names, n) == 0 && line[n] == ':')
            return true;
    }
    return false;
}

/* check_ascii_lines - CRLF lines up to END: printable ASCII (TAB allowed), <= 998 octets */
static void
check_ascii_lines(const char *p, const char *end)
{
    while (p < end) {
        const char *e = line_end(p, end);

        FUZZ_CHECK(e - p <= 998);
        for (const char *c = p; c < e; c++)
            FUZZ_CHECK((*c >= 32 && *c < 127) || *c == '\t');
        p = e + 2;
    }
}

/* check_header - the report's own header: known fields, once each; returns the boundary */
static void
check_header(const char *msg, const char *end, char *boundary, size_t bsize)
{
    static const char *const names[] = { "Date",
                                         "From",
                                         "To",
                                         "Subject",
                                         "Message-ID",
                                         "Auto-Submitted",
                                         "MIME-Version",
                                         "Content-Type",
                                         "Content-Transfer-Encoding",
                                         NULL };
    const char *hend = memmem(msg, (size_t)(end - msg), "\r\n\r\n", 4), *b, *q, *ctype = NULL;
    unsigned seen[sizeof names / sizeof names[0]] = { 0 };

    FUZZ_CHECK(hend != NULL);
    check_ascii_lines(msg, hend + 2);
    for (const char *p = msg; p < hend + 2;) {
        const char *e = line_end(p, end);

        if (*p != ' ' && *p != '\t') {
            size_t i;

            FUZZ_CHECK(field_is(p, (size_t)(e - p), names));
            for (i = 0; names[i]; i++)
                if (strncasecmp(p, names[i], strlen(names[i])) == 0 && p[strlen(names[i])] == ':')
                    break;
            FUZZ_CHECK(++seen[i] == 1);
            if (strcmp(names[i], "Content-Type") == 0)
                ctype = p;
        }
        p = e + 2;
    }
    /* the boundary parameter of Content-Type (peer text elsewhere may look like one) */
    FUZZ_CHECK(ctype != NULL);
    b = memmem(ctype, (size_t)(hend - ctype), "boundary=\"", 10);
    FUZZ_CHECK(b != NULL);
    b += 10;
    q = memchr(b, '"', (size_t)(hend - b));
    FUZZ_CHECK(q != NULL && q > b && (size_t)(q - b) < bsize);
    memcpy(boundary, b, (size_t)(q - b));
    boundary[q - b] = 0;
}

/* check_status_part - only delivery-status fields, 7-bit, NRCPTS recipients */
static void
check_status_part(const char *p, const char *end, size_t nrcpts)
{
    static const char *const names[] = { "Reporting-MTA",    "Original-Envelope-Id",
                                         "Arrival-Date",     "Original-Recipient",
                                         "Final-Recipient",  "Action",
                                         "Status",           "Remote-MTA",
                                         "Diagnostic-Code",  "Last-Attempt-Date",
                                         "Will-Retry-Until", NULL };
    size_t finals = 0;

    check_ascii_lines(p, end);
    while (p < end) {
        const char *e = line_end(p, end);

        if (e > p && *p != ' ' && *p != '\t') {
            FUZZ_CHECK(field_is(p, (size_t)(e - p), names));
            finals += strncmp(p, "Final-Recipient:", 16) == 0;
        }
        p = e + 2;
    }
    FUZZ_CHECK(finals == nrcpts);
}

/* check_report - the whole DSN (see the top of the file) */
static void
check_report(const struct buf *out, size_t nrcpts)
{
    const char *msg = out->data, *end = out->data + out->len, *p;
    char boundary[80], delim[96], closing[100];
    const char *delims[4];
    size_t ndelims = 0, occurrences = 0;

    for (size_t i = 0; i < out->len; i++) {
        if (msg[i] == '\n')
            FUZZ_CHECK(i > 0 && msg[i - 1] == '\r');
        if (msg[i] == '\r')
            FUZZ_CHECK(i + 1 < out->len && msg[i + 1] == '\n');
    }
    check_header(msg, end, boundary, sizeof boundary);
    snprintf(delim, sizeof delim, "\r\n--%s\r\n", boundary);
    snprintf(closing, sizeof closing, "\r\n--%s--\r\n", boundary);
    FUZZ_CHECK(out->len > strlen(closing) &&
               memcmp(end - strlen(closing), closing, strlen(closing)) == 0);
    for (p = msg; (p = memmem(p, (size_t)(end - p), boundary, strlen(boundary))) != NULL; p++)
        occurrences++;
    for (p = msg; (p = memmem(p, (size_t)(end - p), delim, strlen(delim))) != NULL; p++) {
        FUZZ_CHECK(ndelims < 3);
        delims[ndelims++] = p;
    }
    /* the header's parameter, the delimiters, the closing delimiter: nowhere else */
    FUZZ_CHECK(ndelims >= 2 && occurrences == ndelims + 2);
    delims[ndelims] = end - strlen(closing);
    /* part 1: ASCII text; part 2: the delivery-status fields */
    check_ascii_lines(delims[0] + 2, delims[1] + 2);
    p = memmem(delims[1] + 2, (size_t)(delims[2] - delims[1]), "\r\n\r\n", 4);
    FUZZ_CHECK(p != NULL);
    check_status_part(p + 4, delims[2] + 2, nrcpts);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int init;
    struct qmgr_dsn_rcpt rcpts[MAX_RCPTS];
    struct qmgr_dsn_input in;
    const uint8_t *p = data + 2, *end = data + size;
    bool null_ok;
    struct buf out;
    size_t n;
    int rc;

    if (!init++)
        fuzz_quiet_logs();
    if (size < 2)
        return 0;
    null_ok = data[0] & 0x20;
    memset(&in, 0, sizeof in);
    memset(rcpts, 0, sizeof rcpts);
    in.ret = (data[0] & 3) % 3;
    in.max_return_size = data[0] & 0x08 ? 100 : 0;
    in.now = 1700000000;
    in.arrival = data[0] & 0x10 ? 0 : in.now - 86400;
    in.reporting_mta = next_field(&p, end, null_ok);
    in.sender = next_field(&p, end, null_ok);
    if (data[0] & 0x04)
        in.from = in.sender;
    in.envid = next_field(&p, end, null_ok);
    in.queue_id = next_field(&p, end, null_ok);
    n = 1 + (data[1] & 3);
    for (size_t i = 0; i < n; i++) {
        struct qmgr_dsn_rcpt *r = &rcpts[i];

        r->action = (enum qmgr_dsn_action)(i < 3 ? data[1] >> (2 + 2 * i) & 3 : data[0] >> 6);
        r->final_rcpt = next_field(&p, end, null_ok);
        r->orcpt = next_field(&p, end, null_ok);
        r->status = next_field(&p, end, null_ok);
        r->remote_mta = next_field(&p, end, null_ok);
        r->diag = next_field(&p, end, null_ok);
        r->diag_type = data[0] & 0x40 ? next_field(&p, end, null_ok) : NULL;
        r->last_attempt = in.arrival ? in.now - 60 : 0;
        r->will_retry_until = in.arrival ? in.now + 86400 : 0;
    }
    in.message = (const char *)p;
    in.message_len = (size_t)(end - p);
    in.rcpts = rcpts;
    in.nrcpts = n;
    (void)qmgr_dsn_should_send(in.sender, data[1], rcpts[0].action, data[0] & 1);
    buf_init(&out, 0);
    rc = qmgr_dsn_build(&in, &out);
    if (!in.reporting_mta || !*in.reporting_mta || !in.sender || !*in.sender ||
        strcmp(in.sender, "<>") == 0) {
        FUZZ_CHECK(rc == -EINVAL && out.len == 0);
    } else {
        FUZZ_CHECK(rc >= 0);
        check_report(&out, n);
    }
    buf_free(&out);
    return 0;
}
