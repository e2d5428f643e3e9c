/*
 * dkim_sign_tool.c - test driver: cleanup_message + cleanup_dkim on stdin
 *
 * Reads one message on stdin, applies cleanup_message_parse/apply and
 * cleanup_dkim_sign with the options below, writes the final message on
 * stdout and one "info: key=value" line per result on stderr. Used by
 * t/integration/test_dkim.py; it is a check program, not a test.
 *
 *   -k SEL,DOMAIN,PATH  domain-key, repeatable, scanned in order ("*" domain ok)
 *   -H LIST   dkim-headers          -c HDR/BODY  canonicalisation (relaxed|simple)
 *   -i ADDR   dkim-identity (forced) -F ADDR     identity fallback
 *   -R yes|no|hide   Received header (hide = hide-message-source)
 *   -e HELO -a IP -u AUTHUSER -t TLS -n HOSTNAME -q QUEUEID -r RCPT -p PROTOCOL
 *   -M   add-message-id-header      -D no|yes|override   add-date-header
 *   -x LETTERS  process X-* (v=X-Virtual-MTA j=X-Job e=X-EnvID)
 *   -X LETTERS  retain X-* (same letters)     -J HDR  jobid-header
 *   -T SECONDS  fixed "now" (tests)          -L N    max header fields
 *   -A ALGS  dkim-algorithm (e.g. "ed25519-sha256,rsa-sha256")
 *   -N COUNT sign COUNT copies at once on the libuv thread pool, as cleanup
 *            does (prepare and finish on the loop, run on pool threads);
 *            the last copy is written
 *
 * Info lines: signed=yes|no, signatures=N (on the message written), and the
 * signer's counters keys-parsed, signatures-made, key-reuses.
 *
 * Exit: 0 done (signed or not), 2 usage, 3 message refused, 4 key error,
 * 5 signing error.
 *
 * SECURITY: test-only; reads whatever it is given, bounded by the library.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <uv.h>

#include "buf.h"
#include "msg.h"
#include "xalloc.h"

#include "cleanup_dkim.h"
#include "cleanup_message.h"

struct tool {
    struct cleanup_opts copts;
    struct cleanup_client client;
    struct cleanup_dkim_opts dopts;
    struct cleanup_limits limits;
    time_t now;
    struct cleanup_dkim *dk;
    struct cleanup_dkim_keylist *keys;
    unsigned copies;
};

/* One copy signed on the thread pool. */
struct copy {
    uv_work_t req;
    struct tool *t;
    struct cleanup_message *msg;
    struct cleanup_dkim_job *job;
    int result; /* signatures prepended, or -EIO */
    char err[CLEANUP_ERRLEN];
};

static _Noreturn void
usage(void)
{
    fprintf(stderr, "usage: dkim_sign_tool [-k SEL,DOMAIN,PATH]... [options] <msg >out\n");
    exit(2);
}

static enum cleanup_dkim_canon
parse_canon(const char *s)
{
    if (strcmp(s, "simple") == 0)
        return CLEANUP_DKIM_SIMPLE;
    if (strcmp(s, "relaxed") == 0)
        return CLEANUP_DKIM_RELAXED;
    usage();
}

static void
set_canon(struct tool *t, const char *arg)
{
    char *copy = xstrdup(arg), *slash = strchr(copy, '/');

    if (slash)
        *slash++ = '\0';
    t->dopts.header_canon = parse_canon(copy);
    t->dopts.body_canon = parse_canon(slash ? slash : copy);
    free(copy);
}

static void
set_xflags(struct tool *t, const char *letters, int retain)
{
    for (; *letters; letters++) {
        int *v = *letters == 'v'
                     ? (retain ? &t->copts.retain_x_virtual_mta : &t->copts.process_x_virtual_mta)
                 : *letters == 'j' ? (retain ? &t->copts.retain_x_job : &t->copts.process_x_job)
                 : *letters == 'e' ? (retain ? &t->copts.retain_x_envid : &t->copts.process_x_envid)
                                   : NULL;

        if (v == NULL)
            usage();
        *v = 1;
    }
}

static int
add_key(struct tool *t, const char *arg)
{
    char *copy = xstrdup(arg), *dom, *path, err[CLEANUP_ERRLEN];

    if ((dom = strchr(copy, ',')) == NULL || (path = strchr(dom + 1, ',')) == NULL)
        usage();
    *dom++ = '\0';
    *path++ = '\0';
    if (cleanup_dkim_keylist_add(t->dk, t->keys, copy, dom, path, err, sizeof(err)) < 0) {
        fprintf(stderr, "error: %s\n", err);
        free(copy);
        return 4;
    }
    free(copy);
    return 0;
}

static void
set_received(struct tool *t, const char *arg)
{
    t->copts.add_received = strcmp(arg, "no") != 0;
    t->copts.hide_source = strcmp(arg, "hide") == 0;
}

static void
set_date(struct tool *t, const char *arg)
{
    t->copts.add_date = strcmp(arg, "override") == 0 ? CLEANUP_DATE_OVERRIDE
                        : strcmp(arg, "yes") == 0    ? CLEANUP_DATE_YES
                                                     : CLEANUP_DATE_NO;
}

/* parse_args - 0, or the exit code of a key error */
static int
parse_args(struct tool *t, int argc, char **argv)
{
    int c, rc = 0;

    while ((c = getopt(argc, argv, "k:H:c:i:F:R:e:a:u:t:n:q:r:p:MD:x:X:J:T:L:A:N:")) != -1) {
        switch (c) {
        case 'A': {
            char why[200];
            int n = cfg_dkim_algorithms(optarg, t->dopts.algs, why, sizeof why);

            if (n < 0) {
                fprintf(stderr, "error: %s\n", why);
                return 2;
            }
            t->dopts.nalgs = (size_t)n;
            break;
        }
        case 'N':
            t->copies = (unsigned)strtoul(optarg, NULL, 10);
            break;
        case 'k':
            rc = rc ? rc : add_key(t, optarg);
            break;
        case 'H':
            t->dopts.headers = optarg;
            break;
        case 'c':
            set_canon(t, optarg);
            break;
        case 'i':
            t->dopts.identity = optarg;
            break;
        case 'F':
            t->dopts.fallback_identity = optarg;
            break;
        case 'R':
            set_received(t, optarg);
            break;
        case 'e':
            t->client.helo = optarg;
            break;
        case 'a':
            t->client.addr = optarg;
            break;
        case 'u':
            t->client.auth_user = optarg;
            break;
        case 't':
            t->client.tls = optarg;
            break;
        case 'n':
            t->client.host_name = optarg;
            break;
        case 'q':
            t->client.queue_id = optarg;
            break;
        case 'r':
            t->client.rcpt = optarg;
            break;
        case 'p':
            t->client.protocol = optarg;
            break;
        case 'M':
            t->copts.add_message_id = 1;
            break;
        case 'D':
            set_date(t, optarg);
            break;
        case 'x':
            set_xflags(t, optarg, 0);
            break;
        case 'X':
            set_xflags(t, optarg, 1);
            break;
        case 'J':
            t->copts.jobid_header = optarg;
            break;
        case 'T':
            t->now = (time_t)strtoll(optarg, NULL, 10);
            break;
        case 'L':
            t->limits.max_headers = strtoul(optarg, NULL, 10);
            break;
        default:
            usage();
        }
    }
    if (optind != argc)
        usage();
    return rc;
}

/* read_stdin - the whole of standard input */
static void
read_stdin(struct buf *in)
{
    char chunk[65536];
    size_t n;

    while ((n = fread(chunk, 1, sizeof(chunk), stdin)) > 0)
        if (buf_append(in, chunk, n) < 0)
            msg_fatal("input too large");
}

static void
report(const struct cleanup_message *msg, int signed_it)
{
    fprintf(stderr, "info: signed=%s\n", signed_it ? "yes" : "no");
    fprintf(stderr, "info: virtual-mta=%s\n", msg->virtual_mta ? msg->virtual_mta : "(none)");
    fprintf(stderr, "info: job-id=%s\n", msg->job_id ? msg->job_id : "(none)");
    fprintf(stderr, "info: envid=%s\n", msg->envid ? msg->envid : "(none)");
    fprintf(stderr, "info: bad-job-id=%d\n", msg->bad_job_id);
    fprintf(stderr, "info: 8bit=%d\n", msg->head_8bit || msg->body_8bit);
}

static void
copy_work(uv_work_t *req)
{
    struct copy *c = req->data;

    cleanup_dkim_run(c->job, c->msg);
}

static void
copy_done(uv_work_t *req, int status)
{
    struct copy *c = req->data;

    c->result = status == 0 ? cleanup_dkim_finish(c->job, c->msg, c->err, sizeof c->err) : -EIO;
}

/* sign_copies - T->copies fresh parses of IN signed at once; the last one's result in *MSGP */
static int
sign_copies(struct tool *t, const struct buf *in, struct cleanup_message **msgp, char *err,
            size_t errlen)
{
    const struct cleanup_dkim_keylist *lists[1] = { t->keys };
    struct copy *c = xcalloc(t->copies, sizeof(*c));
    int r = 0;

    for (unsigned i = 0; i < t->copies; i++) {
        if (cleanup_message_parse(in->data, in->len, &t->limits, &c[i].msg, err, errlen) < 0)
            msg_fatal("%s", err);
        cleanup_message_apply(c[i].msg, &t->copts, &t->client, t->now);
        c[i].req.data = &c[i];
        if (cleanup_dkim_prepare(t->dk, c[i].msg, lists, 1, &t->dopts, &c[i].job) == 1 &&
            uv_queue_work(uv_default_loop(), &c[i].req, copy_work, copy_done) != 0)
            msg_fatal("uv_queue_work failed");
    }
    uv_run(uv_default_loop(), UV_RUN_DEFAULT);
    for (unsigned i = 0; i < t->copies; i++) {
        if (c[i].result < 0 && r >= 0) {
            snprintf(err, errlen, "%s", c[i].err);
            r = c[i].result;
        } else if (r >= 0) {
            r = c[i].result;
        }
        cleanup_dkim_job_free(c[i].job);
        if (i + 1 < t->copies)
            cleanup_message_free(c[i].msg);
    }
    *msgp = c[t->copies - 1].msg;
    free(c);
    return r;
}

/* sign_and_write - the signing half; returns the exit code */
static int
sign_and_write(struct tool *t, const struct buf *in, struct cleanup_message *msg)
{
    const struct cleanup_dkim_keylist *lists[1] = { t->keys };
    struct cleanup_dkim_stats st;
    char err[CLEANUP_ERRLEN];
    struct buf out;
    int r;

    if (t->copies > 1) {
        cleanup_message_free(msg);
        r = sign_copies(t, in, &msg, err, sizeof err);
    } else {
        r = cleanup_dkim_sign(t->dk, msg, lists, 1, &t->dopts, err, sizeof(err));
    }
    cleanup_dkim_stats(t->dk, &st);
    fprintf(stderr, "info: keys-parsed=%llu\ninfo: signatures-made=%llu\ninfo: key-reuses=%llu\n",
            (unsigned long long)st.keys_parsed, (unsigned long long)st.signatures,
            (unsigned long long)st.key_reuses);
    if (r < 0) {
        fprintf(stderr, "error: %s\n", err);
        if (t->copies > 1)
            cleanup_message_free(msg);
        return 5;
    }
    fprintf(stderr, "info: signatures=%d\n", r);
    report(msg, r > 0);
    buf_init(&out, 0);
    cleanup_message_render(msg, &out);
    fwrite(out.data, 1, out.len, stdout);
    buf_free(&out);
    if (t->copies > 1)
        cleanup_message_free(msg);
    return 0;
}

int
main(int argc, char **argv)
{
    struct tool t;
    struct cleanup_message *msg;
    struct buf in;
    char err[CLEANUP_ERRLEN];
    int rc;

    msg_init("dkim_sign_tool");
    memset(&t, 0, sizeof(t));
    cleanup_opts_default(&t.copts);
    t.client.host_name = "mta.test.invalid";
    t.now = time(NULL);
    if ((t.dk = cleanup_dkim_create(err, sizeof(err))) == NULL)
        msg_fatal("%s", err);
    t.keys = cleanup_dkim_keylist_create();
    buf_init(&in, 0);
    if ((rc = parse_args(&t, argc, argv)) != 0)
        goto out;
    read_stdin(&in);
    if (cleanup_message_parse(in.data, in.len, &t.limits, &msg, err, sizeof(err)) < 0) {
        fprintf(stderr, "error: %s\n", err);
        rc = 3;
    } else {
        cleanup_message_apply(msg, &t.copts, &t.client, t.now);
        rc = sign_and_write(&t, &in, msg);
        if (t.copies <= 1)
            cleanup_message_free(msg);
    }
out:
    buf_free(&in);
    cleanup_dkim_keylist_free(t.keys);
    cleanup_dkim_free(t.dk);
    uv_loop_close(uv_default_loop());
    return rc;
}
