/*
 * fuzz_cleanup.c - fuzz target: header and MIME handling in cleanup
 * (cleanup/cleanup_message.c) and the DKIM signer's view of the message
 * (cleanup/cleanup_dkim.c)
 *
 * The input is what a client sends after DATA, plus the peer-supplied
 * names cleanup writes into Received:
 *   byte 0  <source> options: Received (bit 0), hide-message-source (1),
 *           Message-ID (2), Date no/yes/override (3-4), process and retain
 *           X-Virtual-MTA / X-Job / X-EnvID (5, 6), jobid-header Message-ID (7)
 *   byte 1  small header limits (bit 0), one recipient named (1), DKIM:
 *           simple header (2) or body (3) canonicalisation, forced
 *           identity (4), dkim-headers list (5), sign with the test key (7)
 *   then    HELO name NUL auth user NUL, and the message (any bytes)
 *
 * The message is parsed, the options applied, the signing identity found
 * (and with bit 7, signed by OpenDKIM with t/data/dkim/test.key: slow, so
 * only some inputs), and rendered. Checked beyond the sanitizers: parse
 * failures say why; extracted X-* values are clean tokens; the rendered
 * message has only CRLF line ends and every header line is a field or a
 * continuation (a NUL in a field is refused); the queue id placeholder
 * sits where qid_offset says; rendering is a fixed point (parsing the
 * rendered message and rendering it again gives the same bytes); the
 * signature, if any, is one folded field, and goes on top like Received.
 */
#include <errno.h>
#include <stdbool.h>
#include <string.h>

#include "buf.h"
#include "cleanup_dkim.h"
#include "cleanup_message.h"
#include "fuzz.h"

#ifndef PMTA_SRCDIR
#define PMTA_SRCDIR "."
#endif

static struct cleanup_dkim *dk;
static struct cleanup_dkim_keylist *keys;

static void
init(void)
{
    const char *src = getenv("PMTA_SRCDIR");
    char path[4096], err[CLEANUP_ERRLEN];

    fuzz_quiet_logs();
    snprintf(path, sizeof path, "%s/t/data/dkim/test.key", src && *src ? src : PMTA_SRCDIR);
    dk = cleanup_dkim_create(err, sizeof err);
    keys = cleanup_dkim_keylist_create();
    if (dk == NULL ||
        cleanup_dkim_keylist_add(dk, keys, "s1", "example.com", path, err, sizeof err) != 0 ||
        cleanup_dkim_keylist_add(dk, keys, "any", "*", path, err, sizeof err) != 0) {
        fprintf(stderr, "fuzz_cleanup: %s (set PMTA_SRCDIR)\n", err);
        abort();
    }
}

/* next_string - up to the next NUL; the rest when there is none */
static const char *
next_string(const uint8_t **p, const uint8_t *end)
{
    const uint8_t *nul = memchr(*p, 0, (size_t)(end - *p));
    const char *s = (const char *)*p;

    if (nul == NULL)
        return NULL;
    *p = nul + 1;
    return s;
}

/* check_rendered - CRLF only; header lines are fields or continuations */
static void
check_rendered(const struct buf *out)
{
    const char *p = out->data, *end = out->data + out->len;
    bool in_header = true;

    for (size_t i = 0; i < out->len; i++) {
        if (p[i] == '\n')
            FUZZ_CHECK(i > 0 && p[i - 1] == '\r');
        if (p[i] == '\r')
            FUZZ_CHECK(i + 1 < out->len && p[i + 1] == '\n');
    }
    FUZZ_CHECK(out->len >= 2 && memcmp(end - 2, "\r\n", 2) == 0);
    while (in_header && p < end) {
        const char *e = memmem(p, (size_t)(end - p), "\r\n", 2);
        const char *colon = memchr(p, ':', (size_t)(e - p));

        if (e == p)
            in_header = false;
        else if (*p != ' ' && *p != '\t')
            FUZZ_CHECK(colon != NULL && colon > p);
        p = e + 2;
    }
}

static int
count_field(void *ctx, const char *field, size_t len)
{
    if (field) {
        FUZZ_CHECK(len > 0 && memchr(field, ':', len) != NULL);
        ++*(size_t *)ctx;
    }
    return 0;
}

static void
options(uint8_t b, struct cleanup_opts *o)
{
    cleanup_opts_default(o);
    o->add_received = b & 0x01;
    o->hide_source = b & 0x02;
    o->add_message_id = b & 0x04;
    o->add_date = (enum cleanup_date_mode)((b >> 3) % 3);
    o->process_x_virtual_mta = o->process_x_job = o->process_x_envid = b & 0x20;
    o->retain_x_virtual_mta = o->retain_x_job = o->retain_x_envid = b & 0x40;
    o->jobid_header = b & 0x80 ? "Message-ID" : NULL;
}

/* fixed_point - parsing what was rendered and rendering it again changes nothing */
static void
fixed_point(const struct buf *rendered)
{
    struct cleanup_message *again;
    struct buf out;
    char err[CLEANUP_ERRLEN];
    struct cleanup_limits roomy = { 100000, 4u << 20, 16u << 20 };

    FUZZ_CHECK(
        cleanup_message_parse(rendered->data, rendered->len, &roomy, &again, err, sizeof err) == 0);
    buf_init(&out, 0);
    FUZZ_CHECK(cleanup_message_render(again, &out) == 0);
    FUZZ_CHECK(out.len == rendered->len && memcmp(out.data, rendered->data, out.len) == 0);
    buf_free(&out);
    cleanup_message_free(again);
}

/* sign - find the identity; with bit 7 sign and put the signature on top */
static void
sign(struct cleanup_message *msg, uint8_t b)
{
    const struct cleanup_dkim_keylist *lists[] = { keys };
    struct cleanup_dkim_opts o = {
        .header_canon = b & 0x04 ? CLEANUP_DKIM_SIMPLE : CLEANUP_DKIM_RELAXED,
        .body_canon = b & 0x08 ? CLEANUP_DKIM_SIMPLE : CLEANUP_DKIM_RELAXED,
        .identity = b & 0x10 ? "@example.com" : NULL,
        .fallback_identity = "bounce@example.com",
        .headers = b & 0x20 ? "subject,to:cc;date" : NULL,
        .id = "FUZZ",
    };
    char domain[256], err[CLEANUP_ERRLEN];
    struct buf out;
    int r;

    if (cleanup_dkim_identity_domain(msg, &o, domain, sizeof domain) == 0)
        FUZZ_CHECK(*domain && strlen(domain) < sizeof domain);
    if (!(b & 0x80))
        return;
    *err = '\0';
    r = cleanup_dkim_sign(dk, msg, lists, 1, &o, err, sizeof err);
    FUZZ_CHECK(r >= 0 || (r == -EIO && *err));
    if (r <= 0)
        return;
    /* the signature went on top, a well-formed field */
    buf_init(&out, 0);
    FUZZ_CHECK(cleanup_message_render(msg, &out) == 0);
    FUZZ_CHECK(out.len > 15 && strncmp(out.data, "DKIM-Signature:", 15) == 0);
    buf_free(&out);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int initialised;
    const uint8_t *p = data + 2, *end = data + size;
    struct cleanup_limits small = { 8, 200, 1000 };
    struct cleanup_client client = { .addr = "192.0.2.1",
                                     .rdns = "client.example",
                                     .protocol = "ESMTPSA",
                                     .tls = "TLSv1.3 with cipher TLS_AES_256_GCM_SHA384",
                                     .host_name = "mx.fuzz.example" };
    struct cleanup_message *msg;
    struct cleanup_opts opts;
    char err[CLEANUP_ERRLEN] = "";
    struct buf out;
    size_t fields = 0;
    int r;

    if (!initialised++)
        init();
    if (size < 2)
        return 0;
    client.helo = next_string(&p, end);
    client.auth_user = next_string(&p, end);
    client.rcpt = data[1] & 0x02 ? "rcpt@example.org" : NULL;
    r = cleanup_message_parse((const char *)p, (size_t)(end - p), data[1] & 1 ? &small : NULL, &msg,
                              err, sizeof err);
    if (r != 0) {
        FUZZ_CHECK((r == -E2BIG || r == -EILSEQ || r == -EINVAL) && *err);
        return 0;
    }
    options(data[0], &opts);
    cleanup_message_apply(msg, &opts, &client, 1700000000);
    FUZZ_CHECK(!msg->virtual_mta || !*msg->virtual_mta || cleanup_token_ok(msg->virtual_mta, 255));
    FUZZ_CHECK(!msg->job_id || cleanup_token_ok(msg->job_id, 255));
    FUZZ_CHECK(!msg->envid || cleanup_token_ok(msg->envid, 100));
    cleanup_message_walk(msg, count_field, &fields);
    sign(msg, data[1]);
    buf_init(&out, 0);
    FUZZ_CHECK(cleanup_message_render(msg, &out) == 0);
    check_rendered(&out);
    if (msg->qid_offset != SIZE_MAX)
        FUZZ_CHECK(msg->qid_offset + strlen(CLEANUP_QID_PLACEHOLDER) <= out.len &&
                   memcmp(out.data + msg->qid_offset, CLEANUP_QID_PLACEHOLDER,
                          strlen(CLEANUP_QID_PLACEHOLDER)) == 0);
    fixed_point(&out);
    buf_free(&out);
    cleanup_message_free(msg);
    return 0;
}
