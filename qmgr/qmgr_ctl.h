/*
 * qmgr_ctl.h - the JSON views of qmgr's state that the control socket
 *              (qmgr_ctl.c) and the HTTP monitor (qmgr_http.c) both serve
 */
#ifndef PMTA_QMGR_CTL_H
#define PMTA_QMGR_CTL_H

#include <jansson.h>

#include "qmgr.h"

/* qmgr_ctl_stamp - "2026-11-27 20:41:05+0000" for unix seconds WALL, into OUT */
const char *qmgr_ctl_stamp(char out[32], uint64_t wall);
/* qmgr_ctl_status_json - totals: recipients, messages, queues, connections, outcomes */
json_t *qmgr_ctl_status_json(void);
/* qmgr_ctl_queue_json - one queue: mode, pause, counts, retry, last error, mode events, and
 * for a rollup or queue-to queue its kind and member domains */
json_t *qmgr_ctl_queue_json(struct qqueue *q);
/* qmgr_ctl_queue_listed - is Q listed (not an empty domain queue whose mail joins another)? */
int qmgr_ctl_queue_listed(const struct qqueue *q);

/*
 * qmgr_ctl_dispatch - run one control request ({"cmd": NAME, ...}, as the
 * control socket takes it) and return its reply ({"ok": ...}); the web
 * monitor's actions go through here too
 */
json_t *qmgr_ctl_dispatch(json_t *req);
/* qmgr_ctl_delete - "delete" with its filters (qmgr_ctl_rcpt.c) */
json_t *qmgr_ctl_delete(json_t *req);
/* qmgr_ctl_rcpt_dispatch - list, show-jobs, pause-job, resume-job (qmgr_ctl_rcpt.c); NULL: not
 * one of them */
json_t *qmgr_ctl_rcpt_dispatch(const char *cmd, json_t *req);
/* qmgr_ctl_ops_dispatch - reset-counters, disable-/enable-source, rotate-acct (qmgr_ctl_ops.c);
 * NULL: not one of them */
json_t *qmgr_ctl_ops_dispatch(const char *cmd, json_t *req);

/* A client of the control socket (qmgr_ctl.c owns it). */
struct ctl_client;
/* qmgr_ctl_client_send - one more line (REPLY, consumed) to CLIENT: a trace's live lines */
void qmgr_ctl_client_send(struct ctl_client *client, json_t *reply);

/* qmgr_trace_request - {"cmd":"trace",...} of CLIENT: its first reply; the trace lines follow
 * (qmgr_trace.c) */
json_t *qmgr_trace_request(struct ctl_client *client, json_t *req);
/* qmgr_trace_client_gone - CLIENT closed: its traces are forgotten */
void qmgr_trace_client_gone(struct ctl_client *client);

#endif
