/*
 * cfg_resolve.c - lookups in a loaded or mapped configuration, and the
 * layering that turns matching blocks into effective settings
 *
 * Owns nothing: every function reads struct cfg (which may be a read-only
 * snapshot mapping) and hands out pointers into it. Indices and offsets are
 * bounds-checked against the counts, so a snapshot that passed
 * cfg_snapshot_map's validation cannot make these read outside the arrays.
 *
 * Queue resolution (the contract in cfg.h): defaults, then top-level <domain>
 * blocks from least to most specific, then <domain> blocks nested in the
 * pools that list the virtual MTA, then those nested in the virtual MTA.
 * Specificity: '*' < '*.parent' / '[*.]parent' (longer suffix is more
 * specific) < the exact domain; at equal specificity a macro-expanded block
 * comes before (is overridden by) an explicit one, then file order.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <ctype.h>
#include <netinet/in.h>
#include <arpa/inet.h>

#include "xalloc.h"
#include "cfg.h"
#include "cfg_parse.h"

#define SPEC_EXACT (1 << 20) /* above any suffix length */
#define DOMAIN_MAX 512

/* cfg_str - the string at OFF ("" when out of range) */
const char *
cfg_str(const struct cfg *c, uint32_t off)
{
    return off < c->strings_len ? c->strings + off : "";
}

/* cfg_list - the interval list of V, NULL if it has none or it is out of range */
const int64_t *
cfg_list(const struct cfg *c, const struct cfg_value *v)
{
    if (v->list_len == 0 || v->list > c->nints || v->list_len > c->nints - v->list)
        return NULL;
    return c->ints + v->list;
}

static const struct cfg_scope *
scope_at(const struct cfg *c, uint32_t s)
{
    const struct cfg_scope *sc;

    if (s >= c->nscopes)
        return NULL;
    sc = &c->scopes[s];
    if (sc->first > c->nvalues || sc->count > c->nvalues - sc->first)
        return NULL;
    return sc;
}

/* cfg_scope_get - first value of D directly in scope S, or NULL */
const struct cfg_value *
cfg_scope_get(const struct cfg *c, uint32_t scope, enum cfg_directive d)
{
    uint32_t it = 0;
    return cfg_scope_next(c, scope, d, &it);
}

const struct cfg_value *
cfg_scope_next(const struct cfg *c, uint32_t scope, enum cfg_directive d, uint32_t *it)
{
    const struct cfg_scope *sc = scope_at(c, scope);

    for (; sc && *it < sc->count; (*it)++) {
        const struct cfg_value *v = &c->values[sc->first + *it];
        if (v->directive == d) {
            (*it)++;
            return v;
        }
    }
    return NULL;
}

/* default_of - built-in value slot of D, NULL when D has no default */
static const struct cfg_value *
default_of(const struct cfg *c, int d)
{
    if ((uint32_t)d >= c->nvalues || (c->values[d].flags & CFG_VALUE_UNSET))
        return NULL;
    return &c->values[d];
}

const struct cfg_value *
cfg_global(const struct cfg *c, enum cfg_directive d)
{
    const struct cfg_value *v = cfg_scope_get(c, 0, d);

    if (v && !(v->flags & CFG_VALUE_CLEAR))
        return v;
    return default_of(c, d);
}

uint32_t
cfg_find_scope(const struct cfg *c, enum cfg_scope_kind kind, const char *name)
{
    for (uint32_t i = 1; i < c->nscopes; i++)
        if (c->scopes[i].kind == kind && strcasecmp(cfg_str(c, c->scopes[i].name), name) == 0)
            return i;
    return CFG_NONE;
}

uint32_t
cfg_next_scope(const struct cfg *c, enum cfg_scope_kind kind, uint32_t *it)
{
    for (; *it < c->nscopes; (*it)++)
        if (c->scopes[*it].kind == kind)
            return (*it)++;
    return CFG_NONE;
}

/* normalize_domain - lowercase copy without a trailing dot; 0 if it does not fit */
static int
normalize_domain(const char *domain, char *out)
{
    size_t len = strlen(domain);

    if (len >= DOMAIN_MAX)
        return 0;
    for (size_t i = 0; i <= len; i++)
        out[i] = (char)tolower((unsigned char)domain[i]);
    if (len > 1 && out[len - 1] == '.')
        out[len - 1] = 0;
    return 1;
}

/* ip_literal - "[192.0.2.1]" or "[IPv6:2001:db8::1]" -> family and address */
static int
ip_literal(const char *domain, int *family, uint8_t addr[16])
{
    char inner[DOMAIN_MAX];
    size_t len = strlen(domain);

    if (len < 3 || domain[0] != '[' || domain[len - 1] != ']')
        return 0;
    memcpy(inner, domain + 1, len - 2);
    inner[len - 2] = 0;
    if (inet_pton(AF_INET, inner, addr) == 1)
        return *family = AF_INET, 1;
    if (strncasecmp(inner, "ipv6:", 5) == 0 && inet_pton(AF_INET6, inner + 5, addr) == 1)
        return *family = AF_INET6, 1;
    return 0;
}

static int
suffix_match(const char *domain, const char *name, int include_self)
{
    size_t dl = strlen(domain), nl = strlen(name);

    if (include_self && strcmp(domain, name) == 0)
        return 1;
    return dl > nl + 1 && domain[dl - nl - 1] == '.' && strcmp(domain + dl - nl, name) == 0;
}

/* cfg_domain_match - specificity+1 of pattern scope S for DOMAIN, 0 if it does not match */
int
cfg_domain_match(const struct cfg *c, const struct cfg_scope *s, const char *domain)
{
    char d[DOMAIN_MAX];
    const char *name = cfg_str(c, s->name);
    uint8_t addr[16];
    int family;

    if (s->kind != CFG_S_DOMAIN || !normalize_domain(domain, d))
        return s->kind == CFG_S_DOMAIN && s->pattern == CFG_PAT_ALL;
    switch (s->pattern) {
    case CFG_PAT_ALL:
        return 1;
    case CFG_PAT_EXACT:
        return strcmp(d, name) == 0 ? SPEC_EXACT + 1 : 0;
    case CFG_PAT_SUBDOMAINS:
    case CFG_PAT_DOMAIN_AND_SUB:
        if (!suffix_match(d, name, s->pattern == CFG_PAT_DOMAIN_AND_SUB))
            return 0;
        return (int)strlen(name) + 2;
    case CFG_PAT_CIDR:
        if (!ip_literal(d, &family, addr) || s->prefix > 128)
            return 0;
        return cfg__cidr_contains(s->family, s->prefix, s->addr, family, addr) ? s->prefix + 2 : 0;
    default:
        return 0;
    }
}

/* apply_scope - layer scope S over OUT; the first line of a repeatable directive wins */
static void
apply_scope(const struct cfg *c, uint32_t s, struct cfg_resolved *out)
{
    const struct cfg_scope *sc = scope_at(c, s);

    for (uint32_t i = sc ? sc->count : 0; i-- > 0;) {
        const struct cfg_value *v = &c->values[sc->first + i];
        if (v->directive >= CFG_D_COUNT)
            continue;
        out->v[v->directive] = (v->flags & CFG_VALUE_CLEAR) ? default_of(c, v->directive) : v;
    }
}

static void
apply_defaults(const struct cfg *c, struct cfg_resolved *out)
{
    for (int d = 0; d < CFG_D_COUNT; d++)
        out->v[d] = default_of(c, d);
}

struct match {
    int spec;
    int explicit_block;
    uint32_t scope;
};

static int
match_cmp(const void *a, const void *b)
{
    const struct match *x = a, *y = b;

    if (x->spec != y->spec)
        return x->spec < y->spec ? -1 : 1;
    if (x->explicit_block != y->explicit_block)
        return x->explicit_block - y->explicit_block;
    return x->scope < y->scope ? -1 : x->scope > y->scope;
}

/* apply_domains - every <domain> directly under PARENT that matches DOMAIN, least specific first */
static void
apply_domains(const struct cfg *c, uint32_t parent, const char *domain, struct cfg_resolved *out)
{
    struct match *m = NULL;
    size_t n = 0;

    for (uint32_t s = 1; s < c->nscopes; s++) {
        const struct cfg_scope *sc = &c->scopes[s];
        int spec;
        if (sc->kind != CFG_S_DOMAIN || sc->parent != parent ||
            (spec = cfg_domain_match(c, sc, domain)) == 0)
            continue;
        m = xreallocarray(m, n + 1, sizeof *m);
        m[n].spec = spec;
        m[n].explicit_block = !(sc->flags & CFG_SCOPE_FROM_MACRO);
        m[n].scope = s;
        n++;
    }
    if (n > 1)
        qsort(m, n, sizeof *m, match_cmp);
    for (size_t i = 0; i < n; i++)
        apply_scope(c, m[i].scope, out);
    free(m);
}

/* pool_has_member - does pool scope P list virtual MTA NAME? */
static int
pool_has_member(const struct cfg *c, uint32_t p, const char *name)
{
    uint32_t it = 0;
    const struct cfg_value *v;

    while ((v = cfg_scope_next(c, p, CFG_D_VIRTUAL_MTA, &it)) != NULL)
        if (strcasecmp(cfg_str(c, v->text), name) == 0)
            return 1;
    return 0;
}

/* backoff_fallbacks - backoff-max-*-rate default to their normal twin when that is set */
static void
backoff_fallbacks(struct cfg_resolved *out)
{
    static const enum cfg_directive pairs[][2] = {
        { CFG_D_BACKOFF_MAX_MSG_RATE, CFG_D_MAX_MSG_RATE },
        { CFG_D_BACKOFF_MAX_CONNECT_RATE, CFG_D_MAX_CONNECT_RATE },
        { CFG_D_BACKOFF_MAX_DATA_VOLUME_RATE, CFG_D_MAX_DATA_VOLUME_RATE },
    };
    for (size_t i = 0; i < sizeof pairs / sizeof pairs[0]; i++)
        if (out->v[pairs[i][0]] == NULL)
            out->v[pairs[i][0]] = out->v[pairs[i][1]];
}

int
cfg_resolve_queue(const struct cfg *c, const char *domain, const char *vmta,
                  struct cfg_resolved *out)
{
    uint32_t vs = CFG_NONE, it = 0, p;

    if (vmta && *vmta && strcmp(vmta, "{default}") != 0) {
        vs = cfg_find_scope(c, CFG_S_VMTA, vmta);
        if (vs == CFG_NONE)
            vs = cfg_find_scope(c, CFG_S_POOL, vmta);
        if (vs == CFG_NONE)
            return -ENOENT;
    }
    apply_defaults(c, out);
    apply_domains(c, 0, domain, out);
    if (vs != CFG_NONE && c->scopes[vs].kind == CFG_S_VMTA)
        while ((p = cfg_next_scope(c, CFG_S_POOL, &it)) != CFG_NONE)
            if (pool_has_member(c, p, vmta))
                apply_domains(c, p, domain, out);
    if (vs != CFG_NONE)
        apply_domains(c, vs, domain, out);
    backoff_fallbacks(out);
    return 0;
}

/* sockaddr_bytes - family and address bytes of SA (IPv4-mapped IPv6 counts as IPv4) */
static int
sockaddr_bytes(const struct sockaddr *sa, uint8_t addr[16])
{
    if (sa->sa_family == AF_INET) {
        memcpy(addr, &((const struct sockaddr_in *)(const void *)sa)->sin_addr, 4);
        return AF_INET;
    }
    if (sa->sa_family == AF_INET6) {
        const struct in6_addr *a6 = &((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr;
        if (IN6_IS_ADDR_V4MAPPED(a6)) {
            memcpy(addr, a6->s6_addr + 12, 4);
            return AF_INET;
        }
        memcpy(addr, a6->s6_addr, 16);
        return AF_INET6;
    }
    return 0;
}

/* apply_cidr_sources - every <source CIDR> holding ADDR, by increasing prefix length */
static void
apply_cidr_sources(const struct cfg *c, const struct sockaddr *addr, struct cfg_resolved *out)
{
    uint8_t bytes[16];
    int family = addr ? sockaddr_bytes(addr, bytes) : 0;

    /* file order within one length */
    for (int prefix = 0; family && prefix <= 128; prefix++)
        for (uint32_t s = 1; s < c->nscopes; s++) {
            const struct cfg_scope *sc = &c->scopes[s];
            if (sc->kind == CFG_S_SOURCE && sc->pattern == CFG_PAT_CIDR && sc->prefix == prefix &&
                cfg__cidr_contains(sc->family, sc->prefix, sc->addr, family, bytes))
                apply_scope(c, s, out);
        }
}

/* named_source - the <source NAME> block (not a CIDR one), or CFG_NONE */
static uint32_t
named_source(const struct cfg *c, const char *name)
{
    uint32_t s = cfg_find_scope(c, CFG_S_SOURCE, name);

    return s != CFG_NONE && c->scopes[s].pattern == CFG_PAT_NAME ? s : CFG_NONE;
}

/* user_source - the source named by <smtp-user USER>'s `source` (names match exactly, as AUTH
 * compares them), or CFG_NONE */
static uint32_t
user_source(const struct cfg *c, const char *user)
{
    uint32_t it = 0, u;
    const struct cfg_value *v;

    while ((u = cfg_next_scope(c, CFG_S_SMTP_USER, &it)) != CFG_NONE)
        if (strcmp(cfg_str(c, c->scopes[u].name), user) == 0)
            return (v = cfg_scope_get(c, u, CFG_D_SOURCE_NAME))
                       ? named_source(c, cfg_str(c, v->text))
                       : CFG_NONE;
    return CFG_NONE;
}

/* Local submission relays unless <source {pickup}> says always-allow-relaying no. */
static const struct cfg_value pickup_relays = {
    .directive = CFG_D_ALWAYS_ALLOW_RELAYING,
    .type = CFG_T_BOOL,
    .num = 1,
};

/* cfg_resolve_session - see cfg.h */
int
cfg_resolve_session(const struct cfg *c, const struct sockaddr *addr, const char *listener,
                    const char *user, struct cfg_resolved *out)
{
    uint32_t named = CFG_NONE, s;
    int rc = 0;

    if (listener && *listener && (named = named_source(c, listener)) == CFG_NONE &&
        cfg_find_scope(c, CFG_S_SOURCE, listener) == CFG_NONE && strcmp(listener, "{pickup}") != 0)
        rc = -ENOENT;
    apply_defaults(c, out);
    apply_cidr_sources(c, addr, out);
    if (listener && strcmp(listener, "{pickup}") == 0)
        out->v[CFG_D_ALWAYS_ALLOW_RELAYING] = &pickup_relays;
    if (named != CFG_NONE)
        apply_scope(c, named, out);
    if (user && *user) {
        if ((s = named_source(c, "{auth}")) != CFG_NONE)
            apply_scope(c, s, out);
        if ((s = user_source(c, user)) != CFG_NONE)
            apply_scope(c, s, out);
    }
    return rc;
}

int
cfg_resolve_vmta(const struct cfg *c, const char *vmta, struct cfg_resolved *out)
{
    uint32_t vs = CFG_NONE;

    if (vmta && *vmta && strcmp(vmta, "{default}") != 0 &&
        (vs = cfg_find_scope(c, CFG_S_VMTA, vmta)) == CFG_NONE)
        return -ENOENT;
    apply_defaults(c, out);
    apply_scope(c, 0, out);
    if (vs != CFG_NONE)
        apply_scope(c, vs, out);
    return 0;
}

/* cfg_domain_pattern - see cfg.h */
const char *
cfg_domain_pattern(const struct cfg *c, uint32_t s, char *out, size_t size)
{
    const struct cfg_scope *sc = scope_at(c, s);
    const char *name = sc ? cfg_str(c, sc->name) : "";

    switch (sc ? sc->pattern : CFG_PAT_EXACT) {
    case CFG_PAT_ALL:
        snprintf(out, size, "*");
        break;
    case CFG_PAT_SUBDOMAINS:
        snprintf(out, size, "*.%s", name);
        break;
    case CFG_PAT_DOMAIN_AND_SUB:
        snprintf(out, size, "[*.]%s", name);
        break;
    case CFG_PAT_CIDR:
        snprintf(out, size, "[%s]", name);
        break;
    default:
        snprintf(out, size, "%s", name);
    }
    return out;
}

/* cfg_value_scope - see cfg.h */
uint32_t
cfg_value_scope(const struct cfg *c, const struct cfg_value *v)
{
    uint32_t idx;

    if (v < c->values || v >= c->values + c->nvalues)
        return CFG_NONE;
    idx = (uint32_t)(v - c->values);
    for (uint32_t s = 0; s < c->nscopes; s++)
        if (idx >= c->scopes[s].first && idx - c->scopes[s].first < c->scopes[s].count)
            return s;
    return CFG_NONE;
}

/* cfg_source_ip_limit - see cfg.h */
const struct cfg_value *
cfg_source_ip_limit(const struct cfg *c, const struct cfg_value *v, int family, const uint8_t *addr,
                    uint32_t *scope)
{
    uint32_t s = v ? cfg_value_scope(c, v) : CFG_NONE, it = 0;
    const struct cfg_value *w, *best = NULL;
    int best_prefix = -1;

    while (s != CFG_NONE && (w = cfg_scope_next(c, s, v->directive, &it)) != NULL) {
        const struct cfg_source_limit *l = &w->source;

        if (w->type != CFG_T_SOURCE_LIMIT || (w->flags & CFG_VALUE_CLEAR))
            continue;
        if (l->prefix > best_prefix &&
            cfg__cidr_contains(l->family, l->prefix, l->addr, family, addr)) {
            best = w;
            best_prefix = l->prefix;
        }
    }
    if (scope)
        *scope = best ? s : CFG_NONE;
    return best;
}

/*
 * cfg_http_access - see cfg.h. The first http-access line whose CIDR holds
 * the address decides (PowerMTA's top-down rule); no line: no access.
 */
enum cfg_http_level
cfg_http_access(const struct cfg *c, int family, const uint8_t *addr)
{
    static const char *const names[] = { "none", "monitor", "operator", "admin" };
    const struct cfg_value *v;
    uint32_t it = 0;

    while ((v = cfg_scope_next(c, 0, CFG_D_HTTP_ACCESS, &it)) != NULL) {
        char line[256], *p = line, *cidr, *levels, *save = NULL;
        uint8_t fam, pre, net[16];
        int level = CFG_HTTP_NONE;

        snprintf(line, sizeof line, "%s", cfg_str(c, v->text));
        cidr = strtok_r(p, " \t", &save);
        levels = strtok_r(NULL, " \t", &save);
        if (!cidr || !levels || cfg__parse_cidr(cidr, &fam, &pre, net) != 0 ||
            !cfg__cidr_contains(fam, pre, net, family, addr))
            continue;
        for (char *t = strtok_r(levels, ",", &save); t; t = strtok_r(NULL, ",", &save))
            for (int i = 0; i < 4; i++)
                if (strcasecmp(t, names[i]) == 0 && i > level)
                    level = i;
        return (enum cfg_http_level)level;
    }
    return CFG_HTTP_NONE;
}
