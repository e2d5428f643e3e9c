/*
 * cleanup_route.c - which virtual MTA a message leaves through
 *
 * Precedence, highest first (powermta.md 1.5, plus the seed's <sender>):
 *   1. the X-Virtual-MTA header, when the source has process-x-virtual-mta
 *      (an empty value is {default} with allow-empty-x-virtual-mta);
 *   2. the source's <pattern-list>: mail-from / rcpt-to / header entries in
 *      file order, the first virtual-mta= match wins (call-to: followed);
 *      rcpt-to matches when any recipient matches: one virtual MTA per
 *      message;
 *   3. the <sender ADDR> block whose address is MAIL FROM: its vmta;
 *   4. the source's default-virtual-mta (by-smtp-source-ip: the virtual MTA
 *      whose smtp-source-host is the address the client connected to);
 *   5. {default}.
 * A name is a <virtual-mta> or a <virtual-mta-pool>; a pool gives its
 * members in turn (round-robin per message, per configuration generation).
 * An unknown name goes to {default} when the source has
 * reject-invalid-virtual-mta no, else to invalid-virtual-mta-fallback when
 * that is set, else the message is refused (550 5.7.1 by the caller).
 *
 * Owns: nothing beyond the strings of a struct cleanup_route.
 *
 * SECURITY: the header value is peer input; cleanup_message_apply() already
 * refused values with whitespace or control bytes, and it is used only as a
 * lookup key (and copied into the queue name, which qstore length-checks).
 */
#include "config.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "cleanup.h"
#include "msg.h"
#include "xalloc.h"

#define DEFAULT_VMTA "{default}"

static int
src_bool(const struct cleanup_txn *t, enum cfg_directive d)
{
    return t->src.v[d] != NULL && t->src.v[d]->num != 0;
}

static const char *
src_str(const struct cleanup_txn *t, enum cfg_directive d)
{
    const struct cfg_value *v = t->src.v[d];

    return v && !(v->flags & CFG_VALUE_UNSET) ? cfg_str(t->conf->cfg, v->text) : NULL;
}

uint32_t
cleanup_sender_block(const struct cfg *c, const char *sender)
{
    return *sender ? cfg_find_scope(c, CFG_S_SENDER, sender) : CFG_NONE;
}

/* sender_vmta - step 3 */
static const char *
sender_vmta(const struct cleanup_txn *t)
{
    const struct cfg *c = t->conf->cfg;
    uint32_t s = cleanup_sender_block(c, t->sender);
    const struct cfg_value *v = s == CFG_NONE ? NULL : cfg_scope_get(c, s, CFG_D_SENDER_VMTA);

    return v ? cfg_str(c, v->text) : NULL;
}

/* has_source_host - does <virtual-mta> scope S list IP as an smtp-source-host? */
static int
has_source_host(const struct cfg *c, uint32_t s, const char *ip)
{
    const struct cfg_value *v;
    uint32_t it = 0;

    while ((v = cfg_scope_next(c, s, CFG_D_SMTP_SOURCE_HOST, &it)) != NULL) {
        const char *text = cfg_str(c, v->text);
        size_t n = strcspn(text, " \t");

        if (n == strlen(ip) && strncmp(text, ip, n) == 0)
            return 1;
    }
    return 0;
}

/* by_source_ip - the virtual MTA that sends from the address the client reached */
static const char *
by_source_ip(const struct cleanup_txn *t)
{
    const struct cfg *c = t->conf->cfg;
    uint32_t it = 0, s;

    while (*t->local_ip && (s = cfg_next_scope(c, CFG_S_VMTA, &it)) != CFG_NONE)
        if (has_source_host(c, s, t->local_ip))
            return cfg_str(c, c->scopes[s].name);
    return DEFAULT_VMTA;
}

/* requested - steps 1 to 5: the name asked for, and which rule asked */
static const char *
requested(const struct cleanup_txn *t, const struct cleanup_message *msg, const char **why)
{
    const char *name, *list;

    if (src_bool(t, CFG_D_PROCESS_X_VIRTUAL_MTA) && (msg->virtual_mta || msg->bad_virtual_mta)) {
        *why = "x-virtual-mta";
        if (msg->bad_virtual_mta)
            return ""; /* not a valid name: never found */
        if (*msg->virtual_mta == '\0')
            return src_bool(t, CFG_D_ALLOW_EMPTY_X_VIRTUAL_MTA) ? DEFAULT_VMTA : "";
        return msg->virtual_mta;
    }
    *why = "pattern-list";
    if ((list = src_str(t, CFG_D_SOURCE_PATTERN_LIST)) != NULL &&
        (name = cleanup_conf_pattern_vmta(t->conf, list, t, msg)) != NULL)
        return name;
    *why = "sender";
    if ((name = sender_vmta(t)) != NULL)
        return name;
    *why = "default-virtual-mta";
    if ((name = src_str(t, CFG_D_DEFAULT_VIRTUAL_MTA)) != NULL)
        return strcasecmp(name, "by-smtp-source-ip") == 0 ? by_source_ip(t) : name;
    *why = "default";
    return DEFAULT_VMTA;
}

/* pool_member - the next member of pool scope P; NULL for an empty pool */
static const char *
pool_member(struct cleanup_conf *cc, uint32_t p)
{
    const struct cfg *c = cc->cfg;
    const struct cfg_value *v;
    unsigned n = 0, want;
    uint32_t it = 0;

    while (cfg_scope_next(c, p, CFG_D_VIRTUAL_MTA, &it) != NULL)
        n++;
    if (n == 0)
        return NULL;
    want = cc->pool_turn[p]++ % n;
    it = 0;
    while ((v = cfg_scope_next(c, p, CFG_D_VIRTUAL_MTA, &it)) != NULL && want-- > 0)
        ;
    return v ? cfg_str(c, v->text) : NULL;
}

/* resolve_name - NAME as a virtual MTA (itself) or a pool (a member); NULL if unknown */
static const char *
resolve_name(struct cleanup_conf *cc, const char *name)
{
    uint32_t s;

    if (strcmp(name, DEFAULT_VMTA) == 0)
        return DEFAULT_VMTA;
    if (*name == '\0')
        return NULL;
    if ((s = cfg_find_scope(cc->cfg, CFG_S_VMTA, name)) != CFG_NONE)
        return cfg_str(cc->cfg, cc->cfg->scopes[s].name);
    if ((s = cfg_find_scope(cc->cfg, CFG_S_POOL, name)) != CFG_NONE)
        return pool_member(cc, s);
    return NULL;
}

/*
 * fallback - the name to use instead of an unknown one, or NULL to refuse:
 * invalid-virtual-mta-fallback when set (PowerMTA's way to keep such mail);
 * else {default} when the source says reject-invalid-virtual-mta no
 */
static const char *
fallback(const struct cleanup_txn *t)
{
    const struct cfg_value *v = cfg_global(t->conf->cfg, CFG_D_INVALID_VIRTUAL_MTA_FALLBACK);

    if (v && !(v->flags & (CFG_VALUE_UNSET | CFG_VALUE_CLEAR)) && *cfg_str(t->conf->cfg, v->text))
        return cfg_str(t->conf->cfg, v->text);
    return src_bool(t, CFG_D_REJECT_INVALID_VIRTUAL_MTA) ? NULL : DEFAULT_VMTA;
}

int
cleanup_route_choose(struct cleanup_txn *t, const struct cleanup_message *msg,
                     struct cleanup_route *r)
{
    const char *name = requested(t, msg, &r->why), *vmta = resolve_name(t->conf, name);

    if (vmta == NULL) {
        const char *fb = fallback(t);

        if (fb == NULL || (vmta = resolve_name(t->conf, fb)) == NULL) {
            r->selected = xstrdup(name); /* for the caller's log line */
            r->vmta = NULL;
            return -ENOENT;
        }
        name = fb;
        r->why = "invalid-virtual-mta-fallback";
    }
    r->selected = xstrdup(name);
    r->vmta = xstrdup(vmta);
    return 0;
}

void
cleanup_route_free(struct cleanup_route *r)
{
    free(r->selected);
    free(r->vmta);
    r->selected = r->vmta = NULL;
}
