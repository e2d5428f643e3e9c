/*
 * smtpout_http.c - `type http-delivery`: PowerMTA's JSON webhook POSTed
 *                  with libcurl, driven by the worker's libuv loop
 *
 * Why libcurl and not a small client of our own: an HTTP client has to
 * parse hostile responses (status lines, chunked bodies, keep-alive), do
 * https with certificate verification and SNI, follow timeouts and reuse
 * connections; libcurl (Debian's libcurl4-openssl-dev, the same OpenSSL)
 * does all of that, and its multi interface hands its sockets and timer to
 * libuv (curl_multi_socket_action), so no thread and no blocking call is
 * added. A parser of our own would be one more network parser to fuzz.
 *
 * The multi handle and its libuv glue are runtime/uvcurl.c (qmgr's
 * <acct-webhook> uses the same). Each request is an easy handle; a channel
 * has at most one request at a time.
 *
 * Owns: each channel's easy handle, request body and header list.
 * SECURITY: the response body is never read (CURLOPT_WRITEFUNCTION drops
 * it); only the status code and curl's error text become a reply, bounded
 * and sanitized by smtpout_reply_local. The request body is built by
 * jansson (addresses and headers are escaped there).
 */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>
#include <jansson.h>
#include <openssl/evp.h>

#include "msg.h"
#include "smtpout_http.h"
#include "uvcurl.h"
#include "xalloc.h"

#define HEADERS_MAX 200 /* header fields passed in "headers" */

struct smtpout_http {
    char *url;
    struct cfg_http_url parsed;
    long connect_timeout_ms, timeout_ms;
    smtpout_http_result_fn fn;
    void *arg;
    struct uvcurl_post req; /* the running request (req.easy NULL: none) */
};

static uv_loop_t *http_loop;

void
smtpout_http_shutdown(void)
{
    uvcurl_shutdown();
}

/* --- results --------------------------------------------------------------------------------- */

void
smtpout_http_status(struct smtpout_reply *r, long status, const char *errtext, const char *url)
{
    if (status == 0)
        smtpout_reply_local(r, SMTPOUT_TEMP, SMTPOUT_STAGE_LOCAL, "4.4.1", "POST to %s: %s", url,
                            errtext && *errtext ? errtext : "no response");
    else if (status >= 200 && status < 300)
        smtpout_reply_local(r, SMTPOUT_OK, SMTPOUT_STAGE_LOCAL, "2.0.0", "HTTP %ld from %s", status,
                            url);
    else if (status >= 500 || status == 401 || status == 403 || status == 404 || status == 405 ||
             status == 407 || status == 408 || status == 425 || status == 429 || status < 200 ||
             (status >= 300 && status < 400))
        /* the endpoint, its configuration or its load: the mail waits (retry-after) */
        smtpout_reply_local(r, SMTPOUT_TEMP, SMTPOUT_STAGE_LOCAL, status == 429 ? "4.7.0" : "4.3.0",
                            "HTTP %ld from %s", status, url);
    else /* 400, 413, 415, 422, ...: the endpoint refuses this message */
        smtpout_reply_local(r, SMTPOUT_PERM, SMTPOUT_STAGE_LOCAL, "5.6.0", "HTTP %ld from %s",
                            status, url);
}

/* request_end - forget H's request (the result has been taken, or it is cancelled) */
static void
request_end(struct smtpout_http *h)
{
    uvcurl_post_end(&h->req);
}

/* on_done - H's request is over: its result */
static void
on_done(CURL *easy, CURLcode result, void *arg)
{
    struct smtpout_http *h = arg;
    struct smtpout_reply r;
    long status = 0;

    if (result == CURLE_OK)
        curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &status);
    smtpout_http_status(&r, status, h->req.error[0] ? h->req.error : curl_easy_strerror(result),
                        h->url);
    request_end(h);
    h->fn(h->arg, &r);
}

/* --- the request --------------------------------------------------------------------------- */

/* header_array - the header fields of the message as [{"Name": "value"}, ...], unfolded */
static json_t *
header_array(const char *data, size_t len)
{
    json_t *a = json_array();
    size_t i = 0, n = 0;

    while (i < len && data[i] != '\r' && data[i] != '\n' && n < HEADERS_MAX) {
        size_t start = i, colon;
        char *name, *value;
        size_t vn = 0;

        for (;;) { /* the field ends at a line break not followed by a blank */
            const char *nl = memchr(data + i, '\n', len - i);
            i = nl ? (size_t)(nl - data) + 1 : len;
            if (i >= len || (data[i] != ' ' && data[i] != '\t'))
                break;
        }
        colon = start;
        while (colon < i && data[colon] != ':')
            colon++;
        if (colon >= i)
            continue;
        name = xstrndup(data + start, colon - start);
        value = xmalloc(i - colon);
        for (size_t k = colon + 1; k < i; k++) {
            char c = data[k] == '\r' || data[k] == '\n' || data[k] == '\t' ? ' ' : data[k];
            if (c == ' ' && (vn == 0 || value[vn - 1] == ' '))
                continue;
            value[vn++] = c;
        }
        while (vn && value[vn - 1] == ' ')
            vn--;
        value[vn] = '\0';
        json_t *v = json_stringn(value, vn);
        if (v)
            json_array_append_new(a, json_pack("{s:o}", name, v));
        free(name);
        free(value);
        n++;
    }
    return a;
}

/* build_body - PowerMTA's webhook JSON for recipient I of M (NULL if it cannot be built) */
static char *
build_body(const struct smtpout_message *m, size_t i)
{
    json_t *content, *doc, *raw = json_stringn(m->data, m->len);
    char *out;

    if (raw) {
        content = json_pack("{s:o}", "email_rfc822", raw);
    } else { /* not UTF-8: the whole message base64, as PowerMTA does */
        size_t cap = 4 * ((m->len + 2) / 3) + 1;
        unsigned char *b64 = xmalloc(cap);
        int n = EVP_EncodeBlock(b64, (const unsigned char *)m->data, (int)m->len);
        content = json_pack("{s:s#, s:b}", "email_rfc822", (const char *)b64, (size_t)n,
                            "email_rfc822_is_base64", 1);
        free(b64);
    }
    if (!content)
        return NULL;
    json_object_set_new(content, "headers", header_array(m->data, m->len));
    doc = json_pack("{s:s, s:s, s:o}", "msg_from", m->sender, "rcpt_to", m->rcpts[i].addr,
                    "content", content);
    if (!doc)
        return NULL;
    out = json_dumps(doc, JSON_COMPACT);
    json_decref(doc);
    return out;
}

int
smtpout_http_start(struct smtpout_http *h, const struct smtpout_message *m, size_t i,
                   struct smtpout_reply *r)
{
    char *body;

    if (h->req.easy)
        msg_panic("smtpout_http_start: a request is running");
    if ((body = build_body(m, i)) == NULL) {
        smtpout_reply_local(r, SMTPOUT_TEMP, SMTPOUT_STAGE_LOCAL, "4.3.0",
                            "cannot build the JSON request (an address that is not UTF-8?)");
        return 1;
    }
    if (uvcurl_post_json(http_loop, &h->req, h->url, body, h->connect_timeout_ms, h->timeout_ms,
                         "openpmta http-delivery", on_done, h) < 0) {
        smtpout_reply_local(r, SMTPOUT_TEMP, SMTPOUT_STAGE_LOCAL, "4.3.0",
                            "cannot start an HTTP request (libcurl)");
        return 1;
    }
    return 0;
}

void
smtpout_http_cancel(struct smtpout_http *h)
{
    struct smtpout_reply r;

    if (!h || !h->req.easy)
        return;
    request_end(h);
    smtpout_reply_local(&r, SMTPOUT_TEMP, SMTPOUT_STAGE_LOCAL, "4.3.0", "POST to %s aborted",
                        h->url);
    h->fn(h->arg, &r);
}

/* --- channels ----------------------------------------------------------------------------------
 */

static long
setting_ms(const struct cfg_resolved *set, enum cfg_directive d, long dflt)
{
    const struct cfg_value *v = set->v[d];

    if (!v || (v->flags & CFG_VALUE_UNSET) || v->num <= 0)
        return dflt;
    return v->num > 86400 ? 86400000L : (long)v->num * 1000L;
}

struct smtpout_http *
smtpout_http_new(uv_loop_t *loop, const struct cfg *c, const struct cfg_resolved *set,
                 smtpout_http_result_fn fn, void *arg, char *why, size_t whysize)
{
    const struct cfg_value *v = set->v[CFG_D_HTTP_DELIVERY_URL];
    struct smtpout_http *h;
    char err[300];

    if (!v || (v->flags & (CFG_VALUE_UNSET | CFG_VALUE_CLEAR))) {
        snprintf(why, whysize, "type http-delivery without an http-delivery-url");
        return NULL;
    }
    h = xcalloc(1, sizeof *h);
    h->url = xstrdup(cfg_str(c, v->text));
    if (cfg_http_url_parse(h->url, &h->parsed, err, sizeof err) < 0) {
        snprintf(why, whysize, "http-delivery-url: %s", err);
        goto fail;
    }
    http_loop = loop;
    h->connect_timeout_ms = setting_ms(set, CFG_D_CONNECT_TIMEOUT, 120000);
    h->timeout_ms = h->connect_timeout_ms + setting_ms(set, CFG_D_DATA_SEND_TIMEOUT, 180000);
    h->fn = fn;
    h->arg = arg;
    return h;
fail:
    free(h->url);
    free(h);
    return NULL;
}

const char *
smtpout_http_host(const struct smtpout_http *h)
{
    return h->parsed.host;
}

void
smtpout_http_free(struct smtpout_http *h)
{
    if (!h)
        return;
    request_end(h);
    free(h->url);
    free(h);
}
