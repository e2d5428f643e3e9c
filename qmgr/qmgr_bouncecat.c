/*
 * qmgr_bouncecat.c - bounce categories from <bounce-category-patterns>
 *
 * Compiles the configured "/REGEX/ category" lines and the built-in list
 * (below) with PCRE2, case-insensitive, and returns the category of the first
 * pattern that matches a status text. See qmgr_bouncecat.h for what exactly
 * is matched and in which order the lists are tried.
 *
 * Owns: the compiled patterns, their category names, one match-data block.
 *
 * SECURITY: status texts come from remote servers. Matching runs with a
 * PCRE2 match limit and on at most QMGR_BOUNCECAT_TEXT_MAX bytes; a match
 * that hits the limit counts as "no match" for that pattern and the search
 * goes on, so a hostile reply can at worst get a less precise category.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "cfg.h"
#include "msg.h"
#include "xalloc.h"

#include "qmgr_bouncecat.h"

/* Backtracking budget per pattern: far above what a sane pattern needs on 2 KB. */
#define MATCH_LIMIT 200000u

/*
 * The built-in list, equivalent to PowerMTA's stock <bounce-category-patterns>
 * (reference §1.8): text patterns first, then the enhanced status code
 * mapping, then "//" other. Status-code patterns accept an optional leading
 * reply code so that a bare "550 5.1.1 ..." reply classifies too.
 */
static const char *const default_patterns[][2] = {
    /* spam-related */
    { "spam", "spam-related" },
    { "junk mail", "spam-related" },
    { "black ?list|block ?list", "spam-related" },
    { "blocked", "spam-related" },
    { "\\bU\\.?C\\.?E\\.?\\b", "spam-related" },
    { "\\bAdv(ertisements?)?\\b", "spam-related" },
    { "unsolicited", "spam-related" },
    { "\\b(open)?RBL\\b", "spam-related" },
    { "realtime blackhole", "spam-related" },
    /* throttling: a receiver pacing the sender is a policy, not a full mailbox (below) */
    { "rate[ -]limit|\\brate of\\b|too many (messages|connections|concurrent|recipients)|"
      "throttl|temporarily deferred|unexpected volume|receiving mail at a rate|"
      "exceeded the (message |connection )?rate",
      "policy-related" },
    /* virus-related */
    { "\\bvirus\\b", "virus-related" },
    /* content-related */
    { "message +content", "content-related" },
    { "content +rejected", "content-related" },
    /* quota-issues */
    { "quota", "quota-issues" },
    { "limit exceeded", "quota-issues" },
    { "mailbox +(is +)?full", "quota-issues" },
    { "\\bstorage\\b", "quota-issues" },
    /* inactive-mailbox */
    { "(user|mailbox|recipient|rcpt|local part|address|account|mail drop|addressee) "
      "(has |has been |is )?(currently |temporarily )?"
      "(disabled|expired|inactive|not activated|deactivated|suspended)",
      "inactive-mailbox" },
    { "(mailbox|address|account)\\b.{0,40}\\b(is|has been) "
      "(disabled|deactivated|inactive|suspended)",
      "inactive-mailbox" },
    /* bad-mailbox */
    { "too many (bad|invalid|unknown|illegal|unavailable) "
      "(user|mailbox|recipient|rcpt|local part|address|account|mail drop|addressee)s?",
      "other" },
    { "(no such|bad|invalid|unknown|illegal|unavailable) (local +)?"
      "(user|mailbox|recipient|rcpt|local part|address|account|mail drop|addressee)",
      "bad-mailbox" },
    { "(user|mailbox|recipient|rcpt|local part|address|account|mail drop|addressee) +"
      "(\\S+@\\S+ +)?(is +)?(not (a +)?valid|not known|not here|not found|does not exist|"
      "bad|invalid|unknown|illegal|unavailable)",
      "bad-mailbox" },
    { "\\S+@\\S+ +(is +)?(not (a +)?valid|not known|not here|not found|does not exist|"
      "bad|invalid|unknown|illegal|unavailable)",
      "bad-mailbox" },
    { "(user|mailbox|recipient|address|account)\\b.{0,40}\\bdoes(n't| not) exist", "bad-mailbox" },
    { "recipient address rejected: access denied", "bad-mailbox" }, /* Microsoft 365 (DBEB) */
    { "no mailbox here by that name", "bad-mailbox" },
    { "not our customer", "bad-mailbox" },
    { "no longer (valid|available)", "bad-mailbox" },
    { "have an? \\S+ account", "bad-mailbox" },
    /* invalid-sender */
    { "sender (address )?(verify|verification) failed", "invalid-sender" },
    { "(unable|could not|cannot) verify sender", "invalid-sender" },
    { "sender (address )?(is )?(invalid|unknown|rejected)", "invalid-sender" },
    /* relaying-issues */
    { "\\brelay(ing)?\\b", "relaying-issues" },
    /* bad-domain */
    { "domain (retired|bad|invalid|unknown|illegal|unavailable)", "bad-domain" },
    { "domain no longer in use", "bad-domain" },
    { "domain (\\S+ +)?(is +)?obsolete", "bad-domain" },
    { "no such domain", "bad-domain" },
    /* policy-related */
    { "denied", "policy-related" },
    { "prohibit", "policy-related" },
    { "rejected", "policy-related" },
    { "refused", "policy-related" },
    { "allowed", "policy-related" },
    { "banned", "policy-related" },
    { "policy", "policy-related" },
    { "suspicious activity", "policy-related" },
    /* protocol-errors */
    { "bad sequence", "protocol-errors" },
    { "syntax error", "protocol-errors" },
    /* routing-errors */
    { "\\broute\\b", "routing-errors" },
    { "\\bunroutable\\b", "routing-errors" },
    { "\\bunrouteable\\b", "routing-errors" },
    /* enhanced status codes, optionally after a reply code */
    { "^(\\d{3}[ -])?2\\.\\d{1,3}\\.\\d{1,3}\\b", "success" },
    { "^(\\d{3}[ -])?[45]\\.1\\.1\\b", "bad-mailbox" },
    { "^(\\d{3}[ -])?[45]\\.1\\.2\\b", "bad-domain" },
    { "^(\\d{3}[ -])?[45]\\.3\\.5\\b", "bad-configuration" },
    { "^(\\d{3}[ -])?[45]\\.4\\.1\\b", "no-answer-from-host" },
    { "^(\\d{3}[ -])?[45]\\.4\\.2\\b", "bad-connection" },
    { "^(\\d{3}[ -])?[45]\\.4\\.3\\b", "routing-errors" },
    { "^(\\d{3}[ -])?[45]\\.4\\.4\\b", "routing-errors" },
    { "^(\\d{3}[ -])?[45]\\.4\\.6\\b", "routing-errors" },
    { "^(\\d{3}[ -])?[45]\\.4\\.7\\b", "message-expired" },
    { "^(\\d{3}[ -])?[45]\\.7\\.1\\b", "policy-related" },
    { "^(\\d{3}[ -])?[45]\\.2\\.2\\b", "quota-issues" },
    { "^(\\d{3}[ -])?[45]\\.2\\.1\\b", "inactive-mailbox" },
    { "^(\\d{3}[ -])?[45]\\.7\\.\\d{1,3}\\b", "policy-related" },
    { "", "other" },
};

#define NDEFAULTS (sizeof default_patterns / sizeof default_patterns[0])

struct bc_pattern {
    pcre2_code *re;
    char *category;
};

struct qmgr_bouncecat {
    struct bc_pattern *pats;
    size_t npats;
    size_t nconfigured;
    pcre2_match_data *md;
    pcre2_match_context *mctx;
};

/* add_pattern - compile RE (LEN bytes) for CATEGORY; 0, or -1 with a warning */
static int
add_pattern(struct qmgr_bouncecat *bc, const char *re, size_t len, const char *category)
{
    int code;
    PCRE2_SIZE offset;
    pcre2_code *compiled = pcre2_compile((PCRE2_SPTR)re, len, PCRE2_CASELESS, &code, &offset, NULL);

    if (!compiled) {
        PCRE2_UCHAR why[160];
        pcre2_get_error_message(code, why, sizeof why);
        msg_warn("bounce category pattern /%.*s/ skipped: %s at offset %zu", (int)len, re,
                 (const char *)why, (size_t)offset);
        return -1;
    }
    bc->pats = xreallocarray(bc->pats, bc->npats + 1, sizeof *bc->pats);
    bc->pats[bc->npats].re = compiled;
    bc->pats[bc->npats].category = xstrdup(category);
    bc->npats++;
    return 0;
}

/* add_configured - every line of every <bounce-category-patterns> block, in file order */
static void
add_configured(struct qmgr_bouncecat *bc, const struct cfg *c)
{
    uint32_t it = 0, s;

    while ((s = cfg_next_scope(c, CFG_S_BOUNCE_CATEGORY_PATTERNS, &it)) != CFG_NONE) {
        uint32_t vit = 0;
        const struct cfg_value *v;
        while ((v = cfg_scope_next(c, s, CFG_D_BOUNCE_CATEGORY_PATTERN, &vit)) != NULL) {
            const char *re = cfg_str(c, v->bounce.regex);

            if (v->type == CFG_T_BOUNCE_PATTERN &&
                add_pattern(bc, re, strlen(re), cfg_str(c, v->bounce.category)) == 0)
                bc->nconfigured++;
        }
    }
}

struct qmgr_bouncecat *
qmgr_bouncecat_new(const struct cfg *c)
{
    struct qmgr_bouncecat *bc = xcalloc(1, sizeof *bc);

    if (c)
        add_configured(bc, c);
    for (size_t i = 0; i < NDEFAULTS; i++)
        if (add_pattern(bc, default_patterns[i][0], strlen(default_patterns[i][0]),
                        default_patterns[i][1]) != 0)
            msg_panic("built-in bounce category pattern %zu does not compile", i);
    bc->md = pcre2_match_data_create(1, NULL);
    bc->mctx = pcre2_match_context_create(NULL);
    if (!bc->md || !bc->mctx)
        msg_fatal("out of memory for PCRE2 match data");
    pcre2_set_match_limit(bc->mctx, MATCH_LIMIT);
    return bc;
}

void
qmgr_bouncecat_free(struct qmgr_bouncecat *bc)
{
    if (!bc)
        return;
    for (size_t i = 0; i < bc->npats; i++) {
        pcre2_code_free(bc->pats[i].re);
        free(bc->pats[i].category);
    }
    free(bc->pats);
    pcre2_match_data_free(bc->md);
    pcre2_match_context_free(bc->mctx);
    free(bc);
}

const char *
qmgr_bouncecat_classify(struct qmgr_bouncecat *bc, const char *status_text)
{
    const char *text = status_text ? status_text : "";
    size_t len = strnlen(text, QMGR_BOUNCECAT_TEXT_MAX);

    for (size_t i = 0; i < bc->npats; i++) {
        int rc = pcre2_match(bc->pats[i].re, (PCRE2_SPTR)text, len, 0, 0, bc->md, bc->mctx);
        if (rc >= 0)
            return bc->pats[i].category;
        /* PCRE2_ERROR_NOMATCH, or a limit hit on hostile text: try the next pattern */
    }
    return QMGR_BOUNCECAT_OTHER;
}

char *
qmgr_bouncecat_status_text(char *out, size_t outsize, const char *status, const char *reply)
{
    const char *st = status ? status : "", *rp = reply ? reply : "";

    snprintf(out, outsize, "%s%s%s", st, *st && *rp ? " " : "", rp);
    return out;
}

const char *
qmgr_bouncecat_classify_reply(struct qmgr_bouncecat *bc, const char *status, const char *reply)
{
    char text[QMGR_BOUNCECAT_TEXT_MAX + 1];

    return qmgr_bouncecat_classify(bc,
                                   qmgr_bouncecat_status_text(text, sizeof text, status, reply));
}

const char *
qmgr_bouncecat_classify_result(struct qmgr_bouncecat *bc, unsigned code, const char *status,
                               const char *text)
{
    /* Our own reason ("connect to ...: connection refused") is no receiver's
       policy: only its status code says what kind of failure it was. */
    return qmgr_bouncecat_classify_reply(bc, status, code ? text : NULL);
}

size_t
qmgr_bouncecat_count(const struct qmgr_bouncecat *bc)
{
    return bc->npats;
}

size_t
qmgr_bouncecat_configured(const struct qmgr_bouncecat *bc)
{
    return bc->nconfigured;
}
