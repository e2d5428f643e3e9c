/*
 * pmtactl.c - the operator's client of qmgr's control socket, and reload
 *
 * NAME
 *   pmtactl - show and steer the queues of a running pmtad
 *
 * SYNOPSIS
 *   pmtactl [-c FILE] [--socket PATH] [--json] COMMAND [OPTIONS] [PATTERN]
 *
 *   show status
 *   show queues [--mode=normal|backoff] [--paused=yes|no] [--maxitems=N]
 *               [--sort=name|rcpt] [--mode-events] [PATTERN]
 *   show domains [--maxitems=N] [PATTERN]
 *   show vmtas [--maxitems=N] [PATTERN]
 *   show settings DOMAIN[/VMTA]
 *   set queue --mode=normal|backoff PATTERN
 *   pause queue PATTERN
 *   resume queue PATTERN
 *   schedule PATTERN
 *   delete [--dsn] PATTERN | delete --queue=PATTERN [--dsn]
 *   set warmup-clock INTERVAL
 *   list, show jobs/topqueues/topdomains/version/registration, disable|enable
 *   source, reset counters, rotate acct, test config: pmtactl_cmds.c
 *   reload
 *   rotate log
 *   reopen log
 *
 * DESCRIPTION
 *   Every command but reload is one request on RUNDIR/control (RUNDIR is the
 *   configuration's run-directory; --socket overrides): one JSON object on
 *   one line, {"cmd": NAME, ...}, answered by one JSON object on one line,
 *   {"ok": true, ...} or {"ok": false, "error": TEXT}. The answer is printed
 *   as a PowerMTA-like table or, with --json, exactly as received.
 *   reload sends SIGHUP to the pmtad whose pid is in RUNDIR/pmtad.pid, once
 *   the configuration has loaded here without errors.
 *   Options may come before or after the command words.
 *
 * DIAGNOSTICS
 *   Exit 0 on success; 1 when pmtad refuses or answers nonsense; 2 on a
 *   usage error; 3 when pmtad is not running; 4 when nothing matches; 5
 *   when the caller may not (pmtactl.h, EXIT_*).
 *
 * Owns: the connection to the control socket, the request it builds and
 * the response buffer it reads (at most RESPONSE_MAX bytes).
 *
 * SECURITY
 *   Not setuid; the control socket is root-only, so only root gets an
 *   answer. All JSON goes through jansson. Text in responses (reply lines
 *   of remote servers among it) is printed with control bytes replaced.
 *   Reads are bounded in size and time (SOCKET_TIMEOUT_S).
 */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
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
#include "msg.h"
#include "xalloc.h"
#include "pmtactl.h"

#define DEFAULT_CONFIG      "/etc/pmta/config"
#define DEFAULT_RUN_DIR     "/run/pmta"
#define CONTROL_SOCKET_NAME "control"
#define PID_FILE_NAME       "pmtad.pid"
#define RESPONSE_MAX        (16 * 1024 * 1024)
#define SOCKET_TIMEOUT_S    30
#define TABLE_WIDTH         120
#define QUEUE_COLUMN_MAX    36
#define ERROR_COLUMN_MIN    24

/* --- messages ------------------------------------------------------------- */

/* fail - print "pmtactl: ..." on stderr; returns EXIT_FAILED */
int
fail(const char *fmt, ...)
{
    va_list ap;

    fputs("pmtactl: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    return EXIT_FAILED;
}

/* usage - the --help text */
static void
usage(FILE *out)
{
    fprintf(out,
            "usage: pmtactl [-c FILE] [--socket PATH] [--json] COMMAND [OPTIONS] [PATTERN]\n"
            "       pmtactl --version | --help\n"
            "\n"
            "commands:\n"
            "  show status                          counters and queue totals of pmtad\n"
            "  show queues [--mode=normal|backoff] [--paused=yes|no] [--maxitems=N]\n"
            "              [--sort=name|rcpt] [--mode-events] [PATTERN]\n"
            "                                       the queues, most recipients first\n"
            "  show domains [--maxitems=N] [PATTERN]\n"
            "                                       queues summed by domain\n"
            "  show vmtas [--maxitems=N] [PATTERN]  queues summed by virtual MTA\n"
            "  show topqueues | topdomains [--maxitems=N] [PATTERN]\n"
            "                                       the same, most recipients first\n"
            "  show jobs [--maxitems=N]             queued recipients and kbytes per job id\n"
            "  show version | registration          versions of pmtactl and pmtad\n"
            "  show settings DOMAIN[/VMTA]          the effective settings of that queue\n"
            "  list [--queue=P] [--jobId=ID] [--rcpt=A] [--orig=A] [--maxitems=N] [P]\n"
            "                                       queued recipients (100 unless --maxitems)\n"
            "  set queue --mode=normal|backoff PATTERN\n"
            "                                       put queues into (or out of) backoff mode\n"
            "  pause queue PATTERN                  stop delivering from queues\n"
            "  resume queue PATTERN                 deliver from paused queues again\n"
            "  schedule PATTERN                     retry deferred recipients now\n"
            "  delete [--dsn] [--queue=P] [--jobId=ID] [--rcpt=A] [--orig=A] [--older-than=T] [P]\n"
            "                                       drop the recipients that match (not those\n"
            "                                       in delivery); --dsn bounces them\n"
            "  disable source [--reenable-after=T] IP[/VMTA] | enable source IP[/VMTA]\n"
            "                                       stop (start) connecting from IP\n"
            "  reset counters                       zero delivered/bounced/deferred counts\n"
            "  rotate acct                          move the accounting files now\n"
            "  test config                          check the configuration file\n"
            "  resolve [--connect] DOMAIN[/VMTA]    MX answer and the hosts pmtad would try;\n"
            "                                       --connect: their greeting and EHLO reply\n"
            "  set warmup-clock INTERVAL            move the warm-up plans' clock ahead\n"
            "                                       (tests: days pass at once)\n"
            "  reload                               make pmtad re-read its configuration\n"
            "  rotate log                           log-file -> log-file.1 ... (log-rotate kept)\n"
            "  reopen log                           open log-file anew (after logrotate moved it)\n"
            "\n"
            "PATTERN is DOMAIN[/VMTA] with shell wildcards (*.example.com/*); without\n"
            "/VMTA it means every virtual MTA of the domain.\n"
            "\n"
            "  -c, --config FILE     configuration file (default " DEFAULT_CONFIG ")\n"
            "      --socket PATH     control socket (default RUNDIR/" CONTROL_SOCKET_NAME ")\n"
            "      --json            print pmtad's JSON response as is\n"
            "      --mode=MODE       show queues / set queue: normal or backoff\n"
            "      --paused=yes|no   show queues: only paused or only running queues\n"
            "      --maxitems=N      show queues: at most N queues (default 20, 0 = all)\n"
            "      --sort=name|rcpt  show queues: order (default rcpt)\n"
            "      --mode-events     show queues: also list each queue's mode changes\n"
            "      --dsn             delete: send a bounce (DSN) for each deleted recipient\n"
            "      --queue=PATTERN   list, delete: the queues (PowerMTA's spelling of PATTERN)\n"
            "      --jobId=ID        list, delete: recipients of that job (X-Job)\n"
            "      --rcpt=ADDRESS    list, delete: recipients (shell wildcards, any case)\n"
            "      --orig=ADDRESS    list, delete: by envelope sender (shell wildcards)\n"
            "      --older-than=TIME delete: queued longer than TIME (1d12h, 30m, ...)\n"
            "      --reenable-after=TIME  disable source: enable it again after TIME\n"
            "\n"
            "exit status: 0 done, 1 pmtad refused, 2 usage, 3 pmtad not running,\n"
            "4 nothing matches, 5 not allowed (root only)\n"
            "  -h, --help            this text\n"
            "      --version         print the version\n");
}

/* usage_error - a usage problem: the message, the usage text; returns EXIT_USAGE */
int
usage_error(const char *fmt, ...)
{
    va_list ap;

    fputs("pmtactl: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputs("\n\n", stderr);
    usage(stderr);
    return EXIT_USAGE;
}

/* --- command line ---------------------------------------------------------- */

/* parse_maxitems - a non-negative decimal count; false when TEXT is not one */
static bool
parse_maxitems(const char *text, long long *out)
{
    char *end;

    if (!isdigit((unsigned char)text[0]))
        return false;
    errno = 0;
    *out = strtoll(text, &end, 10);
    return errno == 0 && *end == '\0';
}

/* parse_yes_no - yes|no (also true|false, on|off); false when TEXT is neither */
static bool
parse_yes_no(const char *text, bool *out)
{
    static const char *const yes[] = { "yes", "true", "on" };
    static const char *const no[] = { "no", "false", "off" };

    for (size_t i = 0; i < sizeof(yes) / sizeof(yes[0]); i++) {
        if (strcmp(text, yes[i]) == 0)
            return (*out = true);
        if (strcmp(text, no[i]) == 0)
            return !(*out = false);
    }
    return false;
}

/* set_command_option - store --NAME=VALUE; EXIT_USAGE (reported) on a bad value, else 0 */
static int
set_command_option(struct options *o, const char *name, const char *value)
{
    if (strcmp(name, "mode") == 0) {
        if (strcmp(value, "normal") && strcmp(value, "backoff"))
            return usage_error("--mode must be normal or backoff, not '%s'", value);
        o->mode = value;
        o->given |= OPT_MODE;
    } else if (strcmp(name, "paused") == 0) {
        if (!parse_yes_no(value, &o->paused))
            return usage_error("--paused must be yes or no, not '%s'", value);
        o->given |= OPT_PAUSED;
    } else if (strcmp(name, "queue") == 0) {
        o->queue = value;
        o->given |= OPT_QUEUE;
    } else if (strcmp(name, "jobId") == 0 || strcmp(name, "jobid") == 0) {
        o->job = value;
        o->given |= OPT_JOB;
    } else if (strcmp(name, "rcpt") == 0) {
        o->rcpt = value;
        o->given |= OPT_RCPT;
    } else if (strcmp(name, "orig") == 0) {
        o->orig = value;
        o->given |= OPT_ORIG;
    } else if (strcmp(name, "older-than") == 0) {
        if (!parse_interval(value, &o->older_than))
            return usage_error("--older-than must be a time like 2h or 1d12h, not '%s'", value);
        o->given |= OPT_OLDER_THAN;
    } else if (strcmp(name, "reenable-after") == 0) {
        if (!parse_interval(value, &o->reenable_after) || o->reenable_after == 0)
            return usage_error("--reenable-after must be a time like 30m, not '%s'", value);
        o->given |= OPT_REENABLE_AFTER;
    } else if (strcmp(name, "maxitems") == 0) {
        if (!parse_maxitems(value, &o->maxitems))
            return usage_error("--maxitems must be a number (0 = all), not '%s'", value);
        o->given |= OPT_MAXITEMS;
    } else {
        if (strcmp(value, "name") && strcmp(value, "rcpt"))
            return usage_error("--sort must be name or rcpt, not '%s'", value);
        o->sort = value;
        o->given |= OPT_SORT;
    }
    return 0;
}

/*
 * parse_long_option - ARGV[*I] is "--NAME[=VALUE]"; options taking a value
 * also accept it as the next argument. 0, or EXIT_USAGE (reported).
 */
static int
parse_long_option(struct options *o, int argc, char **argv, int *i)
{
    static const char *const with_value[] = { "config",        "socket", "mode",  "paused",
                                              "maxitems",      "sort",   "queue", "jobId",
                                              "jobid",         "rcpt",   "orig",  "older-than",
                                              "reenable-after" };
    const char *arg = argv[*i] + 2, *eq = strchr(arg, '=');
    size_t namelen = eq ? (size_t)(eq - arg) : strlen(arg);
    char name[32];
    const char *value = eq ? eq + 1 : NULL;
    bool takes_value = false;

    if (namelen >= sizeof(name))
        return usage_error("unknown option '%s'", argv[*i]);
    memcpy(name, arg, namelen);
    name[namelen] = '\0';
    for (size_t k = 0; k < sizeof(with_value) / sizeof(with_value[0]); k++)
        takes_value |= strcmp(name, with_value[k]) == 0;
    if (!takes_value) {
        if (value)
            return usage_error("option --%s takes no value", name);
        if (strcmp(name, "json") == 0)
            o->json = true;
        else if (strcmp(name, "help") == 0)
            o->help = true;
        else if (strcmp(name, "version") == 0)
            o->version = true;
        else if (strcmp(name, "mode-events") == 0)
            o->given |= OPT_MODE_EVENTS;
        else if (strcmp(name, "dsn") == 0)
            o->given |= OPT_DSN;
        else if (strcmp(name, "connect") == 0)
            o->given |= OPT_CONNECT;
        else
            return usage_error("unknown option '%s'", argv[*i]);
        return 0;
    }
    if (value == NULL) {
        if (*i + 1 >= argc)
            return usage_error("option --%s needs a value", name);
        value = argv[++*i];
    }
    if (strcmp(name, "config") == 0)
        o->config_path = value;
    else if (strcmp(name, "socket") == 0)
        o->socket_path = value;
    else
        return set_command_option(o, name, value);
    return 0;
}

/* add_word - a command word or the pattern; 0 or EXIT_USAGE */
static int
add_word(struct options *o, const char *word)
{
    if (o->nwords == MAX_WORDS)
        return usage_error("too many arguments");
    o->words[o->nwords++] = word;
    return 0;
}

/* parse_short_option - -c FILE, -cFILE, -h; 0 or EXIT_USAGE */
static int
parse_short_option(struct options *o, int argc, char **argv, int *i)
{
    const char *arg = argv[*i];

    if (strcmp(arg, "-h") == 0) {
        o->help = true;
        return 0;
    }
    if (strncmp(arg, "-c", 2) != 0)
        return usage_error("unknown option '%s'", arg);
    if (arg[2] != '\0') {
        o->config_path = arg + 2;
        return 0;
    }
    if (*i + 1 >= argc)
        return usage_error("option -c needs a value");
    o->config_path = argv[++*i];
    return 0;
}

/* parse_args - options anywhere, words in order; 0 or EXIT_USAGE (reported) */
static int
parse_args(int argc, char **argv, struct options *o)
{
    bool words_only = false;
    int rc = 0;

    memset(o, 0, sizeof(*o));
    o->config_path = DEFAULT_CONFIG;
    for (int i = 1; i < argc && rc == 0; i++) {
        const char *arg = argv[i];

        if (words_only || arg[0] != '-' || arg[1] == '\0')
            rc = add_word(o, arg);
        else if (strcmp(arg, "--") == 0)
            words_only = true;
        else if (arg[1] == '-')
            rc = parse_long_option(o, argc, argv, &i);
        else
            rc = parse_short_option(o, argc, argv, &i);
    }
    return rc;
}

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

static json_t *ask_quietly(const struct options *o, json_t *request);
static void print_queue_state(json_t *q);

/*
 * print_live_state - after `show settings`: what the running pmtad says about
 * those queues now (a domain whose mail joins a rollup: that queue's state)
 */
static void
print_live_state(const struct options *o, const char *queue)
{
    json_t *r = ask_quietly(o, json_pack("{s:s, s:s, s:i, s:b}", "cmd", "show-queues", "queue",
                                         queue, "maxitems", 0, "all", 1));
    json_t *queues = r ? json_object_get(r, "queues") : NULL, *q;
    size_t i;

    if (!json_is_array(queues)) {
        printf("\n(pmtad does not answer: no live state)\n");
        json_decref(r);
        return;
    }
    printf("\nnow:\n");
    if (json_array_size(queues) == 0)
        printf("  no queue %s yet (no mail for it since pmtad started)\n", queue);
    json_array_foreach(queues, i, q)
    {
        const char *joins = json_string_value(json_object_get(q, "joins"));
        json_t *jr, *jq;

        print_queue_state(q);
        if (!joins)
            continue;
        jr = ask_quietly(o, json_pack("{s:s, s:s, s:i, s:b}", "cmd", "show-queues", "queue", joins,
                                      "maxitems", 0, "all", 1));
        jq = jr ? json_array_get(json_object_get(jr, "queues"), 0) : NULL;
        if (jq)
            print_queue_state(jq);
        json_decref(jr);
    }
    json_decref(r);
}

/*
 * run_show_settings - `pmtactl show settings DOMAIN[/VMTA]`: read from the
 * configuration file itself (what pmtad runs is that file once reloaded),
 * the same lines as pmtad --show-settings
 */
static int
run_show_settings(const struct options *o, const char *queue)
{
    unsigned nerrors = 0;
    struct cfg *c = cfg_load(o->config_path, print_config_error, (void *)o->config_path, &nerrors);
    char err[300];
    int rc;

    if (c == NULL)
        return fail("%s: cannot load the configuration (%u error%s)", o->config_path, nerrors,
                    nerrors == 1 ? "" : "s");
    rc = cfg_show_settings(c, queue, stdout, err, sizeof err);
    cfg_free(c);
    if (rc < 0)
        return fail("show settings %s: %s", queue, err);
    print_live_state(o, queue);
    return 0;
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

/* connect_control - a connected socket to PATH, or -1 (reported; UNREACHABLE set) */
static int
connect_control(const char *path)
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

/* send_all - write LEN bytes of DATA to FD; 0, or -1 (reported) */
static int
send_all(int fd, const char *data, size_t len)
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
 * receive_line - the response line (without its "\n") in fresh memory, its
 * length in *LEN; NULL (reported) on error, timeout, or more than RESPONSE_MAX
 * bytes. A last line without "\n" before the server closes is accepted.
 */
static char *
receive_line(int fd, size_t *len)
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

/* exchange - send REQUEST on PATH, return the raw response line; NULL (reported) on failure */
static char *
exchange(const char *path, json_t *request, size_t *len)
{
    char *text = json_dumps(request, JSON_COMPACT), *line, *response = NULL;
    int fd;

    if (text == NULL) {
        fail("cannot encode the request");
        return NULL;
    }
    line = xasprintf("%s\n", text);
    free(text);
    if ((fd = connect_control(path)) >= 0) {
        if (send_all(fd, line, strlen(line)) == 0)
            response = receive_line(fd, len);
        close(fd);
    }
    free(line);
    return response;
}

/* decode_response - the response object with a boolean "ok"; NULL (reported) otherwise */
static json_t *
decode_response(const char *text, size_t len)
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

/* --- printing helpers -------------------------------------------------------- */

/*
 * printable - TEXT without trailing white space and with other control bytes
 * replaced by '?', cut to WIDTH bytes ("..." marks a cut); caller frees
 */
char *
printable(const char *text, size_t width)
{
    char *out = xstrdup(text);
    size_t len = strlen(out);

    while (len > 0 && isspace((unsigned char)out[len - 1]))
        out[--len] = '\0';
    for (char *p = out; *p; p++)
        if (iscntrl((unsigned char)*p))
            *p = '?';
    if (strlen(out) > width) {
        out[width] = '\0';
        if (width >= 3)
            memcpy(out + width - 3, "...", 3);
    }
    return out;
}

/* get_text - string member KEY of OBJ, or "" */
const char *
get_text(json_t *obj, const char *key)
{
    const char *s = json_string_value(json_object_get(obj, key));

    return s ? s : "";
}

/* format_count - integer member KEY of OBJ as text in BUF, "-" when absent */
const char *
format_count(json_t *obj, const char *key, char *buf, size_t size)
{
    json_t *v = json_object_get(obj, key);

    if (json_is_integer(v))
        snprintf(buf, size, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
    else
        snprintf(buf, size, "-");
    return buf;
}

/* format_duration - S seconds as "1d2h3m4s" (leading zero units left out) */
const char *
format_duration(long long s, char *buf, size_t size)
{
    long long d = s / 86400, h = s / 3600 % 24, m = s / 60 % 60, sec = s % 60;

    if (d > 0)
        snprintf(buf, size, "%lldd%lldh%lldm%llds", d, h, m, sec);
    else if (h > 0)
        snprintf(buf, size, "%lldh%lldm%llds", h, m, sec);
    else if (m > 0)
        snprintf(buf, size, "%lldm%llds", m, sec);
    else
        snprintf(buf, size, "%llds", sec);
    return buf;
}

/* --- show status ------------------------------------------------------------- */

/* print_field - one "label: value" line, values aligned */
static void
print_field(const char *label, const char *value)
{
    printf("%-22s %s\n", label, value);
}

int
print_status(const struct options *o, json_t *response)
{
    json_t *st = json_object_get(response, "status");
    json_t *rc = json_object_get(st, "recipients");
    json_t *uptime = json_object_get(st, "uptime_s");
    static const struct {
        const char *label, *key;
        bool in_rcpts;
    } rows[] = {
        { "recipients queued:", "queued", true },
        { "  ready:", "ready", true },
        { "  deferred:", "deferred", true },
        { "  in flight:", "inflight", true },
        { "messages queued:", "messages", false },
        { "queues:", "queues", false },
        { "  in backoff:", "queues_backoff", false },
        { "  paused:", "queues_paused", false },
        { "connections out:", "connections_out", false },
        { "smtp-out processes:", "smtp_out_processes", false },
        { "delivered:", "delivered", false },
        { "bounced:", "bounced", false },
        { "deferrals:", "deferred", false },
    };
    char buf[64];

    (void)o;
    if (!json_is_object(st))
        return fail("malformed response from pmtad (no \"status\" object)");
    print_field("pid:", format_count(st, "pid", buf, sizeof(buf)));
    print_field("uptime:", json_is_integer(uptime)
                               ? format_duration(json_integer_value(uptime), buf, sizeof(buf))
                               : "-");
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++)
        print_field(rows[i].label,
                    format_count(rows[i].in_rcpts ? rc : st, rows[i].key, buf, sizeof(buf)));
    return 0;
}

/* --- show queues ------------------------------------------------------------- */

void
add_show_queues_args(json_t *req, const struct options *o, const char *pattern)
{
    if (o->given & OPT_MODE)
        json_object_set_new(req, "mode", json_string(o->mode));
    if (o->given & OPT_PAUSED)
        json_object_set_new(req, "paused", json_boolean(o->paused));
    if (o->given & OPT_MAXITEMS)
        json_object_set_new(req, "maxitems", json_integer(o->maxitems));
    if (o->given & OPT_SORT)
        json_object_set_new(req, "sort", json_string(o->sort));
    if (pattern)
        json_object_set_new(req, "queue", json_string(pattern));
}

/* queue_column_width - width of the queue column: the longest name, within limits */
static int
queue_column_width(json_t *queues)
{
    size_t width = strlen("queue"), i;
    json_t *q;

    json_array_foreach(queues, i, q)
    {
        size_t len = strlen(get_text(q, "name"));

        if (len > width)
            width = len;
    }
    return (int)(width > QUEUE_COLUMN_MAX ? QUEUE_COLUMN_MAX : width);
}

/* print_queue_domains - under a rollup or queue-to queue: the domains whose mail it holds */
static void
print_queue_domains(json_t *q)
{
    json_t *domains = json_object_get(q, "domains"), *d;
    char *kind = printable(get_text(q, "kind"), 16);
    size_t i, used = 0, n = json_array_size(domains);

    if (json_is_array(domains) && n > 0) {
        used = (size_t)printf("  %s of %zu domain%s:", kind, n, n == 1 ? "" : "s");
        json_array_foreach(domains, i, d)
        {
            char *name = printable(json_string_value(d) ? json_string_value(d) : "", 64);

            if (used + strlen(name) + 2 > TABLE_WIDTH) {
                printf("\n   ");
                used = 3;
            }
            used += (size_t)printf(" %s%s", name, i + 1 < n ? "," : "");
            free(name);
        }
        printf("\n");
    }
    free(kind);
}

/* print_queue_limit - under a queue with ready mail: what holds it back now, if anything */
static void
print_queue_limit(json_t *q)
{
    char *limit = printable(get_text(q, "limit"), TABLE_WIDTH - 14);

    if (*limit)
        printf("  held back: %s\n", limit);
    free(limit);
}

/* print_queue_row - one row of the queue table; QW is the queue column width */
static void
print_queue_row(json_t *q, int qw)
{
    char rcpts[32], ready[32], deferred[32], inflight[32], conns[32], retry[32];
    json_t *retry_in = json_object_get(q, "retry_in_s");
    json_t *paused = json_object_get(q, "paused");
    char *name = printable(get_text(q, "name"), SIZE_MAX), *mode, *error;
    int used, room;

    if (!json_is_integer(retry_in))
        snprintf(retry, sizeof(retry), "-");
    else if (json_integer_value(retry_in) <= 0)
        snprintf(retry, sizeof(retry), "-");
    else
        format_duration(json_integer_value(retry_in), retry, sizeof(retry));
    mode = printable(get_text(q, "mode"), 7);
    used = printf("%-*s %-7s %-6s %7s %7s %8s %8s %5s %8s", qw, name, mode,
                  json_is_boolean(paused) ? (json_is_true(paused) ? "yes" : "no") : "-",
                  format_count(q, "recipients", rcpts, sizeof(rcpts)),
                  format_count(q, "ready", ready, sizeof(ready)),
                  format_count(q, "deferred", deferred, sizeof(deferred)),
                  format_count(q, "inflight", inflight, sizeof(inflight)),
                  format_count(q, "connections", conns, sizeof(conns)), retry);
    room = TABLE_WIDTH - used - 1;
    error = printable(get_text(q, "last_error"),
                      (size_t)(room < ERROR_COLUMN_MIN ? ERROR_COLUMN_MIN : room));
    printf("%s%s\n", *error ? " " : "", error);
    print_queue_domains(q);
    print_queue_limit(q);
    free(name);
    free(mode);
    free(error);
}

/* print_mode_events - --mode-events: the mode changes of each listed queue */
static void
print_mode_events(json_t *queues)
{
    size_t i, k;
    json_t *q, *ev;

    json_array_foreach(queues, i, q)
    {
        json_t *events = json_object_get(q, "mode_events");
        char *name;

        if (!json_is_array(events) || json_array_size(events) == 0)
            continue;
        name = printable(get_text(q, "name"), SIZE_MAX);
        printf("\nmode events of %s:\n", name);
        free(name);
        json_array_foreach(events, k, ev)
        {
            char *when = printable(get_text(ev, "time"), 40);
            char *from = printable(get_text(ev, "from"), 10),
                 *to = printable(get_text(ev, "to"), 10);
            char *why = printable(get_text(ev, "why"), TABLE_WIDTH);

            printf("  %s  %s -> %s  %s\n", when, from, to, why);
            free(when);
            free(from);
            free(to);
            free(why);
        }
    }
}

/* print_queue_state - show settings' live part: one queue's state, what holds it back, its
 * mode events */
static void
print_queue_state(json_t *q)
{
    char *name = printable(get_text(q, "name"), SIZE_MAX);
    char *joins = printable(get_text(q, "joins"), SIZE_MAX);
    char rcpts[32], ready[32], deferred[32], conns[32];
    json_t *events = json_object_get(q, "mode_events"), *ev;
    size_t k;

    if (*joins) {
        printf("  queue %s: its mail joins %s\n", name, joins);
        goto out;
    }
    printf("  queue %s: mode %s%s, %s recipient(s) (%s ready, %s deferred), %s connection(s)\n",
           name, get_text(q, "mode"), json_is_true(json_object_get(q, "paused")) ? ", paused" : "",
           format_count(q, "recipients", rcpts, sizeof rcpts),
           format_count(q, "ready", ready, sizeof ready),
           format_count(q, "deferred", deferred, sizeof deferred),
           format_count(q, "connections", conns, sizeof conns));
    print_queue_domains(q);
    if (*get_text(q, "limit"))
        print_queue_limit(q);
    else
        printf("  nothing holds it back\n");
    if (json_is_array(events) && json_array_size(events) > 0) {
        printf("  mode events:\n");
        json_array_foreach(events, k, ev)
        {
            char *why = printable(get_text(ev, "why"), TABLE_WIDTH);

            printf("    %s  %s -> %s  %s\n", get_text(ev, "time"), get_text(ev, "from"),
                   get_text(ev, "to"), why);
            free(why);
        }
    }
out:
    free(name);
    free(joins);
}

int
print_queues(const struct options *o, json_t *response)
{
    json_t *queues = json_object_get(response, "queues");
    json_t *total = json_object_get(response, "total");
    size_t i;
    json_t *q;
    int qw;

    if (!json_is_array(queues))
        return fail("malformed response from pmtad (no \"queues\" array)");
    qw = queue_column_width(queues);
    printf("%-*s %-7s %-6s %7s %7s %8s %8s %5s %8s %s\n", qw, "queue", "mode", "paused", "rcpts",
           "ready", "deferred", "inflight", "conns", "retry-in", "last error");
    json_array_foreach(queues, i, q) print_queue_row(q, qw);
    printf("%zu of %" JSON_INTEGER_FORMAT " queues\n", json_array_size(queues),
           json_is_integer(total) ? json_integer_value(total)
                                  : (json_int_t)json_array_size(queues));
    if (o->given & OPT_MODE_EVENTS)
        print_mode_events(queues);
    return 0;
}

/* --- show domains, show vmtas --------------------------------------------------- */

void
add_show_groups_args(json_t *req, const struct options *o, const char *pattern)
{
    if (pattern)
        json_object_set_new(req, "queue", json_string(pattern));
    if (o->given & OPT_MAXITEMS)
        json_object_set_new(req, "maxitems", json_integer(o->maxitems));
}

/* print_groups - the table of show domains (KEY "domains") or show vmtas ("vmtas") */
/* print_warmup - under a virtual MTA with a warm-up plan: each source address's step and cap */
static void
print_warmup(json_t *g)
{
    json_t *list = json_object_get(g, "warmup"), *w;
    size_t i;

    json_array_foreach(list, i, w)
    {
        char *plan = printable(get_text(w, "plan"), 40),
             *src = printable(get_text(w, "source"), 48);
        char *dest = printable(get_text(w, "destination"), 60), cap[32];
        json_int_t c = json_integer_value(json_object_get(w, "cap"));

        if (c > 0)
            snprintf(cap, sizeof cap, "cap %" JSON_INTEGER_FORMAT, c);
        else
            snprintf(cap, sizeof cap, "no cap (warm)");
        printf("  warm-up %s %s -> %s: day %" JSON_INTEGER_FORMAT ", step %" JSON_INTEGER_FORMAT
               ", %s, %" JSON_INTEGER_FORMAT " sent today (%" JSON_INTEGER_FORMAT
               " deferred, %" JSON_INTEGER_FORMAT " complaints)\n",
               plan, src, dest, json_integer_value(json_object_get(w, "day")),
               json_integer_value(json_object_get(w, "step")), cap,
               json_integer_value(json_object_get(w, "sent")),
               json_integer_value(json_object_get(w, "deferrals")),
               json_integer_value(json_object_get(w, "complaints")));
        free(plan);
        free(src);
        free(dest);
    }
}

static int
print_groups(json_t *response, const char *key, const char *title, const char *noun)
{
    json_t *groups = json_object_get(response, key), *g;
    json_int_t sum = 0;
    size_t i;

    if (!json_is_array(groups))
        return fail("malformed response from pmtad (no \"%s\" array)", key);
    json_array_foreach(groups, i, g) sum += json_integer_value(json_object_get(g, "recipients"));
    printf("%-36s %6s %8s %6s %5s %7s %6s %s\n", title, "queues", "rcpts", "%rcpts", "conns",
           "backoff", "paused", "last error");
    json_array_foreach(groups, i, g)
    {
        char nq[32], nr[32], nc[32], nb[32], np[32];
        json_int_t r = json_integer_value(json_object_get(g, "recipients"));
        char *name = printable(get_text(g, "name"), SIZE_MAX);
        char *error = printable(get_text(g, "last_error"), ERROR_COLUMN_MIN + 10);

        printf("%-36s %6s %8s %5.1f%% %5s %7s %6s %s\n", name,
               format_count(g, "queues", nq, sizeof(nq)),
               format_count(g, "recipients", nr, sizeof(nr)),
               sum ? 100.0 * (double)r / (double)sum : 0.0,
               format_count(g, "connections", nc, sizeof(nc)),
               format_count(g, "backoff", nb, sizeof(nb)),
               format_count(g, "paused", np, sizeof(np)), error);
        print_warmup(g);
        free(name);
        free(error);
    }
    printf("%zu of %" JSON_INTEGER_FORMAT " %s\n", json_array_size(groups),
           json_integer_value(json_object_get(response, "total")), noun);
    return 0;
}

int
print_domains(const struct options *o, json_t *response)
{
    (void)o;
    return print_groups(response, "domains", "domain", "domains");
}

static int
print_vmtas(const struct options *o, json_t *response)
{
    (void)o;
    return print_groups(response, "vmtas", "virtual mta", "virtual MTAs");
}

/* --- set queue, pause queue, resume queue, schedule ---------------------------- */

/* add_pattern_arg - "queue": PATTERN */
void
add_pattern_arg(json_t *req, const struct options *o, const char *pattern)
{
    (void)o;
    json_object_set_new(req, "queue", json_string(pattern));
}

/* add_set_mode_args - "queue": PATTERN, "mode": MODE */
static void
add_set_mode_args(json_t *req, const struct options *o, const char *pattern)
{
    add_pattern_arg(req, o, pattern);
    json_object_set_new(req, "mode", json_string(o->mode));
}

/* changed_anything - a change response matched a queue (changed or already so) */
bool
changed_anything(json_t *response)
{
    json_t *queues = json_object_get(response, "queues");
    json_t *changed = json_object_get(response, "changed");
    json_t *matched = json_object_get(response, "matched");

    return json_array_size(queues) > 0 ||
           (json_is_integer(changed) && json_integer_value(changed) > 0) ||
           (json_is_integer(matched) && json_integer_value(matched) > 0);
}

/* print_changed - "queue X: WHAT" for each queue named in RESPONSE */
void
print_changed(json_t *response, const char *what)
{
    json_t *queues = json_object_get(response, "queues"), *q;
    char count[32];
    size_t i;

    if (json_array_size(queues) == 0) {
        printf("no change: %s matching queue(s) already so (%s)\n",
               format_count(response, "matched", count, sizeof(count)), what);
        return;
    }
    json_array_foreach(queues, i, q)
    {
        char *name = printable(json_is_string(q) ? json_string_value(q) : "?", SIZE_MAX);

        printf("queue %s: %s\n", name, what);
        free(name);
    }
}

static int
print_set_queue_mode(const struct options *o, json_t *response)
{
    char what[64];

    snprintf(what, sizeof(what), "mode set to %s", o->mode);
    print_changed(response, what);
    return 0;
}

static int
print_pause_queue(const struct options *o, json_t *response)
{
    (void)o;
    print_changed(response, "paused");
    return 0;
}

static int
print_resume_queue(const struct options *o, json_t *response)
{
    (void)o;
    print_changed(response, "resumed");
    return 0;
}

/* scheduled_anything - a schedule response counts at least one queue */
static bool
scheduled_anything(json_t *response)
{
    json_t *n = json_object_get(response, "queues");

    return !json_is_integer(n) || json_integer_value(n) > 0;
}

static int
print_schedule(const struct options *o, json_t *response)
{
    char nqueues[32], nrcpts[32];

    (void)o;
    format_count(response, "queues", nqueues, sizeof(nqueues));
    printf("%s queue%s scheduled (%s recipients)\n", nqueues, strcmp(nqueues, "1") ? "s" : "",
           format_count(response, "recipients", nrcpts, sizeof(nrcpts)));
    return 0;
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
static int
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

/* --- dispatch -------------------------------------------------------------------- */

/* add_clock_args - set warmup-clock INTERVAL: "advance": INTERVAL (pmtad checks it) */
static void
add_clock_args(json_t *req, const struct options *o, const char *interval)
{
    (void)o;
    json_object_set_new(req, "advance", json_string(interval));
}

static int
print_warmup_clock(const struct options *o, json_t *response)
{
    (void)o;
    printf("warm-up clock advanced: day %" JSON_INTEGER_FORMAT " now\n",
           json_integer_value(json_object_get(response, "day")));
    return 0;
}

static const struct command commands[] = {
    { "show", "status", 0, 0, PATTERN_NONE, "status", NULL, NULL, print_status, NULL },
    { "show", "queues", OPT_MODE | OPT_PAUSED | OPT_MAXITEMS | OPT_SORT | OPT_MODE_EVENTS, 0,
      PATTERN_OPTIONAL, "show-queues", add_show_queues_args, NULL, print_queues, NULL },
    { "show", "topqueues", OPT_MODE | OPT_PAUSED | OPT_MAXITEMS | OPT_MODE_EVENTS, 0,
      PATTERN_OPTIONAL, "show-queues", add_top_queues_args, NULL, print_queues, NULL },
    { "show", "domains", OPT_MAXITEMS, 0, PATTERN_OPTIONAL, "show-domains", add_show_groups_args,
      NULL, print_domains, NULL },
    { "show", "topdomains", OPT_MAXITEMS, 0, PATTERN_OPTIONAL, "show-domains", add_show_groups_args,
      NULL, print_domains, NULL },
    { "show", "vmtas", OPT_MAXITEMS, 0, PATTERN_OPTIONAL, "show-vmtas", add_show_groups_args, NULL,
      print_vmtas, NULL },
    { "show", "jobs", OPT_MAXITEMS, 0, PATTERN_NONE, "show-jobs", add_maxitems_arg, NULL,
      print_jobs, NULL },
    { "show", "version", 0, 0, PATTERN_NONE, "status", NULL, NULL, print_version, NULL },
    { "show", "registration", 0, 0, PATTERN_NONE, NULL, NULL, NULL, NULL, run_show_registration },
    { "list", NULL, OPT_QUEUE | OPT_JOB | OPT_RCPT | OPT_ORIG | OPT_MAXITEMS, 0, PATTERN_OPTIONAL,
      "list", add_filter_args, listed_anything, print_list, NULL },
    { "set", "queue", OPT_MODE, OPT_MODE, PATTERN_REQUIRED, "set-queue-mode", add_set_mode_args,
      changed_anything, print_set_queue_mode, NULL },
    { "pause", "queue", 0, 0, PATTERN_REQUIRED, "pause-queue", add_pattern_arg, changed_anything,
      print_pause_queue, NULL },
    { "resume", "queue", 0, 0, PATTERN_REQUIRED, "resume-queue", add_pattern_arg, changed_anything,
      print_resume_queue, NULL },
    { "schedule", NULL, 0, 0, PATTERN_REQUIRED, "schedule", add_pattern_arg, scheduled_anything,
      print_schedule, NULL },
    { "delete", NULL, OPT_DSN | OPT_QUEUE | OPT_JOB | OPT_RCPT | OPT_ORIG | OPT_OLDER_THAN, 0,
      PATTERN_OPTIONAL, "delete", add_delete_args, deleted_anything, print_delete, NULL },
    { "disable", "source", OPT_REENABLE_AFTER, 0, PATTERN_REQUIRED, "disable-source",
      add_source_args, NULL, print_source, NULL },
    { "enable", "source", 0, 0, PATTERN_REQUIRED, "enable-source", add_source_args, NULL,
      print_source, NULL },
    { "reset", "counters", 0, 0, PATTERN_NONE, "reset-counters", NULL, NULL, print_reset, NULL },
    { "reset", "status", 0, 0, PATTERN_NONE, "reset-counters", NULL, NULL, print_reset, NULL },
    { "rotate", "acct", 0, 0, PATTERN_NONE, "rotate-acct", NULL, NULL, print_rotate_acct, NULL },
    { "test", "config", 0, 0, PATTERN_NONE, NULL, NULL, NULL, NULL, run_test_config },
    { "resolve", NULL, OPT_CONNECT, 0, PATTERN_REQUIRED, NULL, NULL, NULL, NULL, run_resolve },
    { "show", "settings", 0, 0, PATTERN_REQUIRED, NULL, NULL, NULL, NULL, run_show_settings },
    { "set", "warmup-clock", 0, 0, PATTERN_REQUIRED, "warmup-clock", add_clock_args, NULL,
      print_warmup_clock, NULL },
    { "reload", NULL, 0, 0, PATTERN_NONE, NULL, NULL, NULL, NULL, run_signal_command },
    { "rotate", "log", 0, 0, PATTERN_NONE, NULL, NULL, NULL, NULL, run_signal_command },
    { "reopen", "log", 0, 0, PATTERN_NONE, NULL, NULL, NULL, NULL, run_signal_command },
};

/* command_name - "show queues" for messages */
static void
command_name(const struct command *cmd, char *buf, size_t size)
{
    snprintf(buf, size, "%s%s%s", cmd->verb, cmd->object ? " " : "",
             cmd->object ? cmd->object : "");
}

/* find_command - the command named by the leading words, or NULL */
static const struct command *
find_command(const struct options *o)
{
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
        const struct command *cmd = &commands[i];

        if (o->nwords < 1 || strcmp(o->words[0], cmd->verb) != 0)
            continue;
        if (cmd->object == NULL)
            return cmd;
        if (o->nwords >= 2 && strcmp(o->words[1], cmd->object) == 0)
            return cmd;
    }
    return NULL;
}

/* option_name - the --name of option bit BIT */
static const char *
option_name(unsigned bit)
{
    switch (bit) {
    case OPT_MODE:
        return "--mode";
    case OPT_PAUSED:
        return "--paused";
    case OPT_MAXITEMS:
        return "--maxitems";
    case OPT_SORT:
        return "--sort";
    case OPT_DSN:
        return "--dsn";
    case OPT_QUEUE:
        return "--queue";
    case OPT_JOB:
        return "--jobId";
    case OPT_RCPT:
        return "--rcpt";
    case OPT_ORIG:
        return "--orig";
    case OPT_OLDER_THAN:
        return "--older-than";
    case OPT_REENABLE_AFTER:
        return "--reenable-after";
    case OPT_CONNECT:
        return "--connect";
    default:
        return "--mode-events";
    }
}

/* check_command_args - options and pattern fit CMD; *PATTERN set; 0 or EXIT_USAGE */
static int
check_command_args(const struct command *cmd, const struct options *o, const char **pattern)
{
    int nargs = o->nwords - (cmd->object ? 2 : 1);
    unsigned extra = o->given & ~cmd->allowed, missing = cmd->required & ~o->given;
    char name[32];

    command_name(cmd, name, sizeof(name));
    for (unsigned bit = 1; bit <= OPT_LAST; bit <<= 1) {
        if (extra & bit)
            return usage_error("option %s does not apply to '%s'", option_name(bit), name);
        if (missing & bit)
            return usage_error("'%s' needs %s", name, option_name(bit));
    }
    if ((o->given & OPT_QUEUE) && nargs == 0) {
        *pattern = o->queue; /* delete --queue=PATTERN */
        return 0;
    }
    if (strcmp(cmd->verb, "delete") == 0 && nargs == 0 && !(o->given & OPT_JOB))
        return usage_error("'delete' needs a queue (PATTERN or --queue=) or --jobId=");
    if (nargs > 1 || (nargs == 1 && cmd->pattern == PATTERN_NONE))
        return usage_error("'%s' takes %s", name,
                           cmd->pattern == PATTERN_NONE ? "no arguments" : "one PATTERN");
    if (nargs == 0 && cmd->pattern == PATTERN_REQUIRED)
        return usage_error("'%s' needs a queue PATTERN (DOMAIN[/VMTA])", name);
    *pattern = nargs == 1 ? o->words[o->nwords - 1] : NULL;
    if (*pattern && **pattern == '\0')
        return usage_error("empty PATTERN");
    return 0;
}

/* control_socket_path - --socket, else RUNDIR/control of the configuration; NULL (reported) */
static char *
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

/* ask_quietly - REQUEST (consumed) to a running pmtad; its response, or NULL when pmtad
 * does not run (nothing said) or failed (reported) */
static json_t *
ask_quietly(const struct options *o, json_t *request)
{
    char *path = control_socket_path(o), *text = NULL;
    json_t *response = NULL;
    size_t len = 0;

    if (path && access(path, F_OK) == 0 && (text = exchange(path, request, &len)) != NULL)
        response = decode_response(text, len);
    if (response && !json_is_true(json_object_get(response, "ok"))) {
        json_decref(response);
        response = NULL;
    }
    free(text);
    free(path);
    json_decref(request);
    return response;
}

/* no_match - "no queue matches PATTERN" (or "nothing matches" for filters); EXIT_NO_MATCH */
static int
no_match(const struct command *cmd, const char *pattern)
{
    char *shown = printable(pattern ? pattern : "", SIZE_MAX);

    if (strcmp(cmd->verb, "list") == 0 || strcmp(cmd->verb, "delete") == 0)
        fail("no queued recipient matches%s%s", pattern ? " in " : "", shown);
    else
        fail("no queue matches %s", shown);
    free(shown);
    return EXIT_NO_MATCH;
}

/* error_status - the exit status for pmtad's refusal RESPONSE: "no ... matches" is its own */
static int
error_status(json_t *response)
{
    const char *error = json_string_value(json_object_get(response, "error"));

    if (error && strncmp(error, "permission denied", 17) == 0)
        return EXIT_DENIED;
    return error && strncmp(error, "no queue matches", 16) == 0 ? EXIT_NO_MATCH : EXIT_FAILED;
}

/* report_error - {"ok": false, "error": TEXT} as "pmtactl: TEXT"; its exit status */
static int
report_error(json_t *response)
{
    const char *error = json_string_value(json_object_get(response, "error"));
    char *shown = printable(error ? error : "request failed (no reason given)", SIZE_MAX);

    fail("%s", shown);
    free(shown);
    return error_status(response);
}

/*
 * report - print RESPONSE (the raw TEXT with --json); the exit status is the
 * same either way: EXIT_FAILED for a refusal, EXIT_NO_MATCH when nothing
 * matched.
 */
static int
report(const struct command *cmd, const struct options *o, const char *pattern, const char *text,
       json_t *response)
{
    bool ok = json_is_true(json_object_get(response, "ok"));
    bool matched = !ok || cmd->matched == NULL || cmd->matched(response);

    if (o->json) {
        printf("%s\n", text);
        return !ok ? error_status(response) : matched ? 0 : EXIT_NO_MATCH;
    }
    if (!ok)
        return report_error(response);
    if (!matched)
        return no_match(cmd, pattern);
    return cmd->print(o, response);
}

/* build_request - {"cmd": NAME, ...arguments} */
static json_t *
build_request(const struct command *cmd, const struct options *o, const char *pattern)
{
    json_t *request = json_pack("{s:s}", "cmd", cmd->wire_name);

    if (request && cmd->add_args)
        cmd->add_args(request, o, pattern);
    return request;
}

/* run_socket_command - build the request, exchange it, print the answer */
static int
run_socket_command(const struct command *cmd, const struct options *o, const char *pattern)
{
    char *path = control_socket_path(o), *text;
    json_t *request, *response;
    size_t len = 0;
    int rc = EXIT_FAILED;

    if (path == NULL)
        return EXIT_FAILED;
    if ((request = build_request(cmd, o, pattern)) == NULL) {
        free(path);
        return fail("cannot build the request");
    }
    if ((text = exchange(path, request, &len)) != NULL) {
        if ((response = decode_response(text, len)) != NULL) {
            rc = report(cmd, o, pattern, text, response);
            json_decref(response);
        }
        free(text);
    } else if (unreachable) {
        rc = unreachable;
    }
    json_decref(request);
    free(path);
    return rc;
}

int
main(int argc, char **argv)
{
    struct options o;
    const struct command *cmd;
    const char *pattern = NULL;
    int rc;

    msg_init("pmtactl");
    if ((rc = parse_args(argc, argv, &o)) != 0)
        return rc;
    if (o.help) {
        usage(stdout);
        return 0;
    }
    if (o.version) {
        printf("pmtactl (%s) %s\n", PACKAGE_NAME, PACKAGE_VERSION);
        return 0;
    }
    if (o.nwords == 0)
        return usage_error("no command given");
    if ((cmd = find_command(&o)) == NULL)
        return usage_error("unknown command '%s%s%s'", o.words[0], o.nwords > 1 ? " " : "",
                           o.nwords > 1 ? o.words[1] : "");
    if ((rc = check_command_args(cmd, &o, &pattern)) != 0)
        return rc;
    if (cmd->local)
        return cmd->local(&o, pattern);
    return run_socket_command(cmd, &o, pattern);
}
