/*
 * anvil.c - the inbound connection table every smtpd process shares (see anvil.h)
 *
 * Layout of the memfd (all offsets 64-byte aligned):
 *     struct shared          magic, geometry, hash key, stress flag, the mutex
 *     uint32_t total[nslots] connections counted by each slot
 *     entries                nbuckets * ANVIL_WAYS entries of entry_size bytes:
 *                            struct entry + uint32_t count[nslots]
 *
 * Owns: the mapping of one process. The memfd itself belongs to pmtad.
 *
 * SECURITY: geometry is read from the shared header once, checked against
 * the mapping's size and kept privately; every index is bounded by it.
 */
#include "config.h"

#include <errno.h>
#include <pthread.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/in.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <fcntl.h>
#include <unistd.h>

#include "msg.h"
#include "xalloc.h"
#include "anvil.h"

#define ANVIL_MAGIC   0x616e766cu /* "anvl" */
#define ANVIL_VERSION 1u
#define ALIGN64(n)    (((n) + 63) & ~(size_t)63)
#define ALIGN8(n)     (((n) + 7) & ~(size_t)7)
#define MIN_CAPACITY  1024u
#define MAX_CAPACITY  (1u << 20)

struct shared {
    uint32_t magic;
    uint32_t version;
    uint32_t nslots;
    uint32_t nbuckets;
    uint32_t entry_size;
    uint32_t stress; /* atomic */
    uint64_t key[2];
    uint64_t untracked;
    pthread_mutex_t lock;
};

struct entry {
    uint8_t used;
    uint8_t family; /* AF_INET, AF_INET6 */
    uint8_t pad[2];
    uint32_t conns;  /* sum of count[] */
    uint64_t tat_ms; /* GCRA theoretical arrival time; 0: no rate state */
    uint8_t addr[16];
    uint32_t count[]; /* per slot */
};

struct anvil {
    struct shared *sh;
    size_t size;
    unsigned slot;
    unsigned nslots;
    unsigned nbuckets;
    size_t entry_size;
    uint32_t *totals;
    unsigned char *entries;
};

/* A client address reduced to what is counted. */
struct key {
    uint8_t family;
    uint8_t addr[16];
};

/* geometry - offsets of the totals and the entries, and the whole size */
static size_t
geometry(unsigned nslots, unsigned nbuckets, size_t *totals_off, size_t *entries_off,
         size_t *entry_size)
{
    *entry_size = ALIGN8(sizeof(struct entry) + sizeof(uint32_t) * nslots);
    *totals_off = ALIGN64(sizeof(struct shared));
    *entries_off = ALIGN64(*totals_off + sizeof(uint32_t) * nslots);
    return *entries_off + (size_t)nbuckets * ANVIL_WAYS * *entry_size;
}

/* anvil_capacity_for - see anvil.h */
unsigned
anvil_capacity_for(int64_t total_max_smtp_in)
{
    uint64_t want = total_max_smtp_in > 0 ? (uint64_t)total_max_smtp_in * 4 : 4096;
    unsigned cap = MIN_CAPACITY;

    while (cap < want && cap < MAX_CAPACITY)
        cap <<= 1;
    return cap;
}

/* init_shared - header, mutex and empty table in fresh zeroed memory */
static int
init_shared(struct shared *sh, unsigned nslots, unsigned nbuckets)
{
    pthread_mutexattr_t attr;
    size_t totals_off, entries_off, entry_size;
    int rc;

    geometry(nslots, nbuckets, &totals_off, &entries_off, &entry_size);
    sh->magic = ANVIL_MAGIC;
    sh->version = ANVIL_VERSION;
    sh->nslots = nslots;
    sh->nbuckets = nbuckets;
    sh->entry_size = (uint32_t)entry_size;
    if (getrandom(sh->key, sizeof(sh->key), 0) != (ssize_t)sizeof(sh->key))
        return -errno;
    if ((rc = pthread_mutexattr_init(&attr)) != 0)
        return -rc;
    rc = pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED);
    if (rc == 0)
        rc = pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST);
    if (rc == 0)
        rc = pthread_mutex_init(&sh->lock, &attr);
    pthread_mutexattr_destroy(&attr);
    return -rc;
}

/* anvil_create - see anvil.h */
int
anvil_create(unsigned nslots, unsigned capacity)
{
    unsigned nbuckets = capacity / ANVIL_WAYS;
    size_t totals_off, entries_off, entry_size, size;
    void *mem;
    int fd, err;

    if (nslots == 0 || nslots > ANVIL_MAX_SLOTS || nbuckets == 0 ||
        (nbuckets & (nbuckets - 1)) != 0)
        return -EINVAL;
    size = geometry(nslots, nbuckets, &totals_off, &entries_off, &entry_size);
    if ((fd = memfd_create("pmta-anvil", MFD_CLOEXEC | MFD_ALLOW_SEALING)) < 0)
        return -errno;
    if (ftruncate(fd, (off_t)size) < 0) {
        err = -errno;
        close(fd);
        return err;
    }
    if ((mem = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)) == MAP_FAILED) {
        err = -errno;
        close(fd);
        return err;
    }
    err = init_shared(mem, nslots, nbuckets);
    munmap(mem, size);
    /* A process that shrank the table would make every other one fault. */
    if (err == 0 && fcntl(fd, F_ADD_SEALS, F_SEAL_GROW | F_SEAL_SHRINK | F_SEAL_SEAL) < 0)
        err = -errno;
    if (err < 0) {
        close(fd);
        return err;
    }
    return fd;
}

static struct entry *
entry_at(const struct anvil *a, size_t index)
{
    return (struct entry *)(a->entries + index * a->entry_size);
}

/* recount - after a holder died mid-update: every sum from its parts */
static void
recount(struct anvil *a)
{
    size_t n = (size_t)a->nbuckets * ANVIL_WAYS;

    for (size_t i = 0; i < n; i++) {
        struct entry *e = entry_at(a, i);
        uint32_t sum = 0;

        for (unsigned s = 0; s < a->nslots; s++)
            sum += e->count[s];
        e->conns = sum;
    }
}

static void
lock(struct anvil *a)
{
    int rc = pthread_mutex_lock(&a->sh->lock);

    if (rc == EOWNERDEAD) {
        msg_warn("an smtpd process died holding the connection table; recovered it");
        recount(a);
        pthread_mutex_consistent(&a->sh->lock);
    } else if (rc != 0) {
        msg_panic("connection table lock: %s", strerror(rc));
    }
}

static void
unlock(struct anvil *a)
{
    pthread_mutex_unlock(&a->sh->lock);
}

/* anvil_attach - see anvil.h */
struct anvil *
anvil_attach(int fd, unsigned slot, int *err)
{
    struct anvil *a;
    struct shared *sh;
    struct stat st;
    size_t totals_off, entries_off, entry_size, size;

    if (fstat(fd, &st) < 0) {
        *err = -errno;
        return NULL;
    }
    if ((size_t)st.st_size < sizeof(struct shared)) {
        *err = -EPROTO;
        return NULL;
    }
    sh = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (sh == MAP_FAILED) {
        *err = -errno;
        return NULL;
    }
    if (sh->magic != ANVIL_MAGIC || sh->version != ANVIL_VERSION || sh->nslots == 0 ||
        sh->nslots > ANVIL_MAX_SLOTS || sh->nbuckets == 0 ||
        (sh->nbuckets & (sh->nbuckets - 1)) != 0 || sh->nbuckets > MAX_CAPACITY ||
        (size = geometry(sh->nslots, sh->nbuckets, &totals_off, &entries_off, &entry_size)) !=
            (size_t)st.st_size ||
        sh->entry_size != entry_size || slot >= sh->nslots) {
        munmap(sh, (size_t)st.st_size);
        *err = -EPROTO;
        return NULL;
    }
    a = xcalloc(1, sizeof(*a));
    a->sh = sh;
    a->size = size;
    a->slot = slot;
    a->nslots = sh->nslots;
    a->nbuckets = sh->nbuckets;
    a->entry_size = entry_size;
    a->totals = (uint32_t *)((char *)sh + totals_off);
    a->entries = (unsigned char *)sh + entries_off;
    /* A process that held this slot before us is dead: nothing it counted is open. */
    lock(a);
    a->totals[slot] = 0;
    for (size_t i = 0; i < (size_t)a->nbuckets * ANVIL_WAYS; i++) {
        struct entry *e = entry_at(a, i);

        e->conns -= e->count[slot] <= e->conns ? e->count[slot] : e->conns;
        e->count[slot] = 0;
    }
    unlock(a);
    return a;
}

void
anvil_detach(struct anvil *a)
{
    if (a == NULL)
        return;
    munmap(a->sh, a->size);
    free(a);
}

/* make_key - ADDR as counted (IPv6 by /64, v4-mapped as IPv4); false: no address */
static bool
make_key(const struct sockaddr *addr, struct key *k)
{
    static const uint8_t mapped[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };

    memset(k, 0, sizeof(*k));
    if (addr == NULL)
        return false;
    if (addr->sa_family == AF_INET) {
        k->family = AF_INET;
        memcpy(k->addr, &((const struct sockaddr_in *)addr)->sin_addr, 4);
        return true;
    }
    if (addr->sa_family == AF_INET6) {
        const uint8_t *a6 = ((const struct sockaddr_in6 *)addr)->sin6_addr.s6_addr;

        if (memcmp(a6, mapped, sizeof(mapped)) == 0) {
            k->family = AF_INET;
            memcpy(k->addr, a6 + 12, 4);
        } else {
            k->family = AF_INET6;
            memcpy(k->addr, a6, 8);
        }
        return true;
    }
    return false;
}

static uint64_t
mix64(uint64_t h)
{
    h ^= h >> 33;
    h *= UINT64_C(0xff51afd7ed558ccd);
    h ^= h >> 33;
    h *= UINT64_C(0xc4ceb9fe1a85ec53);
    h ^= h >> 33;
    return h;
}

/* buckets_of - first entry indices of K's two buckets (keyed: a client
   cannot aim at one); an address lives in either, the emptier one when it
   comes (two choices keep buckets from filling up) */
static void
buckets_of(const struct anvil *a, const struct key *k, size_t first[2])
{
    uint64_t w0, w1, h;

    memcpy(&w0, k->addr, 8);
    memcpy(&w1, k->addr + 8, 8);
    h = mix64(a->sh->key[0] ^ w0 ^ k->family);
    h = mix64(h ^ w1 ^ a->sh->key[1]);
    first[0] = (size_t)(h & (a->nbuckets - 1)) * ANVIL_WAYS;
    first[1] = (size_t)((h >> 32) & (a->nbuckets - 1)) * ANVIL_WAYS;
}

static bool
same_key(const struct entry *e, const struct key *k)
{
    return e->used && e->family == k->family && memcmp(e->addr, k->addr, sizeof(e->addr)) == 0;
}

/* find - K's entry index, or SIZE_MAX */
static size_t
find(const struct anvil *a, const struct key *k)
{
    size_t first[2];

    buckets_of(a, k, first);
    for (int b = 0; b < 2; b++)
        for (size_t i = first[b]; i < first[b] + ANVIL_WAYS; i++)
            if (same_key(entry_at(a, i), k))
                return i;
    return SIZE_MAX;
}

/* is_free - an entry that holds nothing: unused, or idle with its rate state over */
static bool
is_free(const struct entry *e, uint64_t now_ms)
{
    return !e->used || (e->conns == 0 && e->tat_ms <= now_ms);
}

/* take - a place for K: a free entry in the emptier of its buckets, else the
   idle entry whose rate state ends first; SIZE_MAX when all hold connections */
static size_t
take(struct anvil *a, const struct key *k, uint64_t now_ms)
{
    size_t first[2], best = SIZE_MAX, free_at[2] = { SIZE_MAX, SIZE_MAX };
    unsigned nfree[2] = { 0, 0 };
    struct entry *e;

    buckets_of(a, k, first);
    for (int b = 0; b < 2; b++)
        for (size_t i = first[b]; i < first[b] + ANVIL_WAYS; i++) {
            e = entry_at(a, i);
            if (is_free(e, now_ms)) {
                nfree[b]++;
                if (free_at[b] == SIZE_MAX)
                    free_at[b] = i;
            } else if (e->conns == 0 &&
                       (best == SIZE_MAX || e->tat_ms < entry_at(a, best)->tat_ms)) {
                best = i;
            }
        }
    if (nfree[0] || nfree[1])
        best = nfree[1] > nfree[0] ? free_at[1] : free_at[0];
    if (best == SIZE_MAX)
        return best;
    e = entry_at(a, best);
    memset(e, 0, a->entry_size);
    e->used = 1;
    e->family = k->family;
    memcpy(e->addr, k->addr, sizeof(e->addr));
    return best;
}

static unsigned
sum_totals(const struct anvil *a)
{
    unsigned sum = 0;

    for (unsigned s = 0; s < a->nslots; s++)
        sum += a->totals[s];
    return sum;
}

/* rate_step - the GCRA emission interval of LIM in ms; 0: no rate */
static uint64_t
rate_step(const struct anvil_limits *lim)
{
    uint64_t step;

    if (lim->rate_count == 0 || lim->rate_period_s == 0)
        return 0;
    step = (uint64_t)lim->rate_period_s * 1000 / lim->rate_count;
    return step ? step : 1;
}

/* verdict - which limit, if any, refuses a connection of E (may be NULL) */
static enum anvil_verdict
verdict(const struct entry *e, const struct anvil_limits *lim, unsigned total, uint64_t now_ms)
{
    uint64_t step = rate_step(lim);

    if (e && lim->per_addr && e->conns >= lim->per_addr)
        return ANVIL_OVER_ADDR;
    /* GCRA: a burst of rate_count, then one per step */
    if (e && step && e->tat_ms > now_ms + (uint64_t)lim->rate_period_s * 1000 - step)
        return ANVIL_OVER_RATE;
    if (lim->total && total >= lim->total)
        return ANVIL_OVER_TOTAL;
    return ANVIL_ADMIT;
}

/* anvil_connect - see anvil.h */
enum anvil_verdict
anvil_connect(struct anvil *a, const struct sockaddr *addr, const struct anvil_limits *lim,
              uint64_t now_ms, struct anvil_ticket *ticket, unsigned *total)
{
    struct key k;
    bool have_key = make_key(addr, &k);
    size_t idx = SIZE_MAX;
    struct entry *e = NULL;
    enum anvil_verdict v;
    uint64_t step = rate_step(lim);

    memset(ticket, 0, sizeof(*ticket));
    lock(a);
    *total = sum_totals(a);
    if (have_key && (idx = find(a, &k)) != SIZE_MAX)
        e = entry_at(a, idx);
    v = verdict(e, lim, *total, now_ms);
    if (v == ANVIL_ADMIT) {
        if (have_key && e == NULL && (idx = take(a, &k, now_ms)) != SIZE_MAX)
            e = entry_at(a, idx);
        if (have_key && e == NULL)
            a->sh->untracked++;
        if (e) {
            e->conns++;
            e->count[a->slot]++;
            if (step)
                e->tat_ms = (e->tat_ms > now_ms ? e->tat_ms : now_ms) + step;
            ticket->entry = (uint32_t)idx + 1;
        }
        a->totals[a->slot]++;
        ticket->counted = true;
        ++*total;
    }
    unlock(a);
    return v;
}

/* anvil_disconnect - see anvil.h */
unsigned
anvil_disconnect(struct anvil *a, struct anvil_ticket *ticket)
{
    unsigned total;

    lock(a);
    if (ticket->counted) {
        if (ticket->entry && ticket->entry <= (size_t)a->nbuckets * ANVIL_WAYS) {
            struct entry *e = entry_at(a, ticket->entry - 1);

            if (e->count[a->slot] > 0) {
                e->count[a->slot]--;
                e->conns -= e->conns > 0;
            }
        }
        a->totals[a->slot] -= a->totals[a->slot] > 0;
        ticket->counted = false;
        ticket->entry = 0;
    }
    total = sum_totals(a);
    unlock(a);
    return total;
}

unsigned
anvil_total(struct anvil *a)
{
    unsigned total;

    lock(a);
    total = sum_totals(a);
    unlock(a);
    return total;
}

unsigned
anvil_addr_count(struct anvil *a, const struct sockaddr *addr)
{
    struct key k;
    size_t idx;
    unsigned n = 0;

    if (!make_key(addr, &k))
        return 0;
    lock(a);
    if ((idx = find(a, &k)) != SIZE_MAX)
        n = entry_at(a, idx)->conns;
    unlock(a);
    return n;
}

uint64_t
anvil_untracked(struct anvil *a)
{
    uint64_t n;

    lock(a);
    n = a->sh->untracked;
    unlock(a);
    return n;
}

bool
anvil_set_stress(struct anvil *a, bool on)
{
    return __atomic_exchange_n(&a->sh->stress, on ? 1u : 0u, __ATOMIC_ACQ_REL) != 0;
}

bool
anvil_stress(struct anvil *a)
{
    return __atomic_load_n(&a->sh->stress, __ATOMIC_ACQUIRE) != 0;
}
