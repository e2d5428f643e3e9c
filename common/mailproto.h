/*
 * mailproto.h - the internal messages of the mail path (smtpd -> cleanup -> qmgr)
 *
 * Frames use the format of ipc.h; this header fixes the types and the order
 * of their fields. Field lists read "name:kind" with kinds u32, u64, str, bytes.
 *
 * smtpd -> cleanup, over RUNDIR/private/cleanup (one connection per smtpd
 * process; transactions are multiplexed by the frame id, chosen by smtpd and
 * unique on that connection):
 *
 *   MP_TXN_BEGIN   id=txn
 *       client_ip:str client_port:u32 local_ip:str local_port:u32
 *       helo:str listener_source:str auth_user:str tls_protocol:str tls_cipher:str
 *       sender:str mail_flags:u32 envid:str declared_size:u64
 *     sender is "" for the null sender <>. mail_flags are MP_MAIL_*.
 *     listener_source is the smtp-listener's source= name ("" if none);
 *     "{pickup}" for the local sendmail socket.
 *   MP_TXN_RCPT    id=txn   address:str orcpt:str notify:u32   (one per recipient, in order)
 *   MP_TXN_DATA    id=txn   chunk:bytes   (message content, dot-unstuffed, at most MP_CHUNK_MAX)
 *   MP_TXN_END     id=txn   total_bytes:u64
 *   MP_TXN_ABORT   id=txn   (client went away or reset; cleanup forgets the transaction)
 *
 * cleanup -> smtpd:
 *   MP_TXN_RESULT  id=txn   code:u32 enhanced:str text:str msgid:u64
 *     Sent once per transaction after MP_TXN_END (or earlier, to refuse it:
 *     smtpd then discards the rest of the data and, after END, replies with it).
 *     code 250 means the message is in a committed, synced LMDB transaction;
 *     msgid is its queue id (0 otherwise).
 *
 * cleanup -> qmgr, over RUNDIR/private/qmgr:
 *   MP_QUEUE_NEW   id=0     msgid:u64
 *     A hint only: qmgr also finds new messages by scanning the queue, so a
 *     lost hint delays a message but never loses it.
 *
 * SECURITY: every string field has been validated by the sender (no CR, LF
 * or NUL; ipc.c enforces NUL-freedom) and is length-checked again by the
 * receiver; peer text never becomes a record separator.
 */
#ifndef PMTA_MAILPROTO_H
#define PMTA_MAILPROTO_H

#include "ipc.h"

#define MP_CHUNK_MAX (64 * 1024)

enum mp_type {
    MP_TXN_BEGIN = IPC_TYPE_USER,
    MP_TXN_RCPT,
    MP_TXN_DATA,
    MP_TXN_END,
    MP_TXN_ABORT,
    MP_TXN_RESULT,
    MP_QUEUE_NEW
};

/* mail_flags */
#define MP_MAIL_8BITMIME  0x01u
#define MP_MAIL_SMTPUTF8  0x02u
#define MP_MAIL_RET_FULL  0x04u
#define MP_MAIL_RET_HDRS  0x08u
#define MP_MAIL_BINARYMIME 0x10u

/* notify (RFC 3461); 0 means the client gave no NOTIFY */
#define MP_NOTIFY_NEVER   0x01u
#define MP_NOTIFY_SUCCESS 0x02u
#define MP_NOTIFY_FAILURE 0x04u
#define MP_NOTIFY_DELAY   0x08u

#endif
