/*
 * pmtactl_tables.c - pmtactl's printing: the helpers every table uses
 *                    (printable text, counts, durations) and the answers of
 *                    show status, show queues/topqueues, show domains/vmtas,
 *                    set/pause/resume queue and schedule, laid out like
 *                    PowerMTA's `pmta show ...`
 *
 * Owns: nothing beyond one printed answer.
 * SECURITY: text from responses (reply lines of remote servers among it)
 * is printed through printable(): control bytes replaced, widths bounded.
 */
#include "config.h"

#include <ctype.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "xalloc.h"
#include "pmtactl.h"

#define TABLE_WIDTH      120
#define QUEUE_COLUMN_MAX 36
#define ERROR_COLUMN_MIN 24

/* --- printing helpers -------------------------------------------------------- */

/*
 * printable - TEXT without trailing white space and with other control bytes
 * replaced by '?', cut to WIDTH bytes ("..." marks a cut); caller frees
 */
char *
printable(const char *text, size_t width)
{
    char *out = xstrdup(text);
    size_t len = strlen(out);

    while (len > 0 && isspace((unsigned char)out[len - 1]))
        out[--len] = '\0';
    for (char *p = out; *p; p++)
        if (iscntrl((unsigned char)*p))
            *p = '?';
    if (strlen(out) > width) {
        out[width] = '\0';
        if (width >= 3)
            memcpy(out + width - 3, "...", 3);
    }
    return out;
}

/* get_text - string member KEY of OBJ, or "" */
const char *
get_text(json_t *obj, const char *key)
{
    const char *s = json_string_value(json_object_get(obj, key));

    return s ? s : "";
}

/* format_count - integer member KEY of OBJ as text in BUF, "-" when absent */
const char *
format_count(json_t *obj, const char *key, char *buf, size_t size)
{
    json_t *v = json_object_get(obj, key);

    if (json_is_integer(v))
        snprintf(buf, size, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
    else
        snprintf(buf, size, "-");
    return buf;
}

/* format_duration - S seconds as "1d2h3m4s" (leading zero units left out) */
const char *
format_duration(long long s, char *buf, size_t size)
{
    long long d = s / 86400, h = s / 3600 % 24, m = s / 60 % 60, sec = s % 60;

    if (d > 0)
        snprintf(buf, size, "%lldd%lldh%lldm%llds", d, h, m, sec);
    else if (h > 0)
        snprintf(buf, size, "%lldh%lldm%llds", h, m, sec);
    else if (m > 0)
        snprintf(buf, size, "%lldm%llds", m, sec);
    else
        snprintf(buf, size, "%llds", sec);
    return buf;
}

/* --- show status ------------------------------------------------------------- */

/* print_field - one "label: value" line, values aligned */
static void
print_field(const char *label, const char *value)
{
    printf("%-22s %s\n", label, value);
}

int
print_status(const struct options *o, json_t *response)
{
    json_t *st = json_object_get(response, "status");
    json_t *rc = json_object_get(st, "recipients");
    json_t *uptime = json_object_get(st, "uptime_s");
    static const struct {
        const char *label, *key;
        bool in_rcpts;
    } rows[] = {
        { "recipients queued:", "queued", true },
        { "  ready:", "ready", true },
        { "  deferred:", "deferred", true },
        { "  in flight:", "inflight", true },
        { "messages queued:", "messages", false },
        { "queues:", "queues", false },
        { "  in backoff:", "queues_backoff", false },
        { "  paused:", "queues_paused", false },
        { "connections out:", "connections_out", false },
        { "smtp-out processes:", "smtp_out_processes", false },
        { "delivered:", "delivered", false },
        { "bounced:", "bounced", false },
        { "deferrals:", "deferred", false },
    };
    char buf[64];

    (void)o;
    if (!json_is_object(st))
        return fail("malformed response from pmtad (no \"status\" object)");
    print_field("pid:", format_count(st, "pid", buf, sizeof(buf)));
    print_field("uptime:", json_is_integer(uptime)
                               ? format_duration(json_integer_value(uptime), buf, sizeof(buf))
                               : "-");
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++)
        print_field(rows[i].label,
                    format_count(rows[i].in_rcpts ? rc : st, rows[i].key, buf, sizeof(buf)));
    return 0;
}

/* --- show queues ------------------------------------------------------------- */

void
add_show_queues_args(json_t *req, const struct options *o, const char *pattern)
{
    if (o->given & OPT_MODE)
        json_object_set_new(req, "mode", json_string(o->mode));
    if (o->given & OPT_PAUSED)
        json_object_set_new(req, "paused", json_boolean(o->paused));
    if (o->given & OPT_MAXITEMS)
        json_object_set_new(req, "maxitems", json_integer(o->maxitems));
    if (o->given & OPT_SORT)
        json_object_set_new(req, "sort", json_string(o->sort));
    if (pattern)
        json_object_set_new(req, "queue", json_string(pattern));
}

/* queue_column_width - width of the queue column: the longest name, within limits */
static int
queue_column_width(json_t *queues)
{
    size_t width = strlen("queue"), i;
    json_t *q;

    json_array_foreach(queues, i, q)
    {
        size_t len = strlen(get_text(q, "name"));

        if (len > width)
            width = len;
    }
    return (int)(width > QUEUE_COLUMN_MAX ? QUEUE_COLUMN_MAX : width);
}

/* print_queue_domains - under a rollup or queue-to queue: the domains whose mail it holds */
static void
print_queue_domains(json_t *q)
{
    json_t *domains = json_object_get(q, "domains"), *d;
    char *kind = printable(get_text(q, "kind"), 16);
    size_t i, used = 0, n = json_array_size(domains);

    if (json_is_array(domains) && n > 0) {
        used = (size_t)printf("  %s of %zu domain%s:", kind, n, n == 1 ? "" : "s");
        json_array_foreach(domains, i, d)
        {
            char *name = printable(json_string_value(d) ? json_string_value(d) : "", 64);

            if (used + strlen(name) + 2 > TABLE_WIDTH) {
                printf("\n   ");
                used = 3;
            }
            used += (size_t)printf(" %s%s", name, i + 1 < n ? "," : "");
            free(name);
        }
        printf("\n");
    }
    free(kind);
}

/* print_queue_limit - under a queue with ready mail: what holds it back now, if anything */
static void
print_queue_limit(json_t *q)
{
    char *limit = printable(get_text(q, "limit"), TABLE_WIDTH - 14);

    if (*limit)
        printf("  held back: %s\n", limit);
    free(limit);
}

/* print_queue_row - one row of the queue table; QW is the queue column width */
static void
print_queue_row(json_t *q, int qw)
{
    char rcpts[32], ready[32], deferred[32], inflight[32], conns[32], retry[32];
    json_t *retry_in = json_object_get(q, "retry_in_s");
    json_t *paused = json_object_get(q, "paused");
    char *name = printable(get_text(q, "name"), SIZE_MAX), *mode, *error;
    int used, room;

    if (!json_is_integer(retry_in))
        snprintf(retry, sizeof(retry), "-");
    else if (json_integer_value(retry_in) <= 0)
        snprintf(retry, sizeof(retry), "-");
    else
        format_duration(json_integer_value(retry_in), retry, sizeof(retry));
    mode = printable(get_text(q, "mode"), 7);
    used = printf("%-*s %-7s %-6s %7s %7s %8s %8s %5s %8s", qw, name, mode,
                  json_is_boolean(paused) ? (json_is_true(paused) ? "yes" : "no") : "-",
                  format_count(q, "recipients", rcpts, sizeof(rcpts)),
                  format_count(q, "ready", ready, sizeof(ready)),
                  format_count(q, "deferred", deferred, sizeof(deferred)),
                  format_count(q, "inflight", inflight, sizeof(inflight)),
                  format_count(q, "connections", conns, sizeof(conns)), retry);
    room = TABLE_WIDTH - used - 1;
    error = printable(get_text(q, "last_error"),
                      (size_t)(room < ERROR_COLUMN_MIN ? ERROR_COLUMN_MIN : room));
    printf("%s%s\n", *error ? " " : "", error);
    print_queue_domains(q);
    print_queue_limit(q);
    free(name);
    free(mode);
    free(error);
}

/* print_mode_events - --mode-events: the mode changes of each listed queue */
static void
print_mode_events(json_t *queues)
{
    size_t i, k;
    json_t *q, *ev;

    json_array_foreach(queues, i, q)
    {
        json_t *events = json_object_get(q, "mode_events");
        char *name;

        if (!json_is_array(events) || json_array_size(events) == 0)
            continue;
        name = printable(get_text(q, "name"), SIZE_MAX);
        printf("\nmode events of %s:\n", name);
        free(name);
        json_array_foreach(events, k, ev)
        {
            char *when = printable(get_text(ev, "time"), 40);
            char *from = printable(get_text(ev, "from"), 10),
                 *to = printable(get_text(ev, "to"), 10);
            char *why = printable(get_text(ev, "why"), TABLE_WIDTH);

            printf("  %s  %s -> %s  %s\n", when, from, to, why);
            free(when);
            free(from);
            free(to);
            free(why);
        }
    }
}

/* print_queue_state - show settings' live part: one queue's state, what holds it back, its
 * mode events */
void
print_queue_state(json_t *q)
{
    char *name = printable(get_text(q, "name"), SIZE_MAX);
    char *joins = printable(get_text(q, "joins"), SIZE_MAX);
    char rcpts[32], ready[32], deferred[32], conns[32];
    json_t *events = json_object_get(q, "mode_events"), *ev;
    size_t k;

    if (*joins) {
        printf("  queue %s: its mail joins %s\n", name, joins);
        goto out;
    }
    printf("  queue %s: mode %s%s, %s recipient(s) (%s ready, %s deferred), %s connection(s)\n",
           name, get_text(q, "mode"), json_is_true(json_object_get(q, "paused")) ? ", paused" : "",
           format_count(q, "recipients", rcpts, sizeof rcpts),
           format_count(q, "ready", ready, sizeof ready),
           format_count(q, "deferred", deferred, sizeof deferred),
           format_count(q, "connections", conns, sizeof conns));
    print_queue_domains(q);
    if (*get_text(q, "limit"))
        print_queue_limit(q);
    else
        printf("  nothing holds it back\n");
    if (json_is_array(events) && json_array_size(events) > 0) {
        printf("  mode events:\n");
        json_array_foreach(events, k, ev)
        {
            char *why = printable(get_text(ev, "why"), TABLE_WIDTH);

            printf("    %s  %s -> %s  %s\n", get_text(ev, "time"), get_text(ev, "from"),
                   get_text(ev, "to"), why);
            free(why);
        }
    }
out:
    free(name);
    free(joins);
}

int
print_queues(const struct options *o, json_t *response)
{
    json_t *queues = json_object_get(response, "queues");
    json_t *total = json_object_get(response, "total");
    size_t i;
    json_t *q;
    int qw;

    if (!json_is_array(queues))
        return fail("malformed response from pmtad (no \"queues\" array)");
    qw = queue_column_width(queues);
    printf("%-*s %-7s %-6s %7s %7s %8s %8s %5s %8s %s\n", qw, "queue", "mode", "paused", "rcpts",
           "ready", "deferred", "inflight", "conns", "retry-in", "last error");
    json_array_foreach(queues, i, q) print_queue_row(q, qw);
    printf("%zu of %" JSON_INTEGER_FORMAT " queues\n", json_array_size(queues),
           json_is_integer(total) ? json_integer_value(total)
                                  : (json_int_t)json_array_size(queues));
    if (o->given & OPT_MODE_EVENTS)
        print_mode_events(queues);
    return 0;
}

/* --- show domains, show vmtas --------------------------------------------------- */

void
add_show_groups_args(json_t *req, const struct options *o, const char *pattern)
{
    if (pattern)
        json_object_set_new(req, "queue", json_string(pattern));
    if (o->given & OPT_MAXITEMS)
        json_object_set_new(req, "maxitems", json_integer(o->maxitems));
}

/* print_warmup - under a virtual MTA with a warm-up plan: each source address's step and cap */
static void
print_warmup(json_t *g)
{
    json_t *list = json_object_get(g, "warmup"), *w;
    size_t i;

    json_array_foreach(list, i, w)
    {
        char *plan = printable(get_text(w, "plan"), 40),
             *src = printable(get_text(w, "source"), 48);
        char *dest = printable(get_text(w, "destination"), 60), cap[32];
        json_int_t c = json_integer_value(json_object_get(w, "cap"));

        if (c > 0)
            snprintf(cap, sizeof cap, "cap %" JSON_INTEGER_FORMAT, c);
        else
            snprintf(cap, sizeof cap, "no cap (warm)");
        printf("  warm-up %s %s -> %s: day %" JSON_INTEGER_FORMAT ", step %" JSON_INTEGER_FORMAT
               ", %s, %" JSON_INTEGER_FORMAT " sent today (%" JSON_INTEGER_FORMAT
               " deferred, %" JSON_INTEGER_FORMAT " complaints)\n",
               plan, src, dest, json_integer_value(json_object_get(w, "day")),
               json_integer_value(json_object_get(w, "step")), cap,
               json_integer_value(json_object_get(w, "sent")),
               json_integer_value(json_object_get(w, "deferrals")),
               json_integer_value(json_object_get(w, "complaints")));
        free(plan);
        free(src);
        free(dest);
    }
}

/* print_groups - the table of show domains (KEY "domains") or show vmtas ("vmtas") */
static int
print_groups(json_t *response, const char *key, const char *title, const char *noun)
{
    json_t *groups = json_object_get(response, key), *g;
    json_int_t sum = 0;
    size_t i;

    if (!json_is_array(groups))
        return fail("malformed response from pmtad (no \"%s\" array)", key);
    json_array_foreach(groups, i, g) sum += json_integer_value(json_object_get(g, "recipients"));
    printf("%-36s %6s %8s %6s %5s %7s %6s %s\n", title, "queues", "rcpts", "%rcpts", "conns",
           "backoff", "paused", "last error");
    json_array_foreach(groups, i, g)
    {
        char nq[32], nr[32], nc[32], nb[32], np[32];
        json_int_t r = json_integer_value(json_object_get(g, "recipients"));
        char *name = printable(get_text(g, "name"), SIZE_MAX);
        char *error = printable(get_text(g, "last_error"), ERROR_COLUMN_MIN + 10);

        printf("%-36s %6s %8s %5.1f%% %5s %7s %6s %s\n", name,
               format_count(g, "queues", nq, sizeof(nq)),
               format_count(g, "recipients", nr, sizeof(nr)),
               sum ? 100.0 * (double)r / (double)sum : 0.0,
               format_count(g, "connections", nc, sizeof(nc)),
               format_count(g, "backoff", nb, sizeof(nb)),
               format_count(g, "paused", np, sizeof(np)), error);
        print_warmup(g);
        free(name);
        free(error);
    }
    printf("%zu of %" JSON_INTEGER_FORMAT " %s\n", json_array_size(groups),
           json_integer_value(json_object_get(response, "total")), noun);
    return 0;
}

int
print_domains(const struct options *o, json_t *response)
{
    (void)o;
    return print_groups(response, "domains", "domain", "domains");
}

int
print_vmtas(const struct options *o, json_t *response)
{
    (void)o;
    return print_groups(response, "vmtas", "virtual mta", "virtual MTAs");
}

/* --- set queue, pause queue, resume queue, schedule ---------------------------- */

/* add_pattern_arg - "queue": PATTERN */
void
add_pattern_arg(json_t *req, const struct options *o, const char *pattern)
{
    (void)o;
    json_object_set_new(req, "queue", json_string(pattern));
}

/* add_set_mode_args - "queue": PATTERN, "mode": MODE */
void
add_set_mode_args(json_t *req, const struct options *o, const char *pattern)
{
    add_pattern_arg(req, o, pattern);
    json_object_set_new(req, "mode", json_string(o->mode));
}

/* changed_anything - a change response matched a queue (changed or already so) */
bool
changed_anything(json_t *response)
{
    json_t *queues = json_object_get(response, "queues");
    json_t *changed = json_object_get(response, "changed");
    json_t *matched = json_object_get(response, "matched");

    return json_array_size(queues) > 0 ||
           (json_is_integer(changed) && json_integer_value(changed) > 0) ||
           (json_is_integer(matched) && json_integer_value(matched) > 0);
}

/* print_changed - "queue X: WHAT" for each queue named in RESPONSE */
void
print_changed(json_t *response, const char *what)
{
    json_t *queues = json_object_get(response, "queues"), *q;
    char count[32];
    size_t i;

    if (json_array_size(queues) == 0) {
        printf("no change: %s matching queue(s) already so (%s)\n",
               format_count(response, "matched", count, sizeof(count)), what);
        return;
    }
    json_array_foreach(queues, i, q)
    {
        char *name = printable(json_is_string(q) ? json_string_value(q) : "?", SIZE_MAX);

        printf("queue %s: %s\n", name, what);
        free(name);
    }
}

int
print_set_queue_mode(const struct options *o, json_t *response)
{
    char what[64];

    snprintf(what, sizeof(what), "mode set to %s", o->mode);
    print_changed(response, what);
    return 0;
}

int
print_pause_queue(const struct options *o, json_t *response)
{
    (void)o;
    print_changed(response, "paused");
    return 0;
}

int
print_resume_queue(const struct options *o, json_t *response)
{
    (void)o;
    print_changed(response, "resumed");
    return 0;
}

/* scheduled_anything - a schedule response counts at least one queue */
bool
scheduled_anything(json_t *response)
{
    json_t *n = json_object_get(response, "queues");

    return !json_is_integer(n) || json_integer_value(n) > 0;
}

int
print_schedule(const struct options *o, json_t *response)
{
    char nqueues[32], nrcpts[32];

    (void)o;
    format_count(response, "queues", nqueues, sizeof(nqueues));
    printf("%s queue%s scheduled (%s recipients)\n", nqueues, strcmp(nqueues, "1") ? "s" : "",
           format_count(response, "recipients", nrcpts, sizeof(nrcpts)));
    return 0;
}
