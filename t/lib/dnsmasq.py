"""dnsmasq - a local DNS server for openpmta tests (stdlib only).

    from dnsmasq import Dnsmasq, DnsStub

    with Dnsmasq(mx=[("example.test", "mx1.example.test", 10)],
                 hosts=[("mx1.example.test", "127.0.0.2")],
                 local=["test"]) as dns:
        ...  # name server is dns.server ("127.0.0.1:PORT")

Dnsmasq runs Debian's dnsmasq in the foreground on 127.0.0.1 and a free high
port, serving only the records it is given: --mx-host, --host-record, and
--local=/ZONE/ so that unknown names under ZONE get an authoritative NXDOMAIN.
It never forwards (--no-resolv) and never reads /etc/hosts (--no-hosts).

DnsStub is a tiny UDP responder for answers dnsmasq will not give on demand:
mode "servfail" answers every query with RCODE 2, "blackhole" never answers
(so the client times out), "nullmx" answers MX queries with RFC 7505's
"MX 0 ." and everything else with NODATA.

Both bind 127.0.0.1 only. query() is a minimal resolver for self-checks.
Owns: the dnsmasq child (always stopped) and the stub's socket and thread.
Security: test-only; loopback only; the stub parses queries defensively and
drops anything it cannot parse.
"""

import os
import random
import shutil
import socket
import struct
import subprocess
import threading
import time

from childproc import stop_child


def _free_udp_tcp_port(host="127.0.0.1"):
    """A port free for both UDP and TCP on HOST (dnsmasq binds both)."""
    for _ in range(50):
        port = random.randint(20000, 60000)
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u, \
                    socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                u.bind((host, port))
                t.bind((host, port))
                return port
        except OSError:
            continue
    raise RuntimeError("no free port")


def dnsmasq_path():
    for p in ("/usr/sbin/dnsmasq", "/sbin/dnsmasq", shutil.which("dnsmasq")):
        if p and os.path.exists(p):
            return p
    return None


class Dnsmasq:
    def __init__(self, mx=(), hosts=(), local=(), txt=(), port=None):
        self.mx = list(mx)          # (domain, mxname, pref)
        self.hosts = list(hosts)    # (name, ip[, ip...])
        self.local = list(local)    # zones answered authoritatively (NXDOMAIN)
        self.txt = list(txt)        # (name, text)
        self.port = port
        self.proc = None

    @property
    def server(self):
        return "127.0.0.1:%d" % self.port

    def argv(self):
        args = [dnsmasq_path(), "--no-daemon", "--port=%d" % self.port,
                "--listen-address=127.0.0.1", "--bind-interfaces",
                "--no-resolv", "--no-hosts", "--no-poll", "--conf-file=/dev/null",
                "--pid-file=", "--user=" + ("nobody" if os.geteuid() == 0 else ""),
                "--log-facility=-", "--cache-size=0"]
        if os.geteuid() != 0:
            args.remove("--user=")
        for domain, host, pref in self.mx:
            args.append("--mx-host=%s,%s,%d" % (domain, host, pref))
        for h in self.hosts:
            args.append("--host-record=%s" % ",".join(h))
        for zone in self.local:
            args.append("--local=/%s/" % zone)
        for name, text in self.txt:
            args.append("--txt-record=%s,%s" % (name, text))
        return args

    def start(self, timeout=5.0):
        if dnsmasq_path() is None:
            raise RuntimeError("dnsmasq not installed")
        for attempt in range(5):
            if self.port is None or attempt > 0:
                self.port = _free_udp_tcp_port()
            self.proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL,
                                         stderr=subprocess.PIPE)
            if self._wait_ready(timeout):
                return self
            self.stop()
        raise RuntimeError("dnsmasq did not start")

    def _wait_ready(self, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                query(self.server, "ready.invalid", "A", timeout=0.2)
                return True
            except (OSError, socket.timeout, ValueError):
                time.sleep(0.05)
        return False

    def stop(self):
        if self.proc is not None:
            stop_child(self.proc)
            if self.proc.stderr:
                self.proc.stderr.close()
            self.proc = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


# --- a minimal DNS wire format, enough for the stub and self-checks -----------

QTYPES = {"A": 1, "NS": 2, "CNAME": 5, "MX": 15, "TXT": 16, "AAAA": 28}


def _encode_name(name):
    out = b""
    for label in name.rstrip(".").split("."):
        if label:
            out += bytes([len(label)]) + label.encode()
    return out + b"\0"


def _skip_name(msg, off):
    while True:
        n = msg[off]
        if n == 0:
            return off + 1
        if n & 0xC0 == 0xC0:
            return off + 2
        off += 1 + n


def query(server, name, qtype="A", timeout=1.0):
    """Send one query; return (rcode, answer_count). Raises on timeout."""
    host, port = server.rsplit(":", 1)
    qid = random.randint(0, 65535)
    pkt = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    pkt += _encode_name(name) + struct.pack(">HH", QTYPES[qtype], 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(pkt, (host, int(port)))
        data, _ = s.recvfrom(4096)
    rid, flags, _qd, an = struct.unpack(">HHHH", data[:8])
    if rid != qid:
        raise ValueError("id mismatch")
    return flags & 0xF, an


class DnsStub:
    """A UDP responder on 127.0.0.1 that fails on purpose (see module doc)."""

    def __init__(self, mode):
        if mode not in ("servfail", "blackhole", "nullmx"):
            raise ValueError(mode)
        self.mode = mode
        self.sock = None
        self.thread = None
        self.port = None
        self.queries = 0

    @property
    def server(self):
        return "127.0.0.1:%d" % self.port

    def start(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.sock.settimeout(0.1)
        self._stop = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()
        return self

    def _answer(self, data):
        if len(data) < 12:
            return None
        qid, _flags, qd = struct.unpack(">HHH", data[:6])
        if qd != 1:
            return None
        qend = _skip_name(data, 12) + 4
        question = data[12:qend]
        qtype = struct.unpack(">H", data[qend - 4:qend - 2])[0]
        if self.mode == "servfail":
            return struct.pack(">HHHHHH", qid, 0x8182, 1, 0, 0, 0) + question
        if self.mode == "nullmx" and qtype == QTYPES["MX"]:
            rr = b"\xc0\x0c" + struct.pack(">HHIH", 15, 1, 300, 3) + b"\0\0\0"
            return struct.pack(">HHHHHH", qid, 0x8580, 1, 1, 0, 0) + question + rr
        return struct.pack(">HHHHHH", qid, 0x8580, 1, 0, 0, 0) + question

    def _serve(self):
        while not self._stop:
            try:
                data, peer = self.sock.recvfrom(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            self.queries += 1
            if self.mode == "blackhole":
                continue
            try:
                reply = self._answer(data)
            except (IndexError, struct.error):
                reply = None
            if reply:
                self.sock.sendto(reply, peer)

    def stop(self):
        if self.sock is not None:
            self._stop = True
            self.thread.join(2)
            self.sock.close()
            self.sock = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
