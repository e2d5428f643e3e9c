/*
 * smtpout_sts_policy.c - the MTA-STS formats (RFC 8461): the policy file,
 * the TXT record's id, and MX pattern matching (contract in smtpout_sts.h)
 *
 * Pure functions over bytes: no I/O, no allocation. They are the fuzzing
 * entry points for MTA-STS (smtpout_sts_parse, smtpout_sts_txt_id).
 *
 * SECURITY: both inputs come from the network (an HTTPS body, a TXT
 * record). Lines are bounded (a longer line is an error, not a truncated
 * value), every copy is length-checked against its destination, a name is
 * accepted only with DNS name characters, and counts are capped.
 */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "smtpout_sts.h"

#define LINE_MAX_BYTES 1024 /* one policy line */

const char *
smtpout_sts_mode_name(enum smtpout_sts_mode mode)
{
    return mode == SMTPOUT_STS_ENFORCE   ? "enforce"
           : mode == SMTPOUT_STS_TESTING ? "testing"
                                         : "none";
}

static int
fail(char *err, size_t errlen, const char *what, unsigned line)
{
    if (line)
        snprintf(err, errlen, "line %u: %s", line, what);
    else
        snprintf(err, errlen, "%s", what);
    return -EINVAL;
}

/* mx_pattern_ok - a host name, or "*." and a host name: letters, digits, '-', '.', '_' */
static int
mx_pattern_ok(const char *v, size_t len)
{
    size_t i = 0;

    if (len >= 2 && v[0] == '*' && v[1] == '.')
        i = 2;
    if (i == len || len > MXDNS_NAME_MAX)
        return 0;
    for (; i < len; i++)
        if (!isalnum((unsigned char)v[i]) && v[i] != '-' && v[i] != '.' && v[i] != '_')
            return 0;
    return 1;
}

/* policy_field - one "key: value" line (KEY and VALUE trimmed); 0 or -EINVAL */
static int
policy_field(struct smtpout_sts_policy *p, const char *key, const char *v, size_t vlen,
             unsigned line, int *seen_version, char *err, size_t errlen)
{
    if (strcasecmp(key, "version") == 0) {
        if (vlen != 5 || strncmp(v, "STSv1", 5) != 0)
            return fail(err, errlen, "version is not STSv1", line);
        *seen_version = 1;
    } else if (strcasecmp(key, "mode") == 0) {
        if (vlen == 7 && strncasecmp(v, "enforce", 7) == 0)
            p->mode = SMTPOUT_STS_ENFORCE;
        else if (vlen == 7 && strncasecmp(v, "testing", 7) == 0)
            p->mode = SMTPOUT_STS_TESTING;
        else if (vlen == 4 && strncasecmp(v, "none", 4) == 0)
            p->mode = SMTPOUT_STS_NONE;
        else
            return fail(err, errlen, "mode is not enforce, testing or none", line);
    } else if (strcasecmp(key, "max_age") == 0) {
        unsigned long n = 0;

        if (vlen == 0 || vlen > 10)
            return fail(err, errlen, "bad max_age", line);
        for (size_t i = 0; i < vlen; i++) {
            if (!isdigit((unsigned char)v[i]))
                return fail(err, errlen, "bad max_age", line);
            n = n * 10 + (unsigned long)(v[i] - '0');
        }
        p->max_age = n > SMTPOUT_STS_MAX_AGE_MAX ? SMTPOUT_STS_MAX_AGE_MAX : n;
    } else if (strcasecmp(key, "mx") == 0) {
        if (!mx_pattern_ok(v, vlen))
            return fail(err, errlen, "bad mx pattern", line);
        if (p->nmx < SMTPOUT_STS_MX_MAX) {
            char *dst = p->mx[p->nmx++];
            for (size_t i = 0; i < vlen; i++)
                dst[i] = (char)tolower((unsigned char)v[i]);
            dst[vlen] = 0;
            if (vlen > 1 && dst[vlen - 1] == '.')
                dst[vlen - 1] = 0;
        }
    }
    /* other fields: ignored (RFC 8461 3.2: extensions) */
    return 0;
}

int
smtpout_sts_parse(const char *text, size_t len, struct smtpout_sts_policy *out, char *err,
                  size_t errlen)
{
    struct smtpout_sts_policy p;
    size_t pos = 0;
    unsigned line = 0;
    int seen_version = 0, seen_mode = 0, seen_age = 0;

    memset(&p, 0, sizeof p);
    while (pos < len) {
        const char *nl = memchr(text + pos, '\n', len - pos), *l = text + pos, *colon, *v;
        size_t llen = nl ? (size_t)(nl - l) : len - pos, klen, vlen;
        char key[32];
        int rc;

        pos += llen + (nl ? 1 : 0);
        line++;
        if (llen > 0 && l[llen - 1] == '\r')
            llen--;
        if (llen > LINE_MAX_BYTES)
            return fail(err, errlen, "line too long", line);
        if (llen == 0)
            continue;
        if ((colon = memchr(l, ':', llen)) == NULL)
            return fail(err, errlen, "line without ':'", line);
        for (klen = (size_t)(colon - l); klen > 0 && (l[klen - 1] == ' ' || l[klen - 1] == '\t');
             klen--)
            ;
        v = colon + 1;
        vlen = llen - (size_t)(v - l);
        while (vlen > 0 && (*v == ' ' || *v == '\t'))
            v++, vlen--;
        while (vlen > 0 && (v[vlen - 1] == ' ' || v[vlen - 1] == '\t'))
            vlen--;
        if (klen == 0 || klen >= sizeof key)
            continue; /* not a field we know */
        memcpy(key, l, klen);
        key[klen] = 0;
        seen_mode |= strcasecmp(key, "mode") == 0;
        seen_age |= strcasecmp(key, "max_age") == 0;
        if ((rc = policy_field(&p, key, v, vlen, line, &seen_version, err, errlen)) < 0)
            return rc;
    }
    if (!seen_version)
        return fail(err, errlen, "no version: STSv1", 0);
    if (!seen_mode)
        return fail(err, errlen, "no mode", 0);
    if (!seen_age)
        return fail(err, errlen, "no max_age", 0);
    if (p.nmx == 0 && p.mode != SMTPOUT_STS_NONE)
        return fail(err, errlen, "no mx", 0);
    *out = p;
    return 0;
}

int
smtpout_sts_txt_id(const char *txt, char *id)
{
    const char *p = txt;
    int version = 0, have_id = 0;

    /* sts-text-record = sts-version 1*(sts-sep sts-field) [sts-sep]; fields "k=v", ';'-separated */
    while (*p) {
        const char *f, *eq;
        size_t flen;

        p += strspn(p, " \t");
        f = p;
        flen = strcspn(p, ";");
        p += flen;
        if (*p == ';')
            p++;
        while (flen > 0 && (f[flen - 1] == ' ' || f[flen - 1] == '\t'))
            flen--;
        if (flen == 0)
            continue;
        if ((eq = memchr(f, '=', flen)) == NULL)
            return -EINVAL;
        if (!version) { /* the first field must be v=STSv1 */
            if ((size_t)(eq - f) != 1 || f[0] != 'v' || flen != 7 || strncmp(eq + 1, "STSv1", 5))
                return -EINVAL;
            version = 1;
            continue;
        }
        if ((size_t)(eq - f) == 2 && strncmp(f, "id", 2) == 0) {
            size_t ilen = flen - 3;

            if (ilen == 0 || ilen > SMTPOUT_STS_ID_MAX)
                return -EINVAL;
            for (size_t i = 0; i < ilen; i++)
                if (!isalnum((unsigned char)eq[1 + i]))
                    return -EINVAL;
            memcpy(id, eq + 1, ilen);
            id[ilen] = 0;
            have_id = 1;
        }
    }
    return version && have_id ? 0 : -EINVAL;
}

int
smtpout_sts_mx_match(const struct smtpout_sts_policy *p, const char *mx)
{
    char name[MXDNS_NAME_MAX + 1];
    size_t len = strlen(mx), i;

    if (len > 0 && mx[len - 1] == '.')
        len--;
    if (len == 0 || len > MXDNS_NAME_MAX)
        return 0;
    for (i = 0; i < len; i++)
        name[i] = (char)tolower((unsigned char)mx[i]);
    name[len] = 0;
    for (i = 0; i < p->nmx; i++) {
        const char *pat = p->mx[i], *dot;

        if (pat[0] != '*') {
            if (strcmp(pat, name) == 0)
                return 1;
            continue;
        }
        /* "*.example.net": exactly one non-empty label before ".example.net" */
        dot = strchr(name, '.');
        if (dot && dot != name && strcmp(dot, pat + 1) == 0)
            return 1;
    }
    return 0;
}
