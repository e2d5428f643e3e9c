#!/usr/bin/env python3
"""test_why - "why is this queue slow right now": pmtactl and the monitor name the limit.

One pmtad, a slow receiver (t/lib/testsmtpd.py on 127.0.0.2, 2 s on "."),
and queues that each have mail waiting behind a different limit:
  rate.test   a 421 "... throttled" matched by its smtp-pattern-list puts it
              in backoff; backoff-max-msg-rate 1/m then holds it:
              "message rate limit reached (based on backoff-max-msg-rate 1/m)",
              and its mode event carries the 421 reply
  src.test    its virtual MTA's one address 127.0.0.21 has
              source-ip-max-smtp-out 2: "connection limit reached
              (source-ip-max-smtp-out 2 for 127.0.0.21)"
  cap.test    max-smtp-out 1: "connection limit reached (max-smtp-out 1)"
  dead.test   its route refuses connections: "retry mode: no new connection
              for N s (after 1 failed connection)"
  held.test   paused: "paused (pmtactl pause queue)"
Each is checked in `pmtactl show queues` (the "held back:" line), in
`pmtactl show settings` (its "now:" part, with the mode events) and in the
HTTP monitor's /queueDetail; and a queue with nothing left says nothing.
Prints TAP; needs root. Only 127.0.0.0/8 is used.
"""

import json
import os
import re
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))

from pmtatest import Pmta, Tap, free_port, require_root, send_each, wait_for  # noqa: E402
from testsmtpd import TestSmtpd  # noqa: E402

SENDER = "sender@sender.test"

EXPECT = {
    "rate.test/{default}": "message rate limit reached (based on backoff-max-msg-rate 1/m)",
    "src.test/v21": "connection limit reached (source-ip-max-smtp-out 2 for 127.0.0.21)",
    "cap.test/{default}": "connection limit reached (max-smtp-out 1)",
    "dead.test/{default}": r"retry mode: no new connection for \d+ s \(after 1 failed connection\)",
    "held.test/{default}": "paused (pmtactl pause queue)",
}


def config(rx_port, http_port, dead_port):
    return """
http-mgmt-port %d
http-access 127.0.0.1 monitor
<source 127.0.0.1>
  always-allow-relaying yes
  process-x-virtual-mta yes
</source>
<virtual-mta v21>
  smtp-source-host 127.0.0.21 s21.src.test
</virtual-mta>
<domain *>
  smtp-hosts [127.0.0.2]:%d
  retry-after 10m
</domain>
<domain rate.test>
  smtp-pattern-list throttle
  backoff-max-msg-rate 1/m
  backoff-retry-after 10m
</domain>
<domain src.test>
  source-ip-max-smtp-out 127.0.0.21 2
</domain>
<domain cap.test>
  max-smtp-out 1
</domain>
<domain dead.test>
  smtp-hosts [127.0.0.2]:%d
</domain>
<domain held.test>
  max-smtp-out 1
</domain>
<smtp-pattern-list throttle>
  reply /throttled/ mode=backoff
</smtp-pattern-list>
""" % (http_port, rx_port, dead_port)


def queues(p):
    rc, out = p.ctl("--json", "show", "queues", "--maxitems=0")
    try:
        return {q["name"]: q for q in json.loads(out)["queues"]} if rc == 0 else {}
    except ValueError:
        return {}


def matches(text, want):
    return bool(text) and (re.fullmatch(want, text) if "\\" in want else text == want)


def main():
    tap = Tap()
    require_root(tap)
    work = tempfile.mkdtemp(prefix="test_why.")
    os.chmod(work, 0o755)
    rx_port = free_port("127.0.0.2")
    dead_port = free_port("127.0.0.2")
    http_port = free_port("127.0.0.1")
    rx = TestSmtpd(["127.0.0.2:%d" % rx_port],
                   {"delay": {"dot": 2.0},
                    "rcpt": [["throttle", "421 4.7.0 Try again later: throttled"]]},
                   workdir=work)
    with rx, Pmta(name="why") as p:
        p.write_config(config(rx_port, http_port, dead_port))
        p.start()
        send_each(p.port, ["throttle@rate.test"])
        wait_for(lambda: any(e["reply"] == 421 for e in rx.events("rcpt")), timeout=10)
        # dead.test's second message must find the queue in retry mode (after the first
        # one's refused connection), not share a connection attempt with it
        send_each(p.port, ["d0@dead.test"])
        wait_for(lambda: "refused" in queues(p).get("dead.test/{default}", {})
                 .get("last_error", ""), timeout=15, interval=0.2)
        send_each(p.port, ["d1@dead.test"])
        send_each(p.port, ["r%d@rate.test" % i for i in range(5)])
        # enough behind the slow receiver (2 s a message) that the source and connection
        # limits still hold when the slowest of the others is reached, even under ASan
        send_each(p.port, ["s%d@src.test" % i for i in range(16)], SENDER, vmta="v21")
        send_each(p.port, ["c%d@cap.test" % i for i in range(14)] +
                  ["h%d@held.test" % i for i in range(10)])
        p.ctl("pause", "queue", "held.test")
        got = {}

        def all_held():
            got.clear()
            got.update(queues(p))
            return all(matches(got.get(name, {}).get("limit"), want)
                       for name, want in EXPECT.items())
        ok = wait_for(all_held, timeout=20, interval=0.3)
        for name, want in EXPECT.items():
            tap.ok(matches(got.get(name, {}).get("limit"), want),
                   "show queues: %s is held back by %s" % (name, want.replace("\\", "")),
                   json.dumps(got.get(name, {}))[:500])
        rc, text = p.ctl("show", "queues")
        tap.ok(rc == 0 and "  held back: message rate limit reached (based on "
               "backoff-max-msg-rate 1/m)" in text and
               "  held back: connection limit reached (source-ip-max-smtp-out 2 for 127.0.0.21)"
               in text, "pmtactl show queues prints a 'held back:' line under each", text)
        events = got.get("rate.test/{default}", {}).get("mode_events", [])
        tap.ok(events and events[-1]["to"] == "backoff" and
               "421 4.7.0 Try again later: throttled" in events[-1]["why"],
               "the mode event names the reply that caused it", events)

        rc, text = p.ctl("show", "settings", "rate.test")
        tap.ok(rc == 0 and re.search(r"^backoff-max-msg-rate\s+1/m", text, re.M) and
               "now:" in text and "queue rate.test/{default}: mode backoff" in text and
               "held back: message rate limit reached (based on backoff-max-msg-rate 1/m)"
               in text and re.search(r"normal -> backoff  reply matched /throttled/ \(421 4\.7\.0",
                                     text),
               "pmtactl show settings: the settings, then what holds the queue back now and its "
               "mode events", text)
        rc, text = p.ctl("show", "settings", "src.test/v21")
        tap.ok(rc == 0 and "held back: connection limit reached (source-ip-max-smtp-out 2 for "
               "127.0.0.21)" in text, "show settings src.test/v21 names the source limit", text)

        detail = {}

        def fetch_detail():
            url = "http://127.0.0.1:%d/queueDetail?queue=cap.test/%%7Bdefault%%7D" % http_port
            try:
                with urllib.request.urlopen(url, timeout=10) as r:
                    detail.update(json.load(r)["data"]["queue"])
                return True
            except (OSError, ValueError, KeyError) as e:
                detail["error"] = repr(e)
                return False
        wait_for(fetch_detail, timeout=10, interval=0.5)
        tap.ok(detail.get("limit") == EXPECT["cap.test/{default}"],
               "the monitor's queue detail says the same", detail)

        # a queue whose mail is all gone is held back by nothing
        wait_for(lambda: queues(p).get("cap.test/{default}", {}).get("recipients") == 0,
                 timeout=60)
        q = queues(p).get("cap.test/{default}", {})
        tap.ok(q.get("recipients") == 0 and q.get("limit") == "",
               "a queue with nothing left to send: no limit named", q)
        tap.ok(ok, "all five limits were named at the same moment")
    return tap.done()


if __name__ == "__main__":
    sys.exit(main())
