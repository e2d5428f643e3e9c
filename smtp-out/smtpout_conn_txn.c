/*
 * smtpout_conn_txn.c - the transactions qmgr sends over a connection: queued
 * in order, run one at a time once the session (or the local channel) is
 * idle; MP_RCPT_RESULT per recipient, MP_TXN_DONE, MP_CONN_IDLE; QUIT when
 * qmgr asked to close or the process stops.
 *
 * Owns: each connection's pending and current struct otxn (smtpout_txn.c
 * reads the message; the session or the local channel sends it).
 *
 * SECURITY: recipient indexes come from qmgr and are only compared; reply
 * text in reports was sanitized by the session.
 */
#include "config.h"

#include <errno.h>

#include "mailproto.h"
#include "smtpout_conn_int.h"

static void conn_run_next(struct oconn *c);

static void
report_gone(void *arg, uint32_t index, const struct smtpout_reply *why)
{
    struct oconn *c = arg;

    if (c->in_table)
        out_report_rcpt(c->id, c->current->msgid, index, MP_RESULT_TEMPFAIL, why,
                        c->current->sent_ns);
}

/* txn_finish - the current transaction is over: TXN_DONE, then the next or IDLE */
static void
txn_finish(struct oconn *c)
{
    struct otxn *t = c->current;

    c->current = NULL;
    if (c->in_table)
        out_report_txn_done(c->id, t->msgid);
    otxn_free(t);
}

/* conn_idle - may a transaction start now? */
int
conn_idle(const struct oconn *c)
{
    if (c->local)
        return c->up && !smtpout_local_busy(c->local);
    return c->session != NULL && smtpout_session_is_idle(c->session);
}

/* conn_quit - QUIT the session; a local channel just ends */
void
conn_quit(struct oconn *c)
{
    struct smtpout_reply r;

    if (c->local) {
        conn_local_failure(&r, SMTPOUT_OK, "2.0.0", "closed");
        conn_down(c, MP_RESULT_OK, &r);
        return;
    }
    smtpout_session_quit(c->session);
}

/* conn_after_txn - the session is idle: run what is pending, quit, or say IDLE */
void
conn_after_txn(struct oconn *c)
{
    if (!conn_idle(c))
        return; /* closing: `closed` follows */
    if (c->close_requested || c->aborting || conn_is_shutting_down()) {
        conn_quit(c);
        return;
    }
    if (c->pending) {
        conn_run_next(c);
        return;
    }
    if (c->in_table)
        out_report_idle(c->id);
}

static void
on_local_rcpt(void *arg, size_t i, const struct smtpout_reply *r)
{
    conn_on_rcpt_result(arg, i, r);
}

/* on_local_done - the local channel's transaction is over */
static void
on_local_done(void *arg)
{
    struct oconn *c = arg;

    if (c->current == NULL)
        return;
    txn_finish(c);
    conn_after_txn(c);
}

/* conn_run_next - start the first pending transaction (the session is idle) */
static void
conn_run_next(struct oconn *c)
{
    struct otxn *t = c->pending;

    c->pending = t->next;
    if (c->pending == NULL)
        c->pending_tail = NULL;
    t->next = NULL;
    c->current = t;
    c->ntxns++;
    if (otxn_load(t, out_queue(), report_gone, c) < 0 || t->nrcpts == 0) {
        txn_finish(c);
        conn_after_txn(c);
        return;
    }
    otxn_outbound(t, c->vmta, !c->local && c->tracking_envid);
    t->sent_ns = uv_hrtime();
    if (c->local) {
        static const struct smtpout_local_callbacks cb = { on_local_rcpt, on_local_done };
        struct smtpout_local_msg lm = { &t->msg, t->msgid, t->rcpt_index };
        smtpout_local_send(c->local, &lm, &cb, c);
        return;
    }
    smtpout_session_send(c->session, &t->msg);
}

int
oconn_txn(uint32_t id, uint64_t msgid, const uint32_t *indexes, size_t n)
{
    struct oconn *c = conn_find(id);
    struct otxn *t;

    if (c == NULL)
        return -ENOENT;
    t = otxn_new(msgid, indexes, n);
    if (c->pending_tail)
        c->pending_tail->next = t;
    else
        c->pending = t;
    c->pending_tail = t;
    if (c->up && c->current == NULL && conn_idle(c) && !c->close_requested)
        conn_run_next(c);
    return 0;
}

void
conn_on_rcpt_result(void *arg, size_t i, const struct smtpout_reply *r)
{
    struct oconn *c = arg;
    struct otxn *t = c->current;

    if (t == NULL || i >= t->nrcpts || t->reported[i])
        return;
    t->reported[i] = 1;
    conn_trace(c, "*", "recipient %s: %s: %s", t->rcpts[i].addr,
               r->cls == SMTPOUT_OK     ? "delivered"
               : r->cls == SMTPOUT_PERM ? "bounced"
                                        : "deferred",
               r->text);
    if (c->in_table)
        out_report_rcpt(c->id, t->msgid, t->rcpt_index[i], out_result_of(r->cls), r, t->sent_ns);
}

void
conn_on_transaction_done(void *arg, const struct smtpout_reply *r)
{
    struct oconn *c = arg;
    struct otxn *t = c->current;

    if (t == NULL)
        return;
    for (size_t i = 0; i < t->nrcpts; i++) /* the session promises one each; be sure */
        conn_on_rcpt_result(c, i, r);
    conn_trace(c, "*", "transaction done: %s", r->text);
    conn_trace_stop(c);
    txn_finish(c);
    conn_after_txn(c);
}
