/*
 * master_files.c - pmtad's files: worker user, directories, spool lock, pid file, log
 *
 * Resolves the run-as-user, creates the spool directory (owned by the worker
 * user, 0750) and the run directory (root:worker-group, 0755, with private/
 * at 0750), takes the spool lock SPOOL/.pmtad.lock for pmtad's lifetime, and
 * writes RUNDIR/pmtad.pid (also locked, so two instances cannot share a run
 * directory either). Opens the main log.
 *
 * Owns: the lock and pid-file descriptors (m->lock_fd, m->pid_fd).
 *
 * SECURITY: runs as root. The run directory stays root-owned so that no
 * worker can plant a symlink where pmtad writes (snapshots, pid file, socket
 * nodes). The lock file lives in the worker-owned spool, so it is opened with
 * O_NOFOLLOW and refused unless it is a plain single-link file that we own.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "msg.h"
#include "xalloc.h"
#include "master.h"

/* master_resolve_user - worker credentials; fatal when run-as-user does not exist */
void
master_resolve_user(struct master *m)
{
    struct passwd *pw;

    if (!m->set.drop_privileges) {
        msg_info("run-as-root yes: workers keep pmtad's credentials");
        return;
    }
    if (geteuid() != 0) {
        msg_info("not running as root: workers run as uid %ld without a privilege change",
                 (long)geteuid());
        m->set.drop_privileges = 0;
        return;
    }
    errno = 0;
    if ((pw = getpwnam(m->set.user)) == NULL)
        msg_fatal("run-as-user: unknown user '%s'%s%s", m->set.user, errno ? ": " : "",
                  errno ? strerror(errno) : "");
    if (pw->pw_uid == 0)
        msg_fatal("run-as-user '%s' is root; use run-as-root yes to mean that", m->set.user);
    m->set.uid = pw->pw_uid;
    m->set.gid = pw->pw_gid;
}

/* make_parents - mkdir -p of PATH's parents (root-owned, 0755) */
static void
make_parents(const char *path)
{
    char *copy = xstrdup(path);

    for (char *p = copy + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(copy, 0755) < 0 && errno != EEXIST)
            msg_fatal("cannot create directory %s: %s", copy, strerror(errno));
        *p = '/';
    }
    free(copy);
}

/* make_dir - create PATH if needed and force its owner and mode */
static void
make_dir(const char *path, uid_t uid, gid_t gid, mode_t mode)
{
    int fd;

    make_parents(path);
    if (mkdir(path, mode) < 0 && errno != EEXIST)
        msg_fatal("cannot create directory %s: %s", path, strerror(errno));
    /* Through a descriptor, so a swapped-in symlink cannot redirect the chown. */
    if ((fd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)) < 0)
        msg_fatal("cannot open directory %s: %s", path, strerror(errno));
    if (geteuid() == 0 && fchown(fd, uid, gid) < 0)
        msg_fatal("cannot chown %s: %s", path, strerror(errno));
    if (fchmod(fd, mode) < 0)
        msg_fatal("cannot chmod %s: %s", path, strerror(errno));
    close(fd);
}

/* master_prepare_directories - spool (worker-owned) and run directory (root-owned) */
void
master_prepare_directories(struct master *m)
{
    char *private_dir = xasprintf("%s/private", m->set.run_dir);

    make_dir(m->set.spool, m->set.uid, m->set.gid, 0750);
    make_dir(m->set.run_dir, geteuid(), m->set.gid, 0755);
    make_dir(private_dir, geteuid(), m->set.gid, 0750);
    free(private_dir);
}

/* worker_can_write - may the worker user create files in directory PATH? */
static int
worker_can_write(const struct master *m, const char *path)
{
    struct stat st;

    if (stat(path, &st) != 0 || !S_ISDIR(st.st_mode))
        return 0;
    if (!m->set.drop_privileges || st.st_uid == m->set.uid)
        return 1;
    if (st.st_gid == m->set.gid)
        return (st.st_mode & 020) != 0;
    return (st.st_mode & 002) != 0;
}

/* prepare_worker_dir - create DIR for the worker user if missing; warn if it cannot write there */
static void
prepare_worker_dir(const struct master *m, const char *dir, const char *what)
{
    struct stat st;

    if (stat(dir, &st) != 0 && errno == ENOENT)
        make_dir(dir, m->set.uid, m->set.gid, 0750);
    if (!worker_can_write(m, dir))
        msg_warn("%s: directory %s is not writable by %s; accounting records will be lost "
                 "until it is",
                 what, dir, m->set.user);
}

/*
 * master_prepare_acct_dirs - qmgr writes the <acct-file>s as the worker user:
 * create a missing directory for each file (and its move-to) owned by that
 * user, and say at start-up, not at the first record, when one is unusable.
 */
void
master_prepare_acct_dirs(const struct master *m, const struct cfg *c)
{
    uint32_t it = 0, s;

    while ((s = cfg_next_scope(c, CFG_S_ACCT_FILE, &it)) != CFG_NONE) {
        const char *name = cfg_str(c, c->scopes[s].name);
        const struct cfg_value *move_to = cfg_scope_get(c, s, CFG_D_MOVE_TO);
        char *path, *slash;

        if (name[0] == '|')
            continue;
        path = master_absolute_path(name);
        if ((slash = strrchr(path, '/')) != NULL && slash != path) {
            *slash = '\0';
            prepare_worker_dir(m, path, name);
        }
        free(path);
        if (move_to && *cfg_str(c, move_to->text)) {
            path = master_absolute_path(cfg_str(c, move_to->text));
            prepare_worker_dir(m, path, name);
            free(path);
        }
    }
}

/* read_pid - the pid recorded in FD, or 0 */
static long
read_pid(int fd)
{
    char text[32];
    ssize_t n = pread(fd, text, sizeof(text) - 1, 0);

    if (n <= 0)
        return 0;
    text[n] = '\0';
    return strtol(text, NULL, 10);
}

/* write_pid - replace FD's content with our pid */
static void
write_pid(int fd, const char *path)
{
    char text[32];
    int len = snprintf(text, sizeof(text), "%ld\n", (long)getpid());

    if (ftruncate(fd, 0) < 0 || pwrite(fd, text, (size_t)len, 0) != len)
        msg_fatal("cannot write %s: %s", path, strerror(errno));
}

/* open_locked - open PATH (MODE) and take an exclusive lock; -1 with *HOLDER when someone has it */
static int
open_locked(const char *path, mode_t mode, long *holder)
{
    struct stat st;
    int fd = open(path, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, mode);

    if (fd < 0)
        msg_fatal("cannot open %s: %s", path, strerror(errno));
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_nlink != 1 || st.st_uid != geteuid())
        msg_fatal("refusing to use %s: not a plain file owned by us", path);
    if ((st.st_mode & 07777) != mode && fchmod(fd, mode) < 0)
        msg_fatal("cannot chmod %s: %s", path, strerror(errno));
    if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
        if (errno != EWOULDBLOCK)
            msg_fatal("cannot lock %s: %s", path, strerror(errno));
        *holder = read_pid(fd);
        close(fd);
        return -1;
    }
    return fd;
}

/* master_lock_spool - one pmtad per spool, for the whole life of this process */
void
master_lock_spool(struct master *m)
{
    char *path = xasprintf("%s/.pmtad.lock", m->set.spool);
    long holder = 0;

    /* Nothing in the spool is for other users, not even our pid. */
    if ((m->lock_fd = open_locked(path, 0600, &holder)) < 0)
        msg_fatal("another pmtad is running on spool %s (pid %ld)", m->set.spool, holder);
    write_pid(m->lock_fd, path);
    free(path);
}

/* master_write_pid_file - RUNDIR/pmtad.pid, locked so a second instance sees the owner */
void
master_write_pid_file(struct master *m)
{
    char *path = xasprintf("%s/pmtad.pid", m->set.run_dir);
    long holder = 0;

    if ((m->pid_fd = open_locked(path, 0644, &holder)) < 0)
        msg_fatal("another pmtad is using run directory %s (pid %ld)", m->set.run_dir, holder);
    write_pid(m->pid_fd, path);
    free(path);
}

/* master_remove_pid_file - at clean exit; the lock goes with the descriptor */
void
master_remove_pid_file(struct master *m)
{
    char *path = xasprintf("%s/pmtad.pid", m->set.run_dir);

    if (m->pid_fd >= 0) {
        if (unlink(path) < 0)
            msg_warn("cannot remove %s: %s", path, strerror(errno));
        close(m->pid_fd);
        m->pid_fd = -1;
    }
    if (m->lock_fd >= 0) {
        close(m->lock_fd);
        m->lock_fd = -1;
    }
    free(path);
}

/* share_log - the workers reopen the log after a rotation as the worker user: let them write */
static void
share_log(struct master *m, int fd)
{
    if (fd >= 0 && m->set.drop_privileges && geteuid() == 0 &&
        (fchown(fd, (uid_t)-1, m->set.gid) < 0 || fchmod(fd, 0660) < 0))
        msg_warn("cannot give log file %s to group %ld: %s", m->set.log_file, (long)m->set.gid,
                 strerror(errno));
}

/* rotated_name - "PATH.N" */
static char *
rotated_name(const char *path, int n)
{
    return xasprintf("%s.%d", path, n);
}

/* reopen_log - open log-file (created when missing), then tell the workers; 0 or -1 (logged) */
static int
reopen_log(struct master *m, const char *why)
{
    int err;

    if ((err = msg_open_path(m->set.log_file)) < 0) {
        msg_error("%s: cannot open %s: %s", why, m->set.log_file, strerror(-err));
        return -1;
    }
    fcntl(msg_log_fd(), F_SETFD, FD_CLOEXEC);
    share_log(m, msg_log_fd());
    master_broadcast_log_reopen(m);
    return 0;
}

/*
 * master_rotate_log - see master.h. Keeps log-rotate old files (PATH.1 the
 * newest); 0 keeps none. The new file is created before the workers are
 * told, so none of their lines is lost: until they reopen they append to
 * the renamed file, which is where those lines belong anyway.
 */
void
master_rotate_log(struct master *m)
{
    const char *path = m->set.log_file;
    char *from, *to;

    if (path == NULL) {
        msg_info("log rotation asked for, but the log goes to syslog; nothing to do");
        return;
    }
    for (int n = m->set.log_rotate; n >= 1; n--) {
        from = n == 1 ? xstrdup(path) : rotated_name(path, n - 1);
        to = rotated_name(path, n);
        if (rename(from, to) < 0 && errno != ENOENT)
            msg_warn("log rotation: cannot rename %s to %s: %s", from, to, strerror(errno));
        free(from);
        free(to);
    }
    if (m->set.log_rotate <= 0 && unlink(path) < 0 && errno != ENOENT)
        msg_warn("log rotation: cannot remove %s: %s", path, strerror(errno));
    if (reopen_log(m, "log rotation") == 0)
        msg_info("log rotated (%d old file%s kept)", m->set.log_rotate,
                 m->set.log_rotate == 1 ? "" : "s");
}

/* master_reopen_log - see master.h. Whoever renamed the file keeps the old ones. */
void
master_reopen_log(struct master *m)
{
    if (m->set.log_file == NULL) {
        msg_info("log reopen asked for, but the log goes to syslog; nothing to do");
        return;
    }
    if (reopen_log(m, "log reopen") == 0)
        msg_info("log reopened");
}

/* master_open_log - log-file PATH (appended) or syslog; warnings to stderr too in the foreground */
void
master_open_log(struct master *m)
{
    int err, fd;

    if (m->set.log_file == NULL) {
        msg_use_syslog();
    } else {
        make_parents(m->set.log_file);
        if ((err = msg_open_path(m->set.log_file)) < 0)
            msg_fatal("cannot open log file %s: %s", m->set.log_file, strerror(-err));
        /* Workers get it explicitly; it must not leak into anything else we exec. */
        if ((fd = msg_log_fd()) >= 0)
            fcntl(fd, F_SETFD, FD_CLOEXEC);
        share_log(m, fd);
    }
    msg_also_stderr(m->foreground);
    msg_set_verbose(m->verbose);
}

/* --- automatic rotation (log-auto-rotation, log-max-size) ------------------------------ */

#define LOG_CHECK_MS 5000 /* how often the size and the clock are looked at */

/* next_midnight - the next local midnight after NOW */
static time_t
next_midnight(time_t now)
{
    struct tm tm;

    localtime_r(&now, &tm);
    tm.tm_hour = tm.tm_min = tm.tm_sec = 0;
    tm.tm_mday++;
    tm.tm_isdst = -1;
    return mktime(&tm);
}

/*
 * on_log_check - rotate when midnight has passed (log-auto-rotation) or the
 * file has grown past log-max-size; log-rotate 0 means no rotation at all.
 * The settings are read on every check, so a reload takes effect at once.
 */
static void
on_log_check(uv_timer_t *t)
{
    struct master *m = t->data;
    time_t now = time(NULL);
    struct stat st;
    const char *why = NULL;

    if (m->stopping || !m->set.log_file || m->set.log_rotate <= 0)
        return;
    if (m->set.log_auto_rotation && m->next_log_midnight && now >= m->next_log_midnight)
        why = "midnight (log-auto-rotation)";
    else if (m->set.log_max_size > 0 && stat(m->set.log_file, &st) == 0 &&
             st.st_size >= m->set.log_max_size)
        why = "size (log-max-size)";
    m->next_log_midnight = next_midnight(now);
    if (why) {
        msg_info("rotating the log: %s", why);
        master_rotate_log(m);
    }
}

void
master_log_auto_start(struct master *m)
{
    uv_timer_init(&m->loop, &m->log_timer);
    m->log_timer.data = m;
    m->next_log_midnight = next_midnight(time(NULL));
    uv_timer_start(&m->log_timer, on_log_check, LOG_CHECK_MS, LOG_CHECK_MS);
}
