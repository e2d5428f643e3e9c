/*
 * test_keys.c - test helper: throw-away RSA keys, so config tests that name
 * DKIM key files never depend on keys shipped in the tree.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

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
    EVP_PKEY_free(key);
}
