/*
 * master_spawn.c - the worker processes: spawn, talk, reap, restart, throttle
 *
 * Every role (smtpd, cleanup, qmgr, smtp-out) has a fixed number of slots;
 * each slot runs one worker program, started with uv_spawn under the worker
 * user. A worker inherits exactly these descriptors, announced in its
 * environment:
 *     3            its end of a socketpair to pmtad (PMTA_MASTER_FD)
 *     4            the log (PMTA_LOG_FD), unless logging goes to syslog
 *     5...         the internal sockets its role serves (PMTA_SOCKET_FDS)
 *     then         smtpd only: the smtp-listener sockets (PMTA_LISTEN_FDS)
 *                  and the shared connection table (PMTA_ANVIL_FD)
 * It says CTL_HELLO once it runs; a worker that dies before that is a
 * startup failure. A dead worker is logged with its exit status or signal
 * and restarted at once, unless its role died more than MASTER_DEATHS_MAX
 * times within MASTER_DEATH_WINDOW_MS (or failed at startup that many times
 * in a row): then restarts wait 1 s, 2 s, 4 s ... up to MASTER_BACKOFF_MAX_S.
 *
 * Owns: struct master_role slots and programs, struct master_proc objects
 * (each freed once both its process handle and its channel are closed).
 *
 * SECURITY: decides each worker's credentials, its environment (built from
 * scratch, not inherited) and its descriptors (everything else is CLOEXEC).
 * Under run-as-user a worker starts as `pmtad --exec-worker UID:GID PROGRAM`
 * (master_exec.c), which sets no_new_privs, empties the capability bounding
 * set, clears the supplementary groups and sets gid and uid before it execs
 * the worker: no worker, nor anything a worker runs, can gain a privilege.
 * A worker that sends a malformed or unexpected message is disconnected
 * and killed.
 */
#include "config.h"

#include <errno.h>
#include <stddef.h>
#include <inttypes.h>
#include <libgen.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "buf.h"
#include "ctlproto.h"
#include "msg.h"
#include "xalloc.h"
#include "master.h"

#define MAX_CHILD_FDS 64
#define MAX_CHILD_ENV 32

static const struct {
    const char *name, *dir, *binary;
} role_table[ROLE_COUNT] = {
    [ROLE_SMTPD] = { "smtpd", "smtpd", "smtpd" },
    [ROLE_CLEANUP] = { "cleanup", "cleanup", "cleanup" },
    [ROLE_QMGR] = { "qmgr", "qmgr", "qmgr" },
    [ROLE_SMTPOUT] = { "smtp-out", "smtp-out", "smtp-out" },
};

static void restart_slot(uv_timer_t *timer);

/* master_signal_name - "SIGKILL" for 9 */
const char *
master_signal_name(int sig)
{
    static const struct {
        int sig;
        const char *name;
    } names[] = {
        { SIGHUP, "SIGHUP" },   { SIGINT, "SIGINT" },   { SIGQUIT, "SIGQUIT" },
        { SIGILL, "SIGILL" },   { SIGTRAP, "SIGTRAP" }, { SIGABRT, "SIGABRT" },
        { SIGBUS, "SIGBUS" },   { SIGFPE, "SIGFPE" },   { SIGKILL, "SIGKILL" },
        { SIGUSR1, "SIGUSR1" }, { SIGSEGV, "SIGSEGV" }, { SIGUSR2, "SIGUSR2" },
        { SIGPIPE, "SIGPIPE" }, { SIGALRM, "SIGALRM" }, { SIGTERM, "SIGTERM" },
        { SIGXCPU, "SIGXCPU" }, { SIGXFSZ, "SIGXFSZ" }, { SIGSYS, "SIGSYS" },
    };

    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (names[i].sig == sig)
            return names[i].name;
    return "unknown signal";
}

/* worker_directory - where the worker programs are, and whether it is the build tree */
static char *
worker_directory(int *build_tree)
{
    const char *env = getenv("PMTA_LIBEXEC_DIR");
    char exe[PATH_MAX];
    ssize_t n;

    *build_tree = 0;
    if (env && *env)
        return master_absolute_path(env);
    /* Run from the build tree (tests, README): use the sibling programs. */
    if ((n = readlink("/proc/self/exe", exe, sizeof(exe) - 1)) > 0) {
        exe[n] = '\0';
        char *top = xstrdup(dirname(dirname(exe)));
        char *probe = xasprintf("%s/smtpd/smtpd", top);
        int found = access(probe, X_OK) == 0;

        free(probe);
        if (found) {
            *build_tree = 1;
            return top;
        }
        free(top);
    }
    return xstrdup(PMTA_LIBEXECDIR);
}

/* master_roles_init - slots and program paths of every role */
void
master_roles_init(struct master *m)
{
    int build_tree;
    char *dir = worker_directory(&build_tree);

    for (int r = 0; r < ROLE_COUNT; r++) {
        struct master_role *role = &m->roles[r];

        memset(role, 0, sizeof(*role));
        role->id = (enum master_role_id)r;
        role->name = role_table[r].name;
        role->program = build_tree
                            ? xasprintf("%s/%s/%s", dir, role_table[r].dir, role_table[r].binary)
                            : xasprintf("%s/%s", dir, role_table[r].binary);
        if (access(role->program, X_OK) < 0)
            msg_fatal("cannot run the %s program %s: %s", role->name, role->program,
                      strerror(errno));
        role->nslots = m->set.nprocs[r];
        role->slots = xcalloc(role->nslots, sizeof(*role->slots));
        for (unsigned i = 0; i < role->nslots; i++) {
            role->slots[i].role = role;
            role->slots[i].index = i;
            uv_timer_init(&m->loop, &role->slots[i].restart_timer);
            role->slots[i].restart_timer.data = m;
        }
    }
    free(dir);
}

/* proc_maybe_free - release P once its process handle and its channel are both gone */
static void
proc_maybe_free(struct master *m, struct master_proc *p)
{
    if (!p->process_closed || p->chan != NULL)
        return;
    free(p);
    m->procs_allocated--;
    master_maybe_finished(m);
}

static struct master *
master_of(struct master_proc *p)
{
    return p->process.loop->data;
}

static void
on_process_closed(uv_handle_t *h)
{
    struct master_proc *p = h->data;

    p->process_closed = 1;
    proc_maybe_free(master_of(p), p);
}

/* throttle_delay - record a death of ROLE; seconds to wait before its restart */
static unsigned
throttle_delay(struct master *m, struct master_role *role, int startup_failure)
{
    uint64_t now = uv_now(&m->loop);
    unsigned recent = 0;

    role->deaths[role->ndeaths++ % (MASTER_DEATHS_MAX + 1)] = now;
    role->startup_failures = startup_failure ? role->startup_failures + 1 : 0;
    for (unsigned i = 0; i < MASTER_DEATHS_MAX + 1 && i < role->ndeaths; i++)
        if (now - role->deaths[i] < MASTER_DEATH_WINDOW_MS)
            recent++;
    if (recent <= MASTER_DEATHS_MAX && role->startup_failures <= MASTER_DEATHS_MAX) {
        role->backoff_s = 0;
        return 0;
    }
    role->backoff_s = role->backoff_s ? role->backoff_s * 2 : 1;
    if (role->backoff_s > MASTER_BACKOFF_MAX_S)
        role->backoff_s = MASTER_BACKOFF_MAX_S;
    msg_warn("%s: throttling: %u deaths within %d s%s; next restart in %u s", role->name, recent,
             MASTER_DEATH_WINDOW_MS / 1000,
             role->startup_failures > MASTER_DEATHS_MAX ? " (bad startup)" : "", role->backoff_s);
    return role->backoff_s;
}

/* schedule_restart - restart SLOT after DELAY seconds (0: on the next loop turn) */
static void
schedule_restart(struct master_slot *slot, unsigned delay)
{
    uv_timer_start(&slot->restart_timer, restart_slot, (uint64_t)delay * 1000, 0);
}

/* log_death - one line naming the worker and why it ended */
static void
log_death(struct master *m, struct master_proc *p, int64_t status, int sig)
{
    const char *when = p->said_hello ? "" : " during startup";

    if (m->stopping) {
        if (sig)
            msg_info("%s (pid %d) killed by signal %d (%s)", p->role->name, p->pid, sig,
                     master_signal_name(sig));
        else
            msg_info("%s (pid %d) exited with status %" PRId64, p->role->name, p->pid, status);
    } else if (sig) {
        msg_warn("%s (pid %d) killed by signal %d (%s)%s", p->role->name, p->pid, sig,
                 master_signal_name(sig), when);
    } else {
        msg_warn("%s (pid %d) exited with status %" PRId64 "%s", p->role->name, p->pid, status,
                 when);
    }
}

/* on_worker_exit - libuv reaped a worker */
static void
on_worker_exit(uv_process_t *h, int64_t status, int sig)
{
    struct master_proc *p = h->data;
    struct master *m = master_of(p);
    struct master_slot *slot = &p->role->slots[p->slot];

    p->exited = 1;
    log_death(m, p, status, sig);
    if (slot->proc == p)
        slot->proc = NULL;
    if (p->chan)
        ipc_chan_close(p->chan);
    uv_close((uv_handle_t *)&p->process, on_process_closed);
    if (m->stopping)
        return;
    schedule_restart(slot, throttle_delay(m, p->role, !p->said_hello));
    master_snapshots_prune(m);
}

/* all_acked - does every live worker use the current generation? */
static int
all_acked(const struct master *m)
{
    for (int r = 0; r < ROLE_COUNT; r++)
        for (unsigned i = 0; i < m->roles[r].nslots; i++) {
            const struct master_proc *p = m->roles[r].slots[i].proc;

            if (p && !p->exited && p->acked_generation < m->generation)
                return 0;
        }
    return 1;
}

/* note_generation - P now uses GENERATION; announce when everyone does */
static void
note_generation(struct master *m, struct master_proc *p, uint64_t generation)
{
    p->acked_generation = generation;
    if (m->announced_generation < m->generation && all_acked(m)) {
        m->announced_generation = m->generation;
        msg_info("all %d workers use configuration generation %" PRIu64, master_live_workers(m),
                 m->generation);
    }
    master_snapshots_prune(m);
}

/* handle_hello - CTL_HELLO: the worker names the role and pid we started */
static int
handle_hello(struct master *m, struct master_proc *p, struct ipc_msg *msg)
{
    struct ctl_hello hello;

    if (ctl_decode_hello(msg, &hello) < 0)
        return -EPROTO;
    if (strcmp(hello.role, p->role->name) != 0 || (int)hello.pid != p->pid || p->said_hello)
        return -EPROTO;
    p->said_hello = 1;
    p->role->startup_failures = 0;
    msg_debug("%s (pid %d) ready with configuration generation %" PRIu64, p->role->name, p->pid,
              hello.generation);
    note_generation(m, p, hello.generation);
    return 0;
}

/* on_worker_msg - a frame from a worker; non-zero closes its channel */
static int
on_worker_msg(struct ipc_chan *ch, struct ipc_msg *msg)
{
    struct master_proc *p = ch->data;
    struct master *m = master_of(p);
    struct ctl_config_ack ack;
    int err = -EPROTO;

    switch (msg->type) {
    case CTL_HELLO:
        err = handle_hello(m, p, msg);
        break;
    case CTL_CONFIG_ACK:
        if (ctl_decode_config_ack(msg, &ack) == 0 && ack.generation <= m->generation) {
            note_generation(m, p, ack.generation);
            err = 0;
        }
        break;
    default:
        break;
    }
    if (err < 0 && !p->exited) {
        /* A worker that breaks the protocol is broken: replace it. */
        msg_warn("%s (pid %d): malformed or unexpected message %s (type %u); killing it",
                 p->role->name, p->pid, ctl_type_name(msg->type), msg->type);
        uv_process_kill(&p->process, SIGKILL);
    }
    return err < 0;
}

/*
 * on_worker_chan_closed - the worker's channel is gone. A worker closes it only
 * on its way out (the runtime exits when it loses pmtad), so just forget it;
 * on_worker_exit reports the death.
 */
static void
on_worker_chan_closed(struct ipc_chan *ch, int reason)
{
    struct master_proc *p = ch->data;

    p->chan = NULL;
    proc_maybe_free(master_of(p), p);
}

struct child_setup {
    uv_stdio_container_t stdio[MAX_CHILD_FDS];
    int nfds;
    char *env[MAX_CHILD_ENV];
    int nenv;
};

/* add_fd - pass FD to the child; returns its number there */
static int
add_fd(struct child_setup *cs, int fd)
{
    if (cs->nfds >= MAX_CHILD_FDS)
        msg_fatal("too many descriptors for one worker");
    cs->stdio[cs->nfds].flags = UV_INHERIT_FD;
    cs->stdio[cs->nfds].data.fd = fd;
    return cs->nfds++;
}

static void
add_env(struct child_setup *cs, char *entry)
{
    if (cs->nenv >= MAX_CHILD_ENV - 1)
        msg_panic("worker environment too large");
    cs->env[cs->nenv++] = entry;
}

/* pass_env - copy a variable of ours that tooling needs (sanitizers, time zone) */
static void
pass_env(struct child_setup *cs, const char *name)
{
    const char *value = getenv(name);

    if (value)
        add_env(cs, xasprintf("%s=%s", name, value));
}

/* add_role_sockets - the internal sockets ROLE serves: PMTA_SOCKET_FDS=name:fd,... */
static void
add_role_sockets(struct master *m, struct master_role *role, struct child_setup *cs)
{
    struct buf list = BUF_INIT;

    for (int i = 0; i < MASTER_NSOCKETS; i++)
        if (m->sockets[i].server == role->id && m->sockets[i].fd >= 0)
            buf_printf(&list, "%s%s:%d", list.len ? "," : "", m->sockets[i].name,
                       add_fd(cs, m->sockets[i].fd));
    if (list.len)
        add_env(cs, xasprintf("PMTA_SOCKET_FDS=%s", list.data));
    buf_free(&list);
}

/* add_listeners - smtpd: PMTA_LISTEN_FDS=5,6 PMTA_LISTEN_SOURCES=name, PMTA_LISTEN_ADDRS=... */
static void
add_listeners(struct master *m, struct child_setup *cs)
{
    struct buf fds = BUF_INIT, sources = BUF_INIT, addrs = BUF_INIT;

    for (size_t i = 0; i < m->nlisteners; i++) {
        const char *sep = i ? "," : "";

        buf_printf(&fds, "%s%d", sep, add_fd(cs, m->listeners[i].fd));
        buf_printf(&sources, "%s%s", sep, m->listeners[i].source);
        buf_printf(&addrs, "%s%s", sep, m->listeners[i].address);
    }
    add_env(cs, xasprintf("PMTA_LISTEN_FDS=%s", fds.len ? fds.data : ""));
    add_env(cs, xasprintf("PMTA_LISTEN_SOURCES=%s", sources.len ? sources.data : ""));
    add_env(cs, xasprintf("PMTA_LISTEN_ADDRS=%s", addrs.len ? addrs.data : ""));
    buf_free(&fds);
    buf_free(&sources);
    buf_free(&addrs);
}

/* child_setup_build - descriptors and environment for one worker of ROLE */
static void
child_setup_build(struct master *m, struct master_role *role, unsigned slot, int master_fd,
                  struct child_setup *cs)
{
    char *snapshot = master_snapshot_path(m, m->generation);

    memset(cs, 0, sizeof(*cs));
    cs->stdio[cs->nfds++].flags = UV_IGNORE; /* stdin: /dev/null */
    add_fd(cs, STDOUT_FILENO);
    add_fd(cs, STDERR_FILENO);
    add_env(cs, xasprintf("PMTA_MASTER_FD=%d", add_fd(cs, master_fd)));
    if (msg_log_fd() >= 0) {
        add_env(cs, xasprintf("PMTA_LOG_FD=%d", add_fd(cs, msg_log_fd())));
        if (m->set.log_file) /* CTL_LOG_REOPEN opens it again after a rotation */
            add_env(cs, xasprintf("PMTA_LOG_PATH=%s", m->set.log_file));
    } else
        add_env(cs, xstrdup("PMTA_LOG=syslog"));
    add_role_sockets(m, role, cs);
    if (role->id == ROLE_SMTPD) {
        add_listeners(m, cs);
        if (m->anvil_fd >= 0)
            add_env(cs, xasprintf("PMTA_ANVIL_FD=%d", add_fd(cs, m->anvil_fd)));
    }
    add_env(cs, xasprintf("PMTA_ROLE=%s", role->name));
    add_env(cs, xasprintf("PMTA_SLOT=%u", slot));
    add_env(cs, xasprintf("PMTA_CONFIG=%s", snapshot));
    add_env(cs, xasprintf("PMTA_CONFIG_GENERATION=%" PRIu64, m->generation));
    add_env(cs, xasprintf("PMTA_SPOOL=%s", m->set.spool));
    add_env(cs, xasprintf("PMTA_RUN_DIRECTORY=%s", m->set.run_dir));
    if (m->set.drop_privileges)
        add_env(cs, xstrdup("PMTA_PRIVILEGES_DROPPED=1"));
    if (m->foreground)
        add_env(cs, xstrdup("PMTA_LOG_STDERR=1"));
    if (m->verbose)
        add_env(cs, xstrdup("PMTA_VERBOSE=1"));
    add_env(cs, xstrdup("PATH=/usr/sbin:/usr/bin:/sbin:/bin"));
    pass_env(cs, "TZ");
    pass_env(cs, "ASAN_OPTIONS");
    pass_env(cs, "UBSAN_OPTIONS");
    pass_env(cs, "LSAN_OPTIONS");
    cs->env[cs->nenv] = NULL;
    free(snapshot);
}

static void
child_setup_free(struct child_setup *cs)
{
    for (int i = 0; i < cs->nenv; i++)
        free(cs->env[i]);
}

/* spawn_slot - start the worker of SLOT; on failure count it as a startup failure */
static void
spawn_slot(struct master *m, struct master_slot *slot)
{
    struct master_role *role = slot->role;
    struct child_setup cs;
    uv_process_options_t opt;
    char *args[2] = { (char *)role->name, NULL }, *credentials = NULL;
    char *trampoline[6] = { NULL, (char *)"--exec-worker", NULL, NULL, NULL, NULL };
    struct master_proc *p;
    int sv[2], err;

    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) {
        msg_error("%s: socketpair: %s", role->name, strerror(errno));
        schedule_restart(slot, throttle_delay(m, role, 1));
        return;
    }
    child_setup_build(m, role, slot->index, sv[1], &cs);
    memset(&opt, 0, sizeof(opt));
    opt.file = role->program;
    opt.args = args;
    if (m->set.drop_privileges) { /* through master_exec.c, which drops everything */
        credentials = xasprintf("%lu:%lu", (unsigned long)m->set.uid, (unsigned long)m->set.gid);
        trampoline[0] = (char *)role->name;
        trampoline[2] = credentials;
        trampoline[3] = role->program;
        trampoline[4] = (char *)role->name;
        opt.file = m->self_exe;
        opt.args = trampoline;
    }
    opt.env = cs.env;
    opt.exit_cb = on_worker_exit;
    opt.stdio = cs.stdio;
    opt.stdio_count = cs.nfds;
    p = xcalloc(1, sizeof(*p));
    p->role = role;
    p->slot = slot->index;
    p->spawn_generation = p->acked_generation = m->generation;
    p->process.data = p;
    err = uv_spawn(&m->loop, &p->process, &opt);
    child_setup_free(&cs);
    free(credentials);
    close(sv[1]);
    if (err < 0) {
        msg_error("cannot start %s (%s): %s", role->name, role->program, uv_strerror(err));
        close(sv[0]);
        free(p);
        schedule_restart(slot, throttle_delay(m, role, 1));
        return;
    }
    m->procs_allocated++;
    p->pid = p->process.pid;
    slot->proc = p;
    if ((err = ipc_chan_open_fd(&m->loop, sv[0], on_worker_msg, on_worker_chan_closed, p,
                                &p->chan)) < 0) {
        msg_error("%s (pid %d): cannot open its channel: %s", role->name, p->pid, strerror(-err));
        p->chan = NULL; /* ipc_chan_open_fd closed sv[0] */
        uv_process_kill(&p->process, SIGKILL);
    }
    msg_debug("started %s (pid %d) as uid %ld", role->name, p->pid,
              (long)(m->set.drop_privileges ? m->set.uid : geteuid()));
}

/* restart_slot - a slot's restart timer fired */
static void
restart_slot(uv_timer_t *timer)
{
    struct master *m = timer->data;
    struct master_slot *slot = (struct master_slot *)((char *)timer -
                                                      offsetof(struct master_slot, restart_timer));

    if (!m->stopping && slot->proc == NULL)
        spawn_slot(m, slot);
}

/* master_roles_start - the first worker of every slot */
void
master_roles_start(struct master *m)
{
    for (int r = 0; r < ROLE_COUNT; r++)
        for (unsigned i = 0; i < m->roles[r].nslots; i++)
            spawn_slot(m, &m->roles[r].slots[i]);
}

/* send_config_frame - CTL_CONFIG: the snapshot to map */
static void
send_config_frame(struct master_proc *p, const char *path, uint64_t generation)
{
    struct buf out = BUF_INIT;
    struct ctl_config config = { .path = path, .generation = generation };

    if (ctl_encode_config(&out, 0, &config) < 0 || ipc_chan_send(p->chan, &out) < 0)
        msg_warn("%s (pid %d): cannot send the new configuration", p->role->name, p->pid);
    buf_free(&out);
}

/* master_broadcast_config - tell every worker about the current generation */
void
master_broadcast_config(struct master *m)
{
    char *path = master_snapshot_path(m, m->generation);

    for (int r = 0; r < ROLE_COUNT; r++)
        for (unsigned i = 0; i < m->roles[r].nslots; i++) {
            struct master_proc *p = m->roles[r].slots[i].proc;

            if (p && !p->exited && p->chan)
                send_config_frame(p, path, m->generation);
        }
    free(path);
}

/* master_broadcast_shutdown - ask every worker to drain and exit; no more restarts */
void
master_broadcast_shutdown(struct master *m)
{
    for (int r = 0; r < ROLE_COUNT; r++)
        for (unsigned i = 0; i < m->roles[r].nslots; i++) {
            struct master_slot *slot = &m->roles[r].slots[i];
            struct master_proc *p = slot->proc;
            struct buf out = BUF_INIT;
            struct ctl_shutdown shutdown = { .drain = MASTER_DRAIN_SECONDS };

            uv_timer_stop(&slot->restart_timer);
            if (p == NULL || p->exited)
                continue;
            if (p->chan == NULL || ctl_encode_shutdown(&out, 0, &shutdown) < 0 ||
                ipc_chan_send(p->chan, &out) < 0)
                uv_process_kill(&p->process, SIGTERM);
            buf_free(&out);
        }
}

/* master_broadcast_log_reopen - see master.h */
void
master_broadcast_log_reopen(struct master *m)
{
    for (int r = 0; r < ROLE_COUNT; r++)
        for (unsigned i = 0; i < m->roles[r].nslots; i++) {
            struct master_proc *p = m->roles[r].slots[i].proc;
            struct buf out = BUF_INIT;

            if (p == NULL || p->exited || p->chan == NULL)
                continue;
            if (ctl_encode_log_reopen(&out, 0, NULL) < 0 || ipc_chan_send(p->chan, &out) < 0)
                msg_warn("%s (pid %d): cannot ask it to reopen the log", m->roles[r].name,
                         (int)p->process.pid);
            buf_free(&out);
        }
}

/* master_kill_all - the drain time is over */
void
master_kill_all(struct master *m)
{
    for (int r = 0; r < ROLE_COUNT; r++)
        for (unsigned i = 0; i < m->roles[r].nslots; i++) {
            struct master_proc *p = m->roles[r].slots[i].proc;

            if (p && !p->exited) {
                msg_warn("%s (pid %d) did not stop in time; killing it", p->role->name, p->pid);
                uv_process_kill(&p->process, SIGKILL);
            }
        }
}

/* master_live_workers - workers not yet reaped */
int
master_live_workers(const struct master *m)
{
    int n = 0;

    for (int r = 0; r < ROLE_COUNT; r++)
        for (unsigned i = 0; i < m->roles[r].nslots; i++)
            n += m->roles[r].slots[i].proc != NULL && !m->roles[r].slots[i].proc->exited;
    return n;
}

/* master_min_generation_in_use - oldest snapshot a live worker may still map */
uint64_t
master_min_generation_in_use(const struct master *m)
{
    uint64_t min = m->generation;

    for (int r = 0; r < ROLE_COUNT; r++)
        for (unsigned i = 0; i < m->roles[r].nslots; i++) {
            const struct master_proc *p = m->roles[r].slots[i].proc;

            if (p && !p->exited && p->acked_generation < min)
                min = p->acked_generation;
        }
    return min;
}

/* master_roles_free - after the loop has closed every handle */
void
master_roles_free(struct master *m)
{
    for (int r = 0; r < ROLE_COUNT; r++) {
        free(m->roles[r].program);
        free(m->roles[r].slots);
        m->roles[r].program = NULL;
        m->roles[r].slots = NULL;
    }
}

/* master_roles_close - close the restart timers (before the final loop run) */
void
master_roles_close(struct master *m)
{
    for (int r = 0; r < ROLE_COUNT; r++)
        for (unsigned i = 0; i < m->roles[r].nslots; i++)
            uv_close((uv_handle_t *)&m->roles[r].slots[i].restart_timer, NULL);
}
