/*
 * mailproto.c - encoders, decoders and the name table of runtime/mailproto.def
 *
 * Owns nothing; everything here is expanded from the .def (util/ipcdef.h).
 */
#include <errno.h>

#include "mailproto.h"

#define IPCDEF_FILE    "mailproto.def"
#define IPCDEF_PREFIX  mp
#define IPCDEF_UPREFIX MP
#define IPCDEF_DEFINE
#include "ipcdef_expand.h"
