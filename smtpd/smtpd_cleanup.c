/*
 * smtpd_cleanup.c - smtpd's side of the smtpd -> cleanup protocol (mailproto.h)
 *
 * Each smtpd process keeps one connection to RUNDIR/private/cleanup and
 * multiplexes every transaction on it by frame id. Sessions build their
 * frames (BEGIN, RCPT..., DATA..., END or ABORT) and hand them over in as few
 * sends as they can; this module sends them, remembers which session waits
 * for which id (from DATA on, whether or not a frame went yet), and routes
 * MP_TXN_RESULT back. It also keeps what cleanup last said about the queue's
 * space (MP_QUEUE_SPACE), for the SIZE limit and MAIL.
 *
 * If the connection drops, every transaction on it is lost to cleanup: each
 * waiting session is told (it answers 451 4.3.0, never 250), and we reconnect
 * with back-off (100 ms doubling to 5 s). A frame for an unknown id (its
 * session has gone) is ignored; a malformed frame closes the connection.
 *
 * Owns: the channel, the reconnect timer, the id -> session table.
 *
 * SECURITY: cleanup is trusted but its frames are still length-checked by
 * ipc.c and field by field here.
 */
#include "config.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "ipc.h"
#include "mailproto.h"
#include "msg.h"
#include "worker.h"
#include "xalloc.h"
#include "smtpd.h"

#define TABLE_SIZE     4096u /* power of two */
#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 5000

struct waiting {
    uint32_t id;
    struct smtpd_session *session;
    struct waiting *next;
};

static struct {
    uv_loop_t *loop;
    struct ipc_chan *chan;
    uv_timer_t retry;
    uint64_t backoff_ms;
    uint32_t last_id;
    unsigned pending;
    bool closing;
    bool warned;
    bool space_known; /* MP_QUEUE_SPACE heard on this connection */
    uint64_t capacity, room;
    struct waiting *table[TABLE_SIZE];
} C;

static void connect_now(void);

static struct waiting **
slot(uint32_t id)
{
    return &C.table[id & (TABLE_SIZE - 1)];
}

/* take - remove ID from the table; the session that waited, or NULL */
static struct smtpd_session *
take(uint32_t id)
{
    for (struct waiting **w = slot(id); *w; w = &(*w)->next) {
        if ((*w)->id == id) {
            struct waiting *dead = *w;
            struct smtpd_session *s = dead->session;

            *w = dead->next;
            free(dead);
            C.pending--;
            return s;
        }
    }
    return NULL;
}

/* fail_all - the connection is gone: tell every waiting session */
static void
fail_all(void)
{
    for (unsigned i = 0; i < TABLE_SIZE; i++) {
        while (C.table[i]) {
            struct waiting *w = C.table[i];

            C.table[i] = w->next;
            C.pending--;
            smtpd_session_txn_lost(w->session, w->id);
            free(w);
        }
    }
}

/* on_space - MP_QUEUE_SPACE: what the queue can take now */
static int
on_space(struct ipc_msg *m)
{
    struct mp_queue_space q;

    if (m->id != 0 || mp_decode_queue_space(m, &q) < 0) {
        msg_warn("malformed queue space frame from cleanup; reconnecting");
        return -1;
    }
    if (C.space_known && (C.room == 0) != (q.room == 0))
        msg_info("cleanup says the queue %s",
                 q.room ? "has room again" : "is full: MAIL gets 452 4.3.1");
    C.space_known = true;
    C.capacity = q.capacity;
    C.room = q.room;
    return 0;
}

/* on_msg - MP_TXN_RESULT, or MP_QUEUE_SPACE */
static int
on_msg(struct ipc_chan *ch, struct ipc_msg *m)
{
    struct mp_txn_result r;
    struct smtpd_session *s;

    (void)ch;
    if (m->type == MP_QUEUE_SPACE)
        return on_space(m);
    if (m->type != MP_TXN_RESULT) {
        msg_warn("cleanup sent unexpected frame %s (type %u); reconnecting", mp_type_name(m->type),
                 m->type);
        return -1;
    }
    if (mp_decode_txn_result(m, &r) < 0 || r.code < 200 || r.code > 599) {
        msg_warn("malformed result from cleanup; reconnecting");
        return -1;
    }
    if ((s = take(m->id)) != NULL)
        smtpd_session_txn_result(s, m->id, (int)r.code, r.enhanced, r.text, r.msgid);
    else
        msg_debug("cleanup result for transaction %u nobody waits for", m->id);
    return 0;
}

static void
schedule_retry(void)
{
    if (C.closing || uv_is_active((uv_handle_t *)&C.retry))
        return;
    C.backoff_ms = C.backoff_ms ? C.backoff_ms * 2 : BACKOFF_MIN_MS;
    if (C.backoff_ms > BACKOFF_MAX_MS)
        C.backoff_ms = BACKOFF_MAX_MS;
    uv_timer_start(&C.retry, (uv_timer_cb)connect_now, C.backoff_ms, 0);
}

static void
on_close(struct ipc_chan *ch, int reason)
{
    (void)ch;
    C.chan = NULL;
    C.space_known = false; /* the next cleanup tells us again */
    if (!C.closing)
        msg_warn("connection to cleanup lost (%s); %u transaction(s) fail with 451",
                 reason ? uv_strerror(reason) : "closed", C.pending);
    fail_all();
    schedule_retry();
    /* Sessions paused on the backlog must see that it is gone. */
    smtpd_session_resume_paused();
}

/* connect_now - one connection attempt (a local socket: connect() does not block long) */
static void
connect_now(void)
{
    char *path;
    int err;

    if (C.chan || C.closing)
        return;
    path = worker_socket_path("cleanup");
    err = ipc_chan_connect_path(C.loop, path, on_msg, on_close, NULL, &C.chan);
    if (err == 0) {
        ipc_chan_cork(C.chan); /* the transactions ended in one read: one write */
        if (C.warned)
            msg_info("connected to cleanup at %s", path);
        C.warned = false;
        C.backoff_ms = 0;
    } else {
        C.chan = NULL;
        if (!C.warned)
            msg_warn("cannot connect to cleanup at %s: %s; retrying", path, strerror(-err));
        C.warned = true;
        schedule_retry();
    }
    free(path);
}

/* smtpd_cleanup_init - see smtpd.h */
void
smtpd_cleanup_init(uv_loop_t *loop)
{
    C.loop = loop;
    uv_timer_init(loop, &C.retry);
    connect_now();
}

bool
smtpd_cleanup_connected(void)
{
    if (C.chan == NULL && !C.closing && !uv_is_active((uv_handle_t *)&C.retry))
        connect_now();
    return C.chan != NULL && !C.chan->closing;
}

uint32_t
smtpd_cleanup_next_id(void)
{
    if (++C.last_id == 0) /* 0 means "no id" in frames */
        C.last_id = 1;
    return C.last_id;
}

/* smtpd_cleanup_open - see smtpd.h */
int
smtpd_cleanup_open(uint32_t id, struct smtpd_session *s)
{
    struct waiting *w;

    if (!smtpd_cleanup_connected())
        return -EPIPE;
    w = xcalloc(1, sizeof(*w));
    w->id = id;
    w->session = s;
    w->next = *slot(id);
    *slot(id) = w;
    C.pending++;
    return 0;
}

/* smtpd_cleanup_send - see smtpd.h */
int
smtpd_cleanup_send(struct buf *frames)
{
    if (C.chan == NULL) {
        buf_reset(frames);
        return -EPIPE;
    }
    return ipc_chan_send(C.chan, frames);
}

/* smtpd_cleanup_forget - see smtpd.h */
void
smtpd_cleanup_forget(uint32_t id)
{
    (void)take(id);
}

/* smtpd_cleanup_space - see smtpd.h */
bool
smtpd_cleanup_space(uint64_t *capacity, uint64_t *room)
{
    if (!C.space_known)
        return false;
    *capacity = C.capacity;
    *room = C.room;
    return true;
}

size_t
smtpd_cleanup_backlog(void)
{
    if (C.chan == NULL)
        return 0;
    return ipc_chan_backlog(C.chan);
}

/* smtpd_cleanup_close - at the end of the drain */
void
smtpd_cleanup_close(void)
{
    C.closing = true;
    uv_timer_stop(&C.retry);
    uv_close((uv_handle_t *)&C.retry, NULL);
    if (C.chan)
        ipc_chan_close(C.chan);
    fail_all();
}
