/*
 * qmgr_report_parse.h - reports that come back to us: delivery status
 * notifications (RFC 3464) and feedback-loop complaints (ARF, RFC 5965)
 *
 * NAME
 *   qmgr_report_parse - one received message in, what it reports out
 *
 * DESCRIPTION
 *   A clean bytes-in function (no I/O, no globals: the fuzzing entry point
 *   for inbound reports). It reads a whole message (header section and
 *   body, CRLF or LF) and recognises:
 *
 *   - a DSN: multipart/report; report-type=delivery-status (or
 *     message/global-delivery-status, RFC 6533). From the
 *     message/delivery-status part: Reporting-MTA, Original-Envelope-Id and
 *     Arrival-Date of the per-message block, and for each recipient block
 *     Final-Recipient, Original-Recipient, Action, Status, Remote-MTA and
 *     Diagnostic-Code;
 *   - an ARF report: multipart/report; report-type=feedback-report. From
 *     the message/feedback-report part: Feedback-Type, User-Agent, Version,
 *     Source-IP, Reported-Domain, Reporting-MTA, Original-Mail-From,
 *     Original-Rcpt-To, Original-Envelope-Id, Arrival-Date;
 *   - for both, the original message returned (message/rfc822,
 *     text/rfc822-headers): its header section, and from it To, From,
 *     Subject, Message-ID and our own X-Job, X-Virtual-MTA and X-EnvID.
 *
 *   Parts may be 7bit, 8bit or base64 (decoded into the report, bounded).
 *   Anything else (a plain-text bounce, another multipart) is
 *   QMGR_REPORT_UNKNOWN: not an error, just not a report we understand.
 *   A message that says it is a report but is broken (no boundary, no
 *   status part, a status part without recipients, an ARF part without
 *   Feedback-Type) is -EBADMSG, with the reason.
 *
 *   Values are copied, unfolded, with control bytes and NUL replaced by
 *   spaces and cut at QMGR_REPORT_FIELD_MAX; address types ("rfc822;") and
 *   MTA types ("dns;") are taken off; Diagnostic-Code keeps its type, as
 *   accounting writes it ("smtp;550 5.1.1 ..."). Nothing is interpreted
 *   beyond that: the caller sanitises again where it writes.
 *
 * SECURITY
 *   The input is remote and hostile. Every line is found with memchr within
 *   the input's bounds, every copy is bounded by its destination, counts
 *   (parts, recipients, header fields, base64 output) are capped, and
 *   nothing points outside the input or the report's own buffers.
 */
#ifndef PMTA_QMGR_REPORT_PARSE_H
#define PMTA_QMGR_REPORT_PARSE_H

#include <stddef.h>

#define QMGR_REPORT_FIELD_MAX  512       /* bytes kept of one value */
#define QMGR_REPORT_RCPTS_MAX  64        /* recipient blocks kept */
#define QMGR_REPORT_PARTS_MAX  32        /* MIME parts looked at */
#define QMGR_REPORT_DECODE_MAX (1 << 20) /* bytes of a base64 part decoded */

enum qmgr_report_kind { QMGR_REPORT_UNKNOWN, QMGR_REPORT_DSN, QMGR_REPORT_ARF };

typedef char qmgr_report_field[QMGR_REPORT_FIELD_MAX + 1];

struct qmgr_report_rcpt {
    qmgr_report_field final_rcpt; /* the address, without "rfc822;" */
    qmgr_report_field orcpt;
    qmgr_report_field remote_mta; /* without "dns;" */
    qmgr_report_field diag;       /* "smtp;550 5.1.1 ..." */
    char action[32];              /* lower case: failed, delayed, delivered, relayed, expanded */
    char status[16];              /* "5.1.1" */
};

struct qmgr_report {
    enum qmgr_report_kind kind;
    /* DSN, per message */
    qmgr_report_field reporting_mta;
    qmgr_report_field envid; /* Original-Envelope-Id (DSN or ARF) */
    qmgr_report_field arrival_date;
    size_t nrcpts;
    struct qmgr_report_rcpt rcpts[QMGR_REPORT_RCPTS_MAX];
    /* ARF */
    char feedback_type[64]; /* lower case: abuse, fraud, virus, other, not-spam, ... */
    char version[16];
    char source_ip[64];
    qmgr_report_field user_agent;
    qmgr_report_field arf_reporting_mta;
    qmgr_report_field reported_domain;
    qmgr_report_field orig_mail_from;
    qmgr_report_field orig_rcpt_to; /* the first one */
    /* the original returned */
    const char *orig_headers; /* its header section: into the input or the report's buffer */
    size_t orig_headers_len;
    qmgr_report_field orig_to, orig_from, orig_subject, orig_message_id;
    qmgr_report_field x_job, x_virtual_mta, x_envid;
    /* owned: a decoded part the pointers above may point into */
    char *decoded;
};

/*
 * qmgr_report_parse - DATA/LEN (a whole message) into OUT (freed with
 * qmgr_report_free whatever the result). 0 (OUT->kind says what it is), or
 * -EBADMSG with the reason in WHY.
 */
int qmgr_report_parse(const char *data, size_t len, struct qmgr_report *out, char *why,
                      size_t whylen);
void qmgr_report_free(struct qmgr_report *r);

#endif
