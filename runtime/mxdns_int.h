/*
 * mxdns_int.h - what mxdns.c and mxdns_answer.c share (not
 * an API: mxdns.h is the contract)
 *
 * mxdns.c runs the lookups (c-ares on libuv, the cache, MX hosts with
 * their addresses); mxdns_answer.c turns one reply into a struct
 * dns_answer, already classified. The answer reader is a pure function of
 * the reply's bytes (a fuzzing entry point).
 *
 * SECURITY: struct dns_answer holds only bounded copies (names, counts and
 * record data are capped); nothing in it points into the reply.
 */
#ifndef PMTA_SMTPOUT_DNS_INT_H
#define PMTA_SMTPOUT_DNS_INT_H

#include "mxdns.h"

#define DNS_T_TLSA 52    /* not in every arpa/nameser.h */
#define DNS_AD     0x20u /* the AD bit in the fourth header byte */

/* One raw answer: MX, address, TLSA or TXT records, already classified. */
struct dns_answer {
    enum mxdns_status status;
    int secure; /* the reply had the AD bit */
    char why[160];
    unsigned ttl; /* seconds the answer may be cached; 0 = don't */
    size_t n;
    union {
        struct {
            unsigned pref;
            char name[MXDNS_NAME_MAX + 1];
        } mx[MXDNS_MAX_MX];
        struct sockaddr_storage addr[MXDNS_MAX_ADDRS];
        struct mxdns_tlsa tlsa[MXDNS_MAX_TLSA];
        char txt[MXDNS_MAX_TXT][MXDNS_TXT_MAX + 1];
    } u;
};

/*
 * dns_answer_parse - the c-ares outcome STATUS and reply ABUF/ALEN of a query
 * of TYPE for NAME into ANS: the status (NXDOMAIN, NODATA, SERVFAIL, ...,
 * as ares_query would say them, since ares_send does not), the records,
 * the smallest TTL and the AD bit
 */
void dns_answer_parse(struct dns_answer *ans, const char *name, int type, int status,
                      const unsigned char *abuf, int alen);
/* dns_answer_fail - ANS is a failure STATUS: "DNS TYPE lookup for NAME: DETAIL" */
void dns_answer_fail(struct dns_answer *ans, enum mxdns_status status, const char *name, int type,
                     const char *detail);

#endif
