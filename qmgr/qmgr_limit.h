/*
 * qmgr_limit.h - every limit on sending, behind one interface: rates as GCRA,
 *                concurrency as leases, daily caps as quotas
 *
 * A limiter (struct qlim) is one limit on one thing: the message rate of a
 * queue, the connections of a source IP, the warm-up cap of an IP towards a
 * destination. It has a scope and a key that name it (QLIM_QUEUE
 * "gmail.com/vmta1", QLIM_SOURCE "127.0.0.21 *"), a kind, and the limit in
 * force, which its owner sets from the configuration (qlim_set) whenever
 * that may have changed (a reload, backoff mode). The scheduler asks it
 * questions that never block:
 *
 *   RATE   qlim_room()     units that may go now (recipients, connections,
 *                          or with QLIM_DEBT any one batch while conformant)
 *          qlim_take()     N units went
 *          qlim_sent()     N units taken earlier went on the wire at SENT:
 *                          nothing more before SENT + N*T (a late send spaces
 *                          what follows instead of letting it bunch up)
 *          qlim_wait_ns()  how long until one unit may go
 *   LEASE  qlim_acquire()  one more (a connection), 1 if granted
 *          qlim_release()  one less; qlim_room() is the leases left
 *   QUOTA  qlim_room()     units left in the current window (a day)
 *          qlim_take()     N units went; the owner starts a new window
 *                          (qlim_quota_window) and persists the count
 * and qlim_reason() says in words why a limiter with no room holds a queue
 * back ("message rate limit reached (based on backoff-max-msg-rate 5/s)").
 *
 * Rates (GCRA): with COUNT per PERIOD every unit costs T (PERIOD plus the
 * pacing margin below, over COUNT) and TAT (theoretical arrival time) is when
 * the next unit is due. A batch of k units is conformant at NOW when k <= 1 +
 * floor((NOW - TAT) / T): it may only use slots that went unused (at most
 * COUNT, one period's worth, after a long idle time); it moves TAT to
 * BASE + k*T, where BASE = max(TAT, NOW - L). L, a small lateness tolerance,
 * is there because a queue is looked at late: a timer fires a millisecond or
 * two after TAT while T is a fraction of that at thousands per second, and
 * charging the batch from NOW would count that lateness twice (once as the
 * slots the batch used, once again after NOW): 2,500/s gave 833/s. Every
 * unit emitted inside (NOW - PERIOD, NOW] moved TAT forward by T from a point
 * no earlier than its own emission minus L, so those m units satisfy
 * TAT >= NOW - PERIOD - L + m*T; adding at most 1 + floor((NOW - TAT)/T)
 * gives at most 1 + (PERIOD + L)/T in any window of length PERIOD. With L at
 * most half of (margin - T) that is at most COUNT, and half the margin is
 * left for the receiver-side jitter below: no burst at interval edges.
 * A QLIM_DEBT rate (data volume: bytes, where one
 * message may be larger than a whole period's worth) admits one batch of any
 * size whenever TAT <= NOW and charges it afterwards (from max(TAT, NOW)), so the average holds
 * and a big message delays the next instead of waiting forever.
 *
 * Pacing margin: COUNT units are spread over PERIOD + QLIM_PACING_MS. The
 * limit is a promise about what the *receiver* sees, and the time between our
 * dispatch and its count varies: a unit that needs a new connection (TCP,
 * greeting, EHLO) arrives tens of milliseconds later than one sent on an
 * idle connection, more so on a busy machine. COUNT+1 units span COUNT
 * spacings, so they stay out of one receiver-side window as long as the
 * delays of the first and the last differ by less than the margin. That
 * costs 8 % of throughput on limits per second, 0.13 % per minute, nothing
 * per hour.
 *
 * Backends. What a limiter answers comes from its backend (struct
 * qlim_backend). The local one (qlim_local_backend, the default) keeps the
 * state in the struct itself. A shared one (the cluster: Redis) must answer
 * just as fast and never make the caller wait: it grants small batches of
 * tokens or leases ahead of need, asynchronously, keeps them in be_data,
 * and answers room/take/acquire from that grant; when the grant is empty it
 * says 0 with wait QLIM_WAIT_UNKNOWN and, when more arrives, calls
 * qlim_wakeup(), which runs the hook the scheduler installed
 * (qlim_set_wake_hook: a dispatch pass). Redis being unreachable degrades to
 * a per-host share of the limit, never to a stop.
 *
 * Cost: a limiter lives inside its owner (a queue, a virtual MTA, a source
 * address, a warm-up state): no allocation and no lookup per message; a
 * check is a few integer operations behind one indirect call. qlim_set()
 * with an unchanged limit does nothing.
 *
 * Owns: nothing beyond each limiter's own state and its backend's be_data.
 * SECURITY: none (numbers from the configuration and the clock only).
 */
#ifndef PMTA_QMGR_LIMIT_H
#define PMTA_QMGR_LIMIT_H

#include <stddef.h>
#include <stdint.h>

#define QLIM_PACING_MS    80u
#define QLIM_LATE_MAX_MS  20u        /* the lateness tolerance L, at most */
#define QLIM_UNLIMITED    UINT32_MAX /* qlim_room() of a limiter without a limit */
#define QLIM_WAIT_UNKNOWN UINT64_MAX /* qlim_wait_ns(): time alone will not tell */
#define QLIM_BASIS_MAX    96u

enum qlim_scope { QLIM_GLOBAL, QLIM_QUEUE, QLIM_VMTA, QLIM_SOURCE, QLIM_WARMUP };
enum qlim_kind { QLIM_RATE, QLIM_LEASE, QLIM_QUOTA };
/* what one unit is (the wording of the reason) */
enum qlim_unit { QLIM_MSGS, QLIM_CONNS, QLIM_BYTES };

/* qlim.flags */
#define QLIM_DEBT 0x01u /* RATE: one batch of any size while conformant (data volume) */

struct qlim_backend;

struct qlim {
    uint8_t scope;   /* enum qlim_scope */
    uint8_t kind;    /* enum qlim_kind */
    uint8_t unit;    /* enum qlim_unit */
    uint8_t flags;   /* QLIM_* */
    const char *key; /* the owner's string; lives as long as the limiter */
    /* the limit in force (qlim_set) */
    int64_t count;              /* units per period, leases, or units per window; <= 0: no limit */
    int64_t period_s;           /* RATE: the period */
    char basis[QLIM_BASIS_MAX]; /* what sets it, e.g. "backoff-max-msg-rate 5/s" */
    /* the local backend's state (a shared backend may use it for its grant) */
    uint64_t unit_ns; /* RATE: the cost of one unit, pacing margin included */
    uint64_t tat_ns;  /* RATE: theoretical arrival time of the next unit */
    uint32_t held;    /* LEASE: leases out */
    uint64_t used;    /* QUOTA: units taken in this window */
    uint64_t window;  /* QUOTA: the window's number (the owner's: a day) */
    const struct qlim_backend *be;
    void *be_data;
};

/*
 * A backend: the answers of its limiters. Every function runs on the loop
 * thread and returns at once; see the header comment for the contract of a
 * shared backend. qlim_* call them only for a limiter with a limit, and keep
 * the counts every backend shares themselves (held, used): acquire() says
 * whether one more lease may go out, release() is told one came back. set()
 * is called after the limit changed, forget() when the limiter goes away.
 */
struct qlim_backend {
    const char *name;
    uint32_t (*room)(struct qlim *l, uint64_t now_ns);
    void (*take)(struct qlim *l, uint64_t n, uint64_t now_ns);
    void (*sent)(struct qlim *l, uint64_t n, uint64_t sent_ns);
    uint64_t (*wait_ns)(struct qlim *l, uint64_t now_ns);
    int (*acquire)(struct qlim *l);
    void (*release)(struct qlim *l);
    void (*set)(struct qlim *l);
    void (*forget)(struct qlim *l);
};

extern const struct qlim_backend qlim_local_backend;

/* qlim_init - L as a limiter of KIND counting UNITs, named (SCOPE, KEY); no limit yet */
void qlim_init(struct qlim *l, enum qlim_scope scope, enum qlim_kind kind, enum qlim_unit unit,
               const char *key);
/* qlim_fini - L is going away (its backend forgets it); leases still out are dropped */
void qlim_fini(struct qlim *l);
/* qlim_use_backend - L's answers come from BE from now on (its state starts afresh) */
void qlim_use_backend(struct qlim *l, const struct qlim_backend *be);

/*
 * qlim_set - the limit in force: COUNT per PERIOD_S seconds (RATE), COUNT
 * leases (LEASE) or COUNT per window (QUOTA); COUNT <= 0 lifts it. BASIS
 * (copied, may be NULL) names what set it, for qlim_reason(). Nothing
 * happens when nothing changed.
 */
void qlim_set(struct qlim *l, int64_t count, int64_t period_s, const char *basis);
/* qlim_limited - has L a limit at all? */
static inline int
qlim_limited(const struct qlim *l)
{
    return l->count > 0;
}

/* qlim_room - units L allows now (RATE, QUOTA) or leases left (LEASE); QLIM_UNLIMITED if none */
uint32_t qlim_room(struct qlim *l, uint64_t now_ns);
/* qlim_take - N units went (RATE, QUOTA) */
void qlim_take(struct qlim *l, uint64_t n, uint64_t now_ns);
/*
 * qlim_sent - N units taken earlier went on the wire at SENT_NS (smtp-out's
 * CLOCK_MONOTONIC, the clock of uv_hrtime): RATE L allows nothing more before
 * SENT_NS + N*T
 */
void qlim_sent(struct qlim *l, uint64_t n, uint64_t sent_ns);
/* qlim_sent_all - qlim_sent on every RATE limiter of LIMS[0..NLIMS) */
void qlim_sent_all(struct qlim *const *lims, size_t nlims, uint64_t n, uint64_t sent_ns);
/* qlim_wait_ns - until L has room for one unit: 0 now, QLIM_WAIT_UNKNOWN when not by time */
uint64_t qlim_wait_ns(struct qlim *l, uint64_t now_ns);
/* qlim_acquire - one lease of L; 1 granted, 0 none left */
int qlim_acquire(struct qlim *l);
/* qlim_release - give back one lease of L */
void qlim_release(struct qlim *l);
/* qlim_held - leases of L out now */
static inline uint32_t
qlim_held(const struct qlim *l)
{
    return l->held;
}
/* qlim_quota_window - QUOTA L enters window WINDOW with USED units already taken (a restart) */
void qlim_quota_window(struct qlim *l, uint64_t window, uint64_t used);

/*
 * qlim_room_all - the least room of LIMS[0..N) (NULL entries are skipped) at
 * NOW_NS, and in *BINDING (may be NULL) the first limiter with that least
 * room when it is 0, else NULL
 */
uint32_t qlim_room_all(struct qlim *const *lims, size_t n, uint64_t now_ns, struct qlim **binding);
/* qlim_take_all - N units on every RATE and QUOTA limiter of LIMS[0..N) */
void qlim_take_all(struct qlim *const *lims, size_t nlims, uint64_t n, uint64_t now_ns);

/*
 * qlim_reason - why L holds back, in PowerMTA's words, into BUF; returns BUF:
 *   "message rate limit reached (based on max-msg-rate 100/s)"
 *   "connection limit reached (source-ip-max-smtp-out 4 for 127.0.0.21)"
 *   "warm-up cap reached: 100 of 100 today"
 */
const char *qlim_reason(const struct qlim *l, char *buf, size_t size);

/* qlim_set_wake_hook - what qlim_wakeup() runs (the scheduler's dispatch) */
void qlim_set_wake_hook(void (*hook)(void));
/* qlim_wakeup - a backend has room again where it said QLIM_WAIT_UNKNOWN */
void qlim_wakeup(void);

#endif
