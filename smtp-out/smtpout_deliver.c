/*
 * smtpout_deliver.c - one delivery job: destinations, attempts, transactions
 *
 * What it does: resolves the job's destinations, walks them (one session at
 * a time) until one is ready, feeds it the job's messages, and makes sure
 * every recipient gets exactly one result before `done`. The rules are in
 * smtpout_deliver.h.
 *
 * What it owns: the destination list, per-recipient "has a result" flags,
 * the current session (until its `closed`), and a timer used to start and to
 * finish asynchronously, so that no callback ever runs inside
 * smtpout_job_start() and `done` runs from a clean stack.
 *
 * SECURITY: reply text reaching the callbacks was sanitized and bounded by
 * smtpout_session; names come bounded from mxroute/mxdns.
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "xalloc.h"
#include "smtpout_deliver.h"

struct smtpout_delivery {
    uv_loop_t *loop;
    struct mxdns *dns;
    const struct smtpout_job *job;
    struct smtpout_job_callbacks cb;
    void *arg;
    uv_timer_t timer; /* deferred start; closed at the end */
    struct mxroute_req *resolving;

    struct mxroute_dest *dests;
    size_t ndests;
    size_t dest_index; /* current / next destination */
    unsigned attempts;
    int tls_downgraded; /* retrying this destination without TLS */

    struct smtpout_session *session;
    int session_ready;
    size_t msg_index;           /* message being (or next to be) sent */
    unsigned char **has_result; /* [msg][rcpt] */
    struct smtpout_reply last_error;
    int have_error;
    int aborted;
    int finishing;
    char mx_name[MXDNS_NAME_MAX + 1];
    char dest_ip[INET6_ADDRSTRLEN];
};

static void deliver_try_next(struct smtpout_delivery *d);

static void
deliver_event(struct smtpout_delivery *d, struct smtpout_event *ev)
{
    if (ev->mx_name == NULL)
        ev->mx_name = d->mx_name;
    if (ev->dest_ip == NULL)
        ev->dest_ip = d->dest_ip;
    if (d->cb.event)
        d->cb.event(d->arg, ev);
}

static void
deliver_result(struct smtpout_delivery *d, size_t m, size_t r, const struct smtpout_reply *reply)
{
    if (d->has_result[m][r])
        return;
    d->has_result[m][r] = 1;
    if (d->cb.rcpt_result)
        d->cb.rcpt_result(d->arg, m, r, reply, d->mx_name, d->dest_ip);
}

/* deliver_fail_rest - REPLY for every recipient still without a result */
static void
deliver_fail_rest(struct smtpout_delivery *d, const struct smtpout_reply *reply)
{
    size_t m, r;

    for (m = 0; m < d->job->nmsgs; m++)
        for (r = 0; r < d->job->msgs[m].nrcpts; r++)
            deliver_result(d, m, r, reply);
}

static void
deliver_freed(uv_handle_t *handle)
{
    struct smtpout_delivery *d = handle->data;
    size_t m;

    if (d->cb.done)
        d->cb.done(d->arg);
    for (m = 0; m < d->job->nmsgs; m++)
        free(d->has_result[m]);
    free(d->has_result);
    free(d->dests);
    free(d);
}

/* deliver_finish - all recipients have results; `done` from the close callback */
static void
deliver_finish(struct smtpout_delivery *d)
{
    if (d->finishing)
        return;
    d->finishing = 1;
    uv_timer_stop(&d->timer);
    uv_close((uv_handle_t *)&d->timer, deliver_freed);
}

/* deliver_next_message - index of the next message with open recipients */
static int
deliver_next_message(struct smtpout_delivery *d)
{
    for (; d->msg_index < d->job->nmsgs; d->msg_index++) {
        const struct smtpout_message *m = &d->job->msgs[d->msg_index];
        size_t r;
        for (r = 0; r < m->nrcpts; r++)
            if (!d->has_result[d->msg_index][r])
                return 1;
    }
    return 0;
}

static void
deliver_send_or_quit(struct smtpout_delivery *d)
{
    if (d->aborted || !deliver_next_message(d)) {
        smtpout_session_quit(d->session);
        return;
    }
    smtpout_session_send(d->session, &d->job->msgs[d->msg_index]);
}

/* --- session callbacks ------------------------------------------------------------ */

static void
on_connected(void *arg, const char *source_ip, const char *dest_ip, const char *mx_name)
{
    struct smtpout_delivery *d = arg;
    struct smtpout_event ev = {
        .type = SMTPOUT_EV_CONNECTED, .source_ip = source_ip, .dest_ip = dest_ip, .mx_name = mx_name
    };

    ev.port = mxroute_sockaddr_port((struct sockaddr *)&d->dests[d->dest_index].addr);
    deliver_event(d, &ev);
}

static void
on_tls(void *arg, const char *protocol, const char *cipher, const char *check)
{
    (void)check;
    struct smtpout_event ev = { .type = SMTPOUT_EV_TLS,
                                .tls_protocol = protocol,
                                .tls_cipher = cipher };
    deliver_event(arg, &ev);
}

static void
on_ready(void *arg, unsigned caps)
{
    struct smtpout_delivery *d = arg;
    struct smtpout_event ev = { .type = SMTPOUT_EV_READY, .caps = caps };

    d->session_ready = 1;
    deliver_event(d, &ev);
    deliver_send_or_quit(d);
}

static void
on_rcpt_result(void *arg, size_t index, const struct smtpout_reply *r)
{
    struct smtpout_delivery *d = arg;

    /* smtp-421-means-mx-unavailable: not this recipient's verdict, the
     * host's; leave it open for the next destination. */
    if (r->code == 421 && d->job->smtp_421_means_mx_unavailable) {
        d->last_error = *r;
        d->have_error = 1;
        return;
    }
    deliver_result(d, d->msg_index, index, r);
}

static void
on_transaction_done(void *arg, const struct smtpout_reply *r)
{
    struct smtpout_delivery *d = arg;
    struct smtpout_event ev = { .type = SMTPOUT_EV_TRANSACTION,
                                .reply = r,
                                .msg_index = d->msg_index };

    deliver_event(d, &ev);
    d->msg_index++;
    if (smtpout_session_is_idle(d->session))
        deliver_send_or_quit(d);
}

/* deliver_give_up_on_dest - should this failure end the whole job now? */
static int
deliver_is_final(const struct smtpout_delivery *d, const struct smtpout_reply *reason)
{
    return !d->session_ready && reason->stage == SMTPOUT_STAGE_GREETING &&
           reason->cls == SMTPOUT_PERM && d->job->bounce_upon_5xx_greeting;
}

static void
on_closed(void *arg, const struct smtpout_reply *reason)
{
    struct smtpout_delivery *d = arg;
    struct smtpout_event ev = { .type = SMTPOUT_EV_CLOSED, .reply = reason };
    int was_ready = d->session_ready;

    deliver_event(d, &ev);
    d->session = NULL;
    d->session_ready = 0;
    d->msg_index = 0; /* rescan: a 421 may have left earlier ones open */
    if (!deliver_next_message(d)) {
        deliver_finish(d);
        return;
    }
    if (deliver_is_final(d, reason)) {
        deliver_fail_rest(d, reason);
        deliver_finish(d);
        return;
    }
    if (reason->cls != SMTPOUT_OK) {
        d->last_error = *reason;
        d->have_error = 1;
    }
    /* A failed opportunistic handshake: same host again, in clear. */
    if (!was_ready && reason->stage == SMTPOUT_STAGE_TLS && !d->tls_downgraded &&
        d->job->session.tls == SMTPOUT_TLS_OPPORTUNISTIC) {
        d->tls_downgraded = 1;
    } else {
        d->tls_downgraded = 0;
        d->dest_index++;
    }
    deliver_try_next(d);
}

/* --- attempts --------------------------------------------------------------------- */

static void
deliver_try_next(struct smtpout_delivery *d)
{
    static const struct smtpout_session_callbacks session_cb = {
        on_connected, on_tls, on_ready, on_rcpt_result, on_transaction_done, on_closed, NULL,
    };
    unsigned max_attempts = d->job->mx_connection_attempts ? d->job->mx_connection_attempts : 10;
    struct smtpout_session_config cfg = d->job->session;
    const struct mxroute_dest *dest;
    struct smtpout_event ev = { .type = SMTPOUT_EV_CONNECTING };
    struct smtpout_reply r;

    if (d->aborted || d->dest_index >= d->ndests || d->attempts >= max_attempts) {
        if (d->have_error) {
            r = d->last_error;
            r.cls = SMTPOUT_TEMP; /* other hosts may work later */
            if (r.status[0] == '5')
                r.status[0] = '4';
        } else {
            memset(&r, 0, sizeof r);
            r.cls = SMTPOUT_TEMP;
            r.stage = SMTPOUT_STAGE_CONNECT;
            snprintf(r.status, sizeof r.status, "4.4.1");
            snprintf(r.text, sizeof r.text,
                     d->aborted ? "delivery aborted" : "no destination could be reached");
        }
        deliver_fail_rest(d, &r);
        deliver_finish(d);
        return;
    }
    dest = &d->dests[d->dest_index];
    d->attempts++;
    snprintf(d->mx_name, sizeof d->mx_name, "%s", dest->mx_name);
    mxroute_sockaddr_str((const struct sockaddr *)&dest->addr, d->dest_ip, sizeof d->dest_ip);
    ev.port = mxroute_sockaddr_port((const struct sockaddr *)&dest->addr);
    deliver_event(d, &ev);
    cfg.dest = (const struct sockaddr *)&dest->addr;
    cfg.mx_name = dest->mx_name;
    if (d->tls_downgraded)
        cfg.tls = SMTPOUT_TLS_OFF;
    d->session_ready = 0;
    d->session = smtpout_session_start(d->loop, &cfg, &session_cb, d);
}

static void
deliver_resolved(void *arg, const struct mxroute_dest_list *list)
{
    struct smtpout_delivery *d = arg;
    struct smtpout_event ev = { .type = SMTPOUT_EV_RESOLVED, .ndests = list->ndests };
    struct smtpout_reply r;

    d->resolving = NULL;
    if (list->status != MXROUTE_OK) {
        memset(&r, 0, sizeof r);
        r.cls = list->status == MXROUTE_PERMFAIL ? SMTPOUT_PERM : SMTPOUT_TEMP;
        r.stage = SMTPOUT_STAGE_CONNECT;
        snprintf(r.status, sizeof r.status, "%s",
                 list->status_code[0]    ? list->status_code
                 : r.cls == SMTPOUT_PERM ? "5.4.4"
                                         : "4.4.3");
        snprintf(r.text, sizeof r.text, "%s %s", r.status, list->why);
        ev.reply = &r;
        deliver_event(d, &ev);
        deliver_fail_rest(d, &r);
        deliver_finish(d);
        return;
    }
    deliver_event(d, &ev);
    d->dests = xreallocarray(NULL, list->ndests, sizeof *d->dests);
    memcpy(d->dests, list->dests, list->ndests * sizeof *d->dests);
    d->ndests = list->ndests;
    deliver_try_next(d);
}

static void
deliver_start_cb(uv_timer_t *timer)
{
    struct smtpout_delivery *d = timer->data;
    const struct sockaddr *src = d->job->session.source;
    struct mxroute_options ro = {
        .route = d->job->route,
        .default_port = d->job->default_port,
        .family = src ? src->sa_family : AF_UNSPEC,
        .bounce_upon_no_mx = d->job->bounce_upon_no_mx,
    };

    if (d->aborted) {
        deliver_try_next(d);
        return;
    }
    d->resolving = mxroute_resolve(d->dns, d->job->domain, &ro, deliver_resolved, d);
}

struct smtpout_delivery *
smtpout_job_start(uv_loop_t *loop, struct mxdns *dns, const struct smtpout_job *job,
                  const struct smtpout_job_callbacks *cb, void *arg)
{
    struct smtpout_delivery *d = xcalloc(1, sizeof *d);
    size_t m;

    d->loop = loop;
    d->dns = dns;
    d->job = job;
    d->cb = *cb;
    d->arg = arg;
    d->has_result = xcalloc(job->nmsgs ? job->nmsgs : 1, sizeof *d->has_result);
    for (m = 0; m < job->nmsgs; m++)
        d->has_result[m] = xcalloc(job->msgs[m].nrcpts ? job->msgs[m].nrcpts : 1, 1);
    uv_timer_init(loop, &d->timer);
    d->timer.data = d;
    uv_timer_start(&d->timer, deliver_start_cb, 0, 0);
    return d;
}

void
smtpout_job_abort(struct smtpout_delivery *d)
{
    if (d->aborted || d->finishing)
        return;
    d->aborted = 1;
    if (d->session) {
        smtpout_session_abort(d->session); /* on_closed does the rest */
    } else if (d->resolving) {
        mxroute_cancel(d->resolving);
        d->resolving = NULL;
        deliver_try_next(d); /* fails the rest: aborted */
    }
    /* otherwise the start timer has not fired yet and will see `aborted` */
}
