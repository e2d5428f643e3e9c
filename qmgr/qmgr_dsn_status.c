/*
 * qmgr_dsn_status.c - what a delivery status reads as: the RFC 3463 text of
 * an enhanced status code, and the diagnostic line of a result
 *
 * PowerMTA writes a status as "5.1.1 (bad destination mailbox address)" in
 * its accounting files and a diagnostic as "smtp;550 5.1.1 ...". Both the
 * accounting writer and the DSN builder take their text from here, so a
 * status reads the same in a b record and in the bounce it sent.
 *
 * Owns: nothing (tables and pure functions).
 * SECURITY: TEXT is remote-controlled; it is copied bounded and never
 * interpreted. The callers' writers sanitise it for their formats.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qmgr_dsn.h"

/* RFC 3463 (and later registrations: RFC 3886, 4954, 6531, 7372, 7505, 8601) in lower case */
static const struct {
    unsigned subject, detail;
    const char *text;
} status_texts[] = {
    { 0, 0, "other undefined status" },
    { 1, 0, "other address status" },
    { 1, 1, "bad destination mailbox address" },
    { 1, 2, "bad destination system address" },
    { 1, 3, "bad destination mailbox address syntax" },
    { 1, 4, "destination mailbox address ambiguous" },
    { 1, 5, "destination address valid" },
    { 1, 6, "destination mailbox has moved, no forwarding address" },
    { 1, 7, "bad sender's mailbox address syntax" },
    { 1, 8, "bad sender's system address" },
    { 1, 9, "message relayed to non-compliant mailer" },
    { 1, 10, "recipient address has null mx" },
    { 2, 0, "other or undefined mailbox status" },
    { 2, 1, "mailbox disabled, not accepting messages" },
    { 2, 2, "mailbox full" },
    { 2, 3, "message length exceeds administrative limit" },
    { 2, 4, "mailing list expansion problem" },
    { 3, 0, "other or undefined mail system status" },
    { 3, 1, "mail system full" },
    { 3, 2, "system not accepting network messages" },
    { 3, 3, "system not capable of selected features" },
    { 3, 4, "message too big for system" },
    { 3, 5, "system incorrectly configured" },
    { 4, 0, "other or undefined network or routing status" },
    { 4, 1, "no answer from host" },
    { 4, 2, "bad connection" },
    { 4, 3, "directory server failure" },
    { 4, 4, "unable to route" },
    { 4, 5, "mail system congestion" },
    { 4, 6, "routing loop detected" },
    { 4, 7, "delivery time expired" },
    { 5, 0, "other or undefined protocol status" },
    { 5, 1, "invalid command" },
    { 5, 2, "syntax error" },
    { 5, 3, "too many recipients" },
    { 5, 4, "invalid command arguments" },
    { 5, 5, "wrong protocol version" },
    { 5, 6, "authentication exchange line is too long" },
    { 6, 0, "other or undefined media error" },
    { 6, 1, "media not supported" },
    { 6, 2, "conversion required and prohibited" },
    { 6, 3, "conversion required but not supported" },
    { 6, 4, "conversion with loss performed" },
    { 6, 5, "conversion failed" },
    { 6, 6, "message content not available" },
    { 6, 7, "non-ascii addresses not permitted for that sender/recipient" },
    { 7, 0, "other or undefined security status" },
    { 7, 1, "delivery not authorized, message refused" },
    { 7, 2, "mailing list expansion prohibited" },
    { 7, 3, "security conversion required but not possible" },
    { 7, 4, "security features not supported" },
    { 7, 5, "cryptographic failure" },
    { 7, 6, "cryptographic algorithm not supported" },
    { 7, 7, "message integrity failure" },
    { 7, 8, "authentication credentials invalid" },
    { 7, 9, "authentication mechanism is too weak" },
    { 7, 10, "encryption needed" },
    { 7, 11, "encryption required for requested authentication mechanism" },
    { 7, 12, "a password transition is needed" },
    { 7, 13, "user account disabled" },
    { 7, 14, "trust relationship required" },
    { 7, 15, "priority level is too low" },
    { 7, 16, "message is too big for the specified priority" },
    { 7, 17, "mailbox owner has changed" },
    { 7, 18, "domain owner has changed" },
    { 7, 19, "rrvs test cannot be completed" },
    { 7, 20, "no passing dkim signature found" },
    { 7, 21, "no acceptable dkim signature found" },
    { 7, 22, "no valid author-matched dkim signature found" },
    { 7, 23, "spf validation failed" },
    { 7, 24, "spf validation error" },
    { 7, 25, "reverse dns validation failed" },
    { 7, 26, "multiple authentication checks failed" },
    { 7, 27, "sender address has null mx" },
    { 7, 28, "mail flood detected" },
    { 7, 29, "arc validation failure" },
    { 7, 30, "requiretls support required" },
};

/* parse_status - "C.S.D" into its numbers; 0, or -1 when STATUS is not one */
static int
parse_status(const char *status, unsigned *cls, unsigned *subject, unsigned *detail)
{
    char *end;
    unsigned long v[3];
    const char *p = status;

    if (!p || (*p != '2' && *p != '4' && *p != '5'))
        return -1;
    for (int i = 0; i < 3; i++) {
        if (*p < '0' || *p > '9')
            return -1;
        v[i] = strtoul(p, &end, 10);
        if (end - p > (i == 0 ? 1 : 3) || (i < 2 && *end != '.') || (i == 2 && *end))
            return -1;
        p = end + (i < 2);
    }
    *cls = (unsigned)v[0];
    *subject = (unsigned)v[1];
    *detail = (unsigned)v[2];
    return 0;
}

const char *
qmgr_dsn_status_text(const char *status)
{
    unsigned cls, subject, detail;
    const char *subject_text = status_texts[0].text;

    if (parse_status(status, &cls, &subject, &detail) < 0)
        return status_texts[0].text;
    if (cls == 2)
        return "success";
    for (size_t i = 0; i < sizeof status_texts / sizeof status_texts[0]; i++) {
        if (status_texts[i].subject != subject)
            continue;
        if (status_texts[i].detail == detail)
            return status_texts[i].text;
        if (status_texts[i].detail == 0)
            subject_text = status_texts[i].text;
    }
    return subject_text;
}

char *
qmgr_dsn_status_field(char *out, size_t size, const char *status, const char *fallback)
{
    unsigned cls, subject, detail;
    const char *st = parse_status(status, &cls, &subject, &detail) == 0 ? status : fallback;

    snprintf(out, size, "%s (%s)", st, qmgr_dsn_status_text(st));
    return out;
}

/* skip_status - TEXT without a leading copy of STATUS ("4.4.1 connect to ..." -> "connect to ...")
 */
static const char *
skip_status(const char *text, const char *status)
{
    size_t n = status ? strlen(status) : 0;

    if (n && strncmp(text, status, n) == 0 && text[n] == ' ')
        return text + n + 1;
    return text;
}

char *
qmgr_dsn_diag_text(char *out, size_t size, unsigned code, const char *status, const char *text)
{
    char digits[8];
    size_t n;
    unsigned cls, subject, detail;
    const char *st;

    text = text ? text : "";
    if (code == 0) { /* no reply came: our own reason, as an SMTP-style line marked [internal] */
        st = parse_status(status, &cls, &subject, &detail) == 0 ? status : "4.0.0";
        cls = (unsigned)(st[0] - '0');
        snprintf(out, size, "%u %s [internal] %s",
                 cls == 2   ? 250u
                 : cls == 4 ? 451u
                            : 554u,
                 st, skip_status(text, st));
        return out;
    }
    n = (size_t)snprintf(digits, sizeof digits, "%u", code);
    if (strncmp(text, digits, n) == 0 && (text[n] == ' ' || text[n] == '-' || text[n] == '\0'))
        snprintf(out, size, "%s", text); /* the reply as received, code first */
    else
        snprintf(out, size, "%u %s", code, text);
    return out;
}
