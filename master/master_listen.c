/*
 * master_listen.c - every socket pmtad binds for its workers
 *
 * smtp-listener: each `smtp-listener IP:PORT [source=NAME]` line and each
 * `<smtp-listener IP:PORT>` block becomes one listening TCP socket, bound here
 * as root (port 25 needs it) and inherited by every smtpd process. With no
 * listener configured, 0.0.0.0:25 is implied, as in PowerMTA.
 *
 * The HTTP monitor's TCP socket (http-mgmt-port, served by qmgr) is bound
 * here as well; unlike a listener, failing to bind it only costs the monitor.
 *
 * Internal Unix sockets under the run directory (private/cleanup,
 * private/qmgr, control) are bound here too, so they exist before any worker
 * starts; each is inherited only by the role that serves it. So is `pickup`
 * (mode 0666, served by smtpd): the sendmail command's way in, open to every
 * local user like Postfix's maildrop; smtpd treats it as <source {pickup}>.
 *
 * The connection table (runtime/anvil.h) is created here as well: one
 * memfd every smtpd process maps, so that total-max-smtp-in and the
 * per-address limits hold across processes. Its size follows
 * smtpd-processes and total-max-smtp-in at start.
 *
 * Owns: m->listeners, m->sockets (descriptors, socket nodes), m->anvil_fd.
 *
 * SECURITY: parses operator text (addresses); every field is checked. Socket
 * nodes under private/ are reachable only by root and the worker user;
 * `control` only by root; `pickup` by everyone (local submission).
 */
#include "config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "anvil.h"
#include "msg.h"
#include "xalloc.h"
#include "master.h"

#define LISTEN_BACKLOG 1024

/* parse_address - "IP:PORT", "[IPv6]:PORT" or "CIDR:PORT" -> socket address; 0 or -EINVAL */
static int
parse_address(const char *text, struct sockaddr_storage *ss, socklen_t *len)
{
    char host[128];
    const char *colon = strrchr(text, ':');
    char *end, *slash;
    long port;
    size_t hlen;

    if (colon == NULL || colon == text)
        return -EINVAL;
    port = strtol(colon + 1, &end, 10);
    if (*end != '\0' || colon[1] == '\0' || port < 1 || port > 65535)
        return -EINVAL;
    hlen = (size_t)(colon - text);
    if (text[0] == '[' && colon[-1] == ']') {
        text++;
        hlen -= 2;
    }
    if (hlen == 0 || hlen >= sizeof(host))
        return -EINVAL;
    memcpy(host, text, hlen);
    host[hlen] = '\0';
    /* PowerMTA writes a CIDR here (0/0:25); bind its network address. */
    if ((slash = strchr(host, '/')) != NULL)
        *slash = '\0';
    if (strcmp(host, "0") == 0 || strcmp(host, "*") == 0)
        strcpy(host, "0.0.0.0");
    memset(ss, 0, sizeof(*ss));
    struct sockaddr_in *sin = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;
    if (inet_pton(AF_INET, host, &sin->sin_addr) == 1) {
        sin->sin_family = AF_INET;
        sin->sin_port = htons((uint16_t)port);
        *len = sizeof(*sin);
    } else if (inet_pton(AF_INET6, host, &sin6->sin6_addr) == 1) {
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons((uint16_t)port);
        *len = sizeof(*sin6);
    } else {
        return -EINVAL;
    }
    return 0;
}

/* split_listener - "IP:PORT [source=NAME]" -> address and source (fresh copies); 0 or -EINVAL */
static int
split_listener(const char *text, char **address, char **source)
{
    char *copy = xstrdup(text), *save = NULL;
    char *addr = strtok_r(copy, " \t", &save), *word;
    int err = addr ? 0 : -EINVAL;

    *source = xstrdup("");
    while (err == 0 && (word = strtok_r(NULL, " \t", &save)) != NULL) {
        if (strncmp(word, "source=", 7) == 0 && word[7] != '\0') {
            free(*source);
            *source = xstrdup(word + 7);
        } else {
            err = -EINVAL;
        }
    }
    *address = err == 0 ? xstrdup(addr) : NULL;
    if (err) {
        free(*source);
        *source = NULL;
    }
    free(copy);
    return err;
}

typedef void (*listener_fn)(void *ctx, const char *address, const char *source, const char *file,
                            unsigned line, const char *problem);

/*
 * walk_listeners - call FN for every configured listener; PROBLEM is non-NULL
 * for a bad one. The config library already turns each <smtp-listener> block
 * into a global smtp-listener value ("ADDR source=NAME").
 */
static void
walk_listeners(const struct cfg *c, listener_fn fn, void *ctx)
{
    const struct cfg_value *v;
    uint32_t it = 0;
    struct sockaddr_storage ss;
    socklen_t len;

    while ((v = cfg_scope_next(c, 0, CFG_D_SMTP_LISTENER, &it)) != NULL) {
        char *address = NULL, *source = NULL;
        const char *text = cfg_str(c, v->text);

        /* Skip the built-in slot (no default) and "" (cleared). */
        if (v->flags & (CFG_VALUE_UNSET | CFG_VALUE_CLEAR))
            continue;
        if (split_listener(text, &address, &source) < 0)
            fn(ctx, text, "", cfg_str(c, v->file), v->line, "expected IP:PORT [source=NAME]");
        else if (parse_address(address, &ss, &len) < 0)
            fn(ctx, address, source, cfg_str(c, v->file), v->line, "bad address or port");
        else
            fn(ctx, address, source, cfg_str(c, v->file), v->line, NULL);
        free(address);
        free(source);
    }
}

struct check_ctx {
    cfg_diag_fn diag;
    void *diag_ctx;
    int errors;
};

static void
check_one(void *ctx, const char *address, const char *source, const char *file, unsigned line,
          const char *problem)
{
    struct check_ctx *cc = ctx;
    char text[512];

    if (problem == NULL)
        return;
    snprintf(text, sizeof(text), "smtp-listener '%s': %s", address, problem);
    cc->diag(cc->diag_ctx, CFG_DIAG_ERROR, file, line, text);
    cc->errors++;
}

/* master_check_listeners - report bad smtp-listener values through DIAG; the error count */
int
master_check_listeners(const struct cfg *c, cfg_diag_fn diag, void *ctx)
{
    struct check_ctx cc = { diag, ctx, 0 };

    walk_listeners(c, check_one, &cc);
    return cc.errors;
}

/* listener_add - append one listener (not yet bound) to M, skipping duplicates */
static void
listener_add(struct master *m, const char *address, const char *source)
{
    for (size_t i = 0; i < m->nlisteners; i++)
        if (strcmp(m->listeners[i].address, address) == 0)
            return;
    m->listeners = xreallocarray(m->listeners, m->nlisteners + 1, sizeof(*m->listeners));
    m->listeners[m->nlisteners].address = xstrdup(address);
    m->listeners[m->nlisteners].source = xstrdup(source);
    m->listeners[m->nlisteners].fd = -1;
    m->nlisteners++;
}

static void
collect_one(void *ctx, const char *address, const char *source, const char *file, unsigned line,
            const char *problem)
{
    if (problem)
        msg_fatal("%s:%u: smtp-listener '%s': %s", file, line, address, problem);
    listener_add(ctx, address, source);
}

/* try_bind_tcp - one listening socket for ADDRESS, or -errno */
static int
try_bind_tcp(const char *address)
{
    struct sockaddr_storage ss;
    socklen_t len;
    int fd, on = 1, err;

    if (parse_address(address, &ss, &len) < 0)
        return -EINVAL;
    if ((fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0)) < 0)
        return -errno;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on));
    /* [::]:25 and 0.0.0.0:25 may both be configured; keep them apart. */
    if (ss.ss_family == AF_INET6)
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &on, sizeof(on));
    if (bind(fd, (struct sockaddr *)&ss, len) < 0 || listen(fd, LISTEN_BACKLOG) < 0) {
        err = -errno;
        close(fd);
        return err;
    }
    return fd;
}

/* bind_tcp - an smtp-listener's socket; pmtad cannot run without it */
static int
bind_tcp(const char *address)
{
    int fd = try_bind_tcp(address);

    if (fd == -EINVAL)
        msg_fatal("smtp-listener '%s': bad address or port", address);
    if (fd < 0)
        msg_fatal("cannot bind smtp-listener %s: %s", address, strerror(-fd));
    return fd;
}

/* bind_http - the monitor's socket on every address; without it mail still flows */
static int
bind_http(int port)
{
    char address[32];
    int fd;

    if (port <= 0)
        return -1;
    snprintf(address, sizeof address, "0.0.0.0:%d", port);
    if ((fd = try_bind_tcp(address)) < 0)
        msg_warn("http-mgmt-port %d: cannot listen (%s); the HTTP monitor is off", port,
                 strerror(-fd));
    return fd < 0 ? -1 : fd;
}

/* master_bind_listeners - bind every smtp-listener of C (0.0.0.0:25 when none) */
void
master_bind_listeners(struct master *m, const struct cfg *c)
{
    walk_listeners(c, collect_one, m);
    if (m->nlisteners == 0)
        listener_add(m, "0.0.0.0:25", "");
    for (size_t i = 0; i < m->nlisteners; i++) {
        m->listeners[i].fd = bind_tcp(m->listeners[i].address);
        msg_info("listening on %s%s%s", m->listeners[i].address,
                 *m->listeners[i].source ? " source=" : "", m->listeners[i].source);
    }
}

struct differ_ctx {
    const struct master *m;
    size_t seen;
    int differ;
};

static void
differ_one(void *ctx, const char *address, const char *source, const char *file, unsigned line,
           const char *problem)
{
    struct differ_ctx *dc = ctx;
    int found = 0;

    for (size_t i = 0; i < dc->m->nlisteners; i++)
        if (strcmp(dc->m->listeners[i].address, address) == 0) {
            found = 1;
            dc->differ |= strcmp(dc->m->listeners[i].source, source) != 0;
        }
    dc->differ |= !found;
    dc->seen++;
}

/* master_listeners_differ - does C configure other listeners than the bound ones? */
int
master_listeners_differ(const struct master *m, const struct cfg *c)
{
    struct differ_ctx dc = { m, 0, 0 };

    walk_listeners(c, differ_one, &dc);
    if (dc.seen == 0) /* the implied default */
        return m->nlisteners != 1 || strcmp(m->listeners[0].address, "0.0.0.0:25") != 0;
    return dc.differ || dc.seen < m->nlisteners;
}

/* bind_unix - listening Unix socket at PATH with the given owner and mode */
static int
bind_unix(const char *path, uid_t uid, gid_t gid, mode_t mode)
{
    struct sockaddr_un sun;
    int fd;

    if (strlen(path) >= sizeof(sun.sun_path))
        msg_fatal("socket path too long: %s", path);
    memset(&sun, 0, sizeof(sun));
    sun.sun_family = AF_UNIX;
    strcpy(sun.sun_path, path);
    /* We hold the run-directory lock, so a node left here is stale. */
    if (unlink(path) < 0 && errno != ENOENT)
        msg_fatal("cannot remove stale socket %s: %s", path, strerror(errno));
    if ((fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0)) < 0)
        msg_fatal("socket %s: %s", path, strerror(errno));
    if (bind(fd, (struct sockaddr *)&sun, sizeof(sun)) < 0)
        msg_fatal("cannot bind %s: %s", path, strerror(errno));
    if (listen(fd, LISTEN_BACKLOG) < 0)
        msg_fatal("cannot listen on %s: %s", path, strerror(errno));
    if ((geteuid() == 0 && lchown(path, uid, gid) < 0) || chmod(path, mode) < 0)
        msg_fatal("cannot set ownership of %s: %s", path, strerror(errno));
    return fd;
}

/* master_bind_sockets - the internal sockets, before any worker exists */
void
master_bind_sockets(struct master *m)
{
    enum access { WORKERS, ROOT_ONLY, EVERYONE };
    static const struct {
        const char *name, *rel;
        enum master_role_id server;
        enum access access;
    } table[MASTER_NSOCKETS] = {
        { "cleanup", "private/cleanup", ROLE_CLEANUP, WORKERS },
        { "qmgr", "private/qmgr", ROLE_QMGR, WORKERS },
        { "control", "control", ROLE_QMGR, ROOT_ONLY }, /* pmtactl: root only */
        /* sendmail submits here as any local user; smtpd applies <source {pickup}> */
        { "pickup", "pickup", ROLE_SMTPD, EVERYONE },
        /* the HTTP monitor (TCP, http-mgmt-port); qmgr applies http-access */
        { "http", NULL, ROLE_QMGR, EVERYONE },
    };

    for (int i = 0; i < MASTER_NSOCKETS; i++) {
        struct master_socket *s = &m->sockets[i];

        s->name = table[i].name;
        s->server = table[i].server;
        if (table[i].rel == NULL) {
            s->path = NULL;
            s->fd = bind_http(m->set.http_port);
            continue;
        }
        s->path = xasprintf("%s/%s", m->set.run_dir, table[i].rel);
        if (table[i].access == ROOT_ONLY)
            s->fd = bind_unix(s->path, geteuid(), getegid(), 0600);
        else
            s->fd = bind_unix(s->path, m->set.uid, m->set.gid,
                              table[i].access == EVERYONE ? 0666 : 0660);
    }
}

/* master_create_anvil - see master.h; without it each smtpd counts alone (logged there) */
void
master_create_anvil(struct master *m)
{
    const struct cfg_value *total = cfg_global(m->cfg, CFG_D_TOTAL_MAX_SMTP_IN);
    unsigned capacity = anvil_capacity_for(total ? total->num : 100);

    m->anvil_fd = anvil_create(m->set.nprocs[ROLE_SMTPD], capacity);
    if (m->anvil_fd < 0) {
        msg_warn("cannot create the connection table: %s; each smtpd process applies "
                 "total-max-smtp-in and the per-address limits alone",
                 strerror(-m->anvil_fd));
        m->anvil_fd = -1;
    }
}

/* master_close_sockets - close every socket and remove the Unix nodes */
void
master_close_sockets(struct master *m)
{
    for (size_t i = 0; i < m->nlisteners; i++) {
        if (m->listeners[i].fd >= 0)
            close(m->listeners[i].fd);
        free(m->listeners[i].address);
        free(m->listeners[i].source);
    }
    free(m->listeners);
    m->listeners = NULL;
    m->nlisteners = 0;
    if (m->anvil_fd >= 0)
        close(m->anvil_fd);
    m->anvil_fd = -1;
    for (int i = 0; i < MASTER_NSOCKETS; i++) {
        struct master_socket *s = &m->sockets[i];

        if (s->fd >= 0) {
            close(s->fd);
            if (s->path)
                unlink(s->path);
        }
        free(s->path);
        s->path = NULL;
        s->fd = -1;
    }
}
