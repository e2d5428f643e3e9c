/*
 * qmgr_trace.c - pmtactl trace: the next delivery attempt of a queue, its
 *                transcript relayed live to the waiting control client
 *
 * A control client asks {"cmd":"trace","queue":PATTERN,"data":false} and gets
 *     {"ok":true,"queues":[NAME...],"paused":[NAME...],"waiting":true}
 * at once (or {"ok":false,...}: no queue matches, not an SMTP queue, too
 * many traces); then, when the attempt comes, one line per event
 *     {"trace":{"ms":12.345,"kind":"<","text":"250 2.0.0 Ok"}}
 * (ms since the attempt began; kind as MP_TRACE_LINE says) and a last line
 *     {"done":true,"ms":N,"why":"transaction done"|"connection closed ..."}
 * after which the client closes the socket.
 *
 * The attempt is the next connection qmgr opens for a queue PATTERN matches
 * (MP_CONN_OPEN, then MP_CONN_TRACE: resolution, connecting, greeting, EHLO,
 * STARTTLS follow), or the next transaction it gives an idle connection of
 * one (MP_CONN_TRACE before MP_CONN_TXN). smtp-out streams MP_TRACE_LINEs
 * until that transaction's MP_TXN_DONE or the connection's MP_CONN_DOWN.
 * Message lines (kind "|") come only when a client asked for data, and go
 * only to such clients. Credentials never come: the session masks them.
 *
 * Owns: the list of traces (each names its client, which qmgr_ctl.c owns;
 * qmgr_trace_client_gone drops a client's traces when it goes away).
 */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "mailproto.h"
#include "msg.h"
#include "qmgr.h"
#include "qmgr_ctl.h"
#include "xalloc.h"

#define TRACES_MAX 16u

struct trace {
    struct trace *next;
    struct ctl_client *client;
    char *pattern;
    int data;         /* --log-data: the message lines too */
    uint32_t conn_id; /* 0 while waiting for the attempt */
    uint64_t start_ns;
};

static struct trace *traces;
static unsigned ntraces;

static json_t *
error_reply(const char *text)
{
    return json_pack("{s:b, s:s}", "ok", 0, "error", text);
}

static double
elapsed_ms(const struct trace *t, uint64_t at_ns)
{
    return at_ns > t->start_ns ? (double)(at_ns - t->start_ns) / 1e6 : 0.0;
}

static void
trace_free(struct trace *t)
{
    struct trace **pp;

    for (pp = &traces; *pp && *pp != t; pp = &(*pp)->next)
        ;
    if (*pp)
        *pp = t->next;
    ntraces--;
    free(t->pattern);
    free(t);
}

/* send_line - one trace line to T's client */
static void
send_line(struct trace *t, uint64_t at_ns, const char *kind, const char *text)
{
    json_t *line = json_pack("{s:{s:f, s:s, s:s}}", "trace", "ms", elapsed_ms(t, at_ns), "kind",
                             kind, "text", text);

    if (line) /* NULL: not UTF-8 (smtp-out sends ASCII; a broken peer's line is dropped) */
        qmgr_ctl_client_send(t->client, line);
}

/* qmgr_trace_request - see qmgr.h */
json_t *
qmgr_trace_request(struct ctl_client *client, json_t *req)
{
    const char *pattern = json_string_value(json_object_get(req, "queue"));
    json_t *data = json_object_get(req, "data"), *names, *paused;
    uint32_t matched = 0, smtp = 0;
    struct trace *t;

    if (!pattern || !*pattern || strlen(pattern) >= 512 || (data && !json_is_boolean(data)))
        return error_reply("trace needs \"queue\" (domain[/vmta]) and optionally \"data\" "
                           "(true: the message lines too)");
    if (ntraces >= TRACES_MAX)
        return error_reply("too many traces running (16); try again later");
    names = json_array();
    paused = json_array();
    for (uint32_t i = 0; i < S.nqueues; i++) {
        struct qqueue *q = S.queues[i];

        if (!qmgr_queue_matches(q, pattern))
            continue;
        matched++;
        if (qmgr_queue_type(q) != CFG_TYPE_SMTP)
            continue;
        smtp++;
        json_array_append_new(names, json_string(q->name));
        if (q->paused)
            json_array_append_new(paused, json_string(q->name));
    }
    if (smtp == 0) {
        json_decref(names);
        json_decref(paused);
        return error_reply(matched ? "trace shows SMTP sessions; that queue delivers by another "
                                     "type (pipe, file, http-delivery, discard)"
                                   : "no queue matches that pattern");
    }
    t = xcalloc(1, sizeof *t);
    t->client = client;
    t->pattern = xstrdup(pattern);
    t->data = json_is_true(data);
    t->next = traces;
    traces = t;
    ntraces++;
    msg_info("pmtactl trace %s: waiting for the next delivery attempt", pattern);
    return json_pack("{s:b, s:o, s:o, s:b}", "ok", 1, "queues", names, "paused", paused, "waiting",
                     1);
}

/* qmgr_trace_attach - see qmgr.h */
void
qmgr_trace_attach(struct qconn *c, struct buf *out)
{
    struct mp_conn_trace ct = { 0 };
    int attached = 0;
    char text[200];

    for (struct trace *t = traces; t; t = t->next) {
        if (t->conn_id == c->id)
            return; /* already traced: this is the attempt's own transaction */
    }
    for (struct trace *t = traces; t; t = t->next) {
        if (t->conn_id != 0 || !qmgr_queue_matches(c->q, t->pattern))
            continue;
        t->conn_id = c->id;
        t->start_ns = qmgr_now_ns();
        attached = 1;
        ct.flags |= t->data ? MP_TRACE_DATA : 0;
        snprintf(text, sizeof text, "delivery attempt of %s on connection %u (smtp-out pid %u)",
                 c->q->name, c->id, c->out->pid);
        send_line(t, t->start_ns, "*", text);
    }
    if (attached && mp_encode_conn_trace(out, c->id, &ct) < 0)
        msg_panic("qmgr: MP_CONN_TRACE does not encode");
}

/* qmgr_trace_line - see qmgr.h */
int
qmgr_trace_line(struct qconn *c, struct ipc_msg *m)
{
    struct mp_trace_line line;

    if (mp_decode_trace_line(m, &line) < 0)
        return -EPROTO;
    for (struct trace *t = traces; t; t = t->next)
        if (t->conn_id == c->id && (line.kind[0] != '|' || t->data))
            send_line(t, line.at_ns, line.kind, line.text);
    return 0;
}

/* qmgr_trace_end - see qmgr.h */
void
qmgr_trace_end(struct qconn *c, const char *why)
{
    struct trace *t, *next;

    for (t = traces; t; t = next) {
        next = t->next;
        if (t->conn_id != c->id)
            continue;
        qmgr_ctl_client_send(t->client, json_pack("{s:b, s:f, s:s}", "done", 1, "ms",
                                                  elapsed_ms(t, qmgr_now_ns()), "why", why));
        trace_free(t);
    }
}

/* qmgr_trace_client_gone - see qmgr.h */
void
qmgr_trace_client_gone(struct ctl_client *client)
{
    struct trace *t, *next;

    for (t = traces; t; t = next) {
        next = t->next;
        if (t->client == client)
            trace_free(t);
    }
}
