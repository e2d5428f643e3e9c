"""postfix - a private Postfix instance for tests (Debian's postfix package).

    with PrivatePostfix(workdir, listen="127.0.0.30:2549", hostname="mx.remote.test",
                        relay_domains=["remote.test"],
                        transports={"remote.test": "[127.0.0.31]:2550",
                                    "sender.test": "[127.0.0.1]:2551"}) as pf:
        ...   # pf.log() is its maillog

It runs `postfix -c DIR start` with its own configuration directory, queue,
data directory and log file under WORKDIR, an smtpd on LISTEN only, and
routes by transport_maps to the given next hops: no DNS (disable_dns_lookups),
no local delivery (mydestination empty), so every message either relays or
bounces - with Postfix's own DSNs, which is what the tests want from it.
Timings are short (queue_run_delay 1s, minimal_backoff_time 1s) so a deferred
message is retried and a delay warning (delay_warning_time) can come quickly.

Needs root (Postfix's master) and Debian's postfix package; available() says
whether it is there. Owns: the Postfix processes it starts (stopped with
`postfix stop`, then its master killed if it lingers) and the files under
WORKDIR. Security: test-only; it listens on one loopback address.
"""

import os
import shutil
import signal
import subprocess
import time

POSTFIX = "/usr/sbin/postfix"


def available():
    return os.path.exists(POSTFIX) and os.path.exists("/etc/postfix/master.cf") and \
        os.geteuid() == 0


class PrivatePostfix:
    def __init__(self, workdir, listen, hostname, relay_domains, transports, extra=None):
        self.dir = os.path.join(workdir, "postfix")
        self.etc = os.path.join(self.dir, "etc")
        self.listen = listen
        self.hostname = hostname
        self.relay_domains = list(relay_domains)
        self.transports = dict(transports)
        self.extra = dict(extra or {})
        self.maillog = os.path.join(self.dir, "maillog")
        self.pid = None     # the master's, read once it started

    def _write_config(self):
        os.makedirs(self.etc, exist_ok=True)
        os.makedirs(os.path.join(self.dir, "queue"), exist_ok=True)
        os.makedirs(os.path.join(self.dir, "data"), exist_ok=True)
        shutil.chown(os.path.join(self.dir, "data"), "postfix")
        for d in (self.dir, os.path.join(self.dir, "queue")):
            os.chmod(d, 0o755)
        transport = ", ".join("%s=smtp:%s" % kv for kv in self.transports.items())
        main = {
            "compatibility_level": "3.6",
            "queue_directory": os.path.join(self.dir, "queue"),
            "data_directory": os.path.join(self.dir, "data"),
            "mail_owner": "postfix", "setgid_group": "postdrop",
            "inet_interfaces": "127.0.0.1",   # must name a configured address; smtpd below
            "inet_protocols": "ipv4",
            "myhostname": self.hostname, "mydomain": self.hostname.split(".", 1)[1],
            "myorigin": "$mydomain", "mydestination": "",
            "relay_domains": ", ".join(self.relay_domains),
            "mynetworks": "127.0.0.0/8",
            "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
            "transport_maps": "inline:{ %s }" % transport,
            "disable_dns_lookups": "yes", "smtp_dns_support_level": "disabled",
            "maillog_file": self.maillog, "maillog_file_prefixes": self.dir,
            "alias_maps": "", "alias_database": "", "local_recipient_maps": "",
            "smtpd_banner": "$myhostname ESMTP",
            "queue_run_delay": "1s", "minimal_backoff_time": "1s", "maximal_backoff_time": "2s",
            "smtp_tls_security_level": "none",
        }
        main.update(self.extra)
        with open(os.path.join(self.etc, "main.cf"), "w") as f:
            for k, v in main.items():
                f.write("%s = %s\n" % (k, v))
        with open("/etc/postfix/master.cf") as f:
            lines = f.read().splitlines()
        out = []
        for line in lines:
            w = line.split()
            if len(w) >= 8 and not line.startswith("#") and w[1] in ("inet", "unix", "fifo",
                                                                     "pass", "unix-dgram"):
                if w[0] == "smtp" and w[1] == "inet":
                    w[0] = self.listen
                w[4] = "n"     # no chroot: the queue is not under /var/spool
                line = " ".join(w[:7]) + " " + " ".join(w[7:])
            out.append(line)
        with open(os.path.join(self.etc, "master.cf"), "w") as f:
            f.write("\n".join(out) + "\n")

    def _postfix(self, *args):
        # `script` gives Postfix a terminal: without one (and without syslog) it says nothing
        cmd = "%s -c %s %s" % (POSTFIX, self.etc, " ".join(args))
        return subprocess.run(["script", "-qc", cmd, "/dev/null"], capture_output=True,
                              text=True, timeout=60)

    def start(self, timeout=20.0):
        self._write_config()
        r = self._postfix("start")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "daemon started" in self.log() and self.master_pid():
                self.pid = self.master_pid()
                return self
            time.sleep(0.1)
        raise RuntimeError("postfix did not start: %s %s" % (r.stdout, self.log()[-2000:]))

    def master_pid(self):
        try:
            with open(os.path.join(self.dir, "queue", "pid", "master.pid")) as f:
                return int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def stop(self):
        pid = self.pid or self.master_pid()
        self._postfix("stop")
        deadline = time.monotonic() + 10
        while pid and time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except OSError:
                return
            time.sleep(0.1)
        if pid:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass

    def log(self):
        try:
            with open(self.maillog, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
