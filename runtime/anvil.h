/*
 * anvil.h - the inbound connection table every smtpd process shares
 *
 * NAME
 *   anvil - Postfix's anvil as shared memory: admit or refuse each new
 *   inbound connection against total-max-smtp-in (all smtpd processes
 *   together), max-smtp-in-per-ip and max-connect-rate-per-ip
 *
 * SYNOPSIS
 *   pmtad:  fd = anvil_create(nslots, anvil_capacity_for(total_max_smtp_in));
 *           ... every smtpd process inherits FD ...
 *   smtpd:  a = anvil_attach(fd, slot, &err);
 *           v = anvil_connect(a, peer, &limits, now_ms, &ticket, &total);
 *           ... the session ...
 *           total = anvil_disconnect(a, &ticket);
 *
 * DESCRIPTION
 *   One memfd, sealed against resizing, holds a header and a hash table of
 *   client addresses; one process-shared robust mutex guards both (a
 *   process that dies holding it is recovered: EOWNERDEAD). Each operation
 *   is a bucket scan under the lock, no system call.
 *
 *   Counts are kept per smtpd slot (PMTA_SLOT): when an smtpd process dies,
 *   the process pmtad starts in its slot clears that slot's counts at
 *   anvil_attach(), so a crash leaks no connection (until the restart, which
 *   is immediate unless pmtad throttles a crash loop, the dead process's
 *   connections still count: the limits err on the side of refusing).
 *
 *   Addresses: an IPv4 client counts by its address, an IPv6 client by its
 *   /64 (one site), an IPv4-mapped IPv6 address as IPv4. A connection
 *   without an address (the pickup socket) counts towards the total only.
 *
 *   Rates are GCRA: RATE_COUNT connections per RATE_PERIOD seconds, all at
 *   once if they come in a burst, then one per period/count. A connection
 *   refused for any reason does not use up rate.
 *
 *   Table: a power of two of buckets of ANVIL_WAYS entries; an address may
 *   live in either of two buckets chosen by a hash with a random key (set
 *   at anvil_create(), so a client cannot aim at a bucket) and goes to the
 *   emptier one. An address with no connection keeps its entry while its
 *   rate state runs; then the entry is free. When both buckets are full,
 *   the idle entry whose rate state ends first is taken (that address's
 *   rate history is lost); when every entry holds connections the new
 *   address is admitted without a per-address count (counted in the total;
 *   anvil_untracked() says how often). Neither happens while live addresses
 *   stay well below the capacity, which is four times total-max-smtp-in at
 *   pmtad's start.
 *
 * DIAGNOSTICS
 *   anvil_create/attach return -errno / NULL with *err set; the rest cannot fail.
 *
 * SECURITY
 *   The table is writable by every smtpd process (one user): a compromised
 *   smtpd could corrupt the counts, never make another process read outside
 *   the mapping (each process keeps its own copy of the geometry and checks
 *   indices against it).
 */
#ifndef PMTA_ANVIL_H
#define PMTA_ANVIL_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

#define ANVIL_WAYS      8    /* entries per bucket */
#define ANVIL_MAX_SLOTS 1024 /* smtpd processes */

struct anvil;

/* The limits a new connection is checked against; 0 means none. */
struct anvil_limits {
    unsigned total;      /* total-max-smtp-in */
    unsigned per_addr;   /* max-smtp-in-per-ip */
    unsigned rate_count; /* max-connect-rate-per-ip: RATE_COUNT per RATE_PERIOD_S */
    unsigned rate_period_s;
};

enum anvil_verdict {
    ANVIL_ADMIT,      /* counted */
    ANVIL_OVER_TOTAL, /* total-max-smtp-in reached */
    ANVIL_OVER_ADDR,  /* the address has per_addr connections */
    ANVIL_OVER_RATE   /* the address connects faster than the rate */
};

/* What anvil_disconnect() needs to uncount one admitted connection. */
struct anvil_ticket {
    uint32_t entry; /* entry index + 1; 0: not counted per address */
    bool counted;   /* admitted (and not yet disconnected) */
};

/* anvil_capacity_for - table entries for TOTAL_MAX_SMTP_IN (<= 0: no cap) */
unsigned anvil_capacity_for(int64_t total_max_smtp_in);
/* anvil_create - a new table for NSLOTS processes and CAPACITY addresses;
   the memfd (close-on-exec) or -errno */
int anvil_create(unsigned nslots, unsigned capacity);
/* anvil_attach - map the table in FD as slot SLOT, forgetting what an
   earlier holder of the slot counted; NULL with *ERR = -errno */
struct anvil *anvil_attach(int fd, unsigned slot, int *err);
void anvil_detach(struct anvil *a);

/* anvil_connect - admit and count a connection from ADDR (NULL: no address)
   or say which limit refuses it; *TOTAL gets the connections counted across
   all processes afterwards. NOW_MS is CLOCK_MONOTONIC in milliseconds. */
enum anvil_verdict anvil_connect(struct anvil *a, const struct sockaddr *addr,
                                 const struct anvil_limits *lim, uint64_t now_ms,
                                 struct anvil_ticket *ticket, unsigned *total);
/* anvil_disconnect - uncount TICKET's connection (once); the total afterwards */
unsigned anvil_disconnect(struct anvil *a, struct anvil_ticket *ticket);
/* anvil_total - connections counted across all processes */
unsigned anvil_total(struct anvil *a);
/* anvil_addr_count - connections counted for ADDR (tests, logs) */
unsigned anvil_addr_count(struct anvil *a, const struct sockaddr *addr);
/* anvil_untracked - admissions that found no room for a per-address count */
uint64_t anvil_untracked(struct anvil *a);
/* anvil_set_stress - record the stress state; the previous one (so one
   process logs each change) */
bool anvil_set_stress(struct anvil *a, bool on);
bool anvil_stress(struct anvil *a);

#endif
