/*
 * ctlproto.c - encoders, decoders and the name table of util/ctlproto.def
 *
 * Owns nothing; everything here is expanded from the .def (ipcdef.h).
 */
#include <errno.h>

#include "ctlproto.h"

#define IPCDEF_FILE    "ctlproto.def"
#define IPCDEF_PREFIX  ctl
#define IPCDEF_UPREFIX CTL
#define IPCDEF_DEFINE
#include "ipcdef_expand.h"
