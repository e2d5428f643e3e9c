/*
 * pmtactl_client.c - how pmtactl reaches pmtad: the configuration's
 *                    run-directory, the control socket (one JSON request line,
 *                    response lines), and the pid file for the signal commands
 *                    (reload, rotate log, reopen log)
 *
 * Owns: the socket of one request (opened, used and closed by the caller or
 * by control_exchange), its response buffer (at most RESPONSE_MAX bytes),
 * and why the last connection failed (control_unreachable).
 *
 * SECURITY: not setuid; the control socket is root-only, so only root gets
 * an answer. Reads are bounded in size and, but for a trace, in time
 * (SOCKET_TIMEOUT_S). Responses are parsed by jansson only.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/types.h>
#include <sys/un.h>
#include <unistd.h>

#include <jansson.h>

#include "cfg.h"
#include "xalloc.h"
#include "pmtactl.h"

#define DEFAULT_RUN_DIR  "/run/pmta"
#define PID_FILE_NAME    "pmtad.pid"
#define RESPONSE_MAX     (16 * 1024 * 1024)
#define SOCKET_TIMEOUT_S 30

/* --- configuration: where pmtad keeps its socket and pid file ---------------- */

/* print_config_error - cfg_load diagnostics: errors only (warnings are pmtad's business) */
void
print_config_error(void *ctx, enum cfg_diag_level level, const char *file, unsigned line,
                   const char *message)
{
    const char *config_path = ctx;

    if (level != CFG_DIAG_ERROR)
        return;
    if (file && *file && line > 0)
        fprintf(stderr, "%s:%u: error: %s\n", file, line, message);
    else
        fprintf(stderr, "%s: error: %s\n", file && *file ? file : config_path, message);
}

/* absolute_path - PATH against the current directory, as pmtad makes it; caller frees */
static char *
absolute_path(const char *path)
{
    char cwd[PATH_MAX];

    if (path[0] == '/')
        return xstrdup(path);
    if (getcwd(cwd, sizeof(cwd)) == NULL) {
        fail("cannot determine the current directory: %s", strerror(errno));
        return NULL;
    }
    return xasprintf("%s/%s", strcmp(cwd, "/") ? cwd : "", path);
}

/* load_run_directory - the absolute run-directory of CONFIG_PATH; NULL (reported) on errors */
char *
load_run_directory(const char *config_path)
{
    unsigned nerrors = 0;
    struct cfg *c = cfg_load(config_path, print_config_error, (void *)config_path, &nerrors);
    const struct cfg_value *v;
    char *run_dir;

    if (c == NULL) {
        fail("%s: cannot load the configuration (%u error%s)", config_path, nerrors,
             nerrors == 1 ? "" : "s");
        return NULL;
    }
    v = cfg_global(c, CFG_D_RUN_DIRECTORY);
    run_dir = absolute_path(v && *cfg_str(c, v->text) ? cfg_str(c, v->text) : DEFAULT_RUN_DIR);
    cfg_free(c);
    return run_dir;
}

char *
control_socket_path(const struct options *o)
{
    char *run_dir, *path;

    if (o->socket_path)
        return xstrdup(o->socket_path);
    if ((run_dir = load_run_directory(o->config_path)) == NULL) {
        fail("use --socket PATH to reach pmtad without the configuration");
        return NULL;
    }
    path = xasprintf("%s/%s", run_dir, CONTROL_SOCKET_NAME);
    free(run_dir);
    return path;
}


/* --- the control socket ------------------------------------------------------ */

/* set_timeouts - SOCKET_TIMEOUT_S for connect, send and receive on FD */
static void
set_timeouts(int fd)
{
    struct timeval tv = { .tv_sec = SOCKET_TIMEOUT_S, .tv_usec = 0 };

    (void)setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    (void)setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
}

/* why the control socket could not be reached: EXIT_NOT_RUNNING, EXIT_DENIED, else 0 */
static int unreachable;

/* control_unreachable - see pmtactl.h */
int
control_unreachable(void)
{
    return unreachable;
}

/* control_connect - a connected socket to PATH, or -1 (reported; UNREACHABLE set) */
int
control_connect(const char *path)
{
    struct sockaddr_un sun = { .sun_family = AF_UNIX };
    int fd;

    if (strlen(path) >= sizeof(sun.sun_path)) {
        fail("control socket path too long: %s", path);
        return -1;
    }
    memcpy(sun.sun_path, path, strlen(path) + 1);
    if ((fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)) < 0) {
        fail("socket: %s", strerror(errno));
        return -1;
    }
    set_timeouts(fd);
    if (connect(fd, (struct sockaddr *)&sun, sizeof(sun)) == 0)
        return fd;
    if (errno == EACCES || errno == EPERM) {
        fail("cannot connect to %s: %s (the control socket is root-only; run pmtactl as root)",
             path, strerror(errno));
        unreachable = EXIT_DENIED;
    } else if (errno == EAGAIN) {
        fail("cannot connect to %s: pmtad did not accept within %d s", path, SOCKET_TIMEOUT_S);
    } else if (errno == ENOENT || errno == ECONNREFUSED) {
        fail("pmtad is not running: cannot connect to %s: %s", path, strerror(errno));
        unreachable = EXIT_NOT_RUNNING;
    } else {
        fail("cannot connect to %s: %s (is pmtad running?)", path, strerror(errno));
    }
    close(fd);
    return -1;
}

/* control_send - write LEN bytes of DATA to FD; 0, or -1 (reported) */
int
control_send(int fd, const char *data, size_t len)
{
    while (len > 0) {
        ssize_t n = send(fd, data, len, MSG_NOSIGNAL);

        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            fail("cannot send the request: %s", errno == EAGAIN ? "timed out" : strerror(errno));
            return -1;
        }
        data += n;
        len -= (size_t)n;
    }
    return 0;
}

/*
 * control_receive_line - the response line (without its "\n") in fresh memory, its
 * length in *LEN; NULL (reported) on error, timeout, or more than RESPONSE_MAX
 * bytes. A last line without "\n" before the server closes is accepted.
 */
char *
control_receive_line(int fd, size_t *len)
{
    size_t cap = 64 * 1024, used = 0;
    char *buf = xmalloc(cap + 1), *nl = NULL;

    while (nl == NULL) {
        ssize_t n;

        if (used == cap) {
            if (cap > RESPONSE_MAX) {
                fail("response from pmtad longer than %d MiB; giving up", RESPONSE_MAX >> 20);
                goto error;
            }
            cap = cap * 2 > RESPONSE_MAX + 1 ? RESPONSE_MAX + 1 : cap * 2;
            buf = xrealloc(buf, cap + 1);
        }
        n = recv(fd, buf + used, cap - used, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            fail("no response from pmtad within %d s", SOCKET_TIMEOUT_S);
            goto error;
        }
        if (n < 0) {
            fail("cannot read the response: %s", strerror(errno));
            goto error;
        }
        if (n == 0)
            break;
        nl = memchr(buf + used, '\n', (size_t)n);
        used += (size_t)n;
    }
    *len = nl ? (size_t)(nl - buf) : used;
    if (*len > RESPONSE_MAX) {
        fail("response from pmtad longer than %d MiB; giving up", RESPONSE_MAX >> 20);
        goto error;
    }
    if (*len == 0) {
        fail("pmtad closed the connection without a response");
        goto error;
    }
    buf[*len] = '\0';
    return buf;
error:
    free(buf);
    return NULL;
}

/* control_exchange - send REQUEST on PATH, return the raw response line; NULL (reported) on failure
 */
char *
control_exchange(const char *path, json_t *request, size_t *len)
{
    char *text = json_dumps(request, JSON_COMPACT), *line, *response = NULL;
    int fd;

    if (text == NULL) {
        fail("cannot encode the request");
        return NULL;
    }
    line = xasprintf("%s\n", text);
    free(text);
    if ((fd = control_connect(path)) >= 0) {
        if (control_send(fd, line, strlen(line)) == 0)
            response = control_receive_line(fd, len);
        close(fd);
    }
    free(line);
    return response;
}

/* control_decode - the response object with a boolean "ok"; NULL (reported) otherwise */
json_t *
control_decode(const char *text, size_t len)
{
    json_error_t err;
    json_t *response = json_loadb(text, len, JSON_REJECT_DUPLICATES, &err);

    if (response == NULL) {
        fail("malformed response from pmtad (not JSON: %s at byte %d)", err.text, err.position);
        return NULL;
    }
    if (!json_is_object(response) || !json_is_boolean(json_object_get(response, "ok"))) {
        fail("malformed response from pmtad (not an object with \"ok\")");
        json_decref(response);
        return NULL;
    }
    return response;
}

/* control_ask_quietly - see pmtactl.h */
json_t *
control_ask_quietly(const struct options *o, json_t *request)
{
    char *path = control_socket_path(o), *text = NULL;
    json_t *response = NULL;
    size_t len = 0;

    if (path && access(path, F_OK) == 0 && (text = control_exchange(path, request, &len)) != NULL)
        response = control_decode(text, len);
    if (response && !json_is_true(json_object_get(response, "ok"))) {
        json_decref(response);
        response = NULL;
    }
    free(text);
    free(path);
    json_decref(request);
    return response;
}


/* --- reload -------------------------------------------------------------------- */

/*
 * read_pid_file - the pid in PATH, or 0 (reported). pmtad holds an exclusive
 * flock on its pid file while it runs, so a file we can lock is stale.
 */
static pid_t
read_pid_file(const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    char text[32];
    ssize_t n;
    char *end;
    long pid;

    if (fd < 0) {
        fail("%s%s: %s", errno == ENOENT ? "pmtad is not running: cannot open " : "cannot open ",
             path, strerror(errno));
        unreachable = errno == ENOENT ? EXIT_NOT_RUNNING : errno == EACCES ? EXIT_DENIED : 0;
        return 0;
    }
    if (flock(fd, LOCK_SH | LOCK_NB) == 0) {
        close(fd);
        fail("pmtad is not running (%s is not locked: left over from an earlier run)", path);
        unreachable = EXIT_NOT_RUNNING;
        return 0;
    }
    n = read(fd, text, sizeof(text) - 1);
    close(fd);
    text[n > 0 ? n : 0] = '\0';
    pid = strtol(text, &end, 10);
    if (pid <= 1 || (*end != '\n' && *end != '\0')) {
        fail("%s holds no pid", path);
        return 0;
    }
    return (pid_t)pid;
}

/* signal_pmtad - SIG to PID after checking it is alive; 0 or EXIT_FAILED (reported) */
static int
signal_pmtad(pid_t pid, const char *pid_path, int sig)
{
    if (kill(pid, 0) < 0 && errno == ESRCH) {
        fail("pmtad is not running (pid %ld from %s is gone)", (long)pid, pid_path);
        return EXIT_NOT_RUNNING;
    }
    if (kill(pid, sig) == 0)
        return 0;
    if (errno == EPERM) {
        fail("cannot signal pmtad (pid %ld): %s (this needs root)", (long)pid, strerror(errno));
        return EXIT_DENIED;
    }
    return fail("cannot signal pmtad (pid %ld): %s", (long)pid, strerror(errno));
}

/* pmtad's signal commands: what the signal asks for, in the confirmation */
struct signal_command {
    const char *verb;
    int sig;
    const char *requested;
};

static const struct signal_command signal_commands[] = {
    { "reload", SIGHUP, "reload" },
    { "rotate", SIGUSR1, "log rotation" },
    { "reopen", SIGUSR2, "log reopen" },
};

/*
 * run_signal_command - `pmtactl reload` (SIGHUP; the configuration is loaded
 * here first), `rotate log` (SIGUSR1) and `reopen log` (SIGUSR2): commands
 * pmtad takes as signals
 */
int
run_signal_command(const struct options *o, const char *pattern)
{
    char *run_dir = load_run_directory(o->config_path), *pid_path;
    const struct signal_command *sc = &signal_commands[0];
    pid_t pid;
    int rc = EXIT_FAILED;

    (void)pattern;
    for (size_t i = 0; i < sizeof(signal_commands) / sizeof(signal_commands[0]); i++)
        if (strcmp(o->words[0], signal_commands[i].verb) == 0)
            sc = &signal_commands[i];
    if (run_dir == NULL)
        return fail("cannot read the configuration%s",
                    sc->sig == SIGHUP ? "; pmtad would refuse it" : "");
    pid_path = xasprintf("%s/%s", run_dir, PID_FILE_NAME);
    if ((pid = read_pid_file(pid_path)) <= 0 && unreachable)
        rc = unreachable;
    if (pid > 0 && (rc = signal_pmtad(pid, pid_path, sc->sig)) == 0) {
        if (o->json) {
            json_t *out = json_pack("{s:b, s:I}", "ok", 1, "pid", (json_int_t)pid);
            char *text = json_dumps(out, JSON_COMPACT);

            printf("%s\n", text ? text : "");
            free(text);
            json_decref(out);
        } else {
            printf("%s requested (pmtad pid %ld)\n", sc->requested, (long)pid);
        }
    }
    free(pid_path);
    free(run_dir);
    return rc;
}
