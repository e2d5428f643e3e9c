#!/usr/bin/env python3
"""test_seed_backoff - the seed's "421 Rate Limit Exceeded" scenario, measured at the receiver.

The seed's Gmail block exactly as conf/seed/seed-gmail.conf keeps it (inline
<!-- --> comments included; max-msg-rate 100/s, max-rcpt-per-transaction 100,
max-smtp-out 20, retry-after 10m, DKIM), plus what an operator adds for
backoff: a pattern list `reply /rate limit/ mode=backoff`,
backoff-max-msg-rate 5/s, backoff-retry-after 5s, backoff-to-normal-after 15s.
dnsmasq points gmail.com's MX at our receiver (t/lib/testsmtpd.py on
127.0.0.2), which answers every RCPT "421 4.7.28 Rate Limit Exceeded" (and
closes, as Gmail does) for 8 s once it has accepted 60 messages.

For each of three runs (the rule that ends backoff differs) it checks, from the
receiver's log and the accounting file:
  - from 1 s after the first 421 until the queue is normal again, no 1 s window
    holds more than 5 attempts (deliveries plus refusals);
  - a recipient refused while in backoff is tried again 5 s later (+-10 %
    jitter, plus the 5/s pacing), never after retry-after's 10 minutes;
  - the queue is normal again on time, and then the rate climbs back above the
    backoff rate (never above max-msg-rate);
  - every message arrives exactly once, all within the time the rules allow;
  - the accounting file has a `t` record carrying the 421 text for each refusal.
Runs: A backoff-to-normal-after 15s; B backoff-to-normal-after-delivery yes;
C `reply /^250 2\\.0\\.0 Ok: queued/ mode=normal` on the success reply.

Prints TAP. Needs root, dnsmasq. Only 127.0.0.0/8 is used.
"""

import datetime
import email
import email.policy
import os
import re
import smtplib
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))

from dnsmasq import Dnsmasq, dnsmasq_path  # noqa: E402
from pmtatest import Pmta, Tap, acct_rows, free_port, require_root, wait_for  # noqa: E402
from testsmtpd import TestSmtpd  # noqa: E402

SRCDIR = os.environ.get("PMTA_SRCDIR", os.path.join(os.path.dirname(__file__), "..", ".."))
SEED = os.path.join(SRCDIR, "conf", "seed", "seed-gmail.conf")
DKIM_KEY = os.path.join(SRCDIR, "t", "data", "dkim", "test.key")

MESSAGES = 400
THROTTLE_AFTER = 60
THROTTLE_SECONDS = 8
REFUSAL = "421 4.7.28 Rate Limit Exceeded"
MAX_RATE, BACKOFF_RATE, BACKOFF_RETRY, TO_NORMAL = 100, 5, 5.0, 15.0

BACKOFF_SETTINGS = """    smtp-pattern-list seed-throttle
    backoff-max-msg-rate 5/s
    backoff-retry-after 5s
    backoff-to-normal-after 15s
"""

RUNS = {
    "A": ("backoff-to-normal-after 15s", "", ""),
    "B": ("backoff-to-normal-after-delivery yes", "    backoff-to-normal-after-delivery yes\n", ""),
    "C": ("mode=normal on the success reply", "",
          "    reply /^250 2\\.0\\.0 Ok: queued/ mode=normal\n"),
}


def seed_block(extra):
    """The seed's Gmail block with the test's key, and EXTRA before </domain>."""
    with open(SEED) as f:
        text = f.read()
    text = text.replace("/etc/pmta/dkim.key", DKIM_KEY)
    return text.replace("</domain>", BACKOFF_SETTINGS + extra + "</domain>")


def config(dns_port, rx_port, acct, domain_extra, pattern_extra):
    return ("name-server 127.0.0.1:%d\n" % dns_port +
            "<source 127.0.0.1>\n  always-allow-relaying yes\n</source>\n"
            "<acct-file %s>\n  records d,b,t\n</acct-file>\n" % acct +
            "<domain *>\n  default-smtp-port %d\n</domain>\n" % rx_port +
            seed_block(domain_extra) +
            "<smtp-pattern-list seed-throttle>\n" + pattern_extra +
            "    reply /rate limit/ mode=backoff\n</smtp-pattern-list>\n")


def inject(port):
    """MESSAGES messages, one recipient each, distinct Message-IDs; returns the ids."""
    ids = []
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
        for i in range(MESSAGES):
            mid = "<seed-%d.%f@yourdomain.com>" % (i, time.time())
            msg = ("From: news@yourdomain.com\r\nTo: user%d@gmail.com\r\n"
                   "Subject: seed %d\r\nMessage-ID: %s\r\n\r\nhello %d\r\n" % (i, i, mid, i))
            s.sendmail("news@yourdomain.com", ["user%d@gmail.com" % i], msg)
            ids.append(mid)
    return ids


def log_time(line):
    """Epoch seconds of a pmtad log line ("2026-11-27 17:56:43.123+0000 ...")."""
    stamp = line[:28]
    return datetime.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S.%f%z").timestamp()


def max_window(times, start, end, width=1.0):
    """The most events of TIMES (sorted) inside any WIDTH-second window within [START, END]."""
    inside = [t for t in times if start <= t <= end]
    best, j = 0, 0
    for i, t in enumerate(inside):
        while inside[j] < t - width + 1e-9:
            j += 1
        best = max(best, i - j + 1)
    return best


def arrived_ids(rx):
    ids = []
    for ev in rx.events("data"):
        with open(ev["file"], "rb") as f:
            msg = email.message_from_binary_file(f, policy=email.policy.compat32)
        ids.append(msg["Message-ID"])
    return ids


def run_case(tap, name, work, dns):
    label, domain_extra, pattern_extra = RUNS[name]
    rx_port = free_port("127.0.0.2")
    rx = TestSmtpd(["127.0.0.2:%d" % rx_port],
                   {"throttle": {"after": THROTTLE_AFTER, "seconds": THROTTLE_SECONDS,
                                 "reply": REFUSAL}},
                   workdir=tempfile.mkdtemp(prefix="rx-", dir=work), name="gmail")
    with Pmta(name="seed-backoff-" + name) as p, rx:
        acct = os.path.join(p.spool, "acct.csv")
        p.write_config(config(dns.port, rx_port, acct, domain_extra, pattern_extra))
        p.start()
        t_start = time.time()
        ids = inject(p.port)
        bound = TO_NORMAL + MESSAGES / MAX_RATE + 8
        done = wait_for(lambda: len(rx.events("data")) >= MESSAGES, timeout=bound + 30)
        t_end = time.time()
        time.sleep(0.5)
        rcpts = rx.events("rcpt")
        refused = [e for e in rcpts if e["reply"] == 421]
        attempts = sorted(e["t"] for e in rcpts)
        log = p.log()
        t_first421 = refused[0]["t"] if refused else None
        normal = [l for l in log.splitlines()
                  if "gmail.com/{default} mode backoff -> normal" in l]
        entered = [l for l in log.splitlines()
                   if "gmail.com/{default} mode normal -> backoff" in l]
        t_normal = log_time(normal[0]) if normal else None
        tap.diag("%s: %d attempts, %d refused, first 421 at +%.2f s, normal at +%s s, "
                 "all arrived at +%.1f s" % (
                     label, len(attempts), len(refused),
                     (t_first421 or t_start) - t_start,
                     "%.2f" % (t_normal - t_start) if t_normal else "never", t_end - t_start))

        tap.ok(refused and entered, "%s: the 421s put gmail.com into backoff" % label,
               entered[:1])
        if not (refused and t_normal):
            tap.ok(False, "%s: the queue returned to normal" % label, log[-3000:])
            rx.stop()
            return
        # the rule that ended backoff, and when
        if name == "A":
            ok = TO_NORMAL - 1.0 <= t_normal - t_first421 <= TO_NORMAL + 2.0
            why = "backoff-to-normal-after elapsed"
        else:
            # one delivery in backoff ends it: the first accepted RCPT after the window
            t_window_end = t_first421 + THROTTLE_SECONDS
            ok = t_window_end - 0.5 <= t_normal <= t_window_end + BACKOFF_RETRY + 2.0
            why = "delivered" if name == "B" else "reply matched"
        tap.ok(ok and why in normal[0], "%s: normal again on time (%.2f s after the first 421)"
               % (label, t_normal - t_first421), normal[0])
        busiest = max_window(attempts, t_first421 + 1.0, t_normal)
        tap.ok(busiest <= BACKOFF_RATE,
               "%s: from 1 s after the first 421 to normal, at most %d attempts in any 1 s "
               "(saw %d)" % (label, BACKOFF_RATE, busiest),
               "\n".join("%+.3f conn %d %s %d" % (e["t"] - t_first421, e["conn"], e["to"],
                                                   e["reply"])
                         for e in rcpts if t_first421 <= e["t"] <= t_normal))
        # retries: the next attempt of a recipient refused in backoff
        by_rcpt = {}
        for e in rcpts:
            by_rcpt.setdefault(e["to"], []).append(e)
        gaps = []
        for evs in by_rcpt.values():
            for a, b in zip(evs, evs[1:]):
                if a["reply"] == 421 and t_first421 + 1.0 <= a["t"] and b["t"] < t_normal:
                    gaps.append(b["t"] - a["t"])
        # due after 5 s +-10 %; then the next free slot at 5/s, behind retries due
        # at the same moment (the refusals came at that rate too)
        tap.ok(gaps and min(gaps) >= BACKOFF_RETRY * 0.9 - 0.1 and
               max(gaps) <= BACKOFF_RETRY * 1.1 + 2.5,
               "%s: refused in backoff -> retried after backoff-retry-after 5s (%d retries, "
               "%.2f..%.2f s)" % (label, len(gaps), min(gaps or [0]), max(gaps or [0])))
        after = max_window(attempts, t_normal + 0.2, t_end)
        tap.ok(BACKOFF_RATE * 3 < after <= MAX_RATE,
               "%s: after backoff the rate climbs back (%d in the busiest 1 s, limit %d)"
               % (label, after, MAX_RATE))
        got = arrived_ids(rx)
        tap.ok(done and sorted(got) == sorted(ids) and len(set(got)) == len(got),
               "%s: every message arrived exactly once (%d of %d, %d distinct)"
               % (label, len(got), len(ids), len(set(got))))
        limit = (TO_NORMAL if name == "A" else THROTTLE_SECONDS + BACKOFF_RETRY) + \
            MESSAGES / MAX_RATE + 5
        tap.ok(t_end - t_start <= limit,
               "%s: all within %.0f s of the first message (took %.1f s)"
               % (label, limit, t_end - t_start))
        wait_for(lambda: len([r for r in acct_rows(acct) if r["type"] == "t"]) >= len(refused),
                 timeout=5)
        trows = [r for r in acct_rows(acct) if r["type"] == "t"]
        tap.ok(len(trows) == len(refused) and all(REFUSAL in r["dsnDiag"] for r in trows),
               "%s: one t record with the 421 text per refusal (%d records, %d refusals)"
               % (label, len(trows), len(refused)), trows[:2])


def main():
    tap = Tap()
    require_root(tap)
    if not dnsmasq_path():
        return tap.skip_all("dnsmasq is not installed")
    work = tempfile.mkdtemp(prefix="test_seed_backoff.")
    os.chmod(work, 0o755)
    with Dnsmasq(mx=[("gmail.com", "mx.gmail.test", 10)],
                 hosts=[("mx.gmail.test", "127.0.0.2")]) as dns:
        for name in RUNS:
            run_case(tap, name, work, dns)
    return tap.done()


if __name__ == "__main__":
    sys.exit(main())
