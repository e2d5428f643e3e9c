/*
 * cleanup_conf.c - what one configuration generation means to cleanup
 *
 * Built once per generation (at start and at every reload) from the mapped
 * snapshot: the DKIM key lists (global `domain-key` lines, each
 * <virtual-mta>'s, and the seed's per-domain dkim-selector + dkim-key-file
 * pairs), every <pattern-list> entry compiled with PCRE2, and the pool
 * round-robin counters. Keys are loaded through the OpenDKIM key cache now,
 * so a missing or unreadable key is logged at (re)load, not at the first
 * message; a bad domain-key line is left out of its list (messages it would
 * have signed go out unsigned, as PowerMTA does with no matching key), a bad
 * seed key makes the domain's messages fail temporarily (451) until fixed.
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

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "cleanup.h"
#include "msg.h"
#include "worker.h"
#include "xalloc.h"

#define CALL_DEPTH_MAX 8

enum pattern_result { PR_VMTA, PR_CALL, PR_OTHER };

struct cleanup_pattern {
    uint32_t scope;          /* the <pattern-list> it belongs to */
    enum cfg_directive what; /* MAIL_FROM, RCPT_TO, HEADER */
    char *header;            /* HEADER: the field name */
    pcre2_code *re;
    enum pattern_result result;
    char *arg; /* vmta name or called list */
};

/* --- domain-key lines ------------------------------------------------------- */

/* trim - strip blanks around S in place */
static char *
trim(char *s)
{
    char *e;

    while (isspace((unsigned char)*s))
        s++;
    e = s + strlen(s);
    while (e > s && isspace((unsigned char)e[-1]))
        *--e = '\0';
    return s;
}

/* add_domain_key - "SEL,DOMAIN,FILE" into LIST; logs a bad key */
static void
add_domain_key(struct cleanup_dkim_keylist *list, const char *text)
{
    char *copy = xstrdup(text), *dom, *path, err[CLEANUP_ERRLEN];

    if ((dom = strchr(copy, ',')) == NULL || (path = strchr(dom + 1, ',')) == NULL) {
        msg_error("domain-key %s: expected SELECTOR,DOMAIN,FILE; ignored", text);
        free(copy);
        return;
    }
    *dom++ = '\0';
    *path++ = '\0';
    if (cleanup_dkim_keylist_add(cleanup.dk, list, trim(copy), trim(dom), trim(path), err,
                                 sizeof(err)) < 0)
        msg_error("domain-key %s: %s; this key is not used", text, err);
    free(copy);
}

/* scope_keys - a keylist of the domain-key lines directly in scope S */
static struct cleanup_dkim_keylist *
scope_keys(const struct cfg *c, uint32_t s)
{
    struct cleanup_dkim_keylist *list = cleanup_dkim_keylist_create();
    const struct cfg_value *v;
    uint32_t it = 0;

    while ((v = cfg_scope_next(c, s, CFG_D_DOMAIN_KEY, &it)) != NULL)
        add_domain_key(list, cfg_str(c, v->text));
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

/* parse_result - "virtual-mta=X", "call-to:L" or anything else */
static void
parse_result(struct cleanup_pattern *p, const char *result)
{
    p->result = PR_OTHER;
    if (strncasecmp(result, "virtual-mta=", 12) == 0) {
        p->result = PR_VMTA;
        p->arg = xstrdup(result + 12);
    } else if (strncasecmp(result, "call-to:", 8) == 0) {
        p->result = PR_CALL;
        p->arg = xstrdup(result + 8);
    }
}

/* compile_entry - one mail-from/rcpt-to/header line into P; 0 or -1 (logged) */
static int
compile_entry(struct cleanup_pattern *p, const char *text)
{
    char *copy = xstrdup(text), *s = trim(copy), *re, *rest;
    int code;
    PCRE2_SIZE off;

    if (p->what == CFG_D_HEADER) {
        size_t n = strcspn(s, " \t");

        p->header = xstrndup(s, n);
        s = trim(s + n);
    }
    if ((rest = cfg_split_regex(s, &re)) == NULL ||
        (p->re = pcre2_compile((PCRE2_SPTR)re, PCRE2_ZERO_TERMINATED, PCRE2_CASELESS, &code, &off,
                               NULL)) == NULL) {
        msg_error("pattern-list entry '%s' cannot be compiled; ignored", text);
        free(copy);
        return -1;
    }
    parse_result(p, trim(rest));
    free(copy);
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

            if (p.what != CFG_D_MAIL_FROM && p.what != CFG_D_RCPT_TO && p.what != CFG_D_HEADER)
                continue;
            if (compile_entry(&p, cfg_str(c, v->text)) < 0) {
                free(p.header);
                continue;
            }
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
entry_matches(const struct cleanup_pattern *p, const struct cleanup_txn *t,
              const struct cleanup_message *msg)
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
            if (!msg->hdrs[i].deleted && strcasecmp(msg->hdrs[i].name, p->header) == 0 &&
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

        if (p->scope != s || p->result == PR_OTHER || !entry_matches(p, t, msg))
            continue;
        if (p->result == PR_VMTA)
            return p->arg;
        called = cfg_find_scope(cc->cfg, CFG_S_PATTERN_LIST, p->arg);
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
    for (size_t i = 0; i < cc->npatterns; i++) {
        pcre2_code_free(cc->patterns[i].re);
        free(cc->patterns[i].header);
        free(cc->patterns[i].arg);
    }
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
    free(cc->pool_turn);
    worker_config_release(cc->cfg);
    free(cc);
}
