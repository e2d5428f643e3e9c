/*
 * test_keys.c - test helper: throw-away RSA keys, so config tests that name
 * DKIM key files never depend on keys shipped in the tree.
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
test_make_bad_key(const char *path, enum test_bad_key kind)
{
    switch (kind) {
    case TEST_KEY_ED25519:
        write_key(path, EVP_PKEY_Q_keygen(NULL, NULL, "ED25519"), NULL);
        break;
    case TEST_KEY_RSA_512:
        write_key(path, EVP_RSA_gen(512), NULL);
        break;
    case TEST_KEY_ENCRYPTED:
        write_key(path, EVP_RSA_gen(1024), "secret");
        break;
    }
}
