/*
 * qmgr_report_parse.c - DSNs (RFC 3464) and ARF complaints (RFC 5965) read
 * from a received message (contract in qmgr_report_parse.h)
 *
 * The message is walked, never copied whole: a line reader over a byte
 * range, a header-field reader on top of it (one field at a time, unfolded
 * into a bounded buffer), the MIME boundary splitter of RFC 2046 for one
 * level of multipart/report, and the field groups of the status parts.
 *
 * Owns: nothing but the decoded-part buffer it leaves in the report.
 *
 * SECURITY: see the header. Every pointer stays within [data, data + len)
 * or the report's decoded buffer; the loops advance by at least one byte.
 */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/evp.h>

#include "xalloc.h"
#include "qmgr_report_parse.h"

#define BOUNDARY_MAX 200
#define FIELDS_MAX   2000 /* header fields looked at in one section */

/* A byte range. */
struct span {
    const char *p;
    size_t len;
};

/* next_line - the line at *S (without its LF or CRLF) into LINE; advances *S; 0 at the end */
static int
next_line(struct span *s, struct span *line)
{
    const char *nl;
    size_t n;

    if (s->len == 0)
        return 0;
    nl = memchr(s->p, '\n', s->len);
    n = nl ? (size_t)(nl - s->p) : s->len;
    line->p = s->p;
    line->len = n > 0 && s->p[n - 1] == '\r' ? n - 1 : n;
    s->p += nl ? n + 1 : n;
    s->len -= nl ? n + 1 : n;
    return 1;
}

/* copy_clean - append LEN bytes at P to OUT (capacity CAP incl. NUL, *USED so far): controls
   become spaces */
static void
copy_clean(char *out, size_t cap, size_t *used, const char *p, size_t len)
{
    for (size_t i = 0; i < len && *used + 1 < cap; i++) {
        unsigned char c = (unsigned char)p[i];
        out[(*used)++] = c < 0x20 || c == 0x7f ? ' ' : (char)c;
    }
    out[*used] = 0;
}

/* trim - remove blanks at both ends of OUT in place */
static void
trim(char *out)
{
    size_t n = strlen(out), k = 0;

    while (n > 0 && out[n - 1] == ' ')
        out[--n] = 0;
    while (out[k] == ' ')
        k++;
    if (k)
        memmove(out, out + k, n - k + 1);
}

/*
 * next_field - the next header field of the section at *S: its name (into
 * the input) and its value unfolded into VALUE (CAP bytes). 0 at the end of
 * the section (an empty line, which is consumed, or the end of the input).
 * Lines that are not fields (no ':' in a name of printable characters) are
 * skipped, as a lenient reader of other MTAs' output should.
 */
static int
next_field(struct span *s, struct span *name, char *value, size_t cap)
{
    struct span line, peek;
    size_t used = 0;
    const char *colon;

    for (;;) {
        if (!next_line(s, &line) || line.len == 0)
            return 0;
        if (line.p[0] == ' ' || line.p[0] == '\t')
            continue; /* a continuation without a field: skipped */
        colon = memchr(line.p, ':', line.len);
        if (colon && colon > line.p)
            break;
    }
    name->p = line.p;
    name->len = (size_t)(colon - line.p);
    while (name->len > 0 && (name->p[name->len - 1] == ' ' || name->p[name->len - 1] == '\t'))
        name->len--;
    value[0] = 0;
    copy_clean(value, cap, &used, colon + 1, line.len - (size_t)(colon + 1 - line.p));
    for (;;) { /* a line break and the blanks after it: one space */
        peek = *s;
        if (!next_line(&peek, &line) || line.len == 0 || (line.p[0] != ' ' && line.p[0] != '\t'))
            break;
        *s = peek;
        while (line.len > 0 && (line.p[0] == ' ' || line.p[0] == '\t'))
            line.p++, line.len--;
        copy_clean(value, cap, &used, " ", 1);
        copy_clean(value, cap, &used, line.p, line.len);
    }
    trim(value);
    return 1;
}

static int
name_is(const struct span *name, const char *want)
{
    return name->len == strlen(want) && strncasecmp(name->p, want, name->len) == 0;
}

/* section_end - where the header section at S ends: the body (after the empty line) */
static struct span
section_body(struct span s)
{
    struct span line;

    while (next_line(&s, &line))
        if (line.len == 0)
            return s;
    return s; /* no body */
}

/* set - VALUE into a field of the report, cut at CAP - 1 bytes */
static void
set(char *dst, size_t cap, const char *value)
{
    size_t n = strnlen(value, cap - 1);

    memcpy(dst, value, n);
    dst[n] = 0;
}

/* set_lower - set(), lower-cased (Action, Feedback-Type) */
static void
set_lower(char *dst, size_t cap, const char *value)
{
    set(dst, cap, value);
    for (; *dst; dst++)
        *dst = (char)tolower((unsigned char)*dst);
}

/* strip_type - "rfc822; x" or "dns; x" -> "x" (when the part before ';' is a token) */
static const char *
strip_type(const char *v)
{
    const char *semi = strchr(v, ';');

    if (semi == NULL)
        return v;
    for (const char *p = v; p < semi; p++)
        if (!isalnum((unsigned char)*p) && *p != '-' && *p != '.')
            return v;
    for (semi++; *semi == ' '; semi++)
        ;
    return semi;
}

/* diag_value - "smtp; 550 ..." -> "smtp;550 ..." (accounting's spelling) */
static void
diag_value(char *dst, size_t cap, const char *v)
{
    const char *rest = strip_type(v);

    if (rest == v)
        snprintf(dst, cap, "%s", v);
    else
        snprintf(dst, cap, "%.*s;%s", (int)(strcspn(v, ";")), v, rest);
}

/* --- Content-Type ----------------------------------------------------------------------- */

struct content_type {
    char type[80];        /* lower case "multipart/report" */
    char report_type[40]; /* lower case */
    char boundary[BOUNDARY_MAX + 1];
};

/* ct_parse - a Content-Type value: the media type and the parameters we need */
static void
ct_parse(const char *v, struct content_type *ct)
{
    size_t n = strcspn(v, "; \t");

    memset(ct, 0, sizeof *ct);
    for (size_t i = 0; i < n && i + 1 < sizeof ct->type; i++)
        ct->type[i] = (char)tolower((unsigned char)v[i]);
    v += n;
    while (*v) {
        char pname[40], pval[BOUNDARY_MAX + 1];
        size_t k = 0, m = 0;

        v += strspn(v, "; \t");
        while (*v && *v != '=' && *v != ';' && k + 1 < sizeof pname)
            pname[k++] = (char)tolower((unsigned char)*v++);
        pname[k] = 0;
        while (*v && *v != '=' && *v != ';')
            v++;
        if (*v != '=')
            continue;
        v++;
        if (*v == '"') {
            for (v++; *v && *v != '"'; v++) {
                if (*v == '\\' && v[1])
                    v++;
                if (m + 1 < sizeof pval)
                    pval[m++] = *v;
            }
            if (*v == '"')
                v++;
        } else {
            while (*v && *v != ';' && *v != ' ' && *v != '\t') {
                if (m + 1 < sizeof pval)
                    pval[m++] = *v;
                v++;
            }
        }
        pval[m] = 0;
        if (strcmp(pname, "boundary") == 0)
            snprintf(ct->boundary, sizeof ct->boundary, "%s", pval);
        else if (strcmp(pname, "report-type") == 0)
            for (size_t i = 0; i <= m && i < sizeof ct->report_type; i++)
                ct->report_type[i] = (char)tolower((unsigned char)pval[i]);
    }
}

/* --- one header section: what we keep of it ------------------------------------------- */

struct section {
    struct content_type ct;
    char cte[32]; /* Content-Transfer-Encoding, lower case */
};

/* read_section - the fields of a part's (or the message's) header section at *S */
static void
read_section(struct span *s, struct section *sec)
{
    char value[QMGR_REPORT_FIELD_MAX + 1];
    struct span name;
    unsigned n = 0;

    memset(sec, 0, sizeof *sec);
    snprintf(sec->ct.type, sizeof sec->ct.type, "text/plain");
    while (n++ < FIELDS_MAX && next_field(s, &name, value, sizeof value)) {
        if (name_is(&name, "Content-Type"))
            ct_parse(value, &sec->ct);
        else if (name_is(&name, "Content-Transfer-Encoding"))
            for (size_t i = 0; i <= strlen(value) && i < sizeof sec->cte; i++)
                sec->cte[i] = (char)tolower((unsigned char)value[i]);
    }
}

/* --- the parts --------------------------------------------------------------------------- */

/* is_delimiter - LINE is "--BOUNDARY" (then "--" if CLOSE), maybe with trailing blanks */
static int
is_delimiter(const struct span *line, const char *boundary, int *close)
{
    size_t bl = strlen(boundary), i;

    if (line->len < bl + 2 || line->p[0] != '-' || line->p[1] != '-' ||
        memcmp(line->p + 2, boundary, bl) != 0)
        return 0;
    i = bl + 2;
    *close = line->len >= i + 2 && line->p[i] == '-' && line->p[i + 1] == '-';
    if (*close)
        i += 2;
    for (; i < line->len; i++)
        if (line->p[i] != ' ' && line->p[i] != '\t')
            return 0;
    return 1;
}

/* split_parts - the parts of BODY between BOUNDARY delimiters; how many (at most MAX) */
static size_t
split_parts(struct span body, const char *boundary, struct span *parts, size_t max)
{
    struct span line, s = body;
    const char *start = NULL;
    size_t n = 0;
    int close = 0;

    for (;;) {
        const char *at = s.p;

        if (!next_line(&s, &line))
            break;
        if (!is_delimiter(&line, boundary, &close))
            continue;
        if (start && n < max) {
            /* the part ends before the line break that precedes the delimiter */
            size_t len = (size_t)(at - start);
            if (len > 0 && start[len - 1] == '\n')
                len--;
            if (len > 0 && start[len - 1] == '\r')
                len--;
            parts[n].p = start;
            parts[n++].len = len;
        }
        if (close)
            break;
        start = s.p;
    }
    return n;
}

/* decode_base64 - PART's base64 text decoded into *OWNER (a new buffer, bounded) */
static struct span
decode_base64(char **owner, struct span part)
{
    EVP_ENCODE_CTX *ctx = EVP_ENCODE_CTX_new();
    size_t cap = part.len / 4 * 3 + 4;
    int n = 0, tail = 0;
    struct span out = { "", 0 };

    if (ctx == NULL)
        return out;
    if (cap > QMGR_REPORT_DECODE_MAX) {
        cap = QMGR_REPORT_DECODE_MAX;
        part.len = cap / 3 * 4;
    }
    *owner = xmalloc(cap + 64);
    EVP_DecodeInit(ctx);
    if (EVP_DecodeUpdate(ctx, (unsigned char *)*owner, &n, (const unsigned char *)part.p,
                         (int)part.len) < 0 ||
        EVP_DecodeFinal(ctx, (unsigned char *)*owner + n, &tail) < 0) {
        n = tail = 0;
    }
    EVP_ENCODE_CTX_free(ctx);
    out.p = *owner;
    out.len = (size_t)n + (size_t)tail;
    return out;
}

/* --- the status parts -------------------------------------------------------------------- */

static void
dsn_rcpt_field(struct qmgr_report_rcpt *rc, const struct span *name, const char *v)
{
    if (name_is(name, "Final-Recipient"))
        set(rc->final_rcpt, sizeof rc->final_rcpt, strip_type(v));
    else if (name_is(name, "Original-Recipient"))
        set(rc->orcpt, sizeof rc->orcpt, strip_type(v));
    else if (name_is(name, "Remote-MTA"))
        set(rc->remote_mta, sizeof rc->remote_mta, strip_type(v));
    else if (name_is(name, "Diagnostic-Code"))
        diag_value(rc->diag, sizeof rc->diag, v);
    else if (name_is(name, "Action"))
        set_lower(rc->action, sizeof rc->action, v);
    else if (name_is(name, "Status"))
        snprintf(rc->status, sizeof rc->status, "%.*s", (int)strcspn(v, " ("), v);
}

/* parse_delivery_status - the per-message block, then one block per recipient */
static int
parse_delivery_status(struct qmgr_report *r, struct span s, char *why, size_t whylen)
{
    char value[QMGR_REPORT_FIELD_MAX + 1];
    struct span name, line;
    unsigned n = 0;

    while (n++ < FIELDS_MAX && next_field(&s, &name, value, sizeof value)) {
        if (name_is(&name, "Reporting-MTA"))
            set(r->reporting_mta, sizeof r->reporting_mta, strip_type(value));
        else if (name_is(&name, "Original-Envelope-Id"))
            set(r->envid, sizeof r->envid, value);
        else if (name_is(&name, "Arrival-Date"))
            set(r->arrival_date, sizeof r->arrival_date, value);
    }
    while (s.len > 0 && n < FIELDS_MAX) {
        struct qmgr_report_rcpt rc;
        int any = 0;

        memset(&rc, 0, sizeof rc);
        while (n++ < FIELDS_MAX && next_field(&s, &name, value, sizeof value)) {
            dsn_rcpt_field(&rc, &name, value);
            any = 1;
        }
        if (!any) { /* an extra empty line between blocks */
            if (!next_line(&s, &line))
                break;
            continue;
        }
        if (rc.final_rcpt[0] && rc.action[0] && r->nrcpts < QMGR_REPORT_RCPTS_MAX)
            r->rcpts[r->nrcpts++] = rc;
    }
    if (r->nrcpts == 0) {
        snprintf(why, whylen,
                 "delivery-status part without a recipient block (Final-Recipient, "
                 "Action)");
        return -EBADMSG;
    }
    return 0;
}

static int
parse_feedback_report(struct qmgr_report *r, struct span s, char *why, size_t whylen)
{
    char value[QMGR_REPORT_FIELD_MAX + 1];
    struct span name;
    unsigned n = 0;

    while (n++ < FIELDS_MAX && next_field(&s, &name, value, sizeof value)) {
        if (name_is(&name, "Feedback-Type"))
            set_lower(r->feedback_type, sizeof r->feedback_type, value);
        else if (name_is(&name, "User-Agent"))
            set(r->user_agent, sizeof r->user_agent, value);
        else if (name_is(&name, "Version"))
            set(r->version, sizeof r->version, value);
        else if (name_is(&name, "Source-IP"))
            set(r->source_ip, sizeof r->source_ip, value);
        else if (name_is(&name, "Reported-Domain"))
            set(r->reported_domain, sizeof r->reported_domain, value);
        else if (name_is(&name, "Reporting-MTA"))
            set(r->arf_reporting_mta, sizeof r->arf_reporting_mta, strip_type(value));
        else if (name_is(&name, "Original-Mail-From"))
            set(r->orig_mail_from, sizeof r->orig_mail_from, value);
        else if (name_is(&name, "Original-Rcpt-To") && !r->orig_rcpt_to[0])
            set(r->orig_rcpt_to, sizeof r->orig_rcpt_to, value);
        else if (name_is(&name, "Original-Envelope-Id"))
            set(r->envid, sizeof r->envid, value);
        else if (name_is(&name, "Arrival-Date") || name_is(&name, "Received-Date"))
            set(r->arrival_date, sizeof r->arrival_date, value);
    }
    if (!r->feedback_type[0]) {
        snprintf(why, whylen, "feedback-report part without Feedback-Type");
        return -EBADMSG;
    }
    return 0;
}

/* angle_addr - "Name <a@b>" -> "a@b" (the first <...>, else the value) into DST */
static void
angle_addr(char *dst, size_t cap, const char *v)
{
    const char *lt = strchr(v, '<'), *gt = lt ? strchr(lt, '>') : NULL;

    if (lt && gt)
        snprintf(dst, cap, "%.*s", (int)(gt - lt - 1), lt + 1);
    else
        snprintf(dst, cap, "%s", v);
}

/* parse_original - the returned message's header section and the fields we want from it */
static void
parse_original(struct qmgr_report *r, struct span s)
{
    char value[QMGR_REPORT_FIELD_MAX + 1];
    struct span name, body = section_body(s);
    unsigned n = 0;

    r->orig_headers = s.p;
    r->orig_headers_len = (size_t)(body.p - s.p);
    while (n++ < FIELDS_MAX && next_field(&s, &name, value, sizeof value)) {
        if (name_is(&name, "To") && !r->orig_to[0])
            angle_addr(r->orig_to, sizeof r->orig_to, value);
        else if (name_is(&name, "From") && !r->orig_from[0])
            angle_addr(r->orig_from, sizeof r->orig_from, value);
        else if (name_is(&name, "Subject") && !r->orig_subject[0])
            set(r->orig_subject, sizeof r->orig_subject, value);
        else if (name_is(&name, "Message-ID") && !r->orig_message_id[0])
            set(r->orig_message_id, sizeof r->orig_message_id, value);
        else if (name_is(&name, "X-Job") && !r->x_job[0])
            set(r->x_job, sizeof r->x_job, value);
        else if (name_is(&name, "X-Virtual-MTA") && !r->x_virtual_mta[0])
            set(r->x_virtual_mta, sizeof r->x_virtual_mta, value);
        else if (name_is(&name, "X-EnvID") && !r->x_envid[0])
            set(r->x_envid, sizeof r->x_envid, value);
    }
}

/* --- the whole message ------------------------------------------------------------------ */

/* is_original - a part that returns the original message or its header section */
static int
is_original(const char *type)
{
    return strcmp(type, "message/rfc822") == 0 || strcmp(type, "text/rfc822-headers") == 0 ||
           strcmp(type, "message/global") == 0 || strcmp(type, "message/global-headers") == 0 ||
           strcmp(type, "message/rfc822-headers") == 0;
}

int
qmgr_report_parse(const char *data, size_t len, struct qmgr_report *out, char *why, size_t whylen)
{
    struct span msg = { data, len }, body, parts[QMGR_REPORT_PARTS_MAX];
    struct section top, sec;
    size_t nparts;
    int have_status = 0, rc;
    enum qmgr_report_kind kind;

    memset(out, 0, sizeof *out);
    why[0] = 0;
    read_section(&msg, &top);
    body = msg;
    if (strcmp(top.ct.type, "multipart/report") != 0)
        return 0; /* not a report */
    if (strcmp(top.ct.report_type, "delivery-status") == 0 ||
        strcmp(top.ct.report_type, "global-delivery-status") == 0)
        kind = QMGR_REPORT_DSN;
    else if (strcmp(top.ct.report_type, "feedback-report") == 0)
        kind = QMGR_REPORT_ARF;
    else
        return 0; /* another kind of report (disposition-notification, ...) */
    if (!top.ct.boundary[0]) {
        snprintf(why, whylen, "multipart/report without a boundary");
        return -EBADMSG;
    }
    nparts = split_parts(body, top.ct.boundary, parts, QMGR_REPORT_PARTS_MAX);
    for (size_t i = 0; i < nparts; i++) {
        struct span p = parts[i];
        int base64;
        char *tmp = NULL;

        read_section(&p, &sec); /* P is the part's body now */
        base64 = strcmp(sec.cte, "base64") == 0;
        if (kind == QMGR_REPORT_DSN && !have_status &&
            (strcmp(sec.ct.type, "message/delivery-status") == 0 ||
             strcmp(sec.ct.type, "message/global-delivery-status") == 0)) {
            rc = parse_delivery_status(out, base64 ? decode_base64(&tmp, p) : p, why, whylen);
            free(tmp);
            if (rc < 0)
                return rc;
            have_status = 1;
        } else if (kind == QMGR_REPORT_ARF && !have_status &&
                   strcmp(sec.ct.type, "message/feedback-report") == 0) {
            rc = parse_feedback_report(out, base64 ? decode_base64(&tmp, p) : p, why, whylen);
            free(tmp);
            if (rc < 0)
                return rc;
            have_status = 1;
        } else if (out->orig_headers == NULL && is_original(sec.ct.type)) {
            parse_original(out, base64 ? decode_base64(&out->decoded, p) : p);
        }
    }
    if (!have_status) {
        snprintf(why, whylen, "multipart/report without its %s part",
                 kind == QMGR_REPORT_DSN ? "message/delivery-status" : "message/feedback-report");
        return -EBADMSG;
    }
    out->kind = kind;
    return 0;
}

void
qmgr_report_free(struct qmgr_report *r)
{
    if (r == NULL)
        return;
    free(r->decoded);
    r->decoded = NULL;
    r->orig_headers = NULL;
}
