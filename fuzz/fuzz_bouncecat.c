/*
 * fuzz_bouncecat.c - fuzz target: bounce categories (qmgr/qmgr_bouncecat.c)
 *
 * Remote reply text decides the accounting file's bounceCat through PCRE2
 * patterns: the built-in list and a configured <bounce-category-patterns>
 * block (fixed here; patterns are operator input, replies are not). The
 * input is classified as a whole status text (NUL ends it), and, when it
 * holds a NUL, as "enhanced status" NUL "reply" through
 * qmgr_bouncecat_classify_reply().
 *
 * Checked beyond the sanitizers: a category always comes back and is one
 * the lists define; the match budget keeps each input fast (libFuzzer's
 * -timeout catches a pattern that backtracks without bound).
 */
#include <string.h>

#include "cfg.h"
#include "fuzz.h"
#include "qmgr_bouncecat.h"

static const char configured[] = "<bounce-category-patterns>\n"
                                 "    /policy reasons/ policy-related\n"
                                 "    /(a|aa)+$/ routing-errors\n"
                                 "    /^4\\.4\\.[0-9]+ / no-answer-from-host\n"
                                 "</bounce-category-patterns>\n";

static const char *const categories[] = { "spam-related",
                                          "virus-related",
                                          "content-related",
                                          "quota-issues",
                                          "inactive-mailbox",
                                          "bad-mailbox",
                                          "bad-domain",
                                          "bad-connection",
                                          "bad-configuration",
                                          "no-answer-from-host",
                                          "routing-errors",
                                          "protocol-errors",
                                          "policy-related",
                                          "message-expired",
                                          "relaying-issues",
                                          "invalid-sender",
                                          "success",
                                          "other",
                                          NULL };

static void
check_category(const char *cat)
{
    FUZZ_CHECK(cat != NULL);
    for (const char *const *c = categories; *c; c++)
        if (strcmp(*c, cat) == 0)
            return;
    fprintf(stderr, "unknown category '%s'\n", cat);
    FUZZ_CHECK(!"a category the lists define");
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct qmgr_bouncecat *bc;
    const char *nul;
    char *text;

    if (bc == NULL) {
        struct cfg *c;

        fuzz_quiet_logs();
        c = cfg_load_string("bouncecat.conf", configured, NULL, NULL, NULL);
        FUZZ_CHECK(c != NULL);
        bc = qmgr_bouncecat_new(c);
        FUZZ_CHECK(qmgr_bouncecat_configured(bc) == 3);
        cfg_free(c);
    }
    if ((text = malloc(size + 1)) == NULL)
        abort();
    memcpy(text, data, size);
    text[size] = 0;
    check_category(qmgr_bouncecat_classify(bc, text));
    if ((nul = memchr(data, 0, size)) != NULL)
        check_category(
            qmgr_bouncecat_classify_reply(bc, text, text + (nul - (const char *)data) + 1));
    free(text);
    return 0;
}
