/*
 * master_validate.c - a reload is validated in a child process, where a
 * parser bug cannot reach the master
 *
 * SIGHUP and `pmtactl reload` (which sends SIGHUP) start the validator: the
 * pmtad binary again, in a hidden mode, with the configuration path, the
 * snapshot file of the next generation and the workers' credentials. It
 * parses and validates the file as root (as --check-config does), checks
 * every DKIM key as the run-as-user (a key root can read but the signing
 * worker cannot is an error at its file:line), writes the snapshot and exits
 * 0. The
 * master accepts the reload only when the validator exited 0 within the time
 * limit and the snapshot it wrote maps and passes cfg_snapshot_map's checks;
 * if the validator fails, dies on a signal or hangs (killed at the limit), the
 * reload is refused, the reason logged, and the running configuration and
 * workers carry on. A SIGHUP while a validation runs is merged into one more
 * validation after it.
 *
 * The same key check as the run-as-user serves --check-config and start-up
 * (master_check_keys).
 *
 * Owns: the validator process and its timer, the snapshot file of a refused
 * generation (removed).
 *
 * SECURITY: the validator starts as root (the configuration and its includes
 * may be readable by root only) and reads nothing from the network; the key
 * check runs in a grandchild that has dropped every privilege. The test hook
 * (a file whose content makes the validator crash or hang) exists only when
 * pmtad is started with the undocumented --test-validator-fault option.
 */
#include "config.h"

#include <errno.h>
#include <grp.h>
#include <pwd.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "msg.h"
#include "xalloc.h"
#include "master.h"

/* --- the key check as the run-as-user --------------------------------------------------- */

/* drop_to - give up root for UID:GID, no supplementary groups (as the workers run); 0 or -1 */
static int
drop_to(uid_t uid, gid_t gid)
{
    if (setgroups(0, NULL) != 0 || setgid(gid) != 0 || setuid(uid) != 0)
        return -1;
    return setuid(0) == 0 ? -1 : 0; /* make sure there is no way back */
}

/* master_check_keys_as_user - see master.h */
unsigned
master_check_keys_as_user(const struct cfg *c, uid_t uid, gid_t gid, cfg_diag_fn diag, void *ctx)
{
    int status;
    pid_t pid;

    fflush(NULL);
    if ((pid = fork()) < 0) {
        diag(ctx, CFG_DIAG_ERROR, NULL, 0,
             "cannot check DKIM keys as the run-as-user: fork failed");
        return 1;
    }
    if (pid == 0) {
        if (drop_to(uid, gid) != 0) {
            diag(ctx, CFG_DIAG_ERROR, NULL, 0, "cannot change to the run-as-user's credentials");
            _exit(2);
        }
        _exit(cfg_check_keys(c, diag, ctx) ? 1 : 0);
    }
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : 1;
}

/* master_check_keys - see master.h */
unsigned
master_check_keys(const struct cfg *c, const struct master_settings *set, struct master_diag *dc)
{
    struct passwd *pw;

    if (!set->drop_privileges || geteuid() != 0)
        return 0; /* cfg_load read every key with the credentials the workers will have */
    errno = 0;
    if ((pw = getpwnam(set->user)) == NULL) {
        char why[300];
        snprintf(why, sizeof why, "run-as-user: unknown user '%s'", set->user);
        master_print_diag(dc, CFG_DIAG_ERROR, NULL, 0, why);
        return 1;
    }
    return master_check_keys_as_user(c, pw->pw_uid, pw->pw_gid, master_print_diag, dc);
}

/* --- the validator process (pmtad --validate-reload) ------------------------------------- */

/* test_fault - the test hook: FILE says "crash" or "hang" (absent or anything else: nothing) */
static void
test_fault(const char *file)
{
    char word[16] = "";
    FILE *f = file ? fopen(file, "re") : NULL;
    struct sigaction dfl;

    if (f == NULL)
        return;
    if (fgets(word, sizeof word, f) == NULL)
        word[0] = '\0';
    fclose(f);
    if (strncmp(word, "crash", 5) == 0) {
        memset(&dfl, 0, sizeof dfl);
        dfl.sa_handler = SIG_DFL;
        sigaction(SIGSEGV, &dfl, NULL);
        raise(SIGSEGV);
    }
    while (strncmp(word, "hang", 4) == 0)
        pause();
}

/* master_validate_main - see master.h */
int
master_validate_main(const struct master_validate_args *a)
{
    struct master_diag dc = { 1, 0, 0 };
    struct cfg *c;
    int err;

    test_fault(a->fault_file);
    if ((c = master_load_config(a->config_path, 1)) == NULL)
        return 1;
    if (a->drop_privileges && geteuid() == 0 &&
        master_check_keys_as_user(c, a->uid, a->gid, master_print_diag, &dc) != 0) {
        cfg_free(c);
        return 1;
    }
    err = master_write_snapshot_file(c, a->snapshot_path, a->generation, a->gid);
    cfg_free(c);
    return err < 0 ? 1 : 0;
}

/* --- the master's side -------------------------------------------------------------------- */

struct validation {
    struct master *m;
    uv_process_t process;
    uv_timer_t timer;
    uint64_t generation; /* the one it validates */
    char *snapshot;
    int timed_out;
    int pending_closes;
};

/* refuse - the reload is refused for WHY; the running generation carries on */
static void
refuse(struct master *m, struct validation *v, const char *why)
{
    msg_error("reload refused; keeping configuration generation %" PRIu64 ": %s", m->generation,
              why);
    unlink(v->snapshot);
}

/* accept_snapshot - the validator's snapshot becomes the configuration in force */
static void
accept_snapshot(struct master *m, struct validation *v)
{
    int err = 0;
    struct cfg *c = cfg_snapshot_map(v->snapshot, &err);

    if (c == NULL) {
        char why[200];
        snprintf(why, sizeof why, "the validated snapshot %s cannot be used: %s", v->snapshot,
                 err == -EPROTO ? "malformed" : strerror(-err));
        refuse(m, v, why);
        return;
    }
    if (c->generation != v->generation) {
        refuse(m, v, "the validated snapshot names another generation");
        cfg_free(c);
        return;
    }
    master_publish(m, c);
}

static void
validation_free(uv_handle_t *h)
{
    struct validation *v = h->data;

    if (--v->pending_closes > 0)
        return;
    free(v->snapshot);
    free(v);
}

static void
on_validator_exit(uv_process_t *proc, int64_t status, int term_signal)
{
    struct validation *v = proc->data;
    struct master *m = v->m;
    char why[200];

    uv_timer_stop(&v->timer);
    if (v->timed_out)
        snprintf(why, sizeof why, "the configuration validator did not finish within %u s",
                 m->validate_timeout_s);
    else if (term_signal)
        snprintf(why, sizeof why, "the configuration validator died of %s",
                 master_signal_name(term_signal));
    else if (status != 0)
        snprintf(why, sizeof why, "the configuration has errors (logged above)");
    if (v->timed_out || term_signal || status != 0)
        refuse(m, v, why);
    else if (!m->stopping)
        accept_snapshot(m, v);
    m->validation = NULL;
    uv_close((uv_handle_t *)&v->process, validation_free);
    uv_close((uv_handle_t *)&v->timer, validation_free);
    if (m->reload_again && !m->stopping) {
        m->reload_again = 0;
        master_reload(m);
    }
}

static void
on_validator_timeout(uv_timer_t *t)
{
    struct validation *v = t->data;

    v->timed_out = 1;
    uv_process_kill(&v->process, SIGKILL);
}

/* validator_args - argv of the validator for V */
static void
validator_args(struct master *m, struct validation *v, char **argv, size_t max)
{
    size_t n = 0;

    argv[n++] = xstrdup("pmtad");
    argv[n++] = xstrdup("--validate-reload");
    argv[n++] = xstrdup(v->snapshot);
    argv[n++] = xasprintf("--generation=%" PRIu64, v->generation);
    argv[n++] = xasprintf("--credentials=%ld:%ld:%d", (long)m->set.uid, (long)m->set.gid,
                          m->set.drop_privileges);
    if (msg_log_fd() >= 0)
        argv[n++] = xasprintf("--log-fd=%d", 3);
    if (m->validate_fault_file)
        argv[n++] = xasprintf("--test-validator-fault=%s", m->validate_fault_file);
    argv[n++] = xstrdup("-c");
    argv[n++] = xstrdup(m->set.config_path);
    if (n >= max)
        msg_panic("validator_args: too many arguments");
    argv[n] = NULL;
}

/* start_validator - spawn it for generation+1; 0 or a libuv error (logged) */
static int
start_validator(struct master *m)
{
    struct validation *v = xcalloc(1, sizeof(*v));
    uv_process_options_t opt;
    uv_stdio_container_t stdio[4];
    char *argv[16];
    int err;

    v->m = m;
    v->generation = m->generation + 1;
    v->snapshot = master_snapshot_path(m, v->generation);
    validator_args(m, v, argv, sizeof argv / sizeof argv[0]);
    memset(&opt, 0, sizeof(opt));
    memset(stdio, 0, sizeof(stdio));
    stdio[0].flags = UV_IGNORE;
    stdio[1].flags = UV_INHERIT_FD;
    stdio[1].data.fd = STDOUT_FILENO;
    stdio[2].flags = UV_INHERIT_FD;
    stdio[2].data.fd = STDERR_FILENO;
    stdio[3].flags = msg_log_fd() >= 0 ? UV_INHERIT_FD : UV_IGNORE;
    stdio[3].data.fd = msg_log_fd();
    opt.file = m->self_exe;
    opt.args = argv;
    opt.exit_cb = on_validator_exit;
    opt.stdio = stdio;
    opt.stdio_count = 4;
    v->process.data = v->timer.data = v;
    err = uv_spawn(&m->loop, &v->process, &opt);
    for (char **a = argv; *a; a++)
        free(*a);
    if (err != 0) {
        msg_error("reload refused; keeping configuration generation %" PRIu64
                  ": cannot start the configuration validator %s: %s",
                  m->generation, m->self_exe, uv_strerror(err));
        v->pending_closes = 1;
        uv_close((uv_handle_t *)&v->process, validation_free);
        return err;
    }
    v->pending_closes = 2;
    uv_timer_init(&m->loop, &v->timer);
    uv_timer_start(&v->timer, on_validator_timeout, (uint64_t)m->validate_timeout_s * 1000, 0);
    m->validation = v;
    return 0;
}

/* master_reload - SIGHUP: validate in a child; master_publish() if it succeeds */
void
master_reload(struct master *m)
{
    if (m->stopping)
        return;
    if (m->validation) {
        msg_info("reload requested while one is being validated: validating again after it");
        m->reload_again = 1;
        return;
    }
    msg_info("reloading configuration from %s (validating in a child process)", m->set.config_path);
    start_validator(m);
}

/* master_validation_stop - at shutdown: kill a validator still running */
void
master_validation_stop(struct master *m)
{
    m->reload_again = 0;
    if (m->validation)
        uv_process_kill(&m->validation->process, SIGKILL);
}
