/*
 * fuzz_smtpd.c - fuzz target: the SMTP server engine (smtpd/libsmtpdproto.a)
 *
 * One session per input, driven as the smtpd worker drives it, with a host
 * that accepts nearly everything so the fuzzer gets deep: past EHLO, MAIL,
 * RCPT, into DATA and BDAT, through AUTH, and through STARTTLS (when the
 * engine asks for TLS the host pretends the handshake succeeded with
 * smtpd_proto_tls_started(), so the post-TLS states are reached).
 *
 * Input: three header bytes, then the client's byte stream.
 *   byte 0  session configuration (bits below, CFG_*)
 *   byte 1  host behaviour: which decisions come later (PENDING, answered
 *           between reads), commit refused, small limits, how the session
 *           ends (HOST_*)
 *   byte 2  how the stream is cut into reads: 0 one read, 1 one byte per
 *           read, else the seed of a generator of read sizes. With bit 7
 *           clear, what the client pipelined behind STARTTLS (which the
 *           engine discards) is sent again after the pretended handshake,
 *           as a client that waits for the 220 would send it.
 *
 * After a successful AUTH the host swaps the size and recipient limits, as
 * smtpd does when it re-resolves its policy for the user.
 *
 * Checked on every input, beyond the sanitizers: every reply line is
 * "DDD SP|- printable-text CRLF" with a 2xx-5xx code; strings handed to the
 * host hold no control byte; body chunks come only between an accepted
 * data_begin and data_end/data_abort and add up to the size data_end
 * reports; nothing at all happens once the engine has closed.
 */
#include <stdbool.h>
#include <string.h>

#include "buf.h"
#include "fuzz.h"
#include "smtpd_proto.h"

#define CFG_STARTTLS       0x01 /* offer_starttls */
#define CFG_TLS_ACTIVE     0x02 /* implicit TLS listener */
#define CFG_PLAINTEXT_AUTH 0x04 /* allow_plaintext_auth */
#define CFG_REQUIRE_AUTH   0x08
#define CFG_REQUIRE_TLS    0x10
#define CFG_NO_CHUNKING    0x20
#define CFG_NO_SMTPUTF8    0x40
#define CFG_REFUSE         0x80 /* refuse_service */

#define HOST_ASYNC_MAIL   0x01 /* mail decision PENDING */
#define HOST_ASYNC_RCPT   0x02
#define HOST_ASYNC_AUTH   0x04
#define HOST_ASYNC_COMMIT 0x08 /* data_result after the read, not inside data_end */
#define HOST_REFUSE       0x10 /* data_begin / commit refused for odd transactions */
#define HOST_SMALL        0x20 /* tiny limits: line, message size, recipients, held input */
#define HOST_INLINE       0x40 /* answer PENDING decisions from inside the callback */
#define HOST_TIMEOUT      0x80 /* end with a timeout (else shutdown or disconnect) */

struct host {
    struct smtpd_proto *s;
    unsigned flags;
    bool pending;     /* a mail/rcpt/auth decision is owed */
    bool commit_owed; /* data_end came, data_result is owed */
    bool tls_asked;   /* starttls event: handshake to pretend */
    bool in_body;     /* data_begin accepted, no end/abort yet */
    uint64_t body_len;
    unsigned txns;
    bool closed;     /* the engine said it is closed: no more events */
    bool limits_set; /* limits re-resolved after AUTH, as smtpd does */
};

/* clean - a string the engine hands out: bounded and free of control bytes */
static void
clean(const char *s)
{
    size_t i;

    FUZZ_CHECK(s != NULL);
    for (i = 0; s[i]; i++) {
        unsigned char c = (unsigned char)s[i];

        FUZZ_CHECK(c >= 32 && c != 127);
        FUZZ_CHECK(i < 16384);
    }
}

static void
not_closed(struct host *h)
{
    FUZZ_CHECK(!h->closed);
}

static void
ev_helo(void *ctx, const char *name, bool esmtp)
{
    not_closed(ctx);
    clean(name);
    (void)esmtp;
}

/* decide - accept; in async mode answer later (or now, from inside the call) */
static enum smtpd_decision
decide(struct host *h, unsigned async_flag)
{
    if (!(h->flags & async_flag))
        return SMTPD_ACCEPT;
    if (h->flags & HOST_INLINE)
        smtpd_proto_result(h->s, 0, NULL, NULL);
    else
        h->pending = true;
    return SMTPD_PENDING;
}

static enum smtpd_decision
ev_mail(void *ctx, const char *sender, const struct smtpd_mail_params *p,
        struct smtpd_proto_verdict *v)
{
    struct host *h = ctx;

    not_closed(h);
    clean(sender);
    clean(p->envid);
    clean(p->auth);
    FUZZ_CHECK(strlen(sender) <= SMTPD_ADDR_MAX);
    if (strncmp(sender, "reject", 6) == 0) {
        *v = (struct smtpd_proto_verdict){ 553, "5.7.1", "Sender\r\nrefused\x01" };
        return SMTPD_REJECT;
    }
    return decide(h, HOST_ASYNC_MAIL);
}

static enum smtpd_decision
ev_rcpt(void *ctx, const char *rcpt, const struct smtpd_rcpt_params *p,
        struct smtpd_proto_verdict *v)
{
    struct host *h = ctx;

    not_closed(h);
    clean(rcpt);
    clean(p->orcpt_type);
    clean(p->orcpt);
    FUZZ_CHECK(strlen(rcpt) <= SMTPD_ADDR_MAX);
    if (strncmp(rcpt, "deny", 4) == 0)
        return SMTPD_REJECT;
    if (strncmp(rcpt, "weird", 5) == 0) {
        *v = (struct smtpd_proto_verdict){ 251, "4.x", "odd" };
        return SMTPD_ACCEPT;
    }
    return decide(h, HOST_ASYNC_RCPT);
}

static enum smtpd_decision
ev_data_begin(void *ctx, struct smtpd_proto_verdict *v)
{
    struct host *h = ctx;

    not_closed(h);
    FUZZ_CHECK(!h->in_body && !h->commit_owed);
    h->txns++;
    if ((h->flags & HOST_REFUSE) && h->txns % 2 == 0)
        return SMTPD_REJECT;
    h->in_body = true;
    h->body_len = 0;
    return SMTPD_ACCEPT;
}

static void
ev_data_chunk(void *ctx, const char *bytes, size_t len)
{
    struct host *h = ctx;

    not_closed(h);
    FUZZ_CHECK(h->in_body && len > 0);
    (void)bytes[len - 1];
    h->body_len += len;
}

static void
commit(struct host *h)
{
    h->commit_owed = false;
    if ((h->flags & HOST_REFUSE) && h->txns % 3 == 0)
        smtpd_proto_data_result(h->s, 451, "4.3.0", "Queue\ttrouble");
    else
        smtpd_proto_data_result(h->s, 250, "2.0.0", "Ok: queued as FUZZ");
}

static void
ev_data_end(void *ctx, const struct smtpd_data_info *info)
{
    struct host *h = ctx;

    not_closed(h);
    FUZZ_CHECK(h->in_body && !h->commit_owed);
    FUZZ_CHECK(info->size == h->body_len);
    h->in_body = false;
    h->commit_owed = true;
    if (!(h->flags & HOST_ASYNC_COMMIT))
        commit(h);
}

static void
ev_data_abort(void *ctx)
{
    struct host *h = ctx;

    FUZZ_CHECK(!h->commit_owed);
    h->in_body = false;
}

static enum smtpd_decision
ev_auth(void *ctx, const char *mech, const char *user, const char *pass,
        struct smtpd_proto_verdict *v)
{
    struct host *h = ctx;

    not_closed(h);
    clean(mech);
    clean(user);
    clean(pass);
    if (strcmp(pass, "wrong") == 0)
        return SMTPD_REJECT;
    return decide(h, HOST_ASYNC_AUTH);
}

static void
ev_starttls(void *ctx)
{
    struct host *h = ctx;

    not_closed(h);
    FUZZ_CHECK(!h->tls_asked);
    h->tls_asked = true;
}

static void
ev_quit(void *ctx)
{
    not_closed(ctx);
}

static const struct smtpd_proto_events events = {
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

/* drain - the host writes the replies: each line must be well formed */
static void
drain(struct host *h)
{
    struct buf *out = smtpd_proto_output(h->s);
    const char *p = out->data;
    size_t left = out->len;

    while (left > 0) {
        const char *nl = memchr(p, '\n', left);
        size_t n, i;

        FUZZ_CHECK(nl != NULL);
        n = (size_t)(nl - p) + 1;
        FUZZ_CHECK(n >= 6 && p[n - 2] == '\r');
        FUZZ_CHECK(p[0] >= '2' && p[0] <= '5' && p[1] >= '0' && p[1] <= '9' && p[2] >= '0' &&
                   p[2] <= '9' && (p[3] == ' ' || p[3] == '-'));
        for (i = 4; i < n - 2; i++)
            FUZZ_CHECK(p[i] >= 32 && p[i] <= 126);
        FUZZ_CHECK(n <= 1024);
        p += n;
        left -= n;
    }
    buf_reset(out);
    if (smtpd_proto_is_closed(h->s))
        h->closed = true;
}

/* settle - what the host does after each call into the engine */
static void
settle(struct host *h, bool answer)
{
    for (int round = 0; round < 64; round++) {
        drain(h);
        if (h->closed)
            return;
        if (h->tls_asked) {
            h->tls_asked = false;
            smtpd_proto_tls_started(h->s);
            FUZZ_CHECK(smtpd_proto_is_closed(h->s) || smtpd_proto_is_tls(h->s));
        } else if (!h->limits_set && smtpd_proto_auth_user(h->s)) {
            /* smtpd re-resolves its policy for the user: other limits from the next MAIL */
            h->limits_set = true;
            clean(smtpd_proto_auth_user(h->s));
            smtpd_proto_set_limits(h->s, h->flags & HOST_SMALL ? 100000 : 300,
                                   h->flags & HOST_SMALL ? 50 : 2);
        } else if (answer && h->pending) {
            h->pending = false;
            smtpd_proto_result(h->s, 0, NULL, NULL);
        } else if (answer && h->commit_owed) {
            commit(h);
        } else {
            return;
        }
    }
}

static void
configure(struct smtpd_proto_config *cfg, unsigned c, unsigned host)
{
    smtpd_proto_config_init(cfg);
    cfg->host_name = "mx.fuzz.test";
    cfg->max_message_size = 100000;
    cfg->max_rcpt = 50;
    cfg->max_errors = 20;
    cfg->offer_starttls = c & CFG_STARTTLS;
    cfg->tls_active = c & CFG_TLS_ACTIVE;
    cfg->allow_plaintext_auth = c & CFG_PLAINTEXT_AUTH;
    cfg->require_auth = c & CFG_REQUIRE_AUTH;
    cfg->require_tls = c & CFG_REQUIRE_TLS;
    cfg->allow_chunking = !(c & CFG_NO_CHUNKING);
    cfg->allow_smtputf8 = !(c & CFG_NO_SMTPUTF8);
    cfg->refuse_service = c & CFG_REFUSE;
    if (host & HOST_SMALL) {
        cfg->max_line = 80;
        cfg->max_message_size = 300;
        cfg->max_rcpt = 2;
        cfg->max_held = 512;
        cfg->max_errors = 5;
    }
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int init;
    struct smtpd_proto_config cfg;
    struct host h;
    struct fuzz_reads reads;
    size_t off = 3;
    unsigned nreads = 0;
    uint64_t discarded;

    if (!init++)
        fuzz_quiet_logs();
    if (size < 3)
        return 0;
    memset(&h, 0, sizeof h);
    h.flags = data[1];
    fuzz_reads_init(&reads, data[2], 300);
    configure(&cfg, data[0], data[1]);
    h.s = smtpd_proto_new(&cfg, &events, &h);
    smtpd_proto_start(h.s);
    settle(&h, true);
    while (off < size) {
        size_t n = fuzz_reads_next(&reads, size - off);

        discarded = smtpd_proto_discarded(h.s);
        smtpd_proto_input(h.s, data + off, n);
        off += n;
        if (h.tls_asked && !(data[2] & 0x80))
            off -= smtpd_proto_discarded(h.s) - discarded;
        /* a pending decision is answered every few reads, or when the engine
           asks the host to stop reading */
        settle(&h, ++nreads % 3 == 0 || !smtpd_proto_want_input(h.s));
        if (h.closed) {
            /* the connection stays open until the replies are written:
               whatever else arrives must change nothing */
            smtpd_proto_input(h.s, data + off, size - off);
            FUZZ_CHECK(smtpd_proto_output(h.s)->len == 0);
            break;
        }
    }
    settle(&h, true);
    if (!h.closed) {
        if (h.flags & HOST_TIMEOUT)
            smtpd_proto_timeout(h.s);
        else if (data[0] & 1)
            smtpd_proto_shutdown(h.s);
        else
            smtpd_proto_disconnected(h.s);
        drain(&h);
        FUZZ_CHECK(h.closed && !h.in_body);
    }
    smtpd_proto_free(h.s);
    return 0;
}
