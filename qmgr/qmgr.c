/*
 * qmgr.c - the queue manager: start-up, configuration, shutdown
 *
 * qmgr is the only process that changes recipients in the queue store, and
 * there is one per queue: it holds SPOOL/.qmgr.lock (waiting for a qmgr of a
 * pmtad that died to finish). At start it opens SPOOL/queue, rebuilds the
 * schedule from it (qmgr_sched.c), and serves RUNDIR/private/qmgr, where
 * cleanup sends new-message hints and the smtp-out processes take
 * connections and transactions (qmgr_conn.c). Outcomes are recorded through
 * one group committer (qmgr_outcome.c).
 *
 * Configuration: qmgr holds the current configuration generation (queue
 * settings point into it) and switches on reload; running connections keep
 * the limits they were opened with (pinned in struct qconn), new ones use
 * the new settings.
 *
 * Shutdown: stop opening connections, close idle ones, give busy ones the
 * drain time to report, close every peer (in-flight recipients simply stay
 * in the store and are tried after restart), flush the group committer,
 * close the store, exit.
 *
 * Owns: S (the shared state, qmgr.h), the queue store handles, the drain
 * timer, the time base.
 * SECURITY: no external input here; see qmgr_conn.c for peer frames.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <time.h>
#include <unistd.h>

#include "msg.h"
#include "qmgr.h"
#include "qmgr_cluster.h"
#include "qmgr_warmup.h"
#include "worker.h"
#include "xalloc.h"

#define DRAIN_POLL_MS     50
#define QMGR_LOCK_FILE    ".qmgr.lock"
#define QMGR_LOCK_POLL_MS 50u
#define QMGR_LOCK_WAIT_MS 15000u /* > the orphan drain plus the runtime's force stop */

struct qmgr_state S;

static uv_timer_t drain_timer;
static uint64_t drain_deadline_ms;
static int drain_stage;

/* --- time --------------------------------------------------------------------------------- */

uint64_t
qmgr_now_ns(void)
{
    return uv_hrtime();
}

uint64_t
qmgr_now_ms(void)
{
    return uv_hrtime() / 1000000u;
}

uint64_t
qmgr_wall(void)
{
    return (uint64_t)time(NULL);
}

uint32_t
qmgr_tick_now(void)
{
    return (uint32_t)((qmgr_now_ms() - S.start_ms) / QMGR_TICK_MS);
}

/* qmgr_tick_from_wall - the tick of a unix time (the past is tick 0, the far future saturates) */
uint32_t
qmgr_tick_from_wall(uint64_t unix_seconds)
{
    uint64_t now_wall = qmgr_wall(), now_tick = qmgr_tick_now(), t;

    if (unix_seconds <= now_wall)
        return 0; /* already due */
    t = now_tick + (unix_seconds - now_wall) * (1000 / QMGR_TICK_MS);
    return t >= UINT32_MAX - 1 ? UINT32_MAX - 1 : (uint32_t)t;
}

/* qmgr_jitter - DELAY_MS scaled by a factor in [0.9, 1.1] derived from SEED */
uint64_t
qmgr_jitter(uint64_t delay_ms, uint64_t seed)
{
    uint64_t h = seed * 0x9E3779B97F4A7C15ull;

    h ^= h >> 29;
    h *= 0xBF58476D1CE4E5B9ull;
    h ^= h >> 32;
    /* h % 2001 is 0..2000 -> -1000..+1000 per mille of 10 % */
    return delay_ms * (10000 + (h % 2001) - 1000) / 10000;
}

/* --- the queue store ---------------------------------------------------------------------- */

/*
 * lock_queue - one qmgr per queue. The qmgr of a pmtad that died finishes
 * its last deliveries for up to WORKER_ORPHAN_DRAIN_S (more if it hangs:
 * then the runtime's force stop ends it), and a pmtad restarted meanwhile
 * must not deliver its recipients a second time: wait for it, then go. The
 * lock is held (the descriptor stays open) until this process exits.
 */
static void
lock_queue(void)
{
    char *path = xasprintf("%s/%s", worker_spool(), QMGR_LOCK_FILE);
    int fd = open(path, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
    unsigned waited_ms = 0;
    pid_t parent = getppid();

    if (fd < 0)
        msg_fatal("cannot open %s: %s", path, strerror(errno));
    while (flock(fd, LOCK_EX | LOCK_NB) < 0) {
        if (errno != EWOULDBLOCK && errno != EINTR)
            msg_fatal("cannot lock %s: %s", path, strerror(errno));
        if (waited_ms == 0)
            msg_warn("another qmgr still works on this queue (%s); waiting for it to exit", path);
        if (waited_ms >= QMGR_LOCK_WAIT_MS)
            msg_fatal("another qmgr still holds %s after %u s", path, QMGR_LOCK_WAIT_MS / 1000);
        if (getppid() != parent) /* our pmtad died while we waited: nobody needs us */
            msg_fatal("pmtad went away while we waited for %s", path);
        uv_sleep(QMGR_LOCK_POLL_MS);
        waited_ms += QMGR_LOCK_POLL_MS;
    }
    if (waited_ms > 0)
        msg_info("the other qmgr is gone after %u ms", waited_ms);
    free(path);
}

static void
open_queue(void)
{
    /* Outcomes gate no reply: commit them at most every 20 ms, in bigger batches. */
    static const struct qstore_group_opts paced = { .pace_ms = 20 };
    char *dir;
    int err;

    if ((err = qstore_open_spool(&S.qs, S.cfg, worker_spool(), 0, &dir)) < 0)
        msg_fatal("cannot open the queue %s: %s", dir, qstore_strerror(err));
    if ((err = qstore_group_new(&S.group, worker_loop(), S.qs, &paced)) < 0)
        msg_fatal("cannot start the group committer: %s", uv_strerror(err));
    free(dir);
}

/* --- configuration ----------------------------------------------------------------------- */

static void
on_config(const struct cfg *cfg, void *ctx)
{
    const struct cfg *old = S.cfg;

    (void)cfg;
    (void)ctx;
    S.cfg = worker_config_hold();
    qmgr_cluster_config();
    qmgr_queue_invalidate_settings();
    qmgr_outcome_config();
    if (old)
        worker_config_release(old);
    qmgr_dispatch_soon();
}

/* --- shutdown ------------------------------------------------------------------------------ */

static void
on_group_closed(void *arg)
{
    (void)arg;
    S.group = NULL;
    qstore_close(S.qs);
    S.qs = NULL;
    qmgr_cluster_stop();
    qmgr_queues_free();
    qmgr_vmta_free();
    qmgr_source_free();
    qmgr_rollup_free();
    qmgr_warmup_free();
    qmgr_heap_free();
    qmgr_jobs_free();
    qmgr_cluster_free();
    free(S.conn_by_id);
    S.conn_by_id = NULL;
    worker_config_release(S.cfg);
    S.cfg = NULL;
    worker_stop(0);
}

static void
on_drain_timer(uv_timer_t *t)
{
    if (drain_stage == 1 && (qmgr_conn_busy() == 0 || qmgr_now_ms() >= drain_deadline_ms)) {
        drain_stage = 2;
        qmgr_conn_close_all();
    }
    if (drain_stage == 2 && S.peers == NULL) {
        drain_stage = 3;
        uv_close((uv_handle_t *)t, NULL);
        qmgr_sched_stop();
        qmgr_cluster_stop(); /* this node's leases go now, not at lease-time */
        qmgr_warmup_stop();  /* its last saves go into the group before it closes */
        qmgr_outcome_close();
        qstore_group_close(S.group, on_group_closed, NULL);
    }
}

static void
on_shutdown(unsigned drain_seconds, void *ctx)
{
    (void)ctx;
    if (S.stopping)
        return;
    S.stopping = 1;
    msg_info("stopping: %u connections, %u recipients in memory", S.nconn_total, S.nrcpt_live);
    qmgr_conn_stop_listening();
    qmgr_ctl_stop();
    qmgr_http_stop();
    qmgr_conn_close_idle_all();
    qmgr_rollup_stop();
    drain_deadline_ms = qmgr_now_ms() + (uint64_t)drain_seconds * 1000;
    drain_stage = 1;
    uv_timer_init(worker_loop(), &drain_timer);
    uv_timer_start(&drain_timer, on_drain_timer, 0, DRAIN_POLL_MS);
}

int
main(int argc, char **argv)
{
    struct worker_ops ops = { on_config, on_shutdown, NULL };
    int err;

    worker_init(&argc, &argv, "qmgr");
    worker_set_ops(&ops);
    S.rcpt_free = QNIL;
    S.start_ms = qmgr_now_ms();
    S.start_wall = qmgr_wall();
    S.cfg = worker_config_hold();
    S.cfg_serial = 1;
    lock_queue();
    qlim_init(&S.lim_total, QLIM_GLOBAL, QLIM_LEASE, QLIM_CONNS, "total-max-smtp-out");
    qmgr_limit_set_value(&S.lim_total, cfg_global(S.cfg, CFG_D_TOTAL_MAX_SMTP_OUT), NULL);
    qlim_set_wake_hook(qmgr_dispatch_soon);
    qmgr_cluster_config(); /* before the first limiter is set: shared ones start shared */
    open_queue();
    qmgr_outcome_config();
    qmgr_rollup_start();
    qmgr_warmup_start();
    qmgr_sched_start();
    if ((err = qmgr_sched_rebuild()) < 0)
        msg_fatal("cannot rebuild the schedule: %s", qstore_strerror(err));
    qmgr_conn_listen();
    qmgr_ctl_listen();
    qmgr_http_start();
    return worker_run();
}
