/*
 * qmgr_bouncecat.h - bounce categories (<bounce-category-patterns>)
 *
 * Every bounce and transient failure gets a category name (bad-mailbox,
 * spam-related, ...) that goes into the accounting file's bounceCat column.
 * The category comes from an ordered list of "/REGEX/ category" lines: the
 * first regex that matches wins. The configured <bounce-category-patterns>
 * lines are tried first, then the built-in list (equivalent to PowerMTA's
 * stock list: text patterns, then enhanced status codes, then "//" other),
 * so a configured line overrides the defaults and anything it does not
 * match still gets a stock category. A configured "//" line ends the search.
 *
 * What is matched ("status text"): one line made of the enhanced status code,
 * a space, and the remote reply text as received, e.g.
 *     "5.1.1 550 5.1.1 <x@y>: user unknown"
 * qmgr_bouncecat_status_text() builds exactly that. A bare reply
 * ("550 5.1.1 <x@y>: user unknown") classifies the same way: the built-in
 * status-code patterns accept an optional leading three-digit reply code.
 * Matching is case-insensitive, byte-wise (no UTF-8 check, so Latin-1 replies
 * cannot make a match fail), with a bounded match budget.
 *
 * Ownership: the classifier owns its compiled patterns; returned category
 * strings live as long as the classifier. Not thread-safe (one match-data
 * block is reused); qmgr is single-threaded.
 *
 * SECURITY: the status text is remote-controlled. Patterns run under a PCRE2
 * match limit so a pathological reply cannot stall qmgr, and the text is
 * truncated to QMGR_BOUNCECAT_TEXT_MAX bytes before matching.
 */
#ifndef PMTA_QMGR_BOUNCECAT_H
#define PMTA_QMGR_BOUNCECAT_H

#include <stddef.h>

struct cfg;
struct qmgr_bouncecat;

#define QMGR_BOUNCECAT_TEXT_MAX 2048    /* bytes of status text looked at */
#define QMGR_BOUNCECAT_OTHER    "other" /* what nothing matched gives */

/*
 * qmgr_bouncecat_new - compile C's <bounce-category-patterns> lines (C may be
 * NULL: built-in list only). A configured line that fails to compile (the
 * config loader already rejects those) is skipped with a warning. Never NULL.
 */
struct qmgr_bouncecat *qmgr_bouncecat_new(const struct cfg *c);
void qmgr_bouncecat_free(struct qmgr_bouncecat *bc);

/* qmgr_bouncecat_classify - category of STATUS_TEXT (NULL = ""); never NULL */
const char *qmgr_bouncecat_classify(struct qmgr_bouncecat *bc, const char *status_text);

/*
 * qmgr_bouncecat_classify_reply - classify enhanced code STATUS ("5.1.1", may
 * be NULL) with REPLY (remote reply text, may be NULL): builds the status
 * text described above and classifies it.
 */
const char *qmgr_bouncecat_classify_reply(struct qmgr_bouncecat *bc, const char *status,
                                          const char *reply);

/*
 * qmgr_bouncecat_classify_result - a result's category: a reply (CODE != 0)
 * as qmgr_bouncecat_classify_reply(); a result we made up ourselves (CODE 0:
 * connection refused, timeouts, DNS) by STATUS alone, so that the words of
 * our own reasons ("refused") cannot pass for a receiver's policy
 */
const char *qmgr_bouncecat_classify_result(struct qmgr_bouncecat *bc, unsigned code,
                                           const char *status, const char *text);

/* qmgr_bouncecat_status_text - "STATUS REPLY" into OUT (size OUTSIZE, truncated); returns OUT */
char *qmgr_bouncecat_status_text(char *out, size_t outsize, const char *status, const char *reply);

/* qmgr_bouncecat_count - patterns in use: configured + built-in (for logs and tests) */
size_t qmgr_bouncecat_count(const struct qmgr_bouncecat *bc);
/* qmgr_bouncecat_configured - how many of them came from the configuration */
size_t qmgr_bouncecat_configured(const struct qmgr_bouncecat *bc);

#endif
