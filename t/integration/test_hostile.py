#!/usr/bin/env python3
"""test_hostile.py - malformed and abusive SMTP sessions against smtpd.

Each case speaks raw bytes and checks the exact reply codes. Meanwhile a
well-behaved client (a thread on its own session) sends messages in a loop;
it must succeed throughout, and at the end the queue must hold exactly its
messages: nothing from any broken transaction.

Sources: 127.0.0.1 relays (the good client and most cases); 127.0.0.2 has
max-message-size 10k and max-rcpt-per-message 3; 127.0.0.4 may AUTH in
plaintext; 127.0.0.5 has 2 s command and data timeouts.
"""
import os
import random
import socket
import ssl
import struct
import sys
import threading
import time

from pmtatest import Tap, Pmta, SmtpRaw, free_port, make_cert, qdump, require_root, wait_for

tap = Tap()
require_root(tap)


class GoodClient(threading.Thread):
    """Sends a message, waits for 250, repeats, on one session (reconnecting if needed)."""

    def __init__(self, port):
        super().__init__(daemon=True)
        self.port = port
        self.sent = 0
        self.failures = []
        self.stop = threading.Event()

    def session(self):
        r = SmtpRaw(self.port, timeout=20)
        assert r.code() == 220
        assert r.cmd("EHLO good.test") == 250
        return r

    def run(self):
        r = None
        while not self.stop.is_set():
            try:
                r = r or self.session()
                n = self.sent + 1
                r.send("MAIL FROM:<good@example.test>\r\nRCPT TO:<rcpt@example.test>\r\nDATA\r\n")
                codes = [r.code(), r.code(), r.code()]
                if codes != [250, 250, 354]:
                    raise RuntimeError("envelope: %r" % codes)
                r.send("Message-ID: <good%d@test>\r\nSubject: good %d\r\n\r\nbody %d\r\n.\r\n" % (n, n, n))
                c = r.code()
                if c != 250:
                    raise RuntimeError("message %d: %r" % (n, c))
                self.sent = n
                time.sleep(0.02)
            except Exception as e:      # noqa: BLE001 - any failure is recorded
                self.failures.append(repr(e))
                if r:
                    r.close()
                r = None
                time.sleep(0.1)
        if r:
            r.cmd("QUIT")
            r.close()


def greet(port, source=None, ehlo=True):
    r = SmtpRaw(port, source=source, timeout=15)
    assert r.code() == 220
    if ehlo:
        r.cmd("EHLO hostile.test")
    return r


def greet_when_free(port, timeout=15):
    """greet(), retried while the server answers 421 (its connection slots still full)."""
    deadline = time.monotonic() + timeout
    while True:
        r = SmtpRaw(port, timeout=15)
        code = r.code()
        if code == 220 or time.monotonic() > deadline:
            assert code == 220, "still %s after %ds" % (code, timeout)
            r.cmd("EHLO hostile.test")
            return r
        r.close()
        time.sleep(0.1)


def envelope(r, rcpts=1):
    r.cmd("MAIL FROM:<h@example.test>")
    for i in range(rcpts):
        r.cmd("RCPT TO:<r%d@example.test>" % i)


def reply_text(r):
    code, lines = r.reply()
    return code, " ".join(lines)


with Pmta(name="test_hostile") as p:
    pem = make_cert(p.dir)
    tls_port = free_port()
    p.write_config("""
smtp-server-tls-certificate %s
total-max-smtp-in 60
<smtp-listener 127.0.0.1:%d>
    immediate-tls yes
</smtp-listener>
<source 127.0.0.1>
    always-allow-relaying yes
    allow-starttls yes
</source>
<source 127.0.0.2>
    always-allow-relaying yes
    max-message-size 10k
    max-rcpt-per-message 3
</source>
<source 127.0.0.4>
    always-allow-relaying yes
    allow-unencrypted-plain-auth yes
</source>
<source 127.0.0.5>
    always-allow-relaying yes
    smtp-command-timeout 2s
    smtp-data-timeout 2s
</source>
<smtp-user alice>
    password "wonderland"
</smtp-user>
""" % (pem, tls_port), processes={"smtp-out": 0})
    p.start()
    p.wait_log(r"cleanup\[\d+\]: info: queue .* open", timeout=20)   # before the first qdump
    port = p.port
    queued_before = len(qdump(p.spool))
    good = GoodClient(port)
    good.start()
    time.sleep(0.3)
    t0 = time.monotonic()

    # 1-2 over-long command lines
    r = greet(port)
    r.send("NOOP " + "x" * 3000 + "\r\n")
    c, text = reply_text(r)
    tap.ok(c == 500 and "5.5.2" in text, "over-long command line: 500 5.5.2", text)
    tap.ok(r.cmd("NOOP") == 250, "the session goes on after an over-long line")
    r.close()
    r = greet(port)
    r.send("MAIL FROM:<" + "a" * 8192)       # still no LF
    c, text = reply_text(r)
    tap.ok(c == 500 and "5.5.2" in text, "a line without LF is refused before it ends (partial input bounded)", text)
    for _ in range(64):                      # 1 MiB more, never a newline
        r.send("b" * 16384)
    r.send("\r\n")
    tap.ok(r.cmd("NOOP") == 250, "1 MiB without LF was skipped, not buffered; session still works")
    r.close()

    # 3 NUL and control bytes
    r = greet(port)
    r.send(b"NOOP\x00evil\r\n")
    c, text = reply_text(r)
    tap.ok(c == 500 and "5.5.2" in text, "NUL byte in a command: 500 5.5.2", text)
    r.send(b"MAIL FROM:<a@b.test>\rRCPT TO:<x@y>\r\n")
    tap.ok(r.code() == 500, "bare CR inside a command: 500")
    r.close()

    # 4-7 commands out of order
    r = greet(port, ehlo=False)
    tap.ok(r.cmd("MAIL FROM:<a@example.test>") == 503, "MAIL before EHLO: 503")
    r.cmd("EHLO hostile.test")
    tap.ok(r.cmd("RCPT TO:<a@example.test>") == 503, "RCPT before MAIL: 503")
    tap.ok(r.cmd("DATA") == 503, "DATA before MAIL: 503")
    r.cmd("MAIL FROM:<a@example.test>")
    tap.ok(r.cmd("MAIL FROM:<b@example.test>") == 503, "a second MAIL: 503")
    tap.ok(r.cmd("DATA") == 503, "DATA without RCPT: 503")
    r.cmd("RSET")
    tap.ok(r.cmd("AUTH PLAIN") in (502, 503, 504, 530, 538), "AUTH where it is not offered is refused")
    tap.ok(r.cmd("FOOBAR") == 500, "unknown command: 500")
    tap.ok(r.cmd("HELO") == 501, "HELO without a name: 501")
    r.close()
    r = greet(port)                          # a fresh session: 8 errors so far, the limit is 10
    tap.ok(r.cmd("MAIL FROM:<a@b") == 501, "MAIL with a broken path: 501")
    r.cmd("RSET")
    r.cmd("MAIL FROM:<a@example.test>")
    tap.ok(r.cmd("RCPT TO:<%s@example.test>" % ("l" * 300)) == 501, "over-long recipient: 501")
    tap.ok(r.cmd("MAIL FROM:<a@example.test> FOO=BAR") in (503, 555), "unknown MAIL parameter refused")
    r.close()

    # 8 10,000 recipients (source with max-rcpt-per-message 3), pipelined in batches
    r = greet(port, source="127.0.0.2")
    r.cmd("MAIL FROM:<h@example.test>")
    codes = []
    for batch in range(20):
        r.send("".join("RCPT TO:<r%d@example.test>\r\n" % (batch * 500 + i) for i in range(500)))
        codes += [r.code() for _ in range(500)]
    tap.ok(codes.count(250) == 3 and codes.count(452) == 9997,
           "10,000 RCPTs: 3 accepted, 9,997 get 452 4.5.3", {c: codes.count(c) for c in set(codes)})
    tap.ok(r.cmd("RSET") == 250 and r.cmd("QUIT") == 221, "the session survives 10,000 RCPTs")
    r.close()

    # 9 DATA past max-message-size
    r = greet(port, source="127.0.0.2")
    tap.ok(r.cmd("MAIL FROM:<h@example.test> SIZE=100") == 250, "a SIZE that lies is accepted at MAIL")
    r.cmd("RCPT TO:<r@example.test>")
    r.cmd("DATA")
    r.send("Subject: big\r\n\r\n" + ("y" * 998 + "\r\n") * 30 + ".\r\n")
    c, text = reply_text(r)
    tap.ok(c == 552 and "5.3.4" in text, "DATA past max-message-size: 552 5.3.4 after the end", text)
    tap.ok(r.cmd("NOOP") == 250, "the session goes on after 552")
    r.close()

    # 10 pipelining flood
    r = greet(port)
    r.send("NOOP\r\n" * 20000)
    codes = [r.code() for _ in range(20000)]
    tap.ok(codes.count(250) == 20000, "20,000 pipelined NOOPs all answered 250 (backpressure, no loss)",
           {c: codes.count(c) for c in set(codes)})
    r.close()

    # 11 garbage in the TLS handshake (STARTTLS and implicit TLS)
    r = greet(port)
    tap.ok(r.cmd("STARTTLS") == 220, "STARTTLS: 220")
    r.send(os.urandom(3000))
    tap.ok(r.closed(), "garbage instead of a TLS ClientHello: connection closed")
    r.close()
    s = socket.create_connection(("127.0.0.1", tls_port), timeout=10)
    s.sendall(b"\x16\x03\x01\x00\x05hello" + os.urandom(500))
    try:
        data = s.recv(100)
        s.settimeout(5)
        while data:
            data = s.recv(4096)
        closed = True
    except OSError:
        closed = True
    tap.ok(closed, "garbage on the implicit-TLS listener: closed")
    s.close()

    # 12 STARTTLS command injection: pipelined plaintext is discarded
    r = greet(port)
    r.send("STARTTLS\r\nMAIL FROM:<injected@example.test>\r\n")
    tap.ok(r.code() == 220, "STARTTLS with a pipelined command: 220")
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    t = ctx.wrap_socket(r.sock, server_hostname="mta.test.example")
    tr = SmtpRaw.__new__(SmtpRaw)
    tr.sock, tr.buf = t, b""
    tr.cmd("EHLO hostile.test")
    tap.ok(tr.cmd("RCPT TO:<x@example.test>") == 503, "the injected MAIL was discarded (RCPT gets 503)")
    tr.close()

    # 13 broken base64 in AUTH
    r = greet(port, source="127.0.0.4")
    c = r.cmd("AUTH PLAIN !!!not-base64!!!")
    tap.ok(c == 501, "AUTH PLAIN with broken base64: 501", c)
    tap.ok(r.cmd("AUTH LOGIN") == 334 and r.cmd("%%%") == 501, "AUTH LOGIN with broken base64: 501")
    tap.ok(r.cmd("AUTH LOGIN") == 334 and r.cmd("*") == 501, "AUTH cancelled with '*': 501")
    tap.ok(r.cmd("AUTH PLAIN AGFsaWNlAHdyb25n") == 535, "wrong password: 535")
    r.close()

    # 14 bare LF / bare CR / smuggling in DATA
    for name, body in (("bare LF", "Subject: x\r\n\r\nline\nline\r\n.\r\n"),
                       ("bare CR", "Subject: x\r\n\r\nline\rline\r\n.\r\n"),
                       ("smuggled \\n.\\n", "Subject: x\r\n\r\nhi\n.\nMAIL FROM:<s@x>\r\n.\r\n")):
        r = greet(port)
        envelope(r)
        r.cmd("DATA")
        r.send(body)
        c, text = reply_text(r)
        tap.ok(c == 550 and "5.6.2" in text, "%s in DATA: 550 5.6.2" % name, text)
        r.close()

    # 15 BDAT count lies
    r = greet(port)
    envelope(r)
    r.send("BDAT 5\r\nhello world\r\n")
    c1, c2 = r.code(), r.code()
    tap.ok(c1 == 250 and c2 == 500, "BDAT count shorter than the data: the rest is a bad command (250, 500)",
           (c1, c2))
    tap.ok(r.cmd("RSET") == 250, "RSET after a lying BDAT")
    tap.ok(r.cmd("BDAT ten LAST") == 501, "BDAT with a non-numeric size: 501")
    envelope(r)
    r.send("BDAT 3\r\nabc")
    r.code()
    tap.ok(r.cmd("DATA") == 503, "DATA after BDAT in one transaction: 503")
    r.close()
    r = greet(port)
    envelope(r)
    r.send("BDAT 100000 LAST\r\n" + "z" * 100)
    r.close()                              # BDAT promises more than it sends, then vanishes

    # 16 client vanishing mid-DATA, and an RST mid-DATA
    r = greet(port)
    envelope(r, 2)
    r.cmd("DATA")
    r.send("Subject: half\r\n\r\n" + "data\r\n" * 1000)
    r.close()
    r = greet(port)
    envelope(r)
    r.cmd("DATA")
    r.send("Subject: reset\r\n\r\npartial\r\n")
    r.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    r.close()
    tap.ok(True, "clients vanished mid-DATA (FIN and RST)")

    # 17 too many errors
    r = greet(port)
    codes = [r.cmd("BOGUS%d" % i) for i in range(10)] + [r.code()]
    tap.ok(codes == [500] * 10 + [421], "the 10th error's 500 is followed by 421 4.7.0", codes)
    tap.ok(r.closed(), "and the connection is closed")
    r.close()

    # 18 slow-drip client and timeouts (127.0.0.5: 2 s)
    r = greet(port, source="127.0.0.5")
    start = time.monotonic()
    got = None
    r.sock.settimeout(0.1)
    for ch in "MAIL FROM:<drip@example.test> and it never ends" * 2:
        try:
            r.sock.sendall(ch.encode())
        except OSError:
            break
        try:
            data = r.sock.recv(4096)
            if data:
                got = data
                break
        except socket.timeout:
            pass
    elapsed = time.monotonic() - start
    tap.ok(got is not None and got.startswith(b"421 4.4.2"), "slow-drip client: 421 4.4.2", got)
    tap.ok(1.5 < elapsed < 4, "the command timeout fires although bytes keep dripping (%.1fs)" % elapsed)
    r.close()
    r = greet(port, source="127.0.0.5")
    envelope(r)
    r.cmd("DATA")
    r.send("Subject: stalled\r\n\r\nsome")
    start = time.monotonic()
    c, text = reply_text(r)
    tap.ok(c == 421 and "4.4.2" in text and 1.5 < time.monotonic() - start < 4,
           "stalled DATA: 421 4.4.2 after smtp-data-timeout", text)
    r.close()
    r = greet(port, source="127.0.0.5", ehlo=False)
    start = time.monotonic()
    tap.ok(r.code() == 421 and 1.5 < time.monotonic() - start < 4, "silent client: 421 4.4.2")
    r.close()

    # 19 connection flood over total-max-smtp-in (60, counted across both smtpd processes)
    socks, codes = [], []
    for _ in range(100):
        try:
            s = SmtpRaw(port, timeout=10)
            socks.append(s)
        except OSError:
            pass
    for s in socks:
        codes.append(s.code())
    tap.ok(codes.count(421) > 0 and codes.count(220) <= 60,
           "100 connections: at most 60 get 220, the rest 421 4.7.0",
           {c: codes.count(c) for c in set(codes)})
    for s in socks:
        s.close()

    def slot_free():
        try:
            s = SmtpRaw(port, timeout=5)
            ok = s.code() == 220
            s.close()
            return ok
        except OSError:
            return False
    tap.ok(wait_for(slot_free, 10), "after the flood closes, new connections are served again")

    # 20 an 8-bit byte in a command, a VRFY, a HELP. slot_free() may have reached the
    # smtpd process that freed its slots first; the other may still be closing its flood
    # sessions (slowly under sanitizers and a parallel `make check`): retry until served.
    r = greet_when_free(port)
    tap.ok(r.cmd("MAIL FROM:<\xe9t\xe9@example.test>".encode("latin-1").decode("latin-1")) in (501, 553),
           "non-ASCII address without SMTPUTF8 refused")
    tap.ok(r.cmd("VRFY root") == 252 and r.cmd("HELP") == 214, "VRFY 252, HELP 214")
    r.close()

    # the good client, the queue
    time.sleep(0.5)
    good.stop.set()
    good.join(15)
    tap.ok(not good.failures and good.sent > 20,
           "the well-behaved client succeeded throughout (%d messages)" % good.sent, good.failures[:5])
    queued = qdump(p.spool, body=True)
    tap.ok(len(queued) == queued_before + good.sent,
           "the queue holds exactly the good client's messages (%d)" % good.sent,
           "%d queued" % len(queued))
    senders = set(m["sender"] for m in queued)
    tap.ok(senders <= {"good@example.test"}, "nothing from a broken transaction was queued", senders)
    workers = p.worker_pids("smtpd")
    tap.ok(len(workers) == 2 and "killed by signal" not in p.log(), "no smtpd crashed",
           [l for l in p.log().splitlines() if "signal" in l][-5:])
    tap.diag("hostile sessions took %.1fs" % (time.monotonic() - t0))

sys.exit(tap.done())
