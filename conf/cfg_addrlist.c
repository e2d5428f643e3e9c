/*
 * cfg_addrlist.c - <address-list> blocks made usable: the matcher, and the
 * address-file format read and appended to (contract in cfg.h, "address
 * lists")
 *
 * An <address-list> holds `address` lines (a whole address, a local part, or
 * /REGEX/), `domain` lines (a whole domain) and `address-file` lines. An
 * address file has one entry per line: an address, a local part, or (ours)
 * "@domain" for a whole domain; blank lines and lines starting with '#' are
 * skipped. Matching is case-insensitive throughout. A list reads its files
 * when it is made and again when cfg_addrlist_refresh() sees one changed
 * (mtime, size or inode); cfg_addrlist_append() adds an address to the first
 * file (one line, O_APPEND, fsync'd) and to the list in memory.
 *
 * Owns: each struct cfg_addrlist (its sets, compiled regexes, file states).
 *
 * SECURITY: the addresses matched are peer input (recipients); they are
 * only hashed, compared and run through the operator's PCRE2 patterns
 * (library match limits). A file line longer than LINE_MAX_BYTES is
 * skipped with a warning, never split. An appended address must be one
 * line without control bytes, so it cannot add a second entry.
 */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "cfg.h"
#include "msg.h"
#include "xalloc.h"

#define LINE_MAX_BYTES 1024
#define FILES_MAX      16

/* --- a set of lower-case strings (open addressing) -------------------------------- */

struct strset {
    char **slot;
    size_t cap, n;
};

static uint64_t
hash(const char *s)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */

    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ULL;
    return h;
}

static int
set_has(const struct strset *set, const char *s)
{
    if (set->cap == 0)
        return 0;
    for (size_t i = hash(s) & (set->cap - 1);; i = (i + 1) & (set->cap - 1)) {
        if (set->slot[i] == NULL)
            return 0;
        if (strcmp(set->slot[i], s) == 0)
            return 1;
    }
}

static void set_add(struct strset *set, const char *s);

static void
set_grow(struct strset *set)
{
    struct strset bigger = { xcalloc(set->cap ? set->cap * 2 : 64, sizeof(char *)),
                             set->cap ? set->cap * 2 : 64, 0 };

    for (size_t i = 0; i < set->cap; i++)
        if (set->slot[i]) {
            set_add(&bigger, set->slot[i]);
            free(set->slot[i]);
        }
    free(set->slot);
    *set = bigger;
}

static void
set_add(struct strset *set, const char *s)
{
    size_t i;

    if (2 * (set->n + 1) > set->cap)
        set_grow(set);
    for (i = hash(s) & (set->cap - 1); set->slot[i]; i = (i + 1) & (set->cap - 1))
        if (strcmp(set->slot[i], s) == 0)
            return;
    set->slot[i] = xstrdup(s);
    set->n++;
}

static void
set_free(struct strset *set)
{
    for (size_t i = 0; i < set->cap; i++)
        free(set->slot[i]);
    free(set->slot);
    memset(set, 0, sizeof *set);
}

/* --- the list ------------------------------------------------------------------------- */

struct list_file {
    char *path;
    struct stat st; /* as last read */
    int readable;
};

struct cfg_addrlist {
    const struct cfg *cfg; /* borrowed: the list is rebuilt from it */
    uint32_t scope;
    char *name;
    struct strset addrs, locals, domains;
    pcre2_code **res;
    size_t nres;
    pcre2_match_data *md;
    struct list_file files[FILES_MAX];
    size_t nfiles;
};

/* lower - S lower-cased into OUT (size OUTSIZE); a final '.' of a domain goes */
static void
lower(char *out, size_t outsize, const char *s, size_t len)
{
    size_t i;

    if (len >= outsize)
        len = outsize - 1;
    for (i = 0; i < len; i++)
        out[i] = (char)tolower((unsigned char)s[i]);
    out[i] = 0;
    if (i > 1 && out[i - 1] == '.')
        out[i - 1] = 0;
}

/* add_entry - one address, local part or "@domain" (file) / domain (DOMAIN set) */
static void
add_entry(struct cfg_addrlist *l, const char *text, size_t len, int is_domain)
{
    char v[LINE_MAX_BYTES + 1];

    if (len > 0 && text[0] == '@' && !is_domain) {
        text++, len--;
        is_domain = 1;
    }
    if (len == 0)
        return;
    lower(v, sizeof v, text, len);
    if (is_domain)
        set_add(&l->domains, v);
    else if (strchr(v, '@'))
        set_add(&l->addrs, v);
    else
        set_add(&l->locals, v);
}

static void
add_regex(struct cfg_addrlist *l, const char *re, size_t len)
{
    int code;
    PCRE2_SIZE off;
    pcre2_code *c = pcre2_compile((PCRE2_SPTR)re, len, PCRE2_CASELESS, &code, &off, NULL);

    if (c == NULL) { /* pmtad compiled it at load: only a changed library gets here */
        msg_warn("address-list %s: regular expression does not compile; left out", l->name);
        return;
    }
    l->res = xreallocarray(l->res, l->nres + 1, sizeof *l->res);
    l->res[l->nres++] = c;
}

/* read_file - F's entries into L; 0, or -errno (logged) */
static int
read_file(struct cfg_addrlist *l, struct list_file *f)
{
    FILE *fp = fopen(f->path, "re");
    char line[LINE_MAX_BYTES + 2];
    unsigned long n = 0, skipped = 0;

    f->readable = 0;
    if (fp == NULL || fstat(fileno(fp), &f->st) < 0) {
        int e = errno;
        msg_warn("address-list %s: cannot read %s: %s", l->name, f->path, strerror(e));
        if (fp)
            fclose(fp);
        memset(&f->st, 0, sizeof f->st);
        return -e;
    }
    while (fgets(line, sizeof line, fp)) {
        size_t len = strlen(line);
        char *p = line;

        if (len > 0 && line[len - 1] != '\n' && !feof(fp)) { /* too long: skip it whole */
            int ch;
            while ((ch = fgetc(fp)) != EOF && ch != '\n')
                ;
            skipped++;
            continue;
        }
        while (len > 0 && isspace((unsigned char)line[len - 1]))
            line[--len] = 0;
        while (isspace((unsigned char)*p))
            p++, len--;
        if (len == 0 || *p == '#')
            continue;
        add_entry(l, p, len, 0);
        n++;
    }
    fclose(fp);
    f->readable = 1;
    if (skipped)
        msg_warn("address-list %s: %lu line(s) of %s longer than %d bytes skipped", l->name,
                 skipped, f->path, LINE_MAX_BYTES);
    msg_debug("address-list %s: %lu entries from %s", l->name, n, f->path);
    return 0;
}

/* build - every entry of L's scope and files */
static void
build(struct cfg_addrlist *l)
{
    const struct cfg *c = l->cfg;
    const struct cfg_value *v;
    uint32_t it = 0;

    while ((v = cfg_scope_next(c, l->scope, CFG_D_AL_ADDRESS, &it)) != NULL) {
        const char *t = cfg_str(c, v->text);
        size_t len = strlen(t);

        if (len >= 2 && t[0] == '/' && t[len - 1] == '/')
            add_regex(l, t + 1, len - 2);
        else
            add_entry(l, t, len, 0);
    }
    it = 0;
    while ((v = cfg_scope_next(c, l->scope, CFG_D_AL_DOMAIN, &it)) != NULL)
        add_entry(l, cfg_str(c, v->text), strlen(cfg_str(c, v->text)), 1);
    for (size_t i = 0; i < l->nfiles; i++)
        (void)read_file(l, &l->files[i]);
}

static void
clear(struct cfg_addrlist *l)
{
    set_free(&l->addrs);
    set_free(&l->locals);
    set_free(&l->domains);
    for (size_t i = 0; i < l->nres; i++)
        pcre2_code_free(l->res[i]);
    free(l->res);
    l->res = NULL;
    l->nres = 0;
}

struct cfg_addrlist *
cfg_addrlist_new(const struct cfg *c, uint32_t scope)
{
    struct cfg_addrlist *l = xcalloc(1, sizeof *l);
    const struct cfg_value *v;
    uint32_t it = 0;

    l->cfg = c;
    l->scope = scope;
    l->name = xstrdup(*cfg_str(c, c->scopes[scope].name) ? cfg_str(c, c->scopes[scope].name)
                                                         : "(unnamed)");
    while ((v = cfg_scope_next(c, scope, CFG_D_AL_ADDRESS_FILE, &it)) != NULL &&
           l->nfiles < FILES_MAX)
        l->files[l->nfiles++].path = xstrdup(cfg_str(c, v->text));
    l->md = pcre2_match_data_create(1, NULL);
    build(l);
    return l;
}

void
cfg_addrlist_free(struct cfg_addrlist *l)
{
    if (l == NULL)
        return;
    clear(l);
    for (size_t i = 0; i < l->nfiles; i++)
        free(l->files[i].path);
    pcre2_match_data_free(l->md);
    free(l->name);
    free(l);
}

const char *
cfg_addrlist_name(const struct cfg_addrlist *l)
{
    return l->name;
}

int
cfg_addrlist_match(const struct cfg_addrlist *l, const char *addr)
{
    char a[LINE_MAX_BYTES + 1];
    const char *at;
    size_t len = strlen(addr);

    if (len == 0 || len > LINE_MAX_BYTES)
        return 0;
    lower(a, sizeof a, addr, len);
    at = strrchr(a, '@');
    if (set_has(&l->addrs, a) || (at && set_has(&l->domains, at + 1)))
        return 1;
    if (at) {
        char local[LINE_MAX_BYTES + 1];
        memcpy(local, a, (size_t)(at - a));
        local[at - a] = 0;
        if (set_has(&l->locals, local))
            return 1;
    }
    for (size_t i = 0; i < l->nres; i++)
        if (pcre2_match(l->res[i], (PCRE2_SPTR)addr, len, 0, 0, l->md, NULL) >= 0)
            return 1;
    return 0;
}

int
cfg_addrlist_refresh(struct cfg_addrlist *l)
{
    int changed = 0;

    for (size_t i = 0; i < l->nfiles && !changed; i++) {
        struct stat st;
        const struct list_file *f = &l->files[i];

        if (stat(f->path, &st) < 0)
            changed = f->readable;
        else
            changed = !f->readable || st.st_mtim.tv_sec != f->st.st_mtim.tv_sec ||
                      st.st_mtim.tv_nsec != f->st.st_mtim.tv_nsec || st.st_size != f->st.st_size ||
                      st.st_ino != f->st.st_ino;
    }
    if (!changed)
        return 0;
    clear(l);
    build(l);
    msg_info("address-list %s reloaded: %zu addresses, %zu local parts, %zu domains, %zu patterns",
             l->name, l->addrs.n, l->locals.n, l->domains.n, l->nres);
    return 1;
}

int
cfg_addrlist_append(struct cfg_addrlist *l, const char *addr)
{
    char a[LINE_MAX_BYTES + 2];
    size_t len = strlen(addr);
    struct list_file *f = l->nfiles ? &l->files[0] : NULL;
    int fd, rc = 0;

    if (f == NULL)
        return -ENOENT;
    if (len == 0 || len > LINE_MAX_BYTES || !strchr(addr, '@'))
        return -EINVAL;
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)addr[i] <= ' ' || addr[i] == 0x7f)
            return -EINVAL;
    if (cfg_addrlist_match(l, addr))
        return 0; /* already in: the file does not grow */
    lower(a, sizeof a, addr, len);
    set_add(&l->addrs, a);
    strcat(a, "\n");
    if ((fd = open(f->path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640)) < 0)
        return -errno;
    if (write(fd, a, len + 1) != (ssize_t)(len + 1) || fsync(fd) < 0)
        rc = errno ? -errno : -EIO;
    if (rc == 0 && fstat(fd, &f->st) == 0) /* our own change: no reload for it */
        f->readable = 1;
    close(fd);
    return rc;
}

size_t
cfg_addrlist_size(const struct cfg_addrlist *l)
{
    return l->addrs.n + l->locals.n + l->domains.n + l->nres;
}
