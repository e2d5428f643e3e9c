/*
 * uvcurl.h - libcurl's multi interface driven by a libuv loop: the one HTTP
 *            client of the programs (smtp-out's http-delivery, qmgr's
 *            <acct-webhook>)
 *
 * One curl multi handle per process, created by the first uvcurl_add():
 * curl hands its sockets and its timer to libuv (curl_multi_socket_action),
 * so no thread and no blocking call is added, and keep-alive connections to
 * an endpoint are reused across requests. The caller builds each request as
 * a curl easy handle (URL, body, headers, timeouts) and adds it; DONE is
 * called once when it has finished, with curl's result, after the handle
 * left the multi handle (the caller then cleans it up).
 *
 * Owns: the multi handle, its uv_timer_t and one uv_poll_t per socket curl
 * watches (freed in their close callbacks).
 * SECURITY: the HTTP parsing is libcurl's; callers choose what of a
 * response they read (both callers drop the body).
 */
#ifndef PMTA_UVCURL_H
#define PMTA_UVCURL_H

#include <curl/curl.h>
#include <uv.h>

/* uvcurl_done_fn - EASY finished with RESULT (CURLE_OK: a response came; read its code) */
typedef void (*uvcurl_done_fn)(CURL *easy, CURLcode result, void *arg);

/* uvcurl_add - run EASY on LOOP; DONE(EASY, result, ARG) when it is over. 0, or -1 (not started:
 * the caller still owns EASY and gets no callback) */
int uvcurl_add(uv_loop_t *loop, CURL *easy, uvcurl_done_fn done, void *arg);
/* uvcurl_remove - stop EASY before it finished (no callback follows; the caller cleans it up) */
void uvcurl_remove(CURL *easy);
/* A JSON POST (both callers' request): its handle, headers, body and curl's error text. */
struct uvcurl_post {
    CURL *easy; /* NULL: none running */
    struct curl_slist *headers;
    char *body;
    char error[CURL_ERROR_SIZE];
};

/*
 * uvcurl_post_json - POST BODY (taken over; freed by uvcurl_post_end) to URL
 * as application/json on LOOP: no redirects, http and https only, the
 * response body dropped, at most TIMEOUT_MS in all (CONNECT_MS to connect).
 * DONE as for uvcurl_add; the caller then calls uvcurl_post_end. 0, or -1
 * (nothing runs, P is ended, no callback)
 */
int uvcurl_post_json(uv_loop_t *loop, struct uvcurl_post *p, const char *url, char *body,
                     long connect_ms, long timeout_ms, const char *agent, uvcurl_done_fn done,
                     void *arg);
/* uvcurl_post_end - stop P if it runs and free its handle, headers and body */
void uvcurl_post_end(struct uvcurl_post *p);
/* uvcurl_shutdown - free the multi handle (no request may be left) */
void uvcurl_shutdown(void);

#endif
