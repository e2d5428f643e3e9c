/*
 * qmgr_backoff.h - backoff mode and <smtp-pattern-list> reply actions (qmgr_backoff.c)
 */
#ifndef PMTA_QMGR_BACKOFF_H
#define PMTA_QMGR_BACKOFF_H

#include <stdint.h>

#include "qmgr.h"

/* What a matching `reply /re/ ACTIONS` line asks for. */
#define QMGR_REPLY_BACKOFF     0x01u /* mode=backoff (done by qmgr_reply_actions) */
#define QMGR_REPLY_NORMAL      0x02u /* mode=normal (done by qmgr_reply_actions) */
#define QMGR_REPLY_DEFER_QUEUE 0x04u /* the queue goes into retry mode now */
#define QMGR_REPLY_BOUNCE_RCPT 0x08u /* a temporary failure of this recipient bounces */
#define QMGR_REPLY_SKIP_MX     0x10u /* keep the recipient queued even after a 5xx */
#define QMGR_REPLY_DISABLE_SOURCE \
    0x20u /* stop using the source address (done by qmgr_reply_actions) */
#define QMGR_REPLY_BOUNCE_QUEUE 0x40u /* every recipient of the queue bounces now */

/* qmgr_backoff_config - compile the smtp-pattern-lists of S.cfg (start-up and reload) */
void qmgr_backoff_config(void);
void qmgr_backoff_close(void);

/*
 * qmgr_reply_actions - match RES (a reply received while delivering for Q)
 * against Q's smtp-pattern-list; switch Q's mode if the matching line says
 * so; return the line's QMGR_REPLY_* bits (0: no list or no match).
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
