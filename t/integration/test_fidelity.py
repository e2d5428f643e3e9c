#!/usr/bin/env python3
"""test_fidelity - a PowerMTA host's config means what it meant, its accounting
feeds the same parsers, its log can be followed (issue 14, points 2, 3, 6).

One pmtad with real peers on loopback: t/lib/testsmtpd.py with STARTTLS on
127.0.0.41 (and the senders' DSNs), a closed port on 127.0.0.42, a Python
HTTP endpoint on 127.0.0.43, a pipe program and directories for file
delivery. Mail goes in over SMTP (smtplib).

  delivery types  discard (d, dlvType discard), discard-as-bounce (b, no DSN),
                  pipe (exit 0 delivered with the message on stdin, 75
                  deferred, 67 bounced 5.1.1, a program past command-timeout
                  deferred), file newfile-pickup (x-sender, .msg, no .tmp)
                  and append-mbox (From line, >From quoting), http-delivery
                  (PowerMTA's JSON; 200 delivered, 503 deferred, 400 bounced)
  accounting      one CSV with records d,b,t,tq,r read with the field lists
                  of /work/shared/reference/powermta.md section 3: every
                  column of every record type checked (TLS 1.3 protocol and
                  cipher, ESMTP list, "5.1.1 (bad destination mailbox
                  address)", "smtp;550 ...", "smtp;451 4.4.1 [internal] ...",
                  "mx (ip)", no-answer-from-host, message-expired with 5.4.7
                  and its DSN "Action: failed"/"Status: 5.4.7"); exactly one r
                  record per accepted recipient, also after a restart
  logs            the queue id of the 250 reply is the one smtpd, cleanup and
                  qmgr log; log-commands/log-data/log-connections transcript;
                  log-transfer-failures only for the failed transaction;
                  log-max-size rotates the log
  client options  use-starttls no (clear), ignore-pipelining (one command per
                  read), bounce-upon-no-mx (an A-only domain bounces)
  stalls, 8-bit   data-send-timeout ends a transfer a receiver stopped reading;
                  ignore-8bitmime sends 8-bit mail to a receiver without 8BITMIME
                  (bounced 5.6.3 without it)
  macros          domain-macro: a <domain $macro.fid> block applies to a member
  config          a type without its command / file-destination / URL, and
                  a bad http-delivery-url, are load errors with file:line

Prints TAP. Needs root (pmtad's workers, the pipe program runs as pmta).
"""

import csv
import http.server
import json
import os
import re
import shutil
import smtplib
import socket
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))

from pmtatest import Pmta, Tap, free_port, require_root, wait_for  # noqa: E402
from dnsmasq import Dnsmasq, dnsmasq_path  # noqa: E402
from testsmtpd import TestSmtpd  # noqa: E402

SENDER = "sender@sender.fid"
RX_IP, CLOSED_IP, HTTP_IP = "127.0.0.41", "127.0.0.42", "127.0.0.43"

# The field lists of reference/powermta.md section 3 (header_X as we ask for it).
REF_DBT = ("timeLogged timeQueued timeFirstAttempt totalSecondsQueued orig rcpt orcpt dsnAction "
           "dsnStatus dsnDiag dsnMta bounceCat srcType srcMta dlvType dlvSourceIp "
           "dlvDestinationIp dlvEsmtpAvailable dlvSize vmta jobId envId queue vmtaPool "
           "header_Subject userString dlvTlsProtocol dlvTlsCipher rcvSmtpUser").split()
REF_TQ = ("timeLogged queue vmta dsnStatus dsnDiag dsnMta dlvType dlvSourceIp dlvDestinationIp "
          "userString").split()
REF_R = ("timeLogged orig rcpt orcpt srcType srcMta rcvSourceIp rcvDestinationIp vmta vmtaPool "
         "jobId envId header_Subject userString rcvSmtpUser").split()
ISO = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\+0000$")

PIPE_PROGRAM = """#!/bin/sh
# the pipe delivery program of test_fidelity: $1 is $user, $2 is $to
case "$1" in
  tmp*) echo "try later, $1"; exit 75 ;;
  nouser*) echo "no such user $1" >&2; exit 67 ;;
  slow*) sleep 30; exit 0 ;;
esac
cat > "%(out)s/$1.eml" && echo "env $SENDER $RECIPIENT $2" > "%(out)s/$1.env"
"""

CONFIG = """
name-server %(dns)s
user-string-ignored-here no
<source 127.0.0.1>
  always-allow-relaying yes
  process-x-job yes
</source>
<bounce-category-patterns>
  /ticket-4711/ ticket-refused
</bounce-category-patterns>
<acct-file %(acct)s>
  records d,b,t,tq,r
  record-fields d *,header_Subject
  record-fields b *,header_Subject
  record-fields t *,header_Subject
  record-fields r *,header_Subject
  user-string fid-us
</acct-file>
<domain *>
  retry-after 1s
  retry-recipients-after 1s
</domain>
<domain sender.fid>
  smtp-hosts [%(rx_ip)s]:%(rx_port)d
</domain>
<domain tls.fid>
  smtp-hosts [%(rx_ip)s]:%(rx_port)d
  log-commands yes
  log-data yes
  log-connections yes
</domain>
<domain fail.fid>
  smtp-hosts [%(rx_ip)s]:%(rx_port)d
  log-transfer-failures yes
</domain>
<domain refused.fid>
  smtp-hosts [%(closed_ip)s]:%(closed_port)d
  bounce-after 4s
</domain>
<domain greet.fid>
  smtp-hosts [%(rx_ip)s]:%(slow_port)d
  smtp-greeting-timeout 1s
  retry-after 1h
</domain>
<domain dot.fid>
  smtp-hosts [%(rx_ip)s]:%(dot_port)d
  smtp-data-termination-timeout 1s
  retry-after 1h
</domain>
<domain stall.fid>
  smtp-hosts [%(rx_ip)s]:%(stall_port)d
  data-send-timeout 2s
  retry-after 1h
</domain>
<domain ig8.fid>
  smtp-hosts [%(rx_ip)s]:%(no8_port)d
  ignore-8bitmime yes
</domain>
<domain no8.fid>
  smtp-hosts [%(rx_ip)s]:%(no8_port)d
</domain>
<domain clear.fid>
  smtp-hosts [%(rx_ip)s]:%(rx_port)d
  use-starttls no
</domain>
<domain nopipe.fid>
  smtp-hosts [%(rx_ip)s]:%(rx_port)d
  ignore-pipelining yes
</domain>
<domain aonly.fid>
  default-smtp-port %(rx_port)d
  bounce-upon-no-mx yes
</domain>
<domain aonly2.fid>
  default-smtp-port %(rx_port)d
</domain>
<domain nodsn.fid>
  smtp-hosts [%(rx_ip)s]:%(rx_port)d
  ignore-dsn yes
</domain>
<domain g554.fid>
  smtp-hosts [%(rx_ip)s]:%(g554_port)d
  bounce-upon-5xx-greeting no
  retry-after 1h
</domain>
<domain attempts.fid>
  smtp-hosts [%(closed_ip)s]:%(closed_port)d, [%(closed_ip)s]:%(closed_port2)d
  mx-connection-attempts 1
  log-connections yes
  retry-after 1h
</domain>
<domain auth.fid>
  smtp-hosts [%(rx_ip)s]:%(auth_port)d
  auth-username alice
  auth-password S3cret-pw
  log-commands yes
</domain>
domain-macro discards discard2, discard3
<domain discard.fid>
  type discard
</domain>
<domain $discards.fid>
  type discard
</domain>
<domain bdiscard.fid>
  type discard
  discard-as-bounce yes
</domain>
<domain pipe.fid>
  type pipe
  command "%(program)s \\"$user\\" \\"$to\\""
  command-timeout 2s
  max-smtp-out 2
</domain>
<domain file.fid>
  type file
  file-destination %(files)s/$domain
  file-format newfile-pickup
</domain>
<domain mbox.fid>
  type file
  file-destination %(files)s/mbox/$user
  file-format append-mbox
</domain>
<domain http.fid>
  type http-delivery
  http-delivery-url http://%(http_ip)s:%(http_port)d/hook
</domain>
""".replace("user-string-ignored-here no\n", "")


class Hook(http.server.BaseHTTPRequestHandler):
    got = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        doc = json.loads(body)
        Hook.got.append(doc)
        to = doc.get("rcpt_to", "")
        code = 503 if to.startswith("tmp") else 400 if to.startswith("bad") else 200
        self.send_response(code)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


def message(to, subject, extra=""):
    return ("From: <%s>\r\nTo: <%s>\r\nSubject: %s\r\nX-Job: job-%s\r\n%s\r\n"
            "body of %s\r\nFrom the start of a line\r\n" % (SENDER, to, subject, subject, extra,
                                                           subject)).encode()


def send(port, rcpts, data, envid=None):
    """One transaction; the 250 reply's text."""
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
        s.ehlo("client.fid")
        opts = ["ENVID=%s" % envid] if envid else []
        s.mail(SENDER, opts)
        for r in rcpts:
            s.rcpt(r, ["ORCPT=rfc822;orig-%s" % r, "NOTIFY=FAILURE"])
        code, text = s.data(data)
        return code, text.decode()


def read_acct(path):
    try:
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
    except OSError:
        return [], []
    return (rows[0], [dict(zip(rows[0], r)) for r in rows[1:]]) if rows else ([], [])


def closed_port(host):
    """A port on HOST nobody listens on (connections are refused)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def check_columns(tap, header, rows, rtype, ref):
    missing = [f for f in ref if f not in header]
    tap.ok(not missing, "accounting %s: every reference column is in the header" % rtype,
           "missing %s" % missing)


def main():
    tap = Tap()
    require_root(tap)
    if dnsmasq_path() is None:
        return tap.skip_all("dnsmasq not installed")
    work = tempfile.mkdtemp(prefix="test_fidelity.")
    os.chmod(work, 0o755)
    rx = TestSmtpd(["%s:%d" % (RX_IP, free_port(RX_IP))],
                   {"starttls": True, "rcpt": [["bad", "550 5.1.1 <bad>: no such user here"],
                                               ["tick", "550 5.0.0 refused, see ticket-4711"]]},
                   work, "rx")
    rx_port = int(rx.listen[0].split(":")[1])
    extra = {name: TestSmtpd(["%s:%d" % (RX_IP, free_port(RX_IP))], script, work, name)
             for name, script in (("slow", {"delay": {"greeting": 4}}),
                                  ("dot", {"delay": {"dot": 4}}),
                                  ("stall", {"stall_in_data": True}),
                                  ("no8", {"8bitmime": False}),
                                  ("g554", {"greeting": "554 5.7.1 go away"}),
                                  ("auth", {"starttls": True,
                                            "auth": {"user": "alice", "password": "S3cret-pw",
                                                     "mechanisms": ["LOGIN"],
                                                     "require": True}}))}
    dns = Dnsmasq(local=["fid"], hosts=[("aonly.fid", RX_IP), ("aonly2.fid", RX_IP)])
    http_port = free_port(HTTP_IP)
    hook = http.server.ThreadingHTTPServer((HTTP_IP, http_port), Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    out = os.path.join(work, "piped")
    files = os.path.join(work, "files")
    for d in (out, files):
        os.makedirs(d)
        shutil.chown(d, "pmta", "pmta")
    program = os.path.join(work, "deliver.sh")
    with open(program, "w") as f:
        f.write(PIPE_PROGRAM % {"out": out})
    os.chmod(program, 0o755)
    pmta = None
    try:
        rx.start()
        for e in extra.values():
            e.start()
        dns.start()
        pmta = Pmta(name="fidelity")
        acct = os.path.join(pmta.spool, "acct.csv")
        pmta.write_config(CONFIG % {"dns": dns.server, "acct": acct, "rx_ip": RX_IP,
                                    "rx_port": rx_port, "closed_ip": CLOSED_IP,
                                    "closed_port": closed_port(CLOSED_IP),
                                    "closed_port2": closed_port(CLOSED_IP), "program": program,
                                    "slow_port": int(extra["slow"].listen[0].split(":")[1]),
                                    "dot_port": int(extra["dot"].listen[0].split(":")[1]),
                                    "stall_port": int(extra["stall"].listen[0].split(":")[1]),
                                    "no8_port": int(extra["no8"].listen[0].split(":")[1]),
                                    "g554_port": int(extra["g554"].listen[0].split(":")[1]),
                                    "auth_port": int(extra["auth"].listen[0].split(":")[1]),
                                    "files": files, "http_ip": HTTP_IP,
                                    "http_port": http_port})
        pmta.start()
        run(tap, pmta, rx, acct, out, files, extra)
        restart(tap, pmta, acct)
        config_errors(tap, work)
        rotation(tap)
    finally:
        if pmta:
            pmta.close()
        hook.shutdown()
        rx.stop()
        for e in extra.values():
            e.stop()
        dns.stop()
        if not os.environ.get("PMTA_KEEP"):
            shutil.rmtree(work, ignore_errors=True)
    return tap.done()


def mail_rcpt_reads(rx):
    """{recipient: (read number of its MAIL, of its RCPT)} as the receiver logged them."""
    out, last_mail = {}, {}
    for e in rx.events():
        if e["event"] == "mail":
            last_mail[e["conn"]] = e["read"]
        elif e["event"] == "rcpt" and e["conn"] in last_mail:
            out[e["to"]] = (last_mail[e["conn"]], e["read"])
    return out


def send_8bit(port, to):
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
        s.sendmail(SENDER, [to], message(to, "8bit", "Content-Type: text/plain; "
                                         "charset=latin1\r\n").replace(b"body of", b"caf\xe9 of"),
                   mail_options=["BODY=8BITMIME"])


def run(tap, pmta, rx, acct, out, files, extra):
    port = pmta.port
    send(port, ["ok1@tls.fid", "bad1@tls.fid"], message("ok1@tls.fid", "tls"), envid="env-tls-1")
    send(port, ["ok2@fail.fid", "bad2@fail.fid"], message("ok2@fail.fid", "fail"))
    send(port, ["gone@refused.fid"], message("gone@refused.fid", "refused"))
    send(port, ["a@discard.fid"], message("a@discard.fid", "discard"))
    send(port, ["b@bdiscard.fid"], message("b@bdiscard.fid", "bdiscard"))
    send(port, ["okp@pipe.fid", "tmpp@pipe.fid", "nouserp@pipe.fid", "slowp@pipe.fid"],
         message("okp@pipe.fid", "pipe"))
    send(port, ["okf@file.fid"], message("okf@file.fid", "file"))
    send(port, ["okm@mbox.fid"], message("okm@mbox.fid", "mbox1"))
    send(port, ["okm@mbox.fid"], message("okm@mbox.fid", "mbox2"))
    code, text = send(port, ["okh@http.fid", "tmph@http.fid", "badh@http.fid"],
                      message("okh@http.fid", "http"))
    qid = re.search(r"queued as ([0-9A-F]{20})", text)  # past id 9: hex and decimal differ
    tap.ok(code == 250 and qid and re.search("[A-F]", qid.group(1)),
           "the 250 reply names the hex queue id", text)
    qid = qid.group(1) if qid else "?"
    send(port, ["m@discard3.fid"], message("m@discard3.fid", "macro"))
    # past both sockets' buffers (a 4 KB receive buffer, up to 4 MB to send): writes block
    send(port, ["u@stall.fid"], message("u@stall.fid", "stall", "X-Pad: pad\r\n")
         + (b"y" * 998 + b"\r\n") * 9000)
    send(port, ["tick@fail.fid"], message("tick@fail.fid", "tick"))
    for dom in ("clear", "nopipe", "aonly", "aonly2"):
        send(port, ["u@%s.fid" % dom], message("u@%s.fid" % dom, dom))
    send_8bit(port, "u@ig8.fid")
    send_8bit(port, "u@no8.fid")
    for dom in ("greet", "dot", "nodsn", "g554", "attempts", "auth"):
        send(port, ["u@%s.fid" % dom], message("u@%s.fid" % dom, dom))
    accepted = {"tick@fail.fid", "u@clear.fid", "u@nopipe.fid", "u@aonly.fid", "u@aonly2.fid", "m@discard3.fid", "u@stall.fid", "u@ig8.fid", "u@no8.fid", "u@auth.fid", "u@greet.fid", "u@dot.fid", "u@nodsn.fid", "u@g554.fid", "u@attempts.fid","ok1@tls.fid", "bad1@tls.fid", "ok2@fail.fid", "bad2@fail.fid",
                "gone@refused.fid", "a@discard.fid", "b@bdiscard.fid", "okp@pipe.fid",
                "tmpp@pipe.fid", "nouserp@pipe.fid", "slowp@pipe.fid", "okf@file.fid",
                "okm@mbox.fid", "okh@http.fid", "tmph@http.fid", "badh@http.fid"}

    def rows_of(t, rcpt=None):
        return [r for r in read_acct(acct)[1]
                if r["type"] == t and (rcpt is None or r["rcpt"] == rcpt)]

    # everything we wait for: the expiry bounce is the slowest (bounce-after 4s)
    wait_for(lambda: rows_of("b", "gone@refused.fid") and rows_of("t", "slowp@pipe.fid")
             and rows_of("t", "u@greet.fid") and rows_of("t", "u@dot.fid")
             and rows_of("t", "u@g554.fid") and rows_of("t", "u@attempts.fid")
             and rows_of("d", "u@auth.fid")
             and rows_of("d", "okh@http.fid") and rows_of("t", "tmph@http.fid")
             and rows_of("t", "u@stall.fid") and rows_of("d", "u@ig8.fid")
             and rows_of("b", "u@no8.fid") and rows_of("d", "u@clear.fid")
             and rows_of("d", "u@nopipe.fid") and rows_of("b", "u@aonly.fid")
             and rows_of("d", "u@aonly2.fid") and rows_of("b", "tick@fail.fid"), timeout=40)
    time.sleep(1.5)  # the accounting buffer's one second
    header, rows = read_acct(acct)
    log = pmta.log()

    # --- logs: one queue id ---
    tap.ok(re.search(r"queued as %s \(3 recipients\)" % qid, log)
           and re.search(r"queued %s from=" % qid, log)
           and re.search(r"delivered %s/0 to=okh@http\.fid" % qid, log),
           "smtpd, cleanup and qmgr log the queue id of the 250 reply (%s)" % qid)
    tag = r"connection \d+ tls\.fid/\{default\}"
    tap.ok(re.search(tag + r": > MAIL FROM:<%s>" % re.escape(SENDER), log)
           and re.search(tag + r": < 250", log) and re.search(tag + r": > STARTTLS", log)
           and re.search(tag + r": > \| Subject: tls", log),
           "log-commands and log-data: commands, replies and message lines in the log")
    tap.ok(re.search(tag + r": attempt 1: connecting to %s\[%s\]:%d" %
                     (re.escape(RX_IP), re.escape(RX_IP), int(rx.listen[0].split(":")[1])), log),
           "log-connections: the attempt is logged")
    ftag = r"connection \d+ fail\.fid/\{default\}"
    tap.ok(re.search(ftag + r": transfer failed \(.*\): transcript follows", log)
           and re.search(ftag + r": > RCPT TO:<bad2@fail\.fid>", log)
           and not re.search(ftag + r": > \|", log),
           "log-transfer-failures: the failed transaction's transcript, only then")
    import base64
    secret = [b"S3cret-pw", base64.b64encode(b"S3cret-pw"), base64.b64encode(b"alice"),
              base64.b64encode(b"\0alice\0S3cret-pw")]
    atag = r"connection \d+ auth\.fid/\{default\}"
    tap.ok(re.search(atag + r": > AUTH LOGIN", log)
           and re.search(atag + r": > \(credentials not logged\)", log)
           and not [x for x in secret if x.decode() in log],
           "log-commands never writes credentials (AUTH LOGIN's answers masked)")
    tap.ok(not re.search(r"connection \d+ refused\.fid\S*: [<>] ", log),
           "no transcript where no log-* directive asks for one")

    # --- delivery types ---
    d = {r["rcpt"]: r for r in rows if r["type"] == "d"}
    b = {r["rcpt"]: r for r in rows if r["type"] == "b"}
    t = {r["rcpt"]: r for r in rows if r["type"] == "t"}
    tap.ok(d.get("a@discard.fid", {}).get("dlvType") == "discard"
           and not [e for e in rx.events("rcpt") if "discard" in e["to"]],
           "type discard: a d record (dlvType discard), nothing sent anywhere")
    tap.ok(d.get("m@discard3.fid", {}).get("dlvType") == "discard"
           and d["m@discard3.fid"].get("queue") == "discard3.fid/{default}",
           "domain-macro: <domain $discards.fid> applies to discard3.fid (type discard)",
           d.get("m@discard3.fid"))
    bd = b.get("b@bdiscard.fid", {})
    dsn_to_sender = [e for e in rx.events("rcpt") if e["to"] == SENDER]
    tap.ok(bd.get("dlvType") == "discard" and bd.get("dsnAction") == "failed",
           "discard-as-bounce: a b record", bd)
    eml = os.path.join(out, "okp.eml")
    body = open(eml, "rb").read() if os.path.exists(eml) else b""
    env = open(os.path.join(out, "okp.env")).read() if os.path.exists(eml) else ""
    tap.ok(d.get("okp@pipe.fid", {}).get("dlvType") == "pipe" and b"Subject: pipe\n" in body
           and b"\r" not in body and "env %s okp@pipe.fid okp@pipe.fid" % SENDER in env,
           "type pipe: exit 0 delivered, the message on stdin (LF), macros and environment",
           env + body[:200].decode(errors="replace"))
    tap.ok(t.get("tmpp@pipe.fid", {}).get("dsnStatus", "").startswith("4.3.0")
           and "try later, tmpp" in t.get("tmpp@pipe.fid", {}).get("dsnDiag", ""),
           "type pipe: exit 75 (EX_TEMPFAIL) deferred with the program's words",
           t.get("tmpp@pipe.fid"))
    tap.ok(b.get("nouserp@pipe.fid", {}).get("dsnStatus") ==
           "5.1.1 (bad destination mailbox address)"
           and "no such user nouserp" in b.get("nouserp@pipe.fid", {}).get("dsnDiag", ""),
           "type pipe: exit 67 (EX_NOUSER) bounced 5.1.1 with its stderr",
           b.get("nouserp@pipe.fid"))
    tap.ok("command timed out after 2 s" in t.get("slowp@pipe.fid", {}).get("dsnDiag", ""),
           "type pipe: past command-timeout the program is killed, the recipient deferred",
           t.get("slowp@pipe.fid"))
    fdir = os.path.join(files, "file.fid")
    names = os.listdir(fdir) if os.path.isdir(fdir) else []
    msgs = [n for n in names if n.endswith(".msg")]
    content = open(os.path.join(fdir, msgs[0]), "rb").read() if msgs else b""
    tap.ok(d.get("okf@file.fid", {}).get("dlvType") == "file" and len(msgs) == 1
           and not [n for n in names if n.endswith(".tmp")]
           and content.startswith(b"x-sender: %s\nx-receiver: okf@file.fid\n" % SENDER.encode())
           and b"Subject: file\n" in content,
           "type file newfile-pickup: QUEUEID-N.msg with x-sender/x-receiver, no .tmp left",
           "%s %r" % (names, content[:200]))
    mbox = os.path.join(files, "mbox", "okm")
    mtext = open(mbox, "rb").read() if os.path.exists(mbox) else b""
    tap.ok(len(re.findall(rb"(?m)^From %s " % SENDER.encode(), mtext)) == 2
           and mtext.count(b"\n>From the start of a line\n") == 2 and b"Subject: mbox2" in mtext,
           "type file append-mbox: two messages, From lines, >From quoting", mtext[:300])
    hooks = {h.get("rcpt_to"): h for h in Hook.got}
    ok = hooks.get("okh@http.fid", {})
    tap.ok(d.get("okh@http.fid", {}).get("dlvType") == "http-delivery"
           and ok.get("msg_from") == SENDER
           and "Subject: http" in ok.get("content", {}).get("email_rfc822", "")
           and {"Subject": "http"} in ok.get("content", {}).get("headers", []),
           "type http-delivery: PowerMTA's JSON POSTed, 200 delivered", ok)
    tap.ok("HTTP 503" in t.get("tmph@http.fid", {}).get("dsnDiag", "")
           and "HTTP 400" in b.get("badh@http.fid", {}).get("dsnDiag", ""),
           "type http-delivery: 503 deferred, 400 bounced")

    # --- settings that exist to change what a connection does ---
    tap.ok("after 1 s" in t.get("u@greet.fid", {}).get("dsnDiag", ""),
           "smtp-greeting-timeout 1s: the greeting wait ends after 1 s", t.get("u@greet.fid"))
    tap.ok("after 1 s" in t.get("u@dot.fid", {}).get("dsnDiag", "")
           and "dot" in t.get("u@dot.fid", {}).get("dsnDiag", ""),
           "smtp-data-termination-timeout 1s: the wait for the reply to '.' ends after 1 s",
           t.get("u@dot.fid"))
    stalled = extra["stall"].events("stall")
    tap.ok(stalled and "timeout sending message to" in t.get("u@stall.fid", {}).get("dsnDiag", "")
           and "after 2 s" in t.get("u@stall.fid", {}).get("dsnDiag", ""),
           "data-send-timeout 2s: a receiver that stops reading mid-DATA is given up on after "
           "2 s (deferred)", (stalled, t.get("u@stall.fid")))
    mails = {e["from"]: e for e in extra["no8"].events("mail")}
    tap.ok(d.get("u@ig8.fid") and b.get("u@no8.fid", {}).get("dsnStatus", "").startswith("5.6.3")
           and [e for e in extra["no8"].events("mail") if "BODY=8BITMIME" not in
                str(e.get("params", ""))],
           "ignore-8bitmime yes: 8-bit mail goes to a receiver without 8BITMIME (no BODY= "
           "sent); without it the same mail bounces 5.6.3",
           (d.get("u@ig8.fid"), b.get("u@no8.fid"), mails))
    tap.ok(d.get("u@clear.fid", {}).get("dlvTlsProtocol") == ""
           and d.get("ok1@tls.fid", {}).get("dlvTlsProtocol") == "TLSv1.3",
           "use-starttls no: delivered in clear to a receiver that offers STARTTLS",
           d.get("u@clear.fid"))
    reads = mail_rcpt_reads(rx)
    tap.ok(reads.get("u@nopipe.fid") and reads["u@nopipe.fid"][0] != reads["u@nopipe.fid"][1]
           and reads.get("ok2@fail.fid") and reads["ok2@fail.fid"][0] == reads["ok2@fail.fid"][1],
           "ignore-pipelining: MAIL and RCPT in separate reads (in one read where not set)",
           reads)
    tap.ok(b.get("u@aonly.fid", {}).get("dsnStatus", "").startswith("5.")
           and d.get("u@aonly2.fid", {}).get("dlvDestinationIp") == RX_IP,
           "bounce-upon-no-mx yes: a domain with an A record and no MX bounces; without it the "
           "A record is the destination", (b.get("u@aonly.fid"), d.get("u@aonly2.fid")))
    params = {e["to"]: e.get("params", "") for e in rx.events("rcpt")}
    tap.ok("NOTIFY" not in str(params.get("u@nodsn.fid", "?"))
           and "NOTIFY" in str(params.get("ok1@tls.fid", "")),
           "ignore-dsn: no NOTIFY/ORCPT sent to a receiver that offers DSN (sent where not set)",
           params)
    tap.ok(t.get("u@g554.fid", {}).get("dsnStatus", "").startswith("4.")
           and "u@g554.fid" not in b,
           "bounce-upon-5xx-greeting no: a 554 greeting defers instead of bouncing",
           t.get("u@g554.fid"))
    atag = r"connection \d+ attempts\.fid/\{default\}: attempt"
    tap.ok(re.search(atag + r" 1: connecting", log) and not re.search(atag + r" 2:", log),
           "mx-connection-attempts 1: one attempt although two hosts are listed")

    # --- accounting: every column of every record type ---
    for rtype, ref in (("d", REF_DBT), ("tq", REF_TQ), ("r", REF_R)):
        check_columns(tap, header, rows, rtype, ref)
    rd = d.get("ok1@tls.fid", {})
    expect_d = {
        "dsnAction": "relayed", "dsnStatus": "2.0.0 (success)", "bounceCat": "",
        "orig": SENDER, "orcpt": "rfc822;orig-ok1@tls.fid", "srcType": "smtp",
        "srcMta": "client.fid (127.0.0.1)", "dlvType": "smtp", "dlvSourceIp": "127.0.0.1",
        "dlvDestinationIp": RX_IP, "vmta": "{default}", "jobId": "job-tls", "envId": "env-tls-1",
        "queue": "tls.fid/{default}", "vmtaPool": "", "header_Subject": "tls",
        "userString": "fid-us", "rcvSmtpUser": "",
    }
    wrong = {k: rd.get(k) for k, v in expect_d.items() if rd.get(k) != v}
    tap.ok(rd and not wrong, "d record: the fixed columns", wrong or rd)
    checks = {
        "timeLogged": ISO.match(rd.get("timeLogged", "")),
        "timeQueued": ISO.match(rd.get("timeQueued", "")),
        "timeFirstAttempt": ISO.match(rd.get("timeFirstAttempt", "")),
        "totalSecondsQueued": rd.get("totalSecondsQueued", "").isdigit(),
        "dsnDiag": rd.get("dsnDiag", "").startswith("smtp;250 "),
        "dsnMta": rd.get("dsnMta") == "%s (%s)" % (RX_IP, RX_IP),
        "dlvEsmtpAvailable": "PIPELINING" in rd.get("dlvEsmtpAvailable", "")
                             and "8BITMIME" in rd.get("dlvEsmtpAvailable", ""),
        "dlvSize": rd.get("dlvSize", "").isdigit() and int(rd["dlvSize"]) > 50,
        "dlvTlsProtocol": rd.get("dlvTlsProtocol") == "TLSv1.3",
        "dlvTlsCipher": rd.get("dlvTlsCipher", "").startswith("TLS_"),
    }
    tap.ok(all(checks.values()), "d record: times, diag, MTA, ESMTP, size, TLS 1.3 and cipher",
           "failed: %s in %s" % ([k for k, v in checks.items() if not v], rd))
    rb = b.get("bad1@tls.fid", {})
    tap.ok(rb.get("dsnStatus") == "5.1.1 (bad destination mailbox address)"
           and rb.get("dsnDiag") == "smtp;550 5.1.1 <bad>: no such user here"
           and rb.get("bounceCat") == "bad-mailbox" and rb.get("dsnAction") == "failed",
           "b record: RFC 3463 status text, the reply as diag, bad-mailbox", rb)
    tap.ok(b.get("tick@fail.fid", {}).get("bounceCat") == "ticket-refused",
           "<bounce-category-patterns> /ticket-4711/ ticket-refused classifies the reply; "
           "unmatched replies keep the stock categories (bad-mailbox above)", b.get("tick@fail.fid"))
    rt = t.get("gone@refused.fid", {})
    tap.ok(rt.get("dsnStatus") == "4.4.1 (no answer from host)"
           and rt.get("dsnDiag", "").startswith("smtp;451 4.4.1 [internal] connect to ")
           and rt.get("bounceCat") == "no-answer-from-host"
           and rt.get("dsnMta") == "%s (%s)" % (CLOSED_IP, CLOSED_IP)
           and rt.get("dsnAction") == "delayed",
           "t record of a refused connection: no-answer-from-host, an [internal] diag", rt)
    tq = [r for r in rows if r["type"] == "tq" and r["queue"] == "refused.fid/{default}"]
    tq0 = tq[0] if tq else {}
    tap.ok(tq0.get("dsnStatus") == "4.4.1 (no answer from host)" and tq0.get("vmta") == "{default}"
           and tq0.get("dlvType") == "smtp" and tq0.get("dlvDestinationIp") == CLOSED_IP
           and tq0.get("userString") == "fid-us" and tq0.get("rcpt") == "",
           "tq record: queue, status, MTA, delivery columns; no recipient columns", tq0)
    rexp = b.get("gone@refused.fid", {})
    tap.ok(rexp.get("dsnStatus") == "5.4.7 (delivery time expired)"
           and rexp.get("bounceCat") == "message-expired"
           and rexp.get("dsnDiag", "").startswith("smtp;554 5.4.7 [internal] message expired"),
           "expiry: 5.4.7, message-expired", rexp)
    dsn = None
    for ev in rx.events("data"):
        with open(ev["file"], "rb") as f:
            text = f.read()
        if b"gone@refused.fid" in text and b"delivery-status" in text:
            dsn = text
    tap.ok(dsn and b"Action: failed" in dsn and b"Status: 5.4.7" in dsn
           and b"4.4.7" not in dsn, "the expiry DSN: Action: failed, Status: 5.4.7",
           (dsn or b"")[:1500])
    tap.ok(not (dsn_to_sender and [e for e in rx.events("data")
                                   if b"b@bdiscard.fid" in open(e["file"], "rb").read()]),
           "discard-as-bounce sends no DSN")
    r_rows = [r for r in rows if r["type"] == "r"]
    counts = {}
    for r in r_rows:
        counts[r["rcpt"]] = counts.get(r["rcpt"], 0) + (0 if r["rcpt"] == SENDER else 1)
    per = {k: v for k, v in counts.items() if k in accepted}
    tap.ok(set(per) == accepted - {"okm@mbox.fid"} | {"okm@mbox.fid"} and
           all(v == 1 for k, v in per.items() if k != "okm@mbox.fid")
           and per.get("okm@mbox.fid") == 2,
           "r records: exactly one per accepted recipient (two messages to okm)", counts)
    rr = next((r for r in r_rows if r["rcpt"] == "ok1@tls.fid"), {})
    expect_r = {"orig": SENDER, "orcpt": "rfc822;orig-ok1@tls.fid", "srcType": "smtp",
                "srcMta": "client.fid (127.0.0.1)", "rcvSourceIp": "127.0.0.1",
                "rcvDestinationIp": "127.0.0.1", "vmta": "{default}", "jobId": "job-tls",
                "envId": "env-tls-1", "header_Subject": "tls", "userString": "fid-us",
                "vmtaPool": "", "rcvSmtpUser": "", "dsnStatus": "", "queue": ""}
    wrong = {k: rr.get(k) for k, v in expect_r.items() if rr.get(k) != v}
    tap.ok(rr and not wrong and ISO.match(rr.get("timeLogged", "")),
           "r record: every column", wrong or rr)
    tap.ok(not [r for r in r_rows if r["rcpt"] == SENDER],
           "no r record for the DSNs qmgr queued itself")


def restart(tap, pmta, acct):
    """A restart writes no r record twice."""
    before = [r for r in read_acct(acct)[1] if r["type"] == "r"]
    pmta.stop()
    pmta.start()
    send(pmta.port, ["late@discard.fid"], message("late@discard.fid", "late"))
    wait_for(lambda: [r for r in read_acct(acct)[1] if r["type"] == "d"
                      and r["rcpt"] == "late@discard.fid"], timeout=15)
    time.sleep(1.5)
    after = [r for r in read_acct(acct)[1] if r["type"] == "r"]
    tap.ok(len(after) == len(before) + 1 and after[-1]["rcpt"] == "late@discard.fid",
           "after a restart: the new message's r record, none written again",
           "%d before, %d after" % (len(before), len(after)))


def config_errors(tap, work):
    p = Pmta(name="fidelity-cfg")
    try:
        cases = (("<domain x.fid>\n  type pipe\n</domain>\n", r":\d+: error: type pipe needs command"),
                 ("<domain *>\n  type file\n</domain>\n",
                  r":\d+: error: type file needs file-destination"),
                 ("<domain x.fid>\n  type http-delivery\n"
                  "  http-delivery-url ftp://example.com/x\n</domain>\n",
                  r":\d+: error: http-delivery-url: 'ftp://example.com/x' is not an http"))
        for text, want in cases:
            p.write_config(text)
            r = p.run("--check-config", "-c", p.config_path)
            tap.ok(r.returncode != 0 and re.search(want, r.stdout + r.stderr),
                   "refused at load: %s" % want, r.stdout + r.stderr)
    finally:
        p.close()


def rotation(tap):
    """log-max-size: the log is rotated once it passes the size."""
    p = Pmta(name="fidelity-log")
    try:
        p.write_config("log-max-size 2k\nlog-rotate 3\n<source 127.0.0.1>\n"
                       "  always-allow-relaying yes\n</source>\n"
                       "<domain *>\n  type discard\n</domain>\n")
        p.start()
        for i in range(8):
            send(p.port, ["x%d@any.fid" % i], message("x%d@any.fid" % i, "rot%d" % i))
        rotated = wait_for(lambda: os.path.exists(p.log_path + ".1"), timeout=20)
        tap.ok(rotated and "rotating the log: size (log-max-size)" in
               open(p.log_path + ".1", errors="replace").read() + p.log(),
               "log-max-size 2k: the log is rotated by size")
    finally:
        p.close()


if __name__ == "__main__":
    sys.exit(main())
