#!/usr/bin/python3
"""test_master - pmtad as a supervisor: start, privileges, restarts, reload, locks, stop.

Runs real pmtad processes in temporary directories (needs root, as in CI) and
checks what an operator would: the processes in /proc, the log, the files.
"""

import datetime
import os
import pwd
import re
import signal
import socket
import stat
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from pmtatest import Pmta, Tap, ROLES, pid_alive, port_is_listening, proc_status, \
    require_root, wait_for, worker_path  # noqa: E402

# smtpd-processes 2, cleanup-processes 2 (not the default 1), smtp-out-processes 2: the
# counts come from the directives
COUNTS = {"smtpd": 2, "cleanup": 2, "qmgr": 1, "smtp-out": 2}
PROCS = {r: n for r, n in COUNTS.items() if r != "qmgr"}
NWORKERS = sum(COUNTS.values())

tap = Tap()
require_root(tap)
try:
    PMTA_USER = pwd.getpwnam("pmta")
except KeyError:
    PMTA_USER = None


def first_line_number(text, needle):
    for i, line in enumerate(text.splitlines(), 1):
        if needle in line:
            return i
    return None


# --- --check-config and --show-settings ---------------------------------------

def test_check_config(p):
    p.write_config()
    r = p.run("--check-config", "-c", p.config_path)
    tap.ok(r.returncode == 0 and "config OK" in r.stdout,
           "--check-config on a good file exits 0 and says config OK",
           r.stdout + r.stderr)

    bad = p.config_text() + "max-smtp-outt 10\nsmtp-listener 127.0.0.1:notaport\n"
    bad_path = p.write_config(text=bad, path=os.path.join(p.dir, "bad.conf"))
    r = p.run("--check-config", "-c", bad_path)
    out = r.stdout + r.stderr
    line1 = first_line_number(bad, "max-smtp-outt")
    line2 = first_line_number(bad, "notaport")
    tap.ok(r.returncode == 1, "--check-config on a bad file exits 1", out)
    tap.ok(re.search(r"bad\.conf:%d: error: .*max-smtp-outt" % line1, out)
           and re.search(r"bad\.conf:%d: error: .*notaport" % line2, out),
           "--check-config names file:line of each error", out)


def test_show_settings(p):
    text = p.config_text() + (
        "<virtual-mta v1>\n"
        "    smtp-source-host 127.0.0.10 v1.test.example\n"
        "    <domain example.com>\n"
        "        max-msg-rate 50/m\n"
        "    </domain>\n"
        "</virtual-mta>\n"
        "<domain *>\n"
        "    retry-after 5m,15m\n"
        "</domain>\n"
        "<domain example.com>\n"
        "    max-smtp-out 7\n"
        "</domain>\n")
    path = p.write_config(text=text, path=os.path.join(p.dir, "show.conf"))
    r = p.run("--show-settings", "example.com/v1", "-c", path)
    out = r.stdout
    rows = {l.split()[0]: l for l in out.splitlines() if l.strip()}
    want = {
        "max-smtp-out": (r"\b7\b", "show.conf:%d" % first_line_number(text, "max-smtp-out 7")),
        "max-msg-rate": (r"50/m|50/1m|50 per", "show.conf:%d" % first_line_number(text, "50/m")),
        "retry-after": (r"5m", "show.conf:%d" % first_line_number(text, "retry-after")),
        "bounce-after": (r"4d12h|108h|\d", "default"),
    }
    good = r.returncode == 0
    for name, (value_rx, origin) in want.items():
        row = rows.get(name, "")
        good = good and bool(re.search(value_rx, row)) and row.rstrip().endswith(origin)
    tap.ok(good, "--show-settings prints values and their origin (file:line or default)",
           out + r.stderr)
    # Aligned columns: the origin column starts at the same place on every line.
    starts = {len(l) - len(l.rstrip().split()[-1]) - (len(l) - len(l.rstrip()))
              for l in out.splitlines() if l.strip() and len(l.split()) >= 3
              and len(l.split()[1]) < 30}
    tap.ok(r.returncode == 0 and len(starts) == 1, "--show-settings columns are aligned", out)
    r = p.run("--show-settings", "example.com/nosuchvmta", "-c", path)
    tap.ok(r.returncode == 1 and "nosuchvmta" in r.stderr,
           "--show-settings with an unknown virtual-mta exits 1 naming it",
           r.stdout + r.stderr)


# --- a running pmtad ------------------------------------------------------------

def test_startup(p):
    p.write_config(processes=PROCS)
    p.start()
    ok = p.wait_workers(COUNTS, timeout=15)
    tap.ok(ok, "all four roles run (smtpd x2, cleanup x2 as cleanup-processes says, qmgr, "
           "smtp-out x2)",
           "found %s\n%s" % ({r: p.worker_pids(r) for r in ROLES}, p.log()))
    started = p.wait_log(r"(smtpd|cleanup|qmgr|smtp-out)\[\d+\]: info: started \(pid \d+, "
                         r"config generation 1\)", count=NWORKERS)
    tap.ok(started, "every worker logs 'started (pid N, config generation 1)'", p.log())

    status = proc_status(p.pid)
    tap.ok(status.get("Uid", "").split()[:1] == ["0"], "pmtad itself runs as root", status)
    bad = []
    for pid in p.worker_pids():
        st = proc_status(pid)
        uids = st.get("Uid", "").split()
        gids = st.get("Gid", "").split()
        groups = st.get("Groups", "").split()
        if (PMTA_USER is None or set(uids) != {str(PMTA_USER.pw_uid)}
                or set(gids) != {str(PMTA_USER.pw_gid)} or groups):
            bad.append((pid, uids, gids, groups))
    tap.ok(PMTA_USER and p.worker_pids() and not bad,
           "workers run as pmta (real, effective, saved uid and gid), no supplementary groups",
           "pmta user: %s; offenders: %s" % (PMTA_USER, bad))

    tap.ok(port_is_listening(p.port), "the smtp-listener port is bound")
    with socket.create_connection(("127.0.0.1", p.port), timeout=5) as s:
        s.settimeout(5)
        try:
            greeting = s.recv(200).decode(errors="replace")
        except OSError as e:
            greeting = str(e)
    tap.ok(greeting.startswith("220 "), "an smtpd answers on the inherited listener", greeting)

    pidfile = os.path.join(p.run_dir, "pmtad.pid")
    try:
        recorded = int(open(pidfile).read().strip())
    except (OSError, ValueError):
        recorded = None
    tap.ok(recorded == p.pid, "pid file holds pmtad's pid", "%s vs %s" % (recorded, p.pid))

    socks = [os.path.join(p.run_dir, s) for s in ("private/cleanup", "private/qmgr", "control")]
    tap.ok(all(os.path.exists(s) and stat.S_ISSOCK(os.stat(s).st_mode) for s in socks),
           "internal sockets exist under the run directory", socks)

    st = os.stat(p.spool)
    tap.ok(PMTA_USER and st.st_uid == PMTA_USER.pw_uid and stat.S_IMODE(st.st_mode) == 0o750,
           "spool directory belongs to pmta, mode 0750",
           "uid %d mode %o" % (st.st_uid, stat.S_IMODE(st.st_mode)))
    snap = os.path.join(p.run_dir, "config.1")
    tap.ok(os.path.exists(snap) and stat.S_IMODE(os.stat(snap).st_mode) == 0o640,
           "configuration snapshot config.1 written, mode 0640")


def test_restart(p, role):
    old = p.worker_pids(role)
    if not old:
        tap.ok(False, "%s restarted after SIGKILL" % role, "no %s running" % role)
        tap.ok(False, "%s death logged with its signal" % role)
        return
    victim = old[0]
    mark = p.log_mark()
    os.kill(victim, signal.SIGKILL)
    ok = wait_for(lambda: len(p.worker_pids(role)) == COUNTS[role]
                  and victim not in p.worker_pids(role), timeout=10)
    tap.ok(ok, "%s restarted after SIGKILL (new pid, %d running)" % (role, COUNTS[role]),
           "before %s after %s" % (old, p.worker_pids(role)))
    tap.ok(p.wait_log(r"%s \(pid %d\) killed by signal 9 \(SIGKILL\)" % (re.escape(role), victim),
                      since=mark),
           "%s death logged with its signal" % role, p.log_since(mark))


def test_second_instance(p):
    r = p.run("-f", "-c", p.config_path, timeout=20)
    tap.ok(r.returncode == 1, "a second pmtad on the same spool exits 1", r.stdout + r.stderr)
    tap.ok("another pmtad is running on spool %s (pid %d)" % (p.spool, p.pid) in r.stderr,
           "... saying another pmtad runs on that spool, with its pid", r.stderr)
    tap.ok(p.running() and port_is_listening(p.port), "the first pmtad is unharmed")


def test_bad_reload(p):
    pids = p.worker_pids()
    bad = p.config_text() + "\nno-such-directive 1\n"
    line = first_line_number(bad, "no-such-directive")
    p.write_config(text=bad)
    mark = p.log_mark()
    p.send_signal(signal.SIGHUP)
    refused = p.wait_log(r"reload refused; keeping configuration generation 1", since=mark)
    tap.ok(refused, "SIGHUP with a broken config: 'reload refused; keeping generation 1'",
           p.log_since(mark))
    tap.ok(re.search(r"config:%d: error: .*no-such-directive" % line, p.log_since(mark)),
           "... the error is logged with file:line", p.log_since(mark))
    time.sleep(0.5)
    tap.ok(p.worker_pids() == pids and "using configuration generation" not in p.log_since(mark)
           and not os.path.exists(os.path.join(p.run_dir, "config.2")),
           "... the same workers keep generation 1", p.log_since(mark))


def test_good_reload(p):
    pids = p.worker_pids()
    p.write_config("<domain example.com>\n    max-smtp-out 3\n</domain>\n", processes=PROCS)
    mark = p.log_mark()
    p.send_signal(signal.SIGHUP)
    acks = p.wait_log(r"(smtpd|cleanup|qmgr|smtp-out)\[\d+\]: info: using configuration "
                      r"generation 2", since=mark, count=NWORKERS)
    tap.ok(acks, "SIGHUP with a valid config: every worker uses generation 2", p.log_since(mark))
    tap.ok(p.wait_log(r"all %d workers use configuration generation 2" % NWORKERS, since=mark),
           "pmtad sees every worker acknowledge generation 2", p.log_since(mark))
    gone = wait_for(lambda: not os.path.exists(os.path.join(p.run_dir, "config.1")), 5)
    tap.ok(gone and os.path.exists(os.path.join(p.run_dir, "config.2")),
           "the old snapshot is removed once everyone moved on", os.listdir(p.run_dir))
    tap.ok(p.worker_pids() == pids, "a reload restarts no worker")

    # A listener change cannot be applied by a reload: say so.
    old_port = p.port
    p.port = p.port + 1 if p.port < 65000 else p.port - 1
    p.write_config(processes=PROCS)
    p.port = old_port
    mark = p.log_mark()
    p.send_signal(signal.SIGHUP)
    tap.ok(p.wait_log(r"warning: smtp-listener changes need a restart", since=mark)
           and p.wait_log(r"using configuration generation 3", since=mark, count=NWORKERS),
           "a listener change is applied later and warned about", p.log_since(mark))


def test_stop(p):
    pids = p.worker_pids()
    start = time.monotonic()
    status = p.stop(signal.SIGTERM, timeout=15)
    took = time.monotonic() - start
    tap.ok(status == 0 and took < 8, "SIGTERM: pmtad exits 0 within a few seconds",
           "status %s after %.1fs\n%s" % (status, took, p.log()[-2000:]))
    tap.ok(pids and not [x for x in pids if pid_alive(x)], "... and every worker is gone")
    tap.ok(not os.path.exists(os.path.join(p.run_dir, "pmtad.pid")), "... pid file removed")
    tap.ok(re.search(r"pmtad\[%d\]: info: stopped" % p.pid, p.log()), "... and it logs 'stopped'")


def test_run_as_root():
    """run-as-root yes: the workers keep root (PowerMTA's default; ours is no)."""
    with Pmta(name="pmtatest-root") as p:
        p.write_config("run-as-root yes\n")
        p.start()
        p.wait_workers({"smtpd": 2, "cleanup": 1, "qmgr": 1, "smtp-out": 2}, timeout=15)
        uids = {pid: proc_status(pid).get("Uid", "").split() for pid in p.worker_pids()}
        tap.ok(uids and all(set(u) == {"0"} for u in uids.values())
               and "run-as-root yes: workers keep pmtad's credentials" in p.output() + p.log(),
               "run-as-root yes: every worker runs as root, and pmtad says so",
               "%s\n%s" % (uids, p.log()[-1500:]))


def test_unknown_user():
    with Pmta() as p:
        p.write_config("run-as-user nosuchuser-pmtatest\n")
        p.start(wait=False)
        try:
            status = p.proc.wait(timeout=15)
        except Exception:
            status = None
        out = p.output()
        tap.ok(status == 1 and "unknown user 'nosuchuser-pmtatest'" in out,
               "an unknown run-as-user stops the start-up, naming the user", out)


def death_times(log, role):
    times = []
    for line in log.splitlines():
        if re.search(r"pmtad\[\d+\]: warning: %s \(pid \d+\) exited" % re.escape(role), line):
            times.append(datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S.%f"))
    return times


def test_crash_loop():
    with Pmta(name="pmtatest-crash") as p:
        libexec = os.path.join(p.dir, "libexec")
        os.mkdir(libexec)
        os.chmod(libexec, 0o755)
        for role in ROLES:
            if role != "qmgr":
                os.symlink(worker_path(role), os.path.join(libexec, role))
        with open(os.path.join(libexec, "qmgr"), "w") as f:
            f.write("#!/bin/sh\nexit 1\n")
        os.chmod(os.path.join(libexec, "qmgr"), 0o755)
        p.write_config()
        p.start(env={"PMTA_LIBEXEC_DIR": libexec})
        throttled = p.wait_log(r"qmgr: throttling", timeout=15)
        tap.ok(throttled, "a crash-looping qmgr gets throttled", p.log()[-3000:])
        time.sleep(6)
        deaths = death_times(p.log(), "qmgr")
        gaps = [(b - a).total_seconds() for a, b in zip(deaths, deaths[1:])]
        tap.ok(6 <= len(deaths) <= 15 and gaps and gaps[-1] >= 0.9,
               "... restarts slow down (not hundreds; growing gaps)",
               "%d deaths, gaps %s" % (len(deaths), gaps))
        tap.ok(re.search(r"qmgr \(pid \d+\) exited with status 1 during startup", p.log()),
               "... deaths before HELLO count as startup failures")
        tap.ok(len(p.worker_pids("smtpd")) == COUNTS["smtpd"],
               "... while the other roles keep running")
        tap.ok(p.stop() == 0, "... and pmtad still stops cleanly")


def main():
    with Pmta() as p:
        test_check_config(p)
        test_show_settings(p)
    with Pmta() as p:
        try:
            test_startup(p)
            test_restart(p, "qmgr")
            test_restart(p, "smtpd")
            test_second_instance(p)
            test_bad_reload(p)
            test_good_reload(p)
            test_stop(p)
        except Exception as e:  # report, never leave processes behind
            tap.diag("exception: %r" % e)
            tap.diag(p.log()[-3000:])
            p.kill_everything()
    test_run_as_root()
    test_unknown_user()
    test_crash_loop()
    return tap.done()


if __name__ == "__main__":
    sys.exit(main())
