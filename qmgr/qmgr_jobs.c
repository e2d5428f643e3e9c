/*
 * qmgr_jobs.c - paused jobs: `pmtactl pause job ID` holds the recipients of
 *               that job (the X-Job header, envelope job_id) until `resume job`
 *
 * A job's id lives in the queue store's envelope, not in qmgr's 24-byte
 * recipients, so a pause is not applied by scanning the queue: it is a name
 * in a small set, and the place where every transaction is built (it reads
 * the envelope anyway) asks qmgr_job_hold() whether the message's job is
 * paused. Its recipients then leave the ready list for the deferred heap
 * with the QRF_JOB_HELD flag and a due time that never comes (QMGR_DUE_HELD):
 * they still count as deferred, `delete` and reroutes find them as they find
 * any deferred recipient, `schedule` and the end of backoff leave them alone
 * (qmgr_defer_due_now skips the flag). Whatever path a recipient takes later
 * (new mail of the job, a retry coming due, a transaction returning), it goes
 * through a transaction build and is held there.
 *
 * Resume takes the job's held recipients out of the heap and puts them back
 * at the front of their queues' ready lists in queue order (message id, then
 * recipient index): they were ahead of everything that arrived while the
 * job was paused. An expired one bounces as its transaction is built.
 *
 * Like `pause queue`, a pause lives in memory: a restart of pmtad forgets it
 * (the recipients were never changed in the store). Held recipients do not
 * expire while held.
 *
 * Owns: the set of paused job ids (each a copy).
 */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include "msg.h"
#include "qmgr.h"
#include "xalloc.h"

#define JOBS_PAUSED_MAX 1024u

static char **paused;
static uint32_t npaused;

static int32_t
paused_index(const char *job)
{
    for (uint32_t i = 0; i < npaused; i++)
        if (strcmp(paused[i], job) == 0)
            return (int32_t)i;
    return -1;
}

/* qmgr_job_is_paused - see qmgr.h */
int
qmgr_job_is_paused(const char *job)
{
    return job && *job && npaused > 0 && paused_index(job) >= 0;
}

/* qmgr_job_pause - see qmgr.h */
int
qmgr_job_pause(const char *job)
{
    if (paused_index(job) >= 0)
        return 0;
    if (npaused >= JOBS_PAUSED_MAX)
        return -1;
    paused = xreallocarray(paused, npaused + 1, sizeof *paused);
    paused[npaused++] = xstrdup(job);
    msg_info("job %s paused by pmtactl", job);
    return 1;
}

/* qmgr_job_hold - see qmgr.h */
int
qmgr_job_hold(struct qqueue *q, const struct qstore_msg *m, const uint32_t *rcpts, uint32_t n)
{
    if (npaused == 0 || m == NULL || !qmgr_job_is_paused(m->env.job_id))
        return 0;
    for (uint32_t i = 0; i < n; i++) {
        q->ninflight--;
        S.rcpt[rcpts[i]].flags = QRF_JOB_HELD; /* its backoff marks go: nothing may release it */
        qmgr_defer_push(rcpts[i], QMGR_DUE_HELD);
    }
    return 1;
}

/* by_queue_order - held recipients in the order they were queued: message id, then index */
static int
by_queue_order(const void *a, const void *b)
{
    const struct qrcpt *x = &S.rcpt[*(const uint32_t *)a], *y = &S.rcpt[*(const uint32_t *)b];
    uint64_t mx = S.msg[x->msg].msgid, my = S.msg[y->msg].msgid;

    if (mx != my)
        return mx < my ? -1 : 1;
    return x->index < y->index ? -1 : x->index > y->index;
}

/*
 * take_held - JOB's held recipients of Q out of the heap into *OUT (grown as
 * needed, *N counts them); the others go back with their due times
 */
static void
take_held(struct qqueue *q, const char *job, uint32_t **out, uint32_t *n)
{
    uint32_t *deferred, nd = qmgr_defer_take_queue(q, &deferred), cached = QNIL;
    struct qstore_msg *m = NULL;

    for (uint32_t i = 0; i < nd; i++) {
        uint32_t r = deferred[i];
        int mine = 0;

        if (S.rcpt[r].flags & QRF_JOB_HELD) {
            if (cached != S.rcpt[r].msg) {
                if (m)
                    qstore_msg_free(m);
                cached = S.rcpt[r].msg;
                m = qmgr_read_envelope(r);
            }
            /* a message gone from the store is released too: its transaction drops it */
            mine = m == NULL || strcmp(m->env.job_id ? m->env.job_id : "", job) == 0;
        }
        if (mine) {
            *out = xreallocarray(*out, *n + 1, sizeof **out);
            (*out)[(*n)++] = r;
        } else {
            qmgr_defer_push(r, S.rcpt[r].due);
        }
    }
    if (m)
        qstore_msg_free(m);
    free(deferred);
}

/* qmgr_job_resume - see qmgr.h */
int64_t
qmgr_job_resume(const char *job)
{
    int32_t at = paused_index(job);
    uint32_t *held = NULL, n = 0;

    if (at < 0)
        return -1;
    free(paused[at]);
    paused[at] = paused[--npaused];
    for (uint32_t i = 0; i < S.nqueues; i++)
        if (S.queues[i]->ndeferred > 0)
            take_held(S.queues[i], job, &held, &n);
    qsort(held, n, sizeof *held, by_queue_order);
    for (uint32_t i = n; i-- > 0;) {
        S.rcpt[held[i]].flags = 0;
        qmgr_ready_push_front(S.queues[S.rcpt[held[i]].queue], held[i]);
    }
    free(held);
    msg_info("job %s resumed by pmtactl: %u held recipient(s) ready again", job, n);
    qmgr_defer_timer_update();
    qmgr_dispatch_soon();
    return n;
}

/* qmgr_jobs_free - see qmgr.h */
void
qmgr_jobs_free(void)
{
    for (uint32_t i = 0; i < npaused; i++)
        free(paused[i]);
    free(paused);
    paused = NULL;
    npaused = 0;
}
