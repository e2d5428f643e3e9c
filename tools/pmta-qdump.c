/*
 * pmta-qdump.c - print the queue, one JSON object per message (read-only)
 *
 *   pmta-qdump [-b] [-m MSGID] DIR
 *
 * DIR is the spool (its queue/ subdirectory is used when it has one) or the
 * LMDB environment itself. Each pending message becomes one line:
 *
 *   {"id":"<queue id>","msgid":N,"sender":..,"envid":..,"job":..,"vmta":..,
 *    "source":..,"client_ip":..,"helo":..,"auth_user":..,"bounce_sender":..,
 *    "flags":N,"ret":"none|full|hdrs","queued_at":N,"size":N,"nrcpt":N,
 *    "recipients":[{"index":N,"address":..,"queue":..,"domain":..,"orcpt":..,
 *                   "notify":N,"state":"queued|deferred","attempts":N,
 *                   "next_attempt":N,"last_error":..}]}
 *
 * With -b the content is added as "body" (when it is valid UTF-8) or
 * "body_base64". -m prints one message only. Exit 0, or 1 on an error
 * (a corrupt record is reported on stderr and skipped).
 *
 * The seed of `pmtactl show queue`; the tests use it to look into the queue.
 *
 * Owns: its read-only qstore handle and the JSON it prints.
 *
 * SECURITY: opens the environment with QSTORE_RDONLY and only reads; record
 * text is peer input and goes out through jansson, which escapes it.
 */
#include "config.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "msg.h"
#include "qstore.h"
#include "xalloc.h"

struct ids {
    uint64_t *v;
    size_t n, cap;
};

static int
usage(void)
{
    fprintf(stderr, "usage: pmta-qdump [-b] [-m MSGID] SPOOL|QUEUEDIR\n");
    return 2;
}

/* collect - every message id, once, in order (recipients come sorted by msgid) */
static int
collect(const struct qstore_sched *s, void *arg)
{
    struct ids *ids = arg;

    if (ids->n > 0 && ids->v[ids->n - 1] == s->msgid)
        return 0;
    if (ids->n == ids->cap) {
        ids->cap = ids->cap ? 2 * ids->cap : 64;
        ids->v = xreallocarray(ids->v, ids->cap, sizeof(*ids->v));
    }
    ids->v[ids->n++] = s->msgid;
    return 0;
}

static char *
base64(const unsigned char *p, size_t n)
{
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    char *out = xmalloc((n + 2) / 3 * 4 + 1), *o = out;

    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16 | (i + 1 < n ? (uint32_t)p[i + 1] << 8 : 0) |
                     (i + 2 < n ? p[i + 2] : 0);

        *o++ = tab[v >> 18 & 63];
        *o++ = tab[v >> 12 & 63];
        *o++ = i + 1 < n ? tab[v >> 6 & 63] : '=';
        *o++ = i + 2 < n ? tab[v & 63] : '=';
    }
    *o = '\0';
    return out;
}

/* jstr - a JSON string of peer text (invalid UTF-8 is shown with '?') */
static json_t *
jstr(const char *s)
{
    json_t *j = json_string(s);
    char clean[2048];

    if (j == NULL)
        j = json_string(msg_printable(clean, sizeof(clean), s, strlen(s)));
    return j;
}

static json_t *
rcpt_json(const struct qstore_rcpt *r)
{
    return json_pack("{s:I, s:o, s:o, s:o, s:o, s:i, s:s, s:I, s:I, s:i, s:o}", "index",
                     (json_int_t)r->index, "address", jstr(r->address), "queue", jstr(r->queue),
                     "domain", jstr(r->domain), "orcpt", jstr(r->orcpt), "notify", (int)r->notify,
                     "state", r->state == QSTORE_RCPT_DEFERRED ? "deferred" : "queued", "attempts",
                     (json_int_t)r->attempts, "next_attempt", (json_int_t)r->next_attempt,
                     "delay_notices", (int)r->delay_notices, "last_error", jstr(r->last_error));
}

static void
add_body(json_t *o, const struct qstore_msg *m)
{
    json_t *b = json_stringn(m->body ? m->body : "", m->body_len);
    char *enc;

    if (b != NULL) {
        json_object_set_new(o, "body", b);
        return;
    }
    enc = base64((const unsigned char *)m->body, m->body_len);
    json_object_set_new(o, "body_base64", json_string(enc));
    free(enc);
}

static json_t *
msg_json(const struct qstore_msg *m)
{
    const struct qstore_envelope *e = &m->env;
    char qid[QSTORE_QID_LEN + 1];
    json_t *rc = json_array();

    qstore_qid_format(qid, m->msgid);
    for (size_t i = 0; i < m->nrcpt; i++)
        json_array_append_new(rc, rcpt_json(&m->rcpt[i]));
    return json_pack("{s:s, s:I, s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:i, s:s,"
                     " s:I, s:I, s:I, s:o}",
                     "id", qid, "msgid", (json_int_t)m->msgid, "sender", jstr(e->sender), "envid",
                     jstr(e->envid), "job", jstr(e->job_id), "vmta", jstr(e->vmta), "source",
                     jstr(e->source), "client_ip", jstr(e->client_ip), "local_ip",
                     jstr(e->local_ip), "helo", jstr(e->client_helo), "auth_user",
                     jstr(e->auth_user), "bounce_sender", jstr(e->bounce_sender), "flags",
                     (int)e->flags, "ret",
                     e->ret == QSTORE_RET_FULL   ? "full"
                     : e->ret == QSTORE_RET_HDRS ? "hdrs"
                                                 : "none",
                     "queued_at", (json_int_t)e->queued_at, "size", (json_int_t)e->size, "nrcpt",
                     (json_int_t)e->nrcpt, "recipients", rc);
}

/*
 * dump_one - print message ID; 0 or -errno (reported). With MAY_BE_GONE a message
 * that left the queue since the scan (a running pmtad delivered it) is no error.
 */
static int
dump_one(struct qstore *qs, uint64_t id, int body, int may_be_gone)
{
    struct qstore_msg *m;
    json_t *o;
    char *text;
    int rc;

    if ((rc = qstore_read_msg(qs, id, body ? QSTORE_READ_BODY : 0, &m)) < 0) {
        if (rc == -ENOENT && may_be_gone)
            return 0;
        fprintf(stderr, "pmta-qdump: message %" PRIu64 ": %s\n", id, qstore_strerror(rc));
        return rc;
    }
    o = msg_json(m);
    if (body)
        add_body(o, m);
    text = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
    puts(text);
    free(text);
    json_decref(o);
    qstore_msg_free(m);
    return 0;
}

/* queue_dir - DIR/queue when DIR is a spool, else DIR; caller frees */
static char *
queue_dir(const char *dir)
{
    char *q = xasprintf("%s/queue", dir);
    char *data = xasprintf("%s/data.mdb", q);
    struct stat st;
    int is_spool = stat(data, &st) == 0;

    free(data);
    if (is_spool)
        return q;
    free(q);
    return xstrdup(dir);
}

static int
dump(const char *dir, int body, uint64_t only)
{
    struct qstore_opts o = { .flags = QSTORE_RDONLY };
    struct qstore *qs;
    struct ids ids = { 0 };
    char *q = queue_dir(dir);
    int rc, failed = 0;

    if ((rc = qstore_open(&qs, q, &o)) < 0) {
        fprintf(stderr, "pmta-qdump: cannot open %s: %s\n", q, qstore_strerror(rc));
        free(q);
        return 1;
    }
    free(q);
    if (only)
        collect(&(struct qstore_sched){ .msgid = only }, &ids);
    else if ((rc = qstore_scan(qs, collect, &ids, NULL)) < 0)
        fprintf(stderr, "pmta-qdump: scan: %s\n", qstore_strerror(rc)), failed = 1;
    for (size_t i = 0; i < ids.n; i++)
        failed |= dump_one(qs, ids.v[i], body, !only) < 0;
    free(ids.v);
    qstore_close(qs);
    return failed;
}

int
main(int argc, char **argv)
{
    int c, body = 0;
    uint64_t only = 0;
    char *end;

    msg_init("pmta-qdump");
    while ((c = getopt(argc, argv, "bm:")) != -1) {
        switch (c) {
        case 'b':
            body = 1;
            break;
        case 'm':
            only = strtoull(optarg, &end, 0);
            if (*end || only == 0)
                return usage();
            break;
        default:
            return usage();
        }
    }
    if (optind != argc - 1)
        return usage();
    return dump(argv[optind], body, only);
}
