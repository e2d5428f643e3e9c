/*
 * fuzz_smtpout_session.c - fuzz target: the SMTP client engine
 * (smtp-out/smtpout_proto.c) driven by a hostile server
 *
 * One session per input, driven as smtpout_session.c drives it: the host
 * connects, answers the engine's events (pretends the STARTTLS handshake
 * succeeded, queues the body at once, by DATA or BDAT as told), sends
 * transactions whenever the engine is idle, and ends with QUIT or a lost
 * connection. The input:
 *   byte 0  the session's policy: STARTTLS off/opportunistic/required
 *           (bits 0-1), TLS available (2), ignore PIPELINING (3),
 *           8BITMIME (4), DSN (5); the last recipient's address holds
 *           CR LF (6: refused before anything is sent)
 *   byte 1  the host: transactions 0..3 (bits 0-1), recipients 1..4 (2-3),
 *           an 8-bit body (4), SMTPUTF8 (5), DSN parameters (6), QUIT when
 *           done (7; else the connection is lost at the end)
 *   byte 2  how the server's bytes are cut into reads: 0 one read per
 *           reply, 1 one byte per read, else random sizes within a reply;
 *           with bit 7 set, reads ignore where replies end (a server that
 *           answers before it is asked, or injects after STARTTLS's 220)
 *   byte 3  AUTH credentials configured (bit 0), PLAIN/LOGIN allowed in
 *           clear (1), ignore CHUNKING (2)
 *   then    what the server sends. A well-behaved server answers only what
 *           it was asked, so by default each read ends with a reply (its
 *           last line has no '-' after the code) and the host acts on it
 *           before the next read.
 *
 * Checked beyond the sanitizers, which is what smtpout_proto.h promises:
 * every command the engine writes is a CRLF line without other control
 * bytes, and ORCPT goes out as queued ("rfc822;A+b@..." becomes
 * ORCPT=rfc822;A+2Bb@..., the type once, a bare address is rfc822);
 * every recipient of every transaction gets exactly one rcpt_result, each
 * transaction one transaction_done; a body sent by BDAT is announced with
 * its exact size (smtpout_bdat_len); every reply event is a real reply; the session ends with
 * exactly one close, after which nothing happens; replies handed up are sane (code 0 or 200..599,
 * text printable and bounded).
 */
#include <stdbool.h>
#include <string.h>

#include "buf.h"
#include "fuzz.h"
#include "smtpout_proto.h"

#define MAX_RCPTS 4
#define MAX_TXNS  3

/* Recipients: ORCPT as the queue keeps it, and as it must go on the wire; NOTIFY */
static const struct {
    const char *addr, *orcpt, *sent;
    unsigned notify;
} recipients[MAX_RCPTS] = {
    { "a@dst.example", "rfc822;A+b@dst.example", " ORCPT=rfc822;A+2Bb@dst.example",
      SMTPOUT_NOTIFY_FAILURE | SMTPOUT_NOTIFY_DELAY },
    { "b@dst.example", "b=c@dst.example", " ORCPT=rfc822;b+3Dc@dst.example", SMTPOUT_NOTIFY_NEVER },
    { "c@other.example", "utf-8;c@other.example", " ORCPT=utf-8;c@other.example",
      SMTPOUT_NOTIFY_SUCCESS | SMTPOUT_NOTIFY_FAILURE | SMTPOUT_NOTIFY_DELAY },
    { "d@[192.0.2.7]", NULL, NULL, 0 },
};

struct host {
    struct smtpout_proto *p;
    unsigned flags;
    struct smtpout_rcpt rcpts[MAX_RCPTS];
    struct smtpout_message msg;
    unsigned results[MAX_RCPTS]; /* rcpt_result count per recipient, this transaction */
    bool in_txn;
    unsigned txns_sent, txns_done;
    bool tls_asked, body_asked, closed;
    unsigned closes;
};

static void
check_reply(const struct smtpout_reply *r)
{
    size_t n = strlen(r->text);

    FUZZ_CHECK(r->code == 0 || (r->code >= 200 && r->code <= 599));
    FUZZ_CHECK(n <= SMTPOUT_REPLY_TEXT_MAX && strlen(r->status) < sizeof r->status);
    for (size_t i = 0; i < n; i++)
        FUZZ_CHECK(r->text[i] >= 0x20 && r->text[i] < 0x7f);
}

static void
ev_timer(void *ctx, enum smtpout_wait wait, enum smtpout_stage stage)
{
    FUZZ_CHECK(!((struct host *)ctx)->closed);
    (void)wait, (void)stage;
}

static void
ev_starttls(void *ctx)
{
    struct host *h = ctx;

    FUZZ_CHECK(!h->closed && !h->tls_asked);
    h->tls_asked = true;
}

static void
ev_ready(void *ctx, unsigned caps)
{
    FUZZ_CHECK(!((struct host *)ctx)->closed);
    (void)caps;
}

static void
ev_body(void *ctx, const struct smtpout_message *m, enum smtpout_body_mode mode)
{
    struct host *h = ctx;
    struct buf *out = smtpout_proto_output(h->p);

    FUZZ_CHECK(!h->closed && h->in_txn && m == &h->msg && !h->body_asked);
    FUZZ_CHECK(mode == SMTPOUT_BODY_DATA || mode == SMTPOUT_BODY_BDAT);
    if (mode == SMTPOUT_BODY_BDAT) {
        /* the command that announces the chunk is the last thing written */
        char expect[64];
        int n = snprintf(expect, sizeof expect, "BDAT %zu LAST\r\n",
                         smtpout_bdat_len(m->data, m->len));

        FUZZ_CHECK(out->len >= (size_t)n && memcmp(out->data + out->len - n, expect, n) == 0);
    }
    h->body_asked = true;
}

static void
ev_reply(void *ctx, const struct smtpout_reply *r)
{
    FUZZ_CHECK(!((struct host *)ctx)->closed);
    FUZZ_CHECK(r->code >= 200 && r->code <= 599);
    check_reply(r);
}

static void
ev_rcpt_result(void *ctx, size_t index, const struct smtpout_reply *r)
{
    struct host *h = ctx;

    FUZZ_CHECK(h->in_txn && index < h->msg.nrcpts);
    FUZZ_CHECK(++h->results[index] == 1);
    check_reply(r);
}

static void
ev_transaction_done(void *ctx, const struct smtpout_reply *r)
{
    struct host *h = ctx;

    FUZZ_CHECK(h->in_txn);
    for (size_t i = 0; i < h->msg.nrcpts; i++)
        FUZZ_CHECK(h->results[i] == 1);
    check_reply(r);
    h->in_txn = false;
    h->body_asked = false;
    h->txns_done++;
}

static void
ev_close(void *ctx, const struct smtpout_reply *reason)
{
    struct host *h = ctx;

    FUZZ_CHECK(++h->closes == 1);
    check_reply(reason);
    h->closed = true;
}

static const struct smtpout_proto_events events = {
    .timer = ev_timer,
    .starttls = ev_starttls,
    .ready = ev_ready,
    .body = ev_body,
    .rcpt_result = ev_rcpt_result,
    .transaction_done = ev_transaction_done,
    .close = ev_close,
    .reply = ev_reply,
};

/* drain - the host writes what the engine wants sent: CRLF lines, no other controls */
static void
drain(struct host *h)
{
    struct buf *out = smtpout_proto_output(h->p);

    for (size_t i = 0; i < out->len; i++) {
        unsigned char c = (unsigned char)out->data[i];

        if (c == '\r')
            FUZZ_CHECK(i + 1 < out->len && out->data[i + 1] == '\n');
        else if (c == '\n')
            FUZZ_CHECK(i > 0 && out->data[i - 1] == '\r');
        else
            FUZZ_CHECK(c >= 0x20 && c != 0x7f);
    }
    FUZZ_CHECK(out->len == 0 || out->data[out->len - 1] == '\n');
    for (const char *o = out->data;
         o && (o = memmem(o, out->len - (size_t)(o - out->data), " ORCPT=", 7)) != NULL; o++) {
        size_t i = 0;

        while (i < MAX_RCPTS && !(recipients[i].sent &&
                                  strncmp(o, recipients[i].sent, strlen(recipients[i].sent)) == 0))
            i++;
        FUZZ_CHECK(i < MAX_RCPTS);
    }
    buf_reset(out);
}

/* send_next - a new transaction of the message the host flags describe */
static void
send_next(struct host *h)
{
    memset(h->results, 0, sizeof h->results);
    h->in_txn = true;
    h->txns_sent++;
    FUZZ_CHECK(smtpout_proto_send(h->p, &h->msg) == 0);
}

/* settle - what the host does after each call into the engine */
static void
settle(struct host *h)
{
    for (int round = 0; round < 16; round++) {
        drain(h);
        if (h->closed)
            return;
        if (h->tls_asked) {
            h->tls_asked = false;
            smtpout_proto_tls_started(h->p);
        } else if (h->body_asked && h->in_txn) {
            h->body_asked = false;
            smtpout_proto_body_sent(h->p);
        } else if (smtpout_proto_is_idle(h->p) && !h->in_txn && h->txns_sent < (h->flags & 3u)) {
            send_next(h);
        } else if (smtpout_proto_is_idle(h->p) && !h->in_txn && (h->flags & 0x80) &&
                   !smtpout_proto_quitting(h->p)) {
            smtpout_proto_quit(h->p);
        } else {
            return;
        }
    }
}

static void
message(struct host *h, unsigned flags, unsigned policy)
{
    static const char body[] = "From: bounce@src.example\r\nSubject: x\r\n\r\nbody\r\n.dot\r\n";
    static const char body8[] =
        "From: bounce@src.example\r\nSubject: caf\xc3\xa9\r\n\r\n\xe9t\xe9\n";

    for (size_t i = 0; i < MAX_RCPTS; i++) {
        h->rcpts[i].addr = recipients[i].addr;
        h->rcpts[i].orcpt = flags & 0x40 ? recipients[i].orcpt : NULL;
        h->rcpts[i].notify = flags & 0x40 ? recipients[i].notify : 0;
    }
    /* a recipient that must never reach the wire: refused before anything is sent */
    if (policy & 0x40)
        h->rcpts[MAX_RCPTS - 1].addr = "evil@x.example>\r\nRSET";
    h->msg.sender = flags & 0x40 ? "" : "bounce@src.example";
    h->msg.rcpts = h->rcpts;
    h->msg.nrcpts = 1 + (flags >> 2 & 3);
    h->msg.envid = flags & 0x40 ? "ENV-1" : NULL;
    h->msg.ret = flags & 0x40 ? SMTPOUT_RET_HDRS : SMTPOUT_RET_NONE;
    h->msg.data = flags & 0x10 ? body8 : body;
    h->msg.len = flags & 0x10 ? sizeof body8 - 1 : sizeof body - 1;
    h->msg.eight_bit = (flags & 0x10) != 0;
    h->msg.smtputf8 = (flags & 0x20) != 0;
}

/* reply_end - where the reply starting at OFF ends: after a line without '-' after its code */
static size_t
reply_end(const uint8_t *data, size_t off, size_t size)
{
    while (off < size) {
        const uint8_t *nl = memchr(data + off, '\n', size - off);
        size_t len;

        if (nl == NULL)
            return size;
        len = (size_t)(nl - (data + off));
        if (len < 4 || data[off + 3] != '-')
            return off + len + 1;
        off += len + 1;
    }
    return size;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int init;
    struct smtpout_proto_config cfg = { .helo_name = "mta.src.example",
                                        .mx_name = "mx.dst.example",
                                        .dest_ip = "198.51.100.7" };
    struct host h;
    struct fuzz_reads reads;
    size_t off = 4;

    if (!init++)
        fuzz_quiet_logs();
    if (size < 4)
        return 0;
    memset(&h, 0, sizeof h);
    h.flags = data[1];
    message(&h, data[1], data[0]);
    cfg.tls = (enum smtpout_tls_policy)(data[0] & 3) % 3;
    cfg.tls_available = (data[0] & 0x04) != 0;
    cfg.ignore_pipelining = (data[0] & 0x08) != 0;
    cfg.ignore_8bitmime = (data[0] & 0x10) != 0;
    cfg.ignore_dsn = (data[0] & 0x20) != 0;
    cfg.auth_username = data[3] & 0x01 ? "user@src.example" : NULL;
    cfg.auth_password = data[3] & 0x01 ? "s3cret" : NULL;
    cfg.auth_in_clear = (data[3] & 0x02) != 0;
    cfg.ignore_chunking = (data[3] & 0x04) != 0;
    fuzz_reads_init(&reads, data[2] & 0x7f, 200);
    h.p = smtpout_proto_new(&cfg, &events, &h);
    smtpout_proto_connected(h.p);
    settle(&h);
    while (off < size && !h.closed) {
        size_t end = data[2] & 0x80 ? size : reply_end(data, off, size);
        size_t n = fuzz_reads_next(&reads, end - off);

        smtpout_proto_input(h.p, (const char *)data + off, n);
        off += n;
        settle(&h);
    }
    if (!h.closed) {
        smtpout_proto_fail_local(h.p, SMTPOUT_TEMP, "4.4.2", "connection lost");
        settle(&h);
    }
    FUZZ_CHECK(h.closed && h.closes == 1 && !h.in_txn && h.txns_done == h.txns_sent);
    /* a closed engine takes more input and does nothing */
    smtpout_proto_input(h.p, "250 ok\r\n", 8);
    FUZZ_CHECK(smtpout_proto_output(h.p)->len == 0 && h.closes == 1);
    smtpout_proto_free(h.p);
    return 0;
}
