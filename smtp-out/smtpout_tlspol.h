/*
 * smtpout_tlspol.h - what TLS one destination demands: DANE, MTA-STS,
 * smtp-tls-ca-file
 *
 * NAME
 *   smtpout_tlspol_decide - the TLS policy of one connection attempt
 *
 * DESCRIPTION
 *   Before smtp-out connects to a destination (an MX host and address) it
 *   asks here how the session must treat TLS. In order:
 *
 *   1. DANE (RFC 7672; use-dane): when the destination's name came
 *      DNSSEC-validated (mxroute_dest.secure), the TLSA records of
 *      _PORT._tcp.HOST are looked up. A secure answer with records makes
 *      TLS mandatory and the certificate must match them (DANE-TA(2) or
 *      DANE-EE(3); when none is usable: TLS without authentication). A
 *      secure or insecure denial, or an insecure answer, means no DANE. A
 *      failed lookup makes the destination unusable (4.7.5): the next one
 *      is tried, the mail is never sent in clear instead.
 *   2. MTA-STS (RFC 8461; the recipient domain's policy, fetched by
 *      smtpout_sts before the walk): mode enforce makes TLS mandatory and
 *      the certificate must chain to the trust store and carry the MX
 *      name; an MX host the policy does not list is skipped (4.7.5).
 *      Mode testing checks the same but only reports.
 *   3. smtp-tls-ca-file (PowerMTA): the certificate is checked against that
 *      store; a failure ends the attempt (with opportunistic TLS the
 *      caller then retries in clear, as PowerMTA does).
 *   4. Otherwise the queue's use-starttls / require-starttls.
 *
 *   The callback runs exactly once, possibly before smtpout_tlspol_decide
 *   returns. The decision is written into the caller's struct, which must
 *   stay put (the check points into it) until the session is over.
 *
 * SECURITY
 *   The TLSA records are trusted only with the AD bit from the configured
 *   (validating) resolver; see mxdns.h.
 */
#ifndef PMTA_SMTPOUT_TLSPOL_H
#define PMTA_SMTPOUT_TLSPOL_H

#include "mxdns.h"
#include "mxroute.h"
#include "smtpout_session.h"
#include "smtpout_sts.h"

struct smtpout_tlspol_settings {
    enum smtpout_tls_policy tls; /* use-starttls / require-starttls */
    int use_dane;
    const struct smtpout_sts_policy *sts; /* the domain's MTA-STS policy, or NULL */
    SSL_CTX *sts_ctx;                     /* trust store for MTA-STS certificate checks */
    SSL_CTX *ca_ctx;                      /* smtp-tls-ca-file's store, or NULL */
};

struct smtpout_tls_decision {
    enum smtpout_tls_policy tls;
    struct smtpout_tls_check check;
    int unusable;             /* do not connect: WHY says why (4.7.5) */
    struct smtpout_reply why; /* when unusable */
    char name[MXDNS_NAME_MAX + 1];
    struct mxdns_tlsa tlsa[MXDNS_MAX_TLSA];
};

typedef void (*smtpout_tlspol_cb)(void *arg, struct smtpout_tls_decision *d);

/* smtpout_tlspol_decide - fill OUT for DEST under SET, then CB (see above) */
void smtpout_tlspol_decide(struct mxdns *dns, const struct smtpout_tlspol_settings *set,
                           const struct mxroute_dest *dest, struct smtpout_tls_decision *out,
                           smtpout_tlspol_cb cb, void *arg);

#endif
