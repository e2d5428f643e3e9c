/*
 * mxroute.c - destination resolution for smtp-hosts / route and MX
 *
 * What it does: resolves a domain (with or without a route, parsed by
 * conf/cfg_route.c) into the ordered list of addresses a delivery attempt
 * walks: levels in order, entries of one level in random order, MX hosts in
 * preference order, each host's addresses.
 *
 * What it owns: one resolve request per resolution in flight, with one item
 * per route entry.
 *
 * SECURITY: route text is configuration; host names and addresses from DNS
 * arrive already bounded by mxdns. Every copy here is bounded.
 */
#include "config.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "xalloc.h"
#include "mxroute.h"

/* --- small helpers ---------------------------------------------------------------- */

const char *
mxroute_sockaddr_str(const struct sockaddr *addr, char *out, size_t outlen)
{
    const void *src = addr->sa_family == AF_INET6
                          ? (const void *)&((const struct sockaddr_in6 *)addr)->sin6_addr
                          : (const void *)&((const struct sockaddr_in *)addr)->sin_addr;

    if (inet_ntop(addr->sa_family, src, out, (socklen_t)outlen) == NULL)
        snprintf(out, outlen, "?");
    return out;
}

unsigned
mxroute_sockaddr_port(const struct sockaddr *addr)
{
    if (addr->sa_family == AF_INET6)
        return ntohs(((const struct sockaddr_in6 *)addr)->sin6_port);
    return ntohs(((const struct sockaddr_in *)addr)->sin_port);
}

static void
route_set_port(struct sockaddr_storage *ss, uint16_t port)
{
    if (ss->ss_family == AF_INET6)
        ((struct sockaddr_in6 *)ss)->sin6_port = htons(port);
    else
        ((struct sockaddr_in *)ss)->sin_port = htons(port);
}

/* --- resolution ------------------------------------------------------------------- */

/* One lookup: a route entry, or the domain's own MX hosts. */
struct route_item {
    struct mxroute_req *req;
    unsigned level;
    uint16_t port;
    enum mxdns_status status;
    char why[160];
    size_t nhosts;
    struct mxdns_host *hosts; /* heap: nhosts */
};

struct mxroute_req {
    mxroute_cb cb;
    void *arg;
    int cancelled;
    int returned; /* mxroute_resolve has returned */
    size_t pending;
    size_t max_dests;
    uint16_t default_port;
    int family;
    int no_route; /* plain MX delivery (affects failure codes) */
    uint64_t rng;
    size_t nitems;
    struct route_item *items;
};

static void
route_item_store(struct route_item *item, enum mxdns_status status, const char *why,
                 const struct mxdns_host *hosts, size_t n)
{
    item->status = status;
    snprintf(item->why, sizeof item->why, "%s", why ? why : "");
    item->nhosts = n;
    if (n) {
        item->hosts = xreallocarray(NULL, n, sizeof *hosts);
        memcpy(item->hosts, hosts, n * sizeof *hosts);
    }
}

static void route_item_done(struct route_item *item);

static void
route_mx_done(void *arg, enum mxdns_status status, const char *why, const struct mxdns_host *hosts,
              size_t n)
{
    struct route_item *item = arg;

    route_item_store(item, status, why, hosts, n);
    route_item_done(item);
}

/* route_host_done - A/AAAA of an smtp-hosts name: one host, preference 0 */
static void
route_host_done(void *arg, enum mxdns_status status, int secure, const char *why,
                const struct sockaddr_storage *addrs, size_t n)
{
    struct route_item *item = arg;
    struct mxdns_host *h = item->hosts; /* preallocated, name set */

    h->secure = secure;
    item->status = status;
    snprintf(item->why, sizeof item->why, "%s", why ? why : "");
    h->addr_status = status;
    h->naddrs = n;
    if (n)
        memcpy(h->addrs, addrs, n * sizeof *addrs);
    route_item_done(item);
}

static uint64_t
route_random(struct mxroute_req *req)
{
    req->rng ^= req->rng >> 12;
    req->rng ^= req->rng << 25;
    req->rng ^= req->rng >> 27;
    return req->rng * 2685821657736338717ULL;
}

static void
route_add_host(struct mxroute_req *req, struct mxroute_dest_list *list,
               const struct route_item *item, const struct mxdns_host *h)
{
    size_t i;

    for (i = 0; i < h->naddrs; i++) {
        struct mxroute_dest *d;

        if (req->family != AF_UNSPEC && h->addrs[i].ss_family != req->family)
            continue;
        if (req->max_dests && list->ndests >= req->max_dests)
            return;
        list->dests = xreallocarray(list->dests, list->ndests + 1, sizeof *list->dests);
        d = &list->dests[list->ndests++];
        memset(d, 0, sizeof *d);
        snprintf(d->mx_name, sizeof d->mx_name, "%s", h->name);
        d->secure = h->secure;
        d->addr = h->addrs[i];
        d->level = item->level;
        d->pref = h->pref;
        route_set_port(&d->addr, item->port ? item->port : req->default_port);
    }
}

/* route_classify_failure - no destination at all: temporary or permanent? */
static void
route_classify_failure(struct mxroute_req *req, struct mxroute_dest_list *list)
{
    size_t i, j;
    int temporary = 0;
    const struct route_item *first = &req->items[0];

    for (i = 0; i < req->nitems; i++) {
        const struct route_item *item = &req->items[i];
        if (item->status == MXDNS_OK) {
            for (j = 0; j < item->nhosts; j++)
                if (!mxdns_permanent(item->hosts[j].addr_status) &&
                    item->hosts[j].addr_status != MXDNS_OK)
                    temporary = 1;
        } else if (!mxdns_permanent(item->status)) {
            temporary = 1;
        }
    }
    snprintf(list->why, sizeof list->why, "%s",
             first->why[0] ? first->why : "no usable address for the destination");
    if (temporary) {
        list->status = MXROUTE_TEMPFAIL;
        snprintf(list->status_code, sizeof list->status_code, "4.4.3");
        return;
    }
    list->status = MXROUTE_PERMFAIL;
    if (req->no_route && first->status == MXDNS_NULLMX)
        snprintf(list->status_code, sizeof list->status_code, "5.1.10");
    else if (req->no_route && first->status == MXDNS_NXDOMAIN)
        snprintf(list->status_code, sizeof list->status_code, "5.1.2");
    else
        snprintf(list->status_code, sizeof list->status_code, "5.4.4");
    if (first->status == MXDNS_OK)
        snprintf(list->why, sizeof list->why, "no MX host of the destination has an address");
}

static void
route_finish(struct mxroute_req *req)
{
    struct mxroute_dest_list list;
    size_t i, j, start, n;
    size_t *order = xreallocarray(NULL, req->nitems ? req->nitems : 1, sizeof *order);

    memset(&list, 0, sizeof list);
    for (i = 0; i < req->nitems; i++)
        order[i] = i;
    /* Entries of one level are equals: shuffle them (items are level-ordered). */
    for (start = 0; start < req->nitems; start += n) {
        n = 1;
        while (start + n < req->nitems && req->items[start + n].level == req->items[start].level)
            n++;
        for (i = n; i > 1; i--) {
            size_t k = (size_t)(route_random(req) % i), tmp = order[start + i - 1];
            order[start + i - 1] = order[start + k];
            order[start + k] = tmp;
        }
    }
    for (i = 0; i < req->nitems; i++) {
        const struct route_item *item = &req->items[order[i]];
        for (j = 0; j < item->nhosts; j++)
            route_add_host(req, &list, item, &item->hosts[j]);
    }
    free(order);
    if (list.ndests > 0)
        list.status = MXROUTE_OK;
    else if (req->cancelled)
        list.status = MXROUTE_CANCELLED;
    else
        route_classify_failure(req, &list);
    if (!req->cancelled)
        req->cb(req->arg, &list);
    free(list.dests);
    for (i = 0; i < req->nitems; i++)
        free(req->items[i].hosts);
    free(req->items);
    free(req);
}

static void
route_item_done(struct route_item *item)
{
    struct mxroute_req *req = item->req;

    if (--req->pending == 0 && req->returned)
        route_finish(req);
}

/* route_start_item - launch the lookup for one entry */
static void
route_start_item(struct mxdns *dns, struct mxroute_req *req, struct route_item *item,
                 const struct cfg_route_entry *e, int allow_implicit)
{
    struct mxdns_host *h;

    switch (e->kind) {
    case CFG_ROUTE_LOOKUP_MX:
        mxdns_mx_hosts(dns, e->name, req->family, allow_implicit, route_mx_done, item);
        return;
    case CFG_ROUTE_HOST:
        item->nhosts = 1;
        item->hosts = h = xcalloc(1, sizeof *h);
        snprintf(h->name, sizeof h->name, "%s", e->name);
        mxdns_addr(dns, e->name, req->family, route_host_done, item);
        return;
    case CFG_ROUTE_ADDR:
        item->nhosts = 1;
        item->hosts = h = xcalloc(1, sizeof *h);
        snprintf(h->name, sizeof h->name, "%s", e->name);
        h->addrs[0] = e->addr;
        h->naddrs = e->addr.ss_family != 0;
        item->status = h->addr_status = h->naddrs ? MXDNS_OK : MXDNS_NODATA;
        route_item_done(item);
        return;
    }
}

struct mxroute_req *
mxroute_resolve(struct mxdns *dns, const char *domain, const struct mxroute_options *opts,
                mxroute_cb cb, void *arg)
{
    struct mxroute_req *req = xcalloc(1, sizeof *req);
    const struct cfg_route *route = opts->route;
    struct cfg_route_entry self = { .kind = CFG_ROUTE_LOOKUP_MX, .name = (char *)domain };
    size_t i, j, k;

    req->cb = cb;
    req->arg = arg;
    req->max_dests = opts->max_dests;
    req->default_port = opts->default_port ? opts->default_port : 25;
    req->family = opts->family;
    req->rng = uv_hrtime() ^ (uintptr_t)req;
    if (req->rng == 0)
        req->rng = 1;
    req->no_route = route == NULL || route->nlevels == 0;
    if (req->no_route) {
        req->nitems = 1;
    } else {
        for (i = 0; i < route->nlevels; i++)
            req->nitems += route->levels[i].nentries;
    }
    req->items = xcalloc(req->nitems, sizeof *req->items);
    /* All lookups are counted before any starts: answers may be synchronous. */
    req->pending = req->nitems;
    if (req->no_route) {
        req->items[0].req = req;
        route_start_item(dns, req, &req->items[0], &self, !opts->bounce_upon_no_mx);
    } else {
        for (i = 0, k = 0; i < route->nlevels; i++) {
            for (j = 0; j < route->levels[i].nentries; j++, k++) {
                req->items[k].req = req;
                req->items[k].level = (unsigned)i;
                req->items[k].port = route->levels[i].entries[j].port;
                route_start_item(dns, req, &req->items[k], &route->levels[i].entries[j], 1);
            }
        }
    }
    req->returned = 1;
    if (req->pending == 0) {
        route_finish(req);
        return NULL;
    }
    return req;
}

void
mxroute_cancel(struct mxroute_req *req)
{
    if (req)
        req->cancelled = 1;
}

/* mxdns_name_servers - see mxroute.h */
void
mxdns_name_servers(const struct cfg *c, char *out, size_t size)
{
    const struct cfg_value *v;
    uint32_t it = 0;
    size_t used = 0;

    out[0] = '\0';
    while ((v = cfg_scope_next(c, 0, CFG_D_NAME_SERVER, &it)) != NULL && used < size)
        used += (size_t)snprintf(out + used, size - used, "%s%s", used ? "," : "",
                                 cfg_str(c, v->text));
}
