#!/usr/bin/env python3
"""test_backoff - backoff mode and <smtp-pattern-list> reply actions, seen from a fake smtp-out.

The queue is filled before pmtad starts (t/unit/qstore_fill), pmtad runs with
`smtp-out-processes 0`, and t/lib/fakeout.py answers qmgr's transactions in
place of smtp-out, with the replies each case needs:

  bo.test   max-msg-rate 100/s, backoff-max-msg-rate 4/s. Its first 3
            recipients get "421 4.7.28 ... rate limit exceeded": the queue
            goes into backoff (one log line naming the pattern) and from then
            on the fake never sees more than 4 recipients in any 1 s window
  bs.test   max-smtp-out 4, backoff-max-smtp-out 1, the same replies: several
            connections at once before, never 2 after
  none.test the same replies, an empty pattern list: no mode change
  seed.test no smtp-pattern-list at all, the seed's settings (backoff-retry-after,
            backoff-to-normal-after): "421 Rate Limit Exceeded" puts it in backoff
            through the built-in list, and it returns to normal by itself
  tn.test   backoff-to-normal-after 2s: back to normal 2-4 s later by itself
  td.test   backoff-to-normal-after-delivery: back to normal after one delivery
  nm.test   a reply matching a mode=normal line ends backoff
  br.test   bounce-rcpt: a 4xx "try again" reply bounces the recipient (DSN queued)
  nt.test   backoff-notify (two lines): each address gets a notice on entering
            (naming the reply) and one on leaving backoff
  rr.test   backoff-reroute-to-virtual-mta slow-ip: after the 421 every
            recipient (the deferred one included) goes out through
            rr.test/slow-ip, from that virtual MTA's source address
  ds.test   disable-source-ip,reenable-after=2s: after "blocked from your
            IP" the other source address of its virtual MTA carries the mail
  re.test   disable-source-ip without reenable-after=: the domain's
            reenable-source-ip-after 2s brings its only address back, and the
            mail goes out
  brt.test  retry-after 1h, backoff-retry-after 1s: the recipient deferred by
            the reply that put the queue in backoff is retried a second later
  bc.test   max-connect-rate 100/s, backoff-max-connect-rate 2/s, one message
            per connection: after the switch no 1 s window opens more than 2
  all.test  backoff-upon-all-sources-disabled: its only address disabled puts
            it in backoff; re-enabled after 2 s, the mail goes out
  bq.test   bounce-queue: one "550 5.7.1 ... blacklisted" bounces all 5 (4 never
            tried), each with a DSN to its sender
  dq.test   defer-queue: the queue waits its retry-after (3 s) before the next
            transaction, and that connection takes no more work meanwhile
"""

import os
import re
import sys
import time

from fakeout import FakeOut, OK, TEMPFAIL
from pmtatest import Pmta, Tap, build_dir, require_root, wait_for
from test_qmgr import fill, max_in_window, qdump, qmgr_socket


CONFIG = """
smtp-out-processes 0
smtpd-processes 1
<smtp-pattern-list isp>
  reply /rate limit exceeded/ mode=backoff
  reply /^250 .*welcome back/ mode=normal
  reply /user unknown, try again/ bounce-rcpt
  reply /mailbox temporarily disabled/ defer-queue
  reply /blocked from your IP/ disable-source-ip,reenable-after=2s
  reply /^550 5\.7\.1 .*blacklisted/ bounce-queue
  reply /IP is on hold/ disable-source-ip
</smtp-pattern-list>
<domain bo.test>
  smtp-pattern-list isp
  max-smtp-out 4
  max-msg-rate 100/s
  backoff-max-smtp-out 1
  backoff-max-msg-rate 4/s
  retry-after 1s
  backoff-retry-after 1s
  retry-recipients-after 1s
</domain>
<domain bs.test>
  smtp-pattern-list isp
  max-smtp-out 4
  backoff-max-smtp-out 1
  retry-after 1s
  backoff-retry-after 1s
  retry-recipients-after 1s
</domain>
<smtp-pattern-list empty>
</smtp-pattern-list>
<domain seed.test>
  backoff-retry-after 1s
  backoff-to-normal-after 2s
  retry-after 1s
  retry-recipients-after 1s
</domain>
<domain nt.test>
  smtp-pattern-list isp
  backoff-notify ops@notice.test
  backoff-notify noc@notice.test
  backoff-to-normal-after 2s
  retry-after 1s
  retry-recipients-after 1s
</domain>
<domain notice.test>
  retry-after 1h
  retry-recipients-after 1h
</domain>
<virtual-mta slow-ip>
  smtp-source-host 127.0.0.40 slow.example.test
</virtual-mta>
<domain rr.test>
  smtp-pattern-list isp
  backoff-reroute-to-virtual-mta slow-ip
  retry-after 1s
  backoff-retry-after 1s
  retry-recipients-after 1s
  max-smtp-out 1
</domain>
<virtual-mta two-ips>
  smtp-source-host 127.0.0.41 a.example.test
  smtp-source-host 127.0.0.42 b.example.test
</virtual-mta>
<virtual-mta one-ip>
  smtp-source-host 127.0.0.43 c.example.test
</virtual-mta>
<domain ds.test>
  smtp-pattern-list isp
  max-smtp-out 1
  max-msg-per-connection 1
  retry-after 1s
  retry-recipients-after 1s
</domain>
<domain all.test>
  smtp-pattern-list isp
  backoff-upon-all-sources-disabled yes
  backoff-retry-after 1s
  retry-after 1s
  retry-recipients-after 1s
</domain>
<virtual-mta re-ip>
  smtp-source-host 127.0.0.44 d.example.test
</virtual-mta>
<domain re.test>
  smtp-pattern-list isp
  reenable-source-ip-after 2s
  retry-after 1s
  retry-recipients-after 1s
</domain>
<domain brt.test>
  smtp-pattern-list isp
  retry-after 1h
  retry-recipients-after 1s
  backoff-retry-after 1s
</domain>
<domain bc.test>
  smtp-pattern-list isp
  max-smtp-out 4
  max-msg-per-connection 1
  max-connect-rate 100/s
  backoff-max-connect-rate 2/s
  retry-after 1s
  backoff-retry-after 1s
  retry-recipients-after 1s
</domain>
<domain bq.test>
  smtp-pattern-list isp
  max-smtp-out 1
</domain>
<domain none.test>
  smtp-pattern-list empty
  max-smtp-out 4
  retry-after 1s
  retry-recipients-after 1s
</domain>
<domain tn.test>
  smtp-pattern-list isp
  backoff-to-normal-after 2s
  retry-after 1s
  retry-recipients-after 1s
</domain>
<domain td.test>
  smtp-pattern-list isp
  backoff-to-normal-after-delivery yes
  retry-after 1s
  backoff-retry-after 1s
  retry-recipients-after 1s
</domain>
<domain nm.test>
  smtp-pattern-list isp
  retry-after 1s
  backoff-retry-after 1s
  retry-recipients-after 1s
</domain>
<domain br.test>
  smtp-pattern-list isp
</domain>
<domain dq.test>
  smtp-pattern-list isp
  max-smtp-out 1
  retry-after 3s
  retry-recipients-after 1s
</domain>
"""

RATE_LIMIT = (TEMPFAIL, 421, "4.7.28", "421 4.7.28 Our system has detected an unusual rate "
              "of mail; rate limit exceeded")


class Answers:
    """What the fake receiver says, per queue; counts what it said."""

    def __init__(self):
        self.seen = {}
        self.first_backoff_reply = {}

    def __call__(self, queue, msgid, index, attempt):
        domain = queue.split("/")[0]
        n = self.seen[domain] = self.seen.get(domain, 0) + 1
        if domain in ("bo.test", "bs.test", "none.test", "bc.test") and n <= 3:
            self.first_backoff_reply.setdefault(domain, time.monotonic())
            return RATE_LIMIT
        if domain == "re.test" and n == 1:
            return (TEMPFAIL, 421, "4.7.0", "421 4.7.0 your IP is on hold")
        if domain in ("ds.test", "all.test") and n == 1:
            return (TEMPFAIL, 421, "4.7.0", "421 4.7.0 blocked from your IP for now")
        if domain == "bq.test":
            return (2, 550, "5.7.1", "550 5.7.1 your IP is blacklisted here")
        if domain == "notice.test":
            return (TEMPFAIL, 451, "4.3.0", "451 4.3.0 keep it queued for the test")
        if domain in ("tn.test", "td.test", "nm.test", "nt.test", "rr.test", "brt.test") and n == 1:
            return RATE_LIMIT
        if domain == "seed.test" and n == 1:
            return (TEMPFAIL, 421, "", "421 Rate Limit Exceeded")
        if domain == "nm.test":
            return (OK, 250, "2.0.0", "250 2.0.0 ok, welcome back")
        if domain == "br.test":
            return (TEMPFAIL, 450, "4.2.1", "450 4.2.1 user unknown, try again later")
        if domain == "dq.test" and n == 1:
            return (TEMPFAIL, 451, "4.2.1", "451 4.2.1 mailbox temporarily disabled")
        return (OK, 250, "2.0.0", "250 2.0.0 ok")


def concurrency_after(fake, queue, since):
    """Most connections of QUEUE open at once at or after SINCE (from opens and closes)."""
    events = [(t, 1) for (t, _, q, *_rest) in fake.opens if q == queue]
    events += [(t, -1) for (t, _, q) in fake.closes if q == queue]
    now, best = 0, None
    for t, d in sorted(events):
        if t >= since and best is None:
            best = now                  # what was open when SINCE came
        now += d
        if t >= since:
            best = max(best, now)
    return now if best is None else best


def notices(p):
    """The backoff notices queued for notice.test: (recipient, message text)."""
    out = []
    for m in qdump(p, body=True):
        for r in m.get("recipients", m.get("rcpts", [])):
            addr = r.get("address", "") if isinstance(r, dict) else str(r)
            if addr.endswith("@notice.test"):
                out.append((addr, m.get("body", "")))
    return out


def mode_lines(log, queue):
    return re.findall(r"queue %s mode (\w+) -> (\w+): (.*)" % re.escape(queue), log)


def main():
    tap = Tap()
    require_root(tap)
    answers = Answers()
    with Pmta(name="backoff") as p:
        p.write_config(CONFIG)
        for domain, n in (("bo", 40), ("bs", 60), ("none", 10), ("seed", 3), ("nt", 2), ("rr", 6), ("tn", 3), ("td", 3), ("nm", 3), ("br", 1),
                          ("dq", 3)):
            fill(p, "-n", str(n), "-r", "1", "-d", domain)
        fill(p, "-n", "8", "-r", "1", "-d", "ds", "-v", "two-ips")
        fill(p, "-n", "2", "-r", "1", "-d", "all", "-v", "one-ip")
        fill(p, "-n", "2", "-r", "1", "-d", "re", "-v", "re-ip")
        fill(p, "-n", "16", "-r", "1", "-d", "bc")
        fill(p, "-n", "1", "-r", "1", "-d", "brt")
        fill(p, "-n", "5", "-r", "1", "-d", "bq", "-s", "sender@bqorigin.test")
        p.start()
        fake = FakeOut(qmgr_socket(p), answer=answers, txn_delay=0.05).start()
        t0 = time.monotonic()
        wait_for(lambda: len([r for r in fake.results_for("bo.test/{default}") if r[5] == OK])
                 >= 40, timeout=30)
        wait_for(lambda: len([r for r in fake.results_for("bs.test/{default}") if r[5] == OK])
                 >= 60, timeout=30)
        wait_for(lambda: len(fake.results_for("dq.test/{default}")) >= 3, timeout=15)
        wait_for(lambda: "backoff -> normal: backoff-to-normal-after" in p.log(), timeout=10)
        wait_for(lambda: fake.results_for("origin.test/{default}"), timeout=5)
        wait_for(lambda: len(fake.results_for("bqorigin.test/{default}")) >= 5, timeout=10)
        wait_for(lambda: len([r for r in fake.results_for("all.test/one-ip") if r[5] == OK]) >= 2,
                 timeout=10)
        wait_for(lambda: len(notices(p)) >= 4, timeout=10)
        wait_for(lambda: len([r for r in fake.results_for("re.test/re-ip") if r[5] == OK]) >= 2,
                 timeout=10)
        wait_for(lambda: len([r for r in fake.results_for("bc.test/{default}") if r[5] == OK])
                 >= 16, timeout=20)
        wait_for(lambda: [r for r in fake.results_for("brt.test/{default}") if r[5] == OK],
                 timeout=10)
        notes = notices(p)
        elapsed = time.monotonic() - t0
        fake.stop()
        p.stop()
        log = p.log()
    tap.diag("took %.1f s" % elapsed)

    # --- bo.test: the rate limit reply puts the queue in backoff; the backoff limits hold
    bo = "bo.test/{default}"
    modes = mode_lines(log, bo)
    tap.ok(len(modes) == 1 and modes[0][:2] == ("normal", "backoff")
           and "reply matched /rate limit exceeded/" in modes[0][2] and "421 4.7.28" in modes[0][2],
           "a 421 'rate limit exceeded' reply puts the queue in backoff once, naming the pattern "
           "and the reply", modes)
    t_switch = answers.first_backoff_reply.get("bo.test", t0)
    bs = "bs.test/{default}"
    bs_switch = answers.first_backoff_reply.get("bs.test", t0)
    before = fake.max_concurrent.get(bs, 0)
    after = concurrency_after(fake, bs, bs_switch + 0.3)
    bs_ok = len([r for r in fake.results_for(bs) if r[5] == OK])
    tap.ok(before >= 3 and after == 1 and bs_ok == 60 and mode_lines(log, bs),
           "backoff-max-smtp-out 1 replaces max-smtp-out 4: one connection after the switch",
           "at most %d at once before, %d after; %d delivered" % (before, after, bs_ok))
    times = [t for (t, _, _, _, idx) in fake.txns_for(bo) if t >= t_switch + 0.3 for _ in idx]
    busiest = max_in_window(times)
    tap.ok(len(times) >= 20 and busiest <= 4,
           "backoff-max-msg-rate 4/s replaces max-msg-rate 100/s: no 1 s window above 4",
           "%d recipients after the switch, busiest 1 s window %d" % (len(times), busiest))
    delivered = len([r for r in fake.results_for(bo) if r[5] == OK])
    tap.ok(delivered == 40, "in backoff the queue still delivers everything (40 of 40)", delivered)
    tap.ok(not mode_lines(log, "none.test/{default}"),
           "a queue whose smtp-pattern-list has no matching line ignores the same reply")
    seed = mode_lines(log, "seed.test/{default}")
    tap.ok([m[:2] for m in seed] == [("normal", "backoff"), ("backoff", "normal")]
           and "421 Rate Limit Exceeded" in seed[0][2] and "backoff-to-normal-after" in seed[1][2]
           and len([r for r in fake.results_for("seed.test/{default}") if r[5] == OK]) == 3,
           "the seed's case, no smtp-pattern-list: '421 Rate Limit Exceeded' puts the queue in "
           "backoff (built-in list), backoff-to-normal-after brings it back", seed)

    # --- the ways back to normal
    tn = mode_lines(log, "tn.test/{default}")
    tap.ok([m[:2] for m in tn] == [("normal", "backoff"), ("backoff", "normal")]
           and "backoff-to-normal-after" in tn[-1][2],
           "backoff-to-normal-after 2s returns the queue to normal by itself", tn)
    stamps = [l[:23] for l in log.splitlines() if "queue tn.test/{default} mode" in l]
    if len(stamps) == 2:
        gap = (time.mktime(time.strptime(stamps[1][:19], "%Y-%m-%d %H:%M:%S"))
               + float(stamps[1][19:23]) - time.mktime(time.strptime(stamps[0][:19],
                                                                      "%Y-%m-%d %H:%M:%S"))
               - float(stamps[0][19:23]))
    else:
        gap = -1
    tap.ok(1.9 <= gap <= 4.5, "... after 2 s (the check runs every second)", "%.2f s" % gap)
    td = mode_lines(log, "td.test/{default}")
    tap.ok([m[:2] for m in td] == [("normal", "backoff"), ("backoff", "normal")]
           and "backoff-to-normal-after-delivery" in td[-1][2],
           "backoff-to-normal-after-delivery: one delivery ends backoff", td)
    nm = mode_lines(log, "nm.test/{default}")
    tap.ok([m[:2] for m in nm] == [("normal", "backoff"), ("backoff", "normal")]
           and "welcome back" in nm[-1][2],
           "a reply matching a mode=normal line ends backoff", nm)

    # --- backoff-notify
    entered = [a for a, body in notes if "Subject: queue nt.test/{default} entered backoff mode"
               in body and "rate limit exceeded" in body and "Auto-Submitted: auto-generated" in body]
    left = [a for a, body in notes if "Subject: queue nt.test/{default} left backoff mode" in body]
    tap.ok(sorted(entered) == ["noc@notice.test", "ops@notice.test"]
           and sorted(left) == ["noc@notice.test", "ops@notice.test"],
           "backoff-notify: both addresses are mailed on entering (with the reply) and on "
           "leaving backoff", [(a, b[:200]) for a, b in notes])

    # --- backoff-reroute-to-virtual-mta
    moved = [t for t in fake.txns_for("rr.test/slow-ip")]
    opens = fake.opens_for("rr.test/slow-ip")
    rr_ok = len([r for r in fake.results_for("rr.test/slow-ip") if r[5] == OK])
    tap.ok(re.search(r"queue rr\.test/\{default\} rerouted to rr\.test/slow-ip", log)
           and rr_ok == 6 and opens and all(o[4] == "slow-ip" and o[5] == "127.0.0.40" for o in opens)
           and not [r for r in fake.results_for("rr.test/{default}") if r[5] == OK],
           "backoff-reroute-to-virtual-mta: the queue's mail (6, the deferred one too) goes out "
           "through rr.test/slow-ip from 127.0.0.40", (rr_ok, opens[:2], len(moved)))

    # --- disable-source-ip
    ds = sorted(fake.opens_for("ds.test/two-ips"))
    first_src = ds[0][5] if ds else None
    later = [o[5] for o in ds[1:]]
    ds_ok = len([r for r in fake.results_for("ds.test/two-ips") if r[5] == OK])
    tap.ok(ds and re.search(r"queue ds\.test/two-ips: source %s disabled for 2 s: reply matched "
                            r"/blocked from your IP/" % re.escape(first_src), log)
           and later and first_src not in later and ds_ok == 8,
           "disable-source-ip,reenable-after=2s: after 'blocked from your IP' the queue's next "
           "connections all use its other address; all 8 delivered", (first_src, later))
    al = mode_lines(log, "all.test/one-ip")
    al_ok = len([r for r in fake.results_for("all.test/one-ip") if r[5] == OK])
    tap.ok(al and al[0][:2] == ("normal", "backoff") and "every source address disabled" in al[0][2]
           and re.search(r"queue all\.test/one-ip: source 127\.0\.0\.43 enabled again", log)
           and al_ok == 2,
           "backoff-upon-all-sources-disabled: its only address disabled puts the queue in backoff; "
           "re-enabled after 2 s, its mail goes out", (al, al_ok))

    re_ok = len([r for r in fake.results_for("re.test/re-ip") if r[5] == OK])
    tap.ok(re.search(r"queue re\.test/re-ip: source 127\.0\.0\.44 disabled for 2 s: reply "
                     r"matched /IP is on hold/", log)
           and re.search(r"queue re\.test/re-ip: source 127\.0\.0\.44 enabled again", log)
           and re_ok == 2,
           "reenable-source-ip-after 2s: an address disabled by a line without reenable-after= "
           "comes back after 2 s and carries the mail", re_ok)

    # --- backoff-retry-after
    brt = sorted(fake.txns_for("brt.test/{default}"))
    gap = brt[1][0] - brt[0][0] if len(brt) >= 2 else -1
    tap.ok(len(brt) == 2 and 0.8 <= gap <= 5
           and [r for r in fake.results_for("brt.test/{default}") if r[5] == OK],
           "backoff-retry-after 1s replaces retry-after 1h: the recipient deferred as the queue "
           "went into backoff is retried about a second later", "%.2f s" % gap)

    # --- backoff-max-connect-rate
    bc = "bc.test/{default}"
    bc_switch = answers.first_backoff_reply.get("bc.test", t0)
    opens = [o[0] for o in fake.opens_for(bc) if o[0] >= bc_switch + 0.3]
    bc_ok = len([r for r in fake.results_for(bc) if r[5] == OK])
    tap.ok(mode_lines(log, bc) and len(opens) >= 8 and max_in_window(opens) <= 2 and bc_ok == 16,
           "backoff-max-connect-rate 2/s replaces max-connect-rate 100/s: no 1 s window with "
           "more than 2 new connections after the switch; all 16 delivered",
           "%d connections after the switch, busiest 1 s window %d, %d delivered"
           % (len(opens), max_in_window(opens) if opens else 0, bc_ok))

    # --- bounce-queue
    bq_tried = fake.results_for("bq.test/{default}")
    bq_bounced = re.findall(r"bounced \S+ to=\S+ queue=bq\.test/\{default\}", log)
    tap.ok(len(bq_tried) == 1 and len(bq_bounced) == 5
           and "queue bq.test/{default}: bounce-queue: 4 more recipient(s) bounced" in log
           and len(fake.results_for("bqorigin.test/{default}")) == 5,
           "bounce-queue: one '550 5.7.1 ... blacklisted' bounces the 4 untried recipients too, "
           "each with a DSN", (len(bq_tried), len(bq_bounced)))

    # --- bounce-rcpt and defer-queue
    br = fake.results_for("br.test/{default}")
    tap.ok(len(br) == 1 and re.search(r"bounced \S+ to=\S+ queue=br\.test/\{default\}.*"
                                      r"user unknown, try again", log),
           "bounce-rcpt: a 4xx reply matching the line bounces the recipient at once",
           "%d attempts" % len(br))
    dsn = fake.results_for("origin.test/{default}")
    tap.ok(len(dsn) == 1, "... and a DSN goes to its sender (sender@origin.test)", len(dsn))
    dq = sorted(fake.txns_for("dq.test/{default}"))
    gap = dq[1][0] - dq[0][0] if len(dq) >= 2 else 0
    tap.ok(re.search(r"queue dq\.test/\{default\} in retry mode for [\d.]+ s after 1 defer-queue",
                     log) and 2.4 <= gap <= 6,
           "defer-queue: the queue goes into retry mode; next transaction after retry-after 3s",
           "%.2f s" % gap)
    dq_conns = {c for (_, c, _, _, _) in dq}
    tap.ok(len(dq) >= 2 and dq[1][1] != dq[0][1] and len(dq_conns) >= 2,
           "... on a new connection: the held one took no more work",
           [(round(t - t0, 2), c) for (t, c, *_r) in dq])
    tap.ok(not re.search(r"(warning|error|panic|fatal):", log.replace("warning: directive", "")),
           "no warnings or errors in the log",
           "\n".join(l for l in log.splitlines() if re.search(r"(warning|error|panic):", l))[:600])
    sys.exit(tap.done())


if __name__ == "__main__":
    main()
