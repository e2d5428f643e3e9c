/*
 * qmgr_backoff.h - backoff mode and <smtp-pattern-list> reply actions (qmgr_backoff.c)
 */
#ifndef PMTA_QMGR_BACKOFF_H
#define PMTA_QMGR_BACKOFF_H

#include <stdint.h>

#include "qmgr.h"

/* qmgr_backoff_config - compile the smtp-pattern-lists of S.cfg (start-up and reload) */
void qmgr_backoff_config(void);
void qmgr_backoff_close(void);

/*
 * qmgr_reply_actions - match RES (a reply received while delivering for Q)
 * against Q's smtp-pattern-list; switch Q's mode if the matching line says
 * so; return the line's CFG_REPLY_* bits (cfg.h) (0: no list or no match).
 */
unsigned qmgr_reply_actions(struct qqueue *q, const struct qresult *res);

/*
 * qmgr_backoff_set_mode - put Q in MODE (enum qqueue_mode) because of WHY
 * (logged). Entering or staying in backoff restarts the way back to normal:
 * TO_NORMAL_S seconds (a pattern's backoff-to-normal-after=), or the queue's
 * backoff-to-normal-after when TO_NORMAL_S is -1.
 */
void qmgr_backoff_set_mode(struct qqueue *q, int mode, const char *why, int64_t to_normal_s);

/* qmgr_backoff_delivered - one delivery on Q (backoff-to-normal-after-delivery) */
void qmgr_backoff_delivered(struct qqueue *q);

#endif
