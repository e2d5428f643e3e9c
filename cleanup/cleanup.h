/*
 * cleanup.h - the cleanup worker's internal interfaces (not a library)
 *
 * The worker is split by concern; this header is what the parts share:
 *
 *   cleanup.c         main, process state, reload, shutdown, queue open/close
 *   cleanup_conf.c    what one configuration generation means to cleanup:
 *                     DKIM key lists, compiled <pattern-list>s, pool turns,
 *                     a transaction's <source> settings
 *   cleanup_server.c  the private/cleanup socket: connections from smtpd,
 *                     frames (runtime/mailproto.h), transactions
 *   cleanup_route.c   the choice of the virtual MTA (precedence, pools)
 *   cleanup_commit.c  END: header work, DKIM, queue names, envelope, the
 *                     grouped commit and the answer
 *   cleanup_notify.c  MP_QUEUE_NEW hints to qmgr
 *   cleanup_space.c   how much the queue can still take; MP_QUEUE_SPACE to smtpd
 *
 * Lifetimes: a transaction pins the cleanup_conf it started on (which pins
 * its configuration generation), so a reload never changes a transaction
 * half-way. A connection outlives its channel while commits of its
 * transactions are running (reference counted), so a commit callback never
 * touches freed memory.
 *
 * SECURITY: everything a transaction holds (envelope strings, recipients,
 * message bytes) came from smtpd, which took it from the network: bounded on
 * the way in (cleanup_server.c) and never used as a format string.
 */
#ifndef PMTA_CLEANUP_H
#define PMTA_CLEANUP_H

#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "buf.h"
#include "cfg.h"
#include "cleanup_dkim.h"
#include "cleanup_message.h"
#include "ipc.h"
#include "qstore.h"
#include "qstore_group.h"

/* Internal ceilings (a source's max-message-size may be lower). */
#define CLEANUP_MAX_MESSAGE ((size_t)100 << 20)
#define CLEANUP_MAX_RCPT    100000u

/* --- one configuration generation, as cleanup uses it (cleanup_conf.c) ---- */

struct cleanup_pattern; /* one compiled <pattern-list> entry */

struct cleanup_vmta_keys { /* domain-key lines of one <virtual-mta> */
    uint32_t scope;
    struct cleanup_dkim_keylist *keys;
};

struct cleanup_seed_key { /* dkim-selector + dkim-key-file of <domain> */
    char *selector, *path;
    struct cleanup_dkim_keylist *keys; /* NULL: the key could not be loaded */
};

struct cleanup_conf {
    const struct cfg *cfg; /* held (worker_config_hold) */
    unsigned refs;
    struct cleanup_dkim_keylist *global_keys;
    struct cleanup_vmta_keys *vmta_keys;
    size_t nvmta_keys;
    struct cleanup_seed_key *seed_keys;
    size_t nseed_keys;
    struct cleanup_pattern *patterns; /* every <pattern-list> entry, in file order */
    size_t npatterns;
    unsigned *pool_turn; /* per scope index: next pool member */
    const char *host_name;
    struct cleanup_processor *processors; /* <bounce-processor>, <feedback-loop-processor> */
    size_t nprocessors;
};

/* A processor's address list: its recipients go to its queue (qmgr reads them there). */
struct cleanup_processor {
    const char *queue_domain; /* "{bounce}" or "{feedbackLoop}" */
    struct cfg_addrlist *list;
    time_t refreshed; /* its files were last looked at */
};

struct cleanup_conf *cleanup_conf_new(const struct cfg *cfg);
/*
 * cleanup_conf_processor_queue - "{bounce}" or "{feedbackLoop}" when ADDR is
 * on a <bounce-processor> / <feedback-loop-processor> address list (the
 * first in the file wins), else NULL
 */
const char *cleanup_conf_processor_queue(const struct cleanup_conf *cc, const char *addr);
void cleanup_conf_ref(struct cleanup_conf *cc);
void cleanup_conf_unref(struct cleanup_conf *cc);
/* cleanup_conf_vmta_keys - the domain-key list of <virtual-mta> NAME, or NULL */
const struct cleanup_dkim_keylist *cleanup_conf_vmta_keys(const struct cleanup_conf *cc,
                                                          const char *name);
/* cleanup_conf_seed_keys - the keylist for SELECTOR + PATH (made on first use); NULL = bad key */
const struct cleanup_dkim_keylist *cleanup_conf_seed_keys(struct cleanup_conf *cc,
                                                          const char *selector, const char *path);
/*
 * cleanup_conf_pattern_vmta - run <pattern-list> LIST (and its call-to: lists)
 * over the sender, the recipients and the header fields; the virtual-mta= of
 * the first matching entry, or NULL.
 */
struct cleanup_txn;
const char *cleanup_conf_pattern_vmta(const struct cleanup_conf *cc, const char *list,
                                      const struct cleanup_txn *t,
                                      const struct cleanup_message *msg);

/* --- transactions and connections (cleanup_server.c) -------------------- */

struct cleanup_rcpt {
    char *address;
    char *orcpt;
    uint32_t notify; /* MP_NOTIFY_* */
};

struct cleanup_conn;

struct cleanup_txn {
    struct cleanup_txn *next; /* on its connection */
    struct cleanup_conn *conn;
    uint32_t id;
    struct cleanup_conf *conf; /* pinned */
    struct cfg_resolved src;   /* the client's <source> settings (point into conf->cfg) */
    char *source_name;         /* the listener's source= ("" none) */
    char *client_ip, *local_ip, *helo, *auth_user, *tls_protocol, *tls_cipher;
    char *sender, *envid;
    uint32_t client_port, local_port, mail_flags;
    uint64_t declared_size;
    uint32_t submit_uid; /* the local user on the pickup socket, MP_NO_UID if none */
    char *submit_user;   /* its login name, "" if none */
    struct cleanup_rcpt *rcpts;
    size_t nrcpt, rcpt_cap;
    struct buf data;   /* the message; limit = max size */
    uint64_t received; /* DATA bytes seen (also after a refusal) */
    int answered;      /* MP_TXN_RESULT already sent */
    int ended;         /* END seen: processing or committing */
    uint64_t started_ns;
};

/* cleanup_server_start - accept smtpd connections on the inherited socket */
void cleanup_server_start(void);
/* cleanup_server_stop_accepting - close the listening handle (shutdown) */
void cleanup_server_stop_accepting(void);
/* cleanup_server_idle - no connection left */
int cleanup_server_idle(void);
/* cleanup_server_drop_unfinished - forget every transaction that has not ended */
void cleanup_server_drop_unfinished(void);
/* cleanup_server_broadcast - send FRAMES to every open smtpd connection */
void cleanup_server_broadcast(const struct buf *frames);
/* cleanup_server_close_all - close every connection once its writes are out; CB when done */
void cleanup_server_close_all(void (*cb)(void));
/*
 * cleanup_txn_result - answer transaction T (once); MSGID 0 unless CODE is 250.
 * A connection that went away meanwhile is simply skipped.
 */
void cleanup_txn_result(struct cleanup_txn *t, unsigned code, const char *enhanced,
                        const char *text, uint64_t msgid);
/* cleanup_txn_done - the transaction is over (answered or dropped): unlink and free */
void cleanup_txn_done(struct cleanup_txn *t);

/* --- routing (cleanup_route.c) -------------------------------------------- */

struct cleanup_route {
    char *selected;  /* vmta or pool name as chosen, "{default}" */
    char *vmta;      /* the virtual MTA the queues use */
    const char *why; /* which rule chose it (for debug logs) */
};

/*
 * cleanup_route_choose - the virtual MTA for T/MSG by PowerMTA's precedence.
 * @return 0 and *R, or -ENOENT for an unknown name that may not fall back
 *	(the caller answers 550 5.7.1; R->selected holds the name). Free R with
 *	cleanup_route_free() either way.
 */
int cleanup_route_choose(struct cleanup_txn *t, const struct cleanup_message *msg,
                         struct cleanup_route *r);
void cleanup_route_free(struct cleanup_route *r);
/* cleanup_sender_block - the <sender ADDR> scope matching SENDER, or CFG_NONE */
uint32_t cleanup_sender_block(const struct cfg *c, const char *sender);

/* --- END processing (cleanup_commit.c) ------------------------------------ */

/* cleanup_commit_txn - process an ended transaction; answers it now, after its signatures
 * (thread pool) or after the commit */
void cleanup_commit_txn(struct cleanup_txn *t);
/* cleanup_commit_quiesce - call CB once no message is waiting for or being signed (at once if
 * none is): each has been submitted to the group committer or answered by then */
void cleanup_commit_quiesce(void (*cb)(void));

/* --- the queue's space (cleanup_space.c) ---------------------------------------- */

/* cleanup_space_start - sample now and every second (the queue is open) */
void cleanup_space_start(void);
void cleanup_space_stop(void);
/* cleanup_space_take - a message of SIZE bytes is about to be submitted: 0 if it fits (its
 * bytes now count as used), -ENOSPC if not (answer 452 4.3.1) */
int cleanup_space_take(size_t size);
/* cleanup_space_full - a commit found the queue full: sample again */
void cleanup_space_full(void);
/* cleanup_space_hello - tell a new smtpd connection the figures (MP_QUEUE_SPACE) */
void cleanup_space_hello(struct ipc_chan *ch);

/* --- qmgr hints (cleanup_notify.c) ------------------------------------------ */

void cleanup_notify_new(uint64_t msgid);
void cleanup_notify_close(void);

/* --- process state (cleanup.c) ------------------------------------------------ */

struct cleanup_state {
    struct cleanup_dkim *dk;   /* OpenDKIM handle + key cache (all generations) */
    struct cleanup_conf *conf; /* the current generation */
    struct qstore *qs;
    struct qstore_group *group;
    int stopping;
    uint64_t accepted, refused; /* transactions answered 250 / otherwise */
};

extern struct cleanup_state cleanup;

/* cleanup_check_finished - during shutdown: finish once the connections are gone */
void cleanup_check_finished(void);

#endif
