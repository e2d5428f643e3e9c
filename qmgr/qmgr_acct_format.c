/*
 * qmgr_acct_format.c - the accounting record format: the field table, what
 * an <acct-file> block selects (records, record-fields, headers, rotation
 * settings), and one record turned into one CSV line
 *
 * Owns: acct_fields[] (the column order of every file) and the column
 * tables and header line of each struct acct_file.
 *
 * SECURITY: values are peer-controlled (reply texts, addresses, headers);
 * append_value() is the single place that turns a value into CSV and it
 * cannot emit CR, LF, NUL, invalid UTF-8 or an unquoted comma or quote.
 */
#include <stddef.h>
#include <time.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "fdio.h"
#include "msg.h"
#include "xalloc.h"

#include "qmgr_acct_int.h"

#define STR(name, member, types)                                       \
    {                                                                  \
        name, FK_STR, offsetof(struct qmgr_acct_record, member), types \
    }

/* Table order is the column order (see qmgr_acct.h); userString must stay last. */
const struct field_def acct_fields[] = {
    { "timeLogged", FK_TIME_LOGGED, 0, T_ALL },
    { "timeQueued", FK_TIME_QUEUED, 0, T_DBT },
    STR("orig", orig, T_DBT | T_R | T_REP),
    STR("rcpt", rcpt, T_DBT | T_R | T_REP),
    STR("orcpt", orcpt, T_DBT | T_R | T_RBS),
    STR("dsnAction", dsn_action, T_DBT | T_RBS),
    STR("dsnStatus", dsn_status, T_DBT | T_TQ | T_RBS),
    STR("dsnDiag", dsn_diag, T_DBT | T_TQ | T_RBS),
    STR("dsnMta", dsn_mta, T_DBT | T_TQ | T_RBS),
    STR("bounceCat", bounce_cat, T_DBT | T_RBS),
    STR("srcType", src_type, T_DBT | T_R | T_RBS),
    STR("srcMta", src_mta, T_DBT | T_R | T_REP),
    STR("dlvType", dlv_type, T_DBT | T_TQ),
    STR("dlvSourceIp", dlv_source_ip, T_DBT | T_TQ | T_F),
    STR("dlvDestinationIp", dlv_destination_ip, T_DBT | T_TQ),
    STR("dlvEsmtpAvailable", dlv_esmtp_available, T_DBT),
    { "dlvSize", FK_SIZE, 0, T_DBT },
    STR("vmta", vmta, T_ALL),
    STR("jobId", job_id, T_DBT | T_R | T_REP),
    STR("envId", env_id, T_DBT | T_R | T_REP),
    STR("queue", queue, T_DBT | T_TQ),
    STR("vmtaPool", vmta_pool, T_DBT | T_R),
    { "totalSecondsQueued", FK_TOTAL_SECONDS, 0, T_DBT },
    { "timeFirstAttempt", FK_TIME_FIRST_ATTEMPT, 0, T_DBT },
    STR("dlvTlsProtocol", dlv_tls_protocol, T_DBT),
    STR("dlvTlsCipher", dlv_tls_cipher, T_DBT),
    STR("rcvSourceIp", rcv_source_ip, T_R),
    STR("rcvDestinationIp", rcv_destination_ip, T_R),
    STR("rcvSmtpUser", rcv_smtp_user, T_DBT | T_R),
    STR("dsnReportingMta", dsn_reporting_mta, T_RBS),
    STR("format", format, T_REP),
    STR("repSourceIp", rep_source_ip, T_F),
    STR("feedbackType", feedback_type, T_F),
    STR("userAgent", user_agent, T_F),
    STR("reportingMta", reporting_mta, T_F),
    STR("reportedDomain", reported_domain, T_F),
    { "userString", FK_USER_STRING, 0, T_ALL },
};

_Static_assert(sizeof acct_fields / sizeof acct_fields[0] == ACCT_NFIELDS,
               "ACCT_NFIELDS is the length of acct_fields");

const char *const acct_type_names[QMGR_ACCT_NTYPES] = { "d", "b", "t", "tq", "r", "f", "rb", "rs" };
const char *const acct_type_long_names[QMGR_ACCT_NTYPES] = {
    "delivery", "bounce",        "transient",     "transient-queue",
    "receipt",  "feedback-loop", "remote-bounce", "remote-status",
};

/* --- configuration ----------------------------------------------------------------------- */

/* scope_value - D in acct-file scope S, else its built-in default (NULL if none) */
static const struct cfg_value *
scope_value(const struct cfg *c, uint32_t s, enum cfg_directive d)
{
    const struct cfg_value *v = cfg_scope_get(c, s, d);

    if (v && !(v->flags & CFG_VALUE_CLEAR))
        return v;
    return cfg_global(c, d);
}

static int64_t
scope_num(const struct cfg *c, uint32_t s, enum cfg_directive d, int64_t dflt)
{
    const struct cfg_value *v = scope_value(c, s, d);

    return v ? v->num : dflt;
}

static const char *
scope_text(const struct cfg *c, uint32_t s, enum cfg_directive d)
{
    const struct cfg_value *v = scope_value(c, s, d);

    return v ? cfg_str(c, v->text) : NULL;
}

/* type_by_name - "d" or "delivery" -> type, or -1 */
static int
type_by_name(const char *name)
{
    for (int t = 0; t < QMGR_ACCT_NTYPES; t++)
        if (strcasecmp(name, acct_type_names[t]) == 0 ||
            strcasecmp(name, acct_type_long_names[t]) == 0)
            return t;
    return -1;
}

static int
field_by_name(const char *name)
{
    for (size_t i = 0; i < ACCT_NFIELDS; i++)
        if (strcasecmp(name, acct_fields[i].name) == 0)
            return (int)i;
    return -1;
}

/* parse_records - "d,b" / "delivery, bounce" -> type mask; types we do not write are warned about
 */
static unsigned
parse_records(const char *path, const char *text)
{
    char *copy = xstrdup(text ? text : "d,b"), *save = NULL;
    unsigned mask = 0;

    for (char *w = strtok_r(copy, ", \t", &save); w; w = strtok_r(NULL, ", \t", &save)) {
        int t = type_by_name(w);
        if (t >= 0)
            mask |= TB(t);
        else
            msg_warn("acct-file %s: record type '%s' is not written (not implemented)", path, w);
    }
    free(copy);
    return mask;
}

static int
header_index(struct acct_file *f, const char *name)
{
    for (size_t i = 0; i < f->nheaders; i++)
        if (strcasecmp(f->headers[i], name) == 0)
            return (int)i;
    if (f->nheaders == MAX_HEADERS) {
        msg_warn("acct-file %s: more than %d header_ fields; '%s' ignored", f->path, MAX_HEADERS,
                 name);
        return -1;
    }
    f->headers[f->nheaders] = xstrdup(name);
    return (int)f->nheaders++;
}

static void
select_default_fields(struct acct_file *f, int t)
{
    for (size_t i = 0; i < ACCT_NFIELDS; i++)
        f->field_on[t][i] = (acct_fields[i].types & TB(t)) != 0;
}

/* apply_field_word - one item of a record-fields list for type T */
static void
apply_field_word(struct acct_file *f, int t, const char *w)
{
    bool off = *w == '!';
    const char *name = off ? w + 1 : w;
    int i;

    if (strcmp(name, "*") == 0) {
        select_default_fields(f, t);
    } else if (strncasecmp(name, "header_", 7) == 0 && name[7]) {
        if (!(TB(t) & T_MSG))
            msg_warn("acct-file %s: %s records have no message headers; '%s' ignored", f->path,
                     acct_type_names[t], w);
        else if ((i = header_index(f, name + 7)) >= 0)
            f->header_on[t][i] = !off;
    } else if ((i = field_by_name(name)) >= 0) {
        f->field_on[t][i] = !off;
    } else {
        msg_warn("acct-file %s: unknown accounting field '%s' ignored", f->path, name);
    }
}

/* apply_record_fields - "TYPE LIST"; a list that only removes ("!x,!y") starts from "*" */
static void
apply_record_fields(struct acct_file *f, const char *text)
{
    char *copy = xstrdup(text), *save = NULL, *type = strtok_r(copy, " \t", &save);
    char *words[ACCT_NFIELDS + MAX_HEADERS + 8];
    size_t nwords = 0;
    bool only_removes = true;
    int t = type ? type_by_name(type) : -1;

    if (t < 0) {
        msg_warn("acct-file %s: record-fields '%s': unknown record type", f->path, text);
        goto out;
    }
    for (char *w = strtok_r(NULL, ", \t", &save); w && nwords < sizeof words / sizeof words[0];
         w = strtok_r(NULL, ", \t", &save)) {
        words[nwords++] = w;
        only_removes = only_removes && *w == '!';
    }
    if (!only_removes)
        memset(f->field_on[t], 0, sizeof f->field_on[t]);
    for (size_t i = 0; i < nwords; i++)
        apply_field_word(f, t, words[i]);
out:
    free(copy);
}

/* build_columns - the union of the enabled types' fields, in table order, headers before userString
 */
static void
build_columns(struct acct_file *f)
{
    struct buf line = BUF_INIT;

    f->columns = xcalloc(ACCT_NFIELDS + MAX_HEADERS, sizeof *f->columns);
    buf_append_str(&line, "type");
    for (size_t i = 0; i <= ACCT_NFIELDS; i++) {
        if (i == ACCT_USER_STRING_FIELD) { /* header_X columns go just before userString */
            for (size_t h = 0; h < f->nheaders; h++) {
                bool used = false;
                for (int t = 0; t < QMGR_ACCT_NTYPES; t++)
                    used = used || ((f->types & TB(t)) && f->header_on[t][h]);
                if (!used)
                    continue;
                f->columns[f->ncolumns++] = (struct column){ -1, (int)h };
                buf_printf(&line, ",header_%s", f->headers[h]);
            }
        }
        if (i == ACCT_NFIELDS)
            break;
        bool used = false;
        for (int t = 0; t < QMGR_ACCT_NTYPES; t++)
            used = used || ((f->types & TB(t)) && f->field_on[t][i]);
        if (!used)
            continue;
        f->columns[f->ncolumns++] = (struct column){ (int)i, -1 };
        buf_printf(&line, ",%s", acct_fields[i].name);
    }
    buf_append_str(&line, "\r\n");
    f->header_line = buf_detach(&line, NULL);
    if (f->json) /* one object per line, each naming its fields: no header line */
        f->header_line[0] = '\0';
}

/* split_path - own directory, stem and extension of PATH */
static void
split_path(struct acct_file *f)
{
    const char *slash = strrchr(f->path, '/'), *base = slash ? slash + 1 : f->path;
    const char *dot = strrchr(base, '.');

    f->own_dir = slash ? xstrndup(f->path, slash == f->path ? 1 : (size_t)(slash - f->path))
                       : xstrdup(".");
    if (!dot || dot == base)
        dot = base + strlen(base);
    f->stem = xstrndup(base, (size_t)(dot - base));
    f->ext = xstrdup(dot);
}

/* quote_literal - append S to B as a PCRE2 literal (\Q...\E, with any "\E" inside escaped) */
static void
quote_literal(struct buf *b, const char *s)
{
    buf_append_str(b, "\\Q");
    for (; *s; s++) {
        if (s[0] == '\\' && s[1] == 'E') {
            buf_append_str(b, "\\E\\\\E\\Q");
            s++;
        } else {
            buf_append(b, s, 1);
        }
    }
    buf_append_str(b, "\\E");
}

static void
compile_rotated_re(struct acct_file *f)
{
    struct buf re = BUF_INIT;
    int code;
    PCRE2_SIZE off;

    buf_append_str(&re, "^");
    quote_literal(&re, f->stem);
    buf_append_str(&re, "-\\d{4}-\\d{2}-\\d{2}-\\d{4}(-\\d+)?");
    quote_literal(&re, f->ext);
    buf_append_str(&re, "$");
    f->rotated_re = pcre2_compile((PCRE2_SPTR)re.data, re.len, 0, &code, &off, NULL);
    if (!f->rotated_re)
        msg_panic("acct-file %s: rotated-name pattern does not compile", f->path);
    buf_free(&re);
}

/* split_command - the blank-separated words of CMD as a NULL-terminated argv (no shell) */
static char **
split_command(const char *cmd)
{
    char **argv = xcalloc(1, sizeof *argv);
    size_t n = 0, len;

    for (cmd += strspn(cmd, " \t"); *cmd; cmd += len + strspn(cmd + len, " \t")) {
        len = strcspn(cmd, " \t");
        argv = xreallocarray(argv, n + 2, sizeof *argv);
        argv[n++] = xstrndup(cmd, len);
        argv[n] = NULL;
    }
    return argv;
}

void
acct_load_file_config(struct acct_file *f, const struct cfg *c, uint32_t s)
{
    const char *move_to = scope_text(c, s, CFG_D_MOVE_TO),
               *us = scope_text(c, s, CFG_D_USER_STRING);
    uint32_t it = 0;
    const struct cfg_value *v;

    f->move_to = move_to && *move_to ? xstrdup(move_to) : NULL;
    f->user_string = us ? xstrdup(us) : NULL;
    f->max_size = scope_num(c, s, CFG_D_MAX_SIZE, 250 << 20);
    f->move_interval = scope_num(c, s, CFG_D_MOVE_INTERVAL, 86400);
    f->delete_after = scope_num(c, s, CFG_D_DELETE_AFTER, 8 * 86400);
    f->iso_times = scope_num(c, s, CFG_D_ISO_TIMES, 1) != 0;
    f->sync = scope_num(c, s, CFG_D_SYNC, 0) != 0;
    f->world_readable = scope_num(c, s, CFG_D_WORLD_READABLE, 0) != 0;
    f->types = parse_records(f->path, scope_text(c, s, CFG_D_RECORDS));
    f->is_webhook = c->scopes[s].kind == CFG_S_ACCT_WEBHOOK;
    f->json = f->is_webhook || scope_num(c, s, CFG_D_ACCT_FORMAT, 0) == 1;
    for (int t = 0; t < QMGR_ACCT_NTYPES; t++)
        select_default_fields(f, t);
    while ((v = cfg_scope_next(c, s, CFG_D_RECORD_FIELDS, &it)) != NULL)
        apply_record_fields(f, cfg_str(c, v->text));
    build_columns(f);
    f->is_pipe = f->path[0] == '|';
    if (f->is_webhook) { /* the backlog file is named by qmgr (acct_webhook_open) */
        free(f->move_to);
        f->move_to = NULL;
        f->retry_interval = scope_num(c, s, CFG_D_RETRY_INTERVAL, 300);
        f->write_timeout = scope_num(c, s, CFG_D_WRITE_TIMEOUT, 60);
        f->backlog_max = scope_num(c, s, CFG_D_BACKLOG_MAX_SIZE, 64 << 20);
        f->batch_records = scope_num(c, s, CFG_D_MAX_BATCH_RECORDS, 100);
        return;
    }
    if (f->is_pipe) { /* a pipe has no rotation: move-to & co. do not apply */
        free(f->move_to);
        f->move_to = NULL;
        f->argv = split_command(f->path + 1);
        f->retry_interval = scope_num(c, s, CFG_D_RETRY_INTERVAL, 300);
        f->write_timeout = scope_num(c, s, CFG_D_WRITE_TIMEOUT, 60);
        return;
    }
    split_path(f);
    compile_rotated_re(f);
}

/* --- values ----------------------------------------------------------------------------- */

/* utf8_len - length of the valid UTF-8 sequence at P (N bytes left), 0 if invalid */
static size_t
utf8_len(const unsigned char *p, size_t n)
{
    size_t len;
    unsigned cp;

    if (p[0] < 0x80)
        return 1;
    if (p[0] >= 0xc2 && p[0] <= 0xdf)
        len = 2, cp = p[0] & 0x1f;
    else if (p[0] >= 0xe0 && p[0] <= 0xef)
        len = 3, cp = p[0] & 0x0f;
    else if (p[0] >= 0xf0 && p[0] <= 0xf4)
        len = 4, cp = p[0] & 0x07;
    else
        return 0;
    if (len > n)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((p[i] & 0xc0) != 0x80)
            return 0;
        cp = (cp << 6) | (p[i] & 0x3f);
    }
    if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
        (cp >= 0xd800 && cp <= 0xdfff))
        return 0; /* overlong, out of range, or a surrogate */
    return len;
}

/*
 * append_value - VALUE (LEN bytes) as one field: control bytes become a
 * space (a run of them one space), invalid UTF-8 '?', at most
 * QMGR_ACCT_VALUE_MAX bytes; with CSV quoted when it holds ',' or '"'
 * (quotes doubled), else as it is (JSON: jansson escapes it)
 */
static void
append_value(struct buf *b, const char *value, size_t len, bool csv)
{
    const unsigned char *p = (const unsigned char *)value;
    struct buf clean = BUF_INIT;
    bool quote = false, last_ctl = false;

    if (len > QMGR_ACCT_VALUE_MAX)
        len = QMGR_ACCT_VALUE_MAX;
    for (size_t i = 0; i < len;) {
        size_t n = utf8_len(p + i, len - i);
        if (p[i] < 0x20 || p[i] == 0x7f) {
            if (!last_ctl)
                buf_append_str(&clean, " ");
            last_ctl = true;
            i++;
            continue;
        }
        last_ctl = false;
        if (n == 0) {
            buf_append_str(&clean, "?");
            i++;
            continue;
        }
        quote = csv && (quote || p[i] == ',' || p[i] == '"');
        buf_append(&clean, p + i, n);
        if (csv && p[i] == '"')
            buf_append_str(&clean, "\""); /* RFC 4180: a quote inside is doubled */
        i += n;
    }
    if (quote)
        buf_append_str(b, "\"");
    if (clean.len)
        buf_append(b, clean.data, clean.len);
    if (quote)
        buf_append_str(b, "\"");
    buf_free(&clean);
}

static void
append_str(struct buf *b, const char *s, bool csv)
{
    if (s)
        append_value(b, s, strlen(s), csv);
}

static void
append_time(const struct acct_file *f, struct buf *b, time_t t)
{
    struct tm tm;
    char text[40];

    if (!f->iso_times) {
        buf_printf(b, "%lld", (long long)t);
        return;
    }
    gmtime_r(&t, &tm);
    strftime(text, sizeof text, "%Y-%m-%d %H:%M:%S+0000", &tm);
    buf_append_str(b, text);
}

/*
 * header_value - append to OUT the value of the first field NAME in the raw
 * header section HDRS (LEN bytes), unfolded: each line break with the blanks
 * around it becomes one space. Returns false if there is no such field.
 */
static bool
header_value(const char *hdrs, size_t len, const char *name, struct buf *out)
{
    size_t nlen = strlen(name), i = 0;

    while (i < len && hdrs[i] != '\r' && hdrs[i] != '\n') {
        const char *line = hdrs + i, *eol = memchr(line, '\n', len - i);
        size_t end = eol ? (size_t)(eol - hdrs) + 1 : len;
        if (end - i > nlen && strncasecmp(line, name, nlen) == 0 && line[nlen] == ':') {
            bool blank = true; /* skips the blanks after the colon */
            for (size_t k = i + nlen + 1; k < len; k++) {
                char ch = hdrs[k];
                if (ch == '\n' && !(k + 1 < len && (hdrs[k + 1] == ' ' || hdrs[k + 1] == '\t')))
                    break; /* end of the field */
                if (ch == ' ' || ch == '\t' || ch == '\r' || ch == '\n') {
                    blank = blank || out->len == 0;
                    if (!blank) {
                        buf_append_str(out, " ");
                        blank = true;
                    }
                    continue;
                }
                buf_append(out, &ch, 1);
                blank = false;
            }
            while (out->len && out->data[out->len - 1] == ' ')
                out->data[--out->len] = 0;
            return true;
        }
        i = end;
    }
    return false;
}

static void
append_field(const struct acct_file *f, struct buf *b, const struct field_def *fd,
             const struct qmgr_acct_record *r, time_t logged, bool csv)
{
    switch (fd->kind) {
    case FK_STR:
        append_str(b, *(const char *const *)(const void *)((const char *)r + fd->off), csv);
        break;
    case FK_TIME_LOGGED:
        append_time(f, b, logged);
        break;
    case FK_TIME_QUEUED:
        if (r->time_queued)
            append_time(f, b, r->time_queued);
        break;
    case FK_TIME_FIRST_ATTEMPT:
        if (r->time_first_attempt)
            append_time(f, b, r->time_first_attempt);
        break;
    case FK_SIZE:
        if (r->dlv_size >= 0)
            buf_printf(b, "%lld", (long long)r->dlv_size);
        break;
    case FK_TOTAL_SECONDS:
        if (r->time_queued)
            buf_printf(b, "%lld",
                       (long long)(logged > r->time_queued ? logged - r->time_queued : 0));
        break;
    case FK_USER_STRING:
        append_str(b, f->user_string, csv);
        break;
    }
}

/* acct_field_text - see qmgr_acct_int.h */
void
acct_field_text(const struct acct_file *f, struct buf *b, int field,
                const struct qmgr_acct_record *r, time_t logged)
{
    append_field(f, b, &acct_fields[field], r, logged, false);
}

/* acct_header_text - see qmgr_acct_int.h */
void
acct_header_text(const struct acct_file *f, struct buf *b, int header,
                 const struct qmgr_acct_record *r, bool csv)
{
    struct buf v = BUF_INIT;

    if (r->headers && header_value(r->headers, r->headers_len, f->headers[header], &v) && v.len)
        append_value(b, v.data, v.len, csv);
    buf_free(&v);
}

/* acct_format_record - the CSV line of R for file F into B */
void
acct_format_record(const struct acct_file *f, struct buf *b, const struct qmgr_acct_record *r,
                   time_t logged)
{
    buf_append_str(b, acct_type_names[r->type]);
    for (size_t i = 0; i < f->ncolumns; i++) {
        const struct column *col = &f->columns[i];
        buf_append_str(b, ",");
        if (col->field >= 0) {
            if (f->field_on[r->type][col->field])
                append_field(f, b, &acct_fields[col->field], r, logged, true);
        } else if (f->header_on[r->type][col->header]) {
            acct_header_text(f, b, col->header, r, true);
        }
    }
    buf_append_str(b, "\r\n");
}
