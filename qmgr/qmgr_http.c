/*
 * qmgr_http.c - the HTTP monitor on http-mgmt-port (libmicrohttpd)
 *
 * pmtad binds the port (0.0.0.0:http-mgmt-port) and hands the socket to qmgr,
 * which has the numbers. Read-only endpoints, JSON unless said otherwise:
 *     GET /status[?format=json]        {"data":{"mta":{...},"status":{...}}}
 *     GET /queues[?queue=P&mode=M&maxitems=N]
 *                                      {"data":{"total":N,"queue":[...]}}
 *     GET /queueDetail?queue=dom/vmta  {"data":{"queue":{...}}}
 *     GET /metrics                     Prometheus text format 0.0.4
 *     /ui, /ui/...                     the web page, its data and its actions
 *                                      (qmgr_monitor.c)
 * The JSON of a queue and of the totals is the control socket's
 * (qmgr_ctl.h), so pmtactl and the monitor never disagree.
 *
 * libmicrohttpd runs inside qmgr's event loop, not in threads of its own:
 * MHD_USE_EPOLL without an internal thread gives one epoll descriptor, which
 * libuv watches; MHD_run() is called when it is readable and when MHD's own
 * timeout (idle connections) is due. So handlers read qmgr's state on the
 * loop thread, without locks.
 *
 * Owns: the MHD daemon, its epoll watcher and timer.
 * SECURITY: reachable from the network. Every request is checked against
 * http-access (first matching CIDR; no match means no access): anything
 * below `monitor` gets 403. Only GET/HEAD (POST under /ui: qmgr_monitor.c); bounded connections,
 * memory and time per connection; query arguments are length-checked; label values in /metrics are
 * escaped.
 */
#include "config.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <microhttpd.h>

#include "buf.h"
#include "msg.h"
#include "qmgr.h"
#include "qmgr_ctl.h"
#include "qmgr_http.h"
#include "qmgr_monitor.h"
#include "worker.h"
#include "xalloc.h"

#define HTTP_CONNECTIONS_MAX 64u
#define HTTP_TIMEOUT_S       15u
#define HTTP_ARG_MAX         512u

static struct MHD_Daemon *mhd;
static uv_poll_t mhd_poll;
static uv_timer_t mhd_timer;

/* --- responses -------------------------------------------------------------------------- */

/* qmgr_http_respond - see qmgr_http.h */
enum MHD_Result
qmgr_http_respond(struct MHD_Connection *conn, unsigned status, const char *type, const void *body,
                  size_t len, enum MHD_ResponseMemoryMode mode)
{
    struct MHD_Response *r = MHD_create_response_from_buffer(len, (void *)body, mode);
    enum MHD_Result rc;

    if (r == NULL) {
        if (mode == MHD_RESPMEM_MUST_FREE)
            free((void *)body);
        return MHD_NO;
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
    MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
    MHD_add_response_header(r, "X-Content-Type-Options", "nosniff");
    MHD_add_response_header(r, "X-Frame-Options", "DENY");
    MHD_add_response_header(r, "Content-Security-Policy",
                            "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'");
    rc = MHD_queue_response(conn, status, r);
    MHD_destroy_response(r);
    return rc;
}

/* qmgr_http_respond_json - see qmgr_http.h */
enum MHD_Result
qmgr_http_respond_json(struct MHD_Connection *conn, unsigned status, json_t *body)
{
    char *text = json_dumps(body, JSON_COMPACT);

    json_decref(body);
    if (text == NULL)
        return MHD_NO;
    return qmgr_http_respond(conn, status, "application/json", text, strlen(text),
                             MHD_RESPMEM_MUST_FREE);
}

/* qmgr_http_respond_error - see qmgr_http.h */
enum MHD_Result
qmgr_http_respond_error(struct MHD_Connection *conn, unsigned status, const char *text)
{
    return qmgr_http_respond_json(conn, status, json_pack("{s:s}", "error", text));
}

/* arg - query argument NAME, NULL when absent or too long */
static const char *
arg(struct MHD_Connection *conn, const char *name)
{
    const char *v = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, name);

    return v && strlen(v) < HTTP_ARG_MAX ? v : NULL;
}

/* --- endpoints --------------------------------------------------------------------------- */

static enum MHD_Result
get_status(struct MHD_Connection *conn)
{
    char host[256] = "", now[32], started[32];
    json_t *status = qmgr_ctl_status_json();

    gethostname(host, sizeof host - 1);
    json_object_set_new(status, "timeNow", json_string(qmgr_ctl_stamp(now, (uint64_t)time(NULL))));
    json_object_set_new(status, "startupTime", json_string(qmgr_ctl_stamp(started, S.start_wall)));
    json_object_set_new(status, "shuttingDown", json_boolean(S.stopping));
    return qmgr_http_respond_json(conn, MHD_HTTP_OK,
                                  json_pack("{s:{s:{s:s, s:s}, s:o}}", "data", "mta", "product",
                                            PACKAGE_NAME " " PACKAGE_VERSION, "fullHostName", host,
                                            "status", status));
}

/* listed - does queue Q pass /queues' filters (domain[/vmta] as pmtactl takes it, mode)? */
static int
listed(const struct qqueue *q, const char *pattern, const char *mode)
{
    return qmgr_ctl_queue_listed(q) && (!mode || strcmp(mode, qmgr_mode_name(q->mode)) == 0) &&
           (!pattern || qmgr_queue_matches(q, pattern));
}

static enum MHD_Result
get_queues(struct MHD_Connection *conn)
{
    const char *pattern = arg(conn, "queue"), *mode = arg(conn, "mode"),
               *mi = arg(conn, "maxitems");
    long max = mi ? strtol(mi, NULL, 10) : 100;
    json_t *list = json_array();
    uint32_t total = 0;

    if (mode && strcmp(mode, "normal") != 0 && strcmp(mode, "backoff") != 0) {
        json_decref(list);
        return qmgr_http_respond_error(conn, MHD_HTTP_BAD_REQUEST,
                                       "mode must be normal or backoff");
    }
    for (uint32_t i = 0; i < S.nqueues; i++) {
        if (!listed(S.queues[i], pattern, mode))
            continue;
        if (max <= 0 || total < (uint32_t)max)
            json_array_append_new(list, qmgr_ctl_queue_json(S.queues[i]));
        total++;
    }
    return qmgr_http_respond_json(
        conn, MHD_HTTP_OK,
        json_pack("{s:{s:I, s:o}}", "data", "total", (json_int_t)total, "queue", list));
}

static enum MHD_Result
get_queue_detail(struct MHD_Connection *conn)
{
    const char *name = arg(conn, "queue");
    struct qqueue *q;

    if (name == NULL || strchr(name, '/') == NULL)
        return qmgr_http_respond_error(conn, MHD_HTTP_BAD_REQUEST, "queue=DOMAIN/VMTA is required");
    for (uint32_t i = 0; i < S.nqueues; i++)
        if (strcmp(S.queues[i]->name, name) == 0) {
            q = S.queues[i];
            return qmgr_http_respond_json(
                conn, MHD_HTTP_OK, json_pack("{s:{s:o}}", "data", "queue", qmgr_ctl_queue_json(q)));
        }
    return qmgr_http_respond_error(conn, MHD_HTTP_NOT_FOUND, "no such queue");
}

/* --- /metrics ------------------------------------------------------------------------------ */

/* label - NAME as a Prometheus label value: backslash, quote and newline escaped */
static void
label(struct buf *b, const char *name)
{
    for (const char *p = name; *p; p++) {
        if (*p == '\\' || *p == '"')
            buf_append_u8(b, '\\'), buf_append_u8(b, (uint8_t)*p);
        else if (*p == '\n')
            buf_append_str(b, "\\n");
        else
            buf_append_u8(b, (uint8_t)*p);
    }
}

static void
metric(struct buf *b, const char *name, const char *type, const char *help, json_int_t value)
{
    buf_printf(b, "# HELP %s %s\n# TYPE %s %s\n%s %lld\n", name, help, name, type, name,
               (long long)value);
}

static json_int_t
num(json_t *o, const char *key)
{
    return json_integer_value(json_object_get(o, key));
}

static void
queue_metrics(struct buf *b)
{
    static const char *const names[] = { "openpmta_queue_recipients", "openpmta_queue_connections",
                                         "openpmta_queue_backoff", "openpmta_queue_paused" };
    static const char *const helps[] = { "Recipients queued per queue (domain/vmta).",
                                         "Open outbound connections per queue.",
                                         "1 while the queue is in backoff mode.",
                                         "1 while the queue is paused (pmtactl)." };

    for (int k = 0; k < 4; k++) {
        buf_printf(b, "# HELP %s %s\n# TYPE %s gauge\n", names[k], helps[k], names[k]);
        for (uint32_t i = 0; i < S.nqueues; i++) {
            const struct qqueue *q = S.queues[i];
            uint64_t v = k == 0   ? (uint64_t)q->nready + q->ndeferred + q->ninflight
                         : k == 1 ? q->nconn
                         : k == 2 ? q->mode == QMODE_BACKOFF
                                  : q->paused != 0;

            buf_printf(b, "%s{queue=\"", names[k]);
            label(b, q->name);
            buf_printf(b, "\"} %llu\n", (unsigned long long)v);
        }
    }
}

static enum MHD_Result
get_metrics(struct MHD_Connection *conn)
{
    json_t *st = qmgr_ctl_status_json(), *rc = json_object_get(st, "recipients");
    struct buf b = BUF_INIT;

    metric(&b, "openpmta_recipients_queued", "gauge", "Recipients in the queue.",
           num(rc, "queued"));
    buf_printf(&b, "# HELP openpmta_recipients Recipients in the queue by state.\n"
                   "# TYPE openpmta_recipients gauge\n");
    for (const char *const *s = (const char *const[]){ "ready", "deferred", "inflight", NULL }; *s;
         s++)
        buf_printf(&b, "openpmta_recipients{state=\"%s\"} %lld\n", *s, (long long)num(rc, *s));
    metric(&b, "openpmta_messages_queued", "gauge", "Messages in the queue.", num(st, "messages"));
    metric(&b, "openpmta_queues", "gauge", "Queues (domain/vmta) known.", num(st, "queues"));
    metric(&b, "openpmta_queues_backoff", "gauge", "Queues in backoff mode.",
           num(st, "queues_backoff"));
    metric(&b, "openpmta_queues_paused", "gauge", "Paused queues.", num(st, "queues_paused"));
    metric(&b, "openpmta_connections_out", "gauge", "Open outbound connections.",
           num(st, "connections_out"));
    metric(&b, "openpmta_delivered_total", "counter", "Recipients delivered since start.",
           num(st, "delivered"));
    metric(&b, "openpmta_bounced_total", "counter", "Recipients bounced since start.",
           num(st, "bounced"));
    metric(&b, "openpmta_deferred_total", "counter", "Delivery attempts deferred since start.",
           num(st, "deferred"));
    queue_metrics(&b);
    json_decref(st);
    if (b.data == NULL)
        buf_append_str(&b, "");
    return qmgr_http_respond(conn, MHD_HTTP_OK, "text/plain; version=0.0.4", b.data, b.len,
                             MHD_RESPMEM_MUST_FREE);
}

/* --- requests -------------------------------------------------------------------------------- */

/* access_level - what http-access grants the client of CONN */
static enum cfg_http_level
access_level(struct MHD_Connection *conn)
{
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(
        conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    const struct sockaddr *sa = ci ? ci->client_addr : NULL;

    if (sa && sa->sa_family == AF_INET)
        return cfg_http_access(S.cfg, AF_INET,
                               (const uint8_t *)&((const struct sockaddr_in *)sa)->sin_addr);
    if (sa && sa->sa_family == AF_INET6)
        return cfg_http_access(S.cfg, AF_INET6,
                               (const uint8_t *)&((const struct sockaddr_in6 *)sa)->sin6_addr);
    return CFG_HTTP_NONE;
}

static enum MHD_Result
on_request(void *cls, struct MHD_Connection *conn, const char *url, const char *method,
           const char *version, const char *upload, size_t *upload_size, void **state)
{
    const char *format;
    enum cfg_http_level level;

    (void)cls, (void)version, (void)upload, (void)state;
    if (*upload_size != 0)
        return MHD_NO; /* no bodies here: drop the connection */
    if ((level = access_level(conn)) < CFG_HTTP_MONITOR)
        return qmgr_http_respond_error(conn, MHD_HTTP_FORBIDDEN, "access denied by http-access");
    if (strcmp(url, "/ui") == 0 || strncmp(url, "/ui/", 4) == 0)
        return qmgr_monitor_request(conn, url, method, level);
    if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0)
        return qmgr_http_respond_error(conn, MHD_HTTP_METHOD_NOT_ALLOWED, "only GET and HEAD");
    format = arg(conn, "format");
    if (format && strcmp(format, "json") != 0 && strcmp(url, "/metrics") != 0)
        return qmgr_http_respond_error(conn, MHD_HTTP_NOT_ACCEPTABLE, "only format=json is served");
    if (strcmp(url, "/status") == 0 || strcmp(url, "/") == 0)
        return get_status(conn);
    if (strcmp(url, "/queues") == 0)
        return get_queues(conn);
    if (strcmp(url, "/queueDetail") == 0)
        return get_queue_detail(conn);
    if (strcmp(url, "/metrics") == 0)
        return get_metrics(conn);
    return qmgr_http_respond_error(conn, MHD_HTTP_NOT_FOUND,
                                   "no such page (/ui, /status, /queues, "
                                   "/queueDetail, /metrics)");
}

/* --- the loop ----------------------------------------------------------------------------------
 */

static void on_mhd_timer(uv_timer_t *t);

/* run - let MHD do what is ready, then wake it again when its own timeout is due */
static void
run(void)
{
    MHD_UNSIGNED_LONG_LONG ms;

    MHD_run(mhd);
    if (MHD_get_timeout(mhd, &ms) == MHD_YES)
        uv_timer_start(&mhd_timer, on_mhd_timer, ms, 0);
    else
        uv_timer_stop(&mhd_timer);
}

static void
on_mhd_ready(uv_poll_t *h, int status, int events)
{
    (void)h, (void)status, (void)events;
    run();
}

static void
on_mhd_timer(uv_timer_t *t)
{
    (void)t;
    run();
}

__attribute__((format(printf, 2, 0))) static void
log_mhd(void *cls, const char *fmt, va_list ap)
{
    char text[512];

    (void)cls;
    vsnprintf(text, sizeof text, fmt, ap);
    msg_warn("http monitor: %s", text);
}

/* qmgr_http_start - serve the monitor if pmtad bound http-mgmt-port for us */
void
qmgr_http_start(void)
{
    int fd = worker_socket_fd("http"), err;
    const union MHD_DaemonInfo *info;

    if (fd < 0)
        return;
    mhd = MHD_start_daemon(MHD_USE_EPOLL | MHD_USE_ITC | MHD_USE_ERROR_LOG, 0, NULL, NULL,
                           on_request, NULL, MHD_OPTION_EXTERNAL_LOGGER, log_mhd, NULL,
                           MHD_OPTION_LISTEN_SOCKET, (MHD_socket)fd, MHD_OPTION_CONNECTION_LIMIT,
                           (unsigned)HTTP_CONNECTIONS_MAX, MHD_OPTION_CONNECTION_TIMEOUT,
                           (unsigned)HTTP_TIMEOUT_S, MHD_OPTION_CONNECTION_MEMORY_LIMIT,
                           (size_t)(64 * 1024), MHD_OPTION_END);
    if (mhd == NULL || (info = MHD_get_daemon_info(mhd, MHD_DAEMON_INFO_EPOLL_FD)) == NULL) {
        msg_warn("http monitor: cannot start libmicrohttpd; the monitor is off");
        return;
    }
    uv_timer_init(worker_loop(), &mhd_timer);
    if ((err = uv_poll_init(worker_loop(), &mhd_poll, info->epoll_fd)) < 0 ||
        (err = uv_poll_start(&mhd_poll, UV_READABLE, on_mhd_ready)) < 0)
        msg_fatal("http monitor: cannot watch its descriptor: %s", uv_strerror(err));
    qmgr_monitor_start();
    msg_info("http monitor listening on port %lld",
             (long long)cfg_global(S.cfg, CFG_D_HTTP_MGMT_PORT)->num);
}

/* qmgr_http_stop - close every monitor connection; the listening socket stays pmtad's */
void
qmgr_http_stop(void)
{
    if (mhd == NULL)
        return;
    uv_close((uv_handle_t *)&mhd_poll, NULL);
    uv_close((uv_handle_t *)&mhd_timer, NULL);
    MHD_quiesce_daemon(mhd); /* hands the listening socket back: the worker closes it */
    MHD_stop_daemon(mhd);
    mhd = NULL;
    qmgr_monitor_stop();
}
