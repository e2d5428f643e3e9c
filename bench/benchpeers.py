"""benchpeers.py - the MTAs bench/relay compares and the private world they run in.

One harness for every peer: pmtad (this build tree), Postfix (installed), OpenSMTPD and
Exim (Debian packages extracted with `apt-get download` + `dpkg -x` into PEERS_DIR/root,
never installed: their packages conflict with Postfix's), Haraka (npm, PEERS_DIR/haraka).
`bench/peers setup` fetches them; everything else happens inside a private network and
mount namespace that bench/relay enters first (see enter_namespace):
  * its own loopback, so every MTA can listen and deliver on port 25 without meeting the
    host's listeners or the other engineers' tests;
  * /usr overlaid with PEERS_DIR/root/usr (the extracted packages appear at the paths they
    were built for), /etc and /var overlaid with a scratch upper layer (the peers' users,
    /etc/resolv.conf -> our dnsmasq, /var/lib/opensmtpd), /var/spool and /run private:
    nothing of the host's mail setup is read for writing, and nothing outlives the run.
Each MTA runs under a reaper (a child subreaper that waits for everything below it), so
the CPU of the processes an MTA forks and reaps, or orphans, is all counted in one tree.

Owns: PEERS_DIR's layout, the namespace, the per-peer configurations (kept as close to
equivalent as each MTA allows; the differences are listed in PEER_NOTES).
Security: benchmark only; loopback inside a private network namespace; runs as root.
"""

import base64
import ctypes
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.environ.get("PMTA_SRCDIR") or os.path.dirname(HERE)
TOP = os.environ.get("PMTA_BUILDDIR") or os.path.dirname(HERE)
sys.path.insert(0, os.path.join(SRC, "t", "lib"))
os.environ.setdefault("PMTA_BUILDDIR", TOP)
from pmtatest import Pmta, port_is_listening, wait_for  # noqa: E402
from dnsmasq import Dnsmasq  # noqa: E402

PEERS_DIR = os.environ.get("PMTA_PEERS_DIR", "/var/tmp/openpmta-peers")
EXTRACTED = os.path.join(PEERS_DIR, "root")
HARAKA_DIR = os.path.join(PEERS_DIR, "haraka")
MAILBENCH = os.path.join(TOP, "bench", "mailbench")
CLK_TCK = os.sysconf("SC_CLK_TCK")

# packages extracted, never installed (they provide mail-transport-agent, like Postfix)
EXTRACT_DEBS = ["opensmtpd", "opensmtpd-filter-dkimsign", "exim4-daemon-light", "exim4-base",
                "opendkim"]
# their shared libraries, installed (plain libraries conflict with nothing)
LIB_DEBS = ["libidn12", "libmilter1.0.1", "libopensmtpd0", "libopendbx1", "libevent-2.1-7",
            "libgnutls-dane0", "libopendkim11", "libmemcached11", "librbl1", "libvbr2",
            "liblua5.3-0", "libunbound8"]
HARAKA_VERSION = "3.3.4"
# the files of the extracted packages that would shadow Postfix's inside the namespace
SHADOWING = ["usr/sbin/sendmail", "usr/bin/mailq", "usr/bin/newaliases", "usr/sbin/newaliases",
             "usr/sbin/mailq", "usr/lib/sendmail", "usr/bin/rmail", "usr/sbin/rsmtp",
             "usr/sbin/runq", "usr/sbin/makemap"]

SINK_PORT = 25
DKIM_DOMAIN, DKIM_SELECTOR, DKIM_ED_SELECTOR = "source.test", "bench", "bench-ed"
RETRY_S = 5     # every peer's retry interval for a deferred recipient, where it has one

PEER_NOTES = {
    "pmtad": "sync on (default); <domain *> max-smtp-out 5 (hot)",
    "postfix": "fsync always; default_destination_concurrency_limit 5 (hot); DKIM through "
               "the OpenDKIM milter (Debian's opendkim, extracted)",
    "opensmtpd": "no STARTTLS in (6.8's server TLS fails under OpenSSL 3), TLS out; no per-domain connection limit (built-in 10 per MX host, and "
                 "every test domain has its own MX address); no retry interval setting: the "
                 "harness runs `smtpctl schedule all` every %d s; DKIM by filter-dkimsign"
                 % RETRY_S,
    "exim": "spool files fsynced (default); no per-domain connection limit (one delivery "
            "process per message); queue runner every %d s; DKIM built in" % RETRY_S,
    "haraka": "nodes=cpus; no fsync knob (writes its queue files without fsync); global "
              "concurrency only; DKIM by haraka-plugin-dkim",
}


# --- setup: fetch the peers (bench/peers setup) ---------------------------------------------

def run(cmd, **kw):
    print("+ " + " ".join(cmd), flush=True)
    return subprocess.run(cmd, check=True, **kw)


def setup():
    """Download and extract OpenSMTPD, Exim, OpenDKIM; install their libraries; npm Haraka."""
    debs = os.path.join(PEERS_DIR, "debs")
    os.makedirs(debs, exist_ok=True)
    os.chmod(debs, 0o777)   # apt-get download drops to _apt where it can
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    tools = [] if shutil.which("npm") else ["nodejs", "npm"]     # Haraka's runtime
    run(["apt-get", "install", "-y", "--no-install-recommends"] + LIB_DEBS + tools, env=env)
    run(["apt-get", "download"] + EXTRACT_DEBS, cwd=debs)
    shutil.rmtree(EXTRACTED, ignore_errors=True)
    for f in sorted(os.listdir(debs)):
        if f.endswith(".deb"):
            run(["dpkg", "-x", os.path.join(debs, f), EXTRACTED])
    for rel in SHADOWING:
        p = os.path.join(EXTRACTED, rel)
        if os.path.lexists(p):
            os.unlink(p)
    os.makedirs(HARAKA_DIR, exist_ok=True)
    run(["npm", "install", "--no-audit", "--no-fund", "--prefix", HARAKA_DIR,
         "Haraka@" + HARAKA_VERSION])
    missing = check()
    if missing:
        sys.exit("bench/peers setup: still missing: " + ", ".join(missing))
    print("bench/peers setup: peers ready in " + PEERS_DIR)


def check(peers=tuple(EXTRACT_DEBS) + ("postfix", "haraka")):
    """What bench/relay needs for PEERS and does not find (empty when all is there)."""
    need = {"opensmtpd": [os.path.join(EXTRACTED, "usr/sbin/smtpd"),
                          os.path.join(EXTRACTED, "usr/libexec/opensmtpd/filter-dkimsign")],
            "exim": [os.path.join(EXTRACTED, "usr/sbin/exim4")],
            "postfix": [os.path.join(EXTRACTED, "usr/sbin/opendkim"), "/usr/sbin/postfix"],
            "haraka": [os.path.join(HARAKA_DIR, "node_modules/.bin/haraka"), "/usr/bin/node"]}
    missing = [p for peer in peers for p in need.get(peer, []) if not os.path.exists(p)]
    for tool in ("unshare", "dnsmasq", "ip"):
        if not shutil.which(tool) and not os.path.exists("/usr/sbin/" + tool):
            missing.append(tool)
    if not os.path.exists(MAILBENCH):
        missing.append(MAILBENCH + " (make)")
    return missing


# --- the namespace ----------------------------------------------------------------------------

def enter_namespace():
    """Re-run this script in a new network + mount namespace (once), then lay out the world."""
    if os.environ.get("BENCH_NAMESPACE") != "1":
        env = dict(os.environ, BENCH_NAMESPACE="1")
        os.execvpe("unshare", ["unshare", "--mount", "--net", "--propagation", "private",
                               sys.executable] + sys.argv, env)
    scratch = tempfile.mkdtemp(prefix="bench-ns.", dir="/tmp")
    os.chmod(scratch, 0o755)    # the MTAs' own users reach their directories below
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    # getaddrinfo(AI_ADDRCONFIG) (OpenSMTPD's) finds no IPv4 while 127.0.0.1 is the only
    # address: glibc counts any other one, even on lo
    subprocess.run(["ip", "addr", "add", "127.0.0.250/32", "dev", "lo"], check=True)
    usr_lower = os.path.join(EXTRACTED, "usr")
    if os.path.isdir(usr_lower):
        subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                        "lowerdir=%s:/usr" % usr_lower, "/usr"], check=True)
    for top in ("etc", "var"):
        up, wk = os.path.join(scratch, top + ".up"), os.path.join(scratch, top + ".wk")
        os.makedirs(up)
        os.makedirs(wk)
        subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                        "lowerdir=/%s,upperdir=%s,workdir=%s" % (top, up, wk), "/" + top],
                       check=True)
    spool = os.path.join(scratch, "spool")     # plain ext4, not overlay: spools fsync
    os.makedirs(spool)
    subprocess.run(["mount", "--bind", spool, "/var/spool"], check=True)
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", "/run"], check=True)
    with open("/etc/resolv.conf.bench", "w") as f:
        f.write("nameserver 127.0.0.1\noptions attempts:2 timeout:2\n")
    os.replace("/etc/resolv.conf.bench", "/etc/resolv.conf")
    with open("/etc/mailname", "w") as f:
        f.write("bench.test\n")
    for user in ("opensmtpd", "opensmtpq", "Debian-exim", "haraka", "opendkim"):
        subprocess.run(["useradd", "-r", "-M", "-d", "/nonexistent", "-s", "/usr/sbin/nologin",
                        user], stderr=subprocess.DEVNULL)
    os.makedirs("/var/lib/opensmtpd/empty", exist_ok=True)
    os.makedirs("/var/spool/smtpd", exist_ok=True)
    return scratch


def domain_ip(n):
    """The MX address of dN.test: each test domain a receiver of its own, as in real life."""
    return "127.1.%d.%d" % (n // 250, n % 250 + 1)


class World:
    """What every run shares: the workload, DNS for it, a certificate and the DKIM key."""

    def __init__(self, args, scratch):
        self.args = args
        self.dir = scratch
        self.hot = args.workload == "hot"
        self.domains = args.domains if args.domains else (1000 if self.hot else 1)
        self.sizes = [int(s) for s in args.sizes.split(",")]
        self.cert, self.key = self.make_cert()
        self.dkim = self.hot or getattr(args, "dkim", False)    # RSA-2048 signing on
        # pmtad-dkim / pmtad-dkim2 (pmtad with DKIM forced on) need the keys in any workload
        forced = any(n.startswith("pmtad-dkim") for n in getattr(args, "peers", "").split(","))
        self.dkim_key = self.make_dkim_key() if self.dkim or forced else None
        self.ed_key = self.make_ed_key() if forced else None
        mx = [("d%d.test" % n, "mx.d%d.test" % n, 10) for n in range(self.domains)]
        hosts = [("mx.d%d.test" % n, domain_ip(n)) for n in range(self.domains)]
        mx.append((DKIM_DOMAIN, "mx." + DKIM_DOMAIN, 10))      # bounces go back to the sink
        hosts.append(("mx." + DKIM_DOMAIN, "127.0.0.9"))
        txt = [("%s._domainkey.%s" % (DKIM_SELECTOR, DKIM_DOMAIN), self.dkim_txt())] \
            if self.dkim_key else []
        if self.ed_key:
            txt.append(("%s._domainkey.%s" % (DKIM_ED_SELECTOR, DKIM_DOMAIN), self.ed_txt()))
        self.dns = Dnsmasq(mx=mx, hosts=hosts, local=["test"], txt=txt, port=53)
        self.dns.start()

    def make_cert(self):
        key, crt = os.path.join(self.dir, "tls.key"), os.path.join(self.dir, "tls.crt")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                        "-subj", "/CN=bench.test", "-keyout", key, "-out", crt],
                       check=True, capture_output=True)
        os.chmod(key, 0o644)    # every peer's own user reads it; a throwaway key
        return crt, key

    def make_dkim_key(self):
        key = os.path.join(self.dir, "dkim.key")
        subprocess.run(["openssl", "genrsa", "-out", key, "2048"], check=True,
                       capture_output=True)
        os.chmod(key, 0o644)
        return key

    def make_ed_key(self):
        key = os.path.join(self.dir, "dkim-ed25519.key")
        subprocess.run(["openssl", "genpkey", "-algorithm", "ED25519", "-out", key], check=True,
                       capture_output=True)
        os.chmod(key, 0o644)
        return key

    def ed_txt(self):
        der = subprocess.run(["openssl", "pkey", "-in", self.ed_key, "-pubout", "-outform", "DER"],
                             check=True, capture_output=True).stdout
        return "v=DKIM1; k=ed25519; p=" + base64.b64encode(der[-32:]).decode()

    def dkim_txt(self):
        pub = subprocess.run(["openssl", "rsa", "-in", self.dkim_key, "-pubout"], check=True,
                             capture_output=True, text=True).stdout
        b64 = "".join(line for line in pub.splitlines() if not line.startswith("-----"))
        return "v=DKIM1; k=rsa; p=" + b64

    def pem(self, owner=None):
        """Certificate and key in one file (pmtad and the sink want that)."""
        path = os.path.join(self.dir, "tls-%s.pem" % (owner or "all"))
        with open(path, "w") as out:
            for part in (self.cert, self.key):
                with open(part) as f:
                    out.write(f.read())
        os.chmod(path, 0o600)
        if owner:
            pw = pwd.getpwnam(owner)
            os.chown(path, pw.pw_uid, pw.pw_gid)
        return path

    def close(self):
        self.dns.stop()
        if not os.environ.get("PMTA_KEEP"):
            shutil.rmtree(self.dir, ignore_errors=True)


# --- the sink and the source ----------------------------------------------------------------

class Sink:
    """bench/mailbench sink on 0.0.0.0:25 (every MX address); .stats() its counters."""

    def __init__(self, world):
        self.world = world
        self.stats_path = os.path.join(world.dir, "sink.stats")
        argv = [MAILBENCH, "sink", "--listen", "0.0.0.0:%d" % SINK_PORT,
                "--stats", self.stats_path]
        if world.hot:
            argv += ["--cert", world.pem()]
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, start_new_session=True)
        if not wait_for(lambda: port_is_listening(SINK_PORT, "127.0.0.9"), 10):
            raise RuntimeError("mailbench sink did not start")

    def stats(self):
        try:
            with open(self.stats_path) as f:
                return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", f.read())}
        except OSError:
            return {}

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def source_argv(world, port, starttls=True):
    a = world.args
    argv = [MAILBENCH, "source", "--connect", "127.0.0.1:%d" % port, "--sessions",
            str(a.sessions), "--messages", str(a.messages), "--sizes", a.sizes,
            "--domains", str(world.domains), "--per-conn", str(a.per_conn)]
    if world.hot:
        argv += ["--fates"] + (["--starttls"] if starttls else [])
    return argv


# --- /proc: CPU and memory of an MTA's process tree --------------------------------------------

def stat_of(pid):
    """(ppid, utime+stime, cutime+cstime) in ticks, or None."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[1]), int(fields[11]) + int(fields[12]), int(fields[13]) + int(fields[14])


def pss_kb(pid):
    """Proportional set size: shared pages split among their users, so sums are fair."""
    try:
        with open("/proc/%d/smaps_rollup" % pid) as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree(root):
    """ROOT and all its descendants."""
    parent = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = stat_of(int(name))
            if st:
                parent[int(name)] = st[0]
    out, todo = [root], [root]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        out += kids
        todo += kids
    return out


def cpu_ticks(root):
    """All CPU ROOT's tree has used: each live process's own time plus what it reaped
    (a reaped process's time, and all it had reaped, moves into its reaper's cutime)."""
    total = 0
    for pid in tree(root):
        st = stat_of(pid)
        if st:
            total += st[1] + st[2]
    return total


class Sampler(threading.Thread):
    """Peak sum of PSS over ROOT's tree, sampled every 0.25 s (the tree listed anew every
    2 s: walking /proc and page tables more often costs the MTAs measurable CPU)."""

    def __init__(self, root):
        super().__init__(daemon=True)
        self.root = root
        self.peak_kb = 0
        self.stop = threading.Event()

    def run(self):
        pids, listed = [], 0.0
        while not self.stop.is_set():
            if time.monotonic() - listed >= 2:
                pids, listed = tree(self.root), time.monotonic()
            self.peak_kb = max(self.peak_kb, sum(pss_kb(p) for p in pids))
            self.stop.wait(0.25)


def reaper_main(argv):
    """`benchpeers.py reaper CMD...`: run CMD as a child subreaper and wait for every process
    below until none is left, so that an MTA's whole tree, daemonised or not, stays ours.
    SIGTERM, or the harness dying, kills the whole tree."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(36, 1, 0, 0, 0)                  # PR_SET_CHILD_SUBREAPER
    libc.prctl(1, signal.SIGTERM, 0, 0, 0)      # PR_SET_PDEATHSIG

    def kill_tree(*_):
        for pid in tree(os.getpid())[1:]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    signal.signal(signal.SIGTERM, kill_tree)
    subprocess.Popen(argv)
    while True:
        try:
            os.wait()
        except ChildProcessError:
            return 0
        except InterruptedError:
            continue


def under_reaper(argv, log, env=None, cwd=None):
    return subprocess.Popen([sys.executable, os.path.abspath(__file__), "reaper"] + argv,
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env=env, cwd=cwd, start_new_session=True)


# --- the peers ------------------------------------------------------------------------------------

class Peer:
    """One MTA as a private relay: start() -> listening port; .root is the reaper's pid."""
    name = "?"
    port = 2525
    inbound_tls = True      # offers STARTTLS to the injector in the hot workload

    def __init__(self, world):
        self.world = world
        self.dir = tempfile.mkdtemp(prefix="bench-%s." % self.name, dir=world.dir)
        os.chmod(self.dir, 0o755)
        self.reaper = None
        self.log = open(os.path.join(self.dir, "out.log"), "ab")

    @property
    def root(self):
        return self.reaper.pid

    def start(self):
        raise NotImplementedError

    def kick(self):
        """Called every RETRY_S seconds during a run (for peers without a retry setting)."""

    def stop(self):
        try:
            if self.reaper and self.reaper.poll() is None:
                self.halt()
        finally:
            if self.reaper and self.reaper.poll() is None:
                self.reaper.terminate()         # the reaper kills what is left
                self.reaper.wait(30)
            self.log.close()

    def halt(self):
        """The MTA's own way to stop (before the remaining tree is killed)."""

    def wait_listening(self, timeout=30):
        if not wait_for(lambda: port_is_listening(self.port), timeout):
            with open(os.path.join(self.dir, "out.log"), errors="replace") as f:
                tail = f.read()[-3000:]
            raise RuntimeError("%s did not start listening:\n%s" % (self.name, tail))

    @staticmethod
    def version():
        return ""


class PmtadPeer(Peer):
    name = "pmtad"
    messages_per_commit = None      # from cleanup's stats line, after halt()
    sign = None                     # None: as the workload says; "rsa"; "dual" (Ed25519 + RSA)

    def start(self):
        w = self.world
        sign = self.sign or ("rsa" if w.dkim else None)
        self.p = Pmta(name="bench-pmtad")
        self.port = self.p.port
        # the namespace's dnsmasq (pmtatest otherwise points name-server at a closed port)
        extra = "name-server 127.0.0.1:53\ntotal-max-smtp-in 1000\n"
        extra += "<source 127.0.0.1>\n    always-allow-relaying yes\n"
        if w.hot:
            extra += "    allow-starttls yes\n"
        extra += "</source>\n"
        if sign == "dual":
            extra += "domain-key %s,%s,%s\n" % (DKIM_ED_SELECTOR, DKIM_DOMAIN, w.ed_key)
        if sign:
            extra += "domain-key %s,%s,%s\n" % (DKIM_SELECTOR, DKIM_DOMAIN, w.dkim_key)
        if w.hot:
            extra += "smtp-server-tls-certificate %s\n" % w.pem("pmta")
        if w.hot or sign:
            extra += "<domain *>\n"
            if sign:
                extra += "    dkim-sign yes\n"
            if sign == "dual":
                extra += "    dkim-algorithm ed25519-sha256, rsa-sha256\n"
            if w.hot:
                extra += ("    max-smtp-out 5\n    retry-after %ds\n"
                          "    retry-recipients-after %ds\n" % (RETRY_S, RETRY_S))
            extra += "</domain>\n"
        self.p.write_config(extra, processes={"smtpd": None, "smtp-out": None})
        self.reaper = under_reaper(self.p.command("-f", "-c", self.p.config_path), self.log,
                                   env=self.p.env(), cwd=self.p.dir)
        if not self.p.wait_log(r"pmtad\[\d+\]: info: started", timeout=20):
            raise RuntimeError("pmtad did not start:\n" + self.p.log()[-3000:])
        self.wait_listening()

    def halt(self):
        for pid in tree(self.reaper.pid)[1:2]:
            os.kill(pid, signal.SIGTERM)
        wait_for(lambda: len(tree(self.reaper.pid)) <= 1, 15)
        stats = re.findall(r"cleanup\[\d+\]: info: stats: messages=(\d+) commits=(\d+)",
                           self.p.log())
        if stats and int(stats[-1][1]):
            self.messages_per_commit = int(stats[-1][0]) / int(stats[-1][1])
        if not os.environ.get("PMTA_KEEP"):
            shutil.rmtree(self.p.dir, ignore_errors=True)

    @staticmethod
    def version():
        return "pmtad"


class PostfixPeer(Peer):
    name = "postfix"

    def start(self):
        w = self.world
        conf, spool, data = (os.path.join(self.dir, d) for d in ("etc", "spool", "data"))
        for d in (conf, spool, data):
            os.makedirs(d)
        shutil.chown(data, "postfix", "postfix")
        self.conf, self.spool = conf, spool
        with open("/etc/postfix/master.cf") as f:
            master = f.read()
        master = re.sub(r"(?m)^smtp\s+inet\s.*$", "127.0.0.1:%d inet n - n - - smtpd"
                        % self.port, master)
        # no chroot: the services must see the namespace's /etc/resolv.conf
        master = re.sub(r"(?m)^(\S+\s+(?:unix|inet|fifo|pass|unix-dgram)\s+\S+\s+\S+\s+)y(\s)",
                        r"\1n\2", master)
        with open(os.path.join(conf, "master.cf"), "w") as f:
            f.write(master)
        main = """# private benchmark instance: a relay
compatibility_level = 3.6
queue_directory = %(spool)s
data_directory = %(data)s
myhostname = bench-postfix.test
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
default_process_limit = 200
alias_maps =
alias_database =
maillog_file_prefixes = %(top)s
maillog_file = %(top)s/maillog
""" % {"spool": spool, "data": data, "top": self.dir}
        script = ""
        if w.hot:
            main += """smtpd_tls_cert_file = %(crt)s
smtpd_tls_key_file = %(key)s
smtpd_tls_security_level = may
smtp_tls_security_level = may
default_destination_concurrency_limit = 5
initial_destination_concurrency = 5
minimal_backoff_time = %(retry)ds
maximal_backoff_time = %(retry)ds
queue_run_delay = %(retry)ds
""" % {"crt": w.cert, "key": w.key, "retry": RETRY_S}
        if w.dkim:
            milter_port = 8891
            main += """smtpd_milters = inet:127.0.0.1:%(mp)d
non_smtpd_milters = inet:127.0.0.1:%(mp)d
milter_default_action = tempfail
""" % {"mp": milter_port}
            okconf = os.path.join(self.dir, "opendkim.conf")
            with open(okconf, "w") as f:
                f.write("Mode s\nDomain %s\nSelector %s\nKeyFile %s\nSocket inet:%d@127.0.0.1\n"
                        "Canonicalization relaxed/relaxed\nUserID opendkim\nSyslog no\n"
                        "Background no\nPidFile %s/opendkim.pid\nRequireSafeKeys no\n"
                        % (DKIM_DOMAIN, DKIM_SELECTOR, w.dkim_key, milter_port, self.dir))
            script = "/usr/sbin/opendkim -x %s -f &\n" % okconf
        with open(os.path.join(conf, "main.cf"), "w") as f:
            f.write(main)
        script += "postfix -c %s start\n" % conf
        self.reaper = under_reaper(["sh", "-c", script], self.log)
        self.wait_listening()

    def halt(self):
        subprocess.run(["postfix", "-c", self.conf, "stop"], capture_output=True, timeout=60)
        wait_for(lambda: not os.path.exists(os.path.join(self.spool, "pid", "master.pid")), 15)

    @staticmethod
    def version():
        return "postfix " + subprocess.run(["postconf", "-d", "-h", "mail_version"],
                                           capture_output=True, text=True).stdout.strip()


class OpensmtpdPeer(Peer):
    name = "opensmtpd"
    # 6.8's privilege-separated server key fails every handshake under OpenSSL 3
    # ("SSL routines::internal error", RSA and ECDSA alike): no STARTTLS in, TLS out only
    inbound_tls = False

    def start(self):
        w = self.world
        conf = os.path.join(self.dir, "smtpd.conf")
        text, listen_opts = "", ""
        if w.dkim:
            text += ('filter "dkim" proc-exec "/usr/libexec/opensmtpd/filter-dkimsign '
                     '-d %s -s %s -k %s -c relaxed/relaxed"\n'
                     % (DKIM_DOMAIN, DKIM_SELECTOR, w.dkim_key))
            listen_opts = ' filter "dkim"'
        text += ("listen on 127.0.0.1 port %d hostname bench-opensmtpd.test%s\n"
                 'action "relay" relay helo bench-opensmtpd.test\n'
                 'match from src 127.0.0.0/8 for any action "relay"\n' % (self.port, listen_opts))
        with open(conf, "w") as f:
            f.write(text)
        shutil.rmtree("/var/spool/smtpd", ignore_errors=True)   # the namespace's own
        os.makedirs("/var/spool/smtpd")
        os.chmod("/var/spool/smtpd", 0o711)
        self.reaper = under_reaper(["/usr/sbin/smtpd", "-d", "-f", conf], self.log)
        self.wait_listening()

    def kick(self):
        subprocess.run(["/usr/sbin/smtpctl", "schedule", "all"], capture_output=True, timeout=10)

    def halt(self):
        subprocess.run(["/usr/sbin/smtpctl", "stop"], capture_output=True, timeout=30)
        wait_for(lambda: len(tree(self.reaper.pid)) <= 1, 15)

    @staticmethod
    def version():
        return "opensmtpd 6.8.0p2"


class EximPeer(Peer):
    name = "exim"

    def start(self):
        w = self.world
        spool = os.path.join(self.dir, "spool")
        os.makedirs(os.path.join(self.dir, "log"))
        os.makedirs(spool)
        for d in (spool, os.path.join(self.dir, "log")):
            shutil.chown(d, "Debian-exim", "Debian-exim")
        text = """# private benchmark instance: a relay
primary_hostname = bench-exim.test
spool_directory = %(spool)s
log_file_path = %(dir)s/log/%%slog
exim_user = Debian-exim
exim_group = Debian-exim
never_users = root
daemon_smtp_ports = %(port)d
local_interfaces = 127.0.0.1
smtp_accept_max = 1000
smtp_accept_queue_per_connection = 0
host_lookup =
rfc1413_hosts =
acl_smtp_rcpt = acl_check_rcpt
""" % {"spool": spool, "dir": self.dir, "port": self.port}
        if w.hot:
            text += "tls_advertise_hosts = *\ntls_certificate = %s\ntls_privatekey = %s\n" % (
                w.cert, w.key)
        else:
            text += "tls_advertise_hosts =\n"
        text += """
begin acl
acl_check_rcpt:
  accept hosts = 127.0.0.0/8
  deny

begin routers
dnslookup:
  driver = dnslookup
  transport = remote_smtp
  no_more

begin transports
remote_smtp:
  driver = smtp
"""
        if w.dkim:
            text += ("  dkim_domain = %s\n  dkim_selector = %s\n  dkim_private_key = %s\n"
                     "  dkim_canon = relaxed\n" % (DKIM_DOMAIN, DKIM_SELECTOR, w.dkim_key))
        if not w.hot:
            text += "  hosts_avoid_tls = *\n"
        text += "\nbegin retry\n*  *  F,1h,%ds\n" % RETRY_S
        os.makedirs("/etc/exim4", exist_ok=True)
        with open("/etc/exim4/exim4.conf", "w") as f:   # the namespace's /etc (overlay)
            f.write(text)
        self.reaper = under_reaper(["/usr/sbin/exim4", "-bdf", "-q%ds" % RETRY_S], self.log)
        self.wait_listening()

    @staticmethod
    def version():
        out = subprocess.run(["/usr/sbin/exim4", "-bV"], capture_output=True, text=True).stdout
        m = re.search(r"Exim version (\S+)", out)
        return "exim " + (m.group(1) if m else "?")


class HarakaPeer(Peer):
    name = "haraka"

    def start(self):
        w = self.world
        cfg = os.path.join(self.dir, "config")
        os.makedirs(os.path.join(self.dir, "queue"))
        shutil.chown(os.path.join(self.dir, "queue"), "haraka", "haraka")
        # what `haraka -i` lays out: the shipped defaults (connection.ini, ...), then ours
        shutil.copytree(os.path.join(HARAKA_DIR, "node_modules", "Haraka", "config"), cfg)

        def put(name, text):
            with open(os.path.join(cfg, name), "w") as f:
                f.write(text)
        put("smtp.ini", "listen=127.0.0.1:%d\nuser=haraka\ngroup=haraka\nnodes=cpus\npublic_ip=127.0.0.1\n"
            % self.port)
        put("log.ini", "[main]\nlevel=%s\n" % os.environ.get("BENCH_HARAKA_LOG", "notice"))
        put("me", "bench-haraka.test\n")
        put("host_list", "")
        put("relay.ini", "[relay]\nacl=true\n")
        put("relay_acl_allow", "127.0.0.0/8\n")
        outbound = "[main]\ntemp_fail_intervals=%ds*50\nlocal_mx_ok=true\n" % RETRY_S
        plugins = ["relay"]
        if w.hot:
            put("tls.ini", "[main]\nkey=%s\ncert=%s\n" % (w.key, w.cert))
            plugins = ["tls", "relay"]
        else:
            outbound += "enable_tls=false\n"
        if w.dkim:
            plugins.append("dkim")
            os.makedirs(os.path.join(cfg, "dkim", DKIM_DOMAIN))
            shutil.copy(w.dkim_key, os.path.join(cfg, "dkim", DKIM_DOMAIN, "private"))
            put(os.path.join("dkim", DKIM_DOMAIN, "selector"), DKIM_SELECTOR + "\n")
            put("dkim.ini", "[sign]\nenabled=true\nselector=%s\ndomain=%s\n"
                "[canon]\nbody=relaxed\nheader=relaxed\n[verify]\nenabled=false\n"
                % (DKIM_SELECTOR, DKIM_DOMAIN))
        put("outbound.ini", outbound)
        put("plugins", "\n".join(plugins) + "\n")
        haraka = os.path.join(HARAKA_DIR, "node_modules", ".bin", "haraka")
        self.reaper = under_reaper([haraka, "-c", self.dir], self.log, cwd=self.dir)
        self.wait_listening()

    @staticmethod
    def version():
        return "haraka " + HARAKA_VERSION


class PmtadDkimPeer(PmtadPeer):
    """pmtad with RSA-2048 signing whatever the workload: DKIM off and on in one run."""
    name = "pmtad-dkim"
    sign = "rsa"

    @staticmethod
    def version():
        return "pmtad + DKIM (RSA-2048)"


class PmtadDualPeer(PmtadPeer):
    """pmtad signing twice, Ed25519 then RSA-2048 (dkim-algorithm ed25519-sha256, rsa-sha256)."""
    name = "pmtad-dkim2"
    sign = "dual"

    @staticmethod
    def version():
        return "pmtad + DKIM (Ed25519 + RSA)"


PEERS = {"pmtad": PmtadPeer, "postfix": PostfixPeer, "opensmtpd": OpensmtpdPeer,
         "exim": EximPeer, "haraka": HarakaPeer, "pmtad-dkim": PmtadDkimPeer,
         "pmtad-dkim2": PmtadDualPeer}


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "reaper":
    sys.exit(reaper_main(sys.argv[2:]))
