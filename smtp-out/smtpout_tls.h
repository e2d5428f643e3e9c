/*
 * smtpout_tls.h - how smtp-out checks the certificate it gets after STARTTLS
 *
 * NAME
 *   smtpout_tls_client_ctx - the client contexts (opportunistic, or with a
 *       trust store)
 *   smtpout_tls_check_setup, smtpout_tls_check_verdict - one session's
 *       check: DANE (RFC 7672) or PKIX (MTA-STS, smtp-tls-ca-file)
 *
 * DESCRIPTION
 *   The handshake itself never verifies (SSL_VERIFY_NONE: an invalid
 *   certificate must not stop opportunistic mail); what a destination
 *   demands (smtpout_tlspol.h decides) is set up on the SSL object before
 *   the handshake and judged after it. smtpout_session.c calls these.
 *
 * SECURITY
 *   DANE trusts only DANE-TA(2) and DANE-EE(3) records (RFC 7672 3.1.3);
 *   DANE-EE skips name and date checks (RFC 7672 3.1.1), DANE-TA checks the
 *   name; PKIX checks the chain to the context's store and the host name
 *   without partial wildcards.
 */
#ifndef PMTA_SMTPOUT_TLS_H
#define PMTA_SMTPOUT_TLS_H

#include <stddef.h>

#include <openssl/ssl.h>

#include "mxdns.h"

/*
 * How the peer's certificate is checked after STARTTLS (smtpout_conn decides
 * by DANE, MTA-STS and smtp-tls-ca-file; the session applies it). With
 * ENFORCE a failed check ends the connection (4.7.5) before any mail is
 * sent; without it the outcome is only reported (MTA-STS testing mode).
 */
enum smtpout_verify {
    SMTPOUT_VERIFY_NONE, /* opportunistic: any certificate */
    SMTPOUT_VERIFY_DANE, /* RFC 7672: the TLSA records (DANE-TA(2), DANE-EE(3)) */
    SMTPOUT_VERIFY_PKIX, /* a chain to CTX's trust store and NAME in the certificate */
};

struct smtpout_tls_check {
    enum smtpout_verify mode;
    int enforce;
    const char *label;             /* "dane", "mta-sts", "smtp-tls-ca-file": for messages */
    const char *name;              /* DANE: the TLSA base domain; PKIX: the name to find */
    const struct mxdns_tlsa *tlsa; /* DANE: the records as found (unusable ones skipped) */
    size_t ntlsa;
    SSL_CTX *ctx; /* PKIX: context with the trust store (NULL: ssl_ctx and its store) */
};

/*
 * smtpout_tls_check_setup - prepare CK on SSL before the handshake; *USABLE
 * gets how many TLSA records OpenSSL took. 0 or -1.
 */
int smtpout_tls_check_setup(SSL *ssl, const struct smtpout_tls_check *ck, int *usable);
/*
 * smtpout_tls_check_verdict - after the handshake: TEXT says what the check
 * found ("" without one, "dane", "LABEL failed: REASON", ...). 0 to go on
 * (passed, or not enforced); -1 when it failed and CK->enforce: WHY is the
 * reason to end the session with (4.7.5).
 */
int smtpout_tls_check_verdict(SSL *ssl, const struct smtpout_tls_check *ck, int usable, char *text,
                              size_t textlen, char *why, size_t whylen);

/*
 * smtpout_tls_client_ctx - an SSL_CTX for STARTTLS: OpenSSL's default
 * protocol versions, no certificate verification in the handshake (an
 * invalid certificate must not stop opportunistic mail; checks are made
 * after it, as smtpout_tls_check says), DANE enabled (RFC 7672: no name
 * checks for DANE-EE). With CA_FILE (or "" for the system's default paths)
 * the context carries that trust store for PKIX checks; NULL: none. NULL on
 * failure (why in ERR). Free with SSL_CTX_free.
 */
SSL_CTX *smtpout_tls_client_ctx(const char *ca_file, char *err, size_t errlen);

#endif
