/*
 * mxdns.c - asynchronous DNS for delivery (c-ares driven by libuv)
 *
 * What it does: MX, A/AAAA, TLSA and TXT lookups through one c-ares channel
 * whose sockets are watched by uv_poll_t handles and whose retransmission
 * timeouts run on one uv_timer_t; every query asks for the AD bit (our own
 * query buffer through ares_send); a small TTL cache. At most
 * MXDNS_INFLIGHT_MAX queries are on the wire at once; the others wait their
 * turn in order: a thousand new domains at once must not become a thousand
 * datagrams in one burst, which a resolver's socket buffer drops (each lost
 * query then costs its timeout and, after the tries, a deferral). Answers are read into
 * struct dns_answer by mxdns_answer.c. See mxdns.h for the
 * contract.
 *
 * What it owns: the c-ares channel, one uv_poll_t per c-ares socket, the
 * timer, the cache, and one heap request per lookup in flight or waiting. The resolver
 * memory is freed when its last handle has closed (libuv rule: free only in
 * the close callback).
 *
 * SECURITY: answers come from the network; mxdns_answer.c reads them
 * (bounded). The AD bit is only as good as the path to the configured
 * resolver (see the header). Names longer than
 * MXDNS_NAME_MAX are dropped, MX and address counts are capped, so a hostile server cannot
 * make us hold more than a fixed amount per lookup.
 */
#include "config.h"

#include <arpa/inet.h>
#include <arpa/nameser.h>
#include <ctype.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <ares.h>

#include "msg.h"
#include "xalloc.h"
#include "mxdns_int.h"

typedef void (*dns_raw_cb)(void *arg, const struct dns_answer *ans);

struct dns_cache_entry {
    struct dns_cache_entry *next;
    int type;
    uint64_t expires_ms;
    char name[MXDNS_NAME_MAX + 1];
    struct dns_answer answer;
};

struct dns_poll {
    struct dns_poll *next;
    struct mxdns *dns;
    ares_socket_t fd;
    uv_poll_t handle;
};

struct mxdns {
    uv_loop_t *loop;
    ares_channel channel;
    uv_timer_t timer;
    struct dns_poll *polls;
    unsigned open_handles; /* timer + polls not yet closed */
    int destroying;
    uint64_t rng;
    unsigned cache_max_ttl;
    unsigned cache_negative_ttl;
    size_t cache_max_entries;
    size_t cache_count;
    struct dns_cache_entry *cache;
    unsigned inflight;                          /* queries handed to c-ares */
    struct dns_raw_req *waiting, **waiting_end; /* the others, oldest first */
};

/* One query, in flight or waiting for its turn. */
struct dns_raw_req {
    struct dns_raw_req *next; /* while waiting */
    struct mxdns *dns;
    int type;
    char name[MXDNS_NAME_MAX + 1];
    dns_raw_cb cb;
    void *arg;
};

static void dns_update_timer(struct mxdns *dns);

/* --- classification --------------------------------------------------------------- */

int
mxdns_permanent(enum mxdns_status status)
{
    switch (status) {
    case MXDNS_NODATA:
    case MXDNS_NXDOMAIN:
    case MXDNS_NULLMX:
    case MXDNS_NOMX:
        return 1;
    default:
        return 0;
    }
}

const char *
mxdns_status_name(enum mxdns_status status)
{
    switch (status) {
    case MXDNS_OK:
        return "ok";
    case MXDNS_NODATA:
        return "nodata";
    case MXDNS_NXDOMAIN:
        return "nxdomain";
    case MXDNS_NULLMX:
        return "nullmx";
    case MXDNS_NOMX:
        return "nomx";
    case MXDNS_TEMPFAIL:
        return "tempfail";
    case MXDNS_CANCELLED:
        return "cancelled";
    }
    return "?";
}

/* --- libuv glue: sockets and the retransmission timer ----------------------------- */

static void
dns_handle_closed(uv_handle_t *handle)
{
    struct mxdns *dns;

    if (handle->type == UV_POLL) {
        struct dns_poll *p = handle->data;
        dns = p->dns;
        free(p);
    } else {
        dns = handle->data;
    }
    if (--dns->open_handles == 0 && dns->destroying)
        free(dns);
}

static void
dns_poll_cb(uv_poll_t *handle, int status, int events)
{
    struct dns_poll *p = handle->data;
    struct mxdns *dns = p->dns;
    ares_socket_t rfd = ARES_SOCKET_BAD, wfd = ARES_SOCKET_BAD;

    /* On a poll error let c-ares read: it will see the error and retry. */
    if (status < 0 || (events & UV_READABLE))
        rfd = p->fd;
    if (events & UV_WRITABLE)
        wfd = p->fd;
    ares_process_fd(dns->channel, rfd, wfd);
    dns_update_timer(dns);
}

static struct dns_poll **
dns_poll_find(struct mxdns *dns, ares_socket_t fd)
{
    struct dns_poll **pp;

    for (pp = &dns->polls; *pp; pp = &(*pp)->next)
        if ((*pp)->fd == fd)
            return pp;
    return pp;
}

/* dns_sock_state - c-ares tells us which sockets to watch, and how */
static void
dns_sock_state(void *data, ares_socket_t fd, int readable, int writable)
{
    struct mxdns *dns = data;
    struct dns_poll **pp = dns_poll_find(dns, fd);
    struct dns_poll *p = *pp;
    int events = (readable ? UV_READABLE : 0) | (writable ? UV_WRITABLE : 0);

    if (events == 0) {
        if (p) {
            *pp = p->next;
            uv_poll_stop(&p->handle);
            uv_close((uv_handle_t *)&p->handle, dns_handle_closed);
        }
        return;
    }
    if (p == NULL) {
        p = xcalloc(1, sizeof *p);
        p->dns = dns;
        p->fd = fd;
        if (uv_poll_init_socket(dns->loop, &p->handle, fd) != 0) {
            msg_warn("mxdns: cannot watch resolver socket %d", fd);
            free(p);
            return;
        }
        p->handle.data = p;
        p->next = dns->polls;
        dns->polls = p;
        dns->open_handles++;
    }
    uv_poll_start(&p->handle, events, dns_poll_cb);
}

static void
dns_timer_cb(uv_timer_t *timer)
{
    struct mxdns *dns = timer->data;

    ares_process_fd(dns->channel, ARES_SOCKET_BAD, ARES_SOCKET_BAD);
    dns_update_timer(dns);
}

/* dns_update_timer - arm the timer for c-ares' next retransmission, if any */
static void
dns_update_timer(struct mxdns *dns)
{
    struct timeval tv, *next;
    uint64_t ms;

    if (dns->destroying)
        return;
    next = ares_timeout(dns->channel, NULL, &tv);
    if (next == NULL) {
        uv_timer_stop(&dns->timer);
        return;
    }
    /* +1 ms so that we never spin on a timeout that rounds down to zero. */
    ms = (uint64_t)next->tv_sec * 1000 + (uint64_t)next->tv_usec / 1000 + 1;
    uv_timer_start(&dns->timer, dns_timer_cb, ms, 0);
}

/* --- cache ------------------------------------------------------------------------ */

static void
dns_lowercase(char *dst, const char *src, size_t size)
{
    size_t i;

    for (i = 0; i + 1 < size && src[i]; i++)
        dst[i] = (char)tolower((unsigned char)src[i]);
    dst[i] = 0;
}

static const struct dns_answer *
dns_cache_get(struct mxdns *dns, const char *name, int type)
{
    struct dns_cache_entry **pp = &dns->cache, *e;
    uint64_t now = uv_now(dns->loop);

    while ((e = *pp) != NULL) {
        if (e->expires_ms <= now) {
            *pp = e->next;
            free(e);
            dns->cache_count--;
            continue;
        }
        if (e->type == type && strcmp(e->name, name) == 0)
            return &e->answer;
        pp = &e->next;
    }
    return NULL;
}

/* dns_cache_evict_one - drop the entry that expires first */
static void
dns_cache_evict_one(struct mxdns *dns)
{
    struct dns_cache_entry **pp, **victim = NULL, *e;

    for (pp = &dns->cache; *pp; pp = &(*pp)->next)
        if (victim == NULL || (*pp)->expires_ms < (*victim)->expires_ms)
            victim = pp;
    if (victim) {
        e = *victim;
        *victim = e->next;
        free(e);
        dns->cache_count--;
    }
}

static void
dns_cache_put(struct mxdns *dns, const char *name, int type, const struct dns_answer *ans)
{
    struct dns_cache_entry *e;
    unsigned ttl;

    if (dns->cache_max_ttl == 0 || !(ans->status == MXDNS_OK || mxdns_permanent(ans->status)))
        return;
    ttl = ans->status == MXDNS_OK ? ans->ttl : dns->cache_negative_ttl;
    if (ttl > dns->cache_max_ttl)
        ttl = dns->cache_max_ttl;
    if (ttl == 0)
        return;
    if (dns->cache_count >= dns->cache_max_entries)
        dns_cache_evict_one(dns);
    e = xcalloc(1, sizeof *e);
    e->type = type;
    e->expires_ms = uv_now(dns->loop) + (uint64_t)ttl * 1000;
    snprintf(e->name, sizeof e->name, "%s", name);
    e->answer = *ans;
    e->next = dns->cache;
    dns->cache = e;
    dns->cache_count++;
}

/* --- raw queries ------------------------------------------------------------------ */

static void dns_send(struct mxdns *dns, struct dns_raw_req *req);

static void
dns_raw_done(void *arg, int status, int timeouts, unsigned char *abuf, int alen)
{
    struct dns_raw_req *req = arg;
    struct mxdns *dns = req->dns;
    struct dns_answer *ans = xcalloc(1, sizeof *ans);

    (void)timeouts;
    dns_answer_parse(ans, req->name, req->type, status, abuf, alen);
    if (!dns->destroying)
        dns_cache_put(dns, req->name, req->type, ans);
    req->cb(req->arg, ans);
    free(ans);
    free(req);
}

/* dns_query_done - c-ares is done with a query: its answer, then the next one waiting */
static void
dns_query_done(void *arg, int status, int timeouts, unsigned char *abuf, int alen)
{
    struct dns_raw_req *req = arg, *next;
    struct mxdns *dns = req->dns;

    dns->inflight--;
    dns_raw_done(req, status, timeouts, abuf, alen);
    while (!dns->destroying && dns->inflight < MXDNS_INFLIGHT_MAX && (next = dns->waiting)) {
        if ((dns->waiting = next->next) == NULL)
            dns->waiting_end = &dns->waiting;
        dns_send(dns, next);
    }
}

/* dns_cancel_waiting - the resolver shuts down: every query still waiting fails */
static void
dns_cancel_waiting(struct mxdns *dns)
{
    struct dns_raw_req *req;

    while ((req = dns->waiting) != NULL) {
        dns->waiting = req->next;
        dns_raw_done(req, ARES_EDESTRUCTION, 0, NULL, 0);
    }
    dns->waiting_end = &dns->waiting;
}

/*
 * dns_send - REQ's query with RD and AD set (RFC 6840 5.7: a validating
 * resolver then reports the AD bit) through ares_send; not ares_search: no
 * search list, the name is absolute
 */
static void
dns_send(struct mxdns *dns, struct dns_raw_req *req)
{
    unsigned char *qbuf = NULL;
    int qlen = 0, status;

    status = ares_create_query(req->name, ns_c_in, req->type, 0, 1, &qbuf, &qlen, 0);
    if (status != ARES_SUCCESS || qlen < 12) {
        if (qbuf)
            ares_free_string(qbuf);
        dns_raw_done(req, status != ARES_SUCCESS ? status : ARES_EBADQUERY, 0, NULL, 0);
        return;
    }
    qbuf[3] |= DNS_AD;
    dns->inflight++;
    ares_send(dns->channel, qbuf, qlen, dns_query_done, req);
    ares_free_string(qbuf);
}

/* dns_raw_query - one query of TYPE for NAME, from the cache if possible */
static void
dns_raw_query(struct mxdns *dns, const char *name, int type, dns_raw_cb cb, void *arg)
{
    struct dns_raw_req *req;
    const struct dns_answer *cached;
    char key[MXDNS_NAME_MAX + 1];
    size_t len = strlen(name);

    if (len > 0 && name[len - 1] == '.')
        len--; /* "example.com." and "example.com" are one name */
    if (dns->destroying || len == 0 || len > MXDNS_NAME_MAX) {
        struct dns_answer *ans = xcalloc(1, sizeof *ans);
        dns_answer_fail(ans, dns->destroying ? MXDNS_CANCELLED : MXDNS_NXDOMAIN, "(invalid name)",
                        type, dns->destroying ? "resolver shut down" : "invalid domain name");
        cb(arg, ans);
        free(ans);
        return;
    }
    memcpy(key, name, len);
    key[len] = 0;
    dns_lowercase(key, key, sizeof key);
    if ((cached = dns_cache_get(dns, key, type)) != NULL) {
        cb(arg, cached);
        return;
    }
    req = xcalloc(1, sizeof *req);
    req->dns = dns;
    req->type = type;
    memcpy(req->name, key, len + 1);
    req->cb = cb;
    req->arg = arg;
    if (dns->inflight >= MXDNS_INFLIGHT_MAX) {
        *dns->waiting_end = req;
        dns->waiting_end = &req->next;
        return;
    }
    dns_send(dns, req);
    dns_update_timer(dns);
}

/* --- address lookups: A and AAAA combined ----------------------------------------- */

struct dns_addr_req {
    struct mxdns *dns;
    mxdns_addr_cb cb;
    void *arg;
    int pending;
    int want_a, want_aaaa;
    struct dns_answer a, aaaa;
};

static void
dns_addr_finish(struct dns_addr_req *req)
{
    struct sockaddr_storage addrs[MXDNS_MAX_ADDRS];
    const struct dns_answer *first = req->want_a ? &req->a : &req->aaaa;
    const struct dns_answer *worst;
    size_t n = 0, i;
    enum mxdns_status status;

    for (i = 0; req->want_a && i < req->a.n && n < MXDNS_MAX_ADDRS; i++)
        addrs[n++] = req->a.u.addr[i];
    for (i = 0; req->want_aaaa && i < req->aaaa.n && n < MXDNS_MAX_ADDRS; i++)
        addrs[n++] = req->aaaa.u.addr[i];
    int secure = (!req->want_a || req->a.secure) && (!req->want_aaaa || req->aaaa.secure);

    if (n > 0) {
        req->cb(req->arg, MXDNS_OK, secure, "", addrs, n);
    } else {
        /* No address: report the most hopeful failure (temporary beats
         * permanent: a SERVFAIL on AAAA must not turn NODATA on A into a bounce). */
        worst = first;
        if (req->want_a && req->want_aaaa && !mxdns_permanent(req->aaaa.status))
            worst = &req->aaaa;
        if (req->want_a && !mxdns_permanent(req->a.status))
            worst = &req->a;
        status = worst->status;
        req->cb(req->arg, status, secure, worst->why, NULL, 0);
    }
    free(req);
}

static void
dns_addr_a_done(void *arg, const struct dns_answer *ans)
{
    struct dns_addr_req *req = arg;

    req->a = *ans;
    if (--req->pending == 0)
        dns_addr_finish(req);
}

static void
dns_addr_aaaa_done(void *arg, const struct dns_answer *ans)
{
    struct dns_addr_req *req = arg;

    req->aaaa = *ans;
    if (--req->pending == 0)
        dns_addr_finish(req);
}

void
mxdns_addr(struct mxdns *dns, const char *name, int family, mxdns_addr_cb cb, void *arg)
{
    struct dns_addr_req *req = xcalloc(1, sizeof *req);

    req->dns = dns;
    req->cb = cb;
    req->arg = arg;
    req->want_a = family != AF_INET6;
    req->want_aaaa = family != AF_INET;
    /* Count both first: either answer may arrive synchronously. */
    req->pending = req->want_a + req->want_aaaa;
    if (req->want_a)
        dns_raw_query(dns, name, ns_t_a, dns_addr_a_done, req);
    if (req->want_aaaa)
        dns_raw_query(dns, name, ns_t_aaaa, dns_addr_aaaa_done, req);
}

/* --- MX hosts with addresses ------------------------------------------------------ */

struct dns_mx_req;

struct dns_mx_host_req {
    struct dns_mx_req *mx;
    size_t index;
};

struct dns_mx_req {
    struct mxdns *dns;
    mxdns_mx_hosts_cb cb;
    void *arg;
    int family;
    int allow_implicit;
    int mx_secure; /* the MX RRset had the AD bit */
    char domain[MXDNS_NAME_MAX + 1];
    size_t nhosts;
    size_t pending;
    struct mxdns_host hosts[MXDNS_MAX_MX];
    struct dns_mx_host_req sub[MXDNS_MAX_MX];
};

static uint64_t
dns_random(struct mxdns *dns)
{
    /* xorshift64*: only for shuffling equal-preference MX hosts */
    dns->rng ^= dns->rng >> 12;
    dns->rng ^= dns->rng << 25;
    dns->rng ^= dns->rng >> 27;
    return dns->rng * 2685821657736338717ULL;
}

/* dns_mx_sort - by preference; Fisher-Yates shuffle first makes ties random */
static void
dns_mx_sort(struct mxdns *dns, struct mxdns_host *h, size_t n)
{
    size_t i, j;
    struct mxdns_host tmp;

    for (i = n; i > 1; i--) {
        j = (size_t)(dns_random(dns) % i);
        tmp = h[i - 1];
        h[i - 1] = h[j];
        h[j] = tmp;
    }
    /* Stable insertion sort keeps the shuffled order among equals. */
    for (i = 1; i < n; i++) {
        tmp = h[i];
        for (j = i; j > 0 && h[j - 1].pref > tmp.pref; j--)
            h[j] = h[j - 1];
        h[j] = tmp;
    }
}

static void
dns_mx_finish(struct dns_mx_req *req)
{
    req->cb(req->arg, MXDNS_OK, "", req->hosts, req->nhosts);
    free(req);
}

static void
dns_mx_host_addr_done(void *arg, enum mxdns_status status, int secure, const char *why,
                      const struct sockaddr_storage *addrs, size_t naddrs)
{
    struct dns_mx_host_req *sub = arg;
    struct dns_mx_req *req = sub->mx;
    struct mxdns_host *h = &req->hosts[sub->index];

    (void)why;
    h->secure = req->mx_secure && secure;
    h->addr_status = status;
    h->naddrs = naddrs;
    if (naddrs)
        memcpy(h->addrs, addrs, naddrs * sizeof *addrs);
    if (--req->pending == 0)
        dns_mx_finish(req);
}

/* dns_mx_implicit_done - the domain's own addresses, as its implicit MX */
static void
dns_mx_implicit_done(void *arg, enum mxdns_status status, int secure, const char *why,
                     const struct sockaddr_storage *addrs, size_t naddrs)
{
    struct dns_mx_req *req = arg;
    struct mxdns_host *h = &req->hosts[0];

    if (status != MXDNS_OK) {
        req->cb(req->arg, status, why, NULL, 0);
        free(req);
        return;
    }
    req->nhosts = 1;
    h->implicit = 1;
    h->pref = 0;
    snprintf(h->name, sizeof h->name, "%s", req->domain);
    h->addr_status = MXDNS_OK;
    h->secure = req->mx_secure && secure; /* the validated denial of MX, and the addresses */
    h->naddrs = naddrs;
    memcpy(h->addrs, addrs, naddrs * sizeof *addrs);
    dns_mx_finish(req);
}

static void
dns_mx_records_done(void *arg, const struct dns_answer *ans)
{
    struct dns_mx_req *req = arg;
    size_t i;

    req->mx_secure = ans->secure;
    if (ans->status == MXDNS_NODATA) {
        if (!req->allow_implicit) {
            req->cb(req->arg, MXDNS_NOMX, ans->why, NULL, 0);
            free(req);
            return;
        }
        mxdns_addr(req->dns, req->domain, req->family, dns_mx_implicit_done, req);
        return;
    }
    if (ans->status != MXDNS_OK) {
        req->cb(req->arg, ans->status, ans->why, NULL, 0);
        free(req);
        return;
    }
    req->nhosts = ans->n;
    for (i = 0; i < ans->n; i++) {
        req->hosts[i].pref = ans->u.mx[i].pref;
        memcpy(req->hosts[i].name, ans->u.mx[i].name, sizeof req->hosts[i].name);
        req->hosts[i].addr_status = MXDNS_TEMPFAIL;
    }
    dns_mx_sort(req->dns, req->hosts, req->nhosts);
    /* Count all lookups before starting any: answers may come synchronously. */
    req->pending = req->nhosts;
    for (i = 0; i < req->nhosts; i++) {
        req->sub[i].mx = req;
        req->sub[i].index = i;
    }
    for (i = 0; i < req->nhosts; i++)
        mxdns_addr(req->dns, req->hosts[i].name, req->family, dns_mx_host_addr_done, &req->sub[i]);
}

void
mxdns_mx_hosts(struct mxdns *dns, const char *domain, int family, int allow_implicit,
               mxdns_mx_hosts_cb cb, void *arg)
{
    struct dns_mx_req *req = xcalloc(1, sizeof *req);
    size_t len = strlen(domain);

    req->dns = dns;
    req->cb = cb;
    req->arg = arg;
    req->family = family;
    req->allow_implicit = allow_implicit;
    if (len > MXDNS_NAME_MAX)
        len = MXDNS_NAME_MAX;
    memcpy(req->domain, domain, len);
    req->domain[len] = 0;
    dns_raw_query(dns, req->domain, ns_t_mx, dns_mx_records_done, req);
}

/* --- MX records alone (qmgr's rollups) ------------------------------------------------ */

struct dns_mx_only_req {
    mxdns_mx_cb cb;
    void *arg;
};

static void
dns_mx_only_done(void *arg, const struct dns_answer *ans)
{
    struct dns_mx_only_req *req = arg;
    struct mxdns_mx mx[MXDNS_MAX_MX];
    size_t n = 0;

    if (ans->status == MXDNS_OK) {
        for (; n < ans->n; n++) {
            size_t len;

            mx[n].pref = ans->u.mx[n].pref;
            dns_lowercase(mx[n].name, ans->u.mx[n].name, sizeof mx[n].name);
            if ((len = strlen(mx[n].name)) > 1 && mx[n].name[len - 1] == '.')
                mx[n].name[len - 1] = 0;
        }
        /* by preference; stable, so equals keep the answer's order */
        for (size_t i = 1; i < n; i++) {
            struct mxdns_mx tmp = mx[i];
            size_t j;

            for (j = i; j > 0 && mx[j - 1].pref > tmp.pref; j--)
                mx[j] = mx[j - 1];
            mx[j] = tmp;
        }
    }
    req->cb(req->arg, ans->status, ans->why, n ? mx : NULL, n,
            ans->status == MXDNS_OK ? ans->ttl : 0);
    free(req);
}

void
mxdns_mx(struct mxdns *dns, const char *domain, mxdns_mx_cb cb, void *arg)
{
    struct dns_mx_only_req *req = xcalloc(1, sizeof *req);

    req->cb = cb;
    req->arg = arg;
    dns_raw_query(dns, domain, ns_t_mx, dns_mx_only_done, req);
}

/* --- TLSA and TXT ------------------------------------------------------------------ */

struct dns_cb_req {
    void *cb;
    void *arg;
};

static void
dns_tlsa_done(void *arg, const struct dns_answer *ans)
{
    struct dns_cb_req *req = arg;
    mxdns_tlsa_cb cb = (mxdns_tlsa_cb)req->cb;

    cb(req->arg, ans->status, ans->secure, ans->why, ans->status == MXDNS_OK ? ans->u.tlsa : NULL,
       ans->n);
    free(req);
}

void
mxdns_tlsa(struct mxdns *dns, const char *host, unsigned port, mxdns_tlsa_cb cb, void *arg)
{
    struct dns_cb_req *req = xcalloc(1, sizeof *req);
    char name[MXDNS_NAME_MAX + 32];

    req->cb = (void *)cb;
    req->arg = arg;
    snprintf(name, sizeof name, "_%u._tcp.%s", port, host);
    dns_raw_query(dns, name, DNS_T_TLSA, dns_tlsa_done, req); /* too long: "invalid name" */
}

static void
dns_txt_done(void *arg, const struct dns_answer *ans)
{
    struct dns_cb_req *req = arg;
    mxdns_txt_cb cb = (mxdns_txt_cb)req->cb;
    const char *txts[MXDNS_MAX_TXT];

    for (size_t i = 0; i < ans->n && i < MXDNS_MAX_TXT; i++)
        txts[i] = ans->u.txt[i];
    cb(req->arg, ans->status, ans->why, txts, ans->status == MXDNS_OK ? ans->n : 0);
    free(req);
}

void
mxdns_txt(struct mxdns *dns, const char *name, mxdns_txt_cb cb, void *arg)
{
    struct dns_cb_req *req = xcalloc(1, sizeof *req);

    req->cb = (void *)cb;
    req->arg = arg;
    dns_raw_query(dns, name, ns_t_txt, dns_txt_done, req);
}

/* --- life cycle ------------------------------------------------------------------- */

int
mxdns_create(uv_loop_t *loop, const struct mxdns_options *opts, struct mxdns **out)
{
    struct mxdns *dns = xcalloc(1, sizeof *dns);
    struct ares_options ao;
    int optmask, status;
    char lookups[] = "b"; /* DNS only: never /etc/hosts */

    status = ares_library_init(ARES_LIB_INIT_ALL);
    if (status != ARES_SUCCESS) {
        free(dns);
        return -EIO;
    }
    dns->loop = loop;
    dns->rng = uv_hrtime() ^ ((uint64_t)getpid() << 32) ^ (uintptr_t)dns;
    if (dns->rng == 0)
        dns->rng = 0x9e3779b97f4a7c15ULL;
    dns->cache_max_ttl = opts->cache_max_ttl;
    dns->cache_negative_ttl = opts->cache_negative_ttl ? opts->cache_negative_ttl : 60;
    dns->cache_max_entries = opts->cache_max_entries ? opts->cache_max_entries : 256;
    dns->waiting_end = &dns->waiting;

    memset(&ao, 0, sizeof ao);
    ao.sock_state_cb = dns_sock_state;
    ao.sock_state_cb_data = dns;
    ao.timeout = opts->timeout_ms ? (int)opts->timeout_ms : 3000;
    ao.tries = opts->tries ? (int)opts->tries : 2;
    ao.lookups = lookups;
    ao.domains = NULL;
    ao.ndomains = 0;
    optmask = ARES_OPT_SOCK_STATE_CB | ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES | ARES_OPT_LOOKUPS |
              ARES_OPT_DOMAINS;
    status = ares_init_options(&dns->channel, &ao, optmask);
    if (status != ARES_SUCCESS) {
        msg_warn("mxdns: c-ares init: %s", ares_strerror(status));
        goto fail_library;
    }
    if (opts->name_servers && *opts->name_servers) {
        status = ares_set_servers_ports_csv(dns->channel, opts->name_servers);
        if (status != ARES_SUCCESS) {
            msg_warn("mxdns: bad name server list \"%s\": %s", opts->name_servers,
                     ares_strerror(status));
            ares_destroy(dns->channel);
            ares_library_cleanup();
            free(dns);
            return -EINVAL;
        }
    }
    uv_timer_init(loop, &dns->timer);
    dns->timer.data = dns;
    dns->open_handles = 1;
    *out = dns;
    return 0;

fail_library:
    ares_library_cleanup();
    free(dns);
    return -EIO;
}

void
mxdns_destroy(struct mxdns *dns)
{
    struct dns_cache_entry *e;
    struct dns_poll *p;

    if (dns == NULL)
        return;
    dns->destroying = 1;
    /* Pending callbacks run now with ARES_EDESTRUCTION (-> CANCELLED). */
    ares_destroy(dns->channel);
    dns_cancel_waiting(dns);
    ares_library_cleanup();
    while ((p = dns->polls) != NULL) { /* normally emptied by ares_destroy */
        dns->polls = p->next;
        uv_poll_stop(&p->handle);
        uv_close((uv_handle_t *)&p->handle, dns_handle_closed);
    }
    while ((e = dns->cache) != NULL) {
        dns->cache = e->next;
        free(e);
    }
    uv_timer_stop(&dns->timer);
    uv_close((uv_handle_t *)&dns->timer, dns_handle_closed);
}
