/*
 * cfg_check.c - the structured values: their grammars, typed records and checks
 *
 * A value whose type is structured (cfg.h: CFG_T_REPLY, CFG_T_PATTERN,
 * CFG_T_BOUNCE_PATTERN, CFG_T_DOMAIN_KEY, CFG_T_SOURCE_LIMIT, CFG_T_MX_ROLLUP)
 * is parsed here once, at load, into the typed record the snapshot carries;
 * consumers read the record and never
 * parse the text again. The other WORDS values (smtp-listener,
 * smtp-source-host, http-access, records, smtp-hosts) and the checks a type
 * alone cannot express (cross references, DKIM keys that must sign, sizes
 * with a floor, DKIM keys others can read, user lists) are checked here
 * too. Every problem is one file:line error through the builder
 * (cfg_parse.c).
 *
 * Owns nothing: strings go to the builder's pool.
 *
 * SECURITY: the text is operator input. Regular expressions are compiled
 * with PCRE2 only to report their errors; DKIM key files are read with a size
 * cap and parsed by OpenSSL (cfg_key.c) with the loader's privileges.
 */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "xalloc.h"
#include "cfg.h"
#include "cfg_parse.h"

#define error      cfg__error
#define VMTA_KINDS (CFG_IN(CFG_S_VMTA) | CFG_IN(CFG_S_POOL))

/* split_regex - ARG starts with "/RE/" (a '\\/' inside RE does not end it):
 * NUL-terminate RE in place, point *RE at it and return what follows the
 * closing slash; NULL when ARG is not of that form */
static char *
split_regex(char *arg, char **re)
{
    char *p;

    if (*arg != '/')
        return NULL;
    for (p = arg + 1; *p && *p != '/'; p++)
        if (*p == '\\' && p[1])
            p++;
    if (*p != '/')
        return NULL;
    *p = 0;
    *re = arg + 1;
    return p + 1;
}

/* check_regex - compile RE with PCRE2 (case-insensitive) to report errors at load */
static int
check_regex(struct cfg_builder *b, const char *re)
{
    int code;
    PCRE2_SIZE offset;
    pcre2_code *compiled = pcre2_compile((PCRE2_SPTR)re, PCRE2_ZERO_TERMINATED, PCRE2_CASELESS,
                                         &code, &offset, NULL);
    char text[200], why[256];

    if (compiled) {
        pcre2_code_free(compiled);
        return 0;
    }
    pcre2_get_error_message(code, (PCRE2_UCHAR *)why, sizeof why);
    error(b, "bad regular expression /%s/: %s at offset %zu", cfg__clip(re, text, sizeof text), why,
          (size_t)offset);
    return -1;
}

/* --- the other WORDS values ---------------------------------------------------------- */

/* check_hostport - "ADDR:PORT" with ADDR an address, a CIDR like 0/0, or [IPv6] */
int
cfg__check_hostport(struct cfg_builder *b, const char *what, const char *text, int need_port)
{
    char host[128], bad[200];
    const char *colon = strrchr(text, ':');
    uint8_t fam, pre, addr[16];
    int64_t port = 0;
    size_t hlen;

    if (*text == '[') {
        const char *close = strchr(text, ']');
        if (!close || (close[1] != 0 && close[1] != ':'))
            goto bad;
        hlen = (size_t)(close - text - 1);
        if (hlen >= sizeof host)
            goto bad;
        memcpy(host, text + 1, hlen);
        host[hlen] = 0;
        colon = close[1] == ':' ? close + 1 : NULL;
    } else if (colon && strchr(text, ':') != colon) {
        colon = NULL; /* bare IPv6 address without a port */
        snprintf(host, sizeof host, "%s", text);
    } else {
        hlen = colon ? (size_t)(colon - text) : strlen(text);
        if (hlen >= sizeof host)
            goto bad;
        memcpy(host, text, hlen);
        host[hlen] = 0;
    }
    if (cfg__parse_cidr(host, &fam, &pre, addr) != 0)
        goto bad;
    if (colon && (cfg_parse_int(colon + 1, &port) != 0 || port < 1 || port > 65535))
        goto bad;
    if (need_port && !colon)
        goto bad;
    return 0;
bad:
    error(b, "bad %s '%s' (expected %s)", what, cfg__clip(text, bad, sizeof bad),
          need_port ? "IP:PORT" : "IP or IP:PORT");
    return -1;
}

static int
check_listener(struct cfg_builder *b, char *arg)
{
    char *p = arg, *w = cfg__next_word(&p);
    int rc = cfg__check_hostport(b, "smtp-listener address", w, 1);

    while (rc == 0 && (w = cfg__next_word(&p)) != NULL) {
        if (strncasecmp(w, "source=", 7) == 0 && w[7]) {
            cfg__add_xref(b, CFG_IN(CFG_S_SOURCE), w + 7, "smtp-listener source=");
        } else {
            error(b, "unknown smtp-listener option '%s' (expected source=NAME)", w);
            rc = -1;
        }
    }
    return rc;
}

static int
check_source_host(struct cfg_builder *b, char *arg)
{
    char *p = arg, *ip = cfg__next_word(&p), *host = cfg__next_word(&p);
    uint8_t fam, pre, addr[16];

    if (!ip || !host || cfg__next_word(&p)) {
        error(b, "smtp-source-host needs an IP address and a host name");
        return -1;
    }
    if (cfg__parse_cidr(ip, &fam, &pre, addr) != 0) {
        error(b, "bad IP address '%s' in smtp-source-host", ip);
        return -1;
    }
    return 0;
}

/* check_route - smtp-hosts: cfg_route_parse is the grammar's one home */
static int
check_route(struct cfg_builder *b, const char *text)
{
    struct cfg_route *route = NULL;
    char why[300], shown[200];

    if (cfg_route_parse(text, &route, why, sizeof why) == 0) {
        cfg_route_free(route);
        return 0;
    }
    error(b, "bad smtp-hosts '%s': %s", cfg__clip(text, shown, sizeof shown), why);
    return -1;
}

static int
check_http_access(struct cfg_builder *b, char *arg)
{
    static const char *const levels[] = { "monitor", "operator", "admin", "none", "deny-logs" };
    char *p = arg, *cidr = cfg__next_word(&p), *level = cfg__next_word(&p), *save = NULL;
    uint8_t fam, pre, addr[16];

    if (!cidr || !level || cfg__next_word(&p) || cfg__parse_cidr(cidr, &fam, &pre, addr) != 0) {
        error(b, "bad http-access (expected CIDR monitor|operator|admin|none)");
        return -1;
    }
    for (char *t = strtok_r(level, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        size_t i = 0;
        while (i < 5 && strcasecmp(t, levels[i]) != 0)
            i++;
        if (i == 5) {
            error(b, "unknown http-access level '%s' (expected monitor, operator, admin or none)",
                  t);
            return -1;
        }
    }
    return 0;
}

static int
check_records(struct cfg_builder *b, char *arg)
{
    static const char *const types[] = {
        "d",
        "b",
        "t",
        "tq",
        "r",
        "f",
        "rb",
        "rs",
        "delivery",
        "bounce",
        "transient",
        "transient-queue",
        "receipt",
        "feedback-loop",
        "remote-bounce",
        "remote-status",
    };
    char *save = NULL;

    for (char *t = strtok_r(arg, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        size_t i = 0;
        t = cfg__trim(t);
        while (i < sizeof types / sizeof types[0] && strcasecmp(t, types[i]) != 0)
            i++;
        if (i == sizeof types / sizeof types[0]) {
            error(b, "unknown accounting record type '%s' (expected d, b, t, tq, r, f, rb, rs)", t);
            return -1;
        }
    }
    return 0;
}

static int check_plain_word(struct cfg_builder *b, const char *name, const char *text,
                            const char *what);

/* check_list_address - an <address-list> entry: /RE/, an address, or a local part */
static int
check_list_address(struct cfg_builder *b, char *arg)
{
    char *re, *rest;

    if (*arg == '/') {
        if ((rest = split_regex(arg, &re)) == NULL || *cfg__trim(rest)) {
            error(b, "address: expected /REGEX/, an address or a local part, not '%s'", arg);
            return -1;
        }
        return check_regex(b, re);
    }
    return check_plain_word(b, "address", arg, "an address or a local part");
}

/* check_plain_word - TEXT is one word without control bytes; WHAT is what it should be */
static int
check_plain_word(struct cfg_builder *b, const char *name, const char *text, const char *what)
{
    const char *at = strrchr(text, '@');
    int needs_at = strstr(what, "with a domain") != NULL, is_domain = strcmp(what, "a domain") == 0;

    for (const char *p = text; *p; p++)
        if ((unsigned char)*p <= ' ' || *p == 0x7f || *p == '<' || *p == '>')
            goto bad;
    if (!*text || (needs_at && (!at || at == text || !at[1])) || (is_domain && at))
        goto bad;
    return 0;
bad:
    error(b, "%s: '%s' is not %s", name, text, what);
    return -1;
}

/* --- typed records ------------------------------------------------------------------- */

/* reply_action - one word of a reply line into R; 0 or -1 (unknown) */
static int
reply_action(struct cfg_reply *r, const char *t, int *reenable)
{
    static const struct {
        const char *word;
        uint32_t bit;
    } words[] = {
        { "mode=backoff", CFG_REPLY_BACKOFF },
        { "mode=normal", CFG_REPLY_NORMAL },
        { "defer-queue", CFG_REPLY_DEFER_QUEUE },
        { "bounce-rcpt", CFG_REPLY_BOUNCE_RCPT },
        { "skip-mx", CFG_REPLY_SKIP_MX },
        { "disable-source-ip", CFG_REPLY_DISABLE_SOURCE },
        { "bounce-queue", CFG_REPLY_BOUNCE_QUEUE },
    };

    for (size_t i = 0; i < sizeof words / sizeof words[0]; i++)
        if (strcasecmp(t, words[i].word) == 0) {
            r->actions |= words[i].bit;
            return 0;
        }
    if (strncasecmp(t, "reenable-after=", 15) == 0 &&
        cfg_parse_interval(t + 15, &r->reenable_s) == 0)
        return (*reenable)++, 0;
    if (strncasecmp(t, "backoff-to-normal-after=", 24) == 0 &&
        cfg_parse_interval(t + 24, &r->to_normal_s) == 0)
        return 0;
    return -1;
}

/* decode_reply - "/REGEX/ ACTION[,ACTION...]" and the rejected action combinations */
static int
decode_reply(struct cfg_builder *b, char *arg, struct cfg_reply *r)
{
    char *re, *rest = split_regex(arg, &re), *save = NULL, shown[200];
    int reenable = 0;

    if (!rest) {
        error(b, "reply needs /REGEX/ followed by actions");
        return -1;
    }
    if (check_regex(b, re) != 0)
        return -1;
    if (!*cfg__trim(rest)) {
        error(b, "reply /%s/ has no action", cfg__clip(re, shown, sizeof shown));
        return -1;
    }
    r->to_normal_s = r->reenable_s = -1;
    for (char *t = strtok_r(rest, ",", &save); t; t = strtok_r(NULL, ",", &save))
        if (reply_action(r, cfg__trim(t), &reenable) != 0) {
            error(b, "unknown reply action '%s'", cfg__clip(cfg__trim(t), shown, sizeof shown));
            return -1;
        }
    if ((r->actions & CFG_REPLY_BACKOFF) && (r->actions & CFG_REPLY_NORMAL))
        error(b, "reply action mode=backoff cannot be combined with mode=normal");
    else if ((r->actions & CFG_REPLY_SKIP_MX) && (r->actions & CFG_REPLY_BOUNCE_QUEUE))
        error(b, "reply action skip-mx cannot be combined with bounce-queue");
    else if (reenable > 1)
        error(b, "reply action reenable-after given more than once");
    else if (reenable && !(r->actions & CFG_REPLY_DISABLE_SOURCE))
        error(b, "reply action reenable-after needs disable-source-ip");
    else {
        r->regex = cfg__intern(b, re);
        return 0;
    }
    return -1;
}

/* decode_pattern - "[NAME] /re/ RESULT" of a <pattern-list> */
static int
decode_pattern(struct cfg_builder *b, enum cfg_directive d, char *arg, struct cfg_pattern_entry *pt)
{
    char *p = arg, *header = NULL, *re, *rest, *result, shown[200];

    if (d == CFG_D_HEADER && !(header = cfg__next_word(&p))) {
        error(b, "header needs a header name, /REGEX/ and a result");
        return -1;
    }
    while (isspace((unsigned char)*p))
        p++;
    if (!(rest = split_regex(p, &re)) || !(result = cfg__next_word(&rest)) ||
        cfg__next_word(&rest)) {
        error(b, "pattern needs /REGEX/ and one result (virtual-mta=NAME, "
                 "recipient-priority=N or call-to:LIST)");
        return -1;
    }
    if (check_regex(b, re) != 0)
        return -1;
    if (strncasecmp(result, "virtual-mta=", 12) == 0 && result[12]) {
        pt->result = CFG_RESULT_VMTA;
        pt->target = cfg__intern(b, result + 12);
        cfg__add_xref(b, VMTA_KINDS, result + 12, "virtual-mta=");
    } else if (strncasecmp(result, "call-to:", 8) == 0 && result[8]) {
        pt->result = CFG_RESULT_CALL;
        pt->target = cfg__intern(b, result + 8);
        cfg__add_xref(b, CFG_IN(CFG_S_PATTERN_LIST), result + 8, "call-to:");
    } else if (strncasecmp(result, "recipient-priority=", 19) == 0 &&
               cfg_parse_int(result + 19, &pt->priority) == 0 && pt->priority <= 100) {
        pt->result = CFG_RESULT_RECIPIENT_PRIORITY;
    } else {
        error(b, "unknown pattern result '%s'", cfg__clip(result, shown, sizeof shown));
        return -1;
    }
    pt->regex = cfg__intern(b, re);
    pt->header = header ? cfg__intern(b, header) : 0;
    return 0;
}

static int
decode_bounce_pattern(struct cfg_builder *b, char *arg, struct cfg_bounce_pattern *bp)
{
    char *re, *rest = split_regex(arg, &re), *category;

    if (!rest || !(category = cfg__next_word(&rest)) || cfg__next_word(&rest)) {
        error(b, "bounce category pattern needs /REGEX/ and one category name");
        return -1;
    }
    if (check_regex(b, re) != 0)
        return -1;
    bp->regex = cfg__intern(b, re);
    bp->category = cfg__intern(b, category);
    return 0;
}

/*
 * check_key - the DKIM key at PATH can sign (cfg_key.c says why not; its
 * algorithm goes to *ALGP), and only its owner and group may read it: a
 * world-readable key lets every local user sign as the operator's domain
 * (OpenDKIM refuses such keys; we warn)
 */
static int
check_key(struct cfg_builder *b, const char *path, enum cfg_dkim_alg *algp)
{
    char why[PATH_MAX + 256];
    struct stat st;

    if (cfg_dkim_key_check_file(path, algp, why, sizeof why) != 0) {
        error(b, "%s", why);
        return -1;
    }
    if (stat(path, &st) == 0 && (st.st_mode & S_IROTH))
        cfg__warning(b,
                     "DKIM key file '%s' is readable by every local user (mode %04o); make it "
                     "0640, group of the run-as-user",
                     path, (unsigned)(st.st_mode & 07777));
    return 0;
}

/* decode_key_file - dkim-key-file PATH: the key must sign; its algorithm goes to V->num */
static int
decode_key_file(struct cfg_builder *b, const char *path, struct cfg_value *v)
{
    enum cfg_dkim_alg alg = CFG_DKIM_NONE;

    if (check_key(b, path, &alg) != 0)
        return -1;
    v->num = alg;
    return 0;
}

/* check_user_list - submit-users, trusted-submit-users: "name, @group ..." */
static int
check_user_list(struct cfg_builder *b, const char *what, char *arg)
{
    static const char ok[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-$";
    char *save = NULL;
    int n = 0;

    for (char *t = strtok_r(arg, ", \t", &save); t; t = strtok_r(NULL, ", \t", &save), n++) {
        const char *name = t[0] == '@' ? t + 1 : t;

        if (*name == '\0' || strspn(name, ok) != strlen(name) || strlen(name) > 64) {
            error(b, "%s: '%s' is neither a user name nor @group", what, t);
            return -1;
        }
    }
    if (n == 0) {
        error(b, "%s needs user names or @groups", what);
        return -1;
    }
    return 0;
}

/* decode_domain_key - "SELECTOR,DOMAIN|*,PEMFILE"; the key file must sign */
static int
decode_domain_key(struct cfg_builder *b, char *arg, const char *text, struct cfg_domain_key *k)
{
    char *parts[3], *save = NULL, shown[200];
    enum cfg_dkim_alg alg = CFG_DKIM_NONE;
    int n = 0;

    for (char *t = strtok_r(arg, ",", &save); t && n < 3; t = strtok_r(NULL, ",", &save))
        parts[n++] = cfg__trim(t);
    if (n != 3 || strtok_r(NULL, ",", &save) || !*parts[0] || !*parts[1] || !*parts[2]) {
        error(b, "bad domain-key '%s' (expected SELECTOR,DOMAIN,KEYFILE)",
              cfg__clip(text, shown, sizeof shown));
        return -1;
    }
    if (check_key(b, parts[2], &alg) != 0)
        return -1;
    k->alg = alg;
    k->selector = cfg__intern(b, parts[0]);
    k->domain = cfg__intern(b, parts[1]);
    k->path = cfg__intern(b, parts[2]);
    return 0;
}

/*
 * decode_source_limit - "CIDR LIMIT" of a source-ip-max-* line D: the
 * addresses, and the LIMIT as D reads it (a count for source-ip-max-smtp-out,
 * a data volume rate for -data-volume-rate, a rate otherwise)
 */
static int
decode_source_limit(struct cfg_builder *b, enum cfg_directive d, char *arg,
                    struct cfg_source_limit *l)
{
    const char *name = cfg_directive_info(d)->name, *what;
    char *save = NULL, *cidr = strtok_r(arg, " \t", &save), *limit = strtok_r(NULL, " \t", &save);
    char shown[200];
    int rc;

    if (!cidr || !limit || strtok_r(NULL, " \t", &save)) {
        error(b,
              "bad value for '%s' (expected a CIDR and a limit, such as 0/0 10/s, "
              "127.0.0.0/8 4 or 10.1.0.0/16 50M/h)",
              name);
        return -1;
    }
    if (cfg__parse_cidr(cidr, &l->family, &l->prefix, l->addr) != 0) {
        error(b, "bad CIDR '%s' for '%s'", cfg__clip(cidr, shown, sizeof shown), name);
        return -1;
    }
    if (strncasecmp(limit, CFG_LOCAL_PREFIX, strlen(CFG_LOCAL_PREFIX)) == 0) {
        l->local = 1; /* one per host in a <cluster> */
        limit += strlen(CFG_LOCAL_PREFIX);
    }
    switch (d) {
    case CFG_D_SOURCE_IP_MAX_SMTP_OUT:
        what = "a whole number";
        l->period = 0;
        rc = cfg_parse_int(limit, &l->limit);
        break;
    case CFG_D_SOURCE_IP_MAX_DATA_VOLUME_RATE:
        what = "a data volume rate such as 50M/h";
        rc = cfg_parse_volume_rate(limit, &l->limit, &l->period);
        break;
    default:
        what = "a rate such as 10/s";
        rc = cfg_parse_rate(limit, &l->limit, &l->period);
    }
    if (rc != 0) {
        error(b, "bad limit '%s' for '%s' (expected %s)", cfg__clip(limit, shown, sizeof shown),
              name, what);
        return -1;
    }
    return 0;
}

/* host_pattern_chars - a host name with shell wildcards: letters, digits, - . _ * ? */
static int
host_pattern_chars(const char *s)
{
    if (!*s)
        return 0;
    for (; *s; s++)
        if (!(isalnum((unsigned char)*s) || strchr("-._*?", *s)))
            return 0;
    return 1;
}

/*
 * decode_mx_rollup - "MXNAME ROLLUP [rollup-by-ip]" of an <mx-rollup-list>:
 * MX hosts matching MXNAME (wildcards) roll up into the queue ROLLUP
 */
static int
decode_mx_rollup(struct cfg_builder *b, char *arg, struct cfg_mx_rollup *r)
{
    char *save = NULL, *pattern = strtok_r(arg, " \t", &save);
    char *name = strtok_r(NULL, " \t", &save), *opt = strtok_r(NULL, " \t", &save), shown[200];

    if (!pattern || !name || strtok_r(NULL, " \t", &save) ||
        (opt && strcasecmp(opt, "rollup-by-ip") != 0)) {
        error(b, "bad mx line (expected MXNAME ROLLUP-NAME [rollup-by-ip], such as "
                 "mx *.google.com google.rollup)");
        return -1;
    }
    if (!host_pattern_chars(pattern)) {
        error(b, "bad MX host pattern '%s' (letters, digits, - . _ and the wildcards * ?)",
              cfg__clip(pattern, shown, sizeof shown));
        return -1;
    }
    if (!host_pattern_chars(name) || strpbrk(name, "*?") || strchr(name, '/')) {
        error(b, "bad rollup name '%s' (a domain-like name such as google.rollup)",
              cfg__clip(name, shown, sizeof shown));
        return -1;
    }
    if (opt)
        cfg__warning(b, "rollup-by-ip is not implemented yet; %s rolls up by MX name", name);
    for (char *p = pattern; *p; p++)
        *p = (char)tolower((unsigned char)*p);
    for (char *p = name; *p; p++)
        *p = (char)tolower((unsigned char)*p);
    r->pattern = cfg__intern(b, pattern);
    r->name = cfg__intern(b, name);
    r->by_ip = opt != NULL;
    return 0;
}

/* cfg__decode_record - see cfg_parse.h */
int
cfg__decode_record(struct cfg_builder *b, enum cfg_directive d, char *scratch, const char *text,
                   struct cfg_value *v)
{
    if (d == CFG_D_DKIM_KEY_FILE)
        return decode_key_file(b, text, v);
    switch ((enum cfg_type)v->type) {
    case CFG_T_REPLY:
        return decode_reply(b, scratch, &v->reply);
    case CFG_T_PATTERN:
        return decode_pattern(b, d, scratch, &v->pattern);
    case CFG_T_BOUNCE_PATTERN:
        return decode_bounce_pattern(b, scratch, &v->bounce);
    case CFG_T_DOMAIN_KEY:
        return decode_domain_key(b, scratch, text, &v->key);
    case CFG_T_SOURCE_LIMIT:
        return decode_source_limit(b, d, scratch, &v->source);
    case CFG_T_MX_ROLLUP:
        return decode_mx_rollup(b, scratch, &v->rollup);
    default:
        return 0;
    }
}

/*
 * check_redis_server - "HOST[:PORT]" of a <cluster>'s Redis: an address or a
 * host name (resolved by qmgr off its loop), the port 6379 when not given
 */
static int
check_redis_server(struct cfg_builder *b, const char *text)
{
    const char *colon = strrchr(text, ':');
    char shown[200];
    int64_t port;
    size_t i, n;

    if (*text == '[' || (colon && strchr(text, ':') != colon))
        return cfg__check_hostport(b, "redis-server", text, 0); /* IPv6 */
    n = colon ? (size_t)(colon - text) : strlen(text);
    for (i = 0; i < n; i++)
        if (!isalnum((unsigned char)text[i]) && text[i] != '.' && text[i] != '-' && text[i] != '_')
            break;
    if (n == 0 || n > 253 || i < n ||
        (colon && (cfg_parse_int(colon + 1, &port) != 0 || port < 1 || port > 65535))) {
        error(b, "bad redis-server '%s' (expected HOST:PORT, such as 127.0.0.1:6379)",
              cfg__clip(text, shown, sizeof shown));
        return -1;
    }
    return 0;
}

/* check_key_word - a part of the cluster's Redis keys: letters, digits and . _ : - { } */
static int
check_key_word(struct cfg_builder *b, const char *name, const char *text)
{
    char shown[200];
    size_t n = strlen(text);

    if (n > 0 && n <= 64 &&
        strspn(text, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                     "0123456789._:-{}") == n)
        return 0;
    error(b, "%s '%s' must be 1 to 64 letters, digits or . _ : - { }", name,
          cfg__clip(text, shown, sizeof shown));
    return -1;
}

/* cfg__check_value - see cfg_parse.h */
int
cfg__check_value(struct cfg_builder *b, enum cfg_directive d, char *arg, const char *text)
{
    int64_t n;

    switch (d) {
    case CFG_D_SMTP_LISTENER:
        return check_listener(b, arg);
    case CFG_D_SMTP_SOURCE_HOST:
        return check_source_host(b, arg);
    case CFG_D_SUBMIT_USERS:
    case CFG_D_TRUSTED_SUBMIT_USERS:
        return check_user_list(b, cfg_directive_info(d)->name, arg);
    case CFG_D_AUTHENTICATION_METHOD:
        /* PowerMTA's system (the host's accounts) and certificate (a client certificate)
           are not implemented: say so at load, since such a user can never log in. */
        if (strcasecmp(text, "password") != 0)
            cfg__warning(b,
                         "authentication-method %s is not implemented yet; this user cannot "
                         "authenticate",
                         text);
        return 0;
    case CFG_D_DKIM_ALGORITHM: {
        enum cfg_dkim_alg algs[CFG_DKIM_ALG_MAX];
        char why[200];

        if (cfg_dkim_algorithms(text, algs, why, sizeof why) > 0)
            return 0;
        error(b, "%s", why);
        return -1;
    }
    case CFG_D_HTTP_ACCESS:
        return check_http_access(b, arg);
    case CFG_D_NAME_SERVER:
        return cfg__check_hostport(b, "name-server", text, 0);
    case CFG_D_CLUSTER_REDIS_SERVER:
        return check_redis_server(b, text);
    case CFG_D_CLUSTER_NODE_NAME:
    case CFG_D_CLUSTER_KEY_PREFIX:
        return check_key_word(b, cfg_directive_info(d)->name, text);
    case CFG_D_SMTP_HOSTS:
        return check_route(b, text);
    case CFG_D_RECORDS:
        return check_records(b, arg);
    case CFG_D_MAX_SIZE:
        if (cfg_parse_size(text, &n) == 0 && n >= 0 && n < (1 << 20)) {
            error(b, "max-size %s is below the minimum of 1M", text);
            return -1;
        }
        return 0;
    case CFG_D_SMTP_PATTERN_LIST:
        cfg__add_xref(b, CFG_IN(CFG_S_SMTP_PATTERN_LIST), text, "smtp-pattern-list");
        return 0;
    case CFG_D_SOURCE_PATTERN_LIST:
        cfg__add_xref(b, CFG_IN(CFG_S_PATTERN_LIST), text, "pattern-list");
        return 0;
    case CFG_D_VIRTUAL_MTA:
        cfg__add_xref(b, CFG_IN(CFG_S_VMTA), text, "virtual-mta");
        return 0;
    case CFG_D_SENDER_VMTA:
    case CFG_D_INVALID_VIRTUAL_MTA_FALLBACK:
    case CFG_D_BACKOFF_REROUTE_TO_VIRTUAL_MTA:
    case CFG_D_REROUTE_TO_VIRTUAL_MTA:
        cfg__add_xref(b, VMTA_KINDS, text, cfg_directive_info(d)->name);
        return 0;
    case CFG_D_DEFAULT_VIRTUAL_MTA:
        if (strcasecmp(text, "by-smtp-source-ip") != 0)
            cfg__add_xref(b, VMTA_KINDS, text, "default-virtual-mta");
        return 0;
    case CFG_D_SOURCE_NAME:
        cfg__add_xref(b, CFG_IN(CFG_S_SOURCE), text, "source");
        return 0;
    case CFG_D_AL_ADDRESS:
        return check_list_address(b, arg);
    case CFG_D_AL_DOMAIN:
    case CFG_D_BCC_UPON_DELIVERY:
    case CFG_D_FORWARD_UNMATCHED_TO:
    case CFG_D_FORWARD_ERRORS_TO:
        return check_plain_word(b, cfg_directive_info(d)->name, text,
                                d == CFG_D_AL_DOMAIN ? "a domain" : "an address with a domain");
    case CFG_D_DOMAIN_SUPPRESSION_LISTS:
        for (char *save = NULL, *w = strtok_r(arg, ", \t", &save); w;
             w = strtok_r(NULL, ", \t", &save))
            cfg__add_xref(b, CFG_IN(CFG_S_ADDRESS_LIST), w, "suppression-lists");
        return 0;
    case CFG_D_ADD_TO_SUPPRESSION_LIST:
        cfg__add_xref(b, CFG_IN(CFG_S_ADDRESS_LIST), text, "add-to-suppression-list");
        return 0;
    case CFG_D_HTTP_DELIVERY_URL: {
        struct cfg_http_url u;
        char why[400];
        if (cfg_http_url_parse(text, &u, why, sizeof why) == 0)
            return 0;
        error(b, "http-delivery-url: %s", why);
        return -1;
    }
    case CFG_D_COMMAND: {
        char **words = cfg_command_split(text);
        if (words && words[0][0] == '/') {
            cfg_command_free(words);
            return 0;
        }
        cfg_command_free(words);
        error(b, "command must be a program's absolute path and its arguments (balanced quotes)");
        return -1;
    }
    case CFG_D_FILE_DESTINATION:
        if (text[0] == '/')
            return 0;
        error(b, "file-destination must be an absolute path");
        return -1;
    case CFG_D_WARMUP_PLAN:
        cfg__add_xref(b, CFG_IN(CFG_S_WARMUP_PLAN), text, "warmup-plan");
        return 0;
    case CFG_D_COLD_VIRTUAL_MTA:
    case CFG_D_WARMUP_OVERFLOW_VIRTUAL_MTA:
        cfg__add_xref(b, CFG_IN(CFG_S_VMTA), text, cfg_directive_info(d)->name);
        return 0;
    default:
        return 0;
    }
}
