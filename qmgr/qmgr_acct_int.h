/*
 * qmgr_acct_int.h - what the accounting writer's files share (not an API)
 *
 * The accounting writer (qmgr_acct.h is its API) is five files, one concern
 * each: qmgr_acct_format.c (the field table, an <acct-file> block's
 * settings, and turning a record into one CSV line), qmgr_acct_json.c (one
 * JSON line instead), qmgr_acct_file.c
 * (files on disk: open, flush, rotation, delete-after), qmgr_acct_pipe.c
 * (<acct-file |command>: the program, its pipe, restarts) and qmgr_acct.c
 * (the API over all outputs). This header holds the state they share: one
 * struct acct_file per output.
 */
#ifndef PMTA_QMGR_ACCT_INT_H
#define PMTA_QMGR_ACCT_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>
#include <sys/types.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "buf.h"
#include "cfg.h"
#include "qmgr_acct.h"


#define FLUSH_BYTES    (64u * 1024)        /* write out once this much is pending */
#define FLUSH_SECONDS  1                   /* ... or once the oldest pending byte is this old */
#define PENDING_MAX    (16u * 1024 * 1024) /* drop (loudly) rather than grow without end */
#define MAX_HEADERS    32                  /* header_X columns per file */
#define NAME_CLASH_MAX 1000                /* -1 .. -999 suffixes tried on rotation */
#define RETRY_SECONDS  60                  /* after a failed rotation or reopen */
#define CLOSE_GRACE_MS 100                 /* at close: time for a pipe program to drain and exit */
#define CLOSE_TERM_MS  50                  /* ... and to exit after SIGTERM, before SIGKILL */

/* --- the field table (qmgr_acct_format.c) ----------------------------------------------- */

enum field_kind {
    FK_STR, /* const char * member of the record */
    FK_TIME_LOGGED,
    FK_TIME_QUEUED,
    FK_TIME_FIRST_ATTEMPT,
    FK_SIZE,
    FK_TOTAL_SECONDS,
    FK_USER_STRING /* from the acct-file's user-string directive */
};

#define TB(t) (1u << (t))
#define T_DBT (TB(QMGR_ACCT_D) | TB(QMGR_ACCT_B) | TB(QMGR_ACCT_T))
#define T_TQ  TB(QMGR_ACCT_TQ)
#define T_R   TB(QMGR_ACCT_R)
#define T_F   TB(QMGR_ACCT_F)
#define T_RBS (TB(QMGR_ACCT_RB) | TB(QMGR_ACCT_RS))
#define T_REP (T_F | T_RBS) /* reports received */
#define T_ALL (T_DBT | T_TQ | T_R | T_REP)
#define T_MSG (T_DBT | T_R | T_REP) /* types that concern a message (header_X) */

struct field_def {
    const char *name;
    enum field_kind kind;
    size_t off;     /* offsetof the member for FK_STR */
    unsigned types; /* types whose "*" includes it */
};

#define ACCT_NFIELDS           37
#define ACCT_USER_STRING_FIELD (ACCT_NFIELDS - 1)
/* Table order is the column order (see qmgr_acct.h); userString stays last. */
extern const struct field_def acct_fields[ACCT_NFIELDS];
extern const char *const acct_type_names[QMGR_ACCT_NTYPES];
extern const char *const acct_type_long_names[QMGR_ACCT_NTYPES];

/* --- per-file state ---------------------------------------------------------------------- */

/* One column after "type": a standard field, or header HEADER of the message. */
struct column {
    int field;  /* index into acct_fields[], or -1 for a header */
    int header; /* index into acct_file.headers */
};

struct acct_file {
    char *path;
    char *own_dir; /* directory of PATH */
    char *stem;    /* base name without the extension */
    char *ext;     /* ".csv" or "" */
    char *move_to; /* NULL: no automatic rotation */
    char *user_string;
    int64_t max_size;      /* bytes; < 0 unlimited */
    int64_t move_interval; /* seconds; <= 0 never */
    int64_t delete_after;  /* seconds; < 0 never */
    bool iso_times, sync, world_readable;

    unsigned types; /* TB() of the types this file takes */
    bool field_on[QMGR_ACCT_NTYPES][ACCT_NFIELDS];
    char *headers[MAX_HEADERS]; /* header names of header_X columns */
    size_t nheaders;
    bool header_on[QMGR_ACCT_NTYPES][MAX_HEADERS];
    struct column *columns;
    size_t ncolumns;
    char *header_line; /* "type,...\r\n" */

    int fd;
    int64_t size; /* bytes on disk + pending */
    struct buf pending;
    time_t pending_since;   /* when the oldest pending byte was added */
    time_t next_move;       /* next interval boundary; 0 none */
    time_t retry_rotate_at; /* after a failed move: no new attempt before this */
    pcre2_code *rotated_re; /* NAME-YYYY-MM-DD-HHMM[-N].EXT */

    /* <acct-file |command>: fd is the pipe's write end, -1 while the program is down */
    bool is_pipe;
    char **argv;            /* the words after '|', NULL-terminated */
    pid_t pid;              /* the program until it is reaped; 0 none */
    int64_t retry_interval; /* seconds from a failure to the next start */
    int64_t write_timeout;  /* seconds the program may accept nothing */
    time_t blocked_since;   /* when the pipe began refusing data; 0 while it takes it */
    time_t restart_at;      /* while down: when to start the program again */
    size_t header_left;     /* bytes of the header line still at the front of pending */
    bool mid_line;          /* the program got part of a line (drops keep its rest) */
    uint64_t dropped;       /* records that never reached a program since it went down */

    bool json; /* format json (qmgr_acct_json.c): no header line, one object per line */
    /* <acct-webhook URL>: PATH is its backlog file (JSON lines) qmgr's sender reads */
    bool is_webhook;
    char *url;
    int64_t backlog_max;     /* backlog-max-size: bytes the backlog may hold */
    int64_t batch_records;   /* max-batch-records: records per POST */
    uint64_t dropped_full;   /* records dropped because the backlog was full */
    uint64_t dropped_warned; /* ... of them already logged */
    time_t full_warned_at;
};

struct qmgr_acct {
    struct acct_file *files;
    size_t nfiles;
    time_t (*clock)(void *ctx);
    void *clock_ctx;
};

/* --- qmgr_acct_format.c ---------------------------------------------------------------- */
/* acct_load_file_config - F's settings from <acct-file> scope S of C */
void acct_load_file_config(struct acct_file *f, const struct cfg *c, uint32_t s);
/* acct_format_record - R as one CSV line of F's columns, appended to B */
void acct_format_record(const struct acct_file *f, struct buf *b, const struct qmgr_acct_record *r,
                        time_t now);
/* acct_field_text - the text of standard field FIELD of R (cleaned, never quoted), appended to B */
void acct_field_text(const struct acct_file *f, struct buf *b, int field,
                     const struct qmgr_acct_record *r, time_t logged);
/* acct_header_text - the value of F's header column HEADER in R's headers (CSV: quoted as
 * needed), appended to B; nothing when R has no such header */
void acct_header_text(const struct acct_file *f, struct buf *b, int header,
                      const struct qmgr_acct_record *r, bool csv);

/* --- qmgr_acct_json.c ------------------------------------------------------------------ */
/* acct_format_json - R as one JSON object (and "\n") of F's columns, appended to B */
void acct_format_json(const struct acct_file *f, struct buf *b, const struct qmgr_acct_record *r,
                      time_t logged);

/* --- qmgr_acct_file.c ------------------------------------------------------------------ */
int acct_flush_file(struct acct_file *f);
int acct_open_file(struct acct_file *f, time_t now);
int acct_rotate_file(struct acct_file *f, const char *dir, time_t now);
int acct_maybe_rotate(struct acct_file *f, time_t now);
/* acct_tick_file - the once-a-second work for a file; 0 or -errno */
int acct_tick_file(struct acct_file *f, time_t now);

/* --- qmgr_acct_pipe.c ------------------------------------------------------------------ */
int acct_start_pipe(struct acct_file *f, time_t now);
void acct_flush_pipe(struct acct_file *f, time_t now);
void acct_tick_pipe(struct acct_file *f, time_t now);
void acct_stop_pipe(struct acct_file *f, time_t now);

#endif
