/*
 * qmgr_sched.c - building the schedule and deciding who gets a connection
 *
 * Start-up: one qstore_scan over the whole queue fills the recipient table
 * and the queues (ready lists in message order, deferred recipients in the
 * heap). New messages join through a catch-up scan: every message id below
 * S.scanned_below has been looked at exactly once, and a catch-up scans the
 * ids from there up to the store's next-msgid. Cleanup's MP_QUEUE_NEW hints
 * and our own DSNs trigger one; a periodic timer runs one too, so a lost
 * hint delays a message by a few seconds and never loses it, and no message
 * is ever added twice (which would deliver it twice).
 *
 * Dispatch: queues with ready recipients sit on run lists by queue-priority.
 * A pass walks them from priority 100 down, feeds idle connections first and
 * opens new ones while the queue's limits and the global total-max-smtp-out
 * allow; when the global cap binds, lower priorities wait. Time-based limits
 * (retry mode, connect and message rates) arm the queue's wake timer. One
 * timer wakes the earliest deferred recipient; a sweep every second bounces
 * expired recipients of queues that cannot get a connection.
 *
 * Owns: the run lists, the catch-up, defer and sweep timers and the
 * dispatch idle handle.
 * SECURITY: none beyond qstore's own record checks.
 */
#include "config.h"

#include <inttypes.h>
#include <string.h>

#include "mailproto.h"
#include "msg.h"
#include "qmgr.h"
#include "qmgr_traffic.h"
#include "qmgr_warmup.h"
#include "worker.h"
#include "xalloc.h"

#define CATCH_UP_INTERVAL_MS 2000
#define SWEEP_INTERVAL_MS    1000

static uv_timer_t catch_up_timer, defer_timer, sweep_timer;
static uv_idle_t dispatch_idle, catch_up_idle;
static int dispatch_pending, catch_up_pending, started;
static uint32_t defer_timer_due = UINT32_MAX;

/* --- adding recipients ------------------------------------------------------------------- */

#define RECEIVED_SKEW_S 5

struct scan_ctx {
    uint64_t last_msgid;
    uint32_t last_msg;
    struct qqueue *last_queue;
    uint32_t now_tick;
    uint64_t added;
    uint64_t received_since; /* rebuild: never-attempted recipients queued since then */
    uint64_t received;       /* ... how many */
};

/* add_sched - one recipient record of the store joins the schedule */
static int
add_sched(const struct qstore_sched *s, void *arg)
{
    struct scan_ctx *c = arg;
    struct qqueue *q = c->last_queue;
    uint32_t r, due;

    if (s->msgid != c->last_msgid || c->last_msg == QNIL) {
        c->last_msg = qmgr_msg_add(s->msgid, (uint32_t)s->queued_at);
        c->last_msgid = s->msgid;
    }
    /* Consecutive recipients mostly share a queue: skip the hash then. */
    if (!q || strncmp(q->name, s->queue, s->queue_len) != 0 || q->name[s->queue_len] != '\0')
        q = c->last_queue = qmgr_queue_get(s->queue, s->queue_len);
    q = qmgr_rollup_dest(q); /* its destination: its own, a rollup's, a queue-to target's */
    q = qmgr_warmup_cold(q); /* or its cold virtual MTA's (max-cold-virtual-mta-msg) */
    r = qmgr_rcpt_new(c->last_msg, s->index, q,
                      s->attempts > 65535 ? 65535 : (uint16_t)s->attempts);
    due = s->next_attempt ? qmgr_tick_from_wall(s->next_attempt) : 0;
    if (due > c->now_tick)
        qmgr_defer_push(r, due);
    else
        qmgr_ready_arrive(q, r);
    c->added++;
    c->received += c->received_since && s->attempts == 0 && s->queued_at >= c->received_since;
    return 0;
}

static void
scan_ctx_init(struct scan_ctx *c)
{
    memset(c, 0, sizeof(*c));
    c->last_msg = QNIL;
    c->now_tick = qmgr_tick_now();
}

/* qmgr_sched_rebuild - the whole schedule from the queue store; 0 or -errno */
int
qmgr_sched_rebuild(void)
{
    struct qstore_info info;
    struct qstore_scan_stats st = { 0 };
    struct scan_ctx c;
    uint64_t t0 = uv_hrtime();
    int err;

    if ((err = qstore_info(S.qs, &info)) < 0)
        return err;
    qmgr_rcpt_reserve(info.recipients + 1024);
    scan_ctx_init(&c);
    /* Mail smtpd accepted while this qmgr was starting is received traffic too (the
     * monitor's chart): never attempted and queued since shortly before our start (the
     * workers start together; a few seconds cover their skew). */
    c.received_since = S.start_wall > RECEIVED_SKEW_S ? S.start_wall - RECEIVED_SKEW_S : 1;
    if ((err = qstore_scan(S.qs, add_sched, &c, &st)) < 0)
        return err;
    if (c.received)
        qmgr_traffic_count(QT_RECEIVED, qmgr_wall(), c.received);
    /* Ids allocated before the scan's snapshot are all in it (one writer at
     * a time allocates them in commit order). */
    S.scanned_below = info.next_msgid > c.last_msgid + 1 ? info.next_msgid : c.last_msgid + 1;
    qmgr_records_received_start(S.scanned_below);
    msg_info("schedule rebuilt: %" PRIu64 " recipients in %u queues in %.0f ms"
             " (%" PRIu64 " corrupt records skipped)",
             c.added, S.nqueues, (double)(uv_hrtime() - t0) / 1e6, st.corrupt);
    qmgr_defer_timer_update();
    qmgr_dispatch_soon();
    return 0;
}

/* catch_up - scan every message id committed since the last scan */
static void
catch_up(void)
{
    char qid[QSTORE_QID_LEN + 1];
    struct qstore_info info;
    struct scan_ctx c;
    int err;

    if (S.stopping || S.qs == NULL)
        return;
    if ((err = qstore_info(S.qs, &info)) < 0) {
        msg_warn("cannot read the queue's next message id: %s", qstore_strerror(err));
        return;
    }
    scan_ctx_init(&c);
    for (; S.scanned_below < info.next_msgid; S.scanned_below++) {
        err = qstore_scan_msg(S.qs, S.scanned_below, add_sched, &c, NULL);
        if (err < 0 && err != -ENOENT)
            msg_warn("cannot scan message %s: %s", qmgr_qid(qid, S.scanned_below),
                     qstore_strerror(err));
        c.last_msg = QNIL;
    }
    qmgr_records_received(S.scanned_below); /* r records, once per message */
    if (c.added) {
        qmgr_traffic_count(QT_RECEIVED, qmgr_wall(), c.added);
        msg_debug("%" PRIu64 " new recipients joined the schedule", c.added);
        qmgr_dispatch_soon();
    }
}

static void
on_catch_up_idle(uv_idle_t *h)
{
    uv_idle_stop(h);
    catch_up_pending = 0;
    catch_up();
}

static void
on_catch_up_timer(uv_timer_t *t)
{
    (void)t;
    catch_up();
}

/* qmgr_sched_catch_up_soon - many hints in one loop turn make one scan */
void
qmgr_sched_catch_up_soon(void)
{
    if (catch_up_pending || !started)
        return;
    catch_up_pending = 1;
    uv_idle_start(&catch_up_idle, on_catch_up_idle);
}

/* --- deferred recipients ----------------------------------------------------------------- */

/* release_due - deferred recipients whose time has come go to their queue's ready list */
/*
 * release_due - deferred recipients whose time has come go to the FRONT of
 * their queue's ready list, oldest due first: they waited longest, and a
 * retry promised after backoff-retry-after (or retry-after) must not queue
 * again behind everything that arrived meanwhile
 */
static void
release_due(void)
{
    static uint32_t *due;
    static uint32_t cap;
    uint32_t now = qmgr_tick_now(), r, n = 0;

    while ((r = qmgr_defer_pop_due(now)) != QNIL) {
        if (n == cap) {
            cap = cap ? cap * 2 : 256;
            due = xreallocarray(due, cap, sizeof *due);
        }
        due[n++] = r;
    }
    for (uint32_t i = n; i-- > 0;)
        qmgr_ready_push_front(S.queues[S.rcpt[due[i]].queue], due[i]);
    if (n)
        qmgr_dispatch_soon();
}

static void
on_defer_timer(uv_timer_t *t)
{
    (void)t;
    defer_timer_due = UINT32_MAX;
    release_due();
    qmgr_defer_timer_update();
}

/* qmgr_defer_timer_update - one uv_timer for the earliest deferred recipient */
void
qmgr_defer_timer_update(void)
{
    uint32_t due = qmgr_defer_next_due(), now;

    if (!started || S.stopping || due == defer_timer_due)
        return;
    defer_timer_due = due;
    if (due == UINT32_MAX) {
        uv_timer_stop(&defer_timer);
        return;
    }
    now = qmgr_tick_now();
    uv_timer_start(&defer_timer, on_defer_timer,
                   due > now ? (uint64_t)(due - now) * QMGR_TICK_MS : 0, 0);
}

/* --- run lists ------------------------------------------------------------------------- */

static void
run_remove(struct qqueue *q)
{
    if (q->run_prio < 0)
        return;
    if (q->run_prev)
        q->run_prev->run_next = q->run_next;
    else
        S.run[q->run_prio] = q->run_next;
    if (q->run_next)
        q->run_next->run_prev = q->run_prev;
    q->run_next = q->run_prev = NULL;
    q->run_prio = -1;
}

/*
 * qmgr_run_update - Q is on the run list of its priority exactly when it has
 * ready work and is not held for its domain's first MX answer
 */
void
qmgr_run_update(struct qqueue *q)
{
    int prio;

    if (q->nready == 0 || q->route_held) {
        run_remove(q);
        return;
    }
    (void)qmgr_queue_setting(q, CFG_D_QUEUE_PRIORITY); /* refreshes q->priority */
    prio = q->priority;
    if (q->run_prio == prio)
        return;
    run_remove(q);
    q->run_prio = prio;
    q->run_prev = NULL;
    q->run_next = S.run[prio];
    if (q->run_next)
        q->run_next->run_prev = q;
    S.run[prio] = q;
    qmgr_dispatch_soon();
}

/* --- waking a queue ------------------------------------------------------------------- */

static void
on_queue_wake(uv_timer_t *t)
{
    struct qqueue *q = t->data;

    q->wake_at_ms = 0;
    qmgr_conn_feed_idle(q);
    qmgr_dispatch_soon();
}

/* qmgr_queue_wake_at - look at Q again at AT_MS (monotonic) unless it is already due sooner */
void
qmgr_queue_wake_at(struct qqueue *q, uint64_t at_ms)
{
    uint64_t now = qmgr_now_ms();

    if (S.stopping)
        return;
    if (q->wake_at_ms && q->wake_at_ms <= at_ms && q->wake_at_ms >= now)
        return;
    if (!q->wake) {
        q->wake = xmalloc(sizeof(*q->wake));
        uv_timer_init(worker_loop(), q->wake);
        q->wake->data = q;
    }
    q->wake_at_ms = at_ms;
    uv_timer_start(q->wake, on_queue_wake, at_ms > now ? at_ms - now : 0, 0);
}

/* --- transactions --------------------------------------------------------------------- */

/* qmgr_take_txn - up to MAX ready recipients of one message (expired ones bounce on the way) */
uint32_t
qmgr_take_txn(struct qqueue *q, uint32_t max, uint32_t *out)
{
    uint64_t now = qmgr_wall();
    uint32_t n = 0, r, msg = QNIL;

    while (n < max && (r = qmgr_ready_peek(q)) != QNIL) {
        if (msg != QNIL && S.rcpt[r].msg != msg)
            break;
        qmgr_ready_pop(q);
        if (qmgr_rcpt_expired(r, now)) {
            qmgr_outcome_expire(r, q);
            continue;
        }
        msg = S.rcpt[r].msg;
        S.rcpt[r].state = QR_INFLIGHT;
        q->ninflight++;
        out[n++] = r;
    }
    return n;
}

/* --- the dispatch pass ------------------------------------------------------------------ */

static void
dispatch_queue(struct qqueue *q)
{
    if (qmgr_reportproc_owns(q)) { /* reports received: read here, never sent anywhere */
        qmgr_reportproc_run(q);
        return;
    }
    if (qmgr_queue_type(q) == CFG_TYPE_DISCARD) { /* a qmgr decision: no connection at all */
        qmgr_outcome_discard(q);
        return;
    }
    qmgr_conn_feed_idle(q);
    while (q->nready > 0 && qmgr_conn_open(q))
        ;
}

static void
dispatch_all(void)
{
    if (S.stopping)
        return;
    for (int prio = QMGR_PRIO_LEVELS - 1; prio >= 0; prio--) {
        struct qqueue *q = S.run[prio], *next;
        int had_work = q != NULL;

        for (; q; q = next) {
            next = q->run_next;
            dispatch_queue(q);
        }
        /* The global cap binds: lower priorities wait for a free slot. Only a
           level with work stops the walk: empty ones above it must not, or
           with the cap bound no queue would ever reach reclaim_idle(). */
        if (had_work && qlim_room(&S.lim_total, 0) == 0)
            break;
    }
}

static void
on_dispatch_idle(uv_idle_t *h)
{
    uv_idle_stop(h);
    dispatch_pending = 0;
    dispatch_all();
}

/* qmgr_dispatch_soon - one dispatch pass at the next loop turn, however many events asked */
void
qmgr_dispatch_soon(void)
{
    if (dispatch_pending || !started || S.stopping)
        return;
    dispatch_pending = 1;
    uv_idle_start(&dispatch_idle, on_dispatch_idle);
}

/* --- expiry sweep ---------------------------------------------------------------------- */

/* sweep_queue - bounce Q's expired ready recipients when no connection takes them */
static void
sweep_queue(struct qqueue *q, uint64_t now)
{
    uint32_t n = q->nready;

    /* Walk the list once, rotating: expired ones bounce, the others keep order. */
    while (n-- > 0) {
        uint32_t r = qmgr_ready_pop(q);
        if (qmgr_rcpt_expired(r, now))
            qmgr_outcome_expire(r, q);
        else
            qmgr_ready_push(q, r);
    }
}

static void
on_sweep_timer(uv_timer_t *t)
{
    uint64_t now = qmgr_wall();

    (void)t;
    for (uint32_t i = 0; i < S.nqueues; i++) {
        struct qqueue *q = S.queues[i];
        /* A queue with a live connection expires its recipients as it goes. */
        if (q->nready > 0 && q->nconn == 0)
            sweep_queue(q, now);
    }
}

/* --- start and stop ---------------------------------------------------------------------- */

void
qmgr_sched_start(void)
{
    uv_loop_t *loop = worker_loop();

    uv_timer_init(loop, &catch_up_timer);
    uv_timer_init(loop, &defer_timer);
    uv_timer_init(loop, &sweep_timer);
    uv_idle_init(loop, &dispatch_idle);
    uv_idle_init(loop, &catch_up_idle);
    started = 1;
    uv_timer_start(&catch_up_timer, on_catch_up_timer, CATCH_UP_INTERVAL_MS, CATCH_UP_INTERVAL_MS);
    uv_timer_start(&sweep_timer, on_sweep_timer, SWEEP_INTERVAL_MS, SWEEP_INTERVAL_MS);
}

void
qmgr_sched_stop(void)
{
    if (!started)
        return;
    started = 0;
    uv_close((uv_handle_t *)&catch_up_timer, NULL);
    uv_close((uv_handle_t *)&defer_timer, NULL);
    uv_close((uv_handle_t *)&sweep_timer, NULL);
    uv_close((uv_handle_t *)&dispatch_idle, NULL);
    uv_close((uv_handle_t *)&catch_up_idle, NULL);
    for (uint32_t i = 0; i < S.nqueues; i++)
        if (S.queues[i]->wake)
            uv_timer_stop(S.queues[i]->wake);
}
