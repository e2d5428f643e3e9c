/*
 * cfg_parse.c - reads a PowerMTA-style configuration file into struct cfg
 *
 * Text -> logical lines (comments removed) -> tags and directives -> per-block
 * value lists -> flat arrays (struct cfg). Owns the builder state while a load
 * runs, and the heap copy of the result (freed by cfg_free).
 *
 * Layers:
 *   lexer      '#' comments to end of line, <!-- --> comments anywhere (also
 *              spanning lines), "quoted strings" with \" and \\ escapes, a
 *              64 KiB bound per logical line.
 *   blocks     <tag arg> ... </tag> with a stack; <domain> may nest in
 *              <virtual-mta> and <virtual-mta-pool>; unimplemented PowerMTA
 *              blocks are skipped with one warning.
 *   include    glob patterns, relative to the including file, loop detection.
 *   directives looked up in cfg_directives.def, typed values; structured
 *              values and per-directive checks are cfg_check.c's; cross
 *              references are resolved once the whole file has been read.
 *
 * Every problem is reported as file:line through the diagnostics callback and
 * parsing goes on, so one run lists all errors (up to CFG_MAX_ERRORS).
 *
 * SECURITY: the file is trusted operator input, but it is still bounded: line
 * length, include depth, error count, macro expansion size. Paths named in the
 * file (includes, key files) are opened with the privileges of the caller
 * (pmtad, as root); the line grammar, tags and UTF-8 are checked here, so
 * any bytes give errors, never a crash (t/unit/test_cfg_malformed).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <glob.h>
#include <libgen.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "buf.h"
#include "xalloc.h"
#include "msg.h"
#include "cfg.h"
#include "cfg_parse.h"

#define MAX_NESTING    8
#define VMTA_KINDS     (CFG_IN(CFG_S_VMTA) | CFG_IN(CFG_S_POOL))
#define MAX_EXPANSIONS 4096 /* domains one <domain> tag may expand to */
#define MAX_FILE_SIZE  (64u << 20)

/* A block (scope) being filled. */
struct pscope {
    struct cfg_scope s;
    struct cfg_value *vals;
    uint32_t nvals, cap;
};

/* An open tag. A <domain a, b> frame fills several scopes at once. */
struct frame {
    int kind; /* enum cfg_scope_kind, or -1 for a skipped block */
    char tag[48];
    uint32_t *scopes;
    uint32_t nscopes;
    uint32_t file; /* string offset of the file name */
    unsigned line;
    int file_level; /* include depth that opened it */
};

/* A name that must denote an existing block once the whole file is read. */
struct xref {
    uint32_t kinds; /* CFG_IN() mask of acceptable block kinds */
    char *name;
    char *what; /* the directive text, for the message */
    uint32_t file;
    unsigned line;
};

struct macro {
    char *name;
    char **vals;
    int nvals;
};

struct strlist {
    char **v;
    int n, cap;
};

struct cfg_builder {
    struct pscope *scopes;
    uint32_t nscopes, scap;
    int64_t *ints;
    uint32_t nints, icap;
    struct buf strings;
    struct cfg_value defaults[CFG_D_COUNT];
    struct frame stack[MAX_NESTING + 1];
    int depth;
    struct xref *xrefs;
    int nxrefs, xcap;
    struct macro *macros;
    int nmacros, mcap;
    char *files[CFG_INCLUDE_DEPTH + 1]; /* real paths of the files being read */
    int nfiles;
    unsigned errors;
    int gave_up;
    unsigned char warned[CFG_D_COUNT];
    struct strlist warned_tags;
    cfg_diag_fn diag;
    void *ctx;
    /* where the current line came from */
    uint32_t cur_file; /* string offset of the file name (0: none) */
    const char *cur_dir;
    unsigned cur_line;
};

static void parse_text(struct cfg_builder *b, const char *name, const char *text, size_t len);

/* --- diagnostics ----------------------------------------------------------------- */

static void
default_diag(void *ctx, enum cfg_diag_level level, const char *file, unsigned line,
             const char *message)
{
    (void)ctx;
    if (file && line)
        fprintf(stderr, "%s:%u: %s: %s\n", file, line,
                level == CFG_DIAG_ERROR ? "error" : "warning", message);
    else
        fprintf(stderr, "%s%s%s: %s\n", file ? file : "", file ? ": " : "",
                level == CFG_DIAG_ERROR ? "error" : "warning", message);
}

__attribute__((format(printf, 5, 0))) static void
report(struct cfg_builder *b, enum cfg_diag_level level, const char *file, unsigned line,
       const char *fmt, va_list ap)
{
    char message[1024];

    if (b->gave_up)
        return;
    vsnprintf(message, sizeof message, fmt, ap);
    b->diag(b->ctx, level, file, line, message);
    if (level == CFG_DIAG_ERROR && ++b->errors >= CFG_MAX_ERRORS) {
        b->diag(b->ctx, CFG_DIAG_ERROR, file, line, "too many errors; giving up");
        b->gave_up = 1;
    }
}

/* current_file - name of the file being read (the pool may move, so never cache it) */
static const char *
current_file(struct cfg_builder *b)
{
    return b->cur_file ? b->strings.data + b->cur_file : NULL;
}

__attribute__((format(printf, 2, 3))) static void
error(struct cfg_builder *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    report(b, CFG_DIAG_ERROR, current_file(b), b->cur_line, fmt, ap);
    va_end(ap);
}

void
cfg__error(struct cfg_builder *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    report(b, CFG_DIAG_ERROR, current_file(b), b->cur_line, fmt, ap);
    va_end(ap);
}

__attribute__((format(printf, 4, 5))) static void
error_at(struct cfg_builder *b, uint32_t file, unsigned line, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    report(b, CFG_DIAG_ERROR, b->strings.data + file, line, fmt, ap);
    va_end(ap);
}

/* cfg__warning - see cfg_parse.h */
void
cfg__warning(struct cfg_builder *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    report(b, CFG_DIAG_WARNING, current_file(b), b->cur_line, fmt, ap);
    va_end(ap);
}

/* clip - printable copy of (possibly long) offending text for a message */
const char *
cfg__clip(const char *s, char *out, size_t outsize)
{
    size_t i = 0;

    for (; *s && i + 4 < outsize; s++)
        out[i++] = (*s >= 0x20 && *s != 0x7f) || (*s & 0x80) ? *s : '?';
    if (*s)
        memcpy(out + i, "...", 3), i += 3;
    out[i] = 0;
    return out;
}

/* --- builder storage ------------------------------------------------------------- */

/* intern - copy S into the string pool; its offset */
uint32_t
cfg__intern(struct cfg_builder *b, const char *s)
{
    size_t off = b->strings.len;

    if (off + strlen(s) + 1 > UINT32_MAX || buf_append(&b->strings, s, strlen(s) + 1) != 0)
        msg_fatal("configuration string pool overflow");
    return (uint32_t)off;
}

static uint32_t
add_ints(struct cfg_builder *b, const int64_t *v, int n)
{
    uint32_t first = b->nints;

    if (b->nints + (uint32_t)n > b->icap) {
        b->icap = (b->nints + (uint32_t)n) * 2 + 16;
        b->ints = xreallocarray(b->ints, b->icap, sizeof *b->ints);
    }
    memcpy(b->ints + b->nints, v, (size_t)n * sizeof *v);
    b->nints += (uint32_t)n;
    return first;
}

static uint32_t
new_scope(struct cfg_builder *b, enum cfg_scope_kind kind, const char *name, uint32_t parent)
{
    struct pscope *ps;

    if (b->nscopes == b->scap) {
        b->scap = b->scap * 2 + 16;
        b->scopes = xreallocarray(b->scopes, b->scap, sizeof *b->scopes);
    }
    ps = &b->scopes[b->nscopes];
    memset(ps, 0, sizeof *ps);
    ps->s.kind = (uint16_t)kind;
    ps->s.name = cfg__intern(b, name);
    ps->s.parent = parent;
    ps->s.file = b->cur_file;
    ps->s.line = b->cur_line;
    return b->nscopes++;
}

/* scope_put - add V to scope S; a non-repeatable directive replaces its earlier line */
static void
scope_put(struct cfg_builder *b, uint32_t s, const struct cfg_value *v)
{
    struct pscope *ps = &b->scopes[s];
    const struct cfg_directive_info *info = cfg_directive_info((enum cfg_directive)v->directive);

    if (!(info->scopes & CFG_REPEATABLE))
        for (uint32_t i = 0; i < ps->nvals; i++)
            if (ps->vals[i].directive == v->directive) {
                ps->vals[i] = *v;
                return;
            }
    if (ps->nvals == ps->cap) {
        ps->cap = ps->cap * 2 + 8;
        ps->vals = xreallocarray(ps->vals, ps->cap, sizeof *ps->vals);
    }
    ps->vals[ps->nvals++] = *v;
}

static const struct cfg_value *
scope_find(struct cfg_builder *b, uint32_t s, enum cfg_directive d)
{
    for (uint32_t i = 0; i < b->scopes[s].nvals; i++)
        if (b->scopes[s].vals[i].directive == d)
            return &b->scopes[s].vals[i];
    return NULL;
}

static int
find_named(struct cfg_builder *b, uint32_t kinds, const char *name)
{
    for (uint32_t i = 1; i < b->nscopes; i++)
        if ((kinds & CFG_IN(b->scopes[i].s.kind)) &&
            strcasecmp(b->strings.data + b->scopes[i].s.name, name) == 0)
            return (int)i;
    return -1;
}

void
cfg__add_xref(struct cfg_builder *b, uint32_t kinds, const char *name, const char *what)
{
    struct xref *x;

    if (b->nxrefs == b->xcap) {
        b->xcap = b->xcap * 2 + 8;
        b->xrefs = xreallocarray(b->xrefs, (size_t)b->xcap, sizeof *b->xrefs);
    }
    x = &b->xrefs[b->nxrefs++];
    x->kinds = kinds;
    x->name = xstrdup(name);
    x->what = xstrdup(what);
    x->file = b->cur_file;
    x->line = b->cur_line;
}

static void
strlist_add(struct strlist *l, const char *s)
{
    if (l->n == l->cap) {
        l->cap = l->cap * 2 + 8;
        l->v = xreallocarray(l->v, (size_t)l->cap, sizeof *l->v);
    }
    l->v[l->n++] = xstrdup(s);
}

static void
strlist_free(struct strlist *l)
{
    for (int i = 0; i < l->n; i++)
        free(l->v[i]);
    free(l->v);
    l->v = NULL;
    l->n = l->cap = 0;
}

/* --- small text helpers ---------------------------------------------------------- */

char *
cfg__trim(char *s)
{
    char *end;

    while (isspace((unsigned char)*s))
        s++;
    end = s + strlen(s);
    while (end > s && isspace((unsigned char)end[-1]))
        *--end = 0;
    return s;
}

static void
lowercase(char *s)
{
    for (; *s; s++)
        *s = (char)tolower((unsigned char)*s);
}

/*
 * unquote - decode ARG as a single value: either one bare word or one
 * "quoted string" (\" and \\ escapes). Writes into OUT (same size as ARG).
 * Returns 0, -EINVAL (unterminated quote / junk after it) or -E2BIG (several words).
 */
static int
unquote(const char *arg, char *out)
{
    if (*arg != '"') {
        for (const char *p = arg; *p; p++)
            if (isspace((unsigned char)*p))
                return -E2BIG;
        strcpy(out, arg);
        return 0;
    }
    for (arg++; *arg && *arg != '"'; arg++) {
        if (*arg == '\\' && (arg[1] == '"' || arg[1] == '\\'))
            arg++;
        *out++ = *arg;
    }
    *out = 0;
    if (*arg != '"')
        return -EINVAL;
    return arg[1] == 0 ? 0 : -E2BIG;
}

/* next_word - split off the first whitespace-separated word of *P (NUL-terminates it) */
char *
cfg__next_word(char **p)
{
    char *s = *p, *w;

    while (isspace((unsigned char)*s))
        s++;
    if (*s == 0)
        return NULL;
    w = s;
    while (*s && !isspace((unsigned char)*s))
        s++;
    if (*s)
        *s++ = 0;
    *p = s;
    return w;
}

/* define_macro - "domain-macro NAME a, b, c" */
static int
define_macro(struct cfg_builder *b, char *arg)
{
    char *p = arg, *name = cfg__next_word(&p), *save = NULL;
    struct macro *m;

    if (!name || !*cfg__trim(p)) {
        error(b, "domain-macro needs a name and a list of values");
        return -1;
    }
    for (int i = 0; i < b->nmacros; i++)
        if (strcmp(b->macros[i].name, name) == 0) {
            error(b, "domain-macro '%s' defined twice", name);
            return -1;
        }
    if (b->nmacros == b->mcap) {
        b->mcap = b->mcap * 2 + 4;
        b->macros = xreallocarray(b->macros, (size_t)b->mcap, sizeof *b->macros);
    }
    m = &b->macros[b->nmacros++];
    m->name = xstrdup(name);
    m->vals = NULL;
    m->nvals = 0;
    for (char *t = strtok_r(p, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        t = cfg__trim(t);
        if (!*t)
            continue;
        m->vals = xreallocarray(m->vals, (size_t)m->nvals + 1, sizeof *m->vals);
        m->vals[m->nvals++] = xstrdup(t);
    }
    return 0;
}

/* --- typed values ------------------------------------------------------------------ */

static const char *
type_hint(enum cfg_type t)
{
    switch (t) {
    case CFG_T_BOOL:
        return "yes or no";
    case CFG_T_INT:
        return "a whole number";
    case CFG_T_SIZE:
        return "a size such as 50M, 250m or unlimited";
    case CFG_T_INTERVAL:
        return "a time interval such as 10m, 4d12h or never";
    case CFG_T_INTERVAL_LIST:
        return "a list of time intervals such as 10m,1h,4h";
    case CFG_T_RATE:
        return "a rate such as 100/h, 83/5s or unlimited";
    case CFG_T_VOLUME_RATE:
        return "a data volume rate such as 100M/h, 512k/5s or unlimited";
    case CFG_T_PERCENT:
        return "a percentage such as 10% or 0.3%";
    case CFG_T_DAY_CAP:
        return "a day and its cap, such as 3 200";
    case CFG_T_DOUBLING:
        return "an interval and a cap, such as 1d until 50000";
    default:
        return "a value";
    }
}

/*
 * decode_pair - "DAY COUNT" (both >= 1, DAY at most 3650) or "INTERVAL until
 * COUNT" (interval at least 1h: a warm-up plan counts per day) into num, num2
 */
static int
decode_pair(enum cfg_type type, const char *text, struct cfg_value *v)
{
    char first[64], word[16], last[32], extra[2];

    if (type == CFG_T_DAY_CAP)
        return sscanf(text, "%63s %31s %1s", first, last, extra) == 2 &&
                       cfg_parse_int(first, &v->num) == 0 && cfg_parse_int(last, &v->num2) == 0 &&
                       v->num >= 1 && v->num <= 3650 && v->num2 >= 1
                   ? 0
                   : -EINVAL;
    return sscanf(text, "%63s %15s %31s %1s", first, word, last, extra) == 3 &&
                   strcasecmp(word, "until") == 0 && cfg_parse_interval(first, &v->num) == 0 &&
                   v->num >= 3600 && cfg_parse_int(last, &v->num2) == 0 && v->num2 >= 1
               ? 0
               : -EINVAL;
}

/*
 * decode_typed - fill V's typed fields from TEXT for directive D.
 * Returns 0, -EINVAL (syntax) or -ERANGE (too large / outside the directive's range).
 */
static int
decode_typed(struct cfg_builder *b, enum cfg_directive d, const char *text, struct cfg_value *v)
{
    const struct cfg_directive_info *info = cfg_directive_info(d);
    int64_t list[CFG_LIST_MAX], lo, hi;
    int rc = 0;

    switch (info->type) {
    case CFG_T_BOOL:
        rc = cfg_parse_bool(text, &v->num);
        break;
    case CFG_T_INT:
        if (cfg_allows_auto(d) && strcmp(text, "auto") == 0) {
            v->num = CFG_PROCESSES_AUTO;
            break;
        }
        rc = cfg_parse_int(text, &v->num);
        if (rc == 0 && cfg__range(d, &lo, &hi) && (v->num < lo || v->num > hi))
            rc = -ERANGE;
        break;
    case CFG_T_SIZE:
        rc = cfg_parse_size(text, &v->num);
        break;
    case CFG_T_INTERVAL:
        rc = cfg_parse_interval(text, &v->num);
        break;
    case CFG_T_RATE:
        rc = cfg_parse_rate(text, &v->num, &v->num2);
        break;
    case CFG_T_VOLUME_RATE:
        rc = cfg_parse_volume_rate(text, &v->num, &v->num2);
        break;
    case CFG_T_PERCENT:
        rc = cfg_parse_percent(text, &v->num);
        break;
    case CFG_T_DAY_CAP:
    case CFG_T_DOUBLING:
        rc = decode_pair(info->type, text, v);
        break;
    case CFG_T_INTERVAL_LIST:
        rc = cfg_parse_interval_list(text, list, CFG_LIST_MAX);
        if (rc > 0) {
            v->list = add_ints(b, list, rc);
            v->list_len = (uint32_t)rc;
            rc = 0;
        }
        break;
    case CFG_T_ENUM:
        v->num = cfg__enum_index(d, text);
        if (v->num < 0 && strncmp(cfg__enum_words(d), "no|yes|", 7) == 0)
            rc = cfg_parse_bool(text, &v->num); /* yes/no/true/false... for no|yes|X lists */
        else if (v->num < 0)
            rc = -EINVAL;
        break;
    default:
        break;
    }
    return rc;
}

static void
bad_value(struct cfg_builder *b, enum cfg_directive d, const char *text, int rc)
{
    const struct cfg_directive_info *info = cfg_directive_info(d);
    char shown[200], words[160];
    int64_t lo, hi;

    cfg__clip(text, shown, sizeof shown);
    if (rc == -ERANGE && info->type == CFG_T_INT && cfg__range(d, &lo, &hi))
        error(b, "value '%s' for '%s' is out of range (%lld..%lld)", shown, info->name,
              (long long)lo, (long long)hi);
    else if (rc == -ERANGE)
        error(b, "value '%s' for '%s' is too large", shown, info->name);
    else if (info->type == CFG_T_ENUM) {
        snprintf(words, sizeof words, "%s", cfg__enum_words(d));
        for (char *p = words; *p; p++)
            if (*p == '|')
                *p = ',';
        error(b, "bad value '%s' for '%s' (expected one of %s)", shown, info->name, words);
    } else
        error(b, "bad value '%s' for '%s' (expected %s)", shown, info->name, type_hint(info->type));
}

static void
warn_not_implemented(struct cfg_builder *b, enum cfg_directive d)
{
    const char *name = cfg_directive_info(d)->name;

    for (int i = 0; i < CFG_D_COUNT; i++)
        if (b->warned[i] && strcmp(cfg_directive_info((enum cfg_directive)i)->name, name) == 0)
            return;
    b->warned[d] = 1;
    cfg__warning(b, "directive '%s' is not implemented yet; ignored", name);
}

/* store_value - validate ARG for D and add it to every scope of the current block */
static void
store_value(struct cfg_builder *b, enum cfg_directive d, char *arg)
{
    const struct cfg_directive_info *info = cfg_directive_info(d);
    struct frame *f = &b->stack[b->depth];
    struct cfg_value v;
    char *text = xmalloc(strlen(arg) + 1), *scratch = NULL, shown[200];
    int rc;

    memset(&v, 0, sizeof v);
    v.directive = (uint16_t)d;
    v.type = (uint8_t)info->type;
    v.file = b->cur_file;
    v.line = b->cur_line;
    if (cfg_type_takes_line(info->type)) {
        strcpy(text, arg);
        rc = *text ? 0 : -EINVAL;
    } else {
        rc = unquote(arg, text);
    }
    if (rc == -E2BIG) {
        error(b, "too many values for '%s': '%s'", info->name, cfg__clip(arg, shown, sizeof shown));
        goto done;
    }
    if (rc != 0 || (*text == 0 && *arg != '"')) {
        error(b, rc ? "unterminated quoted string for '%s'" : "missing value for '%s'", info->name);
        goto done;
    }
    if (*text == 0) {
        v.flags |= CFG_VALUE_CLEAR; /* "" clears an inherited value */
    } else {
        if (cfg_allows_local(d) &&
            strncasecmp(text, CFG_LOCAL_PREFIX, strlen(CFG_LOCAL_PREFIX)) == 0) {
            /* "local:20/s": the same limit, kept per host in a <cluster> */
            v.flags |= CFG_VALUE_LOCAL;
            memmove(text, text + strlen(CFG_LOCAL_PREFIX),
                    strlen(text + strlen(CFG_LOCAL_PREFIX)) + 1);
        }
        if ((rc = decode_typed(b, d, text, &v)) != 0) {
            bad_value(b, d, text, rc);
            goto done;
        }
        scratch = xstrdup(text);
        if (cfg__decode_record(b, d, scratch, text, &v) != 0)
            goto done;
        strcpy(scratch, text);
        if (d == CFG_D_DOMAIN_MACRO ? define_macro(b, scratch) != 0
                                    : cfg__check_value(b, d, scratch, text) != 0)
            goto done;
    }
    if (info->status == CFG_NOT_IMPLEMENTED)
        warn_not_implemented(b, d);
    if (info->status == CFG_REFUSED) {
        error(b,
              "directive '%s' is not implemented, and ignoring it would change where mail "
              "goes; remove it (PowerMTA honours it, openpmta cannot yet)",
              info->name);
        goto done;
    }
    v.text = cfg__intern(b, text);
    for (uint32_t i = 0; i < f->nscopes; i++)
        scope_put(b, f->scopes[i], &v);
done:
    free(scratch);
    free(text);
}

/* --- includes ----------------------------------------------------------------------- */

static int
read_file(const char *path, char **text, size_t *len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    ssize_t n;
    size_t got = 0;

    if (fd < 0)
        return -errno;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || (uint64_t)st.st_size > MAX_FILE_SIZE) {
        int err = S_ISDIR(st.st_mode) ? -EISDIR : -EFBIG;
        close(fd);
        return err;
    }
    *text = xmalloc((size_t)st.st_size + 1);
    while (got < (size_t)st.st_size && (n = read(fd, *text + got, (size_t)st.st_size - got)) > 0)
        got += (size_t)n;
    close(fd);
    (*text)[got] = 0;
    *len = got;
    return 0;
}

/* load_file - parse PATH in the current block context; detects include loops */
static void
load_file(struct cfg_builder *b, const char *path)
{
    char *real = realpath(path, NULL), *text = NULL;
    size_t len = 0;
    int err;

    for (int i = 0; real && i < b->nfiles; i++)
        if (strcmp(b->files[i], real) == 0) {
            error(b, "include loop: '%s' is already being read", path);
            free(real);
            return;
        }
    if (b->nfiles > CFG_INCLUDE_DEPTH) {
        error(b, "includes nested too deeply (more than %d levels) at '%s'", CFG_INCLUDE_DEPTH,
              path);
        free(real);
        return;
    }
    if ((err = read_file(path, &text, &len)) != 0) {
        error(b, "cannot read %s '%s': %s", b->cur_file ? "include file" : "configuration file",
              path, strerror(-err));
        free(real);
        return;
    }
    b->files[b->nfiles++] = real ? real : xstrdup(path);
    parse_text(b, path, text, len);
    free(b->files[--b->nfiles]);
    free(text);
}

static void do_include_path(struct cfg_builder *b, const char *buf, char *pattern);

static void
do_include(struct cfg_builder *b, char *arg)
{
    char pattern[PATH_MAX], *buf;

    if (strlen(arg) >= PATH_MAX) {
        error(b, "include path too long");
        return;
    }
    buf = xmalloc(strlen(arg) + 1);
    if (unquote(arg, buf) != 0 || !*buf) {
        error(b, "include needs one file name");
        free(buf);
        return;
    }
    do_include_path(b, buf, pattern);
    free(buf);
}

/* do_include_path - include FILE (a name or glob pattern); PATTERN is scratch of PATH_MAX */
static void
do_include_path(struct cfg_builder *b, const char *buf, char *pattern)
{
    glob_t g;
    int rc;

    if (strncasecmp(buf, "http://", 7) == 0 || strncasecmp(buf, "https://", 8) == 0) {
        error(b, "include from a URL is not supported: '%s'", buf);
        return;
    }
    if (buf[0] == '/' || !b->cur_dir)
        strcpy(pattern, buf);
    else if (snprintf(pattern, PATH_MAX, "%s/%s", b->cur_dir, buf) >= PATH_MAX) {
        error(b, "include path too long");
        return;
    }
    if (!strpbrk(buf, "*?[")) {
        load_file(b, pattern);
        return;
    }
    rc = glob(pattern, GLOB_ERR, NULL, &g);
    if (rc == GLOB_NOMATCH)
        cfg__warning(b, "include '%s' matches no file", buf);
    else if (rc != 0)
        error(b, "cannot read include pattern '%s'", buf);
    for (size_t i = 0; rc == 0 && i < g.gl_pathc && !b->gave_up; i++)
        load_file(b, g.gl_pathv[i]);
    if (rc == 0 || rc == GLOB_NOMATCH)
        globfree(&g);
}

/* --- blocks ---------------------------------------------------------------------------- */

/* PowerMTA blocks we know of but do not implement: skipped with one warning. */
static const char *const skipped_blocks[] = {
    "rewrite-list", "email-patterns", "dns", "transmissions-api", "transmissions-api-listener",
};

static int
tag_kind(const char *tag)
{
    for (int k = 1; k < CFG_S_COUNT; k++)
        if (strcmp(cfg__scope_tag((enum cfg_scope_kind)k), tag) == 0)
            return k;
    return -1;
}

/* expansion: macro names being expanded (for loop detection) and the output */
struct expansion {
    const char *stack[16];
    int depth;
    int failed;
};

static const struct macro *
find_macro(struct cfg_builder *b, const char *name, size_t len)
{
    for (int i = 0; i < b->nmacros; i++)
        if (strlen(b->macros[i].name) == len && strncmp(b->macros[i].name, name, len) == 0)
            return &b->macros[i];
    return NULL;
}

static void expand_string(struct cfg_builder *b, struct expansion *x, const char *prefix,
                          const char *s, struct strlist *out);

/* expand_macro - every (fully expanded) value of macro NAME appended to OUT */
static void
expand_macro(struct cfg_builder *b, struct expansion *x, const char *name, size_t len,
             struct strlist *out)
{
    const struct macro *m = find_macro(b, name, len);

    if (!m) {
        error(b, "unknown domain-macro '$%.*s'", (int)len, name);
        x->failed = 1;
        return;
    }
    for (int i = 0; i < x->depth; i++)
        if (strcmp(x->stack[i], m->name) == 0 || x->depth >= 15) {
            error(b, "domain-macro loop: '$%s' refers to itself", m->name);
            x->failed = 1;
            return;
        }
    x->stack[x->depth++] = m->name;
    for (int i = 0; i < m->nvals && !x->failed; i++)
        expand_string(b, x, "", m->vals[i], out);
    x->depth--;
}

/* expand_string - PREFIX + S with every $NAME replaced by each of its values */
static void
expand_string(struct cfg_builder *b, struct expansion *x, const char *prefix, const char *s,
              struct strlist *out)
{
    const char *dollar = strchr(s, '$'), *end;
    struct strlist values = { 0 };

    if (!dollar) {
        char *whole = xasprintf("%s%s", prefix, s);
        if (out->n >= MAX_EXPANSIONS) {
            if (!x->failed)
                error(b, "domain-macro expansion too large (over %d domains)", MAX_EXPANSIONS);
            x->failed = 1;
        } else {
            strlist_add(out, whole);
        }
        free(whole);
        return;
    }
    for (end = dollar + 1; isalnum((unsigned char)*end) || *end == '_' || *end == '-'; end++)
        ;
    expand_macro(b, x, dollar + 1, (size_t)(end - dollar - 1), &values);
    for (int i = 0; i < values.n && !x->failed; i++) {
        char *head = xasprintf("%s%.*s%s", prefix, (int)(dollar - s), s, values.v[i]);
        expand_string(b, x, head, end, out);
        free(head);
    }
    strlist_free(&values);
}

static int
valid_domain_chars(const char *s)
{
    if (!*s)
        return 0;
    for (; *s; s++)
        if (!(isalnum((unsigned char)*s) || *s == '-' || *s == '.' || *s == '_' || (*s & 0x80)))
            return 0;
    return 1;
}

/* add_domain_scope - one <domain PATTERN> scope; PATTERN is expanded and lowercased */
static void
add_domain_scope(struct cfg_builder *b, struct frame *f, char *pat, uint32_t parent, int from_macro)
{
    size_t len = strlen(pat);
    uint8_t pattern, fam = 0, pre = 0, addr[16] = { 0 };
    const char *name = pat;
    uint32_t s;

    lowercase(pat);
    if (len > 1 && pat[len - 1] == '.')
        pat[--len] = 0; /* a trailing dot is ignored */
    if (strcmp(pat, "*") == 0) {
        pattern = CFG_PAT_ALL;
        name = "";
    } else if (strncmp(pat, "[*.]", 4) == 0 && valid_domain_chars(pat + 4)) {
        pattern = CFG_PAT_DOMAIN_AND_SUB;
        name = pat + 4;
    } else if (strncmp(pat, "*.", 2) == 0 && valid_domain_chars(pat + 2)) {
        pattern = CFG_PAT_SUBDOMAINS;
        name = pat + 2;
    } else if (pat[0] == '[' && pat[len - 1] == ']') {
        pat[len - 1] = 0;
        name = pat + 1;
        if (cfg__parse_cidr(name, &fam, &pre, addr) != 0) {
            error(b, "bad CIDR '[%s]' in <domain>", name);
            return;
        }
        pattern = CFG_PAT_CIDR;
    } else if (valid_domain_chars(pat)) {
        pattern = CFG_PAT_EXACT;
    } else {
        error(b,
              "bad domain pattern '%s' (expected *, example.com, *.example.com, "
              "[*.]example.com or [CIDR])",
              pat);
        return;
    }
    s = new_scope(b, CFG_S_DOMAIN, name, parent);
    b->scopes[s].s.pattern = pattern;
    b->scopes[s].s.flags = from_macro ? CFG_SCOPE_FROM_MACRO : 0;
    b->scopes[s].s.family = fam;
    b->scopes[s].s.prefix = pre;
    memcpy(b->scopes[s].s.addr, addr, 16);
    f->scopes = xreallocarray(f->scopes, f->nscopes + 1, sizeof *f->scopes);
    f->scopes[f->nscopes++] = s;
}

/* open_domain - "<domain a.com, *.b.com, yahoo.$TLDS>" -> one scope per domain */
static void
open_domain(struct cfg_builder *b, struct frame *f, char *arg, uint32_t parent)
{
    char *t, *rest = arg;

    while ((t = strsep(&rest, ",")) != NULL) {
        struct strlist out = { 0 };
        struct expansion x = { .depth = 0, .failed = 0 };
        t = cfg__trim(t);
        if (!*t) {
            error(b, "empty domain pattern in <domain>");
            continue;
        }
        expand_string(b, &x, "", t, &out);
        for (int i = 0; i < out.n && !x.failed; i++)
            add_domain_scope(b, f, out.v[i], parent, strchr(t, '$') != NULL);
        strlist_free(&out);
    }
}

static void
open_source(struct cfg_builder *b, struct frame *f, const char *arg)
{
    uint8_t fam = 0, pre = 0, addr[16] = { 0 };
    int is_cidr = isdigit((unsigned char)arg[0]) || strchr(arg, ':') || strchr(arg, '/');
    uint32_t s;

    if (is_cidr && cfg__parse_cidr(arg, &fam, &pre, addr) != 0) {
        error(b, "bad CIDR '%s' in <source>", arg);
        return;
    }
    if (!is_cidr && arg[0] == '{' && strcmp(arg, "{pickup}") != 0 && strcmp(arg, "{auth}") != 0 &&
        strcmp(arg, "{transmissions-api}") != 0) {
        error(b,
              "unknown reserved source name '%s' (expected {pickup}, {auth} or "
              "{transmissions-api})",
              arg);
        return;
    }
    s = new_scope(b, CFG_S_SOURCE, arg, 0);
    b->scopes[s].s.pattern = is_cidr ? CFG_PAT_CIDR : CFG_PAT_NAME;
    b->scopes[s].s.family = fam;
    b->scopes[s].s.prefix = pre;
    memcpy(b->scopes[s].s.addr, addr, 16);
    f->scopes = xmalloc(sizeof *f->scopes);
    f->scopes[f->nscopes++] = s;
}

/* kinds whose block names must be unique (pools share the virtual-mta namespace) */
static uint32_t
unique_namespace(int kind)
{
    switch (kind) {
    case CFG_S_VMTA:
    case CFG_S_POOL:
        return VMTA_KINDS;
    case CFG_S_SMTP_PATTERN_LIST:
    case CFG_S_PATTERN_LIST:
    case CFG_S_SMTP_USER:
    case CFG_S_SENDER:
    case CFG_S_LISTENER:
    case CFG_S_SOURCE_GROUP:
    case CFG_S_DOMAIN_KEY_LIST:
    case CFG_S_ACCT_FILE:
    case CFG_S_ACCT_WEBHOOK:
    case CFG_S_ADDRESS_LIST: /* a processor's own list is not in the namespace (PARENT set) */
    case CFG_S_WARMUP_PLAN:
        return CFG_IN(kind);
    default:
        return 0;
    }
}

static void
open_named(struct cfg_builder *b, struct frame *f, int kind, char *arg, uint32_t parent)
{
    char *name = xmalloc(strlen(arg) + 1), shown[200];
    uint32_t ns = parent ? 0 : unique_namespace(kind), s;
    int prev;

    if (unquote(arg, name) != 0) {
        error(b, "<%s> takes one name, not '%s'", f->tag, cfg__clip(arg, shown, sizeof shown));
        goto out;
    }
    if (kind == CFG_S_ACCT_FILE && name[0] == '|' && !*cfg__trim(name + 1)) {
        error(b, "<acct-file %s> has an empty command (expected |PROGRAM [ARGS])", name);
        goto out;
    }
    if (kind == CFG_S_ACCT_WEBHOOK && strncasecmp(name, "http://", 7) != 0 &&
        strncasecmp(name, "https://", 8) != 0) {
        error(b, "<acct-webhook %s> needs an http:// or https:// URL", name);
        goto out;
    }
    if (ns && (prev = find_named(b, ns, name)) >= 0) {
        error(b, "<%s %s> is already defined at %s:%u", f->tag, name,
              b->strings.data + b->scopes[prev].s.file, b->scopes[prev].s.line);
        goto out;
    }
    if (kind == CFG_S_LISTENER && cfg__check_hostport(b, "smtp-listener address", name, 1) != 0)
        goto out;
    /* a processor's own <address-list NAME>: the name is decoration (PowerMTA's examples
       write one), not a name other directives can refer to */
    s = new_scope(b, (enum cfg_scope_kind)kind, parent ? "" : name, parent);
    f->scopes = xmalloc(sizeof *f->scopes);
    f->scopes[f->nscopes++] = s;
    if (kind == CFG_S_SPOOL && !scope_find(b, 0, CFG_D_SPOOL)) {
        /* the block form names the spool directory too (the first one wins) */
        struct cfg_value v = { .directive = CFG_D_SPOOL,
                               .type = CFG_T_STRING,
                               .flags = CFG_VALUE_FROM_BLOCK,
                               .file = b->cur_file,
                               .line = b->cur_line,
                               .text = b->scopes[s].s.name };
        scope_put(b, 0, &v);
    }
out:
    free(name);
}

/* open_cluster - <cluster> takes no argument and comes once */
static void
open_cluster(struct cfg_builder *b, struct frame *f, const char *arg)
{
    uint32_t s;

    if (*arg) {
        error(b, "<cluster> takes no argument (the servers are redis-server lines inside it)");
        return;
    }
    for (s = 0; s < b->nscopes; s++)
        if (b->scopes[s].s.kind == CFG_S_CLUSTER) {
            error(b, "<cluster> is already defined at %s:%u", b->strings.data + b->scopes[s].s.file,
                  b->scopes[s].s.line);
            return;
        }
    s = new_scope(b, CFG_S_CLUSTER, "", 0);
    f->scopes = xmalloc(sizeof *f->scopes);
    f->scopes[f->nscopes++] = s;
}

static int
is_processor(int kind)
{
    return kind == CFG_S_BOUNCE_PROCESSOR || kind == CFG_S_FBL_PROCESSOR;
}

static int
nesting_allowed(int kind, int parent_kind)
{
    if (parent_kind == CFG_S_GLOBAL)
        return 1;
    if (kind == CFG_S_ADDRESS_LIST && is_processor(parent_kind))
        return 1;
    return kind == CFG_S_DOMAIN && (parent_kind == CFG_S_VMTA || parent_kind == CFG_S_POOL);
}

/* needs_argument - a processor's own <address-list> may be unnamed (PowerMTA) */
static int
needs_argument(int kind, int parent_kind)
{
    if (kind == CFG_S_ADDRESS_LIST)
        return !is_processor(parent_kind);
    return kind != CFG_S_BOUNCE_CATEGORY_PATTERNS && kind != CFG_S_MX_ROLLUP_LIST &&
           kind != CFG_S_CLUSTER && !is_processor(kind);
}

static void
push_frame(struct cfg_builder *b, int kind, const char *tag)
{
    struct frame *f = &b->stack[++b->depth];

    memset(f, 0, sizeof *f);
    f->kind = kind;
    snprintf(f->tag, sizeof f->tag, "%s", tag);
    f->file = b->cur_file;
    f->line = b->cur_line;
    f->file_level = b->nfiles;
}

static void
warn_skipped_block(struct cfg_builder *b, const char *tag)
{
    for (int i = 0; i < b->warned_tags.n; i++)
        if (strcmp(b->warned_tags.v[i], tag) == 0)
            return;
    strlist_add(&b->warned_tags, tag);
    cfg__warning(b, "block <%s> is not implemented yet; ignored", tag);
}

/* open_tag - "<tag arg>": TAG is a checked tag word (lower-cased), ARG the rest */
static void
open_tag(struct cfg_builder *b, char *tag, char *arg)
{
    struct frame *parent = &b->stack[b->depth];
    int kind;

    arg = cfg__trim(arg);
    if (b->depth >= MAX_NESTING) {
        error(b, "blocks nested too deeply at <%s>", tag);
        return;
    }
    kind = tag_kind(tag);
    push_frame(b, -1, tag);
    if (parent->kind < 0)
        return; /* inside a skipped block */
    if (kind < 0) {
        size_t i = 0;
        while (i < sizeof skipped_blocks / sizeof skipped_blocks[0] &&
               strcmp(skipped_blocks[i], tag) != 0)
            i++;
        if (i < sizeof skipped_blocks / sizeof skipped_blocks[0])
            warn_skipped_block(b, tag);
        else
            error(b, "unknown block <%s>", tag);
        return;
    }
    if (!nesting_allowed(kind, parent->kind)) {
        error(b, "<%s> is not allowed inside <%s>", tag, parent->tag);
        return;
    }
    if (needs_argument(kind, parent->kind) && !*arg) {
        error(b, "<%s> needs an argument", tag);
        return;
    }
    b->stack[b->depth].kind = kind;
    if (kind == CFG_S_DOMAIN)
        open_domain(b, &b->stack[b->depth], arg, parent->nscopes ? parent->scopes[0] : 0);
    else if (kind == CFG_S_SOURCE)
        open_source(b, &b->stack[b->depth], arg);
    else if (kind == CFG_S_CLUSTER)
        open_cluster(b, &b->stack[b->depth], arg);
    else
        open_named(b, &b->stack[b->depth], kind, arg,
                   is_processor(parent->kind) && parent->nscopes ? parent->scopes[0] : 0);
}

/*
 * finish_warmup_plan - a plan needs its steps: day lines (each day once), and
 * double-every grows from day 1's cap
 */
static void
finish_warmup_plan(struct cfg_builder *b, struct frame *f)
{
    struct pscope *ps = &b->scopes[f->scopes[0]];
    const char *name = b->strings.data + ps->s.name;
    int have_day1 = 0, ndays = 0, doubling = 0;

    for (uint32_t i = 0; i < ps->nvals; i++) {
        const struct cfg_value *v = &ps->vals[i];

        if (v->directive == CFG_D_WARMUP_DOUBLE_EVERY)
            doubling = 1;
        if (v->directive != CFG_D_WARMUP_DAY || (v->flags & CFG_VALUE_CLEAR))
            continue;
        ndays++;
        have_day1 |= v->num == 1;
        for (uint32_t j = 0; j < i; j++)
            if (ps->vals[j].directive == CFG_D_WARMUP_DAY && ps->vals[j].num == v->num)
                error_at(b, v->file, v->line, "<warmup-plan %s>: day %lld is given twice", name,
                         (long long)v->num);
    }
    if (ndays == 0)
        error_at(b, ps->s.file, ps->s.line,
                 "<warmup-plan %s> has no steps (expected day lines such as 'day 1 50')", name);
    else if (!have_day1)
        error_at(b, ps->s.file, ps->s.line, "<warmup-plan %s> has no 'day 1' line", name);
    if (doubling && ndays > 1)
        error_at(b, ps->s.file, ps->s.line,
                 "<warmup-plan %s>: double-every grows from day 1 alone; drop the other day lines",
                 name);
}

/* finish_listener - a <smtp-listener ADDR> block also lists itself as a global smtp-listener */
static void
finish_listener(struct cfg_builder *b, struct frame *f)
{
    uint32_t s = f->scopes[0];
    const struct cfg_value *src = scope_find(b, s, CFG_D_SOURCE_NAME);
    char *text = xasprintf("%s%s%s", b->strings.data + b->scopes[s].s.name, src ? " source=" : "",
                           src ? b->strings.data + src->text : "");
    struct cfg_value v = { .directive = CFG_D_SMTP_LISTENER,
                           .type = CFG_T_WORDS,
                           .flags = CFG_VALUE_FROM_BLOCK,
                           .file = b->scopes[s].s.file,
                           .line = b->scopes[s].s.line };

    v.text = cfg__intern(b, text);
    scope_put(b, 0, &v);
    free(text);
}

static void
pop_frame(struct cfg_builder *b)
{
    struct frame *f = &b->stack[b->depth];

    if (f->kind == CFG_S_LISTENER && f->nscopes)
        finish_listener(b, f);
    if (f->kind == CFG_S_WARMUP_PLAN && f->nscopes)
        finish_warmup_plan(b, f);
    if (f->kind == CFG_S_CLUSTER && f->nscopes &&
        !scope_find(b, f->scopes[0], CFG_D_CLUSTER_REDIS_SERVER))
        error_at(b, b->scopes[f->scopes[0]].s.file, b->scopes[f->scopes[0]].s.line,
                 "<cluster> needs a redis-server line (HOST:PORT of the shared Redis)");
    free(f->scopes);
    f->scopes = NULL;
    f->nscopes = 0;
    b->depth--;
}

static void
close_tag(struct cfg_builder *b, const char *tag)
{
    int match;

    for (match = b->depth; match > 0 && strcmp(b->stack[match].tag, tag) != 0; match--)
        ;
    if (match == 0 || b->stack[match].file_level != b->nfiles) {
        error(b, "</%s> without an open <%s>", tag, tag);
        return;
    }
    while (b->depth > match) {
        struct frame *f = &b->stack[b->depth];
        error(b, "mismatched </%s>: <%s> opened at %s:%u is not closed", tag, f->tag,
              b->strings.data + f->file, f->line);
        pop_frame(b);
    }
    pop_frame(b);
}

/* --- lines ------------------------------------------------------------------------------ */

static int
include_allowed(int kind)
{
    return kind == CFG_S_GLOBAL || kind == CFG_S_SOURCE || kind == CFG_S_DOMAIN ||
           kind == CFG_S_VMTA || kind == CFG_S_SMTP_PATTERN_LIST;
}

static void
unknown_directive(struct cfg_builder *b, const char *name, int kind)
{
    uint32_t scopes = cfg__directive_scopes(name);
    char where[256], shown[128];
    const char *near;

    if (scopes) {
        error(b, "directive '%s' is not allowed %s%s; it belongs in %s", name,
              kind == CFG_S_GLOBAL ? "at " : "in ", cfg__scope_kind_name((enum cfg_scope_kind)kind),
              cfg__scopes_text(scopes, where, sizeof where));
        return;
    }
    cfg__clip(name, shown, sizeof shown);
    near = cfg_directive_suggest(name);
    if (near)
        error(b, "unknown directive '%s' (did you mean '%s'?)", shown, near);
    else
        error(b, "unknown directive '%s'", shown);
}

/* directive_line - "name value...", "name = value" or, in <bounce-category-patterns>, "/re/ cat" */
static void
directive_line(struct cfg_builder *b, char *line)
{
    int kind = b->stack[b->depth].kind;
    char *arg = line, *name, *eq;
    int d;

    if (kind < 0)
        return; /* inside a skipped block */
    if (kind == CFG_S_BOUNCE_CATEGORY_PATTERNS && line[0] == '/') {
        store_value(b, CFG_D_BOUNCE_CATEGORY_PATTERN, line);
        return;
    }
    while (*arg && !isspace((unsigned char)*arg) && *arg != '=')
        arg++;
    eq = arg;
    while (isspace((unsigned char)*eq))
        eq++;
    if (*eq == '=') /* the seed's "key = value" */
        *eq++ = ' ';
    if (*arg)
        *arg++ = 0;
    name = line;
    arg = cfg__trim(arg);
    lowercase(name);
    if (strcmp(name, "include") == 0) {
        if (include_allowed(kind))
            do_include(b, arg);
        else
            error(b, "include is not allowed in %s",
                  cfg__scope_kind_name((enum cfg_scope_kind)kind));
        return;
    }
    if ((d = cfg_directive_lookup(name, (enum cfg_scope_kind)kind)) < 0) {
        unknown_directive(b, name, kind);
        return;
    }
    if (kind == CFG_S_DOMAIN && b->stack[b->depth].nscopes == 0)
        return; /* its tag was bad; already reported */
    store_value(b, (enum cfg_directive)d, arg);
}

/*
 * tag_word - the tag name at *P: letters, digits and '-' (lower-cased in
 * place, NUL-terminated); *P moves past it. NULL when there is none or it is
 * not followed by a blank or the end.
 */
static char *
tag_word(char **p)
{
    char *s = *p, *word = s;

    while (isalnum((unsigned char)*s) || *s == '-' || *s == '_')
        s++;
    if (s == word || (*s && !isspace((unsigned char)*s)))
        return NULL;
    if (*s)
        *s++ = 0;
    *p = s;
    lowercase(word);
    return word;
}

/* tag_line - "<tag arg>" or "</tag>" (LINE is LEN bytes, starts with '<') */
static void
tag_line(struct cfg_builder *b, char *line, size_t len)
{
    char shown[80], *p, *tag;
    int closing = line[1] == '/';

    cfg__clip(line, shown, sizeof shown);
    if (line[len - 1] != '>') {
        error(b, "tag '%s' is missing its closing '>'", shown);
        return;
    }
    line[len - 1] = 0;
    p = line + 1 + closing;
    if ((tag = tag_word(&p)) == NULL) {
        error(b, "malformed tag '%s' (expected <name ...> or </name>)", shown);
        return;
    }
    if (closing && *cfg__trim(p)) {
        error(b, "closing tag '%s' takes no argument", shown);
        return;
    }
    if (closing)
        close_tag(b, tag);
    else
        open_tag(b, tag, p);
}

static void
handle_line(struct cfg_builder *b, char *line)
{
    size_t len;

    line = cfg__trim(line);
    len = strlen(line);
    if (len == 0)
        return;
    if (line[0] == '<')
        tag_line(b, line, len);
    else
        directive_line(b, line);
}

/* line assembly state of the lexer */
struct lexer {
    struct buf line;
    unsigned start; /* physical line the logical line began on */
    int too_long;
};

/* utf8_valid - are the LEN bytes at S well-formed UTF-8 (no overlongs, surrogates, > U+10FFFF)? */
static int
utf8_valid(const unsigned char *s, size_t len)
{
    size_t i = 0;

    while (i < len) {
        unsigned char c = s[i];
        size_t n;
        unsigned lo = 0x80, hi = 0xbf;

        if (c < 0x80) {
            i++;
            continue;
        }
        if (c >= 0xc2 && c <= 0xdf)
            n = 1;
        else if (c >= 0xe0 && c <= 0xef)
            n = 2, lo = c == 0xe0 ? 0xa0 : 0x80, hi = c == 0xed ? 0x9f : 0xbf;
        else if (c >= 0xf0 && c <= 0xf4)
            n = 3, lo = c == 0xf0 ? 0x90 : 0x80, hi = c == 0xf4 ? 0x8f : 0xbf;
        else
            return 0;
        if (len - i <= n || s[i + 1] < lo || s[i + 1] > hi)
            return 0;
        for (size_t k = 2; k <= n; k++)
            if ((s[i + k] & 0xc0) != 0x80)
                return 0;
        i += n + 1;
    }
    return 1;
}

static void
emit_line(struct cfg_builder *b, struct lexer *lx)
{
    b->cur_line = lx->start;
    if (lx->too_long)
        error(b, "line too long (more than %d bytes)", CFG_LINE_MAX);
    else if (!utf8_valid((const unsigned char *)lx->line.data, lx->line.len))
        error(b, "line is not valid UTF-8 text");
    else if (lx->line.len)
        handle_line(b, lx->line.data);
    buf_reset(&lx->line);
    lx->too_long = 0;
}

static void
put_char(struct lexer *lx, char c)
{
    if (lx->line.len >= CFG_LINE_MAX)
        lx->too_long = 1;
    else
        buf_append(&lx->line, &c, 1);
}

/*
 * parse_text - split TEXT into logical lines: '#' to end of line is a comment,
 * <!-- ... --> is replaced by a space wherever it is (text after a multi-line
 * comment's "-->" continues the line the comment started on), and neither
 * counts inside a "quoted string".
 */
static void
parse_text(struct cfg_builder *b, const char *name, const char *text, size_t len)
{
    const char *saved_dir = b->cur_dir;
    uint32_t saved_file = b->cur_file;
    unsigned saved_line = b->cur_line, phys = 1, comment_line = 0;
    char *dir_copy = xstrdup(name);
    int quoted = 0, depth_at_start = b->depth;
    struct lexer lx = { .start = 1 };

    buf_init(&lx.line, 0);
    b->cur_file = cfg__intern(b, name);
    b->cur_dir = dirname(dir_copy);
    for (size_t i = 0; i < len && !b->gave_up; i++) {
        char c = text[i];
        if (comment_line) { /* inside <!-- --> */
            if (c == '\n')
                phys++;
            else if (c == '-' && i + 2 < len && text[i + 1] == '-' && text[i + 2] == '>') {
                comment_line = 0;
                i += 2;
            }
            continue;
        }
        if (c == '\n') {
            if (quoted) {
                b->cur_line = lx.start;
                error(b, "unterminated quoted string");
                quoted = 0;
            }
            emit_line(b, &lx);
            lx.start = ++phys;
            continue;
        }
        if (c == '\r' && (i + 1 == len || text[i + 1] == '\n'))
            continue;
        if (c == 0) {
            b->cur_line = phys;
            error(b, "NUL byte in configuration text");
            c = ' ';
        }
        if (!quoted && c == '#') {
            while (i + 1 < len && text[i + 1] != '\n')
                i++;
            continue;
        }
        if (!quoted && c == '<' && i + 3 < len && memcmp(text + i, "<!--", 4) == 0) {
            comment_line = phys;
            put_char(&lx, ' ');
            i += 3;
            continue;
        }
        if (c == '\\' && i + 1 < len && text[i + 1] != '\n') {
            put_char(&lx, c);
            c = text[++i];
        } else if (c == '"') {
            quoted = !quoted;
        }
        put_char(&lx, c);
    }
    if (comment_line) {
        b->cur_line = comment_line;
        error(b, "unterminated <!-- comment");
    }
    emit_line(b, &lx);
    b->cur_line = phys;
    while (b->depth > depth_at_start) {
        struct frame *f = &b->stack[b->depth];
        error_at(b, f->file, f->line, "<%s> is not closed by the end of %s", f->tag, name);
        pop_frame(b);
    }
    buf_free(&lx.line);
    free(dir_copy);
    b->cur_file = saved_file;
    b->cur_dir = saved_dir;
    b->cur_line = saved_line;
}

/* --- after the whole file ------------------------------------------------------------------ */

static void
kinds_text(uint32_t kinds, char *out, size_t outsize)
{
    if (kinds == VMTA_KINDS)
        snprintf(out, outsize, "<virtual-mta> or <virtual-mta-pool>");
    else
        cfg__scopes_text(kinds, out, outsize);
}

static void
check_xrefs(struct cfg_builder *b)
{
    for (int i = 0; i < b->nxrefs; i++) {
        struct xref *x = &b->xrefs[i];
        char kinds[128];
        if (find_named(b, x->kinds, x->name) >= 0)
            continue;
        kinds_text(x->kinds, kinds, sizeof kinds);
        error_at(b, x->file, x->line, "%s '%s': no %s named '%s' is defined", x->what, x->name,
                 kinds, x->name);
    }
}

/* make_defaults - the built-in value of every directive (slot d of the values array) */
static void
make_defaults(struct cfg_builder *b)
{
    for (int d = 0; d < CFG_D_COUNT; d++) {
        const struct cfg_directive_info *info = cfg_directive_info((enum cfg_directive)d);
        struct cfg_value *v = &b->defaults[d];
        memset(v, 0, sizeof *v);
        v->directive = (uint16_t)d;
        v->type = (uint8_t)info->type;
        if (!info->default_text) {
            v->flags = CFG_VALUE_UNSET;
            continue;
        }
        v->text = cfg__intern(b, info->default_text);
        if (decode_typed(b, (enum cfg_directive)d, info->default_text, v) != 0)
            msg_panic("bad built-in default '%s' for '%s'", info->default_text, info->name);
    }
}

/* finish - lay the per-scope value lists out as one array and hand back a struct cfg */
static struct cfg *
finish(struct cfg_builder *b)
{
    struct cfg_heap *h = xcalloc(1, sizeof *h);
    struct cfg *c = xcalloc(1, sizeof *c);

    h->owner_kind = CFG_OWNER_HEAP;
    uint32_t nvalues = CFG_D_COUNT;
    struct timespec ts;

    for (uint32_t s = 0; s < b->nscopes; s++)
        nvalues += b->scopes[s].nvals;
    h->values = xreallocarray(NULL, nvalues, sizeof *h->values);
    h->scopes = xreallocarray(NULL, b->nscopes, sizeof *h->scopes);
    memcpy(h->values, b->defaults, sizeof b->defaults);
    nvalues = CFG_D_COUNT;
    for (uint32_t s = 0; s < b->nscopes; s++) {
        h->scopes[s] = b->scopes[s].s;
        h->scopes[s].first = nvalues;
        h->scopes[s].count = b->scopes[s].nvals;
        if (b->scopes[s].nvals)
            memcpy(h->values + nvalues, b->scopes[s].vals, b->scopes[s].nvals * sizeof *h->values);
        nvalues += b->scopes[s].nvals;
    }
    h->ints = b->ints;
    b->ints = NULL;
    c->strings_len = (uint32_t)b->strings.len;
    h->strings = buf_detach(&b->strings, NULL);
    clock_gettime(CLOCK_REALTIME, &ts);
    c->generation = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
    c->scopes = h->scopes;
    c->nscopes = b->nscopes;
    c->values = h->values;
    c->nvalues = nvalues;
    c->ints = h->ints;
    c->nints = b->nints;
    c->strings = h->strings;
    c->owner = h;
    return c;
}

static void
builder_init(struct cfg_builder *b, cfg_diag_fn diag, void *ctx)
{
    memset(b, 0, sizeof *b);
    b->diag = diag ? diag : default_diag;
    b->ctx = ctx;
    buf_init(&b->strings, 0);
    cfg__intern(b, ""); /* offset 0 is "" */
    make_defaults(b);
    b->cur_file = 0;
    new_scope(b, CFG_S_GLOBAL, "", 0);
    b->stack[0].kind = CFG_S_GLOBAL;
    snprintf(b->stack[0].tag, sizeof b->stack[0].tag, "global");
    b->stack[0].scopes = xmalloc(sizeof(uint32_t));
    b->stack[0].scopes[0] = 0;
    b->stack[0].nscopes = 1;
}

static void
builder_free(struct cfg_builder *b)
{
    for (uint32_t s = 0; s < b->nscopes; s++)
        free(b->scopes[s].vals);
    free(b->scopes);
    free(b->ints);
    buf_free(&b->strings);
    while (b->depth > 0)
        pop_frame(b);
    free(b->stack[0].scopes);
    for (int i = 0; i < b->nxrefs; i++) {
        free(b->xrefs[i].name);
        free(b->xrefs[i].what);
    }
    free(b->xrefs);
    for (int i = 0; i < b->nmacros; i++) {
        for (int j = 0; j < b->macros[i].nvals; j++)
            free(b->macros[i].vals[j]);
        free(b->macros[i].vals);
        free(b->macros[i].name);
    }
    free(b->macros);
    strlist_free(&b->warned_tags);
}

/* error_file - an error at FILE:LINE of the finished configuration (its own string pool) */
__attribute__((format(printf, 4, 5))) static void
error_file(struct cfg_builder *b, const char *file, unsigned line, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    report(b, CFG_DIAG_ERROR, file, line, fmt, ap);
    va_end(ap);
}

/*
 * check_delivery_types - a <domain> whose `type` is pipe, file or
 * http-delivery must see what that type needs (command, file-destination,
 * http-delivery-url) where it applies: an error at the type line, never mail
 * left waiting for a setting that will not come. Returns the errors found.
 */
static unsigned
check_delivery_types(struct cfg_builder *b, const struct cfg *c)
{
    static const struct {
        int type;
        enum cfg_directive needs;
    } needs[] = { { CFG_TYPE_PIPE, CFG_D_COMMAND },
                  { CFG_TYPE_FILE, CFG_D_FILE_DESTINATION },
                  { CFG_TYPE_HTTP, CFG_D_HTTP_DELIVERY_URL } };
    unsigned errors = 0;
    uint32_t it = 0, s;
    struct cfg_resolved res;

    while ((s = cfg_next_scope(c, CFG_S_DOMAIN, &it)) != CFG_NONE) {
        const struct cfg_value *t = cfg_scope_get(c, s, CFG_D_TYPE), *v;
        const struct cfg_scope *sc = &c->scopes[s];
        const char *name = c->scopes[s].pattern == CFG_PAT_ALL ? "any.invalid"
                                                               : cfg_str(c, sc->name);
        const char *vmta = sc->parent && c->scopes[sc->parent].kind == CFG_S_VMTA
                               ? cfg_str(c, c->scopes[sc->parent].name)
                               : NULL;

        if (!t || (t->flags & CFG_VALUE_CLEAR) || cfg_resolve_queue(c, name, vmta, &res) < 0)
            continue;
        for (size_t i = 0; i < sizeof needs / sizeof needs[0]; i++) {
            if (t->num != needs[i].type)
                continue;
            v = res.v[needs[i].needs];
            if (v && !(v->flags & (CFG_VALUE_UNSET | CFG_VALUE_CLEAR)))
                continue;
            error_file(b, cfg_str(c, t->file), t->line,
                       "type %s needs %s (none applies to <domain %s>)",
                       cfg_delivery_type_name((int)t->num),
                       cfg_directive_info(needs[i].needs)->name, cfg_str(c, sc->name));
            errors++;
        }
    }
    return errors;
}

/* builder_diag - a cfg_diag_fn for checks of the finished configuration: counted as ours */
static void
builder_diag(void *ctx, enum cfg_diag_level level, const char *file, unsigned line,
             const char *message)
{
    struct cfg_builder *b = ctx;

    if (level == CFG_DIAG_ERROR)
        error_file(b, file, line, "%s", message);
    else
        b->diag(b->ctx, level, file, line, message);
}

static struct cfg *
complete(struct cfg_builder *b, unsigned *nerrors)
{
    struct cfg *c = NULL;

    if (!b->gave_up)
        check_xrefs(b);
    if (b->errors == 0 && (c = finish(b)) != NULL &&
        check_delivery_types(b, c) + cfg_check_dkim_algorithms(c, builder_diag, b) > 0) {
        cfg_free(c);
        c = NULL;
    }
    if (nerrors)
        *nerrors = b->errors;
    builder_free(b);
    return c;
}

/* cfg_load - parse and validate PATH with its includes */
struct cfg *
cfg_load(const char *path, cfg_diag_fn diag, void *ctx, unsigned *nerrors)
{
    struct cfg_builder b;

    builder_init(&b, diag, ctx);
    load_file(&b, path);
    return complete(&b, nerrors);
}

/* cfg_load_buffer - the same for LEN bytes at TEXT (any bytes); includes are relative to NAME */
struct cfg *
cfg_load_buffer(const char *name, const char *text, size_t len, cfg_diag_fn diag, void *ctx,
                unsigned *nerrors)
{
    struct cfg_builder b;

    builder_init(&b, diag, ctx);
    if (len > MAX_FILE_SIZE)
        error(&b, "%s: configuration text larger than %u bytes", name, MAX_FILE_SIZE);
    else
        parse_text(&b, name, text, len);
    return complete(&b, nerrors);
}

/* cfg_load_string - the same for a NUL-terminated TEXT */
struct cfg *
cfg_load_string(const char *name, const char *text, cfg_diag_fn diag, void *ctx, unsigned *nerrors)
{
    return cfg_load_buffer(name, text, strlen(text), diag, ctx, nerrors);
}
