/*
 * smtpout_conn_walk.c - a connection's way to a session that is up: the
 * destinations (that smtp-hosts/route, else the MX of the domain qmgr names,
 * through mxroute) and the MTA-STS policy fetched beside them, then the
 * destinations tried one session at a time until one gets past greeting,
 * EHLO and STARTTLS (up to mx-connection-attempts; each attempt's TLS policy
 * decided by smtpout_tlspol, DANE per destination; a failed opportunistic TLS
 * handshake is retried once in clear on the same host; a 5xx greeting ends
 * the walk when bounce-upon-5xx-greeting). Then MP_CONN_UP, and the session's
 * later callbacks (TLS, ready, closed).
 *
 * Owns: the resolution, the MTA-STS request and the session of the attempt
 * (as fields of struct oconn, smtpout_conn_int.h).
 *
 * SECURITY: destinations come from the configuration and DNS (bounded by
 * mxdns); the session sanitizes the peer's text before it gets here,
 * and nothing from the peer is logged unsanitized.
 */
#include "config.h"

#include <stdio.h>
#include <string.h>

#include "mailproto.h"
#include "msg.h"
#include "smtpout_conn_int.h"
#include "worker.h"
#include "xalloc.h"

static void conn_try_next(struct oconn *c);

static void
on_connected(void *arg, const char *source_ip, const char *dest_ip, const char *mx_name)
{
    struct oconn *c = arg;

    snprintf(c->source_ip, sizeof c->source_ip, "%s", source_ip);
    snprintf(c->dest_ip, sizeof c->dest_ip, "%s", dest_ip);
}

static void
on_tls(void *arg, const char *protocol, const char *cipher, const char *check)
{
    struct oconn *c = arg;
    char shown[200];

    snprintf(c->tls, sizeof c->tls, "%s %s", protocol, cipher);
    snprintf(c->verify, sizeof c->verify, "%s", check ? check : "");
    conn_trace(c, "*", "TLS established: protocol %s, cipher %s, certificate %s", protocol, cipher,
               check ? check : "not verified (opportunistic TLS)");
    if (check && strstr(check, " failed: ")) /* only reported: MTA-STS mode testing */
        msg_warn("connection %u %s: MTA-STS testing: %s would be refused in enforce mode: %s",
                 c->id, c->queue, c->mx, msg_printable(shown, sizeof shown, check, strlen(check)));
}

/* esmtp_text - the capabilities as "PIPELINING,8BITMIME,..." for MP_CONN_UP */
static void
esmtp_text(unsigned caps, char *out, size_t outlen)
{
    size_t used = 0;

    out[0] = '\0';
    for (unsigned bit = SMTPOUT_CAP_PIPELINING; bit <= SMTPOUT_CAP_DSN; bit <<= 1)
        if ((caps & bit) && used < outlen)
            used += (size_t)snprintf(out + used, outlen - used, "%s%s", used ? "," : "",
                                     smtpout_cap_name(bit));
}

static void
on_ready(void *arg, unsigned caps)
{
    struct oconn *c = arg;
    char esmtp[200];

    c->up = 1;
    esmtp_text(caps, esmtp, sizeof esmtp);
    msg_info("connection %u %s up: mx=%s ip=%s source=%s tls=%s%s%s%s", c->id, c->queue, c->mx,
             c->dest_ip, c->source_ip[0] ? c->source_ip : "-", c->tls[0] ? c->tls : "none",
             c->verify[0] ? " verify=" : "", c->verify,
             c->session && smtpout_session_authenticated(c->session) ? " auth=yes" : "");
    if (c->in_table)
        out_report_up(c->id, c->mx, c->dest_ip, c->source_ip, c->tls, esmtp);
    conn_after_txn(c);
}
/* is_final_greeting - a 5xx greeting ends the walk when bounce-upon-5xx-greeting */
static int
is_final_greeting(const struct oconn *c, const struct smtpout_reply *reason)
{
    return reason->stage == SMTPOUT_STAGE_GREETING && reason->cls == SMTPOUT_PERM &&
           c->bounce_upon_5xx_greeting;
}

/* closed_before_up - an attempt failed: next destination, or give up */
static void
closed_before_up(struct oconn *c, const struct smtpout_reply *reason)
{
    if (c->aborting || !c->in_table) {
        conn_give_up(c);
        return;
    }
    if (is_final_greeting(c, reason)) {
        conn_down(c, MP_RESULT_PERMFAIL, reason);
        return;
    }
    c->last_error = *reason;
    c->have_error = 1;
    conn_trace(c, "*", "attempt %u to %s[%s] failed: %s", c->attempts, c->mx, c->dest_ip,
               reason->text);
    if (c->log_connections)
        msg_info("connection %u %s: attempt %u to %s[%s] failed: %s", c->id, c->queue, c->attempts,
                 c->mx, c->dest_ip, reason->text);
    /* A failed opportunistic handshake: the same host again, in clear (never when DANE or
       MTA-STS made TLS mandatory: the attempt's policy is REQUIRED then). */
    if (reason->stage == SMTPOUT_STAGE_TLS && !c->tls_downgraded &&
        c->tlsdec.tls == SMTPOUT_TLS_OPPORTUNISTIC) {
        c->tls_downgraded = 1;
    } else {
        c->tls_downgraded = 0;
        c->dest_index++;
    }
    conn_try_next(c);
}

static void
on_closed(void *arg, const struct smtpout_reply *reason)
{
    struct oconn *c = arg;

    c->session = NULL;
    if (!c->up) {
        closed_before_up(c, reason);
        return;
    }
    conn_down(c, reason->cls == SMTPOUT_OK ? MP_RESULT_OK : MP_RESULT_TEMPFAIL, reason);
}

/* conn_give_up - no destination left: the last failure, as a temporary one */
void
conn_give_up(struct oconn *c)
{
    struct smtpout_reply r;

    if (c->close_requested) {
        conn_local_failure(&r, SMTPOUT_OK, "2.0.0", "closed before it was up, as qmgr asked");
        conn_down(c, MP_RESULT_OK, &r);
        return;
    }
    if (c->have_error) {
        r = c->last_error;
        if (r.status[0] == '5')
            r.status[0] = '4'; /* other hosts, or this one later, may work */
    } else {
        conn_local_failure(&r, SMTPOUT_TEMP, "4.4.1",
                           c->aborting ? "connection aborted" : "no destination could be reached");
    }
    conn_down(c, MP_RESULT_TEMPFAIL, &r);
}

/* on_decided - the attempt's TLS policy is known: connect, or skip the destination */
static void
on_decided(void *arg, struct smtpout_tls_decision *d)
{
    static const struct smtpout_session_callbacks cb = {
        on_connected,
        on_tls,
        on_ready,
        conn_on_rcpt_result,
        conn_on_transaction_done,
        on_closed,
        conn_on_session_trace,
    };
    struct oconn *c = arg;
    struct smtpout_session_config scfg = c->scfg;
    const struct mxroute_dest *dest = &c->dests[c->dest_index];

    c->deciding = 0;
    if (c->aborting || !c->in_table) {
        conn_give_up(c);
        return;
    }
    if (d->unusable) {
        c->last_error = d->why;
        c->have_error = 1;
        c->tls_downgraded = 0;
        c->dest_index++;
        conn_try_next(c);
        return;
    }
    scfg.dest = (const struct sockaddr *)&dest->addr;
    scfg.mx_name = dest->mx_name;
    scfg.tls = c->tls_downgraded && d->tls == SMTPOUT_TLS_OPPORTUNISTIC ? SMTPOUT_TLS_OFF : d->tls;
    if (scfg.tls != SMTPOUT_TLS_OFF)
        scfg.check = d->check;
    if (c->log_connections)
        msg_info("connection %u %s: attempt %u: connecting to %s[%s]:%u from %s%s", c->id, c->queue,
                 c->attempts, c->mx, c->dest_ip,
                 mxroute_sockaddr_port((const struct sockaddr *)&dest->addr),
                 c->source_ip[0] ? c->source_ip : "any address",
                 scfg.tls == SMTPOUT_TLS_OFF && c->tls_downgraded ? " (again without TLS)" : "");
    conn_trace(c, "*", "attempt %u: connecting to %s[%s]:%u from %s%s", c->attempts, c->mx,
               c->dest_ip, mxroute_sockaddr_port((const struct sockaddr *)&dest->addr),
               c->source_ip[0] ? c->source_ip : "any address",
               scfg.tls == SMTPOUT_TLS_OFF && c->tls_downgraded ? " (again without TLS)" : "");
    c->session = smtpout_session_start(worker_loop(), &scfg, &cb, c);
    if (c->trace)
        smtpout_session_trace(c->session, c->trace);
}

static void
conn_try_next(struct oconn *c)
{
    const struct mxroute_dest *dest;

    if (c->aborting || c->dest_index >= c->ndests || c->attempts >= c->max_attempts) {
        conn_give_up(c);
        return;
    }
    dest = &c->dests[c->dest_index];
    c->attempts++;
    snprintf(c->mx, sizeof c->mx, "%s", dest->mx_name);
    mxroute_sockaddr_str((const struct sockaddr *)&dest->addr, c->dest_ip, sizeof c->dest_ip);
    c->tls[0] = c->verify[0] = '\0';
    c->tlspol.sts = c->sts_policy.mode != SMTPOUT_STS_NONE ? &c->sts_policy : NULL;
    c->deciding = 1;
    smtpout_tlspol_decide(out_dns(), &c->tlspol, dest, &c->tlsdec, on_decided, c);
}

/* walk_if_ready - the destinations and the MTA-STS policy are both known: start the walk */
static void
walk_if_ready(struct oconn *c)
{
    if (c->resolving || c->sts_pending || c->ndests == 0)
        return;
    conn_try_next(c);
}

static void
on_sts(void *arg, const struct smtpout_sts_policy *policy, const char *note)
{
    struct oconn *c = arg;
    char shown[400];

    c->sts_req = NULL;
    c->sts_pending = 0;
    if (policy)
        c->sts_policy = *policy;
    msg_debug("connection %u %s: MTA-STS: %s", c->id, c->queue,
              msg_printable(shown, sizeof shown, note, strlen(note)));
    walk_if_ready(c); /* (an abort cancels the request: no callback after it) */
}

static void
on_resolved(void *arg, const struct mxroute_dest_list *list)
{
    struct oconn *c = arg;
    struct smtpout_reply r;

    c->resolving = NULL;
    if (list->status != MXROUTE_OK) {
        enum smtpout_class cls = list->status == MXROUTE_PERMFAIL ? SMTPOUT_PERM : SMTPOUT_TEMP;
        conn_local_failure(&r, cls,
                           list->status_code[0]  ? list->status_code
                           : cls == SMTPOUT_PERM ? "5.4.4"
                                                 : "4.4.3",
                           list->why);
        c->last_error = r;
        c->have_error = -1; /* conn_resolve finishes it when we ran inside the call */
        if (!c->resolve_in_call)
            conn_down(c, out_result_of(cls), &r);
        return;
    }
    c->dests = xreallocarray(NULL, list->ndests, sizeof *c->dests);
    memcpy(c->dests, list->dests, list->ndests * sizeof *c->dests);
    c->ndests = list->ndests;
    conn_trace(c, "*", "%s resolved: %zu destination(s), first %s", c->domain, c->ndests,
               c->ndests ? c->dests[0].mx_name : "-");
    if (!c->resolve_in_call)
        walk_if_ready(c); /* never calls back synchronously */
}

void
conn_start(struct oconn *c)
{
    struct mxroute_options ro = { .route = c->route,
                                  .family = AF_UNSPEC,
                                  .default_port = c->default_port,
                                  .bounce_upon_no_mx = c->bounce_upon_no_mx };

    if (c->scfg.source)
        ro.family = c->scfg.source->sa_family;
    /* MTA-STS is about MX delivery (RFC 8461): not for smtp-hosts routes */
    if (c->use_mta_sts && c->route == NULL && out_sts()) {
        c->sts_pending = 1;
        c->sts_req = smtpout_sts_get(out_sts(), c->domain, on_sts, c);
    }
    c->resolve_in_call = 1;
    c->resolving = mxroute_resolve(out_dns(), c->domain, &ro, on_resolved, c);
    c->resolve_in_call = 0;
    if (c->have_error == -1) { /* failed before the call returned */
        struct smtpout_reply r = c->last_error;
        smtpout_sts_cancel(c->sts_req);
        conn_down(c, out_result_of(r.cls), &r);
        return;
    }
    walk_if_ready(c);
}
