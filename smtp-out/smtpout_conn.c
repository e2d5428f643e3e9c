/*
 * smtpout_conn.c - the connection table: one outbound connection per
 *                  MP_CONN_OPEN, from resolution to MP_CONN_DOWN
 *
 * What it does: for each connection qmgr orders it resolves the settings of
 * the queue's destination (its name up to the '/': a domain, an MX rollup or
 * a queue-to name; cfg_resolve_queue on the configuration pinned for the
 * connection's life), the destinations (that smtp-hosts/route, else the MX
 * of the domain qmgr names, through smtpout_route), and walks them one
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
 * qmgr and DNS (bounded by smtpout_dns); reply text is sanitized by the
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
#include "smtpout.h"
#include "smtpout_tlspol.h"
#include "smtpout_local.h"
#include "worker.h"
#include "xalloc.h"

#define TABLE_SIZE         256u
#define COMMAND_TIMEOUT_MS (5u * 60u * 1000u)    /* MAIL, RCPT, DATA, RSET, QUIT, EHLO */
#define NEVER_MS           (24u * 3600u * 1000u) /* an interval of "never" */

struct oconn {
    struct oconn *hnext; /* table chain */
    uint32_t id;
    int in_table; /* 0 once detached (qmgr channel gone) */
    char *queue, *domain, *vmta, *helo;
    char *dest; /* the queue's destination: whose settings apply (a domain, a rollup) */
    char source_ip[INET6_ADDRSTRLEN];
    const struct cfg *cfg; /* pinned until the connection is freed */

    struct smtpout_session_config scfg; /* dest/mx_name set per attempt */
    char log_tag[SMTPOUT_DNS_NAME_MAX + 64];
    int log_connections; /* log-connections: every attempt and why it failed */
    int tracking_envid;  /* tracking-envid: our ENVID when the client gave none */
    struct sockaddr_storage source;
    struct cfg_route *route;
    int bounce_upon_5xx_greeting;
    unsigned max_attempts;

    struct smtpout_resolve *resolving;
    int resolve_in_call; /* the resolve callback ran synchronously */
    struct smtpout_dest *dests;
    size_t ndests, dest_index;
    unsigned attempts;
    int tls_downgraded;
    /* TLS policy: MTA-STS fetched beside the resolution, DANE per destination */
    struct smtpout_tlspol_settings tlspol;
    int use_mta_sts;
    struct smtpout_sts_req *sts_req;
    int sts_pending;
    struct smtpout_sts_policy sts_policy;
    int deciding;                       /* a TLSA lookup is out */
    struct smtpout_tls_decision tlsdec; /* of the current attempt (the session borrows it) */
    char verify[200];
    struct smtpout_reply last_error;
    int have_error;

    struct smtpout_session *session;
    int type;                    /* the queue's `type` (enum cfg_delivery_type) */
    struct smtpout_local *local; /* pipe, file, http-delivery: instead of a session */
    uv_timer_t kick;             /* local: says IDLE on the next turn unless a txn came */
    int kick_on;
    int up; /* MP_CONN_UP sent */
    int close_requested;
    int aborting;
    unsigned ntxns;
    struct otxn *current; /* being sent */
    struct otxn *pending, *pending_tail;

    char mx[SMTPOUT_DNS_NAME_MAX + 1];
    char dest_ip[INET6_ADDRSTRLEN];
    char tls[128];
    unsigned trace; /* SMTPOUT_TRACE_*: pmtactl trace watches until the transaction is done */
};

static struct oconn *table[TABLE_SIZE];
static size_t nconns;     /* every live struct oconn, detached too */
static int shutting_down; /* no new transactions; QUIT when idle */

static void conn_try_next(struct oconn *c);
static void conn_run_next(struct oconn *c);

/* --- the table ------------------------------------------------------------------------ */

static struct oconn **
table_slot(uint32_t id)
{
    struct oconn **p = &table[id % TABLE_SIZE];

    while (*p && (*p)->id != id)
        p = &(*p)->hnext;
    return p;
}

static struct oconn *
table_find(uint32_t id)
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

/* --- settings ------------------------------------------------------------------------- */

static const struct cfg_value *
setting(const struct cfg_resolved *set, enum cfg_directive d)
{
    const struct cfg_value *v = set->v[d];

    return v && !(v->flags & CFG_VALUE_UNSET) ? v : NULL;
}

static int64_t
setting_num(const struct cfg_resolved *set, enum cfg_directive d, int64_t dflt)
{
    const struct cfg_value *v = setting(set, d);

    return v ? v->num : dflt;
}

/* setting_ms - an interval setting in milliseconds ("never": a day; 0 or unset: DFLT_MS) */
static unsigned
setting_ms(const struct cfg_resolved *set, enum cfg_directive d, unsigned dflt_ms)
{
    int64_t s = setting_num(set, d, 0);

    if (s == 0)
        return dflt_ms;
    if (s < 0 || s > NEVER_MS / 1000)
        return NEVER_MS;
    return (unsigned)s * 1000u;
}

/* setting_text - a string setting (in the pinned configuration), or NULL when unset or "" */
static const char *
setting_text(const struct cfg *cfg, const struct cfg_resolved *set, enum cfg_directive d)
{
    const struct cfg_value *v = setting(set, d);
    const char *t = v && !(v->flags & CFG_VALUE_CLEAR) ? cfg_str(cfg, v->text) : NULL;

    return t && *t ? t : NULL;
}

/* setting_bool_text - a yes/no setting stored as text (bounce-upon-no-mx) */
static int
setting_bool_text(const struct cfg *cfg, const struct cfg_resolved *set, enum cfg_directive d)
{
    const struct cfg_value *v = setting(set, d);
    int64_t b = 0;

    if (v && cfg_parse_bool(cfg_str(cfg, v->text), &b) < 0)
        b = 0;
    return b != 0;
}

static enum smtpout_tls_policy
tls_policy(const struct cfg_resolved *set)
{
    if (setting_num(set, CFG_D_REQUIRE_STARTTLS, 0))
        return SMTPOUT_TLS_REQUIRED;
    return setting_num(set, CFG_D_USE_STARTTLS, 1) ? SMTPOUT_TLS_OPPORTUNISTIC : SMTPOUT_TLS_OFF;
}

/* local_failure - a reply we make up (code 0 and an enhanced status we chose) */
static void
local_failure(struct smtpout_reply *r, enum smtpout_class cls, const char *status, const char *text)
{
    memset(r, 0, sizeof *r);
    r->cls = cls;
    r->stage = SMTPOUT_STAGE_LOCAL;
    snprintf(r->status, sizeof r->status, "%s", status);
    snprintf(r->text, sizeof r->text, "%s %s", status, text);
}

/* conn_configure - the queue's delivery settings; 0, or -1 with R saying why */
static int
conn_configure(struct oconn *c, struct smtpout_reply *r)
{
    struct cfg_resolved set;
    const struct cfg_value *hosts;
    char err[200], why[300];

    if (cfg_resolve_queue(c->cfg, c->dest, c->vmta, &set) < 0) {
        local_failure(r, SMTPOUT_TEMP, "4.3.5", "unknown virtual-mta in the configuration");
        return -1;
    }
    snprintf(c->log_tag, sizeof c->log_tag, "connection %u %s", c->id, c->queue);
    c->type = (int)setting_num(&set, CFG_D_TYPE, CFG_TYPE_SMTP);
    if (c->type == CFG_TYPE_DISCARD) { /* qmgr discards these itself: a reload raced us */
        local_failure(r, SMTPOUT_TEMP, "4.3.5", "the queue's type is discard now");
        return -1;
    }
    if (c->type != CFG_TYPE_SMTP) {
        c->local = smtpout_local_new(worker_loop(), c->type, c->cfg, &set, c->log_tag, r);
        return c->local ? 0 : -1;
    }
    c->scfg.helo_name = c->helo;
    c->scfg.tls = tls_policy(&set);
    c->scfg.ssl_ctx = out_ssl_ctx();
    if (c->scfg.ssl_ctx == NULL)
        c->scfg.tls = c->scfg.tls == SMTPOUT_TLS_REQUIRED ? SMTPOUT_TLS_REQUIRED : SMTPOUT_TLS_OFF;
    c->scfg.connect_timeout_ms = setting_ms(&set, CFG_D_CONNECT_TIMEOUT, 120000);
    c->scfg.greeting_timeout_ms = setting_ms(&set, CFG_D_SMTP_GREETING_TIMEOUT, 300000);
    c->scfg.command_timeout_ms = COMMAND_TIMEOUT_MS;
    c->scfg.data_send_timeout_ms = setting_ms(&set, CFG_D_DATA_SEND_TIMEOUT, 180000);
    c->scfg.data_term_timeout_ms = setting_ms(&set, CFG_D_SMTP_DATA_TERMINATION_TIMEOUT, 600000);
    c->scfg.ignore_pipelining = (int)setting_num(&set, CFG_D_IGNORE_PIPELINING, 0);
    c->scfg.ignore_8bitmime = (int)setting_num(&set, CFG_D_IGNORE_8BITMIME, 0);
    c->scfg.ignore_dsn = (int)setting_num(&set, CFG_D_IGNORE_DSN, 0);
    c->scfg.ignore_chunking = (int)setting_num(&set, CFG_D_IGNORE_CHUNKING, 0);
    c->tracking_envid = (int)setting_num(&set, CFG_D_TRACKING_ENVID, 1);
    c->scfg.auth_username = setting_text(c->cfg, &set, CFG_D_AUTH_USERNAME);
    c->scfg.auth_password = setting_text(c->cfg, &set, CFG_D_AUTH_PASSWORD);
    c->scfg.auth_in_clear = (int)setting_num(&set, CFG_D_USE_UNENCRYPTED_PLAIN_AUTH, 0);
    c->tlspol.tls = c->scfg.tls;
    c->tlspol.use_dane = (int)setting_num(&set, CFG_D_USE_DANE, 1) && c->scfg.ssl_ctx;
    c->use_mta_sts = (int)setting_num(&set, CFG_D_USE_MTA_STS, 1) && c->scfg.ssl_ctx;
    c->tlspol.sts_ctx = out_ssl_ctx_ca(setting_text(c->cfg, &set, CFG_D_SMTP_TLS_CA_FILE));
    if (setting_text(c->cfg, &set, CFG_D_SMTP_TLS_CA_FILE))
        c->tlspol.ca_ctx = c->tlspol.sts_ctx;
    c->scfg.log = (setting_num(&set, CFG_D_LOG_COMMANDS, 0) ? SMTPOUT_LOG_COMMANDS : 0) |
                  (setting_num(&set, CFG_D_LOG_DATA, 0) ? SMTPOUT_LOG_DATA : 0) |
                  (setting_num(&set, CFG_D_LOG_TRANSFER_FAILURES, 0) ? SMTPOUT_LOG_TRANSFER_FAILURES
                                                                     : 0);
    c->scfg.log_tag = c->log_tag;
    c->log_connections = (int)setting_num(&set, CFG_D_LOG_CONNECTIONS, 0);
    c->bounce_upon_5xx_greeting = (int)setting_num(&set, CFG_D_BOUNCE_UPON_5XX_GREETING, 1);
    c->max_attempts = (unsigned)setting_num(&set, CFG_D_MX_CONNECTION_ATTEMPTS, 10);
    if (c->max_attempts == 0)
        c->max_attempts = 10;
    if ((hosts = setting(&set, CFG_D_SMTP_HOSTS)) != NULL &&
        cfg_route_parse(cfg_str(c->cfg, hosts->text), &c->route, err, sizeof err) < 0) {
        snprintf(why, sizeof why, "bad smtp-hosts for %s: %s", c->dest, err);
        local_failure(r, SMTPOUT_TEMP, "4.3.5", why);
        return -1;
    }
    return 0;
}

/* conn_source - parse the source IP qmgr chose ("" = any); 0 or -1 */
static int
conn_source(struct oconn *c, struct smtpout_reply *r)
{
    struct sockaddr_in *in4 = (struct sockaddr_in *)&c->source;
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&c->source;

    if (c->source_ip[0] == '\0')
        return 0;
    if (uv_ip4_addr(c->source_ip, 0, in4) == 0 || uv_ip6_addr(c->source_ip, 0, in6) == 0) {
        c->scfg.source = (const struct sockaddr *)&c->source;
        return 0;
    }
    local_failure(r, SMTPOUT_TEMP, "4.3.5", "bad source address from qmgr");
    return -1;
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
static void __attribute__((format(printf, 3, 4)))
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

/* on_session_trace - a line of the session's conversation */
static void
on_session_trace(void *arg, const char *kind, const char *text)
{
    conn_trace(arg, kind, "%s", text);
}

/* conn_trace_stop - the traced attempt is over */
static void
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
static void
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

/* --- transactions ------------------------------------------------------------------------- */

static void
report_gone(void *arg, uint32_t index, const struct smtpout_reply *why)
{
    struct oconn *c = arg;

    if (c->in_table)
        out_report_rcpt(c->id, c->current->msgid, index, MP_RESULT_TEMPFAIL, why,
                        c->current->sent_ns);
}

/* txn_finish - the current transaction is over: TXN_DONE, then the next or IDLE */
static void
txn_finish(struct oconn *c)
{
    struct otxn *t = c->current;

    c->current = NULL;
    if (c->in_table)
        out_report_txn_done(c->id, t->msgid);
    otxn_free(t);
}

/* conn_idle - may a transaction start now? */
static int
conn_idle(const struct oconn *c)
{
    if (c->local)
        return c->up && !smtpout_local_busy(c->local);
    return c->session != NULL && smtpout_session_is_idle(c->session);
}

/* conn_quit - QUIT the session; a local channel just ends */
static void
conn_quit(struct oconn *c)
{
    struct smtpout_reply r;

    if (c->local) {
        local_failure(&r, SMTPOUT_OK, "2.0.0", "closed");
        conn_down(c, MP_RESULT_OK, &r);
        return;
    }
    smtpout_session_quit(c->session);
}

/* conn_after_txn - the session is idle: run what is pending, quit, or say IDLE */
static void
conn_after_txn(struct oconn *c)
{
    if (!conn_idle(c))
        return; /* closing: `closed` follows */
    if (c->close_requested || c->aborting || shutting_down) {
        conn_quit(c);
        return;
    }
    if (c->pending) {
        conn_run_next(c);
        return;
    }
    if (c->in_table)
        out_report_idle(c->id);
}

static void on_rcpt_result(void *arg, size_t i, const struct smtpout_reply *r);

static void
on_local_rcpt(void *arg, size_t i, const struct smtpout_reply *r)
{
    on_rcpt_result(arg, i, r);
}

/* on_local_done - the local channel's transaction is over */
static void
on_local_done(void *arg)
{
    struct oconn *c = arg;

    if (c->current == NULL)
        return;
    txn_finish(c);
    conn_after_txn(c);
}

/* conn_run_next - start the first pending transaction (the session is idle) */
static void
conn_run_next(struct oconn *c)
{
    struct otxn *t = c->pending;

    c->pending = t->next;
    if (c->pending == NULL)
        c->pending_tail = NULL;
    t->next = NULL;
    c->current = t;
    c->ntxns++;
    if (otxn_load(t, out_queue(), report_gone, c) < 0 || t->nrcpts == 0) {
        txn_finish(c);
        conn_after_txn(c);
        return;
    }
    otxn_outbound(t, c->vmta, !c->local && c->tracking_envid);
    t->sent_ns = uv_hrtime();
    if (c->local) {
        static const struct smtpout_local_callbacks cb = { on_local_rcpt, on_local_done };
        struct smtpout_local_msg lm = { &t->msg, t->msgid, t->rcpt_index };
        smtpout_local_send(c->local, &lm, &cb, c);
        return;
    }
    smtpout_session_send(c->session, &t->msg);
}

int
oconn_txn(uint32_t id, uint64_t msgid, const uint32_t *indexes, size_t n)
{
    struct oconn *c = table_find(id);
    struct otxn *t;

    if (c == NULL)
        return -ENOENT;
    t = otxn_new(msgid, indexes, n);
    if (c->pending_tail)
        c->pending_tail->next = t;
    else
        c->pending = t;
    c->pending_tail = t;
    if (c->up && c->current == NULL && conn_idle(c) && !c->close_requested)
        conn_run_next(c);
    return 0;
}

/* --- session callbacks ------------------------------------------------------------------------ */

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
    static const struct {
        unsigned bit;
        const char *name;
    } names[] = {
        { SMTPOUT_CAP_PIPELINING, "PIPELINING" }, { SMTPOUT_CAP_SIZE, "SIZE" },
        { SMTPOUT_CAP_8BITMIME, "8BITMIME" },     { SMTPOUT_CAP_SMTPUTF8, "SMTPUTF8" },
        { SMTPOUT_CAP_STARTTLS, "STARTTLS" },     { SMTPOUT_CAP_ENHANCED, "ENHANCEDSTATUSCODES" },
        { SMTPOUT_CAP_CHUNKING, "CHUNKING" },     { SMTPOUT_CAP_DSN, "DSN" },
    };
    size_t used = 0;

    out[0] = '\0';
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if ((caps & names[i].bit) && used < outlen)
            used += (size_t)snprintf(out + used, outlen - used, "%s%s", used ? "," : "",
                                     names[i].name);
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

static void
on_rcpt_result(void *arg, size_t i, const struct smtpout_reply *r)
{
    struct oconn *c = arg;
    struct otxn *t = c->current;

    if (t == NULL || i >= t->nrcpts || t->reported[i])
        return;
    t->reported[i] = 1;
    conn_trace(c, "*", "recipient %s: %s: %s", t->rcpts[i].addr,
               r->cls == SMTPOUT_OK     ? "delivered"
               : r->cls == SMTPOUT_PERM ? "bounced"
                                        : "deferred",
               r->text);
    if (c->in_table)
        out_report_rcpt(c->id, t->msgid, t->rcpt_index[i], out_result_of(r->cls), r, t->sent_ns);
}

static void
on_transaction_done(void *arg, const struct smtpout_reply *r)
{
    struct oconn *c = arg;
    struct otxn *t = c->current;

    if (t == NULL)
        return;
    for (size_t i = 0; i < t->nrcpts; i++) /* the session promises one each; be sure */
        on_rcpt_result(c, i, r);
    conn_trace(c, "*", "transaction done: %s", r->text);
    conn_trace_stop(c);
    txn_finish(c);
    conn_after_txn(c);
}

/* is_final_greeting - a 5xx greeting ends the walk when bounce-upon-5xx-greeting */
static int
is_final_greeting(const struct oconn *c, const struct smtpout_reply *reason)
{
    return reason->stage == SMTPOUT_STAGE_GREETING && reason->cls == SMTPOUT_PERM &&
           c->bounce_upon_5xx_greeting;
}

static void conn_give_up(struct oconn *c);

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

/* --- attempts -------------------------------------------------------------------------------- */

/* conn_give_up - no destination left: the last failure, as a temporary one */
static void
conn_give_up(struct oconn *c)
{
    struct smtpout_reply r;

    if (c->close_requested) {
        local_failure(&r, SMTPOUT_OK, "2.0.0", "closed before it was up, as qmgr asked");
        conn_down(c, MP_RESULT_OK, &r);
        return;
    }
    if (c->have_error) {
        r = c->last_error;
        if (r.status[0] == '5')
            r.status[0] = '4'; /* other hosts, or this one later, may work */
    } else {
        local_failure(&r, SMTPOUT_TEMP, "4.4.1",
                      c->aborting ? "connection aborted" : "no destination could be reached");
    }
    conn_down(c, MP_RESULT_TEMPFAIL, &r);
}

/* on_decided - the attempt's TLS policy is known: connect, or skip the destination */
static void
on_decided(void *arg, struct smtpout_tls_decision *d)
{
    static const struct smtpout_session_callbacks cb = {
        on_connected,        on_tls,    on_ready,         on_rcpt_result,
        on_transaction_done, on_closed, on_session_trace,
    };
    struct oconn *c = arg;
    struct smtpout_session_config scfg = c->scfg;
    const struct smtpout_dest *dest = &c->dests[c->dest_index];

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
                 smtpout_sockaddr_port((const struct sockaddr *)&dest->addr),
                 c->source_ip[0] ? c->source_ip : "any address",
                 scfg.tls == SMTPOUT_TLS_OFF && c->tls_downgraded ? " (again without TLS)" : "");
    conn_trace(c, "*", "attempt %u: connecting to %s[%s]:%u from %s%s", c->attempts, c->mx,
               c->dest_ip, smtpout_sockaddr_port((const struct sockaddr *)&dest->addr),
               c->source_ip[0] ? c->source_ip : "any address",
               scfg.tls == SMTPOUT_TLS_OFF && c->tls_downgraded ? " (again without TLS)" : "");
    c->session = smtpout_session_start(worker_loop(), &scfg, &cb, c);
    if (c->trace)
        smtpout_session_trace(c->session, c->trace);
}

static void
conn_try_next(struct oconn *c)
{
    const struct smtpout_dest *dest;

    if (c->aborting || c->dest_index >= c->ndests || c->attempts >= c->max_attempts) {
        conn_give_up(c);
        return;
    }
    dest = &c->dests[c->dest_index];
    c->attempts++;
    snprintf(c->mx, sizeof c->mx, "%s", dest->mx_name);
    smtpout_sockaddr_str((const struct sockaddr *)&dest->addr, c->dest_ip, sizeof c->dest_ip);
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
on_resolved(void *arg, const struct smtpout_dest_list *list)
{
    struct oconn *c = arg;
    struct smtpout_reply r;

    c->resolving = NULL;
    if (list->status != SMTPOUT_ROUTE_OK) {
        enum smtpout_class cls = list->status == SMTPOUT_ROUTE_PERMFAIL ? SMTPOUT_PERM
                                                                        : SMTPOUT_TEMP;
        local_failure(&r, cls,
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

static void
conn_start(struct oconn *c)
{
    struct cfg_resolved set;
    struct smtpout_resolve_options ro = { .route = c->route, .family = AF_UNSPEC };

    if (cfg_resolve_queue(c->cfg, c->dest, c->vmta, &set) == 0) {
        ro.default_port = (uint16_t)setting_num(&set, CFG_D_DEFAULT_SMTP_PORT, 25);
        ro.bounce_upon_no_mx = setting_bool_text(c->cfg, &set, CFG_D_BOUNCE_UPON_NO_MX);
    }
    if (c->scfg.source)
        ro.family = c->scfg.source->sa_family;
    /* MTA-STS is about MX delivery (RFC 8461): not for smtp-hosts routes */
    if (c->use_mta_sts && c->route == NULL && out_sts()) {
        c->sts_pending = 1;
        c->sts_req = smtpout_sts_get(out_sts(), c->domain, on_sts, c);
    }
    c->resolve_in_call = 1;
    c->resolving = smtpout_route_resolve(out_dns(), c->domain, &ro, on_resolved, c);
    c->resolve_in_call = 0;
    if (c->have_error == -1) { /* failed before the call returned */
        struct smtpout_reply r = c->last_error;
        smtpout_sts_cancel(c->sts_req);
        conn_down(c, out_result_of(r.cls), &r);
        return;
    }
    walk_if_ready(c);
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

    if (table_find(o->id))
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
    struct oconn *c = table_find(id);

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
    struct oconn *c = table_find(id);

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
        smtpout_route_cancel(c->resolving);
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
