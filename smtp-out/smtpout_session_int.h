/*
 * smtpout_session_int.h - what the pieces of an outbound SMTP session share (not an API)
 *
 * A session (smtpout_session.h is its API) is four files, one concern each:
 * smtpout_session.c (its life: connect, read, timers, the protocol engine's
 * events, close), smtpout_session_write.c (what goes to the socket: the
 * engine's commands and the message body, in order, in clear or as TLS
 * records), smtpout_session_tls.c (STARTTLS over memory BIOs: handshake,
 * certificate check, decrypting what arrives) and smtpout_session_log.c
 * (transcripts: log-commands, log-data, log-transfer-failures, pmtactl
 * trace). This header holds struct smtpout_session, which they share.
 */
#ifndef PMTA_SMTPOUT_SESSION_INT_H
#define PMTA_SMTPOUT_SESSION_INT_H

#include <openssl/ssl.h>

#include "buf.h"
#include "smtpout_session.h"

#define BODY_BATCH_BYTES (256 * 1024) /* message bytes per body write */
#define BODY_BATCH_BUFS  1024         /* iovecs per body write */
#define TLS_STAGE_BYTES  (64 * 1024)  /* plaintext per SSL_write of the body */
#define LOG_LINE_MAX     600          /* bytes of one transcript line logged */
#define LOG_DATA_MAX     (256 * 1024) /* message bytes logged per transaction (log-data) */
#define KEPT_LINES_MAX   200          /* transcript lines kept for log-transfer-failures */

struct smtpout_session {
    uv_loop_t *loop;
    uv_tcp_t tcp;
    uv_timer_t timer;
    uv_connect_t connect_req;
    int handles_open;
    struct smtpout_session_callbacks cb;
    void *arg;
    struct smtpout_proto *proto;

    /* configuration (copied) */
    struct smtpout_session_config cfg;
    struct sockaddr_storage source, dest;
    char mx_name[256];
    char helo_name[256];
    char dest_ip[INET6_ADDRSTRLEN];
    char log_tag[300];
    struct buf kept; /* log-transfer-failures: this transaction's lines, NUL-separated */
    unsigned nkept;
    int txn_failed; /* a recipient of this transaction failed */
    unsigned trace; /* SMTPOUT_TRACE_*: pmtactl trace is watching */

    int closing; /* handles closing; `closed` comes next */
    enum smtpout_stage timer_stage;
    unsigned timer_ms; /* the armed timer's timeout, for the reason text */
    char rbuf[16 * 1024];

    /* TLS */
    SSL *ssl;
    BIO *rbio, *wbio; /* owned by ssl */
    int tls_active;
    int dane_usable; /* TLSA records OpenSSL took */
    char check_text[300];

    /* the body being sent */
    const struct smtpout_message *msg;
    int bdat; /* no dot-stuffing, no final "." */
    int pumping;
    size_t body_off;
    int body_queued_all;

    struct smtpout_reply close_reason;
};

/* --- smtpout_session.c --------------------------------------------------------------- */
/* session_fail_local - local trouble ends the session: "WHAT (mx[ip])" */
void session_fail_local(struct smtpout_session *s, enum smtpout_class cls, const char *status,
                        const char *what);
/* session_arm_timer - (re)start the session's one timer: MS for STAGE (0: 5 minutes) */
void session_arm_timer(struct smtpout_session *s, unsigned ms, enum smtpout_stage stage);

/* --- smtpout_session_write.c --------------------------------------------------------- */
/* session_flush_output - send the commands the engine wrote (as one piece, in order) */
void session_flush_output(struct smtpout_session *s);
/* session_tls_flush - send what OpenSSL wrote into the outgoing BIO; 1 written (or nothing
   to send), 0 queued, -1 failed */
int session_tls_flush(struct smtpout_session *s, int body);
/* session_body_pump - send the body (s->msg) batch by batch, then wait for the reply */
void session_body_pump(struct smtpout_session *s);

/* --- smtpout_session_tls.c ----------------------------------------------------------- */
/* session_tls_start - the engine asked for STARTTLS: set up the SSL and begin the handshake */
void session_tls_start(struct smtpout_session *s);
/* session_tls_continue - more handshake bytes arrived (or may be sent) */
void session_tls_continue(struct smtpout_session *s);
/* session_tls_read_loop - decrypt what arrived and hand it to the engine */
void session_tls_read_loop(struct smtpout_session *s);

/* --- smtpout_session_log.c ----------------------------------------------------------- */
/* session_transcript - one line of the conversation: logged now, or kept until the
   transaction fails */
void session_transcript(struct smtpout_session *s, const char *dir, const char *line, size_t len);
/* session_transcript_lines - every line of DATA (the commands just written) */
void session_transcript_lines(struct smtpout_session *s, const char *dir, const char *data,
                              size_t len);
/* session_transcript_failed - the transaction failed: write the lines kept for it */
void session_transcript_failed(struct smtpout_session *s, const struct smtpout_reply *r);
/* session_transcript_data - log-data: the message as it goes out (before dot-stuffing) */
void session_transcript_data(struct smtpout_session *s, const struct smtpout_message *m);

#endif
