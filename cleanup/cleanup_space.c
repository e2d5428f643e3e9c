/*
 * cleanup_space.c - how much the queue can still take, as cleanup sees it
 *
 * Samples qstore_space() (runtime/qstore.h, SPACE) every SAMPLE_MS and
 * whenever a commit found the queue full; between two samples the bytes
 * handed to the group committer count as used. A message must fit in the
 * room before it is submitted, else it is refused with 452 4.3.1 at once:
 * the room already leaves out the reserve qmgr needs to record deliveries,
 * which only a commit that ignored it could eat. smtpd hears the figures
 * (MP_QUEUE_SPACE) when it connects and whenever they change noticeably, so
 * that it can refuse at MAIL what could not be stored, and advertise SIZE.
 *
 * Owns: the sample, the sample timer, what smtpd was last told, the
 * full/not-full state of the log.
 */
#include "config.h"

#include <errno.h>
#include <inttypes.h>

#include "cleanup.h"
#include "mailproto.h"
#include "msg.h"
#include "worker.h"

#define SAMPLE_MS  1000
#define TELL_SHARE 64 /* smtpd hears a change of more than 1/64 of the capacity */

static struct {
    uv_timer_t timer;
    int timer_on;
    int known;         /* a sample succeeded */
    uint64_t capacity; /* from the last sample */
    uint64_t room;     /* from the last sample, less what was submitted since */
    uint64_t reserve;  /* kept for qmgr */
    int told;          /* smtpd heard TOLD_CAPACITY and TOLD_ROOM */
    uint64_t told_capacity, told_room;
    int full; /* the log said the queue is full */
} Q;

/* space_frame - MP_QUEUE_SPACE with the current figures into OUT */
static void
space_frame(struct buf *out)
{
    struct mp_queue_space q = { .capacity = Q.capacity, .room = Q.room };

    if (mp_encode_queue_space(out, 0, &q) < 0)
        msg_panic("cannot encode MP_QUEUE_SPACE");
}

static uint64_t
distance(uint64_t a, uint64_t b)
{
    return a > b ? a - b : b - a;
}

/* tell_smtpd - every smtpd connection hears the figures when they moved enough */
static void
tell_smtpd(void)
{
    struct buf out = BUF_INIT;

    if (!Q.known)
        return;
    if (Q.told && Q.told_capacity == Q.capacity && (Q.told_room == 0) == (Q.room == 0) &&
        distance(Q.told_room, Q.room) <= Q.capacity / TELL_SHARE)
        return;
    space_frame(&out);
    cleanup_server_broadcast(&out);
    buf_free(&out);
    Q.told = 1;
    Q.told_capacity = Q.capacity;
    Q.told_room = Q.room;
}

/* note_full - one log line when the queue fills up, one when it has room again */
static void
note_full(int full)
{
    if (full == Q.full)
        return;
    Q.full = full;
    if (full)
        msg_warn("queue full: new messages are refused with 452 4.3.1 until deliveries make "
                 "room (the last %" PRIu64 " KiB are kept for recording them)",
                 Q.reserve / 1024);
    else
        msg_info("queue has room again: %" PRIu64 " KiB for new messages", Q.room / 1024);
}

static void
sample(void)
{
    struct qstore_space sp;
    int err;

    if (cleanup.qs == NULL)
        return;
    if ((err = qstore_space(cleanup.qs, &sp)) < 0) {
        msg_warn("cannot tell how full the queue is: %s", qstore_strerror(err));
        Q.known = 0; /* the commits decide alone */
        return;
    }
    Q.known = 1;
    Q.capacity = qstore_space_capacity(&sp);
    Q.room = qstore_space_room(&sp);
    Q.reserve = qstore_space_reserve(&sp);
    note_full(Q.room == 0);
    tell_smtpd();
}

static void
on_timer(uv_timer_t *t)
{
    (void)t;
    sample();
}

/* cleanup_space_start - see cleanup.h */
void
cleanup_space_start(void)
{
    uv_timer_init(worker_loop(), &Q.timer);
    uv_timer_start(&Q.timer, on_timer, SAMPLE_MS, SAMPLE_MS);
    Q.timer_on = 1;
    sample();
}

/* cleanup_space_stop - see cleanup.h */
void
cleanup_space_stop(void)
{
    if (Q.timer_on)
        uv_close((uv_handle_t *)&Q.timer, NULL);
    Q.timer_on = 0;
}

/* cleanup_space_take - see cleanup.h */
int
cleanup_space_take(size_t size)
{
    if (!Q.known)
        return 0;
    if (size > Q.room) {
        note_full(1);
        return -ENOSPC;
    }
    Q.room -= size;
    tell_smtpd();
    return 0;
}

/* cleanup_space_full - see cleanup.h */
void
cleanup_space_full(void)
{
    sample();
}

/* cleanup_space_hello - see cleanup.h */
void
cleanup_space_hello(struct ipc_chan *ch)
{
    struct buf out = BUF_INIT;

    if (!Q.known)
        return;
    space_frame(&out);
    if (ipc_chan_send(ch, &out) < 0)
        msg_debug("cannot tell a new smtpd connection the queue's space");
    buf_free(&out);
}
