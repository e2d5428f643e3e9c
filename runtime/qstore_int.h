/*
 * qstore_int.h - what the queue store's own files share (runtime/qstore*.c only)
 *
 * The environment handle behind struct qstore, for the parts of the store
 * split out of qstore.c (qstore_space.c). Nothing outside runtime/qstore*.c
 * includes this: everyone else sees struct qstore as opaque (qstore.h).
 */
#ifndef PMTA_QSTORE_INT_H
#define PMTA_QSTORE_INT_H

#include <sys/types.h>

#include <lmdb.h>

#include "qstore.h"

struct qstore {
    MDB_env *env;
    MDB_dbi meta, msg, body, rcpt;
    pid_t pid; /* the process that opened the env (LMDB rule) */
    unsigned flags;
};

/* qstore__check_owner - LMDB forbids using an env across fork(); panic when that happens */
void qstore__check_owner(const struct qstore *qs);
/*
 * qstore__disk_full - is the file system of QS's environment out of space?
 * LMDB reports a short write (a disk that filled up during the commit) as
 * EIO; the commit asks this to tell a full disk from a failing one.
 */
int qstore__disk_full(struct qstore *qs);

#endif
