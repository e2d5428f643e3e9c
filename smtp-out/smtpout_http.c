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
 * One curl multi handle per process (G below), created on first use: its
 * socket callback keeps one uv_poll_t per socket curl watches, its timer
 * callback one uv_timer_t. Each request is an easy handle whose private
 * pointer is its channel; the channel has at most one request at a time.
 *
 * Owns: G (the multi handle, the timer, the polls), each channel's easy
 * handle, request body and header list.
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
#include "xalloc.h"

#define HEADERS_MAX 200 /* header fields passed in "headers" */

struct smtpout_http {
    char *url;
    struct cfg_http_url parsed;
    long connect_timeout_ms, timeout_ms;
    smtpout_http_result_fn fn;
    void *arg;
    CURL *easy; /* the running request, or NULL */
    char *body;
    struct curl_slist *headers;
    char error[CURL_ERROR_SIZE];
};

static struct {
    uv_loop_t *loop;
    CURLM *multi;
    uv_timer_t timer;
    int running;
} G;

struct poll_ctx {
    uv_poll_t poll;
    curl_socket_t fd;
};

/* --- the libuv side of the multi handle --------------------------------------------------- */

static void check_done(void);

static void
on_poll(uv_poll_t *h, int status, int events)
{
    struct poll_ctx *p = h->data;
    int flags = 0, running;

    if (status < 0)
        flags = CURL_CSELECT_ERR;
    if (events & UV_READABLE)
        flags |= CURL_CSELECT_IN;
    if (events & UV_WRITABLE)
        flags |= CURL_CSELECT_OUT;
    curl_multi_socket_action(G.multi, p->fd, flags, &running);
    check_done();
}

static void
on_timer(uv_timer_t *t)
{
    int running;

    (void)t;
    curl_multi_socket_action(G.multi, CURL_SOCKET_TIMEOUT, 0, &running);
    check_done();
}

static int
timer_cb(CURLM *multi, long timeout_ms, void *userp)
{
    (void)multi;
    (void)userp;
    if (timeout_ms < 0)
        uv_timer_stop(&G.timer);
    else
        uv_timer_start(&G.timer, on_timer, (uint64_t)timeout_ms, 0);
    return 0;
}

static void
poll_closed(uv_handle_t *h)
{
    free(h->data);
}

static int
socket_cb(CURL *easy, curl_socket_t s, int what, void *userp, void *socketp)
{
    struct poll_ctx *p = socketp;
    int events = 0;

    (void)easy;
    (void)userp;
    if (what == CURL_POLL_REMOVE) {
        if (p) {
            uv_poll_stop(&p->poll);
            uv_close((uv_handle_t *)&p->poll, poll_closed);
            curl_multi_assign(G.multi, s, NULL);
        }
        return 0;
    }
    if (!p) {
        p = xcalloc(1, sizeof *p);
        p->fd = s;
        if (uv_poll_init_socket(G.loop, &p->poll, s) < 0) {
            free(p);
            return -1;
        }
        p->poll.data = p;
        curl_multi_assign(G.multi, s, p);
    }
    if (what & CURL_POLL_IN)
        events |= UV_READABLE;
    if (what & CURL_POLL_OUT)
        events |= UV_WRITABLE;
    uv_poll_start(&p->poll, events, on_poll);
    return 0;
}

static int
multi_init(uv_loop_t *loop)
{
    if (G.multi)
        return 0;
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK || (G.multi = curl_multi_init()) == NULL)
        return -1;
    G.loop = loop;
    uv_timer_init(loop, &G.timer);
    curl_multi_setopt(G.multi, CURLMOPT_SOCKETFUNCTION, socket_cb);
    curl_multi_setopt(G.multi, CURLMOPT_TIMERFUNCTION, timer_cb);
    return 0;
}

void
smtpout_http_shutdown(void)
{
    if (!G.multi)
        return;
    curl_multi_cleanup(G.multi); /* REMOVE callbacks close the polls */
    G.multi = NULL;
    uv_timer_stop(&G.timer);
    uv_close((uv_handle_t *)&G.timer, NULL);
    curl_global_cleanup();
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

/* request_end - forget H's request (the result has been taken) */
static void
request_end(struct smtpout_http *h)
{
    if (h->easy) {
        curl_multi_remove_handle(G.multi, h->easy);
        curl_easy_cleanup(h->easy);
    }
    h->easy = NULL;
    curl_slist_free_all(h->headers);
    h->headers = NULL;
    free(h->body);
    h->body = NULL;
}

/* check_done - every finished request gives its channel a result */
static void
check_done(void)
{
    CURLMsg *m;
    int left;

    while ((m = curl_multi_info_read(G.multi, &left)) != NULL) {
        struct smtpout_http *h = NULL;
        struct smtpout_reply r;
        long status = 0;

        if (m->msg != CURLMSG_DONE)
            continue;
        curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&h);
        if (m->data.result == CURLE_OK)
            curl_easy_getinfo(m->easy_handle, CURLINFO_RESPONSE_CODE, &status);
        smtpout_http_status(&r, status, h->error[0] ? h->error : curl_easy_strerror(m->data.result),
                            h->url);
        request_end(h);
        h->fn(h->arg, &r);
    }
}

/* --- the request --------------------------------------------------------------------------- */

static size_t
drop_body(char *p, size_t size, size_t n, void *arg)
{
    (void)p;
    (void)arg;
    return size * n; /* the response body is not read */
}

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
    CURLMcode mc;

    if (h->easy)
        msg_panic("smtpout_http_start: a request is running");
    if ((h->body = build_body(m, i)) == NULL) {
        smtpout_reply_local(r, SMTPOUT_TEMP, SMTPOUT_STAGE_LOCAL, "4.3.0",
                            "cannot build the JSON request (an address that is not UTF-8?)");
        return 1;
    }
    if ((h->easy = curl_easy_init()) == NULL) {
        request_end(h);
        smtpout_reply_local(r, SMTPOUT_TEMP, SMTPOUT_STAGE_LOCAL, "4.3.0", "out of memory");
        return 1;
    }
    h->error[0] = '\0';
    h->headers = curl_slist_append(NULL, "Content-Type: application/json");
    h->headers = curl_slist_append(h->headers, "Expect:");
    curl_easy_setopt(h->easy, CURLOPT_URL, h->url);
    curl_easy_setopt(h->easy, CURLOPT_PRIVATE, (char *)h);
    curl_easy_setopt(h->easy, CURLOPT_POSTFIELDS, h->body);
    curl_easy_setopt(h->easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)strlen(h->body));
    curl_easy_setopt(h->easy, CURLOPT_HTTPHEADER, h->headers);
    curl_easy_setopt(h->easy, CURLOPT_WRITEFUNCTION, drop_body);
    curl_easy_setopt(h->easy, CURLOPT_ERRORBUFFER, h->error);
    curl_easy_setopt(h->easy, CURLOPT_CONNECTTIMEOUT_MS, h->connect_timeout_ms);
    curl_easy_setopt(h->easy, CURLOPT_TIMEOUT_MS, h->timeout_ms);
    curl_easy_setopt(h->easy, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h->easy, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(h->easy, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(h->easy, CURLOPT_USERAGENT, "openpmta http-delivery");
    if ((mc = curl_multi_add_handle(G.multi, h->easy)) != CURLM_OK) {
        smtpout_reply_local(r, SMTPOUT_TEMP, SMTPOUT_STAGE_LOCAL, "4.3.0", "cannot start: %s",
                            curl_multi_strerror(mc));
        request_end(h);
        return 1;
    }
    return 0;
}

void
smtpout_http_cancel(struct smtpout_http *h)
{
    struct smtpout_reply r;

    if (!h || !h->easy)
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
    if (multi_init(loop) < 0) {
        snprintf(why, whysize, "cannot initialise libcurl");
        goto fail;
    }
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
