/*
 * smtpout_conn_int.h - what the pieces of the connection table share (not an API)
 *
 * The connection table (smtpout.h, "smtpout_conn.c: connections", is its
 * API) is four files, one concern each: smtpout_conn.c (the table, a
 * connection's start and end: open, close, abort, shutdown, the one
 * MP_CONN_DOWN and log line, pmtactl trace), smtpout_conn_cfg.c (the queue's
 * delivery settings and source address), smtpout_conn_walk.c (resolution,
 * MTA-STS, the TLS decision and the sessions tried until one is up) and
 * smtpout_conn_txn.c (the transactions qmgr sends over a connection that is
 * up, and their results). This header holds struct oconn, which they share.
 */
#ifndef PMTA_SMTPOUT_CONN_INT_H
#define PMTA_SMTPOUT_CONN_INT_H

#include <stdint.h>

#include "smtpout.h"
#include "smtpout_local.h"
#include "smtpout_tlspol.h"

#define COMMAND_TIMEOUT_MS (5u * 60u * 1000u)    /* MAIL, RCPT, DATA, RSET, QUIT, EHLO */
#define NEVER_MS           (24u * 3600u * 1000u) /* an interval of "never" */

struct oconn {
    struct oconn *hnext; /* table chain */
    uint32_t id;
    int in_table; /* 0 once detached (qmgr channel gone) */
    char *queue, *domain, *vmta, *helo;
    char *dest; /* the queue's destination: whose settings apply (a domain, a rollup) */
    char source_ip[INET6_ADDRSTRLEN];
    const struct cfg *cfg; /* pinned until the connection is freed */

    struct smtpout_session_config scfg; /* dest/mx_name set per attempt */
    char log_tag[MXDNS_NAME_MAX + 64];
    int log_connections; /* log-connections: every attempt and why it failed */
    int tracking_envid;  /* tracking-envid: our ENVID when the client gave none */
    struct sockaddr_storage source;
    struct cfg_route *route;
    int bounce_upon_5xx_greeting;
    unsigned max_attempts;
    uint16_t default_port; /* default-smtp-port */
    int bounce_upon_no_mx; /* bounce-upon-no-mx */

    struct mxroute_req *resolving;
    int resolve_in_call; /* the resolve callback ran synchronously */
    struct mxroute_dest *dests;
    size_t ndests, dest_index;
    unsigned attempts;
    int tls_downgraded;
    /* TLS policy: MTA-STS fetched beside the resolution, DANE per destination */
    struct smtpout_tlspol_settings tlspol;
    int use_mta_sts;
    struct smtpout_sts_req *sts_req;
    int sts_pending;
    struct smtpout_sts_policy sts_policy;
    int deciding;                       /* a TLSA lookup is out */
    struct smtpout_tls_decision tlsdec; /* of the current attempt (the session borrows it) */
    char verify[200];
    struct smtpout_reply last_error;
    int have_error;

    struct smtpout_session *session;
    int type;                    /* the queue's `type` (enum cfg_delivery_type) */
    struct smtpout_local *local; /* pipe, file, http-delivery: instead of a session */
    uv_timer_t kick;             /* local: says IDLE on the next turn unless a txn came */
    int kick_on;
    int up; /* MP_CONN_UP sent */
    int close_requested;
    int aborting;
    unsigned ntxns;
    struct otxn *current; /* being sent */
    struct otxn *pending, *pending_tail;

    char mx[MXDNS_NAME_MAX + 1];
    char dest_ip[INET6_ADDRSTRLEN];
    char tls[128];
    unsigned trace; /* SMTPOUT_TRACE_*: pmtactl trace watches until the transaction is done */
};

/* --- smtpout_conn.c ------------------------------------------------------------------ */
/* conn_find - the connection with ID in the table, or NULL */
struct oconn *conn_find(uint32_t id);
/* conn_is_shutting_down - the process stops: no new transactions; QUIT when idle */
int conn_is_shutting_down(void);
/* conn_local_failure - a reply we make up (code 0 and an enhanced status we chose) */
void conn_local_failure(struct smtpout_reply *r, enum smtpout_class cls, const char *status,
                        const char *text);
/* conn_down - the connection is over: one report, one log line, C freed */
void conn_down(struct oconn *c, uint32_t result, const struct smtpout_reply *r);
/* conn_trace - one MP_TRACE_LINE of a traced connection: KIND and the formatted text */
void conn_trace(struct oconn *c, const char *kind, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* conn_on_session_trace - a line of the session's conversation (a session callback) */
void conn_on_session_trace(void *arg, const char *kind, const char *text);
/* conn_trace_stop - the traced attempt is over */
void conn_trace_stop(struct oconn *c);

/* --- smtpout_conn_cfg.c -------------------------------------------------------------- */
/* conn_configure - the queue's delivery settings; 0, or -1 with R saying why */
int conn_configure(struct oconn *c, struct smtpout_reply *r);
/* conn_source - parse the source IP qmgr chose ("" = any); 0 or -1 with R saying why */
int conn_source(struct oconn *c, struct smtpout_reply *r);

/* --- smtpout_conn_walk.c ------------------------------------------------------------- */
/* conn_start - resolve the destinations (and MTA-STS), then try them until one is up */
void conn_start(struct oconn *c);
/* conn_give_up - no destination left: the last failure, as a temporary one */
void conn_give_up(struct oconn *c);

/* --- smtpout_conn_txn.c -------------------------------------------------------------- */
/* conn_idle - may a transaction start now? */
int conn_idle(const struct oconn *c);
/* conn_quit - QUIT the session; a local channel just ends */
void conn_quit(struct oconn *c);
/* conn_after_txn - the session is idle: run what is pending, quit, or say IDLE */
void conn_after_txn(struct oconn *c);
/* conn_on_rcpt_result, conn_on_transaction_done - the session's results (callbacks) */
void conn_on_rcpt_result(void *arg, size_t i, const struct smtpout_reply *r);
void conn_on_transaction_done(void *arg, const struct smtpout_reply *r);

#endif
