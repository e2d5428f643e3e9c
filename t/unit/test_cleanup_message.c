/*
 * test_cleanup_message.c - unit tests for cleanup/: header parsing and its
 * limits, line-ending normalisation, Received/Message-ID/Date, the X-*
 * submission headers, address parsing for the DKIM identity, DKIM key
 * loading and key choice. Signatures themselves are checked against real
 * verifiers in t/integration/test_dkim.py.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "unit.h"

#include "buf.h"
#include "msg.h"
#include "xalloc.h"

#include "cleanup_dkim.h"
#include "cleanup_message.h"

#define NOW ((time_t)1700000000) /* Tue, 14 Nov 2023 22:13:20 +0000 */

static char errbuf[CLEANUP_ERRLEN];

/* parse_ok - parse a C string that must be accepted */
static struct cleanup_message *
parse_ok(const char *text)
{
    struct cleanup_message *msg = NULL;

    assert_int_equal(cleanup_message_parse(text, strlen(text), NULL, &msg, errbuf, sizeof(errbuf)),
                     0);
    assert_non_null(msg);
    return msg;
}

/* render - the final message as a fresh C string */
static char *
render(struct cleanup_message *msg)
{
    struct buf out;

    buf_init(&out, 0);
    assert_int_equal(cleanup_message_render(msg, &out), 0);
    return buf_detach(&out, NULL);
}

static const char *
value_of(const struct cleanup_message *msg, const char *name)
{
    const struct cleanup_header *h = cleanup_message_find(msg, name);

    return h ? h->value : NULL;
}

/* --- parsing ------------------------------------------------------------ */

static void
test_parse_simple(void **state)
{
    struct cleanup_message *msg;
    char *out;

    (void)state;
    msg = parse_ok("From: a@example.com\r\nSubject: hi\r\n\r\nbody\r\n");
    assert_int_equal(msg->nhdrs, 2);
    assert_string_equal(msg->hdrs[0].name, "From");
    assert_string_equal(value_of(msg, "subject"), "hi");
    assert_int_equal(msg->body.len, 6);
    assert_false(msg->head_8bit || msg->body_8bit);
    out = render(msg);
    assert_string_equal(out, "From: a@example.com\r\nSubject: hi\r\n\r\nbody\r\n");
    free(out);
    cleanup_message_free(msg);
}

static void
test_folded_header_unfolded_for_reading_kept_for_output(void **state)
{
    const char *in = "Subject: a long\r\n\tfolded\r\n  subject line\r\nTo: x@y\r\n\r\nb\r\n";
    struct cleanup_message *msg;
    const char *raw;
    size_t len;
    char *out;

    (void)state;
    msg = parse_ok(in);
    assert_string_equal(value_of(msg, "Subject"), "a long\tfolded  subject line");
    raw = cleanup_message_field(msg, cleanup_message_find(msg, "Subject"), &len);
    assert_int_equal(len, strlen("Subject: a long\r\n\tfolded\r\n  subject line"));
    assert_memory_equal(raw, "Subject: a long\r\n\tfolded\r\n  subject line", len);
    out = render(msg);
    assert_string_equal(out, in);
    free(out);
    cleanup_message_free(msg);
}

static void
test_bare_lf_and_cr_become_crlf(void **state)
{
    struct cleanup_message *msg;
    char *out;

    (void)state;
    msg = parse_ok("From: a@b\nSubject: x\n\tmore\n\nline1\nline2\rline3\r\n");
    out = render(msg);
    assert_string_equal(out,
                        "From: a@b\r\nSubject: x\r\n\tmore\r\n\r\nline1\r\nline2\r\nline3\r\n");
    free(out);
    cleanup_message_free(msg);
}

static void
test_body_edge_cases(void **state)
{
    struct cleanup_message *msg;
    char *out;

    (void)state;
    /* no final newline: one is added */
    msg = parse_ok("From: a@b\r\n\r\nlast line");
    out = render(msg);
    assert_string_equal(out, "From: a@b\r\n\r\nlast line\r\n");
    free(out);
    cleanup_message_free(msg);
    /* empty body, with and without the separator line */
    msg = parse_ok("From: a@b\r\n\r\n");
    assert_int_equal(msg->body.len, 0);
    out = render(msg);
    assert_string_equal(out, "From: a@b\r\n\r\n");
    free(out);
    cleanup_message_free(msg);
    msg = parse_ok("From: a@b\r\n");
    out = render(msg);
    assert_string_equal(out, "From: a@b\r\n\r\n");
    free(out);
    cleanup_message_free(msg);
    /* trailing blank lines are kept as they are */
    msg = parse_ok("From: a@b\n\nx\n\n\n");
    out = render(msg);
    assert_string_equal(out, "From: a@b\r\n\r\nx\r\n\r\n\r\n");
    free(out);
    cleanup_message_free(msg);
}

static void
test_non_header_line_starts_body(void **state)
{
    struct cleanup_message *msg;
    char *out;

    (void)state;
    msg = parse_ok("From: a@b\r\nthis is not a header\r\nmore\r\n");
    assert_int_equal(msg->nhdrs, 1);
    out = render(msg);
    assert_string_equal(out, "From: a@b\r\n\r\nthis is not a header\r\nmore\r\n");
    free(out);
    cleanup_message_free(msg);
    /* obsolete "Name :" syntax is still a field */
    msg = parse_ok("Subject : old style\r\n\r\n");
    assert_string_equal(value_of(msg, "Subject"), "old style");
    cleanup_message_free(msg);
}

static void
test_8bit_detection(void **state)
{
    struct cleanup_message *msg;

    (void)state;
    msg = parse_ok("Subject: caf\xc3\xa9\r\n\r\nplain\r\n");
    assert_true(msg->head_8bit);
    assert_false(msg->body_8bit);
    cleanup_message_free(msg);
    msg = parse_ok("Subject: x\r\n\r\nna\xc3\xafve\r\n");
    assert_false(msg->head_8bit);
    assert_true(msg->body_8bit);
    cleanup_message_free(msg);
}

/* --- limits ------------------------------------------------------------- */

static void
test_ten_thousand_headers_refused(void **state)
{
    struct cleanup_message *msg = (void *)1;
    struct buf in;
    int i;

    (void)state;
    buf_init(&in, 0);
    for (i = 0; i < 10000; i++)
        buf_printf(&in, "X-H%d: v\r\n", i);
    buf_append_str(&in, "\r\nbody\r\n");
    assert_int_equal(cleanup_message_parse(in.data, in.len, NULL, &msg, errbuf, sizeof(errbuf)),
                     -E2BIG);
    assert_null(msg);
    assert_string_equal(errbuf, "more than 1000 header fields");
    buf_free(&in);
}

static void
test_megabyte_header_line_refused(void **state)
{
    struct cleanup_message *msg = NULL;
    size_t n = 1024 * 1024;
    char *in = xmalloc(n + 64);
    int len;

    (void)state;
    len = snprintf(in, 64, "From: a@b\r\nX-Long: ");
    memset(in + len, 'a', n);
    memcpy(in + len + n, "\r\n\r\nbody\r\n", 10);
    assert_int_equal(
        cleanup_message_parse(in, (size_t)len + n + 10, NULL, &msg, errbuf, sizeof(errbuf)),
        -E2BIG);
    assert_null(msg);
    assert_string_equal(errbuf, "header field longer than 102400 bytes");
    free(in);
}

static void
test_folded_field_and_section_limits(void **state)
{
    struct cleanup_limits lim = { 0, 40, 100 };
    struct cleanup_message *msg = NULL;
    const char *folded = "Subject: 0123456789\r\n 0123456789\r\n 0123456789\r\n\r\n";
    const char *many = "A: 0123456789\r\nB: 0123456789\r\nC: 0123456789\r\n"
                       "D: 0123456789\r\nE: 0123456789\r\nF: 0123456789\r\nG: 0123456789\r\n\r\n";

    (void)state;
    /* a field that grows past the limit through continuation lines */
    assert_int_equal(
        cleanup_message_parse(folded, strlen(folded), &lim, &msg, errbuf, sizeof(errbuf)), -E2BIG);
    assert_string_equal(errbuf, "header field longer than 40 bytes");
    /* fields that are each fine but together pass the section limit */
    assert_int_equal(cleanup_message_parse(many, strlen(many), &lim, &msg, errbuf, sizeof(errbuf)),
                     -E2BIG);
    assert_string_equal(errbuf, "header section longer than 100 bytes");
    assert_null(msg);
}

/* --- X-Virtual-MTA, X-Job, X-EnvID ---------------------------------------- */

static const char *xmsg = "From: a@example.com\r\nX-Virtual-MTA: pool-1\r\nX-Job: job.42\r\n"
                          "X-EnvID: env-7\r\nSubject: s\r\n\r\nb\r\n";

/* fuzz-found: a NUL in a field reached OpenDKIM, which read past the field (ASan) */
static void
test_nul_in_header_field_refused(void **state)
{
    static const char value[] =
        "From: Repo\0rt <r@example.com>\r\nTo: b@example.org\r\n\r\nbody\r\n";
    static const char folded[] = "Subject: a\r\n b\0c\r\n\r\nbody\r\n";
    static const char body[] = "Subject: a\r\n\r\nbo\0dy\r\n";
    static const char starts_body[] = "Subject: a\r\nnot\0 a field\r\n";
    struct cleanup_message *msg = NULL;

    (void)state;
    assert_int_equal(
        cleanup_message_parse(value, sizeof value - 1, NULL, &msg, errbuf, sizeof(errbuf)),
        -EILSEQ);
    assert_null(msg);
    assert_string_equal(errbuf, "NUL character in a header field");
    assert_int_equal(
        cleanup_message_parse(folded, sizeof folded - 1, NULL, &msg, errbuf, sizeof(errbuf)),
        -EILSEQ);
    /* the body may hold NUL bytes, and a line with one that is no field starts the body */
    assert_int_equal(
        cleanup_message_parse(body, sizeof body - 1, NULL, &msg, errbuf, sizeof(errbuf)), 0);
    assert_true(msg->body_nul);
    cleanup_message_free(msg);
    assert_int_equal(cleanup_message_parse(starts_body, sizeof starts_body - 1, NULL, &msg, errbuf,
                                           sizeof(errbuf)),
                     0);
    assert_int_equal(msg->nhdrs, 1);
    assert_true(msg->body_nul);
    cleanup_message_free(msg);
}

static void
test_x_headers_extracted_and_removed(void **state)
{
    struct cleanup_opts o;
    struct cleanup_message *msg;
    char *out;

    (void)state;
    cleanup_opts_default(&o);
    o.add_received = 0;
    o.process_x_virtual_mta = o.process_x_job = o.process_x_envid = 1;
    msg = parse_ok(xmsg);
    cleanup_message_apply(msg, &o, NULL, NOW);
    assert_string_equal(msg->virtual_mta, "pool-1");
    assert_string_equal(msg->job_id, "job.42");
    assert_string_equal(msg->envid, "env-7");
    out = render(msg);
    assert_string_equal(out, "From: a@example.com\r\nSubject: s\r\n\r\nb\r\n");
    free(out);
    cleanup_message_free(msg);
}

static void
test_x_headers_retained(void **state)
{
    struct cleanup_opts o;
    struct cleanup_message *msg;
    char *out;

    (void)state;
    cleanup_opts_default(&o);
    o.add_received = 0;
    o.process_x_virtual_mta = o.process_x_job = o.process_x_envid = 1;
    o.retain_x_virtual_mta = o.retain_x_job = o.retain_x_envid = 1;
    msg = parse_ok(xmsg);
    cleanup_message_apply(msg, &o, NULL, NOW);
    assert_string_equal(msg->virtual_mta, "pool-1");
    assert_string_equal(msg->job_id, "job.42");
    out = render(msg);
    assert_string_equal(out, xmsg);
    free(out);
    cleanup_message_free(msg);
}

static void
test_x_headers_ignored_unless_processed(void **state)
{
    struct cleanup_opts o;
    struct cleanup_message *msg;
    char *out;

    (void)state;
    cleanup_opts_default(&o);
    o.add_received = 0;
    msg = parse_ok(xmsg);
    cleanup_message_apply(msg, &o, NULL, NOW);
    assert_null(msg->virtual_mta);
    assert_null(msg->job_id);
    assert_null(msg->envid);
    out = render(msg);
    assert_string_equal(out, xmsg);
    free(out);
    cleanup_message_free(msg);
}

static void
test_bad_job_id_refused_but_removed(void **state)
{
    struct cleanup_opts o;
    struct cleanup_message *msg;

    (void)state;
    cleanup_opts_default(&o);
    o.add_received = 0;
    o.process_x_job = 1;
    msg = parse_ok("From: a@b\r\nX-Job: has space\r\n\r\n");
    cleanup_message_apply(msg, &o, NULL, NOW);
    assert_null(msg->job_id);
    assert_true(msg->bad_job_id);
    assert_null(cleanup_message_find(msg, "X-Job"));
    cleanup_message_free(msg);
    msg = parse_ok("From: a@b\r\nX-Job: ctl\x01"
                   "char\r\n\r\n");
    cleanup_message_apply(msg, &o, NULL, NOW);
    assert_null(msg->job_id);
    assert_true(msg->bad_job_id);
    cleanup_message_free(msg);
}

static void
test_jobid_header_from_message_id(void **state)
{
    struct cleanup_opts o;
    struct cleanup_message *msg;

    (void)state;
    cleanup_opts_default(&o);
    o.add_received = 0;
    o.process_x_job = 1;
    o.jobid_header = "Message-ID";
    msg = parse_ok("From: a@b\r\nMessage-ID: <id1@b>\r\n\r\n");
    cleanup_message_apply(msg, &o, NULL, NOW);
    assert_string_equal(msg->job_id, "<id1@b>");
    assert_non_null(cleanup_message_find(msg, "Message-ID")); /* not ours to strip */
    cleanup_message_free(msg);
}

static void
test_empty_x_virtual_mta_passed_through(void **state)
{
    struct cleanup_opts o;
    struct cleanup_message *msg;

    (void)state;
    cleanup_opts_default(&o);
    o.add_received = 0;
    o.process_x_virtual_mta = 1;
    msg = parse_ok("From: a@b\r\nX-Virtual-MTA:\r\n\r\n");
    cleanup_message_apply(msg, &o, NULL, NOW);
    assert_string_equal(msg->virtual_mta, ""); /* allow-empty-x-virtual-mta decides */
    cleanup_message_free(msg);
}

/* --- Received, Message-ID, Date --------------------------------------------- */

static const struct cleanup_client client = {
    .helo = "feeder.example.net",
    .rdns = "feeder.example.net",
    .addr = "192.0.2.7",
    .protocol = "ESMTPSA",
    .auth_user = "bulk(user)",
    .tls = "TLSv1.3 with cipher X",
    .host_name = "mta.example.com",
    .queue_id = "Q123",
    .rcpt = "r@example.org",
};

static void
test_received_added(void **state)
{
    struct cleanup_opts o;
    struct cleanup_message *msg;
    char *out;

    (void)state;
    cleanup_opts_default(&o);
    msg = parse_ok("From: a@b\r\n\r\nb\r\n");
    cleanup_message_apply(msg, &o, &client, NOW);
    out = render(msg);
    assert_string_equal(out,
                        "Received: from feeder.example.net (feeder.example.net [192.0.2.7])\r\n"
                        "\t(using TLSv1.3 with cipher X)\r\n"
                        "\t(Authenticated sender: bulk?user?)\r\n"
                        "\tby mta.example.com (openpmta) with ESMTPSA id Q123\r\n"
                        "\tfor <r@example.org>; Tue, 14 Nov 2023 22:13:20 +0000\r\n"
                        "From: a@b\r\n\r\nb\r\n");
    assert_int_equal(msg->qid_offset, SIZE_MAX); /* real id given: nothing to patch */
    free(out);
    cleanup_message_free(msg);
}

static void
test_received_hidden_and_omitted(void **state)
{
    struct cleanup_opts o;
    struct cleanup_message *msg;
    char *out;

    (void)state;
    cleanup_opts_default(&o);
    o.hide_source = 1;
    msg = parse_ok("From: a@b\r\n\r\n");
    cleanup_message_apply(msg, &o, &client, NOW);
    out = render(msg);
    assert_null(strstr(out, "feeder"));
    assert_null(strstr(out, "192.0.2.7"));
    assert_null(strstr(out, "bulk"));
    assert_non_null(strstr(out, "Received: (using TLSv1.3 with cipher X)\r\n"
                                "\tby mta.example.com (openpmta) with ESMTPSA id Q123"));
    free(out);
    cleanup_message_free(msg);

    o.add_received = 0;
    msg = parse_ok("From: a@b\r\n\r\n");
    cleanup_message_apply(msg, &o, &client, NOW);
    out = render(msg);
    assert_string_equal(out, "From: a@b\r\n\r\n");
    free(out);
    cleanup_message_free(msg);
}

static void
test_received_peer_text_cannot_inject(void **state)
{
    struct cleanup_client c = client;
    struct cleanup_opts o;
    struct cleanup_message *msg;
    char *out;

    (void)state;
    c.helo = "evil\r\nX-Injected: 1";
    c.tls = NULL;
    c.auth_user = NULL;
    cleanup_opts_default(&o);
    msg = parse_ok("From: a@b\r\n\r\n");
    cleanup_message_apply(msg, &o, &c, NOW);
    out = render(msg);
    assert_null(strstr(out, "\nX-Injected"));
    assert_non_null(strstr(out, "from evil??X-Injected:?1 ("));
    free(out);
    cleanup_message_free(msg);
}

static void
test_queue_id_placeholder_patched_in_place(void **state)
{
    struct cleanup_client c = client;
    struct cleanup_opts o;
    struct cleanup_message *msg;
    char *out;
    const char *qid = "00000000ABCDEF123456";

    (void)state;
    c.queue_id = NULL;
    cleanup_opts_default(&o);
    msg = parse_ok("From: a@b\r\n\r\n");
    cleanup_message_apply(msg, &o, &c, NOW);
    cleanup_message_prepend(msg, "DKIM-Signature: v=1; fake"); /* shifts the offset */
    out = render(msg);
    assert_int_not_equal(msg->qid_offset, SIZE_MAX);
    assert_memory_equal(out + msg->qid_offset, CLEANUP_QID_PLACEHOLDER,
                        strlen(CLEANUP_QID_PLACEHOLDER));
    assert_int_equal(strlen(qid), strlen(CLEANUP_QID_PLACEHOLDER));
    memcpy(out + msg->qid_offset, qid, strlen(qid));
    assert_non_null(strstr(out, "with ESMTPSA id 00000000ABCDEF123456\r\n"));
    assert_true(strncmp(out, "DKIM-Signature: v=1; fake\r\nReceived: ", 37) == 0);
    free(out);
    cleanup_message_free(msg);
}

static void
test_message_id_and_date_only_when_missing(void **state)
{
    struct cleanup_opts o;
    struct cleanup_message *msg;
    const char *mid;

    (void)state;
    cleanup_opts_default(&o);
    o.add_received = 0;
    o.add_message_id = 1;
    o.add_date = CLEANUP_DATE_YES;
    msg = parse_ok("From: a@b\r\n\r\n");
    cleanup_message_apply(msg, &o, &client, NOW);
    mid = value_of(msg, "Message-ID");
    assert_non_null(mid);
    assert_true(strncmp(mid, "<20231114221320.", 16) == 0);
    assert_non_null(strstr(mid, "@mta.example.com>"));
    assert_string_equal(value_of(msg, "Date"), "Tue, 14 Nov 2023 22:13:20 +0000");
    cleanup_message_free(msg);

    msg = parse_ok(
        "From: a@b\r\nMessage-Id: <keep@b>\r\nDate: Mon, 1 Jan 2001 00:00:00 +0000\r\n\r\n");
    cleanup_message_apply(msg, &o, &client, NOW);
    assert_string_equal(value_of(msg, "Message-ID"), "<keep@b>");
    assert_string_equal(value_of(msg, "Date"), "Mon, 1 Jan 2001 00:00:00 +0000");
    assert_int_equal(msg->nhdrs, 3);
    cleanup_message_free(msg);

    o.add_message_id = 0;
    o.add_date = CLEANUP_DATE_NO;
    msg = parse_ok("From: a@b\r\n\r\n");
    cleanup_message_apply(msg, &o, &client, NOW);
    assert_null(value_of(msg, "Message-ID"));
    assert_null(value_of(msg, "Date"));
    cleanup_message_free(msg);
}

static void
test_date_override(void **state)
{
    struct cleanup_opts o;
    struct cleanup_message *msg;
    char *out;

    (void)state;
    cleanup_opts_default(&o);
    o.add_received = 0;
    o.add_date = CLEANUP_DATE_OVERRIDE;
    msg = parse_ok("Date: Mon, 1 Jan 2001 00:00:00 +0000\r\nFrom: a@b\r\n\r\nx\r\n");
    cleanup_message_apply(msg, &o, NULL, NOW);
    out = render(msg);
    assert_string_equal(out, "From: a@b\r\nDate: Tue, 14 Nov 2023 22:13:20 +0000\r\n\r\nx\r\n");
    free(out);
    cleanup_message_free(msg);
}

/* --- DKIM identity and keys --------------------------------------------------- */

static void
expect_domain(const char *value, const char *want)
{
    char dom[256];
    int r = cleanup_address_domain(value, dom, sizeof(dom));

    if (want == NULL) {
        assert_int_equal(r, -EINVAL);
        return;
    }
    assert_int_equal(r, 0);
    assert_string_equal(dom, want);
}

static void
test_address_domain_forms(void **state)
{
    (void)state;
    expect_domain("user@Example.COM", "example.com");
    expect_domain("John Doe <john@sub.example.com>", "sub.example.com");
    expect_domain("\"Doe, John\" <john@example.org>", "example.org");
    expect_domain("\"odd@local <x>\"@quoted.example", "quoted.example");
    expect_domain("(comment <x@evil.example>) user@good.example (trailing)", "good.example");
    expect_domain("user@(inner comment)example.net", "example.net");
    expect_domain("first@one.example, second@two.example", "one.example");
    expect_domain("Undisclosed: a@grp.example, b@x.example;", "grp.example");
    expect_domain("<@route.example:u@final.example>", "final.example");
    expect_domain("user@example.com.", "example.com");
    expect_domain("no address here", NULL);
    expect_domain("user@[192.0.2.1]", NULL);
    expect_domain("user@bad;domain", "bad");
    expect_domain("", NULL);
}

static void
test_identity_sender_then_from_then_fallback(void **state)
{
    struct cleanup_dkim_opts o = { 0 };
    struct cleanup_message *msg;
    char dom[256];

    (void)state;
    msg = parse_ok("From: f@from.example\r\nSender: s@sender.example\r\n\r\n");
    assert_int_equal(cleanup_dkim_identity_domain(msg, &o, dom, sizeof(dom)), 0);
    assert_string_equal(dom, "sender.example");
    o.identity = "@forced.example";
    assert_int_equal(cleanup_dkim_identity_domain(msg, &o, dom, sizeof(dom)), 0);
    assert_string_equal(dom, "forced.example");
    cleanup_message_free(msg);

    o.identity = NULL;
    msg = parse_ok("From: Someone <f@from.example>\r\n\r\n");
    assert_int_equal(cleanup_dkim_identity_domain(msg, &o, dom, sizeof(dom)), 0);
    assert_string_equal(dom, "from.example");
    cleanup_message_free(msg);

    msg = parse_ok("Subject: none\r\n\r\n");
    assert_int_equal(cleanup_dkim_identity_domain(msg, &o, dom, sizeof(dom)), -ENOENT);
    o.fallback_identity = "fallback.example";
    assert_int_equal(cleanup_dkim_identity_domain(msg, &o, dom, sizeof(dom)), 0);
    assert_string_equal(dom, "fallback.example");
    cleanup_message_free(msg);
}

static char *
data_path(const char *rel)
{
    const char *src = getenv("PMTA_SRCDIR");

    return xasprintf("%s/t/data/%s", src ? src : PMTA_SRCDIR, rel);
}

static void
test_key_choice_by_identity(void **state)
{
    struct cleanup_dkim *dk = cleanup_dkim_create(errbuf, sizeof(errbuf));
    struct cleanup_dkim_keylist *vmta = cleanup_dkim_keylist_create();
    struct cleanup_dkim_keylist *global = cleanup_dkim_keylist_create();
    const struct cleanup_dkim_keylist *lists[] = { vmta, global };
    struct cleanup_dkim_choice ch;
    char *key = data_path("dkim/test.key");

    (void)state;
    assert_non_null(dk);
    assert_int_equal(
        cleanup_dkim_keylist_add(dk, vmta, "v1", "vmta.example", key, errbuf, sizeof(errbuf)), 0);
    assert_int_equal(
        cleanup_dkim_keylist_add(dk, global, "s1", "Example.COM", key, errbuf, sizeof(errbuf)), 0);
    assert_int_equal(
        cleanup_dkim_keylist_add(dk, global, "s2", "sub.example.com", key, errbuf, sizeof(errbuf)),
        0);
    assert_int_equal(cleanup_dkim_keylist_add(dk, global, "wild", "*", key, errbuf, sizeof(errbuf)),
                     0);

    /* the parent-domain key comes first in order, so it wins for sub.example.com */
    assert_int_equal(cleanup_dkim_choose(lists, 2, "sub.example.com", CFG_DKIM_RSA_SHA256, &ch), 1);
    assert_string_equal(ch.selector, "s1");
    assert_string_equal(ch.domain, "example.com");
    /* a suffix that is not a parent does not match */
    assert_int_equal(cleanup_dkim_choose(lists, 2, "notexample.com", CFG_DKIM_RSA_SHA256, &ch), 1);
    assert_string_equal(ch.selector, "wild");
    assert_string_equal(ch.domain, "notexample.com");
    /* the virtual MTA's list is scanned before the global one */
    assert_int_equal(cleanup_dkim_choose(lists, 2, "a.vmta.example", CFG_DKIM_RSA_SHA256, &ch), 1);
    assert_string_equal(ch.selector, "v1");
    /* without the wildcard: no key, no signature */
    assert_int_equal(cleanup_dkim_choose(lists, 1, "other.example", CFG_DKIM_RSA_SHA256, &ch), 0);
    /* one file, one cache entry: every list entry shares the loaded key */
    assert_ptr_equal(cleanup_dkim_key_load(dk, key, NULL, errbuf, sizeof(errbuf)), ch.key);
    /* no Ed25519 key at all: ed25519-sha256 finds none */
    assert_int_equal(cleanup_dkim_choose(lists, 2, "example.com", CFG_DKIM_ED25519_SHA256, &ch), 0);

    free(key);
    cleanup_dkim_keylist_free(vmta);
    cleanup_dkim_keylist_free(global);
    cleanup_dkim_free(dk);
}

/* each algorithm takes the first matching key of its own type, in list order */
static void
test_key_choice_by_algorithm(void **state)
{
    struct cleanup_dkim *dk = cleanup_dkim_create(errbuf, sizeof(errbuf));
    struct cleanup_dkim_keylist *l = cleanup_dkim_keylist_create();
    const struct cleanup_dkim_keylist *lists[] = { l };
    struct cleanup_dkim_choice ch;
    char *rsa = data_path("dkim/test.key"), *ed = data_path("dkim/test-ed25519.key");

    (void)state;
    assert_int_equal(
        cleanup_dkim_keylist_add(dk, l, "ed", "example.com", ed, errbuf, sizeof errbuf), 0);
    assert_int_equal(cleanup_dkim_keylist_add(dk, l, "rsa", "*", rsa, errbuf, sizeof errbuf), 0);
    assert_int_equal(cleanup_dkim_choose(lists, 1, "example.com", CFG_DKIM_RSA_SHA256, &ch), 1);
    assert_string_equal(ch.selector, "rsa"); /* the Ed25519 key listed first is not RSA */
    assert_int_equal(cleanup_dkim_key_alg(ch.key), CFG_DKIM_RSA_SHA256);
    assert_int_equal(cleanup_dkim_choose(lists, 1, "example.com", CFG_DKIM_ED25519_SHA256, &ch), 1);
    assert_string_equal(ch.selector, "ed");
    assert_int_equal(cleanup_dkim_key_alg(ch.key), CFG_DKIM_ED25519_SHA256);
    assert_int_equal(cleanup_dkim_choose(lists, 1, "other.example", CFG_DKIM_ED25519_SHA256, &ch),
                     0);
    free(rsa);
    free(ed);
    cleanup_dkim_keylist_free(l);
    cleanup_dkim_free(dk);
}

static void
test_key_errors_are_clear(void **state)
{
    struct cleanup_dkim *dk = cleanup_dkim_create(errbuf, sizeof(errbuf));
    struct cleanup_dkim_keylist *l = cleanup_dkim_keylist_create();
    char *bad = data_path("dkim/invalid.key");
    char *pub = data_path("dkim/test.txt");

    (void)state;
    assert_int_equal(cleanup_dkim_keylist_add(dk, l, "s", "example.com", "/nonexistent/k.pem",
                                              errbuf, sizeof(errbuf)),
                     -ENOENT);
    assert_string_equal(errbuf,
                        "cannot read DKIM key /nonexistent/k.pem: No such file or directory");
    assert_int_equal(
        cleanup_dkim_keylist_add(dk, l, "s", "example.com", bad, errbuf, sizeof(errbuf)), -EINVAL);
    assert_non_null(strstr(errbuf, "not an unencrypted private key in PEM form"));
    assert_int_equal(
        cleanup_dkim_keylist_add(dk, l, "s", "example.com", pub, errbuf, sizeof(errbuf)), -EINVAL);
    assert_int_equal(
        cleanup_dkim_keylist_add(dk, l, "s", "example.com", "/", errbuf, sizeof(errbuf)), -EINVAL);
    assert_int_equal(
        cleanup_dkim_keylist_add(dk, l, "bad sel", "example.com", pub, errbuf, sizeof(errbuf)),
        -EINVAL);
    assert_int_equal(
        cleanup_dkim_keylist_add(dk, l, "s", "exa mple.com", pub, errbuf, sizeof(errbuf)), -EINVAL);
    free(bad);
    free(pub);
    cleanup_dkim_keylist_free(l);
    cleanup_dkim_free(dk);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        UNIT_TEST(test_parse_simple),
        UNIT_TEST(test_folded_header_unfolded_for_reading_kept_for_output),
        UNIT_TEST(test_bare_lf_and_cr_become_crlf),
        UNIT_TEST(test_body_edge_cases),
        UNIT_TEST(test_non_header_line_starts_body),
        UNIT_TEST(test_8bit_detection),
        UNIT_TEST(test_ten_thousand_headers_refused),
        UNIT_TEST(test_megabyte_header_line_refused),
        UNIT_TEST(test_folded_field_and_section_limits),
        UNIT_TEST(test_nul_in_header_field_refused),
        UNIT_TEST(test_x_headers_extracted_and_removed),
        UNIT_TEST(test_x_headers_retained),
        UNIT_TEST(test_x_headers_ignored_unless_processed),
        UNIT_TEST(test_bad_job_id_refused_but_removed),
        UNIT_TEST(test_jobid_header_from_message_id),
        UNIT_TEST(test_empty_x_virtual_mta_passed_through),
        UNIT_TEST(test_received_added),
        UNIT_TEST(test_received_hidden_and_omitted),
        UNIT_TEST(test_received_peer_text_cannot_inject),
        UNIT_TEST(test_queue_id_placeholder_patched_in_place),
        UNIT_TEST(test_message_id_and_date_only_when_missing),
        UNIT_TEST(test_date_override),
        UNIT_TEST(test_address_domain_forms),
        UNIT_TEST(test_identity_sender_then_from_then_fallback),
        UNIT_TEST(test_key_choice_by_identity),
        UNIT_TEST(test_key_choice_by_algorithm),
        UNIT_TEST(test_key_errors_are_clear),
    };

    /* Dates in expected strings are UTC. */
    setenv("TZ", "UTC", 1);
    tzset();
    msg_init("test_cleanup_message");
    return cmocka_run_group_tests(tests, NULL, NULL);
}
