/*
 * cleanup_message.c - parse, rewrite and render one message's header section
 *
 * Owns: each struct cleanup_message it creates (the normalised header and
 * body bytes, the field table, the extracted X-* values). See
 * cleanup_message.h for the contract.
 *
 * SECURITY: the message is peer input. The header section is bounded (field
 * count, one field's size, the whole section) and checked *before* bytes are
 * copied, so a 1 MB header line or 10,000 fields costs a refusal, not memory.
 * Values handed to the caller are checked tokens; text we copy from the
 * SMTP session into Received is reduced to harmless printable ASCII.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <unistd.h>

#include "buf.h"
#include "msg.h"
#include "xalloc.h"

#include "cleanup_message.h"

#define IS_WSP(c) ((c) == ' ' || (c) == '\t')

/* One input line: LEN content bytes at P, EOL set when a terminator followed. */
struct line {
    const char *p;
    size_t len;
    int eol;
};

struct parser {
    const char *data;
    size_t len, pos;
    struct cleanup_limits lim;
    struct cleanup_message *msg;
    char *err;
    size_t errlen;
};

/* cleanup_opts_default - <source> defaults from the PowerMTA guide */
void
cleanup_opts_default(struct cleanup_opts *opts)
{
    memset(opts, 0, sizeof(*opts));
    opts->add_received = 1;
    opts->add_date = CLEANUP_DATE_NO;
}

/* next_line - take one line from P; a bare CR or LF ends it like CRLF does */
static int
next_line(struct parser *p, struct line *ln)
{
    const char *s = p->data + p->pos;
    size_t left = p->len - p->pos, i;

    if (left == 0)
        return 0;
    for (i = 0; i < left && s[i] != '\n' && s[i] != '\r'; i++)
        ;
    ln->p = s;
    ln->len = i;
    ln->eol = i < left;
    if (i < left && s[i] == '\r' && i + 1 < left && s[i + 1] == '\n')
        i++;
    p->pos += i + (ln->eol ? 1 : 0);
    return 1;
}

/* field_name_len - length of a valid field name before ':' (WSP allowed), or 0 */
static size_t
field_name_len(const struct line *ln)
{
    size_t i, end;

    for (i = 0; i < ln->len; i++) {
        unsigned char c = (unsigned char)ln->p[i];

        if (c == ':' || IS_WSP(c) || c < 33 || c > 126)
            break;
    }
    end = i;
    /* RFC 5322 obsolete syntax allows whitespace before the colon. */
    while (i < ln->len && IS_WSP(ln->p[i]))
        i++;
    if (end == 0 || i >= ln->len || ln->p[i] != ':')
        return 0;
    return end;
}

/* refuse - "WHAT LIMIT UNIT" as the error ("more than 100 header fields") */
static int
refuse(struct parser *p, const char *what, size_t limit, const char *unit)
{
    snprintf(p->err, p->errlen, "%s %zu%s", what, limit, unit);
    return -E2BIG;
}

/* unfold - the value of raw field RAW: after the colon, CRLFs dropped, trimmed */
static char *
unfold(const char *raw, size_t len)
{
    const char *colon = memchr(raw, ':', len);
    const char *s = colon + 1, *end = raw + len;
    char *out = xmalloc(len + 1), *o = out;

    while (end > s && (end[-1] == '\n' || end[-1] == '\r' || IS_WSP(end[-1])))
        end--;
    while (s < end && IS_WSP(*s))
        s++;
    for (; s < end; s++)
        if (*s != '\r' && *s != '\n')
            *o++ = *s;
    *o = '\0';
    return out;
}

/* add_field_slot - a new entry in the field table for bytes at OFF in head */
static struct cleanup_header *
add_field_slot(struct cleanup_message *msg, size_t off, const char *name, size_t namelen)
{
    struct cleanup_header *h;

    if (msg->nhdrs == msg->hdrs_cap) {
        msg->hdrs_cap = msg->hdrs_cap ? msg->hdrs_cap * 2 : 32;
        msg->hdrs = xreallocarray(msg->hdrs, msg->hdrs_cap, sizeof(*msg->hdrs));
    }
    h = &msg->hdrs[msg->nhdrs++];
    memset(h, 0, sizeof(*h));
    h->name = xstrndup(name, namelen);
    h->raw_off = off;
    return h;
}

/* finish_field - compute the unfolded value once the field is complete */
static void
finish_field(struct cleanup_message *msg, struct cleanup_header *h)
{
    if (h && h->value == NULL)
        h->value = unfold(msg->head.data + h->raw_off, h->raw_len);
}

/* append_line - copy one normalised line (content + CRLF) into B */
static void
append_line(struct buf *b, const struct line *ln)
{
    if (buf_append(b, ln->p, ln->len) < 0 || buf_append(b, "\r\n", 2) < 0)
        msg_fatal("cleanup: buffer overflow copying a message line");
}

static int
has_8bit(const char *s, size_t n)
{
    size_t i;

    for (i = 0; i < n; i++)
        if ((unsigned char)s[i] >= 0x80)
            return 1;
    return 0;
}

/*
 * parse_header_line - take LN into the field table. Returns 1 when LN
 * belongs to the header section, 0 when it starts the body, <0 on refusal.
 */
static int
parse_header_line(struct parser *p, const struct line *ln, struct cleanup_header **cur)
{
    struct cleanup_message *msg = p->msg;
    size_t namelen;

    /* A NUL has no place in a field (RFC 5322 2.2), and values are handed on as C
       strings: OpenDKIM would read past a field it was given with one inside. */
    if (memchr(ln->p, '\0', ln->len) != NULL &&
        ((IS_WSP(ln->p[0]) && *cur) || field_name_len(ln))) {
        snprintf(p->err, p->errlen, "NUL character in a header field");
        return -EILSEQ;
    }
    if (ln->len > 0 && IS_WSP(ln->p[0]) && *cur) {
        if ((*cur)->raw_len + ln->len + 2 > p->lim.max_field_bytes)
            return refuse(p, "header field longer than", p->lim.max_field_bytes, " bytes");
        if (ln->len + 2 > p->lim.max_section_bytes - msg->head.len)
            return refuse(p, "header section longer than", p->lim.max_section_bytes, " bytes");
        append_line(&msg->head, ln);
        (*cur)->raw_len += ln->len + 2;
        return 1;
    }
    if ((namelen = field_name_len(ln)) == 0)
        return 0;
    if (msg->nhdrs >= p->lim.max_headers)
        return refuse(p, "more than", p->lim.max_headers, " header fields");
    if (ln->len + 2 > p->lim.max_field_bytes)
        return refuse(p, "header field longer than", p->lim.max_field_bytes, " bytes");
    /* head.len never passes the limit: every append below is checked here first. */
    if (ln->len + 2 > p->lim.max_section_bytes - msg->head.len)
        return refuse(p, "header section longer than", p->lim.max_section_bytes, " bytes");
    finish_field(msg, *cur);
    *cur = add_field_slot(msg, msg->head.len, ln->p, namelen);
    append_line(&msg->head, ln);
    (*cur)->raw_len = ln->len + 2;
    return 1;
}

/* parse_headers - the header section; leaves p->pos at the body's first byte */
static int
parse_headers(struct parser *p)
{
    struct cleanup_header *cur = NULL;
    struct line ln;
    size_t line_start;
    int r;

    for (;;) {
        line_start = p->pos;
        if (!next_line(p, &ln))
            break;
        if (ln.len == 0) /* the empty separator line */
            break;
        if ((r = parse_header_line(p, &ln, &cur)) < 0)
            return r;
        if (r == 0) { /* not a field: the body starts here */
            p->pos = line_start;
            break;
        }
    }
    finish_field(p->msg, cur);
    p->msg->head_8bit = has_8bit(p->msg->head.data, p->msg->head.len);
    return 0;
}

/* parse_body - the rest, every line ending normalised to CRLF */
static void
parse_body(struct parser *p)
{
    struct cleanup_message *msg = p->msg;
    struct line ln;

    if (buf_reserve(&msg->body, p->len - p->pos + 64) < 0)
        msg_fatal("cleanup: message body too large");
    while (next_line(p, &ln))
        append_line(&msg->body, &ln); /* a last line without EOL gets one too */
    msg->body_8bit = has_8bit(msg->body.data, msg->body.len);
    msg->body_nul = msg->body.len && memchr(msg->body.data, '\0', msg->body.len) != NULL;
}

static void
limits_or_defaults(struct cleanup_limits *out, const struct cleanup_limits *in)
{
    out->max_headers = in && in->max_headers ? in->max_headers : CLEANUP_DEF_MAX_HEADERS;
    out->max_field_bytes = in && in->max_field_bytes ? in->max_field_bytes
                                                     : CLEANUP_DEF_MAX_FIELD_BYTES;
    out->max_section_bytes = in && in->max_section_bytes ? in->max_section_bytes
                                                         : CLEANUP_DEF_MAX_SECTION_BYTES;
}

static struct cleanup_message *
message_new(void)
{
    struct cleanup_message *msg = xcalloc(1, sizeof(*msg));

    buf_init(&msg->head, 0);
    buf_init(&msg->body, 0);
    buf_init(&msg->prepend, 0);
    msg->received_qid_off = SIZE_MAX;
    msg->qid_offset = SIZE_MAX;
    return msg;
}

/* cleanup_message_parse - see cleanup_message.h */
int
cleanup_message_parse(const char *data, size_t len, const struct cleanup_limits *limits,
                      struct cleanup_message **msgp, char *err, size_t errlen)
{
    struct parser p;
    int r;

    *msgp = NULL;
    if (data == NULL && len > 0) {
        snprintf(err, errlen, "no message data");
        return -EINVAL;
    }
    memset(&p, 0, sizeof(p));
    p.data = data;
    p.len = len;
    p.err = err;
    p.errlen = errlen;
    limits_or_defaults(&p.lim, limits);
    p.msg = message_new();
    if ((r = parse_headers(&p)) < 0) {
        cleanup_message_free(p.msg);
        return r;
    }
    parse_body(&p);
    *msgp = p.msg;
    return 0;
}

/* cleanup_message_free - see cleanup_message.h */
void
cleanup_message_free(struct cleanup_message *msg)
{
    size_t i;

    if (msg == NULL)
        return;
    for (i = 0; i < msg->nhdrs; i++) {
        free(msg->hdrs[i].name);
        free(msg->hdrs[i].value);
    }
    free(msg->hdrs);
    buf_free(&msg->head);
    buf_free(&msg->body);
    buf_free(&msg->prepend);
    free(msg->virtual_mta);
    free(msg->job_id);
    free(msg->envid);
    free(msg);
}

/* cleanup_message_find - see cleanup_message.h */
const struct cleanup_header *
cleanup_message_find(const struct cleanup_message *msg, const char *name)
{
    size_t i;

    for (i = 0; i < msg->nhdrs; i++)
        if (!msg->hdrs[i].deleted && strcasecmp(msg->hdrs[i].name, name) == 0)
            return &msg->hdrs[i];
    return NULL;
}

/* cleanup_message_field - see cleanup_message.h */
const char *
cleanup_message_field(const struct cleanup_message *msg, const struct cleanup_header *h,
                      size_t *lenp)
{
    *lenp = h->raw_len - 2; /* every stored field ends in CRLF */
    return msg->head.data + h->raw_off;
}

/* cleanup_token_ok - see cleanup_message.h */
int
cleanup_token_ok(const char *s, size_t maxlen)
{
    size_t i;

    for (i = 0; s[i]; i++) {
        unsigned char c = (unsigned char)s[i];

        if (c <= 0x20 || c >= 0x7f || i >= maxlen)
            return 0;
    }
    return i > 0;
}

/* --- adding fields ------------------------------------------------------ */

/* add_field - append "NAME: VALUE" as a new field at the end of the section */
static void
add_field(struct cleanup_message *msg, const char *name, const char *value)
{
    struct cleanup_header *h;
    size_t off = msg->head.len;

    if (buf_printf(&msg->head, "%s: %s\r\n", name, value) < 0)
        msg_fatal("cleanup: cannot add %s header", name);
    h = add_field_slot(msg, off, name, strlen(name));
    h->raw_len = msg->head.len - off;
    h->value = xstrdup(value);
}

/* cleanup_format_date - see cleanup_message.h; no locale: RFC 5322 is English */
void
cleanup_format_date(char *out, size_t outsize, time_t when)
{
    static const char days[7][4] = { "Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat" };
    static const char months[12][4] = { "Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                        "Jul", "Aug", "Sep", "Oct", "Nov", "Dec" };
    struct tm tm;
    long off, absoff;

    localtime_r(&when, &tm);
    off = tm.tm_gmtoff / 60;
    absoff = off < 0 ? -off : off;
    snprintf(out, outsize, "%s, %d %s %d %02d:%02d:%02d %c%02ld%02ld", days[tm.tm_wday % 7],
             tm.tm_mday, months[tm.tm_mon % 12], tm.tm_year + 1900, tm.tm_hour, tm.tm_min,
             tm.tm_sec, off < 0 ? '-' : '+', absoff / 60, absoff % 60);
}

/* delete_fields - mark every live field named NAME deleted */
static void
delete_fields(struct cleanup_message *msg, const char *name)
{
    size_t i;

    for (i = 0; i < msg->nhdrs; i++)
        if (strcasecmp(msg->hdrs[i].name, name) == 0)
            msg->hdrs[i].deleted = 1;
}

static void
apply_date(struct cleanup_message *msg, enum cleanup_date_mode mode, time_t now)
{
    char date[64];

    if (mode == CLEANUP_DATE_NO)
        return;
    if (mode == CLEANUP_DATE_OVERRIDE)
        delete_fields(msg, "Date");
    else if (cleanup_message_find(msg, "Date"))
        return;
    cleanup_format_date(date, sizeof(date), now);
    add_field(msg, "Date", date);
}

static uint64_t
random_u64(void)
{
    uint64_t r;

    /* Uniqueness, not secrecy, is what matters; fall back to time and pid. */
    if (getrandom(&r, sizeof(r), GRND_NONBLOCK) != (ssize_t)sizeof(r))
        r = ((uint64_t)time(NULL) << 20) ^ (uint64_t)getpid() ^ (uint64_t)(uintptr_t)&r;
    return r;
}

static void
apply_message_id(struct cleanup_message *msg, const struct cleanup_client *client, time_t now)
{
    char id[320];
    struct tm tm;
    const char *host = client && client->host_name ? client->host_name : "localhost";

    if (cleanup_message_find(msg, "Message-ID"))
        return;
    gmtime_r(&now, &tm);
    snprintf(id, sizeof(id), "<%04d%02d%02d%02d%02d%02d.%016llx@%.255s>", tm.tm_year + 1900,
             tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
             (unsigned long long)random_u64(), host);
    add_field(msg, "Message-ID", id);
}

/*
 * take_token - value of the first field NAME into *OUT when it is a valid
 * token (MAXLEN bytes at most); set *BAD otherwise. EMPTY_OK lets an empty
 * value through (X-Virtual-MTA: "" means {default} to allow-empty-...).
 */
static void
take_token(struct cleanup_message *msg, const char *name, size_t maxlen, int empty_ok, char **out,
           int *bad)
{
    const struct cleanup_header *h = cleanup_message_find(msg, name);

    if (h == NULL)
        return;
    if (cleanup_token_ok(h->value, maxlen) || (empty_ok && h->value[0] == '\0'))
        *out = xstrdup(h->value);
    else
        *bad = 1;
}

static void
apply_submission_headers(struct cleanup_message *msg, const struct cleanup_opts *opts)
{
    const char *jobhdr = opts->jobid_header ? opts->jobid_header : "X-Job";

    if (opts->process_x_virtual_mta) {
        take_token(msg, "X-Virtual-MTA", 255, 1, &msg->virtual_mta, &msg->bad_virtual_mta);
        if (!opts->retain_x_virtual_mta)
            delete_fields(msg, "X-Virtual-MTA");
    }
    if (opts->process_x_job) {
        take_token(msg, jobhdr, 255, 0, &msg->job_id, &msg->bad_job_id);
        /* Only X-Job itself is ours to strip; jobid-header may name Message-ID. */
        if (!opts->retain_x_job)
            delete_fields(msg, "X-Job");
    }
    if (opts->process_x_envid) {
        /* RFC 3461 caps ENVID at 100 characters. */
        take_token(msg, "X-EnvID", 100, 0, &msg->envid, &msg->bad_envid);
        if (!opts->retain_x_envid)
            delete_fields(msg, "X-EnvID");
    }
}

/*
 * put_text - append S limited to printable ASCII that cannot close a comment
 * or end the field; SPACE_OK keeps blanks (our own text, such as the TLS
 * description), otherwise they go too (peer tokens: HELO, user, address).
 */
static void
put_text(struct buf *b, const char *s, int space_ok)
{
    size_t i;

    for (i = 0; s[i] && i < 255; i++) {
        unsigned char c = (unsigned char)s[i];

        if ((c == ' ' && !space_ok) || c < 0x20 || c >= 0x7f || strchr("()<>;\\\"", c))
            c = '?';
        buf_append(b, &c, 1);
    }
}

static void
put_clean(struct buf *b, const char *s)
{
    put_text(b, s, 0);
}

/* received_from - "from HELO (RDNS [ADDR])" and the TLS/auth comment lines; a
   local submission has no from part (its user is named after "by") */
static void
received_from(struct buf *b, const struct cleanup_client *c, int hide)
{
    if (!hide && !c->local_submitter && (c->helo || c->addr)) {
        buf_append_str(b, "from ");
        put_clean(b, c->helo ? c->helo : (c->rdns ? c->rdns : "unknown"));
        buf_append_str(b, " (");
        put_clean(b, c->rdns ? c->rdns : "unknown");
        if (c->addr) {
            buf_append_str(b, " [");
            put_clean(b, c->addr);
            buf_append_str(b, "]");
        }
        buf_append_str(b, ")\r\n\t");
    }
    if (c->tls) {
        buf_append_str(b, "(using ");
        put_text(b, c->tls, 1);
        buf_append_str(b, ")\r\n\t");
    }
    if (!hide && c->auth_user) {
        buf_append_str(b, "(Authenticated sender: ");
        put_clean(b, c->auth_user);
        buf_append_str(b, ")\r\n\t");
    }
}

/* build_received - the whole Received field; records where the queue id is */
static void
build_received(struct cleanup_message *msg, const struct cleanup_client *c, int hide, time_t now,
               struct buf *b)
{
    char date[64];
    size_t qid_at;

    buf_append_str(b, "Received: ");
    received_from(b, c, hide);
    buf_append_str(b, "by ");
    put_clean(b, c->host_name ? c->host_name : "localhost");
    if (!hide && c->local_submitter) { /* as Postfix: "(Postfix, from userid 1000)" */
        buf_printf(b, " (openpmta, from userid %lu", c->submit_uid);
        if (c->submit_user && *c->submit_user) {
            buf_append_str(b, " (");
            put_clean(b, c->submit_user);
            buf_append_str(b, ")");
        }
        buf_append_str(b, ")\r\n\twith ");
    } else {
        buf_append_str(b, " (openpmta) with ");
    }
    put_clean(b, c->protocol ? c->protocol : "ESMTP");
    buf_append_str(b, " id ");
    qid_at = b->len;
    put_clean(b, c->queue_id ? c->queue_id : CLEANUP_QID_PLACEHOLDER);
    if (c->rcpt) {
        buf_append_str(b, "\r\n\tfor <");
        put_clean(b, c->rcpt);
        buf_append_str(b, ">");
    }
    cleanup_format_date(date, sizeof(date), now);
    buf_printf(b, "; %s\r\n", date);
    msg->received_qid_off = c->queue_id ? SIZE_MAX : qid_at;
}

/* cleanup_message_prepend - see cleanup_message.h */
void
cleanup_message_prepend(struct cleanup_message *msg, const char *field)
{
    struct buf nb;
    size_t flen = strlen(field), added;
    int need_crlf = flen < 2 || strcmp(field + flen - 2, "\r\n") != 0;

    buf_init(&nb, 0);
    buf_append(&nb, field, flen);
    if (need_crlf)
        buf_append(&nb, "\r\n", 2);
    added = nb.len;
    if (msg->prepend.len)
        buf_append(&nb, msg->prepend.data, msg->prepend.len);
    buf_free(&msg->prepend);
    msg->prepend = nb;
    if (msg->received_qid_off != SIZE_MAX)
        msg->received_qid_off += added;
}

/* cleanup_message_apply - see cleanup_message.h */
void
cleanup_message_apply(struct cleanup_message *msg, const struct cleanup_opts *opts,
                      const struct cleanup_client *client, time_t now)
{
    static const struct cleanup_client nobody;
    struct buf rcvd;
    size_t qid;

    if (client == NULL)
        client = &nobody;
    apply_submission_headers(msg, opts);
    if (opts->add_message_id)
        apply_message_id(msg, client, now);
    apply_date(msg, opts->add_date, now);
    if (opts->add_received) {
        buf_init(&rcvd, 0);
        build_received(msg, client, opts->hide_source, now, &rcvd);
        qid = msg->received_qid_off;

        msg->received_qid_off = SIZE_MAX;
        cleanup_message_prepend(msg, rcvd.data);
        if (qid != SIZE_MAX) /* Received is on top now: its offset is absolute */
            msg->received_qid_off = qid;
        buf_free(&rcvd);
    }
}

/* --- output ------------------------------------------------------------- */

/* cleanup_message_walk - see cleanup_message.h */
int
cleanup_message_walk(const struct cleanup_message *msg, cleanup_field_fn fn, void *ctx)
{
    size_t i, len;
    const char *p;
    int r;

    for (i = 0; i < msg->nhdrs; i++) {
        if (msg->hdrs[i].deleted)
            continue;
        p = cleanup_message_field(msg, &msg->hdrs[i], &len);
        if ((r = fn(ctx, p, len)) != 0)
            return r;
    }
    return fn(ctx, NULL, 0);
}

/* cleanup_message_render - see cleanup_message.h */
int
cleanup_message_render(struct cleanup_message *msg, struct buf *out)
{
    size_t start = out->len, i;
    int r = 0;

    msg->qid_offset = SIZE_MAX;
    if (msg->prepend.len)
        r = buf_append(out, msg->prepend.data, msg->prepend.len);
    for (i = 0; r == 0 && i < msg->nhdrs; i++)
        if (!msg->hdrs[i].deleted)
            r = buf_append(out, msg->head.data + msg->hdrs[i].raw_off, msg->hdrs[i].raw_len);
    if (r == 0)
        r = buf_append(out, "\r\n", 2);
    if (r == 0 && msg->body.len)
        r = buf_append(out, msg->body.data, msg->body.len);
    if (r == 0 && msg->received_qid_off != SIZE_MAX)
        msg->qid_offset = start + msg->received_qid_off;
    return r;
}
