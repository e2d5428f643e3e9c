/*
 * cfg_directive.c - the directive table: lookup by name and scope, aliases,
 * enum word lists, numeric ranges and "did you mean" suggestions
 *
 * Owns the static tables built from cfg_directives.def. Nothing here reads
 * input beyond the names the parser hands in; suggestions bound their work by
 * the length of the (already length-limited) name.
 */
#include <string.h>
#include <strings.h>
#include <stdio.h>
#include <unistd.h>

#include "cfg.h"
#include "cfg_parse.h"

#define CFG_DIRECTIVE(id, name, type, scopes, dflt, status) { name, type, scopes, dflt, status },
static const struct cfg_directive_info directives[CFG_D_COUNT] = {
#include "cfg_directives.def"
};
#undef CFG_DIRECTIVE

/* Alternative spellings that mean exactly the same directive in these scopes. */
static const struct {
    const char *alias;
    enum cfg_directive target;
    uint32_t scopes;
} aliases[] = {
    { "max-rcpt-per-message", CFG_D_MAX_RCPT_PER_TRANSACTION, CFG_IN(CFG_S_DOMAIN) },
    { "route", CFG_D_SMTP_HOSTS, CFG_IN(CFG_S_DOMAIN) },
};

static const struct {
    enum cfg_directive d;
    const char *words;
} enum_lists[] = {
    { CFG_D_ADD_DATE_HEADER, "no|yes|override" },
    { CFG_D_DSN_RETURN_DEFAULT, "headers|full|system" },
    { CFG_D_TYPE, "smtp|pipe|file|discard|http-delivery" },
    { CFG_D_FILE_FORMAT, "newfile-plain|newfile-pickup|append-mbox" },
    { CFG_D_DSN_FORMAT, "standard|plain-text" },
    { CFG_D_DKIM_SIGN, "no|yes|if-x-dkim-options-present" },
    { CFG_D_DKIM_BODY_CANON, "relaxed|simple" },
    { CFG_D_DKIM_HEADERS_CANON, "relaxed|simple" },
    { CFG_D_AUTHENTICATION_METHOD, "password|system|certificate" },
    { CFG_D_ACCT_FORMAT, "csv|json" },
};

static const struct {
    enum cfg_directive d;
    int64_t min, max;
} ranges[] = {
    { CFG_D_SMTPD_PROCESSES, 1, 256 },
    { CFG_D_MAX_BATCH_RECORDS, 1, 10000 },
    { CFG_D_CLEANUP_PROCESSES, 1, 256 },
    { CFG_D_SMTP_OUT_PROCESSES, 0, 256 }, /* 0: delivery paused (tests, queue benchmarks) */
    { CFG_D_TOTAL_MAX_SMTP_OUT, 1, 100000 },
    { CFG_D_TOTAL_MAX_SMTP_IN, 1, 100000 },
    { CFG_D_MAX_SMTP_IN_PER_IP, 0, 100000 },
    { CFG_D_HTTP_MGMT_PORT, 0, 65535 },
    { CFG_D_DUMMY_SMTP_PORT, 1, 65535 },
    { CFG_D_DEFAULT_SMTP_PORT, 1, 65535 },
    { CFG_D_MAX_SMTP_OUT, 1, 100000 },
    { CFG_D_BACKOFF_MAX_SMTP_OUT, 1, 100000 },
    { CFG_D_VMTA_MAX_SMTP_OUT, 1, 100000 },
    { CFG_D_MAX_MSG_PER_CONNECTION, 0, INT32_MAX },
    { CFG_D_MAX_RCPT_PER_TRANSACTION, 1, 1000000 },
    { CFG_D_SOURCE_MAX_RCPT_PER_MESSAGE, 0, 1000000 },
    { CFG_D_QUEUE_PRIORITY, 0, 100 },
    { CFG_D_SPOOL_PRIORITY, 1, 100 },
    { CFG_D_LOG_ROTATE, 0, 1000 },
    { CFG_D_MAX_MESSAGE_HOPS, 1, 1000 },
    { CFG_D_SENDER_MAX_CONN, 1, 100000 },
    { CFG_D_CONNECTION_FAILURES_BEFORE_DELAY, 1, 100000 },
};

static const char *const kind_names[CFG_S_COUNT] = {
    [CFG_S_GLOBAL] = NULL,
    [CFG_S_DOMAIN] = "domain",
    [CFG_S_SOURCE] = "source",
    [CFG_S_VMTA] = "virtual-mta",
    [CFG_S_POOL] = "virtual-mta-pool",
    [CFG_S_SMTP_PATTERN_LIST] = "smtp-pattern-list",
    [CFG_S_PATTERN_LIST] = "pattern-list",
    [CFG_S_BOUNCE_CATEGORY_PATTERNS] = "bounce-category-patterns",
    [CFG_S_ACCT_FILE] = "acct-file",
    [CFG_S_SMTP_USER] = "smtp-user",
    [CFG_S_SENDER] = "sender",
    [CFG_S_SPOOL] = "spool",
    [CFG_S_LISTENER] = "smtp-listener",
    [CFG_S_SOURCE_GROUP] = "source-group",
    [CFG_S_DOMAIN_KEY_LIST] = "domain-key-list",
    [CFG_S_MX_ROLLUP_LIST] = "mx-rollup-list",
    [CFG_S_ADDRESS_LIST] = "address-list",
    [CFG_S_BOUNCE_PROCESSOR] = "bounce-processor",
    [CFG_S_FBL_PROCESSOR] = "feedback-loop-processor",
    [CFG_S_ACCT_WEBHOOK] = "acct-webhook",
    [CFG_S_WARMUP_PLAN] = "warmup-plan",
    [CFG_S_CLUSTER] = "cluster",
};

/* cfg_directive_info - static description of directive D */
const struct cfg_directive_info *
cfg_directive_info(enum cfg_directive d)
{
    if ((unsigned)d >= CFG_D_COUNT)
        return NULL;
    return &directives[d];
}

/* cfg_directive_lookup - id of NAME valid in scope KIND, or -1 */
int
cfg_directive_lookup(const char *name, enum cfg_scope_kind kind)
{
    uint32_t bit = CFG_IN(kind);

    for (int d = 0; d < CFG_D_COUNT; d++)
        if ((directives[d].scopes & bit) && strcmp(directives[d].name, name) == 0)
            return d;
    for (size_t i = 0; i < sizeof aliases / sizeof aliases[0]; i++)
        if ((aliases[i].scopes & bit) && strcmp(aliases[i].alias, name) == 0)
            return (int)aliases[i].target;
    return -1;
}

/* cfg__directive_scopes - every scope NAME is valid in (0: unknown name) */
uint32_t
cfg__directive_scopes(const char *name)
{
    uint32_t mask = 0;

    for (int d = 0; d < CFG_D_COUNT; d++)
        if (strcmp(directives[d].name, name) == 0)
            mask |= directives[d].scopes;
    for (size_t i = 0; i < sizeof aliases / sizeof aliases[0]; i++)
        if (strcmp(aliases[i].alias, name) == 0)
            mask |= aliases[i].scopes;
    return mask & ~CFG_REPEATABLE;
}

/*
 * distance - optimal string alignment (Damerau-Levenshtein with adjacent
 * transpositions) between A and B, giving up above LIMIT. Names are short, so
 * three rows on the stack suffice.
 */
static int
distance(const char *a, const char *b, int limit)
{
    enum { MAXLEN = 64 };
    int la = (int)strlen(a), lb = (int)strlen(b);
    int rows[3][MAXLEN + 1];

    if (la > MAXLEN || lb > MAXLEN || (la > lb ? la - lb : lb - la) > limit)
        return limit + 1;
    for (int j = 0; j <= lb; j++)
        rows[0][j] = j;
    for (int i = 1; i <= la; i++) {
        int *cur = rows[i % 3], *prev = rows[(i - 1) % 3], *prev2 = rows[(i + 1) % 3];
        cur[0] = i;
        for (int j = 1; j <= lb; j++) {
            int cost = a[i - 1] != b[j - 1];
            int best = prev[j] + 1;
            if (cur[j - 1] + 1 < best)
                best = cur[j - 1] + 1;
            if (prev[j - 1] + cost < best)
                best = prev[j - 1] + cost;
            if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] &&
                prev2[j - 2] + 1 < best)
                best = prev2[j - 2] + 1;
            cur[j] = best;
        }
    }
    return rows[la % 3][lb];
}

/* cfg_directive_suggest - nearest known directive name to NAME (distance <= 2), or NULL */
const char *
cfg_directive_suggest(const char *name)
{
    const char *best = NULL;
    int best_dist = 3;

    for (int d = 0; d < CFG_D_COUNT; d++) {
        int dist = distance(name, directives[d].name, 2);
        if (dist < best_dist) {
            best_dist = dist;
            best = directives[d].name;
        }
    }
    for (size_t i = 0; i < sizeof aliases / sizeof aliases[0]; i++) {
        int dist = distance(name, aliases[i].alias, 2);
        if (dist < best_dist) {
            best_dist = dist;
            best = aliases[i].alias;
        }
    }
    return best_dist > 0 ? best : NULL;
}

const char *
cfg__scope_tag(enum cfg_scope_kind kind)
{
    return (unsigned)kind < CFG_S_COUNT ? kind_names[kind] : NULL;
}

const char *
cfg__scope_kind_name(enum cfg_scope_kind kind)
{
    static const char *const tags[CFG_S_COUNT] = {
        "global level",
        "<domain>",
        "<source>",
        "<virtual-mta>",
        "<virtual-mta-pool>",
        "<smtp-pattern-list>",
        "<pattern-list>",
        "<bounce-category-patterns>",
        "<acct-file>",
        "<smtp-user>",
        "<sender>",
        "<spool>",
        "<smtp-listener>",
        "<source-group>",
        "<domain-key-list>",
        "<mx-rollup-list>",
        "<address-list>",
        "<bounce-processor>",
        "<feedback-loop-processor>",
        "<acct-webhook>",
        "<warmup-plan>",
        "<cluster>",
    };
    return (unsigned)kind < CFG_S_COUNT ? tags[kind] : "?";
}

char *
cfg__scopes_text(uint32_t mask, char *out, size_t outsize)
{
    size_t used = 0;

    out[0] = 0;
    for (int k = 0; k < CFG_S_COUNT; k++) {
        if (!(mask & CFG_IN(k)))
            continue;
        int n = snprintf(out + used, outsize - used, "%s%s", used ? ", " : "",
                         cfg__scope_kind_name((enum cfg_scope_kind)k));
        if (n < 0 || (size_t)n >= outsize - used)
            break;
        used += (size_t)n;
    }
    return out;
}

const char *
cfg__enum_words(enum cfg_directive d)
{
    for (size_t i = 0; i < sizeof enum_lists / sizeof enum_lists[0]; i++)
        if (enum_lists[i].d == d)
            return enum_lists[i].words;
    return NULL;
}

/* cfg__enum_index - position of WORD (case-insensitive) in D's list, or -1 */
int
cfg__enum_index(enum cfg_directive d, const char *word)
{
    const char *p = cfg__enum_words(d);
    size_t wl = strlen(word);

    for (int index = 0; p && *p; index++) {
        const char *bar = strchr(p, '|');
        size_t len = bar ? (size_t)(bar - p) : strlen(p);
        if (len == wl && strncasecmp(p, word, len) == 0)
            return index;
        p = bar ? bar + 1 : p + len;
    }
    return -1;
}

char *
cfg__enum_word(enum cfg_directive d, int64_t index, char *out, size_t outsize)
{
    const char *p = cfg__enum_words(d);

    out[0] = 0;
    for (int64_t i = 0; p && *p; i++) {
        const char *bar = strchr(p, '|');
        size_t len = bar ? (size_t)(bar - p) : strlen(p);
        if (i == index) {
            snprintf(out, outsize, "%.*s", (int)len, p);
            break;
        }
        p = bar ? bar + 1 : p + len;
    }
    return out;
}

int
cfg_allows_auto(enum cfg_directive d)
{
    return d == CFG_D_SMTPD_PROCESSES || d == CFG_D_SMTP_OUT_PROCESSES;
}

/* cfg_allows_local - see cfg.h: the limits a <cluster> shares unless written local:LIMIT */
int
cfg_allows_local(enum cfg_directive d)
{
    switch (d) {
    case CFG_D_MAX_SMTP_OUT:
    case CFG_D_BACKOFF_MAX_SMTP_OUT:
    case CFG_D_MAX_MSG_RATE:
    case CFG_D_MAX_CONNECT_RATE:
    case CFG_D_MAX_DATA_VOLUME_RATE:
    case CFG_D_BACKOFF_MAX_MSG_RATE:
    case CFG_D_BACKOFF_MAX_CONNECT_RATE:
    case CFG_D_BACKOFF_MAX_DATA_VOLUME_RATE:
    case CFG_D_VMTA_MAX_SMTP_OUT:
    case CFG_D_SENDER_MAX_MSG_RATE:
    case CFG_D_SENDER_MAX_CONN:
        return 1;
    default:
        return 0;
    }
}

/*
 * cfg_process_count - see cfg.h. Half the CPUs because each smtpd and
 * smtp-out process serves thousands of connections on its own; more processes
 * than cores only adds wake-ups (measured: bench/relay on 2 cores does ~10 %
 * more mail per second with one of each than with two).
 */
int64_t
cfg_process_count(const struct cfg *c, enum cfg_directive d)
{
    const struct cfg_value *v = cfg_global(c, d);
    long ncpu;

    if (v && v->num != CFG_PROCESSES_AUTO)
        return v->num;
    ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    return ncpu >= 4 ? ncpu / 2 : 1;
}

int
cfg__range(enum cfg_directive d, int64_t *min, int64_t *max)
{
    for (size_t i = 0; i < sizeof ranges / sizeof ranges[0]; i++)
        if (ranges[i].d == d) {
            *min = ranges[i].min;
            *max = ranges[i].max;
            return 1;
        }
    return 0;
}

const char *
cfg_delivery_type_name(int type)
{
    static const char *const names[] = { "smtp", "pipe", "file", "discard", "http-delivery" };

    return type >= 0 && (size_t)type < sizeof names / sizeof names[0] ? names[type] : names[0];
}
