/*
 * smtpd_proto.h - the SMTP server protocol engine (I/O-free)
 *
 * NAME
 *   smtpd_proto - one ESMTP server session as a pure state machine
 *
 * SYNOPSIS
 *   The host (the smtpd worker) owns the socket, TLS and the event loop. For
 *   each connection it creates one engine, feeds it every byte the client
 *   sends (any split: one byte at a time behaves exactly like one big read),
 *   writes out whatever the engine appended to its output buffer, and answers
 *   the engine's events:
 *
 *     s = smtpd_proto_new(&cfg, &events, ctx);
 *     smtpd_proto_start(s);                     greeting into the output
 *     on read:   smtpd_proto_input(s, p, n);
 *     always:    write smtpd_proto_output(s), buf_consume() what was written;
 *                when smtpd_proto_is_closed(s), close after the write drains;
 *                when !smtpd_proto_want_input(s), pause reading (backpressure)
 *     on commit: smtpd_proto_data_result(s, 250, "2.0.0", "Ok: queued as X");
 *     on STARTTLS event: flush, handshake, then smtpd_proto_tls_started(s)
 *     on timer:  smtpd_proto_timeout(s);  on EOF: smtpd_proto_disconnected(s)
 *     smtpd_proto_free(s);
 *
 * DESCRIPTION
 *   Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP EXPN
 *   STARTTLS AUTH (PLAIN, LOGIN). Extensions: PIPELINING SIZE 8BITMIME
 *   SMTPUTF8 ENHANCEDSTATUSCODES DSN CHUNKING, STARTTLS and AUTH by policy.
 *
 *   Every reply carries an RFC 3463 enhanced status code except the greeting,
 *   the positive replies to HELO/EHLO (RFC 2034 exempts them) and 334s.
 *   The engine never echoes peer text into replies.
 *
 *   The host sees decoded, validated fields only: addresses without angle
 *   brackets or source route, xtext already decoded, and never a CR, LF, NUL
 *   or other control byte in any string it is handed.
 *
 *   Chosen behaviours (documented once, tested in t/unit/test_smtpd_proto.c):
 *   - Command lines: limit cfg.max_line octets including CRLF (default 2048,
 *     above RFC 5321's 512 because DSN's ORCPT alone may be 500 octets; set
 *     512 for strictness). AUTH lines (the command and the exchange) may be
 *     up to SMTPD_AUTH_LINE_MAX (RFC 4954: 12288). A longer line, even one
 *     still without its LF, gets "500 5.5.2 Line too long" at once and the
 *     rest of it is skipped; nothing beyond the limit is ever buffered.
 *     A bare LF ends a command line (lenient); CR, NUL or other control bytes
 *     inside a command get "500 5.5.2".
 *   - DATA: only CR LF "." CR LF ends the message. A bare LF or bare CR in
 *     the content makes the message fail with "550 5.6.2" once the end is
 *     read (defence against SMTP smuggling, as Postfix >= 3.9 and sendmail
 *     8.18 do); the host gets data_abort, nothing is queued.
 *   - DATA lines longer than 998 octets plus CRLF are passed on unchanged
 *     (the engine streams and never splits: splitting would break signatures
 *     and MIME); data_end reports how many there were so cleanup can decide.
 *   - A message over cfg.max_message_size: the engine stops handing chunks,
 *     sends data_abort at once, reads on to the end of DATA (or the BDAT
 *     chunk) and answers "552 5.3.4".
 *   - smtp-service no (cfg.refuse_service): greeting "554 5.7.1" (RFC 5321
 *     §3.1, rather than PowerMTA's 521), then only QUIT works; every other
 *     command gets "503 5.5.1" and counts as an error.
 *   - Errors counted towards cfg.max_errors: the engine's own 4xx/5xx replies
 *     (syntax, sequence, unknown command, line too long, bad AUTH). Host
 *     policy verdicts (e.g. 550 relaying denied) and 452 too many recipients
 *     do not count. At the limit: "421 4.7.0 Too many errors" and close.
 *   - STARTTLS: after "220 2.0.0" everything the client already pipelined is
 *     discarded, and so is any plaintext until smtpd_proto_tls_started();
 *     then the session is as new and needs EHLO again (RFC 3207 §4.2).
 *
 * DIAGNOSTICS
 *   Protocol problems become SMTP replies. Host misuse (a result with nothing
 *   pending, a bad reply code) is a bug: msg_panic().
 *
 * SECURITY
 *   Everything here parses network input. Lengths are checked before bytes
 *   are looked at; buffers are bounded (command line, held pipelined input);
 *   DATA is streamed, never accumulated. Credentials are wiped after use.
 */
#ifndef PMTA_SMTPD_PROTO_H
#define PMTA_SMTPD_PROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "buf.h"

/* RFC 5321 §4.5.3.1 sizes; RFC 4954 §4 AUTH line; RFC 3461 §4.4, §4.2 */
#define SMTPD_LOCAL_MAX      64
#define SMTPD_DOMAIN_MAX     255
#define SMTPD_PATH_MAX       256 /* including the angle brackets */
#define SMTPD_ADDR_MAX       (SMTPD_PATH_MAX - 2)
#define SMTPD_AUTH_LINE_MAX  12288
#define SMTPD_ENVID_MAX      100
#define SMTPD_ORCPT_MAX      500
#define SMTPD_ORCPT_TYPE_MAX 32
#define SMTPD_TEXT_MAX       200 /* host-supplied reply text */
#define SMTPD_CRED_MAX       512 /* decoded AUTH user name or password */

/* Session configuration, copied at smtpd_proto_new(). */
struct smtpd_proto_config {
    const char *host_name;     /* greeting and EHLO name (copied) */
    size_t max_line;           /* command line incl. CRLF; 0 = 2048 */
    uint64_t max_message_size; /* 0 = unlimited; advertised in SIZE */
    unsigned max_rcpt;         /* per transaction; 0 = unlimited */
    unsigned max_errors;       /* per session; 0 = unlimited */
    size_t max_held;           /* pipelined bytes held while waiting for the
                                  host; 0 = 256 KiB. Beyond half of it
                                  smtpd_proto_want_input() says stop. */
    bool refuse_service;       /* smtp-service no: 554 greeting */
    bool offer_starttls;       /* allow-starttls */
    bool tls_active;           /* implicit TLS listener (port 465 style) */
    bool allow_auth;           /* allow-auth */
    bool allow_plaintext_auth; /* allow-unencrypted-plain-auth */
    bool require_auth;         /* require-auth: MAIL needs AUTH first */
    bool require_tls;          /* MAIL needs TLS first */
    bool allow_chunking;       /* allow-chunking: BDAT */
    bool allow_smtputf8;       /* allow-smtputf8 */
};

/* smtpd_proto_config_init - the defaults: PowerMTA's for a <source> */
void smtpd_proto_config_init(struct smtpd_proto_config *cfg);

enum smtpd_body { SMTPD_BODY_NONE, SMTPD_BODY_7BIT, SMTPD_BODY_8BITMIME };
enum smtpd_ret { SMTPD_RET_NONE, SMTPD_RET_FULL, SMTPD_RET_HDRS };

/* MAIL FROM parameters, decoded. Strings are "" when not given. */
struct smtpd_mail_params {
    bool size_given;
    uint64_t size;
    enum smtpd_body body;
    bool smtputf8;
    enum smtpd_ret ret;
    char envid[SMTPD_ENVID_MAX + 1]; /* xtext-decoded, printable */
    char auth[SMTPD_ADDR_MAX + 3];   /* RFC 4954 AUTH=, decoded */
};

#define SMTPD_NOTIFY_NEVER   0x01u
#define SMTPD_NOTIFY_SUCCESS 0x02u
#define SMTPD_NOTIFY_FAILURE 0x04u
#define SMTPD_NOTIFY_DELAY   0x08u

/* RCPT TO parameters, decoded. notify 0 = not given. */
struct smtpd_rcpt_params {
    unsigned notify;
    char orcpt_type[SMTPD_ORCPT_TYPE_MAX + 1]; /* e.g. "rfc822"; "" = none */
    char orcpt[SMTPD_ORCPT_MAX + 1];           /* xtext-decoded address */
};

/* What the engine knows about a finished message body. */
struct smtpd_data_info {
    uint64_t size;       /* octets handed to data_chunk */
    uint64_t long_lines; /* lines over 998 octets (DATA only) */
    bool eight_bit;      /* some octet >= 0x80 was seen */
    bool chunked;        /* came by BDAT */
};

/*
 * A host decision. code 0 means "the engine's default reply" for that
 * decision; otherwise code is 200..599, enhanced is "c.s.d" with class
 * c == code / 100 (else a default is substituted) and text is sanitised
 * (printable ASCII only, at most SMTPD_TEXT_MAX octets).
 */
struct smtpd_proto_verdict {
    int code;
    const char *enhanced;
    const char *text;
};

/* What an event callback that decides returns. */
enum smtpd_decision {
    SMTPD_ACCEPT, /* go on; verdict may carry a custom 2xx */
    SMTPD_REJECT, /* verdict carries the 4xx/5xx (0 = default) */
    SMTPD_PENDING /* host answers later with smtpd_proto_result() */
};

/*
 * Events. ctx is the host's pointer from smtpd_proto_new(). Any callback may
 * be NULL: decisions then default to ACCEPT, except auth which fails closed.
 * Strings are valid only during the call. Callbacks must not free the
 * engine nor feed it input; they may call smtpd_proto_result() (also from
 * inside the callback, before returning SMTPD_PENDING) and
 * smtpd_proto_timeout/shutdown/disconnected().
 * Default replies: MAIL 250 2.1.0 / 550 5.7.1; RCPT 250 2.1.5 / 550 5.7.1
 * Relaying denied; AUTH 235 2.7.0 / 535 5.7.8; message 250 2.0.0 / 451 4.3.0.
 */
struct smtpd_proto_events {
    void (*helo)(void *ctx, const char *name, bool esmtp);
    enum smtpd_decision (*mail)(void *ctx, const char *sender,
                                const struct smtpd_mail_params *params,
                                struct smtpd_proto_verdict *verdict);
    /* default reject: 550 5.7.1 Relaying denied */
    enum smtpd_decision (*rcpt)(void *ctx, const char *recipient,
                                const struct smtpd_rcpt_params *params,
                                struct smtpd_proto_verdict *verdict);
    /* before 354 / the first BDAT chunk; must decide at once (no PENDING);
       default reject: 451 4.3.0 */
    enum smtpd_decision (*data_begin)(void *ctx, struct smtpd_proto_verdict *verdict);
    void (*data_chunk)(void *ctx, const char *bytes, size_t len);
    /* the body is complete; the engine now waits for
       smtpd_proto_data_result(), to be called after the durable commit */
    void (*data_end)(void *ctx, const struct smtpd_data_info *info);
    /* the transaction opened by an accepted MAIL is abandoned (RSET, QUIT,
       EHLO, STARTTLS, overrun, bad content, timeout, disconnect); never sent
       after data_end */
    void (*data_abort)(void *ctx);
    /* mech "PLAIN" or "LOGIN"; pass is wiped after the call returns */
    enum smtpd_decision (*auth)(void *ctx, const char *mech, const char *user, const char *pass,
                                struct smtpd_proto_verdict *verdict);
    /* 220 is queued: flush it, then start the TLS handshake */
    void (*starttls)(void *ctx);
    void (*quit)(void *ctx);
};

enum smtpd_state {
    SMTPD_STATE_INIT,          /* created, greeting not sent */
    SMTPD_STATE_GREETING,      /* greeting sent, HELO/EHLO expected */
    SMTPD_STATE_COMMAND,       /* after HELO/EHLO */
    SMTPD_STATE_AUTH,          /* inside an AUTH exchange (334 sent) */
    SMTPD_STATE_DATA,          /* reading DATA content */
    SMTPD_STATE_BDAT,          /* reading a BDAT chunk */
    SMTPD_STATE_WAIT_HOST,     /* a decision or the commit is pending */
    SMTPD_STATE_TLS_HANDSHAKE, /* 220 to STARTTLS sent; host is switching */
    SMTPD_STATE_CLOSED         /* flush the output, then close */
};

struct smtpd_proto;

/* smtpd_proto_new - a session; copies CFG; EVENTS must outlive it */
struct smtpd_proto *smtpd_proto_new(const struct smtpd_proto_config *cfg,
                                    const struct smtpd_proto_events *events, void *ctx);
/* smtpd_proto_free - release; fires no events (disconnect first) */
void smtpd_proto_free(struct smtpd_proto *s);
/* smtpd_proto_start - queue the greeting (220, or 554 when refusing) */
void smtpd_proto_start(struct smtpd_proto *s);
/* smtpd_proto_input - feed LEN bytes the client sent, in any split */
void smtpd_proto_input(struct smtpd_proto *s, const void *bytes, size_t len);
/* smtpd_proto_output - replies to write; consume what was written */
struct buf *smtpd_proto_output(struct smtpd_proto *s);
/* smtpd_proto_result - answer the PENDING mail/rcpt/auth/data decision */
void smtpd_proto_result(struct smtpd_proto *s, int code, const char *enhanced, const char *text);
/* smtpd_proto_data_result - the commit outcome after data_end */
void smtpd_proto_data_result(struct smtpd_proto *s, int code, const char *enhanced,
                             const char *text);
/* smtpd_proto_tls_started - handshake done; the session starts over */
void smtpd_proto_tls_started(struct smtpd_proto *s);
/* smtpd_proto_timeout - idle timer fired: 421 4.4.2 and close */
void smtpd_proto_timeout(struct smtpd_proto *s);
/* smtpd_proto_shutdown - the server is stopping: 421 4.3.2 and close */
void smtpd_proto_shutdown(struct smtpd_proto *s);
/* smtpd_proto_disconnected - the peer is gone: abort, close, no reply */
void smtpd_proto_disconnected(struct smtpd_proto *s);
/* smtpd_proto_state - the current state */
enum smtpd_state smtpd_proto_state(const struct smtpd_proto *s);
/* smtpd_proto_is_closed - the host should close after flushing */
bool smtpd_proto_is_closed(const struct smtpd_proto *s);
/* smtpd_proto_want_input - false: pause reading until a result resumes it */
bool smtpd_proto_want_input(const struct smtpd_proto *s);
/* smtpd_proto_is_tls, smtpd_proto_auth_user - session facts for logging */
bool smtpd_proto_is_tls(const struct smtpd_proto *s);
const char *smtpd_proto_auth_user(const struct smtpd_proto *s);
/* smtpd_proto_set_limits - replace max_message_size and max_rcpt (the
   host re-resolved its policy after AUTH); applies to the next MAIL */
void smtpd_proto_set_limits(struct smtpd_proto *s, uint64_t max_message_size, unsigned max_rcpt);
/* smtpd_proto_discarded - bytes dropped after STARTTLS (for logging) */
uint64_t smtpd_proto_discarded(const struct smtpd_proto *s);

#endif
