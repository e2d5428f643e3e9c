/*
 * smtpout_local.h - deliveries that are not SMTP: `type pipe`, `type file`,
 *                   `type http-delivery` of a <domain>
 *
 * NAME
 *   smtpout_local - a delivery channel that stands where an SMTP session
 *   would, for one connection qmgr opened
 *
 * DESCRIPTION
 *   qmgr treats every queue alike: it opens "connections" (MP_CONN_OPEN)
 *   within max-smtp-out, max-connect-rate and total-max-smtp-out, feeds them
 *   transactions within max-msg-rate and max-rcpt-per-transaction, and closes
 *   them after max-msg-per-connection or connection-idle-timeout. For a pipe,
 *   file or http-delivery queue smtp-out answers such a connection with a
 *   local channel instead of an SMTP session, so every one of those limits
 *   means for these types what it means for SMTP: max-smtp-out is the number
 *   of programs running (or files being written, HTTP requests in flight)
 *   at once for the queue. A transaction's recipients are delivered one
 *   after the other (each gets the message once, with its own macros), and
 *   each gets exactly one result:
 *
 *   pipe  `command` split into words (double quotes and backslashes as in
 *         the configuration; no shell), the macros $from $to $user $domain
 *         $envid $bodytype $isodate $timet $ctime $rfctime substituted in
 *         each word, run as smtp-out's unprivileged user with the message on
 *         its standard input and `command-timeout` (ext, 5m) to finish. Exit
 *         status as sendmail's sysexits (Postfix's pipe(8) table): 0
 *         delivered; 75 EX_TEMPFAIL, 71 EX_OSERR, any other status, a signal
 *         or the timeout deferred; 64-70, 72-74, 76-78 bounced with their
 *         RFC 3463 status (67 EX_NOUSER 5.1.1, 68 EX_NOHOST 5.1.2, ...). The
 *         first line the program printed (stdout or stderr) is the reply text.
 *   file  `file-destination` (macros as for pipe) and `file-format`:
 *         newfile-plain (one file per recipient in that directory: the
 *         message), newfile-pickup (the same with x-sender: and x-receiver:
 *         first), append-mbox (appended to that file in mbox format, "From "
 *         line and >From quoting, under flock). New files are written as
 *         NAME.tmp, fsynced, renamed to NAME.msg and the directory fsynced;
 *         an mbox is fsynced after the append; only then is the recipient
 *         reported delivered. Missing directories are created (0750). The
 *         write runs on the libuv thread pool so a slow disk stalls no
 *         SMTP connection of this process. Any error defers (4.3.0).
 *   http-delivery  an HTTP POST of PowerMTA's JSON webhook ({"msg_from",
 *         "rcpt_to", "content": {"email_rfc822", "email_rfc822_is_base64",
 *         "headers"}}) to `http-delivery-url` with libcurl on the worker's
 *         libuv loop: 2xx delivered; 408, 425, 429, every 5xx, 401, 403, 404,
 *         405 and 407 (the endpoint or its configuration is in trouble, not
 *         the message) and every transport error deferred; any other 4xx
 *         bounced (5.6.0: the endpoint refuses this message). qmgr retries
 *         deferred recipients by retry-after until bounce-after. https
 *         certificates are verified (OpenSSL's default CA store).
 *
 * OWNERSHIP
 *   The channel borrows the configuration (pinned by its connection) and
 *   the message until its `done`. It owns its child processes, pipes,
 *   thread-pool work and curl handles, and every one is finished or reaped
 *   before smtpout_local_free() returns or `done` runs.
 *
 * SECURITY
 *   Addresses and ENVID are peer controlled: they are substituted into argv
 *   words (never a shell), into file names only through $user and $domain,
 *   which are reduced to a safe set of characters first ("/" and ".." can
 *   never appear), and into JSON through jansson. Program output and HTTP
 *   response text reach qmgr bounded and sanitized.
 */
#ifndef PMTA_SMTPOUT_LOCAL_H
#define PMTA_SMTPOUT_LOCAL_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "cfg.h"
#include "smtpout_proto.h"

struct smtpout_local;

struct smtpout_local_callbacks {
    void (*rcpt_result)(void *arg, size_t index, const struct smtpout_reply *r);
    /* every recipient of the transaction has its result */
    void (*done)(void *arg);
};

/* The message of one transaction and what the macros need of it. */
struct smtpout_local_msg {
    const struct smtpout_message *msg; /* sender, recipients, data, envid */
    uint64_t msgid;
    const uint32_t *rcpt_index; /* recipients' indexes in the message (file names) */
};

/*
 * smtpout_local_new - a channel of TYPE (CFG_TYPE_PIPE, _FILE or _HTTP) with
 * the queue settings SET of configuration C; NULL with the reason in R when
 * the settings cannot work (no command, no destination, a bad URL).
 */
struct smtpout_local *smtpout_local_new(uv_loop_t *loop, int type, const struct cfg *c,
                                        const struct cfg_resolved *set, const char *log_tag,
                                        struct smtpout_reply *r);
/* smtpout_local_peer - "host" of an http-delivery URL, "" for pipe and file (for MP_CONN_UP) */
const char *smtpout_local_peer(const struct smtpout_local *l);
/* smtpout_local_send - deliver M to each recipient; -EBUSY while one runs */
int smtpout_local_send(struct smtpout_local *l, const struct smtpout_local_msg *m,
                       const struct smtpout_local_callbacks *cb, void *arg);
/* smtpout_local_busy - is a transaction running? */
int smtpout_local_busy(const struct smtpout_local *l);
/*
 * smtpout_local_abort - stop the running transaction (program killed,
 * request cancelled): its recipients without a result get a temporary one
 * and `done` runs; a file write already on the thread pool finishes first.
 */
void smtpout_local_abort(struct smtpout_local *l);
/* smtpout_local_free - free an idle channel (after `done`, or before any send) */
void smtpout_local_free(struct smtpout_local *l);

/* --- the pieces (smtpout_local.c dispatches to them) ---------------------------------- */

/* smtpout_local_expand - WORD with the macros of recipient I of M replaced; caller frees */
char *smtpout_local_expand(const char *word, const struct smtpout_message *m, size_t i);
/* smtpout_local_sysexit - reply R for a pipe program's exit STATUS (sysexits.h) */
void smtpout_local_sysexit(struct smtpout_reply *r, int status, const char *output);

#endif
