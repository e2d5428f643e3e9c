/*
 * ctlproto.h - the control protocol between pmtad and its workers, expanded
 * from util/ctlproto.def (types CTL_*, struct ctl_*, ctl_encode_*,
 * ctl_decode_*, ctl_type_name; rules in ipcdef.h).
 *
 * Owns nothing.
 */
#ifndef PMTA_CTLPROTO_H
#define PMTA_CTLPROTO_H

#include "ipcdef.h"

#define IPCDEF_FILE    "ctlproto.def"
#define IPCDEF_PREFIX  ctl
#define IPCDEF_UPREFIX CTL
#define IPCDEF_DECLARE
#include "ipcdef_expand.h"

#endif
