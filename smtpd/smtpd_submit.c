/*
 * smtpd_submit.c - local submission: who is on the pickup socket, and what they may do
 *
 * DESCRIPTION
 *   The pickup socket (RUNDIR/pickup, the sendmail command's way in) is open
 *   to every local user, so the kernel's word on the caller (SO_PEERCRED)
 *   decides, never what the client says:
 *     submit-users LIST          who may submit at all (default: everyone);
 *                                others get "554 5.7.1" (smtpd_admit.c)
 *     trusted-submit-users LIST  who may give any envelope sender (sendmail
 *                                -f, MAIL FROM); everyone else gets their
 *                                own address, login@host-name, whatever
 *                                they asked for (Postfix's
 *                                authorized_submit_users, sendmail's
 *                                trusted users)
 *   A LIST holds login names and @groups (primary or supplementary
 *   membership), separated by spaces or commas. root is always allowed and
 *   trusted. A sender whose local part is the login name and whose domain
 *   is host-name or the system's name counts as the user's own. The uid
 *   and login name travel with the message: cleanup writes them into
 *   Received ("from userid 1000 (alice)").
 *
 * Owns: nothing (user and group lookups through NSS, per connection).
 *
 * SECURITY: decides which envelope sender a local user may use, and so
 * whose mail they can make us sign. Identity comes from the kernel only.
 */
#include "config.h"

#include <errno.h>
#include <grp.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "msg.h"
#include "smtpd.h"

#define MAX_GROUPS 256
#define LIST_SEP   ", \t"

/* Group memberships of the caller, for @group entries. */
struct groups {
    gid_t gid[MAX_GROUPS];
    int n;
};

/* list_text - the global user list D, or NULL when not set */
static const char *
list_text(const struct cfg *c, enum cfg_directive d)
{
    const struct cfg_value *v = cfg_global(c, d);

    if (v == NULL || (v->flags & (CFG_VALUE_UNSET | CFG_VALUE_CLEAR)))
        return NULL;
    return cfg_str(c, v->text);
}

/* group_member - is @NAME one of G's groups? */
static bool
in_group(const char *name, const struct groups *g)
{
    struct group gr, *res = NULL;
    char buf[16384];

    if (getgrnam_r(name, &gr, buf, sizeof(buf), &res) != 0 || res == NULL)
        return false;
    for (int i = 0; i < g->n; i++)
        if (g->gid[i] == res->gr_gid)
            return true;
    return false;
}

/* listed - does TEXT name WHO or one of its groups? */
static bool
listed(const char *text, const struct smtpd_submitter *who, const struct groups *g)
{
    char copy[4096], *save = NULL;

    if (text == NULL)
        return false;
    snprintf(copy, sizeof(copy), "%s", text);
    for (char *t = strtok_r(copy, LIST_SEP, &save); t; t = strtok_r(NULL, LIST_SEP, &save)) {
        if (t[0] == '@' ? in_group(t + 1, g) : (*who->user && strcmp(t, who->user) == 0))
            return true;
    }
    return false;
}

/* lookup - login name and group list of UID (GID from the socket when unknown) */
static void
lookup(uid_t uid, gid_t gid, struct smtpd_submitter *who, struct groups *g)
{
    struct passwd pw, *res = NULL;
    char buf[16384];

    g->n = 1;
    g->gid[0] = gid;
    if (getpwuid_r(uid, &pw, buf, sizeof(buf), &res) != 0 || res == NULL ||
        strlen(res->pw_name) >= sizeof(who->user))
        return;
    strcpy(who->user, res->pw_name);
    g->n = MAX_GROUPS;
    if (getgrouplist(res->pw_name, res->pw_gid, g->gid, &g->n) < 0)
        g->n = MAX_GROUPS; /* more than we keep: the first ones still count */
}

/* smtpd_submit_identify - see smtpd.h */
int
smtpd_submit_identify(const struct cfg *c, int fd, struct smtpd_submitter *who)
{
    struct ucred cred;
    socklen_t len = sizeof(cred);
    struct groups g;
    const char *allowed = list_text(c, CFG_D_SUBMIT_USERS);

    memset(who, 0, sizeof(*who));
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0)
        return -errno;
    who->known = true;
    who->uid = cred.uid;
    lookup(cred.uid, cred.gid, who, &g);
    who->trusted = cred.uid == 0 || listed(list_text(c, CFG_D_TRUSTED_SUBMIT_USERS), who, &g);
    if (!who->trusted && allowed && !listed(allowed, who, &g))
        return -EPERM;
    return 0;
}

/* own_local_part - the login name, or uidN for a uid without one */
static const char *
own_local_part(const struct smtpd_submitter *who, char *out, size_t size)
{
    if (*who->user)
        return who->user;
    snprintf(out, size, "uid%u", who->uid);
    return out;
}

/* is_own - is ADDRESS LOCAL@host-name or LOCAL@the system's name? */
static bool
is_own(const struct cfg *c, const char *address, const char *local)
{
    const char *at = strrchr(address, '@');
    char sys[256];

    if (at == NULL || (size_t)(at - address) != strlen(local) ||
        strncmp(address, local, strlen(local)) != 0)
        return false;
    if (strcasecmp(at + 1, smtpd_policy_host_name(c)) == 0)
        return true;
    if (gethostname(sys, sizeof(sys)) != 0)
        return false;
    sys[sizeof(sys) - 1] = '\0';
    return strcasecmp(at + 1, sys) == 0;
}

/* smtpd_submit_sender - see smtpd.h */
const char *
smtpd_submit_sender(const struct cfg *c, const struct smtpd_submitter *who, const char *requested,
                    char *out, size_t size)
{
    char uidbuf[32];
    const char *local;

    if (!who->known || who->trusted)
        return requested;
    local = own_local_part(who, uidbuf, sizeof(uidbuf));
    if (is_own(c, requested, local))
        return requested;
    snprintf(out, size, "%s@%s", local, smtpd_policy_host_name(c));
    return out;
}

/* smtpd_submit_describe - see smtpd.h */
const char *
smtpd_submit_describe(const struct smtpd_submitter *who, char *out, size_t size)
{
    if (*who->user)
        snprintf(out, size, "uid %u (%s)", who->uid, who->user);
    else
        snprintf(out, size, "uid %u", who->uid);
    return out;
}
