#!/usr/bin/env python3
"""test_submit.py - local submission is authenticated by uid, tried as real users.

The pickup socket is mode 0666: any local user can reach it. pmtad must know
who is calling from the kernel (SO_PEERCRED), name that user in Received and
in its log, let only trusted-submit-users pick the envelope sender, and
refuse users that submit-users leaves out. The users are the system's own:
root (always trusted), daemon (trusted through @daemon, its primary group),
nobody and www-data (allowed, untrusted) and bin (not allowed). Each runs the
real sendmail command through runuser, or speaks SMTP to the socket itself.
"""
import os
import pwd
import socket
import subprocess
import sys

from pmtatest import Pmta, Tap, body_of, find_message, qdump, require_root, tool_path

tap = Tap()
require_root(tap)
HOST = "mta.test.example"            # host-name in pmtatest's config
DKIM_KEY = os.path.join(os.environ.get("PMTA_SRCDIR", "."), "t", "data", "dkim", "test.key")
EX_NOPERM = 77


def received(m):
    """The first Received field, unfolded."""
    head = body_of(m).split("\r\n\r\n", 1)[0]
    fields = head.replace("\r\n\t", " ").replace("\r\n ", " ").split("\r\n")
    return next((f for f in fields if f.lower().startswith("received:")), "")


with Pmta(name="test_submit") as p:
    p.write_config("""
submit-users nobody, daemon www-data
trusted-submit-users @daemon
""", processes={"smtp-out": 0})
    p.start()
    p.wait_log(r"cleanup\[\d+\]: info: queue .* open", timeout=20)
    socket_path = os.path.join(p.run_dir, "pickup")
    sm = tool_path("sendmail")

    def sendmail(user, args, mid, extra=""):
        """Run sendmail as USER with ARGS; a message with Message-ID MID on stdin."""
        cmd = [sm] + args
        if user != "root":
            cmd = ["runuser", "-u", user, "--"] + cmd
        env = dict(os.environ, PMTA_PICKUP_SOCKET=socket_path)
        text = "Subject: %s\nMessage-ID: %s\n%s\nbody of %s\n" % (mid, mid, extra, mid)
        return subprocess.run(cmd, input=text.encode(), capture_output=True, env=env, timeout=30)

    # --- root: trusted, any -f --------------------------------------------------------------
    r = sendmail("root", ["-f", "boss@example.test", "r@example.test"], "<root1@test>")
    m = find_message(qdump(p.spool, body=True), "<root1@test>")
    tap.ok(r.returncode == 0 and m and m["sender"] == "boss@example.test",
           "root may use any -f", (r.stderr, m and m["sender"]))
    tap.ok(m and "from userid 0 (root)" in received(m) and "by %s" % HOST in received(m),
           "Received names the submitter: 'by HOST (openpmta, from userid 0 (root))'",
           m and received(m))

    # --- nobody: -f of someone else becomes nobody's own address ----------------------------
    nobody = pwd.getpwnam("nobody")
    mark = p.log_mark()
    r = sendmail("nobody", ["-f", "ceo@operator.example", "r@example.test"], "<nobody1@test>")
    m = find_message(qdump(p.spool, body=True), "<nobody1@test>")
    tap.ok(r.returncode == 0 and m and m["sender"] == "nobody@" + HOST,
           "an untrusted user's -f is replaced by login@host-name",
           (r.returncode, r.stderr, m and m["sender"]))
    tap.ok(m and "from userid %d (nobody)" % nobody.pw_uid in received(m),
           "Received carries nobody's uid and name", m and received(m))
    log = p.log_since(mark)
    tap.ok("uid %d (nobody) is not in trusted-submit-users: sender <ceo@operator.example> "
           "replaced by <nobody@%s>" % (nobody.pw_uid, HOST) in log,
           "the replacement is logged with uid and both addresses", log[-800:])
    tap.ok("connect from uid %d (nobody)" % nobody.pw_uid in log
           and "from uid %d (nobody)" % nobody.pw_uid in log.split("queued as", 1)[-1],
           "the log names the local user at connect and at 'queued as'", log[-800:])

    # its own address, in either spelling, is kept
    r = sendmail("nobody", ["r@example.test"], "<nobody2@test>")
    m = find_message(qdump(p.spool, body=True), "<nobody2@test>")
    tap.ok(r.returncode == 0 and m and m["sender"] == "nobody@" + socket.gethostname(),
           "without -f (login@system name) the sender is kept", m and m["sender"])
    r = sendmail("nobody", ["-f", "nobody@" + HOST.upper(), "r@example.test"], "<nobody3@test>")
    m = find_message(qdump(p.spool, body=True), "<nobody3@test>")
    tap.ok(m and m["sender"] == "nobody@" + HOST.upper(), "login@host-name itself is kept",
           m and m["sender"])

    # straight to the socket, no sendmail: the null sender is replaced too
    r = subprocess.run(["runuser", "-u", "www-data", "--", sm, "-bs"],
                       input=("EHLO local\r\nMAIL FROM:<>\r\nRCPT TO:<r@example.test>\r\nDATA\r\n"
                              "Message-ID: <www1@test>\r\n\r\nvia -bs\r\n.\r\nQUIT\r\n").encode(),
                       capture_output=True, env=dict(os.environ, PMTA_PICKUP_SOCKET=socket_path),
                       timeout=30)
    out = r.stdout.decode(errors="replace")
    m = find_message(qdump(p.spool, body=True), "<www1@test>")
    tap.ok("250 2.1.0 Sender set to your own address" in out and m
           and m["sender"] == "www-data@" + HOST,
           "an SMTP session on the socket: MAIL FROM:<> becomes www-data@host-name, and MAIL "
           "says so", (out, m and m["sender"]))

    # --- daemon: trusted through its group ----------------------------------------------------
    r = sendmail("daemon", ["-f", "bounces@example.test", "r@example.test"], "<daemon1@test>")
    m = find_message(qdump(p.spool, body=True), "<daemon1@test>")
    tap.ok(r.returncode == 0 and m and m["sender"] == "bounces@example.test",
           "a member of a trusted @group may use any -f", (r.stderr, m and m["sender"]))

    # --- bin: not in submit-users -------------------------------------------------------------
    before = len(qdump(p.spool))
    r = sendmail("bin", ["r@example.test"], "<bin1@test>")
    err = r.stderr.decode(errors="replace")
    tap.ok(r.returncode == EX_NOPERM and "554 5.7.1 uid 2 (bin) may not submit mail here" in err,
           "a user outside submit-users: 554 5.7.1, sendmail exits EX_NOPERM",
           (r.returncode, err))
    tap.ok(len(qdump(p.spool)) == before, "nothing was queued for bin")
    tap.ok(p.wait_log(r"connection from uid 2 \(bin\) refused: local user not in submit-users"),
           "the refusal is logged")

    # --- a reload changes who is trusted ----------------------------------------------------------
    p.write_config("trusted-submit-users nobody\n", processes={"smtp-out": 0})
    mark = p.log_mark()
    p.send_signal(1)
    p.wait_log(r"smtpd\[\d+\]: info: using configuration generation 2", since=mark, count=2)
    r = sendmail("nobody", ["-f", "list@example.test", "r@example.test"], "<nobody4@test>")
    m = find_message(qdump(p.spool, body=True), "<nobody4@test>")
    tap.ok(r.returncode == 0 and m and m["sender"] == "list@example.test",
           "after a reload naming nobody in trusted-submit-users, its -f is kept",
           m and m["sender"])
    r = sendmail("bin", ["r@example.test"], "<bin2@test>")
    tap.ok(r.returncode == 0 and find_message(qdump(p.spool, body=True), "<bin2@test>"),
           "without submit-users, every user may submit again", r.stderr)

    # --- DKIM: an untrusted local user's mail is signed only as their own -------------------
    p.write_config("trusted-submit-users @daemon\ndomain-key s1,*,%s\n"
                   "<domain *>\n  dkim-sign yes\n</domain>\n" % DKIM_KEY,
                   processes={"smtp-out": 0})
    mark = p.log_mark()
    p.send_signal(1)
    p.wait_log(r"cleanup\[\d+\]: info: using configuration generation 3", since=mark)
    cases = (("nobody", "From: CEO <ceo@operator.example>", "<dk1@test>", False,
              "an untrusted user's From of the operator's domain is not DKIM-signed"),
             ("nobody", "From: nobody@%s" % HOST, "<dk2@test>", True,
              "an untrusted user's mail from their own address is signed"),
             ("nobody", "From: nobody@%s\nSender: ceo@operator.example" % HOST, "<dk3@test>",
              False, "... but not with a Sender of another domain"),
             ("root", "From: CEO <ceo@operator.example>", "<dk4@test>", True,
              "root's mail from the operator's domain is signed"),
             ("daemon", "From: CEO <ceo@operator.example>", "<dk5@test>", True,
              "a trusted-submit-users member's (@daemon) mail is signed"))
    for user, header, mid, signed, name in cases:
        r = sendmail(user, ["r@example.test"], mid, header)
        m = find_message(qdump(p.spool, body=True), mid)
        has_sig = bool(m) and "DKIM-Signature:" in body_of(m).split("\r\n\r\n", 1)[0]
        tap.ok(r.returncode == 0 and m and has_sig == signed, name,
               (r.stderr, m and body_of(m)[:400]))
    tap.ok("not DKIM-signed: the signing identity is not the local user's own domain (nobody "
           "is not in trusted-submit-users)" in p.log_since(mark),
           "the unsigned message is logged with the reason", p.log_since(mark)[-600:])

sys.exit(tap.done())
