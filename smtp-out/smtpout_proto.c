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
 * The reply reader is in smtpout_proto_reply.c.
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
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "msg.h"
#include "xalloc.h"
#include "smtpout_proto.h"

#define ADDR_MAX       1000 /* longest envelope address we send */
#define AUTH_FIELD_MAX 255  /* longest user name or password we send (RFC 4616 allows 255) */

enum proto_state {
    P_CONNECTING,  /* TCP connect in progress (the host's) */
    P_GREETING,    /* waiting for the 220 banner */
    P_EHLO,        /* EHLO sent */
    P_HELO,        /* HELO sent after EHLO got a 5xx */
    P_STARTTLS,    /* STARTTLS sent */
    P_TLS,         /* 220 to STARTTLS: the host does the handshake */
    P_AUTH,        /* AUTH sent (auth_step says which reply we wait for) */
    P_READY,       /* idle, between transactions */
    P_RSET,        /* RSET sent before a new transaction */
    P_TRANSACTION, /* MAIL / RCPT / DATA replies outstanding */
    P_BODY,        /* the host sends the message body */
    P_DOT,         /* final "." sent, waiting for its reply */
    P_QUIT,        /* QUIT sent */
    P_CLOSED,      /* over; ev.close was called */
};

enum rcpt_state { RCPT_PENDING, RCPT_ACCEPTED, RCPT_DONE };

/* Where an AUTH exchange is: the reply we wait for. */
enum auth_step {
    AUTH_FINAL,      /* 235 (or a failure) */
    AUTH_LOGIN_USER, /* 334: the user name, base64 */
    AUTH_LOGIN_PASS, /* 334: the password, base64 */
    AUTH_CRAM_MD5,   /* 334 CHALLENGE: "user HMAC-MD5(password, challenge)", base64 */
};

struct smtpout_proto {
    struct smtpout_proto_events ev;
    void *ctx;
    char helo_name[256];
    char mx_name[256];
    char dest_ip[64];
    struct smtpout_proto_config cfg;

    enum proto_state state;
    unsigned caps;
    unsigned long size_max;
    struct smtpout_reader rd;
    struct buf out;

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
    int need_rset;
    int chunking; /* this transaction ends with BDAT instead of DATA */
    int tls_on;   /* the host's handshake succeeded */
    unsigned ntransactions;

    /* AUTH (secrets: wiped at free) */
    char auth_user[AUTH_FIELD_MAX + 1];
    char auth_pass[AUTH_FIELD_MAX + 1];
    unsigned auth_mechs; /* offered in the last EHLO */
    enum auth_step auth_step;
    int authenticated;
};

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

static void
timer(struct smtpout_proto *p, enum smtpout_wait wait, enum smtpout_stage stage)
{
    if (p->ev.timer)
        p->ev.timer(p->ctx, wait, stage);
}

/* command - one command line into the output, waiting for its reply at STAGE */
static void
command(struct smtpout_proto *p, const char *cmd, enum smtpout_stage stage)
{
    timer(p, SMTPOUT_WAIT_COMMAND, stage);
    buf_printf(&p->out, "%.598s\r\n", cmd);
}

/* end_transaction - back to idle; report the transaction's outcome */
static void
end_transaction(struct smtpout_proto *p, const struct smtpout_reply *r)
{
    struct smtpout_reply copy = *r;

    p->msg = NULL;
    free(p->rcpt_state);
    p->rcpt_state = NULL;
    free(p->sent);
    p->sent = NULL;
    if (p->state != P_CLOSED) {
        p->state = P_READY;
        timer(p, SMTPOUT_WAIT_NONE, SMTPOUT_STAGE_LOCAL);
    }
    if (p->ev.transaction_done)
        p->ev.transaction_done(p->ctx, &copy);
}

/* report_open - give R to every recipient without a result yet */
static void
report_open(struct smtpout_proto *p, const struct smtpout_reply *r)
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
        report_open(p, &copy);
        end_transaction(p, &copy);
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
    timer(p, SMTPOUT_WAIT_GREETING, SMTPOUT_STAGE_GREETING);
}

static void
send_ehlo(struct smtpout_proto *p, const char *verb, enum proto_state next)
{
    char cmd[300];

    p->caps = 0;
    p->size_max = 0;
    p->state = next;
    snprintf(cmd, sizeof cmd, "%s %s", verb, p->helo_name);
    command(p, cmd, next == P_EHLO ? SMTPOUT_STAGE_EHLO : SMTPOUT_STAGE_HELO);
}

static void
become_ready(struct smtpout_proto *p)
{
    p->state = P_READY;
    timer(p, SMTPOUT_WAIT_NONE, SMTPOUT_STAGE_LOCAL);
    if (p->ev.ready)
        p->ev.ready(p->ctx, p->caps);
}

/* --- AUTH (RFC 4954) ------------------------------------------------------------------ */

/* b64_command - "PREFIX" + base64(DATA) as one command line (secrets: the copy is wiped) */
static void
b64_command(struct smtpout_proto *p, const char *prefix, const unsigned char *data, size_t len)
{
    unsigned char enc[4 * ((2 * AUTH_FIELD_MAX + 2 + 2) / 3) + 8];
    int n = len ? EVP_EncodeBlock(enc, data, (int)len) : 0;

    timer(p, SMTPOUT_WAIT_COMMAND, SMTPOUT_STAGE_AUTH);
    buf_printf(&p->out, "%s%.*s\r\n", prefix, n, (const char *)enc);
    OPENSSL_cleanse(enc, sizeof enc);
}

/* auth_mechanism - what to use now: 0 none, else one SMTPOUT_AUTH_* bit */
static unsigned
auth_mechanism(const struct smtpout_proto *p)
{
    int clear_ok = p->tls_on || p->cfg.auth_in_clear;

    if (clear_ok && (p->auth_mechs & SMTPOUT_AUTH_PLAIN))
        return SMTPOUT_AUTH_PLAIN;
    if (clear_ok && (p->auth_mechs & SMTPOUT_AUTH_LOGIN))
        return SMTPOUT_AUTH_LOGIN;
    if (p->auth_mechs & SMTPOUT_AUTH_CRAM_MD5) /* the password never crosses the wire */
        return SMTPOUT_AUTH_CRAM_MD5;
    return 0;
}

/* auth_start - AUTH with the best mechanism, ready without AUTH, or a temporary failure */
static void
auth_start(struct smtpout_proto *p)
{
    unsigned mech;

    if (!(p->auth_user[0] || p->auth_pass[0]) || !(p->caps & SMTPOUT_CAP_AUTH)) {
        become_ready(p);
        return;
    }
    if ((mech = auth_mechanism(p)) == 0) {
        smtpout_proto_fail_local(p, SMTPOUT_TEMP, "4.7.11",
                                 p->auth_mechs & (SMTPOUT_AUTH_PLAIN | SMTPOUT_AUTH_LOGIN)
                                     ? "AUTH needs TLS: PLAIN and LOGIN are not sent in clear "
                                       "(use-unencrypted-plain-auth)"
                                     : "no AUTH mechanism in common (we do PLAIN, LOGIN, "
                                       "CRAM-MD5)");
        return;
    }
    p->state = P_AUTH;
    if (mech == SMTPOUT_AUTH_PLAIN) {
        /* RFC 4616: authzid NUL authcid NUL password, as the initial response */
        unsigned char resp[2 * AUTH_FIELD_MAX + 2];
        size_t ul = strlen(p->auth_user), pl = strlen(p->auth_pass);

        resp[0] = 0;
        memcpy(resp + 1, p->auth_user, ul);
        resp[1 + ul] = 0;
        memcpy(resp + 2 + ul, p->auth_pass, pl);
        p->auth_step = AUTH_FINAL;
        b64_command(p, "AUTH PLAIN ", resp, 2 + ul + pl);
        OPENSSL_cleanse(resp, sizeof resp);
    } else if (mech == SMTPOUT_AUTH_LOGIN) {
        p->auth_step = AUTH_LOGIN_USER;
        command(p, "AUTH LOGIN", SMTPOUT_STAGE_AUTH);
    } else {
        p->auth_step = AUTH_CRAM_MD5;
        command(p, "AUTH CRAM-MD5", SMTPOUT_STAGE_AUTH);
    }
}

/* cram_md5_answer - "user hex(HMAC-MD5(password, challenge))" for the 334 text R; 0 or -1 */
static int
cram_md5_answer(struct smtpout_proto *p, const struct smtpout_reply *r)
{
    const char *b64 = r->text + 3 + (r->text[3] == ' ');
    size_t blen = strcspn(b64, " ");
    unsigned char chal[SMTPOUT_REPLY_TEXT_MAX], mac[EVP_MAX_MD_SIZE];
    char answer[AUTH_FIELD_MAX + 1 + 2 * EVP_MAX_MD_SIZE + 1];
    unsigned maclen = 0;
    int clen;
    size_t n;

    if (blen == 0 || blen % 4 != 0 || blen > sizeof chal)
        return -1;
    if ((clen = EVP_DecodeBlock(chal, (const unsigned char *)b64, (int)blen)) < 0)
        return -1;
    while (clen > 0 && blen >= 2 && b64[blen - 1] == '=') { /* DecodeBlock counts padding */
        clen--;
        blen--;
    }
    if (HMAC(EVP_md5(), p->auth_pass, (int)strlen(p->auth_pass), chal, (size_t)clen, mac,
             &maclen) == NULL)
        return -1;
    n = (size_t)snprintf(answer, sizeof answer, "%s ", p->auth_user);
    for (unsigned i = 0; i < maclen && n + 3 <= sizeof answer; i++)
        n += (size_t)snprintf(answer + n, sizeof answer - n, "%02x", mac[i]);
    b64_command(p, "", (const unsigned char *)answer, n);
    OPENSSL_cleanse(answer, sizeof answer);
    OPENSSL_cleanse(mac, sizeof mac);
    return 0;
}

/* auth_failed - a refusal or a broken exchange: temporary, the session ends */
static void
auth_failed(struct smtpout_proto *p, struct smtpout_reply *r)
{
    r->stage = SMTPOUT_STAGE_AUTH;
    r->cls = SMTPOUT_TEMP; /* our credentials, not the mail: no bounce */
    if (r->status[0] == '5' || r->status[0] == '2')
        r->status[0] = '4';
    smtpout_proto_fail(p, r);
}

static void
on_auth(struct smtpout_proto *p, struct smtpout_reply *r)
{
    const char *field;

    if (r->code == 235 && p->auth_step == AUTH_FINAL) {
        p->authenticated = 1;
        become_ready(p);
        return;
    }
    if (r->code != 334 || p->auth_step == AUTH_FINAL) {
        if (r->code == 334) /* a challenge we did not ask for */
            smtpout_reply_local(r, SMTPOUT_TEMP, SMTPOUT_STAGE_AUTH, "4.7.0",
                                "unexpected AUTH challenge from %s[%s]", p->mx_name, p->dest_ip);
        auth_failed(p, r);
        return;
    }
    switch (p->auth_step) {
    case AUTH_LOGIN_USER:
    case AUTH_LOGIN_PASS:
        field = p->auth_step == AUTH_LOGIN_USER ? p->auth_user : p->auth_pass;
        p->auth_step = p->auth_step == AUTH_LOGIN_USER ? AUTH_LOGIN_PASS : AUTH_FINAL;
        b64_command(p, "", (const unsigned char *)field, strlen(field));
        break;
    case AUTH_CRAM_MD5:
        p->auth_step = AUTH_FINAL;
        if (cram_md5_answer(p, r) < 0) {
            smtpout_reply_local(r, SMTPOUT_TEMP, SMTPOUT_STAGE_AUTH, "4.7.0",
                                "malformed CRAM-MD5 challenge from %s[%s]", p->mx_name, p->dest_ip);
            auth_failed(p, r);
        }
        break;
    default:
        auth_failed(p, r);
        break;
    }
}

/* after_ehlo - STARTTLS now, or refuse to go on in clear, or AUTH, or ready */
static void
after_ehlo(struct smtpout_proto *p, int tls_active)
{
    if (!tls_active && p->cfg.tls != SMTPOUT_TLS_OFF && p->cfg.tls_available &&
        (p->caps & SMTPOUT_CAP_STARTTLS)) {
        p->state = P_STARTTLS;
        command(p, "STARTTLS", SMTPOUT_STAGE_STARTTLS);
        return;
    }
    if (!tls_active && p->cfg.tls == SMTPOUT_TLS_REQUIRED) {
        smtpout_proto_fail_local(p, SMTPOUT_TEMP, "4.7.4",
                                 "TLS is required, but was not offered by the host");
        return;
    }
    auth_start(p);
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
        timer(p, SMTPOUT_WAIT_COMMAND, SMTPOUT_STAGE_TLS);
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
    auth_start(p); /* opportunistic: carry on in clear */
}

/* --- transactions --------------------------------------------------------------------- */

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
dsn_ok(const struct smtpout_proto *p)
{
    return (p->caps & SMTPOUT_CAP_DSN) && !p->cfg.ignore_dsn;
}

static void
build_mail(struct smtpout_proto *p, struct buf *b)
{
    const struct smtpout_message *m = p->msg;

    buf_printf(b, "MAIL FROM:<%s>", m->sender);
    if (p->caps & SMTPOUT_CAP_SIZE)
        buf_printf(b, " SIZE=%zu", m->len);
    if (m->eight_bit && (p->caps & SMTPOUT_CAP_8BITMIME) && !p->cfg.ignore_8bitmime)
        buf_append_str(b, " BODY=8BITMIME");
    if (m->smtputf8)
        buf_append_str(b, " SMTPUTF8");
    if (dsn_ok(p)) {
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
build_rcpt(struct smtpout_proto *p, struct buf *b, size_t idx)
{
    const struct smtpout_rcpt *r = &p->msg->rcpts[idx];

    buf_printf(b, "RCPT TO:<%s>", r->addr);
    if (dsn_ok(p)) {
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

/* send_next - without PIPELINING: the command after reply REPLY_INDEX-1 */
static void
send_next(struct smtpout_proto *p)
{
    timer(p, SMTPOUT_WAIT_COMMAND, smtpout_proto_stage(p));
    if (p->reply_index <= p->nsent)
        build_rcpt(p, &p->out, p->sent[p->reply_index - 1]);
    else
        buf_append_str(&p->out, "DATA\r\n");
}

/*
 * local_checks - refuse what the peer cannot take before sending anything:
 * 8-bit data without 8BITMIME would be corrupted, UTF-8 addresses without
 * SMTPUTF8 cannot be expressed, a message over SIZE would be refused after
 * we sent it all. 0 = go on; otherwise the transaction is over.
 */
static int
local_checks(struct smtpout_proto *p)
{
    const struct smtpout_message *m = p->msg;
    struct smtpout_reply r;

    if (!addr_ok(m->sender))
        smtpout_reply_local(&r, SMTPOUT_PERM, SMTPOUT_STAGE_LOCAL, "5.1.7",
                            "invalid sender address");
    else if (m->eight_bit && !(p->caps & SMTPOUT_CAP_8BITMIME) && !p->cfg.ignore_8bitmime)
        smtpout_reply_local(&r, SMTPOUT_PERM, SMTPOUT_STAGE_LOCAL, "5.6.3",
                            "5.6.3 message has 8-bit content but 8-bit data not accepted by "
                            "peer %s[%s] (no 8BITMIME)",
                            p->mx_name, p->dest_ip);
    else if (m->smtputf8 && !(p->caps & SMTPOUT_CAP_SMTPUTF8))
        smtpout_reply_local(&r, SMTPOUT_PERM, SMTPOUT_STAGE_LOCAL, "5.6.7",
                            "5.6.7 message needs SMTPUTF8 but peer %s[%s] does not support it",
                            p->mx_name, p->dest_ip);
    else if ((p->caps & SMTPOUT_CAP_SIZE) && p->size_max && m->len > p->size_max)
        smtpout_reply_local(&r, SMTPOUT_PERM, SMTPOUT_STAGE_LOCAL, "5.3.4",
                            "5.3.4 message size %zu exceeds the limit %lu of peer %s[%s]", m->len,
                            p->size_max, p->mx_name, p->dest_ip);
    else
        return 0;
    report_open(p, &r);
    end_transaction(p, &r);
    return -1;
}

/* start_mail - MAIL, then RCPTs and DATA (all at once if pipelining) */
static void
start_mail(struct smtpout_proto *p)
{
    struct smtpout_reply bad;
    size_t i;

    if (local_checks(p) < 0)
        return;
    smtpout_reply_local(&bad, SMTPOUT_PERM, SMTPOUT_STAGE_LOCAL, "5.1.3",
                        "invalid recipient address");
    p->nsent = 0;
    for (i = 0; i < p->msg->nrcpts; i++) {
        if (addr_ok(p->msg->rcpts[i].addr)) {
            p->sent[p->nsent++] = i;
            continue;
        }
        p->rcpt_state[i] = RCPT_DONE;
        if (p->ev.rcpt_result)
            p->ev.rcpt_result(p->ctx, i, &bad);
    }
    if (p->state == P_CLOSED)
        return;
    if (p->nsent == 0) {
        end_transaction(p, &bad);
        return;
    }
    p->state = P_TRANSACTION;
    p->reply_index = 0;
    p->need_rset = 1;
    p->pipelined = (p->caps & SMTPOUT_CAP_PIPELINING) && !p->cfg.ignore_pipelining;
    p->chunking = (p->caps & SMTPOUT_CAP_CHUNKING) && !p->cfg.ignore_chunking;
    timer(p, SMTPOUT_WAIT_COMMAND, SMTPOUT_STAGE_MAIL);
    build_mail(p, &p->out);
    if (p->pipelined) {
        for (i = 0; i < p->nsent; i++)
            build_rcpt(p, &p->out, p->sent[i]);
        if (!p->chunking) /* BDAT waits for the RCPT replies: no body for nobody */
            buf_append_str(&p->out, "DATA\r\n");
    }
}

int
smtpout_proto_send(struct smtpout_proto *p, const struct smtpout_message *m)
{
    if (p->state != P_READY || p->msg != NULL)
        return -EBUSY;
    p->msg = m;
    p->rcpt_state = xcalloc(m->nrcpts ? m->nrcpts : 1, 1);
    p->sent = xcalloc(m->nrcpts ? m->nrcpts : 1, sizeof *p->sent);
    p->naccepted = 0;
    p->mail_failed = 0;
    p->ntransactions++;
    if (p->need_rset) {
        p->state = P_RSET;
        command(p, "RSET", SMTPOUT_STAGE_RSET);
        return 0;
    }
    start_mail(p);
    return 0;
}

/* on_mail_reply - a refused MAIL refuses every recipient */
static void
on_mail_reply(struct smtpout_proto *p, struct smtpout_reply *r)
{
    if (r->code / 100 == 2)
        return;
    p->mail_failed = 1;
    p->mail_reply = *r;
    report_open(p, r);
    /* Without pipelining nothing else is outstanding; with it, we still read
     * the RCPT and DATA replies (and answer a 354 with an empty body). */
    if (!p->pipelined)
        end_transaction(p, r);
}

static void
on_rcpt_reply(struct smtpout_proto *p, size_t idx, struct smtpout_reply *r)
{
    if (p->mail_failed)
        return;
    p->last_rcpt_reply = *r;
    if (r->code / 100 == 2) {
        p->rcpt_state[idx] = RCPT_ACCEPTED; /* result comes with the final "." */
        p->naccepted++;
        return;
    }
    p->rcpt_state[idx] = RCPT_DONE;
    if (p->ev.rcpt_result)
        p->ev.rcpt_result(p->ctx, idx, r);
}

/* refused_outcome - the transaction's outcome when nobody was accepted */
static const struct smtpout_reply *
refused_outcome(const struct smtpout_proto *p)
{
    return p->mail_failed ? &p->mail_reply : &p->last_rcpt_reply;
}

static void
on_data_reply(struct smtpout_proto *p, struct smtpout_reply *r)
{
    if (r->code == 354) {
        if (p->naccepted == 0) {
            /* Pipelined and nobody accepted, yet the peer wants data: send
             * an empty message (RFC 2920 section 3.1) and ignore its reply. */
            p->state = P_DOT;
            timer(p, SMTPOUT_WAIT_DOT, SMTPOUT_STAGE_DOT);
            buf_append_str(&p->out, ".\r\n");
            return;
        }
        p->state = P_BODY;
        if (p->ev.body)
            p->ev.body(p->ctx, p->msg, SMTPOUT_BODY_DATA);
        return;
    }
    if (p->naccepted == 0) {
        end_transaction(p, refused_outcome(p));
        return;
    }
    report_open(p, r);
    end_transaction(p, r);
}

void
smtpout_proto_body_sent(struct smtpout_proto *p)
{
    if (p->state != P_BODY)
        return;
    p->state = P_DOT;
    timer(p, SMTPOUT_WAIT_DOT, smtpout_proto_stage(p));
}

size_t
smtpout_bdat_len(const char *data, size_t len)
{
    size_t n = len;

    for (const char *nl = data; len && (nl = memchr(nl, '\n', len - (size_t)(nl - data))); nl++)
        if (nl == data || nl[-1] != '\r')
            n++; /* a bare LF goes out as CRLF */
    if (len > 0 && data[len - 1] != '\n')
        n += 2;
    return n;
}

/* start_bdat - the RCPT replies are in and someone was accepted: BDAT n LAST and the body */
static void
start_bdat(struct smtpout_proto *p)
{
    p->state = P_BODY;
    buf_printf(&p->out, "BDAT %zu LAST\r\n", smtpout_bdat_len(p->msg->data, p->msg->len));
    if (p->ev.body)
        p->ev.body(p->ctx, p->msg, SMTPOUT_BODY_BDAT);
}

/* on_transaction_reply - replies arrive in command order: MAIL, RCPT..., DATA */
static void
on_transaction_reply(struct smtpout_proto *p, struct smtpout_reply *r)
{
    size_t idx = p->reply_index++;

    if (idx == 0) {
        r->stage = SMTPOUT_STAGE_MAIL;
        on_mail_reply(p, r);
    } else if (idx <= p->nsent) {
        r->stage = SMTPOUT_STAGE_RCPT;
        on_rcpt_reply(p, p->sent[idx - 1], r);
    } else { /* with CHUNKING the state is P_BODY by now: never here */
        r->stage = SMTPOUT_STAGE_DATA;
        on_data_reply(p, r);
        return;
    }
    if (p->state == P_TRANSACTION && p->chunking && p->reply_index > p->nsent) {
        if (p->naccepted == 0)
            end_transaction(p, refused_outcome(p));
        else
            start_bdat(p);
        return;
    }
    if (p->state != P_TRANSACTION || p->pipelined) {
        if (p->state == P_TRANSACTION)
            timer(p, SMTPOUT_WAIT_COMMAND, smtpout_proto_stage(p));
        return;
    }
    /* Without pipelining: DATA only when someone was accepted. */
    if (p->reply_index > p->nsent && p->naccepted == 0) {
        end_transaction(p, &p->last_rcpt_reply);
        return;
    }
    send_next(p);
}

static void
on_dot_reply(struct smtpout_proto *p, struct smtpout_reply *r)
{
    r->stage = p->chunking ? SMTPOUT_STAGE_BDAT : SMTPOUT_STAGE_DOT;
    if (p->naccepted == 0) { /* the empty body after a pipelined failure */
        end_transaction(p, refused_outcome(p));
        return;
    }
    report_open(p, r);
    end_transaction(p, r);
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
    command(p, "QUIT", SMTPOUT_STAGE_QUIT);
}

/* --- replies --------------------------------------------------------------------------- */

/* dispatch - a complete reply, handled by the state we are in */
static void
dispatch(struct smtpout_proto *p, struct smtpout_reply *r)
{
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
        on_auth(p, r);
        break;
    case P_RSET:
        if (r->code / 100 == 2) {
            p->need_rset = 0;
            start_mail(p);
        } else {
            r->stage = SMTPOUT_STAGE_RSET;
            r->cls = SMTPOUT_TEMP; /* the connection is bad, not the mail */
            smtpout_proto_fail(p, r);
        }
        break;
    case P_TRANSACTION:
        on_transaction_reply(p, r);
        break;
    case P_DOT:
        on_dot_reply(p, r);
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
