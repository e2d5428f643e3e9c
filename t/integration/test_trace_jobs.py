#!/usr/bin/env python3
"""test_trace_jobs.py - pmtactl trace and pause/resume job against a running pmtad.

trace: pmtactl trace waits for the next delivery attempt of a queue and prints it live.
The receiver (t/lib/testsmtpd.py) offers STARTTLS and AUTH PLAIN/LOGIN; the first trace is a
new connection (connecting, greeting, EHLO, STARTTLS and the TLS parameters, AUTH with its
argument masked, MAIL/RCPT/DATA, the message elided, each recipient's result, done); the
second, with --log-data, takes the next transaction of the connection left open and shows the
message lines; --json prints pmtad's lines as they come. Errors: no such queue (exit 4), a
queue of another delivery type (exit 1), no argument or a foreign option (exit 2), pmtad
stopped (exit 3).

pause/resume job: with the queue paused, job J1 (three messages) and job J2 are queued; pause
job J1 and resume the queue: J2 is delivered, J1's recipients are held ("held" in list,
paused in show jobs, and a retry schedule does not release them); resume job J1 delivers them
in the order they were queued. A job nothing carries is exit 4; a second pause is no change.
"""
import json
import os
import smtplib
import subprocess
import sys
import time

from pmtatest import Pmta, Tap, build_dir, free_port, require_root, wait_for
from testsmtpd import TestSmtpd

tap = Tap()
PMTACTL = os.path.join(build_dir(), "tools", "pmtactl")
SECRET = "S3cret-trace-pw"
IDLE_S = 5


def ctl(p, *args):
    r = subprocess.run([PMTACTL, "-c", p.config_path] + list(args), capture_output=True,
                       text=True, timeout=60)
    return r.returncode, r.stdout, r.stderr


def send(p, rcpts, job=None, subject="trace test", body="body line\r\n"):
    head = "Subject: %s\r\n" % subject
    if job:
        head += "X-Job: %s\r\n" % job
    with smtplib.SMTP("127.0.0.1", p.port, timeout=30) as s:
        s.sendmail("sender@src.test", rcpts, head + "\r\n" + body)


def start_trace(p, *args):
    """A pmtactl trace running in the background, once pmtad is waiting for the attempt."""
    proc = subprocess.Popen([PMTACTL, "-c", p.config_path, "trace"] + list(args),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stderr.readline()
    return proc, line


def finish(proc, timeout=60):
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    return proc.returncode, out, err


def trace_tests(p, rx):
    rc, out, err = ctl(p, "trace", "trace.test")
    tap.ok(rc == 4 and "no queue matches" in err, "trace: a queue pmtad does not have: exit 4",
           (rc, err))
    send(p, ["warmup@trace.test"])  # the queue exists from now on
    wait_for(lambda: rcpts_seen(rx, "warmup@"), timeout=30)
    time.sleep(IDLE_S + 1.5)  # its connection closed: the traced attempt is a new one
    proc, first = start_trace(p, "trace.test")
    tap.ok("tracing the next delivery attempt of trace.test/{default}" in first,
           "trace: says what it waits for", first)
    send(p, ["ok1@trace.test", "ok2@trace.test"], body="the secret body line\r\n")
    rc, out, err = finish(proc)
    lines = out.splitlines()
    times = [float(l.split()[0]) for l in lines if l.strip()]
    kinds = [l.split()[1] for l in lines if l.strip()]
    tap.ok(rc == 0 and lines and "transaction done" in lines[-1],
           "trace: ends with the attempt's transaction (exit 0)", (rc, out, err))
    sys.stdout.write("".join("# " + l + "\n" for l in lines))
    tap.ok(times == sorted(times) and times and times[-1] > 0,
           "trace: each line timed in ms since the attempt began, in order", times)
    tap.ok(set(kinds) <= {"*", "<", ">", "="} and "connecting to 127.0.0.1[127.0.0.1]" in out,
           "trace: a new connection: connecting, from where to where", out)
    tap.ok(any(k == "<" and "220 " in l for k, l in zip(kinds, lines)) and "> EHLO" in out
           .replace("  ", " ") and "STARTTLS" in out,
           "trace: greeting, EHLO, STARTTLS", out)
    tap.ok("TLS established: protocol TLSv1." in out and "cipher" in out,
           "trace: the TLS parameters", out)
    tap.ok("AUTH PLAIN" in out and SECRET not in out and "AGFsaWNl" not in out and
           "235" in out, "trace: AUTH shown, its credentials masked", out)
    tap.ok("MAIL FROM:<sender@src.test>" in out and "RCPT TO:<ok1@trace.test>" in out and
           "RCPT TO:<ok2@trace.test>" in out,
           "trace: MAIL and RCPT commands", out)
    tap.ok("message data:" in out and "not shown" in out and "secret body line" not in out,
           "trace: the message elided without --log-data", out)
    tap.ok("recipient ok1@trace.test: delivered" in out and
           "recipient ok2@trace.test: delivered" in out, "trace: each recipient's result", out)

    # the connection stays open (IDLE_S): the next attempt is its next transaction
    proc, first = start_trace(p, "--log-data", "trace.test")
    send(p, ["ok3@trace.test"], subject="second trace", body="visible body line\r\n")
    rc, out, err = finish(proc)
    tap.ok(rc == 0 and "next transaction on the open connection" in out and
           "TLS TLSv1." in out and "> EHLO" not in out.replace("  ", " "),
           "trace: an idle connection's next transaction, its TLS state named", out)
    tap.ok("| Subject: second trace" in out.replace("  ", " ") and "visible body line" in out,
           "trace --log-data: the message lines", out)

    proc = subprocess.Popen([PMTACTL, "-c", p.config_path, "--json", "trace", "trace.test"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = proc.stdout.readline()
    send(p, ["ok4@trace.test"])
    rc, out, err = finish(proc)
    docs = [json.loads(l) for l in [first] + out.splitlines() if l.strip()]
    tap.ok(rc == 0 and docs[0].get("ok") is True and docs[0].get("waiting") is True and
           all("trace" in d for d in docs[1:-1]) and docs[-1].get("done") is True and
           any(d["trace"]["kind"] == ">" and d["trace"]["text"].startswith("RCPT TO:<ok4")
               for d in docs[1:-1]),
           "trace --json: pmtad's lines as they come", docs)

    send(p, ["x@pipe.test"])
    wait_for(lambda: ctl(p, "--json", "show", "queues", "pipe.test")[0] == 0, timeout=10)
    rc, out, err = ctl(p, "trace", "pipe.test")
    tap.ok(rc == 1 and "SMTP" in err, "trace: a queue of another type is refused (exit 1)",
           (rc, err))
    rc, out, err = ctl(p, "trace")
    tap.ok(rc == 2 and "needs a queue DOMAIN[/VMTA]" in err, "trace without a queue: exit 2",
           (rc, err))
    rc, out, err = ctl(p, "trace", "--dsn", "trace.test")
    tap.ok(rc == 2 and "--dsn does not apply" in err, "trace with a foreign option: exit 2",
           (rc, err))


def rcpts_seen(rx, prefix):
    return [e["to"] for e in rx.events("rcpt") if e["to"].startswith(prefix)]


def job_tests(p, rx):
    send(p, ["first@job.test"], job="J1")
    wait_for(lambda: rcpts_seen(rx, "first@"), timeout=30)
    rc, out, err = ctl(p, "pause", "job", "J1")
    tap.ok(rc == 4 and "no queued recipient" in err, "pause job: a job nothing carries: exit 4",
           (rc, err))
    rc, out, err = ctl(p, "pause", "queue", "job.test")
    for i in (1, 2, 3):
        send(p, ["j1-%d@job.test" % i], job="J1")
    send(p, ["j2@job.test"], job="J2")
    wait_for(lambda: ctl(p, "--json", "show", "status")[1] and json.loads(
        ctl(p, "--json", "show", "status")[1])["status"]["recipients"]["queued"] >= 4, timeout=15)
    rc, out, err = ctl(p, "pause", "job", "J1")
    tap.ok(rc == 0 and "job J1: paused (3 recipient(s) queued)" in out,
           "pause job J1: 3 recipients", (rc, out, err))
    rc, out, err = ctl(p, "pause", "job", "J1")
    tap.ok(rc == 0 and "no change" in out, "pause job twice: no change, exit 0", (rc, out))
    ctl(p, "resume", "queue", "job.test")
    tap.ok(wait_for(lambda: rcpts_seen(rx, "j2@"), timeout=30), "the other job is delivered")
    time.sleep(2)
    ctl(p, "schedule", "job.test")
    time.sleep(2)
    tap.ok(rcpts_seen(rx, "j1-") == [], "the paused job's recipients wait (schedule too)",
           rcpts_seen(rx, "j1-"))
    rc, out, err = ctl(p, "--json", "list", "--jobId=J1")
    rows = json.loads(out).get("recipients", []) if rc == 0 else []
    tap.ok(len(rows) == 3 and all(r["state"] == "held" for r in rows),
           "list --jobId=J1: its recipients are held", out)
    rc, out, err = ctl(p, "show", "jobs")
    tap.ok(rc == 0 and any(l.split()[:1] == ["J1"] and l.split()[-1] == "yes"
                           for l in out.splitlines()),
           "show jobs: J1 paused", out)
    rc, out, err = ctl(p, "resume", "job", "J1")
    tap.ok(rc == 0 and "job J1: resumed (3 recipient(s) ready again)" in out,
           "resume job J1: 3 recipients ready again", (rc, out, err))
    tap.ok(wait_for(lambda: len(rcpts_seen(rx, "j1-")) == 3, timeout=30) and
           rcpts_seen(rx, "j1-") == ["j1-1@job.test", "j1-2@job.test", "j1-3@job.test"],
           "resumed: delivered in the order they were queued", rcpts_seen(rx, "j1-"))
    rc, out, err = ctl(p, "resume", "job", "J1")
    tap.ok(rc == 4, "resume job: not paused and nothing queued: exit 4", (rc, out, err))
    rc, out, err = ctl(p, "pause", "job")
    tap.ok(rc == 2 and "needs a job id" in err, "pause job without an id: exit 2", (rc, err))


def main():
    require_root(tap)
    rx_port = free_port()
    with TestSmtpd(["127.0.0.1:%d" % rx_port],
                   {"starttls": True,
                    "auth": {"user": "alice", "password": SECRET,
                             "mechanisms": ["PLAIN"]}}) as rx, \
            Pmta(name="tracejobs") as p:
        p.write_config("""
<source 127.0.0.1>
    always-allow-relaying yes
    process-x-job yes
</source>
<domain *>
    smtp-hosts [127.0.0.1]:%d
    retry-after 1h
    connection-idle-timeout 30s
</domain>
<domain trace.test>
    smtp-hosts [127.0.0.1]:%d
    auth-username alice
    auth-password %s
    connection-idle-timeout %ds
</domain>
<domain job.test>
    smtp-hosts [127.0.0.1]:%d
    max-smtp-out 1
</domain>
<domain pipe.test>
    type pipe
    command /bin/false
</domain>
""" % (rx_port, rx_port, SECRET, IDLE_S, rx_port))
        p.start()
        trace_tests(p, rx)
        job_tests(p, rx)
        p.stop()
        rc, out, err = ctl(p, "trace", "trace.test")
        tap.ok(rc == 3 and "not running" in err, "trace: pmtad stopped: exit 3", (rc, err))
        tap.ok(not p.sanitizer_reports(), "no sanitizer reports", p.sanitizer_reports())
    sys.exit(tap.done())


if __name__ == "__main__":
    main()
