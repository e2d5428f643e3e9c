/*
 * qmgr_warmup.c - IP warm-up plans and cold virtual MTAs: daily caps that
 *                 grow while the destination takes the mail well
 *
 * A virtual MTA with `warmup-plan NAME` warms each of its source addresses
 * (smtp-source-host) by the <warmup-plan NAME>: a daily cap per destination
 * (a domain or rollup named by a `destination` line, or `*` for all the
 * others together; no line: `*`). The cap is the plan's current step: `day
 * N COUNT` lines (a missing day keeps the day before's cap), or day 1's cap
 * doubling every `double-every INTERVAL` up to `until COUNT`; past the last
 * step the address is warm and has no cap. At each day's end the step of
 * every (address, destination) that sent that day is decided from that
 * day's outcomes at that destination:
 *   - deferrals above step-back-deferral-rate or complaint-like bounces
 *     (bounce category spam-related or policy-related) above
 *     step-back-complaint-rate: one step back;
 *   - both at or below max-deferral-rate and max-complaint-rate: promoted;
 *   - otherwise (or no mail that day): the step holds.
 * The cap is a QUOTA limiter (qmgr_limit.h) among the source address's
 * limiters (qmgr_source.c), so a connection from a capped address takes no
 * more transactions, no new connection picks it, and pmtactl says "warm-up
 * cap reached: 100 of 100 today". Mail over the cap waits in its queue (it is
 * never bounced for the cap) or, with `overflow-virtual-mta V`, moves to its
 * destination's queue on V.
 *
 * PowerMTA's `cold-virtual-mta C` (in a <virtual-mta>) with
 * `max-cold-virtual-mta-msg N/PERIOD` (in a <domain>) is the same mechanism
 * the other way round: up to N recipients per period of a destination's mail
 * on that virtual MTA go out through C instead (chosen when they join the
 * schedule), to warm C up.
 *
 * State: one record per (plan, address, destination) and per (destination,
 * cold virtual MTA) in the queue store's warmup database (qstore.h): the
 * step, the start day, and the current day's counts. It is read at start and
 * written at most once a second when it changed, at each day's end and at
 * shutdown, so a restart keeps the step and today's count (a crash loses at
 * most the last second's). Days are UTC days of the wall clock plus an
 * offset that only the control socket's warmup-clock command changes (tests
 * advance days without waiting for them).
 *
 * Owns: the state table, the compiled plans of the current configuration,
 * the one-second timer and the clock offset.
 * SECURITY: keys hold source addresses and destination names (configuration
 * and DNS); they are length-checked by qstore.
 */
#include "config.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "msg.h"
#include "qmgr.h"
#include "qmgr_cluster.h"
#include "qmgr_table.h"
#include "qmgr_warmup.h"
#include "qmgr_wplan.h"
#include "worker.h"
#include "xalloc.h"

#define TICK_MS  1000u
#define DAY_S    86400u
#define KEY_MAX  QSTORE_WARMUP_KEY_MAX
#define PLAN_TAG "plan" /* keys: "plan NAME IP DESTINATION" */
#define COLD_TAG "cold" /* and "cold DESTINATION VMTA" */

struct wstate {
    struct qtab_entry e; /* first: the table's link and key */
    const char *key;     /* e.key */
    int cold;            /* a cold virtual MTA's counter, not a plan's state */
    struct qstore_warmup st;
    struct qlim quota;
    uint64_t period; /* seconds of its window (a day, or max-cold-virtual-mta-msg's) */
    int dirty;
};

static struct {
    struct qtab table; /* states by key */
    struct qmgr_wplan *plans;
    uint32_t nplans;
    uint64_t plans_serial;
    int64_t offset_s; /* the test clock's advance */
    int started;
} W;
static uv_timer_t w_tick; /* outside W: it may still be closing when W is freed */

/* --- time ------------------------------------------------------------------------------ */

static uint64_t
now_s(void)
{
    int64_t t = (int64_t)qmgr_wall() + W.offset_s;

    return t > 0 ? (uint64_t)t : 0;
}

/* qmgr_warmup_today - see qmgr_warmup.h */
uint64_t
qmgr_warmup_today(void)
{
    return now_s() / DAY_S;
}

/* --- plans ----------------------------------------------------------------------------- */

static void
plans_free(void)
{
    for (uint32_t i = 0; i < W.nplans; i++)
        qmgr_wplan_free(&W.plans[i]);
    free(W.plans);
    W.plans = NULL;
    W.nplans = 0;
}

/* plans_current - the plans of S.cfg, compiled once per configuration */
static void
plans_current(void)
{
    uint32_t it = 0, s;

    if (W.plans_serial == S.cfg_serial)
        return;
    plans_free();
    while ((s = cfg_next_scope(S.cfg, CFG_S_WARMUP_PLAN, &it)) != CFG_NONE) {
        W.plans = xreallocarray(W.plans, W.nplans + 1, sizeof *W.plans);
        qmgr_wplan_compile(&W.plans[W.nplans++], S.cfg, s);
    }
    W.plans_serial = S.cfg_serial;
}

static const struct qmgr_wplan *
plan_find(const char *name)
{
    plans_current();
    for (uint32_t i = 0; i < W.nplans; i++)
        if (strcasecmp(W.plans[i].name, name) == 0)
            return &W.plans[i];
    return NULL;
}

/* vmta_plan - the warm-up plan of virtual MTA VMTA, or NULL */
static const struct qmgr_wplan *
vmta_plan(const char *vmta)
{
    uint32_t s = cfg_find_scope(S.cfg, CFG_S_VMTA, vmta);
    const struct cfg_value *v = s == CFG_NONE ? NULL : cfg_scope_get(S.cfg, s, CFG_D_WARMUP_PLAN);

    return v ? plan_find(cfg_str(S.cfg, v->text)) : NULL;
}

/* --- states ---------------------------------------------------------------------------- */

/* each - the states in turn: start with *SLOT = 0 and PREV NULL */
static struct wstate *
each(uint32_t *slot, struct wstate *prev)
{
    return (struct wstate *)qtab_next(&W.table, slot, prev ? &prev->e : NULL);
}

static void
free_state(struct qtab_entry *te)
{
    struct wstate *e = (struct wstate *)te;

    qlim_fini(&e->quota);
    free(e->e.key);
    free(e);
}

/* state - the state of KEY; created (step 1 from today, or ST) when absent */
static struct wstate *
state(const char *key, const struct qstore_warmup *st)
{
    struct wstate *e = (struct wstate *)qtab_find(&W.table, key);

    if (e)
        return e;
    e = xcalloc(1, sizeof *e);
    e->key = e->e.key = xstrdup(key);
    e->cold = strncmp(key, COLD_TAG " ", sizeof COLD_TAG) == 0;
    if (st) {
        e->st = *st;
    } else {
        e->st.step = 1;
        e->st.start_day = e->st.window = qmgr_warmup_today();
        e->dirty = 1;
    }
    e->period = DAY_S;
    qlim_init(&e->quota, QLIM_WARMUP, QLIM_QUOTA, QLIM_MSGS, e->key);
    qlim_quota_window(&e->quota, e->st.window, e->st.sent);
    qtab_add(&W.table, &e->e);
    return e;
}

/* key_part - the Nth (0-based) space-separated word of KEY into OUT */
static const char *
key_part(const char *key, int n, char *out, size_t size)
{
    const char *p = key;
    size_t len;

    for (; n > 0 && p; n--)
        p = (p = strchr(p, ' ')) ? p + 1 : NULL;
    len = p ? strcspn(p, " ") : 0;
    snprintf(out, size, "%.*s", (int)(len < size ? len : size - 1), p ? p : "");
    return out;
}

/* set_cap - ST's cap for its plan's step (none once warm, or without the plan) */
static void
set_cap(struct wstate *e)
{
    char name[128];
    const struct qmgr_wplan *p = e->cold ? NULL : plan_find(key_part(e->key, 1, name, sizeof name));

    if (p) {
        qmgr_cluster_adopt(&e->quota, 0); /* one daily count for the cluster */
        qlim_set(&e->quota, qmgr_wplan_cap(p, e->st.step), 0, "warm-up cap");
    }
}

/* decide - E's day ended: promote, hold or step back from its counts (qmgr_wplan_decide) */
static void
decide(struct wstate *e)
{
    static const char *const verdicts[] = { "holds", "promoted", "steps back" };
    char name[128];
    const struct qmgr_wplan *p = plan_find(key_part(e->key, 1, name, sizeof name));
    uint32_t before = e->st.step;
    enum qmgr_wplan_verdict v;

    if (p == NULL || e->st.attempts == 0 || qmgr_wplan_cap(p, e->st.step) == 0)
        return; /* no plan any more, no evidence, or warm already */
    v = qmgr_wplan_decide(p, &e->st);
    if (v == QMGR_WPLAN_STEP_BACK && e->st.step > 1)
        e->st.step--;
    else if (v == QMGR_WPLAN_PROMOTE)
        e->st.step++;
    msg_info("warm-up %s: day %" PRIu64 " ended with %" PRIu64 " sent, deferrals %.2f%%, "
             "complaints %.2f%%: %s, step %u -> %u (cap %lld)",
             e->key, e->st.window - e->st.start_day + 1, e->st.sent,
             100.0 * (double)e->st.deferrals / (double)e->st.attempts,
             100.0 * (double)e->st.complaints / (double)e->st.attempts, verdicts[v], before,
             e->st.step, (long long)qmgr_wplan_cap(p, e->st.step));
}

/* roll - E enters window NOW_WINDOW (a new day): the old day is decided, the counts start over */
static void
roll(struct wstate *e, uint64_t now_window)
{
    if (e->st.window >= now_window)
        return;
    e->st.sent = e->quota.used;
    if (!e->cold)
        decide(e);
    e->st.window = now_window;
    e->st.sent = e->st.attempts = e->st.deferrals = e->st.complaints = 0;
    qlim_quota_window(&e->quota, now_window, 0);
    if (!e->cold)
        set_cap(e);
    e->dirty = 1;
}

static void
on_saved(void *arg, int status, uint64_t msgid)
{
    (void)arg;
    (void)msgid;
    if (status < 0)
        msg_warn("cannot save warm-up state: %s", qstore_strerror(status));
}

/* save - write E when it changed */
static void
save(struct wstate *e)
{
    int err;

    if (!e->dirty || S.group == NULL)
        return;
    e->st.sent = e->quota.used;
    if ((err = qstore_group_put_warmup(S.group, e->key, &e->st, on_saved, NULL)) < 0)
        msg_warn("cannot save warm-up state %s: %s", e->key, qstore_strerror(err));
    e->dirty = 0;
}

/* on_tick - each second: a new day rolls every state over; what changed is saved */
static void
on_tick(uv_timer_t *t)
{
    uint64_t now = now_s();
    struct wstate *e = NULL;
    int rolled = 0;

    (void)t;
    for (uint32_t slot = 0; (e = each(&slot, e)) != NULL;) {
        if (e->st.window < now / e->period) {
            roll(e, now / e->period);
            rolled = 1;
        }
        if (e->quota.used != e->st.sent)
            e->dirty = 1;
        save(e);
    }
    if (rolled)
        qmgr_dispatch_soon(); /* new caps: mail that waited may go */
}

static int
on_loaded(const char *key, const struct qstore_warmup *st, void *arg)
{
    (void)arg;
    state(key, st);
    return 0;
}

/* --- the scheduler's side ----------------------------------------------------------------- */

/* qmgr_warmup_start - see qmgr_warmup.h */
void
qmgr_warmup_start(void)
{
    int err;

    if ((err = qstore_scan_warmup(S.qs, on_loaded, NULL)) < 0)
        msg_warn("cannot read the warm-up state: %s; plans start over", qstore_strerror(err));
    else if (W.table.n)
        msg_info("warm-up state of %u source address(es) and destination(s) read", W.table.n);
    uv_timer_init(worker_loop(), &w_tick);
    uv_timer_start(&w_tick, on_tick, TICK_MS, TICK_MS);
    W.started = 1;
}

/* qmgr_warmup_stop - see qmgr_warmup.h */
void
qmgr_warmup_stop(void)
{
    struct wstate *e = NULL;

    if (!W.started)
        return;
    W.started = 0;
    for (uint32_t slot = 0; (e = each(&slot, e)) != NULL;) {
        if (e->quota.used != e->st.sent)
            e->dirty = 1;
        save(e);
    }
    uv_close((uv_handle_t *)&w_tick, NULL);
}

void
qmgr_warmup_free(void)
{
    qtab_free(&W.table, free_state);
    plans_free();
    memset(&W, 0, sizeof W);
}

/* qmgr_warmup_planned - see qmgr_warmup.h */
int
qmgr_warmup_planned(struct qqueue *q)
{
    const struct qmgr_wplan *p = vmta_plan(q->vmta);

    return p && qmgr_wplan_destination(p, q->domain);
}

/* qmgr_warmup_limit - see qmgr_warmup.h */
struct qlim *
qmgr_warmup_limit(struct qqueue *q, const char *ip)
{
    const struct qmgr_wplan *p = vmta_plan(q->vmta);
    const char *dest = p ? qmgr_wplan_destination(p, q->domain) : NULL;
    char key[KEY_MAX + 1];
    struct wstate *e;
    int n;

    if (dest == NULL || ip == NULL || *ip == 0)
        return NULL;
    n = snprintf(key, sizeof key, PLAN_TAG " %s %s %s", p->name, ip, dest);
    if (n < 0 || (size_t)n >= sizeof key)
        return NULL;
    e = state(key, NULL);
    roll(e, qmgr_warmup_today());
    set_cap(e);
    return &e->quota;
}

/* from_quota - the state whose quota L is */
static struct wstate *
from_quota(struct qlim *l)
{
    return (struct wstate *)(void *)((char *)l - offsetof(struct wstate, quota));
}

/* qmgr_warmup_outcome - see qmgr_warmup.h */
void
qmgr_warmup_outcome(struct qlim *l, int deferred, int complaint)
{
    struct wstate *e;

    if (l == NULL || l->scope != QLIM_WARMUP)
        return;
    e = from_quota(l);
    e->st.attempts++;
    e->st.deferrals += deferred != 0;
    e->st.complaints += complaint != 0;
    e->dirty = 1;
}

/* qmgr_warmup_overflow - see qmgr_warmup.h */
int
qmgr_warmup_overflow(struct qqueue *q, struct qlim *l)
{
    const struct qmgr_wplan *p;
    struct qqueue *to;
    char name[1200], pname[128];
    uint32_t moved;
    int n;

    if (l == NULL || l->scope != QLIM_WARMUP || from_quota(l)->cold ||
        (p = plan_find(key_part(from_quota(l)->key, 1, pname, sizeof pname))) == NULL ||
        p->overflow == NULL || strcasecmp(p->overflow, q->vmta) == 0)
        return 0;
    n = snprintf(name, sizeof name, "%s/%s", q->domain, p->overflow);
    if (n < 0 || (size_t)n >= sizeof name)
        return 0;
    to = qmgr_queue_get(name, (size_t)n);
    if ((moved = qmgr_queue_move(q, to)) > 0)
        msg_info("queue %s: warm-up cap reached; %u recipient(s) overflow to %s", q->name, moved,
                 to->name);
    qmgr_run_update(q);
    qmgr_run_update(to);
    return moved > 0;
}

/* qmgr_warmup_cold - see qmgr_warmup.h */
struct qqueue *
qmgr_warmup_cold(struct qqueue *q)
{
    uint32_t s = cfg_find_scope(S.cfg, CFG_S_VMTA, q->vmta);
    const struct cfg_value *cold = s == CFG_NONE ? NULL
                                                 : cfg_scope_get(S.cfg, s, CFG_D_COLD_VIRTUAL_MTA);
    const struct cfg_value *rate;
    char key[KEY_MAX + 1], name[1200];
    struct wstate *e;
    int n;

    if (cold == NULL || strcasecmp(cfg_str(S.cfg, cold->text), q->vmta) == 0 ||
        (rate = qmgr_queue_setting(q, CFG_D_MAX_COLD_VIRTUAL_MTA_MSG)) == NULL || rate->num <= 0 ||
        rate->num2 <= 0)
        return q;
    n = snprintf(key, sizeof key, COLD_TAG " %s %s", q->domain, cfg_str(S.cfg, cold->text));
    if (n < 0 || (size_t)n >= sizeof key)
        return q;
    e = state(key, NULL);
    e->period = (uint64_t)rate->num2;
    roll(e, now_s() / e->period);
    qlim_set(&e->quota, rate->num, 0, "max-cold-virtual-mta-msg");
    if (qlim_room(&e->quota, 0) == 0)
        return q;
    qlim_take(&e->quota, 1, 0);
    e->dirty = 1;
    n = snprintf(name, sizeof name, "%s/%s", q->domain, cfg_str(S.cfg, cold->text));
    return n > 0 && (size_t)n < sizeof name ? qmgr_queue_get(name, (size_t)n) : q;
}

/* qmgr_warmup_advance - see qmgr_warmup.h */
uint64_t
qmgr_warmup_advance(int64_t seconds)
{
    W.offset_s += seconds;
    msg_info("warm-up clock advanced by %lld s (offset %lld s): day %" PRIu64, (long long)seconds,
             (long long)W.offset_s, qmgr_warmup_today());
    if (W.started)
        on_tick(&w_tick);
    return qmgr_warmup_today();
}

/* qmgr_warmup_json - see qmgr_warmup.h */
json_t *
qmgr_warmup_json(const char *vmta)
{
    const struct qmgr_wplan *p = vmta_plan(vmta);
    json_t *list = json_array();
    char pname[128], ip[64], dest[300];
    struct wstate *e = NULL;

    if (p == NULL)
        return list;
    for (uint32_t slot = 0; (e = each(&slot, e)) != NULL;) {
        if (e->cold || strcasecmp(key_part(e->key, 1, pname, sizeof pname), p->name) != 0)
            continue;
        if (!qmgr_vmta_has_source(vmta, key_part(e->key, 2, ip, sizeof ip)))
            continue;
        json_array_append_new(
            list, json_pack("{s:s, s:s, s:s, s:I, s:I, s:I, s:I, s:I, s:I}", "plan", p->name,
                            "source", ip, "destination", key_part(e->key, 3, dest, sizeof dest),
                            "step", (json_int_t)e->st.step, "day",
                            (json_int_t)(qmgr_warmup_today() - e->st.start_day + 1), "cap",
                            (json_int_t)qmgr_wplan_cap(p, e->st.step), "sent",
                            (json_int_t)e->quota.used, "deferrals", (json_int_t)e->st.deferrals,
                            "complaints", (json_int_t)e->st.complaints));
    }
    return list;
}
