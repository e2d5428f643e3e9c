/*
 * qmgr_vmta.c - limits that span every queue of one virtual MTA
 *
 * Some limits are not per queue (domain/vmta) but per virtual MTA, across all
 * its destination domains:
 *   - `max-smtp-out N` inside <virtual-mta NAME> (PowerMTA: connections of
 *     all of this VMTA's queues together);
 *   - the seed's <sender ADDR> block: `max-conn N` and `max-msg-rate RATE`
 *     apply to that sender's mail. cleanup routes the sender's mail to the
 *     block's `vmta`, so qmgr enforces them on that virtual MTA. Give such a
 *     sender a virtual MTA of its own (as the seed does): every message on the
 *     VMTA counts. When several <sender> blocks name one VMTA, the strictest
 *     limit wins.
 * And it picks the source address of each new connection: the virtual MTA's
 * smtp-source-host lines in turn (round-robin across all its queues),
 * skipping addresses disable-source-ip has disabled for the queue.
 * Queues find their group through group(); groups live as long as qmgr
 * and are re-read from each configuration generation.
 *
 * Owns: the group table and each group's limiters (qmgr_limit.h) and
 * round-robin position.
 * SECURITY: none (numbers from the configuration only).
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "msg.h"
#include "xalloc.h"
#include "qmgr.h"
#include "qmgr_cluster.h"

struct qvmta {
    char *name;
    uint64_t serial;   /* S.cfg_serial the limits were read for */
    struct qlim conns; /* connections of all its queues */
    struct qlim msgs;  /* recipients of all its queues */
    uint32_t rr_next;  /* round-robin position in the smtp-source-host list */
};

static struct qvmta **groups;
static uint32_t ngroups;

/* stricter_rate - the smaller of two rates (count per period), NULL meaning unlimited */
static const struct cfg_value *
stricter_rate(const struct cfg_value *a, const struct cfg_value *b)
{
    if (!a || a->num <= 0)
        return b && b->num > 0 ? b : NULL;
    if (!b || b->num <= 0)
        return a;
    /* a->num / a->num2 < b->num / b->num2, in integers */
    return a->num * b->num2 <= b->num * a->num2 ? a : b;
}

static int64_t
stricter_count(int64_t a, int64_t b)
{
    if (a <= 0)
        return b > 0 ? b : 0;
    return b > 0 && b < a ? b : a;
}

/* read_limits - the group's limits in S.cfg */
static void
read_limits(struct qvmta *g)
{
    const struct cfg *c = S.cfg;
    uint32_t it = 0, s = cfg_find_scope(c, CFG_S_VMTA, g->name);
    const struct cfg_value *v, *rate = NULL;
    const char *conn_from = "max-smtp-out", *rate_from = NULL;
    int64_t max_conn = 0;
    int conn_local = 0;
    char basis[QLIM_BASIS_MAX], text[48];

    if (s != CFG_NONE && (v = cfg_scope_get(c, s, CFG_D_VMTA_MAX_SMTP_OUT)) != NULL) {
        max_conn = v->num;
        conn_local = (v->flags & CFG_VALUE_LOCAL) != 0;
    }
    while ((s = cfg_next_scope(c, CFG_S_SENDER, &it)) != CFG_NONE) {
        const struct cfg_value *r;

        v = cfg_scope_get(c, s, CFG_D_SENDER_VMTA);
        if (!v || strcmp(cfg_str(c, v->text), g->name) != 0)
            continue;
        if ((v = cfg_scope_get(c, s, CFG_D_SENDER_MAX_CONN)) != NULL &&
            stricter_count(max_conn, v->num) != max_conn) {
            max_conn = v->num;
            conn_local = (v->flags & CFG_VALUE_LOCAL) != 0;
            conn_from = "max-conn";
        }
        r = stricter_rate(rate, cfg_scope_get(c, s, CFG_D_SENDER_MAX_MSG_RATE));
        if (r != rate)
            rate_from = cfg_str(c, c->scopes[s].name);
        rate = r;
    }
    snprintf(basis, sizeof basis, "%s %lld of virtual-mta %s", conn_from, (long long)max_conn,
             g->name);
    qmgr_cluster_adopt(&g->conns, conn_local);
    qlim_set(&g->conns, max_conn, 0, basis);
    qmgr_cluster_adopt(&g->msgs, rate && (rate->flags & CFG_VALUE_LOCAL));
    if (rate) {
        snprintf(basis, sizeof basis, "max-msg-rate %s of <sender %s>",
                 cfg_format_value(c, rate, text, sizeof text), rate_from);
        qlim_set(&g->msgs, rate->num, rate->num2, basis);
    } else {
        qlim_set(&g->msgs, 0, 0, NULL);
    }
    g->serial = S.cfg_serial;
}

/* group - the group of queue Q, created on first use, limits current */
static struct qvmta *
group(struct qqueue *q)
{
    struct qvmta *g = q->vg;

    if (g == NULL) {
        for (uint32_t i = 0; i < ngroups && !g; i++)
            if (strcmp(groups[i]->name, q->vmta) == 0)
                g = groups[i];
        if (g == NULL) {
            g = xcalloc(1, sizeof(*g));
            g->name = xstrdup(q->vmta);
            qlim_init(&g->conns, QLIM_VMTA, QLIM_LEASE, QLIM_CONNS, g->name);
            qlim_init(&g->msgs, QLIM_VMTA, QLIM_RATE, QLIM_MSGS, g->name);
            groups = xreallocarray(groups, ngroups + 1, sizeof(*groups));
            groups[ngroups++] = g;
        }
        q->vg = g;
    }
    if (g->serial != S.cfg_serial)
        read_limits(g);
    return g;
}

/* qmgr_vmta_conn_limit - see qmgr.h */
struct qlim *
qmgr_vmta_conn_limit(struct qqueue *q)
{
    return &group(q)->conns;
}

/* qmgr_vmta_msg_limit - see qmgr.h */
struct qlim *
qmgr_vmta_msg_limit(struct qqueue *q)
{
    return &group(q)->msgs;
}

/* --- source addresses (smtp-source-host, round-robin per virtual MTA) -------------------- */

/* source_host_scope - the scope whose smtp-source-host lines apply to VMTA */
static uint32_t
source_host_scope(const char *vmta)
{
    uint32_t s = strcmp(vmta, "{default}") == 0 ? CFG_NONE
                                                : cfg_find_scope(S.cfg, CFG_S_VMTA, vmta);
    uint32_t it = 0;

    if (s != CFG_NONE && cfg_scope_next(S.cfg, s, CFG_D_SMTP_SOURCE_HOST, &it))
        return s;
    return 0;
}

/* source_host - the Ith smtp-source-host value of SCOPE, or NULL */
static const struct cfg_value *
source_host(uint32_t scope, uint32_t i)
{
    const struct cfg_value *v;
    uint32_t it = 0;

    while ((v = cfg_scope_next(S.cfg, scope, CFG_D_SMTP_SOURCE_HOST, &it)) != NULL && i-- > 0)
        ;
    return v;
}

/* source_ip_of - the IP of an "IP HOSTNAME" value, into OUT */
static const char *
source_ip_of(const struct cfg_value *v, char *out, size_t size)
{
    const char *text = cfg_str(S.cfg, v->text);
    size_t len = strcspn(text, " \t");

    snprintf(out, size, "%.*s", (int)(len < size ? len : size - 1), text);
    return out;
}

/*
 * usable_source - index of the first source of Q's VMTA from START (mod
 * their number, round-robin) that disable-source-ip has not disabled and
 * FILTER (may be NULL) accepts, -1 if none; N gets how many there are.
 * O(sources), and just a count while nothing is disabled or filtered.
 */
static int
usable_source(struct qqueue *q, uint32_t start, uint32_t *n, qmgr_source_filter filter, void *arg)
{
    uint32_t scope = source_host_scope(q->vmta), it = 0, i;
    int first = -1, any_disabled = qmgr_source_any_disabled(q);
    const struct cfg_value *v;
    char ip[64];

    for (*n = 0; cfg_scope_next(S.cfg, scope, CFG_D_SMTP_SOURCE_HOST, &it);)
        (*n)++;
    if (!any_disabled && (filter == NULL || *n == 0))
        return *n ? (int)(start % *n) : 0;
    if (*n == 0) /* the implicit source: disabled as a whole */
        return -1;
    start %= *n;
    for (it = 0, i = 0; (v = cfg_scope_next(S.cfg, scope, CFG_D_SMTP_SOURCE_HOST, &it)); i++) {
        source_ip_of(v, ip, sizeof ip);
        if ((any_disabled && qmgr_source_disabled(q, ip)) || (filter && !filter(q, ip, arg)))
            continue;
        if (i >= start)
            return (int)i; /* the first usable one from START on */
        if (first < 0)
            first = (int)i; /* else wrap around to the first usable one */
    }
    return first;
}

/* qmgr_vmta_source_usable - see qmgr.h */
int
qmgr_vmta_source_usable(struct qqueue *q)
{
    uint32_t n;

    return usable_source(q, 0, &n, NULL, NULL) >= 0;
}

/* qmgr_vmta_has_source - see qmgr.h */
int
qmgr_vmta_has_source(const char *vmta, const char *ip)
{
    uint32_t scope = source_host_scope(vmta), it = 0;
    const struct cfg_value *v;
    char mine[64];

    while (scope != 0 && (v = cfg_scope_next(S.cfg, scope, CFG_D_SMTP_SOURCE_HOST, &it)) != NULL)
        if (strcmp(source_ip_of(v, mine, sizeof mine), ip) == 0)
            return 1;
    return 0;
}

/* qmgr_vmta_source_any - see qmgr.h */
int
qmgr_vmta_source_any(struct qqueue *q, qmgr_source_filter filter, void *arg)
{
    uint32_t n;

    return usable_source(q, 0, &n, filter, arg) >= 0;
}

/* qmgr_vmta_pick_source - see qmgr.h */
int
qmgr_vmta_pick_source(struct qqueue *q, qmgr_source_filter filter, void *arg, char **source_ip,
                      char **helo)
{
    static struct cfg_resolved res;
    uint32_t n;
    int i = usable_source(q, group(q)->rr_next, &n, filter, arg);
    const struct cfg_value *v;

    if (n > 0 && i < 0)
        return 0;
    if (n > 0) {
        const char *text = cfg_str(S.cfg,
                                   source_host(source_host_scope(q->vmta), (uint32_t)i)->text);
        size_t iplen = strcspn(text, " \t");
        const char *host = text + iplen + strspn(text + iplen, " \t");

        group(q)->rr_next = (uint32_t)i + 1; /* the next one starts after this one */
        *source_ip = xstrndup(text, iplen);
        *helo = xstrndup(host, strcspn(host, " \t"));
        return 1;
    }
    *source_ip = xstrdup("");
    if (cfg_resolve_vmta(S.cfg, q->vmta, &res) < 0)
        cfg_resolve_vmta(S.cfg, NULL, &res);
    v = res.v[CFG_D_HOST_NAME];
    *helo = xstrdup(v && !(v->flags & CFG_VALUE_UNSET) ? cfg_str(S.cfg, v->text) : "");
    return 1;
}

/* qmgr_vmta_sources - see qmgr.h */
uint32_t
qmgr_vmta_sources(const char *vmta, char (*ips)[48], uint32_t max)
{
    uint32_t scope = source_host_scope(vmta), it = 0, n = 0;
    const struct cfg_value *v;

    if (scope == 0) /* no smtp-source-host of its own: the implicit source */
        return 0;
    while ((v = cfg_scope_next(S.cfg, scope, CFG_D_SMTP_SOURCE_HOST, &it)) != NULL)
        if (n < max)
            source_ip_of(v, ips[n++], 48);
    return n;
}

/* qmgr_vmta_connections - see qmgr.h */
uint32_t
qmgr_vmta_connections(const char *vmta)
{
    for (uint32_t i = 0; i < ngroups; i++)
        if (strcmp(groups[i]->name, vmta) == 0)
            return qlim_held(&groups[i]->conns);
    return 0;
}

void
qmgr_vmta_free(void)
{
    for (uint32_t i = 0; i < ngroups; i++) {
        qlim_fini(&groups[i]->conns);
        qlim_fini(&groups[i]->msgs);
        free(groups[i]->name);
        free(groups[i]);
    }
    free(groups);
    groups = NULL;
    ngroups = 0;
}
