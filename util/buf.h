/*
 * buf.h - growable byte buffers
 *
 * A struct buf owns DATA (cap bytes, len used, always NUL-terminated past len
 * so it can be read as a C string when it holds text). Growth checks for size
 * overflow and a per-buffer ceiling (buf->limit, 0 = none): an append that
 * would pass the ceiling fails with -EMSGSIZE and leaves the buffer unchanged,
 * which is how network readers bound what a peer can make us hold.
 *
 * Ownership: buf_free() releases DATA; buf_detach() hands DATA to the caller.
 */
#ifndef PMTA_BUF_H
#define PMTA_BUF_H

#include <stddef.h>
#include <stdint.h>

struct buf {
    char *data;
    size_t len;
    size_t cap;
    size_t limit;
};

#define BUF_INIT      \
    {                 \
        NULL, 0, 0, 0 \
    }

void buf_init(struct buf *b, size_t limit);
void buf_free(struct buf *b);
/* buf_reserve - make room for N more bytes; 0 or -EMSGSIZE */
int buf_reserve(struct buf *b, size_t n);
/* buf_append - append N bytes; 0 or -EMSGSIZE */
int buf_append(struct buf *b, const void *p, size_t n);
int buf_append_str(struct buf *b, const char *s);
int buf_printf(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int buf_append_u8(struct buf *b, uint8_t v);
int buf_append_u16(struct buf *b, uint16_t v);
int buf_append_u32(struct buf *b, uint32_t v);
int buf_append_u64(struct buf *b, uint64_t v);
/* buf_consume - drop the first N bytes (N <= len) */
void buf_consume(struct buf *b, size_t n);
void buf_reset(struct buf *b);
/* buf_truncate - keep the first LEN bytes (no-op if LEN >= len) */
void buf_truncate(struct buf *b, size_t len);
/* buf_detach - return DATA (caller frees) and reset the buffer */
char *buf_detach(struct buf *b, size_t *lenp);

#endif
