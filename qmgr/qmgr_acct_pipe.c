/*
 * qmgr_acct_pipe.c - <acct-file |command>: the accounting CSV fed to a
 * program through a non-blocking pipe
 *
 * A program that fails is stopped, reaped and started again after
 * retry-interval; records it cannot take in time are dropped (counted and
 * logged), never allowed to block qmgr.
 *
 * Owns: the pipe programs' processes: every child is reaped (by the tick or
 * at close), never left a zombie.
 */
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <time.h>
#include <sys/wait.h>
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

/* acct_start_pipe - start the program; it gets a header line first, like a new file */
int
acct_start_pipe(struct acct_file *f, time_t now)
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
void
acct_flush_pipe(struct acct_file *f, time_t now)
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

/* acct_tick_pipe - once a second: notice an exited or stuck program, flush, restart when due */
void
acct_tick_pipe(struct acct_file *f, time_t now)
{
    int status;
    char why[64];

    if (f->fd < 0) {
        reap_child(f, NULL); /* the SIGTERM of pipe_down() has had time to work */
        if (now < f->restart_at)
            return;
        if (f->pid > 0)
            kill_and_reap(f);
        acct_start_pipe(f, now);
        return;
    }
    if (reap_child(f, &status)) {
        describe_exit(status, why, sizeof why);
        pipe_down(f, now, why);
        return;
    }
    if (f->pending.len && now - f->pending_since >= FLUSH_SECONDS)
        acct_flush_pipe(f, now);
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
        acct_flush_pipe(f, now);
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
void
acct_stop_pipe(struct acct_file *f, time_t now)
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
