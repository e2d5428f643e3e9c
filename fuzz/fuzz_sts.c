/*
 * fuzz_sts.c - fuzz target: MTA-STS (RFC 8461) as smtp-out reads it: the
 * HTTPS response of a policy fetch (smtpout_http_reader in
 * smtp-out/smtpout_https.c), the policy text (smtpout_sts_parse) and the
 * _mta-sts TXT record (smtpout_sts_txt_id in smtp-out/smtpout_sts_policy.c)
 *
 * The input is what the policy host sends: byte 0 picks how it is cut
 * into reads (see fuzz.h), the rest is the HTTP response; its body, when
 * one comes, is parsed as a policy, and so are the response bytes
 * themselves, and the response as a C string is read as a TXT record.
 * Checked beyond the sanitizers: the reader gives the same outcome in any
 * split; it never keeps more body than it allows; a policy that parses has
 * a known mode, an age within RFC 8461's year, MX patterns within their
 * count and length, lower case, and a mode other than none has one; a TXT
 * id is 1..32 letters and digits.
 */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "smtpout_https.h"
#include "smtpout_sts.h"

#define MAX_BODY 4096

static void
check_policy(const char *text, size_t len)
{
    static struct smtpout_sts_policy p;
    char err[256];

    if (smtpout_sts_parse(text, len, &p, err, sizeof err) != 0) {
        FUZZ_CHECK(memchr(err, 0, sizeof err) && *err);
        return;
    }
    FUZZ_CHECK(p.mode == SMTPOUT_STS_NONE || p.mode == SMTPOUT_STS_TESTING ||
               p.mode == SMTPOUT_STS_ENFORCE);
    FUZZ_CHECK(p.max_age <= SMTPOUT_STS_MAX_AGE_MAX);
    FUZZ_CHECK(p.nmx <= SMTPOUT_STS_MX_MAX && (p.mode == SMTPOUT_STS_NONE || p.nmx > 0));
    for (size_t i = 0; i < p.nmx; i++) {
        FUZZ_CHECK(memchr(p.mx[i], 0, sizeof p.mx[i]) != NULL);
        for (const char *c = p.mx[i]; *c; c++)
            FUZZ_CHECK(!isupper((unsigned char)*c));
    }
    (void)smtpout_sts_mx_match(&p, "mx1.example.com");
    (void)smtpout_sts_mx_match(&p, "MX.Example.COM.");
}

/* read_response - the HTTP outcome of DATA in reads of the given MODE, as a line of LOG */
static void
read_response(const uint8_t *data, size_t size, unsigned mode, char *log, size_t logsize,
              int want_policy)
{
    struct smtpout_http_reader rd;
    struct fuzz_reads reads;
    enum smtpout_http_read rc = HTTP_READ_MORE;
    size_t off = 0;

    smtpout_http_reader_init(&rd, MAX_BODY);
    fuzz_reads_init(&reads, mode, 61);
    while (off < size && rc == HTTP_READ_MORE) {
        size_t n = fuzz_reads_next(&reads, size - off);

        rc = smtpout_http_reader_feed(&rd, (const char *)data + off, n);
        off += n;
        FUZZ_CHECK(rd.body.len <= MAX_BODY);
    }
    if (rc == HTTP_READ_MORE)
        rc = smtpout_http_reader_eof(&rd);
    FUZZ_CHECK(rc == HTTP_READ_DONE || rc == HTTP_READ_ERROR);
    if (rc == HTTP_READ_DONE) {
        FUZZ_CHECK(memchr(rd.content_type, 0, sizeof rd.content_type) != NULL);
        snprintf(log, logsize, "done %d %s %zu", rd.status, rd.content_type, rd.body.len);
        if (want_policy)
            check_policy(rd.body.data ? rd.body.data : "", rd.body.len);
    } else {
        FUZZ_CHECK(memchr(rd.error, 0, sizeof rd.error) != NULL && *rd.error);
        snprintf(log, logsize, "error");
    }
    smtpout_http_reader_free(&rd);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int init;
    char whole[256], split[256], id[64], *txt;

    if (!init++)
        fuzz_quiet_logs();
    if (size < 1)
        return 0;
    read_response(data + 1, size - 1, 0, whole, sizeof whole, 1);
    read_response(data + 1, size - 1, data[0] ? data[0] : 1, split, sizeof split, 0);
    FUZZ_CHECK(strcmp(whole, split) == 0);
    check_policy((const char *)data + 1, size - 1);
    if ((txt = malloc(size)) == NULL)
        abort();
    memcpy(txt, data + 1, size - 1);
    txt[size - 1] = 0;
    if (smtpout_sts_txt_id(txt, id) == 0) {
        size_t n = strlen(id);

        FUZZ_CHECK(n >= 1 && n <= 32);
        for (size_t i = 0; i < n; i++)
            FUZZ_CHECK(isalnum((unsigned char)id[i]));
    }
    free(txt);
    return 0;
}
