/*
 * qmgr_msg.c - messages as qmgr sees them: queue ids, a message read from
 * the queue, and mail qmgr writes itself (DSNs, backoff notices)
 *
 * Every qmgr module uses these: the control socket and the HTTP monitor
 * print queue ids, outcomes read envelopes, bounces and notices are queued
 * as new messages through the group committer like any other mail.
 *
 * Owns: nothing but a host-name buffer; messages read here are the caller's.
 */
#include "config.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "msg.h"
#include "qmgr.h"

const char *
qmgr_qid(char buf[QSTORE_QID_LEN + 1], uint64_t msgid)
{
    qstore_qid_format(buf, msgid);
    return buf;
}

const struct qstore_rcpt *
qmgr_msg_find_rcpt(const struct qstore_msg *m, uint32_t index)
{
    size_t lo = 0, hi = m ? m->nrcpt : 0;

    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (m->rcpt[mid].index == index)
            return &m->rcpt[mid];
        if (m->rcpt[mid].index < index)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

/* qmgr_host_name - see qmgr.h */
const char *
qmgr_host_name(void)
{
    static char buf[256];
    const struct cfg_value *v = cfg_global(S.cfg, CFG_D_HOST_NAME);

    if (v && !(v->flags & CFG_VALUE_UNSET) && *cfg_str(S.cfg, v->text))
        return cfg_str(S.cfg, v->text);
    if (gethostname(buf, sizeof(buf) - 1) < 0)
        snprintf(buf, sizeof(buf), "localhost");
    return buf;
}

/* qmgr_read_envelope - see qmgr.h */
struct qstore_msg *
qmgr_read_envelope(uint32_t r)
{
    struct qstore_msg *m = NULL;

    if (qstore_read_msg(S.qs, S.msg[S.rcpt[r].msg].msgid, 0, &m) < 0)
        return NULL;
    return m;
}

static void
on_dsn_committed(void *arg, int status, uint64_t msgid)
{
    char qid[QSTORE_QID_LEN + 1];

    (void)arg;
    if (status < 0) {
        msg_error("cannot queue a message of our own: %s", qstore_strerror(status));
        return;
    }
    msg_debug("message %s of our own queued", qmgr_qid(qid, msgid));
    qmgr_sched_catch_up_soon();
}

/* lower_domain - the lower-cased domain of ADDR into OUT ("" when it has none) */
static void
lower_domain(char *out, size_t outsize, const char *addr)
{
    const char *at = strrchr(addr, '@');
    size_t i = 0;

    for (at = at ? at + 1 : ""; *at && i + 1 < outsize; at++)
        out[i++] = (char)(*at >= 'A' && *at <= 'Z' ? *at - 'A' + 'a' : *at);
    out[i] = '\0';
}

/* qmgr_queue_mail - see qmgr.h */
int
qmgr_queue_mail(const struct qmgr_newmail *m, struct buf *body)
{
    char domain[256], queue[600];
    struct qstore_envelope env = { 0 };
    struct qstore_rcpt rc = { 0 };
    struct qstore_newmsg *nm;
    int err;

    lower_domain(domain, sizeof(domain), m->to);
    if (!*domain) {
        msg_warn("no domain in %s; %s message not queued", m->to, m->source);
        return -EINVAL;
    }
    snprintf(queue, sizeof(queue), "%s/%s", domain, m->vmta && *m->vmta ? m->vmta : "{default}");
    env.flags = m->eightbit ? QSTORE_F_8BITMIME : 0;
    env.sender = m->sender ? m->sender : "";
    env.source = m->source;
    env.envid = m->envid;
    env.job_id = m->job_id;
    env.vmta = m->vmta;
    rc.queue = queue;
    rc.address = m->to;
    rc.domain = domain;
    rc.notify = m->notify;
    if ((err = qstore_newmsg_create(&nm, &env, &rc, 1, body)) < 0) {
        msg_warn("cannot build the %s message to %s: %s", m->source, m->to, qstore_strerror(err));
        return err;
    }
    if ((err = qstore_group_submit(S.group, nm, on_dsn_committed, NULL)) < 0) {
        msg_warn("cannot queue the %s message to %s: %s", m->source, m->to, qstore_strerror(err));
        qstore_newmsg_free(nm);
    }
    return err;
}

/* qmgr_queue_local_mail - see qmgr.h (DSNs, backoff notices) */
void
qmgr_queue_local_mail(const char *return_path, struct buf *dsn, int eightbit)
{
    struct qmgr_newmail m = {
        .to = return_path, .source = "{bounce}", .eightbit = eightbit, .notify = QSTORE_NOTIFY_NEVER
    };

    (void)qmgr_queue_mail(&m, dsn);
}
