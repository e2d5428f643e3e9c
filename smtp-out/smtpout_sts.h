/*
 * smtpout_sts.h - MTA-STS (RFC 8461): the policy format, and the policies
 * of recipient domains fetched over HTTPS and cached
 *
 * NAME
 *   smtpout_sts_parse, smtpout_sts_txt_id, smtpout_sts_mx_match - the
 *       formats (pure functions: bytes in, result out; fuzz entry points)
 *   smtpout_sts_get - a domain's policy, from the cache or the network
 *
 * DESCRIPTION
 *   A domain publishes "v=STSv1; id=ID;" in the TXT record of
 *   _mta-sts.DOMAIN and its policy at
 *   https://mta-sts.DOMAIN/.well-known/mta-sts.txt:
 *       version: STSv1
 *       mode: enforce | testing | none
 *       mx: mail.example.com          (one or more; "*.example.net" matches
 *       mx: *.example.net              exactly one more leading label)
 *       max_age: 604800                (seconds, at most 31557600)
 *
 *   smtpout_sts_get(): the TXT record is looked up (through mxdns,
 *   the configured name servers). A cached policy with the same id that
 *   has not expired is used as it is. Otherwise the policy is fetched
 *   (smtpout_https: HTTPS with the certificate checked against the trust
 *   store and the name mta-sts.DOMAIN, no redirects, 200 only, text/plain,
 *   at most SMTPOUT_STS_BODY_MAX bytes) and cached for max_age (capped by
 *   SMTPOUT_STS_CACHE_MAX_S). When the TXT record is gone or the fetch
 *   fails, an unexpired cached policy still applies (RFC 8461 section 5.1:
 *   that is what makes a downgrade attack fail); without one there is no
 *   policy. A policy of mode none is no policy. The callback runs exactly
 *   once, possibly before smtpout_sts_get returns, with the policy (NULL:
 *   none) and a note for the log.
 *
 *   The cache belongs to one smtp-out process (memory only; a restart
 *   fetches again) and holds at most SMTPOUT_STS_CACHE_ENTRIES domains.
 *
 * SECURITY
 *   The TXT record and the policy are remote input: both parsers bound
 *   every line and field and copy only what fits; unknown fields are
 *   ignored. A policy is only as trustworthy as the HTTPS fetch, which
 *   verifies the server's certificate (no fallback to an unverified one).
 */
#ifndef PMTA_SMTPOUT_STS_H
#define PMTA_SMTPOUT_STS_H

#include <stddef.h>
#include <stdint.h>

#include <openssl/ssl.h>
#include <uv.h>

#include "mxdns.h"

#define SMTPOUT_STS_MX_MAX        16            /* mx lines kept */
#define SMTPOUT_STS_ID_MAX        32            /* RFC 8461: 1*32(ALPHA / DIGIT) */
#define SMTPOUT_STS_BODY_MAX      (64 * 1024)   /* bytes of a policy we read */
#define SMTPOUT_STS_MAX_AGE_MAX   31557600ul    /* RFC 8461 3.2: about a year */
#define SMTPOUT_STS_CACHE_MAX_S   (7ul * 86400) /* we refetch at least weekly */
#define SMTPOUT_STS_CACHE_ENTRIES 4096

enum smtpout_sts_mode { SMTPOUT_STS_NONE, SMTPOUT_STS_TESTING, SMTPOUT_STS_ENFORCE };

struct smtpout_sts_policy {
    enum smtpout_sts_mode mode;
    unsigned long max_age;
    char id[SMTPOUT_STS_ID_MAX + 1]; /* from the TXT record it was fetched for */
    size_t nmx;
    char mx[SMTPOUT_STS_MX_MAX][MXDNS_NAME_MAX + 1]; /* lower case, no final dot */
};

const char *smtpout_sts_mode_name(enum smtpout_sts_mode mode);

/*
 * smtpout_sts_parse - the policy text TEXT/LEN (RFC 8461 section 3.2: lines
 * "key: value", CRLF or LF) into OUT. 0, or -EINVAL with the reason in ERR
 * (no or bad version, mode, max_age; no mx with a mode other than none).
 */
int smtpout_sts_parse(const char *text, size_t len, struct smtpout_sts_policy *out, char *err,
                      size_t errlen);
/*
 * smtpout_sts_txt_id - the id of an "v=STSv1; id=...;" TXT record (TXT is
 * one record, its strings joined) into ID (SMTPOUT_STS_ID_MAX + 1 bytes);
 * 0, or -EINVAL when it is not a valid STSv1 record
 */
int smtpout_sts_txt_id(const char *txt, char *id);
/* smtpout_sts_mx_match - does MX (a host name, any case, final dot allowed) match a pattern? */
int smtpout_sts_mx_match(const struct smtpout_sts_policy *p, const char *mx);

/* --- fetching and caching ---------------------------------------------------------- */

struct smtpout_sts;
struct smtpout_sts_req;

struct smtpout_sts_options {
    SSL_CTX *https_ctx;  /* trust store for the policy host (mta-sts-ca-file) */
    uint16_t https_port; /* 0 = 443 (tests use another) */
    unsigned timeout_ms; /* the whole fetch; 0 = 30000 */
};

typedef void (*smtpout_sts_cb)(void *arg, const struct smtpout_sts_policy *policy,
                               const char *note);

/* smtpout_sts_create - the cache and fetcher of this process (the pointers are borrowed) */
struct smtpout_sts *smtpout_sts_create(uv_loop_t *loop, struct mxdns *dns,
                                       const struct smtpout_sts_options *opts);
/* smtpout_sts_destroy - drop the cache; fetches in flight end with "cancelled" callbacks */
void smtpout_sts_destroy(struct smtpout_sts *sts);
/* smtpout_sts_get - see above; a handle for smtpout_sts_cancel, or NULL when CB already ran */
struct smtpout_sts_req *smtpout_sts_get(struct smtpout_sts *sts, const char *domain,
                                        smtpout_sts_cb cb, void *arg);
/* smtpout_sts_cancel - CB will not run */
void smtpout_sts_cancel(struct smtpout_sts_req *req);

#endif
