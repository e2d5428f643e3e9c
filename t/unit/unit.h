/*
 * unit.h - what every C unit test shares: a per-test time limit
 *
 * UNIT_TEST(f) is cmocka_unit_test(f) with a watchdog: each test gets
 * UNIT_TIMEOUT_S seconds of wall time (alarm(2)); a test that hangs (a libuv
 * loop that never ends, a lost wake-up) prints a TAP "Bail out!" naming the
 * limit and the process exits, instead of stalling `make check` until CI
 * kills it. Tests with a setup/teardown of their own call unit_arm() and
 * unit_disarm() in them. Tests that run a libuv loop end with
 * assert_int_equal(uv_loop_close(&loop), 0): a handle left open is a leak.
 */
#ifndef PMTA_T_UNIT_H
#define PMTA_T_UNIT_H

#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifndef UNIT_TIMEOUT_S
#define UNIT_TIMEOUT_S 60
#endif

static void
unit_on_alarm(int sig)
{
    static const char msg[] = "Bail out! a test ran longer than its time limit\n";
    ssize_t r = write(STDOUT_FILENO, msg, sizeof msg - 1);

    (void)r;
    (void)sig;
    _exit(1);
}

static inline void
unit_arm(void)
{
    struct sigaction sa;

    memset(&sa, 0, sizeof sa);
    sa.sa_handler = unit_on_alarm;
    sigaction(SIGALRM, &sa, NULL);
    alarm(UNIT_TIMEOUT_S);
}

static inline void
unit_disarm(void)
{
    alarm(0);
}

static inline int
unit_arm_setup(void **state)
{
    (void)state;
    unit_arm();
    return 0;
}

static inline int
unit_disarm_teardown(void **state)
{
    (void)state;
    unit_disarm();
    return 0;
}

#define UNIT_TEST(f) cmocka_unit_test_setup_teardown(f, unit_arm_setup, unit_disarm_teardown)

/* Piece sizes for byte-split property tests: whole, one byte, 1..32 bytes (rand()). */
static inline size_t
unit_split_whole(size_t i)
{
    (void)i;
    return (size_t)-1;
}

static inline size_t
unit_split_one(size_t i)
{
    (void)i;
    return 1;
}

static inline size_t
unit_split_random(size_t i)
{
    (void)i;
    return 1 + (size_t)(rand() % 32);
}

#endif
