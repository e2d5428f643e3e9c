/*
 * smtpout_session_tls.c - STARTTLS for a session: OpenSSL over memory BIOs (so
 * libuv owns the socket in clear and TLS mode alike), SNI for names, the
 * certificate check of the attempt's TLS policy (smtpout_tls: PKIX, DANE,
 * MTA-STS), and the decryption of what arrives once TLS is up
 *
 * Owns: the SSL object and its two BIOs (struct smtpout_session's; freed when
 * the session is).
 *
 * SECURITY: while the handshake is pending, bytes go to the TLS BIO and never
 * to the engine as plaintext; a failed check ends the attempt (4.7.5).
 */
#include "config.h"

#include <stdio.h>
#include <string.h>
#include <arpa/inet.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include "smtpout_session_int.h"


/* tls_check_done - after the handshake: the check's verdict; 0 to go on, -1 when failed */
static int
tls_check_done(struct smtpout_session *s)
{
    char why[400];

    if (smtpout_tls_check_verdict(s->ssl, &s->cfg.check, s->dane_usable, s->check_text,
                                  sizeof s->check_text, why, sizeof why) == 0)
        return 0;
    session_fail_local(s, SMTPOUT_TEMP, "4.7.5", why);
    return -1;
}

void
session_tls_start(struct smtpout_session *s)
{
    struct in6_addr a6;
    struct in_addr a4;
    SSL_CTX *ctx = s->cfg.check.mode == SMTPOUT_VERIFY_PKIX && s->cfg.check.ctx ? s->cfg.check.ctx
                                                                                : s->cfg.ssl_ctx;

    s->ssl = SSL_new(ctx);
    s->rbio = BIO_new(BIO_s_mem());
    s->wbio = BIO_new(BIO_s_mem());
    if (s->ssl == NULL || s->rbio == NULL || s->wbio == NULL) {
        BIO_free(s->rbio);
        BIO_free(s->wbio);
        s->rbio = s->wbio = NULL;
        session_fail_local(s, SMTPOUT_TEMP, "4.7.5", "cannot set up TLS");
        return;
    }
    SSL_set_bio(s->ssl, s->rbio, s->wbio);
    SSL_set_connect_state(s->ssl);
    /* SNI only for names: RFC 6066 forbids IP literals there. */
    if (inet_pton(AF_INET, s->mx_name, &a4) != 1 && inet_pton(AF_INET6, s->mx_name, &a6) != 1)
        SSL_set_tlsext_host_name(s->ssl, s->mx_name);
    if (smtpout_tls_check_setup(s->ssl, &s->cfg.check, &s->dane_usable) < 0) {
        session_fail_local(s, SMTPOUT_TEMP, "4.7.5", "cannot set up the TLS certificate check");
        return;
    }
    session_tls_continue(s);
}

void
session_tls_continue(struct smtpout_session *s)
{
    int rc, err;
    char what[200], detail[120];

    ERR_clear_error();
    rc = SSL_do_handshake(s->ssl);
    session_tls_flush(s, 0);
    if (s->closing)
        return;
    if (rc == 1) {
        s->tls_active = 1;
        if (tls_check_done(s) < 0)
            return;
        if (s->cb.tls)
            s->cb.tls(s->arg, SSL_get_version(s->ssl), SSL_get_cipher_name(s->ssl),
                      s->check_text[0] ? s->check_text : NULL);
        if (s->closing)
            return;
        smtpout_proto_tls_started(s->proto); /* EHLO again, now encrypted */
        session_flush_output(s);
        return;
    }
    err = SSL_get_error(s->ssl, rc);
    if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE)
        return;
    ERR_error_string_n(ERR_get_error(), detail, sizeof detail);
    snprintf(what, sizeof what, "TLS handshake failed: %s", detail);
    session_fail_local(s, SMTPOUT_TEMP, "4.7.5", what);
}


void
session_tls_read_loop(struct smtpout_session *s)
{
    char plain[16 * 1024];
    int n, err;

    for (;;) {
        ERR_clear_error();
        n = SSL_read(s->ssl, plain, sizeof plain);
        if (n <= 0)
            break;
        smtpout_proto_input(s->proto, plain, (size_t)n);
        session_flush_output(s);
        if (s->closing)
            return;
    }
    err = SSL_get_error(s->ssl, n);
    session_tls_flush(s, 0); /* post-handshake messages may want an answer */
    if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE || s->closing)
        return;
    if (smtpout_proto_quitting(s->proto)) {
        struct smtpout_reply ok;
        smtpout_reply_local(&ok, SMTPOUT_OK, SMTPOUT_STAGE_QUIT, "2.0.0", "closed after QUIT");
        smtpout_proto_fail(s->proto, &ok);
        return;
    }
    session_fail_local(s, SMTPOUT_TEMP, "4.4.2",
                       err == SSL_ERROR_ZERO_RETURN ? "peer closed the TLS session"
                                                    : "TLS read error");
}
