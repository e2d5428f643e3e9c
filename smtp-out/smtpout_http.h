/*
 * smtpout_http.h - `type http-delivery`: one HTTP POST per recipient with
 *                  libcurl on the worker's libuv loop (contract in
 *                  smtpout_local.h; this is its http part)
 *
 * All channels of the process share one curl multi handle, so keep-alive
 * connections to an endpoint are reused across smtp-out connections.
 */
#ifndef PMTA_SMTPOUT_HTTP_H
#define PMTA_SMTPOUT_HTTP_H

#include <stddef.h>
#include <uv.h>

#include "cfg.h"
#include "smtpout_proto.h"

struct smtpout_http;

typedef void (*smtpout_http_result_fn)(void *arg, const struct smtpout_reply *r);

/*
 * smtpout_http_new - a channel posting to the queue's http-delivery-url;
 * NULL and the reason in WHY when the URL is missing or not one we accept
 */
struct smtpout_http *smtpout_http_new(uv_loop_t *loop, const struct cfg *c,
                                      const struct cfg_resolved *set, smtpout_http_result_fn fn,
                                      void *arg, char *why, size_t whysize);
/* smtpout_http_host - the URL's host (for MP_CONN_UP and dsnMta) */
const char *smtpout_http_host(const struct smtpout_http *h);
/*
 * smtpout_http_start - POST message M for recipient I; 0 (the result comes
 * through FN), or 1 when it failed at once (reply in R)
 */
int smtpout_http_start(struct smtpout_http *h, const struct smtpout_message *m, size_t i,
                       struct smtpout_reply *r);
/* smtpout_http_cancel - drop the running request; FN gets a temporary failure now */
void smtpout_http_cancel(struct smtpout_http *h);
void smtpout_http_free(struct smtpout_http *h);
/* smtpout_http_status - the reply for an HTTP STATUS (0: transport error ERRTEXT) */
void smtpout_http_status(struct smtpout_reply *r, long status, const char *errtext,
                         const char *url);
/* smtpout_http_shutdown - free the process's curl state (no channel may be left) */
void smtpout_http_shutdown(void);

#endif
