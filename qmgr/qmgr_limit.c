/*
 * qmgr_limit.c - limiters (qmgr_limit.h): the local backend (GCRA rates,
 * lease counts, quotas) and what every backend shares (limits, reasons)
 *
 * Owns: each limiter's state inside its struct; the wake hook.
 * SECURITY: none (numbers from the configuration and the clock only).
 */
#include "config.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "qmgr_limit.h"

static void (*wake_hook)(void);

/* --- the local backend -------------------------------------------------------------------- */

/*
 * rate_base - where a batch taken at NOW is charged from: TAT, or, when TAT lies
 * in the past, no earlier than NOW minus the lateness tolerance (qmgr_limit.h)
 */
static uint64_t
rate_base(const struct qlim *l, uint64_t now_ns)
{
    const uint64_t margin = QLIM_PACING_MS * 1000000ull, most = QLIM_LATE_MAX_MS * 1000000ull;
    /* half of what the margin leaves after one spacing, at most QLIM_LATE_MAX_MS */
    uint64_t late = (l->flags & QLIM_DEBT) || l->unit_ns >= margin ? 0 : (margin - l->unit_ns) / 2;
    uint64_t floor;

    if (late > most)
        late = most;
    floor = now_ns > late ? now_ns - late : 0;

    return l->tat_ns > floor ? l->tat_ns : floor;
}

static uint32_t
local_room(struct qlim *l, uint64_t now_ns)
{
    uint64_t n;

    switch (l->kind) {
    case QLIM_LEASE:
        return l->held >= (uint64_t)l->count ? 0 : (uint32_t)((uint64_t)l->count - l->held);
    case QLIM_QUOTA:
        n = l->used >= (uint64_t)l->count ? 0 : (uint64_t)l->count - l->used;
        break;
    default:
        if (now_ns < l->tat_ns)
            return 0;
        if (l->flags & QLIM_DEBT)
            return QLIM_UNLIMITED;
        n = 1 + (now_ns - l->tat_ns) / l->unit_ns;
        /* An idle limiter cannot save up more than one period's worth. */
        if (n > (uint64_t)l->count)
            n = (uint64_t)l->count;
    }
    return n >= QLIM_UNLIMITED ? QLIM_UNLIMITED - 1 : (uint32_t)n;
}

static void
local_take(struct qlim *l, uint64_t n, uint64_t now_ns)
{
    if (l->kind == QLIM_QUOTA) {
        l->used += n;
        return;
    }
    l->tat_ns = rate_base(l, now_ns) + l->unit_ns * n;
}

static void
local_sent(struct qlim *l, uint64_t n, uint64_t sent_ns)
{
    uint64_t due = sent_ns + l->unit_ns * n;

    if (due > l->tat_ns)
        l->tat_ns = due;
}

static uint64_t
local_wait_ns(struct qlim *l, uint64_t now_ns)
{
    if (l->kind != QLIM_RATE)
        return QLIM_WAIT_UNKNOWN; /* a lease comes back, a window ends: events, not time */
    return now_ns >= l->tat_ns ? 0 : l->tat_ns - now_ns;
}

static int
local_acquire(struct qlim *l)
{
    return l->held < (uint64_t)l->count;
}

static void
local_release(struct qlim *l)
{
    (void)l;
}

/* local_set - a new rate: the unit cost changes, TAT (a point in time) stays */
static void
local_set(struct qlim *l)
{
    if (l->kind == QLIM_RATE && l->count > 0)
        l->unit_ns = ((uint64_t)(l->period_s > 0 ? l->period_s : 1) * 1000000000u +
                      QLIM_PACING_MS * 1000000u) /
                     (uint64_t)l->count;
}

static void
local_forget(struct qlim *l)
{
    (void)l;
}

const struct qlim_backend qlim_local_backend = {
    .name = "local",
    .room = local_room,
    .take = local_take,
    .sent = local_sent,
    .wait_ns = local_wait_ns,
    .acquire = local_acquire,
    .release = local_release,
    .set = local_set,
    .forget = local_forget,
};

/* --- every backend --------------------------------------------------------------------------- */

void
qlim_init(struct qlim *l, enum qlim_scope scope, enum qlim_kind kind, enum qlim_unit unit,
          const char *key)
{
    memset(l, 0, sizeof *l);
    l->scope = (uint8_t)scope;
    l->kind = (uint8_t)kind;
    l->unit = (uint8_t)unit;
    l->key = key;
    l->be = &qlim_local_backend;
}

void
qlim_fini(struct qlim *l)
{
    l->be->forget(l);
    l->held = 0;
}

void
qlim_use_backend(struct qlim *l, const struct qlim_backend *be)
{
    l->be->forget(l);
    l->be = be;
    l->be_data = NULL;
    l->tat_ns = 0;
    be->set(l);
}

void
qlim_set(struct qlim *l, int64_t count, int64_t period_s, const char *basis)
{
    if (count < 0)
        count = 0;
    if (basis == NULL)
        basis = "";
    if (l->count == count && l->period_s == period_s &&
        strncmp(l->basis, basis, sizeof l->basis) == 0)
        return;
    l->count = count;
    l->period_s = period_s;
    snprintf(l->basis, sizeof l->basis, "%s", basis);
    l->be->set(l);
}

uint32_t
qlim_room(struct qlim *l, uint64_t now_ns)
{
    return l->count > 0 ? l->be->room(l, now_ns) : QLIM_UNLIMITED;
}

void
qlim_take(struct qlim *l, uint64_t n, uint64_t now_ns)
{
    if (l->count > 0 && l->kind != QLIM_LEASE)
        l->be->take(l, n, now_ns);
    else if (l->kind == QLIM_QUOTA)
        l->used += n; /* counted while unlimited too: the cap may come back */
}

void
qlim_sent(struct qlim *l, uint64_t n, uint64_t sent_ns)
{
    if (l->count > 0 && l->kind == QLIM_RATE && sent_ns > 0)
        l->be->sent(l, n, sent_ns);
}

void
qlim_sent_all(struct qlim *const *lims, size_t nlims, uint64_t n, uint64_t sent_ns)
{
    for (size_t i = 0; i < nlims; i++)
        if (lims[i])
            qlim_sent(lims[i], n, sent_ns);
}

uint64_t
qlim_wait_ns(struct qlim *l, uint64_t now_ns)
{
    if (l->count <= 0 || qlim_room(l, now_ns) > 0)
        return 0;
    return l->be->wait_ns(l, now_ns);
}

/*
 * qlim_acquire - a lease is counted even without a limit, so that a limit
 * set later (a reload, backoff) sees the connections already open
 */
int
qlim_acquire(struct qlim *l)
{
    if (l->count > 0 && !l->be->acquire(l))
        return 0;
    l->held++;
    return 1;
}

void
qlim_release(struct qlim *l)
{
    if (l->held == 0)
        return;
    l->held--;
    l->be->release(l);
}

void
qlim_quota_window(struct qlim *l, uint64_t window, uint64_t used)
{
    l->window = window;
    l->used = used;
}

uint32_t
qlim_room_all(struct qlim *const *lims, size_t n, uint64_t now_ns, struct qlim **binding)
{
    uint32_t least = QLIM_UNLIMITED;

    if (binding)
        *binding = NULL;
    for (size_t i = 0; i < n; i++) {
        uint32_t room;

        if (lims[i] == NULL || (room = qlim_room(lims[i], now_ns)) >= least)
            continue;
        least = room;
        if (room == 0) {
            if (binding)
                *binding = lims[i];
            break;
        }
    }
    return least;
}

void
qlim_take_all(struct qlim *const *lims, size_t nlims, uint64_t n, uint64_t now_ns)
{
    for (size_t i = 0; i < nlims; i++)
        if (lims[i] && lims[i]->kind != QLIM_LEASE)
            qlim_take(lims[i], n, now_ns);
}

const char *
qlim_reason(const struct qlim *l, char *buf, size_t size)
{
    static const char *const rate_what[] = { "message rate", "connection rate",
                                             "data volume rate" };

    switch (l->kind) {
    case QLIM_LEASE:
        snprintf(buf, size, "connection limit reached (%s)", l->basis);
        break;
    case QLIM_QUOTA:
        snprintf(buf, size, "%s reached: %" PRIu64 " of %" PRId64 " today", l->basis, l->used,
                 l->count);
        break;
    default:
        snprintf(buf, size, "%s limit reached (based on %s)", rate_what[l->unit % 3], l->basis);
    }
    return buf;
}

void
qlim_set_wake_hook(void (*hook)(void))
{
    wake_hook = hook;
}

void
qlim_wakeup(void)
{
    if (wake_hook)
        wake_hook();
}
