/*
 * qmgr_suppress.c - suppression lists: addresses never sent to
 *
 * Every top-level <address-list> of the configuration is loaded here (with
 * its address-files) when qmgr starts and at each reload. A queue's
 * `suppression-lists` names the lists its recipients are checked against,
 * right before each delivery attempt (qmgr_conn.c, once the transaction's
 * envelope is read): a listed recipient is never sent; it bounces at once
 * with 5.7.1 "recipient is in suppression list NAME" and the category
 * "suppressed" (qmgr_outcome_suppressed). Checking at the attempt, not at
 * receipt, means an address added while mail for it waits (by a bounce or
 * feedback-loop processor, or by the operator editing the file) stops that
 * mail too.
 *
 * The files are looked at again every REFRESH_MS (mtime, size, inode): an
 * edited file takes effect without a reload. qmgr_suppress_add() appends
 * one address to a list's first address-file (fsync'd) and to the list in
 * memory.
 *
 * Owns: the loaded lists (rebuilt per configuration generation).
 *
 * SECURITY: addresses checked and added come from the queue and from
 * parsed reports: cfg_addrlist_append refuses anything that is not one line
 * without control bytes; log lines pass msg_printable().
 */
#include "config.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "msg.h"
#include "qmgr.h"
#include "xalloc.h"

#define REFRESH_MS 2000

static struct {
    struct cfg_addrlist **lists;
    size_t n;
    uint64_t refreshed_ms;
} L;

void
qmgr_suppress_close(void)
{
    for (size_t i = 0; i < L.n; i++)
        cfg_addrlist_free(L.lists[i]);
    free(L.lists);
    L.lists = NULL;
    L.n = 0;
}

/* qmgr_suppress_config - every top-level <address-list> of S.cfg, files read */
void
qmgr_suppress_config(void)
{
    uint32_t it = 0, s;

    qmgr_suppress_close();
    while ((s = cfg_next_scope(S.cfg, CFG_S_ADDRESS_LIST, &it)) != CFG_NONE) {
        if (S.cfg->scopes[s].parent != 0)
            continue; /* a processor's own list: qmgr_reportproc.c */
        L.lists = xreallocarray(L.lists, L.n + 1, sizeof *L.lists);
        L.lists[L.n] = cfg_addrlist_new(S.cfg, s);
        msg_info("address-list %s: %zu entries", cfg_addrlist_name(L.lists[L.n]),
                 cfg_addrlist_size(L.lists[L.n]));
        L.n++;
    }
    L.refreshed_ms = qmgr_now_ms();
}

struct cfg_addrlist *
qmgr_suppress_list(const char *name)
{
    for (size_t i = 0; i < L.n; i++)
        if (strcasecmp(cfg_addrlist_name(L.lists[i]), name) == 0)
            return L.lists[i];
    return NULL;
}

/* refresh - files edited on disk take effect (at most every REFRESH_MS) */
static void
refresh(void)
{
    uint64_t now = qmgr_now_ms();

    if (now - L.refreshed_ms < REFRESH_MS)
        return;
    L.refreshed_ms = now;
    for (size_t i = 0; i < L.n; i++)
        cfg_addrlist_refresh(L.lists[i]);
}

const char *
qmgr_suppressed(struct qqueue *q, const char *addr)
{
    const struct cfg_value *v;
    char names[1024], *save = NULL;

    if (L.n == 0 || (v = qmgr_queue_setting(q, CFG_D_DOMAIN_SUPPRESSION_LISTS)) == NULL)
        return NULL;
    refresh();
    snprintf(names, sizeof names, "%s", cfg_str(S.cfg, v->text));
    for (char *w = strtok_r(names, ", \t", &save); w; w = strtok_r(NULL, ", \t", &save)) {
        struct cfg_addrlist *l = qmgr_suppress_list(w);

        if (l && cfg_addrlist_match(l, addr))
            return cfg_addrlist_name(l);
    }
    return NULL;
}

int
qmgr_suppress_add(const char *list, const char *addr, const char *why)
{
    struct cfg_addrlist *l = qmgr_suppress_list(list);
    char shown[300];
    int err;

    msg_printable(shown, sizeof shown, addr, strlen(addr));
    if (l == NULL) {
        msg_warn("suppression list %s is gone (reloaded): %s not added", list, shown);
        return -ENOENT;
    }
    if (cfg_addrlist_match(l, addr))
        return 0;
    if ((err = cfg_addrlist_append(l, addr)) < 0) {
        msg_warn("cannot add %s to suppression list %s: %s", shown, list, strerror(-err));
        return err;
    }
    msg_info("suppression list %s: %s added (%s)", list, shown, why);
    return 0;
}
