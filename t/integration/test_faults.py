#!/usr/bin/env python3
"""test_faults.py - resource faults: a full disk, a full LMDB map, receivers that fail.

Accepted mail is never lost, and nothing is counted delivered that was not.

case disk  The spool is on a small tmpfs (mount -t tmpfs -o size=DISK_MB m);
           delivery is paused (smtp-out-processes 0). EHLO advertises SIZE with
           the real limit (below the tmpfs' size: max-message-size is
           unlimited). First another file fills the disk behind cleanup's back:
           the next message gets 452 4.3.1 (a full disk in the commit used to
           give 451 4.3.0), what was queued is intact, and accepting resumes
           once the file is gone. Then messages of MSG_KB go in until the queue
           is full: 452 4.3.1, and once cleanup has sampled the space, MAIL
           with SIZE= gets it already (no upload). Every acknowledged Message-ID
           is in the queue. Delivery resumes (pmtad restarted with an smtp-out
           process): every acknowledged message arrives, once; qmgr records
           each delivery in the full queue (no error; a d record each in the
           accounting file); the queue is empty and accepting resumes.
case map   The same with queue-map-size MAP_MB on the normal disk. Before the
           fill, SIZE= checks at MAIL: above what the queue could ever hold ->
           552 5.3.4 (max-message-size unlimited); below that but above what is
           free now -> 452 4.3.1; a size that fits -> 250.
case peers Receivers that fail: one accepts TCP and never says a word (silent.test,
           smtp-greeting-timeout 2s), one resets the connection (RST) after the
           first line of DATA (reset.test), one takes the whole message and never
           answers the final dot (nodot.test, smtp-data-termination-timeout 2s).
           Each recipient is deferred and retried (retry-after 2s), never marked
           delivered: the accounting file has no d record for any of them and a
           t record for every deferral qmgr logged. Then the receivers work
           again and every message is delivered, with one d record each.

The tmpfs is unmounted in a finally; without mount(2) (not root, or in a
container that forbids it) case disk is skipped with the reason.
"""
import os
import pwd
import re
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))

from pmtatest import (Pmta, SmtpRaw, Tap, acct_rows, free_port, message_ids, qdump,  # noqa: E402
                      require_root, wait_for)
from testsmtpd import TestSmtpd  # noqa: E402

DISK_MB = 16
MAP_MB = 4
MSG_KB = 100

tap = Tap()
require_root(tap)


# --- SMTP, step by step (we need to know at which step a refusal came) --------------------------

def body_of(mid, kb):
    line = ("%s " % mid).ljust(76, "x") + "\r\n"
    return ("Subject: fault\r\nMessage-ID: %s\r\n\r\n" % mid) + line * (kb * 1024 // len(line))


def ehlo_size(port):
    """The SIZE value EHLO advertises (None: no number, or no SIZE at all)."""
    s = SmtpRaw(port)
    s.code()
    s.send("EHLO size.test\r\n")
    code, lines = s.reply()
    s.close()
    for l in lines:
        m = re.match(r"250[- ]SIZE(?: (\d+))?$", l)
        if m:
            return int(m.group(1)) if m.group(1) else None
    return None


def mail_reply(port, size):
    """The reply to MAIL FROM with SIZE=SIZE: (code, text)."""
    s = SmtpRaw(port)
    s.code()
    s.cmd("EHLO size.test")
    s.send("MAIL FROM:<s@sender.test> SIZE=%d\r\n" % size)
    code, lines = s.reply()
    s.send("QUIT\r\n")
    s.close()
    return code, text_of(lines)


def text_of(lines):
    """A reply's text without its code: "4.3.1 Insufficient system storage" """
    return " ".join(l[4:] for l in lines)


def send_one(port, mid, rcpt, kb, declare=False):
    """One message (DECLARE: with SIZE=): ("mail"|"rcpt"|"data"|"dot", code, text) of the step
    that ended it."""
    s = SmtpRaw(port, timeout=20)
    body = body_of(mid, kb)
    try:
        s.code()
        s.cmd("EHLO fill.test")
        for step, line in (("mail", "MAIL FROM:<s@sender.test>" +
                            (" SIZE=%d" % len(body) if declare else "")),
                           ("rcpt", "RCPT TO:<%s>" % rcpt), ("data", "DATA")):
            s.send(line + "\r\n")
            code, lines = s.reply()
            if code not in (250, 354):
                return step, code, text_of(lines)
        s.send(body + ".\r\n")
        code, lines = s.reply()
        s.send("QUIT\r\n")
        return "dot", code, text_of(lines)
    finally:
        s.close()


def fill(p, tag, rcpt_domain, limit=1000):
    """Send MSG_KB messages until the queue refuses one; (acknowledged Message-IDs, refusal)."""
    acked = []
    for i in range(limit):
        mid = "<%s-%d@faults.test>" % (tag, i)
        step, code, text = send_one(p.port, mid, "r%d@%s" % (i, rcpt_domain), MSG_KB)
        if code != 250:
            return acked, (step, code, text)
        acked.append(mid)
    return acked, None


def acct_path(p):
    """An accounting file in a directory the workers' user may write."""
    d = os.path.join(p.dir, "acct")
    os.makedirs(d, exist_ok=True)
    pw = pwd.getpwnam("pmta")
    os.chown(d, pw.pw_uid, pw.pw_gid)
    return os.path.join(d, "acct.csv")


class Arrived:
    def __init__(self, rx):
        self.rx = rx

    def ids(self):
        out = {}
        for e in self.rx.events("data"):
            out[e.get("msgid")] = out.get(e.get("msgid"), 0) + 1
        return out


# --- a queue that fills up, then drains ----------------------------------------------------------

def full_queue_case(case, p, rx_ip, extra, size_checks=None):
    """Fill P's queue with delivery paused; resume; everything acknowledged arrives."""
    acct = acct_path(p)
    with TestSmtpd(["%s:%d" % (rx_ip, free_port(rx_ip))], {"save": False}, workdir=p.dir,
                   name="rx-" + case) as rx:
        rx_port = int(rx.listen[0].rsplit(":", 1)[1])
        conf = """
<source 127.0.0.1>
    always-allow-relaying yes
</source>
<domain fill.test>
    smtp-hosts [%s]:%d
</domain>
<acct-file %s>
    records d,b,t,tq
</acct-file>
%s""" % (rx_ip, rx_port, acct, extra)
        p.write_config(conf, processes={"smtpd": 1, "cleanup": 1, "smtp-out": 0})
        p.start()
        tap.ok(p.wait_log(r"cleanup\[\d+\]: info: queue .* open", timeout=20),
               "%s: pmtad runs, delivery paused (smtp-out-processes 0)" % case)
        time.sleep(1.2)         # cleanup's first sample reaches smtpd
        size = ehlo_size(p.port)
        tap.diag("%s: EHLO advertises SIZE %s" % (case, size))
        pre = (size_checks(p, size) if size_checks else None) or []
        acked, refusal = fill(p, case, "fill.test")
        acked = pre + acked
        tap.ok(len(acked) > 5 and refusal and refusal[1] == 452 and refusal[2].startswith("4.3.1"),
               "%s: %d messages of %d KB acknowledged, then 452 4.3.1 (at %s)"
               % (case, len(acked), MSG_KB, refusal and refusal[0]), refusal)
        time.sleep(1.5)         # a fresh sample: smtpd knows the queue is full
        step, code, text = send_one(p.port, "<%s-late@faults.test>" % case, "late@fill.test",
                                    MSG_KB, declare=True)
        tap.ok(step == "mail" and code == 452 and text.startswith("4.3.1"),
               "%s: while full, MAIL with SIZE=%d KB gets 452 4.3.1 (no upload)" % (case, MSG_KB),
               (step, code, text))
        queued = message_ids(qdump(p.spool, body=True))
        tap.ok(set(acked) <= set(queued) and len(queued) == len(acked),
               "%s: every acknowledged message is queued, nothing else (%d)" % (case, len(queued)),
               "missing %s, extra %s" % (sorted(set(acked) - set(queued))[:5],
                                         sorted(set(queued) - set(acked))[:5]))
        tap.ok(p.wait_log(r"cleanup\[\d+\]: warning: queue full", timeout=1),
               "%s: cleanup logs that the queue is full" % case)
        # --- resume: an smtp-out process again --------------------------------------------
        p.stop()
        mark = p.log_mark()
        p.write_config(conf, processes={"smtpd": 1, "cleanup": 1, "smtp-out": 1})
        p.start()
        arr = Arrived(rx)
        done = wait_for(lambda: all(m in arr.ids() for m in acked) and not qdump(p.spool), 60,
                        interval=0.5)
        got = arr.ids()
        tap.ok(done and all(got.get(m) == 1 for m in acked),
               "%s: after resume every acknowledged message arrived once; the queue is empty"
               % case, "missing %d, duplicated %s, queue %d" % (
                   sum(1 for m in acked if m not in got),
                   [m for m in acked if got.get(m, 0) > 1][:5], len(qdump(p.spool))))
        errors = re.findall(r"qmgr\[\d+\]: error: .*", p.log_since(mark))
        tap.ok(not errors, "%s: qmgr recorded every delivery in the full queue" % case, errors[:5])
        ok = wait_for(lambda: send_one(p.port, "<%s-after@faults.test>" % case,
                                       "after@fill.test", MSG_KB)[1] == 250, 10, interval=0.5)
        tap.ok(ok, "%s: accepting resumes once deliveries made room" % case)
        wait_for(lambda: len([r for r in acct_rows(acct) if r["type"] == "d"]) > len(acked), 10)
        p.stop()
        rows = acct_rows(acct)
        d = [r for r in rows if r["type"] == "d" and r["rcpt"].endswith("@fill.test")]
        tap.ok(len(d) == len(acked) + 1 and not [r for r in rows if r["type"] in ("b", "t")],
               "%s: the accounting file has one d record per message and no b or t" % case,
               "%d d for %d messages; types %s" % (len(d), len(acked) + 1,
                                                 sorted({r["type"] for r in rows})))


def fill_file(path):
    """Write PATH until the file system is full; the bytes written."""
    n, chunk = 0, b"\0" * (64 << 10)
    with open(path, "wb", buffering=0) as f:
        try:
            while True:
                n += f.write(chunk)
        except OSError:
            pass
    return n


def someone_else_fills_the_disk(p, mnt):
    """A few messages queued, then another file takes the rest of the disk: the next message,
    sent before cleanup samples the space again, meets the full disk in its commit (LMDB's
    short write). 452 4.3.1, never 451; the queued messages are intact; accepting resumes
    when the file is gone. Returns the Message-IDs acknowledged."""
    acked = []
    for i in range(5):
        mid = "<disk-pre-%d@faults.test>" % i
        if send_one(p.port, mid, "pre%d@fill.test" % i, MSG_KB)[1] == 250:
            acked.append(mid)
    mark = p.log_mark()
    filler = os.path.join(mnt, "filler")
    taken = fill_file(filler)
    step, code, text = send_one(p.port, "<disk-filled@faults.test>", "filled@fill.test", MSG_KB)
    via_commit = p.wait_log(r"cleanup\[\d+\]: warning: transaction \d+ not queued: queue full",
                            since=mark, timeout=1)
    tap.diag("disk: another file took %d KB; the refusal came from %s" % (
        taken >> 10, "the commit (a short write)" if via_commit else "cleanup's sample"))
    tap.ok(len(acked) == 5 and code == 452 and text.startswith("4.3.1"),
           "disk: another file fills the disk: the next message gets 452 4.3.1, not 451",
           (step, code, text))
    queued = message_ids(qdump(p.spool, body=True))
    tap.ok(sorted(queued) == sorted(acked), "disk: the %d messages queued before are intact"
           % len(acked), queued)
    os.unlink(filler)
    ok = wait_for(lambda: send_one(p.port, "<disk-freed@faults.test>", "freed@fill.test",
                                   MSG_KB)[1] == 250, 5, interval=0.5)
    tap.ok(ok, "disk: the file removed, accepting resumes")
    return acked + ["<disk-freed@faults.test>"] if ok else acked


def mount_tmpfs(path, mb):
    """None when mounted, else why not."""
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%dm,mode=0755" % mb, "tmpfs", path],
                       capture_output=True, text=True)
    return None if r.returncode == 0 else (r.stderr.strip() or "mount exited %d" % r.returncode)


# --- case disk ------------------------------------------------------------------------------------------

mnt = tempfile.mkdtemp(prefix="test_faults.mnt.")
why = mount_tmpfs(mnt, DISK_MB)
if why:
    tap.skip("disk: a full spool file system", "cannot mount a tmpfs: %s" % why)
else:
    try:
        with Pmta(name="test_faults_disk") as p:
            p.spool = os.path.join(mnt, "spool")

            def disk_checks(p, size):
                tap.ok(size and 8 << 20 < size < DISK_MB << 20,
                       "disk: EHLO SIZE %s is what a %d MB spool can hold (max-message-size "
                       "unlimited)" % (size, DISK_MB))
                return someone_else_fills_the_disk(p, mnt)
            full_queue_case("disk", p, "127.0.0.61", "", disk_checks)
    finally:
        subprocess.run(["umount", mnt], capture_output=True)
        os.rmdir(mnt)


# --- case map -------------------------------------------------------------------------------------------

def map_sizes(p, size):
    tap.ok(size and 2 << 20 < size < MAP_MB << 20,
           "map: EHLO SIZE %s is what queue-map-size %dm can hold (max-message-size unlimited)"
           % (size, MAP_MB))
    code, text = mail_reply(p.port, (MAP_MB << 20) + 1)
    tap.ok(code == 552 and text.startswith("5.3.4"),
           "map: SIZE= above what the queue could ever hold gets 552 5.3.4 at MAIL", (code, text))
    code, text = mail_reply(p.port, size + 1)
    tap.ok(code == 552 and text.startswith("5.3.4"), "map: SIZE= one above the advertised SIZE: 552",
           (code, text))
    code, text = mail_reply(p.port, size // 2)
    tap.ok(code == 250, "map: SIZE= half of it: 250 (the queue is empty)", (code, text))
    half, refusal = [], None
    for i in range(size // 2 // (MSG_KB * 1024) + 1):     # a little over half full
        mid = "<map-half-%d@faults.test>" % i
        step, code, text = send_one(p.port, mid, "h%d@fill.test" % i, MSG_KB)
        if code != 250:
            refusal = (step, code, text)
            break
        half.append(mid)
    time.sleep(1.5)
    code, text = mail_reply(p.port, size // 2 + (256 << 10))
    tap.ok(not refusal and code == 452 and text.startswith("4.3.1"),
           "map: half full, SIZE= below the capacity but above the room left gets 452 4.3.1",
           (refusal, code, text))
    return half


with Pmta(name="test_faults_map") as p:
    full_queue_case("map", p, "127.0.0.62", "queue-map-size %dm\n" % MAP_MB, map_sizes)


# --- case peers: receivers that never answer, reset, never answer the dot -------------------------------

PEERS = (("silent.test", "127.0.0.63", {"silent": True}),
         ("reset.test", "127.0.0.64", {"reset_in_data": True}),
         ("nodot.test", "127.0.0.65", {"delay": {"dot": 3600}}))
PER_DOMAIN = 2

with Pmta(name="test_faults_peers") as p:
    acct = acct_path(p)
    ports = {d: free_port(ip) for d, ip, _ in PEERS}
    rxs = {d: TestSmtpd(["%s:%d" % (ip, ports[d])], script, workdir=p.dir, name="rx-" + d.split(".")[0])
           for d, ip, script in PEERS}
    for rx in rxs.values():
        rx.start()
    try:
        p.write_config("""
<source 127.0.0.1>
    always-allow-relaying yes
</source>
<acct-file %s>
    records d,b,t,tq
</acct-file>
<domain *>
    retry-after 2s
    retry-recipients-after 2s
    smtp-greeting-timeout 2s
    smtp-data-termination-timeout 2s
</domain>
""" % acct + "".join("<domain %s>\n    smtp-hosts [%s]:%d\n</domain>\n" % (d, ip, ports[d])
                     for d, ip, _ in PEERS), processes={"smtpd": 1, "cleanup": 1, "smtp-out": 1})
        p.start()
        sent = {}
        for d, _, _ in PEERS:
            for i in range(PER_DOMAIN):
                mid = "<peer-%s-%d@faults.test>" % (d.split(".")[0], i)
                rcpt = "p%d@%s" % (i, d)
                if send_one(p.port, mid, rcpt, 4)[1] == 250:
                    sent[rcpt] = mid
        tap.ok(len(sent) == PER_DOMAIN * len(PEERS), "peers: %d messages accepted" % len(sent))

        def deferrals():
            out = {r: 0 for r in sent}
            for m in re.finditer(r"qmgr\[\d+\]: info: deferred \S+ to=(\S+)", p.log()):
                if m.group(1) in out:
                    out[m.group(1)] += 1
            return out
        retried = wait_for(lambda: all(n >= 2 for n in deferrals().values()), 40, interval=0.5)
        tap.ok(retried, "peers: every recipient was deferred and retried (%s)" % deferrals())
        time.sleep(1.5)         # the accounting writer flushes every second
        rows = acct_rows(acct)
        ours = [r for r in rows if r.get("rcpt") in sent]
        logged = deferrals()
        t_count = {r: sum(1 for x in ours if x["type"] == "t" and x["rcpt"] == r) for r in sent}
        tap.ok(not [r for r in ours if r["type"] in ("d", "b")],
               "peers: no d (or b) record for any recipient a failing receiver had",
               [(r["type"], r["rcpt"]) for r in ours if r["type"] in ("d", "b")])
        tap.ok(all(t_count[r] >= logged[r] >= 2 for r in sent),
               "peers: a t record for every deferral qmgr logged", (t_count, logged))
        tq = [r for r in rows if r["type"] == "tq"]
        tap.ok(any("silent.test" in (r.get("queue") or "") for r in tq),
               "peers: the silent receiver's failed connections have tq records (%d)" % len(tq))
        drops = rxs["reset.test"].events("drop")
        tap.ok(drops and all(e.get("reset") for e in drops),
               "peers: reset.test reset %d connections mid-DATA" % len(drops))
        nodot = [e for e in rxs["nodot.test"].events("data")]
        tap.ok(nodot, "peers: nodot.test received %d whole messages it never answered" % len(nodot))
        # --- the receivers work again ------------------------------------------------------------
        for rx in rxs.values():
            rx.stop()
        good = {d: TestSmtpd(["%s:%d" % (ip, ports[d])], {}, workdir=p.dir,
                             name="ok-" + d.split(".")[0]) for d, ip, _ in PEERS}
        for rx in good.values():
            rx.start()
        try:
            def arrived():
                return {e.get("msgid") for rx in good.values() for e in rx.events("data")}
            tap.ok(wait_for(lambda: set(sent.values()) <= arrived() and not qdump(p.spool), 30,
                            interval=0.5),
                   "peers: once the receivers work, every message is delivered; the queue is empty")
            def d_counts():
                rows = acct_rows(acct)
                return {r: sum(1 for x in rows if x["type"] == "d" and x["rcpt"] == r)
                        for r in sent}
            # records are flushed about once a second: wait for them, then make sure none
            # comes twice
            wait_for(lambda: all(n >= 1 for n in d_counts().values()), 10, interval=0.25)
            time.sleep(1.5)
            d = d_counts()
            tap.ok(all(n == 1 for n in d.values()), "peers: then one d record per recipient", d)
        finally:
            for rx in good.values():
                rx.stop()
    finally:
        for rx in rxs.values():
            rx.stop()

sys.exit(tap.done())
