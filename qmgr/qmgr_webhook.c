/*
 * qmgr_webhook.c - <acct-webhook URL>: the accounting records of the backlog
 *                  POSTed in batches, with retries, never blocking qmgr
 *
 * The accounting writer (qmgr_acct.c) appends each record to the webhook's
 * backlog file as a JSON line, flushed with the other accounting outputs
 * (before the queue store marks anything written). This sender reads the
 * backlog from the acknowledged offset, POSTs up to max-batch-records
 * records as one JSON array (Content-Type: application/json) through
 * libcurl on the loop (runtime/uvcurl.h), and on a 2xx answer moves the
 * offset past them and persists it (BACKLOG.acked, written and renamed).
 * Anything else - a refused connection, a timeout (write-timeout), any
 * other status - is retried after 1 s, 2 s, 4 s ... up to retry-interval,
 * with a warning at the first failure and then at most once a minute; the
 * records wait in the backlog meanwhile, bounded by backlog-max-size (the
 * writer drops the newest records past it, counted and logged).
 *
 * Restarts: at start the offset is read back and the backlog replayed from
 * there, so a record written before pmtad stopped is sent after it starts
 * again. Delivery is at least once: a batch acknowledged just before a
 * crash, or cut off by a reload, is sent again (receivers dedupe by the
 * record's fields if they must). Once every written byte is acknowledged
 * the backlog is emptied (qmgr_acct_webhook_truncate).
 *
 * A line that is not a JSON object (the last line a crash cut short) is
 * skipped with a warning, never sent.
 *
 * Owns: one struct hook per webhook (the backlog's read descriptor, the
 * request in flight: easy handle, body, header list), the tick timer.
 * SECURITY: the URL is the operator's; the response body is never read.
 * The body is built from the backlog qmgr wrote, each line checked by
 * jansson before it is sent.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <curl/curl.h>
#include <jansson.h>

#include "buf.h"
#include "msg.h"
#include "qmgr.h"
#include "qmgr_acct.h"
#include "uvcurl.h"
#include "worker.h"
#include "xalloc.h"

#define BATCH_BYTES_MAX (4u * 1024 * 1024) /* one POST's body, whatever max-batch-records says */
#define READ_CHUNK      (64u * 1024)
#define FIRST_RETRY_MS  1000u
#define WARN_EVERY_S    60u

struct hook {
    size_t index; /* in the accounting writer */
    struct qmgr_acct_webhook_info info;
    char *acked_path;
    int fd;                 /* the backlog, read-only */
    int64_t acked;          /* bytes of the backlog acknowledged */
    int64_t batch_end;      /* offset after the batch in flight */
    unsigned batch_n;       /* its records */
    struct uvcurl_post req; /* the request in flight (req.easy NULL: none) */
    unsigned failures;      /* in a row */
    uint64_t next_try_ms;
    uint64_t warned_ms;
};

static struct qmgr_acct *acct_w;
static struct hook *hooks;
static size_t nhooks;
static uv_timer_t tick;
static int tick_on;

static void pump(struct hook *h);

/* --- the acknowledged offset ----------------------------------------------------------------- */

static int64_t
read_acked(const char *path)
{
    FILE *f = fopen(path, "r");
    long long v = 0;

    if (f == NULL)
        return 0;
    if (fscanf(f, "%lld", &v) != 1 || v < 0)
        v = 0;
    fclose(f);
    return v;
}

/* save_acked - H->acked to its file (written, renamed); a failure is logged, the records would
   only be sent again */
static void
save_acked(struct hook *h)
{
    char *tmp = xasprintf("%s.tmp", h->acked_path);
    FILE *f = fopen(tmp, "w");

    if (f == NULL || fprintf(f, "%lld\n", (long long)h->acked) < 0 || fflush(f) != 0 ||
        fsync(fileno(f)) != 0 || fclose(f) != 0 || rename(tmp, h->acked_path) != 0) {
        msg_warn("acct-webhook %s: cannot save the acknowledged offset in %s: %s", h->info.url,
                 h->acked_path, strerror(errno));
        if (f)
            (void)unlink(tmp);
    }
    free(tmp);
}

/* --- batches ------------------------------------------------------------------------------- */

/*
 * read_batch - up to batch_records complete lines from H->acked, below END,
 * as a JSON array in *BODY; the offset after them in H->batch_end. How many
 * records (0: nothing complete to send; bad lines are skipped and counted
 * as read).
 */
static unsigned
read_batch(struct hook *h, int64_t end, struct buf *body)
{
    int64_t off = h->acked;
    struct buf chunk = BUF_INIT;
    unsigned n = 0;

    buf_append_str(body, "[");
    h->batch_end = off;
    while (off < end && n < (unsigned)h->info.batch_records && body->len < BATCH_BYTES_MAX) {
        size_t want = (size_t)(end - off) < READ_CHUNK ? (size_t)(end - off) : READ_CHUNK;
        char *p, *nl;
        ssize_t got;

        buf_reset(&chunk);
        buf_reserve(&chunk, want);
        if ((got = pread(h->fd, chunk.data, want, off)) <= 0)
            break;
        chunk.len = (size_t)got;
        for (p = chunk.data; n < (unsigned)h->info.batch_records && body->len < BATCH_BYTES_MAX &&
                             (nl = memchr(p, '\n', (size_t)(chunk.data + chunk.len - p))) != NULL;
             p = nl + 1) {
            json_t *rec = json_loadb(p, (size_t)(nl - p), 0, NULL);

            if (json_is_object(rec)) {
                buf_append_str(body, n ? "," : "");
                buf_append(body, p, (size_t)(nl - p));
                n++;
            } else {
                msg_warn("acct-webhook %s: %s at byte %lld is not a JSON record; skipped",
                         h->info.url, h->info.backlog, (long long)(off + (p - chunk.data)));
            }
            json_decref(rec);
            h->batch_end = off + (nl + 1 - chunk.data);
        }
        if (p == chunk.data)
            break; /* no complete line in a whole chunk: wait for the rest */
        off += p - chunk.data;
    }
    buf_append_str(body, "]");
    buf_free(&chunk);
    return n;
}

static void
request_end(struct hook *h)
{
    uvcurl_post_end(&h->req);
}

/* failed - the batch was not taken: wait (doubling up to retry-interval), warn now and then */
static void
failed(struct hook *h, const char *why)
{
    uint64_t now = qmgr_now_ms(), wait = FIRST_RETRY_MS;
    uint64_t cap = h->info.retry_interval_s > 0 ? (uint64_t)h->info.retry_interval_s * 1000 : 1000;

    for (unsigned i = 0; i < h->failures && wait < cap; i++)
        wait *= 2;
    wait = wait < cap ? wait : cap;
    h->failures++;
    h->next_try_ms = now + wait;
    if (h->failures == 1 || now - h->warned_ms >= WARN_EVERY_S * 1000) {
        msg_warn("acct-webhook %s: POST of %u record(s) failed: %s; %lld byte(s) wait in %s, next "
                 "try in %llu s (attempt %u)",
                 h->info.url, h->batch_n, why, (long long)(h->info.written - h->acked),
                 h->info.backlog, (unsigned long long)(wait + 999) / 1000, h->failures);
        h->warned_ms = now;
    }
}

static void
on_done(CURL *easy, CURLcode result, void *arg)
{
    struct hook *h = arg;
    long status = 0;
    char why[CURL_ERROR_SIZE + 64];

    if (result == CURLE_OK)
        curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &status);
    if (status >= 200 && status < 300) {
        if (h->failures)
            msg_info("acct-webhook %s: records taken again after %u failed attempt(s)", h->info.url,
                     h->failures);
        h->failures = 0;
        h->acked = h->batch_end;
        save_acked(h);
        request_end(h);
        pump(h); /* the next batch at once */
        return;
    }
    if (status)
        snprintf(why, sizeof why, "HTTP %ld", status);
    else
        snprintf(why, sizeof why, "%s",
                 h->req.error[0] ? h->req.error : curl_easy_strerror(result));
    request_end(h);
    failed(h, why);
}

/* post - send BODY (taken over) to H's URL */
static void
post(struct hook *h, char *body)
{
    long timeout_ms = (long)(h->info.timeout_s > 0 ? h->info.timeout_s : 60) * 1000L;

    if (uvcurl_post_json(worker_loop(), &h->req, h->info.url, body, timeout_ms, timeout_ms,
                         "openpmta acct-webhook", on_done, h) < 0)
        failed(h, "cannot start an HTTP request (libcurl)");
}

/* pump - H's next step: a batch to POST, or an empty backlog to truncate */
static void
pump(struct hook *h)
{
    struct buf body = BUF_INIT;

    if (h->req.easy || h->fd < 0 || qmgr_now_ms() < h->next_try_ms ||
        qmgr_acct_webhook(acct_w, h->index, &h->info) < 0)
        return;
    if (h->acked > h->info.written) /* the backlog was emptied (or lost) meanwhile */
        h->acked = 0;
    if (h->acked == h->info.written) {
        if (h->acked > 0 && qmgr_acct_webhook_truncate(acct_w, h->index, h->acked) == 0) {
            h->acked = 0;
            save_acked(h);
        }
        return;
    }
    h->batch_n = read_batch(h, h->info.written, &body);
    if (h->batch_n == 0) {
        buf_free(&body);
        if (h->batch_end > h->acked) { /* only bad lines: past them */
            h->acked = h->batch_end;
            save_acked(h);
        }
        return;
    }
    post(h, buf_detach(&body, NULL));
}

static void
on_tick(uv_timer_t *t)
{
    (void)t;
    for (size_t i = 0; i < nhooks; i++)
        pump(&hooks[i]);
}

/* --- start and stop -------------------------------------------------------------------------- */

/* qmgr_webhook_start - see qmgr.h */
void
qmgr_webhook_start(struct qmgr_acct *a)
{
    acct_w = a;
    nhooks = qmgr_acct_nwebhooks(a);
    if (nhooks == 0)
        return;
    hooks = xcalloc(nhooks, sizeof *hooks);
    for (size_t i = 0; i < nhooks; i++) {
        struct hook *h = &hooks[i];

        h->index = i;
        (void)qmgr_acct_webhook(a, i, &h->info);
        h->acked_path = xasprintf("%s.acked", h->info.backlog);
        h->acked = read_acked(h->acked_path);
        if ((h->fd = open(h->info.backlog, O_RDONLY | O_CLOEXEC)) < 0)
            msg_warn("acct-webhook %s: cannot read the backlog %s: %s", h->info.url,
                     h->info.backlog, strerror(errno));
        else if (h->info.written > h->acked)
            msg_info("acct-webhook %s: %lld byte(s) of records from before the start to send",
                     h->info.url, (long long)(h->info.written - h->acked));
    }
    if (!tick_on) {
        uv_timer_init(worker_loop(), &tick);
        uv_unref((uv_handle_t *)&tick);
        tick_on = 1;
    }
    uv_timer_start(&tick, on_tick, 0, 1000);
}

/* qmgr_webhook_stop - see qmgr.h */
void
qmgr_webhook_stop(int for_good)
{
    for (size_t i = 0; i < nhooks; i++) {
        request_end(&hooks[i]); /* a batch in flight is sent again: at least once */
        if (hooks[i].fd >= 0)
            close(hooks[i].fd);
        free(hooks[i].acked_path);
    }
    free(hooks);
    hooks = NULL;
    nhooks = 0;
    acct_w = NULL;
    if (tick_on)
        uv_timer_stop(&tick);
    if (for_good) {
        if (tick_on)
            uv_close((uv_handle_t *)&tick, NULL);
        tick_on = 0;
        uvcurl_shutdown();
    }
}
