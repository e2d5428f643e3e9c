/*
 * qmgr_gate.c - what a queue must pass before a connection opens or a
 *               transaction goes, and the same checks in words
 *
 * Every limit is a limiter (qmgr_limit.h). A new connection of a queue needs
 * a lease of the queue's max-smtp-out, of total-max-smtp-out, of its virtual
 * MTA's cap and of its source address's, the connect rates' room, no retry
 * mode and a usable source address (qmgr_gate_open, qmgr_gate_source); a
 * transaction needs room in the recipient rates (the queue's, the virtual
 * MTA's, the source address's) and conformant data volume rates
 * (qmgr_gate_txn_room). open_gate() is the one place that decides what
 * blocks a new connection; it changes nothing, so that qmgr_gate_why() can
 * say at any moment, in PowerMTA's words, which limit holds a queue back
 * ("message rate limit reached (based on backoff-max-msg-rate 5/s)",
 * "connection limit reached (source-ip-max-smtp-out 4 for 127.0.0.21)") for
 * pmtactl show queues / show settings and the monitor. The scheduler's side
 * acts on the answer: a wake timer when time will free a rate, an idle
 * connection of another queue closed when a shared lease binds, backoff
 * when every source address is disabled.
 *
 * Owns nothing: the limiters belong to queues, virtual MTAs and source
 * addresses.
 * SECURITY: none (numbers from the configuration and the clock).
 */
#include "config.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "qmgr.h"
#include "qmgr_backoff.h"
#include "qmgr_warmup.h"

/* --- transactions ------------------------------------------------------------------------ */

/* wake_for - Q waits for limiter L: look at Q again when L will have room (if time tells) */
static void
wake_for(struct qqueue *q, struct qlim *l, uint64_t now_ns)
{
    uint64_t wait = qlim_wait_ns(l, now_ns);

    if (wait != QLIM_WAIT_UNKNOWN)
        qmgr_queue_wake_at(q, qmgr_now_ms() + wait / 1000000 + 1);
}

/* qmgr_gate_txn_limits - see qmgr.h */
void
qmgr_gate_txn_limits(struct qqueue *q, const struct qconn *c, struct qtxn_limits *t)
{
    qmgr_queue_limits(q);
    t->msgs[0] = &q->lim_msg;
    t->msgs[1] = qmgr_vmta_msg_limit(q);
    t->msgs[2] = c ? c->src_msgs : NULL;
    t->msgs[3] = c ? c->src_warm : NULL;
    t->volumes[0] = &q->lim_volume;
    t->volumes[1] = c ? c->src_volume : NULL;
}

/* txn_room - recipients T's rates allow now; at 0 the binding limiter to *BINDING */
static uint32_t
txn_room(struct qtxn_limits *t, uint64_t now, struct qlim **binding)
{
    uint32_t room = qlim_room_all(t->msgs, QTXN_RATES, now, binding);

    if (room > 0 && qlim_room_all(t->volumes, QTXN_VOLUMES, now, binding) == 0)
        room = 0;
    return room;
}

/* qmgr_gate_txn_room - see qmgr.h */
uint32_t
qmgr_gate_txn_room(struct qqueue *q, struct qconn *c)
{
    struct qtxn_limits t;
    struct qlim *binding;
    uint64_t now = qmgr_now_ns();
    uint32_t room;

    qmgr_gate_txn_limits(q, c, &t);
    if ((room = txn_room(&t, now, &binding)) == 0)
        wake_for(q, binding, now);
    return room;
}

/* qmgr_gate_txn_take - see qmgr.h */
void
qmgr_gate_txn_take(struct qconn *c)
{
    struct qtxn_limits t;
    uint64_t now = qmgr_now_ns();

    qmgr_gate_txn_limits(c->q, c, &t);
    qlim_take_all(t.msgs, QTXN_RATES, c->txn_n, now);
    if (c->txn_msg)
        qlim_take_all(t.volumes, QTXN_VOLUMES, c->txn_msg->env.size, now);
}

/* qmgr_gate_txn_sent - see qmgr.h */
void
qmgr_gate_txn_sent(struct qconn *c, uint64_t sent_ns)
{
    struct qtxn_limits t;

    qmgr_gate_txn_limits(c->q, c, &t);
    qlim_sent_all(t.msgs, QTXN_RATES, c->txn_n, sent_ns);
}

/* --- new connections --------------------------------------------------------------------- */

enum block {
    BLOCK_NONE,
    BLOCK_STOPPING,
    BLOCK_PAUSED,
    BLOCK_LIMIT,     /* a limiter: lim */
    BLOCK_RETRY,     /* retry mode */
    BLOCK_NO_SOURCE, /* disable-source-ip left no address */
};

struct gate {
    enum block why;
    struct qlim *lim;
};

/* What a source address must allow for a new connection (source_allows). */
struct source_check {
    uint64_t now_ns;
    struct qlim *binding; /* the first limit that refused an address */
};

/*
 * source_allows - may Q open a connection from source address IP now? Its
 * connections, connect rate, message rate and data volume (source-ip-max-*)
 * must all have room; the first limit that refuses is kept in ARG's binding
 */
static int
source_allows(struct qqueue *q, const char *ip, void *arg)
{
    struct source_check *sc = arg;
    const struct qsource_limits *src = qmgr_source_limits(q, ip);
    struct qlim *binding;

    if (src == NULL ||
        qlim_room_all((struct qlim *const *)src->lim, QSRC_LIMITS, sc->now_ns, &binding) > 0)
        return 1;
    if (sc->binding == NULL)
        sc->binding = binding;
    return 0;
}

/* open_gate - what keeps Q from opening one more connection now, into G (changes nothing) */
static void
open_gate(struct qqueue *q, uint64_t now_ms, uint64_t now_ns, struct gate *g)
{
    struct qlim *caps[] = { &q->lim_conns, &S.lim_total, qmgr_vmta_conn_limit(q) };

    g->why = BLOCK_NONE;
    g->lim = NULL;
    if (S.stopping) {
        g->why = BLOCK_STOPPING;
        return;
    }
    if (q->paused) {
        g->why = BLOCK_PAUSED;
        return;
    }
    qmgr_queue_limits(q);
    for (size_t i = 0; i < sizeof caps / sizeof caps[0]; i++)
        if (qlim_room(caps[i], now_ns) == 0) {
            g->why = BLOCK_LIMIT;
            g->lim = caps[i];
            return;
        }
    if (now_ms < q->retry_until_ms) {
        g->why = BLOCK_RETRY;
        return;
    }
    if (!qmgr_vmta_source_usable(q)) {
        g->why = BLOCK_NO_SOURCE;
        return;
    }
    if (qlim_room(&q->lim_connect, now_ns) == 0) {
        g->why = BLOCK_LIMIT;
        g->lim = &q->lim_connect;
        return;
    }
    if (qmgr_source_limited(q)) {
        struct source_check sc = { now_ns, NULL };

        if (!qmgr_vmta_source_any(q, source_allows, &sc) && sc.binding) {
            g->why = BLOCK_LIMIT;
            g->lim = sc.binding;
        }
    }
}

/*
 * qmgr_gate_open - see qmgr.h. What blocks decides what Q waits for: its own
 * cap a connection of its own closing (which dispatches), a shared lease an
 * idle connection of another queue closed for it, a rate its wake timer,
 * retry mode its end; no usable source address may put it in backoff
 * (backoff-upon-all-sources-disabled).
 */
int
qmgr_gate_open(struct qqueue *q)
{
    uint64_t now_ms = qmgr_now_ms(), now_ns = qmgr_now_ns();
    struct gate g;

    open_gate(q, now_ms, now_ns, &g);
    switch (g.why) {
    case BLOCK_NONE:
        return 1;
    case BLOCK_LIMIT:
        if (g.lim->kind == QLIM_LEASE && g.lim != &q->lim_conns)
            qmgr_conn_reclaim_idle(q, g.lim);
        else if (g.lim->kind == QLIM_RATE)
            wake_for(q, g.lim, now_ns);
        else if (g.lim->scope == QLIM_WARMUP)
            qmgr_warmup_overflow(q, g.lim); /* overflow-virtual-mta, if the plan has one */
        return 0;
    case BLOCK_RETRY:
        qmgr_queue_wake_at(q, q->retry_until_ms);
        return 0;
    case BLOCK_NO_SOURCE:
        if (q->mode == QMODE_NORMAL &&
            qmgr_queue_num(q, CFG_D_BACKOFF_UPON_ALL_SOURCES_DISABLED, 0))
            qmgr_backoff_set_mode(q, QMODE_BACKOFF,
                                  "every source address disabled "
                                  "(backoff-upon-all-sources-disabled)",
                                  -1);
        return 0;
    default:
        return 0;
    }
}

/* qmgr_gate_source - see qmgr.h */
int
qmgr_gate_source(struct qqueue *q, char **ip, char **helo)
{
    struct source_check sc = { qmgr_now_ns(), NULL };

    if (qmgr_vmta_pick_source(q, qmgr_source_limited(q) ? source_allows : NULL, &sc, ip, helo))
        return 1;
    if (sc.binding && sc.binding->kind == QLIM_LEASE)
        qmgr_conn_reclaim_idle(q, sc.binding);
    else if (sc.binding)
        wake_for(q, sc.binding, sc.now_ns);
    return 0;
}

/* --- in words ---------------------------------------------------------------------------- */

/*
 * idle_binding - Q's connections waiting for their next transaction: 0 when
 * there is none, 1 when one may take a transaction now, -1 when none may
 * (the first one's binding limit in *BINDING: a rate, its address's cap)
 */
static int
idle_binding(struct qqueue *q, uint64_t now_ns, struct qlim **binding)
{
    int idle = 0;

    *binding = NULL;
    for (const struct qconn *c = q->conns; c; c = c->qnext) {
        struct qtxn_limits t;
        struct qlim *b;

        if (c->state != QC_IDLE)
            continue;
        idle = -1;
        qmgr_gate_txn_limits(q, c, &t);
        if (txn_room(&t, now_ns, &b) > 0)
            return 1;
        if (*binding == NULL)
            *binding = b;
    }
    return idle;
}

/* describe - GATE in words into BUF */
static const char *
describe(const struct qqueue *q, const struct gate *g, uint64_t now_ms, char *buf, size_t size)
{
    switch (g->why) {
    case BLOCK_STOPPING:
        snprintf(buf, size, "shutting down");
        break;
    case BLOCK_PAUSED:
        snprintf(buf, size, "paused (pmtactl pause queue)");
        break;
    case BLOCK_LIMIT:
        qlim_reason(g->lim, buf, size);
        break;
    case BLOCK_RETRY:
        snprintf(buf, size,
                 "retry mode: no new connection for %" PRIu64 " s (after %u failed "
                 "connection%s)",
                 (q->retry_until_ms - now_ms + 999) / 1000, q->fail_count,
                 q->fail_count == 1 ? "" : "s");
        break;
    case BLOCK_NO_SOURCE:
        snprintf(buf, size, "every source address is disabled for this queue (disable-source-ip)");
        break;
    default:
        buf[0] = 0;
    }
    return buf;
}

/*
 * qmgr_gate_why - see qmgr.h. A paused queue with mail is held back by the
 * pause, ready or not (its deferred mail will wait for it too). Otherwise
 * the order follows the scheduler's: a queue with nothing ready is not held
 * back; holds of its own (MX lookup,
 * defer-queue) first; then an idle connection waits only for the recipient
 * rates (and its source address's limits); without one the queue needs a
 * new connection, and what refuses it holds the queue back, else the rates
 * do.
 */
const char *
qmgr_gate_why(struct qqueue *q, char *buf, size_t size)
{
    uint64_t now_ms = qmgr_now_ms(), now_ns = qmgr_now_ns();
    struct qtxn_limits t;
    struct qlim *binding = NULL;
    struct gate g;
    int idle;

    buf[0] = 0;
    if (q->paused && q->nready + q->ndeferred > 0)
        return snprintf(buf, size, "paused (pmtactl pause queue)"), buf;
    if (q->nready == 0)
        return buf;
    if (q->route_held)
        return snprintf(buf, size, "waiting for its domain's MX records (MX rollup)"), buf;
    if (q->feed_held && now_ms < q->retry_until_ms)
        return snprintf(buf, size, "defer-queue: no new transaction for %" PRIu64 " s",
                        (q->retry_until_ms - now_ms + 999) / 1000),
               buf;
    if ((idle = idle_binding(q, now_ns, &binding)) != 0)
        return idle > 0 || binding == NULL ? buf : qlim_reason(binding, buf, size);
    open_gate(q, now_ms, now_ns, &g);
    if (g.why != BLOCK_NONE)
        return describe(q, &g, now_ms, buf, size);
    qmgr_gate_txn_limits(q, NULL, &t);
    if (txn_room(&t, now_ns, &binding) == 0 && binding)
        return qlim_reason(binding, buf, size);
    if (qmgr_conn_least_loaded() == NULL)
        return snprintf(buf, size, "no smtp-out process can take a connection"), buf;
    return buf;
}
