/*
 * smtpd_proto.c - SMTP server engine: session life cycle, input framing,
 * replies, and the host's asynchronous results
 *
 * Owns the struct smtpd_proto and its three buffers: the output (replies the
 * host writes), the command line being assembled, and the input held while
 * the engine waits for the host. Commands are in smtpd_proto_cmd.c, AUTH in
 * smtpd_proto_auth.c, message content in smtpd_proto_body.c.
 *
 * SECURITY: the input side of this file is the first code to touch network
 * bytes. Every buffer has a ceiling that is checked before appending: the
 * command line (also while it is still partial), the held pipeline input,
 * and the output is reported through smtpd_proto_want_input() so the host can
 * stop reading from a client that does not read its replies. Host-supplied
 * reply text is sanitised so it can never end a reply line early.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/crypto.h>

#include "msg.h"
#include "xalloc.h"
#include "smtpd_proto_int.h"

/* smtpd_proto_config_init - defaults, as PowerMTA's <source> has them */
void
smtpd_proto_config_init(struct smtpd_proto_config *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->host_name = "localhost";
    cfg->max_line = SMTPD_DEFAULT_MAX_LINE;
    cfg->max_errors = 10;
    cfg->max_held = SMTPD_DEFAULT_MAX_HELD;
    cfg->allow_auth = true;
    cfg->allow_chunking = true;
    cfg->allow_smtputf8 = true;
}

/* smtpd_proto_new - see smtpd_proto.h */
struct smtpd_proto *
smtpd_proto_new(const struct smtpd_proto_config *cfg, const struct smtpd_proto_events *events,
                void *ctx)
{
    static const struct smtpd_proto_events no_events;
    struct smtpd_proto *s = xcalloc(1, sizeof(*s));

    s->cfg = *cfg;
    s->host_name = xstrdup(cfg->host_name ? cfg->host_name : "localhost");
    s->cfg.host_name = s->host_name;
    if (s->cfg.max_line == 0)
        s->cfg.max_line = SMTPD_DEFAULT_MAX_LINE;
    if (s->cfg.max_line < 64) /* room for "AUTH " detection */
        s->cfg.max_line = 64;
    if (s->cfg.max_held == 0)
        s->cfg.max_held = SMTPD_DEFAULT_MAX_HELD;
    s->ev = events ? events : &no_events;
    s->ctx = ctx;
    s->tls = cfg->tls_active;
    s->state = SMTPD_STATE_INIT;
    buf_init(&s->out, 0);
    buf_init(&s->line,
             (s->cfg.max_line > SMTPD_AUTH_LINE_MAX ? s->cfg.max_line : SMTPD_AUTH_LINE_MAX) + 1);
    buf_init(&s->held, s->cfg.max_held);
    return s;
}

/* wipe_buf - clear a buffer that may have held credentials */
static void
wipe_buf(struct buf *b)
{
    if (b->data)
        OPENSSL_cleanse(b->data, b->cap);
    buf_free(b);
}

/* smtpd_proto_free - see smtpd_proto.h */
void
smtpd_proto_free(struct smtpd_proto *s)
{
    if (s == NULL)
        return;
    smtpd_proto__auth_clear(s);
    buf_free(&s->out);
    wipe_buf(&s->line);
    wipe_buf(&s->held);
    free(s->auth_user);
    free(s->host_name);
    free(s);
}

/* smtpd_proto_start - see smtpd_proto.h */
void
smtpd_proto_start(struct smtpd_proto *s)
{
    if (s->state != SMTPD_STATE_INIT)
        msg_panic("smtpd_proto_start: session already started");
    s->state = SMTPD_STATE_GREETING;
    if (s->cfg.refuse_service)
        buf_printf(&s->out, "554 5.7.1 %s does not accept mail from you\r\n", s->host_name);
    else
        buf_printf(&s->out, "220 %s ESMTP service ready\r\n", s->host_name);
}

/* smtpd_proto__reply - append one reply line; TEXT is trusted */
void
smtpd_proto__reply(struct smtpd_proto *s, int code, const char *enhanced, const char *text)
{
    if (s->state == SMTPD_STATE_CLOSED)
        return;
    if (enhanced)
        buf_printf(&s->out, "%d %s %s\r\n", code, enhanced, text);
    else
        buf_printf(&s->out, "%d %s\r\n", code, text);
}

/*
 * smtpd_proto__error - a reply for a client mistake. Counts towards
 * max_errors; at the limit the client has made enough noise: 421 and close.
 */
void
smtpd_proto__error(struct smtpd_proto *s, int code, const char *enhanced, const char *text)
{
    smtpd_proto__reply(s, code, enhanced, text);
    smtpd_proto__count_error(s);
}

/* smtpd_proto__count_error - one more client error; enforce the limit */
void
smtpd_proto__count_error(struct smtpd_proto *s)
{
    if (s->state == SMTPD_STATE_CLOSED)
        return;
    if (s->cfg.max_errors && ++s->errors >= s->cfg.max_errors) {
        smtpd_proto__reply(s, 421, "4.7.0", "Too many errors");
        smtpd_proto__close(s);
    }
}

/* enhanced_ok - "c.sss.ddd" with class C (RFC 3463 §2) */
static bool
enhanced_ok(const char *e, int cls)
{
    size_t i, n;
    int part;

    if (e == NULL || e[0] != '0' + cls || e[1] != '.')
        return false;
    e += 2;
    for (part = 0; part < 2; part++) {
        for (i = 0; e[i] >= '0' && e[i] <= '9'; i++)
            ;
        if (i == 0 || i > 3)
            return false;
        e += i;
        n = part == 0 ? '.' : '\0';
        if (*e != (char)n)
            return false;
        e++;
    }
    return true;
}

/* sanitise_text - copy host TEXT as printable ASCII, bounded */
static void
sanitise_text(char *out, size_t outsize, const char *text)
{
    size_t i;

    for (i = 0; text[i] && i + 1 < outsize; i++)
        out[i] = text[i] >= 32 && text[i] <= 126 ? text[i] : '?';
    out[i] = '\0';
}

/*
 * smtpd_proto__verdict - reply with the host's verdict when it is a valid
 * reply of the expected class, else with the default. The default decides
 * the class: 2 for acceptance, 4 or 5 for refusal.
 */
void
smtpd_proto__verdict(struct smtpd_proto *s, const struct smtpd_proto_verdict *v, int dflt_code,
                     const char *dflt_enhanced, const char *dflt_text)
{
    char text[SMTPD_TEXT_MAX + 1], enh[16];
    bool want_ok = dflt_code / 100 == 2;
    int code, cls;

    if (v == NULL || v->code < 200 || v->code > 599 || (v->code / 100 == 2) != want_ok ||
        v->code / 100 == 3) {
        smtpd_proto__reply(s, dflt_code, dflt_enhanced, dflt_text);
        return;
    }
    code = v->code;
    cls = code / 100;
    if (enhanced_ok(v->enhanced, cls))
        snprintf(enh, sizeof(enh), "%s", v->enhanced);
    else if (code == dflt_code)
        snprintf(enh, sizeof(enh), "%s", dflt_enhanced);
    else
        snprintf(enh, sizeof(enh), "%d.0.0", cls);
    sanitise_text(text, sizeof(text), v->text && v->text[0] ? v->text : dflt_text);
    smtpd_proto__reply(s, code, enh, text);
}

/* smtpd_proto__txn_reset - forget the transaction (no event) */
void
smtpd_proto__txn_reset(struct smtpd_proto *s)
{
    memset(&s->txn, 0, sizeof(s->txn));
}

/* smtpd_proto__txn_abort - drop the transaction; tell the host if it knew */
void
smtpd_proto__txn_abort(struct smtpd_proto *s)
{
    bool knew = s->txn.open;

    smtpd_proto__txn_reset(s);
    if (knew && s->ev->data_abort)
        s->ev->data_abort(s->ctx);
}

/* smtpd_proto__txn_abort_keep - tell the host, keep the failure to report */
void
smtpd_proto__txn_abort_keep(struct smtpd_proto *s)
{
    if (s->txn.open) {
        s->txn.open = false;
        if (s->ev->data_abort)
            s->ev->data_abort(s->ctx);
    }
}

/* smtpd_proto__close - end the session; the host closes after flushing */
void
smtpd_proto__close(struct smtpd_proto *s)
{
    if (s->state == SMTPD_STATE_CLOSED)
        return;
    smtpd_proto__txn_abort(s);
    smtpd_proto__auth_clear(s);
    s->state = SMTPD_STATE_CLOSED;
    s->pending = SMTPD_PENDING_NONE;
    wipe_buf(&s->held);
    wipe_buf(&s->line);
}

/* smtpd_proto__wait - a host decision is outstanding; hold input */
void
smtpd_proto__wait(struct smtpd_proto *s, enum smtpd_pending what)
{
    s->state = SMTPD_STATE_WAIT_HOST;
    s->pending = what;
}

/* finish_wait - leave WAIT_HOST; returns false when nothing was pending */
static bool
finish_wait(struct smtpd_proto *s, enum smtpd_pending what)
{
    if (s->state != SMTPD_STATE_WAIT_HOST || s->pending != what)
        return false;
    s->state = SMTPD_STATE_COMMAND;
    s->pending = SMTPD_PENDING_NONE;
    return true;
}

/* replay_held - feed input that arrived while waiting, in order */
static void
replay_held(struct smtpd_proto *s)
{
    size_t len;
    char *data;

    if (s->held_overflow && s->state != SMTPD_STATE_WAIT_HOST) {
        /* The pipeline exceeded what we promised to hold; bytes were lost,
           so the stream cannot be trusted any more. */
        smtpd_proto__reply(s, 421, "4.7.0", "Too much pipelined input");
        smtpd_proto__close(s);
        return;
    }
    if (s->depth > 0 || s->held.len == 0 || s->state == SMTPD_STATE_WAIT_HOST)
        return;
    data = buf_detach(&s->held, &len);
    smtpd_proto_input(s, data, len);
    OPENSSL_cleanse(data, len);
    free(data);
}

/*
 * smtpd_proto__decided - a decision callback returned. PENDING leaves the
 * engine waiting (unless the host already answered from inside the call).
 */
void
smtpd_proto__decided(struct smtpd_proto *s, enum smtpd_pending what, enum smtpd_decision d,
                     const struct smtpd_proto_verdict *v)
{
    if (d == SMTPD_PENDING || s->state == SMTPD_STATE_CLOSED)
        return; /* later, or the host closed us meanwhile */
    if (!finish_wait(s, what))
        msg_panic("smtpd_proto: host answered twice");
    smtpd_proto__complete(s, what, d == SMTPD_ACCEPT, v);
}

/* smtpd_proto_result - see smtpd_proto.h */
void
smtpd_proto_result(struct smtpd_proto *s, int code, const char *enhanced, const char *text)
{
    struct smtpd_proto_verdict v = { code, enhanced, text };
    enum smtpd_pending what = s->pending;

    if (s->state == SMTPD_STATE_CLOSED)
        return; /* timed out or vanished meanwhile */
    if (!finish_wait(s, what) || what == SMTPD_PENDING_NONE)
        msg_panic("smtpd_proto_result: nothing is pending");
    smtpd_proto__complete(s, what, code == 0 || code / 100 == 2, &v);
    replay_held(s);
}

/* smtpd_proto_data_result - see smtpd_proto.h */
void
smtpd_proto_data_result(struct smtpd_proto *s, int code, const char *enhanced, const char *text)
{
    if (s->state != SMTPD_STATE_CLOSED && s->pending != SMTPD_PENDING_DATA)
        msg_panic("smtpd_proto_data_result: no message is pending");
    smtpd_proto_result(s, code, enhanced, text);
}

/* hold - keep input that arrives while waiting for the host */
static void
hold(struct smtpd_proto *s, const char *p, size_t len)
{
    if (s->held_overflow || buf_append(&s->held, p, len) != 0)
        s->held_overflow = true;
}

/*
 * line_limit - the length limit for the line being assembled. AUTH lines
 * may be longer (RFC 4954 §4); whether this is one is known from its first
 * five bytes, and max_line >= 64 so no shorter prefix can be too long.
 */
static size_t
line_limit(const struct smtpd_proto *s, const char *p, size_t n)
{
    char head[5];
    size_t h = 0, i;

    if (s->state == SMTPD_STATE_AUTH)
        return SMTPD_AUTH_LINE_MAX;
    for (i = 0; i < s->line.len && h < sizeof(head); i++)
        head[h++] = s->line.data[i];
    for (i = 0; i < n && h < sizeof(head); i++)
        head[h++] = p[i];
    if (h == sizeof(head) && strncasecmp(head, "AUTH ", 5) == 0 &&
        s->cfg.max_line < SMTPD_AUTH_LINE_MAX)
        return SMTPD_AUTH_LINE_MAX;
    return s->cfg.max_line;
}

/* bad_command_byte - a control byte (not TAB) that has no place in a command */
static const char *
bad_command_byte(const char *line, size_t len)
{
    size_t i;

    for (i = 0; i < len; i++) {
        unsigned char c = (unsigned char)line[i];

        if (c == '\0')
            return "NUL character not allowed";
        if ((c < 32 && c != '\t') || c == 127)
            return "Invalid character in command";
    }
    return NULL;
}

/* dispatch_line - a complete line is in s->line */
static void
dispatch_line(struct smtpd_proto *s)
{
    char *line = s->line.data;
    size_t len = s->line.len;
    const char *bad;

    /* Strip LF, then CR: a bare LF ends a command too (lenient). */
    line[--len] = '\0';
    if (len && line[len - 1] == '\r')
        line[--len] = '\0';

    if (s->state == SMTPD_STATE_AUTH)
        smtpd_proto__auth_line(s, line, len);
    else if ((bad = bad_command_byte(line, len)) != NULL)
        smtpd_proto__error(s, 500, "5.5.2", bad);
    else
        smtpd_proto__command(s, line, len);
    /* The line may have been an AUTH secret: do not leave it in memory. */
    if (s->line.data)
        OPENSSL_cleanse(s->line.data, s->line.len);
    buf_reset(&s->line);
}

/*
 * line_input - assemble a command line from P[0..LEN). Returns the bytes
 * used. The limit is checked before anything is appended, counting a still
 * missing LF as one byte, so a client that never sends LF is stopped at the
 * same byte as one that does.
 */
static size_t
line_input(struct smtpd_proto *s, const char *p, size_t len)
{
    const char *nl = memchr(p, '\n', len);
    size_t n = nl ? (size_t)(nl - p) + 1 : len;
    size_t total = s->line.len + n + (nl ? 0 : 1);

    if (s->skip_line) {
        if (nl)
            s->skip_line = false;
        return n;
    }
    if (total > line_limit(s, p, n)) {
        if (s->line.data)
            OPENSSL_cleanse(s->line.data, s->line.len);
        buf_reset(&s->line);
        s->skip_line = nl == NULL;
        if (s->state == SMTPD_STATE_AUTH)
            smtpd_proto__auth_clear(s);
        smtpd_proto__error(s, 500, "5.5.2", "Line too long");
        return n;
    }
    if (buf_append(&s->line, p, n) != 0)
        msg_panic("smtpd_proto: line buffer smaller than the line limit");
    if (nl)
        dispatch_line(s);
    return n;
}

/* smtpd_proto_input - see smtpd_proto.h */
void
smtpd_proto_input(struct smtpd_proto *s, const void *bytes, size_t len)
{
    const char *p = bytes;
    size_t n;

    if (s->state == SMTPD_STATE_INIT)
        msg_panic("smtpd_proto_input: session not started");
    s->depth++;
    while (len > 0) {
        switch (s->state) {
        case SMTPD_STATE_CLOSED:
            n = len;
            break;
        case SMTPD_STATE_TLS_HANDSHAKE:
            /* Pipelined after STARTTLS: must not be executed inside TLS
               (the STARTTLS command-injection bug, CVE-2011-0411). */
            s->discarded += len;
            n = len;
            break;
        case SMTPD_STATE_WAIT_HOST:
            hold(s, p, len);
            n = len;
            break;
        case SMTPD_STATE_DATA:
            n = smtpd_proto__data_input(s, p, len);
            break;
        case SMTPD_STATE_BDAT:
            n = smtpd_proto__bdat_input(s, p, len);
            break;
        default:
            n = line_input(s, p, len);
            break;
        }
        p += n;
        len -= n;
    }
    s->depth--;
}

/* smtpd_proto_output - see smtpd_proto.h */
struct buf *
smtpd_proto_output(struct smtpd_proto *s)
{
    return &s->out;
}

/* smtpd_proto_tls_started - see smtpd_proto.h */
void
smtpd_proto_tls_started(struct smtpd_proto *s)
{
    if (s->state == SMTPD_STATE_CLOSED)
        return;
    if (s->state != SMTPD_STATE_TLS_HANDSHAKE)
        msg_panic("smtpd_proto_tls_started: no STARTTLS was accepted");
    /* RFC 3207 §4.2: forget everything learnt from the client. */
    s->tls = true;
    s->esmtp = false;
    s->skip_line = false;
    buf_reset(&s->line);
    smtpd_proto__txn_reset(s);
    s->state = SMTPD_STATE_GREETING;
}

/* smtpd_proto_timeout - see smtpd_proto.h */
void
smtpd_proto_timeout(struct smtpd_proto *s)
{
    smtpd_proto__reply(s, 421, "4.4.2", "Timeout exceeded, closing connection");
    smtpd_proto__close(s);
}

/* smtpd_proto_shutdown - see smtpd_proto.h */
void
smtpd_proto_shutdown(struct smtpd_proto *s)
{
    smtpd_proto__reply(s, 421, "4.3.2", "Service shutting down, closing connection");
    smtpd_proto__close(s);
}

/* smtpd_proto_disconnected - see smtpd_proto.h */
void
smtpd_proto_disconnected(struct smtpd_proto *s)
{
    smtpd_proto__close(s);
}

enum smtpd_state
smtpd_proto_state(const struct smtpd_proto *s)
{
    return s->state;
}

bool
smtpd_proto_is_closed(const struct smtpd_proto *s)
{
    return s->state == SMTPD_STATE_CLOSED;
}

/* smtpd_proto_want_input - backpressure: replies unread or input held */
bool
smtpd_proto_want_input(const struct smtpd_proto *s)
{
    if (s->state == SMTPD_STATE_CLOSED)
        return false;
    if (s->out.len > SMTPD_OUTPUT_HIGH_WATER)
        return false;
    return s->held.len <= s->cfg.max_held / 2;
}

bool
smtpd_proto_is_tls(const struct smtpd_proto *s)
{
    return s->tls;
}

const char *
smtpd_proto_auth_user(const struct smtpd_proto *s)
{
    return s->auth_user;
}

uint64_t
smtpd_proto_discarded(const struct smtpd_proto *s)
{
    return s->discarded;
}

/* smtpd_proto_set_limits - new size and recipient limits (after AUTH) */
void
smtpd_proto_set_limits(struct smtpd_proto *s, uint64_t max_message_size, unsigned max_rcpt)
{
    s->cfg.max_message_size = max_message_size;
    s->cfg.max_rcpt = max_rcpt;
}
