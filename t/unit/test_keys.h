/*
 * test_keys.h - test helper: throw-away DKIM key files (good and bad) for config tests
 */
#ifndef PMTA_TEST_KEYS_H
#define PMTA_TEST_KEYS_H

/* test_make_key - write a fresh 1024-bit RSA private key (PEM) to PATH; fails the test on error */
void test_make_key(const char *path);

/* test_make_ed25519_key - write a fresh Ed25519 private key (PEM) to PATH */
void test_make_ed25519_key(const char *path);

/* Key files that cannot sign DKIM, for the refusals at load. */
enum test_bad_key {
    TEST_KEY_EC_P256,   /* ECDSA: not a DKIM algorithm */
    TEST_KEY_ED448,     /* EdDSA, but not Ed25519 */
    TEST_KEY_X25519,    /* a key-agreement key */
    TEST_KEY_RSA_512,   /* too short (RFC 8301) */
    TEST_KEY_ENCRYPTED, /* needs a passphrase */
    TEST_KEY_PUBLIC,    /* the public half only */
    TEST_KEY_EMPTY,     /* an empty file */
};
/* test_make_bad_key - write a key file of KIND to PATH */
void test_make_bad_key(const char *path, enum test_bad_key kind);

#endif
