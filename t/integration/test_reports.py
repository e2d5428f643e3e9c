#!/usr/bin/env python3
"""test_reports - reports that come back: <bounce-processor>, <feedback-loop-processor>,
suppression lists, bcc-upon-delivery.

Real peers: a private Postfix (t/lib/postfix.py) is the remote MTA for
remote.test. It relays to t/lib/testsmtpd.py on 127.0.0.31, which refuses
nouser* (550 5.1.1) and does not offer DSN, so Postfix itself sends the
reports: a "failed" DSN for nouser@remote.test and a "relayed" one for
ok@remote.test (NOTIFY=SUCCESS), straight back to pmtad's listener (Postfix's
transport for sender.test). A second testsmtpd on 127.0.0.32 is the archive
(bcc copies, forwarded and passed-on reports).

  rb / rs        the DSNs become an rb and an rs record with the original
                 recipient, the job (X-Job) and virtual MTA (X-Virtual-MTA)
                 from the returned headers, ENVID, Reporting-MTA, category
  suppression    the failed recipient is added to the list's file; the next
                 message to it is never sent: b record, 5.7.1, category
                 suppressed, and no DSN (its sender is a bounce-processor
                 address); static entries (address, domain) too
  bcc            one copy per delivered message to archive@archive.test,
                 from the null sender
  f              an ARF complaint about a message we sent (Yahoo-style) to
                 fbl@sender.test: an f record (recipient, job, vmta, feedback
                 type, source IPs, header_Subject), the recipient suppressed,
                 and the report passed on (deliver-matched-email yes)
  unmatched      a plain-text "bounce" is forwarded (forward-unmatched-to),
                 not delivered (deliver-unmatched-email no), no record
  tracking       mail from a feeder that keeps no X-Job / X-Virtual-MTA and gives
                 no ENVID: Postfix's DSN returns our tracking ENVID, and the rb
                 record still names job and virtual MTA (not with tracking-envid no)
  vmta header    add-x-virtual-mta-header: "X-Virtual-MTA: v1" on top of the
                 delivered message ({default} for the default one), not with a
                 retained field, none from a source without it
  errors         a delivery-status report without its status part is forwarded
                 (forward-errors-to) and passed on to its recipient, no record
  crash          qmgr stopped, a DSN received, qmgr killed (-9): the new qmgr
                 records it once and the queue ends empty

Prints TAP. Needs root, dnsmasq and Debian's postfix.
"""

import csv
import os
import signal
import smtplib
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))

import postfix  # noqa: E402
from dnsmasq import Dnsmasq, dnsmasq_path  # noqa: E402
from pmtatest import Pmta, Tap, qdump, require_root, wait_for  # noqa: E402
from testsmtpd import TestSmtpd  # noqa: E402

SRCDIR = os.environ.get("PMTA_SRCDIR", os.path.join(os.path.dirname(__file__), "..", ".."))
PF_LISTEN = "127.0.0.30:2549"
REJECT = "127.0.0.31:2550"
ARCHIVE = "127.0.0.32:2552"

CONFIG = """
name-server %(dns)s
<source 127.0.0.1>
  always-allow-relaying yes
  process-x-job yes
  retain-x-job yes
  process-x-virtual-mta yes
  retain-x-virtual-mta yes
  process-x-envid yes
  add-x-virtual-mta-header yes
</source>
# a feeder as PowerMTA ships them: X-Job and X-Virtual-MTA act and are removed
<source 127.0.0.2>
  always-allow-relaying yes
  process-x-job yes
  process-x-virtual-mta yes
</source>
<source 127.0.0.3>
  always-allow-relaying yes
  process-x-virtual-mta yes
  add-x-virtual-mta-header yes
</source>
<virtual-mta v1>
  smtp-source-host 127.0.0.10 v1.src.test
</virtual-mta>
<address-list suppressed>
  address never@remote.test
  domain blocked.test
  address-file %(suppressed)s
</address-list>
<bounce-processor>
  deliver-unmatched-email no
  forward-unmatched-to archive@archive.test
  forward-errors-to errors@archive.test
  add-to-suppression-list suppressed
  <address-list>
    address /^bounces(\\+.*)?@sender\\.test$/
  </address-list>
</bounce-processor>
<feedback-loop-processor>
  deliver-unmatched-email no
  deliver-matched-email yes
  add-to-suppression-list suppressed
  <address-list>
    address fbl@sender.test
  </address-list>
</feedback-loop-processor>
<acct-file %(acct)s>
  records d,b,rb,rs,f
  record-fields f *,header_Subject
</acct-file>
<domain *>
  retry-after 1s
  retry-recipients-after 1s
  suppression-lists suppressed
</domain>
<domain remote.test>
  smtp-hosts [127.0.0.30]:2549
  bcc-upon-delivery archive@archive.test
</domain>
<domain untracked.test>
  smtp-hosts [127.0.0.30]:2549
  tracking-envid no
</domain>
<domain archive.test>
  smtp-hosts [127.0.0.32]:2552
</domain>
<domain sender.test>
  smtp-hosts [127.0.0.32]:2552
</domain>
"""

ORIGINAL = (b"From: Bulk <bounces@sender.test>\r\nTo: <nouser@remote.test>\r\n"
            b"Subject: spring offers\r\nMessage-ID: <spring-1@sender.test>\r\n"
            b"X-Job: job-42\r\nX-Virtual-MTA: v1\r\n\r\nOffers.\r\n")


def arf(rcpt, subject):
    """A Yahoo-style complaint about a message we sent to RCPT."""
    return ("From: Feedback <feedbackloop@feedback.remote.test>\r\n"
            "To: fbl@sender.test\r\nSubject: Email Feedback Report\r\nMIME-Version: 1.0\r\n"
            "Content-Type: multipart/report; report-type=feedback-report;\r\n"
            "\tboundary=\"fbl-b1\"\r\n\r\n"
            "--fbl-b1\r\nContent-Type: text/plain\r\n\r\nA complaint.\r\n"
            "--fbl-b1\r\nContent-Type: message/feedback-report\r\n\r\n"
            "Feedback-Type: abuse\r\nUser-Agent: Yahoo!-Mail-Feedback/2.0\r\nVersion: 0.1\r\n"
            "Original-Mail-From: <bounces@sender.test>\r\nOriginal-Rcpt-To: %s\r\n"
            "Source-IP: 127.0.0.10\r\nReported-Domain: sender.test\r\n\r\n"
            "--fbl-b1\r\nContent-Type: message/rfc822\r\n\r\n"
            "From: News <news@sender.test>\r\nTo: %s\r\nSubject: %s\r\n"
            "X-Job: job-7\r\nX-Virtual-MTA: v1\r\n\r\nNews.\r\n"
            "--fbl-b1--\r\n" % (rcpt, rcpt, subject)).encode()


class Run:
    def __init__(self):
        self.pmta = Pmta(name="reports")
        self.work = self.pmta.dir
        self.acct = os.path.join(self.pmta.spool, "acct.csv")
        self.suppressed = os.path.join(self.pmta.dir, "suppressed.txt")
        self.reject = TestSmtpd([REJECT], {"dsn": False, "rcpt": [
            ["nouser", "550 5.1.1 <nouser@remote.test>: Recipient address rejected: "
                       "User unknown"]]}, self.work, "reject")
        self.archive = TestSmtpd([ARCHIVE], {}, self.work, "archive")
        self.dns = Dnsmasq(local=["test"])
        self.pf = postfix.PrivatePostfix(self.work, PF_LISTEN, "mx.remote.test",
                                         ["remote.test", "untracked.test"],
                                         {"remote.test": "[127.0.0.31]:2550",
                                          "untracked.test": "[127.0.0.31]:2550",
                                          "sender.test": "[127.0.0.1]:%d" % self.pmta.port})

    def start(self):
        with open(self.suppressed, "w") as f:
            f.write("# addresses we never send to\n")
        os.chmod(self.suppressed, 0o666)   # qmgr (the run-as-user) appends to it
        self.dns.start()
        self.reject.start()
        self.archive.start()
        self.pf.start()
        self.pmta.write_config(CONFIG % {"dns": self.dns.server, "acct": self.acct,
                                         "suppressed": self.suppressed})
        self.pmta.start()

    def stop(self):
        self.pf.stop()          # first: its files live in pmtad's directory
        self.pmta.close()
        self.archive.stop()
        self.reject.stop()
        self.dns.stop()

    def send(self, sender, rcpts, data, mail_options=(), rcpt_options=(), source=None):
        with smtplib.SMTP("127.0.0.1", self.pmta.port, timeout=10,
                          source_address=(source, 0) if source else None) as s:
            s.sendmail(sender, rcpts, data, mail_options=list(mail_options),
                       rcpt_options=list(rcpt_options))

    def rows(self, rtype=None, **match):
        try:
            with open(self.acct, newline="") as f:
                rows = list(csv.DictReader(f))
        except FileNotFoundError:
            return []
        return [r for r in rows if (rtype is None or r["type"] == rtype)
                and all(r.get(k) == v for k, v in match.items())]

    def wait_rows(self, rtype, count=1, timeout=30, **match):
        wait_for(lambda: len(self.rows(rtype, **match)) >= count, timeout=timeout)
        return self.rows(rtype, **match)

    def archived(self):
        """(rcpt, sender, saved bytes) of every message the archive received."""
        out, txn = [], {}
        for ev in self.archive.events():
            if ev["event"] == "mail":
                txn[ev["conn"]] = {"from": ev["from"], "to": []}
            elif ev["event"] == "rcpt" and ev["reply"] == 250:
                txn[ev["conn"]]["to"].append(ev["to"])
            elif ev["event"] == "data":
                t = txn.pop(ev["conn"], {"from": None, "to": []})
                with open(ev["file"], "rb") as f:
                    data = f.read()
                out += [(to, t["from"], data) for to in t["to"]]
        return out


def check_remote_reports(tap, run):
    rb = run.wait_rows("rb", rcpt="nouser@remote.test")
    r = rb[0] if rb else {}
    tap.ok(rb and r["dsnStatus"] == "5.1.1" and r["dsnAction"] == "failed"
           and r["jobId"] == "job-42" and r["vmta"] == "v1" and r["envId"] == "env-123"
           and r["orig"] == "bounces@sender.test" and r["dsnReportingMta"] == "mx.remote.test"
           and r["bounceCat"] == "bad-mailbox" and r["format"] == "dsn"
           and "550 5.1.1" in r["dsnDiag"] and r["dsnMta"] == "127.0.0.31",
           "Postfix's failed DSN: an rb record with recipient, job, vmta, envid, Reporting-MTA "
           "and category", r or run.pmta.log()[-3000:])
    rs = run.wait_rows("rs", rcpt="ok@remote.test")
    tap.ok(rs and rs[0]["dsnAction"] == "relayed" and rs[0]["jobId"] == "job-42",
           "Postfix's relayed DSN (NOTIFY=SUCCESS): an rs record", rs[:1])
    tap.ok(len(run.rows("rb", rcpt="nouser@remote.test")) == 1
           and len(run.rows("d", rcpt="nouser@remote.test")) == 1,
           "one record each: d when Postfix took it, rb when it came back")
    listed = wait_for(lambda: "nouser@remote.test" in open(run.suppressed).read(), timeout=5)
    tap.ok(listed, "the failed recipient (bad-mailbox) is appended to the list's address-file")


def check_suppression(tap, run):
    mark = len(run.pf.log())
    run.send("bounces@sender.test", ["nouser@remote.test"], ORIGINAL)
    run.send("someone@sender.test", ["never@remote.test", "x@blocked.test"], ORIGINAL)
    b = run.wait_rows("b", rcpt="nouser@remote.test")
    static = run.wait_rows("b", count=2, bounceCat="suppressed")
    r = b[0] if b else {}
    tap.ok(b and r["bounceCat"] == "suppressed" and r["dsnStatus"].startswith("5.7.1")
           and 'suppression list "suppressed"' in r["dsnDiag"],
           "an address the bounce added is never sent again: b, 5.7.1, category suppressed", r)
    time.sleep(1)
    tap.ok("nouser@remote.test" not in run.pf.log()[mark:],
           "the remote MTA never saw it again")
    tap.ok({x["rcpt"] for x in static} >= {"never@remote.test", "x@blocked.test"},
           "the list's own entries: an address and a whole domain", [x["rcpt"] for x in static])
    wait_for(lambda: len([a for a in run.archived() if a[0] == "someone@sender.test"]) >= 2,
             timeout=10)
    dsns = [a for a in run.archived() if a[0] == "someone@sender.test"]
    tap.ok(len(dsns) == 2 and all(b"recipient is in suppression list" in d[2] for d in dsns)
           and not [a for a in run.archived() if a[0] == "bounces@sender.test"],
           "a DSN per suppressed recipient to an ordinary sender; none to a bounce-processor "
           "address", [a[0] for a in run.archived()])


def check_bcc(tap, run):
    wait_for(lambda: [a for a in run.archived() if a[0] == "archive@archive.test"
                      and b"spring offers" in a[2]], timeout=15)
    copies = [a for a in run.archived() if a[0] == "archive@archive.test"
              and b"Subject: spring offers" in a[2]]
    tap.ok(len(copies) == 1 and copies[0][1] == "",
           "bcc-upon-delivery: one copy of the delivered message, from the null sender",
           [(c[0], c[1]) for c in copies])


def check_fbl(tap, run):
    run.send("feedbackloop@feedback.remote.test", ["fbl@sender.test"],
             arf("alice@remote.test", "news of the week"))
    f = run.wait_rows("f", rcpt="alice@remote.test")
    r = f[0] if f else {}
    tap.ok(f and r["feedbackType"] == "abuse" and r["jobId"] == "job-7" and r["vmta"] == "v1"
           and r["orig"] == "fbl@sender.test" and r["format"] == "arf"
           and r["userAgent"] == "Yahoo!-Mail-Feedback/2.0" and r["repSourceIp"] == "127.0.0.1"
           and r["dlvSourceIp"] == "127.0.0.10" and r["reportedDomain"] == "sender.test"
           and r["header_Subject"] == "news of the week",
           "an ARF complaint: an f record with recipient, job, vmta, type, source IPs and the "
           "original's Subject", r or run.pmta.log()[-3000:])
    listed = wait_for(lambda: "alice@remote.test" in open(run.suppressed).read(), timeout=5)
    passed = wait_for(lambda: [a for a in run.archived() if a[0] == "fbl@sender.test"], timeout=15)
    tap.ok(listed and passed, "the complainer is suppressed; the report is passed on "
           "(deliver-matched-email yes)")


def check_unmatched(tap, run):
    run.send("MAILER-DAEMON@other.test", ["bounces@sender.test"],
             b"From: MAILER-DAEMON@other.test\r\nTo: bounces@sender.test\r\n"
             b"Subject: Mail delivery failed\r\n\r\nUser unknown: someone@other.test\r\n")
    fwd = wait_for(lambda: [a for a in run.archived() if a[0] == "archive@archive.test"
                            and b"Mail delivery failed" in a[2]], timeout=15)
    time.sleep(1)
    tap.ok(fwd and not [a for a in run.archived() if a[0] == "bounces@sender.test"]
           and not run.rows("rb", rcpt="someone@other.test"),
           "a bounce that is not a DSN: forwarded (forward-unmatched-to), not delivered, "
           "no record")


def check_errors(tap, run):
    run.send("", ["bounces@sender.test"],
             b"From: MAILER-DAEMON@broken.test\r\nTo: bounces@sender.test\r\n"
             b"Subject: broken report\r\nMIME-Version: 1.0\r\n"
             b"Content-Type: multipart/report; report-type=delivery-status; boundary=\"b1\"\r\n"
             b"\r\n--b1\r\nContent-Type: text/plain\r\n\r\nIt did not work.\r\n--b1--\r\n")
    fwd = wait_for(lambda: [a for a in run.archived() if a[0] == "errors@archive.test"
                            and b"broken report" in a[2]], timeout=15)
    passed = wait_for(lambda: [a for a in run.archived() if a[0] == "bounces@sender.test"
                               and b"broken report" in a[2]], timeout=15)
    tap.ok(fwd and passed and "not understood: multipart/report without its" in run.pmta.log(),
           "a report that cannot be parsed: a copy to forward-errors-to, and passed on to its "
           "recipient", [(a[0], a[1]) for a in run.archived()])


def check_tracking(tap, run):
    """No ENVID, no X-Job or X-Virtual-MTA kept: the job and the virtual MTA still come back,
    through the tracking ENVID Postfix returns as Original-Envelope-Id."""
    plain = ORIGINAL.replace(b"job-42", b"job-43").replace(b"spring-1", b"spring-2")
    run.send("bounces@sender.test", ["nouser2@remote.test", "nouser3@untracked.test"], plain,
             source="127.0.0.2")
    rb = run.wait_rows("rb", rcpt="nouser2@remote.test")
    r = rb[0] if rb else {}
    tap.ok(rb and r["jobId"] == "job-43" and r["vmta"] == "v1" and r["envId"] == ""
           and r["dsnStatus"] == "5.1.1",
           "a DSN about mail sent without ENVID and with X-Job/X-Virtual-MTA removed: the rb "
           "record still names job and virtual MTA (our ENVID came back), envId stays empty",
           r or run.pmta.log()[-3000:])
    dsn = [l for l in run.pf.log().splitlines() if "nouser2@remote.test" in l]
    un = run.wait_rows("rb", rcpt="nouser3@untracked.test")
    u = un[0] if un else {}
    tap.ok(un and u["jobId"] == "" and u["vmta"] == "",
           "tracking-envid no: the same DSN names neither (no ENVID was sent)", u or dsn[-3:])


def check_vmta_header(tap, run):
    """add-x-virtual-mta-header: the field names the virtual MTA the mail went out through."""
    run.send("someone@sender.test", ["added@archive.test"],
             b"Subject: added\r\nX-Virtual-MTA: v1\r\n\r\nx\r\n", source="127.0.0.3")
    run.send("someone@sender.test", ["default@archive.test"], b"Subject: default\r\n\r\nx\r\n",
             source="127.0.0.3")
    run.send("someone@sender.test", ["none@archive.test"],
             b"Subject: none\r\nX-Virtual-MTA: v1\r\n\r\nx\r\n", source="127.0.0.2")
    run.send("someone@sender.test", ["kept@archive.test"],
             b"Subject: kept\r\nX-Virtual-MTA: v1\r\n\r\nx\r\n")
    want = ("added@archive.test", "default@archive.test", "none@archive.test", "kept@archive.test")
    wait_for(lambda: len({a[0] for a in run.archived() if a[0] in want}) == 4, timeout=15)
    got = {a[0]: a[2] for a in run.archived() if a[0] in want}
    fields = {k: [l for l in v.split(b"\r\n\r\n")[0].split(b"\r\n")
                  if l.lower().startswith(b"x-virtual-mta:")] for k, v in got.items()}
    tap.ok(got.get("added@archive.test", b"").startswith(b"X-Virtual-MTA: v1\r\n")
           and fields.get("added@archive.test") == [b"X-Virtual-MTA: v1"]
           and fields.get("default@archive.test") == [b"X-Virtual-MTA: {default}"]
           and fields.get("none@archive.test") == []
           and fields.get("kept@archive.test") == [b"X-Virtual-MTA: v1"],
           "add-x-virtual-mta-header: X-Virtual-MTA on top naming the virtual MTA ({default} "
           "too); none without it; a retained field is not doubled", fields)


def check_crash(tap, run):
    with open(os.path.join(SRCDIR, "t", "data", "reports", "postfix-failed.eml"), "rb") as f:
        dsn = f.read().replace(b"nouser@remote.test", b"crashuser@remote.test")
    qmgr = run.pmta.worker_pids("qmgr")
    os.kill(qmgr[0], signal.SIGSTOP)
    try:
        run.send("", ["bounces@sender.test"], dsn)
        queued = [m for m in qdump(run.pmta.spool)
                  if any(r.get("queue", "").startswith("{bounce}") for r in m["recipients"])]
    finally:
        os.kill(qmgr[0], signal.SIGKILL)
        os.kill(qmgr[0], signal.SIGCONT)
    rb = run.wait_rows("rb", rcpt="crashuser@remote.test", timeout=30)
    time.sleep(1.5)
    left = [m for m in qdump(run.pmta.spool)
            if any(r.get("queue", "").startswith("{bounce}") for r in m["recipients"])]
    tap.ok(queued and len(run.rows("rb", rcpt="crashuser@remote.test")) == 1 and not left,
           "a report received while qmgr was stopped, then qmgr killed: the new qmgr records "
           "it once, then it leaves the queue", (len(queued), rb, left))


def main():
    tap = Tap()
    require_root(tap)
    if dnsmasq_path() is None:
        sys.exit(tap.skip_all("dnsmasq is not installed"))
    if not postfix.available():
        sys.exit(tap.skip_all("Debian's postfix is not installed"))
    run = Run()
    try:
        run.start()
        run.send("bounces@sender.test", ["nouser@remote.test", "ok@remote.test"], ORIGINAL,
                 mail_options=["ENVID=env-123", "RET=HDRS"],
                 rcpt_options=["NOTIFY=SUCCESS,FAILURE"])
        check_remote_reports(tap, run)
        check_bcc(tap, run)
        check_suppression(tap, run)
        check_fbl(tap, run)
        check_unmatched(tap, run)
        check_errors(tap, run)
        check_tracking(tap, run)
        check_vmta_header(tap, run)
        check_crash(tap, run)
    finally:
        run.stop()
    return tap.done()


if __name__ == "__main__":
    sys.exit(main())
