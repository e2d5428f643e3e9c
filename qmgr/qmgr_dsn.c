/*
 * qmgr_dsn.c - build RFC 3464 delivery status notifications
 *
 * Builds the three body parts (human text, message/delivery-status, the
 * returned original) into scratch buffers, picks a random MIME boundary that
 * occurs in none of them, then writes the message header and the parts into
 * the caller's buffer. Also the NOTIFY / null-sender decisions.
 *
 * Owns: nothing beyond one call (scratch buffers are freed before returning).
 *
 * SECURITY: every peer-controlled string (reply text, addresses, ENVID,
 * remote host names) goes through qmgr_dsn_sanitize() before it is written,
 * and is folded only at spaces, so it can neither add header fields nor end
 * a MIME part. The returned original is copied as data under a boundary that
 * was checked not to occur in it; its bare CR/LF are normalised to CRLF.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>
#include <sys/random.h>

#include "buf.h"
#include "mailproto.h"
#include "msg.h"
#include "qstore.h"

#include "qmgr_dsn.h"

_Static_assert(QMGR_DSN_NOTIFY_NEVER == QSTORE_NOTIFY_NEVER &&
                   QMGR_DSN_NOTIFY_NEVER == MP_NOTIFY_NEVER,
               "NOTIFY bits differ");
_Static_assert(QMGR_DSN_NOTIFY_SUCCESS == QSTORE_NOTIFY_SUCCESS &&
                   QMGR_DSN_NOTIFY_SUCCESS == MP_NOTIFY_SUCCESS,
               "NOTIFY bits differ");
_Static_assert(QMGR_DSN_NOTIFY_FAILURE == QSTORE_NOTIFY_FAILURE &&
                   QMGR_DSN_NOTIFY_FAILURE == MP_NOTIFY_FAILURE,
               "NOTIFY bits differ");
_Static_assert(QMGR_DSN_NOTIFY_DELAY == QSTORE_NOTIFY_DELAY &&
                   QMGR_DSN_NOTIFY_DELAY == MP_NOTIFY_DELAY,
               "NOTIFY bits differ");
_Static_assert((int)QMGR_DSN_RET_FULL == (int)QSTORE_RET_FULL &&
                   (int)QMGR_DSN_RET_HDRS == (int)QSTORE_RET_HDRS,
               "RET values differ");

#define FOLD_AT        76 /* soft line length for folded fields and wrapped text */
#define BOUNDARY_TRIES 8  /* random boundaries tried before giving up (never happens) */

/* --- decisions --------------------------------------------------------------------------- */

bool
qmgr_dsn_wanted(unsigned notify, enum qmgr_dsn_action action, bool delay_by_default)
{
    if (notify & QMGR_DSN_NOTIFY_NEVER)
        return false;
    if (notify == 0) { /* no NOTIFY: RFC 3461 default is FAILURE */
        if (action == QMGR_DSN_FAILED)
            return true;
        return action == QMGR_DSN_DELAYED && delay_by_default;
    }
    switch (action) {
    case QMGR_DSN_FAILED:
        return (notify & QMGR_DSN_NOTIFY_FAILURE) != 0;
    case QMGR_DSN_DELAYED:
        return (notify & QMGR_DSN_NOTIFY_DELAY) != 0;
    case QMGR_DSN_DELIVERED:
    case QMGR_DSN_RELAYED:
        return (notify & QMGR_DSN_NOTIFY_SUCCESS) != 0;
    }
    return false;
}

bool
qmgr_dsn_should_send(const char *sender, unsigned notify, enum qmgr_dsn_action action,
                     bool delay_by_default)
{
    if (!sender || !*sender || strcmp(sender, "<>") == 0)
        return false; /* a bounce is never bounced */
    return qmgr_dsn_wanted(notify, action, delay_by_default);
}

const char *
qmgr_dsn_action_name(enum qmgr_dsn_action action)
{
    switch (action) {
    case QMGR_DSN_FAILED:
        return "failed";
    case QMGR_DSN_DELAYED:
        return "delayed";
    case QMGR_DSN_DELIVERED:
        return "delivered";
    case QMGR_DSN_RELAYED:
        return "relayed";
    }
    return "failed";
}

/* --- text hygiene ----------------------------------------------------------------------- */

char *
qmgr_dsn_sanitize(char *out, size_t outsize, const char *text, size_t max)
{
    size_t n = 0, limit = outsize ? outsize - 1 : 0;
    bool pending_space = false;

    if (max < limit)
        limit = max;
    for (const unsigned char *p = (const unsigned char *)(text ? text : ""); *p && n < limit; p++) {
        if (*p < 0x20 || *p == 0x7f || *p == ' ') {
            pending_space = n > 0; /* runs of blanks/controls become one space */
            continue;
        }
        if (pending_space) {
            out[n++] = ' ';
            pending_space = false;
            if (n == limit)
                break;
        }
        out[n++] = *p >= 0x80 ? '?' : (char)*p;
    }
    if (outsize)
        out[n] = 0;
    return out;
}

/* rfc5322_date - "Tue, 14 Nov 2023 22:13:20 +0000" (UTC; no locale involved) */
static char *
rfc5322_date(time_t t, char *out, size_t outsize)
{
    static const char days[7][4] = { "Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat" };
    static const char months[12][4] = { "Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                        "Jul", "Aug", "Sep", "Oct", "Nov", "Dec" };
    struct tm tm;

    gmtime_r(&t, &tm);
    snprintf(out, outsize, "%s, %d %s %04d %02d:%02d:%02d +0000", days[tm.tm_wday % 7], tm.tm_mday,
             months[tm.tm_mon % 12], tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
    return out;
}

/* random_hex - 2*N hex digits of kernel randomness into OUT (size >= 2N+1) */
static void
random_hex(char *out, size_t n)
{
    unsigned char bytes[32];

    if (n > sizeof bytes)
        n = sizeof bytes;
    if (getrandom(bytes, n, 0) != (ssize_t)n)
        msg_fatal("getrandom failed");
    for (size_t i = 0; i < n; i++)
        snprintf(out + 2 * i, 3, "%02x", bytes[i]);
}

/*
 * put_folded - append "NAME: VALUE" + CRLF, VALUE already sanitised (no CR,
 * LF or control bytes). Folds at spaces so lines stay near FOLD_AT; a single
 * word longer than that stays whole (values are bounded well below 998).
 */
static void
put_folded(struct buf *b, const char *name, const char *value)
{
    size_t col = strlen(name) + 1;
    const char *p = value;

    buf_append_str(b, name);
    buf_append_str(b, ":");
    while (*p) {
        const char *sp = strchr(p, ' ');
        size_t wlen = sp ? (size_t)(sp - p) : strlen(p);
        if (col + 1 + wlen > FOLD_AT && col > strlen(name) + 1) {
            buf_append_str(b, "\r\n");
            col = 0;
        }
        buf_append_str(b, " ");
        buf_append(b, p, wlen);
        col += 1 + wlen;
        p += wlen;
        while (*p == ' ')
            p++;
    }
    buf_append_str(b, "\r\n");
}

/* put_field - sanitise untrusted VALUE (at most MAX bytes) and append it folded */
static void
put_field(struct buf *b, const char *name, const char *value, size_t max)
{
    char clean[QMGR_DSN_DIAG_MAX + QMGR_DSN_FIELD_MAX + 64];

    put_folded(b, name, qmgr_dsn_sanitize(clean, sizeof clean, value, max));
}

/* put_typed - "NAME: TYPE; VALUE" with both halves sanitised */
static void
put_typed(struct buf *b, const char *name, const char *type, const char *value, size_t max)
{
    char t[64], v[QMGR_DSN_DIAG_MAX + 1], joined[sizeof t + sizeof v + 4];

    qmgr_dsn_sanitize(t, sizeof t, type, sizeof t - 1);
    qmgr_dsn_sanitize(v, sizeof v, value, max);
    snprintf(joined, sizeof joined, "%s; %s", t, v);
    put_folded(b, name, joined);
}

/* put_wrapped - append sanitised TEXT as body lines wrapped at spaces, continuation indented */
static void
put_wrapped(struct buf *b, const char *text)
{
    char clean[QMGR_DSN_DIAG_MAX + QMGR_DSN_FIELD_MAX + 64];
    size_t col = 0;
    const char *p = qmgr_dsn_sanitize(clean, sizeof clean, text, sizeof clean - 1);

    while (*p) {
        const char *sp = strchr(p, ' ');
        size_t wlen = sp ? (size_t)(sp - p) : strlen(p);
        if (col > 0 && col + 1 + wlen > FOLD_AT) {
            buf_append_str(b, "\r\n    ");
            col = 4;
        } else if (col > 0) {
            buf_append_str(b, " ");
            col++;
        }
        buf_append(b, p, wlen);
        col += wlen;
        p += wlen;
        while (*p == ' ')
            p++;
    }
    buf_append_str(b, "\r\n");
}

/* --- input checks ----------------------------------------------------------------------- */

/* valid_status - "C.SSS.DDD" of RFC 3463 with class 2, 4 or 5 */
static bool
valid_status(const char *s)
{
    int parts = 0, digits = 0;

    if (!s || (s[0] != '2' && s[0] != '4' && s[0] != '5') || s[1] != '.')
        return false;
    for (s += 2;; s++) {
        if (*s >= '0' && *s <= '9') {
            if (++digits > 3)
                return false;
        } else if ((*s == '.' || *s == 0) && digits > 0) {
            parts++;
            digits = 0;
            if (*s == 0)
                break;
        } else {
            return false;
        }
    }
    return parts == 2;
}

static const char *
status_or_default(const struct qmgr_dsn_rcpt *r)
{
    if (valid_status(r->status))
        return r->status;
    switch (r->action) {
    case QMGR_DSN_DELAYED:
        return "4.0.0";
    case QMGR_DSN_DELIVERED:
    case QMGR_DSN_RELAYED:
        return "2.0.0";
    case QMGR_DSN_FAILED:
        break;
    }
    return "5.0.0";
}

static bool
any_action(const struct qmgr_dsn_input *in, enum qmgr_dsn_action action)
{
    for (size_t i = 0; i < in->nrcpts; i++)
        if (in->rcpts[i].action == action)
            return true;
    return false;
}

static int
check_input(const struct qmgr_dsn_input *in)
{
    if (!in || !in->reporting_mta || !*in->reporting_mta || !in->sender || !*in->sender ||
        strcmp(in->sender, "<>") == 0 || !in->rcpts || in->nrcpts == 0)
        return -EINVAL;
    if (!in->message && in->message_len)
        return -EINVAL;
    return 0;
}

/* --- part 1: the human-readable explanation ------------------------------------------------ */

static const char *
subject_of(const struct qmgr_dsn_input *in)
{
    if (any_action(in, QMGR_DSN_FAILED))
        return "Undelivered Mail Returned to Sender";
    if (any_action(in, QMGR_DSN_DELAYED))
        return "Delayed Mail (still being retried)";
    return "Successful Mail Delivery Report";
}

static void
build_text_part(const struct qmgr_dsn_input *in, struct buf *b)
{
    char host[QMGR_DSN_FIELD_MAX + 1], line[2 * QMGR_DSN_FIELD_MAX + QMGR_DSN_DIAG_MAX + 64];

    qmgr_dsn_sanitize(host, sizeof host, in->reporting_mta, QMGR_DSN_FIELD_MAX);
    buf_printf(b, "This is the mail system at host %s.\r\n\r\n", host);
    if (any_action(in, QMGR_DSN_FAILED))
        buf_append_str(b, "I'm sorry to have to inform you that your message could not\r\n"
                          "be delivered to one or more recipients. The details are below.\r\n");
    else if (any_action(in, QMGR_DSN_DELAYED))
        buf_append_str(b, "Your message could not be delivered yet to one or more\r\n"
                          "recipients. The mail system will keep trying; you do not need\r\n"
                          "to send it again. The details are below.\r\n");
    else
        buf_append_str(b, "Your message was delivered to the recipients listed below.\r\n");
    if (in->queue_id && *in->queue_id) {
        qmgr_dsn_sanitize(line, sizeof line, in->queue_id, 64);
        buf_printf(b, "\r\nQueue ID: %s\r\n", line);
    }
    buf_append_str(b, "\r\n");
    for (size_t i = 0; i < in->nrcpts; i++) {
        const struct qmgr_dsn_rcpt *r = &in->rcpts[i];
        snprintf(line, sizeof line, "<%.*s>: %s (%s)%s%.*s%s%.*s", QMGR_DSN_FIELD_MAX,
                 r->final_rcpt ? r->final_rcpt : "", qmgr_dsn_action_name(r->action),
                 status_or_default(r), r->remote_mta && *r->remote_mta ? ", host " : "",
                 QMGR_DSN_FIELD_MAX, r->remote_mta ? r->remote_mta : "",
                 r->diag && *r->diag ? " said: " : "", QMGR_DSN_DIAG_MAX, r->diag ? r->diag : "");
        put_wrapped(b, line);
    }
}

/* --- part 2: message/delivery-status ---------------------------------------------------- */

static void
put_date(struct buf *b, const char *name, time_t t)
{
    char date[64];

    if (t > 0)
        put_folded(b, name, rfc5322_date(t, date, sizeof date));
}

/* put_orcpt - "Original-Recipient: type;address" (ORCPT as given; rfc822 when untyped) */
static void
put_orcpt(struct buf *b, const char *orcpt)
{
    char clean[QMGR_DSN_FIELD_MAX + 1], typed[QMGR_DSN_FIELD_MAX + 16];

    qmgr_dsn_sanitize(clean, sizeof clean, orcpt, QMGR_DSN_FIELD_MAX);
    if (!*clean)
        return;
    snprintf(typed, sizeof typed, "%s%s", strchr(clean, ';') ? "" : "rfc822;", clean);
    put_folded(b, "Original-Recipient", typed);
}

static void
build_status_rcpt(struct buf *b, const struct qmgr_dsn_rcpt *r)
{
    buf_append_str(b, "\r\n");
    if (r->orcpt && *r->orcpt)
        put_orcpt(b, r->orcpt);
    put_typed(b, "Final-Recipient", "rfc822", r->final_rcpt, QMGR_DSN_FIELD_MAX);
    put_folded(b, "Action", qmgr_dsn_action_name(r->action));
    put_folded(b, "Status", status_or_default(r));
    if (r->remote_mta && *r->remote_mta)
        put_typed(b, "Remote-MTA", "dns", r->remote_mta, QMGR_DSN_FIELD_MAX);
    if (r->diag && *r->diag)
        put_typed(b, "Diagnostic-Code", r->diag_type && *r->diag_type ? r->diag_type : "smtp",
                  r->diag, QMGR_DSN_DIAG_MAX);
    put_date(b, "Last-Attempt-Date", r->last_attempt);
    if (r->action == QMGR_DSN_DELAYED)
        put_date(b, "Will-Retry-Until", r->will_retry_until);
}

static void
build_status_part(const struct qmgr_dsn_input *in, struct buf *b)
{
    put_typed(b, "Reporting-MTA", "dns", in->reporting_mta, QMGR_DSN_FIELD_MAX);
    if (in->envid && *in->envid)
        put_field(b, "Original-Envelope-Id", in->envid, QMGR_DSN_FIELD_MAX);
    put_date(b, "Arrival-Date", in->arrival);
    for (size_t i = 0; i < in->nrcpts; i++)
        build_status_rcpt(b, &in->rcpts[i]);
}

/* --- part 3: the returned original ------------------------------------------------------ */

/* header_section_len - bytes of MSG up to and including the empty line (all if none) */
static size_t
header_section_len(const char *msg, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        if (msg[i] != '\n')
            continue;
        if (i + 1 < len && msg[i + 1] == '\n')
            return i + 2;
        if (i + 2 < len && msg[i + 1] == '\r' && msg[i + 2] == '\n')
            return i + 3;
    }
    return len;
}

/* append_crlf - copy LEN bytes of MSG normalising bare CR and bare LF to CRLF; ends with CRLF */
static void
append_crlf(struct buf *b, const char *msg, size_t len)
{
    size_t start = 0;

    for (size_t i = 0; i < len; i++) {
        if (msg[i] == '\r' && i + 1 < len && msg[i + 1] == '\n') {
            i++;
            continue;
        }
        if (msg[i] == '\r' || msg[i] == '\n') {
            buf_append(b, msg + start, i - start);
            buf_append_str(b, "\r\n");
            start = i + 1;
        }
    }
    buf_append(b, msg + start, len - start);
    if (b->len < 2 || memcmp(b->data + b->len - 2, "\r\n", 2) != 0)
        buf_append_str(b, "\r\n");
}

static bool
has_8bit(const struct buf *b)
{
    for (size_t i = 0; i < b->len; i++)
        if ((unsigned char)b->data[i] >= 0x80)
            return true;
    return false;
}

/* build_returned_part - fill B with the original or its headers; returns QMGR_DSN_HDRS_ONLY or 0 */
static int
build_returned_part(const struct qmgr_dsn_input *in, struct buf *b)
{
    size_t cap = in->max_return_size ? in->max_return_size : QMGR_DSN_RETURN_MAX_DEFAULT;
    size_t len = in->message ? in->message_len : 0;
    bool headers_only = in->ret == QMGR_DSN_RET_HDRS || len > cap;

    if (headers_only)
        len = header_section_len(in->message, len);
    if (len)
        append_crlf(b, in->message, len);
    return headers_only ? QMGR_DSN_HDRS_ONLY : 0;
}

/* --- assembly --------------------------------------------------------------------------- */

static bool
contains(const struct buf *b, const char *needle)
{
    return b->len && memmem(b->data, b->len, needle, strlen(needle)) != NULL;
}

/* choose_boundary - random boundary found in none of the parts; 0 or -EAGAIN */
static int
choose_boundary(char *out, size_t outsize, struct buf *const parts[], size_t nparts)
{
    for (int tries = 0; tries < BOUNDARY_TRIES; tries++) {
        char hex[33];
        bool clash = false;

        random_hex(hex, 16);
        snprintf(out, outsize, "=_openpmta_%s", hex);
        for (size_t i = 0; i < nparts && !clash; i++)
            clash = contains(parts[i], out);
        if (!clash)
            return 0;
    }
    return -EAGAIN;
}

static void
put_message_header(const struct qmgr_dsn_input *in, struct buf *out, const char *boundary,
                   bool eight_bit)
{
    char date[64], from[QMGR_DSN_FIELD_MAX + 80], host[QMGR_DSN_FIELD_MAX + 1],
        to[QMGR_DSN_FIELD_MAX + 1], id[33], msgid[QMGR_DSN_FIELD_MAX + 80];
    time_t now = in->now ? in->now : time(NULL);
    struct tm tm;

    qmgr_dsn_sanitize(host, sizeof host, in->reporting_mta, QMGR_DSN_FIELD_MAX);
    qmgr_dsn_sanitize(to, sizeof to, in->sender, QMGR_DSN_FIELD_MAX);
    if (in->from && *in->from)
        qmgr_dsn_sanitize(from, sizeof from, in->from, QMGR_DSN_FIELD_MAX);
    else
        snprintf(from, sizeof from, "Mail Delivery System <MAILER-DAEMON@%s>", host);
    gmtime_r(&now, &tm);
    random_hex(id, 8);
    snprintf(msgid, sizeof msgid, "<%04d%02d%02d%02d%02d%02d.%s@%s>", tm.tm_year + 1900,
             tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, id, host);

    put_folded(out, "Date", rfc5322_date(now, date, sizeof date));
    put_folded(out, "From", from);
    buf_printf(out, "To: <%s>\r\n", to);
    put_folded(out, "Subject", subject_of(in));
    put_folded(out, "Message-ID", msgid);
    put_folded(out, "Auto-Submitted", "auto-replied");
    put_folded(out, "MIME-Version", "1.0");
    buf_printf(out,
               "Content-Type: multipart/report; report-type=delivery-status;\r\n"
               "\tboundary=\"%s\"\r\n",
               boundary);
    buf_printf(out, "Content-Transfer-Encoding: %s\r\n", eight_bit ? "8bit" : "7bit");
    buf_append_str(out, "\r\nThis is a MIME-encapsulated message.\r\n");
}

static void
put_parts(struct buf *out, const char *boundary, const struct buf *text, const struct buf *status,
          const struct buf *orig, int flags)
{
    bool hdrs = (flags & QMGR_DSN_HDRS_ONLY) != 0, eight = (flags & QMGR_DSN_8BIT) != 0;

    buf_printf(out, "\r\n--%s\r\n", boundary);
    buf_append_str(out, "Content-Description: Notification\r\n"
                        "Content-Type: text/plain; charset=us-ascii\r\n\r\n");
    buf_append(out, text->data, text->len);
    buf_printf(out, "\r\n--%s\r\n", boundary);
    buf_append_str(out, "Content-Description: Delivery report\r\n"
                        "Content-Type: message/delivery-status\r\n\r\n");
    buf_append(out, status->data, status->len);
    if (orig->len) {
        buf_printf(out, "\r\n--%s\r\n", boundary);
        buf_printf(out, "Content-Description: %s\r\nContent-Type: %s\r\n",
                   hdrs ? "Undelivered Message Headers" : "Undelivered Message",
                   hdrs ? "text/rfc822-headers" : "message/rfc822");
        if (eight)
            buf_append_str(out, "Content-Transfer-Encoding: 8bit\r\n");
        buf_append_str(out, "\r\n");
        buf_append(out, orig->data, orig->len);
    }
    buf_printf(out, "\r\n--%s--\r\n", boundary);
}

int
qmgr_dsn_build(const struct qmgr_dsn_input *in, struct buf *out)
{
    /* scratch buffers have no ceiling, so appends to them cannot fail (xalloc or exit) */
    struct buf text = BUF_INIT, status = BUF_INIT, orig = BUF_INIT, msg = BUF_INIT;
    struct buf *const parts[] = { &text, &status, &orig };
    char boundary[64];
    int flags, rc;

    if ((rc = check_input(in)) != 0)
        return rc;
    build_text_part(in, &text);
    build_status_part(in, &status);
    flags = build_returned_part(in, &orig);
    if (has_8bit(&orig))
        flags |= QMGR_DSN_8BIT;
    if ((rc = choose_boundary(boundary, sizeof boundary, parts, 3)) != 0)
        goto out;
    put_message_header(in, &msg, boundary, (flags & QMGR_DSN_8BIT) != 0);
    put_parts(&msg, boundary, &text, &status, &orig, flags);
    /* one append into the caller's buffer: all or nothing at its limit */
    rc = buf_append(out, msg.data, msg.len) == 0 ? flags : -EMSGSIZE;
out:
    buf_free(&text);
    buf_free(&status);
    buf_free(&orig);
    buf_free(&msg);
    return rc;
}
