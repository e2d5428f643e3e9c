/*
 * smtpd_address.c - RFC 5321 paths, RFC 3461 xtext, MAIL/RCPT parameters
 *
 * Owns nothing: pure functions from (pointer, length) to caller buffers.
 *
 * STANDARDS: RFC 5321 §4.1.2 (Path, Mailbox, Local-part, Domain,
 * address-literal), §4.5.3.1 (size limits); RFC 6531 (UTF-8 mailboxes);
 * RFC 1870 SIZE, RFC 6152 BODY, RFC 3461 RET/ENVID/NOTIFY/ORCPT and xtext,
 * RFC 4954 §5 AUTH=.
 *
 * SECURITY: this is where peer bytes become fields the rest of the system
 * trusts. Every read is preceded by an index < len check (CVE-2020-8794 was
 * a fixed offset read past the end), and no decoded output may contain a
 * control byte, so nothing downstream can be split by a CR or LF.
 */
#include <arpa/inet.h>
#include <stdint.h>
#include <string.h>
#include <strings.h>

#include "smtpd_address.h"

#define IS_ALPHA(c)  (((c) >= 'a' && (c) <= 'z') || ((c) >= 'A' && (c) <= 'Z'))
#define IS_DIGIT(c)  ((c) >= '0' && (c) <= '9')
#define IS_LETDIG(c) (IS_ALPHA(c) || IS_DIGIT(c))

/* smtpd_utf8_seq_len - well-formed UTF-8 (RFC 3629 table) or 0 */
size_t
smtpd_utf8_seq_len(const unsigned char *in, size_t len)
{
    unsigned char c, lo = 0x80, hi = 0xbf;
    size_t n, i;

    if (len == 0)
        return 0;
    c = in[0];
    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf)
        n = 2;
    else if (c >= 0xe0 && c <= 0xef)
        n = 3;
    else if (c >= 0xf0 && c <= 0xf4)
        n = 4;
    else
        return 0;
    if (len < n)
        return 0;
    /* Second-byte ranges exclude overlongs, surrogates and > U+10FFFF. */
    if (c == 0xe0)
        lo = 0xa0;
    else if (c == 0xed)
        hi = 0x9f;
    else if (c == 0xf0)
        lo = 0x90;
    else if (c == 0xf4)
        hi = 0x8f;
    if (in[1] < lo || in[1] > hi)
        return 0;
    for (i = 2; i < n; i++)
        if (in[i] < 0x80 || in[i] > 0xbf)
            return 0;
    return n;
}

/* is_atext - RFC 5322 atext (ASCII part) */
static bool
is_atext(unsigned char c)
{
    return IS_LETDIG(c) || (c != 0 && strchr("!#$%&'*+-/=?^_`{|}~", c));
}

/*
 * utf8_at - at a non-ASCII byte: the sequence length when UTF-8 is allowed
 * and well-formed; 0 and *err set otherwise.
 */
static size_t
utf8_at(const char *in, size_t len, size_t i, unsigned flags, enum smtpd_path_err *err)
{
    size_t n;

    if (!(flags & SMTPD_PATH_UTF8_OK)) {
        *err = SMTPD_PATH_NEED_UTF8;
        return 0;
    }
    n = smtpd_utf8_seq_len((const unsigned char *)in + i, len - i);
    if (n == 0)
        *err = SMTPD_PATH_SYNTAX;
    return n;
}

/* parse_dot_string - Dot-string local part at IN[*ip..LEN) */
static enum smtpd_path_err
parse_dot_string(const char *in, size_t len, size_t *ip, unsigned flags)
{
    enum smtpd_path_err err = SMTPD_PATH_SYNTAX;
    size_t i = *ip, n;
    bool need_atom = true; /* at start and after each '.' */

    while (i < len) {
        unsigned char c = (unsigned char)in[i];

        if (c >= 0x80) {
            if ((n = utf8_at(in, len, i, flags, &err)) == 0)
                return err;
            i += n;
            need_atom = false;
        } else if (is_atext(c)) {
            i++;
            need_atom = false;
        } else if (c == '.' && !need_atom) {
            i++;
            need_atom = true;
        } else {
            break;
        }
    }
    if (need_atom)
        return SMTPD_PATH_SYNTAX;
    *ip = i;
    return SMTPD_PATH_OK;
}

/* parse_quoted_string - Quoted-string local part; IN[*ip] is the '"' */
static enum smtpd_path_err
parse_quoted_string(const char *in, size_t len, size_t *ip, unsigned flags)
{
    enum smtpd_path_err err = SMTPD_PATH_SYNTAX;
    size_t i = *ip + 1, n;

    while (i < len) {
        unsigned char c = (unsigned char)in[i];

        if (c == '"') {
            *ip = i + 1;
            return SMTPD_PATH_OK;
        }
        if (c == '\\') {
            /* quoted-pair: backslash then %d32-126 */
            if (i + 1 >= len || in[i + 1] < 32 || in[i + 1] > 126)
                return SMTPD_PATH_SYNTAX;
            i += 2;
        } else if (c >= 0x80) {
            if ((n = utf8_at(in, len, i, flags, &err)) == 0)
                return err;
            i += n;
        } else if (c >= 32 && c <= 126) {
            i++;
        } else {
            return SMTPD_PATH_SYNTAX;
        }
    }
    return SMTPD_PATH_SYNTAX;
}

/* parse_address_literal - "[IPv4]" or "[IPv6:...]"; IN[*ip] is '[' */
static enum smtpd_path_err
parse_address_literal(const char *in, size_t len, size_t *ip)
{
    char lit[INET6_ADDRSTRLEN + 8];
    unsigned char addr[sizeof(struct in6_addr)];
    size_t start = *ip + 1, i = start, n;
    int af = AF_INET;
    const char *p;

    while (i < len && in[i] != ']')
        i++;
    if (i >= len)
        return SMTPD_PATH_SYNTAX;
    n = i - start;
    if (n == 0 || n >= sizeof(lit))
        return SMTPD_PATH_SYNTAX;
    memcpy(lit, in + start, n);
    lit[n] = '\0';
    p = lit;
    if (n > 5 && strncasecmp(lit, "IPv6:", 5) == 0) {
        af = AF_INET6;
        p = lit + 5;
    }
    if (inet_pton(af, p, addr) != 1)
        return SMTPD_PATH_SYNTAX; /* includes General-address-literal */
    *ip = i + 1;
    return SMTPD_PATH_OK;
}

/* parse_domain - Domain (LDH or U-labels) or address literal */
static enum smtpd_path_err
parse_domain(const char *in, size_t len, size_t *ip, unsigned flags)
{
    enum smtpd_path_err err = SMTPD_PATH_SYNTAX;
    size_t i = *ip, label = 0, n;
    unsigned char last = 0;

    if (i < len && in[i] == '[')
        return parse_address_literal(in, len, ip);
    while (i < len) {
        unsigned char c = (unsigned char)in[i];

        if (c >= 0x80) {
            if ((n = utf8_at(in, len, i, flags, &err)) == 0)
                return err;
            i += n;
            label += n;
            last = c;
        } else if (IS_LETDIG(c) || (c == '-' && label > 0)) {
            i++;
            label++;
            last = c;
        } else if (c == '.' && label > 0 && last != '-') {
            i++;
            label = 0;
        } else {
            break;
        }
        if (label > 63)
            return SMTPD_PATH_TOO_LONG;
    }
    if (label == 0 || last == '-')
        return SMTPD_PATH_SYNTAX;
    if (i - *ip > SMTPD_DOMAIN_MAX)
        return SMTPD_PATH_TOO_LONG;
    *ip = i;
    return SMTPD_PATH_OK;
}

/* skip_source_route - "@d1,@d2:" (RFC 5321 A-d-l, to be ignored) */
static enum smtpd_path_err
skip_source_route(const char *in, size_t len, size_t *ip)
{
    enum smtpd_path_err err;
    size_t i = *ip;

    for (;;) {
        if (i >= len || in[i] != '@')
            return SMTPD_PATH_SYNTAX;
        i++;
        if ((err = parse_domain(in, len, &i, 0)) != SMTPD_PATH_OK)
            return err;
        if (i < len && in[i] == ':') {
            *ip = i + 1;
            return SMTPD_PATH_OK;
        }
        if (i >= len || in[i] != ',')
            return SMTPD_PATH_SYNTAX;
        i++;
    }
}

/* smtpd_parse_path - see smtpd_address.h */
enum smtpd_path_err
smtpd_parse_path(const char *in, size_t len, unsigned flags, char *out, size_t *consumed)
{
    enum smtpd_path_err err;
    size_t i = 1, local, at, end; /* at: index of the closing '>' */

    out[0] = '\0';
    if (len < 2 || in[0] != '<')
        return SMTPD_PATH_SYNTAX;
    if (in[1] == '>') {
        if (!(flags & SMTPD_PATH_NULL_OK))
            return SMTPD_PATH_SYNTAX;
        *consumed = 2;
        return SMTPD_PATH_OK;
    }
    if (in[1] == '@' && (err = skip_source_route(in, len, &i)) != SMTPD_PATH_OK)
        return err;

    /* Local part. */
    local = i;
    if (i < len && in[i] == '"')
        err = parse_quoted_string(in, len, &i, flags);
    else
        err = parse_dot_string(in, len, &i, flags);
    if (err != SMTPD_PATH_OK)
        return err;
    if (i - local > SMTPD_LOCAL_MAX)
        return SMTPD_PATH_TOO_LONG;

    /* RFC 5321 §4.5.1: "<Postmaster>" without a domain must be accepted. */
    if (i < len && in[i] == '>' && (flags & SMTPD_PATH_POSTMASTER_OK) && i - local == 10 &&
        strncasecmp(in + local, "postmaster", 10) == 0) {
        at = i;
        goto done;
    }
    if (i >= len || in[i] != '@')
        return SMTPD_PATH_SYNTAX;
    i++;
    if ((err = parse_domain(in, len, &i, flags)) != SMTPD_PATH_OK)
        return err;
    at = i; /* now: where the '>' must be */
done:
    if (at >= len || in[at] != '>')
        return SMTPD_PATH_SYNTAX;
    end = at + 1;
    if (end > SMTPD_PATH_MAX || at - local > SMTPD_ADDR_MAX)
        return SMTPD_PATH_TOO_LONG;
    memcpy(out, in + local, at - local);
    out[at - local] = '\0';
    *consumed = end;
    return SMTPD_PATH_OK;
}

/* hexval - value of one hex digit, or -1 */
static int
hexval(char c)
{
    if (IS_DIGIT(c))
        return c - '0';
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    if (c >= 'a' && c <= 'f') /* lenient: RFC says upper case */
        return c - 'a' + 10;
    return -1;
}

/* smtpd_xtext_decode - see smtpd_address.h */
int
smtpd_xtext_decode(const char *in, size_t len, char *out, size_t outsize)
{
    size_t i = 0, o = 0;

    while (i < len) {
        int c = (unsigned char)in[i];

        if (c == '+') {
            int hi, lo;

            if (len - i < 3 || (hi = hexval(in[i + 1])) < 0 || (lo = hexval(in[i + 2])) < 0)
                return -1;
            c = hi << 4 | lo;
            i += 3;
        } else if (c < 33 || c > 126 || c == '=') {
            return -1;
        } else {
            i++;
        }
        /* Decoded controls (CR, LF, NUL...) never reach the host. */
        if (c < 32 || c > 126)
            return -1;
        if (o + 1 >= outsize)
            return -1;
        out[o++] = (char)c;
    }
    if (outsize == 0)
        return -1;
    out[o] = '\0';
    return (int)o;
}

/* One "keyword[=value]" token. */
struct param {
    const char *key;
    size_t keylen;
    const char *val; /* NULL when there is no "=" */
    size_t vallen;
};

/*
 * next_param - split the next token off IN[*ip..LEN). Returns 1 with a
 * token, 0 at the end, -1 on bad syntax (RFC 5321 esmtp-keyword/value).
 */
static int
next_param(const char *in, size_t len, size_t *ip, struct param *p)
{
    size_t i = *ip;

    while (i < len && in[i] == ' ')
        i++;
    if (i >= len)
        return 0;
    p->key = in + i;
    if (!IS_LETDIG((unsigned char)in[i]))
        return -1;
    while (i < len && (IS_LETDIG((unsigned char)in[i]) || in[i] == '-'))
        i++;
    p->keylen = (size_t)(in + i - p->key);
    p->val = NULL;
    p->vallen = 0;
    if (i < len && in[i] == '=') {
        p->val = in + ++i;
        while (i < len && in[i] >= 33 && in[i] <= 126 && in[i] != '=')
            i++;
        p->vallen = (size_t)(in + i - p->val);
        if (p->vallen == 0)
            return -1;
    }
    if (i < len && in[i] != ' ')
        return -1;
    *ip = i;
    return 1;
}

/* key_is - case-insensitive keyword match */
static bool
key_is(const struct param *p, const char *name)
{
    return p->keylen == strlen(name) && strncasecmp(p->key, name, p->keylen) == 0;
}

/* val_is - case-insensitive value match */
static bool
val_is(const char *v, size_t n, const char *name)
{
    return n == strlen(name) && strncasecmp(v, name, n) == 0;
}

/* parse_size - RFC 1870 size-value; saturates at UINT64_MAX */
static bool
parse_size(const struct param *p, uint64_t *size)
{
    uint64_t v = 0;
    size_t i;

    if (p->val == NULL || p->vallen > 20)
        return false;
    for (i = 0; i < p->vallen; i++) {
        unsigned d = (unsigned)(p->val[i] - '0');

        if (d > 9)
            return false;
        v = v > (UINT64_MAX - d) / 10 ? UINT64_MAX : v * 10 + d;
    }
    *size = v;
    return true;
}

/* mail_param - apply one MAIL parameter; SEEN tracks repeats */
static enum smtpd_param_err
mail_param(const struct param *t, bool utf8_offered, bool auth_offered, struct smtpd_mail_params *p,
           unsigned *seen)
{
    unsigned bit;

    if (key_is(t, "SIZE"))
        bit = 1;
    else if (key_is(t, "BODY"))
        bit = 2;
    else if (key_is(t, "SMTPUTF8") && utf8_offered)
        bit = 4;
    else if (key_is(t, "RET"))
        bit = 8;
    else if (key_is(t, "ENVID"))
        bit = 16;
    else if (key_is(t, "AUTH") && auth_offered)
        bit = 32;
    else
        return SMTPD_PARAM_UNKNOWN;
    if (*seen & bit)
        return SMTPD_PARAM_SYNTAX;
    *seen |= bit;

    switch (bit) {
    case 1:
        p->size_given = true;
        return parse_size(t, &p->size) ? SMTPD_PARAM_OK : SMTPD_PARAM_SYNTAX;
    case 2:
        if (t->val && val_is(t->val, t->vallen, "7BIT"))
            p->body = SMTPD_BODY_7BIT;
        else if (t->val && val_is(t->val, t->vallen, "8BITMIME"))
            p->body = SMTPD_BODY_8BITMIME;
        else
            return SMTPD_PARAM_SYNTAX;
        return SMTPD_PARAM_OK;
    case 4:
        p->smtputf8 = true;
        return t->val ? SMTPD_PARAM_SYNTAX : SMTPD_PARAM_OK;
    case 8:
        if (t->val && val_is(t->val, t->vallen, "FULL"))
            p->ret = SMTPD_RET_FULL;
        else if (t->val && val_is(t->val, t->vallen, "HDRS"))
            p->ret = SMTPD_RET_HDRS;
        else
            return SMTPD_PARAM_SYNTAX;
        return SMTPD_PARAM_OK;
    case 16:
        if (t->val == NULL ||
            smtpd_xtext_decode(t->val, t->vallen, p->envid, sizeof(p->envid)) <= 0)
            return SMTPD_PARAM_SYNTAX;
        return SMTPD_PARAM_OK;
    default: /* AUTH=xtext mailbox or "<>" */
        if (t->val == NULL || smtpd_xtext_decode(t->val, t->vallen, p->auth, sizeof(p->auth)) <= 0)
            return SMTPD_PARAM_SYNTAX;
        return SMTPD_PARAM_OK;
    }
}

/* smtpd_parse_mail_params - see smtpd_address.h */
enum smtpd_param_err
smtpd_parse_mail_params(const char *in, size_t len, bool smtputf8_offered, bool auth_offered,
                        struct smtpd_mail_params *p)
{
    struct param t;
    enum smtpd_param_err err;
    unsigned seen = 0;
    size_t i = 0;
    int r;

    memset(p, 0, sizeof(*p));
    while ((r = next_param(in, len, &i, &t)) > 0)
        if ((err = mail_param(&t, smtputf8_offered, auth_offered, p, &seen)))
            return err;
    return r < 0 ? SMTPD_PARAM_SYNTAX : SMTPD_PARAM_OK;
}

/* parse_notify - "NEVER" alone, or a list of SUCCESS, FAILURE, DELAY */
static bool
parse_notify(const char *v, size_t n, unsigned *notify)
{
    size_t i = 0, start;

    *notify = 0;
    while (i <= n) {
        unsigned bit;

        start = i;
        while (i < n && v[i] != ',')
            i++;
        if (val_is(v + start, i - start, "NEVER"))
            bit = SMTPD_NOTIFY_NEVER;
        else if (val_is(v + start, i - start, "SUCCESS"))
            bit = SMTPD_NOTIFY_SUCCESS;
        else if (val_is(v + start, i - start, "FAILURE"))
            bit = SMTPD_NOTIFY_FAILURE;
        else if (val_is(v + start, i - start, "DELAY"))
            bit = SMTPD_NOTIFY_DELAY;
        else
            return false;
        if (*notify & bit)
            return false;
        *notify |= bit;
        i++; /* past the ',' (or the end) */
    }
    return !((*notify & SMTPD_NOTIFY_NEVER) && *notify != SMTPD_NOTIFY_NEVER);
}

/* parse_orcpt - "addr-type;xtext" (RFC 3461 §4.2) */
static bool
parse_orcpt(const char *v, size_t n, struct smtpd_rcpt_params *p)
{
    size_t i = 0;

    if (n > SMTPD_ORCPT_MAX)
        return false;
    while (i < n && (IS_LETDIG((unsigned char)v[i]) || v[i] == '-'))
        i++;
    if (i == 0 || i > SMTPD_ORCPT_TYPE_MAX || i >= n || v[i] != ';')
        return false;
    memcpy(p->orcpt_type, v, i);
    p->orcpt_type[i] = '\0';
    return smtpd_xtext_decode(v + i + 1, n - i - 1, p->orcpt, sizeof(p->orcpt)) > 0;
}

/* smtpd_parse_rcpt_params - see smtpd_address.h */
enum smtpd_param_err
smtpd_parse_rcpt_params(const char *in, size_t len, struct smtpd_rcpt_params *p)
{
    struct param t;
    size_t i = 0;
    int r;

    memset(p, 0, sizeof(*p));
    while ((r = next_param(in, len, &i, &t)) > 0) {
        if (key_is(&t, "NOTIFY")) {
            if (p->notify || t.val == NULL || !parse_notify(t.val, t.vallen, &p->notify))
                return SMTPD_PARAM_SYNTAX;
        } else if (key_is(&t, "ORCPT")) {
            if (p->orcpt_type[0] || t.val == NULL || !parse_orcpt(t.val, t.vallen, p))
                return SMTPD_PARAM_SYNTAX;
        } else {
            return SMTPD_PARAM_UNKNOWN;
        }
    }
    return r < 0 ? SMTPD_PARAM_SYNTAX : SMTPD_PARAM_OK;
}
