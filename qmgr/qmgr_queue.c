/*
 * qmgr_queue.c - queues (domain/vmta), their settings, the recipient and
 *                message tables, ready lists and the deferred heap
 *
 * Owns: S.rcpt, S.msg (and its free list), S.heap, S.queues and S.qhash.
 * A queue is created on first sight of its name and lives until exit (queue
 * names are few next to recipients; they are interned once). Recipients live
 * in one table, linked by index: a queue's ready list is FIFO, so recipients
 * of one message that were queued together stay adjacent and can share a
 * transaction. Deferred recipients sit in one binary heap keyed by
 * (due tick, message, index), which also keeps a message's recipients
 * together when they come due at the same time.
 *
 * Settings: qmgr_queue_setting() is the only way a per-queue limit is read.
 * It resolves the queue against the current configuration once per reload
 * and is where backoff mode will pick the backoff-X twin of X.
 *
 * SECURITY: queue names come from the queue store (written by cleanup from
 * peer input, already validated there); they are only hashed and copied.
 */
#include "config.h"

#include <fnmatch.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "msg.h"
#include "qmgr.h"
#include "qmgr_cluster.h"
#include "qmgr_table.h"
#include "xalloc.h"

/* Addresses the operator disabled (pmtactl disable source), for every queue of some VMTAs. */
struct operator_disabled {
    char ip[48];
    char vmta[128]; /* shell pattern; "*" = every virtual MTA */
    uint64_t until_ms;
};
static struct operator_disabled *op_disabled;
static uint32_t nop_disabled;

/* --- queues ------------------------------------------------------------------------- */

static void
qhash_insert(struct qqueue *q)
{
    uint32_t mask = S.qhash_cap - 1, i = qtab_hash(q->name, strlen(q->name)) & mask;

    while (S.qhash[i] != QNIL)
        i = (i + 1) & mask;
    S.qhash[i] = q->id;
}

static void
qhash_grow(void)
{
    uint32_t cap = S.qhash_cap ? S.qhash_cap * 2 : 1024;

    free(S.qhash);
    S.qhash = xreallocarray(NULL, cap, sizeof(*S.qhash));
    memset(S.qhash, 0xff, cap * sizeof(*S.qhash));
    S.qhash_cap = cap;
    for (uint32_t i = 0; i < S.nqueues; i++)
        qhash_insert(S.queues[i]);
}

static struct qqueue *
queue_create(const char *name, size_t len)
{
    struct qqueue *q = xcalloc(1, sizeof(*q));
    const char *slash = memrchr(name, '/', len);

    q->id = S.nqueues;
    q->name = xstrndup(name, len);
    q->domain = xstrndup(name, slash ? (size_t)(slash - name) : len);
    q->vmta = slash && slash + 1 < name + len
                  ? xstrndup(slash + 1, len - (size_t)(slash + 1 - name))
                  : xstrdup("{default}");
    q->ready_head = q->ready_tail = QNIL;
    q->run_prio = -1;
    q->plist = -1;
    qlim_init(&q->lim_msg, QLIM_QUEUE, QLIM_RATE, QLIM_MSGS, q->name);
    qlim_init(&q->lim_connect, QLIM_QUEUE, QLIM_RATE, QLIM_CONNS, q->name);
    qlim_init(&q->lim_conns, QLIM_QUEUE, QLIM_LEASE, QLIM_CONNS, q->name);
    qlim_init(&q->lim_volume, QLIM_QUEUE, QLIM_RATE, QLIM_BYTES, q->name);
    q->lim_volume.flags |= QLIM_DEBT;
    if (S.nqueues == S.queues_cap) {
        S.queues_cap = S.queues_cap ? S.queues_cap * 2 : 256;
        S.queues = xreallocarray(S.queues, S.queues_cap, sizeof(*S.queues));
    }
    S.queues[S.nqueues++] = q;
    if (S.nqueues * 2 > S.qhash_cap)
        qhash_grow();
    else
        qhash_insert(q);
    qmgr_cluster_queue_new(q); /* a mode the cluster has for it */
    return q;
}

/* qmgr_queue_lookup - see qmgr.h */
struct qqueue *
qmgr_queue_lookup(const char *name, size_t len)
{
    uint32_t mask, i;

    if (S.qhash_cap) {
        mask = S.qhash_cap - 1;
        for (i = qtab_hash(name, len) & mask; S.qhash[i] != QNIL; i = (i + 1) & mask) {
            struct qqueue *q = S.queues[S.qhash[i]];
            if (strncmp(q->name, name, len) == 0 && q->name[len] == '\0')
                return q;
        }
    }
    return NULL;
}

/* qmgr_queue_get - the queue named NAME (LEN bytes), created on first use */
struct qqueue *
qmgr_queue_get(const char *name, size_t len)
{
    struct qqueue *q = qmgr_queue_lookup(name, len);

    return q ? q : queue_create(name, len);
}

static void
wake_closed(uv_handle_t *h)
{
    free(h);
}

void
qmgr_queues_free(void)
{
    for (uint32_t i = 0; i < S.nqueues; i++) {
        struct qqueue *q = S.queues[i];
        if (q->wake)
            uv_close((uv_handle_t *)q->wake, wake_closed);
        qlim_fini(&q->lim_msg);
        qlim_fini(&q->lim_connect);
        qlim_fini(&q->lim_conns);
        qlim_fini(&q->lim_volume);
        free(q->srcl);
        free(q->members);
        free(q->name);
        free(q->domain);
        free(q->vmta);
        free(q->res);
        free(q->last_error);
        free(q->mode_events);
        free(q->disabled);
        free(q);
    }
    free(S.queues);
    free(S.qhash);
    free(op_disabled);
    op_disabled = NULL;
    nop_disabled = 0;
    S.queues = NULL;
    S.qhash = NULL;
    S.nqueues = S.queues_cap = S.qhash_cap = 0;
}

void
qmgr_queue_set_error(struct qqueue *q, const char *text)
{
    free(q->last_error);
    q->last_error = xstrdup(text ? text : "");
}

/* --- settings --------------------------------------------------------------------- */

int
qmgr_queue_type(struct qqueue *q)
{
    return (int)qmgr_queue_num(q, CFG_D_TYPE, CFG_TYPE_SMTP);
}

const char *
qmgr_queue_type_name(struct qqueue *q)
{
    return cfg_delivery_type_name(qmgr_queue_type(q));
}

/* refresh_settings - resolve Q against the current configuration if it changed */
static void
refresh_settings(struct qqueue *q)
{
    if (q->res && q->res_serial == S.cfg_serial)
        return;
    if (!q->res)
        q->res = xmalloc(sizeof(*q->res));
    if (cfg_resolve_queue(S.cfg, q->domain, q->vmta, q->res) < 0) {
        /* The vmta is gone from the configuration: its mail still goes out,
         * under the settings of the default virtual MTA. */
        cfg_resolve_queue(S.cfg, q->domain, NULL, q->res);
    }
    q->res_serial = S.cfg_serial;
    q->priority = (int)qmgr_queue_num(q, CFG_D_QUEUE_PRIORITY, 50);
    if (q->priority < 0)
        q->priority = 0;
    if (q->priority > 100)
        q->priority = 100;
}

/* qmgr_limit_set_value - limiter L set from value V (a rate or a count); BASIS names it */
void
qmgr_limit_set_value(struct qlim *l, const struct cfg_value *v, const char *suffix)
{
    char text[48], basis[QLIM_BASIS_MAX];

    if (l->scope != QLIM_GLOBAL) /* total-max-smtp-out is this host's own capacity */
        qmgr_cluster_adopt(l, v && (v->flags & CFG_VALUE_LOCAL));
    if (v == NULL || (v->flags & CFG_VALUE_UNSET) || v->num <= 0 ||
        (v->type == CFG_T_RATE && v->num2 <= 0)) {
        qlim_set(l, 0, 0, NULL);
        return;
    }
    snprintf(basis, sizeof basis, "%s %s%s%s", cfg_directive_info(v->directive)->name,
             cfg_format_value(S.cfg, v, text, sizeof text), suffix ? " " : "",
             suffix ? suffix : "");
    qlim_set(l, v->num, v->type == CFG_T_RATE ? v->num2 : 0, basis);
}

/*
 * qmgr_queue_limits_refresh - Q's limiters for the current configuration
 * and mode: in backoff each backoff-X twin (qmgr_queue_setting picks it),
 * and max-smtp-out 0 still allows one connection
 */
void
qmgr_queue_limits_refresh(struct qqueue *q)
{
    const struct cfg_value *out = qmgr_queue_setting(q, CFG_D_MAX_SMTP_OUT);
    char basis[QLIM_BASIS_MAX];
    int64_t n;

    qmgr_limit_set_value(&q->lim_msg, qmgr_queue_setting(q, CFG_D_MAX_MSG_RATE), NULL);
    qmgr_limit_set_value(&q->lim_connect, qmgr_queue_setting(q, CFG_D_MAX_CONNECT_RATE), NULL);
    qmgr_limit_set_value(&q->lim_volume, qmgr_queue_setting(q, CFG_D_MAX_DATA_VOLUME_RATE), NULL);
    if (out && out->num > 0) {
        n = qmgr_adaptive_limit(q, out->num, basis, sizeof basis);
        if (q->adapt_on) {
            qmgr_cluster_adopt(&q->lim_conns, (out->flags & CFG_VALUE_LOCAL) != 0);
            qlim_set(&q->lim_conns, n, 0, basis);
        } else
            qmgr_limit_set_value(&q->lim_conns, out, NULL);
    } else {
        qmgr_cluster_adopt(&q->lim_conns, out && (out->flags & CFG_VALUE_LOCAL));
        qlim_set(&q->lim_conns, out ? 1 : 20, 0, out ? "max-smtp-out 0 (one)" : "max-smtp-out 20");
    }
    q->lim_serial = S.cfg_serial;
    q->lim_mode = q->mode;
}

void
qmgr_queue_invalidate_settings(void)
{
    S.cfg_serial++;
    qmgr_limit_set_value(&S.lim_total, cfg_global(S.cfg, CFG_D_TOTAL_MAX_SMTP_OUT), NULL);
    for (uint32_t i = 0; i < S.nqueues; i++) {
        refresh_settings(S.queues[i]);
        qmgr_run_update(S.queues[i]);
    }
}

/* backoff_twin - the backoff-X directive that replaces X in backoff mode, or -1 */
static int
backoff_twin(enum cfg_directive d)
{
    switch (d) {
    case CFG_D_MAX_MSG_RATE:
        return CFG_D_BACKOFF_MAX_MSG_RATE;
    case CFG_D_MAX_CONNECT_RATE:
        return CFG_D_BACKOFF_MAX_CONNECT_RATE;
    case CFG_D_MAX_DATA_VOLUME_RATE:
        return CFG_D_BACKOFF_MAX_DATA_VOLUME_RATE;
    case CFG_D_MAX_SMTP_OUT:
        return CFG_D_BACKOFF_MAX_SMTP_OUT;
    case CFG_D_RETRY_AFTER:
        return CFG_D_BACKOFF_RETRY_AFTER;
    default:
        return -1;
    }
}

const struct cfg_value *
qmgr_queue_setting(struct qqueue *q, enum cfg_directive d)
{
    int twin;

    refresh_settings(q);
    if (q->mode == QMODE_BACKOFF && (twin = backoff_twin(d)) >= 0 && q->res->v[twin] &&
        !(q->res->v[twin]->flags & CFG_VALUE_UNSET)) {
        /* backoff-max-smtp-out (20 by default) must not raise a smaller max-smtp-out */
        if (d == CFG_D_MAX_SMTP_OUT && q->res->v[d] && q->res->v[d]->num < q->res->v[twin]->num)
            return q->res->v[d];
        return q->res->v[twin];
    }
    if (q->res->v[d] && (q->res->v[d]->flags & CFG_VALUE_UNSET))
        return NULL;
    return q->res->v[d];
}

int64_t
qmgr_queue_num(struct qqueue *q, enum cfg_directive d, int64_t dflt)
{
    const struct cfg_value *v = qmgr_queue_setting(q, d);

    return v ? v->num : dflt;
}

uint64_t
qmgr_queue_retry_delay_ms(struct qqueue *q, uint32_t n)
{
    const struct cfg_value *v = qmgr_queue_setting(q, CFG_D_RETRY_AFTER);
    const int64_t *list;
    int64_t s;

    if (!v || v->list_len == 0)
        return 600000; /* PowerMTA's 10m */
    list = cfg_list(S.cfg, v);
    s = list[n == 0 ? 0 : (n - 1 < v->list_len ? n - 1 : v->list_len - 1)];
    return s > 0 ? (uint64_t)s * 1000 : 1000;
}

/* --- messages ---------------------------------------------------------------------- */

uint32_t
qmgr_msg_add(uint64_t msgid, uint32_t queued_at)
{
    uint32_t m;

    if (S.nmsg_free) {
        m = S.msg_free[--S.nmsg_free];
    } else {
        if (S.nmsg_used == S.nmsg_cap) {
            S.nmsg_cap = S.nmsg_cap ? S.nmsg_cap + S.nmsg_cap / 2 : 4096;
            S.msg = xreallocarray(S.msg, S.nmsg_cap, sizeof(*S.msg));
        }
        m = S.nmsg_used++;
    }
    S.msg[m].msgid = msgid;
    S.msg[m].queued_at = queued_at;
    S.msg[m].live = 0;
    return m;
}

void
qmgr_msg_unref(uint32_t m)
{
    if (--S.msg[m].live > 0)
        return;
    S.msg[m].msgid = 0;
    if (S.nmsg_free == S.nmsg_free_cap) {
        S.nmsg_free_cap = S.nmsg_free_cap ? S.nmsg_free_cap * 2 : 1024;
        S.msg_free = xreallocarray(S.msg_free, S.nmsg_free_cap, sizeof(*S.msg_free));
    }
    S.msg_free[S.nmsg_free++] = m;
}

/* --- recipients -------------------------------------------------------------------- */

/* qmgr_rcpt_reserve - make room for N recipients in one step (start-up knows the count) */
void
qmgr_rcpt_reserve(uint64_t n)
{
    uint32_t old = S.nrcpt_cap, cap;

    if (n <= old)
        return;
    if (n >= QNIL)
        msg_fatal("too many queued recipients (%llu)", (unsigned long long)n);
    cap = (uint32_t)n;
    S.rcpt = xreallocarray(S.rcpt, cap, sizeof(*S.rcpt));
    /* Thread the new slots onto the free list, lowest index first. */
    for (uint32_t i = cap; i-- > old;) {
        S.rcpt[i].state = QR_FREE;
        S.rcpt[i].next = S.rcpt_free;
        S.rcpt_free = i;
    }
    S.nrcpt_cap = cap;
}

uint32_t
qmgr_rcpt_new(uint32_t msg, uint32_t index, struct qqueue *q, uint16_t attempts)
{
    uint32_t r;

    if (S.rcpt_free == QNIL || S.nrcpt_cap == 0)
        qmgr_rcpt_reserve(S.nrcpt_cap < 4096 ? 4096 : (uint64_t)S.nrcpt_cap + S.nrcpt_cap / 2);
    r = S.rcpt_free;
    S.rcpt_free = S.rcpt[r].next;
    S.rcpt[r] = (struct qrcpt){ .next = QNIL,
                                .msg = msg,
                                .index = index,
                                .queue = q->id,
                                .attempts = attempts,
                                .state = QR_FREE };
    S.msg[msg].live++;
    S.nrcpt_live++;
    return r;
}

void
qmgr_rcpt_free(uint32_t r)
{
    qmgr_msg_unref(S.rcpt[r].msg);
    S.rcpt[r].state = QR_FREE;
    S.rcpt[r].next = S.rcpt_free;
    S.rcpt_free = r;
    S.nrcpt_live--;
}

int
qmgr_rcpt_expired(uint32_t r, uint64_t now_wall)
{
    struct qqueue *q = S.queues[S.rcpt[r].queue];
    int64_t after = qmgr_queue_num(q, CFG_D_BOUNCE_AFTER, 4 * 86400 + 12 * 3600);

    return after >= 0 && now_wall >= (uint64_t)S.msg[S.rcpt[r].msg].queued_at + (uint64_t)after;
}

/* --- ready lists -------------------------------------------------------------------- */

/* qmgr_mode_name - see qmgr.h */
const char *
qmgr_mode_name(int mode)
{
    return mode == QMODE_BACKOFF ? "backoff" : "normal";
}

/* qmgr_queue_matches - see qmgr.h */
int
qmgr_queue_matches(const struct qqueue *q, const char *pattern)
{
    const char *slash = strchr(pattern, '/');
    char domain[512];

    if (slash == NULL)
        return fnmatch(pattern, q->domain, FNM_CASEFOLD) == 0;
    if ((size_t)(slash - pattern) >= sizeof domain)
        return 0;
    memcpy(domain, pattern, (size_t)(slash - pattern));
    domain[slash - pattern] = '\0';
    return fnmatch(domain, q->domain, FNM_CASEFOLD) == 0 &&
           fnmatch(slash + 1, q->vmta, FNM_CASEFOLD) == 0;
}

/* --- disabled source addresses (disable-source-ip) ------------------------------------- */

/* operator_disabled - has the operator disabled IP (NULL: any address) for Q's virtual MTA? */
static int
operator_disabled(const struct qqueue *q, const char *ip)
{
    uint64_t now = qmgr_now_ms();

    for (uint32_t i = 0; i < nop_disabled;) {
        const struct operator_disabled *d = &op_disabled[i];

        if (d->until_ms && now >= d->until_ms) {
            msg_info("source %s enabled again for virtual MTA %s", d->ip, d->vmta);
            op_disabled[i] = op_disabled[--nop_disabled];
            continue;
        }
        if ((!ip || strcmp(d->ip, ip) == 0) && fnmatch(d->vmta, q->vmta, FNM_CASEFOLD) == 0)
            return 1;
        i++;
    }
    return 0;
}

/* qmgr_source_operator - see qmgr.h */
uint32_t
qmgr_source_operator(const char *ip, const char *vmta, int64_t seconds, int enable)
{
    const char *pattern = vmta ? vmta : "*";
    uint32_t changed = 0, i;

    qmgr_cluster_source_operator(ip, vmta, seconds, enable);
    if (enable) {
        for (i = 0; i < nop_disabled;)
            if (strcmp(op_disabled[i].ip, ip) == 0 &&
                fnmatch(pattern, op_disabled[i].vmta, FNM_CASEFOLD) == 0)
                op_disabled[i] = op_disabled[--nop_disabled], changed++;
            else
                i++;
        for (uint32_t k = 0; k < S.nqueues; k++) {
            struct qqueue *q = S.queues[k];

            if (fnmatch(pattern, q->vmta, FNM_CASEFOLD) != 0)
                continue;
            for (i = 0; i < q->ndisabled;)
                if (strcmp(q->disabled[i].ip, ip) == 0)
                    q->disabled[i] = q->disabled[--q->ndisabled], changed++;
                else
                    i++;
        }
        return changed;
    }
    for (i = 0; i < nop_disabled; i++)
        if (strcmp(op_disabled[i].ip, ip) == 0 && strcmp(op_disabled[i].vmta, pattern) == 0)
            break;
    if (i == nop_disabled) {
        op_disabled = xreallocarray(op_disabled, nop_disabled + 1, sizeof *op_disabled);
        snprintf(op_disabled[i].ip, sizeof op_disabled->ip, "%s", ip);
        snprintf(op_disabled[i].vmta, sizeof op_disabled->vmta, "%s", pattern);
        nop_disabled++;
    }
    op_disabled[i].until_ms = seconds >= 0 ? qmgr_now_ms() + (uint64_t)seconds * 1000 : 0;
    return 1;
}

/* drop_expired - forget Q's disabled addresses whose time is over */
static void
drop_expired(struct qqueue *q)
{
    uint64_t now = qmgr_now_ms();

    for (uint32_t i = 0; i < q->ndisabled;) {
        if (q->disabled[i].until_ms && now >= q->disabled[i].until_ms) {
            msg_info("queue %s: source %s enabled again", q->name, q->disabled[i].ip);
            q->disabled[i] = q->disabled[--q->ndisabled];
        } else {
            i++;
        }
    }
}

void
qmgr_source_disable(struct qqueue *q, const char *ip, int64_t seconds)
{
    uint64_t until = seconds >= 0 ? qmgr_now_ms() + (uint64_t)seconds * 1000 : 0;
    uint32_t i;

    for (i = 0; i < q->ndisabled && strcmp(q->disabled[i].ip, ip) != 0; i++)
        ;
    if (i == q->ndisabled) {
        q->disabled = xreallocarray(q->disabled, q->ndisabled + 1, sizeof *q->disabled);
        snprintf(q->disabled[q->ndisabled++].ip, sizeof q->disabled->ip, "%s", ip);
    }
    q->disabled[i].until_ms = until;
    if (until)
        qmgr_queue_wake_at(q, until); /* the queue may have nothing else to wake it */
    qmgr_cluster_source_disabled(q, ip, seconds);
}

int
qmgr_source_disabled(struct qqueue *q, const char *ip)
{
    drop_expired(q);
    for (uint32_t i = 0; i < q->ndisabled; i++)
        if (strcmp(q->disabled[i].ip, ip) == 0)
            return 1;
    return operator_disabled(q, ip);
}

int
qmgr_source_any_disabled(struct qqueue *q)
{
    drop_expired(q);
    return q->ndisabled > 0 || operator_disabled(q, NULL);
}

/*
 * qmgr_queue_route - see qmgr.h. A chain vmta -> vmta1 -> vmta2 is followed
 * while each queue on it is in backoff; a loop stops after a few hops.
 */
struct qqueue *
qmgr_queue_route(struct qqueue *q)
{
    for (int hops = 0; hops < 8 && q->mode == QMODE_BACKOFF; hops++) {
        const struct cfg_value *v = qmgr_queue_setting(q, CFG_D_BACKOFF_REROUTE_TO_VIRTUAL_MTA);
        char name[600];
        int n;

        if (v == NULL || strcmp(cfg_str(S.cfg, v->text), q->vmta) == 0)
            break;
        n = snprintf(name, sizeof name, "%s/%s", q->domain, cfg_str(S.cfg, v->text));
        if (n < 0 || (size_t)n >= sizeof name)
            break;
        q = qmgr_queue_get(name, (size_t)n);
    }
    return q;
}

/* qmgr_queue_move - see qmgr.h; O(Q's ready recipients + the deferred heap) */
uint32_t
qmgr_queue_move(struct qqueue *q, struct qqueue *to)
{
    uint32_t moved = 0;

    if (to == q)
        return 0;
    if (!to->route_domain)
        to->route_domain = q->route_domain; /* a rollup rerouted keeps its MX */
    for (uint32_t r; (r = qmgr_ready_pop(q)) != QNIL; moved++)
        qmgr_ready_push(to, r);
    for (uint32_t i = 0; q->ndeferred > 0 && i < S.nheap; i++)
        if (S.rcpt[S.heap[i]].queue == q->id) {
            S.rcpt[S.heap[i]].queue = to->id;
            q->ndeferred--;
            to->ndeferred++;
            moved++;
        }
    return moved;
}

/* qmgr_queue_reroute - Q entered backoff: its ready and deferred recipients move on */
uint32_t
qmgr_queue_reroute(struct qqueue *q)
{
    return qmgr_queue_move(q, qmgr_queue_route(q));
}

void
qmgr_ready_push(struct qqueue *q, uint32_t r)
{
    q = qmgr_queue_route(q);
    S.rcpt[r].queue = q->id;
    S.rcpt[r].state = QR_READY;
    S.rcpt[r].next = QNIL;
    if (q->ready_tail == QNIL)
        q->ready_head = r;
    else
        S.rcpt[q->ready_tail].next = r;
    q->ready_tail = r;
    if (q->nready++ == 0)
        qmgr_run_update(q);
}

/*
 * qmgr_queue_end_retry - Q may connect again now (a connection came up, a
 * delivery, new mail with retry-upon-new-mail, the end of backoff, pmtactl
 * schedule): its retry mode ends and the recipients that waited with it
 * (QRF_QUEUE_DEFERRED: their connection failed) are due at once. KEEP_COUNT
 * keeps the failure count, so that a further failure goes on down the
 * retry-after list. Cheap when Q is not in retry mode (the hot path).
 */
void
qmgr_queue_end_retry(struct qqueue *q, int keep_count)
{
    if (q->retry_until_ms == 0 && q->fail_count == 0)
        return;
    q->retry_until_ms = 0;
    if (!keep_count)
        q->fail_count = 0;
    if (qmgr_defer_due_now(q, qmgr_tick_now(), QRF_QUEUE_DEFERRED) > 0)
        qmgr_defer_timer_update();
    qmgr_run_update(q);
    qmgr_dispatch_soon();
}

/* qmgr_ready_arrive - a recipient of a newly scanned message: push it, and mark the queue live */
void
qmgr_ready_arrive(struct qqueue *q, uint32_t r)
{
    q->last_arrival_ms = qmgr_now_ms();
    /* retry-upon-new-mail: new mail ends the wait of a queue in retry mode (the
       failure count stays, so a new failure goes on with the retry-after list) */
    if (q->retry_until_ms > q->last_arrival_ms && !q->feed_held &&
        qmgr_queue_num(q, CFG_D_RETRY_UPON_NEW_MAIL, 0)) {
        msg_info("queue %s leaves retry mode: new mail (retry-upon-new-mail)", q->name);
        qmgr_queue_end_retry(q, 1);
    }
    qmgr_ready_push(q, r);
}

/* qmgr_ready_push_front - a recipient that comes back from a dead process goes first */
void
qmgr_ready_push_front(struct qqueue *q, uint32_t r)
{
    q = qmgr_queue_route(q);
    S.rcpt[r].queue = q->id;
    S.rcpt[r].state = QR_READY;
    S.rcpt[r].next = q->ready_head;
    q->ready_head = r;
    if (q->ready_tail == QNIL)
        q->ready_tail = r;
    if (q->nready++ == 0)
        qmgr_run_update(q);
}

uint32_t
qmgr_ready_peek(struct qqueue *q)
{
    return q->ready_head;
}

uint32_t
qmgr_ready_pop(struct qqueue *q)
{
    uint32_t r = q->ready_head;

    if (r == QNIL)
        return QNIL;
    q->ready_head = S.rcpt[r].next;
    if (q->ready_head == QNIL)
        q->ready_tail = QNIL;
    S.rcpt[r].next = QNIL;
    if (--q->nready == 0)
        qmgr_run_update(q);
    return r;
}

/* --- the deferred heap ----------------------------------------------------------------- */

static int
heap_less(uint32_t a, uint32_t b)
{
    const struct qrcpt *x = &S.rcpt[a], *y = &S.rcpt[b];

    if (x->due != y->due)
        return x->due < y->due;
    if (x->msg != y->msg)
        return x->msg < y->msg;
    return x->index < y->index;
}

static void
heap_swap(uint32_t i, uint32_t j)
{
    uint32_t t = S.heap[i];

    S.heap[i] = S.heap[j];
    S.heap[j] = t;
}

void
qmgr_defer_push(uint32_t r, uint32_t due_tick)
{
    uint32_t i;

    S.rcpt[r].state = QR_DEFERRED;
    S.rcpt[r].due = due_tick;
    S.queues[S.rcpt[r].queue]->ndeferred++;
    if (S.nheap == S.heap_cap) {
        S.heap_cap = S.heap_cap ? S.heap_cap * 2 : 1024;
        S.heap = xreallocarray(S.heap, S.heap_cap, sizeof(*S.heap));
    }
    i = S.nheap++;
    S.heap[i] = r;
    while (i > 0 && heap_less(S.heap[i], S.heap[(i - 1) / 2])) {
        heap_swap(i, (i - 1) / 2);
        i = (i - 1) / 2;
    }
}

static void
heap_sift_down(uint32_t i)
{
    for (;;) {
        uint32_t l = 2 * i + 1, rr = l + 1, m = i;
        if (l < S.nheap && heap_less(S.heap[l], S.heap[m]))
            m = l;
        if (rr < S.nheap && heap_less(S.heap[rr], S.heap[m]))
            m = rr;
        if (m == i)
            break;
        heap_swap(i, m);
        i = m;
    }
}

static void
heap_pop_top(void)
{
    S.heap[0] = S.heap[--S.nheap];
    heap_sift_down(0);
}

/* qmgr_defer_take_queue - see qmgr.h (pmtactl delete); O(deferred recipients) */
uint32_t
qmgr_defer_take_queue(struct qqueue *q, uint32_t **out)
{
    uint32_t kept = 0, n = 0;

    *out = NULL;
    for (uint32_t i = 0; i < S.nheap; i++) {
        uint32_t r = S.heap[i];

        if (S.rcpt[r].queue == q->id) {
            *out = xreallocarray(*out, n + 1, sizeof **out);
            (*out)[n++] = r;
        } else {
            S.heap[kept++] = r;
        }
    }
    S.nheap = kept;
    q->ndeferred -= n;
    for (uint32_t i = S.nheap / 2; n > 0 && i-- > 0;)
        heap_sift_down(i);
    return n;
}

/* qmgr_defer_due_now - see qmgr.h (pmtactl schedule, the end of backoff); O(deferred) */
uint32_t
qmgr_defer_due_now(struct qqueue *q, uint32_t now_tick, uint8_t only)
{
    uint32_t n = 0;
    uint8_t clear = only ? only : 0xFF;

    if (clear & QRF_BACKOFF_DEFERRED)
        clear |= QRF_BACKOFF_TRIES;
    for (uint32_t i = 0; i < S.nheap; i++) {
        struct qrcpt *r = &S.rcpt[S.heap[i]];

        if (r->queue != q->id || (only && !(r->flags & only)) || (r->flags & QRF_JOB_HELD))
            continue;
        r->flags &= (uint8_t)~clear;
        if (r->due > now_tick) {
            r->due = now_tick;
            n++;
        }
    }
    for (uint32_t i = S.nheap / 2; n > 0 && i-- > 0;)
        heap_sift_down(i);
    return n;
}

/* qmgr_defer_pop_due - the earliest deferred recipient if it is due at NOW_TICK, else QNIL */
uint32_t
qmgr_defer_pop_due(uint32_t now_tick)
{
    uint32_t r;

    if (S.nheap == 0 || S.rcpt[S.heap[0]].due > now_tick)
        return QNIL;
    r = S.heap[0];
    heap_pop_top();
    S.queues[S.rcpt[r].queue]->ndeferred--;
    return r;
}

uint32_t
qmgr_defer_next_due(void)
{
    return S.nheap ? S.rcpt[S.heap[0]].due : UINT32_MAX;
}

void
qmgr_heap_free(void)
{
    free(S.heap);
    free(S.rcpt);
    free(S.msg);
    free(S.msg_free);
    S.heap = NULL;
    S.rcpt = NULL;
    S.msg = NULL;
    S.msg_free = NULL;
}
