/*
 * qmgr_cluster_int.h - what the cluster's files share: the Redis link
 *                      (qmgr_cluster.c), its Lua scripts (qmgr_cluster_lua.c),
 *                      the limiter backend (qmgr_cluster_limit.c) and the
 *                      shared modes (qmgr_cluster_state.c)
 *
 * Keys (PREFIX is key-prefix, "pmta:" by default):
 *   PREFIXrate:KEY          a rate's TAT in Redis microseconds (string)
 *   PREFIXlease:KEY         a lease limit's holders: node -> leases (hash)
 *   PREFIXquota:KEY:WINDOW  a quota's units used in one window (string)
 *   PREFIXnode:NAME         a node's heartbeat (hash; expires after lease-time)
 *   PREFIXnodes             every node seen (hash: name -> last heartbeat, unix ms)
 *   PREFIXnodeleases:NAME   the lease hashes a node has a field in (set)
 *   PREFIXmodes             queues in backoff: queue -> JSON (hash)
 *   PREFIXdisabled          disabled source addresses: "queue ip" -> JSON (hash)
 *   PREFIXevents            the pub/sub channel of mode and source changes
 * where KEY is the limiter's scope letter, its kind and its name
 * ("q:msg:gmail.com/vmta1", "s:conn:127.0.0.21 source-ip-max-smtp-out ...").
 */
#ifndef PMTA_QMGR_CLUSTER_INT_H
#define PMTA_QMGR_CLUSTER_INT_H

#include <stddef.h>
#include <stdint.h>

#include <hiredis/hiredis.h>
#include <jansson.h>

#include "qmgr.h"

enum cl_script {
    CL_SCRIPT_RATE,      /* a batch of rate slots (and charges) */
    CL_SCRIPT_LEASE,     /* one more lease, one back, or this node's count set */
    CL_SCRIPT_QUOTA,     /* a batch of quota units */
    CL_SCRIPT_HEARTBEAT, /* this node is alive; every node's heartbeat back */
    CL_SCRIPT_NODE_UP,   /* this node (re)starts: its old leases are dropped */
    CL_SCRIPT_NODE_DOWN, /* this node stops: its leases and heartbeat go */
    CL_SCRIPT_STATE,     /* set or clear a hash field and publish the change */
    CL_SCRIPTS
};

/* qmgr_cluster_lua.c: the scripts' text */
extern const char *const cl_script_text[CL_SCRIPTS];

/* --- the Redis link (qmgr_cluster.c) ----------------------------------------------------- */

/* a reply to a cl_eval/cl_command: R is NULL when Redis failed before answering */
typedef void cl_reply_fn(redisReply *r, void *priv);

/* cl_up - is Redis reachable and this node registered? */
int cl_up(void);
/* cl_node - this node's name */
const char *cl_node(void);
/* cl_key - PREFIX followed by the printf of FMT into BUF */
const char *cl_key(char *buf, size_t size, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* cl_lease_ms - lease-time in milliseconds */
uint64_t cl_lease_ms(void);
/* cl_alive - nodes alive at the last heartbeat Redis answered (this one included; >= 1) */
uint32_t cl_alive(void);
/*
 * cl_eval - run SCRIPT in Redis with ARGV[0..ARGC) (all strings), the first
 * NKEYS of them its keys; FN(reply, PRIV) follows, or never when it
 * returns -1 (Redis is down)
 */
int cl_eval(enum cl_script script, cl_reply_fn *fn, void *priv, int nkeys, int argc,
            const char **argv);
/* cl_command - the Redis command ARGV[0..ARGC), as cl_eval */
int cl_command(cl_reply_fn *fn, void *priv, int argc, const char **argv);
/* cl_redis_us - Redis's clock (microseconds) at local monotonic NOW_NS */
int64_t cl_redis_us(uint64_t now_ns);
/* cl_local_ns - the local monotonic time of Redis's clock REDIS_US */
uint64_t cl_local_ns(int64_t redis_us);
/* cl_clock_sample - a reply said Redis's clock was REDIS_US; the request went at SENT_NS */
void cl_clock_sample(int64_t redis_us, uint64_t sent_ns);
/* cl_nodes_json - the nodes of the last heartbeat (show cluster) */
json_t *cl_nodes_json(void);
/* cl_link_json - the node, the Redis in use and its state (show cluster) */
json_t *cl_link_json(void);
/* cl_round_trips - Redis commands sent since start */
uint64_t cl_round_trips(void);

/* --- the limiter backend (qmgr_cluster_limit.c) ------------------------------------------ */

extern const struct qlim_backend cl_backend;
/* cl_limit_up - Redis is back (or new): leases held are registered again, grants start over */
void cl_limit_up(void);
/* cl_limit_down - Redis is gone: every shared limiter takes its share locally */
void cl_limit_down(void);
/* cl_limit_release_all - shutdown: nothing more is asked */
void cl_limit_release_all(void);
/* cl_limit_json - the shared state of L, for show cluster */
json_t *cl_limit_json(struct qlim *l);
/* cl_limit_stats - limiters shared, and how many hold a grant */
void cl_limit_stats(uint32_t *shared, uint32_t *granted);
void cl_limit_free(void);

/* --- shared modes and sources (qmgr_cluster_state.c) --------------------------------------- */

/* cl_state_up - Redis is back (or new): the shared modes are read, ours announced */
void cl_state_up(void);
/* cl_state_message - a message on the events channel (LEN bytes of JSON) */
void cl_state_message(const char *text, size_t len);
/* cl_state_channel - the events channel's name into BUF */
const char *cl_state_channel(char *buf, size_t size);
void cl_state_free(void);

#endif
