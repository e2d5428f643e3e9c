/*
 * qmgr_reportproc.c - <bounce-processor> and <feedback-loop-processor>: the
 * reports that come back, read and recorded
 *
 * Mail for an address on a processor's <address-list> is received like any
 * other (smtpd -> cleanup -> the queue); cleanup puts that recipient in the
 * queue "{bounce}/VMTA" or "{feedbackLoop}/VMTA" (PowerMTA's names) instead
 * of its domain's. Such a queue never gets a connection: the dispatch pass
 * hands its ready recipients here. For each one:
 *
 *   1. the message is read from the queue (at most PARSE_MAX bytes of it)
 *      and parsed (qmgr_report_parse.c). It is "matched" when it is what
 *      the processor takes: a DSN for a bounce processor, an ARF report for
 *      a feedback-loop processor;
 *   2. matched: records are written and flushed to disk - for a DSN one per
 *      recipient block, rb when its Action is failed, rs otherwise; for a
 *      report one f - with the original recipient, and the job, virtual MTA
 *      and envelope id: from the Original-Envelope-Id when it is our
 *      tracking ENVID (runtime/envid.h, sent on mail whose client gave
 *      none), else from the returned original's X-Job, X-Virtual-MTA and
 *      X-EnvID (PowerMTA's headers: they come back when retain-x-job /
 *      add-x-virtual-mta-header keep them in outgoing mail) and the
 *      Original-Envelope-Id as it is. With add-to-suppression-list the
 *      recipient goes onto that list: for a DSN when it failed with the
 *      category bad-mailbox, inactive-mailbox or bad-domain, for a
 *      complaint always;
 *   3. what continues, as copies queued through the group committer: the
 *      message itself to its recipient's own queue when deliver-matched-email
 *      (matched) or deliver-unmatched-email (not matched, and always after a
 *      parse error, as PowerMTA does); to every forward-unmatched-to address
 *      when unmatched, every forward-errors-to address on a parse error;
 *   4. then the recipient is finished (durably) and forgotten.
 *
 * Crash safety: the records are flushed before the finish is queued, so a
 * crash can repeat a report's records (at least once) but never lose them,
 * and never lose the message before they are written.
 *
 * Owns: the processors of the current configuration (their address lists).
 *
 * SECURITY: the reports are remote input, parsed by qmgr_report_parse
 * (bounded); every value reaches the accounting file through its writer,
 * which sanitises, and the log through msg_printable().
 */
#include "config.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "envid.h"
#include "msg.h"
#include "qmgr.h"
#include "qmgr_acct.h"
#include "qmgr_report_parse.h"
#include "xalloc.h"

#define PER_PASS  64                 /* recipients processed per dispatch pass */
#define PARSE_MAX (8u * 1024 * 1024) /* bytes of a received message parsed */

struct processor {
    enum cfg_scope_kind kind; /* CFG_S_BOUNCE_PROCESSOR or CFG_S_FBL_PROCESSOR */
    uint32_t scope;
    struct cfg_addrlist *list; /* its own <address-list>; NULL: none (matches nothing) */
};

static struct processor *P;
static size_t NP;

void
qmgr_reportproc_close(void)
{
    for (size_t i = 0; i < NP; i++)
        cfg_addrlist_free(P[i].list);
    free(P);
    P = NULL;
    NP = 0;
}

/* own_list - the <address-list> nested in processor scope S, or CFG_NONE */
static uint32_t
own_list(uint32_t s)
{
    uint32_t it = 0, l;

    while ((l = cfg_next_scope(S.cfg, CFG_S_ADDRESS_LIST, &it)) != CFG_NONE)
        if (S.cfg->scopes[l].parent == s)
            return l;
    return CFG_NONE;
}

void
qmgr_reportproc_config(void)
{
    static const enum cfg_scope_kind kinds[] = { CFG_S_BOUNCE_PROCESSOR, CFG_S_FBL_PROCESSOR };

    qmgr_reportproc_close();
    for (size_t k = 0; k < 2; k++) {
        uint32_t it = 0, s, l;

        while ((s = cfg_next_scope(S.cfg, kinds[k], &it)) != CFG_NONE) {
            P = xreallocarray(P, NP + 1, sizeof *P);
            P[NP].kind = kinds[k];
            P[NP].scope = s;
            P[NP].list = (l = own_list(s)) != CFG_NONE ? cfg_addrlist_new(S.cfg, l) : NULL;
            NP++;
        }
    }
}

int
qmgr_reportproc_owns(const struct qqueue *q)
{
    return strcmp(q->domain, "{bounce}") == 0 || strcmp(q->domain, "{feedbackLoop}") == 0;
}

int
qmgr_reportproc_bounce_address(const char *addr)
{
    for (size_t i = 0; i < NP; i++)
        if (P[i].kind == CFG_S_BOUNCE_PROCESSOR && P[i].list && cfg_addrlist_match(P[i].list, addr))
            return 1;
    return 0;
}

/* processor_for - the processor of Q's kind whose list has ADDR (the first in the file) */
static const struct processor *
processor_for(const struct qqueue *q, const char *addr)
{
    enum cfg_scope_kind kind = strcmp(q->domain, "{bounce}") == 0 ? CFG_S_BOUNCE_PROCESSOR
                                                                  : CFG_S_FBL_PROCESSOR;

    for (size_t i = 0; i < NP; i++)
        if (P[i].kind == kind && P[i].list && cfg_addrlist_match(P[i].list, addr))
            return &P[i];
    return NULL;
}

static int64_t
proc_bool(const struct processor *p, enum cfg_directive d, int64_t dflt)
{
    const struct cfg_value *v = p ? cfg_scope_get(S.cfg, p->scope, d) : NULL;

    return v && !(v->flags & (CFG_VALUE_CLEAR | CFG_VALUE_UNSET)) ? v->num : dflt;
}

static const char *
proc_text(const struct processor *p, enum cfg_directive d)
{
    const struct cfg_value *v = p ? cfg_scope_get(S.cfg, p->scope, d) : NULL;

    return v && !(v->flags & (CFG_VALUE_CLEAR | CFG_VALUE_UNSET)) && *cfg_str(S.cfg, v->text)
               ? cfg_str(S.cfg, v->text)
               : NULL;
}

/* --- what continues --------------------------------------------------------------------- */

/* pass_on - a copy of M (its whole content) to TO, from M's sender, through Q's virtual MTA */
static void
pass_on(const struct qstore_msg *m, const struct qqueue *q, const char *to, const char *why)
{
    struct buf body = BUF_INIT;
    char qid[QSTORE_QID_LEN + 1], shown[300];
    struct qmgr_newmail nm = { .sender = m->env.sender,
                               .to = to,
                               .vmta = q->vmta,
                               .source = strcmp(q->domain, "{bounce}") == 0
                                             ? "{bounce-processor}"
                                             : "{feedback-loop-processor}",
                               .eightbit = (m->env.flags & QSTORE_F_8BITMIME) != 0,
                               .notify = QSTORE_NOTIFY_NEVER };

    buf_append(&body, m->body, m->body_len);
    if (qmgr_queue_mail(&nm, &body) == 0)
        msg_info("report %s passed on to %s (%s)", qmgr_qid(qid, m->msgid),
                 msg_printable(shown, sizeof shown, to, strlen(to)), why);
    buf_free(&body);
}

/* forward_all - a copy to every D (forward-unmatched-to, forward-errors-to) of processor P */
static void
forward_all(const struct processor *p, enum cfg_directive d, const struct qstore_msg *m,
            const struct qqueue *q)
{
    const struct cfg_value *v;
    uint32_t it = 0;

    while (p && (v = cfg_scope_next(S.cfg, p->scope, d, &it)) != NULL)
        pass_on(m, q, cfg_str(S.cfg, v->text), cfg_directive_info(d)->name);
}

/* --- records ------------------------------------------------------------------------------ */

/* bare_addr - "<a@b>" -> "a@b" into OUT */
static const char *
bare_addr(char *out, size_t size, const char *v)
{
    size_t n = strlen(v);

    if (n >= 2 && v[0] == '<' && v[n - 1] == '>')
        snprintf(out, size, "%.*s", (int)(n - 2), v + 1);
    else
        snprintf(out, size, "%s", v);
    return out;
}

/*
 * report_fields - what every record of report R carries. The job and the
 * virtual MTA come from our tracking ENVID when the report returns one (TRK
 * holds it; its envId stays empty: the client gave none), else from the
 * returned original's X-Job and X-Virtual-MTA.
 */
static void
report_fields(struct qmgr_acct_record *a, const struct qmgr_report *rep, const struct qstore_msg *m,
              const struct qstore_rcpt *rr, char *srcmta, size_t size, struct envid_track *trk)
{
    int tracked = envid_track_parse(rep->envid, strlen(rep->envid), trk) == 0;

    snprintf(srcmta, size, "%s (%s)", m->env.client_helo, m->env.client_ip);
    a->orig = rr->address; /* PowerMTA: the address the report came to */
    a->src_type = "smtp";
    a->src_mta = srcmta;
    a->job_id = tracked && trk->job[0] ? trk->job : rep->x_job[0] ? rep->x_job : NULL;
    a->vmta = tracked ? trk->vmta : rep->x_virtual_mta[0] ? rep->x_virtual_mta : NULL;
    if (tracked)
        a->env_id = rep->x_envid[0] ? rep->x_envid : NULL;
    else
        a->env_id = rep->envid[0] ? rep->envid : rep->x_envid[0] ? rep->x_envid : NULL;
    a->headers = rep->orig_headers;
    a->headers_len = rep->orig_headers_len;
}

static int
is_suppressible(const char *cat)
{
    return strcmp(cat, "bad-mailbox") == 0 || strcmp(cat, "inactive-mailbox") == 0 ||
           strcmp(cat, "bad-domain") == 0;
}

/* record_dsn - one rb or rs per recipient block; suppression; the count written or -1 */
static int
record_dsn(const struct processor *p, const struct qmgr_report *rep, const struct qstore_msg *m,
           const struct qstore_rcpt *rr)
{
    const char *list = proc_text(p, CFG_D_ADD_TO_SUPPRESSION_LIST);
    char srcmta[600], status[64];
    struct envid_track trk;

    for (size_t i = 0; i < rep->nrcpts; i++) {
        const struct qmgr_report_rcpt *rc = &rep->rcpts[i];
        int failed = strcmp(rc->action, "failed") == 0;
        const char *cat = qmgr_outcome_category(rc->status, rc->diag);
        struct qmgr_acct_record a = { .type = failed ? QMGR_ACCT_RB : QMGR_ACCT_RS,
                                      .dlv_size = -1 };

        report_fields(&a, rep, m, rr, srcmta, sizeof srcmta, &trk);
        snprintf(status, sizeof status, "%s",
                 rc->status[0] ? rc->status
                 : failed      ? "5.0.0"
                               : "2.0.0");
        a.rcpt = rc->final_rcpt;
        a.orcpt = rc->orcpt[0] ? rc->orcpt : NULL;
        a.dsn_action = rc->action;
        a.dsn_status = status;
        a.dsn_diag = rc->diag[0] ? rc->diag : NULL;
        a.dsn_mta = rc->remote_mta[0] ? rc->remote_mta : NULL;
        a.dsn_reporting_mta = rep->reporting_mta[0] ? rep->reporting_mta : NULL;
        a.bounce_cat = cat;
        a.format = "dsn";
        if (qmgr_outcome_acct(&a) < 0)
            return -1;
        if (list && failed && is_suppressible(cat))
            (void)qmgr_suppress_add(list, rc->final_rcpt, "a remote bounce");
    }
    return (int)rep->nrcpts;
}

/* record_arf - one f record; suppression; 1 or -1 */
static int
record_arf(const struct processor *p, const struct qmgr_report *rep, const struct qstore_msg *m,
           const struct qstore_rcpt *rr)
{
    const char *list = proc_text(p, CFG_D_ADD_TO_SUPPRESSION_LIST);
    char srcmta[600], rcpt[QMGR_REPORT_FIELD_MAX + 1];
    struct qmgr_acct_record a = { .type = QMGR_ACCT_F, .dlv_size = -1 };
    struct envid_track trk;

    report_fields(&a, rep, m, rr, srcmta, sizeof srcmta, &trk);
    bare_addr(rcpt, sizeof rcpt, rep->orig_rcpt_to[0] ? rep->orig_rcpt_to : rep->orig_to);
    a.rcpt = rcpt[0] ? rcpt : NULL;
    a.src_type = NULL;
    a.format = "arf";
    a.rep_source_ip = m->env.client_ip;
    a.dlv_source_ip = rep->source_ip[0] ? rep->source_ip : NULL;
    a.feedback_type = rep->feedback_type;
    a.user_agent = rep->user_agent[0] ? rep->user_agent : NULL;
    a.reporting_mta = rep->arf_reporting_mta[0] ? rep->arf_reporting_mta : NULL;
    a.reported_domain = rep->reported_domain[0] ? rep->reported_domain : NULL;
    if (qmgr_outcome_acct(&a) < 0)
        return -1;
    if (list && strchr(rcpt, '@'))
        (void)qmgr_suppress_add(list, rcpt, "a feedback-loop complaint");
    return 1;
}

/* --- one recipient ----------------------------------------------------------------------- */

/*
 * process - recipient R of report queue Q: parse, record, pass on, finish.
 * 0, or -1 when the records could not be written (R is left to try again).
 */
static int
process(uint32_t r, struct qqueue *q)
{
    uint64_t msgid = S.msg[S.rcpt[r].msg].msgid;
    struct qstore_msg *m = NULL;
    const struct qstore_rcpt *rr;
    const struct processor *p;
    struct qmgr_report *rep;
    char qid[QSTORE_QID_LEN + 1], why[200], shown[300];
    int rc, matched, nrec = 0;

    if (qstore_read_msg(S.qs, msgid, QSTORE_READ_BODY, &m) < 0 ||
        (rr = qmgr_msg_find_rcpt(m, S.rcpt[r].index)) == NULL) {
        msg_warn("report %s/%u is no longer in the queue", qmgr_qid(qid, msgid), S.rcpt[r].index);
        if (m)
            qstore_msg_free(m);
        qmgr_rcpt_free(r);
        return 0;
    }
    p = processor_for(q, rr->address);
    rep = xcalloc(1, sizeof *rep);
    rc = qmgr_report_parse(m->body, m->body_len < PARSE_MAX ? m->body_len : PARSE_MAX, rep, why,
                           sizeof why);
    matched = rc == 0 && p &&
              ((p->kind == CFG_S_BOUNCE_PROCESSOR && rep->kind == QMGR_REPORT_DSN) ||
               (p->kind == CFG_S_FBL_PROCESSOR && rep->kind == QMGR_REPORT_ARF));
    if (matched) {
        nrec = rep->kind == QMGR_REPORT_DSN ? record_dsn(p, rep, m, rr) : record_arf(p, rep, m, rr);
        if (nrec < 0 || qmgr_outcome_acct_flush() < 0) {
            msg_warn("report %s: cannot write its records; trying again later",
                     qmgr_qid(qid, msgid));
            qmgr_report_free(rep);
            free(rep);
            qstore_msg_free(m);
            return -1;
        }
    }
    msg_printable(shown, sizeof shown, rr->address, strlen(rr->address));
    if (rc < 0) {
        msg_info("report %s/%u to=%s: not understood: %s", qmgr_qid(qid, msgid), S.rcpt[r].index,
                 shown, why);
        forward_all(p, CFG_D_FORWARD_ERRORS_TO, m, q);
        pass_on(m, q, rr->address, "a report that could not be parsed");
    } else if (matched) {
        msg_info("report %s/%u to=%s: %s, %d record(s)", qmgr_qid(qid, msgid), S.rcpt[r].index,
                 shown, rep->kind == QMGR_REPORT_DSN ? "dsn" : "arf", nrec);
        if (proc_bool(p, CFG_D_DELIVER_MATCHED_EMAIL, 0))
            pass_on(m, q, rr->address, "deliver-matched-email");
    } else {
        msg_info("report %s/%u to=%s: not a %s", qmgr_qid(qid, msgid), S.rcpt[r].index, shown,
                 strcmp(q->domain, "{bounce}") == 0 ? "DSN" : "feedback-loop report");
        forward_all(p, CFG_D_FORWARD_UNMATCHED_TO, m, q);
        if (proc_bool(p, CFG_D_DELIVER_UNMATCHED_EMAIL, 1))
            pass_on(m, q, rr->address, "deliver-unmatched-email");
    }
    qmgr_outcome_finish(r, "report");
    qmgr_rcpt_free(r);
    qmgr_report_free(rep);
    free(rep);
    qstore_msg_free(m);
    return 0;
}

void
qmgr_reportproc_run(struct qqueue *q)
{
    uint32_t r;

    for (int n = 0; n < PER_PASS && (r = qmgr_ready_pop(q)) != QNIL; n++) {
        if (process(r, q) < 0) {
            qmgr_defer_push(r, qmgr_tick_now() + 60000 / QMGR_TICK_MS);
            qmgr_defer_timer_update();
            break;
        }
    }
    qmgr_run_update(q);
    if (q->nready > 0)
        qmgr_dispatch_soon();
}
