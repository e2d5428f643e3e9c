/*
 * qmgr_ctl.c - the control socket: what pmtactl asks of the running scheduler
 *
 * RUNDIR/control is bound by pmtad (root only) and served here. A client
 * sends one JSON object per line and gets one JSON object per line back:
 *     {"cmd":"status"}                                  -> {"ok":true,"status":{...}}
 *     {"cmd":"show-queues","mode":"backoff","paused":true,"queue":"PATTERN",
 *      "maxitems":20,"sort":"rcpt"|"name","all":true}   -> {"ok":true,"total":N,"queues":[...]}
 *      (each queue with "limit": what holds it back now; "all" also lists a domain's
 *      empty queue whose mail joins a rollup or queue-to queue: "joins")
 *     {"cmd":"show-domains"|"show-vmtas","queue":"PATTERN","maxitems":20}
 *                                                       -> {"ok":true,"total":N,"domains"|"vmtas":
 *                                                           [{name,queues,recipients,connections,
 *                                                             backoff,paused,last_error}]}
 *     {"cmd":"set-queue-mode","queue":"PATTERN","mode":"normal"|"backoff"}
 *     {"cmd":"pause-queue"|"resume-queue","queue":"PATTERN"}
 *                                                       -> {"ok":true,"changed":N,"queues":[...]}
 *     {"cmd":"schedule","queue":"PATTERN"}              -> {"ok":true,"queues":N,"recipients":N}
 *     {"cmd":"delete","queue":"PATTERN","dsn":false}    -> {"ok":true,"queues":N,"recipients":N,
 *                                                           "inflight":N}
 *     {"cmd":"trace","queue":"PATTERN","data":false}   -> {"ok":true,...} then live lines
 *                                                          (qmgr_trace.c)
 *     list, show-jobs, pause-/resume-job and delete's recipient filters: qmgr_ctl_rcpt.c;
 *     reset-counters, disable-/enable-source, rotate-acct: qmgr_ctl_ops.c
 *     {"cmd":"warmup-clock","advance":"1d"}             -> {"ok":true,"day":N}
 *     {"cmd":"show-cluster","queue":"PATTERN"}          -> {"ok":true,"node","redis","state",
 *                                                           "nodes":[...],"queues":[...]}
 *      (qmgr_cluster_state.c: the nodes' heartbeats, each queue's shared mode and limits)
 *     (show-vmtas: a virtual MTA with a warm-up plan also has "warmup":[{plan, source,
 *      destination, step, day, cap, sent, deferrals, complaints}])
 * and {"ok":false,"error":"..."} for anything it cannot do. PATTERN is
 * domain[/vmta] with shell wildcards; without "/vmta" every virtual MTA of
 * the domain matches. doc/pmtactl.8 is the user-facing description.
 *
 * Owns: the listening watcher and the client connections (each with its
 * bounded input buffer). JSON is built and parsed with jansson only.
 * SECURITY: only root can connect (socket mode 0600, set by pmtad), and the
 * kernel's word on the caller (SO_PEERCRED) is checked again here, so a
 * node whose mode an operator loosened still refuses everyone else (with a
 * JSON error line). The input is still parsed defensively: a request line is at most
 * CTL_LINE_MAX bytes (checked on partial input too), must be a JSON object
 * with a string "cmd", and every argument is type-checked.
 */
#include "config.h"

#include <errno.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "buf.h"
#include "msg.h"
#include "qmgr.h"
#include "qmgr_backoff.h"
#include "qmgr_cluster.h"
#include "qmgr_ctl.h"
#include "qmgr_warmup.h"
#include "worker.h"
#include "xalloc.h"

#define CTL_LINE_MAX    65536u
#define CTL_CLIENTS_MAX 64u
#define CTL_BACKLOG_MAX (8u * 1024 * 1024) /* bytes written to a client it has not read yet */

struct ctl_client {
    uv_pipe_t pipe;
    struct buf in;
    struct ctl_client *next;
    int closing;
};

struct ctl_write {
    uv_write_t req;
    char *text;
};

static struct worker_listener *listener;
static struct ctl_client *clients;
static unsigned nclients;


/* --- replies ----------------------------------------------------------------------------- */

static json_t *
error_reply(const char *text)
{
    return json_pack("{s:b, s:s}", "ok", 0, "error", text);
}

/* qmgr_ctl_stamp - see qmgr_ctl.h */
const char *
qmgr_ctl_stamp(char out[32], uint64_t wall)
{
    time_t t = (time_t)wall;
    struct tm tm;

    gmtime_r(&t, &tm);
    strftime(out, 32, "%Y-%m-%d %H:%M:%S+0000", &tm);
    return out;
}

static json_t *
mode_events_json(const struct qqueue *q)
{
    json_t *list = json_array();
    char when[32];

    for (unsigned i = 0; i < q->nmode_events; i++) {
        /* oldest first: the ring's next slot is the oldest once it is full */
        unsigned at = (q->mode_event_next + QMGR_MODE_EVENTS - q->nmode_events + i) %
                      QMGR_MODE_EVENTS;
        const struct qmode_event *e = &q->mode_events[at];

        json_array_append_new(
            list, json_pack("{s:s, s:s, s:s, s:s}", "time", qmgr_ctl_stamp(when, e->wall), "from",
                            qmgr_mode_name(e->from), "to", qmgr_mode_name(e->to), "why", e->why));
    }
    return list;
}

/* members_json - the domains whose mail a rollup or queue-to queue holds */
static json_t *
members_json(const struct qqueue *q)
{
    json_t *list = json_array();

    for (uint32_t i = 0; i < q->nmembers; i++)
        json_array_append_new(list, json_string(q->members[i]->domain));
    return list;
}

/* qmgr_ctl_queue_json - see qmgr_ctl.h */
json_t *
qmgr_ctl_queue_json(struct qqueue *q)
{
    uint64_t now = qmgr_now_ms();
    uint64_t retry_in = q->retry_until_ms > now ? (q->retry_until_ms - now + 999) / 1000 : 0;
    const char *kind = qmgr_rollup_kind(q);
    char why[QLIM_BASIS_MAX + 160];
    json_t *j;

    j = json_pack("{s:s, s:s, s:s, s:s, s:b, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I,"
                  " s:s, s:o}",
                  "name", q->name, "domain", q->domain, "vmta", q->vmta, "mode",
                  qmgr_mode_name(q->mode), "paused", q->paused, "recipients",
                  (json_int_t)(q->nready + q->ndeferred + q->ninflight), "ready",
                  (json_int_t)q->nready, "deferred", (json_int_t)q->ndeferred, "inflight",
                  (json_int_t)q->ninflight, "connections", (json_int_t)q->nconn, "retry_in_s",
                  (json_int_t)retry_in, "delivered", (json_int_t)q->delivered, "bounced",
                  (json_int_t)q->bounced, "deferred_count", (json_int_t)q->deferred_n, "last_error",
                  q->last_error ? q->last_error : "", "mode_events", mode_events_json(q));
    if (kind) {
        json_object_set_new(j, "kind", json_string(kind));
        json_object_set_new(j, "domains", members_json(q));
    }
    if (q->dest)
        json_object_set_new(j, "joins", json_string(q->dest->name));
    if (q->adapt_on) /* adaptive concurrency: the connections it allows now */
        json_object_set_new(j, "concurrency_window", json_integer((json_int_t)q->adapt_window));
    /* what holds it back at this moment (qmgr_gate.c), "" when nothing */
    json_object_set_new(j, "limit", json_string(qmgr_gate_why(q, why, sizeof why)));
    return j;
}

/* qmgr_ctl_queue_listed - is Q worth a line? Not an empty domain queue whose mail goes elsewhere */
int
qmgr_ctl_queue_listed(const struct qqueue *q)
{
    return q->dest == NULL || q->nready + q->ndeferred + q->ninflight + q->nconn > 0;
}

/* --- commands ---------------------------------------------------------------------------- */

/* qmgr_ctl_status_json - see qmgr_ctl.h */
json_t *
qmgr_ctl_status_json(void)
{
    uint64_t ready = 0, deferred = 0, inflight = 0, delivered = 0, bounced = 0, deferrals = 0;
    unsigned backoff = 0, paused = 0, outs = 0;
    json_t *st;

    for (uint32_t i = 0; i < S.nqueues; i++) {
        const struct qqueue *q = S.queues[i];

        ready += q->nready, deferred += q->ndeferred, inflight += q->ninflight;
        delivered += q->delivered, bounced += q->bounced, deferrals += q->deferred_n;
        backoff += q->mode == QMODE_BACKOFF;
        paused += q->paused != 0;
    }
    for (const struct qpeer *p = S.peers; p; p = p->next)
        outs += p->kind == QPEER_OUT;
    st = json_pack(
        "{s:I, s:I, s:{s:I, s:I, s:I, s:I}, s:I, s:I, s:I, s:I, s:I, s:I,"
        " s:I, s:I, s:I}",
        "pid", (json_int_t)getpid(), "uptime_s", (json_int_t)((qmgr_now_ms() - S.start_ms) / 1000),
        "recipients", "queued", (json_int_t)S.nrcpt_live, "ready", (json_int_t)ready, "deferred",
        (json_int_t)deferred, "inflight", (json_int_t)inflight, "messages",
        (json_int_t)(S.nmsg_used - S.nmsg_free), "queues", (json_int_t)S.nqueues, "queues_backoff",
        (json_int_t)backoff, "queues_paused", (json_int_t)paused, "connections_out",
        (json_int_t)S.nconn_total, "smtp_out_processes", (json_int_t)outs, "delivered",
        (json_int_t)delivered, "bounced", (json_int_t)bounced, "deferred", (json_int_t)deferrals);
    json_object_set_new(st, "version", json_string(PACKAGE_VERSION));
    return st;
}

static json_t *
cmd_status(json_t *req)
{
    (void)req;
    return json_pack("{s:b, s:o}", "ok", 1, "status", qmgr_ctl_status_json());
}

static int
by_recipients(const void *a, const void *b)
{
    const struct qqueue *x = *(struct qqueue *const *)a, *y = *(struct qqueue *const *)b;
    uint64_t nx = x->nready + x->ndeferred + x->ninflight;
    uint64_t ny = y->nready + y->ndeferred + y->ninflight;

    return nx != ny ? (nx < ny ? 1 : -1) : strcmp(x->name, y->name);
}

static int
by_name(const void *a, const void *b)
{
    return strcmp((*(struct qqueue *const *)a)->name, (*(struct qqueue *const *)b)->name);
}

/* shown - does Q pass show-queues' filters? */
static int
shown(const struct qqueue *q, const char *pattern, int mode, int paused)
{
    return qmgr_ctl_queue_listed(q) && (!pattern || qmgr_queue_matches(q, pattern)) &&
           (mode < 0 || q->mode == mode) && (paused < 0 || (q->paused != 0) == paused);
}

/* optional_mode - "mode" of REQ: -1 absent, 0/1, -2 invalid */
static int
optional_mode(json_t *req)
{
    json_t *v = json_object_get(req, "mode");

    if (v == NULL)
        return -1;
    if (!json_is_string(v))
        return -2;
    for (int m = 0; m < 2; m++)
        if (strcmp(json_string_value(v), qmgr_mode_name(m)) == 0)
            return m;
    return -2;
}

static json_t *
cmd_show_queues(json_t *req)
{
    json_t *pat = json_object_get(req, "queue"), *pz = json_object_get(req, "paused");
    json_t *mi = json_object_get(req, "maxitems"), *so = json_object_get(req, "sort");
    json_t *all = json_object_get(req, "all");
    int mode = optional_mode(req), paused = pz ? json_is_true(pz) : -1;
    json_int_t max = mi ? json_integer_value(mi) : 20;
    const char *pattern = pat ? json_string_value(pat) : NULL,
               *sort = so ? json_string_value(so) : "rcpt";
    struct qqueue **hits = xreallocarray(NULL, S.nqueues + 1, sizeof *hits);
    json_t *list = json_array();
    uint32_t n = 0;

    if (mode == -2 || (pat && !pattern) || (pz && !json_is_boolean(pz)) ||
        (all && !json_is_boolean(all)) || (mi && !json_is_integer(mi)) || max < 0 || !sort ||
        (strcmp(sort, "rcpt") != 0 && strcmp(sort, "name") != 0)) {
        free(hits);
        json_decref(list);
        return error_reply("show-queues: bad argument (mode normal|backoff, paused true|false, "
                           "maxitems >= 0, sort rcpt|name, queue PATTERN)");
    }
    for (uint32_t i = 0; i < S.nqueues; i++)
        if (shown(S.queues[i], pattern, mode, paused) ||
            (json_is_true(all) && (!pattern || qmgr_queue_matches(S.queues[i], pattern))))
            hits[n++] = S.queues[i];
    qsort(hits, n, sizeof *hits, strcmp(sort, "name") == 0 ? by_name : by_recipients);
    for (uint32_t i = 0; i < n && (max == 0 || i < (uint32_t)max); i++)
        json_array_append_new(list, qmgr_ctl_queue_json(hits[i]));
    free(hits);
    return json_pack("{s:b, s:I, s:o}", "ok", 1, "total", (json_int_t)n, "queues", list);
}

/* --- show domains / show vmtas: queues summed by domain or by virtual MTA ---------------- */

static int by_vmta_key;

static const char *
group_key(const struct qqueue *q)
{
    return by_vmta_key ? q->vmta : q->domain;
}

static int
by_group(const void *a, const void *b)
{
    return strcmp(group_key(*(struct qqueue *const *)a), group_key(*(struct qqueue *const *)b));
}

static int
by_group_recipients(const void *a, const void *b)
{
    json_int_t x = json_integer_value(json_object_get(*(json_t *const *)a, "recipients"));
    json_int_t y = json_integer_value(json_object_get(*(json_t *const *)b, "recipients"));

    return x != y ? (x < y ? 1 : -1)
                  : strcmp(json_string_value(json_object_get(*(json_t *const *)a, "name")),
                           json_string_value(json_object_get(*(json_t *const *)b, "name")));
}

/* group_json - the sums over QS[0..N) (one domain or one virtual MTA) */
static json_t *
group_json(struct qqueue **qs, uint32_t n)
{
    uint64_t rcpts = 0, conns = 0, backoff = 0, paused = 0;
    const char *last_error = "";
    json_t *j, *warm = NULL;

    for (uint32_t i = 0; i < n; i++) {
        rcpts += qs[i]->nready + qs[i]->ndeferred + qs[i]->ninflight;
        conns += qs[i]->nconn;
        backoff += qs[i]->mode == QMODE_BACKOFF;
        paused += qs[i]->paused != 0;
        if (qs[i]->last_error && *qs[i]->last_error)
            last_error = qs[i]->last_error;
    }
    j = json_pack("{s:s, s:I, s:I, s:I, s:I, s:I, s:s}", "name", group_key(qs[0]), "queues",
                  (json_int_t)n, "recipients", (json_int_t)rcpts, "connections", (json_int_t)conns,
                  "backoff", (json_int_t)backoff, "paused", (json_int_t)paused, "last_error",
                  last_error);
    if (by_vmta_key && json_array_size(warm = qmgr_warmup_json(qs[0]->vmta)) > 0)
        json_object_set_new(j, "warmup", warm); /* each source address's step, cap and count */
    else if (by_vmta_key)
        json_decref(warm);
    return j;
}

/* cmd_show_groups - show-domains (BY_VMTA 0) or show-vmtas: most recipients first */
static json_t *
cmd_show_groups(json_t *req, int by_vmta)
{
    json_t *pat = json_object_get(req, "queue"), *mi = json_object_get(req, "maxitems");
    const char *pattern = pat ? json_string_value(pat) : NULL;
    json_int_t max = mi ? json_integer_value(mi) : 20;
    struct qqueue **qs = xreallocarray(NULL, S.nqueues + 1, sizeof *qs);
    json_t *groups = json_array(), *list = json_array(), *g;
    uint32_t n = 0;
    size_t i;

    if ((pat && !pattern) || (mi && !json_is_integer(mi)) || max < 0) {
        free(qs);
        json_decref(groups);
        json_decref(list);
        return error_reply("show-domains/show-vmtas: bad argument (maxitems >= 0, queue PATTERN)");
    }
    for (uint32_t k = 0; k < S.nqueues; k++)
        if (qmgr_ctl_queue_listed(S.queues[k]) &&
            (!pattern || qmgr_queue_matches(S.queues[k], pattern)))
            qs[n++] = S.queues[k];
    by_vmta_key = by_vmta;
    qsort(qs, n, sizeof *qs, by_group);
    for (uint32_t start = 0, end; start < n; start = end) {
        for (end = start + 1; end < n && strcmp(group_key(qs[end]), group_key(qs[start])) == 0;)
            end++;
        json_array_append_new(groups, group_json(qs + start, end - start));
    }
    free(qs);
    /* jansson has no sort: order a C array of the group objects, then fill the reply */
    {
        size_t ng = json_array_size(groups);
        json_t **arr = xreallocarray(NULL, ng + 1, sizeof *arr);

        json_array_foreach(groups, i, g) arr[i] = g;
        qsort(arr, ng, sizeof *arr, by_group_recipients);
        for (i = 0; i < ng && (max == 0 || i < (size_t)max); i++)
            json_array_append(list, arr[i]);
        free(arr);
    }
    g = json_pack("{s:b, s:I, s:o}", "ok", 1, "total", (json_int_t)json_array_size(groups),
                  by_vmta ? "vmtas" : "domains", list);
    json_decref(groups);
    return g;
}

/* required_pattern - the "queue" argument, or NULL */
static const char *
required_pattern(json_t *req)
{
    const char *p = json_string_value(json_object_get(req, "queue"));

    return p && *p && strlen(p) < 512 ? p : NULL;
}

typedef int (*queue_action)(struct qqueue *q, int arg);

static int
set_mode(struct qqueue *q, int mode)
{
    if (q->mode == mode)
        return 0;
    qmgr_backoff_set_mode(q, mode,
                          mode == QMODE_BACKOFF ? "pmtactl set queue --mode=backoff"
                                                : "pmtactl set queue --mode=normal",
                          -1);
    return 1;
}

static int
set_paused(struct qqueue *q, int paused)
{
    if ((q->paused != 0) == paused)
        return 0;
    q->paused = paused;
    msg_info("queue %s %s by pmtactl", q->name, paused ? "paused" : "resumed");
    qmgr_run_update(q);
    if (paused)
        qmgr_conn_feed_idle(q); /* idle connections close instead of resting */
    else
        qmgr_dispatch_soon();
    return 1;
}

/* for_matching - ACT(q, ARG) on every queue PATTERN matches; the reply lists the changed ones */
static json_t *
for_matching(const char *pattern, queue_action act, int arg)
{
    json_t *names = json_array();
    uint32_t matched = 0, changed = 0;

    for (uint32_t i = 0; i < S.nqueues; i++) {
        if (!qmgr_queue_matches(S.queues[i], pattern))
            continue;
        matched++;
        if (act(S.queues[i], arg)) {
            changed++;
            json_array_append_new(names, json_string(S.queues[i]->name));
        }
    }
    if (matched == 0) {
        json_decref(names);
        return error_reply("no queue matches that pattern");
    }
    return json_pack("{s:b, s:I, s:I, s:o}", "ok", 1, "matched", (json_int_t)matched, "changed",
                     (json_int_t)changed, "queues", names);
}

static json_t *
cmd_set_queue_mode(json_t *req)
{
    const char *pattern = required_pattern(req);
    int mode = optional_mode(req);

    if (!pattern || mode < 0)
        return error_reply("set-queue-mode needs \"queue\" (domain[/vmta]) and \"mode\" "
                           "(normal or backoff)");
    return for_matching(pattern, set_mode, mode);
}

static json_t *
cmd_pause(json_t *req, int paused)
{
    const char *pattern = required_pattern(req);

    if (!pattern)
        return error_reply("pause-queue/resume-queue need \"queue\" (domain[/vmta])");
    return for_matching(pattern, set_paused, paused);
}

static json_t *
cmd_schedule(json_t *req)
{
    const char *pattern = required_pattern(req);
    uint32_t nq = 0, nr = 0, now = qmgr_tick_now();

    if (!pattern)
        return error_reply("schedule needs \"queue\" (domain[/vmta])");
    for (uint32_t i = 0; i < S.nqueues; i++) {
        struct qqueue *q = S.queues[i];

        if (!qmgr_queue_matches(q, pattern))
            continue;
        nq++;
        q->retry_until_ms = 0;
        q->fail_count = 0;
        q->feed_held = 0;
        nr += qmgr_defer_due_now(q, now, 0);
        qmgr_run_update(q);
    }
    if (nq == 0)
        return error_reply("no queue matches that pattern");
    msg_info("pmtactl schedule %s: %u queue(s), %u deferred recipient(s) due now", pattern, nq, nr);
    qmgr_defer_timer_update();
    qmgr_dispatch_soon();
    return json_pack("{s:b, s:I, s:I}", "ok", 1, "queues", (json_int_t)nq, "recipients",
                     (json_int_t)nr);
}

/* cmd_warmup_clock - {"advance":"1d"}: the warm-up clock moves ahead (tests skip days) */
static json_t *
cmd_warmup_clock(json_t *req)
{
    const char *text = json_string_value(json_object_get(req, "advance"));
    int64_t s;

    if (text && *text == '+')
        text++;
    if (!text || cfg_parse_interval(text, &s) != 0 || s <= 0)
        return error_reply("warmup-clock needs \"advance\": an interval such as 1d or 3600s");
    return json_pack("{s:b, s:I}", "ok", 1, "day", (json_int_t)qmgr_warmup_advance(s));
}

/* cmd_show_cluster - the nodes and, with "queue", the shared state of the matching queues */
static json_t *
cmd_show_cluster(json_t *req)
{
    json_t *q = json_object_get(req, "queue");
    json_t *reply;

    if (q && !json_is_string(q))
        return error_reply("show-cluster: \"queue\" must be a string (domain[/vmta])");
    if (!qmgr_cluster_on())
        return error_reply("no <cluster> in the configuration: this node shares nothing");
    reply = qmgr_cluster_json(q ? json_string_value(q) : NULL);
    json_object_set_new(reply, "ok", json_true());
    return reply;
}

/* qmgr_ctl_dispatch - see qmgr_ctl.h */
json_t *
qmgr_ctl_dispatch(json_t *req)
{
    const char *cmd = json_string_value(json_object_get(req, "cmd"));
    json_t *reply;

    if (cmd == NULL)
        return error_reply("request needs a string \"cmd\"");
    if (strcmp(cmd, "status") == 0)
        return cmd_status(req);
    if (strcmp(cmd, "show-queues") == 0)
        return cmd_show_queues(req);
    if (strcmp(cmd, "show-domains") == 0 || strcmp(cmd, "show-vmtas") == 0)
        return cmd_show_groups(req, cmd[5] == 'v');
    if (strcmp(cmd, "set-queue-mode") == 0)
        return cmd_set_queue_mode(req);
    if (strcmp(cmd, "pause-queue") == 0 || strcmp(cmd, "resume-queue") == 0)
        return cmd_pause(req, cmd[0] == 'p');
    if (strcmp(cmd, "schedule") == 0)
        return cmd_schedule(req);
    if (strcmp(cmd, "delete") == 0)
        return qmgr_ctl_delete(req);
    if (strcmp(cmd, "warmup-clock") == 0)
        return cmd_warmup_clock(req);
    if (strcmp(cmd, "show-cluster") == 0)
        return cmd_show_cluster(req);
    if ((reply = qmgr_ctl_rcpt_dispatch(cmd, req)) != NULL ||
        (reply = qmgr_ctl_ops_dispatch(cmd, req)) != NULL)
        return reply;
    if (strcmp(cmd, "trace") == 0)
        return error_reply("trace streams its lines: only on the control socket");
    return error_reply("unknown command (status, show-queues, show-domains, show-vmtas, "
                       "set-queue-mode, pause-queue, resume-queue, schedule, delete, list, "
                       "show-jobs, pause-job, resume-job, trace, reset-counters, "
                       "disable-source, enable-source, rotate-acct, warmup-clock, show-cluster)");
}

/* --- clients ----------------------------------------------------------------------------- */

static void
on_client_closed(uv_handle_t *h)
{
    struct ctl_client *c = h->data;

    buf_free(&c->in);
    free(c);
}

static void
client_close(struct ctl_client *c)
{
    struct ctl_client **pp;

    if (c->closing)
        return;
    c->closing = 1;
    for (pp = &clients; *pp && *pp != c; pp = &(*pp)->next)
        ;
    if (*pp)
        *pp = c->next;
    nclients--;
    qmgr_trace_client_gone(c);
    uv_close((uv_handle_t *)&c->pipe, on_client_closed);
}

static void
on_written(uv_write_t *req, int status)
{
    struct ctl_write *w = (struct ctl_write *)req;

    (void)status;
    free(w->text);
    free(w);
}

/* send_reply - REPLY (consumed) as one line */
static void
send_reply(struct ctl_client *c, json_t *reply)
{
    struct ctl_write *w = xcalloc(1, sizeof *w);
    char *text = json_dumps(reply, JSON_COMPACT);
    size_t len = text ? strlen(text) : 0;
    uv_buf_t b;

    json_decref(reply);
    if (text == NULL)
        msg_fatal("out of memory for a control reply");
    w->text = xrealloc(text, len + 2);
    w->text[len] = '\n';
    w->text[len + 1] = '\0';
    b = uv_buf_init(w->text, (unsigned)len + 1);
    if (uv_write(&w->req, (uv_stream_t *)&c->pipe, &b, 1, on_written) < 0) {
        free(w->text);
        free(w);
        client_close(c);
    }
}

/* qmgr_ctl_client_send - see qmgr_ctl.h */
void
qmgr_ctl_client_send(struct ctl_client *c, json_t *reply)
{
    if (c->closing) {
        json_decref(reply);
        return;
    }
    if (uv_stream_get_write_queue_size((uv_stream_t *)&c->pipe) > CTL_BACKLOG_MAX) {
        /* a client that does not read its trace: qmgr's memory is not its buffer */
        msg_warn("control socket: a client left %u bytes unread; closing it", CTL_BACKLOG_MAX);
        json_decref(reply);
        client_close(c);
        return;
    }
    send_reply(c, reply);
}

/* serve_line - one request of LEN bytes at LINE */
static void
serve_line(struct ctl_client *c, const char *line, size_t len)
{
    json_error_t err;
    json_t *req = json_loadb(line, len, JSON_REJECT_DUPLICATES, &err);

    if (req == NULL || !json_is_object(req)) {
        json_decref(req);
        send_reply(c, error_reply("request is not a JSON object"));
        return;
    }
    if (json_is_string(json_object_get(req, "cmd")) &&
        strcmp(json_string_value(json_object_get(req, "cmd")), "trace") == 0)
        send_reply(c, qmgr_trace_request(c, req)); /* the lines follow as the attempt runs */
    else
        send_reply(c, qmgr_ctl_dispatch(req));
    json_decref(req);
}

static void
on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *b)
{
    static char chunk[16384];

    (void)h;
    (void)suggested;
    *b = uv_buf_init(chunk, sizeof chunk);
}

static void
on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
    struct ctl_client *c = s->data;
    char *nl;

    if (n < 0) {
        client_close(c);
        return;
    }
    if (buf_append(&c->in, b->base, (size_t)n) < 0 || c->in.len > CTL_LINE_MAX + 1) {
        send_reply(c, error_reply("request line too long"));
        client_close(c);
        return;
    }
    while (!c->closing && (nl = memchr(c->in.data, '\n', c->in.len)) != NULL) {
        size_t len = (size_t)(nl - c->in.data);

        serve_line(c, c->in.data, len);
        buf_consume(&c->in, len + 1);
    }
    if (c->in.len > CTL_LINE_MAX) {
        send_reply(c, error_reply("request line too long"));
        client_close(c);
    }
}

/* peer_allowed - root; or pmtad's own user when pmtad did not start as root */
static bool
peer_allowed(int fd, uid_t *uid)
{
    struct ucred cred;
    socklen_t len = sizeof(cred);

    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0)
        return false;
    *uid = cred.uid;
    return cred.uid == 0 || (!worker_privileges_dropped() && cred.uid == geteuid());
}

/* refuse_peer - one error line (best effort), then close */
static void
refuse_peer(int fd, uid_t uid)
{
    char line[160];
    int n = snprintf(line, sizeof(line),
                     "{\"ok\":false,\"error\":\"permission denied: the control socket is for "
                     "root (uid %u)\"}\n",
                     (unsigned)uid);
    ssize_t w = write(fd, line, (size_t)n);

    (void)w;
    close(fd);
    msg_warn("control socket: refused uid %u (only root may control pmtad)", (unsigned)uid);
}

static void
accept_client(int fd)
{
    struct ctl_client *c;
    uid_t uid = (uid_t)-1;

    if (!peer_allowed(fd, &uid)) {
        refuse_peer(fd, uid);
        return;
    }
    if (nclients >= CTL_CLIENTS_MAX) {
        close(fd);
        msg_warn("control socket: %u clients already; refusing another", CTL_CLIENTS_MAX);
        return;
    }
    c = xcalloc(1, sizeof *c);
    buf_init(&c->in, CTL_LINE_MAX + 16384);
    if (uv_pipe_init(worker_loop(), &c->pipe, 0) < 0 || uv_pipe_open(&c->pipe, fd) < 0) {
        close(fd);
        buf_free(&c->in);
        free(c);
        return;
    }
    c->pipe.data = c;
    c->next = clients;
    clients = c;
    nclients++;
    uv_read_start((uv_stream_t *)&c->pipe, on_alloc, on_read);
}

/* qmgr_ctl_listen - serve RUNDIR/control if pmtad gave us the socket */
void
qmgr_ctl_listen(void)
{
    int err = worker_listen("control", accept_client, &listener);

    if (err == -ENOENT)
        msg_warn("pmtad gave us no control socket; pmtactl will not work");
    else if (err < 0)
        msg_fatal("cannot watch the control socket: %s", uv_strerror(err));
}

/* qmgr_ctl_stop - stop listening and drop every client (shutdown) */
void
qmgr_ctl_stop(void)
{
    worker_listen_stop(listener);
    listener = NULL;
    while (clients)
        client_close(clients);
}
