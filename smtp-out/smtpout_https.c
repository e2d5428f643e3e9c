/*
 * smtpout_https.c - the HTTP response reader and one HTTPS GET on libuv
 * with OpenSSL over memory BIOs (contract in smtpout_https.h)
 *
 * Owns: each request's TCP handle, timer, SSL object and reader; a request
 * frees itself once its handles are closed and its DNS lookup has answered.
 *
 * SECURITY: the reader is the only code that looks at response bytes; it
 * bounds lines before storing them and the body before appending. The
 * server's certificate must verify (chain and host name) before the request
 * is even sent; there is no fallback to an unverified connection.
 */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/err.h>
#include <openssl/x509v3.h>

#include "msg.h"
#include "xalloc.h"
#include "smtpout_https.h"
#include "mxroute.h"

/* --- the reader ------------------------------------------------------------------------ */

void
smtpout_http_reader_init(struct smtpout_http_reader *rd, size_t max_body)
{
    memset(rd, 0, sizeof *rd);
    rd->max_body = max_body;
    rd->content_length = -1;
    buf_init(&rd->body, 0);
}

void
smtpout_http_reader_free(struct smtpout_http_reader *rd)
{
    buf_free(&rd->body);
}

static enum smtpout_http_read
reader_fail(struct smtpout_http_reader *rd, const char *what)
{
    rd->phase = HTTP_FAILED;
    snprintf(rd->error, sizeof rd->error, "%s", what);
    return HTTP_READ_ERROR;
}

/* status_line - "HTTP/1.x NNN reason" */
static enum smtpout_http_read
status_line(struct smtpout_http_reader *rd, const char *l, size_t len)
{
    if (len < 12 || strncmp(l, "HTTP/1.", 7) != 0 || !isdigit((unsigned char)l[7]) || l[8] != ' ' ||
        !isdigit((unsigned char)l[9]) || !isdigit((unsigned char)l[10]) ||
        !isdigit((unsigned char)l[11]) || (len > 12 && l[12] != ' '))
        return reader_fail(rd, "malformed HTTP status line");
    rd->status = (l[9] - '0') * 100 + (l[10] - '0') * 10 + (l[11] - '0');
    rd->phase = HTTP_HEADERS;
    return HTTP_READ_MORE;
}

/* header_line - one "Name: value" line, or the empty line that ends the header section */
static enum smtpout_http_read
header_line(struct smtpout_http_reader *rd, const char *l, size_t len)
{
    const char *colon, *v;
    size_t nlen, vlen;

    if (len == 0) {
        if (rd->content_length == 0) {
            rd->phase = HTTP_COMPLETE;
            return HTTP_READ_DONE;
        }
        rd->phase = HTTP_BODY;
        return HTTP_READ_MORE;
    }
    if ((colon = memchr(l, ':', len)) == NULL)
        return reader_fail(rd, "malformed HTTP header line");
    nlen = (size_t)(colon - l);
    for (v = colon + 1, vlen = len - nlen - 1; vlen && (*v == ' ' || *v == '\t'); v++, vlen--)
        ;
    while (vlen && (v[vlen - 1] == ' ' || v[vlen - 1] == '\t'))
        vlen--;
    if (nlen == 12 && strncasecmp(l, "Content-Type", 12) == 0) {
        size_t mlen = 0;
        while (mlen < vlen && v[mlen] != ';' && v[mlen] != ' ' &&
               mlen + 1 < sizeof rd->content_type) {
            rd->content_type[mlen] = (char)tolower((unsigned char)v[mlen]);
            mlen++;
        }
        rd->content_type[mlen] = 0;
    } else if (nlen == 14 && strncasecmp(l, "Content-Length", 14) == 0) {
        long long n = 0;
        if (vlen == 0 || vlen > 18)
            return reader_fail(rd, "bad Content-Length");
        for (size_t i = 0; i < vlen; i++) {
            if (!isdigit((unsigned char)v[i]))
                return reader_fail(rd, "bad Content-Length");
            n = n * 10 + (v[i] - '0');
        }
        if ((unsigned long long)n > rd->max_body)
            return reader_fail(rd, "response body too large");
        rd->content_length = n;
    } else if (nlen == 17 && strncasecmp(l, "Transfer-Encoding", 17) == 0) {
        return reader_fail(rd, "Transfer-Encoding in an HTTP/1.0 response");
    }
    return HTTP_READ_MORE;
}

/* body_bytes - take what belongs to the body from DATA/LEN; the bytes taken */
static size_t
body_bytes(struct smtpout_http_reader *rd, const char *data, size_t len, enum smtpout_http_read *rc)
{
    size_t n = len;

    if (rd->content_length >= 0 &&
        (unsigned long long)(rd->body.len + n) > (unsigned long long)rd->content_length)
        n = (size_t)rd->content_length - rd->body.len;
    if (rd->body.len + n > rd->max_body) {
        *rc = reader_fail(rd, "response body too large");
        return len;
    }
    buf_append(&rd->body, data, n);
    if (rd->content_length >= 0 && (long long)rd->body.len == rd->content_length) {
        rd->phase = HTTP_COMPLETE;
        *rc = HTTP_READ_DONE;
        return len; /* anything after the body is ignored (we asked for no keep-alive) */
    }
    *rc = HTTP_READ_MORE;
    return n;
}

enum smtpout_http_read
smtpout_http_reader_feed(struct smtpout_http_reader *rd, const char *data, size_t len)
{
    enum smtpout_http_read rc = HTTP_READ_MORE;

    while (len > 0) {
        const char *nl;
        size_t chunk, linelen;

        switch (rd->phase) {
        case HTTP_COMPLETE:
            return HTTP_READ_DONE;
        case HTTP_FAILED:
            return HTTP_READ_ERROR;
        case HTTP_BODY:
            chunk = body_bytes(rd, data, len, &rc);
            data += chunk;
            len -= chunk;
            if (rc != HTTP_READ_MORE)
                return rc;
            continue;
        default:
            break;
        }
        nl = memchr(data, '\n', len);
        chunk = nl ? (size_t)(nl - data) + 1 : len;
        if (rd->line_len + chunk > HTTP_LINE_MAX)
            return reader_fail(rd, "HTTP header line too long");
        if (rd->head_len + chunk > HTTP_HEAD_MAX)
            return reader_fail(rd, "HTTP header section too large");
        memcpy(rd->line + rd->line_len, data, chunk);
        rd->line_len += chunk;
        rd->head_len += chunk;
        data += chunk;
        len -= chunk;
        if (nl == NULL)
            break;
        linelen = rd->line_len - 1;
        if (linelen > 0 && rd->line[linelen - 1] == '\r')
            linelen--;
        rd->line[linelen] = 0;
        rd->line_len = 0;
        rc = rd->phase == HTTP_STATUS ? status_line(rd, rd->line, linelen)
                                      : header_line(rd, rd->line, linelen);
        if (rc != HTTP_READ_MORE)
            return rc;
    }
    return rd->phase == HTTP_COMPLETE ? HTTP_READ_DONE : HTTP_READ_MORE;
}

enum smtpout_http_read
smtpout_http_reader_eof(struct smtpout_http_reader *rd)
{
    if (rd->phase == HTTP_COMPLETE)
        return HTTP_READ_DONE;
    if (rd->phase == HTTP_BODY && rd->content_length < 0) {
        rd->phase = HTTP_COMPLETE;
        return HTTP_READ_DONE;
    }
    if (rd->phase == HTTP_FAILED)
        return HTTP_READ_ERROR;
    return reader_fail(rd, "connection closed before the response was complete");
}

/* --- the client ------------------------------------------------------------------------- */

struct smtpout_https_get {
    uv_loop_t *loop;
    SSL_CTX *ctx;
    char host[MXDNS_NAME_MAX + 1];
    char path[256];
    uint16_t port;
    smtpout_https_cb cb;
    void *arg;

    uv_timer_t timer;
    uv_tcp_t tcp;
    uv_connect_t creq;
    int handles; /* open libuv handles */
    int dns_pending;
    int finished; /* the result is set; handles are closing */
    int cancelled;

    SSL *ssl;
    BIO *rbio, *wbio;
    int handshaken;
    struct smtpout_http_reader rd;
    char rbuf[16 * 1024];

    int err;
    char why[300];
};

static void
get_free_maybe(struct smtpout_https_get *g)
{
    if (g->handles > 0 || g->dns_pending)
        return;
    if (!g->cancelled)
        g->cb(g->arg, g->err, g->why, g->rd.status, g->rd.content_type, g->rd.body.data,
              g->rd.body.len);
    if (g->ssl)
        SSL_free(g->ssl);
    smtpout_http_reader_free(&g->rd);
    free(g);
}

static void
get_closed(uv_handle_t *h)
{
    struct smtpout_https_get *g = h->data;

    g->handles--;
    get_free_maybe(g);
}

/* get_finish - the outcome is ERR/WHY: close everything; the callback comes from the close */
static void
get_finish(struct smtpout_https_get *g, int err, const char *why)
{
    if (g->finished)
        return;
    g->finished = 1;
    g->err = err;
    snprintf(g->why, sizeof g->why, "%s", why ? why : "");
    uv_timer_stop(&g->timer);
    uv_close((uv_handle_t *)&g->timer, get_closed);
    if (g->handles > 1)
        uv_close((uv_handle_t *)&g->tcp, get_closed);
}

static void
on_write_done(uv_write_t *req, int status)
{
    (void)status; /* a failed write shows up as a read error or the timeout */
    free(req->data);
    free(req);
}

/* tls_flush - what OpenSSL wants sent */
static void
tls_flush(struct smtpout_https_get *g)
{
    size_t pending = BIO_ctrl_pending(g->wbio);
    uv_write_t *w;
    uv_buf_t b;
    char *data;
    int n;

    if (pending == 0 || g->finished)
        return;
    data = xmalloc(pending);
    if ((n = BIO_read(g->wbio, data, (int)pending)) <= 0) {
        free(data);
        return;
    }
    w = xcalloc(1, sizeof *w);
    w->data = data;
    b = uv_buf_init(data, (unsigned)n);
    if (uv_write(w, (uv_stream_t *)&g->tcp, &b, 1, on_write_done) < 0) {
        free(data);
        free(w);
        get_finish(g, -EIO, "cannot write to the policy server");
    }
}

static void
tls_error(struct smtpout_https_get *g, const char *what)
{
    char detail[160], why[300];
    unsigned long e = ERR_get_error();

    ERR_error_string_n(e, detail, sizeof detail);
    snprintf(why, sizeof why, "%s: %s", what, e ? detail : "connection closed");
    get_finish(g, -EPROTO, why);
}

/* after_handshake - the certificate must verify before anything is sent */
static void
after_handshake(struct smtpout_https_get *g)
{
    long vr = SSL_get_verify_result(g->ssl);
    char req[600], why[300];
    int len;

    g->handshaken = 1;
    if (vr != X509_V_OK) {
        snprintf(why, sizeof why, "certificate of %s not verified: %s", g->host,
                 X509_verify_cert_error_string(vr));
        get_finish(g, -EPERM, why);
        return;
    }
    len = snprintf(req, sizeof req,
                   "GET %s HTTP/1.0\r\nHost: %s\r\nUser-Agent: openpmta\r\n"
                   "Accept: text/plain\r\nConnection: close\r\n\r\n",
                   g->path, g->host);
    ERR_clear_error();
    if (SSL_write(g->ssl, req, len) != len) {
        tls_error(g, "TLS write failed");
        return;
    }
    tls_flush(g);
}

static void
tls_read(struct smtpout_https_get *g)
{
    char plain[8192];
    int n, err;

    if (!g->handshaken) {
        ERR_clear_error();
        n = SSL_do_handshake(g->ssl);
        tls_flush(g);
        if (n != 1) {
            err = SSL_get_error(g->ssl, n);
            if (err != SSL_ERROR_WANT_READ && err != SSL_ERROR_WANT_WRITE)
                tls_error(g, "TLS handshake failed");
            return;
        }
        after_handshake(g);
        if (g->finished)
            return;
    }
    for (;;) {
        ERR_clear_error();
        n = SSL_read(g->ssl, plain, sizeof plain);
        if (n <= 0)
            break;
        switch (smtpout_http_reader_feed(&g->rd, plain, (size_t)n)) {
        case HTTP_READ_DONE:
            get_finish(g, 0, "");
            return;
        case HTTP_READ_ERROR:
            get_finish(g, -EPROTO, g->rd.error);
            return;
        case HTTP_READ_MORE:
            break;
        }
    }
    err = SSL_get_error(g->ssl, n);
    tls_flush(g);
    if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE)
        return;
    if (err == SSL_ERROR_ZERO_RETURN || err == SSL_ERROR_SYSCALL) {
        if (smtpout_http_reader_eof(&g->rd) == HTTP_READ_DONE)
            get_finish(g, 0, "");
        else
            get_finish(g, -EPROTO, g->rd.error);
        return;
    }
    tls_error(g, "TLS read failed");
}

static void
on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *b)
{
    struct smtpout_https_get *g = h->data;

    (void)suggested;
    *b = uv_buf_init(g->rbuf, sizeof g->rbuf);
}

static void
on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *b)
{
    struct smtpout_https_get *g = s->data;

    if (g->finished || nread == 0)
        return;
    if (nread < 0) {
        /* the end of the connection ends an HTTP/1.0 body: let OpenSSL see it */
        if (g->handshaken && smtpout_http_reader_eof(&g->rd) == HTTP_READ_DONE)
            get_finish(g, 0, "");
        else
            get_finish(g, -EPROTO,
                       g->handshaken ? g->rd.error
                                     : "connection closed in the TLS "
                                       "handshake");
        return;
    }
    if (BIO_write(g->rbio, b->base, (int)nread) != (int)nread) {
        get_finish(g, -EIO, "TLS buffer error");
        return;
    }
    tls_read(g);
}

static void
on_connect(uv_connect_t *req, int status)
{
    struct smtpout_https_get *g = req->data;
    char why[300];

    if (g->finished)
        return;
    if (status < 0) {
        snprintf(why, sizeof why, "connect to %s: %s", g->host, uv_strerror(status));
        get_finish(g, -ECONNREFUSED, why);
        return;
    }
    g->ssl = SSL_new(g->ctx);
    g->rbio = BIO_new(BIO_s_mem());
    g->wbio = BIO_new(BIO_s_mem());
    if (g->ssl == NULL || g->rbio == NULL || g->wbio == NULL) {
        BIO_free(g->rbio);
        BIO_free(g->wbio);
        get_finish(g, -ENOMEM, "cannot set up TLS");
        return;
    }
    SSL_set_bio(g->ssl, g->rbio, g->wbio);
    SSL_set_connect_state(g->ssl);
    SSL_set_tlsext_host_name(g->ssl, g->host);
    SSL_set_hostflags(g->ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
    if (SSL_set1_host(g->ssl, g->host) != 1) {
        get_finish(g, -EINVAL, "cannot set the host name to verify");
        return;
    }
    uv_read_start((uv_stream_t *)&g->tcp, on_alloc, on_read);
    tls_read(g); /* sends the ClientHello */
}

static void
on_addr(void *arg, enum mxdns_status status, int secure, const char *why,
        const struct sockaddr_storage *addrs, size_t naddrs)
{
    struct smtpout_https_get *g = arg;
    struct sockaddr_storage dest;
    int rc;

    (void)secure;
    g->dns_pending = 0;
    if (g->finished) {
        get_free_maybe(g);
        return;
    }
    if (status != MXDNS_OK || naddrs == 0) {
        get_finish(g, -EHOSTUNREACH, why);
        return;
    }
    dest = addrs[0]; /* IPv4 first (mxdns); one try: the policy is cached, a retry comes */
    if (dest.ss_family == AF_INET6)
        ((struct sockaddr_in6 *)&dest)->sin6_port = htons(g->port);
    else
        ((struct sockaddr_in *)&dest)->sin_port = htons(g->port);
    uv_tcp_init(g->loop, &g->tcp);
    g->tcp.data = g;
    g->handles++;
    g->creq.data = g;
    if ((rc = uv_tcp_connect(&g->creq, &g->tcp, (struct sockaddr *)&dest, on_connect)) < 0)
        get_finish(g, -ECONNREFUSED, uv_strerror(rc));
}

static void
on_timeout(uv_timer_t *t)
{
    get_finish(t->data, -ETIMEDOUT, "timeout fetching the policy");
}

struct smtpout_https_get *
smtpout_https_get(uv_loop_t *loop, struct mxdns *dns, SSL_CTX *ctx, const char *host, uint16_t port,
                  const char *path, size_t max_body, unsigned timeout_ms, smtpout_https_cb cb,
                  void *arg)
{
    struct smtpout_https_get *g = xcalloc(1, sizeof *g);

    g->loop = loop;
    g->ctx = ctx;
    snprintf(g->host, sizeof g->host, "%s", host);
    snprintf(g->path, sizeof g->path, "%s", path);
    g->port = port ? port : 443;
    g->cb = cb;
    g->arg = arg;
    smtpout_http_reader_init(&g->rd, max_body);
    uv_timer_init(loop, &g->timer);
    g->timer.data = g;
    g->handles = 1;
    uv_timer_start(&g->timer, on_timeout, timeout_ms ? timeout_ms : 30000, 0);
    g->dns_pending = 1;
    mxdns_addr(dns, g->host, AF_UNSPEC, on_addr, g); /* may answer at once */
    return g;
}

void
smtpout_https_cancel(struct smtpout_https_get *g)
{
    if (g == NULL)
        return;
    g->cancelled = 1;
    get_finish(g, -ECANCELED, "cancelled");
}
