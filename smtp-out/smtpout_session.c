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
 * This file: the session's life (connect, read, the timers, the engine's
 * events, close); what it writes is smtpout_session_write.c, STARTTLS
 * smtpout_session_tls.c, transcripts smtpout_session_log.c
 * (smtpout_session_int.h says what they share).
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
#include <arpa/inet.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include "buf.h"
#include "msg.h"
#include "xalloc.h"
#include "smtpout_session_int.h"

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
void
session_fail_local(struct smtpout_session *s, enum smtpout_class cls, const char *status,
                   const char *what)
{
    smtpout_proto_fail_local(s->proto, cls, status, what);
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

void
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

    session_flush_output(s);
    session_tls_start(s);
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

    session_flush_output(s); /* BDAT's command line goes first */
    session_transcript_data(s, m);
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
    session_transcript_failed(s, r);
    if (s->cb.transaction_done)
        s->cb.transaction_done(s->arg, r);
}

static void
ev_reply(void *ctx, const struct smtpout_reply *r)
{
    session_transcript(ctx, "<", r->text, strlen(r->text));
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
        session_flush_output(s);
        return;
    }
    if (BIO_write(s->rbio, buf->base, (int)nread) != (int)nread) {
        session_fail_local(s, SMTPOUT_TEMP, "4.7.5", "TLS buffer error");
        return;
    }
    if (!s->tls_active) {
        session_tls_continue(s);
        if (!s->tls_active || s->closing)
            return;
    }
    session_tls_read_loop(s);
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
    session_flush_output(s);
    return rc;
}

void
smtpout_session_quit(struct smtpout_session *s)
{
    if (s->closing)
        return;
    smtpout_proto_quit(s->proto);
    session_flush_output(s);
}

void
smtpout_session_abort(struct smtpout_session *s)
{
    if (s->closing)
        return;
    session_fail_local(s, SMTPOUT_TEMP, "4.4.2", "session aborted by the client");
}
