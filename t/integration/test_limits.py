#!/usr/bin/env python3
"""test_limits.py - limits that protect the honest client, across smtpd processes.

One pmtad (two smtpd processes, total-max-smtp-in 20) checks, with raw
sockets from several loopback addresses:
  - max-smtp-in-per-ip holds exactly across both processes, per address;
  - max-connect-rate-per-ip refuses the connection over the rate;
  - total-max-smtp-in holds across processes; strangers stop a tenth short
    of it, the rest is for relaying sources (feeders);
  - stress mode: from 80% in use, idle sessions that started with a 10 min
    timeout are closed with 421 4.4.2 within about 10 s; it is logged, and
    so is its end.
A second pmtad takes a scaled-down hostile load (t/lib/hostile.py, as
bench/hostile): idle, slow-drip and 1 MB-without-newline connections from
ten addresses, reconnecting; an honest client beside it must keep
delivering quickly, total-max-smtp-in and the timeouts must hold, memory
and descriptors stay bounded.
A third pmtad runs with `ulimit -n 64`: a hundred connections at once each
get a 220 or a polite "421 4.3.2", never a silent close; nothing crashes, and
once they are gone it serves again.
"""
import socket
import sys
import time

from hostile import Load, Probe, Sampler
from pmtatest import Pmta, Tap, require_root, wait_for

tap = Tap()
require_root(tap)


def greet(port, source, timeout=10):
    """(socket, first line) of a new connection from SOURCE; the line is '' on a silent close."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.bind((source, 0))
    s.connect(("127.0.0.1", port))
    f = s.makefile("rb")
    try:
        line = f.readline().decode(errors="replace").strip()
    except OSError as e:
        line = "error: %s" % e
    f.close()
    return s, line


def open_many(port, source, n):
    socks, lines = [], []
    for _ in range(n):
        s, line = greet(port, source)
        socks.append(s)
        lines.append(line)
    return socks, lines


def close_all(socks):
    for s in socks:
        s.close()


def admitted_again(port, source):
    def ok():
        s, line = greet(port, source)
        s.close()
        return line.startswith("220")
    return wait_for(ok, 10, 0.2)


def read_until_close(s, timeout):
    """The last line the server sent before closing S, and when (monotonic)."""
    s.settimeout(timeout)
    data = b""
    try:
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    except OSError:
        pass
    lines = data.decode(errors="replace").strip().splitlines()
    return (lines[-1] if lines else ""), time.monotonic()


def config(total, sources=""):
    """total-max-smtp-in TOTAL, 127.0.0.1 a relaying source (the feeder), then SOURCES."""
    return """
total-max-smtp-in %d
<source 127.0.0.1>
    always-allow-relaying yes
</source>
""" % total + sources


def count(lines, prefix):
    return sum(1 for line in lines if line.startswith(prefix))


# --- limits, exactly -------------------------------------------------------------------------
with Pmta(name="test_limits") as p:
    p.write_config(config(20, """
<source 127.0.0.16/28>
    max-smtp-in-per-ip 3
</source>
<source 127.0.0.32/28>
    max-connect-rate-per-ip 3/30s
</source>
"""), processes={"smtp-out": 0})
    p.start()
    port = p.port

    # per address, across both smtpd processes
    socks, lines = open_many(port, "127.0.0.17", 6)
    tap.ok(count(lines, "220") == 3 and count(lines, "421 4.7.0 Too many connections from your "
                                              "address") == 3,
           "max-smtp-in-per-ip 3: of 6 connections from one address 3 are served, 3 get 421 4.7.0",
           lines)
    other, line = greet(port, "127.0.0.18")
    tap.ok(line.startswith("220"), "another address of the same <source> is served", line)
    other.close()
    close_all(socks)
    tap.ok(admitted_again(port, "127.0.0.17"), "once its sessions end, the address is served again")
    tap.ok(p.wait_log(r"connection from 127\.0\.0\.17 refused: too many connections from one "
                      r"address \(max-smtp-in-per-ip\)"), "the refusal is logged with the address")

    # rate
    lines = []
    for _ in range(4):
        s, line = greet(port, "127.0.0.33")
        lines.append(line)
        s.close()
    tap.ok(count(lines[:3], "220") == 3
           and lines[3].startswith("421 4.7.0 Too many connection attempts from your address"),
           "max-connect-rate-per-ip 3/30s: the 4th connection in a row gets 421 4.7.0", lines)
    s, line = greet(port, "127.0.0.34")
    s.close()
    tap.ok(line.startswith("220"), "the rate is per address", line)

    # total, across processes, with the feeders' reserve
    mark = p.log_mark()
    a, la = open_many(port, "127.0.0.50", 10)       # default per-ip: half of 20
    b, lb = open_many(port, "127.0.0.51", 10)
    strangers = la + lb
    tap.ok(count(strangers, "220") == 18
           and count(strangers, "421 4.7.0 Too many connections, try again later") == 2,
           "total-max-smtp-in 20: strangers get 18 sessions across both processes, then 421 4.7.0",
           strangers)
    feeders, lf = open_many(port, "127.0.0.1", 3)
    tap.ok(count(lf, "220") == 2 and lf[2].startswith("421 4.7.0"),
           "a relaying source gets the last 2 (the reserve), then 421 4.7.0", lf)
    tap.ok(p.wait_log(r"stress mode on: \d+ of 20 inbound connections in use", since=mark),
           "stress mode on is logged")

    # stress: sessions opened with a 10 min command timeout are closed within about 10 s
    t0 = time.monotonic()
    ends = [read_until_close(s, 30) for s, line in zip(a + b + feeders, strangers + lf)
            if line.startswith("220")]
    worst = max(t for _, t in ends) - t0
    tap.ok(all(last.startswith("421 4.4.2") for last, _ in ends) and worst < 16,
           "under stress, idle sessions get 421 4.4.2 within 10 s (%d sessions, last after %.1f s)"
           % (len(ends), worst), [last for last, _ in ends][:5])
    close_all(a + b + feeders)
    tap.ok(p.wait_log(r"stress mode off: \d+ of 20 inbound connections in use", since=mark),
           "the end of stress mode is logged")
    tap.ok(admitted_again(port, "127.0.0.50"), "afterwards strangers are served again")
    tap.ok(len(p.worker_pids("smtpd")) == 2 and "killed by signal" not in p.log(),
           "no smtpd died")

# --- a hostile load, scaled down ------------------------------------------------------------
with Pmta(name="test_limits_load") as p:
    p.write_config(config(100, """
<source 127.0.0.64/26>
    max-smtp-in-per-ip 9
</source>
"""), processes={"smtp-out": 0})
    p.start()
    p.wait_log(r"cleanup\[\d+\]: info: queue .* open", timeout=20)
    workers = sorted(p.worker_pids())
    mark = p.log_mark()
    sampler = Sampler(p.pid).start()
    probe = Probe(p.port, period=0.3).start()
    load = Load(p.port, ["127.0.0.%d" % (64 + i) for i in range(10)], idle=300, drip=30,
                flood=30, flood_bytes=1 << 20, duration=16, sustain=True).start()
    result = load.finish()
    probe.stop()
    peak = sampler.stop()
    s = probe.summary()
    tap.diag("honest client: %s" % s)
    tap.ok(s["messages"] >= 20 and s["failures"] == 0 and s["max_ms"] < 2000,
           "the honest client delivers throughout (max %.0f ms; 1 s is the bench's bound)"
           % s.get("max_ms", 0), probe.failures[:3])
    tap.ok(result["max_open"] <= 90,
           "hostile sessions open at once: %d <= 90 (total-max-smtp-in less the feeders' tenth)"
           % result["max_open"])
    k = result["kinds"]
    refused = sum(n for kind in k.values() for g, n in kind["greetings"].items()
                  if g.startswith("421 4.7.0"))
    tap.ok(refused > 0 and sum(kind["greetings"].get("220", 0) for kind in k.values()) > 0,
           "some hostile connections were served, %d refused with 421 4.7.0" % refused,
           {kind: v["greetings"] for kind, v in k.items()})
    held = max(k["idle"]["held"] + k["drip"]["held"] or [0])
    stressed = "stress mode on" in p.log_since(mark)
    tap.ok(stressed and held < 22 and k["idle"]["endings"].get("421 4.4.2", 0) > 0,
           "under stress the timeouts fire: idle and drip sessions held at most %.1f s" % held,
           {kind: v["endings"] for kind, v in k.items()})
    tap.ok(k["flood"]["endings"].get("421 4.4.2", 0) + k["flood"]["endings"].get("500 5.5.2", 0)
           + k["flood"]["endings"].get("load over", 0) == k["flood"]["admitted"],
           "1 MB without a line end: 500 5.5.2, then the timeout", k["flood"]["endings"])
    smtpd = {name: v for name, v in peak.items() if name.startswith("smtpd")}
    tap.diag("peak per process: %s" % peak)
    tap.ok(smtpd and all(v["hwm_kb"] < 64 * 1024 for v in smtpd.values())
           and all(v["fds"] < 200 for v in smtpd.values()),
           "smtpd memory (peak RSS < 64 MB) and descriptors (< 200) stay bounded",
           smtpd)
    tap.ok(sorted(p.worker_pids()) == workers and "killed by signal" not in p.log(),
           "no worker died")

# --- ulimit -n 64 ---------------------------------------------------------------------------
with Pmta(name="test_limits_fds") as p:
    p.write_config(config(200), processes={"smtpd": 1, "smtp-out": 0})
    p.start(nofile=64)
    workers = sorted(p.worker_pids())
    socks, lines = [], []
    for _ in range(100):
        try:
            s, line = greet(p.port, "127.0.0.1", timeout=15)
            socks.append(s)
        except OSError as e:
            line = "connect: %s" % e
        lines.append(line)
    served, busy = count(lines, "220"), count(lines, "421 4.3.2")
    tap.ok(served > 0 and busy > 0 and served + busy == 100,
           "ulimit -n 64, 100 connections: %d served, %d get 421 4.3.2, none dropped silently"
           % (served, busy), [line for line in lines if not line.startswith(("220", "421 4.3.2"))][:5])
    tap.ok(p.wait_log(r"smtpd\[\d+\]: warning: .*out of descriptors \(Too many open files\): "
                      r"refused \d+ connection"), "running out of descriptors is logged")
    close_all(socks)
    tap.ok(admitted_again(p.port, "127.0.0.1"), "once they are gone, it serves again")
    tap.ok(sorted(p.worker_pids()) == workers and "killed by signal" not in p.log(),
           "no worker crashed or restarted")

sys.exit(tap.done())
