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
 *     smtpd then stops sending DATA, still sends END (or ABORT), which
 *     cleanup needs to forget the transaction, and replies with it).
 *     code 250 means the message is in a committed, synced LMDB transaction;
 *     msgid is its queue id (0 otherwise).
 *
 * cleanup -> qmgr, over RUNDIR/private/qmgr:
 *   MP_QUEUE_NEW   id=0     msgid:u64
 *     A hint only: qmgr also finds new messages by scanning the queue, so a
 *     lost hint delays a message but never loses it.
 *
 * qmgr <-> smtp-out, over RUNDIR/private/qmgr (each smtp-out process connects
 * and says MP_OUT_HELLO first; cleanup's connections start with MP_QUEUE_NEW).
 * qmgr owns every decision about connections: it opens a connection for a
 * queue, feeds it transactions one at a time, and closes it. That is how it
 * enforces max-smtp-out, max-msg-per-connection, max-connect-rate and the
 * message rates exactly. The frame id is the connection id, chosen by qmgr.
 *
 *   MP_OUT_HELLO    id=0     pid:u32 max_connections:u32                    (smtp-out -> qmgr)
 *   MP_CONN_OPEN    id=conn  queue:str domain:str vmta:str source_ip:str helo:str
 *                            config_generation:u64                          (qmgr -> smtp-out)
 *     smtp-out resolves routing (smtp-hosts, MX, A) and the queue's delivery
 *     settings itself from the configuration snapshot (cfg_resolve_queue).
 *   MP_CONN_TXN     id=conn  msgid:u64 indexes:bytes                        (qmgr -> smtp-out)
 *     One transaction: the recipients (u32 big-endian each) of message msgid.
 *     qmgr may send the first one right after MP_CONN_OPEN; smtp-out queues it
 *     until the connection is ready. smtp-out reads the message from the queue.
 *   MP_CONN_CLOSE   id=conn                                                 (qmgr -> smtp-out)
 *   MP_CONN_UP      id=conn  mx:str dest_ip:str source_ip:str tls:str esmtp:str (smtp-out -> qmgr)
 *     Connected, greeted, EHLO done (tls is "" or "TLSv1.3 CIPHER").
 *   MP_RCPT_RESULT  id=conn  msgid:u64 index:u32 result:u32 code:u32 enhanced:str text:str
 *     result is MP_RESULT_*; text is the remote reply (or our own reason),
 *     sanitized and at most 512 bytes.
 *   MP_TXN_DONE     id=conn  msgid:u64                   (every recipient of the txn has a result)
 *   MP_CONN_IDLE    id=conn  (ready for the next MP_CONN_TXN, or MP_CONN_CLOSE)
 *   MP_CONN_DOWN    id=conn  result:u32 code:u32 enhanced:str text:str mx:str dest_ip:str
 *     The connection is gone (failed to connect, greeting refused, dropped,
 *     closed after MP_CONN_CLOSE: result MP_RESULT_OK). Recipients of
 *     transactions without MP_TXN_DONE get this result.
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
    MP_QUEUE_NEW,
    MP_OUT_HELLO,
    MP_CONN_OPEN,
    MP_CONN_TXN,
    MP_CONN_CLOSE,
    MP_CONN_UP,
    MP_RCPT_RESULT,
    MP_TXN_DONE,
    MP_CONN_IDLE,
    MP_CONN_DOWN
};

/* delivery results */
#define MP_RESULT_OK       0u /* delivered (2xx) */
#define MP_RESULT_TEMPFAIL 1u /* try again later (4xx, timeouts, connection trouble) */
#define MP_RESULT_PERMFAIL 2u /* bounce (5xx, no such domain, 8-bit refused) */

/* mail_flags */
#define MP_MAIL_8BITMIME   0x01u
#define MP_MAIL_SMTPUTF8   0x02u
#define MP_MAIL_RET_FULL   0x04u
#define MP_MAIL_RET_HDRS   0x08u
#define MP_MAIL_BINARYMIME 0x10u

/* notify (RFC 3461); 0 means the client gave no NOTIFY */
#define MP_NOTIFY_NEVER   0x01u
#define MP_NOTIFY_SUCCESS 0x02u
#define MP_NOTIFY_FAILURE 0x04u
#define MP_NOTIFY_DELAY   0x08u

#endif
