/*
 * smtpd_proto_int.h - private session structure of the SMTP protocol engine
 *
 * Shared by smtpd_proto.c (session, framing, replies, host results),
 * smtpd_proto_cmd.c (command table), smtpd_proto_auth.c (AUTH exchange) and
 * smtpd_proto_body.c (DATA and BDAT content). Nothing outside smtpd/
 * includes it.
 */
#ifndef PMTA_SMTPD_PROTO_INT_H
#define PMTA_SMTPD_PROTO_INT_H

#include "buf.h"
#include "smtpd_proto.h"

#define SMTPD_DEFAULT_MAX_LINE  2048
#define SMTPD_DEFAULT_MAX_HELD  (256 * 1024)
#define SMTPD_OUTPUT_HIGH_WATER (64 * 1024)
#define SMTPD_BODY_LINE_MAX     998 /* RFC 5322 §2.1.1, without CRLF */

/* Which host decision the engine is waiting for in SMTPD_STATE_WAIT_HOST. */
enum smtpd_pending {
    SMTPD_PENDING_NONE,
    SMTPD_PENDING_MAIL,
    SMTPD_PENDING_RCPT,
    SMTPD_PENDING_AUTH,
    SMTPD_PENDING_DATA
};

/* Where the DATA scanner is within the current line. */
enum smtpd_scan {
    SMTPD_SCAN_BOL,   /* after CRLF (or right after 354) */
    SMTPD_SCAN_MID,   /* inside a line */
    SMTPD_SCAN_CR,    /* inside a line, after CR */
    SMTPD_SCAN_DOT,   /* a '.' at BOL, held back */
    SMTPD_SCAN_DOT_CR /* ".\r" at BOL, held back */
};

enum smtpd_auth_step {
    SMTPD_AUTH_PLAIN,      /* 334 sent, waiting for the PLAIN response */
    SMTPD_AUTH_LOGIN_USER, /* 334 Username: sent */
    SMTPD_AUTH_LOGIN_PASS  /* 334 Password: sent */
};

/* The mail transaction: from an accepted MAIL to the end of the body. */
struct smtpd_txn {
    bool open;           /* MAIL accepted; host owes/gets data_abort */
    bool smtputf8;       /* MAIL had SMTPUTF8 */
    unsigned rcpt_ok;    /* accepted recipients */
    unsigned rcpt_tried; /* RCPT commands that reached the host */
    bool body_started;   /* data_begin accepted */
    bool chunking;       /* BDAT in use (DATA no longer allowed) */
    bool failed;         /* content refused: swallow, then reply */
    int fail_code;
    const char *fail_enhanced;
    const char *fail_text;
    struct smtpd_data_info info;
};

struct smtpd_proto {
    struct smtpd_proto_config cfg;
    char *host_name;
    const struct smtpd_proto_events *ev;
    void *ctx;
    enum smtpd_state state;

    struct buf out;     /* replies for the host to write */
    struct buf line;    /* the command line being assembled */
    struct buf held;    /* input that arrived while waiting */
    bool skip_line;     /* dropping the rest of an over-long line */
    bool held_overflow; /* held limit passed: 421 after the result */
    int depth;          /* > 0 while smtpd_proto_input() runs */
    uint64_t discarded; /* plaintext dropped after STARTTLS */

    bool esmtp;
    bool tls;
    char *auth_user; /* set after 235 */
    unsigned errors;

    struct smtpd_txn txn;

    /* DATA scanner */
    enum smtpd_scan scan;
    uint64_t body_line_len;

    /* BDAT chunk in progress */
    uint64_t bdat_size;
    uint64_t bdat_left;
    bool bdat_last;
    enum smtpd_state bdat_resume; /* state to return to after the chunk */
    bool bdat_discard;            /* command refused: read and drop the chunk */

    /* AUTH exchange and asynchronous decisions */
    enum smtpd_auth_step auth_step;
    char *auth_login_user; /* LOGIN: user name between the two 334s */
    enum smtpd_pending pending;
    char *pending_user; /* AUTH awaiting the host's verdict */
};

/* smtpd_proto.c */
void smtpd_proto__reply(struct smtpd_proto *s, int code, const char *enhanced, const char *text);
void smtpd_proto__error(struct smtpd_proto *s, int code, const char *enhanced, const char *text);
void smtpd_proto__count_error(struct smtpd_proto *s);
void smtpd_proto__verdict(struct smtpd_proto *s, const struct smtpd_proto_verdict *v, int dflt_code,
                          const char *dflt_enhanced, const char *dflt_text);
void smtpd_proto__close(struct smtpd_proto *s);
void smtpd_proto__txn_abort(struct smtpd_proto *s);
void smtpd_proto__txn_reset(struct smtpd_proto *s);
void smtpd_proto__txn_abort_keep(struct smtpd_proto *s);
void smtpd_proto__wait(struct smtpd_proto *s, enum smtpd_pending what);
void smtpd_proto__decided(struct smtpd_proto *s, enum smtpd_pending what, enum smtpd_decision d,
                          const struct smtpd_proto_verdict *v);

/* smtpd_proto_cmd.c */
void smtpd_proto__command(struct smtpd_proto *s, char *line, size_t len);
void smtpd_proto__complete(struct smtpd_proto *s, enum smtpd_pending what, bool accepted,
                           const struct smtpd_proto_verdict *v);

/* smtpd_proto_auth.c */
bool smtpd_proto__auth_offered(const struct smtpd_proto *s);
void smtpd_proto__auth_start(struct smtpd_proto *s, char *arg, size_t len);
void smtpd_proto__auth_line(struct smtpd_proto *s, char *line, size_t len);
void smtpd_proto__auth_done(struct smtpd_proto *s, bool accepted,
                            const struct smtpd_proto_verdict *v);
void smtpd_proto__auth_clear(struct smtpd_proto *s);

/* smtpd_proto_body.c */
size_t smtpd_proto__data_input(struct smtpd_proto *s, const char *p, size_t len);
size_t smtpd_proto__bdat_input(struct smtpd_proto *s, const char *p, size_t len);
void smtpd_proto__data_start(struct smtpd_proto *s);
void smtpd_proto__bdat_start(struct smtpd_proto *s, uint64_t size, bool last, bool discard);

#endif
