/*
 * test_mxdns.c - unit tests for runtime/mxdns.c against a resolver in this
 * process (a libuv UDP socket on 127.0.0.1 that answers every query NXDOMAIN
 * after a delay): a burst of lookups never puts more than
 * MXDNS_INFLIGHT_MAX queries on the wire at once, yet every lookup is
 * answered (none times out, none is sent twice); a resolver destroyed with
 * lookups still waiting their turn cancels each of them once.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <uv.h>

#include "unit.h"

#include "mxdns.h"

#define BURST    300
#define HOLD_MS  10 /* the resolver answers a query this long after it came */
#define PEND_MAX 1024

struct pending {
    struct sockaddr_storage from;
    unsigned char q[512];
    size_t len;
    uint64_t at;
};

static uv_loop_t loop;

/* The resolver: counts what it has been asked and what it has not answered yet. */
static struct {
    uv_udp_t udp;
    uv_timer_t tick;
    int answer; /* 0: never answers */
    struct pending pend[PEND_MAX];
    size_t npend;
    unsigned received, most_outstanding;
    char addr[64];
} R;

/* The client. */
static struct {
    struct mxdns *dns;
    unsigned done, nxdomain, cancelled, other;
} C;

static void
on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    static char space[2048];

    (void)h;
    (void)suggested;
    buf->base = space;
    buf->len = sizeof space;
}

static void
on_query(uv_udp_t *udp, ssize_t n, const uv_buf_t *buf, const struct sockaddr *from, unsigned flags)
{
    struct pending *p;

    (void)udp;
    (void)flags;
    if (n < 12 || from == NULL || (size_t)n > sizeof p->q)
        return;
    assert_true(R.npend < PEND_MAX);
    p = &R.pend[R.npend++];
    memcpy(&p->from, from,
           from->sa_family == AF_INET ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6));
    memcpy(p->q, buf->base, (size_t)n);
    p->len = (size_t)n;
    p->at = uv_now(&loop);
    R.received++;
    if (R.npend > R.most_outstanding)
        R.most_outstanding = (unsigned)R.npend;
}

/* A reply on its way: libuv sends from these bytes later, when the socket takes them. */
struct reply {
    uv_udp_send_t req;
    unsigned char data[512];
};

static void
sent(uv_udp_send_t *req, int status)
{
    (void)status;
    free(req->data);
}

/* answer - P's query back as a response: QR and RA set, RCODE 3 (NXDOMAIN), no records */
static void
answer(const struct pending *p)
{
    struct reply *r = malloc(sizeof *r);
    uv_buf_t b;

    assert_non_null(r);
    memcpy(r->data, p->q, p->len);
    r->data[2] |= 0x80;
    r->data[3] = (unsigned char)((r->data[3] & 0x70) | 0x80 | 3);
    r->req.data = r;
    b = uv_buf_init((char *)r->data, (unsigned)p->len);
    assert_int_equal(uv_udp_send(&r->req, &R.udp, &b, 1, (const struct sockaddr *)&p->from, sent),
                     0);
}

static void
on_tick(uv_timer_t *t)
{
    size_t keep = 0;

    (void)t;
    for (size_t i = 0; i < R.npend; i++) {
        if (R.answer && uv_now(&loop) >= R.pend[i].at + HOLD_MS)
            answer(&R.pend[i]);
        else
            R.pend[keep++] = R.pend[i];
    }
    R.npend = keep;
}

static void
resolver_start(int answers)
{
    struct sockaddr_in sin;
    struct sockaddr_storage bound;
    int len = sizeof bound;

    memset(&R, 0, sizeof R);
    R.answer = answers;
    uv_ip4_addr("127.0.0.1", 0, &sin);
    assert_int_equal(uv_udp_init(&loop, &R.udp), 0);
    assert_int_equal(uv_udp_bind(&R.udp, (struct sockaddr *)&sin, 0), 0);
    assert_int_equal(uv_udp_getsockname(&R.udp, (struct sockaddr *)&bound, &len), 0);
    snprintf(R.addr, sizeof R.addr, "127.0.0.1:%u",
             ntohs(((struct sockaddr_in *)&bound)->sin_port));
    assert_int_equal(uv_udp_recv_start(&R.udp, on_alloc, on_query), 0);
    uv_timer_init(&loop, &R.tick);
    uv_timer_start(&R.tick, on_tick, 2, 2);
}

static void
resolver_stop(void)
{
    uv_timer_stop(&R.tick);
    uv_close((uv_handle_t *)&R.tick, NULL);
    uv_close((uv_handle_t *)&R.udp, NULL);
}

static void
on_mx(void *arg, enum mxdns_status status, const char *why, const struct mxdns_mx *mx, size_t n,
      unsigned ttl)
{
    (void)arg;
    (void)why;
    (void)mx;
    (void)n;
    (void)ttl;
    C.done++;
    if (status == MXDNS_NXDOMAIN)
        C.nxdomain++;
    else if (status == MXDNS_CANCELLED)
        C.cancelled++;
    else
        C.other++;
    if (C.done == BURST && R.answer)
        uv_stop(&loop); /* not inside c-ares's callback: the channel is destroyed after */
}

static void
client_start(void)
{
    struct mxdns_options o = { .name_servers = R.addr, .timeout_ms = 3000, .tries = 1 };
    char name[64];

    memset(&C, 0, sizeof C);
    assert_int_equal(mxdns_create(&loop, &o, &C.dns), 0);
    for (unsigned i = 0; i < BURST; i++) {
        snprintf(name, sizeof name, "d%u.burst.test", i);
        mxdns_mx(C.dns, name, on_mx, NULL);
    }
}

/* start - a loop, the resolver (answering or not) and a burst of lookups on it */
static void
start(int answers)
{
    assert_int_equal(uv_loop_init(&loop), 0);
    resolver_start(answers);
    client_start();
}

/* finish - the client's resolver is destroyed: close the rest; nothing may stay open */
static void
finish(void)
{
    resolver_stop();
    assert_int_equal(uv_run(&loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(uv_loop_close(&loop), 0);
}

/* a burst: at most MXDNS_INFLIGHT_MAX on the wire, every lookup answered, each asked once */
static void
test_burst_is_paced(void **state)
{
    (void)state;
    start(1);
    uv_run(&loop, UV_RUN_DEFAULT);
    mxdns_destroy(C.dns);
    finish();
    assert_int_equal(C.done, BURST);
    assert_int_equal(C.nxdomain, BURST);
    assert_int_equal(R.received, BURST);
    assert_true(R.most_outstanding <= MXDNS_INFLIGHT_MAX);
    assert_int_equal(R.most_outstanding, MXDNS_INFLIGHT_MAX); /* and the window is used */
}

/* destroyed while lookups wait their turn: each is cancelled, once */
static void
test_destroy_cancels_waiting(void **state)
{
    (void)state;
    start(0);
    uv_run(&loop, UV_RUN_NOWAIT);
    mxdns_destroy(C.dns);
    assert_int_equal(C.done, BURST);
    assert_int_equal(C.cancelled, BURST);
    finish();
    assert_true(R.received <= MXDNS_INFLIGHT_MAX);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        UNIT_TEST(test_burst_is_paced),
        UNIT_TEST(test_destroy_cancels_waiting),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
