/*
 * qstore_warmup.c - the warmup database of the queue store: qmgr's warm-up
 *                   state records (the format: qstore.h)
 *
 * Owns nothing beyond the records it encodes.
 * SECURITY: records are ours; keys are qmgr's text (source addresses,
 * destination names from the configuration and DNS), length-checked here.
 * A corrupt record is refused (-EPROTO) and skipped by the scan.
 */
#include "config.h"

#include <errno.h>
#include <string.h>

#include "msg.h"
#include "qstore.h"
#include "qstore_int.h"

/* qstore_warmup_encode - see qstore.h */
int
qstore_warmup_encode(struct buf *out, const struct qstore_warmup *w)
{
    uint8_t r[QSTORE_WARMUP_LEN] = { QSTORE_WARMUP_VERSION };

    qstore__put_be32(r + 4, w->step);
    qstore__put_be64(r + 8, w->start_day);
    qstore__put_be64(r + 16, w->window);
    qstore__put_be64(r + 24, w->sent);
    qstore__put_be64(r + 32, w->attempts);
    qstore__put_be64(r + 40, w->deferrals);
    qstore__put_be64(r + 48, w->complaints);
    return buf_append(out, r, sizeof r) < 0 ? -ENOMEM : 0;
}

/* qstore_warmup_decode - see qstore.h */
int
qstore_warmup_decode(const void *rec, size_t len, struct qstore_warmup *w)
{
    const uint8_t *r = rec;

    if (len != QSTORE_WARMUP_LEN || r[0] != QSTORE_WARMUP_VERSION || r[1] != 0 || r[2] != 0 ||
        r[3] != 0)
        return -EPROTO;
    w->step = qstore__get_be32(r + 4);
    w->start_day = qstore__get_be64(r + 8);
    w->window = qstore__get_be64(r + 16);
    w->sent = qstore__get_be64(r + 24);
    w->attempts = qstore__get_be64(r + 32);
    w->deferrals = qstore__get_be64(r + 40);
    w->complaints = qstore__get_be64(r + 48);
    return 0;
}

/* key_ok - 1..QSTORE_WARMUP_KEY_MAX bytes of text */
static int
key_ok(const char *key, size_t *len)
{
    *len = key ? strnlen(key, QSTORE_WARMUP_KEY_MAX + 1) : 0;
    return *len >= 1 && *len <= QSTORE_WARMUP_KEY_MAX;
}

/* qstore_wtxn_put_warmup - see qstore.h */
int
qstore_wtxn_put_warmup(struct qstore_wtxn *w, const char *key, const struct qstore_warmup *st)
{
    struct buf rec = BUF_INIT;
    MDB_val k, v;
    size_t len;
    int rc;

    if (w->failed)
        return w->failed;
    if (!key_ok(key, &len))
        return -EMSGSIZE;
    if (!w->qs->have_warmup)
        return -EACCES; /* a read-only environment */
    if ((rc = qstore_warmup_encode(&rec, st)) == 0) {
        k = (MDB_val){ len, (void *)key };
        v = (MDB_val){ rec.len, rec.data };
        if ((rc = qstore__err(mdb_put(w->txn, w->qs->warmup, &k, &v, 0))) < 0)
            qstore__poison(w, rc);
    }
    buf_free(&rec);
    return rc;
}

/* qstore_scan_warmup - see qstore.h */
int
qstore_scan_warmup(struct qstore *qs, qstore_warmup_fn fn, void *arg)
{
    char key[QSTORE_WARMUP_KEY_MAX + 1];
    struct qstore_warmup st;
    MDB_txn *txn;
    MDB_cursor *c;
    MDB_val k, v;
    int rc, cbrc = 0, op = MDB_FIRST;

    qstore__check_owner(qs);
    if (!qs->have_warmup)
        return 0;
    if ((rc = qstore__err(mdb_txn_begin(qs->env, NULL, MDB_RDONLY, &txn))) < 0)
        return rc;
    if ((rc = qstore__err(mdb_cursor_open(txn, qs->warmup, &c))) < 0)
        goto out;
    while ((rc = mdb_cursor_get(c, &k, &v, op)) == 0) {
        op = MDB_NEXT;
        if (k.mv_size < 1 || k.mv_size > QSTORE_WARMUP_KEY_MAX ||
            memchr(k.mv_data, 0, k.mv_size) != NULL ||
            qstore_warmup_decode(v.mv_data, v.mv_size, &st) < 0) {
            msg_warn("qstore: corrupt warm-up state record (%zu-byte key) skipped", k.mv_size);
            continue;
        }
        memcpy(key, k.mv_data, k.mv_size);
        key[k.mv_size] = 0;
        if ((cbrc = fn(key, &st, arg)) != 0)
            break;
    }
    rc = cbrc ? cbrc : rc == MDB_NOTFOUND ? 0 : qstore__err(rc);
    mdb_cursor_close(c);
out:
    mdb_txn_abort(txn);
    return rc;
}
