/*
 * mailproto.h - the internal messages of the mail path (smtpd -> cleanup ->
 * qmgr <-> smtp-out)
 *
 * Frames use the format of ipc.h. Each message's number, fields, kinds, caps
 * and meaning are written once, in runtime/mailproto.def; this header expands
 * it (util/ipcdef.h): enum mp_type (MP_TXN_BEGIN, ...), the MP_* constants,
 * struct mp_<name>, mp_encode_<name>(), mp_decode_<name>(), mp_type_name().
 *
 * The connections:
 *   smtpd -> cleanup over RUNDIR/private/cleanup: one connection per smtpd
 *     process; transactions are multiplexed by the frame id, chosen by smtpd
 *     and unique on that connection. cleanup answers each with MP_TXN_RESULT.
 *   cleanup and smtp-out -> qmgr over RUNDIR/private/qmgr: every connection
 *     starts with MP_QMGR_HELLO naming its kind; qmgr closes one whose first
 *     frame is not a hello and takes from each kind only that kind's frames.
 *     qmgr owns every decision about outbound connections: it opens one for a
 *     queue on an smtp-out process, feeds it transactions one at a time and
 *     closes it (the frame id is the connection id, chosen by qmgr). That is
 *     how it enforces max-smtp-out, max-msg-per-connection, max-connect-rate
 *     and the message rates exactly.
 *
 * Decoded strings are copied into the struct (NUL-terminated, nothing to
 * free); bytes (MP_TXN_DATA's chunk, MP_CONN_TXN's indexes) are borrowed
 * from the frame until the frame's callback returns. A peer that sends a
 * malformed frame loses its connection (never the mail: its sender still
 * owns it).
 *
 * SECURITY: every string field is a "line" in the .def: the encoder refuses
 * and the decoder rejects (-EPROTO) NUL, CR, LF and anything over its cap, so
 * peer text never becomes a record separator.
 */
#ifndef PMTA_MAILPROTO_H
#define PMTA_MAILPROTO_H

#include "ipcdef.h"

#define IPCDEF_FILE    "mailproto.def"
#define IPCDEF_PREFIX  mp
#define IPCDEF_UPREFIX MP
#define IPCDEF_DECLARE
#include "ipcdef_expand.h"

#endif
