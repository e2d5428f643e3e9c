/*
 * qmgr_records.c - the accounting records qmgr writes, field by field as
 *                  PowerMTA fills them (reference: powermta.md section 3)
 *
 * d, b, t  one per recipient attempt (qmgr_records_attempt): dsnStatus
 *          "5.1.1 (bad destination mailbox address)", dsnDiag
 *          "smtp;550 5.1.1 ..." (a made-up reason reads "smtp;451 4.4.1
 *          [internal] ..."), dsnMta "mx (ip)", dlvEsmtpAvailable and TLS from
 *          the connection's MP_CONN_UP, dlvType from the queue's `type`,
 *          vmtaPool when the message named a pool, timeFirstAttempt.
 * tq       one per failed connection (qmgr_records_queue_failure).
 * r        one per accepted recipient (qmgr_records_received), written when
 *          the message joins the schedule. Progress is the queue store's
 *          mark "received": every message id below it has had its r
 *          records. The mark is persisted (group committer) only after the
 *          records are flushed to the accounting outputs, so after a crash
 *          qmgr writes the r records of the messages above the mark again:
 *          at least once, never lost (a duplicate is possible for messages
 *          accepted in the second before a crash). Messages qmgr queues
 *          itself (DSNs, notices) get none: they were not received.
 *
 * Owns: the accounting writer (rebuilt on reload), its flush timer and the
 * received mark.
 * SECURITY: reply text, addresses, host names and headers are peer
 * controlled; the writer (qmgr_acct_format.c) sanitises every field.
 */
#include "config.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mailproto.h"
#include "msg.h"
#include "qmgr.h"
#include "qmgr_acct.h"
#include "qmgr_dsn.h"
#include "worker.h"
#include "xalloc.h"

#define RECEIVED_MARK "received"
#define HEADERS_MAX   (64u * 1024) /* bytes of a header section passed for header_X fields */

static struct qmgr_acct *acct_w;
static uv_timer_t acct_timer;
static int acct_timer_on;
static uint64_t received_written; /* r records written for every msgid below this */
static uint64_t received_marked;  /* ... and the store's mark says so */
static int mark_pending;

/* Text a record points into while it is written. */
struct record_text {
    char status[160], diag[QSTORE_ERR_MAX + 64], mta[600], src_mta[600];
    char tls_protocol[64];
    const char *tls_cipher;
};

/* --- fields --------------------------------------------------------------------------------- */

/* dsn_mta - "mx (ip)", "mx" or "(ip)" alone when only one is known, "" when neither */
static const char *
dsn_mta(char *out, size_t size, const char *mx, const char *ip)
{
    mx = mx ? mx : "";
    ip = ip ? ip : "";
    if (*mx && *ip)
        snprintf(out, size, "%s (%s)", mx, ip);
    else if (*mx || *ip)
        snprintf(out, size, *mx ? "%s" : "(%s)", *mx ? mx : ip);
    else
        out[0] = '\0';
    return out;
}

/* split_tls - MP_CONN_UP's "TLSv1.3 CIPHER" into protocol and cipher */
static void
split_tls(struct record_text *t, const char *tls)
{
    size_t n = tls ? strcspn(tls, " ") : 0;

    t->tls_protocol[0] = '\0';
    t->tls_cipher = NULL;
    if (n == 0)
        return;
    snprintf(t->tls_protocol, sizeof t->tls_protocol, "%.*s", (int)n, tls);
    t->tls_cipher = tls[n] ? tls + n + 1 : NULL;
}

/* vmta_pool - the pool the message named, when its queue's VMTA was chosen from one */
static const char *
vmta_pool(const struct qstore_msg *m)
{
    const char *named = m ? m->env.vmta : "";

    return *named && cfg_find_scope(S.cfg, CFG_S_POOL, named) != CFG_NONE ? named : NULL;
}

/*
 * read_headers - the header section of message MSGID when some output wants
 * header_X fields of TYPE (caller frees *BODY_OWNER); NULL otherwise
 */
static const char *
read_headers(uint64_t msgid, enum qmgr_acct_type type, struct qstore_msg **owner, size_t *len)
{
    const char *end;

    *owner = NULL;
    *len = 0;
    if (!qmgr_acct_wants_headers(acct_w, type) ||
        qstore_read_msg(S.qs, msgid, QSTORE_READ_BODY, owner) < 0 || !*owner)
        return NULL;
    end = (*owner)->body_len ? memmem((*owner)->body, (*owner)->body_len, "\n\r\n", 3) : NULL;
    if (!end)
        end = (*owner)->body_len ? memmem((*owner)->body, (*owner)->body_len, "\n\n", 2) : NULL;
    *len = end ? (size_t)(end - (*owner)->body) + 1 : (*owner)->body_len;
    if (*len > HEADERS_MAX)
        *len = HEADERS_MAX;
    return (*owner)->body;
}

/* fill_message - what every record of message M carries */
static void
fill_message(struct qmgr_acct_record *a, struct record_text *t, const struct qstore_msg *m)
{
    snprintf(t->src_mta, sizeof t->src_mta, "%s (%s)", m->env.client_helo, m->env.client_ip);
    a->orig = m->env.sender;
    a->src_type = "smtp";
    a->src_mta = t->src_mta;
    a->job_id = m->env.job_id;
    a->env_id = m->env.envid;
    a->rcv_smtp_user = m->env.auth_user;
    a->vmta_pool = vmta_pool(m);
}

/* --- d, b, t, tq ---------------------------------------------------------------------------- */

/* fill_attempt - the fields of a delivery attempt (d, b, t, tq) */
static void
fill_attempt(struct qmgr_acct_record *a, struct record_text *t, enum qmgr_acct_type type,
             struct qqueue *q, const struct qresult *res)
{
    const char *fallback = res->result == MP_RESULT_OK         ? "2.0.0"
                           : res->result == MP_RESULT_PERMFAIL ? "5.0.0"
                                                               : "4.0.0";
    char diag[QSTORE_ERR_MAX + 48];

    qmgr_dsn_status_field(t->status, sizeof t->status, res->enhanced, fallback);
    qmgr_dsn_diag_text(diag, sizeof diag, res->code,
                       res->enhanced && *res->enhanced ? res->enhanced : fallback, res->text);
    snprintf(t->diag, sizeof t->diag, "smtp;%s", diag);
    split_tls(t, res->tls);
    a->type = type;
    a->dsn_status = t->status;
    a->dsn_diag = t->diag;
    a->dsn_mta = dsn_mta(t->mta, sizeof t->mta, res->mx, res->dest_ip);
    a->dlv_type = qmgr_queue_type_name(q);
    a->dlv_source_ip = res->source_ip;
    a->dlv_destination_ip = res->dest_ip;
    a->dlv_esmtp_available = res->esmtp && *res->esmtp ? res->esmtp : NULL;
    a->dlv_tls_protocol = t->tls_protocol[0] ? t->tls_protocol : NULL;
    a->dlv_tls_cipher = t->tls_cipher;
    a->vmta = q->vmta;
    a->queue = q->name;
    a->dlv_size = -1;
}

void
qmgr_records_attempt(enum qmgr_acct_type type, const struct qstore_msg *m,
                     const struct qstore_rcpt *rr, struct qqueue *q, const struct qresult *res,
                     const char *action, const char *cat)
{
    struct qmgr_acct_record a = { 0 };
    struct record_text t;
    struct qstore_msg *hdr_owner = NULL;

    if (!acct_w || !qmgr_acct_takes(acct_w, type))
        return;
    fill_attempt(&a, &t, type, q, res);
    a.dsn_action = action;
    a.bounce_cat = type == QMGR_ACCT_D ? NULL : cat;
    if (m) {
        fill_message(&a, &t, m);
        a.time_queued = (time_t)m->env.queued_at;
        a.dlv_size = (int64_t)m->env.size;
        a.headers = read_headers(m->msgid, type, &hdr_owner, &a.headers_len);
    }
    if (rr) {
        a.rcpt = rr->address;
        a.orcpt = rr->orcpt;
        a.time_first_attempt = (time_t)(rr->first_attempt ? rr->first_attempt : qmgr_wall());
    }
    if (qmgr_acct_write(acct_w, &a) < 0)
        msg_warn("cannot write an accounting record");
    if (hdr_owner)
        qstore_msg_free(hdr_owner);
}

void
qmgr_records_queue_failure(struct qqueue *q, const struct qresult *res)
{
    struct qmgr_acct_record a = { 0 };
    struct record_text t;

    if (!acct_w || !qmgr_acct_takes(acct_w, QMGR_ACCT_TQ))
        return;
    fill_attempt(&a, &t, QMGR_ACCT_TQ, q, res);
    if (qmgr_acct_write(acct_w, &a) < 0)
        msg_warn("cannot write an accounting record");
}

/* --- r --------------------------------------------------------------------------------------- */

/* write_received - the r records of message MSGID (every recipient it still has) */
static void
write_received(uint64_t msgid)
{
    struct qstore_msg *m = NULL, *hdr_owner = NULL;
    struct qmgr_acct_record a = { .type = QMGR_ACCT_R, .dlv_size = -1 };
    struct record_text t;
    char queue_vmta[QSTORE_STR_MAX + 1], qid[QSTORE_QID_LEN + 1];
    int err = qstore_read_msg(S.qs, msgid, 0, &m);

    if (err < 0) {
        if (err != -ENOENT)
            msg_warn("cannot read message %s for its r records: %s", qmgr_qid(qid, msgid),
                     qstore_strerror(err));
        return;
    }
    if (strcmp(m->env.source, "{bounce}") == 0) /* our own DSNs and notices */
        goto out;
    fill_message(&a, &t, m);
    a.time_logged = (time_t)m->env.queued_at;
    a.rcv_source_ip = m->env.client_ip;
    a.rcv_destination_ip = m->env.local_ip;
    a.headers = read_headers(msgid, QMGR_ACCT_R, &hdr_owner, &a.headers_len);
    for (size_t i = 0; i < m->nrcpt; i++) {
        const char *slash = strchr(m->rcpt[i].queue, '/');
        snprintf(queue_vmta, sizeof queue_vmta, "%s", slash ? slash + 1 : "");
        a.rcpt = m->rcpt[i].address;
        a.orcpt = m->rcpt[i].orcpt;
        a.vmta = queue_vmta;
        if (qmgr_acct_write(acct_w, &a) < 0)
            msg_warn("cannot write an accounting record");
    }
out:
    if (hdr_owner)
        qstore_msg_free(hdr_owner);
    qstore_msg_free(m);
}

void
qmgr_records_received(uint64_t below)
{
    if (below <= received_written)
        return;
    if (acct_w && qmgr_acct_takes(acct_w, QMGR_ACCT_R))
        for (uint64_t id = received_written; id < below; id++)
            write_received(id);
    received_written = below;
}

void
qmgr_records_received_start(uint64_t next_msgid)
{
    uint64_t mark;
    int err = qstore_get_mark(S.qs, RECEIVED_MARK, &mark);

    /*
     * No mark yet: nothing has recorded receipts for this store, so every
     * message in it gets its r records (on a new spool cleanup may well have
     * committed mail before qmgr's first scan; skipping those would lose them).
     */
    if (err == -ENOENT)
        mark = 0;
    else if (err < 0) {
        msg_warn("cannot read the queue's received mark: %s", qstore_strerror(err));
        mark = next_msgid;
    }
    received_written = received_marked = mark > next_msgid ? next_msgid : mark;
    if (err == -ENOENT)
        received_marked = 0; /* persist it at the next tick */
    if (received_written < next_msgid)
        msg_info("writing the r records of %" PRIu64 " message(s) queued before a restart",
                 next_msgid - received_written);
    qmgr_records_received(next_msgid);
}

static void
on_mark_committed(void *arg, int status, uint64_t value)
{
    (void)arg;
    mark_pending = 0;
    if (status < 0) {
        msg_warn("cannot record the received mark: %s", qstore_strerror(status));
        return;
    }
    if (value > received_marked)
        received_marked = value;
}

/*
 * persist_mark - once the r records below RECEIVED_WRITTEN are flushed to
 * every output, the store may say so (never before: a crash in between must
 * write them again, not lose them)
 */
static void
persist_mark(void)
{
    uint64_t value = received_written;

    if (mark_pending || value <= received_marked || S.group == NULL || S.stopping)
        return;
    if (acct_w && qmgr_acct_flush(acct_w) < 0)
        return; /* a file is in trouble: keep the records due again after a crash */
    if (qstore_group_mark(S.group, RECEIVED_MARK, value, on_mark_committed, NULL) == 0)
        mark_pending = 1;
}

/* --- the writer --------------------------------------------------------------------------------
 */

static void
on_acct_tick(uv_timer_t *t)
{
    (void)t;
    if (acct_w)
        qmgr_acct_tick(acct_w);
    persist_mark();
}

/* qmgr_outcome_acct - see qmgr.h (the report processors' rb, rs and f records) */
int
qmgr_outcome_acct(const struct qmgr_acct_record *a)
{
    return acct_w ? qmgr_acct_write(acct_w, a) : 0;
}

int
qmgr_outcome_acct_flush(void)
{
    return acct_w ? qmgr_acct_flush(acct_w) : 0;
}

/* qmgr_outcome_rotate_acct - see qmgr.h (pmtactl rotate acct) */
int
qmgr_outcome_rotate_acct(void)
{
    return acct_w ? qmgr_acct_rotate(acct_w) : -ENOENT;
}

void
qmgr_records_config(void)
{
    struct qmgr_acct_opts opts = { .backlog_dir = worker_spool() };

    qmgr_webhook_stop(0); /* a batch in flight is sent again by the next sender */
    if (acct_w)
        qmgr_acct_close(acct_w);
    acct_w = NULL;
    if (qmgr_acct_open(&acct_w, S.cfg, &opts) < 0)
        acct_w = NULL;
    if (acct_w)
        qmgr_webhook_start(acct_w);
    if (!acct_timer_on) {
        uv_timer_init(worker_loop(), &acct_timer);
        uv_timer_start(&acct_timer, on_acct_tick, 1000, 1000);
        acct_timer_on = 1;
    }
}

void
qmgr_records_close(void)
{
    if (acct_timer_on)
        uv_close((uv_handle_t *)&acct_timer, NULL);
    acct_timer_on = 0;
    qmgr_webhook_stop(1);
    qmgr_acct_close(acct_w); /* flushes: the records below received_written are out */
    acct_w = NULL;
    if (!mark_pending && received_written > received_marked && S.group)
        (void)qstore_group_mark(S.group, RECEIVED_MARK, received_written, on_mark_committed, NULL);
}
