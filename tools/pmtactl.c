/*
 * pmtactl.c - the operator's client of a running pmtad: main and the command
 *             table
 *
 * NAME
 *   pmtactl - show and steer the queues of a running pmtad
 *
 * SYNOPSIS
 *   pmtactl [-c FILE] [--socket PATH] [--json] COMMAND [OPTIONS] [PATTERN]
 *   (the commands: the table below, usage() in pmtactl_args.c, doc/pmtactl.8)
 *
 * DESCRIPTION
 *   Every command is a line of the table: its words, the options it takes,
 *   whether it wants a PATTERN, and either the control-socket request it
 *   sends (its "cmd", how its arguments go in, whether the answer matched
 *   anything, how the answer is printed) or a function that does the work
 *   here (reload, test config, resolve, trace, ...). The pieces:
 *     pmtactl_args.c     the command line, the usage text, messages
 *     pmtactl_client.c   the control socket, the run-directory, signals
 *     pmtactl_tables.c   printing: status, queues, domains, vmtas, changes
 *     pmtactl_cmds.c     list, jobs, delete, sources, counters, files, config
 *     pmtactl_trace.c    trace: a delivery attempt's transcript, live
 *     pmtactl_resolve.c  resolve: the MX answer and the hosts pmtad would try
 *     pmtactl_cluster.c  show cluster: the nodes sharing limits, shared state
 *
 * DIAGNOSTICS
 *   Exit 0 on success; 1 when pmtad refuses or answers nonsense; 2 on a
 *   usage error; 3 when pmtad is not running; 4 when nothing matches; 5
 *   when the caller may not (pmtactl.h, EXIT_*).
 *
 * Owns: nothing beyond one command's request and response.
 *
 * SECURITY
 *   Not setuid; the control socket is root-only. All JSON goes through
 *   jansson; text in responses is printed with control bytes replaced.
 */
#include "config.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "msg.h"
#include "xalloc.h"
#include "pmtactl.h"

/* --- dispatch -------------------------------------------------------------------- */

static const struct command commands[] = {
    { "show", "status", 0, 0, PATTERN_NONE, "status", NULL, NULL, print_status, NULL, NULL },
    { "show", "queues", OPT_MODE | OPT_PAUSED | OPT_MAXITEMS | OPT_SORT | OPT_MODE_EVENTS, 0,
      PATTERN_OPTIONAL, "show-queues", add_show_queues_args, NULL, print_queues, NULL, NULL },
    { "show", "topqueues", OPT_MODE | OPT_PAUSED | OPT_MAXITEMS | OPT_MODE_EVENTS, 0,
      PATTERN_OPTIONAL, "show-queues", add_top_queues_args, NULL, print_queues, NULL, NULL },
    { "show", "domains", OPT_MAXITEMS, 0, PATTERN_OPTIONAL, "show-domains", add_show_groups_args,
      NULL, print_domains, NULL, NULL },
    { "show", "topdomains", OPT_MAXITEMS, 0, PATTERN_OPTIONAL, "show-domains", add_show_groups_args,
      NULL, print_domains, NULL, NULL },
    { "show", "vmtas", OPT_MAXITEMS, 0, PATTERN_OPTIONAL, "show-vmtas", add_show_groups_args, NULL,
      print_vmtas, NULL, NULL },
    { "show", "jobs", OPT_MAXITEMS, 0, PATTERN_NONE, "show-jobs", add_maxitems_arg, NULL,
      print_jobs, NULL, NULL },
    { "show", "cluster", 0, 0, PATTERN_OPTIONAL, "show-cluster", add_pattern_arg, NULL,
      print_cluster, NULL, NULL },
    { "show", "version", 0, 0, PATTERN_NONE, "status", NULL, NULL, print_version, NULL, NULL },
    { "show", "registration", 0, 0, PATTERN_NONE, NULL, NULL, NULL, NULL, run_show_registration,
      NULL },
    { "list", NULL, OPT_QUEUE | OPT_JOB | OPT_RCPT | OPT_ORIG | OPT_MAXITEMS, 0, PATTERN_OPTIONAL,
      "list", add_filter_args, listed_anything, print_list, NULL, NULL },
    { "set", "queue", OPT_MODE, OPT_MODE, PATTERN_REQUIRED, "set-queue-mode", add_set_mode_args,
      changed_anything, print_set_queue_mode, NULL, NULL },
    { "pause", "queue", 0, 0, PATTERN_REQUIRED, "pause-queue", add_pattern_arg, changed_anything,
      print_pause_queue, NULL, NULL },
    { "resume", "queue", 0, 0, PATTERN_REQUIRED, "resume-queue", add_pattern_arg, changed_anything,
      print_resume_queue, NULL, NULL },
    { "pause", "job", 0, 0, PATTERN_REQUIRED, "pause-job", add_job_arg, NULL, print_pause_job, NULL,
      "a job id" },
    { "resume", "job", 0, 0, PATTERN_REQUIRED, "resume-job", add_job_arg, NULL, print_resume_job,
      NULL, "a job id" },
    { "schedule", NULL, 0, 0, PATTERN_REQUIRED, "schedule", add_pattern_arg, scheduled_anything,
      print_schedule, NULL, NULL },
    { "delete", NULL, OPT_DSN | OPT_QUEUE | OPT_JOB | OPT_RCPT | OPT_ORIG | OPT_OLDER_THAN, 0,
      PATTERN_OPTIONAL, "delete", add_delete_args, deleted_anything, print_delete, NULL, NULL },
    { "disable", "source", OPT_REENABLE_AFTER, 0, PATTERN_REQUIRED, "disable-source",
      add_source_args, NULL, print_source, NULL, NULL },
    { "enable", "source", 0, 0, PATTERN_REQUIRED, "enable-source", add_source_args, NULL,
      print_source, NULL, NULL },
    { "reset", "counters", 0, 0, PATTERN_NONE, "reset-counters", NULL, NULL, print_reset, NULL,
      NULL },
    { "reset", "status", 0, 0, PATTERN_NONE, "reset-counters", NULL, NULL, print_reset, NULL,
      NULL },
    { "rotate", "acct", 0, 0, PATTERN_NONE, "rotate-acct", NULL, NULL, print_rotate_acct, NULL,
      NULL },
    { "test", "config", 0, 0, PATTERN_NONE, NULL, NULL, NULL, NULL, run_test_config, NULL },
    { "resolve", NULL, OPT_CONNECT, 0, PATTERN_REQUIRED, NULL, NULL, NULL, NULL, run_resolve,
      "DOMAIN[/VMTA]" },
    { "trace", NULL, OPT_LOG_DATA, 0, PATTERN_REQUIRED, NULL, NULL, NULL, NULL, run_trace,
      "a queue DOMAIN[/VMTA]" },
    { "show", "settings", 0, 0, PATTERN_REQUIRED, NULL, NULL, NULL, NULL, run_show_settings, NULL },
    { "set", "warmup-clock", 0, 0, PATTERN_REQUIRED, "warmup-clock", add_clock_args, NULL,
      print_warmup_clock, NULL, "an INTERVAL" },
    { "reload", NULL, 0, 0, PATTERN_NONE, NULL, NULL, NULL, NULL, run_signal_command, NULL },
    { "rotate", "log", 0, 0, PATTERN_NONE, NULL, NULL, NULL, NULL, run_signal_command, NULL },
    { "reopen", "log", 0, 0, PATTERN_NONE, NULL, NULL, NULL, NULL, run_signal_command, NULL },
};

/* command_name - "show queues" for messages */
static void
command_name(const struct command *cmd, char *buf, size_t size)
{
    snprintf(buf, size, "%s%s%s", cmd->verb, cmd->object ? " " : "",
             cmd->object ? cmd->object : "");
}

/* find_command - the command named by the leading words, or NULL */
static const struct command *
find_command(const struct options *o)
{
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
        const struct command *cmd = &commands[i];

        if (o->nwords < 1 || strcmp(o->words[0], cmd->verb) != 0)
            continue;
        if (cmd->object == NULL)
            return cmd;
        if (o->nwords >= 2 && strcmp(o->words[1], cmd->object) == 0)
            return cmd;
    }
    return NULL;
}

/* option_name - the --name of option bit BIT */
static const char *
option_name(unsigned bit)
{
    switch (bit) {
    case OPT_MODE:
        return "--mode";
    case OPT_PAUSED:
        return "--paused";
    case OPT_MAXITEMS:
        return "--maxitems";
    case OPT_SORT:
        return "--sort";
    case OPT_DSN:
        return "--dsn";
    case OPT_QUEUE:
        return "--queue";
    case OPT_JOB:
        return "--jobId";
    case OPT_RCPT:
        return "--rcpt";
    case OPT_ORIG:
        return "--orig";
    case OPT_OLDER_THAN:
        return "--older-than";
    case OPT_REENABLE_AFTER:
        return "--reenable-after";
    case OPT_CONNECT:
        return "--connect";
    case OPT_LOG_DATA:
        return "--log-data";
    default:
        return "--mode-events";
    }
}

/* check_command_args - options and pattern fit CMD; *PATTERN set; 0 or EXIT_USAGE */
static int
check_command_args(const struct command *cmd, const struct options *o, const char **pattern)
{
    int nargs = o->nwords - (cmd->object ? 2 : 1);
    unsigned extra = o->given & ~cmd->allowed, missing = cmd->required & ~o->given;
    char name[32];

    command_name(cmd, name, sizeof(name));
    for (unsigned bit = 1; bit <= OPT_LAST; bit <<= 1) {
        if (extra & bit)
            return usage_error("option %s does not apply to '%s'", option_name(bit), name);
        if (missing & bit)
            return usage_error("'%s' needs %s", name, option_name(bit));
    }
    if ((o->given & OPT_QUEUE) && nargs == 0) {
        *pattern = o->queue; /* delete --queue=PATTERN */
        return 0;
    }
    if (strcmp(cmd->verb, "delete") == 0 && nargs == 0 && !(o->given & OPT_JOB))
        return usage_error("'delete' needs a queue (PATTERN or --queue=) or --jobId=");
    if (nargs > 1 || (nargs == 1 && cmd->pattern == PATTERN_NONE))
        return usage_error("'%s' takes %s", name,
                           cmd->pattern == PATTERN_NONE ? "no arguments"
                           : cmd->arg_name              ? cmd->arg_name
                                                        : "one PATTERN");
    if (nargs == 0 && cmd->pattern == PATTERN_REQUIRED)
        return usage_error("'%s' needs %s", name,
                           cmd->arg_name ? cmd->arg_name : "a queue PATTERN (DOMAIN[/VMTA])");
    *pattern = nargs == 1 ? o->words[o->nwords - 1] : NULL;
    if (*pattern && **pattern == '\0')
        return usage_error("empty PATTERN");
    return 0;
}

/* control_socket_path - --socket, else RUNDIR/control of the configuration; NULL (reported) */
/* no_match - "no queue matches PATTERN" (or "nothing matches" for filters); EXIT_NO_MATCH */
static int
no_match(const struct command *cmd, const char *pattern)
{
    char *shown = printable(pattern ? pattern : "", SIZE_MAX);

    if (strcmp(cmd->verb, "list") == 0 || strcmp(cmd->verb, "delete") == 0)
        fail("no queued recipient matches%s%s", pattern ? " in " : "", shown);
    else
        fail("no queue matches %s", shown);
    free(shown);
    return EXIT_NO_MATCH;
}

/* error_status - see pmtactl.h */
int
error_status(json_t *response)
{
    const char *error = json_string_value(json_object_get(response, "error"));

    if (error && strncmp(error, "permission denied", 17) == 0)
        return EXIT_DENIED;
    if (error && (strncmp(error, "no queue matches", 16) == 0 ||
                  strncmp(error, "no queued recipient", 19) == 0))
        return EXIT_NO_MATCH;
    return EXIT_FAILED;
}

/* report_error - see pmtactl.h */
int
report_error(json_t *response)
{
    const char *error = json_string_value(json_object_get(response, "error"));
    char *shown = printable(error ? error : "request failed (no reason given)", SIZE_MAX);

    fail("%s", shown);
    free(shown);
    return error_status(response);
}

/*
 * report - print RESPONSE (the raw TEXT with --json); the exit status is the
 * same either way: EXIT_FAILED for a refusal, EXIT_NO_MATCH when nothing
 * matched.
 */
static int
report(const struct command *cmd, const struct options *o, const char *pattern, const char *text,
       json_t *response)
{
    bool ok = json_is_true(json_object_get(response, "ok"));
    bool matched = !ok || cmd->matched == NULL || cmd->matched(response);

    if (o->json) {
        printf("%s\n", text);
        return !ok ? error_status(response) : matched ? 0 : EXIT_NO_MATCH;
    }
    if (!ok)
        return report_error(response);
    if (!matched)
        return no_match(cmd, pattern);
    return cmd->print(o, response);
}

/* build_request - {"cmd": NAME, ...arguments} */
static json_t *
build_request(const struct command *cmd, const struct options *o, const char *pattern)
{
    json_t *request = json_pack("{s:s}", "cmd", cmd->wire_name);

    if (request && cmd->add_args)
        cmd->add_args(request, o, pattern);
    return request;
}

/* run_socket_command - build the request, control_exchange it, print the answer */
static int
run_socket_command(const struct command *cmd, const struct options *o, const char *pattern)
{
    char *path = control_socket_path(o), *text;
    json_t *request, *response;
    size_t len = 0;
    int rc = EXIT_FAILED;

    if (path == NULL)
        return EXIT_FAILED;
    if ((request = build_request(cmd, o, pattern)) == NULL) {
        free(path);
        return fail("cannot build the request");
    }
    if ((text = control_exchange(path, request, &len)) != NULL) {
        if ((response = control_decode(text, len)) != NULL) {
            rc = report(cmd, o, pattern, text, response);
            json_decref(response);
        }
        free(text);
    } else if (control_unreachable()) {
        rc = control_unreachable();
    }
    json_decref(request);
    free(path);
    return rc;
}

int
main(int argc, char **argv)
{
    struct options o;
    const struct command *cmd;
    const char *pattern = NULL;
    int rc;

    msg_init("pmtactl");
    if ((rc = parse_args(argc, argv, &o)) != 0)
        return rc;
    if (o.help) {
        usage(stdout);
        return 0;
    }
    if (o.version) {
        printf("pmtactl (%s) %s\n", PACKAGE_NAME, PACKAGE_VERSION);
        return 0;
    }
    if (o.nwords == 0)
        return usage_error("no command given");
    if ((cmd = find_command(&o)) == NULL)
        return usage_error("unknown command '%s%s%s'", o.words[0], o.nwords > 1 ? " " : "",
                           o.nwords > 1 ? o.words[1] : "");
    if ((rc = check_command_args(cmd, &o, &pattern)) != 0)
        return rc;
    if (cmd->local)
        return cmd->local(&o, pattern);
    return run_socket_command(cmd, &o, pattern);
}
