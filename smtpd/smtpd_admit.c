/*
 * smtpd_admit.c - who gets a session: connection limits, polite refusals, stress mode
 *
 * DESCRIPTION
 *   Every connection smtpd.c accepts comes here first. Its <source> policy
 *   is resolved on the current configuration, then the connection table
 *   every smtpd process shares (runtime/anvil.h, created by pmtad) admits
 *   and counts it, or refuses it with one line written straight to the
 *   socket (non-blocking, best effort) before it is closed: no session, no
 *   libuv handle, no timer.
 *     max-smtp-in-per-ip      421 4.7.0 Too many connections from your address
 *     max-connect-rate-per-ip 421 4.7.0 Too many connection attempts from your address
 *     total-max-smtp-in       421 4.7.0 Too many connections
 *     out of descriptors      421 4.3.2 (through worker_listen.c's reserve descriptor)
 *   A source without always-allow-relaying stops at total-max-smtp-in less
 *   a tenth (SMTPD_RESERVE_DIVISOR, at least one): that reserve is for
 *   relaying sources, the feeders and the operator's own clients.
 *   The limits hold across all smtpd processes. A pickup connection (the
 *   sendmail command) counts towards total-max-smtp-in only, and first
 *   learns who is calling (smtpd_submit.c): a user submit-users leaves out
 *   gets "554 5.7.1".
 *
 *   Stress mode (Postfix's): from SMTPD_STRESS_ON_PERCENT of
 *   total-max-smtp-in in use across all processes until below
 *   SMTPD_STRESS_OFF_PERCENT, command and data timeouts are at most
 *   SMTPD_STRESS_TIMEOUT_MS, for sessions already open too: a one-second
 *   check notices what another process decided and shortens this
 *   process's running timers. Each change is logged once.
 *
 *   Refusals are logged with the client's address, the first of each kind
 *   per second; the rest of that second become one "N more" line.
 *
 * Owns: the mapping of the connection table, the stress check timer.
 *
 * SECURITY: the first code a connection meets. Nothing is read from the
 * client here; the address comes from accept(2), the uid from the kernel.
 */
#include "config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "msg.h"
#include "worker.h"
#include "smtpd.h"

#define TICK_MS 1000

enum refusal { REFUSE_ADDR, REFUSE_RATE, REFUSE_TOTAL, REFUSE_SUBMIT, REFUSE_KINDS };

static const struct {
    const char *line; /* the SMTP reply, CRLF included */
    const char *why;  /* for the log */
} refusals[REFUSE_KINDS] = {
    [REFUSE_ADDR] = { "421 4.7.0 Too many connections from your address, try again later\r\n",
                      "too many connections from one address (max-smtp-in-per-ip)" },
    [REFUSE_RATE] = { "421 4.7.0 Too many connection attempts from your address, slow down\r\n",
                      "connection rate of one address (max-connect-rate-per-ip)" },
    [REFUSE_TOTAL] = { "421 4.7.0 Too many connections, try again later\r\n",
                       "too many connections (total-max-smtp-in)" },
    [REFUSE_SUBMIT] = { NULL, "local user not in submit-users" },
};

static const char overload_line[] =
    "421 4.3.2 Service busy (out of resources), try again later\r\n";

static struct {
    struct anvil *anvil;
    int private_fd; /* a table of our own when pmtad passed none */
    bool stressed;  /* this process's view of the shared flag */
    uv_timer_t tick;
    bool tick_ready;
    uint64_t untracked;              /* anvil_untracked() at the last check */
    uint64_t unlogged[REFUSE_KINDS]; /* refusals this second not yet logged */
    bool logged[REFUSE_KINDS];       /* this second's first one was logged */
} A = { .private_fd = -1 };

/* now_ms - CLOCK_MONOTONIC in ms, the clock every smtpd process shares */
static uint64_t
now_ms(void)
{
    return uv_hrtime() / 1000000;
}

static unsigned
total_limit(const struct cfg *c)
{
    const struct cfg_value *v = cfg_global(c, CFG_D_TOTAL_MAX_SMTP_IN);
    int64_t t = v ? v->num : 100;

    return t <= 0 ? 0 : (unsigned)t;
}

/* set_stress - the stress state after a change of TOTAL; logs a change we made */
static void
set_stress(unsigned total)
{
    unsigned limit = total_limit(worker_config());
    bool on;

    if (limit == 0)
        return;
    if (A.stressed)
        on = (uint64_t)total * 100 >= (uint64_t)limit * SMTPD_STRESS_OFF_PERCENT;
    else
        on = (uint64_t)total * 100 >= (uint64_t)limit * SMTPD_STRESS_ON_PERCENT;
    if (on == A.stressed)
        return;
    A.stressed = on;
    if (anvil_set_stress(A.anvil, on) != on)
        msg_warn("stress mode %s: %u of %u inbound connections in use; command and data "
                 "timeouts %s",
                 on ? "on" : "off", total, limit, on ? "at most 10 s" : "as configured again");
    if (on)
        smtpd_session_apply_timeouts();
}

/* log_refusal - the first of its kind this second in full, the rest counted */
static void
log_refusal(enum refusal why, const char *client)
{
    if (A.logged[why]) {
        A.unlogged[why]++;
        return;
    }
    A.logged[why] = true;
    msg_warn("connection from %s refused: %s", client, refusals[why].why);
}

/* on_tick - the "N more" lines, and stress mode as another process set it */
static void
on_tick(uv_timer_t *t)
{
    uint64_t untracked;
    bool shared;

    (void)t;
    for (int i = 0; i < REFUSE_KINDS; i++) {
        if (A.unlogged[i])
            msg_warn("%llu more connection(s) refused in the last second: %s",
                     (unsigned long long)A.unlogged[i], refusals[i].why);
        A.unlogged[i] = 0;
        A.logged[i] = false;
    }
    if ((untracked = anvil_untracked(A.anvil)) != A.untracked) {
        msg_warn("connection table full: %llu connection(s) admitted without a per-address "
                 "count; restart pmtad to size the table for total-max-smtp-in",
                 (unsigned long long)(untracked - A.untracked));
        A.untracked = untracked;
    }
    shared = anvil_stress(A.anvil);
    if (shared != A.stressed) {
        A.stressed = shared;
        if (shared)
            smtpd_session_apply_timeouts();
    }
}

/* refuse - write LINE (best effort, never blocks), close FD */
static void
refuse(int fd, const char *line)
{
    char sink[4096];
    ssize_t n = line ? write(fd, line, strlen(line)) : 0;

    (void)n;
    /* What the client already sent would turn close(2) into a reset that can
       destroy our line before it is read: take a little of it first. */
    shutdown(fd, SHUT_WR);
    for (int i = 0; i < 4 && recv(fd, sink, sizeof(sink), MSG_DONTWAIT) > 0; i++)
        continue;
    close(fd);
}

static const char *
address_text(const struct sockaddr *peer, char *out, size_t size)
{
    if (peer == NULL)
        snprintf(out, size, "pickup");
    else if (peer->sa_family == AF_INET6)
        uv_ip6_name((const struct sockaddr_in6 *)peer, out, size);
    else
        uv_ip4_name((const struct sockaddr_in *)peer, out, size);
    return out;
}

/* identify_submitter - pickup: who is calling; false when refused (FD closed) */
static bool
identify_submitter(const struct cfg *c, int fd, struct smtpd_client *cl)
{
    char line[256], who[96];
    int err = smtpd_submit_identify(c, fd, &cl->submitter);

    if (err == 0)
        return true;
    if (err == -EPERM) {
        smtpd_submit_describe(&cl->submitter, who, sizeof(who));
        snprintf(line, sizeof(line), "554 5.7.1 %s may not submit mail here (submit-users)\r\n",
                 who);
        log_refusal(REFUSE_SUBMIT, who);
    } else {
        msg_warn("pickup: cannot tell who is calling: %s", strerror(-err));
        snprintf(line, sizeof(line),
                 "451 4.3.0 Cannot identify the local user, try again later\r\n");
    }
    refuse(fd, line);
    return false;
}

/* limits - what the table checks a connection of CL against */
static void
limits(const struct cfg *c, const struct smtpd_client *cl, struct anvil_limits *lim)
{
    unsigned total = total_limit(c);

    memset(lim, 0, sizeof(*lim));
    lim->total = total;
    if (cl->origin->pickup)
        return;
    /* The last tenth is kept for relaying sources (feeders, the operator's own
       clients): strangers who fill the rest do not lock them out. */
    if (!cl->pol.always_allow_relaying && total > 1)
        lim->total = total - (total / SMTPD_RESERVE_DIVISOR ? total / SMTPD_RESERVE_DIVISOR : 1);
    lim->per_addr = cl->pol.max_smtp_in_per_ip;
    lim->rate_count = cl->pol.connect_rate_count;
    lim->rate_period_s = cl->pol.connect_rate_period_s;
}

/* smtpd_admit - see smtpd.h */
void
smtpd_admit(int fd, const struct sockaddr *peer, const struct smtpd_origin *origin)
{
    const struct cfg *c = worker_config();
    struct smtpd_client client = { .fd = fd, .origin = origin }, *cl = &client;
    struct anvil_limits lim;
    enum anvil_verdict v;
    unsigned total;
    char text[INET6_ADDRSTRLEN + 8];

    if (!origin->pickup && peer && (peer->sa_family == AF_INET || peer->sa_family == AF_INET6)) {
        memcpy(&cl->peer, peer,
               peer->sa_family == AF_INET ? sizeof(struct sockaddr_in)
                                          : sizeof(struct sockaddr_in6));
        cl->have_peer = true;
    }
    smtpd_policy_resolve(c, cl->have_peer ? (struct sockaddr *)&cl->peer : NULL,
                         origin->pickup ? "{pickup}" : origin->listener_source, &cl->pol);
    if (origin->pickup && !identify_submitter(c, fd, cl))
        return;
    limits(c, cl, &lim);
    v = anvil_connect(A.anvil, cl->have_peer ? (struct sockaddr *)&cl->peer : NULL, &lim, now_ms(),
                      &cl->ticket, &total);
    if (v != ANVIL_ADMIT) {
        enum refusal why = v == ANVIL_OVER_ADDR   ? REFUSE_ADDR
                           : v == ANVIL_OVER_RATE ? REFUSE_RATE
                                                  : REFUSE_TOTAL;

        address_text(cl->have_peer ? (struct sockaddr *)&cl->peer : NULL, text, sizeof(text));
        log_refusal(why, text);
        refuse(fd, refusals[why].line);
        set_stress(total);
        return;
    }
    set_stress(total);
    smtpd_session_start(cl); /* takes fd and ticket */
}

/* smtpd_admit_overload - see smtpd.h */
void
smtpd_admit_overload(int fd)
{
    ssize_t n = write(fd, overload_line, sizeof(overload_line) - 1);

    (void)n;
    shutdown(fd, SHUT_WR);
}

/* smtpd_admit_release - see smtpd.h */
void
smtpd_admit_release(struct anvil_ticket *ticket)
{
    if (A.anvil && ticket->counted)
        set_stress(anvil_disconnect(A.anvil, ticket));
}

/* smtpd_admit_timeout - see smtpd.h */
uint64_t
smtpd_admit_timeout(uint64_t ms)
{
    if (A.stressed && (ms == 0 || ms > SMTPD_STRESS_TIMEOUT_MS))
        return SMTPD_STRESS_TIMEOUT_MS;
    return ms;
}

/* attach - the table pmtad made, or one of our own (limits then hold per process) */
static void
attach(void)
{
    const char *fd_text = getenv("PMTA_ANVIL_FD"), *slot_text = getenv("PMTA_SLOT");
    int fd = fd_text ? atoi(fd_text) : -1, err = 0;
    unsigned slot = slot_text ? (unsigned)strtoul(slot_text, NULL, 10) : 0;

    if (fd >= 3 && (A.anvil = anvil_attach(fd, slot, &err)) != NULL)
        return;
    if (fd >= 3)
        msg_warn("cannot use the shared connection table: %s", strerror(-err));
    else
        msg_warn("pmtad passed no connection table");
    msg_warn("total-max-smtp-in and the per-address limits apply to this process alone");
    A.private_fd = anvil_create(1, anvil_capacity_for(total_limit(worker_config())));
    if (A.private_fd < 0 || (A.anvil = anvil_attach(A.private_fd, 0, &err)) == NULL)
        msg_fatal("cannot create a connection table: %s",
                  strerror(A.private_fd < 0 ? -A.private_fd : -err));
}

/* smtpd_admit_init - see smtpd.h */
void
smtpd_admit_init(uv_loop_t *loop)
{
    attach();
    A.stressed = anvil_stress(A.anvil);
    A.untracked = anvil_untracked(A.anvil);
    uv_timer_init(loop, &A.tick);
    uv_timer_start(&A.tick, on_tick, TICK_MS, TICK_MS);
    uv_unref((uv_handle_t *)&A.tick);
    A.tick_ready = true;
}

/* smtpd_admit_fini - see smtpd.h; the last session is gone */
void
smtpd_admit_fini(void)
{
    if (A.tick_ready)
        uv_close((uv_handle_t *)&A.tick, NULL);
    A.tick_ready = false;
    anvil_detach(A.anvil);
    A.anvil = NULL;
    if (A.private_fd >= 0)
        close(A.private_fd);
    A.private_fd = -1;
}
