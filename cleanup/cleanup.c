/*
 * cleanup.c - the cleanup worker: header work, DKIM signing and the durable
 * commit of every message smtpd accepts, before smtpd may say 250
 *
 * This file: main(), the process state, configuration (re)loads, the queue
 * store and its group committer, a stats line, and the shutdown sequence:
 *
 *   1. stop accepting smtpd connections; keep serving the open ones for the
 *      drain time pmtad grants (smtpd is draining too and needs our answers);
 *   2. then forget transactions that have not ended (nothing of them is
 *      stored), let the messages being signed finish their signatures and
 *      reach the group committer, close it: every pending commit finishes
 *      and is answered;
 *   3. close the connections once those answers are written, the qmgr hint
 *      channel, the queue, and stop.
 *
 * Owns: struct cleanup_state (the OpenDKIM handle, the current
 * cleanup_conf, the qstore and its group), the stats and drain timers.
 *
 * DKIM and several recipient domains: a message is signed once. Each
 * distinct recipient domain's queue settings are resolved (domain/vmta);
 * when any says dkim-sign yes, the message is signed with the key settings of
 * the FIRST such domain (in recipient order), and every recipient gets that
 * same signed copy. Details in cleanup_commit.c.
 *
 * SECURITY: private keys are loaded here (through the key cache at each
 * configuration load, so a bad key is logged at once) and never logged.
 * The queue is opened after pmtad dropped our privileges, so its files
 * belong to the worker user.
 */
#include "config.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cleanup.h"
#include "msg.h"
#include "worker.h"
#include "xalloc.h"

#define STATS_INTERVAL_MS 1000

struct cleanup_state cleanup;

static uv_timer_t stats_timer;
static uv_timer_t drain_timer;
static int finishing;
static uint64_t last_logged_msgs;

/* --- the queue ------------------------------------------------------------- */

/* open_queue - SPOOL/queue with the map size and sync mode of CFG; fatal on failure */
static void
open_queue(const struct cfg *cfg)
{
    char *dir;
    int err;

    if ((err = qstore_open_spool(&cleanup.qs, cfg, worker_spool(), 0, &dir)) < 0)
        msg_fatal("cannot open the queue %s: %s", dir, qstore_strerror(err));
    if ((err = qstore_group_new(&cleanup.group, worker_loop(), cleanup.qs, NULL)) < 0)
        msg_fatal("cannot start the group committer: %s", uv_strerror(err));
    msg_info("queue %s open", dir);
    free(dir);
    cleanup_space_start();
}

/* log_stats - one line when messages were stored since the last one */
static void
log_stats(int force)
{
    struct qstore_group_stats st;
    struct cleanup_dkim_stats ds;

    if (cleanup.group == NULL)
        return;
    qstore_group_stats(cleanup.group, &st);
    if (!force && st.msgs == last_logged_msgs)
        return;
    last_logged_msgs = st.msgs;
    cleanup_dkim_stats(cleanup.dk, &ds);
    msg_info("stats: messages=%" PRIu64 " commits=%" PRIu64 " max_batch=%" PRIu64 " failed=%" PRIu64
             " refused=%" PRIu64 " commit_ms_avg=%.2f dkim_signatures=%" PRIu64
             " dkim_key_reuses=%" PRIu64,
             st.msgs, st.commits, st.max_batch, st.failed, cleanup.refused,
             st.commits ? st.commit_ms / (double)st.commits : 0.0, ds.signatures, ds.key_reuses);
}

static void
on_stats_timer(uv_timer_t *t)
{
    log_stats(0);
}

/* --- configuration ---------------------------------------------------------- */

/* on_config - a new generation is current: new transactions use it */
static void
on_config(const struct cfg *cfg, void *ctx)
{
    struct cleanup_conf *old = cleanup.conf;

    cleanup.conf = cleanup_conf_new(cfg);
    if (old)
        cleanup_conf_unref(old);
    if (cfg_global(cfg, CFG_D_QUEUE_MAP_SIZE) && cleanup.qs)
        msg_debug("queue-map-size and sync-msg-create changes take effect at restart");
}

/* --- shutdown ------------------------------------------------------------------ */

static void
all_closed(void)
{
    cleanup_notify_close();
    cleanup_space_stop();
    qstore_close(cleanup.qs);
    cleanup.qs = NULL;
    cleanup_conf_unref(cleanup.conf);
    cleanup.conf = NULL;
    cleanup_dkim_free(cleanup.dk);
    cleanup.dk = NULL;
    uv_close((uv_handle_t *)&stats_timer, NULL);
    uv_close((uv_handle_t *)&drain_timer, NULL);
    worker_stop(0);
}

/* group_closed - every commit is done and answered: close the connections */
static void
group_closed(void *arg)
{
    cleanup.group = NULL;
    cleanup_server_close_all(all_closed);
}

/* signing_done - no message is being signed any more: close the group committer */
static void
signing_done(void)
{
    log_stats(1);
    qstore_group_close(cleanup.group, group_closed, NULL);
}

/* finish - step 2 of the shutdown (see the file header) */
static void
finish(void)
{
    if (finishing)
        return;
    finishing = 1;
    uv_timer_stop(&drain_timer);
    cleanup_server_drop_unfinished();
    cleanup_commit_quiesce(signing_done);
}

void
cleanup_check_finished(void)
{
    if (cleanup.stopping && cleanup_server_idle())
        finish();
}

static void
on_drain_timer(uv_timer_t *t)
{
    msg_info("drain time over; dropping unfinished transactions");
    finish();
}

/* on_shutdown - stop accepting, serve open connections for the drain time */
static void
on_shutdown(unsigned drain_seconds, void *ctx)
{
    if (cleanup.stopping)
        return;
    cleanup.stopping = 1;
    cleanup_server_stop_accepting();
    if (drain_seconds == 0 || cleanup_server_idle()) {
        finish();
        return;
    }
    /* leave smtpd a second of pmtad's drain time to pass our last answers on */
    uv_timer_start(&drain_timer, on_drain_timer,
                   drain_seconds > 1 ? (uint64_t)(drain_seconds - 1) * 1000 : 500, 0);
}

/* --- start ---------------------------------------------------------------------- */

static void
start(void)
{
    static const struct worker_ops ops = { on_config, on_shutdown, NULL };
    char err[CLEANUP_ERRLEN];

    if ((cleanup.dk = cleanup_dkim_create(err, sizeof(err))) == NULL)
        msg_fatal("cannot initialise DKIM: %s", err);
    cleanup.conf = cleanup_conf_new(worker_config());
    open_queue(worker_config());
    worker_set_ops(&ops);
    uv_timer_init(worker_loop(), &stats_timer);
    uv_timer_start(&stats_timer, on_stats_timer, STATS_INTERVAL_MS, STATS_INTERVAL_MS);
    uv_unref((uv_handle_t *)&stats_timer);
    uv_timer_init(worker_loop(), &drain_timer);
    cleanup_server_start();
}

/* size_thread_pool - one libuv pool thread per core for signing plus one for the group
 * committer (at least libuv's 4); an operator's UV_THREADPOOL_SIZE stands */
static void
size_thread_pool(void)
{
    char n[16];
    unsigned want = uv_available_parallelism() + 1;

    snprintf(n, sizeof n, "%u", want < 4 ? 4 : want > 64 ? 64 : want);
    setenv("UV_THREADPOOL_SIZE", n, 0);
}

int
main(int argc, char **argv)
{
    size_thread_pool(); /* before anything starts the pool */
    worker_init(&argc, &argv, "cleanup");
    start();
    return worker_run();
}
