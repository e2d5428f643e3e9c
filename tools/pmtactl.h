/*
 * pmtactl.h - what pmtactl's files share: the command line, the command
 *             table's types, exit statuses and the printing helpers
 *
 * pmtactl.c parses the command line, talks to the control socket and prints
 * the queue tables; pmtactl_cmds.c has the commands about recipients, jobs,
 * sources, counters, files and the configuration (list, show jobs, delete's
 * filters, disable/enable source, reset counters, rotate acct, test config,
 * show version); pmtactl_resolve.c has `resolve`.
 */
#ifndef PMTA_PMTACTL_H
#define PMTA_PMTACTL_H

#include <stdbool.h>
#include <stddef.h>

#include <jansson.h>

#include "cfg.h"

/* Exit statuses (doc/pmtactl.8, EXIT STATUS) */
#define EXIT_FAILED      1 /* pmtad refused the request or answered nonsense; I/O errors */
#define EXIT_USAGE       2 /* a bad command, option or argument */
#define EXIT_NOT_RUNNING 3 /* pmtad is not running (no socket, nobody listening, stale pid) */
#define EXIT_NO_MATCH    4 /* no queue, job or recipient matches what was asked for */
#define EXIT_DENIED      5 /* not allowed: the control socket and signals need root */

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
    OPT_LAST = OPT_CONNECT,
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
    local_fn local; /* set for commands that are not socket requests */
};

/* --- pmtactl.c ---------------------------------------------------------------- */

/* fail - "pmtactl: ..." on stderr; EXIT_FAILED */
int fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* usage_error - the message and the usage text on stderr; EXIT_USAGE */
int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* printable - TEXT with control bytes as '?', cut to WIDTH ("..."); caller frees */
char *printable(const char *text, size_t width);
/* get_text - string member KEY of OBJ, or "" */
const char *get_text(json_t *obj, const char *key);
/* format_count - integer member KEY of OBJ as text in BUF, "-" when absent */
const char *format_count(json_t *obj, const char *key, char *buf, size_t size);
/* format_duration - S seconds as "1d2h3m4s" */
const char *format_duration(long long s, char *buf, size_t size);
/* print_config_error - cfg_load diagnostics (errors) on stderr; CTX is the config path */
void print_config_error(void *ctx, enum cfg_diag_level level, const char *file, unsigned line,
                        const char *message);
/* load_run_directory - the absolute run-directory of CONFIG_PATH; NULL (reported) */
char *load_run_directory(const char *config_path);
void add_pattern_arg(json_t *req, const struct options *o, const char *pattern);
void add_show_queues_args(json_t *req, const struct options *o, const char *pattern);
void add_show_groups_args(json_t *req, const struct options *o, const char *pattern);
bool changed_anything(json_t *response);
void print_changed(json_t *response, const char *what);
int print_status(const struct options *o, json_t *response);
int print_queues(const struct options *o, json_t *response);
int print_domains(const struct options *o, json_t *response);

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
int print_delete(const struct options *o, json_t *response);
int print_source(const struct options *o, json_t *response);
int print_reset(const struct options *o, json_t *response);
int print_rotate_acct(const struct options *o, json_t *response);
int print_version(const struct options *o, json_t *response);
int run_test_config(const struct options *o, const char *pattern);
int run_show_registration(const struct options *o, const char *pattern);

/* --- pmtactl_resolve.c -------------------------------------------------------------- */

/* run_resolve - resolve [--connect] DOMAIN[/VMTA]: MX answer, destinations, their greetings */
int run_resolve(const struct options *o, const char *pattern);

#endif
