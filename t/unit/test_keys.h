/*
 * test_keys.h - test helper: throw-away RSA keys for DKIM key files in config tests
 */
#ifndef PMTA_TEST_KEYS_H
#define PMTA_TEST_KEYS_H

/* test_make_key - write a fresh 1024-bit RSA private key (PEM) to PATH; fails the test on error */
void test_make_key(const char *path);

#endif
