/*
 * mxdns_answer.c - one DNS reply read into a struct dns_answer:
 * classified (permanent or temporary), its records (MX, A, AAAA, TLSA, TXT)
 * copied within bounds, its smallest TTL and its AD bit (contract in
 * mxdns_int.h)
 *
 * Pure functions over the reply's bytes: no I/O, no state (the fuzzing
 * entry point for DNS answers: dns_answer_parse).
 *
 * SECURITY: the reply comes from the network. c-ares parses MX, A, AAAA
 * and TXT records; the record walker here (TTLs, TLSA) reads the answer
 * section itself and checks every length before reading. Names longer than
 * MXDNS_NAME_MAX are dropped and counts capped, so a hostile server
 * cannot make us hold more than a fixed amount per lookup.
 */
#include "config.h"

#include <arpa/inet.h>
#include <arpa/nameser.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <ares.h>

#include "mxdns_int.h"

/* dns_status_from_ares - map a c-ares result to our two-way split */
static enum mxdns_status
dns_status_from_ares(int status)
{
    switch (status) {
    case ARES_SUCCESS:
        return MXDNS_OK;
    case ARES_ENODATA:
        return MXDNS_NODATA;
    case ARES_ENOTFOUND:
        return MXDNS_NXDOMAIN;
    case ARES_EDESTRUCTION:
    case ARES_ECANCELLED:
        return MXDNS_CANCELLED;
    default:
        return MXDNS_TEMPFAIL; /* SERVFAIL, REFUSED, timeout, ... */
    }
}

static const char *
dns_type_name(int type)
{
    switch (type) {
    case ns_t_mx:
        return "MX";
    case ns_t_a:
        return "A";
    case ns_t_aaaa:
        return "AAAA";
    case ns_t_txt:
        return "TXT";
    case DNS_T_TLSA:
        return "TLSA";
    }
    return "?";
}

void
dns_answer_fail(struct dns_answer *ans, enum mxdns_status status, const char *name, int type,
                const char *detail)
{
    ans->status = status;
    ans->n = 0;
    /* Truncation is acceptable: the text is for humans. */
    if (snprintf(ans->why, sizeof ans->why, "DNS %s lookup for %s: %s", dns_type_name(type), name,
                 detail) >= (int)sizeof ans->why)
        ans->why[sizeof ans->why - 1] = 0;
}

static unsigned
dns_get16(const unsigned char *p)
{
    return (unsigned)p[0] << 8 | p[1];
}

/* dns_skip_name - advance *P past one (possibly compressed) name; 0 or -1 */
static int
dns_skip_name(const unsigned char **p, const unsigned char *abuf, int alen)
{
    char *name;
    long enclen;

    if (ares_expand_name(*p, abuf, alen, &name, &enclen) != ARES_SUCCESS)
        return -1;
    ares_free_string(name);
    *p += enclen;
    return 0;
}

/*
 * dns_walk_answers - call FN for every record of the answer section (owner
 * name skipped): its type, TTL and RDATA. Returns 0, or -1 when the message
 * does not parse (FN may have run for the records before the damage).
 */
static int
dns_walk_answers(const unsigned char *abuf, int alen,
                 void (*fn)(void *ctx, unsigned type, unsigned long ttl, const unsigned char *rd,
                            unsigned rdlen),
                 void *ctx)
{
    const unsigned char *p = abuf + 12, *end = abuf + alen;
    unsigned qd, an, i;

    if (alen < 12)
        return -1;
    qd = dns_get16(abuf + 4);
    an = dns_get16(abuf + 6);
    for (i = 0; i < qd; i++) {
        if (dns_skip_name(&p, abuf, alen) < 0 || end - p < 4)
            return -1;
        p += 4;
    }
    for (i = 0; i < an; i++) {
        unsigned long ttl;
        unsigned type, rdlen;

        if (dns_skip_name(&p, abuf, alen) < 0 || end - p < 10)
            return -1;
        type = dns_get16(p);
        ttl = (unsigned long)p[4] << 24 | (unsigned long)p[5] << 16 | (unsigned long)p[6] << 8 |
              p[7];
        rdlen = dns_get16(p + 8);
        p += 10;
        if ((size_t)(end - p) < rdlen)
            return -1;
        fn(ctx, type, ttl, p, rdlen);
        p += rdlen;
    }
    return 0;
}

static void
dns_min_ttl_fn(void *ctx, unsigned type, unsigned long ttl, const unsigned char *rd, unsigned rdlen)
{
    unsigned *min = ctx;

    (void)type;
    (void)rd;
    (void)rdlen;
    if (ttl < *min)
        *min = (unsigned)ttl;
}

/*
 * dns_answer_min_ttl - the smallest TTL in the answer section, capped at CAP;
 * 0 when the message does not parse (then nothing is cached).
 */
static unsigned
dns_answer_min_ttl(const unsigned char *abuf, int alen, unsigned cap)
{
    unsigned min = cap;

    return dns_walk_answers(abuf, alen, dns_min_ttl_fn, &min) < 0 ? 0 : min;
}

/* dns_parse_mx - MX records into ANS; a lone "MX 0 ." is a null MX */
static void
dns_parse_mx(struct dns_answer *ans, const char *name, const unsigned char *abuf, int alen)
{
    struct ares_mx_reply *mx = NULL, *r;
    int status = ares_parse_mx_reply(abuf, alen, &mx);
    size_t nullmx = 0;

    if (status != ARES_SUCCESS) {
        dns_answer_fail(ans, dns_status_from_ares(status), name, ns_t_mx,
                        status == ARES_ENODATA ? "no MX records" : ares_strerror(status));
        if (mx)
            ares_free_data(mx);
        return;
    }
    ans->status = MXDNS_OK;
    for (r = mx; r; r = r->next) {
        size_t len = strlen(r->host);

        if (len == 0 || strcmp(r->host, ".") == 0) {
            nullmx++; /* RFC 7505: "." as exchange */
            continue;
        }
        if (len > MXDNS_NAME_MAX || ans->n >= MXDNS_MAX_MX)
            continue;
        ans->u.mx[ans->n].pref = r->priority;
        memcpy(ans->u.mx[ans->n].name, r->host, len + 1);
        ans->n++;
    }
    ares_free_data(mx);
    /* A null MX must stand alone (RFC 7505 section 3); if other MX records
     * came with it, the domain is misconfigured and we use the real ones. */
    if (ans->n == 0 && nullmx > 0)
        dns_answer_fail(ans, MXDNS_NULLMX, name, ns_t_mx, "null MX: domain does not accept mail");
    else if (ans->n == 0)
        dns_answer_fail(ans, MXDNS_NODATA, name, ns_t_mx, "no MX records");
    ans->ttl = dns_answer_min_ttl(abuf, alen, UINT32_MAX);
}

static void
dns_parse_a(struct dns_answer *ans, const char *name, int type, const unsigned char *abuf, int alen)
{
    struct ares_addrttl v4[MXDNS_MAX_ADDRS];
    struct ares_addr6ttl v6[MXDNS_MAX_ADDRS];
    int n = MXDNS_MAX_ADDRS, status, i;
    unsigned ttl = UINT32_MAX;

    if (type == ns_t_a)
        status = ares_parse_a_reply(abuf, alen, NULL, v4, &n);
    else
        status = ares_parse_aaaa_reply(abuf, alen, NULL, v6, &n);
    if (status != ARES_SUCCESS || n <= 0) {
        dns_answer_fail(ans, status == ARES_SUCCESS ? MXDNS_NODATA : dns_status_from_ares(status),
                        name, type,
                        status == ARES_SUCCESS || status == ARES_ENODATA ? "no address records"
                                                                         : ares_strerror(status));
        return;
    }
    ans->status = MXDNS_OK;
    for (i = 0; i < n && ans->n < MXDNS_MAX_ADDRS; i++) {
        struct sockaddr_storage *ss = &ans->u.addr[ans->n++];

        memset(ss, 0, sizeof *ss);
        if (type == ns_t_a) {
            struct sockaddr_in *sin = (struct sockaddr_in *)ss;
            sin->sin_family = AF_INET;
            sin->sin_addr = v4[i].ipaddr;
            if ((unsigned)v4[i].ttl < ttl)
                ttl = (unsigned)v4[i].ttl;
        } else {
            struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;
            sin6->sin6_family = AF_INET6;
            memcpy(&sin6->sin6_addr, &v6[i].ip6addr, sizeof sin6->sin6_addr);
            if ((unsigned)v6[i].ttl < ttl)
                ttl = (unsigned)v6[i].ttl;
        }
    }
    ans->ttl = ttl;
}

static void
dns_tlsa_fn(void *ctx, unsigned type, unsigned long ttl, const unsigned char *rd, unsigned rdlen)
{
    struct dns_answer *ans = ctx;
    struct mxdns_tlsa *t;

    if (type != DNS_T_TLSA || rdlen < 3 || rdlen - 3 > SMTPOUT_TLSA_DATA_MAX ||
        ans->n >= MXDNS_MAX_TLSA)
        return; /* the CNAMEs of a chain, and records we cannot keep */
    t = &ans->u.tlsa[ans->n++];
    t->usage = rd[0];
    t->selector = rd[1];
    t->mtype = rd[2];
    t->len = rdlen - 3;
    memcpy(t->data, rd + 3, t->len);
    if (ttl < ans->ttl)
        ans->ttl = (unsigned)ttl;
}

/* dns_parse_tlsa - TLSA records into ANS (RFC 6698 section 2.1: three bytes, then the data) */
static void
dns_parse_tlsa(struct dns_answer *ans, const char *name, const unsigned char *abuf, int alen)
{
    ans->status = MXDNS_OK;
    ans->ttl = UINT32_MAX;
    if (dns_walk_answers(abuf, alen, dns_tlsa_fn, ans) < 0)
        dns_answer_fail(ans, MXDNS_TEMPFAIL, name, DNS_T_TLSA, "malformed answer");
    else if (ans->n == 0)
        dns_answer_fail(ans, MXDNS_NODATA, name, DNS_T_TLSA, "no usable TLSA records");
}

/* dns_parse_txt - TXT records into ANS, each record's strings joined */
static void
dns_parse_txt(struct dns_answer *ans, const char *name, const unsigned char *abuf, int alen)
{
    struct ares_txt_ext *txt = NULL, *t;
    int status = ares_parse_txt_reply_ext(abuf, alen, &txt);
    size_t used = 0;

    if (status != ARES_SUCCESS) {
        dns_answer_fail(ans, dns_status_from_ares(status), name, ns_t_txt,
                        status == ARES_ENODATA ? "no TXT records" : ares_strerror(status));
        if (txt)
            ares_free_data(txt);
        return;
    }
    ans->status = MXDNS_OK;
    for (t = txt; t; t = t->next) {
        size_t len = t->length;

        if (t->record_start) {
            if (ans->n >= MXDNS_MAX_TXT)
                break;
            ans->n++;
            used = 0;
        } else if (ans->n == 0) {
            continue;
        }
        if (len > MXDNS_TXT_MAX - used)
            len = MXDNS_TXT_MAX - used;
        memcpy(ans->u.txt[ans->n - 1] + used, t->txt, len);
        used += len;
        ans->u.txt[ans->n - 1][used] = 0;
    }
    ares_free_data(txt);
    if (ans->n == 0)
        dns_answer_fail(ans, MXDNS_NODATA, name, ns_t_txt, "no TXT records");
    ans->ttl = dns_answer_min_ttl(abuf, alen, UINT32_MAX);
}

/*
 * dns_reply_status - what ares_query would have said of a reply ares_send
 * delivers as a success: NXDOMAIN, NODATA (no answer records), or success
 */
static int
dns_reply_status(int status, const unsigned char *abuf, int alen)
{
    if (status != ARES_SUCCESS)
        return status;
    if (abuf == NULL || alen < 12)
        return ARES_EBADRESP;
    switch (abuf[3] & 0x0f) {
    case ns_r_noerror:
        return dns_get16(abuf + 6) == 0 ? ARES_ENODATA : ARES_SUCCESS;
    case ns_r_nxdomain:
        return ARES_ENOTFOUND;
    case ns_r_servfail:
        return ARES_ESERVFAIL;
    case ns_r_refused:
        return ARES_EREFUSED;
    default:
        return ARES_EBADRESP;
    }
}

void
dns_answer_parse(struct dns_answer *ans, const char *name, int type, int status,
                 const unsigned char *abuf, int alen)
{
    int secure = status == ARES_SUCCESS && abuf && alen >= 12 && (abuf[3] & DNS_AD);

    status = dns_reply_status(status, abuf, alen);
    if (status != ARES_SUCCESS) {
        dns_answer_fail(ans, dns_status_from_ares(status), name, type,
                        status == ARES_ENOTFOUND ? "domain not found (NXDOMAIN)"
                        : status == ARES_ENODATA ? "no records of this type"
                                                 : ares_strerror(status));
    } else if (type == ns_t_mx) {
        dns_parse_mx(ans, name, abuf, alen);
    } else if (type == DNS_T_TLSA) {
        dns_parse_tlsa(ans, name, abuf, alen);
    } else if (type == ns_t_txt) {
        dns_parse_txt(ans, name, abuf, alen);
    } else {
        dns_parse_a(ans, name, type, abuf, alen);
    }
    ans->secure = secure;
}
