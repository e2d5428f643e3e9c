/*
 * qstore_group.c - the group committer: many queue writes, one transaction, one sync
 *
 * Owns the pending-operation list, the limbo list (ops whose transaction is
 * committed lazily but not yet durable: qstore.h, DURABILITY), the window
 * timer (0 ms by default: it only defers an idle group's commit to the next
 * loop turn) and the one uv_work_t of a group. The work is either a batch's
 * transaction (qstore_wtxn_commit_lazy) or, when nothing else came, a bare
 * qstore_sync(); either one, when it succeeds, makes the limbo durable, and
 * only then do the limbo's callbacks run. Threading: a batch is detached
 * from the pending list on the loop thread, handed whole to a thread-pool
 * thread (which alone touches it while the transaction runs, begin to commit
 * on that same thread as LMDB requires), and handed back to the loop thread
 * in the after-work callback. Nothing else is shared, so no locks.
 *
 * SECURITY: not exposed to peers; it moves records encoded by qstore.c.
 */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "msg.h"
#include "qstore_group.h"
#include "xalloc.h"

enum op_kind { OP_PUT, OP_FINISH, OP_DEFER, OP_MARK, OP_WARMUP };

struct group_op {
    struct group_op *next;
    enum op_kind kind;
    struct qstore_newmsg *nm; /* OP_PUT, owned */
    uint64_t msgid;
    uint32_t index;
    struct qstore_defer defer; /* OP_DEFER; last_error owned */
    char mark[64];             /* OP_MARK: the mark's name; msgid is its value */
    char *key;                 /* OP_WARMUP, owned */
    struct qstore_warmup warmup;
    int status;
    qstore_group_cb cb;
    void *arg;
};

struct batch {
    struct group_op *ops;
    size_t nops; /* 0: a bare sync for the limbo */
    /* filled in by the pool thread, read on the loop thread afterwards */
    unsigned commits, failed, fallback;
    int synced;  /* a commit or the sync returned 0: every earlier lazy commit is durable */
    int sync_rc; /* a bare sync's result */
    double ms;
};

struct qstore_group {
    uv_loop_t *loop;
    struct qstore *qs;
    uv_timer_t timer;
    uv_work_t work;
    struct group_op *pend_head, **pend_tail;
    size_t npend;
    struct group_op *limbo_head, **limbo_tail; /* committed, waiting for a sync */
    int lazy;                                  /* sync on: commits are lazy, acks wait */
    struct batch batch;                        /* valid while busy */
    int busy, timer_armed, closing;
    unsigned window_ms, pace_ms, max_batch;
    uint64_t last_start; /* uv_now() when the last commit began */
    size_t max_bytes;
    struct qstore_group_stats st;
    qstore_group_close_cb close_cb;
    void *close_arg;
};

/* ---- the pool-thread side ----------------------------------------------------- */

/* apply_op - run one operation inside W */
static int
apply_op(struct qstore_wtxn *w, struct group_op *op)
{
    switch (op->kind) {
    case OP_PUT:
        return qstore_wtxn_put(w, op->nm, &op->msgid);
    case OP_FINISH:
        return qstore_wtxn_finish(w, op->msgid, op->index);
    case OP_DEFER:
        return qstore_wtxn_defer(w, op->msgid, op->index, &op->defer);
    case OP_MARK:
        return qstore_wtxn_set_mark(w, op->mark, op->msgid);
    case OP_WARMUP:
        return qstore_wtxn_put_warmup(w, op->key, &op->warmup);
    }
    return -EINVAL;
}

/*
 * run_txn - apply OPS[0..N) in one transaction and commit. Per-op results go
 * to each op's status; the return is the transaction's fate (0 committed).
 */
static int
run_txn(struct qstore *qs, struct group_op *ops, size_t n, struct batch *b)
{
    struct qstore_wtxn *w;
    struct group_op *op = ops;
    int rc;

    if ((rc = qstore_wtxn_begin(qs, &w)) < 0)
        return rc;
    for (size_t i = 0; i < n; i++, op = op->next) {
        op->status = apply_op(w, op);
        if (qstore_wtxn_failed(w))
            break;
    }
    rc = qstore_wtxn_commit_lazy(w); /* aborts by itself when poisoned */
    if (rc == 0) {
        b->commits++;
        b->synced = 1; /* its data sync carried every earlier meta page */
    } else {
        b->failed++;
    }
    return rc;
}

/* mark_all - the transaction failed: every op of it failed with RC */
static void
mark_all(struct group_op *ops, size_t n, int rc)
{
    for (size_t i = 0; i < n; i++, ops = ops->next) {
        ops->status = rc;
        if (ops->kind == OP_PUT)
            ops->msgid = 0;
    }
}

/*
 * work_cb - commit the batch. If the whole batch cannot commit (typically a
 * full map), retry one op per transaction so that what fits still succeeds
 * and only the ops that do not fit report the error.
 */
static void
work_cb(uv_work_t *req)
{
    struct qstore_group *g = req->data;
    struct batch *b = &g->batch;
    uint64_t t0 = uv_hrtime();
    int rc;

    if (b->nops == 0) { /* nothing new came: sync for the limbo */
        b->sync_rc = qstore_sync(g->qs);
        b->synced = b->sync_rc == 0;
        b->ms = (double)(uv_hrtime() - t0) / 1e6;
        return;
    }
    rc = run_txn(g->qs, b->ops, b->nops, b);
    if (rc < 0 && b->nops > 1) {
        b->fallback = 1;
        for (struct group_op *op = b->ops; op; op = op->next)
            if ((rc = run_txn(g->qs, op, 1, b)) < 0)
                mark_all(op, 1, rc);
    } else if (rc < 0) {
        mark_all(b->ops, b->nops, rc);
    }
    b->ms = (double)(uv_hrtime() - t0) / 1e6;
}

/* ---- the loop-thread side ----------------------------------------------------- */

static void start_commit(struct qstore_group *g);
static void start_sync(struct qstore_group *g);
static void on_window(uv_timer_t *t);

/* take_batch - detach up to max_batch ops / max_bytes of messages from pending */
static void
take_batch(struct qstore_group *g)
{
    struct group_op **link = &g->pend_head;
    size_t bytes = 0, n = 0;

    while (*link && n < g->max_batch) {
        size_t sz = (*link)->kind == OP_PUT ? qstore_newmsg_size((*link)->nm) : 0;

        if (n > 0 && bytes + sz > g->max_bytes)
            break;
        bytes += sz;
        n++;
        link = &(*link)->next;
    }
    memset(&g->batch, 0, sizeof g->batch);
    g->batch.ops = g->pend_head;
    g->batch.nops = n;
    g->pend_head = *link;
    *link = NULL;
    if (g->pend_head == NULL)
        g->pend_tail = &g->pend_head;
    g->npend -= n;
}

/* free_op - release what an op owns */
static void
free_op(struct group_op *op)
{
    qstore_newmsg_free(op->nm);
    free(op->key);
    free((char *)op->defer.last_error);
    free(op);
}

/* account - fold a finished batch into the group's counters */
static void
account(struct qstore_group *g, const struct batch *b)
{
    g->st.syncs += b->nops == 0;
    g->st.commits += b->commits;
    g->st.failed += b->failed;
    g->st.fallbacks += b->fallback;
    g->st.ops += b->nops;
    g->st.commit_ms += b->ms;
    if (b->nops > g->st.max_batch)
        g->st.max_batch = b->nops;
}

static void
on_closed(uv_handle_t *h)
{
    struct qstore_group *g = h->data;
    qstore_group_close_cb cb = g->close_cb;
    void *arg = g->close_arg;

    free(g);
    if (cb)
        cb(arg);
}

/* maybe_finish_close - once nothing is pending, running or waiting for a sync, close the timer */
static void
maybe_finish_close(struct qstore_group *g)
{
    if (g->closing == 1 && !g->busy && g->npend == 0 && g->limbo_head == NULL) {
        g->closing = 2;
        uv_close((uv_handle_t *)&g->timer, on_closed);
    }
}

/* pace_wait - ms until the pace allows the next commit (0: now) */
static uint64_t
pace_wait(struct qstore_group *g)
{
    uint64_t next = g->last_start + g->pace_ms, now = uv_now(g->loop);

    return g->pace_ms == 0 || g->last_start == 0 || next <= now ? 0 : next - now;
}

/* arm - run on_window in DELAY ms (unless it is already armed) */
static void
arm(struct qstore_group *g, uint64_t delay)
{
    if (!g->timer_armed) {
        g->timer_armed = 1;
        uv_timer_start(&g->timer, on_window, delay, 0);
    }
}

/* commit_after - commit the pending ops in DELAY ms; a full batch or a close cannot wait */
static void
commit_after(struct qstore_group *g, uint64_t delay)
{
    if (delay == 0 || g->npend >= g->max_batch || g->closing)
        start_commit(g);
    else
        arm(g, delay);
}

/* complete - run the callbacks of the ops from OPS on (their statuses are final) and free them */
static void
complete(struct qstore_group *g, struct group_op *ops)
{
    for (struct group_op *op = ops, *next; op; op = next) {
        next = op->next;
        if (op->kind == OP_PUT && op->status == 0)
            g->st.msgs++;
        if (op->cb)
            op->cb(op->arg, op->status, op->status == 0 || op->kind != OP_PUT ? op->msgid : 0);
        free_op(op);
    }
}

/* settle - B's ops: failed ones are final now, committed ones wait in the limbo for a sync
 * (or are final now when commits sync by themselves) */
static void
settle(struct qstore_group *g, struct group_op *ops)
{
    struct group_op *done = NULL, **done_tail = &done;

    for (struct group_op *op = ops, *next; op; op = next) {
        next = op->next;
        op->next = NULL;
        if (g->lazy && op->status == 0) {
            *g->limbo_tail = op;
            g->limbo_tail = &op->next;
        } else {
            *done_tail = op;
            done_tail = &op->next;
        }
    }
    complete(g, done);
}

/* release_limbo - the limbo is durable (RC 0) or its sync failed (RC < 0): report it */
static void
release_limbo(struct qstore_group *g, int rc)
{
    struct group_op *ops = g->limbo_head;

    g->limbo_head = NULL;
    g->limbo_tail = &g->limbo_head;
    for (struct group_op *op = ops; rc < 0 && op; op = op->next) {
        op->status =
            rc; /* committed, perhaps durable: cleanup answers 4xx, a retry may duplicate */
        if (op->kind == OP_PUT)
            op->msgid = 0;
    }
    complete(g, ops);
}

/* after_work_cb - back on the loop: report what is durable, then start what comes next */
static void
after_work_cb(uv_work_t *req, int status)
{
    struct qstore_group *g = req->data;
    struct batch b = g->batch; /* callbacks may start the next batch */

    if (status != 0) /* UV_ECANCELED: the work never ran */
        mark_all(b.ops, b.nops, -ECANCELED);
    g->busy = 0;
    account(g, &b);
    /* the limbo before this work: durable if it synced, failed if its bare sync did */
    if (b.synced || (b.nops == 0 && b.sync_rc < 0))
        release_limbo(g, b.synced ? 0 : b.sync_rc);
    settle(g, b.ops);
    if (g->busy) /* a callback started the next batch */
        return;
    if (g->npend > 0) /* it also carries the limbo's meta page to the disk */
        commit_after(g, pace_wait(g));
    else if (g->limbo_head != NULL)
        g->pace_ms && !g->closing ? arm(g, g->pace_ms) : start_sync(g);
    maybe_finish_close(g);
}

static void
start_work(struct qstore_group *g)
{
    int rc;

    if (g->timer_armed) {
        uv_timer_stop(&g->timer);
        g->timer_armed = 0;
    }
    g->busy = 1;
    if ((rc = uv_queue_work(g->loop, &g->work, work_cb, after_work_cb)) != 0)
        msg_panic("qstore_group: uv_queue_work: %s", uv_strerror(rc));
}

static void
start_commit(struct qstore_group *g)
{
    take_batch(g);
    g->last_start = uv_now(g->loop);
    start_work(g);
}

/* start_sync - a bare sync for the limbo (nothing new to commit) */
static void
start_sync(struct qstore_group *g)
{
    memset(&g->batch, 0, sizeof g->batch);
    start_work(g);
}

static void
on_window(uv_timer_t *t)
{
    struct qstore_group *g = t->data;

    g->timer_armed = 0;
    if (g->busy)
        return;
    if (g->npend > 0)
        start_commit(g);
    else if (g->limbo_head != NULL)
        start_sync(g);
}

/*
 * enqueue - add OP. While a commit runs, ops only accumulate: after_work_cb
 * commits them all at once (natural batching: under load a batch is whatever
 * arrived during one sync). When idle, the commit starts on the next loop turn
 * (window 0, the default) rather than at once, so that the ops submitted by
 * the same turn's callbacks share it; or right now if the batch is full.
 */
static void
enqueue(struct qstore_group *g, struct group_op *op)
{
    *g->pend_tail = op;
    g->pend_tail = &op->next;
    g->npend++;
    if (g->busy)
        return; /* after_work_cb starts the next batch */
    if (g->npend >= g->max_batch || g->closing) {
        start_commit(g);
    } else {
        uint64_t pace = pace_wait(g);

        if (g->timer_armed && g->limbo_head != NULL && pace <= g->window_ms) {
            uv_timer_stop(&g->timer); /* a paced group's limbo sync: the commit covers it now */
            g->timer_armed = 0;
        }
        arm(g, pace > g->window_ms ? pace : g->window_ms);
    }
}

static struct group_op *
new_op(enum op_kind kind, qstore_group_cb cb, void *arg)
{
    struct group_op *op = xcalloc(1, sizeof *op);

    op->kind = kind;
    op->cb = cb;
    op->arg = arg;
    return op;
}

/* ---- API ------------------------------------------------------------------------ */

int
qstore_group_new(struct qstore_group **gp, uv_loop_t *loop, struct qstore *qs,
                 const struct qstore_group_opts *opts)
{
    struct qstore_group *g = xcalloc(1, sizeof *g);
    int rc;

    if ((rc = uv_timer_init(loop, &g->timer)) != 0) {
        free(g);
        return rc; /* libuv errors are already -errno */
    }
    g->loop = loop;
    g->qs = qs;
    g->timer.data = g;
    g->work.data = g;
    g->pend_tail = &g->pend_head;
    g->limbo_tail = &g->limbo_head;
    g->lazy = qstore_sync_on(qs);
    g->window_ms = opts ? opts->window_ms : QSTORE_GROUP_WINDOW_MS;
    g->pace_ms = opts ? opts->pace_ms : 0;
    g->max_batch = opts && opts->max_batch ? opts->max_batch : QSTORE_GROUP_MAX_BATCH;
    g->max_bytes = opts && opts->max_bytes ? opts->max_bytes : QSTORE_GROUP_MAX_BYTES;
    *gp = g;
    return 0;
}

int
qstore_group_submit(struct qstore_group *g, struct qstore_newmsg *nm, qstore_group_cb cb, void *arg)
{
    struct group_op *op;

    if (g->closing)
        return -ESHUTDOWN;
    op = new_op(OP_PUT, cb, arg);
    op->nm = nm;
    enqueue(g, op);
    return 0;
}

int
qstore_group_finish(struct qstore_group *g, uint64_t msgid, uint32_t index, qstore_group_cb cb,
                    void *arg)
{
    struct group_op *op;

    if (g->closing)
        return -ESHUTDOWN;
    op = new_op(OP_FINISH, cb, arg);
    op->msgid = msgid;
    op->index = index;
    enqueue(g, op);
    return 0;
}

int
qstore_group_defer(struct qstore_group *g, uint64_t msgid, uint32_t index,
                   const struct qstore_defer *d, qstore_group_cb cb, void *arg)
{
    struct group_op *op;

    if (g->closing)
        return -ESHUTDOWN;
    op = new_op(OP_DEFER, cb, arg);
    op->msgid = msgid;
    op->index = index;
    op->defer = *d;
    /* the commit runs later, on another thread: keep our own bounded copy */
    op->defer.last_error = xstrndup(d->last_error ? d->last_error : "", QSTORE_ERR_MAX);
    enqueue(g, op);
    return 0;
}

int
qstore_group_mark(struct qstore_group *g, const char *name, uint64_t value, qstore_group_cb cb,
                  void *arg)
{
    struct group_op *op;

    if (g->closing)
        return -ESHUTDOWN;
    if (strlen(name) >= sizeof op->mark)
        return -EINVAL;
    op = new_op(OP_MARK, cb, arg);
    snprintf(op->mark, sizeof op->mark, "%s", name);
    op->msgid = value;
    enqueue(g, op);
    return 0;
}

int
qstore_group_put_warmup(struct qstore_group *g, const char *key, const struct qstore_warmup *st,
                        qstore_group_cb cb, void *arg)
{
    struct group_op *op;

    if (g->closing)
        return -ESHUTDOWN;
    if (key == NULL || *key == 0 || strlen(key) > QSTORE_WARMUP_KEY_MAX)
        return -EMSGSIZE;
    op = new_op(OP_WARMUP, cb, arg);
    op->key = xstrdup(key);
    op->warmup = *st;
    enqueue(g, op);
    return 0;
}

void
qstore_group_flush(struct qstore_group *g)
{
    if (!g->busy && g->npend > 0)
        start_commit(g);
    else if (!g->busy && g->limbo_head != NULL)
        start_sync(g);
}

size_t
qstore_group_pending(const struct qstore_group *g)
{
    size_t n = g->npend + (g->busy ? g->batch.nops : 0);

    for (const struct group_op *op = g->limbo_head; op; op = op->next)
        n++;
    return n;
}

void
qstore_group_stats(const struct qstore_group *g, struct qstore_group_stats *st)
{
    *st = g->st;
}

void
qstore_group_close(struct qstore_group *g, qstore_group_close_cb cb, void *arg)
{
    if (g->closing)
        return;
    g->closing = 1;
    g->close_cb = cb;
    g->close_arg = arg;
    qstore_group_flush(g);
    maybe_finish_close(g);
}
