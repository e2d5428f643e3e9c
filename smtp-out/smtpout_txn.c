/*
 * smtpout_txn.c - one transaction ordered by qmgr (MP_CONN_TXN)
 *
 * What it does: copies the message (envelope, pending recipients, body) out
 * of the LMDB queue with qstore_read_msg() and builds the struct
 * smtpout_message the session sends: sender, recipients with their
 * ORCPT/NOTIFY, ENVID and RET (sent only when the peer offers DSN: the
 * session decides), and the 8BITMIME/SMTPUTF8 needs of the message. What
 * goes out beyond the queued message is added here too: our tracking ENVID
 * (envid.h) and add-x-virtual-mta-header's field.
 *
 * A recipient qmgr asked for that is no longer in the queue (the message was
 * deleted, or the recipient finished meanwhile) is reported as a temporary
 * failure "no longer in the queue": nothing is sent to it, nothing is
 * bounced, and qmgr, which finds no record to defer, forgets it. Reporting
 * it delivered would write a false accounting record; a bounce would be
 * worse.
 *
 * Owns: struct otxn and everything it points to (the qstore_msg copy).
 *
 * SECURITY: the queue records are decoded by qstore with length checks; the
 * indexes come from qmgr and are only compared, never used to index memory.
 */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "smtpout.h"
#include "xalloc.h"

struct otxn *
otxn_new(uint64_t msgid, const uint32_t *indexes, size_t n)
{
    struct otxn *t = xcalloc(1, sizeof *t);

    t->msgid = msgid;
    t->nindexes = n;
    t->indexes = xreallocarray(NULL, n ? n : 1, sizeof *t->indexes);
    if (n)
        memcpy(t->indexes, indexes, n * sizeof *indexes);
    return t;
}

void
otxn_free(struct otxn *t)
{
    if (t == NULL)
        return;
    if (t->qm)
        qstore_msg_free(t->qm);
    free(t->indexes);
    free(t->rcpts);
    free(t->rcpt_index);
    free(t->reported);
    free(t->data);
    free(t);
}

static void
gone_reply(struct smtpout_reply *r, const char *what)
{
    memset(r, 0, sizeof *r);
    r->code = 451;
    r->cls = SMTPOUT_TEMP;
    r->stage = SMTPOUT_STAGE_LOCAL;
    snprintf(r->status, sizeof r->status, "4.3.0");
    snprintf(r->text, sizeof r->text, "451 4.3.0 %s", what);
}

static const struct qstore_rcpt *
find_rcpt(const struct qstore_msg *m, uint32_t index)
{
    for (size_t i = 0; i < m->nrcpt; i++)
        if (m->rcpt[i].index == index)
            return &m->rcpt[i];
    return NULL;
}

static enum smtpout_ret
ret_of(uint8_t ret)
{
    return ret == QSTORE_RET_FULL   ? SMTPOUT_RET_FULL
           : ret == QSTORE_RET_HDRS ? SMTPOUT_RET_HDRS
                                    : SMTPOUT_RET_NONE;
}

/* build_message - the envelope and body of T->qm as the session wants them */
static void
build_message(struct otxn *t)
{
    const struct qstore_envelope *env = &t->qm->env;

    /* A <sender> block's bounce-sender is the return path of that sender's mail. */
    t->msg.sender = *env->bounce_sender ? env->bounce_sender : env->sender;
    t->msg.rcpts = t->rcpts;
    t->msg.nrcpts = t->nrcpts;
    t->msg.envid = env->envid[0] ? env->envid : NULL;
    t->msg.ret = ret_of(env->ret);
    t->msg.data = t->qm->body;
    t->msg.len = t->qm->body_len;
    t->msg.eight_bit = (env->flags & QSTORE_F_8BITMIME) != 0;
    t->msg.smtputf8 = (env->flags & QSTORE_F_SMTPUTF8) != 0;
}

int
otxn_load(struct otxn *t, struct qstore *qs,
          void (*gone)(void *arg, uint32_t index, const struct smtpout_reply *why), void *arg)
{
    struct smtpout_reply why;
    int err = qs ? qstore_read_msg(qs, t->msgid, QSTORE_READ_BODY, &t->qm) : -EIO;

    if (err < 0) {
        t->qm = NULL;
        gone_reply(&why, err == -ENOENT ? "message no longer in the queue"
                                        : "cannot read the message from the queue");
        for (size_t i = 0; i < t->nindexes; i++)
            gone(arg, t->indexes[i], &why);
        return err;
    }
    t->rcpts = xcalloc(t->nindexes ? t->nindexes : 1, sizeof *t->rcpts);
    t->rcpt_index = xcalloc(t->nindexes ? t->nindexes : 1, sizeof *t->rcpt_index);
    t->reported = xcalloc(t->nindexes ? t->nindexes : 1, 1);
    gone_reply(&why, "recipient no longer in the queue");
    for (size_t i = 0; i < t->nindexes; i++) {
        const struct qstore_rcpt *r = find_rcpt(t->qm, t->indexes[i]);
        if (r == NULL) {
            gone(arg, t->indexes[i], &why);
            continue;
        }
        /* QSTORE_NOTIFY_* and SMTPOUT_NOTIFY_* are both RFC 3461's bits */
        t->rcpts[t->nrcpts] = (struct smtpout_rcpt){ .addr = r->address,
                                                     .orcpt = r->orcpt[0] ? r->orcpt : NULL,
                                                     .notify = r->notify };
        t->rcpt_index[t->nrcpts++] = r->index;
    }
    build_message(t);
    return 0;
}

/* otxn_outbound - see smtpout.h */
void
otxn_outbound(struct otxn *t, const char *vmta, int track)
{
    const struct qstore_envelope *env = &t->qm->env;
    char qid[QSTORE_QID_LEN + 1];

    if (track && t->msg.envid == NULL && *t->msg.sender) {
        qstore_qid_format(qid, t->msgid);
        if (envid_track_make(t->envid, sizeof t->envid, qid, vmta, env->job_id) > 0)
            t->msg.envid = t->envid;
    }
    if ((env->flags & QSTORE_F_ADD_VMTA_HEADER) && t->data == NULL) {
        struct buf b = BUF_INIT;

        buf_printf(&b, "X-Virtual-MTA: %s\r\n", vmta);
        buf_append(&b, t->msg.data, t->msg.len);
        t->msg.data = t->data = buf_detach(&b, &t->msg.len);
    }
}
