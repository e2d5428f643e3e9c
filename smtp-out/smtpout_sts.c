/*
 * smtpout_sts.c - MTA-STS policies of recipient domains: the TXT check, the
 * HTTPS fetch and the per-process cache (contract in smtpout_sts.h; the
 * formats are in smtpout_sts_policy.c)
 *
 * Owns: the cache (a list: a few thousand domains at most, looked up once
 * per connection, not per message) and every request in flight; a request
 * is freed once its DNS lookup and its fetch, if any, have answered.
 *
 * SECURITY: a policy enters the cache only from a verified HTTPS fetch that
 * parsed completely. An attacker who can change DNS answers can hide the
 * TXT record, but not a cached policy (RFC 8461 section 10.2).
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "msg.h"
#include "xalloc.h"
#include "smtpout_https.h"
#include "smtpout_sts.h"

struct sts_entry {
    struct sts_entry *next;
    char domain[MXDNS_NAME_MAX + 1];
    struct smtpout_sts_policy policy;
    uint64_t expires_ms;
};

struct smtpout_sts {
    uv_loop_t *loop;
    struct mxdns *dns;
    struct smtpout_sts_options opts;
    struct sts_entry *cache;
    size_t ncache;
    struct smtpout_sts_req *reqs; /* in flight */
};

struct smtpout_sts_req {
    struct smtpout_sts *sts; /* NULL once the cache is gone */
    struct smtpout_sts_req *next, *prev;
    char domain[MXDNS_NAME_MAX + 1];
    char id[SMTPOUT_STS_ID_MAX + 1];
    smtpout_sts_cb cb;
    void *arg;
    struct smtpout_https_get *get;
    int dns_pending;
    int answered; /* CB ran (or was cancelled) */
    int in_call;  /* smtpout_sts_get has not returned yet */
};

/* --- the cache ------------------------------------------------------------------------ */

static struct sts_entry *
cache_find(struct smtpout_sts *sts, const char *domain)
{
    uint64_t now = uv_now(sts->loop);
    struct sts_entry **pp = &sts->cache, *e;

    while ((e = *pp) != NULL) {
        if (e->expires_ms <= now) {
            *pp = e->next;
            free(e);
            sts->ncache--;
            continue;
        }
        if (strcasecmp(e->domain, domain) == 0)
            return e;
        pp = &e->next;
    }
    return NULL;
}

static void
cache_put(struct smtpout_sts *sts, const char *domain, const struct smtpout_sts_policy *p)
{
    struct sts_entry *e = cache_find(sts, domain);
    unsigned long age = p->max_age < SMTPOUT_STS_CACHE_MAX_S ? p->max_age : SMTPOUT_STS_CACHE_MAX_S;

    if (e == NULL) {
        if (sts->ncache >= SMTPOUT_STS_CACHE_ENTRIES) { /* drop the oldest-inserted (the tail) */
            struct sts_entry **pp = &sts->cache;
            while ((*pp)->next)
                pp = &(*pp)->next;
            free(*pp);
            *pp = NULL;
            sts->ncache--;
        }
        e = xcalloc(1, sizeof *e);
        snprintf(e->domain, sizeof e->domain, "%s", domain);
        e->next = sts->cache;
        sts->cache = e;
        sts->ncache++;
    }
    e->policy = *p;
    e->expires_ms = uv_now(sts->loop) + (uint64_t)age * 1000;
}

/* --- requests ------------------------------------------------------------------------- */

static void
req_unlink(struct smtpout_sts_req *req)
{
    if (req->sts == NULL)
        return;
    if (req->prev)
        req->prev->next = req->next;
    else
        req->sts->reqs = req->next;
    if (req->next)
        req->next->prev = req->prev;
    req->next = req->prev = NULL;
}

static void
req_free_maybe(struct smtpout_sts_req *req)
{
    if (req->dns_pending || req->get || !req->answered || req->in_call)
        return;
    req_unlink(req);
    free(req);
}

static void
req_answer(struct smtpout_sts_req *req, const struct smtpout_sts_policy *p, const char *note)
{
    if (!req->answered) {
        req->answered = 1;
        req->cb(req->arg, p && p->mode != SMTPOUT_STS_NONE ? p : NULL, note);
    }
    req_free_maybe(req);
}

/* answer_cached - the cached policy if there is one (RFC 8461 5.1), else none */
static void
answer_cached(struct smtpout_sts_req *req, const char *why)
{
    struct sts_entry *e = req->sts ? cache_find(req->sts, req->domain) : NULL;
    char note[900];

    snprintf(note, sizeof note, "%s; %s", why,
             e ? "the cached policy applies" : "no MTA-STS policy");
    req_answer(req, e ? &e->policy : NULL, note);
}

static void
on_fetched(void *arg, int err, const char *why, int status, const char *content_type,
           const char *body, size_t len)
{
    struct smtpout_sts_req *req = arg;
    struct smtpout_sts_policy p;
    char perr[160], note[700];

    req->get = NULL;
    if (err < 0) {
        snprintf(note, sizeof note, "policy fetch from mta-sts.%s failed: %s", req->domain, why);
    } else if (status != 200) {
        snprintf(note, sizeof note, "policy fetch from mta-sts.%s: HTTP status %d", req->domain,
                 status);
    } else if (strcmp(content_type, "text/plain") != 0) {
        snprintf(note, sizeof note, "policy from mta-sts.%s is not text/plain", req->domain);
    } else if (smtpout_sts_parse(body ? body : "", len, &p, perr, sizeof perr) < 0) {
        snprintf(note, sizeof note, "bad policy from mta-sts.%s: %s", req->domain, perr);
    } else {
        snprintf(p.id, sizeof p.id, "%s", req->id);
        if (req->sts)
            cache_put(req->sts, req->domain, &p);
        snprintf(note, sizeof note, "policy %s fetched: mode %s, max_age %lu", p.id,
                 smtpout_sts_mode_name(p.mode), p.max_age);
        req_answer(req, &p, note);
        return;
    }
    answer_cached(req, note);
}

static void
on_txt(void *arg, enum mxdns_status status, const char *why, const char *const *txts, size_t n)
{
    struct smtpout_sts_req *req = arg;
    struct sts_entry *e;
    char id[SMTPOUT_STS_ID_MAX + 1], host[MXDNS_NAME_MAX + 16];
    size_t nsts = 0;

    req->dns_pending = 0;
    if (req->answered || req->sts == NULL) {
        req_answer(req, NULL, "cancelled");
        return;
    }
    for (size_t i = 0; i < n; i++)
        if (strncmp(txts[i], "v=STSv1", 7) == 0 &&
            (txts[i][7] == ';' || txts[i][7] == ' ' || txts[i][7] == '\0') && nsts++ == 0 &&
            smtpout_sts_txt_id(txts[i], id) < 0)
            nsts = 2; /* a malformed record counts as none (RFC 8461 3.1) */
    if (nsts != 1) {
        answer_cached(req,
                      status == MXDNS_OK || mxdns_permanent(status)
                          ? (nsts > 1 ? "no valid MTA-STS TXT record" : "no MTA-STS TXT record")
                          : why);
        return;
    }
    if ((e = cache_find(req->sts, req->domain)) != NULL && strcmp(e->policy.id, id) == 0) {
        req_answer(req, &e->policy, "cached policy");
        return;
    }
    snprintf(req->id, sizeof req->id, "%s", id);
    snprintf(host, sizeof host, "mta-sts.%s", req->domain);
    req->get = smtpout_https_get(req->sts->loop, req->sts->dns, req->sts->opts.https_ctx, host,
                                 req->sts->opts.https_port, "/.well-known/mta-sts.txt",
                                 SMTPOUT_STS_BODY_MAX, req->sts->opts.timeout_ms, on_fetched, req);
}

struct smtpout_sts_req *
smtpout_sts_get(struct smtpout_sts *sts, const char *domain, smtpout_sts_cb cb, void *arg)
{
    struct smtpout_sts_req *req = xcalloc(1, sizeof *req);
    char name[MXDNS_NAME_MAX + 16];

    req->sts = sts;
    snprintf(req->domain, sizeof req->domain, "%s", domain);
    req->cb = cb;
    req->arg = arg;
    req->next = sts->reqs;
    if (sts->reqs)
        sts->reqs->prev = req;
    sts->reqs = req;
    req->dns_pending = 1;
    req->in_call = 1;
    snprintf(name, sizeof name, "_mta-sts.%s", domain);
    mxdns_txt(sts->dns, name, on_txt, req);
    req->in_call = 0;
    if (req->answered && !req->dns_pending && !req->get) {
        req_free_maybe(req);
        return NULL;
    }
    return req;
}

void
smtpout_sts_cancel(struct smtpout_sts_req *req)
{
    if (req == NULL || req->answered)
        return;
    req->answered = 1; /* the callback will not run */
    if (req->get) {
        smtpout_https_cancel(req->get);
        req->get = NULL;
    }
    req_free_maybe(req);
}

struct smtpout_sts *
smtpout_sts_create(uv_loop_t *loop, struct mxdns *dns, const struct smtpout_sts_options *opts)
{
    struct smtpout_sts *sts = xcalloc(1, sizeof *sts);

    sts->loop = loop;
    sts->dns = dns;
    sts->opts = *opts;
    return sts;
}

void
smtpout_sts_destroy(struct smtpout_sts *sts)
{
    struct sts_entry *e;
    struct smtpout_sts_req *req, *next;

    if (sts == NULL)
        return;
    for (req = sts->reqs; req; req = next) {
        next = req->next;
        req->sts = NULL;
        req->next = req->prev = NULL;
        if (!req->answered) {
            req->answered = 1;
            req->cb(req->arg, NULL, "cancelled");
        }
        if (req->get) {
            smtpout_https_cancel(req->get);
            req->get = NULL;
        }
        if (!req->dns_pending)
            free(req);
    }
    while ((e = sts->cache) != NULL) {
        sts->cache = e->next;
        free(e);
    }
    free(sts);
}
