/*
 * smtpd_proto_auth.c - SMTP AUTH (RFC 4954) with the PLAIN (RFC 4616) and
 * LOGIN mechanisms
 *
 * Owns the AUTH exchange state of a session: the LOGIN user name between
 * the two 334 prompts and the user name awaiting the host's verdict. The
 * host checks the credentials (the auth event); the engine only decodes
 * and validates them.
 *
 * SECURITY: handles secrets. Every buffer that held a password or the
 * base64 text of one is wiped with OPENSSL_cleanse() before it is freed.
 * Base64 is strictly validated before OpenSSL decodes it (EVP_DecodeBlock
 * alone would skip whitespace and accept odd padding). Failed attempts count
 * towards the session's error limit, which bounds guessing per connection.
 */
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "msg.h"
#include "xalloc.h"
#include "smtpd_proto_int.h"

#define PROMPT_USERNAME "VXNlcm5hbWU6" /* base64("Username:") */
#define PROMPT_PASSWORD "UGFzc3dvcmQ6" /* base64("Password:") */

/* smtpd_proto__auth_offered - AUTH is offered (EHLO) and allowed */
bool
smtpd_proto__auth_offered(const struct smtpd_proto *s)
{
    return s->cfg.allow_auth && (s->tls || s->cfg.allow_plaintext_auth);
}

/* free_secret - wipe and free a NUL-terminated string */
static void
free_secret(char **p)
{
    if (*p) {
        OPENSSL_cleanse(*p, strlen(*p));
        free(*p);
        *p = NULL;
    }
}

/* smtpd_proto__auth_clear - end any exchange, forget its secrets */
void
smtpd_proto__auth_clear(struct smtpd_proto *s)
{
    free_secret(&s->auth_login_user);
    free_secret(&s->pending_user);
    if (s->state == SMTPD_STATE_AUTH)
        s->state = SMTPD_STATE_COMMAND;
}

/* auth_error - the exchange ends with a client error */
static void
auth_error(struct smtpd_proto *s, int code, const char *enhanced, const char *text)
{
    smtpd_proto__auth_clear(s);
    smtpd_proto__error(s, code, enhanced, text);
}

/* is_b64_char - RFC 4648 §4 alphabet */
static bool
is_b64_char(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '+' ||
           c == '/';
}

/*
 * b64_decode - strict base64 to a fresh buffer of *OUTLEN bytes plus a
 * NUL (caller wipes and frees). NULL when IN is not canonical base64.
 */
static unsigned char *
b64_decode(const char *in, size_t len, size_t *outlen)
{
    unsigned char *out;
    size_t pad = 0, i;
    int n;

    if (len % 4 != 0 || len > SMTPD_AUTH_LINE_MAX)
        return NULL;
    if (len && in[len - 1] == '=')
        pad = len >= 2 && in[len - 2] == '=' ? 2 : 1;
    for (i = 0; i < len - pad; i++)
        if (!is_b64_char((unsigned char)in[i]))
            return NULL;
    out = xmalloc(len / 4 * 3 + 1);
    n = len ? EVP_DecodeBlock(out, (const unsigned char *)in, (int)len) : 0;
    if (n < 0 || (size_t)n < pad) {
        free(out);
        return NULL;
    }
    *outlen = (size_t)n - pad; /* EVP_DecodeBlock counts padding */
    out[*outlen] = '\0';
    return out;
}

/* cred_ok - a user name or password: bounded, no control bytes */
static bool
cred_ok(const unsigned char *p, size_t n, bool may_be_empty)
{
    size_t i;

    if ((n == 0 && !may_be_empty) || n > SMTPD_CRED_MAX)
        return false;
    for (i = 0; i < n; i++)
        if (p[i] < 32 || p[i] == 127)
            return false;
    return true;
}

/* verify - ask the host; the exchange itself is over */
static void
verify(struct smtpd_proto *s, const char *mech, const char *user, const char *pass)
{
    struct smtpd_proto_verdict v = { 0, NULL, NULL };
    enum smtpd_decision d = SMTPD_REJECT;

    /* USER may be auth_login_user: copy it before that is freed. */
    s->pending_user = xstrdup(user);
    free_secret(&s->auth_login_user);
    s->state = SMTPD_STATE_COMMAND;
    smtpd_proto__wait(s, SMTPD_PENDING_AUTH);
    if (s->ev->auth)
        d = s->ev->auth(s->ctx, mech, s->pending_user, pass, &v);
    smtpd_proto__decided(s, SMTPD_PENDING_AUTH, d, &v);
}

/* plain_response - "[authzid] NUL authcid NUL passwd" in base64 */
static void
plain_response(struct smtpd_proto *s, const char *b64, size_t len)
{
    unsigned char *dec, *user, *pass, *end;
    size_t n;

    /* RFC 4954 §4: "=" is an empty initial response. */
    if ((dec = b64_decode(b64, len == 1 && b64[0] == '=' ? 0 : len, &n)) == NULL) {
        auth_error(s, 501, "5.5.2", "Invalid base64 data");
        return;
    }
    end = dec + n;
    user = memchr(dec, '\0', n);
    pass = user ? memchr(user + 1, '\0', (size_t)(end - user - 1)) : NULL;
    if (pass == NULL || memchr(pass + 1, '\0', (size_t)(end - pass - 1)) ||
        !cred_ok(dec, (size_t)(user - dec), true) ||
        !cred_ok(user + 1, (size_t)(pass - user - 1), false) ||
        !cred_ok(pass + 1, (size_t)(end - pass - 1), true)) {
        auth_error(s, 501, "5.5.2", "Invalid PLAIN response");
    } else if (user != dec && strcmp((char *)dec, (char *)user + 1) != 0) {
        /* Acting for another identity (authzid) is not supported. */
        auth_error(s, 535, "5.7.8", "Authentication credentials invalid");
    } else {
        verify(s, "PLAIN", (char *)user + 1, (char *)pass + 1);
    }
    OPENSSL_cleanse(dec, n);
    free(dec);
}

/* login_user - the LOGIN user name; prompt for the password */
static void
login_user(struct smtpd_proto *s, const char *b64, size_t len)
{
    unsigned char *dec;
    size_t n;

    if ((dec = b64_decode(b64, len, &n)) == NULL) {
        auth_error(s, 501, "5.5.2", "Invalid base64 data");
        return;
    }
    if (!cred_ok(dec, n, false)) {
        auth_error(s, 501, "5.5.2", "Invalid user name");
    } else {
        s->auth_login_user = xstrdup((char *)dec);
        s->state = SMTPD_STATE_AUTH;
        s->auth_step = SMTPD_AUTH_LOGIN_PASS;
        smtpd_proto__reply(s, 334, NULL, PROMPT_PASSWORD);
    }
    OPENSSL_cleanse(dec, n);
    free(dec);
}

/* login_pass - the LOGIN password; verify */
static void
login_pass(struct smtpd_proto *s, const char *b64, size_t len)
{
    unsigned char *dec;
    size_t n;

    if ((dec = b64_decode(b64, len, &n)) == NULL) {
        auth_error(s, 501, "5.5.2", "Invalid base64 data");
        return;
    }
    if (!cred_ok(dec, n, true))
        auth_error(s, 501, "5.5.2", "Invalid password");
    else
        verify(s, "LOGIN", s->auth_login_user, (char *)dec);
    OPENSSL_cleanse(dec, n);
    free(dec);
}

/* smtpd_proto__auth_start - the AUTH command */
void
smtpd_proto__auth_start(struct smtpd_proto *s, char *arg, size_t len)
{
    const char *initial = NULL;
    size_t mech = 0, ilen = 0;

    if (!smtpd_proto__auth_offered(s) || s->state == SMTPD_STATE_GREETING) {
        smtpd_proto__error(s, 503, "5.5.1",
                           s->state == SMTPD_STATE_GREETING ? "Send EHLO first"
                                                            : "AUTH not available");
        return;
    }
    if (s->auth_user) {
        smtpd_proto__error(s, 503, "5.5.1", "Already authenticated");
        return;
    }
    if (s->txn.open) {
        smtpd_proto__error(s, 503, "5.5.1", "AUTH not permitted during a mail transaction");
        return;
    }
    while (mech < len && arg[mech] != ' ')
        mech++;
    if (mech == 0) {
        smtpd_proto__error(s, 501, "5.5.4", "Syntax: AUTH mechanism [initial-response]");
        return;
    }
    if (mech < len) {
        initial = arg + mech + 1;
        ilen = len - mech - 1;
    }
    if (mech == 5 && strncasecmp(arg, "PLAIN", 5) == 0) {
        if (initial) {
            plain_response(s, initial, ilen);
        } else {
            s->state = SMTPD_STATE_AUTH;
            s->auth_step = SMTPD_AUTH_PLAIN;
            smtpd_proto__reply(s, 334, NULL, "");
        }
    } else if (mech == 5 && strncasecmp(arg, "LOGIN", 5) == 0) {
        if (initial) {
            login_user(s, initial, ilen);
        } else {
            s->state = SMTPD_STATE_AUTH;
            s->auth_step = SMTPD_AUTH_LOGIN_USER;
            smtpd_proto__reply(s, 334, NULL, PROMPT_USERNAME);
        }
    } else {
        smtpd_proto__error(s, 504, "5.5.4", "Unrecognized authentication type");
    }
}

/* smtpd_proto__auth_line - a client response inside the exchange */
void
smtpd_proto__auth_line(struct smtpd_proto *s, char *line, size_t len)
{
    if (len == 1 && line[0] == '*') {
        auth_error(s, 501, "5.7.0", "Authentication cancelled");
        return;
    }
    switch (s->auth_step) {
    case SMTPD_AUTH_PLAIN:
        plain_response(s, line, len);
        break;
    case SMTPD_AUTH_LOGIN_USER:
        login_user(s, line, len);
        break;
    case SMTPD_AUTH_LOGIN_PASS:
        login_pass(s, line, len);
        break;
    }
}

/* smtpd_proto__auth_done - the host's verdict on the credentials */
void
smtpd_proto__auth_done(struct smtpd_proto *s, bool accepted, const struct smtpd_proto_verdict *v)
{
    if (accepted) {
        s->auth_user = s->pending_user;
        s->pending_user = NULL;
        smtpd_proto__verdict(s, v, 235, "2.7.0", "Authentication successful");
        return;
    }
    free_secret(&s->pending_user);
    smtpd_proto__verdict(s, v, 535, "5.7.8", "Authentication credentials invalid");
    smtpd_proto__count_error(s);
}
