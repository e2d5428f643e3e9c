/*
 * smtpd_policy.c - the <source> settings that govern one inbound session
 *
 * The layering is conf's (cfg_resolve_session, the one cleanup uses for the
 * same session): defaults, matching CIDR blocks by prefix length, the
 * listener's source= ("{pickup}" for the local sendmail socket, which relays
 * unless its block says no), and after AUTH <source {auth}> and the
 * smtp-user's `source NAME`. This file turns the result into the session's
 * policy.
 *
 * Owns: nothing; every string points into the session's pinned cfg.
 *
 * SECURITY: decides who may relay. The relay decision itself is in
 * smtpd_session.c (authenticated, always-allow-relaying or relay-domain).
 */
#include "config.h"

#include <strings.h>
#include <string.h>
#include <unistd.h>

#include "msg.h"
#include "smtpd.h"

#define SECONDS_MS(v) ((v) < 0 ? UINT64_C(0) : (uint64_t)(v)*1000)

static bool
flag(const struct cfg_resolved *r, enum cfg_directive d, bool dflt)
{
    return r->v[d] ? r->v[d]->num != 0 : dflt;
}

static int64_t
number(const struct cfg_resolved *r, enum cfg_directive d, int64_t dflt)
{
    return r->v[d] ? r->v[d]->num : dflt;
}

/* auth_file - the seed's `auth_type = "auth_file"` + `auth_file = PATH`, source over global */
static const char *
auth_file(const struct cfg *c, const struct cfg_resolved *r)
{
    const struct cfg_value *type = r->v[CFG_D_AUTH_TYPE], *file = r->v[CFG_D_AUTH_FILE];

    if (type == NULL || (type->flags & CFG_VALUE_UNSET))
        type = cfg_global(c, CFG_D_AUTH_TYPE);
    if (file == NULL || (file->flags & CFG_VALUE_UNSET))
        file = cfg_global(c, CFG_D_AUTH_FILE);
    if (file == NULL || (file->flags & (CFG_VALUE_UNSET | CFG_VALUE_CLEAR)))
        return NULL;
    /* auth_type names the method; a file given without one is still meant. */
    if (type && !(type->flags & CFG_VALUE_UNSET) && *cfg_str(c, type->text) &&
        strcasecmp(cfg_str(c, type->text), "auth_file") != 0)
        return NULL;
    return *cfg_str(c, file->text) ? cfg_str(c, file->text) : NULL;
}

/* per_ip_default - max-smtp-in-per-ip when no block sets it: unlimited for a
   relaying source (feeders, as Postfix exempts mynetworks), else half of
   total-max-smtp-in (as Postfix's smtpd_client_connection_count_limit) */
static unsigned
per_ip_default(const struct cfg *c, bool relaying)
{
    const struct cfg_value *total = cfg_global(c, CFG_D_TOTAL_MAX_SMTP_IN);
    int64_t t = total ? total->num : 100;

    return relaying || t <= 0 ? 0 : (unsigned)((t + 1) / 2);
}

static unsigned
clamp_unsigned(int64_t v)
{
    return v <= 0 ? 0 : v > UINT32_MAX ? UINT32_MAX : (unsigned)v;
}

/* fill - turn resolved values into the session's policy */
static void
fill(const struct cfg *c, const struct cfg_resolved *r, struct smtpd_policy *pol)
{
    int64_t size = number(r, CFG_D_MAX_MESSAGE_SIZE, CFG_NEVER);
    int64_t rcpt = number(r, CFG_D_SOURCE_MAX_RCPT_PER_MESSAGE, 0);

    pol->smtp_service = flag(r, CFG_D_SMTP_SERVICE, true);
    pol->always_allow_relaying = flag(r, CFG_D_ALWAYS_ALLOW_RELAYING, false);
    pol->require_auth = flag(r, CFG_D_REQUIRE_AUTH, false);
    pol->allow_auth = flag(r, CFG_D_ALLOW_AUTH, true);
    pol->allow_plaintext_auth = flag(r, CFG_D_ALLOW_UNENCRYPTED_PLAIN_AUTH, false) &&
                                !flag(r, CFG_D_REQUIRE_STARTTLS_BEFORE_AUTH, false);
    pol->allow_starttls = flag(r, CFG_D_ALLOW_STARTTLS, false);
    pol->allow_chunking = flag(r, CFG_D_ALLOW_CHUNKING, true);
    pol->allow_smtputf8 = flag(r, CFG_D_ALLOW_SMTPUTF8, true);
    pol->log_connections = flag(r, CFG_D_LOG_CONNECTIONS, false);
    pol->log_commands = flag(r, CFG_D_LOG_COMMANDS, false);
    pol->max_message_size = size <= 0 ? 0 : (uint64_t)size;
    pol->max_rcpt = rcpt <= 0 ? 0 : (rcpt > UINT32_MAX ? UINT32_MAX : (unsigned)rcpt);
    pol->command_timeout_ms = SECONDS_MS(number(r, CFG_D_SMTP_COMMAND_TIMEOUT, 600));
    pol->data_timeout_ms = SECONDS_MS(number(r, CFG_D_SMTP_DATA_TIMEOUT, 600));
    pol->auth_file = auth_file(c, r);
    pol->max_smtp_in_per_ip = r->v[CFG_D_MAX_SMTP_IN_PER_IP]
                                  ? clamp_unsigned(r->v[CFG_D_MAX_SMTP_IN_PER_IP]->num)
                                  : per_ip_default(c, pol->always_allow_relaying);
    pol->connect_rate_count = 0;
    pol->connect_rate_period_s = 0;
    if (r->v[CFG_D_MAX_CONNECT_RATE_PER_IP] && r->v[CFG_D_MAX_CONNECT_RATE_PER_IP]->num > 0) {
        pol->connect_rate_count = clamp_unsigned(r->v[CFG_D_MAX_CONNECT_RATE_PER_IP]->num);
        pol->connect_rate_period_s = clamp_unsigned(r->v[CFG_D_MAX_CONNECT_RATE_PER_IP]->num2);
    }
}

/* resolve - cfg_resolve_session, the layering cleanup uses for the same session */
static void
resolve(const struct cfg *c, const struct sockaddr *addr, const char *listener, const char *user,
        struct smtpd_policy *pol)
{
    struct cfg_resolved r;

    if (cfg_resolve_session(c, addr, listener, user, &r) != 0)
        /* pmtad validated source= names; a reload may still race us. */
        msg_warn("unknown source '%s'; using the address's settings", listener);
    fill(c, &r, pol);
}

/* smtpd_policy_resolve - see smtpd.h */
void
smtpd_policy_resolve(const struct cfg *c, const struct sockaddr *addr, const char *name,
                     struct smtpd_policy *pol)
{
    resolve(c, addr, name, NULL, pol);
}

/* smtpd_policy_layer_auth - see smtpd.h */
void
smtpd_policy_layer_auth(const struct cfg *c, const struct sockaddr *addr,
                        const char *listener_source, const char *user, struct smtpd_policy *pol)
{
    resolve(c, addr, listener_source, user, pol);
}

/* smtpd_policy_host_name - see smtpd.h */
const char *
smtpd_policy_host_name(const struct cfg *c)
{
    static char sys[256];
    const struct cfg_value *v = cfg_global(c, CFG_D_HOST_NAME);

    if (v && !(v->flags & (CFG_VALUE_UNSET | CFG_VALUE_CLEAR)) && *cfg_str(c, v->text))
        return cfg_str(c, v->text);
    if (sys[0] == '\0' && gethostname(sys, sizeof(sys) - 1) != 0)
        strcpy(sys, "localhost");
    return sys;
}

/* smtpd_policy_relay_domain - see smtpd.h; case-insensitive exact match */
bool
smtpd_policy_relay_domain(const struct cfg *c, const char *domain)
{
    const struct cfg_value *v;
    uint32_t it = 0;

    while ((v = cfg_scope_next(c, 0, CFG_D_RELAY_DOMAIN, &it)) != NULL) {
        if (v->flags & (CFG_VALUE_UNSET | CFG_VALUE_CLEAR))
            continue;
        if (strcasecmp(cfg_str(c, v->text), domain) == 0)
            return true;
    }
    return false;
}
