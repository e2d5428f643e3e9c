/*
 * cleanup_dkim.h - DKIM signing of a cleaned-up message (OpenDKIM)
 *
 * NAME
 *	cleanup_dkim - key cache, key choice by signing identity and
 *	algorithm, signing on any thread
 *
 * SYNOPSIS
 *	At config load (per <virtual-mta> and once for the global keys):
 *	    dk = cleanup_dkim_create(err, sizeof err);
 *	    keys = cleanup_dkim_keylist_create();
 *	    if (cleanup_dkim_keylist_add(dk, keys, "sel", "example.com",
 *	                                 "/etc/pmta/dkim.pem", err, sizeof err) < 0)
 *	        config error: err
 *	Per message, after cleanup_message_apply(), on the loop thread:
 *	    const struct cleanup_dkim_keylist *lists[] = { vmta_keys, global_keys };
 *	    if (cleanup_dkim_prepare(dk, msg, lists, 2, &opts, &job) == 1) {
 *	        cleanup_dkim_run(job, msg);           any thread (uv_queue_work)
 *	        n = cleanup_dkim_finish(job, msg, err, sizeof err);  loop thread
 *	        cleanup_dkim_job_free(job);
 *	    }
 *	or all of it at once: n = cleanup_dkim_sign(dk, msg, lists, 2, &opts, err, sizeof err);
 *
 * DESCRIPTION
 *	Keys are PEM private keys, RSA (rsa-sha256) or Ed25519
 *	(ed25519-sha256, RFC 8463): read, checked and parsed ONCE (OpenSSL)
 *	and cached by path; a key file that changed on disk (inode, size or
 *	mtime) is read again on the next keylist_add(), so a config reload
 *	picks up rotated keys. A keylist is PowerMTA's ordered `domain-key
 *	SEL,DOMAIN|*,FILE` list: for each algorithm asked (opts->algs, from
 *	dkim-algorithm, in order), the first entry whose key is of that type
 *	and whose domain equals, or is a parent of, the signing identity's
 *	domain wins; `*` matches any domain (and then signs as d=<identity
 *	domain>). Several lists are scanned in the order given, so a virtual
 *	MTA's keys can come before the global ones. An algorithm with no
 *	matching key makes no signature; the others are still made (so
 *	`dkim-algorithm ed25519-sha256 rsa-sha256` signs twice where both keys
 *	exist). The first signature asked for ends up on top.
 *
 *	The signing identity is the address in Sender:, else in From:, else
 *	opts->fallback_identity (`dkim-identity`); opts->identity, when set,
 *	replaces all three. An identity may be "user@domain", "@domain" or
 *	"domain".
 *
 *	All canonicalisation, hashing and signing is OpenDKIM's, relaxed/relaxed
 *	unless asked otherwise, signed header fields from opts->headers (a
 *	colon- or comma-separated `dkim-headers` list; From is always added) or
 *	CLEANUP_DKIM_DEFAULT_HEADERS. The header list is compiled once per
 *	distinct list (one OpenDKIM library handle each), not per message.
 *
 *	Threads: prepare() and finish() read the keylists and write the
 *	message, so they run on the loop thread; run() only reads the message
 *	and the (immutable once loaded) keys and library handles, so jobs for
 *	different messages may run at once on the libuv thread pool. Keys,
 *	library handles and keylists stay valid while a job runs: keys and
 *	handles live until cleanup_dkim_free(), and the job copies what it
 *	needs from the keylist.
 *
 * DIAGNOSTICS
 *	Functions that can fail return a negative errno-style code and write a
 *	one-line reason to ERR: -ENOENT/-EACCES/... for a key file that cannot
 *	be read, -EINVAL for a file that cannot sign (cfg_dkim_key_parse() says
 *	why) or a bad argument, -EIO for an OpenDKIM failure.
 *
 * SECURITY
 *	Private keys live in this process's memory only; error text names the
 *	path, never key material. Identities come from message headers (peer
 *	input): the address parser is bounded by the (already bounded) field
 *	and only its domain, lower-cased and checked, is used to choose a key.
 */
#ifndef PMTA_CLEANUP_DKIM_H
#define PMTA_CLEANUP_DKIM_H

#include <stddef.h>
#include <stdint.h>

#include "cfg.h"
#include "cleanup_message.h"

#define CLEANUP_DKIM_DEFAULT_HEADERS                                         \
    "from:sender:reply-to:subject:date:message-id:to:cc:mime-version:"       \
    "content-type:content-transfer-encoding:content-id:content-description:" \
    "in-reply-to:references:list-id:list-help:list-unsubscribe:"             \
    "list-unsubscribe-post:list-subscribe:list-post:list-owner:list-archive:feedback-id"

enum cleanup_dkim_canon {
    CLEANUP_DKIM_RELAXED = 0, /* the default, as PowerMTA's */
    CLEANUP_DKIM_SIMPLE,
};

struct cleanup_dkim;         /* OpenDKIM library handles + key cache */
struct cleanup_dkim_key;     /* one loaded key (owned by the cache) */
struct cleanup_dkim_keylist; /* an ordered domain-key list */
struct cleanup_dkim_job;     /* one message's signatures, prepared and made */

struct cleanup_dkim_opts {
    const char *headers; /* dkim-headers; NULL = default list */
    enum cleanup_dkim_canon header_canon;
    enum cleanup_dkim_canon body_canon;
    const char *identity;                     /* dkim-identity ADDR|DOMAIN: forced */
    const char *fallback_identity;            /* dkim-identity-fallback: no Sender/From */
    const char *id;                           /* for OpenDKIM's log text (queue id); may be NULL */
    enum cfg_dkim_alg algs[CFG_DKIM_ALG_MAX]; /* dkim-algorithm, in order */
    size_t nalgs;                             /* 0 = rsa-sha256 alone */
};

/* What cleanup_dkim_choose() found. Strings are borrowed from the keylist. */
struct cleanup_dkim_choice {
    const char *selector;
    const char *domain; /* d=: the key's domain, or the identity's for `*` */
    const struct cleanup_dkim_key *key;
};

struct cleanup_dkim_stats {
    uint64_t keys_parsed; /* key files parsed (at load: one per key and change on disk) */
    uint64_t signatures;  /* signatures made */
    uint64_t key_reuses;  /* signatures that used the parsed key instead of parsing it again */
};

/* cleanup_dkim_create - empty key cache and library handle set; NULL + ERR */
struct cleanup_dkim *cleanup_dkim_create(char *err, size_t errlen);
/* cleanup_dkim_free - every library handle (dkim_close) and cached key; NULL is fine. No job
 * may be running. */
void cleanup_dkim_free(struct cleanup_dkim *dk);
/* cleanup_dkim_stats - counters since cleanup_dkim_create() */
void cleanup_dkim_stats(const struct cleanup_dkim *dk, struct cleanup_dkim_stats *st);

/*
 * cleanup_dkim_key_load - the key at PATH, read, checked and parsed once (cached)
 * @return the key, or NULL with ERR ("cannot read DKIM key KEY: ...", "KEY:
 *	not an unencrypted private key in PEM form" ...) and *ERRNOP (when not
 *	NULL) set.
 */
const struct cleanup_dkim_key *cleanup_dkim_key_load(struct cleanup_dkim *dk, const char *path,
                                                     int *errnop, char *err, size_t errlen);
/* cleanup_dkim_key_alg - the algorithm KEY signs with (its type) */
enum cfg_dkim_alg cleanup_dkim_key_alg(const struct cleanup_dkim_key *key);

struct cleanup_dkim_keylist *cleanup_dkim_keylist_create(void);
void cleanup_dkim_keylist_free(struct cleanup_dkim_keylist *list);
/*
 * cleanup_dkim_keylist_add - append `domain-key SELECTOR,DOMAIN,PATH`
 * (DOMAIN may be "*"); loads the key now so a bad key is a config error.
 * @return 0, or -errno (-ENOENT, -EACCES, -EINVAL ...) with ERR.
 */
int cleanup_dkim_keylist_add(struct cleanup_dkim *dk, struct cleanup_dkim_keylist *list,
                             const char *selector, const char *domain, const char *path, char *err,
                             size_t errlen);

/*
 * cleanup_dkim_choose - first key of type ALG over LISTS[0..N) for IDENTITY_DOMAIN
 * @return 1 and *CHOICE, or 0 when no key matches.
 */
int cleanup_dkim_choose(const struct cleanup_dkim_keylist *const *lists, size_t nlists,
                        const char *identity_domain, enum cfg_dkim_alg alg,
                        struct cleanup_dkim_choice *choice);

/*
 * cleanup_dkim_identity_domain - domain of the signing identity for MSG per
 * OPTS, lower-cased, into OUT. @return 0, or -ENOENT when there is none.
 */
int cleanup_dkim_identity_domain(const struct cleanup_message *msg,
                                 const struct cleanup_dkim_opts *opts, char *out, size_t outsize);

/*
 * cleanup_address_domain - domain of the first address in header VALUE
 * (display names, comments, quoted local parts and groups understood),
 * lower-cased, into OUT. @return 0 or -EINVAL when none is found.
 */
int cleanup_address_domain(const char *value, char *out, size_t outsize);

/*
 * cleanup_dkim_prepare - loop thread: the signatures MSG gets (the message
 * as it will be rendered; its prepended fields, such as Received, are not
 * signed).
 * @return 1 and *JOBP; 0 (no job) when no key matches the identity for any
 *	algorithm asked, there is no identity, or the message has no From:
 *	(which a signature must cover): the message goes out unsigned.
 */
int cleanup_dkim_prepare(struct cleanup_dkim *dk, const struct cleanup_message *msg,
                         const struct cleanup_dkim_keylist *const *lists, size_t nlists,
                         const struct cleanup_dkim_opts *opts, struct cleanup_dkim_job **jobp);
/*
 * cleanup_dkim_run - any thread: make JOB's signatures over MSG, which
 * nobody may change meanwhile. The outcome stays in JOB for finish().
 */
void cleanup_dkim_run(struct cleanup_dkim_job *job, const struct cleanup_message *msg);
/*
 * cleanup_dkim_finish - loop thread: prepend JOB's signatures to MSG
 * ("DKIM-Signature: ..." folded with CRLF TAB, the first asked on top).
 * @return how many (>= 1), or -EIO with ERR when OpenDKIM failed (nothing
 *	is prepended then).
 */
int cleanup_dkim_finish(struct cleanup_dkim_job *job, struct cleanup_message *msg, char *err,
                        size_t errlen);
void cleanup_dkim_job_free(struct cleanup_dkim_job *job);

/*
 * cleanup_dkim_sign - prepare, run and finish on this thread
 * @return the number of signatures prepended (0: unsigned, as for
 *	prepare()), or -EIO with ERR.
 */
int cleanup_dkim_sign(struct cleanup_dkim *dk, struct cleanup_message *msg,
                      const struct cleanup_dkim_keylist *const *lists, size_t nlists,
                      const struct cleanup_dkim_opts *opts, char *err, size_t errlen);

#endif
