/*
 * test_keys.c - test helper: throw-away RSA and Ed25519 keys (and key files
 * that cannot sign), so config tests that name DKIM key files never depend
 * on keys shipped in the tree.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include <cmocka.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>

#include "test_keys.h"

void
test_make_key(const char *path)
{
    EVP_PKEY *key = EVP_RSA_gen(1024);
    FILE *f = fopen(path, "w");

    assert_non_null(key);
    assert_non_null(f);
    assert_int_equal(PEM_write_PrivateKey(f, key, NULL, NULL, 0, NULL, NULL), 1);
    fclose(f);
    assert_int_equal(chmod(path, 0600), 0); /* as a real key: others may not read it */
    EVP_PKEY_free(key);
}

/* write_key - KEY to PATH as PEM, encrypted with PASSPHRASE when it is not NULL */
static void
write_key(const char *path, EVP_PKEY *key, const char *passphrase)
{
    FILE *f = fopen(path, "w");

    assert_non_null(key);
    assert_non_null(f);
    assert_int_equal(PEM_write_PrivateKey(f, key, passphrase ? EVP_aes_128_cbc() : NULL,
                                          (const unsigned char *)passphrase,
                                          passphrase ? (int)strlen(passphrase) : 0, NULL, NULL),
                     1);
    fclose(f);
    assert_int_equal(chmod(path, 0600), 0);
    EVP_PKEY_free(key);
}

void
test_make_ed25519_key(const char *path)
{
    write_key(path, EVP_PKEY_Q_keygen(NULL, NULL, "ED25519"), NULL);
}

/* write_public - only KEY's public half to PATH */
static void
write_public(const char *path, EVP_PKEY *key)
{
    FILE *f = fopen(path, "w");

    assert_non_null(key);
    assert_non_null(f);
    assert_int_equal(PEM_write_PUBKEY(f, key), 1);
    fclose(f);
    EVP_PKEY_free(key);
}

void
test_make_bad_key(const char *path, enum test_bad_key kind)
{
    FILE *f;

    switch (kind) {
    case TEST_KEY_EC_P256:
        write_key(path, EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256"), NULL);
        break;
    case TEST_KEY_ED448:
        write_key(path, EVP_PKEY_Q_keygen(NULL, NULL, "ED448"), NULL);
        break;
    case TEST_KEY_X25519:
        write_key(path, EVP_PKEY_Q_keygen(NULL, NULL, "X25519"), NULL);
        break;
    case TEST_KEY_RSA_512:
        write_key(path, EVP_RSA_gen(512), NULL);
        break;
    case TEST_KEY_ENCRYPTED:
        write_key(path, EVP_RSA_gen(1024), "secret");
        break;
    case TEST_KEY_PUBLIC:
        write_public(path, EVP_RSA_gen(1024));
        break;
    case TEST_KEY_EMPTY:
        assert_non_null(f = fopen(path, "w"));
        fclose(f);
        break;
    }
}
