/*
 * test_keys.h - test helper: throw-away RSA keys for DKIM key files in config tests
 */
#ifndef PMTA_TEST_KEYS_H
#define PMTA_TEST_KEYS_H

/* test_make_key - write a fresh 1024-bit RSA private key (PEM) to PATH; fails the test on error */
void test_make_key(const char *path);

/* Keys that cannot sign rsa-sha256, for the refusals at load. */
enum test_bad_key { TEST_KEY_ED25519, TEST_KEY_RSA_512, TEST_KEY_ENCRYPTED };
/* test_make_bad_key - write a key of KIND (PEM) to PATH */
void test_make_bad_key(const char *path, enum test_bad_key kind);

#endif
