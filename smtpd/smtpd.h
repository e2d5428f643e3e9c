/*
 * smtpd.h - the smtpd worker's modules and what they share
 *
 * NAME
 *   smtpd - inbound SMTP worker: sessions, <source> policy, TLS, AUTH, and
 *   the client side of the smtpd -> cleanup protocol (runtime/mailproto.h)
 *
 * DESCRIPTION
 *   Modules:
 *     smtpd.c          main(): listeners (TCP from pmtad, the pickup socket),
 *                      TLS contexts, drain
 *     smtpd_admit.c    who gets a session: connection limits shared by all
 *                      smtpd processes (runtime/anvil.h), polite refusals,
 *                      stress mode
 *     smtpd_submit.c   local submission: the pickup client's uid
 *                      (SO_PEERCRED), submit-users, trusted-submit-users
 *     smtpd_policy.c   a connection's <source> settings (cfg_resolve_session,
 *                      {pickup}, {auth}, relay-domain)
 *     smtpd_session.c  one connection: protocol engine + socket I/O + TLS
 *                      glue, timers, backpressure, the transaction's frames
 *     smtpd_cleanup.c  the one connection to cleanup per process: frames,
 *                      transaction registry, reconnect with back-off
 *     smtpd_auth.c     AUTH verification (<smtp-user>, auth_file + crypt_r)
 *                      on the libuv thread pool
 *     smtpd_tls.c      OpenSSL contexts and memory-BIO sessions
 *
 * SECURITY
 *   Everything under smtpd/ faces the network. Peer bytes go only to the
 *   protocol engine (which bounds and validates them) and to TLS; peer text
 *   reaches the log only through msg_printable().
 */
#ifndef PMTA_SMTPD_H
#define PMTA_SMTPD_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>
#include <uv.h>

#include "anvil.h"
#include "buf.h"
#include "cfg.h"

struct smtpd_session;
struct smtpd_tls_ctx;

/* --- smtpd_policy.c ---------------------------------------------------------- */

/* The effective <source> settings of one session (strings borrowed from the pinned cfg). */
struct smtpd_policy {
    bool smtp_service;
    bool always_allow_relaying;
    bool require_auth;
    bool allow_auth;
    bool allow_plaintext_auth;
    bool allow_starttls;
    bool allow_chunking;
    bool allow_smtputf8;
    bool log_connections;
    bool log_commands;
    uint64_t max_message_size; /* 0 = unlimited */
    unsigned max_rcpt;         /* 0 = unlimited */
    uint64_t command_timeout_ms;
    uint64_t data_timeout_ms;
    const char *auth_file;       /* NULL: none */
    unsigned max_smtp_in_per_ip; /* 0 = unlimited */
    unsigned connect_rate_count; /* max-connect-rate-per-ip: COUNT per PERIOD; 0 = unlimited */
    unsigned connect_rate_period_s;
};

/* smtpd_policy_resolve - settings for a client at ADDR (NULL for pickup) on a
   listener with source NAME ("" = none; "{pickup}" for the pickup socket) */
void smtpd_policy_resolve(const struct cfg *c, const struct sockaddr *addr, const char *name,
                          struct smtpd_policy *pol);
/* smtpd_policy_layer_auth - after USER authenticated: <source {auth}> and the smtp-user's
   source= layered too */
void smtpd_policy_layer_auth(const struct cfg *c, const struct sockaddr *addr,
                             const char *listener_source, const char *user,
                             struct smtpd_policy *pol);
/* smtpd_policy_relay_domain - is DOMAIN a relay-domain of C? */
bool smtpd_policy_relay_domain(const struct cfg *c, const char *domain);
/* smtpd_policy_host_name - the first host-name, else the system's name */
const char *smtpd_policy_host_name(const struct cfg *c);

/* --- smtpd_submit.c ----------------------------------------------------------- */

/* The local user on a pickup connection, as the kernel tells it. */
struct smtpd_submitter {
    bool known; /* credentials were read */
    uint32_t uid;
    char user[64]; /* login name; "" when the uid has no passwd entry */
    bool trusted;  /* root or trusted-submit-users: any envelope sender */
};

/* smtpd_submit_identify - who is on pickup connection FD under C: 0, or
   -EPERM when submit-users excludes them (WHO filled for the refusal), or
   -errno when the kernel would not say */
int smtpd_submit_identify(const struct cfg *c, int fd, struct smtpd_submitter *who);
/* smtpd_submit_sender - the envelope sender WHO gets for REQUESTED ("" is
   <>): REQUESTED when trusted or WHO's own address, else that own address
   (login@host-name), written to OUT */
const char *smtpd_submit_sender(const struct cfg *c, const struct smtpd_submitter *who,
                                const char *requested, char *out, size_t size);
/* smtpd_submit_describe - "uid 1000 (alice)" for logs and Received */
const char *smtpd_submit_describe(const struct smtpd_submitter *who, char *out, size_t size);

/* --- smtpd_session.c --------------------------------------------------------- */

/* How a connection arrived. */
/* A TCP or Unix-socket stream (listeners and sessions serve both: SMTP and pickup). */
union smtpd_stream {
    uv_handle_t handle;
    uv_stream_t stream;
    uv_tcp_t tcp;
    uv_pipe_t pipe;
};

struct smtpd_origin {
    const char *listener_source;  /* "" / "{pickup}" */
    const char *listener_address; /* for logs */
    bool pickup;                  /* the local sendmail socket */
    bool implicit_tls;
    struct smtpd_tls_ctx *tls; /* NULL: no certificate, no TLS */
};

/* smtpd_session_init, _fini - module state on LOOP (call once each) */
void smtpd_session_init(uv_loop_t *loop);
void smtpd_session_fini(void);
/* An admitted connection, as smtpd_admit.c hands it to a session. */
struct smtpd_client {
    int fd; /* accepted, non-blocking */
    const struct smtpd_origin *origin;
    struct sockaddr_storage peer; /* TCP only */
    bool have_peer;
    struct smtpd_policy pol;          /* resolved on the current configuration */
    struct anvil_ticket ticket;       /* released when the session ends */
    struct smtpd_submitter submitter; /* pickup only */
};

/* smtpd_session_start - a session for CL (which it takes over, the
   descriptor and the ticket included) */
void smtpd_session_start(struct smtpd_client *cl);
/* smtpd_session_apply_timeouts - stress mode began: shorten running timers */
void smtpd_session_apply_timeouts(void);
/* smtpd_session_shutdown_all - drain: idle sessions get 421 4.3.2, sessions
   waiting for cleanup get their answer first */
void smtpd_session_shutdown_all(void);
/* smtpd_session_close_all - the drain deadline passed: close everything now */
void smtpd_session_close_all(void);
unsigned smtpd_session_count(void);
/* smtpd_session_set_idle_cb - called whenever the last session is gone */
void smtpd_session_set_idle_cb(void (*cb)(void));
/* smtpd_session_resume_paused - re-check sessions paused for the cleanup backlog */
void smtpd_session_resume_paused(void);

/* Called by smtpd_cleanup.c */
void smtpd_session_txn_result(struct smtpd_session *s, uint32_t id, int code, const char *enhanced,
                              const char *text, uint64_t msgid);
void smtpd_session_txn_lost(struct smtpd_session *s, uint32_t id);

/* --- smtpd_admit.c ------------------------------------------------------------ */

/* Under stress, command and data timeouts are at most this (Postfix: 10 s). */
#define SMTPD_STRESS_TIMEOUT_MS  10000u
/* Stress begins at this share of total-max-smtp-in and ends below the second. */
#define SMTPD_STRESS_ON_PERCENT  80u
#define SMTPD_STRESS_OFF_PERCENT 60u
/* total-max-smtp-in / this (at least 1) is reserved for relaying sources. */
#define SMTPD_RESERVE_DIVISOR    10u

/* smtpd_admit_init - attach the shared connection table (PMTA_ANVIL_FD),
   start the stress check; _fini undoes it */
void smtpd_admit_init(uv_loop_t *loop);
void smtpd_admit_fini(void);
/* smtpd_admit - connection FD from PEER (NULL: pickup) on ORIGIN: start a
   session or refuse it politely; FD is taken either way */
void smtpd_admit(int fd, const struct sockaddr *peer, const struct smtpd_origin *origin);
/* smtpd_admit_overload - out of descriptors: FD gets "421 4.3.2" (caller closes) */
void smtpd_admit_overload(int fd);
/* smtpd_admit_release - the session holding TICKET is gone */
void smtpd_admit_release(struct anvil_ticket *ticket);
/* smtpd_admit_timeout - a timeout of MS as it applies now (capped under stress) */
uint64_t smtpd_admit_timeout(uint64_t ms);

/* --- smtpd_cleanup.c --------------------------------------------------------- */

/* Frames queued to cleanup beyond this make sessions stop reading their clients. */
#define SMTPD_CLEANUP_BACKLOG_MAX (8u * 1024 * 1024)

void smtpd_cleanup_init(uv_loop_t *loop);
bool smtpd_cleanup_connected(void);
/* smtpd_cleanup_next_id - a transaction id unique on this process's connection */
uint32_t smtpd_cleanup_next_id(void);
/* smtpd_cleanup_open - register ID for S (its result or loss is routed to S);
   the frames follow with smtpd_cleanup_send; 0 or -EPIPE if not connected */
int smtpd_cleanup_open(uint32_t id, struct smtpd_session *s);
/* smtpd_cleanup_send - more frames of an open transaction; 0 or -EPIPE */
int smtpd_cleanup_send(struct buf *frames);
/* smtpd_cleanup_forget - S no longer wants the answer for ID */
void smtpd_cleanup_forget(uint32_t id);
/* smtpd_cleanup_space - what cleanup last said the queue can take (mailproto.h,
   MP_QUEUE_SPACE): the largest message it could ever hold and the largest it takes now;
   false while cleanup has not said (not connected yet) */
bool smtpd_cleanup_space(uint64_t *capacity, uint64_t *room);
/* smtpd_cleanup_backlog - bytes written to cleanup but not yet taken by the kernel */
size_t smtpd_cleanup_backlog(void);
void smtpd_cleanup_close(void);

/* --- smtpd_auth.c -------------------------------------------------------------- */

/* The verdict of one AUTH attempt; SOURCE is the smtp-user's source= (or NULL). */
typedef void (*smtpd_auth_done_fn)(void *ctx, bool ok, const char *source);
/* smtpd_auth_check - verify USER/PASS against C's <smtp-user> blocks and AUTH_FILE
   on the thread pool; DONE runs on the loop. C must stay pinned until then. */
void smtpd_auth_check(uv_loop_t *loop, const struct cfg *c, const char *auth_file, const char *user,
                      const char *pass, smtpd_auth_done_fn done, void *ctx);
/* smtpd_auth_verify - the same, synchronously (the work function; exposed for tests) */
bool smtpd_auth_verify(const struct cfg *c, const char *auth_file, const char *user,
                       const char *pass, const char **source);

/* --- smtpd_tls.c --------------------------------------------------------------- */

/* smtpd_tls_ctx_new - a server context from CERT_FILE (chain + key in one PEM) and
   CA_FILE (may be NULL); NULL (logged) when it cannot be loaded */
struct smtpd_tls_ctx *smtpd_tls_ctx_new(const char *cert_file, const char *ca_file);
void smtpd_tls_ctx_free(struct smtpd_tls_ctx *t);

struct smtpd_tls; /* one connection's TLS state (SSL + memory BIOs) */
struct smtpd_tls *smtpd_tls_new(struct smtpd_tls_ctx *t);
void smtpd_tls_free(struct smtpd_tls *tls);
/* smtpd_tls_feed - ciphertext from the peer; 0 or -1 */
int smtpd_tls_feed(struct smtpd_tls *tls, const void *p, size_t n);
/* smtpd_tls_handshake - 1 done, 0 wants more input, -1 failed */
int smtpd_tls_handshake(struct smtpd_tls *tls);
/* smtpd_tls_read - plaintext into OUT: >0 bytes, 0 wants more input, -1 closed/failed */
int smtpd_tls_read(struct smtpd_tls *tls, void *out, size_t n);
/* smtpd_tls_write - encrypt N plaintext bytes; 0 or -1 */
int smtpd_tls_write(struct smtpd_tls *tls, const void *p, size_t n);
/* smtpd_tls_close_notify - queue a close_notify alert */
void smtpd_tls_close_notify(struct smtpd_tls *tls);
/* smtpd_tls_take_output - ciphertext to send, appended to OUT */
void smtpd_tls_take_output(struct smtpd_tls *tls, struct buf *out);
/* smtpd_tls_describe - protocol and cipher for logs and Received */
const char *smtpd_tls_protocol(const struct smtpd_tls *tls);
const char *smtpd_tls_cipher(const struct smtpd_tls *tls);
/* smtpd_tls_error - the last OpenSSL error as text (for logs) */
const char *smtpd_tls_error(void);

#endif
