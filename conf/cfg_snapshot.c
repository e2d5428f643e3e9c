/*
 * cfg_snapshot.c - the parsed configuration as a file that workers map
 *
 * Layout (native byte order; the snapshot never leaves the host that wrote it):
 *     struct snap_header   magic "PMTACFG1", format version, sizes, counts,
 *                          offsets of the four arrays, FNV-1a 64 of the body
 *     scopes[nscopes]      struct cfg_scope
 *     values[nvalues]      struct cfg_value (the first CFG_D_COUNT are the defaults),
 *                          structured values with their typed record (version 2, 3)
 *     ints[nints]          int64_t
 *     strings[len]         NUL-terminated strings, offset 0 is ""
 * Each array starts on an 8-byte boundary.
 *
 * Owns the mapping of a mapped snapshot, and cfg_free for both kinds of
 * struct cfg.
 *
 * SECURITY: a worker trusts the snapshot only after cfg_snapshot_map has
 * checked the checksum and every count, offset, index and string offset in it;
 * anything out of bounds is -EPROTO, never a read past the map. Writing is
 * atomic (temporary file, fsync, rename, fsync of the directory), so a reader
 * sees either the old or the new snapshot, never a torn one.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "buf.h"
#include "xalloc.h"
#include "cfg.h"
#include "fdio.h"
#include "cfg_parse.h"

#define SNAP_MAGIC "PMTACFG1"
#define SNAP_VERSION                                                 \
    3u /* 2: typed records of structured values in struct cfg_value; \
         3: volume rates and source limits (the type numbers moved) */
#define SNAP_MAX (1u << 30)

struct snap_header {
    char magic[8];
    uint32_t version;
    uint32_t header_size;
    uint64_t generation;
    uint32_t ndirectives;
    uint32_t scope_size;
    uint32_t value_size;
    uint32_t nscopes;
    uint32_t nvalues;
    uint32_t nints;
    uint32_t strings_len;
    uint32_t reserved;
    uint64_t off_scopes;
    uint64_t off_values;
    uint64_t off_ints;
    uint64_t off_strings;
    uint64_t body_len;
    uint64_t checksum;
};

static uint64_t
fnv1a64(const unsigned char *p, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ull;

    while (n--) {
        h ^= *p++;
        h *= 0x100000001b3ull;
    }
    return h;
}

/* append_aligned - pad BODY to 8 bytes, append N bytes of P; the offset (from file start) */
static uint64_t
append_aligned(struct buf *body, const void *p, size_t n)
{
    static const char zeros[8];
    uint64_t off;

    if (body->len % 8)
        buf_append(body, zeros, 8 - body->len % 8);
    off = sizeof(struct snap_header) + body->len;
    if (n)
        buf_append(body, p, n);
    return off;
}


static void
fsync_dir(const char *path)
{
    char *copy = xstrdup(path);
    int fd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);

    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
    free(copy);
}

/* cfg_snapshot_write - write C atomically to PATH; 0 or -errno */
int
cfg_snapshot_write(const struct cfg *c, const char *path)
{
    struct snap_header h;
    struct buf body;
    char *tmp = xasprintf("%s.tmp.%ld", path, (long)getpid());
    int fd, rc;

    buf_init(&body, 0);
    memset(&h, 0, sizeof h);
    memcpy(h.magic, SNAP_MAGIC, 8);
    h.version = SNAP_VERSION;
    h.header_size = sizeof h;
    h.generation = c->generation;
    h.ndirectives = CFG_D_COUNT;
    h.scope_size = sizeof(struct cfg_scope);
    h.value_size = sizeof(struct cfg_value);
    h.nscopes = c->nscopes;
    h.nvalues = c->nvalues;
    h.nints = c->nints;
    h.strings_len = c->strings_len;
    h.off_scopes = append_aligned(&body, c->scopes, (size_t)c->nscopes * sizeof *c->scopes);
    h.off_values = append_aligned(&body, c->values, (size_t)c->nvalues * sizeof *c->values);
    h.off_ints = append_aligned(&body, c->ints, (size_t)c->nints * sizeof *c->ints);
    h.off_strings = append_aligned(&body, c->strings, c->strings_len);
    h.body_len = body.len;
    h.checksum = fnv1a64((const unsigned char *)body.data, body.len);

    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        rc = -errno;
        goto out;
    }
    if ((rc = fd_write_all(fd, &h, sizeof h)) == 0 &&
        (rc = fd_write_all(fd, body.data, body.len)) == 0 && fsync(fd) != 0)
        rc = -errno;
    if (close(fd) != 0 && rc == 0)
        rc = -errno;
    if (rc == 0 && rename(tmp, path) != 0)
        rc = -errno;
    if (rc != 0)
        unlink(tmp);
    else
        fsync_dir(path);
out:
    buf_free(&body);
    free(tmp);
    return rc;
}

/* region_ok - COUNT elements of SIZE at OFF lie inside the file after the header */
static int
region_ok(uint64_t off, uint64_t count, uint64_t size, uint64_t file_len)
{
    uint64_t bytes = count * size; /* counts are 32-bit and sizes small: no overflow */

    return off % 8 == 0 && off >= sizeof(struct snap_header) && off <= file_len &&
           bytes <= file_len - off;
}

static int
header_ok(const struct snap_header *h, size_t len)
{
    return memcmp(h->magic, SNAP_MAGIC, 8) == 0 && h->version == SNAP_VERSION &&
           h->header_size == sizeof *h && h->ndirectives == CFG_D_COUNT &&
           h->scope_size == sizeof(struct cfg_scope) && h->value_size == sizeof(struct cfg_value) &&
           h->body_len == len - sizeof *h &&
           region_ok(h->off_scopes, h->nscopes, sizeof(struct cfg_scope), len) &&
           region_ok(h->off_values, h->nvalues, sizeof(struct cfg_value), len) &&
           region_ok(h->off_ints, h->nints, sizeof(int64_t), len) &&
           region_ok(h->off_strings, h->strings_len, 1, len) && h->nscopes >= 1 &&
           h->nvalues >= CFG_D_COUNT && h->strings_len >= 1;
}

static int
scope_ok(const struct cfg *c, const struct cfg_scope *s)
{
    return s->kind < CFG_S_COUNT && s->pattern <= CFG_PAT_NAME && s->name < c->strings_len &&
           s->file < c->strings_len && s->parent < c->nscopes && s->prefix <= 128 &&
           s->first <= c->nvalues && s->count <= c->nvalues - s->first;
}

/* record_ok - the string offsets and enums of a structured value's record are in range */
static int
record_ok(const struct cfg *c, const struct cfg_value *v)
{
    uint32_t n = c->strings_len;

    if (v->flags & (CFG_VALUE_CLEAR | CFG_VALUE_UNSET))
        return 1;
    switch ((enum cfg_type)v->type) {
    case CFG_T_REPLY:
        return v->reply.regex < n;
    case CFG_T_PATTERN:
        return v->pattern.regex < n && v->pattern.header < n && v->pattern.target < n &&
               v->pattern.result <= CFG_RESULT_RECIPIENT_PRIORITY;
    case CFG_T_BOUNCE_PATTERN:
        return v->bounce.regex < n && v->bounce.category < n;
    case CFG_T_DOMAIN_KEY:
        return v->key.selector < n && v->key.domain < n && v->key.path < n;
    case CFG_T_MX_ROLLUP:
        return v->rollup.pattern < n && v->rollup.name < n;
    case CFG_T_SOURCE_LIMIT:
        return (v->source.family == AF_INET && v->source.prefix <= 32) ||
               (v->source.family == AF_INET6 && v->source.prefix <= 128);
    default:
        return 1;
    }
}

static int
value_ok(const struct cfg *c, const struct cfg_value *v)
{
    const struct cfg_directive_info *info = cfg_directive_info((enum cfg_directive)v->directive);

    return info && v->type == info->type && v->file < c->strings_len && v->text < c->strings_len &&
           v->list <= c->nints && v->list_len <= c->nints - v->list && record_ok(c, v);
}

/* contents_ok - every index and string offset stays inside the arrays */
static int
contents_ok(const struct cfg *c)
{
    if (c->strings[0] != 0 || c->strings[c->strings_len - 1] != 0 ||
        c->scopes[0].kind != CFG_S_GLOBAL)
        return 0;
    for (uint32_t i = 0; i < c->nscopes; i++)
        if (!scope_ok(c, &c->scopes[i]))
            return 0;
    for (uint32_t i = 0; i < c->nvalues; i++)
        if (!value_ok(c, &c->values[i]) || (i < CFG_D_COUNT && c->values[i].directive != i))
            return 0;
    return 1;
}

/* cfg_snapshot_map - map PATH read-only and validate it; NULL and *ERR on failure */
struct cfg *
cfg_snapshot_map(const char *path, int *err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC), rc = -EPROTO;
    struct stat st;
    void *base = MAP_FAILED;
    const struct snap_header *h;
    struct cfg *c = NULL;
    struct cfg_map *m;

    if (fd < 0) {
        rc = -errno;
        goto fail;
    }
    if (fstat(fd, &st) != 0) {
        rc = -errno;
        goto fail;
    }
    if (st.st_size < (off_t)sizeof *h || st.st_size > SNAP_MAX)
        goto fail;
    base = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (base == MAP_FAILED) {
        rc = -errno;
        goto fail;
    }
    h = base;
    if (!header_ok(h, (size_t)st.st_size) ||
        fnv1a64((const unsigned char *)base + sizeof *h, h->body_len) != h->checksum)
        goto fail;
    c = xcalloc(1, sizeof *c);
    c->generation = h->generation;
    c->scopes = (const void *)((const char *)base + h->off_scopes);
    c->nscopes = h->nscopes;
    c->values = (const void *)((const char *)base + h->off_values);
    c->nvalues = h->nvalues;
    c->ints = (const void *)((const char *)base + h->off_ints);
    c->nints = h->nints;
    c->strings = (const char *)base + h->off_strings;
    c->strings_len = h->strings_len;
    if (!contents_ok(c))
        goto fail;
    m = xcalloc(1, sizeof *m);
    m->owner_kind = CFG_OWNER_MAP;
    m->base = base;
    m->len = (size_t)st.st_size;
    c->owner = m;
    close(fd);
    return c;
fail:
    free(c);
    if (base != MAP_FAILED)
        munmap(base, (size_t)st.st_size);
    if (fd >= 0)
        close(fd);
    if (err)
        *err = rc;
    return NULL;
}

/* cfg_free - release a configuration from cfg_load or cfg_snapshot_map (NULL is fine) */
void
cfg_free(struct cfg *c)
{
    if (c == NULL)
        return;
    if (c->owner && *(uint32_t *)c->owner == CFG_OWNER_HEAP) {
        struct cfg_heap *h = c->owner;
        free(h->scopes);
        free(h->values);
        free(h->ints);
        free(h->strings);
        free(h);
    } else if (c->owner && *(uint32_t *)c->owner == CFG_OWNER_MAP) {
        struct cfg_map *m = c->owner;
        munmap(m->base, m->len);
        free(m);
    }
    free(c);
}
