#!/usr/bin/python3
"""test_cleanup.py - the cleanup worker, driven over its internal socket.

Starts pmtad (t/lib/pmtatest.py), connects to RUNDIR/private/cleanup as smtpd
would, speaks the mailproto frames (t/lib/pmtaipc.py) and looks into the
queue with tools/pmta-qdump. Covers: a 3-recipient message stored once with 3
recipient records and the right queue names; Received with the queue id;
Message-ID/Date per the source's flags; X-Virtual-MTA (selection, removal,
pools in turn, unknown -> 550 5.7.1, or {default} with reject-invalid-virtual-mta
no, or invalid-virtual-mta-fallback; empty with allow-empty-x-virtual-mta);
retain-x-virtual-mta, retain-x-job, process-x-envid, jobid-header; the
source's <pattern-list> (mail-from,
rcpt-to and header Subject entries, first match in file order, only through
the <source> that names it, below X-Virtual-MTA), the listener's source= and
its default-virtual-mta over the client address's; the seed's <sender> block; DKIM signed
and verified by dkimpy (domain-key and the seed's dkim-selector/dkim-key-file;
dkim-headers-canon and dkim-body-canon simple vs relaxed, dkim-algorithm,
dkim-headers); hide-message-source;
ABORT; a malformed frame closing only its connection; a full map (queue-map-size
1m: 452 4.3.1) that keeps serving; 200 concurrent messages on 4 connections
grouped into fewer commits; a reload with a transaction in flight;
sync-msg-create yes/no seen as fdatasync calls or none (strace).

Prints TAP. Needs root (pmtad drops privileges to the worker user).
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import dkim

from pmtatest import Pmta, Tap, count_syscalls, require_root, wait_for
from pmtaipc import CleanupConn, frame, MP_TXN_RCPT, F_U32, F_STR

BUILDDIR = os.environ.get("PMTA_BUILDDIR", os.getcwd())
SRCDIR = os.environ.get("PMTA_SRCDIR", BUILDDIR)
QDUMP = os.path.join(BUILDDIR, "tools", "pmta-qdump")
DATA = os.path.join(SRCDIR, "t", "data")

with open(os.path.join(DATA, "dkim", "test.txt"), "rb") as f:
    TXT_RECORD = f.read().strip()
with open(os.path.join(DATA, "dkim", "test-ed25519.txt"), "rb") as f:
    ED_TXT_RECORD = f.read().strip()
with open(os.path.join(SRCDIR, "conf", "seed", "seed-sender.conf")) as f:
    SEED_SENDER = f.read()



def config_extra(key, edkey):
    # queue only: these tests inspect what cleanup stored, so nothing may be delivered
    return """
smtp-out-processes 0
<virtual-mta mta1>
    smtp-source-host 127.0.0.11 mta1.test
</virtual-mta>
<virtual-mta mta2>
    smtp-source-host 127.0.0.12 mta2.test
</virtual-mta>
<virtual-mta-pool pool1>
    virtual-mta mta1
    virtual-mta mta2
</virtual-mta-pool>
<source 127.0.0.1>
    always-allow-relaying yes
    process-x-virtual-mta yes
    process-x-job yes
    add-message-id-header yes
    add-date-header yes
</source>
<source bare>
    add-received-header no
    add-message-id-header no
    add-date-header no
</source>
<virtual-mta pl-from>
    smtp-source-host 127.0.0.21 pl-from.test
</virtual-mta>
<virtual-mta pl-rcpt>
    smtp-source-host 127.0.0.22 pl-rcpt.test
</virtual-mta>
<virtual-mta pl-subj>
    smtp-source-host 127.0.0.23 pl-subj.test
</virtual-mta>
<virtual-mta listen-vmta>
    smtp-source-host 127.0.0.24 listen.test
</virtual-mta>
<virtual-mta ip-vmta>
    smtp-source-host 127.0.0.25 ip.test
</virtual-mta>
# file order: header, then rcpt-to, then mail-from
<pattern-list routes>
    header Subject /^Routed\\b/ virtual-mta=pl-subj
    rcpt-to /@rcpt-route\\.test$/ virtual-mta=pl-rcpt
    mail-from /^bulk@/ virtual-mta=pl-from
</pattern-list>
<source routed>
    pattern-list routes
    default-virtual-mta listen-vmta
</source>
<source listen>
    default-virtual-mta listen-vmta
</source>
<source 127.0.0.2>
    default-virtual-mta ip-vmta
</source>
<source retain>
    process-x-virtual-mta yes
    retain-x-virtual-mta yes
    process-x-job yes
    retain-x-job yes
    process-x-envid yes
</source>
<source jobhdr>
    process-x-job yes
    jobid-header Message-ID
</source>
<source hidden>
    hide-message-source yes
</source>
<source lenient>
    process-x-virtual-mta yes
    reject-invalid-virtual-mta no
    allow-empty-x-virtual-mta yes
</source>
domain-key s1,example.com,%(key)s
domain-key ed,example.com,%(edkey)s
<domain signed.test>
    dkim-sign yes
</domain>
<domain simple.test>
    dkim-sign yes
    dkim-headers-canon simple
    dkim-body-canon simple
    dkim-algorithm rsa-sha256
</domain>
<domain mixed.test>
    dkim-sign yes
    dkim-headers-canon simple
</domain>
<domain hdrs.test>
    dkim-sign yes
    dkim-headers subject,date
</domain>
# Ed25519 and RSA, as providers recommend (the Ed25519 key comes second in
# the file: each algorithm takes the first key of its own type)
<domain dual.test>
    dkim-sign yes
    dkim-algorithm ed25519-sha256, rsa-sha256
</domain>
<domain seed.test>
    dkim-sign yes
    dkim-identity @brand.example
    dkim-selector wild
    dkim-key-file %(key)s
</domain>
""" % {"key": key, "edkey": edkey} + SEED_SENDER


KEY_RECORDS = {
    "s1._domainkey.example.com": TXT_RECORD,
    "wild._domainkey.brand.example": TXT_RECORD,
    "ed._domainkey.example.com": ED_TXT_RECORD,
}


def dnsfunc(name, timeout=5):
    return KEY_RECORDS.get(name.decode().rstrip("."))


def verify_all(body):
    """(every DKIM-Signature of BODY verifies with dkimpy, [a= of each, top first])"""
    try:
        d = dkim.DKIM(body)
        sigs = [v for k, v in d.headers if k.lower() == b"dkim-signature"]
        algs = [re.search(rb"a=([\w-]+)", v).group(1).decode() for v in sigs]
        return bool(sigs) and all(d.verify(idx=i, dnsfunc=dnsfunc)
                                  for i in range(len(sigs))), algs
    except Exception as e:  # a verifier crash is a failure
        return False, [repr(e)]


def qdump(p, body=False):
    args = [QDUMP] + (["-b"] if body else []) + [p.spool]
    r = subprocess.run(args, capture_output=True, text=True, timeout=60)
    return [json.loads(line) for line in r.stdout.splitlines() if line.strip()]


def find(msgs, msgid):
    return next((m for m in msgs if m["msgid"] == msgid), None)


def body_of(p, msgid):
    r = subprocess.run([QDUMP, "-b", "-m", str(msgid), p.spool], capture_output=True,
                       text=True, timeout=60)
    lines = [json.loads(l) for l in r.stdout.splitlines() if l.strip()]
    return lines[0]["body"] if lines else ""


def headers(body):
    return body.split("\r\n\r\n", 1)[0]


class Sender:
    """Transaction ids and one-shot sends over one connection."""

    def __init__(self, path):
        self.path = path
        self.conn = CleanupConn(path)
        self.next_id = 1

    def send(self, sender, rcpts, content, **kw):
        tid = self.next_id
        self.next_id += 1
        self.conn.message(tid, sender, rcpts, content, **kw)
        return self.conn.result(tid)


def simple(subject, extra=b"", sender=b"a@example.com"):
    return (b"From: <" + sender + b">\r\nTo: <r@y.test>\r\nSubject: " + subject + b"\r\n"
            + extra + b"\r\nHello.\r\n")


# --- the checks ------------------------------------------------------------------

def check_basic(tap, p, s):
    r = s.send("a@example.com", ["one@y.test", "two@Y.TEST", "three@z.test"], simple(b"basic"))
    tap.ok(r and r.code == 250 and r.enhanced == "2.0.0" and r.msgid > 0,
           "3 recipients: 250 2.0.0 with a message id", r)
    qid = "%020X" % r.msgid
    tap.ok(r and r.text == "Ok: queued as " + qid, "reply names the queue id", r)
    msgs = [m for m in qdump(p) if m["msgid"] == r.msgid]
    tap.ok(len(msgs) == 1 and len(msgs[0]["recipients"]) == 3,
           "stored once, with 3 recipient records", msgs)
    queues = [x["queue"] for x in msgs[0]["recipients"]] if msgs else []
    tap.ok(queues == ["y.test/{default}", "y.test/{default}", "z.test/{default}"],
           "queue names are domain/vmta with lower-cased domains", queues)
    body = body_of(p, r.msgid)
    tap.ok(re.search(r"^Received: .*\r\n\tby mta\.test\.example \(openpmta\) with ESMTP id "
                     + qid + ";", body, re.M | re.S) is not None,
           "Received carries the queue id", headers(body))
    h = headers(body)
    tap.ok(re.search(r"^Message-ID: <[^>]+@mta\.test\.example>", h, re.M | re.I) and
           re.search(r"^Date: ", h, re.M), "Message-ID and Date added (source flags)", h)
    tap.ok(p.wait_log(r"cleanup\[\d+\]: info: queued %s from=<a@example.com> nrcpt=3 "
                      r"size=\d+ vmta=\{default\} dkim=unsigned" % qid),
           "one log line per message")


def check_hidden_source(tap, p, s):
    r = s.send("a@example.com", ["x@y.test"], simple(b"hidden"), listener_source="hidden")
    shown = headers(body_of(p, r.msgid)) if r and r.code == 250 else ""
    r = s.send("a@example.com", ["x@y.test"], simple(b"shown"))
    plain = headers(body_of(p, r.msgid)) if r and r.code == 250 else ""
    tap.ok("client.test" in plain and "127.0.0.1" in plain and shown.startswith("Received: ")
           and "client.test" not in shown and "127.0.0.1" not in shown,
           "hide-message-source yes: Received without the feeder's name and address",
           (shown[:300], plain[:300]))


def check_bare_source(tap, p, s):
    r = s.send("a@example.com", ["x@y.test"], simple(b"bare"), listener_source="bare")
    h = headers(body_of(p, r.msgid)) if r and r.code == 250 else ""
    tap.ok(r and r.code == 250 and "Received:" not in h and "Message-ID:" not in h
           and "\nDate:" not in h, "named source without Received/Message-ID/Date", h)


def check_vmta(tap, p, s):
    r = s.send("a@example.com", ["x@y.test"], simple(b"vmta", b"X-Virtual-MTA: mta2\r\n"))
    m = find(qdump(p), r.msgid) if r else None
    body = body_of(p, r.msgid) if r and r.code == 250 else ""
    tap.ok(m and m["recipients"][0]["queue"] == "y.test/mta2" and m["vmta"] == "mta2",
           "X-Virtual-MTA selects the virtual MTA", m)
    tap.ok(body and "X-Virtual-MTA" not in body, "X-Virtual-MTA is removed")
    got = set()
    for i in range(2):
        r = s.send("a@example.com", ["x@y.test"], simple(b"pool", b"X-Virtual-MTA: pool1\r\n"))
        m = find(qdump(p), r.msgid) if r and r.code == 250 else None
        if m:
            got.add(m["recipients"][0]["queue"])
    tap.ok(got == {"y.test/mta1", "y.test/mta2"}, "a pool gives its members in turn", got)
    r = s.send("a@example.com", ["x@y.test"], simple(b"bad", b"X-Virtual-MTA: nosuch\r\n"))
    tap.ok(r and r.code == 550 and r.enhanced == "5.7.1" and r.msgid == 0,
           "unknown virtual MTA: 550 5.7.1", r)
    r = s.send("transactional@service.example.com", ["x@y.test"], simple(b"sender"))
    m = find(qdump(p), r.msgid) if r and r.code == 250 else None
    tap.ok(m and m["recipients"][0]["queue"] == "y.test/txn-vmta"
           and m["bounce_sender"] == "bounces+service@example.com",
           "<sender> block selects txn-vmta and records bounce-sender", m)
    r = s.send("transactional@service.example.com", ["x@y.test"],
               simple(b"both", b"X-Virtual-MTA: mta1\r\n"))
    m = find(qdump(p), r.msgid) if r and r.code == 250 else None
    tap.ok(m and m["recipients"][0]["queue"] == "y.test/mta1",
           "X-Virtual-MTA wins over the <sender> block", m)


def queues_of(p, r):
    """The queue of each recipient of the message of result R, in order (None if not stored)."""
    m = find(qdump(p), r.msgid) if r and r.code == 250 else None
    return [x["queue"] for x in m["recipients"]] if m else None


def check_pattern_list(tap, p, s):
    """<pattern-list routes> through <source routed>; listener source= and default-virtual-mta."""
    def send(sender, rcpts, subject, extra=b"", **kw):
        return queues_of(p, s.send(sender, rcpts, simple(subject, extra, sender.encode()), **kw))

    q = send("bulk@example.com", ["x@y.test"], b"plain", listener_source="routed")
    tap.ok(q == ["y.test/pl-from"], "pattern-list mail-from /^bulk@/ selects pl-from", q)
    q = send("a@example.com", ["a@y.test", "b@rcpt-route.test"], b"plain",
             listener_source="routed")
    tap.ok(q == ["y.test/pl-rcpt", "rcpt-route.test/pl-rcpt"],
           "pattern-list rcpt-to: one matching recipient routes the whole message", q)
    q = send("a@example.com", ["x@y.test"], b"Routed news", listener_source="routed")
    tap.ok(q == ["y.test/pl-subj"], "pattern-list header Subject selects pl-subj", q)
    q = send("bulk@example.com", ["x@rcpt-route.test"], b"Routed news",
             listener_source="routed")
    tap.ok(q == ["rcpt-route.test/pl-subj"],
           "all three entries match: the first in file order (header) wins", q)
    q = send("bulk@example.com", ["x@rcpt-route.test"], b"plain", listener_source="routed")
    tap.ok(q == ["rcpt-route.test/pl-rcpt"],
           "rcpt-to and mail-from match: rcpt-to, earlier in the file, wins", q)
    q = send("a@example.com", ["x@y.test"], b"plain", listener_source="routed")
    tap.ok(q == ["y.test/listen-vmta"],
           "no entry matches: the listener source's default-virtual-mta", q)
    q = send("bulk@example.com", ["x@rcpt-route.test"], b"Routed news",
             b"X-Virtual-MTA: mta2\r\n", listener_source="routed")
    tap.ok(q == ["rcpt-route.test/mta2"], "X-Virtual-MTA wins over the pattern-list", q)
    q = send("bulk@example.com", ["x@rcpt-route.test"], b"Routed news")
    tap.ok(q == ["rcpt-route.test/{default}"],
           "a source that does not name the pattern-list ignores it", q)
    q = send("a@example.com", ["x@y.test"], b"plain", client_ip="127.0.0.2")
    tap.ok(q == ["y.test/ip-vmta"], "the client address's <source> default-virtual-mta", q)
    q = send("a@example.com", ["x@y.test"], b"plain", client_ip="127.0.0.2",
             listener_source="listen")
    tap.ok(q == ["y.test/listen-vmta"],
           "the listener's source= wins over the client address's default-virtual-mta", q)


def stored(p, r):
    """(qdump record, headers) of the message of result R; (None, "") if not stored."""
    m = find(qdump(p), r.msgid) if r and r.code == 250 else None
    return m, headers(body_of(p, r.msgid)) if m else ""


def check_submission_headers(tap, p, s):
    """retain-x-virtual-mta, retain-x-job, process-x-envid, jobid-header."""
    extra = b"X-Virtual-MTA: mta1\r\nX-Job: j-17\r\nX-EnvID: env-17\r\n"
    m, h = stored(p, s.send("a@example.com", ["x@y.test"], simple(b"strip", extra)))
    tap.ok(m and m["vmta"] == "mta1" and m["job"] == "j-17" and "X-Virtual-MTA" not in h
           and "X-Job" not in h and "X-EnvID: env-17" in h and m["envid"] != "env-17",
           "without retain-*: X-Virtual-MTA and X-Job act and are removed; X-EnvID is left "
           "alone without process-x-envid", (m, h))
    m, h = stored(p, s.send("a@example.com", ["x@y.test"], simple(b"retain", extra),
                            listener_source="retain"))
    tap.ok(m and m["vmta"] == "mta1" and m["job"] == "j-17" and "X-Virtual-MTA: mta1" in h
           and "X-Job: j-17" in h,
           "retain-x-virtual-mta, retain-x-job: the fields act and stay in the message", (m, h))
    tap.ok(m and m["envid"] == "env-17" and "X-EnvID" not in h,
           "process-x-envid: X-EnvID becomes the ENVID and is removed", (m, h))
    m, h = stored(p, s.send("a@example.com", ["x@y.test"],
                            simple(b"jobhdr", b"Message-ID: <job-99@example.com>\r\nX-Job: j-1\r\n"),
                            listener_source="jobhdr"))
    tap.ok(m and m["job"] == "<job-99@example.com>" and "X-Job" not in h
           and "Message-ID: <job-99@example.com>" in h,
           "jobid-header Message-ID: the job id comes from Message-ID (which stays), not X-Job",
           (m, h))


def check_invalid_vmta(tap, p, s):
    """reject-invalid-virtual-mta, allow-empty-x-virtual-mta."""
    r = s.send("a@example.com", ["x@y.test"], simple(b"lenient", b"X-Virtual-MTA: nosuch\r\n"),
               listener_source="lenient")
    tap.ok(queues_of(p, r) == ["y.test/{default}"],
           "reject-invalid-virtual-mta no: an unknown X-Virtual-MTA is accepted, through "
           "{default} (the default source refuses it: 550 5.7.1 above)", r)
    r = s.send("a@example.com", ["x@y.test"], simple(b"empty", b"X-Virtual-MTA:\r\n"))
    tap.ok(r and r.code == 550 and r.enhanced == "5.7.1",
           "an empty X-Virtual-MTA is an unknown virtual MTA by default: 550 5.7.1", r)
    r = s.send("a@example.com", ["x@y.test"], simple(b"empty", b"X-Virtual-MTA:\r\n"),
               listener_source="lenient")
    tap.ok(queues_of(p, r) == ["y.test/{default}"],
           "allow-empty-x-virtual-mta yes: an empty X-Virtual-MTA means {default}", r)


def check_job(tap, p, s):
    r = s.send("a@example.com", ["x@y.test"], simple(b"job", b"X-Job: campaign-7\r\n"),
               envid="ENV1")
    m = find(qdump(p), r.msgid) if r else None
    tap.ok(m and m["job"] == "campaign-7" and m["envid"] == "ENV1"
           and m["client_ip"] == "127.0.0.1" and m["helo"] == "client.test",
           "envelope records job id, envid, client ip and helo", m)


def check_dkim(tap, p, s):
    r = s.send("a@example.com", ["x@signed.test"], simple(b"dkim"))
    body = body_of(p, r.msgid).encode() if r and r.code == 250 else b""
    tap.ok(body.startswith(b"DKIM-Signature:") and b"d=example.com" in body,
           "dkim-sign yes: DKIM-Signature on top", body[:300])
    ok = False
    try:
        ok = dkim.verify(body, dnsfunc=dnsfunc)
    except Exception as e:
        tap.diag(repr(e))
    tap.ok(ok, "dkimpy verifies the domain-key signature")
    tap.ok(p.wait_log(r"queued %020X .* dkim=signed" % (r.msgid if r else 0)),
           "log says dkim=signed")
    r = s.send("someone@other.example", ["x@seed.test"], simple(b"seed", sender=b"someone@other.example"))
    body = body_of(p, r.msgid).encode() if r and r.code == 250 else b""
    ok = False
    try:
        ok = dkim.verify(body, dnsfunc=dnsfunc)
    except Exception as e:
        tap.diag(repr(e))
    tap.ok(ok and b"d=brand.example" in body and b"s=wild" in body,
           "seed dkim-selector/dkim-key-file/dkim-identity sign and verify", body[:300])
    r = s.send("a@example.com", ["x@y.test"], simple(b"nodkim"))
    body = body_of(p, r.msgid) if r and r.code == 250 else "x"
    tap.ok("DKIM-Signature" not in body, "no dkim-sign: unsigned")
    check_dkim_canon(tap, p, s)


def verifies(body):
    try:
        return bool(dkim.verify(body, dnsfunc=dnsfunc))
    except Exception:
        return False


def check_dkim_canon(tap, p, s):
    """dkim-headers-canon, dkim-body-canon, dkim-algorithm: the c= and a= tags, and what
    survives a relay that re-spaces a header field or pads a body line."""
    signed = {}
    for domain in ("signed.test", "simple.test", "mixed.test"):
        content = (b"From: <a@example.com>\r\nTo: <r@" + domain.encode() + b">\r\n"
                   b"Subject: canon test\r\n\r\nline one\r\nline two\r\n")
        r = s.send("a@example.com", ["x@" + domain], content)
        signed[domain] = body_of(p, r.msgid).encode() if r and r.code == 250 else b""
    tags = {d: re.search(rb"\bc=([a-z/]+);", b.replace(b"\r\n\t", b" ")) for d, b in signed.items()}
    tags = {d: m.group(1).decode() if m else None for d, m in tags.items()}
    tap.ok(tags == {"signed.test": "relaxed/relaxed", "simple.test": "simple/simple",
                    "mixed.test": "simple/relaxed"}
           and all(verifies(b) for b in signed.values())
           and b"a=rsa-sha256;" in signed["simple.test"],
           "dkim-headers-canon and dkim-body-canon set c= (default relaxed/relaxed), "
           "dkim-algorithm rsa-sha256 a=, and each signature verifies", tags)

    def respaced(b):
        return b.replace(b"\r\nSubject: canon test", b"\r\nSubject:   canon  test")

    def padded(b):
        return b.replace(b"\r\nline one\r\n", b"\r\nline one   \r\n")
    got = {d: (verifies(respaced(b)), verifies(padded(b))) for d, b in signed.items()}
    tap.ok(got == {"signed.test": (True, True), "simple.test": (False, False),
                   "mixed.test": (False, True)},
           "a re-spaced Subject breaks only simple header canonicalization, a padded body line "
           "only simple body canonicalization", got)
    r = s.send("a@example.com", ["x@hdrs.test"], simple(b"hdrs"))
    body = body_of(p, r.msgid).encode() if r and r.code == 250 else b""
    h = re.search(rb"\bh=([^;]+);", body.replace(b"\r\n\t", b""))
    h = sorted(x.strip().lower() for x in h.group(1).decode().split(":")) if h else None
    tap.ok(h == ["date", "from", "subject"],
           "dkim-headers subject,date: h= signs those and From, nothing else", h)
    bad = p.write_config(text="<domain a.test>\n  dkim-algorithm rsa-sha1\n</domain>\n",
                         path=os.path.join(p.dir, "sha1.conf"))
    r = p.run("--check-config", "-c", bad)
    tap.ok(r.returncode != 0 and "sha1.conf:2: error: dkim-algorithm: unknown algorithm "
           "'rsa-sha1'" in r.stdout + r.stderr,
           "dkim-algorithm other than rsa-sha256 and ed25519-sha256 is refused at load,"
           " with file:line",
           r.stdout + r.stderr)


def check_nul_in_header(tap, p, s):
    """fuzz-found: a NUL in a field made OpenDKIM read past it; refused now."""
    before = len(qdump(p))
    r = s.send("a@example.com", ["x@signed.test"],
               b"From: <a@exa\x00mple.com>\r\nTo: <x@signed.test>\r\nSubject: nul\r\n\r\nHi.\r\n")
    tap.ok(r and r.code == 554 and r.enhanced == "5.6.0" and "NUL" in r.text,
           "a NUL in a header field: 554 5.6.0", r)
    tap.ok(len(qdump(p)) == before, "the refused message is not stored")
    r = s.send("a@example.com", ["x@signed.test"], simple(b"after nul", b"X-Bin: ok\r\n"))
    tap.ok(r and r.code == 250, "cleanup goes on: the next message is signed and queued", r)


def check_dkim_dual(tap, p, s):
    r = s.send("a@example.com", ["x@dual.test"], simple(b"dual"))
    body = body_of(p, r.msgid).encode() if r and r.code == 250 else b""
    ok, algs = verify_all(body)
    tap.ok(algs == ["ed25519-sha256", "rsa-sha256"],
           "dkim-algorithm ed25519-sha256, rsa-sha256: two signatures, Ed25519 on top", algs)
    tap.ok(ok, "dkimpy verifies both (ed25519-sha256 and rsa-sha256)", body[:600])


def check_dkim_load(tap, p, path):
    """120 dual-signed messages on 4 connections at once: signed on the thread pool."""
    results, lock = [], threading.Lock()

    def worker(n):
        c = CleanupConn(path)
        for i in range(30):
            c.message(i + 1, "a@example.com", ["r%d@dual.test" % i], simple(b"pool %d %d" % (n, i)))
        rs = [c.result(i + 1, timeout=120) for i in range(30)]
        c.close()
        with lock:
            results.extend(rs)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ok = [r for r in results if r and r.code == 250]
    tap.ok(len(ok) == 120, "120 concurrent DKIM messages: all 250", "%d ok" % len(ok))
    bad = [r.msgid for r in ok if verify_all(body_of(p, r.msgid).encode())
           != (True, ["ed25519-sha256", "rsa-sha256"])]
    tap.ok(ok and not bad, "every one carries two signatures that verify", bad[:5])
    st = wait_for(lambda: re.findall(r"stats: messages=\d+ .* dkim_signatures=(\d+) "
                                     r"dkim_key_reuses=(\d+)", p.log()), timeout=5)
    last = [int(x) for x in st[-1]] if st else [0, 1]
    tap.ok(last[0] >= 240 and last[0] == last[1],
           "every signature used the key parsed at load (dkim_key_reuses = dkim_signatures)",
           last)


def check_stop_while_signing(tap):
    """SIGTERM while messages are being signed: every 250 is stored, signed and verifies."""
    with Pmta(name="pmtasignstop") as p:
        key, edkey = copy_keys(p)
        p.write_config(config_extra(key, edkey))
        p.start()
        path = os.path.join(p.run_dir, "private", "cleanup")
        wait_for(lambda: os.path.exists(path)) and p.wait_log(r"queue .* open")
        results, lock = [], threading.Lock()

        def worker(n):
            try:
                c = CleanupConn(path)
                for i in range(300):
                    c.message(i + 1, "a@example.com", ["s%d@dual.test" % i],
                              simple(b"stop %d %d" % (n, i)))
                rs = [c.result(i + 1, timeout=60) for i in range(300)]
            except OSError:
                rs = []
            with lock:
                results.extend(rs)

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(2)]
        for t in threads:
            t.start()
        time.sleep(0.15)
        tap.ok(p.stop() == 0, "pmtad stops while messages are being signed")
        for t in threads:
            t.join()
        ok = {r.msgid for r in results if r and r.code == 250}
        stored = {m["msgid"] for m in qdump(p)}
        tap.ok(ok <= stored, "every message answered 250 is in the queue (%d of %d answered)"
               % (len(ok), len([r for r in results if r])), sorted(ok - stored)[:5])
        bad = [m for m in sorted(ok)[:40] if not verify_all(body_of(p, m).encode())[0]]
        tap.ok(not bad, "and its signatures verify", bad)
        tap.ok(stopped_cleanly(p), "cleanup stopped cleanly (no sanitizer reports)",
               p.output()[-2000:])


def check_abort(tap, p, path):
    before = len(qdump(p))
    c = CleanupConn(path)
    c.begin(1, sender="a@example.com")
    c.rcpt(1, "x@y.test")
    c.data(1, simple(b"aborted"))
    c.abort(1)
    c.message(2, "a@example.com", ["x@y.test"], simple(b"after abort"))
    r = c.result(2)
    tap.ok(r and r.code == 250 and 1 not in c.results, "ABORT: no answer, later txn fine", r)
    tap.ok(len(qdump(p)) == before + 1, "ABORT stores nothing")
    c.begin(3, sender="a@example.com")
    c.rcpt(3, "x@y.test")
    c.data(3, simple(b"dropped with the connection"))
    c.close()
    time.sleep(0.3)
    tap.ok(len(qdump(p)) == before + 1, "a closed connection's open transaction is not stored")


def check_malformed(tap, p, path):
    before = len(qdump(p))
    good, bad = CleanupConn(path), CleanupConn(path)
    good.begin(7, sender="a@example.com")
    good.rcpt(7, "x@y.test")
    bad.begin(7, sender="a@example.com")
    bad.rcpt(7, "x@y.test")
    bad.data(7, simple(b"never stored"))
    # RCPT with its fields in the wrong kinds
    bad.send(frame(MP_TXN_RCPT, 7, [(F_U32, 5), (F_STR, "x")]))
    tap.ok(bad.wait_closed(), "a malformed frame closes its connection")
    content = simple(b"parallel")
    good.data(7, content)
    good.end(7, len(content))
    r = good.result(7)
    tap.ok(r and r.code == 250, "a parallel transaction on another connection gets 250", r)
    tap.ok(len(qdump(p)) == before + 1, "nothing of the malformed connection is stored")
    tap.ok(p.wait_log(r"cleanup\[\d+\]: warning: connection \d+: malformed frame"),
           "the malformed frame is logged")
    good.close()
    bad.close()


def check_size_limit(tap, p, s):
    r = s.send("a@example.com", ["x@y.test"], simple(b"big", b"X-Pad: " + b"p" * 200 + b"\r\n"),
               listener_source="small")
    tap.ok(r and r.code == 552 and r.enhanced == "5.3.4",
           "past the source's max-message-size: 552 5.3.4", r)
    r = s.send("a@example.com", ["x@y.test"], simple(b"fits"), listener_source="small")
    tap.ok(r and r.code == 250, "the same connection goes on", r)


def check_load(tap, p, path):
    """200 messages, 4 connections, concurrently."""
    accepted = len(qdump(p))          # nothing is delivered yet: stored = accepted
    mark = wait_for(lambda: stats_line(p, accepted), timeout=5)
    results = []
    lock = threading.Lock()

    def worker(n):
        c = CleanupConn(path)
        for i in range(50):
            c.message(i + 1, "load%d@example.com" % n, ["r%d@load%d.test" % (i, i % 5)],
                      simple(b"load %d %d" % (n, i)))
        rs = [c.result(i + 1, timeout=60) for i in range(50)]
        c.close()
        with lock:
            results.extend(rs)

    before = len(qdump(p))
    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    ok = [r for r in results if r and r.code == 250]
    tap.ok(len(ok) == 200 and len({r.msgid for r in ok}) == 200,
           "200 concurrent messages on 4 connections: all 250, distinct ids",
           "%d ok" % len(ok))
    tap.ok(len(qdump(p)) == before + 200, "qdump counts 200 more messages")
    after = wait_for(lambda: stats_line(p, accepted + 200), timeout=5)
    if mark and after:
        dm, dc = after[0] - mark[0], after[1] - mark[1]
        tap.diag("200 messages in %.2fs: %d commits (%.1f messages per commit)"
                 % (elapsed, dc, dm / max(dc, 1)))
        tap.ok(dm == 200 and dc < dm, "fewer commits than messages (grouped)", (dm, dc))
    else:
        tap.ok(False, "fewer commits than messages (grouped)", (mark, after))


def stats_line(p, messages):
    """(messages, commits) of the last stats line when it counts MESSAGES."""
    hits = re.findall(r"cleanup\[\d+\]: info: stats: messages=(\d+) commits=(\d+)", p.log())
    if hits and int(hits[-1][0]) == messages:
        return int(hits[-1][0]), int(hits[-1][1])
    return None


def check_reload(tap, p, path, key, edkey):
    c = CleanupConn(path)
    c.begin(1, sender="a@example.com")
    c.rcpt(1, "x@y.test")
    # cleanup reads a connection's frames in order: once a later transaction
    # on it is answered, transaction 1 has begun under the old configuration
    # (without this, the reload could overtake frames still in the socket)
    c.message(2, "a@example.com", ["x@y.test"], simple(b"before reload"))
    c.result(2)
    p.write_config(config_extra(key, edkey) + SMALL_SOURCE + "invalid-virtual-mta-fallback mta3\n"
                   + "<virtual-mta mta3>\n  smtp-source-host 127.0.0.13 mta3.test\n</virtual-mta>\n")
    mark = p.log_mark()
    p.send_signal(signal.SIGHUP)
    tap.ok(p.wait_log(r"cleanup\[\d+\]: info: using configuration generation 2", since=mark),
           "cleanup takes the reloaded configuration")
    content = simple(b"inflight", b"X-Virtual-MTA: mta3\r\n")
    c.data(1, content)
    c.end(1, len(content))
    r = c.result(1)
    tap.ok(r and r.code == 550, "a transaction begun before the reload finishes on the old one", r)
    c.message(2, "a@example.com", ["x@y.test"], content)
    r = c.result(2)
    m = find(qdump(p), r.msgid) if r and r.code == 250 else None
    tap.ok(m and m["recipients"][0]["queue"] == "y.test/mta3",
           "a new transaction uses the new configuration", r)
    c.message(3, "a@example.com", ["x@y.test"], simple(b"fallback", b"X-Virtual-MTA: nosuch\r\n"))
    r = c.result(3)
    m = find(qdump(p), r.msgid) if r and r.code == 250 else None
    tap.ok(m and m["recipients"][0]["queue"] == "y.test/mta3",
           "invalid-virtual-mta-fallback mta3: an unknown X-Virtual-MTA goes through mta3 "
           "instead of 550", r)
    c.close()


SMALL_SOURCE = """
<source small>
    max-message-size 200
</source>
"""


def stopped_cleanly(p):
    """cleanup logged "stopped", closed every handle, and no sanitizer spoke."""
    text = p.log() + p.output()
    return (re.search(r"cleanup\[\d+\]: info: stopped", text)
            and not re.search(r"cleanup\[\d+\]: warning: (event loop closed with handles open"
                              r"|handles still open)", text)
            and not re.search(r"AddressSanitizer|runtime error|LeakSanitizer", text))


def check_map_full(tap):
    with Pmta(name="pmtacleanupfull") as p:
        p.write_config("smtp-out-processes 0\nqueue-map-size 1m\n"
                       "<source 127.0.0.1>\n always-allow-relaying yes\n"
                       "</source>\n")
        p.start()
        tap.ok(p.wait_log(r"cleanup\[\d+\]: info: queue .* open"), "small map: cleanup up")
        s = Sender(os.path.join(p.run_dir, "private", "cleanup"))
        big = simple(b"big", b"X-Big: " + b"b" * 60 + b"\r\n") + (b"z" * 998 + b"\r\n") * 3000
        r = s.send("a@example.com", ["x@y.test"], big)
        tap.ok(r and r.code == 452 and r.enhanced == "4.3.1" and r.text ==
               "Insufficient system storage", "a message larger than the map: 452 4.3.1", r)
        r = s.send("a@example.com", ["x@y.test"], simple(b"small"))
        tap.ok(r and r.code == 250, "a later small message still gets 250", r)
        tap.ok(len(qdump(p)) == 1, "only the small one is stored")
        s.conn.close()
        tap.ok(p.stop() == 0, "pmtad stops cleanly")
        tap.ok(stopped_cleanly(p), "cleanup stopped cleanly (no sanitizer reports)",
               p.output()[-2000:])


def sync_calls(sync):
    """fsync-family calls cleanup makes while 5 messages are committed, with
    sync-msg-create SYNC; None when they cannot be counted."""
    with Pmta(name="pmtacleanupsync") as p:
        p.write_config("smtp-out-processes 0\nsync-msg-create %s\n" % sync)
        p.start()
        if not p.wait_log(r"cleanup\[\d+\]: info: queue .* open"):
            return None
        results = []

        def send():
            s = Sender(os.path.join(p.run_dir, "private", "cleanup"))
            results.extend(s.send("a@example.com", ["x@y.test"], simple(b"sync %d" % i))
                           for i in range(5))
            s.conn.close()
        n = count_syscalls(p.worker_pids("cleanup")[0],
                           ("fsync", "fdatasync", "msync", "sync_file_range"), send)
        return n if all(r and r.code == 250 for r in results) else None


def check_sync(tap):
    """sync-msg-create: commits are fsynced (yes, the default) or not (no), seen by strace."""
    if not shutil.which("strace"):  # build-aux/install-deps installs it: a missing step
        tap.ok(False, "sync-msg-create yes/no seen by strace", "strace is not installed")
        return
    on, off = sync_calls("yes"), sync_calls("no")
    tap.ok(on is not None and off is not None and on >= 1 and off == 0,
           "sync-msg-create yes: cleanup's commits call fdatasync; no: never",
           "calls with yes: %s, with no: %s" % (on, off))


def copy_keys(p):
    """The test keys into P's directory, readable by the workers: (RSA, Ed25519)."""
    paths = []
    for name in ("test.key", "test-ed25519.key"):
        path = os.path.join(p.dir, name)
        shutil.copy(os.path.join(DATA, "dkim", name), path)
        os.chmod(path, 0o644)
        paths.append(path)
    return paths


def main():
    tap = Tap()
    require_root(tap)
    with Pmta(name="pmtacleanup") as p:
        key, edkey = copy_keys(p)
        p.write_config(config_extra(key, edkey) + SMALL_SOURCE)
        p.start()
        path = os.path.join(p.run_dir, "private", "cleanup")
        tap.ok(wait_for(lambda: os.path.exists(path)) and
               p.wait_log(r"cleanup\[\d+\]: info: queue .* open"), "cleanup runs, queue open")
        s = Sender(path)
        check_basic(tap, p, s)
        check_bare_source(tap, p, s)
        check_hidden_source(tap, p, s)
        check_vmta(tap, p, s)
        check_pattern_list(tap, p, s)
        check_job(tap, p, s)
        check_submission_headers(tap, p, s)
        check_invalid_vmta(tap, p, s)
        check_dkim(tap, p, s)
        check_nul_in_header(tap, p, s)
        check_dkim_dual(tap, p, s)
        check_dkim_load(tap, p, path)
        check_size_limit(tap, p, s)
        check_abort(tap, p, path)
        check_malformed(tap, p, path)
        check_load(tap, p, path)
        check_reload(tap, p, path, key, edkey)
        s.conn.close()
        tap.ok(p.stop() == 0, "pmtad stops")
        tap.ok(stopped_cleanly(p), "cleanup stopped cleanly (no sanitizer reports)",
               p.output()[-2000:])
    check_stop_while_signing(tap)
    check_map_full(tap)
    check_sync(tap)
    sys.exit(tap.done())


if __name__ == "__main__":
    main()
