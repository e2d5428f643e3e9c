/*
 * smtpout_local.c - pipe and file deliveries, and the channel that runs a
 *                   transaction's recipients one by one (contract in
 *                   smtpout_local.h; http-delivery is smtpout_http.c)
 *
 * Owns: struct smtpout_local, the running recipient's child process (its
 * three handles and timer, in a struct pipe_run freed by the last close
 * callback) or its file job on the thread pool (struct file_job).
 *
 * SECURITY: addresses and ENVID go into argv words (no shell) and, reduced
 * to [A-Za-z0-9._+=@-] with no leading dot, into file names. A program's
 * output is read bounded (OUTPUT_MAX) and sanitized before it becomes a
 * reply. Children run as this worker's unprivileged user, with a small
 * environment and the command-timeout.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sysexits.h>
#include <time.h>
#include <unistd.h>

#include "buf.h"
#include "msg.h"
#include "qstore.h"
#include "smtpout_local.h"
#include "xalloc.h"

#define OUTPUT_MAX      512                /* bytes of a program's output kept for its reply */
#define DEFAULT_TIMEOUT (5u * 60u * 1000u) /* command-timeout */

enum file_format { FF_NEWFILE_PLAIN, FF_NEWFILE_PICKUP, FF_APPEND_MBOX };

struct smtpout_local {
    uv_loop_t *loop;
    int type;
    char *tag;
    /* settings */
    char **command;      /* pipe: the words, macros not yet substituted */
    unsigned timeout_ms; /* pipe: command-timeout */
    char *file_dest;     /* file: file-destination */
    enum file_format file_format;
    struct smtpout_http *http; /* http-delivery (smtpout_http.c) */
    struct pipe_run *pipe;     /* pipe: the running program, until its handles are closed */
    /* the running transaction */
    struct smtpout_local_msg m;
    struct smtpout_local_callbacks cb;
    void *arg;
    size_t next;
    int busy, aborting, running; /* running: a recipient's delivery is under way */
};

static void run_next(struct smtpout_local *l);

/* --- results ------------------------------------------------------------------------------ */

static void local_reply(struct smtpout_reply *r, enum smtpout_class cls, const char *status,
                        const char *fmt, ...) __attribute__((format(printf, 4, 5)));

static void
local_reply(struct smtpout_reply *r, enum smtpout_class cls, const char *status, const char *fmt,
            ...)
{
    char text[SMTPOUT_REPLY_TEXT_MAX + 1];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    smtpout_reply_local(r, cls, SMTPOUT_STAGE_LOCAL, status, "%s", text);
}

/* finish_rcpt - recipient NEXT has result R; go on with the next one (unless called inside) */
static void
finish_rcpt(struct smtpout_local *l, const struct smtpout_reply *r, int from_callback)
{
    size_t i = l->next++;

    l->running = 0;
    if (l->cb.rcpt_result)
        l->cb.rcpt_result(l->arg, i, r);
    if (from_callback)
        run_next(l);
}

/* --- macros and words --------------------------------------------------------------------------
 */

/* file_safe - VALUE reduced for a file name: [A-Za-z0-9._+=@-], no leading dot, never empty */
static void
file_safe(struct buf *b, const char *value)
{
    size_t start = b->len;

    for (const char *p = value; *p; p++) {
        char c = *p;
        int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                 strchr("._+=@-", c) != NULL;
        if (b->len == start && c == '.')
            ok = 0;
        buf_append(b, ok ? &c : "_", 1);
    }
    if (b->len == start)
        buf_append(b, "_", 1);
}

static void
append_lower(struct buf *b, const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        char c = s[i] >= 'A' && s[i] <= 'Z' ? (char)(s[i] - 'A' + 'a') : s[i];
        buf_append(b, &c, 1);
    }
}

/* macro_value - the value of macro NAME (LEN bytes) for recipient I of M into V; 0 if unknown */
static int
macro_value(struct buf *v, const char *name, size_t len, const struct smtpout_message *m, size_t i)
{
    const char *to = m->rcpts[i].addr, *at = strrchr(to, '@');
    time_t now = time(NULL);
    struct tm tm;
    char t[64];

#define IS(s) (len == sizeof(s) - 1 && strncmp(name, s, len) == 0)
    if (IS("to"))
        buf_append_str(v, to);
    else if (IS("from"))
        buf_append_str(v, m->sender);
    else if (IS("user")) /* the local part up to a '+', lower case */
        append_lower(v, to, strcspn(to, at ? "+@" : "+"));
    else if (IS("domain"))
        append_lower(v, at ? at + 1 : "", at ? strlen(at + 1) : 0);
    else if (IS("envid"))
        buf_append_str(v, m->envid ? m->envid : "");
    else if (IS("bodytype"))
        buf_append_str(v, m->eight_bit ? "8BITMIME" : "7BIT");
    else if (IS("timet"))
        buf_printf(v, "%lld", (long long)now);
    else if (IS("isodate"))
        buf_append_str(v, (strftime(t, sizeof t, "%Y-%m-%d", localtime_r(&now, &tm)), t));
    else if (IS("ctime"))
        buf_append_str(v,
                       (strftime(t, sizeof t, "%a %b %e %H:%M:%S %Y", localtime_r(&now, &tm)), t));
    else if (IS("rfctime"))
        buf_append_str(
            v, (strftime(t, sizeof t, "%a, %d %b %Y %H:%M:%S %z", localtime_r(&now, &tm)), t));
    else
        return 0;
#undef IS
    return 1;
}

/* expand - WORD with every $macro (or ${macro}) replaced; SAFE reduces values for file names */
static char *
expand(const char *word, const struct smtpout_message *m, size_t i, int safe)
{
    struct buf out = BUF_INIT, v = BUF_INIT;

    for (const char *p = word; *p;) {
        int braced = p[0] == '$' && p[1] == '{';
        const char *name = p + 1 + braced;
        size_t len = strspn(name, "abcdefghijklmnopqrstuvwxyz");

        buf_reset(&v);
        if (*p == '$' && len && (!braced || name[len] == '}') && macro_value(&v, name, len, m, i)) {
            buf_append(&v, "", 1); /* NUL for file_safe */
            if (safe)
                file_safe(&out, v.data);
            else
                buf_append(&out, v.data, v.len - 1);
            p = name + len + braced;
            continue;
        }
        buf_append(&out, p++, 1);
    }
    buf_append(&out, "", 1);
    buf_free(&v);
    return buf_detach(&out, NULL);
}

char *
smtpout_local_expand(const char *word, const struct smtpout_message *m, size_t i)
{
    return expand(word, m, i, 0);
}

/* --- pipe ------------------------------------------------------------------------------------ */

/* Postfix's pipe(8) reading of <sysexits.h> (sys_exits.c): what each status means. */
static const struct {
    int status;
    const char *dsn, *text;
} sysexits[] = {
    { EX_USAGE, "5.3.0", "command line usage error" },
    { EX_DATAERR, "5.6.0", "data format error" },
    { EX_NOINPUT, "5.3.0", "cannot open input" },
    { EX_NOUSER, "5.1.1", "user unknown" },
    { EX_NOHOST, "5.1.2", "host name unknown" },
    { EX_UNAVAILABLE, "5.3.0", "service unavailable" },
    { EX_SOFTWARE, "5.3.0", "internal software error" },
    { EX_OSERR, "4.3.0", "system resource problem" },
    { EX_OSFILE, "5.3.0", "critical OS file missing" },
    { EX_CANTCREAT, "5.2.0", "cannot create output file" },
    { EX_IOERR, "5.3.0", "input/output error" },
    { EX_TEMPFAIL, "4.3.0", "temporary failure" },
    { EX_PROTOCOL, "5.5.0", "remote error in protocol" },
    { EX_NOPERM, "5.7.0", "permission denied" },
    { EX_CONFIG, "5.3.5", "local configuration error" },
};

void
smtpout_local_sysexit(struct smtpout_reply *r, int status, const char *output)
{
    const char *dsn = "4.3.0", *what = "unknown status";
    char said[OUTPUT_MAX + 16];

    snprintf(said, sizeof said, "%s%s", output && *output ? ": " : "", output ? output : "");
    if (status == 0) {
        local_reply(r, SMTPOUT_OK, "2.0.0", "delivered to the command%s", said);
        return;
    }
    for (size_t i = 0; i < sizeof sysexits / sizeof sysexits[0]; i++)
        if (sysexits[i].status == status) {
            dsn = sysexits[i].dsn;
            what = sysexits[i].text;
        }
    local_reply(r, dsn[0] == '5' ? SMTPOUT_PERM : SMTPOUT_TEMP, dsn,
                "command exited with status %d (%s)%s", status, what, said);
}

struct pipe_run {
    struct smtpout_local *l;
    uv_process_t proc;
    uv_pipe_t in, out;
    uv_timer_t timer;
    uv_write_t wreq;
    char *data; /* the message as the program reads it (LF line ends) */
    int nopen;  /* handles not yet closed */
    int exited, eof, written, timed_out, aborted;
    int64_t status;
    int signal;
    char output[OUTPUT_MAX + 1];
    size_t outlen;
    char rbuf[4096];
};

static void
pipe_closed(uv_handle_t *h)
{
    struct pipe_run *p = h->data;
    struct smtpout_local *l = p->l;
    struct smtpout_reply r;
    char out[OUTPUT_MAX + 1];

    if (--p->nopen > 0)
        return;
    p->output[p->outlen] = '\0';
    p->output[strcspn(p->output, "\r\n")] = '\0'; /* the first line */
    msg_printable(out, sizeof out, p->output, strlen(p->output));
    if (p->aborted)
        local_reply(&r, SMTPOUT_TEMP, "4.3.0", "delivery aborted");
    else if (p->timed_out)
        local_reply(&r, SMTPOUT_TEMP, "4.3.0", "command timed out after %u s (command-timeout)",
                    l->timeout_ms / 1000);
    else if (p->signal)
        local_reply(&r, SMTPOUT_TEMP, "4.3.0", "command killed by signal %d%s%s", p->signal,
                    *out ? ": " : "", out);
    else
        smtpout_local_sysexit(&r, (int)p->status, out);
    free(p->data);
    free(p);
    l->pipe = NULL;
    finish_rcpt(l, &r, 1);
}

/* pipe_maybe_done - exited, output read to its end, input written: close everything */
static void
pipe_maybe_done(struct pipe_run *p)
{
    if (!p->exited || !p->eof || !p->written)
        return;
    uv_timer_stop(&p->timer);
    uv_close((uv_handle_t *)&p->proc, pipe_closed);
    uv_close((uv_handle_t *)&p->timer, pipe_closed);
    if (!uv_is_closing((uv_handle_t *)&p->in)) /* else pipe_written closed it */
        uv_close((uv_handle_t *)&p->in, pipe_closed);
    uv_close((uv_handle_t *)&p->out, pipe_closed);
}

static void pipe_drain_timeout(uv_timer_t *t);

static void
pipe_exited(uv_process_t *proc, int64_t status, int signal)
{
    struct pipe_run *p = proc->data;

    p->exited = 1;
    p->status = status;
    p->signal = signal;
    if (!p->eof) /* a child of the program may hold the pipe open: do not wait for it */
        uv_timer_start(&p->timer, pipe_drain_timeout, 200, 0);
    pipe_maybe_done(p);
}

static void
pipe_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *b)
{
    struct pipe_run *p = h->data;

    (void)suggested;
    *b = uv_buf_init(p->rbuf, sizeof p->rbuf);
}

static void
pipe_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
    struct pipe_run *p = s->data;

    if (n > 0) {
        size_t take = (size_t)n < OUTPUT_MAX - p->outlen ? (size_t)n : OUTPUT_MAX - p->outlen;
        memcpy(p->output + p->outlen, b->base, take);
        p->outlen += take;
        return;
    }
    if (n < 0) {
        uv_read_stop(s);
        p->eof = 1;
        pipe_maybe_done(p);
    }
}

static void
pipe_written(uv_write_t *req, int status)
{
    struct pipe_run *p = req->data;

    (void)status; /* a program that does not read its input is judged by its exit status */
    p->written = 1;
    uv_close((uv_handle_t *)&p->in, pipe_closed); /* EOF on its stdin */
    pipe_maybe_done(p);
}

static void
pipe_timeout(uv_timer_t *t)
{
    struct pipe_run *p = t->data;

    if (p->exited)
        return;
    p->timed_out = 1;
    uv_process_kill(&p->proc, SIGKILL);
}

/* lf_copy - DATA with CRLF line ends turned into LF (what Unix programs and files expect) */
static char *
lf_copy(const char *data, size_t len, size_t *outlen)
{
    char *out = xmalloc(len + 1);
    size_t n = 0;

    for (size_t i = 0; i < len; i++)
        if (!(data[i] == '\r' && i + 1 < len && data[i + 1] == '\n'))
            out[n++] = data[i];
    if (n == 0 || out[n - 1] != '\n')
        out[n++] = '\n';
    *outlen = n;
    return out;
}

/* spawn_failed_closed - the handles of a program that never started are closed: free it */
static void
spawn_failed_closed(uv_handle_t *h)
{
    struct pipe_run *p = h->data;

    if (--p->nopen > 0)
        return;
    free(p->data);
    free(p);
}

/* pipe_drain_timeout - the program exited: what it wrote has had time to arrive */
static void
pipe_drain_timeout(uv_timer_t *t)
{
    struct pipe_run *p = t->data;

    if (!p->eof) {
        uv_read_stop((uv_stream_t *)&p->out);
        p->eof = 1;
    }
    pipe_maybe_done(p);
}

/* pipe_start - run the command for recipient I; 1 when it finished at once (R set) */
static int
pipe_start(struct smtpout_local *l, size_t i, struct smtpout_reply *r)
{
    const struct smtpout_message *m = l->m.msg;
    struct pipe_run *p = xcalloc(1, sizeof *p);
    uv_stdio_container_t stdio[3];
    uv_process_options_t o = { 0 };
    uv_file fds[2];
    size_t n = 0, len;
    char **argv, *env[4], sender[QSTORE_STR_MAX + 16], rcpt[QSTORE_STR_MAX + 16];
    int err;

    while (l->command[n])
        n++;
    argv = xcalloc(n + 1, sizeof *argv);
    for (size_t k = 0; k < n; k++)
        argv[k] = expand(l->command[k], m, i, 0);
    snprintf(sender, sizeof sender, "SENDER=%s", m->sender);
    snprintf(rcpt, sizeof rcpt, "RECIPIENT=%s", m->rcpts[i].addr);
    env[0] = "PATH=/usr/local/bin:/usr/bin:/bin";
    env[1] = sender;
    env[2] = rcpt;
    env[3] = NULL;
    p->l = l;
    p->data = lf_copy(m->data, m->len, &len);
    uv_pipe_init(l->loop, &p->in, 0);
    uv_pipe_init(l->loop, &p->out, 0);
    p->in.data = p->out.data = p->proc.data = p->timer.data = p->wreq.data = p;
    err = uv_pipe(fds, 0, 0); /* stdout and stderr of the child share one pipe */
    if (err == 0) {
        stdio[0].flags = UV_CREATE_PIPE | UV_READABLE_PIPE;
        stdio[0].data.stream = (uv_stream_t *)&p->in;
        stdio[1].flags = stdio[2].flags = UV_INHERIT_FD;
        stdio[1].data.fd = stdio[2].data.fd = fds[1];
        o.file = argv[0];
        o.args = argv;
        o.env = env;
        o.cwd = "/";
        o.stdio = stdio;
        o.stdio_count = 3;
        o.exit_cb = pipe_exited;
        err = uv_spawn(l->loop, &p->proc, &o);
        close(fds[1]);
        if (err == 0)
            err = uv_pipe_open(&p->out, fds[0]);
        else
            close(fds[0]);
    }
    for (size_t k = 0; k < n; k++)
        free(argv[k]);
    free(argv);
    if (err < 0) {
        local_reply(r, SMTPOUT_TEMP, "4.3.0", "cannot run the command %s: %s", l->command[0],
                    uv_strerror(err));
        p->nopen = 2; /* the pipes are closed on a later loop turn: P is freed then */
        uv_close((uv_handle_t *)&p->in, spawn_failed_closed);
        uv_close((uv_handle_t *)&p->out, spawn_failed_closed);
        return 1;
    }
    p->nopen = 4;
    uv_timer_init(l->loop, &p->timer);
    uv_timer_start(&p->timer, pipe_timeout, l->timeout_ms, 0);
    uv_read_start((uv_stream_t *)&p->out, pipe_alloc, pipe_read);
    {
        uv_buf_t b = uv_buf_init(p->data, (unsigned)len);
        if (uv_write(&p->wreq, (uv_stream_t *)&p->in, &b, 1, pipe_written) < 0) {
            p->written = 1;
            uv_close((uv_handle_t *)&p->in, pipe_closed);
        }
    }
    l->pipe = p;
    return 0;
}

/* --- file --------------------------------------------------------------------------------------
 */

struct file_job {
    uv_work_t work;
    struct smtpout_local *l;
    char *path;   /* expanded file-destination */
    char *name;   /* newfile: the file's base name without extension */
    char *sender; /* newfile-pickup x-sender, mbox From line */
    char *rcpt;
    const char *data; /* borrowed: the message lives until `done` */
    size_t len;
    enum file_format format;
    int err;        /* 0 or errno */
    char what[200]; /* the step that failed */
};

/* mkdirs - create DIR and its parents (0750); 0 or errno */
static int
mkdirs(const char *dir)
{
    char *copy = xstrdup(dir);
    int err = 0;

    for (char *p = copy + 1;; p++) {
        if (*p == '/' || *p == '\0') {
            char c = *p;
            *p = '\0';
            if (mkdir(copy, 0750) < 0 && errno != EEXIST)
                err = errno;
            *p = c;
            if (c == '\0' || err)
                break;
        }
    }
    free(copy);
    return err;
}

/* write_all - 0 or errno */
static int
write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0)
            return errno;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* write_lf - DATA with CRLF as LF; in mbox form ">From " quoting and a blank line after */
static int
write_lf(int fd, const char *data, size_t len, int mbox)
{
    struct buf b = BUF_INIT;
    int err;
    size_t n;
    char *lf = lf_copy(data, len, &n);

    for (size_t i = 0; i < n;) {
        const char *nl = memchr(lf + i, '\n', n - i);
        size_t end = nl ? (size_t)(nl - lf) + 1 : n;
        const char *q = lf + i;

        while (mbox && q < lf + end && *q == '>')
            q++;
        if (mbox && (size_t)(lf + end - q) >= 5 && strncmp(q, "From ", 5) == 0)
            buf_append(&b, ">", 1);
        buf_append(&b, lf + i, end - i);
        i = end;
    }
    if (mbox)
        buf_append(&b, "\n", 1);
    err = write_all(fd, b.data, b.len);
    buf_free(&b);
    free(lf);
    return err;
}

#define FAIL(step)                                     \
    do {                                               \
        j->err = errno ? errno : EIO;                  \
        snprintf(j->what, sizeof j->what, "%s", step); \
        goto out;                                      \
    } while (0)

/* newfile - NAME.tmp, fsync, rename to NAME.msg, fsync the directory (thread pool) */
static void
newfile(struct file_job *j)
{
    char tmp[4096], msgpath[4096];
    int fd = -1, dfd = -1;

    errno = 0;
    if ((j->err = mkdirs(j->path)) != 0) {
        snprintf(j->what, sizeof j->what, "cannot create the directory");
        return;
    }
    snprintf(tmp, sizeof tmp, "%s/%s.tmp", j->path, j->name);
    snprintf(msgpath, sizeof msgpath, "%s/%s.msg", j->path, j->name);
    if ((fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0640)) < 0)
        FAIL("cannot create the file");
    if (j->format == FF_NEWFILE_PICKUP) {
        struct buf h = BUF_INIT;
        buf_printf(&h, "x-sender: %s\nx-receiver: %s\n", j->sender, j->rcpt);
        j->err = write_all(fd, h.data, h.len);
        buf_free(&h);
        if (j->err)
            FAIL("cannot write the file");
    }
    if ((j->err = write_lf(fd, j->data, j->len, 0)) != 0)
        FAIL("cannot write the file");
    if (fsync(fd) < 0)
        FAIL("cannot sync the file");
    if (close(fd) < 0) {
        fd = -1;
        FAIL("cannot close the file");
    }
    fd = -1;
    if (rename(tmp, msgpath) < 0)
        FAIL("cannot rename the file");
    if ((dfd = open(j->path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0 || fsync(dfd) < 0)
        FAIL("cannot sync the directory");
out:
    if (fd >= 0) {
        close(fd);
        unlink(tmp);
    }
    if (dfd >= 0)
        close(dfd);
}

/* append_mbox - one message appended under flock, fsynced; a failed append is cut off again */
static void
append_mbox(struct file_job *j)
{
    char *dir = xstrdup(j->path), *slash = strrchr(dir, '/'), date[64];
    struct buf from = BUF_INIT;
    struct stat st;
    time_t now = time(NULL);
    struct tm tm;
    int fd = -1;
    off_t size = -1;

    errno = 0;
    if (slash && slash != dir) {
        *slash = '\0';
        if ((j->err = mkdirs(dir)) != 0) {
            snprintf(j->what, sizeof j->what, "cannot create the directory");
            goto out;
        }
    }
    if ((fd = open(j->path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0640)) < 0)
        FAIL("cannot open the mailbox");
    if (flock(fd, LOCK_EX) < 0)
        FAIL("cannot lock the mailbox");
    if (fstat(fd, &st) < 0)
        FAIL("cannot stat the mailbox");
    size = st.st_size;
    strftime(date, sizeof date, "%a %b %e %H:%M:%S %Y", gmtime_r(&now, &tm));
    buf_printf(&from, "From %s %s\n", *j->sender ? j->sender : "MAILER-DAEMON", date);
    if ((j->err = write_all(fd, from.data, from.len)) != 0 ||
        (j->err = write_lf(fd, j->data, j->len, 1)) != 0)
        FAIL("cannot append to the mailbox");
    if (fsync(fd) < 0)
        FAIL("cannot sync the mailbox");
out:
    if (fd >= 0) {
        if (j->err && size >= 0 && ftruncate(fd, size) == 0)
            (void)fsync(fd); /* no half message left behind */
        close(fd);           /* releases the lock */
    }
    buf_free(&from);
    free(dir);
}
#undef FAIL

static void
file_work(uv_work_t *w)
{
    struct file_job *j = w->data;

    if (j->format == FF_APPEND_MBOX)
        append_mbox(j);
    else
        newfile(j);
}

static void
file_done(uv_work_t *w, int status)
{
    struct file_job *j = w->data;
    struct smtpout_local *l = j->l;
    struct smtpout_reply r;

    if (status < 0)
        local_reply(&r, SMTPOUT_TEMP, "4.3.0", "file delivery cancelled");
    else if (j->err)
        local_reply(&r, SMTPOUT_TEMP, "4.3.0", "%s %s: %s", j->what, j->path, strerror(j->err));
    else
        local_reply(&r, SMTPOUT_OK, "2.0.0", "delivered to %s%s%s%s", j->path,
                    j->format == FF_APPEND_MBOX ? "" : "/",
                    j->format == FF_APPEND_MBOX ? "" : j->name,
                    j->format == FF_APPEND_MBOX ? "" : ".msg");
    free(j->path);
    free(j->name);
    free(j->sender);
    free(j->rcpt);
    free(j);
    finish_rcpt(l, &r, 1);
}

static int
file_start(struct smtpout_local *l, size_t i, struct smtpout_reply *r)
{
    const struct smtpout_message *m = l->m.msg;
    struct file_job *j = xcalloc(1, sizeof *j);
    char qid[QSTORE_QID_LEN + 1], name[64];
    int err;

    qstore_qid_format(qid, l->m.msgid);
    snprintf(name, sizeof name, "%s-%u", qid, l->m.rcpt_index ? l->m.rcpt_index[i] : (unsigned)i);
    j->l = l;
    j->path = expand(l->file_dest, m, i, 1);
    j->name = xstrdup(name); /* the same name on a redelivery: the rename replaces the copy */
    j->sender = xstrdup(m->sender);
    j->rcpt = xstrdup(m->rcpts[i].addr);
    j->data = m->data;
    j->len = m->len;
    j->format = l->file_format;
    j->work.data = j;
    if ((err = uv_queue_work(l->loop, &j->work, file_work, file_done)) < 0) {
        local_reply(r, SMTPOUT_TEMP, "4.3.0", "cannot start the file delivery: %s",
                    uv_strerror(err));
        free(j->path);
        free(j->name);
        free(j->sender);
        free(j->rcpt);
        free(j);
        return 1;
    }
    return 0;
}

/* --- the channel ---------------------------------------------------------------------------- */

#include "smtpout_http.h"

/* run_next - start the next recipient's delivery; the transaction ends when none is left */
static void
run_next(struct smtpout_local *l)
{
    struct smtpout_reply r;

    while (l->busy && !l->running) {
        if (l->next >= l->m.msg->nrcpts) {
            l->busy = 0;
            if (l->cb.done)
                l->cb.done(l->arg);
            return;
        }
        if (l->aborting) {
            local_reply(&r, SMTPOUT_TEMP, "4.3.0", "delivery aborted");
            finish_rcpt(l, &r, 0);
            continue;
        }
        l->running = 1;
        if ((l->type == CFG_TYPE_PIPE   ? pipe_start(l, l->next, &r)
             : l->type == CFG_TYPE_FILE ? file_start(l, l->next, &r)
                                        : smtpout_http_start(l->http, l->m.msg, l->next, &r)) == 1)
            finish_rcpt(l, &r, 0);
    }
}

/* on_http_result - smtpout_http.c's answer for the running recipient */
static void
on_http_result(void *arg, const struct smtpout_reply *r)
{
    finish_rcpt(arg, r, 1);
}

static const struct cfg_value *
setting(const struct cfg_resolved *set, enum cfg_directive d)
{
    const struct cfg_value *v = set->v[d];

    return v && !(v->flags & CFG_VALUE_UNSET) && !(v->flags & CFG_VALUE_CLEAR) ? v : NULL;
}

struct smtpout_local *
smtpout_local_new(uv_loop_t *loop, int type, const struct cfg *c, const struct cfg_resolved *set,
                  const char *log_tag, struct smtpout_reply *r)
{
    struct smtpout_local *l = xcalloc(1, sizeof *l);
    const struct cfg_value *v;
    const char *fmt;
    char why[300];

    l->loop = loop;
    l->type = type;
    l->tag = xstrdup(log_tag);
    switch (type) {
    case CFG_TYPE_PIPE:
        v = setting(set, CFG_D_COMMAND);
        if (!v || (l->command = cfg_command_split(cfg_str(c, v->text))) == NULL) {
            local_reply(r, SMTPOUT_TEMP, "4.3.5", "type pipe without a usable command");
            goto fail;
        }
        v = setting(set, CFG_D_COMMAND_TIMEOUT);
        l->timeout_ms = v && v->num > 0 && v->num < 86400 ? (unsigned)v->num * 1000u
                                                          : DEFAULT_TIMEOUT;
        return l;
    case CFG_TYPE_FILE:
        if (!(v = setting(set, CFG_D_FILE_DESTINATION)) || *cfg_str(c, v->text) != '/') {
            local_reply(r, SMTPOUT_TEMP, "4.3.5", "type file without an absolute file-destination");
            goto fail;
        }
        l->file_dest = xstrdup(cfg_str(c, v->text));
        fmt = (v = setting(set, CFG_D_FILE_FORMAT)) ? cfg_str(c, v->text) : "newfile-plain";
        l->file_format = strcmp(fmt, "append-mbox") == 0      ? FF_APPEND_MBOX
                         : strcmp(fmt, "newfile-pickup") == 0 ? FF_NEWFILE_PICKUP
                                                              : FF_NEWFILE_PLAIN;
        return l;
    case CFG_TYPE_HTTP:
        if ((l->http = smtpout_http_new(loop, c, set, on_http_result, l, why, sizeof why)) ==
            NULL) {
            local_reply(r, SMTPOUT_TEMP, "4.3.5", "%s", why);
            goto fail;
        }
        return l;
    default:
        local_reply(r, SMTPOUT_TEMP, "4.3.5", "delivery type %d is not a local one", type);
    }
fail:
    smtpout_local_free(l);
    return NULL;
}

const char *
smtpout_local_peer(const struct smtpout_local *l)
{
    return l->http ? smtpout_http_host(l->http) : "";
}

int
smtpout_local_send(struct smtpout_local *l, const struct smtpout_local_msg *m,
                   const struct smtpout_local_callbacks *cb, void *arg)
{
    if (l->busy)
        return -EBUSY;
    l->m = *m;
    l->cb = *cb;
    l->arg = arg;
    l->next = 0;
    l->busy = 1;
    l->aborting = 0;
    run_next(l);
    return 0;
}

int
smtpout_local_busy(const struct smtpout_local *l)
{
    return l->busy;
}

void
smtpout_local_abort(struct smtpout_local *l)
{
    struct pipe_run *p;

    if (!l->busy || l->aborting)
        return;
    l->aborting = 1;
    if ((p = l->pipe) != NULL && !p->exited) {
        p->aborted = 1;
        uv_process_kill(&p->proc, SIGKILL);
    } else if (l->running && l->http) {
        smtpout_http_cancel(l->http);
    }
    /* a file job finishes by itself; the rest then get "aborted" from run_next */
}

void
smtpout_local_free(struct smtpout_local *l)
{
    if (!l)
        return;
    if (l->busy)
        msg_panic("smtpout_local_free: a transaction is running");
    cfg_command_free(l->command);
    free(l->file_dest);
    smtpout_http_free(l->http);
    free(l->tag);
    free(l);
}
