/*
 * cleanup_dkim_sign.c - DKIM signatures with OpenDKIM: one library handle per
 * signed-header list, a message's signatures as a job any thread can run,
 * and the hand-over of parsed keys to OpenDKIM
 *
 * Owns: the OpenDKIM library handles of a struct cleanup_dkim (made on the
 * loop thread on first use, dkim_close()d by cleanup_dkim_free()), each job
 * and each per-signature DKIM handle (dkim_free() before run() returns).
 * Nothing here canonicalises, hashes or signs by hand: that is all OpenDKIM's.
 *
 * The header list: dkim_signhdrs() on each message would compile the list
 * into a regular expression every time; DKIM_OPTS_SIGNHDRS on a library
 * handle compiles it once, so each distinct list gets its own handle.
 *
 * The parsed key: dkim_sign() takes the key as PEM text, and dkim_eom()
 * parses it for every message (PEM_read_bio_PrivateKey(), then a legacy RSA
 * object with its own blinding and Montgomery set-up). Under OpenSSL 3.0
 * that costs more than the RSA signature itself, and OpenDKIM offers no way
 * to pass a parsed key, nor to canonicalise and hash without signing. So
 * this file defines PEM_read_bio_PrivateKey() itself. The dynamic linker
 * binds libopendkim's call to the executable's definition before
 * libcrypto's; while this thread is inside dkim_eom() for key K (the
 * thread-local `handover`) and the bytes to parse are exactly K's PEM text,
 * it returns K's key as parsed at load. Every other call is OpenSSL's own
 * PEM_read_bio_PrivateKey_ex(). Were OpenDKIM to parse some other way,
 * signing would still be correct, only slower: stats.key_reuses would stay
 * 0, and test_dkim.py checks it does not.
 *
 * What OpenDKIM is handed, and what it does with it:
 *   - RSA: a new reference to K's EVP_PKEY, whose legacy RSA object (made
 *     at load) carries the blinding and Montgomery state across messages;
 *     OpenDKIM frees both references. Its RSA_sign() error path frees the
 *     RSA reference twice (once there, once in dkim_free()), so each
 *     hand-over lends one more RSA reference and takes it back only after a
 *     successful dkim_eom(): a failure leaks a reference rather than freeing
 *     a shared object under other threads.
 *   - Ed25519: a copy of K (EVP_PKEY_dup, ~2 us against a ~50 us
 *     signature). OpenDKIM 2.11's dkim_free() frees neither the key nor its
 *     64-byte signature buffer for Ed25519 (it does for RSA): about 1.3 KB
 *     lost per message unpatched. The copy carries ex_data whose free
 *     callback tells us whether OpenDKIM released it; when it did not, we
 *     free the copy and the buffer, which our allocator (dkim_init's
 *     malloc hook) saw being made right after the hand-over. An OpenDKIM
 *     that frees them itself is detected the same way and left alone.
 *
 * Folding: OpenDKIM folds the DKIM-Signature field it signs (b= empty) and
 * the one it returns (b= filled) alike only because, for RSA, it predicts
 * the signature's length and wraps before "b=" in both. It does not for
 * Ed25519, so the two can fold differently before "b=", which relaxed
 * header canonicalisation forgives and simple does not: an Ed25519
 * signature with simple header canonicalisation is made unfolded (margin 0;
 * one line of a few hundred bytes, well under RFC 5322's 998).
 *
 * SECURITY: the key's PEM text and parsed form are read here, never
 * written or logged; an error names the selector and domain only.
 */
#define OPENSSL_SUPPRESS_DEPRECATED /* EVP_PKEY_get1_RSA/RSA_free: see the file header */

#include <ctype.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <opendkim/dkim.h>
#include <openssl/bio.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>

#include "buf.h"
#include "xalloc.h"

#include "cleanup_dkim_impl.h"

#define SIGHDR_NAME "DKIM-Signature"
#define DOMAIN_MAX  253

struct dkim_lib {
    char *headers; /* the list as compiled: lower-case names joined by ':' */
    DKIM_LIB *lib;
    struct dkim_lib *next;
};

struct job_sig {
    char *selector, *domain;
    const struct cleanup_dkim_key *key;
    char *field; /* "DKIM-Signature: ...\r\n" once made */
};

struct cleanup_dkim_job {
    struct cleanup_dkim *dk;
    DKIM_LIB *lib;
    dkim_canon_t hc, bc;
    char id[64];
    struct job_sig sig[CFG_DKIM_ALG_MAX];
    size_t n;
    int status; /* 0, or -EIO with err */
    char err[300];
};

/* One signature's OpenDKIM handle's memory closure (dkim_sign()'s memclosure). */
struct sig_mem {
    int catch_next; /* the next allocation is Ed25519's signature buffer */
    void *sig_buf;  /* that buffer, until OpenDKIM frees it through us */
};

/* What PEM_read_bio_PrivateKey() may hand over on this thread, inside dkim_eom() only. */
static _Thread_local struct {
    struct cleanup_dkim *dk;
    const struct cleanup_dkim_key *key; /* whose PEM text to recognise */
    EVP_PKEY *give;                     /* Ed25519: the copy to give away (once) */
    struct sig_mem *mem;
} handover;

/* ex_data slot of an Ed25519 copy: points at an int set to 1 when the copy is freed */
static int released_idx = -1;

static void
on_copy_freed(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl, void *argp)
{
    (void)parent, (void)ad, (void)idx, (void)argl, (void)argp;
    if (ptr)
        *(int *)ptr = 1;
}

/* PEM_read_bio_PrivateKey - OpenSSL's function, answering OpenDKIM's parse of a cached key */
EVP_PKEY *
PEM_read_bio_PrivateKey(BIO *bp, EVP_PKEY **x, pem_password_cb *cb, void *u)
{
    const struct cleanup_dkim_key *k = handover.key;
    EVP_PKEY *given = NULL;
    char *data = NULL;
    long n;

    if (k != NULL && bp != NULL && x == NULL && cb == NULL &&
        (n = BIO_get_mem_data(bp, &data)) > 0 && data != NULL && (size_t)n == k->pemlen &&
        memcmp(data, k->pem, k->pemlen) == 0) {
        if (k->alg == CFG_DKIM_ED25519_SHA256 && handover.give != NULL) {
            given = handover.give;
            handover.give = NULL;
            handover.mem->catch_next = 1;
        } else if (k->alg == CFG_DKIM_RSA_SHA256 && EVP_PKEY_up_ref(k->pkey) == 1) {
            given = k->pkey;
        }
        if (given) {
            atomic_fetch_add(&handover.dk->key_reuses, 1);
            return given;
        }
    }
    return PEM_read_bio_PrivateKey_ex(bp, x, cb, u, NULL, NULL);
}

/* sig_mem_alloc - dkim_init's malloc hook: remembers Ed25519's signature buffer */
static void *
sig_mem_alloc(void *closure, size_t n)
{
    struct sig_mem *m = closure;
    void *p = malloc(n);

    if (m && m->catch_next) {
        m->catch_next = 0;
        m->sig_buf = p;
    }
    return p;
}

/* sig_mem_free - dkim_init's free hook */
static void
sig_mem_free(void *closure, void *p)
{
    struct sig_mem *m = closure;

    if (m && p == m->sig_buf)
        m->sig_buf = NULL;
    free(p);
}

/* --- library handles, one per header list ---------------------------------------- */

/* header_list - dkim-headers as a NULL-terminated array; From always in it */
static char **
header_list(const char *spec)
{
    char *copy = xstrdup(spec ? spec : CLEANUP_DKIM_DEFAULT_HEADERS), *tok, *save = NULL;
    char **v = xcalloc(strlen(copy) / 2 + 3, sizeof(*v));
    size_t n = 0, i;
    int have_from = 0;

    for (tok = strtok_r(copy, ":, \t", &save); tok; tok = strtok_r(NULL, ":, \t", &save)) {
        for (i = 0; tok[i]; i++) { /* OpenDKIM compiles the list into a regex */
            if (!isalnum((unsigned char)tok[i]) && tok[i] != '-' && tok[i] != '_')
                break;
            tok[i] = (char)tolower((unsigned char)tok[i]);
        }
        if (tok[i] != '\0')
            continue;
        have_from |= strcmp(tok, "from") == 0;
        v[n++] = xstrdup(tok);
    }
    if (!have_from) /* RFC 6376 5.4: From MUST be signed */
        v[n++] = xstrdup("from");
    free(copy);
    return v;
}

static void
free_list(char **v)
{
    for (size_t i = 0; v && v[i]; i++)
        free(v[i]);
    free(v);
}

static char *
join_list(char **v)
{
    struct buf b;

    buf_init(&b, 0);
    for (size_t i = 0; v[i]; i++) {
        if (i)
            buf_append(&b, ":", 1);
        buf_append_str(&b, v[i]);
    }
    return buf_detach(&b, NULL);
}

/* new_lib - an OpenDKIM handle that signs the header fields NAMES; NULL and ERR */
static DKIM_LIB *
new_lib(char **names, char *err, size_t errlen)
{
    /*
     * No DKIM_LIBFLAGS_FIXCRLF: cleanup_message_parse() has made every line
     * end CRLF already, and the flag makes OpenDKIM copy the body byte by byte
     * looking for bare LFs, about 0.6 ms per 100 KB (a third of signing it).
     */
    unsigned int flags = 0;
    DKIM_LIB *lib = dkim_init(sig_mem_alloc, sig_mem_free);

    if (released_idx < 0) /* the loop thread, before any signing thread exists */
        released_idx = EVP_PKEY_get_ex_new_index(0, NULL, NULL, NULL, on_copy_freed);
    if (lib == NULL) {
        snprintf(err, errlen, "dkim_init failed");
        return NULL;
    }
    if (dkim_options(lib, DKIM_OP_SETOPT, DKIM_OPTS_FLAGS, &flags, sizeof(flags)) != DKIM_STAT_OK ||
        dkim_options(lib, DKIM_OP_SETOPT, DKIM_OPTS_SIGNHDRS, names, sizeof(char **)) !=
            DKIM_STAT_OK) {
        snprintf(err, errlen, "dkim_options(FLAGS, SIGNHDRS) failed");
        dkim_close(lib);
        return NULL;
    }
    return lib;
}

/* cleanup_dkim__lib - see cleanup_dkim_impl.h */
struct dkim_lib *
cleanup_dkim__lib(struct cleanup_dkim *dk, const char *headers, char *err, size_t errlen)
{
    char **names = header_list(headers), *key = join_list(names);
    struct dkim_lib *l;

    for (l = dk->libs; l; l = l->next)
        if (strcmp(l->headers, key) == 0)
            break;
    if (l == NULL) {
        DKIM_LIB *lib = new_lib(names, err, errlen);

        if (lib != NULL) {
            l = xcalloc(1, sizeof(*l));
            l->headers = key;
            key = NULL;
            l->lib = lib;
            l->next = dk->libs;
            dk->libs = l;
        }
    }
    free(key);
    free_list(names);
    return l;
}

/* cleanup_dkim__ed25519_ok - see cleanup_dkim_impl.h */
int
cleanup_dkim__ed25519_ok(const struct cleanup_dkim *dk)
{
    return dk->libs != NULL && dkim_libfeature(dk->libs->lib, DKIM_FEATURE_ED25519);
}

/* cleanup_dkim__free_libs - see cleanup_dkim_impl.h */
void
cleanup_dkim__free_libs(struct cleanup_dkim *dk)
{
    struct dkim_lib *l, *next;

    for (l = dk->libs; l; l = next) {
        next = l->next;
        dkim_close(l->lib);
        free(l->headers);
        free(l);
    }
    dk->libs = NULL;
}

/* --- jobs -------------------------------------------------------------------------- */

static dkim_canon_t
opendkim_canon(enum cleanup_dkim_canon c)
{
    return c == CLEANUP_DKIM_SIMPLE ? DKIM_CANON_SIMPLE : DKIM_CANON_RELAXED;
}

/* cleanup_dkim_prepare - see cleanup_dkim.h */
int
cleanup_dkim_prepare(struct cleanup_dkim *dk, const struct cleanup_message *msg,
                     const struct cleanup_dkim_keylist *const *lists, size_t nlists,
                     const struct cleanup_dkim_opts *opts, struct cleanup_dkim_job **jobp)
{
    static const struct cleanup_dkim_opts defaults;
    static const enum cfg_dkim_alg rsa_only[] = { CFG_DKIM_RSA_SHA256 };
    struct cleanup_dkim_choice ch;
    struct cleanup_dkim_job *job;
    struct dkim_lib *lib;
    char iddom[DOMAIN_MAX + 1];
    const enum cfg_dkim_alg *algs;
    size_t nalgs;

    *jobp = NULL;
    if (opts == NULL)
        opts = &defaults;
    algs = opts->nalgs ? opts->algs : rsa_only;
    nalgs = opts->nalgs ? opts->nalgs : 1;
    /* RFC 6376 5.4: a signature must cover From; without one there is none. */
    if (cleanup_message_find(msg, "From") == NULL ||
        cleanup_dkim_identity_domain(msg, opts, iddom, sizeof(iddom)) < 0)
        return 0;
    job = xcalloc(1, sizeof(*job));
    for (size_t i = 0; i < nalgs && i < CFG_DKIM_ALG_MAX; i++) {
        if (!cleanup_dkim_choose(lists, nlists, iddom, algs[i], &ch))
            continue;
        job->sig[job->n].selector = xstrdup(ch.selector);
        job->sig[job->n].domain = xstrdup(ch.domain);
        job->sig[job->n].key = ch.key;
        job->n++;
    }
    if (job->n == 0) {
        cleanup_dkim_job_free(job);
        return 0;
    }
    job->dk = dk;
    if ((lib = cleanup_dkim__lib(dk, opts->headers, job->err, sizeof job->err)) == NULL)
        job->status = -EIO; /* run() does nothing, finish() reports it */
    else
        job->lib = lib->lib;
    job->hc = opendkim_canon(opts->header_canon);
    job->bc = opendkim_canon(opts->body_canon);
    snprintf(job->id, sizeof job->id, "%s", opts->id ? opts->id : "cleanup");
    *jobp = job;
    return 1;
}

/* feed_field - cleanup_message_walk() callback: one field, then end of header */
static int
feed_field(void *ctx, const char *field, size_t len)
{
    DKIM *d = ctx;

    if (field == NULL)
        return dkim_eoh(d) == DKIM_STAT_OK ? 0 : -EIO;
    return dkim_header(d, (u_char *)(uintptr_t)field, len) == DKIM_STAT_OK ? 0 : -EIO;
}

/* sighdr_crlf - "DKIM-Signature: " + OpenDKIM's folded value, every EOL CRLF */
static char *
sighdr_crlf(const u_char *val, size_t len)
{
    struct buf b;
    size_t i;

    buf_init(&b, 0);
    buf_append_str(&b, SIGHDR_NAME ": ");
    for (i = 0; i < len; i++) {
        if (val[i] == '\r')
            continue;
        if (val[i] == '\n')
            buf_append(&b, "\r", 1);
        buf_append(&b, &val[i], 1);
    }
    buf_append(&b, "\r\n", 2);
    return buf_detach(&b, NULL);
}

/* eom_with_parsed_key - dkim_eom(D) with S's parsed key handed over (see the file header) */
static DKIM_STAT
eom_with_parsed_key(struct cleanup_dkim_job *job, DKIM *d, const struct job_sig *s,
                    struct sig_mem *mem, EVP_PKEY *copy, int *copy_taken)
{
    /* RSA: the lent reference (see the file header) */
    RSA *rsa = s->key->alg == CFG_DKIM_RSA_SHA256 ? EVP_PKEY_get1_RSA(s->key->pkey) : NULL;
    DKIM_STAT st;

    handover.dk = job->dk;
    handover.key = s->key;
    handover.give = copy;
    handover.mem = mem;
    st = dkim_eom(d, NULL);
    *copy_taken = copy != NULL && handover.give == NULL;
    handover.key = NULL;
    handover.dk = NULL;
    handover.give = NULL;
    handover.mem = NULL;
    if (rsa && st == DKIM_STAT_OK)
        RSA_free(rsa);
    return st;
}

/* ed25519_copy - a copy of KEY to give OpenDKIM, whose ex_data sets *RELEASED when freed */
static EVP_PKEY *
ed25519_copy(const struct cleanup_dkim_key *key, int *released)
{
    EVP_PKEY *copy;

    if (key->alg != CFG_DKIM_ED25519_SHA256 || (copy = EVP_PKEY_dup(key->pkey)) == NULL)
        return NULL;
    if (released_idx < 0 || EVP_PKEY_set_ex_data(copy, released_idx, released) != 1) {
        EVP_PKEY_free(copy);
        return NULL; /* OpenDKIM then parses the PEM text itself */
    }
    return copy;
}

/* sign_one - S over MSG; 0, or -EIO with JOB's err */
static int
sign_one(struct cleanup_dkim_job *job, struct job_sig *s, const struct cleanup_message *msg)
{
    struct sig_mem mem = { 0, NULL };
    int released = 0, copy_taken = 0;
    EVP_PKEY *copy = ed25519_copy(s->key, &released);
    u_char *val = NULL;
    size_t vlen = 0;
    DKIM_STAT st;
    DKIM *d;

    d = dkim_sign(job->lib, (const u_char *)job->id, &mem, (dkim_sigkey_t)s->key->pem,
                  (const u_char *)s->selector, (const u_char *)s->domain, job->hc, job->bc,
                  s->key->alg == CFG_DKIM_ED25519_SHA256 ? DKIM_SIGN_ED25519SHA256
                                                         : DKIM_SIGN_RSASHA256,
                  -1, &st);
    if (d == NULL) {
        snprintf(job->err, sizeof job->err, "dkim_sign(%s, %s): %s", s->selector, s->domain,
                 dkim_getresultstr(st));
        EVP_PKEY_free(copy);
        return -EIO;
    }
    st = DKIM_STAT_OK;
    if (s->key->alg == CFG_DKIM_ED25519_SHA256 && job->hc == DKIM_CANON_SIMPLE)
        st = dkim_set_margin(d, 0); /* see the file header */
    if (st != DKIM_STAT_OK)
        ;
    else if (cleanup_message_walk(msg, feed_field, d) != 0)
        st = DKIM_STAT_INTERNAL;
    else if (msg->body.len)
        st = dkim_body(d, (u_char *)msg->body.data, msg->body.len);
    if (st == DKIM_STAT_OK)
        st = eom_with_parsed_key(job, d, s, &mem, copy, &copy_taken);
    if (st == DKIM_STAT_OK)
        st = dkim_getsighdr_d(d, strlen(SIGHDR_NAME ": "), &val, &vlen);
    if (st == DKIM_STAT_OK)
        s->field = sighdr_crlf(val, vlen); /* VAL belongs to the handle */
    else
        snprintf(job->err, sizeof job->err, "DKIM signing (s=%s d=%s %s) failed: %s%s%s",
                 s->selector, s->domain, cfg_dkim_alg_name(s->key->alg), dkim_getresultstr(st),
                 dkim_geterror(d) ? ": " : "", dkim_geterror(d) ? dkim_geterror(d) : "");
    dkim_free(d);
    if (copy != NULL && !copy_taken) { /* never given away: still ours */
        EVP_PKEY_free(copy);
    } else if (copy_taken && !released) { /* OpenDKIM kept them (see the file header) */
        EVP_PKEY_free(copy);
        free(mem.sig_buf);
    }
    return st == DKIM_STAT_OK ? 0 : -EIO;
}

/* cleanup_dkim_run - see cleanup_dkim.h */
void
cleanup_dkim_run(struct cleanup_dkim_job *job, const struct cleanup_message *msg)
{
    for (size_t i = 0; i < job->n && job->status == 0; i++) {
        if (sign_one(job, &job->sig[i], msg) < 0)
            job->status = -EIO;
        else
            atomic_fetch_add(&job->dk->signatures, 1);
    }
}

/* cleanup_dkim_finish - see cleanup_dkim.h */
int
cleanup_dkim_finish(struct cleanup_dkim_job *job, struct cleanup_message *msg, char *err,
                    size_t errlen)
{
    if (job->status < 0) {
        snprintf(err, errlen, "%s", job->err);
        return -EIO;
    }
    for (size_t i = job->n; i-- > 0;) /* the first asked ends up on top */
        cleanup_message_prepend(msg, job->sig[i].field);
    return (int)job->n;
}

void
cleanup_dkim_job_free(struct cleanup_dkim_job *job)
{
    if (job == NULL)
        return;
    for (size_t i = 0; i < job->n; i++) {
        free(job->sig[i].selector);
        free(job->sig[i].domain);
        free(job->sig[i].field);
    }
    free(job);
}

/* cleanup_dkim_sign - see cleanup_dkim.h */
int
cleanup_dkim_sign(struct cleanup_dkim *dk, struct cleanup_message *msg,
                  const struct cleanup_dkim_keylist *const *lists, size_t nlists,
                  const struct cleanup_dkim_opts *opts, char *err, size_t errlen)
{
    struct cleanup_dkim_job *job;
    int r;

    if (cleanup_dkim_prepare(dk, msg, lists, nlists, opts, &job) == 0)
        return 0;
    cleanup_dkim_run(job, msg);
    r = cleanup_dkim_finish(job, msg, err, errlen);
    cleanup_dkim_job_free(job);
    return r;
}
