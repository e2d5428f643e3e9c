/*
 * qmgr_monitor.h - the web monitor's page, its data and its actions (/ui on
 *                  http-mgmt-port); qmgr_http.c hands it every /ui request
 */
#ifndef PMTA_QMGR_MONITOR_H
#define PMTA_QMGR_MONITOR_H

#include <microhttpd.h>

#include "cfg.h"

/* qmgr_monitor_start - load the page's files and make a CSRF token; with the HTTP monitor */
void qmgr_monitor_start(void);
/* qmgr_monitor_stop - free the files */
void qmgr_monitor_stop(void);
/*
 * qmgr_monitor_request - answer a request for URL (under /ui) by METHOD from
 * a client that http-access grants LEVEL (at least CFG_HTTP_MONITOR)
 */
enum MHD_Result qmgr_monitor_request(struct MHD_Connection *conn, const char *url,
                                     const char *method, enum cfg_http_level level);

#endif
