/*
 * qstore_qid.c - the text form of a queue id, the one spelling every log
 * line, reply and header uses (qstore.h, MESSAGE IDS)
 *
 * Its own file so that programs which never open the queue (smtpd) can
 * spell ids without linking LMDB. Owns nothing.
 */
#include "config.h"

#include "qstore.h"

void
qstore_qid_format(char out[QSTORE_QID_LEN + 1], uint64_t msgid)
{
    static const char hex[] = "0123456789ABCDEF";

    for (int i = QSTORE_QID_LEN - 1; i >= 0; i--, msgid >>= 4)
        out[i] = hex[msgid & 0xf];
    out[QSTORE_QID_LEN] = '\0';
}
