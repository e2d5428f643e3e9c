/*
 * cleanup_dkim.h - DKIM signing of a cleaned-up message (OpenDKIM)
 *
 * NAME
 *	cleanup_dkim - key cache, key choice by signing identity, signing
 *
 * SYNOPSIS
 *	At config load (per <virtual-mta> and once for the global keys):
 *	    dk = cleanup_dkim_create(err, sizeof err);
 *	    keys = cleanup_dkim_keylist_create();
 *	    if (cleanup_dkim_keylist_add(dk, keys, "sel", "example.com",
 *	                                 "/etc/pmta/dkim.pem", err, sizeof err) < 0)
 *	        config error: err
 *	Per message, after cleanup_message_apply():
 *	    const struct cleanup_dkim_keylist *lists[] = { vmta_keys, global_keys };
 *	    r = cleanup_dkim_sign(dk, msg, lists, 2, &opts, &sig, err, sizeof err);
 *	    if (r == 0) { cleanup_message_prepend(msg, sig); free(sig); }
 *
 * DESCRIPTION
 *	Keys are PEM private keys, read and checked once (OpenSSL) and cached by
 *	path; a key file that changed on disk (inode, size or mtime) is read
 *	again on the next keylist_add(), so a config reload picks up rotated
 *	keys. A keylist is PowerMTA's ordered `domain-key SEL,DOMAIN|*,FILE`
 *	list: the first entry whose domain equals, or is a parent of, the
 *	signing identity's domain wins; `*` matches any domain (and then signs
 *	as d=<identity domain>). Several lists are scanned in the order given,
 *	so a virtual MTA's keys can come before the global ones.
 *
 *	The signing identity is the address in Sender:, else in From:, else
 *	opts->fallback_identity (`dkim-identity`); opts->identity, when set,
 *	replaces all three. An identity may be "user@domain", "@domain" or
 *	"domain".
 *
 *	All canonicalisation and signing is OpenDKIM's: rsa-sha256,
 *	relaxed/relaxed unless asked otherwise, signed header fields from
 *	opts->headers (a colon- or comma-separated `dkim-headers` list; From is
 *	always added) or CLEANUP_DKIM_DEFAULT_HEADERS.
 *
 * DIAGNOSTICS
 *	Functions that can fail return a negative errno-style code and write a
 *	one-line reason to ERR: -ENOENT/-EACCES/... for a key file that cannot
 *	be read, -EINVAL for a file that is not an RSA private key in PEM or a
 *	bad argument, -EIO for an OpenDKIM failure. cleanup_dkim_sign() returns
 *	CLEANUP_DKIM_UNSIGNED (1) when no key matches: not an error, the
 *	message goes out unsigned.
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

#include "cleanup_message.h"

#define CLEANUP_DKIM_UNSIGNED 1

#define CLEANUP_DKIM_DEFAULT_HEADERS                                         \
    "from:sender:reply-to:subject:date:message-id:to:cc:mime-version:"       \
    "content-type:content-transfer-encoding:content-id:content-description:" \
    "in-reply-to:references:list-id:list-help:list-unsubscribe:"             \
    "list-unsubscribe-post:list-subscribe:list-post:list-owner:list-archive:feedback-id"

enum cleanup_dkim_canon {
    CLEANUP_DKIM_RELAXED = 0, /* the default, as PowerMTA's */
    CLEANUP_DKIM_SIMPLE,
};

struct cleanup_dkim;         /* OpenDKIM library handle + key cache */
struct cleanup_dkim_key;     /* one loaded key (owned by the cache) */
struct cleanup_dkim_keylist; /* an ordered domain-key list */

struct cleanup_dkim_opts {
    const char *headers; /* dkim-headers; NULL = default list */
    enum cleanup_dkim_canon header_canon;
    enum cleanup_dkim_canon body_canon;
    const char *identity;          /* dkim-identity ADDR|DOMAIN: forced */
    const char *fallback_identity; /* dkim-identity-fallback: no Sender/From */
    const char *id;                /* for OpenDKIM's log text (queue id); may be NULL */
};

/* What cleanup_dkim_choose() found. Strings are borrowed from the keylist. */
struct cleanup_dkim_choice {
    const char *selector;
    const char *domain; /* d=: the key's domain, or the identity's for `*` */
    const struct cleanup_dkim_key *key;
};

/* cleanup_dkim_create - OpenDKIM library handle and empty key cache; NULL + ERR */
struct cleanup_dkim *cleanup_dkim_create(char *err, size_t errlen);
/* cleanup_dkim_free - dkim_close() and every cached key; NULL is fine */
void cleanup_dkim_free(struct cleanup_dkim *dk);

/*
 * cleanup_dkim_key_load - the key at PATH, read and checked once (cached)
 * @return the key, or NULL with ERR ("cannot read KEY: ...", "KEY: not
 *	an RSA private key in PEM form") and *ERRNOP (when not NULL) set.
 */
const struct cleanup_dkim_key *cleanup_dkim_key_load(struct cleanup_dkim *dk, const char *path,
                                                     int *errnop, char *err, size_t errlen);

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
 * cleanup_dkim_choose - first key over LISTS[0..N) for IDENTITY_DOMAIN
 * @return 1 and *CHOICE, or 0 when no key matches.
 */
int cleanup_dkim_choose(const struct cleanup_dkim_keylist *const *lists, size_t nlists,
                        const char *identity_domain, struct cleanup_dkim_choice *choice);

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
 * cleanup_dkim_sign - sign MSG as it will be rendered (its prepended fields,
 * such as Received, are not signed).
 * @return 0 and *SIGHDRP ("DKIM-Signature: ...\r\n", folded with CRLF TAB;
 *	caller frees) to pass to cleanup_message_prepend();
 *	CLEANUP_DKIM_UNSIGNED when no key matches the identity, there is no
 *	identity, or the message has no From: (which a signature must cover);
 *	-EIO with ERR when OpenDKIM fails.
 */
int cleanup_dkim_sign(struct cleanup_dkim *dk, const struct cleanup_message *msg,
                      const struct cleanup_dkim_keylist *const *lists, size_t nlists,
                      const struct cleanup_dkim_opts *opts, char **sighdrp, char *err,
                      size_t errlen);

#endif
