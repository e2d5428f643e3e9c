#!/usr/bin/env python3
"""testsmtpd - a scriptable SMTP receiver for openpmta delivery tests (stdlib only).

Run it as a process (what tests do, through the TestSmtpd class below):

    python3 t/lib/testsmtpd.py --listen 127.0.0.2:2526 [--listen ...] \
        --log FILE [--script JSON | --script @FILE] [--datadir DIR]

It writes one JSON object per line to the log, flushed at once:
    listening   {"addr": "127.0.0.2:2526"}               (once per address)
    connect     {"conn", "peer", "local", "concurrent"}  (peer = client IP)
    ehlo/helo   {"conn", "name", "read"}
    starttls    {"conn"}, then tls {"conn", "version", "cipher"}
    mail        {"conn", "from", "params", "read"}
    rcpt        {"conn", "to", "params", "reply", "read"}
    data_cmd    {"conn", "read", "reply"}
    bdat        {"conn", "size", "last", "read"}       (one BDAT chunk, RFC 3030)
    data        {"conn", "size", "file", "sha256", "msgid", "via"}   (message saved
                  un-stuffed; msgid is the Message-ID header's value or null; file is
                  null when the script says "save": false; via "data" or "bdat")
    auth        {"conn", "mechanism", "user", "ok", "tls"}
    drop        {"conn", "after_bytes", "reset"}      (drop_in_data / reset_in_data)
    rset, quit, disconnect {"conn", "max_concurrent"}
"read" numbers the chunks the server read on that connection: commands that
arrive in one read share a number, which is how a test sees PIPELINING used.

The script (a JSON object; every key optional):
    hostname      "mx.test"
    greeting      "220 mx.test ESMTP"  (e.g. "421 4.3.2 busy" or "554 5.7.1 go away":
                  the connection is closed right after a non-2xx greeting)
    silent        false; true accepts the TCP connection and never sends a byte
                  (no greeting, no reply: the client's own timeout must end it)
    pipelining, 8bitmime, smtputf8, dsn, enhancedstatuscodes, chunking (bool)
                  advertised or not; defaults: all true but chunking
    starttls      false; true advertises STARTTLS with a self-signed
                  certificate made by the openssl CLI in a temporary directory
    tls_cert, tls_key  paths: STARTTLS with this certificate chain and key instead
                  (a test CA's, for DANE and MTA-STS)
    auth          {"user": U, "password": P, "mechanisms": ["PLAIN", "LOGIN",
                  "CRAM-MD5"], "tls_only": false, "require": false}: advertise AUTH
                  (after STARTTLS only with tls_only), check the credentials (235 or
                  "535 5.7.8"); with require, MAIL before AUTH gets "530 5.7.0"
    size          52428800; null = don't advertise SIZE
    ehlo_reply    reply to EHLO instead of the capability list (e.g. "502 5.5.1 no")
    mail_reply    "250 2.1.0 Ok"
    rcpt          [[prefix, reply], ...] matched on the local part, first hit wins,
                  before the defaults ok* 250, tmp* 450 4.2.0, bad* 550 5.1.1,
                  anything else 250. [prefix, reply, n] answers only the first n
                  RCPTs it matches (counted over all connections), then is
                  skipped: e.g. [["", "421 4.7.28 ... rate limit exceeded", 2]]
                  throttles the first 2 RCPTs and accepts the rest
    data_reply    "354 End data with <CR><LF>.<CR><LF>"
    dot_reply     "250 2.0.0 Ok: queued"
    delay         {"greeting"|"ehlo"|"mail"|"rcpt"|"data"|"dot"|"rset"|"quit": seconds}
    starttls_inject  false; true sends a second reply in clear right after the
                  STARTTLS 220 (response injection, which clients must refuse)
    drop_in_data  false; true closes the connection after the first body line
    stall_in_data false; true stops reading after the first body line (its receive
                  buffer shrunk to 4 KB), as a receiver that hangs mid-DATA: the client's
                  writes block until its own timeout ends it; the connection is dropped
                  after stall_seconds (60). Logged as stall {"conn", "after_bytes"}
    max_concurrent N: a connection above N open at once gets "421 4.3.2 Too many connections,
                  try again later" (or over_limit_greeting) and is closed at once, as a
                  server's connection limit does; logged as refused {"conn", "peer", "open"}.
                  max_concurrent_file PATH: read N from PATH at each connection (a test
                  changes it while the receiver runs); absent or unreadable: max_concurrent
    throttle      {"after": N, "seconds": S, "reply": "421 4.7.28 ... Rate Limit Exceeded"}:
                  once N messages were accepted (over all connections), every RCPT
                  gets REPLY for S seconds (a provider's rate limit); a 421 closes
                  the connection after it, as the providers do. Logged once:
                  throttle_start {"after"}
    reset_in_data false; true resets it (TCP RST: SO_LINGER 0) after the first
                  body line, as a receiver that crashes mid-DATA
    save          true; false keeps no copy of the messages (long soak runs):
                  the data event still carries size, sha256 and msgid

Owns: its listening sockets, the log, the saved messages, and the temporary
directory holding the self-signed key (removed at exit).
Security: test-only. It refuses to listen outside 127.0.0.0/8; client input
is only logged (as JSON) and saved, never interpreted beyond the SMTP verbs.
"""

import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import os
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import time

from childproc import stop_child

DEFAULT_RCPT_RULES = [
    ["ok", "250 2.1.5 Ok"],
    ["tmp", "450 4.2.0 Mailbox temporarily unavailable"],
    ["bad", "550 5.1.1 No such user"],
]


class Server:
    def __init__(self, script, log_path, datadir):
        self.script = script
        self.log = open(log_path, "a", buffering=1)
        self.datadir = datadir
        self.next_conn = 0
        self.concurrent = 0
        self.max_concurrent = 0
        self.rule_hits = {}     # rcpt rule index -> RCPTs it answered (rules with a count)
        self.accepted = 0       # messages answered 250 after their data
        self.throttle_from = None   # when the throttle window began (time.monotonic())
        self.sslctx = None
        self.tmpdir = None
        if script.get("tls_cert"):
            self.sslctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.sslctx.load_cert_chain(script["tls_cert"], script["tls_key"])
        elif script.get("starttls"):
            self.sslctx = self._make_tls()

    def _make_tls(self):
        self.tmpdir = tempfile.mkdtemp(prefix="testsmtpd-tls-")
        key = os.path.join(self.tmpdir, "key.pem")
        cert = os.path.join(self.tmpdir, "cert.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec",
                        "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                        "-keyout", key, "-out", cert, "-days", "2",
                        "-subj", "/CN=" + self.script.get("hostname", "mx.test")],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        return ctx

    def cleanup(self):
        if self.tmpdir:
            shutil.rmtree(self.tmpdir, ignore_errors=True)

    def event(self, kind, **fields):
        rec = {"event": kind, "t": round(time.time(), 6)}
        rec.update(fields)
        self.log.write(json.dumps(rec) + "\n")

    def conn_opened(self):
        self.next_conn += 1
        self.concurrent += 1
        self.max_concurrent = max(self.max_concurrent, self.concurrent)
        return self.next_conn


class Conn(asyncio.Protocol):
    def __init__(self, server):
        self.srv = server
        self.script = server.script
        self.buf = b""          # bytes received and not yet read
        self.marks = []         # [(offset in buf where a read ended, its number)]
        self.reads = 0
        self.more = asyncio.Event()
        self.eof = False
        self.transport = None
        self.closed = False
        self.authed = False

    # --- transport side ---------------------------------------------------------
    def connection_made(self, transport):
        self.transport = transport
        self.id = self.srv.conn_opened()
        peer = transport.get_extra_info("peername")
        local = transport.get_extra_info("sockname")
        self.srv.event("connect", conn=self.id, peer=peer[0], peer_port=peer[1],
                       local="%s:%d" % (local[0], local[1]),
                       concurrent=self.srv.concurrent)
        self.task = asyncio.get_running_loop().create_task(self.run())

    def data_received(self, data):
        self.reads += 1
        self.buf += data
        self.marks.append((len(self.buf), self.reads))
        self.more.set()

    def connection_lost(self, exc):
        if not self.closed:
            self.closed = True
            self.srv.concurrent -= 1
            self.srv.event("disconnect", conn=self.id, max_concurrent=self.srv.max_concurrent)
        self.eof = True
        self.more.set()

    def take(self, n):
        """The first N buffered bytes and the number of the read that completed them."""
        read_no = next(r for end, r in self.marks if end >= n)
        out, self.buf = self.buf[:n], self.buf[n:]
        self.marks = [(end - n, r) for end, r in self.marks if end > n]
        return read_no, out

    # --- protocol side ------------------------------------------------------------
    def send(self, text):
        if self.transport and not self.transport.is_closing():
            self.transport.write(text.encode() + b"\r\n")

    async def delay(self, what):
        d = self.script.get("delay", {}).get(what)
        if d:
            await asyncio.sleep(d)

    async def readline(self):
        """(read number, line with its LF), or None at the end of the connection."""
        while b"\n" not in self.buf:
            if self.eof:
                return None
            self.more.clear()
            await self.more.wait()
        return self.take(self.buf.index(b"\n") + 1)

    async def readexact(self, n):
        """(read number, N bytes), or None if the connection ends first."""
        while len(self.buf) < n:
            if self.eof:
                return None
            self.more.clear()
            await self.more.wait()
        return self.take(n) if n else (self.reads, b"")

    def ehlo_lines(self):
        s = self.script
        host = s.get("hostname", "mx.test")
        lines = [host]
        if s.get("pipelining", True):
            lines.append("PIPELINING")
        if s.get("size", 52428800) is not None:
            lines.append("SIZE %d" % s.get("size", 52428800))
        if s.get("8bitmime", True):
            lines.append("8BITMIME")
        if s.get("smtputf8", True):
            lines.append("SMTPUTF8")
        if s.get("starttls") and not self.tls:
            lines.append("STARTTLS")
        if s.get("enhancedstatuscodes", True):
            lines.append("ENHANCEDSTATUSCODES")
        if s.get("dsn", True):
            lines.append("DSN")
        if s.get("chunking", False):
            lines.append("CHUNKING")
        a = s.get("auth")
        if a and (self.tls or not a.get("tls_only")):
            lines.append("AUTH " + " ".join(a.get("mechanisms", ["PLAIN", "LOGIN"])))
        return ["250-" + l for l in lines[:-1]] + ["250 " + lines[-1]]

    def throttled(self):
        """The throttle's reply while its window is open, else None."""
        t = self.script.get("throttle")
        if not t or self.srv.accepted < t["after"]:
            return None
        now = time.monotonic()
        if self.srv.throttle_from is None:
            self.srv.throttle_from = now
            self.srv.event("throttle_start", after=self.srv.accepted)
        if now - self.srv.throttle_from < t["seconds"]:
            return t.get("reply", "421 4.7.28 Rate Limit Exceeded")
        return None

    def rcpt_reply(self, addr):
        local = addr.split("@")[0].lower()
        for i, rule in enumerate(self.script.get("rcpt", []) + DEFAULT_RCPT_RULES):
            prefix, reply, limit = (list(rule) + [None])[:3]
            if limit is not None and self.srv.rule_hits.get(i, 0) >= limit:
                continue
            if local.startswith(prefix.lower()):
                self.srv.rule_hits[i] = self.srv.rule_hits.get(i, 0) + 1
                return reply
        return "250 2.1.5 Ok"

    async def run(self):
        try:
            await self.session()
        except Exception as e:     # a test receiver logs whatever broke, and goes on
            self.srv.event("error", conn=self.id, error=repr(e))
        finally:
            if self.transport and not self.transport.is_closing():
                self.transport.close()

    def over_limit(self):
        """The greeting that refuses this connection (too many open at once), or None."""
        limit = self.script.get("max_concurrent")
        path = self.script.get("max_concurrent_file")
        if path:
            try:
                with open(path) as f:
                    limit = int(f.read().strip())
            except (OSError, ValueError):
                pass
        if limit is None or self.srv.concurrent <= limit:
            return None
        self.srv.event("refused", conn=self.id, peer=self.transport.get_extra_info("peername")[0],
                       open=self.srv.concurrent)
        return self.script.get("over_limit_greeting",
                               "421 4.3.2 Too many connections, try again later")

    async def session(self):
        self.tls = False
        if self.script.get("silent"):
            self.srv.event("silent", conn=self.id)
            while await self.readline() is not None:
                pass        # whatever the client says, we never answer
            return
        refusal = self.over_limit()
        if refusal:
            self.send(refusal)
            self.transport.close()
            return
        await self.delay("greeting")
        greeting = self.script.get("greeting", "220 %s ESMTP testsmtpd" % self.script.get("hostname", "mx.test"))
        self.send(greeting)
        if not greeting.startswith("2"):
            self.transport.close()
            return
        nmsg = 0
        while True:
            item = await self.readline()
            if item is None:
                return
            read_no, raw = item
            line = raw.rstrip(b"\r\n").decode("utf-8", "replace")
            verb = line.split(" ", 1)[0].upper()
            arg = line[len(verb):].strip()
            if verb in ("EHLO", "HELO"):
                self.srv.event(verb.lower(), conn=self.id, name=arg, read=read_no)
                await self.delay("ehlo")
                if verb == "EHLO" and self.script.get("ehlo_reply"):
                    self.send(self.script["ehlo_reply"])
                elif verb == "EHLO":
                    for l in self.ehlo_lines():
                        self.send(l)
                else:
                    self.send("250 %s" % self.script.get("hostname", "mx.test"))
            elif verb == "STARTTLS" and self.srv.sslctx and not self.tls:
                self.srv.event("starttls", conn=self.id)
                if self.script.get("starttls_inject"):
                    # A response smuggled in clear after the 220 (the client must refuse).
                    self.transport.write(b"220 2.0.0 Ready to start TLS\r\n250 2.0.0 injected\r\n")
                else:
                    self.send("220 2.0.0 Ready to start TLS")
                loop = asyncio.get_running_loop()
                self.buf, self.marks = b"", []
                self.transport = await loop.start_tls(self.transport, self, self.srv.sslctx,
                                                      server_side=True)
                self.tls = True
                sslobj = self.transport.get_extra_info("ssl_object")
                self.srv.event("tls", conn=self.id, version=sslobj.version(),
                               cipher=sslobj.cipher()[0])
            elif verb == "AUTH" and self.script.get("auth") and not self.authed:
                if not await self.authenticate(arg):
                    return
            elif verb == "MAIL" and self.script.get("auth", {}).get("require") and not self.authed:
                self.send("530 5.7.0 Authentication required")
            elif verb == "MAIL":
                addr, params = split_path(arg[5:] if arg.upper().startswith("FROM:") else arg)
                self.srv.event("mail", conn=self.id, **{"from": addr}, params=params,
                               read=read_no, tls=self.tls)
                await self.delay("mail")
                self.send(self.script.get("mail_reply", "250 2.1.0 Ok"))
            elif verb == "RCPT":
                addr, params = split_path(arg[3:] if arg.upper().startswith("TO:") else arg)
                throttled = self.throttled()
                reply = throttled or self.rcpt_reply(addr)
                self.srv.event("rcpt", conn=self.id, to=addr, params=params,
                               reply=int(reply[:3]), read=read_no)
                await self.delay("rcpt")
                self.send(reply)
                if throttled and reply.startswith("421"):
                    self.transport.close()
                    return
            elif verb == "DATA":
                reply = self.script.get("data_reply", "354 End data with <CR><LF>.<CR><LF>")
                self.srv.event("data_cmd", conn=self.id, read=read_no, reply=int(reply[:3]))
                await self.delay("data")
                self.send(reply)
                if reply.startswith("354"):
                    nmsg += 1
                    if not await self.receive_body(nmsg):
                        return
            elif verb == "BDAT" and self.script.get("chunking"):
                nmsg += 1
                if not await self.receive_bdat(nmsg, arg, read_no):
                    return
            elif verb == "RSET":
                self.srv.event("rset", conn=self.id, read=read_no)
                await self.delay("rset")
                self.send("250 2.0.0 Ok")
            elif verb == "NOOP":
                self.send("250 2.0.0 Ok")
            elif verb == "QUIT":
                self.srv.event("quit", conn=self.id, read=read_no)
                await self.delay("quit")
                self.send("221 2.0.0 Bye")
                self.transport.close()
                return
            else:
                self.send("500 5.5.2 Error: command not recognized")

    async def authenticate(self, arg):
        """One AUTH exchange (PLAIN, LOGIN, CRAM-MD5); False if the connection is gone."""
        a = self.script["auth"]
        mech, _, initial = arg.partition(" ")
        mech = mech.upper()
        user = password = None

        async def ask(challenge):
            self.send("334 " + base64.b64encode(challenge).decode())
            item = await self.readline()
            return None if item is None else item[1].strip()

        if mech == "PLAIN":
            resp = initial.encode() if initial else await ask(b"")
            if resp is None:
                return False
            parts = base64.b64decode(resp).split(b"\0")
            if len(parts) == 3:
                user, password = parts[1].decode(), parts[2].decode()
        elif mech == "LOGIN":
            u = await ask(b"Username:")
            p = u is not None and await ask(b"Password:")
            if u is None or p is None:
                return False
            user, password = base64.b64decode(u).decode(), base64.b64decode(p).decode()
        elif mech == "CRAM-MD5":
            challenge = ("<%d.%d@%s>" % (os.getpid(), time.time_ns(),
                                         self.script.get("hostname", "mx.test"))).encode()
            resp = await ask(challenge)
            if resp is None:
                return False
            user, _, digest = base64.b64decode(resp).decode().rpartition(" ")
            want = hmac.new(a["password"].encode(), challenge, hashlib.md5).hexdigest()
            password = a["password"] if hmac.compare_digest(digest, want) else None
        else:
            self.send("504 5.5.4 Unrecognized authentication type")
            return True
        ok = user == a["user"] and password == a["password"]
        self.srv.event("auth", conn=self.id, mechanism=mech, user=user, ok=ok, tls=self.tls)
        self.authed = ok
        self.send("235 2.7.0 Authentication successful" if ok
                  else "535 5.7.8 Authentication credentials invalid")
        return True

    async def receive_bdat(self, nmsg, arg, read_no):
        """BDAT chunks up to LAST (RFC 3030), saved as one message; False if gone."""
        chunks = []
        while True:
            words = arg.split()
            size, last = int(words[0]), len(words) > 1 and words[1].upper() == "LAST"
            item = await self.readexact(size)
            if item is None:
                return False
            chunks.append(item[1])
            self.srv.event("bdat", conn=self.id, size=size, last=last, read=read_no)
            if last:
                break
            self.send("250 2.0.0 %d bytes received" % size)
            item = await self.readline()
            if item is None:
                return False
            read_no, raw = item
            line = raw.rstrip(b"\r\n").decode("utf-8", "replace")
            if not line.upper().startswith("BDAT "):
                self.send("503 5.5.1 BDAT expected")
                return True
            arg = line[5:]
        return await self.save_message(nmsg, b"".join(chunks), "bdat")

    async def receive_body(self, nmsg):
        """Read the body up to ".", un-stuff, save; False if the connection is gone."""
        body = []
        size = 0
        while True:
            item = await self.readline()
            if item is None:
                return False
            _, raw = item
            if raw in (b".\r\n", b".\n"):
                break
            if raw.startswith(b"."):
                raw = raw[1:]
            body.append(raw)
            size += len(raw)
            if self.script.get("stall_in_data"):
                return await self.stall(size)
            if self.script.get("drop_in_data") or self.script.get("reset_in_data"):
                reset = bool(self.script.get("reset_in_data"))
                self.srv.event("drop", conn=self.id, after_bytes=size, reset=reset)
                if reset:
                    sock = self.transport.get_extra_info("socket")
                    if sock is not None:
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                        struct.pack("ii", 1, 0))
                self.transport.abort()
                return False
        return await self.save_message(nmsg, b"".join(body), "data")

    async def stall(self, size):
        """Read nothing more: the peer's writes fill both socket buffers and block."""
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.transport.pause_reading()
        self.srv.event("stall", conn=self.id, after_bytes=size)
        # paused, the transport does not see the peer close: drop it after a while
        await asyncio.sleep(self.script.get("stall_seconds", 60))
        self.transport.abort()
        return False

    async def save_message(self, nmsg, data, via):
        path = None
        if self.script.get("save", True):
            path = os.path.join(self.srv.datadir, "msg-%d-%d.eml" % (self.id, nmsg))
            with open(path, "wb") as f:
                f.write(data)
        self.srv.event("data", conn=self.id, size=len(data), file=path,
                       sha256=hashlib.sha256(data).hexdigest(), msgid=message_id(data), via=via)
        await self.delay("dot")
        reply = self.script.get("dot_reply", "250 2.0.0 Ok: queued as %d.%d" % (self.id, nmsg))
        if reply.startswith("2"):
            self.srv.accepted += 1
        self.send(reply)
        return True


def message_id(data):
    """The Message-ID header's value in DATA (bytes), or None."""
    for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line[:11].lower() == b"message-id:":
            return line[11:].strip().decode("latin-1")
    return None


def split_path(text):
    """'<a@b> SIZE=1 BODY=8BITMIME' -> ('a@b', ['SIZE=1', 'BODY=8BITMIME'])"""
    text = text.strip()
    if text.startswith("<") and ">" in text:
        end = text.index(">")
        return text[1:end], text[end + 1:].split()
    parts = text.split()
    return (parts[0] if parts else ""), parts[1:]


async def serve(listen, script, log_path, datadir):
    srv = Server(script, log_path, datadir)
    loop = asyncio.get_running_loop()
    servers = []
    for addr in listen:
        host, port = addr.rsplit(":", 1)
        servers.append(await loop.create_server(lambda: Conn(srv), host, int(port),
                                                reuse_address=True))
        srv.event("listening", addr=addr)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("READY", flush=True)
    await stop.wait()
    for s in servers:
        s.close()
    srv.event("stopped", max_concurrent=srv.max_concurrent)
    srv.cleanup()


def main(argv=None):
    ap = argparse.ArgumentParser(description="scriptable SMTP test receiver")
    ap.add_argument("--listen", action="append", required=True, help="IP:PORT (repeatable)")
    ap.add_argument("--log", required=True)
    ap.add_argument("--script", default="{}", help="JSON object, or @FILE")
    ap.add_argument("--datadir", default=None)
    a = ap.parse_args(argv)
    text = a.script
    if text.startswith("@"):
        with open(text[1:]) as f:
            text = f.read()
    script = json.loads(text)
    datadir = a.datadir or os.path.dirname(os.path.abspath(a.log))
    os.makedirs(datadir, exist_ok=True)
    for addr in a.listen:
        if not addr.startswith("127."):
            ap.error("tests listen on loopback (127.0.0.0/8) only: %s" % addr)
    asyncio.run(serve(a.listen, script, a.log, datadir))


# --- the handle tests use ------------------------------------------------------------

class TestSmtpd:
    """Run testsmtpd.py as a child process; read its log.

        with TestSmtpd(["127.0.0.2:2526"], {"starttls": True}, workdir) as rx:
            ...
            rx.events("rcpt")
    """

    def __init__(self, listen, script=None, workdir=None, name="rx"):
        self.listen = [listen] if isinstance(listen, str) else list(listen)
        self.script = script or {}
        self.workdir = workdir or tempfile.mkdtemp(prefix="testsmtpd-")
        self.log_path = os.path.join(self.workdir, name + ".log")
        self.datadir = os.path.join(self.workdir, name + "-data")
        self.proc = None

    def start(self, timeout=10.0):
        os.makedirs(self.datadir, exist_ok=True)
        open(self.log_path, "w").close()
        argv = [sys.executable, os.path.abspath(__file__), "--log", self.log_path,
                "--script", json.dumps(self.script), "--datadir", self.datadir]
        for addr in self.listen:
            argv += ["--listen", addr]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.events("listening")) == len(self.listen):
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        self.stop()
        raise RuntimeError("testsmtpd did not start on %s" % self.listen)

    def stop(self):
        if self.proc is not None:
            stop_child(self.proc)
            self.proc.stdout.close()
            self.proc = None

    def events(self, kind=None):
        out = []
        try:
            with open(self.log_path) as f:
                for line in f:
                    if not line.endswith("\n"):
                        break       # being written
                    rec = json.loads(line)
                    if kind is None or rec["event"] == kind:
                        out.append(rec)
        except FileNotFoundError:
            pass
        return out

    def open_at_most(self, since=0.0, until=float("inf"), served=False):
        """The most connections open at once between SINCE and UNTIL (those already open at
        SINCE count), from the connect/disconnect events; SERVED leaves out the ones refused
        by max_concurrent."""
        refused = {e["conn"] for e in self.events("refused")} if served else set()
        evs = sorted((e["t"], 1 if e["event"] == "connect" else -1) for e in self.events()
                     if e["event"] in ("connect", "disconnect") and e["conn"] not in refused)
        n = best = 0
        for t, d in evs:
            if since <= t <= until:
                best = max(best, n)  # what was open just before
            n += d
            if since <= t <= until:
                best = max(best, n)
        return best if evs and evs[-1][0] >= since else max(best, n)

    def clear(self):
        """Forget events so far (the log is truncated in place)."""
        open(self.log_path, "w").close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


if __name__ == "__main__":
    main()
