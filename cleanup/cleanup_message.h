/*
 * cleanup_message.h - header-section work the cleanup worker applies to
 * every accepted message
 *
 * NAME
 *	cleanup_message - parse, rewrite and render one message held in memory
 *
 * SYNOPSIS
 *	struct cleanup_message *msg;
 *	char err[CLEANUP_ERRLEN];
 *
 *	if (cleanup_message_parse(data, len, NULL, &msg, err, sizeof err) < 0)
 *	    reply 554 5.6.0 with err;
 *	cleanup_message_apply(msg, &source_opts, &client, now);
 *	... msg->virtual_mta, msg->job_id, msg->envid ...
 *	cleanup_dkim_sign(...)  (prepends the DKIM-Signature fields)
 *	cleanup_message_render(msg, &out);
 *	cleanup_message_free(msg);
 *
 * DESCRIPTION
 *	cleanup_message_parse() splits a message into its header fields and its
 *	body. Line endings are normalised to CRLF on the way in (a bare LF or a
 *	bare CR becomes CRLF: RFC 5322 allows neither alone, and every later
 *	step, DKIM included, then sees exactly the bytes that go on the wire).
 *	Each field keeps its original bytes (folding included) for output and
 *	gets an unfolded copy of its value for reading. A line in the header
 *	section that is neither a field nor a continuation ends the header
 *	section and starts the body (as Postfix does); render() then puts the
 *	empty separator line in. A body that does not end in CRLF gets one.
 *
 *	cleanup_message_apply() does what a <source> asks for: Received,
 *	Message-ID, Date, and the X-Virtual-MTA / X-Job / X-EnvID submission
 *	headers, which it extracts into msg->virtual_mta, msg->job_id and
 *	msg->envid and removes unless the matching retain flag is set.
 *
 *	Added Message-ID and Date fields go at the end of the header section
 *	(as Postfix adds them) and are ordinary fields from then on: found by
 *	cleanup_message_find(), signed by DKIM. Received goes on top, into the
 *	"prepend" part that the signer does not see.
 *
 *	cleanup_message_render() writes the final message: prepended fields
 *	(DKIM-Signature, then Received), the live fields in order (original
 *	ones minus removed X-* headers, then added ones), the empty line, the
 *	body.
 *
 * DIAGNOSTICS
 *	parse() returns 0 or a negative errno-style code with a one-line reason
 *	in ERR: -E2BIG for a header section over the limits (too many fields,
 *	one field or the whole section too long), -EILSEQ for a NUL byte in a
 *	header field (values are C strings from then on), -EINVAL for bad
 *	arguments. A NUL in the body is kept (msg->body_nul).
 *	Nothing is allocated in proportion to input beyond the limits.
 *
 * SECURITY
 *	Everything in the message is peer input. Field counts and sizes are
 *	bounded before anything is stored. Values extracted for the caller
 *	(virtual MTA, job id, envid) are checked to hold no whitespace or
 *	control bytes, so they cannot inject into logs, records or replies.
 *	Client-supplied text written into Received (HELO name, auth user) is
 *	reduced to printable ASCII that cannot end a comment.
 */
#ifndef PMTA_CLEANUP_MESSAGE_H
#define PMTA_CLEANUP_MESSAGE_H

#include <stddef.h>
#include <time.h>

#include "buf.h"

#define CLEANUP_ERRLEN 256

/* Defaults for struct cleanup_limits; Postfix uses the same orders of size. */
#define CLEANUP_DEF_MAX_HEADERS       1000
#define CLEANUP_DEF_MAX_FIELD_BYTES   (100 * 1024)
#define CLEANUP_DEF_MAX_SECTION_BYTES (1024 * 1024)

/*
 * Written into Received when the queue id is not known yet; the same number
 * of bytes can later be overwritten in place at msg->qid_offset of the
 * rendered message (see cleanup_message_render()).
 */
#define CLEANUP_QID_PLACEHOLDER "QUEUEID-PLACEHOLDER0"

/* A zero field means "use the default". */
struct cleanup_limits {
    size_t max_headers;       /* fields in the header section */
    size_t max_field_bytes;   /* one field, folding included */
    size_t max_section_bytes; /* the whole header section */
};

struct cleanup_header {
    char *name;     /* field name as written, without the colon */
    size_t raw_off; /* original bytes in msg->head: "Name: value\r\n..." */
    size_t raw_len; /* up to and including the final CRLF */
    char *value;    /* unfolded, outer whitespace trimmed, NUL-terminated */
    int deleted;    /* removed by apply(); not rendered, not signed */
};

enum cleanup_date_mode {
    CLEANUP_DATE_NO = 0,   /* add-date-header no */
    CLEANUP_DATE_YES,      /* add one when missing */
    CLEANUP_DATE_OVERRIDE, /* replace whatever the message has */
};

/* What a <source> block asks of cleanup (see powermta.md 1.4). */
struct cleanup_opts {
    int add_received;   /* add-received-header (default yes) */
    int hide_source;    /* hide-message-source */
    int add_message_id; /* add-message-id-header */
    enum cleanup_date_mode add_date;
    int process_x_virtual_mta, retain_x_virtual_mta;
    int process_x_job, retain_x_job;
    const char *jobid_header; /* jobid-header; NULL means X-Job */
    int process_x_envid, retain_x_envid;
};

/* Who handed us the message; NULL members are left out of Received. */
struct cleanup_client {
    const char *helo;         /* HELO/EHLO argument (peer input) */
    const char *rdns;         /* verified reverse name, or NULL */
    const char *addr;         /* client IP address */
    const char *protocol;     /* "ESMTP", "ESMTPSA", "SMTP", "local" */
    const char *auth_user;    /* authenticated user (peer input) */
    const char *tls;          /* e.g. "TLSv1.3 with cipher TLS_AES_256_GCM_SHA384" */
    const char *host_name;    /* our host-name */
    const char *queue_id;     /* NULL: CLEANUP_QID_PLACEHOLDER */
    const char *rcpt;         /* "for <rcpt>" when exactly one recipient */
    int local_submitter;      /* from a local user on the pickup socket: */
    unsigned long submit_uid; /* its uid (SO_PEERCRED) */
    const char *submit_user;  /* and login name, or NULL */
};

struct cleanup_message {
    struct buf head; /* normalised header section bytes */
    struct buf body; /* normalised body (CRLF lines) */
    struct cleanup_header *hdrs;
    size_t nhdrs, hdrs_cap;
    struct buf prepend;      /* fields rendered before the original ones */
    size_t received_qid_off; /* offset of the queue id inside prepend, or SIZE_MAX */
    size_t qid_offset;       /* in the last render() output, or SIZE_MAX */
    int head_8bit;           /* a byte >= 0x80 in the header section */
    int body_8bit;           /* a byte >= 0x80 in the body */
    int body_nul;            /* a NUL byte in the body */
    char *virtual_mta;       /* X-Virtual-MTA value, or NULL */
    char *job_id;            /* X-Job (or jobid-header) value, or NULL */
    char *envid;             /* X-EnvID value, or NULL */
    int bad_job_id;          /* present but refused (whitespace/control) */
    int bad_envid;           /* present but refused */
    int bad_virtual_mta;     /* present but refused */
};

/* cleanup_opts_default - PowerMTA's <source> defaults (Received yes, rest no) */
void cleanup_opts_default(struct cleanup_opts *opts);

/*
 * cleanup_message_parse - split DATA (LEN bytes) into fields and body
 * @return 0 and *MSGP (free with cleanup_message_free()); -E2BIG when the
 *	header section passes LIMITS (NULL = defaults); -EILSEQ for a NUL in a
 *	header field; -EINVAL. ERR explains.
 */
int cleanup_message_parse(const char *data, size_t len, const struct cleanup_limits *limits,
                          struct cleanup_message **msgp, char *err, size_t errlen);

/* cleanup_message_free - release MSG and everything it owns; NULL is fine */
void cleanup_message_free(struct cleanup_message *msg);

/* cleanup_message_apply - Received, Message-ID, Date, X-* per OPTS at NOW */
void cleanup_message_apply(struct cleanup_message *msg, const struct cleanup_opts *opts,
                           const struct cleanup_client *client, time_t now);

/* cleanup_message_find - first live field named NAME (case-insensitive), or NULL */
const struct cleanup_header *cleanup_message_find(const struct cleanup_message *msg,
                                                  const char *name);

/* cleanup_message_field - a live field's original bytes (without the final CRLF) */
const char *cleanup_message_field(const struct cleanup_message *msg, const struct cleanup_header *h,
                                  size_t *lenp);

/* cleanup_message_prepend - put FIELD ("Name: value", CRLF optional) on top */
void cleanup_message_prepend(struct cleanup_message *msg, const char *field);

/*
 * cleanup_message_render - append the final message to OUT and set
 * msg->qid_offset to where the Received queue id sits in OUT (or SIZE_MAX).
 * @return 0 or -EMSGSIZE (OUT's limit).
 */
int cleanup_message_render(struct cleanup_message *msg, struct buf *out);

/*
 * cleanup_message_walk - call FN for every field in rendered order except the
 * prepended ones (what a signer must see), then FN(NULL, 0) once.
 * Each call gets the field's bytes without the final CRLF. Returns the first
 * non-zero FN result, or 0.
 */
typedef int (*cleanup_field_fn)(void *ctx, const char *field, size_t len);
int cleanup_message_walk(const struct cleanup_message *msg, cleanup_field_fn fn, void *ctx);

/* cleanup_format_date - RFC 5322 date of WHEN in local time into OUT (>= 40 bytes) */
void cleanup_format_date(char *out, size_t outsize, time_t when);

/* cleanup_token_ok - 1 if S is non-empty, <= MAXLEN bytes, no whitespace/control/8-bit */
int cleanup_token_ok(const char *s, size_t maxlen);

#endif
