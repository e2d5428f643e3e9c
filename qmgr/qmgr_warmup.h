/*
 * qmgr_warmup.h - IP warm-up plans and cold virtual MTAs (qmgr_warmup.c)
 */
#ifndef PMTA_QMGR_WARMUP_H
#define PMTA_QMGR_WARMUP_H

#include <stdint.h>

#include <jansson.h>

#include "qmgr.h"

/* qmgr_warmup_start - read the saved state (after the queue is open); the one-second timer */
void qmgr_warmup_start(void);
/* qmgr_warmup_stop - save what changed and stop the timer (shutdown, before the group closes) */
void qmgr_warmup_stop(void);
void qmgr_warmup_free(void);

/* qmgr_warmup_today - the warm-up clock's day (UTC days since the epoch, plus the offset) */
uint64_t qmgr_warmup_today(void);
/* qmgr_warmup_advance - move the warm-up clock SECONDS ahead (tests); the new day */
uint64_t qmgr_warmup_advance(int64_t seconds);

/* qmgr_warmup_planned - does a warm-up plan cap queue Q's destination on its virtual MTA? */
int qmgr_warmup_planned(struct qqueue *q);
/* qmgr_warmup_limit - the daily cap (a QUOTA limiter) of Q's mail from source IP, or NULL */
struct qlim *qmgr_warmup_limit(struct qqueue *q, const char *ip);
/* qmgr_warmup_outcome - one outcome of mail counted by cap L: deferred, complaint-like bounce */
void qmgr_warmup_outcome(struct qlim *l, int deferred, int complaint);
/* qmgr_warmup_overflow - cap L holds Q back: with overflow-virtual-mta, move Q's mail there;
 * 1 if some moved */
int qmgr_warmup_overflow(struct qqueue *q, struct qlim *l);
/* qmgr_warmup_cold - the queue a recipient of Q joins: Q's cold virtual MTA's while
 * max-cold-virtual-mta-msg allows (one taken), else Q */
struct qqueue *qmgr_warmup_cold(struct qqueue *q);
/* qmgr_warmup_json - the warm-up state of virtual MTA VMTA's source addresses (show vmtas) */
json_t *qmgr_warmup_json(const char *vmta);

#endif
