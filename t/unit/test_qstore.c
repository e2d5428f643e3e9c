/*
 * test_qstore.c - unit tests of the LMDB queue store and its group committer
 *
 * Covers: record round trips (every field), corrupt records (-EPROTO, never an
 * overread: run under ASan), a full map (-ENOSPC, env still usable), that the
 * group committer really groups, outcome recording, a 100,000-recipient scan
 * (timed, printed as a TAP comment), the space figures (room, capacity,
 * reserve; pages freed by deletions count as room), and crash safety: a child committing in
 * a loop is SIGKILLed at a random moment and every acknowledged message must
 * be whole, and no message may be partial.
 *
 * Each test works in its own mkdtemp directory under /tmp, removed at the end.
 */
#include "config.h"

#include <errno.h>
#include <inttypes.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "unit.h"
#include <lmdb.h>
#include <uv.h>

#include "buf.h"
#include "qstore.h"
#include "qstore_group.h"
#include "xalloc.h"

/* ---- scratch directories ------------------------------------------------------- */

struct tdir {
    char root[64];
    char env[96];
};

static void
tdir_make(struct tdir *d)
{
    snprintf(d->root, sizeof d->root, "/tmp/qstore-test-XXXXXX");
    assert_non_null(mkdtemp(d->root));
    snprintf(d->env, sizeof d->env, "%s/queue", d->root);
}

static void
tdir_remove(struct tdir *d)
{
    char p[128];

    snprintf(p, sizeof p, "%s/data.mdb", d->env);
    unlink(p);
    snprintf(p, sizeof p, "%s/lock.mdb", d->env);
    unlink(p);
    rmdir(d->env);
    assert_int_equal(rmdir(d->root), 0);
}

static struct qstore *
open_store(const char *dir, size_t map, unsigned flags)
{
    struct qstore_opts o = { .map_size = map, .flags = flags };
    struct qstore *qs = NULL;

    assert_int_equal(qstore_open(&qs, dir, &o), 0);
    return qs;
}

static double
now_ms(void)
{
    return (double)uv_hrtime() / 1e6;
}

/* ---- building test messages ------------------------------------------------------ */

/* body_byte - deterministic content so a reader can check every byte */
static char
body_byte(uint64_t seq, size_t i)
{
    return (char)('A' + (seq * 7 + i * 13 + i / 977) % 26);
}

static void
fill_body(struct buf *b, uint64_t seq, size_t len)
{
    buf_init(b, 0);
    buf_reserve(b, len);
    for (size_t i = 0; i < len; i++)
        b->data[i] = body_byte(seq, i);
    b->len = len;
    b->data[len] = '\0';
}

/* make_msg - message SEQ with N recipients and LEN body bytes */
static struct qstore_newmsg *
make_msg(uint64_t seq, unsigned n, size_t len)
{
    struct qstore_envelope e = { .flags = QSTORE_F_8BITMIME,
                                 .ret = QSTORE_RET_HDRS,
                                 .sender = "bounces@example.org",
                                 .vmta = "pool-a" };
    struct qstore_rcpt *r = xcalloc(n, sizeof *r);
    char **addr = xcalloc(n, sizeof *addr);
    char job[32];
    struct qstore_newmsg *nm = NULL;
    struct buf body;

    snprintf(job, sizeof job, "seq-%" PRIu64, seq);
    e.job_id = job;
    for (unsigned i = 0; i < n; i++) {
        addr[i] = xasprintf("user%u.%" PRIu64 "@d%u.example", i, seq, i % 3);
        r[i].address = addr[i];
        r[i].domain = i % 3 == 0 ? "d0.example" : i % 3 == 1 ? "d1.example" : "d2.example";
        r[i].queue = i % 3 == 0   ? "d0.example/pool-a"
                     : i % 3 == 1 ? "d1.example/pool-a"
                                  : "d2.example/pool-a";
        r[i].notify = QSTORE_NOTIFY_FAILURE;
    }
    fill_body(&body, seq, len);
    assert_int_equal(qstore_newmsg_create(&nm, &e, r, n, &body), 0);
    assert_int_equal(body.len, 0); /* the body was taken over */
    buf_free(&body);
    for (unsigned i = 0; i < n; i++)
        free(addr[i]);
    free(addr);
    free(r);
    return nm;
}

/* check_msg - M is message SEQ with N recipients and LEN body bytes, all intact */
static int
check_msg(const struct qstore_msg *m, uint64_t seq, unsigned n, size_t len)
{
    char job[32], addr[96];

    snprintf(job, sizeof job, "seq-%" PRIu64, seq);
    if (strcmp(m->env.job_id, job) != 0 || m->env.nrcpt != n || m->nrcpt != n ||
        m->body_len != len || m->env.size != len)
        return 0;
    for (unsigned i = 0; i < n; i++) {
        snprintf(addr, sizeof addr, "user%u.%" PRIu64 "@d%u.example", i, seq, i % 3);
        if (m->rcpt[i].index != i || strcmp(m->rcpt[i].address, addr) != 0)
            return 0;
    }
    for (size_t i = 0; i < len; i++)
        if (m->body[i] != body_byte(seq, i))
            return 0;
    return 1;
}

/* seq shape used by the crash and group tests */
static unsigned
seq_nrcpt(uint64_t seq)
{
    return 1 + (unsigned)(seq % 5);
}

static size_t
seq_len(uint64_t seq)
{
    return seq % 7 == 3 ? QSTORE_CHUNK_MAX + 1000 + seq % 100 : 200 + (seq * 37) % 5000;
}

/* ---- record round trip ------------------------------------------------------------- */

static const struct qstore_envelope full_env = {
    .flags = QSTORE_F_8BITMIME | QSTORE_F_SMTPUTF8,
    .ret = QSTORE_RET_FULL,
    .nrcpt = 3,
    .queued_at = 1764262603,
    .size = 3 * QSTORE_CHUNK_MAX - 5,
    .nchunks = 3,
    .sender = "s\xc3\xa9nder@example.org",
    .envid = "ENV+2Did",
    .job_id = "job-42",
    .vmta = "vmta-1",
    .source = "inbound",
    .client_ip = "192.0.2.7",
    .local_ip = "192.0.2.25",
    .client_helo = "helo.example",
    .auth_user = "alice",
    .bounce_sender = "b@example.org",
};

static const struct qstore_rcpt full_rcpt = {
    .state = QSTORE_RCPT_DEFERRED,
    .notify = QSTORE_NOTIFY_SUCCESS | QSTORE_NOTIFY_DELAY,
    .attempts = 7,
    .queued_at = 1764262603,
    .first_attempt = 1764262610,
    .next_attempt = 1764266210,
    .queue = "example.com/vmta-1",
    .address = "bob@example.com",
    .orcpt = "rfc822;bob@example.com",
    .domain = "example.com",
    .last_error = "451 4.7.1 try again later",
};

static void
assert_env_equal(const struct qstore_envelope *a, const struct qstore_envelope *b)
{
    assert_int_equal(a->flags, b->flags);
    assert_int_equal(a->ret, b->ret);
    assert_int_equal(a->nrcpt, b->nrcpt);
    assert_true(a->queued_at == b->queued_at);
    assert_true(a->size == b->size);
    assert_int_equal(a->nchunks, b->nchunks);
    assert_string_equal(a->sender, b->sender);
    assert_string_equal(a->envid, b->envid);
    assert_string_equal(a->job_id, b->job_id);
    assert_string_equal(a->vmta, b->vmta);
    assert_string_equal(a->source, b->source);
    assert_string_equal(a->client_ip, b->client_ip);
    assert_string_equal(a->client_helo, b->client_helo);
    assert_string_equal(a->auth_user, b->auth_user);
    assert_string_equal(a->bounce_sender, b->bounce_sender);
}

static void
assert_rcpt_equal(const struct qstore_rcpt *a, const struct qstore_rcpt *b)
{
    assert_int_equal(a->state, b->state);
    assert_int_equal(a->notify, b->notify);
    assert_int_equal(a->attempts, b->attempts);
    assert_true(a->queued_at == b->queued_at);
    assert_true(a->first_attempt == b->first_attempt);
    assert_true(a->next_attempt == b->next_attempt);
    assert_string_equal(a->queue, b->queue);
    assert_string_equal(a->address, b->address);
    assert_string_equal(a->orcpt, b->orcpt);
    assert_string_equal(a->domain, b->domain);
    assert_string_equal(a->last_error, b->last_error);
}

static void
test_codec_roundtrip(void **state)
{
    struct buf b;
    struct qstore_envelope e;
    struct qstore_rcpt r;
    struct qstore_envelope empty = { 0 };

    (void)state;
    buf_init(&b, 0);
    assert_int_equal(qstore_envelope_encode(&b, &full_env), 0);
    assert_int_equal(qstore_envelope_decode(b.data, b.len, &e), 0);
    assert_env_equal(&e, &full_env);
    assert_string_equal(e.local_ip, "192.0.2.25");
    /* a version 1 record (before local_ip) still reads, with local_ip "" */
    b.data[0] = 1;
    b.len -= 2 + strlen(full_env.local_ip) + 1;
    assert_int_equal(qstore_envelope_decode(b.data, b.len, &e), 0);
    assert_string_equal(e.local_ip, "");
    assert_string_equal(e.bounce_sender, full_env.bounce_sender);
    buf_reset(&b);
    assert_int_equal(qstore_rcpt_encode(&b, &full_rcpt), 0);
    assert_int_equal(qstore_rcpt_decode(b.data, b.len, &r), 0);
    assert_rcpt_equal(&r, &full_rcpt);
    /* NULL strings are stored as "" and come back as "" */
    buf_reset(&b);
    assert_int_equal(qstore_envelope_encode(&b, &empty), 0);
    assert_int_equal(qstore_envelope_decode(b.data, b.len, &e), 0);
    assert_string_equal(e.sender, "");
    assert_string_equal(e.bounce_sender, "");
    buf_free(&b);
}

static void
test_codec_limits(void **state)
{
    char big[QSTORE_STR_MAX + 2];
    struct qstore_rcpt r = full_rcpt, out;
    struct qstore_envelope e = full_env;
    struct buf b;

    (void)state;
    buf_init(&b, 0);
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    r.address = big;
    assert_int_equal(qstore_rcpt_encode(&b, &r), -EMSGSIZE);
    assert_int_equal(b.len, 0);
    r.address = "a@b";
    r.last_error = big; /* reply text is truncated, not refused */
    assert_int_equal(qstore_rcpt_encode(&b, &r), 0);
    assert_int_equal(qstore_rcpt_decode(b.data, b.len, &out), 0);
    assert_int_equal(strlen(out.last_error), QSTORE_ERR_MAX);
    e.flags = 0x80;
    assert_int_equal(qstore_envelope_encode(&b, &e), -EINVAL);
    e.flags = 0;
    e.nchunks = 2; /* does not match size */
    assert_int_equal(qstore_envelope_encode(&b, &e), -EINVAL);
    r.state = 9;
    assert_int_equal(qstore_rcpt_encode(&b, &r), -EINVAL);
    buf_free(&b);
}

/* ---- corrupt records -------------------------------------------------------------- */

typedef int (*decode_fn)(const void *rec, size_t len, void *out);

static int
dec_env(const void *rec, size_t len, void *out)
{
    return qstore_envelope_decode(rec, len, out);
}

static int
dec_rcpt(const void *rec, size_t len, void *out)
{
    return qstore_rcpt_decode(rec, len, out);
}

/* decode_copy - decode from an exact-size heap copy so ASan sees any overread */
static int
decode_copy(decode_fn fn, const char *rec, size_t len)
{
    union {
        struct qstore_envelope e;
        struct qstore_rcpt r;
    } out;
    char *p = xmalloc(len ? len : 1);
    int rc;

    memcpy(p, rec, len);
    rc = fn(p, len, &out);
    free(p);
    return rc;
}

/* check_corruptions - truncation, length flips, version, trailing bytes, bit flips */
static void
check_corruptions(decode_fn fn, const struct buf *b, size_t fixed, unsigned nstr)
{
    char *rec = xmalloc(b->len + 1);
    uint8_t version = (uint8_t)b->data[0];
    size_t off = fixed;

    memcpy(rec, b->data, b->len);
    for (size_t n = 0; n < b->len; n++)
        assert_int_equal(decode_copy(fn, rec, n), -EPROTO);
    rec[b->len] = 0;
    assert_int_equal(decode_copy(fn, rec, b->len + 1), -EPROTO);
    /* each string's length, one more, one less, and huge */
    for (unsigned s = 0; s < nstr; s++) {
        unsigned len = (unsigned)(uint8_t)rec[off] << 8 | (uint8_t)rec[off + 1];
        unsigned tries[] = { len + 1, len - 1, 0xffff, 0 };

        for (size_t t = 0; t < sizeof tries / sizeof tries[0]; t++) {
            rec[off] = (char)(tries[t] >> 8);
            rec[off + 1] = (char)tries[t];
            assert_int_equal(decode_copy(fn, rec, b->len), -EPROTO);
        }
        rec[off] = (char)(len >> 8);
        rec[off + 1] = (char)len;
        off += 2 + len;
    }
    assert_int_equal(off, b->len);
    assert_int_equal(decode_copy(fn, rec, b->len), 0);
    rec[0] = 3; /* unknown version */
    assert_int_equal(decode_copy(fn, rec, b->len), -EPROTO);
    rec[0] = (char)version;
    /* any single bit flip: decoded or refused, never a crash or overread */
    for (size_t i = 0; i < b->len; i++) {
        for (int bit = 0; bit < 8; bit++) {
            int rc;

            rec[i] ^= (char)(1 << bit);
            rc = decode_copy(fn, rec, b->len);
            assert_true(rc == 0 || rc == -EPROTO);
            rec[i] ^= (char)(1 << bit);
        }
    }
    free(rec);
}

static void
test_codec_corrupt(void **state)
{
    struct buf b;

    (void)state;
    buf_init(&b, 0);
    assert_int_equal(qstore_envelope_encode(&b, &full_env), 0);
    check_corruptions(dec_env, &b, 28, 10);
    buf_reset(&b);
    assert_int_equal(qstore_rcpt_encode(&b, &full_rcpt), 0);
    check_corruptions(dec_rcpt, &b, 32, 5);
    buf_free(&b);
}

static int
count_cb(const struct qstore_sched *s, void *arg)
{
    (void)s;
    (*(uint64_t *)arg)++;
    return 0;
}

/* corrupt_rcpt_in_db - overwrite rcpt MSGID/0 with garbage through raw LMDB */
static void
corrupt_rcpt_in_db(const char *dir, uint64_t msgid)
{
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi dbi;
    uint8_t kb[12] = { 0 };
    MDB_val k = { sizeof kb, kb }, v = { 5, "\x01\x00\x00\x00\xff" };

    for (int i = 0; i < 8; i++)
        kb[i] = (uint8_t)(msgid >> (56 - 8 * i));
    assert_int_equal(mdb_env_create(&env), 0);
    assert_int_equal(mdb_env_set_maxdbs(env, 8), 0);
    assert_int_equal(mdb_env_open(env, dir, MDB_NOTLS, 0600), 0);
    assert_int_equal(mdb_txn_begin(env, NULL, 0, &txn), 0);
    assert_int_equal(mdb_dbi_open(txn, "rcpt", 0, &dbi), 0);
    assert_int_equal(mdb_put(txn, dbi, &k, &v, 0), 0);
    assert_int_equal(mdb_txn_commit(txn), 0);
    mdb_env_close(env);
}

static void
test_corrupt_in_store(void **state)
{
    struct tdir d;
    struct qstore *qs;
    struct qstore_newmsg *nm;
    struct qstore_msg *m = NULL;
    struct qstore_scan_stats st;
    uint64_t id1, id2, n = 0;

    (void)state;
    tdir_make(&d);
    qs = open_store(d.env, 16 << 20, QSTORE_NOSYNC);
    nm = make_msg(1, 2, 100);
    assert_int_equal(qstore_put(qs, nm, &id1), 0);
    qstore_newmsg_free(nm);
    nm = make_msg(2, 2, 100);
    assert_int_equal(qstore_put(qs, nm, &id2), 0);
    qstore_newmsg_free(nm);
    qstore_close(qs);
    corrupt_rcpt_in_db(d.env, id1);
    qs = open_store(d.env, 16 << 20, 0);
    /* the rebuild skips (and counts) the bad record and keeps going */
    assert_int_equal(qstore_scan(qs, count_cb, &n, &st), 0);
    assert_true(n == 3 && st.seen == 3 && st.corrupt == 1);
    assert_int_equal(qstore_read_msg(qs, id1, QSTORE_READ_BODY, &m), -EPROTO);
    assert_int_equal(qstore_read_msg(qs, id2, QSTORE_READ_BODY, &m), 0);
    assert_true(check_msg(m, 2, 2, 100));
    qstore_msg_free(m);
    /* the damaged message can still be removed */
    assert_int_equal(qstore_delete_msg(qs, id1), 0);
    qstore_close(qs);
    tdir_remove(&d);
}

/* ---- store and read back --------------------------------------------------------- */

static void
test_put_read_roundtrip(void **state)
{
    struct tdir d;
    struct qstore *qs;
    struct qstore_newmsg *nm;
    struct qstore_msg *m;
    struct qstore_rcpt r[3];
    struct qstore_info info;
    struct buf body;
    uint64_t id;
    size_t len = 2 * QSTORE_CHUNK_MAX + 12345;

    (void)state;
    tdir_make(&d);
    qs = open_store(d.env, 64 << 20, 0);
    for (int i = 0; i < 3; i++) {
        r[i] = full_rcpt;
        r[i].state = QSTORE_RCPT_QUEUED;
    }
    r[1].address = "carol@example.net";
    fill_body(&body, 99, len);
    assert_int_equal(qstore_newmsg_create(&nm, &full_env, r, 3, &body), 0);
    buf_free(&body);
    assert_int_equal(qstore_put(qs, nm, &id), 0);
    assert_true(id == 1);
    qstore_newmsg_free(nm);
    assert_int_equal(qstore_read_msg(qs, id, QSTORE_READ_BODY, &m), 0);
    {
        struct qstore_envelope want = full_env;

        want.size = len; /* computed on submit */
        want.nchunks = 3;
        assert_env_equal(&m->env, &want);
    }
    assert_int_equal(m->nrcpt, 3);
    for (unsigned i = 0; i < 3; i++) {
        r[i].queued_at = full_env.queued_at;
        assert_int_equal(m->rcpt[i].index, i);
        assert_rcpt_equal(&m->rcpt[i], &r[i]);
    }
    assert_true(m->body_len == len);
    for (size_t i = 0; i < len; i++)
        if (m->body[i] != body_byte(99, i))
            fail_msg("body byte %zu differs", i);
    qstore_msg_free(m);
    assert_int_equal(qstore_read_msg(qs, id, 0, &m), 0); /* without the body */
    assert_null(m->body);
    qstore_msg_free(m);
    assert_int_equal(qstore_read_msg(qs, id + 1, 0, &m), -ENOENT);
    assert_int_equal(qstore_info(qs, &info), 0);
    assert_true(info.messages == 1 && info.recipients == 3 && info.chunks == 3 &&
                info.next_msgid == 2);
    qstore_close(qs);
    /* ids survive a reopen and keep growing */
    qs = open_store(d.env, 64 << 20, 0);
    nm = make_msg(5, 1, 10);
    assert_int_equal(qstore_put(qs, nm, &id), 0);
    assert_true(id == 2);
    qstore_newmsg_free(nm);
    qstore_close(qs);
    tdir_remove(&d);
}

/* check_patched - stored body of ID: the id's text at AT, every other byte as written */
static void
check_patched(struct qstore *qs, uint64_t id, uint64_t seq, size_t len, size_t at)
{
    struct qstore_msg *m;
    char qid[QSTORE_QID_LEN + 1];

    qstore_qid_format(qid, id);
    assert_int_equal(qstore_read_msg(qs, id, QSTORE_READ_BODY, &m), 0);
    assert_true(m->body_len == len);
    assert_memory_equal(m->body + at, qid, QSTORE_QID_LEN);
    for (size_t i = 0; i < len; i++)
        if ((i < at || i >= at + QSTORE_QID_LEN) && m->body[i] != body_byte(seq, i))
            fail_msg("body byte %zu differs", i);
    qstore_msg_free(m);
}

/* the queue-id patch: at the start, across a chunk boundary, at the very end */
static void
test_qid_patch(void **state)
{
    const size_t len = QSTORE_CHUNK_MAX + 100;
    const size_t at[] = { 0, QSTORE_CHUNK_MAX - 7, len - QSTORE_QID_LEN };
    char qid[QSTORE_QID_LEN + 1];
    struct tdir d;
    struct qstore *qs;
    uint64_t id;

    (void)state;
    qstore_qid_format(qid, 0x1A2BULL);
    assert_string_equal(qid, "00000000000000001A2B");
    tdir_make(&d);
    qs = open_store(d.env, 64 << 20, 0);
    for (unsigned i = 0; i < 3; i++) {
        struct qstore_newmsg *nm = make_msg(40 + i, 2, len);

        assert_int_equal(qstore_newmsg_patch_qid(nm, len - QSTORE_QID_LEN + 1), -EINVAL);
        assert_int_equal(qstore_newmsg_patch_qid(nm, at[i]), 0);
        assert_int_equal(qstore_put(qs, nm, &id), 0);
        check_patched(qs, id, 40 + i, len, at[i]);
        qstore_newmsg_free(nm);
    }
    qstore_close(qs);
    tdir_remove(&d);
}

/* ---- the group committer ------------------------------------------------------------ */

struct acks {
    unsigned done, ok, nospc, noent;
    uint64_t ids[256];
    int status[256];
};

static void
ack_cb(void *arg, int status, uint64_t msgid)
{
    struct acks *a = arg;

    if (a->done < 256) {
        a->ids[a->done] = msgid;
        a->status[a->done] = status;
    }
    a->done++;
    a->ok += status == 0;
    a->nospc += status == -ENOSPC;
    a->noent += status == -ENOENT;
}

static void
closed_cb(void *arg)
{
    *(int *)arg = 1;
}

static void
close_group(uv_loop_t *loop, struct qstore_group *g)
{
    int closed = 0;

    qstore_group_close(g, closed_cb, &closed);
    uv_run(loop, UV_RUN_DEFAULT);
    assert_int_equal(closed, 1);
}

static void
test_group_groups(void **state)
{
    struct tdir d;
    struct qstore *qs;
    struct qstore_group *g;
    struct qstore_group_stats st;
    struct acks a = { 0 };
    uv_loop_t loop;
    double t0;

    (void)state;
    tdir_make(&d);
    qs = open_store(d.env, 256 << 20, 0); /* sync on: the real thing */
    assert_int_equal(uv_loop_init(&loop), 0);
    assert_int_equal(qstore_group_new(&g, &loop, qs, NULL), 0);
    t0 = now_ms();
    for (uint64_t seq = 0; seq < 100; seq++)
        assert_int_equal(
            qstore_group_submit(g, make_msg(seq, seq_nrcpt(seq), seq_len(seq)), ack_cb, &a), 0);
    assert_int_equal(qstore_group_pending(g), 100);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(a.done, 100);
    assert_int_equal(a.ok, 100);
    qstore_group_stats(g, &st);
    print_message("# group: 100 messages in %" PRIu64 " commit(s), %.1f messages/sync, "
                  "%.2f ms in txns, %.2f ms wall\n",
                  st.commits, st.commits ? (double)st.msgs / (double)st.commits : 0.0, st.commit_ms,
                  now_ms() - t0);
    assert_true(st.commits <= 10);
    assert_true(st.msgs == 100);
    for (unsigned i = 0; i < 100; i++) { /* callbacks come in submission order */
        struct qstore_msg *m;

        assert_true(a.ids[i] == i + 1);
        assert_int_equal(qstore_read_msg(qs, a.ids[i], QSTORE_READ_BODY, &m), 0);
        assert_true(check_msg(m, i, seq_nrcpt(i), seq_len(i)));
        qstore_msg_free(m);
    }
    {
        struct qstore_newmsg *late = make_msg(1000, 1, 10);
        int closed = 0;

        qstore_group_close(g, closed_cb, &closed);
        assert_int_equal(qstore_group_submit(g, late, ack_cb, &a), -ESHUTDOWN);
        qstore_newmsg_free(late); /* refused: still ours */
        uv_run(&loop, UV_RUN_DEFAULT);
        assert_int_equal(closed, 1);
    }
    assert_int_equal(uv_loop_close(&loop), 0);
    qstore_close(qs);
    tdir_remove(&d);
}

/*
 * Lazy commits (qstore.h, DURABILITY): an answer comes only once a later data sync has
 * carried its transaction's meta page to the disk: the next batch's commit, or a bare
 * sync when nothing else came. At the first callback, two flushes must have returned.
 */
struct lazy_probe {
    struct qstore_group *g;
    uint64_t flushes_at_first; /* commits + bare syncs when the first answer came */
    struct acks a;
};

static void
lazy_ack_cb(void *arg, int status, uint64_t msgid)
{
    struct lazy_probe *p = arg;
    struct qstore_group_stats st;

    if (p->a.done == 0) {
        qstore_group_stats(p->g, &st);
        p->flushes_at_first = st.commits + st.syncs;
    }
    ack_cb(&p->a, status, msgid);
}

static void
lazy_round(unsigned flags, unsigned n, struct qstore_group_stats *st, uint64_t *first)
{
    static const struct qstore_group_opts small = { .max_batch = 8 };
    struct tdir d;
    struct qstore *qs;
    struct lazy_probe p = { 0 };
    uv_loop_t loop;

    tdir_make(&d);
    qs = open_store(d.env, 64 << 20, flags);
    assert_int_equal(uv_loop_init(&loop), 0);
    assert_int_equal(qstore_group_new(&p.g, &loop, qs, &small), 0);
    for (uint64_t seq = 0; seq < n; seq++)
        assert_int_equal(qstore_group_submit(p.g, make_msg(seq, 1, 100), lazy_ack_cb, &p), 0);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(p.a.ok, n);
    qstore_group_stats(p.g, st);
    *first = p.flushes_at_first;
    close_group(&loop, p.g);
    assert_int_equal(uv_loop_close(&loop), 0);
    qstore_close(qs);
    tdir_remove(&d);
}

static void
test_group_lazy(void **state)
{
    struct qstore_group_stats st;
    uint64_t first;

    (void)state;
    lazy_round(0, 1, &st, &first); /* a lone message: its commit, then a bare sync */
    assert_true(st.commits == 1 && st.syncs == 1 && first == 2);
    lazy_round(0, 64, &st, &first); /* a burst: each commit carries the one before */
    print_message("# lazy: 64 messages in %" PRIu64 " commits and %" PRIu64 " bare sync(s)\n",
                  st.commits, st.syncs);
    assert_true(st.commits >= 8 && st.syncs <= 1 && first >= 2);
    lazy_round(QSTORE_NOSYNC, 1, &st, &first); /* nothing is synced: answered at once */
    assert_true(st.commits == 1 && st.syncs == 0 && first == 1);
}

/* ---- warm-up state ------------------------------------------------------------------ */

static const struct qstore_warmup warm_full = {
    .step = 7,
    .start_day = 20426,
    .window = 20431,
    .sent = 0x0102030405060708ull,
    .attempts = 123456789,
    .deferrals = 4321,
    .complaints = 1,
};

/* assert_warmup_equal - field by field (the struct has padding after step) */
static void
assert_warmup_equal(const struct qstore_warmup *a, const struct qstore_warmup *b)
{
    assert_int_equal(a->step, b->step);
    assert_int_equal(a->start_day, b->start_day);
    assert_int_equal(a->window, b->window);
    assert_int_equal(a->sent, b->sent);
    assert_int_equal(a->attempts, b->attempts);
    assert_int_equal(a->deferrals, b->deferrals);
    assert_int_equal(a->complaints, b->complaints);
}

static void
test_warmup_codec(void **state)
{
    struct qstore_warmup w;
    struct buf b = BUF_INIT;
    uint8_t rec[QSTORE_WARMUP_LEN];

    (void)state;
    assert_int_equal(qstore_warmup_encode(&b, &warm_full), 0);
    assert_int_equal(b.len, QSTORE_WARMUP_LEN);
    assert_int_equal((uint8_t)b.data[0], QSTORE_WARMUP_VERSION);
    assert_int_equal(qstore_warmup_decode(b.data, b.len, &w), 0);
    assert_warmup_equal(&w, &warm_full);
    /* big-endian on disk */
    assert_int_equal((uint8_t)b.data[24], 1);
    assert_int_equal((uint8_t)b.data[31], 8);
    memcpy(rec, b.data, sizeof rec);
    /* every other length, another version, a reserved byte set: -EPROTO */
    for (size_t len = 0; len <= sizeof rec + 8; len++) {
        uint8_t big[QSTORE_WARMUP_LEN + 8] = { 0 };

        memcpy(big, rec, len < sizeof rec ? len : sizeof rec);
        if (len != sizeof rec)
            assert_int_equal(qstore_warmup_decode(big, len, &w), -EPROTO);
    }
    for (int i = 0; i < 4; i++) {
        uint8_t bad[QSTORE_WARMUP_LEN];

        memcpy(bad, rec, sizeof bad);
        bad[i] ^= 0x40;
        assert_int_equal(qstore_warmup_decode(bad, sizeof bad, &w), -EPROTO);
    }
    buf_free(&b);
}

struct warm_seen {
    unsigned n;
    char keys[8][64];
    struct qstore_warmup st[8];
};

static int
warm_collect(const char *key, const struct qstore_warmup *st, void *arg)
{
    struct warm_seen *s = arg;

    if (s->n < 8) {
        snprintf(s->keys[s->n], sizeof s->keys[0], "%s", key);
        s->st[s->n] = *st;
    }
    s->n++;
    return 0;
}

static void
test_warmup_store(void **state)
{
    struct tdir d;
    struct qstore *qs;
    struct qstore_wtxn *w;
    struct qstore_group *g;
    struct qstore_warmup st = warm_full;
    struct warm_seen seen = { 0 };
    struct acks a = { 0 };
    char long_key[QSTORE_WARMUP_KEY_MAX + 2];
    uv_loop_t loop;
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi dbi;
    MDB_val k = { 5, "zzzzz" }, v = { 3, "bad" };

    (void)state;
    tdir_make(&d);
    qs = open_store(d.env, 64 << 20, 0);
    /* a fresh store has none */
    assert_int_equal(qstore_scan_warmup(qs, warm_collect, &seen), 0);
    assert_int_equal(seen.n, 0);
    /* a write transaction, then the group committer replacing one record */
    assert_int_equal(qstore_wtxn_begin(qs, &w), 0);
    assert_int_equal(qstore_wtxn_put_warmup(w, "plan 127.0.0.21 gmail.rollup", &st), 0);
    st.step = 1;
    assert_int_equal(qstore_wtxn_put_warmup(w, "plan 127.0.0.21 *", &st), 0);
    memset(long_key, 'k', sizeof long_key - 1);
    long_key[sizeof long_key - 1] = 0;
    assert_int_equal(qstore_wtxn_put_warmup(w, long_key, &st), -EMSGSIZE);
    assert_int_equal(qstore_wtxn_put_warmup(w, "", &st), -EMSGSIZE);
    assert_int_equal(qstore_wtxn_commit(w), 0);
    assert_int_equal(uv_loop_init(&loop), 0);
    assert_int_equal(qstore_group_new(&g, &loop, qs, NULL), 0);
    st.step = 2;
    st.sent = 99;
    assert_int_equal(qstore_group_put_warmup(g, "plan 127.0.0.21 *", &st, ack_cb, &a), 0);
    assert_int_equal(qstore_group_put_warmup(g, long_key, &st, ack_cb, &a), -EMSGSIZE);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(a.done, 1);
    assert_int_equal(a.ok, 1);
    close_group(&loop, g);
    assert_int_equal(uv_loop_close(&loop), 0);
    qstore_close(qs);

    /* a corrupt record among them is skipped; the others survive a reopen */
    assert_int_equal(mdb_env_create(&env), 0);
    assert_int_equal(mdb_env_set_maxdbs(env, 8), 0);
    assert_int_equal(mdb_env_open(env, d.env, 0, 0600), 0);
    assert_int_equal(mdb_txn_begin(env, NULL, 0, &txn), 0);
    assert_int_equal(mdb_dbi_open(txn, "warmup", 0, &dbi), 0);
    assert_int_equal(mdb_put(txn, dbi, &k, &v, 0), 0);
    assert_int_equal(mdb_txn_commit(txn), 0);
    mdb_env_close(env);
    qs = open_store(d.env, 64 << 20, QSTORE_RDONLY);
    assert_int_equal(qstore_scan_warmup(qs, warm_collect, &seen), 0);
    assert_int_equal(seen.n, 2);
    assert_string_equal(seen.keys[0], "plan 127.0.0.21 *");
    assert_int_equal(seen.st[0].step, 2);
    assert_int_equal(seen.st[0].sent, 99);
    assert_string_equal(seen.keys[1], "plan 127.0.0.21 gmail.rollup");
    assert_warmup_equal(&seen.st[1], &warm_full);
    qstore_close(qs);
    tdir_remove(&d);
}

/* a store made before the warmup database: created when opened for writing, empty when not */
static void
test_warmup_older_spool(void **state)
{
    struct tdir d;
    struct qstore *qs;
    struct qstore_wtxn *w;
    struct warm_seen seen = { 0 };
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi dbi;

    (void)state;
    tdir_make(&d);
    qs = open_store(d.env, 64 << 20, 0);
    qstore_close(qs);
    assert_int_equal(mdb_env_create(&env), 0);
    assert_int_equal(mdb_env_set_maxdbs(env, 8), 0);
    assert_int_equal(mdb_env_open(env, d.env, 0, 0600), 0);
    assert_int_equal(mdb_txn_begin(env, NULL, 0, &txn), 0);
    assert_int_equal(mdb_dbi_open(txn, "warmup", 0, &dbi), 0);
    assert_int_equal(mdb_drop(txn, dbi, 1), 0);
    assert_int_equal(mdb_txn_commit(txn), 0);
    mdb_env_close(env);
    qs = open_store(d.env, 64 << 20, QSTORE_RDONLY);
    assert_int_equal(qstore_scan_warmup(qs, warm_collect, &seen), 0);
    assert_int_equal(seen.n, 0);
    qstore_close(qs);
    qs = open_store(d.env, 64 << 20, 0);
    assert_int_equal(qstore_wtxn_begin(qs, &w), 0);
    assert_int_equal(qstore_wtxn_put_warmup(w, "k", &warm_full), 0);
    assert_int_equal(qstore_wtxn_commit(w), 0);
    assert_int_equal(qstore_scan_warmup(qs, warm_collect, &seen), 0);
    assert_int_equal(seen.n, 1);
    qstore_close(qs);
    tdir_remove(&d);
}

/* a paced group keeps commits apart, except when a batch is full */
static void
test_group_paced(void **state)
{
    static const struct qstore_group_opts paced = { .pace_ms = 200, .max_batch = 8 };
    struct tdir d;
    struct qstore *qs;
    struct qstore_group *g;
    struct acks a = { 0 };
    uv_loop_t loop;
    double t0, t1, t2;

    (void)state;
    tdir_make(&d);
    qs = open_store(d.env, 256 << 20, QSTORE_NOSYNC);
    assert_int_equal(uv_loop_init(&loop), 0);
    assert_int_equal(qstore_group_new(&g, &loop, qs, &paced), 0);
    t0 = now_ms();
    qstore_group_submit(g, make_msg(1, 1, 100), ack_cb, &a);
    uv_run(&loop, UV_RUN_DEFAULT);
    t1 = now_ms();
    assert_int_equal(a.ok, 1);
    assert_true(t1 - t0 < 150); /* the first commit does not wait */
    qstore_group_submit(g, make_msg(2, 1, 100), ack_cb, &a);
    qstore_group_submit(g, make_msg(3, 1, 100), ack_cb, &a);
    uv_run(&loop, UV_RUN_DEFAULT);
    t2 = now_ms();
    assert_int_equal(a.ok, 3);
    print_message("# paced: second commit %.0f ms after the first\n", t2 - t0);
    assert_true(t2 - t0 >= 190);
    for (uint64_t seq = 10; seq < 18; seq++) /* a full batch goes at once */
        qstore_group_submit(g, make_msg(seq, 1, 100), ack_cb, &a);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_true(now_ms() - t2 < 150);
    close_group(&loop, g);
    assert_int_equal(a.ok, 11);
    assert_int_equal(uv_loop_close(&loop), 0);
    qstore_close(qs);
    tdir_remove(&d);
}

static void
test_outcomes(void **state)
{
    struct tdir d;
    struct qstore *qs;
    struct qstore_group *g;
    struct qstore_msg *m;
    struct qstore_info info;
    struct acks a = { 0 };
    uv_loop_t loop;
    uint64_t id, other;
    char longerr[700];
    struct qstore_defer df = { .attempts = 2,
                               .next_attempt = 2000000000,
                               .first_attempt = 1900000000,
                               .last_error = longerr };

    (void)state;
    memset(longerr, 'e', sizeof longerr - 1);
    longerr[sizeof longerr - 1] = '\0';
    memcpy(longerr, "451 4.2.0 ", 10);
    tdir_make(&d);
    qs = open_store(d.env, 64 << 20, QSTORE_NOSYNC);
    assert_int_equal(uv_loop_init(&loop), 0);
    assert_int_equal(qstore_group_new(&g, &loop, qs, NULL), 0);
    qstore_group_submit(g, make_msg(1, 3, QSTORE_CHUNK_MAX + 7), ack_cb, &a);
    qstore_group_submit(g, make_msg(2, 1, 50), ack_cb, &a);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(a.ok, 2);
    id = a.ids[0];
    other = a.ids[1];

    /* deferral rewrites the record; the reply text is bounded */
    qstore_group_defer(g, id, 1, &df, ack_cb, &a);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(a.status[2], 0);
    assert_int_equal(qstore_read_msg(qs, id, 0, &m), 0);
    assert_int_equal(m->rcpt[1].state, QSTORE_RCPT_DEFERRED);
    assert_int_equal(m->rcpt[1].attempts, 2);
    assert_true(m->rcpt[1].next_attempt == 2000000000 && m->rcpt[1].first_attempt == 1900000000);
    assert_int_equal(strlen(m->rcpt[1].last_error), QSTORE_ERR_MAX);
    assert_int_equal(strncmp(m->rcpt[1].last_error, "451 4.2.0 ", 10), 0);
    assert_string_equal(m->rcpt[1].address, "user1.1@d1.example");
    assert_int_equal(m->rcpt[0].state, QSTORE_RCPT_QUEUED);
    qstore_msg_free(m);

    /* two recipients finish: the message stays with one */
    qstore_group_finish(g, id, 0, ack_cb, &a);
    qstore_group_finish(g, id, 2, ack_cb, &a);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(a.ok, 5);
    assert_int_equal(qstore_read_msg(qs, id, QSTORE_READ_BODY, &m), 0);
    assert_int_equal(m->nrcpt, 1);
    assert_int_equal(m->rcpt[0].index, 1);
    assert_int_equal(m->env.nrcpt, 3);
    qstore_msg_free(m);

    /* the last one goes: msg and body go in the same transaction */
    qstore_group_finish(g, id, 1, ack_cb, &a);
    qstore_group_finish(g, id, 1, ack_cb, &a);     /* again: -ENOENT, batch unharmed */
    qstore_group_defer(g, id, 1, &df, ack_cb, &a); /* gone: -ENOENT */
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(a.ok, 6);
    assert_int_equal(a.noent, 2);
    assert_int_equal(qstore_read_msg(qs, id, 0, &m), -ENOENT);
    assert_int_equal(qstore_info(qs, &info), 0);
    assert_true(info.messages == 1 && info.recipients == 1 && info.chunks == 1);

    /* an administrative delete takes everything of a message */
    assert_int_equal(qstore_delete_msg(qs, other), 0);
    assert_int_equal(qstore_delete_msg(qs, other), -ENOENT);
    assert_int_equal(qstore_info(qs, &info), 0);
    assert_true(info.messages == 0 && info.recipients == 0 && info.chunks == 0);
    close_group(&loop, g);
    assert_int_equal(uv_loop_close(&loop), 0);
    qstore_close(qs);
    tdir_remove(&d);
}

/* ---- a full map ---------------------------------------------------------------------- */

static void
test_map_full(void **state)
{
    struct tdir d;
    struct qstore *qs;
    struct qstore_group *g;
    struct qstore_newmsg *nm;
    struct qstore_msg *m;
    struct acks a = { 0 };
    uv_loop_t loop;
    uint64_t ids[64], id;
    unsigned n = 0;
    int rc = 0;

    (void)state;
    tdir_make(&d);
    qs = open_store(d.env, 2 << 20, QSTORE_NOSYNC); /* 2 MiB map */
    while (n < 64) {
        nm = make_msg(n, 2, 100 * 1000);
        rc = qstore_put(qs, nm, &ids[n]);
        qstore_newmsg_free(nm);
        if (rc != 0)
            break;
        n++;
    }
    assert_int_equal(rc, -ENOSPC);
    assert_true(n >= 5);
    print_message("# map full after %u messages of 100 kB in a 2 MiB map\n", n);
    /* what was committed is intact and readable */
    for (unsigned i = 0; i < n; i++) {
        assert_int_equal(qstore_read_msg(qs, ids[i], QSTORE_READ_BODY, &m), 0);
        assert_true(check_msg(m, i, 2, 100 * 1000));
        qstore_msg_free(m);
    }
    /* make room, then a batch where one message cannot fit and one can */
    assert_int_equal(qstore_delete_msg(qs, ids[0]), 0);
    assert_int_equal(qstore_delete_msg(qs, ids[1]), 0);
    assert_int_equal(uv_loop_init(&loop), 0);
    assert_int_equal(qstore_group_new(&g, &loop, qs, NULL), 0);
    qstore_group_submit(g, make_msg(500, 1, 4 << 20), ack_cb, &a); /* > map */
    qstore_group_submit(g, make_msg(501, 1, 1000), ack_cb, &a);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(a.done, 2);
    assert_int_equal(a.status[0], -ENOSPC);
    assert_true(a.ids[0] == 0);
    assert_int_equal(a.status[1], 0);
    {
        struct qstore_group_stats st;

        qstore_group_stats(g, &st);
        assert_true(st.fallbacks == 1 && st.msgs == 1);
    }
    assert_int_equal(qstore_read_msg(qs, a.ids[1], QSTORE_READ_BODY, &m), 0);
    assert_true(check_msg(m, 501, 1, 1000));
    qstore_msg_free(m);
    close_group(&loop, g);
    assert_int_equal(uv_loop_close(&loop), 0);
    /* and a plain small put still works */
    nm = make_msg(502, 1, 10);
    assert_int_equal(qstore_put(qs, nm, &id), 0);
    qstore_newmsg_free(nm);
    qstore_close(qs);
    tdir_remove(&d);
}

/* ---- space: what the queue can still take ------------------------------------------ */

static void
test_space_arithmetic(void **state)
{
    const uint64_t MiB = 1 << 20;
    struct qstore_space sp = { .map_size = 1024 * MiB,
                               .file_size = 10 * MiB,
                               .free_inside = 2 * MiB,
                               .disk_size = 100 * 1024 * MiB,
                               .disk_avail = 50 * 1024 * MiB };
    uint64_t room;

    (void)state;
    /* the map binds: 1/64 of it is kept back */
    assert_true(qstore_space_reserve(&sp) == 16 * MiB);
    room = qstore_space_room(&sp);
    assert_true(room < 2 * MiB + 1014 * MiB - 16 * MiB && room > 960 * MiB);
    assert_true(qstore_space_capacity(&sp) < 1008 * MiB && qstore_space_capacity(&sp) > room);
    /* the disk binds: 3 MiB left in all is less than the reserve */
    sp.disk_avail = 1 * MiB;
    assert_true(qstore_space_room(&sp) == 0);
    /* a small disk: the reserve is 256 KiB at least, the capacity below the disk's size */
    sp = (struct qstore_space){
        .map_size = 1024 * MiB, .file_size = 1 * MiB, .disk_size = 8 * MiB, .disk_avail = 5 * MiB
    };
    assert_true(qstore_space_reserve(&sp) == 256 << 10);
    assert_true(qstore_space_capacity(&sp) < 8 * MiB && qstore_space_capacity(&sp) > 7 * MiB);
    assert_true(qstore_space_room(&sp) < 5 * MiB && qstore_space_room(&sp) > 4 * MiB);
    /* a tiny map: a quarter of it at most */
    sp = (struct qstore_space){
        .map_size = 512 << 10, .file_size = 64 << 10, .disk_size = MiB << 10, .disk_avail = MiB << 9
    };
    assert_true(qstore_space_reserve(&sp) == 128 << 10);
    assert_true(qstore_space_room(&sp) > 250 << 10);
}

static void
test_space_sampled(void **state)
{
    struct tdir d;
    struct qstore *qs;
    struct qstore_space before, full, after;
    struct qstore_newmsg *nm;
    uint64_t ids[8];

    (void)state;
    tdir_make(&d);
    qs = open_store(d.env, 32 << 20, QSTORE_NOSYNC);
    assert_int_equal(qstore_space(qs, &before), 0);
    assert_true(before.map_size == 32 << 20 && before.disk_size > 0 && before.file_size > 0);
    assert_true(qstore_space_capacity(&before) > 29 << 20);
    for (unsigned i = 0; i < 8; i++) {
        nm = make_msg(i, 1, 1 << 20);
        assert_int_equal(qstore_put(qs, nm, &ids[i]), 0);
        qstore_newmsg_free(nm);
    }
    /* 8 MiB stored: the room shrank by as much, the file grew */
    assert_int_equal(qstore_space(qs, &full), 0);
    assert_true(full.file_size >= before.file_size + (8 << 20));
    assert_true(qstore_space_room(&full) + (7 << 20) <= qstore_space_room(&before));
    for (unsigned i = 0; i < 8; i++)
        assert_int_equal(qstore_delete_msg(qs, ids[i]), 0);
    /* deleted: the file keeps its size, but its pages are free for reuse and count as room */
    assert_int_equal(qstore_space(qs, &after), 0);
    assert_true(after.file_size == full.file_size);
    assert_true(after.free_inside >= 7 << 20);
    assert_true(qstore_space_room(&after) + (1 << 20) >= qstore_space_room(&before));
    print_message("# room %" PRIu64 " KiB empty, %" PRIu64 " KiB with 8 MiB queued, %" PRIu64
                  " KiB after their deletion\n",
                  qstore_space_room(&before) >> 10, qstore_space_room(&full) >> 10,
                  qstore_space_room(&after) >> 10);
    qstore_close(qs);
    tdir_remove(&d);
}

/* ---- scanning 100,000 recipients ---------------------------------------------------- */

struct scan_check {
    uint64_t n, last_msgid, queue_bytes;
    uint32_t last_index;
    int order_ok;
};

static int
scan_check_cb(const struct qstore_sched *s, void *arg)
{
    struct scan_check *c = arg;

    if (c->n > 0 &&
        (s->msgid < c->last_msgid || (s->msgid == c->last_msgid && s->index <= c->last_index)))
        c->order_ok = 0;
    if (s->queue_len != strlen(s->queue) || strncmp(s->queue, "d", 1) != 0)
        c->order_ok = 0;
    c->last_msgid = s->msgid;
    c->last_index = s->index;
    c->queue_bytes += s->queue_len;
    c->n++;
    return 0;
}

static int
stop_cb(const struct qstore_sched *s, void *arg)
{
    (void)s;
    return ++*(int *)arg == 10 ? 42 : 0;
}

static void
test_scan_100k(void **state)
{
    enum { MSGS = 1000, RCPTS = 100, PER_TXN = 100 };
    struct tdir d;
    struct qstore *qs;
    struct qstore_scan_stats st;
    struct scan_check c = { .order_ok = 1 };
    double t0, t_fill, t_scan;
    uint64_t id, n = 0;
    int stop = 0;

    (void)state;
    tdir_make(&d);
    qs = open_store(d.env, 512 << 20, QSTORE_NOSYNC);
    t0 = now_ms();
    for (uint64_t seq = 0; seq < MSGS; seq += PER_TXN) {
        struct qstore_wtxn *w;

        assert_int_equal(qstore_wtxn_begin(qs, &w), 0);
        for (uint64_t i = seq; i < seq + PER_TXN; i++) {
            struct qstore_newmsg *nm = make_msg(i, RCPTS, 300);

            assert_int_equal(qstore_wtxn_put(w, nm, &id), 0);
            qstore_newmsg_free(nm);
        }
        assert_int_equal(qstore_wtxn_commit(w), 0);
    }
    t_fill = now_ms() - t0;
    t0 = now_ms();
    assert_int_equal(qstore_scan(qs, scan_check_cb, &c, &st), 0);
    t_scan = now_ms() - t0;
    assert_true(c.n == (uint64_t)MSGS * RCPTS && st.seen == c.n && st.corrupt == 0);
    assert_true(c.order_ok);
    print_message("# scan: %" PRIu64 " recipients in %.1f ms (%.0f ns each); fill took %.0f ms\n",
                  c.n, t_scan, t_scan * 1e6 / (double)c.n, t_fill);
    assert_int_equal(qstore_scan_msg(qs, 500, count_cb, &n, NULL), 0);
    assert_true(n == RCPTS);
    assert_int_equal(qstore_scan(qs, stop_cb, &stop, NULL), 42); /* callback stops it */
    qstore_close(qs);
    tdir_remove(&d);
}

/* ---- crash safety --------------------------------------------------------------------- */

struct child {
    uv_loop_t loop;
    struct qstore_group *g;
    int fd;
    uint64_t seq;
    unsigned inflight;
};

struct child_op {
    struct child *c;
    uint64_t seq;
};

static void child_submit(struct child *c);

static void
child_ack(void *arg, int status, uint64_t msgid)
{
    struct child_op *op = arg;
    struct child *c = op->c;
    uint64_t rec[2] = { op->seq, msgid };

    if (status != 0)
        _exit(3);
    /* written only now: the commit is durable */
    if (write(c->fd, rec, sizeof rec) != (ssize_t)sizeof rec)
        _exit(4);
    free(op);
    c->inflight--;
    child_submit(c);
}

static void
child_submit(struct child *c)
{
    while (c->inflight < 24) {
        struct child_op *op = xmalloc(sizeof *op);

        op->c = c;
        op->seq = c->seq++;
        if (qstore_group_submit(c->g, make_msg(op->seq, seq_nrcpt(op->seq), seq_len(op->seq)),
                                child_ack, op) != 0)
            _exit(5);
        c->inflight++;
    }
}

/* child_main - open the env after fork, as LMDB requires, and commit forever */
static void
child_main(const char *dir, int fd)
{
    struct child c = { .fd = fd };
    struct qstore *qs;
    struct qstore_opts o = { .map_size = (size_t)1 << 30 };

    if (qstore_open(&qs, dir, &o) != 0 || uv_loop_init(&c.loop) != 0 ||
        qstore_group_new(&c.g, &c.loop, qs, NULL) != 0)
        _exit(2);
    child_submit(&c);
    uv_run(&c.loop, UV_RUN_DEFAULT);
    _exit(6);
}

struct acked {
    uint64_t (*rec)[2];
    size_t n, cap;
};

static int
read_acks(int fd, struct acked *a, size_t want)
{
    uint64_t rec[2];

    while (a->n < want || want == 0) {
        ssize_t r = read(fd, rec, sizeof rec);

        if (r == 0)
            return 0;
        if (r != (ssize_t)sizeof rec)
            return -1;
        if (a->n == a->cap) {
            a->cap = a->cap ? a->cap * 2 : 256;
            a->rec = xreallocarray(a->rec, a->cap, sizeof *a->rec);
        }
        a->rec[a->n][0] = rec[0];
        a->rec[a->n][1] = rec[1];
        a->n++;
    }
    return 0;
}

struct store_walk {
    uint64_t msgs, rcpts, last;
    uint64_t *ids;
    size_t nids, cap;
};

static int
collect_ids(const struct qstore_sched *s, void *arg)
{
    struct store_walk *w = arg;

    w->rcpts++;
    if (w->nids == 0 || s->msgid != w->last) {
        if (w->nids == w->cap) {
            w->cap = w->cap ? w->cap * 2 : 256;
            w->ids = xreallocarray(w->ids, w->cap, sizeof *w->ids);
        }
        w->ids[w->nids++] = w->last = s->msgid;
    }
    return 0;
}

/* seq_of - the seq a stored message was built from ("seq-N" job id) */
static uint64_t
seq_of(const struct qstore_msg *m)
{
    return strtoull(m->env.job_id + 4, NULL, 10);
}

/* verify_store - every message whole, no orphans, every acknowledged one present */
static void
verify_store(const char *dir, const struct acked *a)
{
    struct qstore *qs = open_store(dir, (size_t)1 << 30, 0);
    struct store_walk w = { 0 };
    struct qstore_info info;
    uint64_t chunks = 0;

    for (size_t i = 0; i < a->n; i++) {
        struct qstore_msg *m;

        assert_int_equal(qstore_read_msg(qs, a->rec[i][1], QSTORE_READ_BODY, &m), 0);
        assert_true(check_msg(m, a->rec[i][0], seq_nrcpt(a->rec[i][0]), seq_len(a->rec[i][0])));
        qstore_msg_free(m);
    }
    assert_int_equal(qstore_scan(qs, collect_ids, &w, NULL), 0);
    for (size_t i = 0; i < w.nids; i++) {
        struct qstore_msg *m;
        uint64_t seq;

        assert_int_equal(qstore_read_msg(qs, w.ids[i], QSTORE_READ_BODY, &m), 0);
        seq = seq_of(m);
        assert_true(check_msg(m, seq, seq_nrcpt(seq), seq_len(seq)));
        chunks += m->env.nchunks;
        qstore_msg_free(m);
    }
    /* the counts tie up: no msg without rcpts, no rcpt or chunk without its msg */
    assert_int_equal(qstore_info(qs, &info), 0);
    assert_true(info.messages == w.nids);
    assert_true(info.recipients == w.rcpts);
    assert_true(info.chunks == chunks);
    assert_true(w.nids >= a->n);
    print_message("# crash: %zu acknowledged, %zu stored (unacknowledged but committed: %zu)\n",
                  a->n, w.nids, w.nids - a->n);
    free(w.ids);
    /* the writer lock the dead child may have held is recovered: writes work */
    {
        struct qstore_newmsg *nm = make_msg(777777, 2, 100);
        struct qstore_msg *m;
        uint64_t id;

        assert_int_equal(qstore_put(qs, nm, &id), 0);
        qstore_newmsg_free(nm);
        assert_true(id > w.last);
        assert_int_equal(qstore_read_msg(qs, id, QSTORE_READ_BODY, &m), 0);
        assert_true(check_msg(m, 777777, 2, 100));
        qstore_msg_free(m);
    }
    qstore_close(qs);
}

static void
crash_round(unsigned seed)
{
    struct tdir d;
    struct acked a = { 0 };
    int fds[2], status;
    pid_t pid;

    tdir_make(&d);
    assert_int_equal(pipe(fds), 0);
    fflush(stdout);
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(fds[0]);
        child_main(d.env, fds[1]);
    }
    close(fds[1]);
    /* let it get going, then kill it at a random moment */
    assert_int_equal(read_acks(fds[0], &a, 10 + seed % 40), 0);
    usleep((useconds_t)(rand_r(&seed) % 150000));
    assert_int_equal(kill(pid, SIGKILL), 0);
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
    assert_int_equal(read_acks(fds[0], &a, 0), 0); /* acks already in the pipe */
    close(fds[0]);
    verify_store(d.env, &a);
    free(a.rec);
    tdir_remove(&d);
}

static void
test_crash_kill(void **state)
{
    unsigned seed = (unsigned)time(NULL) ^ (unsigned)getpid();

    (void)state;
    print_message("# crash seed %u\n", seed);
    for (unsigned round = 0; round < 3; round++)
        crash_round(seed + round * 7919);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        UNIT_TEST(test_codec_roundtrip),    UNIT_TEST(test_codec_limits),
        UNIT_TEST(test_codec_corrupt),      UNIT_TEST(test_corrupt_in_store),
        UNIT_TEST(test_put_read_roundtrip), UNIT_TEST(test_qid_patch),
        UNIT_TEST(test_group_groups),       UNIT_TEST(test_group_paced),
        UNIT_TEST(test_group_lazy),         UNIT_TEST(test_outcomes),
        UNIT_TEST(test_map_full),           UNIT_TEST(test_space_arithmetic),
        UNIT_TEST(test_space_sampled),      UNIT_TEST(test_scan_100k),
        UNIT_TEST(test_crash_kill),         UNIT_TEST(test_warmup_codec),
        UNIT_TEST(test_warmup_store),       UNIT_TEST(test_warmup_older_spool),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
