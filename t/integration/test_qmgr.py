#!/usr/bin/env python3
"""test_qmgr - the queue manager against a fake smtp-out (t/lib/fakeout.py).

The queue is filled before pmtad starts (t/unit/qstore_fill), pmtad runs with
`smtp-out-processes 0`, and a Python FakeOut connects to RUNDIR/private/qmgr
in place of smtp-out. Each limit is checked from the fake's side:

run 1 (one pmtad, one queue per property, all at once):
  conc.test   max-smtp-out 2: 50 recipients never see 3 connections
  rate.test   max-msg-rate 10/s: no 1 s window above 10, >= 8/s on average
  split.test  max-rcpt-per-transaction 3: 10 recipients -> 3+3+3+1
  mpc.test    max-msg-per-connection 2: a new connection after 2 transactions
  retry.test  retry-after 2s,4s: temp failures retried after 2 s, 4 s, 4 s (+-10 %)
  qfail.test  connection failures: queue retry mode 2 s, 4 s, reset by a success
              (the message after the reset arrives without a hint: periodic scan)
  bounce.test bounce-after 3s: a recipient that keeps failing bounces; the DSN
              is queued to the sender (checked with tools/pmta-qdump)
  src.test/rr two smtp-source-host lines used round-robin
  vga/vgb.test on <virtual-mta vg> max-smtp-out 2: never 3 connections over both queues
  sna/snb.test on the <sender> block's vmta sv (max-conn 1): one connection at a
              time over both queues
  sra/srb.test on another <sender> block's vmta sr (max-msg-rate 5/s): no 1 s
              window above 5 over both queues
  crate.test  max-connect-rate 2/s with max-msg-per-connection 1: 8 messages,
              never more than 2 connections opened in any 1 s window, >= 1.5/s
  dns.test    retry-after 1h, retry-after-dns-error 2s: two failed connections
              with status 4.4.3 (DNS) are retried after 2 s each, not 1 h
  newmail.test retry-after 1h, retry-upon-new-mail yes: after a failed connection,
              a new message for the queue ends retry mode (a new connection);
  nonew.test  the same without retry-upon-new-mail: no new connection
  few.test    3 messages: one connection carries all three (connections ramp
              with the work)
  many.test   40 messages: 8 connections at once (each counted on for 4)
run 3 (total-max-smtp-out 3, max-msg-per-connection 1 everywhere):
  hi.test (queue-priority 90, 12 messages), tot0/1/2.test (default 50, 8 each),
  lo.test (queue-priority 10, 8): never more than 3 connections open in all,
  and the cap binds (3 at some point); every queue is served; dispatch walks
  the priorities down and stops while the cap binds, so hi.test's last
  transaction goes out before any of the priority-50 queues' first, and
  lo.test's first only after every other queue's last
run 4 (reclaim_idle, twice: under total-max-smtp-out 1, then under a
  <virtual-mta vr> with max-smtp-out 1 for both queues):
  rest.test (max-msg-rate 1/h, connection-idle-timeout 10m, 2 messages) takes
  the only connection, delivers one message and rests on it (its second waits
  for the rate); need.test (3 messages: over SMTP once rest.test rests under
  the total cap, queued beside a priority-90 rest.test under the VMTA's) cannot
  open one, so
  qmgr closes rest.test's resting connection at once and need.test is served
  in seconds, not after the 10-minute idle timeout
run 2:
  restart with 1,005 queued recipients rebuilds them all (twice)
  an smtp-out that dies returns its in-flight recipients; they are handed out
  again once, and every recipient is delivered exactly once otherwise
"""

import csv
import json
import os
import pwd
import re
import smtplib
import subprocess
import sys
import time

from fakeout import FakeOut, OK, TEMPFAIL
from pmtatest import Pmta, Tap, build_dir, require_root, wait_for

FILL = os.path.join(build_dir(), "t", "unit", "qstore_fill")
QDUMP = os.path.join(build_dir(), "tools", "pmta-qdump")

CONFIG = """
smtp-out-processes 0
smtpd-processes 1
<virtual-mta rr>
  smtp-source-host 127.0.0.10 a.src.test
  smtp-source-host 127.0.0.11 b.src.test
</virtual-mta>
<domain conc.test>
  max-smtp-out 2
</domain>
<domain rate.test>
  max-msg-rate 10/s
</domain>
<domain split.test>
  max-rcpt-per-transaction 3
  max-smtp-out 1
</domain>
<domain mpc.test>
  max-msg-per-connection 2
  max-smtp-out 1
</domain>
<domain retry.test>
  retry-after 2s,4s
  retry-recipients-after 1s
</domain>
<domain qfail.test>
  retry-after 2s,4s
  retry-recipients-after 1s
  max-smtp-out 1
</domain>
<domain bounce.test>
  bounce-after 3s
  retry-after 1s
  retry-recipients-after 1s
</domain>
<domain origin.test>
  bounce-after 1h
</domain>
<domain src.test>
  max-msg-per-connection 1
  max-smtp-out 1
</domain>
<domain crate.test>
  max-connect-rate 2/s
  max-msg-per-connection 1
</domain>
<domain dns.test>
  retry-after 1h
  retry-after-dns-error 2s
  max-smtp-out 1
</domain>
<domain newmail.test>
  retry-after 1h
  retry-upon-new-mail yes
  max-smtp-out 1
</domain>
<domain nonew.test>
  retry-after 1h
  max-smtp-out 1
</domain>
<virtual-mta vg>
  max-smtp-out 2
</virtual-mta>
<virtual-mta sv>
</virtual-mta>
<virtual-mta sr>
</virtual-mta>
<sender news@sender.test>
  vmta sv
  max-conn 1
</sender>
<sender promo@sender.test>
  vmta sr
  max-msg-rate 5/s
</sender>
"""


def fill(p, *args):
    qdir = os.path.join(p.spool, "queue")
    os.makedirs(qdir, exist_ok=True)
    r = subprocess.run([FILL] + list(args) + [qdir], capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise RuntimeError("qstore_fill failed: " + r.stderr)
    chown_spool(p)
    return [int(x) for x in r.stdout.split()]


def chown_spool(p):
    pw = pwd.getpwnam("pmta")
    for root, dirs, files in os.walk(p.spool):
        for n in [root] + [os.path.join(root, f) for f in files]:
            os.chown(n, pw.pw_uid, pw.pw_gid)


def qdump(p, body=False):
    r = subprocess.run([QDUMP] + (["-b"] if body else []) + [p.spool], capture_output=True,
                       text=True, timeout=60)
    return [json.loads(line) for line in r.stdout.splitlines() if line.strip()]


def qmgr_socket(p):
    return os.path.join(p.run_dir, "private", "qmgr")


def max_in_window(times, width=1.0):
    times = sorted(times)
    best, j = 0, 0
    for i, t in enumerate(times):
        while times[j] <= t - width:
            j += 1
        best = max(best, i - j + 1)
    return best


def near(value, want, tol):
    return want * (1 - tol) - 0.15 <= value <= want * (1 + tol) + 0.3


# --- run 1 ----------------------------------------------------------------------------

def answer_run1(q, msgid, index, attempt):
    if q.startswith(("retry.test", "bounce.test", "origin.test")):
        return (TEMPFAIL, 451, "4.3.0", "try later (%s)" % q.split("/")[0])
    return (OK, 250, "2.0.0", "ok")


RUN1_QUEUE = {}
QFAIL_OPENS = {"failing": {1, 2, 4}}


def open_fail_run1(queue, n):
    if queue.startswith("qfail.test") and n in QFAIL_OPENS["failing"]:
        return (TEMPFAIL, 0, "4.4.1", "no answer from host")
    if queue.startswith("dns.test") and n <= 2:
        return (TEMPFAIL, 0, "4.4.3", "DNS lookup of dns.test failed (SERVFAIL)")
    if queue.startswith(("newmail.test", "nonew.test")) and n == 1:
        return (TEMPFAIL, 0, "4.4.1", "no answer from host")
    return None


def run1(tap):
    with Pmta(name="qmgr1") as p:
        acct_path = os.path.join(p.spool, "acct.csv")
        p.write_config(CONFIG + "<acct-file %s>\n  records d,b,t,tq\n</acct-file>\n" % acct_path)
        ids = {}
        for name, n, r, extra in (("conc", 50, 1, []), ("rate", 60, 1, []), ("split", 1, 10, []),
                                  ("mpc", 6, 1, []), ("retry", 1, 1, []), ("qfail", 1, 1, []),
                                  ("bounce", 1, 1, []), ("src", 4, 1, ["-v", "rr"]),
                                  ("vga", 20, 1, ["-v", "vg"]), ("vgb", 20, 1, ["-v", "vg"]),
                                  ("sna", 15, 1, ["-v", "sv", "-s", "news@sender.test"]),
                                  ("snb", 15, 1, ["-v", "sv", "-s", "news@sender.test"]),
                                  ("sra", 10, 1, ["-v", "sr", "-s", "promo@sender.test"]),
                                  ("srb", 10, 1, ["-v", "sr", "-s", "promo@sender.test"]),
                                  ("crate", 8, 1, []), ("dns", 1, 1, []),
                                  ("newmail", 1, 1, []), ("nonew", 1, 1, []),
                                  ("few", 3, 1, []), ("many", 40, 1, [])):
            first, last = fill(p, "-n", str(n), "-r", str(r), "-d", name, *extra)
            queue = "%s.test/%s" % (name, extra[1] if extra else "{default}")
            for m in range(first, last + 1):
                RUN1_QUEUE[m] = queue
            ids[name] = (first, last)
        p.start()
        fake = FakeOut(qmgr_socket(p), answer=answer_run1, open_fail=open_fail_run1,
                       txn_delay=0.05)
        # The DSN of bounce.test goes to origin.test and is answered with 4xx:
        # learn its id when it appears (it is created by qmgr).
        fake.start()
        t0 = time.monotonic()

        # qfail: after the success (3rd open) a new message arrives without a hint.
        wait_for(lambda: len(fake.opens_for("qfail.test/{default}")) >= 3, timeout=12)
        time.sleep(0.5)
        first, last = fill(p, "-n", "1", "-r", "1", "-d", "qfail")
        RUN1_QUEUE[first] = "qfail.test/{default}"
        wait_for(lambda: len(fake.opens_for("qfail.test/{default}")) >= 5, timeout=10)
        wait_for(lambda: len(fake.txns_for("retry.test/{default}")) >= 4, timeout=15)
        wait_for(lambda: len(fake.results_for("sna.test/sv")) + len(fake.results_for("snb.test/sv"))
                 >= 30, timeout=15)
        wait_for(lambda: len(fake.results_for("sra.test/sr")) + len(fake.results_for("srb.test/sr"))
                 >= 20, timeout=15)
        wait_for(lambda: len(fake.results_for("crate.test/{default}")) >= 8, timeout=10)
        # retry-upon-new-mail: both queues are in retry mode (1 h) after their first open;
        # a new message for each arrives (found by the queue scan)
        wait_for(lambda: fake.opens_for("newmail.test/{default}") and
                 fake.opens_for("nonew.test/{default}"), timeout=10)
        time.sleep(0.5)
        for name in ("newmail", "nonew"):
            first, _ = fill(p, "-n", "1", "-r", "1", "-d", name)
            RUN1_QUEUE[first] = "%s.test/{default}" % name
        wait_for(lambda: len(fake.opens_for("newmail.test/{default}")) >= 2, timeout=15)
        wait_for(lambda: len(fake.opens_for("dns.test/{default}")) >= 3, timeout=10)
        time.sleep(1)
        # the DSN: a new message appears for origin.test
        wait_for(lambda: [m for m in qdump(p) if m.get("sender") == ""], timeout=5)
        dumped = qdump(p, body=True)
        elapsed = time.monotonic() - t0
        p.stop()
        log = p.log()
        try:
            with open(acct_path, newline="") as f:
                acct_rows = list(csv.reader(f))
        except OSError:
            acct_rows = []
    tap.diag("run 1 took %.1f s" % elapsed)

    # max-smtp-out 2
    conc = fake.results_for("conc.test/{default}")
    tap.ok(fake.max_concurrent.get("conc.test/{default}") == 2 and len(conc) == 50,
           "max-smtp-out 2: 50 recipients delivered over at most 2 (and at least 2) connections",
           "max %s, %d results" % (fake.max_concurrent.get("conc.test/{default}"), len(conc)))

    # connections ramp with the work (qmgr_conn.c, ramp_allows)
    few = fake.txns_for("few.test/{default}")
    tap.ok(len(fake.opens_for("few.test/{default}")) == 1 and len(few) == 3,
           "3 messages to one domain: one connection carries all three",
           "%d opens, %d transactions" % (len(fake.opens_for("few.test/{default}")), len(few)))
    many = fake.max_concurrent.get("many.test/{default}", 0)
    tap.ok(8 <= many <= 20 and len(fake.results_for("many.test/{default}")) == 40,
           "40 messages to one domain: 8 connections at once (4 messages each counted on),"
           " within max-smtp-out 20", "max %d" % many)

    # limits across every queue of one virtual MTA
    vg = len(fake.results_for("vga.test/vg")) + len(fake.results_for("vgb.test/vg"))
    tap.ok(vg == 40 and fake.max_concurrent_vmta.get("vg") == 2,
           "<virtual-mta> max-smtp-out 2: 40 recipients in 2 queues, never 3 connections in all",
           "%d results, max %s" % (vg, fake.max_concurrent_vmta.get("vg")))
    sv = len(fake.results_for("sna.test/sv")) + len(fake.results_for("snb.test/sv"))
    tap.ok(sv == 30 and fake.max_concurrent_vmta.get("sv") == 1,
           "<sender> max-conn 1: 30 recipients in 2 queues, one connection at a time",
           "%d results, max conns %s" % (sv, fake.max_concurrent_vmta.get("sv")))
    sr = fake.txns_for("sra.test/sr") + fake.txns_for("srb.test/sr")
    sr_times = [t for (t, _, _, _, idx) in sr for _ in idx]
    tap.ok(len(sr_times) == 20 and max_in_window(sr_times) <= 5,
           "<sender> max-msg-rate 5/s: no 1 s window above 5 over both of its queues",
           "%d recipients, busiest window %d" % (len(sr_times), max_in_window(sr_times)))

    # max-msg-rate 10/s
    rate = fake.txns_for("rate.test/{default}")
    times = [t for (t, _, _, _, idx) in rate for _ in idx]
    worst = max_in_window(times)
    span = times[-1] - times[0] if len(times) > 1 else 0
    avg = (len(times) - 1) / span if span else 0
    tap.ok(len(times) == 60 and worst <= 10,
           "max-msg-rate 10/s: never more than 10 recipients in any 1 s window (worst %d)" % worst,
           "%d recipients" % len(times))
    tap.ok(avg >= 8.0, "max-msg-rate 10/s: %.2f recipients/s on average over %.1f s" % (avg, span))

    # max-connect-rate 2/s
    co = [t for (t, _, _, _, _, _, _) in fake.opens_for("crate.test/{default}")]
    cspan = co[-1] - co[0] if len(co) > 1 else 0
    crate = (len(co) - 1) / cspan if cspan else 0
    tap.ok(len(co) == 8 and max_in_window(co) <= 2,
           "max-connect-rate 2/s: 8 connections, never more than 2 opened in any 1 s window",
           "%d opens, busiest window %d" % (len(co), max_in_window(co)))
    tap.ok(len(fake.results_for("crate.test/{default}")) == 8 and crate >= 1.5,
           "max-connect-rate 2/s: all 8 delivered at %.2f connections/s" % crate)

    # max-rcpt-per-transaction 3
    split = [len(idx) for (_, _, _, _, idx) in fake.txns_for("split.test/{default}")]
    tap.ok(split == [3, 3, 3, 1], "max-rcpt-per-transaction 3 splits 10 recipients 3+3+3+1",
           "got %s" % split)
    tap.ok(all(len(set(m for (_, _, _, m, _) in fake.txns_for("split.test/{default}"))) == 1
               for _ in [0]), "the split transactions carry one message")

    # max-msg-per-connection 2
    mpc = fake.txns_for("mpc.test/{default}")
    per_conn = {}
    for (_, cid, _, _, _) in mpc:
        per_conn[cid] = per_conn.get(cid, 0) + 1
    tap.ok(len(mpc) == 6 and sorted(per_conn.values()) == [2, 2, 2],
           "max-msg-per-connection 2: 6 messages over 3 connections of 2 transactions",
           "per connection: %s" % per_conn)

    # retry-after 2s,4s for recipients
    rt = [t for (t, _, _, _, _) in fake.txns_for("retry.test/{default}")]
    gaps = [b - a for a, b in zip(rt, rt[1:])]
    tap.ok(len(gaps) >= 3 and near(gaps[0], 2, 0.1) and near(gaps[1], 4, 0.1)
           and near(gaps[2], 4, 0.1),
           "retry-after 2s,4s: a deferred recipient is retried after 2 s, 4 s, 4 s",
           "gaps %s" % ["%.2f" % g for g in gaps])
    tap.ok(re.search(r"deferred \w+/0 to=u0\.0@retry\.test queue=retry\.test/\{default\} "
                     r"mx=mx\.retry\.test ip=127\.0\.0\.2 src=127\.0\.0\.1 status=4\.3\.0 "
                     r"reply=try later", log),
           "a deferral logs one line with recipient, queue, mx, ip, status and reply")

    # queue retry mode from connection failures, reset by a success
    qo = [t for (t, _, _, _, _, _, _) in fake.opens_for("qfail.test/{default}")]
    qg = [b - a for a, b in zip(qo, qo[1:])]
    tap.ok(len(qg) >= 4 and near(qg[0], 2, 0.1) and near(qg[1], 4, 0.1),
           "connection failures put the queue in retry mode: next tries after 2 s, then 4 s",
           "open gaps %s" % ["%.2f" % g for g in qg])
    tap.ok(len(qg) >= 4 and near(qg[3], 2, 0.1),
           "a success resets the retry schedule (2 s again after the next failure)",
           "open gaps %s" % ["%.2f" % g for g in qg])
    qfail_ok = [r for r in fake.results_for("qfail.test/{default}") if r[5] == OK]
    tap.ok(len(qfail_ok) == 2,
           "a message added without a hint is found by the periodic scan and delivered")
    tap.ok(re.search(r"queue qfail\.test/\{default\} in retry mode", log),
           "retry mode is logged")

    # retry-after-dns-error
    do = [t for (t, _, _, _, _, _, _) in fake.opens_for("dns.test/{default}")]
    dg = [b - a for a, b in zip(do, do[1:])]
    tap.ok(len(dg) >= 2 and near(dg[0], 2, 0.1) and near(dg[1], 2, 0.1),
           "retry-after-dns-error 2s: after a DNS failure (4.4.3) the next connection comes "
           "2 s later, not after retry-after 1h", "open gaps %s" % ["%.2f" % g for g in dg])
    # retry-upon-new-mail
    nm = fake.opens_for("newmail.test/{default}")
    nn = fake.opens_for("nonew.test/{default}")
    tap.ok(len(nm) == 2 and len(nn) == 1 and
           re.search(r"queue newmail\.test/\{default\} leaves retry mode: new mail", log),
           "retry-upon-new-mail: new mail ends retry mode at once (and only where it is set)",
           "newmail opens %d, nonew opens %d" % (len(nm), len(nn)))
    nm_ok = [r for r in fake.results_for("newmail.test/{default}") if r[5] == OK]
    tap.ok(len(nm_ok) == 2, "retry-upon-new-mail: both messages of the queue delivered",
           "%d delivered" % len(nm_ok))

    # bounce-after 3s
    bt = fake.txns_for("bounce.test/{default}")
    bounced = re.search(r"bounced \w+/0 to=u0\.0@bounce\.test queue=bounce\.test/\{default\} "
                        r".*status=5\.4\.7 reply=message expired, not delivered within "
                        r"bounce-after: try later", log)
    tap.ok(bounced and len(bt) >= 1, "bounce-after 3s: the failing recipient bounces as expired "
           "(5.4.7, with the last error)", "%d attempts" % len(bt))
    dsn = [m for m in dumped if m.get("sender") == ""]
    dsn_ok = False
    if dsn:
        m = dsn[0]
        text = json.dumps(m)
        dsn_ok = ("sender@origin.test" in text and "origin.test/{default}" in text
                  and "multipart/report" in text and "Action: failed" in text
                  and "Status: 5.4.7" in text and "4.4.7" not in text)
    tap.ok(dsn_ok, "the DSN is queued from <> to the sender, in origin.test/{default}",
           json.dumps(dsn)[:2000])
    tap.ok(not [m for m in dumped if m.get("msgid") in range(ids["bounce"][0], ids["bounce"][1] + 1)],
           "the bounced message is gone from the queue")

    # source IPs round-robin
    srcs = [(o[5], o[6]) for o in fake.opens_for("src.test/rr")]
    tap.ok(len(srcs) == 4 and srcs[0] != srcs[1] and srcs[0] == srcs[2] and srcs[1] == srcs[3]
           and {s[0] for s in srcs} == {"127.0.0.10", "127.0.0.11"},
           "two smtp-source-host lines are used round-robin per connection (IP and HELO)",
           "sources %s" % srcs)

    # nothing delivered twice, delivery log lines
    d = fake.delivered()
    tap.ok(len(d) == len(set(d)), "no recipient was delivered twice", "%d vs %d" % (len(d), len(set(d))))
    tap.ok(len(re.findall(r" delivered \w+/\d+ to=", log)) == len(d),
           "one 'delivered' log line per delivery")
    tap.ok(re.search(r"qmgr\[\d+\]: info: stopped", log), "qmgr stops cleanly")
    kinds = [r[0] for r in acct_rows[1:]]
    tap.ok(kinds.count("d") == len(d) and "b" in kinds and "t" in kinds and "tq" in kinds,
           "accounting: one d row per delivery, and b, t and tq rows",
           "rows by type: %s" % {k: kinds.count(k) for k in set(kinds)})


# --- run 3 ----------------------------------------------------------------------------

RUN3_CONFIG = """
smtp-out-processes 0
smtpd-processes 1
total-max-smtp-out 3
<domain hi.test>
  queue-priority 90
  max-msg-per-connection 1
</domain>
<domain lo.test>
  queue-priority 10
  max-msg-per-connection 1
</domain>
<domain tot0.test>
  max-msg-per-connection 1
</domain>
<domain tot1.test>
  max-msg-per-connection 1
</domain>
<domain tot2.test>
  max-msg-per-connection 1
</domain>
"""


def run3(tap):
    with Pmta(name="qmgr3") as p:
        p.write_config(RUN3_CONFIG)
        # lo first and hi last: store order must not decide who goes first
        fill(p, "-n", "8", "-r", "1", "-d", "lo")
        fill(p, "-n", "24", "-r", "1", "-q", "3", "-d", "tot")
        fill(p, "-n", "12", "-r", "1", "-d", "hi")
        p.start()
        fake = FakeOut(qmgr_socket(p), txn_delay=0.03).start()
        wait_for(lambda: len(fake.delivered()) >= 44, timeout=20)
        p.stop()
    fake.stop()
    queues = ["hi.test/{default}", "tot0.test/{default}", "tot1.test/{default}",
              "tot2.test/{default}", "lo.test/{default}"]
    txns = {q: [t for (t, _, _, _, _) in fake.txns_for(q)] for q in queues}
    served = {q: len(fake.results_for(q)) for q in queues}
    tap.ok(fake.max_concurrent_total == 3,
           "total-max-smtp-out 3: never more than 3 connections open over 5 queues (and 3 at once)",
           "max total %d" % fake.max_concurrent_total)
    tap.ok(served == {"hi.test/{default}": 12, "tot0.test/{default}": 8,
                      "tot1.test/{default}": 8, "tot2.test/{default}": 8, "lo.test/{default}": 8},
           "total-max-smtp-out 3: every queue is served in full", served)
    hi_last = max(txns["hi.test/{default}"] or [0])
    mid = txns["tot0.test/{default}"] + txns["tot1.test/{default}"] + txns["tot2.test/{default}"]
    lo_first = min(txns["lo.test/{default}"] or [0])
    tap.ok(mid and hi_last < min(mid),
           "queue-priority 90 gets every connection before the priority-50 queues get one",
           "hi last %.3f, first of the 50s %.3f" % (hi_last, min(mid or [0])))
    tap.ok(mid and lo_first > max(mid + [hi_last]),
           "queue-priority 10 gets its first connection only after every other queue's last",
           "lo first %.3f, last of the others %.3f" % (lo_first, max(mid + [hi_last])))
    opens = [o[2] for o in sorted(fake.opens)]
    tap.ok(opens[:3] == ["hi.test/{default}"] * 3,
           "the first 3 connections all go to the priority-90 queue", opens[:6])


# --- run 4 ----------------------------------------------------------------------------

RUN4_QUEUES = """
<source 127.0.0.1>
  always-allow-relaying yes
</source>
<domain rest.test>
  max-msg-rate 1/h
  connection-idle-timeout 10m
</domain>
"""
# (what, config, qstore_fill options, virtual MTA, rest.test's priority, need.test over SMTP)
RUN4_CONFIGS = (
    ("total-max-smtp-out 1", "total-max-smtp-out 1\n", [], "{default}", 50, True),
    ("a virtual MTA's max-smtp-out 1",
     "<virtual-mta vr>\n  max-smtp-out 1\n</virtual-mta>\n<domain rest.test>\n"
     "  queue-priority 90\n</domain>\n", ["-v", "vr"], "vr", 90, False),
)


def run4_inject(p, n):
    with smtplib.SMTP("127.0.0.1", p.port, timeout=10) as c:
        for i in range(n):
            c.sendmail("s@origin.test", ["x%d@need.test" % i], "Subject: %d\r\n\r\nbody\r\n" % i)


def run4_one(tap, what, cap, extra, vmta, prio, smtp):
    """REST takes the only connection and rests on it; NEED must get it at once.
    Under total-max-smtp-out a pass stops at the priority level where the cap
    binds, so both queues share one priority and NEED's mail arrives (over
    SMTP) once REST rests; under the VMTA cap REST's priority 90 orders them."""
    rest, need = "rest.test/" + vmta, "need.test/" + vmta
    with Pmta(name="qmgr4") as p:
        p.write_config("smtp-out-processes 0\nsmtpd-processes 1\n" + cap + RUN4_QUEUES)
        fill(p, "-n", "2", "-r", "1", "-d", "rest", *extra)
        if not smtp:
            fill(p, "-n", "3", "-r", "1", "-d", "need", *extra)
        p.start()
        fake = FakeOut(qmgr_socket(p), txn_delay=0.05).start()
        t0 = time.monotonic()
        if smtp:
            wait_for(lambda: len(fake.results_for(rest)) >= 1, timeout=10)
            time.sleep(0.3)     # the connection rests
            t0 = time.monotonic()
            run4_inject(p, 3)
        wait_for(lambda: len(fake.results_for(need)) >= 3, timeout=10)
        took = time.monotonic() - t0
        p.stop()
    fake.stop()
    rest_opens, need_opens = fake.opens_for(rest), fake.opens_for(need)
    rest_closes = [t for (t, _, q) in fake.closes if q == rest]
    tap.ok(len(fake.results_for(rest)) == 1 and len(rest_opens) >= 1 and len(need_opens) >= 1
           and rest_opens[0][0] < need_opens[0][0],
           "%s: the rate-limited queue opens first and delivers one message" % what,
           "rest results %d, opens %s / %s" % (len(fake.results_for(rest)), rest_opens,
                                               need_opens))
    tap.ok(len(fake.results_for(need)) == 3 and took < 5,
           "%s: a queue that cannot open a connection gets one in seconds" % what,
           "need.test served %d in %.1f s" % (len(fake.results_for(need)), took))
    tap.ok(rest_closes and need_opens and rest_closes[0] <= need_opens[0][0]
           and fake.max_concurrent_total == 1,
           "%s: qmgr closed the other queue's resting connection to make room" % what,
           "closes of rest %s, first open of need %s, max %s" % (
               rest_closes, need_opens[0][0] if need_opens else None, fake.max_concurrent_total))


def run4(tap):
    for args in RUN4_CONFIGS:
        run4_one(tap, *args)


# --- run 2 ----------------------------------------------------------------------------

def run2(tap):
    with Pmta(name="qmgr2") as p:
        # one message per connection: the 5 held ones go out at once, on 5 connections
        # (otherwise one connection would carry them in turn: qmgr_conn.c, ramp_allows)
        p.write_config("smtp-out-processes 0\nsmtpd-processes 1\n"
                       "<domain hold.test>\n  max-msg-per-connection 1\n</domain>\n")
        fill(p, "-n", "100", "-r", "10", "-q", "10", "-d", "rs")
        hold_first, hold_last = fill(p, "-n", "5", "-r", "1", "-d", "hold")
        p.start()
        m = p.wait_log(r"qmgr\[\d+\]: info: schedule rebuilt: (\d+) recipients in (\d+) queues",
                       timeout=15)
        tap.ok(m and m[0].group(1) == "1005" and m[0].group(2) == "11",
               "start-up rebuilds 1,005 queued recipients in 11 queues",
               m[0].group(0) if m else p.log()[-2000:])
        p.stop()
        mark = p.log_mark()
        p.start()
        m = p.wait_log(r"qmgr\[\d+\]: info: schedule rebuilt: (\d+) recipients in (\d+) queues",
                       timeout=15, since=mark)
        tap.ok(m and m[0].group(1) == "1005", "after a restart all 1,005 are rebuilt again")

        hold = set(range(hold_first, hold_last + 1))

        def answer1(queue, msgid, index, attempt):
            return None if msgid in hold else (OK, 250, "2.0.0", "ok")

        f1 = FakeOut(qmgr_socket(p), answer=answer1).start()
        wait_for(lambda: len(f1.delivered()) >= 1000 and len(f1.txns_for("hold.test/{default}")) >= 5,
                 timeout=20)
        f1_d = f1.delivered()
        f1_hold = [m for (_, _, _, m, _) in f1.txns_for("hold.test/{default}")]
        f1.stop()
        f2 = FakeOut(qmgr_socket(p)).start()
        wait_for(lambda: len(f2.delivered()) >= 5, timeout=10)
        time.sleep(0.5)
        f2_d = f2.delivered()
        f2.stop()
        p.stop()
    tap.ok(sorted(f1_hold) == sorted(hold) and len(f1_d) == 1000,
           "the first smtp-out delivered 1,000 and held the 5 in flight",
           "delivered %d, held %s" % (len(f1_d), f1_hold))
    tap.ok(sorted(m for (m, _) in f2_d) == sorted(hold),
           "after it died its 5 in-flight recipients were handed out again, once each",
           "second: %s" % f2_d)
    tap.ok(len(set(f1_d) | set(f2_d)) == 1005 and not set(f1_d) & set(f2_d),
           "every recipient was delivered exactly once")


def main():
    tap = Tap()
    require_root(tap)
    t0 = time.monotonic()
    try:
        run1(tap)
        run2(tap)
        run3(tap)
        run4(tap)
    finally:
        tap.diag("wall time %.1f s" % (time.monotonic() - t0))
    sys.exit(tap.done())


if __name__ == "__main__":
    main()
