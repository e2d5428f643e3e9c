#!/usr/bin/env python3
"""test_crash_delivery.py - the outbound half of the crash proof: kill -9 while
delivering loses no accepted message, and duplicates only what was in flight.

One pmtad (2 smtp-out processes) delivers crash.test through `smtp-hosts
[127.0.0.31]:PORT`, max-smtp-out MAX_OUT, to t/lib/testsmtpd.py, which logs
every message when it has read its final dot, saves it, and then holds it
DOT_DELAY s before the 250, so kills land mid-transaction. The test reads the
Message-ID of every saved copy. Per case, N messages (one recipient each, a
Message-ID unique to the case and the run) go in over smtplib from a few
threads; the ones that got 250 are "accepted". While they are being delivered:

  case A  kill -9 every smtp-out process, KILLS_A times (pmtad restarts them;
          the 6th death within 60 s is throttled: that restart waits 1 s)
  case B  kill -9 qmgr once (pmtad restarts it; it rebuilds from LMDB)
  case C  kill -9 the whole tree (pmtad first, then every worker), then start
          pmtad again on the same spool and configuration

then wait until the receiver has every accepted Message-ID and tools/pmta-qdump
shows an empty queue. Checked per case: every message accepted; the kills came
mid-delivery; none lost; the queue empty; nothing arrived that was not injected;
pmtad logged the deaths / the restart and the new qmgr found the queued
recipients; and the duplicates (copies beyond the first) stay within a bound:

  One recipient per message, and qmgr feeds a connection one transaction at a
  time, so at a kill each connection has at most one message in flight (the
  receiver has it, its result is not in qmgr yet).
  case A  qmgr survives and keeps every result it got: duplicates <= the
          connections qmgr reports lost with the killed processes, which is
          <= processes killed x MAX_OUT.
  case B, C  qmgr dies: besides the MAX_OUT in flight, the results it got but
          had not committed yet (its group commit runs every 20 ms, plus the
          fsync) are lost too; the receiver spends DOT_DELAY s on each message,
          so that is at most COMMIT_SLACK per connection:
          duplicates <= MAX_OUT x (1 + COMMIT_SLACK).
  And every copy but the last of a duplicated Message-ID arrived at most
  WINDOW s before a kill (or during it, give or take the receiver's LAG): a
  qmgr that re-sent older, finished recipients would fail here.
Finally every copy must be whole (the body ends with our END line).
"""
import os
import re
import signal
import smtplib
import sys
import threading
import time
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))

from pmtatest import Pmta, Tap, free_port, qdump, require_root, wait_for  # noqa: E402
from testsmtpd import TestSmtpd  # noqa: E402

RX_IP = "127.0.0.31"
DOMAIN = "crash.test"
N = 200             # messages per case
MAX_OUT = 4         # max-smtp-out of crash.test
DOT_DELAY = 0.1     # the receiver holds each message this long before its 250
COMMIT_SLACK = 2    # results per connection a qmgr kill may lose from the group commit
KILLS_A = 3
SMTP_OUT = 2        # smtp-out processes
WINDOW = (1 + COMMIT_SLACK) * DOT_DELAY + 0.2   # in flight at a kill: arrived at most this long before it
LAG = 0.5           # the receiver logs a message when it reads the dot: it may be this far behind
INJECTORS = 4       # SMTP client threads

tap = Tap()
require_root(tap)

RUN = uuid.uuid4().hex[:8]     # this run's Message-IDs cannot be anybody else's


def mid_of(case, i):
    return "<cd-%s-%s-%d@crash.test>" % (RUN, case, i)


def body_of(mid):
    return ("From: <sender@sender.test>\r\nTo: <r@%s>\r\nSubject: crash delivery\r\n"
            "Message-ID: %s\r\n\r\n%s" % (DOMAIN, mid, ("line of %s\r\n" % mid) * 20)
            + "END %s\r\n" % mid)


def inject(port, case):
    """Send N messages from INJECTORS threads; the Message-IDs that got 250, and all tried."""
    accepted, tried, lock = [], [], threading.Lock()

    def worker(k):
        s = None
        for i in range(k, N, INJECTORS):
            mid = mid_of(case, i)
            with lock:
                tried.append(mid)
            try:
                if s is None:
                    s = smtplib.SMTP("127.0.0.1", port, timeout=20)
                    s.ehlo("inject.test")
                s.sendmail("sender@sender.test", ["r%d@%s" % (i, DOMAIN)], body_of(mid).encode())
                with lock:
                    accepted.append(mid)
            except (smtplib.SMTPException, OSError):
                if s is not None:
                    try:
                        s.close()
                    except OSError:
                        pass
                s = None
        if s is not None:
            try:
                s.quit()
            except (smtplib.SMTPException, OSError):
                pass

    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(INJECTORS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return accepted, tried


class Arrivals:
    """What the receiver accepted: Message-ID -> the times its copies arrived; copies not whole."""

    def __init__(self, rx):
        self.rx = rx
        self.seen = set()
        self.copies = {}
        self.broken = []

    def update(self):
        for e in self.rx.events("data"):
            if e["file"] in self.seen:
                continue
            self.seen.add(e["file"])
            with open(e["file"], "rb") as f:
                data = f.read().decode("latin-1")
            mid = None
            for line in data.split("\r\n\r\n", 1)[0].split("\r\n"):
                if line.lower().startswith("message-id:"):
                    mid = line.split(":", 1)[1].strip()
            self.copies.setdefault(mid, []).append(e["t"])
            if mid is None or not data.endswith(body_of(mid).split("\r\n\r\n", 1)[1]):
                self.broken.append(e["file"])
        return self

    def of_case(self, case):
        prefix = "<cd-%s-%s-" % (RUN, case)
        return {m: sorted(t) for m, t in self.copies.items() if m and m.startswith(prefix)}


def queued_recipients(p):
    return sum(len(m.get("recipients", [])) for m in qdump(p.spool))


def cut_sessions(rx):
    """Receiver connections that ended without QUIT (a kill cut them)."""
    quits = {e["conn"] for e in rx.events("quit")}
    return {e["conn"] for e in rx.events("disconnect")} - quits


def wait_delivered(arr, case, count, timeout=15):
    return wait_for(lambda: len(arr.update().of_case(case)) >= count, timeout, interval=0.02)


class Kills:
    """The kills of one case: [(time before, time after, processes killed, delivered by then)]."""

    def __init__(self, arr, case):
        self.arr, self.case, self.events = arr, case, []

    def __call__(self, fn):
        before = time.time()
        n = fn()
        self.events.append((before, time.time(), n, len(self.arr.update().of_case(self.case))))

    def near(self, t):
        """Did T (when the receiver logged a copy) fall at most WINDOW before a kill, or during one
        (give or take the receiver's LAG)?"""
        return any(b - WINDOW <= t <= a + LAG for b, a, _, _ in self.events)


def run_case(p, rx, arr, case, kill, timeout=25):
    """Inject N messages, let KILL(kills) kill mid-delivery, wait until all arrived and the queue is empty."""
    mark = p.log_mark()
    cut_before = cut_sessions(rx)
    t0 = time.monotonic()
    accepted, tried = inject(p.port, case)
    kills = Kills(arr, case)
    kill(kills)

    def done():
        got = arr.update().of_case(case)
        return all(m in got for m in accepted) and queued_recipients(p) == 0
    finished = wait_for(done, timeout, interval=0.25)
    got = arr.update().of_case(case)
    dups = {m: t for m, t in got.items() if len(t) > 1}
    r = dict(accepted=accepted, got=got, finished=finished, mark=mark, kills=kills,
             lost=sorted(set(accepted) - set(got)), foreign=sorted(set(got) - set(tried)),
             ndups=sum(len(t) - 1 for t in got.values()), dups=dups,
             procs=sum(k[2] for k in kills.events), cut=len(cut_sessions(rx) - cut_before))
    tap.diag("case %s: accepted %d, delivered unique %d, duplicates %d, kills %d (%d processes); "
             "delivered at the kills %s; receiver sessions cut %d; %.1f s"
             % (case, len(accepted), len(got), r["ndups"], len(kills.events), r["procs"],
                [k[3] for k in kills.events], r["cut"], time.monotonic() - t0))
    return r


def common_checks(p, case, r, bound, bound_text, must_cut=True):
    tap.ok(len(r["accepted"]) == N, "case %s: all %d messages accepted (250)" % (case, N),
           "accepted %d" % len(r["accepted"]))
    delivered = [k[3] for k in r["kills"].events]
    tap.ok(delivered and all(0 < d < N for d in delivered) and (r["cut"] > 0 or not must_cut),
           "case %s: the kills landed mid-delivery (%s of %d delivered, %d receiver sessions cut)"
           % (case, delivered, N, r["cut"]))
    tap.ok(not r["lost"], "case %s: every accepted Message-ID arrived (%d)" % (case, len(r["accepted"])),
           "lost %d: %s" % (len(r["lost"]), r["lost"][:20]))
    left = qdump(p.spool)
    tap.ok(r["finished"] and not left, "case %s: the queue is empty (pmta-qdump)" % case,
           "%d messages left: %s" % (len(left), [(m["id"], m.get("recipients")) for m in left[:5]]))
    tap.ok(r["ndups"] <= bound, "case %s: duplicates %d <= %s" % (case, r["ndups"], bound_text),
           r["dups"])
    early = {m: t for m, t in r["dups"].items() if not all(r["kills"].near(x) for x in t[:-1])}
    tap.ok(not early, "case %s: every duplicate's earlier copies arrived at most %.1f s before a kill"
           % (case, WINDOW), "kills %s; %s" % ([k[:2] for k in r["kills"].events], early))
    tap.ok(not r["foreign"], "case %s: nothing arrived that was not injected" % case, r["foreign"][:10])


with Pmta(name="test_crash_delivery") as p, \
        TestSmtpd(["%s:%d" % (RX_IP, free_port(RX_IP))], {"delay": {"dot": DOT_DELAY}},
                  workdir=p.dir, name="rx") as rx:
    rx_port = int(rx.listen[0].rsplit(":", 1)[1])
    p.write_config("""
<source 127.0.0.1>
    always-allow-relaying yes
</source>
<domain %s>
    smtp-hosts [%s]:%d
    max-smtp-out %d
    retry-after 1s
    retry-recipients-after 1s
</domain>
""" % (DOMAIN, RX_IP, rx_port, MAX_OUT), processes={"smtpd": 2, "cleanup": 1, "smtp-out": SMTP_OUT})
    p.start()
    tap.ok(p.wait_workers({"smtpd": 2, "cleanup": 1, "qmgr": 1, "smtp-out": SMTP_OUT}),
           "pmtad runs with %d smtp-out processes" % SMTP_OUT)
    arr = Arrivals(rx)

    # --- case A: kill -9 every smtp-out process, KILLS_A times --------------------------------
    killed_a = []

    def kill_smtp_out(kills):
        for k in range(KILLS_A):
            wait_delivered(arr, "A", (k + 1) * N // (KILLS_A + 2))
            pids = p.worker_pids("smtp-out")

            def one():
                for pid in pids:
                    os.kill(pid, signal.SIGKILL)
                return len(pids)
            kills(one)
            killed_a.extend(pids)
            # pmtad throttles the 6th death within 60 s: that restart waits 1 s
            wait_for(lambda: len(set(p.worker_pids("smtp-out")) - set(pids)) == SMTP_OUT, 10)

    a = run_case(p, rx, arr, "A", kill_smtp_out)
    lost_conns = 0
    for m in re.finditer(r"qmgr\[\d+\]: info: smtp-out process (\d+) went away .*; (\d+) connections lost",
                         p.log_since(a["mark"])):
        if int(m.group(1)) in killed_a:
            lost_conns += int(m.group(2))
    # Only results in flight are lost: at most one transaction per connection the killed
    # processes had (qmgr logs how many), and those are at most max-smtp-out per process.
    common_checks(p, "A", a, min(lost_conns, a["procs"] * MAX_OUT),
                  "the %d connections qmgr lost (bounded by %d processes killed x max-smtp-out %d)"
                  % (lost_conns, a["procs"], MAX_OUT))
    deaths = len(p.wait_log(r"pmtad\[\d+\]: warning: smtp-out \(pid \d+\) killed by signal 9",
                            since=a["mark"], count=len(killed_a), timeout=5) or [])
    tap.ok(deaths == len(killed_a) and p.wait_workers({"smtp-out": SMTP_OUT}),
           "case A: pmtad logged the %d smtp-out deaths and restarted them" % deaths)

    # --- case B: kill -9 qmgr once ---------------------------------------------------------------
    def kill_qmgr(kills):
        wait_delivered(arr, "B", N // 3)
        old = p.worker_pids("qmgr")

        def one():
            os.kill(old[0], signal.SIGKILL)
            return 1
        kills(one)
        wait_for(lambda: p.worker_pids("qmgr") and p.worker_pids("qmgr") != old, 10)

    b = run_case(p, rx, arr, "B", kill_qmgr)
    common_checks(p, "B", b, MAX_OUT * (1 + COMMIT_SLACK),
                  "max-smtp-out %d x (1 in flight + %d awaiting qmgr's commit)" % (MAX_OUT, COMMIT_SLACK),
                  must_cut=False)     # smtp-out aborts its sessions when qmgr goes: not a promise
    rebuilt = p.wait_log(r"qmgr\[\d+\]: info: schedule rebuilt: ([1-9]\d*) recipients",
                         since=b["mark"], timeout=5)
    tap.ok(p.wait_log(r"pmtad\[\d+\]: warning: qmgr \(pid \d+\) killed by signal 9", since=b["mark"],
                      timeout=5) and rebuilt,
           "case B: pmtad logged qmgr's death; the new qmgr rebuilt its schedule from the queue (%s "
           "recipients)" % (rebuilt[0].group(1) if rebuilt else "no"))

    # --- case C: kill -9 the whole tree, restart on the same spool ------------------------------------
    def kill_tree(kills):
        wait_delivered(arr, "C", N // 3)

        def everything():
            n = len(p.worker_pids()) + 1
            p.kill_everything()
            return n
        kills(everything)
        tap.ok(not p.running() and not p.worker_pids(), "case C: pmtad and its workers are gone")
        p.start()

    c = run_case(p, rx, arr, "C", kill_tree)
    common_checks(p, "C", c, MAX_OUT * (1 + COMMIT_SLACK),
                  "max-smtp-out %d x (1 in flight + %d awaiting qmgr's commit)" % (MAX_OUT, COMMIT_SLACK))
    starts = len(p.wait_log(r"pmtad\[\d+\]: info: started", count=2, timeout=1) or [])
    rebuilt = p.wait_log(r"qmgr\[\d+\]: info: schedule rebuilt: ([1-9]\d*) recipients",
                         since=c["mark"], timeout=1)
    tap.ok(starts == 2 and rebuilt and p.wait_workers({"smtpd": 2, "cleanup": 1, "qmgr": 1,
                                                       "smtp-out": SMTP_OUT}),
           "case C: pmtad started again on the same spool; its qmgr found %s queued recipients"
           % (rebuilt[0].group(1) if rebuilt else "no"))

    # --- overall ---------------------------------------------------------------------------------------
    arr.update()
    tap.ok(not arr.broken, "every copy the receiver got is whole (%d copies)" % len(arr.seen),
           arr.broken[:10])
    tap.diag("total: accepted %d, delivered unique %d, duplicates %d, kills %d"
             % (sum(len(r["accepted"]) for r in (a, b, c)), sum(len(r["got"]) for r in (a, b, c)),
                sum(r["ndups"] for r in (a, b, c)), sum(len(r["kills"].events) for r in (a, b, c))))

sys.exit(tap.done())
