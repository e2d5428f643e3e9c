/*
 * qstore-bench.c - micro benchmark of the queue store (not part of the build)
 *
 * Measures what the queue's design promises: grouped commits (messages per
 * sync, commits/s, messages/s) against one-message-per-commit,
 * and the start-up scan qmgr does (ms to iterate N queued recipients).
 * Owns nothing but a scratch directory under /tmp, removed at the end.
 *
 * Build from the source tree after `make runtime/libpmtaruntime.a util/libpmtautil.a`:
 *   cc -std=c11 -D_GNU_SOURCE -O2 -I. -Iutil -Iconf -Iruntime -o /tmp/qstore-bench \
 *      bench/qstore-bench.c runtime/libpmtaruntime.a util/libpmtautil.a -llmdb -luv
 * Run: /tmp/qstore-bench [-n MESSAGES] [-c CONCURRENCY] [-s BODY_BYTES] [-r RCPTS]
 *                        [-R SCAN_RECIPIENTS] [-N (nosync)]
 */
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <uv.h>

#include "buf.h"
#include "qstore.h"
#include "qstore_group.h"
#include "xalloc.h"

struct run {
    uv_loop_t loop;
    struct qstore_group *g;
    unsigned total, submitted, done, inflight, conc, nrcpt;
    size_t body;
};

static struct qstore_newmsg *
bench_msg(unsigned nrcpt, size_t body_len)
{
    struct qstore_envelope e = { .sender = "bench@example.org", .vmta = "pool" };
    struct qstore_rcpt *r = xcalloc(nrcpt, sizeof *r);
    struct qstore_newmsg *nm;
    struct buf body;

    for (unsigned i = 0; i < nrcpt; i++) {
        r[i].address = "someone@example.com";
        r[i].domain = "example.com";
        r[i].queue = "example.com/pool";
    }
    buf_init(&body, 0);
    buf_reserve(&body, body_len);
    memset(body.data, 'x', body_len);
    body.len = body_len;
    if (qstore_newmsg_create(&nm, &e, r, nrcpt, &body) != 0)
        abort();
    buf_free(&body);
    free(r);
    return nm;
}

static void submit_more(struct run *r);

static void
on_ack(void *arg, int status, uint64_t msgid)
{
    struct run *r = arg;

    (void)msgid;
    r->done++;
    if (status != 0) {
        fprintf(stderr, "commit failed: %s\n", qstore_strerror(status));
        exit(1);
    }
    r->inflight--;
    submit_more(r);
}

static void
submit_more(struct run *r)
{
    while (r->inflight < r->conc && r->submitted < r->total) {
        qstore_group_submit(r->g, bench_msg(r->nrcpt, r->body), on_ack, r);
        r->submitted++;
        r->inflight++;
    }
}

static void
closed(void *arg)
{
    (void)arg;
}

/* run_group - N messages with C outstanding through a group of MAX_BATCH */
static void
run_group(const char *dir, unsigned n, unsigned c, unsigned nrcpt, size_t body, unsigned max_batch,
          unsigned flags, const char *label)
{
    struct qstore_opts o = { .map_size = (size_t)8 << 30, .flags = flags };
    struct qstore_group_opts go = { .max_batch = max_batch };
    struct qstore_group_stats st;
    struct qstore *qs;
    struct run r = { .total = n, .conc = c, .nrcpt = nrcpt, .body = body };
    uint64_t t0;
    double secs;

    if (qstore_open(&qs, dir, &o) != 0)
        abort();
    uv_loop_init(&r.loop);
    qstore_group_new(&r.g, &r.loop, qs, &go);
    t0 = uv_hrtime();
    submit_more(&r);
    uv_run(&r.loop, UV_RUN_DEFAULT);
    secs = (double)(uv_hrtime() - t0) / 1e9;
    qstore_group_stats(r.g, &st);
    qstore_group_close(r.g, closed, NULL);
    uv_run(&r.loop, UV_RUN_DEFAULT);
    uv_loop_close(&r.loop);
    printf("%-22s %6u msgs  %8.0f msgs/s  %6" PRIu64 " commits  %7.1f commits/s  "
           "%6.1f msgs/sync  %.2f ms/commit\n",
           label, n, n / secs, st.commits, (double)st.commits / secs,
           st.commits ? (double)st.msgs / (double)st.commits : 0,
           st.commits ? st.commit_ms / (double)st.commits : 0);
    qstore_close(qs);
}

/* ---- scan -------------------------------------------------------------------- */

/* What a qmgr might keep per recipient: 24 bytes plus an interned queue id. */
struct sched_rec {
    uint64_t msgid;
    uint32_t index;
    uint32_t queue;
    uint64_t next_attempt;
};

struct scan_ctx {
    struct sched_rec *recs;
    size_t n, cap;
    char **queues;
    unsigned nqueues;
};

static uint32_t
intern(struct scan_ctx *c, const char *q, size_t len)
{
    for (unsigned i = 0; i < c->nqueues; i++) /* a handful of queues here */
        if (strncmp(c->queues[i], q, len) == 0 && c->queues[i][len] == '\0')
            return i;
    c->queues = xreallocarray(c->queues, c->nqueues + 1, sizeof *c->queues);
    c->queues[c->nqueues] = xstrndup(q, len);
    return c->nqueues++;
}

static int
scan_cb(const struct qstore_sched *s, void *arg)
{
    struct scan_ctx *c = arg;

    if (c->n == c->cap) {
        c->cap = c->cap ? c->cap * 2 : 1024;
        c->recs = xreallocarray(c->recs, c->cap, sizeof *c->recs);
    }
    c->recs[c->n++] = (struct sched_rec){ s->msgid, s->index, intern(c, s->queue, s->queue_len),
                                          s->next_attempt };
    return 0;
}

static void
run_scan(const char *dir, unsigned nrcpt_total)
{
    struct qstore_opts o = { .map_size = (size_t)8 << 30, .flags = QSTORE_NOSYNC };
    struct scan_ctx c = { 0 };
    struct qstore_scan_stats st;
    struct qstore *qs;
    unsigned per_msg = 10, msgs = nrcpt_total / per_msg;
    uint64_t t0, id;
    double fill_ms, scan_ms;

    if (qstore_open(&qs, dir, &o) != 0)
        abort();
    t0 = uv_hrtime();
    for (unsigned m = 0; m < msgs;) {
        struct qstore_wtxn *w;

        if (qstore_wtxn_begin(qs, &w) != 0)
            abort();
        for (unsigned k = 0; k < 1000 && m < msgs; k++, m++) {
            struct qstore_newmsg *nm = bench_msg(per_msg, 2000);

            if (qstore_wtxn_put(w, nm, &id) != 0)
                abort();
            qstore_newmsg_free(nm);
        }
        if (qstore_wtxn_commit(w) != 0)
            abort();
    }
    fill_ms = (double)(uv_hrtime() - t0) / 1e6;
    qstore_close(qs);
    /* a fresh open, as qmgr does at start */
    if (qstore_open(&qs, dir, &o) != 0)
        abort();
    t0 = uv_hrtime();
    qstore_scan(qs, scan_cb, &c, &st);
    scan_ms = (double)(uv_hrtime() - t0) / 1e6;
    printf("scan: %" PRIu64 " recipients in %.1f ms (%.0f ns each), %zu bytes/rcpt in the "
           "compact table; fill took %.0f ms\n",
           st.seen, scan_ms, scan_ms * 1e6 / (double)st.seen, sizeof(struct sched_rec), fill_ms);
    for (unsigned i = 0; i < c.nqueues; i++)
        free(c.queues[i]);
    free(c.queues);
    free(c.recs);
    qstore_close(qs);
}

static void
cleanup_dir(const char *root, const char *env)
{
    char p[256];

    snprintf(p, sizeof p, "%s/data.mdb", env);
    unlink(p);
    snprintf(p, sizeof p, "%s/lock.mdb", env);
    unlink(p);
    rmdir(env);
    rmdir(root);
}

int
main(int argc, char **argv)
{
    unsigned n = 5000, c = 64, nrcpt = 2, scan_n = 1000000, flags = 0;
    size_t body = 4000;
    char root[] = "/tmp/qstore-bench-XXXXXX", env[64];
    int ch;

    while ((ch = getopt(argc, argv, "n:c:s:r:R:N")) != -1) {
        switch (ch) {
        case 'n':
            n = (unsigned)atoi(optarg);
            break;
        case 'c':
            c = (unsigned)atoi(optarg);
            break;
        case 's':
            body = (size_t)atol(optarg);
            break;
        case 'r':
            nrcpt = (unsigned)atoi(optarg);
            break;
        case 'R':
            scan_n = (unsigned)atoi(optarg);
            break;
        case 'N':
            flags |= QSTORE_NOSYNC;
            break;
        default:
            fprintf(stderr, "usage: %s [-n msgs] [-c conc] [-s body] [-r rcpts] [-R scan] [-N]\n",
                    argv[0]);
            return 2;
        }
    }
    if (mkdtemp(root) == NULL)
        return 1;
    printf("qstore-bench: %u msgs of %zu bytes, %u rcpts, %u outstanding, sync %s\n", n, body,
           nrcpt, c, flags & QSTORE_NOSYNC ? "off" : "on");
    snprintf(env, sizeof env, "%s/g", root);
    run_group(env, n, c, nrcpt, body, 0, flags, "grouped (default)");
    cleanup_dir(root, env);
    mkdir(root, 0700);
    snprintf(env, sizeof env, "%s/s", root);
    run_group(env, n / 10 ? n / 10 : 1, c, nrcpt, body, 1, flags, "one per commit");
    cleanup_dir(root, env);
    if (scan_n) {
        mkdir(root, 0700);
        snprintf(env, sizeof env, "%s/r", root);
        run_scan(env, scan_n);
        cleanup_dir(root, env);
    }
    return 0;
}
