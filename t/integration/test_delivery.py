#!/usr/bin/env python3
"""test_delivery - the outbound path end to end, proven from the receivers' side.

One pmtad (smtpd -> cleanup -> qmgr -> smtp-out) in a temporary directory,
dnsmasq on 127.0.0.1 serving MX/A records for the test domains, and real
receivers on 127.0.0.2-9, .12, .13: t/lib/testsmtpd.py (scriptable, logs JSON) and
Postfix's smtp-sink. Mail is injected over SMTP (smtplib) to pmtad's listener.
Everything is injected at once and checked as it arrives, so the slow cases
(rate, retries, expiry) run side by side.

  basic.test   127.0.0.2   byte-identical arrival apart from our headers;
                           DKIM verifies; source IP and EHLO of vmta v1/v2
                           (127.0.0.10 / .11); bad* answered 550 -> DSN;
                           a client's ORCPT and NOTIFY arrive as given
  split.test   127.0.0.2   max-rcpt-per-transaction 3: 10 rcpts -> 3+3+3+1
  rate.test    127.0.0.3   max-msg-rate 10/s: never 11 in any 1 s window
  conc.test    127.0.0.4   max-smtp-out 2 with slow replies: never 3 at once
  retry.test   127.0.0.5   450, retried after retry-after 2s,4s, delivered
                           once the receiver (restarted) accepts
  sender.test  127.0.0.6   the envelope sender's domain: receives the DSNs
  expire.test  127.0.0.7   always 450, bounce-after 5s -> expiry DSN
  tls.test     127.0.0.8   opportunistic STARTTLS, self-signed certificate
  notls.test   127.0.0.8:2526  require-starttls yes, peer without STARTTLS:
                           nothing arrives, the recipient stays queued
  sink.test    127.0.0.9   smtp-sink receives 20 messages
  hole.test    127.0.0.9:2527  a peer that never completes the TCP handshake
                           (t/lib/blackhole.py), connect-timeout 2s: one
                           attempt, deferred about 2 s after queueing with
                           "... after 2 s", the recipient stays queued
  throttle.test 127.0.0.12 a Gmail-style throttle: the first 2 RCPTs get
                           "421 4.7.28 ... rate limit exceeded", then 250.
                           max-msg-rate 50/s, max-smtp-out 5; its
                           smtp-pattern-list puts the queue in backoff
                           (backoff-max-msg-rate 2/s, backoff-max-smtp-out 1):
                           one mode line, then never 3 messages in 1 s nor 2
                           connections at once, all 14 accepted
  nothrottle.test 127.0.0.13  the control: same settings and replies, an
                           empty pattern list (which replaces the built-in
                           one): more than 2 messages in 1 s
  accounting   d rows <-> recipients the receivers accepted; b rows <->
               recipients of the failure DSNs; an <acct-file "|tee FILE"> pipe with
               records d gets a header and the same d rows as the file
  qmgr restart smtp-out reconnects to a new qmgr and delivers again
  shutdown     a transaction running at SIGTERM finishes (slow.test, 127.0.0.9:2526)

Prints TAP. Needs root (smtp-sink -u nobody, pmtad's workers), dnsmasq,
smtp-sink, python3-dkim. Only 127.0.0.0/8 is used.
"""

import datetime
import email
import email.policy
import os
import re
import shutil
import signal
import smtplib
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))

from blackhole import Blackhole  # noqa: E402
from childproc import stop_child  # noqa: E402
from pmtatest import Pmta, Tap, acct_rows, qdump, require_root, wait_for  # noqa: E402
from dnsmasq import Dnsmasq, dnsmasq_path  # noqa: E402
from testsmtpd import TestSmtpd  # noqa: E402

import dkim  # noqa: E402

SRCDIR = os.environ.get("PMTA_SRCDIR", os.path.join(os.path.dirname(__file__), "..", ".."))
DATA = os.path.join(SRCDIR, "t", "data")
DKIM_KEY = os.path.join(DATA, "dkim", "test.key")
with open(os.path.join(DATA, "dkim", "test.txt"), "rb") as _f:
    DKIM_RECORD = _f.read().strip()

SENDER = "sender@sender.test"
PORT = 2525
HOLE_PORT = 2527    # the blackhole on 127.0.0.9 (smtp-sink has 2525, slow.test 2526)

DOMAINS = {  # domain -> receiver IP
    "basic.test": "127.0.0.2", "split.test": "127.0.0.2", "rate.test": "127.0.0.3",
    "conc.test": "127.0.0.4", "retry.test": "127.0.0.5", "sender.test": "127.0.0.6",
    "expire.test": "127.0.0.7", "tls.test": "127.0.0.8", "notls.test": "127.0.0.8",
    "sink.test": "127.0.0.9", "slow.test": "127.0.0.9", "hole.test": "127.0.0.9",
    "throttle.test": "127.0.0.12", "nothrottle.test": "127.0.0.13",
}
ALL_450 = {"rcpt": [["", "450 4.2.0 Mailbox busy, try later"]]}
RATE_LIMIT = ("421 4.7.28 Our system has detected an unusual rate of unsolicited mail, "
              "rate limit exceeded. Try again later.")
THROTTLE = {"rcpt": [["", RATE_LIMIT, 2]],  # the first 2 RCPTs, then the defaults (250)
            "delay": {"dot": 0.3}}          # slow enough that mail queues up: several connections
THROTTLED = 14                              # messages to each of throttle.test, nothrottle.test

CONFIG = """
name-server %(dns)s
<source 127.0.0.1>
  always-allow-relaying yes
  process-x-virtual-mta yes
</source>
<virtual-mta v1>
  smtp-source-host 127.0.0.10 v1.src.test
</virtual-mta>
<virtual-mta v2>
  smtp-source-host 127.0.0.11 v2.src.test
</virtual-mta>
domain-key s1,sender.test,%(key)s
<sender bulk@sender.test>
  vmta v2
  bounce-sender bounces@sender.test
</sender>
<acct-file %(acct)s>
  records d,b
</acct-file>
<acct-file "|/usr/bin/tee %(acct_pipe)s">
  records d
</acct-file>
<domain *>
  default-smtp-port %(port)d
  retry-after 2s
  retry-recipients-after 1s
</domain>
<domain basic.test>
  dkim-sign yes
</domain>
<domain split.test>
  max-rcpt-per-transaction 3
  max-smtp-out 1
</domain>
<domain rate.test>
  max-msg-rate 10/s
</domain>
<domain conc.test>
  max-smtp-out 2
</domain>
<domain retry.test>
  retry-after 2s,4s
  retry-recipients-after 1s
</domain>
<domain expire.test>
  bounce-after 5s
  retry-after 1s
  retry-recipients-after 1s
</domain>
<domain slow.test>
  default-smtp-port 2526
</domain>
<domain notls.test>
  require-starttls yes
  default-smtp-port 2526
</domain>
<domain hole.test>
  default-smtp-port %(hole_port)d
  connect-timeout 2s
  retry-after 10m
  retry-recipients-after 10m
</domain>
<smtp-pattern-list gmail>
  reply /rate limit exceeded/ mode=backoff
</smtp-pattern-list>
<smtp-pattern-list quiet>
</smtp-pattern-list>
""" + "".join("""<domain %s>
  smtp-pattern-list %s
  max-msg-rate 50/s
  max-smtp-out 5
  backoff-max-msg-rate 2/s
  backoff-max-smtp-out 1
  retry-after 1s
  backoff-retry-after 1s
  retry-recipients-after 1s
</domain>
""" % pair for pair in (("throttle.test", "gmail"), ("nothrottle.test", "quiet")))

ORIGINAL = (b"From: Sender <sender@sender.test>\r\n"
            b"To: Bob <ok-plain@basic.test>\r\n"
            b"Subject: byte for byte\r\n"
            b"Date: Tue, 14 Nov 2023 22:13:20 +0000\r\n"
            b"Message-ID: <plain.1@sender.test>\r\n"
            b"MIME-Version: 1.0\r\n"
            b"Content-Type: text/plain; charset=us-ascii\r\n"
            b"\r\n"
            b"Hello Bob,\r\n"
            b"\r\n"
            b".a line that starts with a dot, trailing blanks   \r\n"
            b"and a tab\tinside.\r\n"
            b"..\r\n"
            b"Alice\r\n")
OUR_HEADERS = (b"received", b"dkim-signature")


def message(to, subject, vmta=None):
    head = "From: Sender <%s>\r\nTo: <%s>\r\nSubject: %s\r\n" % (SENDER, to, subject)
    if vmta:
        head += "X-Virtual-MTA: %s\r\n" % vmta
    return (head + "\r\n" + "body of %s\r\n" % subject).encode()


class Run:
    """The receivers, DNS and pmtad of one run, and what they saw."""

    def __init__(self, work):
        self.work = work
        self.rx = {}
        for name, ip, script in (("basic", "127.0.0.2", {}), ("rate", "127.0.0.3", {}),
                                 ("conc", "127.0.0.4", {"delay": {"dot": 0.3}}),
                                 ("retry1", "127.0.0.5", ALL_450), ("sender", "127.0.0.6", {}),
                                 ("expire", "127.0.0.7", ALL_450),
                                 ("tls", "127.0.0.8", {"starttls": True}),
                                 ("throttle", "127.0.0.12", THROTTLE),
                                 ("nothrottle", "127.0.0.13", THROTTLE)):
            self.rx[name] = TestSmtpd(["%s:%d" % (ip, PORT)], script, work, name)
        self.rx["notls"] = TestSmtpd(["127.0.0.8:2526"], {"starttls": False}, work, "notls")
        self.rx["slow"] = TestSmtpd(["127.0.0.9:2526"], {"delay": {"dot": 2}}, work, "slow")
        self.rx["retry2"] = TestSmtpd(["127.0.0.5:%d" % PORT], {}, work, "retry2")
        mx = [(d, "mx." + d, 10) for d in DOMAINS]
        hosts = [("mx." + d, ip) for d, ip in DOMAINS.items()]
        self.dns = Dnsmasq(mx=mx, hosts=hosts, local=["test"])
        self.sink_dir = os.path.join(work, "sink")
        self.sink = None
        self.pmta = None
        self.hole = Blackhole("127.0.0.9", HOLE_PORT)
        self.hole_why = None        # why connects to the blackhole do not hang, if they do not
        self.hole_queued = None     # time.time() when pmtad had queued the hole.test message

    def start(self):
        self.dns.start()
        for name, rx in self.rx.items():
            if name != "retry2":
                rx.start()
        self.hole_why = self.hole.start()
        os.makedirs(self.sink_dir)
        shutil.chown(self.sink_dir, "nobody")
        self.sink = subprocess.Popen(
            ["smtp-sink", "-u", "nobody", "-d", os.path.join(self.sink_dir, "%H%M%S."),
             "127.0.0.9:%d" % PORT, "100"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.pmta = Pmta(name="delivery")
        self.acct = os.path.join(self.pmta.spool, "acct.csv")  # the pmta user writes there
        self.acct_pipe = os.path.join(self.pmta.spool, "acct-piped.csv")  # tee runs as pmta too
        key = os.path.join(self.pmta.dir, "dkim.key")   # readable by the pmta user only
        shutil.copy(DKIM_KEY, key)
        shutil.chown(key, "pmta", "pmta")
        os.chmod(key, 0o600)
        self.pmta.write_config(CONFIG % {"dns": self.dns.server, "key": key,
                                         "acct": self.acct, "acct_pipe": self.acct_pipe,
                                         "port": PORT,
                                         "hole_port": HOLE_PORT})
        self.pmta.start()

    def stop(self):
        if self.pmta:
            self.pmta.close()
        stop_child(self.sink)
        self.hole.stop()
        for rx in self.rx.values():
            rx.stop()
        self.dns.stop()

    def send(self, rcpts, data):
        with smtplib.SMTP("127.0.0.1", self.pmta.port, timeout=10) as s:
            s.sendmail(SENDER, rcpts, data)

    def accepted(self, name):
        """Recipients RX accepted in transactions that delivered data: [(to, conn, t)]."""
        out, txn = [], {}    # connections interleave in the log: one open transaction each
        for ev in self.rx[name].events():
            conn = ev.get("conn")
            if ev["event"] == "mail":
                txn[conn] = []
            elif ev["event"] == "rcpt" and ev["reply"] == 250:
                txn.setdefault(conn, []).append(ev)
            elif ev["event"] == "data":
                out += [(e["to"], conn, ev["t"], ev["file"]) for e in txn.pop(conn, [])]
        return out

    def data_file(self, name, rcpt):
        for to, _conn, _t, path in self.accepted(name):
            if to == rcpt:
                with open(path, "rb") as f:
                    return f.read()
        return None


def windows_max(times, width=1.0):
    """Most events in any window [t, t + width)."""
    times = sorted(times)
    best, j = 0, 0
    for i in range(len(times)):
        while times[i] - times[j] >= width:
            j += 1
        best = max(best, i - j + 1)
    return best


def header_names(block):
    names = []
    for line in block.split(b"\r\n"):
        if line and line[:1] not in (b" ", b"\t"):
            names.append(line.split(b":", 1)[0].strip().lower())
    return names


def dsns(run):
    """(message, failed recipients, statuses) of every failure DSN the sender's domain got."""
    out = []
    for to, _conn, _t, path in run.accepted("sender"):
        with open(path, "rb") as f:
            msg = email.message_from_binary_file(f, policy=email.policy.compat32)
        if msg.get_content_type() != "multipart/report":
            continue
        failed, statuses = [], []
        for part in msg.walk():
            if part.get_content_type() != "message/delivery-status":
                continue
            for block in part.get_payload()[1:]:
                if block.get("Action", "").strip().lower() == "failed":
                    failed.append(block.get("Final-Recipient", "").split(";", 1)[-1].strip())
                    statuses.append(block.get("Status", "").strip())
        if failed:
            out.append((msg, failed, statuses))
    return out


def inject_hole(run):
    """The hole.test message, first and alone, so its one attempt starts at once."""
    if run.hole_why is None:
        run.send(["later@hole.test"], message("later@hole.test", "connect timeout"))
        run.hole_queued = time.time()       # smtpd's 250: the message is queued


def inject(run):
    for i in range(THROTTLED):     # first: the throttle needs the most time
        for d in ("throttle.test", "nothrottle.test"):
            run.send(["ok%d@%s" % (i, d)], message("ok%d@%s" % (i, d), "%s %d" % (d, i)))
    run.send(["ok-plain@basic.test"], ORIGINAL)
    run.send(["ok-v1@basic.test"], message("ok-v1@basic.test", "via v1", "v1"))
    run.send(["ok-v2@basic.test"], message("ok-v2@basic.test", "via v2", "v2"))
    run.send(["bad-user@basic.test"], message("bad-user@basic.test", "bounce me"))
    run.send(["ok%d@split.test" % i for i in range(10)], message("ok0@split.test", "split"))
    run.send(["later@retry.test"], message("later@retry.test", "retry"))
    run.send(["later@expire.test"], message("later@expire.test", "expire"))
    run.send(["ok@tls.test"], message("ok@tls.test", "tls"))
    run.send(["ok@notls.test"], message("ok@notls.test", "require tls"))
    for i in range(20):
        run.send(["ok%d@conc.test" % i], message("ok%d@conc.test" % i, "conc %d" % i))
    for i in range(20):
        run.send(["ok%d@sink.test" % i], message("ok%d@sink.test" % i, "sink %d" % i))
    for i in range(50):
        run.send(["ok%d@rate.test" % i], message("ok%d@rate.test" % i, "rate %d" % i))
    with smtplib.SMTP("127.0.0.1", run.pmta.port, timeout=10) as s:
        s.sendmail("bulk@sender.test", ["ok-bs@basic.test"], message("ok-bs@basic.test", "bulk"))
        s.sendmail("dsn@sender.test", ["ok-orcpt@basic.test"], message("ok-orcpt@basic.test", "orcpt"),
                   rcpt_options=["NOTIFY=FAILURE", "ORCPT=rfc822;Orig+2BTag@basic.test"])


def check_basic(tap, run):
    got = wait_for(lambda: run.data_file("basic", "ok-plain@basic.test"), timeout=15)
    data = run.data_file("basic", "ok-plain@basic.test") or b""
    added = data[:-len(ORIGINAL)] if data.endswith(ORIGINAL) else None
    tap.ok(got and added is not None and set(header_names(added)) <= set(OUR_HEADERS),
           "the message arrives byte-identical apart from our added headers",
           "added headers: %r" % (header_names(added) if added is not None else data[:400]))
    res = dkim.verify(data, dnsfunc=lambda name, timeout=5: DKIM_RECORD) if data else False
    tap.ok(b"dkim-signature" in header_names(data) and res,
           "the DKIM signature verifies at the receiver")
    wait_for(lambda: len([a for a in run.accepted("basic") if "-v" in a[0]]) >= 2, timeout=10)
    conns = {e["conn"]: e for e in run.rx["basic"].events("connect")}
    ehlos = {e["conn"]: e["name"] for e in run.rx["basic"].events("ehlo")}
    for vmta, ip in (("v1", "127.0.0.10"), ("v2", "127.0.0.11")):
        hits = [a for a in run.accepted("basic") if a[0] == "ok-%s@basic.test" % vmta]
        conn = hits[0][1] if hits else None
        tap.ok(conn is not None and conns[conn]["peer"] == ip
               and ehlos.get(conn) == "%s.src.test" % vmta,
               "virtual MTA %s: the receiver sees source %s and EHLO %s.src.test" % (vmta, ip, vmta),
               "conn %r: %r %r" % (conn, conns.get(conn), ehlos.get(conn)))


def check_sender_block(tap, run):
    """The seed's <sender> block: its vmta carries the mail, bounce-sender is the return path."""
    wait_for(lambda: [a for a in run.accepted("basic") if a[0] == "ok-bs@basic.test"], timeout=15)
    hits = [a for a in run.accepted("basic") if a[0] == "ok-bs@basic.test"]
    conn = hits[0][1] if hits else None
    mails = [e for e in run.rx["basic"].events("mail") if e["conn"] == conn]
    peer = {e["conn"]: e["peer"] for e in run.rx["basic"].events("connect")}.get(conn)
    tap.ok(mails and mails[-1]["from"] == "bounces@sender.test" and peer == "127.0.0.11",
           "<sender bulk@sender.test>: delivered through its vmta v2 (source 127.0.0.11) "
           "with MAIL FROM bounces@sender.test", (mails[-1:] if mails else None, peer))


def check_orcpt(tap, run):
    """ORCPT goes on as the client gave it: its type once, the address xtext-encoded again."""
    wait_for(lambda: [a for a in run.accepted("basic") if a[0] == "ok-orcpt@basic.test"],
             timeout=15)
    rcpts = [e for e in run.rx["basic"].events("rcpt") if e["to"] == "ok-orcpt@basic.test"]
    params = rcpts[-1]["params"] if rcpts else ""
    tap.ok("ORCPT=rfc822;Orig+2BTag@basic.test" in params and "NOTIFY=FAILURE" in params
           and "rfc822;rfc822" not in str(params),
           "RCPT ... ORCPT=rfc822;Orig+2BTag@basic.test NOTIFY=FAILURE reaches the receiver as given",
           params)


def rcpt_counts(run, domain):
    """Recipients per transaction on the receiver, for DOMAIN's recipients."""
    counts, cur = [], {}
    for ev in run.rx["basic"].events():
        if ev["event"] == "mail":
            cur[ev["conn"]] = len(counts)
            counts.append(0)
        elif ev["event"] == "rcpt" and ev["to"].endswith("@" + domain):
            counts[cur[ev["conn"]]] += 1
    return sorted(c for c in counts if c)


def check_split(tap, run):
    wait_for(lambda: len([a for a in run.accepted("basic") if a[0].endswith("@split.test")]) >= 10,
             timeout=10)
    n = len([a for a in run.accepted("basic") if a[0].endswith("@split.test")])
    counts = rcpt_counts(run, "split.test")
    tap.ok(n == 10 and counts == [1, 3, 3, 3],
           "max-rcpt-per-transaction 3: 10 recipients arrive as 3+3+3+1",
           "delivered %d, transactions %r" % (n, counts))


def check_conc(tap, run):
    wait_for(lambda: len(run.accepted("conc")) >= 20, timeout=20)
    peak = max([e["concurrent"] for e in run.rx["conc"].events("connect")] or [0])
    tap.ok(len(run.accepted("conc")) == 20 and peak <= 2,
           "max-smtp-out 2: 20 messages, never 3 concurrent connections",
           "delivered %d, peak %d" % (len(run.accepted("conc")), peak))


def check_rate(tap, run):
    wait_for(lambda: len(run.accepted("rate")) >= 50, timeout=20)
    times = [a[2] for a in run.accepted("rate")]
    span = max(times) - min(times) if times else 0
    tap.ok(len(times) == 50 and windows_max(times) <= 10 and span >= 3.5,
           "max-msg-rate 10/s: 50 messages over %.1f s, at most 10 in any 1 s window" % span,
           "delivered %d, busiest window %d" % (len(times), windows_max(times)))


def check_sink(tap, run):
    count = lambda: len(os.listdir(run.sink_dir))  # noqa: E731
    wait_for(lambda: count() >= 20, timeout=15)
    tap.ok(count() == 20, "smtp-sink received the 20 messages", "got %d" % count())


def check_tls(tap, run):
    wait_for(lambda: run.accepted("tls"), timeout=10)
    tls = run.rx["tls"].events("tls")
    mails = run.rx["tls"].events("mail")
    tap.ok(run.accepted("tls") and tls and mails and all(m.get("tls") for m in mails),
           "opportunistic STARTTLS with a self-signed certificate: delivered over TLS",
           "tls %r mails %r" % (tls, mails))


def check_retry(tap, run):
    rcpts = lambda: run.rx["retry1"].events("rcpt")  # noqa: E731
    wait_for(lambda: len(rcpts()) >= 2, timeout=15)
    t = [e["t"] for e in rcpts()]
    tap.ok(len(t) >= 2 and t[1] - t[0] >= 1.8,
           "450: retried after retry-after's first interval (2s)",
           "attempts at %r" % [round(x - t[0], 2) for x in t] if t else "no attempt")
    second = t[-1] if t else time.time()
    run.rx["retry1"].stop()
    run.rx["retry2"].start()
    wait_for(lambda: run.accepted("retry2"), timeout=12)
    got = run.accepted("retry2")
    gap = got[0][2] - second if got else 0
    tap.ok(got and got[0][0] == "later@retry.test" and gap >= 3.0,
           "then after the second interval (4s) it is delivered to the recovered receiver",
           "delivered %r, %.1f s after the second attempt" % (got, gap))


def open_at(events, t):
    """Connections open on a receiver at time T, from its connect/disconnect events."""
    live = set()
    for ev in events:
        if ev["t"] > t:
            break
        if ev["event"] == "connect":
            live.add(ev["conn"])
        elif ev["event"] == "disconnect":
            live.discard(ev["conn"])
    return live


def peak_from(events, t):
    """Most connections open at once at or after time T."""
    live = open_at(events, t)
    peak = len(live)
    for ev in events:
        if ev["t"] <= t:
            continue
        if ev["event"] == "connect":
            live.add(ev["conn"])
        elif ev["event"] == "disconnect":
            live.discard(ev["conn"])
        peak = max(peak, len(live))
    return peak


def check_backoff(tap, run):
    """The receiver throttles (421 rate limit exceeded); the queue slows down by itself.

    The boundary is qmgr's switch (its log line). Transactions it had already
    handed to connections opened before it are not its doing: those that began
    (MAIL) within SETTLE of the switch are left out of the rate count, and the
    connections that carried them have SETTLE to finish and go.
    """
    settle = 1.0
    wait_for(lambda: len(run.accepted("throttle")) >= THROTTLED
             and len(run.accepted("nothrottle")) >= THROTTLED, timeout=15)
    rx = run.rx["throttle"]
    events = rx.events()
    limited = [e["t"] for e in events if e["event"] == "rcpt" and e["reply"] == 421]
    rx_mode = (r"queue throttle\.test/\S+ mode normal -> backoff: "
               r"reply matched /rate limit exceeded/ \((.*)\)$")
    modes = [line for line in run.pmta.log().splitlines() if re.search(rx_mode, line)]
    control = [line for line in run.pmta.log().splitlines()
               if re.search(r"queue nothrottle\.test/\S+ mode ", line)]
    tap.ok(len(modes) == 1 and "(421 4.7.28 " in modes[0] and not control,
           "throttle.test: the receiver's '421 4.7.28 ... rate limit exceeded' puts the queue"
           " in backoff, one log line naming the pattern (none for nothrottle.test)",
           "\n".join(modes + control) or "no mode line")
    switched = log_time(modes[0]) if modes else (limited[0] if limited else 0)
    before = open_at(events, switched)      # connections qmgr had opened in normal mode
    mail, after = {}, []                    # conn -> its transaction's MAIL time
    for ev in events:
        if ev["event"] == "mail":
            mail[ev["conn"]] = ev["t"]
        elif ev["event"] == "data" and ev["t"] >= switched and not (
                ev["conn"] in before and mail[ev["conn"]] < switched + settle):
            after.append(ev["t"])
    ctl = [a[2] for a in run.accepted("nothrottle")]
    tap.ok(len(limited) == 2 and len(after) >= THROTTLED - 4
           and windows_max(after) <= 2 and windows_max(ctl) > 2,
           "... then at most 2 messages in any 1 s window (backoff-max-msg-rate 2/s: %d;"
           " the control, same replies and no pattern list: %d)"
           % (windows_max(after), windows_max(ctl)),
           "%d x 421, %d messages counted after the switch, %d connection(s) open at it"
           % (len(limited), len(after), len(before)))
    # A connection qmgr was opening at the switch is closed then (qmgr_conn_trim), but its
    # TCP handshake may already be under way: the receiver sees it connect just after the
    # switch, with no transaction. Any other connect after the switch is qmgr's new doing.
    trimmed = {e["conn"] for e in events if e["event"] == "connect"
               and switched < e["t"] <= switched + settle} - set(mail)
    crowded = [e for e in events if e["event"] == "connect" and e["t"] > switched
               and e["concurrent"] > 1 and e["conn"] not in trimmed]
    peak = peak_from(events, switched + settle)
    ctl_peak = max([e["concurrent"] for e in run.rx["nothrottle"].events("connect")] or [0])
    tap.ok(not crowded and peak <= 1 and ctl_peak > 1,
           "... and never 2 connections at once (backoff-max-smtp-out 1; the control: %d)"
           % ctl_peak, "connects after the switch with others open %r (left out: %d opening"
           " at it, closed without a transaction); peak from %.0f s after it %d"
           % (crowded, len(trimmed), settle, peak))
    n, m = len(run.accepted("throttle")), len(run.accepted("nothrottle"))
    tap.ok(n == THROTTLED and m == THROTTLED,
           "... and every message is accepted in the end (%d + %d)" % (n, m))


def check_bounces(tap, run):
    wait_for(lambda: {"bad-user@basic.test", "later@expire.test"}
             <= {r for _m, f, _s in dsns(run) for r in f}, timeout=20)
    by_rcpt = {r: (m, s) for m, f, st in dsns(run) for r, s in zip(f, st)}
    bad = by_rcpt.get("bad-user@basic.test")
    tap.ok(bad and bad[1] == "5.1.1" and bad[0]["To"] and SENDER in bad[0]["To"],
           "550 recipient: a parseable DSN (failed, 5.1.1) reaches the sender's domain",
           repr(bad[1] if bad else sorted(by_rcpt)))
    exp = by_rcpt.get("later@expire.test")
    tap.ok(exp and exp[1].startswith("4.") or (exp and exp[1].startswith("5.")),
           "expired recipient (bounce-after 5s, receiver answers 450): a DSN reaches the sender",
           repr(exp[1] if exp else sorted(by_rcpt)))
    tap.ok(len(run.rx["expire"].events("rcpt")) >= 2 and not run.accepted("expire"),
           "the expiring recipient was tried repeatedly and never accepted",
           "%d attempts" % len(run.rx["expire"].events("rcpt")))


def check_require_tls(tap, run):
    ehlo = run.rx["notls"].events("ehlo")
    tap.ok(ehlo and not run.rx["notls"].events("mail") and not run.rx["notls"].events("data"),
           "require-starttls against a receiver without STARTTLS: connected, nothing sent",
           "events %r" % run.rx["notls"].events())
    queued = [r for m in qdump(run.pmta.spool) for r in m.get("rcpts", m.get("recipients", []))
              if "notls.test" in str(r)]
    tap.ok(queued, "... and the recipient stays queued", repr(qdump(run.pmta.spool))[:500])


LOG_STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}[+-]\d{4}) ")


def log_time(line):
    """The wall-clock time (epoch seconds) of a main-log line, or None."""
    m = LOG_STAMP.match(line)
    return (datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S.%f%z").timestamp()
            if m else None)


def check_connect_timeout(tap, run):
    """connect-timeout 2s in <domain hole.test> reaches smtp-out: the attempt gives up at 2 s."""
    names = ("connect-timeout 2s against a peer that never completes the handshake:"
             " one attempt, deferred with 'timeout connecting to ... after 2 s'",
             "... about 2 s after the message was queued",
             "... and the recipient stays queued (deferred, not bounced)")
    if run.hole_why is not None:
        for name in names:
            tap.skip(name, run.hole_why)
        return
    rx = r"\bdeferred \S+ to=later@hole\.test .*\bstatus=(\S+) reply=(.*)$"
    wait_for(lambda: re.search(rx, run.pmta.log(), re.M),
             timeout=max(1.0, run.hole_queued + 15 - time.time()))
    lines = [line for line in run.pmta.log().splitlines() if re.search(rx, line)]
    m = re.search(rx, lines[0]) if lines else None
    tap.ok(len(lines) == 1 and m.group(1) == "4.4.1"
           and m.group(2).startswith("timeout connecting to mx.hole.test[127.0.0.9]")
           and m.group(2).endswith(" after 2 s"), names[0], "\n".join(lines) or "no such line")
    took = log_time(lines[0]) - run.hole_queued if lines and log_time(lines[0]) else None
    tap.ok(took is not None and 1.5 <= took < 15,
           names[1] + (" (%.2f s)" % took if took is not None else ""),
           "deferred %r s after the 250" % took)
    hole_rcpts = lambda: [r for msg in qdump(run.pmta.spool)  # noqa: E731
                          for r in msg.get("recipients", [])
                          if r.get("address") == "later@hole.test"]
    wait_for(lambda: [r for r in hole_rcpts() if r.get("attempts")], timeout=5)
    queued = hole_rcpts()
    bounced = ([r for r in acct_rows(run.acct)
                if r.get("rcpt") == "later@hole.test" and r.get("type") in ("b", "d")]
               + [f for _m, f, _s in dsns(run) if "later@hole.test" in f]
               + re.findall(r"\bbounced \S+ to=later@hole\.test .*", run.pmta.log()))
    tap.ok(len(queued) == 1 and queued[0].get("state") == "deferred"
           and queued[0].get("attempts") == 1
           and queued[0].get("last_error", "").endswith(" after 2 s") and not bounced,
           names[2], "queue %r; bounce traces %r" % (queued, bounced))


def check_accounting(tap, run):
    received = sorted(a[0] for name in ("basic", "rate", "conc", "retry2", "sender", "tls",
                                        "throttle", "nothrottle")
                      for a in run.accepted(name))
    received += sorted("ok%d@sink.test" % i for i in range(len(os.listdir(run.sink_dir))))
    received.sort()
    # qmgr may buffer the file a little: give the last rows a moment
    d_of = lambda rows: sorted(r["rcpt"] for r in rows if r.get("type") == "d")  # noqa: E731
    wait_for(lambda: d_of(acct_rows(run.acct)) == received, timeout=5)
    rows = acct_rows(run.acct)
    d_rows = d_of(rows)
    b_rows = sorted(r["rcpt"] for r in rows if r.get("type") == "b")
    tap.ok(rows and d_rows == sorted(received),
           "accounting: one d row per recipient the receivers accepted (%d)" % len(received),
           "only in acct %r, only at receivers %r" % (sorted(set(d_rows) - set(received)),
                                                     sorted(set(received) - set(d_rows))))
    bounced = sorted(r for _m, f, _s in dsns(run) for r in f)
    tap.ok(rows and b_rows == bounced,
           "accounting: one b row per bounced recipient (%d)" % len(bounced),
           "b rows %r, DSNs for %r" % (b_rows, bounced))
    diags = [r.get("dsnDiag", "") for r in rows if r.get("type") == "d"]
    tap.ok(diags and all(d.startswith("smtp;250 ") and "250 250" not in d for d in diags),
           "accounting: dsnDiag is 'smtp;' and the receiver's reply, its code once",
           repr(diags[:3]))
    src = {r["rcpt"]: r.get("dlvSourceIp") for r in rows if r.get("type") == "d"}
    tap.ok(src.get("ok-v1@basic.test") == "127.0.0.10" and src.get("ok-v2@basic.test") == "127.0.0.11",
           "accounting: the d rows name the virtual MTAs' source IPs",
           repr({k: v for k, v in src.items() if "-v" in k}))
    # the pipe (tee into a file) gets a header line, then the same d rows as the file
    wait_for(lambda: d_of(acct_rows(run.acct_pipe)) == d_rows, timeout=5)
    try:
        with open(run.acct_pipe, newline="") as f:
            piped_text = f.read()
    except FileNotFoundError:
        piped_text = ""
    piped = acct_rows(run.acct_pipe)
    file_d = [r for r in rows if r.get("type") == "d"]
    tap.ok(piped_text.startswith("type,timeLogged,") and piped_text.count("type,timeLogged,") == 1
           and all(r.get("type") == "d" for r in piped)
           and len(piped) == len(file_d) and d_of(piped) == d_rows,
           "accounting pipe: |tee gets one header line and the file's d rows (%d)" % len(file_d),
           "%d piped rows, %d d rows in the file; first line %r"
           % (len(piped), len(file_d), piped_text.split("\r\n", 1)[0][:60]))


def check_qmgr_restart(tap, run):
    """qmgr dies: every smtp-out reconnects (with back-off) and delivery goes on."""
    outs = len(run.pmta.worker_pids("smtp-out"))
    connected = lambda: len(re.findall(r"smtp-out\[\d+\]: info: connected to qmgr",  # noqa: E731
                                       run.pmta.log()))
    before = connected()
    qmgr = run.pmta.worker_pids("qmgr")
    if qmgr:
        os.kill(qmgr[0], signal.SIGKILL)
    ok = wait_for(lambda: connected() >= before + outs, timeout=20)
    tap.ok(qmgr and ok, "qmgr killed: all %d smtp-out processes reconnect to the new one" % outs,
           "%d connects before, %d after" % (before, connected()))
    run.send(["ok-after@basic.test"], message("ok-after@basic.test", "after restart"))
    got = wait_for(lambda: [a for a in run.accepted("basic") if a[0] == "ok-after@basic.test"],
                   timeout=15)
    tap.ok(got, "... and a message sent afterwards is delivered")


def check_log(tap, run):
    log = run.pmta.log()
    ups = [line for line in log.splitlines() if "smtp-out[" in line and " up: mx=" in line]
    downs = [line for line in log.splitlines() if "smtp-out[" in line and " down (" in line]
    tap.ok(ups and all("source=" in line and "tls=" in line for line in ups + downs),
           "smtp-out logs one up and one down line per connection with mx, ip, source, tls",
           "%d up, %d down" % (len(ups), len(downs)))


def check_clean_stop(tap, run):
    """SIGTERM while a transaction runs: it finishes (250, then QUIT) within the drain time."""
    pids = run.pmta.worker_pids("smtp-out")
    run.send(["ok@slow.test"], message("ok@slow.test", "slow"))
    wait_for(lambda: run.rx["slow"].events("data"), timeout=10)
    run.pmta.stop()
    ev = [e["event"] for e in run.rx["slow"].events()]
    tap.ok("data" in ev and "quit" in ev[ev.index("data"):],
           "shutdown during a transaction (slow 250 after DATA): it finishes, then QUIT",
           repr(ev))
    log = run.pmta.log()
    bad = [line for line in log.splitlines()
           if ("smtp-out[" in line and ("fatal" in line or "panic" in line or "ERROR" in line
                                        or "handles open" in line))
           or re.search(r"pmtad\[\d+\]: warning: smtp-out .*(exited|killed)", line)]
    tap.ok(pids and not bad, "smtp-out processes ran and stopped cleanly (no fatal error, no crash)",
           "\n".join(bad[:5]))


def main():
    tap = Tap()
    require_root(tap)
    if not dnsmasq_path() or not shutil.which("smtp-sink"):
        return tap.skip_all("dnsmasq or smtp-sink missing")
    work = tempfile.mkdtemp(prefix="test_delivery.")
    os.chmod(work, 0o755)
    run = Run(work)
    t0 = time.monotonic()
    try:
        run.start()
        inject_hole(run)
        inject(run)
        tap.ok(True, "injected %d messages through smtpd" % (108 + 2 * THROTTLED))
        check_basic(tap, run)
        check_sender_block(tap, run)
        check_orcpt(tap, run)
        check_split(tap, run)
        check_tls(tap, run)
        check_sink(tap, run)
        check_conc(tap, run)
        check_retry(tap, run)
        check_rate(tap, run)
        check_backoff(tap, run)
        check_bounces(tap, run)
        check_require_tls(tap, run)
        check_connect_timeout(tap, run)
        check_accounting(tap, run)
        check_qmgr_restart(tap, run)
        check_log(tap, run)
        check_clean_stop(tap, run)
    finally:
        tap.diag("wall time %.1f s; work dir %s" % (time.monotonic() - t0, work))
        run.stop()
        if not os.environ.get("PMTA_KEEP"):
            shutil.rmtree(work, ignore_errors=True)
    return tap.done()


if __name__ == "__main__":
    sys.exit(main())
