#!/usr/bin/env python3
"""test_mta_sts - MTA-STS (RFC 8461) policies fetched over HTTPS and enforced.

dnsmasq serves the MX, A and _mta-sts TXT records; a Python HTTPS server on
127.0.0.40:443 serves each domain's policy at
https://mta-sts.DOMAIN/.well-known/mta-sts.txt with a certificate from a
throw-away CA (t/lib/testca.py), which openpmta trusts through
mta-sts-ca-file (policy fetch) and smtp-tls-ca-file (MX certificates): the
system trust store is never touched. Receivers are t/lib/testsmtpd.py.

  enforce.test       enforce; the MX has a CA certificate for its name:
                     delivered, "verify=mta-sts"; a second message uses the
                     cached policy (one fetch)
  badcert.test       enforce; the MX's certificate is self-signed: deferred
                     4.7.5, never sent (no retry in clear)
  notlisted.test     enforce; its MX is not in the policy's mx lines: no
                     connection at all, deferred 4.7.5
  notls.test         enforce; the MX offers no STARTTLS: deferred 4.7.4
  testing.test       testing; self-signed MX: delivered, and a warning says
                     enforce mode would have refused it
  nopolicy.test      a TXT record but nothing answers on mta-sts.nopolicy.test:
                     no policy, delivered (the fetch failure is only noted)
  plain.test         no MTA-STS, smtp-tls-ca-file set, self-signed MX: the
                     check fails and, as PowerMTA does, the mail goes in clear

Prints TAP. Needs root (port 443 on 127.0.0.40) and dnsmasq.
"""

import http.server
import os
import smtplib
import ssl
import sys
import tempfile
import threading

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))

from dnsmasq import Dnsmasq, dnsmasq_path  # noqa: E402
from pmtatest import Pmta, Tap, qdump, require_root, wait_for  # noqa: E402
from testca import TestCA  # noqa: E402
from testsmtpd import TestSmtpd  # noqa: E402

PORT = 2543
POLICY_IP = "127.0.0.40"
SENDER = "sender@sender.test"
MX = {"enforce": "127.0.0.2", "badcert": "127.0.0.3", "notlisted": "127.0.0.4",
      "notls": "127.0.0.5", "testing": "127.0.0.6", "nopolicy": "127.0.0.7",
      "plain": "127.0.0.8"}


def policy(mode, mx):
    return ("version: STSv1\r\nmode: %s\r\n%smax_age: 86400\r\n"
            % (mode, "".join("mx: %s\r\n" % m for m in mx)))


POLICIES = {
    "enforce.test": policy("enforce", ["mx.enforce.test"]),
    "badcert.test": policy("enforce", ["*.badcert.test"]),
    "notlisted.test": policy("enforce", ["mx.elsewhere.test"]),
    "notls.test": policy("enforce", ["mx.notls.test"]),
    "testing.test": policy("testing", ["mx.testing.test"]),
}

CONFIG = """
name-server %(dns)s
mta-sts-ca-file %(ca)s
<source 127.0.0.1>
  always-allow-relaying yes
</source>
<domain *>
  default-smtp-port %(port)d
  retry-after 1h
  retry-recipients-after 1h
  smtp-tls-ca-file %(ca)s
</domain>
"""


class PolicyServer:
    """HTTPS on POLICY_IP:443 serving POLICIES by Host; counts the requests per host."""

    def __init__(self, cert, key):
        self.hits = {}
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                host = (self.headers.get("Host") or "").split(":")[0]
                outer.hits[host] = outer.hits.get(host, 0) + 1
                body = POLICIES.get(host[len("mta-sts."):])
                if self.path != "/.well-known/mta-sts.txt" or body is None:
                    self.send_error(404)
                    return
                data = body.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer((POLICY_IP, 443), Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def start(self):
        self.thread.start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


class Run:
    def __init__(self):
        self.pmta = Pmta(name="mta-sts")
        self.work = tempfile.mkdtemp(prefix="mta-sts.")
        self.ca = TestCA(os.path.join(self.work, "ca"))
        names = ["mta-sts.%s.test" % d for d in MX]
        self.policy = PolicyServer(*self.ca.issue("mta-sts", names))
        certs = {
            "enforce": self.ca.issue("mx.enforce.test", ["mx.enforce.test"]),
            "badcert": TestCA.self_signed(self.ca.dir, "mx.badcert.test"),
            "notlisted": self.ca.issue("mx.notlisted.test", ["mx.notlisted.test"]),
            "testing": TestCA.self_signed(self.ca.dir, "mx.testing.test"),
            "nopolicy": self.ca.issue("mx.nopolicy.test", ["mx.nopolicy.test"]),
            "plain": TestCA.self_signed(self.ca.dir, "mx.plain.test"),
        }
        self.rx = {}
        for name, ip in MX.items():
            script = {"hostname": "mx.%s.test" % name}
            if name in certs:
                script.update(starttls=True, tls_cert=certs[name][0], tls_key=certs[name][1])
            self.rx[name] = TestSmtpd(["%s:%d" % (ip, PORT)], script, self.work, name)
        txt = [("_mta-sts.%s" % d, "v=STSv1; id=20240101T000000;") for d in POLICIES]
        txt.append(("_mta-sts.nopolicy.test", "v=STSv1; id=1;"))
        hosts = [("mx.%s.test" % n, ip) for n, ip in MX.items()]
        hosts += [("mta-sts.%s.test" % n, POLICY_IP) for n in MX if n != "nopolicy"]
        hosts.append(("mta-sts.nopolicy.test", "127.0.0.41"))   # nothing listens there
        self.dns = Dnsmasq(mx=[("%s.test" % n, "mx.%s.test" % n, 10) for n in MX], hosts=hosts,
                           txt=txt, local=["test"])

    def start(self):
        self.dns.start()
        self.policy.start()
        for rx in self.rx.values():
            rx.start()
        self.pmta.write_config(CONFIG % {"dns": self.dns.server, "port": PORT,
                                         "ca": self.ca.cert},
                               processes={"smtp-out": 1})
        self.pmta.start()

    def stop(self):
        self.pmta.close()
        for rx in self.rx.values():
            rx.stop()
        self.policy.stop()
        self.dns.stop()

    def send(self, rcpt):
        with smtplib.SMTP("127.0.0.1", self.pmta.port, timeout=10) as s:
            s.sendmail(SENDER, [rcpt], ("From: <%s>\r\nTo: <%s>\r\nSubject: sts\r\n\r\nhi\r\n"
                                        % (SENDER, rcpt)).encode())

    def queued(self, rcpt):
        return [r for m in qdump(self.pmta.spool) for r in m.get("recipients", [])
                if r.get("address") == rcpt]

    def line(self, pattern, timeout=20):
        hits = self.pmta.wait_log(pattern, timeout=timeout)
        return hits[0].string if hits else None

    def rcpts(self, name, addr):
        return [e for e in self.rx[name].events("rcpt") if e["to"] == addr]


def esc(s):
    return s.replace(".", r"\.")


def main():
    tap = Tap()
    require_root(tap)
    if dnsmasq_path() is None:
        sys.exit(tap.skip_all("dnsmasq is not installed"))
    run = Run()
    try:
        run.start()
        for n in MX:
            run.send("ok@%s.test" % n)

        ok = run.line(r"delivered .* to=ok@enforce\.test ")
        up = run.line(r"connection \d+ enforce\.test/\{default\} up: .*verify=mta-sts", 1)
        tap.ok(ok and up, "enforce: a CA-signed certificate for the listed MX: delivered, "
               "verify=mta-sts", run.pmta.log()[-2000:] if not (ok and up) else None)
        run.send("again@enforce.test")
        ok2 = run.line(r"delivered .* to=again@enforce\.test ")
        tap.ok(ok2 and run.policy.hits.get("mta-sts.enforce.test") == 1,
               "the second message uses the cached policy: fetched once", run.policy.hits)

        line = run.line(r"deferred .* to=ok@badcert\.test .*status=4\.7\.5")
        tap.ok(line and "not verified (mta-sts)" in line
               and not run.rcpts("badcert", "ok@badcert.test") and run.queued("ok@badcert.test"),
               "enforce: a self-signed MX certificate: deferred 4.7.5, never sent, queued", line)
        line = run.line(r"deferred .* to=ok@notlisted\.test .*status=4\.7\.5")
        tap.ok(line and "not in the MTA-STS policy" in line
               and not run.rx["notlisted"].events("connect"),
               "enforce: an MX the policy does not list is not even connected to", line)
        line = run.line(r"deferred .* to=ok@notls\.test .*status=4\.7\.4")
        tap.ok(line and not run.rcpts("notls", "ok@notls.test"),
               "enforce: no STARTTLS offered: deferred 4.7.4, nothing in clear", line)

        ok = run.line(r"delivered .* to=ok@testing\.test ")
        warn = run.line(r"MTA-STS testing: mx\.testing\.test would be refused in enforce mode", 1)
        tap.ok(ok and warn, "testing: a self-signed MX: delivered, with a warning", warn)

        ok = run.line(r"delivered .* to=ok@nopolicy\.test ")
        tap.ok(ok and run.policy.hits.get("mta-sts.nopolicy.test") is None,
               "a TXT record whose policy cannot be fetched: no policy, delivered")

        ok = run.line(r"delivered .* to=ok@plain\.test ")
        handshakes = run.rx["plain"].events("tls")
        mails = run.rx["plain"].events("mail")
        tap.ok(ok and handshakes and len(mails) == 1 and not mails[0]["tls"],
               "smtp-tls-ca-file without MTA-STS: the unverifiable certificate ends the TLS "
               "attempt, then the mail goes in clear (PowerMTA's rule)", (handshakes, mails))
    finally:
        run.stop()
    return tap.done()


if __name__ == "__main__":
    sys.exit(main())
