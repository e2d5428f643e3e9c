/*
 * test_util.c - unit tests for util/: buffers, the IPC frame codec and
 * channels, log-line safety.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include "unit.h"
#include <uv.h>

#include "buf.h"
#include "ipc.h"
#include "msg.h"

#define TEST_TYPE 42 /* any frame type: the codec does not care */

static void
test_buf_limit_refuses_growth(void **state)
{
    struct buf b;

    (void)state;
    buf_init(&b, 8);
    assert_int_equal(buf_append(&b, "12345678", 8), 0);
    assert_int_equal(buf_append(&b, "9", 1), -EMSGSIZE);
    assert_int_equal(b.len, 8);
    assert_string_equal(b.data, "12345678");
    buf_consume(&b, 3);
    assert_string_equal(b.data, "45678");
    assert_int_equal(buf_append(&b, "abc", 3), 0);
    assert_string_equal(b.data, "45678abc");
    buf_free(&b);
}

static void
test_buf_overflow_checked(void **state)
{
    struct buf b;

    (void)state;
    buf_init(&b, 0);
    assert_int_equal(buf_append(&b, "x", 1), 0);
    assert_int_equal(buf_reserve(&b, SIZE_MAX - 1), -EMSGSIZE);
    assert_int_equal(buf_printf(&b, "%d-%s", 42, "y"), 0);
    assert_string_equal(b.data, "x42-y");
    buf_free(&b);
}

static void
test_buf_integers_big_endian(void **state)
{
    struct buf b;
    const uint8_t want[] = { 1, 0, 2, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 4 };

    (void)state;
    buf_init(&b, 0);
    buf_append_u8(&b, 1);
    buf_append_u16(&b, 2);
    buf_append_u32(&b, 3);
    buf_append_u64(&b, 4);
    assert_int_equal(b.len, sizeof(want));
    assert_memory_equal(b.data, want, sizeof(want));
    buf_free(&b);
}

static void
build_sample(struct buf *b)
{
    size_t off = ipc_begin(b, TEST_TYPE, 77);

    ipc_add_cstr(b, "smtpd");
    ipc_add_u32(b, 1234);
    ipc_add_u64(b, 0x0102030405060708ULL);
    ipc_add_bytes(b, "\0\1\2", 3);
    assert_int_equal(ipc_end(b, off), 0);
}

static void
test_ipc_round_trip(void **state)
{
    struct buf b;
    struct ipc_msg m;
    size_t used, len;
    const char *s;
    const uint8_t *p;
    uint32_t u32;
    uint64_t u64;

    (void)state;
    buf_init(&b, 0);
    build_sample(&b);
    assert_int_equal(ipc_frame_next((uint8_t *)b.data, b.len, &m, &used), 1);
    assert_int_equal(used, b.len);
    assert_int_equal(m.type, TEST_TYPE);
    assert_int_equal(m.id, 77);
    assert_int_equal(ipc_get_str(&m, &s, &len), 0);
    assert_int_equal(len, 5);
    assert_memory_equal(s, "smtpd", 5);
    assert_int_equal(ipc_get_u32(&m, &u32), 0);
    assert_int_equal(u32, 1234);
    assert_int_equal(ipc_get_u64(&m, &u64), 0);
    assert_true(u64 == 0x0102030405060708ULL);
    assert_int_equal(ipc_get_bytes(&m, &p, &len), 0);
    assert_int_equal(len, 3);
    assert_int_equal(ipc_get_end(&m), 0);
    buf_free(&b);
}

static void
test_ipc_partial_frame_waits(void **state)
{
    struct buf b;
    struct ipc_msg m;
    size_t used;

    (void)state;
    buf_init(&b, 0);
    build_sample(&b);
    for (size_t n = 0; n < b.len; n++)
        assert_int_equal(ipc_frame_next((uint8_t *)b.data, n, &m, &used), 0);
    buf_free(&b);
}

static void
test_ipc_rejects_bad_headers(void **state)
{
    uint8_t tiny[12] = { 0, 0, 0, 5 };             /* shorter than its own header */
    uint8_t huge[12] = { 0x7f, 0xff, 0xff, 0xff }; /* past IPC_FRAME_MAX */
    uint8_t flags[12] = { 0, 0, 0, 12, 0, 1, 0, 1 };
    struct ipc_msg m;
    size_t used;

    (void)state;
    assert_int_equal(ipc_frame_next(tiny, sizeof(tiny), &m, &used), -EPROTO);
    assert_int_equal(ipc_frame_next(huge, sizeof(huge), &m, &used), -EPROTO);
    assert_int_equal(ipc_frame_next(flags, sizeof(flags), &m, &used), -EPROTO);
}

static void
test_ipc_rejects_bad_fields(void **state)
{
    struct buf b;
    struct ipc_msg m;
    size_t used, len;
    uint32_t u32;
    uint64_t u64;
    const char *s;

    (void)state;
    buf_init(&b, 0);
    build_sample(&b);
    assert_int_equal(ipc_frame_next((uint8_t *)b.data, b.len, &m, &used), 1);
    /* wrong kind: a string is not a u32 */
    assert_int_equal(ipc_get_u32(&m, &u32), -EPROTO);
    /* a field length pointing past the frame */
    m.pos = 0;
    ((uint8_t *)b.data)[IPC_HEADER_SIZE + 4] = 0xff;
    assert_int_equal(ipc_get_str(&m, &s, &len), -EPROTO);
    ((uint8_t *)b.data)[IPC_HEADER_SIZE + 4] = 5;
    /* trailing fields the reader did not expect */
    m.pos = 0;
    assert_int_equal(ipc_get_str(&m, &s, &len), 0);
    assert_int_equal(ipc_get_end(&m), -EPROTO);
    /* running off the end */
    assert_int_equal(ipc_get_u32(&m, &u32), 0);
    assert_int_equal(ipc_get_u64(&m, &u64), 0);
    assert_int_equal(ipc_get_bytes(&m, (const uint8_t **)&s, &len), 0);
    assert_int_equal(ipc_get_u32(&m, &u32), -EPROTO);
    buf_free(&b);
}

static void
test_ipc_string_with_nul_rejected(void **state)
{
    struct buf b;
    struct ipc_msg m;
    size_t used, len, off;
    const char *s;

    (void)state;
    buf_init(&b, 0);
    off = ipc_begin(&b, TEST_TYPE, 1);
    ipc_add_bytes(&b, "a\0b", 3);
    ipc_end(&b, off);
    /* forge the kind byte from BYTES to STR */
    ((uint8_t *)b.data)[IPC_HEADER_SIZE] = IPC_F_STR;
    assert_int_equal(ipc_frame_next((uint8_t *)b.data, b.len, &m, &used), 1);
    assert_int_equal(ipc_get_str(&m, &s, &len), -EPROTO);
    buf_free(&b);
}

/* --- channels over a socketpair ---------------------------------------------- */

struct chan_probe {
    int frames;
    uint32_t last_id;
    int closed;
    int close_reason;
};

static int
probe_msg(struct ipc_chan *ch, struct ipc_msg *m)
{
    struct chan_probe *p = ch->data;

    p->frames++;
    p->last_id = m->id;
    return 0;
}

static void
probe_close(struct ipc_chan *ch, int reason)
{
    struct chan_probe *p = ch->data;

    p->closed = 1;
    p->close_reason = reason;
}

static void
test_ipc_channel_delivers_frames_and_drops_garbage(void **state)
{
    uv_loop_t loop;
    int sv[2];
    struct ipc_chan *ch;
    struct chan_probe probe = { 0 };
    struct buf b;
    const uint8_t garbage[12] = { 0, 0, 0, 3 };

    (void)state;
    assert_int_equal(uv_loop_init(&loop), 0);
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    assert_int_equal(ipc_chan_open_fd(&loop, sv[0], probe_msg, probe_close, &probe, &ch), 0);
    buf_init(&b, 0);
    for (uint32_t i = 1; i <= 3; i++) {
        size_t off = ipc_begin(&b, TEST_TYPE, i);
        ipc_add_cstr(&b, "{}");
        ipc_end(&b, off);
    }
    /* written one byte short, then the rest: frames must reassemble */
    assert_int_equal(write(sv[1], b.data, b.len - 1), (ssize_t)b.len - 1);
    uv_run(&loop, UV_RUN_NOWAIT);
    assert_int_equal(write(sv[1], b.data + b.len - 1, 1), 1);
    while (probe.frames < 3)
        uv_run(&loop, UV_RUN_ONCE);
    assert_int_equal(probe.last_id, 3);
    assert_false(probe.closed);
    assert_int_equal(write(sv[1], garbage, sizeof(garbage)), (ssize_t)sizeof(garbage));
    while (!probe.closed)
        uv_run(&loop, UV_RUN_ONCE);
    assert_int_equal(probe.close_reason, -EPROTO);
    assert_int_equal(probe.frames, 3);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
    close(sv[1]);
    buf_free(&b);
}

static void
test_ipc_cork_gathers_one_turn(void **state)
{
    uv_loop_t loop;
    int sv[2];
    struct ipc_chan *ch;
    struct chan_probe probe = { 0 };
    struct buf b;
    char got[4096];
    size_t want = 0;
    ssize_t n;

    (void)state;
    assert_int_equal(uv_loop_init(&loop), 0);
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    assert_int_equal(ipc_chan_open_fd(&loop, sv[0], probe_msg, probe_close, &probe, &ch), 0);
    ipc_chan_cork(ch);
    buf_init(&b, 0);
    for (uint32_t i = 1; i <= 3; i++) {
        size_t off = ipc_begin(&b, TEST_TYPE, i);
        ipc_add_cstr(&b, "{}");
        ipc_end(&b, off);
        want += b.len;
        assert_int_equal(ipc_chan_send(ch, &b), 0);
        assert_true(ipc_chan_busy(ch));
    }
    /* nothing is written until the loop turns ... */
    assert_int_equal(recv(sv[1], got, sizeof(got), MSG_DONTWAIT), -1);
    uv_run(&loop, UV_RUN_NOWAIT);
    /* ... then all three frames arrive together, in order */
    n = recv(sv[1], got, sizeof(got), MSG_DONTWAIT);
    assert_int_equal(n, (ssize_t)want);
    assert_int_equal(got[IPC_HEADER_SIZE - 1], 1);
    assert_false(ipc_chan_busy(ch));
    ipc_chan_close(ch);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
    close(sv[1]);
    buf_free(&b);
}

/* open_fds - how many descriptors this process has open */
static int
open_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    int n = 0;

    assert_non_null(d);
    while (readdir(d) != NULL)
        n++;
    closedir(d);
    return n;
}

static void
test_ipc_chan_open_fd_owns_fd_on_failure(void **state)
{
    uv_loop_t loop;
    uv_poll_t poll;
    int sv[2];
    struct ipc_chan *ch = (struct ipc_chan *)&poll;
    struct chan_probe probe = { 0 };

    (void)state;
    assert_int_equal(uv_loop_init(&loop), 0);
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    /* a descriptor the loop watches already: libuv refuses to wrap it a second time */
    assert_int_equal(uv_poll_init(&loop, &poll, sv[0]), 0);
    assert_int_equal(uv_poll_start(&poll, UV_READABLE, NULL), 0);
    assert_int_equal(ipc_chan_open_fd(&loop, sv[0], probe_msg, probe_close, &probe, &ch),
                     UV_EEXIST);
    assert_null(ch);
    /* the failed call closed it: the caller has nothing left to close */
    assert_int_equal(fcntl(sv[0], F_GETFD), -1);
    assert_int_equal(errno, EBADF);
    assert_false(probe.closed);
    uv_close((uv_handle_t *)&poll, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
    close(sv[1]);
}

static void
test_ipc_chan_connect_path_leaves_nothing_open(void **state)
{
    uv_loop_t loop;
    struct ipc_chan *ch = NULL;
    int before;

    (void)state;
    assert_int_equal(uv_loop_init(&loop), 0);
    before = open_fds();
    assert_int_equal(ipc_chan_connect_path(&loop, "/nonexistent/test_util.sock", probe_msg,
                                           probe_close, NULL, &ch),
                     -ENOENT);
    assert_int_equal(open_fds(), before);
    assert_int_equal(uv_loop_close(&loop), 0);
}

static void
test_msg_printable_neutralises_control_bytes(void **state)
{
    char out[16];

    (void)state;
    msg_printable(out, sizeof(out),
                  "a\r\nb\x01\xff"
                  "c",
                  7);
    assert_string_equal(out, "a??b??c");
    msg_printable(out, 4, "abcdef", 6);
    assert_string_equal(out, "abc");
}

/* file_text - what the log file at FD holds so far */
static const char *
file_text(int fd)
{
    static char text[4096];
    ssize_t n = pread(fd, text, sizeof(text) - 1, 0);

    text[n > 0 ? n : 0] = '\0';
    return text;
}

static void
test_msg_batched_lines_wait_for_flush_but_warnings_do_not(void **state)
{
    char path[] = "/tmp/test_util.logXXXXXX";
    int fd = mkstemp(path);

    (void)state;
    assert_true(fd >= 0);
    unlink(path);
    msg_use_fd(dup(fd));
    msg_set_batched(1);
    msg_info("first %d", 1);
    msg_info("second");
    assert_string_equal(file_text(fd), "");
    msg_warn("trouble");
    /* a warning goes out at once, after what was collected before it */
    assert_non_null(strstr(file_text(fd), "info: first 1\n"));
    assert_non_null(strstr(file_text(fd), "info: second\n"));
    assert_true(strstr(file_text(fd), "second") < strstr(file_text(fd), "warning: trouble"));
    msg_info("third");
    assert_null(strstr(file_text(fd), "third"));
    msg_flush();
    assert_non_null(strstr(file_text(fd), "info: third\n"));
    msg_set_batched(0);
    msg_info("fourth");
    assert_non_null(strstr(file_text(fd), "info: fourth\n"));
    msg_use_fd(-1);
    close(fd);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        UNIT_TEST(test_buf_limit_refuses_growth),
        UNIT_TEST(test_buf_overflow_checked),
        UNIT_TEST(test_buf_integers_big_endian),
        UNIT_TEST(test_ipc_round_trip),
        UNIT_TEST(test_ipc_partial_frame_waits),
        UNIT_TEST(test_ipc_rejects_bad_headers),
        UNIT_TEST(test_ipc_rejects_bad_fields),
        UNIT_TEST(test_ipc_string_with_nul_rejected),
        UNIT_TEST(test_ipc_channel_delivers_frames_and_drops_garbage),
        UNIT_TEST(test_ipc_cork_gathers_one_turn),
        UNIT_TEST(test_ipc_chan_open_fd_owns_fd_on_failure),
        UNIT_TEST(test_ipc_chan_connect_path_leaves_nothing_open),
        UNIT_TEST(test_msg_printable_neutralises_control_bytes),
        UNIT_TEST(test_msg_batched_lines_wait_for_flush_but_warnings_do_not),
    };

    msg_init("test_util");
    msg_also_stderr(0);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
