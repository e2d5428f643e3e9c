/*
 * smtpout_proto_auth.c - the SMTP client engine's AUTH (RFC 4954): PLAIN
 * (RFC 4616, with an initial response), LOGIN, CRAM-MD5 (RFC 2195)
 *
 * Which mechanism: PLAIN, then LOGIN, then CRAM-MD5, as the server offers
 * them; PLAIN and LOGIN only once TLS is on unless auth_in_clear. A server
 * that offers no AUTH is used without it; one that offers only mechanisms
 * we may not use now, or refuses the credentials, ends the session as a
 * temporary failure (4.7.11, or the server's code made 4.x.x).
 *
 * Owns nothing; the credentials live in struct smtpout_proto.
 *
 * SECURITY: the credentials are written only into the output buffer
 * (base64) and every copy we make is wiped; a server challenge is decoded
 * into a bounded buffer; the reply texts passed up never hold what we sent.
 */
#include "config.h"

#include <stdio.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "smtpout_proto_int.h"

/* b64_command - "PREFIX" + base64(DATA) as one command line (secrets: the copy is wiped) */
static void
b64_command(struct smtpout_proto *p, const char *prefix, const unsigned char *data, size_t len)
{
    unsigned char enc[4 * ((2 * AUTH_FIELD_MAX + 2 + 2) / 3) + 8];
    int n = len ? EVP_EncodeBlock(enc, data, (int)len) : 0;

    proto_timer(p, SMTPOUT_WAIT_COMMAND, SMTPOUT_STAGE_AUTH);
    buf_printf(&p->out, "%s%.*s\r\n", prefix, n, (const char *)enc);
    OPENSSL_cleanse(enc, sizeof enc);
}

/* auth_mechanism - what to use now: 0 none, else one SMTPOUT_AUTH_* bit */
static unsigned
auth_mechanism(const struct smtpout_proto *p)
{
    int clear_ok = p->tls_on || p->cfg.auth_in_clear;

    if (clear_ok && (p->auth_mechs & SMTPOUT_AUTH_PLAIN))
        return SMTPOUT_AUTH_PLAIN;
    if (clear_ok && (p->auth_mechs & SMTPOUT_AUTH_LOGIN))
        return SMTPOUT_AUTH_LOGIN;
    if (p->auth_mechs & SMTPOUT_AUTH_CRAM_MD5) /* the password never crosses the wire */
        return SMTPOUT_AUTH_CRAM_MD5;
    return 0;
}

/* proto_auth_start - AUTH with the best mechanism, ready without AUTH, or a temporary failure */
void
proto_auth_start(struct smtpout_proto *p)
{
    unsigned mech;

    if (!(p->auth_user[0] || p->auth_pass[0]) || !(p->caps & SMTPOUT_CAP_AUTH)) {
        proto_become_ready(p);
        return;
    }
    if ((mech = auth_mechanism(p)) == 0) {
        smtpout_proto_fail_local(p, SMTPOUT_TEMP, "4.7.11",
                                 p->auth_mechs & (SMTPOUT_AUTH_PLAIN | SMTPOUT_AUTH_LOGIN)
                                     ? "AUTH needs TLS: PLAIN and LOGIN are not sent in clear "
                                       "(use-unencrypted-plain-auth)"
                                     : "no AUTH mechanism in common (we do PLAIN, LOGIN, "
                                       "CRAM-MD5)");
        return;
    }
    p->state = P_AUTH;
    if (mech == SMTPOUT_AUTH_PLAIN) {
        /* RFC 4616: authzid NUL authcid NUL password, as the initial response */
        unsigned char resp[2 * AUTH_FIELD_MAX + 2];
        size_t ul = strlen(p->auth_user), pl = strlen(p->auth_pass);

        resp[0] = 0;
        memcpy(resp + 1, p->auth_user, ul);
        resp[1 + ul] = 0;
        memcpy(resp + 2 + ul, p->auth_pass, pl);
        p->auth_step = AUTH_FINAL;
        b64_command(p, "AUTH PLAIN ", resp, 2 + ul + pl);
        OPENSSL_cleanse(resp, sizeof resp);
    } else if (mech == SMTPOUT_AUTH_LOGIN) {
        p->auth_step = AUTH_LOGIN_USER;
        proto_command(p, "AUTH LOGIN", SMTPOUT_STAGE_AUTH);
    } else {
        p->auth_step = AUTH_CRAM_MD5;
        proto_command(p, "AUTH CRAM-MD5", SMTPOUT_STAGE_AUTH);
    }
}

/* cram_md5_answer - "user hex(HMAC-MD5(password, challenge))" for the 334 text R; 0 or -1 */
static int
cram_md5_answer(struct smtpout_proto *p, const struct smtpout_reply *r)
{
    const char *b64 = r->text + 3 + (r->text[3] == ' ');
    size_t blen = strcspn(b64, " ");
    unsigned char chal[SMTPOUT_REPLY_TEXT_MAX], mac[EVP_MAX_MD_SIZE];
    char answer[AUTH_FIELD_MAX + 1 + 2 * EVP_MAX_MD_SIZE + 1];
    unsigned maclen = 0;
    int clen;
    size_t n;

    if (blen == 0 || blen % 4 != 0 || blen > sizeof chal)
        return -1;
    if ((clen = EVP_DecodeBlock(chal, (const unsigned char *)b64, (int)blen)) < 0)
        return -1;
    while (clen > 0 && blen >= 2 && b64[blen - 1] == '=') { /* DecodeBlock counts padding */
        clen--;
        blen--;
    }
    if (HMAC(EVP_md5(), p->auth_pass, (int)strlen(p->auth_pass), chal, (size_t)clen, mac,
             &maclen) == NULL)
        return -1;
    n = (size_t)snprintf(answer, sizeof answer, "%s ", p->auth_user);
    for (unsigned i = 0; i < maclen && n + 3 <= sizeof answer; i++)
        n += (size_t)snprintf(answer + n, sizeof answer - n, "%02x", mac[i]);
    b64_command(p, "", (const unsigned char *)answer, n);
    OPENSSL_cleanse(answer, sizeof answer);
    OPENSSL_cleanse(mac, sizeof mac);
    return 0;
}

/* auth_failed - a refusal or a broken exchange: temporary, the session ends */
static void
auth_failed(struct smtpout_proto *p, struct smtpout_reply *r)
{
    r->stage = SMTPOUT_STAGE_AUTH;
    r->cls = SMTPOUT_TEMP; /* our credentials, not the mail: no bounce */
    if (r->status[0] == '5' || r->status[0] == '2')
        r->status[0] = '4';
    smtpout_proto_fail(p, r);
}

void
proto_on_auth(struct smtpout_proto *p, struct smtpout_reply *r)
{
    const char *field;

    if (r->code == 235 && p->auth_step == AUTH_FINAL) {
        p->authenticated = 1;
        proto_become_ready(p);
        return;
    }
    if (r->code != 334 || p->auth_step == AUTH_FINAL) {
        if (r->code == 334) /* a challenge we did not ask for */
            smtpout_reply_local(r, SMTPOUT_TEMP, SMTPOUT_STAGE_AUTH, "4.7.0",
                                "unexpected AUTH challenge from %s[%s]", p->mx_name, p->dest_ip);
        auth_failed(p, r);
        return;
    }
    switch (p->auth_step) {
    case AUTH_LOGIN_USER:
    case AUTH_LOGIN_PASS:
        field = p->auth_step == AUTH_LOGIN_USER ? p->auth_user : p->auth_pass;
        p->auth_step = p->auth_step == AUTH_LOGIN_USER ? AUTH_LOGIN_PASS : AUTH_FINAL;
        b64_command(p, "", (const unsigned char *)field, strlen(field));
        break;
    case AUTH_CRAM_MD5:
        p->auth_step = AUTH_FINAL;
        if (cram_md5_answer(p, r) < 0) {
            smtpout_reply_local(r, SMTPOUT_TEMP, SMTPOUT_STAGE_AUTH, "4.7.0",
                                "malformed CRAM-MD5 challenge from %s[%s]", p->mx_name, p->dest_ip);
            auth_failed(p, r);
        }
        break;
    default:
        auth_failed(p, r);
        break;
    }
}
