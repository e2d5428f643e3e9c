#!/usr/bin/env python3
"""test_cluster - three pmtad nodes share their limits and modes through one Redis.

Real parts only: redis-server started here (127.0.0.1, a private port and
directory, t/lib/redis.py), dnsmasq answering the MX records, our receiver
(t/lib/testsmtpd.py) on 127.0.0.2 and 127.0.0.3, and three pmtad nodes on
this machine, each with its own spool, run directory, listener and source
address (127.0.0.31-33), all in one <cluster> (lease-time 3s). Everything
is asserted at the receiver or in the nodes' own logs:

  1. rates and connections: gmail.test has max-msg-rate 30/s and
     max-smtp-out 4; 3 x 60 messages injected into the three nodes: no 1 s
     window at the receiver holds more than 30 deliveries, no moment more
     than 4 connections from the cluster (exact, as a single host), every
     node delivers some, and the rate is used (not starved).
  2. backoff: "421 4.7.28 ... rate limit exceeded" answered to node 1 only
     (its recipient) puts bo.test into backoff on nodes 2 and 3 within 1 s
     (the log line names node 1 and the reply); backoff-to-normal-after
     returns the three to normal together; `pmtactl set queue
     --mode=backoff` on node 2 applies on 1 and 3, and --mode=normal on
     node 3 on all; `pmtactl show cluster` lists the three nodes and the
     queue's shared mode and limits.
  3. leases: node 2 holds both connections of ls.test (max-smtp-out 2, a
     receiver that never finishes DATA); node 1's mail for it waits; SIGKILL
     of node 2 lets node 1 connect within the lease time.
  4. Redis down: Redis is killed while the nodes deliver gmail.test; each
     node keeps delivering under its share (no 1 s window above the limit
     plus one node's burst: 30 + 10), logs one warning, and shares again
     once Redis is back (a line on each node).
  5. every message arrives exactly once.
Beside them, `max-msg-rate local:5/s` stays one limit per node; and a fourth
node, given a password-protected replica first and its primary second,
passes over the replica (not a master) and shares in the primary, while a
wrong redis-password is refused with a warning.
Prints TAP; needs root. Only 127.0.0.0/8 is used.
"""

import os
import re
import signal
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))

from dnsmasq import Dnsmasq, dnsmasq_path  # noqa: E402
from pmtatest import Pmta, Tap, free_port, max_in_window, require_root, send_each, wait_for  # noqa: E402
from redis import Redis, redis_server_path  # noqa: E402
from testsmtpd import TestSmtpd  # noqa: E402

SENDER = "sender@sender.test"
LEASE_S = 3
RATE = 30
LOCAL_RATE = 5
CONNS = 4
NODES = 3

tap = Tap()
require_root(tap)
if not redis_server_path() or not dnsmasq_path():
    tap.skip_all("redis-server or dnsmasq is not installed")


def node_config(k, redis, dns, rx_port):
    return """
<cluster>
  redis-server %s
  node-name node%d
  key-prefix test:
  lease-time %ds
</cluster>
name-server %s
smtp-source-host 127.0.0.3%d n%d.src.test
<source 127.0.0.1>
  always-allow-relaying yes
</source>
<domain *>
  default-smtp-port %d
  retry-after 1s
  connection-idle-timeout 1s
</domain>
<domain gmail.test>
  max-msg-rate %d/s
  max-smtp-out %d
</domain>
<domain bo.test>
  max-smtp-out 2
  backoff-max-msg-rate 2/s
  backoff-to-normal-after 4s
</domain>
<domain cmd.test>
  retry-after 1h
</domain>
<domain ls.test>
  max-smtp-out 2
  max-msg-per-connection 1
</domain>
<domain loc.test>
  max-msg-rate local:%d/s
</domain>
""" % (redis.server, k, LEASE_S, dns.server, k, k, rx_port, RATE, CONNS, LOCAL_RATE)


def log_time(p, pattern, since):
    """When (monotonic, as the test saw it) P's log first matched PATTERN after offset SINCE."""
    return wait_for(lambda: time.monotonic() if re.search(pattern, p.log_since(since)) else None,
                    timeout=15, interval=0.02)


class Deliveries:
    """What the receiver saw: the accepted recipients, by source address and time."""

    def __init__(self, rx, since=0.0, domain=None):
        peer, self.rcpts, self.opens = {}, [], []
        for e in rx.events():
            if e["event"] == "connect":
                peer[e["conn"]] = e["peer"]
                if e["t"] >= since:
                    self.opens.append((e["t"], 1, e["peer"]))
            elif e["event"] == "disconnect" and e["conn"] in peer and e["t"] >= since:
                self.opens.append((e["t"], -1, peer[e["conn"]]))
            elif (e["event"] == "rcpt" and e["reply"] == 250 and e["t"] >= since
                  and (domain is None or e["to"].lower().endswith("@" + domain))):
                self.rcpts.append((e["t"], e["to"].lower(), peer.get(e["conn"])))

    def times(self):
        return [t for t, _, _ in self.rcpts]

    def by_source(self):
        out = {}
        for _, to, src in self.rcpts:
            out[src] = out.get(src, 0) + 1
        return out

    def most_open(self, sources):
        n = best = 0
        for _, d, src in sorted(self.opens):
            if src in sources:
                n += d
                best = max(best, n)
        return best


def inject(nodes, domain, per_node, tag):
    sent = []
    for k, p in enumerate(nodes, 1):
        addrs = ["%s%d-%d@%s" % (tag, k, i, domain) for i in range(per_node)]
        send_each(p.port, addrs, SENDER)
        sent += addrs
    return sent


def delivered_all(rx, addrs, timeout):
    want = set(addrs)
    return wait_for(lambda: want <= {to for _, to, _ in Deliveries(rx).rcpts}, timeout, 0.2)


SOURCES = {"127.0.0.3%d" % k for k in range(1, NODES + 1)}
rx_port = free_port("127.0.0.2")
ls_port = free_port("127.0.0.3")
rx_script = {"rcpt": [["throttle", "421 4.7.28 Our system has detected an unusual rate of mail: "
                                   "rate limit exceeded", 1],
                      ["tmp", "450 4.2.0 Mailbox temporarily unavailable"]],
             "delay": {"dot": 0.03}}
mx = [(d, "mx.%s" % d, 10) for d in ("gmail.test", "bo.test", "cmd.test", "loc.test")] + \
    [("ls.test", "mx.ls.test", 10)]
hosts = [("mx.%s" % d, "127.0.0.2") for d in ("gmail.test", "bo.test", "cmd.test", "loc.test")] + \
    [("mx.ls.test", "127.0.0.3")]
all_sent = []

with Redis() as redis, Dnsmasq(mx=mx, hosts=hosts, local=["test"]) as dns, \
        TestSmtpd("127.0.0.2:%d" % rx_port, rx_script) as rx, \
        TestSmtpd("127.0.0.3:%d" % rx_port, {"delay": {"dot": 120}}, name="ls") as rx_ls, \
        Pmta(name="test_cluster1") as n1, Pmta(name="test_cluster2") as n2, \
        Pmta(name="test_cluster3") as n3:
    nodes = [n1, n2, n3]
    for k, p in enumerate(nodes, 1):
        p.write_config(node_config(k, redis, dns, rx_port))
        p.start()
    ok = all(p.wait_log(r"cluster: node node%d shares its limits in Redis" % k)
             for k, p in enumerate(nodes, 1))
    tap.ok(ok, "the three nodes reach Redis and say so", [p.log()[-2000:] for p in nodes])

    # --- 1. one rate and one connection budget for the cluster -----------------------------
    t0 = time.time()
    sent = inject(nodes, "gmail.test", 60, "r")
    all_sent += sent
    done = delivered_all(rx, sent, 60)
    d = Deliveries(rx, t0, "gmail.test")
    tap.ok(done, "all %d messages for gmail.test arrive" % len(sent), len(d.rcpts))
    worst = max_in_window(d.times(), 1.0)
    tap.ok(worst <= RATE, "no 1 s window at the receiver holds more than %d deliveries "
           "(max-msg-rate %d/s, 3 nodes)" % (RATE, RATE), worst)
    tap.ok(worst >= RATE * 2 // 3, "the shared rate is used, not starved (%d in the busiest "
           "second)" % worst, worst)
    most = d.most_open(SOURCES)
    tap.ok(most <= CONNS, "no moment sees more than %d connections from the cluster "
           "(max-smtp-out %d)" % (CONNS, CONNS), most)
    by = d.by_source()
    tap.ok(all(by.get(s, 0) > 0 for s in SOURCES), "every node delivered some of them", by)
    rc, out = n1.ctl("show", "cluster", "gmail.test")
    tap.ok(rc == 0 and all("node%d" % k in out for k in range(1, 4)) and "max-msg-rate 30/s" in out
           and "cluster" in out, "pmtactl show cluster lists the three nodes and the queue's "
           "shared limits", out)

    # local: keeps one limit per node
    t0 = time.time()
    sent = inject(nodes, "loc.test", 12, "l")
    all_sent += sent
    delivered_all(rx, sent, 30)
    d = Deliveries(rx, t0, "loc.test")
    per_node = {s: max_in_window([t for t, _, src in d.rcpts if src == s], 1.0) for s in SOURCES}
    tap.ok(all(0 < n <= LOCAL_RATE for n in per_node.values())
           and max_in_window(d.times(), 1.0) > LOCAL_RATE,
           "max-msg-rate local:%d/s holds on each node alone, not for the cluster" % LOCAL_RATE,
           (per_node, max_in_window(d.times(), 1.0)))

    # --- 2. backoff on one node is backoff on all ---------------------------------------------
    # every node has a bo.test queue (mail it delivers), then node 1 alone meets the 421
    marks = [p.log_mark() for p in nodes]
    warm = inject(nodes, "bo.test", 2, "w")
    all_sent += warm
    delivered_all(rx, warm, 20)
    marks = [p.log_mark() for p in nodes]
    send_each(n1.port, ["throttle1@bo.test"], SENDER)
    all_sent.append("throttle1@bo.test")
    pat = r"queue bo\.test/\{default\} mode normal -> backoff"
    t1 = log_time(n1, pat, marks[0])
    t2, t3 = log_time(n2, pat, marks[1]), log_time(n3, pat, marks[2])
    tap.ok(t1 is not None, "node 1 enters backoff on the 421", n1.log_since(marks[0])[-1500:])
    tap.ok(t1 and t2 and t3 and max(t2, t3) - t1 <= 1.0,
           "nodes 2 and 3 enter backoff within 1 s of node 1",
           (t1, t2, t3, n2.log_since(marks[1])[-800:]))
    tap.ok(re.search(r"mode normal -> backoff: reply matched .*rate limit.*\(node node1\)",
                     n2.log_since(marks[1])), "node 2's log names the reply and node 1")
    rc, out = n3.ctl("show", "queues", "--mode=backoff", "bo.test")
    tap.ok(rc == 0 and "bo.test" in out, "pmtactl show queues on node 3 shows bo.test in backoff",
           out)
    rc, out = n2.ctl("show", "cluster", "bo.test")
    tap.ok(rc == 0 and "backoff from node node1" in out, "show cluster names the node and the "
           "reply behind the shared backoff", out)
    back = r"queue bo\.test/\{default\} mode backoff -> normal"
    ends = [log_time(p, back, m) for p, m in zip(nodes, marks)]
    tap.ok(all(ends) and max(ends) - min(ends) <= 1.0,
           "backoff-to-normal-after: the three return to normal together", ends)

    # pmtactl on one node applies to all
    held = inject(nodes, "cmd.test", 1, "tmp")   # deferred for an hour: the queue exists everywhere
    wait_for(lambda: all(re.search(r"tmp%d-0@cmd\.test" % k, p.log()) for k, p in
                         enumerate(nodes, 1)), 15)
    marks = [p.log_mark() for p in nodes]
    rc, out = n2.ctl("set", "queue", "--mode=backoff", "cmd.test")
    pat = r"queue cmd\.test/\{default\} mode normal -> backoff"
    tap.ok(rc == 0 and all(log_time(p, pat, m) for p, m in zip(nodes, marks)),
           "pmtactl set queue --mode=backoff on node 2 puts cmd.test in backoff on all three",
           out)
    marks = [p.log_mark() for p in nodes]
    rc, out = n3.ctl("set", "queue", "--mode=normal", "cmd.test")
    pat = r"queue cmd\.test/\{default\} mode backoff -> normal"
    tap.ok(rc == 0 and all(log_time(p, pat, m) for p, m in zip(nodes, marks)),
           "pmtactl set queue --mode=normal on node 3 ends it on all three", out)

    # disable-source / enable source from one node: the others take the operator's word
    marks = [p.log_mark() for p in nodes]
    rc, out = n1.ctl("disable", "source", "127.0.0.31")
    pat = r"source 127\.0\.0\.31 disabled on node node1's word \(pmtactl\)"
    tap.ok(rc == 0 and all(log_time(p, pat, m) for p, m in zip(nodes[1:], marks[1:])),
           "pmtactl disable source on node 1 disables it on nodes 2 and 3", out)
    marks = [p.log_mark() for p in nodes]
    rc, out = n1.ctl("enable", "source", "127.0.0.31")
    pat = r"source 127\.0\.0\.31 enabled on node node1's word \(pmtactl\)"
    tap.ok(rc == 0 and all(log_time(p, pat, m) for p, m in zip(nodes[1:], marks[1:])),
           "pmtactl enable source on node 1 enables it on nodes 2 and 3", out)

    # --- 3. the leases of a dead node die with it -----------------------------------------------
    ls = ["ls2-%d@ls.test" % i for i in range(3)]
    send_each(n2.port, ls, SENDER)
    wait_for(lambda: len(rx_ls.events("data_cmd")) >= 2, 20)
    time.sleep(0.5)
    ls_peers = {e["peer"] for e in rx_ls.events("connect")}
    tap.ok(ls_peers == {"127.0.0.32"} and len(rx_ls.events("connect")) == 2,
           "node 2 holds both ls.test connections (max-smtp-out 2)", rx_ls.events("connect"))
    send_each(n1.port, ["ls1-0@ls.test"], SENDER)
    time.sleep(1.5)
    tap.ok(not any(e["peer"] == "127.0.0.31" for e in rx_ls.events("connect")),
           "node 1's mail for ls.test waits: the cluster's 2 leases are node 2's")
    n2.kill_everything()
    killed = time.monotonic()
    first = wait_for(lambda: time.monotonic() if any(e["peer"] == "127.0.0.31" for e in
                                                     rx_ls.events("connect")) else None,
                     LEASE_S + 10, 0.05)
    tap.ok(first is not None and first - killed <= LEASE_S + 1.5,
           "after SIGKILL of node 2, node 1 connects within the lease time (%d s)" % LEASE_S,
           first and first - killed)
    rx_ls.stop()

    # --- 4. Redis fails: shares of the limit; Redis returns: shared again ------------------------
    live = [n1, n3]
    marks = [p.log_mark() for p in live]
    t0 = time.time()
    sent = []
    for k, p in ((1, n1), (3, n3)):
        addrs = ["d%d-%d@gmail.test" % (k, i) for i in range(120)]
        send_each(p.port, addrs, SENDER)
        sent += addrs
    all_sent += sent
    time.sleep(1.0)
    redis.kill()
    down_at = time.time()
    warned = all(p.wait_log(r"cluster: Redis .* unreachable", since=m, timeout=10)
                 for p, m in zip(live, marks))
    tap.ok(warned, "each node logs that Redis is unreachable")
    time.sleep(3.0)
    d_down = Deliveries(rx, down_at + 0.5, "gmail.test")
    redis.start()
    up_at = time.time()
    by = d_down.by_source()
    tap.ok(by.get("127.0.0.31", 0) > 0 and by.get("127.0.0.33", 0) > 0,
           "both nodes keep delivering while Redis is down", by)
    back = all(p.wait_log(r"cluster: Redis .* answers again", since=m, timeout=15)
               for p, m in zip(live, marks))
    tap.ok(back, "each node shares again once Redis is back")
    done = delivered_all(rx, sent, 60)
    d = Deliveries(rx, t0, "gmail.test")
    worst = max_in_window(d.times(), 1.0)
    tap.ok(done and worst <= RATE + RATE // NODES,
           "under split limits no 1 s window exceeds the limit plus one node's burst (%d)"
           % (RATE + RATE // NODES), (worst, len(d.rcpts)))
    after = Deliveries(rx, up_at + 2.0, "gmail.test")
    w_after = max_in_window(after.times(), 1.0)
    tap.ok(w_after <= RATE, "shared again: no 1 s window above %d" % RATE, w_after)
    warnings = [len(re.findall(r"cluster: Redis .* unreachable", p.log_since(m)))
                for p, m in zip(live, marks)]
    tap.ok(warnings == [1, 1], "one warning per node for the outage", warnings)

    # --- 5. exactly once -------------------------------------------------------------------
    wanted = [a for a in all_sent if not a.startswith("tmp")]
    delivered_all(rx, wanted, 30)
    seen = {}
    for _, to, _ in Deliveries(rx).rcpts:
        seen[to] = seen.get(to, 0) + 1
    missing = [a for a in wanted if seen.get(a, 0) == 0]
    twice = [a for a, n in seen.items() if n > 1]
    tap.ok(not missing and not twice, "every message arrives exactly once (%d)" % len(wanted),
           (missing[:10], twice[:10]))
    for p in (n1, n3):
        p.stop()

# --- several redis-server lines, a password ------------------------------------------------
with Redis(password="s3cret") as primary, Redis(password="s3cret", replica_of=primary) as replica, \
        Pmta(name="test_cluster4") as n4, Pmta(name="test_cluster5") as n5:
    n4.write_config("""
<cluster>
  redis-server %s
  redis-server %s
  redis-password s3cret
  node-name node4
</cluster>
""" % (replica.server, primary.server))
    n4.start()
    tap.ok(n4.wait_log(r"cluster: Redis %s is not a master; trying the next" %
                       re.escape(replica.server)) and
           n4.wait_log(r"cluster: node node4 shares its limits in Redis %s" %
                       re.escape(primary.server)),
           "a replica listed first is passed over; the primary (password given) is used",
           n4.log())
    tap.ok(wait_for(lambda: "node4" in str(primary.command("HKEYS", "pmta:nodes")), 5),
           "node4's heartbeat is in the primary (default key-prefix pmta:)",
           primary.command("HKEYS", "pmta:nodes"))
    n5.write_config("""
<cluster>
  redis-server %s
  redis-password wrong
</cluster>
""" % primary.server)
    n5.start()
    tap.ok(n5.wait_log(r"cluster: Redis .* refuses the password"),
           "a wrong redis-password is refused with a warning", n5.log()[-1000:])

sys.exit(tap.done())
