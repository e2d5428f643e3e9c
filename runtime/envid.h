/*
 * envid.h - the tracking envelope id: the RFC 3461 ENVID smtp-out sends on
 * mail whose client gave none, so that a remote DSN leads back to the
 * message, its virtual MTA and its job
 *
 * A remote MTA that accepted a message and cannot deliver it later sends a
 * DSN; when we gave it an ENVID it returns that id as the DSN's
 * Original-Envelope-Id (RFC 3464 2.2.1), whatever else it keeps of the
 * message. The <bounce-processor> (qmgr_reportproc.c) reads the job and the
 * virtual MTA back from it; the X-Job and X-Virtual-MTA header fields of the
 * returned original only come back when outgoing mail keeps them
 * (retain-x-job, add-x-virtual-mta-header) and the remote returns headers.
 *
 * The format, defined here only:
 *
 *     opmta1.QID.N.VMTA.JOB
 *
 *     QID   the queue id, QSTORE_QID_LEN upper-case hex digits (as logged)
 *     N     the length of VMTA in decimal (virtual MTA names may hold dots)
 *     VMTA  the virtual MTA the transaction went out through ("{default}")
 *     JOB   the job id, possibly empty; the rest of the id
 *
 * e.g. "opmta1.0000000000000000002A.2.v1.job-42". RFC 3461 caps ENVID at
 * 100 characters: a job that does not fit is left out (the field is empty);
 * when the virtual MTA does not fit either, no id is made. VMTA and JOB
 * hold printable ASCII other than '+' and '=' only (what xtext, the ENVID
 * encoding, leaves as it is), so the id reads the same encoded or decoded;
 * a field with other characters is left empty.
 *
 * SECURITY: envid_track_parse reads remote text (a DSN's field): it checks
 * every length before the offset it guards and copies only bounded,
 * printable fields. The values still reach records through their writers.
 */
#ifndef PMTA_ENVID_H
#define PMTA_ENVID_H

#include <stddef.h>

#define ENVID_MAX         100 /* RFC 3461 4.4 */
#define ENVID_TRACK_FIELD 100 /* a field of a parsed id is shorter than the id */

struct envid_track {
    char qid[ENVID_TRACK_FIELD + 1];
    char vmta[ENVID_TRACK_FIELD + 1];
    char job[ENVID_TRACK_FIELD + 1]; /* "" when it was left out */
};

/*
 * envid_track_make - the id of a message with queue id QID sent through VMTA
 * with job JOB (NULL or "" for none) into OUT (ENVID_MAX + 1 bytes at
 * least): its length, or -EINVAL when QID or VMTA cannot be carried (then
 * OUT is "" and no ENVID is sent).
 */
int envid_track_make(char *out, size_t size, const char *qid, const char *vmta, const char *job);

/*
 * envid_track_parse - TEXT (LEN bytes, a DSN's Original-Envelope-Id) as a
 * tracking id: 0 with T filled, or -EINVAL when it is not one of ours (a
 * client's own ENVID, or garbage).
 */
int envid_track_parse(const char *text, size_t len, struct envid_track *t);

#endif
