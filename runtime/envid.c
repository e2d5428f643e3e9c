/*
 * envid.c - the tracking envelope id: made by smtp-out, read back by qmgr's
 * bounce processor (the format is in envid.h)
 *
 * Owns: nothing.
 *
 * SECURITY: envid_track_parse reads remote text; see envid.h.
 */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "envid.h"
#include "qstore.h"

#define PREFIX     "opmta1."
#define PREFIX_LEN (sizeof PREFIX - 1)

/* carried - may S go into the id as it is? (printable, not a blank, not xtext's '+' '=') */
static int
carried(const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];

        if (c <= 0x20 || c >= 0x7f || c == '+' || c == '=')
            return 0;
    }
    return 1;
}

static int
is_qid(const char *s, size_t len)
{
    if (len != QSTORE_QID_LEN)
        return 0;
    for (size_t i = 0; i < len; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'A' && s[i] <= 'F')))
            return 0;
    return 1;
}

/* envid_track_make - see envid.h */
int
envid_track_make(char *out, size_t size, const char *qid, const char *vmta, const char *job)
{
    size_t vlen = vmta ? strlen(vmta) : 0, jlen = job ? strlen(job) : 0;
    int n;

    if (size > 0)
        out[0] = '\0';
    if (qid == NULL || !is_qid(qid, strlen(qid)) || vlen == 0 || !carried(vmta, vlen))
        return -EINVAL;
    if (!carried(job, jlen))
        jlen = 0;
    /* prefix, qid, '.', the name's length, '.', the name, '.', the job */
    if (PREFIX_LEN + QSTORE_QID_LEN + 1 +
            (vlen < 10    ? 1
             : vlen < 100 ? 2
                          : 3) +
            1 + vlen + 1 + jlen >
        ENVID_MAX)
        jlen = 0;
    n = snprintf(out, size, PREFIX "%s.%zu.%s.%.*s", qid, vlen, vmta, (int)jlen, jlen ? job : "");
    if (n < 0 || (size_t)n > ENVID_MAX || (size_t)n >= size) {
        if (size > 0)
            out[0] = '\0';
        return -EINVAL;
    }
    return n;
}

/* take_number - the decimal at *P (1 to 3 digits) up to '.'; -1 when there is none */
static long
take_number(const char **p, const char *end)
{
    long v = 0;
    int digits = 0;

    while (*p < end && **p >= '0' && **p <= '9' && digits < 3) {
        v = v * 10 + (**p - '0');
        (*p)++;
        digits++;
    }
    if (digits == 0 || *p >= end || **p != '.')
        return -1;
    (*p)++;
    return v;
}

/* envid_track_parse - see envid.h */
int
envid_track_parse(const char *text, size_t len, struct envid_track *t)
{
    const char *p = text, *end;
    long vlen;
    size_t jlen;

    memset(t, 0, sizeof *t);
    /* surrounding blanks are the DSN field's, not the id's */
    while (len > 0 && (*p == ' ' || *p == '\t'))
        p++, len--;
    while (len > 0 &&
           (p[len - 1] == ' ' || p[len - 1] == '\t' || p[len - 1] == '\r' || p[len - 1] == '\n'))
        len--;
    end = p + len;
    if (len > ENVID_MAX || len < PREFIX_LEN + QSTORE_QID_LEN + 1 ||
        memcmp(p, PREFIX, PREFIX_LEN) != 0)
        return -EINVAL;
    p += PREFIX_LEN;
    if (!is_qid(p, QSTORE_QID_LEN) || p[QSTORE_QID_LEN] != '.')
        return -EINVAL;
    memcpy(t->qid, p, QSTORE_QID_LEN);
    p += QSTORE_QID_LEN + 1;
    /* VLEN bytes of name, then the '.' before the job: both inside the text */
    if ((vlen = take_number(&p, end)) <= 0 || (size_t)(end - p) < (size_t)vlen + 1 ||
        p[vlen] != '.' || !carried(p, (size_t)vlen))
        goto bad;
    memcpy(t->vmta, p, (size_t)vlen);
    p += vlen + 1;
    jlen = (size_t)(end - p);
    if (!carried(p, jlen))
        goto bad;
    memcpy(t->job, p, jlen);
    return 0;

bad:
    memset(t, 0, sizeof *t);
    return -EINVAL;
}
