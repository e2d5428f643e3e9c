/*
 * test_qmgr_wplan.c - unit tests for qmgr/qmgr_wplan: a warm-up plan's caps
 * by step (day lines filled forward, past the last step warm; doubling every
 * N days up to its end), the step rule at its thresholds (promote at or below
 * the max rates, step back above the step-back rates, hold between and
 * without mail; deferrals and complaints each), and which destinations get a
 * cap of their own.
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
#include "qmgr_wplan.h"

static void
quiet(void *ctx, enum cfg_diag_level level, const char *file, unsigned line, const char *message)
{
    (void)ctx;
    (void)level;
    (void)file;
    (void)line;
    (void)message;
}

/* plan - the plan NAME of TEXT, compiled into P; the config to free after */
static struct cfg *
plan(const char *text, const char *name, struct qmgr_wplan *p)
{
    unsigned nerr = 0;
    struct cfg *c = cfg_load_string("t.conf", text, quiet, NULL, &nerr);
    uint32_t s;

    assert_non_null(c);
    assert_int_equal(nerr, 0);
    s = cfg_find_scope(c, CFG_S_WARMUP_PLAN, name);
    assert_int_not_equal(s, CFG_NONE);
    qmgr_wplan_compile(p, c, s);
    return c;
}

static void
test_day_lines(void **state)
{
    struct qmgr_wplan p;
    struct cfg *c = plan("<warmup-plan a>\n day 1 50\n day 2 100\n day 5 800\n"
                         " destination Google.Rollup\n destination *\n</warmup-plan>\n",
                         "a", &p);
    (void)state;
    assert_int_equal(qmgr_wplan_cap(&p, 1), 50);
    assert_int_equal(qmgr_wplan_cap(&p, 0), 50); /* never below step 1 */
    assert_int_equal(qmgr_wplan_cap(&p, 2), 100);
    assert_int_equal(qmgr_wplan_cap(&p, 3), 100); /* a missing day keeps the day before's */
    assert_int_equal(qmgr_wplan_cap(&p, 4), 100);
    assert_int_equal(qmgr_wplan_cap(&p, 5), 800);
    assert_int_equal(qmgr_wplan_cap(&p, 6), 0); /* warm */
    assert_string_equal(qmgr_wplan_destination(&p, "google.rollup"), "Google.Rollup");
    assert_string_equal(qmgr_wplan_destination(&p, "yahoo.rollup"), "*");
    qmgr_wplan_free(&p);
    cfg_free(c);
    c = plan("<warmup-plan b>\n day 1 5\n destination gmail.com\n</warmup-plan>\n", "b", &p);
    assert_string_equal(qmgr_wplan_destination(&p, "gmail.com"), "gmail.com");
    assert_null(qmgr_wplan_destination(&p, "yahoo.com")); /* no "*": uncapped */
    qmgr_wplan_free(&p);
    cfg_free(c);
    c = plan("<warmup-plan c>\n day 1 5\n</warmup-plan>\n", "c", &p);
    assert_string_equal(qmgr_wplan_destination(&p, "anything.test"), "*");
    qmgr_wplan_free(&p);
    cfg_free(c);
}

static void
test_doubling(void **state)
{
    struct qmgr_wplan p;
    struct cfg *c = plan("<warmup-plan d>\n day 1 50\n double-every 1d until 500\n</warmup-plan>\n",
                         "d", &p);
    static const int64_t want[] = { 50, 100, 200, 400, 500, 0, 0 };
    (void)state;
    for (uint32_t i = 0; i < sizeof want / sizeof want[0]; i++)
        assert_int_equal(qmgr_wplan_cap(&p, i + 1), want[i]);
    qmgr_wplan_free(&p);
    cfg_free(c);
    c = plan("<warmup-plan e>\n day 1 10\n double-every 2d until 40\n</warmup-plan>\n", "e", &p);
    {
        static const int64_t every2[] = { 10, 10, 20, 20, 40, 0 };

        for (uint32_t i = 0; i < sizeof every2 / sizeof every2[0]; i++)
            assert_int_equal(qmgr_wplan_cap(&p, i + 1), every2[i]);
    }
    qmgr_wplan_free(&p);
    cfg_free(c);
}

static enum qmgr_wplan_verdict
verdict(const struct qmgr_wplan *p, uint64_t attempts, uint64_t deferrals, uint64_t complaints)
{
    struct qstore_warmup day = { .attempts = attempts,
                                 .deferrals = deferrals,
                                 .complaints = complaints };

    return qmgr_wplan_decide(p, &day);
}

static void
test_step_rule(void **state)
{
    struct qmgr_wplan p;
    struct cfg *c = plan("<warmup-plan r>\n day 1 5\n max-deferral-rate 10%\n"
                         " step-back-deferral-rate 30%\n max-complaint-rate 0.1%\n"
                         " step-back-complaint-rate 0.5%\n</warmup-plan>\n",
                         "r", &p);
    (void)state;
    assert_int_equal(verdict(&p, 0, 0, 0), QMGR_WPLAN_HOLD);             /* no mail */
    assert_int_equal(verdict(&p, 100, 0, 0), QMGR_WPLAN_PROMOTE);        /* clean */
    assert_int_equal(verdict(&p, 100, 10, 0), QMGR_WPLAN_PROMOTE);       /* at the max */
    assert_int_equal(verdict(&p, 100, 11, 0), QMGR_WPLAN_HOLD);          /* above it */
    assert_int_equal(verdict(&p, 100, 30, 0), QMGR_WPLAN_HOLD);          /* at step-back */
    assert_int_equal(verdict(&p, 100, 31, 0), QMGR_WPLAN_STEP_BACK);     /* above it */
    assert_int_equal(verdict(&p, 10000, 0, 10), QMGR_WPLAN_PROMOTE);     /* 0.1 % */
    assert_int_equal(verdict(&p, 10000, 0, 11), QMGR_WPLAN_HOLD);        /* 0.11 % */
    assert_int_equal(verdict(&p, 10000, 0, 51), QMGR_WPLAN_STEP_BACK);   /* 0.51 % */
    assert_int_equal(verdict(&p, 10000, 3500, 0), QMGR_WPLAN_STEP_BACK); /* either one */
    qmgr_wplan_free(&p);
    cfg_free(c);
    /* the defaults: 10 %, 0.1 %, 30 %, 0.5 % */
    c = plan("<warmup-plan z>\n day 1 5\n</warmup-plan>\n", "z", &p);
    assert_int_equal(p.max_deferral, 100000);
    assert_int_equal(p.max_complaint, 1000);
    assert_int_equal(p.back_deferral, 300000);
    assert_int_equal(p.back_complaint, 5000);
    assert_null(p.overflow);
    qmgr_wplan_free(&p);
    cfg_free(c);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        UNIT_TEST(test_day_lines),
        UNIT_TEST(test_doubling),
        UNIT_TEST(test_step_rule),
    };

    msg_init("test_qmgr_wplan");
    return cmocka_run_group_tests(tests, NULL, NULL);
}
