/*
 * test_envid.c - unit tests for runtime/envid: the tracking ENVID round-trips
 * (virtual MTA names with dots, an empty job), stays within RFC 3461's 100
 * characters by leaving out a long job (or making no id), leaves out fields
 * xtext would change, and the parser takes only our own ids: a client's
 * ENVID, every truncation of a good id and lengths that point past the end
 * are refused, surrounding blanks are not part of the id.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "unit.h"

#include "envid.h"

#define QID "0000000000000000002A"

static void
round_trip(const char *vmta, const char *job, const char *want_job)
{
    char id[ENVID_MAX + 1];
    struct envid_track t;
    int n = envid_track_make(id, sizeof id, QID, vmta, job);

    assert_true(n > 0);
    assert_int_equal((size_t)n, strlen(id));
    assert_true(n <= ENVID_MAX);
    assert_int_equal(envid_track_parse(id, strlen(id), &t), 0);
    assert_string_equal(t.qid, QID);
    assert_string_equal(t.vmta, vmta);
    assert_string_equal(t.job, want_job);
}

static void
test_round_trip(void **state)
{
    char id[ENVID_MAX + 1];

    (void)state;
    assert_int_equal(envid_track_make(id, sizeof id, QID, "v1", "job-42"), 39);
    assert_string_equal(id, "opmta1." QID ".2.v1.job-42");
    round_trip("v1", "job-42", "job-42");
    round_trip("mta1.example.com", "campaign.7.a", "campaign.7.a");
    round_trip("{default}", "", "");
    round_trip("{default}", NULL, "");
    round_trip("v", "a.b.c.d", "a.b.c.d");
}

static void
test_length_cap(void **state)
{
    char id[ENVID_MAX + 1], job[200], vmta[200];
    struct envid_track t;

    (void)state;
    memset(job, 'j', sizeof job - 1);
    job[sizeof job - 1] = '\0';
    /* a job that does not fit is left out, the rest is kept */
    round_trip("v1", job, "");
    /* the longest name that still fits */
    memset(vmta, 'v', sizeof vmta);
    vmta[ENVID_MAX - (7 + 20 + 1 + 2 + 1 + 1)] = '\0';
    round_trip(vmta, "", "");
    /* one more: no id at all */
    vmta[strlen(vmta) + 1] = '\0';
    vmta[strlen(vmta)] = 'v';
    assert_int_equal(envid_track_make(id, sizeof id, QID, vmta, ""), -EINVAL);
    assert_string_equal(id, "");
    /* a buffer too small is refused, not overrun */
    assert_int_equal(envid_track_make(id, 10, QID, "v1", "j"), -EINVAL);
    assert_string_equal(id, "");
    assert_int_equal(envid_track_parse("", 0, &t), -EINVAL);
}

static void
test_xtext_fields_left_out(void **state)
{
    char id[ENVID_MAX + 1];

    (void)state;
    round_trip("v1", "a+b", "");
    round_trip("v1", "a=b", "");
    round_trip("v1", "caf\xc3\xa9", "");
    assert_int_equal(envid_track_make(id, sizeof id, QID, "v+1", "j"), -EINVAL);
    assert_int_equal(envid_track_make(id, sizeof id, QID, "", "j"), -EINVAL);
    assert_int_equal(envid_track_make(id, sizeof id, "2A", "v1", "j"), -EINVAL);
    assert_int_equal(envid_track_make(id, sizeof id, "0000000000000000002a", "v1", "j"), -EINVAL);
}

static void
test_parse_refuses_others(void **state)
{
    static const char *const bad[] = {
        "env-123",
        "opmta1.",
        "opmta2." QID ".2.v1.j",
        "opmta1." QID "2.v1.j",
        "opmta1.0000000000000000002a.2.v1.j",
        "opmta1." QID ".0..j",
        "opmta1." QID ".3.v1.j",
        "opmta1." QID ".9.v1",
        "opmta1." QID ".2.v1",
        "opmta1." QID ".1234.v1.j",
        "opmta1." QID ".x.v1.j",
        "opmta1." QID ".2.v 1.j",
        "opmta1." QID ".2.v1.j b",
        "opmta1." QID ".2.v1.j+2B",
    };
    const char *good = "opmta1." QID ".2.v1.job-42";
    struct envid_track t;

    (void)state;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_int_equal(envid_track_parse(bad[i], strlen(bad[i]), &t), -EINVAL);
        assert_string_equal(t.vmta, "");
        assert_string_equal(t.job, "");
    }
    /* every truncation of a good id short of its end is refused or shorter in job */
    for (size_t n = 0; n < strlen(good); n++) {
        int rc = envid_track_parse(good, n, &t);

        if (n < strlen("opmta1." QID ".2.v1."))
            assert_int_equal(rc, -EINVAL);
        else
            assert_int_equal(rc, 0);
    }
    /* blanks and the line end around it belong to the field */
    assert_int_equal(envid_track_parse("  opmta1." QID ".2.v1.j \r\n",
                                       strlen("  opmta1." QID ".2.v1.j \r\n"), &t),
                     0);
    assert_string_equal(t.job, "j");
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        UNIT_TEST(test_round_trip),
        UNIT_TEST(test_length_cap),
        UNIT_TEST(test_xtext_fields_left_out),
        UNIT_TEST(test_parse_refuses_others),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
