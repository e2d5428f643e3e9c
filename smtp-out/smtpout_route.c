/*
 * smtpout_route.c - smtp-hosts / route parsing and destination resolution
 *
 * What it does: parses PowerMTA routing overrides into levels of entries,
 * and resolves a domain (with or without a route) into the ordered list of
 * addresses a delivery attempt walks: levels in order, entries of one level
 * in random order, MX hosts in preference order, each host's addresses.
 *
 * What it owns: parsed routes (smtpout_route_free) and one resolve request
 * per resolution in flight, with one item per route entry.
 *
 * SECURITY: route text is configuration; host names and addresses from DNS
 * arrive already bounded by smtpout_dns. Every copy here is bounded.
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
#include "smtpout_route.h"

#define LOOKUP_MX_PREFIX "lookup-mx:"

/* --- small helpers ---------------------------------------------------------------- */

const char *
smtpout_sockaddr_str(const struct sockaddr *addr, char *out, size_t outlen)
{
    const void *src = addr->sa_family == AF_INET6
                          ? (const void *)&((const struct sockaddr_in6 *)addr)->sin6_addr
                          : (const void *)&((const struct sockaddr_in *)addr)->sin_addr;

    if (inet_ntop(addr->sa_family, src, out, (socklen_t)outlen) == NULL)
        snprintf(out, outlen, "?");
    return out;
}

unsigned
smtpout_sockaddr_port(const struct sockaddr *addr)
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

/* route_parse_ip - IPv4 or IPv6 literal into SS; 0 or -1 */
static int
route_parse_ip(const char *text, struct sockaddr_storage *ss)
{
    memset(ss, 0, sizeof *ss);
    if (inet_pton(AF_INET, text, &((struct sockaddr_in *)ss)->sin_addr) == 1) {
        ss->ss_family = AF_INET;
        return 0;
    }
    if (inet_pton(AF_INET6, text, &((struct sockaddr_in6 *)ss)->sin6_addr) == 1) {
        ss->ss_family = AF_INET6;
        return 0;
    }
    return -1;
}

static void
route_trim(char **start, char **end)
{
    while (*start < *end && isspace((unsigned char)**start))
        (*start)++;
    while (*end > *start && isspace((unsigned char)(*end)[-1]))
        (*end)--;
}

static int
route_valid_hostname(const char *s)
{
    size_t len = strlen(s), i;

    if (len == 0 || len > SMTPOUT_DNS_NAME_MAX)
        return 0;
    for (i = 0; i < len; i++)
        if (!(isalnum((unsigned char)s[i]) || s[i] == '-' || s[i] == '.' || s[i] == '_'))
            return 0;
    return 1;
}

/* route_parse_port - decimal 1..65535 */
static int
route_parse_port(const char *s, uint16_t *port)
{
    unsigned long v = 0;

    if (*s == 0)
        return -1;
    for (; *s; s++) {
        if (!isdigit((unsigned char)*s))
            return -1;
        v = v * 10 + (unsigned long)(*s - '0');
        if (v > 65535)
            return -1;
    }
    if (v == 0)
        return -1;
    *port = (uint16_t)v;
    return 0;
}

/* --- parser ----------------------------------------------------------------------- */

/* route_parse_entry - one entry, TEXT already trimmed and NUL-terminated */
static int
route_parse_entry(char *text, struct smtpout_route_entry *e, char *err, size_t errlen)
{
    char *colon, *close;
    struct sockaddr_storage ss;

    memset(e, 0, sizeof *e);
    if (strncasecmp(text, LOOKUP_MX_PREFIX, strlen(LOOKUP_MX_PREFIX)) == 0) {
        e->kind = SMTPOUT_ROUTE_LOOKUP_MX;
        text += strlen(LOOKUP_MX_PREFIX);
    } else if (*text == '[') {
        e->kind = SMTPOUT_ROUTE_ADDR;
        if ((close = strchr(text, ']')) == NULL) {
            snprintf(err, errlen, "missing ']' in \"%s\"", text);
            return -EINVAL;
        }
        *close = 0;
        if (route_parse_ip(text + 1, &ss) < 0) {
            snprintf(err, errlen, "bad IP address \"%s\"", text + 1);
            return -EINVAL;
        }
        if (close[1] != 0 && (close[1] != ':' || route_parse_port(close + 2, &e->port) < 0)) {
            snprintf(err, errlen, "bad port after \"[%s]\"", text + 1);
            return -EINVAL;
        }
        e->name = xstrdup(text + 1);
        return 0;
    } else {
        e->kind = SMTPOUT_ROUTE_HOST;
    }
    if ((colon = strchr(text, ':')) != NULL) {
        *colon = 0;
        if (route_parse_port(colon + 1, &e->port) < 0) {
            snprintf(err, errlen, "bad port \"%s\" (IPv6 addresses need [brackets])", colon + 1);
            return -EINVAL;
        }
    }
    if (e->kind == SMTPOUT_ROUTE_HOST && route_parse_ip(text, &ss) == 0)
        e->kind = SMTPOUT_ROUTE_ADDR; /* a bare IPv4 address needs no lookup */
    else if (!route_valid_hostname(text)) {
        snprintf(err, errlen, "bad host name \"%s\"", text);
        return -EINVAL;
    }
    e->name = xstrdup(text);
    return 0;
}

/* route_parse_level - entries separated by ',' in [START, END) */
static int
route_parse_level(char *start, char *end, struct smtpout_route_level *level, char *err,
                  size_t errlen)
{
    char *p = start, *comma, *s, *e;
    int rc;

    while (p <= end) {
        comma = memchr(p, ',', (size_t)(end - p));
        if (comma == NULL)
            comma = end;
        s = p;
        e = comma;
        route_trim(&s, &e);
        if (s == e) {
            snprintf(err, errlen, "empty host entry");
            return -EINVAL;
        }
        *e = 0;
        level->entries = xreallocarray(level->entries, level->nentries + 1, sizeof *level->entries);
        rc = route_parse_entry(s, &level->entries[level->nentries], err, errlen);
        if (rc < 0)
            return rc;
        level->nentries++;
        p = comma + 1;
    }
    return 0;
}

int
smtpout_route_parse(const char *text, struct smtpout_route **out, char *err, size_t errlen)
{
    struct smtpout_route *route = xcalloc(1, sizeof *route);
    char *copy = xstrdup(text), *p = copy, *end = copy + strlen(copy), *semi;
    int rc = 0;

    snprintf(err, errlen, "ok");
    while (p <= end) {
        semi = memchr(p, ';', (size_t)(end - p));
        if (semi == NULL)
            semi = end;
        *semi = 0;
        route->levels = xreallocarray(route->levels, route->nlevels + 1, sizeof *route->levels);
        memset(&route->levels[route->nlevels], 0, sizeof *route->levels);
        route->nlevels++;
        rc = route_parse_level(p, semi, &route->levels[route->nlevels - 1], err, errlen);
        if (rc < 0)
            break;
        p = semi + 1;
    }
    free(copy);
    if (rc < 0) {
        smtpout_route_free(route);
        return rc;
    }
    *out = route;
    return 0;
}

void
smtpout_route_free(struct smtpout_route *route)
{
    size_t i, j;

    if (route == NULL)
        return;
    for (i = 0; i < route->nlevels; i++) {
        for (j = 0; j < route->levels[i].nentries; j++)
            free(route->levels[i].entries[j].name);
        free(route->levels[i].entries);
    }
    free(route->levels);
    free(route);
}

/* --- resolution ------------------------------------------------------------------- */

/* One lookup: a route entry, or the domain's own MX hosts. */
struct route_item {
    struct smtpout_resolve *req;
    unsigned level;
    uint16_t port;
    enum smtpout_dns_status status;
    char why[160];
    size_t nhosts;
    struct smtpout_mx_host *hosts; /* heap: nhosts */
};

struct smtpout_resolve {
    smtpout_resolve_cb cb;
    void *arg;
    int cancelled;
    int returned; /* smtpout_route_resolve has returned */
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
route_item_store(struct route_item *item, enum smtpout_dns_status status, const char *why,
                 const struct smtpout_mx_host *hosts, size_t n)
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
route_mx_done(void *arg, enum smtpout_dns_status status, const char *why,
              const struct smtpout_mx_host *hosts, size_t n)
{
    struct route_item *item = arg;

    route_item_store(item, status, why, hosts, n);
    route_item_done(item);
}

/* route_host_done - A/AAAA of an smtp-hosts name: one host, preference 0 */
static void
route_host_done(void *arg, enum smtpout_dns_status status, const char *why,
                const struct sockaddr_storage *addrs, size_t n)
{
    struct route_item *item = arg;
    struct smtpout_mx_host *h = item->hosts; /* preallocated, name set */

    item->status = status;
    snprintf(item->why, sizeof item->why, "%s", why ? why : "");
    h->addr_status = status;
    h->naddrs = n;
    if (n)
        memcpy(h->addrs, addrs, n * sizeof *addrs);
    route_item_done(item);
}

static uint64_t
route_random(struct smtpout_resolve *req)
{
    req->rng ^= req->rng >> 12;
    req->rng ^= req->rng << 25;
    req->rng ^= req->rng >> 27;
    return req->rng * 2685821657736338717ULL;
}

static void
route_add_host(struct smtpout_resolve *req, struct smtpout_dest_list *list,
               const struct route_item *item, const struct smtpout_mx_host *h)
{
    size_t i;

    for (i = 0; i < h->naddrs; i++) {
        struct smtpout_dest *d;

        if (req->family != AF_UNSPEC && h->addrs[i].ss_family != req->family)
            continue;
        if (req->max_dests && list->ndests >= req->max_dests)
            return;
        list->dests = xreallocarray(list->dests, list->ndests + 1, sizeof *list->dests);
        d = &list->dests[list->ndests++];
        memset(d, 0, sizeof *d);
        snprintf(d->mx_name, sizeof d->mx_name, "%s", h->name);
        d->addr = h->addrs[i];
        d->level = item->level;
        d->pref = h->pref;
        route_set_port(&d->addr, item->port ? item->port : req->default_port);
    }
}

/* route_classify_failure - no destination at all: temporary or permanent? */
static void
route_classify_failure(struct smtpout_resolve *req, struct smtpout_dest_list *list)
{
    size_t i, j;
    int temporary = 0;
    const struct route_item *first = &req->items[0];

    for (i = 0; i < req->nitems; i++) {
        const struct route_item *item = &req->items[i];
        if (item->status == SMTPOUT_DNS_OK) {
            for (j = 0; j < item->nhosts; j++)
                if (!smtpout_dns_permanent(item->hosts[j].addr_status) &&
                    item->hosts[j].addr_status != SMTPOUT_DNS_OK)
                    temporary = 1;
        } else if (!smtpout_dns_permanent(item->status)) {
            temporary = 1;
        }
    }
    snprintf(list->why, sizeof list->why, "%s",
             first->why[0] ? first->why : "no usable address for the destination");
    if (temporary) {
        list->status = SMTPOUT_ROUTE_TEMPFAIL;
        snprintf(list->status_code, sizeof list->status_code, "4.4.3");
        return;
    }
    list->status = SMTPOUT_ROUTE_PERMFAIL;
    if (req->no_route && first->status == SMTPOUT_DNS_NULLMX)
        snprintf(list->status_code, sizeof list->status_code, "5.1.10");
    else if (req->no_route && first->status == SMTPOUT_DNS_NXDOMAIN)
        snprintf(list->status_code, sizeof list->status_code, "5.1.2");
    else
        snprintf(list->status_code, sizeof list->status_code, "5.4.4");
    if (first->status == SMTPOUT_DNS_OK)
        snprintf(list->why, sizeof list->why, "no MX host of the destination has an address");
}

static void
route_finish(struct smtpout_resolve *req)
{
    struct smtpout_dest_list list;
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
        list.status = SMTPOUT_ROUTE_OK;
    else if (req->cancelled)
        list.status = SMTPOUT_ROUTE_CANCELLED;
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
    struct smtpout_resolve *req = item->req;

    if (--req->pending == 0 && req->returned)
        route_finish(req);
}

/* route_start_item - launch the lookup for one entry */
static void
route_start_item(struct smtpout_dns *dns, struct smtpout_resolve *req, struct route_item *item,
                 const struct smtpout_route_entry *e, int allow_implicit)
{
    struct smtpout_mx_host *h;

    switch (e->kind) {
    case SMTPOUT_ROUTE_LOOKUP_MX:
        smtpout_dns_mx_hosts(dns, e->name, req->family, allow_implicit, route_mx_done, item);
        return;
    case SMTPOUT_ROUTE_HOST:
        item->nhosts = 1;
        item->hosts = h = xcalloc(1, sizeof *h);
        snprintf(h->name, sizeof h->name, "%s", e->name);
        smtpout_dns_addr(dns, e->name, req->family, route_host_done, item);
        return;
    case SMTPOUT_ROUTE_ADDR:
        item->nhosts = 1;
        item->hosts = h = xcalloc(1, sizeof *h);
        snprintf(h->name, sizeof h->name, "%s", e->name);
        h->naddrs = route_parse_ip(e->name, &h->addrs[0]) == 0;
        item->status = h->addr_status = h->naddrs ? SMTPOUT_DNS_OK : SMTPOUT_DNS_NODATA;
        route_item_done(item);
        return;
    }
}

struct smtpout_resolve *
smtpout_route_resolve(struct smtpout_dns *dns, const char *domain,
                      const struct smtpout_resolve_options *opts, smtpout_resolve_cb cb, void *arg)
{
    struct smtpout_resolve *req = xcalloc(1, sizeof *req);
    const struct smtpout_route *route = opts->route;
    struct smtpout_route_entry self = { SMTPOUT_ROUTE_LOOKUP_MX, (char *)domain, 0 };
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
smtpout_route_cancel(struct smtpout_resolve *req)
{
    if (req)
        req->cancelled = 1;
}
