/*
 * qmgr_dsn.h - RFC 3464 delivery status notifications (bounces)
 *
 * qmgr calls qmgr_dsn_should_send() to decide whether a recipient's final
 * failure (or long delay) is reported to the envelope sender at all, then
 * qmgr_dsn_build() to produce the complete report message, one per original
 * message and sender, covering every recipient reported at that moment. The
 * result is an RFC 5322 message with CRLF line ends, ready to be queued as a
 * new message from the null sender "<>" to the original sender:
 *
 *   multipart/report; report-type=delivery-status
 *     1. text/plain                    what happened, for humans
 *     2. message/delivery-status       per-message and per-recipient fields
 *     3. message/rfc822                the original (RET=FULL, or no RET), or
 *        text/rfc822-headers           its header section (RET=HDRS, or when
 *                                      the original exceeds max_return_size)
 *
 * Ownership: the caller owns every input; the output is appended to OUT.
 *
 * SECURITY: remote reply text (Diagnostic-Code), addresses, ENVID and remote
 * host names are peer-controlled. Every one is sanitised before it is written
 * into a header or a delivery-status field: CR, LF, NUL and other control
 * bytes become spaces, non-ASCII bytes become '?' (the delivery-status part is
 * 7-bit by RFC 3464), length is bounded, and long fields are folded at spaces.
 * So no reply can add a field, end a part or forge the MIME structure. The
 * boundary is random and checked against the content it encloses.
 */
#ifndef PMTA_QMGR_DSN_H
#define PMTA_QMGR_DSN_H

#include <stdbool.h>
#include <stddef.h>
#include <time.h>

struct buf;

/* RFC 3464 Action values the engine reports (expanded is not used) */
enum qmgr_dsn_action { QMGR_DSN_FAILED, QMGR_DSN_DELAYED, QMGR_DSN_DELIVERED, QMGR_DSN_RELAYED };

/* RET= values; equal to QSTORE_RET_* (checked in qmgr_dsn.c) */
enum { QMGR_DSN_RET_NONE = 0, QMGR_DSN_RET_FULL = 1, QMGR_DSN_RET_HDRS = 2 };

/* NOTIFY= bits; equal to QSTORE_NOTIFY_* and MP_NOTIFY_* (checked in qmgr_dsn.c) */
#define QMGR_DSN_NOTIFY_NEVER   0x01u
#define QMGR_DSN_NOTIFY_SUCCESS 0x02u
#define QMGR_DSN_NOTIFY_FAILURE 0x04u
#define QMGR_DSN_NOTIFY_DELAY   0x08u

#define QMGR_DSN_DIAG_MAX           900                 /* bytes of Diagnostic-Code text kept */
#define QMGR_DSN_FIELD_MAX          500                 /* bytes of any other field value */
#define QMGR_DSN_RETURN_MAX_DEFAULT (10u * 1024 * 1024) /* cap of a returned original */

/* One reported recipient. Strings may be NULL or "" when unknown. */
struct qmgr_dsn_rcpt {
    const char *final_rcpt; /* the address we tried: "user@example.com" */
    const char *orcpt;      /* ORCPT as given: "rfc822;user@example.com" (no ';': rfc822 assumed) */
    enum qmgr_dsn_action action;
    const char *status;      /* enhanced code "5.1.1"; "4.4.7" for expiry; NULL: 5.0.0/4.0.0 */
    const char *remote_mta;  /* "mx.example.com" -> Remote-MTA: dns; mx.example.com */
    const char *diag_type;   /* Diagnostic-Code type; NULL: "smtp" */
    const char *diag;        /* remote reply as received: "550 5.1.1 user unknown" */
    time_t last_attempt;     /* 0: no Last-Attempt-Date */
    time_t will_retry_until; /* delayed only; 0: none */
};

struct qmgr_dsn_input {
    const char *reporting_mta; /* host-name; required */
    const char *from;          /* From: address; NULL: MAILER-DAEMON@reporting_mta */
    const char *sender;        /* original envelope sender = To: of the DSN; required, not "" */
    const char *envid;         /* ENVID (decoded); NULL/"": no Original-Envelope-Id */
    int ret;                   /* QMGR_DSN_RET_*; NONE returns the full message */
    time_t arrival;            /* Arrival-Date; 0: omitted */
    time_t now;                /* Date:; 0: time(NULL) */
    const char *queue_id;      /* shown in the text part; may be NULL */
    const char *message;       /* the original message (header + body), CRLF or LF */
    size_t message_len;
    size_t max_return_size; /* 0: QMGR_DSN_RETURN_MAX_DEFAULT */
    const struct qmgr_dsn_rcpt *rcpts;
    size_t nrcpts; /* >= 1 */
};

/* Bits of qmgr_dsn_build()'s non-negative result */
#define QMGR_DSN_8BIT \
    0x1 /* the DSN holds 8-bit bytes (in the returned original): send with BODY=8BITMIME */
#define QMGR_DSN_HDRS_ONLY 0x2 /* only the original's header section was returned */

/*
 * qmgr_dsn_build - append the DSN for IN to OUT.
 * Returns QMGR_DSN_* bits (>= 0), -EINVAL for a missing required input,
 * -EMSGSIZE if OUT's limit is reached.
 */
int qmgr_dsn_build(const struct qmgr_dsn_input *in, struct buf *out);

/*
 * qmgr_dsn_wanted - does NOTIFY (QMGR_DSN_NOTIFY_* bits, 0 = not given) ask
 * for a report of ACTION? NEVER: no. Given: only the listed conditions
 * (FAILURE for failed, DELAY for delayed, SUCCESS for delivered/relayed).
 * Not given: failures yes, delays as DELAY_BY_DEFAULT says, successes no.
 */
bool qmgr_dsn_wanted(unsigned notify, enum qmgr_dsn_action action, bool delay_by_default);

/*
 * qmgr_dsn_should_send - qmgr_dsn_wanted() and never to the null sender
 * (SENDER NULL, "" or "<>"), so a bounce can never cause another bounce.
 */
bool qmgr_dsn_should_send(const char *sender, unsigned notify, enum qmgr_dsn_action action,
                          bool delay_by_default);

/* qmgr_dsn_action_name - "failed", "delayed", "delivered", "relayed" */
const char *qmgr_dsn_action_name(enum qmgr_dsn_action action);

/*
 * qmgr_dsn_sanitize - copy untrusted TEXT into OUT (size OUTSIZE, at most
 * MAX bytes of text kept, always NUL-terminated): CR, LF, TAB, NUL and other
 * controls become one space each, non-ASCII bytes become '?', leading and
 * trailing spaces go. Returns OUT. Exposed for the accounting writer and tests.
 */
char *qmgr_dsn_sanitize(char *out, size_t outsize, const char *text, size_t max);

/*
 * qmgr_dsn_status_text - the RFC 3463 text of enhanced status STATUS in lower
 * case ("5.1.1" -> "bad destination mailbox address"); any 2.x.x is
 * "success", an unknown detail reads as its subject's X.Y.0 text, anything
 * that is not a status as "other undefined status". Never NULL.
 * (qmgr_dsn_status.c)
 */
const char *qmgr_dsn_status_text(const char *status);
/*
 * qmgr_dsn_status_field - "STATUS (TEXT)" as PowerMTA's dsnStatus reads,
 * FALLBACK standing in for a STATUS that is not one; returns OUT
 */
char *qmgr_dsn_status_field(char *out, size_t size, const char *status, const char *fallback);
/*
 * qmgr_dsn_diag_text - the diagnostic of a result without its type ("smtp;"
 * goes before it): the remote reply as received, its CODE first ("550 5.1.1
 * user unknown"); when no reply came (CODE 0) our own reason as an SMTP-style
 * line marked as ours, "451 4.4.1 [internal] connect to mx[1.2.3.4]:25:
 * connection refused" (code 250, 451 or 554 by STATUS's class). Returns OUT.
 */
char *qmgr_dsn_diag_text(char *out, size_t size, unsigned code, const char *status,
                         const char *text);

#endif
