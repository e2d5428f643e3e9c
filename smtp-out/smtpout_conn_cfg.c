/*
 * smtpout_conn_cfg.c - a connection's delivery settings: the queue's
 * destination resolved (cfg_resolve_queue on the configuration pinned for the
 * connection's life) into the session configuration, the local delivery
 * channel (pipe, file, http-delivery), the route and the source address
 *
 * Owns: nothing (it fills the struct oconn of smtpout_conn.c).
 *
 * SECURITY: the source address comes from qmgr and is parsed, never trusted
 * as text; the route is the configuration's (cfg_route_parse).
 */
#include "config.h"

#include <stdio.h>
#include <string.h>

#include "smtpout_conn_int.h"
#include "worker.h"

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

/* conn_configure - the queue's delivery settings; 0, or -1 with R saying why */
int
conn_configure(struct oconn *c, struct smtpout_reply *r)
{
    struct cfg_resolved set;
    const struct cfg_value *hosts;
    char err[200], why[300];

    if (cfg_resolve_queue(c->cfg, c->dest, c->vmta, &set) < 0) {
        conn_local_failure(r, SMTPOUT_TEMP, "4.3.5", "unknown virtual-mta in the configuration");
        return -1;
    }
    snprintf(c->log_tag, sizeof c->log_tag, "connection %u %s", c->id, c->queue);
    c->type = (int)setting_num(&set, CFG_D_TYPE, CFG_TYPE_SMTP);
    if (c->type == CFG_TYPE_DISCARD) { /* qmgr discards these itself: a reload raced us */
        conn_local_failure(r, SMTPOUT_TEMP, "4.3.5", "the queue's type is discard now");
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
    c->default_port = (uint16_t)setting_num(&set, CFG_D_DEFAULT_SMTP_PORT, 25);
    c->bounce_upon_no_mx = setting_bool_text(c->cfg, &set, CFG_D_BOUNCE_UPON_NO_MX);
    if (c->max_attempts == 0)
        c->max_attempts = 10;
    if ((hosts = setting(&set, CFG_D_SMTP_HOSTS)) != NULL &&
        cfg_route_parse(cfg_str(c->cfg, hosts->text), &c->route, err, sizeof err) < 0) {
        snprintf(why, sizeof why, "bad smtp-hosts for %s: %s", c->dest, err);
        conn_local_failure(r, SMTPOUT_TEMP, "4.3.5", why);
        return -1;
    }
    return 0;
}

/* conn_source - parse the source IP qmgr chose ("" = any); 0 or -1 */
int
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
    conn_local_failure(r, SMTPOUT_TEMP, "4.3.5", "bad source address from qmgr");
    return -1;
}
