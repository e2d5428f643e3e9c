/*
 * smtpout_proto_reply.c - the SMTP client's reply reader: bytes in, complete
 * replies out (contract in smtpout_proto.h), and the replies we make up
 *
 * Owns nothing but the reader's own line buffer (struct smtpout_reader).
 *
 * SECURITY: this parses what a hostile server sends. The partial line is
 * bounded before it is stored; each line's length is checked before the code
 * and separator are read at fixed offsets (the CVE-2020-8794 lesson); a
 * reply's lines are counted; text passed up is bounded and printable ASCII.
 * It is the entry point for fuzzing (smtpout_reader_feed).
 */
#include "config.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "msg.h"
#include "smtpout_proto.h"

/* --- names and made-up replies ------------------------------------------------------- */

const char *
smtpout_stage_name(enum smtpout_stage stage)
{
    static const char *const names[] = {
        "connect", "greeting", "ehlo", "helo", "starttls", "tls",  "auth", "rset",
        "mail",    "rcpt",     "data", "body", "dot",      "bdat", "quit", "local",
    };
    return (size_t)stage < sizeof names / sizeof names[0] ? names[stage] : "?";
}

const char *
smtpout_class_name(enum smtpout_class cls)
{
    return cls == SMTPOUT_OK ? "ok" : cls == SMTPOUT_TEMP ? "temp" : "perm";
}

void
smtpout_reply_local(struct smtpout_reply *r, enum smtpout_class cls, enum smtpout_stage stage,
                    const char *status, const char *fmt, ...)
{
    va_list ap;
    char text[SMTPOUT_REPLY_TEXT_MAX + 1];

    memset(r, 0, sizeof *r);
    r->code = 0;
    r->cls = cls;
    r->stage = stage;
    snprintf(r->status, sizeof r->status, "%s", status);
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    msg_printable(r->text, sizeof r->text, text, strlen(text));
}

/* --- the reply reader ------------------------------------------------------------------ */

void
smtpout_reader_init(struct smtpout_reader *rd)
{
    memset(rd, 0, sizeof *rd);
}

/* reader_next_reply - forget the reply just handed out */
static void
reader_next_reply(struct smtpout_reader *rd)
{
    memset(&rd->reply, 0, sizeof rd->reply);
    rd->nlines = 0;
    rd->text_len = 0;
    rd->have_status = 0;
    rd->caps = 0;
    rd->size_max = 0;
    rd->auth_mechs = 0;
}

/* reply_append_text - sanitized, bounded: nothing but printable ASCII */
static void
reply_append_text(struct smtpout_reader *rd, const char *p, size_t len)
{
    size_t i;

    for (i = 0; i < len && rd->text_len < SMTPOUT_REPLY_TEXT_MAX; i++) {
        unsigned char c = (unsigned char)p[i];
        rd->reply.text[rd->text_len++] = (c < 0x20 || c >= 0x7f) ? '?' : (char)c;
    }
    rd->reply.text[rd->text_len] = 0;
}

/*
 * reply_enhanced_status - "X.Y.Z " at the start of TEXT, X matching CODE.
 * RFC 3463 classes are 2, 4 and 5 only: a 3xx never carries one (its X.0.0
 * is 2.0.0), whatever "3.x.y" the server wrote.
 */
static int
reply_enhanced_status(const char *text, size_t len, int code, char *out, size_t outlen)
{
    size_t i = 0, part, digits;

    if (len < 5 || code / 100 == 3 || text[0] - '0' != code / 100)
        return 0;
    for (part = 0; part < 3; part++) {
        if (part > 0) {
            if (i >= len || text[i] != '.')
                return 0;
            i++;
        }
        for (digits = 0; i < len && isdigit((unsigned char)text[i]) && digits < 4; i++)
            digits++;
        if (digits == 0 || digits > (part == 0 ? 1u : 3u))
            return 0;
    }
    if (i < len && text[i] != ' ')
        return 0;
    if (i >= outlen)
        return 0;
    memcpy(out, text, i);
    out[i] = 0;
    return 1;
}

/* parse_auth_mechs - the mechanisms after "AUTH " or "AUTH=" (blank-separated) */
static void
parse_auth_mechs(struct smtpout_reader *rd, const char *list)
{
    static const struct {
        const char *name;
        unsigned bit;
    } mechs[] = {
        { "PLAIN", SMTPOUT_AUTH_PLAIN },
        { "LOGIN", SMTPOUT_AUTH_LOGIN },
        { "CRAM-MD5", SMTPOUT_AUTH_CRAM_MD5 },
    };

    while (*list) {
        size_t n = strcspn(list, " ");

        for (size_t i = 0; i < sizeof mechs / sizeof mechs[0]; i++)
            if (strlen(mechs[i].name) == n && strncasecmp(list, mechs[i].name, n) == 0)
                rd->auth_mechs |= mechs[i].bit;
        list += n;
        list += strspn(list, " ");
    }
}

/* the EHLO keywords we act on, in SMTPOUT_CAP_* bit order */
static const struct {
    const char *name;
    unsigned bit;
} caps[] = {
    { "PIPELINING", SMTPOUT_CAP_PIPELINING },
    { "SIZE", SMTPOUT_CAP_SIZE },
    { "8BITMIME", SMTPOUT_CAP_8BITMIME },
    { "SMTPUTF8", SMTPOUT_CAP_SMTPUTF8 },
    { "STARTTLS", SMTPOUT_CAP_STARTTLS },
    { "ENHANCEDSTATUSCODES", SMTPOUT_CAP_ENHANCED },
    { "CHUNKING", SMTPOUT_CAP_CHUNKING },
    { "DSN", SMTPOUT_CAP_DSN },
    { "AUTH", SMTPOUT_CAP_AUTH },
};

/* smtpout_cap_name - see smtpout_proto.h */
const char *
smtpout_cap_name(unsigned bit)
{
    for (size_t i = 0; i < sizeof caps / sizeof caps[0]; i++)
        if (caps[i].bit == bit)
            return caps[i].name;
    return NULL;
}

/* parse_capability - one EHLO keyword line (already sanitized) */
static void
parse_capability(struct smtpout_reader *rd, const char *text)
{
    size_t klen = strcspn(text, " =");
    size_t i;

    for (i = 0; i < sizeof caps / sizeof caps[0]; i++) {
        if (strlen(caps[i].name) != klen || strncasecmp(text, caps[i].name, klen) != 0)
            continue;
        rd->caps |= caps[i].bit;
        if (caps[i].bit == SMTPOUT_CAP_SIZE && text[klen] == ' ')
            rd->size_max = strtoul(text + klen + 1, NULL, 10);
        if (caps[i].bit == SMTPOUT_CAP_AUTH && text[klen] != '\0')
            parse_auth_mechs(rd, text + klen + 1); /* "AUTH PLAIN" or the old "AUTH=PLAIN" */
    }
}

/* reader_error - describe the problem in OUT */
static enum smtpout_read
reader_error(struct smtpout_reply *out, const char *what)
{
    memset(out, 0, sizeof *out);
    snprintf(out->text, sizeof out->text, "%s", what);
    return SMTPOUT_READ_ERROR;
}

/*
 * reader_line - one line without its line end. Checks the length before
 * looking at the code and separator; 1 when it ended the reply.
 */
static int
reader_line(struct smtpout_reader *rd, const char *line, size_t len, struct smtpout_reply *out,
            enum smtpout_read *rc)
{
    char shown[80], what[160];
    int code, cls;
    const char *text;
    size_t tlen;

    if (len < 3 || !isdigit((unsigned char)line[0]) || !isdigit((unsigned char)line[1]) ||
        !isdigit((unsigned char)line[2]) || (len > 3 && line[3] != ' ' && line[3] != '-')) {
        msg_printable(shown, sizeof shown, line, len);
        snprintf(what, sizeof what, "malformed reply: \"%s\"", shown);
        *rc = reader_error(out, what);
        return 1;
    }
    code = (line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0');
    if (code < 200 || code > 599 || (rd->nlines > 0 && code != rd->reply.code)) {
        *rc = reader_error(out, "malformed reply code");
        return 1;
    }
    if (++rd->nlines > SMTPOUT_REPLY_LINES_MAX) {
        *rc = reader_error(out, "reply has too many lines");
        return 1;
    }
    text = len > 4 ? line + 4 : "";
    tlen = len > 4 ? len - 4 : 0;
    if (rd->nlines == 1) {
        rd->reply.code = code;
        reply_append_text(rd, line, 3);
        rd->have_status = reply_enhanced_status(text, tlen, code, rd->reply.status,
                                                sizeof rd->reply.status);
    } else {
        char cap[SMTPOUT_LINE_MAX + 1];

        msg_printable(cap, sizeof cap, text, tlen);
        parse_capability(rd, cap);
    }
    if (tlen > 0) {
        reply_append_text(rd, " ", 1);
        reply_append_text(rd, text, tlen);
    }
    if (len > 3 && line[3] == '-')
        return 0;
    *out = rd->reply;
    cls = code / 100;
    out->cls = cls == 4 ? SMTPOUT_TEMP : cls == 5 ? SMTPOUT_PERM : SMTPOUT_OK;
    if (!rd->have_status)
        snprintf(out->status, sizeof out->status, "%c.0.0", cls == 3 ? '2' : (char)('0' + cls));
    *rc = SMTPOUT_READ_REPLY;
    return 1;
}

enum smtpout_read
smtpout_reader_feed(struct smtpout_reader *rd, const char *data, size_t len, size_t *used,
                    struct smtpout_reply *out)
{
    size_t taken = 0;
    enum smtpout_read rc = SMTPOUT_READ_MORE;

    if (rd->nlines == 0 && rd->line_len == 0)
        reader_next_reply(rd);
    while (taken < len) {
        const char *nl = memchr(data + taken, '\n', len - taken);
        size_t chunk = nl ? (size_t)(nl - (data + taken)) + 1 : len - taken;
        size_t linelen;

        if (rd->line_len + chunk > SMTPOUT_LINE_MAX) {
            *used = taken;
            return reader_error(out, "reply line too long");
        }
        memcpy(rd->line + rd->line_len, data + taken, chunk);
        rd->line_len += chunk;
        taken += chunk;
        if (nl == NULL)
            break;
        linelen = rd->line_len - 1;
        if (linelen > 0 && rd->line[linelen - 1] == '\r')
            linelen--;
        rd->line[linelen] = 0;
        rd->line_len = 0;
        if (reader_line(rd, rd->line, linelen, out, &rc)) {
            if (rc == SMTPOUT_READ_REPLY)
                rd->nlines = 0; /* the next call starts a new reply */
            break;
        }
    }
    *used = taken;
    return rc;
}
