/*
 * master.h - pmtad, the supervisor: shared state of its modules
 *
 * pmtad starts as root, validates the configuration, prepares the spool and
 * run directories, binds every socket (smtp-listener TCP sockets and the
 * internal Unix sockets under the run directory), writes the configuration
 * snapshot the workers map, and then runs the workers (smtpd, cleanup, qmgr,
 * smtp-out) as separate programs under the unprivileged run-as-user. It
 * restarts dead workers with a rate limit, reloads on SIGHUP and drains on
 * SIGTERM/SIGINT.
 *
 * Modules:
 *   master.c         main(), command line, daemonizing, signals, start/stop
 *   master_config.c  loading + diagnostics, --check-config, --show-settings,
 *                    settings extraction, snapshots, publishing a reload
 *   master_validate.c  a reload validated in a child process; DKIM keys
 *                    checked as the run-as-user
 *   master_files.c   spool/run directories, spool lock, pid file
 *   master_listen.c  smtp-listener sockets, internal Unix sockets, the
 *                    smtpd processes' shared connection table
 *   master_spawn.c   worker processes: spawn, IPC, death, throttling
 *   master_exec.c    pmtad --exec-worker: drop every privilege, exec a worker
 *
 * SECURITY: pmtad is the only process that keeps root. Everything it hands a
 * worker (descriptors, environment, files under the run directory) is decided
 * here; workers get only the sockets of their own role.
 */
#ifndef PMTA_MASTER_H
#define PMTA_MASTER_H

#include <stdint.h>
#include <sys/types.h>
#include <uv.h>

#include "cfg.h"
#include "ipc.h"

enum master_role_id { ROLE_SMTPD, ROLE_CLEANUP, ROLE_QMGR, ROLE_SMTPOUT, ROLE_COUNT };

/* Restart-rate limit: more than this many deaths of one role in the window throttle it. */
#define MASTER_DEATHS_MAX         5
#define MASTER_DEATH_WINDOW_MS    60000
#define MASTER_BACKOFF_MAX_S      60
/* How long the reload validator may take before it is killed and the reload refused. */
#define MASTER_VALIDATE_TIMEOUT_S 30
/* How long workers get to finish in-flight work on SIGTERM before SIGKILL. */
#define MASTER_DRAIN_SECONDS      10

/* Settings pmtad itself needs, with relative paths already made absolute. */
struct master_settings {
    char *config_path; /* absolute */
    char *spool;
    char *run_dir;
    char *log_file;      /* NULL when logging to syslog */
    char *user;          /* run-as-user */
    int drop_privileges; /* run workers as USER */
    uid_t uid;           /* worker credentials (our own when not dropping) */
    gid_t gid;
    unsigned nprocs[ROLE_COUNT];
    int http_port;         /* http-mgmt-port; 0: no monitor */
    int log_rotate;        /* log-rotate: old log files kept */
    int log_auto_rotation; /* log-auto-rotation: rotate at local midnight */
    int64_t log_max_size;  /* log-max-size: rotate past this many bytes; <= 0 never */
};

struct master_listener {
    char *address; /* "IP:PORT" as written */
    char *source;  /* source=NAME, or "" */
    int fd;
};

/* An internal Unix socket bound by pmtad and served by one role. */
struct master_socket {
    const char *name; /* "cleanup", "qmgr", "control", "pickup", "http" */
    char *path;       /* NULL for the TCP one (http) */
    int fd;
    enum master_role_id server;
};
#define MASTER_NSOCKETS 5

struct master_role;
struct validation;

/* Diagnostics of one load: printed (--check-config) or logged (reload). */
struct master_diag {
    int to_log; /* log the diagnostics instead of printing them */
    unsigned errors;
    unsigned warnings;
};

/* What the validator process (pmtad --validate-reload) is told. */
struct master_validate_args {
    const char *config_path;
    const char *snapshot_path; /* RUNDIR/config.GENERATION to write */
    uint64_t generation;
    uid_t uid; /* the workers' credentials: DKIM keys are checked as them */
    gid_t gid;
    int drop_privileges;
    const char *fault_file; /* test hook, NULL unless pmtad got --test-validator-fault */
};

/* One running (or exiting) worker process. Freed when its handle and channel are both closed. */
struct master_proc {
    struct master_role *role;
    unsigned slot;
    uv_process_t process;
    struct ipc_chan *chan;
    int pid;
    int exited;
    int process_closed;
    int said_hello;
    uint64_t spawn_generation; /* snapshot named in its environment */
    uint64_t acked_generation; /* last generation it said it uses */
};

struct master_slot {
    struct master_proc *proc; /* NULL while waiting for a restart */
    uv_timer_t restart_timer;
    struct master_role *role;
    unsigned index;
};

struct master_role {
    enum master_role_id id;
    const char *name; /* smtpd, cleanup, qmgr, smtp-out */
    char *program;    /* absolute path of the binary */
    unsigned nslots;
    struct master_slot *slots;
    uint64_t deaths[MASTER_DEATHS_MAX + 1]; /* ring of recent death times (ms) */
    unsigned ndeaths;
    unsigned startup_failures; /* consecutive deaths before HELLO */
    unsigned backoff_s;        /* current throttled delay, 0 when not throttled */
};

struct master {
    uv_loop_t loop;
    int foreground;
    int verbose;
    struct master_settings set;
    struct cfg *cfg;          /* the configuration in force */
    uint64_t generation;      /* its snapshot generation */
    uint64_t oldest_snapshot; /* lowest generation whose file may still exist */
    struct master_listener *listeners;
    size_t nlisteners;
    struct master_socket sockets[MASTER_NSOCKETS];
    int anvil_fd; /* the smtpd processes' connection table (runtime/anvil.h), or -1 */
    struct master_role roles[ROLE_COUNT];
    int lock_fd;
    int pid_fd;
    int stopping;
    unsigned procs_allocated;      /* struct master_proc not yet freed */
    uint64_t announced_generation; /* last generation every worker acked */
    uv_signal_t sig_hup, sig_term, sig_int, sig_usr1, sig_usr2;
    char *self_exe;                  /* this binary: the reload validator */
    struct validation *validation;   /* the reload being validated, or NULL */
    int reload_again;                /* a SIGHUP came during the validation */
    unsigned validate_timeout_s;     /* MASTER_VALIDATE_TIMEOUT_S (tests: shorter) */
    const char *validate_fault_file; /* test hook (--test-validator-fault) */
    uv_timer_t drain_timer;
    uv_timer_t log_timer; /* log-auto-rotation / log-max-size checks */
    time_t next_log_midnight;
};

/* master_config.c */
void master_print_diag(void *ctx, enum cfg_diag_level level, const char *file, unsigned line,
                       const char *message);
int master_check_config(const char *path);
int master_show_settings(const char *path, const char *queue);
struct cfg *master_load_config(const char *path, int to_log);
void master_settings_from_cfg(const struct cfg *c, const char *config_path,
                              struct master_settings *set);
void master_settings_free(struct master_settings *set);
/* master_log_auto_start - check every few seconds whether the log is due for rotation */
void master_log_auto_start(struct master *m);
char *master_snapshot_path(const struct master *m, uint64_t generation);
int master_snapshot_write(struct master *m, struct cfg *c, uint64_t generation);
int master_write_snapshot_file(struct cfg *c, const char *path, uint64_t generation, gid_t gid);
void master_prepare_acct_dirs(const struct master *m, const struct cfg *c);
void master_snapshots_prune(struct master *m);
/* master_publish - C (validated, mapped, generation+1) goes into force and to the workers */
void master_publish(struct master *m, struct cfg *c);
char *master_absolute_path(const char *path);

/* master_validate.c */
/* master_reload - SIGHUP: validate in a child; publish only what it accepted */
void master_reload(struct master *m);
/* master_validation_stop - at shutdown: kill a validator still running */
void master_validation_stop(struct master *m);
/* master_validate_main - pmtad --validate-reload: exit status 0 = valid, snapshot written */
int master_validate_main(const struct master_validate_args *a);
/* master_check_keys_as_user - cfg_check_keys in a child running as UID:GID; errors (0: all good) */
unsigned master_check_keys_as_user(const struct cfg *c, uid_t uid, gid_t gid, cfg_diag_fn diag,
                                   void *ctx);
/* master_check_keys - the DKIM keys of C as SET's run-as-user would read them (when we are
 * root and drop privileges); number of errors, reported through DC */
unsigned master_check_keys(const struct cfg *c, const struct master_settings *set,
                           struct master_diag *dc);

/* master_files.c */
void master_resolve_user(struct master *m);
void master_prepare_directories(struct master *m);
void master_lock_spool(struct master *m);
void master_write_pid_file(struct master *m);
void master_remove_pid_file(struct master *m);
void master_open_log(struct master *m);

/* master_listen.c */
int master_check_listeners(const struct cfg *c, cfg_diag_fn diag, void *ctx);
void master_bind_listeners(struct master *m, const struct cfg *c);
int master_listeners_differ(const struct master *m, const struct cfg *c);
void master_bind_sockets(struct master *m);
/* master_create_anvil - the connection table every smtpd process shares */
void master_create_anvil(struct master *m);
void master_close_sockets(struct master *m);

/* master_spawn.c */
void master_roles_init(struct master *m);
void master_roles_start(struct master *m);
void master_roles_close(struct master *m);
void master_roles_free(struct master *m);
void master_broadcast_config(struct master *m);
/* master_rotate_log - SIGUSR1: log-file -> log-file.1 ... and every worker reopens it */
void master_rotate_log(struct master *m);
/* master_reopen_log - SIGUSR2: open log-file anew (logrotate renamed it); every worker too */
void master_reopen_log(struct master *m);
/* master_broadcast_log_reopen - CTL_LOG_REOPEN to every live worker */
void master_broadcast_log_reopen(struct master *m);
void master_broadcast_shutdown(struct master *m);
void master_kill_all(struct master *m);
int master_live_workers(const struct master *m);
uint64_t master_min_generation_in_use(const struct master *m);
const char *master_signal_name(int sig);

/* master_exec.c */
/* master_exec_worker - pmtad --exec-worker UID:GID PROGRAM ARGV0 (ARGV as main's);
   returns only on failure, with the exit status */
int master_exec_worker(int argc, char **argv);

/* master.c */
/* master_maybe_finished - stop the loop when draining and no worker is left */
void master_maybe_finished(struct master *m);

#endif
