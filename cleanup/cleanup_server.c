/*
 * cleanup_server.c - smtpd's side of cleanup: connections, frames, transactions
 *
 * Accepts connections on the private/cleanup socket pmtad bound and passed
 * us (several smtpd processes, and several cleanup processes may share the
 * socket: accept is non-blocking and EAGAIN means another process won).
 * On each connection the frames of runtime/mailproto.h build transactions,
 * multiplexed by the frame id: BEGIN, RCPT*, DATA*, END, or ABORT.
 *
 *   - DATA accumulates in a buffer bounded by the source's max-message-size
 *     (and CLEANUP_MAX_MESSAGE); past it the transaction is answered
 *     552 5.3.4 at once, its bytes are dropped, and END only ends it.
 *   - END hands the transaction to cleanup_commit.c, which answers it.
 *   - ABORT, or the connection closing, drops transactions that have not
 *     ended: nothing of them was stored. Ended ones are committing; their
 *     answer is dropped if the connection is gone (smtpd then answered its
 *     client 4xx; a retry may duplicate, never lose, the message).
 *   - A malformed frame (bad field kinds or lengths, CR/LF in a string, an
 *     unknown type, a frame for a transaction that does not exist) is logged
 *     and closes that connection; committed messages are untouched.
 *
 * Owns: the listener, every connection (freed when its channel
 * is closed and its last transaction is done) and every transaction.
 *
 * SECURITY: this is where peer-derived bytes enter the worker. Frames are
 * decoded by runtime/mailproto.def's decoders: every string is length-checked
 * (MP_FIELD_MAX, at most what the queue stores) and refused if it holds CR or LF;
 * recipients are counted (CLEANUP_MAX_RCPT); message bytes are bounded before
 * they are buffered; ids are looked up, never trusted as indexes.
 */
#include "config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "cleanup.h"
#include "mailproto.h"
#include "msg.h"
#include "worker.h"
#include "xalloc.h"

#define MAX_CONNECTIONS 1024
#define CLOSE_POLL_MS   10
#define CLOSE_WAIT_MS   2000
#define RESERVE_MAX     ((uint64_t)1 << 20)

struct cleanup_conn {
    struct cleanup_conn *next; /* on the open list (while ch != NULL) */
    struct ipc_chan *ch;       /* NULL once the channel closed */
    struct cleanup_txn *txns;
    unsigned serial;
};

static struct {
    struct worker_listener *listener; /* the cleanup socket (worker runtime) */
    struct cleanup_conn *conns;       /* open connections */
    unsigned nconns, serial;
    uv_timer_t close_timer;
    int close_timer_open;
    uint64_t close_deadline;
    void (*closed_cb)(void);
} S;

/* --- transactions ---------------------------------------------------------------- */

static struct cleanup_txn *
txn_find(struct cleanup_conn *c, uint32_t id)
{
    for (struct cleanup_txn *t = c->txns; t; t = t->next)
        if (t->id == id)
            return t;
    return NULL;
}

static void
conn_maybe_free(struct cleanup_conn *c)
{
    if (c->ch == NULL && c->txns == NULL)
        free(c);
}

static void
txn_free(struct cleanup_txn *t)
{
    for (size_t i = 0; i < t->nrcpt; i++) {
        free(t->rcpts[i].address);
        free(t->rcpts[i].orcpt);
    }
    free(t->rcpts);
    buf_free(&t->data);
    free(t->source_name);
    free(t->client_ip);
    free(t->local_ip);
    free(t->helo);
    free(t->auth_user);
    free(t->tls_protocol);
    free(t->tls_cipher);
    free(t->sender);
    free(t->envid);
    free(t->submit_user);
    cleanup_conf_unref(t->conf);
    free(t);
}

void
cleanup_txn_done(struct cleanup_txn *t)
{
    struct cleanup_conn *c = t->conn;

    for (struct cleanup_txn **tp = &c->txns; *tp; tp = &(*tp)->next)
        if (*tp == t) {
            *tp = t->next;
            break;
        }
    txn_free(t);
    conn_maybe_free(c);
}

void
cleanup_txn_result(struct cleanup_txn *t, unsigned code, const char *enhanced, const char *text,
                   uint64_t msgid)
{
    struct buf out = BUF_INIT;
    struct mp_txn_result r = { .code = code, .enhanced = enhanced, .text = text, .msgid = msgid };
    int err;

    if (t->answered)
        return;
    t->answered = 1;
    if (code == 250)
        cleanup.accepted++;
    else
        cleanup.refused++;
    if (t->conn->ch == NULL)
        return;
    if ((err = mp_encode_txn_result(&out, t->id, &r)) < 0) {
        /* A text the protocol refuses: smtpd still needs an answer it can pass on. */
        msg_warn("transaction %u: result text refused (%s); answering without it", t->id,
                 strerror(-err));
        if (code == 250)
            r = (struct mp_txn_result){
                .code = 250, .enhanced = "2.0.0", .text = "Ok", .msgid = msgid
            };
        else
            r = (struct mp_txn_result){ .code = 451,
                                        .enhanced = "4.3.0",
                                        .text = "Internal error" };
        (void)mp_encode_txn_result(&out, t->id, &r); /* short constant fields: cannot fail */
    }
    if (ipc_chan_send(t->conn->ch, &out) < 0)
        msg_warn("cannot answer transaction %u: connection failing", t->id);
    buf_free(&out);
}

/* --- decoding helpers -------------------------------------------------------------- */

_Static_assert(MP_FIELD_MAX <= QSTORE_STR_MAX, "an envelope string the queue cannot store");

/* client_sockaddr - the client IP as a sockaddr for <source CIDR> matching; NULL if none */
static const struct sockaddr *
client_sockaddr(const char *ip, struct sockaddr_storage *ss)
{
    struct sockaddr_in *in4 = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;

    memset(ss, 0, sizeof(*ss));
    if (inet_pton(AF_INET, ip, &in4->sin_addr) == 1) {
        in4->sin_family = AF_INET;
        return (const struct sockaddr *)ss;
    }
    if (inet_pton(AF_INET6, ip, &in6->sin6_addr) == 1) {
        in6->sin6_family = AF_INET6;
        return (const struct sockaddr *)ss;
    }
    return NULL;
}

/* resolve_source - T's <source> settings: cfg_resolve_session, the layering smtpd used */
static void
resolve_source(struct cleanup_txn *t)
{
    struct sockaddr_storage ss;
    const struct sockaddr *sa = client_sockaddr(t->client_ip, &ss);

    if (cfg_resolve_session(t->conf->cfg, sa, t->source_name, t->auth_user, &t->src) == -ENOENT)
        msg_debug("source %s is not configured; using the address blocks only", t->source_name);
}

/* txn_max_size - the source's max-message-size, capped by CLEANUP_MAX_MESSAGE */
static size_t
txn_max_size(const struct cleanup_txn *t)
{
    const struct cfg_value *v = t->src.v[CFG_D_MAX_MESSAGE_SIZE];

    if (v == NULL || v->num < 0 || (uint64_t)v->num > CLEANUP_MAX_MESSAGE)
        return CLEANUP_MAX_MESSAGE;
    return (size_t)v->num;
}

/* --- frames ---------------------------------------------------------------------------- */

/* decode_begin - the BEGIN fields into T; -EPROTO when malformed */
static int
decode_begin(struct ipc_msg *m, struct cleanup_txn *t)
{
    struct mp_txn_begin b;

    if (mp_decode_txn_begin(m, &b) < 0)
        return -EPROTO;
    t->client_ip = xstrdup(b.client_ip);
    t->client_port = b.client_port;
    t->local_ip = xstrdup(b.local_ip);
    t->local_port = b.local_port;
    t->helo = xstrdup(b.helo);
    t->source_name = xstrdup(b.listener_source);
    t->auth_user = xstrdup(b.auth_user);
    t->tls_protocol = xstrdup(b.tls_protocol);
    t->tls_cipher = xstrdup(b.tls_cipher);
    t->sender = xstrdup(b.sender);
    t->mail_flags = b.mail_flags;
    t->envid = xstrdup(b.envid);
    t->declared_size = b.declared_size;
    t->submit_uid = b.submit_uid;
    t->submit_user = xstrdup(b.submit_user);
    return 0;
}

static int
on_begin(struct cleanup_conn *c, struct ipc_msg *m)
{
    struct cleanup_txn *t;

    if (txn_find(c, m->id) != NULL) {
        msg_warn("connection %u: BEGIN for transaction %u that is open", c->serial, m->id);
        return -EPROTO;
    }
    t = xcalloc(1, sizeof(*t));
    t->conn = c;
    t->id = m->id;
    t->started_ns = uv_hrtime();
    t->conf = cleanup.conf;
    cleanup_conf_ref(t->conf);
    buf_init(&t->data, 0);
    t->next = c->txns;
    c->txns = t;
    if (decode_begin(m, t) < 0)
        return -EPROTO; /* freed with the connection */
    resolve_source(t);
    if (t->declared_size > txn_max_size(t))
        cleanup_txn_result(t, 552, "5.3.4", "Message size exceeds fixed limit", 0);
    else if (t->declared_size > 0) /* SIZE= is a client's claim: reserve modestly */
        buf_reserve(&t->data,
                    (size_t)(t->declared_size < RESERVE_MAX ? t->declared_size : RESERVE_MAX));
    return 0;
}

/* open_txn - the transaction M names, if it exists and has not ended */
static struct cleanup_txn *
open_txn(struct cleanup_conn *c, struct ipc_msg *m)
{
    struct cleanup_txn *t = txn_find(c, m->id);

    if (t == NULL || t->ended) {
        msg_warn("connection %u: frame type %u for %s transaction %u", c->serial, m->type,
                 t ? "ended" : "unknown", m->id);
        return NULL;
    }
    return t;
}

static int
on_rcpt(struct cleanup_conn *c, struct ipc_msg *m)
{
    struct cleanup_txn *t = open_txn(c, m);
    struct mp_txn_rcpt r;

    if (t == NULL || mp_decode_txn_rcpt(m, &r) < 0)
        return -EPROTO;
    if (t->nrcpt >= CLEANUP_MAX_RCPT) {
        cleanup_txn_result(t, 452, "4.5.3", "Too many recipients", 0);
        return 0;
    }
    if (t->nrcpt == t->rcpt_cap) {
        t->rcpt_cap = t->rcpt_cap ? 2 * t->rcpt_cap : 4;
        t->rcpts = xreallocarray(t->rcpts, t->rcpt_cap, sizeof(*t->rcpts));
    }
    t->rcpts[t->nrcpt++] = (struct cleanup_rcpt){ .address = xstrdup(r.address),
                                                  .orcpt = xstrdup(r.orcpt),
                                                  .notify = r.notify };
    return 0;
}

static int
on_data(struct cleanup_conn *c, struct ipc_msg *m)
{
    struct cleanup_txn *t = open_txn(c, m);
    struct mp_txn_data d;

    if (t == NULL || mp_decode_txn_data(m, &d) < 0)
        return -EPROTO;
    t->received += d.chunk_len;
    if (t->answered)
        return 0; /* refused already: swallow the rest */
    if (t->received > txn_max_size(t)) {
        buf_free(&t->data);
        cleanup_txn_result(t, 552, "5.3.4", "Message size exceeds fixed limit", 0);
        return 0;
    }
    buf_append(&t->data, d.chunk, d.chunk_len);
    return 0;
}

static int
on_end(struct cleanup_conn *c, struct ipc_msg *m)
{
    struct cleanup_txn *t = open_txn(c, m);
    struct mp_txn_end e;

    if (t == NULL || mp_decode_txn_end(m, &e) < 0)
        return -EPROTO;
    t->ended = 1;
    if (!t->answered && e.total_bytes != t->received) {
        msg_warn("connection %u: transaction %u announced %llu bytes but sent %llu", c->serial,
                 t->id, (unsigned long long)e.total_bytes, (unsigned long long)t->received);
        cleanup_txn_result(t, 451, "4.3.0", "Internal error: message length mismatch", 0);
    } else if (!t->answered && t->nrcpt == 0) {
        cleanup_txn_result(t, 554, "5.5.1", "No valid recipients", 0);
    }
    if (t->answered)
        cleanup_txn_done(t);
    else
        cleanup_commit_txn(t);
    return 0;
}

static int
on_abort(struct cleanup_conn *c, struct ipc_msg *m)
{
    struct cleanup_txn *t = txn_find(c, m->id);

    if (mp_decode_txn_abort(m, NULL) < 0)
        return -EPROTO;
    if (t != NULL && !t->ended) /* an ended one is committing: let it finish */
        cleanup_txn_done(t);
    return 0;
}

/* on_frame - one frame from smtpd; nonzero closes the connection */
static int
on_frame(struct ipc_chan *ch, struct ipc_msg *m)
{
    struct cleanup_conn *c = ch->data;
    int rc;

    switch (m->type) {
    case MP_TXN_BEGIN:
        rc = on_begin(c, m);
        break;
    case MP_TXN_RCPT:
        rc = on_rcpt(c, m);
        break;
    case MP_TXN_DATA:
        rc = on_data(c, m);
        break;
    case MP_TXN_END:
        rc = on_end(c, m);
        break;
    case MP_TXN_ABORT:
        rc = on_abort(c, m);
        break;
    default:
        rc = -EPROTO;
        break;
    }
    if (rc < 0)
        msg_warn("connection %u: malformed frame %s (type %u, transaction %u); closing it",
                 c->serial, mp_type_name(m->type), m->type, m->id);
    return rc < 0;
}

/* --- connections ----------------------------------------------------------------------- */

/* drop_unfinished - forget C's transactions that have not ended */
static void
drop_unfinished(struct cleanup_conn *c)
{
    struct cleanup_txn **tp = &c->txns;

    while (*tp) {
        struct cleanup_txn *t = *tp;

        if (t->ended) {
            tp = &t->next;
            continue;
        }
        *tp = t->next;
        txn_free(t);
    }
}

static void
on_conn_closed(struct ipc_chan *ch, int reason)
{
    struct cleanup_conn *c = ch->data;

    for (struct cleanup_conn **cp = &S.conns; *cp; cp = &(*cp)->next)
        if (*cp == c) {
            *cp = c->next;
            S.nconns--;
            break;
        }
    c->ch = NULL;
    drop_unfinished(c);
    msg_debug("connection %u closed (%s)", c->serial, reason ? uv_strerror(reason) : "eof");
    conn_maybe_free(c);
    cleanup_check_finished();
}

static void
accept_one(int fd)
{
    struct cleanup_conn *c;
    int err;

    if (S.nconns >= MAX_CONNECTIONS) {
        msg_warn("too many smtpd connections (%u); refusing one", S.nconns);
        close(fd);
        return;
    }
    c = xcalloc(1, sizeof(*c));
    c->serial = ++S.serial;
    if ((err = ipc_chan_open_fd(worker_loop(), fd, on_frame, on_conn_closed, c, &c->ch)) < 0) {
        msg_warn("cannot serve a connection: %s", uv_strerror(err));
        free(c);
        return;
    }
    ipc_chan_cork(c->ch); /* one write for the results of a group commit */
    c->next = S.conns;
    S.conns = c;
    S.nconns++;
    msg_debug("connection %u from smtpd", c->serial);
    cleanup_space_hello(c->ch);
}

/* cleanup_server_broadcast - see cleanup.h */
void
cleanup_server_broadcast(const struct buf *frames)
{
    for (struct cleanup_conn *c = S.conns; c; c = c->next) {
        struct buf copy = BUF_INIT;

        if (c->ch == NULL)
            continue;
        buf_append(&copy, frames->data, frames->len);
        if (ipc_chan_send(c->ch, &copy) < 0)
            msg_debug("connection %u: cannot send it the queue's space", c->serial);
        buf_free(&copy);
    }
}

void
cleanup_server_start(void)
{
    int err = worker_listen("cleanup", accept_one, &S.listener);

    if (err < 0)
        msg_fatal("cannot serve the cleanup socket: %s",
                  err == -ENOENT ? "pmtad gave us none" : uv_strerror(err));
    uv_timer_init(worker_loop(), &S.close_timer);
    S.close_timer_open = 1;
}

void
cleanup_server_stop_accepting(void)
{
    worker_listen_stop(S.listener);
    S.listener = NULL;
}

int
cleanup_server_idle(void)
{
    return S.conns == NULL;
}

void
cleanup_server_drop_unfinished(void)
{
    for (struct cleanup_conn *c = S.conns; c; c = c->next)
        drop_unfinished(c);
}

/* writes_pending - does any open connection still have answers to write? */
static int
writes_pending(void)
{
    for (struct cleanup_conn *c = S.conns; c; c = c->next)
        if (c->ch && ipc_chan_busy(c->ch))
            return 1;
    return 0;
}

/* close_now - close every connection and the timer; then the callback */
static void
close_now(void)
{
    void (*cb)(void) = S.closed_cb;

    while (S.conns)
        ipc_chan_close(S.conns->ch); /* on_conn_closed unlinks it */
    if (S.close_timer_open) {
        S.close_timer_open = 0;
        uv_close((uv_handle_t *)&S.close_timer, NULL);
    }
    S.closed_cb = NULL;
    if (cb)
        cb();
}

static void
on_close_poll(uv_timer_t *tm)
{
    if (writes_pending() && uv_now(worker_loop()) < S.close_deadline)
        return;
    uv_timer_stop(&S.close_timer);
    close_now();
}

void
cleanup_server_close_all(void (*cb)(void))
{
    cleanup_server_stop_accepting();
    S.closed_cb = cb;
    if (!writes_pending()) {
        close_now();
        return;
    }
    S.close_deadline = uv_now(worker_loop()) + CLOSE_WAIT_MS;
    uv_timer_start(&S.close_timer, on_close_poll, CLOSE_POLL_MS, CLOSE_POLL_MS);
}
