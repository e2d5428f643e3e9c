/*
 * fuzz_conf.h - what the configuration fuzz targets share (fuzz/fuzz_conf.c)
 *
 * The sandbox: the parser opens the files a configuration names (include,
 * DKIM key files). Targets that load configurations are linked with
 * -Wl,--wrap=open -Wl,--wrap=glob; between fuzz_conf_enter() and
 * fuzz_conf_leave() a private temporary directory acts as the root of the
 * file system for those calls: "/x" and a relative "x" both mean
 * SANDBOX/x, and nothing outside it can be reached (not even with "..").
 * It holds inc.conf, sub/a.conf, sub/b.conf, loop.conf, patterns.conf,
 * etc/pmta/dkim.key and etc/pmta/invalid.key (copies of t/data/dkim/'s,
 * found through $PMTA_SRCDIR or the source directory the build was
 * configured in), so inputs can include files and name key files without
 * ever reading the host's files, and a glob over the whole disk costs
 * nothing. It is removed at exit.
 *
 * fuzz_conf_use() does with a configuration what the workers do: resolve
 * every queue and session its blocks name, show settings, format every
 * value, read every typed record (reply patterns, domain keys, ...), parse
 * smtp-hosts routes, look up http-access; it reads every string it is
 * handed.
 */
#ifndef PMTA_FUZZ_CONF_H
#define PMTA_FUZZ_CONF_H

#include "cfg.h"

/* fuzz_conf_sandbox - the sandbox directory (created on the first call) */
const char *fuzz_conf_sandbox(void);
/* fuzz_conf_enter, fuzz_conf_leave - bracket a load: only the sandbox exists */
void fuzz_conf_enter(void);
void fuzz_conf_leave(void);
/* fuzz_conf_use - exercise C as the workers would */
void fuzz_conf_use(const struct cfg *c);

#endif
