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
 *   Accepting is runtime/worker_listen.c's (a batch per wake-up, a reserve
 *   descriptor for "421 4.3.2" when the process runs out of them); each new
 *   connection goes to smtpd_admit.c, which applies total-max-smtp-in and
 *   the per-address limits across all smtpd processes.
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
 * SECURITY: accepts network connections; smtpd_admit.c's limits bound
 * memory and descriptors. Everything a peer sends is handled in
 * smtpd_session.c.
 */
#include "config.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "msg.h"
#include "worker.h"
#include "xalloc.h"
#include "smtpd.h"

struct listener {
    struct worker_listener *watch;
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

/* on_accepted - a new connection on listener CTX */
static void
on_accepted(void *ctx, int fd, const struct sockaddr *peer, socklen_t len)
{
    struct listener *l = ctx;

    (void)len;
    if (M.stopping) {
        close(fd);
        return;
    }
    if (!l->origin.pickup) {
        int on = 1; /* replies are small and latency-bound */

        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof(on));
    }
    if (l->origin.implicit_tls && l->origin.tls == NULL) {
        msg_warn("%s: immediate-tls without a usable certificate; closing connection",
                 l->origin.listener_address);
        close(fd);
        return;
    }
    smtpd_admit(fd, l->origin.pickup ? NULL : peer, &l->origin);
}

static void
on_overload(void *ctx, int fd)
{
    (void)ctx;
    smtpd_admit_overload(fd);
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

/* watch - accept on inherited FD (the runtime keeps it open) */
static void
watch(struct listener *l, int fd, const char *what)
{
    int err = worker_accept_start(fd, what, on_accepted, on_overload, l, &l->watch);

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
        watch(l, worker_listen_fd(i), l->origin.listener_address);
    }
    if (pickup_fd >= 0) {
        struct listener *l = &M.listeners[M.nlisteners++];

        l->origin.listener_source = "{pickup}";
        l->origin.listener_address = "pickup";
        l->origin.pickup = true;
        watch(l, pickup_fd, "the pickup socket");
    }
    load_tls(c);
}

static void
on_config(const struct cfg *c, void *ctx)
{
    (void)ctx;
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
    smtpd_admit_fini();
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
        worker_listen_stop(M.listeners[i].watch);
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
    smtpd_admit_init(worker_loop());
    open_listeners(worker_config());
    status = worker_run();
    free_all();
    return status;
}
