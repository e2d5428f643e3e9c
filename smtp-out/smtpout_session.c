/*
 * smtpout_session.c - one outbound SMTP client connection on libuv
 *
 * What it does: the client side of RFC 5321 for one connection, as an
 * explicit state machine (enum session_state below): connect (bound to a
 * source address), greeting, EHLO/HELO, STARTTLS (OpenSSL over memory BIOs,
 * so libuv owns the socket in both clear and TLS mode), transactions with
 * PIPELINING (RFC 2920), DSN (RFC 3461), 8BITMIME, SMTPUTF8 and SIZE, the
 * message body streamed from the caller's buffer with dot-stuffing and LF ->
 * CRLF, RSET between transactions, QUIT.
 *
 * What it owns: the uv_tcp_t and uv_timer_t (freed in their close callbacks,
 * libuv's rule), the SSL object and its BIOs, per-transaction recipient
 * state. The message and configuration are borrowed (see the header).
 *
 * SECURITY: everything read from the socket is hostile. The reply reader
 * bounds the partial line (so a peer that never sends LF cannot grow us),
 * checks each line's length before reading the code and separator at fixed
 * offsets (the CVE-2020-8794 lesson), limits a reply's lines, requires the
 * same code on continuation lines, and hands up only sanitized, bounded text.
 * Plaintext that arrives after "220" to STARTTLS is treated as an attack
 * (injected responses) and kills the connection. Envelope addresses with
 * control bytes are refused locally so no command can be injected.
 */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <arpa/inet.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include "buf.h"
#include "msg.h"
#include "xalloc.h"
#include "smtpout_session.h"

#define BODY_BATCH_BYTES (256 * 1024) /* message bytes per body write */
#define BODY_BATCH_BUFS  1024         /* iovecs per body write */
#define TLS_STAGE_BYTES  (64 * 1024)  /* plaintext per SSL_write of the body */
#define ADDR_MAX         1000         /* longest envelope address we send */

enum session_state {
    S_CONNECTING,    /* TCP connect in progress */
    S_GREETING,      /* waiting for the 220 banner */
    S_EHLO,          /* EHLO sent */
    S_HELO,          /* HELO sent after EHLO got a 5xx */
    S_STARTTLS,      /* STARTTLS sent */
    S_TLS_HANDSHAKE, /* TLS handshake in progress */
    S_READY,         /* idle, between transactions */
    S_RSET,          /* RSET sent before a new transaction */
    S_TRANSACTION,   /* MAIL / RCPT / DATA replies outstanding */
    S_BODY,          /* sending the message body */
    S_DOT,           /* final "." sent, waiting for its reply */
    S_QUIT,          /* QUIT sent */
    S_CLOSING,       /* handles closing; `closed` comes next */
};

enum rcpt_state { RCPT_PENDING, RCPT_ACCEPTED, RCPT_DONE };

/* The reply being assembled from lines. */
struct reply_reader {
    char line[SMTPOUT_LINE_MAX + 1];
    size_t line_len;
    unsigned nlines;
    size_t text_len;
    struct smtpout_reply reply;
    int have_status;
};

struct session_write {
    uv_write_t req;
    struct smtpout_session *s;
    char *heap; /* owned copy (commands, TLS records) or NULL */
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

    /* configuration (copied) */
    struct smtpout_session_config cfg;
    struct sockaddr_storage source, dest;
    char mx_name[256];
    char helo_name[256];
    char dest_ip[INET6_ADDRSTRLEN];

    enum session_state state;
    enum smtpout_stage timer_stage;
    unsigned timer_ms; /* the armed timer's timeout, for the reason text */
    unsigned caps;
    unsigned long size_max;
    struct reply_reader rd;
    char rbuf[16 * 1024];

    /* TLS */
    SSL *ssl;
    BIO *rbio, *wbio; /* owned by ssl */
    int tls_active;

    /* the current transaction */
    const struct smtpout_message *msg;
    unsigned char *rcpt_state; /* enum rcpt_state per recipient */
    size_t *sent;              /* recipient index per RCPT sent, in order */
    size_t nsent;
    size_t naccepted;
    size_t reply_index; /* next reply: 0 MAIL, 1..nsent RCPT, nsent+1 DATA */
    int pipelined;
    int mail_failed;
    struct smtpout_reply mail_reply;
    struct smtpout_reply last_rcpt_reply;
    size_t body_off;
    int body_queued_all;
    int need_rset;
    unsigned ntransactions;

    struct smtpout_reply close_reason;
};

static void session_fail(struct smtpout_session *s, const struct smtpout_reply *r);
static void session_dispatch(struct smtpout_session *s, struct smtpout_reply *r);
static void session_body_pump(struct smtpout_session *s);
static void session_send_cmd(struct smtpout_session *s, const char *text, size_t len);
static void tls_read_loop(struct smtpout_session *s);

/* --- names ------------------------------------------------------------------------ */

const char *
smtpout_stage_name(enum smtpout_stage stage)
{
    static const char *const names[] = {
        "connect", "greeting", "ehlo", "helo", "starttls", "tls",  "rset",
        "mail",    "rcpt",     "data", "body", "dot",      "quit", "local",
    };
    return (size_t)stage < sizeof names / sizeof names[0] ? names[stage] : "?";
}

const char *
smtpout_class_name(enum smtpout_class cls)
{
    return cls == SMTPOUT_OK ? "ok" : cls == SMTPOUT_TEMP ? "temp" : "perm";
}

unsigned
smtpout_session_caps(const struct smtpout_session *s)
{
    return s->caps;
}

int
smtpout_session_is_idle(const struct smtpout_session *s)
{
    return s->state == S_READY;
}

unsigned
smtpout_session_transactions(const struct smtpout_session *s)
{
    return s->ntransactions;
}

/* --- replies we make up ----------------------------------------------------------- */

/* reply_local - a result without a peer reply (timeouts, policy, local checks) */
static void reply_local(struct smtpout_reply *r, enum smtpout_class cls, enum smtpout_stage stage,
                        const char *status, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

static void
reply_local(struct smtpout_reply *r, enum smtpout_class cls, enum smtpout_stage stage,
            const char *status, const char *fmt, ...)
{
    va_list ap;
    char text[SMTPOUT_REPLY_TEXT_MAX + 1];

    memset(r, 0, sizeof *r);
    r->code = 0;
    r->cls = cls;
    r->stage = stage;
    snprintf(r->status, sizeof r->status, "%s", status);
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    msg_printable(r->text, sizeof r->text, text, strlen(text));
}

static enum smtpout_stage
session_current_stage(const struct smtpout_session *s)
{
    switch (s->state) {
    case S_CONNECTING:
        return SMTPOUT_STAGE_CONNECT;
    case S_GREETING:
        return SMTPOUT_STAGE_GREETING;
    case S_EHLO:
        return SMTPOUT_STAGE_EHLO;
    case S_HELO:
        return SMTPOUT_STAGE_HELO;
    case S_STARTTLS:
        return SMTPOUT_STAGE_STARTTLS;
    case S_TLS_HANDSHAKE:
        return SMTPOUT_STAGE_TLS;
    case S_RSET:
        return SMTPOUT_STAGE_RSET;
    case S_TRANSACTION:
        return s->reply_index == 0          ? SMTPOUT_STAGE_MAIL
               : s->reply_index <= s->nsent ? SMTPOUT_STAGE_RCPT
                                            : SMTPOUT_STAGE_DATA;
    case S_BODY:
        return SMTPOUT_STAGE_BODY;
    case S_DOT:
        return SMTPOUT_STAGE_DOT;
    case S_QUIT:
        return SMTPOUT_STAGE_QUIT;
    default:
        return SMTPOUT_STAGE_LOCAL;
    }
}

/* --- timers ----------------------------------------------------------------------- */

static void
session_timeout(uv_timer_t *timer)
{
    struct smtpout_session *s = timer->data;
    struct smtpout_reply r;
    size_t len;

    if (s->state == S_QUIT) { /* the peer never said 221: close anyway */
        reply_local(&r, SMTPOUT_OK, SMTPOUT_STAGE_QUIT, "2.0.0", "closed after QUIT (no reply)");
        session_fail(s, &r);
        return;
    }
    reply_local(&r, SMTPOUT_TEMP, s->timer_stage,
                s->timer_stage == SMTPOUT_STAGE_CONNECT ? "4.4.1" : "4.4.2", "timeout %s %s[%s]",
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
    session_fail(s, &r);
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
    free(s->rcpt_state);
    free(s->sent);
    free(s);
}

/* session_close - close the handles; `closed` runs once both are closed */
static void
session_close(struct smtpout_session *s, const struct smtpout_reply *reason)
{
    if (s->state == S_CLOSING)
        return;
    s->state = S_CLOSING;
    s->close_reason = *reason;
    uv_timer_stop(&s->timer);
    uv_close((uv_handle_t *)&s->tcp, session_handle_closed);
    uv_close((uv_handle_t *)&s->timer, session_handle_closed);
}

/* session_end_transaction - back to idle; report the transaction's outcome */
static void
session_end_transaction(struct smtpout_session *s, const struct smtpout_reply *r)
{
    struct smtpout_reply copy = *r;

    s->msg = NULL;
    free(s->rcpt_state);
    s->rcpt_state = NULL;
    free(s->sent);
    s->sent = NULL;
    if (s->state != S_CLOSING)
        s->state = S_READY;
    uv_timer_stop(&s->timer);
    if (s->cb.transaction_done)
        s->cb.transaction_done(s->arg, &copy);
}

/* session_report_open - give R to every recipient without a result yet */
static void
session_report_open(struct smtpout_session *s, const struct smtpout_reply *r, int include_accepted)
{
    size_t i;

    for (i = 0; s->msg && i < s->msg->nrcpts; i++) {
        if (s->rcpt_state[i] == RCPT_DONE ||
            (s->rcpt_state[i] == RCPT_ACCEPTED && !include_accepted))
            continue;
        s->rcpt_state[i] = RCPT_DONE;
        if (s->cb.rcpt_result)
            s->cb.rcpt_result(s->arg, i, r);
    }
}

/*
 * session_fail - the connection is unusable: recipients without a result
 * get R (accepted ones too: their DATA never completed), then close.
 */
static void
session_fail(struct smtpout_session *s, const struct smtpout_reply *r)
{
    struct smtpout_reply copy = *r;
    int in_transaction = s->msg != NULL;

    if (s->state == S_CLOSING)
        return;
    /* Close first so that callbacks cannot start new work on this session. */
    session_close(s, &copy);
    if (in_transaction) {
        session_report_open(s, &copy, 1);
        session_end_transaction(s, &copy);
    }
}

static void
session_fail_local(struct smtpout_session *s, enum smtpout_class cls, const char *status,
                   const char *what)
{
    struct smtpout_reply r;

    reply_local(&r, cls, session_current_stage(s), status, "%s (%s[%s])", what, s->mx_name,
                s->dest_ip);
    session_fail(s, &r);
}

/* --- writing ---------------------------------------------------------------------- */

static void
session_written(uv_write_t *req, int status)
{
    struct session_write *w = (struct session_write *)req;
    struct smtpout_session *s = w->s;
    int body = w->body;

    free(w->heap);
    free(w);
    if (status < 0) {
        if (status != UV_ECANCELED && s->state != S_CLOSING) {
            char what[128];
            snprintf(what, sizeof what, "lost connection while writing: %s", uv_strerror(status));
            session_fail_local(s, SMTPOUT_TEMP, "4.4.2", what);
        }
        return;
    }
    if (body && s->state == S_BODY)
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
    w->body = body;
    rc = uv_write(&w->req, (uv_stream_t *)&s->tcp, rest, n, session_written);
    if (rest != small)
        free(rest);
    if (rc < 0) {
        free(heap);
        free(w);
        if (s->state != S_CLOSING) {
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

/* session_send_cmd - send command text (one or several pipelined lines) */
static void
session_send_cmd(struct smtpout_session *s, const char *text, size_t len)
{
    uv_buf_t b;

    if (s->tls_active) {
        if (tls_write(s, text, len) == 0)
            (void)tls_flush(s, 0);
        return;
    }
    b = uv_buf_init((char *)text, (unsigned)len);
    (void)session_write(s, &b, 1, NULL, 0, 1);
}

static void
session_command(struct smtpout_session *s, const char *cmd)
{
    char line[600];
    int n = snprintf(line, sizeof line, "%s\r\n", cmd);

    session_send_cmd(s, line, (size_t)n < sizeof line ? (size_t)n : sizeof line - 1);
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

        if (d[off] == '.') { /* dot-stuffing (RFC 5321 4.5.2) */
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
        if (s->body_queued_all)
            return;
        n = body_fill(s, bufs, BODY_BATCH_BUFS);
        if (s->body_queued_all) {
            s->state = S_DOT;
            session_arm_timer(s, s->cfg.data_term_timeout_ms, SMTPOUT_STAGE_DOT);
        } else {
            session_arm_timer(s, s->cfg.data_send_timeout_ms, SMTPOUT_STAGE_BODY);
        }
        if (s->tls_active)
            sent_now = body_write_tls(s, bufs, n);
        else
            sent_now = session_write(s, bufs, n, NULL, 1, 0);
    } while (sent_now == 1 && s->state == S_BODY);
}

/* --- transactions ----------------------------------------------------------------- */

/* addr_ok - nothing that could end or forge a command line */
static int
addr_ok(const char *a)
{
    size_t len = strlen(a), i;

    if (len > ADDR_MAX)
        return 0;
    for (i = 0; i < len; i++)
        if ((unsigned char)a[i] < 0x20 || a[i] == 0x7f)
            return 0;
    return 1;
}

/* xtext_append - RFC 3461 xtext: "+", "=" and non-printables as +HH */
static void
xtext_append(struct buf *b, const char *s)
{
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c < 33 || c > 126 || c == '+' || c == '=')
            buf_printf(b, "+%02X", c);
        else
            buf_append(b, s, 1);
    }
}

static int
session_dsn_ok(const struct smtpout_session *s)
{
    return (s->caps & SMTPOUT_CAP_DSN) && !s->cfg.ignore_dsn;
}

static void
build_mail(struct smtpout_session *s, struct buf *b)
{
    const struct smtpout_message *m = s->msg;

    buf_printf(b, "MAIL FROM:<%s>", m->sender);
    if (s->caps & SMTPOUT_CAP_SIZE)
        buf_printf(b, " SIZE=%zu", m->len);
    if (m->eight_bit && (s->caps & SMTPOUT_CAP_8BITMIME) && !s->cfg.ignore_8bitmime)
        buf_append_str(b, " BODY=8BITMIME");
    if (m->smtputf8)
        buf_append_str(b, " SMTPUTF8");
    if (session_dsn_ok(s)) {
        if (m->ret != SMTPOUT_RET_NONE)
            buf_append_str(b, m->ret == SMTPOUT_RET_FULL ? " RET=FULL" : " RET=HDRS");
        if (m->envid && *m->envid) {
            buf_append_str(b, " ENVID=");
            xtext_append(b, m->envid);
        }
    }
    buf_append_str(b, "\r\n");
}

static void
build_rcpt(struct smtpout_session *s, struct buf *b, size_t idx)
{
    const struct smtpout_rcpt *r = &s->msg->rcpts[idx];

    buf_printf(b, "RCPT TO:<%s>", r->addr);
    if (session_dsn_ok(s)) {
        if (r->notify & SMTPOUT_NOTIFY_NEVER) {
            buf_append_str(b, " NOTIFY=NEVER");
        } else if (r->notify) {
            const char *sep = " NOTIFY=";
            if (r->notify & SMTPOUT_NOTIFY_SUCCESS) {
                buf_printf(b, "%sSUCCESS", sep);
                sep = ",";
            }
            if (r->notify & SMTPOUT_NOTIFY_FAILURE) {
                buf_printf(b, "%sFAILURE", sep);
                sep = ",";
            }
            if (r->notify & SMTPOUT_NOTIFY_DELAY)
                buf_printf(b, "%sDELAY", sep);
        }
        if (r->orcpt && *r->orcpt) {
            buf_append_str(b, " ORCPT=rfc822;");
            xtext_append(b, r->orcpt);
        }
    }
    buf_append_str(b, "\r\n");
}

static void
session_send_buf(struct smtpout_session *s, struct buf *b)
{
    session_send_cmd(s, b->data, b->len);
    buf_free(b);
}

/* session_send_next - without PIPELINING: the command after reply REPLY_INDEX-1 */
static void
session_send_next(struct smtpout_session *s)
{
    struct buf b;

    buf_init(&b, 0);
    if (s->reply_index <= s->nsent)
        build_rcpt(s, &b, s->sent[s->reply_index - 1]);
    else
        buf_append_str(&b, "DATA\r\n");
    session_arm_timer(s, s->cfg.command_timeout_ms, session_current_stage(s));
    session_send_buf(s, &b);
}

/*
 * session_local_checks - refuse what the peer cannot take before sending
 * anything: 8-bit data without 8BITMIME would be corrupted, UTF-8 addresses
 * without SMTPUTF8 cannot be expressed, a message over SIZE would be refused
 * after we sent it all. 0 = go on; otherwise the transaction is over.
 */
static int
session_local_checks(struct smtpout_session *s)
{
    const struct smtpout_message *m = s->msg;
    struct smtpout_reply r;

    if (!addr_ok(m->sender))
        reply_local(&r, SMTPOUT_PERM, SMTPOUT_STAGE_LOCAL, "5.1.7", "invalid sender address");
    else if (m->eight_bit && !(s->caps & SMTPOUT_CAP_8BITMIME) && !s->cfg.ignore_8bitmime)
        reply_local(&r, SMTPOUT_PERM, SMTPOUT_STAGE_LOCAL, "5.6.3",
                    "5.6.3 message has 8-bit content but 8-bit data not accepted by peer %s[%s]"
                    " (no 8BITMIME)",
                    s->mx_name, s->dest_ip);
    else if (m->smtputf8 && !(s->caps & SMTPOUT_CAP_SMTPUTF8))
        reply_local(&r, SMTPOUT_PERM, SMTPOUT_STAGE_LOCAL, "5.6.7",
                    "5.6.7 message needs SMTPUTF8 but peer %s[%s] does not support it", s->mx_name,
                    s->dest_ip);
    else if ((s->caps & SMTPOUT_CAP_SIZE) && s->size_max && m->len > s->size_max)
        reply_local(&r, SMTPOUT_PERM, SMTPOUT_STAGE_LOCAL, "5.3.4",
                    "5.3.4 message size %zu exceeds the limit %lu of peer %s[%s]", m->len,
                    s->size_max, s->mx_name, s->dest_ip);
    else
        return 0;
    session_report_open(s, &r, 1);
    session_end_transaction(s, &r);
    return -1;
}

/* session_start_mail - MAIL, then RCPTs and DATA (all at once if pipelining) */
static void
session_start_mail(struct smtpout_session *s)
{
    struct smtpout_reply bad;
    struct buf b;
    size_t i;

    if (session_local_checks(s) < 0)
        return;
    reply_local(&bad, SMTPOUT_PERM, SMTPOUT_STAGE_LOCAL, "5.1.3", "invalid recipient address");
    s->nsent = 0;
    for (i = 0; i < s->msg->nrcpts; i++) {
        if (addr_ok(s->msg->rcpts[i].addr))
            s->sent[s->nsent++] = i;
        else {
            s->rcpt_state[i] = RCPT_DONE;
            if (s->cb.rcpt_result)
                s->cb.rcpt_result(s->arg, i, &bad);
        }
    }
    if (s->state == S_CLOSING)
        return;
    if (s->nsent == 0) {
        session_end_transaction(s, &bad);
        return;
    }
    s->state = S_TRANSACTION;
    s->reply_index = 0;
    s->need_rset = 1;
    s->pipelined = (s->caps & SMTPOUT_CAP_PIPELINING) && !s->cfg.ignore_pipelining;
    buf_init(&b, 0);
    build_mail(s, &b);
    if (s->pipelined) {
        for (i = 0; i < s->nsent; i++)
            build_rcpt(s, &b, s->sent[i]);
        buf_append_str(&b, "DATA\r\n");
    }
    session_arm_timer(s, s->cfg.command_timeout_ms, SMTPOUT_STAGE_MAIL);
    session_send_buf(s, &b);
}

int
smtpout_session_send(struct smtpout_session *s, const struct smtpout_message *m)
{
    if (s->state != S_READY || s->msg != NULL)
        return -EBUSY;
    s->msg = m;
    s->rcpt_state = xcalloc(m->nrcpts ? m->nrcpts : 1, 1);
    s->sent = xcalloc(m->nrcpts ? m->nrcpts : 1, sizeof *s->sent);
    s->naccepted = 0;
    s->mail_failed = 0;
    s->body_off = 0;
    s->body_queued_all = 0;
    s->ntransactions++;
    if (s->need_rset) {
        s->state = S_RSET;
        session_arm_timer(s, s->cfg.command_timeout_ms, SMTPOUT_STAGE_RSET);
        session_command(s, "RSET");
        return 0;
    }
    session_start_mail(s);
    return 0;
}

/* on_mail_reply - a refused MAIL refuses every recipient */
static void
on_mail_reply(struct smtpout_session *s, struct smtpout_reply *r)
{
    if (r->code / 100 == 2)
        return;
    s->mail_failed = 1;
    s->mail_reply = *r;
    session_report_open(s, r, 1);
    /* Without pipelining nothing else is outstanding; with it, we still read
     * the RCPT and DATA replies (and answer a 354 with an empty body). */
    if (!s->pipelined)
        session_end_transaction(s, r);
}

static void
on_rcpt_reply(struct smtpout_session *s, size_t idx, struct smtpout_reply *r)
{
    if (s->mail_failed)
        return;
    s->last_rcpt_reply = *r;
    if (r->code / 100 == 2) {
        s->rcpt_state[idx] = RCPT_ACCEPTED; /* result comes with the final "." */
        s->naccepted++;
        return;
    }
    s->rcpt_state[idx] = RCPT_DONE;
    if (s->cb.rcpt_result)
        s->cb.rcpt_result(s->arg, idx, r);
}

static void
on_data_reply(struct smtpout_session *s, struct smtpout_reply *r)
{
    if (r->code == 354) {
        s->state = S_BODY;
        if (s->naccepted == 0) {
            /* Pipelined and nobody accepted, yet the peer wants data: send
             * an empty message (RFC 2920 section 3.1) and ignore its reply. */
            s->body_off = s->msg->len;
            s->body_queued_all = 1;
            s->state = S_DOT;
            session_arm_timer(s, s->cfg.data_term_timeout_ms, SMTPOUT_STAGE_DOT);
            session_command(s, ".");
            return;
        }
        session_body_pump(s);
        return;
    }
    if (s->naccepted == 0) {
        session_end_transaction(s, s->mail_failed ? &s->mail_reply : &s->last_rcpt_reply);
        return;
    }
    session_report_open(s, r, 1);
    session_end_transaction(s, r);
}

/* on_transaction_reply - replies arrive in command order: MAIL, RCPT..., DATA */
static void
on_transaction_reply(struct smtpout_session *s, struct smtpout_reply *r)
{
    size_t idx = s->reply_index++;

    if (idx == 0) {
        r->stage = SMTPOUT_STAGE_MAIL;
        on_mail_reply(s, r);
    } else if (idx <= s->nsent) {
        r->stage = SMTPOUT_STAGE_RCPT;
        on_rcpt_reply(s, s->sent[idx - 1], r);
    } else {
        r->stage = SMTPOUT_STAGE_DATA;
        on_data_reply(s, r);
        return;
    }
    if (s->state != S_TRANSACTION || s->pipelined) {
        if (s->state == S_TRANSACTION)
            session_arm_timer(s, s->cfg.command_timeout_ms, session_current_stage(s));
        return;
    }
    /* Without pipelining: DATA only when someone was accepted. */
    if (s->reply_index > s->nsent && s->naccepted == 0) {
        session_end_transaction(s, &s->last_rcpt_reply);
        return;
    }
    session_send_next(s);
}

static void
on_dot_reply(struct smtpout_session *s, struct smtpout_reply *r)
{
    r->stage = SMTPOUT_STAGE_DOT;
    if (s->naccepted == 0) { /* the empty body after a pipelined failure */
        session_end_transaction(s, s->mail_failed ? &s->mail_reply : &s->last_rcpt_reply);
        return;
    }
    session_report_open(s, r, 1);
    session_end_transaction(s, r);
}

/* --- greeting, EHLO, STARTTLS ----------------------------------------------------- */

static void
session_send_ehlo(struct smtpout_session *s, const char *verb, enum session_state next)
{
    char cmd[300];

    s->caps = 0;
    s->size_max = 0;
    s->state = next;
    snprintf(cmd, sizeof cmd, "%s %s", verb, s->helo_name);
    session_arm_timer(s, s->cfg.command_timeout_ms,
                      next == S_EHLO ? SMTPOUT_STAGE_EHLO : SMTPOUT_STAGE_HELO);
    session_command(s, cmd);
}

static void
session_become_ready(struct smtpout_session *s)
{
    s->state = S_READY;
    uv_timer_stop(&s->timer);
    if (s->cb.ready)
        s->cb.ready(s->arg, s->caps);
}

/* after_ehlo - STARTTLS now, or refuse to go on in clear, or ready */
static void
after_ehlo(struct smtpout_session *s)
{
    if (!s->tls_active && s->cfg.tls != SMTPOUT_TLS_OFF && s->cfg.ssl_ctx &&
        (s->caps & SMTPOUT_CAP_STARTTLS)) {
        s->state = S_STARTTLS;
        session_arm_timer(s, s->cfg.command_timeout_ms, SMTPOUT_STAGE_STARTTLS);
        session_command(s, "STARTTLS");
        return;
    }
    if (!s->tls_active && s->cfg.tls == SMTPOUT_TLS_REQUIRED) {
        session_fail_local(s, SMTPOUT_TEMP, "4.7.4",
                           "TLS is required, but was not offered by the host");
        return;
    }
    session_become_ready(s);
}

/* parse_capability - one EHLO keyword line (already sanitized) */
static void
parse_capability(struct smtpout_session *s, const char *text)
{
    static const struct {
        const char *name;
        unsigned bit;
    } caps[] = {
        { "PIPELINING", SMTPOUT_CAP_PIPELINING }, { "SIZE", SMTPOUT_CAP_SIZE },
        { "8BITMIME", SMTPOUT_CAP_8BITMIME },     { "SMTPUTF8", SMTPOUT_CAP_SMTPUTF8 },
        { "STARTTLS", SMTPOUT_CAP_STARTTLS },     { "ENHANCEDSTATUSCODES", SMTPOUT_CAP_ENHANCED },
        { "CHUNKING", SMTPOUT_CAP_CHUNKING },     { "DSN", SMTPOUT_CAP_DSN },
    };
    size_t klen = strcspn(text, " =");
    size_t i;

    for (i = 0; i < sizeof caps / sizeof caps[0]; i++) {
        if (strlen(caps[i].name) != klen || strncasecmp(text, caps[i].name, klen) != 0)
            continue;
        s->caps |= caps[i].bit;
        if (caps[i].bit == SMTPOUT_CAP_SIZE && text[klen] == ' ')
            s->size_max = strtoul(text + klen + 1, NULL, 10);
    }
}

static void tls_continue(struct smtpout_session *s);

static void
tls_start(struct smtpout_session *s)
{
    struct in6_addr a6;
    struct in_addr a4;

    s->ssl = SSL_new(s->cfg.ssl_ctx);
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
    s->state = S_TLS_HANDSHAKE;
    session_arm_timer(s, s->cfg.command_timeout_ms, SMTPOUT_STAGE_TLS);
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
    if (s->state == S_CLOSING)
        return;
    if (rc == 1) {
        s->tls_active = 1;
        if (s->cb.tls)
            s->cb.tls(s->arg, SSL_get_version(s->ssl), SSL_get_cipher_name(s->ssl));
        if (s->state != S_TLS_HANDSHAKE)
            return;
        session_send_ehlo(s, "EHLO", S_EHLO);
        return;
    }
    err = SSL_get_error(s->ssl, rc);
    if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE)
        return;
    ERR_error_string_n(ERR_get_error(), detail, sizeof detail);
    snprintf(what, sizeof what, "TLS handshake failed: %s", detail);
    session_fail_local(s, SMTPOUT_TEMP, "4.7.5", what);
}

static void
on_greeting(struct smtpout_session *s, struct smtpout_reply *r)
{
    r->stage = SMTPOUT_STAGE_GREETING;
    if (r->code / 100 == 2) {
        session_send_ehlo(s, "EHLO", S_EHLO);
        return;
    }
    session_fail(s, r); /* 4xx temporary, 5xx permanent (cls already set) */
}

static void
on_ehlo(struct smtpout_session *s, struct smtpout_reply *r)
{
    if (r->code / 100 == 2) {
        after_ehlo(s);
        return;
    }
    if (r->code / 100 == 5 && s->state == S_EHLO) {
        session_send_ehlo(s, "HELO", S_HELO); /* an RFC 821 server */
        return;
    }
    r->stage = s->state == S_EHLO ? SMTPOUT_STAGE_EHLO : SMTPOUT_STAGE_HELO;
    session_fail(s, r);
}

static void
on_starttls(struct smtpout_session *s, struct smtpout_reply *r)
{
    if (r->code == 220) {
        tls_start(s);
        return;
    }
    if (s->cfg.tls == SMTPOUT_TLS_REQUIRED) {
        /* Policy failure, not the peer's verdict on the mail: temporary. */
        r->stage = SMTPOUT_STAGE_STARTTLS;
        r->cls = SMTPOUT_TEMP;
        if (r->status[0] == '5')
            r->status[0] = '4';
        session_fail(s, r);
        return;
    }
    session_become_ready(s); /* opportunistic: carry on in clear */
}

/* session_dispatch - a complete reply, handled by the state we are in */
static void
session_dispatch(struct smtpout_session *s, struct smtpout_reply *r)
{
    /* 421: the peer is going away, whatever we asked (RFC 5321 3.8). */
    if (r->code == 421 && s->state != S_QUIT) {
        r->stage = session_current_stage(s);
        session_fail(s, r);
        return;
    }
    switch (s->state) {
    case S_GREETING:
        on_greeting(s, r);
        break;
    case S_EHLO:
    case S_HELO:
        on_ehlo(s, r);
        break;
    case S_STARTTLS:
        on_starttls(s, r);
        break;
    case S_RSET:
        if (r->code / 100 == 2) {
            s->need_rset = 0;
            session_start_mail(s);
        } else {
            r->stage = SMTPOUT_STAGE_RSET;
            r->cls = SMTPOUT_TEMP; /* the connection is bad, not the mail */
            session_fail(s, r);
        }
        break;
    case S_TRANSACTION:
        on_transaction_reply(s, r);
        break;
    case S_DOT:
        on_dot_reply(s, r);
        break;
    case S_QUIT: {
        struct smtpout_reply ok = *r;
        ok.cls = SMTPOUT_OK;
        ok.stage = SMTPOUT_STAGE_QUIT;
        session_close(s, &ok);
        break;
    }
    default:
        /* S_READY, S_BODY, S_TLS_HANDSHAKE: nobody asked. */
        r->stage = session_current_stage(s);
        if (r->cls == SMTPOUT_OK)
            r->cls = SMTPOUT_TEMP;
        session_fail(s, r);
        break;
    }
}

/* --- reading replies -------------------------------------------------------------- */

/* reply_append_text - sanitized, bounded: nothing but printable ASCII */
static void
reply_append_text(struct reply_reader *rd, const char *p, size_t len)
{
    size_t i;

    for (i = 0; i < len && rd->text_len < SMTPOUT_REPLY_TEXT_MAX; i++) {
        unsigned char c = (unsigned char)p[i];
        rd->reply.text[rd->text_len++] = (c < 0x20 || c >= 0x7f) ? '?' : (char)c;
    }
    rd->reply.text[rd->text_len] = 0;
}

/* reply_enhanced_status - "X.Y.Z " at the start of TEXT, X matching CODE */
static int
reply_enhanced_status(const char *text, size_t len, int code, char *out, size_t outlen)
{
    size_t i = 0, part, digits;

    if (len < 5 || text[0] - '0' != code / 100)
        return 0;
    for (part = 0; part < 3; part++) {
        if (part > 0) {
            if (i >= len || text[i] != '.')
                return 0;
            i++;
        }
        for (digits = 0; i < len && isdigit((unsigned char)text[i]) && digits < 4; i++)
            digits++;
        if (digits == 0 || digits > (part == 0 ? 1u : 3u))
            return 0;
    }
    if (i < len && text[i] != ' ')
        return 0;
    if (i >= outlen)
        return 0;
    memcpy(out, text, i);
    out[i] = 0;
    return 1;
}

static void
reply_finish(struct reply_reader *rd)
{
    struct smtpout_reply *r = &rd->reply;
    int cls = r->code / 100;

    r->cls = cls == 4 ? SMTPOUT_TEMP : cls == 5 ? SMTPOUT_PERM : SMTPOUT_OK;
    if (!rd->have_status)
        snprintf(r->status, sizeof r->status, "%c.0.0", cls == 3 ? '2' : (char)('0' + cls));
}

static void
reader_reset(struct reply_reader *rd)
{
    memset(&rd->reply, 0, sizeof rd->reply);
    rd->nlines = 0;
    rd->text_len = 0;
    rd->have_status = 0;
}

/*
 * on_reply_line - one line without its line end. Checks the length before
 * looking at the code and separator; 0 = go on, -1 = the session failed.
 */
static int
on_reply_line(struct smtpout_session *s, const char *line, size_t len)
{
    struct reply_reader *rd = &s->rd;
    char shown[80];
    int code, last;
    const char *text;
    size_t tlen;

    if (len < 3 || !isdigit((unsigned char)line[0]) || !isdigit((unsigned char)line[1]) ||
        !isdigit((unsigned char)line[2]) || (len > 3 && line[3] != ' ' && line[3] != '-')) {
        char what[160];
        msg_printable(shown, sizeof shown, line, len);
        snprintf(what, sizeof what, "malformed reply: \"%s\"", shown);
        session_fail_local(s, SMTPOUT_TEMP, "4.5.0", what);
        return -1;
    }
    code = (line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0');
    if (code < 200 || code > 599 || (rd->nlines > 0 && code != rd->reply.code)) {
        session_fail_local(s, SMTPOUT_TEMP, "4.5.0", "malformed reply code");
        return -1;
    }
    if (++rd->nlines > SMTPOUT_REPLY_LINES_MAX) {
        session_fail_local(s, SMTPOUT_TEMP, "4.5.0", "reply has too many lines");
        return -1;
    }
    last = len == 3 || line[3] == ' ';
    text = len > 4 ? line + 4 : "";
    tlen = len > 4 ? len - 4 : 0;
    if (rd->nlines == 1) {
        rd->reply.code = code;
        reply_append_text(rd, line, 3);
        rd->have_status = reply_enhanced_status(text, tlen, code, rd->reply.status,
                                                sizeof rd->reply.status);
    }
    if (tlen > 0) {
        reply_append_text(rd, " ", 1);
        reply_append_text(rd, text, tlen);
    }
    if (rd->nlines > 1 && (s->state == S_EHLO)) {
        char cap[SMTPOUT_LINE_MAX + 1];
        msg_printable(cap, sizeof cap, text, tlen);
        parse_capability(s, cap);
    }
    if (!last)
        return 0;
    reply_finish(rd);
    {
        struct smtpout_reply r = rd->reply;
        reader_reset(rd);
        session_dispatch(s, &r);
    }
    return s->state == S_CLOSING ? -1 : 0;
}

/*
 * session_feed - bytes of reply text (plaintext or decrypted). The partial
 * line is bounded too; a line over SMTPOUT_LINE_MAX fails the session.
 */
static void
session_feed(struct smtpout_session *s, const char *data, size_t len)
{
    struct reply_reader *rd = &s->rd;

    while (len > 0 && s->state != S_CLOSING) {
        const char *nl = memchr(data, '\n', len);
        size_t chunk = nl ? (size_t)(nl - data) + 1 : len;
        size_t linelen;

        if (rd->line_len + chunk > SMTPOUT_LINE_MAX) {
            session_fail_local(s, SMTPOUT_TEMP, "4.5.0", "reply line too long");
            return;
        }
        memcpy(rd->line + rd->line_len, data, chunk);
        rd->line_len += chunk;
        data += chunk;
        len -= chunk;
        if (nl == NULL)
            return;
        linelen = rd->line_len - 1;
        if (linelen > 0 && rd->line[linelen - 1] == '\r')
            linelen--;
        rd->line[linelen] = 0;
        rd->line_len = 0;
        if (on_reply_line(s, rd->line, linelen) < 0)
            return;
        if (s->state == S_TLS_HANDSHAKE && !s->tls_active && len > 0) {
            /* Bytes after "220" to STARTTLS, before the handshake: injected. */
            session_fail_local(s, SMTPOUT_TEMP, "4.7.0",
                               "plaintext received after STARTTLS (possible response injection)");
            return;
        }
    }
}

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
        session_feed(s, plain, (size_t)n);
        if (s->state == S_CLOSING)
            return;
    }
    err = SSL_get_error(s->ssl, n);
    tls_flush(s, 0); /* post-handshake messages may want an answer */
    if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE || s->state == S_CLOSING)
        return;
    if (s->state == S_QUIT) {
        struct smtpout_reply ok;
        reply_local(&ok, SMTPOUT_OK, SMTPOUT_STAGE_QUIT, "2.0.0", "closed after QUIT");
        session_close(s, &ok);
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

    if (nread == 0 || s->state == S_CLOSING)
        return;
    if (nread < 0) {
        struct smtpout_reply r;
        if (s->state == S_QUIT) {
            reply_local(&r, SMTPOUT_OK, SMTPOUT_STAGE_QUIT, "2.0.0", "closed after QUIT");
            session_close(s, &r);
            return;
        }
        reply_local(&r, SMTPOUT_TEMP, session_current_stage(s), "4.4.2",
                    "lost connection with %s[%s] while in %s: %s", s->mx_name, s->dest_ip,
                    smtpout_stage_name(session_current_stage(s)),
                    nread == UV_EOF ? "connection closed by peer" : uv_strerror((int)nread));
        session_fail(s, &r);
        return;
    }
    if (s->ssl == NULL) {
        session_feed(s, buf->base, (size_t)nread);
        return;
    }
    if (BIO_write(s->rbio, buf->base, (int)nread) != (int)nread) {
        session_fail_local(s, SMTPOUT_TEMP, "4.7.5", "TLS buffer error");
        return;
    }
    if (!s->tls_active) {
        tls_continue(s);
        if (!s->tls_active || s->state == S_CLOSING)
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

    if (status == UV_ECANCELED || s->state == S_CLOSING)
        return;
    if (status < 0) {
        reply_local(&r, SMTPOUT_TEMP, SMTPOUT_STAGE_CONNECT, "4.4.1", "connect to %s[%s]:%u: %s",
                    s->mx_name, s->dest_ip,
                    ntohs(s->dest.ss_family == AF_INET6
                              ? ((struct sockaddr_in6 *)&s->dest)->sin6_port
                              : ((struct sockaddr_in *)&s->dest)->sin_port),
                    uv_strerror(status));
        session_fail(s, &r);
        return;
    }
    if (uv_tcp_getsockname(&s->tcp, (struct sockaddr *)&local, &len) == 0)
        inet_ntop(local.ss_family,
                  local.ss_family == AF_INET6 ? (void *)&((struct sockaddr_in6 *)&local)->sin6_addr
                                              : (void *)&((struct sockaddr_in *)&local)->sin_addr,
                  source_ip, sizeof source_ip);
    uv_tcp_nodelay(&s->tcp, 1);
    s->state = S_GREETING;
    session_arm_timer(s, s->cfg.greeting_timeout_ms, SMTPOUT_STAGE_GREETING);
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
    s->state = S_CONNECTING;

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
        reply_local(&r, SMTPOUT_TEMP, SMTPOUT_STAGE_CONNECT, "4.4.1", "connect to %s[%s]: %s",
                    s->mx_name, s->dest_ip, uv_strerror(rc));
        session_close(s, &r);
        return s;
    }
    session_arm_timer(s, cfg->connect_timeout_ms, SMTPOUT_STAGE_CONNECT);
    return s;
}

void
smtpout_session_quit(struct smtpout_session *s)
{
    if (s->state == S_CLOSING || s->state == S_QUIT)
        return;
    if (s->state != S_READY) {
        smtpout_session_abort(s);
        return;
    }
    s->state = S_QUIT;
    session_arm_timer(s, s->cfg.command_timeout_ms, SMTPOUT_STAGE_QUIT);
    session_command(s, "QUIT");
}

void
smtpout_session_abort(struct smtpout_session *s)
{
    if (s->state == S_CLOSING)
        return;
    session_fail_local(s, SMTPOUT_TEMP, "4.4.2", "session aborted by the client");
}

SSL_CTX *
smtpout_tls_client_ctx(void)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());

    if (ctx == NULL)
        return NULL;
    /* Opportunistic TLS: an unverifiable certificate still beats clear text
     * (RFC 7435); require-starttls is about privacy, not authentication. */
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
    return ctx;
}
