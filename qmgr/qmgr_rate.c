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
 * Pacing margin: units are spaced 5 % wider than PERIOD/COUNT. The limit is a
 * promise about what the *receiver* sees, and the time between our dispatch
 * and its count (connection setup, a busy machine) varies by some
 * milliseconds per message; without a margin two slow-then-fast messages can
 * put COUNT+1 of them into one receiver-side window. 5 % absorbs 50 ms of
 * such jitter at 10/s and costs 5 % of throughput on rate-limited queues only.
 *
 * Owns: nothing; the state lives in the queue (struct qrate).
 * SECURITY: none (numbers from the configuration only).
 */
#include "config.h"

#include "qmgr.h"

/* unit_ns - nanoseconds per unit (with the pacing margin), or 0 when RATE is unlimited */
static uint64_t
unit_ns(const struct cfg_value *rate)
{
    uint64_t t;

    if (!rate || rate->num <= 0 || rate->num2 <= 0)
        return 0;
    t = (uint64_t)rate->num2 * 1000000000u / (uint64_t)rate->num;
    return t + t / 20;
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

uint64_t
qrate_wait_ns(const struct qrate *r, const struct cfg_value *rate, uint64_t now_ns)
{
    if (unit_ns(rate) == 0 || now_ns >= r->tat_ns)
        return 0;
    return r->tat_ns - now_ns;
}
