/*
 * fuzz_conf.c - the sandbox and the configuration walk shared by the
 * configuration fuzz targets (fuzz_cfg_parse.c, fuzz_snapshot.c); see
 * fuzz_conf.h
 *
 * SECURITY: the wrappers exist so that fuzz inputs, which name arbitrary
 * paths, can never make the fuzzer read (or glob) the host's files.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <glob.h>
#include <limits.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fuzz.h"
#include "fuzz_conf.h"

int __real_open(const char *path, int flags, ...);
int __wrap_open(const char *path, int flags, ...);
int __real_glob(const char *pattern, int flags, int (*errfunc)(const char *, int), glob_t *g);
int __wrap_glob(const char *pattern, int flags, int (*errfunc)(const char *, int), glob_t *g);

static char sandbox[256]; /* the temporary directory */
static bool loading;      /* a load runs: only the sandbox exists */

/* map_path - where PATH is in the sandbox (into OUT), or NULL when it leaves it */
static const char *
map_path(const char *path, char *out, size_t outsize)
{
    size_t n = strlen(sandbox);
    char *real;
    int inside;

    if (strncmp(path, sandbox, n) == 0 && path[n] == '/')
        snprintf(out, outsize, "%s", path); /* already mapped (glob results, names) */
    else if (snprintf(out, outsize, "%s/%s", sandbox, path) >= (int)outsize)
        return NULL;
    if (strstr(out, "/..") == NULL)
        return out;
    if ((real = realpath(out, NULL)) == NULL)
        return NULL;
    inside = strncmp(real, sandbox, n) == 0 && real[n] == '/';
    free(real);
    return inside ? out : NULL;
}

int
__wrap_open(const char *path, int flags, ...)
{
    char mapped[PATH_MAX];
    va_list ap;
    int mode;

    va_start(ap, flags);
    mode = flags & O_CREAT ? va_arg(ap, int) : 0;
    va_end(ap);
    if (loading && (path = map_path(path, mapped, sizeof mapped)) == NULL) {
        errno = ENOENT;
        return -1;
    }
    return __real_open(path, flags, mode);
}

int
__wrap_glob(const char *pattern, int flags, int (*errfunc)(const char *, int), glob_t *g)
{
    char mapped[PATH_MAX];

    if (loading && (pattern = map_path(pattern, mapped, sizeof mapped)) == NULL) {
        memset(g, 0, sizeof *g);
        return GLOB_NOMATCH;
    }
    return __real_glob(pattern, flags, errfunc, g);
}

#ifndef PMTA_SRCDIR
#define PMTA_SRCDIR "."
#endif

/* Files of the sandbox: NAME, then its text, or NULL and the source file it copies. */
static const char *const sandbox_files[][3] = {
    { "inc.conf", "<domain included.example>\nmax-smtp-out 3\n</domain>\n", NULL },
    { "sub/a.conf",
      "<virtual-mta inc-vmta>\nsmtp-source-host 192.0.2.9 a.example\n</virtual-mta>\n", NULL },
    { "sub/b.conf", "http-access 10.0.0.0/8 monitor\ninclude ../inc.conf\n", NULL },
    { "loop.conf", "include loop.conf\n", NULL },
    { "patterns.conf", "reply /421-4\\.7\\.0 .*detected/ mode=backoff\n", NULL },
    { "etc/pmta/dkim.key", NULL, "t/data/dkim/test.key" },
    { "etc/pmta/invalid.key", NULL, "t/data/dkim/invalid.key" },
};
static const char *const sandbox_dirs[] = { "sub", "etc", "etc/pmta" };

/* put_file - NAME in the sandbox with TEXT, or a copy of source file FROM */
static void
put_file(const char *name, const char *text, const char *from)
{
    const char *src = getenv("PMTA_SRCDIR");
    char path[512], buf[4096];
    FILE *in = NULL, *out;
    size_t n;

    snprintf(path, sizeof path, "%s/%s", sandbox, name);
    if ((out = fopen(path, "w")) == NULL)
        abort();
    if (text) {
        fputs(text, out);
    } else {
        snprintf(buf, sizeof buf, "%s/%s", src && *src ? src : PMTA_SRCDIR, from);
        if ((in = fopen(buf, "r")) == NULL) {
            fprintf(stderr, "fuzz: cannot read %s (set PMTA_SRCDIR)\n", buf);
            abort();
        }
        while ((n = fread(buf, 1, sizeof buf, in)) > 0)
            fwrite(buf, 1, n, out);
        fclose(in);
    }
    if (fclose(out) != 0)
        abort();
}

static int
remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)flag, (void)ftw;
    remove(path);
    return 0;
}

/* remove_sandbox - the sandbox and whatever the targets wrote into it */
static void
remove_sandbox(void)
{
    nftw(sandbox, remove_entry, 8, FTW_DEPTH | FTW_PHYS);
}

const char *
fuzz_conf_sandbox(void)
{
    const char *tmp = getenv("TMPDIR");
    char path[512];

    if (sandbox[0])
        return sandbox;
    if (snprintf(sandbox, sizeof sandbox, "%s/pmta-fuzz.XXXXXX", tmp && *tmp ? tmp : "/tmp") >=
            (int)sizeof sandbox ||
        mkdtemp(sandbox) == NULL)
        abort();
    atexit(remove_sandbox);
    for (size_t i = 0; i < sizeof sandbox_dirs / sizeof sandbox_dirs[0]; i++) {
        snprintf(path, sizeof path, "%s/%s", sandbox, sandbox_dirs[i]);
        if (mkdir(path, 0700) != 0)
            abort();
    }
    for (size_t i = 0; i < sizeof sandbox_files / sizeof sandbox_files[0]; i++)
        put_file(sandbox_files[i][0], sandbox_files[i][1], sandbox_files[i][2]);
    return sandbox;
}

void
fuzz_conf_enter(void)
{
    fuzz_conf_sandbox();
    loading = true;
}

void
fuzz_conf_leave(void)
{
    loading = false;
}

/* read_str - a string the configuration hands out must end inside it */
static size_t
read_str(const char *s)
{
    FUZZ_CHECK(s != NULL);
    return strlen(s);
}

/* use_record - the typed record of a structured value, as qmgr and cleanup read it */
static void
use_record(const struct cfg *c, const struct cfg_value *v)
{
    struct cfg_route *route;
    char err[256];

    switch ((enum cfg_type)v->type) {
    case CFG_T_REPLY:
        read_str(cfg_str(c, v->reply.regex));
        break;
    case CFG_T_PATTERN:
        read_str(cfg_str(c, v->pattern.regex));
        read_str(cfg_str(c, v->pattern.header));
        read_str(cfg_str(c, v->pattern.target));
        break;
    case CFG_T_BOUNCE_PATTERN:
        read_str(cfg_str(c, v->bounce.regex));
        read_str(cfg_str(c, v->bounce.category));
        break;
    case CFG_T_DOMAIN_KEY:
        read_str(cfg_str(c, v->key.selector));
        read_str(cfg_str(c, v->key.domain));
        read_str(cfg_str(c, v->key.path));
        break;
    default:
        break;
    }
    /* smtp-out parses smtp-hosts again from the validated text */
    if (v->directive == CFG_D_SMTP_HOSTS && !(v->flags & CFG_VALUE_UNSET) &&
        cfg_route_parse(cfg_str(c, v->text), &route, err, sizeof err) == 0)
        cfg_route_free(route);
}

static void
use_values(const struct cfg *c)
{
    char text[512];

    for (uint32_t i = 0; i < c->nvalues; i++) {
        const struct cfg_value *v = &c->values[i];
        const int64_t *list = cfg_list(c, v);
        int64_t sum = 0;

        cfg_format_value(c, v, text, sizeof text);
        read_str(cfg_str(c, v->text));
        read_str(cfg_str(c, v->file));
        for (uint32_t k = 0; list && k < v->list_len; k++)
            sum += list[k] & 1;
        (void)sum;
        use_record(c, v);
    }
    for (int d = 0; d < CFG_D_COUNT; d++)
        (void)cfg_global(c, (enum cfg_directive)d);
}

static void
use_queues(const struct cfg *c, FILE *out)
{
    struct cfg_resolved r;
    char err[256], queue[600];
    uint32_t it = 0, s;

    while ((s = cfg_next_scope(c, CFG_S_DOMAIN, &it)) != CFG_NONE) {
        const struct cfg_scope *sc = &c->scopes[s];
        const char *name = cfg_str(c, sc->name);
        const char *vmta = NULL;

        read_str(name);
        if (sc->parent < c->nscopes && c->scopes[sc->parent].kind == CFG_S_VMTA)
            vmta = cfg_str(c, c->scopes[sc->parent].name);
        (void)cfg_domain_match(c, sc, "mail.example.com");
        (void)cfg_resolve_queue(c, name, vmta, &r);
        snprintf(queue, sizeof queue, "%s%s%s", name, vmta ? "/" : "", vmta ? vmta : "");
        if (out)
            (void)cfg_show_settings(c, queue, out, err, sizeof err);
    }
    it = 0;
    while ((s = cfg_next_scope(c, CFG_S_VMTA, &it)) != CFG_NONE) {
        const char *vmta = cfg_str(c, c->scopes[s].name);

        (void)cfg_resolve_vmta(c, vmta, &r);
        (void)cfg_resolve_queue(c, "example.com", vmta, &r);
    }
    (void)cfg_resolve_queue(c, "gmail.com", NULL, &r);
    (void)cfg_resolve_queue(c, "[192.0.2.1]", "{default}", &r);
}

static void
use_sessions(const struct cfg *c)
{
    struct cfg_resolved r;
    struct sockaddr_in in4 = { .sin_family = AF_INET };
    struct sockaddr_in6 in6 = { .sin6_family = AF_INET6 };
    uint8_t a4[4], a6[16];
    uint32_t it = 0, s;

    inet_pton(AF_INET, "127.0.0.1", &in4.sin_addr);
    inet_pton(AF_INET6, "::ffff:10.1.2.3", &in6.sin6_addr);
    while ((s = cfg_next_scope(c, CFG_S_SOURCE, &it)) != CFG_NONE)
        (void)cfg_resolve_session(c, (const struct sockaddr *)&in4, cfg_str(c, c->scopes[s].name),
                                  NULL, &r);
    it = 0;
    while ((s = cfg_next_scope(c, CFG_S_SMTP_USER, &it)) != CFG_NONE)
        (void)cfg_resolve_session(c, (const struct sockaddr *)&in6, NULL,
                                  cfg_str(c, c->scopes[s].name), &r);
    (void)cfg_resolve_session(c, NULL, "{pickup}", NULL, &r);
    inet_pton(AF_INET, "10.0.0.7", a4);
    inet_pton(AF_INET6, "2001:db8::7", a6);
    (void)cfg_http_access(c, AF_INET, a4);
    (void)cfg_http_access(c, AF_INET6, a6);
}

void
fuzz_conf_use(const struct cfg *c)
{
    FILE *out = fopen("/dev/null", "w");

    use_values(c);
    use_queues(c, out);
    use_sessions(c);
    (void)cfg_process_count(c, CFG_D_SMTPD_PROCESSES);
    if (out)
        fclose(out);
}
