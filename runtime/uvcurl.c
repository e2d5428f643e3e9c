/*
 * uvcurl.c - libcurl's multi interface on a libuv loop (see uvcurl.h)
 *
 * Owns G: the multi handle, its timer, the polls of the sockets curl
 * watches, and each running request's callback (a struct request that is
 * the easy handle's CURLOPT_PRIVATE).
 */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include "uvcurl.h"
#include "xalloc.h"

struct request {
    uvcurl_done_fn done;
    void *arg;
};

static struct {
    uv_loop_t *loop;
    CURLM *multi;
    uv_timer_t timer;
} G;

struct poll_ctx {
    uv_poll_t poll;
    curl_socket_t fd;
};

/* check_done - every finished request gets its callback */
static void
check_done(void)
{
    CURLMsg *m;
    int left;

    while ((m = curl_multi_info_read(G.multi, &left)) != NULL) {
        struct request *rq = NULL;
        CURL *easy = m->easy_handle;
        CURLcode result = m->data.result;

        if (m->msg != CURLMSG_DONE)
            continue;
        curl_easy_getinfo(easy, CURLINFO_PRIVATE, (char **)&rq);
        curl_multi_remove_handle(G.multi, easy);
        curl_easy_setopt(easy, CURLOPT_PRIVATE, NULL);
        if (rq) {
            uvcurl_done_fn done = rq->done;
            void *arg = rq->arg;

            free(rq);
            done(easy, result, arg);
        }
    }
}

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

int
uvcurl_add(uv_loop_t *loop, CURL *easy, uvcurl_done_fn done, void *arg)
{
    struct request *rq;

    if (multi_init(loop) < 0)
        return -1;
    rq = xcalloc(1, sizeof *rq);
    rq->done = done;
    rq->arg = arg;
    curl_easy_setopt(easy, CURLOPT_PRIVATE, (char *)rq);
    if (curl_multi_add_handle(G.multi, easy) != CURLM_OK) {
        curl_easy_setopt(easy, CURLOPT_PRIVATE, NULL);
        free(rq);
        return -1;
    }
    return 0;
}

void
uvcurl_remove(CURL *easy)
{
    struct request *rq = NULL;

    if (!G.multi || !easy)
        return;
    curl_easy_getinfo(easy, CURLINFO_PRIVATE, (char **)&rq);
    curl_multi_remove_handle(G.multi, easy);
    curl_easy_setopt(easy, CURLOPT_PRIVATE, NULL);
    free(rq);
}

/* drop_body - a response body is not read */
static size_t
drop_body(char *p, size_t size, size_t n, void *arg)
{
    (void)p;
    (void)arg;
    return size * n;
}

int
uvcurl_post_json(uv_loop_t *loop, struct uvcurl_post *p, const char *url, char *body,
                 long connect_ms, long timeout_ms, const char *agent, uvcurl_done_fn done,
                 void *arg)
{
    p->body = body;
    p->error[0] = '\0';
    if ((p->easy = curl_easy_init()) == NULL) {
        uvcurl_post_end(p);
        return -1;
    }
    p->headers = curl_slist_append(NULL, "Content-Type: application/json");
    p->headers = curl_slist_append(p->headers, "Expect:");
    curl_easy_setopt(p->easy, CURLOPT_URL, url);
    curl_easy_setopt(p->easy, CURLOPT_POSTFIELDS, p->body);
    curl_easy_setopt(p->easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)strlen(p->body));
    curl_easy_setopt(p->easy, CURLOPT_HTTPHEADER, p->headers);
    curl_easy_setopt(p->easy, CURLOPT_WRITEFUNCTION, drop_body);
    curl_easy_setopt(p->easy, CURLOPT_ERRORBUFFER, p->error);
    curl_easy_setopt(p->easy, CURLOPT_CONNECTTIMEOUT_MS, connect_ms);
    curl_easy_setopt(p->easy, CURLOPT_TIMEOUT_MS, timeout_ms);
    curl_easy_setopt(p->easy, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(p->easy, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(p->easy, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(p->easy, CURLOPT_USERAGENT, agent);
    if (uvcurl_add(loop, p->easy, done, arg) < 0) {
        uvcurl_post_end(p);
        return -1;
    }
    return 0;
}

void
uvcurl_post_end(struct uvcurl_post *p)
{
    if (p->easy) {
        uvcurl_remove(p->easy);
        curl_easy_cleanup(p->easy);
    }
    p->easy = NULL;
    curl_slist_free_all(p->headers);
    p->headers = NULL;
    free(p->body);
    p->body = NULL;
}

void
uvcurl_shutdown(void)
{
    if (!G.multi)
        return;
    curl_multi_cleanup(G.multi); /* REMOVE callbacks close the polls */
    G.multi = NULL;
    uv_timer_stop(&G.timer);
    uv_close((uv_handle_t *)&G.timer, NULL);
    curl_global_cleanup();
}
