/*
 * smtpd_address.h - parsing of SMTP paths, xtext and MAIL/RCPT parameters
 *
 * Internal to the protocol engine (and its unit tests). Pure functions over
 * (pointer, length) input: nothing here assumes NUL termination of the
 * input, and every output is a NUL-terminated string in a caller-sized
 * buffer that contains no control bytes.
 *
 * SECURITY: parses peer text. Every index is checked against the length
 * before the byte is read; outputs are bounded by the RFC size limits.
 */
#ifndef PMTA_SMTPD_ADDRESS_H
#define PMTA_SMTPD_ADDRESS_H

#include <stdbool.h>
#include <stddef.h>

#include "smtpd_proto.h"

/* smtpd_parse_path flags */
#define SMTPD_PATH_NULL_OK       0x01u /* "<>" allowed (MAIL) */
#define SMTPD_PATH_POSTMASTER_OK 0x02u /* "<Postmaster>" allowed (RCPT) */
#define SMTPD_PATH_UTF8_OK       0x04u /* SMTPUTF8 was given */

enum smtpd_path_err {
    SMTPD_PATH_OK,
    SMTPD_PATH_SYNTAX,   /* not an RFC 5321 Path */
    SMTPD_PATH_TOO_LONG, /* local > 64, domain > 255 or path > 256 */
    SMTPD_PATH_NEED_UTF8 /* non-ASCII without SMTPUTF8 */
};

/*
 * smtpd_parse_path - parse "<[@route:]local@domain>" at IN[0..LEN).
 * On success OUT (SMTPD_ADDR_MAX + 1 bytes) holds "local@domain" ("" for
 * the null path, "Postmaster" as given), *CONSUMED the path's length.
 */
enum smtpd_path_err smtpd_parse_path(const char *in, size_t len, unsigned flags, char *out,
                                     size_t *consumed);

/*
 * smtpd_xtext_decode - RFC 3461 xtext to text. Returns the decoded length,
 * or -1 on bad syntax, a decoded byte outside 0x20..0x7e, or when the result
 * does not fit OUTSIZE - 1.
 */
int smtpd_xtext_decode(const char *in, size_t len, char *out, size_t outsize);

enum smtpd_param_err {
    SMTPD_PARAM_OK,
    SMTPD_PARAM_SYNTAX, /* 501 5.5.4: malformed, bad value, repeated */
    SMTPD_PARAM_UNKNOWN /* 555 5.5.4: not a parameter we offer */
};

/*
 * smtpd_parse_mail_params - parse the parameters after the MAIL path.
 * IN[0..LEN) is what follows the path (empty, or SP-separated keywords).
 * SMTPUTF8 and AUTH= are known only when offered (the booleans).
 */
enum smtpd_param_err smtpd_parse_mail_params(const char *in, size_t len, bool smtputf8_offered,
                                             bool auth_offered, struct smtpd_mail_params *p);

/* smtpd_parse_rcpt_params - likewise for RCPT: NOTIFY, ORCPT */
enum smtpd_param_err smtpd_parse_rcpt_params(const char *in, size_t len,
                                             struct smtpd_rcpt_params *p);

/* smtpd_utf8_seq_len - length of the well-formed UTF-8 sequence at
   IN[0..LEN) (1..4), or 0 when it is not one (overlong, surrogate, ...) */
size_t smtpd_utf8_seq_len(const unsigned char *in, size_t len);

#endif
