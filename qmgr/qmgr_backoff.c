/*
 * qmgr_backoff.c - backoff mode and the <smtp-pattern-list> reply actions
 *
 * A queue (domain/vmta) is in normal or backoff mode. In backoff each
 * backoff-X setting replaces X (qmgr_queue_setting() picks the twin; a
 * backoff-max-smtp-out never raises the normal max-smtp-out), so a receiver
 * that answers "421 rate limit exceeded" gets fewer connections and a slower
 * message rate from this queue alone, while everything else keeps its pace.
 *
 * What changes a mode: a remote reply that matches a `reply /re/ mode=...`
 * line of the queue's smtp-pattern-list, or of the built-in list below when
 * the domain names none (the first matching line wins; every
 * reply of a delivery attempt is matched as "CODE TEXT", the enhanced status
 * included when the server sent one); backoff-to-normal-after (or the
 * pattern's backoff-to-normal-after=) since the last reply that asked for
 * backoff;
 * backoff-to-normal-after-delivery after one delivery in backoff. Modes live
 * in memory only: a restart starts every queue in normal mode, as PowerMTA.
 * Every change logs one line:
 *     queue DOMAIN/VMTA mode normal -> backoff: reply matched /RE/ (TEXT)
 *
 * disable-source-ip is done here too (qmgr_source_disable). Other actions
 * are returned to the caller (qmgr_outcome.c): bounce-rcpt, bounce-queue,
 * skip-mx (keep the recipient queued even after a 5xx), defer-queue.
 *
 * Owns: the compiled pattern lists of the current configuration, the list of
 * queues in backoff and the one-second timer that returns them to normal.
 * SECURITY: reply text is peer-controlled: matched under a PCRE2 match limit,
 * logged only through msg_printable().
 */
#include "config.h"

#define PCRE2_CODE_UNIT_WIDTH 8

#include <inttypes.h>
#include <pcre2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "buf.h"
#include "mailproto.h"
#include "msg.h"
#include "qmgr.h"
#include "qmgr_backoff.h"
#include "qmgr_cluster.h"
#include "qmgr_dsn.h"
#include "worker.h"
#include "xalloc.h"

#define MATCH_LIMIT       100000u /* hostile replies must not stall the scheduler */
#define BUILTIN_LIST_NAME "(built-in)"

/*
 * The list a domain without `smtp-pattern-list` gets: what Gmail, Yahoo and
 * Outlook answer when they throttle, so that "421 Rate Limit Exceeded" slows
 * the queue down as PowerMTA's default rules do. Setting smtp-pattern-list
 * (even to an empty list) replaces it.
 */
static const char *const builtin_replies[] = {
    "rate limit|rate-limit",
    "unusual rate of",                                       /* Gmail 4.7.28 */
    "\\[TS0[1-4]\\]|temporarily deferred due to",            /* Yahoo */
    "4\\.7\\.500 Server busy|\\(S3150\\)|\\(S3114\\)",       /* Outlook */
    "too many (concurrent )?(smtp )?(connections|messages)", /* every one: mode=backoff */
};
#define REPLY_TEXT_MAX    1024
#define TO_NORMAL_TICK_MS 1000u

struct reply_pattern {
    pcre2_code *re;
    char *source;        /* the regex as written, for the log */
    unsigned actions;    /* CFG_REPLY_* */
    int64_t to_normal_s; /* backoff-to-normal-after=, or -1 */
    int64_t reenable_s;  /* reenable-after=, or -1 */
};

struct pattern_list {
    char *name;
    struct reply_pattern *pats;
    size_t npats;
};

static struct {
    struct pattern_list *lists;
    size_t nlists;
    uint64_t generation; /* bumped on every rebuild; queues cache a list index */
    pcre2_match_data *md;
    pcre2_match_context *mctx;
    struct qqueue **backoff; /* queues in backoff with a time to return */
    size_t nbackoff, backoff_cap;
    uv_timer_t timer;
    int timer_on;
} B;

/* --- compiling ------------------------------------------------------------------------------ */

/* add_reply - one parsed `reply` line to LIST; a regex that does not compile is skipped */
static void
add_reply(struct pattern_list *list, const char *re, const struct cfg_reply *r)
{
    struct reply_pattern p = { 0 };
    PCRE2_SIZE offset;
    int code;

    p.re = pcre2_compile((PCRE2_SPTR)re, PCRE2_ZERO_TERMINATED, PCRE2_CASELESS, &code, &offset,
                         NULL);
    if (p.re == NULL) {
        PCRE2_UCHAR why[160];

        pcre2_get_error_message(code, why, sizeof why);
        msg_warn("smtp-pattern-list %s: /%s/ skipped: %s", list->name, re, (const char *)why);
        return;
    }
    pcre2_jit_compile(p.re, PCRE2_JIT_COMPLETE); /* faster where JIT exists; optional */
    p.source = xstrdup(re);
    p.actions = r->actions;
    p.to_normal_s = r->to_normal_s;
    p.reenable_s = r->reenable_s;
    list->pats = xreallocarray(list->pats, list->npats + 1, sizeof *list->pats);
    list->pats[list->npats++] = p;
}

static void
free_lists(void)
{
    for (size_t i = 0; i < B.nlists; i++) {
        for (size_t j = 0; j < B.lists[i].npats; j++) {
            pcre2_code_free(B.lists[i].pats[j].re);
            free(B.lists[i].pats[j].source);
        }
        free(B.lists[i].pats);
        free(B.lists[i].name);
    }
    free(B.lists);
    B.lists = NULL;
    B.nlists = 0;
}

/* add_builtin_list - the list of domains without smtp-pattern-list (always the first) */
static void
add_builtin_list(void)
{
    struct pattern_list list = { xstrdup(BUILTIN_LIST_NAME), NULL, 0 };

    static const struct cfg_reply backoff = { .actions = CFG_REPLY_BACKOFF,
                                              .to_normal_s = -1,
                                              .reenable_s = -1 };

    for (size_t i = 0; i < sizeof builtin_replies / sizeof builtin_replies[0]; i++)
        add_reply(&list, builtin_replies[i], &backoff);
    B.lists = xreallocarray(B.lists, B.nlists + 1, sizeof *B.lists);
    B.lists[B.nlists++] = list;
}

/* qmgr_backoff_config - compile every <smtp-pattern-list> of S.cfg */
void
qmgr_backoff_config(void)
{
    uint32_t it = 0, s;

    free_lists();
    B.generation++;
    add_builtin_list();
    while ((s = cfg_next_scope(S.cfg, CFG_S_SMTP_PATTERN_LIST, &it)) != CFG_NONE) {
        struct pattern_list list = { xstrdup(cfg_str(S.cfg, S.cfg->scopes[s].name)), NULL, 0 };
        const struct cfg_value *v;
        uint32_t vit = 0;

        while ((v = cfg_scope_next(S.cfg, s, CFG_D_REPLY, &vit)) != NULL)
            if (v->type == CFG_T_REPLY)
                add_reply(&list, cfg_str(S.cfg, v->reply.regex), &v->reply);
        B.lists = xreallocarray(B.lists, B.nlists + 1, sizeof *B.lists);
        B.lists[B.nlists++] = list;
    }
    if (B.md == NULL) {
        B.md = pcre2_match_data_create(1, NULL);
        B.mctx = pcre2_match_context_create(NULL);
        if (B.md == NULL || B.mctx == NULL)
            msg_fatal("out of memory for PCRE2 match data");
        pcre2_set_match_limit(B.mctx, MATCH_LIMIT);
    }
}

/* --- matching ------------------------------------------------------------------------------- */

/* list_of - Q's smtp-pattern-list, or NULL (cached per configuration) */
static const struct pattern_list *
list_of(struct qqueue *q)
{
    const struct cfg_value *v;

    if (q->plist_gen != B.generation) {
        q->plist_gen = B.generation;
        q->plist = 0; /* the built-in list */
        if ((v = qmgr_queue_setting(q, CFG_D_SMTP_PATTERN_LIST)) != NULL)
            for (size_t i = 1; i < B.nlists; i++)
                if (strcmp(B.lists[i].name, cfg_str(S.cfg, v->text)) == 0)
                    q->plist = (int32_t)i;
    }
    return q->plist >= 0 ? &B.lists[q->plist] : NULL;
}

/* reply_text - "CODE TEXT" as the server sent it (smtp-out passes the line verbatim) */
static size_t
reply_text(char *out, size_t size, const struct qresult *res)
{
    const char *text = res->text ? res->text : "";
    char code[12];
    int n = snprintf(code, sizeof code, "%u", res->code);
    int len;

    if (res->code == 0 || strncmp(text, code, (size_t)n) == 0)
        len = snprintf(out, size, "%s", text);
    else
        len = snprintf(out, size, "%s %s", code, text);
    return len < 0 ? 0 : (size_t)len >= size ? size - 1 : (size_t)len;
}

/* first_match - the first pattern of LIST that TEXT matches, or NULL */
static const struct reply_pattern *
first_match(const struct pattern_list *list, const char *text, size_t len)
{
    for (size_t i = 0; i < list->npats; i++)
        if (pcre2_match(list->pats[i].re, (PCRE2_SPTR)text, len, 0, 0, B.md, B.mctx) >= 0)
            return &list->pats[i];
    return NULL;
}

/* disable_source - disable-source-ip: stop using IP for Q (reenable-after= or the domain's) */
static void
disable_source(struct qqueue *q, const struct reply_pattern *p, const char *ip, const char *shown)
{
    int64_t s = p->reenable_s >= 0 ? p->reenable_s
                                   : qmgr_queue_num(q, CFG_D_REENABLE_SOURCE_IP_AFTER, -1);

    if (s < 0)
        msg_info("queue %s: source %s disabled until a restart: reply matched /%s/ (%s)", q->name,
                 ip, p->source, shown);
    else
        msg_info("queue %s: source %s disabled for %lld s: reply matched /%s/ (%s)", q->name, ip,
                 (long long)s, p->source, shown);
    qmgr_source_disable(q, ip, s);
}

/* qmgr_reply_actions - see qmgr_backoff.h */
unsigned
qmgr_reply_actions(struct qqueue *q, const struct qresult *res)
{
    const struct pattern_list *list = list_of(q);
    const struct reply_pattern *p;
    char text[REPLY_TEXT_MAX], why[REPLY_TEXT_MAX + 64], shown[REPLY_TEXT_MAX];
    size_t len;

    /* The built-in list only knows throttling replies: never a success. */
    if (list == NULL || (q->plist == 0 && res->result == MP_RESULT_OK))
        return 0;
    len = reply_text(text, sizeof text, res);
    if ((p = first_match(list, text, len)) == NULL)
        return 0;
    if ((p->actions & CFG_REPLY_DISABLE_SOURCE) && res->source_ip && *res->source_ip)
        disable_source(q, p, res->source_ip, msg_printable(shown, sizeof shown, text, len));
    if (p->actions & (CFG_REPLY_BACKOFF | CFG_REPLY_NORMAL)) {
        snprintf(why, sizeof why, "reply matched /%s/ (%s)", p->source,
                 msg_printable(shown, sizeof shown, text, len));
        qmgr_backoff_set_mode(q, p->actions & CFG_REPLY_BACKOFF ? QMODE_BACKOFF : QMODE_NORMAL, why,
                              p->to_normal_s);
    }
    return p->actions;
}

/* --- modes ----------------------------------------------------------------------------------- */

static void on_tick(uv_timer_t *t);

static void
track(struct qqueue *q)
{
    for (size_t i = 0; i < B.nbackoff; i++)
        if (B.backoff[i] == q)
            return;
    if (B.nbackoff == B.backoff_cap) {
        B.backoff_cap = B.backoff_cap ? 2 * B.backoff_cap : 16;
        B.backoff = xreallocarray(B.backoff, B.backoff_cap, sizeof *B.backoff);
    }
    B.backoff[B.nbackoff++] = q;
    if (!B.timer_on) {
        uv_timer_init(worker_loop(), &B.timer);
        uv_unref((uv_handle_t *)&B.timer);
        B.timer_on = 1;
    }
    if (!uv_is_active((uv_handle_t *)&B.timer))
        uv_timer_start(&B.timer, on_tick, TO_NORMAL_TICK_MS, TO_NORMAL_TICK_MS);
}

static void
untrack(struct qqueue *q)
{
    for (size_t i = 0; i < B.nbackoff; i++)
        if (B.backoff[i] == q) {
            B.backoff[i] = B.backoff[--B.nbackoff];
            break;
        }
    if (B.nbackoff == 0 && B.timer_on)
        uv_timer_stop(&B.timer);
}

/* to_normal_at - when Q (entering backoff now) returns to normal by itself; 0 = never */
static uint64_t
to_normal_at(struct qqueue *q, int64_t pattern_s)
{
    int64_t s = pattern_s >= 0 ? pattern_s : qmgr_queue_num(q, CFG_D_BACKOFF_TO_NORMAL_AFTER, -1);

    return s >= 0 && s != CFG_NEVER ? qmgr_now_ms() + (uint64_t)s * 1000 : 0;
}

/* remember - the change to MODE in Q's ring of recent mode events */
static void
remember(struct qqueue *q, int mode, const char *why)
{
    struct qmode_event *e;

    if (q->mode_events == NULL)
        q->mode_events = xcalloc(QMGR_MODE_EVENTS, sizeof *q->mode_events);
    e = &q->mode_events[q->mode_event_next];
    q->mode_event_next = (uint8_t)((q->mode_event_next + 1) % QMGR_MODE_EVENTS);
    if (q->nmode_events < QMGR_MODE_EVENTS)
        q->nmode_events++;
    e->wall = qmgr_wall();
    e->from = (uint8_t)q->mode;
    e->to = (uint8_t)mode;
    snprintf(e->why, sizeof e->why, "%s", why);
}

/* notice_scope - the <domain> block that holds V, a backoff-notify value (all its lines count) */
static uint32_t
notice_scope(const struct cfg_value *v)
{
    uint32_t it = 0, s;

    while ((s = cfg_next_scope(S.cfg, CFG_S_DOMAIN, &it)) != CFG_NONE) {
        const struct cfg_value *w;
        uint32_t vit = 0;

        while ((w = cfg_scope_next(S.cfg, s, CFG_D_BACKOFF_NOTIFY, &vit)) != NULL)
            if (w == v)
                return s;
    }
    return CFG_NONE;
}

/* build_notice - the text of a mode-change notice for Q to TO */
static void
build_notice(struct buf *b, struct qqueue *q, int mode, const char *why, const char *to)
{
    static unsigned serial;
    char date[64], clean[600];
    time_t now = time(NULL);
    struct tm tm;

    gmtime_r(&now, &tm);
    strftime(date, sizeof date, "%a, %d %b %Y %H:%M:%S +0000", &tm);
    qmgr_dsn_sanitize(clean, sizeof clean, why, sizeof clean - 1);
    buf_printf(b,
               "From: Mail Delivery System <postmaster@%s>\r\nTo: <%s>\r\n"
               "Subject: queue %s %s backoff mode\r\nDate: %s\r\n"
               "Message-ID: <%ld.%ld.%u.backoff@%s>\r\nAuto-Submitted: auto-generated\r\n"
               "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
               "Queue %s on %s is now in %s mode.\r\nReason: %s\r\n",
               qmgr_host_name(), to, q->name, mode == QMODE_BACKOFF ? "entered" : "left", date,
               (long)now, (long)getpid(), ++serial, qmgr_host_name(), q->name, qmgr_host_name(),
               mode == QMODE_BACKOFF ? "backoff" : "normal", clean);
}

/* send_notice - one mode-change notice for Q to TO */
static void
send_notice(struct qqueue *q, int mode, const char *why, const char *to)
{
    struct buf b = BUF_INIT;

    if (strchr(to, '@') == NULL || strpbrk(to, "<>\r\n\"") != NULL) {
        msg_warn("backoff-notify %s: not an address; no notice sent", to);
        return;
    }
    build_notice(&b, q, mode, why, to);
    qmgr_queue_local_mail(to, &b, 0);
    buf_free(&b);
}

/* notify - backoff-notify: every address line of the block that sets it for Q's domain */
static void
notify(struct qqueue *q, int mode, const char *why)
{
    const struct cfg_value *v = qmgr_queue_setting(q, CFG_D_BACKOFF_NOTIFY), *w;
    uint32_t s, vit = 0;

    if (v == NULL)
        return;
    if ((s = notice_scope(v)) == CFG_NONE) {
        send_notice(q, mode, why, cfg_str(S.cfg, v->text));
        return;
    }
    while ((w = cfg_scope_next(S.cfg, s, CFG_D_BACKOFF_NOTIFY, &vit)) != NULL)
        send_notice(q, mode, why, cfg_str(S.cfg, w->text));
}

/*
 * back_to_normal - Q left backoff: what was deferred during the episode is
 * due at once and drains at the normal limits; the episode's retry mode ends
 */
static void
back_to_normal(struct qqueue *q)
{
    uint32_t n = qmgr_defer_due_now(q, qmgr_tick_now(), QRF_BACKOFF_DEFERRED);

    q->feed_held = 0;
    qmgr_queue_end_retry(q, 0);
    if (n > 0) {
        msg_info("queue %s: %u recipient(s) deferred in backoff due now", q->name, n);
        qmgr_defer_timer_update();
    }
}

/* qmgr_backoff_set_mode - see qmgr_backoff.h */
void
qmgr_backoff_set_mode(struct qqueue *q, int mode, const char *why, int64_t to_normal_s)
{
    /*
     * backoff-to-normal-after counts from entering backoff: later throttling
     * replies of the same episode do not push the end out (a receiver still
     * throttling sends the queue back into backoff at its first reply after).
     * A pattern's own backoff-to-normal-after= may still set a time when the
     * episode has none.
     */
    if (mode == QMODE_BACKOFF && (q->mode != mode || q->backoff_until_ms == 0))
        q->backoff_until_ms = to_normal_at(q, to_normal_s);
    if (q->mode == mode) {
        if (mode == QMODE_BACKOFF && q->backoff_until_ms && to_normal_s >= 0)
            qmgr_cluster_mode_changed(q, why); /* a new end */
        return;
    }
    msg_info("queue %s mode %s -> %s: %s", q->name, qmgr_mode_name(q->mode), qmgr_mode_name(mode),
             why);
    remember(q, mode, why);
    notify(q, mode, why);
    q->mode = mode;
    q->mode_changes++;
    if (mode == QMODE_BACKOFF) {
        uint32_t moved;

        track(q);
        if ((moved = qmgr_queue_reroute(q)) > 0)
            msg_info("queue %s rerouted to %s (backoff-reroute-to-virtual-mta): %u recipient(s)",
                     q->name, qmgr_queue_route(q)->name, moved);
    } else {
        untrack(q);
        q->backoff_until_ms = 0;
        back_to_normal(q);
    }
    qmgr_cluster_mode_changed(q, why); /* every node that sends Q follows */
    /* new limits: a smaller max-smtp-out closes connections as they finish (qmgr_conn.c) */
    qmgr_run_update(q);
    if (mode == QMODE_BACKOFF)
        qmgr_conn_trim(q);
    qmgr_dispatch_soon();
}

/* qmgr_backoff_delivered - a delivery on Q: backoff-to-normal-after-delivery */
void
qmgr_backoff_delivered(struct qqueue *q)
{
    if (q->mode == QMODE_BACKOFF && qmgr_queue_num(q, CFG_D_BACKOFF_TO_NORMAL_AFTER_DELIVERY, 0))
        qmgr_backoff_set_mode(q, QMODE_NORMAL, "delivered (backoff-to-normal-after-delivery)", -1);
}

static void
on_tick(uv_timer_t *t)
{
    uint64_t now = qmgr_now_ms();

    (void)t;
    for (size_t i = 0; i < B.nbackoff;) {
        struct qqueue *q = B.backoff[i];

        if (q->backoff_until_ms && now >= q->backoff_until_ms)
            qmgr_backoff_set_mode(q, QMODE_NORMAL, "backoff-to-normal-after elapsed", -1);
        else
            i++;
    }
}

/* qmgr_backoff_close - free the patterns and the timer (shutdown) */
void
qmgr_backoff_close(void)
{
    free_lists();
    pcre2_match_data_free(B.md);
    pcre2_match_context_free(B.mctx);
    B.md = NULL;
    B.mctx = NULL;
    free(B.backoff);
    B.backoff = NULL;
    B.nbackoff = B.backoff_cap = 0;
    if (B.timer_on)
        uv_close((uv_handle_t *)&B.timer, NULL);
    B.timer_on = 0;
}
