#!/usr/bin/env python3
"""test_control - qmgr's control socket (what pmtactl speaks) and the HTTP monitor.

pmtad runs with `smtp-out-processes 0`; t/lib/fakeout.py stands in for smtp-out,
so what a command changes is seen in what qmgr hands out:

  control socket (RUNDIR/control, JSON lines)
    status counts the queued recipients; show-queues filters by mode and pattern
    set-queue-mode: backoff and back, logged, listed with its mode events
    pause-queue: the fake sees no connection for the queue while it is paused;
      resume-queue: its mail goes out
    schedule: a recipient deferred for an hour is retried at once
    bad requests (not JSON, unknown command, no match, over-long line) get
      {"ok":false,...} with a reason, and the socket keeps serving
  pmtactl (tools/pmtactl, the operator's client of that socket)
    show status / show queues --mode=backoff / set queue --mode / pause and
    resume queue / schedule print what changed; --json is the server's JSON;
    delete --queue= drops a paused queue's recipients with b records (never delivered);
    reload makes pmtad publish configuration generation 2; an unknown command
    exits 2 with usage, a pattern that matches nothing exits 1 saying so, and a
    non-root user is told the socket is root-only
  HTTP monitor (http-mgmt-port, libmicrohttpd inside qmgr)
    /status, /queues?mode=backoff, /queueDetail, /metrics (Prometheus text)
    http-access: 127.0.0.1 monitor is served; a client from 127.0.0.2 gets 403
    POST -> 405, unknown page -> 404, format=xml -> 406
    the port already taken: pmtad still starts and accepts mail, with a warning
  log rotation: pmtactl rotate log (SIGUSR1) three times with log-rotate 2
    keeps log.1 and log.2; the workers reopen the new file. log-auto-rotation:
    two pmtads whose local midnight (their TZ, a POSIX offset chosen so that it
    comes 15 s after their start) passes while they run; the default (yes)
    rotates the log at midnight, log-auto-rotation no does not
"""

import csv
import json
import os
import subprocess
import re
import smtplib
import socket
import sys
import time
import urllib.error
import urllib.request

from fakeout import FakeOut, OK, TEMPFAIL
from pmtatest import Pmta, Tap, build_dir, free_port, http_request, require_root, wait_for
from test_qmgr import fill, qmgr_socket

PMTACTL = os.path.join(build_dir(), "tools", "pmtactl")


def pmtactl(p, *args, user=None):
    """Run pmtactl against P's config: (exit status, stdout, stderr)."""
    cmd = [PMTACTL, "-c", p.config_path] + list(args)
    if user:
        cmd = ["runuser", "-u", user, "--"] + cmd
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    return r.returncode, r.stdout, r.stderr


def ask(p, request=None, raw=None):
    """One request on RUNDIR/control; the parsed reply."""
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    s.connect(os.path.join(p.run_dir, "control"))
    s.sendall(raw if raw is not None else (json.dumps(request) + "\n").encode())
    data = b""
    while not data.endswith(b"\n"):
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    return json.loads(data) if data else None


def http(port, path, method="GET", source=None):
    """(status, body text) of one request to the monitor, from SOURCE if given."""
    return http_request(port, path, method, source, {"Host": "x"})


def answer(queue, msgid, index, attempt):
    if queue.startswith("later.test") and attempt == 1:
        return (TEMPFAIL, 451, "4.3.0", "451 4.3.0 try later")
    return (OK, 250, "2.0.0", "250 ok")


def control_tests(tap, p, fake, t0):
    st = ask(p, {"cmd": "status"})
    tap.ok(st and st.get("ok") and st["status"]["recipients"]["queued"] >= 8,
           "status: the queued recipients are counted", st)
    # --- modes
    r = ask(p, {"cmd": "set-queue-mode", "queue": "held.test", "mode": "backoff"})
    lst = ask(p, {"cmd": "show-queues", "mode": "backoff"})
    names = [q["name"] for q in lst.get("queues", [])]
    events = lst["queues"][0]["mode_events"] if names else []
    tap.ok(r.get("ok") and r.get("changed") == 1 and names == ["held.test/{default}"]
           and events and events[-1]["to"] == "backoff" and "pmtactl" in events[-1]["why"],
           "set-queue-mode backoff: show-queues --mode=backoff lists the queue with its mode event",
           (r, lst))
    tap.ok(p.wait_log(r"queue held\.test/\{default\} mode normal -> backoff: pmtactl", timeout=5),
           "... and the change is logged")
    r = ask(p, {"cmd": "set-queue-mode", "queue": "held.test/*", "mode": "normal"})
    tap.ok(r.get("ok") and r.get("changed") == 1
           and ask(p, {"cmd": "show-queues", "mode": "backoff"}).get("total") == 0,
           "set-queue-mode normal (pattern with /*) ends it", r)
    # --- pause / resume
    opens_before = len(fake.opens_for("held.test/{default}"))
    time.sleep(1.5)
    opens_paused = len(fake.opens_for("held.test/{default}"))
    q = ask(p, {"cmd": "show-queues", "queue": "held.test"})["queues"][0]
    tap.ok(opens_before == 0 and opens_paused == 0 and q["paused"] and q["recipients"] == 3,
           "a paused queue gets no connection while its mail waits", (opens_paused, q))
    r = ask(p, {"cmd": "resume-queue", "queue": "held.test"})
    ok = wait_for(lambda: len([x for x in fake.results_for("held.test/{default}") if x[5] == OK])
                  == 3, timeout=10)
    tap.ok(r.get("ok") and r.get("changed") == 1 and ok,
           "resume-queue: its 3 messages are delivered", r)
    # --- schedule
    wait_for(lambda: fake.results_for("later.test/{default}"), timeout=10)
    time.sleep(0.3)
    q = ask(p, {"cmd": "show-queues", "queue": "later.test"})["queues"][0]
    r = ask(p, {"cmd": "schedule", "queue": "later.test"})
    ok = wait_for(lambda: len(fake.results_for("later.test/{default}")) >= 2, timeout=5)
    tap.ok(q["deferred"] == 1 and r.get("ok") and r.get("recipients") == 1 and ok,
           "schedule: a recipient deferred for an hour is retried at once", (q, r))
    # --- bad requests
    bad = [ask(p, raw=b"this is not json\n"), ask(p, {"cmd": "launch-missiles"}),
           ask(p, {"cmd": "pause-queue", "queue": "nosuch.test"}),
           ask(p, {"cmd": "set-queue-mode", "queue": "held.test", "mode": "turbo"}),
           ask(p, {"cmd": "show-queues", "maxitems": "ten"}), ask(p, raw=b"x" * 70000)]
    tap.ok(all(b and b.get("ok") is False and b.get("error") for b in bad),
           "bad requests get ok=false with a reason (not JSON, unknown command, no match, "
           "bad mode, bad argument type, over-long line)", bad)
    tap.ok(ask(p, {"cmd": "status"}).get("ok"), "... and the socket keeps serving")


def acct_rows(p):
    try:
        with open(os.path.join(p.spool, "acct.csv"), newline="") as f:
            return list(csv.reader(f))
    except OSError:
        return []


def cli_tests(tap, p, fake):
    rc, out, _ = pmtactl(p, "show", "status")
    tap.ok(rc == 0 and re.search(r"recipients queued:\s+\d+", out),
           "pmtactl show status prints the totals", out)
    rc, out, _ = pmtactl(p, "show", "domains")
    rc2, vm, _ = pmtactl(p, "--json", "show", "vmtas")
    vdoc = json.loads(vm) if rc2 == 0 else {}
    tap.ok(rc == 0 and re.search(r"(?m)^idle\.test\s+1\s+4\s+[\d.]+%", out)
           and re.search(r"(?m)^\d+ of \d+ domains$", out)
           and vdoc.get("ok") and vdoc["vmtas"][0]["name"] == "{default}",
           "pmtactl show domains / show vmtas: queues summed by domain and by virtual MTA",
           (out, vm[:300]))
    rc, out, _ = pmtactl(p, "show", "settings", "later.test")
    direct = subprocess.run([os.path.join(build_dir(), "master", "pmtad"), "--show-settings",
                             "later.test", "-c", p.config_path], capture_output=True, text=True)
    tap.ok(rc == 0 and re.search(r"(?m)^retry-after\s+1h\s+\S+:\d+$", out)
           and out.startswith(direct.stdout) and "\nnow:\n  queue later.test/{default}" in out,
           "pmtactl show settings later.test: retry-after 1h from its file:line, the same lines "
           "as pmtad --show-settings", out[:300])
    rc, out, _ = pmtactl(p, "set", "queue", "--mode=backoff", "idle.test")
    rc2, table, _ = pmtactl(p, "show", "queues", "--mode=backoff")
    tap.ok(rc == 0 and "queue idle.test/{default}: mode set to backoff" in out and rc2 == 0
           and re.search(r"(?m)^idle\.test/\{default\}\s+backoff\s+yes\s+4\b", table),
           "pmtactl set queue --mode=backoff, then show queues --mode=backoff lists it "
           "(paused, 4 recipients)", out + table)
    rc, out, _ = pmtactl(p, "--json", "show", "queues", "idle.test")
    doc = json.loads(out) if rc == 0 else {}
    tap.ok(doc.get("ok") and doc["queues"][0]["mode"] == "backoff",
           "pmtactl --json prints the server's JSON", out[:300])
    rc, out, _ = pmtactl(p, "set", "queue", "--mode=normal", "idle.test")
    rc2, out2, _ = pmtactl(p, "schedule", "idle.test")
    tap.ok(rc == 0 and "mode set to normal" in out and rc2 == 0 and "1 queue" in out2,
           "pmtactl set queue --mode=normal and schedule", out + out2)
    rc, out, err = pmtactl(p, "pause", "queue", "nosuch.test")
    tap.ok(rc == 4 and "no queue matches" in (out + err),
           "a pattern that matches nothing: exit 4, said so", (rc, out, err))
    rc, out, err = pmtactl(p, "frobnicate")
    tap.ok(rc == 2 and "usage" in err, "an unknown command: usage, exit 2", (rc, err))
    rc, out, err = pmtactl(p, "--socket", os.path.join(p.run_dir, "control"), "show", "status",
                           user="nobody")
    tap.ok(rc == 5 and "root" in err,
           "a non-root user is told the control socket is root-only (exit 5)",
           (rc, err))
    # delete: gone.test is paused, so none of its 5 recipients is in delivery
    acct_before = acct_rows(p)
    rc, out, _ = pmtactl(p, "delete", "--queue=gone.test")
    gone = ask(p, {"cmd": "show-queues", "queue": "gone.test"})["queues"][0]
    def deleted_rows():
        return [r for r in acct_rows(p)[len(acct_before):] if r[:1] == ["b"]
                and any("gone.test" in c for c in r)
                and any("deleted by the operator" in c for c in r)]
    wait_for(lambda: len(deleted_rows()) >= 5, timeout=5)
    tap.ok(rc == 0 and "5 recipient(s) deleted from 1 queue(s)" in out and gone["recipients"] == 0
           and len(deleted_rows()) == 5 and len(fake.opens_for("gone.test/{default}")) == 0
           and len(p.log().split("deleted ")) > 5,
           "pmtactl delete --queue=gone.test: 5 recipients gone, 5 b records, never delivered",
           (out, gone, len(deleted_rows())))
    mark = p.log_mark()
    rc, out, _ = pmtactl(p, "reload")
    tap.ok(rc == 0 and "reload requested" in out
           and p.wait_log(r"configuration generation 2 published", since=mark, timeout=10),
           "pmtactl reload: pmtad publishes configuration generation 2", out)


def http_tests(tap, p, port):
    status, body = http(port, "/status")
    doc = json.loads(body) if status == 200 else {}
    tap.ok(status == 200 and doc["data"]["status"]["recipients"]["queued"] >= 0
           and doc["data"]["mta"]["product"].startswith("openpmta"),
           "GET /status: JSON with the totals", body[:300])
    ask(p, {"cmd": "set-queue-mode", "queue": "idle.test", "mode": "backoff"})
    status, body = http(port, "/queues?mode=backoff")
    names = [q["name"] for q in json.loads(body)["data"]["queue"]] if status == 200 else []
    tap.ok(names == ["idle.test/{default}"], "GET /queues?mode=backoff lists the queue", body[:300])
    status, body = http(port, "/queueDetail?queue=idle.test/%7Bdefault%7D")
    tap.ok(status == 200 and json.loads(body)["data"]["queue"]["mode"] == "backoff",
           "GET /queueDetail?queue=idle.test/{default}", body[:300])
    status, body = http(port, "/metrics")
    tap.ok(status == 200 and re.search(r"(?m)^openpmta_recipients_queued \d+$", body)
           and 'openpmta_queue_backoff{queue="idle.test/{default}"} 1' in body
           and "# TYPE openpmta_delivered_total counter" in body,
           "GET /metrics: Prometheus text with totals and per-queue series", body[:400])
    denied = http(port, "/status", source="127.0.0.2")
    tap.ok(denied[0] == 403 and "http-access" in denied[1],
           "a client that http-access does not allow gets 403", denied)
    tap.ok(http(port, "/status", method="POST")[0] == 405, "POST -> 405")
    tap.ok(http(port, "/nope")[0] == 404, "an unknown page -> 404")
    tap.ok(http(port, "/status?format=xml")[0] == 406, "format=xml -> 406 (JSON only)")


def rotate_test(tap):
    """pmtactl rotate log, three times with log-rotate 2."""
    with Pmta(name="ctl-rotate") as p:
        p.write_config("log-rotate 2\n<source 127.0.0.1>\n  always-allow-relaying yes\n"
                       "  log-connections yes\n  log-commands yes\n</source>\n")
        p.start()
        outs = []
        for i in range(3):
            old_inode = os.stat(p.log_path).st_ino
            outs.append(pmtactl(p, "rotate", "log"))
            # a new file (the old one's "log rotated" line must not count)
            wait_for(lambda: os.path.exists(p.log_path) and
                     os.stat(p.log_path).st_ino != old_inode and "log rotated" in p.log(),
                     timeout=5)
            c = smtplib.SMTP("127.0.0.1", p.port, timeout=10)
            c.ehlo("rotation-%d.test" % i)
            c.quit()
            wait_for(lambda: "rotation-%d.test" % i in p.log(), timeout=5)
        current = p.log()
        with open(p.log_path + ".1", errors="replace") as f:
            newest_old = f.read()
        exists = [os.path.exists("%s.%d" % (p.log_path, n)) for n in (1, 2, 3)]
        mode = os.stat(p.log_path).st_mode & 0o777
        p.stop()
    tap.ok(all(rc == 0 and "log rotation requested" in out for rc, out, _ in outs)
           and exists == [True, True, False],
           "pmtactl rotate log with log-rotate 2: log, log.1 and log.2, no log.3",
           (outs, exists))
    tap.ok(re.search(r"smtpd\[\d+\]: info: .*disconnected, 0 messages", current),
           "log-connections yes (source): smtpd logs each connection's end", current[-600:])
    tap.ok("rotation-2.test" in current and "rotation-2.test" not in newest_old
           and "rotation-1.test" in newest_old and "smtpd[" in current and mode == 0o660,
           "after a rotation the workers write to the new file (smtpd's lines), mode 0660",
           (current[-600:], oct(mode)))


def tz_before_midnight(lead):
    """A POSIX TZ whose local time is LEAD seconds before midnight now (UTC+hh:mm:ss)."""
    now = time.time()
    offset = int(86400 - lead - now % 86400) % 86400
    return "TST-%02d:%02d:%02d" % (offset // 3600, offset // 60 % 60, offset % 60)


def midnight_test(tap):
    """log-auto-rotation: the log is rotated when local midnight passes (and not with no)."""
    lead = 15
    with Pmta(name="ctl-midnight") as yes, Pmta(name="ctl-nomidnight") as no:
        yes.write_config("log-rotate 3\n")
        no.write_config("log-rotate 3\nlog-auto-rotation no\n")
        started = time.monotonic()
        yes.start(env={"TZ": tz_before_midnight(lead)})
        no.start(env={"TZ": tz_before_midnight(lead - (time.monotonic() - started))})
        late = time.monotonic() - started > lead - 2
        # the master looks at the clock every 5 s
        rotated = wait_for(lambda: os.path.exists(yes.log_path + ".1"), timeout=lead + 30)
        time.sleep(max(0, started + lead + 7 - time.monotonic()))
        old = open(yes.log_path + ".1", errors="replace").read() if rotated else ""
        tap.ok(not late and rotated and "rotating the log: midnight (log-auto-rotation)" in old
               and "log rotated" in yes.log(),
               "log-auto-rotation (default yes): the log is rotated at local midnight",
               (late, old[-500:], yes.log()[-500:]))
        tap.ok(not late and not os.path.exists(no.log_path + ".1")
               and "rotating the log" not in no.log(),
               "log-auto-rotation no: local midnight passes, the log stays", no.log()[-500:])


def port_taken_test(tap):
    with Pmta(name="ctl-busy") as p:
        busy = socket.socket()
        busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        busy.bind(("0.0.0.0", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        try:
            p.write_config("http-mgmt-port %d\n<source 127.0.0.1>\n  always-allow-relaying yes\n"
                           "</source>\n" % port)
            p.start()
            c = smtplib.SMTP("127.0.0.1", p.port, timeout=10)
            code = c.sendmail("a@b.test", ["u@c.test"], "Subject: x\r\n\r\nx\r\n")
            c.quit()
            tap.ok(code == {} and p.wait_log(r"http-mgmt-port %d: cannot listen" % port, timeout=5),
                   "http-mgmt-port already taken: a warning, and mail is still accepted")
        finally:
            busy.close()


def main():
    tap = Tap()
    require_root(tap)
    port = free_port("127.0.0.1")
    with Pmta(name="control") as p:
        p.write_config("""
smtp-out-processes 0
smtpd-processes 1
http-mgmt-port %d
http-access 127.0.0.1 monitor
http-access 127.0.0.0/8 none
<acct-file %s/acct.csv>
  records d,b
</acct-file>
<domain later.test>
  retry-after 1h
  retry-recipients-after 1h
</domain>
""" % (port, p.spool))
        for domain, n in (("held", 3), ("later", 1), ("idle", 4), ("gone", 5)):
            fill(p, "-n", str(n), "-r", "1", "-d", domain)
        p.start()
        # held.test is paused before any smtp-out exists, so nothing can have gone out
        r = ask(p, {"cmd": "pause-queue", "queue": "held.test"})
        ask(p, {"cmd": "pause-queue", "queue": "idle.test"})
        ask(p, {"cmd": "pause-queue", "queue": "gone.test"})
        tap.ok(r and r.get("ok") and r.get("queues") == ["held.test/{default}"],
               "pause-queue answers with the queues it paused", r)
        fake = FakeOut(qmgr_socket(p), answer=answer, txn_delay=0.02).start()
        t0 = time.monotonic()
        control_tests(tap, p, fake, t0)
        cli_tests(tap, p, fake)
        http_tests(tap, p, port)
        fake.stop()
        p.stop()
        log = p.log()
    tap.ok(not re.search(r"(error|panic|fatal):", log), "no errors in the log",
           "\n".join(l for l in log.splitlines() if re.search(r"(error|panic):", l))[:500])
    port_taken_test(tap)
    rotate_test(tap)
    midnight_test(tap)
    sys.exit(tap.done())


if __name__ == "__main__":
    main()
