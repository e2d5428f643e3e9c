/*
 * smtpout_session.c - one outbound SMTP client connection on libuv
 *
 * What it does: the I/O around the protocol engine (smtpout_proto.c, which
 * holds the reply reader and every protocol state): the connection (bound to
 * a source address), the timers the engine asks for, STARTTLS with OpenSSL
 * over memory BIOs (so libuv owns the socket in both clear and TLS mode),
 * writing the engine's commands, and the message body streamed from the
 * caller's buffer with LF -> CRLF and, after DATA, dot-stuffing (after BDAT
 * the engine counted the bytes: smtpout_bdat_len() is what body_fill sends).
 *
 * What it owns: the uv_tcp_t and uv_timer_t (freed in their close callbacks,
 * libuv's rule), the SSL object and its BIOs, the engine. The message and
 * configuration are borrowed (see the header).
 *
 * SECURITY: everything read from the socket goes to the engine (bounded,
 * checked there); while a STARTTLS handshake is pending, bytes go to the TLS
 * BIO and never to the engine as plaintext.
 */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <arpa/inet.h>

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include "buf.h"
#include "msg.h"
#include "xalloc.h"
#include "smtpout_session.h"

#define BODY_BATCH_BYTES (256 * 1024) /* message bytes per body write */
#define BODY_BATCH_BUFS  1024         /* iovecs per body write */
#define TLS_STAGE_BYTES  (64 * 1024)  /* plaintext per SSL_write of the body */
#define LOG_LINE_MAX     600          /* bytes of one transcript line logged */
#define LOG_DATA_MAX     (256 * 1024) /* message bytes logged per transaction (log-data) */
#define KEPT_LINES_MAX   200          /* transcript lines kept for log-transfer-failures */

struct session_write {
    uv_write_t req;
    struct smtpout_session *s;
    char *heap; /* owned copy (commands, TLS records) or NULL */
    size_t len; /* of heap */
    int body;   /* part of the message body */
};

struct smtpout_session {
    uv_loop_t *loop;
    uv_tcp_t tcp;
    uv_timer_t timer;
    uv_connect_t connect_req;
    int handles_open;
    struct smtpout_session_callbacks cb;
    void *arg;
    struct smtpout_proto *proto;

    /* configuration (copied) */
    struct smtpout_session_config cfg;
    struct sockaddr_storage source, dest;
    char mx_name[256];
    char helo_name[256];
    char dest_ip[INET6_ADDRSTRLEN];
    char log_tag[300];
    struct buf kept; /* log-transfer-failures: this transaction's lines, NUL-separated */
    unsigned nkept;
    int txn_failed; /* a recipient of this transaction failed */
    unsigned trace; /* SMTPOUT_TRACE_*: pmtactl trace is watching */

    int closing; /* handles closing; `closed` comes next */
    enum smtpout_stage timer_stage;
    unsigned timer_ms; /* the armed timer's timeout, for the reason text */
    char rbuf[16 * 1024];

    /* TLS */
    SSL *ssl;
    BIO *rbio, *wbio; /* owned by ssl */
    int tls_active;
    int dane_usable; /* TLSA records OpenSSL took */
    char check_text[300];

    /* the body being sent */
    const struct smtpout_message *msg;
    int bdat; /* no dot-stuffing, no final "." */
    int pumping;
    size_t body_off;
    int body_queued_all;

    struct smtpout_reply close_reason;
};

static void session_body_pump(struct smtpout_session *s);
static void tls_read_loop(struct smtpout_session *s);
static void flush_output(struct smtpout_session *s);

unsigned
smtpout_session_caps(const struct smtpout_session *s)
{
    return smtpout_proto_caps(s->proto);
}

int
smtpout_session_is_idle(const struct smtpout_session *s)
{
    return !s->closing && smtpout_proto_is_idle(s->proto);
}

int
smtpout_session_authenticated(const struct smtpout_session *s)
{
    return smtpout_proto_authenticated(s->proto);
}

void
smtpout_session_trace(struct smtpout_session *s, unsigned flags)
{
    s->trace = s->cb.trace ? flags : 0;
}

unsigned
smtpout_session_transactions(const struct smtpout_session *s)
{
    return smtpout_proto_transactions(s->proto);
}

/* session_fail_local - local trouble ends the session: "WHAT (mx[ip])" */
static void
session_fail_local(struct smtpout_session *s, enum smtpout_class cls, const char *status,
                   const char *what)
{
    smtpout_proto_fail_local(s->proto, cls, status, what);
}

/* --- transcripts ------------------------------------------------------------------- */

/* transcript - one line of the conversation: logged now, or kept until the transaction fails */
static void
transcript(struct smtpout_session *s, const char *dir, const char *line, size_t len)
{
    char text[LOG_LINE_MAX];

    if (!(s->cfg.log & (SMTPOUT_LOG_COMMANDS | SMTPOUT_LOG_TRANSFER_FAILURES)) && !s->trace)
        return;
    /* credentials never reach the log: AUTH's argument, and every line sent while the
       exchange runs (AUTH LOGIN's and CRAM-MD5's answers) */
    if (*dir == '>' && smtpout_proto_stage(s->proto) == SMTPOUT_STAGE_AUTH &&
        !(len >= 5 && strncasecmp(line, "AUTH ", 5) == 0)) {
        line = "(credentials not logged)";
        len = strlen(line);
    } else if (*dir == '>' && len >= 5 && strncasecmp(line, "AUTH ", 5) == 0) {
        len = 5 + strcspn(line + 5, " ");
    }
    msg_printable(text, sizeof text, line, len);
    if (s->trace)
        s->cb.trace(s->arg, dir, text);
    if (s->cfg.log & SMTPOUT_LOG_COMMANDS) {
        msg_info("%s: %s %s", s->log_tag, dir, text);
    } else if ((s->cfg.log & SMTPOUT_LOG_TRANSFER_FAILURES) && s->nkept < KEPT_LINES_MAX) {
        buf_printf(&s->kept, "%s %s", dir, text);
        buf_append(&s->kept, "", 1);
        s->nkept++;
    }
}

/* transcript_lines - every line of DATA (the commands just written) */
static void
transcript_lines(struct smtpout_session *s, const char *dir, const char *data, size_t len)
{
    const char *p = data, *end = data + len;

    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t n = nl ? (size_t)(nl - p) : (size_t)(end - p);

        transcript(s, dir, p, n && p[n - 1] == '\r' ? n - 1 : n);
        p = nl ? nl + 1 : end;
    }
}

/* transcript_failed - the transaction failed: write the lines kept for it */
static void
transcript_failed(struct smtpout_session *s, const struct smtpout_reply *r)
{
    const char *p = s->kept.data;

    if (s->nkept == 0 || (r->cls == SMTPOUT_OK && !s->txn_failed))
        return;
    msg_info("%s: transfer failed (%s): transcript follows", s->log_tag,
             r->cls == SMTPOUT_OK ? "a recipient was refused" : r->text);
    for (unsigned i = 0; i < s->nkept; i++, p += strlen(p) + 1)
        msg_info("%s: %s", s->log_tag, p);
    buf_reset(&s->kept);
    s->nkept = 0;
}

/* transcript_data - log-data: the message as it goes out (before dot-stuffing), bounded */
static void
transcript_data(struct smtpout_session *s, const struct smtpout_message *m)
{
    size_t len = m->len < LOG_DATA_MAX ? m->len : LOG_DATA_MAX;
    const char *p = m->data, *end = m->data + len;
    char text[LOG_LINE_MAX];

    if (s->trace && !(s->trace & SMTPOUT_TRACE_DATA)) {
        snprintf(text, sizeof text, "message data: %zu bytes (not shown; --log-data shows them)",
                 m->len);
        s->cb.trace(s->arg, "*", text);
    }
    if (!(s->cfg.log & SMTPOUT_LOG_DATA) && !(s->trace & SMTPOUT_TRACE_DATA))
        return;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t n = nl ? (size_t)(nl - p) : (size_t)(end - p);

        msg_printable(text, sizeof text, p, n && p[n - 1] == '\r' ? n - 1 : n);
        if (s->cfg.log & SMTPOUT_LOG_DATA)
            msg_info("%s: > | %s", s->log_tag, text);
        if (s->trace & SMTPOUT_TRACE_DATA)
            s->cb.trace(s->arg, "|", text);
        p = nl ? nl + 1 : end;
    }
    if (m->len > len) {
        snprintf(text, sizeof text, "... (%zu more bytes not shown)", m->len - len);
        if (s->cfg.log & SMTPOUT_LOG_DATA)
            msg_info("%s: > | %s", s->log_tag, text);
        if (s->trace & SMTPOUT_TRACE_DATA)
            s->cb.trace(s->arg, "|", text);
    }
}

/* --- timers ----------------------------------------------------------------------- */

static void
session_timeout(uv_timer_t *timer)
{
    struct smtpout_session *s = timer->data;
    struct smtpout_reply r;
    size_t len;

    if (smtpout_proto_quitting(s->proto)) { /* the peer never said 221: close anyway */
        smtpout_reply_local(&r, SMTPOUT_OK, SMTPOUT_STAGE_QUIT, "2.0.0",
                            "closed after QUIT (no reply)");
        smtpout_proto_fail(s->proto, &r);
        return;
    }
    smtpout_reply_local(&r, SMTPOUT_TEMP, s->timer_stage,
                        s->timer_stage == SMTPOUT_STAGE_CONNECT ? "4.4.1" : "4.4.2",
                        "timeout %s %s[%s]",
                        s->timer_stage == SMTPOUT_STAGE_CONNECT ? "connecting to"
                        : s->timer_stage == SMTPOUT_STAGE_BODY  ? "sending message to"
                                                                : "waiting for reply from",
                        s->mx_name, s->dest_ip);
    len = strlen(r.text);
    if (s->timer_stage != SMTPOUT_STAGE_CONNECT && s->timer_stage != SMTPOUT_STAGE_BODY) {
        snprintf(r.text + len, sizeof r.text - len, " to %s", smtpout_stage_name(s->timer_stage));
        len = strlen(r.text);
    }
    if (s->timer_ms % 1000 == 0)
        snprintf(r.text + len, sizeof r.text - len, " after %u s", s->timer_ms / 1000);
    else
        snprintf(r.text + len, sizeof r.text - len, " after %u ms", s->timer_ms);
    smtpout_proto_fail(s->proto, &r);
}

static void
session_arm_timer(struct smtpout_session *s, unsigned ms, enum smtpout_stage stage)
{
    s->timer_stage = stage;
    s->timer_ms = ms ? ms : 300000;
    uv_timer_start(&s->timer, session_timeout, s->timer_ms, 0);
}

/* --- closing ---------------------------------------------------------------------- */

static void
session_handle_closed(uv_handle_t *handle)
{
    struct smtpout_session *s = handle->data;

    if (--s->handles_open > 0)
        return;
    if (s->cb.closed)
        s->cb.closed(s->arg, &s->close_reason);
    if (s->ssl)
        SSL_free(s->ssl);
    smtpout_proto_free(s->proto);
    buf_free(&s->kept);
    free(s);
}

/* --- writing ---------------------------------------------------------------------- */

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

/* tls_flush - send whatever OpenSSL wrote into the outgoing memory BIO;
   as session_write (1 also when there was nothing to send) */
static int
tls_flush(struct smtpout_session *s, int body)
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

/* flush_output - send the commands the engine wrote (as one piece, in order) */
static void
flush_output(struct smtpout_session *s)
{
    struct buf *out = smtpout_proto_output(s->proto);
    size_t len = out->len;
    char *data;
    uv_buf_t b;

    if (len == 0)
        return;
    data = buf_detach(out, NULL);
    transcript_lines(s, ">", data, len);
    if (s->closing) {
        free(data);
        return;
    }
    if (s->tls_active) {
        if (tls_write(s, data, len) == 0)
            (void)tls_flush(s, 0);
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
    return rc == 0 ? tls_flush(s, 1) : -1;
}

/*
 * session_body_pump - send the body batch by batch; after the last, wait for
 * the reply. A batch the socket took at once is followed by the next one here
 * (a loop, not recursion); a queued one continues from session_written.
 */
static void
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

static void tls_continue(struct smtpout_session *s);


/* tls_check_done - after the handshake: the check's verdict; 0 to go on, -1 when failed */
static int
tls_check_done(struct smtpout_session *s)
{
    char why[400];

    if (smtpout_tls_check_verdict(s->ssl, &s->cfg.check, s->dane_usable, s->check_text,
                                  sizeof s->check_text, why, sizeof why) == 0)
        return 0;
    session_fail_local(s, SMTPOUT_TEMP, "4.7.5", why);
    return -1;
}

static void
tls_start(struct smtpout_session *s)
{
    struct in6_addr a6;
    struct in_addr a4;
    SSL_CTX *ctx = s->cfg.check.mode == SMTPOUT_VERIFY_PKIX && s->cfg.check.ctx ? s->cfg.check.ctx
                                                                                : s->cfg.ssl_ctx;

    s->ssl = SSL_new(ctx);
    s->rbio = BIO_new(BIO_s_mem());
    s->wbio = BIO_new(BIO_s_mem());
    if (s->ssl == NULL || s->rbio == NULL || s->wbio == NULL) {
        BIO_free(s->rbio);
        BIO_free(s->wbio);
        s->rbio = s->wbio = NULL;
        session_fail_local(s, SMTPOUT_TEMP, "4.7.5", "cannot set up TLS");
        return;
    }
    SSL_set_bio(s->ssl, s->rbio, s->wbio);
    SSL_set_connect_state(s->ssl);
    /* SNI only for names: RFC 6066 forbids IP literals there. */
    if (inet_pton(AF_INET, s->mx_name, &a4) != 1 && inet_pton(AF_INET6, s->mx_name, &a6) != 1)
        SSL_set_tlsext_host_name(s->ssl, s->mx_name);
    if (smtpout_tls_check_setup(s->ssl, &s->cfg.check, &s->dane_usable) < 0) {
        session_fail_local(s, SMTPOUT_TEMP, "4.7.5", "cannot set up the TLS certificate check");
        return;
    }
    tls_continue(s);
}

static void
tls_continue(struct smtpout_session *s)
{
    int rc, err;
    char what[200], detail[120];

    ERR_clear_error();
    rc = SSL_do_handshake(s->ssl);
    tls_flush(s, 0);
    if (s->closing)
        return;
    if (rc == 1) {
        s->tls_active = 1;
        if (tls_check_done(s) < 0)
            return;
        if (s->cb.tls)
            s->cb.tls(s->arg, SSL_get_version(s->ssl), SSL_get_cipher_name(s->ssl),
                      s->check_text[0] ? s->check_text : NULL);
        if (s->closing)
            return;
        smtpout_proto_tls_started(s->proto); /* EHLO again, now encrypted */
        flush_output(s);
        return;
    }
    err = SSL_get_error(s->ssl, rc);
    if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE)
        return;
    ERR_error_string_n(ERR_get_error(), detail, sizeof detail);
    snprintf(what, sizeof what, "TLS handshake failed: %s", detail);
    session_fail_local(s, SMTPOUT_TEMP, "4.7.5", what);
}

/* --- the engine's events ------------------------------------------------------------- */

static void
ev_timer(void *ctx, enum smtpout_wait wait, enum smtpout_stage stage)
{
    struct smtpout_session *s = ctx;

    switch (wait) {
    case SMTPOUT_WAIT_NONE:
        uv_timer_stop(&s->timer);
        break;
    case SMTPOUT_WAIT_GREETING:
        session_arm_timer(s, s->cfg.greeting_timeout_ms, stage);
        break;
    case SMTPOUT_WAIT_COMMAND:
        session_arm_timer(s, s->cfg.command_timeout_ms, stage);
        break;
    case SMTPOUT_WAIT_DOT:
        session_arm_timer(s, s->cfg.data_term_timeout_ms, stage);
        break;
    }
}

static void
ev_starttls(void *ctx)
{
    struct smtpout_session *s = ctx;

    flush_output(s);
    tls_start(s);
}

static void
ev_ready(void *ctx, unsigned caps)
{
    struct smtpout_session *s = ctx;

    if (s->cb.ready)
        s->cb.ready(s->arg, caps);
}

static void
ev_body(void *ctx, const struct smtpout_message *m, enum smtpout_body_mode mode)
{
    struct smtpout_session *s = ctx;

    flush_output(s); /* BDAT's command line goes first */
    transcript_data(s, m);
    s->msg = m;
    s->bdat = mode == SMTPOUT_BODY_BDAT;
    s->body_off = 0;
    s->body_queued_all = 0;
    s->pumping = 1;
    session_body_pump(s);
}

static void
ev_rcpt_result(void *ctx, size_t index, const struct smtpout_reply *r)
{
    struct smtpout_session *s = ctx;

    if (r->cls != SMTPOUT_OK)
        s->txn_failed = 1;
    if (s->cb.rcpt_result)
        s->cb.rcpt_result(s->arg, index, r);
}

static void
ev_transaction_done(void *ctx, const struct smtpout_reply *r)
{
    struct smtpout_session *s = ctx;

    s->msg = NULL;
    s->pumping = 0;
    transcript_failed(s, r);
    if (s->cb.transaction_done)
        s->cb.transaction_done(s->arg, r);
}

static void
ev_reply(void *ctx, const struct smtpout_reply *r)
{
    transcript(ctx, "<", r->text, strlen(r->text));
}

/* ev_close - close the handles; `closed` runs once both are closed */
static void
ev_close(void *ctx, const struct smtpout_reply *reason)
{
    struct smtpout_session *s = ctx;

    if (s->closing)
        return;
    s->closing = 1;
    s->pumping = 0;
    s->close_reason = *reason;
    uv_timer_stop(&s->timer);
    uv_close((uv_handle_t *)&s->tcp, session_handle_closed);
    uv_close((uv_handle_t *)&s->timer, session_handle_closed);
}

static const struct smtpout_proto_events engine_events = {
    .timer = ev_timer,
    .starttls = ev_starttls,
    .ready = ev_ready,
    .body = ev_body,
    .rcpt_result = ev_rcpt_result,
    .transaction_done = ev_transaction_done,
    .reply = ev_reply,
    .close = ev_close,
};

/* --- reading ----------------------------------------------------------------------- */

static void
tls_read_loop(struct smtpout_session *s)
{
    char plain[16 * 1024];
    int n, err;

    for (;;) {
        ERR_clear_error();
        n = SSL_read(s->ssl, plain, sizeof plain);
        if (n <= 0)
            break;
        smtpout_proto_input(s->proto, plain, (size_t)n);
        flush_output(s);
        if (s->closing)
            return;
    }
    err = SSL_get_error(s->ssl, n);
    tls_flush(s, 0); /* post-handshake messages may want an answer */
    if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE || s->closing)
        return;
    if (smtpout_proto_quitting(s->proto)) {
        struct smtpout_reply ok;
        smtpout_reply_local(&ok, SMTPOUT_OK, SMTPOUT_STAGE_QUIT, "2.0.0", "closed after QUIT");
        smtpout_proto_fail(s->proto, &ok);
        return;
    }
    session_fail_local(s, SMTPOUT_TEMP, "4.4.2",
                       err == SSL_ERROR_ZERO_RETURN ? "peer closed the TLS session"
                                                    : "TLS read error");
}

static void
session_alloc(uv_handle_t *handle, size_t suggested, uv_buf_t *buf)
{
    struct smtpout_session *s = handle->data;

    (void)suggested;
    *buf = uv_buf_init(s->rbuf, sizeof s->rbuf);
}

static void
session_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    struct smtpout_session *s = stream->data;

    if (nread == 0 || s->closing)
        return;
    if (nread < 0) {
        struct smtpout_reply r;
        enum smtpout_stage stage = smtpout_proto_stage(s->proto);

        if (smtpout_proto_quitting(s->proto)) {
            smtpout_reply_local(&r, SMTPOUT_OK, SMTPOUT_STAGE_QUIT, "2.0.0", "closed after QUIT");
            smtpout_proto_fail(s->proto, &r);
            return;
        }
        smtpout_reply_local(
            &r, SMTPOUT_TEMP, stage, "4.4.2", "lost connection with %s[%s] while in %s: %s",
            s->mx_name, s->dest_ip, smtpout_stage_name(stage),
            nread == UV_EOF ? "connection closed by peer" : uv_strerror((int)nread));
        smtpout_proto_fail(s->proto, &r);
        return;
    }
    if (s->ssl == NULL) {
        smtpout_proto_input(s->proto, buf->base, (size_t)nread);
        flush_output(s);
        return;
    }
    if (BIO_write(s->rbio, buf->base, (int)nread) != (int)nread) {
        session_fail_local(s, SMTPOUT_TEMP, "4.7.5", "TLS buffer error");
        return;
    }
    if (!s->tls_active) {
        tls_continue(s);
        if (!s->tls_active || s->closing)
            return;
    }
    tls_read_loop(s);
}

/* --- connecting ------------------------------------------------------------------- */

static void
session_connected(uv_connect_t *req, int status)
{
    struct smtpout_session *s = req->data;
    struct sockaddr_storage local;
    int len = sizeof local;
    char source_ip[INET6_ADDRSTRLEN] = "?";
    struct smtpout_reply r;

    if (status == UV_ECANCELED || s->closing)
        return;
    if (status < 0) {
        smtpout_reply_local(&r, SMTPOUT_TEMP, SMTPOUT_STAGE_CONNECT, "4.4.1",
                            "connect to %s[%s]:%u: %s", s->mx_name, s->dest_ip,
                            ntohs(s->dest.ss_family == AF_INET6
                                      ? ((struct sockaddr_in6 *)&s->dest)->sin6_port
                                      : ((struct sockaddr_in *)&s->dest)->sin_port),
                            uv_strerror(status));
        smtpout_proto_fail(s->proto, &r);
        return;
    }
    if (uv_tcp_getsockname(&s->tcp, (struct sockaddr *)&local, &len) == 0)
        inet_ntop(local.ss_family,
                  local.ss_family == AF_INET6 ? (void *)&((struct sockaddr_in6 *)&local)->sin6_addr
                                              : (void *)&((struct sockaddr_in *)&local)->sin_addr,
                  source_ip, sizeof source_ip);
    uv_tcp_nodelay(&s->tcp, 1);
    smtpout_proto_connected(s->proto); /* arms the greeting timeout */
    uv_read_start((uv_stream_t *)&s->tcp, session_alloc, session_read);
    if (s->cb.connected)
        s->cb.connected(s->arg, source_ip, s->dest_ip, s->mx_name);
}

static socklen_t
sockaddr_len(const struct sockaddr *sa)
{
    return sa->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
}

struct smtpout_session *
smtpout_session_start(uv_loop_t *loop, const struct smtpout_session_config *cfg,
                      const struct smtpout_session_callbacks *cb, void *arg)
{
    struct smtpout_session *s = xcalloc(1, sizeof *s);
    int rc;
    struct smtpout_reply r;

    s->loop = loop;
    s->cb = *cb;
    s->arg = arg;
    s->cfg = *cfg;
    memcpy(&s->dest, cfg->dest, sockaddr_len(cfg->dest));
    if (cfg->source)
        memcpy(&s->source, cfg->source, sockaddr_len(cfg->source));
    snprintf(s->mx_name, sizeof s->mx_name, "%s", cfg->mx_name ? cfg->mx_name : "");
    snprintf(s->helo_name, sizeof s->helo_name, "%s",
             cfg->helo_name ? cfg->helo_name : "localhost");
    s->cfg.source = cfg->source ? (struct sockaddr *)&s->source : NULL;
    s->cfg.dest = (struct sockaddr *)&s->dest;
    s->cfg.mx_name = s->mx_name;
    s->cfg.helo_name = s->helo_name;
    inet_ntop(s->dest.ss_family,
              s->dest.ss_family == AF_INET6 ? (void *)&((struct sockaddr_in6 *)&s->dest)->sin6_addr
                                            : (void *)&((struct sockaddr_in *)&s->dest)->sin_addr,
              s->dest_ip, sizeof s->dest_ip);
    if (s->mx_name[0] == 0)
        snprintf(s->mx_name, sizeof s->mx_name, "%s", s->dest_ip);
    snprintf(s->log_tag, sizeof s->log_tag, "%s", cfg->log_tag ? cfg->log_tag : s->mx_name);
    s->cfg.log_tag = s->log_tag;
    buf_init(&s->kept, 0);
    s->proto = smtpout_proto_new(
        &(struct smtpout_proto_config){ .helo_name = s->helo_name,
                                        .mx_name = s->mx_name,
                                        .dest_ip = s->dest_ip,
                                        .tls = cfg->tls,
                                        .tls_available = cfg->ssl_ctx != NULL,
                                        .ignore_pipelining = cfg->ignore_pipelining,
                                        .ignore_8bitmime = cfg->ignore_8bitmime,
                                        .ignore_dsn = cfg->ignore_dsn,
                                        .ignore_chunking = cfg->ignore_chunking,
                                        .auth_username = cfg->auth_username,
                                        .auth_password = cfg->auth_password,
                                        .auth_in_clear = cfg->auth_in_clear },
        &engine_events, s);

    uv_timer_init(loop, &s->timer);
    s->timer.data = s;
    uv_tcp_init_ex(loop, &s->tcp, s->dest.ss_family);
    s->tcp.data = s;
    s->connect_req.data = s;
    s->handles_open = 2;

    rc = cfg->source ? uv_tcp_bind(&s->tcp, s->cfg.source, 0) : 0;
    if (rc == 0)
        rc = uv_tcp_connect(&s->connect_req, &s->tcp, s->cfg.dest, session_connected);
    if (rc < 0) {
        smtpout_reply_local(&r, SMTPOUT_TEMP, SMTPOUT_STAGE_CONNECT, "4.4.1",
                            "connect to %s[%s]: %s", s->mx_name, s->dest_ip, uv_strerror(rc));
        smtpout_proto_fail(s->proto, &r);
        return s;
    }
    session_arm_timer(s, cfg->connect_timeout_ms, SMTPOUT_STAGE_CONNECT);
    return s;
}

int
smtpout_session_send(struct smtpout_session *s, const struct smtpout_message *m)
{
    int rc;

    if (s->closing)
        return -EBUSY;
    buf_reset(&s->kept); /* log-transfer-failures keeps one transaction's lines */
    s->nkept = 0;
    s->txn_failed = 0;
    rc = smtpout_proto_send(s->proto, m);
    flush_output(s);
    return rc;
}

void
smtpout_session_quit(struct smtpout_session *s)
{
    if (s->closing)
        return;
    smtpout_proto_quit(s->proto);
    flush_output(s);
}

void
smtpout_session_abort(struct smtpout_session *s)
{
    if (s->closing)
        return;
    session_fail_local(s, SMTPOUT_TEMP, "4.4.2", "session aborted by the client");
}
