/*
 * test_anvil.c - unit tests for runtime/anvil: the connection table the
 * smtpd processes share (limits per address, rates, the total across
 * processes, a dead process's counts).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "unit.h"

#include "anvil.h"

static struct sockaddr_storage
v4(const char *text)
{
    struct sockaddr_storage ss;
    struct sockaddr_in *sin = (struct sockaddr_in *)&ss;

    memset(&ss, 0, sizeof(ss));
    sin->sin_family = AF_INET;
    assert_int_equal(inet_pton(AF_INET, text, &sin->sin_addr), 1);
    return ss;
}

static struct sockaddr_storage
v6(const char *text)
{
    struct sockaddr_storage ss;
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;

    memset(&ss, 0, sizeof(ss));
    sin6->sin6_family = AF_INET6;
    assert_int_equal(inet_pton(AF_INET6, text, &sin6->sin6_addr), 1);
    return ss;
}

#define SA(ss) ((const struct sockaddr *)&(ss))

static struct anvil *
table(unsigned nslots, unsigned slot, int *fd)
{
    int err = 0;
    struct anvil *a;

    *fd = anvil_create(nslots, 1024);
    assert_true(*fd >= 0);
    a = anvil_attach(*fd, slot, &err);
    assert_non_null(a);
    return a;
}

static void
test_per_address_limit(void **state)
{
    struct anvil_limits lim = { .total = 100, .per_addr = 3 };
    struct sockaddr_storage a1 = v4("192.0.2.1"), a2 = v4("192.0.2.2");
    struct anvil_ticket t[5];
    unsigned total;
    int fd;
    struct anvil *a = table(1, 0, &fd);

    (void)state;
    for (int i = 0; i < 3; i++)
        assert_int_equal(anvil_connect(a, SA(a1), &lim, 1000, &t[i], &total), ANVIL_ADMIT);
    assert_int_equal(total, 3);
    assert_int_equal(anvil_connect(a, SA(a1), &lim, 1000, &t[3], &total), ANVIL_OVER_ADDR);
    assert_false(t[3].counted);
    assert_int_equal(total, 3);
    assert_int_equal(anvil_connect(a, SA(a2), &lim, 1000, &t[4], &total), ANVIL_ADMIT);
    assert_int_equal(anvil_addr_count(a, SA(a1)), 3);
    assert_int_equal(anvil_disconnect(a, &t[0]), 3);
    assert_int_equal(anvil_disconnect(a, &t[0]), 3); /* twice is once */
    assert_int_equal(anvil_connect(a, SA(a1), &lim, 1000, &t[0], &total), ANVIL_ADMIT);
    for (int i = 0; i < 3; i++)
        anvil_disconnect(a, &t[i]);
    anvil_disconnect(a, &t[4]);
    assert_int_equal(anvil_total(a), 0);
    assert_int_equal(anvil_addr_count(a, SA(a1)), 0);
    anvil_detach(a);
    close(fd);
}

static void
test_total_and_local(void **state)
{
    struct anvil_limits lim = { .total = 2 };
    struct sockaddr_storage a1 = v4("192.0.2.1");
    struct anvil_ticket t[3];
    unsigned total;
    int fd;
    struct anvil *a = table(1, 0, &fd);

    (void)state;
    assert_int_equal(anvil_connect(a, NULL, &lim, 0, &t[0], &total), ANVIL_ADMIT);
    assert_int_equal(t[0].entry, 0); /* pickup: no address */
    assert_int_equal(anvil_connect(a, SA(a1), &lim, 0, &t[1], &total), ANVIL_ADMIT);
    assert_int_equal(anvil_connect(a, SA(a1), &lim, 0, &t[2], &total), ANVIL_OVER_TOTAL);
    assert_int_equal(total, 2);
    anvil_disconnect(a, &t[0]);
    assert_int_equal(anvil_connect(a, SA(a1), &lim, 0, &t[2], &total), ANVIL_ADMIT);
    assert_int_equal(anvil_addr_count(a, SA(a1)), 2);
    anvil_disconnect(a, &t[1]);
    anvil_disconnect(a, &t[2]);
    anvil_detach(a);
    close(fd);
}

static void
test_rate_is_gcra(void **state)
{
    /* 3 per 10 s: a burst of 3, then one every 3.33 s */
    struct anvil_limits lim = { .rate_count = 3, .rate_period_s = 10 };
    struct sockaddr_storage a1 = v4("192.0.2.1");
    struct anvil_ticket t;
    unsigned total;
    int fd;
    struct anvil *a = table(1, 0, &fd);

    (void)state;
    for (int i = 0; i < 3; i++) {
        assert_int_equal(anvil_connect(a, SA(a1), &lim, 50000, &t, &total), ANVIL_ADMIT);
        anvil_disconnect(a, &t); /* a rate counts connections, not open ones */
    }
    assert_int_equal(anvil_connect(a, SA(a1), &lim, 50000, &t, &total), ANVIL_OVER_RATE);
    assert_int_equal(anvil_connect(a, SA(a1), &lim, 52000, &t, &total), ANVIL_OVER_RATE);
    assert_int_equal(anvil_connect(a, SA(a1), &lim, 53400, &t, &total), ANVIL_ADMIT);
    anvil_disconnect(a, &t);
    assert_int_equal(anvil_connect(a, SA(a1), &lim, 53400, &t, &total), ANVIL_OVER_RATE);
    /* after a quiet period the whole burst is back */
    for (int i = 0; i < 3; i++) {
        assert_int_equal(anvil_connect(a, SA(a1), &lim, 80000, &t, &total), ANVIL_ADMIT);
        anvil_disconnect(a, &t);
    }
    anvil_detach(a);
    close(fd);
}

static void
test_ipv6_by_prefix(void **state)
{
    struct anvil_limits lim = { .per_addr = 2 };
    struct sockaddr_storage x1 = v6("2001:db8:1:2::1"), x2 = v6("2001:db8:1:2:ffff::9");
    struct sockaddr_storage y = v6("2001:db8:1:3::1"), m = v6("::ffff:192.0.2.7");
    struct sockaddr_storage m4 = v4("192.0.2.7");
    struct anvil_ticket t[6];
    unsigned total;
    int fd;
    struct anvil *a = table(1, 0, &fd);

    (void)state;
    assert_int_equal(anvil_connect(a, SA(x1), &lim, 0, &t[0], &total), ANVIL_ADMIT);
    assert_int_equal(anvil_connect(a, SA(x2), &lim, 0, &t[1], &total), ANVIL_ADMIT);
    assert_int_equal(anvil_connect(a, SA(x1), &lim, 0, &t[2], &total), ANVIL_OVER_ADDR);
    assert_int_equal(anvil_connect(a, SA(y), &lim, 0, &t[2], &total), ANVIL_ADMIT);
    assert_int_equal(anvil_connect(a, SA(m), &lim, 0, &t[3], &total), ANVIL_ADMIT);
    assert_int_equal(anvil_connect(a, SA(m4), &lim, 0, &t[4], &total), ANVIL_ADMIT);
    assert_int_equal(anvil_connect(a, SA(m4), &lim, 0, &t[5], &total), ANVIL_OVER_ADDR);
    anvil_detach(a);
    close(fd);
}

/* Fill one table from many addresses: every one is counted while there is room. */
static void
test_many_addresses(void **state)
{
    struct anvil_limits lim = { .per_addr = 1 };
    struct anvil_ticket *t = calloc(600, sizeof(*t));
    unsigned total;
    int fd, tracked = 0;
    struct anvil *a = table(1, 0, &fd);

    (void)state;
    for (int i = 0; i < 600; i++) {
        char text[32];
        struct sockaddr_storage ss;

        snprintf(text, sizeof(text), "10.%d.%d.1", i / 256, i % 256);
        ss = v4(text);
        assert_int_equal(anvil_connect(a, SA(ss), &lim, 0, &t[i], &total), ANVIL_ADMIT);
        tracked += t[i].entry != 0;
    }
    /* 600 live addresses in 1024 places, two choices of bucket each: all fit */
    assert_int_equal(tracked, 600);
    assert_int_equal(anvil_untracked(a), (uint64_t)(600 - tracked));
    for (int i = 0; i < 600; i++)
        anvil_disconnect(a, &t[i]);
    assert_int_equal(anvil_total(a), 0);
    free(t);
    anvil_detach(a);
    close(fd);
}

/* Two processes, one total; the second slot's counts vanish when it is re-attached. */
static void
test_across_processes(void **state)
{
    struct anvil_limits lim = { .total = 4, .per_addr = 3 };
    struct sockaddr_storage a1 = v4("192.0.2.1");
    struct anvil_ticket t[4];
    unsigned total;
    int fd, status, err = 0;
    struct anvil *a = table(2, 0, &fd), *again;
    pid_t pid;

    (void)state;
    assert_int_equal(anvil_connect(a, SA(a1), &lim, 0, &t[0], &total), ANVIL_ADMIT);
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        struct anvil *b = anvil_attach(fd, 1, &err);
        struct anvil_ticket tb[3];
        int bad = b == NULL;

        bad |= anvil_connect(b, SA(a1), &lim, 0, &tb[0], &total) != ANVIL_ADMIT;
        bad |= anvil_connect(b, SA(a1), &lim, 0, &tb[1], &total) != ANVIL_ADMIT;
        bad |= anvil_connect(b, SA(a1), &lim, 0, &tb[2], &total) != ANVIL_OVER_ADDR;
        bad |= total != 3;
        _exit(bad); /* dies with its two connections open */
    }
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_int_equal(WEXITSTATUS(status), 0);
    assert_int_equal(anvil_total(a), 3);
    assert_int_equal(anvil_connect(a, SA(a1), &lim, 0, &t[1], &total), ANVIL_OVER_ADDR);
    /* pmtad restarts slot 1: its successor forgets what the dead one counted */
    again = anvil_attach(fd, 1, &err);
    assert_non_null(again);
    assert_int_equal(anvil_total(a), 1);
    assert_int_equal(anvil_addr_count(a, SA(a1)), 1);
    assert_int_equal(anvil_connect(again, SA(a1), &lim, 0, &t[1], &total), ANVIL_ADMIT);
    anvil_disconnect(again, &t[1]);
    anvil_disconnect(a, &t[0]);
    assert_int_equal(anvil_total(a), 0);
    anvil_detach(again);
    anvil_detach(a);
    close(fd);
}

static void
test_stress_flag_and_bad_input(void **state)
{
    int fd, err = 0;
    struct anvil *a = table(2, 0, &fd);

    (void)state;
    assert_false(anvil_stress(a));
    assert_false(anvil_set_stress(a, true));
    assert_true(anvil_set_stress(a, true));
    assert_true(anvil_stress(a));
    assert_true(anvil_set_stress(a, false));
    assert_null(anvil_attach(fd, 2, &err)); /* no such slot */
    assert_int_equal(err, -EPROTO);
    assert_int_equal(anvil_create(0, 1024), -EINVAL);
    assert_int_equal(anvil_create(1, 1000), -EINVAL); /* not a power of two of buckets */
    assert_int_equal(anvil_capacity_for(100), 1024);
    assert_int_equal(anvil_capacity_for(1000), 4096);
    assert_int_equal(anvil_capacity_for(0), 4096);
    anvil_detach(a);
    close(fd);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        UNIT_TEST(test_per_address_limit),
        UNIT_TEST(test_total_and_local),
        UNIT_TEST(test_rate_is_gcra),
        UNIT_TEST(test_ipv6_by_prefix),
        UNIT_TEST(test_many_addresses),
        UNIT_TEST(test_across_processes),
        UNIT_TEST(test_stress_flag_and_bad_input),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
