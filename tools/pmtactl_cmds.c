/*
 * pmtactl_cmds.c - pmtactl's commands about recipients, jobs, sources,
 *                  counters, files and the configuration
 *
 *   list [--queue=P] [--jobId=ID] [--rcpt=A] [--orig=A] [--maxitems=N] [P]
 *   show jobs [--maxitems=N]
 *   delete [--dsn] [--queue=P] [--jobId=ID] [--rcpt=A] [--orig=A] [--older-than=T] [P]
 *   disable source [--reenable-after=T] IP[/VMTA]     enable source IP[/VMTA]
 *   reset counters     rotate acct     show version     show registration
 *   test config
 * The socket requests and their answers are qmgr's (qmgr_ctl_rcpt.c,
 * qmgr_ctl_ops.c); the tables are laid out like PowerMTA's.
 *
 * Owns: nothing beyond one command.
 * SECURITY: text from responses (addresses, replies) is printed through
 * printable(); arguments are checked before they go into a request.
 */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cfg.h"
#include "pmtactl.h"


/*
 * print_live_state - after `show settings`: what the running pmtad says about
 * those queues now (a domain whose mail joins a rollup: that queue's state)
 */
static void
print_live_state(const struct options *o, const char *queue)
{
    json_t *r = control_ask_quietly(o, json_pack("{s:s, s:s, s:i, s:b}", "cmd", "show-queues",
                                                 "queue", queue, "maxitems", 0, "all", 1));
    json_t *queues = r ? json_object_get(r, "queues") : NULL, *q;
    size_t i;

    if (!json_is_array(queues)) {
        printf("\n(pmtad does not answer: no live state)\n");
        json_decref(r);
        return;
    }
    printf("\nnow:\n");
    if (json_array_size(queues) == 0)
        printf("  no queue %s yet (no mail for it since pmtad started)\n", queue);
    json_array_foreach(queues, i, q)
    {
        const char *joins = json_string_value(json_object_get(q, "joins"));
        json_t *jr, *jq;

        print_queue_state(q);
        if (!joins)
            continue;
        jr = control_ask_quietly(o, json_pack("{s:s, s:s, s:i, s:b}", "cmd", "show-queues", "queue",
                                              joins, "maxitems", 0, "all", 1));
        jq = jr ? json_array_get(json_object_get(jr, "queues"), 0) : NULL;
        if (jq)
            print_queue_state(jq);
        json_decref(jr);
    }
    json_decref(r);
}

/* add_clock_args - set warmup-clock INTERVAL: "advance": INTERVAL (pmtad checks it) */
void
add_clock_args(json_t *req, const struct options *o, const char *interval)
{
    (void)o;
    json_object_set_new(req, "advance", json_string(interval));
}

int
print_warmup_clock(const struct options *o, json_t *response)
{
    (void)o;
    printf("warm-up clock advanced: day %" JSON_INTEGER_FORMAT " now\n",
           json_integer_value(json_object_get(response, "day")));
    return 0;
}

/*
 * run_show_settings - `pmtactl show settings DOMAIN[/VMTA]`: read from the
 * configuration file itself (what pmtad runs is that file once reloaded),
 * the same lines as pmtad --show-settings, then the queues' live state
 */
int
run_show_settings(const struct options *o, const char *queue)
{
    unsigned nerrors = 0;
    struct cfg *c = cfg_load(o->config_path, print_config_error, (void *)o->config_path, &nerrors);
    char err[300];
    int rc;

    if (c == NULL)
        return fail("%s: cannot load the configuration (%u error%s)", o->config_path, nerrors,
                    nerrors == 1 ? "" : "s");
    rc = cfg_show_settings(c, queue, stdout, err, sizeof err);
    cfg_free(c);
    if (rc < 0)
        return fail("show settings %s: %s", queue, err);
    print_live_state(o, queue);
    return 0;
}

/* --- arguments ------------------------------------------------------------------ */

/* parse_interval - see pmtactl.h (PowerMTA's TIME-INTERVAL: units w d h m s, combinable) */
bool
parse_interval(const char *text, long long *seconds)
{
    long long total = 0;

    if (!isdigit((unsigned char)*text))
        return false;
    while (*text) {
        char *end;
        long long n, unit;

        errno = 0;
        n = strtoll(text, &end, 10);
        if (errno || end == text)
            return false;
        switch (*end) {
        case '\0':
            unit = 1;
            break;
        case 'w':
            unit = 604800;
            break;
        case 'd':
            unit = 86400;
            break;
        case 'h':
            unit = 3600;
            break;
        case 'm':
            unit = 60;
            break;
        case 's':
            unit = 1;
            break;
        default:
            return false;
        }
        if (n > (1LL << 40) / unit)
            return false;
        total += n * unit;
        text = *end ? end + 1 : end;
    }
    *seconds = total;
    return true;
}

/* add_filter_args - list's and delete's selectors (the PATTERN word is --queue) */
void
add_filter_args(json_t *req, const struct options *o, const char *pattern)
{
    if (pattern)
        json_object_set_new(req, "queue", json_string(pattern));
    if (o->given & OPT_JOB)
        json_object_set_new(req, "jobId", json_string(o->job));
    if (o->given & OPT_RCPT)
        json_object_set_new(req, "rcpt", json_string(o->rcpt));
    if (o->given & OPT_ORIG)
        json_object_set_new(req, "orig", json_string(o->orig));
    if (o->given & OPT_OLDER_THAN)
        json_object_set_new(req, "older_than", json_integer(o->older_than));
    if (o->given & OPT_MAXITEMS)
        json_object_set_new(req, "maxitems", json_integer(o->maxitems));
}

void
add_delete_args(json_t *req, const struct options *o, const char *pattern)
{
    add_filter_args(req, o, pattern);
    json_object_set_new(req, "dsn", json_boolean(o->given & OPT_DSN));
}

void
add_maxitems_arg(json_t *req, const struct options *o, const char *pattern)
{
    (void)pattern;
    if (o->given & OPT_MAXITEMS)
        json_object_set_new(req, "maxitems", json_integer(o->maxitems));
}

/* add_top_queues_args - show topqueues: show queues, most recipients first */
void
add_top_queues_args(json_t *req, const struct options *o, const char *pattern)
{
    add_show_queues_args(req, o, pattern);
    json_object_set_new(req, "sort", json_string("rcpt"));
}

/* add_source_args - "IP[/VMTA]" into "ip" and "vmta"; --reenable-after */
void
add_source_args(json_t *req, const struct options *o, const char *pattern)
{
    const char *slash = strchr(pattern, '/');

    json_object_set_new(
        req, "ip", slash ? json_stringn(pattern, (size_t)(slash - pattern)) : json_string(pattern));
    if (slash && slash[1])
        json_object_set_new(req, "vmta", json_string(slash + 1));
    if (o->given & OPT_REENABLE_AFTER)
        json_object_set_new(req, "reenable_after", json_integer(o->reenable_after));
}

/* --- matched? -------------------------------------------------------------------- */

bool
listed_anything(json_t *response)
{
    return json_integer_value(json_object_get(response, "total")) > 0;
}

bool
deleted_anything(json_t *response)
{
    return json_integer_value(json_object_get(response, "recipients")) > 0 ||
           json_integer_value(json_object_get(response, "inflight")) > 0;
}

/* --- printing --------------------------------------------------------------------- */

/* print_cell - TEXT cut to WIDTH, padded, then a space */
static void
print_cell(const char *text, int width)
{
    char *shown = printable(text, (size_t)width);

    printf("%-*s ", width, shown);
    free(shown);
}

/* print_list - PowerMTA's list: one line per recipient, then "N of M recipients shown." */
int
print_list(const struct options *o, json_t *response)
{
    json_t *rcpts = json_object_get(response, "recipients"), *r;
    char attempts[32];
    size_t i;

    (void)o;
    if (!json_is_array(rcpts))
        return fail("malformed response from pmtad (no \"recipients\" array)");
    printf("%-28s %-32s %-28s %-12s %-8s %4s %-24s %s\n", "queue", "rcpt", "orig", "jobId", "state",
           "try", "queued", "last error");
    json_array_foreach(rcpts, i, r)
    {
        char *error = printable(get_text(r, "last_error"), 60);

        print_cell(get_text(r, "queue"), 28);
        print_cell(get_text(r, "rcpt"), 32);
        print_cell(get_text(r, "orig"), 28);
        print_cell(get_text(r, "jobId"), 12);
        print_cell(get_text(r, "state"), 8);
        printf("%4s ", format_count(r, "attempts", attempts, sizeof attempts));
        print_cell(get_text(r, "queued"), 24);
        printf("%s\n", error);
        free(error);
    }
    printf("%zu of %" JSON_INTEGER_FORMAT " recipients shown.\n", json_array_size(rcpts),
           json_integer_value(json_object_get(response, "total")));
    return 0;
}

/* print_jobs - PowerMTA's show jobs: job-id #rcpt kbytes */
int
print_jobs(const struct options *o, json_t *response)
{
    json_t *jobs = json_object_get(response, "jobs"), *j;
    char n[32], kb[32];
    size_t i;

    (void)o;
    if (!json_is_array(jobs))
        return fail("malformed response from pmtad (no \"jobs\" array)");
    printf("%-40s %8s %10s %s\n", "job-id", "#rcpt", "kbytes", "paused");
    json_array_foreach(jobs, i, j)
    {
        print_cell(get_text(j, "jobId"), 40);
        printf("%8s %10s %s\n", format_count(j, "recipients", n, sizeof n),
               format_count(j, "kbytes", kb, sizeof kb),
               json_is_true(json_object_get(j, "paused")) ? "yes" : "no");
    }
    printf("%zu of %" JSON_INTEGER_FORMAT " jobs shown.\n", json_array_size(jobs),
           json_integer_value(json_object_get(response, "total")));
    return 0;
}

/* --- pause job, resume job --------------------------------------------------------- */

/* add_job_arg - "jobId": the job id given as the command's argument */
void
add_job_arg(json_t *req, const struct options *o, const char *job)
{
    (void)o;
    json_object_set_new(req, "jobId", json_string(job));
}

/* print_job_change - "job ID: WHAT (N recipients)", or that nothing changed */
static int
print_job_change(json_t *response, const char *what, const char *already, const char *count)
{
    char *job = printable(get_text(response, "jobId"), 120);
    char n[32];

    format_count(response, "recipients", n, sizeof n);
    if (json_integer_value(json_object_get(response, "changed")) > 0)
        printf("job %s: %s (%s recipient(s) %s)\n", job, what, n, count);
    else
        printf("no change: job %s %s\n", job, already);
    free(job);
    return 0;
}

int
print_pause_job(const struct options *o, json_t *response)
{
    (void)o;
    return print_job_change(response, "paused", "was already paused", "queued");
}

int
print_resume_job(const struct options *o, json_t *response)
{
    (void)o;
    return print_job_change(response, "resumed", "was not paused", "ready again");
}

int
print_delete(const struct options *o, json_t *response)
{
    char nrcpts[32], nqueues[32], inflight[32];

    (void)o;
    format_count(response, "recipients", nrcpts, sizeof(nrcpts));
    format_count(response, "queues", nqueues, sizeof(nqueues));
    format_count(response, "inflight", inflight, sizeof(inflight));
    printf("%s recipient(s) deleted from %s queue(s)", nrcpts, nqueues);
    if (strcmp(inflight, "0") != 0 && strcmp(inflight, "-") != 0)
        printf("; %s in delivery now were left alone", inflight);
    printf("\n");
    return 0;
}

int
print_source(const struct options *o, json_t *response)
{
    char n[32];
    const char *what = strcmp(o->words[0], "enable") == 0 ? "enabled" : "disabled";
    char *which = printable(o->words[o->nwords - 1], 120);

    printf("source %s %s (%s queue(s) now)\n", which, what,
           format_count(response, "queues", n, sizeof n));
    free(which);
    return 0;
}

int
print_reset(const struct options *o, json_t *response)
{
    (void)o, (void)response;
    printf("Counters reset.\n");
    return 0;
}

int
print_rotate_acct(const struct options *o, json_t *response)
{
    (void)o, (void)response;
    printf("Accounting files rotated.\n");
    return 0;
}

/* print_version - pmtactl's version and the running pmtad's (its status answer) */
int
print_version(const struct options *o, json_t *response)
{
    json_t *st = json_object_get(response, "status");
    char pid[32], up[32];
    json_t *uptime = json_object_get(st, "uptime_s");

    (void)o;
    printf("%s %s (pmtactl)\n", PACKAGE_NAME, PACKAGE_VERSION);
    printf("%s %s (pmtad, qmgr pid %s, up %s)\n", PACKAGE_NAME,
           *get_text(st, "version") ? get_text(st, "version") : "(version not reported)",
           format_count(st, "pid", pid, sizeof pid),
           json_is_integer(uptime) ? format_duration(json_integer_value(uptime), up, sizeof up)
                                   : "-");
    return 0;
}

/* --- local commands ----------------------------------------------------------------- */

/* count_warning - cfg_load's diagnostics: errors printed, warnings counted */
static void
count_warning(void *ctx, enum cfg_diag_level level, const char *file, unsigned line,
              const char *message)
{
    struct {
        const char *path;
        unsigned warnings;
    } *t = ctx;

    if (level == CFG_DIAG_ERROR) {
        print_config_error((void *)t->path, level, file, line, message);
        return;
    }
    t->warnings++;
    if (file && *file && line > 0)
        fprintf(stderr, "%s:%u: warning: %s\n", file, line, message);
    else
        fprintf(stderr, "%s: warning: %s\n", t->path, message);
}

/* run_test_config - PowerMTA's `test config`: load the file as pmtad would; 0 or EXIT_FAILED */
int
run_test_config(const struct options *o, const char *pattern)
{
    struct {
        const char *path;
        unsigned warnings;
    } t = { o->config_path, 0 };
    unsigned nerrors = 0;
    struct cfg *c;

    (void)pattern;
    if ((c = cfg_load(o->config_path, count_warning, &t, &nerrors)) == NULL)
        return fail("%s: %u error%s; pmtad would refuse it", o->config_path, nerrors,
                    nerrors == 1 ? "" : "s");
    cfg_free(c);
    printf("%s: configuration OK (%u warning%s)\n", o->config_path, t.warnings,
           t.warnings == 1 ? "" : "s");
    return 0;
}

/* run_show_registration - PowerMTA's license registration has no counterpart */
int
run_show_registration(const struct options *o, const char *pattern)
{
    (void)o, (void)pattern;
    printf("%s %s needs no license key and no registration.\n", PACKAGE_NAME, PACKAGE_VERSION);
    return 0;
}
