/*
 * smtpd_session.c - one inbound SMTP connection: engine + socket + TLS + transaction
 *
 * A session couples the I/O-free protocol engine (smtpd_proto.h) to a libuv
 * stream (TCP, or a Unix pipe for the pickup socket):
 *   bytes read  -> (TLS decrypt) -> smtpd_proto_input()
 *   engine out  -> (TLS encrypt) -> uv_write()
 *   engine events -> <source> policy decisions and frames for cleanup
 * The configuration is pinned for the session's life (worker_config_hold).
 *
 * Transaction: MAIL assigns an id and encodes MP_TXN_BEGIN; each accepted
 * RCPT adds MP_TXN_RCPT; at DATA/BDAT the transaction is registered with
 * cleanup's connection, content is framed as MP_TXN_DATA (at most
 * MP_CHUNK_MAX per frame), then MP_TXN_END. Frames are sent once a chunk's
 * worth has gathered, and at END: a small message goes out in one write
 * (one system call here, one wake-up in cleanup). The 250 is only cleanup's MP_TXN_RESULT; if
 * the cleanup connection dies first the client gets 451 4.3.0. A result
 * that arrives before END (an early refusal) stops the DATA frames; END (or
 * ABORT) still follows, because cleanup keeps the transaction until then,
 * and the client gets that result when its DATA ends.
 *
 * Queue space: MAIL gets 452 4.3.1 while cleanup says the queue is full or
 * has no room for the SIZE= declared, and SIZE (EHLO, and the 552 5.3.4
 * limit of SIZE= and of the content) is max-message-size within the largest
 * message the queue could ever hold (smtpd_cleanup_space).
 *
 * Timeouts: smtp-command-timeout runs from the last reply (a client that
 * drips a command byte by byte still times out); smtp-data-timeout runs from
 * the last byte of content, and bounds the wait for cleanup's answer.
 * Expiry: 421 4.4.2 (engine) and close.
 *
 * Backpressure: reading stops while the engine holds too much pipelined
 * input, while our output to the client is over SESSION_WRITE_HIGH, or while
 * the cleanup connection's write queue is over SMTPD_CLEANUP_BACKLOG_MAX.
 *
 * Owns: struct smtpd_session, its stream and timer handles, the engine, the
 * TLS state, the transaction's frame buffers. A session is freed when both
 * handles are closed and no AUTH check is in flight (refs).
 *
 * SECURITY: this is the network boundary. Peer bytes go to the engine or
 * OpenSSL only; peer text is logged through msg_printable(); the relay
 * decision (authenticated, always-allow-relaying, relay-domain) is here.
 */
#include "config.h"

#include <arpa/inet.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "ipc.h"
#include "mailproto.h"
#include "msg.h"
#include "qstore.h"
#include "worker.h"
#include "xalloc.h"
#include "smtpd.h"
#include "smtpd_proto.h"

#define SESSION_WRITE_HIGH     (256 * 1024)
#define SESSION_CLOSE_GRACE_MS 5000
#define READ_BUFFER_SIZE       (64 * 1024)
#define LOG_TEXT_MAX           300

enum tls_state { TLS_OFF, TLS_HANDSHAKE, TLS_ON };
enum txn_state {
    TXN_NONE,      /* no MAIL yet */
    TXN_BUILDING,  /* MAIL accepted: frames kept locally */
    TXN_STREAMING, /* cleanup knows the id; content flows */
    TXN_WAITING    /* END sent; waiting for MP_TXN_RESULT */
};

struct smtpd_session {
    union smtpd_stream io;
    uv_timer_t timer;
    uv_shutdown_t shutdown_req;
    unsigned refs; /* open handles + AUTH checks in flight */
    struct smtpd_session *prev, *next;
    uint64_t serial;

    const struct cfg *cfg; /* pinned */
    struct smtpd_policy pol;
    struct smtpd_origin origin;
    struct smtpd_proto *proto;
    struct sockaddr_storage peer;
    bool have_peer;
    char client_ip[INET6_ADDRSTRLEN];
    unsigned client_port;
    char local_ip[INET6_ADDRSTRLEN];
    unsigned local_port;
    char helo[SMTPD_DOMAIN_MAX + 1];
    char auth_try[64]; /* printable user name of the AUTH in flight */
    bool authenticated;
    struct anvil_ticket ticket;       /* our place in the connection table */
    struct smtpd_submitter submitter; /* pickup: the local user */
    char submitter_text[96];          /* "uid 1000 (alice)" for logs */

    struct smtpd_tls *tls;
    enum tls_state tls_state;
    bool starttls_requested;

    enum txn_state txn;
    uint32_t txn_id;
    bool txn_lost;  /* cleanup connection died: answer 451 */
    bool txn_early; /* cleanup refused before END */
    int early_code;
    char early_enhanced[16];
    char early_text[SMTPD_TEXT_MAX + 1];
    unsigned txn_rcpts;
    bool txn_told;     /* some of its frames went to cleanup */
    struct buf frames; /* frames not yet sent (see stream_pending) */
    struct buf chunk;  /* content not yet framed */

    bool reading;
    bool peer_eof;  /* the client half-closed; finish what it sent */
    bool quit_seen; /* the client said QUIT: nothing more will come */
    bool closing;
    bool handles_closing;
    bool paused_backlog;
    bool drain_after_result;
    enum smtpd_state last_state;
    uint64_t messages;
};

struct session_write {
    uv_write_t req;
    struct smtpd_session *s;
    size_t len;
    char data[];
};

static struct {
    struct smtpd_session *head;
    unsigned count;
    uint64_t serial;
    bool draining;
    void (*idle_cb)(void);
    uv_check_t backlog_check;
    bool check_ready;
    unsigned paused;
} S;

static char read_buffer[READ_BUFFER_SIZE];

static void after_engine(struct smtpd_session *s);
static void begin_close(struct smtpd_session *s);
static void update_reading(struct smtpd_session *s);
static void tls_pump(struct smtpd_session *s);
static void on_timer(uv_timer_t *t);
static void close_handles(struct smtpd_session *s);

/* --- logging -------------------------------------------------------------------- */

static const char *
printable(char *out, size_t size, const char *text)
{
    return msg_printable(out, size, text, strlen(text));
}

static const char *
peer_name(const struct smtpd_session *s)
{
    return s->origin.pickup ? "pickup" : s->client_ip;
}

/* log_command - one line per client command when log-commands is on */
static void
log_command(const struct smtpd_session *s, const char *what, const char *arg)
{
    char text[LOG_TEXT_MAX];

    if (s->pol.log_commands)
        msg_info("%s[%" PRIu64 "]: %s%s%s", peer_name(s), s->serial, what, arg ? " " : "",
                 printable(text, sizeof(text), arg ? arg : ""));
}

/* log_replies - the engine's replies, line by line, when log-commands is on */
static void
log_replies(const struct smtpd_session *s, const struct buf *out)
{
    char text[LOG_TEXT_MAX];
    const char *p = out->data, *end = out->data + out->len;

    while (s->pol.log_commands && p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t n = nl ? (size_t)(nl - p) : (size_t)(end - p);

        if (n && p[n - 1] == '\r')
            n--;
        msg_info("%s[%" PRIu64 "]: > %s", peer_name(s), s->serial,
                 msg_printable(text, sizeof(text), p, n));
        p = nl ? nl + 1 : end;
    }
}

/* --- output ----------------------------------------------------------------------- */

static void
on_written(uv_write_t *req, int status)
{
    struct session_write *w = (struct session_write *)req;
    struct smtpd_session *s = w->s;

    free(w);
    if (status < 0 && !s->closing) {
        if (s->proto)
            smtpd_proto_disconnected(s->proto);
        begin_close(s);
        return;
    }
    update_reading(s);
}

/*
 * send_raw - N bytes to the peer: written now if the socket takes them (no
 * request, no completion callback, no epoll_ctl when libuv stops polling for
 * POLLOUT), the rest copied and queued. uv_try_write() refuses while earlier
 * bytes are queued, so the order holds.
 */
static void
send_raw(struct smtpd_session *s, const char *p, size_t n)
{
    struct session_write *w;
    uv_buf_t b;
    int done;

    if (n == 0 || s->handles_closing)
        return;
    b = uv_buf_init((char *)p, (unsigned)n);
    done = uv_try_write(&s->io.stream, &b, 1);
    if (done > 0) { /* an error is left to uv_write() to report */
        p += done;
        n -= (size_t)done;
    }
    if (n == 0)
        return;
    w = xmalloc(sizeof(*w) + n);
    w->s = s;
    w->len = n;
    memcpy(w->data, p, n);
    b = uv_buf_init(w->data, (unsigned)n);
    if (uv_write(&w->req, &s->io.stream, &b, 1, on_written) != 0)
        free(w);
}

/* send_tls_output - whatever OpenSSL produced goes to the socket */
static void
send_tls_output(struct smtpd_session *s)
{
    struct buf out = BUF_INIT;

    smtpd_tls_take_output(s->tls, &out);
    send_raw(s, out.data, out.len);
    buf_free(&out);
}

/* flush_output - the engine's replies to the client */
static void
flush_output(struct smtpd_session *s)
{
    struct buf *out = smtpd_proto_output(s->proto);

    if (out->len == 0)
        return;
    log_replies(s, out);
    if (s->tls_state == TLS_ON) {
        if (smtpd_tls_write(s->tls, out->data, out->len) != 0)
            msg_warn("%s: TLS write failed: %s", peer_name(s), smtpd_tls_error());
        send_tls_output(s);
    } else {
        send_raw(s, out->data, out->len);
    }
    buf_reset(out);
}

/* --- timers ------------------------------------------------------------------------- */

/* timeout_ms - the timer the session's state calls for; stress mode caps the
   client's turn, never the wait for cleanup (its commit may still come) */
static uint64_t
timeout_ms(const struct smtpd_session *s)
{
    enum smtpd_state st = smtpd_proto_state(s->proto);

    if (s->txn == TXN_WAITING)
        return s->pol.data_timeout_ms;
    if (st == SMTPD_STATE_DATA || st == SMTPD_STATE_BDAT)
        return smtpd_admit_timeout(s->pol.data_timeout_ms);
    return smtpd_admit_timeout(s->pol.command_timeout_ms);
}

static void
arm_timer(struct smtpd_session *s)
{
    uint64_t ms = timeout_ms(s);

    if (s->closing)
        return;
    if (ms == 0)
        uv_timer_stop(&s->timer);
    else
        uv_timer_start(&s->timer, on_timer, ms, 0);
}

/* --- the transaction ------------------------------------------------------------------ */

static void
txn_reset(struct smtpd_session *s)
{
    s->txn = TXN_NONE;
    s->txn_id = 0;
    s->txn_lost = false;
    s->txn_early = false;
    s->txn_rcpts = 0;
    s->txn_told = false;
    buf_reset(&s->frames);
    buf_reset(&s->chunk);
}

/* encoded - the outcome of encoding one of the transaction's frames; a frame
   the protocol refuses (a field past its cap) costs the transaction a 451 */
static void
encoded(struct smtpd_session *s, const char *what, int err)
{
    if (err == 0 || s->txn_lost)
        return;
    msg_warn("%s[%" PRIu64 "]: cannot pass the %s to cleanup: %s", peer_name(s), s->serial, what,
             strerror(-err));
    s->txn_lost = true;
}

/* encode_begin - MP_TXN_BEGIN for SENDER */
static void
encode_begin(struct smtpd_session *s, const char *sender, const struct smtpd_mail_params *p)
{
    bool tls = s->tls_state == TLS_ON;
    struct mp_txn_begin b = {
        .client_ip = s->client_ip,
        .client_port = s->client_port,
        .local_ip = s->local_ip,
        .local_port = s->local_port,
        .helo = s->helo,
        .listener_source = s->origin.listener_source,
        .auth_user = smtpd_proto_auth_user(s->proto),
        .tls_protocol = tls ? smtpd_tls_protocol(s->tls) : "",
        .tls_cipher = tls ? smtpd_tls_cipher(s->tls) : "",
        .sender = sender,
        .envid = p->envid,
        .declared_size = p->size_given ? p->size : 0,
        .submit_uid = s->submitter.known ? s->submitter.uid : MP_NO_UID,
        .submit_user = s->submitter.user,
    };

    b.mail_flags |= p->body == SMTPD_BODY_8BITMIME ? MP_MAIL_8BITMIME : 0;
    b.mail_flags |= p->smtputf8 ? MP_MAIL_SMTPUTF8 : 0;
    b.mail_flags |= p->ret == SMTPD_RET_FULL ? MP_MAIL_RET_FULL : 0;
    b.mail_flags |= p->ret == SMTPD_RET_HDRS ? MP_MAIL_RET_HDRS : 0;
    b.mail_flags |= s->submitter.known && !s->submitter.trusted ? MP_MAIL_LOCAL_UNTRUSTED : 0;
    encoded(s, "envelope", mp_encode_txn_begin(&s->frames, s->txn_id, &b));
}

/* encode_rcpt - MP_TXN_RCPT; ORCPT travels as "type;address" */
static void
encode_rcpt(struct smtpd_session *s, const char *rcpt, const struct smtpd_rcpt_params *p)
{
    char *orcpt = *p->orcpt ? xasprintf("%s;%s", p->orcpt_type, p->orcpt) : NULL;
    struct mp_txn_rcpt r = { .address = rcpt, .orcpt = orcpt, .notify = p->notify };

    encoded(s, "recipient", mp_encode_txn_rcpt(&s->frames, s->txn_id, &r));
    free(orcpt);
}

/* encode_end - MP_TXN_END after SIZE bytes of content */
static void
encode_end(struct smtpd_session *s, uint64_t size)
{
    struct mp_txn_end e = { .total_bytes = size };

    encoded(s, "end of data", mp_encode_txn_end(&s->frames, s->txn_id, &e));
}

/* send_frames - frames of a streaming transaction; a dead connection is noted */
static void
send_frames(struct smtpd_session *s)
{
    if (s->frames.len == 0)
        return;
    s->txn_told = true;
    if (smtpd_cleanup_send(&s->frames) != 0) {
        buf_reset(&s->frames);
        s->txn_lost = true;
    }
}

/* frame_chunk - turn the pending content into one MP_TXN_DATA frame */
static void
frame_chunk(struct smtpd_session *s)
{
    struct mp_txn_data d = { .chunk = (const uint8_t *)s->chunk.data, .chunk_len = s->chunk.len };

    if (s->chunk.len == 0)
        return;
    encoded(s, "content", mp_encode_txn_data(&s->frames, s->txn_id, &d));
    buf_reset(&s->chunk);
}

/*
 * stream_pending - send the frames gathered so far once they fill a chunk.
 * Smaller amounts wait for more content or for END: a typical message then
 * reaches cleanup in one write (BEGIN, RCPTs, DATA, END) instead of one per
 * client read, and cleanup wakes once for it. Nothing is lost by waiting:
 * cleanup commits only at END, and the buffer is bounded by one chunk plus
 * the envelope.
 */
static void
stream_pending(struct smtpd_session *s)
{
    if (s->txn != TXN_STREAMING || s->txn_lost || s->txn_early)
        return;
    if (s->frames.len >= MP_CHUNK_MAX)
        send_frames(s);
}

/* --- engine events --------------------------------------------------------------------- */

static void
ev_helo(void *ctx, const char *name, bool esmtp)
{
    struct smtpd_session *s = ctx;

    snprintf(s->helo, sizeof(s->helo), "%s", name);
    log_command(s, esmtp ? "EHLO" : "HELO", name);
}

/*
 * message_size_limit - the session's max-message-size, within the largest
 * message the queue could ever hold (cleanup's MP_QUEUE_SPACE; until cleanup
 * has said, queue-map-size): what EHLO advertises as SIZE, and what MAIL's
 * SIZE= may not exceed (552 5.3.4)
 */
static uint64_t
message_size_limit(const struct smtpd_session *s)
{
    uint64_t capacity, room, max = s->pol.max_message_size;
    const struct cfg_value *map = cfg_global(s->cfg, CFG_D_QUEUE_MAP_SIZE);

    if (!smtpd_cleanup_space(&capacity, &room)) /* not heard yet: the map at most */
        capacity = map && map->num > 0 ? (uint64_t)map->num : 0;
    if (capacity == 0)
        return max;
    return max == 0 || capacity < max ? capacity : max;
}

/* queue_cannot_take - the queue is full, or has no room for the SIZE= the client declared */
static bool
queue_cannot_take(const struct smtpd_mail_params *p)
{
    uint64_t capacity, room;

    return smtpd_cleanup_space(&capacity, &room) &&
           (room == 0 || (p->size_given && p->size > room));
}

static enum smtpd_decision
ev_mail(void *ctx, const char *sender, const struct smtpd_mail_params *p,
        struct smtpd_proto_verdict *v)
{
    struct smtpd_session *s = ctx;
    char own[SMTPD_ADDR_MAX + 1], was[LOG_TEXT_MAX];
    const char *use = smtpd_submit_sender(s->cfg, &s->submitter, sender, own, sizeof(own));

    log_command(s, "MAIL FROM", sender);
    if (queue_cannot_take(p)) {
        *v = (struct smtpd_proto_verdict){ 452, "4.3.1", "Insufficient system storage" };
        return SMTPD_REJECT;
    }
    if (use != sender) {
        msg_info("%s[%" PRIu64 "]: %s is not in trusted-submit-users: sender <%s> replaced by "
                 "<%s>",
                 peer_name(s), s->serial, s->submitter_text, printable(was, sizeof(was), sender),
                 use);
        *v = (struct smtpd_proto_verdict){ 250, "2.1.0",
                                           "Sender set to your own address (not a trusted "
                                           "submitter)" };
    }
    txn_reset(s);
    s->txn = TXN_BUILDING;
    s->txn_id = smtpd_cleanup_next_id();
    encode_begin(s, use, p);
    return SMTPD_ACCEPT;
}

/* may_relay - authenticated, a relaying source, or a relay-domain recipient */
static bool
may_relay(const struct smtpd_session *s, const char *rcpt)
{
    const char *at = strrchr(rcpt, '@');

    if (s->authenticated || s->pol.always_allow_relaying)
        return true;
    return at != NULL && smtpd_policy_relay_domain(s->cfg, at + 1);
}

static enum smtpd_decision
ev_rcpt(void *ctx, const char *rcpt, const struct smtpd_rcpt_params *p,
        struct smtpd_proto_verdict *v)
{
    struct smtpd_session *s = ctx;

    (void)v;
    log_command(s, "RCPT TO", rcpt);
    if (!may_relay(s, rcpt))
        return SMTPD_REJECT; /* engine default: 550 5.7.1 Relaying denied */
    encode_rcpt(s, rcpt, p);
    s->txn_rcpts++;
    return SMTPD_ACCEPT;
}

static enum smtpd_decision
ev_data_begin(void *ctx, struct smtpd_proto_verdict *v)
{
    struct smtpd_session *s = ctx;

    log_command(s, "DATA", NULL);
    if (s->txn != TXN_BUILDING || smtpd_cleanup_open(s->txn_id, s) != 0) {
        *v = (struct smtpd_proto_verdict){ 451, "4.3.0", "Queue temporarily unavailable" };
        return SMTPD_REJECT;
    }
    s->txn = TXN_STREAMING;
    return SMTPD_ACCEPT;
}

static void
ev_data_chunk(void *ctx, const char *bytes, size_t len)
{
    struct smtpd_session *s = ctx;

    if (s->txn != TXN_STREAMING || s->txn_lost || s->txn_early)
        return;
    while (len > 0) {
        size_t room = MP_CHUNK_MAX - s->chunk.len;
        size_t n = len < room ? len : room;

        if (buf_append(&s->chunk, bytes, n) != 0)
            msg_fatal("smtpd: out of memory for message content");
        bytes += n;
        len -= n;
        if (s->chunk.len == MP_CHUNK_MAX)
            frame_chunk(s);
    }
}

/* answer_now - reply to the client without cleanup's commit */
static void
answer_now(struct smtpd_session *s, int code, const char *enhanced, const char *text)
{
    txn_reset(s);
    smtpd_proto_data_result(s->proto, code, enhanced, text);
}

static void
ev_data_end(void *ctx, const struct smtpd_data_info *info)
{
    struct smtpd_session *s = ctx;

    if (s->txn_early) {
        /* cleanup answered already but keeps the transaction until END */
        encode_end(s, info->size);
        send_frames(s);
        answer_now(s, s->early_code, s->early_enhanced, s->early_text);
        return;
    }
    if (s->txn != TXN_STREAMING || s->txn_lost) {
        smtpd_cleanup_forget(s->txn_id);
        answer_now(s, 451, "4.3.0", "Queue temporarily unavailable, try again later");
        return;
    }
    frame_chunk(s);
    encode_end(s, info->size);
    send_frames(s);
    if (s->txn_lost) {
        smtpd_cleanup_forget(s->txn_id);
        answer_now(s, 451, "4.3.0", "Queue temporarily unavailable, try again later");
        return;
    }
    s->txn = TXN_WAITING;
}

static void
ev_data_abort(void *ctx)
{
    struct smtpd_session *s = ctx;

    /* Only a transaction cleanup has heard of needs telling (even one it refused early). */
    if (s->txn == TXN_STREAMING && !s->txn_lost && s->txn_told) {
        buf_reset(&s->chunk);
        buf_reset(&s->frames);
        (void)mp_encode_txn_abort(&s->frames, s->txn_id, NULL); /* no fields: cannot fail */
        send_frames(s);
    }
    if (s->txn == TXN_STREAMING)
        smtpd_cleanup_forget(s->txn_id);
    txn_reset(s);
}

static void
auth_done(void *ctx, bool ok, const char *source)
{
    struct smtpd_session *s = ctx;

    if (!s->closing && ok) {
        msg_info("%s[%" PRIu64 "]: authenticated as %s", peer_name(s), s->serial, s->auth_try);
        s->authenticated = true;
        smtpd_proto_result(s->proto, 0, NULL, NULL); /* the user is authenticated now */
        smtpd_policy_layer_auth(s->cfg, s->have_peer ? (struct sockaddr *)&s->peer : NULL,
                                s->origin.listener_source, smtpd_proto_auth_user(s->proto),
                                &s->pol);
        smtpd_proto_set_limits(s->proto, message_size_limit(s), s->pol.max_rcpt);
        after_engine(s);
    } else if (!s->closing) {
        msg_warn("%s[%" PRIu64 "]: authentication failed for %s", peer_name(s), s->serial,
                 s->auth_try);
        smtpd_proto_result(s->proto, 535, "5.7.8", "Authentication credentials invalid");
        after_engine(s);
    }
    s->refs--;
    if (s->refs == 0)
        begin_close(s); /* only reached when the handles are already gone */
}

static enum smtpd_decision
ev_auth(void *ctx, const char *mech, const char *user, const char *pass,
        struct smtpd_proto_verdict *v)
{
    struct smtpd_session *s = ctx;

    printable(s->auth_try, sizeof(s->auth_try), user);
    log_command(s, "AUTH", mech);
    if (!s->pol.allow_auth) {
        *v = (struct smtpd_proto_verdict){ 535, "5.7.8", "Authentication not available" };
        return SMTPD_REJECT;
    }
    s->refs++;
    smtpd_auth_check(worker_loop(), s->cfg, s->pol.auth_file, user, pass, auth_done, s);
    return SMTPD_PENDING;
}

static void
ev_starttls(void *ctx)
{
    struct smtpd_session *s = ctx;

    log_command(s, "STARTTLS", NULL);
    s->starttls_requested = true;
}

static void
ev_quit(void *ctx)
{
    struct smtpd_session *s = ctx;

    log_command(s, "QUIT", NULL);
    s->quit_seen = true;
}

static const struct smtpd_proto_events session_events = {
    .helo = ev_helo,
    .mail = ev_mail,
    .rcpt = ev_rcpt,
    .data_begin = ev_data_begin,
    .data_chunk = ev_data_chunk,
    .data_end = ev_data_end,
    .data_abort = ev_data_abort,
    .auth = ev_auth,
    .starttls = ev_starttls,
    .quit = ev_quit,
};

/* --- cleanup's answers ------------------------------------------------------------------ */

/* smtpd_session_txn_result - see smtpd.h */
void
smtpd_session_txn_result(struct smtpd_session *s, uint32_t id, int code, const char *enhanced,
                         const char *text, uint64_t msgid)
{
    if (s->txn_id != id || s->closing)
        return;
    if (s->txn == TXN_STREAMING) {
        /* Refused before the end: swallow the rest, answer after END. */
        s->txn_early = true;
        s->early_code = code;
        snprintf(s->early_enhanced, sizeof(s->early_enhanced), "%s", enhanced);
        snprintf(s->early_text, sizeof(s->early_text), "%s", text);
        buf_reset(&s->chunk);
        return;
    }
    if (s->txn != TXN_WAITING)
        return;
    if (code == 250) {
        char qid[QSTORE_QID_LEN + 1];

        s->messages++;
        qstore_qid_format(qid, msgid); /* the id the 250 reply, cleanup and qmgr show */
        msg_info("%s[%" PRIu64 "]: queued as %s (%u recipient%s)%s%s", peer_name(s), s->serial, qid,
                 s->txn_rcpts, s->txn_rcpts == 1 ? "" : "s", s->submitter.known ? " from " : "",
                 s->submitter.known ? s->submitter_text : "");
    }
    answer_now(s, code, enhanced, text);
    if (s->drain_after_result)
        smtpd_proto_shutdown(s->proto);
    after_engine(s);
}

/* smtpd_session_txn_lost - see smtpd.h */
void
smtpd_session_txn_lost(struct smtpd_session *s, uint32_t id)
{
    if (s->txn_id != id || s->closing)
        return;
    if (s->txn == TXN_STREAMING) {
        s->txn_lost = true;
        buf_reset(&s->chunk);
        return;
    }
    if (s->txn != TXN_WAITING)
        return;
    answer_now(s, 451, "4.3.0", "Queue temporarily unavailable, try again later");
    if (s->drain_after_result)
        smtpd_proto_shutdown(s->proto);
    after_engine(s);
}

/* --- reading ---------------------------------------------------------------------------- */

static void
on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *b)
{
    (void)h;
    (void)suggested;
    /* One loop thread: each read is consumed before the next allocation. */
    b->base = read_buffer;
    b->len = sizeof(read_buffer);
}

/* backpressure - why reading must pause, or NULL */
static const char *
backpressure(struct smtpd_session *s)
{
    if (uv_stream_get_write_queue_size(&s->io.stream) > SESSION_WRITE_HIGH)
        return "client output";
    if (s->tls_state != TLS_HANDSHAKE && !smtpd_proto_want_input(s->proto))
        return "engine";
    if (smtpd_cleanup_backlog() > SMTPD_CLEANUP_BACKLOG_MAX)
        return "cleanup";
    return NULL;
}

static void on_read(uv_stream_t *stream, ssize_t n, const uv_buf_t *b);

static void
on_backlog_check(uv_check_t *h)
{
    (void)h;
    if (smtpd_cleanup_backlog() <= SMTPD_CLEANUP_BACKLOG_MAX / 2)
        smtpd_session_resume_paused();
}

/* update_reading - start or stop reading the client as backpressure says */
static void
update_reading(struct smtpd_session *s)
{
    const char *why = s->closing ? "closing" : s->peer_eof ? "eof" : backpressure(s);

    if (why == NULL && !s->reading) {
        s->reading = uv_read_start(&s->io.stream, on_alloc, on_read) == 0;
        /* TLS may hold decrypted input that arrived while we paused. */
        if (s->reading && s->tls_state == TLS_ON)
            tls_pump(s);
    } else if (why != NULL && s->reading) {
        uv_read_stop(&s->io.stream);
        s->reading = false;
    }
    if (why && strcmp(why, "cleanup") == 0 && !s->paused_backlog) {
        s->paused_backlog = true;
        S.paused++;
        uv_check_start(&S.backlog_check, on_backlog_check);
    }
}

/* smtpd_session_resume_paused - see smtpd.h */
void
smtpd_session_resume_paused(void)
{
    for (struct smtpd_session *s = S.head; s && S.paused; s = s->next) {
        if (!s->paused_backlog)
            continue;
        s->paused_backlog = false;
        S.paused--;
        update_reading(s);
    }
    if (S.paused == 0 && S.check_ready)
        uv_check_stop(&S.backlog_check);
}

/* after_engine - write replies, stream content, follow the engine's state */
static void
after_engine(struct smtpd_session *s)
{
    enum smtpd_state st;

    if (s->closing)
        return;
    flush_output(s);
    stream_pending(s);
    st = smtpd_proto_state(s->proto);
    if (s->starttls_requested && st == SMTPD_STATE_TLS_HANDSHAKE) {
        s->starttls_requested = false;
        s->tls = smtpd_tls_new(s->origin.tls);
        s->tls_state = TLS_HANDSHAKE;
    }
    if (s->peer_eof && st != SMTPD_STATE_WAIT_HOST)
        smtpd_proto_disconnected(s->proto); /* nothing more will come */
    if (smtpd_proto_is_closed(s->proto)) {
        begin_close(s);
        return;
    }
    if (st != s->last_state || st == SMTPD_STATE_DATA || st == SMTPD_STATE_BDAT)
        arm_timer(s);
    s->last_state = st;
    update_reading(s);
}

/* feed - plaintext from the client into the engine */
static void
feed(struct smtpd_session *s, const char *p, size_t n)
{
    size_t before = smtpd_proto_output(s->proto)->len;

    smtpd_proto_input(s->proto, p, n);
    /* A reply means a command completed: the command timer starts over. */
    if (smtpd_proto_output(s->proto)->len > before)
        arm_timer(s);
    after_engine(s);
}

/* handshake_done - TLS is up: STARTTLS resets the session, implicit TLS greets */
static void
handshake_done(struct smtpd_session *s)
{
    s->tls_state = TLS_ON;
    if (s->pol.log_connections)
        msg_info("%s[%" PRIu64 "]: TLS %s %s", peer_name(s), s->serial, smtpd_tls_protocol(s->tls),
                 smtpd_tls_cipher(s->tls));
    if (s->origin.implicit_tls && smtpd_proto_state(s->proto) == SMTPD_STATE_INIT)
        smtpd_proto_start(s->proto);
    else
        smtpd_proto_tls_started(s->proto);
    arm_timer(s);
    after_engine(s);
}

/* tls_pump - drive the handshake, then decrypt into the engine while it wants input */
static void
tls_pump(struct smtpd_session *s)
{
    char plain[16384];
    int rc;

    if (s->tls_state == TLS_HANDSHAKE) {
        rc = smtpd_tls_handshake(s->tls);
        send_tls_output(s);
        if (rc < 0) {
            msg_info("%s[%" PRIu64 "]: TLS handshake failed: %s", peer_name(s), s->serial,
                     smtpd_tls_error());
            smtpd_proto_disconnected(s->proto);
            begin_close(s);
            return;
        }
        if (rc == 0)
            return;
        handshake_done(s);
    }
    while (!s->closing && s->tls_state == TLS_ON && smtpd_proto_want_input(s->proto)) {
        rc = smtpd_tls_read(s->tls, plain, sizeof(plain));
        if (rc == 0)
            break;
        if (rc < 0) { /* close_notify or a bad record */
            smtpd_proto_disconnected(s->proto);
            begin_close(s);
            return;
        }
        feed(s, plain, (size_t)rc);
    }
    if (!s->closing)
        send_tls_output(s); /* alerts, session tickets */
}

static void
on_read(uv_stream_t *stream, ssize_t n, const uv_buf_t *b)
{
    struct smtpd_session *s = stream->data;

    if (n == 0)
        return;
    if (n == UV_EOF && s->tls_state != TLS_HANDSHAKE) {
        /* A client may pipeline "... QUIT" and half-close: answer what it sent
           (the engine may be holding it while cleanup commits). */
        s->peer_eof = true;
        after_engine(s);
        return;
    }
    if (n < 0) {
        smtpd_proto_disconnected(s->proto);
        begin_close(s);
        return;
    }
    if (smtpd_proto_state(s->proto) == SMTPD_STATE_DATA ||
        smtpd_proto_state(s->proto) == SMTPD_STATE_BDAT)
        arm_timer(s); /* the data timeout runs from the last byte */
    if (s->tls_state == TLS_OFF) {
        feed(s, b->base, (size_t)n);
        return;
    }
    if (smtpd_tls_feed(s->tls, b->base, (size_t)n) != 0) {
        smtpd_proto_disconnected(s->proto);
        begin_close(s);
        return;
    }
    tls_pump(s);
}

static void
on_timer(uv_timer_t *t)
{
    struct smtpd_session *s = t->data;

    if (s->closing) {     /* the grace period of a close ran out */
        close_handles(s); /* cancels the shutdown request too */
        return;
    }
    if (s->txn == TXN_WAITING) {
        /* cleanup never answered: the client must not believe it was queued */
        msg_warn("%s[%" PRIu64 "]: no answer from cleanup in time", peer_name(s), s->serial);
        smtpd_cleanup_forget(s->txn_id);
        answer_now(s, 451, "4.3.0", "Queue temporarily unavailable, try again later");
        after_engine(s);
        return;
    }
    log_command(s, "timeout", NULL);
    if (s->tls_state == TLS_HANDSHAKE) {
        smtpd_proto_disconnected(s->proto);
        begin_close(s);
        return;
    }
    smtpd_proto_timeout(s->proto);
    after_engine(s);
}

/* --- life cycle --------------------------------------------------------------------------- */

static void
session_free(struct smtpd_session *s)
{
    if (s->paused_backlog)
        S.paused--;
    if (s->prev)
        s->prev->next = s->next;
    else
        S.head = s->next;
    if (s->next)
        s->next->prev = s->prev;
    S.count--;
    if (s->pol.log_connections)
        msg_info("%s[%" PRIu64 "]: disconnected, %" PRIu64 " message%s", peer_name(s), s->serial,
                 s->messages, s->messages == 1 ? "" : "s");
    smtpd_proto_free(s->proto);
    smtpd_tls_free(s->tls);
    buf_free(&s->frames);
    buf_free(&s->chunk);
    worker_config_release(s->cfg);
    smtpd_admit_release(&s->ticket);
    free(s);
    if (S.count == 0 && S.idle_cb)
        S.idle_cb();
}

static void
on_handle_closed(uv_handle_t *h)
{
    struct smtpd_session *s = h->data;

    if (--s->refs == 0)
        session_free(s);
}

static void
close_handles(struct smtpd_session *s)
{
    if (s->handles_closing)
        return;
    s->handles_closing = true;
    uv_close(&s->io.handle, on_handle_closed);
    uv_close((uv_handle_t *)&s->timer, on_handle_closed);
}

static void
on_shutdown(uv_shutdown_t *req, int status)
{
    (void)status;
    close_handles(req->data);
}

/* begin_close - stop reading, forget the transaction, flush, then close */
static void
begin_close(struct smtpd_session *s)
{
    if (s->refs == 0) { /* from auth_done after the handles closed */
        session_free(s);
        return;
    }
    if (s->closing)
        return;
    flush_output(s);
    s->closing = true;
    if (s->reading)
        uv_read_stop(&s->io.stream);
    s->reading = false;
    if (s->txn == TXN_WAITING || s->txn == TXN_STREAMING)
        smtpd_cleanup_forget(s->txn_id);
    if (s->tls_state == TLS_ON) {
        smtpd_tls_close_notify(s->tls);
        send_tls_output(s);
    }
    /*
     * After QUIT (or the client's own EOF), with the reply in the kernel, a
     * plain close loses nothing: it skips a shutdown(2) and two loop turns
     * per message. Otherwise half-close first, so that a client still
     * sending does not get a reset that could swallow our last reply.
     */
    if ((s->quit_seen || s->peer_eof) && s->tls_state != TLS_ON &&
        uv_stream_get_write_queue_size(&s->io.stream) == 0) {
        close_handles(s);
        return;
    }
    /* A client that never reads must not keep us: close after a grace period. */
    uv_timer_start(&s->timer, on_timer, SESSION_CLOSE_GRACE_MS, 0);
    s->shutdown_req.data = s;
    if (uv_shutdown(&s->shutdown_req, &s->io.stream, on_shutdown) != 0)
        close_handles(s);
}

/* sockaddr_text - IP text and port of SA */
static void
sockaddr_text(const struct sockaddr_storage *sa, char *ip, size_t size, unsigned *port)
{
    if (sa->ss_family == AF_INET6) {
        uv_ip6_name((const struct sockaddr_in6 *)sa, ip, size);
        *port = ntohs(((const struct sockaddr_in6 *)sa)->sin6_port);
    } else {
        uv_ip4_name((const struct sockaddr_in *)sa, ip, size);
        *port = ntohs(((const struct sockaddr_in *)sa)->sin_port);
    }
}

/* fill_addresses - peer and local address text (TCP only) */
static void
fill_addresses(struct smtpd_session *s, const struct smtpd_client *cl)
{
    struct sockaddr_storage local;
    socklen_t len = sizeof(local);

    if (!cl->have_peer)
        return;
    s->peer = cl->peer;
    s->have_peer = true;
    sockaddr_text(&s->peer, s->client_ip, sizeof(s->client_ip), &s->client_port);
    if (getsockname(cl->fd, (struct sockaddr *)&local, &len) == 0)
        sockaddr_text(&local, s->local_ip, sizeof(s->local_ip), &s->local_port);
}

/* has_auth_backend - is there anyone to authenticate against? */
static bool
has_auth_backend(const struct smtpd_session *s)
{
    uint32_t it = 0;

    return s->pol.auth_file != NULL || cfg_next_scope(s->cfg, CFG_S_SMTP_USER, &it) != CFG_NONE;
}

/* make_engine - the engine configured from the session's policy */
static void
make_engine(struct smtpd_session *s)
{
    struct smtpd_proto_config pc;

    smtpd_proto_config_init(&pc);
    pc.host_name = smtpd_policy_host_name(s->cfg);
    pc.max_message_size = message_size_limit(s);
    pc.max_rcpt = s->pol.max_rcpt;
    pc.refuse_service = !s->pol.smtp_service;
    pc.offer_starttls = s->pol.allow_starttls && s->origin.tls && !s->origin.implicit_tls;
    pc.tls_active = s->origin.implicit_tls;
    pc.allow_auth = s->pol.allow_auth && has_auth_backend(s);
    pc.allow_plaintext_auth = s->pol.allow_plaintext_auth || s->origin.pickup;
    pc.require_auth = s->pol.require_auth;
    pc.allow_chunking = s->pol.allow_chunking;
    pc.allow_smtputf8 = s->pol.allow_smtputf8;
    s->proto = smtpd_proto_new(&pc, &session_events, s);
}

/* open_stream - S's libuv stream on the client's descriptor; 0 or a libuv error */
static int
open_stream(struct smtpd_session *s, const struct smtpd_client *cl)
{
    int err;

    if (cl->origin->pickup) {
        uv_pipe_init(worker_loop(), &s->io.pipe, 0);
        err = uv_pipe_open(&s->io.pipe, cl->fd);
    } else {
        uv_tcp_init(worker_loop(), &s->io.tcp);
        err = uv_tcp_open(&s->io.tcp, cl->fd);
    }
    s->io.handle.data = s;
    return err;
}

static void
free_unstarted(uv_handle_t *h)
{
    free(h->data);
}

/* smtpd_session_start - see smtpd.h */
void
smtpd_session_start(struct smtpd_client *cl)
{
    const struct smtpd_origin *origin = cl->origin;
    struct smtpd_session *s = xcalloc(1, sizeof(*s));
    int err;

    if ((err = open_stream(s, cl)) != 0) {
        msg_warn("cannot start a session: %s", uv_strerror(err));
        smtpd_admit_release(&cl->ticket);
        close(cl->fd); /* the handle did not take it */
        uv_close(&s->io.handle, free_unstarted);
        return;
    }
    s->serial = ++S.serial;
    s->origin = *origin;
    s->refs = 2;
    s->cfg = worker_config_hold();
    s->pol = cl->pol; /* resolved on this same configuration */
    s->ticket = cl->ticket;
    s->submitter = cl->submitter;
    if (s->submitter.known)
        smtpd_submit_describe(&s->submitter, s->submitter_text, sizeof(s->submitter_text));
    uv_timer_init(worker_loop(), &s->timer);
    s->timer.data = s;
    s->next = S.head;
    if (S.head)
        S.head->prev = s;
    S.head = s;
    S.count++;
    fill_addresses(s, cl);
    make_engine(s);
    if (s->submitter.known) /* every local submission names its user */
        msg_info("%s[%" PRIu64 "]: connect from %s", peer_name(s), s->serial, s->submitter_text);
    else if (s->pol.log_connections)
        msg_info("%s[%" PRIu64 "]: connect from %s:%u to %s%s%s", peer_name(s), s->serial,
                 s->origin.pickup ? "local" : s->client_ip, s->client_port,
                 origin->listener_address, *origin->listener_source ? " source=" : "",
                 origin->listener_source);
    s->last_state = SMTPD_STATE_INIT;
    if (origin->implicit_tls) {
        s->tls = smtpd_tls_new(origin->tls);
        s->tls_state = TLS_HANDSHAKE;
        arm_timer(s);
        update_reading(s);
        return;
    }
    smtpd_proto_start(s->proto);
    arm_timer(s);
    after_engine(s);
}

/* smtpd_session_apply_timeouts - see smtpd.h */
void
smtpd_session_apply_timeouts(void)
{
    for (struct smtpd_session *s = S.head; s; s = s->next) {
        uint64_t ms = timeout_ms(s);

        if (s->closing || ms == 0 || !uv_is_active((uv_handle_t *)&s->timer))
            continue;
        if (uv_timer_get_due_in(&s->timer) > ms)
            uv_timer_start(&s->timer, on_timer, ms, 0);
    }
}

/* smtpd_session_shutdown_all - see smtpd.h */
void
smtpd_session_shutdown_all(void)
{
    struct smtpd_session *s, *next;

    S.draining = true;
    for (s = S.head; s; s = next) {
        next = s->next;
        if (s->closing)
            continue;
        if (s->txn == TXN_WAITING) {
            s->drain_after_result = true; /* answer the message first */
            continue;
        }
        if (s->tls_state == TLS_HANDSHAKE) {
            smtpd_proto_disconnected(s->proto);
            begin_close(s);
            continue;
        }
        smtpd_proto_shutdown(s->proto);
        after_engine(s);
    }
}

/* smtpd_session_close_all - see smtpd.h */
void
smtpd_session_close_all(void)
{
    struct smtpd_session *s, *next;

    for (s = S.head; s; s = next) {
        next = s->next;
        if (!s->closing)
            smtpd_proto_disconnected(s->proto);
        begin_close(s);
        close_handles(s);
    }
}

unsigned
smtpd_session_count(void)
{
    return S.count;
}

void
smtpd_session_set_idle_cb(void (*cb)(void))
{
    S.idle_cb = cb;
}

/* smtpd_session_init - the shared backlog check handle */
void
smtpd_session_init(uv_loop_t *loop)
{
    uv_check_init(loop, &S.backlog_check);
    uv_unref((uv_handle_t *)&S.backlog_check);
    S.check_ready = true;
}

void
smtpd_session_fini(void)
{
    if (S.check_ready)
        uv_close((uv_handle_t *)&S.backlog_check, NULL);
    S.check_ready = false;
}
