/*
 * smtpout.h - the smtp-out worker's internal interfaces
 *
 * The worker is split in these parts:
 *   smtpout.c         main: process-wide resources (resolver, TLS context, the
 *                     queue store) and the shutdown sequence
 *   smtpout_worker.c  the channel to qmgr: connect with back-off, parse
 *                     qmgr's frames, encode our reports (runtime/mailproto.h)
 *   smtpout_conn*.c   the connection table and each connection's life:
 *                     settings (_cfg), resolve and connect walking the
 *                     destinations (_walk), run the transactions qmgr sends
 *                     (_txn), close (smtpout_conn_int.h: what they share)
 *   smtpout_txn.c     one transaction: read the message from the queue and
 *                     turn it into a struct smtpout_message (with what goes
 *                     out beyond it: the tracking ENVID, X-Virtual-MTA)
 *
 * qmgr owns every decision about connections; this worker opens exactly the
 * connections it orders and reports every recipient's result.
 *
 * SECURITY: frames from qmgr are parsed field by field (ipc_get_*), strings
 * bounded; peer reply text reaching a report was sanitized by smtpout_session.
 */
#ifndef PMTA_SMTPOUT_H
#define PMTA_SMTPOUT_H

#include <stddef.h>
#include <stdint.h>

#include "cfg.h"
#include "envid.h"
#include "qstore.h"
#include "mxdns.h"
#include "mxroute.h"
#include "smtpout_session.h"
#include "smtpout_sts.h"

/* --- smtpout.c: process-wide resources ---------------------------------------- */
struct mxdns *out_dns(void);
SSL_CTX *out_ssl_ctx(void);
/* out_ssl_ctx_ca - a context whose trust store is CA_FILE (NULL: the system's); NULL if none */
SSL_CTX *out_ssl_ctx_ca(const char *ca_file);
/* out_sts - the MTA-STS policy cache, or NULL without TLS */
struct smtpout_sts *out_sts(void);
struct qstore *out_queue(void);
/* out_check_stopped - during shutdown: finish when no connection is left */
void out_check_stopped(void);

/* --- smtpout_worker.c: the qmgr channel ---------------------------------------- */
void out_chan_start(void);
/* out_chan_close - close the channel for good (shutdown) */
void out_chan_close(void);
void out_report_up(uint32_t conn, const char *mx, const char *dest_ip, const char *source_ip,
                   const char *tls, const char *esmtp);
/* out_report_rcpt - MP_RCPT_RESULT; SENT_NS: when its transaction went out (0: never) */
void out_report_rcpt(uint32_t conn, uint64_t msgid, uint32_t index, uint32_t result,
                     const struct smtpout_reply *r, uint64_t sent_ns);
void out_report_txn_done(uint32_t conn, uint64_t msgid);
void out_report_idle(uint32_t conn);
void out_report_down(uint32_t conn, uint32_t result, const struct smtpout_reply *r, const char *mx,
                     const char *dest_ip);
/* out_report_trace - MP_TRACE_LINE of a traced connection: KIND and sanitized TEXT at AT_NS */
void out_report_trace(uint32_t conn, uint64_t at_ns, const char *kind, const char *text);
/* out_result_of - MP_RESULT_* of a reply class */
uint32_t out_result_of(enum smtpout_class cls);

/* --- smtpout_conn.c: connections ----------------------------------------------- */
struct oconn_order { /* MP_CONN_OPEN's fields (borrowed) */
    uint32_t id;
    const char *queue, *domain, *vmta, *source_ip, *helo;
    uint64_t config_generation;
};
/* oconn_open - start the connection qmgr ordered; -EEXIST if ID is in use */
int oconn_open(const struct oconn_order *o);
/* oconn_txn - queue one transaction on connection ID; -ENOENT if unknown */
int oconn_txn(uint32_t id, uint64_t msgid, const uint32_t *indexes, size_t n);
/* oconn_trace - MP_CONN_TRACE: report connection ID's conversation until its next transaction is
 * done (FLAGS MP_TRACE_*); -ENOENT if unknown */
int oconn_trace(uint32_t id, uint32_t flags);
/* oconn_close - QUIT connection ID once it is idle; -ENOENT if unknown */
int oconn_close(uint32_t id);
/* oconn_abort_all - the qmgr channel is gone: drop every connection, report nothing */
void oconn_abort_all(void);
/* oconn_shutdown - QUIT idle connections, the others after their transaction; from now on
 * no MP_CONN_DOWN is sent (the qmgr channel's end requeues what is in flight) */
void oconn_shutdown(void);
size_t oconn_count(void);

/* --- smtpout_txn.c: transactions ------------------------------------------------ */
struct otxn {
    struct otxn *next;
    uint64_t msgid;
    uint32_t *indexes; /* as qmgr sent them */
    size_t nindexes;
    struct qstore_msg *qm;      /* the message copied out of the queue */
    struct smtpout_rcpt *rcpts; /* the recipients still queued, in order */
    uint32_t *rcpt_index;       /* rcpts[i]'s index in the message */
    unsigned char *reported;    /* rcpts[i] has a result */
    size_t nrcpts;
    struct smtpout_message msg;
    uint64_t sent_ns;          /* when the session began sending it (uv_hrtime), 0 before */
    char envid[ENVID_MAX + 1]; /* the tracking ENVID msg.envid points to, or "" */
    char *data;                /* the body with what otxn_outbound put on top, or NULL */
};
/* otxn_new - from MP_CONN_TXN's index list (big-endian u32s) */
struct otxn *otxn_new(uint64_t msgid, const uint32_t *indexes, size_t n);
/*
 * otxn_load - read the message; every requested recipient that is not in
 * the queue any more is passed to GONE (with the reason). 0, or -errno when
 * the message could not be read (then every recipient is "gone").
 */
int otxn_load(struct otxn *t, struct qstore *qs,
              void (*gone)(void *arg, uint32_t index, const struct smtpout_reply *why), void *arg);
/*
 * otxn_outbound - what goes out beyond the queued message, for a transaction
 * sent through VMTA: the tracking ENVID (envid.h) when TRACK (tracking-envid,
 * SMTP only), the client gave none and the sender is not null; the
 * "X-Virtual-MTA: VMTA" field on top when the message asks for it
 * (add-x-virtual-mta-header). After otxn_load succeeded.
 */
void otxn_outbound(struct otxn *t, const char *vmta, int track);
void otxn_free(struct otxn *t);

#endif
