/*
 * pmtactl_resolve.c - `pmtactl resolve [--connect] DOMAIN[/VMTA]`: where
 *                     pmtad would deliver DOMAIN's mail, and what answers there
 *
 * It uses smtp-out's own resolver and route code (smtp-out/mxdns.c,
 * mxroute.c) with the configuration's name-server lines and the
 * queue's smtp-hosts, default-smtp-port and bounce-upon-no-mx, so the answer
 * is the one a delivery attempt would get: first the MX answer (preference,
 * host, addresses; or the implicit MX), then the destinations in the order
 * smtp-out would try them. With --connect it connects to each destination
 * (at most CONNECT_MAX), and prints the greeting and the reply to EHLO (the
 * queue's host-name), with the time each took, then says QUIT. It does not
 * bind pmtad's source addresses: it shows what the destination says, from
 * this host.
 *
 * Owns: a private libuv loop and resolver for the command's lifetime.
 * SECURITY: the replies are remote input: read with a deadline, at most
 * REPLY_LINE_MAX bytes a line and REPLY_LINES_MAX lines, printed through
 * printable(). Nothing from the network goes into a command we send.
 */
#include "config.h"

#include <errno.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <uv.h>

#include "cfg.h"
#include "pmtactl.h"
#include "mxdns.h"
#include "mxroute.h"
#include "xalloc.h"

#define CONNECT_MAX      10
#define NAME_SERVERS_MAX 1024
#define REPLY_LINE_MAX   1000 /* RFC 5321 4.5.3.1.5: 512; some servers send more */
#define REPLY_LINES_MAX  100
#define NET_TIMEOUT_MS   15000

struct resolve_run {
    json_t *out; /* {"domain", "mx":[...], "mxStatus", "destinations":[...], ...} */
    int done;
    int failed;
};

/* --- configuration -------------------------------------------------------------- */

static const struct cfg_value *
setting(const struct cfg_resolved *set, enum cfg_directive d)
{
    const struct cfg_value *v = set->v[d];

    return v && !(v->flags & CFG_VALUE_UNSET) ? v : NULL;
}

/* --- DNS ------------------------------------------------------------------------- */

static void
on_mx(void *arg, enum mxdns_status status, const char *why, const struct mxdns_host *hosts,
      size_t nhosts)
{
    struct resolve_run *run = arg;
    json_t *list = json_array();
    char ip[64];

    for (size_t i = 0; i < nhosts; i++) {
        json_t *addrs = json_array();

        for (size_t k = 0; k < hosts[i].naddrs; k++)
            json_array_append_new(
                addrs, json_string(mxroute_sockaddr_str((const struct sockaddr *)&hosts[i].addrs[k],
                                                        ip, sizeof ip)));
        json_array_append_new(
            list, json_pack("{s:I, s:s, s:b, s:s, s:o}", "pref", (json_int_t)hosts[i].pref, "host",
                            hosts[i].name, "implicit", hosts[i].implicit, "status",
                            mxdns_status_name(hosts[i].addr_status), "addresses", addrs));
    }
    json_object_set_new(run->out, "mxStatus", json_string(mxdns_status_name(status)));
    if (status != MXDNS_OK && why)
        json_object_set_new(run->out, "mxWhy", json_string(why));
    json_object_set_new(run->out, "mx", list);
    run->done++;
}

static void
on_route(void *arg, const struct mxroute_dest_list *list)
{
    struct resolve_run *run = arg;
    json_t *dests = json_array();
    char ip[64];

    for (size_t i = 0; i < list->ndests; i++) {
        const struct mxroute_dest *d = &list->dests[i];

        json_array_append_new(
            dests,
            json_pack("{s:s, s:s, s:I, s:I, s:I}", "host", d->mx_name, "ip",
                      mxroute_sockaddr_str((const struct sockaddr *)&d->addr, ip, sizeof ip),
                      "port", (json_int_t)mxroute_sockaddr_port((const struct sockaddr *)&d->addr),
                      "level", (json_int_t)d->level, "pref", (json_int_t)d->pref));
    }
    json_object_set_new(run->out, "destinations", dests);
    if (list->status != MXROUTE_OK) {
        json_object_set_new(run->out, "routeStatus", json_string(list->status_code));
        json_object_set_new(run->out, "routeWhy", json_string(list->why));
        run->failed = 1;
    }
    run->done++;
}

/* lookup - MX answer and destination list into RUN->out; 0, or EXIT_FAILED (reported) */
static int
lookup(const struct cfg *c, const char *domain, const char *vmta, struct resolve_run *run)
{
    char servers[NAME_SERVERS_MAX];
    struct mxdns_options dopts = { .timeout_ms = 5000 };
    struct mxroute_options ro = { .family = AF_UNSPEC, .default_port = 25 };
    struct cfg_route *route = NULL;
    const struct cfg_value *v;
    struct cfg_resolved set;
    struct mxdns *dns;
    char err[200];
    uv_loop_t loop;
    int64_t b = 0;

    if (cfg_resolve_queue(c, domain, vmta, &set) < 0) {
        fail("no virtual MTA named %s", vmta);
        return EXIT_NO_MATCH;
    }
    if ((v = setting(&set, CFG_D_DEFAULT_SMTP_PORT)) != NULL)
        ro.default_port = (uint16_t)v->num;
    if ((v = setting(&set, CFG_D_BOUNCE_UPON_NO_MX)) != NULL &&
        cfg_parse_bool(cfg_str(c, v->text), &b) == 0)
        ro.bounce_upon_no_mx = b != 0;
    if ((v = setting(&set, CFG_D_SMTP_HOSTS)) != NULL) {
        if (cfg_route_parse(cfg_str(c, v->text), &route, err, sizeof err) < 0)
            return fail("smtp-hosts of %s: %s", domain, err);
        json_object_set_new(run->out, "smtpHosts", json_string(cfg_str(c, v->text)));
    }
    ro.route = route;
    mxdns_name_servers(c, servers, sizeof servers);
    dopts.name_servers = servers[0] ? servers : NULL;
    json_object_set_new(run->out, "nameServers", json_string(servers[0] ? servers : "system"));
    uv_loop_init(&loop);
    if (mxdns_create(&loop, &dopts, &dns) < 0) {
        uv_loop_close(&loop);
        cfg_route_free(route);
        return fail("cannot start a resolver (name-server %s)", servers[0] ? servers : "system");
    }
    mxdns_mx_hosts(dns, domain, AF_UNSPEC, !ro.bounce_upon_no_mx, on_mx, run);
    mxroute_resolve(dns, domain, &ro, on_route, run);
    while (run->done < 2 && uv_run(&loop, UV_RUN_ONCE))
        ;
    mxdns_destroy(dns);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    cfg_route_free(route);
    return 0;
}

/* --- --connect ---------------------------------------------------------------------- */

static long long
now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* printable_json - LEN bytes of TEXT as a JSON string, bytes outside printable ASCII as '?' */
static json_t *
printable_json(const char *text, size_t len)
{
    char *copy = xstrndup(text, len);
    json_t *s;

    for (char *p = copy; *p; p++)
        if ((unsigned char)*p < 0x20 || (unsigned char)*p >= 0x7f)
            *p = '?';
    s = json_string(copy);
    free(copy);
    return s;
}

/*
 * read_reply - one SMTP reply (all its lines) from FD into LINES (joined by
 * "\n"); the code, or -1 on timeout, EOF, an overlong line or too many lines
 */
static int
read_reply(int fd, char *buf, size_t *have, json_t *lines)
{
    long long deadline = now_ms() + NET_TIMEOUT_MS;

    for (int nlines = 0; nlines < REPLY_LINES_MAX;) {
        char *nl = memchr(buf, '\n', *have);

        if (nl) {
            size_t len = (size_t)(nl - buf) + 1, textlen = len;

            while (textlen > 0 && (buf[textlen - 1] == '\n' || buf[textlen - 1] == '\r'))
                textlen--;
            json_array_append_new(lines, printable_json(buf, textlen));
            nlines++;
            if (textlen < 4 || buf[3] != '-') {
                int code = textlen >= 3 ? atoi(buf) : -1;

                memmove(buf, buf + len, *have - len);
                *have -= len;
                return code >= 200 && code <= 599 ? code : -1;
            }
            memmove(buf, buf + len, *have - len);
            *have -= len;
            continue;
        }
        if (*have >= REPLY_LINE_MAX)
            return -1;
        struct pollfd p = { .fd = fd, .events = POLLIN };
        long long left = deadline - now_ms();
        ssize_t n;

        if (left <= 0 || poll(&p, 1, (int)left) <= 0)
            return -1;
        if ((n = read(fd, buf + *have, REPLY_LINE_MAX - *have)) <= 0)
            return -1;
        *have += (size_t)n;
    }
    return -1;
}

/* connect_to - a connected TCP socket to ADDR within NET_TIMEOUT_MS, or -1 with ERRNO */
static int
connect_to(const struct sockaddr_storage *addr)
{
    int fd = socket(addr->ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0), err = 0;
    socklen_t len = addr->ss_family == AF_INET6 ? sizeof(struct sockaddr_in6)
                                                : sizeof(struct sockaddr_in);
    struct pollfd p;

    if (fd < 0)
        return -1;
    if (connect(fd, (const struct sockaddr *)addr, len) == 0)
        return fd;
    p = (struct pollfd){ .fd = fd, .events = POLLOUT };
    if (errno == EINPROGRESS && poll(&p, 1, NET_TIMEOUT_MS) == 1) {
        len = sizeof err;
        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0 && err == 0)
            return fd;
    }
    errno = err ? err : errno == EINPROGRESS ? ETIMEDOUT : errno;
    close(fd);
    return -1;
}

/* probe - connect to destination D, greeting, EHLO HELO_NAME, QUIT; results into D */
static void
probe(json_t *d, const struct sockaddr_storage *addr, const char *helo_name)
{
    char buf[REPLY_LINE_MAX + 1], *ehlo;
    size_t have = 0;
    long long t0 = now_ms();
    json_t *greeting = json_array(), *reply = json_array();
    int fd = connect_to(addr), code;

    json_object_set_new(d, "connectMs", json_integer(now_ms() - t0));
    if (fd < 0) {
        json_object_set_new(d, "error", json_string(strerror(errno)));
        json_decref(greeting);
        json_decref(reply);
        return;
    }
    t0 = now_ms();
    code = read_reply(fd, buf, &have, greeting);
    json_object_set_new(d, "greetingMs", json_integer(now_ms() - t0));
    json_object_set_new(d, "greeting", greeting);
    if (code >= 200 && code < 300) {
        ehlo = xasprintf("EHLO %s\r\n", helo_name);
        t0 = now_ms();
        if (write(fd, ehlo, strlen(ehlo)) == (ssize_t)strlen(ehlo)) {
            code = read_reply(fd, buf, &have, reply);
            json_object_set_new(d, "ehloMs", json_integer(now_ms() - t0));
            json_object_set_new(d, "ehlo", reply);
            reply = NULL;
            (void)!write(fd, "QUIT\r\n", 6);
        }
        free(ehlo);
    } else if (code < 0) {
        json_object_set_new(d, "error", json_string("no complete greeting"));
    }
    json_decref(reply);
    close(fd);
}

/* --- printing -------------------------------------------------------------------------- */

static void
print_lines(const char *label, json_t *lines, json_t *ms)
{
    size_t i;
    json_t *l;

    json_array_foreach(lines, i, l)
    {
        char *shown = printable(json_string_value(l), 200);

        printf("    %-9s %s", i == 0 ? label : "", shown);
        if (i == 0 && json_is_integer(ms))
            printf("    (%" JSON_INTEGER_FORMAT " ms)", json_integer_value(ms));
        printf("\n");
        free(shown);
    }
}

static void
print_resolve(json_t *out)
{
    json_t *mx = json_object_get(out, "mx"), *dests = json_object_get(out, "destinations"), *e;
    size_t i, k;

    printf("name servers: %s\n", get_text(out, "nameServers"));
    printf("MX records of %s: %s%s%s\n", get_text(out, "domain"), get_text(out, "mxStatus"),
           *get_text(out, "mxWhy") ? " - " : "", get_text(out, "mxWhy"));
    json_array_foreach(mx, i, e)
    {
        json_t *a;
        char *host = printable(get_text(e, "host"), 80);

        printf("  %5" JSON_INTEGER_FORMAT " %-40s%s",
               json_integer_value(json_object_get(e, "pref")), host,
               json_is_true(json_object_get(e, "implicit")) ? " (implicit MX)" : "");
        json_array_foreach(json_object_get(e, "addresses"), k, a)
            printf(" %s", json_string_value(a));
        if (strcmp(get_text(e, "status"), "ok") != 0)
            printf(" [%s]", get_text(e, "status"));
        printf("\n");
        free(host);
    }
    if (*get_text(out, "smtpHosts"))
        printf("smtp-hosts: %s\n", get_text(out, "smtpHosts"));
    printf("hosts pmtad would try, in order:\n");
    json_array_foreach(dests, i, e)
    {
        char *host = printable(get_text(e, "host"), 80);

        printf("  %2zu. %-40s %s:%" JSON_INTEGER_FORMAT "\n", i + 1, host, get_text(e, "ip"),
               json_integer_value(json_object_get(e, "port")));
        free(host);
        if (json_object_get(e, "connectMs") == NULL)
            continue;
        if (*get_text(e, "error")) {
            printf("    %-9s %s\n", "error", get_text(e, "error"));
            continue;
        }
        printf("    %-9s %" JSON_INTEGER_FORMAT " ms\n", "connect",
               json_integer_value(json_object_get(e, "connectMs")));
        print_lines("greeting", json_object_get(e, "greeting"), json_object_get(e, "greetingMs"));
        print_lines("EHLO", json_object_get(e, "ehlo"), json_object_get(e, "ehloMs"));
    }
    if (*get_text(out, "routeWhy"))
        printf("no destination: %s %s\n", get_text(out, "routeStatus"), get_text(out, "routeWhy"));
}

/* helo_name - the queue's host-name (its VMTA's, else the global one, else this machine's) */
static char *
helo_name(const struct cfg *c, const char *vmta)
{
    struct cfg_resolved res;
    const struct cfg_value *v;
    char host[256] = "localhost";

    if (cfg_resolve_vmta(c, vmta, &res) == 0 && (v = setting(&res, CFG_D_HOST_NAME)) != NULL)
        return xstrdup(cfg_str(c, v->text));
    gethostname(host, sizeof host - 1);
    return xstrdup(host);
}

/* run_resolve - see pmtactl.h */
int
run_resolve(const struct options *o, const char *pattern)
{
    unsigned nerrors = 0;
    struct cfg *c = cfg_load(o->config_path, print_config_error, (void *)o->config_path, &nerrors);
    const char *slash = strchr(pattern, '/');
    char *domain = slash ? xstrndup(pattern, (size_t)(slash - pattern)) : xstrdup(pattern);
    const char *vmta = slash && slash[1] ? slash + 1 : NULL;
    struct resolve_run run = { .out = json_pack("{s:s}", "domain", domain) };
    int rc;

    if (c == NULL) {
        free(domain);
        json_decref(run.out);
        return fail("%s: cannot load the configuration (%u error%s)", o->config_path, nerrors,
                    nerrors == 1 ? "" : "s");
    }
    if ((rc = lookup(c, domain, vmta, &run)) == 0 && (o->given & OPT_CONNECT)) {
        char *helo = helo_name(c, vmta);
        json_t *dests = json_object_get(run.out, "destinations"), *d;
        size_t i;

        json_array_foreach(dests, i, d)
        {
            struct sockaddr_storage addr;

            if (i >= CONNECT_MAX)
                break;
            memset(&addr, 0, sizeof addr);
            if (inet_pton(AF_INET, get_text(d, "ip"), &((struct sockaddr_in *)&addr)->sin_addr)) {
                addr.ss_family = AF_INET;
                ((struct sockaddr_in *)&addr)->sin_port = htons(
                    (uint16_t)json_integer_value(json_object_get(d, "port")));
            } else if (inet_pton(AF_INET6, get_text(d, "ip"),
                                 &((struct sockaddr_in6 *)&addr)->sin6_addr)) {
                addr.ss_family = AF_INET6;
                ((struct sockaddr_in6 *)&addr)->sin6_port = htons(
                    (uint16_t)json_integer_value(json_object_get(d, "port")));
            } else {
                continue;
            }
            probe(d, &addr, helo);
        }
        free(helo);
    }
    if (rc == 0) {
        if (o->json) {
            char *text = json_dumps(run.out, JSON_COMPACT);

            printf("%s\n", text ? text : "");
            free(text);
        } else {
            print_resolve(run.out);
        }
        rc = run.failed ? EXIT_NO_MATCH : 0;
    }
    json_decref(run.out);
    free(domain);
    cfg_free(c);
    return rc;
}
