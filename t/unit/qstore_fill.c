/*
 * qstore_fill - put N messages straight into a queue store (tests, benchmarks)
 *
 *   qstore_fill [-n MESSAGES] [-r RCPTS] [-q QUEUES] [-d PREFIX] [-v VMTA]
 *               [-s SENDER] [-a AGE] [-N] DIR
 *
 * Message i gets RCPTS recipients "u<i>.<j>@DOMAIN", all in one queue:
 * DOMAIN is "PREFIX.test" when QUEUES is 1, else "PREFIX<i % QUEUES>.test",
 * and the queue is "DOMAIN/VMTA" (VMTA defaults to {default}). AGE (seconds)
 * backdates queued_at. Messages are written 1,000 to a transaction; -N skips
 * the syncs (benchmarks). Prints the first and last message id.
 *
 * Owns: nothing beyond its run. SECURITY: a test tool; never installed.
 */
#include "config.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "buf.h"
#include "msg.h"
#include "qstore.h"
#include "xalloc.h"

#define PER_TXN 1000

struct fill_opts {
    unsigned long messages, rcpts, queues;
    const char *prefix, *vmta, *sender;
    long age;
    int nosync;
};

static void
domain_of(const struct fill_opts *o, unsigned long i, char *out, size_t outsize)
{
    if (o->queues <= 1)
        snprintf(out, outsize, "%s.test", o->prefix);
    else
        snprintf(out, outsize, "%s%lu.test", o->prefix, i % o->queues);
}

/* new_message - message I as a qstore_newmsg */
static struct qstore_newmsg *
new_message(const struct fill_opts *o, unsigned long i)
{
    struct qstore_envelope env = { 0 };
    struct qstore_rcpt *r = xcalloc(o->rcpts, sizeof(*r));
    char **addr = xcalloc(o->rcpts, sizeof(*addr));
    char domain[256], queue[512];
    struct buf body = BUF_INIT;
    struct qstore_newmsg *nm;
    int err;

    domain_of(o, i, domain, sizeof(domain));
    snprintf(queue, sizeof(queue), "%s/%s", domain, o->vmta);
    buf_printf(&body, "From: <%s>\r\nTo: <u%lu@%s>\r\nSubject: fill %lu\r\n\r\nbody %lu\r\n",
               o->sender, i, domain, i, i);
    env.sender = o->sender;
    env.vmta = strcmp(o->vmta, "{default}") ? o->vmta : "";
    env.client_ip = "127.0.0.1";
    env.client_helo = "fill.test";
    env.queued_at = (uint64_t)(time(NULL) - o->age);
    for (unsigned long j = 0; j < o->rcpts; j++) {
        addr[j] = xasprintf("u%lu.%lu@%s", i, j, domain);
        r[j].queue = queue;
        r[j].address = addr[j];
        r[j].domain = domain;
    }
    if ((err = qstore_newmsg_create(&nm, &env, r, o->rcpts, &body)) < 0)
        msg_fatal("cannot build message %lu: %s", i, qstore_strerror(err));
    for (unsigned long j = 0; j < o->rcpts; j++)
        free(addr[j]);
    free(addr);
    free(r);
    buf_free(&body);
    return nm;
}

static void
fill(struct qstore *qs, const struct fill_opts *o)
{
    uint64_t first = 0, id = 0;
    unsigned long i = 0;
    int err;

    while (i < o->messages) {
        struct qstore_wtxn *w;
        if ((err = qstore_wtxn_begin(qs, &w)) < 0)
            msg_fatal("cannot begin: %s", qstore_strerror(err));
        for (unsigned n = 0; n < PER_TXN && i < o->messages; n++, i++) {
            struct qstore_newmsg *nm = new_message(o, i);
            if ((err = qstore_wtxn_put(w, nm, &id)) < 0)
                msg_fatal("cannot store message %lu: %s", i, qstore_strerror(err));
            if (!first)
                first = id;
            qstore_newmsg_free(nm);
        }
        if ((err = qstore_wtxn_commit(w)) < 0)
            msg_fatal("cannot commit: %s", qstore_strerror(err));
    }
    printf("%" PRIu64 " %" PRIu64 "\n", first, id);
}

int
main(int argc, char **argv)
{
    struct fill_opts o = { 1, 1, 1, "fill", "{default}", "sender@origin.test", 0, 0 };
    struct qstore_opts qo = { 0 };
    struct qstore *qs;
    int c, err;

    msg_init("qstore_fill");
    while ((c = getopt(argc, argv, "n:r:q:d:v:s:a:N")) != -1) {
        switch (c) {
        case 'n':
            o.messages = strtoul(optarg, NULL, 10);
            break;
        case 'r':
            o.rcpts = strtoul(optarg, NULL, 10);
            break;
        case 'q':
            o.queues = strtoul(optarg, NULL, 10);
            break;
        case 'd':
            o.prefix = optarg;
            break;
        case 'v':
            o.vmta = optarg;
            break;
        case 's':
            o.sender = optarg;
            break;
        case 'a':
            o.age = strtol(optarg, NULL, 10);
            break;
        case 'N':
            o.nosync = 1;
            break;
        default:
            fprintf(stderr, "usage: qstore_fill [-n N] [-r R] [-q Q] [-d PREFIX] [-v VMTA] "
                            "[-s SENDER] [-a AGE] [-N] DIR\n");
            return 2;
        }
    }
    if (optind + 1 != argc || o.rcpts == 0)
        return 2;
    qo.flags = o.nosync ? QSTORE_NOSYNC : 0;
    qo.map_size = (size_t)4 << 30;
    if ((err = qstore_open(&qs, argv[optind], &qo)) < 0)
        msg_fatal("cannot open %s: %s", argv[optind], qstore_strerror(err));
    fill(qs, &o);
    if (o.nosync)
        qstore_sync(qs);
    qstore_close(qs);
    return 0;
}
