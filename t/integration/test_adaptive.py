#!/usr/bin/env python3
"""test_adaptive - adaptive concurrency and dead destinations, at the receiver.

ad.test has `adaptive-concurrency yes` and max-smtp-out 8; its receiver
(t/lib/testsmtpd.py on 127.0.0.2, 0.2 s on ".") refuses a connection above
3 open at once with "421 4.3.2 Too many connections" (the limit comes from a
file the test rewrites). 300 messages:
  - while the receiver takes 3: the receiver never serves more than 3 at
    once, the queue settles at a window of 3 (pmtactl show queues), it keeps
    probing rarely (a handful of refusals, not one per message), and nothing
    bounces or is deferred;
  - once the receiver takes 6: the window grows again and the receiver serves
    more than 3 at once;
  - every message arrives exactly once, and the queue never went into retry
    mode or backoff (a refusal while others are up is feedback, not a
    failure of the destination, and its 421 text is no reason for backoff).
dead.test (adaptive, connection-failures-before-delay 3) routes to a closed
port: after 3 failed connections in a row, and not before, the queue is in
retry mode (retry-after 10m) - a dead destination.
Prints TAP; needs root. Only 127.0.0.0/8 is used.
"""

import csv
import json
import os
import re
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))

from pmtatest import Pmta, Tap, free_port, require_root, send_each, wait_for  # noqa: E402
from testsmtpd import TestSmtpd  # noqa: E402

SENDER = "sender@sender.test"
FIRST, SECOND = 200, 150


def config(rx_port, dead_port, acct):
    return """
<source 127.0.0.1>
  always-allow-relaying yes
</source>
<acct-file %s>
  records d,b,t,tq
</acct-file>
<domain ad.test>
  smtp-hosts [127.0.0.2]:%d
  adaptive-concurrency yes
  max-smtp-out 8
  retry-after 10m
</domain>
<domain dead.test>
  smtp-hosts [127.0.0.2]:%d
  adaptive-concurrency yes
  connection-failures-before-delay 3
  retry-after 10m
</domain>
""" % (acct, rx_port, dead_port)


def window(p):
    rc, out = p.ctl("--json", "show", "queues", "ad.test")
    try:
        q = json.loads(out)["queues"][0]
        return q.get("concurrency_window"), q
    except (ValueError, KeyError, IndexError):
        return None, {}


def main():
    tap = Tap()
    require_root(tap)
    work = tempfile.mkdtemp(prefix="test_adaptive.")
    os.chmod(work, 0o755)
    rx_port = free_port("127.0.0.2")
    dead_port = free_port("127.0.0.2")
    limit_file = os.path.join(work, "limit")
    with open(limit_file, "w") as f:
        f.write("3\n")
    rx = TestSmtpd(["127.0.0.2:%d" % rx_port],
                   {"delay": {"dot": 0.2}, "max_concurrent_file": limit_file}, workdir=work)
    with rx, Pmta(name="adaptive") as p:
        acct = os.path.join(p.spool, "acct.csv")
        p.write_config(config(rx_port, dead_port, acct))
        p.start()
        first = ["a%d@ad.test" % i for i in range(FIRST)]
        send_each(p.port, first + ["x%d@dead.test" % i for i in range(2)])
        wait_for(lambda: len(rx.events("data")) >= FIRST * 0.75, timeout=60)
        w, q = window(p)
        t_switch = time.time()
        served = rx.open_at_most(until=t_switch, served=True)
        refused = len(rx.events("refused"))
        tap.ok(served == 3, "receiver limit 3: never more than 3 connections served at once "
               "(at most %d)" % served)
        tap.ok(w == 3, "the queue settled at a window of 3 (show queues: %s)" % w, q)
        tap.ok(1 <= refused <= 12, "it probed rarely: %d refused connection(s) for %d messages"
               % (refused, len(rx.events("data"))))

        with open(limit_file, "w") as f:
            f.write("6\n")
        second = ["b%d@ad.test" % i for i in range(SECOND)]
        send_each(p.port, second)
        done = wait_for(lambda: len(rx.events("data")) >= FIRST + SECOND, timeout=60)
        grown = rx.open_at_most(since=t_switch, served=True)
        w2, q = window(p)
        tap.ok(grown >= 5 and (w2 or 0) >= 5,
               "receiver limit 6: the queue grew again (served %d at once, window %s)"
               % (grown, w2), q)
        got = sorted(e["to"] for e in rx.events("rcpt") if e["reply"] == 250)
        tap.ok(done and got == sorted(first + second),
               "every message arrived exactly once (%d)" % len(got))
        rows = []
        try:
            with open(acct, newline="") as f:
                rows = list(csv.DictReader(f))
        except FileNotFoundError:
            pass
        ad = [r for r in rows if r.get("rcpt", "").endswith("@ad.test")]
        tap.ok(not [r for r in ad if r["type"] in ("b", "t")],
               "no bounce and no deferral for ad.test (refused connections only: %d tq records)"
               % len([r for r in rows if r["type"] == "tq" and "ad.test" in r.get("queue", "")]))
        log = p.log()
        tap.ok(not re.search(r"queue ad\.test/\S+ (in retry mode|mode normal -> backoff)", log),
               "ad.test never entered retry mode or backoff",
               [l for l in log.splitlines() if "ad.test" in l and "retry mode" in l][:3])

        # the dead destination: 3 failures in a row, then retry mode
        retry = wait_for(lambda: re.search(r"queue dead\.test/\{default\} in retry mode", p.log()),
                         timeout=20)
        time.sleep(1.0)
        log = p.log()
        attempts = len(re.findall(r"connection \d+ dead\.test/\{default\} down", log))
        tap.ok(retry and attempts == 3 and
               "3 connection failures in a row (connection-failures-before-delay)" in log,
               "dead.test: 3 failed connections in a row, then retry mode (saw %d attempts)"
               % attempts)
    return tap.done()


if __name__ == "__main__":
    sys.exit(main())
