/*
 * xalloc.h - allocation that never returns NULL
 *
 * Out of memory is an environment failure: these call msg_fatal(). Size
 * arithmetic is checked for overflow (xreallocarray, xcalloc).
 */
#ifndef PMTA_XALLOC_H
#define PMTA_XALLOC_H

#include <stddef.h>

void *xmalloc(size_t size);
void *xcalloc(size_t nmemb, size_t size);
void *xrealloc(void *ptr, size_t size);
void *xreallocarray(void *ptr, size_t nmemb, size_t size);
char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t n);
/* xasprintf - formatted string in fresh memory; caller frees */
char *xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
