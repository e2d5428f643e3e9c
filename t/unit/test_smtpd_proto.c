/*
 * test_smtpd_proto.c - unit tests for the SMTP server protocol engine
 * (smtpd/smtpd_proto*.c, smtpd/smtpd_address.c)
 *
 * A fake host records every event as a text line in an event log and
 * answers decisions by simple rules (deny.test is not relayed, alice/secret
 * authenticates, ...). Tests feed client bytes and assert the exact reply
 * bytes; the property tests feed the same scripts whole, one byte at a time
 * and in random splits and require identical replies and events.
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
#include <openssl/evp.h>

#include "buf.h"
#include "msg.h"
#include "smtpd_address.h"
#include "smtpd_proto.h"

/* ------------------------------------------------------------ fake host */

struct host {
    struct smtpd_proto *s;
    struct buf log;  /* one line per event */
    struct buf body; /* content of the current message */
    unsigned chunks;
    bool async_data; /* data_end does not answer at once */
    bool async_rcpt;
    bool async_auth;
    bool refuse_data;
    struct smtpd_mail_params mail;
    struct smtpd_rcpt_params rcpt;
};

/* escape - log-safe copy of BYTES (CR, LF and controls spelled out) */
static void
escape(struct buf *b, const char *p, size_t n)
{
    size_t i;

    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)p[i];

        if (c == '\r')
            buf_append_str(b, "\\r");
        else if (c == '\n')
            buf_append_str(b, "\\n");
        else if (c < 32 || c >= 127)
            buf_printf(b, "\\x%02x", c);
        else
            buf_append(b, &c, 1);
    }
}

static void
ev_helo(void *ctx, const char *name, bool esmtp)
{
    struct host *h = ctx;

    buf_printf(&h->log, "%s %s\n", esmtp ? "EHLO" : "HELO", name);
}

static enum smtpd_decision
ev_mail(void *ctx, const char *sender, const struct smtpd_mail_params *p,
        struct smtpd_proto_verdict *v)
{
    struct host *h = ctx;

    h->mail = *p;
    buf_printf(&h->log, "MAIL <%s>\n", sender);
    if (strcmp(sender, "reject@test") == 0)
        return SMTPD_REJECT;
    return SMTPD_ACCEPT;
}

static enum smtpd_decision
ev_rcpt(void *ctx, const char *rcpt, const struct smtpd_rcpt_params *p,
        struct smtpd_proto_verdict *v)
{
    struct host *h = ctx;
    const char *at = strrchr(rcpt, '@');

    h->rcpt = *p;
    buf_printf(&h->log, "RCPT <%s>\n", rcpt);
    if (h->async_rcpt)
        return SMTPD_PENDING;
    if (at && strcmp(at, "@deny.test") == 0)
        return SMTPD_REJECT;
    if (at && strcmp(at, "@weird.test") == 0) {
        *v = (struct smtpd_proto_verdict){ 451, "5.1.1", "Try\r\nlater\x01" };
        return SMTPD_REJECT;
    }
    return SMTPD_ACCEPT;
}

static enum smtpd_decision
ev_data_begin(void *ctx, struct smtpd_proto_verdict *v)
{
    struct host *h = ctx;

    buf_append_str(&h->log, "BEGIN\n");
    buf_reset(&h->body);
    if (h->refuse_data) {
        *v = (struct smtpd_proto_verdict){ 451, "4.3.0", "Queue unavailable" };
        return SMTPD_REJECT;
    }
    return SMTPD_ACCEPT;
}

static void
ev_data_chunk(void *ctx, const char *p, size_t n)
{
    struct host *h = ctx;

    assert_true(n > 0);
    buf_append(&h->body, p, n);
    h->chunks++;
}

static void
ev_data_end(void *ctx, const struct smtpd_data_info *info)
{
    struct host *h = ctx;

    assert_int_equal(info->size, h->body.len);
    buf_printf(&h->log, "END size=%llu long=%llu 8bit=%d chunked=%d [",
               (unsigned long long)info->size, (unsigned long long)info->long_lines,
               info->eight_bit, info->chunked);
    escape(&h->log, h->body.data ? h->body.data : "", h->body.len);
    buf_append_str(&h->log, "]\n");
    buf_reset(&h->body);
    if (!h->async_data)
        smtpd_proto_data_result(h->s, 250, "2.0.0", "Ok: queued as TEST");
}

static void
ev_data_abort(void *ctx)
{
    struct host *h = ctx;

    buf_append_str(&h->log, "ABORT\n");
    buf_reset(&h->body);
}

static enum smtpd_decision
ev_auth(void *ctx, const char *mech, const char *user, const char *pass,
        struct smtpd_proto_verdict *v)
{
    struct host *h = ctx;

    buf_printf(&h->log, "AUTH %s %s %s\n", mech, user, pass);
    if (h->async_auth)
        return SMTPD_PENDING;
    return strcmp(user, "alice") == 0 && strcmp(pass, "secret") == 0 ? SMTPD_ACCEPT : SMTPD_REJECT;
}

static void
ev_starttls(void *ctx)
{
    buf_append_str(&((struct host *)ctx)->log, "STARTTLS\n");
}

static void
ev_quit(void *ctx)
{
    buf_append_str(&((struct host *)ctx)->log, "QUIT\n");
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

/* test_config - what most tests run with */
static void
test_config(struct smtpd_proto_config *cfg)
{
    smtpd_proto_config_init(cfg);
    cfg->host_name = "mx.test";
    cfg->max_message_size = 10000;
    cfg->max_rcpt = 100;
    cfg->max_errors = 10;
    cfg->offer_starttls = true;
}

#define GREETING "220 mx.test ESMTP service ready\r\n"
#define EHLO_PLAIN                                                           \
    "250-mx.test\r\n250-PIPELINING\r\n250-SIZE 10000\r\n"                    \
    "250-STARTTLS\r\n250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n250-DSN\r\n" \
    "250-SMTPUTF8\r\n250 CHUNKING\r\n"
#define EHLO_TLS                                                          \
    "250-mx.test\r\n250-PIPELINING\r\n250-SIZE 10000\r\n"                 \
    "250-AUTH PLAIN LOGIN\r\n250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n" \
    "250-DSN\r\n250-SMTPUTF8\r\n250 CHUNKING\r\n"
#define MAIL_OK          "250 2.1.0 Sender ok\r\n"
#define RCPT_OK          "250 2.1.5 Recipient ok\r\n"
#define GO_AHEAD         "354 End data with <CR><LF>.<CR><LF>\r\n"
#define QUEUED           "250 2.0.0 Ok: queued as TEST\r\n"
#define BYE              "221 2.0.0 Bye\r\n"
#define OK               "250 2.0.0 Ok\r\n"
#define BAD_SEQ          "503 5.5.1 "
#define ENVELOPE         "EHLO c.test\r\nMAIL FROM:<a@src.test>\r\nRCPT TO:<b@dst.test>\r\n"
#define ENVELOPE_REPLIES EHLO_PLAIN MAIL_OK RCPT_OK

static void
host_open(struct host *h, const struct smtpd_proto_config *cfg)
{
    memset(h, 0, sizeof(*h));
    buf_init(&h->log, 0);
    buf_init(&h->body, 0);
    h->s = smtpd_proto_new(cfg, &events, h);
    smtpd_proto_start(h->s);
}

/* host_default - a session with test_config(); greeting consumed */
static void
host_default(struct host *h)
{
    struct smtpd_proto_config cfg;

    test_config(&cfg);
    host_open(h, &cfg);
    assert_string_equal(smtpd_proto_output(h->s)->data, GREETING);
    buf_reset(smtpd_proto_output(h->s));
}

/* host_no_error_limit - like host_default, for tests that err a lot */
static void
host_no_error_limit(struct host *h)
{
    struct smtpd_proto_config cfg;

    test_config(&cfg);
    cfg.max_errors = 0;
    host_open(h, &cfg);
    assert_string_equal(smtpd_proto_output(h->s)->data, GREETING);
    buf_reset(smtpd_proto_output(h->s));
}

static void
host_close(struct host *h)
{
    smtpd_proto_free(h->s);
    buf_free(&h->log);
    buf_free(&h->body);
}

/* feed - send TEXT as one input */
static void
feed(struct host *h, const char *text)
{
    smtpd_proto_input(h->s, text, strlen(text));
}

/* expect - the replies so far are exactly WANT; they are consumed */
static void
expect(struct host *h, const char *want)
{
    struct buf *out = smtpd_proto_output(h->s);

    assert_string_equal(out->data ? out->data : "", want);
    buf_reset(out);
}

/* say - one exchange of a scripted session */
static void
say(struct host *h, const char *send, const char *want)
{
    feed(h, send);
    expect(h, want);
}

/* log_has - the event log contains LINE */
static bool
log_has(const struct host *h, const char *line)
{
    return h->log.data && strstr(h->log.data, line) != NULL;
}

/* b64 - base64 of N bytes (static buffer; tests only) */
static const char *
b64(const char *p, size_t n)
{
    static unsigned char out[4096];

    EVP_EncodeBlock(out, (const unsigned char *)p, (int)n);
    return (const char *)out;
}

/* --------------------------------------------------------- greeting, EHLO */

static void
test_greeting(void **state)
{
    struct host h;

    (void)state;
    host_default(&h);
    assert_int_equal(smtpd_proto_state(h.s), SMTPD_STATE_GREETING);
    say(&h, "QUIT\r\n", BYE);
    assert_true(smtpd_proto_is_closed(h.s));
    host_close(&h);
}

static void
test_refuse_service_554_only_quit(void **state)
{
    struct smtpd_proto_config cfg;
    struct host h;

    (void)state;
    test_config(&cfg);
    cfg.refuse_service = true;
    host_open(&h, &cfg);
    expect(&h, "554 5.7.1 mx.test does not accept mail from you\r\n");
    say(&h, "EHLO c.test\r\n", "503 5.5.1 No SMTP service here, only QUIT\r\n");
    say(&h, "MAIL FROM:<a@b.test>\r\n", "503 5.5.1 No SMTP service here, only QUIT\r\n");
    say(&h, "QUIT\r\n", BYE);
    assert_true(smtpd_proto_is_closed(h.s));
    host_close(&h);
}

static void
test_ehlo_plaintext(void **state)
{
    struct host h;

    (void)state;
    host_default(&h);
    say(&h, "EHLO c.test\r\n", EHLO_PLAIN);
    assert_true(log_has(&h, "EHLO c.test\n"));
    assert_int_equal(smtpd_proto_state(h.s), SMTPD_STATE_COMMAND);
    host_close(&h);
}

static void
test_ehlo_over_tls_offers_auth(void **state)
{
    struct smtpd_proto_config cfg;
    struct host h;

    (void)state;
    test_config(&cfg);
    cfg.tls_active = true;
    host_open(&h, &cfg);
    expect(&h, GREETING);
    say(&h, "ehlo c.test\r\n", EHLO_TLS);
    assert_true(smtpd_proto_is_tls(h.s));
    host_close(&h);
}

static void
test_ehlo_policy_variants(void **state)
{
    struct smtpd_proto_config cfg;
    struct host h;

    (void)state;
    test_config(&cfg);
    cfg.max_message_size = 0;
    cfg.offer_starttls = false;
    cfg.allow_plaintext_auth = true;
    cfg.allow_chunking = false;
    cfg.allow_smtputf8 = false;
    host_open(&h, &cfg);
    expect(&h, GREETING);
    say(&h, "EHLO c.test\r\n",
        "250-mx.test\r\n250-PIPELINING\r\n250-SIZE\r\n"
        "250-AUTH PLAIN LOGIN\r\n250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n"
        "250 DSN\r\n");
    host_close(&h);
}

static void
test_helo(void **state)
{
    struct host h;

    (void)state;
    host_default(&h);
    say(&h, "HELO c.test\r\n", "250 mx.test\r\n");
    assert_true(log_has(&h, "HELO c.test\n"));
    say(&h, "MAIL FROM:<a@b.test>\r\n", MAIL_OK);
    host_close(&h);
}

static void
test_ehlo_syntax(void **state)
{
    struct host h;

    (void)state;
    host_default(&h);
    say(&h, "EHLO\r\n", "501 5.5.4 Syntax: EHLO hostname\r\n");
    say(&h, "EHLO a b\r\n", "501 5.5.4 Syntax: EHLO hostname\r\n");
    say(&h, "EHLO caf\xc3\xa9.test\r\n", "501 5.5.4 Syntax: EHLO hostname\r\n");
    say(&h, "HELO\r\n", "501 5.5.4 Syntax: HELO hostname\r\n");
    assert_int_equal(smtpd_proto_state(h.s), SMTPD_STATE_GREETING);
    host_close(&h);
}

static void
test_ehlo_resets_transaction(void **state)
{
    struct host h;

    (void)state;
    host_default(&h);
    say(&h, ENVELOPE, ENVELOPE_REPLIES);
    say(&h, "EHLO again.test\r\n", EHLO_PLAIN);
    assert_true(log_has(&h, "ABORT\n"));
    say(&h, "RCPT TO:<b@dst.test>\r\n", BAD_SEQ "Need MAIL command\r\n");
    host_close(&h);
}

/* ------------------------------------------------------------------- MAIL */

static void
test_mail_before_helo(void **state)
{
    struct host h;

    (void)state;
    host_default(&h);
    say(&h, "MAIL FROM:<a@b.test>\r\n", BAD_SEQ "Send HELO/EHLO first\r\n");
    say(&h, "DATA\r\n", BAD_SEQ "Send HELO/EHLO first\r\n");
    say(&h, "STARTTLS\r\n", BAD_SEQ "Send HELO/EHLO first\r\n");
    host_close(&h);
}

static void
test_full_transaction(void **state)
{
    struct host h;

    (void)state;
    host_default(&h);
    say(&h, "EHLO c.test\r\n", EHLO_PLAIN);
    say(&h, "MAIL FROM:<a@src.test>\r\n", MAIL_OK);
    say(&h, "RCPT TO:<b@dst.test>\r\n", RCPT_OK);
    say(&h, "RCPT TO:<c@dst.test>\r\n", RCPT_OK);
    say(&h, "DATA\r\n", GO_AHEAD);
    assert_int_equal(smtpd_proto_state(h.s), SMTPD_STATE_DATA);
    say(&h, "Subject: hi\r\n\r\nbody\r\n", "");
    say(&h, ".\r\n", QUEUED);
    say(&h, "QUIT\r\n", BYE);
    assert_string_equal(h.log.data, "EHLO c.test\nMAIL <a@src.test>\nRCPT <b@dst.test>\n"
                                    "RCPT <c@dst.test>\nBEGIN\nEND size=21 long=0 8bit=0 chunked=0 "
                                    "[Subject: hi\\r\\n\\r\\nbody\\r\\n]\nQUIT\n");
    host_close(&h);
}

static void
test_transactions_repeat(void **state)
{
    struct host h;
    int i;

    (void)state;
    host_default(&h);
    say(&h, "EHLO c.test\r\n", EHLO_PLAIN);
    for (i = 0; i < 3; i++) {
        say(&h, "MAIL FROM:<a@src.test>\r\n", MAIL_OK);
        say(&h, "MAIL FROM:<a@src.test>\r\n", BAD_SEQ "Nested MAIL command\r\n");
        say(&h, "RCPT TO:<b@dst.test>\r\n", RCPT_OK);
        say(&h, "DATA\r\nx\r\n.\r\n", GO_AHEAD QUEUED);
        say(&h, "RCPT TO:<b@dst.test>\r\n", BAD_SEQ "Need MAIL command\r\n");
    }
    assert_int_equal(smtpd_proto_state(h.s), SMTPD_STATE_COMMAND);
    host_close(&h);
}

static void
test_mail_null_sender(void **state)
{
    struct host h;

    (void)state;
    host_default(&h);
    say(&h, "EHLO c.test\r\nMAIL FROM:<>\r\n", EHLO_PLAIN MAIL_OK);
    assert_true(log_has(&h, "MAIL <>\n"));
    say(&h, "RCPT TO:<>\r\n", "501 5.1.3 Bad recipient address syntax\r\n");
    host_close(&h);
}

static void
test_mail_params_decoded(void **state)
{
    struct host h;

    (void)state;
    host_default(&h);
    say(&h, "EHLO c.test\r\n", EHLO_PLAIN);
    say(&h,
        "MAIL FROM:<a@src.test> SIZE=500 BODY=8BITMIME RET=HDRS "
        "ENVID=QQ+2B+3Dx SMTPUTF8\r\n",
        MAIL_OK);
    assert_true(h.mail.size_given);
    assert_int_equal(h.mail.size, 500);
    assert_int_equal(h.mail.body, SMTPD_BODY_8BITMIME);
    assert_int_equal(h.mail.ret, SMTPD_RET_HDRS);
    assert_true(h.mail.smtputf8);
    assert_string_equal(h.mail.envid, "QQ+=x");
    say(&h, "RSET\r\n", OK);
    say(&h, "mail from: <a@src.test> body=7bit ret=full\r\n", MAIL_OK);
    assert_int_equal(h.mail.body, SMTPD_BODY_7BIT);
    assert_int_equal(h.mail.ret, SMTPD_RET_FULL);
    assert_false(h.mail.size_given);
    host_close(&h);
}

static void
test_mail_unknown_param(void **state)
{
    struct host h;

    (void)state;
    host_default(&h);
    say(&h, "EHLO c.test\r\n", EHLO_PLAIN);
    say(&h, "MAIL FROM:<a@b.test> FOO=bar\r\n", "555 5.5.4 Unsupported parameter\r\n");
    say(&h, "MAIL FROM:<a@b.test> XVERP\r\n", "555 5.5.4 Unsupported parameter\r\n");
    /* AUTH= is known only when AUTH is offered (not in plaintext here) */
    say(&h, "MAIL FROM:<a@b.test> AUTH=<>\r\n", "555 5.5.4 Unsupported parameter\r\n");
    host_close(&h);
}

static void
test_mail_param_syntax(void **state)
{
    static const char *const bad[] = {
        "MAIL FROM:<a@b.test> BODY=BINARYMIME\r\n",
        "MAIL FROM:<a@b.test> RET=ALL\r\n",
        "MAIL FROM:<a@b.test> SIZE=12x\r\n",
        "MAIL FROM:<a@b.test> SIZE=\r\n",
        "MAIL FROM:<a@b.test> SIZE=1 SIZE=2\r\n",
        "MAIL FROM:<a@b.test> ENVID=a+0D+0Ab\r\n", /* CRLF inside */
        "MAIL FROM:<a@b.test> ENVID=a+0\r\n",      /* truncated hexchar */
        "MAIL FROM:<a@b.test> SMTPUTF8=yes\r\n",
        "MAIL FROM:<a@b.test> =x\r\n",
        "MAIL FROM:<a@b.test> SIZE=123456789012345678901\r\n",
    };
    struct host h;
    size_t i;

    (void)state;
    host_no_error_limit(&h);
    say(&h, "EHLO c.test\r\n", EHLO_PLAIN);
    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        say(&h, "RSET\r\n", OK);
        say(&h, bad[i], "501 5.5.4 Bad parameter syntax\r\n");
    }
    assert_false(log_has(&h, "MAIL <"));
    host_close(&h);
}

static void
test_mail_size_exceeds(void **state)
{
    struct host h;

    (void)state;
    host_default(&h);
    say(&h, "EHLO c.test\r\n", EHLO_PLAIN);
    say(&h, "MAIL FROM:<a@b.test> SIZE=10001\r\n",
        "552 5.3.4 Message size exceeds fixed maximum message size\r\n");
    say(&h, "MAIL FROM:<a@b.test> SIZE=99999999999999999999\r\n",
        "552 5.3.4 Message size exceeds fixed maximum message size\r\n");
    say(&h, "MAIL FROM:<a@b.test> SIZE=10000\r\n", MAIL_OK);
    host_close(&h);
}

static void
test_mail_bad_sender_syntax(void **state)
{
    static const char *const bad[] = {
        "MAIL FROM:a@b.test\r\n",
        "MAIL FROM:<a@b.test\r\n",
        "MAIL FROM:<a>\r\n",
        "MAIL FROM:<a@>\r\n",
        "MAIL FROM:<@b.test>\r\n",
        "MAIL FROM:<a..b@c.test>\r\n",
        "MAIL FROM:<.a@c.test>\r\n",
        "MAIL FROM:<a@-c.test>\r\n",
        "MAIL FROM:<a@c-.test>\r\n",
        "MAIL FROM:<a@c..test>\r\n",
        "MAIL FROM:<a b@c.test>\r\n",
        "MAIL FROM:<a@[999.1.1.1]>\r\n",
        "MAIL FROM:<a@[tag:stuff]>\r\n",
        "MAIL FROM:<\"unterminated@c.test>\r\n",
        "MAIL FROM:<a@c.test>junk\r\n",
        "MAIL FROM:<Postmaster>\r\n",
    };
    struct host h;
    size_t i;

    (void)state;
    host_no_error_limit(&h);
    say(&h, "EHLO c.test\r\n", EHLO_PLAIN);
    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        say(&h, "RSET\r\n", OK);
        say(&h, bad[i], "501 5.1.7 Bad sender address syntax\r\n");
    }
    say(&h, "MAIL FROM\r\n", "501 5.5.4 Syntax: MAIL FROM:<address>\r\n");
    say(&h, "MAIL TO:<a@b.test>\r\n", "501 5.5.4 Syntax: MAIL FROM:<address>\r\n");
    host_close(&h);
}

static void
test_address_length_limits(void **state)
{
    struct smtpd_proto_config cfg;
    char line[1024], local[80], label[70];
    struct host h;

    (void)state;
    test_config(&cfg);
    cfg.max_errors = 0;
    host_open(&h, &cfg);
    expect(&h, GREETING);
    say(&h, "EHLO c.test\r\n", EHLO_PLAIN);

    memset(local, 'l', 64);
    local[64] = '\0';
    snprintf(line, sizeof(line), "MAIL FROM:<%s@b.test>\r\n", local);
    say(&h, line, MAIL_OK);
    say(&h, "RSET\r\n", OK);
    memset(local, 'l', 65);
    local[65] = '\0';
    snprintf(line, sizeof(line), "MAIL FROM:<%s@b.test>\r\n", local);
    say(&h, line, "501 5.1.7 Sender address too long\r\n");

    memset(label, 'd', 64);
    label[64] = '\0';
    snprintf(line, sizeof(line), "MAIL FROM:<a@%s.test>\r\n", label);
    say(&h, line, "501 5.1.7 Sender address too long\r\n");

    /* 4 labels of 63 + dots = 255 octets: domain OK, but the path is
       then 2 + 2 + 255 = 259 > 256 */
    memset(label, 'd', 63);
    label[63] = '\0';
    snprintf(line, sizeof(line), "MAIL FROM:<a@%s.%s.%s.%s>\r\n", label, label, label, label);
    say(&h, line, "501 5.1.7 Sender address too long\r\n");
    snprintf(line, sizeof(line), "MAIL FROM:<a@%s.%s.%s.%.59s>\r\n", label, label, label, label);
    say(&h, line, MAIL_OK); /* path of exactly 256 */
    say(&h, "RCPT TO:<b@dst.test>\r\n", RCPT_OK);
    memset(local, 'r', 65);
    local[65] = '\0';
    snprintf(line, sizeof(line), "RCPT TO:<%s@dst.test>\r\n", local);
    say(&h, line, "501 5.1.3 Recipient address too long\r\n");
    host_close(&h);
}

static void
test_mail_source_route_quoted_literals(void **state)
{
    struct host h;

    (void)state;
    host_default(&h);
    say(&h, "EHLO c.test\r\n", EHLO_PLAIN);
    say(&h, "MAIL FROM:<@a.test,@b.test:u@c.test>\r\n", MAIL_OK);
    assert_true(log_has(&h, "MAIL <u@c.test>\n"));
    say(&h, "RCPT TO:<\"john doe\\\"x\"@d.test>\r\n", RCPT_OK);
    assert_true(log_has(&h, "RCPT <\"john doe\\\"x\"@d.test>\n"));
    say(&h, "RCPT TO:<u@[192.0.2.1]>\r\n", RCPT_OK);
    say(&h, "RCPT TO:<u@[IPv6:2001:db8::1]>\r\n", RCPT_OK);
    say(&h, "RCPT TO:<u@[IPv6:zz::1]>\r\n", "501 5.1.3 Bad recipient address syntax\r\n");
    say(&h, "RCPT TO:<@a.test:u@c.test>\r\n", RCPT_OK);
    say(&h, "RCPT TO:<@a.test,u@c.test>\r\n", "501 5.1.3 Bad recipient address syntax\r\n");
    say(&h, "RCPT TO:<Postmaster>\r\n", RCPT_OK);
    assert_true(log_has(&h, "RCPT <Postmaster>\n"));
    host_close(&h);
}

static void
test_smtputf8_addresses(void **state)
{
    struct host h;

    (void)state;
    host_default(&h);
    say(&h, "EHLO c.test\r\n", EHLO_PLAIN);
    say(&h, "MAIL FROM:<pel\xc3\xa9@b.test>\r\n", "553 5.6.7 Non-ASCII address needs SMTPUTF8\r\n");
    say(&h, "MAIL FROM:<a@b.test>\r\n", MAIL_OK);
    say(&h, "RCPT TO:<jos\xc3\xa9@d.test>\r\n", "553 5.6.7 Non-ASCII address needs SMTPUTF8\r\n");
    say(&h, "RSET\r\n", OK);
    say(&h, "MAIL FROM:<pel\xc3\xa9@b.test> SMTPUTF8\r\n", MAIL_OK);
    say(&h, "RCPT TO:<jos\xc3\xa9@\xc3\xbc.test>\r\n", RCPT_OK);
    /* overlong encoding of '/', and a lone continuation byte */
    say(&h, "RCPT TO:<a\xc0\xaf@d.test>\r\n", "501 5.1.3 Bad recipient address syntax\r\n");
    say(&h, "RCPT TO:<a\x80@d.test>\r\n", "501 5.1.3 Bad recipient address syntax\r\n");
    host_close(&h);
}

/* ------------------------------------------------------------------- RCPT */

static void
test_rcpt_before_mail(void **state)
{
    struct host h;

    (void)state;
    host_default(&h);
    say(&h, "EHLO c.test\r\n", EHLO_PLAIN);
    say(&h, "RCPT TO:<b@dst.test>\r\n", BAD_SEQ "Need MAIL command\r\n");
    say(&h, "RCPT <b@dst.test>\r\n", BAD_SEQ "Need MAIL command\r\n");
    say(&h, "MAIL FROM:<a@b.test>\r\nRCPT <b@dst.test>\r\n",
        MAIL_OK "501 5.5.4 Syntax: RCPT TO:<address>\r\n");
    host_close(&h);
}

static void
test_rcpt_dsn_params(void **state)
{
    struct host h;

    (void)state;
    host_default(&h);
    say(&h, ENVELOPE, ENVELOPE_REPLIES);
    say(&h, "RCPT TO:<c@dst.test> NOTIFY=SUCCESS,FAILURE,DELAY ORCPT=rfc822;c+2Bx+40dst.test\r\n",
        RCPT_OK);
    assert_int_equal(h.rcpt.notify,
                     SMTPD_NOTIFY_SUCCESS | SMTPD_NOTIFY_FAILURE | SMTPD_NOTIFY_DELAY);
    assert_string_equal(h.rcpt.orcpt_type, "rfc822");
    assert_string_equal(h.rcpt.orcpt, "c+x@dst.test");
    say(&h, "RCPT TO:<d@dst.test> notify=never\r\n", RCPT_OK);
    assert_int_equal(h.rcpt.notify, SMTPD_NOTIFY_NEVER);
    assert_string_equal(h.rcpt.orcpt_type, "");
    host_close(&h);
}

static void
test_rcpt_param_errors(void **state)
{
    static const char *const bad[] = {
        "RCPT TO:<c@dst.test> NOTIFY=NEVER,SUCCESS\r\n",
        "RCPT TO:<c@dst.test> NOTIFY=SOMETIMES\r\n",
        "RCPT TO:<c@dst.test> NOTIFY=SUCCESS,SUCCESS\r\n",
        "RCPT TO:<c@dst.test> NOTIFY=\r\n",
        "RCPT TO:<c@dst.test> ORCPT=c@dst.test\r\n",
        "RCPT TO:<c@dst.test> ORCPT=rfc822;\r\n",
        "RCPT TO:<c@dst.test> ORCPT=rfc822;a+0Ab\r\n",
        "RCPT TO:<c@dst.test> ORCPT=rfc822;a+ZZb\r\n",
        "RCPT TO:<c@dst.test> NOTIFY=DELAY NOTIFY=DELAY\r\n",
    };
    struct smtpd_proto_config cfg;
    struct host h;
    size_t i;

    (void)state;
    test_config(&cfg);
    cfg.max_errors = 0;
    host_open(&h, &cfg);
    expect(&h, GREETING);
    say(&h, ENVELOPE, ENVELOPE_REPLIES);
    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        say(&h, bad[i], "501 5.5.4 Bad parameter syntax\r\n");
    say(&h, "RCPT TO:<c@dst.test> SIZE=1\r\n", "555 5.5.4 Unsupported parameter\r\n");
    host_close(&h);
}

static void
test_rcpt_bad_syntax(void **state)
{
    struct host h;

    (void)state;
    host_default(&h);
    say(&h, ENVELOPE, ENVELOPE_REPLIES);
    say(&h, "RCPT TO:b@dst.test\r\n", "501 5.1.3 Bad recipient address syntax\r\n");
    say(&h, "RCPT TO:<b@>\r\n", "501 5.1.3 Bad recipient address syntax\r\n");
    say(&h, "RCPT TO:<b@dst.test\r\n", "501 5.1.3 Bad recipient address syntax\r\n");
    say(&h, "RCPT TO:\r\n", "501 5.1.3 Bad recipient address syntax\r\n");
    host_close(&h);
}

static void
test_rcpt_relay_denied_not_counted(void **state)
{
    struct host h;
    int i;

    (void)state;
    host_default(&h);
    say(&h, ENVELOPE, ENVELOPE_REPLIES);
    for (i = 0; i < 25; i++)
        say(&h, "RCPT TO:<x@deny.test>\r\n", "550 5.7.1 Relaying denied\r\n");
    assert_false(smtpd_proto_is_closed(h.s));
    say(&h, "DATA\r\n.\r\n", GO_AHEAD QUEUED);
    host_close(&h);
}

static void
test_rcpt_host_verdict_sanitised(void **state)
{
    struct host h;

    (void)state;
    host_default(&h);
    say(&h, ENVELOPE, ENVELOPE_REPLIES);
    /* host said 451 with a 5.x.x code and CR LF in its text */
    say(&h, "RCPT TO:<x@weird.test>\r\n", "451 4.0.0 Try??later?\r\n");
    host_close(&h);
}

static void
test_rcpt_max(void **state)
{
    struct smtpd_proto_config cfg;
    struct host h;

    (void)state;
    test_config(&cfg);
    cfg.max_rcpt = 2;
    host_open(&h, &cfg);
    expect(&h, GREETING);
    say(&h, ENVELOPE, ENVELOPE_REPLIES);
    say(&h, "RCPT TO:<c@dst.test>\r\n", RCPT_OK);
    say(&h, "RCPT TO:<d@dst.test>\r\n", "452 4.5.3 Too many recipients\r\n");
    say(&h, "DATA\r\n.\r\n", GO_AHEAD QUEUED);
    say(&h, "MAIL FROM:<a@b.test>\r\nRCPT TO:<d@dst.test>\r\n", MAIL_OK RCPT_OK);
    host_close(&h);
}

/* smtpd_proto_set_limits - the host re-resolved its policy (after AUTH) */
static void
test_set_limits(void **state)
{
    struct smtpd_proto_config cfg;
    struct host h;

    (void)state;
    test_config(&cfg);
    cfg.max_rcpt = 1;
    host_open(&h, &cfg);
    expect(&h, GREETING);
    say(&h, ENVELOPE, ENVELOPE_REPLIES);
    say(&h, "RCPT TO:<c@dst.test>\r\n", "452 4.5.3 Too many recipients\r\n");
    say(&h, "RSET\r\n", "250 2.0.0 Ok\r\n");
    smtpd_proto_set_limits(h.s, 0, 2);
    say(&h, "MAIL FROM:<a@b.test>\r\nRCPT TO:<d@dst.test>\r\nRCPT TO:<e@dst.test>\r\n",
        MAIL_OK RCPT_OK RCPT_OK);
    say(&h, "RCPT TO:<f@dst.test>\r\n", "452 4.5.3 Too many recipients\r\n");
    host_close(&h);
}

static void
test_ten_thousand_rcpts(void **state)
{
    struct host h;
    struct buf in, want;
    int i;

    (void)state;
    host_default(&h);
    buf_init(&in, 0);
    buf_init(&want, 0);
    buf_append_str(&in, ENVELOPE);
    buf_append_str(&want, ENVELOPE_REPLIES);
    for (i = 1; i < 10000; i++) {
        buf_printf(&in, "RCPT TO:<r%d@dst.test>\r\n", i);
        buf_append_str(&want, i < 100 ? RCPT_OK : "452 4.5.3 Too many recipients\r\n");
    }
    buf_append_str(&in, "DATA\r\nhello\r\n.\r\n");
    buf_append_str(&want, GO_AHEAD QUEUED);
    smtpd_proto_input(h.s, in.data, in.len);
    expect(&h, want.data);
    assert_false(smtpd_proto_is_closed(h.s));
    assert_true(log_has(&h, "RCPT <r99@dst.test>\n"));
    assert_false(log_has(&h, "RCPT <r100@dst.test>\n"));
    buf_free(&in);
    buf_free(&want);
    host_close(&h);
}

/* ------------------------------------------------------------------- DATA */

static void
test_data_sequence_errors(void **state)
{
    struct host h;

    (void)state;
    host_default(&h);
    say(&h, "EHLO c.test\r\n", EHLO_PLAIN);
    say(&h, "DATA\r\n", BAD_SEQ "Need MAIL command\r\n");
    say(&h, "MAIL FROM:<a@b.test>\r\nDATA\r\n", MAIL_OK BAD_SEQ "Need RCPT command\r\n");
    say(&h, "RCPT TO:<x@deny.test>\r\nDATA\r\n",
        "550 5.7.1 Relaying denied\r\n554 5.5.1 No valid recipients\r\n");
    say(&h, "RCPT TO:<x@dst.test>\r\nDATA now\r\n", RCPT_OK "501 5.5.4 Syntax: DATA\r\n");
    assert_false(log_has(&h, "BEGIN"));
    host_close(&h);
}

static void
test_data_dot_unstuffing(void **state)
{
    struct host h;

    (void)state;
    host_default(&h);
    say(&h, ENVELOPE "DATA\r\n", ENVELOPE_REPLIES GO_AHEAD);
    say(&h, "..leading\r\n..\r\n...\r\na.b.\r\n. x\r\n.\r\n", QUEUED);
    assert_true(log_has(&h, "[.leading\\r\\n.\\r\\n..\\r\\na.b.\\r\\n x\\r\\n]"));
    host_close(&h);
}

static void
test_data_empty_message(void **state)
{
    struct host h;

    (void)state;
    host_default(&h);
    say(&h, ENVELOPE "DATA\r\n.\r\n", ENVELOPE_REPLIES GO_AHEAD QUEUED);
    assert_true(log_has(&h, "END size=0 long=0 8bit=0 chunked=0 []\n"));
    host_close(&h);
}

static void
test_data_end_split_everywhere(void **state)
{
    static const char tail[] = "line\r\n.\r\nNOOP\r\n";
    size_t cut;

    (void)state;
    for (cut = 0; cut <= sizeof(tail) - 1; cut++) {
        struct host h;

        host_default(&h);
        say(&h, ENVELOPE "DATA\r\n", ENVELOPE_REPLIES GO_AHEAD);
        smtpd_proto_input(h.s, tail, cut);
        smtpd_proto_input(h.s, tail + cut, sizeof(tail) - 1 - cut);
        expect(&h, QUEUED OK);
        assert_true(log_has(&h, "[line\\r\\n]"));
        host_close(&h);
    }
}

static void
test_data_bare_lf_rejected(void **state)
{
    struct host h;

    (void)state;
    host_default(&h);
    say(&h, ENVELOPE "DATA\r\n", ENVELOPE_REPLIES GO_AHEAD);
    say(&h, "one\ntwo\r\n", "");
    assert_true(log_has(&h, "ABORT\n"));
    say(&h, ".\r\n", "550 5.6.2 Bare CR or LF in message content\r\n");
    assert_false(log_has(&h, "END"));
    /* the session goes on: a new transaction works */
    say(&h, "MAIL FROM:<a@b.test>\r\nRCPT TO:<b@dst.test>\r\nDATA\r\nok\r\n.\r\n",
        MAIL_OK RCPT_OK GO_AHEAD QUEUED);
    host_close(&h);
}

static void
test_data_bare_cr_rejected(void **state)
{
    struct host h;

    (void)state;
    host_default(&h);
    say(&h, ENVELOPE "DATA\r\n", ENVELOPE_REPLIES GO_AHEAD);
    say(&h, "one\rtwo\r\n.\r\n", "550 5.6.2 Bare CR or LF in message content\r\n");
    say(&h, "MAIL FROM:<a@b.test>\r\nRCPT TO:<b@dst.test>\r\nDATA\r\n.\rx\r\n.\r\n",
        MAIL_OK RCPT_OK GO_AHEAD "550 5.6.2 Bare CR or LF in message content\r\n");
    host_close(&h);
}

/* SMTP smuggling: "\n.\n", "\r\n.\n" and "\n.\r\n" must not end DATA */
static void
test_data_smuggling_not_end(void **state)
{
    static const char *const tricks[] = {
        "a\n.\nMAIL FROM:<evil@x.test>\r\n",
        "a\r\n.\nMAIL FROM:<evil@x.test>\r\n",
        "a\n.\r\nMAIL FROM:<evil@x.test>\r\n",
        "a\r.\rMAIL FROM:<evil@x.test>\r\n",
    };
    size_t i;

    (void)state;
    for (i = 0; i < sizeof(tricks) / sizeof(tricks[0]); i++) {
        struct host h;

        host_default(&h);
        say(&h, ENVELOPE "DATA\r\n", ENVELOPE_REPLIES GO_AHEAD);
        say(&h, tricks[i], "");
        assert_int_equal(smtpd_proto_state(h.s), SMTPD_STATE_DATA);
        assert_false(log_has(&h, "evil"));
        say(&h, ".\r\n", "550 5.6.2 Bare CR or LF in message content\r\n");
        host_close(&h);
    }
}

static void
test_data_size_overrun(void **state)
{
    struct host h;
    char block[1000];
    int i;

    (void)state;
    host_default(&h);
    memset(block, 'x', sizeof(block) - 2);
    memcpy(block + sizeof(block) - 2, "\r\n", 2);
    say(&h, ENVELOPE "DATA\r\n", ENVELOPE_REPLIES GO_AHEAD);
    for (i = 0; i < 10; i++)
        smtpd_proto_input(h.s, block, sizeof(block));
    expect(&h, "");
    assert_false(log_has(&h, "ABORT")); /* exactly 10000: fits */
    smtpd_proto_input(h.s, "y\r\n", 3);
    assert_true(log_has(&h, "ABORT\n"));
    for (i = 0; i < 50; i++) /* keeps reading, drops it */
        smtpd_proto_input(h.s, block, sizeof(block));
    say(&h, ".\r\n", "552 5.3.4 Message size exceeds fixed maximum message size\r\n");
    assert_false(log_has(&h, "END"));
    say(&h, "NOOP\r\n", OK);
    host_close(&h);
}

static void
test_data_long_lines_and_8bit(void **state)
{
    struct host h;
    char line[1200];

    (void)state;
    host_default(&h);
    say(&h, ENVELOPE "DATA\r\n", ENVELOPE_REPLIES GO_AHEAD);
    memset(line, 'a', 998);
    memcpy(line + 998, "\r\n", 2);
    smtpd_proto_input(h.s, line, 1000); /* 998: fine */
    memset(line, 'b', 999);
    memcpy(line + 999, "\r\n", 2);
    smtpd_proto_input(h.s, line, 1001); /* 999: long */
    say(&h, "caf\xc3\xa9\r\n.\r\n", QUEUED);
    assert_true(log_has(&h, "END size=2008 long=1 8bit=1 chunked=0"));
    host_close(&h);
}

static void
test_data_begin_refused(void **state)
{
    struct host h;

    (void)state;
    host_default(&h);
    h.refuse_data = true;
    say(&h, ENVELOPE "DATA\r\n", ENVELOPE_REPLIES "451 4.3.0 Queue unavailable\r\n");
    assert_int_equal(smtpd_proto_state(h.s), SMTPD_STATE_COMMAND);
    h.refuse_data = false;
    say(&h, "DATA\r\n.\r\n", GO_AHEAD QUEUED);
    host_close(&h);
}

static void
test_data_commit_failure(void **state)
{
    struct host h;

    (void)state;
    host_default(&h);
    h.async_data = true;
    say(&h, ENVELOPE "DATA\r\nx\r\n.\r\n", ENVELOPE_REPLIES GO_AHEAD);
    smtpd_proto_data_result(h.s, 452, "4.3.1", "Insufficient system storage");
    expect(&h, "452 4.3.1 Insufficient system storage\r\n");
    say(&h, "RCPT TO:<b@dst.test>\r\n", BAD_SEQ "Need MAIL command\r\n");
    host_close(&h);
}

static void
test_pipelined_transaction_one_input(void **state)
{
    struct host h;

    (void)state;
    host_default(&h);
    say(&h,
        "EHLO c.test\r\nMAIL FROM:<a@src.test>\r\nRCPT TO:<b@dst.test>\r\n"
        "RCPT TO:<x@deny.test>\r\nDATA\r\nhi\r\n.\r\nMAIL FROM:<>\r\n"
        "RCPT TO:<c@dst.test>\r\nDATA\r\n..\r\n.\r\nQUIT\r\n",
        EHLO_PLAIN MAIL_OK RCPT_OK
        "550 5.7.1 Relaying denied\r\n" GO_AHEAD QUEUED MAIL_OK RCPT_OK GO_AHEAD QUEUED BYE);
    assert_true(log_has(&h, "[hi\\r\\n]"));
    assert_true(log_has(&h, "[.\\r\\n]"));
    assert_true(smtpd_proto_is_closed(h.s));
    host_close(&h);
}

/* ------------------------------------------------------------------- BDAT */

static void
test_bdat_single_last(void **state)
{
    struct host h;

    (void)state;
    host_default(&h);
    say(&h, ENVELOPE "BDAT 10 LAST\r\n.\r\nab\r\n.\r\n", ENVELOPE_REPLIES QUEUED);
    assert_true(log_has(&h, "END size=10 long=0 8bit=0 chunked=1 [.\\r\\nab\\r\\n.\\r\\n]"));
    host_close(&h);
}

static void
test_bdat_across_inputs(void **state)
{
    struct host h;

    (void)state;
    host_default(&h);
    say(&h, ENVELOPE, ENVELOPE_REPLIES);
    say(&h, "BDAT 10\r\nabc", "");
    assert_int_equal(smtpd_proto_state(h.s), SMTPD_STATE_BDAT);
    say(&h, "defg", "");
    say(&h, "hij", "250 2.0.0 10 octets received\r\n");
    say(&h, "BDAT 5 last\r\nKLMNONOOP\r\n", QUEUED OK);
    assert_true(log_has(&h, "[abcdefghijKLMNO]"));
    host_close(&h);
}

static void
test_bdat_zero_last(void **state)
{
    struct host h;

    (void)state;
    host_default(&h);
    say(&h, ENVELOPE "BDAT 3\r\nabcBDAT 0 LAST\r\n",
        ENVELOPE_REPLIES "250 2.0.0 3 octets received\r\n" QUEUED);
    assert_true(log_has(&h, "END size=3 long=0 8bit=0 chunked=1 [abc]"));
    say(&h, ENVELOPE "BDAT 0 LAST\r\n", EHLO_PLAIN MAIL_OK RCPT_OK QUEUED);
    host_close(&h);
}

static void
test_bdat_refused_still_consumed(void **state)
{
    struct smtpd_proto_config cfg;
    struct host h;

    (void)state;
    host_default(&h);
    say(&h, "EHLO c.test\r\n", EHLO_PLAIN);
    /* the chunk contains what looks like commands: they must not run */
    say(&h, "BDAT 12\r\nQUIT\r\nRSET\r\nNOOP\r\n", BAD_SEQ "Need MAIL command\r\n" OK);
    say(&h, "MAIL FROM:<a@b.test>\r\nBDAT 4 LAST\r\nQUIT", MAIL_OK BAD_SEQ "Need RCPT command\r\n");
    assert_false(smtpd_proto_is_closed(h.s));
    host_close(&h);

    test_config(&cfg);
    cfg.allow_chunking = false;
    host_open(&h, &cfg);
    expect(&h, GREETING);
    say(&h, "HELO c.test\r\nBDAT 6\r\nQUIT\r\nNOOP\r\n",
        "250 mx.test\r\n502 5.5.1 BDAT not available\r\n" OK);
    host_close(&h);
}

static void
test_bdat_syntax_and_data_mix(void **state)
{
    struct host h;

    (void)state;
    host_default(&h);
    say(&h, ENVELOPE, ENVELOPE_REPLIES);
    say(&h, "BDAT\r\n", "501 5.5.4 Syntax: BDAT size [LAST]\r\n");
    say(&h, "BDAT x\r\n", "501 5.5.4 Syntax: BDAT size [LAST]\r\n");
    say(&h, "BDAT 5 LASTX\r\n", "501 5.5.4 Syntax: BDAT size [LAST]\r\n");
    say(&h, "BDAT -1\r\n", "501 5.5.4 Syntax: BDAT size [LAST]\r\n");
    say(&h, "BDAT 2\r\nab", "250 2.0.0 2 octets received\r\n");
    say(&h, "DATA\r\n", BAD_SEQ "DATA not allowed after BDAT\r\n");
    say(&h, "RSET\r\n", OK);
    assert_true(log_has(&h, "ABORT\n"));
    host_close(&h);
}

static void
test_bdat_size_overrun(void **state)
{
    struct host h;
    static char chunk[6000];

    (void)state;
    host_default(&h);
    memset(chunk, 'z', sizeof(chunk));
    say(&h, ENVELOPE "BDAT 6000\r\n", ENVELOPE_REPLIES);
    smtpd_proto_input(h.s, chunk, sizeof(chunk));
    expect(&h, "250 2.0.0 6000 octets received\r\n");
    say(&h, "BDAT 6000 LAST\r\n", "");
    smtpd_proto_input(h.s, chunk, sizeof(chunk));
    expect(&h, "552 5.3.4 Message size exceeds fixed maximum message size\r\n");
    assert_true(log_has(&h, "ABORT\n"));
    assert_false(log_has(&h, "END"));
    say(&h, "BDAT 1 LAST\r\nz", BAD_SEQ "Need MAIL command\r\n");
    host_close(&h);
}

/* ------------------------------------------------------ small commands */

static void
test_rset(void **state)
{
    struct host h;

    (void)state;
    host_default(&h);
    say(&h, "RSET\r\n", OK);
    say(&h, ENVELOPE, ENVELOPE_REPLIES);
    say(&h, "RSET now\r\n", "501 5.5.4 Syntax: RSET\r\n");
    say(&h, "RSET\r\n", OK);
    assert_true(log_has(&h, "ABORT\n"));
    say(&h, "RCPT TO:<b@dst.test>\r\n", BAD_SEQ "Need MAIL command\r\n");
    host_close(&h);
}

static void
test_noop_vrfy_help_expn(void **state)
{
    struct host h;

    (void)state;
    host_default(&h);
    say(&h, "NOOP\r\n", OK);
    say(&h, "NOOP anything\r\n", OK);
    say(&h, "VRFY bob\r\n",
        "252 2.5.2 Cannot VRFY user, but will accept message and attempt delivery\r\n");
    say(&h, "VRFY\r\n", "501 5.5.4 Syntax: VRFY address\r\n");
    say(&h, "HELP\r\n",
        "214 2.0.0 Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP "
        "QUIT VRFY HELP STARTTLS AUTH\r\n");
    say(&h, "EXPN list\r\n", "502 5.5.1 EXPN not supported\r\n");
    host_close(&h);
}

static void
test_quit_mid_transaction(void **state)
{
    struct host h;

    (void)state;
    host_default(&h);
    say(&h, ENVELOPE "QUIT\r\nNOOP\r\n", ENVELOPE_REPLIES BYE);
    assert_true(log_has(&h, "ABORT\nQUIT\n"));
    assert_true(smtpd_proto_is_closed(h.s));
    assert_false(smtpd_proto_want_input(h.s));
    say(&h, "NOOP\r\n", "");
    host_close(&h);
}

static void
test_unknown_and_empty_command(void **state)
{
    struct host h;

    (void)state;
    host_default(&h);
    say(&h, "FOO bar\r\n", "500 5.5.1 Command unrecognized\r\n");
    say(&h, "\r\n", "500 5.5.1 Empty command\r\n");
    say(&h, "MAILFROM:<a@b.test>\r\n", "500 5.5.1 Command unrecognized\r\n");
    say(&h, "noop\r\n", OK);
    host_close(&h);
}

/* --------------------------------------------------- lines and bad bytes */

static void
test_line_too_long(void **state)
{
    struct smtpd_proto_config cfg;
    struct host h;
    char line[600];

    (void)state;
    test_config(&cfg);
    cfg.max_line = 512;
    host_open(&h, &cfg);
    expect(&h, GREETING);
    memset(line, 'A', sizeof(line));
    memcpy(line, "NOOP ", 5);
    memcpy(line + 510, "\r\n", 2); /* exactly 512: fine */
    smtpd_proto_input(h.s, line, 512);
    expect(&h, OK);
    line[510] = 'A';
    memcpy(line + 511, "\r\n", 2); /* 513: too long */
    smtpd_proto_input(h.s, line, 513);
    expect(&h, "500 5.5.2 Line too long\r\n");
    say(&h, "NOOP\r\n", OK);
    host_close(&h);
}

static void
test_line_too_long_partial(void **state)
{
    struct smtpd_proto_config cfg;
    struct host h;
    char junk[4096];
    int i;

    (void)state;
    test_config(&cfg);
    cfg.max_line = 512;
    host_open(&h, &cfg);
    expect(&h, GREETING);
    memset(junk, 'A', sizeof(junk));
    smtpd_proto_input(h.s, junk, 511); /* could still end: wait */
    expect(&h, "");
    smtpd_proto_input(h.s, junk, 1); /* 512 w/o LF: can't fit */
    expect(&h, "500 5.5.2 Line too long\r\n");
    for (i = 0; i < 100; i++) /* the rest is skipped */
        smtpd_proto_input(h.s, junk, sizeof(junk));
    expect(&h, "");
    say(&h, "AAAA\r\nNOOP\r\n", OK);
    host_close(&h);
}

static void
test_nul_and_control_bytes(void **state)
{
    struct host h;

    (void)state;
    host_default(&h);
    smtpd_proto_input(h.s, "NO\0OP\r\n", 7);
    expect(&h, "500 5.5.2 NUL character not allowed\r\n");
    smtpd_proto_input(h.s, "EHLO a\0b\r\n", 10);
    expect(&h, "500 5.5.2 NUL character not allowed\r\n");
    say(&h, "NOOP\rQUIT\r\n", "500 5.5.2 Invalid character in command\r\n");
    say(&h, "NOOP \x1b[2J\r\n", "500 5.5.2 Invalid character in command\r\n");
    say(&h, "EHLO c.test\r\n", EHLO_PLAIN);
    smtpd_proto_input(h.s, "MAIL FROM:<a\0@b.test>\r\n", 23);
    expect(&h, "500 5.5.2 NUL character not allowed\r\n");
    host_close(&h);
}

static void
test_bare_lf_ends_command(void **state)
{
    struct host h;

    (void)state;
    host_default(&h);
    say(&h, "EHLO c.test\nMAIL FROM:<a@b.test>\n", EHLO_PLAIN MAIL_OK);
    host_close(&h);
}

static void
test_too_many_errors(void **state)
{
    struct host h;
    int i;

    (void)state;
    host_default(&h);
    say(&h, ENVELOPE, ENVELOPE_REPLIES);
    for (i = 0; i < 9; i++)
        say(&h, "BOGUS\r\n", "500 5.5.1 Command unrecognized\r\n");
    assert_false(smtpd_proto_is_closed(h.s));
    say(&h, "BOGUS\r\nNOOP\r\n", "500 5.5.1 Command unrecognized\r\n421 4.7.0 Too many errors\r\n");
    assert_true(smtpd_proto_is_closed(h.s));
    assert_true(log_has(&h, "ABORT\n"));
    say(&h, "QUIT\r\n", "");
    host_close(&h);
}

static void
test_errors_mixed_count(void **state)
{
    struct host h;

    (void)state;
    host_default(&h);
    /* sequence, syntax, param, unknown, too long, NUL, auth: all count */
    say(&h, "MAIL FROM:<a@b.test>\r\n", BAD_SEQ "Send HELO/EHLO first\r\n");
    say(&h, "EHLO\r\n", "501 5.5.4 Syntax: EHLO hostname\r\n");
    say(&h, "EHLO c.test\r\n", EHLO_PLAIN);
    say(&h, "MAIL FROM:<a@b.test> X=1\r\n", "555 5.5.4 Unsupported parameter\r\n");
    say(&h, "X\r\n", "500 5.5.1 Command unrecognized\r\n");
    say(&h, "AUTH PLAIN\r\n", BAD_SEQ "AUTH not available\r\n");
    say(&h, "RCPT TO:<a@b.test>\r\n", BAD_SEQ "Need MAIL command\r\n");
    say(&h, "MAIL FROM:<a@b.test>\r\nRCPT TO:<x@deny.test>\r\n",
        MAIL_OK "550 5.7.1 Relaying denied\r\n"); /* not counted */
    say(&h, "RCPT TO:<x>\r\n", "501 5.1.3 Bad recipient address syntax\r\n");
    say(&h, "DATA\r\n", "554 5.5.1 No valid recipients\r\n");
    say(&h, "STARTTLS\r\n", BAD_SEQ "MAIL transaction in progress\r\n");
    assert_false(smtpd_proto_is_closed(h.s));
    say(&h, "VRFY\r\n", "501 5.5.4 Syntax: VRFY address\r\n421 4.7.0 Too many errors\r\n");
    assert_true(smtpd_proto_is_closed(h.s));
    host_close(&h);
}

/* --------------------------------------------------------------- STARTTLS */

static void
test_starttls_injection_discarded(void **state)
{
    struct host h;

    (void)state;
    host_default(&h);
    say(&h, "EHLO c.test\r\n", EHLO_PLAIN);
    say(&h, "STARTTLS\r\nMAIL FROM:<evil@x.test>\r\nRCPT TO:<v@dst.test>\r\n",
        "220 2.0.0 Ready to start TLS\r\n");
    assert_int_equal(smtpd_proto_state(h.s), SMTPD_STATE_TLS_HANDSHAKE);
    say(&h, "NOOP\r\n", ""); /* plaintext: dropped */
    assert_int_equal(smtpd_proto_discarded(h.s), 25 + 22 + 6);
    smtpd_proto_tls_started(h.s);
    assert_true(smtpd_proto_is_tls(h.s));
    /* a fresh session: the injected MAIL did not happen; EHLO again */
    say(&h, "MAIL FROM:<a@b.test>\r\n", BAD_SEQ "Send HELO/EHLO first\r\n");
    say(&h, "EHLO c.test\r\n", EHLO_TLS);
    say(&h, "STARTTLS\r\n", BAD_SEQ "STARTTLS not available\r\n");
    assert_false(log_has(&h, "evil"));
    assert_true(log_has(&h, "STARTTLS\n"));
    host_close(&h);
}

static void
test_starttls_errors(void **state)
{
    struct smtpd_proto_config cfg;
    struct host h;

    (void)state;
    host_default(&h);
    say(&h, "EHLO c.test\r\n", EHLO_PLAIN);
    say(&h, "STARTTLS now\r\n", "501 5.5.4 Syntax: STARTTLS\r\n");
    say(&h, "MAIL FROM:<a@b.test>\r\nSTARTTLS\r\n",
        MAIL_OK BAD_SEQ "MAIL transaction in progress\r\n");
    host_close(&h);

    test_config(&cfg);
    cfg.offer_starttls = false;
    host_open(&h, &cfg);
    expect(&h, GREETING);
    say(&h, "EHLO c.test\r\nSTARTTLS\r\n",
        "250-mx.test\r\n250-PIPELINING\r\n250-SIZE 10000\r\n"
        "250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n250-DSN\r\n250-SMTPUTF8\r\n250 "
        "CHUNKING\r\n" BAD_SEQ "STARTTLS not available\r\n");
    host_close(&h);
}

/* STARTTLS pipelined behind a message that waits for the commit */
static void
test_starttls_after_held_input(void **state)
{
    struct host h;

    (void)state;
    host_default(&h);
    h.async_data = true;
    say(&h, ENVELOPE "DATA\r\nx\r\n.\r\nSTARTTLS\r\nMAIL FROM:<evil@x.test>\r\n",
        ENVELOPE_REPLIES GO_AHEAD);
    smtpd_proto_data_result(h.s, 250, "2.0.0", "Ok: queued as TEST");
    expect(&h, QUEUED "220 2.0.0 Ready to start TLS\r\n");
    assert_int_equal(smtpd_proto_state(h.s), SMTPD_STATE_TLS_HANDSHAKE);
    assert_false(log_has(&h, "evil"));
    host_close(&h);
}

/* ------------------------------------------------------------------- AUTH */

/* host_tls - a session over implicit TLS, EHLO done */
static void
host_tls(struct host *h)
{
    struct smtpd_proto_config cfg;

    test_config(&cfg);
    cfg.tls_active = true;
    host_open(h, &cfg);
    expect(h, GREETING);
    say(h, "EHLO c.test\r\n", EHLO_TLS);
}

static void
test_auth_not_offered_plaintext(void **state)
{
    struct host h;

    (void)state;
    host_default(&h);
    say(&h, "EHLO c.test\r\n", EHLO_PLAIN);
    say(&h, "AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n", BAD_SEQ "AUTH not available\r\n");
    assert_false(log_has(&h, "AUTH"));
    host_close(&h);
}

static void
test_auth_plain_initial_success(void **state)
{
    struct host h;
    char line[4200];

    (void)state;
    host_tls(&h);
    snprintf(line, sizeof(line), "AUTH PLAIN %s\r\n", b64("\0alice\0secret", 13));
    say(&h, line, "235 2.7.0 Authentication successful\r\n");
    assert_true(log_has(&h, "AUTH PLAIN alice secret\n"));
    assert_string_equal(smtpd_proto_auth_user(h.s), "alice");
    say(&h, line, BAD_SEQ "Already authenticated\r\n");
    /* authzid equal to authcid is fine too (new session) */
    host_close(&h);
    host_tls(&h);
    snprintf(line, sizeof(line), "AUTH PLAIN %s\r\n", b64("alice\0alice\0secret", 18));
    say(&h, line, "235 2.7.0 Authentication successful\r\n");
    host_close(&h);
}

static void
test_auth_plain_continuation(void **state)
{
    struct host h;
    char line[4200];

    (void)state;
    host_tls(&h);
    say(&h, "AUTH PLAIN\r\n", "334 \r\n");
    assert_int_equal(smtpd_proto_state(h.s), SMTPD_STATE_AUTH);
    snprintf(line, sizeof(line), "%s\r\n", b64("\0alice\0secret", 13));
    say(&h, line, "235 2.7.0 Authentication successful\r\n");
    assert_int_equal(smtpd_proto_state(h.s), SMTPD_STATE_COMMAND);
    host_close(&h);
}

static void
test_auth_plain_failure(void **state)
{
    struct host h;
    char line[4200];

    (void)state;
    host_tls(&h);
    snprintf(line, sizeof(line), "AUTH PLAIN %s\r\n", b64("\0alice\0wrong", 12));
    say(&h, line, "535 5.7.8 Authentication credentials invalid\r\n");
    assert_null(smtpd_proto_auth_user(h.s));
    /* someone else's identity (authzid) is refused without asking */
    snprintf(line, sizeof(line), "AUTH PLAIN %s\r\n", b64("bob\0alice\0secret", 16));
    say(&h, line, "535 5.7.8 Authentication credentials invalid\r\n");
    /* structure errors */
    snprintf(line, sizeof(line), "AUTH PLAIN %s\r\n", b64("alice-secret", 12));
    say(&h, line, "501 5.5.2 Invalid PLAIN response\r\n");
    snprintf(line, sizeof(line), "AUTH PLAIN %s\r\n", b64("\0alice\0sec\0ret", 14));
    say(&h, line, "501 5.5.2 Invalid PLAIN response\r\n");
    snprintf(line, sizeof(line), "AUTH PLAIN %s\r\n", b64("\0ali\r\nce\0secret", 15));
    say(&h, line, "501 5.5.2 Invalid PLAIN response\r\n");
    say(&h, "AUTH PLAIN =\r\n", "501 5.5.2 Invalid PLAIN response\r\n");
    assert_int_equal(smtpd_proto_state(h.s), SMTPD_STATE_COMMAND);
    host_close(&h);
}

static void
test_auth_login_success(void **state)
{
    struct host h;
    char line[4200];

    (void)state;
    host_tls(&h);
    say(&h, "AUTH LOGIN\r\n", "334 VXNlcm5hbWU6\r\n");
    snprintf(line, sizeof(line), "%s\r\n", b64("alice", 5));
    say(&h, line, "334 UGFzc3dvcmQ6\r\n");
    snprintf(line, sizeof(line), "%s\r\n", b64("secret", 6));
    say(&h, line, "235 2.7.0 Authentication successful\r\n");
    assert_true(log_has(&h, "AUTH LOGIN alice secret\n"));
    say(&h, "MAIL FROM:<a@b.test> AUTH=alice+40b.test\r\n", MAIL_OK);
    assert_string_equal(h.mail.auth, "alice@b.test");
    host_close(&h);

    /* with the user name as initial response */
    host_tls(&h);
    snprintf(line, sizeof(line), "AUTH LOGIN %s\r\n", b64("alice", 5));
    say(&h, line, "334 UGFzc3dvcmQ6\r\n");
    snprintf(line, sizeof(line), "%s\r\n", b64("secret", 6));
    say(&h, line, "235 2.7.0 Authentication successful\r\n");
    host_close(&h);
}

static void
test_auth_login_failure(void **state)
{
    struct host h;
    char line[4200];

    (void)state;
    host_tls(&h);
    say(&h, "auth login\r\n", "334 VXNlcm5hbWU6\r\n");
    snprintf(line, sizeof(line), "%s\r\n", b64("alice", 5));
    say(&h, line, "334 UGFzc3dvcmQ6\r\n");
    snprintf(line, sizeof(line), "%s\r\n", b64("guess", 5));
    say(&h, line, "535 5.7.8 Authentication credentials invalid\r\n");
    say(&h, "AUTH LOGIN\r\n=\r\n", "334 VXNlcm5hbWU6\r\n501 5.5.2 Invalid base64 data\r\n");
    say(&h, "AUTH LOGIN\r\n\r\n", "334 VXNlcm5hbWU6\r\n501 5.5.2 Invalid user name\r\n");
    host_close(&h);
}

static void
test_auth_cancel(void **state)
{
    struct host h;
    char line[4200];

    (void)state;
    host_tls(&h);
    say(&h, "AUTH PLAIN\r\n*\r\n", "334 \r\n501 5.7.0 Authentication cancelled\r\n");
    say(&h, "AUTH LOGIN\r\n", "334 VXNlcm5hbWU6\r\n");
    snprintf(line, sizeof(line), "%s\r\n", b64("alice", 5));
    say(&h, line, "334 UGFzc3dvcmQ6\r\n");
    say(&h, "*\r\n", "501 5.7.0 Authentication cancelled\r\n");
    say(&h, "NOOP\r\n", OK);
    assert_false(log_has(&h, "AUTH"));
    host_close(&h);
}

static void
test_auth_bad_base64(void **state)
{
    static const char *const bad[] = {
        "AUTH PLAIN abc\r\n",           "AUTH PLAIN ab=c\r\n", "AUTH PLAIN ####\r\n",
        "AUTH PLAIN AGFsaWNl AHNl\r\n", "AUTH PLAIN A===\r\n", "AUTH PLAIN AGFsaWNlAHNlY3JldA=\r\n",
    };
    struct host h;
    size_t i;

    (void)state;
    host_tls(&h);
    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        say(&h, bad[i], "501 5.5.2 Invalid base64 data\r\n");
    assert_false(log_has(&h, "AUTH"));
    host_close(&h);
}

static void
test_auth_sequence_errors(void **state)
{
    struct smtpd_proto_config cfg;
    struct host h;

    (void)state;
    host_tls(&h);
    say(&h, "AUTH CRAM-MD5\r\n", "504 5.5.4 Unrecognized authentication type\r\n");
    say(&h, "AUTH\r\n", "501 5.5.4 Syntax: AUTH mechanism [initial-response]\r\n");
    say(&h, "MAIL FROM:<a@b.test>\r\nAUTH PLAIN\r\n",
        MAIL_OK BAD_SEQ "AUTH not permitted during a mail transaction\r\n");
    host_close(&h);

    test_config(&cfg);
    cfg.tls_active = true;
    host_open(&h, &cfg);
    expect(&h, GREETING);
    say(&h, "AUTH PLAIN\r\n", BAD_SEQ "Send EHLO first\r\n");
    host_close(&h);
}

static void
test_auth_long_line_allowed(void **state)
{
    struct smtpd_proto_config cfg;
    struct host h;
    static char secret[6000], line[14000];

    (void)state;
    test_config(&cfg);
    cfg.tls_active = true;
    cfg.max_line = 512;
    host_open(&h, &cfg);
    expect(&h, GREETING);
    say(&h, "EHLO c.test\r\n", EHLO_TLS);
    memset(secret, 'p', 500); /* within SMTPD_CRED_MAX */
    memcpy(secret, "\0alice\0", 7);
    snprintf(line, sizeof(line), "AUTH PLAIN %s\r\n", b64(secret, 500));
    say(&h, line, "535 5.7.8 Authentication credentials invalid\r\n");
    /* a PLAIN response on its own line, also > 512 */
    say(&h, "AUTH PLAIN\r\n", "334 \r\n");
    snprintf(line, sizeof(line), "%s\r\n", b64(secret, 500));
    say(&h, line, "535 5.7.8 Authentication credentials invalid\r\n");
    /* but not beyond 12288 */
    memset(line, 'A', 13000);
    memcpy(line, "AUTH PLAIN ", 11);
    smtpd_proto_input(h.s, line, 13000);
    expect(&h, "500 5.5.2 Line too long\r\n");
    say(&h, "\r\nNOOP\r\n", OK);
    host_close(&h);
}

static void
test_require_auth(void **state)
{
    struct smtpd_proto_config cfg;
    struct host h;
    char line[4200];

    (void)state;
    test_config(&cfg);
    cfg.tls_active = true;
    cfg.require_auth = true;
    host_open(&h, &cfg);
    expect(&h, GREETING);
    say(&h, "EHLO c.test\r\n", EHLO_TLS);
    say(&h, "MAIL FROM:<a@b.test>\r\n", "530 5.7.0 Authentication required\r\n");
    snprintf(line, sizeof(line), "AUTH PLAIN %s\r\n", b64("\0alice\0secret", 13));
    say(&h, line, "235 2.7.0 Authentication successful\r\n");
    say(&h, "MAIL FROM:<a@b.test>\r\n", MAIL_OK);
    host_close(&h);
}

static void
test_require_tls(void **state)
{
    struct smtpd_proto_config cfg;
    struct host h;

    (void)state;
    test_config(&cfg);
    cfg.require_tls = true;
    host_open(&h, &cfg);
    expect(&h, GREETING);
    say(&h, "EHLO c.test\r\nMAIL FROM:<a@b.test>\r\nSTARTTLS\r\n",
        EHLO_PLAIN "530 5.7.0 Must issue a STARTTLS command first\r\n"
                   "220 2.0.0 Ready to start TLS\r\n");
    smtpd_proto_tls_started(h.s);
    say(&h, "EHLO c.test\r\nMAIL FROM:<a@b.test>\r\n", EHLO_TLS MAIL_OK);
    host_close(&h);
}

static void
test_auth_async(void **state)
{
    struct host h;
    char line[4200];

    (void)state;
    host_tls(&h);
    h.async_auth = true;
    snprintf(line, sizeof(line), "AUTH PLAIN %s\r\nMAIL FROM:<a@b.test>\r\n",
             b64("\0alice\0secret", 13));
    say(&h, line, "");
    assert_int_equal(smtpd_proto_state(h.s), SMTPD_STATE_WAIT_HOST);
    smtpd_proto_result(h.s, 235, NULL, NULL);
    expect(&h, "235 2.7.0 Authentication successful\r\n" MAIL_OK);
    host_close(&h);
}

/* --------------------------------------------------- waiting for the host */

static void
test_wait_for_commit_buffers_pipeline(void **state)
{
    struct host h;

    (void)state;
    host_default(&h);
    h.async_data = true;
    say(&h, ENVELOPE "DATA\r\nhi\r\n.\r\nMAIL FROM:<c@src.test>\r\n", ENVELOPE_REPLIES GO_AHEAD);
    assert_int_equal(smtpd_proto_state(h.s), SMTPD_STATE_WAIT_HOST);
    say(&h, "RCPT TO:<d@dst.test>\r\nDATA\r\n", "");
    say(&h, "second\r\n.\r\nQUIT\r\n", "");
    assert_false(log_has(&h, "MAIL <c@src.test>")); /* not yet processed */
    smtpd_proto_data_result(h.s, 250, "2.0.0", "Ok: queued as ONE");
    expect(&h, "250 2.0.0 Ok: queued as ONE\r\n" MAIL_OK RCPT_OK GO_AHEAD);
    assert_true(log_has(&h, "[second\\r\\n]"));
    assert_int_equal(smtpd_proto_state(h.s), SMTPD_STATE_WAIT_HOST);
    smtpd_proto_data_result(h.s, 250, "2.0.0", "Ok: queued as TWO");
    expect(&h, "250 2.0.0 Ok: queued as TWO\r\n" BYE);
    assert_true(smtpd_proto_is_closed(h.s));
    host_close(&h);
}

static void
test_wait_held_overflow(void **state)
{
    struct smtpd_proto_config cfg;
    struct host h;
    char junk[1024];
    int i;

    (void)state;
    test_config(&cfg);
    cfg.max_held = 4096;
    host_open(&h, &cfg);
    expect(&h, GREETING);
    h.async_data = true;
    say(&h, ENVELOPE "DATA\r\n.\r\n", ENVELOPE_REPLIES GO_AHEAD);
    memset(junk, 'N', sizeof(junk));
    smtpd_proto_input(h.s, junk, sizeof(junk));
    assert_true(smtpd_proto_want_input(h.s));
    smtpd_proto_input(h.s, junk, sizeof(junk));
    smtpd_proto_input(h.s, junk, sizeof(junk));
    assert_false(smtpd_proto_want_input(h.s)); /* past half: pause */
    for (i = 0; i < 4; i++)
        smtpd_proto_input(h.s, junk, sizeof(junk));
    expect(&h, "");
    smtpd_proto_data_result(h.s, 250, "2.0.0", "Ok: queued as TEST");
    expect(&h, QUEUED "421 4.7.0 Too much pipelined input\r\n");
    assert_true(smtpd_proto_is_closed(h.s));
    host_close(&h);
}

static void
test_async_rcpt(void **state)
{
    struct host h;

    (void)state;
    host_default(&h);
    h.async_rcpt = true;
    say(&h,
        "EHLO c.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@dst.test>\r\n"
        "RCPT TO:<y@dst.test>\r\nDATA\r\n",
        EHLO_PLAIN MAIL_OK);
    smtpd_proto_result(h.s, 0, NULL, NULL);
    expect(&h, RCPT_OK);
    smtpd_proto_result(h.s, 550, "5.1.1", "No such user");
    expect(&h, "550 5.1.1 No such user\r\n" GO_AHEAD);
    host_close(&h);
}

static void
test_timeout_and_disconnect(void **state)
{
    struct host h;

    (void)state;
    host_default(&h);
    say(&h, ENVELOPE "DATA\r\npartial body", ENVELOPE_REPLIES GO_AHEAD);
    smtpd_proto_timeout(h.s);
    expect(&h, "421 4.4.2 Timeout exceeded, closing connection\r\n");
    assert_true(log_has(&h, "ABORT\n"));
    assert_true(smtpd_proto_is_closed(h.s));
    host_close(&h);

    host_default(&h);
    say(&h, ENVELOPE "DATA\r\npartial body", ENVELOPE_REPLIES GO_AHEAD);
    smtpd_proto_disconnected(h.s);
    expect(&h, "");
    assert_true(log_has(&h, "ABORT\n"));
    assert_false(log_has(&h, "END"));
    host_close(&h);

    /* after data_end the host owns the message: no abort on vanishing */
    host_default(&h);
    h.async_data = true;
    say(&h, ENVELOPE "DATA\r\nx\r\n.\r\n", ENVELOPE_REPLIES GO_AHEAD);
    smtpd_proto_disconnected(h.s);
    assert_false(log_has(&h, "ABORT"));
    smtpd_proto_data_result(h.s, 250, "2.0.0", "late"); /* ignored */
    expect(&h, "");
    host_close(&h);

    host_default(&h);
    smtpd_proto_shutdown(h.s);
    expect(&h, "421 4.3.2 Service shutting down, closing connection\r\n");
    host_close(&h);
}

/* a host that closes the session from inside a decision callback */
static enum smtpd_decision
ev_rcpt_then_timeout(void *ctx, const char *rcpt, const struct smtpd_rcpt_params *p,
                     struct smtpd_proto_verdict *v)
{
    struct host *h = ctx;

    smtpd_proto_timeout(h->s);
    return SMTPD_ACCEPT;
}

static void
test_host_closes_inside_callback(void **state)
{
    struct smtpd_proto_events ev = events;
    struct smtpd_proto_config cfg;
    struct host h;

    (void)state;
    ev.rcpt = ev_rcpt_then_timeout;
    test_config(&cfg);
    memset(&h, 0, sizeof(h));
    buf_init(&h.log, 0);
    buf_init(&h.body, 0);
    h.s = smtpd_proto_new(&cfg, &ev, &h);
    smtpd_proto_start(h.s);
    expect(&h, GREETING);
    say(&h, ENVELOPE "NOOP\r\n",
        EHLO_PLAIN MAIL_OK "421 4.4.2 Timeout exceeded, closing connection\r\n");
    assert_true(smtpd_proto_is_closed(h.s));
    assert_true(log_has(&h, "ABORT\n"));
    host_close(&h);
}

/* ------------------------------------------------- split-invariance property */

/* run_split - feed SCRIPT in pieces (step 0: random 1..17) and collect
   replies and events into OUT */
static void
run_split(const struct smtpd_proto_config *cfg, bool async_data, const char *script, size_t len,
          size_t step, unsigned seed, struct buf *out)
{
    struct host h;
    size_t i = 0;

    host_open(&h, cfg);
    h.async_data = async_data;
    while (i < len) {
        size_t k = step ? step : 1 + (seed = seed * 1103515245u + 12345u) % 17;

        if (k > len - i)
            k = len - i;
        smtpd_proto_input(h.s, script + i, k);
        i += k;
    }
    while (smtpd_proto_state(h.s) == SMTPD_STATE_WAIT_HOST)
        smtpd_proto_data_result(h.s, 250, "2.0.0", "Ok: queued as TEST");
    buf_append_str(out, smtpd_proto_output(h.s)->data ? smtpd_proto_output(h.s)->data : "");
    buf_append_str(out, "--\n");
    buf_append_str(out, h.log.data ? h.log.data : "");
    host_close(&h);
}

/* Scripts may hold NUL bytes, so each carries its length. */
struct script {
    const char *p;
    size_t len;
};
#define SCRIPT(lit)          \
    {                        \
        lit, sizeof(lit) - 1 \
    }

static const struct script split_scripts[] = {
    SCRIPT(ENVELOPE "RCPT TO:<x@deny.test>\r\nDATA\r\n..a\r\n.\r\nb.\r\n\r\n.\r\n"
                    "MAIL FROM:<> SIZE=10 BODY=8BITMIME\r\nRCPT TO:<q@dst.test> NOTIFY=NEVER\r\n"
                    "DATA\r\n.\r\nQUIT\r\n"),
    SCRIPT(ENVELOPE "BDAT 7\r\n\r\n.\r\nabBDAT 3 LAST\r\nxyzNOOP\r\nRSET\r\nQUIT\r\n"),
    SCRIPT(
        "EHLO c.test\r\nNO\0OP\r\nFOOBAR\r\nMAIL FROM:<a@b.test> BAD=1\r\n"
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
        "\r\n"
        "NOOP\r\n"),
    SCRIPT(ENVELOPE "DATA\r\nbare\nlf\r\n.\r\n" ENVELOPE "DATA\r\nok\r\n.\r\n"),
    SCRIPT("EHLO c.test\r\nSTARTTLS\r\nMAIL FROM:<evil@x.test>\r\n"),
    SCRIPT(ENVELOPE "DATA\r\nx\r\n.\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\n"
                    "y\r\n.\r\nQUIT\r\n"),
};

static void
check_split_invariance(bool async_data, bool small_line)
{
    struct smtpd_proto_config cfg;
    size_t i;

    test_config(&cfg);
    if (small_line)
        cfg.max_line = 100;
    for (i = 0; i < sizeof(split_scripts) / sizeof(split_scripts[0]); i++) {
        struct buf whole, bytes, rnd;
        const char *p = split_scripts[i].p;
        size_t len = split_scripts[i].len;
        unsigned seed;

        buf_init(&whole, 0);
        buf_init(&bytes, 0);
        run_split(&cfg, async_data, p, len, len, 0, &whole);
        run_split(&cfg, async_data, p, len, 1, 0, &bytes);
        assert_string_equal(bytes.data, whole.data);
        for (seed = 1; seed < 20; seed++) {
            buf_init(&rnd, 0);
            run_split(&cfg, async_data, p, len, 0, seed, &rnd);
            assert_string_equal(rnd.data, whole.data);
            buf_free(&rnd);
        }
        buf_free(&whole);
        buf_free(&bytes);
    }
}

static void
test_one_byte_equals_whole(void **state)
{
    (void)state;
    check_split_invariance(false, false);
}

static void
test_one_byte_equals_whole_async(void **state)
{
    (void)state;
    check_split_invariance(true, true);
}

/* the split-invariance scripts really do what they claim */
static void
test_split_scripts_sane(void **state)
{
    struct smtpd_proto_config cfg;
    struct buf out;

    (void)state;
    test_config(&cfg);
    cfg.max_line = 100;
    buf_init(&out, 0);
    run_split(&cfg, false, split_scripts[2].p, split_scripts[2].len, 1, 0, &out);
    assert_non_null(strstr(out.data, "500 5.5.2 NUL character not allowed\r\n"
                                     "500 5.5.1 Command unrecognized\r\n"
                                     "555 5.5.4 Unsupported parameter\r\n"
                                     "500 5.5.2 Line too long\r\n" OK));
    buf_free(&out);
}

/* hostile noise: random fragments of commands and bytes never crash the
   engine, and every reply line it writes is well formed */
static void
test_random_garbage_sessions(void **state)
{
    static const char *const frags[] = {
        "EHLO c.test\r\n",
        "MAIL FROM:<a@b.test>\r\n",
        "RCPT TO:<c@d.test>\r\n",
        "DATA\r\n",
        "\r\n.\r\n",
        "BDAT 5\r\n",
        "BDAT 0 LAST\r\n",
        "AUTH LOGIN\r\n",
        "AUTH PLAIN\r\n",
        "*\r\n",
        "STARTTLS\r\n",
        "RSET\r\n",
        "..",
        "\n",
        "\r",
        "\0",
        "<",
        ">",
        "@",
        " SIZE=",
        "+2B",
        "\xff\xfe",
        "QUIT\r\n",
    };
    struct smtpd_proto_config cfg;
    unsigned seed = 7, round;

    (void)state;
    test_config(&cfg);
    cfg.tls_active = true;
    cfg.max_line = 100;
    cfg.max_errors = 0;
    for (round = 0; round < 300; round++) {
        struct host h;
        struct buf *out;
        int i;

        host_open(&h, &cfg);
        h.async_data = round % 2;
        for (i = 0; i < 200 && !smtpd_proto_is_closed(h.s); i++) {
            const char *f;
            size_t n;

            seed = seed * 1103515245u + 12345u;
            f = frags[(seed >> 8) % (sizeof(frags) / sizeof(frags[0]))];
            n = *f ? strlen(f) : 1;
            if (smtpd_proto_state(h.s) == SMTPD_STATE_WAIT_HOST && (seed & 1))
                smtpd_proto_result(h.s, 250, NULL, NULL);
            if (smtpd_proto_state(h.s) == SMTPD_STATE_TLS_HANDSHAKE)
                smtpd_proto_tls_started(h.s);
            smtpd_proto_input(h.s, f, n);
        }
        out = smtpd_proto_output(h.s);
        if (out->len) {
            /* every line: 3 digits, then ' ' or '-', and CRLF-terminated */
            const char *p = out->data, *end = out->data + out->len;

            while (p < end) {
                const char *eol = strstr(p, "\r\n");

                assert_non_null(eol);
                assert_true(eol - p >= 4);
                assert_true(p[0] >= '2' && p[0] <= '5');
                assert_true(p[3] == ' ' || p[3] == '-');
                assert_null(memchr(p, '\n', (size_t)(eol - p)));
                p = eol + 2;
            }
        }
        smtpd_proto_disconnected(h.s);
        host_close(&h);
    }
}

/* ------------------------------------------------------ parser unit tests */

static void
test_xtext_decode(void **state)
{
    char out[16];

    (void)state;
    assert_int_equal(smtpd_xtext_decode("abc", 3, out, sizeof(out)), 3);
    assert_string_equal(out, "abc");
    assert_int_equal(smtpd_xtext_decode("a+2Bb+3D", 8, out, sizeof(out)), 4);
    assert_string_equal(out, "a+b=");
    assert_int_equal(smtpd_xtext_decode("+20", 3, out, sizeof(out)), 1);
    assert_string_equal(out, " ");
    assert_int_equal(smtpd_xtext_decode("a+0D", 4, out, sizeof(out)), -1); /* CR */
    assert_int_equal(smtpd_xtext_decode("a+00", 4, out, sizeof(out)), -1); /* NUL */
    assert_int_equal(smtpd_xtext_decode("a+", 2, out, sizeof(out)), -1);
    assert_int_equal(smtpd_xtext_decode("a+2", 3, out, sizeof(out)), -1);
    assert_int_equal(smtpd_xtext_decode("a=b", 3, out, sizeof(out)), -1);
    assert_int_equal(smtpd_xtext_decode("a b", 3, out, sizeof(out)), -1);
    assert_int_equal(smtpd_xtext_decode("+C3+A9", 6, out, sizeof(out)), -1); /* non-ASCII */
    assert_int_equal(smtpd_xtext_decode("0123456789abcdef", 16, out, sizeof(out)), -1);
    assert_int_equal(smtpd_xtext_decode("0123456789abcde", 15, out, sizeof(out)), 15);
}

static void
test_parse_path_direct(void **state)
{
    char out[SMTPD_ADDR_MAX + 1];
    size_t used;

    (void)state;
    assert_int_equal(smtpd_parse_path("<a@b.c> X", 9, 0, out, &used), SMTPD_PATH_OK);
    assert_int_equal(used, 7);
    assert_string_equal(out, "a@b.c");
    /* length is respected: the '>' beyond LEN is not seen */
    assert_int_equal(smtpd_parse_path("<a@b.c>", 6, 0, out, &used), SMTPD_PATH_SYNTAX);
    assert_int_equal(smtpd_parse_path("<", 1, 0, out, &used), SMTPD_PATH_SYNTAX);
    assert_int_equal(smtpd_parse_path("<>", 2, 0, out, &used), SMTPD_PATH_SYNTAX);
    assert_int_equal(smtpd_parse_path("<>", 2, SMTPD_PATH_NULL_OK, out, &used), SMTPD_PATH_OK);
    assert_int_equal(smtpd_parse_path("<\xc3\xa9@b.c>", 8, 0, out, &used), SMTPD_PATH_NEED_UTF8);
    assert_int_equal(smtpd_parse_path("<\xc3\xa9@b.c>", 8, SMTPD_PATH_UTF8_OK, out, &used),
                     SMTPD_PATH_OK);
    assert_int_equal(smtpd_parse_path("<\xed\xa0\x80@b.c>", 9, SMTPD_PATH_UTF8_OK, out, &used),
                     SMTPD_PATH_SYNTAX); /* surrogate */
    assert_int_equal(smtpd_parse_path("<\"a\\\x01\"@b.c>", 11, 0, out, &used), SMTPD_PATH_SYNTAX);
    assert_int_equal(smtpd_parse_path("<a@b.c.>", 8, 0, out, &used), SMTPD_PATH_SYNTAX);
}

static void
test_utf8_seq_len(void **state)
{
    (void)state;
    assert_int_equal(smtpd_utf8_seq_len((const unsigned char *)"a", 1), 1);
    assert_int_equal(smtpd_utf8_seq_len((const unsigned char *)"\xc3\xa9", 2), 2);
    assert_int_equal(smtpd_utf8_seq_len((const unsigned char *)"\xc3", 1), 0);
    assert_int_equal(smtpd_utf8_seq_len((const unsigned char *)"\xc0\x80", 2), 0);
    assert_int_equal(smtpd_utf8_seq_len((const unsigned char *)"\xe0\x80\x80", 3), 0);
    assert_int_equal(smtpd_utf8_seq_len((const unsigned char *)"\xf0\x9f\x98\x80", 4), 4);
    assert_int_equal(smtpd_utf8_seq_len((const unsigned char *)"\xf4\x90\x80\x80", 4), 0);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        UNIT_TEST(test_greeting),
        UNIT_TEST(test_refuse_service_554_only_quit),
        UNIT_TEST(test_ehlo_plaintext),
        UNIT_TEST(test_ehlo_over_tls_offers_auth),
        UNIT_TEST(test_ehlo_policy_variants),
        UNIT_TEST(test_helo),
        UNIT_TEST(test_ehlo_syntax),
        UNIT_TEST(test_ehlo_resets_transaction),
        UNIT_TEST(test_mail_before_helo),
        UNIT_TEST(test_full_transaction),
        UNIT_TEST(test_transactions_repeat),
        UNIT_TEST(test_mail_null_sender),
        UNIT_TEST(test_mail_params_decoded),
        UNIT_TEST(test_mail_unknown_param),
        UNIT_TEST(test_mail_param_syntax),
        UNIT_TEST(test_mail_size_exceeds),
        UNIT_TEST(test_mail_bad_sender_syntax),
        UNIT_TEST(test_address_length_limits),
        UNIT_TEST(test_mail_source_route_quoted_literals),
        UNIT_TEST(test_smtputf8_addresses),
        UNIT_TEST(test_rcpt_before_mail),
        UNIT_TEST(test_rcpt_dsn_params),
        UNIT_TEST(test_rcpt_param_errors),
        UNIT_TEST(test_rcpt_bad_syntax),
        UNIT_TEST(test_rcpt_relay_denied_not_counted),
        UNIT_TEST(test_rcpt_host_verdict_sanitised),
        UNIT_TEST(test_rcpt_max),
        UNIT_TEST(test_set_limits),
        UNIT_TEST(test_ten_thousand_rcpts),
        UNIT_TEST(test_data_sequence_errors),
        UNIT_TEST(test_data_dot_unstuffing),
        UNIT_TEST(test_data_empty_message),
        UNIT_TEST(test_data_end_split_everywhere),
        UNIT_TEST(test_data_bare_lf_rejected),
        UNIT_TEST(test_data_bare_cr_rejected),
        UNIT_TEST(test_data_smuggling_not_end),
        UNIT_TEST(test_data_size_overrun),
        UNIT_TEST(test_data_long_lines_and_8bit),
        UNIT_TEST(test_data_begin_refused),
        UNIT_TEST(test_data_commit_failure),
        UNIT_TEST(test_pipelined_transaction_one_input),
        UNIT_TEST(test_bdat_single_last),
        UNIT_TEST(test_bdat_across_inputs),
        UNIT_TEST(test_bdat_zero_last),
        UNIT_TEST(test_bdat_refused_still_consumed),
        UNIT_TEST(test_bdat_syntax_and_data_mix),
        UNIT_TEST(test_bdat_size_overrun),
        UNIT_TEST(test_rset),
        UNIT_TEST(test_noop_vrfy_help_expn),
        UNIT_TEST(test_quit_mid_transaction),
        UNIT_TEST(test_unknown_and_empty_command),
        UNIT_TEST(test_line_too_long),
        UNIT_TEST(test_line_too_long_partial),
        UNIT_TEST(test_nul_and_control_bytes),
        UNIT_TEST(test_bare_lf_ends_command),
        UNIT_TEST(test_too_many_errors),
        UNIT_TEST(test_errors_mixed_count),
        UNIT_TEST(test_starttls_injection_discarded),
        UNIT_TEST(test_starttls_errors),
        UNIT_TEST(test_starttls_after_held_input),
        UNIT_TEST(test_auth_not_offered_plaintext),
        UNIT_TEST(test_auth_plain_initial_success),
        UNIT_TEST(test_auth_plain_continuation),
        UNIT_TEST(test_auth_plain_failure),
        UNIT_TEST(test_auth_login_success),
        UNIT_TEST(test_auth_login_failure),
        UNIT_TEST(test_auth_cancel),
        UNIT_TEST(test_auth_bad_base64),
        UNIT_TEST(test_auth_sequence_errors),
        UNIT_TEST(test_auth_long_line_allowed),
        UNIT_TEST(test_require_auth),
        UNIT_TEST(test_require_tls),
        UNIT_TEST(test_auth_async),
        UNIT_TEST(test_wait_for_commit_buffers_pipeline),
        UNIT_TEST(test_wait_held_overflow),
        UNIT_TEST(test_async_rcpt),
        UNIT_TEST(test_timeout_and_disconnect),
        UNIT_TEST(test_host_closes_inside_callback),
        UNIT_TEST(test_one_byte_equals_whole),
        UNIT_TEST(test_one_byte_equals_whole_async),
        UNIT_TEST(test_split_scripts_sane),
        UNIT_TEST(test_random_garbage_sessions),
        UNIT_TEST(test_xtext_decode),
        UNIT_TEST(test_parse_path_direct),
        UNIT_TEST(test_utf8_seq_len),
    };

    msg_init("test_smtpd_proto");
    msg_also_stderr(0);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
