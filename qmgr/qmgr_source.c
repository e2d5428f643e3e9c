/*
 * qmgr_source.c - limits per local source address (source-ip-max-*)
 *
 * source-ip-max-msg-rate, -connect-rate, -smtp-out and -data-volume-rate
 * take a CIDR first. For a connection from source address IP, the line of
 * the queue's block whose CIDR holds IP (the longest prefix:
 * cfg_source_ip_limit) limits IP across every queue that line applies to:
 * one limiter per (IP, directive, block), shared by all of them. So
 *     <domain *> source-ip-max-smtp-out 0/0 4
 * means no source address holds more than 4 connections, whatever the
 * domains, while a line in <domain gmail.com> limits what each address sends
 * to gmail.com (that mail then obeys the gmail.com line, not the * one: a
 * queue follows the most specific block that sets the directive, as every
 * setting does). Recipients count for the message rate, new connections for
 * the connect rate, message bytes for the data volume rate (a message larger
 * than one period's worth goes when the rate is conformant and delays the
 * next: QLIM_DEBT). The implicit source (no smtp-source-host) has none.
 *
 * The limiters live in one table for qmgr's lifetime, keyed
 * "IP DIRECTIVE <domain BLOCK>[ in <virtual-mta V>]", the name a shared
 * (cluster) backend would use. Each queue caches, per configuration
 * generation, the limiters of each source address it used, so a message
 * costs no lookup; a connection copies the pointers it needs at open.
 *
 * The same cache carries the address's warm-up cap for the queue's
 * destination (qmgr_warmup.c), so that a capped address is passed over
 * like one at its connection limit.
 *
 * Owns: the limiter table; each queue's cache (q->srcl).
 * SECURITY: none (addresses and numbers from the configuration).
 */
#include "config.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qmgr.h"
#include "qmgr_cluster.h"
#include "qmgr_table.h"
#include "qmgr_warmup.h"
#include "xalloc.h"

#define KEY_MAX 1024

struct srclim {
    struct qtab_entry e; /* first: the table's link and key */
    struct qlim lim;
};

static struct qtab table;

static const enum cfg_directive directives[QSRC_WARMUP] = {
    CFG_D_SOURCE_IP_MAX_MSG_RATE,
    CFG_D_SOURCE_IP_MAX_CONNECT_RATE,
    CFG_D_SOURCE_IP_MAX_SMTP_OUT,
    CFG_D_SOURCE_IP_MAX_DATA_VOLUME_RATE,
};

/* limiter - the table's limiter for KEY, created on first use */
static struct qlim *
limiter(const char *key, int which)
{
    static const enum qlim_kind kinds[QSRC_WARMUP] = { QLIM_RATE, QLIM_RATE, QLIM_LEASE,
                                                       QLIM_RATE };
    static const enum qlim_unit units[QSRC_WARMUP] = { QLIM_MSGS, QLIM_CONNS, QLIM_CONNS,
                                                       QLIM_BYTES };
    struct srclim *e = (struct srclim *)qtab_find(&table, key);

    if (e)
        return &e->lim;
    e = xcalloc(1, sizeof *e);
    e->e.key = xstrdup(key);
    qlim_init(&e->lim, QLIM_SOURCE, kinds[which], units[which], e->e.key);
    if (which == QSRC_VOLUME)
        e->lim.flags |= QLIM_DEBT;
    qtab_add(&table, &e->e);
    return &e->lim;
}

/* block_name - "<domain NAME>[ in <virtual-mta V>]" of scope S, into OUT */
static const char *
block_name(uint32_t s, char *out, size_t size)
{
    const struct cfg_scope *sc = &S.cfg->scopes[s];
    char pattern[256];

    cfg_domain_pattern(S.cfg, s, pattern, sizeof pattern);
    if (sc->parent != 0 && sc->parent < S.cfg->nscopes)
        snprintf(out, size, "<domain %s> in <%s %s>", pattern,
                 S.cfg->scopes[sc->parent].kind == CFG_S_POOL ? "virtual-mta-pool" : "virtual-mta",
                 cfg_str(S.cfg, S.cfg->scopes[sc->parent].name));
    else
        snprintf(out, size, "<domain %s>", pattern);
    return out;
}

/* resolve - the limiters of Q for source address IP into L (a new cache entry) */
static void
resolve(struct qqueue *q, const char *ip, struct qsource_limits *l)
{
    uint8_t addr[16];
    int family = strchr(ip, ':') ? AF_INET6 : AF_INET;

    memset(l, 0, sizeof *l);
    snprintf(l->ip, sizeof l->ip, "%s", ip);
    if (inet_pton(family, ip, addr) != 1)
        return;
    for (int i = 0; i < QSRC_WARMUP; i++) {
        const struct cfg_value *v = qmgr_queue_setting(q, directives[i]), *line;
        char key[KEY_MAX], block[700], basis[QLIM_BASIS_MAX];
        const char *text, *limit;
        uint32_t scope;

        if (v == NULL || (line = cfg_source_ip_limit(S.cfg, v, family, addr, &scope)) == NULL)
            continue;
        snprintf(key, sizeof key, "%s %s %s", ip, cfg_directive_info(directives[i])->name,
                 block_name(scope, block, sizeof block));
        text = cfg_str(S.cfg, line->text);
        limit = text + strcspn(text, " \t");
        limit += strspn(limit, " \t");
        snprintf(basis, sizeof basis, "%s %s for %s", cfg_directive_info(directives[i])->name,
                 limit, ip);
        l->lim[i] = limiter(key, i);
        qmgr_cluster_adopt(l->lim[i], line->source.local);
        qlim_set(l->lim[i], line->source.limit, line->source.period, basis);
        if (!qlim_limited(l->lim[i]) && i != QSRC_CONNS)
            l->lim[i] = NULL; /* a line of 0 (unlimited): nothing to ask */
    }
    l->lim[QSRC_WARMUP] = qmgr_warmup_limit(q, ip);
}

/* refresh - Q's cache is for the current configuration */
static void
refresh(struct qqueue *q)
{
    if (q->srcl_serial == S.cfg_serial)
        return;
    q->nsrcl = 0;
    q->srcl_serial = S.cfg_serial;
    q->srcl_any = qmgr_warmup_planned(q);
    for (int i = 0; i < QSRC_WARMUP; i++)
        q->srcl_any |= qmgr_queue_setting(q, directives[i]) != NULL;
}

/* qmgr_source_limits - see qmgr.h */
const struct qsource_limits *
qmgr_source_limits(struct qqueue *q, const char *ip)
{
    if (ip == NULL || *ip == 0)
        return NULL;
    refresh(q);
    if (!q->srcl_any)
        return NULL;
    for (uint32_t i = 0; i < q->nsrcl; i++)
        if (strcmp(q->srcl[i].ip, ip) == 0)
            return &q->srcl[i];
    q->srcl = xreallocarray(q->srcl, q->nsrcl + 1, sizeof *q->srcl);
    resolve(q, ip, &q->srcl[q->nsrcl]);
    return &q->srcl[q->nsrcl++];
}

/* qmgr_source_limited - has Q any source-ip-max-* setting? */
int
qmgr_source_limited(struct qqueue *q)
{
    refresh(q);
    return q->srcl_any;
}

static void
free_one(struct qtab_entry *te)
{
    struct srclim *e = (struct srclim *)te;

    qlim_fini(&e->lim);
    free(e->e.key);
    free(e);
}

void
qmgr_source_free(void)
{
    qtab_free(&table, free_one);
}
