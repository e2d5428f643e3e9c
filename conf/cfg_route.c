/*
 * cfg_route.c - the grammar of `smtp-hosts` (and its alias `route`)
 *
 *     mx1.example.com:2525, [192.0.2.1]; lookup-mx:backup.example.com
 *
 * `;` separates preference levels (tried in order), `,` hosts of equal
 * preference. An entry is host[:port], [ip][:port] (IPv6 inside the
 * brackets), a bare IPv4 address, or lookup-mx:domain[:port]. The parser is
 * the only one: pmtad runs it at load (a value that cannot work is a
 * file:line error) and smtp-out runs it on the validated text to get the
 * levels it walks.
 *
 * Owns: parsed routes (cfg_route_free).
 *
 * SECURITY: the text is configuration (trusted but maybe wrong): malformed
 * entries, ports outside 1..65535 and dotted numbers that are no IPv4 address
 * are refused with a reason rather than guessed at. Every copy is bounded.
 */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "xalloc.h"
#include "cfg.h"

#define LOOKUP_MX_PREFIX "lookup-mx:"

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

    if (len == 0 || len > CFG_ROUTE_NAME_MAX)
        return 0;
    for (i = 0; i < len; i++)
        if (!(isalnum((unsigned char)s[i]) || s[i] == '-' || s[i] == '.' || s[i] == '_'))
            return 0;
    return 1;
}

/* looks_numeric - digits and dots only: meant as an IPv4 address, never a host name */
static int
looks_numeric(const char *s)
{
    return *s && strspn(s, "0123456789.") == strlen(s);
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
route_parse_entry(char *text, struct cfg_route_entry *e, char *err, size_t errlen)
{
    char *colon, *close;
    struct sockaddr_storage ss;

    memset(e, 0, sizeof *e);
    if (strncasecmp(text, LOOKUP_MX_PREFIX, strlen(LOOKUP_MX_PREFIX)) == 0) {
        e->kind = CFG_ROUTE_LOOKUP_MX;
        text += strlen(LOOKUP_MX_PREFIX);
    } else if (*text == '[') {
        e->kind = CFG_ROUTE_ADDR;
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
        e->addr = ss;
        e->name = xstrdup(text + 1);
        return 0;
    } else {
        e->kind = CFG_ROUTE_HOST;
    }
    if ((colon = strchr(text, ':')) != NULL) {
        *colon = 0;
        if (route_parse_port(colon + 1, &e->port) < 0) {
            snprintf(err, errlen, "bad port \"%s\" (IPv6 addresses need [brackets])", colon + 1);
            return -EINVAL;
        }
    }
    if (e->kind == CFG_ROUTE_HOST && route_parse_ip(text, &ss) == 0) {
        e->kind = CFG_ROUTE_ADDR; /* a bare IPv4 address needs no lookup */
        e->addr = ss;
    } else if (looks_numeric(text)) {
        snprintf(err, errlen, "bad IP address \"%s\"", text);
        return -EINVAL;
    } else if (!route_valid_hostname(text)) {
        snprintf(err, errlen, "bad host name \"%s\"", text);
        return -EINVAL;
    }
    e->name = xstrdup(text);
    return 0;
}

/* route_parse_level - entries separated by ',' in [START, END) */
static int
route_parse_level(char *start, char *end, struct cfg_route_level *level, char *err, size_t errlen)
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
cfg_route_parse(const char *text, struct cfg_route **out, char *err, size_t errlen)
{
    struct cfg_route *route = xcalloc(1, sizeof *route);
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
        cfg_route_free(route);
        return rc;
    }
    *out = route;
    return 0;
}

void
cfg_route_free(struct cfg_route *route)
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
