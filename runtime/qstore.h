/*
 * qstore.h - the durable queue store (LMDB): schema, record formats, API
 *
 * This is THE document of the on-disk queue. Every process on the mail path
 * uses it: cleanup writes new messages, qmgr rebuilds its schedule from it and
 * records outcomes, smtp-out reads message content. Nothing else touches the
 * LMDB environment.
 *
 * SECURITY: records hold peer-controlled text (addresses, HELO names, reply
 * text). They are binary, versioned and length-prefixed, never "field: value"
 * text, so no byte a peer sends can forge a field (the CVE-2020-8794 lesson).
 * Every decoder checks every length against the record's end and returns
 * -EPROTO on any inconsistency; it never reads past the value LMDB gave it.
 *
 * ENVIRONMENT
 *   One LMDB environment, a directory (normally SPOOL/queue), opened with
 *   MDB_NOTLS so that a write transaction can run in a libuv thread-pool thread
 *   while the loop thread runs read transactions. The map size comes from the
 *   config (`queue-map-size`). Open it after fork(), in the process that uses
 *   it (LMDB rule); qstore checks the pid and panics on misuse. Stale reader
 *   slots left by killed processes are cleared at open (mdb_reader_check).
 *
 * NAMED DATABASES (all integers big-endian, so keys sort numerically)
 *   meta  "schema"      -> u32 schema version (QSTORE_SCHEMA_VERSION)
 *         "next-msgid"  -> u64 next message id to hand out (starts at 1)
 *         "mark:NAME"   -> u64 a reader's progress mark (qstore_wtxn_set_mark;
 *                          qmgr's "received": r records written below it)
 *   msg   msgid u64                 -> envelope record      (one per message)
 *   body  msgid u64 | chunk u32     -> raw content bytes, <= QSTORE_CHUNK_MAX
 *                                      each; chunks 0..nchunks-1, no gaps
 *   rcpt  msgid u64 | index u32     -> recipient record    (one per pending
 *                                      recipient; index = position at
 *                                      submission, 0..nrcpt-1)
 *   warmup key text (1..QSTORE_WARMUP_KEY_MAX bytes, no NUL)
 *                                   -> warm-up state record (qmgr's daily
 *                                      caps: one per source address and
 *                                      destination of a warm-up plan, and
 *                                      per cold virtual MTA; the key is
 *                                      qmgr's, see qmgr_warmup.c)
 *   A message is stored once, with N recipient records. The warmup database
 *   came later without a schema change: qstore_open creates it in an older
 *   spool, and a read-only open of a spool without it sees no state.
 *
 * MESSAGE IDS
 *   Allocated inside the write transaction that stores the message, from
 *   meta/next-msgid. Their text form, the "queue id" that replies, logs and
 *   Received headers show, is QSTORE_QID_LEN upper-case hex digits,
 *   zero-padded (qstore_qid_format). Because the id is known only inside the
 *   transaction, a new message may carry a patch point
 *   (qstore_newmsg_patch_qid): the put writes the id's text over those
 *   QSTORE_QID_LEN body bytes as it stores the body (cleanup's Received). LMDB serialises writers
 * across processes, so several cleanup processes can share the environment and ids stay unique and
 *   monotonic. Ids are never reused (msg/body/rcpt puts use MDB_APPEND, which
 *   also refuses to overwrite anything if meta were ever rolled back).
 *
 * STRING ENCODING (str)
 *   u16 len, then len bytes, the last of which is NUL and no other is NUL
 *   (so len >= 1; "" is encoded as len 1). Decoded strings therefore point
 *   straight into the record (zero copy) and are valid C strings for as long
 *   as the record's memory is. Limits: QSTORE_STR_MAX bytes of text per field
 *   (QSTORE_ERR_MAX for last_error, which is truncated on write, not refused).
 *
 * ENVELOPE RECORD (msg), version 2 (version 1 records, without local_ip, are still read)
 *   off  0 u8  version (2)
 *        1 u8  flags   QSTORE_F_8BITMIME | QSTORE_F_SMTPUTF8 | QSTORE_F_ADD_VMTA_HEADER;
 *                      other bits -> corrupt (a record with the third bit is
 *                      refused by versions before it)
 *        2 u8  ret     QSTORE_RET_{NONE,FULL,HDRS}
 *        3 u8  delay_notices   delay DSNs sent so far (0 in older records)
 *        4 u32 nrcpt   recipients at submission (records may be fewer later)
 *        8 u64 queued_at   (unix seconds)
 *       16 u64 size        body bytes
 *       24 u32 nchunks     body chunks
 *       28 str sender (no <>; "" = null sender), envid, job_id, vmta (virtual
 *          MTA or pool name, "" = default), source (<source> name), client_ip,
 *          client_helo, auth_user, bounce_sender (return path of our DSNs),
 *          local_ip (where it was received; not in version 1 records)
 *       record length must end exactly after the last string.
 *
 * RECIPIENT RECORD (rcpt), version 1 -- the schedule fields come first so the
 * start-up scan decodes a fixed header plus one string
 *   off  0 u8  version (1)
 *        1 u8  state   QSTORE_RCPT_QUEUED | QSTORE_RCPT_DEFERRED
 *        2 u8  notify  QSTORE_NOTIFY_* bits
 *        3 u8  reserved, 0
 *        4 u32 attempts
 *        8 u64 queued_at       (copy of the envelope's, for bounce-after)
 *       16 u64 first_attempt   (0 = never tried)
 *       24 u64 next_attempt    (0 = as soon as possible)
 *       32 str queue  ("domain/vmta"), address, orcpt (as received, "" if
 *          none), domain (lower case), last_error
 *
 * WARM-UP STATE RECORD (warmup), version 1, exactly 56 bytes
 *   off  0 u8  version (1)
 *        1 u8  reserved, 0
 *        2 u16 reserved, 0
 *        4 u32 step        the plan's current step (1 = its first day)
 *        8 u64 start_day   the day the plan started (days since the epoch, UTC
 *                          and qmgr's clock offset)
 *       16 u64 window      the day (or counting window) the counts belong to
 *       24 u64 sent        recipients sent in that window
 *       32 u64 attempts    delivery outcomes in that window
 *       40 u64 deferrals   of which temporary failures
 *       48 u64 complaints  of which complaint-like bounces (spam/policy)
 *   Written by qmgr alone (qstore_group_put_warmup), read once at its start
 *   (qstore_scan_warmup). A lost update costs at most the last second's counts.
 *
 * STATE MACHINE OF A RECIPIENT (durable states only)
 *
 *     submit ──> QUEUED ──attempt──> DEFERRED ──attempt──┐
 *                  │                    ^  │             │
 *                  │                    └──┼─────────────┘
 *                  └── delivered / bounced / expired / deleted ──> (record
 *                      removed; when the message's last rcpt record goes, its
 *                      msg and body records go in the same transaction)
 *
 *   "In flight" is qmgr memory only: after a crash an in-flight recipient is
 *   QUEUED/DEFERRED again and is tried again (the only duplicate we allow).
 *
 * WHO WRITES WHAT
 *   cleanup  puts msg + all rcpt + all body records of a new message
 *            (qstore_group_submit), allocates the id.
 *   qmgr     deletes rcpt records (delivered/bounced, qstore_group_finish),
 *            rewrites them (deferred, qstore_group_defer); pmtactl delete is a
 *            finish like a bounce. It alone changes recipients.
 *   smtp-out reads only (qstore_read_msg).
 *   qmgr     also writes warm-up state records (qstore_group_put_warmup).
 *
 * DURABILITY AND GROUPING
 *   - A message is written in ONE transaction: after a crash at any moment it
 *     is either entirely present (msg, every rcpt, every body chunk) or absent.
 *   - How an LMDB commit reaches the disk: it writes the transaction's pages,
 *     syncs the data file (fdatasync), and only then writes the meta page
 *     that makes those pages the current state. Stock LMDB writes that meta
 *     page with O_DSYNC: two device flushes per commit. A writer here opens
 *     the environment with MDB_NOMETASYNC: the meta page is written but not
 *     synced, one flush per commit. LMDB keeps two meta pages and recovers to
 *     the newer valid one, so an unsynced meta page can only be lost, never
 *     make the store inconsistent (lmdb.h: "preserves ACI but not D").
 *   - THE DURABILITY POINT. The meta page of commit N is on the disk once
 *     any later fdatasync of the data file has returned: commit N+1's own
 *     data sync (in this or another process), or mdb_env_sync(). Every
 *     commit syncs its data before it writes its meta page, so whatever meta
 *     page the disk holds names pages that were already durable, and page
 *     reuse never overwrites the pages of the last two commits. Hence:
 *       qstore_wtxn_commit()       commit, then mdb_env_sync(): durable on
 *                                  return (two flushes, as stock LMDB);
 *       qstore_wtxn_commit_lazy()  commit only: durable once a later
 *                                  qstore_wtxn_commit*() or qstore_sync() of
 *                                  this store has returned 0.
 *     A process crash cannot undo a lazy commit (the meta page is in the
 *     kernel's page cache); a power cut or kernel crash before the next sync
 *     can, which is why nothing is acknowledged before it.
 *   - A submission's callback reports success only once its transaction is
 *     durable in that sense, with sync on (the default): only then may
 *     cleanup let smtpd send 250. With QSTORE_NOSYNC (`sync-msg-create no`)
 *     nothing is fsynced and a power cut may lose acknowledged mail; a
 *     process crash cannot, because the pages are in the kernel.
 *   - qstore_group batches submissions and outcomes (up to a batch size)
 *     into one write transaction, run on the libuv thread pool, and commits
 *     it lazily: batch N's callbacks run when the commit of batch N+1 has
 *     returned (its data sync carried N's meta page), or, when nothing else
 *     arrived, after an explicit sync. Under load that is one flush per
 *     batch instead of two, at the price of one more batch of latency; a
 *     lone message still costs two flushes. One transaction at a time per
 *     group; what arrives during a commit forms the next batch.
 *   - MDB_MAP_FULL and a full disk (LMDB: a short write, EIO) are -ENOSPC:
 *     the transaction is aborted, nothing committed is harmed, and the
 *     environment stays usable. A batch that fills the map is retried one
 *     operation per transaction, so only the operations that do not fit fail.
 *     cleanup keeps new messages out of a reserve (SPACE below), so that
 *     qmgr can still record deliveries in a full queue.
 *
 * ERRORS: functions return 0 or a negative errno: -ENOSPC (map or disk full),
 * -EPROTO (corrupt record or schema mismatch), -ENOENT (no such message or
 * recipient), -EMSGSIZE (a field over its limit), -EINVAL (bad argument),
 * -EEXIST (id collision: meta is damaged), -EAGAIN (reader table full),
 * -EIO (LMDB reports corruption or another LMDB failure).
 */
#ifndef PMTA_QSTORE_H
#define PMTA_QSTORE_H

#include <stddef.h>
#include <stdint.h>

#include "buf.h"

#define QSTORE_SCHEMA_VERSION 1u
#define QSTORE_ENV_VERSION    2u /* envelope record version written (1 is still read) */
#define QSTORE_RCPT_VERSION   1u /* recipient record version */
#define QSTORE_CHUNK_MAX      (256u * 1024u)
#define QSTORE_STR_MAX        1024u /* text bytes per string field */
#define QSTORE_ERR_MAX        512u  /* text bytes of last_error (truncated) */
#define QSTORE_QID_LEN        20    /* hex digits of a queue id's text form */

/* envelope flags */
#define QSTORE_F_8BITMIME        0x01u
#define QSTORE_F_SMTPUTF8        0x02u
/* add-x-virtual-mta-header: smtp-out adds "X-Virtual-MTA: VMTA" (the one it sends through) */
#define QSTORE_F_ADD_VMTA_HEADER 0x04u
#define QSTORE_F_ALL             (QSTORE_F_8BITMIME | QSTORE_F_SMTPUTF8 | QSTORE_F_ADD_VMTA_HEADER)

/* RET= of MAIL FROM (RFC 3461) */
enum { QSTORE_RET_NONE = 0, QSTORE_RET_FULL = 1, QSTORE_RET_HDRS = 2 };

/* NOTIFY= of RCPT TO (RFC 3461); 0 = not given (default: FAILURE) */
#define QSTORE_NOTIFY_NEVER   0x01u
#define QSTORE_NOTIFY_SUCCESS 0x02u
#define QSTORE_NOTIFY_FAILURE 0x04u
#define QSTORE_NOTIFY_DELAY   0x08u
#define QSTORE_NOTIFY_ALL     0x0fu

enum { QSTORE_RCPT_QUEUED = 0, QSTORE_RCPT_DEFERRED = 1 };

/*
 * The envelope. Strings are never NULL once decoded; on input NULL means "".
 * On decode they point into the record (see the lifetime of the call used).
 */
struct qstore_envelope {
    uint8_t flags;      /* QSTORE_F_* */
    uint8_t ret;        /* QSTORE_RET_* */
    uint32_t nrcpt;     /* filled in on submit */
    uint64_t queued_at; /* unix seconds; 0 on submit = now */
    uint64_t size;      /* filled in on submit */
    uint32_t nchunks;   /* filled in on submit */
    const char *sender;
    const char *envid;
    const char *job_id;
    const char *vmta;
    const char *source;
    const char *client_ip;
    const char *client_helo;
    const char *auth_user;
    const char *bounce_sender;
    const char *local_ip; /* where it was received ("" for version 1 records) */
};

struct qstore_rcpt {
    uint32_t index;        /* position in the message (from the key) */
    uint8_t state;         /* QSTORE_RCPT_* */
    uint8_t notify;        /* QSTORE_NOTIFY_* */
    uint8_t delay_notices; /* delay DSNs sent (notify-of-delay-every) */
    uint32_t attempts;
    uint64_t queued_at;
    uint64_t first_attempt;
    uint64_t next_attempt;
    const char *queue; /* "domain/vmta" */
    const char *address;
    const char *orcpt;
    const char *domain;
    const char *last_error;
};

/* ---- record codecs (pure functions; exposed for tests and tools) ---------- */

/*
 * qstore_envelope_encode - append the v1 record to OUT; 0, -EMSGSIZE, -EINVAL
 * (bad flags/ret, or nchunks not matching size; qstore_newmsg_create fills
 * those in itself).
 */
int qstore_envelope_encode(struct buf *out, const struct qstore_envelope *env);
/*
 * qstore_envelope_decode - parse REC (LEN bytes) into ENV; strings point into
 * REC. 0 or -EPROTO. Never reads outside REC.
 */
int qstore_envelope_decode(const void *rec, size_t len, struct qstore_envelope *env);
/* qstore_rcpt_encode - append the v1 record; last_error truncated; 0, -EMSGSIZE, -EINVAL */
int qstore_rcpt_encode(struct buf *out, const struct qstore_rcpt *rcpt);
/* qstore_rcpt_decode - as qstore_envelope_decode; RCPT->index is left alone */
int qstore_rcpt_decode(const void *rec, size_t len, struct qstore_rcpt *rcpt);

/* ---- warm-up state (qmgr's daily caps) --------------------------------------- */

#define QSTORE_WARMUP_VERSION 1u
#define QSTORE_WARMUP_LEN     56u
#define QSTORE_WARMUP_KEY_MAX 512u

struct qstore_warmup {
    uint32_t step;
    uint64_t start_day;
    uint64_t window;
    uint64_t sent, attempts, deferrals, complaints;
};

/* qstore_warmup_encode - append the v1 record of W to OUT; 0 */
int qstore_warmup_encode(struct buf *out, const struct qstore_warmup *w);
/* qstore_warmup_decode - REC (LEN bytes) into W; 0, or -EPROTO (length, version, reserved) */
int qstore_warmup_decode(const void *rec, size_t len, struct qstore_warmup *w);

/* ---- environment ---------------------------------------------------------- */

struct qstore;

#define QSTORE_NOSYNC 0x01u /* `sync-msg-create no`: commits not fsynced */
#define QSTORE_RDONLY 0x02u /* open read-only (tools); writes -> -EACCES */

struct qstore_opts {
    size_t map_size;      /* bytes; 0 = 1 GiB */
    unsigned max_readers; /* 0 = 512 */
    unsigned flags;       /* QSTORE_NOSYNC, QSTORE_RDONLY */
};

/*
 * qstore_open - open (creating if needed, mode 0700) the environment in DIR.
 * Creates the named databases and meta on first use; checks the schema
 * version. @return 0, -EPROTO (other schema), -errno from the system or LMDB.
 */
int qstore_open(struct qstore **qsp, const char *dir, const struct qstore_opts *opts);

/* The queue store lives in this subdirectory of the spool. */
#define QSTORE_SPOOL_SUBDIR "queue"
struct cfg;
/*
 * qstore_open_spool - qstore_open() of SPOOL/queue with the map size of
 * `queue-map-size` and QSTORE_NOSYNC when `sync-msg-create no`, plus FLAGS
 * (e.g. QSTORE_RDONLY). The directory's path goes to *DIRP (caller frees)
 * when DIRP is not NULL, for messages. Returns what qstore_open() returns.
 */
int qstore_open_spool(struct qstore **qs, const struct cfg *c, const char *spool, unsigned flags,
                      char **dirp);
/* qstore_close - close the environment; no transaction may be active */
void qstore_close(struct qstore *qs);
/* qstore_sync - fdatasync the data file (with sync on, the durability point of every lazy
 * commit before it; see DURABILITY); 0 or -errno */
int qstore_sync(struct qstore *qs);
/* qstore_sync_on - 1 when commits sync (neither QSTORE_NOSYNC nor QSTORE_RDONLY) */
int qstore_sync_on(const struct qstore *qs);

/*
 * SPACE. The queue is full when the LMDB map or the disk under it is. What a
 * new message may take is LMDB's free pages plus what the data file may
 * still grow by (the smaller of the map's rest and the disk space left),
 * less a reserve kept for qmgr: recording deliveries writes pages too
 * (copy-on-write), and a queue filled to the last page could not record the
 * deliveries that empty it. cleanup samples this (a read transaction over
 * the free list and a statvfs: cheap, but not per message), refuses what
 * does not fit with 452 4.3.1, and tells smtpd (MP_QUEUE_SPACE).
 */
struct qstore_space {
    uint64_t map_size;    /* queue-map-size */
    uint64_t file_size;   /* the data file now (it never shrinks) */
    uint64_t free_inside; /* of which free for reuse */
    uint64_t disk_size;   /* the file system of the queue ... */
    uint64_t disk_avail;  /* ... and what the worker user may still write on it */
};
/* qstore_space - sample QS's space. 0 or -errno */
int qstore_space(struct qstore *qs, struct qstore_space *sp);
/* qstore_space_room - the largest message (body bytes) the queue takes now, the reserve kept */
uint64_t qstore_space_room(const struct qstore_space *sp);
/* qstore_space_capacity - the largest message the queue could ever take (empty, reserve kept) */
uint64_t qstore_space_capacity(const struct qstore_space *sp);
/* qstore_space_reserve - the bytes kept for qmgr: 1/64 of the map or disk, 256 KiB to 64 MiB,
 * at most a quarter of it */
uint64_t qstore_space_reserve(const struct qstore_space *sp);

struct qstore_info {
    uint64_t messages, recipients, chunks;
    uint64_t next_msgid;
    size_t map_size, map_used; /* bytes */
};
/* qstore_info - counts and map usage for status output */
int qstore_info(struct qstore *qs, struct qstore_info *info);

/* ---- new messages (cleanup) ------------------------------------------------ */

/*
 * A new message, encoded and validated once on the caller's thread so that the
 * caller's strings need not outlive the call and the commit thread only copies
 * bytes. qstore_newmsg_create() takes over BODY's data (the buf is left empty)
 * and copies everything else. ENV->nrcpt/size/nchunks are computed; each
 * recipient's queued_at is set to the envelope's. N must be >= 1.
 * @return 0, -EINVAL, -EMSGSIZE.
 */
struct qstore_newmsg;
int qstore_newmsg_create(struct qstore_newmsg **nmp, const struct qstore_envelope *env,
                         const struct qstore_rcpt *rcpts, size_t n, struct buf *body);
void qstore_newmsg_free(struct qstore_newmsg *nm);
/*
 * qstore_newmsg_patch_qid - when NM is stored, body bytes [OFFSET, OFFSET +
 * QSTORE_QID_LEN) are replaced by the text of its new id (qstore_qid_format).
 * Only the stored copy changes. 0, or -EINVAL when the range is outside the body.
 */
int qstore_newmsg_patch_qid(struct qstore_newmsg *nm, size_t offset);
/* qstore_qid_format - MSGID as QSTORE_QID_LEN upper-case hex digits and a NUL */
void qstore_qid_format(char out[QSTORE_QID_LEN + 1], uint64_t msgid);
/* qstore_newmsg_size - bytes the message will occupy (records + body) */
size_t qstore_newmsg_size(const struct qstore_newmsg *nm);

/* ---- write transactions (what qstore_group batches; usable directly) ------ */

/*
 * One write transaction. Operations return a per-operation result; if
 * qstore_wtxn_failed() then becomes nonzero the transaction is dead (e.g.
 * map full) and must be aborted: none of its operations happened.
 * Begin and commit/abort must happen on the same thread.
 */
struct qstore_wtxn;
int qstore_wtxn_begin(struct qstore *qs, struct qstore_wtxn **wp);
/* qstore_wtxn_put - store NM; its id goes to *IDP. 0 or -errno */
int qstore_wtxn_put(struct qstore_wtxn *w, const struct qstore_newmsg *nm, uint64_t *idp);
/*
 * qstore_wtxn_finish - the recipient is done (delivered, bounced, expired):
 * delete its record, and the message's msg and body records when it was the
 * last one. 0, -ENOENT (no such recipient), -errno.
 */
int qstore_wtxn_finish(struct qstore_wtxn *w, uint64_t msgid, uint32_t index);

struct qstore_defer {
    uint32_t attempts;      /* new attempt count */
    uint64_t next_attempt;  /* unix seconds */
    uint64_t first_attempt; /* 0 = keep what is stored */
    const char *last_error; /* reply text; truncated to QSTORE_ERR_MAX */
    int set_delay_notices;  /* nonzero: store delay_notices (else keep) */
    uint8_t delay_notices;
};
/* qstore_wtxn_defer - mark DEFERRED with D's fields. 0, -ENOENT, -EPROTO, -errno */
int qstore_wtxn_defer(struct qstore_wtxn *w, uint64_t msgid, uint32_t index,
                      const struct qstore_defer *d);
/* qstore_wtxn_delete_msg - remove a message and all its records. 0, -ENOENT, -errno */
int qstore_wtxn_delete_msg(struct qstore_wtxn *w, uint64_t msgid);
/*
 * qstore_wtxn_set_mark - set progress mark NAME (at most 58 bytes) to VALUE
 * in meta; 0, -EINVAL (bad name), -errno. qstore_get_mark reads it: 0,
 * -ENOENT (never set), -errno.
 */
int qstore_wtxn_set_mark(struct qstore_wtxn *w, const char *name, uint64_t value);
int qstore_get_mark(struct qstore *qs, const char *name, uint64_t *value);
/* qstore_wtxn_put_warmup - store warm-up state ST under KEY (replacing it). 0, -EMSGSIZE, -errno */
int qstore_wtxn_put_warmup(struct qstore_wtxn *w, const char *key, const struct qstore_warmup *st);
/* qstore_wtxn_failed - nonzero (-errno) once the transaction must be aborted */
int qstore_wtxn_failed(const struct qstore_wtxn *w);
/* qstore_wtxn_commit - commit, durable on return unless QSTORE_NOSYNC; frees W. 0 or -errno */
int qstore_wtxn_commit(struct qstore_wtxn *w);
/* qstore_wtxn_commit_lazy - commit; durable only once a later commit or qstore_sync() of this
 * store returned 0 (see DURABILITY); frees W. 0 or -errno */
int qstore_wtxn_commit_lazy(struct qstore_wtxn *w);
/* qstore_wtxn_abort - drop everything W did; frees W */
void qstore_wtxn_abort(struct qstore_wtxn *w);

/*
 * One-operation-per-transaction conveniences (tools, tests, pmtactl delete).
 * They block for the writer lock and the sync: not for an event-loop thread.
 */
int qstore_put(struct qstore *qs, const struct qstore_newmsg *nm, uint64_t *idp);
int qstore_delete_msg(struct qstore *qs, uint64_t msgid);

/* ---- reading (qmgr rebuild, smtp-out) -------------------------------------- */

/*
 * What the scheduler needs of one recipient. QUEUE points into the LMDB map
 * and is valid during the callback only: intern it, do not keep it.
 */
struct qstore_sched {
    uint64_t msgid;
    uint32_t index;
    uint8_t state;
    uint32_t attempts;
    uint64_t queued_at;
    uint64_t next_attempt;
    const char *queue;
    size_t queue_len;
};

/* A callback returning nonzero stops the scan; the scan then returns that value. */
typedef int (*qstore_sched_fn)(const struct qstore_sched *s, void *arg);

struct qstore_scan_stats {
    uint64_t seen;    /* records passed to the callback */
    uint64_t corrupt; /* records skipped as corrupt (each logged) */
};

/*
 * qstore_scan - call FN for every pending recipient, in (msgid, index) order,
 * in one read transaction; no allocation per recipient. A corrupt record is
 * logged, counted and skipped so that one bad record cannot stop a rebuild.
 * After a full scan the pages it read leave this process's resident set (they
 * stay in the page cache). qstore_scan_msg does the same for one message (a new message joining the
 * schedule). @return 0, FN's nonzero value, or -errno.
 */
int qstore_scan(struct qstore *qs, qstore_sched_fn fn, void *arg, struct qstore_scan_stats *st);
int qstore_scan_msg(struct qstore *qs, uint64_t msgid, qstore_sched_fn fn, void *arg,
                    struct qstore_scan_stats *st);

/*
 * A message copied out of LMDB: owned by the caller, strings point into its
 * own copy of the records. RCPT holds the recipients still pending (RCPT[i].
 * index gives each one's position). BODY is NULL unless QSTORE_READ_BODY.
 */
struct qstore_msg {
    uint64_t msgid;
    struct qstore_envelope env;
    struct qstore_rcpt *rcpt;
    size_t nrcpt;
    char *body;
    size_t body_len;
    struct buf recs_; /* private: the copied records */
};

#define QSTORE_READ_BODY 0x01u

/* qstore_read_msg - copy message MSGID out. 0, -ENOENT, -EPROTO, -errno */
int qstore_read_msg(struct qstore *qs, uint64_t msgid, unsigned what, struct qstore_msg **mp);
void qstore_msg_free(struct qstore_msg *m);

/*
 * qstore_scan_warmup - FN(key, state, ARG) for every warm-up state record,
 * in one read transaction; a corrupt record is logged and skipped. KEY is
 * valid during the call only. 0, FN's nonzero value, or -errno.
 */
typedef int (*qstore_warmup_fn)(const char *key, const struct qstore_warmup *st, void *arg);
int qstore_scan_warmup(struct qstore *qs, qstore_warmup_fn fn, void *arg);

/* qstore_strerror - text for a qstore error code (for logs) */
const char *qstore_strerror(int err);

#endif
