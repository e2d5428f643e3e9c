/*
 * smtpout_tls.c - the certificate checks after STARTTLS (DANE, PKIX) and
 * the client TLS contexts (contract in smtpout_tls.h)
 *
 * Owns nothing beyond each call; the SSL objects are the session's.
 *
 * SECURITY: OpenSSL's DANE code matches the TLSA records (we only choose
 * which to give it); a verdict is OpenSSL's verify result, never our own
 * reading of a certificate.
 */
#include "config.h"

#include <stdio.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/x509v3.h>

#include "smtpout_tls.h"

int
smtpout_tls_check_setup(SSL *ssl, const struct smtpout_tls_check *ck, int *usable)
{
    *usable = 0;
    switch (ck->mode) {
    case SMTPOUT_VERIFY_DANE:
        if (SSL_dane_enable(ssl, ck->name) <= 0)
            return -1;
        for (size_t i = 0; i < ck->ntlsa; i++) {
            const struct mxdns_tlsa *t = &ck->tlsa[i];
            /* RFC 7672 3.1.3: PKIX-TA(0) and PKIX-EE(1) are unusable for SMTP */
            if ((t->usage == 2 || t->usage == 3) &&
                SSL_dane_tlsa_add(ssl, t->usage, t->selector, t->mtype, t->data, t->len) > 0)
                (*usable)++;
        }
        return 0;
    case SMTPOUT_VERIFY_PKIX:
        SSL_set_hostflags(ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
        return SSL_set1_host(ssl, ck->name) == 1 ? 0 : -1;
    default:
        return 0;
    }
}

int
smtpout_tls_check_verdict(SSL *ssl, const struct smtpout_tls_check *ck, int usable, char *text,
                          size_t textlen, char *why, size_t whylen)
{
    long vr;

    text[0] = '\0';
    if (ck->mode == SMTPOUT_VERIFY_NONE)
        return 0;
    if (ck->mode == SMTPOUT_VERIFY_DANE && usable == 0) {
        /* RFC 7672 2.2: TLSA records, none usable: encrypt, without authentication */
        snprintf(text, textlen, "%s: no usable TLSA records, encrypted only", ck->label);
        return 0;
    }
    vr = SSL_get_verify_result(ssl);
    if (vr == X509_V_OK) {
        snprintf(text, textlen, "%s", ck->label);
        return 0;
    }
    snprintf(text, textlen, "%s failed: %s", ck->label, X509_verify_cert_error_string(vr));
    if (!ck->enforce)
        return 0;
    snprintf(why, whylen, "TLS certificate of %s not verified (%s): %s", ck->name, ck->label,
             X509_verify_cert_error_string(vr));
    return -1;
}

SSL_CTX *
smtpout_tls_client_ctx(const char *ca_file, char *err, size_t errlen)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    unsigned long e;

    if (ctx == NULL)
        goto fail;
    /* Opportunistic TLS: an unverifiable certificate still beats clear text
     * (RFC 7435); require-starttls is about privacy, not authentication.
     * Checks (DANE, MTA-STS) run after the handshake: tls_check_done(). */
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
    if (SSL_CTX_dane_enable(ctx) <= 0)
        goto fail;
    SSL_CTX_dane_set_flags(ctx, DANE_FLAG_NO_DANE_EE_NAMECHECKS); /* RFC 7672 3.1.1 */
    if (ca_file && *ca_file && SSL_CTX_load_verify_locations(ctx, ca_file, NULL) != 1)
        goto fail;
    if (ca_file && !*ca_file && SSL_CTX_set_default_verify_paths(ctx) != 1)
        goto fail;
    return ctx;

fail:
    e = ERR_get_error();
    snprintf(err, errlen, "%s", e ? ERR_reason_error_string(e) : "cannot create a TLS context");
    if (err[0] == '\0' || strcmp(err, "(null)") == 0)
        snprintf(err, errlen, "cannot create a TLS context");
    SSL_CTX_free(ctx);
    return NULL;
}
