/*
 * qmgr_acct.c - the accounting CSV writer (<acct-file>)
 *
 * At open, each <acct-file> block becomes a struct acct_file: which record
 * types it takes, which columns each type fills, its header line, and its
 * rotation settings. Records are formatted into a per-file memory buffer and
 * written out by flush (size, age, tick, close); rotation renames the file
 * into move-to and starts a new one with a header line. An <acct-file
 * |command> block is the same struct with is_pipe set: the "file" is the
 * non-blocking write end of a pipe to a program we start, it never rotates,
 * and a program that fails is stopped, reaped and started again after
 * retry-interval (the pipe section below). The file format and the rules are
 * described in qmgr_acct.h.
 *
 * Owns: the open descriptors (files and pipe write ends), the pending
 * buffers, the column tables, the compiled regex that recognises our rotated
 * files for delete-after, and the pipe programs' processes: every child is
 * reaped (by qmgr_acct_tick() or at close), never left a zombie.
 *
 * SECURITY: values are peer-controlled (reply texts, addresses, headers);
 * append_value() is the single place that turns a value into CSV and it
 * cannot emit CR, LF, NUL, invalid UTF-8 or an unquoted comma or quote.
 * delete-after only ever removes files whose whole name matches
 * NAME-YYYY-MM-DD-HHMM[-N].EXT in the rotation directory (a PCRE2 pattern
 * with the name quoted), never anything else there.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>
#include <sys/stat.h>
#include <sys/wait.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "buf.h"
#include "cfg.h"
#include "fdio.h"
#include "msg.h"
#include "xalloc.h"

#include "qmgr_acct.h"

#define FLUSH_BYTES    (64u * 1024)        /* write out once this much is pending */
#define FLUSH_SECONDS  1                   /* ... or once the oldest pending byte is this old */
#define PENDING_MAX    (16u * 1024 * 1024) /* drop (loudly) rather than grow without end */
#define MAX_HEADERS    32                  /* header_X columns per file */
#define NAME_CLASH_MAX 1000                /* -1 .. -999 suffixes tried on rotation */
#define RETRY_SECONDS  60                  /* after a failed rotation or reopen */
#define CLOSE_GRACE_MS 100                 /* at close: time for a pipe program to drain and exit */
#define CLOSE_TERM_MS  50                  /* ... and to exit after SIGTERM, before SIGKILL */

extern char **environ;

/* --- the field table --------------------------------------------------------------------- */

enum field_kind {
    FK_STR, /* const char * member of the record */
    FK_TIME_LOGGED,
    FK_TIME_QUEUED,
    FK_SIZE,
    FK_TOTAL_SECONDS,
    FK_USER_STRING /* from the acct-file's user-string directive */
};

#define TB(t) (1u << (t))
#define T_DBT (TB(QMGR_ACCT_D) | TB(QMGR_ACCT_B) | TB(QMGR_ACCT_T))
#define T_TQ  TB(QMGR_ACCT_TQ)
#define T_R   TB(QMGR_ACCT_R)
#define T_ALL (T_DBT | T_TQ | T_R)
#define T_MSG (T_DBT | T_R) /* types that concern a message (header_X) */

struct field_def {
    const char *name;
    enum field_kind kind;
    size_t off;     /* offsetof the member for FK_STR */
    unsigned types; /* types whose "*" includes it */
};

#define STR(name, member, types)                                       \
    {                                                                  \
        name, FK_STR, offsetof(struct qmgr_acct_record, member), types \
    }

/* Table order is the column order (see qmgr_acct.h); userString must stay last. */
static const struct field_def fields[] = {
    { "timeLogged", FK_TIME_LOGGED, 0, T_ALL },
    { "timeQueued", FK_TIME_QUEUED, 0, T_DBT },
    STR("orig", orig, T_DBT | T_R),
    STR("rcpt", rcpt, T_DBT | T_R),
    STR("orcpt", orcpt, T_DBT | T_R),
    STR("dsnAction", dsn_action, T_DBT),
    STR("dsnStatus", dsn_status, T_DBT | T_TQ),
    STR("dsnDiag", dsn_diag, T_DBT | T_TQ),
    STR("dsnMta", dsn_mta, T_DBT | T_TQ),
    STR("bounceCat", bounce_cat, T_DBT),
    STR("srcType", src_type, T_DBT | T_R),
    STR("srcMta", src_mta, T_DBT | T_R),
    STR("dlvType", dlv_type, T_DBT | T_TQ),
    STR("dlvSourceIp", dlv_source_ip, T_DBT | T_TQ),
    STR("dlvDestinationIp", dlv_destination_ip, T_DBT | T_TQ),
    STR("dlvEsmtpAvailable", dlv_esmtp_available, T_DBT),
    { "dlvSize", FK_SIZE, 0, T_DBT },
    STR("vmta", vmta, T_ALL),
    STR("jobId", job_id, T_DBT | T_R),
    STR("envId", env_id, T_DBT | T_R),
    STR("queue", queue, T_DBT | T_TQ),
    STR("vmtaPool", vmta_pool, T_DBT | T_R),
    { "totalSecondsQueued", FK_TOTAL_SECONDS, 0, T_DBT },
    STR("dlvTlsProtocol", dlv_tls_protocol, T_DBT),
    STR("dlvTlsCipher", dlv_tls_cipher, T_DBT),
    STR("rcvSourceIp", rcv_source_ip, T_R),
    STR("rcvDestinationIp", rcv_destination_ip, T_R),
    STR("rcvSmtpUser", rcv_smtp_user, T_DBT | T_R),
    { "userString", FK_USER_STRING, 0, T_ALL },
};

#define NFIELDS           (sizeof fields / sizeof fields[0])
#define USER_STRING_FIELD (NFIELDS - 1)

static const char *const type_names[QMGR_ACCT_NTYPES] = { "d", "b", "t", "tq", "r" };
static const char *const type_long_names[QMGR_ACCT_NTYPES] = { "delivery", "bounce", "transient",
                                                               "transient-queue", "receipt" };

/* --- per-file state ---------------------------------------------------------------------- */

/* One column after "type": a standard field, or header HEADER of the message. */
struct column {
    int field;  /* index into fields[], or -1 for a header */
    int header; /* index into acct_file.headers */
};

struct acct_file {
    char *path;
    char *own_dir; /* directory of PATH */
    char *stem;    /* base name without the extension */
    char *ext;     /* ".csv" or "" */
    char *move_to; /* NULL: no automatic rotation */
    char *user_string;
    int64_t max_size;      /* bytes; < 0 unlimited */
    int64_t move_interval; /* seconds; <= 0 never */
    int64_t delete_after;  /* seconds; < 0 never */
    bool iso_times, sync, world_readable;

    unsigned types; /* TB() of the types this file takes */
    bool field_on[QMGR_ACCT_NTYPES][NFIELDS];
    char *headers[MAX_HEADERS]; /* header names of header_X columns */
    size_t nheaders;
    bool header_on[QMGR_ACCT_NTYPES][MAX_HEADERS];
    struct column *columns;
    size_t ncolumns;
    char *header_line; /* "type,...\r\n" */

    int fd;
    int64_t size; /* bytes on disk + pending */
    struct buf pending;
    time_t pending_since;   /* when the oldest pending byte was added */
    time_t next_move;       /* next interval boundary; 0 none */
    time_t retry_rotate_at; /* after a failed move: no new attempt before this */
    pcre2_code *rotated_re; /* NAME-YYYY-MM-DD-HHMM[-N].EXT */

    /* <acct-file |command>: fd is the pipe's write end, -1 while the program is down */
    bool is_pipe;
    char **argv;            /* the words after '|', NULL-terminated */
    pid_t pid;              /* the program until it is reaped; 0 none */
    int64_t retry_interval; /* seconds from a failure to the next start */
    int64_t write_timeout;  /* seconds the program may accept nothing */
    time_t blocked_since;   /* when the pipe began refusing data; 0 while it takes it */
    time_t restart_at;      /* while down: when to start the program again */
    size_t header_left;     /* bytes of the header line still at the front of pending */
    bool mid_line;          /* the program got part of a line (drops keep its rest) */
    uint64_t dropped;       /* records that never reached a program since it went down */
};

struct qmgr_acct {
    struct acct_file *files;
    size_t nfiles;
    time_t (*clock)(void *ctx);
    void *clock_ctx;
};

static time_t
now_of(const struct qmgr_acct *a)
{
    return a->clock ? a->clock(a->clock_ctx) : time(NULL);
}

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
        if (strcasecmp(name, type_names[t]) == 0 || strcasecmp(name, type_long_names[t]) == 0)
            return t;
    return -1;
}

static int
field_by_name(const char *name)
{
    for (size_t i = 0; i < NFIELDS; i++)
        if (strcasecmp(name, fields[i].name) == 0)
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
    for (size_t i = 0; i < NFIELDS; i++)
        f->field_on[t][i] = (fields[i].types & TB(t)) != 0;
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
                     type_names[t], w);
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
    char *words[NFIELDS + MAX_HEADERS + 8];
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

    f->columns = xcalloc(NFIELDS + MAX_HEADERS, sizeof *f->columns);
    buf_append_str(&line, "type");
    for (size_t i = 0; i <= NFIELDS; i++) {
        if (i == USER_STRING_FIELD) { /* header_X columns go just before userString */
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
        if (i == NFIELDS)
            break;
        bool used = false;
        for (int t = 0; t < QMGR_ACCT_NTYPES; t++)
            used = used || ((f->types & TB(t)) && f->field_on[t][i]);
        if (!used)
            continue;
        f->columns[f->ncolumns++] = (struct column){ (int)i, -1 };
        buf_printf(&line, ",%s", fields[i].name);
    }
    buf_append_str(&line, "\r\n");
    f->header_line = buf_detach(&line, NULL);
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

static void
load_file_config(struct acct_file *f, const struct cfg *c, uint32_t s)
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
    for (int t = 0; t < QMGR_ACCT_NTYPES; t++)
        select_default_fields(f, t);
    while ((v = cfg_scope_next(c, s, CFG_D_RECORD_FIELDS, &it)) != NULL)
        apply_record_fields(f, cfg_str(c, v->text));
    build_columns(f);
    f->is_pipe = f->path[0] == '|';
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
 * append_value - VALUE (LEN bytes) as one CSV field. Control bytes become a
 * space (a run of them one space), invalid UTF-8 '?', at most
 * QMGR_ACCT_VALUE_MAX bytes; quoted when it holds ',' or '"'.
 */
static void
append_value(struct buf *b, const char *value, size_t len)
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
        quote = quote || p[i] == ',' || p[i] == '"';
        buf_append(&clean, p + i, n);
        if (p[i] == '"')
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
append_str(struct buf *b, const char *s)
{
    if (s)
        append_value(b, s, strlen(s));
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
             const struct qmgr_acct_record *r, time_t logged)
{
    switch (fd->kind) {
    case FK_STR:
        append_str(b, *(const char *const *)(const void *)((const char *)r + fd->off));
        break;
    case FK_TIME_LOGGED:
        append_time(f, b, logged);
        break;
    case FK_TIME_QUEUED:
        if (r->time_queued)
            append_time(f, b, r->time_queued);
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
        append_str(b, f->user_string);
        break;
    }
}

/* format_record - the CSV line of R for file F into B */
static void
format_record(const struct acct_file *f, struct buf *b, const struct qmgr_acct_record *r,
              time_t logged)
{
    buf_append_str(b, type_names[r->type]);
    for (size_t i = 0; i < f->ncolumns; i++) {
        const struct column *col = &f->columns[i];
        buf_append_str(b, ",");
        if (col->field >= 0) {
            if (f->field_on[r->type][col->field])
                append_field(f, b, &fields[col->field], r, logged);
        } else if (f->header_on[r->type][col->header] && r->headers) {
            struct buf v = BUF_INIT;
            if (header_value(r->headers, r->headers_len, f->headers[col->header], &v) && v.len)
                append_value(b, v.data, v.len);
            buf_free(&v);
        }
    }
    buf_append_str(b, "\r\n");
}

/* --- file handling ---------------------------------------------------------------------- */


static int
flush_file(struct acct_file *f)
{
    int rc;

    if (f->pending.len == 0)
        return 0;
    rc = fd_write_all(f->fd, f->pending.data, f->pending.len);
    if (rc == 0) {
        buf_reset(&f->pending);
        if (f->sync && fsync(f->fd) != 0)
            rc = -errno;
    }
    if (rc != 0) {
        msg_warn("acct-file %s: write: %s", f->path, strerror(-rc));
        if (f->pending.len > PENDING_MAX) {
            msg_error("acct-file %s: %zu bytes of records dropped after write errors", f->path,
                      f->pending.len);
            buf_reset(&f->pending);
        }
    }
    return rc;
}

/* open_fd - open (create) PATH for appending; new files get the header line and their mode */
static int
open_fd(struct acct_file *f, time_t now)
{
    struct stat st;

    f->fd = open(f->path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
    if (f->fd < 0 || fstat(f->fd, &st) != 0) {
        int err = -errno;
        msg_warn("acct-file %s: open: %s", f->path, strerror(errno));
        if (f->fd >= 0)
            close(f->fd);
        f->fd = -1;
        return err;
    }
    f->size = st.st_size;
    if (st.st_size == 0) {
        if (fchmod(f->fd, f->world_readable ? 0644 : 0640) != 0)
            msg_warn("acct-file %s: chmod: %s", f->path, strerror(errno));
        buf_append_str(&f->pending, f->header_line);
        f->pending_since = now;
        f->size = (int64_t)strlen(f->header_line);
    }
    return 0;
}

/* rotated_name - DIR/STEM-YYYY-MM-DD-HHMM[-N]EXT for time NOW and clash number N */
static char *
rotated_name(const struct acct_file *f, const char *dir, time_t now, int n)
{
    struct tm tm;
    char stamp[32], suffix[16] = "";

    gmtime_r(&now, &tm);
    strftime(stamp, sizeof stamp, "%Y-%m-%d-%H%M", &tm);
    if (n > 0)
        snprintf(suffix, sizeof suffix, "-%d", n);
    return xasprintf("%s/%s-%s%s%s", dir, f->stem, stamp, suffix, f->ext);
}

/* move_no_replace - rename FROM to TO unless TO exists (-EEXIST) */
static int
move_no_replace(const char *from, const char *to)
{
    if (renameat2(AT_FDCWD, from, AT_FDCWD, to, RENAME_NOREPLACE) == 0)
        return 0;
    if (errno != EINVAL && errno != ENOSYS)
        return -errno;
    if (link(from, to) != 0) /* file systems without RENAME_NOREPLACE */
        return -errno;
    return unlink(from) == 0 ? 0 : -errno;
}

/* delete_old - remove our rotated files in DIR last modified more than delete-after ago */
static void
delete_old(struct acct_file *f, const char *dir, time_t now)
{
    DIR *d;
    struct dirent *e;
    pcre2_match_data *md;

    if (f->delete_after < 0 || !(d = opendir(dir)))
        return;
    md = pcre2_match_data_create_from_pattern(f->rotated_re, NULL);
    while ((e = readdir(d)) != NULL) {
        struct stat st;
        if (pcre2_match(f->rotated_re, (PCRE2_SPTR)e->d_name, PCRE2_ZERO_TERMINATED, 0, 0, md,
                        NULL) < 0)
            continue;
        if (fstatat(dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISREG(st.st_mode))
            continue;
        if (now - st.st_mtime > f->delete_after && unlinkat(dirfd(d), e->d_name, 0) != 0)
            msg_warn("acct-file %s: cannot delete %s/%s: %s", f->path, dir, e->d_name,
                     strerror(errno));
    }
    pcre2_match_data_free(md);
    closedir(d);
}

static time_t
next_boundary(const struct acct_file *f, time_t now)
{
    if (f->move_interval <= 0)
        return 0;
    return (now / f->move_interval + 1) * f->move_interval;
}

/* rotate_file - move the current file into DIR under its dated name and start a new one */
static int
rotate_file(struct acct_file *f, const char *dir, time_t now)
{
    int rc = 0, n;
    char *target = NULL;

    if (f->fd >= 0) {
        flush_file(f);
        if (f->sync)
            fsync(f->fd);
        close(f->fd);
        f->fd = -1;
    }
    buf_reset(&f->pending);
    for (n = 0; n < NAME_CLASH_MAX; n++) {
        free(target);
        target = rotated_name(f, dir, now, n);
        if ((rc = move_no_replace(f->path, target)) != -EEXIST)
            break;
    }
    if (rc != 0) {
        msg_warn("acct-file %s: cannot move to %s: %s", f->path, target, strerror(-rc));
        f->retry_rotate_at = now + RETRY_SECONDS; /* keep appending; no warning per record */
    } else
        msg_info("acct-file %s moved to %s", f->path, target);
    free(target);
    f->next_move = next_boundary(f, now);
    delete_old(f, dir, now);
    if (open_fd(f, now) != 0) {
        f->retry_rotate_at = now + RETRY_SECONDS; /* qmgr_acct_tick() tries again */
        return -EIO;
    }
    return rc;
}

/* existing_file_stale - does the file at open belong to an earlier interval, or other columns? */
static bool
existing_file_stale(struct acct_file *f, time_t now)
{
    struct stat st;
    size_t hlen = strlen(f->header_line);
    char *first;
    bool stale;
    int fd = open(f->path, O_RDONLY | O_CLOEXEC);

    if (fd < 0)
        return false;
    if (fstat(fd, &st) != 0 || st.st_size == 0) {
        close(fd);
        return false;
    }
    first = xmalloc(hlen + 1);
    stale = pread(fd, first, hlen, 0) != (ssize_t)hlen || memcmp(first, f->header_line, hlen) != 0;
    if (stale)
        msg_info("acct-file %s: columns differ from the existing file's; starting a new file",
                 f->path);
    if (!stale && f->move_to && f->move_interval > 0)
        stale = st.st_mtime / f->move_interval < now / f->move_interval;
    free(first);
    close(fd);
    return stale;
}

static int
open_file(struct acct_file *f, time_t now)
{
    struct stat st;

    if (f->move_to && (stat(f->move_to, &st) != 0 || !S_ISDIR(st.st_mode))) {
        msg_warn("acct-file %s: move-to %s is not a directory", f->path, f->move_to);
        return -ENOTDIR;
    }
    f->fd = -1;
    if (existing_file_stale(f, now))
        return rotate_file(f, f->move_to ? f->move_to : f->own_dir, now);
    f->next_move = next_boundary(f, now);
    if (f->move_to)
        delete_old(f, f->move_to, now);
    return open_fd(f, now);
}

/* --- |command pipes ---------------------------------------------------------------------- */

/*
 * ignore_sigpipe - a pipe program that dies must give us EPIPE, not kill the
 * process. qmgr's worker already ignores SIGPIPE (runtime/worker.c); this
 * covers other users of the library (tests, tools) that left it at default.
 */
static void
ignore_sigpipe(void)
{
    struct sigaction sa;

    if (sigaction(SIGPIPE, NULL, &sa) == 0 && sa.sa_handler == SIG_DFL)
        signal(SIGPIPE, SIG_IGN);
}

/*
 * spawn_program - start ARGV[0] (found by PATH) with stdin the read end of a
 * new pipe and stdout/stderr /dev/null. *WFD gets the write end, non-blocking
 * and close-on-exec (so a second program never holds the first one's pipe
 * open and hides its EOF). Signals qmgr ignores or blocks are reset for the
 * program. 0 or -errno (posix_spawnp reports a program that cannot be run).
 */
static int
spawn_program(char *const argv[], int *wfd, pid_t *pid)
{
    int fds[2], rc;
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t attr;
    sigset_t none, dflt;

    if (pipe2(fds, O_CLOEXEC) != 0)
        return -errno;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, fds[0], STDIN_FILENO);
    posix_spawn_file_actions_addopen(&fa, STDOUT_FILENO, "/dev/null", O_WRONLY, 0);
    posix_spawn_file_actions_adddup2(&fa, STDOUT_FILENO, STDERR_FILENO);
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 34))
    /* qmgr marks its descriptors close-on-exec; this also covers any that slipped through */
    posix_spawn_file_actions_addclosefrom_np(&fa, STDERR_FILENO + 1);
#endif
    posix_spawnattr_init(&attr);
    sigemptyset(&none);
    sigemptyset(&dflt);
    for (int sig = 1; sig < NSIG; sig++)
        if (sig != SIGKILL && sig != SIGSTOP)
            sigaddset(&dflt, sig);
    posix_spawnattr_setsigmask(&attr, &none);
    posix_spawnattr_setsigdefault(&attr, &dflt);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
    rc = posix_spawnp(pid, argv[0], &fa, &attr, argv, environ);
    posix_spawnattr_destroy(&attr);
    posix_spawn_file_actions_destroy(&fa);
    close(fds[0]);
    if (rc != 0) {
        close(fds[1]);
        return -rc;
    }
    fcntl(fds[1], F_SETFL, fcntl(fds[1], F_GETFL) | O_NONBLOCK);
    *wfd = fds[1];
    return 0;
}

/* start_pipe - start the program; it gets a header line first, like a new file */
static int
start_pipe(struct acct_file *f, time_t now)
{
    int rc;

    ignore_sigpipe();
    if ((rc = spawn_program(f->argv, &f->fd, &f->pid)) != 0) {
        f->fd = -1;
        f->pid = 0;
        f->restart_at = now + f->retry_interval;
        msg_warn("acct-file %s: cannot start %s: %s; retrying in %lld s", f->path, f->argv[0],
                 strerror(-rc), (long long)f->retry_interval);
        return rc;
    }
    buf_reset(&f->pending);
    buf_append_str(&f->pending, f->header_line);
    f->header_left = strlen(f->header_line);
    f->pending_since = now;
    f->blocked_since = 0;
    f->mid_line = false;
    if (f->dropped)
        msg_warn(
            "acct-file %s: started again (pid %ld); %llu records were dropped while it was down",
            f->path, (long)f->pid, (unsigned long long)f->dropped);
    else
        msg_info("acct-file %s: started (pid %ld)", f->path, (long)f->pid);
    f->dropped = 0;
    return 0;
}

/* lines_in - how many records (line ends) the N bytes at P hold */
static uint64_t
lines_in(const char *p, size_t n)
{
    uint64_t lines = 0;

    for (const char *end = p + n; (p = memchr(p, '\n', (size_t)(end - p))) != NULL; p++)
        lines++;
    return lines;
}

/* pending_records - records pending for the program (the header line is not one) */
static uint64_t
pending_records(const struct acct_file *f)
{
    return lines_in(f->pending.data + f->header_left, f->pending.len - f->header_left);
}

/* consume_pending - the program took the first N pending bytes */
static void
consume_pending(struct acct_file *f, size_t n)
{
    f->mid_line = f->pending.data[n - 1] != '\n';
    f->header_left -= n < f->header_left ? n : f->header_left;
    buf_consume(&f->pending, n);
}

/* reap_child - collect the program if it has ended (status in *STATUS, -1 unknown); true once gone
 */
static bool
reap_child(struct acct_file *f, int *status)
{
    int st = -1;
    pid_t r;

    if (f->pid <= 0)
        return true;
    do
        r = waitpid(f->pid, &st, WNOHANG);
    while (r < 0 && errno == EINTR);
    if (r == 0)
        return false;
    f->pid = 0; /* r < 0 (ECHILD): someone else reaped it */
    if (status)
        *status = r > 0 ? st : -1;
    return true;
}

/*
 * pipe_down - give up on the program until retry-interval has passed: close
 * the pipe, SIGTERM the program if it still runs (reaped now or by a later
 * tick), and warn once. Records meant for it are counted as dropped.
 */
static void
pipe_down(struct acct_file *f, time_t now, const char *why)
{
    uint64_t lost = pending_records(f);
    char lost_note[64] = "";

    close(f->fd);
    f->fd = -1;
    buf_reset(&f->pending);
    f->header_left = 0;
    f->blocked_since = 0;
    if (f->pid > 0 && !reap_child(f, NULL)) {
        kill(f->pid, SIGTERM);
        reap_child(f, NULL);
    }
    f->dropped += lost;
    f->restart_at = now + f->retry_interval;
    if (lost)
        snprintf(lost_note, sizeof lost_note, " (%llu pending records lost)",
                 (unsigned long long)lost);
    msg_warn("acct-file %s: %s; records for it are dropped until it is started again in %lld s%s",
             f->path, why, (long long)f->retry_interval, lost_note);
}

/*
 * drop_excess - the program is too slow and PENDING_MAX is passed: drop the
 * pending records loudly, but keep the header line or the rest of a line the
 * program has begun, so that what it reads stays whole lines.
 */
static void
drop_excess(struct acct_file *f)
{
    const char *nl = memchr(f->pending.data, '\n', f->pending.len);
    size_t keep = (f->header_left || f->mid_line) && nl ? (size_t)(nl - f->pending.data) + 1 : 0;

    msg_error("acct-file %s: the program is not keeping up; %llu records (%zu bytes) dropped",
              f->path, (unsigned long long)lines_in(f->pending.data + keep, f->pending.len - keep),
              f->pending.len - keep);
    f->pending.len = keep;
    f->pending.data[keep] = 0;
}

/*
 * flush_pipe - write what the pipe takes now and keep the rest pending; never
 * blocks. A failed write takes the program down (pipe_down warns once, so
 * the caller has nothing to report).
 */
static void
flush_pipe(struct acct_file *f, time_t now)
{
    size_t sent = 0;
    int err = 0;

    while (sent < f->pending.len) {
        ssize_t w = write(f->fd, f->pending.data + sent, f->pending.len - sent);
        if (w > 0) {
            sent += (size_t)w;
            continue;
        }
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && errno != EAGAIN)
            err = errno;
        break;
    }
    if (sent) {
        consume_pending(f, sent);
        f->blocked_since = 0; /* write-timeout counts from the last progress */
    }
    if (err) {
        char why[128];
        snprintf(why, sizeof why, "write: %s", strerror(err));
        pipe_down(f, now, why);
        return;
    }
    if (f->pending.len == 0)
        return;
    if (!f->blocked_since)
        f->blocked_since = now;
    if (f->pending.len > PENDING_MAX)
        drop_excess(f);
}

static void
describe_exit(int status, char *out, size_t size)
{
    if (status >= 0 && WIFEXITED(status))
        snprintf(out, size, "exited with status %d", WEXITSTATUS(status));
    else if (status >= 0 && WIFSIGNALED(status))
        snprintf(out, size, "killed by signal %d", WTERMSIG(status));
    else
        snprintf(out, size, "ended");
}

/* kill_and_reap - SIGKILL and wait: only for a program that outlived SIGTERM */
static void
kill_and_reap(struct acct_file *f)
{
    kill(f->pid, SIGKILL);
    while (waitpid(f->pid, NULL, 0) < 0 && errno == EINTR)
        ;
    f->pid = 0;
}

/* tick_pipe - once a second: notice an exited or stuck program, flush, restart when due */
static void
tick_pipe(struct acct_file *f, time_t now)
{
    int status;
    char why[64];

    if (f->fd < 0) {
        reap_child(f, NULL); /* the SIGTERM of pipe_down() has had time to work */
        if (now < f->restart_at)
            return;
        if (f->pid > 0)
            kill_and_reap(f);
        start_pipe(f, now);
        return;
    }
    if (reap_child(f, &status)) {
        describe_exit(status, why, sizeof why);
        pipe_down(f, now, why);
        return;
    }
    if (f->pending.len && now - f->pending_since >= FLUSH_SECONDS)
        flush_pipe(f, now);
    if (f->fd >= 0 && f->blocked_since && now - f->blocked_since >= f->write_timeout) {
        snprintf(why, sizeof why, "accepted no data for %lld s",
                 (long long)(now - f->blocked_since));
        pipe_down(f, now, why);
    }
}

static int64_t
monotonic_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* wait_exit_until - reap the program, polling until monotonic time DEADLINE (ms); true if gone */
static bool
wait_exit_until(struct acct_file *f, int64_t deadline)
{
    const struct timespec step = { 0, 5 * 1000000 };

    while (!reap_child(f, NULL)) {
        if (monotonic_ms() >= deadline)
            return false;
        nanosleep(&step, NULL);
    }
    return true;
}

/* drain_pipe - write pending data until DEADLINE (ms), waiting for the pipe to take it */
static void
drain_pipe(struct acct_file *f, time_t now, int64_t deadline)
{
    for (;;) {
        struct pollfd p = { .fd = f->fd, .events = POLLOUT };
        int64_t left;
        flush_pipe(f, now);
        if (f->fd < 0 || f->pending.len == 0 || (left = deadline - monotonic_ms()) <= 0)
            return;
        poll(&p, 1, (int)left);
    }
}

/*
 * stop_pipe - at close (a reload or shutdown): hand over what is pending,
 * close the write end so the program sees EOF, and reap it. qmgr is blocked
 * meanwhile, so the program gets CLOSE_GRACE_MS for both, then SIGTERM and
 * CLOSE_TERM_MS, then SIGKILL; it is never left a zombie.
 */
static void
stop_pipe(struct acct_file *f, time_t now)
{
    int64_t deadline = monotonic_ms() + CLOSE_GRACE_MS;

    if (f->fd >= 0) {
        drain_pipe(f, now, deadline);
        if (f->fd >= 0) {
            uint64_t lost = pending_records(f);
            if (lost)
                msg_warn("acct-file %s: %llu records not taken by the program before close",
                         f->path, (unsigned long long)lost);
            close(f->fd);
            f->fd = -1;
        }
    }
    if (f->pid > 0 && !wait_exit_until(f, deadline)) {
        msg_warn("acct-file %s: pid %ld did not exit at end of input; terminating it", f->path,
                 (long)f->pid);
        kill(f->pid, SIGTERM);
        if (!wait_exit_until(f, monotonic_ms() + CLOSE_TERM_MS))
            kill_and_reap(f);
    }
}

static void
free_file(struct acct_file *f, time_t now)
{
    if (f->is_pipe) {
        stop_pipe(f, now);
    } else if (f->fd >= 0) {
        flush_file(f);
        if (f->sync)
            fsync(f->fd);
        close(f->fd);
    }
    for (char **w = f->argv; w && *w; w++)
        free(*w);
    free(f->argv);
    buf_free(&f->pending);
    for (size_t i = 0; i < f->nheaders; i++)
        free(f->headers[i]);
    pcre2_code_free(f->rotated_re);
    free(f->columns);
    free(f->header_line);
    free(f->path);
    free(f->own_dir);
    free(f->stem);
    free(f->ext);
    free(f->move_to);
    free(f->user_string);
}

/* maybe_rotate - rotation by size or interval when it is due (needs move-to) */
static int
maybe_rotate(struct acct_file *f, time_t now)
{
    if (!f->move_to || now < f->retry_rotate_at)
        return 0;
    if ((f->max_size >= 0 && f->size > f->max_size) || (f->next_move && now >= f->next_move))
        return rotate_file(f, f->move_to, now);
    return 0;
}

/* flush_out - write pending data of a file or a pipe; 0 or the file's -errno */
static int
flush_out(struct acct_file *f, time_t now)
{
    if (!f->is_pipe)
        return flush_file(f);
    flush_pipe(f, now); /* trouble takes the program down and is logged there */
    return 0;
}

/* nth_output - the Ith file (WANT_PIPE false) or pipe (true), or NULL */
static struct acct_file *
nth_output(const struct qmgr_acct *acct, size_t i, bool want_pipe)
{
    for (size_t k = 0; k < acct->nfiles; k++)
        if (acct->files[k].is_pipe == want_pipe && i-- == 0)
            return &acct->files[k];
    return NULL;
}

static size_t
count_outputs(const struct qmgr_acct *acct, bool want_pipe)
{
    size_t n = 0;

    for (size_t k = 0; k < acct->nfiles; k++)
        n += acct->files[k].is_pipe == want_pipe;
    return n;
}

/* --- the API ---------------------------------------------------------------------------- */

int
qmgr_acct_open(struct qmgr_acct **out, const struct cfg *c, const struct qmgr_acct_opts *opts)
{
    struct qmgr_acct *a = xcalloc(1, sizeof *a);
    uint32_t it = 0, s;
    int rc;

    if (opts) {
        a->clock = opts->clock;
        a->clock_ctx = opts->clock_ctx;
    }
    while (c && (s = cfg_next_scope(c, CFG_S_ACCT_FILE, &it)) != CFG_NONE) {
        const char *name = cfg_str(c, c->scopes[s].name);
        struct acct_file *f;
        if (name[0] == '|' && name[1 + strspn(name + 1, " \t")] == 0) {
            msg_warn("acct-file \"%s\": no command after the '|'; skipped", name);
            continue;
        }
        a->files = xreallocarray(a->files, a->nfiles + 1, sizeof *a->files);
        f = &a->files[a->nfiles++];
        memset(f, 0, sizeof *f);
        f->fd = -1;
        f->path = xstrdup(name);
        load_file_config(f, c, s);
        if (f->is_pipe) {
            start_pipe(f, now_of(a)); /* a failure is logged; qmgr_acct_tick() retries */
            continue;
        }
        /*
         * A file that cannot be opened now (a directory the run-as-user cannot
         * write, a full disk) must not stop qmgr or the other files: it is
         * kept closed and qmgr_acct_tick() retries it every RETRY_SECONDS.
         */
        if ((rc = open_file(f, now_of(a))) != 0) {
            msg_warn(
                "acct-file %s: not writable now (%s); records for it are dropped until it opens",
                f->path, strerror(-rc));
            f->fd = -1;
            f->retry_rotate_at = now_of(a) + RETRY_SECONDS;
        }
    }
    *out = a;
    return 0;
}

void
qmgr_acct_close(struct qmgr_acct *acct)
{
    if (!acct)
        return;
    for (size_t i = 0; i < acct->nfiles; i++)
        free_file(&acct->files[i], now_of(acct));
    free(acct->files);
    free(acct);
}

int
qmgr_acct_write(struct qmgr_acct *acct, const struct qmgr_acct_record *r)
{
    time_t now = now_of(acct), logged = r->time_logged ? r->time_logged : now;
    int rc = 0, frc;

    if ((unsigned)r->type >= QMGR_ACCT_NTYPES)
        return -EINVAL;
    for (size_t i = 0; i < acct->nfiles; i++) {
        struct acct_file *f = &acct->files[i];
        size_t before = f->pending.len;
        if (!(f->types & TB(r->type)))
            continue;
        if (f->fd < 0) {
            f->dropped += f->is_pipe; /* reported when the program is started again */
            continue;
        }
        if (before == 0)
            f->pending_since = now;
        format_record(f, &f->pending, r, logged);
        f->size += (int64_t)(f->pending.len - before);
        frc = 0;
        if (f->pending.len >= FLUSH_BYTES || now - f->pending_since >= FLUSH_SECONDS)
            frc = flush_out(f, now);
        if (frc == 0)
            frc = maybe_rotate(f, now);
        if (rc == 0)
            rc = frc;
    }
    return rc;
}

int
qmgr_acct_flush(struct qmgr_acct *acct)
{
    time_t now = now_of(acct);
    int rc = 0, frc;

    for (size_t i = 0; i < acct->nfiles; i++)
        if (acct->files[i].fd >= 0 && (frc = flush_out(&acct->files[i], now)) != 0 && rc == 0)
            rc = frc;
    return rc;
}

int
qmgr_acct_tick(struct qmgr_acct *acct)
{
    time_t now = now_of(acct);
    int rc = 0, frc;

    for (size_t i = 0; i < acct->nfiles; i++) {
        struct acct_file *f = &acct->files[i];
        if (f->is_pipe) {
            tick_pipe(f, now);
            continue;
        }
        frc = 0;
        if (f->fd < 0 && now >= f->retry_rotate_at && open_fd(f, now) != 0)
            f->retry_rotate_at = now + RETRY_SECONDS; /* reopen after an earlier failure */
        if (f->fd >= 0 && f->pending.len && now - f->pending_since >= FLUSH_SECONDS)
            frc = flush_file(f);
        if (frc == 0)
            frc = maybe_rotate(f, now);
        if (frc != 0 && rc == 0)
            rc = frc;
    }
    return rc;
}

int
qmgr_acct_rotate(struct qmgr_acct *acct)
{
    time_t now = now_of(acct);
    int rc = 0, frc;

    for (size_t i = 0; i < acct->nfiles; i++) {
        struct acct_file *f = &acct->files[i];
        if (f->is_pipe)
            continue; /* a pipe has nothing to rotate */
        if ((frc = rotate_file(f, f->move_to ? f->move_to : f->own_dir, now)) != 0 && rc == 0)
            rc = frc;
    }
    return rc;
}

size_t
qmgr_acct_nfiles(const struct qmgr_acct *acct)
{
    return count_outputs(acct, false);
}

const char *
qmgr_acct_path(const struct qmgr_acct *acct, size_t i)
{
    const struct acct_file *f = nth_output(acct, i, false);

    return f ? f->path : NULL;
}

size_t
qmgr_acct_npipes(const struct qmgr_acct *acct)
{
    return count_outputs(acct, true);
}

const char *
qmgr_acct_pipe_name(const struct qmgr_acct *acct, size_t i)
{
    const struct acct_file *f = nth_output(acct, i, true);

    return f ? f->path : NULL;
}

pid_t
qmgr_acct_pipe_pid(const struct qmgr_acct *acct, size_t i)
{
    const struct acct_file *f = nth_output(acct, i, true);

    return f && f->fd >= 0 ? f->pid : 0;
}

uint64_t
qmgr_acct_pipe_dropped(const struct qmgr_acct *acct, size_t i)
{
    const struct acct_file *f = nth_output(acct, i, true);

    return f ? f->dropped : 0;
}
