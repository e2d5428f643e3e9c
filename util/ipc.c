/*
 * ipc.c - encoder, decoder and libuv channels for the internal frame format
 *
 * Owns each ipc_chan it creates (freed after its close callback, once its
 * pipe, prepare and check handles are all closed), the channel's input
 * buffer and its corked output. Frame layout and rules are in ipc.h.
 *
 * SECURITY: this is the boundary between processes that may be compromised
 * independently. Every read checks that the bytes exist before touching them,
 * and the input buffer never grows past one maximum frame.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "ipc.h"
#include "msg.h"
#include "xalloc.h"

/* --- encoding -------------------------------------------------------------- */

static void
must_append(struct buf *out, int err)
{
    if (err)
        msg_panic("ipc: frame buffer over its limit");
}

size_t
ipc_begin(struct buf *out, uint16_t type, uint32_t id)
{
    size_t offset = out->len;

    must_append(out, buf_append_u32(out, 0));
    must_append(out, buf_append_u16(out, type));
    must_append(out, buf_append_u16(out, 0));
    must_append(out, buf_append_u32(out, id));
    return offset;
}

static void
add_field(struct buf *out, uint8_t kind, const void *p, size_t len)
{
    if (len > IPC_FRAME_MAX)
        msg_panic("ipc: field of %zu bytes", len);
    must_append(out, buf_append_u8(out, kind));
    must_append(out, buf_append_u32(out, (uint32_t)len));
    must_append(out, buf_append(out, p, len));
}

void
ipc_add_u32(struct buf *out, uint32_t v)
{
    uint8_t p[4] = { (uint8_t)(v >> 24), (uint8_t)(v >> 16), (uint8_t)(v >> 8), (uint8_t)v };

    add_field(out, IPC_F_U32, p, sizeof(p));
}

void
ipc_add_u64(struct buf *out, uint64_t v)
{
    uint8_t p[8];

    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (56 - 8 * i));
    add_field(out, IPC_F_U64, p, sizeof(p));
}

void
ipc_add_cstr(struct buf *out, const char *s)
{
    add_field(out, IPC_F_STR, s, strlen(s));
}

void
ipc_add_bytes(struct buf *out, const void *p, size_t len)
{
    add_field(out, IPC_F_BYTES, p, len);
}

int
ipc_end(struct buf *out, size_t offset)
{
    size_t len = out->len - offset;
    uint8_t *p = (uint8_t *)out->data + offset;

    if (len > IPC_FRAME_MAX)
        return -EMSGSIZE;
    p[0] = (uint8_t)(len >> 24);
    p[1] = (uint8_t)(len >> 16);
    p[2] = (uint8_t)(len >> 8);
    p[3] = (uint8_t)len;
    return 0;
}

/* --- decoding -------------------------------------------------------------- */

static uint32_t
get_be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

int
ipc_frame_next(const uint8_t *data, size_t len, struct ipc_msg *m, size_t *used)
{
    uint32_t flen;

    if (len < IPC_HEADER_SIZE)
        return 0;
    flen = get_be32(data);
    if (flen < IPC_HEADER_SIZE || flen > IPC_FRAME_MAX)
        return -EPROTO;
    if (data[6] != 0 || data[7] != 0)
        return -EPROTO;
    if (len < flen)
        return 0;
    m->type = (uint16_t)(data[4] << 8 | data[5]);
    m->flags = 0;
    m->id = get_be32(data + 8);
    m->payload = data + IPC_HEADER_SIZE;
    m->len = flen - IPC_HEADER_SIZE;
    m->pos = 0;
    *used = flen;
    return 1;
}

/* get_field - next field of KIND; its bytes go to P and LEN */
static int
get_field(struct ipc_msg *m, uint8_t kind, const uint8_t **p, size_t *len)
{
    size_t left = m->len - m->pos;
    uint32_t flen;

    if (left < 5 || m->payload[m->pos] != kind)
        return -EPROTO;
    flen = get_be32(m->payload + m->pos + 1);
    if (flen > left - 5)
        return -EPROTO;
    *p = m->payload + m->pos + 5;
    *len = flen;
    m->pos += 5 + (size_t)flen;
    return 0;
}

int
ipc_get_u32(struct ipc_msg *m, uint32_t *v)
{
    const uint8_t *p;
    size_t len;

    if (get_field(m, IPC_F_U32, &p, &len) || len != 4)
        return -EPROTO;
    *v = get_be32(p);
    return 0;
}

int
ipc_get_u64(struct ipc_msg *m, uint64_t *v)
{
    const uint8_t *p;
    size_t len;

    if (get_field(m, IPC_F_U64, &p, &len) || len != 8)
        return -EPROTO;
    *v = (uint64_t)get_be32(p) << 32 | get_be32(p + 4);
    return 0;
}

int
ipc_get_str(struct ipc_msg *m, const char **s, size_t *len)
{
    const uint8_t *p;

    if (get_field(m, IPC_F_STR, &p, len))
        return -EPROTO;
    if (memchr(p, '\0', *len) != NULL)
        return -EPROTO;
    *s = (const char *)p;
    return 0;
}

int
ipc_get_bytes(struct ipc_msg *m, const uint8_t **p, size_t *len)
{
    return get_field(m, IPC_F_BYTES, p, len);
}

int
ipc_get_end(struct ipc_msg *m)
{
    return m->pos == m->len ? 0 : -EPROTO;
}

/* --- channels ---------------------------------------------------------------- */

struct ipc_write {
    uv_write_t req;
    char *data;
    struct ipc_chan *ch;
};

static void chan_close(struct ipc_chan *ch, int reason);

static void
chan_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *out)
{
    struct ipc_chan *ch = h->data;
    size_t want = suggested < 65536 ? 65536 : suggested;

    /* Never hold more than one frame's worth of unparsed input. */
    if (ch->in.len + want > IPC_FRAME_MAX + IPC_HEADER_SIZE)
        want = IPC_FRAME_MAX + IPC_HEADER_SIZE - ch->in.len;
    if (want == 0 || buf_reserve(&ch->in, want) != 0) {
        out->base = NULL;
        out->len = 0;
        return;
    }
    out->base = ch->in.data + ch->in.len;
    out->len = want;
}

/* chan_dispatch - hand every complete frame to the owner; 0 or the close reason */
static int
chan_dispatch(struct ipc_chan *ch)
{
    size_t off = 0, used;
    struct ipc_msg m;
    int rc = 0;

    while (!ch->closing) {
        rc = ipc_frame_next((const uint8_t *)ch->in.data + off, ch->in.len - off, &m, &used);
        if (rc <= 0)
            break;
        off += used;
        if (ch->on_msg(ch, &m) != 0) {
            rc = -ECONNABORTED;
            break;
        }
        rc = 0;
    }
    if (off > 0 && !ch->closing)
        buf_consume(&ch->in, off);
    return rc < 0 ? rc : 0;
}

static void
chan_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *b)
{
    struct ipc_chan *ch = s->data;
    int err;

    (void)b;
    if (nread == 0)
        return;
    if (nread < 0) {
        chan_close(ch, nread == UV_EOF ? 0 : (int)nread);
        return;
    }
    ch->in.len += (size_t)nread;
    ch->in.data[ch->in.len] = '\0';
    if ((err = chan_dispatch(ch)) != 0) {
        if (err == -EPROTO)
            msg_warn("ipc: malformed frame from peer; closing channel");
        chan_close(ch, err);
    }
}

int
ipc_chan_open_fd(uv_loop_t *loop, int fd, ipc_msg_cb on_msg, ipc_close_cb on_close, void *data,
                 struct ipc_chan **chp)
{
    struct ipc_chan *ch = xcalloc(1, sizeof(*ch));
    int err, pipe_has_fd = 0;

    *chp = NULL;
    buf_init(&ch->in, IPC_FRAME_MAX + IPC_HEADER_SIZE + 1);
    buf_init(&ch->corked, 0);
    ch->on_msg = on_msg;
    ch->on_close = on_close;
    ch->data = data;
    if ((err = uv_pipe_init(loop, &ch->pipe, 0)) != 0)
        goto fail_init;
    ch->pipe.data = ch;
    uv_prepare_init(loop, &ch->prepare);
    uv_check_init(loop, &ch->check);
    ch->prepare.data = ch->check.data = ch;
    ch->open_handles = 3;
    if ((err = uv_pipe_open(&ch->pipe, fd)) != 0)
        goto fail_open;
    pipe_has_fd = 1;
    if ((err = uv_read_start((uv_stream_t *)&ch->pipe, chan_alloc, chan_read)) != 0)
        goto fail_open;
    *chp = ch;
    return 0;

fail_open:
    /* The handles are initialised: they must be closed; the last close frees ch, and
       closing the pipe closes FD once the pipe holds it. */
    ch->on_close = NULL;
    chan_close(ch, err);
    if (!pipe_has_fd)
        close(fd);
    return err;
fail_init:
    buf_free(&ch->in);
    buf_free(&ch->corked);
    free(ch);
    close(fd);
    return err;
}

int
ipc_chan_connect_path(uv_loop_t *loop, const char *path, ipc_msg_cb on_msg, ipc_close_cb on_close,
                      void *data, struct ipc_chan **chp)
{
    struct sockaddr_un sun;
    int fd, err;

    if (strlen(path) >= sizeof(sun.sun_path))
        return -ENAMETOOLONG;
    memset(&sun, 0, sizeof(sun));
    sun.sun_family = AF_UNIX;
    memcpy(sun.sun_path, path, strlen(path) + 1);
    if ((fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)) < 0)
        return -errno;
    if (connect(fd, (struct sockaddr *)&sun, sizeof(sun)) < 0) {
        err = -errno;
        close(fd);
        return err;
    }
    return ipc_chan_open_fd(loop, fd, on_msg, on_close, data, chp); /* it owns fd now */
}

static void
chan_written(uv_write_t *req, int status)
{
    struct ipc_write *w = (struct ipc_write *)req;
    struct ipc_chan *ch = w->ch;

    free(w->data);
    free(w);
    ch->pending_writes--;
    if (status < 0 && !ch->closing)
        chan_close(ch, status);
}

/*
 * write_out - write LEN bytes now as far as the socket takes them, queue the
 * rest. uv_try_write() refuses (EAGAIN) while earlier writes are queued, so
 * frames never overtake each other. A completed uv_write() costs libuv (1.44)
 * an epoll_ctl(MOD) when it stops polling for POLLOUT; the direct write does
 * not, and on a local socket with room it is the common case. 0 or -errno.
 */
static int
write_out(struct ipc_chan *ch, const char *data, size_t len)
{
    struct ipc_write *w;
    uv_buf_t b = uv_buf_init((char *)data, (unsigned)len);
    int n, err;

    n = uv_try_write((uv_stream_t *)&ch->pipe, &b, 1);
    if (n < 0) /* EAGAIN, or an error uv_write() reports through chan_written */
        n = 0;
    if ((size_t)n == len)
        return 0;
    w = xcalloc(1, sizeof(*w));
    w->ch = ch;
    w->data = xmalloc(len - (size_t)n);
    memcpy(w->data, data + n, len - (size_t)n);
    b = uv_buf_init(w->data, (unsigned)(len - (size_t)n));
    if ((err = uv_write(&w->req, (uv_stream_t *)&ch->pipe, &b, 1, chan_written)) != 0) {
        free(w->data);
        free(w);
        return err;
    }
    ch->pending_writes++;
    return 0;
}

/* flush_corked - write what this loop turn gathered; a failure closes the channel */
static void
flush_corked(struct ipc_chan *ch)
{
    int err;

    uv_prepare_stop(&ch->prepare);
    uv_check_stop(&ch->check);
    if (ch->corked.len == 0)
        return;
    err = write_out(ch, ch->corked.data, ch->corked.len);
    buf_reset(&ch->corked);
    if (err != 0 && !ch->closing)
        chan_close(ch, err);
}

static void
on_prepare(uv_prepare_t *h)
{
    flush_corked(h->data);
}

static void
on_check(uv_check_t *h)
{
    flush_corked(h->data);
}

void
ipc_chan_cork(struct ipc_chan *ch)
{
    ch->cork = 1;
}

size_t
ipc_chan_backlog(const struct ipc_chan *ch)
{
    return uv_stream_get_write_queue_size((const uv_stream_t *)&ch->pipe) + ch->corked.len;
}

int
ipc_chan_busy(const struct ipc_chan *ch)
{
    return ch->pending_writes > 0 || ch->corked.len > 0;
}

/* ipc_chan_send - see ipc.h; a corked channel's frames wait for flush_corked */
int
ipc_chan_send(struct ipc_chan *ch, struct buf *out)
{
    int err;

    if (ch->closing) {
        buf_reset(out);
        return -EPIPE;
    }
    if (!ch->cork) {
        err = write_out(ch, out->data, out->len);
        buf_reset(out);
        return err;
    }
    if (buf_append(&ch->corked, out->data, out->len) != 0)
        msg_fatal("ipc: out of memory for outgoing frames");
    buf_reset(out);
    /* A big batch goes at once: the socket buffer, not ours, should hold it. */
    if (ch->corked.len >= IPC_FRAME_MAX) {
        flush_corked(ch);
        return ch->closing ? -EPIPE : 0;
    }
    uv_prepare_start(&ch->prepare, on_prepare);
    uv_check_start(&ch->check, on_check);
    return 0;
}

static void
chan_freed(uv_handle_t *h)
{
    struct ipc_chan *ch = h->data;

    if (--ch->open_handles > 0)
        return;
    buf_free(&ch->in);
    buf_free(&ch->corked);
    free(ch);
}

static void
chan_close(struct ipc_chan *ch, int reason)
{
    if (ch->closing)
        return;
    /* Frames corked this turn still go (a peer that went away makes this a no-op). */
    if (reason == 0 && ch->corked.len > 0)
        (void)write_out(ch, ch->corked.data, ch->corked.len);
    buf_reset(&ch->corked);
    ch->closing = 1;
    if (ch->on_close)
        ch->on_close(ch, reason);
    uv_close((uv_handle_t *)&ch->pipe, chan_freed);
    uv_close((uv_handle_t *)&ch->prepare, chan_freed);
    uv_close((uv_handle_t *)&ch->check, chan_freed);
}

void
ipc_chan_close(struct ipc_chan *ch)
{
    chan_close(ch, 0);
}
