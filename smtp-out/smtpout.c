/*
 * smtpout.c - the smtp-out worker: outbound SMTP connections ordered by qmgr
 *
 * What it does: sets up what every connection of this process shares -- one
 * DNS resolver (c-ares on the worker's libuv loop, talking only to the
 * configured `name-server`s, read at start: a reload does not change them),
 * one TLS client context (and one per smtp-tls-ca-file trust store), the
 * MTA-STS policy cache, the LMDB queue opened read-only for message
 * content on first use -- then connects to qmgr (smtpout_worker.c) and runs
 * the connections it orders (smtpout_conn.c).
 *
 * Shutdown (pmtad's CTL_SHUTDOWN or SIGTERM, or pmtad gone): idle connections
 * QUIT at once, running transactions may finish within the drain time, then
 * the qmgr channel is closed and whatever is left is aborted without a
 * report: qmgr requeues it as from a process that died. When no connection
 * is left the channel, the resolver, the TLS context and the queue are
 * closed and the loop ends.
 *
 * Owns: the resolver, the SSL_CTXs, the MTA-STS cache, the queue handle,
 * the drain timer.
 *
 * SECURITY: runs unprivileged (the worker runtime checks); talks to hostile
 * SMTP servers through smtpout_session, which bounds and sanitizes replies.
 * Certificates are not verified (opportunistic TLS must not stop mail)
 * unless DANE, MTA-STS or smtp-tls-ca-file ask for it (smtpout_tlspol.h).
 */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include "msg.h"
#include "smtpout.h"
#include "smtpout_http.h"
#include "worker.h"
#include "xalloc.h"

#define DNS_CACHE_MAX_TTL 300
#define NAME_SERVERS_MAX  1024

#define CA_CTX_MAX 16 /* distinct smtp-tls-ca-file stores kept */

static struct {
    struct mxdns *dns;
    SSL_CTX *ssl_ctx;
    struct {
        char *path; /* "" for the system's default paths */
        SSL_CTX *ctx;
    } ca[CA_CTX_MAX];
    size_t nca;
    struct smtpout_sts *sts;
    struct qstore *qs;
    uv_timer_t drain;
    int draining;
    int finished;
} G;

struct mxdns *
out_dns(void)
{
    return G.dns;
}

SSL_CTX *
out_ssl_ctx(void)
{
    return G.ssl_ctx;
}

SSL_CTX *
out_ssl_ctx_ca(const char *ca_file)
{
    const char *path = ca_file ? ca_file : "";
    char err[200];
    SSL_CTX *ctx;

    for (size_t i = 0; i < G.nca; i++)
        if (strcmp(G.ca[i].path, path) == 0)
            return G.ca[i].ctx;
    if ((ctx = smtpout_tls_client_ctx(path, err, sizeof err)) == NULL) {
        /* refused by --check-config when it was unreadable then: it changed since */
        msg_warn("cannot load the trust store %s: %s", *path ? path : "(system default)", err);
        return NULL;
    }
    if (G.nca == CA_CTX_MAX) { /* more stores than we keep: forget the oldest */
        SSL_CTX_free(G.ca[0].ctx);
        free(G.ca[0].path);
        memmove(&G.ca[0], &G.ca[1], sizeof G.ca[0] * (CA_CTX_MAX - 1));
        G.nca--;
    }
    G.ca[G.nca].path = xstrdup(path);
    G.ca[G.nca++].ctx = ctx;
    return ctx;
}

struct smtpout_sts *
out_sts(void)
{
    return G.sts;
}

/* open_sts - the MTA-STS cache; its HTTPS trust store is mta-sts-ca-file (read at start) */
static void
open_sts(const struct cfg *cfg)
{
    const struct cfg_value *v = cfg_global(cfg, CFG_D_MTA_STS_CA_FILE);
    const char *ca = v && !(v->flags & (CFG_VALUE_UNSET | CFG_VALUE_CLEAR)) ? cfg_str(cfg, v->text)
                                                                            : NULL;
    struct smtpout_sts_options o = { .https_ctx = out_ssl_ctx_ca(ca && *ca ? ca : NULL) };

    if (G.ssl_ctx == NULL || o.https_ctx == NULL) {
        msg_warn("MTA-STS disabled: no TLS trust store for the policy fetch");
        return;
    }
    G.sts = smtpout_sts_create(worker_loop(), G.dns, &o);
}

static void
open_resolver(const struct cfg *cfg)
{
    char servers[NAME_SERVERS_MAX];
    struct mxdns_options o = { .cache_max_ttl = DNS_CACHE_MAX_TTL };
    int err;

    mxdns_name_servers(cfg, servers, sizeof servers);
    o.name_servers = servers[0] ? servers : NULL;
    if ((err = mxdns_create(worker_loop(), &o, &G.dns)) < 0)
        msg_fatal("cannot start the DNS resolver (name-server %s): %s",
                  servers[0] ? servers : "system", strerror(-err));
    msg_info("resolver uses %s", servers[0] ? servers : "the system's name servers");
}

/*
 * out_queue - the queue, opened read-only on first use: at our start cleanup
 * or qmgr may not have created it yet. NULL (logged) while it cannot be opened.
 */
struct qstore *
out_queue(void)
{
    char *dir;
    int err;

    if (G.qs != NULL || G.draining)
        return G.qs;
    if ((err = qstore_open_spool(&G.qs, worker_config(), worker_spool(), QSTORE_RDONLY, &dir)) <
        0) {
        msg_warn("cannot open the queue %s: %s", dir, qstore_strerror(err));
        G.qs = NULL;
    }
    free(dir);
    return G.qs;
}

/* --- shutdown ----------------------------------------------------------------------- */

void
out_check_stopped(void)
{
    if (!G.draining || G.finished || oconn_count() > 0)
        return;
    G.finished = 1;
    uv_timer_stop(&G.drain);
    uv_close((uv_handle_t *)&G.drain, NULL);
    out_chan_close();
    smtpout_sts_destroy(G.sts);
    G.sts = NULL;
    mxdns_destroy(G.dns);
    G.dns = NULL;
    SSL_CTX_free(G.ssl_ctx);
    G.ssl_ctx = NULL;
    for (size_t i = 0; i < G.nca; i++) {
        SSL_CTX_free(G.ca[i].ctx);
        free(G.ca[i].path);
    }
    G.nca = 0;
    smtpout_http_shutdown();
    if (G.qs)
        qstore_close(G.qs);
    G.qs = NULL;
    worker_stop(0);
}

/*
 * on_drain_timeout - what is still running is cut off by us, not by the
 * receiver: close the qmgr channel first, so that qmgr puts those recipients
 * back in their queues, due at once (a process that went away), instead of
 * getting "session aborted" results that it would have to defer by
 * retry-after. Then abort the connections without reports. Results already
 * gathered this loop turn still go out with the close.
 */
static void
on_drain_timeout(uv_timer_t *t)
{
    (void)t;
    if (oconn_count() > 0)
        msg_info("drain time over; aborting %zu connections (their recipients stay queued)",
                 oconn_count());
    out_chan_close(); /* aborts every connection, unreported (oconn_abort_all) */
}

static void
on_shutdown(unsigned drain_seconds, void *ctx)
{
    if (G.draining)
        return;
    G.draining = 1;
    uv_timer_init(worker_loop(), &G.drain);
    uv_timer_start(&G.drain, on_drain_timeout, (uint64_t)drain_seconds * 1000, 0);
    if (oconn_count() > 0)
        msg_info("shutting down: %zu connections to finish", oconn_count());
    oconn_shutdown();
    out_check_stopped();
}

int
main(int argc, char **argv)
{
    static const struct worker_ops ops = { NULL, on_shutdown, NULL };
    char err[200];

    worker_init(&argc, &argv, "smtp-out");
    worker_set_ops(&ops);
    open_resolver(worker_config());
    if ((G.ssl_ctx = smtpout_tls_client_ctx(NULL, err, sizeof err)) == NULL)
        msg_warn("no TLS client context: STARTTLS disabled: %s", err);
    open_sts(worker_config());
    out_chan_start();
    return worker_run();
}
