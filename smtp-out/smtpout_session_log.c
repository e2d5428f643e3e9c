/*
 * smtpout_session_log.c - a session's transcripts: log-commands (each line as
 * it goes and comes), log-data (the message, bounded), log-transfer-failures
 * (the lines of a transaction kept until it fails, then logged) and pmtactl
 * trace (the same lines to the trace callback)
 *
 * Owns: the kept lines (struct smtpout_session's `kept` buffer).
 *
 * SECURITY: credentials never reach a transcript (AUTH's argument and every
 * line sent while the exchange runs are masked); every line is made
 * printable (msg_printable) and bounded before it is logged.
 */
#include "config.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "msg.h"
#include "smtpout_session_int.h"

/* session_transcript - one line of the conversation: logged now, or kept until the transaction
 * fails */
void
session_transcript(struct smtpout_session *s, const char *dir, const char *line, size_t len)
{
    char text[LOG_LINE_MAX];

    if (!(s->cfg.log & (SMTPOUT_LOG_COMMANDS | SMTPOUT_LOG_TRANSFER_FAILURES)) && !s->trace)
        return;
    /* credentials never reach the log: AUTH's argument, and every line sent while the
       exchange runs (AUTH LOGIN's and CRAM-MD5's answers) */
    if (*dir == '>' && smtpout_proto_stage(s->proto) == SMTPOUT_STAGE_AUTH &&
        !(len >= 5 && strncasecmp(line, "AUTH ", 5) == 0)) {
        line = "(credentials not logged)";
        len = strlen(line);
    } else if (*dir == '>' && len >= 5 && strncasecmp(line, "AUTH ", 5) == 0) {
        len = 5 + strcspn(line + 5, " ");
    }
    msg_printable(text, sizeof text, line, len);
    if (s->trace)
        s->cb.trace(s->arg, dir, text);
    if (s->cfg.log & SMTPOUT_LOG_COMMANDS) {
        msg_info("%s: %s %s", s->log_tag, dir, text);
    } else if ((s->cfg.log & SMTPOUT_LOG_TRANSFER_FAILURES) && s->nkept < KEPT_LINES_MAX) {
        buf_printf(&s->kept, "%s %s", dir, text);
        buf_append(&s->kept, "", 1);
        s->nkept++;
    }
}

/* session_transcript_lines - every line of DATA (the commands just written) */
void
session_transcript_lines(struct smtpout_session *s, const char *dir, const char *data, size_t len)
{
    const char *p = data, *end = data + len;

    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t n = nl ? (size_t)(nl - p) : (size_t)(end - p);

        session_transcript(s, dir, p, n && p[n - 1] == '\r' ? n - 1 : n);
        p = nl ? nl + 1 : end;
    }
}

/* session_transcript_failed - the transaction failed: write the lines kept for it */
void
session_transcript_failed(struct smtpout_session *s, const struct smtpout_reply *r)
{
    const char *p = s->kept.data;

    if (s->nkept == 0 || (r->cls == SMTPOUT_OK && !s->txn_failed))
        return;
    msg_info("%s: transfer failed (%s): transcript follows", s->log_tag,
             r->cls == SMTPOUT_OK ? "a recipient was refused" : r->text);
    for (unsigned i = 0; i < s->nkept; i++, p += strlen(p) + 1)
        msg_info("%s: %s", s->log_tag, p);
    buf_reset(&s->kept);
    s->nkept = 0;
}

/* session_transcript_data - log-data: the message as it goes out (before dot-stuffing), bounded */
void
session_transcript_data(struct smtpout_session *s, const struct smtpout_message *m)
{
    size_t len = m->len < LOG_DATA_MAX ? m->len : LOG_DATA_MAX;
    const char *p = m->data, *end = m->data + len;
    char text[LOG_LINE_MAX];

    if (s->trace && !(s->trace & SMTPOUT_TRACE_DATA)) {
        snprintf(text, sizeof text, "message data: %zu bytes (not shown; --log-data shows them)",
                 m->len);
        s->cb.trace(s->arg, "*", text);
    }
    if (!(s->cfg.log & SMTPOUT_LOG_DATA) && !(s->trace & SMTPOUT_TRACE_DATA))
        return;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t n = nl ? (size_t)(nl - p) : (size_t)(end - p);

        msg_printable(text, sizeof text, p, n && p[n - 1] == '\r' ? n - 1 : n);
        if (s->cfg.log & SMTPOUT_LOG_DATA)
            msg_info("%s: > | %s", s->log_tag, text);
        if (s->trace & SMTPOUT_TRACE_DATA)
            s->cb.trace(s->arg, "|", text);
        p = nl ? nl + 1 : end;
    }
    if (m->len > len) {
        snprintf(text, sizeof text, "... (%zu more bytes not shown)", m->len - len);
        if (s->cfg.log & SMTPOUT_LOG_DATA)
            msg_info("%s: > | %s", s->log_tag, text);
        if (s->trace & SMTPOUT_TRACE_DATA)
            s->cb.trace(s->arg, "|", text);
    }
}
