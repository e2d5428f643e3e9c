/*
 * qmgr_wplan.c - a compiled <warmup-plan>: caps by step, the step rule, the
 *                destinations it caps
 *
 * Pure functions of the configuration and the counts, so that the arithmetic
 * of a plan is tested on its own (t/unit/test_qmgr_wplan.c); qmgr_warmup.c
 * keeps the state and acts.
 *
 * Owns: each plan's copies of its names and caps.
 * SECURITY: none (numbers and names from the configuration).
 */
#include "config.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "qmgr_wplan.h"
#include "xalloc.h"

#define DAY_S 86400

/* pct - a percent setting of plan scope S (its default when not given), in ppm */
static int64_t
pct(const struct cfg *c, uint32_t s, enum cfg_directive d)
{
    const struct cfg_value *v = cfg_scope_get(c, s, d);

    return v ? v->num : c->values[d].num; /* the built-in default slot */
}

/* qmgr_wplan_compile - see qmgr_wplan.h */
void
qmgr_wplan_compile(struct qmgr_wplan *p, const struct cfg *c, uint32_t s)
{
    const struct cfg_value *v;
    uint32_t it = 0;

    memset(p, 0, sizeof *p);
    p->name = xstrdup(cfg_str(c, c->scopes[s].name));
    while ((v = cfg_scope_next(c, s, CFG_D_WARMUP_DAY, &it)) != NULL)
        if ((uint64_t)v->num > p->nsteps)
            p->nsteps = (uint32_t)v->num;
    p->caps = xcalloc(p->nsteps ? p->nsteps : 1, sizeof *p->caps);
    for (it = 0; (v = cfg_scope_next(c, s, CFG_D_WARMUP_DAY, &it)) != NULL;)
        p->caps[v->num - 1] = v->num2;
    for (uint32_t i = 1; i < p->nsteps; i++)
        if (p->caps[i] == 0)
            p->caps[i] = p->caps[i - 1]; /* a missing day keeps the day before's cap */
    if ((v = cfg_scope_get(c, s, CFG_D_WARMUP_DOUBLE_EVERY)) != NULL) {
        p->double_days = v->num / DAY_S > 0 ? v->num / DAY_S : 1;
        p->until = v->num2;
    }
    for (it = 0; (v = cfg_scope_next(c, s, CFG_D_WARMUP_DESTINATION, &it)) != NULL;) {
        const char *d = cfg_str(c, v->text);

        if (strcmp(d, "*") == 0) {
            p->any = 1;
            continue;
        }
        p->dests = xreallocarray(p->dests, p->ndests + 1, sizeof *p->dests);
        p->dests[p->ndests++] = xstrdup(d);
    }
    if (p->ndests == 0)
        p->any = 1;
    p->max_deferral = pct(c, s, CFG_D_WARMUP_MAX_DEFERRAL_RATE);
    p->max_complaint = pct(c, s, CFG_D_WARMUP_MAX_COMPLAINT_RATE);
    p->back_deferral = pct(c, s, CFG_D_WARMUP_STEP_BACK_DEFERRAL_RATE);
    p->back_complaint = pct(c, s, CFG_D_WARMUP_STEP_BACK_COMPLAINT_RATE);
    if ((v = cfg_scope_get(c, s, CFG_D_WARMUP_OVERFLOW_VIRTUAL_MTA)) != NULL)
        p->overflow = xstrdup(cfg_str(c, v->text));
}

void
qmgr_wplan_free(struct qmgr_wplan *p)
{
    for (uint32_t j = 0; j < p->ndests; j++)
        free(p->dests[j]);
    free(p->dests);
    free(p->caps);
    free(p->name);
    free(p->overflow);
    memset(p, 0, sizeof *p);
}

/* qmgr_wplan_cap - see qmgr_wplan.h */
int64_t
qmgr_wplan_cap(const struct qmgr_wplan *p, uint32_t step)
{
    int64_t cap;

    if (step == 0)
        step = 1;
    if (p->double_days == 0)
        return step <= p->nsteps ? p->caps[step - 1] : 0;
    cap = p->caps[0];
    for (uint32_t i = 1; i < step; i++) {
        if (cap >= p->until)
            return 0; /* a step past the one that reached UNTIL: warm */
        if (i % (uint32_t)p->double_days == 0)
            cap = cap > p->until / 2 ? p->until : cap * 2;
    }
    return cap;
}

/* qmgr_wplan_decide - see qmgr_wplan.h */
enum qmgr_wplan_verdict
qmgr_wplan_decide(const struct qmgr_wplan *p, const struct qstore_warmup *day)
{
    int64_t def, comp;

    if (day->attempts == 0)
        return QMGR_WPLAN_HOLD; /* no evidence */
    def = (int64_t)(day->deferrals * 1000000u / day->attempts);
    comp = (int64_t)(day->complaints * 1000000u / day->attempts);
    if (def > p->back_deferral || comp > p->back_complaint)
        return QMGR_WPLAN_STEP_BACK;
    if (def <= p->max_deferral && comp <= p->max_complaint)
        return QMGR_WPLAN_PROMOTE;
    return QMGR_WPLAN_HOLD;
}

/* qmgr_wplan_destination - see qmgr_wplan.h */
const char *
qmgr_wplan_destination(const struct qmgr_wplan *p, const char *dest)
{
    for (uint32_t i = 0; i < p->ndests; i++)
        if (strcasecmp(p->dests[i], dest) == 0)
            return p->dests[i];
    return p->any ? "*" : NULL;
}
