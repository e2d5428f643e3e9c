#!/usr/bin/env python3
"""test_crash.py - no message that got a 250 is ever lost, none is half-stored.

Load comes from Postfix's smtp-source; the exact bookkeeping from our own
client pool (threads with raw SMTP, each recording a unique Message-ID only
after the 250). Case 1 SIGKILLs the cleanup worker mid-stream; case 2 SIGKILLs
the whole tree (pmtad first, then every worker) and restarts pmtad. Then
tools/pmta-qdump must show every acknowledged Message-ID, and every message
whole: its recipients, a header/body separator, a Message-ID header, and the
body the client sent.

A message may be in the queue without its client having seen the 250 (the
commit finished, the reply was lost with the crash): that is a duplicate on
retry, never a loss, and there can be at most one per client in flight.
"""
import base64
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

from pmtatest import Tap, Pmta, SmtpRaw, qdump, message_ids, require_root, wait_for

tap = Tap()
require_root(tap)
if not shutil.which("smtp-source"):
    sys.exit(tap.skip_all("smtp-source (Debian postfix) is not installed"))

CLIENTS = 8


class Client(threading.Thread):
    """Sends messages until stopped; ACKED holds the Message-IDs that got 250."""

    def __init__(self, port, tag, acked, lock):
        super().__init__(daemon=True)
        self.port, self.tag, self.acked, self.lock = port, tag, acked, lock
        self.stop = threading.Event()
        self.n = 0
        self.errors = 0

    def one(self, r):
        self.n += 1
        mid = "<crash-%s-%d@test>" % (self.tag, self.n)
        r.send("MAIL FROM:<c@example.test>\r\nRCPT TO:<a@example.test>\r\n"
               "RCPT TO:<b@other.test>\r\nDATA\r\n")
        if [r.code(), r.code(), r.code(), r.code()] != [250, 250, 250, 354]:
            raise RuntimeError("envelope refused")
        r.send("Message-ID: %s\r\nSubject: crash\r\n\r\n%s\r\n.\r\n" % (mid, ("body of %s " % mid) * 40))
        if r.code() == 250:
            with self.lock:
                self.acked.append(mid)
        else:
            raise RuntimeError("message refused")

    def run(self):
        r = None
        while not self.stop.is_set():
            try:
                if r is None:
                    r = SmtpRaw(self.port, timeout=10)
                    if r.code() != 220 or r.cmd("EHLO crash.test") != 250:
                        raise RuntimeError("no session")
                self.one(r)
            except Exception:          # noqa: BLE001 - crashes make any step fail
                self.errors += 1
                if r:
                    r.close()
                r = None
                time.sleep(0.05)
        if r:
            r.close()


def body_of(m):
    if m.get("body") is not None:
        return m["body"]
    return base64.b64decode(m.get("body_base64", "")).decode("latin-1")


def whole(m):
    """Recipients, header/body separator, Message-ID header present."""
    b = body_of(m)
    head = b.split("\r\n\r\n", 1)[0]
    return (m.get("nrcpt", 0) > 0 and len(m.get("recipients", [])) == m["nrcpt"]
            and "\r\n\r\n" in b and any(l.lower().startswith("message-id:") for l in head.split("\r\n")))


def load(p, seconds, kill):
    """Run smtp-source and the client pool; call KILL() in the middle."""
    acked, lock = [], threading.Lock()
    src = subprocess.Popen(["smtp-source", "-c", "-l", "2048", "-m", "100000", "-s", "10",
                            "-f", "from@example.test", "-t", "to@example.test",
                            "127.0.0.1:%d" % p.port],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    clients = [Client(p.port, "%s%d" % (kill.__name__, i), acked, lock) for i in range(CLIENTS)]
    for c in clients:
        c.start()
    time.sleep(seconds / 2)
    with lock:
        at_kill = len(acked)
    kill()
    time.sleep(seconds / 2)
    for c in clients:
        c.stop.set()
    for c in clients:
        c.join(20)
    src.kill()
    out = src.communicate()[0].decode(errors="replace")
    return acked, at_kill, out


with Pmta(name="test_crash") as p:
    p.write_config("""
<source 127.0.0.1>
    always-allow-relaying yes
    add-message-id-header yes
</source>
""", processes={"smtpd": 2, "cleanup": 1, "smtp-out": 0})
    p.start()
    p.wait_log(r"cleanup\[\d+\]: info: queue .* open", timeout=20)   # before the first qdump

    # --- case 1: SIGKILL cleanup mid-stream ---------------------------------------------------
    cleanup_pid = p.worker_pids("cleanup")[0]

    def kill_cleanup():
        os.kill(cleanup_pid, signal.SIGKILL)

    acked1, at_kill, src_out = load(p, 4, kill_cleanup)
    tap.diag("case 1: %d acknowledged (%d before the kill); smtp-source: %s"
             % (len(acked1), at_kill, src_out.strip().splitlines()[-1:] if src_out.strip() else "-"))
    tap.ok(at_kill > 0 and len(acked1) > at_kill, "case 1: messages were acknowledged before and after the kill")
    tap.ok(wait_for(lambda: p.worker_pids("cleanup") and p.worker_pids("cleanup")[0] != cleanup_pid, 10),
           "pmtad restarted cleanup")
    q = qdump(p.spool, body=True)
    ids = message_ids(q)
    ours = [i for i in ids if i and i.startswith("<crash-")]
    missing = set(acked1) - set(ours)
    tap.ok(not missing, "case 1: every acknowledged Message-ID is in the queue (%d)" % len(acked1),
           sorted(missing)[:10])
    extra = set(ours) - set(acked1)
    tap.ok(len(extra) <= CLIENTS, "case 1: at most one unacknowledged copy per client in flight (%d)" % len(extra))
    tap.ok(len(ours) == len(set(ours)),
           "case 1: no Message-ID stored twice")
    broken = [m["id"] for m in q if not whole(m)]
    tap.ok(q and not broken, "case 1: all %d queued messages are whole (smtp-source's included)" % len(q),
           broken[:10])
    tap.ok(len(q) > len(ours), "smtp-source's load reached the queue too (%d messages)" % (len(q) - len(ours)))

    # --- case 2: SIGKILL the whole tree, restart ---------------------------------------------------
    acked2, at_kill2, src_out = load(p, 4, p.kill_everything)
    tap.diag("case 2: %d acknowledged (%d before the kill)" % (len(acked2), at_kill2))
    tap.ok(at_kill2 > 0, "case 2: messages were acknowledged before the kill")
    tap.ok(not p.running() and not any(os.path.exists("/proc/%d" % pid) and
                                       open("/proc/%d/stat" % pid).read().split()[2] != "Z"
                                       for pid in [cleanup_pid]),
           "pmtad and its workers are gone")
    p.start()
    tap.ok(p.wait_workers({"smtpd": 2, "cleanup": 1}), "pmtad restarts on the same spool")
    q = qdump(p.spool, body=True)
    ids = message_ids(q)
    ours = [i for i in ids if i and i.startswith("<crash-")]
    acked = set(acked1) | set(acked2)
    missing = acked - set(ours)
    tap.ok(not missing, "case 2: every acknowledged Message-ID of both cases is in the queue (%d)" % len(acked),
           sorted(missing)[:10])
    tap.ok(len(set(ours) - acked) <= 2 * CLIENTS,
           "case 2: unacknowledged copies only from the clients in flight (%d)" % len(set(ours) - acked))
    broken = [m["id"] for m in q if not whole(m)]
    tap.ok(not broken, "case 2: all %d queued messages are whole after the restart" % len(q), broken[:10])
    s = SmtpRaw(p.port)
    s.code()
    s.cmd("EHLO after.test")
    s.send("MAIL FROM:<c@example.test>\r\nRCPT TO:<a@example.test>\r\nDATA\r\n")
    codes = [s.code(), s.code(), s.code()]
    s.send("Message-ID: <after@test>\r\n\r\nafter the crash\r\n.\r\n")
    tap.ok(codes == [250, 250, 354] and s.code() == 250, "the restarted pmtad accepts mail")
    s.close()

sys.exit(tap.done())
