/*
 * qmgr_acct.h - PowerMTA-compatible accounting files (<acct-file>)
 *
 * One writer per <acct-file PATH> or <acct-file "|command"> block. Each
 * record is one CSV line (RFC 4180, UTF-8, CRLF). A file starts with a
 * header line: "type" and then the union of the columns of every record
 * type the file takes, in the column order below; a record leaves the
 * columns its type does not have empty.
 *
 * Column order (stable; header_X columns after the standard ones, in the
 * order record-fields names them; userString last):
 *   type timeLogged timeQueued orig rcpt orcpt dsnAction dsnStatus dsnDiag
 *   dsnMta bounceCat srcType srcMta dlvType dlvSourceIp dlvDestinationIp
 *   dlvEsmtpAvailable dlvSize vmta jobId envId queue vmtaPool
 *   totalSecondsQueued timeFirstAttempt dlvTlsProtocol dlvTlsCipher
 *   rcvSourceIp rcvDestinationIp rcvSmtpUser dsnReportingMta format
 *   repSourceIp feedbackType userAgent reportingMta reportedDomain
 *   header_X... userString
 * The first 22 are the order of PowerMTA's sample d record; readers should
 * go by the header line (PowerMTA's own order depends on record-fields).
 *
 * Fields of each type ("*" in record-fields):
 *   d, b, t  timeLogged timeQueued orig rcpt orcpt dsnAction dsnStatus dsnDiag
 *            dsnMta bounceCat srcType srcMta dlvType dlvSourceIp
 *            dlvDestinationIp dlvEsmtpAvailable dlvSize vmta jobId envId queue
 *            vmtaPool totalSecondsQueued timeFirstAttempt dlvTlsProtocol
 *            dlvTlsCipher rcvSmtpUser header_X userString
 *   tq       timeLogged dsnStatus dsnDiag dsnMta dlvType dlvSourceIp
 *            dlvDestinationIp vmta queue userString
 *   r        timeLogged orig rcpt orcpt srcType srcMta rcvSourceIp
 *            rcvDestinationIp vmta jobId envId vmtaPool rcvSmtpUser header_X
 *            userString
 *   rb, rs   timeLogged orig rcpt orcpt dsnAction dsnStatus dsnDiag dsnMta
 *            bounceCat srcType srcMta vmta jobId envId dsnReportingMta format
 *            userString (orig: the address the report came to; vmta and
 *            jobId recovered from the returned original's headers)
 *   f        timeLogged orig rcpt srcMta dlvSourceIp vmta jobId envId format
 *            repSourceIp feedbackType userAgent reportingMta reportedDomain
 *            userString
 * `records` picks the types (default d,b; long names delivery, bounce,
 * transient, transient-queue, receipt, feedback-loop, remote-bounce,
 * remote-status accepted). `record-fields TYPE LIST`
 * (LIST: "*", names, "!name" removes, "header_X" adds header X of the
 * message; d,b,t,r,f,rb,rs: for the reports, the returned original's) chooses the fields of TYPE;
 * one that only removes starts from "*". Unknown names are warned about and ignored.
 *
 * Values: timestamps "YYYY-MM-DD HH:MM:SS+0000" (UTC) with iso-times yes
 * (default), else Unix seconds. totalSecondsQueued = timeLogged - timeQueued.
 *
 * Rotation (needs move-to; PowerMTA does not move files without it): when
 * the file passes max-size, or at each move-interval boundary aligned to UTC
 * wall-clock time (1d: midnight, 1h: the full hour), the file is renamed to
 * MOVE-TO/NAME-YYYY-MM-DD-HHMM.EXT (rotation time, UTC; "-N" is appended on
 * a name clash) and a new file with a header line is started. Rotated files
 * in move-to older than delete-after (by mtime) are removed after each
 * rotation and at open. At open, an existing file from an earlier interval,
 * or whose header line differs from the current columns, is rotated first
 * (into its own directory when move-to is unset, so columns never mix).
 * qmgr_acct_rotate() rotates now (into the own directory without move-to).
 *
 * Buffering: records are buffered in memory and written when 64 KB are
 * pending, at the first write or tick one second after the last flush, by
 * qmgr_acct_flush() and on close. qmgr must call qmgr_acct_tick() about
 * once a second (a libuv timer) so data never waits longer than that and
 * interval rotation happens on time. With `sync yes` each flush is fsync'd.
 *
 * Pipes: <acct-file "|/path/prog arg1 arg2"> starts the program (the words
 * after '|', split on blanks, no shell, looked up in PATH) with its stdin a
 * pipe and its stdout/stderr /dev/null. It gets the header line first and
 * then the records, buffered and flushed exactly as for a file; it has no
 * rotation (move-interval, max-size, move-to, delete-after are ignored).
 * Writes never block: what the pipe does not take stays pending (bounded by
 * the same 16 MB as a file, then dropped loudly). If the program exits, a
 * write fails, or it accepts nothing for write-timeout (1m), the pipe is
 * closed, the program SIGTERM'd and reaped, one warning logged, records
 * for it dropped and counted, and after retry-interval (5m) the program is
 * started again (with a new header line) and the count logged.
 * qmgr_acct_close() closes the write end so the program sees EOF and reaps it,
 * SIGTERM/SIGKILL'ing it if it has not exited after about 100 ms. The process
 * must not die of SIGPIPE: qmgr's worker ignores it, and the first pipe
 * started ignores it if it is still at its default.
 *
 * Not done: queue-filter, map-header-to-field, privacy-policy,
 * count-moved-records.
 *
 * SECURITY: dsnDiag, dsnMta, addresses, header values and ids are peer
 * controlled. Every value has CR, LF, NUL and other control bytes replaced by
 * spaces (one record is always one line, for the line-oriented tools people
 * run on these files), invalid UTF-8 replaced by '?', is bounded to
 * QMGR_ACCT_VALUE_MAX bytes, and is quoted per RFC 4180 when it holds a comma
 * or a double quote (quotes doubled). No value can add a column or a record.
 */
#ifndef PMTA_QMGR_ACCT_H
#define PMTA_QMGR_ACCT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>
#include <sys/types.h>

struct cfg;
struct qmgr_acct;

enum qmgr_acct_type {
    QMGR_ACCT_D,  /* delivered */
    QMGR_ACCT_B,  /* bounced (including expiry) */
    QMGR_ACCT_T,  /* transient failure of one recipient */
    QMGR_ACCT_TQ, /* transient queue-level failure */
    QMGR_ACCT_R,  /* received (one per accepted recipient) */
    QMGR_ACCT_F,  /* feedback-loop report (ARF) from a <feedback-loop-processor> */
    QMGR_ACCT_RB, /* remote bounce (a DSN, Action failed) from a <bounce-processor> */
    QMGR_ACCT_RS, /* remote status (a DSN, delivered/relayed/delayed/expanded) */
    QMGR_ACCT_NTYPES
};

#define QMGR_ACCT_VALUE_MAX 2048 /* bytes of one value written (longer ones are cut) */

/*
 * One record. Strings may be NULL (written empty). Times are Unix seconds;
 * time_logged 0 means "now", time_queued 0 leaves timeQueued and
 * totalSecondsQueued empty. HEADERS is the message's raw header section
 * (CRLF or LF, folded lines allowed) for header_X fields; NULL: none.
 */
struct qmgr_acct_record {
    enum qmgr_acct_type type;
    time_t time_logged;
    time_t time_queued;
    time_t time_first_attempt; /* 0: empty */
    const char *orig;          /* MAIL FROM */
    const char *rcpt;
    const char *orcpt;
    const char *dsn_action; /* relayed / delivered / failed / delayed */
    const char *dsn_status; /* "2.0.0 (success)" */
    const char *dsn_diag;   /* "smtp;250 DATA ok" */
    const char *dsn_mta;    /* "mx.host (1.2.3.4)" */
    const char *bounce_cat;
    const char *src_type; /* smtp | api */
    const char *src_mta;  /* "helo (ip)" */
    const char *rcv_source_ip;
    const char *rcv_destination_ip;
    const char *dlv_type; /* smtp */
    const char *dlv_source_ip;
    const char *dlv_destination_ip;
    const char *dlv_esmtp_available; /* "ENHANCEDSTATUSCODES,8BITMIME,..." */
    int64_t dlv_size;                /* < 0: empty */
    const char *vmta;
    const char *job_id;
    const char *env_id;
    const char *queue; /* "domain/vmta" */
    const char *vmta_pool;
    const char *dlv_tls_protocol;
    const char *dlv_tls_cipher;
    const char *rcv_smtp_user;
    /* reports received (f, rb, rs) */
    const char *dsn_reporting_mta; /* rb, rs: the DSN's Reporting-MTA */
    const char *format;            /* rb, rs: "dsn"; f: "arf" */
    const char *rep_source_ip;     /* f: the address the report came from */
    const char *feedback_type;     /* f: Feedback-Type (abuse, fraud, ...) */
    const char *user_agent;        /* f: User-Agent of the report */
    const char *reporting_mta;     /* f: Reporting-MTA */
    const char *reported_domain;   /* f: Reported-Domain */
    const char *headers;
    size_t headers_len;
};

/* Options for tests and tools; NULL means the defaults. */
struct qmgr_acct_opts {
    time_t (*clock)(void *ctx); /* NULL: time() */
    void *clock_ctx;
    const char *backlog_dir; /* where <acct-webhook> backlogs live (qmgr: the spool); NULL "." */
};

/*
 * qmgr_acct_open - open a writer for every <acct-file> of C (none is fine:
 * writes then go nowhere). Returns 0 and *OUT. A file that cannot be opened
 * (or whose move-to is not a directory) is logged and kept closed; records for
 * it are dropped and qmgr_acct_tick() retries it every minute, so a bad path
 * never stops qmgr. A pipe program that cannot be started is retried after
 * retry-interval in the same way. The caller keeps C
 * alive while the writer lives (column names are read from it only at open).
 */
int qmgr_acct_open(struct qmgr_acct **out, const struct cfg *c, const struct qmgr_acct_opts *opts);
/* qmgr_acct_close - flush, close, stop and reap pipe programs, free (NULL is fine) */
void qmgr_acct_close(struct qmgr_acct *acct);

/* qmgr_acct_write - append R to every file that takes its type; 0 or the first -errno */
int qmgr_acct_write(struct qmgr_acct *acct, const struct qmgr_acct_record *r);
/* qmgr_acct_takes - does any output take records of TYPE? (skip building ones nobody wants) */
bool qmgr_acct_takes(const struct qmgr_acct *acct, enum qmgr_acct_type type);
/* qmgr_acct_wants_headers - does any output of TYPE have header_X columns? (then pass HEADERS) */
bool qmgr_acct_wants_headers(const struct qmgr_acct *acct, enum qmgr_acct_type type);
/* qmgr_acct_flush - write every buffered record now (fsync with `sync yes`); 0 or -errno */
int qmgr_acct_flush(struct qmgr_acct *acct);
/*
 * qmgr_acct_tick - call about once a second: flushes, does interval rotation
 * when due, reaps pipe programs, notices failed ones and restarts them
 */
int qmgr_acct_tick(struct qmgr_acct *acct);
/* qmgr_acct_rotate - rotate every file (not pipes) now; 0 or -errno */
int qmgr_acct_rotate(struct qmgr_acct *acct);

/*
 * <acct-webhook URL> (ext): the writer appends the records as JSON lines to
 * the webhook's backlog file, BACKLOG_DIR/acct-webhook-HASH.jsonl (HASH of
 * the URL, so a restart finds it), buffered and flushed as a file's records
 * are; a record that would take the backlog past backlog-max-size is dropped
 * (counted, a warning a minute). qmgr's sender (qmgr_webhook.c) reads the
 * backlog, POSTs it in batches, and empties it through
 * qmgr_acct_webhook_truncate once every written byte was acknowledged.
 */
struct qmgr_acct_webhook_info {
    const char *url, *backlog;
    int64_t batch_records;    /* max-batch-records */
    int64_t retry_interval_s; /* retry-interval: the longest wait between attempts */
    int64_t timeout_s;        /* write-timeout: one request */
    int64_t written;          /* bytes of the backlog on disk now */
    uint64_t dropped;         /* records dropped since the open: the backlog was full */
};
/* qmgr_acct_nwebhooks - how many <acct-webhook> blocks there are */
size_t qmgr_acct_nwebhooks(const struct qmgr_acct *acct);
/* qmgr_acct_webhook - what webhook I is (strings valid while ACCT is open); 0 or -ENOENT */
int qmgr_acct_webhook(const struct qmgr_acct *acct, size_t i, struct qmgr_acct_webhook_info *out);
/* qmgr_acct_webhook_truncate - the first ACKED bytes of webhook I's backlog were acknowledged and
 * nothing else is in it or pending: empty it. 0, -EBUSY (more came), -ENOENT or -errno */
int qmgr_acct_webhook_truncate(struct qmgr_acct *acct, size_t i, int64_t acked);

/* qmgr_acct_nfiles - how many files are open (pipes are not counted) */
size_t qmgr_acct_nfiles(const struct qmgr_acct *acct);
/* qmgr_acct_path - path of file I (for logs and tests) */
const char *qmgr_acct_path(const struct qmgr_acct *acct, size_t i);
/* qmgr_acct_npipes - how many <acct-file |command> pipes there are, running or not */
size_t qmgr_acct_npipes(const struct qmgr_acct *acct);
/* qmgr_acct_pipe_name - "|command args" of pipe I (for logs and tests) */
const char *qmgr_acct_pipe_name(const struct qmgr_acct *acct, size_t i);
/* qmgr_acct_pipe_pid - the running program of pipe I, or 0 while it is down */
pid_t qmgr_acct_pipe_pid(const struct qmgr_acct *acct, size_t i);
/* qmgr_acct_pipe_dropped - records for pipe I dropped since its program last went down */
uint64_t qmgr_acct_pipe_dropped(const struct qmgr_acct *acct, size_t i);

#endif
