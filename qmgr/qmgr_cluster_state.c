/*
 * qmgr_cluster_state.c - backoff modes and disabled source addresses shared
 *                        by every node of the cluster, and `show cluster`
 *
 * A queue that enters backoff on one node (a reply matched, pmtactl set
 * queue --mode, every source disabled) enters it on every node that sends
 * that queue: the change is written to PREFIXmodes (queue -> {mode, the
 * reason, the node, the end in unix ms}) and published on PREFIXevents in
 * one script call; every node applies what it hears (qmgr_backoff_set_mode,
 * with the same end, so they return to normal together) and a node that
 * starts, or reconnects after an outage, reads the hash. A return to normal
 * anywhere (a mode=normal reply, a delivery with
 * backoff-to-normal-after-delivery, the command) is announced the same way.
 * disable-source-ip (PREFIXdisabled: "queue ip" -> {the end}) and pmtactl
 * disable/enable source (published only: the operator's word now) follow
 * the same path. A change that came from the cluster is never announced
 * again; changes made while Redis is unreachable are announced when it
 * answers again. Queues a node creates later take the cluster's state from
 * a cache of the hashes, a loop turn after they appear.
 *
 * Owns: the caches of shared modes and disabled addresses, the changes
 * waiting for Redis, the queues waiting for their state.
 * SECURITY: messages and hash values come from Redis (other nodes): parsed
 * with jansson, every field type- and length-checked, text logged through
 * msg_printable(); a queue name that no queue has is kept, never created.
 */
#include "config.h"

#include <fnmatch.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include "msg.h"
#include "qmgr.h"
#include "qmgr_backoff.h"
#include "qmgr_cluster.h"
#include "qmgr_cluster_int.h"
#include "qmgr_table.h"
#include "worker.h"
#include "xalloc.h"

#define WHY_MAX   300
#define NAME_MAX_ 600
#define IP_MAX    48

/* what the cluster says about one queue, or one queue's source address */
struct shared {
    struct qtab_entry e; /* key: the queue, or "queue ip" */
    int backoff;         /* modes: 1 backoff; disabled: 1 disabled */
    uint64_t until_ms;   /* unix ms; 0: not by time */
    char node[72];
    char why[WHY_MAX];
};

static struct {
    struct qtab modes, disabled;
    int applying;  /* a change heard from the cluster: not announced again */
    char **unsent; /* {hash, field, value, message} while Redis was down */
    uint32_t nunsent;
    uint32_t *fresh; /* queues created since the last turn */
    uint32_t nfresh;
    uv_timer_t timer;
    int timer_on;
} T;

static uint64_t
wall_ms(void)
{
    struct timeval tv;

    gettimeofday(&tv, NULL);
    return (uint64_t)tv.tv_sec * 1000 + (uint64_t)tv.tv_usec / 1000;
}

const char *
cl_state_channel(char *buf, size_t size)
{
    return cl_key(buf, size, "events");
}

/* remember - the cluster's word on KEY in TABLE */
static struct shared *
remember(struct qtab *table, const char *key, int on, uint64_t until_ms, const char *node,
         const char *why)
{
    struct shared *s = (struct shared *)qtab_find(table, key);

    if (s == NULL) {
        s = xcalloc(1, sizeof *s);
        s->e.key = xstrdup(key);
        qtab_add(table, &s->e);
    }
    s->backoff = on;
    s->until_ms = until_ms;
    snprintf(s->node, sizeof s->node, "%s", node);
    snprintf(s->why, sizeof s->why, "%s", why ? why : "");
    return s;
}

/* --- telling the others --------------------------------------------------------------------- */

static void
send_state(const char *hash, const char *field, const char *value, const char *message)
{
    char key[200], channel[200];
    const char *argv[] = { cl_key(key, sizeof key, "%s", hash), field, value,
                           cl_state_channel(channel, sizeof channel), message };

    if (cl_eval(CL_SCRIPT_STATE, NULL, NULL, 1, 5, argv) == 0)
        return;
    /* Redis is down: said when it is back (the latest word per field) */
    for (uint32_t i = 0; i < T.nunsent; i += 4)
        if (strcmp(T.unsent[i], hash) == 0 && strcmp(T.unsent[i + 1], field) == 0) {
            free(T.unsent[i + 2]);
            free(T.unsent[i + 3]);
            T.unsent[i + 2] = xstrdup(value);
            T.unsent[i + 3] = xstrdup(message);
            return;
        }
    T.unsent = xreallocarray(T.unsent, T.nunsent + 4, sizeof *T.unsent);
    T.unsent[T.nunsent++] = xstrdup(hash);
    T.unsent[T.nunsent++] = xstrdup(field);
    T.unsent[T.nunsent++] = xstrdup(value);
    T.unsent[T.nunsent++] = xstrdup(message);
}

/* announce - J (consumed) into HASH's FIELD (KEEP: else the field goes) and to every node */
static void
announce(json_t *j, const char *hash, const char *field, int keep)
{
    char *text;

    json_object_set_new(j, "node", json_string(cl_node()));
    text = json_dumps(j, JSON_COMPACT);
    send_state(hash, field, keep ? text : "", text);
    free(text);
    json_decref(j);
}

/* until_wall - the unix ms of monotonic AT_MS (0 stays 0) */
static uint64_t
until_wall(uint64_t at_ms)
{
    uint64_t now = qmgr_now_ms();

    return at_ms == 0 ? 0 : wall_ms() + (at_ms > now ? at_ms - now : 0);
}

/* qmgr_cluster_mode_changed - see qmgr_cluster.h */
void
qmgr_cluster_mode_changed(struct qqueue *q, const char *why)
{
    uint64_t until = q->mode == QMODE_BACKOFF ? until_wall(q->backoff_until_ms) : 0;

    if (!qmgr_cluster_on() || T.applying)
        return;
    remember(&T.modes, q->name, q->mode == QMODE_BACKOFF, until, cl_node(), why);
    announce(json_pack("{s:s, s:s, s:s, s:s, s:I}", "t", "mode", "queue", q->name, "mode",
                       qmgr_mode_name(q->mode), "why", why ? why : "", "until", (json_int_t)until),
             "modes", q->name, q->mode == QMODE_BACKOFF);
}

/* qmgr_cluster_source_disabled - see qmgr_cluster.h */
void
qmgr_cluster_source_disabled(struct qqueue *q, const char *ip, int64_t seconds)
{
    char field[NAME_MAX_ + IP_MAX + 2];
    uint64_t until = seconds >= 0 ? wall_ms() + (uint64_t)seconds * 1000 : 0;

    if (!qmgr_cluster_on() || T.applying)
        return;
    snprintf(field, sizeof field, "%s %s", q->name, ip);
    remember(&T.disabled, field, 1, until, cl_node(), NULL);
    announce(json_pack("{s:s, s:s, s:s, s:I}", "t", "disable", "queue", q->name, "ip", ip, "until",
                       (json_int_t)until),
             "disabled", field, 1);
}

/* qmgr_cluster_source_operator - see qmgr_cluster.h */
void
qmgr_cluster_source_operator(const char *ip, const char *vmta, int64_t seconds, int enable)
{
    json_t *j;
    char *text, channel[200];
    const char *argv[3];

    if (!qmgr_cluster_on() || T.applying)
        return;
    j = json_pack("{s:s, s:s, s:s, s:I, s:b, s:s}", "t", "operator", "ip", ip, "vmta",
                  vmta ? vmta : "*", "seconds", (json_int_t)seconds, "enable", enable, "node",
                  cl_node());
    text = json_dumps(j, JSON_COMPACT);
    argv[0] = "PUBLISH";
    argv[1] = cl_state_channel(channel, sizeof channel);
    argv[2] = text;
    if (cl_command(NULL, NULL, 3, argv) < 0)
        msg_warn("cluster: Redis unreachable: pmtactl %s source %s applies to this node only",
                 enable ? "enable" : "disable", ip);
    free(text);
    json_decref(j);
}

/* --- hearing from them ----------------------------------------------------------------------- */

static struct qqueue *
existing_queue(const char *name)
{
    return qmgr_queue_lookup(name, strlen(name));
}

/* apply_mode - Q takes the cluster's mode S */
static void
apply_mode(struct qqueue *q, const struct shared *s)
{
    uint64_t now_wall = wall_ms();
    char why[WHY_MAX + 100];
    int backoff = s->backoff && (s->until_ms == 0 || s->until_ms > now_wall);

    if (strcmp(s->node, cl_node()) == 0 && backoff == (q->mode == QMODE_BACKOFF))
        return; /* our own word, already in force */
    snprintf(why, sizeof why, "%s (node %s)", s->why[0] ? s->why : "cluster", s->node);
    T.applying = 1;
    if (backoff) {
        if (q->mode != QMODE_BACKOFF)
            qmgr_backoff_set_mode(q, QMODE_BACKOFF, why, -1);
        /* the same end on every node: they return to normal together */
        q->backoff_until_ms = s->until_ms ? qmgr_now_ms() + (s->until_ms - now_wall) : 0;
    } else if (q->mode != QMODE_NORMAL) {
        qmgr_backoff_set_mode(q, QMODE_NORMAL, why, -1);
    }
    T.applying = 0;
}

/* apply_disabled - S ("queue ip") to Q */
static void
apply_disabled(struct qqueue *q, const struct shared *s)
{
    const char *ip = strrchr(s->e.key, ' ');
    uint64_t now_wall = wall_ms();

    if (ip == NULL || strcmp(s->node, cl_node()) == 0 || (s->until_ms && s->until_ms <= now_wall))
        return;
    T.applying = 1;
    msg_info("queue %s: source %s disabled (node %s)", q->name, ip + 1, s->node);
    qmgr_source_disable(q, ip + 1,
                        s->until_ms ? (int64_t)((s->until_ms - now_wall + 999) / 1000) : -1);
    T.applying = 0;
}

static const char *
field_text(json_t *j, const char *name, size_t max)
{
    const char *s = json_string_value(json_object_get(j, name));

    return s && strlen(s) <= max ? s : NULL;
}

static uint64_t
field_ms(json_t *j, const char *name)
{
    json_int_t n = json_integer_value(json_object_get(j, name));

    return n > 0 ? (uint64_t)n : 0;
}

/* hear - one JSON change J (a message, or a hash value) */
static void
hear(json_t *j)
{
    const char *t = field_text(j, "t", 16), *node = field_text(j, "node", 64);
    const char *queue = field_text(j, "queue", NAME_MAX_), *ip = field_text(j, "ip", IP_MAX - 1);
    char why[WHY_MAX], key[NAME_MAX_ + IP_MAX + 2];
    const char *w;
    struct qqueue *q;
    struct shared *s;

    if (t == NULL || node == NULL)
        return;
    if (strcmp(t, "operator") == 0 && ip && strcmp(node, cl_node()) != 0) {
        const char *vmta = field_text(j, "vmta", 200);
        json_t *sec = json_object_get(j, "seconds");

        T.applying = 1;
        qmgr_source_operator(ip, vmta && strcmp(vmta, "*") != 0 ? vmta : NULL,
                             json_is_integer(sec) ? json_integer_value(sec) : -1,
                             json_is_true(json_object_get(j, "enable")));
        T.applying = 0;
        msg_info("source %s %s on node %s's word (pmtactl)", ip,
                 json_is_true(json_object_get(j, "enable")) ? "enabled" : "disabled", node);
        qmgr_dispatch_soon();
        return;
    }
    if (queue == NULL)
        return;
    if (strcmp(t, "mode") == 0) {
        w = field_text(j, "why", 4096);
        msg_printable(why, sizeof why, w ? w : "", w ? strlen(w) : 0);
        s = remember(&T.modes, queue, strcmp(field_text(j, "mode", 16) ?: "", "backoff") == 0,
                     field_ms(j, "until"), node, why);
        if ((q = existing_queue(queue)) != NULL)
            apply_mode(q, s);
    } else if (strcmp(t, "disable") == 0 && ip) {
        snprintf(key, sizeof key, "%s %s", queue, ip);
        s = remember(&T.disabled, key, 1, field_ms(j, "until"), node, NULL);
        if ((q = existing_queue(queue)) != NULL)
            apply_disabled(q, s);
    }
}

/* cl_state_message - see qmgr_cluster_int.h */
void
cl_state_message(const char *text, size_t len)
{
    json_t *j = len <= 16384 ? json_loadb(text, len, 0, NULL) : NULL;

    if (json_is_object(j))
        hear(j);
    json_decref(j);
}

/* on_hash - every value of a shared hash (HGETALL): heard like messages */
static void
on_hash(redisReply *r, void *priv)
{
    (void)priv;
    if (r == NULL || r->type != REDIS_REPLY_ARRAY)
        return;
    for (size_t i = 0; i + 1 < r->elements; i += 2)
        if (r->element[i + 1]->type == REDIS_REPLY_STRING)
            cl_state_message(r->element[i + 1]->str, r->element[i + 1]->len);
}

/* cl_state_up - see qmgr_cluster_int.h */
void
cl_state_up(void)
{
    char key[200];
    const char *argv[2] = { "HGETALL", key };
    char **unsent = T.unsent;
    uint32_t n = T.nunsent;

    T.unsent = NULL;
    T.nunsent = 0;
    for (uint32_t i = 0; i < n; i += 4) {
        send_state(unsent[i], unsent[i + 1], unsent[i + 2], unsent[i + 3]);
        for (int k = 0; k < 4; k++)
            free(unsent[i + k]);
    }
    free(unsent);
    cl_key(key, sizeof key, "modes");
    cl_command(on_hash, NULL, 2, argv);
    cl_key(key, sizeof key, "disabled");
    cl_command(on_hash, NULL, 2, argv);
}

/* --- new queues --------------------------------------------------------------------------- */

static void
on_fresh(uv_timer_t *t)
{
    uint32_t n = T.nfresh;

    (void)t;
    T.nfresh = 0;
    for (uint32_t i = 0; i < n && i < S.nqueues; i++) {
        struct qqueue *q = S.queues[T.fresh[i]];
        struct shared *s = (struct shared *)qtab_find(&T.modes, q->name);
        uint32_t slot = 0;
        struct qtab_entry *e = NULL;
        size_t len = strlen(q->name);

        if (s)
            apply_mode(q, s);
        while ((e = qtab_next(&T.disabled, &slot, e)) != NULL)
            if (strncmp(e->key, q->name, len) == 0 && e->key[len] == ' ')
                apply_disabled(q, (struct shared *)e);
    }
}

/* qmgr_cluster_queue_new - see qmgr_cluster.h: applied a loop turn later (not mid-creation) */
void
qmgr_cluster_queue_new(struct qqueue *q)
{
    if (!qmgr_cluster_on() || (T.modes.n == 0 && T.disabled.n == 0))
        return;
    T.fresh = xreallocarray(T.fresh, T.nfresh + 1, sizeof *T.fresh);
    T.fresh[T.nfresh++] = q->id;
    if (!T.timer_on) {
        uv_timer_init(worker_loop(), &T.timer);
        uv_unref((uv_handle_t *)&T.timer);
        T.timer_on = 1;
    }
    if (!uv_is_active((uv_handle_t *)&T.timer))
        uv_timer_start(&T.timer, on_fresh, 0, 0);
}

/* --- show cluster ------------------------------------------------------------------------ */

static json_t *
queue_json(struct qqueue *q)
{
    struct qlim *lims[] = { &q->lim_msg, &q->lim_connect, &q->lim_conns, &q->lim_volume };
    const struct shared *s = (const struct shared *)qtab_find(&T.modes, q->name);
    json_t *j = json_pack("{s:s, s:s}", "queue", q->name, "mode", qmgr_mode_name(q->mode));
    json_t *limits = json_array();

    if (s && s->backoff) {
        json_object_set_new(j, "shared_mode",
                            json_pack("{s:s, s:s, s:s, s:I}", "mode", "backoff", "why", s->why,
                                      "node", s->node, "until_ms", (json_int_t)s->until_ms));
    }
    if (q->mode == QMODE_BACKOFF && q->backoff_until_ms) {
        uint64_t now = qmgr_now_ms();

        json_object_set_new(j, "backoff_ends_in_s",
                            json_integer(q->backoff_until_ms > now
                                             ? (json_int_t)((q->backoff_until_ms - now) / 1000)
                                             : 0));
    }
    qmgr_queue_limits(q);
    for (size_t i = 0; i < sizeof lims / sizeof lims[0]; i++)
        if (qlim_limited(lims[i]))
            json_array_append_new(limits, cl_limit_json(lims[i]));
    json_object_set_new(j, "limits", limits);
    if (q->ndisabled) {
        json_t *d = json_array();

        for (uint32_t i = 0; i < q->ndisabled; i++)
            json_array_append_new(d, json_string(q->disabled[i].ip));
        json_object_set_new(j, "disabled_sources", d);
    }
    return j;
}

/* qmgr_cluster_json - see qmgr_cluster.h */
json_t *
qmgr_cluster_json(const char *pattern)
{
    json_t *j = cl_link_json(), *queues = json_array();
    uint32_t shared, granted;

    cl_limit_stats(&shared, &granted);
    json_object_set_new(j, "limiters_shared", json_integer(shared));
    json_object_set_new(j, "nodes", cl_nodes_json());
    for (uint32_t i = 0; pattern && i < S.nqueues; i++) {
        struct qqueue *q = S.queues[i];

        if (qmgr_queue_matches(q, pattern))
            json_array_append_new(queues, queue_json(q));
    }
    if (pattern) {
        /* queues only the cluster knows here */
        uint32_t slot = 0;
        struct qtab_entry *e = NULL;

        while ((e = qtab_next(&T.modes, &slot, e)) != NULL) {
            const struct shared *s = (const struct shared *)e;

            if (existing_queue(e->key) == NULL && s->backoff &&
                fnmatch(pattern, e->key, FNM_CASEFOLD) == 0)
                json_array_append_new(
                    queues, json_pack("{s:s, s:s, s:{s:s, s:s, s:s, s:I}}", "queue", e->key, "mode",
                                      "none here", "shared_mode", "mode", "backoff", "why", s->why,
                                      "node", s->node, "until_ms", (json_int_t)s->until_ms));
        }
    }
    json_object_set_new(j, "queues", queues);
    return j;
}

static void
free_shared(struct qtab_entry *e)
{
    free(e->key);
    free(e);
}

void
cl_state_free(void)
{
    qtab_free(&T.modes, free_shared);
    qtab_free(&T.disabled, free_shared);
    for (uint32_t i = 0; i < T.nunsent; i++)
        free(T.unsent[i]);
    free(T.unsent);
    T.unsent = NULL;
    T.nunsent = 0;
    free(T.fresh);
    T.fresh = NULL;
    T.nfresh = 0;
    if (T.timer_on)
        uv_close((uv_handle_t *)&T.timer, NULL);
    T.timer_on = 0;
}
