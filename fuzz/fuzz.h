/*
 * fuzz.h - what every fuzz target in fuzz/ shares
 *
 * A target is one C file defining LLVMFuzzerTestOneInput(). It is linked
 * twice: with libFuzzer (-fsanitize=fuzzer, ./configure --enable-fuzzing,
 * make fuzz) to search for inputs, and with fuzz/replay.c into a check
 * program that `make check` runs over the target's seed corpus and
 * regression inputs with whatever compiler and sanitizers the build uses.
 *
 * FUZZ_CHECK() states a property the code under test promises (a reply
 * line is well formed, a string handed out holds no control byte); a
 * broken promise aborts, which libFuzzer reports as a finding like any
 * sanitizer error.
 */
#ifndef PMTA_FUZZ_H
#define PMTA_FUZZ_H

#include <fcntl.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "msg.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_CHECK(cond)                                                                  \
    do {                                                                                  \
        if (!(cond)) {                                                                    \
            fprintf(stderr, "%s:%d: fuzz check failed: %s\n", __FILE__, __LINE__, #cond); \
            abort();                                                                      \
        }                                                                                 \
    } while (0)

/*
 * Read sizes for the targets that feed a stream in pieces: MODE 0 gives the
 * whole rest in one read, 1 one byte per read, anything else sizes of
 * 1..MAX bytes from a generator seeded with MODE (an input always splits
 * the same way, and the fuzzer picks the split with one byte).
 */
struct fuzz_reads {
    unsigned mode;
    uint32_t rnd;
    size_t max;
};

static inline void
fuzz_reads_init(struct fuzz_reads *r, unsigned mode, size_t max)
{
    r->mode = mode;
    r->rnd = mode * 2654435761u | 1;
    r->max = max;
}

/* fuzz_reads_next - the size of the next read when LEFT (> 0) bytes remain */
static inline size_t
fuzz_reads_next(struct fuzz_reads *r, size_t left)
{
    size_t n;

    if (r->mode == 0)
        return left;
    if (r->mode == 1)
        return 1;
    r->rnd ^= r->rnd << 13;
    r->rnd ^= r->rnd >> 17;
    r->rnd ^= r->rnd << 5;
    n = 1 + r->rnd % r->max;
    return n < left ? n : left;
}

/*
 * fuzz_quiet_logs - msg_*() lines go to /dev/null: a warning per input is
 * noise, and a msg_panic() still aborts (the stack names its caller)
 */
static inline void
fuzz_quiet_logs(void)
{
    int fd = open("/dev/null", O_WRONLY | O_CLOEXEC);

    if (fd >= 0) {
        msg_use_fd(fd);
        msg_also_stderr(0);
    }
}

#endif
