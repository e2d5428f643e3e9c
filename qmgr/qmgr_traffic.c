/*
 * qmgr_traffic.c - per-minute traffic counters and recent errors for the
 *                  web monitor (see qmgr_traffic.h)
 *
 * Owns: the minute ring and the error ring (static; qmgr is one thread).
 * SECURITY: error texts are remote servers' replies; they are stored with
 * control bytes replaced and bounded in length, and only ever leave as JSON
 * strings (jansson escapes them; the page inserts them as text, never HTML).
 */
#include "config.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

#include "qmgr_traffic.h"

#define ERROR_TEXT_MAX  240
#define ERROR_QUEUE_MAX 200

struct minute {
    uint64_t minute; /* unix minute (seconds / 60) this bucket counts; 0 = never used */
    uint64_t n[QT_KINDS];
};

struct recent_error {
    uint64_t wall;
    char what[12];
    char queue[ERROR_QUEUE_MAX];
    char text[ERROR_TEXT_MAX];
};

static struct minute minutes[QMGR_TRAFFIC_MINUTES];
static struct recent_error errors[QMGR_TRAFFIC_ERRORS];
static unsigned error_next, nerrors;

static const char *const kind_names[QT_KINDS] = { "received", "delivered", "deferred", "bounced" };

/* bucket - the bucket of WALL's minute, emptied first if it last counted an older minute */
static struct minute *
bucket(uint64_t wall)
{
    uint64_t m = wall / 60;
    struct minute *b = &minutes[m % QMGR_TRAFFIC_MINUTES];

    if (b->minute != m) {
        memset(b, 0, sizeof *b);
        b->minute = m;
    }
    return b;
}

void
qmgr_traffic_count(enum qmgr_traffic_kind kind, uint64_t wall, uint64_t n)
{
    if ((unsigned)kind < QT_KINDS && n > 0)
        bucket(wall)->n[kind] += n;
}

/* copy_printable - TEXT into OUT (SIZE), control bytes as '?', always terminated */
static void
copy_printable(char *out, size_t size, const char *text)
{
    size_t i = 0;

    for (; text && text[i] && i + 1 < size; i++)
        out[i] = (unsigned char)text[i] < 0x20 || text[i] == 0x7f ? '?' : text[i];
    out[i] = '\0';
}

void
qmgr_traffic_error(uint64_t wall, const char *what, const char *queue, const char *text)
{
    struct recent_error *e = &errors[error_next];

    e->wall = wall;
    copy_printable(e->what, sizeof e->what, what);
    copy_printable(e->queue, sizeof e->queue, queue);
    copy_printable(e->text, sizeof e->text, text);
    error_next = (error_next + 1) % QMGR_TRAFFIC_ERRORS;
    if (nerrors < QMGR_TRAFFIC_ERRORS)
        nerrors++;
}

json_t *
qmgr_traffic_minutes_json(uint64_t wall)
{
    json_t *list = json_array();
    uint64_t now = wall / 60;

    for (uint64_t m = now + 1 - QMGR_TRAFFIC_MINUTES; m <= now; m++) {
        const struct minute *b = &minutes[m % QMGR_TRAFFIC_MINUTES];
        json_t *o = json_pack("{s:I}", "minute", (json_int_t)(m * 60));

        for (int k = 0; k < QT_KINDS; k++)
            json_object_set_new(o, kind_names[k], json_integer(b->minute == m ? b->n[k] : 0));
        json_array_append_new(list, o);
    }
    return list;
}

json_t *
qmgr_traffic_errors_json(void)
{
    json_t *list = json_array();
    char when[32];

    for (unsigned i = 0; i < nerrors; i++) {
        const struct recent_error *e =
            &errors[(error_next + QMGR_TRAFFIC_ERRORS - 1 - i) % QMGR_TRAFFIC_ERRORS];
        time_t t = (time_t)e->wall;
        struct tm tm;

        gmtime_r(&t, &tm);
        strftime(when, sizeof when, "%Y-%m-%d %H:%M:%S+0000", &tm);
        json_array_append_new(list, json_pack("{s:s, s:s, s:s, s:s}", "time", when, "what", e->what,
                                              "queue", e->queue, "text", e->text));
    }
    return list;
}

void
qmgr_traffic_reset(void)
{
    memset(minutes, 0, sizeof minutes);
    memset(errors, 0, sizeof errors);
    error_next = nerrors = 0;
}
