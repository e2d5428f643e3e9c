#!/usr/bin/env python3
"""test_warmup - IP warm-up plans, their overflow, and cold virtual MTAs, at the receiver.

One receiver (t/lib/testsmtpd.py on 127.0.0.2) logs the source address of
every recipient; local parts starting "tmp" get 450 (a deferral). The
virtual MTA `fresh` (127.0.0.21) follows

    <warmup-plan ramp>
        day 1 10 / day 2 20 / day 3 40
        destination big.test / destination *
        max-deferral-rate 10% / step-back-deferral-rate 30%
    </warmup-plan>

and the test moves the warm-up clock with `pmtactl set warmup-clock 1d`:
  day 1  big.test gets exactly 10 from .21, a.test (under *) exactly 10; 5
         more for big.test wait ("warm-up cap reached: 10 of 10 today" in show
         queues; show vmtas: day 1, step 1, cap 10, 10 sent); no bounce
  restart of pmtad: the step and today's count survive (the 5 still wait)
  day 2  both promoted to step 2 (cap 20): the 5 left of each go; then
         big.test 10 "tmp" (10 of 15 deferred: 67 %) and a.test 2 "tmp" + 4
         (2 of 11: 18 %)
  day 3  big.test stepped back to step 1 (cap 10); * held at step 2 (cap 20)
Also: plan `tiny` (day 1 3, overflow-virtual-mta spare) on 127.0.0.22: of 8
messages 3 leave from .22 and 5 overflow to spare (127.0.0.23); and
`cold-virtual-mta cold` with max-cold-virtual-mta-msg 4/d: of 10 messages on
hot (127.0.0.24), 4 leave from cold (127.0.0.25).
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


def config(rx_port, acct):
    return """
<source 127.0.0.1>
  always-allow-relaying yes
  process-x-virtual-mta yes
</source>
<acct-file %s>
  records d,b,t
</acct-file>
<warmup-plan ramp>
  day 1 10
  day 2 20
  day 3 40
  destination big.test
  destination *
  max-deferral-rate 10%%
  step-back-deferral-rate 30%%
</warmup-plan>
<warmup-plan tiny>
  day 1 3
  overflow-virtual-mta spare
</warmup-plan>
<virtual-mta fresh>
  smtp-source-host 127.0.0.21 fresh.src.test
  warmup-plan ramp
</virtual-mta>
<virtual-mta small>
  smtp-source-host 127.0.0.22 small.src.test
  warmup-plan tiny
</virtual-mta>
<virtual-mta spare>
  smtp-source-host 127.0.0.23 spare.src.test
</virtual-mta>
<virtual-mta hot>
  smtp-source-host 127.0.0.24 hot.src.test
  cold-virtual-mta cold
</virtual-mta>
<virtual-mta cold>
  smtp-source-host 127.0.0.25 cold.src.test
</virtual-mta>
<domain *>
  smtp-hosts [127.0.0.2]:%d
  retry-after 10m
  retry-recipients-after 10m
</domain>
<domain c.test>
  max-cold-virtual-mta-msg 4/d
</domain>
""" % (acct, rx_port)


def accepted(rx):
    """(source address, domain) of every accepted recipient, in order."""
    peer = {e["conn"]: e["peer"] for e in rx.events("connect")}
    return [(peer.get(e["conn"]), e["to"].split("@")[1]) for e in rx.events("rcpt")
            if e["reply"] == 250]


def count(rx, ip, domains):
    return sum(1 for src, d in accepted(rx) if src == ip and d in domains)


def warm_states(p):
    rc, out = p.ctl("--json", "show", "vmtas", "--maxitems=0")
    states = {}
    try:
        for v in json.loads(out)["vmtas"]:
            for w in v.get("warmup", []):
                states[(w["source"], w["destination"])] = w
    except (ValueError, KeyError):
        pass
    return states


def queue(p, name):
    rc, out = p.ctl("--json", "show", "queues", "--maxitems=0", name)
    try:
        return json.loads(out)["queues"][0]
    except (ValueError, KeyError, IndexError):
        return {}


def settle(rx, seconds=1.5):
    """Wait until the receiver has been quiet for SECONDS."""
    last = -1
    deadline = time.time() + 30
    while time.time() < deadline:
        n = len(rx.events())
        if n == last:
            return
        last = n
        time.sleep(seconds)


def main():
    tap = Tap()
    require_root(tap)
    work = tempfile.mkdtemp(prefix="test_warmup.")
    os.chmod(work, 0o755)
    rx_port = free_port("127.0.0.2")
    rx = TestSmtpd(["127.0.0.2:%d" % rx_port], {}, workdir=work)
    with rx, Pmta(name="warmup") as p:
        acct = os.path.join(p.spool, "acct.csv")
        p.write_config(config(rx_port, acct))
        p.start()

        # day 1: the caps hold, per destination
        send_each(p.port, ["u%d@big.test" % i for i in range(15)] +
                  ["v%d@a.test" % i for i in range(15)], SENDER, vmta="fresh")
        wait_for(lambda: count(rx, "127.0.0.21", {"big.test"}) >= 10 and
                 count(rx, "127.0.0.21", {"a.test"}) >= 10, timeout=20)
        settle(rx)
        big, star = count(rx, "127.0.0.21", {"big.test"}), count(rx, "127.0.0.21", {"a.test"})
        tap.ok(big == 10 and star == 10, "day 1: cap 10 per destination - big.test got %d, "
               "a.test (under *) %d" % (big, star))
        q = queue(p, "big.test/fresh")
        tap.ok(q.get("limit") == "warm-up cap reached: 10 of 10 today" and q.get("ready") == 5,
               "show queues: the 5 left wait, 'warm-up cap reached: 10 of 10 today'", q)
        st = warm_states(p).get(("127.0.0.21", "big.test"), {})
        tap.ok(st.get("day") == 1 and st.get("step") == 1 and st.get("cap") == 10 and
               st.get("sent") == 10, "show vmtas: day 1, step 1, cap 10, 10 sent today", st)
        rc, text = p.ctl("show", "vmtas")
        tap.ok("warm-up ramp 127.0.0.21 -> big.test: day 1, step 1, cap 10, 10 sent today" in text,
               "pmtactl show vmtas prints each address's warm-up line", text)

        # a restart keeps the step and today's count
        p.stop()
        p.start()
        time.sleep(2.0)
        st = warm_states(p).get(("127.0.0.21", "big.test"), {})
        tap.ok(count(rx, "127.0.0.21", {"big.test"}) == 10 and st.get("sent") == 10 and
               st.get("step") == 1 and queue(p, "big.test/fresh").get("ready") == 5,
               "after a restart: still 10 of 10 sent today, step 1, the 5 still wait", st)

        # day 2: promoted to 20
        rc, out = p.ctl("set", "warmup-clock", "1d")
        wait_for(lambda: count(rx, "127.0.0.21", {"big.test"}) >= 15, timeout=20)
        states = warm_states(p)
        st, sst = states.get(("127.0.0.21", "big.test"), {}), states.get(("127.0.0.21", "*"), {})
        tap.ok(rc == 0 and count(rx, "127.0.0.21", {"big.test"}) == 15 and
               st.get("step") == 2 and st.get("cap") == 20 and sst.get("step") == 2 and
               st.get("day") == 2,
               "day 2: no deferrals on day 1 - promoted to step 2 (cap 20); the 5 went",
               (out, st, sst))
        send_each(p.port, ["tmp%d@big.test" % i for i in range(10)] +
                  ["tmp%d@a.test" % i for i in range(2)] + ["w%d@a.test" % i for i in range(4)],
                  SENDER, vmta="fresh")
        wait_for(lambda: warm_states(p).get(("127.0.0.21", "big.test"), {}).get("deferrals", 0)
                 >= 10 and warm_states(p).get(("127.0.0.21", "*"), {}).get("deferrals", 0) >= 2,
                 timeout=20)
        settle(rx)

        # day 3: 67 % deferred steps back, 20 % holds
        p.ctl("set", "warmup-clock", "1d")
        time.sleep(1.5)
        states = warm_states(p)
        st, sst = states.get(("127.0.0.21", "big.test"), {}), states.get(("127.0.0.21", "*"), {})
        log = p.log()
        tap.ok(st.get("step") == 1 and st.get("cap") == 10 and
               re.search(r"warm-up plan ramp 127\.0\.0\.21 big\.test: day \d+ ended with 15 sent, "
                         r"deferrals 66\.67%, complaints 0\.00%: steps back, step 2 -> 1", log),
               "day 3: big.test deferred 10 of 15 (> 30 %) - one step back (cap 10)", st)
        tap.ok(sst.get("step") == 2 and sst.get("cap") == 20 and
               re.search(r"127\.0\.0\.21 \*: day \d+ ended with 11 sent, deferrals 18\.18%.*"
                         r"holds, step 2 -> 2", log),
               "day 3: * deferred 2 of 11 (18 %, between 10 % and 30 %) - holds at step 2", sst)

        # overflow to another virtual MTA, and a cold virtual MTA
        send_each(p.port, ["o%d@o.test" % i for i in range(8)], SENDER, vmta="small")
        send_each(p.port, ["c%d@c.test" % i for i in range(10)], SENDER, vmta="hot")
        wait_for(lambda: count(rx, "127.0.0.22", {"o.test"}) + count(rx, "127.0.0.23", {"o.test"})
                 >= 8 and count(rx, "127.0.0.24", {"c.test"}) +
                 count(rx, "127.0.0.25", {"c.test"}) >= 10, timeout=30)
        settle(rx)
        small, spare = count(rx, "127.0.0.22", {"o.test"}), count(rx, "127.0.0.23", {"o.test"})
        tap.ok(small == 3 and spare == 5,
               "overflow-virtual-mta: 3 from the warming address, 5 from spare (%d, %d)"
               % (small, spare))
        hot, cold = count(rx, "127.0.0.24", {"c.test"}), count(rx, "127.0.0.25", {"c.test"})
        tap.ok(hot == 6 and cold == 4, "max-cold-virtual-mta-msg 4/d: 4 of 10 through the cold "
               "virtual MTA (hot %d, cold %d)" % (hot, cold))
        rows = []
        try:
            with open(acct, newline="") as f:
                rows = list(csv.DictReader(f))
        except FileNotFoundError:
            pass
        tap.ok(rows and not [r for r in rows if r["type"] == "b"],
               "nothing bounced for a cap (%d accounting records)" % len(rows))
    return tap.done()


if __name__ == "__main__":
    sys.exit(main())
