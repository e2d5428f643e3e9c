/*
 * smtpout_tool.c - deliver message files through the smtp-out library
 *
 * A check program for t/integration/test_smtpout.py: runs one delivery job
 * (smtpout_deliver) on a libuv loop with its own resolver and prints one
 * JSON line per connection event and per recipient result, then {"event":
 * "done"}. Every --message is one transaction to all --to recipients, on
 * the same connection when possible.
 *
 *   smtpout_tool --dns 127.0.0.1:5353 --source 127.0.0.10 --helo mta.test \
 *       --from a@x.test --to ok1@example.test --message FILE [options]
 *
 * Options: --domain D (default: first recipient's domain), --smtp-hosts S,
 * --port N, --starttls no|yes|require, --connect-timeout-ms, --greeting-
 * timeout-ms, --command-timeout-ms, --data-timeout-ms, --dot-timeout-ms,
 * --dns-timeout-ms, --ignore-pipelining, --ignore-8bitmime, --ignore-dsn,
 * --bounce-upon-no-mx, --no-bounce-upon-5xx-greeting, --mx-attempts N,
 * --8bit yes|no|auto, --smtputf8, --ret full|hdrs, --envid X, --notify LIST,
 * --orcpt, --smtp-421-means-mx-unavailable, --repeat N (run the job N times with one resolver:
 * exercises the DNS cache).
 *
 * Owns: everything it creates; closes every handle and checks that the loop
 * closes cleanly (so AddressSanitizer runs catch leaks).
 * SECURITY: test tool; input comes from the test.
 */
#include "config.h"

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>

#include <jansson.h>

#include "buf.h"
#include "msg.h"
#include "xalloc.h"
#include "smtpout_deliver.h"

struct tool {
    const char **rcpts;
    size_t nrcpts;
    struct smtpout_job job;
    uv_loop_t *loop;
    struct mxdns *dns;
    unsigned runs_left; /* --repeat: run the job again, same resolver */
};

static const struct smtpout_job_callbacks job_callbacks;

static void
print_json(json_t *obj)
{
    char *text = json_dumps(obj, JSON_COMPACT | JSON_ENSURE_ASCII);

    printf("%s\n", text);
    fflush(stdout);
    free(text);
    json_decref(obj);
}

static void
add_reply(json_t *o, const struct smtpout_reply *r)
{
    if (r == NULL)
        return;
    json_object_set_new(o, "code", json_integer(r->code));
    json_object_set_new(o, "status", json_string(r->status));
    json_object_set_new(o, "class", json_string(smtpout_class_name(r->cls)));
    json_object_set_new(o, "stage", json_string(smtpout_stage_name(r->stage)));
    json_object_set_new(o, "text", json_string(r->text));
}

static json_t *
caps_json(unsigned caps)
{
    json_t *a = json_array();

    for (unsigned bit = SMTPOUT_CAP_PIPELINING; bit <= SMTPOUT_CAP_DSN; bit <<= 1)
        if (caps & bit)
            json_array_append_new(a, json_string(smtpout_cap_name(bit)));
    return a;
}

static void
on_event(void *arg, const struct smtpout_event *ev)
{
    static const char *const names[] = {
        "resolved", "connecting", "connected", "tls", "ready", "transaction", "closed",
    };
    json_t *o = json_object();

    (void)arg;
    json_object_set_new(o, "event", json_string(names[ev->type]));
    switch (ev->type) {
    case SMTPOUT_EV_RESOLVED:
        json_object_set_new(o, "ndests", json_integer((json_int_t)ev->ndests));
        break;
    case SMTPOUT_EV_CONNECTED:
        json_object_set_new(o, "source", json_string(ev->source_ip));
        /* fall through */
    case SMTPOUT_EV_CONNECTING:
        json_object_set_new(o, "mx", json_string(ev->mx_name));
        json_object_set_new(o, "ip", json_string(ev->dest_ip));
        json_object_set_new(o, "port", json_integer(ev->port));
        break;
    case SMTPOUT_EV_TLS:
        json_object_set_new(o, "protocol", json_string(ev->tls_protocol));
        json_object_set_new(o, "cipher", json_string(ev->tls_cipher));
        break;
    case SMTPOUT_EV_READY:
        json_object_set_new(o, "caps", caps_json(ev->caps));
        break;
    case SMTPOUT_EV_TRANSACTION:
        json_object_set_new(o, "msg", json_integer((json_int_t)ev->msg_index));
        break;
    case SMTPOUT_EV_CLOSED:
        json_object_set_new(o, "mx", json_string(ev->mx_name));
        json_object_set_new(o, "ip", json_string(ev->dest_ip));
        break;
    }
    add_reply(o, ev->reply);
    print_json(o);
}

static void
on_rcpt(void *arg, size_t msg_index, size_t rcpt_index, const struct smtpout_reply *r,
        const char *mx_name, const char *dest_ip)
{
    struct tool *t = arg;
    json_t *o = json_object();

    json_object_set_new(o, "event", json_string("rcpt"));
    json_object_set_new(o, "msg", json_integer((json_int_t)msg_index));
    json_object_set_new(o, "index", json_integer((json_int_t)rcpt_index));
    json_object_set_new(o, "rcpt", json_string(t->job.msgs[msg_index].rcpts[rcpt_index].addr));
    json_object_set_new(o, "mx", json_string(mx_name));
    json_object_set_new(o, "ip", json_string(dest_ip));
    add_reply(o, r);
    print_json(o);
}

static void
on_done(void *arg)
{
    struct tool *t = arg;
    json_t *o = json_object();

    json_object_set_new(o, "event", json_string("done"));
    print_json(o);
    if (--t->runs_left > 0) {
        smtpout_job_start(t->loop, t->dns, &t->job, &job_callbacks, t);
        return;
    }
    /* The resolver may keep idle sockets watched: stop the loop here. */
    uv_stop(t->loop);
}

static const struct smtpout_job_callbacks job_callbacks = { on_event, on_rcpt, on_done };

static char *
read_file(const char *path, size_t *lenp)
{
    FILE *fp = fopen(path, "rb");
    struct buf b;
    char chunk[65536];
    size_t n;

    if (fp == NULL)
        msg_fatal("open %s: %m", path);
    buf_init(&b, 0);
    while ((n = fread(chunk, 1, sizeof chunk, fp)) > 0)
        if (buf_append(&b, chunk, n) < 0)
            msg_fatal("%s: too large", path);
    fclose(fp);
    if (b.data == NULL)
        buf_append(&b, "", 0);
    return buf_detach(&b, lenp);
}

static int
has_8bit(const char *p, size_t len)
{
    size_t i;

    for (i = 0; i < len; i++)
        if ((unsigned char)p[i] >= 0x80)
            return 1;
    return 0;
}

static unsigned
parse_notify(const char *s)
{
    unsigned v = 0;

    if (strstr(s, "NEVER"))
        v |= SMTPOUT_NOTIFY_NEVER;
    if (strstr(s, "SUCCESS"))
        v |= SMTPOUT_NOTIFY_SUCCESS;
    if (strstr(s, "FAILURE"))
        v |= SMTPOUT_NOTIFY_FAILURE;
    if (strstr(s, "DELAY"))
        v |= SMTPOUT_NOTIFY_DELAY;
    return v;
}

static void
usage(void)
{
    fprintf(stderr, "usage: smtpout_tool --dns IP[:PORT] [--source IP] --helo NAME --from ADDR"
                    " --to ADDR... --message FILE... [options]\n");
    exit(2);
}

enum {
    O_DNS = 256,
    O_SOURCE,
    O_HELO,
    O_FROM,
    O_TO,
    O_MESSAGE,
    O_DOMAIN,
    O_HOSTS,
    O_PORT,
    O_STARTTLS,
    O_CONNECT_T,
    O_GREETING_T,
    O_COMMAND_T,
    O_DATA_T,
    O_DOT_T,
    O_DNS_T,
    O_IGN_PIPE,
    O_IGN_8BIT,
    O_IGN_DSN,
    O_NO_MX,
    O_NO_5XX,
    O_ATTEMPTS,
    O_8BIT,
    O_UTF8,
    O_RET,
    O_ENVID,
    O_NOTIFY,
    O_ORCPT,
    O_REPEAT,
    O_421,
};

static const struct option options[] = {
    { "dns", 1, 0, O_DNS },
    { "source", 1, 0, O_SOURCE },
    { "helo", 1, 0, O_HELO },
    { "from", 1, 0, O_FROM },
    { "to", 1, 0, O_TO },
    { "message", 1, 0, O_MESSAGE },
    { "domain", 1, 0, O_DOMAIN },
    { "smtp-hosts", 1, 0, O_HOSTS },
    { "port", 1, 0, O_PORT },
    { "starttls", 1, 0, O_STARTTLS },
    { "connect-timeout-ms", 1, 0, O_CONNECT_T },
    { "greeting-timeout-ms", 1, 0, O_GREETING_T },
    { "command-timeout-ms", 1, 0, O_COMMAND_T },
    { "data-timeout-ms", 1, 0, O_DATA_T },
    { "dot-timeout-ms", 1, 0, O_DOT_T },
    { "dns-timeout-ms", 1, 0, O_DNS_T },
    { "ignore-pipelining", 0, 0, O_IGN_PIPE },
    { "ignore-8bitmime", 0, 0, O_IGN_8BIT },
    { "ignore-dsn", 0, 0, O_IGN_DSN },
    { "bounce-upon-no-mx", 0, 0, O_NO_MX },
    { "no-bounce-upon-5xx-greeting", 0, 0, O_NO_5XX },
    { "mx-attempts", 1, 0, O_ATTEMPTS },
    { "8bit", 1, 0, O_8BIT },
    { "smtputf8", 0, 0, O_UTF8 },
    { "ret", 1, 0, O_RET },
    { "envid", 1, 0, O_ENVID },
    { "notify", 1, 0, O_NOTIFY },
    { "orcpt", 0, 0, O_ORCPT },
    { "repeat", 1, 0, O_REPEAT },
    { "smtp-421-means-mx-unavailable", 0, 0, O_421 },
    { 0, 0, 0, 0 },
};

int
main(int argc, char **argv)
{
    struct tool t;
    struct smtpout_job *job = &t.job;
    struct mxdns_options dopts = { .timeout_ms = 2000, .tries = 1, .cache_max_ttl = 300 };
    const char *from = NULL, *domain = NULL, *hosts = NULL, *eightbit = "auto";
    const char **files = NULL, *envid = NULL;
    size_t nfiles = 0, i;
    char **data;
    size_t *lens;
    struct sockaddr_storage source;
    int have_source = 0, smtputf8 = 0, orcpt = 0, opt;
    unsigned notify = 0;
    enum smtpout_ret ret = SMTPOUT_RET_NONE;
    struct cfg_route *route = NULL;
    struct mxdns *dns;
    struct smtpout_message *msgs;
    struct smtpout_rcpt *rcpts;
    uv_loop_t loop;
    char err[200];

    msg_init("smtpout_tool");
    msg_also_stderr(1);
    memset(&t, 0, sizeof t);
    t.runs_left = 1;
    job->session.tls = SMTPOUT_TLS_OPPORTUNISTIC;
    job->session.helo_name = "localhost";
    job->session.connect_timeout_ms = 120000;
    job->session.greeting_timeout_ms = 300000;
    job->session.command_timeout_ms = 300000;
    job->session.data_send_timeout_ms = 180000;
    job->session.data_term_timeout_ms = 600000;
    job->bounce_upon_5xx_greeting = 1;
    while ((opt = getopt_long(argc, argv, "", options, NULL)) != -1) {
        switch (opt) {
        case O_DNS:
            dopts.name_servers = optarg;
            break;
        case O_SOURCE:
            memset(&source, 0, sizeof source);
            if (inet_pton(AF_INET, optarg, &((struct sockaddr_in *)&source)->sin_addr) == 1)
                source.ss_family = AF_INET;
            else if (inet_pton(AF_INET6, optarg, &((struct sockaddr_in6 *)&source)->sin6_addr) == 1)
                source.ss_family = AF_INET6;
            else
                usage();
            have_source = 1;
            break;
        case O_HELO:
            job->session.helo_name = optarg;
            break;
        case O_FROM:
            from = optarg;
            break;
        case O_TO:
            t.rcpts = xreallocarray(t.rcpts, t.nrcpts + 1, sizeof *t.rcpts);
            t.rcpts[t.nrcpts++] = optarg;
            break;
        case O_MESSAGE:
            files = xreallocarray(files, nfiles + 1, sizeof *files);
            files[nfiles++] = optarg;
            break;
        case O_DOMAIN:
            domain = optarg;
            break;
        case O_HOSTS:
            hosts = optarg;
            break;
        case O_PORT:
            job->default_port = (uint16_t)atoi(optarg);
            break;
        case O_STARTTLS:
            job->session.tls = strcmp(optarg, "no") == 0        ? SMTPOUT_TLS_OFF
                               : strcmp(optarg, "require") == 0 ? SMTPOUT_TLS_REQUIRED
                                                                : SMTPOUT_TLS_OPPORTUNISTIC;
            break;
        case O_CONNECT_T:
            job->session.connect_timeout_ms = (unsigned)atoi(optarg);
            break;
        case O_GREETING_T:
            job->session.greeting_timeout_ms = (unsigned)atoi(optarg);
            break;
        case O_COMMAND_T:
            job->session.command_timeout_ms = (unsigned)atoi(optarg);
            break;
        case O_DATA_T:
            job->session.data_send_timeout_ms = (unsigned)atoi(optarg);
            break;
        case O_DOT_T:
            job->session.data_term_timeout_ms = (unsigned)atoi(optarg);
            break;
        case O_DNS_T:
            dopts.timeout_ms = (unsigned)atoi(optarg);
            break;
        case O_IGN_PIPE:
            job->session.ignore_pipelining = 1;
            break;
        case O_IGN_8BIT:
            job->session.ignore_8bitmime = 1;
            break;
        case O_IGN_DSN:
            job->session.ignore_dsn = 1;
            break;
        case O_NO_MX:
            job->bounce_upon_no_mx = 1;
            break;
        case O_NO_5XX:
            job->bounce_upon_5xx_greeting = 0;
            break;
        case O_ATTEMPTS:
            job->mx_connection_attempts = (unsigned)atoi(optarg);
            break;
        case O_8BIT:
            eightbit = optarg;
            break;
        case O_UTF8:
            smtputf8 = 1;
            break;
        case O_RET:
            ret = strcmp(optarg, "full") == 0 ? SMTPOUT_RET_FULL : SMTPOUT_RET_HDRS;
            break;
        case O_ENVID:
            envid = optarg;
            break;
        case O_NOTIFY:
            notify = parse_notify(optarg);
            break;
        case O_ORCPT:
            orcpt = 1;
            break;
        case O_421:
            job->smtp_421_means_mx_unavailable = 1;
            break;
        case O_REPEAT:
            t.runs_left = (unsigned)atoi(optarg);
            break;
        default:
            usage();
        }
    }
    if (from == NULL || t.nrcpts == 0 || nfiles == 0 || optind != argc)
        usage();
    if (domain == NULL) {
        const char *at = strrchr(t.rcpts[0], '@');
        if (at == NULL)
            usage();
        domain = at + 1;
    }
    if (hosts && cfg_route_parse(hosts, &route, err, sizeof err) < 0) {
        fprintf(stderr, "smtpout_tool: smtp-hosts: %s\n", err);
        free(t.rcpts);
        free(files);
        return 2;
    }

    rcpts = xcalloc(t.nrcpts, sizeof *rcpts);
    for (i = 0; i < t.nrcpts; i++) {
        rcpts[i].addr = t.rcpts[i];
        rcpts[i].notify = notify;
        rcpts[i].orcpt = orcpt ? t.rcpts[i] : NULL;
    }
    data = xcalloc(nfiles, sizeof *data);
    lens = xcalloc(nfiles, sizeof *lens);
    msgs = xcalloc(nfiles, sizeof *msgs);
    for (i = 0; i < nfiles; i++) {
        data[i] = read_file(files[i], &lens[i]);
        msgs[i].sender = from;
        msgs[i].rcpts = rcpts;
        msgs[i].nrcpts = t.nrcpts;
        msgs[i].data = data[i];
        msgs[i].len = lens[i];
        msgs[i].eight_bit = strcmp(eightbit, "yes") == 0 ||
                            (strcmp(eightbit, "auto") == 0 && has_8bit(data[i], lens[i]));
        msgs[i].smtputf8 = smtputf8;
        msgs[i].ret = ret;
        msgs[i].envid = envid;
    }
    job->domain = domain;
    job->route = route;
    job->msgs = msgs;
    job->nmsgs = nfiles;
    job->session.source = have_source ? (struct sockaddr *)&source : NULL;
    if (job->session.tls != SMTPOUT_TLS_OFF &&
        (job->session.ssl_ctx = smtpout_tls_client_ctx(NULL, err, sizeof err)) == NULL)
        msg_fatal("cannot create the TLS context");

    uv_loop_init(&loop);
    t.loop = &loop;
    if (t.runs_left == 0)
        usage();
    if (mxdns_create(&loop, &dopts, &dns) < 0)
        msg_fatal("cannot create the resolver for \"%s\"",
                  dopts.name_servers ? dopts.name_servers : "");
    t.dns = dns;
    smtpout_job_start(&loop, dns, job, &job_callbacks, &t);
    uv_run(&loop, UV_RUN_DEFAULT);
    mxdns_destroy(dns);
    uv_run(&loop, UV_RUN_DEFAULT);
    if (uv_loop_close(&loop) != 0)
        msg_panic("handles left open on the loop");

    SSL_CTX_free(job->session.ssl_ctx);
    cfg_route_free(route);
    for (i = 0; i < nfiles; i++)
        free(data[i]);
    free(data);
    free(lens);
    free(msgs);
    free(rcpts);
    free(files);
    free(t.rcpts);
    return 0;
}
