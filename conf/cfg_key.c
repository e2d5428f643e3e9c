/*
 * cfg_key.c - the files the workers read, checked as they will read them:
 * whether a DKIM private key can sign, whether a TLS trust store
 * (smtp-tls-ca-file, mta-sts-ca-file) holds certificates, whether an
 * address-file can be read and an add-to-suppression-list target written.
 * Used at load (file:line errors), by the reload validator as the
 * run-as-user, and (keys) by cleanup when it loads the key
 *
 * A key can sign rsa-sha256 when its file is a regular file of 1..64 KiB that
 * the process can read, holding an unencrypted PEM private key, RSA, of at
 * least 1024 bits (RFC 8301). An Ed25519 key is refused by name until
 * ed25519-sha256 signing exists, so that it is a --check-config error and not
 * a 451 for every message.
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

/* cfg_dkim_key_check - see cfg.h */
int
cfg_dkim_key_check(const char *pem, size_t len, char *why, size_t whysize)
{
    BIO *bio = BIO_new_mem_buf(pem, (int)len);
    EVP_PKEY *pkey = bio ? PEM_read_bio_PrivateKey(bio, NULL, refuse_password, NULL) : NULL;
    int r = -EINVAL;

    if (pkey == NULL && (memmem(pem, len, "ENCRYPTED", 9) != NULL))
        snprintf(why, whysize, "encrypted private key (a key pmtad uses needs no passphrase)");
    else if (pkey == NULL)
        snprintf(why, whysize, "not an unencrypted private key in PEM form");
    else if (EVP_PKEY_get_base_id(pkey) == EVP_PKEY_ED25519)
        snprintf(why, whysize,
                 "an Ed25519 key: ed25519-sha256 signing is not supported yet "
                 "(use an RSA key of at least %d bits)",
                 CFG_DKIM_KEY_MIN_BITS);
    else if (EVP_PKEY_get_base_id(pkey) != EVP_PKEY_RSA)
        snprintf(why, whysize, "not an RSA key (rsa-sha256 needs one)");
    else if (EVP_PKEY_get_bits(pkey) < CFG_DKIM_KEY_MIN_BITS)
        snprintf(why, whysize, "RSA key has %d bits, fewer than %d", EVP_PKEY_get_bits(pkey),
                 CFG_DKIM_KEY_MIN_BITS);
    else
        r = 0;
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
cfg_dkim_key_check_file(const char *path, char *why, size_t whysize)
{
    struct stat st;
    char reason[256], *pem = NULL;
    int r;

    if ((r = cfg_dkim_key_read(path, &st, &pem, reason, sizeof reason)) < 0) {
        snprintf(why, whysize, "cannot read DKIM key file '%s': %s", path, reason);
        return r;
    }
    if ((r = cfg_dkim_key_check(pem, (size_t)st.st_size, reason, sizeof reason)) < 0)
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

    if (cfg_dkim_key_check_file(path, why, sizeof why) == 0)
        return 0;
    diag(ctx, CFG_DIAG_ERROR, cfg_str(c, v->file), v->line, why);
    return 1;
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
