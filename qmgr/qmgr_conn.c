/*
 * qmgr_conn.c - the qmgr socket: cleanup's hints and the smtp-out processes,
 *               one smtp-out connection at a time (runtime/mailproto.h)
 *
 * Every process that connects to RUNDIR/private/qmgr is a peer; its first
 * frame must be MP_QMGR_HELLO, which says what it is (cleanup or smtp-out),
 * and from then on only that kind's frames are taken from it. qmgr owns every decision about
 * outbound connections: it opens one for a queue on the least-loaded smtp-out process (MP_CONN_OPEN
 * plus the first MP_CONN_TXN), feeds it one transaction at a time while the queue has ready
 * recipients, its limits allow and max-msg-per-connection is not reached, keeps it idle up to
 * connection-idle-timeout when more work is expected soon (which includes a queue that got new work
 * within the last second: a steady stream reuses its connections), and closes it. An idle
 * connection that holds a shared cap (total-max-smtp-out, the virtual MTA's) another queue needs is
 * closed for it. A connection counts against max-smtp-out from MP_CONN_OPEN until its MP_CONN_DOWN.
 *
 * In flight: a recipient in a transaction is in exactly one connection's
 * txn[] and nowhere else, so it is never handed out twice. When an smtp-out
 * process goes away, its in-flight recipients go back to the front of their
 * queue (they may have been delivered: that is the one duplicate allowed).
 *
 * Limits go through qmgr_limit.h: a connection holds one lease of its queue's
 * max-smtp-out, of total-max-smtp-out and of its virtual MTA's limit from
 * MP_CONN_OPEN until its MP_CONN_DOWN; each transaction takes its recipients
 * from the queue's and the virtual MTA's message rates.
 *
 * Owns: S.peers, S.conn_by_id, every struct qconn and struct qpeer (and the
 * leases a connection holds), the listener (worker runtime).
 * SECURITY: frames from peers are decoded by runtime/mailproto.def's
 * decoders (kinds, caps, no CR/LF, nothing trailing); a malformed or
 * unexpected frame closes that peer (its in-flight recipients return to the
 * queue).
 */
#include "config.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "mailproto.h"
#include "msg.h"
#include "qmgr.h"
#include "qmgr_warmup.h"
#include "worker.h"
#include "xalloc.h"

#define DEFAULT_IDLE_TIMEOUT_MS 5000u
#define STREAM_MS               1000u /* new work this recent makes a queue a stream */
#define UNREADABLE_RETRY_S      30u   /* a message the store could not read now, tried again */

static void conn_failed_early(struct qconn *c, struct qresult *res);
static void return_in_flight(struct qconn *c);

static struct worker_listener *listener;
static uint32_t conn_cursor;
static uint32_t nresting;  /* idle connections whose idle timer runs */
static int reclaim_wanted; /* a cap bound and no connection was resting */

static void rest_end(struct qconn *c);

/* --- connection table -------------------------------------------------------------------- */

static struct qconn *
conn_new(struct qqueue *q, struct qpeer *out)
{
    struct qconn *c = xcalloc(1, sizeof(*c));
    uint32_t slot;

    if (S.nconn_total + 1 >= S.conn_cap) {
        uint32_t cap = S.conn_cap ? S.conn_cap * 2 : 256;
        S.conn_by_id = xreallocarray(S.conn_by_id, cap, sizeof(*S.conn_by_id));
        memset(S.conn_by_id + S.conn_cap, 0, (cap - S.conn_cap) * sizeof(*S.conn_by_id));
        S.conn_cap = cap;
    }
    /* A rotating cursor: an id is not reused right after its connection ended. */
    for (slot = conn_cursor % S.conn_cap; S.conn_by_id[slot]; slot = (slot + 1) % S.conn_cap)
        ;
    conn_cursor = slot + 1;
    S.conn_by_id[slot] = c;
    c->id = slot + 1;
    c->q = q;
    c->out = out;
    c->state = QC_OPENING;
    c->qnext = q->conns;
    q->conns = c;
    q->nconn++;
    c->onext = out->conns;
    out->conns = c;
    out->nconns++;
    S.nconn_total++;
    uv_timer_init(worker_loop(), &c->idle_timer);
    c->idle_timer.data = c;
    return c;
}

static void
idle_timer_closed(uv_handle_t *h)
{
    struct qconn *c = h->data;

    free(c->txn);
    free(c->mx);
    free(c->dest_ip);
    free(c->source_ip);
    free(c->helo);
    free(c->tls);
    free(c->esmtp);
    free(c);
}

static void
unlink_conn(struct qconn **list, struct qconn *c, int by_queue)
{
    for (struct qconn **p = list; *p; p = by_queue ? &(*p)->qnext : &(*p)->onext)
        if (*p == c) {
            *p = by_queue ? c->qnext : c->onext;
            return;
        }
}

/* conn_free - forget C (its transaction must be settled already) */
/* rate_pending_end - C no longer holds a place among its queue's opening connections */
static void
rate_pending_end(struct qconn *c)
{
    if (c->rate_pending) {
        c->rate_pending = 0;
        c->q->nrate_pending--;
    }
}

static void
conn_free(struct qconn *c)
{
    rate_pending_end(c);
    unlink_conn(&c->q->conns, c, 1);
    c->q->nconn--;
    while (c->nleases > 0)
        qlim_release(c->leases[--c->nleases]);
    unlink_conn(&c->out->conns, c, 0);
    c->out->nconns--;
    S.nconn_total--;
    if (c->up)
        S.nconn_up--;
    S.conn_by_id[c->id - 1] = NULL;
    qmgr_trace_end(c, "connection closed");
    rest_end(c);
    if (c->txn_msg)
        qstore_msg_free(c->txn_msg);
    c->txn_msg = NULL;
    uv_close((uv_handle_t *)&c->idle_timer, idle_timer_closed);
}

static struct qconn *
conn_lookup(struct qpeer *p, uint32_t id)
{
    struct qconn *c;

    if (id == 0 || id > S.conn_cap || (c = S.conn_by_id[id - 1]) == NULL || c->out != p)
        return NULL;
    return c;
}

/* --- sending ------------------------------------------------------------------------------ */

static int
send_frames(struct qpeer *p, struct buf *out)
{
    int err = ipc_chan_send(p->ch, out);

    if (err < 0)
        msg_warn("smtp-out %u: cannot send: %s", p->pid, uv_strerror(err));
    buf_free(out);
    return err;
}

/* add_open - MP_CONN_OPEN; 0, or -EMSGSIZE / -EINVAL for a name the protocol refuses */
static int
add_open(struct buf *out, struct qconn *c)
{
    /* a rollup queue resolves the MX of a member domain (qmgr_rollup.c) */
    struct mp_conn_open o = { .queue = c->q->name,
                              .domain = c->q->route_domain ? c->q->route_domain : c->q->domain,
                              .vmta = c->q->vmta,
                              .source_ip = c->source_ip,
                              .helo = c->helo,
                              .config_generation = S.cfg->generation };

    return mp_encode_conn_open(out, c->id, &o);
}

/* add_txn - MP_CONN_TXN for C's transaction (max_rcpt caps it within MP_INDEXES_MAX) */
static void
add_txn(struct buf *out, struct qconn *c)
{
    struct mp_conn_txn t = { .msgid = S.msg[c->txn_msgidx].msgid,
                             .indexes_len = (size_t)c->txn_n * 4 };
    uint8_t *idx = xmalloc(t.indexes_len);

    for (uint32_t i = 0; i < c->txn_n; i++) {
        uint32_t v = S.rcpt[c->txn[i]].index;
        idx[4 * i] = (uint8_t)(v >> 24);
        idx[4 * i + 1] = (uint8_t)(v >> 16);
        idx[4 * i + 2] = (uint8_t)(v >> 8);
        idx[4 * i + 3] = (uint8_t)v;
    }
    t.indexes = idx;
    if (mp_encode_conn_txn(out, c->id, &t) < 0)
        msg_panic("qmgr: a transaction of %u recipients does not fit MP_CONN_TXN", c->txn_n);
    free(idx);
}

/* drop_gone - recipients the store no longer has (deleted meanwhile) leave the schedule;
   those on a suppression list bounce (qmgr_suppress.c) */
static void
drop_gone(struct qconn *c)
{
    char qid[QSTORE_QID_LEN + 1];
    uint32_t keep = 0;

    for (uint32_t i = 0; i < c->txn_n; i++) {
        uint32_t r = c->txn[i];
        const struct qstore_rcpt *rr = c->txn_msg ? qmgr_msg_find_rcpt(c->txn_msg, S.rcpt[r].index)
                                                  : NULL;
        const char *list = rr ? qmgr_suppressed(c->q, rr->address) : NULL;

        if (rr && list) {
            c->q->ninflight--;
            qmgr_outcome_suppressed(r, c->txn_msg, c->q, list);
            continue;
        }
        if (rr) {
            c->txn[keep++] = r;
            continue;
        }
        msg_warn("recipient %s/%u is no longer in the queue; forgetting it",
                 qmgr_qid(qid, S.msg[S.rcpt[r].msg].msgid), S.rcpt[r].index);
        c->q->ninflight--;
        qmgr_rcpt_free(r);
    }
    c->txn_n = keep;
}

/*
 * hold_unreadable - the store could not give us the message for a reason
 * other than its being gone (reader table full, EIO, a damaged record): its
 * recipients wait UNREADABLE_RETRY_S and are tried again, no attempt
 * counted; dropping them would lose them until qmgr restarts
 */
static void
hold_unreadable(struct qconn *c, int err)
{
    uint32_t due = qmgr_tick_now() + UNREADABLE_RETRY_S * 1000u / QMGR_TICK_MS;
    char qid[QSTORE_QID_LEN + 1];

    msg_warn("cannot read message %s: %s; its %u recipient(s) wait %u s",
             qmgr_qid(qid, S.msg[c->txn_msgidx].msgid), qstore_strerror(err), c->txn_n,
             UNREADABLE_RETRY_S);
    for (uint32_t i = 0; i < c->txn_n; i++) {
        c->q->ninflight--;
        qmgr_defer_push(c->txn[i], due);
    }
    c->txn_n = 0;
    qmgr_defer_timer_update();
}

/* build_txn - the next transaction of C's queue into c->txn; its recipient count */
static uint32_t
build_txn(struct qconn *c, uint32_t max)
{
    struct qqueue *q = c->q;
    int err;

    while (q->nready > 0) {
        c->txn_n = qmgr_take_txn(q, max, c->txn);
        if (c->txn_n == 0)
            return 0;
        c->txn_msgidx = S.rcpt[c->txn[0]].msg;
        if (c->txn_msg)
            qstore_msg_free(c->txn_msg);
        c->txn_msg = NULL;
        err = qstore_read_msg(S.qs, S.msg[c->txn_msgidx].msgid, 0, &c->txn_msg);
        if (err < 0) {
            c->txn_msg = NULL;
            if (err != -ENOENT) {
                hold_unreadable(c, err);
                continue;
            }
        }
        drop_gone(c);
        if (c->txn_n > 0 && qmgr_job_hold(q, c->txn_msg, c->txn, c->txn_n))
            c->txn_n = 0; /* its job is paused (qmgr_jobs.c) */
        if (c->txn_n > 0) {
            c->txn_left = c->txn_n;
            c->txn_sent_noted = 0;
            return c->txn_n;
        }
    }
    return 0;
}

/* --- closing and idling ---------------------------------------------------------------------- */

/* rest_end - C is no longer resting: stop its idle timer */
static void
rest_end(struct qconn *c)
{
    if (c->idle_timer_on) {
        uv_timer_stop(&c->idle_timer);
        c->idle_timer_on = 0;
        nresting--;
    }
}

static void
conn_close(struct qconn *c)
{
    struct buf out = BUF_INIT;

    if (c->state == QC_CLOSING)
        return;
    c->state = QC_CLOSING;
    rest_end(c);
    (void)mp_encode_conn_close(&out, c->id, NULL); /* no fields: cannot fail */
    send_frames(c->out, &out);
}

static void
on_idle_timeout(uv_timer_t *t)
{
    struct qconn *c = t->data;

    rest_end(c);
    if (c->state == QC_IDLE)
        conn_close(c);
}

/*
 * work_expected - will C's queue have something for it soon? Ready work
 * waiting for the rate limit; answers pending on other connections (temp
 * failures come back as deferred, not ready); or a stream: new work arrived
 * (qmgr_ready_arrive) within STREAM_MS. Under a steady stream the queue is empty for
 * moments between messages (new ones come in batches, one per cleanup
 * commit), and closing then would cost a connection (TCP, greeting, EHLO,
 * QUIT) per message or two. STREAM_MS is short so that a queue whose work
 * dried up does not hold its connections for long.
 */
static int
work_expected(struct qconn *c)
{
    struct qqueue *q = c->q;

    return q->nready > 0 || (q->ndeferred > 0 && q->ninflight > 0) ||
           qmgr_now_ms() - q->last_arrival_ms < STREAM_MS;
}

/* holds - does C hold a lease of L? */
static int
holds(const struct qconn *c, const struct qlim *l)
{
    for (unsigned i = 0; i < c->nleases; i++)
        if (c->leases[i] == l)
            return 1;
    return 0;
}

/*
 * qmgr_conn_reclaim_idle - Q may not open a connection because of a shared cap
 * (total-max-smtp-out, its virtual MTA's, a source address's): close one
 * resting connection of another queue holding a lease of CAP, so that idle
 * connections never starve a queue with work. Its MP_CONN_DOWN brings the
 * next dispatch pass. If none rests yet (the connections were busy), the
 * next one to start resting asks for a dispatch pass (conn_rest): nothing
 * else would, and Q would wait for that connection's idle timeout.
 */
void
qmgr_conn_reclaim_idle(const struct qqueue *q, const struct qlim *cap)
{
    for (uint32_t i = 0; nresting > 0 && i < S.conn_cap; i++) {
        struct qconn *c = S.conn_by_id[i];

        if (c && c->idle_timer_on && c->state == QC_IDLE && c->q != q && holds(c, cap)) {
            conn_close(c);
            return;
        }
    }
    reclaim_wanted = 1;
}

static void
conn_rest(struct qconn *c)
{
    if (c->idle_timeout_ms == 0 || !work_expected(c) || S.stopping) {
        conn_close(c);
        return;
    }
    if (!c->idle_timer_on) {
        uv_timer_start(&c->idle_timer, on_idle_timeout, c->idle_timeout_ms, 0);
        c->idle_timer_on = 1;
        nresting++;
        if (reclaim_wanted) { /* a queue waits for a cap: offer this one */
            reclaim_wanted = 0;
            qmgr_dispatch_soon();
        }
    }
}

/*
 * over_limit - Q has more connections than it may now (backoff lowered
 * max-smtp-out), or a defer-queue action or a pause holds it: close rather
 * than feed.
 */
static int
over_limit(struct qqueue *q)
{
    if (q->feed_held && qmgr_now_ms() >= q->retry_until_ms)
        q->feed_held = 0;
    qmgr_queue_limits(q);
    return q->feed_held || q->paused ||
           (qlim_limited(&q->lim_conns) && q->nconn > (uint64_t)q->lim_conns.count);
}

/* conn_feed - give idle connection C its next transaction, or let it rest or close */
static void
conn_feed(struct qconn *c)
{
    struct qqueue *q = c->q;
    uint32_t room, n;
    struct buf out = BUF_INIT;

    if (S.stopping || (c->max_msg && c->ntxn >= c->max_msg) || over_limit(q) ||
        (c->source_ip && *c->source_ip && qmgr_source_disabled(q, c->source_ip))) {
        conn_close(c);
        return;
    }
    if (q->nready == 0 || (room = qmgr_gate_txn_room(q, c)) == 0) {
        conn_rest(c);
        return;
    }
    if ((n = build_txn(c, room < c->max_rcpt ? room : c->max_rcpt)) == 0) {
        conn_rest(c);
        return;
    }
    qmgr_gate_txn_take(c);
    rest_end(c);
    c->state = QC_BUSY;
    c->ntxn++;
    qmgr_trace_attach(c, &out);
    add_txn(&out, c);
    send_frames(c->out, &out);
}

void
qmgr_conn_feed_idle(struct qqueue *q)
{
    struct qconn *c, *next;

    for (c = q->conns; c && q->nready > 0; c = next) {
        next = c->qnext;
        if (c->state == QC_IDLE)
            conn_feed(c);
    }
}

/*
 * qmgr_conn_trim - Q's connection limit just fell (backoff): close its resting
 * and opening (no transaction yet) connections beyond it now. A busy one
 * closes when its transaction ends (conn_feed); a resting one would otherwise
 * wait for work that backoff defers, and an opening one would connect after
 * the switch, holding connections the limit no longer allows.
 */
void
qmgr_conn_trim(struct qqueue *q)
{
    uint64_t open = 0;

    qmgr_queue_limits(q);
    if (!qlim_limited(&q->lim_conns))
        return;
    for (struct qconn *c = q->conns; c; c = c->qnext)
        open += c->state != QC_CLOSING;
    for (struct qconn *c = q->conns; c && open > (uint64_t)q->lim_conns.count; c = c->qnext)
        if (c->state == QC_IDLE || c->state == QC_OPENING) {
            conn_close(c);
            open--;
        }
}

/* --- opening ---------------------------------------------------------------------------------- */

struct qpeer *
qmgr_conn_least_loaded(void)
{
    struct qpeer *best = NULL;

    for (struct qpeer *p = S.peers; p; p = p->next) {
        if (p->kind != QPEER_OUT || (p->max_conns && p->nconns >= p->max_conns))
            continue;
        if (!best || p->nconns < best->nconns)
            best = p;
    }
    return best;
}

/* lease - C holds one lease of L from now on; 0 when L has none left */
static int
lease(struct qconn *c, struct qlim *l)
{
    if (c->nleases >= QCONN_LEASES)
        msg_panic("qmgr: a connection holds more than %d leases", QCONN_LEASES);
    if (!qlim_acquire(l))
        return 0;
    c->leases[c->nleases++] = l;
    return 1;
}

/* lease_all - the leases connection C of Q from SRC holds while it lives; 0 if one is refused */
static int
lease_all(struct qconn *c, const struct qsource_limits *src)
{
    struct qqueue *q = c->q;

    return lease(c, &q->lim_conns) && lease(c, &S.lim_total) && lease(c, qmgr_vmta_conn_limit(q)) &&
           (!src || !src->lim[QSRC_CONNS] || lease(c, src->lim[QSRC_CONNS]));
}

/* pin_settings - what the connection keeps for its lifetime (a reload does not change it) */
static void
pin_settings(struct qconn *c)
{
    int64_t max_msg = qmgr_queue_num(c->q, CFG_D_MAX_MSG_PER_CONNECTION, 0);
    int64_t max_rcpt = qmgr_queue_num(c->q, CFG_D_MAX_RCPT_PER_TRANSACTION, 1000);
    int64_t idle = qmgr_queue_num(c->q, CFG_D_CONNECTION_IDLE_TIMEOUT, 5);

    c->max_msg = max_msg > 0 ? (unsigned)max_msg : 0;
    c->max_rcpt = max_rcpt > 0 ? (unsigned)(max_rcpt > 100000 ? 100000 : max_rcpt) : 1000;
    c->idle_timeout_ms = idle > 0 ? (uint64_t)(idle > 600 ? 600 : idle) * 1000 : 0;
    c->txn_cap = c->max_rcpt;
    c->txn = xreallocarray(NULL, c->txn_cap, sizeof(*c->txn));
}

/*
 * ramp_allows - is Q's ready work more than its working connections will take?
 * Each connection of Q that is opening or busy takes the next transactions as
 * soon as its own ends (up to QCONN_RAMP of them, fewer if max-msg-per-
 * connection ends it sooner), so another connection is opened only for the
 * ready recipients beyond those. A domain with three messages gets one
 * connection that carries all three, not three connection set-ups (and TLS
 * handshakes) carrying one each; a queue of thousands still opens up to its
 * max-smtp-out at once.
 */
static int
ramp_allows(const struct qqueue *q)
{
    uint64_t will_take = 0;

    for (const struct qconn *c = q->conns; c; c = c->qnext) {
        if (c->state != QC_OPENING && c->state != QC_BUSY)
            continue;
        if (c->max_msg == 0 || c->max_msg >= c->ntxn + QCONN_RAMP)
            will_take += QCONN_RAMP;
        else if (c->max_msg > c->ntxn)
            will_take += c->max_msg - c->ntxn;
    }
    return (uint64_t)q->nready > will_take;
}

/* qmgr_conn_open - one more connection for Q with its first transaction; 1 if opened */
int
qmgr_conn_open(struct qqueue *q)
{
    struct qpeer *out;
    struct qconn *c;
    struct buf buf = BUF_INIT;
    const struct qsource_limits *src;
    char *ip, *helo;
    uint32_t room;

    if (!ramp_allows(q) || !qmgr_gate_open(q) || (out = qmgr_conn_least_loaded()) == NULL)
        return 0;
    if ((room = qmgr_gate_txn_room(q, NULL)) == 0)
        return 0;
    /*
     * A rate-limited queue sends the transaction only when the connection is
     * up (smtp-out then says IDLE and conn_feed takes the rate): the time from
     * taking a rate slot to the RCPT on the wire must not include connection
     * set-up, which varies, or the receiver would see the slots bunched.
     * Opening connections are counted so that they never outnumber the room.
     */
    if (room != QLIM_UNLIMITED && (room <= q->nrate_pending || q->nready <= q->nrate_pending))
        return 0;
    if (!qmgr_gate_source(q, &ip, &helo))
        return 0;
    c = conn_new(q, out);
    c->source_ip = ip;
    c->helo = helo;
    if ((src = qmgr_source_limits(q, ip)) != NULL) {
        c->src_msgs = src->lim[QSRC_MSGS];
        c->src_volume = src->lim[QSRC_VOLUME];
        c->src_warm = src->lim[QSRC_WARMUP];
    }
    pin_settings(c);
    if (!lease_all(c, src) || (room = qmgr_gate_txn_room(q, c)) == 0) {
        conn_free(c);
        return 0;
    }
    if (room != QLIM_UNLIMITED) {
        c->rate_pending = 1;
        q->nrate_pending++;
    } else {
        if (build_txn(c, c->max_rcpt) == 0) {
            conn_free(c);
            return 0;
        }
        qmgr_gate_txn_take(c);
        c->state = QC_BUSY;
        c->ntxn = 1;
    }
    qlim_take(&q->lim_connect, 1, qmgr_now_ns());
    if (src && src->lim[QSRC_CONNECT])
        qlim_take(src->lim[QSRC_CONNECT], 1, qmgr_now_ns());
    if (add_open(&buf, c) < 0) {
        struct qresult res = {
            .result = MP_RESULT_TEMPFAIL,
            .code = 451,
            .enhanced = "4.3.0",
            .text = "queue, source or host name too long to pass to smtp-out",
            .mx = "",
            .dest_ip = "",
            .source_ip = "",
        };

        msg_warn("queue %s: %s", q->name, res.text);
        buf_free(&buf);
        conn_failed_early(c, &res);
        conn_free(c);
        return 1;
    }
    qmgr_trace_attach(c, &buf); /* pmtactl trace: this attempt, from its first step */
    if (c->txn_n > 0)
        add_txn(&buf, c);
    msg_debug("connection %u for %s on smtp-out %u (source %s)", c->id, q->name, out->pid,
              *c->source_ip ? c->source_ip : "any");
    send_frames(out, &buf);
    return 1;
}

/* --- results -----------------------------------------------------------------------------------
 */

static void
fill_result(struct qresult *res, struct qconn *c)
{
    res->mx = c->mx ? c->mx : "";
    res->dest_ip = c->dest_ip ? c->dest_ip : "";
    res->source_ip = c->source_ip ? c->source_ip : "";
    res->tls = c->tls;
    res->esmtp = c->esmtp;
}

/* settle - recipient slot I of C's transaction gets RES */
static void
settle(struct qconn *c, uint32_t i, const struct qresult *res)
{
    uint32_t r = c->txn[i];

    c->txn[i] = QNIL;
    c->txn_left--;
    c->q->ninflight--;
    if (c->src_warm) /* the warm-up plan learns how the destination took it */
        qmgr_warmup_outcome(c->src_warm, res->result == MP_RESULT_TEMPFAIL,
                            res->result == MP_RESULT_PERMFAIL && qmgr_outcome_complaint(res));
    qmgr_outcome(r, c->txn_msg, c->q, res);
}

/* settle_rest - every unanswered recipient of C's transaction gets RES (the connection's) */
static void
settle_rest(struct qconn *c, const struct qresult *res)
{
    struct qresult conn_res = *res;

    conn_res.conn_level = 1;
    for (uint32_t i = 0; i < c->txn_n && c->txn_left > 0; i++)
        if (c->txn[i] != QNIL)
            settle(c, i, &conn_res);
    c->txn_n = 0;
}

static int
on_conn_up(struct qconn *c, struct ipc_msg *m)
{
    struct mp_conn_up up;

    if (mp_decode_conn_up(m, &up) < 0)
        return -EPROTO;
    free(c->mx);
    free(c->dest_ip);
    c->mx = xstrdup(up.mx);
    c->dest_ip = xstrdup(up.dest_ip);
    free(c->tls);
    free(c->esmtp);
    c->tls = xstrdup(up.tls);
    c->esmtp = xstrdup(up.esmtp);
    if (*up.source_ip) {
        free(c->source_ip);
        c->source_ip = xstrdup(up.source_ip);
    }
    if (!c->up)
        S.nconn_up++;
    c->up = 1;
    /* The queue reaches its destination again: retry mode ends. */
    qmgr_queue_end_retry(c->q, 0);
    qmgr_adaptive_conn_up(c->q);
    return 0;
}

/* note_sent - the transaction of C went on the wire at SENT_NS: pace the rates from there */
static void
note_sent(struct qconn *c, uint64_t sent_ns)
{
    if (c->txn_sent_noted || sent_ns == 0)
        return;
    c->txn_sent_noted = 1;
    qmgr_gate_txn_sent(c, sent_ns);
}

static int
on_rcpt_result(struct qconn *c, struct ipc_msg *m)
{
    struct mp_rcpt_result r;
    char reply[QSTORE_ERR_MAX + 1], qid[QSTORE_QID_LEN + 1];
    struct qresult res = { 0 };

    if (mp_decode_rcpt_result(m, &r) < 0 || r.result > MP_RESULT_PERMFAIL)
        return -EPROTO;
    /* the queue keeps at most QSTORE_ERR_MAX bytes of a reply */
    snprintf(reply, sizeof(reply), "%s", r.text);
    if (c->txn_n == 0 || r.msgid != S.msg[c->txn_msgidx].msgid)
        return -EPROTO;
    for (uint32_t i = 0; i < c->txn_n; i++) {
        if (c->txn[i] != QNIL && S.rcpt[c->txn[i]].index == r.index) {
            note_sent(c, r.sent_ns);
            res.result = r.result;
            res.code = r.code;
            res.enhanced = r.enhanced;
            res.text = reply;
            fill_result(&res, c);
            settle(c, i, &res);
            return 0;
        }
    }
    msg_warn("smtp-out %u: result for %s/%u which connection %u does not carry", c->out->pid,
             qmgr_qid(qid, r.msgid), r.index, c->id);
    return 0;
}

static int
on_txn_done(struct qconn *c, struct ipc_msg *m)
{
    struct mp_txn_done done;
    struct qresult res = { .result = MP_RESULT_TEMPFAIL,
                           .code = 451,
                           .enhanced = "4.3.0",
                           .text = "no result from smtp-out" };

    if (mp_decode_txn_done(m, &done) < 0)
        return -EPROTO;
    fill_result(&res, c);
    settle_rest(c, &res);
    if (c->txn_msg)
        qstore_msg_free(c->txn_msg);
    c->txn_msg = NULL;
    qmgr_trace_end(c, "transaction done");
    return 0;
}

static int
on_conn_idle(struct qconn *c, struct ipc_msg *m)
{
    if (mp_decode_conn_idle(m, NULL) < 0)
        return -EPROTO;
    rate_pending_end(c);
    if (c->txn_n > 0) {
        struct qresult res = { .result = MP_RESULT_TEMPFAIL,
                               .code = 451,
                               .enhanced = "4.3.0",
                               .text = "no result from smtp-out" };
        fill_result(&res, c);
        settle_rest(c, &res);
    }
    if (c->state == QC_CLOSING)
        return 0;
    c->state = QC_IDLE;
    conn_feed(c);
    return 0;
}

/* conn_failed_early - the connection never came up: the queue's problem, not a recipient's */
static void
conn_failed_early(struct qconn *c, struct qresult *res)
{
    struct qqueue *q = c->q;
    int bounce = res->result == MP_RESULT_PERMFAIL &&
                 qmgr_queue_num(q, CFG_D_BOUNCE_UPON_5XX_GREETING, 1) != 0;

    if (res->result == MP_RESULT_PERMFAIL && !bounce)
        res->result = MP_RESULT_TEMPFAIL;
    if (!bounce) {
        enum qadapt a = qmgr_adaptive_conn_failed(q);

        if (a == QADAPT_REQUEUE || a == QADAPT_PAUSE) {
            /* adaptive concurrency: refused while others are up, or a short pause */
            qmgr_outcome_queue_refused(q, res);
            return_in_flight(c);
            return;
        }
    }
    qmgr_outcome_queue_failure(q, res);
    settle_rest(c, res);
    if (!bounce)
        return;
    /* 5xx greeting, no such domain, null MX: every ready recipient of the queue bounces. */
    for (uint32_t r; (r = qmgr_ready_pop(q)) != QNIL;) {
        struct qstore_msg *m = qmgr_read_envelope(r);

        qmgr_outcome(r, m, q, res);
        if (m)
            qstore_msg_free(m);
    }
}

static int
on_conn_down(struct qconn *c, struct ipc_msg *m)
{
    struct mp_conn_down d;
    struct qresult res = { 0 };

    if (mp_decode_conn_down(m, &d) < 0 || d.result > MP_RESULT_PERMFAIL)
        return -EPROTO;
    res = (struct qresult){ .result = d.result,
                            .code = d.code,
                            .enhanced = d.enhanced,
                            .text = d.text,
                            .mx = *d.mx ? d.mx : (c->mx ? c->mx : ""),
                            .dest_ip = *d.dest_ip ? d.dest_ip : (c->dest_ip ? c->dest_ip : ""),
                            .source_ip = c->source_ip ? c->source_ip : "",
                            .tls = c->tls,
                            .esmtp = c->esmtp };
    if (!c->up && c->state == QC_CLOSING && c->txn_n == 0) {
        /* closed by us before it was up (qmgr_conn_trim): not the destination's failure */
        msg_debug("connection %u for %s closed before it was up", c->id, c->q->name);
    } else if (!c->up && d.result != MP_RESULT_OK) {
        conn_failed_early(c, &res);
    } else {
        if (res.result == MP_RESULT_OK) {
            res = (struct qresult){ .result = MP_RESULT_TEMPFAIL,
                                    .code = 451,
                                    .enhanced = "4.4.2",
                                    .text = "connection closed before a result",
                                    .mx = res.mx,
                                    .dest_ip = res.dest_ip,
                                    .source_ip = res.source_ip };
        }
        settle_rest(c, &res);
    }
    msg_debug("connection %u for %s down", c->id, c->q->name);
    conn_free(c);
    qmgr_dispatch_soon();
    return 0;
}

/* --- peers ------------------------------------------------------------------------------------ */

static int
on_out_frame(struct qpeer *p, struct ipc_msg *m)
{
    struct qconn *c = conn_lookup(p, m->id);

    if (!c) {
        /* Not fatal for the process: its other connections carry mail. */
        msg_warn("smtp-out %u: frame %s for unknown connection %u; ignored", p->pid,
                 mp_type_name(m->type), m->id);
        return 0;
    }
    switch (m->type) {
    case MP_CONN_UP:
        return on_conn_up(c, m);
    case MP_RCPT_RESULT:
        return on_rcpt_result(c, m);
    case MP_TXN_DONE:
        return on_txn_done(c, m);
    case MP_CONN_IDLE:
        return on_conn_idle(c, m);
    case MP_CONN_DOWN:
        return on_conn_down(c, m);
    case MP_TRACE_LINE:
        return qmgr_trace_line(c, m);
    default:
        msg_warn("smtp-out %u: unexpected frame %s (type %u)", p->pid, mp_type_name(m->type),
                 m->type);
        return -EPROTO;
    }
}

static int
on_hint(struct qpeer *p, struct ipc_msg *m)
{
    struct mp_queue_new hint;

    (void)p;
    if (mp_decode_queue_new(m, &hint) < 0)
        return -EPROTO;
    qmgr_sched_catch_up_soon();
    return 0;
}

/* on_hello - MP_QMGR_HELLO, the first frame of every peer: what kind it is */
static int
on_hello(struct qpeer *p, struct ipc_msg *m)
{
    struct mp_qmgr_hello hello;

    if (mp_decode_qmgr_hello(m, &hello) < 0)
        return -EPROTO;
    p->pid = hello.pid;
    if (hello.kind == MP_PEER_CLEANUP) {
        p->kind = QPEER_CLEANUP;
        msg_debug("cleanup process %u connected", p->pid);
        return 0;
    }
    if (hello.kind != MP_PEER_SMTP_OUT)
        return -EPROTO;
    p->kind = QPEER_OUT;
    p->max_conns = hello.max_connections;
    if (p->max_conns)
        msg_info("smtp-out process %u connected (up to %u connections)", p->pid, p->max_conns);
    else
        msg_info("smtp-out process %u connected (no connection limit of its own)", p->pid);
    qmgr_dispatch_soon();
    return 0;
}

static int
on_peer_frame(struct ipc_chan *ch, struct ipc_msg *m)
{
    struct qpeer *p = ch->data;
    int rc;

    switch (p->kind) {
    case QPEER_OUT:
        rc = on_out_frame(p, m);
        break;
    case QPEER_CLEANUP:
        rc = on_hint(p, m);
        break;
    default:
        rc = on_hello(p, m);
    }
    if (rc < 0)
        msg_warn("malformed or unexpected frame %s (type %u) from %s peer; closing it",
                 mp_type_name(m->type), m->type,
                 p->kind == QPEER_OUT       ? "an smtp-out"
                 : p->kind == QPEER_CLEANUP ? "a cleanup"
                                            : "a new");
    return rc < 0 ? 1 : 0;
}

/* return_in_flight - a dead process's recipients go back to the front of their queues */
static void
return_in_flight(struct qconn *c)
{
    for (uint32_t i = c->txn_n; i-- > 0;) {
        uint32_t r = c->txn[i];
        if (r == QNIL)
            continue;
        c->q->ninflight--;
        qmgr_ready_push_front(c->q, r);
    }
    c->txn_n = 0;
}

static void
on_peer_closed(struct ipc_chan *ch, int reason)
{
    struct qpeer *p = ch->data, **pp;

    if (p->kind == QPEER_OUT)
        msg_info("smtp-out process %u went away (%s); %u connections lost", p->pid,
                 reason ? uv_strerror(reason) : "eof", p->nconns);
    while (p->conns) {
        struct qconn *c = p->conns;
        return_in_flight(c);
        conn_free(c);
    }
    for (pp = &S.peers; *pp; pp = &(*pp)->next)
        if (*pp == p) {
            *pp = p->next;
            break;
        }
    free(p);
    qmgr_dispatch_soon();
}

static void
accept_one(int fd)
{
    struct qpeer *p = xcalloc(1, sizeof(*p));
    int err;

    if ((err = ipc_chan_open_fd(worker_loop(), fd, on_peer_frame, on_peer_closed, p, &p->ch)) < 0) {
        msg_warn("cannot serve a qmgr connection: %s", uv_strerror(err));
        free(p);
        return;
    }
    ipc_chan_cork(p->ch); /* one write per loop turn to each smtp-out */
    p->next = S.peers;
    S.peers = p;
}

void
qmgr_conn_listen(void)
{
    int err = worker_listen("qmgr", accept_one, &listener);

    if (err < 0)
        msg_fatal("cannot serve the qmgr socket: %s",
                  err == -ENOENT ? "pmtad gave us none" : uv_strerror(err));
}

void
qmgr_conn_stop_listening(void)
{
    worker_listen_stop(listener);
    listener = NULL;
}

/* --- shutdown --------------------------------------------------------------------------------- */

void
qmgr_conn_close_idle_all(void)
{
    for (struct qpeer *p = S.peers; p; p = p->next)
        for (struct qconn *c = p->conns; c; c = c->onext)
            if (c->state == QC_IDLE || c->state == QC_OPENING)
                conn_close(c);
}

/* qmgr_conn_busy - connections still carrying a transaction */
unsigned
qmgr_conn_busy(void)
{
    unsigned n = 0;

    for (struct qpeer *p = S.peers; p; p = p->next)
        for (struct qconn *c = p->conns; c; c = c->onext)
            n += c->txn_n > 0;
    return n;
}

void
qmgr_conn_close_all(void)
{
    struct qpeer *p, *next;

    qmgr_conn_stop_listening();
    for (p = S.peers; p; p = next) {
        next = p->next;
        ipc_chan_close(p->ch);
    }
}
