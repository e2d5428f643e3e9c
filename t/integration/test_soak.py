#!/usr/bin/env python3
"""test_soak.py - the kill soak (bench/soak) in make check: 20 random SIGKILLs.

bench/soak streams one-recipient messages with distinct Message-IDs into a
pmtad that delivers them by MX to t/lib/testsmtpd.py, and SIGKILLs a random
process of the tree (an smtpd, the cleanup, the qmgr, an smtp-out, pmtad
itself, which it then starts again as an init system would) at random moments.
soak.test has `retry-after 10m`: a recipient cut off by our own process dying
must be due again at once, not ten minutes later.

Checked: every kill landed and mail was acknowledged; no acknowledged
Message-ID lost, every one delivered; the queue empty at the end (a recipient
wrongly put into retry would still sit there); nothing foreign delivered; the
workers of every killed pmtad went away by themselves; the longest wait of an
acknowledged message after a kill, and the longest 250-to-delivery latency,
stay within WAIT_MAX seconds (a retry-after penalty would be 540 s or more);
duplicates stay within DUP_PER_KILL per kill on average (a regression that
re-sent finished recipients would show), and each has a kill between its
copies. The seed is printed: rerun with `bench/soak --kills 20 --seed N` to
replay the same draws.

Then the same deterministically: pmtad is killed while one delivery waits
for the receiver's answer to the final dot and another connection for its
greeting, both longer than the workers' 2 s drain; after the restart both
are delivered within seconds, with no deferral and no retry mode logged.

Then one qmgr per queue: a pmtad is killed while its qmgr is stopped
(SIGSTOP), so that it cannot exit; the restarted pmtad's qmgr must wait for
it (SPOOL/.qmgr.lock) and take the queue only once it is gone.
"""
import json
import os
import random
import re
import signal
import smtplib
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))

from dnsmasq import dnsmasq_path  # noqa: E402
from pmtatest import Pmta, Tap, free_port, pid_alive, qdump, require_root, wait_for  # noqa: E402
from testsmtpd import TestSmtpd  # noqa: E402

KILLS = 20
WAIT_MAX = 20.0         # seconds; generous for a loaded CI machine
DUP_PER_KILL = 8.0      # observed about 1.5 per kill; a systematic re-send would be far above

tap = Tap()
require_root(tap)
if dnsmasq_path() is None:
    sys.exit(tap.skip_all("dnsmasq (Debian dnsmasq-base) is not installed"))

soak = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "bench", "soak")
seed = random.SystemRandom().randrange(1 << 30)
with tempfile.NamedTemporaryFile(prefix="test_soak.", suffix=".json") as out:
    r = subprocess.run([sys.executable, soak, "--kills", str(KILLS), "--seed", str(seed),
                        "--rate", "60", "--drain", "60", "--json", out.name],
                       capture_output=True, text=True, timeout=600)
    tap.diag(r.stdout.strip())
    if r.stderr.strip():
        tap.diag(r.stderr.strip()[-3000:])
    try:
        with open(out.name) as f:
            fig = json.load(f)
    except (OSError, ValueError):
        fig = None

if not tap.ok(fig is not None, "bench/soak ran and wrote its figures (seed %d)" % seed,
              "exit status %d" % r.returncode):
    sys.exit(tap.done())

tap.ok(fig["kills"] == KILLS and fig["accepted"] > 0,
       "%d kills (%s); %d messages acknowledged" % (fig["kills"], fig["kills_by_kind"],
                                                    fig["accepted"]))
tap.ok(fig["lost"] == 0 and fig["delivered"] == fig["accepted"],
       "every acknowledged Message-ID delivered (%d), none lost" % fig["accepted"],
       "lost %d: still queued %s, gone %s" % (fig["lost"], fig["lost_still_queued"],
                                              fig["lost_gone"]))
tap.ok(fig["queue_left"] == 0, "the queue is empty at the end (nothing waits for retry-after 10m)",
       fig.get("queue_left_sample"))
tap.ok(not fig["foreign"], "nothing was delivered that was not injected", fig["foreign"])
tap.ok(fig["workers_left_behind"] == 0,
       "the workers of each killed pmtad went away by themselves (%d restarts, within %.2f s)"
       % (fig["pmtad_restarts"], fig["worker_exit_seconds_max"]))
tap.ok(fig["longest_wait_after_kill"] <= WAIT_MAX and fig["latency_max"] <= WAIT_MAX,
       "longest wait after a kill %.2f s, longest 250-to-delivery %.2f s (<= %.0f s, retry-after 10m)"
       % (fig["longest_wait_after_kill"], fig["latency_max"], WAIT_MAX))
tap.ok(fig["duplicated"] <= DUP_PER_KILL * KILLS,
       "duplicates %d (%.2f per kill) <= %.0f per kill; by kind %s"
       % (fig["duplicated"], fig["duplicated"] / KILLS, DUP_PER_KILL, fig["duplicated_by_kind"]))
tap.ok(fig["duplicated_before_any_kill"] == 0,
       "every duplicate has a kill between its copies", fig.get("unexplained"))
tap.ok(r.returncode == 0, "bench/soak exits 0")

# --- pmtad killed while deliveries are under way: due again at once -----------------------------
# Deterministic cases of what the soak meets by chance. dot.test's receiver holds the final dot
# HOLD s (longer than the 2 s the workers of a dead pmtad drain), greet.test's its greeting: the
# one transaction is cut off mid-DATA, the other connection before it is up. Neither is a
# failure of the receiver: with retry-after 10m both are delivered within seconds of the restart.
HOLD = 4
with Pmta(name="test_soak_cut") as p, \
        TestSmtpd(["127.0.0.42:%d" % free_port("127.0.0.42")], {"delay": {"dot": HOLD}},
                  workdir=p.dir, name="rx-dot") as rx_dot, \
        TestSmtpd(["127.0.0.43:%d" % free_port("127.0.0.43")], {"delay": {"greeting": HOLD}},
                  workdir=p.dir, name="rx-greet") as rx_greet:
    p.write_config("""
<source 127.0.0.1>
    always-allow-relaying yes
</source>
<domain *>
    retry-after 10m
    retry-recipients-after 10m
</domain>
<domain dot.test>
    smtp-hosts [%s]:%s
</domain>
<domain greet.test>
    smtp-hosts [%s]:%s
</domain>
""" % (tuple(rx_dot.listen[0].split(":")) + tuple(rx_greet.listen[0].split(":"))), processes={"smtpd": 1, "cleanup": 1, "smtp-out": 1})
    p.start()
    mark = p.log_mark()
    for domain in ("dot.test", "greet.test"):
        s = smtplib.SMTP("127.0.0.1", p.port, timeout=20)
        s.sendmail("s@sender.test", ["r@" + domain],
                   "Message-ID: <cut-%s@soak.test>\r\n\r\ncut off\r\n" % domain)
        s.quit()
    tap.ok(wait_for(lambda: rx_dot.events("data") and rx_greet.events("connect"), 10),
           "dot.test's receiver holds the message's final dot; greet.test's its greeting")
    workers = p.worker_pids()
    p.proc.kill()
    p.proc.wait()
    tap.ok(wait_for(lambda: not any(pid_alive(w) for w in workers), 10),
           "pmtad killed: its workers drain and go")
    p.start()
    tap.ok(wait_for(lambda: len(rx_dot.events("data")) >= 2 and rx_greet.events("data"), 3 * HOLD + 10),
           "after the restart both are delivered within seconds (retry-after is 10m)",
           "dot.test copies %d, greet.test %d" % (len(rx_dot.events("data")),
                                                  len(rx_greet.events("data"))))
    bad = re.findall(r".*(?:deferred|retry mode).*", p.log_since(mark))
    tap.ok(not bad, "no deferral and no retry mode for what our own dying processes cut off", bad[:4])
    tap.ok(wait_for(lambda: not qdump(p.spool), 10), "the queue is empty")

# --- one qmgr per queue: the qmgr of a killed pmtad that has not gone yet ---------------------
# (bench/soak restarts pmtad only once the old workers are gone; an init system may not wait.)
with Pmta(name="test_soak_lock") as p:
    p.write_config("", processes={"smtpd": 1, "cleanup": 1, "smtp-out": 1})
    p.start()
    tap.ok(p.wait_workers({"smtpd": 1, "cleanup": 1, "qmgr": 1, "smtp-out": 1}) and
           p.wait_log(r"qmgr\[\d+\]: info: schedule rebuilt", timeout=20),
           "pmtad runs; its qmgr has the queue")
    old = p.worker_pids("qmgr")[0]
    others = [w for w in p.worker_pids() if w != old]
    os.kill(old, signal.SIGSTOP)        # it cannot notice pmtad's death yet
    p.proc.kill()
    p.proc.wait()
    tap.ok(wait_for(lambda: not any(pid_alive(w) for w in others), 10),
           "the other workers of the killed pmtad went away")
    mark = p.log_mark()
    p.start()
    waiting = p.wait_log(r"qmgr\[\d+\]: warning: another qmgr still works on this queue", since=mark)
    early = p.wait_log(r"qmgr\[\d+\]: info: schedule rebuilt", since=mark, timeout=1)
    tap.ok(waiting and not early, "the new pmtad's qmgr waits for the old one (no schedule yet)")
    os.kill(old, signal.SIGCONT)
    tap.ok(wait_for(lambda: not pid_alive(old), 10),
           "the old qmgr, continued, sees its pmtad gone and exits")
    tap.ok(p.wait_log(r"qmgr\[\d+\]: info: the other qmgr is gone after \d+ ms", since=mark) and
           p.wait_log(r"qmgr\[\d+\]: info: schedule rebuilt", since=mark),
           "then the new qmgr takes the queue")

sys.exit(tap.done())
