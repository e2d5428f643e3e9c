/*
 * qmgr_adaptive.c - adaptive concurrency and dead destinations
 *                   (`adaptive-concurrency yes`, per domain)
 *
 * max-smtp-out is a ceiling the operator guesses; a receiver has its own
 * limit on connections per client, and says so only by refusing the one
 * above it. With adaptive concurrency a queue's connections follow what the
 * destination takes, after Postfix's concurrency feedback
 * (SCHEDULER_README, peers.md 2.2):
 *   - the window starts at INITIAL (at most max-smtp-out) and limits the
 *     queue's connections (its max-smtp-out lease, so the reason reads
 *     "connection limit reached (adaptive concurrency 3 of max-smtp-out 8)");
 *   - each delivery while the window is in use (the queue holds as many
 *     connections as it allows) grows it by 1/window: one more connection
 *     per window's worth of deliveries, linear and gentle;
 *   - a connection that fails before it is up while others of the queue are
 *     up is the destination refusing one too many: the window falls to the
 *     connections that are up, the refused level becomes a ceiling that is
 *     probed again only after PROBE_MIN_MS (doubling to PROBE_MAX_MS while
 *     probes keep failing), and the recipients go back to the front of the
 *     queue (no deferral, no retry mode: the destination works);
 *   - a failure with no connection up counts towards a dead destination:
 *     the window falls to one and the queue pauses briefly (PAUSE_STEP_MS
 *     per failure in a row); after connection-failures-before-delay such
 *     failures in a row (KumoMTA's consecutive_connection_failures_before_delay)
 *     the queue goes into retry mode (retry-after) as any queue does after a
 *     failed connection;
 *   - a connection coming up at the ceiling lifts it; any connection up or
 *     delivery ends a run of failures.
 * Reply patterns are not applied to a connection refused while others are
 * up: "421 too many connections" is the feedback itself, not a reason for
 * backoff mode.
 *
 * Owns: each queue's adaptive state (struct qqueue adapt_*).
 * SECURITY: none.
 */
#include "config.h"

#include <stdio.h>

#include "msg.h"
#include "qmgr.h"

#define INITIAL       5u
#define PROBE_MIN_MS  2000u
#define PROBE_MAX_MS  8000u
#define PAUSE_STEP_MS 250u
#define PAUSE_MAX_MS  2500u

/* up_count - connections of Q that are up */
static uint32_t
up_count(const struct qqueue *q)
{
    uint32_t n = 0;

    for (const struct qconn *c = q->conns; c; c = c->qnext)
        n += c->up != 0;
    return n;
}

/* set_window - Q's window becomes W; its connection lease follows (qmgr_queue_limits) */
static void
set_window(struct qqueue *q, double w, const char *why)
{
    unsigned before = (unsigned)q->adapt_window;

    if (w < 1)
        w = 1;
    if (q->adapt_max > 0 && w > q->adapt_max)
        w = q->adapt_max;
    q->adapt_window = w;
    if ((unsigned)w != before) {
        q->lim_serial = 0; /* the lease's count changes */
        msg_info("queue %s: adaptive concurrency %u -> %u (%s)", q->name, before, (unsigned)w, why);
        qmgr_dispatch_soon();
    }
}

/* qmgr_adaptive_limit - see qmgr.h */
int64_t
qmgr_adaptive_limit(struct qqueue *q, int64_t max, char *basis, size_t size)
{
    q->adapt_on = qmgr_queue_num(q, CFG_D_ADAPTIVE_CONCURRENCY, 0) != 0;
    if (!q->adapt_on)
        return max;
    if (q->adapt_window < 1)
        q->adapt_window = max < INITIAL ? (double)max : INITIAL;
    q->adapt_max = (uint32_t)max;
    if (q->adapt_window > max)
        q->adapt_window = (double)max;
    snprintf(basis, size, "adaptive concurrency %u of max-smtp-out %lld", (unsigned)q->adapt_window,
             (long long)max);
    return (int64_t)q->adapt_window;
}

/* qmgr_adaptive_delivered - see qmgr.h */
void
qmgr_adaptive_delivered(struct qqueue *q)
{
    unsigned w;

    if (!q->adapt_on)
        return;
    q->adapt_fails = 0;
    w = (unsigned)q->adapt_window;
    if (q->nconn < w)
        return; /* the window is not in use: no evidence that more would help */
    if (q->adapt_ceiling && w + 1 >= q->adapt_ceiling && qmgr_now_ms() < q->adapt_probe_at_ms)
        return; /* not yet time to try the level that was refused */
    set_window(q, q->adapt_window + 1.0 / q->adapt_window, "deliveries");
}

/* qmgr_adaptive_conn_up - see qmgr.h */
void
qmgr_adaptive_conn_up(struct qqueue *q)
{
    if (!q->adapt_on)
        return;
    q->adapt_fails = 0;
    if (q->adapt_ceiling && up_count(q) >= q->adapt_ceiling) {
        q->adapt_ceiling = 0; /* the refused level works now */
        q->adapt_probe_ms = 0;
    }
}

/* qmgr_adaptive_conn_failed - see qmgr.h */
enum qadapt
qmgr_adaptive_conn_failed(struct qqueue *q)
{
    uint32_t up = up_count(q);
    uint64_t now = qmgr_now_ms(), pause;
    int64_t limit;

    if (!q->adapt_on)
        return QADAPT_OFF;
    if (up > 0) {
        q->adapt_probe_ms = q->adapt_probe_ms ? q->adapt_probe_ms * 2 : PROBE_MIN_MS;
        if (q->adapt_probe_ms > PROBE_MAX_MS)
            q->adapt_probe_ms = PROBE_MAX_MS;
        q->adapt_ceiling = up + 1;
        q->adapt_probe_at_ms = now + q->adapt_probe_ms;
        if (q->adapt_window > up)
            set_window(q, up, "a connection refused while others were up");
        return QADAPT_REQUEUE;
    }
    set_window(q, 1, "a connection failed with none up");
    limit = qmgr_queue_num(q, CFG_D_CONNECTION_FAILURES_BEFORE_DELAY, 10);
    if (++q->adapt_fails >= (uint64_t)(limit > 0 ? limit : 1)) {
        msg_info("queue %s: %u connection failures in a row (connection-failures-before-delay)",
                 q->name, q->adapt_fails);
        q->adapt_fails = 0;
        return QADAPT_DEAD;
    }
    pause = (uint64_t)q->adapt_fails * PAUSE_STEP_MS;
    q->retry_until_ms = now + (pause > PAUSE_MAX_MS ? PAUSE_MAX_MS : pause);
    qmgr_queue_wake_at(q, q->retry_until_ms);
    return QADAPT_PAUSE;
}
