/*
 * qmgr_outcome.c - what happens to a recipient after an attempt
 *
 * delivered  -> qstore_group_finish, accounting d
 * bounced    -> DSN to the envelope sender (qmgr_dsn), submitted through the
 *               group committer BEFORE the recipient's finish, so a crash can
 *               never lose both; accounting b with a bounce category
 * deferred   -> next attempt from retry-after by attempt count (the last
 *               entry repeats) with +-10 % jitter, at least
 *               retry-recipients-after, never later than the recipient's
 *               expiry; qstore_group_defer; accounting t
 * expired    -> bounce with 5.4.7 "message expired" and the last error
 *               (category message-expired)
 * suppressed -> bounce with 5.7.1 and the category "suppressed" (qmgr_suppress.c)
 * bcc-upon-delivery: a delivery queues a copy to the queue's address
 * Queue-level failures (the connection never came up) put the queue in retry
 * mode and write a tq record. Every reply first meets the queue's
 * smtp-pattern-list (qmgr_backoff.c): mode changes, defer-queue, bounce-rcpt,
 * skip-mx.
 *
 * Every attempt logs one line:
 *   delivered|deferred|bounced QID/INDEX to=RCPT queue=Q mx=MX ip=DEST
 *       src=SOURCE status=ENHANCED reply=TEXT
 *
 * Owns: the bounce classifier (rebuilt on reload). Records: qmgr_records.c.
 * SECURITY: reply text, addresses and host names are peer-controlled; they
 * reach the log only through msg_printable() and the DSN / accounting file
 * only through their writers, which sanitise every field.
 */
#include "config.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mailproto.h"
#include "msg.h"
#include "qmgr.h"
#include "qmgr_traffic.h"
#include "qmgr_acct.h"
#include "qmgr_backoff.h"
#include "qmgr_bouncecat.h"
#include "qmgr_dsn.h"
#include "worker.h"
#include "xalloc.h"

/* the status of an expiry: permanent (the DSN says "failed"), RFC 3463 X.4.7 */
#define EXPIRED_STATUS "5.4.7"

static struct qmgr_bouncecat *bouncecat;

/* log_attempt - the one main-log line of an attempt */
static void
log_attempt(const char *what, uint32_t r, const struct qstore_rcpt *rr, struct qqueue *q,
            const struct qresult *res)
{
    char qid[QSTORE_QID_LEN + 1], to[256], mx[256], reply[600];
    const char *addr = rr ? rr->address : "?";

    msg_info("%s %s/%u to=%s queue=%s mx=%s ip=%s src=%s status=%s reply=%s", what,
             qmgr_qid(qid, S.msg[S.rcpt[r].msg].msgid), S.rcpt[r].index,
             msg_printable(to, sizeof(to), addr, strlen(addr)), q->name,
             res->mx && *res->mx ? msg_printable(mx, sizeof(mx), res->mx, strlen(res->mx)) : "-",
             res->dest_ip && *res->dest_ip ? res->dest_ip : "-",
             res->source_ip && *res->source_ip ? res->source_ip : "-",
             res->enhanced && *res->enhanced ? res->enhanced : "-",
             msg_printable(reply, sizeof(reply), res->text ? res->text : "",
                           res->text ? strlen(res->text) : 0));
}

/* --- configuration ------------------------------------------------------------------------- */

const char *
qmgr_outcome_category(const char *status, const char *text)
{
    return qmgr_bouncecat_classify_reply(bouncecat, status, text);
}

/* qmgr_outcome_config - (re)open accounting and bounce patterns for the current config */
void
qmgr_outcome_config(void)
{
    qmgr_records_config();
    if (bouncecat)
        qmgr_bouncecat_free(bouncecat);
    bouncecat = qmgr_bouncecat_new(S.cfg);
    qmgr_backoff_config();
    qmgr_suppress_config();
    qmgr_reportproc_config();
}

void
qmgr_outcome_close(void)
{
    qmgr_records_close();
    if (bouncecat)
        qmgr_bouncecat_free(bouncecat);
    bouncecat = NULL;
    qmgr_backoff_close();
    qmgr_suppress_close();
    qmgr_reportproc_close();
}

/* category - the bounce category of RES (expiry is always message-expired) */
static const char *
category(const struct qresult *res)
{
    if (res->enhanced && strcmp(res->enhanced, EXPIRED_STATUS) == 0)
        return "message-expired";
    return qmgr_bouncecat_classify_result(bouncecat, res->code, res->enhanced, res->text);
}

/* --- durable records ------------------------------------------------------------------------ */

static void
on_committed(void *arg, int status, uint64_t msgid)
{
    const char *what = arg;
    char qid[QSTORE_QID_LEN + 1];

    if (status < 0 && status != -ENOENT)
        msg_error("cannot record the %s of a recipient of message %s: %s", what,
                  qmgr_qid(qid, msgid), qstore_strerror(status));
}

static void
finish(uint32_t r, const char *what)
{
    int err = qstore_group_finish(S.group, S.msg[S.rcpt[r].msg].msgid, S.rcpt[r].index,
                                  on_committed, (void *)what);
    if (err < 0)
        msg_error("cannot queue the %s record: %s", what, qstore_strerror(err));
}

void
qmgr_outcome_finish(uint32_t r, const char *what)
{
    finish(r, what);
}

/* --- bounces ---------------------------------------------------------------------------------- */

/*
 * send_report - build and queue the DSN of ACTION (failed or delayed) for RR
 * of message M (M read without body). A delay notice returns the header
 * section only, unless the sender asked for RET=FULL.
 */
static void
send_report(const struct qstore_msg *m, const struct qstore_rcpt *rr, const struct qresult *res,
            enum qmgr_dsn_action action, time_t retry_until)
{
    struct qstore_msg *full = NULL;
    struct qmgr_dsn_rcpt dr = { 0 };
    struct qmgr_dsn_input in = { 0 };
    const char *rp = *m->env.bounce_sender ? m->env.bounce_sender : m->env.sender;
    char qid[QSTORE_QID_LEN + 1], diag[QSTORE_ERR_MAX + 48];
    struct buf out = BUF_INIT;
    int rc;

    if (!qmgr_dsn_should_send(m->env.sender, rr->notify, action, action == QMGR_DSN_DELAYED))
        return;
    if (qmgr_reportproc_bounce_address(rp)) {
        /* it would come back to our own bounce processor: the b record already says it all */
        char shown[300];
        msg_debug("no %s report to %s: a <bounce-processor> address", qmgr_dsn_action_name(action),
                  msg_printable(shown, sizeof shown, rp, strlen(rp)));
        return;
    }
    if (qstore_read_msg(S.qs, m->msgid, QSTORE_READ_BODY, &full) < 0)
        full = NULL;
    qmgr_dsn_diag_text(diag, sizeof diag, res->code,
                       res->enhanced && *res->enhanced ? res->enhanced
                       : action == QMGR_DSN_FAILED     ? "5.0.0"
                                                       : "4.0.0",
                       res->text);
    dr.final_rcpt = rr->address;
    dr.orcpt = rr->orcpt;
    dr.action = action;
    dr.status = res->enhanced && *res->enhanced ? res->enhanced : NULL;
    dr.remote_mta = res->mx && *res->mx ? res->mx : NULL;
    dr.diag = diag;
    dr.last_attempt = (time_t)qmgr_wall();
    dr.will_retry_until = retry_until;
    in.reporting_mta = qmgr_host_name();
    in.sender = rp;
    in.envid = m->env.envid;
    in.ret = action == QMGR_DSN_DELAYED && m->env.ret != QMGR_DSN_RET_FULL ? QMGR_DSN_RET_HDRS
                                                                           : m->env.ret;
    in.arrival = (time_t)m->env.queued_at;
    in.queue_id = qmgr_qid(qid, m->msgid);
    in.message = full ? full->body : "";
    in.message_len = full ? full->body_len : 0;
    in.rcpts = &dr;
    in.nrcpts = 1;
    if ((rc = qmgr_dsn_build(&in, &out)) < 0)
        msg_warn("cannot build the %s report for %s: %s", qmgr_dsn_action_name(action), qid,
                 strerror(-rc));
    else
        qmgr_queue_local_mail(rp, &out, rc & QMGR_DSN_8BIT);
    buf_free(&out);
    if (full)
        qstore_msg_free(full);
}

/* send_dsn - the failure DSN for RR */
static void
send_dsn(const struct qstore_msg *m, const struct qstore_rcpt *rr, struct qqueue *q,
         const struct qresult *res)
{
    (void)q;
    send_report(m, rr, res, QMGR_DSN_FAILED, 0);
}

/* bounce_as - final failure of R: DSN first, then the finish, then the records; CAT: the
   bounce category (NULL: classified from the reply) */
static void
bounce_as(uint32_t r, const struct qstore_msg *m, struct qqueue *q, const struct qresult *res,
          const char *cat)
{
    const struct qstore_rcpt *rr = qmgr_msg_find_rcpt(m, S.rcpt[r].index);

    if (cat == NULL)
        cat = category(res);

    log_attempt("bounced", r, rr, q, res);
    if (rr && !res->no_dsn)
        send_dsn(m, rr, q, res);
    finish(r, "bounce");
    qmgr_records_attempt(QMGR_ACCT_B, m, rr, q, res, "failed", cat);
    q->bounced++;
    qmgr_traffic_count(QT_BOUNCED, qmgr_wall(), 1);
    qmgr_traffic_error(qmgr_wall(), "bounced", q->name, res->text);
    qmgr_rcpt_free(r);
}

static void
bounce(uint32_t r, const struct qstore_msg *m, struct qqueue *q, const struct qresult *res)
{
    bounce_as(r, m, q, res, NULL);
}

/* qmgr_outcome_suppressed - see qmgr.h: PowerMTA's wording for a suppressed recipient */
void
qmgr_outcome_suppressed(uint32_t r, const struct qstore_msg *m, struct qqueue *q, const char *list)
{
    const struct qstore_rcpt *rr = qmgr_msg_find_rcpt(m, S.rcpt[r].index);
    char text[600];
    struct qresult res = {
        .result = MP_RESULT_PERMFAIL, .code = 550, .enhanced = "5.7.1", .text = text
    };

    snprintf(text, sizeof text, "550 5.7.1 recipient is in suppression list \"%s\": <%s>", list,
             rr ? rr->address : "");
    bounce_as(r, m, q, &res, "suppressed");
}

/* expire - R is older than bounce-after: 5.4.7 (failed) with the last error as the reason */
static void
expire(uint32_t r, const struct qstore_msg *m, struct qqueue *q, const struct qresult *last)
{
    const struct qstore_rcpt *rr = qmgr_msg_find_rcpt(m, S.rcpt[r].index);
    char text[QSTORE_ERR_MAX + 32];
    const char *reason = last && last->text && *last->text ? last->text
                         : rr && *rr->last_error           ? rr->last_error
                                                           : "no delivery attempt succeeded";
    struct qresult res = { .result = MP_RESULT_PERMFAIL, .enhanced = EXPIRED_STATUS, .text = text };

    /* our own verdict (code 0), the last error quoted as its reason */
    snprintf(text, sizeof(text), "message expired, not delivered within bounce-after: %s", reason);
    if (last) {
        res.mx = last->mx;
        res.dest_ip = last->dest_ip;
        res.source_ip = last->source_ip;
    }
    bounce(r, m, q, &res);
}

void
qmgr_outcome_delete(uint32_t r, struct qqueue *q, int dsn)
{
    static const struct qresult deleted = { .result = MP_RESULT_PERMFAIL,
                                            .enhanced = "5.0.0",
                                            .text = "deleted by the operator (pmtactl delete)" };
    struct qstore_msg *m = qmgr_read_envelope(r);
    const struct qstore_rcpt *rr = qmgr_msg_find_rcpt(m, S.rcpt[r].index);

    log_attempt("deleted", r, rr, q, &deleted);
    if (dsn && rr)
        send_dsn(m, rr, q, &deleted);
    finish(r, "deletion");
    qmgr_records_attempt(QMGR_ACCT_B, m, rr, q, &deleted, "failed", "other");
    q->bounced++;
    qmgr_traffic_count(QT_BOUNCED, qmgr_wall(), 1);
    qmgr_rcpt_free(r);
    if (m)
        qstore_msg_free(m);
}

void
qmgr_outcome_expire(uint32_t r, struct qqueue *q)
{
    struct qstore_msg *m = qmgr_read_envelope(r);

    expire(r, m, q, NULL);
    if (m)
        qstore_msg_free(m);
}

/* --- deferral ----------------------------------------------------------------------------------
 */

/*
 * backoff_delay_ms - the wait of R, deferred while Q is in backoff: the Nth
 * entry of backoff-retry-after for its Nth deferral in this backoff episode
 * (the last entry repeats), never retry-after or retry-recipients-after. R is
 * marked, so that the queue's return to normal makes it due at once.
 */
static uint64_t
backoff_delay_ms(uint32_t r, struct qqueue *q)
{
    struct qrcpt *rc = &S.rcpt[r];
    uint32_t tries = (rc->flags & QRF_BACKOFF_TRIES) / QRF_BACKOFF_TRY_ONE;

    if (tries < 15)
        tries++;
    rc->flags = (uint8_t)((rc->flags & ~QRF_BACKOFF_TRIES) | tries * QRF_BACKOFF_TRY_ONE |
                          QRF_BACKOFF_DEFERRED);
    /* in backoff, retry-after is read as its twin backoff-retry-after */
    return qmgr_jitter(qmgr_queue_retry_delay_ms(q, tries), S.msg[rc->msg].msgid * 31 + tries);
}


/* next_delay_ms - how long R waits after its ATTEMPTS-th failure */
static uint64_t
next_delay_ms(uint32_t r, struct qqueue *q, uint32_t attempts)
{
    uint64_t d;
    int64_t min_s;

    if (q->mode == QMODE_BACKOFF)
        return backoff_delay_ms(r, q);
    d = qmgr_jitter(qmgr_queue_retry_delay_ms(q, attempts),
                    S.msg[S.rcpt[r].msg].msgid * 31 + attempts);
    min_s = qmgr_queue_num(q, CFG_D_RETRY_RECIPIENTS_AFTER, 600);

    if (min_s > 0 && d < (uint64_t)min_s * 1000)
        d = (uint64_t)min_s * 1000;
    return d;
}

/*
 * maybe_delay_notice - notify-of-delay-every: at the first deferral after
 * each full interval in the queue, one "delayed" DSN (as NOTIFY allows; a
 * recipient without NOTIFY gets them). The count sent is kept with the
 * recipient (D), so a restart sends none twice.
 */
static void
maybe_delay_notice(uint32_t r, const struct qstore_msg *m, const struct qstore_rcpt *rr,
                   struct qqueue *q, const struct qresult *res, struct qstore_defer *d)
{
    int64_t every = qmgr_queue_num(q, CFG_D_NOTIFY_OF_DELAY_EVERY, 4 * 3600);
    int64_t after = qmgr_queue_num(q, CFG_D_BOUNCE_AFTER, 4 * 86400 + 12 * 3600);
    uint64_t queued = S.msg[S.rcpt[r].msg].queued_at, now = qmgr_wall();
    uint64_t due = every > 0 && now > queued ? (now - queued) / (uint64_t)every : 0;
    char qid[QSTORE_QID_LEN + 1];

    if (m == NULL || rr == NULL || due == 0 || due <= rr->delay_notices)
        return;
    d->set_delay_notices = 1;
    d->delay_notices = (uint8_t)(due > 255 ? 255 : due);
    send_report(m, rr, res, QMGR_DSN_DELAYED, after >= 0 ? (time_t)(queued + (uint64_t)after) : 0);
    msg_info("delay notice %u for %s/%u (queued %" PRIu64 " s ago)", (unsigned)d->delay_notices,
             qmgr_qid(qid, m->msgid), S.rcpt[r].index, now - queued);
}

static void
defer(uint32_t r, const struct qstore_msg *m, struct qqueue *q, const struct qresult *res)
{
    const struct qstore_rcpt *rr = qmgr_msg_find_rcpt(m, S.rcpt[r].index);
    uint32_t attempts = S.rcpt[r].attempts < 65535 ? S.rcpt[r].attempts + 1u : 65535u;
    uint64_t now_ms = qmgr_now_ms(), delay = next_delay_ms(r, q, attempts);
    int64_t after = qmgr_queue_num(q, CFG_D_BOUNCE_AFTER, 4 * 86400 + 12 * 3600);
    uint64_t due_ms = now_ms + delay, expiry_ms;
    struct qstore_defer d = { 0 };
    int err;

    /* A recipient whose connection failed waits with its queue: it is due when the
       queue may connect again, and at once if retry mode ends early. */
    if (res->conn_level && q->retry_until_ms > now_ms) {
        due_ms = q->retry_until_ms;
        S.rcpt[r].flags |= QRF_QUEUE_DEFERRED;
    }
    /* Never sleep past the expiry: bounce-after holds in every state. */
    if (after >= 0) {
        uint64_t exp_wall = (uint64_t)S.msg[S.rcpt[r].msg].queued_at + (uint64_t)after;
        uint64_t wall = qmgr_wall();
        expiry_ms = now_ms + (exp_wall > wall ? (exp_wall - wall) * 1000 : 0);
        if (due_ms > expiry_ms)
            due_ms = expiry_ms;
    }
    S.rcpt[r].attempts = (uint16_t)attempts;
    maybe_delay_notice(r, m, rr, q, res, &d);
    d.attempts = attempts;
    d.next_attempt = qmgr_wall() + (due_ms - now_ms + 999) / 1000;
    d.first_attempt = attempts == 1 ? qmgr_wall() : 0;
    d.last_error = res->text;
    if ((err = qstore_group_defer(S.group, S.msg[S.rcpt[r].msg].msgid, S.rcpt[r].index, &d,
                                  on_committed, (void *)"deferral")) < 0)
        msg_error("cannot queue a deferral: %s", qstore_strerror(err));
    log_attempt("deferred", r, rr, q, res);
    qmgr_records_attempt(QMGR_ACCT_T, m, rr, q, res, "delayed", category(res));
    q->deferred_n++;
    qmgr_traffic_count(QT_DEFERRED, qmgr_wall(), 1);
    qmgr_traffic_error(qmgr_wall(), "deferred", q->name, res->text);
    qmgr_queue_set_error(q, res->text);
    qmgr_defer_push(r, qmgr_tick_now() +
                           (uint32_t)((due_ms - now_ms + QMGR_TICK_MS - 1) / QMGR_TICK_MS));
    qmgr_defer_timer_update();
}

/* --- retry mode ----------------------------------------------------------------------------------
 */

/*
 * enter_retry_mode - no new connection for Q before its retry-after delay (a
 * failure); after a DNS failure (status 4.4.3: no answer, SERVFAIL, a
 * timeout) the wait is retry-after-dns-error instead
 */
static void
enter_retry_mode(struct qqueue *q, const char *why, const char *status, const char *text)
{
    char shown[600];
    uint64_t delay;
    int64_t dns_s;

    q->fail_count++;
    if (status && strcmp(status, "4.4.3") == 0 &&
        (dns_s = qmgr_queue_num(q, CFG_D_RETRY_AFTER_DNS_ERROR, 60)) >= 0)
        delay = qmgr_jitter((uint64_t)(dns_s > 0 ? dns_s : 1) * 1000,
                            q->id * 7919u + q->fail_count);
    else
        delay = qmgr_jitter(qmgr_queue_retry_delay_ms(q, q->fail_count),
                            q->id * 7919u + q->fail_count);
    q->retry_until_ms = qmgr_now_ms() + delay;
    msg_info("queue %s in retry mode for %.1f s after %u %s: %s", q->name, (double)delay / 1000,
             q->fail_count, why, msg_printable(shown, sizeof(shown), text, strlen(text)));
}

/*
 * apply_reply_actions - what Q's smtp-pattern-list makes of RES (the mode
 * switch is done by qmgr_reply_actions): the result as it is to be
 * recorded, RES itself or a changed copy in *CHANGED.
 */
static const struct qresult *
apply_reply_actions(struct qqueue *q, const struct qresult *res, struct qresult *changed,
                    unsigned *actions)
{
    unsigned act = *actions = qmgr_reply_actions(q, res);

    if ((act & CFG_REPLY_DEFER_QUEUE) && !(q->feed_held && qmgr_now_ms() < q->retry_until_ms)) {
        enter_retry_mode(q, "defer-queue reply(s)", NULL, res->text ? res->text : "");
        q->feed_held = 1;
    }
    *changed = *res;
    if (act & CFG_REPLY_BOUNCE_QUEUE)
        changed->result = MP_RESULT_PERMFAIL;
    else if ((act & CFG_REPLY_BOUNCE_RCPT) && res->result == MP_RESULT_TEMPFAIL)
        changed->result = MP_RESULT_PERMFAIL;
    else if ((act & CFG_REPLY_SKIP_MX) && res->result == MP_RESULT_PERMFAIL)
        changed->result = MP_RESULT_TEMPFAIL;
    else
        return res;
    return changed;
}

/* bounce_one - R bounces with RES outside any connection */
static void
bounce_one(uint32_t r, struct qqueue *q, const struct qresult *res)
{
    struct qstore_msg *m = qmgr_read_envelope(r);

    bounce(r, m, q, res);
    if (m)
        qstore_msg_free(m);
}

/* bounce_queue - bounce-queue: every ready and deferred recipient of Q bounces with RES */
static void
bounce_queue(struct qqueue *q, const struct qresult *res)
{
    char text[QSTORE_ERR_MAX + 64];
    struct qresult why = *res;
    uint32_t *deferred, n = qmgr_defer_take_queue(q, &deferred), total = n;

    snprintf(text, sizeof text, "%s (the whole queue bounced: bounce-queue)",
             res->text ? res->text : "");
    why.text = text;
    why.result = MP_RESULT_PERMFAIL;
    for (uint32_t i = 0; i < n; i++)
        bounce_one(deferred[i], q, &why);
    free(deferred);
    for (uint32_t r; (r = qmgr_ready_pop(q)) != QNIL; total++)
        bounce_one(r, q, &why);
    qmgr_run_update(q);
    qmgr_defer_timer_update();
    msg_info("queue %s: bounce-queue: %u more recipient(s) bounced", q->name, total);
}

/* --- bcc-upon-delivery ------------------------------------------------------------------------ */

#define BCC_RECENT 4096 /* (message, queue) pairs remembered: one copy for all their recipients */

static struct {
    uint64_t msgid;
    uint32_t queue;
} bcc_recent[BCC_RECENT];
static unsigned bcc_next;

/*
 * bcc_upon_delivery - R was delivered and its queue says bcc-upon-delivery
 * ADDR: a copy of the message goes to ADDR (from the null sender, NOTIFY
 * NEVER, through the same virtual MTA), once per message and queue however
 * many transactions it took; never a copy of a copy
 */
static void
bcc_upon_delivery(uint32_t r, const struct qstore_msg *m, struct qqueue *q)
{
    const struct cfg_value *v = qmgr_queue_setting(q, CFG_D_BCC_UPON_DELIVERY);
    uint64_t msgid = S.msg[S.rcpt[r].msg].msgid;
    struct qstore_msg *full = NULL;
    struct buf body = BUF_INIT;
    char qid[QSTORE_QID_LEN + 1], shown[300];
    const char *to;

    if (v == NULL || (v->flags & (CFG_VALUE_CLEAR | CFG_VALUE_UNSET)) ||
        !*(to = cfg_str(S.cfg, v->text)))
        return;
    if (m && m->env.source && strcmp(m->env.source, "{bcc}") == 0)
        return;
    for (unsigned i = 0; i < BCC_RECENT; i++)
        if (bcc_recent[i].msgid == msgid && bcc_recent[i].queue == q->id)
            return;
    bcc_recent[bcc_next].msgid = msgid;
    bcc_recent[bcc_next].queue = q->id;
    bcc_next = (bcc_next + 1) % BCC_RECENT;
    if (qstore_read_msg(S.qs, msgid, QSTORE_READ_BODY, &full) < 0) {
        msg_warn("bcc-upon-delivery: message %s is gone; no copy", qmgr_qid(qid, msgid));
        return;
    }
    buf_append(&body, full->body, full->body_len);
    struct qmgr_newmail nm = { .to = to,
                               .vmta = q->vmta,
                               .source = "{bcc}",
                               .envid = *full->env.envid ? full->env.envid : NULL,
                               .job_id = *full->env.job_id ? full->env.job_id : NULL,
                               .eightbit = (full->env.flags & QSTORE_F_8BITMIME) != 0,
                               .notify = QSTORE_NOTIFY_NEVER };
    if (qmgr_queue_mail(&nm, &body) == 0)
        msg_info("bcc-upon-delivery: a copy of %s to %s", qmgr_qid(qid, msgid),
                 msg_printable(shown, sizeof shown, to, strlen(to)));
    buf_free(&body);
    qstore_msg_free(full);
}

/* --- the entry points ------------------------------------------------------------------------- */

void
qmgr_outcome(uint32_t r, const struct qstore_msg *m, struct qqueue *q, const struct qresult *res)
{
    const struct qstore_rcpt *rr;
    struct qresult changed;
    unsigned actions;

    res = apply_reply_actions(q, res, &changed, &actions);
    if (actions & CFG_REPLY_BOUNCE_QUEUE)
        bounce_queue(q, res);
    switch (res->result) {
    case MP_RESULT_OK:
        rr = qmgr_msg_find_rcpt(m, S.rcpt[r].index);
        log_attempt("delivered", r, rr, q, res);
        finish(r, "delivery");
        /* passed to another MTA (smtp, http-delivery), or delivered here (pipe, file, discard) */
        qmgr_records_attempt(QMGR_ACCT_D, m, rr, q, res,
                             qmgr_queue_type(q) == CFG_TYPE_SMTP ||
                                     qmgr_queue_type(q) == CFG_TYPE_HTTP
                                 ? "relayed"
                                 : "delivered",
                             NULL);
        bcc_upon_delivery(r, m, q);
        q->delivered++;
        qmgr_traffic_count(QT_DELIVERED, qmgr_wall(), 1);
        qmgr_adaptive_delivered(q);
        qmgr_queue_end_retry(q, 0); /* a success resets the retry schedule */
        qmgr_backoff_delivered(q);
        qmgr_rcpt_free(r);
        break;
    case MP_RESULT_PERMFAIL:
        bounce(r, m, q, res);
        break;
    default:
        if (qmgr_rcpt_expired(r, qmgr_wall()))
            expire(r, m, q, res);
        else
            defer(r, m, q, res);
    }
}

void
qmgr_outcome_queue_failure(struct qqueue *q, const struct qresult *res)
{
    q->conn_failures++;
    qmgr_queue_set_error(q, res->text);
    qmgr_traffic_error(qmgr_wall(), "connection", q->name, res->text);
    /* a 421 greeting may put the queue in backoff, a 554 one bounce it */
    if (qmgr_reply_actions(q, res) & CFG_REPLY_BOUNCE_QUEUE)
        bounce_queue(q, res);
    if (res->result != MP_RESULT_PERMFAIL)
        enter_retry_mode(q, "failed connection(s)", res->enhanced, res->text);
    qmgr_records_queue_failure(q, res);
}

/* --- type discard ------------------------------------------------------------------------------
 */

#define DISCARD_BATCH 1000 /* recipients finished per dispatch pass: the loop stays responsive */

void
qmgr_outcome_discard(struct qqueue *q)
{
    static const struct qresult discarded = { .result = MP_RESULT_OK,
                                              .enhanced = "2.0.0",
                                              .text = "discarded (type discard)" };
    static const struct qresult as_bounce = {
        .result = MP_RESULT_PERMFAIL,
        .enhanced = "5.0.0",
        .text = "discarded as a bounce (type discard, discard-as-bounce)",
        .no_dsn = 1,
    };
    const struct qresult *res = qmgr_queue_num(q, CFG_D_DISCARD_AS_BOUNCE, 0) ? &as_bounce
                                                                              : &discarded;
    uint32_t batch[256], n, done = 0;

    if (q->paused)
        return;
    while (done < DISCARD_BATCH && (n = qmgr_take_txn(q, 256, batch)) > 0) {
        struct qstore_msg *m = NULL;

        if (qstore_read_msg(S.qs, S.msg[S.rcpt[batch[0]].msg].msgid, 0, &m) < 0)
            m = NULL;
        for (uint32_t i = 0; i < n; i++) {
            q->ninflight--;
            qmgr_outcome(batch[i], m, q, res);
        }
        if (m)
            qstore_msg_free(m);
        done += n;
    }
    qmgr_run_update(q);
    if (q->nready > 0)
        qmgr_dispatch_soon();
}

void
qmgr_outcome_queue_refused(struct qqueue *q, const struct qresult *res)
{
    q->conn_failures++;
    qmgr_queue_set_error(q, res->text);
    qmgr_traffic_error(qmgr_wall(), "connection", q->name, res->text);
    qmgr_records_queue_failure(q, res);
}

/*
 * qmgr_outcome_complaint - is RES (a permanent failure) complaint-like: its
 * bounce category spam-related or policy-related? (warm-up plans count them)
 */
int
qmgr_outcome_complaint(const struct qresult *res)
{
    const char *cat = qmgr_bouncecat_classify_reply(bouncecat, res->enhanced, res->text);

    return cat && (strcmp(cat, "spam-related") == 0 || strcmp(cat, "policy-related") == 0);
}
