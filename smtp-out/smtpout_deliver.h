/*
 * smtpout_deliver.h - one delivery job: messages for one queue in,
 * per-recipient results out
 *
 * NAME
 *   smtpout_deliver - the unit of work qmgr hands to an smtp-out process
 *
 * DESCRIPTION
 *   A job is one or more messages (transactions) for one queue (domain /
 *   virtual MTA): the same destination, source address, HELO name and
 *   policy. smtpout_job_start() resolves the destinations (mxroute),
 *   walks them in order until a connection gets past greeting, EHLO and
 *   STARTTLS, then runs the transactions one after another on that
 *   connection (RSET in between), and QUITs.
 *
 *   Every recipient of every message gets exactly one rcpt_result; then
 *   `done` runs once. Connection-level events (resolved, connecting,
 *   connected, tls, closed) are reported through `event` for logging and
 *   accounting.
 *
 *   Destination rules:
 *   - resolution failed: every recipient gets its verdict (NXDOMAIN, null
 *     MX, bounce-upon-no-mx: permanent; SERVFAIL/timeout: temporary);
 *   - a connection that fails before it is ready (refused, timeout, 4xx
 *     greeting, TLS required but unavailable) moves on to the next
 *     destination, up to mx_connection_attempts; when none is left the
 *     recipients get the last failure, as a temporary one;
 *   - a 5xx greeting is permanent for every recipient when
 *     bounce_upon_5xx_greeting is set (PowerMTA's default), otherwise it is
 *     treated like a 4xx;
 *   - an opportunistic STARTTLS whose handshake fails is retried once on the
 *     same destination without TLS (the mail then goes in clear);
 *   - if the connection ends while messages are still unsent, they go to
 *     the next destination;
 *   - a 421 during a transaction is a temporary result for the recipients
 *     it hit, unless smtp_421_means_mx_unavailable: then they are kept and
 *     retried on the next destination.
 *
 * OWNERSHIP
 *   The job, its messages and everything they point to are borrowed until
 *   `done`. The resolver and SSL_CTX must outlive the job.
 */
#ifndef PMTA_SMTPOUT_DELIVER_H
#define PMTA_SMTPOUT_DELIVER_H

#include <stddef.h>
#include <stdint.h>

#include "mxdns.h"
#include "mxroute.h"
#include "smtpout_session.h"

struct smtpout_job {
    struct smtpout_session_config session; /* dest and mx_name set per attempt */
    const char *domain;
    const struct cfg_route *route; /* smtp-hosts; NULL = MX lookup */
    uint16_t default_port;         /* default-smtp-port (0 = 25) */
    int bounce_upon_no_mx;
    int bounce_upon_5xx_greeting;
    int smtp_421_means_mx_unavailable; /* 421 in a transaction: next MX */
    unsigned mx_connection_attempts;   /* 0 = 10 */
    const struct smtpout_message *msgs;
    size_t nmsgs;
};

enum smtpout_event_type {
    SMTPOUT_EV_RESOLVED,    /* ndests destinations (or reply: why none) */
    SMTPOUT_EV_CONNECTING,  /* mx_name, dest_ip, port */
    SMTPOUT_EV_CONNECTED,   /* + source_ip */
    SMTPOUT_EV_TLS,         /* tls_protocol, tls_cipher */
    SMTPOUT_EV_READY,       /* caps */
    SMTPOUT_EV_TRANSACTION, /* msg_index, reply */
    SMTPOUT_EV_CLOSED,      /* reply: why */
};

struct smtpout_event {
    enum smtpout_event_type type;
    const char *mx_name;
    const char *dest_ip;
    unsigned port;
    const char *source_ip;
    const char *tls_protocol;
    const char *tls_cipher;
    unsigned caps;
    size_t ndests;
    size_t msg_index;
    const struct smtpout_reply *reply;
};

struct smtpout_job_callbacks {
    void (*event)(void *arg, const struct smtpout_event *ev);
    /* MX_NAME / DEST_IP: where it happened ("" when no connection was made) */
    void (*rcpt_result)(void *arg, size_t msg_index, size_t rcpt_index,
                        const struct smtpout_reply *r, const char *mx_name, const char *dest_ip);
    void (*done)(void *arg);
};

struct smtpout_delivery;

/* smtpout_job_start - run JOB; never fails synchronously (results say why) */
struct smtpout_delivery *smtpout_job_start(uv_loop_t *loop, struct mxdns *dns,
                                           const struct smtpout_job *job,
                                           const struct smtpout_job_callbacks *cb, void *arg);
/* smtpout_job_abort - stop; recipients without a result get a temporary one */
void smtpout_job_abort(struct smtpout_delivery *d);

#endif
