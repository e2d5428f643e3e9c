/*
 * qmgr_ctl_rcpt.c - control commands that look at single recipients:
 *
 *     {"cmd":"list", FILTER, "maxitems":100}
 *         -> {"ok":true,"total":N,"recipients":[{queue,rcpt,orig,jobId,envId,msgid,
 *             state,attempts,queued,next_attempt,last_error}]}
 *     {"cmd":"delete", FILTER, "dsn":false}
 *         -> {"ok":true,"queues":N,"recipients":N,"inflight":N}
 *     {"cmd":"show-jobs", "maxitems":20}
 *         -> {"ok":true,"total":N,"jobs":[{jobId,recipients,kbytes,paused}]}
 *     {"cmd":"pause-job"|"resume-job", "jobId":ID}
 *         -> {"ok":true,"jobId":ID,"changed":0|1,"recipients":N}
 *            (pause: the job's queued recipients; resume: those released; qmgr_jobs.c)
 * FILTER is any of "queue" (domain[/vmta] pattern), "jobId" (exact),
 * "rcpt" and "orig" (addresses; shell wildcards, case-insensitive) and
 * "older_than" (seconds since the message was queued); delete needs
 * "queue" or "jobId", as PowerMTA's does. The addresses and job ids live
 * in the queue store, not in qmgr's memory (a recipient costs 24 bytes
 * there), so these commands read the envelope of each candidate message,
 * once per message: O(recipients in the selected queues).
 *
 * Owns: nothing beyond one request.
 * SECURITY: reached through the root-only control socket; every argument
 * is type- and length-checked before use. Addresses come out as JSON strings.
 */
#include "config.h"

#include <fnmatch.h>
#include <stdlib.h>
#include <string.h>

#include "msg.h"
#include "qmgr.h"
#include "qmgr_ctl.h"
#include "xalloc.h"

#define ARG_MAX_LEN  512
#define LIST_DEFAULT 100
#define JOBS_DEFAULT 20

struct rcpt_filter {
    const char *queue, *job, *rcpt, *orig;
    int64_t older_than; /* seconds; -1 = any age */
};

/* the envelope of the message being looked at, kept while its recipients follow */
struct env_cache {
    uint32_t msg;
    struct qstore_msg *m;
};

static json_t *
error_reply(const char *text)
{
    return json_pack("{s:b, s:s}", "ok", 0, "error", text);
}

/* string_arg - REQ's KEY: absent (NULL, ok), or a non-empty string of bounded length */
static int
string_arg(json_t *req, const char *key, const char **out)
{
    json_t *v = json_object_get(req, key);

    *out = NULL;
    if (v == NULL)
        return 0;
    if (!json_is_string(v) || json_string_length(v) == 0 || json_string_length(v) >= ARG_MAX_LEN)
        return -1;
    *out = json_string_value(v);
    return 0;
}

/* parse_filter - FILTER from REQ; NULL, or the error text */
static const char *
parse_filter(json_t *req, struct rcpt_filter *f)
{
    json_t *age = json_object_get(req, "older_than");

    memset(f, 0, sizeof *f);
    f->older_than = -1;
    if (string_arg(req, "queue", &f->queue) < 0 || string_arg(req, "jobId", &f->job) < 0 ||
        string_arg(req, "rcpt", &f->rcpt) < 0 || string_arg(req, "orig", &f->orig) < 0)
        return "queue, jobId, rcpt and orig must be non-empty strings (under 512 bytes)";
    if (age && (!json_is_integer(age) || json_integer_value(age) < 0))
        return "older_than must be a number of seconds";
    if (age)
        f->older_than = json_integer_value(age);
    return NULL;
}

/* maxitems - REQ's "maxitems" (0 = all), DEFAULT when absent; -1 when malformed */
static int64_t
maxitems(json_t *req, int64_t dflt)
{
    json_t *v = json_object_get(req, "maxitems");

    if (v == NULL)
        return dflt;
    return json_is_integer(v) && json_integer_value(v) >= 0 ? json_integer_value(v) : -1;
}

static struct qstore_msg *
envelope(struct env_cache *c, uint32_t r)
{
    if (c->m == NULL || c->msg != S.rcpt[r].msg) {
        if (c->m)
            qstore_msg_free(c->m);
        c->msg = S.rcpt[r].msg;
        c->m = qmgr_read_envelope(r);
    }
    return c->m;
}

static void
env_cache_free(struct env_cache *c)
{
    if (c->m)
        qstore_msg_free(c->m);
    c->m = NULL;
}

static int
wildcard(const char *pattern, const char *text)
{
    return fnmatch(pattern, text ? text : "", FNM_CASEFOLD) == 0;
}

/*
 * matches - does recipient R pass F? Queue and age first (in memory); the
 * envelope only when an address or job filter needs it. *RR gets its record.
 */
static int
matches(const struct rcpt_filter *f, uint32_t r, struct env_cache *c, const struct qstore_rcpt **rr)
{
    const struct qqueue *q = S.queues[S.rcpt[r].queue];
    const struct qstore_msg *m;

    *rr = NULL;
    if (f->queue && !qmgr_queue_matches(q, f->queue))
        return 0;
    if (f->older_than >= 0 &&
        qmgr_wall() < (uint64_t)S.msg[S.rcpt[r].msg].queued_at + (uint64_t)f->older_than)
        return 0;
    if ((m = envelope(c, r)) == NULL)
        return !f->job && !f->rcpt && !f->orig; /* gone meanwhile: only if nothing asks */
    *rr = qmgr_msg_find_rcpt(m, S.rcpt[r].index);
    if (f->job && strcmp(f->job, m->env.job_id ? m->env.job_id : "") != 0)
        return 0;
    if (f->orig && !wildcard(f->orig, m->env.sender))
        return 0;
    if (f->rcpt && !wildcard(f->rcpt, *rr ? (*rr)->address : NULL))
        return 0;
    return 1;
}

static const char *
state_name(uint8_t state)
{
    return state == QR_READY ? "ready" : state == QR_DEFERRED ? "deferred" : "inflight";
}

/* rcpt_state_name - "held" for a recipient of a paused job, else its state */
static const char *
rcpt_state_name(uint32_t r)
{
    if (S.rcpt[r].state == QR_DEFERRED && (S.rcpt[r].flags & QRF_JOB_HELD))
        return "held";
    return state_name(S.rcpt[r].state);
}

static json_t *
rcpt_json(uint32_t r, const struct qstore_msg *m, const struct qstore_rcpt *rr)
{
    char qid[QSTORE_QID_LEN + 1], queued[32], next[32];

    return json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:I, s:s, s:s, s:s}", "queue",
                     S.queues[S.rcpt[r].queue]->name, "rcpt", rr && rr->address ? rr->address : "",
                     "orig", m && m->env.sender ? m->env.sender : "", "jobId",
                     m && m->env.job_id ? m->env.job_id : "", "envId",
                     m && m->env.envid ? m->env.envid : "", "msgid",
                     qmgr_qid(qid, S.msg[S.rcpt[r].msg].msgid), "state", rcpt_state_name(r),
                     "attempts", (json_int_t)S.rcpt[r].attempts, "queued",
                     qmgr_ctl_stamp(queued, S.msg[S.rcpt[r].msg].queued_at), "next_attempt",
                     rr && rr->next_attempt && !strcmp(rcpt_state_name(r), "deferred")
                         ? qmgr_ctl_stamp(next, rr->next_attempt)
                         : "",
                     "last_error", rr && rr->last_error ? rr->last_error : "");
}

/* cmd_list - recipients in the queue that pass the filter, in table order */
static json_t *
cmd_list(json_t *req)
{
    struct rcpt_filter f;
    struct env_cache c = { 0 };
    const struct qstore_rcpt *rr;
    const char *why = parse_filter(req, &f);
    int64_t max = maxitems(req, LIST_DEFAULT);
    json_t *list;
    uint64_t total = 0;

    if (why || max < 0)
        return error_reply(why ? why : "maxitems must be a count (0 = all)");
    list = json_array();
    for (uint32_t r = 0; r < S.nrcpt_cap; r++) {
        if (S.rcpt[r].state == QR_FREE || !matches(&f, r, &c, &rr))
            continue;
        if (max == 0 || total < (uint64_t)max)
            json_array_append_new(list, rcpt_json(r, c.m, rr));
        total++;
    }
    env_cache_free(&c);
    return json_pack("{s:b, s:I, s:o}", "ok", 1, "total", (json_int_t)total, "recipients", list);
}

/* --- delete ------------------------------------------------------------------------ */

/*
 * delete_matching - the recipients of Q that pass F and are not in flight;
 * those that stay keep their place (ready order, due time)
 */
static void
delete_matching(struct qqueue *q, const struct rcpt_filter *f, int dsn, uint32_t *deleted,
                uint32_t *inflight_left, struct env_cache *c)
{
    uint32_t *deferred, n = qmgr_defer_take_queue(q, &deferred), nready = 0, *ready;
    const struct qstore_rcpt *rr;

    for (uint32_t i = 0; i < n; i++) {
        uint32_t r = deferred[i];

        if (matches(f, r, c, &rr)) {
            env_cache_free(c); /* the outcome reads and frees the envelope itself */
            qmgr_outcome_delete(r, q, dsn);
            (*deleted)++;
        } else {
            qmgr_defer_push(r, S.rcpt[r].due);
        }
    }
    free(deferred);
    ready = xreallocarray(NULL, q->nready + 1, sizeof *ready);
    for (uint32_t r; (r = qmgr_ready_pop(q)) != QNIL;)
        ready[nready++] = r;
    for (uint32_t i = 0; i < nready; i++) {
        if (matches(f, ready[i], c, &rr)) {
            env_cache_free(c);
            qmgr_outcome_delete(ready[i], q, dsn);
            (*deleted)++;
        } else {
            qmgr_ready_push(q, ready[i]);
        }
    }
    free(ready);
    for (uint32_t r = 0; r < S.nrcpt_cap; r++)
        if (S.rcpt[r].state == QR_INFLIGHT && S.rcpt[r].queue == q->id && matches(f, r, c, &rr))
            (*inflight_left)++;
    qmgr_run_update(q);
}

/* qmgr_ctl_delete - see qmgr_ctl.h */
json_t *
qmgr_ctl_delete(json_t *req)
{
    struct rcpt_filter f;
    struct env_cache c = { 0 };
    json_t *dsn = json_object_get(req, "dsn");
    const char *why = parse_filter(req, &f);
    uint32_t nq = 0, deleted = 0, inflight = 0;

    if (why)
        return error_reply(why);
    if ((!f.queue && !f.job) || (dsn && !json_is_boolean(dsn)))
        return error_reply("delete needs \"queue\" (domain[/vmta]) or \"jobId\", and optionally "
                           "\"rcpt\", \"orig\", \"older_than\" and \"dsn\" (true: send bounces)");
    for (uint32_t i = 0; i < S.nqueues; i++) {
        if (f.queue && !qmgr_queue_matches(S.queues[i], f.queue))
            continue;
        nq++;
        delete_matching(S.queues[i], &f, json_is_true(dsn), &deleted, &inflight, &c);
    }
    env_cache_free(&c);
    if (nq == 0)
        return error_reply("no queue matches that pattern");
    msg_info("pmtactl delete%s%s%s%s: %u recipient(s) deleted in %u queue(s), %u in flight left",
             f.queue ? " queue " : "", f.queue ? f.queue : "", f.job ? " job " : "",
             f.job ? f.job : "", deleted, nq, inflight);
    qmgr_defer_timer_update();
    return json_pack("{s:b, s:I, s:I, s:I}", "ok", 1, "queues", (json_int_t)nq, "recipients",
                     (json_int_t)deleted, "inflight", (json_int_t)inflight);
}

/* --- show jobs ---------------------------------------------------------------------- */

struct job {
    char *id;
    uint64_t rcpts, bytes;
};

static int
by_rcpts(const void *a, const void *b)
{
    const struct job *x = a, *y = b;

    return x->rcpts != y->rcpts ? (x->rcpts < y->rcpts ? 1 : -1) : strcmp(x->id, y->id);
}

/* find_job - JOBS' entry for ID, added when new */
static struct job *
find_job(struct job **jobs, size_t *n, const char *id)
{
    for (size_t i = 0; i < *n; i++)
        if (strcmp((*jobs)[i].id, id) == 0)
            return &(*jobs)[i];
    *jobs = xreallocarray(*jobs, *n + 1, sizeof **jobs);
    (*jobs)[*n] = (struct job){ .id = xstrdup(id) };
    return &(*jobs)[(*n)++];
}

/* cmd_show_jobs - queued recipients and kbytes per job id, most recipients first */
static json_t *
cmd_show_jobs(json_t *req)
{
    struct env_cache c = { 0 };
    struct job *jobs = NULL;
    size_t njobs = 0;
    int64_t max = maxitems(req, JOBS_DEFAULT);
    json_t *list;

    if (max < 0)
        return error_reply("maxitems must be a count (0 = all)");
    for (uint32_t r = 0; r < S.nrcpt_cap; r++) {
        const struct qstore_msg *m;
        struct job *j;

        if (S.rcpt[r].state == QR_FREE || (m = envelope(&c, r)) == NULL || !m->env.job_id ||
            !*m->env.job_id)
            continue;
        j = find_job(&jobs, &njobs, m->env.job_id);
        j->rcpts++;
        j->bytes += m->env.size;
    }
    env_cache_free(&c);
    qsort(jobs, njobs, sizeof *jobs, by_rcpts);
    list = json_array();
    for (size_t i = 0; i < njobs; i++) {
        if (max == 0 || i < (size_t)max)
            json_array_append_new(list, json_pack("{s:s, s:I, s:I, s:b}", "jobId", jobs[i].id,
                                                  "recipients", (json_int_t)jobs[i].rcpts, "kbytes",
                                                  (json_int_t)(jobs[i].bytes / 1024), "paused",
                                                  qmgr_job_is_paused(jobs[i].id)));
        free(jobs[i].id);
    }
    free(jobs);
    return json_pack("{s:b, s:I, s:o}", "ok", 1, "total", (json_int_t)njobs, "jobs", list);
}

/* --- pause job, resume job ------------------------------------------------------------ */

/* job_recipients - how many queued recipients carry job id JOB (reads their envelopes) */
static uint64_t
job_recipients(const char *job)
{
    struct rcpt_filter f = { .job = job, .older_than = -1 };
    struct env_cache c = { 0 };
    const struct qstore_rcpt *rr;
    uint64_t n = 0;

    for (uint32_t r = 0; r < S.nrcpt_cap; r++)
        n += S.rcpt[r].state != QR_FREE && matches(&f, r, &c, &rr);
    env_cache_free(&c);
    return n;
}

/* cmd_job - pause-job (PAUSE 1) or resume-job */
static json_t *
cmd_job(json_t *req, int pause)
{
    const char *job;
    int64_t changed, n;

    if (string_arg(req, "jobId", &job) < 0 || job == NULL)
        return error_reply("pause-job/resume-job need \"jobId\" (a non-empty string under 512 "
                           "bytes)");
    if (pause) {
        if ((n = (int64_t)job_recipients(job)) == 0)
            return error_reply("no queued recipient has that job id");
        if ((changed = qmgr_job_pause(job)) < 0)
            return error_reply("too many jobs paused (1024); resume one first");
    } else {
        if ((n = qmgr_job_resume(job)) < 0 && job_recipients(job) == 0)
            return error_reply("no queued recipient has that job id, and it is not paused");
        changed = n >= 0;
        n = n < 0 ? 0 : n;
    }
    return json_pack("{s:b, s:s, s:I, s:I}", "ok", 1, "jobId", job, "changed", (json_int_t)changed,
                     "recipients", (json_int_t)n);
}

/* qmgr_ctl_rcpt_dispatch - see qmgr_ctl.h */
json_t *
qmgr_ctl_rcpt_dispatch(const char *cmd, json_t *req)
{
    if (strcmp(cmd, "list") == 0)
        return cmd_list(req);
    if (strcmp(cmd, "show-jobs") == 0)
        return cmd_show_jobs(req);
    if (strcmp(cmd, "pause-job") == 0 || strcmp(cmd, "resume-job") == 0)
        return cmd_job(req, cmd[0] == 'p');
    return NULL;
}
