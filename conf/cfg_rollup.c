/*
 * cfg_rollup.c - which MX rollup an MX host belongs to: the <mx-rollup-list>
 * lines, then the built-in list
 *
 * A domain whose most preferred MX hosts are a mailbox provider's shares one
 * queue per virtual MTA with every other such domain (qmgr_rollup.c): one
 * connection budget, one rate and one backoff mode, as the provider counts
 * them. The built-in entries cover the providers whose MX names say who they
 * are, so rollup works with no configuration; configured lines come first
 * and may use the same names to add hosts, or other names to split them.
 * `disable-mx-rollup yes` in a <domain> opts that domain out of both.
 *
 * Owns nothing. SECURITY: MX names come from DNS (bounded by smtp-out/mxdns.c);
 * they are only matched with fnmatch(3).
 */
#include <fnmatch.h>
#include <stddef.h>

#include "cfg.h"

/* Built-in entries (KumoMTA's "sites" do the same by MX set). */
static const struct {
    const char *pattern, *name;
} builtin[] = {
    { "*.google.com", "google.rollup" },                  /* aspmx.l.google.com, smtp.google.com */
    { "*.googlemail.com", "google.rollup" },              /* aspmx2.googlemail.com */
    { "*.olc.protection.outlook.com", "outlook.rollup" }, /* outlook.com, hotmail, live */
    { "*.mail.protection.outlook.com", "office365.rollup" }, /* Microsoft 365 tenants */
    { "*.yahoodns.net", "yahoo.rollup" }, /* Yahoo, AOL (mx-aol.mail.gm0.yahoodns.net) */
};

/* cfg_mx_rollup - see cfg.h */
const char *
cfg_mx_rollup(const struct cfg *c, const char *mx)
{
    uint32_t it = 0, s;

    while (c && (s = cfg_next_scope(c, CFG_S_MX_ROLLUP_LIST, &it)) != CFG_NONE) {
        const struct cfg_value *v;
        uint32_t vit = 0;

        while ((v = cfg_scope_next(c, s, CFG_D_MX, &vit)) != NULL)
            if (v->type == CFG_T_MX_ROLLUP &&
                fnmatch(cfg_str(c, v->rollup.pattern), mx, FNM_CASEFOLD) == 0)
                return cfg_str(c, v->rollup.name);
    }
    for (size_t i = 0; i < sizeof builtin / sizeof builtin[0]; i++)
        if (fnmatch(builtin[i].pattern, mx, FNM_CASEFOLD) == 0)
            return builtin[i].name;
    return NULL;
}
