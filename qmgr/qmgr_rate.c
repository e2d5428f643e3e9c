/*
 * qmgr_rate.c - smooth rate limits (max-msg-rate, max-connect-rate)
 *
 * A generic cell rate algorithm (GCRA) without burst tolerance: with a limit
 * of COUNT per PERIOD every unit costs T = PERIOD/COUNT, and TAT (theoretical
 * arrival time) is when the next unit is due. A batch of k units (the
 * recipients of one transaction) is conformant at NOW when k <= 1 +
 * floor((NOW - TAT) / T), i.e. it may only use slots that went unused, and it
 * moves TAT to max(TAT, NOW) + k*T.
 *
 * Why that bound: every unit emitted before NOW inside (NOW - PERIOD, NOW)
 * moved TAT forward by T from a point no earlier than its own emission, so
 * those units number fewer than COUNT - (NOW - TAT)/T. Adding at most
 * 1 + floor((NOW - TAT)/T) keeps every window of length PERIOD at or below
 * COUNT: no burst at interval edges, and an idle queue can send at once.
 *
 * Pacing margin: COUNT units are spread over PERIOD + JITTER_MS instead of
 * PERIOD. The limit is a promise about what the *receiver* sees, and the
 * time between our dispatch and its count varies: a unit that needs a new
 * connection (TCP, greeting, EHLO: after a 421 that closed the last one)
 * arrives tens of milliseconds later than one sent on an idle connection,
 * more so on a busy machine. COUNT+1 units span COUNT spacings, so they stay
 * out of one receiver-side window as long as the delays of the first and the
 * last differ by less than JITTER_MS, whatever COUNT is. That costs 8 % of
 * throughput on queues limited per second, 0.13 % per minute, nothing per
 * hour, and nothing on queues without a rate.
 *
 * Owns: nothing; the state lives in the queue (struct qrate).
 * SECURITY: none (numbers from the configuration only).
 */
#include "config.h"

#include "qmgr.h"

#define JITTER_MS 80u

/* unit_ns - nanoseconds per unit (with the pacing margin), or 0 when RATE is unlimited */
static uint64_t
unit_ns(const struct cfg_value *rate)
{
    if (!rate || rate->num <= 0 || rate->num2 <= 0)
        return 0;
    return ((uint64_t)rate->num2 * 1000000000u + JITTER_MS * 1000000u) / (uint64_t)rate->num;
}

uint32_t
qrate_allowed(const struct qrate *r, const struct cfg_value *rate, uint64_t now_ns)
{
    uint64_t t = unit_ns(rate), n;

    if (t == 0)
        return UINT32_MAX;
    if (now_ns < r->tat_ns)
        return 0;
    n = 1 + (now_ns - r->tat_ns) / t;
    /* An idle queue cannot save up more than one period's worth. */
    if (n > (uint64_t)rate->num)
        n = (uint64_t)rate->num;
    return n > UINT32_MAX ? UINT32_MAX : (uint32_t)n;
}

void
qrate_take(struct qrate *r, const struct cfg_value *rate, uint32_t n, uint64_t now_ns)
{
    uint64_t t = unit_ns(rate);

    if (t == 0)
        return;
    r->tat_ns = (r->tat_ns > now_ns ? r->tat_ns : now_ns) + t * n;
}

/*
 * qrate_sent - N units taken earlier went on the wire at SENT_NS (reported
 * by smtp-out): the next unit is due no earlier than SENT_NS + N*T. When a
 * send was late (a starved process, a slow connection) this spaces what
 * follows from the late one, instead of letting on-time sends catch up and
 * bunch up behind it at the receiver.
 */
void
qrate_sent(struct qrate *r, const struct cfg_value *rate, uint32_t n, uint64_t sent_ns)
{
    uint64_t t = unit_ns(rate), due;

    if (t == 0 || sent_ns == 0)
        return;
    due = sent_ns + t * n;
    if (due > r->tat_ns)
        r->tat_ns = due;
}

uint64_t
qrate_wait_ns(const struct qrate *r, const struct cfg_value *rate, uint64_t now_ns)
{
    if (unit_ns(rate) == 0 || now_ns >= r->tat_ns)
        return 0;
    return r->tat_ns - now_ns;
}
