/*
 * test_qmgr_bouncecat.c - unit tests for qmgr/qmgr_bouncecat: every default
 * category from realistic provider replies (Gmail, Yahoo, Outlook, quota,
 * expiry, routing), the status-code mapping with and without a leading reply
 * code, configured lines overriding the defaults, first match wins, a
 * configured "//" ending the search, and a pathological pattern that hits the
 * match limit without stalling.
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

#include "cfg.h"
#include "msg.h"

#include "qmgr_bouncecat.h"

static void
quiet(void *ctx, enum cfg_diag_level level, const char *file, unsigned line, const char *message)
{}

static struct cfg *
load(const char *text)
{
    unsigned nerr = 0;
    struct cfg *c = cfg_load_string("t.conf", text, quiet, NULL, &nerr);

    assert_non_null(c);
    assert_int_equal(nerr, 0);
    return c;
}

struct sample {
    const char *status;
    const char *reply;
    const char *category;
};

static const struct sample provider_samples[] = {
    { "5.1.1",
      "550-5.1.1 The email account that you tried to reach does not exist. Please try "
      "550-5.1.1 double-checking the recipient's email address for typos or 550 5.1.1 "
      "unnecessary spaces. https://support.google.com/mail/?p=NoSuchUser",
      "bad-mailbox" },
    { "5.0.0",
      "554 delivery error: dd This user doesn't have a yahoo.com account "
      "(nobody@yahoo.com) [0] - mta1003.mail.gq1.yahoo.com",
      "bad-mailbox" },
    { "5.7.1",
      "550 5.7.1 Service unavailable, Client host [192.0.2.7] blocked using Spamhaus. "
      "To request removal from this list see https://www.spamhaus.org/query/ip/192.0.2.7 "
      "(AS3130). [BN8NAM12FT003.eop-nam12.prod.protection.outlook.com]",
      "spam-related" },
    { "4.2.2", "452 4.2.2 The email account that you tried to reach is over quota.",
      "quota-issues" },
    { "5.2.2", "552 5.2.2 Mailbox full", "quota-issues" },
    { "4.4.7", "delivery time expired", "message-expired" },
    { "5.4.4", "550 5.4.4 Unable to route: no mail hosts for domain", "routing-errors" },
    { "5.7.1", "554 5.7.1 This message has been blocked because it contains a virus",
      "spam-related" }, /* "blocked" comes first in the list, as in PowerMTA's */
    { "5.7.1", "554 5.7.1 Virus found in message", "virus-related" },
    { "5.6.0", "550 5.6.0 Message content rejected", "content-related" },
    { "5.2.1", "550 5.2.1 The email account that you tried to reach is disabled.",
      "inactive-mailbox" },
    { "5.1.1",
      "550 5.1.1 <x@y.example>: Recipient address rejected: User unknown in virtual "
      "mailbox table",
      "bad-mailbox" },
    { "5.1.8", "553 5.1.8 Sender address verification failed", "invalid-sender" },
    { "5.7.1", "554 5.7.1 <x@y.example>: Relay access denied", "relaying-issues" },
    { "5.1.2", "550 5.1.2 Domain no longer in use", "bad-domain" },
    { "5.7.0", "550 5.7.0 Message refused by local policy", "policy-related" },
    { "5.5.2", "500 5.5.2 Syntax error, command unrecognized", "protocol-errors" },
    { "2.0.0", "250 2.0.0 OK 1700000000 queued", "success" },
    { "5.1.1", "550 5.1.1 Unrouteable... no", "routing-errors" },
    /* nothing textual: the enhanced status code decides */
    { "5.1.1", "550 5.1.1 go away", "bad-mailbox" },
    { "5.1.2", "550 5.1.2 go away", "bad-domain" },
    { "5.3.5", "554 5.3.5 go away", "bad-configuration" },
    { "4.4.1", "connection timed out", "no-answer-from-host" },
    { "4.4.2", "421 4.4.2 connection dropped", "bad-connection" },
    { "5.4.6", "554 5.4.6 loop detected", "routing-errors" },
    { "5.7.1", "550 5.7.1 go away", "policy-related" },
    { "5.9.9", "550 5.9.9 go away", "other" },
    { NULL, "", "other" },
};

/*
 * Replies the big providers send (their published texts), with the category
 * an operator files them under. Throttling is a policy of the receiver's,
 * never quota-issues (which is a full mailbox).
 */
static const struct sample big_provider_replies[] = {
    /* Gmail */
    { "5.1.1",
      "550-5.1.1 The email account that you tried to reach does not exist. Please try "
      "550-5.1.1 double-checking the recipient's email address for typos or 550 5.1.1 "
      "unnecessary spaces. For more information, go to 550 5.1.1 "
      "https://support.google.com/mail/?p=NoSuchUser",
      "bad-mailbox" },
    { "4.2.2",
      "452-4.2.2 The recipient's inbox is out of storage space. Please direct the "
      "452-4.2.2 recipient to 452 4.2.2 https://support.google.com/mail/?p=OverQuotaTemp",
      "quota-issues" },
    { "4.2.1",
      "450-4.2.1 The user you are trying to contact is receiving mail at a rate that "
      "450-4.2.1 prevents additional messages from being delivered. Please resend your "
      "450 4.2.1 message at a later time.",
      "policy-related" },
    { "4.7.28",
      "421-4.7.28 Gmail has detected an unusual rate of unsolicited mail originating from "
      "421-4.7.28 your SPF domain. To protect our users from spam, mail sent from your "
      "421 4.7.28 domain has been temporarily rate limited.",
      "spam-related" },
    { "4.7.0", "421-4.7.0 Try again later, closing connection. (EHLO)", "policy-related" },
    { "5.7.26",
      "550-5.7.26 This mail has been blocked because the sender is unauthenticated. "
      "550-5.7.26 Gmail requires all senders to authenticate with either SPF or DKIM.",
      "spam-related" },
    { "5.7.1",
      "550-5.7.1 Our system has detected that this message is likely unsolicited mail. "
      "550-5.7.1 To reduce the amount of spam sent to Gmail, this message has been blocked.",
      "spam-related" },
    { "5.2.1", "550 5.2.1 The email account that you tried to reach is disabled.",
      "inactive-mailbox" },
    /* Yahoo */
    { "4.7.0",
      "421 4.7.0 [TSS04] Messages from 192.0.2.7 temporarily deferred due to unexpected "
      "volume or user complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes",
      "policy-related" },
    { "5.0.0",
      "554 delivery error: dd This user doesn't have a yahoo.com account "
      "(nobody@yahoo.com) [0] - mta1003.mail.gq1.yahoo.com",
      "bad-mailbox" },
    { "5.7.9",
      "554 5.7.9 Message not accepted for policy reasons.  See "
      "https://postmaster.yahooinc.com/error-codes",
      "policy-related" },
    { "5.7.1",
      "553 5.7.1 [BL21] Connections will not be accepted from 192.0.2.7, because the ip is "
      "in Spamhaus's list; see https://postmaster.yahooinc.com/error-codes",
      "spam-related" },
    { "4.7.1", "421 4.7.1 [TS03] All messages from 192.0.2.7 will be permanently deferred",
      "policy-related" },
    /* Outlook / Microsoft 365 */
    { "4.7.650",
      "451 4.7.650 The mail server [192.0.2.7] has been temporarily rate limited due to IP "
      "reputation. For e-mail delivery information, see https://postmaster.live.com (S775)",
      "policy-related" },
    { "5.5.0", "550 5.5.0 Requested action not taken: mailbox unavailable (S2017062302).",
      "bad-mailbox" },
    { "5.7.1",
      "550 5.7.1 Unfortunately, messages from [192.0.2.7] weren't sent. Please contact your "
      "Internet service provider since part of their network is on our block list (S3150).",
      "spam-related" },
    { "5.4.1", "550 5.4.1 Recipient address rejected: Access denied. AS(201806281)",
      "bad-mailbox" },
    { "4.7.500", "451 4.7.500 Server busy. Please try again later from [192.0.2.7]. (AS780)",
      "policy-related" },
    /* generic throttles */
    { "4.7.0", "421 4.7.0 Too many concurrent SMTP connections; please try again later.",
      "policy-related" },
    { "4.3.2", "452 4.3.2 Rate limit exceeded, try again later", "policy-related" },
};

/* Results we made up (code 0): the status decides, never our own words. */
static const struct sample local_results[] = {
    { "4.4.1", "4.4.1 connect to mx.example[192.0.2.1]:25: connection refused",
      "no-answer-from-host" },
    { "4.4.1", "timeout connecting to mx.example[192.0.2.1] after 120 s", "no-answer-from-host" },
    { "4.4.2", "lost connection with mx.example[192.0.2.1] while in data: connection closed",
      "bad-connection" },
    { "4.4.3", "DNS lookup of example.com timed out (rejected by policy)", "routing-errors" },
    { "5.1.2", "domain example.invalid does not exist (denied)", "bad-domain" },
    { "5.4.7", "message expired: 550 5.7.1 denied by policy", "message-expired" },
};

static void
test_big_provider_replies(void **state)
{
    struct qmgr_bouncecat *bc = qmgr_bouncecat_new(NULL);

    (void)state;
    for (size_t i = 0; i < sizeof big_provider_replies / sizeof big_provider_replies[0]; i++) {
        const struct sample *s = &big_provider_replies[i];
        const char *got = qmgr_bouncecat_classify_result(bc, 421, s->status, s->reply);
        if (strcmp(got, s->category) != 0)
            fail_msg("reply %zu \"%s\": got %s, want %s", i, s->reply, got, s->category);
    }
    for (size_t i = 0; i < sizeof local_results / sizeof local_results[0]; i++) {
        const struct sample *s = &local_results[i];
        const char *got = qmgr_bouncecat_classify_result(bc, 0, s->status, s->reply);
        if (strcmp(got, s->category) != 0)
            fail_msg("local result %zu \"%s\": got %s, want %s", i, s->reply, got, s->category);
    }
    /* the same words in a receiver's reply are its policy */
    assert_string_equal(qmgr_bouncecat_classify_result(bc, 554, "5.7.0", "554 5.7.0 refused"),
                        "policy-related");
    qmgr_bouncecat_free(bc);
}

static void
test_default_categories_from_provider_replies(void **state)
{
    struct qmgr_bouncecat *bc = qmgr_bouncecat_new(NULL);

    assert_int_equal(qmgr_bouncecat_configured(bc), 0);
    assert_true(qmgr_bouncecat_count(bc) > 40);
    for (size_t i = 0; i < sizeof provider_samples / sizeof provider_samples[0]; i++) {
        const struct sample *s = &provider_samples[i];
        const char *got = qmgr_bouncecat_classify_reply(bc, s->status, s->reply);
        if (strcmp(got, s->category) != 0)
            fail_msg("sample %zu \"%s %s\": got %s, want %s", i, s->status ? s->status : "",
                     s->reply, got, s->category);
    }
    qmgr_bouncecat_free(bc);
}

static void
test_status_text_and_bare_replies(void **state)
{
    struct qmgr_bouncecat *bc = qmgr_bouncecat_new(NULL);
    char text[64];

    assert_string_equal(qmgr_bouncecat_status_text(text, sizeof text, "5.1.1", "550 x"),
                        "5.1.1 550 x");
    assert_string_equal(qmgr_bouncecat_status_text(text, sizeof text, NULL, "550 x"), "550 x");
    assert_string_equal(qmgr_bouncecat_status_text(text, sizeof text, "4.4.7", NULL), "4.4.7");
    /* a bare reply with a reply code before the enhanced code classifies the same */
    assert_string_equal(qmgr_bouncecat_classify(bc, "550 5.1.1 <x@y>: go away"), "bad-mailbox");
    assert_string_equal(qmgr_bouncecat_classify(bc, "550-5.4.7 go away"), "message-expired");
    assert_string_equal(qmgr_bouncecat_classify(bc, "5.1.10 go away"), "other");
    assert_string_equal(qmgr_bouncecat_classify(bc, "550 5.1.1 <x@y>: user unknown"),
                        "bad-mailbox");
    assert_string_equal(qmgr_bouncecat_classify(bc, "MAILBOX FULL"), "quota-issues"); /* caseless */
    assert_string_equal(qmgr_bouncecat_classify(bc, NULL), "other");
    qmgr_bouncecat_free(bc);
}

static void
test_configured_list_overrides_defaults(void **state)
{
    struct cfg *c = load("<bounce-category-patterns>\n"
                         "  /user unknown/ my-bad-user\n"
                         "  /unknown/ my-unknown\n"
                         "  /quota \\/ storage/ my-quota\n"
                         "</bounce-category-patterns>\n");
    struct qmgr_bouncecat *bc = qmgr_bouncecat_new(c);

    assert_int_equal(qmgr_bouncecat_configured(bc), 3);
    /* first match wins: both configured lines match, the first one counts */
    assert_string_equal(qmgr_bouncecat_classify_reply(bc, "5.1.1", "550 5.1.1 User Unknown"),
                        "my-bad-user");
    assert_string_equal(qmgr_bouncecat_classify_reply(bc, "5.1.2", "550 domain unknown"),
                        "my-unknown");
    assert_string_equal(qmgr_bouncecat_classify(bc, "452 quota / storage exceeded"), "my-quota");
    /* what the configured lines do not match still gets a stock category */
    assert_string_equal(qmgr_bouncecat_classify_reply(bc, "5.7.1", "550 blocked by Spamhaus"),
                        "spam-related");
    qmgr_bouncecat_free(bc);
    cfg_free(c);
}

static void
test_configured_catch_all_ends_search(void **state)
{
    struct cfg *c = load("<bounce-category-patterns>\n"
                         "  /spam/ junk\n"
                         "  // unclassified\n"
                         "</bounce-category-patterns>\n");
    struct qmgr_bouncecat *bc = qmgr_bouncecat_new(c);

    assert_string_equal(qmgr_bouncecat_classify(bc, "550 5.7.1 SPAM detected"), "junk");
    assert_string_equal(qmgr_bouncecat_classify(bc, "550 5.1.1 user unknown"), "unclassified");
    qmgr_bouncecat_free(bc);
    cfg_free(c);
}

static void
test_pathological_pattern_is_bounded(void **state)
{
    struct cfg *c = load("<bounce-category-patterns>\n"
                         "  /^(a+)+$/ never\n"
                         "</bounce-category-patterns>\n");
    struct qmgr_bouncecat *bc = qmgr_bouncecat_new(c);
    char text[64];

    memset(text, 'a', sizeof text - 2);
    text[sizeof text - 2] = '!'; /* 2^62 ways to fail without the match limit */
    text[sizeof text - 1] = 0;
    assert_string_equal(qmgr_bouncecat_classify(bc, text), "other");
    qmgr_bouncecat_free(bc);
    cfg_free(c);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        UNIT_TEST(test_default_categories_from_provider_replies),
        UNIT_TEST(test_status_text_and_bare_replies),
        UNIT_TEST(test_big_provider_replies),
        UNIT_TEST(test_configured_list_overrides_defaults),
        UNIT_TEST(test_configured_catch_all_ends_search),
        UNIT_TEST(test_pathological_pattern_is_bounded),
    };

    msg_init("test_qmgr_bouncecat");
    return cmocka_run_group_tests(tests, NULL, NULL);
}
