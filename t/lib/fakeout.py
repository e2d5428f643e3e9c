"""fakeout - a scriptable stand-in for an smtp-out process (stdlib only).

    from fakeout import FakeOut
    f = FakeOut(path, answer=lambda queue, msgid, index, n: (0, 250, "2.0.0", "ok"))
    f.start()        # connects to RUNDIR/private/qmgr and says MP_QMGR_HELLO
    ...
    f.stop()         # closes the socket (qmgr sees the process go away)

qmgr drives it with MP_CONN_OPEN / MP_CONN_TXN / MP_CONN_CLOSE; it answers
like smtp-out would: MP_CONN_UP (or MP_CONN_DOWN when OPEN_FAIL says so),
one MP_RCPT_RESULT per recipient after TXN_DELAY seconds, MP_TXN_DONE,
MP_CONN_IDLE, and MP_CONN_DOWN after a close. It records everything with
time.monotonic() stamps:

    opens   [(t, conn, queue, domain, vmta, source_ip, helo)]
    txns    [(t, conn, queue, msgid, [indexes])]
    results [(t, conn, queue, msgid, index, result)]
    closes  [(t, conn, queue)]
    max_concurrent[queue]   most connections open at once
    max_concurrent_vmta[v]  most connections open at once over all queues of virtual MTA v
    max_concurrent_total    most connections open at once over every queue

ANSWER(queue, msgid, index, attempt) -> (result, code, enhanced, text), where
ATTEMPT counts how often this (msgid, index) was seen (1 first); return None
to hold the recipient (no answer: it stays in flight).
OPEN_FAIL(queue, n) -> None, or (result, code, enhanced, text) to fail the
N-th (1-based) connection of QUEUE before it comes up.
"""

import heapq
import os
import select
import socket
import struct
import threading
import time

from pmtaipc import (HEADER, MP_PEER_SMTP_OUT, MP_RESULT_OK, MP_RESULT_PERMFAIL,
                     MP_RESULT_TEMPFAIL, decode, encode)

OK, TEMPFAIL, PERMFAIL = MP_RESULT_OK, MP_RESULT_TEMPFAIL, MP_RESULT_PERMFAIL


def always_ok(queue, msgid, index, attempt):
    return (OK, 250, "2.0.0", "ok")


class FakeOut:
    def __init__(self, path, answer=always_ok, open_fail=None, txn_delay=0.0,
                 connect_delay=0.0, max_connections=0, pid=None):
        self.path = path
        self.answer = answer
        self.open_fail = open_fail or (lambda queue, n: None)
        self.txn_delay = txn_delay
        self.connect_delay = connect_delay
        self.max_connections = max_connections
        self.pid = pid or os.getpid()
        self.lock = threading.Lock()
        self.opens, self.txns, self.results, self.closes = [], [], [], []
        self.max_concurrent = {}
        self.open_now = {}
        self.max_concurrent_vmta = {}
        self.open_now_vmta = {}
        self.max_concurrent_total = 0
        self.open_now_total = 0
        self.conns = {}            # conn id -> queue
        self.seen = {}             # (msgid, index) -> attempts
        self.opens_per_queue = {}
        self.timers = []           # heap of (when, seq, fn)
        self.seq = 0
        self.sock = None
        self.thread = None
        self.running = False
        self.errors = []

    # --- lifecycle ------------------------------------------------------------------
    def start(self, timeout=10):
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.connect(self.path)
                break
            except OSError:
                self.sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self.sock.sendall(encode("QMGR_HELLO", 0, kind=MP_PEER_SMTP_OUT, pid=self.pid,
                                 max_connections=self.max_connections))
        self.running = True
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()
        return self

    def stop(self):
        """Vanish like a crashed process: close the socket at once."""
        self.running = False
        if self.thread:
            self.thread.join(5)
        if self.sock:
            self.sock.close()
            self.sock = None

    # --- queries ---------------------------------------------------------------------
    def delivered(self):
        """(msgid, index) pairs answered OK, in order."""
        with self.lock:
            return [(m, i) for (_, _, _, m, i, r) in self.results if r == OK]

    def txns_for(self, queue):
        with self.lock:
            return [t for t in self.txns if t[2] == queue]

    def results_for(self, queue):
        with self.lock:
            return [r for r in self.results if r[2] == queue]

    def opens_for(self, queue):
        with self.lock:
            return [o for o in self.opens if o[2] == queue]

    # --- internals -------------------------------------------------------------------
    def _later(self, delay, fn):
        self.seq += 1
        heapq.heappush(self.timers, (time.monotonic() + delay, self.seq, fn))

    def _send(self, data):
        try:
            self.sock.sendall(data)
        except OSError as e:
            self.errors.append(str(e))

    def _loop(self):
        buf = b""
        while self.running:
            now = time.monotonic()
            while self.timers and self.timers[0][0] <= now:
                _, _, fn = heapq.heappop(self.timers)
                fn()
            wait = 0.05
            if self.timers:
                wait = max(0.0, min(wait, self.timers[0][0] - time.monotonic()))
            r, _, _ = select.select([self.sock], [], [], wait)
            if not r:
                continue
            try:
                chunk = self.sock.recv(65536)
            except OSError:
                chunk = b""
            if not chunk:
                self.running = False
                break
            buf += chunk
            while len(buf) >= HEADER:
                n = struct.unpack_from(">I", buf)[0]
                if len(buf) < n:
                    break
                f, buf = buf[:n], buf[n:]
                ftype, _, fid = struct.unpack_from(">HHI", f, 4)
                try:
                    name, fields = decode(ftype, f[HEADER:])
                except ValueError as e:
                    self.errors.append("malformed frame type %d: %s" % (ftype, e))
                    continue
                self._frame(fid, name, fields)

    def _frame(self, cid, name, fields):
        now = time.monotonic()
        if name == "CONN_OPEN":
            queue, domain, vmta = fields["queue"], fields["domain"], fields["vmta"]
            src, helo = fields["source_ip"], fields["helo"]
            with self.lock:
                self.conns[cid] = queue
                self.opens.append((now, cid, queue, domain, vmta, src, helo))
                self.open_now[queue] = self.open_now.get(queue, 0) + 1
                self.max_concurrent[queue] = max(self.max_concurrent.get(queue, 0),
                                                 self.open_now[queue])
                self.open_now_vmta[vmta] = self.open_now_vmta.get(vmta, 0) + 1
                self.max_concurrent_vmta[vmta] = max(self.max_concurrent_vmta.get(vmta, 0),
                                                     self.open_now_vmta[vmta])
                self.open_now_total += 1
                self.max_concurrent_total = max(self.max_concurrent_total, self.open_now_total)
                n = self.opens_per_queue[queue] = self.opens_per_queue.get(queue, 0) + 1
            fail = self.open_fail(queue, n)
            if fail:
                self._later(self.connect_delay, lambda: self._down(cid, fail))
            else:
                self._later(self.connect_delay, lambda: self._up(cid, domain, src))
        elif name == "CONN_TXN":
            msgid, raw = fields["msgid"], fields["indexes"]
            idx = list(struct.unpack(">%dI" % (len(raw) // 4), raw))
            with self.lock:
                queue = self.conns.get(cid, "?")
                self.txns.append((now, cid, queue, msgid, idx))
            sent_ns = time.monotonic_ns()     # CLOCK_MONOTONIC, as smtp-out's uv_hrtime()
            self._later(self.txn_delay, lambda: self._answer(cid, queue, msgid, idx, sent_ns))
        elif name == "CONN_CLOSE":
            with self.lock:
                self.closes.append((now, cid, self.conns.get(cid, "?")))
            self._down(cid, (OK, 221, "2.0.0", "closed"))
        else:
            self.errors.append("unexpected frame %s" % name)

    def _answer(self, cid, queue, msgid, idx, sent_ns=0):
        with self.lock:
            if cid not in self.conns:       # the connection went down first
                return
        out, held = [], False
        for i in idx:
            with self.lock:
                n = self.seen[(msgid, i)] = self.seen.get((msgid, i), 0) + 1
            a = self.answer(queue, msgid, i, n)
            if a is None:
                held = True
                continue
            result, code, enh, text = a
            with self.lock:
                self.results.append((time.monotonic(), cid, queue, msgid, i, result))
            out.append(encode("RCPT_RESULT", cid, msgid=msgid, index=i, result=result, code=code,
                              enhanced=enh, text=text, sent_ns=sent_ns))
        if held:
            self._send(b"".join(out))
            return
        out.append(encode("TXN_DONE", cid, msgid=msgid))
        out.append(encode("CONN_IDLE", cid))
        self._send(b"".join(out))

    def _up(self, cid, domain, src):
        """Connected; like smtp-out, say IDLE as well when no transaction is waiting."""
        out = encode("CONN_UP", cid, mx="mx." + domain, dest_ip="127.0.0.2",
                     source_ip=src or "127.0.0.1", tls="", esmtp="PIPELINING,8BITMIME")
        with self.lock:
            waiting = any(t[1] == cid for t in self.txns)
        if not waiting:
            out += encode("CONN_IDLE", cid)
        self._send(out)

    def _down(self, cid, how):
        result, code, enh, text = how
        with self.lock:
            queue = self.conns.pop(cid, None)
            if queue is not None:
                self.open_now[queue] -= 1
                vmta = queue.rsplit("/", 1)[-1]
                self.open_now_vmta[vmta] = self.open_now_vmta.get(vmta, 1) - 1
                self.open_now_total -= 1
        self._send(encode("CONN_DOWN", cid, result=result, code=code, enhanced=enh, text=text,
                          mx="", dest_ip=""))
