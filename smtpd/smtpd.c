/*
 * smtpd.c - the inbound SMTP worker: listeners, accepting, limits, drain
 *
 * NAME
 *   smtpd - accept SMTP connections on the sockets pmtad passes and serve
 *   each as a session (smtpd_session.c) on one libuv loop
 *
 * DESCRIPTION
 *   pmtad binds every smtp-listener and the pickup socket (RUNDIR/pickup,
 *   mode 0666, where the sendmail command submits) and starts
 *   smtpd-processes copies of this program; the kernel spreads accepted
 *   connections over them. A <smtp-listener IP:PORT> block may say
 *   `immediate-tls yes` (port 465 style) and `tls-certificate FILE`.
 *
 *   total-max-smtp-in is enforced per process as ceil(total / smtpd-processes):
 *   no shared counter between processes, so the global cap is exact only
 *   when connections spread evenly; a connection over the cap gets
 *   "421 4.7.0" and is closed.
 *
 *   TLS: the certificate (smtp-server-tls-certificate, one PEM with chain
 *   and key) is loaded here, after privileges were dropped, so it must be
 *   readable by the run-as-user. Contexts are rebuilt on reload; sessions
 *   that started before keep theirs.
 *
 *   Shutdown: stop accepting; sessions waiting for cleanup's commit get
 *   their answer, then 421 4.3.2; idle sessions get 421 4.3.2 at once; at the
 *   drain deadline everything left is closed.
 *
 * Owns: the listener handles, the TLS contexts, the drain timer.
 *
 * SECURITY: accepts network connections; the per-process cap bounds
 * memory. Everything a peer sends is handled in smtpd_session.c.
 */
#include "config.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "msg.h"
#include "worker.h"
#include "xalloc.h"
#include "smtpd.h"

struct listener {
    union smtpd_stream io;
    struct smtpd_origin origin;
    char *cert_file; /* the listener's own tls-certificate, or NULL */
};

struct retired_ctx {
    struct smtpd_tls_ctx *ctx;
    struct retired_ctx *next;
};

static struct {
    struct listener *listeners;
    int nlisteners; /* TCP listeners + the pickup socket */
    struct smtpd_tls_ctx *global_tls;
    struct retired_ctx *retired;
    uv_timer_t drain_timer;
    bool stopping;
} M;

/* cert_path - the file of smtp-server-tls-certificate "FILE [PASSWORD]" (fresh copy) or NULL */
static char *
cert_path(const struct cfg *c)
{
    const struct cfg_value *v = cfg_global(c, CFG_D_SMTP_SERVER_TLS_CERTIFICATE);
    const char *text;

    if (v == NULL || (v->flags & (CFG_VALUE_UNSET | CFG_VALUE_CLEAR)))
        return NULL;
    text = cfg_str(c, v->text);
    text += strspn(text, " \t");
    return *text ? xstrndup(text, strcspn(text, " \t")) : NULL;
}

static const char *
ca_file(const struct cfg *c)
{
    const struct cfg_value *v = cfg_global(c, CFG_D_SMTP_SERVER_TLS_CA_FILE);

    if (v == NULL || (v->flags & (CFG_VALUE_UNSET | CFG_VALUE_CLEAR)))
        return NULL;
    return *cfg_str(c, v->text) ? cfg_str(c, v->text) : NULL;
}

/* retire - sessions may still hold CTX (SSL_new at STARTTLS): free it at exit */
static void
retire(struct smtpd_tls_ctx *ctx)
{
    struct retired_ctx *r;

    if (ctx == NULL)
        return;
    r = xcalloc(1, sizeof(*r));
    r->ctx = ctx;
    r->next = M.retired;
    M.retired = r;
}

/* load_tls - (re)build every TLS context from C */
static void
load_tls(const struct cfg *c)
{
    char *cert = cert_path(c);

    retire(M.global_tls);
    M.global_tls = cert ? smtpd_tls_ctx_new(cert, ca_file(c)) : NULL;
    for (int i = 0; i < M.nlisteners; i++) {
        struct listener *l = &M.listeners[i];

        if (l->origin.pickup)
            continue;
        if (l->cert_file) {
            if (l->origin.tls != M.global_tls)
                retire(l->origin.tls);
            l->origin.tls = smtpd_tls_ctx_new(l->cert_file, ca_file(c));
        } else {
            l->origin.tls = M.global_tls;
        }
    }
    free(cert);
}

/* set_limit - total-max-smtp-in shared out over the smtpd processes */
static void
set_limit(const struct cfg *c)
{
    const struct cfg_value *total = cfg_global(c, CFG_D_TOTAL_MAX_SMTP_IN);
    int64_t procs = cfg_process_count(c, CFG_D_SMTPD_PROCESSES);
    int64_t t = total ? total->num : 100, p = procs > 0 ? procs : 1;

    smtpd_session_set_limit(t <= 0 ? 0 : (unsigned)((t + p - 1) / p));
}

static void
free_handle(uv_handle_t *h)
{
    free(h);
}

static void
on_connection(uv_stream_t *server, int status)
{
    struct listener *l = server->data;
    uv_stream_t *client;

    if (status < 0 || M.stopping)
        return;
    client = smtpd_session_alloc();
    if (l->origin.pickup)
        uv_pipe_init(worker_loop(), (uv_pipe_t *)client, 0);
    else
        uv_tcp_init(worker_loop(), (uv_tcp_t *)client);
    if (uv_accept(server, client) != 0) {
        uv_close((uv_handle_t *)client, free_handle);
        return;
    }
    if (!l->origin.pickup)
        uv_tcp_nodelay((uv_tcp_t *)client, 1); /* replies are small and latency-bound */
    if (l->origin.implicit_tls && l->origin.tls == NULL) {
        msg_warn("%s: immediate-tls without a usable certificate; closing connection",
                 l->origin.listener_address);
        uv_close((uv_handle_t *)client, free_handle);
        return;
    }
    smtpd_session_start(client, &l->origin);
}

/* listener_options - immediate-tls and tls-certificate of a <smtp-listener ADDRESS> block */
static void
listener_options(const struct cfg *c, struct listener *l)
{
    uint32_t scope = cfg_find_scope(c, CFG_S_LISTENER, l->origin.listener_address);
    const struct cfg_value *v;

    if (scope == CFG_NONE)
        return;
    v = cfg_scope_get(c, scope, CFG_D_IMMEDIATE_TLS);
    l->origin.implicit_tls = v && v->num;
    v = cfg_scope_get(c, scope, CFG_D_LISTENER_TLS_CERTIFICATE);
    if (v && *cfg_str(c, v->text))
        l->cert_file = xstrdup(cfg_str(c, v->text));
}

/* open_stream - listen on a dup of inherited FD (libuv owns and closes its copy) */
static void
open_stream(struct listener *l, int fd, const char *what)
{
    int mine = dup(fd), err;

    if (mine < 0)
        msg_fatal("cannot use %s: dup: %m", what);
    if (l->origin.pickup) {
        uv_pipe_init(worker_loop(), &l->io.pipe, 0);
        err = uv_pipe_open(&l->io.pipe, mine);
    } else {
        uv_tcp_init(worker_loop(), &l->io.tcp);
        err = uv_tcp_open(&l->io.tcp, mine);
    }
    l->io.handle.data = l;
    if (err == 0)
        err = uv_listen(&l->io.stream, 1024, on_connection);
    if (err != 0)
        msg_fatal("cannot listen on %s: %s", what, uv_strerror(err));
}

/* open_listeners - every inherited smtp-listener, then the pickup socket */
static void
open_listeners(const struct cfg *c)
{
    int ntcp = worker_listen_count(), pickup_fd = worker_socket_fd("pickup");

    M.listeners = xcalloc((size_t)ntcp + 1, sizeof(*M.listeners));
    for (int i = 0; i < ntcp; i++) {
        struct listener *l = &M.listeners[M.nlisteners++];

        l->origin.listener_source = worker_listen_source(i);
        l->origin.listener_address = worker_listen_address(i);
        listener_options(c, l);
        open_stream(l, worker_listen_fd(i), l->origin.listener_address);
    }
    if (pickup_fd >= 0) {
        struct listener *l = &M.listeners[M.nlisteners++];

        l->origin.listener_source = "{pickup}";
        l->origin.listener_address = "pickup";
        l->origin.pickup = true;
        open_stream(l, pickup_fd, "the pickup socket");
    }
    load_tls(c);
}

static void
on_config(const struct cfg *c, void *ctx)
{
    (void)ctx;
    set_limit(c);
    load_tls(c);
}

/* finish - the last session is gone: close what is left and stop */
static void
finish(void)
{
    smtpd_session_set_idle_cb(NULL);
    uv_timer_stop(&M.drain_timer);
    uv_close((uv_handle_t *)&M.drain_timer, NULL);
    smtpd_cleanup_close();
    smtpd_session_fini();
    worker_stop(0);
}

static void
on_drain_deadline(uv_timer_t *t)
{
    (void)t;
    msg_warn("drain deadline: closing %u session(s)", smtpd_session_count());
    smtpd_session_close_all();
}

static void
on_shutdown(unsigned drain_seconds, void *ctx)
{
    (void)ctx;
    if (M.stopping)
        return;
    M.stopping = true;
    for (int i = 0; i < M.nlisteners; i++)
        uv_close(&M.listeners[i].io.handle, NULL);
    if (smtpd_session_count() == 0) {
        finish();
        return;
    }
    smtpd_session_set_idle_cb(finish);
    uv_timer_start(&M.drain_timer, on_drain_deadline,
                   (uint64_t)(drain_seconds ? drain_seconds : 1) * 1000, 0);
    smtpd_session_shutdown_all();
}

/* free_all - after the loop ended */
static void
free_all(void)
{
    for (int i = 0; i < M.nlisteners; i++) {
        if (M.listeners[i].cert_file && M.listeners[i].origin.tls != M.global_tls)
            smtpd_tls_ctx_free(M.listeners[i].origin.tls);
        free(M.listeners[i].cert_file);
    }
    free(M.listeners);
    smtpd_tls_ctx_free(M.global_tls);
    while (M.retired) {
        struct retired_ctx *r = M.retired;

        M.retired = r->next;
        smtpd_tls_ctx_free(r->ctx);
        free(r);
    }
}

int
main(int argc, char **argv)
{
    struct worker_ops ops = { on_config, on_shutdown, NULL };
    int status;

    worker_init(&argc, &argv, "smtpd");
    worker_set_ops(&ops);
    uv_timer_init(worker_loop(), &M.drain_timer);
    smtpd_session_init(worker_loop());
    smtpd_cleanup_init(worker_loop());
    set_limit(worker_config());
    open_listeners(worker_config());
    status = worker_run();
    free_all();
    return status;
}
