/*
 * fuzz_smtpout_reply.c - fuzz target: the SMTP client's reply reader
 * (smtpout_reader_feed in smtp-out/smtpout_proto_reply.c)
 *
 * The input is what a hostile server sends: any bytes. Byte 0 seeds how
 * they are cut into reads (0: one read, 1: one byte per read, else random
 * sizes); the rest is read into replies twice, from one buffer and in
 * those reads, and both must give the same replies and stop at the same
 * error. Checked beyond the sanitizers, which is what smtpout_proto.h
 * promises: the reader always makes progress and never takes more than it
 * was given; a reply's code is 200..599 and its text starts with it, is
 * printable ASCII and at most SMTPOUT_REPLY_TEXT_MAX bytes; the enhanced
 * status is "C.S.D" of the reply's class (3xx: 2) and the class follows
 * the code; multi-line replies (up to SMTPOUT_REPLY_LINES_MAX lines) and
 * EHLO keywords are read the same in every split.
 */
#include <stdbool.h>
#include <string.h>

#include "buf.h"
#include "fuzz.h"
#include "smtpout_proto.h"

/* check_reply - what a complete reply must look like */
static void
check_reply(const struct smtpout_reply *r)
{
    size_t n = strlen(r->text), i;
    char cls = r->code / 100 == 3 ? '2' : (char)('0' + r->code / 100);
    const char *s = r->status;

    FUZZ_CHECK(r->code >= 200 && r->code <= 599);
    FUZZ_CHECK(n >= 3 && n <= SMTPOUT_REPLY_TEXT_MAX);
    FUZZ_CHECK(r->text[0] - '0' == r->code / 100 && r->text[1] - '0' == r->code / 10 % 10 &&
               r->text[2] - '0' == r->code % 10);
    for (i = 0; i < n; i++)
        FUZZ_CHECK(r->text[i] >= 0x20 && r->text[i] < 0x7f);
    FUZZ_CHECK(r->cls == (r->code >= 500   ? SMTPOUT_PERM
                          : r->code >= 400 ? SMTPOUT_TEMP
                                           : SMTPOUT_OK));
    /* "C.SSS.DDD": class digit, then two dot-separated groups of 1..3 digits */
    FUZZ_CHECK(s[0] == cls && s[1] == '.');
    s += 2;
    for (int part = 0; part < 2; part++) {
        size_t digits = strspn(s, "0123456789");

        FUZZ_CHECK(digits >= 1 && digits <= 3);
        s += digits;
        FUZZ_CHECK(*s == (part == 0 ? '.' : '\0'));
        s++;
    }
}

/* read_all - the replies in DATA as text lines into LOG, in reads of sizes from SEED */
static void
read_all(struct buf *log, const uint8_t *data, size_t size, uint8_t seed)
{
    struct smtpout_reader rd;
    struct smtpout_reply r;
    struct fuzz_reads reads;
    size_t pos = 0;

    smtpout_reader_init(&rd);
    fuzz_reads_init(&reads, seed, 97);
    while (pos < size) {
        size_t n = fuzz_reads_next(&reads, size - pos), off = 0, used;

        while (off < n) {
            enum smtpout_read rc = smtpout_reader_feed(&rd, (const char *)data + pos + off, n - off,
                                                       &used, &r);

            FUZZ_CHECK(used <= n - off);
            off += used;
            if (rc == SMTPOUT_READ_ERROR) {
                FUZZ_CHECK(*r.text);
                buf_printf(log, "error: %s\n", r.text);
                return;
            }
            if (rc == SMTPOUT_READ_MORE) {
                FUZZ_CHECK(off == n);
                break;
            }
            FUZZ_CHECK(used > 0);
            check_reply(&r);
            buf_printf(log, "%d %s %d [%s] caps=%x size=%lu\n", r.code, r.status, r.cls, r.text,
                       rd.caps, rd.size_max);
        }
        pos += n;
    }
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int init;
    struct buf whole, split;

    if (!init++)
        fuzz_quiet_logs();
    if (size < 1)
        return 0;
    buf_init(&whole, 0);
    buf_init(&split, 0);
    read_all(&whole, data + 1, size - 1, 0);
    read_all(&split, data + 1, size - 1, data[0] ? data[0] : 1);
    FUZZ_CHECK(whole.len == split.len &&
               (whole.len == 0 || memcmp(whole.data, split.data, whole.len) == 0));
    buf_free(&whole);
    buf_free(&split);
    return 0;
}
