/*
 * cleanup_dkim.c - DKIM keys: the key cache, keylists, the choice of a key by
 * signing identity and algorithm, and the signing identity itself
 *
 * Owns: struct cleanup_dkim (with cleanup_dkim_sign.c, which owns its
 * OpenDKIM library handles), the cache of loaded private keys (PEM text and
 * the parsed EVP_PKEY, freed with the cache) and each keylist. See
 * cleanup_dkim.h for the contract; signing is in cleanup_dkim_sign.c.
 *
 * SECURITY: key files are read with a size cap and checked and parsed by
 * conf/cfg_key.c (OpenSSL, a password callback that refuses: an encrypted
 * key fails, it never prompts on a terminal). Error text names paths, never
 * key bytes. The identity comes from Sender/From (peer input); only a
 * checked, lower-cased domain name derived from it reaches OpenDKIM (as d=
 * for `*` keys).
 */
/* EVP_PKEY_get0_RSA(): OpenDKIM signs RSA through the legacy object; see key_load */
#define OPENSSL_SUPPRESS_DEPRECATED

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

#include <openssl/crypto.h>
#include <openssl/rsa.h>

#include "cfg.h"
#include "msg.h"
#include "xalloc.h"

#include "cleanup_dkim_impl.h"

#define DOMAIN_MAX 253

struct keylist_entry {
    char *selector;
    char *domain; /* lower-case, no trailing dot; "*" = any */
    const struct cleanup_dkim_key *key;
};

struct cleanup_dkim_keylist {
    struct keylist_entry *v;
    size_t n, cap;
};

/* --- the cache ------------------------------------------------------------ */

/* cleanup_dkim_create - see cleanup_dkim.h */
struct cleanup_dkim *
cleanup_dkim_create(char *err, size_t errlen)
{
    struct cleanup_dkim *dk = xcalloc(1, sizeof(*dk));

    /* the default header list's handle now: an OpenDKIM that cannot start fails here */
    if (cleanup_dkim__lib(dk, NULL, err, errlen) == NULL) {
        free(dk);
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
            OPENSSL_cleanse(k->pem, k->pemlen);
            free(k->pem);
        }
        EVP_PKEY_free(k->pkey);
        free(k->path);
        free(k);
    }
    cleanup_dkim__free_libs(dk);
    free(dk);
}

/* cleanup_dkim_stats - see cleanup_dkim.h */
void
cleanup_dkim_stats(const struct cleanup_dkim *dk, struct cleanup_dkim_stats *st)
{
    st->keys_parsed = atomic_load(&dk->keys_parsed);
    st->signatures = atomic_load(&dk->signatures);
    st->key_reuses = atomic_load(&dk->key_reuses);
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
    EVP_PKEY *pkey = NULL;
    enum cfg_dkim_alg alg = CFG_DKIM_NONE;
    int r;

    /* A stat first: an unchanged cached key costs no read and no parse. */
    if (stat(path, &st) == 0 && (k = cached_key(dk, path, &st)) != NULL)
        return k;
    /* conf/cfg_key.c owns what a usable key is: pmtad checked it at load, as our user. */
    if ((r = cfg_dkim_key_read(path, &st, &pem, why, sizeof why)) < 0)
        snprintf(err, errlen, "cannot read DKIM key %s: %s", path, why);
    else if ((r = cfg_dkim_key_parse(pem, (size_t)st.st_size, &alg, &pkey, why, sizeof why)) < 0)
        snprintf(err, errlen, "%s: %s", path, why);
    else if (alg == CFG_DKIM_ED25519_SHA256 && !cleanup_dkim__ed25519_ok(dk)) {
        snprintf(err, errlen, "%s: this OpenDKIM cannot sign ed25519-sha256", path);
        r = -EINVAL;
    }
    if (r < 0) {
        if (pem)
            OPENSSL_cleanse(pem, (size_t)st.st_size);
        free(pem);
        EVP_PKEY_free(pkey);
        if (errnop)
            *errnop = -r;
        return NULL;
    }
    /* OpenDKIM signs RSA through the legacy RSA object of the key: make it now, on this thread,
     * so signing threads only ever read it (its blinding and Montgomery state are locked). */
    if (alg == CFG_DKIM_RSA_SHA256)
        (void)EVP_PKEY_get0_RSA(pkey);
    atomic_fetch_add(&dk->keys_parsed, 1);
    k = xcalloc(1, sizeof(*k));
    k->path = xstrdup(path);
    k->dev = st.st_dev;
    k->ino = st.st_ino;
    k->size = st.st_size;
    k->mtime = st.st_mtim;
    k->pem = pem;
    k->pemlen = strlen(pem);
    k->pkey = pkey;
    k->alg = alg;
    k->next = dk->keys;
    dk->keys = k;
    return k;
}

/* cleanup_dkim_key_alg - see cleanup_dkim.h */
enum cfg_dkim_alg
cleanup_dkim_key_alg(const struct cleanup_dkim_key *key)
{
    return key->alg;
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
                    const char *identity_domain, enum cfg_dkim_alg alg,
                    struct cleanup_dkim_choice *choice)
{
    size_t l, i;

    for (l = 0; l < nlists; l++) {
        if (lists[l] == NULL)
            continue;
        for (i = 0; i < lists[l]->n; i++) {
            const struct keylist_entry *e = &lists[l]->v[i];

            if (e->key->alg != alg || !domain_matches(e->domain, identity_domain))
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
