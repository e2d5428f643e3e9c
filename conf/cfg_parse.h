/*
 * cfg_parse.h - internals shared by the conf/ modules (not a public API)
 *
 * Owns nothing; declares the helpers cfg_directive.c, cfg_value.c,
 * cfg_parse.c, cfg_resolve.c and cfg_snapshot.c call in each other. Names
 * with a double underscore are private to conf/.
 */
#ifndef PMTA_CFG_PARSE_H
#define PMTA_CFG_PARSE_H

#include <stdint.h>
#include <stddef.h>

#include "cfg.h"

#define CFG_LINE_MAX      65536 /* bytes per logical line */
#define CFG_MAX_ERRORS    100   /* stop reporting (and parsing) after this many */
#define CFG_INCLUDE_DEPTH 16
#define CFG_LIST_MAX      64 /* elements of an interval list */

/* cfg__scope_kind_name - "global level", "<domain>", ... for messages */
const char *cfg__scope_kind_name(enum cfg_scope_kind kind);
/* cfg__scope_tag - tag word of KIND ("domain"), NULL for the global scope */
const char *cfg__scope_tag(enum cfg_scope_kind kind);
/* cfg__scopes_text - "<domain>, <source>" list of the scopes in MASK into OUT */
char *cfg__scopes_text(uint32_t mask, char *out, size_t outsize);
/* cfg__enum_words - '|'-separated words of an ENUM directive, NULL otherwise */
const char *cfg__enum_words(enum cfg_directive d);
/* cfg__enum_index - index of WORD in D's enum list, or -1 */
int cfg__enum_index(enum cfg_directive d, const char *word);
/* cfg__enum_word - the INDEXth word of D's list copied into OUT */
char *cfg__enum_word(enum cfg_directive d, int64_t index, char *out, size_t outsize);
/* cfg__range - numeric bounds of an INT directive; 0 if it has none */
int cfg__range(enum cfg_directive d, int64_t *min, int64_t *max);
/* cfg__directive_known - is NAME a directive (or alias) in any scope? mask of its scopes */
uint32_t cfg__directive_scopes(const char *name);

/* cfg__parse_addr - IPv4/IPv6 address or CIDR ("0/0", "10.0.0.0/8", "::1");
 * fills family, prefix and the network address (host bits cleared). 0 or -EINVAL */
int cfg__parse_cidr(const char *s, uint8_t *family, uint8_t *prefix, uint8_t addr[16]);
/* cfg__cidr_contains - does the network contain address ADDR of FAMILY? */
int cfg__cidr_contains(uint8_t family, uint8_t prefix, const uint8_t net[16], int addr_family,
                       const uint8_t *addr);

/* --- the load in progress (cfg_parse.c) and the value checks (cfg_check.c) --- */

struct cfg_builder;

/* cfg__error - an error at the line being read */
void cfg__error(struct cfg_builder *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* cfg__warning - a warning at the line being read */
void cfg__warning(struct cfg_builder *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* cfg__intern - copy S into the string pool; its offset */
uint32_t cfg__intern(struct cfg_builder *b, const char *s);
/* cfg__add_xref - NAME must denote a block of one of KINDS once the whole file is read */
void cfg__add_xref(struct cfg_builder *b, uint32_t kinds, const char *name, const char *what);
/* cfg__trim - S without leading and trailing blanks (in place) */
char *cfg__trim(char *s);
/* cfg__next_word - split off the first blank-separated word of *P (NUL-terminates it) */
char *cfg__next_word(char **p);
/* cfg__clip - printable, bounded copy of S for a message; returns OUT */
const char *cfg__clip(const char *s, char *out, size_t outsize);
/* cfg__check_hostport - "ADDR:PORT" (ADDR an address, a CIDR like 0/0, or [IPv6]); 0 or -1 */
int cfg__check_hostport(struct cfg_builder *b, const char *what, const char *text, int need_port);
/* cfg__decode_record - a structured type's TEXT (SCRATCH a copy to cut up) into V's record
 * (and a dkim-key-file's key type into V->num); 0, or -1 after reporting why */
int cfg__decode_record(struct cfg_builder *b, enum cfg_directive d, char *scratch, const char *text,
                       struct cfg_value *v);
/* cfg__check_value - what D's type cannot express (WORDS grammars, cross references, keys) */
int cfg__check_value(struct cfg_builder *b, enum cfg_directive d, char *arg, const char *text);

/* struct cfg.owner: heap arrays after cfg_load, or a mapping after cfg_snapshot_map */
#define CFG_OWNER_HEAP 0x50414548u
#define CFG_OWNER_MAP  0x2050414du

struct cfg_heap {
    uint32_t owner_kind; /* CFG_OWNER_HEAP */
    struct cfg_scope *scopes;
    struct cfg_value *values;
    int64_t *ints;
    char *strings;
};

struct cfg_map {
    uint32_t owner_kind; /* CFG_OWNER_MAP */
    void *base;
    size_t len;
};

#endif
