/*
 * test_mailproto.c - the protocols written in runtime/mailproto.def and
 * util/ctlproto.def, through the encoders and decoders expanded from them.
 *
 * The tests read the .def files themselves (a table of each message's fields
 * and caps), so a message or field added there is covered here unchanged:
 * every message round-trips; every field at its cap passes and past it, of
 * the wrong kind, of the wrong integer size, with NUL (or CR/LF in a line),
 * or left out is -EPROTO; so is a frame cut at any byte or with anything
 * after its last field. Frames fed one byte at a time, in random splits and
 * through a real channel written one byte per write, decode the same.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include "unit.h"
#include <uv.h>

#include "buf.h"
#include "ctlproto.h"
#include "ipc.h"
#include "mailproto.h"
#include "msg.h"

/* --- the .def files as tables ------------------------------------------------------ */

enum tkind { K_END = 0, K_U32, K_U64, K_STR, K_LINE, K_BYTES };

struct tfield {
    enum tkind kind;
    size_t cap;
};

/* rt - decode M, then encode what was decoded into OUT (a full round trip) */
typedef int (*rt_fn)(struct ipc_msg *m, struct buf *out);

struct tmsg {
    const char *name;
    unsigned type;
    rt_fn rt;
    const char *(*type_name)(unsigned type);
    struct tfield fields[16];
};

/* stage TR: a round-trip function per message; stage TM: the tables */
#define TR_CONST(name, value)
#define TR_END
#define TR_U32(n)
#define TR_U64(n)
#define TR_STR(n, cap)
#define TR_LINE(n, cap)
#define TR_BYTES(n, cap)
#define TR_MSG(UP, low, num)                                                         \
    static int IPCDEF_PASTE3(rt_, TR_PFX, low)(struct ipc_msg * m, struct buf * out) \
    {                                                                                \
        struct IPCDEF_PASTE3(TR_PFX, _, low) s;                                      \
        int err = IPCDEF_PASTE3(TR_PFX, _decode_, low)(m, &s);                       \
        return err < 0 ? err : IPCDEF_PASTE3(TR_PFX, _encode_, low)(out, m->id, &s); \
    }
#define IPCDEF_STAGE TR
#define TR_PFX       mp
#include "mailproto.def"
#undef TR_PFX
#define TR_PFX ctl
#include "ctlproto.def"
#undef TR_PFX
#undef IPCDEF_STAGE

#define TM_CONST(name, value)
#define TM_MSG(UP, low, num)                                                             \
    {                                                                                    \
        IPCDEF_QUOTE(IPCDEF_PASTE3(TM_UP, _, UP)), num, IPCDEF_PASTE3(rt_, TR_PFX, low), \
            IPCDEF_PASTE(TR_PFX, _type_name),                                            \
        {
#define TM_END \
    }          \
    }          \
    ,
#define TM_U32(n)        { K_U32, 0 },
#define TM_U64(n)        { K_U64, 0 },
#define TM_STR(n, cap)   { K_STR, (cap) },
#define TM_LINE(n, cap)  { K_LINE, (cap) },
#define TM_BYTES(n, cap) { K_BYTES, (cap) },
#define IPCDEF_QUOTE_(x) #x
#define IPCDEF_QUOTE(x)  IPCDEF_QUOTE_(x)
#define IPCDEF_STAGE     TM

#define TR_PFX mp
#define TM_UP  MP
static const struct tmsg mail_msgs[] = {
#include "mailproto.def"
};
#undef TR_PFX
#undef TM_UP

#define TR_PFX ctl
#define TM_UP  CTL
static const struct tmsg ctl_msgs[] = {
#include "ctlproto.def"
};
#undef TR_PFX
#undef TM_UP
#undef IPCDEF_STAGE

#define NMAIL (sizeof(mail_msgs) / sizeof(mail_msgs[0]))
#define NCTL  (sizeof(ctl_msgs) / sizeof(ctl_msgs[0]))

/* each_msg - every message of both protocols */
static const struct tmsg *
each_msg(size_t i)
{
    return i < NMAIL ? &mail_msgs[i] : i < NMAIL + NCTL ? &ctl_msgs[i - NMAIL] : NULL;
}

static size_t
nfields(const struct tmsg *t)
{
    size_t n = 0;

    while (t->fields[n].kind != K_END)
        n++;
    return n;
}

/* --- frames built by hand from a table, with one field spoiled ------------------------ */

enum spoil {
    SP_NONE,
    SP_AT_CAP,     /* a string or bytes field exactly at its cap (valid) */
    SP_OVER_CAP,   /* one byte past it */
    SP_WRONG_KIND, /* the next kind's value */
    SP_BAD_SIZE,   /* an integer of the wrong width under the right kind */
    SP_NUL,        /* a NUL inside a string */
    SP_CR,         /* CR inside a line */
    SP_LF,         /* LF inside a line */
    SP_OMIT,       /* the frame ends before this field */
};

static void
raw_field(struct buf *b, uint8_t kind, const void *p, size_t len)
{
    assert_int_equal(buf_append_u8(b, kind), 0);
    assert_int_equal(buf_append_u32(b, (uint32_t)len), 0);
    assert_int_equal(buf_append(b, p, len), 0);
}

/* sample_text - LEN printable bytes that differ per field */
static char *
sample_text(size_t len, size_t seed)
{
    char *s = malloc(len + 1);

    for (size_t i = 0; i < len; i++)
        s[i] = (char)('a' + (i + seed) % 26);
    s[len] = '\0';
    return s;
}

/* add_sample - field F (index I) of a frame; SPOIL applies to it */
static void
add_sample(struct buf *b, const struct tfield *f, size_t i, enum spoil spoil)
{
    size_t len = 3 + i;
    uint8_t num[8] = { 1, 2, 3, 4, 5, 6, 7, (uint8_t)i };
    char *text;

    if (f->kind == K_U32 || f->kind == K_U64) {
        size_t width = f->kind == K_U32 ? 4 : 8;
        uint8_t kind = f->kind == K_U32 ? IPC_F_U32 : IPC_F_U64;

        if (spoil == SP_WRONG_KIND)
            raw_field(b, kind == IPC_F_U32 ? IPC_F_U64 : IPC_F_U32, num, width == 4 ? 8 : 4);
        else if (spoil == SP_BAD_SIZE)
            raw_field(b, kind, num, width - 1);
        else
            raw_field(b, kind, num + 8 - width, width);
        return;
    }
    if (spoil == SP_AT_CAP)
        len = f->cap;
    else if (spoil == SP_OVER_CAP)
        len = f->cap + 1;
    else if (len > f->cap)
        len = f->cap;
    text = sample_text(len, i);
    if (len > 0 && spoil == SP_NUL)
        text[len / 2] = '\0';
    if (len > 0 && spoil == SP_CR)
        text[len / 2] = '\r';
    if (len > 0 && spoil == SP_LF)
        text[len / 2] = '\n';
    if (f->kind == K_BYTES)
        raw_field(b, spoil == SP_WRONG_KIND ? IPC_F_STR : IPC_F_BYTES, text, len);
    else
        raw_field(b, spoil == SP_WRONG_KIND ? IPC_F_BYTES : IPC_F_STR, text, len);
    free(text);
}

/* build - one frame of T with field SPOILED (if any) spoiled by SPOIL; ID 7 */
static void
build(struct buf *b, const struct tmsg *t, size_t spoiled, enum spoil spoil)
{
    size_t off = ipc_begin(b, (uint16_t)t->type, 7);

    for (size_t i = 0; t->fields[i].kind != K_END; i++) {
        if (i == spoiled && spoil == SP_OMIT)
            break;
        add_sample(b, &t->fields[i], i, i == spoiled ? spoil : SP_NONE);
    }
    assert_int_equal(ipc_end(b, off), 0);
}

/* parse - the one frame in B */
static struct ipc_msg
parse(const struct buf *b)
{
    struct ipc_msg m;
    size_t used;

    assert_int_equal(ipc_frame_next((const uint8_t *)b->data, b->len, &m, &used), 1);
    assert_int_equal(used, b->len);
    return m;
}

/* round_trip - decode B's frame with T's decoder and encode it again; 0 or the error */
static int
round_trip(const struct tmsg *t, const struct buf *b, struct buf *again)
{
    struct ipc_msg m = parse(b);

    buf_reset(again);
    return t->rt(&m, again);
}

/* --- tests --------------------------------------------------------------------------- */

static void
test_every_message_round_trips(void **state)
{
    struct buf b = BUF_INIT, again = BUF_INIT;

    (void)state;
    for (size_t k = 0; each_msg(k); k++) {
        const struct tmsg *t = each_msg(k);

        buf_reset(&b);
        build(&b, t, SIZE_MAX, SP_NONE);
        assert_int_equal(round_trip(t, &b, &again), 0);
        /* byte for byte: every field came back with its kind, length and value */
        assert_int_equal(again.len, b.len);
        assert_memory_equal(again.data, b.data, b.len);
        /* and at the caps */
        for (size_t i = 0; i < nfields(t); i++) {
            if (t->fields[i].kind < K_STR)
                continue;
            buf_reset(&b);
            build(&b, t, i, SP_AT_CAP);
            assert_int_equal(round_trip(t, &b, &again), 0);
            assert_memory_equal(again.data, b.data, b.len);
        }
    }
    buf_free(&b);
    buf_free(&again);
}

static void
test_every_bad_field_is_eproto(void **state)
{
    static const enum spoil spoils[] = { SP_OVER_CAP, SP_WRONG_KIND, SP_BAD_SIZE, SP_NUL,
                                         SP_CR,       SP_LF,         SP_OMIT };
    struct buf b = BUF_INIT, again = BUF_INIT;
    unsigned checked = 0;

    (void)state;
    for (size_t k = 0; each_msg(k); k++) {
        const struct tmsg *t = each_msg(k);

        for (size_t i = 0; i < nfields(t); i++) {
            for (size_t s = 0; s < sizeof(spoils) / sizeof(spoils[0]); s++) {
                enum tkind kind = t->fields[i].kind;
                enum spoil sp = spoils[s];

                if ((sp == SP_OVER_CAP && kind < K_STR) || (sp == SP_BAD_SIZE && kind > K_U64) ||
                    (sp == SP_NUL && kind != K_STR && kind != K_LINE) ||
                    ((sp == SP_CR || sp == SP_LF) && kind != K_LINE))
                    continue;
                buf_reset(&b);
                build(&b, t, i, sp);
                if (round_trip(t, &b, &again) != -EPROTO)
                    fail_msg("%s field %zu spoil %d was accepted", t->name, i, (int)sp);
                assert_int_equal(again.len, 0);
                checked++;
            }
        }
    }
    assert_true(checked > 100);
    buf_free(&b);
    buf_free(&again);
}

static void
test_truncated_or_trailing_frames_are_eproto(void **state)
{
    struct buf b = BUF_INIT, again = BUF_INIT, cut = BUF_INIT;

    (void)state;
    for (size_t k = 0; each_msg(k); k++) {
        const struct tmsg *t = each_msg(k);

        buf_reset(&b);
        build(&b, t, SIZE_MAX, SP_NONE);
        /* cut at every byte of the payload: the header says the frame ends there */
        for (size_t len = IPC_HEADER_SIZE; len < b.len; len++) {
            buf_reset(&cut);
            assert_int_equal(buf_append(&cut, b.data, len), 0);
            assert_int_equal(ipc_end(&cut, 0), 0);
            assert_int_equal(round_trip(t, &cut, &again), -EPROTO);
        }
        /* one stray byte, then one stray field */
        buf_reset(&cut);
        assert_int_equal(buf_append(&cut, b.data, b.len), 0);
        assert_int_equal(buf_append_u8(&cut, 0), 0);
        assert_int_equal(ipc_end(&cut, 0), 0);
        assert_int_equal(round_trip(t, &cut, &again), -EPROTO);
        buf_reset(&cut);
        assert_int_equal(buf_append(&cut, b.data, b.len), 0);
        ipc_add_u32(&cut, 1);
        assert_int_equal(ipc_end(&cut, 0), 0);
        assert_int_equal(round_trip(t, &cut, &again), -EPROTO);
    }
    buf_free(&b);
    buf_free(&cut);
    buf_free(&again);
}

static void
test_decoder_checks_the_type(void **state)
{
    struct buf b = BUF_INIT, again = BUF_INIT;

    (void)state;
    for (size_t k = 0; each_msg(k); k++) {
        const struct tmsg *t = each_msg(k);
        struct tmsg other = *t;

        buf_reset(&b);
        other.type = t->type + 1;
        build(&b, &other, SIZE_MAX, SP_NONE);
        assert_int_equal(round_trip(t, &b, &again), -EPROTO);
    }
    buf_free(&b);
    buf_free(&again);
}

static void
test_names_and_number_ranges(void **state)
{
    (void)state;
    for (size_t k = 0; each_msg(k); k++) {
        const struct tmsg *t = each_msg(k);

        assert_string_equal(t->type_name(t->type), t->name);
        if (t->type_name == mp_type_name)
            assert_true(t->type >= IPC_TYPE_USER);
        else
            assert_true(t->type < IPC_TYPE_USER);
    }
    assert_string_equal(mp_type_name(MP_CONN_DOWN), "MP_CONN_DOWN");
    assert_string_equal(mp_type_name(9999), "unknown");
    assert_string_equal(ctl_type_name(CTL_HELLO), "CTL_HELLO");
    /* numbers are part of the wire format: pinned */
    assert_int_equal(MP_TXN_BEGIN, 100);
    assert_int_equal(MP_QMGR_HELLO, 107);
    assert_int_equal(MP_CONN_DOWN, 115);
    assert_int_equal(CTL_LOG_REOPEN, 5);
}

static void
test_encoder_refuses_what_the_decoder_would(void **state)
{
    struct buf b = BUF_INIT;
    char *long_text = sample_text(MP_FIELD_MAX + 1, 0);
    struct mp_txn_rcpt r = { .address = "a@b.test", .orcpt = NULL, .notify = 1 };
    struct mp_txn_data d = { .chunk = (const uint8_t *)"x", .chunk_len = MP_CHUNK_MAX + 1 };
    struct ipc_msg m;
    struct mp_txn_rcpt back;

    (void)state;
    assert_int_equal(buf_append(&b, "keep", 4), 0);
    r.orcpt = long_text;
    assert_int_equal(mp_encode_txn_rcpt(&b, 1, &r), -EMSGSIZE);
    r.orcpt = "a\r\nRCPT TO:<evil@x.test>";
    assert_int_equal(mp_encode_txn_rcpt(&b, 1, &r), -EINVAL);
    assert_int_equal(mp_encode_txn_data(&b, 1, &d), -EMSGSIZE);
    /* nothing of a refused frame stays behind */
    assert_int_equal(b.len, 4);
    assert_memory_equal(b.data, "keep", 4);
    /* a NULL string is sent as "" */
    buf_reset(&b);
    r.orcpt = NULL;
    assert_int_equal(mp_encode_txn_rcpt(&b, 9, &r), 0);
    m = parse(&b);
    assert_int_equal(m.id, 9);
    assert_int_equal(mp_decode_txn_rcpt(&m, &back), 0);
    assert_string_equal(back.address, "a@b.test");
    assert_string_equal(back.orcpt, "");
    assert_int_equal(back.notify, 1);
    free(long_text);
    buf_free(&b);
}

/* stream - one frame of every message, back to back; how many in *N */
static void
stream(struct buf *b, size_t *n)
{
    *n = 0;
    for (size_t k = 0; each_msg(k); k++, (*n)++)
        build(b, each_msg(k), SIZE_MAX, SP_NONE);
}

/* feed - STREAM into a reader in pieces of the sizes SPLIT gives; every frame must decode
   to itself. SPLIT(i) returns the next piece's size. */
static void
feed(const struct buf *all, size_t (*split)(size_t i))
{
    struct buf in = BUF_INIT, again = BUF_INIT;
    size_t pos = 0, done = 0, frame_at = 0;

    for (size_t i = 0; pos < all->len; i++) {
        size_t n = split(i), used;
        struct ipc_msg m;
        int rc;

        if (n > all->len - pos)
            n = all->len - pos;
        assert_int_equal(buf_append(&in, all->data + pos, n), 0);
        pos += n;
        while ((rc = ipc_frame_next((const uint8_t *)in.data, in.len, &m, &used)) == 1) {
            const struct tmsg *t = each_msg(done);

            buf_reset(&again);
            assert_int_equal(t->rt(&m, &again), 0);
            assert_memory_equal(again.data, all->data + frame_at, used);
            frame_at += used;
            buf_consume(&in, used);
            done++;
        }
        assert_int_equal(rc, 0);
    }
    assert_int_equal(in.len, 0);
    assert_non_null(each_msg(done - 1));
    assert_null(each_msg(done));
    buf_free(&in);
    buf_free(&again);
}

static void
test_byte_split_frames_decode_the_same(void **state)
{
    struct buf all = BUF_INIT;
    size_t n;

    (void)state;
    stream(&all, &n);
    assert_int_equal(n, NMAIL + NCTL);
    feed(&all, unit_split_whole);
    feed(&all, unit_split_one);
    srand(15);
    for (int round = 0; round < 50; round++)
        feed(&all, unit_split_random);
    buf_free(&all);
}

/* --- through a channel, one byte per write ---------------------------------------------- */

struct probe {
    const struct buf *all;
    size_t frames, at;
    int bad;
};

static int
probe_msg(struct ipc_chan *ch, struct ipc_msg *m)
{
    struct probe *p = ch->data;
    struct buf again = BUF_INIT;
    const struct tmsg *t = each_msg(p->frames);
    size_t len = IPC_HEADER_SIZE + m->len;

    if (t == NULL || t->rt(m, &again) != 0 || again.len != len ||
        memcmp(again.data, p->all->data + p->at, len) != 0)
        p->bad++;
    p->at += len;
    p->frames++;
    buf_free(&again);
    return 0;
}

static void
test_channel_fed_one_byte_per_write(void **state)
{
    uv_loop_t loop;
    int sv[2];
    struct ipc_chan *ch;
    struct buf all = BUF_INIT;
    struct probe probe = { &all, 0, 0, 0 };
    size_t n;

    (void)state;
    stream(&all, &n);
    assert_int_equal(uv_loop_init(&loop), 0);
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    assert_int_equal(ipc_chan_open_fd(&loop, sv[0], probe_msg, NULL, &probe, &ch), 0);
    for (size_t i = 0; i < all.len; i++) {
        assert_int_equal(write(sv[1], all.data + i, 1), 1);
        uv_run(&loop, UV_RUN_NOWAIT);
    }
    while (probe.frames < n)
        uv_run(&loop, UV_RUN_ONCE);
    assert_int_equal(probe.bad, 0);
    assert_int_equal(probe.at, all.len);
    ipc_chan_close(ch);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
    close(sv[1]);
    buf_free(&all);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        UNIT_TEST(test_every_message_round_trips),
        UNIT_TEST(test_every_bad_field_is_eproto),
        UNIT_TEST(test_truncated_or_trailing_frames_are_eproto),
        UNIT_TEST(test_decoder_checks_the_type),
        UNIT_TEST(test_names_and_number_ranges),
        UNIT_TEST(test_encoder_refuses_what_the_decoder_would),
        UNIT_TEST(test_byte_split_frames_decode_the_same),
        UNIT_TEST(test_channel_fed_one_byte_per_write),
    };

    msg_init("test_mailproto");
    msg_also_stderr(0);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
