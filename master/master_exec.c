/*
 * master_exec.c - the step between pmtad and a worker: give up every privilege, then exec
 *
 * When workers run as run-as-user, pmtad starts each one (master_spawn.c) as
 *     pmtad --exec-worker UID:GID PROGRAM ARGV0
 * with the worker's environment and descriptors already in place. This
 * process, still root, then
 *   - sets no_new_privs (inherited by everything the worker will ever run),
 *   - drops every capability from its bounding set,
 *   - clears the supplementary groups, sets GID, then UID, and checks that
 *     uid 0 is out of reach,
 * and execs PROGRAM: the worker never runs as root, and neither it nor a
 * program it starts (an acct-file pipe) can gain a privilege through
 * execve, setuid bits and file capabilities included. pmtad itself keeps its
 * bounding set: its reload validator runs as root (master_validate.c).
 * The worker runtime checks all of it again (runtime/worker.c).
 *
 * Owns: nothing; this process becomes the worker or exits 126.
 *
 * SECURITY: runs as root with arguments pmtad built; a failure of any step
 * stops the start (pmtad counts a startup failure).
 */
#include "config.h"

#include <errno.h>
#include <grp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

#include "master.h"

#define EXEC_FAILED 126

static int
fail(const char *what, const char *arg)
{
    fprintf(stderr, "pmtad --exec-worker: %s%s%s: %s\n", what, arg ? " " : "", arg ? arg : "",
            strerror(errno));
    return EXEC_FAILED;
}

/* drop_bounding_set - no execve may grant a capability again; the count dropped */
static int
drop_bounding_set(void)
{
    int cap;

    for (cap = 0; prctl(PR_CAPBSET_READ, cap, 0, 0, 0) >= 0; cap++)
        if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0)
            return -1;
    return cap;
}

/* master_exec_worker - see master.h */
int
master_exec_worker(int argc, char **argv)
{
    unsigned long uid, gid;
    int n = 0;
    char *args[2];

    if (argc != 5 || sscanf(argv[2], "%lu:%lu%n", &uid, &gid, &n) != 2 || argv[2][n] != '\0' ||
        uid == 0) {
        errno = EINVAL;
        return fail("usage: --exec-worker UID:GID PROGRAM ARGV0", NULL);
    }
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
        return fail("no_new_privs", NULL);
    if (drop_bounding_set() < 0)
        return fail("dropping the capability bounding set", NULL);
    if (setgroups(0, NULL) < 0 || setgid((gid_t)gid) < 0)
        return fail("setgid", argv[2]);
    if (setuid((uid_t)uid) < 0)
        return fail("setuid", argv[2]);
    if (setuid(0) == 0) {
        errno = EPERM;
        return fail("uid 0 is still reachable after setuid", argv[2]);
    }
    args[0] = argv[4];
    args[1] = NULL;
    execv(argv[3], args);
    return fail("exec", argv[3]);
}
