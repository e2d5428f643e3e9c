/*
 * qmgr_table.h - string-keyed tables of qmgr's long-lived objects
 *
 * A chained hash table that grows by doubling; entries embed struct
 * qtab_entry (first member) and live until their owner frees the table.
 * Used for the domain routes (qmgr_rollup.c), the source-address limiters
 * (qmgr_source.c) and the warm-up states (qmgr_warmup.c); qmgr_queue.c's
 * open-addressing queue index uses the same hash.
 */
#ifndef PMTA_QMGR_TABLE_H
#define PMTA_QMGR_TABLE_H

#include <stddef.h>
#include <stdint.h>

struct qtab_entry {
    char *key; /* the owner's copy */
    struct qtab_entry *next;
};

struct qtab {
    struct qtab_entry **slots;
    uint32_t cap, n;
};

/* qtab_hash - FNV-1a of LEN bytes of S */
uint32_t qtab_hash(const char *s, size_t len);
/* qtab_find - T's entry of KEY, or NULL */
struct qtab_entry *qtab_find(const struct qtab *t, const char *key);
/* qtab_add - E (KEY set, not yet in T) joins T */
void qtab_add(struct qtab *t, struct qtab_entry *e);
/* qtab_next - every entry of T in turn: start with *SLOT = 0 and PREV NULL; NULL at the end */
struct qtab_entry *qtab_next(const struct qtab *t, uint32_t *slot, struct qtab_entry *prev);
/* qtab_free - FREE_ENTRY(e) for every entry (after the table let go of it), then the slots */
void qtab_free(struct qtab *t, void (*free_entry)(struct qtab_entry *e));

#endif
