/*
 * ipcdef.c - the field helpers the protocol expansions call (ipcdef.h)
 *
 * Owns nothing. The caps and text rules of each field come from the .def;
 * these apply them the same way on both sides of a channel.
 *
 * SECURITY: a decoded string is length-checked against its cap before it is
 * copied, and checked for NUL (ipc.c) and, for a line, CR and LF.
 */
#include <errno.h>
#include <string.h>

#include "ipcdef.h"

/* text_ok - S/LEN obeys RULE (NUL is ipc.c's business on decoding) */
static int
text_ok(const char *s, size_t len, enum ipcdef_text rule)
{
    return rule != IPCDEF_TEXT_LINE ||
           (memchr(s, '\r', len) == NULL && memchr(s, '\n', len) == NULL);
}

int
ipcdef_put_text(struct buf *out, const char *s, size_t cap, enum ipcdef_text rule)
{
    size_t len;

    if (s == NULL)
        s = "";
    len = strnlen(s, cap + 1);

    if (len > cap)
        return -EMSGSIZE;
    if (!text_ok(s, len, rule))
        return -EINVAL;
    ipc_add_cstr(out, s);
    return 0;
}

int
ipcdef_put_bytes(struct buf *out, const uint8_t *p, size_t len, size_t cap)
{
    if (len > cap)
        return -EMSGSIZE;
    ipc_add_bytes(out, p, len);
    return 0;
}

int
ipcdef_finish(struct buf *out, size_t offset, int err)
{
    if (err == 0 && (err = ipc_end(out, offset)) == 0)
        return 0;
    buf_truncate(out, offset);
    return err;
}

int
ipcdef_get_text(struct ipc_msg *m, char *dst, size_t cap, enum ipcdef_text rule)
{
    const char *s;
    size_t len;

    if (ipc_get_str(m, &s, &len) < 0 || len > cap || !text_ok(s, len, rule))
        return -EPROTO;
    memcpy(dst, s, len);
    dst[len] = '\0';
    return 0;
}

int
ipcdef_get_bytes(struct ipc_msg *m, const uint8_t **p, size_t *len, size_t cap)
{
    if (ipc_get_bytes(m, p, len) < 0 || *len > cap)
        return -EPROTO;
    return 0;
}
