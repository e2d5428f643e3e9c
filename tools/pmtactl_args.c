/*
 * pmtactl_args.c - pmtactl's command line: options anywhere, command words in
 *                  order, the usage text, and the messages every command uses
 *
 * Owns: struct options as parsed (its strings point into argv).
 * SECURITY: option values are checked here (numbers, intervals, enumerations)
 * before any command puts them into a request.
 */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pmtactl.h"

/* --- messages ------------------------------------------------------------- */

/* fail - print "pmtactl: ..." on stderr; returns EXIT_FAILED */
int
fail(const char *fmt, ...)
{
    va_list ap;

    fputs("pmtactl: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    return EXIT_FAILED;
}

/* usage - see pmtactl.h */
void
usage(FILE *out)
{
    fprintf(out,
            "usage: pmtactl [-c FILE] [--socket PATH] [--json] COMMAND [OPTIONS] [PATTERN]\n"
            "       pmtactl --version | --help\n"
            "\n"
            "commands:\n"
            "  show status                          counters and queue totals of pmtad\n"
            "  show queues [--mode=normal|backoff] [--paused=yes|no] [--maxitems=N]\n"
            "              [--sort=name|rcpt] [--mode-events] [PATTERN]\n"
            "                                       the queues, most recipients first\n"
            "  show domains [--maxitems=N] [PATTERN]\n"
            "                                       queues summed by domain\n"
            "  show vmtas [--maxitems=N] [PATTERN]  queues summed by virtual MTA\n"
            "  show topqueues | topdomains [--maxitems=N] [PATTERN]\n"
            "                                       the same, most recipients first\n"
            "  show jobs [--maxitems=N]             queued recipients and kbytes per job id\n"
            "  show cluster [PATTERN]               the nodes sharing limits in Redis, and the\n"
            "                                       shared state of the queues PATTERN matches\n"
            "  show version | registration          versions of pmtactl and pmtad\n"
            "  show settings DOMAIN[/VMTA]          the effective settings of that queue\n"
            "  list [--queue=P] [--jobId=ID] [--rcpt=A] [--orig=A] [--maxitems=N] [P]\n"
            "                                       queued recipients (100 unless --maxitems)\n"
            "  set queue --mode=normal|backoff PATTERN\n"
            "                                       put queues into (or out of) backoff mode\n"
            "  pause queue PATTERN                  stop delivering from queues\n"
            "  resume queue PATTERN                 deliver from paused queues again\n"
            "  pause job JOBID                      hold the job's queued recipients\n"
            "  resume job JOBID                     deliver the job's recipients again\n"
            "  schedule PATTERN                     retry deferred recipients now\n"
            "  delete [--dsn] [--queue=P] [--jobId=ID] [--rcpt=A] [--orig=A] [--older-than=T] [P]\n"
            "                                       drop the recipients that match (not those\n"
            "                                       in delivery); --dsn bounces them\n"
            "  disable source [--reenable-after=T] IP[/VMTA] | enable source IP[/VMTA]\n"
            "                                       stop (start) connecting from IP\n"
            "  reset counters                       zero delivered/bounced/deferred counts\n"
            "  rotate acct                          move the accounting files now\n"
            "  test config                          check the configuration file\n"
            "  resolve [--connect] DOMAIN[/VMTA]    MX answer and the hosts pmtad would try;\n"
            "                                       --connect: their greeting and EHLO reply\n"
            "  trace [--log-data] DOMAIN[/VMTA]     the next delivery attempt of that queue as\n"
            "                                       its SMTP transcript, live\n"
            "  set warmup-clock INTERVAL            move the warm-up plans' clock ahead\n"
            "                                       (tests: days pass at once)\n"
            "  reload                               make pmtad re-read its configuration\n"
            "  rotate log                           log-file -> log-file.1 ... (log-rotate kept)\n"
            "  reopen log                           open log-file anew (after logrotate moved it)\n"
            "\n"
            "PATTERN is DOMAIN[/VMTA] with shell wildcards (*.example.com/*); without\n"
            "/VMTA it means every virtual MTA of the domain.\n"
            "\n"
            "  -c, --config FILE     configuration file (default " DEFAULT_CONFIG ")\n"
            "      --socket PATH     control socket (default RUNDIR/" CONTROL_SOCKET_NAME ")\n"
            "      --json            print pmtad's JSON response as is\n"
            "      --mode=MODE       show queues / set queue: normal or backoff\n"
            "      --paused=yes|no   show queues: only paused or only running queues\n"
            "      --maxitems=N      show queues: at most N queues (default 20, 0 = all)\n"
            "      --sort=name|rcpt  show queues: order (default rcpt)\n"
            "      --mode-events     show queues: also list each queue's mode changes\n"
            "      --dsn             delete: send a bounce (DSN) for each deleted recipient\n"
            "      --queue=PATTERN   list, delete: the queues (PowerMTA's spelling of PATTERN)\n"
            "      --jobId=ID        list, delete: recipients of that job (X-Job)\n"
            "      --rcpt=ADDRESS    list, delete: recipients (shell wildcards, any case)\n"
            "      --orig=ADDRESS    list, delete: by envelope sender (shell wildcards)\n"
            "      --older-than=TIME delete: queued longer than TIME (1d12h, 30m, ...)\n"
            "      --reenable-after=TIME  disable source: enable it again after TIME\n"
            "      --log-data        trace: show the message data too (elided otherwise)\n"
            "\n"
            "exit status: 0 done, 1 pmtad refused, 2 usage, 3 pmtad not running,\n"
            "4 nothing matches, 5 not allowed (root only)\n"
            "  -h, --help            this text\n"
            "      --version         print the version\n");
}

/* usage_error - a usage problem: the message, the usage text; returns EXIT_USAGE */
int
usage_error(const char *fmt, ...)
{
    va_list ap;

    fputs("pmtactl: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputs("\n\n", stderr);
    usage(stderr);
    return EXIT_USAGE;
}

/* --- command line ---------------------------------------------------------- */

/* parse_maxitems - a non-negative decimal count; false when TEXT is not one */
static bool
parse_maxitems(const char *text, long long *out)
{
    char *end;

    if (!isdigit((unsigned char)text[0]))
        return false;
    errno = 0;
    *out = strtoll(text, &end, 10);
    return errno == 0 && *end == '\0';
}

/* parse_yes_no - yes|no (also true|false, on|off); false when TEXT is neither */
static bool
parse_yes_no(const char *text, bool *out)
{
    static const char *const yes[] = { "yes", "true", "on" };
    static const char *const no[] = { "no", "false", "off" };

    for (size_t i = 0; i < sizeof(yes) / sizeof(yes[0]); i++) {
        if (strcmp(text, yes[i]) == 0)
            return (*out = true);
        if (strcmp(text, no[i]) == 0)
            return !(*out = false);
    }
    return false;
}

/* set_command_option - store --NAME=VALUE; EXIT_USAGE (reported) on a bad value, else 0 */
static int
set_command_option(struct options *o, const char *name, const char *value)
{
    if (strcmp(name, "mode") == 0) {
        if (strcmp(value, "normal") && strcmp(value, "backoff"))
            return usage_error("--mode must be normal or backoff, not '%s'", value);
        o->mode = value;
        o->given |= OPT_MODE;
    } else if (strcmp(name, "paused") == 0) {
        if (!parse_yes_no(value, &o->paused))
            return usage_error("--paused must be yes or no, not '%s'", value);
        o->given |= OPT_PAUSED;
    } else if (strcmp(name, "queue") == 0) {
        o->queue = value;
        o->given |= OPT_QUEUE;
    } else if (strcmp(name, "jobId") == 0 || strcmp(name, "jobid") == 0) {
        o->job = value;
        o->given |= OPT_JOB;
    } else if (strcmp(name, "rcpt") == 0) {
        o->rcpt = value;
        o->given |= OPT_RCPT;
    } else if (strcmp(name, "orig") == 0) {
        o->orig = value;
        o->given |= OPT_ORIG;
    } else if (strcmp(name, "older-than") == 0) {
        if (!parse_interval(value, &o->older_than))
            return usage_error("--older-than must be a time like 2h or 1d12h, not '%s'", value);
        o->given |= OPT_OLDER_THAN;
    } else if (strcmp(name, "reenable-after") == 0) {
        if (!parse_interval(value, &o->reenable_after) || o->reenable_after == 0)
            return usage_error("--reenable-after must be a time like 30m, not '%s'", value);
        o->given |= OPT_REENABLE_AFTER;
    } else if (strcmp(name, "maxitems") == 0) {
        if (!parse_maxitems(value, &o->maxitems))
            return usage_error("--maxitems must be a number (0 = all), not '%s'", value);
        o->given |= OPT_MAXITEMS;
    } else {
        if (strcmp(value, "name") && strcmp(value, "rcpt"))
            return usage_error("--sort must be name or rcpt, not '%s'", value);
        o->sort = value;
        o->given |= OPT_SORT;
    }
    return 0;
}

/*
 * parse_long_option - ARGV[*I] is "--NAME[=VALUE]"; options taking a value
 * also accept it as the next argument. 0, or EXIT_USAGE (reported).
 */
static int
parse_long_option(struct options *o, int argc, char **argv, int *i)
{
    static const char *const with_value[] = { "config",        "socket", "mode",  "paused",
                                              "maxitems",      "sort",   "queue", "jobId",
                                              "jobid",         "rcpt",   "orig",  "older-than",
                                              "reenable-after" };
    const char *arg = argv[*i] + 2, *eq = strchr(arg, '=');
    size_t namelen = eq ? (size_t)(eq - arg) : strlen(arg);
    char name[32];
    const char *value = eq ? eq + 1 : NULL;
    bool takes_value = false;

    if (namelen >= sizeof(name))
        return usage_error("unknown option '%s'", argv[*i]);
    memcpy(name, arg, namelen);
    name[namelen] = '\0';
    for (size_t k = 0; k < sizeof(with_value) / sizeof(with_value[0]); k++)
        takes_value |= strcmp(name, with_value[k]) == 0;
    if (!takes_value) {
        if (value)
            return usage_error("option --%s takes no value", name);
        if (strcmp(name, "json") == 0)
            o->json = true;
        else if (strcmp(name, "help") == 0)
            o->help = true;
        else if (strcmp(name, "version") == 0)
            o->version = true;
        else if (strcmp(name, "mode-events") == 0)
            o->given |= OPT_MODE_EVENTS;
        else if (strcmp(name, "dsn") == 0)
            o->given |= OPT_DSN;
        else if (strcmp(name, "connect") == 0)
            o->given |= OPT_CONNECT;
        else if (strcmp(name, "log-data") == 0)
            o->given |= OPT_LOG_DATA;
        else
            return usage_error("unknown option '%s'", argv[*i]);
        return 0;
    }
    if (value == NULL) {
        if (*i + 1 >= argc)
            return usage_error("option --%s needs a value", name);
        value = argv[++*i];
    }
    if (strcmp(name, "config") == 0)
        o->config_path = value;
    else if (strcmp(name, "socket") == 0)
        o->socket_path = value;
    else
        return set_command_option(o, name, value);
    return 0;
}

/* add_word - a command word or the pattern; 0 or EXIT_USAGE */
static int
add_word(struct options *o, const char *word)
{
    if (o->nwords == MAX_WORDS)
        return usage_error("too many arguments");
    o->words[o->nwords++] = word;
    return 0;
}

/* parse_short_option - -c FILE, -cFILE, -h; 0 or EXIT_USAGE */
static int
parse_short_option(struct options *o, int argc, char **argv, int *i)
{
    const char *arg = argv[*i];

    if (strcmp(arg, "-h") == 0) {
        o->help = true;
        return 0;
    }
    if (strncmp(arg, "-c", 2) != 0)
        return usage_error("unknown option '%s'", arg);
    if (arg[2] != '\0') {
        o->config_path = arg + 2;
        return 0;
    }
    if (*i + 1 >= argc)
        return usage_error("option -c needs a value");
    o->config_path = argv[++*i];
    return 0;
}

/* parse_args - see pmtactl.h */
int
parse_args(int argc, char **argv, struct options *o)
{
    bool words_only = false;
    int rc = 0;

    memset(o, 0, sizeof(*o));
    o->config_path = DEFAULT_CONFIG;
    for (int i = 1; i < argc && rc == 0; i++) {
        const char *arg = argv[i];

        if (words_only || arg[0] != '-' || arg[1] == '\0')
            rc = add_word(o, arg);
        else if (strcmp(arg, "--") == 0)
            words_only = true;
        else if (arg[1] == '-')
            rc = parse_long_option(o, argc, argv, &i);
        else
            rc = parse_short_option(o, argc, argv, &i);
    }
    return rc;
}
