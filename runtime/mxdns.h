/*
 * mxdns.h - asynchronous DNS for delivery (c-ares driven by libuv)
 *
 * NAME
 *   mxdns - MX and address lookups for outbound delivery
 *
 * DESCRIPTION
 *   One resolver per libuv loop. It talks only to the name servers it was
 *   created with (the `name-server IP[:port]` directive), never to the
 *   machine's resolver behind the caller's back when a list is given, and it
 *   never consults /etc/hosts or a search list: names are looked up as given.
 *
 *   mxdns_mx_hosts() is what delivery needs: the MX hosts of a domain,
 *   sorted by preference with a random order among equal preferences, each
 *   with its addresses; when the domain has no MX records it falls back to
 *   the domain's own A/AAAA records as one implicit MX (RFC 5321 section 5.1)
 *   unless the caller forbids it (bounce-upon-no-mx). mxdns_mx() is
 *   the MX records alone, names and preferences with the answer's TTL.
 *   Three programs run a resolver of their own: smtp-out to deliver, qmgr
 *   (qmgr_rollup.c) to match a domain's MX names against its MX rollups, and
 *   pmtactl resolve to show what smtp-out would do; hence it lives in
 *   runtime/ (libmxdns.a), below all three.
 *
 *   Outcomes are classified once, here: NXDOMAIN, "no MX and no implicit
 *   MX allowed" and a null MX (RFC 7505 "MX 0 .") are permanent; SERVFAIL,
 *   REFUSED, timeouts and every other trouble are temporary.
 *
 *   Answers (positive and negative, never temporary failures) are kept in a
 *   small TTL cache; the TTL is the smallest in the answer, capped by
 *   cache_max_ttl.
 *
 *   DNSSEC: every query is sent with the AD bit set (RFC 6840 section 5.7)
 *   and an answer is "secure" when the reply has the AD bit. We validate
 *   nothing ourselves: the AD bit is trusted because it can only come from
 *   the configured name servers, which must be validating resolvers on a
 *   trusted path (localhost), as Postfix's smtp_dns_support_level=dnssec
 *   requires. An MX host is secure when its MX RRset and its address
 *   records were; DANE (mxdns_tlsa) needs that.
 *
 * CALLBACKS
 *   A callback may run before the lookup function returns (cache hits and
 *   immediate errors). Data passed to a callback is borrowed for the duration
 *   of the call. After mxdns_destroy() pending lookups complete with
 *   MXDNS_CANCELLED.
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

#define MXDNS_NAME_MAX        255 /* presentation form, without the NUL */
#define MXDNS_INFLIGHT_MAX    64  /* queries on the wire at once; more wait their turn */
#define MXDNS_MAX_MX          16  /* MX hosts kept per domain */
#define MXDNS_MAX_ADDRS       16  /* addresses kept per host */
#define MXDNS_MAX_TLSA        8   /* TLSA records kept per name */
#define SMTPOUT_TLSA_DATA_MAX 256 /* longer association data (a whole certificate) is dropped */
#define MXDNS_MAX_TXT         4   /* TXT records kept per name */
#define MXDNS_TXT_MAX         512 /* bytes of one TXT record (its strings joined) */

enum mxdns_status {
    MXDNS_OK = 0,
    MXDNS_NODATA,    /* the name exists but has no record of this type */
    MXDNS_NXDOMAIN,  /* permanent: no such domain */
    MXDNS_NULLMX,    /* permanent: RFC 7505 null MX */
    MXDNS_NOMX,      /* permanent: no MX and implicit MX not allowed */
    MXDNS_TEMPFAIL,  /* SERVFAIL, REFUSED, timeout, network trouble */
    MXDNS_CANCELLED, /* the resolver was destroyed */
};

/* mxdns_permanent - does STATUS mean "give up on this destination"? */
int mxdns_permanent(enum mxdns_status status);
const char *mxdns_status_name(enum mxdns_status status);

struct mxdns_options {
    const char *name_servers;    /* "IP[:port],..." (IPv6 as [ip]:port); NULL = system */
    unsigned timeout_ms;         /* per try; 0 = 3000 */
    unsigned tries;              /* 0 = 2 */
    unsigned cache_max_ttl;      /* seconds; 0 = no cache */
    unsigned cache_negative_ttl; /* seconds for NXDOMAIN/NODATA; 0 = 60 */
    size_t cache_max_entries;    /* 0 = 256 */
};

struct mxdns;

/* One MX host with its addresses (port left 0; the route layer sets it). */
struct mxdns_host {
    unsigned pref;
    int implicit; /* 1: the domain's own A/AAAA (no MX) */
    char name[MXDNS_NAME_MAX + 1];
    enum mxdns_status addr_status; /* outcome of this host's A/AAAA lookup */
    int secure; /* the MX RRset (implicit: none) and the addresses came DNSSEC-validated */
    size_t naddrs;
    struct sockaddr_storage addrs[MXDNS_MAX_ADDRS];
};

/* One TLSA record (RFC 6698). */
struct mxdns_tlsa {
    unsigned char usage, selector, mtype;
    size_t len;
    unsigned char data[SMTPOUT_TLSA_DATA_MAX];
};

/* SECURE: every answer that went into the result had the AD bit */
typedef void (*mxdns_addr_cb)(void *arg, enum mxdns_status status, int secure, const char *why,
                              const struct sockaddr_storage *addrs, size_t naddrs);
typedef void (*mxdns_tlsa_cb)(void *arg, enum mxdns_status status, int secure, const char *why,
                              const struct mxdns_tlsa *recs, size_t n);
/* TXTS: each record's character-strings joined, NUL-terminated (NULs inside cut it short) */
typedef void (*mxdns_txt_cb)(void *arg, enum mxdns_status status, const char *why,
                             const char *const *txts, size_t n);
typedef void (*mxdns_mx_hosts_cb)(void *arg, enum mxdns_status status, const char *why,
                                  const struct mxdns_host *hosts, size_t nhosts);

/*
 * mxdns_create - a resolver on LOOP. 0, or -EINVAL (bad name server
 * list), -ENOMEM / -EIO (c-ares initialisation failed).
 */
int mxdns_create(uv_loop_t *loop, const struct mxdns_options *opts, struct mxdns **out);
/* mxdns_destroy - cancel lookups, close handles; memory is released
 * once the loop has run the close callbacks. */
void mxdns_destroy(struct mxdns *dns);

/*
 * mxdns_addr - A and/or AAAA records of NAME. FAMILY is AF_INET,
 * AF_INET6 or AF_UNSPEC (both; IPv4 addresses first, because our source
 * addresses usually are IPv4). NODATA from both families is permanent.
 */
void mxdns_addr(struct mxdns *dns, const char *name, int family, mxdns_addr_cb cb, void *arg);

/*
 * mxdns_mx_hosts - MX hosts of DOMAIN with their addresses, sorted by
 * preference (random among equals). ALLOW_IMPLICIT: fall back to the
 * domain's A/AAAA records when it has no MX; otherwise MXDNS_NOMX.
 * Hosts whose address lookup failed are still listed (addr_status says why)
 * so the caller can tell "all MX hosts unresolvable" apart.
 */
void mxdns_mx_hosts(struct mxdns *dns, const char *domain, int family, int allow_implicit,
                    mxdns_mx_hosts_cb cb, void *arg);

/* One MX record. */
struct mxdns_mx {
    unsigned pref;
    char name[MXDNS_NAME_MAX + 1]; /* lower case, no trailing dot */
};
typedef void (*mxdns_mx_cb)(void *arg, enum mxdns_status status, const char *why,
                            const struct mxdns_mx *mx, size_t n, unsigned ttl);
/*
 * mxdns_mx - the MX records of DOMAIN alone (no address lookups), sorted
 * by preference (the order among equals is the answer's); TTL is the answer's
 * smallest (capped by cache_max_ttl when that is set), 0 for a failure.
 * MXDNS_NODATA: the domain has no MX record; MXDNS_NULLMX: RFC 7505.
 * qmgr asks this for MX rollups (qmgr_rollup.c), on a resolver of its own.
 */
void mxdns_mx(struct mxdns *dns, const char *domain, mxdns_mx_cb cb, void *arg);

/*
 * mxdns_tlsa - the TLSA records of _PORT._tcp.HOST (RFC 7672 section
 * 2.2), with whether the answer was secure. NODATA and NXDOMAIN come as
 * those statuses (with SECURE saying whether the denial was validated);
 * records with data longer than SMTPOUT_TLSA_DATA_MAX are left out.
 */
void mxdns_tlsa(struct mxdns *dns, const char *host, unsigned port, mxdns_tlsa_cb cb, void *arg);

/* mxdns_txt - the TXT records of NAME (MTA-STS: _mta-sts.DOMAIN) */
void mxdns_txt(struct mxdns *dns, const char *name, mxdns_txt_cb cb, void *arg);

#endif
