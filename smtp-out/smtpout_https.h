/*
 * smtpout_https.h - one HTTPS GET on libuv (the MTA-STS policy fetch)
 *
 * NAME
 *   smtpout_http_reader - an HTTP/1.x response parser: bytes in, the
 *       status, Content-Type and body out (the fuzzing entry point)
 *   smtpout_https_get - GET https://HOST:PORT/PATH, the body to a callback
 *
 * DESCRIPTION
 *   Just what RFC 8461 section 3.3 asks of a policy fetch, no more: HOST
 *   resolved through mxdns (the configured name servers, like every
 *   lookup of ours), TLS with SNI, the certificate verified against the
 *   context's trust store and HOST (SSL_set1_host), an HTTP/1.0 request
 *   (so no chunked encoding comes back), no redirects followed, no
 *   keep-alive; the response is read until Content-Length or the end of
 *   the connection, at most MAX_BODY bytes of body.
 *
 *   Why not libcurl: it would need its own resolver pinned to our answers
 *   (CURLOPT_RESOLVE), its multi-socket API glued to libuv and its TLS
 *   trust configured apart from ours; the HTTP we parse here is a status
 *   line, two header fields and a bounded body.
 *
 *   The callback runs exactly once (never before smtpout_https_get
 *   returns) unless smtpout_https_cancel() was called first.
 *
 * SECURITY
 *   The response is hostile: the reader bounds the status line and every
 *   header line (HTTP_LINE_MAX, also while incomplete), the header section
 *   (HTTP_HEAD_MAX) and the body (MAX_BODY), checks Content-Length's digits
 *   and refuses Transfer-Encoding. Nothing of the body is interpreted here.
 */
#ifndef PMTA_SMTPOUT_HTTPS_H
#define PMTA_SMTPOUT_HTTPS_H

#include <stddef.h>
#include <stdint.h>

#include <openssl/ssl.h>
#include <uv.h>

#include "buf.h"
#include "mxdns.h"

#define HTTP_LINE_MAX 2048        /* one status or header line */
#define HTTP_HEAD_MAX (16 * 1024) /* the whole header section */

enum http_phase { HTTP_STATUS, HTTP_HEADERS, HTTP_BODY, HTTP_COMPLETE, HTTP_FAILED };

struct smtpout_http_reader {
    enum http_phase phase;
    size_t max_body;
    char line[HTTP_LINE_MAX + 1];
    size_t line_len;
    size_t head_len;
    int status;               /* 200, 404, ... */
    char content_type[128];   /* media type, lower case, without parameters */
    long long content_length; /* -1: until the end of the connection */
    struct buf body;
    char error[160];
};

enum smtpout_http_read { HTTP_READ_MORE, HTTP_READ_DONE, HTTP_READ_ERROR };

/* smtpout_http_reader_init - a reader for a body of at most MAX_BODY bytes */
void smtpout_http_reader_init(struct smtpout_http_reader *rd, size_t max_body);
void smtpout_http_reader_free(struct smtpout_http_reader *rd);
/* smtpout_http_reader_feed - LEN more bytes; DONE once the body is complete */
enum smtpout_http_read smtpout_http_reader_feed(struct smtpout_http_reader *rd, const char *data,
                                                size_t len);
/* smtpout_http_reader_eof - the connection ended: DONE or ERROR */
enum smtpout_http_read smtpout_http_reader_eof(struct smtpout_http_reader *rd);

/* --- the client ------------------------------------------------------------------------- */

struct smtpout_https_get;

/* ERR: 0, or -errno with WHY; on success the response's status, media type and body */
typedef void (*smtpout_https_cb)(void *arg, int err, const char *why, int status,
                                 const char *content_type, const char *body, size_t len);

struct smtpout_https_get *smtpout_https_get(uv_loop_t *loop, struct mxdns *dns, SSL_CTX *ctx,
                                            const char *host, uint16_t port, const char *path,
                                            size_t max_body, unsigned timeout_ms,
                                            smtpout_https_cb cb, void *arg);
/* smtpout_https_cancel - CB will not run; the request frees itself */
void smtpout_https_cancel(struct smtpout_https_get *g);

#endif
