/*
 * qmgr_ctl_ops.c - control commands that change counters, sources and files:
 *
 *     {"cmd":"reset-counters"}                 -> {"ok":true,"queues":N}
 *     {"cmd":"disable-source","ip":IP,"vmta":PATTERN,"reenable_after":S}
 *     {"cmd":"enable-source","ip":IP,"vmta":PATTERN}
 *                                              -> {"ok":true,"changed":N,"queues":N}
 *     {"cmd":"rotate-acct"}                    -> {"ok":true}
 * reset-counters zeroes what `show status` and the web monitor count since
 * start (delivered, bounced, deferred, the traffic per minute, the recent
 * errors); queued recipients are not counters and stay. disable-source stops
 * new connections from IP for every queue of the matching virtual MTAs
 * (default: all), for reenable_after seconds or until enable-source;
 * enable-source also lifts what disable-source-ip patterns did.
 *
 * Owns: nothing beyond one request.
 * SECURITY: reached through the root-only control socket; arguments are
 * type- and length-checked, IP must parse as an address.
 */
#include "config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fnmatch.h>
#include <string.h>

#include "msg.h"
#include "qmgr.h"
#include "qmgr_ctl.h"
#include "qmgr_traffic.h"

static json_t *
error_reply(const char *text)
{
    return json_pack("{s:b, s:s}", "ok", 0, "error", text);
}

static json_t *
cmd_reset_counters(void)
{
    for (uint32_t i = 0; i < S.nqueues; i++)
        S.queues[i]->delivered = S.queues[i]->bounced = S.queues[i]->deferred_n = 0;
    qmgr_traffic_reset();
    msg_info("pmtactl reset counters: %u queue(s)", S.nqueues);
    return json_pack("{s:b, s:I}", "ok", 1, "queues", (json_int_t)S.nqueues);
}

/* valid_ip - an IPv4 or IPv6 address in text form */
static int
valid_ip(const char *ip)
{
    unsigned char addr[16];

    return ip && strlen(ip) < 48 &&
           (inet_pton(AF_INET, ip, addr) == 1 || inet_pton(AF_INET6, ip, addr) == 1);
}

static json_t *
cmd_source(json_t *req, int enable)
{
    const char *ip = json_string_value(json_object_get(req, "ip"));
    json_t *vm = json_object_get(req, "vmta"), *after = json_object_get(req, "reenable_after");
    const char *vmta = json_string_value(vm);
    int64_t seconds = after ? json_integer_value(after) : -1;
    uint32_t changed, queues = 0;

    if (!valid_ip(ip) || (vm && (!vmta || !*vmta || strlen(vmta) >= 128)) ||
        (after && (!json_is_integer(after) || seconds <= 0 || enable)))
        return error_reply("disable-source/enable-source need \"ip\" (an address), optionally "
                           "\"vmta\" (a pattern) and, to disable, \"reenable_after\" (seconds)");
    changed = qmgr_source_operator(ip, vmta, seconds, enable);
    for (uint32_t i = 0; i < S.nqueues; i++) {
        struct qqueue *q = S.queues[i];

        if (fnmatch(vmta ? vmta : "*", q->vmta, FNM_CASEFOLD) != 0)
            continue;
        queues++;
        if (enable)
            qmgr_run_update(q);
        else if (seconds > 0)
            qmgr_queue_wake_at(q, qmgr_now_ms() + (uint64_t)seconds * 1000);
    }
    msg_info("pmtactl %s source %s%s%s: %u queue(s) now", enable ? "enable" : "disable", ip,
             vmta ? " for " : "", vmta ? vmta : "", queues);
    if (enable)
        qmgr_dispatch_soon();
    return json_pack("{s:b, s:I, s:I}", "ok", 1, "changed", (json_int_t)changed, "queues",
                     (json_int_t)queues);
}

static json_t *
cmd_rotate_acct(void)
{
    int err = qmgr_outcome_rotate_acct();

    if (err == -ENOENT)
        return error_reply("no <acct-file> is configured");
    if (err < 0)
        return error_reply(strerror(-err));
    msg_info("pmtactl rotate acct: accounting files rotated");
    return json_pack("{s:b}", "ok", 1);
}

/* qmgr_ctl_ops_dispatch - see qmgr_ctl.h */
json_t *
qmgr_ctl_ops_dispatch(const char *cmd, json_t *req)
{
    if (strcmp(cmd, "reset-counters") == 0)
        return cmd_reset_counters();
    if (strcmp(cmd, "disable-source") == 0 || strcmp(cmd, "enable-source") == 0)
        return cmd_source(req, cmd[0] == 'e');
    if (strcmp(cmd, "rotate-acct") == 0)
        return cmd_rotate_acct();
    return NULL;
}
