/*
 * smtpout_tlspol.c - what TLS one destination demands: DANE (TLSA lookup),
 * MTA-STS (the domain's policy), smtp-tls-ca-file (contract in
 * smtpout_tlspol.h)
 *
 * Owns: one small request per TLSA lookup in flight; the decision belongs
 * to the caller.
 *
 * SECURITY: the order is the security argument: a secure TLSA answer wins
 * over everything (RFC 7672; RFC 8461 section 2 defers to DANE), a failed
 * TLSA lookup of a secure name never falls back to less, and an enforced
 * policy makes TLS mandatory so that smtpout_conn never retries in clear.
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "xalloc.h"
#include "smtpout_tlspol.h"

struct tlsa_req {
    const struct smtpout_tlspol_settings *set;
    struct smtpout_tls_decision *d;
    smtpout_tlspol_cb cb;
    void *arg;
};

/* unusable - the destination must not be used now: a temporary 4.7.5 saying WHAT */
static void
unusable(struct smtpout_tls_decision *d, const char *what)
{
    d->unusable = 1;
    smtpout_reply_local(&d->why, SMTPOUT_TEMP, SMTPOUT_STAGE_LOCAL, "4.7.5", "%s", what);
}

/* decide_without_dane - steps 2 to 4 of the header */
static void
decide_without_dane(const struct smtpout_tlspol_settings *set, struct smtpout_tls_decision *d)
{
    const struct smtpout_sts_policy *sts = set->sts;

    if (d->tls == SMTPOUT_TLS_OFF) /* use-starttls no: no TLS, so no policy about it */
        return;
    if (sts && sts->mode != SMTPOUT_STS_NONE) {
        int listed = smtpout_sts_mx_match(sts, d->name);

        if (!listed && sts->mode == SMTPOUT_STS_ENFORCE) {
            char what[MXDNS_NAME_MAX + 80];

            snprintf(what, sizeof what, "MX host %s is not in the MTA-STS policy (mode enforce)",
                     d->name);
            unusable(d, what);
            return;
        }
        d->check.mode = SMTPOUT_VERIFY_PKIX;
        d->check.ctx = set->sts_ctx;
        d->check.name = d->name;
        d->check.label = listed ? "mta-sts" : "mta-sts (MX not listed)";
        if (sts->mode == SMTPOUT_STS_ENFORCE) {
            d->check.enforce = 1;
            d->tls = SMTPOUT_TLS_REQUIRED;
        }
        return;
    }
    if (set->ca_ctx) {
        d->check.mode = SMTPOUT_VERIFY_PKIX;
        d->check.ctx = set->ca_ctx;
        d->check.name = d->name;
        d->check.label = "smtp-tls-ca-file";
        d->check.enforce = 1;
    }
}

static void
on_tlsa(void *arg, enum mxdns_status status, int secure, const char *why,
        const struct mxdns_tlsa *recs, size_t n)
{
    struct tlsa_req *req = arg;
    struct smtpout_tls_decision *d = req->d;

    if (status == MXDNS_OK && secure) {
        /* RFC 7672 2.2: secure TLSA records make TLS mandatory, authenticated by them */
        n = n < MXDNS_MAX_TLSA ? n : MXDNS_MAX_TLSA;
        memcpy(d->tlsa, recs, n * sizeof *recs);
        d->check = (struct smtpout_tls_check){ .mode = SMTPOUT_VERIFY_DANE,
                                               .enforce = 1,
                                               .label = "dane",
                                               .name = d->name,
                                               .tlsa = d->tlsa,
                                               .ntlsa = n };
        d->tls = SMTPOUT_TLS_REQUIRED;
    } else if (status == MXDNS_OK || status == MXDNS_NODATA || status == MXDNS_NXDOMAIN) {
        decide_without_dane(req->set, d); /* no TLSA, or not validated: not DANE */
    } else {
        /* RFC 7672 2.2.1: a secure name whose TLSA lookup fails is unusable */
        char what[MXDNS_NAME_MAX + 300];

        snprintf(what, sizeof what,
                 "DANE: TLSA lookup for %s failed (%s); not delivering without it", d->name, why);
        unusable(d, what);
    }
    req->cb(req->arg, d);
    free(req);
}

void
smtpout_tlspol_decide(struct mxdns *dns, const struct smtpout_tlspol_settings *set,
                      const struct mxroute_dest *dest, struct smtpout_tls_decision *out,
                      smtpout_tlspol_cb cb, void *arg)
{
    struct tlsa_req *req;

    memset(out, 0, sizeof *out);
    out->tls = set->tls;
    snprintf(out->name, sizeof out->name, "%s", dest->mx_name);
    if (!set->use_dane || !dest->secure || set->tls == SMTPOUT_TLS_OFF) {
        decide_without_dane(set, out);
        cb(arg, out);
        return;
    }
    req = xcalloc(1, sizeof *req);
    req->set = set;
    req->d = out;
    req->cb = cb;
    req->arg = arg;
    mxdns_tlsa(dns, dest->mx_name, mxroute_sockaddr_port((const struct sockaddr *)&dest->addr),
               on_tlsa, req);
}
