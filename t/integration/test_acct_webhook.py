#!/usr/bin/env python3
"""test_acct_webhook.py - <acct-file> format json and <acct-webhook URL> against a real pmtad.

pmtad delivers to t/lib/testsmtpd.py (ok* delivered, bad* bounced) and writes the same records
to a CSV <acct-file> and to one with format json: every JSON line is an object whose fields
are the CSV's columns with the same values (header_Subject too, numbers as numbers). An
<acct-webhook> POSTs them to a local HTTP receiver that fails every third request (503) and,
for a while, everything: all records still arrive, in batches of at most max-batch-records,
and delivery never waited for the webhook. pmtad is stopped while the receiver refuses
everything and started again: the records written before the stop are sent after the start
(none lost; duplicates counted, allowed: at least once). A second webhook whose receiver is
not there fills its backlog-max-size: the newest records are dropped, with a warning.
"""
import csv
import http.server
import json
import os
import smtplib
import sys
import threading
import time

from pmtatest import Pmta, Tap, free_port, require_root, wait_for
from testsmtpd import TestSmtpd

tap = Tap()
BATCH = 3


class Receiver(http.server.BaseHTTPRequestHandler):
    """POSTed batches: every third request, or every one while FAIL_ALL, gets 503."""
    lock = threading.Lock()
    batches = []
    requests = 0
    failed = 0
    fail_all = False

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        with Receiver.lock:
            Receiver.requests += 1
            fail = Receiver.fail_all or Receiver.requests % 3 == 0
            if fail:
                Receiver.failed += 1
            else:
                Receiver.batches.append((self.headers.get("Content-Type"), json.loads(body)))
        self.send_response(503 if fail else 200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def received():
    with Receiver.lock:
        return [r for _, b in Receiver.batches for r in b]


def send(p, rcpts, subject):
    with smtplib.SMTP("127.0.0.1", p.port, timeout=30) as s:
        s.sendmail("", rcpts,  # the null sender: a bounce makes no DSN (one record per rcpt)
                   "Subject: %s\r\nX-Job: jobX\r\n\r\nbody\r\n" % subject)


def csv_rows(path):
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def json_rows(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(l) for l in f if l.strip()]


def format_tests(csv_path, json_path):
    rows, objs = csv_rows(csv_path), json_rows(json_path)
    tap.ok(len(objs) == len(rows) and len(rows) >= 12, "format json: one object per record, as "
           "many as the CSV has", (len(rows), len(objs)))
    header = list(rows[0].keys()) if rows else []
    by_key = {(o["type"], o.get("rcpt")): o for o in objs}
    mismatch = []
    for row in rows:
        o = by_key.get((row["type"], row["rcpt"]))
        if o is None or not set(o) <= set(header):
            mismatch.append((row, o))
            continue
        for k, v in o.items():
            want = row[k]
            got = "" if v is None else str(v)
            if got != want:
                mismatch.append((k, want, v))
    tap.ok(rows and not mismatch, "format json: the CSV's fields, the same values", mismatch[:3])
    d = [o for o in objs if o["type"] == "d"]
    tap.ok(d and all(isinstance(o["dlvSize"], int) and o["header_Subject"].startswith("hook ")
                     and o["jobId"] == "jobX" and o["dsnStatus"].startswith("2.0.0")
                     for o in d),
           "format json: numbers as numbers, header_X and jobId fields", d[:1])
    tap.ok(any(o["type"] == "r" for o in objs) and
           all("dsnStatus" not in o for o in objs if o["type"] == "r"),
           "format json: each type only with its own fields", [o for o in objs if o["type"] == "r"][:1])


def main():
    require_root(tap)
    rx_port, hook_port, dead_port = free_port(), free_port(), free_port()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", hook_port), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    with TestSmtpd(["127.0.0.1:%d" % rx_port], {}) as rx, Pmta(name="webhook") as p:
        acct_csv = os.path.join(p.dir, "acct.csv")
        acct_json = os.path.join(p.dir, "acct.jsonl")
        p.write_config("""
<source 127.0.0.1>
    always-allow-relaying yes
    process-x-job yes
</source>
<domain *>
    smtp-hosts [127.0.0.1]:%(rx)d
    retry-after 1h
</domain>
<acct-file %(csv)s>
    records d,b,r
    record-fields d *,header_Subject
</acct-file>
<acct-file %(json)s>
    format json
    records d,b,r
    record-fields d *,header_Subject
</acct-file>
<acct-webhook http://127.0.0.1:%(hook)d/records>
    records d,b
    max-batch-records %(batch)d
    retry-interval 2s
    write-timeout 10s
</acct-webhook>
<acct-webhook http://127.0.0.1:%(dead)d/nobody>
    records d,b,r
    backlog-max-size 2k
</acct-webhook>
""" % {"rx": rx_port, "csv": acct_csv, "json": acct_json, "hook": hook_port,
       "dead": dead_port, "batch": BATCH})
        os.chmod(p.dir, 0o777)  # qmgr (pmta) writes the accounting files here
        p.start()
        first = ["ok%d@hook.test" % i for i in range(8)] + ["bad%d@hook.test" % i for i in range(2)]
        for i, r in enumerate(first):
            send(p, [r], "hook %d" % i)
        tap.ok(wait_for(lambda: {r["rcpt"] for r in received()} >= set(first), timeout=60),
               "webhook: every d and b record arrives although every third POST fails",
               (len(received()), Receiver.failed))
        tap.ok(Receiver.failed > 0 and all(ct == "application/json" and 1 <= len(b) <= BATCH
                                           for ct, b in Receiver.batches),
               "webhook: JSON arrays of at most max-batch-records, failures retried",
               [(ct, len(b)) for ct, b in Receiver.batches])
        tap.ok(all(r["type"] in ("d", "b") for r in received()) and
               {r["rcpt"] for r in received() if r["type"] == "b"} ==
               {"bad0@hook.test", "bad1@hook.test"},
               "webhook: records d,b only, bounces as b", received()[:2])
        wait_for(lambda: len(csv_rows(acct_csv)) >= 20, timeout=15)
        format_tests(acct_csv, acct_json)

        # the receiver refuses everything; pmtad goes on delivering, then stops and starts
        Receiver.fail_all = True
        second = ["late%d@hook.test" % i for i in range(6)]
        for i, r in enumerate(second):
            send(p, [r], "late %d" % i)
        tap.ok(wait_for(lambda: len([e for e in rx.events("rcpt") if e["to"].startswith("late")])
                        == 6, timeout=30),
               "delivery goes on while the webhook fails")
        wait_for(lambda: len([r for r in csv_rows(acct_csv) if r["rcpt"].startswith("late")])
                 == 6, timeout=15)
        time.sleep(2)
        p.stop()
        backlogs = [f for f in os.listdir(p.spool) if f.startswith("acct-webhook-") and
                    f.endswith(".jsonl")]
        late_in_backlog = 0
        for f in backlogs:
            with open(os.path.join(p.spool, f)) as fh:
                late_in_backlog += fh.read().count('"late')
        tap.ok(late_in_backlog >= 6, "stopped: the unsent records wait in the backlog on disk",
               (backlogs, late_in_backlog))
        Receiver.fail_all = False
        p.start()
        tap.ok(wait_for(lambda: {r["rcpt"] for r in received()} >= set(first + second),
                        timeout=60),
               "restarted: the records written before the stop are sent (none lost)",
               sorted({r["rcpt"] for r in received()} ^ set(first + second)))
        rcpts = [r["rcpt"] for r in received()]
        dups = len(rcpts) - len(set(rcpts))
        tap.diag("duplicates (at least once): %d of %d records" % (dups, len(rcpts)))
        tap.ok(wait_for(lambda: "backlog" in p.log() and "full (backlog-max-size" in p.log(),
                        timeout=20),
               "a full backlog drops the newest records, with a warning",
               [l for l in p.log().splitlines() if "acct-webhook" in l][-3:])
        tap.ok("acct-webhook http://127.0.0.1:%d/records: POST of" % hook_port in p.log(),
               "a failed POST is logged", "")
        p.stop()
        tap.ok(not p.sanitizer_reports(), "no sanitizer reports", p.sanitizer_reports())
    server.shutdown()
    sys.exit(tap.done())


if __name__ == "__main__":
    main()
