/*
 * qstore_space.c - how much the queue can still take: the map, the data file,
 * LMDB's free pages and the file system under them
 *
 * The queue is full when either the LMDB map or the disk is. The data file
 * only grows (LMDB reuses the pages it frees, it never gives them back), so
 * what a new message may take is: the free pages inside the file, plus what
 * the file may still grow by - the smaller of the map's remainder and the
 * disk space left. A reserve stays out of that room for qmgr: recording a
 * delivery writes pages too (copy-on-write), and a queue filled to the last
 * byte could not record the deliveries that empty it.
 *
 * Owns: the space arithmetic and its reserve (one place), the full-disk test
 * behind the commit's EIO mapping.
 */
#include "config.h"

#include <errno.h>
#include <sys/stat.h>
#include <sys/statvfs.h>

#include "qstore.h"
#include "qstore_int.h"

#define RESERVE_MIN      ((uint64_t)256 << 10) /* 64 pages: a batch of qmgr's records */
#define RESERVE_MAX      ((uint64_t)64 << 20)  /* 64 MiB */
#define RESERVE_SHARE    64                    /* 1/64 of the capacity in between */
#define DISK_FULL_PAGES  16                    /* less than this left: the disk is full */
#define MESSAGE_OVERHEAD ((uint64_t)16 << 10)  /* records and part-used pages per message */

/* free_list_pages - pages LMDB's free list holds for reuse (what mdb_stat -f sums) */
static uint64_t
free_list_pages(MDB_txn *txn)
{
    MDB_cursor *cur;
    MDB_val k, v;
    uint64_t pages = 0;

    if (mdb_cursor_open(txn, 0, &cur) != 0) /* dbi 0 is the free list */
        return 0;
    while (mdb_cursor_get(cur, &k, &v, MDB_NEXT) == 0)
        if (v.mv_size >= sizeof(size_t))
            pages += *(const size_t *)v.mv_data; /* an IDL: its count comes first */
    mdb_cursor_close(cur);
    return pages;
}

static uint64_t
min_u64(uint64_t a, uint64_t b)
{
    return a < b ? a : b;
}

int
qstore_space(struct qstore *qs, struct qstore_space *sp)
{
    MDB_envinfo ei;
    MDB_stat es;
    MDB_txn *txn;
    struct statvfs vfs;
    struct stat st;
    const char *dir;
    mdb_filehandle_t fd;
    uint64_t used;
    int rc;

    qstore__check_owner(qs);
    *sp = (struct qstore_space){ 0 };
    if ((rc = mdb_env_info(qs->env, &ei)) != 0 || (rc = mdb_env_stat(qs->env, &es)) != 0 ||
        (rc = mdb_env_get_path(qs->env, &dir)) != 0 || (rc = mdb_env_get_fd(qs->env, &fd)) != 0)
        return rc > 0 ? -rc : -EIO;
    if (statvfs(dir, &vfs) < 0 || fstat(fd, &st) < 0)
        return -errno;
    if ((rc = mdb_txn_begin(qs->env, NULL, MDB_RDONLY, &txn)) != 0)
        return rc == MDB_READERS_FULL ? -EAGAIN : -EIO;
    sp->free_inside = free_list_pages(txn) * es.ms_psize;
    mdb_txn_abort(txn);
    used = ((uint64_t)ei.me_last_pgno + 1) * es.ms_psize;
    /* A commit that failed on a full disk leaves written blocks past the last page: reusable. */
    sp->file_size = (uint64_t)st.st_size > used ? (uint64_t)st.st_size : used;
    sp->free_inside += sp->file_size - used;
    sp->map_size = ei.me_mapsize;
    sp->disk_size = (uint64_t)vfs.f_blocks * vfs.f_frsize;
    sp->disk_avail = (uint64_t)vfs.f_bavail * vfs.f_frsize;
    return 0;
}

/* disk_or_map - the most the data file can ever be: the map, or the file system when smaller */
static uint64_t
disk_or_map(const struct qstore_space *sp)
{
    return sp->disk_size ? min_u64(sp->map_size, sp->disk_size) : sp->map_size;
}

/* fitting - the largest message whose records and pages fit in BYTES */
static uint64_t
fitting(uint64_t bytes)
{
    return bytes > MESSAGE_OVERHEAD ? (bytes - MESSAGE_OVERHEAD) / 33 * 32 : 0;
}

uint64_t
qstore_space_reserve(const struct qstore_space *sp)
{
    uint64_t cap = disk_or_map(sp), r = cap / RESERVE_SHARE;

    r = r < RESERVE_MIN ? RESERVE_MIN : r > RESERVE_MAX ? RESERVE_MAX : r;
    return r > cap / 4 ? cap / 4 : r; /* a tiny map is mostly for mail all the same */
}

uint64_t
qstore_space_capacity(const struct qstore_space *sp)
{
    uint64_t cap = disk_or_map(sp), reserve = qstore_space_reserve(sp);

    return cap > reserve ? fitting(cap - reserve) : 0;
}

uint64_t
qstore_space_room(const struct qstore_space *sp)
{
    uint64_t grow = sp->map_size > sp->file_size ? sp->map_size - sp->file_size : 0;
    uint64_t raw = sp->free_inside + min_u64(grow, sp->disk_avail);
    uint64_t reserve = qstore_space_reserve(sp);

    return raw > reserve ? fitting(raw - reserve) : 0;
}

/* qstore__disk_full - see qstore_int.h */
int
qstore__disk_full(struct qstore *qs)
{
    struct statvfs vfs;
    MDB_stat es;
    const char *dir;

    if (mdb_env_get_path(qs->env, &dir) != 0 || mdb_env_stat(qs->env, &es) != 0 ||
        statvfs(dir, &vfs) < 0)
        return 0;
    return (uint64_t)vfs.f_bavail * vfs.f_frsize < (uint64_t)DISK_FULL_PAGES * es.ms_psize;
}
