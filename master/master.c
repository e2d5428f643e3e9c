/*
 * master.c - pmtad: command line, start-up, signals, shutdown
 *
 *     pmtad [-f] [-v] [-c FILE]
 *     pmtad --check-config [-c FILE]
 *     pmtad --show-settings DOMAIN[/VMTA] [-c FILE]
 *
 * Start-up order matters: validate the configuration before anything is
 * touched (errors go to the terminal), daemonize before libuv exists (libuv
 * must not cross a fork), take the spool and run-directory locks before any
 * socket node is replaced, bind every socket and write the first snapshot
 * before the first worker starts. Without -f the parent waits until the
 * daemon is up and exits with its verdict, so `pmtad && echo ok` means it runs.
 *
 * Hidden: `pmtad --validate-reload SNAPSHOT ...` is the reload validator that
 * the master starts (master_validate.c); `pmtad --exec-worker ...` is the
 * first step of every worker start under run-as-user (master_exec.c);
 * --test-validator-fault FILE and --test-validator-timeout S are for the
 * tests of that path only.
 *
 * Signals: SIGHUP reloads (validated in a child process); SIGUSR1 rotates the log; SIGUSR2
 * reopens it (after logrotate(8) renamed it); SIGTERM and SIGINT drain the workers (CTL_SHUTDOWN,
 * SIGKILL after the drain time) and exit 0.
 *
 * SECURITY: runs as root for its whole life (it must bind, chown and spawn
 * with setuid); it never parses network input. See master.h.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "msg.h"
#include "xalloc.h"
#include "master.h"

#define DEFAULT_CONFIG "/etc/pmta/config"

enum mode { MODE_RUN, MODE_CHECK, MODE_SHOW, MODE_VERSION, MODE_HELP, MODE_VALIDATE };

/* usage - the --help text */
static void
usage(FILE *out)
{
    fprintf(out, "usage: pmtad [-f] [-v] [-c FILE]\n"
                 "       pmtad --check-config [-c FILE]\n"
                 "       pmtad --show-settings DOMAIN[/VMTA] [-c FILE]\n"
                 "       pmtad --version | --help\n"
                 "\n"
                 "  -c, --config FILE     configuration file (default " DEFAULT_CONFIG ")\n"
                 "  -f, --foreground      stay in the foreground; warnings to stderr too\n"
                 "  -v, --verbose         log debug lines\n"
                 "      --check-config    validate the configuration and exit 0 or 1\n"
                 "      --show-settings Q print the effective settings of queue DOMAIN[/VMTA]\n");
}

/* daemonize_begin - detach; returns the pipe on which the daemon reports readiness */
static int
daemonize_begin(void)
{
    int pfd[2];
    char verdict = 0;
    pid_t pid;

    if (pipe2(pfd, O_CLOEXEC) < 0 || (pid = fork()) < 0)
        msg_fatal("cannot daemonize: %s", strerror(errno));
    if (pid > 0) {
        /* The original process: exit with the daemon's start-up verdict. */
        close(pfd[1]);
        waitpid(pid, NULL, 0);
        if (read(pfd[0], &verdict, 1) != 1)
            verdict = 1; /* the daemon died before it was ready */
        _exit(verdict == '0' ? 0 : 1);
    }
    close(pfd[0]);
    if (setsid() < 0)
        msg_fatal("setsid: %s", strerror(errno));
    if ((pid = fork()) < 0)
        msg_fatal("cannot daemonize: %s", strerror(errno));
    if (pid > 0)
        _exit(0); /* never a session leader: no controlling terminal again */
    return pfd[1];
}

/* daemonize_done - start-up succeeded: let go of the terminal and release the parent */
static void
daemonize_done(int fd)
{
    int null = open("/dev/null", O_RDWR);

    if (null >= 0) {
        dup2(null, STDIN_FILENO);
        dup2(null, STDOUT_FILENO);
        dup2(null, STDERR_FILENO);
        if (null > STDERR_FILENO)
            close(null);
    }
    if (write(fd, "0", 1) != 1)
        msg_warn("cannot report readiness: %s", strerror(errno));
    close(fd);
}

/* master_maybe_finished - draining, and nothing left: close our handles so the loop ends */
void
master_maybe_finished(struct master *m)
{
    if (m->stopping != 1 || m->procs_allocated > 0)
        return;
    m->stopping = 2;
    uv_close((uv_handle_t *)&m->sig_hup, NULL);
    uv_close((uv_handle_t *)&m->sig_term, NULL);
    uv_close((uv_handle_t *)&m->sig_int, NULL);
    uv_close((uv_handle_t *)&m->sig_usr1, NULL);
    uv_close((uv_handle_t *)&m->sig_usr2, NULL);
    uv_close((uv_handle_t *)&m->drain_timer, NULL);
    uv_close((uv_handle_t *)&m->log_timer, NULL);
    master_roles_close(m);
}

static void
on_drain_timeout(uv_timer_t *t)
{
    master_kill_all(t->data);
}

/* on_stop_signal - SIGTERM/SIGINT: drain the workers, then exit */
static void
on_stop_signal(uv_signal_t *h, int sig)
{
    struct master *m = h->data;

    master_validation_stop(m);
    if (m->stopping) {
        msg_info("%s again: killing the remaining workers", master_signal_name(sig));
        master_kill_all(m);
        return;
    }
    m->stopping = 1;
    msg_info("%s received: stopping %d workers", master_signal_name(sig), master_live_workers(m));
    master_broadcast_shutdown(m);
    uv_timer_start(&m->drain_timer, on_drain_timeout, (MASTER_DRAIN_SECONDS + 2) * 1000, 0);
    master_maybe_finished(m);
}

static void
on_reload_signal(uv_signal_t *h, int sig)
{
    master_reload(h->data);
}

static void
on_rotate_signal(uv_signal_t *h, int sig)
{
    if (sig == SIGUSR2)
        master_reopen_log(h->data);
    else
        master_rotate_log(h->data);
}

/* start_signals - libuv signal handles; SIGPIPE is an error return, not a death */
static void
start_signals(struct master *m)
{
    signal(SIGPIPE, SIG_IGN);
    uv_signal_init(&m->loop, &m->sig_hup);
    uv_signal_init(&m->loop, &m->sig_term);
    uv_signal_init(&m->loop, &m->sig_int);
    uv_signal_init(&m->loop, &m->sig_usr1);
    uv_signal_init(&m->loop, &m->sig_usr2);
    m->sig_hup.data = m->sig_term.data = m->sig_int.data = m->sig_usr1.data = m;
    m->sig_usr2.data = m;
    uv_signal_start(&m->sig_usr1, on_rotate_signal, SIGUSR1);
    uv_signal_start(&m->sig_usr2, on_rotate_signal, SIGUSR2);
    uv_signal_start(&m->sig_hup, on_reload_signal, SIGHUP);
    uv_signal_start(&m->sig_term, on_stop_signal, SIGTERM);
    uv_signal_start(&m->sig_int, on_stop_signal, SIGINT);
    uv_timer_init(&m->loop, &m->drain_timer);
    m->drain_timer.data = m;
    master_log_auto_start(m);
}

/* remove_snapshots - at exit no worker maps any of them */
static void
remove_snapshots(struct master *m)
{
    for (uint64_t g = m->oldest_snapshot; g <= m->generation; g++) {
        char *path = master_snapshot_path(m, g);

        unlink(path);
        free(path);
    }
}

/* self_exe - the absolute path of this binary (the reload validator runs it again) */
static char *
self_exe(void)
{
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);

    if (n <= 0)
        msg_fatal("cannot find the pmtad binary (/proc/self/exe): %s", strerror(errno));
    exe[n] = '\0';
    return xstrdup(exe);
}

/* master_start - everything up to the first workers */
static void
master_start(struct master *m)
{
    m->self_exe = self_exe();
    master_resolve_user(m);
    master_prepare_directories(m);
    master_lock_spool(m);
    master_write_pid_file(m);
    master_open_log(m);
    msg_info("starting %s %s (config %s, spool %s)", PACKAGE_NAME, PACKAGE_VERSION,
             m->set.config_path, m->set.spool);
    master_prepare_acct_dirs(m, m->cfg);
    if (uv_loop_init(&m->loop) != 0)
        msg_fatal("cannot initialize the event loop");
    m->loop.data = m;
    master_roles_init(m);
    master_bind_listeners(m, m->cfg);
    master_bind_sockets(m);
    master_create_anvil(m);
    m->generation = m->oldest_snapshot = m->announced_generation = 1;
    if (master_snapshot_write(m, m->cfg, m->generation) < 0)
        msg_fatal("cannot publish the configuration to the workers");
    start_signals(m);
    master_roles_start(m);
}

/* master_finish - after the loop ended: release everything, leave no trace but the log */
static int
master_finish(struct master *m)
{
    int err;

    master_close_sockets(m);
    remove_snapshots(m);
    master_remove_pid_file(m);
    master_roles_free(m);
    if ((err = uv_loop_close(&m->loop)) != 0)
        msg_warn("event loop closed with handles open: %s", uv_strerror(err));
    cfg_free(m->cfg);
    master_settings_free(&m->set);
    free(m->self_exe);
    msg_info("stopped");
    return 0;
}

/* The hidden options: the validator's arguments and the test hooks of the reload path. */
struct master_test {
    struct master_validate_args validate;
    int log_fd;
    unsigned validate_timeout_s;
    const char *validate_fault_file;
};

/* master_run - the daemon proper */
static int
master_run(const char *config_path, int foreground, int verbose, const struct master_test *test)
{
    static struct master master; /* static: signal and libuv callbacks reach it via data */
    struct master *m = &master;
    int ready_fd = -1;

    m->foreground = foreground;
    m->verbose = verbose;
    m->lock_fd = m->pid_fd = m->anvil_fd = -1;
    for (int i = 0; i < MASTER_NSOCKETS; i++)
        m->sockets[i].fd = -1;
    m->validate_timeout_s = test->validate_timeout_s ? test->validate_timeout_s
                                                     : MASTER_VALIDATE_TIMEOUT_S;
    m->validate_fault_file = test->validate_fault_file;
    if ((m->cfg = master_load_config(config_path, 0)) == NULL)
        return 1;
    master_settings_from_cfg(m->cfg, config_path, &m->set);
    if (master_check_keys(m->cfg, &m->set, &(struct master_diag){ 0, 0, 0 }) != 0) {
        fprintf(stderr, "%s: a DKIM key cannot be used by run-as-user %s; not starting\n",
                config_path, m->set.user);
        return 1;
    }
    if (!foreground)
        ready_fd = daemonize_begin();
    master_start(m);
    if (ready_fd >= 0)
        daemonize_done(ready_fd);
    msg_info("started (pid %ld): %d workers, configuration generation %" PRIu64, (long)getpid(),
             master_live_workers(m), m->generation);
    uv_run(&m->loop, UV_RUN_DEFAULT);
    return master_finish(m);
}

/* parse_credentials - "UID:GID:DROP" of --credentials */
static int
parse_credentials(const char *s, struct master_validate_args *v)
{
    long uid, gid;
    int drop, n = 0;

    if (sscanf(s, "%ld:%ld:%d%n", &uid, &gid, &drop, &n) != 3 || s[n] || uid < 0 || gid < 0)
        return -1;
    v->uid = (uid_t)uid;
    v->gid = (gid_t)gid;
    v->drop_privileges = drop != 0;
    return 0;
}

/* hidden_option - one of the options above; 0, or -1 for a bad value */
static int
hidden_option(int ch, const char *arg, struct master_test *t)
{
    char *end;
    unsigned long n;

    switch (ch) {
    case 'R':
        t->validate.snapshot_path = arg;
        return 0;
    case 'G':
        t->validate.generation = strtoull(arg, &end, 10);
        return *end || !*arg ? -1 : 0;
    case 'U':
        return parse_credentials(arg, &t->validate);
    case 'L':
        t->log_fd = (int)strtol(arg, &end, 10);
        return *end || t->log_fd < 0 ? -1 : 0;
    case 'F':
        t->validate_fault_file = t->validate.fault_file = arg;
        return 0;
    case 'T':
        n = strtoul(arg, &end, 10);
        t->validate_timeout_s = (unsigned)n;
        return *end || n == 0 || n > 3600 ? -1 : 0;
    default:
        return -1;
    }
}

/* run_validator - pmtad --validate-reload: log where the master logs, then validate */
static int
run_validator(const char *config_path, struct master_test *t)
{
    if (t->log_fd >= 0)
        msg_use_fd(t->log_fd);
    else
        msg_use_syslog();
    msg_also_stderr(0);
    t->validate.config_path = config_path;
    return master_validate_main(&t->validate);
}

int
main(int argc, char **argv)
{
    static const struct option options[] = {
        { "config", required_argument, NULL, 'c' },
        { "foreground", no_argument, NULL, 'f' },
        { "verbose", no_argument, NULL, 'v' },
        { "check-config", no_argument, NULL, 'C' },
        { "show-settings", required_argument, NULL, 'S' },
        { "version", no_argument, NULL, 'V' },
        { "help", no_argument, NULL, 'h' },
        /* hidden: the reload validator (master_validate.c) and test hooks */
        { "validate-reload", required_argument, NULL, 'R' },
        { "generation", required_argument, NULL, 'G' },
        { "credentials", required_argument, NULL, 'U' },
        { "log-fd", required_argument, NULL, 'L' },
        { "test-validator-fault", required_argument, NULL, 'F' },
        { "test-validator-timeout", required_argument, NULL, 'T' },
        { NULL, 0, NULL, 0 },
    };
    const char *config_path = DEFAULT_CONFIG, *queue = NULL;
    struct master_test test = { .log_fd = -1 };
    enum mode mode = MODE_RUN;
    int foreground = 0, verbose = 0, ch;

    msg_init("pmtad");
    /* pmtad's own first step of a worker start: not an option a person gives */
    if (argc > 1 && strcmp(argv[1], "--exec-worker") == 0)
        return master_exec_worker(argc, argv);
    while ((ch = getopt_long(argc, argv, "c:fvh", options, NULL)) != -1) {
        switch (ch) {
        case 'c':
            config_path = optarg;
            break;
        case 'f':
            foreground = 1;
            break;
        case 'v':
            verbose = 1;
            break;
        case 'C':
            mode = MODE_CHECK;
            break;
        case 'S':
            mode = MODE_SHOW;
            queue = optarg;
            break;
        case 'V':
            mode = MODE_VERSION;
            break;
        case 'h':
            mode = MODE_HELP;
            break;
        case 'R':
        case 'G':
        case 'U':
        case 'L':
        case 'F':
        case 'T':
            if (ch == 'R')
                mode = MODE_VALIDATE;
            if (hidden_option(ch, optarg, &test) == 0)
                break;
            /* fall through */
        default:
            usage(stderr);
            return 1;
        }
    }
    if (optind != argc) {
        usage(stderr);
        return 1;
    }
    switch (mode) {
    case MODE_CHECK:
        return master_check_config(config_path);
    case MODE_SHOW:
        return master_show_settings(config_path, queue);
    case MODE_VALIDATE:
        return run_validator(config_path, &test);
    case MODE_VERSION:
        printf("pmtad (%s) %s\n", PACKAGE_NAME, PACKAGE_VERSION);
        return 0;
    case MODE_HELP:
        usage(stdout);
        return 0;
    case MODE_RUN:
        break;
    }
    return master_run(config_path, foreground, verbose, &test);
}
