/*
 * smtpout_proto.c - the SMTP client protocol engine: the reply reader and the
 * session's states (contract in smtpout_proto.h)
 *
 * What it does: the client side of RFC 5321 for one connection as an
 * explicit state machine (enum proto_state), without I/O: replies in,
 * commands into an output buffer, events to the host. Greeting, EHLO/HELO,
 * STARTTLS (RFC 3207), AUTH (RFC 4954: PLAIN, LOGIN, CRAM-MD5),
 * transactions with PIPELINING (RFC 2920) and CHUNKING (RFC 3030: BDAT),
 * DSN (RFC 3461), 8BITMIME, SMTPUTF8 and SIZE, RSET between transactions,
 * QUIT.
 *
 * AUTH is in smtpout_proto_auth.c, transactions in smtpout_proto_txn.c,
 * the reply reader in smtpout_proto_reply.c; smtpout_proto_int.h is what
 * they share.
 *
 * Owns: the engine, its output buffer, per-transaction recipient state. The
 * message is borrowed until its transaction_done.
 *
 * SECURITY: everything fed here is hostile (see the header): lengths before
 * offsets, bounded partial lines, sanitized bounded text, no plaintext after
 * the 220 to STARTTLS, no control bytes in the addresses we send. The AUTH
 * credentials are secrets: they are copied once, written only into the
 * output buffer (base64), never into a reply text or an event, and wiped
 * with OPENSSL_cleanse when the engine is freed; a server challenge is
 * decoded into a bounded buffer.
 */
#include "config.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/crypto.h>

#include "msg.h"
#include "xalloc.h"
#include "smtpout_proto_int.h"

/* --- the engine: helpers ------------------------------------------------------------- */

struct smtpout_proto *
smtpout_proto_new(const struct smtpout_proto_config *cfg, const struct smtpout_proto_events *ev,
                  void *ctx)
{
    struct smtpout_proto *p = xcalloc(1, sizeof *p);

    p->ev = *ev;
    p->ctx = ctx;
    p->cfg = *cfg;
    snprintf(p->helo_name, sizeof p->helo_name, "%s",
             cfg->helo_name ? cfg->helo_name : "localhost");
    snprintf(p->mx_name, sizeof p->mx_name, "%s", cfg->mx_name ? cfg->mx_name : "");
    snprintf(p->dest_ip, sizeof p->dest_ip, "%s", cfg->dest_ip ? cfg->dest_ip : "");
    snprintf(p->auth_user, sizeof p->auth_user, "%s", cfg->auth_username ? cfg->auth_username : "");
    snprintf(p->auth_pass, sizeof p->auth_pass, "%s", cfg->auth_password ? cfg->auth_password : "");
    p->cfg.helo_name = p->helo_name;
    p->cfg.mx_name = p->mx_name;
    p->cfg.dest_ip = p->dest_ip;
    p->cfg.auth_username = p->cfg.auth_password = NULL; /* only our copies */
    p->state = P_CONNECTING;
    smtpout_reader_init(&p->rd);
    buf_init(&p->out, 0);
    return p;
}

void
smtpout_proto_free(struct smtpout_proto *p)
{
    if (p == NULL)
        return;
    free(p->rcpt_state);
    free(p->sent);
    if (p->out.data) /* may hold an AUTH line not yet taken */
        OPENSSL_cleanse(p->out.data, p->out.cap);
    buf_free(&p->out);
    OPENSSL_cleanse(p, sizeof *p);
    free(p);
}

struct buf *
smtpout_proto_output(struct smtpout_proto *p)
{
    return &p->out;
}

unsigned
smtpout_proto_caps(const struct smtpout_proto *p)
{
    return p->caps;
}

int
smtpout_proto_is_idle(const struct smtpout_proto *p)
{
    return p->state == P_READY;
}

int
smtpout_proto_quitting(const struct smtpout_proto *p)
{
    return p->state == P_QUIT;
}

int
smtpout_proto_closed(const struct smtpout_proto *p)
{
    return p->state == P_CLOSED;
}

unsigned
smtpout_proto_transactions(const struct smtpout_proto *p)
{
    return p->ntransactions;
}

int
smtpout_proto_authenticated(const struct smtpout_proto *p)
{
    return p->authenticated;
}

enum smtpout_stage
smtpout_proto_stage(const struct smtpout_proto *p)
{
    switch (p->state) {
    case P_CONNECTING:
        return SMTPOUT_STAGE_CONNECT;
    case P_GREETING:
        return SMTPOUT_STAGE_GREETING;
    case P_EHLO:
        return SMTPOUT_STAGE_EHLO;
    case P_HELO:
        return SMTPOUT_STAGE_HELO;
    case P_STARTTLS:
        return SMTPOUT_STAGE_STARTTLS;
    case P_TLS:
        return SMTPOUT_STAGE_TLS;
    case P_AUTH:
        return SMTPOUT_STAGE_AUTH;
    case P_RSET:
        return SMTPOUT_STAGE_RSET;
    case P_TRANSACTION:
        return p->reply_index == 0          ? SMTPOUT_STAGE_MAIL
               : p->reply_index <= p->nsent ? SMTPOUT_STAGE_RCPT
                                            : SMTPOUT_STAGE_DATA;
    case P_BODY:
        return SMTPOUT_STAGE_BODY;
    case P_DOT:
        return p->chunking ? SMTPOUT_STAGE_BDAT : SMTPOUT_STAGE_DOT;
    case P_QUIT:
        return SMTPOUT_STAGE_QUIT;
    default:
        return SMTPOUT_STAGE_LOCAL;
    }
}

void
proto_timer(struct smtpout_proto *p, enum smtpout_wait wait, enum smtpout_stage stage)
{
    if (p->ev.timer)
        p->ev.timer(p->ctx, wait, stage);
}

/* proto_command - one command line into the output, waiting for its reply at STAGE */
void
proto_command(struct smtpout_proto *p, const char *cmd, enum smtpout_stage stage)
{
    proto_timer(p, SMTPOUT_WAIT_COMMAND, stage);
    buf_printf(&p->out, "%.598s\r\n", cmd);
}

/* proto_end_transaction - back to idle; report the transaction's outcome */
void
proto_end_transaction(struct smtpout_proto *p, const struct smtpout_reply *r)
{
    struct smtpout_reply copy = *r;

    p->msg = NULL;
    free(p->rcpt_state);
    p->rcpt_state = NULL;
    free(p->sent);
    p->sent = NULL;
    if (p->state != P_CLOSED) {
        p->state = P_READY;
        proto_timer(p, SMTPOUT_WAIT_NONE, SMTPOUT_STAGE_LOCAL);
    }
    if (p->ev.transaction_done)
        p->ev.transaction_done(p->ctx, &copy);
}

/* proto_report_open - give R to every recipient without a result yet */
void
proto_report_open(struct smtpout_proto *p, const struct smtpout_reply *r)
{
    for (size_t i = 0; p->msg && i < p->msg->nrcpts; i++) {
        if (p->rcpt_state[i] == RCPT_DONE)
            continue;
        p->rcpt_state[i] = RCPT_DONE;
        if (p->ev.rcpt_result)
            p->ev.rcpt_result(p->ctx, i, r);
    }
}

void
smtpout_proto_fail(struct smtpout_proto *p, const struct smtpout_reply *r)
{
    struct smtpout_reply copy = *r;
    int in_transaction = p->msg != NULL;

    if (p->state == P_CLOSED)
        return;
    /* Closed first, so that callbacks cannot start new work on this session. */
    p->state = P_CLOSED;
    if (p->ev.close)
        p->ev.close(p->ctx, &copy);
    if (in_transaction) { /* accepted recipients too: their DATA never completed */
        proto_report_open(p, &copy);
        proto_end_transaction(p, &copy);
    }
}

void
smtpout_proto_fail_local(struct smtpout_proto *p, enum smtpout_class cls, const char *status,
                         const char *what)
{
    struct smtpout_reply r;

    smtpout_reply_local(&r, cls, smtpout_proto_stage(p), status, "%s (%s[%s])", what, p->mx_name,
                        p->dest_ip);
    smtpout_proto_fail(p, &r);
}

/* --- greeting, EHLO, STARTTLS ------------------------------------------------------------ */

void
smtpout_proto_connected(struct smtpout_proto *p)
{
    if (p->state != P_CONNECTING)
        return;
    p->state = P_GREETING;
    proto_timer(p, SMTPOUT_WAIT_GREETING, SMTPOUT_STAGE_GREETING);
}

static void
send_ehlo(struct smtpout_proto *p, const char *verb, enum proto_state next)
{
    char cmd[300];

    p->caps = 0;
    p->size_max = 0;
    p->state = next;
    snprintf(cmd, sizeof cmd, "%s %s", verb, p->helo_name);
    proto_command(p, cmd, next == P_EHLO ? SMTPOUT_STAGE_EHLO : SMTPOUT_STAGE_HELO);
}

void
proto_become_ready(struct smtpout_proto *p)
{
    p->state = P_READY;
    proto_timer(p, SMTPOUT_WAIT_NONE, SMTPOUT_STAGE_LOCAL);
    if (p->ev.ready)
        p->ev.ready(p->ctx, p->caps);
}

/* after_ehlo - STARTTLS now, or refuse to go on in clear, or AUTH, or ready */
static void
after_ehlo(struct smtpout_proto *p, int tls_active)
{
    if (!tls_active && p->cfg.tls != SMTPOUT_TLS_OFF && p->cfg.tls_available &&
        (p->caps & SMTPOUT_CAP_STARTTLS)) {
        p->state = P_STARTTLS;
        proto_command(p, "STARTTLS", SMTPOUT_STAGE_STARTTLS);
        return;
    }
    if (!tls_active && p->cfg.tls == SMTPOUT_TLS_REQUIRED) {
        smtpout_proto_fail_local(p, SMTPOUT_TEMP, "4.7.4",
                                 "TLS is required, but was not offered by the host");
        return;
    }
    proto_auth_start(p);
}

void
smtpout_proto_tls_started(struct smtpout_proto *p)
{
    if (p->state != P_TLS)
        return;
    p->tls_on = 1;
    send_ehlo(p, "EHLO", P_EHLO); /* RFC 3207 4.2: forget what we knew, ask again */
}

static void
on_greeting(struct smtpout_proto *p, struct smtpout_reply *r)
{
    r->stage = SMTPOUT_STAGE_GREETING;
    if (r->code / 100 == 2) {
        send_ehlo(p, "EHLO", P_EHLO);
        return;
    }
    smtpout_proto_fail(p, r); /* 4xx temporary, 5xx permanent (cls already set) */
}

static void
on_ehlo(struct smtpout_proto *p, struct smtpout_reply *r, unsigned caps, unsigned long size_max)
{
    if (r->code / 100 == 2) {
        if (p->state == P_EHLO) {
            p->caps = caps;
            p->size_max = size_max;
            p->auth_mechs = p->rd.auth_mechs;
        }
        after_ehlo(p, p->tls_on);
        return;
    }
    if (r->code / 100 == 5 && p->state == P_EHLO) {
        send_ehlo(p, "HELO", P_HELO); /* an RFC 821 server */
        return;
    }
    r->stage = p->state == P_EHLO ? SMTPOUT_STAGE_EHLO : SMTPOUT_STAGE_HELO;
    smtpout_proto_fail(p, r);
}

static void
on_starttls(struct smtpout_proto *p, struct smtpout_reply *r)
{
    if (r->code == 220) {
        p->state = P_TLS;
        proto_timer(p, SMTPOUT_WAIT_COMMAND, SMTPOUT_STAGE_TLS);
        if (p->ev.starttls)
            p->ev.starttls(p->ctx);
        return;
    }
    if (p->cfg.tls == SMTPOUT_TLS_REQUIRED) {
        /* Policy failure, not the peer's verdict on the mail: temporary. */
        r->stage = SMTPOUT_STAGE_STARTTLS;
        r->cls = SMTPOUT_TEMP;
        if (r->status[0] == '5')
            r->status[0] = '4';
        smtpout_proto_fail(p, r);
        return;
    }
    proto_auth_start(p); /* opportunistic: carry on in clear */
}

void
smtpout_proto_quit(struct smtpout_proto *p)
{
    if (p->state == P_CLOSED || p->state == P_QUIT)
        return;
    if (p->state != P_READY) {
        smtpout_proto_fail_local(p, SMTPOUT_TEMP, "4.4.2", "session aborted by the client");
        return;
    }
    p->state = P_QUIT;
    proto_command(p, "QUIT", SMTPOUT_STAGE_QUIT);
}

/* --- replies --------------------------------------------------------------------------- */

/* dispatch - a complete reply, handled by the state we are in */
static void
dispatch(struct smtpout_proto *p, struct smtpout_reply *r)
{
    if (p->ev.reply)
        p->ev.reply(p->ctx, r);
    /* 421: the peer is going away, whatever we asked (RFC 5321 3.8). */
    if (r->code == 421 && p->state != P_QUIT) {
        r->stage = smtpout_proto_stage(p);
        smtpout_proto_fail(p, r);
        return;
    }
    switch (p->state) {
    case P_GREETING:
        on_greeting(p, r);
        break;
    case P_EHLO:
    case P_HELO:
        on_ehlo(p, r, p->rd.caps, p->rd.size_max);
        break;
    case P_STARTTLS:
        on_starttls(p, r);
        break;
    case P_AUTH:
        proto_on_auth(p, r);
        break;
    case P_RSET:
        if (r->code / 100 == 2) {
            p->need_rset = 0;
            proto_start_mail(p);
        } else {
            r->stage = SMTPOUT_STAGE_RSET;
            r->cls = SMTPOUT_TEMP; /* the connection is bad, not the mail */
            smtpout_proto_fail(p, r);
        }
        break;
    case P_TRANSACTION:
        proto_on_transaction_reply(p, r);
        break;
    case P_DOT:
        proto_on_dot_reply(p, r);
        break;
    case P_QUIT:
        r->cls = SMTPOUT_OK;
        r->stage = SMTPOUT_STAGE_QUIT;
        smtpout_proto_fail(p, r);
        break;
    default:
        /* P_READY, P_BODY, P_CONNECTING: nobody asked. */
        r->stage = smtpout_proto_stage(p);
        if (r->cls == SMTPOUT_OK)
            r->cls = SMTPOUT_TEMP;
        smtpout_proto_fail(p, r);
        break;
    }
}

void
smtpout_proto_input(struct smtpout_proto *p, const char *data, size_t len)
{
    struct smtpout_reply r;
    size_t used;

    while (len > 0 && p->state != P_CLOSED) {
        if (p->state == P_TLS) {
            /* Bytes after "220" to STARTTLS, before the handshake: injected. */
            smtpout_proto_fail_local(p, SMTPOUT_TEMP, "4.7.0",
                                     "plaintext received after STARTTLS (possible response "
                                     "injection)");
            return;
        }
        switch (smtpout_reader_feed(&p->rd, data, len, &used, &r)) {
        case SMTPOUT_READ_MORE:
            return;
        case SMTPOUT_READ_ERROR:
            smtpout_proto_fail_local(p, SMTPOUT_TEMP, "4.5.0", r.text);
            return;
        case SMTPOUT_READ_REPLY:
            data += used;
            len -= used;
            dispatch(p, &r);
            break;
        }
    }
}
