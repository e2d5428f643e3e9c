/*
 * mxroute.h - where to deliver a domain's mail: smtp-hosts / route
 *
 * NAME
 *   mxroute - resolve destination lists
 *
 * DESCRIPTION
 *   A route is PowerMTA's `smtp-hosts` (or deprecated `route`) value, parsed
 *   by cfg_route_parse (conf/cfg_route.c, the grammar's one home):
 *       mx1.example.com:2525, [192.0.2.1]; lookup-mx:backup.example.com
 *   `;` separates preference levels (tried in order), `,` separates hosts of
 *   equal preference (used in random order, i.e. spread round-robin).
 *   An entry is `host[:port]` (A/AAAA of host), `[ip]:port` or `[ip]` (an
 *   address literal, IPv6 allowed inside the brackets) or
 *   `lookup-mx:domain[:port]` (that domain's MX hosts, in MX order).
 *   A port left out means the queue's default-smtp-port.
 *
 *   mxroute_resolve() turns a domain plus an optional route into the
 *   ordered list of (MX name, address, port) destinations a delivery attempt
 *   walks. Without a route it is the domain's MX list, with the implicit MX
 *   and bounce-upon-no-mx handled by mxdns.
 *
 * SECURITY
 *   The route comes from the validated configuration.
 *   Destination names come from DNS and are bounded by mxdns.
 */
#ifndef PMTA_SMTPOUT_ROUTE_H
#define PMTA_SMTPOUT_ROUTE_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "cfg.h"
#include "mxdns.h"

/* One place to try, in order. */
struct mxroute_dest {
    char mx_name[MXDNS_NAME_MAX + 1]; /* MX/host name, or the IP literal */
    struct sockaddr_storage addr;     /* port set */
    unsigned level;                   /* route level (0 without a route) */
    unsigned pref;                    /* MX preference within the level */
    int secure; /* its name came DNSSEC-validated (MX and addresses): DANE applies */
};

enum mxroute_status {
    MXROUTE_OK = 0,   /* at least one destination */
    MXROUTE_TEMPFAIL, /* nothing usable now; try again later */
    MXROUTE_PERMFAIL, /* the domain cannot receive mail: bounce */
    MXROUTE_CANCELLED,
};

struct mxroute_dest_list {
    enum mxroute_status status;
    char status_code[8]; /* enhanced status for failures, e.g. "5.1.2" */
    char why[200];       /* for failures: what went wrong (printable) */
    size_t ndests;
    struct mxroute_dest *dests;
};

struct mxroute_options {
    const struct cfg_route *route; /* NULL: the domain's MX hosts */
    uint16_t default_port;         /* 0 = 25 */
    int family;                    /* AF_INET, AF_INET6, AF_UNSPEC */
    int bounce_upon_no_mx;         /* no MX -> permanent (no implicit MX) */
    size_t max_dests;              /* 0 = no cap */
};

typedef void (*mxroute_cb)(void *arg, const struct mxroute_dest_list *list);

struct mxroute_req;

/*
 * mxroute_resolve - build the destination list for DOMAIN. CB runs
 * exactly once (possibly before this returns, then NULL is returned), unless
 * mxroute_cancel() is called first. LIST is borrowed for the call.
 */
struct mxroute_req *mxroute_resolve(struct mxdns *dns, const char *domain,
                                    const struct mxroute_options *opts, mxroute_cb cb, void *arg);
/* mxroute_cancel - CB will not run; memory is reclaimed when lookups end */
void mxroute_cancel(struct mxroute_req *req);

/* mxdns_name_servers - C's `name-server IP[:port]` lines, comma-separated, into OUT ("" = none:
 * the system's); what mxdns_options.name_servers takes */
void mxdns_name_servers(const struct cfg *c, char *out, size_t size);

/* mxroute_sockaddr_str - "ip" text of ADDR into OUT (INET6_ADDRSTRLEN+) */
const char *mxroute_sockaddr_str(const struct sockaddr *addr, char *out, size_t outlen);
/* mxroute_sockaddr_port - port of ADDR (host order) */
unsigned mxroute_sockaddr_port(const struct sockaddr *addr);

#endif
