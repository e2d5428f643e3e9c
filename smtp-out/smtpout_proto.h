/*
 * smtpout_proto.h - the SMTP client protocol engine (I/O-free)
 *
 * NAME
 *   smtpout_reader - reply reader: bytes in, complete replies out
 *   smtpout_proto  - one outbound SMTP session as a pure state machine
 *
 * SYNOPSIS
 *   The host (smtpout_session.c) owns the socket, TLS, timers and the body
 *   pump. It feeds the engine every byte the server sends (any split: one
 *   byte at a time behaves exactly like one big read), writes out whatever
 *   the engine appended to its output buffer after each call, and answers
 *   its events:
 *
 *     p = smtpout_proto_new(&cfg, &events, ctx);
 *     on connect:  smtpout_proto_connected(p);          wait for the greeting
 *     on read:     smtpout_proto_input(p, data, len);   plaintext or decrypted
 *     always:      write smtpout_proto_output(p), then buf_reset() it
 *     ev.timer:    arm the timeout for that wait (none: stop the timer)
 *     ev.starttls: flush, then handshake; then smtpout_proto_tls_started(p)
 *     ev.body:     send msg->data as the mode says (DATA: dot-stuffed, CRLF,
 *                  then ".\r\n"; BDAT: CRLF only), then smtpout_proto_body_sent(p)
 *     ev.close:    the session is over: close the connection
 *     local trouble (timeout, EOF, write or TLS error): smtpout_proto_fail()
 *     smtpout_proto_free(p);
 *
 * DESCRIPTION
 *   Greeting, EHLO (HELO after a 5xx to EHLO), STARTTLS by policy, AUTH
 *   when configured, then ready; transactions with smtpout_proto_send():
 *   RSET before every one but the first, MAIL, RCPT..., DATA, all in one
 *   write when the server offers PIPELINING (RFC 2920) and replies accounted
 *   in command order; a refused MAIL refuses every recipient; a 354 after
 *   every RCPT failed gets an empty body. When the server offers CHUNKING
 *   (RFC 3030, unless ignore_chunking) there is no DATA: once the RCPT
 *   replies are in and someone was accepted, "BDAT n LAST" and the body go
 *   in one piece, and BDAT's reply is the final one. QUIT with
 *   smtpout_proto_quit().
 *
 *   AUTH: PLAIN, then LOGIN, then CRAM-MD5, as the server offers them; PLAIN
 *   and LOGIN only over TLS unless auth_in_clear. A server that offers no
 *   AUTH is used without it; one that offers only mechanisms we may not use
 *   now, or refuses the credentials, ends the session as a temporary
 *   failure (the mail waits: neither a password in clear nor a bounce). A 421 ends the session
 *   whatever was asked. Every recipient gets exactly one rcpt_result and
 *   every transaction one transaction_done, also when the session fails.
 *
 *   Failures are classified where they happen: 2xx = delivered, 4xx and
 *   every local trouble = temporary, 5xx = permanent. Results we make up
 *   carry code 0 and an enhanced status we chose.
 *
 *   The reader: lines end with LF (CR LF or a bare LF); a line, even one
 *   still without its LF, is at most SMTPOUT_LINE_MAX bytes with its line
 *   end; a reply at most SMTPOUT_REPLY_LINES_MAX lines; every line starts
 *   with three digits followed by ' ', '-' or its end, a code in 200..599,
 *   and continuation lines repeat the first line's code. The enhanced status
 *   code (RFC 3463) comes from the first line when it starts with one that
 *   matches the reply's class, else it is "X.0.0". Text passed up is bounded
 *   (SMTPOUT_REPLY_TEXT_MAX) and any control or non-ASCII byte (NUL too) is
 *   '?'. Lines 2..n of a reply are read as EHLO keywords.
 *
 * SECURITY
 *   Everything here parses network input. Each line's length is checked
 *   before the code and separator are read at fixed offsets (the
 *   CVE-2020-8794 lesson); buffers are bounded while a line is incomplete.
 *   Bytes that follow the 220 to STARTTLS before the handshake are refused
 *   (response injection). Credentials go into the output buffer only (the
 *   host must not log AUTH exchanges) and are wiped when the engine is freed. Envelope addresses
 * with control bytes are refused before anything is sent, so no command can be injected.
 */
#ifndef PMTA_SMTPOUT_PROTO_H
#define PMTA_SMTPOUT_PROTO_H

#include <stddef.h>

#include "buf.h"

#define SMTPOUT_LINE_MAX        2048 /* one reply line including CRLF */
#define SMTPOUT_REPLY_LINES_MAX 100  /* lines in one multi-line reply */
#define SMTPOUT_REPLY_TEXT_MAX  512  /* text passed up, without the NUL */

enum smtpout_class { SMTPOUT_OK = 0, SMTPOUT_TEMP, SMTPOUT_PERM };

enum smtpout_stage {
    SMTPOUT_STAGE_CONNECT,
    SMTPOUT_STAGE_GREETING,
    SMTPOUT_STAGE_EHLO,
    SMTPOUT_STAGE_HELO,
    SMTPOUT_STAGE_STARTTLS,
    SMTPOUT_STAGE_TLS,
    SMTPOUT_STAGE_AUTH,
    SMTPOUT_STAGE_RSET,
    SMTPOUT_STAGE_MAIL,
    SMTPOUT_STAGE_RCPT,
    SMTPOUT_STAGE_DATA,
    SMTPOUT_STAGE_BODY,
    SMTPOUT_STAGE_DOT,
    SMTPOUT_STAGE_BDAT, /* the reply to BDAT ... LAST (the body's end with CHUNKING) */
    SMTPOUT_STAGE_QUIT,
    SMTPOUT_STAGE_LOCAL, /* checks before sending */
};

const char *smtpout_stage_name(enum smtpout_stage stage);
const char *smtpout_class_name(enum smtpout_class cls);

struct smtpout_reply {
    int code;                              /* SMTP code, or 0 when made up locally */
    char status[12];                       /* enhanced status code, e.g. "5.1.1" */
    char text[SMTPOUT_REPLY_TEXT_MAX + 1]; /* sanitized; "550 5.1.1 ..." */
    enum smtpout_class cls;
    enum smtpout_stage stage;
};

/* smtpout_reply_local - R is a result we make up (code 0), text from FMT, sanitized */
void smtpout_reply_local(struct smtpout_reply *r, enum smtpout_class cls, enum smtpout_stage stage,
                         const char *status, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

/* Peer capabilities from EHLO. */
#define SMTPOUT_CAP_PIPELINING 0x001u
#define SMTPOUT_CAP_SIZE       0x002u
#define SMTPOUT_CAP_8BITMIME   0x004u
#define SMTPOUT_CAP_SMTPUTF8   0x008u
#define SMTPOUT_CAP_STARTTLS   0x010u
#define SMTPOUT_CAP_ENHANCED   0x020u
#define SMTPOUT_CAP_CHUNKING   0x040u
#define SMTPOUT_CAP_DSN        0x080u
#define SMTPOUT_CAP_AUTH       0x100u
/* smtpout_cap_name - the EHLO keyword of capability BIT (one SMTPOUT_CAP_*), or NULL */
const char *smtpout_cap_name(unsigned bit);

/* SASL mechanisms from the EHLO AUTH keyword (RFC 4954), in smtpout_reader.auth_mechs. */
#define SMTPOUT_AUTH_PLAIN    0x1u
#define SMTPOUT_AUTH_LOGIN    0x2u
#define SMTPOUT_AUTH_CRAM_MD5 0x4u

enum smtpout_tls_policy {
    SMTPOUT_TLS_OFF,           /* use-starttls no */
    SMTPOUT_TLS_OPPORTUNISTIC, /* use-starttls yes: use when offered */
    SMTPOUT_TLS_REQUIRED,      /* require-starttls yes: never send in clear */
};

/* DSN NOTIFY bits for smtpout_rcpt.notify (0 = leave NOTIFY out). */
#define SMTPOUT_NOTIFY_NEVER   0x1u
#define SMTPOUT_NOTIFY_SUCCESS 0x2u
#define SMTPOUT_NOTIFY_FAILURE 0x4u
#define SMTPOUT_NOTIFY_DELAY   0x8u

enum smtpout_ret { SMTPOUT_RET_NONE, SMTPOUT_RET_FULL, SMTPOUT_RET_HDRS };

struct smtpout_rcpt {
    const char *addr;  /* without <> */
    const char *orcpt; /* ORCPT as queued, "type;address" (a bare address is rfc822), or
                          NULL; the address is xtext-encoded here */
    unsigned notify;
};

struct smtpout_message {
    const char *sender; /* without <>; "" for the null sender */
    const struct smtpout_rcpt *rcpts;
    size_t nrcpts;
    const char *envid; /* or NULL */
    enum smtpout_ret ret;
    const char *data; /* the message, LF or CRLF line ends */
    size_t len;
    int eight_bit; /* body has 8-bit bytes (BODY=8BITMIME) */
    int smtputf8;  /* envelope/headers need SMTPUTF8 */
};

/* --- the reply reader (the fuzzing entry point: bytes -> replies) ------------------- */

struct smtpout_reader {
    char line[SMTPOUT_LINE_MAX + 1];
    size_t line_len;
    unsigned nlines;
    size_t text_len;
    int have_status;
    struct smtpout_reply reply;
    unsigned caps;          /* EHLO keywords on lines 2..n of this reply */
    unsigned long size_max; /* SIZE's argument, 0 if none */
    unsigned auth_mechs;    /* SMTPOUT_AUTH_* named by AUTH (or the old AUTH=) lines */
};

enum smtpout_read {
    SMTPOUT_READ_MORE,  /* every byte taken; no reply complete yet */
    SMTPOUT_READ_REPLY, /* *OUT is a complete reply; *USED bytes taken */
    SMTPOUT_READ_ERROR, /* *OUT's text says what is wrong; the stream is unusable */
};

void smtpout_reader_init(struct smtpout_reader *rd);
/*
 * smtpout_reader_feed - read DATA/LEN up to the end of the next reply. On
 * READ_REPLY the reply's EHLO keywords are in rd->caps and rd->size_max
 * until the next call. After READ_ERROR the reader must not be fed again.
 */
enum smtpout_read smtpout_reader_feed(struct smtpout_reader *rd, const char *data, size_t len,
                                      size_t *used, struct smtpout_reply *out);

/* --- the session engine ---------------------------------------------------------------- */

struct smtpout_proto_config {
    const char *helo_name; /* EHLO/HELO argument (copied) */
    const char *mx_name;   /* for reply texts (copied) */
    const char *dest_ip;   /* for reply texts (copied) */
    enum smtpout_tls_policy tls;
    int tls_available; /* the host can do STARTTLS */
    int ignore_pipelining;
    int ignore_8bitmime; /* don't announce BODY=8BITMIME nor refuse */
    int ignore_dsn;
    int ignore_chunking; /* DATA even when the peer offers CHUNKING */
    /* AUTH (RFC 4954) after EHLO (after STARTTLS when TLS is used), attempted when a
       user name or password is set and the peer offers AUTH (copied; wiped at free) */
    const char *auth_username;
    const char *auth_password;
    int auth_in_clear; /* PLAIN and LOGIN also without TLS (use-unencrypted-plain-auth) */
};

/* How the host sends the body (ev.body). */
enum smtpout_body_mode {
    SMTPOUT_BODY_DATA, /* after 354: dot-stuffed, CRLF line ends, then ".\r\n" */
    SMTPOUT_BODY_BDAT, /* after "BDAT n LAST": CRLF line ends, exactly smtpout_bdat_len() bytes */
};

/* smtpout_bdat_len - bytes DATA/LEN takes on the wire with CRLF line ends and no dot-stuffing:
   every bare LF becomes CRLF, and a last line without a line end gets one */
size_t smtpout_bdat_len(const char *data, size_t len);

/* What the engine waits for; the host maps each to its configured timeout. */
enum smtpout_wait {
    SMTPOUT_WAIT_NONE,     /* stop the timer */
    SMTPOUT_WAIT_GREETING, /* smtp-greeting-timeout */
    SMTPOUT_WAIT_COMMAND,  /* a command's reply, the TLS handshake */
    SMTPOUT_WAIT_DOT,      /* the reply to the final "." */
};

struct smtpout_proto_events {
    void (*timer)(void *ctx, enum smtpout_wait wait, enum smtpout_stage stage);
    void (*starttls)(void *ctx);
    void (*ready)(void *ctx, unsigned caps);
    void (*body)(void *ctx, const struct smtpout_message *m, enum smtpout_body_mode mode);
    void (*rcpt_result)(void *ctx, size_t index, const struct smtpout_reply *r);
    void (*transaction_done)(void *ctx, const struct smtpout_reply *r);
    /* first of the session's last events: results of an open transaction follow */
    void (*close)(void *ctx, const struct smtpout_reply *reason);
    /* every complete reply, before the engine acts on it (transcripts); may be NULL */
    void (*reply)(void *ctx, const struct smtpout_reply *r);
};

struct smtpout_proto;

struct smtpout_proto *smtpout_proto_new(const struct smtpout_proto_config *cfg,
                                        const struct smtpout_proto_events *ev, void *ctx);
void smtpout_proto_free(struct smtpout_proto *p);
/* smtpout_proto_connected - the TCP connection is up: wait for the greeting */
void smtpout_proto_connected(struct smtpout_proto *p);
/* smtpout_proto_input - bytes from the server (decrypted once TLS is on) */
void smtpout_proto_input(struct smtpout_proto *p, const char *data, size_t len);
/* smtpout_proto_output - commands to send; the host writes and resets it */
struct buf *smtpout_proto_output(struct smtpout_proto *p);
/* smtpout_proto_tls_started - the handshake after ev.starttls succeeded */
void smtpout_proto_tls_started(struct smtpout_proto *p);
/* smtpout_proto_send - one transaction, only when idle; 0 or -EBUSY. M is borrowed until its
   transaction_done. */
int smtpout_proto_send(struct smtpout_proto *p, const struct smtpout_message *m);
/* smtpout_proto_body_sent - the host has queued the whole body and its ".\r\n" */
void smtpout_proto_body_sent(struct smtpout_proto *p);
/* smtpout_proto_quit - QUIT when idle (otherwise: fail as aborted) */
void smtpout_proto_quit(struct smtpout_proto *p);
/* smtpout_proto_fail - local trouble ends the session with R (open recipients get it) */
void smtpout_proto_fail(struct smtpout_proto *p, const struct smtpout_reply *r);
/* smtpout_proto_fail_local - the same with a made-up reply "WHAT (mx[ip])" at the current stage */
void smtpout_proto_fail_local(struct smtpout_proto *p, enum smtpout_class cls, const char *status,
                              const char *what);
/* smtpout_proto_stage - what the session is doing (for timeouts and lost connections) */
enum smtpout_stage smtpout_proto_stage(const struct smtpout_proto *p);
int smtpout_proto_is_idle(const struct smtpout_proto *p);
int smtpout_proto_quitting(const struct smtpout_proto *p);
int smtpout_proto_closed(const struct smtpout_proto *p);
unsigned smtpout_proto_caps(const struct smtpout_proto *p);
unsigned smtpout_proto_transactions(const struct smtpout_proto *p);
/* smtpout_proto_authenticated - did AUTH succeed on this session? */
int smtpout_proto_authenticated(const struct smtpout_proto *p);

#endif
