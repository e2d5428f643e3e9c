/*
 * fuzz_cfg_parse.c - fuzz target: the configuration parser (conf/cfg_parse.c)
 *
 * The input is a configuration file's bytes, loaded with cfg_load_buffer()
 * (any bytes: a NUL is reported, never trusted). Included and key files
 * come from the sandbox of fuzz_conf.h, never from the host. A configuration that loads is then
 * used as the workers use it (fuzz_conf_use()), so values the parser let
 * through are exercised by conf/cfg_resolve.c and conf/cfg_value.c too.
 *
 * Checked beyond the sanitizers: every diagnostic names a file and a line
 * and says something, and a load returns a configuration exactly when it
 * reported no error.
 */
#include <stdio.h>

#include "cfg.h"
#include "fuzz.h"
#include "fuzz_conf.h"

static unsigned diag_errors;

static void
on_diag(void *ctx, enum cfg_diag_level level, const char *file, unsigned line, const char *message)
{
    (void)ctx;
    FUZZ_CHECK(file != NULL && *file && line >= 1);
    FUZZ_CHECK(message != NULL && *message);
    if (level == CFG_DIAG_ERROR)
        diag_errors++;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int init;
    struct cfg *c;
    unsigned nerrors = 0;
    char name[512];

    if (!init++)
        fuzz_quiet_logs();
    diag_errors = 0;
    snprintf(name, sizeof name, "%s/fuzz.conf", fuzz_conf_sandbox());
    fuzz_conf_enter();
    c = cfg_load_buffer(name, (const char *)data, size, on_diag, NULL, &nerrors);
    fuzz_conf_leave();
    FUZZ_CHECK((c != NULL) == (diag_errors == 0) && (nerrors == 0) == (diag_errors == 0));
    if (c)
        fuzz_conf_use(c);
    cfg_free(c);
    return 0;
}
