/*
 * smtpout_worker.c - the channel between this smtp-out process and qmgr
 *
 * What it does: connects to RUNDIR/private/qmgr, says MP_QMGR_HELLO, turns
 * qmgr's MP_CONN_OPEN / MP_CONN_TXN / MP_CONN_CLOSE frames into calls on the
 * connection table (smtpout_conn.c), and encodes the reports going back
 * (MP_CONN_UP, MP_RCPT_RESULT, MP_TXN_DONE, MP_CONN_IDLE, MP_CONN_DOWN).
 *
 * When the channel drops (qmgr restarted, or sent something malformed) every
 * connection is aborted without a report: qmgr puts their in-flight
 * recipients back in the queue itself. We then reconnect with back-off
 * (RETRY_MIN_MS doubling up to RETRY_MAX_MS) unless we are shutting down.
 *
 * Owns: the channel, the reconnect timer.
 *
 * SECURITY: qmgr is trusted but its frames are still decoded field by field
 * (runtime/mailproto.def: kinds, caps, no CR/LF); a malformed frame closes
 * the channel (the mail stays qmgr's).
 */
#include "config.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mailproto.h"
#include "msg.h"
#include "smtpout.h"
#include "worker.h"
#include "xalloc.h"

#define RETRY_MIN_MS    100
#define RETRY_MAX_MS    5000
#define MAX_CONNECTIONS 0u /* advertised in HELLO; 0 = no limit of ours */

_Static_assert(sizeof(((struct smtpout_reply *)0)->status) <= MP_STATUS_MAX + 1,
               "an enhanced status MP_RCPT_RESULT cannot carry");
_Static_assert(SMTPOUT_REPLY_TEXT_MAX <= MP_TEXT_MAX, "a reply text MP_RCPT_RESULT cannot carry");

static struct {
    struct ipc_chan *ch;
    uv_timer_t retry;
    int retry_init;
    unsigned retry_ms;
    int closed_for_good;
    int warned;
} W;

static void chan_schedule_retry(void);

uint32_t
out_result_of(enum smtpout_class cls)
{
    return cls == SMTPOUT_OK     ? MP_RESULT_OK
           : cls == SMTPOUT_PERM ? MP_RESULT_PERMFAIL
                                 : MP_RESULT_TEMPFAIL;
}

/* --- sending ---------------------------------------------------------------------- */

static void
chan_send(struct buf *out)
{
    int err;

    if (W.ch == NULL) {
        buf_free(out);
        return;
    }
    if ((err = ipc_chan_send(W.ch, out)) < 0)
        msg_warn("cannot send to qmgr: %s", uv_strerror(err));
    buf_free(out);
}

/* report - send one report frame; ERR is its encoder's outcome */
static void
report(struct buf *out, const char *what, uint32_t conn, int err)
{
    if (err < 0) {
        /* every field is bounded before it gets here: this is a bug, not the peer's doing */
        msg_error("connection %u: cannot encode %s: %s", conn, what, strerror(-err));
        buf_free(out);
        return;
    }
    chan_send(out);
}

void
out_report_up(uint32_t conn, const char *mx, const char *dest_ip, const char *source_ip,
              const char *tls, const char *esmtp)
{
    struct buf out = BUF_INIT;
    struct mp_conn_up up = {
        .mx = mx, .dest_ip = dest_ip, .source_ip = source_ip, .tls = tls, .esmtp = esmtp
    };

    report(&out, "MP_CONN_UP", conn, mp_encode_conn_up(&out, conn, &up));
}

void
out_report_rcpt(uint32_t conn, uint64_t msgid, uint32_t index, uint32_t result,
                const struct smtpout_reply *r, uint64_t sent_ns)
{
    struct buf out = BUF_INIT;
    struct mp_rcpt_result rr = { .msgid = msgid,
                                 .index = index,
                                 .result = result,
                                 .code = r->code > 0 ? (uint32_t)r->code : 0,
                                 .enhanced = r->status,
                                 .text = r->text,
                                 .sent_ns = sent_ns };

    report(&out, "MP_RCPT_RESULT", conn, mp_encode_rcpt_result(&out, conn, &rr));
}

void
out_report_txn_done(uint32_t conn, uint64_t msgid)
{
    struct buf out = BUF_INIT;
    struct mp_txn_done done = { .msgid = msgid };

    report(&out, "MP_TXN_DONE", conn, mp_encode_txn_done(&out, conn, &done));
}

void
out_report_idle(uint32_t conn)
{
    struct buf out = BUF_INIT;

    report(&out, "MP_CONN_IDLE", conn, mp_encode_conn_idle(&out, conn, NULL));
}

void
out_report_down(uint32_t conn, uint32_t result, const struct smtpout_reply *r, const char *mx,
                const char *dest_ip)
{
    struct buf out = BUF_INIT;
    struct mp_conn_down d = { .result = result,
                              .code = r->code > 0 ? (uint32_t)r->code : 0,
                              .enhanced = r->status,
                              .text = r->text,
                              .mx = mx,
                              .dest_ip = dest_ip };

    report(&out, "MP_CONN_DOWN", conn, mp_encode_conn_down(&out, conn, &d));
}

void
out_report_trace(uint32_t conn, uint64_t at_ns, const char *kind, const char *text)
{
    struct buf out = BUF_INIT;
    struct mp_trace_line t = { .at_ns = at_ns, .kind = kind, .text = text };

    report(&out, "MP_TRACE_LINE", conn, mp_encode_trace_line(&out, conn, &t));
}

/* --- receiving ---------------------------------------------------------------------- */

static int
on_conn_open(struct ipc_msg *m)
{
    struct mp_conn_open open;
    struct oconn_order o;

    if (mp_decode_conn_open(m, &open) < 0 || m->id == 0)
        return -EPROTO;
    o = (struct oconn_order){ .id = m->id,
                              .queue = open.queue,
                              .domain = open.domain,
                              .vmta = open.vmta,
                              .source_ip = open.source_ip,
                              .helo = open.helo,
                              .config_generation = open.config_generation };
    if (oconn_open(&o) == -EEXIST) {
        msg_warn("qmgr opened connection %u twice", m->id);
        return -EPROTO;
    }
    return 0;
}

static int
on_conn_txn(struct ipc_msg *m)
{
    struct mp_conn_txn t;
    const uint8_t *p;
    size_t n;
    uint32_t *idx;
    int err;

    if (mp_decode_conn_txn(m, &t) < 0 || t.indexes_len == 0 || t.indexes_len % 4 != 0)
        return -EPROTO;
    p = t.indexes;
    n = t.indexes_len / 4;
    idx = xreallocarray(NULL, n, sizeof *idx);
    for (size_t i = 0; i < n; i++)
        idx[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 |
                 (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
    err = oconn_txn(m->id, t.msgid, idx, n);
    free(idx);
    if (err == -ENOENT) /* it went down meanwhile; qmgr learns from MP_CONN_DOWN */
        msg_debug("transaction for connection %u which is gone", m->id);
    return 0;
}

static int
on_qmgr_msg(struct ipc_chan *ch, struct ipc_msg *m)
{
    int err;

    switch (m->type) {
    case MP_CONN_OPEN:
        err = on_conn_open(m);
        break;
    case MP_CONN_TXN:
        err = on_conn_txn(m);
        break;
    case MP_CONN_CLOSE:
        if ((err = mp_decode_conn_close(m, NULL)) == 0 && oconn_close(m->id) == -ENOENT)
            msg_debug("close for connection %u which is gone", m->id);
        break;
    case MP_CONN_TRACE: {
        struct mp_conn_trace t;

        if ((err = mp_decode_conn_trace(m, &t)) == 0 && oconn_trace(m->id, t.flags) == -ENOENT)
            msg_debug("trace for connection %u which is gone", m->id);
        break;
    }
    default:
        err = -EPROTO;
    }
    if (err < 0)
        msg_warn("malformed or unexpected frame %s (type %u) from qmgr; reconnecting",
                 mp_type_name(m->type), m->type);
    return err < 0;
}

static void
on_qmgr_closed(struct ipc_chan *ch, int reason)
{
    W.ch = NULL;
    if (oconn_count() > 0 && !W.closed_for_good)
        msg_warn("qmgr channel closed; aborting %zu connections", oconn_count());
    oconn_abort_all();
    if (W.closed_for_good || worker_stopping()) {
        out_check_stopped();
        return;
    }
    W.retry_ms = RETRY_MIN_MS;
    chan_schedule_retry();
}

/* --- connecting ---------------------------------------------------------------------- */

static void
chan_hello(void)
{
    struct buf out = BUF_INIT;
    struct mp_qmgr_hello hello = { .kind = MP_PEER_SMTP_OUT,
                                   .pid = (uint32_t)getpid(),
                                   .max_connections = MAX_CONNECTIONS };

    report(&out, "MP_QMGR_HELLO", 0, mp_encode_qmgr_hello(&out, 0, &hello));
}

static int
chan_connect(void)
{
    char *path = worker_socket_path("qmgr");
    int err = ipc_chan_connect_path(worker_loop(), path, on_qmgr_msg, on_qmgr_closed, NULL, &W.ch);

    if (err == 0)
        ipc_chan_cork(W.ch); /* a transaction's results, DONE and IDLE: one write */
    if (err < 0) {
        W.ch = NULL;
        if (!W.warned)
            msg_info("qmgr not reachable at %s (%s); trying again", path, strerror(-err));
        W.warned = 1;
    } else {
        msg_info("connected to qmgr");
        W.warned = 0;
        chan_hello();
    }
    free(path);
    return err;
}

static void
on_retry(uv_timer_t *t)
{
    if (W.closed_for_good || worker_stopping())
        return;
    if (chan_connect() == 0)
        return;
    W.retry_ms = W.retry_ms * 2 > RETRY_MAX_MS ? RETRY_MAX_MS : W.retry_ms * 2;
    chan_schedule_retry();
}

static void
chan_schedule_retry(void)
{
    uv_timer_start(&W.retry, on_retry, W.retry_ms, 0);
}

void
out_chan_start(void)
{
    uv_timer_init(worker_loop(), &W.retry);
    W.retry_init = 1;
    W.retry_ms = RETRY_MIN_MS;
    if (chan_connect() < 0)
        chan_schedule_retry();
}

void
out_chan_close(void)
{
    W.closed_for_good = 1;
    if (W.retry_init) {
        uv_timer_stop(&W.retry);
        uv_close((uv_handle_t *)&W.retry, NULL);
        W.retry_init = 0;
    }
    if (W.ch)
        ipc_chan_close(W.ch);
}
