"""pmtatest - a small harness for openpmta integration tests (stdlib only).

    from pmtatest import Tap, Pmta

    tap = Tap()
    with Pmta() as p:                 # temp dir with spool/, run/, log
        p.write_config()              # listener on 127.0.0.1:<free port>
        p.start()                     # pmtad -f; waits for "started (pid"
        tap.ok(p.worker_pids("qmgr"), "qmgr runs")
        ...
    sys.exit(tap.done())

Tap prints TAP ("ok N - name", "not ok N - name", "# diagnostics") and, at
done(), the plan "1..N" it counted.
Pmta runs one pmtad in the foreground inside a temporary directory and knows
where its files are; it finds worker processes through /proc (children of
the pmtad pid, by role name) and always stops what it started.

Environment: PMTA_BUILDDIR (set by `make check`) locates the build tree;
otherwise the tree this file lives in is used.
"""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROLES = ("smtpd", "cleanup", "qmgr", "smtp-out")


def build_dir():
    env = os.environ.get("PMTA_BUILDDIR")
    if env:
        return env
    return os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def pmtad_path():
    return os.path.join(build_dir(), "master", "pmtad")


def worker_path(role):
    return os.path.join(build_dir(), role, role)


def free_port(host="127.0.0.1"):
    """A TCP port nobody listens on right now (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_is_listening(port, host="127.0.0.1"):
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def wait_for(predicate, timeout=10.0, interval=0.05):
    """Poll PREDICATE until it returns something true; return that, or None on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            return None
        time.sleep(interval)


class Tap:
    """TAP producer. ok() returns the condition so tests can branch on it."""

    def __init__(self):
        self.n = 0
        self.failed = 0

    def ok(self, cond, name, diag=None):
        self.n += 1
        print("%s %d - %s" % ("ok" if cond else "not ok", self.n, name), flush=True)
        if not cond:
            self.failed += 1
            if diag:
                self.diag(diag)
        return bool(cond)

    def diag(self, text):
        for line in str(text).splitlines() or [""]:
            print("# " + line, flush=True)

    def skip(self, name, reason):
        self.n += 1
        print("ok %d - %s # SKIP %s" % (self.n, name, reason), flush=True)

    def skip_all(self, reason):
        """Skip the whole file (TAP "1..0 # SKIP"); nothing may have run yet."""
        print("1..0 # SKIP %s" % reason, flush=True)
        return 0

    def done(self):
        """Print the plan, counted: a test that dies early prints none, and the
        TAP driver reports it as an error."""
        print("1..%d" % self.n, flush=True)
        return 1 if self.failed else 0


def proc_status(pid):
    """/proc/PID/status as a dict of strings, or {} when the process is gone."""
    try:
        with open("/proc/%d/status" % pid) as f:
            return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)
    except OSError:
        return {}


def proc_ppid(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            stat = f.read()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: split after the last ')'.
    return int(stat[stat.rindex(")") + 2:].split()[1])


def proc_names(pid):
    """The names a process is known by: comm and the base name of argv[0]."""
    names = set()
    try:
        with open("/proc/%d/comm" % pid) as f:
            names.add(f.read().strip())
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            argv = f.read().split(b"\0")
        if argv and argv[0]:
            names.add(os.path.basename(argv[0].decode(errors="replace")))
    except OSError:
        pass
    return names


def children(ppid):
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and proc_ppid(int(entry)) == ppid:
            out.append(int(entry))
    return out


def pid_alive(pid):
    st = proc_status(pid)
    return bool(st) and not st.get("State", "").startswith("Z")


class Pmta:
    """One pmtad instance in a temporary directory."""

    def __init__(self, keep=False, name="pmtatest"):
        self.dir = tempfile.mkdtemp(prefix=name + ".")
        # Workers run as the unprivileged user: they must reach the run directory.
        os.chmod(self.dir, 0o755)
        self.spool = os.path.join(self.dir, "spool")
        self.run_dir = os.path.join(self.dir, "run")
        self.log_path = os.path.join(self.dir, "log")
        self.config_path = os.path.join(self.dir, "config")
        self.port = free_port()
        self.proc = None
        self.keep = keep or bool(os.environ.get("PMTA_KEEP"))
        self.stdout_path = os.path.join(self.dir, "pmtad.out")
        self._out = None

    # --- configuration -----------------------------------------------------
    def config_text(self, extra="", listener=True, processes=None):
        """PROCESSES overrides the per-role counts; a count of None leaves pmtad's default."""
        procs = {"smtpd": 2, "cleanup": 1, "smtp-out": 2}
        procs.update(processes or {})
        lines = [
            "# generated by pmtatest",
            "host-name mta.test.example",
            "run-directory %s" % self.run_dir,
            "spool %s" % self.spool,
            "log-file %s" % self.log_path,
            "http-mgmt-port 0",     # tests run side by side: no shared monitor port
        ]
        lines += ["%s-processes %d" % (role, n) for role, n in procs.items() if n is not None]
        if listener:
            lines.append("smtp-listener 127.0.0.1:%d" % self.port)
        if not re.search(r"^\s*name-server\b", extra, re.M):
            # Tests never ask the machine's resolver (qmgr looks up MX records for
            # rollups, smtp-out for routes): a closed local port fails every lookup
            # at once unless the test runs a DNS server of its own.
            lines.append("name-server 127.0.0.1:1")
        return "\n".join(lines) + "\n" + extra

    def write_config(self, extra="", text=None, path=None, **kw):
        """Write the config (generated unless TEXT is given); returns its path."""
        path = path or self.config_path
        with open(path, "w") as f:
            f.write(text if text is not None else self.config_text(extra, **kw))
        return path

    # --- running -----------------------------------------------------------
    def command(self, *args):
        return [pmtad_path()] + list(args)

    def run(self, *args, env=None, timeout=30):
        """Run pmtad ARGS to completion: CompletedProcess with text stdout/stderr."""
        return subprocess.run(self.command(*args), capture_output=True, text=True,
                              env=self.env(env), timeout=timeout, cwd=self.dir)

    def env(self, extra=None):
        env = dict(os.environ)
        env.pop("PMTA_LIBEXEC_DIR", None)
        env.update(extra or {})
        return env

    def start(self, args=(), env=None, wait=True, timeout=15, nofile=None):
        """Start pmtad -f -c CONFIG; unless WAIT is false, wait until it says it started.
        NOFILE: pmtad's (and so its workers') descriptor limit, as `ulimit -n` would set it."""
        import resource

        def limit():
            if nofile:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
        self._out = open(self.stdout_path, "ab")
        self.proc = subprocess.Popen(self.command("-f", "-c", self.config_path, *args),
                                     stdout=self._out, stderr=subprocess.STDOUT,
                                     env=self.env(env), cwd=self.dir,
                                     preexec_fn=limit if nofile else None)
        if wait and not self.wait_log(r"pmtad\[%d\]: info: started" % self.proc.pid,
                                      timeout=timeout):
            raise RuntimeError("pmtad did not start:\n" + self.output() + self.log())
        return self.proc

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def send_signal(self, sig):
        self.proc.send_signal(sig)

    def stop(self, sig=signal.SIGTERM, timeout=15):
        """Signal pmtad and wait; returns its exit status (None if it had to be killed)."""
        if not self.running():
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill_everything()
            return None

    def kill_everything(self):
        """SIGKILL pmtad and every worker it had (pmtad first, so nothing is
        respawned in between), and wait until they are all gone."""
        if self.proc is None:
            return
        pids = children(self.proc.pid)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        wait_for(lambda: not any(pid_alive(pid) for pid in pids), timeout=10)

    # --- observing ---------------------------------------------------------
    def ctl(self, *args):
        """pmtactl ARGS against this instance's config: (exit status, stdout and stderr)."""
        r = subprocess.run([tool_path("pmtactl"), "-c", self.config_path] + list(args),
                           capture_output=True, text=True, timeout=30)
        return r.returncode, r.stdout + r.stderr

    def log(self):
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def output(self):
        try:
            with open(self.stdout_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def log_mark(self):
        """An offset into the log: pass it to wait_log/log_since to see only newer lines."""
        return len(self.log())

    def log_since(self, mark):
        return self.log()[mark:]

    def wait_log(self, pattern, timeout=10, since=0, count=1):
        """Wait until PATTERN (a regex) matched COUNT lines after offset SINCE; the matches or None."""
        rx = re.compile(pattern)

        def found():
            hits = [m for m in (rx.search(l) for l in self.log()[since:].splitlines()) if m]
            return hits if len(hits) >= count else None
        return wait_for(found, timeout)

    def worker_pids(self, role=None):
        """Pids of live workers (of ROLE, or all) that are children of this pmtad."""
        if not self.running():
            return []
        pids = [p for p in children(self.proc.pid) if pid_alive(p)]
        if role is None:
            return sorted(pids)
        return sorted(p for p in pids if role in proc_names(p))

    def wait_workers(self, counts, timeout=10):
        """Wait until each role in COUNTS ({role: n}) has n live workers."""
        return wait_for(lambda: all(len(self.worker_pids(r)) == n for r, n in counts.items()),
                        timeout)

    # --- cleanup -----------------------------------------------------------
    SANITIZER_MARKS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:")

    def sanitizer_reports(self):
        """Lines where a sanitizer (ASan, LSan, UBSan build) reported on pmtad or a worker."""
        text = self.output() + self.log()
        return [line for line in text.splitlines()
                if any(mark in line for mark in self.SANITIZER_MARKS)]

    def close(self):
        if self.running():
            self.stop()
        if self._out:
            self._out.close()
            self._out = None
        # Workers write sanitizer reports to pmtad's output, which a test does
        # not otherwise read: fail loudly rather than let a report go unseen.
        reports = self.sanitizer_reports()
        if not self.keep and not reports:
            shutil.rmtree(self.dir, ignore_errors=True)
        if reports:
            print("not ok - sanitizer report from pmtad or a worker (kept %s)" % self.dir)
            for line in reports[:20]:
                print("# " + line)
            raise RuntimeError("sanitizer report: " + reports[0])

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def require_root(tap):
    """Skip the whole file (and exit) unless we are root: the privilege model needs it."""
    if os.geteuid() != 0:
        sys.exit(tap.skip_all("needs root (integration tests run as root in CI)"))


# --- inbound helpers (smtpd, sendmail, the queue) ---------------------------------

def http_request(port, path, method="GET", source=None, headers=None):
    """(status, body text) of one HTTP/1.0 request to 127.0.0.1:PORT (the monitor), from
    SOURCE if given; HEADERS add to or replace "Host: 127.0.0.1:PORT"."""
    head = {"Host": "127.0.0.1:%d" % port}
    head.update(headers or {})
    s = socket.create_connection(("127.0.0.1", port), timeout=10,
                                 source_address=(source, 0) if source else None)
    s.sendall(("%s %s HTTP/1.0\r\n%s\r\n" % (
        method, path, "".join("%s: %s\r\n" % kv for kv in head.items()))).encode())
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    top, _, body = data.partition(b"\r\n\r\n")
    return (int(top.split()[1]) if top else 0), body.decode(errors="replace")


def count_syscalls(pid, names, during):
    """How many of the system calls NAMES process PID (all its threads) makes while
    DURING() runs, as strace -f sees them; None when strace is missing or cannot attach."""
    if not shutil.which("strace"):
        return None
    out = tempfile.NamedTemporaryFile(prefix="strace.", delete=False)
    out.close()
    tracer = subprocess.Popen(["strace", "-f", "-qq", "-o", out.name, "-e",
                               "trace=" + ",".join(names), "-p", str(pid)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(1.0)     # -qq: nothing says it attached; give it a moment
        if tracer.poll() is not None:
            return None
        during()
    finally:
        tracer.terminate()
        tracer.wait(timeout=10)
        with open(out.name) as f:
            text = f.read()
        os.unlink(out.name)
    return len(re.findall(r"\b(?:%s)\(" % "|".join(map(re.escape, names)), text))


def tool_path(name):
    """A program built under tools/ (pmta-qdump, sendmail)."""
    return os.path.join(build_dir(), "tools", name)


def qdump(spool, body=False):
    """Every queued message as a dict (tools/pmta-qdump); [] when the queue is empty."""
    import json
    args = [tool_path("pmta-qdump")] + (["-b"] if body else []) + [spool]
    r = subprocess.run(args, capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise RuntimeError("pmta-qdump failed: " + r.stderr)
    return [json.loads(line) for line in r.stdout.splitlines() if line.strip()]


def message_ids(messages):
    """The Message-ID header values found in qdump -b output (one per message, or None)."""
    out = []
    for m in messages:
        body = m.get("body")
        if body is None and m.get("body_base64"):
            import base64
            body = base64.b64decode(m["body_base64"]).decode("latin-1")
        mid = None
        for line in (body or "").split("\r\n"):
            if line == "":
                break
            if line.lower().startswith("message-id:"):
                mid = line.split(":", 1)[1].strip()
        out.append(mid)
    return out


def find_message(messages, mid):
    """The message of qdump -b output whose Message-ID is MID, or None."""
    for m, got in zip(messages, message_ids(messages)):
        if got == mid:
            return m
    return None


def body_of(m):
    """A qdump -b message's content as text."""
    import base64
    if m.get("body") is not None:
        return m["body"]
    return base64.b64decode(m.get("body_base64", "")).decode("latin-1")


def send_each(port, addresses, sender="sender@sender.test", vmta=None, size=0):
    """One message per address over one SMTP session to 127.0.0.1:PORT (an X-Virtual-MTA
    header when VMTA is given, about SIZE bytes of body when SIZE)."""
    import smtplib
    line = "x" * 78 + "\r\n"
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as s:
        for i, to in enumerate(addresses):
            head = "From: <%s>\r\nTo: <%s>\r\nSubject: %d\r\n" % (sender, to, i)
            if vmta:
                head += "X-Virtual-MTA: %s\r\n" % vmta
            body = "message %d\r\n" % i + (line * (size // len(line)) if size else "")
            s.sendmail(sender, [to], (head + "\r\n" + body).encode())


def max_in_window(times, width=1.0, weights=None):
    """The largest sum of WEIGHTS (1 each by default) of events at TIMES inside any
    window [t - WIDTH, t] (what a receiver counts per WIDTH seconds)."""
    pts = sorted(zip(times, weights or [1] * len(times)))
    best = total = j = 0
    for t, w in pts:
        total += w
        while pts[j][0] <= t - width:
            total -= pts[j][1]
            j += 1
        best = max(best, total)
    return best


def acct_rows(path):
    """The records of an accounting CSV (<acct-file>) as dicts by its header; [] if none yet."""
    import csv
    try:
        with open(path, newline="") as f:
            return list(csv.DictReader(f))
    except FileNotFoundError:
        return []


def make_cert(directory, name="server.pem", owner="pmta", cn="mta.test.example"):
    """A self-signed certificate and its key in one PEM (as smtp-server-tls-certificate
    wants), readable by OWNER only (the workers' run-as-user)."""
    key = os.path.join(directory, name + ".key")
    crt = os.path.join(directory, name + ".crt")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=" + cn, "-keyout", key, "-out", crt],
                   check=True, capture_output=True)
    pem = os.path.join(directory, name)
    with open(pem, "w") as out:
        for part in (crt, key):
            with open(part) as f:
                out.write(f.read())
    os.unlink(key)
    os.unlink(crt)
    os.chmod(pem, 0o600)
    try:
        import pwd
        pw = pwd.getpwnam(owner)
        os.chown(pem, pw.pw_uid, pw.pw_gid)
    except (KeyError, PermissionError):
        os.chmod(pem, 0o644)
    return pem


def sha512_crypt(password):
    """A $6$ hash from the openssl CLI (what an auth_file line holds)."""
    return subprocess.run(["openssl", "passwd", "-6", password], check=True,
                          capture_output=True, text=True).stdout.strip()


class SmtpRaw:
    """A raw SMTP client socket for hostile sessions: send bytes, read replies."""

    def __init__(self, port, host="127.0.0.1", source=None, timeout=10):
        self.sock = socket.create_connection((host, port), timeout=timeout,
                                             source_address=(source, 0) if source else None)
        self.buf = b""

    def send(self, data):
        if isinstance(data, str):
            data = data.encode()
        self.sock.sendall(data)

    def line(self):
        """One reply line (bytes without CRLF); b'' when the peer closed."""
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                rest, self.buf = self.buf, b""
                return rest
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line.rstrip(b"\r")

    def reply(self):
        """One whole reply: (code, [lines]); (None, []) when the peer closed."""
        lines = []
        while True:
            l = self.line()
            if not l:
                return (None, lines)
            lines.append(l.decode("latin-1"))
            if len(l) < 4 or l[3:4] != b"-":
                try:
                    return (int(l[:3]), lines)
                except ValueError:
                    return (None, lines)

    def code(self):
        return self.reply()[0]

    def cmd(self, text):
        self.send(text + "\r\n")
        return self.code()

    def closed(self, timeout=5):
        """Does the peer close the connection (after any remaining replies)?"""
        self.sock.settimeout(timeout)
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
        except socket.timeout:
            return False
        except OSError:
            return True

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass
