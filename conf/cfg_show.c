/*
 * cfg_show.c - the effective settings of one queue as aligned text lines
 *
 * What `pmtad --show-settings DOMAIN[/VMTA]` and `pmtactl show settings`
 * print: every directive a <domain> block can hold, its effective value for
 * the queue and where it comes from (file:line, or "default"). Owns nothing;
 * reads a loaded configuration.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cfg.h"
#include "xalloc.h"

/* origin_text - "file:line", or "default" for a built-in value */
static void
origin_text(const struct cfg *c, const struct cfg_value *v, char *out, size_t outsize)
{
    if (v == NULL || v->file == 0)
        snprintf(out, outsize, "default");
    else
        snprintf(out, outsize, "%s:%" PRIu32, cfg_str(c, v->file), v->line);
}

/* print_settings - two passes: measure the columns, then print them aligned */
static void
print_settings(const struct cfg *c, const struct cfg_resolved *r, FILE *out)
{
    char value[512], origin[4096 + 32];
    size_t namew = 0, valuew = 0;

    for (int pass = 0; pass < 2; pass++) {
        for (int d = 0; d < CFG_D_COUNT; d++) {
            const struct cfg_directive_info *info = cfg_directive_info((enum cfg_directive)d);
            const struct cfg_value *v = r->v[d];

            if (info == NULL || !(info->scopes & CFG_IN(CFG_S_DOMAIN)))
                continue;
            if (v)
                cfg_format_value(c, v, value, sizeof(value));
            else
                snprintf(value, sizeof(value), "(unset)");
            origin_text(c, v, origin, sizeof(origin));
            if (pass == 0) {
                namew = strlen(info->name) > namew ? strlen(info->name) : namew;
                valuew = strlen(value) > valuew ? strlen(value) : valuew;
            } else {
                fprintf(out, "%-*s  %-*s  %s\n", (int)namew, info->name, (int)valuew, value,
                        origin);
            }
        }
        if (valuew > 40)
            valuew = 40; /* one long value must not push every origin off screen */
    }
}

/* cfg_show_settings - see cfg.h */
int
cfg_show_settings(const struct cfg *c, const char *queue, FILE *out, char *err, size_t errsize)
{
    char *domain = xstrdup(queue), *vmta = strchr(domain, '/');
    struct cfg_resolved *r = xcalloc(1, sizeof(*r));
    int rc = -1;

    if (vmta)
        *vmta++ = '\0';
    if (*domain == '\0')
        snprintf(err, errsize, "a queue is DOMAIN[/VMTA]");
    else if (cfg_resolve_queue(c, domain, vmta && *vmta ? vmta : NULL, r) != 0)
        snprintf(err, errsize, "unknown virtual-mta '%s'", vmta ? vmta : "");
    else {
        print_settings(c, r, out);
        rc = 0;
    }
    free(r);
    free(domain);
    return rc;
}
