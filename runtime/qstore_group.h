/*
 * qstore_group.h - grouped, asynchronous commits to the queue store
 *
 * The group committer writes many write operations in ONE LMDB write
 * transaction with ONE sync, on the libuv thread pool (uv_queue_work), so the
 * event loop keeps serving while the disk syncs. With sync on, a transaction
 * is committed lazily (qstore.h, DURABILITY) and its callbacks run once the
 * next one has committed (or, when nothing more came, once a bare sync has
 * returned): one flush per transaction under load, never an answer before
 * the data is durable. One commit runs at a time per
 * group; what arrives meanwhile forms the next batch (up to a batch size) and
 * is committed as soon as the running one finishes. An idle group does not
 * wait for company: it commits on the next loop turn (or after an optional
 * window), so a lone message costs about one sync of latency and batches
 * grow by themselves with the load. A paced group (qmgr's outcomes, which
 * nobody waits on) also keeps commits a minimum interval apart. Every operation's callback runs on
 * the loop thread after its transaction is durable (or failed).
 *
 * cleanup uses qstore_group_submit() and answers 250 from its callback only
 * when STATUS is 0; -ENOSPC means "452 4.3.1". qmgr uses finish/defer to
 * record outcomes, and put_warmup for its warm-up state. See qstore.h for the schema and the
 * durability rules.
 *
 * Lifetime: a group belongs to one loop and one struct qstore (of this
 * process). qstore_group_close() commits whatever is pending, waits for the
 * running commit, runs every callback, then frees the group and calls its
 * close callback; only after that may the qstore be closed.
 */
#ifndef PMTA_QSTORE_GROUP_H
#define PMTA_QSTORE_GROUP_H

#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "qstore.h"

#define QSTORE_GROUP_WINDOW_MS 0u
#define QSTORE_GROUP_MAX_BATCH 256u
#define QSTORE_GROUP_MAX_BYTES ((size_t)64 << 20)

struct qstore_group_opts {
    unsigned window_ms; /* an idle group waits this long after the first
                         * op before committing; 0 (default) = commit on
                         * the next loop turn */
    unsigned pace_ms;   /* at least this long between the starts of two
                         * commits (fewer, larger transactions when the
                         * callers can wait); 0 (default) = no pacing */
    unsigned max_batch; /* ops per transaction; 0 = default */
    size_t max_bytes;   /* new-message bytes per transaction; 0 = default */
};

/*
 * Operation result. STATUS is 0 or -errno (-ENOSPC: queue full, answer
 * 452 4.3.1; -ENOENT: no such recipient; -EIO etc.: see qstore.h). An accepted
 * op always completes, even across qstore_group_close().
 * MSGID is the new message's id for a submission, the op's message id for
 * finish/defer, 0 when a submission failed.
 */
typedef void (*qstore_group_cb)(void *arg, int status, uint64_t msgid);
typedef void (*qstore_group_close_cb)(void *arg);

struct qstore_group_stats {
    uint64_t commits;   /* transactions committed (one data sync each unless nosync) */
    uint64_t syncs;     /* bare syncs (for a limbo nothing else carried to the disk) */
    uint64_t failed;    /* transactions that failed or were aborted */
    uint64_t ops;       /* operations completed (any status) */
    uint64_t msgs;      /* messages stored */
    uint64_t max_batch; /* largest batch seen */
    uint64_t fallbacks; /* batches retried one op per transaction */
    double commit_ms;   /* total time spent in transactions (pool thread) */
};

struct qstore_group;

/* qstore_group_new - a committer on LOOP for QS; 0 or -errno (uv error) */
int qstore_group_new(struct qstore_group **gp, uv_loop_t *loop, struct qstore *qs,
                     const struct qstore_group_opts *opts);

/*
 * qstore_group_submit - store the new message NM. On 0 the group owns NM and
 * CB will run exactly once; on error (-ESHUTDOWN after close) the caller still
 * owns NM and CB will not run.
 */
int qstore_group_submit(struct qstore_group *g, struct qstore_newmsg *nm, qstore_group_cb cb,
                        void *arg);
/* qstore_group_finish - recipient delivered/bounced: delete it (and the message if last) */
int qstore_group_finish(struct qstore_group *g, uint64_t msgid, uint32_t index, qstore_group_cb cb,
                        void *arg);
/* qstore_group_defer - recipient deferred; D (and its string) is copied */
int qstore_group_defer(struct qstore_group *g, uint64_t msgid, uint32_t index,
                       const struct qstore_defer *d, qstore_group_cb cb, void *arg);
/* qstore_group_mark - set progress mark NAME to VALUE (qstore_wtxn_set_mark) with the next batch */
int qstore_group_mark(struct qstore_group *g, const char *name, uint64_t value, qstore_group_cb cb,
                      void *arg);
/* qstore_group_put_warmup - store warm-up state ST under KEY (both copied); -EMSGSIZE for a bad
 * key, -ESHUTDOWN after close */
int qstore_group_put_warmup(struct qstore_group *g, const char *key, const struct qstore_warmup *st,
                            qstore_group_cb cb, void *arg);
/* qstore_group_flush - start a commit now instead of waiting for the window */
void qstore_group_flush(struct qstore_group *g);
/* qstore_group_pending - ops not yet completed (queued or committing) */
size_t qstore_group_pending(const struct qstore_group *g);
/* qstore_group_stats - counters since creation (messages per sync = msgs / commits) */
void qstore_group_stats(const struct qstore_group *g, struct qstore_group_stats *st);
/* qstore_group_close - finish everything, free G, then call CB (may be NULL) */
void qstore_group_close(struct qstore_group *g, qstore_group_close_cb cb, void *arg);

#endif
