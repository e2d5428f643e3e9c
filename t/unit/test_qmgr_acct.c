/*
 * test_qmgr_acct.c - unit tests for qmgr/qmgr_acct, the accounting CSV
 * writer: the header line and column order, record order, RFC 4180 quoting of
 * hostile values (comma, quote, CR, LF, NUL, bad UTF-8), record-fields with
 * "*", "!field" and header_X, the records filter, iso-times no, rotation by
 * max-size and by move-interval into move-to with PowerMTA-style names,
 * delete-after, manual rotation, buffering and flush, reopening an existing
 * file, and |command pipes: header then records (compared byte for byte with
 * a file), a program that exits at once (detected, warned about, records
 * dropped and counted, restarted after retry-interval), one that cannot be
 * started, one that never reads (write-timeout, qmgr never blocks) and one
 * that ignores EOF at close (terminated); no child is ever left a zombie
 * (checked in /proc without reaping it ourselves). Files are read back with
 * a small RFC 4180 parser (every line must be CRLF-terminated).
 */
#include <errno.h>
#include <fcntl.h>
#include <dirent.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <utime.h>
#include <sys/stat.h>
#include <sys/types.h>

#include <cmocka.h>

#include "unit.h"

#include "cfg.h"
#include "msg.h"
#include "xalloc.h"

#include "qmgr_acct.h"

#define NOW ((time_t)1700000000) /* 2023-11-14 22:13:20 +0000 */

static char dir[128];
static time_t fake_now;

static time_t
fake_clock(void *ctx)
{
    return fake_now;
}

static const struct qmgr_acct_opts opts = { fake_clock, NULL, NULL };

static void
quiet(void *ctx, enum cfg_diag_level level, const char *file, unsigned line, const char *message)
{}

/* --- fixtures ----------------------------------------------------------------------------- */

static int
make_dir(void **state)
{
    snprintf(dir, sizeof dir, "/tmp/test_qmgr_acct.XXXXXX");
    assert_non_null(mkdtemp(dir));
    fake_now = NOW;
    unit_arm();
    return 0;
}

static void
remove_tree(const char *path)
{
    DIR *d = opendir(path);
    struct dirent *e;

    if (!d)
        return;
    while ((e = readdir(d)) != NULL) {
        char sub[512];
        struct stat st;
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        snprintf(sub, sizeof sub, "%s/%s", path, e->d_name);
        if (lstat(sub, &st) == 0 && S_ISDIR(st.st_mode))
            remove_tree(sub);
        else
            unlink(sub);
    }
    closedir(d);
    rmdir(path);
}

static int
remove_dir(void **state)
{
    unit_disarm();
    remove_tree(dir);
    return 0;
}

/* with_dir - TEMPLATE with every "%s" replaced by the test directory */
static void
with_dir(char *out, size_t size, const char *template)
{
    size_t n = 0, dlen = strlen(dir);

    for (const char *t = template; *t && n + 1 < size; t++) {
        if (t[0] == '%' && t[1] == 's' && n + dlen + 1 < size) {
            memcpy(out + n, dir, dlen);
            n += dlen;
            t++;
        } else {
            out[n++] = *t;
        }
    }
    out[n] = '\0';
}

/* open_acct - load TEXT ("%s" stands for the test directory, possibly several times) */
static struct qmgr_acct *
open_acct(struct cfg **cp, const char *template)
{
    char text[4096];
    unsigned nerr = 0;
    struct qmgr_acct *a = NULL;

    with_dir(text, sizeof text, template);
    *cp = cfg_load_string("t.conf", text, quiet, NULL, &nerr);
    assert_non_null(*cp);
    assert_int_equal(nerr, 0);
    assert_int_equal(qmgr_acct_open(&a, *cp, &opts), 0);
    assert_non_null(a);
    return a;
}

static char *
path_in(const char *name)
{
    return xasprintf("%s/%s", dir, name);
}

static char *
slurp(const char *path, size_t *lenp)
{
    FILE *f = fopen(path, "rb");
    char *data;
    long len;

    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    len = ftell(f);
    fseek(f, 0, SEEK_SET);
    data = xmalloc((size_t)len + 1);
    assert_int_equal(fread(data, 1, (size_t)len, f), (size_t)len);
    data[len] = 0;
    fclose(f);
    if (lenp)
        *lenp = (size_t)len;
    return data;
}

/* --- a small RFC 4180 reader --------------------------------------------------------------- */

#define MAXF 64
#define MAXR 64

struct csv {
    int nrows;
    int nfields[MAXR];
    char *f[MAXR][MAXF];
};

/* parse_csv - every record ends in CRLF; quoted fields may hold , and "" */
static void
parse_csv(const char *text, struct csv *out)
{
    const char *p = text;

    memset(out, 0, sizeof *out);
    while (*p && out->nrows < MAXR) {
        int r = out->nrows++;
        for (;;) {
            char field[4096];
            size_t n = 0;
            if (*p == '"') {
                for (p++; !(*p == '"' && p[1] != '"'); p++) {
                    assert_true(*p != 0);
                    if (*p == '"')
                        p++;
                    field[n++] = *p;
                }
                p++;
            } else {
                while (*p && *p != ',' && *p != '\r' && *p != '\n') {
                    assert_true(*p != '"');
                    field[n++] = *p++;
                }
            }
            field[n] = 0;
            assert_true(out->nfields[r] < MAXF);
            out->f[r][out->nfields[r]++] = xstrdup(field);
            if (*p == ',') {
                p++;
                continue;
            }
            assert_int_equal(p[0], '\r'); /* CRLF only, never a bare LF */
            assert_int_equal(p[1], '\n');
            p += 2;
            break;
        }
    }
}

static void
free_csv(struct csv *c)
{
    for (int r = 0; r < c->nrows; r++)
        for (int i = 0; i < c->nfields[r]; i++)
            free(c->f[r][i]);
}

static void
read_csv(const char *name, struct csv *out)
{
    char *path = path_in(name), *text = slurp(path, NULL);

    parse_csv(text, out);
    free(text);
    free(path);
}

/* col - index of column NAME in the header row, or fail */
static int
col(const struct csv *c, const char *name)
{
    for (int i = 0; i < c->nfields[0]; i++)
        if (strcmp(c->f[0][i], name) == 0)
            return i;
    fail_msg("no column %s", name);
    return -1;
}

static const char *
cell(const struct csv *c, int row, const char *name)
{
    int i = col(c, name);

    assert_int_equal(c->nfields[row], c->nfields[0]);
    return c->f[row][i];
}

static struct qmgr_acct_record
delivery(void)
{
    struct qmgr_acct_record r = {
        .type = QMGR_ACCT_D,
        .time_logged = NOW,
        .time_queued = NOW - 65,
        .orig = "bounces@sender.example",
        .rcpt = "bob@rcpt.example",
        .dsn_action = "relayed",
        .dsn_status = "2.0.0 (success)",
        .dsn_diag = "smtp;250 2.0.0 OK",
        .dsn_mta = "mx.rcpt.example (192.0.2.25)",
        .src_type = "smtp",
        .src_mta = "client.example (192.0.2.1)",
        .dlv_type = "smtp",
        .dlv_source_ip = "127.0.0.10",
        .dlv_destination_ip = "192.0.2.25",
        .dlv_esmtp_available = "PIPELINING,8BITMIME,ENHANCEDSTATUSCODES",
        .dlv_size = 41159,
        .vmta = "vmta1",
        .job_id = "job-7",
        .queue = "rcpt.example/vmta1",
    };
    return r;
}

/* --- tests -------------------------------------------------------------------------------- */

static void
test_header_and_record_order(void **state)
{
    struct cfg *c;
    struct qmgr_acct *a = open_acct(&c, "<acct-file %s/acct.csv>\n</acct-file>\n");
    struct qmgr_acct_record r = delivery();
    struct csv csv;

    assert_int_equal(qmgr_acct_nfiles(a), 1);
    assert_int_equal(qmgr_acct_write(a, &r), 0);
    r.type = QMGR_ACCT_B;
    r.rcpt = "gone@rcpt.example";
    r.dsn_action = "failed";
    r.dsn_status = "5.1.1 (bad destination mailbox address)";
    r.bounce_cat = "bad-mailbox";
    assert_int_equal(qmgr_acct_write(a, &r), 0);
    qmgr_acct_close(a);

    read_csv("acct.csv", &csv);
    assert_int_equal(csv.nrows, 3);
    /* the documented column order: PowerMTA's sample d record first */
    const char *expect[] = { "type",
                             "timeLogged",
                             "timeQueued",
                             "orig",
                             "rcpt",
                             "orcpt",
                             "dsnAction",
                             "dsnStatus",
                             "dsnDiag",
                             "dsnMta",
                             "bounceCat",
                             "srcType",
                             "srcMta",
                             "dlvType",
                             "dlvSourceIp",
                             "dlvDestinationIp",
                             "dlvEsmtpAvailable",
                             "dlvSize",
                             "vmta",
                             "jobId",
                             "envId",
                             "queue",
                             "vmtaPool",
                             "totalSecondsQueued",
                             "timeFirstAttempt",
                             "dlvTlsProtocol",
                             "dlvTlsCipher",
                             "rcvSmtpUser",
                             "userString" };
    assert_int_equal(csv.nfields[0], (int)(sizeof expect / sizeof expect[0]));
    for (size_t i = 0; i < sizeof expect / sizeof expect[0]; i++)
        assert_string_equal(csv.f[0][i], expect[i]);
    assert_string_equal(cell(&csv, 1, "type"), "d");
    assert_string_equal(cell(&csv, 1, "timeLogged"), "2023-11-14 22:13:20+0000");
    assert_string_equal(cell(&csv, 1, "timeQueued"), "2023-11-14 22:12:15+0000");
    assert_string_equal(cell(&csv, 1, "totalSecondsQueued"), "65");
    assert_string_equal(cell(&csv, 1, "dlvEsmtpAvailable"),
                        "PIPELINING,8BITMIME,ENHANCEDSTATUSCODES");
    assert_string_equal(cell(&csv, 1, "dlvSize"), "41159");
    assert_string_equal(cell(&csv, 1, "queue"), "rcpt.example/vmta1");
    assert_string_equal(cell(&csv, 1, "orcpt"), "");
    assert_string_equal(cell(&csv, 2, "type"), "b");
    assert_string_equal(cell(&csv, 2, "rcpt"), "gone@rcpt.example");
    assert_string_equal(cell(&csv, 2, "bounceCat"), "bad-mailbox");
    free_csv(&csv);
    cfg_free(c);
}

static void
test_hostile_values_quoted_and_neutralised(void **state)
{
    struct cfg *c;
    struct qmgr_acct *a = open_acct(&c, "<acct-file %s/acct.csv>\n</acct-file>\n");
    struct qmgr_acct_record r = delivery();
    char *path = path_in("acct.csv"), *raw;
    struct csv csv;

    r.type = QMGR_ACCT_B;
    r.dsn_diag = "smtp;550 5.7.1 no, \"really\"\r\nd,evil,row\r\n\nX\x01Y caf\xc3\xa9 \xff\xfe end";
    r.rcpt = "a\"b@x.example";
    assert_int_equal(qmgr_acct_write(a, &r), 0);
    qmgr_acct_close(a);

    raw = slurp(path, NULL);
    assert_non_null(
        strstr(raw, ",\"smtp;550 5.7.1 no, \"\"really\"\" d,evil,row X Y caf\xc3\xa9 ?? end\","));
    read_csv("acct.csv", &csv);
    assert_int_equal(csv.nrows, 2); /* no extra row from the CR/LF */
    assert_string_equal(cell(&csv, 1, "dsnDiag"),
                        "smtp;550 5.7.1 no, \"really\" d,evil,row X Y caf\xc3\xa9 ?? end");
    assert_string_equal(cell(&csv, 1, "rcpt"), "a\"b@x.example");
    free_csv(&csv);
    free(raw);
    free(path);
    cfg_free(c);
}

static void
test_record_fields_selection(void **state)
{
    struct cfg *c;
    struct qmgr_acct *a = open_acct(
        &c, "<acct-file %s/acct.csv>\n"
            "  records d,bounce\n"
            "  record-fields d timeLogged,rcpt,dsnStatus,header_Subject,header_X-Job\n"
            "  record-fields bounce *,!dsnDiag,!userString,!rcvSmtpUser,!totalSecondsQueued,"
            "!dlvTlsProtocol,!dlvTlsCipher,!vmtaPool\n"
            "</acct-file>\n");
    struct qmgr_acct_record r = delivery();
    static const char hdrs[] = "From: a@b\r\nSubject: Hello,\r\n  folded \"world\"\r\n"
                               "x-job: J1\r\n\r\nSubject: body, not a header\r\n";
    struct csv csv;

    r.headers = hdrs;
    r.headers_len = sizeof hdrs - 1;
    assert_int_equal(qmgr_acct_write(a, &r), 0);
    r.type = QMGR_ACCT_B;
    assert_int_equal(qmgr_acct_write(a, &r), 0);
    qmgr_acct_close(a);

    read_csv("acct.csv", &csv);
    /* the union: b's fields (without the removed ones), then the headers */
    assert_string_equal(csv.f[0][csv.nfields[0] - 2], "header_Subject");
    assert_string_equal(csv.f[0][csv.nfields[0] - 1], "header_X-Job");
    for (int i = 0; i < csv.nfields[0]; i++) { /* neither d nor b has these */
        assert_string_not_equal(csv.f[0][i], "userString");
        assert_string_not_equal(csv.f[0][i], "vmtaPool");
        assert_string_not_equal(csv.f[0][i], "dsnDiag");
    }
    assert_string_equal(cell(&csv, 1, "rcpt"), "bob@rcpt.example");
    assert_string_equal(cell(&csv, 1, "dsnStatus"), "2.0.0 (success)");
    assert_string_equal(cell(&csv, 1, "vmta"), ""); /* not selected for d */
    assert_string_equal(cell(&csv, 1, "header_Subject"), "Hello, folded \"world\"");
    assert_string_equal(cell(&csv, 1, "header_X-Job"), "J1");
    assert_string_equal(cell(&csv, 2, "type"), "b");
    assert_string_equal(cell(&csv, 2, "vmta"), "vmta1");
    assert_string_equal(cell(&csv, 2, "dsnMta"), "mx.rcpt.example (192.0.2.25)");
    assert_string_equal(cell(&csv, 2, "header_Subject"), ""); /* b did not ask for it */
    free_csv(&csv);
    cfg_free(c);
}

static void
test_records_filter_and_all_types(void **state)
{
    struct cfg *c;
    struct qmgr_acct *a = open_acct(
        &c, "<acct-file %s/db.csv>\n</acct-file>\n"
            "<acct-file %s/all.csv>\n records d,b,t,tq,r\n user-string node-7\n</acct-file>\n");
    struct qmgr_acct_record r = delivery();
    struct csv csv;

    assert_int_equal(qmgr_acct_nfiles(a), 2);
    r.type = QMGR_ACCT_T;
    r.dsn_action = "delayed";
    assert_int_equal(qmgr_acct_write(a, &r), 0);
    r.type = QMGR_ACCT_TQ;
    r.dsn_status = "4.4.1 (no answer from host)";
    assert_int_equal(qmgr_acct_write(a, &r), 0);
    r.type = QMGR_ACCT_R;
    r.rcv_source_ip = "192.0.2.1";
    r.rcv_destination_ip = "127.0.0.1";
    assert_int_equal(qmgr_acct_write(a, &r), 0);
    qmgr_acct_close(a);

    read_csv("db.csv", &csv);
    assert_int_equal(csv.nrows, 1); /* header only: t, tq, r filtered */
    free_csv(&csv);

    read_csv("all.csv", &csv);
    assert_int_equal(csv.nrows, 4);
    assert_string_equal(cell(&csv, 1, "type"), "t");
    assert_string_equal(cell(&csv, 1, "dsnAction"), "delayed");
    assert_string_equal(cell(&csv, 2, "type"), "tq");
    assert_string_equal(cell(&csv, 2, "rcpt"), ""); /* tq has no recipient */
    assert_string_equal(cell(&csv, 2, "dsnStatus"), "4.4.1 (no answer from host)");
    assert_string_equal(cell(&csv, 2, "queue"), "rcpt.example/vmta1");
    assert_string_equal(cell(&csv, 3, "type"), "r");
    assert_string_equal(cell(&csv, 3, "rcvSourceIp"), "192.0.2.1");
    assert_string_equal(cell(&csv, 3, "dsnStatus"), ""); /* r has no status */
    assert_string_equal(cell(&csv, 3, "userString"), "node-7");
    assert_string_equal(cell(&csv, 1, "rcvSourceIp"), "");
    free_csv(&csv);
    cfg_free(c);
}

static void
test_iso_times_no(void **state)
{
    struct cfg *c;
    struct qmgr_acct *a = open_acct(&c, "<acct-file %s/acct.csv>\n iso-times no\n</acct-file>\n");
    struct qmgr_acct_record r = delivery();
    struct csv csv;

    assert_int_equal(qmgr_acct_write(a, &r), 0);
    r.time_logged = 0; /* 0 = now (the clock) */
    fake_now = NOW + 7;
    assert_int_equal(qmgr_acct_write(a, &r), 0);
    qmgr_acct_close(a);
    read_csv("acct.csv", &csv);
    assert_string_equal(cell(&csv, 1, "timeLogged"), "1700000000");
    assert_string_equal(cell(&csv, 1, "timeQueued"), "1699999935");
    assert_string_equal(cell(&csv, 2, "timeLogged"), "1700000007");
    assert_string_equal(cell(&csv, 2, "totalSecondsQueued"), "72");
    free_csv(&csv);
    cfg_free(c);
}

static int
count_files(const char *sub, const char *prefix, char *first, size_t firstsize)
{
    char *p = path_in(sub);
    DIR *d = opendir(p);
    struct dirent *e;
    int n = 0;

    assert_non_null(d);
    while ((e = readdir(d)) != NULL)
        if (strncmp(e->d_name, prefix, strlen(prefix)) == 0) {
            if (n++ == 0 && first)
                snprintf(first, firstsize, "%s", e->d_name);
        }
    closedir(d);
    free(p);
    return n;
}

static void
test_rotation_by_max_size(void **state)
{
    struct cfg *c;
    char *old = path_in("old"), name[256], *rotated, *text;
    struct qmgr_acct *a;
    struct qmgr_acct_record r = delivery();
    size_t len;
    int n = 0;

    assert_int_equal(mkdir(old, 0755), 0);
    a = open_acct(&c, "<acct-file %s/acct.csv>\n max-size 1M\n move-to %s/old\n</acct-file>\n");
    while (count_files("old", "acct-", NULL, 0) == 0) {
        assert_int_equal(qmgr_acct_write(a, &r), 0);
        assert_true(++n < 10000);
    }
    /* one file, named the PowerMTA way after the rotation time, holding >= 1M */
    assert_int_equal(count_files("old", "acct-", name, sizeof name), 1);
    assert_string_equal(name, "acct-2023-11-14-2213.csv");
    rotated = xasprintf("%s/%s", old, name);
    text = slurp(rotated, &len);
    assert_true(len > 1024 * 1024);
    assert_true(strncmp(text, "type,timeLogged,", 16) == 0);
    free(text);

    /* the new file starts with a header line; a second rotation in the same minute gets -1 */
    assert_int_equal(qmgr_acct_write(a, &r), 0);
    assert_int_equal(qmgr_acct_flush(a), 0);
    struct csv csv;
    read_csv("acct.csv", &csv);
    assert_int_equal(csv.nrows, 2);
    assert_string_equal(csv.f[0][0], "type");
    free_csv(&csv);
    assert_int_equal(qmgr_acct_rotate(a), 0);
    assert_int_equal(count_files("old", "acct-2023-11-14-2213-1.csv", NULL, 0), 1);
    qmgr_acct_close(a);
    free(rotated);
    free(old);
    cfg_free(c);
}

static void
test_rotation_by_interval_and_delete_after(void **state)
{
    struct cfg *c;
    char *old = path_in("old"), *stale, *keep, *other;
    struct qmgr_acct *a;
    struct qmgr_acct_record r = delivery();
    struct utimbuf ancient = { NOW - 9 * 86400, NOW - 9 * 86400 };
    FILE *f;

    assert_int_equal(mkdir(old, 0755), 0);
    stale = xasprintf("%s/acct-2023-11-01-0000.csv", old);
    keep = xasprintf("%s/acct-2023-11-13-0000.csv", old);
    other = xasprintf("%s/notes-2023-11-01-0000.csv", old);
    for (char **p = (char *[]){ stale, keep, other, NULL }; *p; p++) {
        assert_non_null(f = fopen(*p, "w"));
        fclose(f);
        if (*p != keep)
            assert_int_equal(utime(*p, &ancient), 0);
    }

    fake_now = 1700002799; /* 22:59:59 */
    a = open_acct(&c, "<acct-file %s/acct.csv>\n move-interval 1h\n move-to %s/old\n"
                      " delete-after 8d\n</acct-file>\n");
    /* delete-after at open: only our own old rotated file goes */
    assert_int_equal(access(stale, F_OK), -1);
    assert_int_equal(access(keep, F_OK), 0);
    assert_int_equal(access(other, F_OK), 0);

    assert_int_equal(qmgr_acct_write(a, &r), 0);
    assert_int_equal(qmgr_acct_tick(a), 0);
    assert_int_equal(count_files("old", "acct-2023-11-14", NULL, 0), 0);
    fake_now = 1700002801; /* 23:00:01: past the hour */
    assert_int_equal(qmgr_acct_tick(a), 0);
    assert_int_equal(count_files("old", "acct-2023-11-14-2300.csv", NULL, 0), 1);
    qmgr_acct_close(a);

    struct csv csv;
    read_csv("old/acct-2023-11-14-2300.csv", &csv);
    assert_int_equal(csv.nrows, 2); /* header + the record */
    free_csv(&csv);
    read_csv("acct.csv", &csv);
    assert_int_equal(csv.nrows, 1); /* the new file: header only */
    free_csv(&csv);
    free(stale);
    free(keep);
    free(other);
    free(old);
    cfg_free(c);
}

static void
test_buffering_flush_and_reopen(void **state)
{
    struct cfg *c;
    struct qmgr_acct *a = open_acct(&c, "<acct-file %s/acct.csv>\n sync yes\n</acct-file>\n");
    struct qmgr_acct_record r = delivery();
    char *path = path_in("acct.csv"), *text;
    size_t len;
    struct stat st;

    assert_int_equal(qmgr_acct_write(a, &r), 0);
    text = slurp(path, &len);
    assert_int_equal(len, 0); /* buffered */
    free(text);
    fake_now = NOW + 1;
    assert_int_equal(qmgr_acct_tick(a), 0); /* a second later: written */
    text = slurp(path, &len);
    assert_non_null(strstr(text, "\r\nd,"));
    free(text);
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0640); /* not world-readable by default */
    qmgr_acct_close(a);
    cfg_free(c);

    /* reopening with the same columns appends without a second header line */
    a = open_acct(&c, "<acct-file %s/acct.csv>\n</acct-file>\n");
    assert_int_equal(qmgr_acct_write(a, &r), 0);
    qmgr_acct_close(a);
    cfg_free(c);
    struct csv csv;
    read_csv("acct.csv", &csv);
    assert_int_equal(csv.nrows, 3);
    assert_string_equal(csv.f[1][0], "d");
    assert_string_equal(csv.f[2][0], "d");
    free_csv(&csv);

    /* other columns: the old file is moved aside (own directory, no move-to) */
    a = open_acct(&c, "<acct-file %s/acct.csv>\n records d,r\n</acct-file>\n");
    qmgr_acct_close(a);
    cfg_free(c);
    assert_int_equal(count_files(".", "acct-2023-11-14-", NULL, 0), 1);
    read_csv("acct.csv", &csv);
    assert_int_equal(csv.nrows, 1);
    col(&csv, "rcvSourceIp");
    free_csv(&csv);
    free(path);
}

/* --- pipes ------------------------------------------------------------------------------- */

/* process_gone - PID has been reaped (a zombie still has its /proc entry) */
static int
process_gone(pid_t pid)
{
    char path[64];

    snprintf(path, sizeof path, "/proc/%ld", (long)pid);
    return access(path, F_OK) != 0;
}

/* tick_until_down - drive the tick (the clock stands still) until pipe I's program is down */
static void
tick_until_down(struct qmgr_acct *a, size_t i)
{
    for (int n = 0; qmgr_acct_pipe_pid(a, i) != 0; n++) {
        assert_true(n < 500); /* 5 s */
        qmgr_acct_tick(a);
        usleep(10000);
    }
}

/* log capture: warnings go to a file in the test directory while a test looks at them */
static void
capture_log(void)
{
    char *path = path_in("log");
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);

    assert_true(fd >= 0);
    msg_use_fd(fd);
    free(path);
}

static char *
captured_log(void)
{
    char *path = path_in("log"), *text = slurp(path, NULL);

    free(path);
    return text;
}

static void
end_capture(void)
{
    msg_use_fd(-1); /* back to stderr */
}

static void
test_world_readable_and_pipe_not_a_file(void **state)
{
    struct cfg *c;
    struct qmgr_acct *a = open_acct(&c,
                                    "<acct-file %s/acct.csv>\n world-readable yes\n</acct-file>\n"
                                    "<acct-file \"|/bin/cat -u\">\n move-to /nonexistent\n"
                                    "</acct-file>\n");
    char *path = path_in("acct.csv");
    struct stat st;
    pid_t pid;

    assert_int_equal(qmgr_acct_nfiles(a), 1); /* the pipe is not a file ... */
    assert_string_equal(qmgr_acct_path(a, 0), path);
    assert_null(qmgr_acct_path(a, 1));
    assert_int_equal(qmgr_acct_npipes(a), 1); /* ... but a running pipe */
    assert_string_equal(qmgr_acct_pipe_name(a, 0), "|/bin/cat -u");
    assert_true((pid = qmgr_acct_pipe_pid(a, 0)) > 0);
    assert_int_equal(qmgr_acct_rotate(a), 0); /* move-to does not apply to it */
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0644);
    qmgr_acct_close(a);
    assert_true(process_gone(pid)); /* cat saw EOF and was reaped */
    cfg_free(c);
    free(path);

    /* no <acct-file> at all: writes go nowhere */
    assert_int_equal(qmgr_acct_open(&a, NULL, NULL), 0);
    struct qmgr_acct_record r = delivery();
    assert_int_equal(qmgr_acct_write(a, &r), 0);
    assert_int_equal(qmgr_acct_nfiles(a), 0);
    assert_int_equal(qmgr_acct_npipes(a), 0);
    qmgr_acct_close(a);
}

static void
test_pipe_gets_header_then_records(void **state)
{
    struct cfg *c;
    struct qmgr_acct *a = open_acct(
        &c, "<acct-file %s/file.csv>\n records d\n</acct-file>\n"
            "<acct-file \"|/usr/bin/tee %s/piped.csv\">\n records d\n</acct-file>\n");
    struct qmgr_acct_record r = delivery();
    char *file = path_in("file.csv"), *piped = path_in("piped.csv"), *ftext, *ptext;
    struct csv csv;
    pid_t pid = qmgr_acct_pipe_pid(a, 0);

    assert_true(pid > 0);
    assert_int_equal(qmgr_acct_write(a, &r), 0);
    r.type = QMGR_ACCT_B; /* not selected by records d */
    assert_int_equal(qmgr_acct_write(a, &r), 0);
    r.type = QMGR_ACCT_D;
    r.rcpt = "carol@rcpt.example";
    assert_int_equal(qmgr_acct_write(a, &r), 0);
    assert_int_equal(qmgr_acct_flush(a), 0);
    qmgr_acct_close(a); /* tee gets EOF, exits, is reaped */
    assert_true(process_gone(pid));

    ftext = slurp(file, NULL);
    ptext = slurp(piped, NULL);
    assert_string_equal(ptext, ftext); /* exactly what a file gets */
    read_csv("piped.csv", &csv);
    assert_int_equal(csv.nrows, 3);
    assert_string_equal(csv.f[0][0], "type");
    assert_string_equal(cell(&csv, 1, "rcpt"), "bob@rcpt.example");
    assert_string_equal(cell(&csv, 2, "rcpt"), "carol@rcpt.example");
    free_csv(&csv);
    free(ftext);
    free(ptext);
    free(file);
    free(piped);
    cfg_free(c);
}

static void
test_pipe_exit_detected_dropped_and_restarted(void **state)
{
    struct cfg *c;
    struct qmgr_acct *a;
    struct qmgr_acct_record r = delivery();
    pid_t first, second;
    char *log;

    capture_log();
    a = open_acct(&c, "<acct-file \"|/bin/true\">\n records d\n retry-interval 1s\n</acct-file>\n");
    assert_true((first = qmgr_acct_pipe_pid(a, 0)) > 0);
    tick_until_down(a, 0);            /* true exits at once */
    assert_true(process_gone(first)); /* reaped by the tick */

    for (int i = 0; i < 3; i++) /* while it is down: dropped, no error */
        assert_int_equal(qmgr_acct_write(a, &r), 0);
    r.type = QMGR_ACCT_B; /* not for this pipe: not counted */
    assert_int_equal(qmgr_acct_write(a, &r), 0);
    assert_int_equal(qmgr_acct_pipe_dropped(a, 0), 3);
    assert_int_equal(qmgr_acct_tick(a), 0);
    assert_int_equal(qmgr_acct_pipe_pid(a, 0), 0); /* retry-interval not over yet */

    fake_now += 1;
    assert_int_equal(qmgr_acct_tick(a), 0);
    assert_true((second = qmgr_acct_pipe_pid(a, 0)) > 0); /* started again */
    assert_int_not_equal(second, first);
    assert_int_equal(qmgr_acct_pipe_dropped(a, 0), 0);
    qmgr_acct_close(a);
    assert_true(process_gone(second));
    cfg_free(c);

    log = captured_log();
    end_capture();
    assert_non_null(strstr(log, "warning: acct-file |/bin/true: exited with status 0;"));
    assert_non_null(strstr(log, "acct-file |/bin/true: started again (pid "));
    assert_non_null(strstr(log, "3 records were dropped while it was down"));
    free(log);
}

static void
test_pipe_program_missing_is_retried(void **state)
{
    struct cfg *c;
    struct qmgr_acct *a;
    struct qmgr_acct_record r = delivery();
    char *log;

    capture_log();
    a = open_acct(&c, "<acct-file \"|/nonexistent/acct-prog -x\">\n</acct-file>\n");
    assert_int_equal(qmgr_acct_npipes(a), 1);
    /*
     * glibc's posix_spawnp reports the failed exec at once; under valgrind
     * (a plain fork) the child exits 127 instead and a tick notices.
     */
    tick_until_down(a, 0);
    assert_int_equal(qmgr_acct_write(a, &r), 0);
    assert_int_equal(qmgr_acct_pipe_dropped(a, 0), 1);
    fake_now += 300; /* the default retry-interval */
    tick_until_down(a, 0);
    qmgr_acct_close(a);
    cfg_free(c);
    log = captured_log();
    end_capture();
    assert_true(strstr(log, "cannot start /nonexistent/acct-prog: No such file or directory; "
                            "retrying in 300 s") ||
                strstr(log, "acct-prog -x: exited with status 127; records for it are dropped "
                            "until it is started again in 300 s"));
    free(log);
}

static void
test_pipe_write_timeout_never_blocks(void **state)
{
    struct cfg *c;
    struct qmgr_acct *a;
    struct qmgr_acct_record r = delivery();
    pid_t pid;
    char *log;
    struct timespec t0, t1;

    capture_log();
    a = open_acct(&c, "<acct-file \"|/bin/sleep 60\">\n write-timeout 5s\n</acct-file>\n");
    assert_true((pid = qmgr_acct_pipe_pid(a, 0)) > 0);
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int i = 0; i < 2000; i++) /* ~800 KB: far more than a pipe holds */
        assert_int_equal(qmgr_acct_write(a, &r), 0);
    assert_int_equal(qmgr_acct_flush(a), 0);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    assert_true(t1.tv_sec - t0.tv_sec < 3); /* nothing waited for the reader */

    fake_now += 4;
    assert_int_equal(qmgr_acct_tick(a), 0);
    assert_int_equal(qmgr_acct_pipe_pid(a, 0), pid); /* still within write-timeout */
    fake_now += 2;
    assert_int_equal(qmgr_acct_tick(a), 0);
    assert_int_equal(qmgr_acct_pipe_pid(a, 0), 0);    /* given up on */
    assert_true(qmgr_acct_pipe_dropped(a, 0) > 1000); /* what it never took */
    for (int n = 0; !process_gone(pid); n++) {        /* SIGTERM'd, reaped by a tick */
        assert_true(n < 500);
        usleep(10000);
        qmgr_acct_tick(a);
    }
    qmgr_acct_close(a);
    cfg_free(c);
    log = captured_log();
    end_capture();
    assert_non_null(strstr(log, "acct-file |/bin/sleep 60: accepted no data for 6 s;"));
    free(log);
}

static void
test_pipe_close_terminates_program_ignoring_eof(void **state)
{
    struct cfg *c;
    struct qmgr_acct *a;
    pid_t pid;
    struct timespec t0, t1;
    long ms;

    capture_log();
    a = open_acct(&c, "<acct-file \"|/bin/sleep 60\">\n</acct-file>\n");
    assert_true((pid = qmgr_acct_pipe_pid(a, 0)) > 0);
    clock_gettime(CLOCK_MONOTONIC, &t0);
    qmgr_acct_close(a); /* like a reload */
    clock_gettime(CLOCK_MONOTONIC, &t1);
    end_capture();
    ms = (t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000;
    assert_true(ms >= 90 && ms < 1000); /* the grace time, then SIGTERM */
    assert_true(process_gone(pid));
    cfg_free(c);
}

static void
test_unwritable_file_is_retried_not_fatal(void **state)
{
    char text[1024], *sub = path_in("later"), *csv = path_in("later/acct.csv");
    unsigned nerr = 0;
    struct cfg *c;
    struct qmgr_acct *a = NULL;
    struct qmgr_acct_record r = delivery();
    struct stat st;
    char *data;

    /* The directory does not exist yet: qmgr must keep running and retry. */
    snprintf(text, sizeof text, "<acct-file %s>\n records d\n</acct-file>\n", csv);
    c = cfg_load_string("t.conf", text, quiet, NULL, &nerr);
    assert_non_null(c);
    assert_int_equal(qmgr_acct_open(&a, c, &opts), 0);
    assert_non_null(a);
    assert_int_equal(qmgr_acct_write(a, &r), 0);
    assert_int_equal(qmgr_acct_tick(a), 0);
    assert_int_not_equal(stat(csv, &st), 0);
    assert_int_equal(mkdir(sub, 0700), 0);
    fake_now += 61;
    assert_int_equal(qmgr_acct_tick(a), 0);
    assert_int_equal(qmgr_acct_write(a, &r), 0);
    assert_int_equal(qmgr_acct_flush(a), 0);
    data = slurp(csv, NULL);
    assert_true(strncmp(data, "type,", 5) == 0);
    assert_non_null(strstr(data, "\r\nd,"));
    free(data);
    qmgr_acct_close(a);
    cfg_free(c);
    unlink(csv);
    rmdir(sub);
    free(csv);
    free(sub);
}

#define T(f) cmocka_unit_test_setup_teardown(f, make_dir, remove_dir)

int
main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_header_and_record_order),
        T(test_hostile_values_quoted_and_neutralised),
        T(test_record_fields_selection),
        T(test_records_filter_and_all_types),
        T(test_iso_times_no),
        T(test_rotation_by_max_size),
        T(test_rotation_by_interval_and_delete_after),
        T(test_buffering_flush_and_reopen),
        T(test_world_readable_and_pipe_not_a_file),
        T(test_unwritable_file_is_retried_not_fatal),
        T(test_pipe_gets_header_then_records),
        T(test_pipe_exit_detected_dropped_and_restarted),
        T(test_pipe_program_missing_is_retried),
        T(test_pipe_write_timeout_never_blocks),
        T(test_pipe_close_terminates_program_ignoring_eof),
    };

    msg_init("test_qmgr_acct");
    return cmocka_run_group_tests(tests, NULL, NULL);
}
