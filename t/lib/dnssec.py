"""dnssec - a validating resolver over a DNSSEC-signed test zone (unbound + ldnsutils).

    with SignedDns(workdir, zone="test",
                   signed=[("mx.dane.test", "A", "127.0.0.2"),
                           ("dane.test", "MX", "10 mx.dane.test."),
                           ("_2542._tcp.mx.dane.test", "TLSA", "3 1 1 ab12...")],
                   insecure={"insecure.test": [("insecure.test", "MX", "10 mx.insecure.test."),
                                               ...]},
                   bogus=[("_2542._tcp.mx.bogus.test", "TLSA", "3 1 1 ...")]) as dns:
        ...   # name server: dns.server ("127.0.0.1:PORT")

What it builds: the zone ZONE with the SIGNED records, signed by ldns-signzone
with a fresh KSK and ZSK (ECDSA P-256); each name of INSECURE is an unsigned
zone of its own that unbound is told is insecure (domain-insecure); BOGUS
records are signed with the zone and then changed (the last hex digit of
their data), so their signature no longer fits: validation fails (SERVFAIL).

unbound runs in the foreground on 127.0.0.1 and a free high port, serves the
zones as auth-zones "for-upstream" (so its validator checks them as if they
came from the network), trusts the zone's DS as its only trust anchor, and
sends nothing anywhere (do-not-query-localhost, no forwarders, no root hints
used: every name the tests ask for is in one of the zones). A secure answer
carries the AD bit, which is what openpmta's DANE code trusts.

Needs Debian's unbound and ldnsutils; available() says whether they are there.
Owns: the unbound child (always stopped) and the files under WORKDIR.
Security: test-only; loopback only.
"""

import os
import shutil
import subprocess
import time

from childproc import stop_child
from dnsmasq import _free_udp_tcp_port, query

UNBOUND = "/usr/sbin/unbound"


def available():
    return os.path.exists(UNBOUND) and shutil.which("ldns-signzone") is not None


def _zone_text(origin, records):
    lines = ["$ORIGIN %s." % origin, "$TTL 300",
             "@ IN SOA ns.%s. hostmaster.%s. 1 3600 600 86400 300" % (origin, origin),
             "@ IN NS ns.%s." % origin, "ns.%s. IN A 127.0.0.1" % origin]
    for name, rtype, data in records:
        lines.append("%s. IN %s %s" % (name.rstrip("."), rtype, data))
    return "\n".join(lines) + "\n"


class SignedDns:
    def __init__(self, workdir, zone="test", signed=(), insecure=None, bogus=()):
        self.dir = os.path.join(workdir, "dnssec")
        os.makedirs(self.dir, exist_ok=True)
        self.zone = zone
        self.signed = list(signed)
        self.insecure = dict(insecure or {})
        self.bogus = list(bogus)
        self.port = None
        self.proc = None

    @property
    def server(self):
        return "127.0.0.1:%d" % self.port

    def _sign(self):
        path = os.path.join(self.dir, self.zone + ".zone")
        with open(path, "w") as f:
            f.write(_zone_text(self.zone, self.signed + self.bogus))

        def keygen(*flags):
            return subprocess.run(["ldns-keygen", "-a", "ECDSAP256SHA256", *flags, self.zone],
                                  cwd=self.dir, check=True, capture_output=True,
                                  text=True).stdout.strip()
        ksk, zsk = keygen("-k"), keygen()
        subprocess.run(["ldns-signzone", "-f", path + ".signed", path, ksk, zsk], cwd=self.dir,
                       check=True, capture_output=True)
        ds = subprocess.run(["ldns-key2ds", "-n", "-2", ksk + ".key"], cwd=self.dir, check=True,
                            capture_output=True, text=True).stdout.strip()
        with open(os.path.join(self.dir, "anchor.ds"), "w") as f:
            f.write(ds + "\n")
        if self.bogus:
            self._make_bogus(path + ".signed")
        return path + ".signed"

    def _make_bogus(self, signed_path):
        """Change the data of each BOGUS record after signing: its RRSIG no longer fits."""
        with open(signed_path) as f:
            text = f.read()
        for name, rtype, data in self.bogus:
            owner = name.rstrip(".") + "."
            lines = text.split("\n")
            for i, l in enumerate(lines):
                f = l.split("\t")
                if len(f) == 5 and f[0] == owner and f[3] == rtype:
                    last = f[4][-1]
                    f[4] = f[4][:-1] + ("0" if last != "0" else "1")
                    lines[i] = "\t".join(f)
            text = "\n".join(lines)
        with open(signed_path, "w") as f:
            f.write(text)

    def _config(self, signed_path):
        conf = ["server:",
                "  interface: 127.0.0.1", "  port: %d" % self.port,
                "  do-daemonize: no", '  username: ""', '  chroot: ""',
                '  directory: "%s"' % self.dir, '  pidfile: ""',
                "  use-syslog: no", '  logfile: "%s"' % os.path.join(self.dir, "unbound.log"),
                "  verbosity: 1", '  module-config: "validator iterator"',
                '  trust-anchor-file: "%s"' % os.path.join(self.dir, "anchor.ds"),
                "  do-not-query-localhost: yes",
                "  access-control: 127.0.0.0/8 allow",
                '  local-zone: "%s." nodefault' % self.zone,
                "  cache-max-ttl: 0", "  cache-max-negative-ttl: 0",
                "  val-log-level: 2"]
        for name in self.insecure:
            conf.append('  domain-insecure: "%s"' % name)
        zones = [(self.zone, signed_path)]
        for name, records in self.insecure.items():
            path = os.path.join(self.dir, name + ".zone")
            with open(path, "w") as f:
                f.write(_zone_text(name, records))
            zones.append((name, path))
        for name, path in zones:
            conf += ["auth-zone:", '  name: "%s."' % name, '  zonefile: "%s"' % path,
                     "  for-upstream: yes", "  for-downstream: no"]
        path = os.path.join(self.dir, "unbound.conf")
        with open(path, "w") as f:
            f.write("\n".join(conf) + "\n")
        return path

    def start(self, timeout=10.0):
        signed_path = self._sign()
        for _ in range(5):
            self.port = _free_udp_tcp_port()
            conf = self._config(signed_path)
            self.proc = subprocess.Popen([UNBOUND, "-d", "-c", conf], stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    query(self.server, "ns." + self.zone, "A", timeout=0.3)
                    return self
                except (OSError, ValueError):
                    time.sleep(0.05)
            self.stop()
        raise RuntimeError("unbound did not start")

    def stop(self):
        if self.proc is not None:
            stop_child(self.proc)
            if self.proc.stderr:
                self.proc.stderr.close()
            self.proc = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
