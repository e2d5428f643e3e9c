/*
 * master_config.c - pmtad's side of the configuration
 *
 * Loads and validates the configuration text (the only place in the system
 * that parses it), prints diagnostics for --check-config, prints a queue's
 * effective settings for --show-settings, extracts what pmtad itself needs
 * (paths made absolute, user, process counts), writes the first snapshot
 * the workers map, and publishes a reload once master_validate.c's child has
 * validated it and written its snapshot.
 *
 * Owns: the struct master_settings strings, the snapshot files RUNDIR/config.N.
 *
 * SECURITY: snapshots may hold secrets (key file paths, auth settings); they
 * are written into the root-owned run directory and readable only by root and
 * the worker group (0640).
 */
#include "config.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "msg.h"
#include "xalloc.h"
#include "master.h"

/* master_print_diag - print one diagnostic as "file:line: error: message" */
void
master_print_diag(void *ctx, enum cfg_diag_level level, const char *file, unsigned line,
                  const char *message)
{
    struct master_diag *dc = ctx;
    const char *what = level == CFG_DIAG_ERROR ? "error" : "warning";
    char where[PATH_MAX + 32];

    if (level == CFG_DIAG_ERROR)
        dc->errors++;
    else
        dc->warnings++;
    if (file && *file && line > 0)
        snprintf(where, sizeof(where), "%s:%u", file, line);
    else
        snprintf(where, sizeof(where), "%s", file && *file ? file : "config");
    if (dc->to_log) {
        if (level == CFG_DIAG_ERROR)
            msg_error("%s: %s: %s", where, what, message);
        else
            msg_warn("%s: %s: %s", where, what, message);
    } else {
        fprintf(stderr, "%s: %s: %s\n", where, what, message);
    }
}

/* load_checked - cfg_load plus the checks only pmtad knows (listener syntax) */
static struct cfg *
load_checked(const char *path, struct master_diag *dc)
{
    unsigned nerrors = 0;
    struct cfg *c = cfg_load(path, master_print_diag, dc, &nerrors);

    if (c == NULL && dc->errors == 0) {
        /* The library failed without saying why; never stay silent. */
        master_print_diag(dc, CFG_DIAG_ERROR, path, 0, "cannot load configuration");
    }
    if (c && master_check_listeners(c, master_print_diag, dc) > 0) {
        cfg_free(c);
        c = NULL;
    }
    return c;
}

/* master_load_config - parse and validate PATH; NULL (diagnostics reported) on errors */
struct cfg *
master_load_config(const char *path, int to_log)
{
    struct master_diag dc = { to_log, 0, 0 };
    struct cfg *c = load_checked(path, &dc);

    if (c == NULL && !to_log)
        fprintf(stderr, "%s: %u error%s; not starting\n", path, dc.errors,
                dc.errors == 1 ? "" : "s");
    return c;
}

/* master_check_config - --check-config: exit status 0 when PATH loads without errors */
int
master_check_config(const char *path)
{
    struct master_diag dc = { 0, 0, 0 };
    struct cfg *c = load_checked(path, &dc);
    struct master_settings set;

    if (c) { /* the keys as the signing worker will read them */
        master_settings_from_cfg(c, path, &set);
        if (master_check_keys(c, &set, &dc) != 0) {
            cfg_free(c);
            c = NULL;
        }
        master_settings_free(&set);
    }
    if (c == NULL) {
        fprintf(stderr, "%s: config has %u error%s, %u warning%s\n", path, dc.errors,
                dc.errors == 1 ? "" : "s", dc.warnings, dc.warnings == 1 ? "" : "s");
        return 1;
    }
    printf("config OK: %u warning%s\n", dc.warnings, dc.warnings == 1 ? "" : "s");
    cfg_free(c);
    return 0;
}

/* master_show_settings - --show-settings DOMAIN[/VMTA]: one aligned line per setting */
int
master_show_settings(const char *path, const char *queue)
{
    struct master_diag dc = { 0, 0, 0 };
    struct cfg *c = load_checked(path, &dc);
    char err[300];
    int rc;

    if (c == NULL) {
        fprintf(stderr, "%s: configuration has errors\n", path);
        return 1;
    }
    if ((rc = cfg_show_settings(c, queue, stdout, err, sizeof err)) < 0)
        fprintf(stderr, "pmtad: --show-settings: %s\n", err);
    cfg_free(c);
    return rc < 0 ? 1 : 0;
}

/* master_absolute_path - PATH made absolute against the current directory; caller frees */
char *
master_absolute_path(const char *path)
{
    char cwd[PATH_MAX];

    if (path[0] == '/')
        return xstrdup(path);
    if (getcwd(cwd, sizeof(cwd)) == NULL)
        msg_fatal("cannot determine the current directory: %s", strerror(errno));
    return xasprintf("%s/%s", strcmp(cwd, "/") ? cwd : "", path);
}

/* global_str - the effective global string value of D ("" when unset) */
static const char *
global_str(const struct cfg *c, enum cfg_directive d)
{
    const struct cfg_value *v = cfg_global(c, d);

    return v ? cfg_str(c, v->text) : "";
}

/*
 * process_count - a *-processes setting, checked for sanity. MIN is 0 only
 * for smtp-out: without smtp-out processes delivery is paused (queue
 * benchmarks, tests that stand in for smtp-out).
 */
static unsigned
process_count(const struct cfg *c, enum cfg_directive d, int min)
{
    int64_t n = cfg_process_count(c, d);

    /* Clamped, not fatal: a reload must never take pmtad down. */
    if (n < min || n > 256) {
        msg_warn("%s %" PRId64 ": out of range %d..256; using %d", cfg_directive_info(d)->name, n,
                 min, n < min ? min : 256);
        n = n < min ? min : 256;
    }
    return (unsigned)n;
}

/* master_settings_from_cfg - what pmtad needs from C; relative paths become absolute */
void
master_settings_from_cfg(const struct cfg *c, const char *config_path, struct master_settings *set)
{
    uint32_t it = 0;
    uint32_t spool_scope = cfg_next_scope(c, CFG_S_SPOOL, &it);
    const struct cfg_value *root = cfg_global(c, CFG_D_RUN_AS_ROOT);
    const char *log = global_str(c, CFG_D_LOG_FILE);

    memset(set, 0, sizeof(*set));
    set->config_path = master_absolute_path(config_path);
    /* A <spool DIR> block names the spool and wins over the old `spool` directive. */
    if (spool_scope != CFG_NONE)
        set->spool = master_absolute_path(cfg_str(c, c->scopes[spool_scope].name));
    else
        set->spool = master_absolute_path(global_str(c, CFG_D_SPOOL));
    set->run_dir = master_absolute_path(global_str(c, CFG_D_RUN_DIRECTORY));
    set->log_file = strcmp(log, "syslog") == 0 || *log == '\0' ? NULL : master_absolute_path(log);
    set->user = xstrdup(global_str(c, CFG_D_RUN_AS_USER));
    set->drop_privileges = !(root && root->num);
    set->uid = getuid();
    set->gid = getgid();
    set->nprocs[ROLE_SMTPD] = process_count(c, CFG_D_SMTPD_PROCESSES, 1);
    set->nprocs[ROLE_CLEANUP] = process_count(c, CFG_D_CLEANUP_PROCESSES, 1);
    set->nprocs[ROLE_QMGR] = 1; /* the scheduler owns the queue: exactly one */
    set->nprocs[ROLE_SMTPOUT] = process_count(c, CFG_D_SMTP_OUT_PROCESSES, 0);
    set->http_port = (int)cfg_global(c, CFG_D_HTTP_MGMT_PORT)->num;
    set->log_rotate = (int)cfg_global(c, CFG_D_LOG_ROTATE)->num;
    set->log_auto_rotation = cfg_global(c, CFG_D_LOG_AUTO_ROTATION)->num != 0;
    set->log_max_size = cfg_global(c, CFG_D_LOG_MAX_SIZE)->num;
}

void
master_settings_free(struct master_settings *set)
{
    free(set->config_path);
    free(set->spool);
    free(set->run_dir);
    free(set->log_file);
    free(set->user);
    memset(set, 0, sizeof(*set));
}

/* master_snapshot_path - RUNDIR/config.GENERATION; caller frees */
char *
master_snapshot_path(const struct master *m, uint64_t generation)
{
    return xasprintf("%s/config.%" PRIu64, m->set.run_dir, generation);
}

/* master_write_snapshot_file - C as GENERATION to PATH, readable by root and group GID only;
 * 0 or -errno (logged) */
int
master_write_snapshot_file(struct cfg *c, const char *path, uint64_t generation, gid_t gid)
{
    int err;

    c->generation = generation;
    if ((err = cfg_snapshot_write(c, path)) < 0) {
        msg_error("cannot write configuration snapshot %s: %s", path, strerror(-err));
        return err;
    }
    /* Workers read it through their group; nobody else may (it can name secrets). */
    if (chown(path, geteuid(), gid) < 0 || chmod(path, 0640) < 0) {
        err = -errno;
        msg_error("cannot set ownership of %s: %s", path, strerror(errno));
        unlink(path);
    }
    return err;
}

/* master_snapshot_write - publish C as GENERATION; 0 or -errno (logged) */
int
master_snapshot_write(struct master *m, struct cfg *c, uint64_t generation)
{
    char *path = master_snapshot_path(m, generation);
    int err = master_write_snapshot_file(c, path, generation, m->set.gid);

    free(path);
    return err;
}

/* master_snapshots_prune - remove snapshot files no live worker uses any more */
void
master_snapshots_prune(struct master *m)
{
    uint64_t keep = master_min_generation_in_use(m);

    for (; m->oldest_snapshot < keep; m->oldest_snapshot++) {
        char *path = master_snapshot_path(m, m->oldest_snapshot);

        if (unlink(path) < 0 && errno != ENOENT)
            msg_warn("cannot remove old snapshot %s: %s", path, strerror(errno));
        free(path);
    }
}

/* warn_restart_needed - name the changes a reload cannot apply */
static void
warn_restart_needed(struct master *m, const struct cfg *c)
{
    struct master_settings now;

    master_settings_from_cfg(c, m->set.config_path, &now);
    if (master_listeners_differ(m, c))
        msg_warn("smtp-listener changes need a restart of pmtad to take effect");
    if (strcmp(now.spool, m->set.spool) || strcmp(now.run_dir, m->set.run_dir))
        msg_warn("spool and run-directory changes need a restart of pmtad to take effect");
    if ((now.log_file == NULL) != (m->set.log_file == NULL) ||
        (now.log_file && strcmp(now.log_file, m->set.log_file)))
        msg_warn("log-file changes need a restart of pmtad to take effect");
    if (strcmp(now.user, m->set.user) || now.drop_privileges != m->set.drop_privileges)
        msg_warn("run-as-user and run-as-root changes need a restart of pmtad to take effect");
    if (memcmp(now.nprocs, m->set.nprocs, sizeof(now.nprocs)))
        msg_warn("*-processes changes need a restart of pmtad to take effect");
    if (now.http_port != m->set.http_port)
        msg_warn("http-mgmt-port changes need a restart of pmtad to take effect");
    master_settings_free(&now);
}

/* master_publish - C (a validated, mapped snapshot of generation+1) goes into force */
void
master_publish(struct master *m, struct cfg *c)
{
    warn_restart_needed(m, c);
    master_prepare_acct_dirs(m, c);
    cfg_free(m->cfg);
    m->cfg = c;
    m->generation++;
    msg_info("configuration generation %" PRIu64 " published to %d workers", m->generation,
             master_live_workers(m));
    master_broadcast_config(m);
    master_snapshots_prune(m);
}
