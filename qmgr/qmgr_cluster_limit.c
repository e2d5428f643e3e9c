/*
 * qmgr_cluster_limit.c - the shared limiter backend (qmgr_limit.h): each
 *                        limit held once in Redis for every node
 *
 * A node never waits for Redis: it answers room/take/acquire from what
 * Redis granted it ahead of need, asks for more asynchronously when that is
 * gone (room 0, QLIM_WAIT_UNKNOWN), and wakes the scheduler (qlim_wakeup)
 * when the answer comes.
 *
 * Rates. Redis keeps the GCRA's TAT (qmgr_cluster_lua.c) and grants a batch:
 * the units conformant now (as the local backend would), and *slots* T apart
 * from the cluster's TAT reserved at most CL_HORIZON_US ahead. A node uses
 * the units of now until CL_VALID_NS after it asked, and slot i from its time
 * (on its own clock: cl_local_ns) until CL_VALID_NS after it; an unused one
 * is dropped, never saved up. So every unit goes on the wire
 * within CL_VALID_NS of a slot no other node got, and the cluster keeps
 * the local backend's promise (no window of PERIOD above COUNT at the
 * receiver) when T carries CL_VALID_NS beside the pacing margin: T = (PERIOD
 * + QLIM_PACING_MS + CL_VALID_NS) / COUNT, 5 % more than a single host pays
 * on a limit per second, nothing on a limit per minute. The batch a node asks
 * for doubles while it uses whole batches and halves when slots expire, up to
 * a horizon's worth: at 2,000 msg/s one round trip carries ~200 slots. A
 * late send (qlim_sent) paces the node's next unit locally and moves the
 * cluster's TAT with the next request; units taken beyond the slots in hand
 * (a connection that came up with its transaction) are charged the same way.
 * A data volume rate (QLIM_DEBT) asks Redis for a permit while the TAT is
 * due, sends any batch for CL_VALID_NS, and charges the bytes afterwards.
 *
 * Leases. Redis keeps, per limit, the leases of each node (a hash); a node
 * asks for one more when it wants a connection and has no spare, gives back
 * at once what it no longer holds, and its heartbeat (lease-time) keeps
 * them: a node that dies loses them within lease-time, because the next
 * acquire drops holders without a heartbeat.
 *
 * Quotas (warm-up daily caps). Redis counts each window's units; a node
 * takes small batches, gives back what it did not use after CL_QUOTA_IDLE_NS,
 * and keeps its own count (l->used) for its warm-up state.
 *
 * Redis down: every shared limiter answers locally with its share - rates
 * spaced N times wider, COUNT/N leases (at least one), the quota's remainder
 * divided by N - where N is the nodes alive at the last heartbeat. When
 * Redis returns, the leases held are registered again and grants start over.
 *
 * Owns: each shared limiter's struct cl_lim (be_data; freed when forgotten
 * and no reply is awaited), the list of them, the flush and wake timers.
 * SECURITY: none (numbers from the configuration, Redis and the clock).
 */
#include "config.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "msg.h"
#include "qmgr.h"
#include "qmgr_cluster.h"
#include "qmgr_cluster_int.h"
#include "worker.h"
#include "xalloc.h"

#define CL_HORIZON_US    100000u    /* slots reserved at most this far ahead */
#define CL_VALID_NS      50000000u  /* a slot is used at most this long after its time */
#define CL_REFUSED_NS    100000000u /* a refused lease or quota is asked again after */
#define CL_SPARE_NS      200000000u /* a lease granted and not taken goes back after */
#define CL_QUOTA_IDLE_NS 2000000000u
#define CL_QUOTA_BATCH   16u
#define CL_FLUSH_MS      20u
#define CL_KEY_MAX       1200
#define CL_KEY_LIFE_MS   600000u    /* a rate's TAT lives this long past its time */
#define CL_QUOTA_LIFE_MS 259200000u /* a quota window's count: three days */

struct cl_lim {
    struct qlim *l; /* NULL once forgotten: freed when its reply comes */
    char *rkey;     /* without a quota's window */
    struct cl_lim *next, *prev;
    struct cl_lim *dirty_next;
    int dirty, pending;
    uint64_t sent_ns;  /* the request in flight went then */
    uint64_t retry_ns; /* nothing asked before */
    /* rates: NOW_UNITS usable from GOT_NS, and NSLOTS slots from SLOT_NS, l->unit_ns apart */
    uint64_t slot_ns, got_ns;
    uint32_t now_units, nslots, batch;
    int expired;
    uint64_t permit_until_ns;  /* QLIM_DEBT */
    uint64_t charge, charging; /* units to charge, and those the request in flight carries */
    uint64_t down_taken;       /* units sent on the share while Redis was down */
    uint64_t floor_ns;         /* the cluster's TAT should be at least this (a late send) */
    int64_t shared_tat_us;     /* the last TAT Redis told */
    /* leases */
    uint32_t reserved, cluster_held;
    uint64_t reserved_at_ns;
    /* quotas */
    uint64_t quota_window, quota_grant, quota_used, quota_at_ns, give_back, fallback_cap;
};

static struct {
    struct cl_lim *all;
    struct cl_lim *dirty;
    uv_timer_t flush, wake;
    int timers;
    uint64_t wake_at_ns;
} L;

static void request(struct cl_lim *c, uint64_t now);

/* --- bookkeeping ------------------------------------------------------------------------ */

static struct cl_lim *
data(struct qlim *l)
{
    return l->be_data;
}

static const char *
kind_word(const struct qlim *l)
{
    static const char *const rates[] = { "msg", "connect", "volume" };

    switch (l->kind) {
    case QLIM_LEASE:
        return "conns";
    case QLIM_QUOTA:
        return "quota";
    default:
        return rates[l->unit % 3];
    }
}

static void
on_flush(uv_timer_t *t)
{
    struct cl_lim *c = L.dirty;
    uint64_t now = qmgr_now_ns();

    (void)t;
    L.dirty = NULL;
    while (c) {
        struct cl_lim *next = c->dirty_next;

        c->dirty = 0;
        c->dirty_next = NULL;
        if (c->l)
            request(c, now);
        c = next;
    }
}

static void
on_wake(uv_timer_t *t)
{
    (void)t;
    L.wake_at_ns = 0;
    qlim_wakeup();
}

static void
timers_init(void)
{
    if (L.timers)
        return;
    uv_timer_init(worker_loop(), &L.flush);
    uv_timer_init(worker_loop(), &L.wake);
    uv_unref((uv_handle_t *)&L.flush);
    uv_unref((uv_handle_t *)&L.wake);
    L.timers = 1;
}

/* wake_at - the scheduler looks again at AT_NS (a refused request may go again) */
static void
wake_at(uint64_t at_ns)
{
    uint64_t now = qmgr_now_ns();

    timers_init();
    if (L.wake_at_ns && L.wake_at_ns <= at_ns && uv_is_active((uv_handle_t *)&L.wake))
        return;
    L.wake_at_ns = at_ns;
    /* the timer counts from the loop's cached time, which may be behind NOW */
    now -= (now / 1000000 > uv_now(worker_loop()) ? now / 1000000 - uv_now(worker_loop()) : 0) *
           1000000;
    uv_timer_start(&L.wake, on_wake, at_ns > now ? (at_ns - now) / 1000000 + 1 : 0, 0);
}

/* mark - C has something to tell Redis (a charge, a late send, a spare lease) */
static void
mark(struct cl_lim *c)
{
    if (c->dirty)
        return;
    c->dirty = 1;
    c->dirty_next = L.dirty;
    L.dirty = c;
    timers_init();
    if (!uv_is_active((uv_handle_t *)&L.flush))
        uv_timer_start(&L.flush, on_flush, CL_FLUSH_MS, 0);
}

static void
unlist(struct cl_lim *c)
{
    if (c->prev)
        c->prev->next = c->next;
    else if (L.all == c)
        L.all = c->next;
    if (c->next)
        c->next->prev = c->prev;
    c->next = c->prev = NULL;
    if (c->dirty) {
        struct cl_lim **p = &L.dirty;

        while (*p && *p != c)
            p = &(*p)->dirty_next;
        if (*p)
            *p = c->dirty_next;
        c->dirty = 0;
    }
}

static void
cl_free(struct cl_lim *c)
{
    free(c->rkey);
    free(c);
}

/* shares - the nodes this node shares a limit with while Redis is down */
static uint64_t
shares(void)
{
    return cl_alive();
}

/* set_units - L's unit cost for the cluster (slots) and, while Redis is down, its share */
static void
set_units(struct qlim *l)
{
    uint64_t span;

    if (l->kind != QLIM_RATE || l->count <= 0)
        return;
    span = (uint64_t)(l->period_s > 0 ? l->period_s : 1) * 1000000000u + QLIM_PACING_MS * 1000000u +
           CL_VALID_NS;
    l->unit_ns = span / (uint64_t)l->count;
    if (l->unit_ns == 0)
        l->unit_ns = 1;
    if (!cl_up())
        l->unit_ns *= shares();
}

/* --- requests ----------------------------------------------------------------------------- */

static int64_t
num(const redisReply *r)
{
    if (r->type == REDIS_REPLY_INTEGER)
        return (int64_t)r->integer;
    if (r->type == REDIS_REPLY_STRING)
        return (int64_t)strtod(r->str, NULL);
    return 0;
}

/* settle - C's reply came (or Redis went away: R NULL); 0 when C goes on */
static int
settle(struct cl_lim *c, redisReply *r, size_t want)
{
    c->pending = 0;
    if (c->l == NULL) {
        cl_free(c);
        return -1;
    }
    if (r == NULL || r->type != REDIS_REPLY_ARRAY || r->elements < want) {
        c->charge += c->charging;
        c->charging = 0;
        c->retry_ns = qmgr_now_ns() + CL_REFUSED_NS;
        return -1;
    }
    return 0;
}

static void
on_rate(redisReply *r, void *priv)
{
    struct cl_lim *c = priv;
    struct qlim *l;
    int64_t now_n, later, first, now_us;
    uint64_t now = qmgr_now_ns();

    if (settle(c, r, 5) < 0)
        return;
    l = c->l;
    now_n = num(r->element[0]);
    later = num(r->element[1]);
    first = (int64_t)strtod(r->element[2]->str ? r->element[2]->str : "0", NULL);
    now_us = (int64_t)strtod(r->element[3]->str ? r->element[3]->str : "0", NULL);
    c->shared_tat_us = (int64_t)strtod(r->element[4]->str ? r->element[4]->str : "0", NULL);
    cl_clock_sample(now_us, c->sent_ns);
    c->charging = 0;
    if (now_n > 0 && (l->flags & QLIM_DEBT)) {
        c->permit_until_ns = c->sent_ns + CL_VALID_NS;
        qlim_wakeup();
    } else if (now_n > 0 || later > 0) {
        c->now_units = (uint32_t)now_n;
        c->got_ns = c->sent_ns;
        c->slot_ns = cl_local_ns(first);
        c->nslots = (uint32_t)later;
        c->expired = 0;
        qlim_wakeup();
    } else if (c->batch > 0) {
        /* refused: the first slot enters the horizon when the TAT is that near */
        uint64_t at = cl_local_ns(c->shared_tat_us - (int64_t)CL_HORIZON_US);

        if (l->flags & QLIM_DEBT)
            at = cl_local_ns(c->shared_tat_us);
        if (at < now + 2000000)
            at = now + 2000000;
        if (at > now + 500000000)
            at = now + 500000000;
        c->retry_ns = at;
        wake_at(at);
    }
}

/* batch_cap - the slots of one horizon at L's rate (at least 1) */
static uint32_t
batch_cap(const struct qlim *l)
{
    uint64_t n = (uint64_t)CL_HORIZON_US * 1000 / (l->unit_ns ? l->unit_ns : 1);

    return n < 1 ? 1 : n > 100000 ? 100000 : (uint32_t)n;
}

static void
request_rate(struct cl_lim *c, uint64_t now, uint32_t want)
{
    struct qlim *l = c->l;
    char key[CL_KEY_MAX], unit[40], burst[24], wants[24], horizon[24], floor[32], charge[24],
        life[24];
    const char *argv[] = { key,     unit,  burst,  wants,
                           horizon, floor, charge, (l->flags & QLIM_DEBT) ? "1" : "0",
                           life };

    snprintf(key, sizeof key, "%s", c->rkey);
    snprintf(unit, sizeof unit, "%.3f", (double)l->unit_ns / 1000.0);
    snprintf(burst, sizeof burst, "%" PRId64, l->count);
    snprintf(wants, sizeof wants, "%u", want);
    snprintf(horizon, sizeof horizon, "%u", CL_HORIZON_US);
    snprintf(floor, sizeof floor, "%" PRId64, c->floor_ns ? cl_redis_us(c->floor_ns) : (int64_t)0);
    snprintf(charge, sizeof charge, "%" PRIu64, c->charge);
    snprintf(life, sizeof life, "%u", CL_KEY_LIFE_MS);
    c->sent_ns = now;
    if (cl_eval(CL_SCRIPT_RATE, on_rate, c, 1, 9, argv) < 0)
        return;
    c->pending = 1;
    c->charging = c->charge;
    c->charge = 0;
    c->floor_ns = 0;
}

static void
on_lease(redisReply *r, void *priv)
{
    struct cl_lim *c = priv;
    uint64_t now = qmgr_now_ns();

    if (settle(c, r, 2) < 0)
        return;
    c->cluster_held = (uint32_t)(num(r->element[1]) > 0 ? num(r->element[1]) : 0);
    if (num(r->element[0]) == 1) {
        c->reserved++;
        c->reserved_at_ns = now;
        mark(c); /* a spare not taken goes back (on_flush) */
        qlim_wakeup();
    } else {
        c->retry_ns = now + CL_REFUSED_NS;
        wake_at(c->retry_ns);
    }
}

/* lease_call - OP ("acquire", "release", "set") with N on C's lease hash */
static int
lease_call(struct cl_lim *c, const char *op, uint64_t n, cl_reply_fn *fn)
{
    char k2[300], nk[200], ns[24], life[24];
    const char *argv[] = { c->rkey,   cl_key(k2, sizeof k2, "nodeleases:%s", cl_node()),
                           cl_node(), op,
                           ns,        cl_key(nk, sizeof nk, "node:"),
                           life };

    snprintf(ns, sizeof ns, "%" PRIu64, n);
    snprintf(life, sizeof life, "%" PRIu64, cl_lease_ms() * 4);
    return cl_eval(CL_SCRIPT_LEASE, fn, fn ? c : NULL, 2, 7, argv);
}

static void
on_quota(redisReply *r, void *priv)
{
    struct cl_lim *c = priv;

    if (settle(c, r, 2) < 0)
        return;
    c->charging = 0;
    c->quota_used = (uint64_t)(num(r->element[1]) > 0 ? num(r->element[1]) : 0);
    if (num(r->element[0]) > 0) {
        c->quota_grant += (uint64_t)num(r->element[0]);
        c->quota_at_ns = qmgr_now_ns();
        qlim_wakeup();
    } else {
        c->retry_ns = qmgr_now_ns() + CL_QUOTA_IDLE_NS;
    }
}

static void
request_quota(struct cl_lim *c, uint64_t now, uint64_t want)
{
    struct qlim *l = c->l;
    char key[CL_KEY_MAX + 24], limit[24], wants[24], life[24], back[24], charge[24];
    const char *argv[] = { key, limit, wants, life, back, charge };

    snprintf(key, sizeof key, "%s:%" PRIu64, c->rkey, l->window);
    snprintf(limit, sizeof limit, "%" PRId64, l->count);
    snprintf(wants, sizeof wants, "%" PRIu64, want);
    snprintf(life, sizeof life, "%u", CL_QUOTA_LIFE_MS);
    snprintf(back, sizeof back, "%" PRIu64, c->give_back);
    snprintf(charge, sizeof charge, "%" PRIu64, c->charge);
    c->sent_ns = now;
    if (cl_eval(CL_SCRIPT_QUOTA, on_quota, c, 1, 6, argv) < 0)
        return;
    c->pending = 1;
    c->charging = c->charge;
    c->charge = 0;
    c->give_back = 0;
}

/* request - what C needs from Redis now: more, or only to settle charges and spares */
static void
request(struct cl_lim *c, uint64_t now)
{
    struct qlim *l = c->l;

    if (c->pending || !cl_up() || l == NULL || l->count <= 0)
        return;
    switch (l->kind) {
    case QLIM_LEASE:
        if (c->reserved > l->held && now - c->reserved_at_ns >= CL_SPARE_NS) {
            lease_call(c, "release", c->reserved - l->held, NULL);
            c->reserved = l->held;
        } else if (c->reserved > l->held) {
            mark(c); /* not yet */
        }
        break;
    case QLIM_QUOTA:
        if (c->quota_grant > 0 && now - c->quota_at_ns >= CL_QUOTA_IDLE_NS) {
            c->give_back += c->quota_grant;
            c->quota_grant = 0;
        }
        if (c->give_back || c->charge)
            request_quota(c, now, 0);
        break;
    default:
        if (c->charge || c->floor_ns)
            request_rate(c, now, 0);
    }
}

/* want_more - C is empty and its limiter wants units now: ask (unless refused a moment ago) */
static void
want_more(struct cl_lim *c, uint64_t now)
{
    struct qlim *l = c->l;

    if (c->pending || !cl_up())
        return;
    if (now < c->retry_ns) {
        /* a timer armed from the loop's cached time may fire a little early: again then */
        wake_at(c->retry_ns);
        return;
    }
    switch (l->kind) {
    case QLIM_LEASE:
        if (lease_call(c, "acquire", (uint64_t)l->count, on_lease) == 0)
            c->pending = 1;
        break;
    case QLIM_QUOTA: {
        uint64_t batch = (uint64_t)l->count / (CL_QUOTA_BATCH * shares());

        request_quota(c, now, batch < 1 ? 1 : batch > CL_QUOTA_BATCH ? CL_QUOTA_BATCH : batch);
        break;
    }
    default:
        if (c->batch == 0)
            c->batch = 1;
        request_rate(c, now, (l->flags & QLIM_DEBT) ? 1 : c->batch);
    }
}

/* --- the backend ------------------------------------------------------------------------- */

/* drop_expired - C's units and slots whose time is over go unused; the next batch is smaller */
static void
drop_expired(struct qlim *l, struct cl_lim *c, uint64_t now)
{
    if (c->now_units > 0 && c->got_ns + CL_VALID_NS < now) {
        c->now_units = 0;
        c->expired = 1;
    }
    while (c->nslots > 0 && c->slot_ns + CL_VALID_NS < now) {
        c->slot_ns += l->unit_ns;
        c->nslots--;
        c->expired = 1;
    }
    if (c->expired && c->now_units == 0 && c->nslots == 0 && c->batch > 1) {
        c->batch /= 2;
        c->expired = 0;
    }
}

/* local_rate_room - the local GCRA of L (its share while Redis is down) */
static uint32_t
local_rate_room(struct qlim *l, uint64_t now)
{
    uint64_t n, share = (uint64_t)l->count / shares();

    if (now < l->tat_ns)
        return 0;
    if (l->flags & QLIM_DEBT)
        return QLIM_UNLIMITED;
    n = 1 + (now - l->tat_ns) / l->unit_ns;
    n = n > share ? (share ? share : 1) : n; /* an idle share saves up one period's worth */
    return n >= QLIM_UNLIMITED ? QLIM_UNLIMITED - 1 : (uint32_t)n;
}

static uint32_t
rate_room(struct qlim *l, struct cl_lim *c, uint64_t now)
{
    uint64_t n;

    if (!cl_up())
        return local_rate_room(l, now);
    if (l->flags & QLIM_DEBT) {
        if (now < c->permit_until_ns)
            return now < l->tat_ns ? 0 : QLIM_UNLIMITED;
        want_more(c, now);
        return 0;
    }
    drop_expired(l, c, now);
    if (c->now_units == 0 && c->nslots == 0) {
        want_more(c, now);
        return 0;
    }
    if (now < l->tat_ns)
        return 0;
    n = now < c->slot_ns || c->nslots == 0 ? 0 : 1 + (now - c->slot_ns) / l->unit_ns;
    n = (n > c->nslots ? c->nslots : n) + c->now_units;
    return n >= QLIM_UNLIMITED ? QLIM_UNLIMITED - 1 : (uint32_t)n;
}

static uint32_t
lease_share(const struct qlim *l)
{
    uint64_t n = (uint64_t)l->count / shares();

    return n < 1 ? 1 : (uint32_t)n;
}

static uint64_t
quota_left(struct qlim *l, struct cl_lim *c, uint64_t now)
{
    if (c->quota_window != l->window) {
        c->quota_window = l->window;
        c->quota_grant = c->give_back = c->charge = 0;
        c->quota_used = 0;
        c->fallback_cap = l->used + (uint64_t)l->count / shares();
    }
    if (!cl_up())
        return c->fallback_cap > l->used ? c->fallback_cap - l->used : 0;
    if (c->quota_grant == 0)
        want_more(c, now);
    return c->quota_grant;
}

static uint32_t
cl_room(struct qlim *l, uint64_t now)
{
    struct cl_lim *c = data(l);
    uint64_t n;

    if (c == NULL)
        return QLIM_UNLIMITED;
    switch (l->kind) {
    case QLIM_LEASE:
        n = cl_up() ? c->reserved : lease_share(l);
        if (n <= l->held && cl_up())
            want_more(c, now);
        return n > l->held ? (uint32_t)(n - l->held) : 0;
    case QLIM_QUOTA:
        n = quota_left(l, c, now);
        return n >= QLIM_UNLIMITED ? QLIM_UNLIMITED - 1 : (uint32_t)n;
    default:
        return rate_room(l, c, now);
    }
}

static void
cl_take(struct qlim *l, uint64_t n, uint64_t now)
{
    struct cl_lim *c = data(l);
    uint64_t use;

    if (c == NULL)
        return;
    if (l->kind == QLIM_QUOTA) {
        quota_left(l, c, now);
        l->used += n;
        use = cl_up() ? (n < c->quota_grant ? n : c->quota_grant) : n;
        if (cl_up()) {
            c->quota_grant -= use;
            if (n > use) {
                c->charge += n - use;
                mark(c);
            }
        }
        return;
    }
    if (!cl_up() || (l->flags & QLIM_DEBT)) {
        /* the local GCRA paces this node (its share, or its own bytes under a permit) */
        l->tat_ns = (l->tat_ns > now ? l->tat_ns : now) + l->unit_ns * n;
        if (!cl_up())
            c->down_taken += n;
        if (cl_up()) {
            c->charge += n;
            mark(c);
        }
        return;
    }
    drop_expired(l, c, now);
    use = n < c->now_units ? n : c->now_units;
    c->now_units -= (uint32_t)use;
    n -= use;
    use = n < c->nslots ? n : c->nslots;
    c->slot_ns += use * l->unit_ns;
    c->nslots -= (uint32_t)use;
    if (n > use) {
        c->charge += n - use;
        mark(c);
    }
    if (c->now_units == 0 && c->nslots == 0 && !c->expired && c->batch < batch_cap(l))
        c->batch = c->batch * 2 < batch_cap(l) ? c->batch * 2 : batch_cap(l);
}

static void
cl_sent(struct qlim *l, uint64_t n, uint64_t sent_ns)
{
    struct cl_lim *c = data(l);
    uint64_t due = sent_ns + l->unit_ns * n;

    if (due > l->tat_ns)
        l->tat_ns = due;
    /*
     * The cluster hears of it only when it went later than the TAT Redis already
     * has. A floor still ahead of Redis's clock holds every node's next units
     * back: flushed now. One already past when a flush would reach Redis (at a
     * rate above 50/s, nearly all: a node sending slower than the cluster's pace
     * passes the TAT it knows with every send) only trims the next grant's units
     * for now, so it rides on this node's next request instead of costing a round
     * trip every CL_FLUSH_MS.
     */
    if (c && cl_up() && due > c->floor_ns && due > cl_local_ns(c->shared_tat_us)) {
        c->floor_ns = due;
        if (due > qmgr_now_ns() + CL_FLUSH_MS * 1000000ull)
            mark(c);
    }
}

static uint64_t
cl_wait_ns(struct qlim *l, uint64_t now)
{
    struct cl_lim *c = data(l);
    uint64_t at;

    if (l->kind != QLIM_RATE || c == NULL)
        return QLIM_WAIT_UNKNOWN;
    if (!cl_up())
        return now >= l->tat_ns ? 0 : l->tat_ns - now;
    if ((l->flags & QLIM_DEBT) ? now >= c->permit_until_ns : c->nslots + c->now_units == 0)
        return QLIM_WAIT_UNKNOWN; /* asked: the reply wakes the scheduler */
    at = (l->flags & QLIM_DEBT) ? l->tat_ns : (c->slot_ns > l->tat_ns ? c->slot_ns : l->tat_ns);
    return at > now ? at - now : 0;
}

static int
cl_acquire(struct qlim *l)
{
    struct cl_lim *c = data(l);

    if (c == NULL)
        return 1;
    return l->held < (cl_up() ? c->reserved : lease_share(l));
}

static void
cl_release(struct qlim *l)
{
    struct cl_lim *c = data(l);

    if (c && cl_up() && c->reserved > l->held) {
        /* one back at once: another node may be waiting for it */
        lease_call(c, "release", c->reserved - l->held, NULL);
        c->reserved = l->held;
    } else if (c && !cl_up() && c->reserved > l->held) {
        c->reserved = l->held;
    }
}

/* cl_set - L's limit changed: its slot cost, and its key on first use */
static void
cl_set(struct qlim *l)
{
    struct cl_lim *c = data(l);
    char key[CL_KEY_MAX];
    static const char scope_letters[] = "gqvsw";

    if (l->count <= 0)
        return;
    set_units(l);
    if (c)
        return;
    c = xcalloc(1, sizeof *c);
    c->l = l;
    c->batch = 1;
    cl_key(key, sizeof key, "%s:%c:%s:%s",
           l->kind == QLIM_LEASE   ? "lease"
           : l->kind == QLIM_QUOTA ? "quota"
                                   : "rate",
           scope_letters[l->scope % 5], kind_word(l), l->key ? l->key : "");
    c->rkey = xstrdup(key);
    c->next = L.all;
    if (L.all)
        L.all->prev = c;
    L.all = c;
    l->be_data = c;
}

static void
cl_forget(struct qlim *l)
{
    struct cl_lim *c = data(l);

    if (c == NULL)
        return;
    l->be_data = NULL;
    unlist(c);
    if (l->kind == QLIM_LEASE && cl_up() && c->reserved > 0)
        lease_call(c, "release", c->reserved, NULL);
    if (l->kind == QLIM_QUOTA && cl_up() && c->quota_grant > 0) {
        c->give_back += c->quota_grant;
        c->quota_grant = 0;
        request_quota(c, qmgr_now_ns(), 0);
    }
    c->l = NULL;
    if (!c->pending)
        cl_free(c);
}

const struct qlim_backend cl_backend = {
    .name = "cluster",
    .room = cl_room,
    .take = cl_take,
    .sent = cl_sent,
    .wait_ns = cl_wait_ns,
    .acquire = cl_acquire,
    .release = cl_release,
    .set = cl_set,
    .forget = cl_forget,
};

/* --- the cluster's state changes ------------------------------------------------------------ */

/* qmgr_cluster_adopt - see qmgr_cluster.h */
void
qmgr_cluster_adopt(struct qlim *l, int local)
{
    const struct qlim_backend *be = qmgr_cluster_on() && !local ? &cl_backend : &qlim_local_backend;

    if (l->be != be)
        qlim_use_backend(l, be);
}

/* cl_limit_up - see qmgr_cluster_int.h */
void
cl_limit_up(void)
{
    for (struct cl_lim *c = L.all; c; c = c->next) {
        struct qlim *l = c->l;

        c->nslots = c->now_units = 0;
        c->permit_until_ns = c->retry_ns = 0;
        c->charge = c->charging = c->floor_ns = 0;
        c->quota_grant = c->give_back = 0;
        if (l->kind == QLIM_RATE && c->down_taken > 0) {
            /* what went on the share in the last period counts: no burst on the return */
            uint64_t share = (uint64_t)l->count / shares() + 1;

            c->charge = c->down_taken < share ? c->down_taken : share;
            mark(c);
        }
        c->down_taken = 0;
        set_units(l);
        c->reserved = 0;
        if (l->kind == QLIM_LEASE && l->held > 0 && lease_call(c, "set", l->held, NULL) == 0)
            c->reserved = l->held; /* what it holds, registered again */
    }
    qlim_wakeup();
}

/* cl_limit_down - see qmgr_cluster_int.h */
void
cl_limit_down(void)
{
    for (struct cl_lim *c = L.all; c; c = c->next) {
        struct qlim *l = c->l;

        set_units(l);
        if (l->kind == QLIM_QUOTA) {
            uint64_t left = c->quota_used < (uint64_t)l->count ? (uint64_t)l->count - c->quota_used
                                                               : 0;

            c->fallback_cap = l->used + c->quota_grant + left / shares();
            c->quota_grant = 0;
        }
        c->nslots = c->now_units = 0;
    }
    qlim_wakeup();
}

/* cl_limit_release_all - see qmgr_cluster_int.h (the node's leases go with NODE_DOWN) */
void
cl_limit_release_all(void)
{
    for (struct cl_lim *c = L.all; c; c = c->next) {
        if (c->l && c->l->kind == QLIM_QUOTA && c->quota_grant > 0 && cl_up()) {
            c->give_back += c->quota_grant;
            c->quota_grant = 0;
            request_quota(c, qmgr_now_ns(), 0);
        }
        c->reserved = 0;
    }
}

/* cl_limit_json - see qmgr_cluster_int.h */
json_t *
cl_limit_json(struct qlim *l)
{
    struct cl_lim *c = l->be == &cl_backend ? data(l) : NULL;
    json_t *j = json_pack("{s:s, s:s, s:I}", "limit", l->basis, "backend",
                          l->be == &cl_backend ? "cluster" : "local", "count",
                          (json_int_t)l->count);

    if (c == NULL)
        return j;
    json_object_set_new(j, "key", json_string(c->rkey));
    switch (l->kind) {
    case QLIM_LEASE:
        json_object_set_new(j, "held_here", json_integer(l->held));
        json_object_set_new(j, "held_in_cluster", json_integer(c->cluster_held));
        json_object_set_new(j, "share_if_redis_down", json_integer(lease_share(l)));
        break;
    case QLIM_QUOTA:
        json_object_set_new(j, "used_here", json_integer((json_int_t)l->used));
        json_object_set_new(j, "used_in_cluster", json_integer((json_int_t)c->quota_used));
        break;
    default:
        json_object_set_new(j, "slots_in_hand", json_integer(c->nslots + c->now_units));
        json_object_set_new(j, "batch", json_integer(c->batch));
        json_object_set_new(j, "unit_us", json_real((double)l->unit_ns / 1000.0));
    }
    return j;
}

void
cl_limit_stats(uint32_t *shared, uint32_t *granted)
{
    *shared = *granted = 0;
    for (struct cl_lim *c = L.all; c; c = c->next) {
        (*shared)++;
        *granted += c->nslots + c->now_units > 0 || c->reserved > 0 || c->quota_grant > 0;
    }
}

void
cl_limit_free(void)
{
    while (L.all) {
        struct cl_lim *c = L.all;

        unlist(c);
        if (c->l)
            c->l->be_data = NULL;
        c->l = NULL;
        if (!c->pending)
            cl_free(c);
    }
    L.dirty = NULL;
    if (L.timers) {
        uv_close((uv_handle_t *)&L.flush, NULL);
        uv_close((uv_handle_t *)&L.wake, NULL);
        L.timers = 0;
    }
}
