/*
 * worker.h - the runtime every worker program (smtpd, cleanup, qmgr, smtp-out) shares
 *
 * pmtad starts each worker with descriptors and environment it prepared
 * (see master/master_spawn.c): a channel to pmtad, the log, the sockets of
 * its role, and the path of the configuration snapshot. worker_init() turns
 * those into a running libuv loop:
 *
 *     int main(int argc, char **argv)
 *     {
 *         worker_init(&argc, &argv, "qmgr");
 *         ... set up handles on worker_loop(), using worker_config() ...
 *         return worker_run();
 *     }
 *
 * Configuration: the runtime maps the snapshot (never the config text) and
 * holds it as the *current* configuration. On CTL_CONFIG it maps the new
 * generation, makes it current, calls ops.on_config, acknowledges it to pmtad
 * and logs "using configuration generation N". Work that must finish on the
 * settings it started with (a session, a transaction) pins the configuration
 * with worker_config_hold() and lets go with worker_config_release(); an old
 * generation is unmapped when the last holder releases it. That is the "safe
 * point" rule: new work sees the new settings, in-flight work the old ones.
 *
 * Shutdown: CTL_SHUTDOWN or SIGTERM calls ops.on_shutdown (default: stop at
 * once). The worker closes its own handles and calls worker_stop(); when the
 * loop is empty worker_run() returns. If pmtad's channel closes (pmtad died)
 * the worker stops too, with WORKER_ORPHAN_DRAIN_S of drain time: work that is
 * under way (a delivery whose DATA is out, a commit, a client's transaction)
 * may finish and be recorded rather than be done again after the restart;
 * then it exits with status 1. SIGINT and SIGHUP are ignored: pmtad decides.
 *
 * Errors: environment problems at start (no snapshot, bad descriptors) are
 * msg_fatal(); pmtad logs the exit and restarts the worker.
 *
 * SECURITY: when pmtad dropped privileges (PMTA_PRIVILEGES_DROPPED), the
 * runtime refuses to run as root, with supplementary groups, with any
 * capability, without no_new_privs or with a non-empty capability bounding
 * set, before doing anything else.
 */
#ifndef PMTA_WORKER_H
#define PMTA_WORKER_H

#include <stdint.h>
#include <sys/socket.h>
#include <uv.h>

#include "cfg.h"

#define WORKER_ORPHAN_DRAIN_S 2u /* drain time when pmtad is gone */

struct worker_ops {
    /* The new configuration CFG is current (already mapped); pin it per session if needed. */
    void (*on_config)(const struct cfg *cfg, void *ctx);
    /* Stop taking new work, finish within DRAIN_SECONDS, close handles, call worker_stop(). */
    void (*on_shutdown)(unsigned drain_seconds, void *ctx);
    void *ctx;
};

/* worker_init - set up logging, the loop, the snapshot and the pmtad channel; says HELLO */
void worker_init(int *argc, char ***argv, const char *role);
/* worker_set_ops - install the callbacks (copied) */
void worker_set_ops(const struct worker_ops *ops);
/* worker_run - run the loop until the worker stopped; returns the exit status */
int worker_run(void);
/* worker_stop - close the runtime's handles; STATUS becomes worker_run()'s result */
void worker_stop(int status);
/* worker_stopping - has shutdown begun? */
int worker_stopping(void);

uv_loop_t *worker_loop(void);
const char *worker_role(void);

/* worker_config - the current configuration (borrowed: valid until the loop turns) */
const struct cfg *worker_config(void);
uint64_t worker_config_generation(void);
/* worker_config_hold - the current configuration, valid until worker_config_release(C) */
const struct cfg *worker_config_hold(void);
void worker_config_release(const struct cfg *c);

/* Inherited smtp-listener sockets (smtpd only). Descriptors stay owned by the runtime. */
int worker_listen_count(void);
int worker_listen_fd(int i);
const char *worker_listen_source(int i);  /* "" when the listener names no source */
const char *worker_listen_address(int i); /* "IP:PORT" as configured */
/* worker_socket_fd - the internal socket NAME ("cleanup", "qmgr", "control") this role serves, or
 * -1 */
int worker_socket_fd(const char *name);

/*
 * worker_accept_start - accept connections on listening socket FD (not
 * owned; NAME for logs). ACCEPTED gets each new descriptor (close-on-exec,
 * non-blocking; it owns it) and the peer's address. Out of descriptors,
 * each pending connection is taken with a reserve descriptor, handed to
 * OVERLOAD (may be NULL) to write a refusal, and closed; accepting then
 * pauses for 100 ms (see worker_listen.c). 0 and *OUT set, or a libuv error.
 */
struct worker_listener;
typedef void (*worker_accept_fn)(void *ctx, int fd, const struct sockaddr *peer, socklen_t len);
typedef void (*worker_overload_fn)(void *ctx, int fd);
int worker_accept_start(int fd, const char *name, worker_accept_fn accepted,
                        worker_overload_fn overload, void *ctx, struct worker_listener **out);
/*
 * worker_listen - the same on the internal socket NAME, for callers that
 * want the descriptor only; -ENOENT when pmtad gave this role no such socket.
 */
int worker_listen(const char *name, void (*accepted)(int fd), struct worker_listener **out);
/* worker_listen_stop - close the watcher (not the socket) */
void worker_listen_stop(struct worker_listener *l);
/* worker_socket_path - where clients reach internal socket NAME (RUNDIR/private/NAME); caller frees
 */
char *worker_socket_path(const char *name);

/* worker_privileges_dropped - did pmtad start us under the run-as-user (it runs as root)? */
int worker_privileges_dropped(void);

const char *worker_spool(void);
const char *worker_run_directory(void);

#endif
