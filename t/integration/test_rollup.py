#!/usr/bin/env python3
"""test_rollup - MX rollup and queue-to, measured at the receivers.

dnsmasq gives 20 domains (d01..d20.test) MX records on *.google.test hosts
(mx1.google.test at preference 10; half of them also mx2.google.test at 20),
all on the receiver A (127.0.0.2). The config rolls them up:

    <mx-rollup-list>
        mx *.google.test google.rollup
    </mx-rollup-list>
    <domain google.rollup>  max-smtp-out 4, an smtp-pattern-list that puts the
                            queue in backoff on "421 4.7.0 ... throttled",
                            backoff-max-smtp-out 1, backoff-max-msg-rate 2/s

and checks:
  - 20 domains x 10 messages with a receiver slow on "." (0.2 s): A never
    sees more than 4 concurrent connections across all 20 domains, and sees
    4 (the one budget binds);
  - `pmtactl show queues` lists google.rollup/{default} with all 20 domains,
    and no queue per domain;
  - own.test (MX mx3.google.test on receiver B, 127.0.0.3) with
    disable-mx-rollup yes keeps a queue of its own;
  - q1.test and q2.test with `queue-to merged.test` (smtp-hosts on receiver C,
    127.0.0.4, max-smtp-out 1) share one connection budget: C never sees 2
    connections, and both domains' mail arrives;
  - one 421 on d07.test puts the whole rollup queue in backoff: from 1 s
    after it, mail for every domain (not d07 alone) comes over at most one
    connection and at most 2 recipients in any 1 s window, and the mode
    event names the reply;
  - every message arrives exactly once;
  - a reload with disable-mx-rollup for d05.test: its new mail goes to a queue
    of its own, and the rollup lists 19 domains.
Prints TAP; needs root and dnsmasq. Only 127.0.0.0/8 is used.
"""

import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))

from dnsmasq import Dnsmasq, dnsmasq_path  # noqa: E402
from pmtatest import (Pmta, Tap, free_port, max_in_window, require_root, send_each,  # noqa: E402
                      wait_for)
from testsmtpd import TestSmtpd  # noqa: E402

DOMAINS = ["d%02d.test" % i for i in range(1, 21)]
PER_DOMAIN = 10
SENDER = "sender@sender.test"


def config(dns_port, port):
    return """
name-server 127.0.0.1:%d
<source 127.0.0.1>
  always-allow-relaying yes
</source>
<mx-rollup-list>
  mx *.google.test google.rollup
</mx-rollup-list>
<domain *>
  default-smtp-port %d
  retry-after 1s
  retry-recipients-after 1s
</domain>
<domain google.rollup>
  max-smtp-out 4
  smtp-pattern-list rollup-throttle
  backoff-max-smtp-out 1
  backoff-max-msg-rate 2/s
  backoff-retry-after 2s
</domain>
<domain own.test>
  disable-mx-rollup yes
</domain>
<domain q1.test>
  queue-to merged.test
</domain>
<domain q2.test>
  queue-to merged.test
</domain>
<domain merged.test>
  smtp-hosts [127.0.0.4]:%d
  max-smtp-out 1
</domain>
<smtp-pattern-list rollup-throttle>
  reply /^421 4\\.7\\.0 .*throttled/ mode=backoff
</smtp-pattern-list>
""" % (dns_port, port, port)


def free_port_on(hosts):
    """A TCP port free on every one of HOSTS."""
    for _ in range(50):
        port = free_port(hosts[0])
        if all(free_port(h) and _bindable(h, port) for h in hosts[1:]):
            return port
    raise RuntimeError("no common free port")


def _bindable(host, port):
    import socket
    with socket.socket() as s:
        try:
            s.bind((host, port))
            return True
        except OSError:
            return False


def show_queues(p):
    """The queues as the control socket reports them (pmtactl show queues --json)."""
    rc, out = p.ctl("--json", "show", "queues", "--maxitems=0")
    try:
        return json.loads(out)["queues"] if rc == 0 else []
    except ValueError:
        return []


def main():
    tap = Tap()
    require_root(tap)
    if not dnsmasq_path():
        return tap.skip_all("dnsmasq is not installed")
    work = tempfile.mkdtemp(prefix="test_rollup.")
    os.chmod(work, 0o755)
    port = free_port_on(["127.0.0.2", "127.0.0.3", "127.0.0.4"])
    mx = []
    for i, d in enumerate(DOMAINS):
        mx.append((d, "mx1.google.test", 10))
        if i % 2:
            mx.append((d, "mx2.google.test", 20))
    mx.append(("own.test", "mx3.google.test", 10))
    hosts = [("mx1.google.test", "127.0.0.2"), ("mx2.google.test", "127.0.0.2"),
             ("mx3.google.test", "127.0.0.3")]
    rx_a = TestSmtpd(["127.0.0.2:%d" % port],
                     {"delay": {"dot": 0.2},
                      "rcpt": [["throttle", "421 4.7.0 [TS] Try again later: throttled", 1]]},
                     workdir=work, name="google")
    rx_b = TestSmtpd(["127.0.0.3:%d" % port], {}, workdir=work, name="own")
    rx_c = TestSmtpd(["127.0.0.4:%d" % port], {"delay": {"dot": 0.1}}, workdir=work,
                     name="merged")
    with Dnsmasq(mx=mx, hosts=hosts, local=["test"]) as dns, rx_a, rx_b, rx_c, \
            Pmta(name="rollup") as p:
        p.write_config(config(dns.port, port))
        p.start()
        sent = ["u%d@%s" % (i, d) for i in range(PER_DOMAIN) for d in DOMAINS]
        others = ["o%d@own.test" % i for i in range(5)] + \
                 ["m%d@q%d.test" % (i, 1 + i % 2) for i in range(8)]
        send_each(p.port, sent + others)
        done = wait_for(lambda: len(rx_a.events("data")) >= len(sent) and
                        len(rx_b.events("data")) + len(rx_c.events("data")) >= len(others),
                        timeout=60)
        ca = rx_a.open_at_most()
        tap.ok(ca == 4, "20 domains rolled up share max-smtp-out 4: the receiver saw at most %d "
               "connections at once (and 4)" % ca)
        rcpt_domains = {e["to"].split("@")[1] for e in rx_a.events("rcpt")}
        tap.ok(done and rcpt_domains == set(DOMAINS),
               "all %d messages of the 20 domains arrived (%d)"
               % (len(sent), len(rx_a.events("data"))))
        queues = {q["name"]: q for q in show_queues(p)}
        roll = queues.get("google.rollup/{default}", {})
        tap.ok(roll.get("kind") == "rollup" and sorted(roll.get("domains", [])) == DOMAINS,
               "show queues: google.rollup/{default} holds the 20 domains",
               json.dumps(roll)[:600])
        tap.ok(not any(n.startswith("d0") or n.startswith("d1") or n.startswith("d2")
                       for n in queues), "no queue of its own per rolled-up domain",
               sorted(queues))
        rc, text = p.ctl("show", "queues")
        tap.ok(rc == 0 and "rollup of 20 domains: d01.test," in text,
               "pmtactl show queues prints the rollup's domains", text)
        own = queues.get("own.test/{default}", {})
        tap.ok(len(rx_b.events("data")) == 5 and "own.test/{default}" in queues and
               "domains" not in own,
               "disable-mx-rollup: own.test (MX mx3.google.test) keeps its own queue")
        merged = queues.get("merged.test/{default}", {})
        cc = rx_c.open_at_most()
        got = sorted(e["to"] for e in rx_c.events("rcpt"))
        tap.ok(merged.get("kind") == "queue-to" and sorted(merged.get("domains", [])) ==
               ["q1.test", "q2.test"] and cc == 1 and got == sorted(others[5:]),
               "queue-to merged.test: q1.test and q2.test share one queue and its one "
               "connection (at most %d at once; %d of 8 arrived)" % (cc, len(got)),
               json.dumps(merged)[:400])

        # one 421 on one domain: the whole rollup queue goes into backoff
        before = len(rx_a.events("data"))
        second = ["w%d@%s" % (i, d) for i in range(2) for d in DOMAINS]
        send_each(p.port, ["throttle@d07.test"] + second)
        entered = wait_for(lambda: any(e["reply"] == 421 for e in rx_a.events("rcpt")),
                           timeout=20)
        t421 = min(e["t"] for e in rx_a.events("rcpt") if e["reply"] == 421) if entered else 0
        backoff = wait_for(lambda: any(q["name"] == "google.rollup/{default}" and
                                       q["mode"] == "backoff" for q in show_queues(p)),
                           timeout=10)
        done = wait_for(lambda: len(rx_a.events("data")) >= before + len(second) + 1,
                        timeout=60)
        after = [e for e in rx_a.events("rcpt") if e["t"] >= t421 + 1.0]
        doms = {e["to"].split("@")[1] for e in after}
        busiest = max_in_window([e["t"] for e in after])
        conc = rx_a.open_at_most(t421 + 1.0)
        tap.ok(backoff and len(doms) >= 15 and busiest <= 2 and conc <= 1,
               "a 421 on d07.test put google.rollup in backoff: then %d domains' mail came over "
               "at most %d connection(s), at most %d recipients in any 1 s"
               % (len(doms), conc, busiest))
        events = (roll := {q["name"]: q for q in show_queues(p)}.get(
            "google.rollup/{default}", {})).get("mode_events", [])
        tap.ok(events and "throttled" in events[-1]["why"] and events[-1]["to"] == "backoff",
               "the mode event carries the 421 reply", events[-1:] if events else roll)
        arrived = sorted(e["to"] for e in rx_a.events("rcpt") if e["reply"] == 250)
        tap.ok(done and arrived == sorted(sent + second + ["throttle@d07.test"]),
               "every message arrived exactly once (%d)" % len(arrived))

        # a reload decides again: d05.test leaves the rollup
        mark = p.log_mark()
        p.write_config(config(dns.port, port) +
                       "<domain d05.test>\n  disable-mx-rollup yes\n</domain>\n")
        p.ctl("reload")
        published = p.wait_log(r"all \d+ workers use configuration generation 2", since=mark,
                               timeout=20)
        n_before = len(rx_a.events("data"))
        send_each(p.port, ["r%d@d05.test" % i for i in range(3)])
        wait_for(lambda: len(rx_a.events("data")) >= n_before + 3, timeout=30)
        own = {}

        def reloaded():
            nonlocal own, roll
            queues = {q["name"]: q for q in show_queues(p)}
            own = queues.get("d05.test/{default}", {})
            roll = queues.get("google.rollup/{default}", {})
            return own.get("delivered") == 3 and len(roll.get("domains", [])) == 19
        tap.ok(published and wait_for(reloaded, timeout=10) and "d05.test" not in
               roll.get("domains", []),
               "after a reload with disable-mx-rollup for d05.test its mail has a queue of its "
               "own (%s delivered) and the rollup holds %d domains"
               % (own.get("delivered"), len(roll.get("domains", []))), json.dumps(own)[:400])
    return tap.done()


if __name__ == "__main__":
    sys.exit(main())
