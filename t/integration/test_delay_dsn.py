#!/usr/bin/env python3
"""test_delay_dsn - notify-of-delay-every: delayed DSNs while a recipient keeps failing.

The queue is filled before pmtad starts (t/unit/qstore_fill, sender
sender@origin.test), pmtad runs with `smtp-out-processes 0` and
t/lib/fakeout.py answers every attempt for slow.test with 451, so the
recipient is deferred every second. With notify-of-delay-every 2s:
  - a report with Action: delayed, Status 4.3.0, Will-Retry-Until and the
    451 text goes to sender@origin.test after 2 s, a second after 4 s, and
    no more often than that (counted over 5 s);
  - it returns the header section only (RET not given);
  - never.test (notify-of-delay-every never) gets none;
  - after a restart the count continues: no notice is sent twice.
origin.test's own queue answers 451 too, so the reports stay queued where
tools/pmta-qdump can read them.
"""

import re
import sys
import time

from fakeout import FakeOut, TEMPFAIL
from pmtatest import Pmta, Tap, require_root, wait_for
from test_qmgr import fill, qdump, qmgr_socket


CONFIG = """
smtp-out-processes 0
smtpd-processes 1
<domain slow.test>
  notify-of-delay-every 2s
  retry-after 1s
  retry-recipients-after 1s
</domain>
<domain never.test>
  notify-of-delay-every never
  retry-after 1s
  retry-recipients-after 1s
</domain>
<domain origin.test>
  retry-after 1h
  retry-recipients-after 1h
</domain>
"""


def always_451(queue, msgid, index, attempt):
    return (TEMPFAIL, 451, "4.3.0", "451 4.3.0 mailbox busy, try later")


def reports(p):
    """Bodies of the delay reports queued for sender@origin.test."""
    return [m.get("body", "") for m in qdump(p, body=True)
            if m.get("sender") == "" and "Action: delayed" in m.get("body", "")]


def main():
    tap = Tap()
    require_root(tap)
    with Pmta(name="delay-dsn") as p:
        p.write_config(CONFIG)
        t_queued = time.monotonic()     # the recipients' queued_at: the clock starts here
        fill(p, "-n", "1", "-r", "1", "-d", "slow")
        fill(p, "-n", "1", "-r", "1", "-d", "never")
        p.start()
        fake = FakeOut(qmgr_socket(p), answer=always_451, txn_delay=0.01).start()
        first = wait_for(lambda: len(reports(p)) >= 1, timeout=8)
        t_first = time.monotonic() - t_queued
        wait_for(lambda: len(reports(p)) >= 2, timeout=8)
        t_second = time.monotonic() - t_queued
        time.sleep(max(0, 5.0 - t_second))
        n5 = len(reports(p))
        bodies = reports(p)
        fake.stop()
        p.stop()
        log_before = p.log()
        # restart: the stored count carries over
        p.start()
        fake = FakeOut(qmgr_socket(p), answer=always_451, txn_delay=0.01).start()
        time.sleep(1.5)
        after_restart = len(reports(p))
        fake.stop()
        p.stop()
        log = p.log()
    body = bodies[0] if bodies else ""
    # queue times are whole seconds: "2 s in the queue" can come up to 1 s early
    tap.ok(first and 1.0 <= t_first <= 6,
           "a recipient failing for 2 s gets its first delay report (%.1f s after queueing)"
           % t_first)
    tap.ok(re.search(r"Action: delayed", body) and re.search(r"Status: 4\.3\.0", body)
           and "Will-Retry-Until:" in body and "mailbox busy" in body
           and "Final-Recipient: rfc822; u" in body,
           "... an RFC 3464 report: Action delayed, Status 4.3.0, Will-Retry-Until, the reply",
           body[:800])
    tap.ok("text/rfc822-headers" in body and "body 0" not in body,
           "... returning the header section only", body[-400:])
    tap.ok(n5 <= 3 and len(re.findall(r"delay notice \d+ for", log_before)) == n5 and n5 >= 2,
           "one report per full 2 s interval: %d in the first 5 s" % n5)
    tap.ok(not [b for b in bodies if "never.test" in b],
           "notify-of-delay-every never: no report")
    ks = [int(k) for k in re.findall(r"delay notice (\d+) for", log)]
    tap.ok(ks == sorted(set(ks)) and ks[:n5] == list(range(1, n5 + 1))
           and after_restart == len(ks),
           "after a restart the count continues: notices %s, none repeated" % ks,
           (n5, after_restart))
    sys.exit(tap.done())


if __name__ == "__main__":
    main()
