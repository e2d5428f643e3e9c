/*
 * qmgr_rollup.c - which queue a domain's mail joins: its own, an MX rollup's
 *                 or a queue-to target's
 *
 * A queue key is DESTINATION/VMTA. The queue store names each recipient's
 * queue by its domain ("gmail.com/vmta1": cleanup writes it before any DNS
 * lookup); qmgr maps that domain queue to its destination when the recipient
 * joins the schedule (qmgr_sched.c add_sched), and the recipient lives in the
 * destination's queue from then on:
 *   - queue-to NAME (a static merge, no DNS): NAME/VMTA;
 *   - else, unless disable-mx-rollup, an smtp-hosts route or an IP literal:
 *     the domain's MX records; when one of its most preferred hosts matches an
 *     <mx-rollup-list> line or a built-in entry (cfg_mx_rollup), ROLLUP/VMTA;
 *   - else the domain's own queue.
 * So every Google-hosted domain shares google.rollup/VMTA: one connection
 * budget, one rate and one backoff mode, set in <domain google.rollup>.
 *
 * Why qmgr looks the MX records up itself: the queue decides the shaping, so
 * it must be known before the first connection; smtp-out only learns the MX
 * when it connects. cleanup could look it up when it queues a message, but
 * that puts DNS on the accept path (every 250 would wait for it), writes a
 * routing decision into the store that goes stale with the DNS, and still
 * needs re-evaluation somewhere. qmgr runs smtp-out's resolver
 * (smtp-out/mxdns.c, linked in as pmtactl resolve links it) on the
 * configured name servers (a change of name-server needs a restart, as for
 * smtp-out), asks it once per domain and keeps the answer for its TTL
 * (MIN_TTL_S..MAX_TTL_S):
 *   - the first lookup of a domain holds its queues (no connection) until the
 *     answer or HOLD_MS, so that no mail slips past a rollup's limits; a
 *     failure or a timeout leaves the domain on its own queue (smtp-out then
 *     meets the same trouble, and retry-after-dns-error applies) and asks
 *     again after FAIL_TTL_S;
 *   - a later lookup (the TTL ran out) routes by the old answer meanwhile; a
 *     new answer routes new mail, and what still waits in the domain's own
 *     queue, to the new destination;
 *   - a reload decides again from the answers kept (queue-to, the lists and
 *     disable-mx-rollup may have changed); a restart looks every domain up.
 * At most MAX_INFLIGHT lookups run at once; the others wait their turn, so a
 * restart with many domains does not flood the name server.
 *
 * A recipient already in a rollup's queue stays there if its domain leaves
 * the rollup. A rollup queue's connections take their settings from the
 * rollup's <domain> block and their route (MX) from the member domain that
 * joined it last (route_domain): the provider's MX, whichever member it is.
 *
 * Owns: the resolver, the table of domain routes (one per recipient domain,
 * shared by its virtual MTAs' queues), the lookups waiting to start, the
 * hold timer.
 * SECURITY: MX names come from DNS, bounded by smtp-out/mxdns.c; they are only
 * matched (fnmatch) and logged through msg_printable().
 */
#include "config.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "mxdns.h"
#include "mxroute.h"
#include "msg.h"
#include "qmgr.h"
#include "qmgr_table.h"
#include "worker.h"
#include "xalloc.h"

#define HOLD_MS      2000u /* the longest the first lookup holds a domain's mail */
#define MIN_TTL_S    60u
#define MAX_TTL_S    3600u
#define FAIL_TTL_S   60u
#define NEGATIVE_TTL 300u /* no such domain, no MX: ask again after this */
#define MAX_INFLIGHT 64u
#define TICK_MS      250u
#define MX_KEPT      4 /* most preferred MX names kept for a reload to match again */

enum route_kind { ROUTE_SELF, ROUTE_QUEUE_TO, ROUTE_BY_MX };

struct qroute {
    struct qtab_entry e;  /* first: the table's link; its key is the domain */
    const char *domain;   /* e.key */
    enum route_kind kind; /* for the configuration of SERIAL */
    uint64_t serial;
    const char *dest; /* queue-to or rollup name (interned); "" = the domain itself */
    /* ROUTE_BY_MX: the last answer */
    int answered; /* an answer (or a failure) came */
    char *mx;     /* its most preferred hosts, NUL-separated */
    unsigned nmx;
    uint64_t expires_ms;    /* ask again after this */
    int looking;            /* a lookup in flight or waiting */
    uint64_t hold_until_ms; /* the first lookup holds the mail until then */
    /* the domain's queues (one per virtual MTA) */
    uint32_t *queues;
    uint32_t nqueues;
    struct qroute *wait_next; /* lookups waiting to start */
};

static struct {
    struct mxdns *dns;
    struct qtab table; /* routes by domain */
    struct qroute *wait_head, *wait_tail;
    unsigned inflight;
    struct qroute **holding; /* routes whose first lookup holds mail */
    uint32_t nholding, holding_cap;
    int tick_on, started;
} R;
static uv_timer_t r_tick; /* outside R: it may still be closing when R is freed */

static void lookup_start(struct qroute *rt);

/* Destination names, interned: a few (rollups, queue-to targets), kept until exit. */
static const char NO_DEST[] = ""; /* the domain itself */
static char **names;
static uint32_t nnames;

/* intern - NAME (lower case) as a string that lives until qmgr_rollup_free() */
static const char *
intern(const char *name)
{
    char *copy;

    if (!*name)
        return NO_DEST;
    for (uint32_t i = 0; i < nnames; i++)
        if (strcasecmp(names[i], name) == 0)
            return names[i];
    copy = xstrdup(name);
    for (char *p = copy; *p; p++)
        *p = (char)tolower((unsigned char)*p);
    names = xreallocarray(names, nnames + 1, sizeof *names);
    names[nnames++] = copy;
    return copy;
}

/* --- the table ------------------------------------------------------------------------- */

/* route_of - the route of Q's domain, created on first use; Q is one of its queues */
static struct qroute *
route_of(struct qqueue *q)
{
    struct qroute *rt;

    if (q->route)
        return q->route;
    if ((rt = (struct qroute *)qtab_find(&R.table, q->domain)) == NULL) {
        rt = xcalloc(1, sizeof *rt);
        rt->domain = rt->e.key = xstrdup(q->domain);
        qtab_add(&R.table, &rt->e);
    }
    rt->queues = xreallocarray(rt->queues, rt->nqueues + 1, sizeof *rt->queues);
    rt->queues[rt->nqueues++] = q->id;
    q->route = rt;
    return rt;
}

/* --- deciding ----------------------------------------------------------------------------- */

/* is_ip_literal - "[192.0.2.1]", "[IPv6:...]": no MX to look up */
static int
is_ip_literal(const char *domain)
{
    return domain[0] == '[';
}

/*
 * decide_static - what the configuration says about RT's domain (via Q's
 * settings): queue-to, or no rollup at all, or ask the DNS
 */
static void
decide_static(struct qroute *rt, struct qqueue *q)
{
    const struct cfg_value *to = qmgr_queue_setting(q, CFG_D_QUEUE_TO);

    rt->serial = S.cfg_serial;
    rt->dest = NO_DEST;
    if (to && *cfg_str(S.cfg, to->text) && strcasecmp(cfg_str(S.cfg, to->text), rt->domain) != 0) {
        rt->kind = ROUTE_QUEUE_TO;
        rt->dest = intern(cfg_str(S.cfg, to->text));
    } else if (qmgr_queue_num(q, CFG_D_DISABLE_MX_ROLLUP, 0) ||
               qmgr_queue_setting(q, CFG_D_SMTP_HOSTS) != NULL || is_ip_literal(rt->domain) ||
               R.dns == NULL) {
        rt->kind = ROUTE_SELF;
    } else {
        rt->kind = ROUTE_BY_MX;
    }
}

/* match_mx - RT's rollup from the MX names kept (the configuration may be new) */
static void
match_mx(struct qroute *rt)
{
    const char *name = NULL, *mx = rt->mx;

    for (unsigned i = 0; i < rt->nmx && name == NULL; i++, mx += strlen(mx) + 1)
        name = cfg_mx_rollup(S.cfg, mx);
    rt->dest = intern(name ? name : "");
}

/* dest_queue - the queue Q's recipients go to under RT (Q itself for no destination) */
static struct qqueue *
dest_queue(struct qroute *rt, struct qqueue *q)
{
    char name[1200];
    int n;

    if (!rt->dest[0])
        return q;
    n = snprintf(name, sizeof name, "%s/%s", rt->dest, q->vmta);
    if (n < 0 || (size_t)n >= sizeof name)
        return q;
    return qmgr_queue_get(name, (size_t)n);
}

/* join - Q's recipients go to DQ from now on: DQ lists Q's domain among its members (and Q's
 * old destination no longer does) */
static void
join(struct qroute *rt, struct qqueue *q, struct qqueue *dq)
{
    struct qqueue *old = q->dest;
    uint32_t i;

    if (old && old != dq) /* it leaves its old destination's members */
        for (i = 0; i < old->nmembers; i++)
            if (old->members[i] == q) {
                old->members[i] = old->members[--old->nmembers];
                break;
            }
    q->dest = dq == q ? NULL : dq;
    if (dq == q)
        return;
    if (rt->kind == ROUTE_BY_MX)
        dq->route_domain = q->domain;
    for (i = 0; i < dq->nmembers && dq->members[i] != q; i++)
        ;
    if (i == dq->nmembers) {
        dq->members = xreallocarray(dq->members, dq->nmembers + 1, sizeof *dq->members);
        dq->members[dq->nmembers++] = q;
    }
}

/*
 * settle - Q follows RT's current answer: no longer held; what waits in Q
 * moves to its destination
 */
static void
settle(struct qroute *rt, struct qqueue *q)
{
    struct qqueue *dq = dest_queue(rt, q);
    uint32_t moved;

    q->route_held = 0;
    q->dest_serial = 0; /* the next recipient takes the slow path once */
    join(rt, q, dq);
    if (dq != q && (moved = qmgr_queue_move(q, dq)) > 0)
        msg_debug("queue %s: %u recipient(s) join %s", q->name, moved, dq->name);
    qmgr_run_update(q);
    qmgr_run_update(dq);
}

static void
settle_all(struct qroute *rt)
{
    for (uint32_t i = 0; i < rt->nqueues; i++)
        settle(rt, S.queues[rt->queues[i]]);
    qmgr_dispatch_soon();
}

/* --- holding ------------------------------------------------------------------------------ */

static void on_tick(uv_timer_t *t);

static void
hold(struct qroute *rt)
{
    rt->hold_until_ms = qmgr_now_ms() + HOLD_MS;
    if (R.nholding == R.holding_cap) {
        R.holding_cap = R.holding_cap ? R.holding_cap * 2 : 64;
        R.holding = xreallocarray(R.holding, R.holding_cap, sizeof *R.holding);
    }
    R.holding[R.nholding++] = rt;
    if (!R.tick_on) {
        uv_timer_start(&r_tick, on_tick, TICK_MS, TICK_MS);
        R.tick_on = 1;
    }
}

static void
unhold(struct qroute *rt)
{
    for (uint32_t i = 0; i < R.nholding; i++)
        if (R.holding[i] == rt) {
            R.holding[i] = R.holding[--R.nholding];
            break;
        }
    rt->hold_until_ms = 0;
    if (R.nholding == 0 && R.tick_on) {
        uv_timer_stop(&r_tick);
        R.tick_on = 0;
    }
}

/* on_tick - a first lookup that takes too long stops holding its domain's mail */
static void
on_tick(uv_timer_t *t)
{
    uint64_t now = qmgr_now_ms();

    (void)t;
    for (uint32_t i = 0; i < R.nholding;) {
        struct qroute *rt = R.holding[i];

        if (now < rt->hold_until_ms) {
            i++;
            continue;
        }
        msg_info("domain %s: no MX answer after %u ms; its mail goes on its own queue meanwhile",
                 rt->domain, HOLD_MS);
        unhold(rt);
        settle_all(rt);
    }
}

/* --- lookups ------------------------------------------------------------------------------ */

/* most_preferred - keep the names of ANSWER's most preferred hosts in RT */
static void
most_preferred(struct qroute *rt, const struct mxdns_mx *mx, size_t n)
{
    size_t len = 0, k;

    for (k = 0; k < n && k < MX_KEPT && mx[k].pref == mx[0].pref; k++)
        len += strlen(mx[k].name) + 1;
    free(rt->mx);
    rt->mx = xmalloc(len ? len : 1);
    rt->nmx = (unsigned)k;
    for (size_t i = 0, off = 0; i < k; i++) {
        memcpy(rt->mx + off, mx[i].name, strlen(mx[i].name) + 1);
        off += strlen(mx[i].name) + 1;
    }
}

static void
on_mx(void *arg, enum mxdns_status status, const char *why, const struct mxdns_mx *mx, size_t n,
      unsigned ttl)
{
    struct qroute *rt = arg;
    const char *old = rt->dest;
    char shown[300];
    int first = !rt->answered;

    R.inflight--;
    rt->looking = 0;
    if (status == MXDNS_CANCELLED)
        return;
    rt->answered = 1;
    if (status == MXDNS_OK) {
        most_preferred(rt, mx, n);
        ttl = ttl < MIN_TTL_S ? MIN_TTL_S : ttl > MAX_TTL_S ? MAX_TTL_S : ttl;
    } else if (status == MXDNS_TEMPFAIL) {
        ttl = FAIL_TTL_S; /* keep the hosts of an earlier answer, if any */
        msg_debug("domain %s: MX lookup failed (%s); not rolled up for now", rt->domain,
                  msg_printable(shown, sizeof shown, why, strlen(why)));
    } else {
        rt->nmx = 0;
        ttl = NEGATIVE_TTL;
    }
    rt->expires_ms = qmgr_now_ms() + (uint64_t)ttl * 1000;
    if (rt->kind == ROUTE_BY_MX)
        match_mx(rt);
    if (rt->dest[0] && first)
        msg_debug("domain %s rolls up into %s (MX %s)", rt->domain, rt->dest,
                  msg_printable(shown, sizeof shown, rt->mx, strlen(rt->mx)));
    else if (rt->dest[0] && old != rt->dest)
        msg_info("domain %s now rolls up into %s (MX %s)", rt->domain, rt->dest,
                 msg_printable(shown, sizeof shown, rt->mx, strlen(rt->mx)));
    else if (!first && old[0] && !rt->dest[0])
        msg_info("domain %s leaves rollup %s", rt->domain, old);
    if (rt->hold_until_ms)
        unhold(rt);
    if (first || old != rt->dest)
        settle_all(rt);
    /* start the next waiting lookup */
    while (R.wait_head && R.inflight < MAX_INFLIGHT) {
        struct qroute *next = R.wait_head;

        R.wait_head = next->wait_next;
        if (R.wait_head == NULL)
            R.wait_tail = NULL;
        next->wait_next = NULL;
        lookup_start(next);
    }
}

static void
lookup_start(struct qroute *rt)
{
    R.inflight++;
    mxdns_mx(R.dns, rt->domain, on_mx, rt);
}

/* ask - look RT's domain up (now, or when a slot is free); the first time its mail waits */
static void
ask(struct qroute *rt)
{
    if (rt->looking || !R.started || R.dns == NULL)
        return;
    rt->looking = 1;
    if (!rt->answered)
        hold(rt);
    if (R.inflight < MAX_INFLIGHT) {
        lookup_start(rt); /* may answer at once (cached) */
        return;
    }
    if (R.wait_tail)
        R.wait_tail->wait_next = rt;
    else
        R.wait_head = rt;
    R.wait_tail = rt;
}

/* --- the scheduler's side ------------------------------------------------------------------ */

/* qmgr_rollup_dest_slow - see qmgr.h */
struct qqueue *
qmgr_rollup_dest_slow(struct qqueue *q)
{
    struct qroute *rt = route_of(q);
    uint64_t now = qmgr_now_ms();
    struct qqueue *dq;

    if (rt->serial != S.cfg_serial) {
        decide_static(rt, q);
        if (rt->kind == ROUTE_BY_MX && rt->answered)
            match_mx(rt);
        else if (rt->kind == ROUTE_BY_MX)
            rt->dest = NO_DEST;
    }
    if (rt->kind == ROUTE_BY_MX && !rt->looking && (!rt->answered || now >= rt->expires_ms))
        ask(rt);
    if (rt->kind == ROUTE_BY_MX && !rt->answered && rt->hold_until_ms) {
        q->route_held = 1; /* its mail waits in it, off the run lists */
        return q;
    }
    dq = dest_queue(rt, q);
    if (dq != q->dest && !(dq == q && q->dest == NULL))
        settle(rt, q);
    else
        q->route_held = 0;
    q->dest_serial = S.cfg_serial;
    q->dest_until_ms = rt->kind != ROUTE_BY_MX ? UINT64_MAX
                       : rt->looking           ? now + 1000 /* a refresh in flight */
                                               : rt->expires_ms;
    return q->dest ? q->dest : q;
}

/* qmgr_rollup_start - the resolver (qmgr's own, on the configured name servers) */
void
qmgr_rollup_start(void)
{
    char servers[1024];
    struct mxdns_options o = { .timeout_ms = 1500, .tries = 2 };
    int err;

    mxdns_name_servers(S.cfg, servers, sizeof servers);
    o.name_servers = servers[0] ? servers : NULL;
    if ((err = mxdns_create(worker_loop(), &o, &R.dns)) < 0) {
        msg_warn("cannot start the DNS resolver (name-server %s): %s; no MX rollup",
                 servers[0] ? servers : "system", strerror(-err));
        R.dns = NULL;
    }
    uv_timer_init(worker_loop(), &r_tick);
    R.started = 1;
}

/* qmgr_rollup_stop - cancel lookups and the timer (shutdown); routes stay until _free */
void
qmgr_rollup_stop(void)
{
    if (!R.started)
        return;
    R.started = 0;
    R.wait_head = R.wait_tail = NULL;
    if (R.dns)
        mxdns_destroy(R.dns); /* pending lookups complete with MXDNS_CANCELLED */
    R.dns = NULL;
    uv_close((uv_handle_t *)&r_tick, NULL);
}

static void
free_route(struct qtab_entry *e)
{
    struct qroute *rt = (struct qroute *)e;

    free(rt->e.key);
    free(rt->queues);
    free(rt->mx);
    free(rt);
}

void
qmgr_rollup_free(void)
{
    qtab_free(&R.table, free_route);
    free(R.holding);
    memset(&R, 0, sizeof R);
    for (uint32_t i = 0; i < nnames; i++)
        free(names[i]);
    free(names);
    names = NULL;
    nnames = 0;
}

/* qmgr_rollup_kind - "rollup", "queue-to" or NULL: what makes DQ a destination of other domains */
const char *
qmgr_rollup_kind(const struct qqueue *dq)
{
    const struct qroute *rt;

    if (dq->nmembers == 0 || (rt = dq->members[0]->route) == NULL)
        return NULL;
    return rt->kind == ROUTE_QUEUE_TO ? "queue-to" : rt->kind == ROUTE_BY_MX ? "rollup" : NULL;
}
