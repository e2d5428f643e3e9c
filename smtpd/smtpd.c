/*
 * smtpd.c - inbound SMTP worker (minimal placeholder)
 *
 * Runs under pmtad with the smtp-listener sockets inherited from it. Until
 * the SMTP state machine lands (next issue) it accepts each connection,
 * answers "421 4.3.2 service not yet available" and closes, so clients see a
 * clean temporary failure rather than a hang.
 *
 * Owns: one uv_tcp_t per inherited listener, one per client being answered.
 *
 * SECURITY: talks to the network but reads nothing from the peer.
 */
#include "config.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "msg.h"
#include "xalloc.h"
#include "worker.h"

#define NOT_YET_REPLY "421 4.3.2 service not yet available\r\n"

struct client {
    uv_tcp_t tcp;
    uv_write_t write;
};

static uv_tcp_t *listeners;
static int nlisteners;

static void
free_handle(uv_handle_t *h)
{
    free(h->data);
}

static void
on_reply_written(uv_write_t *req, int status)
{
    struct client *c = req->data;

    uv_close((uv_handle_t *)&c->tcp, free_handle);
}

/* on_connection - accept one client and turn it away politely */
static void
on_connection(uv_stream_t *server, int status)
{
    static char reply[] = NOT_YET_REPLY;
    struct client *c;
    uv_buf_t b = uv_buf_init(reply, sizeof(reply) - 1);

    if (status < 0 || worker_stopping())
        return;
    c = xcalloc(1, sizeof(*c));
    uv_tcp_init(worker_loop(), &c->tcp);
    c->tcp.data = c;
    c->write.data = c;
    if (uv_accept(server, (uv_stream_t *)&c->tcp) != 0
        || uv_write(&c->write, (uv_stream_t *)&c->tcp, &b, 1, on_reply_written) != 0)
        uv_close((uv_handle_t *)&c->tcp, free_handle);
}

/* open_listeners - wrap every inherited smtp-listener socket */
static void
open_listeners(void)
{
    nlisteners = worker_listen_count();
    listeners = xcalloc((size_t)(nlisteners ? nlisteners : 1), sizeof(*listeners));
    for (int i = 0; i < nlisteners; i++) {
        /* The runtime keeps the descriptor; libuv gets its own copy to own and close. */
        int fd = dup(worker_listen_fd(i));

        uv_tcp_init(worker_loop(), &listeners[i]);
        if (fd < 0 || uv_tcp_open(&listeners[i], fd) != 0
            || uv_listen((uv_stream_t *)&listeners[i], 128, on_connection) != 0)
            msg_fatal("cannot listen on %s", worker_listen_address(i));
    }
}

static void
on_shutdown(unsigned drain_seconds, void *ctx)
{
    for (int i = 0; i < nlisteners; i++)
        uv_close((uv_handle_t *)&listeners[i], NULL);
    worker_stop(0);
}

int
main(int argc, char **argv)
{
    struct worker_ops ops = { NULL, on_shutdown, NULL };
    int status;

    worker_init(&argc, &argv, "smtpd");
    worker_set_ops(&ops);
    open_listeners();
    status = worker_run();
    free(listeners);
    return status;
}
