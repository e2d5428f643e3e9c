/*
 * replay.c - a fuzz target's inputs as a `make check` test (no libFuzzer)
 *
 * Linked with one target's LLVMFuzzerTestOneInput(), this main() runs it on
 * every file of fuzz/corpus/TARGET and fuzz/regress/TARGET under
 * $PMTA_SRCDIR (the seed corpus and the inputs of past findings), or on the
 * files and directories named on the command line, and prints one TAP line
 * per input. A crash or sanitizer report ends the run; the "# input" line
 * printed before each call names the culprit. This is what makes the
 * corpora a regression test on every build, gcc or clang, with or without
 * sanitizers. Each input is copied into a buffer of exactly its size, so a
 * read past the end is caught by ASan as it would be under libFuzzer.
 */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fuzz.h"

#ifndef FUZZ_TARGET
#error "compile with -DFUZZ_TARGET='\"name\"'"
#endif

struct inputs {
    char **path;
    size_t n, cap;
};

static void
add_input(struct inputs *in, const char *path)
{
    if (in->n == in->cap) {
        in->cap = in->cap ? 2 * in->cap : 64;
        in->path = realloc(in->path, in->cap * sizeof *in->path);
        if (in->path == NULL)
            abort();
    }
    if ((in->path[in->n++] = strdup(path)) == NULL)
        abort();
}

static int
by_name(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* collect - PATH itself, or every regular file in directory PATH (not hidden, sorted) */
static void
collect(struct inputs *in, const char *path, int must_exist)
{
    struct stat st;
    struct dirent *e;
    DIR *d;
    size_t first = in->n;

    if (stat(path, &st) != 0) {
        if (must_exist || errno != ENOENT) {
            fprintf(stderr, "replay: %s: %s\n", path, strerror(errno));
            exit(2);
        }
        return;
    }
    if (!S_ISDIR(st.st_mode)) {
        add_input(in, path);
        return;
    }
    if ((d = opendir(path)) == NULL) {
        fprintf(stderr, "replay: %s: %s\n", path, strerror(errno));
        exit(2);
    }
    while ((e = readdir(d)) != NULL) {
        char file[4096];

        if (e->d_name[0] == '.')
            continue;
        snprintf(file, sizeof file, "%s/%s", path, e->d_name);
        if (stat(file, &st) == 0 && S_ISREG(st.st_mode))
            add_input(in, file);
    }
    closedir(d);
    qsort(in->path + first, in->n - first, sizeof *in->path, by_name);
}

/* read_input - the whole file in a buffer of exactly its size (NULL for an empty file) */
static uint8_t *
read_input(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    uint8_t *data = NULL;
    long size;

    if (f == NULL || fseek(f, 0, SEEK_END) != 0 || (size = ftell(f)) < 0 ||
        fseek(f, 0, SEEK_SET) != 0) {
        fprintf(stderr, "replay: %s: %s\n", path, strerror(errno));
        exit(2);
    }
    if (size > 0) {
        if ((data = malloc((size_t)size)) == NULL ||
            fread(data, 1, (size_t)size, f) != (size_t)size) {
            fprintf(stderr, "replay: %s: short read\n", path);
            exit(2);
        }
    }
    fclose(f);
    *len = (size_t)size;
    return data;
}

/* shown_name - the last three components of PATH ("regress/smtpd/crash-1f2e") */
static const char *
shown_name(const char *path)
{
    const char *p = path + strlen(path), *start = path;
    int slashes = 0;

    while (p > path && slashes < 3)
        if (*--p == '/' && ++slashes == 3)
            start = p + 1;
    return start;
}

int
main(int argc, char **argv)
{
    struct inputs in = { 0 };
    size_t i;

    if (argc > 1) {
        for (int a = 1; a < argc; a++)
            collect(&in, argv[a], 1);
    } else {
        const char *src = getenv("PMTA_SRCDIR");
        char dir[4096];

        snprintf(dir, sizeof dir, "%s/fuzz/corpus/%s", src ? src : ".", FUZZ_TARGET);
        collect(&in, dir, 1);
        snprintf(dir, sizeof dir, "%s/fuzz/regress/%s", src ? src : ".", FUZZ_TARGET);
        collect(&in, dir, 0);
    }
    printf("1..%zu\n", in.n);
    for (i = 0; i < in.n; i++) {
        size_t len;
        uint8_t *data = read_input(in.path[i], &len);

        printf("# input %s (%zu bytes)\n", in.path[i], len);
        fflush(stdout);
        LLVMFuzzerTestOneInput(data, len);
        printf("ok %zu - %s %s\n", i + 1, FUZZ_TARGET, shown_name(in.path[i]));
        free(data);
        free(in.path[i]);
    }
    free(in.path);
    return 0;
}
