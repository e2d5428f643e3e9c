/*
 * qmgr_http.h - answers of the HTTP monitor, shared by its JSON pages
 *               (qmgr_http.c) and the web page (qmgr_monitor.c)
 */
#ifndef PMTA_QMGR_HTTP_H
#define PMTA_QMGR_HTTP_H

#include <jansson.h>
#include <microhttpd.h>

/*
 * qmgr_http_respond - queue an answer: STATUS, Content-Type TYPE, LEN bytes of
 * BODY (MHD_RESPMEM_MUST_FREE: ours to free, also on failure; PERSISTENT:
 * lives as long as qmgr), never cached, with headers that keep browsers from
 * sniffing types, framing the page or loading anything from elsewhere
 */
enum MHD_Result qmgr_http_respond(struct MHD_Connection *conn, unsigned status, const char *type,
                                  const void *body, size_t len, enum MHD_ResponseMemoryMode mode);
/* qmgr_http_respond_json - BODY (consumed) as one JSON document */
enum MHD_Result qmgr_http_respond_json(struct MHD_Connection *conn, unsigned status, json_t *body);
/* qmgr_http_respond_error - {"error": TEXT} */
enum MHD_Result qmgr_http_respond_error(struct MHD_Connection *conn, unsigned status,
                                        const char *text);

#endif
