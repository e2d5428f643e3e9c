#!/usr/bin/env python3
"""test_source_limits - per-source-IP and data volume limits, measured at the receiver.

One pmtad delivers through smtp-out to one receiver (t/lib/testsmtpd.py on
127.0.0.2), which logs the source address of every connection. Every domain
routes there (`<domain *> smtp-hosts`), and the limits sit in that one
`<domain *>` block, so each applies per source IP across every domain that
IP sends to:

  v1 (127.0.0.21, 127.0.0.22), mail for a1..a4.test (5 messages per
     connection), the receiver slow on "." (0.3 s) so that connections pile up:
       source-ip-max-smtp-out 127.0.0.21 2   -> never 3 connections from .21
                                                 (and 2 at some point)
       source-ip-max-msg-rate 127.0.0.22 8/s -> never 9 recipients from .22
                                                 in any 1 s window, though the
                                                 queues allow 10 connections
  v3 (127.0.0.24), b1..b2.test, one message per connection:
       source-ip-max-connect-rate 127.0.0.24 2/s -> never 3 new connections
                                                 from .24 in any 1 s window
  v4 (127.0.0.25), c1..c2.test, 20 KB messages:
       source-ip-max-data-volume-rate 127.0.0.25 60k/s -> no 1 s window
                                                 above 60 KB plus one message;
                                                 60 KB/s on average at most
  v5 (127.0.0.26), vol.test alone, 20 KB messages:
       max-data-volume-rate 40k/s (the queue's own) -> likewise at 40 KB/s;
       then `pmtactl set queue --mode=backoff` switches it to
       backoff-max-data-volume-rate 10k/s, and the rate falls to that.
Each source address carries mail for several domains, and everything
arrives exactly once. Prints TAP; needs root. Only 127.0.0.0/8 is used.
"""

import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))

from pmtatest import Pmta, Tap, free_port, max_in_window, require_root, send_each, wait_for  # noqa: E402
from testsmtpd import TestSmtpd  # noqa: E402

SENDER = "sender@sender.test"
PER_DOMAIN_A = 30
PER_DOMAIN_B = 10
PER_DOMAIN_C = 15
VOL_MESSAGES = 24
BIG = 20 * 1024


def config(rx_port):
    return """
<source 127.0.0.1>
  always-allow-relaying yes
  process-x-virtual-mta yes
</source>
<virtual-mta v1>
  smtp-source-host 127.0.0.21 s21.src.test
  smtp-source-host 127.0.0.22 s22.src.test
</virtual-mta>
<virtual-mta v3>
  smtp-source-host 127.0.0.24 s24.src.test
  <domain *>
    max-msg-per-connection 1
  </domain>
</virtual-mta>
<virtual-mta v4>
  smtp-source-host 127.0.0.25 s25.src.test
</virtual-mta>
<virtual-mta v5>
  smtp-source-host 127.0.0.26 s26.src.test
</virtual-mta>
<domain *>
  smtp-hosts [127.0.0.2]:%d
  max-smtp-out 10
  max-msg-per-connection 5
  retry-after 1s
  source-ip-max-smtp-out 127.0.0.21 2
  source-ip-max-msg-rate 127.0.0.22/32 8/s
  source-ip-max-connect-rate 127.0.0.24 2/s
  source-ip-max-data-volume-rate 127.0.0.16/28 60k/s
  source-ip-max-data-volume-rate 127.0.0.26 0
</domain>
<domain vol.test>
  max-data-volume-rate 40k/s
  backoff-max-data-volume-rate 10k/s
</domain>
""" % rx_port


def inject(port, plan):
    """PLAN: [(vmta, domains, per_domain, size)] -> every recipient address sent."""
    sent = []
    for vmta, domains, n, size in plan:
        addresses = ["u%d@%s" % (i, d) for i in range(n) for d in domains]
        send_each(port, addresses, SENDER, vmta=vmta, size=size)
        sent += addresses
    return sent


class Receiver:
    """The receiver's log, by source address."""

    def __init__(self, rx, since=0.0):
        self.peer = {}
        self.opens = {}        # ip -> [(t, +1|-1)]
        self.conn_times = {}   # ip -> [connect times]
        self.rcpts = {}        # ip -> [(t, domain)]
        self.data = {}         # ip -> [(t, size)]
        for e in rx.events():
            kind = e["event"]
            if kind != "connect" and (e["t"] < since or e.get("conn") not in self.peer):
                continue
            if kind == "connect":
                self.peer[e["conn"]] = e["peer"]
                self.opens.setdefault(e["peer"], []).append((e["t"], 1))
                self.conn_times.setdefault(e["peer"], []).append(e["t"])
            elif kind == "disconnect":
                self.opens[self.peer[e["conn"]]].append((e["t"], -1))
            elif kind == "rcpt" and e["reply"] == 250:
                self.rcpts.setdefault(self.peer[e["conn"]], []).append(
                    (e["t"], e["to"].split("@")[1]))
            elif kind == "data":
                self.data.setdefault(self.peer[e["conn"]], []).append((e["t"], e["size"]))

    def max_concurrent(self, ip):
        n = best = 0
        for _, d in sorted(self.opens.get(ip, []), key=lambda x: (x[0], x[1])):
            n += d
            best = max(best, n)
        return best

    def domains(self, ip):
        return sorted({d for _, d in self.rcpts.get(ip, [])})


def main():
    tap = Tap()
    require_root(tap)
    work = tempfile.mkdtemp(prefix="test_source_limits.")
    os.chmod(work, 0o755)
    rx_port = free_port("127.0.0.2")
    rx = TestSmtpd(["127.0.0.2:%d" % rx_port], {"delay": {"dot": 0.3}}, workdir=work)
    with Pmta(name="source-limits") as p, rx:
        p.write_config(config(rx_port))
        p.start()
        t0 = time.time()
        sent = inject(p.port, [
            ("v1", ["a%d.test" % i for i in range(1, 5)], PER_DOMAIN_A, 0),
            ("v3", ["b1.test", "b2.test"], PER_DOMAIN_B, 0),
            ("v4", ["c1.test", "c2.test"], PER_DOMAIN_C, BIG),
        ])
        total = len(sent)
        done = wait_for(lambda: len(rx.events("data")) >= total, timeout=60)
        tap.diag("%d messages delivered in %.1f s" % (len(rx.events("data")), time.time() - t0))
        r = Receiver(rx)

        c21 = r.max_concurrent("127.0.0.21")
        tap.ok(c21 == 2, "source-ip-max-smtp-out 2: 127.0.0.21 never held 3 connections "
               "(at most %d, over %d domains)" % (c21, len(r.domains("127.0.0.21"))))
        tap.ok(r.max_concurrent("127.0.0.22") > 2,
               "127.0.0.22, not under that line, held more (%d)" % r.max_concurrent("127.0.0.22"))
        t22 = [t for t, _ in r.rcpts.get("127.0.0.22", [])]
        w22 = max_in_window(t22)
        span = (max(t22) - min(t22)) if len(t22) > 1 else 0
        tap.ok(t22 and w22 <= 8 and len(t22) / max(span, 0.1) >= 5,
               "source-ip-max-msg-rate 8/s: 127.0.0.22 never sent 9 recipients in 1 s "
               "(worst %d, %.1f/s over %.1f s)" % (w22, len(t22) / max(span, 0.1), span))
        tap.ok(len(r.domains("127.0.0.21")) >= 2 and len(r.domains("127.0.0.22")) >= 2,
               "both addresses carried mail for several domains (%s / %s)"
               % (r.domains("127.0.0.21"), r.domains("127.0.0.22")))

        c24 = r.conn_times.get("127.0.0.24", [])
        w24 = max_in_window(c24)
        tap.ok(len(c24) >= 2 * PER_DOMAIN_B and w24 <= 2,
               "source-ip-max-connect-rate 2/s: 127.0.0.24 opened %d connections for %d "
               "domains, never 3 in 1 s (worst %d)" % (len(c24), len(r.domains("127.0.0.24")),
                                                      w24))

        d25 = r.data.get("127.0.0.25", [])
        bytes25 = max_in_window([t for t, _ in d25], weights=[s for _, s in d25])
        span = d25[-1][0] - d25[0][0] if len(d25) > 1 else 0
        # the first message goes at once; every later one waits for the bytes before it
        avg = sum(s for _, s in d25[:-1]) / span if span else 0
        tap.ok(len(d25) == 2 * PER_DOMAIN_C and bytes25 <= 60 * 1024 + BIG and
               avg <= 60 * 1024 * 1.02,
               "source-ip-max-data-volume-rate 60k/s: no 1 s window above 60 KB plus one "
               "message (worst %d bytes), %.1f KB/s on average, %d domains"
               % (bytes25, avg / 1024, len(r.domains("127.0.0.25"))))
        tap.ok(done and sorted(e["to"] for e in rx.events("rcpt") if e["reply"] == 250)
               == sorted(sent), "every message arrived exactly once (%d)" % total)

        # the queue's own data volume rate, and its backoff twin
        since, before = time.time(), len(rx.events("data"))
        vol = inject(p.port, [("v5", ["vol.test"], VOL_MESSAGES // 2, BIG)])
        wait_for(lambda: len(rx.events("data")) >= before + len(vol), timeout=30)
        r = Receiver(rx, since)
        d26 = r.data.get("127.0.0.26", [])
        span = d26[-1][0] - d26[0][0] if len(d26) > 1 else 0
        avg = sum(s for _, s in d26[:-1]) / span if span else 0
        tap.ok(len(d26) == len(vol) and 30 * 1024 <= avg <= 40 * 1024 * 1.02,
               "max-data-volume-rate 40k/s: %.1f KB/s on average (the source's line 0 "
               "lifts its own limit)" % (avg / 1024))
        rc, out = p.ctl("set", "queue", "--mode=backoff", "vol.test")
        since, before = time.time(), len(rx.events("data"))
        vol = inject(p.port, [("v5", ["vol.test"], 6, BIG)])
        wait_for(lambda: len(rx.events("data")) >= before + len(vol), timeout=30)
        d26 = Receiver(rx, since).data.get("127.0.0.26", [])
        span = d26[-1][0] - d26[0][0] if len(d26) > 1 else 0
        avg = sum(s for _, s in d26[:-1]) / span if span else 0
        tap.ok(rc == 0 and len(d26) == len(vol) and 7 * 1024 <= avg <= 10 * 1024 * 1.02,
               "in backoff, backoff-max-data-volume-rate 10k/s: %.1f KB/s" % (avg / 1024), out)
    return tap.done()


if __name__ == "__main__":
    sys.exit(main())
