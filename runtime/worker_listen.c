/*
 * worker_listen.c - accepting connections on an inherited listening socket
 *
 * One uv_poll_t per listening socket; each wake-up accepts up to
 * ACCEPT_BATCH connections (so a flood cannot starve the sessions already
 * open), handing each to the owner with its peer address.
 *
 * Out of descriptors (EMFILE, ENFILE): libuv's own answer is to accept and
 * close every pending connection without a word; ours is the classic reserve
 * descriptor. The process keeps /dev/null open for this moment; it closes
 * it, accepts one connection into the freed slot, lets the owner write a
 * refusal (smtpd: "421 4.3.2"), closes it and reopens the reserve, for each
 * pending connection (at most ACCEPT_BATCH). Then the listener pauses for
 * OVERLOAD_PAUSE_MS: connections arriving meanwhile wait in the kernel's
 * backlog, and are served if descriptors came free by then. One log line
 * per listener and second at most says how many were refused.
 *
 * Owns: struct worker_listener (its poll and pause-timer handles), the
 * process's reserve descriptor.
 *
 * SECURITY: the peer address comes from the kernel; nothing is read here.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "msg.h"
#include "xalloc.h"
#include "worker.h"

#define ACCEPT_BATCH      64
#define OVERLOAD_PAUSE_MS 100
#define OVERLOAD_LOG_MS   1000

struct worker_listener {
    uv_poll_t poll;
    uv_timer_t pause;
    unsigned open_handles;
    char *name;
    int fd;
    worker_accept_fn accepted;
    worker_overload_fn overload;
    void (*plain)(int fd); /* worker_listen()'s callback */
    void *ctx;
    uint64_t refused;     /* out of descriptors, since the last log line */
    uint64_t last_log_ms; /* uv_now() of that line */
};

static int reserve_fd = -1;

/* open_reserve - hold one descriptor for the moment the process runs out */
static void
open_reserve(void)
{
    if (reserve_fd < 0)
        reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
}

static void on_listener_ready(uv_poll_t *h, int status, int events);

static void
on_resume(uv_timer_t *t)
{
    struct worker_listener *l = t->data;

    uv_poll_start(&l->poll, UV_READABLE, on_listener_ready);
}

/* shed - out of descriptors: refuse what is pending through the reserve, then pause */
static void
shed(struct worker_listener *l, int err)
{
    uint64_t now = uv_now(worker_loop());
    int fd;

    for (unsigned n = 0; n < ACCEPT_BATCH && reserve_fd >= 0; n++) {
        close(reserve_fd);
        reserve_fd = -1;
        fd = accept4(l->fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
        if (fd >= 0) {
            if (l->overload)
                l->overload(l->ctx, fd);
            close(fd);
            l->refused++;
        }
        open_reserve();
        if (fd < 0)
            break;
    }
    if (now - l->last_log_ms >= OVERLOAD_LOG_MS || l->last_log_ms == 0) {
        msg_warn("%s: out of descriptors (%s): refused %llu connection(s); accepting again in "
                 "%d ms",
                 l->name, strerror(err), (unsigned long long)l->refused, OVERLOAD_PAUSE_MS);
        l->refused = 0;
        l->last_log_ms = now ? now : 1;
    }
    uv_poll_stop(&l->poll);
    uv_timer_start(&l->pause, on_resume, OVERLOAD_PAUSE_MS, 0);
}

static void
on_listener_ready(uv_poll_t *h, int status, int events)
{
    struct worker_listener *l = h->data;
    struct sockaddr_storage peer;
    socklen_t len;
    int fd;

    (void)events;
    if (status < 0) {
        msg_warn("%s: %s", l->name, uv_strerror(status));
        return;
    }
    for (unsigned n = 0; n < ACCEPT_BATCH; n++) {
        len = sizeof(peer);
        fd = accept4(l->fd, (struct sockaddr *)&peer, &len, SOCK_CLOEXEC | SOCK_NONBLOCK);
        if (fd >= 0) {
            l->accepted(l->ctx, fd, (struct sockaddr *)&peer, len);
            continue;
        }
        if (errno == EINTR || errno == ECONNABORTED)
            continue;
        if (errno == EMFILE || errno == ENFILE)
            shed(l, errno);
        else if (errno != EAGAIN && errno != EWOULDBLOCK)
            msg_warn("accept on %s: %s", l->name, strerror(errno));
        return;
    }
}

static void
on_handle_closed(uv_handle_t *h)
{
    struct worker_listener *l = h->data;

    if (--l->open_handles == 0) {
        free(l->name);
        free(l);
    }
}

/* worker_accept_start - see worker.h */
int
worker_accept_start(int fd, const char *name, worker_accept_fn accepted,
                    worker_overload_fn overload, void *ctx, struct worker_listener **out)
{
    struct worker_listener *l;
    int err;

    open_reserve();
    l = xcalloc(1, sizeof *l);
    l->name = xstrdup(name);
    l->fd = fd;
    l->accepted = accepted;
    l->overload = overload;
    l->ctx = ctx;
    if ((err = uv_poll_init(worker_loop(), &l->poll, fd)) < 0) {
        free(l->name);
        free(l);
        return err;
    }
    uv_timer_init(worker_loop(), &l->pause);
    l->poll.data = l->pause.data = l;
    l->open_handles = 2;
    if ((err = uv_poll_start(&l->poll, UV_READABLE, on_listener_ready)) < 0) {
        worker_listen_stop(l);
        return err;
    }
    *out = l;
    return 0;
}

/* plain_accepted - worker_listen()'s callers want the descriptor only */
static void
plain_accepted(void *ctx, int fd, const struct sockaddr *peer, socklen_t len)
{
    struct worker_listener *l = ctx;

    (void)peer;
    (void)len;
    l->plain(fd);
}

/* worker_listen - see worker.h */
int
worker_listen(const char *name, void (*accepted)(int fd), struct worker_listener **out)
{
    int fd = worker_socket_fd(name), err;
    char *what;

    if (fd < 0)
        return -ENOENT;
    what = xasprintf("the %s socket", name);
    err = worker_accept_start(fd, what, plain_accepted, NULL, NULL, out);
    free(what);
    if (err == 0) {
        (*out)->plain = accepted;
        (*out)->ctx = *out;
    }
    return err;
}

void
worker_listen_stop(struct worker_listener *l)
{
    if (l == NULL)
        return;
    uv_close((uv_handle_t *)&l->poll, on_handle_closed);
    uv_close((uv_handle_t *)&l->pause, on_handle_closed);
}
