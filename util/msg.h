/*
 * msg.h - diagnostics and the project's error-handling convention
 *
 * Every program logs through these calls. A line goes to the log file named by
 * the `log-file` directive (opened once by pmtad and inherited by the workers as
 * an O_APPEND descriptor), to syslog when `log-file` is `syslog`, and to stderr
 * when there is no log yet. In the foreground (pmtad -f) warnings and errors
 * are copied to stderr too, and every line when stderr is a terminal.
 *
 * Line format (one event per line, never split):
 *     2026-11-27 17:56:43.123+0000 smtpd[1234]: warning: text
 *
 * Error-handling convention (used by every module):
 *   - msg_panic(): a bug (broken invariant). Logs and aborts.
 *   - msg_fatal(): the environment failed (cannot bind, cannot open the spool,
 *     out of memory). Logs and exits 1; pmtad restarts workers that do this.
 *   - msg_warn():  recoverable trouble; the caller carries on.
 *   - Library functions that can fail in expected ways return 0 on success and
 *     a negative errno-style code (-EINVAL, -ENOMEM, ...) on failure, and clean
 *     up through a ladder of goto labels. They never exit.
 *   - Allocation goes through xmalloc() & co. (xalloc.h), which never return NULL.
 *
 * SECURITY: peer-controlled text must go through msg_printable() before it is
 * logged so that a CR, LF or control byte cannot forge log lines.
 */
#ifndef PMTA_MSG_H
#define PMTA_MSG_H

#include <stdarg.h>
#include <stddef.h>

enum msg_level { MSG_DEBUG, MSG_INFO, MSG_WARN, MSG_ERROR, MSG_FATAL, MSG_PANIC };

/* msg_init - set the program name used in every line; call first in main() */
void msg_init(const char *progname);
/* msg_use_fd - log to an already open O_APPEND descriptor (takes ownership) */
void msg_use_fd(int fd);
/* msg_open_path - open PATH for appending; 0 or -errno */
int msg_open_path(const char *path);
/* msg_use_syslog - log to syslog(3) under facility LOG_MAIL */
void msg_use_syslog(void);
/* msg_also_stderr - foreground mode: copy warnings (every line on a terminal) to stderr */
void msg_also_stderr(int on);
/* msg_set_verbose - log MSG_DEBUG lines too */
void msg_set_verbose(int on);
/*
 * msg_set_batched - collect info/debug lines and write them with msg_flush()
 * (event-loop programs, once per loop turn); warnings and worse still go out
 * at once. Off by default.
 */
void msg_set_batched(int on);
/* msg_flush - write the collected lines now */
void msg_flush(void);
/* msg_log_fd - the descriptor lines go to, or -1 (for passing to children) */
int msg_log_fd(void);

void msg_debug(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void msg_info(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void msg_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void msg_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void msg_fatal(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
void msg_panic(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
void msg_vlog(enum msg_level level, const char *fmt, va_list ap)
    __attribute__((format(printf, 2, 0)));

/*
 * msg_printable - copy at most LEN bytes of untrusted TEXT into OUT (size
 * OUTSIZE, always NUL-terminated), replacing control bytes and non-ASCII with
 * '?'. Returns OUT.
 */
char *msg_printable(char *out, size_t outsize, const char *text, size_t len);

#endif
