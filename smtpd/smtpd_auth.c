/*
 * smtpd_auth.c - verify AUTH PLAIN/LOGIN credentials
 *
 * Two sources of users, tried in order:
 *   <smtp-user NAME>  password PASS  [source NAME]   (PowerMTA; the password is
 *                      compared in constant time)
 *   auth_file = PATH  (the seed's; `user:crypt-hash` per line, any hash
 *                      crypt(3) knows: $6$ SHA-512, $5$, $y$ yescrypt, ...)
 * The auth file is read at each attempt, so edits take effect at once; it
 * must be readable by the run-as-user. A hash costs milliseconds of CPU, so
 * verification runs on the libuv thread pool and never stalls other sessions.
 *
 * Owns: one work request per attempt (credentials copied, wiped when done).
 *
 * SECURITY: handles passwords. Copies are wiped (OPENSSL_cleanse) before
 * they are freed; comparisons are constant time (CRYPTO_memcmp); user
 * names are matched exactly; nothing secret is logged.
 */
#include "config.h"

#include <crypt.h>
#include <errno.h>
#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "msg.h"
#include "xalloc.h"
#include "smtpd.h"

#define AUTH_FILE_LINE_MAX 1024

struct auth_work {
    uv_work_t req;
    const struct cfg *cfg;
    char *auth_file;
    char *user;
    char *pass;
    bool ok;
    int file_errno;
    const char *source; /* in cfg */
    smtpd_auth_done_fn done;
    void *ctx;
};

/* same_secret - constant-time equality of two NUL-terminated secrets */
static bool
same_secret(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    /* Compare the same number of bytes whatever the lengths are. */
    int diff = CRYPTO_memcmp(a, b, la < lb ? la : lb);

    return diff == 0 && la == lb;
}

/* check_smtp_users - <smtp-user USER> with `password` (authentication-method password) */
static bool
check_smtp_users(const struct cfg *c, const char *user, const char *pass, const char **source)
{
    uint32_t it = 0, s;

    while ((s = cfg_next_scope(c, CFG_S_SMTP_USER, &it)) != CFG_NONE) {
        const struct cfg_value *pw, *method, *src;

        if (strcmp(cfg_str(c, c->scopes[s].name), user) != 0)
            continue;
        method = cfg_scope_get(c, s, CFG_D_AUTHENTICATION_METHOD);
        if (method && strcmp(cfg_str(c, method->text), "password") != 0)
            return false; /* system/certificate: not supported here */
        pw = cfg_scope_get(c, s, CFG_D_PASSWORD);
        if (pw == NULL || !same_secret(cfg_str(c, pw->text), pass))
            return false;
        src = cfg_scope_get(c, s, CFG_D_SOURCE_NAME);
        *source = src ? cfg_str(c, src->text) : NULL;
        return true;
    }
    return false;
}

/* check_hash - does PASS match crypt(3) HASH? */
static bool
check_hash(const char *hash, const char *pass)
{
    struct crypt_data *cd = xcalloc(1, sizeof(*cd));
    const char *out = crypt_r(pass, hash, cd);
    /* crypt_r fails with "*" or NULL; never accept an empty or failure hash. */
    bool ok = out && *hash && out[0] != '*' && same_secret(out, hash);

    OPENSSL_cleanse(cd, sizeof(*cd));
    free(cd);
    return ok;
}

/* check_auth_file - `user:hash` lines; '#' comments and blank lines ignored */
static bool
check_auth_file(const char *path, const char *user, const char *pass, int *file_errno)
{
    char line[AUTH_FILE_LINE_MAX];
    size_t ulen = strlen(user);
    bool ok = false;
    FILE *f = fopen(path, "re");

    if (f == NULL) {
        *file_errno = errno; /* logged on the loop thread: msg_* is not thread-safe */
        return false;
    }
    while (!ok && fgets(line, sizeof(line), f)) {
        line[strcspn(line, "\r\n")] = '\0';
        if (line[0] == '#' || strncmp(line, user, ulen) != 0 || line[ulen] != ':')
            continue;
        ok = check_hash(line + ulen + 1, pass);
        break; /* first entry for the user decides */
    }
    OPENSSL_cleanse(line, sizeof(line));
    fclose(f);
    return ok;
}

/* verify - smtp-user blocks, then the auth file; *FILE_ERRNO set when it cannot be read */
static bool
verify(const struct cfg *c, const char *auth_file, const char *user, const char *pass,
       const char **source, int *file_errno)
{
    *source = NULL;
    if (*user == '\0' || strchr(user, ':') != NULL)
        return false;
    if (check_smtp_users(c, user, pass, source))
        return true;
    return auth_file != NULL && check_auth_file(auth_file, user, pass, file_errno);
}

/* smtpd_auth_verify - see smtpd.h */
bool
smtpd_auth_verify(const struct cfg *c, const char *auth_file, const char *user, const char *pass,
                  const char **source)
{
    int file_errno = 0;
    bool ok = verify(c, auth_file, user, pass, source, &file_errno);

    if (file_errno)
        msg_warn("auth_file %s: %s", auth_file, strerror(file_errno));
    return ok;
}

static void
auth_work(uv_work_t *req)
{
    struct auth_work *w = req->data;

    w->ok = verify(w->cfg, w->auth_file, w->user, w->pass, &w->source, &w->file_errno);
}

static void
wipe_free(char *s)
{
    if (s) {
        OPENSSL_cleanse(s, strlen(s));
        free(s);
    }
}

static void
auth_work_done(uv_work_t *req, int status)
{
    struct auth_work *w = req->data;

    if (w->file_errno)
        msg_warn("auth_file %s: %s", w->auth_file, strerror(w->file_errno));
    w->done(w->ctx, status == 0 && w->ok, w->source);
    free(w->auth_file);
    wipe_free(w->user);
    wipe_free(w->pass);
    free(w);
}

/* smtpd_auth_check - see smtpd.h */
void
smtpd_auth_check(uv_loop_t *loop, const struct cfg *c, const char *auth_file, const char *user,
                 const char *pass, smtpd_auth_done_fn done, void *ctx)
{
    struct auth_work *w = xcalloc(1, sizeof(*w));

    w->req.data = w;
    w->cfg = c;
    w->auth_file = auth_file ? xstrdup(auth_file) : NULL;
    w->user = xstrdup(user);
    w->pass = xstrdup(pass);
    w->done = done;
    w->ctx = ctx;
    if (uv_queue_work(loop, &w->req, auth_work, auth_work_done) != 0) {
        w->ok = false;
        auth_work_done(&w->req, -1);
    }
}
