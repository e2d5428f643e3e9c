#!/usr/bin/python3
"""test_dsn_parse.py - DSNs from qmgr/qmgr_dsn parsed by Python's email package.

Runs t/unit/dsn_tool (qmgr_dsn_build on fixed inputs, original message on
stdin) and checks that an independent MIME parser sees a well-formed
multipart/report: report-type, the three parts in order, every
delivery-status field of the per-message and per-recipient blocks, the
returned message (or only its headers for RET=HDRS), 8-bit originals, and
that hostile reply text adds no header or part anywhere.

Prints TAP. Needs PMTA_BUILDDIR (set by `make check`).
"""

import email
import email.policy
import os
import subprocess
import sys

from pmtatest import Tap

BUILDDIR = os.environ.get("PMTA_BUILDDIR", os.getcwd())
TOOL = os.path.join(BUILDDIR, "t", "unit", "dsn_tool")

ORIGINAL = (b"From: Alice <alice@sender.example>\r\n"
            b"To: bob@rcpt.example\r\n"
            b"Subject: quarterly report\r\n"
            b"Message-ID: <orig-1@sender.example>\r\n"
            b"\r\n"
            b"Hello Bob,\r\nthe body line.\r\n")

ORIGINAL_8BIT = (b"From: j@sender.example\r\n"
                 b"Subject: caf\xc3\xa9\r\n"
                 b"Content-Type: text/plain; charset=utf-8\r\n"
                 b"Content-Transfer-Encoding: 8bit\r\n"
                 b"\r\n"
                 b"Gr\xc3\xbc\xc3\x9fe\r\n")


def run(scenario, original=ORIGINAL):
    p = subprocess.run([TOOL, scenario], input=original, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, check=True)
    return p.stdout


def parse(raw):
    return email.message_from_bytes(raw, policy=email.policy.compat32)


def status_blocks(msg):
    """The delivery-status part's blocks: [per-message, per-recipient...]"""
    ds = msg.get_payload()[1]
    return ds.get_payload()


def unfold(v):
    return " ".join((v or "").split())


def check_structure(tap, name, raw):
    msg = parse(raw)
    tap.ok(msg.get_content_type() == "multipart/report", name + ": multipart/report",
           msg.get_content_type())
    tap.ok(msg.get_param("report-type") == "delivery-status", name + ": report-type")
    tap.ok(not msg.defects, name + ": no MIME defects", msg.defects)
    parts = msg.get_payload()
    types = [p.get_content_type() for p in parts]
    tap.ok(len(parts) == 3 and types[0] == "text/plain"
           and types[1] == "message/delivery-status", name + ": parts", types)
    tap.ok(msg["Auto-Submitted"] == "auto-replied", name + ": Auto-Submitted")
    tap.ok(msg["To"] == "<alice@sender.example>", name + ": To is the envelope sender")
    tap.ok(unfold(msg["From"]).endswith("<MAILER-DAEMON@mta1.openpmta.example>"),
           name + ": From MAILER-DAEMON", msg["From"])
    tap.ok(b"\n" not in raw.replace(b"\r\n", b""), name + ": CRLF line ends only")
    return msg, parts, types


def main():
    tap = Tap()

    raw = run("full")
    msg, parts, types = check_structure(tap, "full", raw)
    tap.ok(msg["Subject"] == "Undelivered Mail Returned to Sender", "full: Subject")
    blocks = status_blocks(msg)
    tap.ok(len(blocks) == 2, "full: one per-message and one per-recipient block", len(blocks))
    pm, pr = blocks[0], blocks[1]
    tap.ok(pm["Reporting-MTA"] == "dns; mta1.openpmta.example", "full: Reporting-MTA")
    tap.ok(pm["Original-Envelope-Id"] == "ENV-42", "full: Original-Envelope-Id")
    tap.ok(pm["Arrival-Date"] == "Tue, 14 Nov 2023 21:13:20 +0000", "full: Arrival-Date")
    tap.ok(pr["Original-Recipient"] == "rfc822;Bob@Rcpt.Example", "full: Original-Recipient")
    tap.ok(pr["Final-Recipient"] == "rfc822; bob@rcpt.example", "full: Final-Recipient")
    tap.ok(pr["Action"] == "failed", "full: Action")
    tap.ok(pr["Status"] == "5.1.1", "full: Status")
    tap.ok(pr["Remote-MTA"] == "dns; mx.rcpt.example", "full: Remote-MTA")
    tap.ok(unfold(pr["Diagnostic-Code"]) ==
           "smtp; 550 5.1.1 <bob@rcpt.example>: Recipient address rejected: User unknown",
           "full: Diagnostic-Code (unfolded)", pr["Diagnostic-Code"])
    tap.ok(pr["Last-Attempt-Date"] == "Tue, 14 Nov 2023 22:13:15 +0000", "full: Last-Attempt-Date")
    tap.ok(types[2] == "message/rfc822", "full: RET=FULL returns message/rfc822", types[2])
    inner = parts[2].get_payload(0)
    tap.ok(inner["Subject"] == "quarterly report" and "the body line" in inner.get_payload(),
           "full: returned message intact")

    raw = run("hdrs")
    msg, parts, types = check_structure(tap, "hdrs", raw)
    tap.ok(types[2] == "text/rfc822-headers", "hdrs: text/rfc822-headers", types[2])
    body = parts[2].get_payload()
    tap.ok("Subject: quarterly report" in body and "the body line" not in body,
           "hdrs: headers only")

    raw = run("delayed")
    msg, parts, types = check_structure(tap, "delayed", raw)
    tap.ok(msg["Subject"] == "Delayed Mail (still being retried)", "delayed: Subject")
    pr = status_blocks(msg)[1]
    tap.ok(pr["Action"] == "delayed" and pr["Status"] == "4.4.7", "delayed: Action/Status")
    tap.ok(pr["Will-Retry-Until"] == "Wed, 15 Nov 2023 22:13:20 +0000", "delayed: Will-Retry-Until")
    tap.ok(pr["Original-Recipient"] is None, "delayed: no ORCPT, no Original-Recipient")

    raw = run("multi")
    msg, parts, types = check_structure(tap, "multi", raw)
    blocks = status_blocks(msg)
    tap.ok([b["Final-Recipient"] for b in blocks[1:]] ==
           ["rfc822; bob@rcpt.example", "rfc822; carol@slow.example"], "multi: two recipient blocks")

    raw = run("hostile")
    msg, parts, types = check_structure(tap, "hostile", raw)
    blocks = status_blocks(msg)
    everywhere = [msg] + blocks + list(parts)
    tap.ok(all(m["X-Injected"] is None and m["Bcc"] is None and m["X-Envid-Injected"] is None
               for m in everywhere), "hostile: no injected header in any header block")
    tap.ok(len(blocks) == 2, "hostile: still one recipient block", len(blocks))
    tap.ok("X-Injected: yes" in unfold(blocks[1]["Diagnostic-Code"]),
           "hostile: reply text kept inside Diagnostic-Code", blocks[1]["Diagnostic-Code"])
    tap.ok(types[2] == "message/rfc822", "hostile: no extra text/html part", types)

    raw = run("full", ORIGINAL_8BIT)
    msg, parts, types = check_structure(tap, "8bit", raw)
    tap.ok(msg["Content-Transfer-Encoding"] == "8bit", "8bit: top-level CTE 8bit")
    tap.ok(parts[2]["Content-Transfer-Encoding"] == "8bit", "8bit: message/rfc822 CTE 8bit")
    inner = parts[2].get_payload(0)
    tap.ok(b"Gr\xc3\xbc\xc3\x9fe" in inner.as_bytes(), "8bit: 8-bit body returned unchanged")

    return tap.done()


if __name__ == "__main__":
    if not os.access(TOOL, os.X_OK):
        print("1..0 # SKIP %s not built" % TOOL)
        sys.exit(0)
    sys.exit(main())
