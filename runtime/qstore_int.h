/*
 * qstore_int.h - what the queue store's own files share (runtime/qstore*.c only)
 *
 * The environment handle behind struct qstore and a write transaction, for
 * the parts of the store split out of qstore.c (qstore_space.c, the disk;
 * qstore_warmup.c, the warm-up database). Nothing outside runtime/qstore*.c
 * includes this: everyone else sees both as opaque (qstore.h), where the
 * schema and every record format are documented.
 */
#ifndef PMTA_QSTORE_INT_H
#define PMTA_QSTORE_INT_H

#include <stdint.h>
#include <sys/types.h>

#include <lmdb.h>

#include "qstore.h"

struct qstore {
    MDB_env *env;
    MDB_dbi meta, msg, body, rcpt, warmup;
    int have_warmup; /* a read-only open of an older spool may lack it */
    pid_t pid;       /* the process that opened the env (LMDB rule) */
    unsigned flags;
};

struct qstore_wtxn {
    struct qstore *qs;
    MDB_txn *txn;
    int failed;  /* first error that poisoned the txn, or 0 */
    int have_id; /* next_id was read from meta */
    uint64_t next_id;
};

/* qstore__err - an LMDB or errno result in the -errno convention */
int qstore__err(int rc);
/* qstore__poison - W can no longer commit; returns RC for chaining */
int qstore__poison(struct qstore_wtxn *w, int rc);
/* qstore__check_owner - LMDB forbids using an env across fork(); panic when that happens */
void qstore__check_owner(const struct qstore *qs);
/*
 * qstore__disk_full - is the file system of QS's environment out of space?
 * LMDB reports a short write (a disk that filled up during the commit) as
 * EIO; the commit asks this to tell a full disk from a failing one.
 */
int qstore__disk_full(struct qstore *qs);

static inline void
qstore__put_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static inline void
qstore__put_be64(uint8_t *p, uint64_t v)
{
    qstore__put_be32(p, (uint32_t)(v >> 32));
    qstore__put_be32(p + 4, (uint32_t)v);
}

static inline uint32_t
qstore__get_be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static inline uint64_t
qstore__get_be64(const uint8_t *p)
{
    return (uint64_t)qstore__get_be32(p) << 32 | qstore__get_be32(p + 4);
}

#endif
