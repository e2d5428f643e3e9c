/*
 * smtpd_proto_body.c - message content: DATA (dot-stuffed, RFC 5321
 * §4.5.2) and BDAT chunks (RFC 3030)
 *
 * Owns nothing: content is streamed to the host's data_chunk callback in
 * runs that point into the caller's input, never accumulated. The DATA
 * scanner keeps only a few bits of state across inputs (where it is in the
 * line, and the held-back "." or ".\r" at the start of a line), so any split
 * of the input gives the same chunks' concatenation.
 *
 * SECURITY: the end of DATA is recognised only as CR LF "." CR LF. A bare LF
 * or bare CR anywhere in the content fails the message (550 5.6.2): other
 * MTAs read such sequences differently, and that difference is what SMTP
 * smuggling exploits. The size limit is checked before a run is handed on,
 * so the host never receives more than max_message_size octets.
 */
#include <stdio.h>
#include <string.h>

#include "smtpd_proto_int.h"

/* body_fail - refuse the content; keep reading to its end, then reply */
static void
body_fail(struct smtpd_proto *s, int code, const char *enhanced, const char *text)
{
    if (s->txn.failed)
        return;
    s->txn.failed = true;
    s->txn.fail_code = code;
    s->txn.fail_enhanced = enhanced;
    s->txn.fail_text = text;
    /* Tell the host now so it can drop what it has written. */
    smtpd_proto__txn_abort_keep(s);
}

/* emit - hand a run of content to the host, within the size limit */
static void
emit(struct smtpd_proto *s, const char *p, size_t n)
{
    uint64_t max = s->cfg.max_message_size;

    if (n == 0 || s->txn.failed)
        return;
    if (max && (n > max || s->txn.info.size > max - n)) {
        body_fail(s, 552, "5.3.4", "Message size exceeds fixed maximum message size");
        return;
    }
    s->txn.info.size += n;
    if (s->ev->data_chunk)
        s->ev->data_chunk(s->ctx, p, n);
}

/* body_done - the content is complete: reply now or wait for the commit */
static void
body_done(struct smtpd_proto *s)
{
    struct smtpd_data_info info;

    if (s->txn.failed) {
        s->state = SMTPD_STATE_COMMAND;
        smtpd_proto__reply(s, s->txn.fail_code, s->txn.fail_enhanced, s->txn.fail_text);
        smtpd_proto__txn_reset(s);
        return;
    }
    info = s->txn.info;
    /* From data_end on the host owns the message: no data_abort. */
    s->txn.open = false;
    smtpd_proto__wait(s, SMTPD_PENDING_DATA);
    if (s->ev->data_end)
        s->ev->data_end(s->ctx, &info);
    else
        smtpd_proto__decided(s, SMTPD_PENDING_DATA, SMTPD_ACCEPT, NULL);
}

/* smtpd_proto__data_start - after 354 */
void
smtpd_proto__data_start(struct smtpd_proto *s)
{
    s->state = SMTPD_STATE_DATA;
    s->scan = SMTPD_SCAN_BOL;
    s->body_line_len = 0;
}

/* line_end - a CRLF (or a refused bare LF) ended a content line */
static void
line_end(struct smtpd_proto *s)
{
    if (s->body_line_len > SMTPD_BODY_LINE_MAX)
        s->txn.info.long_lines++;
    s->body_line_len = 0;
}

/* content_byte - an ordinary position inside a line */
static void
content_byte(struct smtpd_proto *s, unsigned char c)
{
    if (c == '\r') {
        s->scan = SMTPD_SCAN_CR;
        return;
    }
    s->scan = SMTPD_SCAN_MID;
    if (c == '\n') {
        /* Not a line start: a following "." must not end the message. */
        body_fail(s, 550, "5.6.2", "Bare CR or LF in message content");
        line_end(s);
        return;
    }
    s->body_line_len++;
    if (c >= 0x80)
        s->txn.info.eight_bit = true;
}

/*
 * mid_line_run - the fast path of the scanner: the ordinary bytes from P[I] to the next CR or
 * LF (or LEN) belong to the current line; count them, note 8-bit ones. One pass, so hostile
 * content (bare LFs, no CR) stays linear. Returns the index of the CR or LF, or LEN.
 */
static size_t
mid_line_run(struct smtpd_proto *s, const char *p, size_t i, size_t len)
{
    size_t k = i;
    unsigned char any = 0;

    while (k < len) {
        unsigned char c = (unsigned char)p[k];
        if (c == '\r' || c == '\n')
            break;
        any |= c;
        k++;
    }
    s->body_line_len += k - i;
    if (any & 0x80)
        s->txn.info.eight_bit = true;
    return k;
}

/*
 * smtpd_proto__data_input - scan DATA content in P[0..LEN); returns the
 * bytes used (all of them, or up to and including the final LF).
 * RUN is the start of the bytes not yet handed on; the stuffing "." and
 * the final ".\r\n" are the only bytes never handed on.
 */
size_t
smtpd_proto__data_input(struct smtpd_proto *s, const char *p, size_t len)
{
    size_t i, run = 0;

    for (i = 0; i < len; i++) {
        unsigned char c = (unsigned char)p[i];

        switch (s->scan) {
        case SMTPD_SCAN_BOL:
            if (c == '.') {
                emit(s, p + run, i - run);
                run = i + 1;
                s->scan = SMTPD_SCAN_DOT;
                continue;
            }
            break;
        case SMTPD_SCAN_DOT:
            if (c == '\r') {
                run = i + 1;
                s->scan = SMTPD_SCAN_DOT_CR;
                continue;
            }
            break; /* the "." was stuffing: dropped */
        case SMTPD_SCAN_DOT_CR:
            if (c == '\n') {
                body_done(s);
                return i + 1;
            }
            body_fail(s, 550, "5.6.2", "Bare CR or LF in message content");
            break;
        case SMTPD_SCAN_CR:
            if (c == '\n') {
                line_end(s);
                s->scan = SMTPD_SCAN_BOL;
                continue;
            }
            body_fail(s, 550, "5.6.2", "Bare CR or LF in message content");
            break;
        case SMTPD_SCAN_MID:
            i = mid_line_run(s, p, i, len);
            if (i == len)
                goto out;
            c = (unsigned char)p[i];
            break;
        }
        content_byte(s, c);
    }
out:
    emit(s, p + run, len - run);
    return len;
}

/* smtpd_proto__bdat_start - read SIZE octets; DISCARD: the reply is sent */
void
smtpd_proto__bdat_start(struct smtpd_proto *s, uint64_t size, bool last, bool discard)
{
    if (s->state == SMTPD_STATE_CLOSED)
        return;
    s->bdat_resume = s->state;
    s->bdat_size = size;
    s->bdat_left = size;
    s->bdat_last = last;
    s->bdat_discard = discard;
    s->state = SMTPD_STATE_BDAT;
    if (size == 0)
        smtpd_proto__bdat_input(s, "", 0);
}

/* bdat_chunk_done - the chunk is read: answer it */
static void
bdat_chunk_done(struct smtpd_proto *s)
{
    char text[64];

    s->state = s->bdat_resume;
    if (s->bdat_discard)
        return;
    if (s->bdat_last || s->txn.failed) {
        s->txn.info.chunked = true;
        body_done(s);
        return;
    }
    snprintf(text, sizeof(text), "%llu octets received", (unsigned long long)s->bdat_size);
    smtpd_proto__reply(s, 250, "2.0.0", text);
}

/* smtpd_proto__bdat_input - chunk octets, taken as they are */
size_t
smtpd_proto__bdat_input(struct smtpd_proto *s, const char *p, size_t len)
{
    size_t n = len < s->bdat_left ? len : (size_t)s->bdat_left, i;

    if (!s->bdat_discard) {
        for (i = 0; i < n && !s->txn.info.eight_bit; i++)
            if ((unsigned char)p[i] >= 0x80)
                s->txn.info.eight_bit = true;
        emit(s, p, n);
    }
    s->bdat_left -= n;
    if (s->bdat_left == 0)
        bdat_chunk_done(s);
    return n;
}
