/*
 * cleanup_dkim.c - DKIM signing with OpenDKIM: key cache, key choice, signing
 *
 * Owns: the OpenDKIM library handle (dkim_init/dkim_close), the cache of
 * loaded private keys (PEM text, freed with the cache), each keylist and
 * each per-message DKIM handle (dkim_free before returning). See
 * cleanup_dkim.h for the contract. Nothing here canonicalises or hashes by
 * hand: that is all OpenDKIM's.
 *
 * SECURITY: key files are read with a size cap and checked by
 * conf/cfg_key.c (OpenSSL, a password callback that refuses: an encrypted
 * key fails, it never prompts on a terminal). Error text names paths, never key bytes. The identity
 * comes from Sender/From (peer input); only a checked, lower-cased domain
 * name derived from it reaches OpenDKIM (as d= for `*` keys).
 */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <opendkim/dkim.h>
#include <openssl/crypto.h>

#include "buf.h"
#include "cfg.h"
#include "msg.h"
#include "xalloc.h"

#include "cleanup_dkim.h"

#define DOMAIN_MAX  253
#define SIGHDR_NAME "DKIM-Signature"

struct cleanup_dkim_key {
    char *path;
    dev_t dev;
    ino_t ino;
    off_t size;
    struct timespec mtime;
    char *pem; /* NUL-terminated PEM text for dkim_sign() */
    struct cleanup_dkim_key *next;
};

struct cleanup_dkim {
    DKIM_LIB *lib;
    /* Newest first. A reloaded key gets a new entry; older ones stay valid
     * until cleanup_dkim_free() because keylists of the old config may still
     * point at them while transactions finish. */
    struct cleanup_dkim_key *keys;
};

struct keylist_entry {
    char *selector;
    char *domain; /* lower-case, no trailing dot; "*" = any */
    const struct cleanup_dkim_key *key;
};

struct cleanup_dkim_keylist {
    struct keylist_entry *v;
    size_t n, cap;
};

/* --- library handle ----------------------------------------------------- */

/* cleanup_dkim_create - see cleanup_dkim.h */
struct cleanup_dkim *
cleanup_dkim_create(char *err, size_t errlen)
{
    struct cleanup_dkim *dk;
    unsigned int flags = DKIM_LIBFLAGS_FIXCRLF;

    dk = xcalloc(1, sizeof(*dk));
    if ((dk->lib = dkim_init(NULL, NULL)) == NULL) {
        snprintf(err, errlen, "dkim_init failed");
        free(dk);
        return NULL;
    }
    /* Input is CRLF already; FIXCRLF makes OpenDKIM tolerate any stray LF. */
    if (dkim_options(dk->lib, DKIM_OP_SETOPT, DKIM_OPTS_FLAGS, &flags, sizeof(flags)) !=
        DKIM_STAT_OK) {
        snprintf(err, errlen, "dkim_options(FLAGS) failed");
        cleanup_dkim_free(dk);
        return NULL;
    }
    return dk;
}

/* cleanup_dkim_free - see cleanup_dkim.h */
void
cleanup_dkim_free(struct cleanup_dkim *dk)
{
    struct cleanup_dkim_key *k, *next;

    if (dk == NULL)
        return;
    for (k = dk->keys; k; k = next) {
        next = k->next;
        if (k->pem) {
            /* Key bytes should not linger in freed heap memory. */
            OPENSSL_cleanse(k->pem, strlen(k->pem));
            free(k->pem);
        }
        free(k->path);
        free(k);
    }
    if (dk->lib)
        dkim_close(dk->lib);
    free(dk);
}

/* --- key cache ---------------------------------------------------------- */

static int
same_file(const struct cleanup_dkim_key *k, const struct stat *st)
{
    return k->dev == st->st_dev && k->ino == st->st_ino && k->size == st->st_size &&
           k->mtime.tv_sec == st->st_mtim.tv_sec && k->mtime.tv_nsec == st->st_mtim.tv_nsec;
}

static struct cleanup_dkim_key *
cached_key(struct cleanup_dkim *dk, const char *path, const struct stat *st)
{
    struct cleanup_dkim_key *k;

    for (k = dk->keys; k; k = k->next)
        if (strcmp(k->path, path) == 0)
            return same_file(k, st) ? k : NULL; /* newest entry decides */
    return NULL;
}

/* cleanup_dkim_key_load - see cleanup_dkim.h */
const struct cleanup_dkim_key *
cleanup_dkim_key_load(struct cleanup_dkim *dk, const char *path, int *errnop, char *err,
                      size_t errlen)
{
    struct cleanup_dkim_key *k;
    struct stat st;
    char *pem = NULL, why[256];
    int r;

    /* A stat first: an unchanged cached key costs no read and no parse. */
    if (stat(path, &st) == 0 && (k = cached_key(dk, path, &st)) != NULL)
        return k;
    /* conf/cfg_key.c owns what a usable key is: pmtad checked it at load, as our user. */
    if ((r = cfg_dkim_key_read(path, &st, &pem, why, sizeof why)) < 0)
        snprintf(err, errlen, "cannot read DKIM key %s: %s", path, why);
    else if ((r = cfg_dkim_key_check(pem, (size_t)st.st_size, why, sizeof why)) < 0)
        snprintf(err, errlen, "%s: %s", path, why);
    if (r < 0) {
        if (pem)
            OPENSSL_cleanse(pem, (size_t)st.st_size);
        free(pem);
        if (errnop)
            *errnop = -r;
        return NULL;
    }
    k = xcalloc(1, sizeof(*k));
    k->path = xstrdup(path);
    k->dev = st.st_dev;
    k->ino = st.st_ino;
    k->size = st.st_size;
    k->mtime = st.st_mtim;
    k->pem = pem;
    k->next = dk->keys;
    dk->keys = k;
    return k;
}

/* --- keylists and key choice -------------------------------------------- */

struct cleanup_dkim_keylist *
cleanup_dkim_keylist_create(void)
{
    return xcalloc(1, sizeof(struct cleanup_dkim_keylist));
}

void
cleanup_dkim_keylist_free(struct cleanup_dkim_keylist *list)
{
    size_t i;

    if (list == NULL)
        return;
    for (i = 0; i < list->n; i++) {
        free(list->v[i].selector);
        free(list->v[i].domain);
    }
    free(list->v);
    free(list);
}

/* domain_ok - letters, digits, '-', '_' and dots between non-empty labels */
static int
domain_ok(const char *d)
{
    size_t i, label = 0;

    for (i = 0; d[i]; i++) {
        unsigned char c = (unsigned char)d[i];

        if (c == '.') {
            if (label == 0)
                return 0;
            label = 0;
        } else if (isalnum(c) || c == '-' || c == '_') {
            label++;
        } else {
            return 0;
        }
    }
    return i > 0 && i <= DOMAIN_MAX && label > 0;
}

/* normalise_domain - lower-case copy of D without one trailing dot */
static char *
normalise_domain(const char *d)
{
    char *s = xstrdup(d);
    size_t i, n = strlen(s);

    if (n > 1 && s[n - 1] == '.')
        s[n - 1] = '\0';
    for (i = 0; s[i]; i++)
        s[i] = (char)tolower((unsigned char)s[i]);
    return s;
}

/* selector_ok - a selector is dot-separated labels, like a domain */
static int
selector_ok(const char *s)
{
    return domain_ok(s);
}

/* cleanup_dkim_keylist_add - see cleanup_dkim.h */
int
cleanup_dkim_keylist_add(struct cleanup_dkim *dk, struct cleanup_dkim_keylist *list,
                         const char *selector, const char *domain, const char *path, char *err,
                         size_t errlen)
{
    const struct cleanup_dkim_key *key;
    struct keylist_entry *e;
    char *dom;
    int eno = EINVAL;

    if (!selector || !selector_ok(selector)) {
        snprintf(err, errlen, "domain-key: invalid selector \"%s\"", selector ? selector : "");
        return -EINVAL;
    }
    dom = normalise_domain(domain ? domain : "");
    if (strcmp(dom, "*") != 0 && !domain_ok(dom)) {
        snprintf(err, errlen, "domain-key: invalid domain \"%s\"", domain ? domain : "");
        free(dom);
        return -EINVAL;
    }
    if ((key = cleanup_dkim_key_load(dk, path, &eno, err, errlen)) == NULL) {
        free(dom);
        return -eno;
    }
    if (list->n == list->cap) {
        list->cap = list->cap ? list->cap * 2 : 4;
        list->v = xreallocarray(list->v, list->cap, sizeof(*list->v));
    }
    e = &list->v[list->n++];
    e->selector = xstrdup(selector);
    e->domain = dom;
    e->key = key;
    return 0;
}

/* domain_matches - KEYDOM is "*", IDDOM itself, or a parent of IDDOM */
static int
domain_matches(const char *keydom, const char *iddom)
{
    size_t kl = strlen(keydom), il = strlen(iddom);

    if (strcmp(keydom, "*") == 0 || strcmp(keydom, iddom) == 0)
        return 1;
    return il > kl && iddom[il - kl - 1] == '.' && strcmp(iddom + il - kl, keydom) == 0;
}

/* cleanup_dkim_choose - see cleanup_dkim.h */
int
cleanup_dkim_choose(const struct cleanup_dkim_keylist *const *lists, size_t nlists,
                    const char *identity_domain, struct cleanup_dkim_choice *choice)
{
    size_t l, i;

    for (l = 0; l < nlists; l++) {
        if (lists[l] == NULL)
            continue;
        for (i = 0; i < lists[l]->n; i++) {
            const struct keylist_entry *e = &lists[l]->v[i];

            if (!domain_matches(e->domain, identity_domain))
                continue;
            choice->selector = e->selector;
            choice->domain = strcmp(e->domain, "*") == 0 ? identity_domain : e->domain;
            choice->key = e->key;
            return 1;
        }
    }
    return 0;
}

/* --- the signing identity ----------------------------------------------- */

/*
 * Address scanner state. RFC 5322 lets a mailbox be `addr-spec`,
 * `display-name <addr-spec>` or appear inside `group: ...;`, with comments
 * (nested, with quoted-pairs) anywhere and quoted local parts that may
 * themselves hold '@', '<', ',' or ':'.
 */
struct addr_scan {
    char *out; /* collected addr-spec characters */
    size_t len;
    size_t at; /* index of the last '@' outside quotes, or SIZE_MAX */
    int in_angle;
    int done;
};

static void
scan_reset(struct addr_scan *s)
{
    s->len = 0;
    s->at = SIZE_MAX;
}

static void
scan_put(struct addr_scan *s, char c)
{
    if (c == '@')
        s->at = s->len;
    s->out[s->len++] = c;
}

/* skip_comment - V[I] is '('; return the index just past the matching ')' */
static size_t
skip_comment(const char *v, size_t i)
{
    int depth = 0;

    for (; v[i]; i++) {
        if (v[i] == '\\' && v[i + 1])
            i++;
        else if (v[i] == '(')
            depth++;
        else if (v[i] == ')' && --depth == 0)
            return i + 1;
    }
    return i;
}

/* copy_quoted - V[I] is '"'; copy the quoted string (no '@' inside counts) */
static size_t
copy_quoted(struct addr_scan *s, const char *v, size_t i)
{
    s->out[s->len++] = v[i++];
    for (; v[i] && v[i] != '"'; i++) {
        if (v[i] == '\\' && v[i + 1])
            s->out[s->len++] = v[i++];
        s->out[s->len++] = v[i];
    }
    if (v[i] == '"')
        s->out[s->len++] = v[i++];
    return i;
}

/* scan_special - one structural character outside quotes and comments */
static void
scan_special(struct addr_scan *s, char c)
{
    switch (c) {
    case '<':
        scan_reset(s); /* what came before was a display name */
        s->in_angle = 1;
        break;
    case '>':
        if (s->in_angle)
            s->done = 1;
        break;
    case ':':
        scan_reset(s); /* group name, or an obsolete route */
        break;
    case ',':
    case ';':
        if (!s->in_angle && s->at != SIZE_MAX)
            s->done = 1; /* end of the first mailbox */
        else if (!s->in_angle)
            scan_reset(s);
        break;
    default:
        if (c != ' ' && c != '\t')
            scan_put(s, c);
    }
}

/* domain_from_addr - the checked, lower-cased domain after S's last '@' */
static int
domain_from_scan(const struct addr_scan *s, char *out, size_t outsize)
{
    size_t n;
    char *d;

    if (s->at == SIZE_MAX || s->at + 1 >= s->len)
        return -EINVAL;
    n = s->len - s->at - 1;
    if (n >= outsize)
        return -EINVAL;
    memcpy(out, s->out + s->at + 1, n);
    out[n] = '\0';
    d = normalise_domain(out);
    snprintf(out, outsize, "%s", d);
    free(d);
    return domain_ok(out) ? 0 : -EINVAL;
}

/* cleanup_address_domain - see cleanup_dkim.h */
int
cleanup_address_domain(const char *value, char *out, size_t outsize)
{
    struct addr_scan s;
    size_t i = 0;
    int r;

    memset(&s, 0, sizeof(s));
    s.out = xmalloc(strlen(value) + 1);
    scan_reset(&s);
    while (value[i] && !s.done) {
        if (value[i] == '(')
            i = skip_comment(value, i);
        else if (value[i] == '"')
            i = copy_quoted(&s, value, i);
        else
            scan_special(&s, value[i++]);
    }
    r = domain_from_scan(&s, out, outsize);
    free(s.out);
    return r;
}

/* identity_domain_of - "user@dom", "@dom" or "dom" from configuration */
static int
identity_domain_of(const char *ident, char *out, size_t outsize)
{
    char *d;
    int ok;

    if (strchr(ident, '@'))
        return cleanup_address_domain(ident, out, outsize);
    d = normalise_domain(ident);
    ok = strlen(d) < outsize && domain_ok(d);
    if (ok)
        snprintf(out, outsize, "%s", d);
    free(d);
    return ok ? 0 : -EINVAL;
}

/* cleanup_dkim_identity_domain - see cleanup_dkim.h */
int
cleanup_dkim_identity_domain(const struct cleanup_message *msg,
                             const struct cleanup_dkim_opts *opts, char *out, size_t outsize)
{
    const struct cleanup_header *h;

    if (opts && opts->identity)
        return identity_domain_of(opts->identity, out, outsize) == 0 ? 0 : -ENOENT;
    /* An unparsable Sender does not hide a good From: fall through to it. */
    if ((h = cleanup_message_find(msg, "Sender")) != NULL &&
        cleanup_address_domain(h->value, out, outsize) == 0)
        return 0;
    if ((h = cleanup_message_find(msg, "From")) != NULL &&
        cleanup_address_domain(h->value, out, outsize) == 0)
        return 0;
    if (opts && opts->fallback_identity &&
        identity_domain_of(opts->fallback_identity, out, outsize) == 0)
        return 0;
    return -ENOENT;
}

/* --- signing ------------------------------------------------------------ */

/* header_list - dkim-headers as a NULL-terminated array; From always in it */
static char **
header_list(const char *spec)
{
    char *copy = xstrdup(spec ? spec : CLEANUP_DKIM_DEFAULT_HEADERS), *tok, *save = NULL;
    char **v = xcalloc(strlen(copy) / 2 + 3, sizeof(*v));
    size_t n = 0, i;
    int have_from = 0;

    for (tok = strtok_r(copy, ":, \t", &save); tok; tok = strtok_r(NULL, ":, \t", &save)) {
        for (i = 0; tok[i]; i++) /* OpenDKIM compiles the list into a regex */
            if (!isalnum((unsigned char)tok[i]) && tok[i] != '-' && tok[i] != '_')
                break;
        if (tok[i] != '\0')
            continue;
        have_from |= strcasecmp(tok, "from") == 0;
        v[n++] = xstrdup(tok);
    }
    if (!have_from) /* RFC 6376 5.4: From MUST be signed */
        v[n++] = xstrdup("from");
    free(copy);
    return v;
}

static void
free_list(char **v)
{
    size_t i;

    for (i = 0; v && v[i]; i++)
        free(v[i]);
    free(v);
}

static dkim_canon_t
opendkim_canon(enum cleanup_dkim_canon c)
{
    return c == CLEANUP_DKIM_SIMPLE ? DKIM_CANON_SIMPLE : DKIM_CANON_RELAXED;
}

/* feed_field - cleanup_message_walk() callback: one field, then end of header */
static int
feed_field(void *ctx, const char *field, size_t len)
{
    DKIM *d = ctx;

    if (field == NULL)
        return dkim_eoh(d) == DKIM_STAT_OK ? 0 : -EIO;
    return dkim_header(d, (u_char *)(uintptr_t)field, len) == DKIM_STAT_OK ? 0 : -EIO;
}

/* sighdr_crlf - "DKIM-Signature: " + OpenDKIM's folded value, every EOL CRLF */
static char *
sighdr_crlf(const u_char *val, size_t len)
{
    struct buf b;
    size_t i;

    buf_init(&b, 0);
    buf_append_str(&b, SIGHDR_NAME ": ");
    for (i = 0; i < len; i++) {
        if (val[i] == '\r')
            continue;
        if (val[i] == '\n')
            buf_append(&b, "\r", 1);
        buf_append(&b, &val[i], 1);
    }
    buf_append(&b, "\r\n", 2);
    return buf_detach(&b, NULL);
}

/* run_signer - feed MSG to D and produce the header; -EIO with ERR */
static int
run_signer(DKIM *d, const struct cleanup_message *msg, const char **hdrs, char **sighdrp, char *err,
           size_t errlen)
{
    u_char *val = NULL;
    size_t vlen = 0;
    DKIM_STAT st;

    if ((st = dkim_signhdrs(d, hdrs)) != DKIM_STAT_OK)
        goto fail;
    if (cleanup_message_walk(msg, feed_field, d) != 0) {
        st = DKIM_STAT_INTERNAL;
        goto fail;
    }
    if (msg->body.len &&
        (st = dkim_body(d, (u_char *)msg->body.data, msg->body.len)) != DKIM_STAT_OK)
        goto fail;
    if ((st = dkim_eom(d, NULL)) != DKIM_STAT_OK)
        goto fail;
    if ((st = dkim_getsighdr_d(d, strlen(SIGHDR_NAME ": "), &val, &vlen)) != DKIM_STAT_OK)
        goto fail;
    *sighdrp = sighdr_crlf(val, vlen); /* VAL belongs to the handle */
    return 0;
fail:
    snprintf(err, errlen, "DKIM signing failed: %s%s%s", dkim_getresultstr(st),
             dkim_geterror(d) ? ": " : "", dkim_geterror(d) ? dkim_geterror(d) : "");
    return -EIO;
}

/* cleanup_dkim_sign - see cleanup_dkim.h */
int
cleanup_dkim_sign(struct cleanup_dkim *dk, const struct cleanup_message *msg,
                  const struct cleanup_dkim_keylist *const *lists, size_t nlists,
                  const struct cleanup_dkim_opts *opts, char **sighdrp, char *err, size_t errlen)
{
    static const struct cleanup_dkim_opts defaults;
    struct cleanup_dkim_choice ch;
    char iddom[DOMAIN_MAX + 1];
    char **hdrs;
    DKIM *d;
    DKIM_STAT st;
    int r;

    *sighdrp = NULL;
    if (opts == NULL)
        opts = &defaults;
    /* RFC 6376 5.4: a signature must cover From; without one there is none. */
    if (cleanup_message_find(msg, "From") == NULL ||
        cleanup_dkim_identity_domain(msg, opts, iddom, sizeof(iddom)) < 0 ||
        !cleanup_dkim_choose(lists, nlists, iddom, &ch))
        return CLEANUP_DKIM_UNSIGNED;
    d = dkim_sign(dk->lib, (const u_char *)(opts->id ? opts->id : "cleanup"), NULL,
                  (dkim_sigkey_t)ch.key->pem, (const u_char *)ch.selector,
                  (const u_char *)ch.domain, opendkim_canon(opts->header_canon),
                  opendkim_canon(opts->body_canon), DKIM_SIGN_RSASHA256, -1, &st);
    if (d == NULL) {
        snprintf(err, errlen, "dkim_sign(%s, %s): %s", ch.selector, ch.domain,
                 dkim_getresultstr(st));
        return -EIO;
    }
    hdrs = header_list(opts->headers);
    r = run_signer(d, msg, (const char **)hdrs, sighdrp, err, errlen);
    free_list(hdrs);
    dkim_free(d);
    return r;
}
