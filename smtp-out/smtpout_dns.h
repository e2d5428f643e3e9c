/*
 * smtpout_dns.h - asynchronous DNS for smtp-out (c-ares driven by libuv)
 *
 * NAME
 *   smtpout_dns - MX and address lookups for outbound delivery
 *
 * DESCRIPTION
 *   One resolver per libuv loop. It talks only to the name servers it was
 *   created with (the `name-server IP[:port]` directive), never to the
 *   machine's resolver behind the caller's back when a list is given, and it
 *   never consults /etc/hosts or a search list: names are looked up as given.
 *
 *   smtpout_dns_mx_hosts() is what delivery needs: the MX hosts of a domain,
 *   sorted by preference with a random order among equal preferences, each
 *   with its addresses; when the domain has no MX records it falls back to
 *   the domain's own A/AAAA records as one implicit MX (RFC 5321 section 5.1)
 *   unless the caller forbids it (bounce-upon-no-mx).
 *
 *   Outcomes are classified once, here: NXDOMAIN, "no MX and no implicit
 *   MX allowed" and a null MX (RFC 7505 "MX 0 .") are permanent; SERVFAIL,
 *   REFUSED, timeouts and every other trouble are temporary.
 *
 *   Answers (positive and negative, never temporary failures) are kept in a
 *   small TTL cache; the TTL is the smallest in the answer, capped by
 *   cache_max_ttl.
 *
 * CALLBACKS
 *   A callback may run before the lookup function returns (cache hits and
 *   immediate errors). Data passed to a callback is borrowed for the duration
 *   of the call. After smtpout_dns_destroy() pending lookups complete with
 *   SMTPOUT_DNS_CANCELLED.
 *
 * SECURITY
 *   DNS answers are remote input: c-ares parses the wire format; this module
 *   bounds name lengths, host counts and address counts, and walks answer
 *   records (for TTLs) with explicit length checks.
 */
#ifndef PMTA_SMTPOUT_DNS_H
#define PMTA_SMTPOUT_DNS_H

#include <stddef.h>
#include <sys/socket.h>
#include <uv.h>

#define SMTPOUT_DNS_NAME_MAX  255 /* presentation form, without the NUL */
#define SMTPOUT_DNS_MAX_MX    16  /* MX hosts kept per domain */
#define SMTPOUT_DNS_MAX_ADDRS 16  /* addresses kept per host */

enum smtpout_dns_status {
    SMTPOUT_DNS_OK = 0,
    SMTPOUT_DNS_NODATA,    /* the name exists but has no record of this type */
    SMTPOUT_DNS_NXDOMAIN,  /* permanent: no such domain */
    SMTPOUT_DNS_NULLMX,    /* permanent: RFC 7505 null MX */
    SMTPOUT_DNS_NOMX,      /* permanent: no MX and implicit MX not allowed */
    SMTPOUT_DNS_TEMPFAIL,  /* SERVFAIL, REFUSED, timeout, network trouble */
    SMTPOUT_DNS_CANCELLED, /* the resolver was destroyed */
};

/* smtpout_dns_permanent - does STATUS mean "give up on this destination"? */
int smtpout_dns_permanent(enum smtpout_dns_status status);
const char *smtpout_dns_status_name(enum smtpout_dns_status status);

struct smtpout_dns_options {
    const char *name_servers;    /* "IP[:port],..." (IPv6 as [ip]:port); NULL = system */
    unsigned timeout_ms;         /* per try; 0 = 3000 */
    unsigned tries;              /* 0 = 2 */
    unsigned cache_max_ttl;      /* seconds; 0 = no cache */
    unsigned cache_negative_ttl; /* seconds for NXDOMAIN/NODATA; 0 = 60 */
    size_t cache_max_entries;    /* 0 = 256 */
};

struct smtpout_dns;

/* One MX host with its addresses (port left 0; the route layer sets it). */
struct smtpout_mx_host {
    unsigned pref;
    int implicit; /* 1: the domain's own A/AAAA (no MX) */
    char name[SMTPOUT_DNS_NAME_MAX + 1];
    enum smtpout_dns_status addr_status; /* outcome of this host's A/AAAA lookup */
    size_t naddrs;
    struct sockaddr_storage addrs[SMTPOUT_DNS_MAX_ADDRS];
};

typedef void (*smtpout_dns_addr_cb)(void *arg, enum smtpout_dns_status status, const char *why,
                                    const struct sockaddr_storage *addrs, size_t naddrs);
typedef void (*smtpout_dns_mx_hosts_cb)(void *arg, enum smtpout_dns_status status, const char *why,
                                        const struct smtpout_mx_host *hosts, size_t nhosts);

/*
 * smtpout_dns_create - a resolver on LOOP. 0, or -EINVAL (bad name server
 * list), -ENOMEM / -EIO (c-ares initialisation failed).
 */
int smtpout_dns_create(uv_loop_t *loop, const struct smtpout_dns_options *opts,
                       struct smtpout_dns **out);
/* smtpout_dns_destroy - cancel lookups, close handles; memory is released
 * once the loop has run the close callbacks. */
void smtpout_dns_destroy(struct smtpout_dns *dns);

/*
 * smtpout_dns_addr - A and/or AAAA records of NAME. FAMILY is AF_INET,
 * AF_INET6 or AF_UNSPEC (both; IPv4 addresses first, because our source
 * addresses usually are IPv4). NODATA from both families is permanent.
 */
void smtpout_dns_addr(struct smtpout_dns *dns, const char *name, int family, smtpout_dns_addr_cb cb,
                      void *arg);

/*
 * smtpout_dns_mx_hosts - MX hosts of DOMAIN with their addresses, sorted by
 * preference (random among equals). ALLOW_IMPLICIT: fall back to the
 * domain's A/AAAA records when it has no MX; otherwise SMTPOUT_DNS_NOMX.
 * Hosts whose address lookup failed are still listed (addr_status says why)
 * so the caller can tell "all MX hosts unresolvable" apart.
 */
void smtpout_dns_mx_hosts(struct smtpout_dns *dns, const char *domain, int family,
                          int allow_implicit, smtpout_dns_mx_hosts_cb cb, void *arg);

#endif
