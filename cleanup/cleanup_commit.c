/*
 * cleanup_commit.c - an ended transaction becomes a queued message (or a refusal)
 *
 * For each transaction smtpd ended, in order:
 *   1. cleanup_message_parse() + cleanup_message_apply() with the options of
 *      the client's <source> (Received with a queue-id placeholder,
 *      Message-ID, Date, X-Virtual-MTA / X-Job / X-EnvID);
 *   2. the virtual MTA (cleanup_route.c); unknown -> 550 5.7.1;
 *   3. each recipient's queue "domain/vmta" (domain lower-cased), or for an
 *      address of a <bounce-processor> / <feedback-loop-processor> list
 *      "{bounce}/vmta" / "{feedbackLoop}/vmta", where qmgr reads the report;
 *   4. DKIM: the queue settings of each distinct recipient domain are
 *      resolved (cfg_resolve_queue with the chosen virtual MTA); if any says
 *      dkim-sign yes, the message is signed with the settings of the first
 *      such domain (in recipient order): for each of its dkim-algorithm
 *      entries, its dkim-selector + dkim-key-file (the seed's spelling, used
 *      as a "*" key), then the virtual MTA's domain-key lines, then the
 *      global ones, first key of that type matching the signing identity
 *      (dkim-identity, else Sender, else From). Every recipient gets that one
 *      signed copy; no key matching -> unsigned. The signatures are made on
 *      the libuv thread pool (at most `signing.slots` messages at once, so
 *      a thread is always left for the group committer), and the message
 *      carries on from step 5 on the loop thread when they are done;
 *   5. render, envelope and recipient records, and submission to the group
 *      committer with a patch point for the queue id in Received;
 *   6. a message that does not fit in the queue's room (cleanup_space.c)
 *      is refused 452 4.3.1 before it is submitted; on the commit callback:
 *      250 2.0.0 "Ok: queued as QID" only when the commit is durable;
 *      -ENOSPC -> 452 4.3.1; anything else -> 451 4.3.0.
 *      Then the log line and a MP_QUEUE_NEW hint to qmgr.
 *
 * Owns: struct work (a transaction being turned into a message, also while
 * its signatures are made), the signing queue, struct pending (a submitted
 * transaction waiting for its commit).
 *
 * SECURITY: the message and the envelope are peer input. The parser bounds
 * the header section; names chosen by headers are only lookup keys; the
 * sender is logged through msg_printable(); key material is never logged.
 */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cleanup.h"
#include "mailproto.h"
#include "msg.h"
#include "worker.h"
#include "xalloc.h"

_Static_assert(sizeof(CLEANUP_QID_PLACEHOLDER) - 1 == QSTORE_QID_LEN,
               "the Received placeholder must be as long as a queue id");

struct reply {
    unsigned code;
    const char *enhanced, *text;
};

/* What a message needs between its submission and its commit callback. */
struct pending {
    struct cleanup_txn *t;
    char *vmta;
    size_t size;
    int dkim_signed;
};

/* Working state while one transaction is turned into a new message. */
struct work {
    struct work *next_waiting; /* on the signing queue */
    uv_work_t req;             /* signing on the thread pool */
    struct cleanup_dkim_job *job;
    struct cleanup_txn *t;
    struct cleanup_message *msg;
    struct cleanup_route route;
    char **domains, **queues; /* per recipient */
    int dkim_signed;
    size_t size;    /* bytes of the rendered message */
    struct buf out; /* the rendered message */
    struct qstore_newmsg *nm;
};

/* Messages waiting for, and being, signed. */
static struct {
    struct work *head, *tail; /* waiting for a slot, in arrival order */
    unsigned running, slots;
    void (*quiet_cb)(void); /* cleanup_commit_quiesce() */
} signing;

static const struct reply R_TEMP = { 451, "4.3.0", "Internal error; try again later" };
static const struct reply R_FULL = { 452, "4.3.1", "Insufficient system storage" };

/* --- source options -------------------------------------------------------------- */

static int
opt_bool(const struct cleanup_txn *t, enum cfg_directive d)
{
    return t->src.v[d] != NULL && t->src.v[d]->num != 0;
}

/* source_opts - what the client's <source> asks of the header work */
static void
source_opts(const struct cleanup_txn *t, struct cleanup_opts *o)
{
    const struct cfg_value *jh = t->src.v[CFG_D_JOBID_HEADER];
    const struct cfg_value *date = t->src.v[CFG_D_ADD_DATE_HEADER];

    cleanup_opts_default(o);
    o->add_received = opt_bool(t, CFG_D_ADD_RECEIVED_HEADER);
    o->hide_source = opt_bool(t, CFG_D_HIDE_MESSAGE_SOURCE);
    o->add_message_id = opt_bool(t, CFG_D_ADD_MESSAGE_ID_HEADER);
    o->add_date = date == NULL     ? CLEANUP_DATE_NO
                  : date->num == 2 ? CLEANUP_DATE_OVERRIDE
                  : date->num == 1 ? CLEANUP_DATE_YES
                                   : CLEANUP_DATE_NO;
    o->process_x_virtual_mta = opt_bool(t, CFG_D_PROCESS_X_VIRTUAL_MTA);
    o->retain_x_virtual_mta = opt_bool(t, CFG_D_RETAIN_X_VIRTUAL_MTA);
    o->process_x_job = opt_bool(t, CFG_D_PROCESS_X_JOB);
    o->retain_x_job = opt_bool(t, CFG_D_RETAIN_X_JOB);
    o->jobid_header = jh && !(jh->flags & CFG_VALUE_UNSET) ? cfg_str(t->conf->cfg, jh->text) : NULL;
    o->process_x_envid = opt_bool(t, CFG_D_PROCESS_X_ENVID);
}

/* client_info - the Received header's view of the client; TLS text goes to TLSBUF */
static void
client_info(const struct cleanup_txn *t, struct cleanup_client *c, char *tlsbuf, size_t tlslen)
{
    int tls = *t->tls_protocol != '\0', auth = *t->auth_user != '\0';

    memset(c, 0, sizeof(*c));
    c->helo = *t->helo ? t->helo : NULL;
    c->addr = *t->client_ip ? t->client_ip : NULL;
    c->auth_user = auth ? t->auth_user : NULL;
    c->host_name = t->conf->host_name;
    if (strcmp(t->source_name, "{pickup}") == 0)
        c->protocol = "local";
    else
        c->protocol = tls && auth ? "ESMTPSA" : tls ? "ESMTPS" : auth ? "ESMTPA" : "ESMTP";
    if (tls) {
        snprintf(tlsbuf, tlslen, "%s with cipher %s", t->tls_protocol,
                 *t->tls_cipher ? t->tls_cipher : "unknown");
        c->tls = tlsbuf;
    }
    if (t->nrcpt == 1)
        c->rcpt = t->rcpts[0].address;
    c->local_submitter = t->submit_uid != MP_NO_UID;
    c->submit_uid = t->submit_uid;
    c->submit_user = t->submit_user;
}

/* --- steps ------------------------------------------------------------------------- */

/* step_headers - parse and apply; the raw data is released */
static int
step_headers(struct work *w, struct reply *r)
{
    struct cleanup_txn *t = w->t;
    struct cleanup_opts o;
    struct cleanup_client c;
    char err[CLEANUP_ERRLEN], clean[CLEANUP_ERRLEN], tls[512];

    int rc;

    if ((rc = cleanup_message_parse(t->data.data ? t->data.data : "", t->data.len, NULL, &w->msg,
                                    err, sizeof(err))) < 0) {
        msg_info("transaction %u refused: %s", t->id,
                 msg_printable(clean, sizeof(clean), err, strlen(err)));
        *r = (struct reply){ 554, "5.6.0",
                             rc == -EILSEQ ? "NUL character in the message header"
                                           : "Message header section too large" };
        return -1;
    }
    buf_free(&t->data);
    source_opts(t, &o);
    client_info(t, &c, tls, sizeof(tls));
    cleanup_message_apply(w->msg, &o, &c, time(NULL));
    return 0;
}

static int
step_route(struct work *w, struct reply *r)
{
    char name[256];

    if (cleanup_route_choose(w->t, w->msg, &w->route) == 0)
        return 0;
    msg_printable(name, sizeof(name), w->route.selected, strlen(w->route.selected));
    msg_info("transaction %u refused: unknown virtual MTA '%s'", w->t->id, name);
    *r = (struct reply){ 550, "5.7.1", "unknown virtual MTA" };
    return -1;
}

/* step_queues - each recipient's lower-cased domain and "domain/vmta" queue; a processor's
   address goes to its queue, "{bounce}/vmta" or "{feedbackLoop}/vmta" */
static int
step_queues(struct work *w, struct reply *r)
{
    struct cleanup_txn *t = w->t;
    const char *proc;

    w->domains = xcalloc(t->nrcpt, sizeof(*w->domains));
    w->queues = xcalloc(t->nrcpt, sizeof(*w->queues));
    for (size_t i = 0; i < t->nrcpt; i++) {
        const char *at = strrchr(t->rcpts[i].address, '@');

        if (at == NULL || at[1] == '\0') {
            *r = (struct reply){ 553, "5.1.3", "Recipient address lacks a domain" };
            return -1;
        }
        w->domains[i] = xstrdup(at + 1);
        for (char *p = w->domains[i]; *p; p++)
            *p = (char)tolower((unsigned char)*p);
        proc = cleanup_conf_processor_queue(t->conf, t->rcpts[i].address);
        w->queues[i] = xasprintf("%s/%s", proc ? proc : w->domains[i], w->route.vmta);
    }
    return 0;
}

/* dkim_domain - resolved settings of the first recipient domain that signs; 0 none */
static int
dkim_domain(struct work *w, struct cfg_resolved *res)
{
    const char *last = NULL;

    for (size_t i = 0; i < w->t->nrcpt; i++) {
        if (last && strcmp(last, w->domains[i]) == 0)
            continue;
        last = w->domains[i];
        if (cfg_resolve_queue(w->t->conf->cfg, last, w->route.vmta, res) == 0 &&
            res->v[CFG_D_DKIM_SIGN] && res->v[CFG_D_DKIM_SIGN]->num == 1)
            return 1;
    }
    return 0;
}

static const char *
res_str(const struct cfg *c, const struct cfg_resolved *res, enum cfg_directive d)
{
    const struct cfg_value *v = res->v[d];

    return v && !(v->flags & CFG_VALUE_UNSET) ? cfg_str(c, v->text) : NULL;
}

/* dkim_opts - signing options from the domain's resolved settings */
static void
dkim_opts(const struct cfg *c, const struct cfg_resolved *res, struct cleanup_dkim_opts *o)
{
    const char *id = res_str(c, res, CFG_D_DKIM_IDENTITY);

    memset(o, 0, sizeof(*o));
    o->headers = res_str(c, res, CFG_D_DKIM_HEADERS);
    o->header_canon = res->v[CFG_D_DKIM_HEADERS_CANON] && res->v[CFG_D_DKIM_HEADERS_CANON]->num
                          ? CLEANUP_DKIM_SIMPLE
                          : CLEANUP_DKIM_RELAXED;
    o->body_canon = res->v[CFG_D_DKIM_BODY_CANON] && res->v[CFG_D_DKIM_BODY_CANON]->num
                        ? CLEANUP_DKIM_SIMPLE
                        : CLEANUP_DKIM_RELAXED;
    const char *algs = res_str(c, res, CFG_D_DKIM_ALGORITHM);
    char why[200];
    int n;

    if (id && strcasecmp(id, "sender-or-from") != 0)
        o->identity = id;
    /* validated at load; a bad value cannot get here, and would mean the default */
    n = algs ? cfg_dkim_algorithms(algs, o->algs, why, sizeof why) : 0;
    o->nalgs = n > 0 ? (size_t)n : 0;
}

/* dkim_lists - seed key, virtual MTA keys, global keys; -1 when the seed key is bad */
static int
dkim_lists(struct work *w, const struct cfg_resolved *res,
           const struct cleanup_dkim_keylist **lists, size_t *n)
{
    struct cleanup_conf *cc = w->t->conf;
    const char *sel = res_str(cc->cfg, res, CFG_D_DKIM_SELECTOR);
    const char *file = res_str(cc->cfg, res, CFG_D_DKIM_KEY_FILE);
    const struct cleanup_dkim_keylist *k;

    *n = 0;
    if (sel && file) {
        if ((k = cleanup_conf_seed_keys(cc, sel, file)) == NULL)
            return -1;
        lists[(*n)++] = k;
    }
    if ((k = cleanup_conf_vmta_keys(cc, w->route.vmta)) != NULL)
        lists[(*n)++] = k;
    lists[(*n)++] = cc->global_keys;
    return 0;
}

/* own_domain - is DOM a local user's own: host-name or the system's name (as smtpd says)? */
static int
own_domain(const struct cfg *c, const char *dom)
{
    const struct cfg_value *v = cfg_global(c, CFG_D_HOST_NAME);
    char sys[256];

    if (v && !(v->flags & CFG_VALUE_UNSET) && strcasecmp(dom, cfg_str(c, v->text)) == 0)
        return 1;
    if (gethostname(sys, sizeof sys - 1) != 0)
        return 0;
    sys[sizeof sys - 1] = '\0';
    return strcasecmp(dom, sys) == 0;
}

/*
 * untrusted_identity - mail of a local user not in trusted-submit-users is
 * signed only as their own: the domain the signature would claim, the From
 * and any Sender must all be the user's own domain (host-name or the
 * system's name, where smtpd put their envelope sender). Otherwise any
 * local account could have mail signed for the operator's brand. Returns
 * the reason not to sign, or NULL.
 */
static const char *
untrusted_identity(const struct work *w, const struct cleanup_dkim_opts *o)
{
    const struct cfg *c = w->t->conf->cfg;
    const char *fields[] = { "From", "Sender" };
    char dom[256];

    if (!(w->t->mail_flags & MP_MAIL_LOCAL_UNTRUSTED))
        return NULL;
    if (cleanup_dkim_identity_domain(w->msg, o, dom, sizeof dom) < 0 || !own_domain(c, dom))
        return "the signing identity is not the local user's own domain";
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) {
        const struct cleanup_header *h = cleanup_message_find(w->msg, fields[i]);

        if (h && (cleanup_address_domain(h->value, dom, sizeof dom) < 0 || !own_domain(c, dom)))
            return i == 0 ? "From is not the local user's own domain"
                          : "Sender is not the local user's own domain";
    }
    return NULL;
}

/* step_dkim - the signatures W's message gets: 0 none (go on), 1 a job in W->job, -1 and R */
static int
step_dkim(struct work *w, struct reply *r)
{
    const struct cleanup_dkim_keylist *lists[3];
    struct cfg_resolved res;
    struct cleanup_dkim_opts o;
    const char *why;
    size_t n;

    if (!dkim_domain(w, &res))
        return 0;
    dkim_opts(w->t->conf->cfg, &res, &o);
    if ((why = untrusted_identity(w, &o)) != NULL) {
        msg_info("transaction %u: not DKIM-signed: %s (%s is not in trusted-submit-users)",
                 w->t->id, why, *w->t->submit_user ? w->t->submit_user : "a local user");
        return 0;
    }
    if (dkim_lists(w, &res, lists, &n) < 0) {
        msg_error("transaction %u: the DKIM key of its domain cannot be loaded", w->t->id);
        *r = R_TEMP;
        return -1;
    }
    return cleanup_dkim_prepare(cleanup.dk, w->msg, lists, n, &o, &w->job);
}

/* --- the new message ------------------------------------------------------------------ */

static uint8_t
env_flags(const struct cleanup_txn *t, const struct cleanup_message *msg)
{
    uint8_t f = 0;

    /* 8-bit content needs 8BITMIME downstream, whatever the client declared */
    if ((t->mail_flags & (MP_MAIL_8BITMIME | MP_MAIL_BINARYMIME)) || msg->body_8bit ||
        msg->head_8bit)
        f |= QSTORE_F_8BITMIME;
    if (t->mail_flags & MP_MAIL_SMTPUTF8)
        f |= QSTORE_F_SMTPUTF8;
    /* PowerMTA adds the field only when the message has none (a kept X-Virtual-MTA wins) */
    if (opt_bool(t, CFG_D_ADD_X_VIRTUAL_MTA_HEADER) && !cleanup_message_find(msg, "X-Virtual-MTA"))
        f |= QSTORE_F_ADD_VMTA_HEADER;
    return f;
}

/* fill_envelope - the envelope record's fields (strings borrowed from T, MSG, W) */
static void
fill_envelope(struct work *w, struct qstore_envelope *e)
{
    struct cleanup_txn *t = w->t;
    const struct cfg *c = t->conf->cfg;
    uint32_t sb = cleanup_sender_block(c, t->sender);
    const struct cfg_value *bs = sb == CFG_NONE ? NULL
                                                : cfg_scope_get(c, sb, CFG_D_SENDER_BOUNCE_SENDER);

    memset(e, 0, sizeof(*e));
    e->flags = env_flags(t, w->msg);
    e->ret = (t->mail_flags & MP_MAIL_RET_FULL)   ? QSTORE_RET_FULL
             : (t->mail_flags & MP_MAIL_RET_HDRS) ? QSTORE_RET_HDRS
                                                  : QSTORE_RET_NONE;
    e->sender = t->sender;
    e->envid = w->msg->envid ? w->msg->envid : t->envid;
    e->job_id = w->msg->job_id ? w->msg->job_id : "";
    e->vmta = strcmp(w->route.selected, "{default}") == 0 ? "" : w->route.selected;
    e->source = t->source_name;
    e->client_ip = t->client_ip;
    e->client_helo = t->helo;
    e->auth_user = t->auth_user;
    e->bounce_sender = bs ? cfg_str(c, bs->text) : "";
    e->local_ip = t->local_ip;
}

/* step_newmsg - render and encode; the message text moves into W->nm */
static int
step_newmsg(struct work *w, struct reply *r)
{
    struct cleanup_txn *t = w->t;
    struct qstore_envelope e;
    struct qstore_rcpt *rc = xcalloc(t->nrcpt, sizeof(*rc));
    size_t qid_off;
    int err;

    buf_init(&w->out, 0);
    if (cleanup_message_render(w->msg, &w->out) < 0) {
        free(rc);
        *r = R_TEMP;
        return -1;
    }
    qid_off = w->msg->qid_offset;
    w->size = w->out.len;
    fill_envelope(w, &e);
    for (size_t i = 0; i < t->nrcpt; i++) {
        rc[i].state = QSTORE_RCPT_QUEUED;
        rc[i].notify = (uint8_t)(t->rcpts[i].notify & QSTORE_NOTIFY_ALL);
        rc[i].queue = w->queues[i];
        rc[i].address = t->rcpts[i].address;
        rc[i].orcpt = t->rcpts[i].orcpt;
        rc[i].domain = w->domains[i];
    }
    err = qstore_newmsg_create(&w->nm, &e, rc, t->nrcpt, &w->out);
    free(rc);
    if (err == 0 && qid_off != SIZE_MAX)
        err = qstore_newmsg_patch_qid(w->nm, qid_off);
    if (err < 0) {
        msg_warn("transaction %u cannot be queued: %s", t->id, qstore_strerror(err));
        *r = err == -EMSGSIZE ? (struct reply){ 552, "5.3.4", "Envelope field too long" } : R_TEMP;
        return -1;
    }
    return 0;
}

static void
work_free(struct work *w)
{
    for (size_t i = 0; w->domains && i < w->t->nrcpt; i++) {
        free(w->domains[i]);
        free(w->queues[i]);
    }
    free(w->domains);
    free(w->queues);
    cleanup_route_free(&w->route);
    cleanup_message_free(w->msg);
    buf_free(&w->out);
    qstore_newmsg_free(w->nm);
    cleanup_dkim_job_free(w->job);
    free(w);
}

/* --- commit ------------------------------------------------------------------------------ */

static void
log_queued(const struct pending *p, const char *qid)
{
    char sender[256];

    msg_printable(sender, sizeof(sender), p->t->sender, strlen(p->t->sender));
    msg_info("queued %s from=<%s> nrcpt=%zu size=%zu vmta=%s dkim=%s", qid, sender, p->t->nrcpt,
             p->size, p->vmta, p->dkim_signed ? "signed" : "unsigned");
}

/* on_committed - the group committer's verdict on one message */
static void
on_committed(void *arg, int status, uint64_t msgid)
{
    struct pending *p = arg;
    char qid[QSTORE_QID_LEN + 1], text[64];

    if (status == 0) {
        qstore_qid_format(qid, msgid);
        snprintf(text, sizeof(text), "Ok: queued as %s", qid);
        cleanup_txn_result(p->t, 250, "2.0.0", text, msgid);
        log_queued(p, qid);
        cleanup_notify_new(msgid);
    } else {
        const struct reply *r = status == -ENOSPC ? &R_FULL : &R_TEMP;

        msg_warn("transaction %u not queued: %s", p->t->id, qstore_strerror(status));
        if (status == -ENOSPC)
            cleanup_space_full();
        cleanup_txn_result(p->t, r->code, r->enhanced, r->text, 0);
    }
    cleanup_txn_done(p->t);
    free(p->vmta);
    free(p);
}

/* submit - hand W's message to the group committer; -1 and R when that fails */
static int
submit(struct work *w, struct reply *r)
{
    struct pending *p;
    int err;

    if (cleanup_space_take(w->size) < 0) {
        *r = R_FULL; /* the rest is kept for qmgr to record deliveries */
        return -1;
    }
    p = xcalloc(1, sizeof(*p));
    p->t = w->t;
    p->vmta = xstrdup(w->route.vmta);
    p->size = w->size;
    p->dkim_signed = w->dkim_signed;
    if (cleanup.group == NULL ||
        (err = qstore_group_submit(cleanup.group, w->nm, on_committed, p)) < 0) {
        free(p->vmta);
        free(p);
        *r = (struct reply){ 451, "4.3.2", "System shutting down; try again later" };
        return -1;
    }
    w->nm = NULL; /* the group owns it now */
    return 0;
}

/* --- the steps in order ------------------------------------------------------------------ */

/* conclude - W is done with: answer R now if it failed (RC < 0), then free it */
static void
conclude(struct work *w, int rc, const struct reply *r)
{
    struct cleanup_txn *t = w->t;

    work_free(w);
    if (rc < 0) {
        cleanup_txn_result(t, r->code, r->enhanced, r->text, 0);
        cleanup_txn_done(t);
    }
}

/* after_signing - steps 5 and 6 */
static void
after_signing(struct work *w)
{
    struct reply r = R_TEMP;
    int rc = step_newmsg(w, &r);

    if (rc == 0)
        rc = submit(w, &r);
    conclude(w, rc, &r);
}

static void sign_next(void);

/* sign_work - thread pool: the message's signatures (it reads the message, nothing else) */
static void
sign_work(uv_work_t *req)
{
    struct work *w = req->data;

    cleanup_dkim_run(w->job, w->msg);
}

/* sign_done - loop thread: prepend the signatures and carry on */
static void
sign_done(uv_work_t *req, int status)
{
    struct work *w = req->data;
    char err[CLEANUP_ERRLEN];
    int rc;

    signing.running--;
    rc = status == 0 ? cleanup_dkim_finish(w->job, w->msg, err, sizeof err) : -EIO;
    if (status != 0)
        snprintf(err, sizeof err, "%s", uv_strerror(status));
    if (rc < 0) {
        msg_error("transaction %u: DKIM signing failed: %s", w->t->id, err);
        conclude(w, -1, &R_TEMP);
    } else {
        w->dkim_signed = rc > 0;
        after_signing(w);
    }
    sign_next();
}

/* sign_slots - messages signed at once: one per core, a pool thread kept for the committer */
static unsigned
sign_slots(void)
{
    const char *env = getenv("UV_THREADPOOL_SIZE");
    unsigned pool = env && atoi(env) > 0 ? (unsigned)atoi(env) : 4; /* libuv's default */
    unsigned cores = uv_available_parallelism();

    return pool < 2 ? 1 : cores < pool - 1 ? (cores ? cores : 1) : pool - 1;
}

/* sign_next - start waiting signatures while slots are free; say when all are done */
static void
sign_next(void)
{
    void (*cb)(void);
    int err;

    if (signing.slots == 0)
        signing.slots = sign_slots();
    while (signing.head && signing.running < signing.slots) {
        struct work *w = signing.head;

        if ((signing.head = w->next_waiting) == NULL)
            signing.tail = NULL;
        w->req.data = w;
        if ((err = uv_queue_work(worker_loop(), &w->req, sign_work, sign_done)) < 0) {
            msg_error("transaction %u: cannot sign: %s", w->t->id, uv_strerror(err));
            conclude(w, -1, &R_TEMP);
            continue;
        }
        signing.running++;
    }
    if (signing.running == 0 && signing.head == NULL && (cb = signing.quiet_cb) != NULL) {
        signing.quiet_cb = NULL;
        cb();
    }
}

/* cleanup_commit_quiesce - see cleanup.h */
void
cleanup_commit_quiesce(void (*cb)(void))
{
    signing.quiet_cb = cb;
    sign_next();
}

void
cleanup_commit_txn(struct cleanup_txn *t)
{
    struct work *w = xcalloc(1, sizeof(*w));
    struct reply r = R_TEMP;
    int rc;

    w->t = t;
    rc = step_headers(w, &r);
    if (rc == 0)
        rc = step_route(w, &r);
    if (rc == 0)
        rc = step_queues(w, &r);
    if (rc == 0)
        rc = step_dkim(w, &r);
    if (rc < 0) {
        conclude(w, rc, &r);
    } else if (rc == 0) {
        after_signing(w);
    } else { /* a signing job: to the thread pool in arrival order */
        if (signing.tail)
            signing.tail->next_waiting = w;
        else
            signing.head = w;
        signing.tail = w;
        sign_next();
    }
}
