/*
 * smtpd_tls.c - server-side TLS for smtpd: OpenSSL over memory BIOs
 *
 * A context is built from `smtp-server-tls-certificate FILE` (or a
 * listener's `tls-certificate`): one PEM holding the certificate, its chain
 * and the private key, as PowerMTA configurations write it, plus the optional
 * `smtp-server-tls-ca-file` to complete the chain. The worker loads it itself,
 * after pmtad dropped privileges, so the file must be readable by the
 * run-as-user (default pmta); a file it cannot read disables TLS with a
 * warning rather than stopping mail.
 *
 * Each connection gets an SSL with two memory BIOs: the session writes what
 * the socket delivered into one and sends what OpenSSL produced from the
 * other. No socket is ever handed to OpenSSL, which keeps it inside libuv's
 * event model.
 *
 * Owns: SSL_CTX (per context), SSL and its BIOs (per connection).
 *
 * SECURITY: parses network input (the TLS records) through OpenSSL only.
 * TLS 1.2 is the floor; renegotiation is refused (SSL_OP_NO_RENEGOTIATION);
 * the rbio is bounded by the session's backpressure (it stops reading).
 */
#include "config.h"

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdlib.h>
#include <string.h>

#include "msg.h"
#include "xalloc.h"
#include "smtpd.h"

struct smtpd_tls_ctx {
    SSL_CTX *ctx;
};

struct smtpd_tls {
    SSL *ssl;
    BIO *rbio; /* peer -> OpenSSL */
    BIO *wbio; /* OpenSSL -> peer */
};

/* smtpd_tls_error - the oldest queued OpenSSL error, as text; clears the queue */
const char *
smtpd_tls_error(void)
{
    static char text[256];
    unsigned long e = ERR_get_error();

    if (e == 0)
        return "unknown error";
    ERR_error_string_n(e, text, sizeof(text));
    ERR_clear_error();
    return text;
}

/* smtpd_tls_ctx_new - see smtpd.h */
struct smtpd_tls_ctx *
smtpd_tls_ctx_new(const char *cert_file, const char *ca_file)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    struct smtpd_tls_ctx *t;

    if (ctx == NULL)
        goto fail;
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE);
    /* Memory BIOs: partial writes are normal, buffers move between calls. */
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    if (SSL_CTX_use_certificate_chain_file(ctx, cert_file) != 1 ||
        SSL_CTX_use_PrivateKey_file(ctx, cert_file, SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_check_private_key(ctx) != 1)
        goto fail_ctx;
    if (ca_file && *ca_file && SSL_CTX_load_verify_locations(ctx, ca_file, NULL) != 1)
        goto fail_ctx;
    t = xcalloc(1, sizeof(*t));
    t->ctx = ctx;
    return t;

fail_ctx:
    msg_warn("TLS disabled: cannot use certificate %s%s%s: %s", cert_file,
             ca_file ? " / CA file " : "", ca_file ? ca_file : "", smtpd_tls_error());
    SSL_CTX_free(ctx);
    return NULL;
fail:
    msg_warn("TLS disabled: %s", smtpd_tls_error());
    return NULL;
}

void
smtpd_tls_ctx_free(struct smtpd_tls_ctx *t)
{
    if (t == NULL)
        return;
    SSL_CTX_free(t->ctx);
    free(t);
}

/* smtpd_tls_new - see smtpd.h */
struct smtpd_tls *
smtpd_tls_new(struct smtpd_tls_ctx *t)
{
    struct smtpd_tls *tls = xcalloc(1, sizeof(*tls));

    tls->ssl = SSL_new(t->ctx);
    tls->rbio = BIO_new(BIO_s_mem());
    tls->wbio = BIO_new(BIO_s_mem());
    if (tls->ssl == NULL || tls->rbio == NULL || tls->wbio == NULL)
        msg_fatal("TLS: out of memory: %s", smtpd_tls_error());
    /* An empty read BIO means "try again", not EOF. */
    BIO_set_mem_eof_return(tls->rbio, -1);
    BIO_set_mem_eof_return(tls->wbio, -1);
    SSL_set_bio(tls->ssl, tls->rbio, tls->wbio); /* the SSL now owns both */
    SSL_set_accept_state(tls->ssl);
    return tls;
}

void
smtpd_tls_free(struct smtpd_tls *tls)
{
    if (tls == NULL)
        return;
    SSL_free(tls->ssl);
    free(tls);
}

int
smtpd_tls_feed(struct smtpd_tls *tls, const void *p, size_t n)
{
    return BIO_write(tls->rbio, p, (int)n) == (int)n ? 0 : -1;
}

/* want_more - was the failure of the last call just "need more bytes"? */
static int
want_more(struct smtpd_tls *tls, int rc)
{
    int err = SSL_get_error(tls->ssl, rc);

    if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE)
        return 1;
    return 0;
}

int
smtpd_tls_handshake(struct smtpd_tls *tls)
{
    int rc = SSL_do_handshake(tls->ssl);

    if (rc == 1)
        return 1;
    return want_more(tls, rc) ? 0 : -1;
}

int
smtpd_tls_read(struct smtpd_tls *tls, void *out, size_t n)
{
    int rc = SSL_read(tls->ssl, out, (int)(n > INT32_MAX ? INT32_MAX : n));

    if (rc > 0)
        return rc;
    return want_more(tls, rc) ? 0 : -1;
}

int
smtpd_tls_write(struct smtpd_tls *tls, const void *p, size_t n)
{
    const char *c = p;

    /* Writes to a memory BIO only fail for lack of memory or a dead session. */
    while (n > 0) {
        int rc = SSL_write(tls->ssl, c, (int)(n > 16384 ? 16384 : n));

        if (rc <= 0)
            return -1;
        c += rc;
        n -= (size_t)rc;
    }
    return 0;
}

void
smtpd_tls_close_notify(struct smtpd_tls *tls)
{
    if (SSL_is_init_finished(tls->ssl))
        (void)SSL_shutdown(tls->ssl);
    ERR_clear_error();
}

void
smtpd_tls_take_output(struct smtpd_tls *tls, struct buf *out)
{
    char *p;
    long n = BIO_get_mem_data(tls->wbio, &p);

    if (n <= 0)
        return;
    if (buf_append(out, p, (size_t)n) != 0)
        msg_fatal("TLS: output too large");
    (void)BIO_reset(tls->wbio);
}

const char *
smtpd_tls_protocol(const struct smtpd_tls *tls)
{
    return SSL_get_version(tls->ssl);
}

const char *
smtpd_tls_cipher(const struct smtpd_tls *tls)
{
    const char *c = SSL_get_cipher_name(tls->ssl);

    return c ? c : "";
}
