/*
 * smtpd_proto_cmd.c - the SMTP command table: one check and one proceed
 * function per command, as OpenSMTPD's smtp_session.c has them
 *
 * check_*() validates the session state and the arguments and, when
 * something is wrong, sends the error reply itself and returns false.
 * proceed_*() acts: it tells the host, and replies (or waits for the host's
 * decision). The host's decisions come back through smtpd_proto__complete().
 *
 * Owns nothing beyond the stack: the parsed arguments of the command being
 * run live in a struct cmd_args for the duration of the call.
 *
 * SECURITY: parses peer commands. Replies never contain peer text. The
 * host gets addresses and parameters only after smtpd_address.c validated
 * and decoded them.
 */
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "msg.h"
#include "smtpd_address.h"
#include "smtpd_proto_int.h"

/* The parsed arguments of one command. */
struct cmd_args {
    char *arg; /* after the verb and its spaces */
    size_t len;
    char addr[SMTPD_ADDR_MAX + 1];
    struct smtpd_mail_params mail;
    struct smtpd_rcpt_params rcpt;
    uint64_t bdat_size;
    bool bdat_last;
};

struct smtpd_cmd {
    const char *verb;
    bool (*check)(struct smtpd_proto *s, struct cmd_args *a);
    void (*proceed)(struct smtpd_proto *s, struct cmd_args *a);
};

/* syntax_error - the arguments do not parse: 501 5.5.4 with a hint */
static bool
syntax_error(struct smtpd_proto *s, const char *hint)
{
    smtpd_proto__error(s, 501, "5.5.4", hint);
    return false;
}

/* sequence_error - command not valid now: 503 5.5.1 */
static bool
sequence_error(struct smtpd_proto *s, const char *text)
{
    smtpd_proto__error(s, 503, "5.5.1", text);
    return false;
}

/* need_helo - most commands need a HELO/EHLO first */
static bool
need_helo(struct smtpd_proto *s)
{
    if (s->state == SMTPD_STATE_GREETING)
        return sequence_error(s, "Send HELO/EHLO first");
    return true;
}

/* no_args - for commands that take none */
static bool
no_args(struct smtpd_proto *s, const struct cmd_args *a, const char *hint)
{
    return a->len == 0 ? true : syntax_error(s, hint);
}

/* is_non_ascii - any octet >= 0x80 */
static bool
is_non_ascii(const char *p)
{
    for (; *p; p++)
        if ((unsigned char)*p >= 0x80)
            return true;
    return false;
}

/* ---------------------------------------------------------------- HELO/EHLO */

/* check_helo_name - a domain or literal, printable ASCII, no spaces */
static bool
check_helo_name(struct smtpd_proto *s, struct cmd_args *a, const char *hint)
{
    size_t i;

    if (a->len == 0 || a->len > SMTPD_DOMAIN_MAX)
        return syntax_error(s, hint);
    for (i = 0; i < a->len; i++)
        if ((unsigned char)a->arg[i] <= 32 || (unsigned char)a->arg[i] >= 127)
            return syntax_error(s, hint);
    return true;
}

static bool
check_ehlo(struct smtpd_proto *s, struct cmd_args *a)
{
    return check_helo_name(s, a, "Syntax: EHLO hostname");
}

static bool
check_helo(struct smtpd_proto *s, struct cmd_args *a)
{
    return check_helo_name(s, a, "Syntax: HELO hostname");
}

/* greet - common part of HELO and EHLO: a new session (RFC 5321 §4.1.4) */
static void
greet(struct smtpd_proto *s, struct cmd_args *a, bool esmtp)
{
    smtpd_proto__txn_abort(s);
    s->state = SMTPD_STATE_COMMAND;
    s->esmtp = esmtp;
    if (s->ev->helo)
        s->ev->helo(s->ctx, a->arg, esmtp);
}

static void
proceed_ehlo(struct smtpd_proto *s, struct cmd_args *a)
{
    const char *ext[12];
    char size[40];
    size_t n = 0, i;

    greet(s, a, true);
    ext[n++] = "PIPELINING";
    if (s->cfg.max_message_size)
        snprintf(size, sizeof(size), "SIZE %llu", (unsigned long long)s->cfg.max_message_size);
    else
        snprintf(size, sizeof(size), "SIZE");
    ext[n++] = size;
    if (s->cfg.offer_starttls && !s->tls)
        ext[n++] = "STARTTLS";
    if (smtpd_proto__auth_offered(s))
        ext[n++] = "AUTH PLAIN LOGIN";
    ext[n++] = "ENHANCEDSTATUSCODES";
    ext[n++] = "8BITMIME";
    ext[n++] = "DSN";
    if (s->cfg.allow_smtputf8)
        ext[n++] = "SMTPUTF8";
    if (s->cfg.allow_chunking)
        ext[n++] = "CHUNKING";
    buf_printf(&s->out, "250-%s\r\n", s->host_name);
    for (i = 0; i < n; i++)
        buf_printf(&s->out, "250%c%s\r\n", i + 1 < n ? '-' : ' ', ext[i]);
}

static void
proceed_helo(struct smtpd_proto *s, struct cmd_args *a)
{
    greet(s, a, false);
    buf_printf(&s->out, "250 %s\r\n", s->host_name);
}

/* --------------------------------------------------------------------- MAIL */

/* strip_keyword - ARG starts with KEY ("FROM:"), then optional spaces */
static bool
strip_keyword(struct cmd_args *a, const char *key)
{
    size_t k = strlen(key);

    if (a->len < k || strncasecmp(a->arg, key, k) != 0)
        return false;
    a->arg += k;
    a->len -= k;
    /* Lenient: "MAIL FROM: <a@b>" is common enough to accept. */
    while (a->len && *a->arg == ' ') {
        a->arg++;
        a->len--;
    }
    return true;
}

/* path_then_params - parse the path, return where parameters start */
static enum smtpd_path_err
path_then_params(struct cmd_args *a, unsigned flags, size_t *params)
{
    enum smtpd_path_err err;
    size_t used;

    err = smtpd_parse_path(a->arg, a->len, flags, a->addr, &used);
    if (err != SMTPD_PATH_OK)
        return err;
    if (used < a->len && a->arg[used] != ' ')
        return SMTPD_PATH_SYNTAX;
    *params = used;
    return SMTPD_PATH_OK;
}

/* param_error - report a parameter problem */
static bool
param_error(struct smtpd_proto *s, enum smtpd_param_err err)
{
    if (err == SMTPD_PARAM_UNKNOWN)
        smtpd_proto__error(s, 555, "5.5.4", "Unsupported parameter");
    else
        smtpd_proto__error(s, 501, "5.5.4", "Bad parameter syntax");
    return false;
}

static bool
check_mail(struct smtpd_proto *s, struct cmd_args *a)
{
    enum smtpd_path_err perr;
    enum smtpd_param_err err;
    size_t params;

    if (!need_helo(s))
        return false;
    if (s->txn.open)
        return sequence_error(s, "Nested MAIL command");
    if (s->cfg.require_tls && !s->tls) {
        smtpd_proto__error(s, 530, "5.7.0", "Must issue a STARTTLS command first");
        return false;
    }
    if (s->cfg.require_auth && s->auth_user == NULL) {
        smtpd_proto__error(s, 530, "5.7.0", "Authentication required");
        return false;
    }
    if (!strip_keyword(a, "FROM:"))
        return syntax_error(s, "Syntax: MAIL FROM:<address>");
    /* UTF-8 is allowed by the path parser here and checked against the
       SMTPUTF8 parameter below, which comes after the path. */
    perr = path_then_params(a, SMTPD_PATH_NULL_OK | SMTPD_PATH_UTF8_OK, &params);
    if (perr != SMTPD_PATH_OK) {
        smtpd_proto__error(s, 501, "5.1.7",
                           perr == SMTPD_PATH_TOO_LONG ? "Sender address too long"
                                                       : "Bad sender address syntax");
        return false;
    }
    err = smtpd_parse_mail_params(a->arg + params, a->len - params, s->cfg.allow_smtputf8,
                                  smtpd_proto__auth_offered(s), &a->mail);
    if (err != SMTPD_PARAM_OK)
        return param_error(s, err);
    if (!a->mail.smtputf8 && is_non_ascii(a->addr)) {
        smtpd_proto__error(s, 553, "5.6.7", "Non-ASCII address needs SMTPUTF8");
        return false;
    }
    if (a->mail.size_given && s->cfg.max_message_size && a->mail.size > s->cfg.max_message_size) {
        smtpd_proto__reply(s, 552, "5.3.4", "Message size exceeds fixed maximum message size");
        return false;
    }
    return true;
}

static void
proceed_mail(struct smtpd_proto *s, struct cmd_args *a)
{
    struct smtpd_proto_verdict v = { 0, NULL, NULL };
    enum smtpd_decision d = SMTPD_ACCEPT;

    s->txn.smtputf8 = a->mail.smtputf8;
    smtpd_proto__wait(s, SMTPD_PENDING_MAIL);
    if (s->ev->mail)
        d = s->ev->mail(s->ctx, a->addr, &a->mail, &v);
    smtpd_proto__decided(s, SMTPD_PENDING_MAIL, d, &v);
}

/* --------------------------------------------------------------------- RCPT */

static bool
check_rcpt(struct smtpd_proto *s, struct cmd_args *a)
{
    enum smtpd_path_err perr;
    enum smtpd_param_err err;
    unsigned flags = SMTPD_PATH_POSTMASTER_OK;
    size_t params;

    if (!need_helo(s))
        return false;
    if (!s->txn.open)
        return sequence_error(s, "Need MAIL command");
    if (!strip_keyword(a, "TO:"))
        return syntax_error(s, "Syntax: RCPT TO:<address>");
    if (s->txn.smtputf8)
        flags |= SMTPD_PATH_UTF8_OK;
    perr = path_then_params(a, flags, &params);
    if (perr == SMTPD_PATH_NEED_UTF8) {
        smtpd_proto__error(s, 553, "5.6.7", "Non-ASCII address needs SMTPUTF8");
        return false;
    }
    if (perr != SMTPD_PATH_OK) {
        smtpd_proto__error(s, 501, "5.1.3",
                           perr == SMTPD_PATH_TOO_LONG ? "Recipient address too long"
                                                       : "Bad recipient address syntax");
        return false;
    }
    err = smtpd_parse_rcpt_params(a->arg + params, a->len - params, &a->rcpt);
    if (err != SMTPD_PARAM_OK)
        return param_error(s, err);
    if (s->cfg.max_rcpt && s->txn.rcpt_ok >= s->cfg.max_rcpt) {
        /* Not an error: RFC 5321 §4.5.3.1.10, the client sends the rest in
           another transaction. */
        smtpd_proto__reply(s, 452, "4.5.3", "Too many recipients");
        return false;
    }
    return true;
}

static void
proceed_rcpt(struct smtpd_proto *s, struct cmd_args *a)
{
    struct smtpd_proto_verdict v = { 0, NULL, NULL };
    enum smtpd_decision d = SMTPD_ACCEPT;

    s->txn.rcpt_tried++;
    smtpd_proto__wait(s, SMTPD_PENDING_RCPT);
    if (s->ev->rcpt)
        d = s->ev->rcpt(s->ctx, a->addr, &a->rcpt, &v);
    smtpd_proto__decided(s, SMTPD_PENDING_RCPT, d, &v);
}

/* ---------------------------------------------------------------- DATA/BDAT */

/* check_recipients - a body needs an open transaction with recipients */
static bool
check_recipients(struct smtpd_proto *s)
{
    if (!s->txn.open)
        return sequence_error(s, "Need MAIL command");
    if (s->txn.rcpt_ok == 0) {
        if (s->txn.rcpt_tried)
            smtpd_proto__error(s, 554, "5.5.1", "No valid recipients");
        else
            smtpd_proto__error(s, 503, "5.5.1", "Need RCPT command");
        return false;
    }
    return true;
}

/* body_begin - ask the host to open a message; false: it refused */
static bool
body_begin(struct smtpd_proto *s)
{
    struct smtpd_proto_verdict v = { 0, NULL, NULL };
    enum smtpd_decision d = SMTPD_ACCEPT;

    if (s->ev->data_begin)
        d = s->ev->data_begin(s->ctx, &v);
    if (d == SMTPD_PENDING)
        msg_panic("smtpd_proto: data_begin must decide synchronously");
    if (d == SMTPD_REJECT) {
        smtpd_proto__verdict(s, &v, 451, "4.3.0", "Cannot accept message now");
        return false;
    }
    s->txn.body_started = true;
    return true;
}

static bool
check_data(struct smtpd_proto *s, struct cmd_args *a)
{
    if (!need_helo(s) || !no_args(s, a, "Syntax: DATA"))
        return false;
    if (s->txn.chunking)
        return sequence_error(s, "DATA not allowed after BDAT");
    return check_recipients(s);
}

static void
proceed_data(struct smtpd_proto *s, struct cmd_args *a)
{
    if (!body_begin(s))
        return;
    smtpd_proto__reply(s, 354, NULL, "End data with <CR><LF>.<CR><LF>");
    smtpd_proto__data_start(s);
}

/* parse_bdat - "size [LAST]" (RFC 3030 §2); the size saturates */
static bool
parse_bdat(struct cmd_args *a)
{
    uint64_t v = 0;
    size_t i;

    for (i = 0; i < a->len && a->arg[i] >= '0' && a->arg[i] <= '9'; i++) {
        unsigned d = (unsigned)(a->arg[i] - '0');

        v = v > (UINT64_MAX - d) / 10 ? UINT64_MAX : v * 10 + d;
    }
    if (i == 0 || i > 20)
        return false;
    a->bdat_size = v;
    a->bdat_last = false;
    if (i == a->len)
        return true;
    if (a->len - i == 5 && strncasecmp(a->arg + i, " LAST", 5) == 0) {
        a->bdat_last = true;
        return true;
    }
    return false;
}

/*
 * check_bdat - a BDAT whose size parses is followed by that many octets
 * whatever we answer (RFC 3030 §3), so a refused chunk is still read and
 * dropped to keep the stream in step.
 */
static bool
check_bdat(struct smtpd_proto *s, struct cmd_args *a)
{
    bool ok;

    if (!parse_bdat(a))
        return syntax_error(s, "Syntax: BDAT size [LAST]");
    if (!s->cfg.allow_chunking) {
        smtpd_proto__error(s, 502, "5.5.1", "BDAT not available");
        ok = false;
    } else {
        ok = need_helo(s) && check_recipients(s);
    }
    if (!ok)
        smtpd_proto__bdat_start(s, a->bdat_size, a->bdat_last, true);
    return ok;
}

static void
proceed_bdat(struct smtpd_proto *s, struct cmd_args *a)
{
    bool refused = !s->txn.body_started && !body_begin(s);

    s->txn.chunking = s->txn.chunking || !refused;
    smtpd_proto__bdat_start(s, a->bdat_size, a->bdat_last, refused);
}

/* ------------------------------------------------------------ small commands */

static bool
check_rset(struct smtpd_proto *s, struct cmd_args *a)
{
    return no_args(s, a, "Syntax: RSET");
}

static void
proceed_rset(struct smtpd_proto *s, struct cmd_args *a)
{
    smtpd_proto__txn_abort(s);
    smtpd_proto__reply(s, 250, "2.0.0", "Ok");
}

static bool
check_any(struct smtpd_proto *s, struct cmd_args *a)
{
    return true;
}

static void
proceed_noop(struct smtpd_proto *s, struct cmd_args *a)
{
    smtpd_proto__reply(s, 250, "2.0.0", "Ok");
}

static void
proceed_quit(struct smtpd_proto *s, struct cmd_args *a)
{
    smtpd_proto__reply(s, 221, "2.0.0", "Bye");
    smtpd_proto__txn_abort(s);
    if (s->ev->quit)
        s->ev->quit(s->ctx);
    smtpd_proto__close(s);
}

static bool
check_vrfy(struct smtpd_proto *s, struct cmd_args *a)
{
    return a->len ? true : syntax_error(s, "Syntax: VRFY address");
}

static void
proceed_vrfy(struct smtpd_proto *s, struct cmd_args *a)
{
    smtpd_proto__reply(s, 252, "2.5.2",
                       "Cannot VRFY user, but will accept message and attempt delivery");
}

static bool
check_expn(struct smtpd_proto *s, struct cmd_args *a)
{
    smtpd_proto__error(s, 502, "5.5.1", "EXPN not supported");
    return false;
}

static void
proceed_help(struct smtpd_proto *s, struct cmd_args *a)
{
    smtpd_proto__reply(s, 214, "2.0.0",
                       "Commands: EHLO HELO MAIL RCPT DATA BDAT "
                       "RSET NOOP QUIT VRFY HELP STARTTLS AUTH");
}

/* ----------------------------------------------------------------- STARTTLS */

static bool
check_starttls(struct smtpd_proto *s, struct cmd_args *a)
{
    if (!no_args(s, a, "Syntax: STARTTLS"))
        return false;
    if (!s->cfg.offer_starttls || s->tls)
        return sequence_error(s, "STARTTLS not available");
    if (!need_helo(s))
        return false;
    if (s->txn.open)
        return sequence_error(s, "MAIL transaction in progress");
    return true;
}

/*
 * proceed_starttls - from here on nothing the client sent in plaintext may
 * be acted on: the input loop drops it while in TLS_HANDSHAKE, and
 * smtpd_proto_tls_started() starts the session over.
 */
static void
proceed_starttls(struct smtpd_proto *s, struct cmd_args *a)
{
    smtpd_proto__reply(s, 220, "2.0.0", "Ready to start TLS");
    s->state = SMTPD_STATE_TLS_HANDSHAKE;
    if (s->ev->starttls)
        s->ev->starttls(s->ctx);
}

/* --------------------------------------------------------------------- AUTH */

/* proceed_auth - AUTH's checks live with its state, in smtpd_proto_auth.c */
static void
proceed_auth(struct smtpd_proto *s, struct cmd_args *a)
{
    smtpd_proto__auth_start(s, a->arg, a->len);
}

static const struct smtpd_cmd commands[] = {
    { "EHLO", check_ehlo, proceed_ehlo },
    { "HELO", check_helo, proceed_helo },
    { "MAIL", check_mail, proceed_mail },
    { "RCPT", check_rcpt, proceed_rcpt },
    { "DATA", check_data, proceed_data },
    { "BDAT", check_bdat, proceed_bdat },
    { "RSET", check_rset, proceed_rset },
    { "NOOP", check_any, proceed_noop },
    { "QUIT", check_any, proceed_quit },
    { "VRFY", check_vrfy, proceed_vrfy },
    { "EXPN", check_expn, proceed_noop },
    { "HELP", check_any, proceed_help },
    { "STARTTLS", check_starttls, proceed_starttls },
    { "AUTH", check_any, proceed_auth },
};

/* find_command - the table entry for the verb at LINE[0..N) */
static const struct smtpd_cmd *
find_command(const char *line, size_t n)
{
    size_t i;

    for (i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
        if (strlen(commands[i].verb) == n && strncasecmp(commands[i].verb, line, n) == 0)
            return &commands[i];
    return NULL;
}

/* smtpd_proto__command - run one command line (no CR/LF, NUL-terminated) */
void
smtpd_proto__command(struct smtpd_proto *s, char *line, size_t len)
{
    const struct smtpd_cmd *cmd;
    struct cmd_args a;
    size_t verb = 0;

    while (len && (line[len - 1] == ' ' || line[len - 1] == '\t'))
        line[--len] = '\0';
    while (verb < len && line[verb] != ' ')
        verb++;
    cmd = find_command(line, verb);
    if (s->cfg.refuse_service && (cmd == NULL || strcmp(cmd->verb, "QUIT") != 0)) {
        smtpd_proto__error(s, 503, "5.5.1", "No SMTP service here, only QUIT");
        return;
    }
    if (cmd == NULL) {
        smtpd_proto__error(s, 500, "5.5.1", len ? "Command unrecognized" : "Empty command");
        return;
    }
    memset(&a, 0, sizeof(a));
    a.arg = line + verb;
    a.len = len - verb;
    while (a.len && *a.arg == ' ') {
        a.arg++;
        a.len--;
    }
    if (cmd->check(s, &a))
        cmd->proceed(s, &a);
}

/* smtpd_proto__complete - the host decided (now or later) */
void
smtpd_proto__complete(struct smtpd_proto *s, enum smtpd_pending what, bool accepted,
                      const struct smtpd_proto_verdict *v)
{
    switch (what) {
    case SMTPD_PENDING_MAIL:
        if (accepted) {
            s->txn.open = true;
            smtpd_proto__verdict(s, v, 250, "2.1.0", "Sender ok");
        } else {
            smtpd_proto__txn_reset(s);
            smtpd_proto__verdict(s, v, 550, "5.7.1", "Sender rejected");
        }
        break;
    case SMTPD_PENDING_RCPT:
        if (accepted) {
            s->txn.rcpt_ok++;
            smtpd_proto__verdict(s, v, 250, "2.1.5", "Recipient ok");
        } else {
            smtpd_proto__verdict(s, v, 550, "5.7.1", "Relaying denied");
        }
        break;
    case SMTPD_PENDING_AUTH:
        smtpd_proto__auth_done(s, accepted, v);
        break;
    case SMTPD_PENDING_DATA:
        /* The host owns the message now: no data_abort for it. */
        smtpd_proto__txn_reset(s);
        if (accepted)
            smtpd_proto__verdict(s, v, 250, "2.0.0", "Message accepted for delivery");
        else
            smtpd_proto__verdict(s, v, 451, "4.3.0", "Message not queued, try again later");
        break;
    case SMTPD_PENDING_NONE:
        msg_panic("smtpd_proto__complete: nothing pending");
    }
}
