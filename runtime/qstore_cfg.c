/*
 * qstore_cfg.c - open the spool's queue store with the configuration's settings
 *
 * cleanup, qmgr and smtp-out all open SPOOL/queue; the map size comes from
 * `queue-map-size` and the sync mode from `sync-msg-create`. Kept apart from
 * qstore.c so the store itself does not depend on the configuration library.
 *
 * Owns: nothing (the store belongs to the caller).
 */
#include "config.h"

#include <stdlib.h>

#include "cfg.h"
#include "qstore.h"
#include "xalloc.h"

/* qstore_open_spool - see qstore.h */
int
qstore_open_spool(struct qstore **qs, const struct cfg *c, const char *spool, unsigned flags,
                  char **dirp)
{
    const struct cfg_value *map = cfg_global(c, CFG_D_QUEUE_MAP_SIZE);
    const struct cfg_value *sync = cfg_global(c, CFG_D_SYNC_MSG_CREATE);
    struct qstore_opts o = { 0 };
    char *dir = xasprintf("%s/%s", spool, QSTORE_SPOOL_SUBDIR);
    int err;

    o.map_size = map && map->num > 0 ? (size_t)map->num : 0;
    o.flags = flags;
    if (sync && sync->num == 0)
        o.flags |= QSTORE_NOSYNC;
    err = qstore_open(qs, dir, &o);
    if (dirp)
        *dirp = dir;
    else
        free(dir);
    return err;
}
