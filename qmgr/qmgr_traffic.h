/*
 * qmgr_traffic.h - what the web monitor charts: recipients received,
 *                  delivered, deferred and bounced per minute over the last
 *                  hour, and the most recent delivery errors
 *
 * Counters live in a ring of 60 one-minute buckets keyed by the wall-clock
 * minute, so an idle minute reads as zero and nothing needs a timer. Errors
 * live in a ring of the last QMGR_TRAFFIC_ERRORS. Both are in memory only
 * (a restart starts them anew, as PowerMTA's "last hour" counters do).
 * Times are unix seconds passed in by the caller, so the module does no I/O
 * and the unit test drives the clock.
 */
#ifndef PMTA_QMGR_TRAFFIC_H
#define PMTA_QMGR_TRAFFIC_H

#include <stdint.h>

#include <jansson.h>

#define QMGR_TRAFFIC_MINUTES 60
#define QMGR_TRAFFIC_ERRORS  50

enum qmgr_traffic_kind { QT_RECEIVED, QT_DELIVERED, QT_DEFERRED, QT_BOUNCED, QT_KINDS };

/* qmgr_traffic_count - N recipients of KIND at unix second WALL */
void qmgr_traffic_count(enum qmgr_traffic_kind kind, uint64_t wall, uint64_t n);
/*
 * qmgr_traffic_error - remember an error at WALL: WHAT is "deferred",
 * "bounced" or "connection", QUEUE the queue's name, TEXT the reply (copied,
 * truncated; control bytes become '?')
 */
void qmgr_traffic_error(uint64_t wall, const char *what, const char *queue, const char *text);
/*
 * qmgr_traffic_minutes_json - the last 60 minutes up to WALL's, oldest
 * first: [{"minute": unix seconds of its start, "received": N, "delivered": N,
 * "deferred": N, "bounced": N}, ...]
 */
json_t *qmgr_traffic_minutes_json(uint64_t wall);
/* qmgr_traffic_errors_json - the recent errors, newest first: [{"time","what","queue","text"}] */
json_t *qmgr_traffic_errors_json(void);
/* qmgr_traffic_reset - forget everything (pmtactl reset counters) */
void qmgr_traffic_reset(void);

#endif
