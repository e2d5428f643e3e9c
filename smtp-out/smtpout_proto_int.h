/*
 * smtpout_proto_int.h - what the files of the SMTP client engine share
 * (not an API: smtpout_proto.h is the contract)
 *
 * The engine is three files, one concern each: smtpout_proto.c (the
 * session's life: greeting, EHLO, STARTTLS, replies dispatched by state,
 * QUIT, failures), smtpout_proto_auth.c (AUTH) and smtpout_proto_txn.c
 * (transactions: MAIL, RCPT, DATA or BDAT). The reply reader is
 * smtpout_proto_reply.c. This header holds the engine's state and the
 * functions the three call across.
 *
 * SECURITY: see smtpout_proto.h; the AUTH fields of struct smtpout_proto
 * are secrets (wiped when the engine is freed).
 */
#ifndef PMTA_SMTPOUT_PROTO_INT_H
#define PMTA_SMTPOUT_PROTO_INT_H

#include "smtpout_proto.h"

#define ADDR_MAX       1000 /* longest envelope address we send */
#define AUTH_FIELD_MAX 255  /* longest user name or password we send (RFC 4616 allows 255) */

enum proto_state {
    P_CONNECTING,  /* TCP connect in progress (the host's) */
    P_GREETING,    /* waiting for the 220 banner */
    P_EHLO,        /* EHLO sent */
    P_HELO,        /* HELO sent after EHLO got a 5xx */
    P_STARTTLS,    /* STARTTLS sent */
    P_TLS,         /* 220 to STARTTLS: the host does the handshake */
    P_AUTH,        /* AUTH sent (auth_step says which reply we wait for) */
    P_READY,       /* idle, between transactions */
    P_RSET,        /* RSET sent before a new transaction */
    P_TRANSACTION, /* MAIL / RCPT / DATA replies outstanding */
    P_BODY,        /* the host sends the message body */
    P_DOT,         /* final "." sent, waiting for its reply */
    P_QUIT,        /* QUIT sent */
    P_CLOSED,      /* over; ev.close was called */
};

enum rcpt_state { RCPT_PENDING, RCPT_ACCEPTED, RCPT_DONE };

/* Where an AUTH exchange is: the reply we wait for. */
enum auth_step {
    AUTH_FINAL,      /* 235 (or a failure) */
    AUTH_LOGIN_USER, /* 334: the user name, base64 */
    AUTH_LOGIN_PASS, /* 334: the password, base64 */
    AUTH_CRAM_MD5,   /* 334 CHALLENGE: "user HMAC-MD5(password, challenge)", base64 */
};

struct smtpout_proto {
    struct smtpout_proto_events ev;
    void *ctx;
    char helo_name[256];
    char mx_name[256];
    char dest_ip[64];
    struct smtpout_proto_config cfg;

    enum proto_state state;
    unsigned caps;
    unsigned long size_max;
    struct smtpout_reader rd;
    struct buf out;

    /* the current transaction */
    const struct smtpout_message *msg;
    unsigned char *rcpt_state; /* enum rcpt_state per recipient */
    size_t *sent;              /* recipient index per RCPT sent, in order */
    size_t nsent;
    size_t naccepted;
    size_t reply_index; /* next reply: 0 MAIL, 1..nsent RCPT, nsent+1 DATA */
    int pipelined;
    int mail_failed;
    struct smtpout_reply mail_reply;
    struct smtpout_reply last_rcpt_reply;
    int need_rset;
    int chunking; /* this transaction ends with BDAT instead of DATA */
    int tls_on;   /* the host's handshake succeeded */
    unsigned ntransactions;

    /* AUTH (secrets: wiped at free) */
    char auth_user[AUTH_FIELD_MAX + 1];
    char auth_pass[AUTH_FIELD_MAX + 1];
    unsigned auth_mechs; /* offered in the last EHLO */
    enum auth_step auth_step;
    int authenticated;
};

/* --- smtpout_proto.c ---------------------------------------------------------------- */
/* proto_timer - ask the host to (re)arm its timer for WAIT at STAGE */
void proto_timer(struct smtpout_proto *p, enum smtpout_wait wait, enum smtpout_stage stage);
/* proto_command - one command line into the output, waiting for its reply at STAGE */
void proto_command(struct smtpout_proto *p, const char *cmd, enum smtpout_stage stage);
/* proto_become_ready - idle: ev.ready */
void proto_become_ready(struct smtpout_proto *p);
/* proto_end_transaction - back to idle; report the transaction's outcome R */
void proto_end_transaction(struct smtpout_proto *p, const struct smtpout_reply *r);
/* proto_report_open - give R to every recipient without a result yet */
void proto_report_open(struct smtpout_proto *p, const struct smtpout_reply *r);

/* --- smtpout_proto_auth.c --------------------------------------------------------------- */
/* proto_auth_start - AUTH with the best mechanism, ready without AUTH, or a temporary failure */
void proto_auth_start(struct smtpout_proto *p);
/* proto_on_auth - a reply in state P_AUTH */
void proto_on_auth(struct smtpout_proto *p, struct smtpout_reply *r);

/* --- smtpout_proto_txn.c ---------------------------------------------------------------- */
/* proto_start_mail - MAIL, then RCPTs (and DATA) as the peer allows */
void proto_start_mail(struct smtpout_proto *p);
/* proto_on_transaction_reply - a reply to MAIL, RCPT or DATA, in command order */
void proto_on_transaction_reply(struct smtpout_proto *p, struct smtpout_reply *r);
/* proto_on_dot_reply - the final reply: to "." or to BDAT ... LAST */
void proto_on_dot_reply(struct smtpout_proto *p, struct smtpout_reply *r);

#endif
