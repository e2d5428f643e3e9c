/*
 * qmgr_acct.c - the accounting CSV writer (<acct-file>): the API over every
 * output (files and pipes; see qmgr_acct_int.h for how the work is split)
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

static time_t
now_of(const struct qmgr_acct *a)
{
    return a->clock ? a->clock(a->clock_ctx) : time(NULL);
}


static void
free_file(struct acct_file *f, time_t now)
{
    if (f->is_pipe) {
        acct_stop_pipe(f, now);
    } else if (f->fd >= 0) {
        acct_flush_file(f);
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
    free(f->url);
}

/* flush_out - write pending data of a file or a pipe; 0 or the file's -errno */
static int
flush_out(struct acct_file *f, time_t now)
{
    if (!f->is_pipe)
        return acct_flush_file(f);
    acct_flush_pipe(f, now); /* trouble takes the program down and is logged there */
    return 0;
}

enum output_kind { OUT_FILE, OUT_PIPE, OUT_WEBHOOK };

static enum output_kind
kind_of(const struct acct_file *f)
{
    return f->is_pipe ? OUT_PIPE : f->is_webhook ? OUT_WEBHOOK : OUT_FILE;
}

/* nth_output - the Ith output of KIND, or NULL */
static struct acct_file *
nth_output(const struct qmgr_acct *acct, size_t i, enum output_kind kind)
{
    for (size_t k = 0; k < acct->nfiles; k++)
        if (kind_of(&acct->files[k]) == kind && i-- == 0)
            return &acct->files[k];
    return NULL;
}

static size_t
count_outputs(const struct qmgr_acct *acct, enum output_kind kind)
{
    size_t n = 0;

    for (size_t k = 0; k < acct->nfiles; k++)
        n += kind_of(&acct->files[k]) == kind;
    return n;
}

/* backlog_path - DIR/acct-webhook-HASH.jsonl: the same file for the same URL across restarts */
static char *
backlog_path(const char *dir, const char *url)
{
    uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a */

    for (const unsigned char *p = (const unsigned char *)url; *p; p++)
        h = (h ^ *p) * 0x100000001b3ull;
    return xasprintf("%s/acct-webhook-%016llx.jsonl", dir && *dir ? dir : ".",
                     (unsigned long long)h);
}

/* open_webhooks - the backlog of every <acct-webhook URL> of C, in DIR */
static void
open_webhooks(struct qmgr_acct *a, const struct cfg *c, const char *dir)
{
    uint32_t it = 0, s;
    int rc;

    while (c && (s = cfg_next_scope(c, CFG_S_ACCT_WEBHOOK, &it)) != CFG_NONE) {
        const char *url = cfg_str(c, c->scopes[s].name);
        struct acct_file *f;

        a->files = xreallocarray(a->files, a->nfiles + 1, sizeof *a->files);
        f = &a->files[a->nfiles++];
        memset(f, 0, sizeof *f);
        f->fd = -1;
        f->url = xstrdup(url);
        f->path = backlog_path(dir, url);
        acct_load_file_config(f, c, s);
        if ((rc = acct_open_file(f, now_of(a))) != 0) {
            msg_warn("acct-webhook %s: backlog %s not writable now (%s); records for it are "
                     "dropped until it opens",
                     f->url, f->path, strerror(-rc));
            f->fd = -1;
            f->retry_rotate_at = now_of(a) + RETRY_SECONDS;
        }
    }
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
        acct_load_file_config(f, c, s);
        if (f->is_pipe) {
            acct_start_pipe(f, now_of(a)); /* a failure is logged; qmgr_acct_tick() retries */
            continue;
        }
        /*
         * A file that cannot be opened now (a directory the run-as-user cannot
         * write, a full disk) must not stop qmgr or the other files: it is
         * kept closed and qmgr_acct_tick() retries it every RETRY_SECONDS.
         */
        if ((rc = acct_open_file(f, now_of(a))) != 0) {
            msg_warn(
                "acct-file %s: not writable now (%s); records for it are dropped until it opens",
                f->path, strerror(-rc));
            f->fd = -1;
            f->retry_rotate_at = now_of(a) + RETRY_SECONDS;
        }
    }
    open_webhooks(a, c, opts ? opts->backlog_dir : NULL);
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

bool
qmgr_acct_takes(const struct qmgr_acct *acct, enum qmgr_acct_type type)
{
    for (size_t i = 0; acct && i < acct->nfiles; i++)
        if (acct->files[i].types & TB(type))
            return true;
    return false;
}

bool
qmgr_acct_wants_headers(const struct qmgr_acct *acct, enum qmgr_acct_type type)
{
    for (size_t i = 0; acct && i < acct->nfiles; i++)
        for (size_t h = 0; h < acct->files[i].nheaders; h++)
            if ((acct->files[i].types & TB(type)) && acct->files[i].header_on[type][h])
                return true;
    return false;
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
        if (f->json)
            acct_format_json(f, &f->pending, r, logged);
        else
            acct_format_record(f, &f->pending, r, logged);
        if (f->is_webhook && f->size + (int64_t)(f->pending.len - before) > f->backlog_max) {
            f->pending.len = before; /* the backlog is full: the newest records are dropped */
            f->dropped_full++;
            continue;
        }
        f->size += (int64_t)(f->pending.len - before);
        frc = 0;
        if (f->pending.len >= FLUSH_BYTES || now - f->pending_since >= FLUSH_SECONDS)
            frc = flush_out(f, now);
        if (frc == 0)
            frc = acct_maybe_rotate(f, now);
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
            acct_tick_pipe(f, now);
            continue;
        }
        if (f->is_webhook && f->dropped_full > f->dropped_warned && now - f->full_warned_at >= 60) {
            msg_warn("acct-webhook %s: backlog %s full (backlog-max-size %lld bytes): %llu "
                     "record(s) dropped",
                     f->url, f->path, (long long)f->backlog_max,
                     (unsigned long long)(f->dropped_full - f->dropped_warned));
            f->dropped_warned = f->dropped_full;
            f->full_warned_at = now;
        }
        frc = acct_tick_file(f, now);
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
        if (f->is_pipe || f->is_webhook)
            continue; /* a pipe has nothing to rotate, a backlog empties itself */
        if ((frc = acct_rotate_file(f, f->move_to ? f->move_to : f->own_dir, now)) != 0 && rc == 0)
            rc = frc;
    }
    return rc;
}

size_t
qmgr_acct_nfiles(const struct qmgr_acct *acct)
{
    return count_outputs(acct, OUT_FILE);
}

const char *
qmgr_acct_path(const struct qmgr_acct *acct, size_t i)
{
    const struct acct_file *f = nth_output(acct, i, OUT_FILE);

    return f ? f->path : NULL;
}

size_t
qmgr_acct_npipes(const struct qmgr_acct *acct)
{
    return count_outputs(acct, OUT_PIPE);
}

const char *
qmgr_acct_pipe_name(const struct qmgr_acct *acct, size_t i)
{
    const struct acct_file *f = nth_output(acct, i, OUT_PIPE);

    return f ? f->path : NULL;
}

pid_t
qmgr_acct_pipe_pid(const struct qmgr_acct *acct, size_t i)
{
    const struct acct_file *f = nth_output(acct, i, OUT_PIPE);

    return f && f->fd >= 0 ? f->pid : 0;
}

uint64_t
qmgr_acct_pipe_dropped(const struct qmgr_acct *acct, size_t i)
{
    const struct acct_file *f = nth_output(acct, i, OUT_PIPE);

    return f ? f->dropped : 0;
}

/* --- <acct-webhook URL>: what qmgr's sender needs ------------------------------------------ */

size_t
qmgr_acct_nwebhooks(const struct qmgr_acct *acct)
{
    return acct ? count_outputs(acct, OUT_WEBHOOK) : 0;
}

int
qmgr_acct_webhook(const struct qmgr_acct *acct, size_t i, struct qmgr_acct_webhook_info *out)
{
    const struct acct_file *f = nth_output(acct, i, OUT_WEBHOOK);

    if (f == NULL)
        return -ENOENT;
    *out = (struct qmgr_acct_webhook_info){ .url = f->url,
                                            .backlog = f->path,
                                            .batch_records = f->batch_records,
                                            .retry_interval_s = f->retry_interval,
                                            .timeout_s = f->write_timeout,
                                            .written =
                                                f->fd >= 0 ? f->size - (int64_t)f->pending.len : 0,
                                            .dropped = f->dropped_full };
    return 0;
}

int
qmgr_acct_webhook_truncate(struct qmgr_acct *acct, size_t i, int64_t acked)
{
    struct acct_file *f = nth_output(acct, i, OUT_WEBHOOK);

    if (f == NULL || f->fd < 0)
        return -ENOENT;
    if (f->pending.len > 0 || f->size != acked)
        return -EBUSY; /* records came in meanwhile: they must go first */
    if (ftruncate(f->fd, 0) != 0)
        return -errno;
    if (f->sync)
        (void)fsync(f->fd);
    f->size = 0;
    return 0;
}
