/*
 * cfg_value.c - the value grammars: booleans, integers, sizes, time
 * intervals and lists of them, rates, CIDR blocks; and their canonical text
 *
 * Owns nothing (pure functions). Every parser works on text that came from the
 * configuration file, so every multiplication and addition is checked for
 * overflow and the whole string must be consumed: trailing garbage is an error.
 * Return values: 0 (or a count) on success, -EINVAL for bad syntax, -ERANGE
 * for a number that does not fit.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <ctype.h>
#include <arpa/inet.h>
#include <sys/socket.h>

#include "cfg.h"
#include "cfg_parse.h"

/* read_uint - decimal digits at *P into *OUT; advances *P. 0, -EINVAL or -ERANGE */
static int
read_uint(const char **p, int64_t *out)
{
    const char *s = *p;
    int64_t v = 0;

    if (!isdigit((unsigned char)*s))
        return -EINVAL;
    for (; isdigit((unsigned char)*s); s++) {
        int digit = *s - '0';
        if (v > (INT64_MAX - digit) / 10)
            return -ERANGE;
        v = v * 10 + digit;
    }
    *p = s;
    *out = v;
    return 0;
}

static int
mul_checked(int64_t a, int64_t b, int64_t *out)
{
    if (a != 0 && b > INT64_MAX / a)
        return -ERANGE;
    *out = a * b;
    return 0;
}

/* cfg_parse_bool - yes|no|true|false|on|off, any case */
int
cfg_parse_bool(const char *s, int64_t *out)
{
    static const char *const yes[] = { "yes", "true", "on" };
    static const char *const no[] = { "no", "false", "off" };

    for (int i = 0; i < 3; i++) {
        if (strcasecmp(s, yes[i]) == 0) {
            *out = 1;
            return 0;
        }
        if (strcasecmp(s, no[i]) == 0) {
            *out = 0;
            return 0;
        }
    }
    return -EINVAL;
}

/* cfg_parse_int - non-negative decimal integer */
int
cfg_parse_int(const char *s, int64_t *out)
{
    int64_t v;
    int err = read_uint(&s, &v);

    if (err)
        return err;
    if (*s)
        return -EINVAL;
    *out = v;
    return 0;
}

/* cfg_parse_size - N[b|k|m|g|t] (1024-based, either case) or unlimited (-1) */
int
cfg_parse_size(const char *s, int64_t *out)
{
    int64_t v, mult = 1;
    int err;

    if (strcasecmp(s, "unlimited") == 0) {
        *out = CFG_NEVER;
        return 0;
    }
    if ((err = read_uint(&s, &v)) != 0)
        return err;
    if (*s) {
        const char *units = "bkmgt";
        const char *u = strchr(units, tolower((unsigned char)*s));
        if (u == NULL || s[1] != 0)
            return -EINVAL;
        for (long i = 0; i < u - units; i++)
            mult *= 1024;
    }
    return mul_checked(v, mult, out);
}

static int64_t
unit_seconds(char c)
{
    switch (tolower((unsigned char)c)) {
    case 'w':
        return 7 * 86400;
    case 'd':
        return 86400;
    case 'h':
        return 3600;
    case 'm':
        return 60;
    case 's':
        return 1;
    default:
        return 0;
    }
}

/* cfg_parse_interval - 1w2d3h4m5s (any subset, each a number and a unit), N (seconds), never (-1)
 */
int
cfg_parse_interval(const char *s, int64_t *out)
{
    int64_t total = 0;

    if (strcasecmp(s, "never") == 0) {
        *out = CFG_NEVER;
        return 0;
    }
    if (*s == 0)
        return -EINVAL;
    while (*s) {
        int64_t n, unit, part;
        int err = read_uint(&s, &n);
        if (err)
            return err;
        if (*s == 0) {
            unit = 1; /* a bare trailing number counts seconds */
        } else if ((unit = unit_seconds(*s)) == 0) {
            return -EINVAL;
        } else {
            s++;
        }
        if ((err = mul_checked(n, unit, &part)) != 0)
            return err;
        if (total > INT64_MAX - part)
            return -ERANGE;
        total += part;
    }
    *out = total;
    return 0;
}

/* cfg_parse_interval_list - comma-separated intervals, no empty elements */
int
cfg_parse_interval_list(const char *s, int64_t *out, int max)
{
    char item[64];
    int count = 0;

    while (1) {
        const char *comma = strchr(s, ',');
        size_t len = comma ? (size_t)(comma - s) : strlen(s);
        int err;
        if (len == 0 || len >= sizeof item || count >= max)
            return -EINVAL;
        memcpy(item, s, len);
        item[len] = 0;
        if ((err = cfg_parse_interval(item, &out[count])) != 0)
            return err == -ERANGE ? -ERANGE : -EINVAL;
        count++;
        if (!comma)
            return count;
        s = comma + 1;
    }
}

/* rate_unit - seconds of a rate's unit word (the documented ones plus long spellings) */
static int64_t
rate_unit(const char *u)
{
    static const struct {
        const char *word;
        int64_t secs;
    } units[] = {
        { "s", 1 },       { "sec", 1 },      { "second", 1 },   { "seconds", 1 }, { "m", 60 },
        { "min", 60 },    { "minute", 60 },  { "minutes", 60 }, { "h", 3600 },    { "hr", 3600 },
        { "hour", 3600 }, { "hours", 3600 }, { "d", 86400 },    { "day", 86400 }, { "days", 86400 },
    };
    for (size_t i = 0; i < sizeof units / sizeof units[0]; i++)
        if (strcasecmp(u, units[i].word) == 0)
            return units[i].secs;
    return 0;
}

/* parse_period - "[M]unit" after the slash of a rate: M (>= 1) times the unit, in seconds */
static int
parse_period(const char *s, int64_t *period)
{
    int64_t m = 1, unit;
    int err;

    if (isdigit((unsigned char)*s)) {
        if ((err = read_uint(&s, &m)) != 0)
            return err;
        if (m == 0)
            return -EINVAL;
    }
    if ((unit = rate_unit(s)) == 0)
        return -EINVAL;
    return mul_checked(m, unit, period);
}

/*
 * cfg_parse_rate - unlimited | 0 (both: count 0 = no limit) | N/[M]unit with
 * N >= 1 and M >= 1; PERIOD gets M * unit in seconds.
 */
int
cfg_parse_rate(const char *s, int64_t *count, int64_t *period)
{
    int64_t n;
    int err;

    if (strcasecmp(s, "unlimited") == 0 || strcmp(s, "0") == 0) {
        *count = 0;
        *period = 0;
        return 0;
    }
    if ((err = read_uint(&s, &n)) != 0)
        return err;
    if (*s++ != '/' || n == 0)
        return -EINVAL;
    if ((err = parse_period(s, period)) != 0)
        return err;
    *count = n;
    return 0;
}

/*
 * cfg_parse_volume_rate - unlimited | 0 (no limit) | N[bkmgt]/[M]unit: N
 * bytes (1024-based units, as sizes) per M units of time, N and M >= 1
 */
int
cfg_parse_volume_rate(const char *s, int64_t *bytes, int64_t *period)
{
    const char *slash = strchr(s, '/');
    char size[32];
    int err;

    if (strcasecmp(s, "unlimited") == 0 || strcmp(s, "0") == 0) {
        *bytes = 0;
        *period = 0;
        return 0;
    }
    if (slash == NULL || slash == s || (size_t)(slash - s) >= sizeof size)
        return -EINVAL;
    memcpy(size, s, (size_t)(slash - s));
    size[slash - s] = 0;
    if ((err = cfg_parse_size(size, bytes)) != 0)
        return err;
    if (*bytes <= 0)
        return -EINVAL;
    return parse_period(slash + 1, period);
}

/* cfg_parse_percent - N[.NNNN]% with N.NNNN in 0..100, as parts per million */
int
cfg_parse_percent(const char *s, int64_t *ppm)
{
    int64_t whole, frac = 0, scale = 10000;
    int err;

    if ((err = read_uint(&s, &whole)) != 0)
        return err;
    if (*s == '.') {
        s++;
        if (!isdigit((unsigned char)*s))
            return -EINVAL;
        for (; isdigit((unsigned char)*s); s++) {
            if (scale == 1)
                return -EINVAL; /* more than 4 decimals */
            scale /= 10;
            frac += (*s - '0') * scale;
        }
    }
    if (*s++ != '%' || *s != 0 || whole > 100 || (whole == 100 && frac > 0))
        return -EINVAL;
    *ppm = whole * 10000 + frac;
    return 0;
}

/* parse_short_ipv4 - 1 to 4 dotted octets ("0", "10.1"); missing ones are zero */
static int
parse_short_ipv4(const char *s, uint8_t addr[4])
{
    int octets = 0;

    memset(addr, 0, 4);
    while (1) {
        int64_t v;
        if (octets == 4 || read_uint(&s, &v) != 0 || v > 255)
            return -EINVAL;
        addr[octets++] = (uint8_t)v;
        if (*s == 0)
            return octets;
        if (*s++ != '.')
            return -EINVAL;
    }
}

/* cfg__parse_cidr - "0/0", "10.0.0.0/8", "127.0.0.1" (= /32), "2001:db8::/32", "::1" */
int
cfg__parse_cidr(const char *s, uint8_t *family, uint8_t *prefix, uint8_t addr[16])
{
    char host[INET6_ADDRSTRLEN + 1];
    const char *slash = strchr(s, '/');
    size_t hlen = slash ? (size_t)(slash - s) : strlen(s);
    int64_t plen = -1;
    int max;

    if (hlen == 0 || hlen >= sizeof host)
        return -EINVAL;
    memcpy(host, s, hlen);
    host[hlen] = 0;
    if (slash) {
        const char *p = slash + 1;
        if (read_uint(&p, &plen) != 0 || *p)
            return -EINVAL;
    }
    memset(addr, 0, 16);
    if (strchr(host, ':')) {
        if (inet_pton(AF_INET6, host, addr) != 1)
            return -EINVAL;
        *family = AF_INET6;
        max = 128;
    } else {
        int octets = parse_short_ipv4(host, addr);
        if (octets < 0 || (octets < 4 && !slash))
            return -EINVAL;
        *family = AF_INET;
        max = 32;
    }
    if (plen > max)
        return -EINVAL;
    *prefix = (uint8_t)(plen < 0 ? max : plen);
    for (int bit = *prefix; bit < max; bit++) /* clear host bits */
        addr[bit / 8] &= (uint8_t) ~(0x80u >> (bit % 8));
    return 0;
}

/* cfg__cidr_contains - is ADDR (4 or 16 bytes of ADDR_FAMILY) inside the network? */
int
cfg__cidr_contains(uint8_t family, uint8_t prefix, const uint8_t net[16], int addr_family,
                   const uint8_t *addr)
{
    if (family != addr_family)
        return 0;
    for (int bit = 0; bit < prefix; bit++) {
        uint8_t mask = (uint8_t)(0x80u >> (bit % 8));
        if ((net[bit / 8] & mask) != (addr[bit / 8] & mask))
            return 0;
    }
    return 1;
}

/* format_interval - "never", "0s" or the compact w/d/h/m/s form ("4d12h") */
static char *
format_interval(int64_t secs, char *out, size_t outsize)
{
    static const struct {
        char unit;
        int64_t secs;
    } units[] = {
        { 'w', 604800 }, { 'd', 86400 }, { 'h', 3600 }, { 'm', 60 }, { 's', 1 },
    };
    size_t used = 0;

    if (secs < 0)
        return snprintf(out, outsize, "never"), out;
    if (secs == 0)
        return snprintf(out, outsize, "0s"), out;
    out[0] = 0;
    for (size_t i = 0; i < 5 && used < outsize; i++) {
        if (secs >= units[i].secs) {
            int n = snprintf(out + used, outsize - used, "%lld%c",
                             (long long)(secs / units[i].secs), units[i].unit);
            if (n < 0)
                break;
            used += (size_t)n;
            secs %= units[i].secs;
        }
    }
    return out;
}

static char *
format_size(int64_t bytes, char *out, size_t outsize)
{
    static const char units[] = "bKMGT";
    int u = 0;

    if (bytes < 0)
        return snprintf(out, outsize, "unlimited"), out;
    while (u < 4 && bytes >= 1024 && bytes % 1024 == 0) {
        bytes /= 1024;
        u++;
    }
    snprintf(out, outsize, "%lld%s", (long long)bytes, u ? (char[]){ units[u], 0 } : "");
    return out;
}

/* format_per - the period of a rate: "s", "m", "h", "d", or an interval such as "5s", "15m" */
static char *
format_per(int64_t period, char *per, size_t size)
{
    if (period == 1 || period == 60 || period == 3600 || period == 86400)
        snprintf(per, size, "%s",
                 period == 1      ? "s"
                 : period == 60   ? "m"
                 : period == 3600 ? "h"
                                  : "d");
    else
        format_interval(period, per, size);
    return per;
}

/* format_rate - "unlimited", "100/s", "3000/h", "83/5s", "100/15m" */
static char *
format_rate(int64_t count, int64_t period, char *out, size_t outsize)
{
    char per[32];

    if (count == 0)
        return snprintf(out, outsize, "unlimited"), out;
    snprintf(out, outsize, "%lld/%s", (long long)count, format_per(period, per, sizeof per));
    return out;
}

/* format_volume_rate - "unlimited", "100M/h", "512K/5s" */
static char *
format_volume_rate(int64_t bytes, int64_t period, char *out, size_t outsize)
{
    char size[32], per[32];

    if (bytes == 0)
        return snprintf(out, outsize, "unlimited"), out;
    snprintf(out, outsize, "%s/%s", format_size(bytes, size, sizeof size),
             format_per(period, per, sizeof per));
    return out;
}

static char *
format_list(const struct cfg *c, const struct cfg_value *v, char *out, size_t outsize)
{
    const int64_t *list = cfg_list(c, v);
    size_t used = 0;

    out[0] = 0;
    for (uint32_t i = 0; list && i < v->list_len && used + 1 < outsize; i++) {
        char one[48];
        int n = snprintf(out + used, outsize - used, "%s%s", i ? "," : "",
                         format_interval(list[i], one, sizeof one));
        if (n < 0)
            break;
        used += (size_t)n;
    }
    return out;
}

/* cfg_format_value - canonical text of V (units normalised, strings as stored) */
char *
cfg_format_value(const struct cfg *c, const struct cfg_value *v, char *out, size_t outsize)
{
    if (outsize == 0)
        return out;
    out[0] = 0;
    if (v == NULL || (v->flags & CFG_VALUE_UNSET))
        return snprintf(out, outsize, "(unset)"), out;
    if ((v->flags & CFG_VALUE_LOCAL) && outsize > sizeof CFG_LOCAL_PREFIX) {
        /* "local:20/s" as written */
        struct cfg_value plain = *v;

        plain.flags &= (uint8_t)~CFG_VALUE_LOCAL;
        memcpy(out, CFG_LOCAL_PREFIX, sizeof CFG_LOCAL_PREFIX - 1);
        cfg_format_value(c, &plain, out + sizeof CFG_LOCAL_PREFIX - 1,
                         outsize - (sizeof CFG_LOCAL_PREFIX - 1));
        return out;
    }
    switch ((enum cfg_type)v->type) {
    case CFG_T_BOOL:
        snprintf(out, outsize, "%s", v->num ? "yes" : "no");
        break;
    case CFG_T_INT:
        if (v->num == CFG_PROCESSES_AUTO && cfg_allows_auto(v->directive))
            snprintf(out, outsize, "auto (%lld)", (long long)cfg_process_count(c, v->directive));
        else
            snprintf(out, outsize, "%lld", (long long)v->num);
        break;
    case CFG_T_SIZE:
        format_size(v->num, out, outsize);
        break;
    case CFG_T_INTERVAL:
        format_interval(v->num, out, outsize);
        break;
    case CFG_T_INTERVAL_LIST:
        format_list(c, v, out, outsize);
        break;
    case CFG_T_RATE:
        format_rate(v->num, v->num2, out, outsize);
        break;
    case CFG_T_VOLUME_RATE:
        format_volume_rate(v->num, v->num2, out, outsize);
        break;
    case CFG_T_PERCENT: {
        char frac[8];
        int n = snprintf(frac, sizeof frac, "%04lld", (long long)(v->num % 10000));

        while (n > 0 && frac[n - 1] == '0')
            frac[--n] = 0;
        snprintf(out, outsize, "%lld%s%s%%", (long long)(v->num / 10000), n ? "." : "", frac);
        break;
    }
    case CFG_T_DAY_CAP:
        snprintf(out, outsize, "%lld %lld", (long long)v->num, (long long)v->num2);
        break;
    case CFG_T_DOUBLING: {
        char every[48];

        snprintf(out, outsize, "%s until %lld", format_interval(v->num, every, sizeof every),
                 (long long)v->num2);
        break;
    }
    case CFG_T_ENUM:
        cfg__enum_word((enum cfg_directive)v->directive, v->num, out, outsize);
        break;
    case CFG_T_STRING:
    case CFG_T_WORDS:
    default:
        snprintf(out, outsize, "%s", cfg_str(c, v->text));
        break;
    }
    return out;
}
