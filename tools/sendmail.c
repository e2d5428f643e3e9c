/*
 * sendmail.c - the sendmail(8) drop-in: submit a message to the local pmtad
 *
 * NAME
 *   sendmail - read a message on standard input and submit it over SMTP to
 *   smtpd's pickup socket (RUNDIR/pickup), where <source {pickup}> applies
 *
 * SYNOPSIS
 *   sendmail [-t] [-i|-oi] [-f sender] [-F name] [-v] [-C config]
 *            [-N notify] [-R ret] [-V envid] [recipient ...]
 *   sendmail -bs
 *
 * DESCRIPTION
 *   Recipients come from the command line; with -t also from the To, Cc and
 *   Bcc headers (Postfix's rule: both sets are used), and Bcc is removed.
 *   Without -i a line holding a single "." ends the message. Line ends become
 *   CRLF; lines starting with "." are dot-stuffed. -F adds a From header
 *   when the message has none; without -F a missing From gets the sender.
 *   The transaction is all or nothing: one refused recipient aborts it.
 *   -bs relays an SMTP session between stdin/stdout and the pickup socket.
 *
 *   Socket: $PMTA_PICKUP_SOCKET, else the run-directory of -C CONFIG (a
 *   light line scan: the config may name key files we cannot read), else
 *   /run/pmta/pickup.
 *
 * DIAGNOSTICS (sysexits.h)
 *   EX_USAGE bad options or no recipients; EX_DATAERR unusable address or
 *   content refused; EX_NOUSER a recipient refused (5xx); EX_TEMPFAIL 4xx
 *   or pmtad not answering (socket refuses); EX_UNAVAILABLE no pickup
 *   socket (pmtad not running) or service refused; EX_NOPERM the socket
 *   cannot be opened, or submit-users leaves the caller out ("554 5.7.1");
 *   EX_IOERR, EX_PROTOCOL as named.
 *
 *   pmtad knows the caller by its uid (SO_PEERCRED): unless the user is in
 *   trusted-submit-users (root always is), -f is replaced by the user's own
 *   address, login@host-name.
 *
 * SECURITY
 *   Not setuid: it runs as the caller and only connects to a socket.
 *   Addresses are checked for control bytes and angle brackets before they
 *   are put into SMTP commands, so input cannot inject commands.
 */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <poll.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sysexits.h>
#include <unistd.h>

#define DEFAULT_SOCKET "/run/pmta/pickup"
#define HEADER_MAX     (1024 * 1024)
#define REPLY_MAX      4096
#define ADDR_MAX       254

struct opts {
    bool extract;          /* -t */
    bool ignore_dots;      /* -i, -oi */
    bool verbose;          /* -v */
    bool smtp_session;     /* -bs */
    const char *sender;    /* -f / -r */
    const char *full_name; /* -F */
    const char *config;    /* -C */
    const char *notify;    /* -N */
    const char *ret;       /* -R */
    const char *envid;     /* -V */
};

struct strlist {
    char **v;
    size_t n;
};

static bool verbose;

/* make install-sendmail looks for this to know a file is ours (upgrades need no FORCE) */
static const char install_marker[] __attribute__((used)) = "openpmta sendmail drop-in";

__attribute__((noreturn, format(printf, 2, 3))) static void
die(int code, const char *fmt, ...)
{
    va_list ap;

    fputs("sendmail: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(code);
}

static void *
xmalloc_or_die(size_t n)
{
    void *p = malloc(n ? n : 1);

    if (p == NULL)
        die(EX_OSERR, "out of memory");
    return p;
}

static char *
dup_or_die(const char *s, size_t n)
{
    char *p = xmalloc_or_die(n + 1);

    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

static void
list_add(struct strlist *l, char *s)
{
    l->v = realloc(l->v, (l->n + 1) * sizeof(*l->v));
    if (l->v == NULL)
        die(EX_OSERR, "out of memory");
    l->v[l->n++] = s;
}

/* --- options -------------------------------------------------------------------- */

static void
usage(void)
{
    die(EX_USAGE, "usage: sendmail [-t] [-i] [-f sender] [-F name] [-v] [-C config] "
                  "[-N notify] [-R full|hdrs] [-V envid] [recipient ...] | sendmail -bs");
}

/* option_arg - the value of -X: attached (-fuser) or the next argument */
static const char *
option_arg(char **argv, int *i, const char *attached)
{
    if (*attached)
        return attached;
    if (argv[*i + 1] == NULL)
        usage();
    return argv[++*i];
}

/* parse_o - -oi and friends; other sendmail -o options are accepted and ignored */
static void
parse_o(struct opts *o, const char *rest)
{
    if (strcmp(rest, "i") == 0)
        o->ignore_dots = true;
}

/* parse_b - -bs and the default -bm; other modes are refused */
static void
parse_b(struct opts *o, const char *mode)
{
    if (strcmp(mode, "s") == 0)
        o->smtp_session = true;
    else if (strcmp(mode, "m") != 0)
        die(EX_USAGE, "-b%s is not supported (only -bm and -bs)", mode);
}

static int
parse_options(int argc, char **argv, struct opts *o)
{
    int i;

    for (i = 1; i < argc && argv[i][0] == '-' && argv[i][1] != '\0'; i++) {
        const char *a = argv[i];

        if (strcmp(a, "--") == 0)
            return i + 1;
        switch (a[1]) {
        case 't':
            o->extract = true;
            break;
        case 'i':
            o->ignore_dots = true;
            break;
        case 'v':
            o->verbose = true;
            break;
        case 'f':
        case 'r':
            o->sender = option_arg(argv, &i, a + 2);
            break;
        case 'F':
            o->full_name = option_arg(argv, &i, a + 2);
            break;
        case 'C':
            o->config = option_arg(argv, &i, a + 2);
            break;
        case 'N':
            o->notify = option_arg(argv, &i, a + 2);
            break;
        case 'R':
            o->ret = option_arg(argv, &i, a + 2);
            break;
        case 'V':
            o->envid = option_arg(argv, &i, a + 2);
            break;
        case 'o':
            parse_o(o, a + 2);
            break;
        case 'b':
            parse_b(o, a + 2);
            break;
        case 'B':
        case 'h':
        case 'L':
        case 'O':
        case 'X':
            (void)option_arg(argv, &i, a + 2); /* accepted, no effect */
            break;
        case 'm':
        case 'n':
        case 'U':
        case 'e':
        case 'd':
            break;
        default:
            die(EX_USAGE, "unknown option %s", a);
        }
    }
    return i;
}

/* --- addresses -------------------------------------------------------------------- */

/* clean_address - trim and strip <>; NULL if it could inject SMTP */
static char *
clean_address(const char *s, size_t n)
{
    while (n && isspace((unsigned char)*s)) {
        s++;
        n--;
    }
    while (n && isspace((unsigned char)s[n - 1]))
        n--;
    if (n >= 2 && s[0] == '<' && s[n - 1] == '>') {
        s++;
        n -= 2;
    }
    if (n > ADDR_MAX)
        return NULL;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x21 || s[i] == 0x7f || s[i] == '<' || s[i] == '>')
            return NULL;
    return dup_or_die(s, n);
}

/* addr_from_item - one list item ("Name <a@b>", "a@b (c)", "a@b") -> address */
static void
addr_from_item(struct strlist *out, const char *s, size_t n)
{
    const char *lt = memchr(s, '<', n), *paren;
    char *a;

    if (lt) {
        const char *gt = memchr(lt, '>', n - (size_t)(lt - s));

        if (gt == NULL)
            die(EX_DATAERR, "unbalanced <> in a recipient header");
        s = lt + 1;
        n = (size_t)(gt - lt - 1);
    } else if ((paren = memchr(s, '(', n)) != NULL) {
        n = (size_t)(paren - s); /* "a@b (comment)" */
    }
    a = clean_address(s, n);
    if (a == NULL)
        die(EX_DATAERR, "bad address in a recipient header");
    if (*a)
        list_add(out, a);
    else
        free(a);
}

/* addr_list - split a header value at commas outside quotes, <> and () */
static void
addr_list(struct strlist *out, const char *v)
{
    int depth = 0;
    bool quoted = false;
    const char *start = v, *p;

    /* "group: a, b;" -> drop the group name */
    p = strchr(v, ':');
    if (p && (strchr(v, '@') == NULL || p < strchr(v, '@')) && strchr(v, '"') == NULL)
        start = v = p + 1;
    for (p = v;; p++) {
        char c = *p;

        if (c == '"' && depth == 0)
            quoted = !quoted;
        else if (!quoted && (c == '<' || c == '('))
            depth++;
        else if (!quoted && (c == '>' || c == ')') && depth > 0)
            depth--;
        if (c == '\0' || (!quoted && depth == 0 && (c == ',' || c == ';'))) {
            addr_from_item(out, start, (size_t)(p - start));
            if (c == '\0')
                break;
            start = p + 1;
        }
    }
}

/* --- the message -------------------------------------------------------------------- */

struct header {
    char *text; /* the whole field, unfolded lines joined by "\n" */
    size_t name_len;
};

struct message {
    struct header *h;
    size_t nh;
    bool ended;            /* a lone "." or EOF already seen in the header */
    char *first_body_line; /* read while looking for the end of the header */
    bool have_first;
};

static bool
lone_dot(const char *line, const struct opts *o)
{
    return !o->ignore_dots && strcmp(line, ".") == 0;
}

/* read_line - one input line without its LF (and CR); NULL at EOF */
static char *
read_line(char **buf, size_t *cap, bool *had_newline)
{
    ssize_t n = getline(buf, cap, stdin);

    if (n < 0) {
        if (ferror(stdin))
            die(EX_IOERR, "reading the message: %s", strerror(errno));
        return NULL;
    }
    *had_newline = n > 0 && (*buf)[n - 1] == '\n';
    if (*had_newline)
        (*buf)[--n] = '\0';
    if (n > 0 && (*buf)[n - 1] == '\r')
        (*buf)[--n] = '\0';
    return *buf;
}

static bool
is_header_start(const char *line)
{
    const char *p = line;

    while (*p > 32 && *p < 127 && *p != ':')
        p++;
    return p > line && *p == ':';
}

/* read_header - the header section, unfolded into fields */
static void
read_header(struct message *m, const struct opts *o)
{
    char *buf = NULL;
    size_t cap = 0, total = 0;
    bool nl, first = true;
    char *line;

    while ((line = read_line(&buf, &cap, &nl)) != NULL) {
        if (first && strncmp(line, "From ", 5) == 0) { /* mbox separator */
            first = false;
            continue;
        }
        first = false;
        if (lone_dot(line, o)) {
            m->ended = true;
            break;
        }
        if ((total += strlen(line)) > HEADER_MAX)
            die(EX_DATAERR, "message header too large");
        if ((line[0] == ' ' || line[0] == '\t') && m->nh > 0) {
            struct header *h = &m->h[m->nh - 1];
            size_t len = strlen(h->text);
            char *t = xmalloc_or_die(len + strlen(line) + 2);

            sprintf(t, "%s\n%s", h->text, line);
            free(h->text);
            h->text = t;
            continue;
        }
        if (!is_header_start(line)) {
            /* The body starts (the empty separator line included). */
            m->first_body_line = dup_or_die(line, strlen(line));
            m->have_first = true;
            break;
        }
        m->h = realloc(m->h, (m->nh + 1) * sizeof(*m->h));
        if (m->h == NULL)
            die(EX_OSERR, "out of memory");
        m->h[m->nh].text = dup_or_die(line, strlen(line));
        m->h[m->nh].name_len = (size_t)(strchr(line, ':') - line);
        m->nh++;
    }
    if (line == NULL)
        m->ended = true;
    free(buf);
}

static bool
header_is(const struct header *h, const char *name)
{
    return h->name_len == strlen(name) && strncasecmp(h->text, name, h->name_len) == 0;
}

static bool
has_header(const struct message *m, const char *name)
{
    for (size_t i = 0; i < m->nh; i++)
        if (header_is(&m->h[i], name))
            return true;
    return false;
}

/* extract_recipients - -t: To, Cc, Bcc; then drop Bcc */
static void
extract_recipients(struct message *m, struct strlist *rcpts)
{
    size_t kept = 0;

    for (size_t i = 0; i < m->nh; i++) {
        struct header *h = &m->h[i];

        if (header_is(h, "To") || header_is(h, "Cc") || header_is(h, "Bcc")) {
            char *v = dup_or_die(h->text + h->name_len + 1, strlen(h->text + h->name_len + 1));

            for (char *p = v; *p; p++)
                if (*p == '\n' || *p == '\t')
                    *p = ' ';
            addr_list(rcpts, v);
            free(v);
        }
        if (header_is(h, "Bcc"))
            free(h->text);
        else
            m->h[kept++] = *h;
    }
    m->nh = kept;
}

/* --- SMTP over the pickup socket ------------------------------------------------------ */

struct conn {
    int fd;
    char in[REPLY_MAX * 4];
    size_t inlen;
    char out[65536];
    size_t outlen;
};

static void
conn_flush(struct conn *c)
{
    size_t off = 0;

    while (off < c->outlen) {
        ssize_t n = write(c->fd, c->out + off, c->outlen - off);

        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            die(EX_TEMPFAIL, "lost the connection to pmtad: %s", strerror(errno));
        off += (size_t)n;
    }
    c->outlen = 0;
}

static void
conn_put(struct conn *c, const char *p, size_t n)
{
    while (n > 0) {
        size_t room = sizeof(c->out) - c->outlen, k = n < room ? n : room;

        memcpy(c->out + c->outlen, p, k);
        c->outlen += k;
        p += k;
        n -= k;
        if (c->outlen == sizeof(c->out))
            conn_flush(c);
    }
}

__attribute__((format(printf, 2, 3))) static void
command(struct conn *c, const char *fmt, ...)
{
    char line[1024];
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(line, sizeof(line) - 2, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof(line) - 2)
        die(EX_DATAERR, "SMTP command too long");
    if (verbose)
        fprintf(stderr, ">>> %s\n", line);
    memcpy(line + n, "\r\n", 2);
    conn_put(c, line, (size_t)n + 2);
    conn_flush(c);
}

/* reply_line - one reply line into LINE; -1 at EOF */
static int
reply_line(struct conn *c, char *line, size_t size)
{
    for (;;) {
        char *nl = memchr(c->in, '\n', c->inlen);
        ssize_t n;

        if (nl) {
            size_t len = (size_t)(nl - c->in) + 1, keep = len - 1;

            if (keep && c->in[keep - 1] == '\r')
                keep--;
            if (keep >= size)
                keep = size - 1;
            memcpy(line, c->in, keep);
            line[keep] = '\0';
            memmove(c->in, c->in + len, c->inlen - len);
            c->inlen -= len;
            return 0;
        }
        if (c->inlen == sizeof(c->in))
            die(EX_PROTOCOL, "reply line too long");
        n = read(c->fd, c->in + c->inlen, sizeof(c->in) - c->inlen);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        c->inlen += (size_t)n;
    }
}

/* reply - the code of a (multi-line) reply; TEXT gets its last line */
static int
reply(struct conn *c, char *text, size_t size)
{
    for (;;) {
        if (reply_line(c, text, size) < 0)
            die(EX_TEMPFAIL, "pmtad closed the connection");
        if (verbose)
            fprintf(stderr, "<<< %s\n", text);
        if (strlen(text) < 3 || !isdigit((unsigned char)text[0]) ||
            !isdigit((unsigned char)text[1]) || !isdigit((unsigned char)text[2]))
            die(EX_PROTOCOL, "bad reply from pmtad: %s", text);
        if (text[3] != '-')
            return atoi(text);
    }
}

/* run_directory - `run-directory DIR` from CONFIG, scanned as text */
static char *
run_directory(const char *config)
{
    FILE *f = fopen(config, "re");
    char line[4096], *dir = NULL;

    if (f == NULL)
        die(EX_NOINPUT, "cannot read %s: %s", config, strerror(errno));
    while (fgets(line, sizeof(line), f)) {
        char *p = line + strspn(line, " \t"), *v, *end;

        if (strncasecmp(p, "run-directory", 13) != 0 || !isspace((unsigned char)p[13]))
            continue;
        v = p + 13 + strspn(p + 13, " \t");
        if (*v == '"')
            v++;
        end = v + strcspn(v, "\"\r\n \t#");
        free(dir);
        dir = dup_or_die(v, (size_t)(end - v));
    }
    fclose(f);
    return dir;
}

static char *
socket_path(const struct opts *o)
{
    const char *env = getenv("PMTA_PICKUP_SOCKET");
    char *dir, *path;

    if (env && *env)
        return dup_or_die(env, strlen(env));
    if (o->config && (dir = run_directory(o->config)) != NULL) {
        path = xmalloc_or_die(strlen(dir) + 8);
        sprintf(path, "%s/pickup", dir);
        free(dir);
        return path;
    }
    return dup_or_die(DEFAULT_SOCKET, strlen(DEFAULT_SOCKET));
}

/* connect_pickup - EX_UNAVAILABLE when there is no socket, EX_TEMPFAIL when it refuses */
static int
connect_pickup(const char *path)
{
    struct sockaddr_un sun;
    int fd;

    if (strlen(path) >= sizeof(sun.sun_path))
        die(EX_USAGE, "socket path too long: %s", path);
    memset(&sun, 0, sizeof(sun));
    sun.sun_family = AF_UNIX;
    strcpy(sun.sun_path, path);
    if ((fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)) < 0)
        die(EX_OSERR, "socket: %s", strerror(errno));
    if (connect(fd, (struct sockaddr *)&sun, sizeof(sun)) == 0)
        return fd;
    if (errno == ENOENT || errno == ENOTDIR)
        die(EX_UNAVAILABLE, "pmtad is not running (no %s)", path);
    if (errno == EACCES || errno == EPERM)
        die(EX_NOPERM, "cannot connect to %s: %s", path, strerror(errno));
    die(EX_TEMPFAIL, "cannot connect to %s: %s", path, strerror(errno));
    return -1;
}

/* exit_for - sysexits code for a refused step */
static int
exit_for(int code, int permanent_code)
{
    return code >= 500 ? permanent_code : EX_TEMPFAIL;
}

/* greet - pmtad's greeting; "554 5.7.1" means submit-users leaves us out */
static void
greet(struct conn *c)
{
    char text[REPLY_MAX];
    int code = reply(c, text, sizeof(text));

    if (code / 100 == 2)
        return;
    die(code == 554 && strncmp(text + 4, "5.7.1", 5) == 0 ? EX_NOPERM
                                                          : exit_for(code, EX_UNAVAILABLE),
        "submission refused: %s", text);
}

static void
expect(struct conn *c, int want_class, int permanent_code, const char *what)
{
    char text[REPLY_MAX];
    int code = reply(c, text, sizeof(text));

    if (code / 100 != want_class)
        die(exit_for(code, permanent_code), "%s refused: %s", what, text);
}

/* --- submitting ----------------------------------------------------------------------- */

static const char *
local_host(void)
{
    static char host[256];

    if (host[0] == '\0' && gethostname(host, sizeof(host) - 1) != 0)
        strcpy(host, "localhost");
    return host;
}

/* default_sender - login@host */
static char *
default_sender(void)
{
    struct passwd *pw = getpwuid(getuid());
    const char *user = pw ? pw->pw_name : "nobody";
    char *s = xmalloc_or_die(strlen(user) + strlen(local_host()) + 2);

    sprintf(s, "%s@%s", user, local_host());
    return s;
}

/* send_line - one message line, dot-stuffed, CRLF-terminated */
static void
send_line(struct conn *c, const char *line)
{
    if (line[0] == '.')
        conn_put(c, ".", 1);
    conn_put(c, line, strlen(line));
    conn_put(c, "\r\n", 2);
}

static void
send_header_field(struct conn *c, const char *text)
{
    const char *p = text;

    for (;;) {
        const char *nl = strchr(p, '\n');
        char *one = dup_or_die(p, nl ? (size_t)(nl - p) : strlen(p));

        send_line(c, one);
        free(one);
        if (nl == NULL)
            break;
        p = nl + 1;
    }
}

static void
send_message(struct conn *c, const struct message *m, const struct opts *o, const char *sender)
{
    char *buf = NULL;
    size_t cap = 0;
    bool nl;
    char *line;

    if (!has_header(m, "From")) {
        char hdr[1024];

        if (o->full_name)
            snprintf(hdr, sizeof(hdr), "From: \"%s\" <%s>", o->full_name, sender);
        else
            snprintf(hdr, sizeof(hdr), "From: <%s>", sender);
        send_line(c, hdr);
    }
    for (size_t i = 0; i < m->nh; i++)
        send_header_field(c, m->h[i].text);
    if (m->have_first) {
        if (lone_dot(m->first_body_line, o))
            goto done;
        if (m->first_body_line[0] != '\0')
            send_line(c, ""); /* the separator the input lacked */
        send_line(c, m->first_body_line);
    }
    while (!m->ended && (line = read_line(&buf, &cap, &nl)) != NULL) {
        if (lone_dot(line, o))
            break;
        send_line(c, line);
    }
done:
    free(buf);
    conn_put(c, ".\r\n", 3);
    conn_flush(c);
}

static void
submit(const struct opts *o, struct strlist *rcpts, struct message *m, const char *sender)
{
    struct conn *c = calloc(1, sizeof(*c));
    char *path = socket_path(o), params[256] = "", rparams[128] = "";

    if (c == NULL)
        die(EX_OSERR, "out of memory");
    c->fd = connect_pickup(path);
    free(path);
    greet(c);
    command(c, "EHLO %s", local_host());
    expect(c, 2, EX_PROTOCOL, "EHLO");
    if (o->ret)
        snprintf(params, sizeof(params), " RET=%s",
                 strcasecmp(o->ret, "hdrs") == 0 ? "HDRS" : "FULL");
    if (o->envid && strlen(o->envid) < 100 &&
        strspn(o->envid, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789.-_@") ==
            strlen(o->envid))
        snprintf(params + strlen(params), sizeof(params) - strlen(params), " ENVID=%s", o->envid);
    if (o->notify && strspn(o->notify, "NEVRSUCFAILDLYnevrsucfaildly,") == strlen(o->notify) &&
        strlen(o->notify) < 64)
        snprintf(rparams, sizeof(rparams), " NOTIFY=%s", o->notify);
    command(c, "MAIL FROM:<%s>%s", sender, params);
    expect(c, 2, EX_DATAERR, "sender");
    for (size_t i = 0; i < rcpts->n; i++) {
        char text[REPLY_MAX];
        int code;

        command(c, "RCPT TO:<%s>%s", rcpts->v[i], rparams);
        if ((code = reply(c, text, sizeof(text))) / 100 != 2) {
            command(c, "QUIT");
            die(exit_for(code, EX_NOUSER), "recipient %s refused: %s", rcpts->v[i], text);
        }
    }
    command(c, "DATA");
    expect(c, 3, EX_DATAERR, "DATA");
    send_message(c, m, o, sender);
    expect(c, 2, EX_DATAERR, "message");
    command(c, "QUIT");
    close(c->fd);
    free(c);
}

/* --- -bs: relay an SMTP session ---------------------------------------------------------- */

static bool
pump(int from, int to)
{
    char buf[65536];
    ssize_t n = read(from, buf, sizeof(buf));

    if (n < 0 && errno == EINTR)
        return true;
    if (n <= 0)
        return false;
    for (ssize_t off = 0; off < n;) {
        ssize_t w = write(to, buf + off, (size_t)(n - off));

        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return false;
        off += w;
    }
    return true;
}

static int
relay_session(const struct opts *o)
{
    char *path = socket_path(o);
    int fd = connect_pickup(path);
    struct pollfd p[2] = { { STDIN_FILENO, POLLIN, 0 }, { fd, POLLIN, 0 } };
    bool stdin_open = true;

    free(path);
    for (;;) {
        p[0].fd = stdin_open ? STDIN_FILENO : -1;
        if (poll(p, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            die(EX_OSERR, "poll: %s", strerror(errno));
        }
        if (p[1].revents & (POLLIN | POLLHUP | POLLERR)) {
            if (!pump(fd, STDOUT_FILENO))
                break; /* smtpd closed: the session is over */
        }
        if (stdin_open && (p[0].revents & (POLLIN | POLLHUP | POLLERR))) {
            if (!pump(STDIN_FILENO, fd)) {
                stdin_open = false;
                shutdown(fd, SHUT_WR);
            }
        }
    }
    close(fd);
    return EX_OK;
}

int
main(int argc, char **argv)
{
    struct opts o = { 0 };
    struct strlist rcpts = { 0 };
    struct message m = { 0 };
    char *sender;
    int first = parse_options(argc, argv, &o);

    verbose = o.verbose;
    if (o.smtp_session)
        return relay_session(&o);
    for (int i = first; i < argc; i++) {
        char *a = clean_address(argv[i], strlen(argv[i]));

        if (a == NULL || *a == '\0')
            die(EX_DATAERR, "bad recipient address '%s'", argv[i]);
        list_add(&rcpts, a);
    }
    if (o.sender) {
        sender = clean_address(o.sender, strlen(o.sender));
        if (sender == NULL)
            die(EX_DATAERR, "bad sender address '%s'", o.sender);
    } else {
        sender = default_sender();
    }
    if (o.full_name && strpbrk(o.full_name, "\r\n\"\\"))
        die(EX_DATAERR, "-F name must not contain quotes, backslashes or line breaks");
    read_header(&m, &o);
    if (o.extract)
        extract_recipients(&m, &rcpts);
    if (rcpts.n == 0)
        die(EX_USAGE, "no recipients given");
    submit(&o, &rcpts, &m, sender);
    for (size_t i = 0; i < rcpts.n; i++)
        free(rcpts.v[i]);
    free(rcpts.v);
    for (size_t i = 0; i < m.nh; i++)
        free(m.h[i].text);
    free(m.h);
    free(m.first_body_line);
    free(sender);
    return EX_OK;
}
