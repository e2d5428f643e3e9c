/*
 * smtpout_proto_txn.c - the SMTP client engine's transactions: RSET, MAIL,
 * RCPT..., then DATA and the body, or (CHUNKING, RFC 3030) BDAT n LAST and
 * the body once the RCPT replies are in; with PIPELINING (RFC 2920) every
 * command of a step in one write and the replies accounted in command
 * order; DSN (RFC 3461), 8BITMIME, SMTPUTF8 and SIZE parameters
 *
 * Owns the per-transaction recipient state of struct smtpout_proto; the
 * message is borrowed until its transaction_done.
 *
 * SECURITY: no control bytes in the addresses we send (checked before
 * anything is written, so no command can be injected); ENVID and ORCPT go
 * out as xtext; the BDAT count is computed here and the host sends exactly
 * that many bytes (smtpout_bdat_len).
 */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "xalloc.h"
#include "smtpout_proto_int.h"

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

/*
 * orcpt_append - " ORCPT=type;xtext": ORCPT comes as the queue keeps it,
 * "type;address" with the address decoded (a bare address is rfc822). The
 * type is written once and only the address is xtext-encoded.
 */
static void
orcpt_append(struct buf *b, const char *orcpt)
{
    const char *semi = strchr(orcpt, ';');
    size_t tlen = semi ? (size_t)(semi - orcpt) : 0;

    if (tlen == 0 || tlen > 32 ||
        strspn(orcpt, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                      "0123456789-") != tlen) {
        buf_append_str(b, " ORCPT=rfc822;");
        xtext_append(b, orcpt);
        return;
    }
    buf_printf(b, " ORCPT=%.*s;", (int)tlen, orcpt);
    xtext_append(b, semi + 1);
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
        if (r->orcpt && *r->orcpt)
            orcpt_append(b, r->orcpt);
    }
    buf_append_str(b, "\r\n");
}

/* send_next - without PIPELINING: the command after reply REPLY_INDEX-1 */
static void
send_next(struct smtpout_proto *p)
{
    proto_timer(p, SMTPOUT_WAIT_COMMAND, smtpout_proto_stage(p));
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
    proto_report_open(p, &r);
    proto_end_transaction(p, &r);
    return -1;
}

/* proto_start_mail - MAIL, then RCPTs and DATA (all at once if pipelining) */
void
proto_start_mail(struct smtpout_proto *p)
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
        proto_end_transaction(p, &bad);
        return;
    }
    p->state = P_TRANSACTION;
    p->reply_index = 0;
    p->need_rset = 1;
    p->pipelined = (p->caps & SMTPOUT_CAP_PIPELINING) && !p->cfg.ignore_pipelining;
    p->chunking = (p->caps & SMTPOUT_CAP_CHUNKING) && !p->cfg.ignore_chunking;
    proto_timer(p, SMTPOUT_WAIT_COMMAND, SMTPOUT_STAGE_MAIL);
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
        proto_command(p, "RSET", SMTPOUT_STAGE_RSET);
        return 0;
    }
    proto_start_mail(p);
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
    proto_report_open(p, r);
    /* Without pipelining nothing else is outstanding; with it, we still read
     * the RCPT and DATA replies (and answer a 354 with an empty body). */
    if (!p->pipelined)
        proto_end_transaction(p, r);
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
            proto_timer(p, SMTPOUT_WAIT_DOT, SMTPOUT_STAGE_DOT);
            buf_append_str(&p->out, ".\r\n");
            return;
        }
        p->state = P_BODY;
        if (p->ev.body)
            p->ev.body(p->ctx, p->msg, SMTPOUT_BODY_DATA);
        return;
    }
    if (p->naccepted == 0) {
        proto_end_transaction(p, refused_outcome(p));
        return;
    }
    proto_report_open(p, r);
    proto_end_transaction(p, r);
}

void
smtpout_proto_body_sent(struct smtpout_proto *p)
{
    if (p->state != P_BODY)
        return;
    p->state = P_DOT;
    proto_timer(p, SMTPOUT_WAIT_DOT, smtpout_proto_stage(p));
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

/* proto_on_transaction_reply - replies arrive in command order: MAIL, RCPT..., DATA */
void
proto_on_transaction_reply(struct smtpout_proto *p, struct smtpout_reply *r)
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
            proto_end_transaction(p, refused_outcome(p));
        else
            start_bdat(p);
        return;
    }
    if (p->state != P_TRANSACTION || p->pipelined) {
        if (p->state == P_TRANSACTION)
            proto_timer(p, SMTPOUT_WAIT_COMMAND, smtpout_proto_stage(p));
        return;
    }
    /* Without pipelining: DATA only when someone was accepted. */
    if (p->reply_index > p->nsent && p->naccepted == 0) {
        proto_end_transaction(p, &p->last_rcpt_reply);
        return;
    }
    send_next(p);
}

void
proto_on_dot_reply(struct smtpout_proto *p, struct smtpout_reply *r)
{
    r->stage = p->chunking ? SMTPOUT_STAGE_BDAT : SMTPOUT_STAGE_DOT;
    if (p->naccepted == 0) { /* the empty body after a pipelined failure */
        proto_end_transaction(p, refused_outcome(p));
        return;
    }
    proto_report_open(p, r);
    proto_end_transaction(p, r);
}
