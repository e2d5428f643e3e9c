/*
 * test_smtpout_proto.c - unit tests for the SMTP client protocol engine
 * (smtp-out/smtpout_proto.c): the reply reader and the session's states.
 *
 * A fake host records every engine event as a text line and every byte the
 * engine wants sent in a transcript. Scripts alternate server bytes and host
 * actions; the property tests run each script with the server bytes fed
 * whole, one byte at a time and in random splits and require the same
 * events and the same transcript. Hostile replies (overlong lines, too many
 * lines, bad and mixed codes, NUL, bare LF) and PIPELINING reply accounting
 * are checked on their own.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "unit.h"

#include "buf.h"
#include "msg.h"
#include "smtpout_proto.h"

/* --- the reader alone ------------------------------------------------------------------- */

typedef size_t (*split_fn)(size_t i);

/* read_all - every reply (or the error) in BYTES, fed in pieces SPLIT gives, as text */
static void
read_all(struct buf *log, const char *bytes, size_t len, split_fn split)
{
    struct smtpout_reader rd;
    struct smtpout_reply r;
    size_t pos = 0;

    smtpout_reader_init(&rd);
    for (size_t i = 0; pos < len; i++) {
        size_t n = split(i), off = 0, used;

        if (n > len - pos)
            n = len - pos;
        while (off < n) {
            enum smtpout_read rc = smtpout_reader_feed(&rd, bytes + pos + off, n - off, &used, &r);

            off += used;
            if (rc == SMTPOUT_READ_ERROR) {
                buf_printf(log, "error: %s\n", r.text);
                return;
            }
            if (rc == SMTPOUT_READ_MORE)
                break;
            buf_printf(log, "reply %d %s %s [%s] caps=%x size=%lu\n", r.code, r.status,
                       smtpout_class_name(r.cls), r.text, rd.caps, rd.size_max);
        }
        pos += n;
    }
}

/* read_one - the log of BYTES fed whole, checked to be the same in every split */
static const char *
read_one(const char *bytes, size_t len)
{
    static char text[8192];
    struct buf whole = BUF_INIT, other = BUF_INIT;

    read_all(&whole, bytes, len, unit_split_whole);
    read_all(&other, bytes, len, unit_split_one);
    assert_string_equal(other.data ? other.data : "", whole.data ? whole.data : "");
    for (int round = 0; round < 20; round++) {
        buf_reset(&other);
        read_all(&other, bytes, len, unit_split_random);
        assert_string_equal(other.data ? other.data : "", whole.data ? whole.data : "");
    }
    snprintf(text, sizeof text, "%s", whole.data ? whole.data : "");
    buf_free(&whole);
    buf_free(&other);
    return text;
}

#define READ(lit) read_one(lit, sizeof(lit) - 1)

static void
test_reader_replies(void **state)
{
    (void)state;
    assert_string_equal(READ("250 2.1.0 Ok\r\n"),
                        "reply 250 2.1.0 ok [250 2.1.0 Ok] caps=0 size=0\n");
    assert_string_equal(READ("250-mx.test hello\r\n250-PIPELINING\r\n250-SIZE 1000\r\n"
                             "250-starttls\r\n250 8BITMIME\r\n"),
                        "reply 250 2.0.0 ok [250 mx.test hello PIPELINING SIZE 1000 starttls "
                        "8BITMIME] caps=17 size=1000\n");
    /* no enhanced code, or one of another class: X.0.0 */
    assert_string_equal(READ("550 no such user\r\n451 5.7.1 odd\r\n"),
                        "reply 550 5.0.0 perm [550 no such user] caps=0 size=0\n"
                        "reply 451 4.0.0 temp [451 5.7.1 odd] caps=0 size=0\n");
    /* a 3xx has no RFC 3463 class of its own (fuzz_smtpout_reply's check) */
    assert_string_equal(READ("354 3.0.0 go ahead\r\n"),
                        "reply 354 2.0.0 ok [354 3.0.0 go ahead] caps=0 size=0\n");
    /* a bare code, a bare LF, a 354 */
    assert_string_equal(READ("250\n354 go ahead\r\n"),
                        "reply 250 2.0.0 ok [250] caps=0 size=0\n"
                        "reply 354 2.0.0 ok [354 go ahead] caps=0 size=0\n");
}

static void
test_reader_hostile_replies(void **state)
{
    char line[SMTPOUT_LINE_MAX + 8];
    struct buf many = BUF_INIT;

    (void)state;
    /* NUL and other control bytes become '?'; CR inside a line too */
    assert_string_equal(read_one("250 a\0b\rc\r\n", 11),
                        "reply 250 2.0.0 ok [250 a?b?c] caps=0 size=0\n");
    assert_string_equal(READ("2x0 ok\r\n"), "error: malformed reply: \"2x0 ok\"\n");
    assert_string_equal(READ("25\r\n"), "error: malformed reply: \"25\"\n");
    assert_string_equal(READ("2500 ok\r\n"), "error: malformed reply: \"2500 ok\"\n");
    assert_string_equal(READ("199 ok\r\n"), "error: malformed reply code\n");
    assert_string_equal(READ("600 ok\r\n"), "error: malformed reply code\n");
    assert_string_equal(READ("\r\n"), "error: malformed reply: \"\"\n");
    /* a continuation line must repeat the code */
    assert_string_equal(READ("250-a\r\n251 b\r\n"), "error: malformed reply code\n");
    /* the longest line passes; one byte more fails, even before its LF */
    memset(line, 'a', sizeof line);
    memcpy(line, "250 ", 4);
    memcpy(line + SMTPOUT_LINE_MAX - 2, "\r\n", 2);
    assert_non_null(strstr(read_one(line, SMTPOUT_LINE_MAX), "reply 250 2.0.0 ok [250 aaa"));
    memset(line, 'a', sizeof line);
    memcpy(line, "250 ", 4);
    assert_string_equal(read_one(line, SMTPOUT_LINE_MAX + 1), "error: reply line too long\n");
    /* text is bounded */
    memcpy(line + 1000, "\r\n", 2);
    assert_int_equal(strlen(strchr(read_one(line, 1002), '[')),
                     1 + SMTPOUT_REPLY_TEXT_MAX + strlen("] caps=0 size=0\n"));
    /* SMTPOUT_REPLY_LINES_MAX lines pass, one more fails */
    for (int i = 0; i < SMTPOUT_REPLY_LINES_MAX - 1; i++)
        buf_append_str(&many, "250-x\r\n");
    buf_append_str(&many, "250 x\r\n");
    assert_non_null(strstr(read_one(many.data, many.len), "reply 250"));
    buf_reset(&many);
    for (int i = 0; i < SMTPOUT_REPLY_LINES_MAX; i++)
        buf_append_str(&many, "250-x\r\n");
    buf_append_str(&many, "250 x\r\n");
    assert_string_equal(read_one(many.data, many.len), "error: reply has too many lines\n");
    buf_free(&many);
}

/* --- the engine with a fake host ---------------------------------------------------- */

struct host {
    struct smtpout_proto *p;
    struct buf log;  /* one line per event */
    struct buf sent; /* everything the engine wanted sent */
};

static void
take_output(struct host *h)
{
    struct buf *out = smtpout_proto_output(h->p);

    buf_append(&h->sent, out->data, out->len);
    buf_reset(out);
}

static void
log_reply(struct host *h, const char *what, const struct smtpout_reply *r)
{
    buf_printf(&h->log, "%s %d %s %s %s [%s]\n", what, r->code, r->status,
               smtpout_class_name(r->cls), smtpout_stage_name(r->stage), r->text);
}

static void
ev_timer(void *ctx, enum smtpout_wait wait, enum smtpout_stage stage)
{
    static const char *const names[] = { "none", "greeting", "command", "dot" };
    struct host *h = ctx;

    buf_printf(&h->log, "timer %s %s\n", names[wait], smtpout_stage_name(stage));
}

static void
ev_starttls(void *ctx)
{
    struct host *h = ctx;

    buf_append_str(&h->log, "starttls\n");
}

static void
ev_ready(void *ctx, unsigned caps)
{
    struct host *h = ctx;

    buf_printf(&h->log, "ready %x\n", caps);
}

static void
ev_body(void *ctx, const struct smtpout_message *m, enum smtpout_body_mode mode)
{
    struct host *h = ctx;

    buf_printf(&h->log, "body %zu%s\n", m->len, mode == SMTPOUT_BODY_BDAT ? " bdat" : "");
}

static void
ev_rcpt_result(void *ctx, size_t index, const struct smtpout_reply *r)
{
    char what[32];

    snprintf(what, sizeof what, "rcpt %zu", index);
    log_reply(ctx, what, r);
}

static void
ev_transaction_done(void *ctx, const struct smtpout_reply *r)
{
    log_reply(ctx, "done", r);
}

static void
ev_close(void *ctx, const struct smtpout_reply *r)
{
    log_reply(ctx, "close", r);
}

static const struct smtpout_proto_events events = {
    ev_timer, ev_starttls, ev_ready, ev_body, ev_rcpt_result, ev_transaction_done, ev_close, NULL,
};

static const struct smtpout_rcpt rcpts[] = {
    { "b1@y.test", NULL, 0 },
    /* ORCPT as the queue keeps it: "type;address", the address decoded */
    { "b2@y.test", "rfc822;B2+tag@y.test", SMTPOUT_NOTIFY_FAILURE | SMTPOUT_NOTIFY_DELAY },
    { "b3@y.test", NULL, 0 },
};
static const struct smtpout_message message = {
    "a@x.test", rcpts, 3, "env1", SMTPOUT_RET_HDRS, "Subject: t\r\n\r\nhi\r\n", 18, 0, 0,
};
static const struct smtpout_rcpt bad_rcpts[] = { { "ok@y.test", NULL, 0 },
                                                 { "evil@y.test>\r\nRSET", NULL, 0 } };
static const struct smtpout_message bad_message = {
    "a@x.test", bad_rcpts, 2, NULL, SMTPOUT_RET_NONE, "x\r\n", 3, 0, 0,
};

/*
 * A script: lines "S<bytes>" are server bytes (C escapes allowed by the
 * compiler), the others host actions: "connect", "send", "send-bad",
 * "body-sent", "tls-started", "quit", "fail".
 */
struct script {
    const char *name;
    enum smtpout_tls_policy tls;
    int ignore_pipelining;
    const char *steps[24];
};

/* Settings some scripts need besides the TLS policy, found by the script's name. */
static const struct script_opts {
    const char *name;
    const char *auth_user, *auth_pass; /* AUTH configured */
    int auth_in_clear;
    int ignore_chunking;
} script_opts[] = {
    { "AUTH PLAIN after STARTTLS", "user", "pass", 0, 0 },
    { "AUTH LOGIN in clear when allowed", "user", "pass", 1, 0 },
    { "AUTH PLAIN not sent in clear", "user", "pass", 0, 0 },
    { "AUTH CRAM-MD5 in clear (RFC 2195 example)", "tim", "tanstaaftanstaaf", 0, 0 },
    { "AUTH refused", "user", "wrong", 1, 0 },
    { "AUTH not offered: none", "user", "pass", 0, 0 },
    { "AUTH malformed CRAM-MD5 challenge", "user", "pass", 0, 0 },
    { "ignore-chunking: DATA", NULL, NULL, 0, 1 },
};

static const struct script_opts *
opts_of(const struct script *sc)
{
    static const struct script_opts none = { NULL, NULL, NULL, 0, 0 };

    for (size_t i = 0; i < sizeof script_opts / sizeof script_opts[0]; i++)
        if (strcmp(script_opts[i].name, sc->name) == 0)
            return &script_opts[i];
    return &none;
}

static void
run(const struct script *sc, split_fn split, struct buf *log, struct buf *sent)
{
    const struct script_opts *o = opts_of(sc);
    struct smtpout_proto_config cfg = {
        .helo_name = "client.test",
        .mx_name = "mx.y.test",
        .dest_ip = "127.0.0.2",
        .tls = sc->tls,
        .tls_available = 1,
        .ignore_pipelining = sc->ignore_pipelining,
        .ignore_chunking = o->ignore_chunking,
        .auth_username = o->auth_user,
        .auth_password = o->auth_pass,
        .auth_in_clear = o->auth_in_clear,
    };
    struct host h = { NULL, BUF_INIT, BUF_INIT };
    struct smtpout_reply r;

    h.p = smtpout_proto_new(&cfg, &events, &h);
    for (size_t i = 0; sc->steps[i]; i++) {
        const char *st = sc->steps[i];

        if (st[0] == 'S') {
            size_t len = strlen(st + 1), pos = 0;

            for (size_t k = 0; pos < len; k++) {
                size_t n = split(k);

                n = n > len - pos ? len - pos : n;
                smtpout_proto_input(h.p, st + 1 + pos, n);
                take_output(&h);
                pos += n;
            }
            continue;
        }
        if (strcmp(st, "connect") == 0)
            smtpout_proto_connected(h.p);
        else if (strcmp(st, "send") == 0)
            buf_printf(&h.log, "send=%d\n", smtpout_proto_send(h.p, &message));
        else if (strcmp(st, "send-bad") == 0)
            buf_printf(&h.log, "send=%d\n", smtpout_proto_send(h.p, &bad_message));
        else if (strcmp(st, "body-sent") == 0)
            smtpout_proto_body_sent(h.p);
        else if (strcmp(st, "tls-started") == 0)
            smtpout_proto_tls_started(h.p);
        else if (strcmp(st, "quit") == 0)
            smtpout_proto_quit(h.p);
        else if (strcmp(st, "fail") == 0) {
            smtpout_reply_local(&r, SMTPOUT_TEMP, smtpout_proto_stage(h.p), "4.4.2", "lost");
            smtpout_proto_fail(h.p, &r);
        } else
            fail_msg("bad step %s", st);
        take_output(&h);
    }
    buf_printf(&h.log, "state idle=%d closed=%d\n", smtpout_proto_is_idle(h.p),
               smtpout_proto_closed(h.p));
    smtpout_proto_free(h.p);
    *log = h.log;
    *sent = h.sent;
}

/* run_split_invariant - SC's events and transcript, the same in every split */
static void
run_split_invariant(const struct script *sc, struct buf *log, struct buf *sent)
{
    struct buf l2, s2;

    run(sc, unit_split_whole, log, sent);
    run(sc, unit_split_one, &l2, &s2);
    assert_string_equal(l2.data, log->data);
    assert_string_equal(s2.data ? s2.data : "", sent->data ? sent->data : "");
    buf_free(&l2);
    buf_free(&s2);
    for (int round = 0; round < 20; round++) {
        run(sc, unit_split_random, &l2, &s2);
        assert_string_equal(l2.data, log->data);
        assert_string_equal(s2.data ? s2.data : "", sent->data ? sent->data : "");
        buf_free(&l2);
        buf_free(&s2);
    }
}

#define GREET_EHLO(caps) \
    "connect", "S220 mx.y.test ESMTP\r\n", "S250-mx.y.test\r\n" caps "250 DSN\r\n"

static const struct script scripts[] = {
    { "pipelined delivery, one refused",
      SMTPOUT_TLS_OFF,
      0,
      { GREET_EHLO("250-PIPELINING\r\n250-SIZE 100000\r\n"), "send",
        "S250 2.1.0 ok\r\n250 2.1.5 ok\r\n550 5.1.1 no such user\r\n250 2.1.5 ok\r\n354 go\r\n",
        "body-sent", "S250 2.0.0 queued\r\n", "send",
        "S250 2.0.0 reset\r\n250 ok\r\n250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n", "body-sent",
        "S250 2.0.0 again\r\n", "quit", "S221 bye\r\n", NULL } },
    { "pipelined, MAIL refused",
      SMTPOUT_TLS_OFF,
      0,
      { GREET_EHLO("250-PIPELINING\r\n"), "send",
        "S553 5.1.8 bad sender\r\n503 5.5.1 no mail\r\n503 5.5.1 no mail\r\n503 5.5.1 no "
        "mail\r\n354 go\r\n",
        "S250 2.0.0 ignored\r\n", NULL } },
    { "pipelined, every RCPT refused",
      SMTPOUT_TLS_OFF,
      0,
      { GREET_EHLO("250-PIPELINING\r\n"), "send",
        "S250 ok\r\n550 5.1.1 a\r\n551 5.1.6 b\r\n452 4.2.2 full\r\n554 5.5.1 no rcpts\r\n",
        NULL } },
    { "one command at a time",
      SMTPOUT_TLS_OFF,
      1,
      { GREET_EHLO("250-PIPELINING\r\n"), "send", "S250 ok\r\n", "S250 ok\r\n",
        "S450 4.2.1 later\r\n", "S250 ok\r\n", "S354 go\r\n", "body-sent", "S250 2.0.0 queued\r\n",
        NULL } },
    { "unpipelined, nobody accepted: no DATA",
      SMTPOUT_TLS_OFF,
      0,
      { GREET_EHLO(""), "send", "S250 ok\r\n", "S550 a\r\n", "S550 b\r\n", "S550 c\r\n", NULL } },
    { "EHLO refused: HELO",
      SMTPOUT_TLS_OFF,
      0,
      { "connect", "S220 old\r\n", "S502 what\r\n", "S250 hi\r\n", "send", "S250 ok\r\n", NULL } },
    { "STARTTLS, then injected bytes",
      SMTPOUT_TLS_OPPORTUNISTIC,
      0,
      { GREET_EHLO("250-STARTTLS\r\n"), "S220 2.0.0 go\r\n250 injected\r\n", NULL } },
    { "STARTTLS and EHLO again",
      SMTPOUT_TLS_OPPORTUNISTIC,
      0,
      { GREET_EHLO("250-STARTTLS\r\n"), "S220 2.0.0 go\r\n", "tls-started",
        "S250-mx.y.test\r\n250 PIPELINING\r\n", NULL } },
    { "STARTTLS required, not offered", SMTPOUT_TLS_REQUIRED, 0, { GREET_EHLO(""), NULL } },
    { "STARTTLS required, refused",
      SMTPOUT_TLS_REQUIRED,
      0,
      { GREET_EHLO("250-STARTTLS\r\n"), "S554 5.7.0 no tls for you\r\n", NULL } },
    { "421 in the middle",
      SMTPOUT_TLS_OFF,
      0,
      { GREET_EHLO("250-PIPELINING\r\n"), "send", "S250 ok\r\n250 ok\r\n421 4.3.2 going down\r\n",
        NULL } },
    { "greeting refused", SMTPOUT_TLS_OFF, 0, { "connect", "S554 5.7.1 go away\r\n", NULL } },
    { "unsolicited reply when idle",
      SMTPOUT_TLS_OFF,
      0,
      { GREET_EHLO(""), "S250 surprise\r\n", NULL } },
    { "hostile reply mid-transaction",
      SMTPOUT_TLS_OFF,
      0,
      { GREET_EHLO("250-PIPELINING\r\n"), "send", "S250-ok\r\n251 mixed\r\n", NULL } },
    { "local failure with accepted recipients",
      SMTPOUT_TLS_OFF,
      0,
      { GREET_EHLO("250-PIPELINING\r\n"), "send",
        "S250 ok\r\n250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n", "fail", NULL } },
    { "injection in an address is refused locally",
      SMTPOUT_TLS_OFF,
      0,
      { GREET_EHLO(""), "send-bad", "S250 ok\r\n", "S250 ok\r\n", "S354 go\r\n", NULL } },
    /* AUTH (RFC 4954) */
    { "AUTH PLAIN after STARTTLS",
      SMTPOUT_TLS_OPPORTUNISTIC,
      0,
      { GREET_EHLO("250-STARTTLS\r\n250-AUTH PLAIN LOGIN\r\n"), "S220 2.0.0 go\r\n", "tls-started",
        "S250-mx.y.test\r\n250-AUTH LOGIN PLAIN\r\n250 PIPELINING\r\n",
        "S235 2.7.0 Authentication successful\r\n", "send", NULL } },
    { "AUTH LOGIN in clear when allowed",
      SMTPOUT_TLS_OFF,
      0,
      { GREET_EHLO("250-AUTH=LOGIN\r\n"), "S334 VXNlcm5hbWU6\r\n", "S334 UGFzc3dvcmQ6\r\n",
        "S235 2.7.0 ok\r\n", NULL } },
    { "AUTH PLAIN not sent in clear",
      SMTPOUT_TLS_OPPORTUNISTIC,
      0,
      { GREET_EHLO("250-AUTH PLAIN LOGIN\r\n"), NULL } },
    { "AUTH CRAM-MD5 in clear (RFC 2195 example)",
      SMTPOUT_TLS_OFF,
      0,
      { GREET_EHLO("250-AUTH LOGIN CRAM-MD5\r\n"),
        "S334 PDE4OTYuNjk3MTcwOTUyQHBvc3RvZmZpY2UucmVzdG9uLm1jaS5uZXQ+\r\n", "S235 ok\r\n",
        NULL } },
    { "AUTH refused",
      SMTPOUT_TLS_OFF,
      0,
      { GREET_EHLO("250-AUTH PLAIN\r\n"), "S535 5.7.8 Authentication credentials invalid\r\n",
        NULL } },
    { "AUTH not offered: none",
      SMTPOUT_TLS_OFF,
      0,
      { GREET_EHLO("250-PIPELINING\r\n"), "send", NULL } },
    { "AUTH malformed CRAM-MD5 challenge",
      SMTPOUT_TLS_OFF,
      0,
      { GREET_EHLO("250-AUTH CRAM-MD5\r\n"), "S334 !!notbase64\r\n", NULL } },
    /* CHUNKING (RFC 3030) */
    { "BDAT pipelined, one refused",
      SMTPOUT_TLS_OFF,
      0,
      { GREET_EHLO("250-PIPELINING\r\n250-CHUNKING\r\n"), "send",
        "S250 2.1.0 ok\r\n250 2.1.5 ok\r\n550 5.1.1 no such user\r\n250 2.1.5 ok\r\n", "body-sent",
        "S250 2.0.0 queued\r\n", "send",
        "S250 2.0.0 reset\r\n250 ok\r\n250 ok\r\n250 ok\r\n250 ok\r\n", "body-sent",
        "S554 5.6.0 refused after all\r\n", NULL } },
    { "BDAT, every RCPT refused: no BDAT",
      SMTPOUT_TLS_OFF,
      0,
      { GREET_EHLO("250-PIPELINING\r\n250-CHUNKING\r\n"), "send",
        "S250 ok\r\n550 5.1.1 a\r\n550 5.1.1 b\r\n550 5.1.1 c\r\n", NULL } },
    { "BDAT one command at a time",
      SMTPOUT_TLS_OFF,
      1,
      { GREET_EHLO("250-PIPELINING\r\n250-CHUNKING\r\n"), "send", "S250 ok\r\n", "S250 ok\r\n",
        "S250 ok\r\n", "S450 4.2.1 later\r\n", "body-sent", "S250 2.0.0 queued\r\n", NULL } },
    { "ignore-chunking: DATA",
      SMTPOUT_TLS_OFF,
      0,
      { GREET_EHLO("250-PIPELINING\r\n250-CHUNKING\r\n"), "send",
        "S250 ok\r\n250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n", "body-sent", "S250 2.0.0 queued\r\n",
        NULL } },
    { "BDAT, a reply nobody asked for",
      SMTPOUT_TLS_OFF,
      0,
      { GREET_EHLO("250-PIPELINING\r\n250-CHUNKING\r\n"), "send",
        "S250 ok\r\n250 ok\r\n250 ok\r\n250 ok\r\n250 extra\r\n", NULL } },
};

#define NSCRIPTS (sizeof(scripts) / sizeof(scripts[0]))

static void
test_every_script_is_split_invariant(void **state)
{
    (void)state;
    srand(3);
    for (size_t i = 0; i < NSCRIPTS; i++) {
        struct buf log, sent;

        run_split_invariant(&scripts[i], &log, &sent);
        buf_free(&log);
        buf_free(&sent);
    }
}

/* script_log - SC's events (split-checked); the transcript in *SENT (static) */
static const char *
script_log(const char *name, const char **sent)
{
    static char log_text[16384], sent_text[8192];

    for (size_t i = 0; i < NSCRIPTS; i++) {
        struct buf log, out;

        if (strcmp(scripts[i].name, name) != 0)
            continue;
        run_split_invariant(&scripts[i], &log, &out);
        snprintf(log_text, sizeof log_text, "%s", log.data);
        if (getenv("SHOW_LOG"))
            fprintf(stderr, "== %s\n%s-- sent\n%s", name, log.data, out.data ? out.data : "");
        snprintf(sent_text, sizeof sent_text, "%s", out.data ? out.data : "");
        buf_free(&log);
        buf_free(&out);
        *sent = sent_text;
        return log_text;
    }
    fail_msg("no script %s", name);
    return NULL;
}

static void
test_pipelined_delivery(void **state)
{
    const char *sent, *log = script_log("pipelined delivery, one refused", &sent);

    (void)state;
    /* MAIL, every RCPT and DATA in one write; RSET before the second transaction */
    assert_string_equal(sent,
                        "EHLO client.test\r\n"
                        "MAIL FROM:<a@x.test> SIZE=18 RET=HDRS ENVID=env1\r\n"
                        "RCPT TO:<b1@y.test>\r\n"
                        "RCPT TO:<b2@y.test> NOTIFY=FAILURE,DELAY ORCPT=rfc822;B2+2Btag@y.test\r\n"
                        "RCPT TO:<b3@y.test>\r\n"
                        "DATA\r\n"
                        "RSET\r\n"
                        "MAIL FROM:<a@x.test> SIZE=18 RET=HDRS ENVID=env1\r\n"
                        "RCPT TO:<b1@y.test>\r\n"
                        "RCPT TO:<b2@y.test> NOTIFY=FAILURE,DELAY ORCPT=rfc822;B2+2Btag@y.test\r\n"
                        "RCPT TO:<b3@y.test>\r\n"
                        "DATA\r\n"
                        "QUIT\r\n");
    /* the refused recipient at once, the others with the final reply */
    assert_non_null(strstr(log, "rcpt 1 550 5.1.1 perm rcpt [550 5.1.1 no such user]\n"
                                "timer command rcpt\n"
                                "timer command data\n"
                                "body 18\n"
                                "timer dot dot\n"
                                "rcpt 0 250 2.0.0 ok dot [250 2.0.0 queued]\n"
                                "rcpt 2 250 2.0.0 ok dot [250 2.0.0 queued]\n"
                                "timer none local\n"
                                "done 250 2.0.0 ok dot [250 2.0.0 queued]\n"));
    assert_non_null(strstr(log, "ready 83\n"));
    assert_non_null(strstr(log, "close 221 2.0.0 ok quit [221 bye]\nstate idle=0 closed=1\n"));
}

static void
test_pipelining_reply_accounting(void **state)
{
    const char *sent, *log;

    (void)state;
    /* MAIL refused: every recipient gets its reply; the 354 gets an empty body */
    log = script_log("pipelined, MAIL refused", &sent);
    assert_non_null(strstr(log, "rcpt 0 553 5.1.8 perm mail [553 5.1.8 bad sender]\n"
                                "rcpt 1 553 5.1.8 perm mail [553 5.1.8 bad sender]\n"
                                "rcpt 2 553 5.1.8 perm mail [553 5.1.8 bad sender]\n"));
    assert_non_null(strstr(sent, "DATA\r\n.\r\n"));
    assert_non_null(strstr(log, "done 553 5.1.8 perm mail [553 5.1.8 bad sender]\n"
                                "state idle=1 closed=0\n"));
    assert_null(strstr(log, "body"));
    /* every RCPT refused: each its own reply; the transaction ends with the last */
    log = script_log("pipelined, every RCPT refused", &sent);
    assert_non_null(strstr(log, "rcpt 0 550 5.1.1 perm rcpt [550 5.1.1 a]\n"));
    assert_non_null(strstr(log, "rcpt 1 551 5.1.6 perm rcpt [551 5.1.6 b]\n"));
    assert_non_null(strstr(log, "rcpt 2 452 4.2.2 temp rcpt [452 4.2.2 full]\n"));
    assert_non_null(strstr(log, "done 452 4.2.2 temp rcpt [452 4.2.2 full]\nstate idle=1"));
    /* without PIPELINING: one command per reply, and no DATA when nobody was accepted */
    log = script_log("one command at a time", &sent);
    assert_string_equal(sent,
                        "EHLO client.test\r\nMAIL FROM:<a@x.test> RET=HDRS ENVID=env1\r\n"
                        "RCPT TO:<b1@y.test>\r\n"
                        "RCPT TO:<b2@y.test> NOTIFY=FAILURE,DELAY ORCPT=rfc822;B2+2Btag@y.test\r\n"
                        "RCPT TO:<b3@y.test>\r\nDATA\r\n");
    assert_non_null(strstr(log, "rcpt 1 450 4.2.1 temp rcpt"));
    log = script_log("unpipelined, nobody accepted: no DATA", &sent);
    assert_null(strstr(sent, "DATA"));
    assert_non_null(strstr(log, "done 550 5.0.0 perm rcpt [550 c]\nstate idle=1"));
}

static void
test_greeting_ehlo_starttls(void **state)
{
    const char *sent, *log;

    (void)state;
    log = script_log("EHLO refused: HELO", &sent);
    assert_non_null(
        strstr(sent, "EHLO client.test\r\nHELO client.test\r\nMAIL FROM:<a@x.test>\r\n"));
    assert_non_null(strstr(log, "ready 0\n"));
    log = script_log("STARTTLS, then injected bytes", &sent);
    assert_string_equal(sent, "EHLO client.test\r\nSTARTTLS\r\n");
    assert_non_null(strstr(log, "starttls\nclose 0 4.7.0 temp tls [plaintext received after "
                                "STARTTLS (possible response injection) (mx.y.test[127.0.0.2])]"));
    log = script_log("STARTTLS and EHLO again", &sent);
    assert_string_equal(sent, "EHLO client.test\r\nSTARTTLS\r\nEHLO client.test\r\n");
    assert_non_null(strstr(log, "ready 1\nstate idle=1"));
    log = script_log("STARTTLS required, not offered", &sent);
    assert_non_null(strstr(log, "close 0 4.7.4 temp ehlo [TLS is required, but was not offered"));
    log = script_log("STARTTLS required, refused", &sent);
    assert_non_null(strstr(log, "close 554 4.7.0 temp starttls [554 5.7.0 no tls for you]"));
    log = script_log("greeting refused", &sent);
    assert_string_equal(sent, "");
    assert_non_null(strstr(log, "close 554 5.7.1 perm greeting [554 5.7.1 go away]"));
}

static void
test_failures_close_first_then_report(void **state)
{
    const char *sent, *log;

    (void)state;
    /* 421: the session ends; every open recipient gets it, after the close */
    log = script_log("421 in the middle", &sent);
    /* (b1 was accepted, but without the final reply it has no result yet) */
    assert_non_null(strstr(log, "close 421 4.3.2 temp rcpt [421 4.3.2 going down]\n"
                                "rcpt 0 421 4.3.2 temp rcpt [421 4.3.2 going down]\n"
                                "rcpt 1 421 4.3.2 temp rcpt [421 4.3.2 going down]\n"
                                "rcpt 2 421 4.3.2 temp rcpt [421 4.3.2 going down]\n"
                                "done 421"));
    log = script_log("local failure with accepted recipients", &sent);
    assert_non_null(strstr(log, "close 0 4.4.2 temp body [lost]\n"
                                "rcpt 0 0 4.4.2 temp body [lost]\n"
                                "rcpt 1 0 4.4.2 temp body [lost]\n"
                                "rcpt 2 0 4.4.2 temp body [lost]\n"
                                "done 0 4.4.2 temp body [lost]\n"));
    log = script_log("unsolicited reply when idle", &sent);
    assert_non_null(strstr(log, "close 250 2.0.0 temp local [250 surprise]"));
    log = script_log("hostile reply mid-transaction", &sent);
    assert_non_null(strstr(log, "close 0 4.5.0 temp mail [malformed reply code (mx.y.test"));
    log = script_log("injection in an address is refused locally", &sent);
    assert_null(strstr(sent, "evil"));
    assert_non_null(strstr(log, "rcpt 1 0 5.1.3 perm local [invalid recipient address]\n"));
}

static void
test_auth(void **state)
{
    const char *sent, *log;

    (void)state;
    /* PLAIN with its initial response, only once TLS is on; then the transaction */
    log = script_log("AUTH PLAIN after STARTTLS", &sent);
    assert_string_equal(sent, "EHLO client.test\r\nSTARTTLS\r\nEHLO client.test\r\n"
                              "AUTH PLAIN AHVzZXIAcGFzcw==\r\n"
                              "MAIL FROM:<a@x.test>\r\nRCPT TO:<b1@y.test>\r\n"
                              "RCPT TO:<b2@y.test>\r\nRCPT TO:<b3@y.test>\r\nDATA\r\n");
    assert_non_null(strstr(log, "timer command auth\ntimer none local\nready 101\n"));
    /* LOGIN: user and password in answer to the two challenges */
    log = script_log("AUTH LOGIN in clear when allowed", &sent);
    assert_string_equal(sent, "EHLO client.test\r\nAUTH LOGIN\r\ndXNlcg==\r\ncGFzcw==\r\n");
    assert_non_null(strstr(log, "ready 180\nstate idle=1"));
    /* PLAIN and LOGIN are never sent in clear unless allowed: a temporary failure */
    log = script_log("AUTH PLAIN not sent in clear", &sent);
    assert_string_equal(sent, "EHLO client.test\r\n");
    assert_non_null(strstr(log, "close 0 4.7.11 temp ehlo [AUTH needs TLS"));
    /* CRAM-MD5: RFC 2195's own example exchange */
    log = script_log("AUTH CRAM-MD5 in clear (RFC 2195 example)", &sent);
    assert_string_equal(sent, "EHLO client.test\r\nAUTH CRAM-MD5\r\n"
                              "dGltIGI5MTNhNjAyYzdlZGE3YTQ5NWI0ZTZlNzMzNGQzODkw\r\n");
    assert_non_null(strstr(log, "ready 180\n"));
    /* refused credentials: temporary (the mail waits), the session ends */
    log = script_log("AUTH refused", &sent);
    assert_non_null(strstr(log, "close 535 4.7.8 temp auth [535 5.7.8 Authentication "
                                "credentials invalid]\nstate idle=0 closed=1"));
    log = script_log("AUTH not offered: none", &sent);
    assert_null(strstr(sent, "AUTH"));
    assert_non_null(strstr(sent, "MAIL FROM:<a@x.test>"));
    log = script_log("AUTH malformed CRAM-MD5 challenge", &sent);
    assert_non_null(strstr(log, "close 0 4.7.0 temp auth [malformed CRAM-MD5 challenge"));
}

static void
test_bdat(void **state)
{
    const char *sent, *log;

    (void)state;
    /* MAIL and RCPTs pipelined; BDAT and the body only after the replies */
    log = script_log("BDAT pipelined, one refused", &sent);
    assert_string_equal(sent,
                        "EHLO client.test\r\n"
                        "MAIL FROM:<a@x.test> RET=HDRS ENVID=env1\r\n"
                        "RCPT TO:<b1@y.test>\r\n"
                        "RCPT TO:<b2@y.test> NOTIFY=FAILURE,DELAY ORCPT=rfc822;B2+2Btag@y.test\r\n"
                        "RCPT TO:<b3@y.test>\r\n"
                        "BDAT 18 LAST\r\n"
                        "RSET\r\n"
                        "MAIL FROM:<a@x.test> RET=HDRS ENVID=env1\r\n"
                        "RCPT TO:<b1@y.test>\r\n"
                        "RCPT TO:<b2@y.test> NOTIFY=FAILURE,DELAY ORCPT=rfc822;B2+2Btag@y.test\r\n"
                        "RCPT TO:<b3@y.test>\r\n"
                        "BDAT 18 LAST\r\n");
    assert_non_null(strstr(log, "rcpt 1 550 5.1.1 perm rcpt [550 5.1.1 no such user]\n"));
    assert_non_null(strstr(log, "body 18 bdat\ntimer dot bdat\n"
                                "rcpt 0 250 2.0.0 ok bdat [250 2.0.0 queued]\n"
                                "rcpt 2 250 2.0.0 ok bdat [250 2.0.0 queued]\n"));
    assert_non_null(strstr(log, "rcpt 0 554 5.6.0 perm bdat [554 5.6.0 refused after all]\n"));
    log = script_log("BDAT, every RCPT refused: no BDAT", &sent);
    assert_null(strstr(sent, "BDAT"));
    assert_null(strstr(log, "body"));
    assert_non_null(strstr(log, "done 550 5.1.1 perm rcpt [550 5.1.1 c]\nstate idle=1"));
    log = script_log("BDAT one command at a time", &sent);
    assert_string_equal(sent,
                        "EHLO client.test\r\nMAIL FROM:<a@x.test> RET=HDRS ENVID=env1\r\n"
                        "RCPT TO:<b1@y.test>\r\n"
                        "RCPT TO:<b2@y.test> NOTIFY=FAILURE,DELAY ORCPT=rfc822;B2+2Btag@y.test\r\n"
                        "RCPT TO:<b3@y.test>\r\nBDAT 18 LAST\r\n");
    assert_non_null(strstr(log, "rcpt 2 450 4.2.1 temp rcpt"));
    log = script_log("ignore-chunking: DATA", &sent);
    assert_null(strstr(sent, "BDAT"));
    assert_non_null(strstr(log, "body 18\n"));
    log = script_log("BDAT, a reply nobody asked for", &sent);
    assert_non_null(strstr(log, "close 250 2.0.0 temp body [250 extra]"));
}

static void
test_bdat_len(void **state)
{
    (void)state;
    assert_int_equal(smtpout_bdat_len("", 0), 0);
    assert_int_equal(smtpout_bdat_len("\n", 1), 2);
    assert_int_equal(smtpout_bdat_len("a\r\n", 3), 3);
    assert_int_equal(smtpout_bdat_len("a\nb", 3), 6);   /* a CRLF b CRLF */
    assert_int_equal(smtpout_bdat_len("\r\n\n", 3), 4); /* CRLF CRLF */
    assert_int_equal(smtpout_bdat_len(".x\r\n", 4), 4); /* no dot-stuffing */
    assert_int_equal(smtpout_bdat_len("a\rb", 3), 5);   /* a bare CR stays */
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        UNIT_TEST(test_reader_replies),
        UNIT_TEST(test_reader_hostile_replies),
        UNIT_TEST(test_every_script_is_split_invariant),
        UNIT_TEST(test_pipelined_delivery),
        UNIT_TEST(test_pipelining_reply_accounting),
        UNIT_TEST(test_greeting_ehlo_starttls),
        UNIT_TEST(test_failures_close_first_then_report),
        UNIT_TEST(test_auth),
        UNIT_TEST(test_bdat),
        UNIT_TEST(test_bdat_len),
    };

    msg_init("test_smtpout_proto");
    msg_also_stderr(0);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
