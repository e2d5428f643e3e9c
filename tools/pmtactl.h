/*
 * pmtactl.h - what pmtactl's files share: the command line, the command
 *             table's types, exit statuses and the printing helpers
 *
 * pmtactl.c has main and the command table; pmtactl_args.c the command
 * line; pmtactl_client.c the control socket, the run-directory and the
 * signal commands; pmtactl_tables.c the queue tables; pmtactl_cmds.c the
 * commands about recipients, jobs, sources, counters, files and the
 * configuration; pmtactl_trace.c `trace`; pmtactl_resolve.c `resolve`;
 * pmtactl_cluster.c `show cluster`.
 */
#ifndef PMTA_PMTACTL_H
#define PMTA_PMTACTL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#include <jansson.h>

#include "cfg.h"

/* Exit statuses (doc/pmtactl.8, EXIT STATUS) */
#define EXIT_FAILED      1 /* pmtad refused the request or answered nonsense; I/O errors */
#define EXIT_USAGE       2 /* a bad command, option or argument */
#define EXIT_NOT_RUNNING 3 /* pmtad is not running (no socket, nobody listening, stale pid) */
#define EXIT_NO_MATCH    4 /* no queue, job or recipient matches what was asked for */
#define EXIT_DENIED      5 /* not allowed: the control socket and signals need root */

#define DEFAULT_CONFIG      "/etc/pmta/config"
#define CONTROL_SOCKET_NAME "control"

/* Command-line options; each OPT_ bit says the option was given. */
enum option_bit {
    OPT_MODE = 1u << 0,
    OPT_PAUSED = 1u << 1,
    OPT_MAXITEMS = 1u << 2,
    OPT_SORT = 1u << 3,
    OPT_MODE_EVENTS = 1u << 4,
    OPT_DSN = 1u << 5,
    OPT_QUEUE = 1u << 6,
    OPT_JOB = 1u << 7,
    OPT_RCPT = 1u << 8,
    OPT_ORIG = 1u << 9,
    OPT_OLDER_THAN = 1u << 10,
    OPT_REENABLE_AFTER = 1u << 11,
    OPT_CONNECT = 1u << 12,
    OPT_LOG_DATA = 1u << 13,
    OPT_LAST = OPT_LOG_DATA,
};

#define MAX_WORDS 8

struct options {
    const char *config_path;  /* -c, --config */
    const char *socket_path;  /* --socket */
    bool json;                /* --json */
    bool help;                /* -h, --help */
    bool version;             /* --version */
    unsigned given;           /* enum option_bit: command options present */
    const char *mode;         /* --mode=normal|backoff */
    bool paused;              /* --paused=yes|no */
    long long maxitems;       /* --maxitems=N */
    const char *sort;         /* --sort=name|rcpt */
    const char *queue;        /* --queue=PATTERN (PowerMTA's spelling) */
    const char *job;          /* --jobId=ID */
    const char *rcpt;         /* --rcpt=ADDRESS (shell wildcards) */
    const char *orig;         /* --orig=ADDRESS (shell wildcards) */
    long long older_than;     /* --older-than=TIME (seconds) */
    long long reenable_after; /* --reenable-after=TIME (seconds) */
    const char *words[MAX_WORDS];
    int nwords;
};

enum pattern_use { PATTERN_NONE, PATTERN_OPTIONAL, PATTERN_REQUIRED };

/* add_args_fn - put the command's arguments into REQUEST (which holds "cmd") */
typedef void (*add_args_fn)(json_t *request, const struct options *o, const char *pattern);
/* matched_fn - did the request match anything? */
typedef bool (*matched_fn)(json_t *response);
/* print_fn - the human form of a successful RESPONSE; the exit status */
typedef int (*print_fn)(const struct options *o, json_t *response);
/* local_fn - a command pmtactl carries out itself (no socket request); the exit status */
typedef int (*local_fn)(const struct options *o, const char *pattern);

struct command {
    const char *verb;   /* first word */
    const char *object; /* second word, or NULL */
    unsigned allowed;   /* enum option_bit */
    unsigned required;  /* enum option_bit */
    enum pattern_use pattern;
    const char *wire_name; /* "cmd" of the request; NULL: not a socket command */
    add_args_fn add_args;  /* NULL: no arguments */
    matched_fn matched;    /* NULL: the command does not select anything */
    print_fn print;
    local_fn local;       /* set for commands that are not socket requests */
    const char *arg_name; /* what the argument is, for messages; NULL: a queue PATTERN */
};

/* --- pmtactl.c -------------------------------------------------------------------- */

/* error_status - the exit status of pmtad's refusal RESPONSE ("no ... matches" is its own) */
int error_status(json_t *response);
/* report_error - {"ok": false, "error": TEXT} as "pmtactl: TEXT"; its exit status */
int report_error(json_t *response);

/* --- pmtactl_args.c ------------------------------------------------------------ */

/* fail - "pmtactl: ..." on stderr; EXIT_FAILED */
int fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* usage_error - the message and the usage text on stderr; EXIT_USAGE */
int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* usage - the --help text on OUT */
void usage(FILE *out);
/* parse_args - options anywhere, words in order, into *O; 0 or EXIT_USAGE (reported) */
int parse_args(int argc, char **argv, struct options *o);

/* --- pmtactl_client.c ------------------------------------------------------------- */

/* print_config_error - cfg_load diagnostics (errors) on stderr; CTX is the config path */
void print_config_error(void *ctx, enum cfg_diag_level level, const char *file, unsigned line,
                        const char *message);
/* load_run_directory - the absolute run-directory of CONFIG_PATH; NULL (reported) */
char *load_run_directory(const char *config_path);
/* control_socket_path - --socket, else RUNDIR/control of the configuration; NULL (reported) */
char *control_socket_path(const struct options *o);
/* control_unreachable - why the last control_connect failed: EXIT_NOT_RUNNING, EXIT_DENIED or 0 */
int control_unreachable(void);
/* control_connect - a socket connected to PATH (SOCKET_TIMEOUT_S on every call), or -1
 * (reported) */
int control_connect(const char *path);
/* control_send - LEN bytes of DATA to FD; 0, or -1 (reported) */
int control_send(int fd, const char *data, size_t len);
/* control_receive_line - the next response line without its newline, in fresh memory; NULL
 * (reported) on errors, a timeout or an over-long line */
char *control_receive_line(int fd, size_t *len);
/* control_exchange - REQUEST on PATH, the raw response line; NULL (reported) */
char *control_exchange(const char *path, json_t *request, size_t *len);
/* control_decode - the response object with a boolean "ok"; NULL (reported) otherwise */
json_t *control_decode(const char *text, size_t len);
/* control_ask_quietly - REQUEST (consumed) to a running pmtad; its response, or NULL when
 * pmtad does not run (nothing said) or failed (reported) */
json_t *control_ask_quietly(const struct options *o, json_t *request);
/* run_signal_command - reload (SIGHUP), rotate log (SIGUSR1), reopen log (SIGUSR2) */
int run_signal_command(const struct options *o, const char *pattern);

/* --- pmtactl_tables.c ------------------------------------------------------------- */

/* printable - TEXT with control bytes as '?', cut to WIDTH ("..."); caller frees */
char *printable(const char *text, size_t width);
/* get_text - string member KEY of OBJ, or "" */
const char *get_text(json_t *obj, const char *key);
/* format_count - integer member KEY of OBJ as text in BUF, "-" when absent */
const char *format_count(json_t *obj, const char *key, char *buf, size_t size);
/* format_duration - S seconds as "1d2h3m4s" */
const char *format_duration(long long s, char *buf, size_t size);
void add_pattern_arg(json_t *req, const struct options *o, const char *pattern);
void add_show_queues_args(json_t *req, const struct options *o, const char *pattern);
void add_show_groups_args(json_t *req, const struct options *o, const char *pattern);
bool changed_anything(json_t *response);
void print_changed(json_t *response, const char *what);
int print_status(const struct options *o, json_t *response);
int print_queues(const struct options *o, json_t *response);
/* print_queue_state - one queue's live state, what holds it back, its mode events */
void print_queue_state(json_t *q);
int print_domains(const struct options *o, json_t *response);
int print_vmtas(const struct options *o, json_t *response);
/* print_cluster - show cluster (pmtactl_cluster.c) */
int print_cluster(const struct options *o, json_t *response);
void add_set_mode_args(json_t *req, const struct options *o, const char *pattern);
int print_set_queue_mode(const struct options *o, json_t *response);
int print_pause_queue(const struct options *o, json_t *response);
int print_resume_queue(const struct options *o, json_t *response);
bool scheduled_anything(json_t *response);
int print_schedule(const struct options *o, json_t *response);

/* --- pmtactl_cmds.c --------------------------------------------------------------- */

/* parse_interval - "1w2d3h4m5s" or plain seconds into *SECONDS; false when malformed */
bool parse_interval(const char *text, long long *seconds);
void add_filter_args(json_t *req, const struct options *o, const char *pattern);
void add_delete_args(json_t *req, const struct options *o, const char *pattern);
void add_source_args(json_t *req, const struct options *o, const char *pattern);
void add_maxitems_arg(json_t *req, const struct options *o, const char *pattern);
void add_top_queues_args(json_t *req, const struct options *o, const char *pattern);
bool listed_anything(json_t *response);
bool deleted_anything(json_t *response);
int print_list(const struct options *o, json_t *response);
int print_jobs(const struct options *o, json_t *response);
void add_job_arg(json_t *req, const struct options *o, const char *job);
int print_pause_job(const struct options *o, json_t *response);
int print_resume_job(const struct options *o, json_t *response);
int print_delete(const struct options *o, json_t *response);
int print_source(const struct options *o, json_t *response);
int print_reset(const struct options *o, json_t *response);
int print_rotate_acct(const struct options *o, json_t *response);
int print_version(const struct options *o, json_t *response);
int run_test_config(const struct options *o, const char *pattern);
int run_show_registration(const struct options *o, const char *pattern);
/* run_show_settings - show settings DOMAIN[/VMTA], from the configuration file */
int run_show_settings(const struct options *o, const char *queue);
/* set warmup-clock INTERVAL: move the warm-up plans' clock ahead (tests) */
void add_clock_args(json_t *req, const struct options *o, const char *interval);
int print_warmup_clock(const struct options *o, json_t *response);

/* --- pmtactl_trace.c ---------------------------------------------------------------- */

/* run_trace - trace [--log-data] DOMAIN[/VMTA]: the next delivery attempt's transcript, live */
int run_trace(const struct options *o, const char *pattern);

/* --- pmtactl_resolve.c -------------------------------------------------------------- */

/* run_resolve - resolve [--connect] DOMAIN[/VMTA]: MX answer, destinations, their greetings */
int run_resolve(const struct options *o, const char *pattern);

#endif
