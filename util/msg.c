/*
 * msg.c - one-line-per-event logging for every openpmta program
 *
 * Owns the process's log destination: a descriptor opened O_APPEND (whole
 * lines are written with a single write(2) so lines from several processes
 * sharing the file never interleave), or syslog. Lines are built in a fixed
 * buffer and cut at MSG_LINE_MAX; newlines inside a message are replaced so one
 * event is one line whatever the caller passed.
 *
 * Event-loop programs may batch: with msg_set_batched(1), info and debug lines
 * collect in a buffer that msg_flush() writes in one write(2) (the workers call
 * it once per loop turn, before the loop sleeps); a warning or worse flushes
 * the buffer and itself at once, so nothing serious waits and order is kept.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

#include "fdio.h"
#include "msg.h"

#define MSG_LINE_MAX 4096

static const char *msg_progname = "openpmta";
static int msg_fd = -1;
static int msg_syslog;
static int msg_stderr = 1;
static int msg_verbose;
static long msg_pid; /* cached: glibc no longer caches getpid() */
static int msg_batched;
static char msg_batch[3 * (MSG_LINE_MAX + 128)];
static size_t msg_batch_len;

static const char *const level_names[] = {
    [MSG_DEBUG] = "debug", [MSG_INFO] = "info",   [MSG_WARN] = "warning",
    [MSG_ERROR] = "error", [MSG_FATAL] = "fatal", [MSG_PANIC] = "panic",
};

/* forget_batch - a forked child must not write the parent's pending lines twice */
static void
forget_batch(void)
{
    msg_pid = getpid();
    msg_batch_len = 0;
}

void
msg_init(const char *progname)
{
    static int registered;

    msg_progname = progname;
    msg_pid = getpid();
    if (!registered++)
        pthread_atfork(NULL, NULL, forget_batch);
}

void
msg_use_fd(int fd)
{
    msg_flush(); /* what was collected belongs to the old file */
    if (msg_fd >= 0 && msg_fd != fd)
        close(msg_fd);
    msg_fd = fd;
    msg_syslog = 0;
}

int
msg_open_path(const char *path)
{
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);

    if (fd < 0)
        return -errno;
    msg_use_fd(fd);
    return 0;
}

void
msg_use_syslog(void)
{
    if (msg_fd >= 0)
        close(msg_fd);
    msg_fd = -1;
    openlog(msg_progname, LOG_PID | LOG_NDELAY, LOG_MAIL);
    msg_syslog = 1;
}

void
msg_also_stderr(int on)
{
    msg_stderr = on;
}

void
msg_set_verbose(int on)
{
    msg_verbose = on;
}

void
msg_set_batched(int on)
{
    static int registered;

    if (!on)
        msg_flush();
    else if (!registered++)
        atexit(msg_flush);
    msg_batched = on;
}

int
msg_log_fd(void)
{
    return msg_fd;
}

/* format_stamp - "2026-11-27 17:56:43.123+0000" in UTC */
static size_t
format_stamp(char *out, size_t size)
{
    struct timeval tv;
    struct tm tm;
    size_t n;

    gettimeofday(&tv, NULL);
    gmtime_r(&tv.tv_sec, &tm);
    n = strftime(out, size, "%Y-%m-%d %H:%M:%S", &tm);
    n += (size_t)snprintf(out + n, size - n, ".%03d+0000", (int)(tv.tv_usec / 1000));
    return n;
}

static int
level_to_syslog(enum msg_level level)
{
    switch (level) {
    case MSG_DEBUG:
        return LOG_DEBUG;
    case MSG_INFO:
        return LOG_INFO;
    case MSG_WARN:
        return LOG_WARNING;
    case MSG_ERROR:
        return LOG_ERR;
    default:
        return LOG_CRIT;
    }
}

/* flatten - one event, one line: no CR/LF inside the text */
static void
flatten(char *s)
{
    for (; *s; s++)
        if (*s == '\n' || *s == '\r')
            *s = ' ';
}

void
msg_flush(void)
{
    if (msg_batch_len > 0 && msg_fd >= 0)
        (void)fd_write_all(msg_fd, msg_batch, msg_batch_len); /* a failing log has nobody to tell */
    msg_batch_len = 0;
}

/* emit - LINE to the log descriptor, now or with the next msg_flush() */
static void
emit(enum msg_level level, const char *line, size_t n)
{
    if (msg_fd < 0)
        return;
    if (msg_batched && level <= MSG_INFO) {
        if (msg_batch_len + n > sizeof(msg_batch))
            msg_flush();
        memcpy(msg_batch + msg_batch_len, line, n);
        msg_batch_len += n;
        return;
    }
    msg_flush();
    (void)fd_write_all(msg_fd, line, n);
}

/* copy_to_stderr - in the foreground: warnings always, every line on a terminal */
static int
copy_to_stderr(enum msg_level level)
{
    static int tty = -1;

    if (!msg_stderr || msg_fd == STDERR_FILENO)
        return 0;
    if (msg_fd < 0 && !msg_syslog)
        return 1; /* stderr is the only place the line can go */
    if (tty < 0)
        tty = isatty(STDERR_FILENO);
    return tty || level >= MSG_WARN;
}

void
msg_vlog(enum msg_level level, const char *fmt, va_list ap)
{
    char text[MSG_LINE_MAX], line[MSG_LINE_MAX + 128];
    int saved_errno = errno;
    size_t n;

    if (level == MSG_DEBUG && !msg_verbose)
        return;
    vsnprintf(text, sizeof(text), fmt, ap);
    flatten(text);
    if (msg_syslog)
        syslog(level_to_syslog(level), "%s: %s", level_names[level], text);
    n = format_stamp(line, sizeof(line));
    n += (size_t)snprintf(line + n, sizeof(line) - n, " %s[%ld]: %s: %s\n", msg_progname,
                          msg_pid ? msg_pid : (long)getpid(), level_names[level], text);
    if (n >= sizeof(line))
        n = sizeof(line) - 1, line[n - 1] = '\n';
    emit(level, line, n);
    if (copy_to_stderr(level))
        (void)fd_write_all(STDERR_FILENO, line, n);
    errno = saved_errno;
}

#define MSG_FUNC(name, level)       \
    void name(const char *fmt, ...) \
    {                               \
        va_list ap;                 \
        va_start(ap, fmt);          \
        msg_vlog(level, fmt, ap);   \
        va_end(ap);                 \
    }
MSG_FUNC(msg_debug, MSG_DEBUG)
MSG_FUNC(msg_info, MSG_INFO)
MSG_FUNC(msg_warn, MSG_WARN)
MSG_FUNC(msg_error, MSG_ERROR)
#undef MSG_FUNC

void
msg_fatal(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    msg_vlog(MSG_FATAL, fmt, ap);
    va_end(ap);
    msg_flush();
    exit(1);
}

void
msg_panic(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    msg_vlog(MSG_PANIC, fmt, ap);
    va_end(ap);
    abort();
}

char *
msg_printable(char *out, size_t outsize, const char *text, size_t len)
{
    size_t i;

    if (outsize == 0)
        return out;
    if (len > outsize - 1)
        len = outsize - 1;
    for (i = 0; i < len; i++) {
        unsigned char c = (unsigned char)text[i];

        out[i] = (c >= 0x20 && c < 0x7f) ? (char)c : '?';
    }
    out[len] = '\0';
    return out;
}
