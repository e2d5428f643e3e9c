/*
 * qmgr.h - the queue manager's shared state: recipients, messages, queues,
 *          smtp-out processes and their connections
 *
 * Modules (each owns the state named next to it):
 *   qmgr.c          main: start-up, configuration, shutdown; the global S
 *   qmgr_queue.c    queue objects (interned by name), settings, ready lists,
 *                   the recipient and message tables, the deferred heap
 *   qmgr_sched.c    start-up rebuild, new-message catch-up scans, the wake
 *                   timers and the dispatch pass (who gets a connection)
 *   qmgr_conn.c     the qmgr socket: cleanup hints and smtp-out processes,
 *                   connections and transactions (runtime/mailproto.h)
 *   qmgr_limit.c    every limit on sending behind one interface (rates as
 *                   GCRA, connections as leases, caps as quotas), with a
 *                   backend vtable a shared (cluster) store can fill
 *   qmgr_vmta.c     limits across all queues of one virtual MTA, and the
 *                   source address (smtp-source-host) of each connection
 *   qmgr_source.c   limits per source address (source-ip-max-*)
 *   qmgr_rollup.c   which queue a domain's mail joins: its own, an MX rollup's
 *                   or a queue-to target's (qmgr's MX lookups)
 *   qmgr_gate.c     what a queue passes before a connection opens or a
 *                   transaction goes, and in words what holds it back
 *   qmgr_adaptive.c adaptive concurrency and dead destinations
 *   qmgr_backoff.c  backoff mode and the smtp-pattern-list reply actions
 *   qmgr_ctl.c      the control socket pmtactl talks to (JSON lines)
 *   qmgr_http.c     the HTTP monitor (status and queues as JSON, /metrics)
 *   qmgr_monitor.c  the web page under /ui: its files, data and actions
 *   qmgr_traffic.c  traffic per minute over the last hour, recent errors
 *   qmgr_outcome.c  what a result does: durable finish/defer, bounces
 *                   (DSN), expiry, the per-attempt log line
 *   qmgr_records.c  the accounting records (d, b, t, tq, r) and the writer
 *   qmgr_webhook.c  <acct-webhook>: the records' backlog POSTed in batches
 *   qmgr_msg.c      queue ids, envelopes read from the queue, and mail
 *                   qmgr queues itself (DSNs, notices, copies)
 *   qmgr_jobs.c     paused jobs (pmtactl pause/resume job): their recipients held
 *   qmgr_trace.c    pmtactl trace: the next attempt of a queue, its transcript relayed
 *   qmgr_suppress.c suppression lists (<address-list>, suppression-lists)
 *   qmgr_reportproc.c  <bounce-processor>, <feedback-loop-processor>: the
 *                   reports received, parsed (qmgr_report_parse.c) and
 *                   recorded (rb, rs, f)
 *
 * Memory model: a queued recipient costs one struct qrcpt (24 bytes) in one
 * table plus a share of its struct qmsg; everything else (addresses, sender,
 * last error) stays in LMDB and is read when a transaction is built or an
 * outcome is recorded. Recipients and messages are named by their index in
 * those tables (QNIL = none), which keeps links 4 bytes wide.
 *
 * SECURITY: smtp-out and cleanup are our own processes but their frames are
 * parsed defensively (mailproto.h); text that reaches the log passes
 * msg_printable().
 */
#ifndef PMTA_QMGR_H
#define PMTA_QMGR_H

#include <stdint.h>
#include <stddef.h>

#include <uv.h>

#include "cfg.h"
#include "ipc.h"
#include "qstore.h"
#include "qstore_group.h"
#include "qmgr_limit.h"

#define QNIL             UINT32_MAX
#define QMGR_TICK_MS     10u /* resolution of in-memory due times */
#define QMGR_PRIO_LEVELS 101 /* queue-priority 0..100 */

enum qrcpt_state { QR_FREE = 0, QR_READY, QR_DEFERRED, QR_INFLIGHT };

/* One pending recipient (24 bytes). */
struct qrcpt {
    uint32_t next;     /* ready list / free list link */
    uint32_t msg;      /* index in the message table */
    uint32_t index;    /* recipient index inside the message */
    uint32_t queue;    /* queue id */
    uint32_t due;      /* next attempt, in ticks since start (deferred) */
    uint16_t attempts; /* saturates at 65535 */
    uint8_t state;     /* enum qrcpt_state */
    uint8_t flags;     /* QRF_* */
};

/* qrcpt.flags */
#define QRF_BACKOFF_DEFERRED 0x01u /* deferred while its queue was in backoff */
#define QRF_BACKOFF_TRIES    0xF0u /* deferrals in this backoff episode (saturates at 15) */
#define QRF_BACKOFF_TRY_ONE  0x10u
#define QRF_QUEUE_DEFERRED   0x02u /* deferred with its queue's retry mode (a failed connection) */
#define QRF_JOB_HELD         0x04u /* its job is paused (qmgr_jobs.c): deferred until resumed */
#define QMGR_DUE_HELD        (UINT32_MAX - 1u) /* the due tick of a held recipient: never */

/* One message with pending recipients (16 bytes). */
struct qmsg {
    uint64_t msgid;
    uint32_t queued_at; /* unix seconds */
    uint32_t live;      /* recipients still in memory; 0 = slot free */
};

enum qqueue_mode { QMODE_NORMAL = 0, QMODE_BACKOFF = 1 };

/* The source-ip-max-* limiters of one queue for one source address (qmgr_source.c), and its
   warm-up cap there (qmgr_warmup.c); NULL: no such limit. */
enum { QSRC_MSGS, QSRC_CONNECT, QSRC_CONNS, QSRC_VOLUME, QSRC_WARMUP, QSRC_LIMITS };
struct qsource_limits {
    char ip[48];
    struct qlim *lim[QSRC_LIMITS];
};

struct qconn;
struct qvmta;
struct qroute;

/* A source address a reply told us to stop using for a queue (disable-source-ip). */
struct qdisabled_ip {
    char ip[48];
    uint64_t until_ms; /* monotonic; 0 = until a restart */
};

/* The last mode changes of a queue, for pmtactl (qmgr_backoff.c). */
#define QMGR_MODE_EVENTS 10
struct qmode_event {
    uint64_t wall;    /* unix seconds */
    uint8_t from, to; /* enum qqueue_mode */
    char why[160];
};

struct qqueue {
    uint32_t id;
    char *name; /* "domain/vmta" */
    char *domain;
    char *vmta; /* "{default}" when none */
    /* recipients */
    uint32_t ready_head, ready_tail;
    uint32_t nready, ndeferred, ninflight;
    uint64_t last_arrival_ms; /* last qmgr_ready_arrive() (keeps connections idle) */
    /* connections */
    struct qconn *conns; /* every connection of this queue */
    uint32_t nconn;
    uint32_t nrate_pending; /* connections opening for a rate-limited transaction */
    /* shaping: limiters configured by qmgr_queue_limits() */
    struct qlim lim_msg;     /* max-msg-rate (backoff-max-msg-rate), recipients */
    struct qlim lim_connect; /* max-connect-rate (backoff-), new connections */
    struct qlim lim_conns;   /* max-smtp-out (backoff-), connections */
    struct qlim lim_volume;  /* max-data-volume-rate (backoff-), message bytes */
    uint64_t lim_serial;     /* S.cfg_serial the limiters were set for (0: set them again) */
    int lim_mode;            /* and the mode */
    /* adaptive concurrency (qmgr_adaptive.c) */
    int adapt_on;               /* adaptive-concurrency yes */
    double adapt_window;        /* connections allowed now */
    uint32_t adapt_max;         /* max-smtp-out (or its backoff twin) */
    uint32_t adapt_ceiling;     /* the level last refused; 0: none */
    uint64_t adapt_probe_at_ms; /* not above ceiling - 1 before this */
    uint32_t adapt_probe_ms;    /* the wait before the next probe */
    uint32_t adapt_fails;       /* connection failures in a row with none up */
    uint32_t fail_count;        /* consecutive connection failures (retry mode) */
    uint64_t retry_until_ms;    /* no new connection before this (monotonic ms) */
    int mode;                   /* enum qqueue_mode (qmgr_backoff.c) */
    uint64_t backoff_until_ms;  /* back to normal at this monotonic ms; 0 = not by time */
    uint32_t mode_changes;
    int32_t plist;                 /* index of its smtp-pattern-list, -1 none (qmgr_backoff.c) */
    uint64_t plist_gen;            /* pattern generation plist was looked up for */
    int feed_held;                 /* defer-queue: no new transactions until retry_until_ms */
    int paused;                    /* pmtactl pause queue: no new connections or transactions */
    struct qdisabled_ip *disabled; /* disable-source-ip (qmgr_queue.c) */
    uint32_t ndisabled;
    struct qmode_event *mode_events; /* ring of QMGR_MODE_EVENTS, allocated on first change */
    uint8_t nmode_events, mode_event_next;
    struct qvmta *vg; /* limits across the virtual MTA's queues (qmgr_vmta.c) */
    /* destination (qmgr_rollup.c) */
    struct qroute *route;     /* a domain queue: its domain's route; NULL until its first rcpt */
    struct qqueue *dest;      /* where its recipients go; NULL: itself */
    uint64_t dest_serial;     /* S.cfg_serial dest was decided for (0: decide again) */
    uint64_t dest_until_ms;   /* and until when (the MX answer's TTL) */
    int route_held;           /* its domain's first MX answer is awaited: no connection */
    const char *route_domain; /* a rollup queue: the member domain its connections resolve */
    struct qqueue **members;  /* a destination queue: the domain queues routed to it */
    uint32_t nmembers;
    struct qsource_limits *srcl; /* per source address, for srcl_serial (qmgr_source.c) */
    uint32_t nsrcl;
    int srcl_any; /* has it any source-ip-max-* setting? */
    uint64_t srcl_serial;
    /* settings cache: resolved for S.cfg_serial */
    struct cfg_resolved *res;
    uint64_t res_serial;
    int priority;
    /* dispatch: run lists by priority (queues with ready recipients) */
    struct qqueue *run_next, *run_prev;
    int run_prio;     /* -1 when not on a run list */
    uv_timer_t *wake; /* retry end / rate wait; allocated on first use */
    uint64_t wake_at_ms;
    /* counters (for the status socket later) */
    uint64_t delivered, bounced, deferred_n, conn_failures;
    char *last_error;
};

/* An smtp-out process, or a cleanup connection, or one not yet known. */
enum qpeer_kind { QPEER_UNKNOWN = 0, QPEER_CLEANUP, QPEER_OUT };

struct qpeer {
    struct ipc_chan *ch;
    enum qpeer_kind kind;
    uint32_t pid;
    uint32_t max_conns;
    uint32_t nconns;
    struct qconn *conns; /* its connections (onext) */
    struct qpeer *next;
};

enum qconn_state { QC_OPENING, QC_BUSY, QC_IDLE, QC_CLOSING };

/* leases a connection holds: its queue's, the global one, its virtual MTA's, its source's */
#define QCONN_LEASES 4
#define QCONN_RAMP   4 /* ready recipients each working connection is counted on to take */

struct qconn {
    uint32_t id;
    enum qconn_state state;
    struct qpeer *out;
    struct qqueue *q;
    struct qconn *qnext, *onext;
    int up;           /* MP_CONN_UP seen */
    int rate_pending; /* opened without a transaction: takes its rate share once up */
    struct qlim *leases[QCONN_LEASES]; /* released when the connection is freed */
    unsigned nleases;
    struct qlim *src_msgs, *src_volume; /* its source address's rates (NULL: none) */
    struct qlim *src_warm;              /* its source address's warm-up cap (NULL: none) */
    unsigned ntxn;                      /* transactions sent */
    /* pinned at open (a reload does not change a running connection) */
    unsigned max_msg; /* 0 = no limit */
    unsigned max_rcpt;
    uint64_t idle_timeout_ms;
    /* the current transaction */
    struct qstore_msg *txn_msg; /* envelope + recipient records, copied at send */
    uint32_t txn_msgidx;
    uint32_t *txn; /* recipient table indexes; QNIL once answered */
    uint32_t txn_n, txn_left, txn_cap;
    int txn_sent_noted; /* its send time has paced the rates (qlim_sent) */
    /* peer facts */
    char *mx, *dest_ip, *source_ip, *helo;
    char *tls, *esmtp; /* MP_CONN_UP's: "TLSv1.3 CIPHER" or "", the extensions offered */
    uv_timer_t idle_timer;
    int idle_timer_on;
};

/* Everything about one outcome the log line and accounting need. */
struct qresult {
    uint32_t result; /* MP_RESULT_* */
    uint32_t code;
    const char *enhanced;
    const char *text;
    const char *mx, *dest_ip, *source_ip;
    const char *tls;   /* "TLSv1.3 CIPHER" of the connection, or NULL/"" */
    const char *esmtp; /* extensions the receiver offered ("PIPELINING,8BITMIME"), or NULL */
    int conn_level;    /* no reply of the recipient's own: its connection failed or dropped */
    int no_dsn;        /* a bounce that only records (discard-as-bounce): no DSN */
};

struct qmgr_state {
    /* recipients and messages */
    struct qrcpt *rcpt;
    uint32_t nrcpt_cap, rcpt_free, nrcpt_live;
    struct qmsg *msg;
    uint32_t nmsg_cap, nmsg_used, *msg_free, nmsg_free, nmsg_free_cap;
    /* deferred heap of recipient indexes ordered by (due, msg, index) */
    uint32_t *heap;
    uint32_t nheap, heap_cap;
    /* queues */
    struct qqueue **queues;
    uint32_t nqueues, queues_cap;
    uint32_t *qhash; /* open addressing: queue id or QNIL */
    uint32_t qhash_cap;
    struct qqueue *run[QMGR_PRIO_LEVELS];
    /* processes and connections */
    struct qpeer *peers;
    struct qconn **conn_by_id; /* id - 1 -> connection */
    uint32_t conn_cap;
    uint32_t nconn_total, nconn_up;
    struct qlim lim_total; /* total-max-smtp-out */
    /* queue store */
    struct qstore *qs;
    struct qstore_group *group;
    uint64_t scanned_below; /* every msgid below this has been scanned */
    /* configuration */
    const struct cfg *cfg;
    uint64_t cfg_serial;
    /* time */
    uint64_t start_ms;   /* monotonic ms at start */
    uint64_t start_wall; /* unix seconds at start */
    int stopping;
};

extern struct qmgr_state S;

/* --- time (qmgr.c) ------------------------------------------------------------ */
uint64_t qmgr_now_ms(void); /* monotonic milliseconds */
uint64_t qmgr_now_ns(void);
uint64_t qmgr_wall(void); /* unix seconds */
uint32_t qmgr_tick_now(void);
uint32_t qmgr_tick_from_wall(uint64_t unix_seconds);
/* qmgr_jitter - DELAY_MS +-10 %, stable for one SEED (recipients of a message stay together) */
uint64_t qmgr_jitter(uint64_t delay_ms, uint64_t seed);

/* --- queues, recipients, messages (qmgr_queue.c) -------------------------------- */
struct qqueue *qmgr_queue_get(const char *name, size_t len);
/* qmgr_queue_lookup - the queue named NAME (LEN bytes), or NULL (nothing is created) */
struct qqueue *qmgr_queue_lookup(const char *name, size_t len);
void qmgr_queues_free(void);
/* qmgr_queue_setting - effective value of D for Q (its backoff-X twin in backoff mode) */
const struct cfg_value *qmgr_queue_setting(struct qqueue *q, enum cfg_directive d);
int64_t qmgr_queue_num(struct qqueue *q, enum cfg_directive d, int64_t dflt);
/* qmgr_queue_retry_delay_ms - the retry-after list's entry for the Nth (1-based) failure */
uint64_t qmgr_queue_retry_delay_ms(struct qqueue *q, uint32_t n);
void qmgr_queue_invalidate_settings(void);
/* qmgr_limit_set_value - L from a rate or count value V, its reason "NAME VALUE[ SUFFIX]" */
void qmgr_limit_set_value(struct qlim *l, const struct cfg_value *v, const char *suffix);
/* qmgr_queue_limits - Q's limiters set for the current configuration and mode (cheap if so) */
void qmgr_queue_limits_refresh(struct qqueue *q);
static inline void
qmgr_queue_limits(struct qqueue *q)
{
    if (q->lim_serial != S.cfg_serial || q->lim_mode != q->mode)
        qmgr_queue_limits_refresh(q);
}
void qmgr_queue_set_error(struct qqueue *q, const char *text);
/* qmgr_queue_type - Q's delivery type (`type`), enum cfg_delivery_type */
int qmgr_queue_type(struct qqueue *q);
/* qmgr_queue_type_name - Q's delivery type (`type`): "smtp", "discard", "pipe", "file", ... */
const char *qmgr_queue_type_name(struct qqueue *q);
void qmgr_queue_end_retry(struct qqueue *q, int keep_count);

uint32_t qmgr_msg_add(uint64_t msgid, uint32_t queued_at);
void qmgr_msg_unref(uint32_t m);
uint32_t qmgr_rcpt_new(uint32_t msg, uint32_t index, struct qqueue *q, uint16_t attempts);
void qmgr_rcpt_free(uint32_t r);
void qmgr_rcpt_reserve(uint64_t n);
/*
 * qmgr_queue_route - where recipients of Q go now: Q itself, or while Q is in
 * backoff with backoff-reroute-to-virtual-mta V, the queue domain/V
 * (qmgr_ready_push* follow it)
 */
struct qqueue *qmgr_queue_route(struct qqueue *q);
/* qmgr_mode_name - "normal" or "backoff" */
const char *qmgr_mode_name(int mode);
/* qmgr_queue_matches - Q against "domain[/vmta]" with shell wildcards (no "/vmta": any vmta) */
int qmgr_queue_matches(const struct qqueue *q, const char *pattern);
/* qmgr_source_disable - stop using source IP for Q, for SECONDS (< 0: until a restart) */
void qmgr_source_disable(struct qqueue *q, const char *ip, int64_t seconds);
/*
 * qmgr_source_operator - pmtactl disable/enable source: IP for every queue of
 * the virtual MTAs VMTA matches (shell wildcards; NULL = all), for SECONDS (< 0:
 * until enabled or a restart). ENABLE removes such an entry and IP's entries
 * in the queues' own lists. Returns how many entries it changed.
 */
uint32_t qmgr_source_operator(const char *ip, const char *vmta, int64_t seconds, int enable);
/* qmgr_source_disabled - is IP disabled for Q now? (expired entries are dropped) */
int qmgr_source_disabled(struct qqueue *q, const char *ip);
/* qmgr_source_any_disabled - does Q have a disabled address at all? */
int qmgr_source_any_disabled(struct qqueue *q);
/* qmgr_queue_reroute - move Q's ready and deferred recipients to its route; how many */
uint32_t qmgr_queue_reroute(struct qqueue *q);
/* qmgr_queue_move - move Q's ready and deferred recipients to TO (and its route); how many */
uint32_t qmgr_queue_move(struct qqueue *q, struct qqueue *to);
void qmgr_ready_push(struct qqueue *q, uint32_t r);
void qmgr_ready_arrive(struct qqueue *q, uint32_t r);
void qmgr_ready_push_front(struct qqueue *q, uint32_t r);
uint32_t qmgr_ready_peek(struct qqueue *q);
uint32_t qmgr_ready_pop(struct qqueue *q);
void qmgr_defer_push(uint32_t r, uint32_t due_tick);
/* qmgr_defer_take_queue - remove Q's deferred recipients from the heap into *OUT (free it); how
 * many */
uint32_t qmgr_defer_take_queue(struct qqueue *q, uint32_t **out);
/*
 * qmgr_defer_due_now - every deferred recipient of Q (with ONLY: only those
 * with a flag of ONLY set) becomes due at NOW_TICK, its backoff flags
 * cleared; how many
 */
uint32_t qmgr_defer_due_now(struct qqueue *q, uint32_t now_tick, uint8_t only);
uint32_t qmgr_defer_pop_due(uint32_t now_tick);
uint32_t qmgr_defer_next_due(void); /* tick of the earliest, or UINT32_MAX */
void qmgr_heap_free(void);
int qmgr_rcpt_expired(uint32_t r, uint64_t now_wall);

/* --- destinations: MX rollups and queue-to (qmgr_rollup.c) ---------------------------- */
struct qqueue *qmgr_rollup_dest_slow(struct qqueue *q);
/*
 * qmgr_rollup_dest - the queue the recipients of domain queue Q (as the
 * store names it) join: Q, a rollup's or a queue-to target's queue. While
 * Q's domain's first MX lookup runs, Q itself, held (no connection).
 */
static inline struct qqueue *
qmgr_rollup_dest(struct qqueue *q)
{
    if (q->dest_serial == S.cfg_serial && qmgr_now_ms() < q->dest_until_ms)
        return q->dest ? q->dest : q;
    return qmgr_rollup_dest_slow(q);
}
/* qmgr_rollup_kind - "rollup", "queue-to", or NULL when DQ holds no other domain's mail */
const char *qmgr_rollup_kind(const struct qqueue *dq);
void qmgr_rollup_start(void);
void qmgr_rollup_stop(void);
void qmgr_rollup_free(void);

/* --- scheduling (qmgr_sched.c) ---------------------------------------------------- */
int qmgr_sched_rebuild(void);
void qmgr_sched_start(void);
void qmgr_sched_stop(void);
void qmgr_sched_catch_up_soon(void); /* a hint or our own DSN: scan new ids */
void qmgr_dispatch_soon(void);
void qmgr_defer_timer_update(void);
void qmgr_run_update(struct qqueue *q); /* put on / take off the run list */
void qmgr_queue_wake_at(struct qqueue *q, uint64_t at_ms);
/* qmgr_take_txn - up to MAX recipients of one message from Q's ready list (expired ones bounce) */
uint32_t qmgr_take_txn(struct qqueue *q, uint32_t max, uint32_t *out);

/* --- the gate: limits before a connection or a transaction (qmgr_gate.c) ------------ */
/* The rates a transaction passes: recipients (queue, virtual MTA, source address) and bytes
   (queue, source address: QLIM_DEBT). NULL entries: no such limit. */
#define QTXN_RATES   4
#define QTXN_VOLUMES 2
struct qtxn_limits {
    struct qlim *msgs[QTXN_RATES];
    struct qlim *volumes[QTXN_VOLUMES];
};
/* qmgr_gate_txn_limits - the rates a transaction of Q on connection C (NULL: a new one) passes */
void qmgr_gate_txn_limits(struct qqueue *q, const struct qconn *c, struct qtxn_limits *t);
/* qmgr_gate_txn_room - recipients a transaction of Q on C (NULL: a new one) may carry now;
 * at 0 Q's wake timer is armed when time will give room */
uint32_t qmgr_gate_txn_room(struct qqueue *q, struct qconn *c);
/* qmgr_gate_txn_take - C's transaction went: its recipients and its message's bytes */
void qmgr_gate_txn_take(struct qconn *c);
/* qmgr_gate_txn_sent - C's transaction went on the wire at SENT_NS (paces the rates) */
void qmgr_gate_txn_sent(struct qconn *c, uint64_t sent_ns);
/* qmgr_gate_open - may Q open one more connection now? 0: Q waits (timer, reclaim, backoff) */
int qmgr_gate_open(struct qqueue *q);
/* qmgr_gate_source - the source address (and HELO) of Q's next connection; 0 when none may */
int qmgr_gate_source(struct qqueue *q, char **ip, char **helo);
/* qmgr_gate_why - what holds Q back at this moment, in words, into BUF ("" when nothing) */
const char *qmgr_gate_why(struct qqueue *q, char *buf, size_t size);

/* --- adaptive concurrency (qmgr_adaptive.c) ----------------------------------------- */
/* qmgr_adaptive_limit - Q's connections allowed of MAX (max-smtp-out), with its reason in BASIS
 * when adaptive concurrency is on (q->adapt_on), else MAX */
int64_t qmgr_adaptive_limit(struct qqueue *q, int64_t max, char *basis, size_t size);
/* qmgr_adaptive_delivered - a delivery on Q (the window may grow) */
void qmgr_adaptive_delivered(struct qqueue *q);
/* qmgr_adaptive_conn_up - a connection of Q came up */
void qmgr_adaptive_conn_up(struct qqueue *q);
enum qadapt {
    QADAPT_OFF,     /* not adaptive: the usual retry mode */
    QADAPT_REQUEUE, /* refused while others are up: recipients back to the front */
    QADAPT_PAUSE,   /* none up: a short pause (set), recipients back to the front */
    QADAPT_DEAD     /* connection-failures-before-delay reached: the usual retry mode */
};
/* qmgr_adaptive_conn_failed - a connection of Q failed before it was up: what to do */
enum qadapt qmgr_adaptive_conn_failed(struct qqueue *q);

/* --- connections (qmgr_conn.c) ----------------------------------------------------- */
void qmgr_conn_listen(void);
void qmgr_conn_stop_listening(void);
int qmgr_conn_open(struct qqueue *q); /* 1 opened, 0 no room */
void qmgr_conn_feed_idle(struct qqueue *q);
void qmgr_conn_trim(struct qqueue *q); /* close resting connections over a lowered limit */
void qmgr_conn_close_idle_all(void);
unsigned qmgr_conn_busy(void);
void qmgr_conn_close_all(void);
struct qpeer *qmgr_conn_least_loaded(void);
/* qmgr_conn_reclaim_idle - close a resting connection of another queue holding a lease of CAP */
void qmgr_conn_reclaim_idle(const struct qqueue *q, const struct qlim *cap);

/* --- control socket (qmgr_ctl.c) ------------------------------------------------------ */
void qmgr_ctl_listen(void);
void qmgr_ctl_stop(void);

/* --- pmtactl trace (qmgr_trace.c) ---------------------------------------------------------- */
/* (the request and the client's end: qmgr_ctl.h) */
struct buf;
/* qmgr_trace_attach - C is about to be opened or fed: a waiting trace of its queue takes this
 * attempt (MP_CONN_TRACE appended to OUT, which must already hold MP_CONN_OPEN when new) */
void qmgr_trace_attach(struct qconn *c, struct buf *out);
/* qmgr_trace_line - MP_TRACE_LINE of C: relayed to its traces; 0 or -EPROTO */
int qmgr_trace_line(struct qconn *c, struct ipc_msg *m);
/* qmgr_trace_end - C's traced attempt is over (WHY): the last line, the traces forgotten */
void qmgr_trace_end(struct qconn *c, const char *why);

/* --- HTTP monitor (qmgr_http.c) -------------------------------------------------------- */
void qmgr_http_start(void);
void qmgr_http_stop(void);

/* --- virtual MTAs (qmgr_vmta.c) ----------------------------------------------------- */
/* qmgr_vmta_conn_limit - the connections of Q's virtual MTA (<virtual-mta> max-smtp-out,
 * <sender> max-conn) */
struct qlim *qmgr_vmta_conn_limit(struct qqueue *q);
/* qmgr_vmta_msg_limit - the message rate of Q's virtual MTA (<sender> max-msg-rate) */
struct qlim *qmgr_vmta_msg_limit(struct qqueue *q);
void qmgr_vmta_free(void);
/* qmgr_vmta_source_usable - has Q's virtual MTA a source address not disabled for Q? */
int qmgr_vmta_source_usable(struct qqueue *q);
/*
 * qmgr_vmta_pick_source - the next "IP HOSTNAME" of Q's VMTA (round-robin)
 * that disable-source-ip left and FILTER (may be NULL) accepts, into
 * *SOURCE_IP and *HELO (the caller's); with no smtp-source-host, "" and the
 * VMTA's host-name. 0 when every address was refused.
 */
typedef int (*qmgr_source_filter)(struct qqueue *q, const char *ip, void *arg);
int qmgr_vmta_pick_source(struct qqueue *q, qmgr_source_filter filter, void *arg, char **source_ip,
                          char **helo);
/* qmgr_vmta_has_source - is IP one of virtual MTA VMTA's smtp-source-host addresses? */
int qmgr_vmta_has_source(const char *vmta, const char *ip);
/* qmgr_vmta_source_any - would qmgr_vmta_pick_source find an address? (picks nothing) */
int qmgr_vmta_source_any(struct qqueue *q, qmgr_source_filter filter, void *arg);
/* qmgr_vmta_sources - the IPs of VMTA's own smtp-source-host lines into IPS (at most MAX); their
 * number (0: it uses the implicit source) */
uint32_t qmgr_vmta_sources(const char *vmta, char (*ips)[48], uint32_t max);
/* qmgr_vmta_connections - open connections across VMTA's queues */
uint32_t qmgr_vmta_connections(const char *vmta);

/* --- source addresses (qmgr_source.c) ----------------------------------------------- */
/* qmgr_source_limits - Q's source-ip-max-* limiters for source IP; NULL when it has none */
const struct qsource_limits *qmgr_source_limits(struct qqueue *q, const char *ip);
/* qmgr_source_limited - has Q any source-ip-max-* setting? */
int qmgr_source_limited(struct qqueue *q);
void qmgr_source_free(void);

/* --- outcomes (qmgr_outcome.c) -------------------------------------------------------- */
/* qmgr_outcome - record RES for recipient R; M is its message read from the queue (may be NULL) */
void qmgr_outcome(uint32_t r, const struct qstore_msg *m, struct qqueue *q,
                  const struct qresult *res);
/* qmgr_outcome_delete - the operator deletes R (pmtactl delete): b record, a DSN only if DSN */
void qmgr_outcome_delete(uint32_t r, struct qqueue *q, int dsn);
/* qmgr_outcome_expire - bounce R as expired (5.4.7, message-expired) outside any connection */
void qmgr_outcome_expire(uint32_t r, struct qqueue *q);
/* qmgr_outcome_queue_failure - a connection-level failure of Q (tq record, retry mode) */
void qmgr_outcome_queue_failure(struct qqueue *q, const struct qresult *res);
/*
 * qmgr_outcome_discard - `type discard`: Q's ready recipients are finished
 * without a connection (d records, or b records without a DSN with
 * discard-as-bounce), a batch per call; more remain when Q->nready > 0
 */
void qmgr_outcome_discard(struct qqueue *q);
/* qmgr_outcome_complaint - is permanent failure RES complaint-like (spam- or policy-related)? */
int qmgr_outcome_complaint(const struct qresult *res);
/* qmgr_outcome_queue_refused - a connection of Q refused while it has others up (adaptive
 * concurrency): tq record and last error only */
void qmgr_outcome_queue_refused(struct qqueue *q, const struct qresult *res);
/* qmgr_outcome_config - (re)open accounting and bounce patterns for S.cfg */
void qmgr_outcome_config(void);
/* qmgr_outcome_rotate_acct - pmtactl rotate acct: every accounting file now; 0, -ENOENT (none)
 * or -errno */
int qmgr_outcome_rotate_acct(void);
void qmgr_outcome_close(void);

/* qmgr_outcome_suppressed - R is on suppression list LIST: bounced at once (5.7.1, "suppressed") */
void qmgr_outcome_suppressed(uint32_t r, const struct qstore_msg *m, struct qqueue *q,
                             const char *list);
/* qmgr_outcome_acct - write A to the accounting files; qmgr_outcome_acct_flush - to disk now */
struct qmgr_acct_record;
int qmgr_outcome_acct(const struct qmgr_acct_record *a);
int qmgr_outcome_acct_flush(void);
/* qmgr_outcome_category - the bounce category of STATUS and TEXT (a reply or a diagnostic) */
const char *qmgr_outcome_category(const char *status, const char *text);
/* qmgr_outcome_finish - R is done for good (durable through the group committer): WHAT for logs */
void qmgr_outcome_finish(uint32_t r, const char *what);

/* --- paused jobs (qmgr_jobs.c) ------------------------------------------------------------- */
/* qmgr_job_is_paused - is JOB (an X-Job id; NULL or "" none) paused? */
int qmgr_job_is_paused(const char *job);
/* qmgr_job_pause - pause JOB: 1, 0 when it already was, -1 when too many jobs are paused */
int qmgr_job_pause(const char *job);
/*
 * qmgr_job_hold - the transaction RCPTS[0..N) of M (taken in flight from Q's
 * ready list) belongs to a paused job: its recipients are held (deferred with
 * QRF_JOB_HELD, never due) and 1 returned; 0 when M's job is not paused
 */
int qmgr_job_hold(struct qqueue *q, const struct qstore_msg *m, const uint32_t *rcpts, uint32_t n);
/* qmgr_job_resume - JOB's held recipients back to the front of their ready lists, in queue
 * order; how many, or -1 when JOB was not paused */
int64_t qmgr_job_resume(const char *job);
void qmgr_jobs_free(void);

/* --- suppression lists (qmgr_suppress.c) --------------------------------------------------- */
/* qmgr_suppress_config - load every top-level <address-list> of S.cfg (start and reload) */
void qmgr_suppress_config(void);
void qmgr_suppress_close(void);
/* qmgr_suppress_list - the loaded list NAME, or NULL */
struct cfg_addrlist *qmgr_suppress_list(const char *name);
/* qmgr_suppressed - the name of Q's suppression-lists entry ADDR is on, or NULL */
const char *qmgr_suppressed(struct qqueue *q, const char *addr);
/* qmgr_suppress_add - ADDR onto LIST (memory and file); WHY for the log; 0 or -errno */
int qmgr_suppress_add(const char *list, const char *addr, const char *why);

/* --- bounce and feedback-loop processors (qmgr_reportproc.c) ------------------------------ */
/* qmgr_reportproc_config - the processors of S.cfg (start and reload) */
void qmgr_reportproc_config(void);
void qmgr_reportproc_close(void);
/* qmgr_reportproc_owns - is Q a processor's queue ({bounce}/..., {feedbackLoop}/...)? */
int qmgr_reportproc_owns(const struct qqueue *q);
/* qmgr_reportproc_bounce_address - is ADDR on a <bounce-processor>'s list? */
int qmgr_reportproc_bounce_address(const char *addr);
/* qmgr_reportproc_run - process some of Q's ready recipients (the dispatch pass calls it) */
void qmgr_reportproc_run(struct qqueue *q);

/* --- accounting records (qmgr_records.c) ------------------------------------------------ */
enum qmgr_acct_type;
/* qmgr_records_attempt - the d, b or t record of RR (of M; either may be NULL) in Q */
void qmgr_records_attempt(enum qmgr_acct_type type, const struct qstore_msg *m,
                          const struct qstore_rcpt *rr, struct qqueue *q, const struct qresult *res,
                          const char *action, const char *cat);
/* qmgr_records_queue_failure - the tq record of a failed connection of Q */
void qmgr_records_queue_failure(struct qqueue *q, const struct qresult *res);
/* qmgr_records_received_start - after the rebuild: r records of messages above the stored mark */
void qmgr_records_received_start(uint64_t next_msgid);
/* qmgr_records_received - r records of every message id below BELOW not yet written */
void qmgr_records_received(uint64_t below);
void qmgr_records_config(void);
void qmgr_records_close(void);

/* --- <acct-webhook> senders (qmgr_webhook.c) ------------------------------------------------ */
struct qmgr_acct;
/* qmgr_webhook_start - send the backlog of every webhook of A (open) from its saved offset */
void qmgr_webhook_start(struct qmgr_acct *a);
/* qmgr_webhook_stop - stop sending (a batch in flight goes again next time); FOR_GOOD at exit */
void qmgr_webhook_stop(int for_good);

/* --- messages (qmgr_msg.c) ------------------------------------------------------------ */
/* qmgr_qid - the queue id of MSGID, as every log line and reply spells it, into BUF */
const char *qmgr_qid(char buf[QSTORE_QID_LEN + 1], uint64_t msgid);
/* qmgr_msg_find_rcpt - recipient INDEX of M (binary search), or NULL */
const struct qstore_rcpt *qmgr_msg_find_rcpt(const struct qstore_msg *m, uint32_t index);
/* qmgr_read_envelope - R's message without its body, or NULL (qstore_msg_free it) */
struct qstore_msg *qmgr_read_envelope(uint32_t r);
/* qmgr_host_name - host-name, else the system's name */
const char *qmgr_host_name(void);
/* qmgr_queue_local_mail - queue BODY (a whole message) from <> to TO; warns on failure */
struct buf;
void qmgr_queue_local_mail(const char *to, struct buf *body, int eightbit);
/* A message qmgr writes itself: a DSN, a bcc-upon-delivery copy, a report passed on. */
struct qmgr_newmail {
    const char *sender; /* NULL or "": the null sender */
    const char *to;
    const char *vmta;   /* NULL: {default} */
    const char *source; /* who made it: "{bounce}", "{bcc}", "{bounce-processor}", ... */
    const char *envid, *job_id;
    int eightbit;
    uint8_t notify; /* QSTORE_NOTIFY_* */
};
/* qmgr_queue_mail - queue BODY (taken over) as M says, through the group committer; 0 or <0 */
int qmgr_queue_mail(const struct qmgr_newmail *m, struct buf *body);

#endif
