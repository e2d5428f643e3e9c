/*
 * ipcdef.h - protocols written down once, as data, over the frames of ipc.h
 *
 * A protocol is a .def file (util/ctlproto.def, runtime/mailproto.def) that
 * lists each message with its explicit type number and its fields in wire
 * order, each with a kind and, for strings and bytes, a length cap:
 *
 *     IPCDEF_CONST(MP_CHUNK_MAX, 65536)
 *     IPCDEF_MSG(TXN_DATA, txn_data, 102)
 *         F_BYTES(chunk, MP_CHUNK_MAX)
 *     IPCDEF_END
 *
 * Kinds: F_U32(name), F_U64(name), F_STR(name, cap) (no NUL), F_LINE(name,
 * cap) (no NUL, CR or LF), F_BYTES(name, cap). A cap is a number or an
 * IPCDEF_CONST of the same file. The Python test peers read the same file
 * (t/lib/pmtaipc.py), so the numbers exist once.
 *
 * ipcdef_expand.h turns a .def into C: for prefix "mp", an enum of MP_<NAME>
 * types, the constants, one struct mp_<name> per message, and
 *
 *     int mp_encode_<name>(struct buf *out, uint32_t id, const struct mp_<name> *msg);
 *     int mp_decode_<name>(struct ipc_msg *m, struct mp_<name> *msg);
 *     const char *mp_type_name(unsigned type);
 *
 * Encoding appends one frame to OUT: 0, -EMSGSIZE (a field over its cap, or
 * the frame over IPC_FRAME_MAX) or -EINVAL (a NUL in a string, CR or LF in a
 * line); on failure OUT is left as it was. MSG may be NULL for a message
 * without fields, and a NULL string is sent as "".
 *
 * Decoding checks the type, then every field's kind, length and cap, then
 * that nothing trails: any failure is -EPROTO. Ownership rule: strings are
 * COPIED into the struct's own storage (NUL-terminated, valid as long as the
 * struct, nothing to free; do not copy a decoded struct by value, its
 * pointers point into itself); bytes fields are BORROWED from the frame
 * (valid until the frame's callback returns).
 *
 * Owns nothing; the field helpers below are what the expansion calls.
 *
 * SECURITY: the decoders are the boundary between processes that may be
 * compromised independently: lengths are checked before bytes are touched
 * (ipc.c) and against the cap before anything is copied.
 */
#ifndef PMTA_IPCDEF_H
#define PMTA_IPCDEF_H

#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "ipc.h"

/* What a string field may not contain. */
enum ipcdef_text { IPCDEF_TEXT_STR = 0, IPCDEF_TEXT_LINE = 1 };

/* ipcdef_put_text - a string field of at most CAP bytes; 0, -EMSGSIZE or -EINVAL */
int ipcdef_put_text(struct buf *out, const char *s, size_t cap, enum ipcdef_text rule);
/* ipcdef_put_bytes - a bytes field of at most CAP bytes; 0 or -EMSGSIZE */
int ipcdef_put_bytes(struct buf *out, const uint8_t *p, size_t len, size_t cap);
/* ipcdef_finish - end the frame begun at OFFSET, or undo it when ERR (or it is too big) */
int ipcdef_finish(struct buf *out, size_t offset, int err);

/* ipcdef_get_text - copy a string field of at most CAP bytes into DST[CAP + 1]; 0 or -EPROTO */
int ipcdef_get_text(struct ipc_msg *m, char *dst, size_t cap, enum ipcdef_text rule);
/* ipcdef_get_bytes - borrow a bytes field of at most CAP bytes; 0 or -EPROTO */
int ipcdef_get_bytes(struct ipc_msg *m, const uint8_t **p, size_t *len, size_t cap);

/*
 * What a .def says, dispatched to the stage being expanded: an includer sets
 * IPCDEF_STAGE to a prefix P and defines P_CONST, P_MSG, P_END, P_U32, P_U64,
 * P_STR, P_LINE and P_BYTES, then includes the .def (ipcdef_expand.h does
 * this once per thing it generates; a test may add stages of its own).
 */
#define IPCDEF_PASTE_(a, b)       a##b
#define IPCDEF_PASTE(a, b)        IPCDEF_PASTE_(a, b)
#define IPCDEF_PASTE3(a, b, c)    IPCDEF_PASTE(IPCDEF_PASTE(a, b), c)
#define IPCDEF_CONST(name, value) IPCDEF_PASTE(IPCDEF_STAGE, _CONST)(name, value)
#define IPCDEF_MSG(UP, low, num)  IPCDEF_PASTE(IPCDEF_STAGE, _MSG)(UP, low, num)
#define IPCDEF_END                IPCDEF_PASTE(IPCDEF_STAGE, _END)
#define F_U32(n)                  IPCDEF_PASTE(IPCDEF_STAGE, _U32)(n)
#define F_U64(n)                  IPCDEF_PASTE(IPCDEF_STAGE, _U64)(n)
#define F_STR(n, cap)             IPCDEF_PASTE(IPCDEF_STAGE, _STR)(n, cap)
#define F_LINE(n, cap)            IPCDEF_PASTE(IPCDEF_STAGE, _LINE)(n, cap)
#define F_BYTES(n, cap)           IPCDEF_PASTE(IPCDEF_STAGE, _BYTES)(n, cap)

#endif
