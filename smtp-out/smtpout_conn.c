/*
 * smtpout_conn.c - the connection table: one outbound connection per
 *                  MP_CONN_OPEN, from resolution to MP_CONN_DOWN
 *
 * This file: the table, a connection's start (oconn_open) and end (close,
 * abort, shutdown; the one MP_CONN_DOWN and log line), and pmtactl trace.
 * The queue's settings are read in smtpout_conn_cfg.c, the walk to a session
 * that is up is smtpout_conn_walk.c, the transactions smtpout_conn_txn.c
 * (smtpout_conn_int.h says what they share).
 *
 * What it does: for each connection qmgr orders it resolves the settings of
 * the queue's destination (its name up to the '/': a domain, an MX rollup or
 * a queue-to name; cfg_resolve_queue on the configuration pinned for the
 * connection's life), the destinations (that smtp-hosts/route, else the MX
 * of the domain qmgr names, through mxroute), and walks them one
 * session at a time until one gets past greeting, EHLO and STARTTLS (up to
 * mx-connection-attempts; a failed opportunistic TLS handshake is retried
 * once in clear on the same host; a 5xx greeting ends the walk when
 * bounce-upon-5xx-greeting). Then it reports MP_CONN_UP and runs the
 * transactions qmgr sends, one at a time: MP_RCPT_RESULT per recipient,
 * MP_TXN_DONE, MP_CONN_IDLE. MP_CONN_CLOSE QUITs; every connection ends with
 * exactly one MP_CONN_DOWN (unless the qmgr channel is gone, or this process
 * is shutting down: then the channel's end tells qmgr) and one log line, as
 * it began with one.
 *
 * Results: failures before the connection is up carry the class of the last
 * failure (permanent only for "the domain cannot receive mail" and a 5xx
 * greeting with bounce-upon-5xx-greeting; qmgr decides what to bounce); a
 * connection that ends after it was up is OK after QUIT, else temporary
 * (only unstarted transactions are affected, and those must not bounce).
 * A 421 inside a transaction is a temporary result for the recipients it
 * hit whatever smtp-421-means-mx-unavailable says: qmgr owns the retry.
 *
 * Trace (pmtactl trace, MP_CONN_TRACE): a traced connection reports what it
 * does as MP_TRACE_LINEs - where it stands when the trace begins, each
 * attempt, the TLS parameters, the session's commands and replies (masked
 * and sanitized by the session), each recipient's result - until its next
 * transaction is done or it goes down.
 *
 * Owns: every struct oconn (the table), their sessions, pending and current
 * transactions, destination lists, routes and configuration holds.
 *
 * SECURITY: source and destination addresses come from the configuration,
 * qmgr and DNS (bounded by mxdns); reply text is sanitized by the
 * session. Nothing from the peer is logged unsanitized.
 */
#include "config.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mailproto.h"
#include "msg.h"
#include "smtpout_conn_int.h"
#include "worker.h"
#include "xalloc.h"

#define TABLE_SIZE 256u

static struct oconn *table[TABLE_SIZE];
static size_t nconns;     /* every live struct oconn, detached too */
static int shutting_down; /* no new transactions; QUIT when idle */

/* --- the table ------------------------------------------------------------------------ */

static struct oconn **
table_slot(uint32_t id)
{
    struct oconn **p = &table[id % TABLE_SIZE];

    while (*p && (*p)->id != id)
        p = &(*p)->hnext;
    return p;
}

struct oconn *
conn_find(uint32_t id)
{
    return *table_slot(id);
}

static void
table_remove(struct oconn *c)
{
    struct oconn **p = table_slot(c->id);

    if (c->in_table && *p == c)
        *p = c->hnext;
    c->in_table = 0;
    c->hnext = NULL;
}

size_t
oconn_count(void)
{
    return nconns;
}

int
conn_is_shutting_down(void)
{
    return shutting_down;
}

/* conn_local_failure - see smtpout_conn_int.h */
void
conn_local_failure(struct smtpout_reply *r, enum smtpout_class cls, const char *status,
                   const char *text)
{
    memset(r, 0, sizeof *r);
    r->cls = cls;
    r->stage = SMTPOUT_STAGE_LOCAL;
    snprintf(r->status, sizeof r->status, "%s", status);
    snprintf(r->text, sizeof r->text, "%s %s", status, text);
}

/* --- freeing and reporting ------------------------------------------------------------------ */

static void
kick_closed(uv_handle_t *h)
{
    free(h->data);
}

static void
conn_free(struct oconn *c)
{
    struct otxn *t, *next;

    table_remove(c);
    smtpout_sts_cancel(c->sts_req);
    for (t = c->pending; t; t = next) {
        next = t->next;
        otxn_free(t);
    }
    otxn_free(c->current);
    smtpout_local_free(c->local);
    cfg_route_free(c->route);
    worker_config_release(c->cfg);
    free(c->dests);
    free(c->queue);
    free(c->domain);
    free(c->dest);
    free(c->vmta);
    free(c->helo);
    nconns--;
    if (c->kick_on) /* the timer's memory is C's: free C once it is closed */
        uv_close((uv_handle_t *)&c->kick, kick_closed);
    else
        free(c);
    out_check_stopped();
}

/* --- trace (pmtactl trace) ---------------------------------------------------------------- */

/* conn_trace - one MP_TRACE_LINE of a traced connection: KIND and the formatted text */
void __attribute__((format(printf, 3, 4)))
conn_trace(struct oconn *c, const char *kind, const char *fmt, ...)
{
    char text[MP_TEXT_MAX], shown[MP_TEXT_MAX];
    va_list ap;

    if (!c->trace || !c->in_table)
        return;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    out_report_trace(c->id, uv_hrtime(), kind,
                     msg_printable(shown, sizeof shown, text, strlen(text)));
}

/* conn_on_session_trace - a line of the session's conversation */
void
conn_on_session_trace(void *arg, const char *kind, const char *text)
{
    conn_trace(arg, kind, "%s", text);
}

/* conn_trace_stop - the traced attempt is over */
void
conn_trace_stop(struct oconn *c)
{
    c->trace = 0;
    if (c->session)
        smtpout_session_trace(c->session, 0);
}

static const char *
result_name(uint32_t result)
{
    return result == MP_RESULT_OK ? "ok" : result == MP_RESULT_PERMFAIL ? "permfail" : "tempfail";
}

/*
 * conn_down - the connection is over: one report, one log line, free it.
 * Once this process is shutting down, a connection's end is not reported:
 * it may have been cut off by the shutdown itself (not yet up, or a
 * transaction qmgr sent as it ended), which is no failure of the receiver.
 * qmgr learns when the channel closes, and requeues what was in flight due
 * at once.
 */
void
conn_down(struct oconn *c, uint32_t result, const struct smtpout_reply *r)
{
    conn_trace(c, "*", "connection down (%s): %s", result_name(result), r->text);
    msg_info("connection %u %s down (%s): mx=%s ip=%s source=%s tls=%s transactions=%u: %s", c->id,
             c->queue, result_name(result), c->mx[0] ? c->mx : "-",
             c->dest_ip[0] ? c->dest_ip : "-", c->source_ip[0] ? c->source_ip : "-",
             c->tls[0] ? c->tls : "none", c->ntxns, r->text);
    if (c->in_table && !shutting_down)
        out_report_down(c->id, result, r, c->mx, c->dest_ip);
    conn_free(c);
}
static void
on_kick(uv_timer_t *t)
{
    struct oconn *c = t->data;

    if (c->current == NULL)
        conn_after_txn(c);
}

int
oconn_open(const struct oconn_order *o)
{
    struct oconn *c;
    struct smtpout_reply r;

    if (conn_find(o->id))
        return -EEXIST;
    c = xcalloc(1, sizeof *c);
    c->id = o->id;
    c->queue = xstrdup(o->queue);
    c->domain = xstrdup(o->domain);
    /* the queue's name is DESTINATION/VMTA: the destination's settings (and smtp-hosts)
       apply, the domain's MX is the route (a rollup's member domain) */
    c->dest = strrchr(o->queue, '/') && strrchr(o->queue, '/') != o->queue
                  ? xstrndup(o->queue, (size_t)(strrchr(o->queue, '/') - o->queue))
                  : xstrdup(o->domain);
    c->vmta = xstrdup(o->vmta[0] ? o->vmta : "{default}");
    c->helo = xstrdup(o->helo);
    snprintf(c->source_ip, sizeof c->source_ip, "%s", o->source_ip);
    c->cfg = worker_config_hold();
    if (o->config_generation != c->cfg->generation)
        msg_debug("connection %u: qmgr named configuration %llu, using %llu", c->id,
                  (unsigned long long)o->config_generation, (unsigned long long)c->cfg->generation);
    c->hnext = table[c->id % TABLE_SIZE];
    table[c->id % TABLE_SIZE] = c;
    c->in_table = 1;
    nconns++;
    if (c->helo[0] == '\0') {
        char host[256] = "localhost";
        gethostname(host, sizeof host - 1);
        free(c->helo);
        c->helo = xstrdup(host);
    }
    if (conn_configure(c, &r) < 0 || (!c->local && conn_source(c, &r) < 0)) {
        conn_down(c, MP_RESULT_TEMPFAIL, &r);
        return 0;
    }
    if (c->local) { /* nothing to resolve or connect: ready for qmgr's transactions now */
        c->up = 1;
        snprintf(c->mx, sizeof c->mx, "%s", smtpout_local_peer(c->local));
        msg_info("connection %u %s up: %s delivery", c->id, c->queue,
                 cfg_delivery_type_name(c->type));
        if (c->in_table)
            out_report_up(c->id, c->mx, "", "", "", "");
        /* qmgr's first transaction is usually the next frame: IDLE only if none came */
        uv_timer_init(worker_loop(), &c->kick);
        c->kick.data = c;
        c->kick_on = 1;
        uv_timer_start(&c->kick, on_kick, 0, 0);
        return 0;
    }
    conn_start(c);
    return 0;
}

/* conn_trace_state - where C stands as a trace begins */
static void
conn_trace_state(struct oconn *c)
{
    if (c->local)
        conn_trace(c, "*", "connection %u for %s: %s delivery (no SMTP transcript)", c->id,
                   c->queue, cfg_delivery_type_name(c->type));
    else if (c->up)
        conn_trace(c, "*",
                   "connection %u for %s: next transaction on the open connection to %s[%s] from "
                   "%s, TLS %s%s%s",
                   c->id, c->queue, c->mx, c->dest_ip, c->source_ip[0] ? c->source_ip : "-",
                   c->tls[0] ? c->tls : "none", c->verify[0] ? ", certificate " : "", c->verify);
    else if (c->session || c->deciding)
        conn_trace(c, "*", "connection %u for %s: attempt %u: connecting to %s[%s] from %s", c->id,
                   c->queue, c->attempts, c->mx, c->dest_ip,
                   c->source_ip[0] ? c->source_ip : "any address");
    else
        conn_trace(c, "*", "connection %u for %s: resolving %s (source %s)", c->id, c->queue,
                   c->domain, c->source_ip[0] ? c->source_ip : "any address");
}

int
oconn_trace(uint32_t id, uint32_t flags)
{
    struct oconn *c = conn_find(id);

    if (c == NULL)
        return -ENOENT;
    c->trace = SMTPOUT_TRACE_ON | (flags & MP_TRACE_DATA ? SMTPOUT_TRACE_DATA : 0);
    if (c->session)
        smtpout_session_trace(c->session, c->trace);
    conn_trace_state(c);
    return 0;
}

static void conn_abort(struct oconn *c);

int
oconn_close(uint32_t id)
{
    struct oconn *c = conn_find(id);

    if (c == NULL)
        return -ENOENT;
    c->close_requested = 1;
    if (c->up && c->current == NULL && (c->session || (c->local && conn_idle(c))))
        conn_quit(c);
    else if (!c->up)
        conn_abort(c);
    return 0;
}

/* conn_abort - stop C now; its MP_CONN_DOWN (if still in the table) follows */
static void
conn_abort(struct oconn *c)
{
    if (c->aborting)
        return;
    c->aborting = 1;
    if (c->sts_req) {
        smtpout_sts_cancel(c->sts_req);
        c->sts_req = NULL;
        c->sts_pending = 0;
    }
    if (c->local) {
        if (smtpout_local_busy(c->local))
            smtpout_local_abort(c->local); /* on_local_done, then conn_after_txn ends it */
        else
            conn_quit(c);
    } else if (c->session) {
        smtpout_session_abort(c->session); /* on_closed finishes it */
    } else if (c->resolving) {
        mxroute_cancel(c->resolving);
        c->resolving = NULL;
        if (!c->deciding)
            conn_give_up(c);
    } else if (!c->deciding) { /* between the walk's steps: waiting for nothing */
        conn_give_up(c);
    }
    /* deciding: on_decided sees `aborting` and gives up */
}

/* each_conn - call FN on every connection in the table (FN may free it) */
static void
each_conn(void (*fn)(struct oconn *c))
{
    size_t n = 0, i;
    struct oconn **all = xcalloc(nconns ? nconns : 1, sizeof *all);

    for (i = 0; i < TABLE_SIZE; i++)
        for (struct oconn *c = table[i]; c && n < nconns; c = c->hnext)
            all[n++] = c;
    for (i = 0; i < n; i++)
        fn(all[i]);
    free(all);
}

static void
detach_and_abort(struct oconn *c)
{
    table_remove(c);
    conn_abort(c);
}

void
oconn_abort_all(void)
{
    each_conn(detach_and_abort);
}

static void
quit_when_idle(struct oconn *c)
{
    if (!c->up)
        conn_abort(c);
    else if (c->current == NULL && conn_idle(c))
        conn_quit(c);
    /* busy: conn_after_txn QUITs when its transaction is over */
}

void
oconn_shutdown(void)
{
    shutting_down = 1;
    each_conn(quit_when_idle);
}
