/*
 * dsn_tool.c - print one DSN built by qmgr_dsn_build() for
 * t/integration/test_dsn_parse.py: the original message comes on stdin, the
 * scenario (full, hdrs, delayed, hostile, multi) is argv[1]. Fixed inputs, so
 * the Python test knows every field to expect.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "buf.h"
#include "msg.h"

#include "qmgr_dsn.h"

#define NOW ((time_t)1700000000)

static void
read_stdin(struct buf *b)
{
    char chunk[8192];
    size_t n;

    while ((n = fread(chunk, 1, sizeof chunk, stdin)) > 0)
        buf_append(b, chunk, n);
}

int
main(int argc, char **argv)
{
    const char *scenario = argc > 1 ? argv[1] : "full";
    struct buf original = BUF_INIT, out = BUF_INIT;
    struct qmgr_dsn_rcpt r[2] = {
        { .final_rcpt = "bob@rcpt.example",
          .orcpt = "rfc822;Bob@Rcpt.Example",
          .action = QMGR_DSN_FAILED,
          .status = "5.1.1",
          .remote_mta = "mx.rcpt.example",
          .diag = "550 5.1.1 <bob@rcpt.example>: Recipient address rejected: User unknown",
          .last_attempt = NOW - 5 },
        { .final_rcpt = "carol@slow.example",
          .action = QMGR_DSN_DELAYED,
          .status = "4.4.7",
          .remote_mta = "mx.slow.example",
          .diag = "421 4.7.0 Try again later",
          .last_attempt = NOW - 60,
          .will_retry_until = NOW + 86400 },
    };
    struct qmgr_dsn_input in = {
        .reporting_mta = "mta1.openpmta.example",
        .sender = "alice@sender.example",
        .envid = "ENV-42",
        .ret = QMGR_DSN_RET_FULL,
        .arrival = NOW - 3600,
        .now = NOW,
        .queue_id = "Q123",
        .rcpts = r,
        .nrcpts = 1,
    };
    int rc;

    msg_init("dsn_tool");
    read_stdin(&original);
    in.message = original.data;
    in.message_len = original.len;
    if (strcmp(scenario, "hdrs") == 0) {
        in.ret = QMGR_DSN_RET_HDRS;
    } else if (strcmp(scenario, "delayed") == 0) {
        in.rcpts = &r[1];
    } else if (strcmp(scenario, "hostile") == 0) {
        r[0].diag = "550 no\r\nX-Injected: yes\r\n\r\n--=_openpmta_x--\r\nContent-Type: "
                    "text/html\n\x01 done";
        r[0].remote_mta = "mx.example\r\nBcc: victim@example";
        in.envid = "E\r\nX-Envid-Injected: 1";
    } else if (strcmp(scenario, "multi") == 0) {
        in.nrcpts = 2;
    } else if (strcmp(scenario, "full") != 0) {
        fprintf(stderr, "usage: dsn_tool full|hdrs|delayed|hostile|multi < message\n");
        return 2;
    }
    if ((rc = qmgr_dsn_build(&in, &out)) < 0) {
        fprintf(stderr, "qmgr_dsn_build: %d\n", rc);
        return 1;
    }
    fwrite(out.data, 1, out.len, stdout);
    fprintf(stderr, "flags=%d\n", rc);
    buf_free(&out);
    buf_free(&original);
    return 0;
}
