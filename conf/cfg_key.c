/*
 * cfg_key.c - the files the workers read, checked as they will read them:
 * whether a DKIM private key can sign (and with which algorithm), whether
 * the dkim-algorithm settings can be honoured by the keys configured,
 * whether a TLS trust store (smtp-tls-ca-file, mta-sts-ca-file) holds
 * certificates, whether an address-file can be read and an
 * add-to-suppression-list target written. Used at load (file:line errors),
 * by the reload validator as the run-as-user, and (keys) by cleanup when it
 * loads the key it will sign with.
 *
 * A key can sign when its file is a regular file of 1..64 KiB that the
 * process can read, holding an unencrypted PEM private key that is RSA of at
 * least 1024 bits (RFC 8301; rsa-sha256) or Ed25519 (RFC 8463;
 * ed25519-sha256). Any other type (EC P-256, DSA, Ed448 ...) cannot sign
 * DKIM and is refused, so that it is a --check-config error and never a 451
 * for every message.
 *
 * Owns nothing beyond each call.
 *
 * SECURITY: the key bytes are parsed by OpenSSL with a password callback that
 * refuses (an encrypted key fails, it never prompts on a terminal), wiped
 * before they are freed, and never put in a message: messages name the path
 * and the reason only.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/bio.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509_vfy.h>

#include "xalloc.h"
#include "cfg.h"

/* refuse_password - an encrypted key is an error, not a terminal prompt */
static int
refuse_password(char *buf, int size, int rwflag, void *u)
{
    (void)buf, (void)size, (void)rwflag, (void)u;
    return -1;
}

/* cfg_dkim_alg_name - see cfg.h */
const char *
cfg_dkim_alg_name(enum cfg_dkim_alg alg)
{
    return alg == CFG_DKIM_RSA_SHA256       ? "rsa-sha256"
           : alg == CFG_DKIM_ED25519_SHA256 ? "ed25519-sha256"
                                            : "?";
}

/* cfg_dkim_algorithms - see cfg.h */
int
cfg_dkim_algorithms(const char *text, enum cfg_dkim_alg out[CFG_DKIM_ALG_MAX], char *why,
                    size_t whysize)
{
    char copy[128], *tok, *save = NULL;
    int n = 0;

    if (strlen(text) >= sizeof copy) {
        snprintf(why, whysize, "dkim-algorithm: too long");
        return -EINVAL;
    }
    snprintf(copy, sizeof copy, "%s", text);
    for (tok = strtok_r(copy, ", \t", &save); tok; tok = strtok_r(NULL, ", \t", &save)) {
        enum cfg_dkim_alg a = strcasecmp(tok, "rsa-sha256") == 0       ? CFG_DKIM_RSA_SHA256
                              : strcasecmp(tok, "ed25519-sha256") == 0 ? CFG_DKIM_ED25519_SHA256
                                                                       : CFG_DKIM_NONE;

        if (a == CFG_DKIM_NONE) {
            snprintf(why, whysize,
                     "dkim-algorithm: unknown algorithm '%.40s' (rsa-sha256, ed25519-sha256)", tok);
            return -EINVAL;
        }
        for (int i = 0; i < n; i++)
            if (out[i] == a) {
                snprintf(why, whysize, "dkim-algorithm: %s listed twice", cfg_dkim_alg_name(a));
                return -EINVAL;
            }
        out[n++] = a; /* two distinct names at most: the bound holds */
    }
    if (n == 0) {
        snprintf(why, whysize, "dkim-algorithm: no algorithm given");
        return -EINVAL;
    }
    return n;
}

/* cfg_dkim_key_parse - see cfg.h */
int
cfg_dkim_key_parse(const char *pem, size_t len, enum cfg_dkim_alg *algp, EVP_PKEY **pkeyp,
                   char *why, size_t whysize)
{
    BIO *bio = BIO_new_mem_buf(pem, (int)len);
    EVP_PKEY *pkey = bio ? PEM_read_bio_PrivateKey_ex(bio, NULL, refuse_password, NULL, NULL, NULL)
                         : NULL;
    enum cfg_dkim_alg alg = CFG_DKIM_NONE;
    int r = -EINVAL;

    if (pkey == NULL && (memmem(pem, len, "ENCRYPTED", 9) != NULL))
        snprintf(why, whysize, "encrypted private key (a key pmtad uses needs no passphrase)");
    else if (pkey == NULL)
        snprintf(why, whysize, "not an unencrypted private key in PEM form");
    else if (EVP_PKEY_get_base_id(pkey) == EVP_PKEY_ED25519)
        alg = CFG_DKIM_ED25519_SHA256;
    else if (EVP_PKEY_get_base_id(pkey) != EVP_PKEY_RSA)
        snprintf(why, whysize,
                 "a %s key, which cannot sign DKIM (an RSA key signs rsa-sha256, an Ed25519 "
                 "key ed25519-sha256)",
                 EVP_PKEY_get0_type_name(pkey) ? EVP_PKEY_get0_type_name(pkey) : "non-RSA");
    else if (EVP_PKEY_get_bits(pkey) < CFG_DKIM_KEY_MIN_BITS)
        snprintf(why, whysize, "RSA key has %d bits, fewer than %d", EVP_PKEY_get_bits(pkey),
                 CFG_DKIM_KEY_MIN_BITS);
    else
        alg = CFG_DKIM_RSA_SHA256;
    if (alg != CFG_DKIM_NONE) {
        r = 0;
        if (algp)
            *algp = alg;
        if (pkeyp) {
            *pkeyp = pkey;
            pkey = NULL;
        }
    }
    EVP_PKEY_free(pkey);
    BIO_free(bio);
    return r;
}

/* cfg_dkim_key_read - see cfg.h */
int
cfg_dkim_key_read(const char *path, struct stat *st, char **pemp, char *why, size_t whysize)
{
    int fd, r = 0;
    ssize_t n;
    char *pem;

    if ((fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY)) < 0 || fstat(fd, st) < 0) {
        r = -errno;
        snprintf(why, whysize, "%s", strerror(errno));
        goto out;
    }
    if (!S_ISREG(st->st_mode) || st->st_size > CFG_DKIM_KEY_FILE_MAX || st->st_size == 0) {
        snprintf(why, whysize, "not a regular file of 1..%d bytes", CFG_DKIM_KEY_FILE_MAX);
        r = -EINVAL;
        goto out;
    }
    pem = xmalloc((size_t)st->st_size + 1);
    if ((n = read(fd, pem, (size_t)st->st_size)) != st->st_size) {
        r = n < 0 ? -errno : -EIO;
        snprintf(why, whysize, "%s", n < 0 ? strerror(errno) : "short read");
        free(pem);
        goto out;
    }
    pem[n] = '\0';
    *pemp = pem;
out:
    if (fd >= 0)
        close(fd);
    return r;
}

/* cfg_dkim_key_check_file - see cfg.h */
int
cfg_dkim_key_check_file(const char *path, enum cfg_dkim_alg *algp, char *why, size_t whysize)
{
    struct stat st;
    char reason[256], *pem = NULL;
    int r;

    if ((r = cfg_dkim_key_read(path, &st, &pem, reason, sizeof reason)) < 0) {
        snprintf(why, whysize, "cannot read DKIM key file '%s': %s", path, reason);
        return r;
    }
    if ((r = cfg_dkim_key_parse(pem, (size_t)st.st_size, algp, NULL, reason, sizeof reason)) < 0)
        snprintf(why, whysize, "DKIM key file '%s': %s", path, reason);
    OPENSSL_cleanse(pem, (size_t)st.st_size);
    free(pem);
    return r;
}

/* check_one - report a key of V at PATH that cannot sign */
static unsigned
check_one(const struct cfg *c, const struct cfg_value *v, const char *path, cfg_diag_fn diag,
          void *ctx)
{
    char why[4352];

    if (cfg_dkim_key_check_file(path, NULL, why, sizeof why) == 0)
        return 0;
    diag(ctx, CFG_DIAG_ERROR, cfg_str(c, v->file), v->line, why);
    return 1;
}

/* --- dkim-algorithm against the keys ------------------------------------------ */

static int
live(const struct cfg_value *v)
{
    return v && !(v->flags & (CFG_VALUE_CLEAR | CFG_VALUE_UNSET));
}

/* key_alg - the key type of a domain-key or dkim-key-file value, else CFG_DKIM_NONE */
static enum cfg_dkim_alg
key_alg(const struct cfg_value *v)
{
    if (v->directive == CFG_D_DOMAIN_KEY && v->type == CFG_T_DOMAIN_KEY)
        return (enum cfg_dkim_alg)v->key.alg;
    if (v->directive == CFG_D_DKIM_KEY_FILE)
        return (enum cfg_dkim_alg)v->num;
    return CFG_DKIM_NONE;
}

/* alg_bits - the algorithms of dkim-algorithm value V as bits (1 << alg); 0 when V is bad */
static unsigned
alg_bits(const struct cfg *c, const struct cfg_value *v)
{
    enum cfg_dkim_alg a[CFG_DKIM_ALG_MAX];
    char why[200];
    unsigned bits = 0;
    int n = cfg_dkim_algorithms(cfg_str(c, v->text), a, why, sizeof why);

    for (int i = 0; i < n; i++)
        bits |= 1u << a[i];
    return bits;
}

/* probe_domain - a domain that <domain> scope S applies to (for cfg_resolve_queue), or NULL */
static const char *
probe_domain(const struct cfg *c, uint32_t s, char *buf, size_t bufsize)
{
    const struct cfg_scope *sc = &c->scopes[s];

    switch (sc->pattern) {
    case CFG_PAT_ALL:
        return "any.invalid";
    case CFG_PAT_EXACT:
    case CFG_PAT_DOMAIN_AND_SUB:
        return cfg_str(c, sc->name);
    case CFG_PAT_SUBDOMAINS:
        snprintf(buf, bufsize, "sub.%s", cfg_str(c, sc->name));
        return buf;
    default:
        return NULL;
    }
}

/* key_fits_domain - V, a dkim-key-file in <domain> scope S, is of a type S signs with */
static unsigned
key_fits_domain(const struct cfg *c, uint32_t s, const struct cfg_value *v, cfg_diag_fn diag,
                void *ctx)
{
    const struct cfg_scope *sc = &c->scopes[s];
    const char *vmta = sc->parent && c->scopes[sc->parent].kind == CFG_S_VMTA
                           ? cfg_str(c, c->scopes[sc->parent].name)
                           : NULL;
    const char *dom;
    struct cfg_resolved res;
    char buf[300], why[700];
    enum cfg_dkim_alg alg = key_alg(v);

    if ((dom = probe_domain(c, s, buf, sizeof buf)) == NULL ||
        cfg_resolve_queue(c, dom, vmta, &res) < 0 || !live(res.v[CFG_D_DKIM_ALGORITHM]) ||
        (alg_bits(c, res.v[CFG_D_DKIM_ALGORITHM]) & (1u << alg)))
        return 0;
    snprintf(why, sizeof why,
             "DKIM key file '%s' is %s key, but <domain %s> signs with dkim-algorithm %s: add "
             "%s to its dkim-algorithm, or use a key of that type",
             cfg_str(c, v->text), alg == CFG_DKIM_ED25519_SHA256 ? "an Ed25519" : "an RSA",
             sc->pattern == CFG_PAT_ALL ? "*" : cfg_str(c, sc->name),
             cfg_str(c, res.v[CFG_D_DKIM_ALGORITHM]->text), cfg_dkim_alg_name(alg));
    diag(ctx, CFG_DIAG_ERROR, cfg_str(c, v->file), v->line, why);
    return 1;
}

/* cfg_check_dkim_algorithms - see cfg.h */
unsigned
cfg_check_dkim_algorithms(const struct cfg *c, cfg_diag_fn diag, void *ctx)
{
    unsigned have = 0, asked = 1u << CFG_DKIM_RSA_SHA256; /* the default names RSA */
    unsigned errors = 0;
    char why[600];

    for (uint32_t i = CFG_D_COUNT; i < c->nvalues; i++) {
        const struct cfg_value *v = &c->values[i];

        if (!live(v))
            continue;
        have |= key_alg(v) != CFG_DKIM_NONE ? 1u << key_alg(v) : 0;
        if (v->directive == CFG_D_DKIM_ALGORITHM)
            asked |= alg_bits(c, v);
    }
    for (uint32_t s = 0; s < c->nscopes; s++) {
        for (uint32_t i = c->scopes[s].first; i < c->scopes[s].first + c->scopes[s].count; i++) {
            const struct cfg_value *v = &c->values[i];
            enum cfg_dkim_alg a[CFG_DKIM_ALG_MAX];
            int n;

            if (!live(v))
                continue;
            if (v->directive == CFG_D_DKIM_KEY_FILE && c->scopes[s].kind == CFG_S_DOMAIN)
                errors += key_fits_domain(c, s, v, diag, ctx);
            if (v->directive == CFG_D_DOMAIN_KEY && key_alg(v) != CFG_DKIM_NONE &&
                !(asked & (1u << key_alg(v)))) {
                snprintf(why, sizeof why,
                         "DKIM key file '%s' is an Ed25519 key, but no <domain> has "
                         "dkim-algorithm ed25519-sha256: it would never sign",
                         cfg_str(c, v->key.path));
                diag(ctx, CFG_DIAG_ERROR, cfg_str(c, v->file), v->line, why);
                errors++;
            }
            if (v->directive != CFG_D_DKIM_ALGORITHM)
                continue;
            n = cfg_dkim_algorithms(cfg_str(c, v->text), a, why, sizeof why);
            for (int k = 0; k < n; k++) {
                if (have & (1u << a[k]))
                    continue;
                snprintf(why, sizeof why,
                         "dkim-algorithm %s: no %s key is configured (domain-key or "
                         "dkim-key-file)",
                         cfg_dkim_alg_name(a[k]), a[k] == CFG_DKIM_RSA_SHA256 ? "RSA" : "Ed25519");
                diag(ctx, CFG_DIAG_ERROR, cfg_str(c, v->file), v->line, why);
                errors++;
            }
        }
    }
    return errors;
}

/* cfg_ca_file_check - PATH is readable and holds at least one PEM certificate; 0 or -1, why */
int
cfg_ca_file_check(const char *path, char *why, size_t whysize)
{
    X509_STORE *store = X509_STORE_new();
    int ok = store && X509_STORE_load_file(store, path) == 1 &&
             sk_X509_OBJECT_num(X509_STORE_get0_objects(store)) > 0;

    if (!ok)
        snprintf(why, whysize, "trust store '%s' cannot be read or holds no PEM certificate%s%s",
                 path, access(path, R_OK) < 0 ? ": " : "",
                 access(path, R_OK) < 0 ? strerror(errno) : "");
    X509_STORE_free(store);
    return ok ? 0 : -1;
}

/* check_ca - report a trust store of V that the workers could not use */
static unsigned
check_ca(const struct cfg *c, const struct cfg_value *v, cfg_diag_fn diag, void *ctx)
{
    char why[600];
    const char *path = cfg_str(c, v->text);

    if (!*path || cfg_ca_file_check(path, why, sizeof why) == 0)
        return 0;
    diag(ctx, CFG_DIAG_ERROR, cfg_str(c, v->file), v->line, why);
    return 1;
}

/* list_file - the first address-file of top-level <address-list> NAME, or NULL */
static const struct cfg_value *
list_file(const struct cfg *c, const char *name)
{
    uint32_t s = cfg_find_scope(c, CFG_S_ADDRESS_LIST, name);

    return s == CFG_NONE ? NULL : cfg_scope_get(c, s, CFG_D_AL_ADDRESS_FILE);
}

/* check_append_target - add-to-suppression-list V names a list with a file we can append to */
static unsigned
check_append_target(const struct cfg *c, const struct cfg_value *v, cfg_diag_fn diag, void *ctx)
{
    const struct cfg_value *f = list_file(c, cfg_str(c, v->text));
    char why[600];

    if (f == NULL)
        snprintf(why, sizeof why,
                 "add-to-suppression-list %s: that <address-list> has no address-file to add to",
                 cfg_str(c, v->text));
    else if (access(cfg_str(c, f->text), W_OK) < 0)
        snprintf(why, sizeof why, "add-to-suppression-list %s: cannot write %s: %s",
                 cfg_str(c, v->text), cfg_str(c, f->text), strerror(errno));
    else
        return 0;
    diag(ctx, CFG_DIAG_ERROR, cfg_str(c, v->file), v->line, why);
    return 1;
}

/* check_readable - an address-file V that cannot be read */
static unsigned
check_readable(const struct cfg *c, const struct cfg_value *v, cfg_diag_fn diag, void *ctx)
{
    char why[600];
    const char *path = cfg_str(c, v->text);

    if (access(path, R_OK) == 0)
        return 0;
    snprintf(why, sizeof why, "address-file '%s' cannot be read: %s", path, strerror(errno));
    diag(ctx, CFG_DIAG_ERROR, cfg_str(c, v->file), v->line, why);
    return 1;
}

/* cfg_check_keys - see cfg.h */
unsigned
cfg_check_keys(const struct cfg *c, cfg_diag_fn diag, void *ctx)
{
    unsigned errors = 0;

    for (uint32_t i = CFG_D_COUNT; i < c->nvalues; i++) {
        const struct cfg_value *v = &c->values[i];

        if (v->flags & (CFG_VALUE_CLEAR | CFG_VALUE_UNSET))
            continue;
        if (v->directive == CFG_D_DOMAIN_KEY && v->type == CFG_T_DOMAIN_KEY)
            errors += check_one(c, v, cfg_str(c, v->key.path), diag, ctx);
        else if (v->directive == CFG_D_DKIM_KEY_FILE)
            errors += check_one(c, v, cfg_str(c, v->text), diag, ctx);
        else if (v->directive == CFG_D_SMTP_TLS_CA_FILE || v->directive == CFG_D_MTA_STS_CA_FILE)
            errors += check_ca(c, v, diag, ctx);
        else if (v->directive == CFG_D_AL_ADDRESS_FILE)
            errors += check_readable(c, v, diag, ctx);
        else if (v->directive == CFG_D_ADD_TO_SUPPRESSION_LIST)
            errors += check_append_target(c, v, diag, ctx);
    }
    return errors;
}
