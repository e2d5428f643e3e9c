/*
 * mailbench.c - the load generator and the "smart sink" of bench/relay (not installed)
 *
 *   mailbench sink --listen ADDR:PORT [--cert PEM] [--stats FILE] [--max-index N]
 *   mailbench source --connect ADDR:PORT [--sessions 20] [--messages 20000]
 *                    [--sizes 5120[,51200,...]] [--domains 1] [--per-conn 100]
 *                    [--starttls] [--fates] [--first 0]
 *
 * The source sends MESSAGES messages over SESSIONS parallel SMTP sessions (PER-CONN
 * messages per connection, PIPELINING when offered, STARTTLS when asked), one recipient
 * each, message i to d(i mod DOMAINS).test, its size the (i mod n)th of SIZES. It times
 * every end of DATA (".\r\n" written) to the server's 250 and prints one line:
 *   sent=N accepted=N refused=N errors=N elapsed=S p50_ms=X p99_ms=Y
 * With --fates, 10 % of the recipients are named tfN (the sink defers them once) and
 * 2 % pfN (the sink refuses them): a receiver that pushes back, like KumoMTA's smart sink.
 *
 * The sink accepts SMTP on ADDR:PORT (one thread per connection: a few hundred
 * connections at most here; blocking I/O keeps TLS simple), offers STARTTLS when given a
 * certificate (one PEM with the key), answers RCPT tfN with 451 the first time it sees N
 * and 250 after, pfN with 550, anything else 250, accepts bounces (MAIL FROM:<>) always,
 * and keeps its counters in STATS (rewritten in place every 50 ms, one line):
 *   msgs=N rcpts=N deferred=N refused=N bounces=N bytes=N signed=N
 * (signed: messages whose header carries a DKIM-Signature).
 * Owns: its sockets and threads. Security: benchmark tool, loopback only; lines longer
 * than its buffer are cut, never overrun.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#define LINE_MAX_LEN 4096
#define IOBUF_LEN    65536
#define FILLER_LINE \
    "The quick brown fox jumps over the lazy dog; pack my box with five dozen jugs.\r\n"
#define FILLER_LINE_LEN (sizeof FILLER_LINE - 1)

/* --- one connection's I/O, plain or TLS ------------------------------------------------- */

struct conn {
    int fd;
    SSL *ssl;
    char in[IOBUF_LEN];
    size_t in_off, in_len;
    char out[IOBUF_LEN];
    size_t out_len;
};

static ssize_t
conn_read_raw(struct conn *c, char *p, size_t n)
{
    if (c->ssl) {
        int r = SSL_read(c->ssl, p, (int)n);
        return r > 0 ? r : -1;
    }
    ssize_t r;
    do
        r = read(c->fd, p, n);
    while (r < 0 && errno == EINTR);
    return r > 0 ? r : -1;
}

static int
conn_write_raw(struct conn *c, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w;
        if (c->ssl) {
            int r = SSL_write(c->ssl, p, (int)n);
            w = r > 0 ? r : -1;
        } else {
            w = write(c->fd, p, n);
            if (w < 0 && errno == EINTR)
                continue;
        }
        if (w <= 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static int
conn_flush(struct conn *c)
{
    int r = conn_write_raw(c, c->out, c->out_len);

    c->out_len = 0;
    return r;
}

static int
conn_put(struct conn *c, const char *p, size_t n)
{
    if (c->out_len + n > sizeof c->out && conn_flush(c) < 0)
        return -1;
    if (n > sizeof c->out)
        return conn_write_raw(c, p, n);
    memcpy(c->out + c->out_len, p, n);
    c->out_len += n;
    return 0;
}

static int
conn_puts(struct conn *c, const char *s)
{
    return conn_put(c, s, strlen(s));
}

/* Fill the input buffer; flushes pending output first (the peer may wait for it). */
static int
conn_fill(struct conn *c)
{
    if (c->out_len && conn_flush(c) < 0)
        return -1;
    if (c->in_off > 0) {
        memmove(c->in, c->in + c->in_off, c->in_len - c->in_off);
        c->in_len -= c->in_off;
        c->in_off = 0;
    }
    if (c->in_len == sizeof c->in)
        return -1;
    /* ACK at once: a client that writes ".\r\n" apart from the body, with Nagle on, would
     * otherwise wait out our delayed ACK (40 ms) on every message */
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_QUICKACK, &one, sizeof one);
    ssize_t r = conn_read_raw(c, c->in + c->in_len, sizeof c->in - c->in_len);
    if (r <= 0)
        return -1;
    c->in_len += (size_t)r;
    return 0;
}

/* One line without its CRLF into LINE (cut to LINE_MAX_LEN-1); -1 at EOF. */
static int
conn_line(struct conn *c, char *line)
{
    for (;;) {
        char *start = c->in + c->in_off;
        char *nl = memchr(start, '\n', c->in_len - c->in_off);
        if (nl) {
            size_t n = (size_t)(nl - start);
            if (n > 0 && start[n - 1] == '\r')
                n--;
            if (n >= LINE_MAX_LEN)
                n = LINE_MAX_LEN - 1;
            memcpy(line, start, n);
            line[n] = '\0';
            c->in_off += (size_t)(nl - start) + 1;
            return 0;
        }
        if (c->in_len - c->in_off >= LINE_MAX_LEN) /* overlong: drop what we have */
            c->in_off = c->in_len;
        if (conn_fill(c) < 0)
            return -1;
    }
}

static void
conn_close(struct conn *c)
{
    if (c->ssl) {
        SSL_shutdown(c->ssl);
        SSL_free(c->ssl);
    }
    close(c->fd);
    free(c);
}

static double
now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int
parse_addr(const char *s, struct sockaddr_in *sa)
{
    char host[64];
    const char *colon = strrchr(s, ':');

    if (!colon || (size_t)(colon - s) >= sizeof host)
        return -1;
    memcpy(host, s, (size_t)(colon - s));
    host[colon - s] = '\0';
    memset(sa, 0, sizeof *sa);
    sa->sin_family = AF_INET;
    sa->sin_port = htons((uint16_t)atoi(colon + 1));
    return inet_pton(AF_INET, host, &sa->sin_addr) == 1 ? 0 : -1;
}

/* --- the sink ------------------------------------------------------------------------------- */

static struct {
    atomic_ulong msgs, rcpts, deferred, refused, bounces, bytes, signed_msgs;
    SSL_CTX *tls;
    _Atomic uint8_t *deferred_once; /* one byte per tfN index: seen */
    unsigned long max_index;
} sink;

/* tfN / pfN: the fate the source chose for this recipient (0: accept). */
static int
rcpt_fate(const char *arg, unsigned long *index)
{
    const char *lt = strchr(arg, '<');
    char *end;

    if (!lt || (lt[1] != 't' && lt[1] != 'p') || lt[2] != 'f')
        return 0;
    *index = strtoul(lt + 3, &end, 10);
    if (end == lt + 3 || *end != '@')
        return 0;
    return lt[1];
}

/* Read the message body up to "\r\n.\r\n"; its size, or -1 at EOF. */
static long
sink_body(struct conn *c)
{
    /* states: 0 mid-line, 1 "\r", 2 "\r\n" (start of line), 3 "\r\n.", 4 "\r\n.\r" */
    int st = 2;
    long size = 0;

    for (;;) {
        while (c->in_off < c->in_len) {
            char ch = c->in[c->in_off++];
            size++;
            switch (st) {
            case 0:
                if (ch == '\r')
                    st = 1;
                else {
                    char *cr = memchr(c->in + c->in_off, '\r', c->in_len - c->in_off);
                    size_t skip = cr ? (size_t)(cr - (c->in + c->in_off)) : c->in_len - c->in_off;
                    c->in_off += skip;
                    size += (long)skip;
                }
                break;
            case 1:
                st = ch == '\n' ? 2 : ch == '\r' ? 1 : 0;
                break;
            case 2:
                st = ch == '.' ? 3 : ch == '\r' ? 1 : 0;
                break;
            case 3:
                st = ch == '\r' ? 4 : 0;
                break;
            case 4:
                if (ch == '\n')
                    return size;
                st = ch == '\r' ? 1 : 0;
                break;
            }
        }
        if (conn_fill(c) < 0)
            return -1;
    }
}

/* Whether the message's header, as far as the first read of it holds, has a DKIM-Signature
 * (the senders here put it on top). Reads once if nothing is buffered yet. */
static bool
body_is_signed(struct conn *c)
{
    static const char field[] = "DKIM-Signature:";

    if (c->in_off == c->in_len && conn_fill(c) < 0)
        return false;
    const char *p = c->in + c->in_off;
    size_t n = c->in_len - c->in_off;
    if (n > 16384)
        n = 16384;
    return (n >= sizeof field - 1 && !strncasecmp(p, field, sizeof field - 1)) ||
           memmem(p, n, "\nDKIM-Signature:", sizeof field) != NULL;
}

static void *
sink_session(void *arg)
{
    struct conn *c = arg;
    char line[LINE_MAX_LEN];
    int nrcpt = 0;
    bool bounce = false;

    conn_puts(c, "220 sink.test ESMTP mailbench\r\n");
    while (conn_line(c, line) == 0) {
        if (!strncasecmp(line, "EHLO", 4)) {
            conn_puts(c, "250-sink.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n"
                         "250-SIZE 104857600\r\n");
            conn_puts(c, sink.tls && !c->ssl ? "250-STARTTLS\r\n250 ENHANCEDSTATUSCODES\r\n"
                                             : "250 ENHANCEDSTATUSCODES\r\n");
        } else if (!strncasecmp(line, "HELO", 4)) {
            conn_puts(c, "250 sink.test\r\n");
        } else if (!strncasecmp(line, "STARTTLS", 8) && sink.tls && !c->ssl) {
            conn_puts(c, "220 2.0.0 go ahead\r\n");
            if (conn_flush(c) < 0 || c->in_len != c->in_off)
                break;
            c->ssl = SSL_new(sink.tls);
            SSL_set_fd(c->ssl, c->fd);
            if (SSL_accept(c->ssl) != 1)
                break;
            nrcpt = 0;
        } else if (!strncasecmp(line, "MAIL", 4)) {
            nrcpt = 0;
            bounce = strstr(line, "<>") != NULL;
            conn_puts(c, "250 2.1.0 ok\r\n");
        } else if (!strncasecmp(line, "RCPT", 4)) {
            unsigned long i = 0;
            int fate = bounce ? 0 : rcpt_fate(line, &i);
            if (fate == 'p') {
                atomic_fetch_add(&sink.refused, 1);
                conn_puts(c, "550 5.1.1 no such user (smart sink)\r\n");
            } else if (fate == 't' && i < sink.max_index &&
                       atomic_exchange(&sink.deferred_once[i], 1) == 0) {
                atomic_fetch_add(&sink.deferred, 1);
                conn_puts(c, "451 4.2.0 try again later (smart sink)\r\n");
            } else {
                nrcpt++;
                conn_puts(c, "250 2.1.5 ok\r\n");
            }
        } else if (!strncasecmp(line, "DATA", 4)) {
            if (nrcpt == 0) {
                conn_puts(c, "554 5.5.1 no valid recipients\r\n");
                continue;
            }
            conn_puts(c, "354 go ahead\r\n");
            if (conn_flush(c) < 0)
                break;
            if (!bounce && body_is_signed(c))
                atomic_fetch_add(&sink.signed_msgs, 1);
            long size = sink_body(c);
            if (size < 0)
                break;
            atomic_fetch_add(bounce ? &sink.bounces : &sink.msgs, 1);
            if (!bounce)
                atomic_fetch_add(&sink.rcpts, (unsigned long)nrcpt);
            atomic_fetch_add(&sink.bytes, (unsigned long)size);
            nrcpt = 0;
            conn_puts(c, "250 2.0.0 queued\r\n");
        } else if (!strncasecmp(line, "RSET", 4)) {
            nrcpt = 0;
            conn_puts(c, "250 2.0.0 ok\r\n");
        } else if (!strncasecmp(line, "NOOP", 4)) {
            conn_puts(c, "250 2.0.0 ok\r\n");
        } else if (!strncasecmp(line, "QUIT", 4)) {
            conn_puts(c, "221 2.0.0 bye\r\n");
            conn_flush(c);
            break;
        } else {
            conn_puts(c, "502 5.5.2 not implemented\r\n");
        }
    }
    conn_close(c);
    return NULL;
}

static void *
sink_stats(void *arg)
{
    const char *path = arg;
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    char line[256];

    if (fd < 0) {
        perror(path);
        exit(1);
    }
    for (;;) {
        int n = snprintf(line, sizeof line,
                         "msgs=%lu rcpts=%lu deferred=%lu refused=%lu bounces=%lu bytes=%lu"
                         " signed=%lu          \n",
                         atomic_load(&sink.msgs), atomic_load(&sink.rcpts),
                         atomic_load(&sink.deferred), atomic_load(&sink.refused),
                         atomic_load(&sink.bounces), atomic_load(&sink.bytes),
                         atomic_load(&sink.signed_msgs));
        if (pwrite(fd, line, (size_t)n, 0) < 0)
            exit(1);
        usleep(50000);
    }
    return NULL;
}

static SSL_CTX *
tls_server(const char *pem)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());

    if (!ctx || SSL_CTX_use_certificate_chain_file(ctx, pem) != 1 ||
        SSL_CTX_use_PrivateKey_file(ctx, pem, SSL_FILETYPE_PEM) != 1) {
        ERR_print_errors_fp(stderr);
        exit(1);
    }
    return ctx;
}

static int
run_sink(const char *listen_addr, const char *cert, const char *stats, unsigned long max_index)
{
    struct sockaddr_in sa;
    int one = 1, lfd = socket(AF_INET, SOCK_STREAM, 0);
    pthread_attr_t attr;
    pthread_t t;

    if (parse_addr(listen_addr, &sa) < 0) {
        fprintf(stderr, "mailbench: bad address %s\n", listen_addr);
        return 2;
    }
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(lfd, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(lfd, 1024) < 0) {
        perror("mailbench sink: bind/listen");
        return 1;
    }
    sink.tls = cert ? tls_server(cert) : NULL;
    sink.max_index = max_index;
    sink.deferred_once = calloc(max_index, 1);
    pthread_create(&t, NULL, sink_stats, (void *)stats);
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 256 * 1024);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    for (;;) {
        int fd = accept(lfd, NULL, NULL);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED || errno == EMFILE)
                continue;
            perror("accept");
            return 1;
        }
        struct conn *c = calloc(1, sizeof *c);
        c->fd = fd;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (pthread_create(&t, &attr, sink_session, c) != 0)
            conn_close(c);
    }
}

/* --- the source ----------------------------------------------------------------------------- */

static struct {
    struct sockaddr_in server;
    unsigned long messages, per_conn;
    unsigned domains, nsizes;
    long sizes[16];
    bool starttls, fates;
    unsigned long first;
    SSL_CTX *tls;
    atomic_ulong next, accepted, refused, errors;
    double *latency; /* per message index, seconds; <0 if none */
    char *filler;    /* body text, longest size */
} src;

struct ehlo_keywords {
    bool starttls, pipelining;
};

/* The first digit of the last reply of a possibly multi-line response; -1 at EOF.
 * With KW, notes the EHLO keywords we use. */
static int
src_reply(struct conn *c, struct ehlo_keywords *kw)
{
    char line[LINE_MAX_LEN];

    for (;;) {
        if (conn_line(c, line) < 0 || strlen(line) < 3)
            return -1;
        if (kw && !strncasecmp(line + 4, "STARTTLS", 8))
            kw->starttls = true;
        if (kw && !strncasecmp(line + 4, "PIPELINING", 10))
            kw->pipelining = true;
        if (line[3] != '-')
            return line[0] - '0';
    }
}

static int
src_message(struct conn *c, unsigned long i, bool pipelining)
{
    unsigned long n = src.first + i;
    unsigned long fate = (n * 37) % 100;
    const char *prefix = !src.fates ? "r" : fate < 10 ? "tf" : fate < 12 ? "pf" : "r";
    char head[1024];
    long size = src.sizes[i % src.nsizes];
    int hn, r1, r2, r3;

    hn = snprintf(head, sizeof head,
                  "MAIL FROM:<bench@source.test>\r\nRCPT TO:<%s%lu@d%lu.test>\r\nDATA\r\n", prefix,
                  n, n % src.domains);
    if (pipelining) {
        conn_put(c, head, (size_t)hn);
        r1 = src_reply(c, NULL);
        r2 = src_reply(c, NULL);
        r3 = src_reply(c, NULL);
    } else {
        char *l2 = strchr(head, '\n') + 1, *l3 = strchr(l2, '\n') + 1;
        conn_put(c, head, (size_t)(l2 - head));
        r1 = src_reply(c, NULL);
        conn_put(c, l2, (size_t)(l3 - l2));
        r2 = src_reply(c, NULL);
        conn_put(c, l3, strlen(l3));
        r3 = src_reply(c, NULL);
    }
    if (r1 < 0 || r2 < 0 || r3 < 0)
        return -1;
    if (r3 != 3) {
        atomic_fetch_add(&src.refused, 1);
        conn_puts(c, "RSET\r\n");
        return src_reply(c, NULL) < 0 ? -1 : 0;
    }
    hn = snprintf(head, sizeof head,
                  "From: <bench@source.test>\r\nTo: <%s%lu@d%lu.test>\r\n"
                  "Subject: mailbench message %lu\r\nMessage-ID: <%lu.mailbench@source.test>\r\n"
                  "Date: Thu, 1 Jan 2026 00:00:00 +0000\r\nMIME-Version: 1.0\r\n"
                  "Content-Type: text/plain; charset=us-ascii\r\n\r\n",
                  prefix, n, n % src.domains, n, n);
    conn_put(c, head, (size_t)hn);
    if (size > hn) /* whole lines only: the ".\r\n" must start a line */
        conn_put(c, src.filler, (size_t)(size - hn) / FILLER_LINE_LEN * FILLER_LINE_LEN);
    if (conn_flush(c) < 0)
        return -1;
    double t0 = now_s();
    conn_puts(c, ".\r\n");
    int r = src_reply(c, NULL);
    if (r < 0)
        return -1;
    src.latency[i] = now_s() - t0;
    atomic_fetch_add(r == 2 ? &src.accepted : &src.refused, 1);
    return 0;
}

static struct conn *
src_connect(bool *pipelining)
{
    struct conn *c = calloc(1, sizeof *c);
    int one = 1;
    struct ehlo_keywords kw = { false, false };

    struct timeval timeout = { 60, 0 }; /* a server that stops answering fails the session */

    c->fd = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(c->fd, (struct sockaddr *)&src.server, sizeof src.server) < 0)
        goto fail;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
    setsockopt(c->fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof timeout);
    if (src_reply(c, NULL) != 2)
        goto fail;
    conn_puts(c, "EHLO source.test\r\n");
    if (src_reply(c, &kw) != 2)
        goto fail;
    if (src.starttls) {
        if (!kw.starttls)
            goto fail;
        conn_puts(c, "STARTTLS\r\n");
        if (src_reply(c, NULL) != 2)
            goto fail;
        c->ssl = SSL_new(src.tls);
        SSL_set_fd(c->ssl, c->fd);
        if (SSL_connect(c->ssl) != 1)
            goto fail;
        conn_puts(c, "EHLO source.test\r\n");
        kw.pipelining = false;
        if (src_reply(c, &kw) != 2)
            goto fail;
    }
    *pipelining = kw.pipelining;
    return c;
fail:
    conn_close(c);
    return NULL;
}

static void *
src_session(void *arg)
{
    unsigned failures = 0;

    (void)arg;
    for (;;) {
        bool pipelining = false;
        struct conn *c = src_connect(&pipelining);
        if (!c) {
            atomic_fetch_add(&src.errors, 1);
            usleep(100000);
            if (atomic_load(&src.next) >= src.messages || ++failures >= 50)
                return NULL; /* 50 sessions in a row refused: the server is not working */
            continue;
        }
        failures = 0;
        for (unsigned long k = 0; k < src.per_conn; k++) {
            unsigned long i = atomic_fetch_add(&src.next, 1);
            if (i >= src.messages)
                break;
            if (src_message(c, i, pipelining) < 0) {
                atomic_fetch_add(&src.errors, 1);
                /* the message is lost to this run: counted as an error, not retried */
                break;
            }
        }
        conn_puts(c, "QUIT\r\n");
        conn_flush(c); /* the answer to QUIT tells nothing: no waiting for it */
        conn_close(c);
        if (atomic_load(&src.next) >= src.messages)
            return NULL;
    }
}

static int
cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static int
run_source(unsigned sessions)
{
    long longest = 0;
    pthread_t *t = calloc(sessions, sizeof *t);

    for (unsigned i = 0; i < src.nsizes; i++)
        longest = src.sizes[i] > longest ? src.sizes[i] : longest;
    src.filler = malloc((size_t)longest + FILLER_LINE_LEN);
    for (long i = 0; i < longest; i += FILLER_LINE_LEN)
        memcpy(src.filler + i, FILLER_LINE, FILLER_LINE_LEN);
    src.latency = malloc(src.messages * sizeof *src.latency);
    for (unsigned long i = 0; i < src.messages; i++)
        src.latency[i] = -1;
    if (src.starttls) {
        src.tls = SSL_CTX_new(TLS_client_method());
        SSL_CTX_set_verify(src.tls, SSL_VERIFY_NONE, NULL);
    }
    double t0 = now_s();
    for (unsigned i = 0; i < sessions; i++)
        pthread_create(&t[i], NULL, src_session, NULL);
    for (unsigned i = 0; i < sessions; i++)
        pthread_join(t[i], NULL);
    double elapsed = now_s() - t0;
    unsigned long n = 0;
    for (unsigned long i = 0; i < src.messages; i++)
        if (src.latency[i] >= 0)
            src.latency[n++] = src.latency[i];
    qsort(src.latency, n, sizeof *src.latency, cmp_double);
    printf("sent=%lu accepted=%lu refused=%lu errors=%lu elapsed=%.3f p50_ms=%.2f p99_ms=%.2f\n", n,
           atomic_load(&src.accepted), atomic_load(&src.refused), atomic_load(&src.errors), elapsed,
           n ? src.latency[n / 2] * 1000 : -1.0,
           n ? src.latency[(n * 99) / 100 < n ? (n * 99) / 100 : n - 1] * 1000 : -1.0);
    return atomic_load(&src.accepted) + atomic_load(&src.refused) == src.messages ? 0 : 1;
}

static void
usage(void)
{
    fputs("usage: mailbench sink --listen ADDR:PORT [--cert PEM] --stats FILE\n"
          "       mailbench source --connect ADDR:PORT [--sessions N] [--messages N]\n"
          "                        [--sizes B[,B...]] [--domains N] [--per-conn N]\n"
          "                        [--starttls] [--fates] [--first N]\n",
          stderr);
    exit(2);
}

int
main(int argc, char **argv)
{
    static const struct option opts[] = {
        { "listen", required_argument, NULL, 'l' },   { "cert", required_argument, NULL, 'c' },
        { "stats", required_argument, NULL, 'S' },    { "max-index", required_argument, NULL, 'X' },
        { "connect", required_argument, NULL, 'C' },  { "sessions", required_argument, NULL, 's' },
        { "messages", required_argument, NULL, 'm' }, { "sizes", required_argument, NULL, 'z' },
        { "domains", required_argument, NULL, 'd' },  { "per-conn", required_argument, NULL, 'p' },
        { "starttls", no_argument, NULL, 't' },       { "fates", no_argument, NULL, 'f' },
        { "first", required_argument, NULL, 'F' },    { NULL, 0, NULL, 0 },
    };
    const char *listen_addr = NULL, *cert = NULL, *stats = NULL, *connect_addr = NULL;
    unsigned long max_index = 1UL << 24;
    unsigned sessions = 20;
    int ch;

    if (argc < 2)
        usage();
    signal(SIGPIPE, SIG_IGN);
    prctl(PR_SET_PDEATHSIG, SIGKILL); /* never outlive the harness */
    src.messages = 20000;
    src.per_conn = 100;
    src.domains = 1;
    src.nsizes = 1;
    src.sizes[0] = 5120;
    while ((ch = getopt_long(argc - 1, argv + 1, "", opts, NULL)) != -1) {
        switch (ch) {
        case 'l':
            listen_addr = optarg;
            break;
        case 'c':
            cert = optarg;
            break;
        case 'S':
            stats = optarg;
            break;
        case 'X':
            max_index = strtoul(optarg, NULL, 10);
            break;
        case 'C':
            connect_addr = optarg;
            break;
        case 's':
            sessions = (unsigned)atoi(optarg);
            break;
        case 'm':
            src.messages = strtoul(optarg, NULL, 10);
            break;
        case 'd':
            src.domains = (unsigned)atoi(optarg);
            break;
        case 'p':
            src.per_conn = strtoul(optarg, NULL, 10);
            break;
        case 't':
            src.starttls = true;
            break;
        case 'f':
            src.fates = true;
            break;
        case 'F':
            src.first = strtoul(optarg, NULL, 10);
            break;
        case 'z': {
            char *p = optarg;
            src.nsizes = 0;
            while (*p && src.nsizes < 16) {
                src.sizes[src.nsizes++] = strtol(p, &p, 10);
                if (*p == ',')
                    p++;
            }
            break;
        }
        default:
            usage();
        }
    }
    if (!strcmp(argv[1], "sink") && listen_addr && stats)
        return run_sink(listen_addr, cert, stats, max_index);
    if (!strcmp(argv[1], "source") && connect_addr && sessions > 0 && src.domains > 0 &&
        src.nsizes > 0 && parse_addr(connect_addr, &src.server) == 0)
        return run_source(sessions);
    usage();
    return 2;
}
