/*
 * cfg_delivery.c - the values of the non-SMTP delivery types, each parsed in
 * this one place (at load, so a bad value is a file:line error, and again by
 * smtp-out): http-delivery-url and a pipe's command line
 *
 * http-delivery-url follows
 * PowerMTA's rule: scheme://host[:port][/path] with scheme http or https, a
 * host name, an IPv4 address or an IPv6 address in brackets, and no
 * userinfo, query string or fragment.
 *
 * Owns nothing. SECURITY: configuration text only; every length is checked
 * against the output's size.
 */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cfg.h"
#include "xalloc.h"

int
cfg_http_url_parse(const char *url, struct cfg_http_url *out, char *err, size_t errlen)
{
    const char *p, *host, *host_end, *path;
    size_t hlen;
    unsigned long port;
    char *end;

    memset(out, 0, sizeof *out);
    if (strncmp(url, "http://", 7) == 0) {
        out->https = 0;
        p = url + 7;
    } else if (strncmp(url, "https://", 8) == 0) {
        out->https = 1;
        p = url + 8;
    } else {
        snprintf(err, errlen, "'%s' is not an http:// or https:// URL", url);
        return -EINVAL;
    }
    if (strpbrk(url, "?#@ \t") != NULL) {
        snprintf(err, errlen, "'%s' has userinfo, a query, a fragment or a blank (not allowed)",
                 url);
        return -EINVAL;
    }
    path = p + strcspn(p, "/");
    if (*p == '[') {
        host = p + 1;
        host_end = memchr(host, ']', (size_t)(path - host));
        if (!host_end) {
            snprintf(err, errlen, "'%s': unterminated [IPv6] address", url);
            return -EINVAL;
        }
        p = host_end + 1;
    } else {
        host = p;
        host_end = p + strcspn(p, ":/");
        p = host_end;
    }
    hlen = (size_t)(host_end - host);
    if (hlen == 0 || hlen >= sizeof out->host) {
        snprintf(err, errlen, "'%s': no host, or a host name too long", url);
        return -EINVAL;
    }
    memcpy(out->host, host, hlen);
    out->port = out->https ? 443 : 80;
    if (*p == ':') {
        port = strtoul(p + 1, &end, 10);
        if (end == p + 1 || end != path || port == 0 || port > 65535) {
            snprintf(err, errlen, "'%s': bad port", url);
            return -EINVAL;
        }
        out->port = (unsigned)port;
    } else if (p != path) {
        snprintf(err, errlen, "'%s': bad host", url);
        return -EINVAL;
    }
    return 0;
}

void
cfg_command_free(char **words)
{
    for (size_t i = 0; words && words[i]; i++)
        free(words[i]);
    free(words);
}

/* push_word - append the NUL-terminated word W (LEN bytes) to WORDS */
static char **
push_word(char **words, size_t *n, const char *w, size_t len)
{
    char *copy = xmalloc(len + 1);
    char **grown = xreallocarray(words, *n + 2, sizeof *words);

    memcpy(copy, w, len);
    copy[len] = '\0';
    grown[(*n)++] = copy;
    grown[*n] = NULL;
    return grown;
}

char **
cfg_command_split(const char *text)
{
    size_t len = strlen(text), n = 0, wlen = 0;
    char *inner = NULL, *word = xmalloc(len + 1);
    char **words = xcalloc(1, sizeof *words);
    int quoted = 0, in_word = 0;

    /* PowerMTA writes the whole command as one quoted string: take what is inside */
    if (len >= 2 && text[0] == '"' && text[len - 1] == '"' && text[len - 2] != '\\') {
        size_t k = 0;
        inner = xmalloc(len);
        for (size_t i = 1; i + 1 < len; i++) {
            if (text[i] == '\\' && i + 2 < len && (text[i + 1] == '\\' || text[i + 1] == '"'))
                i++; /* \" and \\ inside the quoted value */
            inner[k++] = text[i];
        }
        inner[k] = '\0';
        text = inner;
    }
    for (const char *p = text;; p++) {
        char c = *p;
        if (c == '\0' || (!quoted && (c == ' ' || c == '\t'))) {
            if (in_word)
                words = push_word(words, &n, word, wlen);
            in_word = 0;
            wlen = 0;
            if (c == '\0')
                break;
            continue;
        }
        in_word = 1;
        if (c == '"')
            quoted = !quoted;
        else if (c == '\\' && p[1])
            word[wlen++] = *++p;
        else
            word[wlen++] = c;
    }
    free(word);
    free(inner);
    if (quoted || n == 0) {
        cfg_command_free(words);
        return NULL;
    }
    return words;
}
