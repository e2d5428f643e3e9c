/*
 * test_smtpd_policy.c - smtpd's <source> policy of a session, before and
 * after AUTH, through smtpd_policy.c and conf's cfg_resolve_session
 *
 * The regression: smtpd layered {auth} with its own copy of the rules and
 * took `smtp-command-timeout ""` as 0 (no timer at all) and `allow-auth ""`
 * as no, where "" means the built-in default (10m, yes) as it does in cleanup.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <cmocka.h>

#include "unit.h"

#include "cfg.h"
#include "smtpd.h"

static struct cfg *
load(const char *text)
{
    unsigned n = 0;
    struct cfg *c = cfg_load_string("t.conf", text, NULL, NULL, &n);

    assert_non_null(c);
    return c;
}

static struct sockaddr_in
client(const char *ip)
{
    struct sockaddr_in sin;

    memset(&sin, 0, sizeof sin);
    sin.sin_family = AF_INET;
    assert_int_equal(inet_pton(AF_INET, ip, &sin.sin_addr), 1);
    return sin;
}

static void
test_auth_reset_means_default(void **state)
{
    struct cfg *c = load("<source 0/0>\n smtp-command-timeout 30s\n smtp-data-timeout 40s\n"
                         " allow-auth no\n max-message-size 2M\n</source>\n"
                         "<source {auth}>\n smtp-command-timeout \"\"\n smtp-data-timeout \"\"\n"
                         " allow-auth \"\"\n max-message-size \"\"\n</source>\n");
    struct sockaddr_in sin = client("192.0.2.7");
    struct smtpd_policy pol;

    (void)state;
    smtpd_policy_resolve(c, (struct sockaddr *)&sin, "", &pol);
    assert_int_equal(pol.command_timeout_ms, 30000);
    assert_int_equal(pol.data_timeout_ms, 40000);
    assert_false(pol.allow_auth);
    assert_int_equal(pol.max_message_size, 2 << 20);
    smtpd_policy_layer_auth(c, (struct sockaddr *)&sin, "", "someone", &pol);
    assert_int_equal(pol.command_timeout_ms, 600000); /* the default 10m, not 0 (no timer) */
    assert_int_equal(pol.data_timeout_ms, 600000);
    assert_true(pol.allow_auth);               /* the default yes */
    assert_int_equal(pol.max_message_size, 0); /* unlimited */
    cfg_free(c);
}

static void
test_pickup_and_user_source(void **state)
{
    struct cfg *c = load("<source big>\n max-message-size 9M\n</source>\n"
                         "<smtp-user u>\n password p\n source big\n</smtp-user>\n");
    struct smtpd_policy pol;

    (void)state;
    smtpd_policy_resolve(c, NULL, "{pickup}", &pol);
    assert_true(pol.always_allow_relaying); /* local submission relays */
    smtpd_policy_layer_auth(c, NULL, "{pickup}", "u", &pol);
    assert_true(pol.always_allow_relaying);
    assert_int_equal(pol.max_message_size, 9 << 20);
    cfg_free(c);
    c = load("<source {pickup}>\n always-allow-relaying no\n</source>\n");
    smtpd_policy_resolve(c, NULL, "{pickup}", &pol);
    assert_false(pol.always_allow_relaying);
    cfg_free(c);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        UNIT_TEST(test_auth_reset_means_default),
        UNIT_TEST(test_pickup_and_user_source),
    };
    return cmocka_run_group_tests_name("smtpd_policy", tests, NULL, NULL);
}
