/*
 * cfg.h - the parsed PowerMTA-style configuration, shared by every program
 *
 * pmtad parses and validates the configuration file once (cfg_load). The result
 * is a set of flat arrays -- scopes, values, an integer pool and a string pool --
 * that refer to each other by index and offset, never by pointer. That makes the
 * parsed configuration its own serialization: pmtad writes it to a snapshot file
 * (cfg_snapshot_write) and each worker maps that file read-only
 * (cfg_snapshot_map) instead of re-reading and re-validating the text.
 *
 * Model
 *   scope   one block of the file: the global level, <domain>, <source>,
 *           <virtual-mta>, <virtual-mta-pool>, <smtp-pattern-list>, ... Each
 *           scope has a kind, a name (the tag argument, macro-expanded), a
 *           parent scope (for <domain> nested in <virtual-mta>) and a run of
 *           values. A <domain a, b> or a macro-expanded <domain x.$M> becomes
 *           one scope per domain.
 *   value   one directive line that took effect: directive id, origin
 *           (file:line), the raw text, and the typed decoding (see cfg_value).
 *   resolve a queue (domain/vmta) or an inbound session (<source>) gets its
 *           effective settings by layering every matching scope from least to
 *           most specific over the built-in defaults (cfg_resolve_queue,
 *           cfg_resolve_session: the only layering rules there are). Each
 *           effective value still carries where it came from, which is what
 *           `pmtad --show-settings` prints.
 *
 * Directives are declared once, in cfg_directives.def (name, type, scopes,
 * default, implementation status); this header turns that list into
 * enum cfg_directive.
 *
 * Errors: cfg_load() reports every problem it finds as "file:line: message"
 * through the diagnostics callback and fails if any was an error; warnings
 * (known but not yet implemented directives) do not fail the load.
 */
#ifndef PMTA_CFG_H
#define PMTA_CFG_H

#include <stdint.h>
#include <stdio.h>
#include <stddef.h>
#include <sys/socket.h>

/* --- directives ---------------------------------------------------------- */

enum cfg_type {
    CFG_T_BOOL,          /* yes|no|true|false|on|off -> num 0/1 */
    CFG_T_INT,           /* decimal integer -> num */
    CFG_T_SIZE,          /* N[bkmgt] or unlimited(-1) -> num bytes */
    CFG_T_INTERVAL,      /* 1w2d3h4m5s | never(-1) -> num seconds */
    CFG_T_INTERVAL_LIST, /* 10m,1h,4h -> ints pool (seconds) */
    CFG_T_RATE,        /* unlimited | N/[M]unit -> num count, num2 period seconds; 0 = unlimited */
    CFG_T_STRING,      /* one word or a "quoted string" -> str */
    CFG_T_WORDS,       /* the rest of the line, kept as text -> str (checked by the directive's own
                          parser) */
    CFG_T_ENUM,        /* one word out of the directive's list -> num index, str text */
    CFG_T_VOLUME_RATE, /* unlimited | N[bkmgt]/[M]unit -> num bytes, num2 period seconds */
    CFG_T_PERCENT,     /* N[.NNNN]% -> num parts per million (0..1000000) */
    /* structured values: the rest of the line, decoded once into a typed record */
    CFG_T_REPLY,          /* /RE/ ACTION[,ACTION...] -> struct cfg_reply */
    CFG_T_PATTERN,        /* [HEADER] /RE/ RESULT -> struct cfg_pattern_entry */
    CFG_T_BOUNCE_PATTERN, /* /RE/ CATEGORY -> struct cfg_bounce_pattern */
    CFG_T_DOMAIN_KEY,     /* SELECTOR,DOMAIN,KEYFILE -> struct cfg_domain_key */
    CFG_T_SOURCE_LIMIT,   /* CIDR LIMIT (source-ip-max-*) -> struct cfg_source_limit */
    CFG_T_MX_ROLLUP,      /* MXNAME ROLLUP [rollup-by-ip] -> struct cfg_mx_rollup */
    CFG_T_DAY_CAP,        /* DAY COUNT (a warm-up plan's step) -> num DAY, num2 COUNT */
    CFG_T_DOUBLING,       /* INTERVAL until COUNT -> num seconds, num2 COUNT */
    CFG_T_COUNT
};

/* cfg_type_takes_line - does a value of type T run to the end of the line (no quoting)? */
#define cfg_type_takes_line(t) ((t) == CFG_T_WORDS || (t) >= CFG_T_REPLY)

/* Scopes a directive may appear in (bit mask). */
enum cfg_scope_kind {
    CFG_S_GLOBAL = 0,
    CFG_S_DOMAIN,
    CFG_S_SOURCE,
    CFG_S_VMTA,
    CFG_S_POOL,
    CFG_S_SMTP_PATTERN_LIST,
    CFG_S_PATTERN_LIST,
    CFG_S_BOUNCE_CATEGORY_PATTERNS,
    CFG_S_ACCT_FILE,
    CFG_S_SMTP_USER,
    CFG_S_SENDER,
    CFG_S_SPOOL,
    CFG_S_LISTENER,
    CFG_S_SOURCE_GROUP,
    CFG_S_DOMAIN_KEY_LIST,
    CFG_S_MX_ROLLUP_LIST,
    CFG_S_ADDRESS_LIST,     /* <address-list NAME>, or unnamed inside a processor */
    CFG_S_BOUNCE_PROCESSOR, /* <bounce-processor> */
    CFG_S_FBL_PROCESSOR,    /* <feedback-loop-processor> */
    CFG_S_ACCT_WEBHOOK,     /* <acct-webhook URL> (ext): accounting records POSTed as JSON */
    CFG_S_WARMUP_PLAN,
    CFG_S_CLUSTER, /* <cluster> (ext): the Redis that several hosts share limits in */
    CFG_S_COUNT
};
#define CFG_IN(kind)   (1u << (kind))
/* added: scope-mask bit of a directive that may appear several times in one block */
#define CFG_REPEATABLE (1u << 31)

enum cfg_status {
    CFG_IMPLEMENTED,     /* takes effect */
    CFG_NOT_IMPLEMENTED, /* accepted with a warning naming it; no effect yet */
    CFG_REFUSED          /* not implemented, and ignoring it would change where mail goes
                            (or where personal data goes): an error at load */
};

#define CFG_DIRECTIVE(id, name, type, scopes, dflt, status) CFG_D_##id,
enum cfg_directive {
#include "cfg_directives.def"
    CFG_D_COUNT
};
#undef CFG_DIRECTIVE

struct cfg_directive_info {
    const char *name;
    enum cfg_type type;
    uint32_t scopes;          /* CFG_IN() mask */
    const char *default_text; /* NULL: no default (unset) */
    enum cfg_status status;
};

/* cfg_directive_info - static description of directive D */
const struct cfg_directive_info *cfg_directive_info(enum cfg_directive d);
/* cfg_directive_lookup - id of NAME valid in scope KIND, or -1 */
int cfg_directive_lookup(const char *name, enum cfg_scope_kind kind);
/* cfg_directive_suggest - nearest known directive name to NAME, or NULL */
const char *cfg_directive_suggest(const char *name);

/* `type` of a <domain>: how its queue delivers (the directive's enum order) */
enum cfg_delivery_type {
    CFG_TYPE_SMTP = 0,
    CFG_TYPE_PIPE,
    CFG_TYPE_FILE,
    CFG_TYPE_DISCARD,
    CFG_TYPE_HTTP,
};
/* cfg_delivery_type_name - "smtp", "pipe", "file", "discard", "http-delivery" ("smtp" if unknown)
 */
const char *cfg_delivery_type_name(int type);

/* http-delivery-url (cfg_url.c): scheme://host[:port][/path], http or https only */
struct cfg_http_url {
    int https;
    char host[256]; /* a name, an IPv4 address, or an IPv6 address without its brackets */
    unsigned port;  /* 80 or 443 when not given */
};
/* cfg_http_url_parse - URL into *OUT; 0, or -EINVAL and why in ERR */
int cfg_http_url_parse(const char *url, struct cfg_http_url *out, char *err, size_t errlen);
/*
 * cfg_command_split - a pipe's `command` as argv words: the value may be one
 * quoted string (PowerMTA's form, \" and \\ inside), then words split on
 * blanks with double quotes grouping and a backslash taking the next
 * character. NULL when a quote is unbalanced or there is no word. Free with
 * cfg_command_free.
 */
char **cfg_command_split(const char *text);
void cfg_command_free(char **words);

/* --- values and scopes (the snapshot's records) ---------------------------- */

#define CFG_NEVER (-1) /* interval 'never', size 'unlimited' */
#define CFG_NONE  UINT32_MAX

/* cfg_value.flags (added) */
#define CFG_VALUE_UNSET 0x1 /* built-in slot of a directive without a default */
#define CFG_VALUE_CLEAR 0x2 /* written as "": clears an inherited value back to the default */
#define CFG_VALUE_FROM_BLOCK \
    0x4 /* synthesized from a block form (<smtp-listener>, <spool>, dkim-key-file) */
#define CFG_VALUE_LOCAL  0x8 /* "local:" before a limit: one per host even in a <cluster> */
#define CFG_LOCAL_PREFIX "local:"

/* What a matching `reply /RE/ ACTIONS` line of an <smtp-pattern-list> asks for. */
#define CFG_REPLY_BACKOFF        0x01u /* mode=backoff */
#define CFG_REPLY_NORMAL         0x02u /* mode=normal */
#define CFG_REPLY_DEFER_QUEUE    0x04u /* defer-queue: the queue goes into retry mode now */
#define CFG_REPLY_BOUNCE_RCPT    0x08u /* bounce-rcpt: a temporary failure bounces */
#define CFG_REPLY_SKIP_MX        0x10u /* skip-mx: keep the recipient queued even after a 5xx */
#define CFG_REPLY_DISABLE_SOURCE 0x20u /* disable-source-ip */
#define CFG_REPLY_BOUNCE_QUEUE   0x40u /* bounce-queue: every recipient of the queue bounces */

struct cfg_reply {
    uint32_t regex;      /* string offset of RE as written between the slashes */
    uint32_t actions;    /* CFG_REPLY_* */
    int64_t to_normal_s; /* backoff-to-normal-after=, or -1 */
    int64_t reenable_s;  /* reenable-after=, or -1 */
};

/* The result of a <pattern-list> line. */
enum cfg_pattern_result {
    CFG_RESULT_VMTA,              /* virtual-mta=NAME */
    CFG_RESULT_CALL,              /* call-to:LIST */
    CFG_RESULT_RECIPIENT_PRIORITY /* recipient-priority=N */
};

struct cfg_pattern_entry {
    uint32_t regex;  /* string offset of RE */
    uint32_t header; /* header lines: the field name; otherwise "" (offset 0) */
    uint32_t target; /* VMTA and CALL: the name */
    uint32_t result; /* enum cfg_pattern_result */
    int64_t priority;
};

struct cfg_bounce_pattern {
    uint32_t regex;    /* string offset of RE */
    uint32_t category; /* string offset of the category name */
};

struct cfg_domain_key {
    uint32_t selector; /* string offsets */
    uint32_t domain;   /* "*" signs for any domain */
    uint32_t path;
    uint32_t alg; /* enum cfg_dkim_alg: the key's type, read at load */
};

/* An <mx-rollup-list> line: MX host names matching PATTERN roll up into NAME. */
struct cfg_mx_rollup {
    uint32_t pattern; /* string offset: a host name with shell wildcards, lower case */
    uint32_t name;    /* string offset: the rollup's name (its queue's domain part) */
    uint32_t by_ip;   /* rollup-by-ip was given (not implemented: rolled up by name) */
};

/* A source-ip-max-* line: which local source addresses, and their limit. */
struct cfg_source_limit {
    int64_t limit;    /* connections, units per period or bytes per period; 0: no limit */
    int64_t period;   /* rates: seconds; 0 for a count */
    uint8_t family;   /* AF_INET or AF_INET6 */
    uint8_t prefix;   /* CIDR prefix length */
    uint8_t addr[16]; /* the network address */
    uint8_t local;    /* "local:" before the limit (one per host in a <cluster>) */
};

struct cfg_value {
    uint16_t directive; /* enum cfg_directive */
    uint8_t type;       /* enum cfg_type */
    uint8_t flags;
    uint32_t file; /* string offset of the file name (0 for built-in default) */
    uint32_t line;
    uint32_t text; /* string offset of the raw argument text */
    uint32_t list; /* ints-pool index of the first list element */
    uint32_t list_len;
    union { /* by type; a cleared ("") or unset value has none */
        struct {
            int64_t num;  /* bool/int/size/interval/rate count/enum index;
                             dkim-key-file: the key's enum cfg_dkim_alg */
            int64_t num2; /* rate period in seconds */
        };
        struct cfg_reply reply;           /* CFG_T_REPLY */
        struct cfg_pattern_entry pattern; /* CFG_T_PATTERN */
        struct cfg_bounce_pattern bounce; /* CFG_T_BOUNCE_PATTERN */
        struct cfg_domain_key key;        /* CFG_T_DOMAIN_KEY */
        struct cfg_source_limit source;   /* CFG_T_SOURCE_LIMIT */
        struct cfg_mx_rollup rollup;      /* CFG_T_MX_ROLLUP */
    };
};

/* Domain pattern kinds for CFG_S_DOMAIN scopes. */
enum cfg_pattern {
    CFG_PAT_ALL,            /* *                 */
    CFG_PAT_EXACT,          /* example.com       */
    CFG_PAT_SUBDOMAINS,     /* *.example.com     */
    CFG_PAT_DOMAIN_AND_SUB, /* [*.]example.com */
    CFG_PAT_CIDR,           /* [10.0.0.0/8] (IP literal domains), or a <source> CIDR */
    CFG_PAT_NAME            /* a named <source S1>, {pickup}, {auth} */
};

#define CFG_SCOPE_FROM_MACRO 0x1 /* came from a domain-macro expansion */

struct cfg_scope {
    uint16_t kind;   /* enum cfg_scope_kind */
    uint8_t pattern; /* enum cfg_pattern (domain and source scopes) */
    uint8_t flags;   /* CFG_SCOPE_* */
    uint32_t name;   /* string offset: pattern text without [ ]/ *. decoration, or block name */
    uint32_t parent; /* scope index of the enclosing block; 0 is the global scope */
    uint32_t first;  /* index of its first value */
    uint32_t count;  /* number of values */
    uint32_t file;
    uint32_t line;
    uint8_t family;   /* AF_INET/AF_INET6 for CFG_PAT_CIDR */
    uint8_t prefix;   /* CIDR prefix length */
    uint8_t addr[16]; /* CIDR network address */
    uint16_t reserved;
};

/* The whole configuration. When mapped from a snapshot the arrays point into the map. */
struct cfg {
    uint64_t generation;
    const struct cfg_scope *scopes; /* scopes[0] is the global scope */
    uint32_t nscopes;
    const struct cfg_value *values;
    uint32_t nvalues;
    const int64_t *ints;
    uint32_t nints;
    const char *strings; /* offset 0 is "" */
    uint32_t strings_len;
    void *owner; /* private: allocation or mapping */
};

/* cfg_str - the string at offset OFF */
const char *cfg_str(const struct cfg *c, uint32_t off);
/* cfg_list - the list of value V (interval lists) */
const int64_t *cfg_list(const struct cfg *c, const struct cfg_value *v);

/* --- loading --------------------------------------------------------------- */

enum cfg_diag_level { CFG_DIAG_WARNING, CFG_DIAG_ERROR };
typedef void (*cfg_diag_fn)(void *ctx, enum cfg_diag_level level, const char *file, unsigned line,
                            const char *message);

/*
 * cfg_load - parse and validate PATH (with its includes).
 * Every diagnostic goes to DIAG (NULL: stderr). Returns the configuration, or
 * NULL when any error was reported. *NERRORS (if not NULL) gets the count.
 */
struct cfg *cfg_load(const char *path, cfg_diag_fn diag, void *ctx, unsigned *nerrors);
/* cfg_load_string - the same for text held in memory; NAME is used in messages */
struct cfg *cfg_load_string(const char *name, const char *text, cfg_diag_fn diag, void *ctx,
                            unsigned *nerrors);
/* cfg_load_buffer - the same for LEN bytes of any kind (NUL bytes are reported, never trusted) */
struct cfg *cfg_load_buffer(const char *name, const char *text, size_t len, cfg_diag_fn diag,
                            void *ctx, unsigned *nerrors);
void cfg_free(struct cfg *c);

/* cfg_snapshot_write - write C atomically (tmp + rename) to PATH; 0 or -errno */
int cfg_snapshot_write(const struct cfg *c, const char *path);
/* cfg_snapshot_map - map a snapshot read-only; NULL and *ERR = -errno/-EPROTO on failure */
struct cfg *cfg_snapshot_map(const char *path, int *err);

/* --- lookup ---------------------------------------------------------------- */

/* cfg_scope_values - first value of directive D directly in scope S, or NULL */
const struct cfg_value *cfg_scope_get(const struct cfg *c, uint32_t scope, enum cfg_directive d);
/*
 * cfg_scope_next - iterate every value of directive D in scope S (repeatable
 * directives such as smtp-listener or smtp-source-host). Start with *IT = 0.
 */
const struct cfg_value *cfg_scope_next(const struct cfg *c, uint32_t scope, enum cfg_directive d,
                                       uint32_t *it);
/*
 * CFG_PROCESSES_AUTO - the stored value of `smtpd-processes auto` and
 * `smtp-out-processes auto` (their default); cfg_process_count() resolves it.
 */
#define CFG_PROCESSES_AUTO (-1)
/* cfg_allows_auto - whether directive D takes the word `auto` */
int cfg_allows_auto(enum cfg_directive d);
/* cfg_allows_local - whether directive D's limit may be written "local:LIMIT" (<cluster>) */
int cfg_allows_local(enum cfg_directive d);
/* cfg_process_count - the global *-processes D: its number, or for auto half the online CPUs (at
 * least 1) */
int64_t cfg_process_count(const struct cfg *c, enum cfg_directive d);

/* What an http-access line grants (PowerMTA's web monitor levels). */
enum cfg_http_level { CFG_HTTP_NONE = 0, CFG_HTTP_MONITOR, CFG_HTTP_OPERATOR, CFG_HTTP_ADMIN };
/*
 * cfg_http_access - the level the first http-access line whose CIDR holds
 * ADDR (4 bytes for AF_INET, 16 for AF_INET6 in FAMILY) grants; NONE when
 * no line matches.
 */
enum cfg_http_level cfg_http_access(const struct cfg *c, int family, const uint8_t *addr);

/*
 * cfg_show_settings - the effective settings of queue QUEUE ("DOMAIN[/VMTA]")
 * to OUT, one aligned "name value origin" line each; 0, or -1 with the
 * reason in ERR
 */
int cfg_show_settings(const struct cfg *c, const char *queue, FILE *out, char *err, size_t errsize);

/* cfg_global - effective global value of D (the file's, else the default); never NULL if D has a
 * default */
const struct cfg_value *cfg_global(const struct cfg *c, enum cfg_directive d);
/* cfg_find_scope - index of the block of KIND named NAME (vmta, pool, pattern list, ...), or
 * CFG_NONE */
uint32_t cfg_find_scope(const struct cfg *c, enum cfg_scope_kind kind, const char *name);
/* cfg_next_scope - iterate the scopes of KIND; start with *IT = 0 */
uint32_t cfg_next_scope(const struct cfg *c, enum cfg_scope_kind kind, uint32_t *it);

/* --- resolution -------------------------------------------------------------- */

/* Effective settings: one pointer per directive; NULL when unset with no default. */
struct cfg_resolved {
    const struct cfg_value *v[CFG_D_COUNT];
};

/*
 * cfg_resolve_queue - effective <domain> settings for queue DOMAIN/VMTA (VMTA
 * may be NULL or "{default}"). Layers, each overriding the one before:
 * built-in defaults; top-level <domain> blocks that match, least specific
 * first (*, then *.parent / [*.]parent by suffix length, then the exact
 * domain; an explicit block beats a macro-expanded one of equal specificity);
 * then the same for <domain> blocks nested in VMTA's pools; then those nested
 * in VMTA itself. Returns 0, or -ENOENT if VMTA names no virtual-mta.
 */
int cfg_resolve_queue(const struct cfg *c, const char *domain, const char *vmta,
                      struct cfg_resolved *out);
/*
 * cfg_resolve_session - the effective <source> settings of one inbound
 * session: the one rule smtpd and cleanup both use. Layers, each over the one
 * before: built-in defaults; every <source CIDR> block holding ADDR (may be
 * NULL) by increasing prefix length (0/0 first); the listener's named source
 * LISTENER (may be NULL; "{pickup}" for local submission, which relays unless
 * its block says always-allow-relaying no); then, once USER (may be NULL) has
 * authenticated, <source {auth}> and the source that <smtp-user USER> names.
 * A value written as "" resets the setting to its built-in default, in every
 * layer. Returns 0, or -ENOENT when LISTENER names no <source> (the other
 * layers are still applied).
 */
int cfg_resolve_session(const struct cfg *c, const struct sockaddr *addr, const char *listener,
                        const char *user, struct cfg_resolved *out);
/* cfg_resolve_vmta - settings of a <virtual-mta> block over the global ones (smtp-source-host,
 * host-name, ...) */
int cfg_resolve_vmta(const struct cfg *c, const char *vmta, struct cfg_resolved *out);

/*
 * cfg_source_ip_limit - a source-ip-max-* setting for one source address.
 * V is the queue's resolved value of such a directive (the first line of the
 * most specific block that has it); every line of that directive in V's
 * block competes, and the one whose CIDR holds ADDR (4 or 16 bytes of
 * FAMILY) with the longest prefix wins (the first of equals). Returns it,
 * or NULL when no CIDR holds ADDR; *SCOPE (may be NULL) gets its block.
 * Its record (v->source) holds the limit.
 */
const struct cfg_value *cfg_source_ip_limit(const struct cfg *c, const struct cfg_value *v,
                                            int family, const uint8_t *addr, uint32_t *scope);
/*
 * cfg_mx_rollup - the MX rollup an MX host named MX belongs to: the first
 * <mx-rollup-list> line whose pattern matches it (shell wildcards, any case),
 * else the first built-in entry that does (Google, Microsoft 365 / Outlook,
 * Yahoo; cfg_rollup.c); NULL when none.
 */
const char *cfg_mx_rollup(const struct cfg *c, const char *mx);

/* cfg_value_scope - the index of the scope holding V (a value of C), or CFG_NONE */
uint32_t cfg_value_scope(const struct cfg *c, const struct cfg_value *v);
/* cfg_domain_pattern - the pattern of <domain> scope S as written ("*", "[*.]a.com"), into OUT */
const char *cfg_domain_pattern(const struct cfg *c, uint32_t s, char *out, size_t size);

/* cfg_domain_match - does domain pattern scope S match DOMAIN? returns specificity+1, or 0 */
int cfg_domain_match(const struct cfg *c, const struct cfg_scope *s, const char *domain);

/* --- value parsers (exposed for tests and for the command line tools) ------- */
int cfg_parse_bool(const char *s, int64_t *out);
int cfg_parse_int(const char *s, int64_t *out);
int cfg_parse_size(const char *s, int64_t *out);
int cfg_parse_interval(const char *s, int64_t *out);
/* cfg_parse_interval_list - up to MAX intervals; returns the count or -EINVAL */
int cfg_parse_interval_list(const char *s, int64_t *out, int max);
int cfg_parse_rate(const char *s, int64_t *count, int64_t *period);
/* cfg_parse_volume_rate - unlimited | 0 | N[bkmgt]/[M]unit (bytes per period); 0 or -EINVAL/-ERANGE
 */
int cfg_parse_volume_rate(const char *s, int64_t *bytes, int64_t *period);
/* cfg_parse_percent - N[.NNNN]% (0..100) in parts per million; 0 or -EINVAL */
int cfg_parse_percent(const char *s, int64_t *ppm);
/*
 * smtp-hosts / route values (cfg_route.c): levels tried in order, each a set
 * of entries of equal preference. Parsed at load (errors are file:line) and
 * again by smtp-out from the validated text.
 */
#define CFG_ROUTE_NAME_MAX 255
enum cfg_route_kind {
    CFG_ROUTE_HOST,      /* host[:port]: A/AAAA of host */
    CFG_ROUTE_ADDR,      /* [ip][:port] or a bare IPv4 address: that address */
    CFG_ROUTE_LOOKUP_MX, /* lookup-mx:domain[:port]: its MX hosts */
};
struct cfg_route_entry {
    enum cfg_route_kind kind;
    char *name;                   /* host, domain, or the IP literal without [] */
    uint16_t port;                /* 0 = default-smtp-port */
    struct sockaddr_storage addr; /* CFG_ROUTE_ADDR: the address (port not set) */
};
struct cfg_route_level {
    size_t nentries;
    struct cfg_route_entry *entries;
};
struct cfg_route {
    size_t nlevels;
    struct cfg_route_level *levels;
};
/* cfg_route_parse - TEXT into *OUT (free with cfg_route_free); 0, or -EINVAL and why in ERR */
int cfg_route_parse(const char *text, struct cfg_route **out, char *err, size_t errlen);
void cfg_route_free(struct cfg_route *route);

/*
 * DKIM keys and algorithms (cfg_key.c). A key file can sign when it is a
 * regular file of 1..CFG_DKIM_KEY_FILE_MAX bytes holding an unencrypted PEM
 * private key that is either RSA of at least CFG_DKIM_KEY_MIN_BITS
 * (rsa-sha256) or Ed25519 (ed25519-sha256, RFC 8463); the key's type is its
 * algorithm. `dkim-algorithm` lists the signatures a <domain> makes, in
 * order (one per algorithm, each with the first matching key of that type).
 * Messages name the path and the reason, never key bytes.
 */
#define CFG_DKIM_KEY_FILE_MAX (64 * 1024) /* a 16384-bit RSA PEM is ~12 KB */
#define CFG_DKIM_KEY_MIN_BITS 1024        /* RFC 8301: verifiers may refuse less */
#define CFG_DKIM_ALG_MAX      2           /* signatures per message: one per algorithm */
enum cfg_dkim_alg {
    CFG_DKIM_NONE = 0,
    CFG_DKIM_RSA_SHA256 = 1,
    CFG_DKIM_ED25519_SHA256 = 2,
};
struct stat;
struct evp_pkey_st; /* OpenSSL's EVP_PKEY */
/* cfg_dkim_alg_name - "rsa-sha256", "ed25519-sha256" ("?" otherwise) */
const char *cfg_dkim_alg_name(enum cfg_dkim_alg alg);
/*
 * cfg_dkim_algorithms - a dkim-algorithm value ("rsa-sha256",
 * "ed25519-sha256, rsa-sha256" ...: comma or space separated, no repeats)
 * into OUT[0..CFG_DKIM_ALG_MAX). @return the count, or -EINVAL with the
 * offending word in WHY.
 */
int cfg_dkim_algorithms(const char *text, enum cfg_dkim_alg out[CFG_DKIM_ALG_MAX], char *why,
                        size_t whysize);
/* cfg_dkim_key_read - PATH into *PEM (NUL-terminated, caller frees) and *ST; 0 or -errno, why */
int cfg_dkim_key_read(const char *path, struct stat *st, char **pem, char *why, size_t whysize);
/*
 * cfg_dkim_key_parse - LEN bytes of PEM as a key that can sign: 0 and its
 * algorithm in *ALGP (may be NULL) and, when PKEYP is not NULL, the parsed
 * key (caller frees with EVP_PKEY_free); or -EINVAL and the reason in WHY.
 */
int cfg_dkim_key_parse(const char *pem, size_t len, enum cfg_dkim_alg *algp,
                       struct evp_pkey_st **pkeyp, char *why, size_t whysize);
/* cfg_dkim_key_check_file - read and check PATH with our privileges; 0 and *ALGP (may be NULL),
 * or <0 and a message */
int cfg_dkim_key_check_file(const char *path, enum cfg_dkim_alg *algp, char *why, size_t whysize);
/*
 * cfg_check_dkim_algorithms - every dkim-algorithm can be honoured and every
 * key can be used by one: an algorithm a <domain> asks for needs a key of its
 * type somewhere in C; a <domain>'s own dkim-key-file must be of a type that
 * domain signs with; a domain-key of a type no dkim-algorithm names would
 * never sign. Errors at file:line through DIAG; returns their number.
 */
unsigned cfg_check_dkim_algorithms(const struct cfg *c, cfg_diag_fn diag, void *ctx);
/* cfg_ca_file_check - PATH is a readable trust store with a PEM certificate; 0, or -1 and why */
int cfg_ca_file_check(const char *path, char *why, size_t whysize);
/*
 * cfg_check_keys - every DKIM key file C names (domain-key, dkim-key-file),
 * every trust store (smtp-tls-ca-file, mta-sts-ca-file), every address-file
 * (readable) and add-to-suppression-list target (a list with an
 * address-file we can append to), checked with the caller's privileges; each one that cannot be
 * used is an error at its file:line through DIAG. Returns the number of errors. pmtad runs it as
 * the run-as-user (reload validator, --check-config) so a file root can read but the workers cannot
 * is refused at load.
 */
unsigned cfg_check_keys(const struct cfg *c, cfg_diag_fn diag, void *ctx);

/*
 * Address lists (cfg_addrlist.c): an <address-list> block (a top-level one,
 * or the unnamed one of a processor) as a matcher. Entries: `address`
 * (whole address, local part, or /REGEX/), `domain`, and the lines of each
 * `address-file` (address, local part, or "@domain"; '#' comments).
 * Matching is case-insensitive. The list borrows C and must not outlive it.
 */
struct cfg_addrlist;
/* cfg_addrlist_new - the list of scope SCOPE with its files read (unreadable ones logged) */
struct cfg_addrlist *cfg_addrlist_new(const struct cfg *c, uint32_t scope);
void cfg_addrlist_free(struct cfg_addrlist *l);
const char *cfg_addrlist_name(const struct cfg_addrlist *l);
/* cfg_addrlist_match - is ADDR (local@domain) on the list? */
int cfg_addrlist_match(const struct cfg_addrlist *l, const char *addr);
/* cfg_addrlist_refresh - re-read the files if one changed on disk; 1 if it did */
int cfg_addrlist_refresh(struct cfg_addrlist *l);
/*
 * cfg_addrlist_append - add ADDR to the list and, unless it already matched,
 * as one line to its first address-file (O_APPEND, fsync'd). 0, -ENOENT (no
 * file), -EINVAL (not one address), or -errno of the write.
 */
int cfg_addrlist_append(struct cfg_addrlist *l, const char *addr);
/* cfg_addrlist_size - entries held (addresses, local parts, domains, patterns) */
size_t cfg_addrlist_size(const struct cfg_addrlist *l);

/* cfg_format_value - human text of V for --show-settings; returns OUT */
char *cfg_format_value(const struct cfg *c, const struct cfg_value *v, char *out, size_t outsize);

#endif
