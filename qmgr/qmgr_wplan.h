/*
 * qmgr_wplan.h - a compiled <warmup-plan>: its caps by step and the rule that
 *                moves a step (qmgr_wplan.c; used by qmgr_warmup.c)
 */
#ifndef PMTA_QMGR_WPLAN_H
#define PMTA_QMGR_WPLAN_H

#include <stdint.h>

#include "cfg.h"
#include "qstore.h"

struct qmgr_wplan {
    char *name;
    int64_t *caps; /* caps[i] for step i + 1 (day lines, filled forward) */
    uint32_t nsteps;
    int64_t double_days, until; /* double-every: day 1's cap doubles every DOUBLE_DAYS */
    char **dests;
    uint32_t ndests;
    int any; /* `destination *`, or no destination line */
    int64_t max_deferral, max_complaint, back_deferral, back_complaint; /* parts per million */
    char *overflow;                                                     /* virtual MTA, or NULL */
};

enum qmgr_wplan_verdict { QMGR_WPLAN_HOLD, QMGR_WPLAN_PROMOTE, QMGR_WPLAN_STEP_BACK };

/* qmgr_wplan_compile - P from <warmup-plan> scope S of C (free with qmgr_wplan_free) */
void qmgr_wplan_compile(struct qmgr_wplan *p, const struct cfg *c, uint32_t s);
void qmgr_wplan_free(struct qmgr_wplan *p);
/* qmgr_wplan_cap - the daily cap of STEP (1-based); 0 past the last step (the address is warm) */
int64_t qmgr_wplan_cap(const struct qmgr_wplan *p, uint32_t step);
/*
 * qmgr_wplan_decide - a day ended with DAY's counts: step back when deferrals
 * or complaints passed their step-back rate, promote when both stayed at or
 * below their max rate, else (or without attempts) hold
 */
enum qmgr_wplan_verdict qmgr_wplan_decide(const struct qmgr_wplan *p,
                                          const struct qstore_warmup *day);
/* qmgr_wplan_destination - P's name for destination DEST: DEST, "*", or NULL (no cap) */
const char *qmgr_wplan_destination(const struct qmgr_wplan *p, const char *dest);

#endif
