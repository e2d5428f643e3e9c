/*
 * smtpout_session.h - one outbound SMTP client connection on libuv
 *
 * NAME
 *   smtpout_session - connect, greet, EHLO, STARTTLS, transactions, QUIT
 *
 * DESCRIPTION
 *   A session is one TCP connection from a chosen source address to one
 *   destination address. It greets, sends EHLO (HELO after a 5xx), upgrades
 *   with STARTTLS as the policy asks, then reports `ready`; the owner runs
 *   transactions one at a time with smtpout_session_send() (MAIL, RCPT...,
 *   DATA, pipelined when the peer offers PIPELINING) and gets one
 *   `rcpt_result` per recipient and one `transaction_done` per transaction.
 *   A later transaction on the same connection is preceded by RSET.
 *   smtpout_session_quit() ends politely; smtpout_session_abort() at once.
 *   Every session ends with exactly one `closed` callback, after which the
 *   session is freed (do not touch it again).
 *
 *   Failures are classified where they happen: 2xx = delivered, 4xx and
 *   every local trouble (timeouts, lost connection, protocol errors, TLS
 *   required but unavailable) = temporary, 5xx = permanent. Results that
 *   we make up carry code 0 and an enhanced status we chose.
 *
 * OWNERSHIP
 *   The configuration strings and the SSL_CTX are borrowed for the life of
 *   the session. A message (and its data) is borrowed until its
 *   `transaction_done` (or `closed`). Replies passed to callbacks are
 *   borrowed for the call.
 *
 *   The protocol itself (replies, states, commands) is the I/O-free engine in
 *   smtpout_proto.h; this is the connection, TLS, timers and the body pump
 *   around it.
 *
 * TRANSCRIPTS
 *   With SMTPOUT_LOG_COMMANDS every command ("TAG: > MAIL FROM:<...>") and
 *   every reply ("TAG: < 250 2.1.0 Ok") goes to the log as it happens; with
 *   SMTPOUT_LOG_DATA the message lines too ("TAG: > | line", at most
 *   LOG_DATA_MAX bytes a message). With SMTPOUT_LOG_TRANSFER_FAILURES the
 *   lines of the current transaction are kept (bounded) and logged only when
 *   it fails. Replies are the engine's sanitized text; commands and data pass
 *   msg_printable(); an AUTH command's argument is never logged.
 *
 *   smtpout_session_trace() (pmtactl trace) passes the same lines, masked
 *   and sanitized the same way, to the `trace` callback as they happen,
 *   whatever the log-* settings; the message lines only with
 *   SMTPOUT_TRACE_DATA (otherwise one line says how many bytes went out).
 *
 * SECURITY
 *   The peer is hostile; its bytes are read by the engine (smtpout_proto.h:
 *   bounded lines and replies, lengths before offsets, sanitized text, no
 *   plaintext after the STARTTLS 220). With SMTPOUT_TLS_REQUIRED nothing is
 *   sent in clear after EHLO.
 */
#ifndef PMTA_SMTPOUT_SESSION_H
#define PMTA_SMTPOUT_SESSION_H

#include <stddef.h>
#include <sys/socket.h>
#include <openssl/ssl.h>
#include <uv.h>

#include "mxdns.h"
#include "smtpout_proto.h"
#include "smtpout_tls.h"

/* What a session writes to the log (the <domain>'s log-* directives). */
#define SMTPOUT_LOG_COMMANDS 0x1u /* log-commands: every command and reply */
#define SMTPOUT_LOG_DATA     0x2u /* log-data: the message as sent, too */
#define SMTPOUT_LOG_TRANSFER_FAILURES                     \
    0x4u /* log-transfer-failures: a failed transaction's \
            transcript, once it failed */

/* What a traced session passes to `trace` (smtpout_session_trace). */
#define SMTPOUT_TRACE_ON   0x1u /* commands, replies */
#define SMTPOUT_TRACE_DATA 0x2u /* the message lines too */

struct smtpout_session_config {
    const struct sockaddr *source; /* bind before connect; NULL = any */
    const struct sockaddr *dest;   /* address and port */
    const char *mx_name;           /* for events and TLS SNI */
    const char *helo_name;
    enum smtpout_tls_policy tls;
    SSL_CTX *ssl_ctx;              /* needed unless tls is OFF */
    unsigned connect_timeout_ms;   /* connect-timeout */
    unsigned greeting_timeout_ms;  /* smtp-greeting-timeout */
    unsigned command_timeout_ms;   /* each command reply, TLS handshake */
    unsigned data_send_timeout_ms; /* data-send-timeout: per body write */
    unsigned data_term_timeout_ms; /* smtp-data-termination-timeout */
    int ignore_pipelining;
    int ignore_8bitmime; /* don't announce BODY=8BITMIME nor refuse */
    int ignore_dsn;
    int ignore_chunking;       /* DATA even when the peer offers CHUNKING (BDAT) */
    const char *auth_username; /* auth-username / auth-password: AUTH when offered */
    const char *auth_password;
    int auth_in_clear;              /* use-unencrypted-plain-auth */
    struct smtpout_tls_check check; /* borrowed like the strings */
    unsigned log;                   /* SMTPOUT_LOG_* */
    const char *log_tag; /* starts every transcript line, e.g. "connection 7 example.com/v1" */
};

struct smtpout_session_callbacks {
    void (*connected)(void *arg, const char *source_ip, const char *dest_ip, const char *mx_name);
    /* CHECK: NULL without a certificate check, else "dane", "mta-sts", ... when it passed,
       or "LABEL failed: REASON" when it failed without ENFORCE */
    void (*tls)(void *arg, const char *protocol, const char *cipher, const char *check);
    /* greeting, EHLO and STARTTLS are done: the session is idle */
    void (*ready)(void *arg, unsigned caps);
    void (*rcpt_result)(void *arg, size_t index, const struct smtpout_reply *r);
    /* the transaction is over; R is its overall outcome (DATA's reply, or
     * why it stopped). The session is idle again unless it is closing. */
    void (*transaction_done)(void *arg, const struct smtpout_reply *r);
    /* last callback; the session is freed after it returns */
    void (*closed)(void *arg, const struct smtpout_reply *reason);
    /* a traced line (smtpout_session_trace): KIND ">" sent, "<" received, "|" message data,
       "*" a note; TEXT sanitized; may be NULL */
    void (*trace)(void *arg, const char *kind, const char *text);
};

struct smtpout_session;

/*
 * smtpout_session_start - begin connecting. Never fails synchronously:
 * every problem arrives through `closed`.
 */
struct smtpout_session *smtpout_session_start(uv_loop_t *loop,
                                              const struct smtpout_session_config *cfg,
                                              const struct smtpout_session_callbacks *cb,
                                              void *arg);
/*
 * smtpout_session_send - run one transaction; only when idle (after
 * `ready` or `transaction_done`). 0, or -EBUSY when not idle.
 */
int smtpout_session_send(struct smtpout_session *s, const struct smtpout_message *m);
/* smtpout_session_quit - QUIT (when idle; otherwise abort) and close */
void smtpout_session_quit(struct smtpout_session *s);
/* smtpout_session_abort - close now; a transaction in progress fails temporarily */
void smtpout_session_abort(struct smtpout_session *s);
/* smtpout_session_caps - capabilities seen in the last EHLO */
unsigned smtpout_session_caps(const struct smtpout_session *s);
/* smtpout_session_is_idle - may smtpout_session_send be called now? */
int smtpout_session_is_idle(const struct smtpout_session *s);
/* smtpout_session_authenticated - did AUTH (auth-username) succeed? */
int smtpout_session_authenticated(const struct smtpout_session *s);
/* smtpout_session_trace - pass the conversation to `trace` from now on (FLAGS SMTPOUT_TRACE_*;
 * 0 stops it) */
void smtpout_session_trace(struct smtpout_session *s, unsigned flags);
/* smtpout_session_transactions - transactions started on this connection */
unsigned smtpout_session_transactions(const struct smtpout_session *s);

#endif
