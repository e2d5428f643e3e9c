/*
 * test_qmgr_traffic.c - unit tests for qmgr/qmgr_traffic: counts land in the
 * minute they happened, a minute older than an hour reads as zero (and its
 * bucket is reused), gaps read as zero, the JSON is oldest first with 60
 * entries, and the error ring keeps the newest 50, newest first, with
 * control bytes replaced and long replies truncated.
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

#include "qmgr_traffic.h"

#define T0 1796400000u /* a minute boundary: 1796400000 / 60 = 29940000 */

static json_int_t
count_at(json_t *minutes, size_t i, const char *kind)
{
    return json_integer_value(json_object_get(json_array_get(minutes, i), kind));
}

static void
test_minutes_count_where_they_happened(void **state)
{
    json_t *m;

    qmgr_traffic_reset();
    qmgr_traffic_count(QT_RECEIVED, T0, 5);
    qmgr_traffic_count(QT_DELIVERED, T0 + 59, 3);
    qmgr_traffic_count(QT_DELIVERED, T0 + 60, 2);
    qmgr_traffic_count(QT_BOUNCED, T0 + 60 * 10 + 1, 1);
    qmgr_traffic_count(QT_DEFERRED, T0 + 60 * 10 + 2, 0); /* nothing */
    m = qmgr_traffic_minutes_json(T0 + 60 * 10 + 30);
    assert_int_equal(json_array_size(m), QMGR_TRAFFIC_MINUTES);
    /* the last entry is the current minute, the first 59 minutes earlier */
    assert_int_equal(json_integer_value(json_object_get(json_array_get(m, 59), "minute")),
                     T0 + 600);
    assert_int_equal(json_integer_value(json_object_get(json_array_get(m, 0), "minute")),
                     T0 + 600 - 59 * 60);
    assert_int_equal(count_at(m, 49, "received"), 5);
    assert_int_equal(count_at(m, 49, "delivered"), 3);
    assert_int_equal(count_at(m, 50, "delivered"), 2);
    assert_int_equal(count_at(m, 59, "bounced"), 1);
    assert_int_equal(count_at(m, 59, "deferred"), 0);
    assert_int_equal(count_at(m, 55, "received"), 0);
    json_decref(m);
}

static void
test_an_hour_later_reads_zero(void **state)
{
    json_t *m;

    qmgr_traffic_reset();
    qmgr_traffic_count(QT_RECEIVED, T0, 7);
    m = qmgr_traffic_minutes_json(T0 + 59 * 60);
    assert_int_equal(count_at(m, 0, "received"), 7); /* still inside the hour */
    json_decref(m);
    m = qmgr_traffic_minutes_json(T0 + 60 * 60);
    for (size_t i = 0; i < QMGR_TRAFFIC_MINUTES; i++)
        assert_int_equal(count_at(m, i, "received"), 0);
    json_decref(m);
    /* the same bucket, an hour later: it starts from zero */
    qmgr_traffic_count(QT_RECEIVED, T0 + 60 * 60, 1);
    m = qmgr_traffic_minutes_json(T0 + 60 * 60);
    assert_int_equal(count_at(m, 59, "received"), 1);
    json_decref(m);
}

static void
test_errors_newest_first_bounded_and_printable(void **state)
{
    char long_text[600], want[16];
    json_t *e;

    qmgr_traffic_reset();
    memset(long_text, 'x', sizeof long_text - 1);
    long_text[sizeof long_text - 1] = '\0';
    qmgr_traffic_error(T0, "bounced", "a.test/{default}", "550 5.1.1 no\r\nX-Injected: 1");
    e = qmgr_traffic_errors_json();
    assert_int_equal(json_array_size(e), 1);
    assert_string_equal(json_string_value(json_object_get(json_array_get(e, 0), "text")),
                        "550 5.1.1 no??X-Injected: 1");
    assert_string_equal(json_string_value(json_object_get(json_array_get(e, 0), "time")),
                        "2026-12-04 16:00:00+0000");
    json_decref(e);
    for (int i = 0; i < 60; i++) {
        snprintf(want, sizeof want, "q%d", i);
        qmgr_traffic_error(T0 + (unsigned)i, "deferred", want, i == 59 ? long_text : "451");
    }
    e = qmgr_traffic_errors_json();
    assert_int_equal(json_array_size(e), QMGR_TRAFFIC_ERRORS);
    assert_string_equal(json_string_value(json_object_get(json_array_get(e, 0), "queue")), "q59");
    assert_string_equal(json_string_value(json_object_get(json_array_get(e, 49), "queue")), "q10");
    assert_true(strlen(json_string_value(json_object_get(json_array_get(e, 0), "text"))) < 300);
    json_decref(e);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        UNIT_TEST(test_minutes_count_where_they_happened),
        UNIT_TEST(test_an_hour_later_reads_zero),
        UNIT_TEST(test_errors_newest_first_bounded_and_printable),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
