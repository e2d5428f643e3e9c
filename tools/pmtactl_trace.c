/*
 * pmtactl_trace.c - `pmtactl trace [--log-data] DOMAIN[/VMTA]`: the next
 *                   delivery attempt of that queue, printed live as its SMTP
 *                   transcript
 *
 * One request on the control socket, {"cmd":"trace","queue":P,"data":B};
 * pmtad answers at once ({"ok":true,"queues":[...],"waiting":true}, or a
 * refusal: no queue matches, not an SMTP queue) and then, when the attempt
 * comes, one line per event ({"trace":{"ms":N,"kind":K,"text":T}}) and a
 * last {"done":true,...} (qmgr/qmgr_trace.c). Each is printed as it arrives:
 *
 *        0.000 *  delivery attempt of example.com/{default} on connection 3
 *       12.345 <  220 mx.example.com ESMTP
 *       12.401 >  EHLO pmta.example.net
 *
 * milliseconds since the attempt began; ">" sent, "<" received, "|" a line
 * of the message (only with --log-data), "*" what happened (connecting, TLS
 * parameters, each recipient's result). With --json the lines are printed
 * exactly as received. There is no time limit on the wait: the attempt comes
 * when the queue has mail and may connect (Ctrl-C ends the wait).
 *
 * Owns: the socket and its line buffer (lines at most LINE_MAX bytes).
 * SECURITY: every text is pmtad's sanitized copy, printed through
 * printable() all the same.
 */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <jansson.h>

#include "xalloc.h"
#include "pmtactl.h"

#define LINE_MAX_BYTES (256 * 1024)

struct line_reader {
    int fd;
    char *buf;
    size_t len, cap;
    size_t consumed; /* the line returned last, with its newline */
};

/*
 * read_line - the next line of R (without its newline, NUL-terminated, valid
 * until the next call); NULL at the end (*EOF set) or on an error (reported)
 */
static char *
read_line(struct line_reader *r, int *eof)
{
    char *nl;

    if (r->consumed) {
        memmove(r->buf, r->buf + r->consumed, r->len - r->consumed);
        r->len -= r->consumed;
        r->consumed = 0;
    }
    while ((nl = memchr(r->buf, '\n', r->len)) == NULL) {
        ssize_t n;

        if (r->len == r->cap) {
            fail("a line from pmtad is longer than %d KiB; giving up", LINE_MAX_BYTES / 1024);
            return NULL;
        }
        n = recv(r->fd, r->buf + r->len, r->cap - r->len, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            fail("cannot read from pmtad: %s",
                 errno == EAGAIN ? "no answer within the time limit" : strerror(errno));
            return NULL;
        }
        if (n == 0) {
            *eof = 1;
            return NULL;
        }
        r->len += (size_t)n;
    }
    *nl = '\0';
    r->consumed = (size_t)(nl - r->buf) + 1;
    return r->buf;
}

/* decode_line - pmtad's first answer (an object with "ok") or a later line (an object) */
static json_t *
decode_line(const char *text, int first)
{
    json_error_t err;
    json_t *line;

    if (first)
        return control_decode(text, strlen(text));
    if ((line = json_loads(text, JSON_REJECT_DUPLICATES, &err)) == NULL || !json_is_object(line)) {
        json_decref(line);
        fail("malformed trace line from pmtad");
        return NULL;
    }
    return line;
}

/* print_trace_line - one {"trace":{...}} line for people */
static void
print_trace_line(json_t *line)
{
    json_t *ms = json_object_get(line, "ms");
    char *kind = printable(get_text(line, "kind"), 2);
    char *text = printable(get_text(line, "text"), LINE_MAX_BYTES);

    printf("%10.3f %-2s %s\n", json_is_number(ms) ? json_number_value(ms) : 0.0, kind, text);
    free(kind);
    free(text);
}

/* print_start - what pmtad is waiting for (stderr: stdout keeps the transcript alone) */
static void
print_start(json_t *response, const struct options *o)
{
    json_t *queues = json_object_get(response, "queues"),
           *paused = json_object_get(response, "paused"), *q;
    size_t i;

    fprintf(stderr, "tracing the next delivery attempt of");
    json_array_foreach(queues, i, q)
    {
        char *name = printable(json_string_value(q) ? json_string_value(q) : "?", 200);

        fprintf(stderr, "%s %s", i ? "," : "", name);
        free(name);
    }
    fprintf(stderr, "%s (Ctrl-C to stop)\n", o->given & OPT_LOG_DATA ? ", message data shown" : "");
    if (json_array_size(paused) > 0)
        fprintf(stderr,
                "note: %zu of these queues are paused; the attempt waits for "
                "`pmtactl resume queue`\n",
                json_array_size(paused));
    fflush(stderr);
}

/* follow - print each line until "done" (the first is pmtad's answer); the exit status */
static int
follow(struct line_reader *r, const struct options *o)
{
    for (int first = 1;; first = 0) {
        int eof = 0;
        char *text = read_line(r, &eof);
        json_t *line;
        int rc = -1;

        if (text == NULL && eof)
            return fail("pmtad closed the trace before the attempt ended (did it stop?)");
        if (text == NULL)
            return EXIT_FAILED;
        if ((line = decode_line(text, first)) == NULL)
            return EXIT_FAILED;
        if (o->json) {
            printf("%s\n", text);
            if (first && !json_is_true(json_object_get(line, "ok")))
                rc = error_status(line);
        } else if (first && !json_is_true(json_object_get(line, "ok"))) {
            rc = report_error(line);
        } else if (first) {
            print_start(line, o);
        } else if (json_is_object(json_object_get(line, "trace"))) {
            print_trace_line(json_object_get(line, "trace"));
        } else if (json_is_true(json_object_get(line, "done"))) {
            char *why = printable(get_text(line, "why"), 200);
            json_t *ms = json_object_get(line, "ms");

            printf("%10.3f =  %s\n", json_is_number(ms) ? json_number_value(ms) : 0.0, why);
            free(why);
        }
        if (first) {
            /* the wait for the attempt has no time limit */
            struct timeval none = { 0, 0 };
            (void)setsockopt(r->fd, SOL_SOCKET, SO_RCVTIMEO, &none, sizeof none);
        }
        if (rc < 0 && !first && json_is_true(json_object_get(line, "done")))
            rc = 0;
        json_decref(line);
        fflush(stdout);
        if (rc >= 0)
            return rc;
    }
}

/* run_trace - see pmtactl.h */
int
run_trace(const struct options *o, const char *pattern)
{
    char *path = control_socket_path(o), *text;
    json_t *request;
    struct line_reader r = { .fd = -1 };
    int rc = EXIT_FAILED;

    if (path == NULL)
        return EXIT_FAILED;
    request = json_pack("{s:s, s:s, s:b}", "cmd", "trace", "queue", pattern, "data",
                        (o->given & OPT_LOG_DATA) != 0);
    text = json_dumps(request, JSON_COMPACT);
    json_decref(request);
    if ((r.fd = control_connect(path)) < 0) {
        rc = control_unreachable() ? control_unreachable() : EXIT_FAILED;
    } else {
        char *line = xasprintf("%s\n", text);

        r.cap = LINE_MAX_BYTES;
        r.buf = xmalloc(r.cap);
        if (control_send(r.fd, line, strlen(line)) == 0)
            rc = follow(&r, o);
        free(line);
        free(r.buf);
        close(r.fd);
    }
    free(text);
    free(path);
    return rc;
}
