/*
 * qmgr_acct_file.c - accounting files on disk: open (with a header line),
 * flush, rotation into move-to by size or interval, delete-after
 *
 * Owns: each file's descriptor and its rotation schedule.
 * SECURITY: delete-after only ever removes files whose whole name matches
 * NAME-YYYY-MM-DD-HHMM[-N].EXT in the rotation directory (a PCRE2 pattern
 * with the name quoted), never anything else there.
 */
#include <dirent.h>
#include <fcntl.h>
#include <time.h>
#include <sys/stat.h>
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

/* --- file handling ---------------------------------------------------------------------- */


int
acct_flush_file(struct acct_file *f)
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

/* acct_rotate_file - move the current file into DIR under its dated name and start a new one */
int
acct_rotate_file(struct acct_file *f, const char *dir, time_t now)
{
    int rc = 0, n;
    char *target = NULL;

    if (f->fd >= 0) {
        acct_flush_file(f);
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
    if (f->json) /* no header line: a file of JSON lines starts with '{' */
        stale = pread(fd, first, 1, 0) != 1 || first[0] != '{';
    if (stale)
        msg_info("acct-file %s: columns differ from the existing file's; starting a new file",
                 f->path);
    if (!stale && f->move_to && f->move_interval > 0)
        stale = st.st_mtime / f->move_interval < now / f->move_interval;
    free(first);
    close(fd);
    return stale;
}

int
acct_open_file(struct acct_file *f, time_t now)
{
    struct stat st;

    if (f->move_to && (stat(f->move_to, &st) != 0 || !S_ISDIR(st.st_mode))) {
        msg_warn("acct-file %s: move-to %s is not a directory", f->path, f->move_to);
        return -ENOTDIR;
    }
    f->fd = -1;
    if (existing_file_stale(f, now))
        return acct_rotate_file(f, f->move_to ? f->move_to : f->own_dir, now);
    f->next_move = next_boundary(f, now);
    if (f->move_to)
        delete_old(f, f->move_to, now);
    return open_fd(f, now);
}
/* acct_maybe_rotate - rotation by size or interval when it is due (needs move-to) */
int
acct_maybe_rotate(struct acct_file *f, time_t now)
{
    if (!f->move_to || now < f->retry_rotate_at)
        return 0;
    if ((f->max_size >= 0 && f->size > f->max_size) || (f->next_move && now >= f->next_move))
        return acct_rotate_file(f, f->move_to, now);
    return 0;
}

/* acct_tick_file - reopen after an earlier failure, flush what is old enough, rotate when due */
int
acct_tick_file(struct acct_file *f, time_t now)
{
    int rc = 0;

    if (f->fd < 0 && now >= f->retry_rotate_at && open_fd(f, now) != 0)
        f->retry_rotate_at = now + RETRY_SECONDS;
    if (f->fd >= 0 && f->pending.len && now - f->pending_since >= FLUSH_SECONDS)
        rc = acct_flush_file(f);
    if (rc == 0)
        rc = acct_maybe_rotate(f, now);
    return rc;
}
