/*
 * fuzz_snapshot.c - fuzz target: the configuration snapshot reader
 * (cfg_snapshot_map in conf/cfg_snapshot.c)
 *
 * Workers map the snapshot pmtad writes and must never read outside it,
 * whatever the file holds: a corrupt snapshot is -EPROTO, never a crash.
 * Two input forms:
 *
 *   raw      input starting with "PMTACFG": the file content itself.
 *   patched  a configuration text, then a NUL, then patches. The text is
 *            loaded (fuzz_conf.h sandbox) and written with
 *            cfg_snapshot_write(); each patch (a 3-byte little-endian
 *            offset, taken modulo the file size, a length byte giving
 *            1..8, that many bytes) then overwrites the file. This corrupts real snapshots in
 *            structure-aware ways, and the seeds stay valid when the
 *            snapshot format changes.
 *
 * In both forms the body checksum is made right before mapping (the
 * fuzzer should test the checks behind it, not spend its time on FNV-1a):
 * the header's header_size field (u32 at offset 12) gives where the body
 * starts, and the checksum is the header's last 8 bytes. A snapshot that
 * maps is then walked as the workers walk it (fuzz_conf_use()). Set
 * FUZZ_SNAPSHOT_SEEDS=DIR to have the patched form save each unpatched
 * snapshot in DIR (raw seeds after a format change).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "cfg.h"
#include "fuzz.h"
#include "fuzz_conf.h"

#define RAW_MAGIC "PMTACFG"

/* The last text written as a snapshot, kept: the fuzzer mutates patches more than texts. */
static struct {
    char *text;
    uint8_t *snap;
    size_t len;
} cache;

static void
ignore_diag(void *ctx, enum cfg_diag_level level, const char *file, unsigned line,
            const char *message)
{
    (void)ctx, (void)level, (void)file, (void)line, (void)message;
}

static uint8_t *
read_all(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    uint8_t *data;
    long size;

    if (f == NULL || fseek(f, 0, SEEK_END) != 0 || (size = ftell(f)) <= 0 ||
        fseek(f, 0, SEEK_SET) != 0 || (data = malloc((size_t)size)) == NULL ||
        fread(data, 1, (size_t)size, f) != (size_t)size)
        abort();
    fclose(f);
    *len = (size_t)size;
    return data;
}

static void
save_seed(const uint8_t *snap, size_t len)
{
    const char *dir = getenv("FUZZ_SNAPSHOT_SEEDS");
    char path[512];
    FILE *f;

    if (dir == NULL || !*dir)
        return;
    snprintf(path, sizeof path, "%s/snapshot-%zu-%08lx", dir, len, (unsigned long)random());
    if ((f = fopen(path, "wb")) != NULL) {
        fwrite(snap, 1, len, f);
        fclose(f);
    }
}

/* snapshot_of - TEXT loaded and written as a snapshot; NULL if it does not load */
static const uint8_t *
snapshot_of(const char *text, size_t *len)
{
    char name[512], path[512];
    struct cfg *c;

    if (cache.text && strcmp(cache.text, text) == 0) {
        *len = cache.len;
        return cache.snap;
    }
    free(cache.text);
    free(cache.snap);
    cache.text = strdup(text);
    cache.snap = NULL;
    snprintf(name, sizeof name, "%s/fuzz.conf", fuzz_conf_sandbox());
    snprintf(path, sizeof path, "%s/snapshot", fuzz_conf_sandbox());
    fuzz_conf_enter();
    c = cfg_load_string(name, text, ignore_diag, NULL, NULL);
    fuzz_conf_leave();
    if (c == NULL)
        return NULL;
    FUZZ_CHECK(cfg_snapshot_write(c, path) == 0);
    cfg_free(c);
    cache.snap = read_all(path, &cache.len);
    unlink(path);
    save_seed(cache.snap, cache.len);
    *len = cache.len;
    return cache.snap;
}

/* fix_checksum - FNV-1a 64 of the body into the header's last 8 bytes */
static void
fix_checksum(uint8_t *file, size_t len)
{
    uint32_t header_size;
    uint64_t h = 0xcbf29ce484222325ull;

    if (len < 16)
        return;
    memcpy(&header_size, file + 12, sizeof header_size);
    if (header_size < 24 || header_size > len)
        return;
    for (size_t i = header_size; i < len; i++) {
        h ^= file[i];
        h *= 0x100000001b3ull;
    }
    memcpy(file + header_size - 8, &h, sizeof h);
}

/* map_and_walk - FILE as a snapshot on a memory file; walk it if it maps */
static void
map_and_walk(const uint8_t *file, size_t len)
{
    static int fd = -1;
    char path[64];
    struct cfg *c;
    int err = 0;

    if (fd < 0 && (fd = memfd_create("fuzz-snapshot", MFD_CLOEXEC)) < 0)
        abort();
    if (ftruncate(fd, 0) != 0 || pwrite(fd, file, len, 0) != (ssize_t)len)
        abort();
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    c = cfg_snapshot_map(path, &err);
    if (c == NULL) {
        FUZZ_CHECK(err == -EPROTO);
        return;
    }
    fuzz_conf_use(c);
    cfg_free(c);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int init;
    const uint8_t *nul, *p, *end = data + size;
    const uint8_t *snap;
    uint8_t *file;
    size_t len;
    char *text;

    if (!init++)
        fuzz_quiet_logs();
    if (size >= strlen(RAW_MAGIC) && memcmp(data, RAW_MAGIC, strlen(RAW_MAGIC)) == 0) {
        if ((file = malloc(size)) == NULL)
            abort();
        memcpy(file, data, size);
        fix_checksum(file, size);
        map_and_walk(file, size);
        free(file);
        return 0;
    }
    if ((nul = memchr(data, 0, size)) == NULL)
        nul = end;
    if ((text = malloc((size_t)(nul - data) + 1)) == NULL)
        abort();
    memcpy(text, data, (size_t)(nul - data));
    text[nul - data] = 0;
    snap = snapshot_of(text, &len);
    free(text);
    if (snap == NULL)
        return 0;
    if ((file = malloc(len)) == NULL)
        abort();
    memcpy(file, snap, len);
    for (p = nul + (nul < end); end - p >= 5;) {
        size_t off = (size_t)(p[0] | p[1] << 8 | p[2] << 16) % len, n = 1 + p[3] % 8;

        p += 4;
        for (size_t i = 0; i < n && p < end; i++, p++)
            file[(off + i) % len] = *p;
    }
    fix_checksum(file, len);
    map_and_walk(file, len);
    free(file);
    return 0;
}
