/*
 * qmgr_monitor.c - the web monitor's pages under /ui on http-mgmt-port
 *
 *     GET  /ui                  the page (www/index.html), and /ui/monitor.js,
 *                               /ui/monitor.css: every file it loads comes from here
 *     GET  /ui/data             {"data":{status, minutes, errors, topQueues,
 *                               backoffQueues, vmtas}}: all the page shows, in one
 *                               answer, so every panel is of the same instant
 *     GET  /ui/session          {"data":{"role":..., "csrf":TOKEN (operator/admin only)}}
 *     POST /ui/action?do=pause|resume|schedule|mode&queue=DOM/VMTA[&mode=normal|backoff]
 *                               operator/admin only, header X-CSRF-Token: TOKEN
 * An action is the control socket's own command (qmgr_ctl_dispatch), so the
 * page and pmtactl cannot disagree about what pausing a queue means.
 *
 * The files are read once, when the monitor starts, from the build tree's
 * www/ when qmgr runs from a build tree (tests), else PMTA_PKGDATADIR/www.
 *
 * Owns: the loaded files and the CSRF token (random, per qmgr process).
 * SECURITY: reachable from the network. qmgr_http.c has checked http-access
 * (at least monitor) before any of this runs. POST needs operator or admin,
 * the token in a header (a cross-site form cannot set one, nor read the
 * token), an Origin equal to the Host when the browser sends one, and a Host
 * that is an IP address, localhost or this machine's name, so that a DNS
 * name rebound to this host cannot be used to read the token. Only three
 * fixed file names are served: no path from the request reaches open().
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include <microhttpd.h>

#include "msg.h"
#include "qmgr.h"
#include "qmgr_ctl.h"
#include "qmgr_http.h"
#include "qmgr_monitor.h"
#include "qmgr_traffic.h"
#include "xalloc.h"

#define FILE_MAX        (512 * 1024)
#define TOP_QUEUES      20
#define SOURCES_MAX     64
#define CSRF_HEADER     "X-CSRF-Token"
#define CSRF_TOKEN_SIZE 16

struct static_file {
    const char *url, *name, *type;
    char *data;
    size_t len;
};

static struct static_file files[] = {
    { "/ui", "index.html", "text/html; charset=utf-8", NULL, 0 },
    { "/ui/monitor.js", "monitor.js", "text/javascript; charset=utf-8", NULL, 0 },
    { "/ui/monitor.css", "monitor.css", "text/css; charset=utf-8", NULL, 0 },
};
#define NFILES (sizeof files / sizeof files[0])

static char csrf_token[2 * CSRF_TOKEN_SIZE + 1];

/* --- start ---------------------------------------------------------------------------- */

/* www_dir - BUILD_TREE/www when this qmgr is BUILD_TREE/qmgr/qmgr and it exists, else installed */
static char *
www_dir(void)
{
    char exe[PATH_MAX], *dir;
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);

    if (n > 0) {
        exe[n] = '\0';
        dir = xasprintf("%s/www", dirname(dirname(exe)));
        if (access(dir, R_OK | X_OK) == 0)
            return dir;
        free(dir);
    }
    return xstrdup(PMTA_PKGDATADIR "/www");
}

/* load_file - DIR/F->name into F->data; 0 or -errno */
static int
load_file(const char *dir, struct static_file *f)
{
    char *path = xasprintf("%s/%s", dir, f->name);
    int fd = open(path, O_RDONLY | O_CLOEXEC), err = 0;
    ssize_t n;

    free(path);
    if (fd < 0)
        return -errno;
    f->data = xmalloc(FILE_MAX);
    while (f->len < FILE_MAX && (n = read(fd, f->data + f->len, FILE_MAX - f->len)) != 0) {
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            err = -errno;
            break;
        }
        f->len += (size_t)n;
    }
    if (err == 0 && f->len == FILE_MAX)
        err = -EFBIG;
    close(fd);
    if (err) {
        free(f->data);
        f->data = NULL;
        f->len = 0;
    }
    return err;
}

/* new_token - CSRF_TOKEN_SIZE random bytes as hex */
static void
new_token(void)
{
    unsigned char raw[CSRF_TOKEN_SIZE];

    if (getrandom(raw, sizeof raw, 0) != (ssize_t)sizeof raw)
        msg_fatal("http monitor: getrandom: %s", strerror(errno));
    for (size_t i = 0; i < sizeof raw; i++)
        snprintf(csrf_token + 2 * i, 3, "%02x", raw[i]);
}

/* qmgr_monitor_start - see qmgr_monitor.h */
void
qmgr_monitor_start(void)
{
    char *dir = www_dir();
    int err;

    new_token();
    for (size_t i = 0; i < NFILES; i++)
        if (files[i].data == NULL && (err = load_file(dir, &files[i])) < 0)
            msg_warn("http monitor: cannot read %s/%s: %s; /ui will answer 503", dir, files[i].name,
                     strerror(-err));
    free(dir);
}

/* qmgr_monitor_stop - see qmgr_monitor.h */
void
qmgr_monitor_stop(void)
{
    for (size_t i = 0; i < NFILES; i++) {
        free(files[i].data);
        files[i].data = NULL;
        files[i].len = 0;
    }
}

/* --- GET /ui/data ----------------------------------------------------------------------- */

static int
by_recipients(const void *a, const void *b)
{
    const struct qqueue *x = *(struct qqueue *const *)a, *y = *(struct qqueue *const *)b;
    uint64_t nx = (uint64_t)x->nready + x->ndeferred + x->ninflight;
    uint64_t ny = (uint64_t)y->nready + y->ndeferred + y->ninflight;

    return nx != ny ? (nx < ny ? 1 : -1) : strcmp(x->name, y->name);
}

/* queues_json - the TOP_QUEUES queues with most recipients, and every queue in backoff */
static void
queues_json(json_t *data)
{
    struct qqueue **qs = xreallocarray(NULL, S.nqueues ? S.nqueues : 1, sizeof *qs);
    json_t *top = json_array(), *backoff = json_array();

    memcpy(qs, S.queues, S.nqueues * sizeof *qs);
    qsort(qs, S.nqueues, sizeof *qs, by_recipients);
    for (uint32_t i = 0; i < S.nqueues; i++) {
        if (i < TOP_QUEUES)
            json_array_append_new(top, qmgr_ctl_queue_json(qs[i]));
        if (qs[i]->mode == QMODE_BACKOFF)
            json_array_append_new(backoff, qmgr_ctl_queue_json(qs[i]));
    }
    free(qs);
    json_object_set_new(data, "queueCount", json_integer(S.nqueues));
    json_object_set_new(data, "topQueues", top);
    json_object_set_new(data, "backoffQueues", backoff);
}

/* source_json - one source IP of VMTA: how many of its queues have it disabled */
static json_t *
source_json(const char *vmta, const char *ip)
{
    uint32_t disabled = 0, queues = 0;

    for (uint32_t i = 0; i < S.nqueues; i++) {
        struct qqueue *q = S.queues[i];

        if (strcmp(q->vmta, vmta) != 0)
            continue;
        queues++;
        disabled += qmgr_source_disabled(q, ip) != 0;
    }
    return json_pack("{s:s, s:s, s:I}", "ip", ip, "state",
                     disabled == 0        ? "enabled"
                     : disabled == queues ? "disabled"
                                          : "partly",
                     "disabledQueues", (json_int_t)disabled);
}

/* vmta_json - a virtual MTA: its queues' totals, connections and source IPs */
static json_t *
vmta_json(const char *name)
{
    static char ips[SOURCES_MAX][48];
    uint32_t nsrc = qmgr_vmta_sources(name, ips, SOURCES_MAX), queues = 0, backoff = 0, paused = 0;
    uint64_t rcpts = 0;
    json_t *sources = json_array();

    for (uint32_t i = 0; i < S.nqueues; i++) {
        const struct qqueue *q = S.queues[i];

        if (strcmp(q->vmta, name) != 0)
            continue;
        queues++;
        rcpts += (uint64_t)q->nready + q->ndeferred + q->ninflight;
        backoff += q->mode == QMODE_BACKOFF;
        paused += q->paused != 0;
    }
    for (uint32_t i = 0; i < nsrc && i < SOURCES_MAX; i++)
        json_array_append_new(sources, source_json(name, ips[i]));
    return json_pack("{s:s, s:I, s:I, s:I, s:I, s:I, s:o}", "name", name, "queues",
                     (json_int_t)queues, "recipients", (json_int_t)rcpts, "connections",
                     (json_int_t)qmgr_vmta_connections(name), "backoff", (json_int_t)backoff,
                     "paused", (json_int_t)paused, "sources", sources);
}

/* vmtas_json - {default} and every <virtual-mta> of the configuration */
static json_t *
vmtas_json(void)
{
    json_t *list = json_array();
    uint32_t it = 0, s;

    json_array_append_new(list, vmta_json("{default}"));
    while ((s = cfg_next_scope(S.cfg, CFG_S_VMTA, &it)) != CFG_NONE)
        json_array_append_new(list, vmta_json(cfg_str(S.cfg, S.cfg->scopes[s].name)));
    return list;
}

static enum MHD_Result
get_data(struct MHD_Connection *conn)
{
    uint64_t wall = qmgr_wall();
    char now[32];
    json_t *data = json_object(), *status = qmgr_ctl_status_json();

    json_object_set_new(status, "timeNow", json_string(qmgr_ctl_stamp(now, wall)));
    json_object_set_new(data, "status", status);
    json_object_set_new(data, "minutes", qmgr_traffic_minutes_json(wall));
    json_object_set_new(data, "errors", qmgr_traffic_errors_json());
    queues_json(data);
    json_object_set_new(data, "vmtas", vmtas_json());
    return qmgr_http_respond_json(conn, MHD_HTTP_OK, json_pack("{s:o}", "data", data));
}

/* --- session and actions ----------------------------------------------------------------- */

static const char *
role_name(enum cfg_http_level level)
{
    return level >= CFG_HTTP_ADMIN ? "admin" : level >= CFG_HTTP_OPERATOR ? "operator" : "monitor";
}

/* host_trusted - is the Host header an IP address, localhost or this machine's name (":port" ok)?
 */
static int
host_trusted(const char *host)
{
    char name[256] = "", sys[256] = "";
    size_t len;

    if (host == NULL || *host == '\0' || strlen(host) >= sizeof name)
        return 0;
    if (host[0] == '[') /* an IPv6 literal */
        return strchr(host, ']') != NULL && strspn(host + 1, "0123456789abcdefABCDEF:.") ==
                                                (size_t)(strchr(host, ']') - host - 1);
    len = strcspn(host, ":");
    memcpy(name, host, len);
    if (strspn(name, "0123456789.") == len)
        return 1;
    if (strcasecmp(name, "localhost") == 0)
        return 1;
    return gethostname(sys, sizeof sys - 1) == 0 && strcasecmp(name, sys) == 0;
}

static const char *
header(struct MHD_Connection *conn, const char *name)
{
    return MHD_lookup_connection_value(conn, MHD_HEADER_KIND, name);
}

/* same_origin - no Origin header (not a browser's cross-site request), or Origin is http://HOST */
static int
same_origin(struct MHD_Connection *conn)
{
    const char *origin = header(conn, "Origin"), *host = header(conn, MHD_HTTP_HEADER_HOST);

    if (origin == NULL)
        return 1;
    return host && strncmp(origin, "http://", 7) == 0 && strcmp(origin + 7, host) == 0;
}

/* token_matches - constant-time comparison with the CSRF token */
static int
token_matches(const char *given)
{
    unsigned char diff = 0;

    if (given == NULL || strlen(given) != strlen(csrf_token))
        return 0;
    for (size_t i = 0; csrf_token[i]; i++)
        diff |= (unsigned char)(given[i] ^ csrf_token[i]);
    return diff == 0;
}

static enum MHD_Result
get_session(struct MHD_Connection *conn, enum cfg_http_level level)
{
    json_t *data = json_pack("{s:s}", "role", role_name(level));

    if (level >= CFG_HTTP_OPERATOR && host_trusted(header(conn, MHD_HTTP_HEADER_HOST)))
        json_object_set_new(data, "csrf", json_string(csrf_token));
    return qmgr_http_respond_json(conn, MHD_HTTP_OK, json_pack("{s:o}", "data", data));
}

/* action_request - the control-socket request for ?do=...; NULL with *WHY set when malformed */
static json_t *
action_request(struct MHD_Connection *conn, const char **why)
{
    const char *act = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "do");
    const char *queue = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "queue");
    const char *mode = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "mode");

    *why = "queue=DOMAIN/VMTA is required (at most 400 bytes)";
    if (queue == NULL || *queue == '\0' || strlen(queue) > 400)
        return NULL;
    *why = "do must be pause, resume, schedule or mode";
    if (act == NULL)
        return NULL;
    if (strcmp(act, "pause") == 0 || strcmp(act, "resume") == 0)
        return json_pack("{s:s, s:s}", "cmd", act[0] == 'p' ? "pause-queue" : "resume-queue",
                         "queue", queue);
    if (strcmp(act, "schedule") == 0)
        return json_pack("{s:s, s:s}", "cmd", "schedule", "queue", queue);
    if (strcmp(act, "mode") == 0) {
        *why = "mode must be normal or backoff";
        if (mode == NULL || (strcmp(mode, "normal") != 0 && strcmp(mode, "backoff") != 0))
            return NULL;
        return json_pack("{s:s, s:s, s:s}", "cmd", "set-queue-mode", "queue", queue, "mode", mode);
    }
    return NULL;
}

static enum MHD_Result
post_action(struct MHD_Connection *conn, enum cfg_http_level level)
{
    const char *why;
    json_t *req, *reply;
    char who[64];

    if (level < CFG_HTTP_OPERATOR)
        return qmgr_http_respond_error(conn, MHD_HTTP_FORBIDDEN,
                                       "http-access grants this client the monitor role only");
    if (!host_trusted(header(conn, MHD_HTTP_HEADER_HOST)) || !same_origin(conn) ||
        !token_matches(header(conn, CSRF_HEADER)))
        return qmgr_http_respond_error(
            conn, MHD_HTTP_FORBIDDEN,
            "cross-site request refused (reload the page for a new token)");
    if ((req = action_request(conn, &why)) == NULL)
        return qmgr_http_respond_error(conn, MHD_HTTP_BAD_REQUEST, why);
    snprintf(who, sizeof who, "%s", json_string_value(json_object_get(req, "cmd")));
    reply = qmgr_ctl_dispatch(req);
    msg_info("http monitor: %s %s by an %s client: %s", who,
             json_string_value(json_object_get(req, "queue")), role_name(level),
             json_is_true(json_object_get(reply, "ok")) ? "done" : "refused");
    json_decref(req);
    return qmgr_http_respond_json(
        conn, json_is_true(json_object_get(reply, "ok")) ? MHD_HTTP_OK : MHD_HTTP_CONFLICT, reply);
}

/* --- dispatch -------------------------------------------------------------------------- */

/* qmgr_monitor_request - see qmgr_monitor.h */
enum MHD_Result
qmgr_monitor_request(struct MHD_Connection *conn, const char *url, const char *method,
                     enum cfg_http_level level)
{
    int get = strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0;

    if (strcmp(url, "/ui/action") == 0) {
        if (strcmp(method, "POST") != 0)
            return qmgr_http_respond_error(conn, MHD_HTTP_METHOD_NOT_ALLOWED,
                                           "actions are POST only");
        return post_action(conn, level);
    }
    if (!get)
        return qmgr_http_respond_error(conn, MHD_HTTP_METHOD_NOT_ALLOWED, "only GET and HEAD here");
    if (strcmp(url, "/ui/data") == 0)
        return get_data(conn);
    if (strcmp(url, "/ui/session") == 0)
        return get_session(conn, level);
    for (size_t i = 0; i < NFILES; i++) {
        if (strcmp(url, files[i].url) != 0 && !(i == 0 && strcmp(url, "/ui/") == 0))
            continue;
        if (files[i].data == NULL)
            return qmgr_http_respond_error(
                conn, MHD_HTTP_SERVICE_UNAVAILABLE,
                "the monitor's files are not installed (see pmtad's log)");
        return qmgr_http_respond(conn, MHD_HTTP_OK, files[i].type, files[i].data, files[i].len,
                                 MHD_RESPMEM_PERSISTENT);
    }
    return qmgr_http_respond_error(conn, MHD_HTTP_NOT_FOUND, "no such page under /ui");
}
