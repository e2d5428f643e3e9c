/*
 * cleanup_conf.c - what one configuration generation means to cleanup
 *
 * Built once per generation (at start and at every reload) from the mapped
 * snapshot: the DKIM key lists (global `domain-key` lines, each
 * <virtual-mta>'s, and the seed's per-domain dkim-selector + dkim-key-file
 * pairs), every <pattern-list> entry compiled with PCRE2, the pool
 * round-robin counters, and the address lists of the bounce and
 * feedback-loop processors (whose recipients go to their own queues). Every entry comes parsed
 * (typed records of the snapshot) and every key was checked by pmtad as our user before the
 * generation was published (conf/cfg_key.c), so a key that cannot sign is a
 * --check-config or reload error, not mail. Keys are loaded through the
 * OpenDKIM key cache at (re)load; should one have changed on disk since the
 * check, a bad domain-key line is left out of its list (logged), a bad seed
 * key makes the domain's messages fail temporarily (451) until fixed.
 *
 * Owns: struct cleanup_conf and all it points to; it holds its configuration
 * generation (worker_config_hold) until the last transaction lets go.
 *
 * SECURITY: regular expressions come from the operator's configuration (and
 * were compiled once by pmtad already); the subjects they run on are peer
 * text, bounded by the message limits. PCRE2 match limits are left at the
 * library defaults, which bound backtracking.
 */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "cleanup.h"
#include "msg.h"
#include "worker.h"
#include "xalloc.h"

#define CALL_DEPTH_MAX 8

struct cleanup_pattern {
    uint32_t scope;                    /* the <pattern-list> it belongs to */
    enum cfg_directive what;           /* MAIL_FROM, RCPT_TO, HEADER */
    const struct cfg_pattern_entry *e; /* the parsed line (in the pinned cfg) */
    pcre2_code *re;
};

/* --- domain-key lines ------------------------------------------------------- */

/* add_domain_key - one parsed domain-key line into LIST; logs a key that cannot be used */
static void
add_domain_key(const struct cfg *c, struct cleanup_dkim_keylist *list, const struct cfg_value *v)
{
    char err[CLEANUP_ERRLEN];

    if (v->type != CFG_T_DOMAIN_KEY)
        return;
    if (cleanup_dkim_keylist_add(cleanup.dk, list, cfg_str(c, v->key.selector),
                                 cfg_str(c, v->key.domain), cfg_str(c, v->key.path), err,
                                 sizeof(err)) < 0)
        msg_error("domain-key %s: %s; this key is not used", cfg_str(c, v->text), err);
}

/* scope_keys - a keylist of the domain-key lines directly in scope S */
static struct cleanup_dkim_keylist *
scope_keys(const struct cfg *c, uint32_t s)
{
    struct cleanup_dkim_keylist *list = cleanup_dkim_keylist_create();
    const struct cfg_value *v;
    uint32_t it = 0;

    while ((v = cfg_scope_next(c, s, CFG_D_DOMAIN_KEY, &it)) != NULL)
        add_domain_key(c, list, v);
    return list;
}

static void
load_vmta_keys(struct cleanup_conf *cc)
{
    const struct cfg *c = cc->cfg;
    uint32_t it = 0, s;

    while ((s = cfg_next_scope(c, CFG_S_VMTA, &it)) != CFG_NONE) {
        if (cfg_scope_get(c, s, CFG_D_DOMAIN_KEY) == NULL)
            continue;
        cc->vmta_keys = xreallocarray(cc->vmta_keys, cc->nvmta_keys + 1, sizeof(*cc->vmta_keys));
        cc->vmta_keys[cc->nvmta_keys].scope = s;
        cc->vmta_keys[cc->nvmta_keys++].keys = scope_keys(c, s);
    }
}

/* preload_seed_keys - every <domain>'s dkim-selector + dkim-key-file, checked now */
static void
preload_seed_keys(struct cleanup_conf *cc)
{
    const struct cfg *c = cc->cfg;
    const struct cfg_value *sel, *file;
    uint32_t it = 0, s;

    while ((s = cfg_next_scope(c, CFG_S_DOMAIN, &it)) != CFG_NONE) {
        sel = cfg_scope_get(c, s, CFG_D_DKIM_SELECTOR);
        file = cfg_scope_get(c, s, CFG_D_DKIM_KEY_FILE);
        if (sel && file)
            (void)cleanup_conf_seed_keys(cc, cfg_str(c, sel->text), cfg_str(c, file->text));
    }
}

const struct cleanup_dkim_keylist *
cleanup_conf_seed_keys(struct cleanup_conf *cc, const char *selector, const char *path)
{
    struct cleanup_seed_key *k;
    char err[CLEANUP_ERRLEN];

    for (size_t i = 0; i < cc->nseed_keys; i++)
        if (strcmp(cc->seed_keys[i].selector, selector) == 0 &&
            strcmp(cc->seed_keys[i].path, path) == 0)
            return cc->seed_keys[i].keys;
    cc->seed_keys = xreallocarray(cc->seed_keys, cc->nseed_keys + 1, sizeof(*cc->seed_keys));
    k = &cc->seed_keys[cc->nseed_keys++];
    k->selector = xstrdup(selector);
    k->path = xstrdup(path);
    k->keys = cleanup_dkim_keylist_create();
    /* "*": the key signs whatever identity the <domain> block's settings choose */
    if (cleanup_dkim_keylist_add(cleanup.dk, k->keys, selector, "*", path, err, sizeof(err)) < 0) {
        msg_error("dkim-key-file %s: %s", path, err);
        cleanup_dkim_keylist_free(k->keys);
        k->keys = NULL;
    }
    return k->keys;
}

const struct cleanup_dkim_keylist *
cleanup_conf_vmta_keys(const struct cleanup_conf *cc, const char *name)
{
    uint32_t s = cfg_find_scope(cc->cfg, CFG_S_VMTA, name);

    for (size_t i = 0; s != CFG_NONE && i < cc->nvmta_keys; i++)
        if (cc->vmta_keys[i].scope == s)
            return cc->vmta_keys[i].keys;
    return NULL;
}

/* --- <pattern-list> ------------------------------------------------------------ */

/* compile_entry - the regex of pattern P; 0 or -1 (logged; pmtad compiled it already) */
static int
compile_entry(const struct cfg *c, struct cleanup_pattern *p, const struct cfg_value *v)
{
    int code;
    PCRE2_SIZE off;

    p->e = &v->pattern;
    p->re = pcre2_compile((PCRE2_SPTR)cfg_str(c, p->e->regex), PCRE2_ZERO_TERMINATED,
                          PCRE2_CASELESS, &code, &off, NULL);
    if (p->re == NULL) {
        msg_error("pattern-list entry '%s' cannot be compiled; ignored", cfg_str(c, v->text));
        return -1;
    }
    return 0;
}

static void
compile_patterns(struct cleanup_conf *cc)
{
    const struct cfg *c = cc->cfg;
    uint32_t it = 0, s;

    while ((s = cfg_next_scope(c, CFG_S_PATTERN_LIST, &it)) != CFG_NONE) {
        const struct cfg_scope *sc = &c->scopes[s];

        for (uint32_t i = 0; i < sc->count && sc->first + i < c->nvalues; i++) {
            const struct cfg_value *v = &c->values[sc->first + i];
            struct cleanup_pattern p = { .scope = s, .what = (enum cfg_directive)v->directive };

            if (v->type != CFG_T_PATTERN || compile_entry(c, &p, v) < 0)
                continue;
            cc->patterns = xreallocarray(cc->patterns, cc->npatterns + 1, sizeof(*cc->patterns));
            cc->patterns[cc->npatterns++] = p;
        }
    }
}

/* re_match - does RE match SUBJECT? */
static int
re_match(pcre2_code *re, const char *subject)
{
    pcre2_match_data *md = pcre2_match_data_create_from_pattern(re, NULL);
    int rc;

    if (md == NULL)
        return 0;
    rc = pcre2_match(re, (PCRE2_SPTR)subject, strlen(subject), 0, 0, md, NULL);
    pcre2_match_data_free(md);
    return rc >= 0;
}

/* entry_matches - does pattern P match this transaction? */
static int
entry_matches(const struct cleanup_conf *cc, const struct cleanup_pattern *p,
              const struct cleanup_txn *t, const struct cleanup_message *msg)
{
    switch (p->what) {
    case CFG_D_MAIL_FROM:
        return re_match(p->re, t->sender);
    case CFG_D_RCPT_TO:
        for (size_t i = 0; i < t->nrcpt; i++)
            if (re_match(p->re, t->rcpts[i].address))
                return 1;
        return 0;
    default:
        for (size_t i = 0; i < msg->nhdrs; i++)
            if (!msg->hdrs[i].deleted &&
                strcasecmp(msg->hdrs[i].name, cfg_str(cc->cfg, p->e->header)) == 0 &&
                re_match(p->re, msg->hdrs[i].value))
                return 1;
        return 0;
    }
}

/* run_list - the first virtual-mta= result of list scope S (following call-to:) */
static const char *
run_list(const struct cleanup_conf *cc, uint32_t s, const struct cleanup_txn *t,
         const struct cleanup_message *msg, int depth)
{
    const char *r;
    uint32_t called;

    for (size_t i = 0; i < cc->npatterns; i++) {
        const struct cleanup_pattern *p = &cc->patterns[i];

        if (p->scope != s || p->e->result == CFG_RESULT_RECIPIENT_PRIORITY ||
            !entry_matches(cc, p, t, msg))
            continue;
        if (p->e->result == CFG_RESULT_VMTA)
            return cfg_str(cc->cfg, p->e->target);
        called = cfg_find_scope(cc->cfg, CFG_S_PATTERN_LIST, cfg_str(cc->cfg, p->e->target));
        if (depth < CALL_DEPTH_MAX && called != CFG_NONE &&
            (r = run_list(cc, called, t, msg, depth + 1)) != NULL)
            return r;
    }
    return NULL;
}

const char *
cleanup_conf_pattern_vmta(const struct cleanup_conf *cc, const char *list,
                          const struct cleanup_txn *t, const struct cleanup_message *msg)
{
    uint32_t s = cfg_find_scope(cc->cfg, CFG_S_PATTERN_LIST, list);

    return s == CFG_NONE ? NULL : run_list(cc, s, t, msg, 0);
}

/* --- lifetime --------------------------------------------------------------------- */

/* --- bounce and feedback-loop processors --------------------------------------- */

/* load_processors - each processor's own <address-list>, in file order */
static void
load_processors(struct cleanup_conf *cc)
{
    const struct cfg *c = cc->cfg;
    uint32_t it = 0, l;

    while ((l = cfg_next_scope(c, CFG_S_ADDRESS_LIST, &it)) != CFG_NONE) {
        uint32_t parent = c->scopes[l].parent;
        int kind = parent ? c->scopes[parent].kind : -1;

        if (kind != CFG_S_BOUNCE_PROCESSOR && kind != CFG_S_FBL_PROCESSOR)
            continue;
        cc->processors = xreallocarray(cc->processors, cc->nprocessors + 1, sizeof *cc->processors);
        cc->processors[cc->nprocessors].queue_domain = kind == CFG_S_BOUNCE_PROCESSOR
                                                           ? "{bounce}"
                                                           : "{feedbackLoop}";
        cc->processors[cc->nprocessors++].list = cfg_addrlist_new(c, l);
    }
}

const char *
cleanup_conf_processor_queue(const struct cleanup_conf *cc, const char *addr)
{
    time_t now = time(NULL);

    for (size_t i = 0; i < cc->nprocessors; i++) {
        struct cleanup_processor *p = &cc->processors[i];

        if (now - p->refreshed >= 2) { /* an address-file edited on disk counts soon */
            p->refreshed = now;
            cfg_addrlist_refresh(p->list);
        }
        if (cfg_addrlist_match(p->list, addr))
            return p->queue_domain;
    }
    return NULL;
}

struct cleanup_conf *
cleanup_conf_new(const struct cfg *cfg)
{
    struct cleanup_conf *cc = xcalloc(1, sizeof(*cc));
    const struct cfg_value *hn;

    cc->cfg = worker_config_hold();
    if (cc->cfg != cfg)
        msg_panic("cleanup_conf_new: not the current configuration");
    cc->refs = 1;
    cc->pool_turn = xcalloc(cfg->nscopes ? cfg->nscopes : 1, sizeof(*cc->pool_turn));
    hn = cfg_global(cfg, CFG_D_HOST_NAME);
    cc->host_name = hn ? cfg_str(cfg, hn->text) : NULL;
    cc->global_keys = scope_keys(cfg, 0);
    load_vmta_keys(cc);
    preload_seed_keys(cc);
    compile_patterns(cc);
    load_processors(cc);
    return cc;
}

void
cleanup_conf_ref(struct cleanup_conf *cc)
{
    cc->refs++;
}

static void
free_patterns(struct cleanup_conf *cc)
{
    for (size_t i = 0; i < cc->npatterns; i++)
        pcre2_code_free(cc->patterns[i].re);
    free(cc->patterns);
}

void
cleanup_conf_unref(struct cleanup_conf *cc)
{
    if (cc == NULL || --cc->refs > 0)
        return;
    cleanup_dkim_keylist_free(cc->global_keys);
    for (size_t i = 0; i < cc->nvmta_keys; i++)
        cleanup_dkim_keylist_free(cc->vmta_keys[i].keys);
    free(cc->vmta_keys);
    for (size_t i = 0; i < cc->nseed_keys; i++) {
        cleanup_dkim_keylist_free(cc->seed_keys[i].keys);
        free(cc->seed_keys[i].selector);
        free(cc->seed_keys[i].path);
    }
    free(cc->seed_keys);
    free_patterns(cc);
    for (size_t i = 0; i < cc->nprocessors; i++)
        cfg_addrlist_free(cc->processors[i].list);
    free(cc->processors);
    free(cc->pool_turn);
    worker_config_release(cc->cfg);
    free(cc);
}
