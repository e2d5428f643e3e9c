/*
 * worker.c - the worker runtime: what pmtad hands a worker, as a libuv loop
 *
 * Reads the environment pmtad built (master/master_spawn.c): PMTA_MASTER_FD,
 * PMTA_LOG_FD or PMTA_LOG=syslog, PMTA_CONFIG + PMTA_CONFIG_GENERATION,
 * PMTA_SOCKET_FDS (name:fd,...), PMTA_LISTEN_FDS / _SOURCES / _ADDRS,
 * PMTA_SPOOL, PMTA_RUN_DIRECTORY, PMTA_PRIVILEGES_DROPPED. Maps the
 * configuration snapshot, talks IPC with pmtad (HELLO, CONFIG, CONFIG_ACK,
 * SHUTDOWN) and runs the loop. See worker.h for the contract.
 *
 * Owns: the loop, the pmtad channel, the signal handles, the mapped
 * configuration generations (reference counted), the inherited descriptors.
 *
 * SECURITY: the privilege check runs before anything else (no root id, no
 * supplementary group, no capability, no_new_privs set, an empty bounding
 * set); inherited
 * descriptors are made close-on-exec so nothing a worker starts inherits them.
 * Messages from pmtad are trusted but still parsed with full length checks;
 * a malformed one closes the channel, which stops the worker.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <inttypes.h>
#include <malloc.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <linux/capability.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "buf.h"
#include "ctlproto.h"
#include "ipc.h"
#include "msg.h"
#include "xalloc.h"
#include "worker.h"

#define FORCE_STOP_MS 5000

/* One mapped configuration generation and the number of its holders. */
struct held_cfg {
    struct cfg *cfg;
    unsigned refs;
    struct held_cfg *next;
};

struct inherited {
    int fd;
    char *name;    /* socket name, or listener source */
    char *address; /* listeners: "IP:PORT" */
};

#define WORKER_TRIM_THRESHOLD (4 << 20)

static struct {
    uv_loop_t loop;
    const char *role;
    struct worker_ops ops;
    struct ipc_chan *master;
    uv_signal_t sig_term;
    uv_timer_t force_timer;
    uv_prepare_t log_flush; /* writes the turn's log lines before the loop sleeps */
    struct held_cfg *current;
    struct held_cfg *held; /* every mapped generation, current included */
    struct inherited *listeners;
    int nlisteners;
    struct inherited *sockets;
    int nsockets;
    char *spool;
    char *run_dir;
    int stopping;
    int status;
    int lost_master; /* pmtad's channel closed under us */
} W;

/* env_int - a descriptor-like number from the environment, or -1 */
static int
env_int(const char *name)
{
    const char *v = getenv(name);
    char *end;
    long n;

    if (v == NULL || *v == '\0')
        return -1;
    n = strtol(v, &end, 10);
    if (*end != '\0' || n < 0 || n > 65535)
        msg_fatal("bad %s=%s in the environment", name, v);
    return (int)n;
}

/* check_capabilities - none held, none to be had again (pmtad's no_new_privs, bounding set) */
static void
check_capabilities(void)
{
    struct __user_cap_header_struct hdr = { _LINUX_CAPABILITY_VERSION_3, 0 };
    struct __user_cap_data_struct data[_LINUX_CAPABILITY_U32S_3];

    memset(data, 0, sizeof(data));
    if (syscall(SYS_capget, &hdr, data) < 0)
        msg_fatal("capget: %s", strerror(errno));
    for (int i = 0; i < _LINUX_CAPABILITY_U32S_3; i++)
        if (data[i].effective || data[i].permitted)
            msg_fatal("expected to run without capabilities; refusing to run");
    if (prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) != 1)
        msg_fatal("expected no_new_privs from pmtad; refusing to run");
    for (int cap = 0, in; (in = prctl(PR_CAPBSET_READ, cap, 0, 0, 0)) >= 0; cap++)
        if (in == 1)
            msg_fatal("capability %d is still in the bounding set; refusing to run", cap);
}

/* check_privileges - pmtad promised a dropped worker: hold it to that */
static void
check_privileges(void)
{
    if (!worker_privileges_dropped())
        return;
    /* Any root id or leftover group means the drop failed: never run like that. */
    if (geteuid() == 0 || getuid() == 0 || getegid() == 0 || getgid() == 0)
        msg_fatal("expected to run unprivileged but uid %ld gid %ld; refusing to run",
                  (long)geteuid(), (long)getegid());
    if (getgroups(0, NULL) != 0)
        msg_fatal("supplementary groups were not cleared; refusing to run");
    check_capabilities();
}

/* set_cloexec - inherited descriptors must not reach anything we exec */
static void
set_cloexec(int fd)
{
    if (fcntl(fd, F_SETFD, FD_CLOEXEC) < 0)
        msg_fatal("inherited descriptor %d is not open: %s", fd, strerror(errno));
}

/* setup_log - the log pmtad opened for us */
static void
setup_log(void)
{
    int fd = env_int("PMTA_LOG_FD");
    const char *log = getenv("PMTA_LOG");

    msg_also_stderr(getenv("PMTA_LOG_STDERR") != NULL);
    msg_set_verbose(getenv("PMTA_VERBOSE") != NULL);
    if (fd >= 0) {
        set_cloexec(fd);
        msg_use_fd(fd);
    } else if (log && strcmp(log, "syslog") == 0) {
        msg_use_syslog();
    } else {
        msg_also_stderr(1);
    }
}

/* split_list - split S at commas, keeping empty fields; *N gets the count; caller frees */
static char **
split_list(const char *s, int *n)
{
    char **out = NULL;
    int count = 0;

    while (s) {
        const char *comma = strchr(s, ',');
        size_t len = comma ? (size_t)(comma - s) : strlen(s);

        out = xreallocarray(out, (size_t)count + 1, sizeof(*out));
        out[count++] = xstrndup(s, len);
        s = comma ? comma + 1 : NULL;
    }
    *n = count;
    return out;
}

static void
free_list(char **list, int n)
{
    for (int i = 0; i < n; i++)
        free(list[i]);
    free(list);
}

/* parse_fd - one descriptor number from a list entry */
static int
parse_fd(const char *text)
{
    char *end;
    long n = strtol(text, &end, 10);

    if (*text == '\0' || *end != '\0' || n < 3 || n > 65535)
        msg_fatal("bad inherited descriptor '%s'", text);
    set_cloexec((int)n);
    return (int)n;
}

/* setup_listeners - PMTA_LISTEN_FDS=5,6 with _SOURCES and _ADDRS in the same order */
static void
setup_listeners(void)
{
    const char *fds = getenv("PMTA_LISTEN_FDS");
    const char *sources = getenv("PMTA_LISTEN_SOURCES");
    const char *addrs = getenv("PMTA_LISTEN_ADDRS");
    char **f, **s = NULL, **a = NULL;
    int nf, ns = 0, na = 0;

    if (fds == NULL || *fds == '\0')
        return;
    f = split_list(fds, &nf);
    if (sources)
        s = split_list(sources, &ns);
    if (addrs)
        a = split_list(addrs, &na);
    W.listeners = xcalloc((size_t)nf, sizeof(*W.listeners));
    for (int i = 0; i < nf; i++) {
        W.listeners[i].fd = parse_fd(f[i]);
        W.listeners[i].name = xstrdup(i < ns ? s[i] : "");
        W.listeners[i].address = xstrdup(i < na ? a[i] : "");
    }
    W.nlisteners = nf;
    free_list(f, nf);
    free_list(s, ns);
    free_list(a, na);
}

/* setup_sockets - PMTA_SOCKET_FDS=cleanup:5,control:6 */
static void
setup_sockets(void)
{
    const char *list = getenv("PMTA_SOCKET_FDS");
    char **items;
    int n;

    if (list == NULL || *list == '\0')
        return;
    items = split_list(list, &n);
    W.sockets = xcalloc((size_t)n, sizeof(*W.sockets));
    for (int i = 0; i < n; i++) {
        char *colon = strchr(items[i], ':');

        if (colon == NULL)
            msg_fatal("bad PMTA_SOCKET_FDS entry '%s'", items[i]);
        *colon = '\0';
        W.sockets[i].name = xstrdup(items[i]);
        W.sockets[i].fd = parse_fd(colon + 1);
    }
    W.nsockets = n;
    free_list(items, n);
}

/* map_generation - map the snapshot at PATH and make it current; 0 or -errno */
static int
map_generation(const char *path, uint64_t generation)
{
    int err = 0;
    struct cfg *c = cfg_snapshot_map(path, &err);
    struct held_cfg *h;

    if (c == NULL)
        return err ? err : -EPROTO;
    if (c->generation == 0)
        c->generation = generation;
    h = xcalloc(1, sizeof(*h));
    h->cfg = c;
    h->refs = 1; /* the runtime's own reference while it is current */
    h->next = W.held;
    W.held = h;
    if (W.current)
        worker_config_release(W.current->cfg);
    W.current = h;
    return 0;
}

/* send_frame - queue OUT to pmtad */
static void
send_frame(struct buf *out)
{
    if (W.master == NULL || ipc_chan_send(W.master, out) < 0)
        msg_warn("cannot send to pmtad");
    buf_free(out);
}

static void
send_hello(void)
{
    struct buf out = BUF_INIT;
    struct ctl_hello hello = { .role = W.role,
                               .pid = (uint32_t)getpid(),
                               .generation = worker_config_generation() };

    if (ctl_encode_hello(&out, 0, &hello) < 0)
        msg_fatal("role name %s does not fit the hello to pmtad", W.role);
    send_frame(&out);
}

/* handle_config - CTL_CONFIG */
static int
handle_config(struct ipc_msg *m)
{
    struct ctl_config config;
    struct ctl_config_ack ack;
    struct buf out = BUF_INIT;
    int err;

    if (ctl_decode_config(m, &config) < 0)
        return -EPROTO;
    if ((err = map_generation(config.path, config.generation)) < 0) {
        msg_error("cannot map configuration generation %" PRIu64 " (%s): %s; keeping "
                  "generation %" PRIu64,
                  config.generation, config.path, strerror(-err), worker_config_generation());
        return 0;
    }
    if (W.ops.on_config)
        W.ops.on_config(W.current->cfg, W.ops.ctx);
    ack.generation = worker_config_generation();
    (void)ctl_encode_config_ack(&out, 0, &ack); /* fixed-size fields: cannot fail */
    send_frame(&out);
    msg_info("using configuration generation %" PRIu64, worker_config_generation());
    return 0;
}

/* begin_shutdown - CTL_SHUTDOWN or SIGTERM */
static void
begin_shutdown(unsigned drain_seconds)
{
    if (W.stopping)
        return;
    msg_info("stopping");
    if (W.ops.on_shutdown)
        W.ops.on_shutdown(drain_seconds, W.ops.ctx);
    else
        worker_stop(0);
}

/* reopen_log - CTL_LOG_REOPEN: pmtad rotated the log-file; append to the new one */
static void
reopen_log(void)
{
    const char *path = getenv("PMTA_LOG_PATH");
    int fd;

    if (path == NULL)
        return; /* syslog, or an older pmtad: nothing to reopen */
    if ((fd = open(path, O_WRONLY | O_APPEND | O_CLOEXEC)) < 0) {
        msg_warn("cannot reopen the log file %s after its rotation: %s", path, strerror(errno));
        return;
    }
    msg_use_fd(fd);
}

/* on_master_msg - a frame from pmtad; non-zero closes the channel */
static int
on_master_msg(struct ipc_chan *ch, struct ipc_msg *m)
{
    struct ctl_shutdown shutdown;

    switch (m->type) {
    case CTL_CONFIG:
        if (handle_config(m) < 0)
            break;
        return 0;
    case CTL_SHUTDOWN:
        if (ctl_decode_shutdown(m, &shutdown) < 0)
            break;
        begin_shutdown(shutdown.drain);
        return 0;
    case CTL_LOG_REOPEN:
        if (ctl_decode_log_reopen(m, NULL) < 0)
            break;
        reopen_log();
        return 0;
    default:
        break;
    }
    msg_error("malformed or unexpected message %s (type %u) from pmtad", ctl_type_name(m->type),
              m->type);
    return 1;
}

/* on_master_closed - pmtad is gone (or we closed the channel on purpose) */
static void
on_master_closed(struct ipc_chan *ch, int reason)
{
    W.master = NULL;
    if (!W.stopping) {
        msg_warn("lost the channel to pmtad; exiting within %u s", WORKER_ORPHAN_DRAIN_S);
        /* Finish what is under way (its result recorded is one duplicate less), but exit 1. */
        W.lost_master = 1;
        begin_shutdown(WORKER_ORPHAN_DRAIN_S);
    }
}

static void
on_sigterm(uv_signal_t *h, int sig)
{
    begin_shutdown(0);
}

static void
on_log_flush(uv_prepare_t *h)
{
    (void)h;
    msg_flush();
}

static void
on_force_stop(uv_timer_t *t)
{
    msg_warn("handles still open %d ms after stopping; exiting anyway", FORCE_STOP_MS);
    uv_stop(&W.loop);
}

/* worker_init - see worker.h */
void
worker_init(int *argc, char ***argv, const char *role)
{
    int master_fd, err;
    const char *snapshot = getenv("PMTA_CONFIG");
    const char *gen_text = getenv("PMTA_CONFIG_GENERATION");

    (void)argc;
    (void)argv;
    msg_init(role);
    W.role = role;
    /*
     * Keep freed memory for the next connection instead of handing it back at
     * once: with glibc's 128 KiB default a busy smtpd moved its heap top up and
     * down (brk, then fresh zeroed pages) about once per connection.
     */
    mallopt(M_TRIM_THRESHOLD, WORKER_TRIM_THRESHOLD);
    check_privileges();
    setup_log();
    signal(SIGPIPE, SIG_IGN);
    signal(SIGINT, SIG_IGN); /* ^C in pmtad -f reaches us too; pmtad drains us */
    signal(SIGHUP, SIG_IGN); /* reloads come over the channel */
    if ((master_fd = env_int("PMTA_MASTER_FD")) < 0 || snapshot == NULL)
        msg_fatal("%s is started by pmtad, not by hand", role);
    set_cloexec(master_fd);
    setup_listeners();
    setup_sockets();
    W.spool = xstrdup(getenv("PMTA_SPOOL") ? getenv("PMTA_SPOOL") : "");
    W.run_dir = xstrdup(getenv("PMTA_RUN_DIRECTORY") ? getenv("PMTA_RUN_DIRECTORY") : "");
    if ((err = map_generation(snapshot, gen_text ? strtoull(gen_text, NULL, 10) : 0)) < 0)
        msg_fatal("cannot map the configuration snapshot %s: %s", snapshot, strerror(-err));
    if (uv_loop_init(&W.loop) != 0)
        msg_fatal("cannot initialize the event loop");
    if ((err = ipc_chan_open_fd(&W.loop, master_fd, on_master_msg, on_master_closed, NULL,
                                &W.master)) < 0)
        msg_fatal("cannot open the channel to pmtad: %s", strerror(-err));
    uv_signal_init(&W.loop, &W.sig_term);
    uv_signal_start(&W.sig_term, on_sigterm, SIGTERM);
    uv_timer_init(&W.loop, &W.force_timer);
    /* One write(2) per loop turn for all its lines: busy workers log per message. */
    uv_prepare_init(&W.loop, &W.log_flush);
    uv_prepare_start(&W.log_flush, on_log_flush);
    uv_unref((uv_handle_t *)&W.log_flush);
    msg_set_batched(1);
    send_hello();
    msg_info("started (pid %ld, config generation %" PRIu64 ")", (long)getpid(),
             worker_config_generation());
}

void
worker_set_ops(const struct worker_ops *ops)
{
    W.ops = *ops;
}

/* worker_stop - close the runtime's handles; the loop ends when the worker's are closed too */
void
worker_stop(int status)
{
    if (W.stopping)
        return;
    W.stopping = 1;
    W.status = W.lost_master ? 1 : status;
    if (W.master)
        ipc_chan_close(W.master);
    uv_close((uv_handle_t *)&W.sig_term, NULL);
    /* A handle the worker forgot must not keep it alive forever. */
    uv_timer_start(&W.force_timer, on_force_stop, FORCE_STOP_MS, 0);
    uv_unref((uv_handle_t *)&W.force_timer);
}

int
worker_stopping(void)
{
    return W.stopping;
}

static void
close_leftover(uv_handle_t *h, void *arg)
{
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

/* release_everything - unmap configurations, close inherited descriptors */
static void
release_everything(void)
{
    while (W.held) {
        struct held_cfg *h = W.held;

        W.held = h->next;
        cfg_free(h->cfg);
        free(h);
    }
    W.current = NULL;
    for (int i = 0; i < W.nlisteners; i++) {
        close(W.listeners[i].fd);
        free(W.listeners[i].name);
        free(W.listeners[i].address);
    }
    for (int i = 0; i < W.nsockets; i++) {
        close(W.sockets[i].fd);
        free(W.sockets[i].name);
    }
    free(W.listeners);
    free(W.sockets);
    free(W.spool);
    free(W.run_dir);
}

/* worker_run - see worker.h */
int
worker_run(void)
{
    int err;

    uv_run(&W.loop, UV_RUN_DEFAULT);
    uv_walk(&W.loop, close_leftover, NULL);
    uv_run(&W.loop, UV_RUN_DEFAULT);
    if ((err = uv_loop_close(&W.loop)) != 0)
        msg_warn("event loop closed with handles open: %s", uv_strerror(err));
    release_everything();
    msg_info("stopped");
    return W.status;
}

uv_loop_t *
worker_loop(void)
{
    return &W.loop;
}

const char *
worker_role(void)
{
    return W.role;
}

const struct cfg *
worker_config(void)
{
    return W.current ? W.current->cfg : NULL;
}

uint64_t
worker_config_generation(void)
{
    return W.current ? W.current->cfg->generation : 0;
}

const struct cfg *
worker_config_hold(void)
{
    W.current->refs++;
    return W.current->cfg;
}

/* worker_config_release - drop one hold on C; unmap it when nobody holds it */
void
worker_config_release(const struct cfg *c)
{
    for (struct held_cfg **hp = &W.held; *hp; hp = &(*hp)->next) {
        struct held_cfg *h = *hp;

        if (h->cfg != c)
            continue;
        if (h->refs == 0)
            msg_panic("configuration generation %" PRIu64 " released too often", c->generation);
        if (--h->refs == 0 && h != W.current) {
            *hp = h->next;
            cfg_free(h->cfg);
            free(h);
        }
        return;
    }
    msg_panic("release of a configuration that is not held");
}

int
worker_listen_count(void)
{
    return W.nlisteners;
}

int
worker_listen_fd(int i)
{
    return i >= 0 && i < W.nlisteners ? W.listeners[i].fd : -1;
}

const char *
worker_listen_source(int i)
{
    return i >= 0 && i < W.nlisteners ? W.listeners[i].name : "";
}

const char *
worker_listen_address(int i)
{
    return i >= 0 && i < W.nlisteners ? W.listeners[i].address : "";
}

/* worker_socket_fd - see worker.h */
int
worker_socket_fd(const char *name)
{
    for (int i = 0; i < W.nsockets; i++)
        if (strcmp(W.sockets[i].name, name) == 0)
            return W.sockets[i].fd;
    return -1;
}

char *
worker_socket_path(const char *name)
{
    if (strcmp(name, "control") == 0)
        return xasprintf("%s/control", W.run_dir);
    return xasprintf("%s/private/%s", W.run_dir, name);
}

int
worker_privileges_dropped(void)
{
    const char *dropped = getenv("PMTA_PRIVILEGES_DROPPED");

    return dropped != NULL && strcmp(dropped, "1") == 0;
}

const char *
worker_spool(void)
{
    return W.spool;
}

const char *
worker_run_directory(void)
{
    return W.run_dir;
}
