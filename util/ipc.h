/*
 * ipc.h - the one internal message format, and channels that carry it
 *
 * All workers talk to each other and to pmtad over Unix-domain stream sockets
 * using frames of this shape (all integers big-endian):
 *
 *     u32 length   whole frame including this 12-byte header
 *     u16 type     a protocol's message type (util/ctlproto.def, runtime/mailproto.def)
 *     u16 flags    reserved, must be 0
 *     u32 id       request/session id chosen by the sender (0 if unused)
 *     payload      a sequence of fields: u8 kind, u32 len, LEN bytes
 *
 * Field kinds are IPC_F_U32 (len 4), IPC_F_U64 (len 8), IPC_F_STR (no NUL
 * inside, not NUL-terminated on the wire) and IPC_F_BYTES. A reader states
 * what it expects field by field; a wrong kind, a short field, a frame shorter
 * than its header, longer than IPC_FRAME_MAX, or trailing bytes after the last
 * expected field is -EPROTO. A worker that receives a malformed frame from a
 * peer drops that connection (never the mail: the sender still owns it).
 *
 * This format is internal and may change between versions; pmtactl, the status
 * socket and the HTTP monitor speak JSON instead.
 *
 * SECURITY: every length is checked before the bytes it covers are touched.
 * Strings handed out by ipc_get_str() point into the frame (borrowed until the
 * frame is consumed) and are guaranteed NUL-free; copy them to keep them.
 */
#ifndef PMTA_IPC_H
#define PMTA_IPC_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "buf.h"

#define IPC_HEADER_SIZE 12
#define IPC_FRAME_MAX   (1024 * 1024)

enum ipc_field_kind { IPC_F_U32 = 1, IPC_F_U64 = 2, IPC_F_STR = 3, IPC_F_BYTES = 4 };

/* Type numbers below this are pmtad's control frames (util/ctlproto.def), from it
   the mail path's (runtime/mailproto.def). */
#define IPC_TYPE_USER 100

/* A parsed frame. PAYLOAD points into the reader's buffer. */
struct ipc_msg {
    uint16_t type;
    uint16_t flags;
    uint32_t id;
    const uint8_t *payload;
    size_t len;
    size_t pos;
};

/* --- encoding ---------------------------------------------------------- */
/* ipc_begin - start a frame at the end of OUT; returns the frame's offset */
size_t ipc_begin(struct buf *out, uint16_t type, uint32_t id);
void ipc_add_u32(struct buf *out, uint32_t v);
void ipc_add_u64(struct buf *out, uint64_t v);
void ipc_add_cstr(struct buf *out, const char *s);
void ipc_add_bytes(struct buf *out, const void *p, size_t len);
/* ipc_end - patch the length of the frame begun at OFFSET; -EMSGSIZE if too big */
int ipc_end(struct buf *out, size_t offset);

/* --- decoding ---------------------------------------------------------- */
/*
 * ipc_frame_next - look for one complete frame at the start of DATA/LEN.
 * @return 1 and fills *M and *USED when a frame is complete, 0 when more bytes
 *         are needed, -EPROTO when the header is malformed.
 */
int ipc_frame_next(const uint8_t *data, size_t len, struct ipc_msg *m, size_t *used);
int ipc_get_u32(struct ipc_msg *m, uint32_t *v);
int ipc_get_u64(struct ipc_msg *m, uint64_t *v);
/* ipc_get_str - borrowed pointer, not NUL-terminated (ipcdef.h's decoders copy) */
int ipc_get_str(struct ipc_msg *m, const char **s, size_t *len);
int ipc_get_bytes(struct ipc_msg *m, const uint8_t **p, size_t *len);
/* ipc_get_end - -EPROTO if fields remain */
int ipc_get_end(struct ipc_msg *m);

/* --- channels over libuv ------------------------------------------------ */
struct ipc_chan;
/* on_msg - one frame arrived; return non-zero to close the channel */
typedef int (*ipc_msg_cb)(struct ipc_chan *ch, struct ipc_msg *m);
/* on_close - the channel is closed (peer gone, error or ipc_chan_close); it is freed after */
typedef void (*ipc_close_cb)(struct ipc_chan *ch, int reason);

struct ipc_chan {
    uv_pipe_t pipe;
    uv_prepare_t prepare; /* flush corked frames before the loop polls */
    uv_check_t check;     /* ... and after the callbacks of a poll */
    int open_handles;     /* freed when all three are closed */
    struct buf in;
    struct buf corked; /* frames sent this loop turn, not yet written */
    int cork;          /* see ipc_chan_cork */
    ipc_msg_cb on_msg;
    ipc_close_cb on_close;
    void *data; /* the owner's */
    int closing;
    size_t pending_writes;
};

/*
 * ipc_chan_open_fd - wrap an open socket descriptor; 0 or -errno. FD is the
 * channel's from the call on, whatever the outcome: closed with the channel,
 * or at once when this fails (*CHP is then NULL). The caller never closes it.
 */
int ipc_chan_open_fd(uv_loop_t *loop, int fd, ipc_msg_cb on_msg, ipc_close_cb on_close, void *data,
                     struct ipc_chan **chp);
/* ipc_chan_connect_path - blocking connect to a Unix socket path, then wrap; 0 or -errno, and
   nothing left open on failure */
int ipc_chan_connect_path(uv_loop_t *loop, const char *path, ipc_msg_cb on_msg,
                          ipc_close_cb on_close, void *data, struct ipc_chan **chp);
/* ipc_chan_send - send the frames in OUT (which is reset): written at once if
   the socket takes them, the rest queued in order; 0 or -errno */
int ipc_chan_send(struct ipc_chan *ch, struct buf *out);
/*
 * ipc_chan_cork - gather what ipc_chan_send() gets during one loop turn and
 * write it once, before the loop next polls (or when the channel closes):
 * a process answering many transactions per turn (cleanup after a group
 * commit, qmgr feeding connections, smtp-out reporting a transaction) makes
 * one write(2), and its peer one read, instead of one per frame. Only for
 * owners that keep running their loop after sending (not for a process that
 * sends and exits at once).
 */
void ipc_chan_cork(struct ipc_chan *ch);
/* ipc_chan_backlog - bytes sent but not yet taken by the socket */
size_t ipc_chan_backlog(const struct ipc_chan *ch);
/* ipc_chan_busy - is anything still to be written (queued or corked)? */
int ipc_chan_busy(const struct ipc_chan *ch);
void ipc_chan_close(struct ipc_chan *ch);

#endif
