/*
 * cleanup_notify.c - MP_QUEUE_NEW hints from cleanup to qmgr
 *
 * After each commit cleanup tells qmgr the new message id over
 * RUNDIR/private/qmgr, on a connection that starts with MP_QMGR_HELLO
 * (kind MP_PEER_CLEANUP). It is only a hint (qmgr also scans the queue), so
 * this side never waits for qmgr: the connect is non-blocking and tried again
 * at most once per RETRY_MS; while qmgr is not there, or not reading (its
 * socket buffer full and MAX_PENDING writes queued), hints are dropped and
 * that is logged once per outage.
 *
 * Owns: the channel to qmgr.
 *
 * SECURITY: qmgr's frames are not expected; anything qmgr sends closes the
 * channel (it is read with the usual length checks first).
 */
#include "config.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "cleanup.h"
#include "mailproto.h"
#include "msg.h"
#include "worker.h"
#include "xalloc.h"

#define RETRY_MS    1000
#define MAX_PENDING 4096

static struct {
    struct ipc_chan *ch;
    uint64_t last_try;
    int warned;
} N;

static int
on_qmgr_msg(struct ipc_chan *ch, struct ipc_msg *m)
{
    msg_warn("unexpected message %s (type %u) from qmgr; closing the hint channel",
             mp_type_name(m->type), m->type);
    return 1;
}

static void
on_qmgr_closed(struct ipc_chan *ch, int reason)
{
    N.ch = NULL;
}

/* send_hello - MP_QMGR_HELLO: this connection carries a cleanup process's hints */
static void
send_hello(void)
{
    struct buf out = BUF_INIT;
    struct mp_qmgr_hello hello = { .kind = MP_PEER_CLEANUP, .pid = (uint32_t)getpid() };

    (void)mp_encode_qmgr_hello(&out, 0, &hello); /* numbers only: cannot fail */
    ipc_chan_send(N.ch, &out);
    buf_free(&out);
}

/* try_connect - a non-blocking connect to qmgr's socket; 0 or -errno */
static int
try_connect(void)
{
    struct sockaddr_un sun;
    char *path = worker_socket_path("qmgr");
    int fd, err = 0;

    memset(&sun, 0, sizeof(sun));
    sun.sun_family = AF_UNIX;
    if (strlen(path) >= sizeof(sun.sun_path))
        err = -ENAMETOOLONG;
    else if ((fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0)) < 0)
        err = -errno;
    else {
        memcpy(sun.sun_path, path, strlen(path) + 1);
        if (connect(fd, (struct sockaddr *)&sun, sizeof(sun)) < 0) {
            err = -errno;
            close(fd);
        } else {
            err = ipc_chan_open_fd(worker_loop(), fd, on_qmgr_msg, on_qmgr_closed, NULL, &N.ch);
            if (err == 0) {
                ipc_chan_cork(N.ch); /* one write for a group commit's hints */
                send_hello();
            }
        }
    }
    free(path);
    return err;
}

/* channel - the open channel, connecting if it is time to try; NULL if none */
static struct ipc_chan *
channel(void)
{
    uint64_t now = uv_now(worker_loop());
    int err;

    if (N.ch != NULL || (N.last_try && now - N.last_try < RETRY_MS))
        return N.ch;
    N.last_try = now;
    if ((err = try_connect()) < 0) {
        if (!N.warned)
            msg_info("qmgr not reachable (%s); new-message hints wait for it", strerror(-err));
        N.warned = 1;
        return NULL;
    }
    N.warned = 0;
    return N.ch;
}

void
cleanup_notify_new(uint64_t msgid)
{
    struct ipc_chan *ch = channel();
    struct buf out = BUF_INIT;
    struct mp_queue_new hint = { .msgid = msgid };

    if (ch == NULL || ch->pending_writes >= MAX_PENDING)
        return;
    (void)mp_encode_queue_new(&out, 0, &hint); /* numbers only: cannot fail */
    ipc_chan_send(ch, &out);
    buf_free(&out);
}

void
cleanup_notify_close(void)
{
    if (N.ch)
        ipc_chan_close(N.ch);
    N.ch = NULL;
}
