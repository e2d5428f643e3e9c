/*
 * cleanup_dkim_impl.h - what cleanup_dkim.c (keys, key choice, identity) and
 * cleanup_dkim_sign.c (library handles, signing jobs) share; not for
 * anyone else
 *
 * SECURITY: struct cleanup_dkim_key holds private key material (the PEM text
 * and the parsed key); both are wiped/freed only in cleanup_dkim_free().
 */
#ifndef PMTA_CLEANUP_DKIM_IMPL_H
#define PMTA_CLEANUP_DKIM_IMPL_H

#include <stdatomic.h>
#include <sys/types.h>
#include <time.h>

#include <openssl/evp.h>

#include "cleanup_dkim.h"

struct cleanup_dkim_key {
    char *path;
    dev_t dev;
    ino_t ino;
    off_t size;
    struct timespec mtime;
    char *pem;      /* NUL-terminated PEM text, what dkim_sign() is handed */
    size_t pemlen;  /* strlen(pem): what OpenDKIM copies and parses */
    EVP_PKEY *pkey; /* the same key, parsed once; see cleanup_dkim_sign.c */
    enum cfg_dkim_alg alg;
    struct cleanup_dkim_key *next;
};

struct dkim_lib; /* one OpenDKIM library handle per signed-header list */

struct cleanup_dkim {
    /* Newest first. A reloaded key gets a new entry; older ones stay valid
     * until cleanup_dkim_free() because keylists of the old config may still
     * point at them while transactions finish. */
    struct cleanup_dkim_key *keys;
    struct dkim_lib *libs; /* made on the loop thread, kept until cleanup_dkim_free() */
    atomic_uint_fast64_t keys_parsed, signatures, key_reuses;
};

/* cleanup_dkim__lib - loop thread: the handle signing header list HEADERS (NULL: the default),
 * made on first use; NULL and ERR when OpenDKIM fails */
struct dkim_lib *cleanup_dkim__lib(struct cleanup_dkim *dk, const char *headers, char *err,
                                   size_t errlen);
/* cleanup_dkim__ed25519_ok - can this OpenDKIM sign ed25519-sha256? */
int cleanup_dkim__ed25519_ok(const struct cleanup_dkim *dk);
/* cleanup_dkim__free_libs - dkim_close() every library handle of DK */
void cleanup_dkim__free_libs(struct cleanup_dkim *dk);

#endif
