/*
 * qmgr_table.c - string-keyed tables of qmgr's long-lived objects (qmgr_table.h)
 *
 * Owns: each table's slot array; the entries belong to the table's owner.
 * SECURITY: none (keys are copied by the owners, compared with strcmp).
 */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include "qmgr_table.h"
#include "xalloc.h"

uint32_t
qtab_hash(const char *s, size_t len)
{
    uint32_t h = 2166136261u;

    for (size_t i = 0; i < len; i++)
        h = (h ^ (uint8_t)s[i]) * 16777619u;
    return h;
}

static void
grow(struct qtab *t)
{
    uint32_t cap = t->cap ? t->cap * 2 : 64;
    struct qtab_entry **slots = xcalloc(cap, sizeof *slots);

    for (uint32_t i = 0; i < t->cap; i++)
        for (struct qtab_entry *e = t->slots[i], *next; e; e = next) {
            uint32_t h = qtab_hash(e->key, strlen(e->key)) & (cap - 1);

            next = e->next;
            e->next = slots[h];
            slots[h] = e;
        }
    free(t->slots);
    t->slots = slots;
    t->cap = cap;
}

struct qtab_entry *
qtab_find(const struct qtab *t, const char *key)
{
    if (t->cap == 0)
        return NULL;
    for (struct qtab_entry *e = t->slots[qtab_hash(key, strlen(key)) & (t->cap - 1)]; e;
         e = e->next)
        if (strcmp(e->key, key) == 0)
            return e;
    return NULL;
}

void
qtab_add(struct qtab *t, struct qtab_entry *e)
{
    uint32_t h;

    if (t->n * 2 >= t->cap)
        grow(t);
    h = qtab_hash(e->key, strlen(e->key)) & (t->cap - 1);
    e->next = t->slots[h];
    t->slots[h] = e;
    t->n++;
}

struct qtab_entry *
qtab_next(const struct qtab *t, uint32_t *slot, struct qtab_entry *prev)
{
    if (prev && prev->next)
        return prev->next;
    if (prev)
        (*slot)++;
    for (; *slot < t->cap; (*slot)++)
        if (t->slots[*slot])
            return t->slots[*slot];
    return NULL;
}

void
qtab_free(struct qtab *t, void (*free_entry)(struct qtab_entry *e))
{
    for (uint32_t i = 0; i < t->cap; i++)
        for (struct qtab_entry *e = t->slots[i], *next; e; e = next) {
            next = e->next;
            free_entry(e);
        }
    free(t->slots);
    memset(t, 0, sizeof *t);
}
