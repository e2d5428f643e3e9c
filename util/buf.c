/*
 * buf.c - growable byte buffers with an optional ceiling
 *
 * Owns the DATA of each struct buf it grows. The ceiling (limit) is what lets a
 * network reader refuse to hold more than it promised; it is checked before any
 * memory is grown, and size arithmetic is checked for overflow.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "msg.h"
#include "xalloc.h"

void
buf_init(struct buf *b, size_t limit)
{
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
    b->limit = limit;
}

void
buf_free(struct buf *b)
{
    free(b->data);
    buf_init(b, b->limit);
}

int
buf_reserve(struct buf *b, size_t n)
{
    size_t need, cap;

    if (n > SIZE_MAX - b->len - 1)
        return -EMSGSIZE;
    need = b->len + n;
    if (b->limit && need > b->limit)
        return -EMSGSIZE;
    if (need + 1 <= b->cap)
        return 0;
    cap = b->cap ? b->cap : 64;
    while (cap < need + 1)
        cap = cap > SIZE_MAX / 2 ? need + 1 : cap * 2;
    b->data = xrealloc(b->data, cap);
    b->cap = cap;
    return 0;
}

int
buf_append(struct buf *b, const void *p, size_t n)
{
    int err = buf_reserve(b, n);

    if (err)
        return err;
    if (n)
        memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0';
    return 0;
}

int
buf_append_str(struct buf *b, const char *s)
{
    return buf_append(b, s, strlen(s));
}

int
buf_printf(struct buf *b, const char *fmt, ...)
{
    va_list ap;
    int n, err;

    va_start(ap, fmt);
    n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0)
        msg_panic("buf_printf: bad format '%s'", fmt);
    if ((err = buf_reserve(b, (size_t)n)) != 0)
        return err;
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
    return 0;
}

int
buf_append_u8(struct buf *b, uint8_t v)
{
    return buf_append(b, &v, 1);
}

int
buf_append_u16(struct buf *b, uint16_t v)
{
    uint8_t p[2] = { (uint8_t)(v >> 8), (uint8_t)v };

    return buf_append(b, p, sizeof(p));
}

int
buf_append_u32(struct buf *b, uint32_t v)
{
    uint8_t p[4] = { (uint8_t)(v >> 24), (uint8_t)(v >> 16), (uint8_t)(v >> 8), (uint8_t)v };

    return buf_append(b, p, sizeof(p));
}

int
buf_append_u64(struct buf *b, uint64_t v)
{
    int err = buf_append_u32(b, (uint32_t)(v >> 32));

    return err ? err : buf_append_u32(b, (uint32_t)v);
}

void
buf_consume(struct buf *b, size_t n)
{
    if (n > b->len)
        msg_panic("buf_consume: %zu > %zu", n, b->len);
    memmove(b->data, b->data + n, b->len - n);
    b->len -= n;
    if (b->data)
        b->data[b->len] = '\0';
}

void
buf_reset(struct buf *b)
{
    b->len = 0;
    if (b->data)
        b->data[0] = '\0';
}

void
buf_truncate(struct buf *b, size_t len)
{
    if (len >= b->len)
        return;
    b->len = len;
    b->data[len] = '\0';
}

char *
buf_detach(struct buf *b, size_t *lenp)
{
    char *p = b->data;

    if (lenp)
        *lenp = b->len;
    if (p == NULL)
        p = xstrdup("");
    buf_init(b, b->limit);
    return p;
}
