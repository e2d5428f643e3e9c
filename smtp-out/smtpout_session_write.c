/*
 * smtpout_session_write.c - what a session writes: the engine's commands and
 * the message body streamed from the caller's buffer with LF -> CRLF and,
 * after DATA, dot-stuffing (after BDAT the engine counted the bytes:
 * smtpout_bdat_len() is what body_fill sends); in clear straight to the
 * socket (what it takes at once, the rest queued in order), with TLS as
 * records from the outgoing memory BIO
 *
 * Owns: each queued write and the copy backing it (freed when written;
 * command copies are wiped first, they may hold AUTH credentials).
 *
 * SECURITY: the body is the caller's, sent as it is but for line ends and
 * dot-stuffing; nothing here reads from the peer.
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include "buf.h"
#include "xalloc.h"
#include "smtpout_session_int.h"

struct session_write {
    uv_write_t req;
    struct smtpout_session *s;
    char *heap; /* owned copy (commands, TLS records) or NULL */
    size_t len; /* of heap */
    int body;   /* part of the message body */
};

static void
session_written(uv_write_t *req, int status)
{
    struct session_write *w = (struct session_write *)req;
    struct smtpout_session *s = w->s;
    int body = w->body;

    if (w->heap && !body) /* commands may hold AUTH credentials */
        OPENSSL_cleanse(w->heap, w->len);
    free(w->heap);
    free(w);
    if (status < 0) {
        if (status != UV_ECANCELED && !s->closing) {
            char what[128];
            snprintf(what, sizeof what, "lost connection while writing: %s", uv_strerror(status));
            session_fail_local(s, SMTPOUT_TEMP, "4.4.2", what);
        }
        return;
    }
    if (body && s->pumping)
        session_body_pump(s);
}

/*
 * write_now - write what the socket takes of BUFS at once; the unsent rest
 * goes to REST (at most NBUFS entries, pointing into BUFS' memory) and its
 * count is returned. uv_try_write() refuses while earlier writes are queued,
 * so the order holds; an error leaves everything to uv_write() to report.
 */
static unsigned
write_now(struct smtpout_session *s, const uv_buf_t *bufs, unsigned nbufs, uv_buf_t *rest)
{
    int done = uv_try_write((uv_stream_t *)&s->tcp, bufs, nbufs);
    size_t skip = done > 0 ? (size_t)done : 0;
    unsigned i, n = 0;

    for (i = 0; i < nbufs; i++) {
        if (skip >= bufs[i].len) {
            skip -= bufs[i].len;
            continue;
        }
        rest[n++] = uv_buf_init(bufs[i].base + skip, (unsigned)(bufs[i].len - skip));
        skip = 0;
    }
    return n;
}

/*
 * session_write - send BUFS: written now if the socket takes them (no request,
 * no completion callback, no epoll_ctl when libuv stops polling for POLLOUT),
 * else the rest is queued. HEAP (owned, may be NULL) backs BUFS and is freed
 * once they are out; with COPY the unsent rest is copied first (BUFS are the
 * caller's). 1: all written now; 0: queued (session_written follows); -1: failed.
 */
static int
session_write(struct smtpout_session *s, const uv_buf_t *bufs, unsigned nbufs, char *heap, int body,
              int copy)
{
    uv_buf_t small[8];
    uv_buf_t *rest = nbufs <= 8 ? small : xmalloc(sizeof(*rest) * nbufs);
    unsigned n = write_now(s, bufs, nbufs, rest);
    struct session_write *w;
    int rc;

    if (n == 0) {
        if (rest != small)
            free(rest);
        if (heap && !body) /* commands may hold AUTH credentials */
            OPENSSL_cleanse(heap, bufs[0].len);
        free(heap);
        return 1;
    }
    if (copy) {
        struct buf b;

        buf_init(&b, 0);
        for (unsigned i = 0; i < n; i++)
            buf_append(&b, rest[i].base, rest[i].len);
        free(heap);
        rest[0] = uv_buf_init(b.data, (unsigned)b.len);
        heap = buf_detach(&b, NULL);
        n = 1;
    }
    w = xcalloc(1, sizeof *w);
    w->s = s;
    w->heap = heap;
    w->len = heap ? (copy ? rest[0].len : bufs[0].len) : 0; /* HEAP backs one buffer */
    w->body = body;
    rc = uv_write(&w->req, (uv_stream_t *)&s->tcp, rest, n, session_written);
    if (rest != small)
        free(rest);
    if (rc < 0) {
        free(heap);
        free(w);
        if (!s->closing) {
            char what[128];
            snprintf(what, sizeof what, "cannot write: %s", uv_strerror(rc));
            session_fail_local(s, SMTPOUT_TEMP, "4.4.2", what);
        }
        return -1;
    }
    return 0;
}

/* session_tls_flush - send whatever OpenSSL wrote into the outgoing memory BIO;
   as session_write (1 also when there was nothing to send) */
int
session_tls_flush(struct smtpout_session *s, int body)
{
    size_t pending = BIO_ctrl_pending(s->wbio);
    char *heap;
    int n;
    uv_buf_t b;

    if (pending == 0)
        return 1;
    heap = xmalloc(pending);
    n = BIO_read(s->wbio, heap, (int)pending);
    if (n <= 0) {
        free(heap);
        return 1;
    }
    b = uv_buf_init(heap, (unsigned)n);
    return session_write(s, &b, 1, heap, body, 0);
}

/* tls_write - encrypt LEN bytes (memory BIO: SSL_write takes them all) */
static int
tls_write(struct smtpout_session *s, const char *data, size_t len)
{
    int n;

    ERR_clear_error();
    n = SSL_write(s->ssl, data, (int)len);
    if (n != (int)len) {
        session_fail_local(s, SMTPOUT_TEMP, "4.7.5", "TLS write failed");
        return -1;
    }
    return 0;
}

/* session_flush_output - send the commands the engine wrote (as one piece, in order) */
void
session_flush_output(struct smtpout_session *s)
{
    struct buf *out = smtpout_proto_output(s->proto);
    size_t len = out->len;
    char *data;
    uv_buf_t b;

    if (len == 0)
        return;
    data = buf_detach(out, NULL);
    session_transcript_lines(s, ">", data, len);
    if (s->closing) {
        free(data);
        return;
    }
    if (s->tls_active) {
        if (tls_write(s, data, len) == 0)
            (void)session_tls_flush(s, 0);
        OPENSSL_cleanse(data, len); /* may be an AUTH line */
        free(data);
        return;
    }
    b = uv_buf_init(data, (unsigned)len);
    (void)session_write(s, &b, 1, data, 0, 0);
}

/* --- the message body ------------------------------------------------------------- */

static char DOT[] = ".";
static char CRLF[] = "\r\n";
static char DOT_CRLF[] = ".\r\n";

/*
 * body_fill - the next batch of the body as iovecs pointing into the
 * caller's message (no copy) plus small constant pieces: a "." before each
 * line that starts with ".", CRLF for a bare LF, and the final ".\r\n".
 * Runs of well-formed CRLF lines stay one iovec.
 */
static unsigned
body_fill(struct smtpout_session *s, uv_buf_t *bufs, unsigned maxbufs)
{
    const char *d = s->msg->data;
    size_t len = s->msg->len, off = s->body_off, seg = off, bytes = 0;
    unsigned n = 0;

#define FLUSH_SEGMENT(upto)                                                   \
    do {                                                                      \
        if ((upto) > seg) {                                                   \
            bufs[n++] = uv_buf_init((char *)d + seg, (unsigned)((upto)-seg)); \
            bytes += (upto)-seg;                                              \
        }                                                                     \
        seg = (upto);                                                         \
    } while (0)

    while (off < len && n + 4 <= maxbufs && bytes + (off - seg) < BODY_BATCH_BYTES) {
        const char *nl;
        size_t eol;

        if (d[off] == '.' && !s->bdat) { /* dot-stuffing (RFC 5321 4.5.2) */
            FLUSH_SEGMENT(off);
            bufs[n++] = uv_buf_init(DOT, 1);
            bytes++;
        }
        nl = memchr(d + off, '\n', len - off);
        if (nl == NULL) { /* last line without a line end */
            off = len;
            break;
        }
        eol = (size_t)(nl - d);
        if (eol > off && d[eol - 1] == '\r') { /* already CRLF: extend the run */
            off = eol + 1;
            continue;
        }
        FLUSH_SEGMENT(eol); /* bare LF becomes CRLF */
        bufs[n++] = uv_buf_init(CRLF, 2);
        bytes += 2;
        off = seg = eol + 1;
    }
    FLUSH_SEGMENT(off);
#undef FLUSH_SEGMENT
    s->body_off = off;
    if (off == len && n + 2 <= maxbufs) {
        if (len > 0 && d[len - 1] != '\n')
            bufs[n++] = uv_buf_init(CRLF, 2);
        if (!s->bdat)
            bufs[n++] = uv_buf_init(DOT_CRLF, 3);
        s->body_queued_all = 1;
    }
    return n;
}

/* body_write_tls - TLS needs a copy anyway: stage plaintext, one SSL_write;
   as session_write */
static int
body_write_tls(struct smtpout_session *s, const uv_buf_t *bufs, unsigned n)
{
    struct buf stage;
    unsigned i;
    int rc = 0;

    buf_init(&stage, 0);
    for (i = 0; i < n && rc == 0; i++) {
        buf_append(&stage, bufs[i].base, bufs[i].len);
        if (stage.len >= TLS_STAGE_BYTES || i + 1 == n) {
            rc = tls_write(s, stage.data, stage.len);
            buf_reset(&stage);
        }
    }
    buf_free(&stage);
    return rc == 0 ? session_tls_flush(s, 1) : -1;
}

/*
 * session_body_pump - send the body batch by batch; after the last, wait for
 * the reply. A batch the socket took at once is followed by the next one here
 * (a loop, not recursion); a queued one continues from session_written.
 */
void
session_body_pump(struct smtpout_session *s)
{
    uv_buf_t bufs[BODY_BATCH_BUFS];
    unsigned n;
    int sent_now;

    do {
        if (s->body_queued_all || s->closing)
            return;
        n = body_fill(s, bufs, BODY_BATCH_BUFS);
        if (s->body_queued_all) {
            s->pumping = 0;
            smtpout_proto_body_sent(s->proto); /* the engine waits for the "." reply */
        } else {
            session_arm_timer(s, s->cfg.data_send_timeout_ms, SMTPOUT_STAGE_BODY);
        }
        if (s->tls_active)
            sent_now = body_write_tls(s, bufs, n);
        else
            sent_now = session_write(s, bufs, n, NULL, 1, 0);
    } while (sent_now == 1 && s->pumping);
}
