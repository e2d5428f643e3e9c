/*
 * qmgr_cluster.c - the link to the cluster's Redis: connections, the node's
 *                  heartbeat, Redis failing and coming back
 *
 * Two hiredis connections on qmgr's libuv loop: one for commands (every
 * decision is one Lua script, qmgr_cluster_lua.c) and one subscribed to
 * the events channel (qmgr_cluster_state.c). The redis-server lines are
 * tried in turn: a name is resolved off the loop (uv_getaddrinfo), the
 * password sent (AUTH) and the server asked for its ROLE, and only a master
 * is used, so that a list of a primary and its replicas follows a
 * promotion (Sentinel's or an operator's). Once both connections are ready
 * the node registers (its leases of an earlier life dropped), beats every
 * lease-time / 5 (the reply lists every node: alive ones count for the
 * shares below), and the limiters and modes are shared (cl_limit_up,
 * cl_state_up).
 *
 * Redis failing: a refused or lost connection, or a command unanswered for
 * CL_TIMEOUT_MS, drops both connections; every waiting reply is answered
 * with nothing, each shared limiter falls back to its share (the limit
 * divided by the nodes alive at the last heartbeat: cl_limit_down), one
 * warning is logged, and the next server is tried every second. When one
 * answers, sharing resumes and one line says so.
 *
 * Owns: the connections, the timer, the node list of the last heartbeat,
 * the Redis clock estimate, the round-trip counter.
 * SECURITY: Redis replies are parsed by hiredis and type-checked before use;
 * the password is never logged.
 */
#include "config.h"

#include <arpa/inet.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/adapters/libuv.h>
#include <hiredis/async.h>

#include "msg.h"
#include "qmgr.h"
#include "qmgr_cluster.h"
#include "qmgr_cluster_int.h"
#include "worker.h"
#include "xalloc.h"

#define CL_TICK_MS       100u
#define CL_TIMEOUT_MS    1500u /* a command unanswered this long: Redis is gone */
#define CL_CONNECT_MS    2000u /* connecting and registering, at most */
#define CL_RETRY_MS      1000u /* between two attempts to reach a server */
#define CL_CLOCK_KEEP_MS 5000u /* a clock sample is trusted this long */
#define CL_DEFAULT_PORT  6379
#define CL_NAME_MAX      64
#define CL_PREFIX_MAX    64

enum cl_state { CL_OFF, CL_DOWN, CL_RESOLVING, CL_CONNECTING, CL_UP };

struct cl_call {
    cl_reply_fn *fn;
    void *priv;
};

static struct {
    enum cl_state state;
    char node[CL_NAME_MAX + 1];
    char prefix[CL_PREFIX_MAX + 1];
    char *password;
    char **servers;
    uint32_t nservers, server; /* the one tried or used now */
    uint64_t lease_ms;
    redisAsyncContext *ac, *sub;
    redisAsyncContext *closing; /* the command connection sending its last words (stop) */
    int role_ok, subscribed;
    int warned;       /* the outage was logged */
    uint32_t skipped; /* replicas passed over since the last master */
    int ever_up;
    uv_timer_t timer;
    int timer_on;
    uv_getaddrinfo_t gai;
    int gai_busy;
    uint64_t state_since_ms, next_try_ms, next_beat_ms;
    uint32_t outstanding;
    uint64_t progress_ms;
    uint32_t alive;
    json_t *nodes;
    int64_t offset_us;
    uint64_t offset_rtt_ns, offset_at_ms;
    uint64_t round_trips;
    uint64_t calls[CL_SCRIPTS + 1]; /* by script; the last: plain commands */
} C;

static void connect_to(const char *ip, int port);
static void go_down(const char *why);

/* --- small things ------------------------------------------------------------------------ */

int
qmgr_cluster_on(void)
{
    return C.state != CL_OFF;
}

int
cl_up(void)
{
    return C.state == CL_UP;
}

const char *
cl_node(void)
{
    return C.node;
}

uint64_t
cl_lease_ms(void)
{
    return C.lease_ms;
}

uint32_t
cl_alive(void)
{
    return C.alive ? C.alive : 1;
}

uint64_t
cl_round_trips(void)
{
    return C.round_trips;
}

const char *
cl_key(char *buf, size_t size, const char *fmt, ...)
{
    va_list ap;
    int n = snprintf(buf, size, "%s", C.prefix);

    if (n < 0 || (size_t)n >= size)
        return buf;
    va_start(ap, fmt);
    vsnprintf(buf + n, size - (size_t)n, fmt, ap);
    va_end(ap);
    return buf;
}

/* --- the clock ----------------------------------------------------------------------------- */

/* cl_clock_sample - see qmgr_cluster_int.h: the sample of the fastest round trip wins */
void
cl_clock_sample(int64_t redis_us, uint64_t sent_ns)
{
    uint64_t now = qmgr_now_ns(), rtt = now > sent_ns ? now - sent_ns : 0;

    if (C.offset_at_ms && rtt > C.offset_rtt_ns &&
        qmgr_now_ms() - C.offset_at_ms < CL_CLOCK_KEEP_MS)
        return;
    C.offset_us = redis_us - (int64_t)((sent_ns + rtt / 2) / 1000);
    C.offset_rtt_ns = rtt;
    C.offset_at_ms = qmgr_now_ms();
}

int64_t
cl_redis_us(uint64_t now_ns)
{
    return (int64_t)(now_ns / 1000) + C.offset_us;
}

uint64_t
cl_local_ns(int64_t redis_us)
{
    int64_t us = redis_us - C.offset_us;

    return us > 0 ? (uint64_t)us * 1000 : 0;
}

/* --- commands ------------------------------------------------------------------------------- */

static void
on_reply(redisAsyncContext *ac, void *reply, void *priv)
{
    struct cl_call *call = priv;
    redisReply *r = reply;

    (void)ac;
    if (C.outstanding > 0)
        C.outstanding--;
    C.progress_ms = qmgr_now_ms();
    if (r && r->type == REDIS_REPLY_ERROR)
        msg_warn("cluster: Redis says: %.*s", (int)(r->len < 200 ? r->len : 200), r->str);
    if (call->fn)
        call->fn(r, call->priv);
    free(call);
}

/* send_argv - ARGV[0..ARGC) on the command connection; 0 or -1 */
static int
send_argv(cl_reply_fn *fn, void *priv, int argc, const char **argv)
{
    struct cl_call *call;
    size_t lens[16];

    if (C.ac == NULL || argc > 16)
        return -1;
    for (int i = 0; i < argc; i++)
        lens[i] = strlen(argv[i]);
    call = xmalloc(sizeof *call);
    call->fn = fn;
    call->priv = priv;
    if (redisAsyncCommandArgv(C.ac, on_reply, call, argc, argv, lens) != REDIS_OK) {
        free(call);
        return -1;
    }
    if (C.outstanding++ == 0)
        C.progress_ms = qmgr_now_ms();
    C.round_trips++;
    return 0;
}

int
cl_command(cl_reply_fn *fn, void *priv, int argc, const char **argv)
{
    if (C.state != CL_UP)
        return -1;
    C.calls[CL_SCRIPTS]++;
    return send_argv(fn, priv, argc, argv);
}

int
cl_eval(enum cl_script script, cl_reply_fn *fn, void *priv, int nkeys, int argc, const char **argv)
{
    const char *v[16];
    char nk[12];

    if (C.state != CL_UP || argc + 3 > 16)
        return -1;
    C.calls[script]++;
    snprintf(nk, sizeof nk, "%d", nkeys);
    v[0] = "EVAL";
    v[1] = cl_script_text[script];
    v[2] = nk;
    for (int i = 0; i < argc; i++)
        v[3 + i] = argv[i];
    return send_argv(fn, priv, argc + 3, v);
}

/* --- heartbeat ------------------------------------------------------------------------------ */

/* facts - what this node tells the others about itself (JSON) */
static char *
facts(void)
{
    const struct cfg_value *l = cfg_global(S.cfg, CFG_D_SMTP_LISTENER);
    uint32_t queues = 0;
    json_t *j;
    char *text;

    for (uint32_t i = 0; i < S.nqueues; i++)
        queues += S.queues[i]->nready + S.queues[i]->ndeferred + S.queues[i]->ninflight > 0;
    j = json_pack("{s:s, s:s, s:I, s:I, s:I, s:I, s:I}", "host", qmgr_host_name(), "address",
                  l && !(l->flags & CFG_VALUE_UNSET) ? cfg_str(S.cfg, l->text) : "", "pid",
                  (json_int_t)getpid(), "queues", (json_int_t)queues, "connections",
                  (json_int_t)S.nconn_total, "recipients", (json_int_t)S.nrcpt_live, "started",
                  (json_int_t)S.start_wall);
    text = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    return text;
}

/* on_beat - every node's heartbeat: {now, {name, seen, facts, ...}} */
static void
on_beat(redisReply *r, void *priv)
{
    uint32_t alive = 0;
    json_t *nodes;

    (void)priv;
    if (r == NULL || r->type != REDIS_REPLY_ARRAY || r->elements != 2 ||
        r->element[1]->type != REDIS_REPLY_ARRAY)
        return;
    nodes = json_array();
    for (size_t i = 0; i + 2 < r->element[1]->elements; i += 3) {
        redisReply **e = r->element[1]->element + i;
        json_t *node, *info = NULL;

        if (e[0]->type != REDIS_REPLY_STRING || e[1]->type != REDIS_REPLY_STRING ||
            e[2]->type != REDIS_REPLY_STRING)
            continue;
        if (e[2]->len > 0)
            info = json_loadb(e[2]->str, e[2]->len, 0, NULL);
        node = json_is_object(info) ? info : json_object();
        if (info && !json_is_object(info))
            json_decref(info);
        json_object_set_new(node, "name", json_stringn(e[0]->str, e[0]->len));
        json_object_set_new(node, "last_heartbeat_ms", json_integer(strtoll(e[1]->str, NULL, 10)));
        json_object_set_new(node, "alive", json_boolean(e[2]->len > 0));
        json_object_set_new(
            node, "self",
            json_boolean(e[0]->len == strlen(C.node) && memcmp(e[0]->str, C.node, e[0]->len) == 0));
        alive += e[2]->len > 0;
        json_array_append_new(nodes, node);
    }
    json_decref(C.nodes);
    C.nodes = nodes;
    if (alive != C.alive && C.alive)
        msg_info("cluster: %u node(s) alive", alive ? alive : 1);
    C.alive = alive ? alive : 1;
}

static void
beat(void)
{
    char k1[200], k2[200], k3[200], ms[24];
    char *info = facts();
    const char *argv[] = { cl_key(k1, sizeof k1, "node:%s", C.node),
                           cl_key(k2, sizeof k2, "nodes"),
                           C.node,
                           info,
                           ms,
                           cl_key(k3, sizeof k3, "node:") };

    snprintf(ms, sizeof ms, "%" PRIu64, C.lease_ms);
    cl_eval(CL_SCRIPT_HEARTBEAT, on_beat, NULL, 2, 6, argv);
    free(info);
    C.next_beat_ms = qmgr_now_ms() + (C.lease_ms / 5 < 200 ? 200 : C.lease_ms / 5);
}

json_t *
cl_link_json(void)
{
    static const char *const states[] = { "off", "down", "resolving", "connecting", "up" };
    static const char *const names[CL_SCRIPTS + 1] = { "rate",    "lease",     "quota", "heartbeat",
                                                       "node_up", "node_down", "state", "other" };
    json_t *j = json_pack("{s:s, s:s, s:s, s:I, s:I, s:I}", "node", C.node, "redis",
                          C.nservers ? C.servers[C.server] : "", "state", states[C.state], "alive",
                          (json_int_t)cl_alive(), "round_trips", (json_int_t)C.round_trips,
                          "lease_time_ms", (json_int_t)C.lease_ms);
    json_t *calls = json_object();

    for (int i = 0; i <= CL_SCRIPTS; i++)
        json_object_set_new(calls, names[i], json_integer((json_int_t)C.calls[i]));
    json_object_set_new(j, "calls", calls);
    return j;
}

json_t *
cl_nodes_json(void)
{
    return C.nodes ? json_deep_copy(C.nodes) : json_array();
}

/* --- up and down ---------------------------------------------------------------------------- */

static void
set_state(enum cl_state s)
{
    C.state = s;
    C.state_since_ms = qmgr_now_ms();
}

static void
go_up(void)
{
    char k1[200], k2[200];
    const char *argv[] = { cl_key(k1, sizeof k1, "nodeleases:%s", C.node),
                           cl_key(k2, sizeof k2, "node:%s", C.node), C.node, "up" };

    set_state(CL_UP);
    if (C.ever_up)
        msg_info("cluster: Redis %s answers again: limits and modes are shared again",
                 C.servers[C.server]);
    else
        msg_info("cluster: node %s shares its limits in Redis %s", C.node, C.servers[C.server]);
    C.warned = 0;
    C.skipped = 0;
    C.ever_up = 1;
    cl_eval(CL_SCRIPT_NODE_UP, NULL, NULL, 2, 4, argv);
    beat();
    cl_limit_up();
    cl_state_up();
}

/* drop - close both connections (their waiting replies are answered with nothing) */
static void
drop(void)
{
    redisAsyncContext *ac = C.ac, *sub = C.sub;

    C.ac = C.sub = NULL;
    C.outstanding = 0;
    C.role_ok = C.subscribed = 0;
    if (ac)
        redisAsyncFree(ac);
    if (sub)
        redisAsyncFree(sub);
}

/* go_down - Redis is unreachable (WHY): local shares until it answers again */
static void
go_down(const char *why)
{
    int was_up = C.state == CL_UP;

    if (C.state == CL_OFF)
        return;
    set_state(CL_DOWN);
    C.next_try_ms = qmgr_now_ms() + CL_RETRY_MS;
    if (!C.warned) {
        msg_warn("cluster: Redis %s unreachable (%s): each node keeps 1/%u of every shared "
                 "limit until it answers",
                 C.servers[C.server], why, cl_alive());
        C.warned = 1;
    }
    drop();
    if (was_up || !C.ever_up)
        cl_limit_down();
    C.server = (C.server + 1) % C.nservers;
}

static void
maybe_ready(void)
{
    if (C.state == CL_CONNECTING && C.role_ok && C.subscribed)
        go_up();
}

static void
on_role(redisAsyncContext *ac, void *reply, void *priv)
{
    redisReply *r = reply;

    (void)priv;
    if (ac != C.ac || C.state != CL_CONNECTING)
        return;
    if (r == NULL)
        return; /* the connection failed: on_disconnect says so */
    if (r->type == REDIS_REPLY_ERROR) {
        msg_warn("cluster: Redis %s: %.*s", C.servers[C.server], (int)(r->len < 200 ? r->len : 200),
                 r->str);
        go_down("refused");
        return;
    }
    if (r->type != REDIS_REPLY_ARRAY || r->elements < 1 ||
        r->element[0]->type != REDIS_REPLY_STRING || strcmp(r->element[0]->str, "master") != 0) {
        if (++C.skipped >= C.nservers) {
            go_down("no redis-server is a master");
            C.skipped = 0;
            return;
        }
        msg_info("cluster: Redis %s is not a master; trying the next redis-server",
                 C.servers[C.server]);
        drop();
        set_state(CL_DOWN);
        C.server = (C.server + 1) % C.nservers;
        C.next_try_ms = qmgr_now_ms(); /* at once */
        return;
    }
    C.role_ok = 1;
    maybe_ready();
}

static void
on_auth(redisAsyncContext *ac, void *reply, void *priv)
{
    redisReply *r = reply;

    (void)priv;
    if (r && r->type == REDIS_REPLY_ERROR && (ac == C.ac || ac == C.sub) &&
        C.state == CL_CONNECTING) {
        msg_warn("cluster: Redis %s refuses the password: %.*s", C.servers[C.server],
                 (int)(r->len < 200 ? r->len : 200), r->str);
        go_down("authentication failed");
    }
}

static void
on_event(redisAsyncContext *ac, void *reply, void *priv)
{
    redisReply *r = reply, **e;

    (void)priv;
    if (r == NULL || ac != C.sub || r->type != REDIS_REPLY_ARRAY || r->elements != 3)
        return;
    e = r->element;
    if (e[0]->type != REDIS_REPLY_STRING)
        return;
    if (strcmp(e[0]->str, "subscribe") == 0) {
        C.subscribed = 1;
        maybe_ready();
    } else if (strcmp(e[0]->str, "message") == 0 && e[2]->type == REDIS_REPLY_STRING) {
        cl_state_message(e[2]->str, e[2]->len);
    }
}

static void
on_connect(const redisAsyncContext *ac, int status)
{
    if (status == REDIS_OK || (ac != C.ac && ac != C.sub))
        return;
    /* hiredis frees AC after this: it must not be freed again */
    if (ac == C.ac)
        C.ac = NULL;
    else
        C.sub = NULL;
    go_down(ac->errstr[0] ? ac->errstr : "cannot connect");
}

static void
on_disconnect(const redisAsyncContext *ac, int status)
{
    (void)status;
    if (ac == C.closing) {
        C.closing = NULL; /* hiredis frees it now */
        return;
    }
    if (ac != C.ac && ac != C.sub)
        return; /* one we dropped ourselves */
    if (ac == C.ac)
        C.ac = NULL;
    else
        C.sub = NULL;
    go_down(ac->errstr[0] ? ac->errstr : "connection closed");
}

/* open_one - one connection to IP:PORT on the loop, or NULL */
static redisAsyncContext *
open_one(const char *ip, int port)
{
    redisAsyncContext *ac = redisAsyncConnect(ip, port);

    if (ac == NULL)
        return NULL;
    if (ac->err || redisLibuvAttach(ac, worker_loop()) != REDIS_OK) {
        msg_warn("cluster: cannot connect to %s:%d: %s", ip, port, ac->errstr);
        redisAsyncFree(ac);
        return NULL;
    }
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    if (C.password)
        redisAsyncCommand(ac, on_auth, NULL, "AUTH %s", C.password);
    return ac;
}

static void
connect_to(const char *ip, int port)
{
    char channel[200];

    set_state(CL_CONNECTING);
    if ((C.ac = open_one(ip, port)) == NULL || (C.sub = open_one(ip, port)) == NULL) {
        go_down("cannot connect");
        return;
    }
    redisAsyncCommand(C.ac, on_role, NULL, "ROLE");
    redisAsyncCommand(C.sub, on_event, NULL, "SUBSCRIBE %s",
                      cl_state_channel(channel, sizeof channel));
}

/* split - "HOST[:PORT]" or "[V6]:PORT" of server I into HOST and *PORT */
static void
split(uint32_t i, char *host, size_t size, int *port)
{
    const char *s = C.servers[i], *colon = strrchr(s, ':');
    size_t n;

    *port = CL_DEFAULT_PORT;
    if (*s == '[') {
        const char *close = strchr(s, ']');

        n = close ? (size_t)(close - s - 1) : 0;
        snprintf(host, size, "%.*s", (int)n, s + 1);
        if (close && close[1] == ':')
            *port = atoi(close + 2);
        return;
    }
    if (colon && strchr(s, ':') == colon) {
        snprintf(host, size, "%.*s", (int)(colon - s), s);
        *port = atoi(colon + 1);
    } else {
        snprintf(host, size, "%s", s);
    }
}

static void
on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    char host[256], ip[INET6_ADDRSTRLEN];
    int port;

    C.gai_busy = 0;
    if (C.state != CL_RESOLVING) {
        uv_freeaddrinfo(res);
        return;
    }
    (void)req;
    split(C.server, host, sizeof host, &port);
    if (status < 0 || res == NULL || uv_ip_name(res->ai_addr, ip, sizeof ip) != 0) {
        uv_freeaddrinfo(res);
        go_down(status < 0 ? uv_strerror(status) : "no address");
        return;
    }
    uv_freeaddrinfo(res);
    connect_to(ip, port);
}

/* attempt - try the current server: resolved first when it is a name */
static void
attempt(void)
{
    static const struct addrinfo hints = { .ai_socktype = SOCK_STREAM };
    char host[256];
    unsigned char addr[16];
    int port;

    split(C.server, host, sizeof host, &port);
    if (inet_pton(AF_INET, host, addr) == 1 || inet_pton(AF_INET6, host, addr) == 1) {
        connect_to(host, port);
        return;
    }
    if (C.gai_busy)
        return;
    set_state(CL_RESOLVING);
    C.gai_busy = 1;
    if (uv_getaddrinfo(worker_loop(), &C.gai, on_resolved, host, NULL, &hints) != 0) {
        C.gai_busy = 0;
        go_down("cannot resolve");
    }
}

static void
on_tick(uv_timer_t *t)
{
    uint64_t now = qmgr_now_ms();

    (void)t;
    switch (C.state) {
    case CL_DOWN:
        if (now >= C.next_try_ms)
            attempt();
        break;
    case CL_RESOLVING:
    case CL_CONNECTING:
        if (now - C.state_since_ms > CL_CONNECT_MS)
            go_down("no answer");
        break;
    case CL_UP:
        if (C.outstanding > 0 && now - C.progress_ms > CL_TIMEOUT_MS)
            go_down("no answer for 1.5 s");
        else if (now >= C.next_beat_ms)
            beat();
        break;
    default:
        break;
    }
}

/* --- configuration ------------------------------------------------------------------------ */

static void
forget_servers(void)
{
    for (uint32_t i = 0; i < C.nservers; i++)
        free(C.servers[i]);
    free(C.servers);
    C.servers = NULL;
    C.nservers = C.server = 0;
    free(C.password);
    C.password = NULL;
}

/* same_servers - does scope S list the servers we use now? */
static int
same_setup(uint32_t s)
{
    const struct cfg_value *v;
    uint32_t it = 0, n = 0;

    while ((v = cfg_scope_next(S.cfg, s, CFG_D_CLUSTER_REDIS_SERVER, &it)) != NULL)
        if (n >= C.nservers || strcmp(C.servers[n++], cfg_str(S.cfg, v->text)) != 0)
            return 0;
    v = cfg_scope_get(S.cfg, s, CFG_D_CLUSTER_REDIS_PASSWORD);
    return n == C.nservers &&
           ((v == NULL && C.password == NULL) ||
            (v && C.password && strcmp(cfg_str(S.cfg, v->text), C.password) == 0));
}

static const char *
scope_text(uint32_t s, enum cfg_directive d, const char *dflt)
{
    const struct cfg_value *v = cfg_scope_get(S.cfg, s, d);

    return v && !(v->flags & CFG_VALUE_UNSET) ? cfg_str(S.cfg, v->text) : dflt;
}

/* qmgr_cluster_config - see qmgr_cluster.h */
void
qmgr_cluster_config(void)
{
    uint32_t it = 0, s = cfg_next_scope(S.cfg, CFG_S_CLUSTER, &it);
    const struct cfg_value *v;
    char node[CL_NAME_MAX + 1], prefix[CL_PREFIX_MAX + 1];

    if (s == CFG_NONE) {
        if (C.state != CL_OFF) {
            msg_info("cluster: no <cluster> any more: every limit is local");
            qmgr_cluster_stop();
        }
        return;
    }
    snprintf(node, sizeof node, "%s", scope_text(s, CFG_D_CLUSTER_NODE_NAME, qmgr_host_name()));
    snprintf(prefix, sizeof prefix, "%s", scope_text(s, CFG_D_CLUSTER_KEY_PREFIX, "pmta:"));
    v = cfg_scope_get(S.cfg, s, CFG_D_CLUSTER_LEASE_TIME);
    C.lease_ms = v && v->num > 0 ? (uint64_t)v->num * 1000 : 5000;
    if (C.lease_ms < 2000)
        C.lease_ms = 2000;
    if (C.state != CL_OFF && same_setup(s) && strcmp(node, C.node) == 0 &&
        strcmp(prefix, C.prefix) == 0)
        return;
    if (C.state != CL_OFF)
        qmgr_cluster_stop();
    snprintf(C.node, sizeof C.node, "%s", node);
    snprintf(C.prefix, sizeof C.prefix, "%s", prefix);
    it = 0;
    while ((v = cfg_scope_next(S.cfg, s, CFG_D_CLUSTER_REDIS_SERVER, &it)) != NULL) {
        C.servers = xreallocarray(C.servers, C.nservers + 1, sizeof *C.servers);
        C.servers[C.nservers++] = xstrdup(cfg_str(S.cfg, v->text));
    }
    if ((v = cfg_scope_get(S.cfg, s, CFG_D_CLUSTER_REDIS_PASSWORD)) != NULL &&
        !(v->flags & CFG_VALUE_UNSET))
        C.password = xstrdup(cfg_str(S.cfg, v->text));
    if (!C.timer_on) {
        uv_timer_init(worker_loop(), &C.timer);
        uv_unref((uv_handle_t *)&C.timer);
        C.timer_on = 1;
    }
    uv_timer_start(&C.timer, on_tick, CL_TICK_MS, CL_TICK_MS);
    set_state(CL_DOWN);
    C.warned = 0;
    attempt();
}

/* qmgr_cluster_stop - see qmgr_cluster.h */
void
qmgr_cluster_stop(void)
{
    if (C.state == CL_OFF)
        return;
    cl_limit_release_all();
    if (C.state == CL_UP) {
        char k1[200], k2[200];
        const char *argv[] = { cl_key(k1, sizeof k1, "nodeleases:%s", C.node),
                               cl_key(k2, sizeof k2, "node:%s", C.node), C.node, "down" };

        cl_eval(CL_SCRIPT_NODE_DOWN, NULL, NULL, 2, 4, argv);
        if (C.ac && C.closing == NULL) {
            C.closing = C.ac;
            redisAsyncDisconnect(C.ac); /* once what is queued went out and was answered */
            C.ac = NULL;
        }
    }
    C.state = CL_OFF;
    drop();
    if (C.timer_on)
        uv_timer_stop(&C.timer);
    forget_servers();
}

void
qmgr_cluster_free(void)
{
    qmgr_cluster_stop();
    if (C.closing) {
        redisAsyncContext *ac = C.closing;

        C.closing = NULL;
        redisAsyncFree(ac); /* its replies still awaited are answered with nothing */
    }
    cl_limit_free();
    cl_state_free();
    json_decref(C.nodes);
    C.nodes = NULL;
    if (C.timer_on)
        uv_close((uv_handle_t *)&C.timer, NULL);
    C.timer_on = 0;
}
