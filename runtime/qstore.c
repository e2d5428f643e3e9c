/*
 * qstore.c - the LMDB queue store: environment, record codecs, transactions
 *
 * Owns the LMDB environment of the queue and everything about its layout; the
 * schema is documented in qstore.h and nowhere else. Grouping of commits
 * lives in qstore_group.c on top of the qstore_wtxn calls here.
 *
 * SECURITY: the record decoders parse bytes that hold peer text and that a
 * damaged disk may have mangled. Every read goes through struct rd, which
 * checks the remaining length first and turns any shortfall, any over-long or
 * unterminated string and any trailing byte into -EPROTO.
 */
#include "config.h"

#include <errno.h>
#include <pthread.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include <lmdb.h>

#include "msg.h"
#include "qstore.h"
#include "qstore_int.h"
#include "xalloc.h"

struct qstore_newmsg {
    struct buf env;   /* encoded envelope record */
    struct buf rcpts; /* encoded recipient records, back to back */
    size_t *rcpt_off; /* nrcpt + 1 offsets into rcpts */
    uint32_t nrcpt;
    char *body;
    size_t body_len;
    uint32_t nchunks;
    size_t qid_off; /* body offset of the queue-id patch, or SIZE_MAX */
};

#define META_SCHEMA    "schema"
#define META_NEXT_ID   "next-msgid"
#define KEY_MSG_LEN    8
#define KEY_SUB_LEN    12
#define ENV_FIXED_LEN  28
#define RCPT_FIXED_LEN 32

/* ---- big-endian helpers ----------------------------------------------------- */

/* qstore__put_be32 and its kin: qstore_int.h */

/* key_msg / key_sub - the msg key and the body/rcpt key of MSGID (and N) */
static MDB_val
key_msg(uint8_t k[KEY_MSG_LEN], uint64_t msgid)
{
    qstore__put_be64(k, msgid);
    return (MDB_val){ .mv_size = KEY_MSG_LEN, .mv_data = k };
}

static MDB_val
key_sub(uint8_t k[KEY_SUB_LEN], uint64_t msgid, uint32_t n)
{
    qstore__put_be64(k, msgid);
    qstore__put_be32(k + 8, n);
    return (MDB_val){ .mv_size = KEY_SUB_LEN, .mv_data = k };
}

/* ---- errors ----------------------------------------------------------------- */

/* qstore__err - see qstore_int.h */
int
qstore__err(int rc)
{
    switch (rc) {
    case MDB_SUCCESS:
        return 0;
    case MDB_MAP_FULL:
        return -ENOSPC;
    case MDB_NOTFOUND:
        return -ENOENT;
    case MDB_KEYEXIST:
        return -EEXIST;
    case MDB_READERS_FULL:
        return -EAGAIN;
    case MDB_TXN_FULL:
        return -E2BIG; /* too many dirty pages: the batch is too big */
    case MDB_VERSION_MISMATCH:
    case MDB_INVALID:
        return -EPROTO;
    default:
        return rc > 0 ? -rc : -EIO;
    }
}

const char *
qstore_strerror(int err)
{
    switch (err) {
    case -ENOSPC:
        return "queue full (map or disk)";
    case -EPROTO:
        return "corrupt queue record or schema mismatch";
    case -E2BIG:
        return "transaction too large";
    case -EEXIST:
        return "message id collision (queue meta damaged)";
    default:
        return strerror(err < 0 ? -err : err);
    }
}

static pid_t self_pid_cached;

static void
refresh_self_pid(void)
{
    self_pid_cached = getpid();
}

static void
init_self_pid(void)
{
    refresh_self_pid();
    pthread_atfork(NULL, NULL, refresh_self_pid);
}

/* self_pid - getpid() without a system call per queue operation */
static pid_t
self_pid(void)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;

    pthread_once(&once, init_self_pid);
    return self_pid_cached;
}

/* qstore__check_owner - see qstore_int.h */
void
qstore__check_owner(const struct qstore *qs)
{
    if (qs->pid != self_pid())
        msg_panic("qstore: environment used in pid %ld but opened in pid %ld", (long)getpid(),
                  (long)qs->pid);
}

/* ---- record writer ------------------------------------------------------------ */

static void
wr_u8(struct buf *b, uint8_t v)
{
    buf_append(b, &v, 1);
}

static void
wr_u32(struct buf *b, uint32_t v)
{
    uint8_t p[4];

    qstore__put_be32(p, v);
    buf_append(b, p, sizeof p);
}

static void
wr_u64(struct buf *b, uint64_t v)
{
    uint8_t p[8];

    qstore__put_be64(p, v);
    buf_append(b, p, sizeof p);
}

/*
 * wr_str - u16 length (text + NUL), text, NUL. Text over MAX is refused, or
 * cut to MAX when TRUNCATE (reply text is informative, never a reason to fail).
 */
static int
wr_str(struct buf *b, const char *s, size_t max, int truncate)
{
    size_t len = s ? strnlen(s, max + 1) : 0;
    uint8_t p[2];

    if (len > max) {
        if (!truncate)
            return -EMSGSIZE;
        len = max;
    }
    p[0] = (uint8_t)((len + 1) >> 8);
    p[1] = (uint8_t)(len + 1);
    buf_append(b, p, sizeof p);
    buf_append(b, len ? s : "", len);
    wr_u8(b, 0);
    return 0;
}

/* ---- record reader: every access is bounds-checked ---------------------------- */

struct rd {
    const uint8_t *p;
    const uint8_t *end;
    int bad;
};

static int
rd_have(struct rd *r, size_t n)
{
    if (r->bad || (size_t)(r->end - r->p) < n) {
        r->bad = 1;
        return 0;
    }
    return 1;
}

static uint8_t
rd_u8(struct rd *r)
{
    return rd_have(r, 1) ? *r->p++ : 0;
}

static uint32_t
rd_u32(struct rd *r)
{
    uint32_t v;

    if (!rd_have(r, 4))
        return 0;
    v = qstore__get_be32(r->p);
    r->p += 4;
    return v;
}

static uint64_t
rd_u64(struct rd *r)
{
    uint64_t v;

    if (!rd_have(r, 8))
        return 0;
    v = qstore__get_be64(r->p);
    r->p += 8;
    return v;
}

/* rd_str - a NUL-terminated string of at most MAX text bytes, in place */
static const char *
rd_str(struct rd *r, size_t max, size_t *lenp)
{
    const char *s;
    size_t len;

    if (!rd_have(r, 2))
        return "";
    len = (size_t)r->p[0] << 8 | r->p[1];
    r->p += 2;
    if (len < 1 || len > max + 1 || !rd_have(r, len) || r->p[len - 1] != 0 ||
        memchr(r->p, 0, len - 1) != NULL) {
        r->bad = 1;
        return "";
    }
    s = (const char *)r->p;
    r->p += len;
    if (lenp)
        *lenp = len - 1;
    return s;
}

/* rd_done - 0 when everything parsed and nothing is left over */
static int
rd_done(const struct rd *r)
{
    return r->bad || r->p != r->end ? -EPROTO : 0;
}

/* chunks_for - how many body chunks hold SIZE bytes (no chunk is empty) */
static uint64_t
chunks_for(uint64_t size)
{
    return size / QSTORE_CHUNK_MAX + (size % QSTORE_CHUNK_MAX != 0);
}

/* wr_strs - the N string fields of a record; on overflow OUT goes back to START */
static int
wr_strs(struct buf *out, const char *const *strs, size_t n, size_t start)
{
    for (size_t i = 0; i < n; i++) {
        if (wr_str(out, strs[i], QSTORE_STR_MAX, 0) < 0) {
            out->len = start; /* leave OUT as it was */
            return -EMSGSIZE;
        }
    }
    return 0;
}

/* ---- envelope codec ---------------------------------------------------------- */

int
qstore_envelope_encode(struct buf *out, const struct qstore_envelope *e)
{
    const char *strs[] = {
        e->sender,    e->envid,       e->job_id,    e->vmta,          e->source,
        e->client_ip, e->client_helo, e->auth_user, e->bounce_sender, e->local_ip
    };
    size_t start = out->len;

    if (e->flags & ~QSTORE_F_ALL || e->ret > QSTORE_RET_HDRS || chunks_for(e->size) != e->nchunks)
        return -EINVAL; /* the decoder would refuse it */
    wr_u8(out, QSTORE_ENV_VERSION);
    wr_u8(out, e->flags);
    wr_u8(out, e->ret);
    wr_u8(out, 0);
    wr_u32(out, e->nrcpt);
    wr_u64(out, e->queued_at);
    wr_u64(out, e->size);
    wr_u32(out, e->nchunks);
    return wr_strs(out, strs, sizeof strs / sizeof strs[0], start);
}

int
qstore_envelope_decode(const void *rec, size_t len, struct qstore_envelope *e)
{
    struct rd r = { rec, (const uint8_t *)rec + len, 0 };
    uint8_t version = rd_u8(&r);

    if (version != 1 && version != QSTORE_ENV_VERSION)
        return -EPROTO;
    e->flags = rd_u8(&r);
    e->ret = rd_u8(&r);
    if (rd_u8(&r) != 0 || e->flags & ~QSTORE_F_ALL || e->ret > QSTORE_RET_HDRS)
        return -EPROTO;
    e->nrcpt = rd_u32(&r);
    e->queued_at = rd_u64(&r);
    e->size = rd_u64(&r);
    e->nchunks = rd_u32(&r);
    e->sender = rd_str(&r, QSTORE_STR_MAX, NULL);
    e->envid = rd_str(&r, QSTORE_STR_MAX, NULL);
    e->job_id = rd_str(&r, QSTORE_STR_MAX, NULL);
    e->vmta = rd_str(&r, QSTORE_STR_MAX, NULL);
    e->source = rd_str(&r, QSTORE_STR_MAX, NULL);
    e->client_ip = rd_str(&r, QSTORE_STR_MAX, NULL);
    e->client_helo = rd_str(&r, QSTORE_STR_MAX, NULL);
    e->auth_user = rd_str(&r, QSTORE_STR_MAX, NULL);
    e->bounce_sender = rd_str(&r, QSTORE_STR_MAX, NULL);
    e->local_ip = version >= 2 ? rd_str(&r, QSTORE_STR_MAX, NULL) : "";
    /* a body needs chunks and no chunk is empty */
    if (!r.bad && chunks_for(e->size) != e->nchunks)
        return -EPROTO;
    return rd_done(&r);
}

/* ---- recipient codec ---------------------------------------------------------- */

int
qstore_rcpt_encode(struct buf *out, const struct qstore_rcpt *rc)
{
    const char *strs[] = { rc->queue, rc->address, rc->orcpt, rc->domain };
    size_t start = out->len;

    if (rc->state > QSTORE_RCPT_DEFERRED || rc->notify & ~QSTORE_NOTIFY_ALL)
        return -EINVAL;
    wr_u8(out, QSTORE_RCPT_VERSION);
    wr_u8(out, rc->state);
    wr_u8(out, rc->notify);
    wr_u8(out, rc->delay_notices);
    wr_u32(out, rc->attempts);
    wr_u64(out, rc->queued_at);
    wr_u64(out, rc->first_attempt);
    wr_u64(out, rc->next_attempt);
    if (wr_strs(out, strs, sizeof strs / sizeof strs[0], start) < 0)
        return -EMSGSIZE;
    wr_str(out, rc->last_error, QSTORE_ERR_MAX, 1);
    return 0;
}

/* rd_rcpt_head - the fixed part of a recipient record */
static int
rd_rcpt_head(struct rd *r, struct qstore_rcpt *rc)
{
    if (rd_u8(r) != QSTORE_RCPT_VERSION)
        return -EPROTO;
    rc->state = rd_u8(r);
    rc->notify = rd_u8(r);
    rc->delay_notices = rd_u8(r);
    if (rc->state > QSTORE_RCPT_DEFERRED || rc->notify & ~QSTORE_NOTIFY_ALL)
        return -EPROTO;
    rc->attempts = rd_u32(r);
    rc->queued_at = rd_u64(r);
    rc->first_attempt = rd_u64(r);
    rc->next_attempt = rd_u64(r);
    return r->bad ? -EPROTO : 0;
}

int
qstore_rcpt_decode(const void *rec, size_t len, struct qstore_rcpt *rc)
{
    struct rd r = { rec, (const uint8_t *)rec + len, 0 };

    if (rd_rcpt_head(&r, rc) < 0)
        return -EPROTO;
    rc->queue = rd_str(&r, QSTORE_STR_MAX, NULL);
    rc->address = rd_str(&r, QSTORE_STR_MAX, NULL);
    rc->orcpt = rd_str(&r, QSTORE_STR_MAX, NULL);
    rc->domain = rd_str(&r, QSTORE_STR_MAX, NULL);
    rc->last_error = rd_str(&r, QSTORE_ERR_MAX, NULL);
    return rd_done(&r);
}

/*
 * sched_decode - the scheduler's view: fixed header and queue name only.
 * The rest of the record is checked when smtp-out reads it.
 */
static int
sched_decode(const MDB_val *k, const MDB_val *v, struct qstore_sched *s)
{
    struct rd r = { v->mv_data, (const uint8_t *)v->mv_data + v->mv_size, 0 };
    struct qstore_rcpt rc;

    if (k->mv_size != KEY_SUB_LEN || rd_rcpt_head(&r, &rc) < 0)
        return -EPROTO;
    s->queue = rd_str(&r, QSTORE_STR_MAX, &s->queue_len);
    if (r.bad)
        return -EPROTO;
    s->msgid = qstore__get_be64(k->mv_data);
    s->index = qstore__get_be32((const uint8_t *)k->mv_data + 8);
    s->state = rc.state;
    s->attempts = rc.attempts;
    s->queued_at = rc.queued_at;
    s->next_attempt = rc.next_attempt;
    return 0;
}

/* ---- environment ---------------------------------------------------------------- */

/* open_dbis - open (creating) the named databases in TXN */
static int
open_dbis(struct qstore *qs, MDB_txn *txn)
{
    unsigned fl = qs->flags & QSTORE_RDONLY ? 0 : MDB_CREATE;
    int rc;

    if ((rc = mdb_dbi_open(txn, "meta", fl, &qs->meta)) != 0 ||
        (rc = mdb_dbi_open(txn, "msg", fl, &qs->msg)) != 0 ||
        (rc = mdb_dbi_open(txn, "body", fl, &qs->body)) != 0 ||
        (rc = mdb_dbi_open(txn, "rcpt", fl, &qs->rcpt)) != 0)
        return qstore__err(rc);
    /* added later (schema 1 still): a read-only open of an older spool may lack it */
    rc = mdb_dbi_open(txn, "warmup", fl, &qs->warmup);
    if (rc != 0 && !(rc == MDB_NOTFOUND && (qs->flags & QSTORE_RDONLY)))
        return qstore__err(rc);
    qs->have_warmup = rc == 0;
    return 0;
}

/* init_meta - write the schema version and first id into a fresh env */
static int
init_meta(struct qstore *qs, MDB_txn *txn)
{
    uint8_t ver[4], next[8];
    MDB_val k = { strlen(META_SCHEMA), META_SCHEMA }, v = { sizeof ver, ver };
    int rc;

    qstore__put_be32(ver, QSTORE_SCHEMA_VERSION);
    qstore__put_be64(next, 1);
    if ((rc = mdb_put(txn, qs->meta, &k, &v, 0)) != 0)
        return qstore__err(rc);
    k = (MDB_val){ strlen(META_NEXT_ID), META_NEXT_ID };
    v = (MDB_val){ sizeof next, next };
    return qstore__err(mdb_put(txn, qs->meta, &k, &v, 0));
}

/* check_meta - initialise a fresh env or verify an existing one's schema */
static int
check_meta(struct qstore *qs, MDB_txn *txn, const char *dir)
{
    MDB_val k = { strlen(META_SCHEMA), META_SCHEMA }, v;
    int rc = mdb_get(txn, qs->meta, &k, &v);

    if (rc == MDB_NOTFOUND && !(qs->flags & QSTORE_RDONLY))
        return init_meta(qs, txn);
    if (rc != 0)
        return qstore__err(rc);
    if (v.mv_size != 4 || qstore__get_be32(v.mv_data) != QSTORE_SCHEMA_VERSION) {
        msg_warn("qstore: %s: unsupported queue schema (want version %u)", dir,
                 QSTORE_SCHEMA_VERSION);
        return -EPROTO;
    }
    return 0;
}

/* env_setup - create the env handle with size, readers and db count set */
static int
env_setup(struct qstore *qs, const struct qstore_opts *o)
{
    int rc;

    if ((rc = mdb_env_create(&qs->env)) != 0)
        return qstore__err(rc);
    if ((rc = mdb_env_set_mapsize(qs->env, o->map_size ? o->map_size : (size_t)1 << 30)) != 0 ||
        (rc = mdb_env_set_maxreaders(qs->env, o->max_readers ? o->max_readers : 512)) != 0 ||
        (rc = mdb_env_set_maxdbs(qs->env, 8)) != 0)
        return qstore__err(rc);
    return 0;
}

int
qstore_open(struct qstore **qsp, const char *dir, const struct qstore_opts *opts)
{
    static const struct qstore_opts defaults;
    const struct qstore_opts *o = opts ? opts : &defaults;
    struct qstore *qs = xcalloc(1, sizeof *qs);
    unsigned envfl = MDB_NOTLS;
    MDB_txn *txn = NULL;
    int rc, dead = 0;

    qs->pid = self_pid();
    qs->flags = o->flags;
    if (o->flags & QSTORE_NOSYNC)
        envfl |= MDB_NOSYNC;
    else if (!(o->flags & QSTORE_RDONLY))
        envfl |= MDB_NOMETASYNC; /* one sync per commit: see DURABILITY in qstore.h */
    if (o->flags & QSTORE_RDONLY)
        envfl |= MDB_RDONLY;
    if (!(o->flags & QSTORE_RDONLY) && mkdir(dir, 0700) < 0 && errno != EEXIST) {
        rc = -errno;
        goto fail_free;
    }
    if ((rc = env_setup(qs, o)) < 0)
        goto fail_env;
    if ((rc = qstore__err(mdb_env_open(qs->env, dir, envfl, 0600))) < 0)
        goto fail_env;
    /* slots of killed processes would pin old pages and fill the map */
    if (mdb_reader_check(qs->env, &dead) == 0 && dead > 0)
        msg_info("qstore: %s: cleared %d stale reader slot(s)", dir, dead);
    if ((rc = qstore__err(
             mdb_txn_begin(qs->env, NULL, o->flags & QSTORE_RDONLY ? MDB_RDONLY : 0, &txn))) < 0)
        goto fail_env;
    if ((rc = open_dbis(qs, txn)) < 0 || (rc = check_meta(qs, txn, dir)) < 0)
        goto fail_txn;
    if ((rc = qstore__err(mdb_txn_commit(txn))) < 0)
        goto fail_env;
    *qsp = qs;
    return 0;

fail_txn:
    mdb_txn_abort(txn);
fail_env:
    if (qs->env)
        mdb_env_close(qs->env);
fail_free:
    free(qs);
    return rc;
}

void
qstore_close(struct qstore *qs)
{
    if (qs == NULL)
        return;
    qstore__check_owner(qs);
    mdb_env_close(qs->env);
    free(qs);
}

int
qstore_sync(struct qstore *qs)
{
    qstore__check_owner(qs);
    return qstore__err(mdb_env_sync(qs->env, 1));
}

/* qstore_sync_on - see qstore.h */
int
qstore_sync_on(const struct qstore *qs)
{
    return !(qs->flags & (QSTORE_NOSYNC | QSTORE_RDONLY));
}

/* db_entries - number of records in DBI */
static uint64_t
db_entries(MDB_txn *txn, MDB_dbi dbi)
{
    MDB_stat st;

    return mdb_stat(txn, dbi, &st) == 0 ? st.ms_entries : 0;
}

int
qstore_info(struct qstore *qs, struct qstore_info *info)
{
    MDB_envinfo ei;
    MDB_stat es;
    MDB_txn *txn;
    MDB_val k = { strlen(META_NEXT_ID), META_NEXT_ID }, v;
    int rc;

    qstore__check_owner(qs);
    memset(info, 0, sizeof *info);
    if ((rc = qstore__err(mdb_txn_begin(qs->env, NULL, MDB_RDONLY, &txn))) < 0)
        return rc;
    info->messages = db_entries(txn, qs->msg);
    info->recipients = db_entries(txn, qs->rcpt);
    info->chunks = db_entries(txn, qs->body);
    if (mdb_get(txn, qs->meta, &k, &v) == 0 && v.mv_size == 8)
        info->next_msgid = qstore__get_be64(v.mv_data);
    mdb_txn_abort(txn);
    if (mdb_env_info(qs->env, &ei) == 0 && mdb_env_stat(qs->env, &es) == 0) {
        info->map_size = ei.me_mapsize;
        info->map_used = (ei.me_last_pgno + 1) * (size_t)es.ms_psize;
    }
    return 0;
}

/* mark_key - the meta key of mark NAME ("mark:NAME") into BUF; its length, 0 if too long */
static size_t
mark_key(char *buf, size_t size, const char *name)
{
    int n = snprintf(buf, size, "mark:%s", name);

    return n > 0 && (size_t)n < size && *name ? (size_t)n : 0;
}

int
qstore_get_mark(struct qstore *qs, const char *name, uint64_t *value)
{
    char key[64];
    MDB_val k = { mark_key(key, sizeof key, name), key }, v;
    MDB_txn *txn;
    int rc;

    qstore__check_owner(qs);
    if (k.mv_size == 0)
        return -EINVAL;
    if ((rc = qstore__err(mdb_txn_begin(qs->env, NULL, MDB_RDONLY, &txn))) < 0)
        return rc;
    rc = mdb_get(txn, qs->meta, &k, &v);
    if (rc == 0 && v.mv_size == 8)
        *value = qstore__get_be64(v.mv_data);
    mdb_txn_abort(txn);
    return rc == MDB_NOTFOUND ? -ENOENT : rc != 0 ? qstore__err(rc) : v.mv_size == 8 ? 0 : -EPROTO;
}

int
qstore_wtxn_set_mark(struct qstore_wtxn *w, const char *name, uint64_t value)
{
    char key[64];
    uint8_t be[8];
    MDB_val k = { mark_key(key, sizeof key, name), key }, v = { sizeof be, be };
    int rc;

    if (k.mv_size == 0)
        return -EINVAL;
    qstore__put_be64(be, value);
    if ((rc = qstore__err(mdb_put(w->txn, w->qs->meta, &k, &v, 0))) < 0 && rc != -EINVAL)
        w->failed = rc;
    return rc;
}

/* ---- new messages ----------------------------------------------------------------- */

/* encode_rcpts - append every recipient record of a new message to NM */
static int
encode_rcpts(struct qstore_newmsg *nm, const struct qstore_rcpt *rcpts, uint64_t queued_at)
{
    nm->rcpt_off = xreallocarray(NULL, (size_t)nm->nrcpt + 1, sizeof *nm->rcpt_off);
    for (uint32_t i = 0; i < nm->nrcpt; i++) {
        struct qstore_rcpt r = rcpts[i];
        int rc;

        r.queued_at = queued_at;
        nm->rcpt_off[i] = nm->rcpts.len;
        if ((rc = qstore_rcpt_encode(&nm->rcpts, &r)) < 0)
            return rc;
    }
    nm->rcpt_off[nm->nrcpt] = nm->rcpts.len;
    return 0;
}

int
qstore_newmsg_create(struct qstore_newmsg **nmp, const struct qstore_envelope *env,
                     const struct qstore_rcpt *rcpts, size_t n, struct buf *body)
{
    struct qstore_newmsg *nm;
    struct qstore_envelope e = *env;
    int rc;

    if (n < 1 || n > UINT32_MAX)
        return -EINVAL;
    nm = xcalloc(1, sizeof *nm);
    buf_init(&nm->env, 0);
    buf_init(&nm->rcpts, 0);
    nm->nrcpt = (uint32_t)n;
    nm->qid_off = SIZE_MAX;
    if (body && body->len > 0)
        nm->body = buf_detach(body, &nm->body_len);
    if ((uint64_t)nm->body_len / QSTORE_CHUNK_MAX >= UINT32_MAX) {
        rc = -EMSGSIZE;
        goto fail;
    }
    nm->nchunks = (uint32_t)chunks_for(nm->body_len);
    e.nrcpt = nm->nrcpt;
    e.size = nm->body_len;
    e.nchunks = nm->nchunks;
    if (e.queued_at == 0)
        e.queued_at = (uint64_t)time(NULL);
    if ((rc = qstore_envelope_encode(&nm->env, &e)) < 0 ||
        (rc = encode_rcpts(nm, rcpts, e.queued_at)) < 0)
        goto fail;
    *nmp = nm;
    return 0;

fail:
    qstore_newmsg_free(nm);
    return rc;
}

void
qstore_newmsg_free(struct qstore_newmsg *nm)
{
    if (nm == NULL)
        return;
    buf_free(&nm->env);
    buf_free(&nm->rcpts);
    free(nm->rcpt_off);
    free(nm->body);
    free(nm);
}

int
qstore_newmsg_patch_qid(struct qstore_newmsg *nm, size_t offset)
{
    if (offset > nm->body_len || nm->body_len - offset < QSTORE_QID_LEN)
        return -EINVAL;
    nm->qid_off = offset;
    return 0;
}

size_t
qstore_newmsg_size(const struct qstore_newmsg *nm)
{
    return nm->env.len + nm->rcpts.len + nm->body_len +
           ((size_t)nm->nrcpt + nm->nchunks + 1) * KEY_SUB_LEN;
}

/* ---- write transactions --------------------------------------------------------------- */

int
qstore_wtxn_begin(struct qstore *qs, struct qstore_wtxn **wp)
{
    struct qstore_wtxn *w;
    int rc;

    qstore__check_owner(qs);
    if (qs->flags & QSTORE_RDONLY)
        return -EACCES;
    w = xcalloc(1, sizeof *w);
    w->qs = qs;
    if ((rc = qstore__err(mdb_txn_begin(qs->env, NULL, 0, &w->txn))) < 0) {
        free(w);
        return rc;
    }
    *wp = w;
    return 0;
}

/* qstore__poison - see qstore_int.h */
int
qstore__poison(struct qstore_wtxn *w, int rc)
{
    if (w->failed == 0)
        w->failed = rc;
    return rc;
}

/* next_id - hand out the next message id; meta is written back at commit */
static int
next_id(struct qstore_wtxn *w, uint64_t *idp)
{
    MDB_val k = { strlen(META_NEXT_ID), META_NEXT_ID }, v;
    int rc;

    if (!w->have_id) {
        if ((rc = mdb_get(w->txn, w->qs->meta, &k, &v)) != 0)
            return rc == MDB_NOTFOUND ? -EPROTO : qstore__err(rc);
        if (v.mv_size != 8 || qstore__get_be64(v.mv_data) == 0)
            return -EPROTO;
        w->next_id = qstore__get_be64(v.mv_data);
        w->have_id = 1;
    }
    *idp = w->next_id++;
    return 0;
}

/* put_append - append one record; ids only grow, so MDB_APPEND refuses overwrites */
static int
put_append(struct qstore_wtxn *w, MDB_dbi dbi, MDB_val *k, const void *p, size_t n)
{
    MDB_val v = { n, (void *)p };

    return qstore__err(mdb_put(w->txn, dbi, k, &v, MDB_APPEND));
}

/*
 * put_chunk - body chunk C (N bytes at OFF of NM's body) under id ID. A chunk
 * that overlaps the queue-id patch is reserved in the map and written there
 * with the id's text over the placeholder bytes: NM itself is never changed,
 * so a retried batch patches its new id the same way.
 */
static int
put_chunk(struct qstore_wtxn *w, const struct qstore_newmsg *nm, uint64_t id, uint32_t c,
          size_t off, size_t n)
{
    uint8_t kb[KEY_SUB_LEN];
    MDB_val k = key_sub(kb, id, c), v = { n, NULL };
    char qid[QSTORE_QID_LEN + 1];
    size_t from, to;
    int rc;

    if (nm->qid_off == SIZE_MAX || nm->qid_off >= off + n || nm->qid_off + QSTORE_QID_LEN <= off)
        return put_append(w, w->qs->body, &k, nm->body + off, n);
    if ((rc = qstore__err(mdb_put(w->txn, w->qs->body, &k, &v, MDB_APPEND | MDB_RESERVE))) < 0)
        return rc;
    memcpy(v.mv_data, nm->body + off, n);
    qstore_qid_format(qid, id);
    from = nm->qid_off > off ? nm->qid_off : off;
    to = nm->qid_off + QSTORE_QID_LEN < off + n ? nm->qid_off + QSTORE_QID_LEN : off + n;
    memcpy((char *)v.mv_data + (from - off), qid + (from - nm->qid_off), to - from);
    return 0;
}

/* put_records - all records of NM under id ID */
static int
put_records(struct qstore_wtxn *w, const struct qstore_newmsg *nm, uint64_t id)
{
    struct qstore *qs = w->qs;
    uint8_t kb[KEY_SUB_LEN];
    MDB_val k = key_msg(kb, id);
    int rc;

    if ((rc = put_append(w, qs->msg, &k, nm->env.data, nm->env.len)) < 0)
        return rc;
    for (uint32_t i = 0; i < nm->nrcpt; i++) {
        k = key_sub(kb, id, i);
        rc = put_append(w, qs->rcpt, &k, nm->rcpts.data + nm->rcpt_off[i],
                        nm->rcpt_off[i + 1] - nm->rcpt_off[i]);
        if (rc < 0)
            return rc;
    }
    for (uint32_t c = 0; c < nm->nchunks; c++) {
        size_t off = (size_t)c * QSTORE_CHUNK_MAX;
        size_t n = nm->body_len - off < QSTORE_CHUNK_MAX ? nm->body_len - off : QSTORE_CHUNK_MAX;

        if ((rc = put_chunk(w, nm, id, c, off, n)) < 0)
            return rc;
    }
    return 0;
}

int
qstore_wtxn_put(struct qstore_wtxn *w, const struct qstore_newmsg *nm, uint64_t *idp)
{
    uint64_t id = 0;
    int rc;

    if (w->failed)
        return w->failed;
    /* any failure may leave part of the message in the txn: it must not commit */
    if ((rc = next_id(w, &id)) < 0 || (rc = put_records(w, nm, id)) < 0)
        return qstore__poison(w, rc);
    *idp = id;
    return 0;
}

/* first_with_prefix - position C at the first record of MSGID; 1 found, 0 none, <0 error */
static int
first_with_prefix(MDB_cursor *c, uint64_t msgid, MDB_val *k, MDB_val *v)
{
    uint8_t kb[KEY_SUB_LEN];
    int rc;

    *k = key_sub(kb, msgid, 0);
    rc = mdb_cursor_get(c, k, v, MDB_SET_RANGE);
    if (rc == MDB_NOTFOUND)
        return 0;
    if (rc != 0)
        return qstore__err(rc);
    return k->mv_size >= KEY_MSG_LEN && qstore__get_be64(k->mv_data) == msgid;
}

/* delete_prefix - delete every body/rcpt record of MSGID from DBI */
static int
delete_prefix(struct qstore_wtxn *w, MDB_dbi dbi, uint64_t msgid)
{
    MDB_cursor *c;
    MDB_val k, v;
    int rc;

    if ((rc = qstore__err(mdb_cursor_open(w->txn, dbi, &c))) < 0)
        return rc;
    /* re-seek after each delete: simpler than LMDB's post-delete cursor rules */
    while ((rc = first_with_prefix(c, msgid, &k, &v)) == 1) {
        if ((rc = qstore__err(mdb_cursor_del(c, 0))) < 0)
            break;
    }
    mdb_cursor_close(c);
    return rc;
}

/* has_rcpts - 1 if MSGID still has recipient records, 0 if not, <0 error */
static int
has_rcpts(struct qstore_wtxn *w, uint64_t msgid)
{
    MDB_cursor *c;
    MDB_val k, v;
    int rc;

    if ((rc = qstore__err(mdb_cursor_open(w->txn, w->qs->rcpt, &c))) < 0)
        return rc;
    rc = first_with_prefix(c, msgid, &k, &v);
    mdb_cursor_close(c);
    return rc;
}

/* delete_msg_records - msg, body and any rcpt records of MSGID */
static int
delete_msg_records(struct qstore_wtxn *w, uint64_t msgid)
{
    uint8_t kb[KEY_MSG_LEN];
    MDB_val k = key_msg(kb, msgid);
    int rc = mdb_del(w->txn, w->qs->msg, &k, NULL);

    if (rc != 0 && rc != MDB_NOTFOUND)
        return qstore__err(rc);
    if ((rc = delete_prefix(w, w->qs->body, msgid)) < 0)
        return rc;
    return delete_prefix(w, w->qs->rcpt, msgid);
}

int
qstore_wtxn_finish(struct qstore_wtxn *w, uint64_t msgid, uint32_t index)
{
    uint8_t kb[KEY_SUB_LEN];
    MDB_val k = key_sub(kb, msgid, index);
    int rc;

    if (w->failed)
        return w->failed;
    rc = mdb_del(w->txn, w->qs->rcpt, &k, NULL);
    if (rc == MDB_NOTFOUND)
        return -ENOENT; /* nothing written yet: the txn is still good */
    if (rc != 0)
        return qstore__poison(w, qstore__err(rc));
    if ((rc = has_rcpts(w, msgid)) < 0)
        return qstore__poison(w, rc);
    if (rc == 0 && (rc = delete_msg_records(w, msgid)) < 0)
        return qstore__poison(w, rc);
    return 0;
}

int
qstore_wtxn_defer(struct qstore_wtxn *w, uint64_t msgid, uint32_t index,
                  const struct qstore_defer *d)
{
    uint8_t kb[KEY_SUB_LEN];
    MDB_val k = key_sub(kb, msgid, index), v;
    struct qstore_rcpt r;
    struct buf rec;
    int rc;

    if (w->failed)
        return w->failed;
    if ((rc = mdb_get(w->txn, w->qs->rcpt, &k, &v)) != 0)
        return qstore__err(rc);
    if (qstore_rcpt_decode(v.mv_data, v.mv_size, &r) < 0)
        return -EPROTO;
    r.state = QSTORE_RCPT_DEFERRED;
    r.attempts = d->attempts;
    r.next_attempt = d->next_attempt;
    if (d->first_attempt)
        r.first_attempt = d->first_attempt;
    if (d->set_delay_notices)
        r.delay_notices = d->delay_notices;
    r.last_error = d->last_error;
    /* encode into our own memory first: R's strings point into the map */
    buf_init(&rec, 0);
    if ((rc = qstore_rcpt_encode(&rec, &r)) == 0) {
        v = (MDB_val){ rec.len, rec.data };
        if ((rc = qstore__err(mdb_put(w->txn, w->qs->rcpt, &k, &v, 0))) < 0)
            qstore__poison(w, rc);
    }
    buf_free(&rec);
    return rc;
}

int
qstore_wtxn_delete_msg(struct qstore_wtxn *w, uint64_t msgid)
{
    uint8_t kb[KEY_MSG_LEN];
    MDB_val k = key_msg(kb, msgid), v;
    int rc;

    if (w->failed)
        return w->failed;
    if ((rc = mdb_get(w->txn, w->qs->msg, &k, &v)) != 0)
        return qstore__err(rc);
    if ((rc = delete_msg_records(w, msgid)) < 0)
        return qstore__poison(w, rc);
    return 0;
}

int
qstore_wtxn_failed(const struct qstore_wtxn *w)
{
    return w->failed;
}

/* commit_unsynced - commit W: its pages are synced, the meta page that makes them the
 * current state is written but not synced (MDB_NOMETASYNC); frees W. 0 or -errno */
static int
commit_unsynced(struct qstore_wtxn *w)
{
    uint8_t next[8];
    MDB_val k = { strlen(META_NEXT_ID), META_NEXT_ID }, v = { sizeof next, next };
    int rc;

    if (w->failed) {
        rc = w->failed;
        qstore_wtxn_abort(w);
        return rc;
    }
    if (w->have_id) {
        qstore__put_be64(next, w->next_id);
        if ((rc = mdb_put(w->txn, w->qs->meta, &k, &v, 0)) != 0) {
            mdb_txn_abort(w->txn);
            free(w);
            return qstore__err(rc);
        }
    }
    rc = qstore__err(mdb_txn_commit(w->txn));
    if (rc == -EIO && qstore__disk_full(w->qs))
        rc = -ENOSPC; /* LMDB's word for a short write */
    free(w);
    return rc;
}

/* qstore_wtxn_commit_lazy - see qstore.h */
int
qstore_wtxn_commit_lazy(struct qstore_wtxn *w)
{
    return commit_unsynced(w);
}

/* qstore_wtxn_commit - see qstore.h */
int
qstore_wtxn_commit(struct qstore_wtxn *w)
{
    struct qstore *qs = w->qs;
    int rc = commit_unsynced(w);

    /* with sync on, the meta page's sync is the durability point */
    if (rc == 0 && qstore_sync_on(qs))
        rc = qstore_sync(qs);
    return rc;
}

void
qstore_wtxn_abort(struct qstore_wtxn *w)
{
    if (w == NULL)
        return;
    mdb_txn_abort(w->txn);
    free(w);
}

int
qstore_put(struct qstore *qs, const struct qstore_newmsg *nm, uint64_t *idp)
{
    struct qstore_wtxn *w;
    uint64_t id = 0;
    int rc;

    if ((rc = qstore_wtxn_begin(qs, &w)) < 0)
        return rc;
    if ((rc = qstore_wtxn_put(w, nm, &id)) < 0) {
        qstore_wtxn_abort(w);
        return rc;
    }
    if ((rc = qstore_wtxn_commit(w)) == 0)
        *idp = id;
    return rc;
}

int
qstore_delete_msg(struct qstore *qs, uint64_t msgid)
{
    struct qstore_wtxn *w;
    int rc;

    if ((rc = qstore_wtxn_begin(qs, &w)) < 0)
        return rc;
    if ((rc = qstore_wtxn_delete_msg(w, msgid)) < 0) {
        qstore_wtxn_abort(w);
        return rc;
    }
    return qstore_wtxn_commit(w);
}

/* ---- scanning --------------------------------------------------------------------------- */

/* scan_one - decode and hand one record to FN; corrupt ones are logged and skipped */
static int
scan_one(const MDB_val *k, const MDB_val *v, qstore_sched_fn fn, void *arg,
         struct qstore_scan_stats *st)
{
    struct qstore_sched s;

    if (sched_decode(k, v, &s) < 0) {
        st->corrupt++;
        if (k->mv_size == KEY_SUB_LEN)
            msg_warn("qstore: corrupt recipient record %" PRIu64 "/%" PRIu32 " skipped",
                     qstore__get_be64(k->mv_data),
                     qstore__get_be32((const uint8_t *)k->mv_data + 8));
        else
            msg_warn("qstore: recipient record with a %zu-byte key skipped", k->mv_size);
        return 0;
    }
    st->seen++;
    return fn(&s, arg);
}

/*
 * drop_mapped_pages - a full scan reads every recipient page of the map; they stay in the page
 * cache (the map is a shared file mapping, so nothing is lost or written), but leave this
 * process's resident set: qmgr's memory is its schedule, not the queue it read once. The next
 * read of a page faults it back in from the cache. LO..HI: the lowest and highest map address
 * the scan saw (LMDB gives no map address without MDB_FIXEDMAP).
 */
static void
drop_mapped_pages(uintptr_t lo, uintptr_t hi)
{
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);

    if (lo == 0 || hi <= lo)
        return;
    lo &= ~(page - 1);
    (void)madvise((void *)lo, hi - lo, MADV_DONTNEED);
}

/* scan_range - the cursor loop; ONE_MSG limits it to MSGID's records */
static int
scan_range(struct qstore *qs, int one_msg, uint64_t msgid, qstore_sched_fn fn, void *arg,
           struct qstore_scan_stats *stp)
{
    struct qstore_scan_stats local = { 0, 0 };
    struct qstore_scan_stats *st = stp ? stp : &local;
    uint8_t kb[KEY_SUB_LEN];
    MDB_val k = key_sub(kb, msgid, 0), v;
    MDB_txn *txn;
    MDB_cursor *c;
    int rc, cbrc = 0, op = one_msg ? MDB_SET_RANGE : MDB_FIRST;
    uintptr_t lo = UINTPTR_MAX, hi = 0;

    qstore__check_owner(qs);
    memset(st, 0, sizeof *st);
    if ((rc = qstore__err(mdb_txn_begin(qs->env, NULL, MDB_RDONLY, &txn))) < 0)
        return rc;
    if ((rc = qstore__err(mdb_cursor_open(txn, qs->rcpt, &c))) < 0)
        goto out;
    while ((rc = mdb_cursor_get(c, &k, &v, op)) == 0) {
        op = MDB_NEXT;
        if (one_msg && (k.mv_size < KEY_MSG_LEN || qstore__get_be64(k.mv_data) != msgid))
            break;
        if ((uintptr_t)v.mv_data < lo)
            lo = (uintptr_t)v.mv_data;
        if ((uintptr_t)v.mv_data + v.mv_size > hi)
            hi = (uintptr_t)v.mv_data + v.mv_size;
        if ((cbrc = scan_one(&k, &v, fn, arg, st)) != 0)
            break;
    }
    rc = cbrc ? cbrc : rc == MDB_NOTFOUND ? 0 : qstore__err(rc);
    mdb_cursor_close(c);
out:
    mdb_txn_abort(txn);
    if (!one_msg)
        drop_mapped_pages(lo == UINTPTR_MAX ? 0 : lo, hi);
    return rc;
}

int
qstore_scan(struct qstore *qs, qstore_sched_fn fn, void *arg, struct qstore_scan_stats *st)
{
    return scan_range(qs, 0, 0, fn, arg, st);
}

int
qstore_scan_msg(struct qstore *qs, uint64_t msgid, qstore_sched_fn fn, void *arg,
                struct qstore_scan_stats *st)
{
    return scan_range(qs, 1, msgid, fn, arg, st);
}

/* ---- reading one message ------------------------------------------------------------------ */

struct rec_ref {
    uint32_t index;
    size_t off, len;
};

/* copy_rcpts - copy MSGID's recipient records into M's arena; refs to *REFSP */
static int
copy_rcpts(struct qstore *qs, MDB_txn *txn, uint64_t msgid, struct qstore_msg *m,
           struct rec_ref **refsp)
{
    MDB_cursor *c;
    MDB_val k, v;
    size_t cap = 0;
    int rc;

    if ((rc = qstore__err(mdb_cursor_open(txn, qs->rcpt, &c))) < 0)
        return rc;
    for (rc = first_with_prefix(c, msgid, &k, &v); rc == 1;) {
        if (k.mv_size != KEY_SUB_LEN) {
            rc = -EPROTO;
            break;
        }
        if (m->nrcpt == cap) {
            cap = cap ? cap * 2 : 8;
            *refsp = xreallocarray(*refsp, cap, sizeof **refsp);
        }
        (*refsp)[m->nrcpt++] = (struct rec_ref){ qstore__get_be32((uint8_t *)k.mv_data + 8),
                                                 m->recs_.len, v.mv_size };
        buf_append(&m->recs_, v.mv_data, v.mv_size);
        if ((rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) != 0)
            rc = rc == MDB_NOTFOUND ? 0 : qstore__err(rc);
        else
            rc = k.mv_size >= KEY_MSG_LEN && qstore__get_be64(k.mv_data) == msgid;
    }
    mdb_cursor_close(c);
    return rc;
}

/* copy_body - the chunks of a message of SIZE bytes in NCHUNKS, checked */
static int
copy_body(struct qstore *qs, MDB_txn *txn, uint64_t msgid, const struct qstore_envelope *e,
          struct qstore_msg *m)
{
    uint8_t kb[KEY_SUB_LEN];
    MDB_val k, v;
    int rc;

    if (e->size > SIZE_MAX - 1)
        return -EPROTO;
    m->body = xmalloc((size_t)e->size + 1);
    for (uint32_t c = 0; c < e->nchunks; c++) {
        k = key_sub(kb, msgid, c);
        if ((rc = mdb_get(txn, qs->body, &k, &v)) != 0)
            return rc == MDB_NOTFOUND ? -EPROTO : qstore__err(rc);
        if (v.mv_size == 0 || v.mv_size > QSTORE_CHUNK_MAX || v.mv_size > e->size - m->body_len)
            return -EPROTO;
        memcpy(m->body + m->body_len, v.mv_data, v.mv_size);
        m->body_len += v.mv_size;
    }
    m->body[m->body_len] = '\0';
    return m->body_len == e->size ? 0 : -EPROTO;
}

/* copy_msg - everything of MSGID into M (in one read txn) */
static int
copy_msg(struct qstore *qs, MDB_txn *txn, uint64_t msgid, unsigned what, struct qstore_msg *m,
         struct rec_ref **refsp)
{
    uint8_t kb[KEY_MSG_LEN];
    MDB_val k = key_msg(kb, msgid), v;
    struct qstore_envelope e;
    int rc;

    if ((rc = mdb_get(txn, qs->msg, &k, &v)) != 0)
        return qstore__err(rc);
    if (qstore_envelope_decode(v.mv_data, v.mv_size, &e) < 0)
        return -EPROTO;
    buf_append(&m->recs_, v.mv_data, v.mv_size);
    if ((rc = copy_rcpts(qs, txn, msgid, m, refsp)) < 0)
        return rc;
    if (what & QSTORE_READ_BODY)
        return copy_body(qs, txn, msgid, &e, m);
    return 0;
}

/* decode_copy - decode M's copied records; the arena no longer moves */
static int
decode_copy(struct qstore_msg *m, const struct rec_ref *refs)
{
    size_t env_len = m->nrcpt ? refs[0].off : m->recs_.len;

    if (qstore_envelope_decode(m->recs_.data, env_len, &m->env) < 0)
        return -EPROTO;
    m->rcpt = xreallocarray(NULL, m->nrcpt ? m->nrcpt : 1, sizeof *m->rcpt);
    for (size_t i = 0; i < m->nrcpt; i++) {
        if (qstore_rcpt_decode(m->recs_.data + refs[i].off, refs[i].len, &m->rcpt[i]) < 0)
            return -EPROTO;
        m->rcpt[i].index = refs[i].index;
    }
    return 0;
}

int
qstore_read_msg(struct qstore *qs, uint64_t msgid, unsigned what, struct qstore_msg **mp)
{
    struct qstore_msg *m = xcalloc(1, sizeof *m);
    struct rec_ref *refs = NULL;
    MDB_txn *txn;
    int rc;

    qstore__check_owner(qs);
    m->msgid = msgid;
    buf_init(&m->recs_, 0);
    if ((rc = qstore__err(mdb_txn_begin(qs->env, NULL, MDB_RDONLY, &txn))) < 0)
        goto fail;
    rc = copy_msg(qs, txn, msgid, what, m, &refs);
    mdb_txn_abort(txn); /* all values are copied out by now */
    if (rc < 0 || (rc = decode_copy(m, refs)) < 0)
        goto fail;
    free(refs);
    *mp = m;
    return 0;

fail:
    free(refs);
    qstore_msg_free(m);
    return rc;
}

void
qstore_msg_free(struct qstore_msg *m)
{
    if (m == NULL)
        return;
    free(m->rcpt);
    free(m->body);
    buf_free(&m->recs_);
    free(m);
}
