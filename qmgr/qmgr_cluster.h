/*
 * qmgr_cluster.h - several hosts, one set of limits: what qmgr shares in
 *                  Redis when the configuration has a <cluster> block
 *
 * Hosts stay independent MTAs with their own spools; what they share lives
 * in Redis (doc/pmta-config.5, CLUSTER):
 *   - the limiters (qmgr_limit.h) of every queue, virtual MTA and source
 *     address, unless written local:LIMIT: rates as a GCRA in Redis that
 *     grants each host small batches of slots ahead of need, connections as
 *     leases that die with their host, warm-up caps as shared daily counts
 *     (qmgr_cluster_limit.c);
 *   - backoff mode with the reply that caused it and its end, and
 *     disable-source-ip, announced on a pub/sub channel and kept in hashes
 *     for hosts that start or reconnect later (qmgr_cluster_state.c);
 *   - node heartbeats: who is alive, for `pmtactl show cluster` and for the
 *     share of each limit a host takes while Redis is unreachable
 *     (qmgr_cluster.c).
 * Every Redis call is asynchronous on qmgr's libuv loop (hiredis); nothing
 * waits for Redis. When it is unreachable each host keeps delivering under
 * its share of every shared limit (the limit divided by the nodes last seen
 * alive), logs one warning, and shares again once Redis is back.
 *
 * Without a <cluster> block none of this runs and every limiter is local.
 */
#ifndef PMTA_QMGR_CLUSTER_H
#define PMTA_QMGR_CLUSTER_H

#include <stdint.h>

#include <jansson.h>

#include "qmgr.h"

/* qmgr_cluster_config - start, reconfigure or stop sharing for S.cfg (start-up and reload) */
void qmgr_cluster_config(void);
/* qmgr_cluster_stop - give back this node's leases, close the connections (shutdown) */
void qmgr_cluster_stop(void);
/* qmgr_cluster_free - everything it still holds (after the queues are freed) */
void qmgr_cluster_free(void);

/* qmgr_cluster_on - does the configuration have a <cluster>? */
int qmgr_cluster_on(void);

/*
 * qmgr_cluster_adopt - L (set from a limit that LOCAL says was written
 * local:LIMIT) is shared when a cluster is configured and LOCAL is 0, else
 * local; nothing changes when it already is
 */
void qmgr_cluster_adopt(struct qlim *l, int local);

/* qmgr_cluster_mode_changed - Q's mode (or its end) changed here: tell the other nodes */
void qmgr_cluster_mode_changed(struct qqueue *q, const char *why);
/* qmgr_cluster_queue_new - Q was just created: the mode the cluster has for it, if any */
void qmgr_cluster_queue_new(struct qqueue *q);
/* qmgr_cluster_source_disabled - disable-source-ip of IP for Q, for SECONDS (< 0: until a
 * restart), here: tell the other nodes */
void qmgr_cluster_source_disabled(struct qqueue *q, const char *ip, int64_t seconds);
/* qmgr_cluster_source_operator - pmtactl disable/enable source here: the same on every node */
void qmgr_cluster_source_operator(const char *ip, const char *vmta, int64_t seconds, int enable);

/* qmgr_cluster_json - `pmtactl show cluster`: the nodes, and with QUEUE (a pattern, may be
 * NULL) the shared state of the matching queues */
json_t *qmgr_cluster_json(const char *queue);

#endif
