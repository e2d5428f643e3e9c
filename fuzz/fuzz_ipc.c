/*
 * fuzz_ipc.c - fuzz target: the internal frame decoder (util/ipc.c) and the
 * typed decoders of the control and mail-path protocols (util/ctlproto.def,
 * runtime/mailproto.def expanded by util/ipcdef_expand.h)
 *
 * The input is what a compromised peer process could write on an internal
 * socket: any bytes. They are split into frames twice, once from one
 * buffer and once arriving in reads of varying size through a bounded
 * buffer as ipc_chan does; both must see the same frames and stop at the
 * same malformed header. Each frame is then read twice: generically (each
 * field as its kind byte says, with ipc_get_*; a frame read completely must
 * encode back with ipc_begin, ipc_add_* and ipc_end to the very same bytes)
 * and with the generated decoder of its type (ctl_decode_X, mp_decode_X):
 * a frame that decodes holds strings within their caps, with no NUL (and
 * no CR or LF in a line), and encodes back (ctl_encode_X, mp_encode_X) to
 * the same bytes.
 */
#include <errno.h>
#include <string.h>

#include "buf.h"
#include "ctlproto.h"
#include "fuzz.h"
#include "ipc.h"
#include "mailproto.h"

#define MAX_FRAMES 4096

struct frame_pos {
    size_t off, len;
};

/* ipc_add_bytes_as_str - a string field of LEN bytes (ipc_add_cstr wants a C string) */
static void
ipc_add_bytes_as_str(struct buf *out, const char *s, size_t len)
{
    char *copy = malloc(len + 1);

    if (copy == NULL)
        abort();
    memcpy(copy, s, len);
    copy[len] = 0;
    ipc_add_cstr(out, copy);
    free(copy);
}

/* get_one - read one field of KIND ('u', 'U', 's', 'b'); append it to OUT when not NULL */
static int
get_one(struct ipc_msg *m, char kind, struct buf *out)
{
    const uint8_t *p;
    const char *s;
    uint64_t v64;
    uint32_t v32;
    size_t len;

    switch (kind) {
    case 'u':
        if (ipc_get_u32(m, &v32))
            return -EPROTO;
        if (out)
            ipc_add_u32(out, v32);
        return 0;
    case 'U':
        if (ipc_get_u64(m, &v64))
            return -EPROTO;
        if (out)
            ipc_add_u64(out, v64);
        return 0;
    case 's':
        if (ipc_get_str(m, &s, &len))
            return -EPROTO;
        FUZZ_CHECK(memchr(s, 0, len) == NULL);
        if (out)
            ipc_add_bytes_as_str(out, s, len);
        return 0;
    default:
        if (ipc_get_bytes(m, &p, &len))
            return -EPROTO;
        FUZZ_CHECK(p >= m->payload && p + len <= m->payload + m->len);
        if (out)
            ipc_add_bytes(out, p, len);
        return 0;
    }
}

/* read_generic - every field as its kind byte says; a complete read must re-encode exactly */
static void
read_generic(const uint8_t *frame, size_t flen, struct ipc_msg m)
{
    static const char kinds[] = {
        [IPC_F_U32] = 'u', [IPC_F_U64] = 'U', [IPC_F_STR] = 's', [IPC_F_BYTES] = 'b'
    };
    struct buf out;
    size_t start;
    int bad = 0;

    buf_init(&out, 0);
    start = ipc_begin(&out, m.type, m.id);
    while (m.pos < m.len && !bad) {
        uint8_t kind = m.payload[m.pos];

        /* (a failed get may have moved past the field: the reader gives up anyway) */
        bad = kind < IPC_F_U32 || kind > IPC_F_BYTES || get_one(&m, kinds[kind], &out) != 0;
    }
    if (!bad) {
        FUZZ_CHECK(ipc_get_end(&m) == 0);
        FUZZ_CHECK(ipc_end(&out, start) == 0);
        FUZZ_CHECK(out.len == flen && memcmp(out.data, frame, flen) == 0);
    }
    buf_free(&out);
}

/* check_text - a decoded string: within its cap, no NUL, and for a line no CR or LF */
static void
check_text(const char *t, size_t cap, int line)
{
    size_t n = strlen(t);

    FUZZ_CHECK(n <= cap);
    if (line)
        FUZZ_CHECK(strpbrk(t, "\r\n") == NULL);
}

/* same_frame - an encoder's output OUT is the frame it was decoded from */
static void
same_frame(struct buf *out, const uint8_t *frame, size_t flen)
{
    FUZZ_CHECK(out->len == flen && memcmp(out->data, frame, flen) == 0);
    buf_free(out);
}

/*
 * A stage of the .def expansion (ipcdef.h) of our own: one switch case per
 * message that decodes it, encodes it again and compares, then checks each
 * string field.
 */
#define FZ_CASE(TYPE, P, low)                                               \
    case TYPE: {                                                            \
        struct IPCDEF_PASTE3(P, _, low) msg;                                \
        struct buf out;                                                     \
        memset(&msg, 0, sizeof msg);                                        \
        if (IPCDEF_PASTE3(P, _decode_, low)(&m, &msg) != 0)                 \
            break;                                                          \
        buf_init(&out, 0);                                                  \
        FUZZ_CHECK(IPCDEF_PASTE3(P, _encode_, low)(&out, m.id, &msg) == 0); \
        same_frame(&out, frame, flen);
#define FZ_CASE_END \
    break;          \
    }
#define FZ_NONE_1(a)
#define FZ_NONE_2(a, b)

#define FZCTL_CONST           FZ_NONE_2
#define FZCTL_MSG(UP, low, n) FZ_CASE(CTL_##UP, ctl, low)
#define FZCTL_END             FZ_CASE_END
#define FZMP_CONST            FZ_NONE_2
#define FZMP_MSG(UP, low, n)  FZ_CASE(MP_##UP, mp, low)
#define FZMP_END              FZ_CASE_END
#define FZCTL_U32             FZ_NONE_1
#define FZCTL_U64             FZ_NONE_1
#define FZCTL_STR(n, cap)     check_text(msg.n, (cap), 0);
#define FZCTL_LINE(n, cap)    check_text(msg.n, (cap), 1);
#define FZCTL_BYTES(n, cap)   FUZZ_CHECK(msg.n##_len <= (cap));
#define FZMP_U32              FZCTL_U32
#define FZMP_U64              FZCTL_U64
#define FZMP_STR              FZCTL_STR
#define FZMP_LINE             FZCTL_LINE
#define FZMP_BYTES            FZCTL_BYTES

/* read_typed - the generated decoder of the frame's type, if it has one */
static void
read_typed(const uint8_t *frame, size_t flen, struct ipc_msg m)
{
    switch (m.type) {
#define IPCDEF_STAGE FZCTL
#include "ctlproto.def"
#undef IPCDEF_STAGE
#define IPCDEF_STAGE FZMP
#include "mailproto.def"
#undef IPCDEF_STAGE
    default:
        break;
    }
}

/* split_whole - frames of DATA read from one buffer; the result of the last ipc_frame_next */
static int
split_whole(const uint8_t *data, size_t size, struct frame_pos *pos, size_t *n)
{
    size_t off = 0, used;
    struct ipc_msg m;
    int rc;

    *n = 0;
    while ((rc = ipc_frame_next(data + off, size - off, &m, &used)) == 1) {
        FUZZ_CHECK(used >= IPC_HEADER_SIZE && used <= size - off && used <= IPC_FRAME_MAX);
        FUZZ_CHECK(m.len == used - IPC_HEADER_SIZE && m.payload == data + off + IPC_HEADER_SIZE);
        if (*n < MAX_FRAMES)
            pos[*n] = (struct frame_pos){ off, used };
        ++*n;
        read_generic(data + off, used, m);
        read_typed(data + off, used, m);
        off += used;
    }
    return rc;
}

/* split_stream - the same bytes in reads of 1..N bytes through a bounded buffer */
static void
split_stream(const uint8_t *data, size_t size, const struct frame_pos *pos, size_t nframes,
             int whole_rc)
{
    uint32_t hash = 2166136261u;
    size_t fed = 0, consumed = 0, n = 0, used;
    struct fuzz_reads reads;
    struct buf in;
    struct ipc_msg m;
    int rc = 0;

    /* the split follows from the first bytes (never one read, never only single bytes) */
    for (size_t i = 0; i < size && i < 64; i++)
        hash = (hash ^ data[i]) * 16777619u;
    fuzz_reads_init(&reads, 2 + hash % 254, 64);
    buf_init(&in, IPC_FRAME_MAX + IPC_HEADER_SIZE);
    while (fed < size && rc >= 0) {
        size_t chunk = fuzz_reads_next(&reads, size - fed);

        /* as chan_alloc: never more unparsed input than one frame and a header */
        if (chunk > in.limit - in.len)
            chunk = in.limit - in.len;
        FUZZ_CHECK(chunk > 0 && buf_append(&in, data + fed, chunk) == 0);
        fed += chunk;
        size_t off = 0;
        while ((rc = ipc_frame_next((const uint8_t *)in.data + off, in.len - off, &m, &used)) ==
               1) {
            if (n < MAX_FRAMES && n < nframes)
                FUZZ_CHECK(pos[n].off == consumed + off && pos[n].len == used);
            n++;
            off += used;
        }
        buf_consume(&in, off);
        consumed += off;
    }
    FUZZ_CHECK(n == nframes && rc == whole_rc);
    buf_free(&in);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct frame_pos pos[MAX_FRAMES];
    static int init;
    size_t n;
    int rc;

    if (!init++)
        fuzz_quiet_logs();
    rc = split_whole(data, size, pos, &n);
    FUZZ_CHECK(rc == 0 || rc == -EPROTO);
    split_stream(data, size, pos, n, rc);
    return 0;
}
