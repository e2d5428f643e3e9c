"""hostile.py - a hostile inbound load and a normal client beside it (stdlib only).

    from hostile import Load, Probe, Sampler

    load = Load(port, sources=["127.0.0.100", ...], idle=2000, drip=200, flood=500,
                flood_bytes=10 << 20)
    load.start()                       # a child process: asyncio, all connections at once
    probe = Probe(port).start()        # a message every PERIOD s from 127.0.0.1
    sampler = Sampler(pmtad_pid).start()
    ... wait ...
    result = load.finish()             # dict: per kind, greetings, endings, held times
    probe.stop(); sampler.stop()

Kinds of hostile connection, each opened from the SOURCES in turn:
  idle   reads the greeting and says nothing, ever;
  drip   sends "MAIL FROM:<" and then one byte a second, never a line end;
  flood  sends FLOOD_BYTES without a line end as fast as the server reads.
With SUSTAIN, a connection that ended (refused or closed) is opened again
after a second, so the pressure lasts as long as the load runs.

The load runs in its own process (its own interpreter: the probe's timing
is not the load's event loop), with RLIMIT_NOFILE raised for its sockets.
The probe is the honest client: connect, EHLO, MAIL, RCPT, DATA, a small
message, the 250, QUIT; its latency is connect to 250. The sampler reads
/proc for pmtad and every worker: VmRSS, VmHWM (peak) and open descriptors.
"""

import asyncio
import json
import multiprocessing
import os
import random
import resource
import socket
import threading
import time

from pmtatest import proc_status

KINDS = ("idle", "drip", "flood")


class _Counts:
    def __init__(self):
        self.kind = {k: {"attempts": 0, "admitted": 0, "greetings": {}, "endings": {},
                         "held": [], "bytes_sent": 0} for k in KINDS}
        self.open_now = 0
        self.max_open = 0

    def bump(self, table, key):
        table[key] = table.get(key, 0) + 1


async def _connect(host, port, src, timeout):
    return await asyncio.wait_for(asyncio.open_connection(host, port, local_addr=(src, 0)),
                                  timeout)


async def _behave(kind, writer, flood_bytes, counts):
    chunk = b"a" * (1 << 20)
    if kind == "drip":
        writer.write(b"MAIL FROM:<")
        while True:
            await asyncio.sleep(1)
            writer.write(b"x")
            await writer.drain()
    elif kind == "flood":
        sent = 0
        while sent < flood_bytes:
            n = min(len(chunk), flood_bytes - sent)
            writer.write(chunk[:n])
            await writer.drain()
            sent += n
            counts.kind[kind]["bytes_sent"] += n
    await asyncio.sleep(3600)


async def _one(kind, host, port, src, flood_bytes, counts):
    """One connection, start to end; what happened goes into COUNTS."""
    c = counts.kind[kind]
    c["attempts"] += 1
    loop = asyncio.get_running_loop()
    try:
        reader, writer = await _connect(host, port, src, 20)
    except (OSError, asyncio.TimeoutError):
        counts.bump(c["greetings"], "connect failed")
        return
    try:
        greeting = await asyncio.wait_for(reader.readline(), 20)
    except (OSError, asyncio.TimeoutError, ValueError):
        greeting = b""
    label = greeting[:9].decode(errors="replace").strip() or "no greeting"
    counts.bump(c["greetings"], label if not label.startswith("220") else "220")
    if not greeting.startswith(b"220"):
        writer.close()
        return
    c["admitted"] += 1
    counts.open_now += 1
    counts.max_open = max(counts.max_open, counts.open_now)
    t0 = loop.time()
    sender = asyncio.ensure_future(_behave(kind, writer, flood_bytes, counts))
    last = b""
    try:
        while True:
            line = await reader.readline()
            if not line:
                break
            last = line
    except (OSError, ValueError):
        last = last or b"reset"
    except asyncio.CancelledError:
        last = b"load over"                  # still open when the load ended
        raise
    finally:
        sender.cancel()
        counts.open_now -= 1
        c["held"].append(round(loop.time() - t0, 3))
        counts.bump(c["endings"], last[:9].decode(errors="replace").strip() or "closed silently")
        writer.close()


async def _worker(kind, host, port, src, flood_bytes, counts, deadline, sustain):
    while True:
        await _one(kind, host, port, src, flood_bytes, counts)
        if not sustain or time.monotonic() + 1 >= deadline:
            return
        await asyncio.sleep(1)


async def _load(spec, counts):
    deadline = time.monotonic() + spec["duration"]
    kinds = [k for k in KINDS for _ in range(spec[k])]
    random.Random(1).shuffle(kinds)          # every kind reaches every address
    tasks = []
    for i, kind in enumerate(kinds):
        src = spec["sources"][i % len(spec["sources"])]
        tasks.append(asyncio.ensure_future(
            _worker(kind, spec["host"], spec["port"], src, spec["flood_bytes"], counts,
                    deadline, spec["sustain"])))
    await asyncio.wait(tasks, timeout=spec["duration"])
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _child(spec, conn):
    need = spec["idle"] + spec["drip"] + spec["flood"] + 512
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(need, soft), max(need, hard)))
    counts = _Counts()
    asyncio.run(_load(spec, counts))
    conn.send(json.dumps({"kinds": counts.kind, "max_open": counts.max_open}))
    conn.close()


class Load:
    """The hostile connections, in a child process."""

    def __init__(self, port, sources, idle=0, drip=0, flood=0, flood_bytes=10 << 20,
                 duration=30, sustain=False, host="127.0.0.1"):
        self.spec = dict(port=port, sources=list(sources), idle=idle, drip=drip, flood=flood,
                         flood_bytes=flood_bytes, duration=duration, sustain=sustain, host=host)
        self.proc = None
        self.conn = None

    def start(self):
        ctx = multiprocessing.get_context("fork")
        self.conn, child_end = ctx.Pipe(duplex=False)
        self.proc = ctx.Process(target=_child, args=(self.spec, child_end), daemon=True)
        self.proc.start()
        child_end.close()
        return self

    def finish(self, timeout=None):
        """Wait for the load to end; its counts (see _Counts) as a dict."""
        timeout = timeout or self.spec["duration"] + 60
        if not self.conn.poll(timeout):
            self.proc.kill()
            raise RuntimeError("the hostile load did not finish")
        result = json.loads(self.conn.recv())
        self.proc.join(10)
        return result


class Probe(threading.Thread):
    """The honest client: one message per PERIOD seconds; latency from connect to 250."""

    def __init__(self, port, host="127.0.0.1", period=0.5, timeout=30):
        super().__init__(daemon=True)
        self.addr = (host, port)
        self.period = period
        self.timeout = timeout
        self.latencies = []
        self.failures = []
        self.stopping = threading.Event()

    def start(self):
        super().start()
        return self

    def one(self, n):
        t0 = time.monotonic()
        s = socket.create_connection(self.addr, timeout=self.timeout)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        f = s.makefile("rb")

        def reply():
            while True:
                line = f.readline()
                if not line:
                    raise RuntimeError("connection closed")
                if line[3:4] != b"-":
                    return line

        def expect(code, line):
            if not line.startswith(code):
                raise RuntimeError("wanted %s, got %r" % (code.decode(), line[:80]))

        try:
            expect(b"220", reply())
            s.sendall(b"EHLO probe.test\r\n")
            expect(b"250", reply())
            s.sendall(b"MAIL FROM:<probe@example.test>\r\nRCPT TO:<r@example.test>\r\nDATA\r\n")
            expect(b"250", reply())
            expect(b"250", reply())
            expect(b"354", reply())
            s.sendall(b"Subject: probe %d\r\nMessage-ID: <probe%d@test>\r\n\r\nhello\r\n.\r\n"
                      % (n, n))
            expect(b"250", reply())
            latency = time.monotonic() - t0
            s.sendall(b"QUIT\r\n")
            return latency
        finally:
            f.close()
            s.close()

    def run(self):
        n = 0
        while not self.stopping.is_set():
            n += 1
            try:
                self.latencies.append(self.one(n))
            except Exception as e:          # noqa: BLE001 - recorded
                self.failures.append(repr(e))
            self.stopping.wait(self.period)

    def stop(self):
        self.stopping.set()
        self.join(self.timeout + 5)

    def summary(self):
        lat = sorted(self.latencies)
        if not lat:
            return {"messages": 0, "failures": len(self.failures)}
        return {"messages": len(lat), "failures": len(self.failures),
                "p50_ms": round(lat[len(lat) // 2] * 1000, 1),
                "p99_ms": round(lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000, 1),
                "max_ms": round(lat[-1] * 1000, 1)}


def _proc_name(pid):
    try:
        with open("/proc/%d/comm" % pid) as f:
            return f.read().strip()
    except OSError:
        return None


def _kb(text):
    try:
        return int(text.split()[0])
    except (AttributeError, IndexError, ValueError):
        return 0


class Sampler(threading.Thread):
    """Peak RSS and open descriptors of pmtad and its children, every PERIOD s."""

    def __init__(self, pmtad_pid, period=0.25):
        super().__init__(daemon=True)
        self.root = pmtad_pid
        self.period = period
        self.peak = {}     # "name pid" -> {"rss_kb", "hwm_kb", "fds"}
        self.stopping = threading.Event()

    def start(self):
        super().start()
        return self

    def pids(self):
        out = [self.root]
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                st = proc_status(int(entry))
                if st.get("PPid") == str(self.root):
                    out.append(int(entry))
        return out

    def sample(self):
        for pid in self.pids():
            st = proc_status(pid)
            if not st:
                continue
            try:
                fds = len(os.listdir("/proc/%d/fd" % pid))
            except OSError:
                fds = 0
            key = "%s %d" % (_proc_name(pid) or "?", pid)
            p = self.peak.setdefault(key, {"rss_kb": 0, "hwm_kb": 0, "fds": 0})
            p["rss_kb"] = max(p["rss_kb"], _kb(st.get("VmRSS")))
            p["hwm_kb"] = max(p["hwm_kb"], _kb(st.get("VmHWM")))
            p["fds"] = max(p["fds"], fds)

    def run(self):
        while not self.stopping.is_set():
            self.sample()
            self.stopping.wait(self.period)

    def stop(self):
        self.stopping.set()
        self.join(5)
        self.sample()
        return self.peak
