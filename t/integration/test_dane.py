#!/usr/bin/env python3
"""test_dane - DANE for SMTP (RFC 7672, use-dane) against a validating resolver.

DNS is unbound validating a DNSSEC-signed zone "test." built for the run
(t/lib/dnssec.py: ldns-signzone, the zone's DS as the only trust anchor), so
the AD bit openpmta trusts is a real validator's verdict. Receivers are
t/lib/testsmtpd.py with certificates from a throw-away CA (t/lib/testca.py):

  dane-ee.test     127.0.0.2  TLSA 3 1 1 of its self-signed key: delivered,
                              "verify=dane" on the connection's log line
  dane-bad.test    127.0.0.3  TLSA 3 1 1 of another key: deferred 4.7.5, the
                              receiver never sees MAIL (no retry in clear)
  dane-ta.test     127.0.0.4  TLSA 2 1 1 of the CA, chain sent: delivered
  dane-notls.test  127.0.0.5  TLSA, but no STARTTLS offered: deferred 4.7.4
  insecure.test    127.0.0.6  an unsigned zone with a wrong TLSA: ignored
                              (no AD bit), delivered with opportunistic TLS
  notlsa.test      127.0.0.7  signed, no TLSA: delivered, no DANE
  bogus.test       127.0.0.8  a TLSA record whose signature fails (SERVFAIL):
                              no connection at all, deferred 4.7.5
  nodane.test      -> mx.dane-bad.test with use-dane no: delivered

Prints TAP. Needs root, unbound and ldnsutils (skips without them).
"""

import os
import smtplib
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))

import dnssec  # noqa: E402
from pmtatest import Pmta, Tap, qdump, require_root, wait_for  # noqa: E402
from testca import TestCA  # noqa: E402
from testsmtpd import TestSmtpd  # noqa: E402

PORT = 2542
SENDER = "sender@sender.test"
HOSTS = {"dane-ee": "127.0.0.2", "dane-bad": "127.0.0.3", "dane-ta": "127.0.0.4",
         "dane-notls": "127.0.0.5", "insecure": "127.0.0.6", "notlsa": "127.0.0.7",
         "bogus": "127.0.0.8"}

CONFIG = """
name-server %(dns)s
<source 127.0.0.1>
  always-allow-relaying yes
</source>
<domain *>
  default-smtp-port %(port)d
  retry-after 1h
  retry-recipients-after 1h
  use-mta-sts no
</domain>
<domain nodane.test>
  use-dane no
</domain>
"""


def message(to):
    return ("From: <%s>\r\nTo: <%s>\r\nSubject: dane\r\n\r\nbody\r\n" % (SENDER, to)).encode()


class Run:
    def __init__(self):
        self.pmta = Pmta(name="dane")
        self.work = tempfile.mkdtemp(prefix="dane.")
        ca = TestCA(os.path.join(self.work, "ca"))
        self.ca = ca
        certs = {}
        for name in ("dane-ee", "dane-bad", "insecure", "notlsa", "bogus"):
            certs[name] = TestCA.self_signed(ca.dir, "mx.%s.test" % name)
        ta_cert, ta_key = ca.issue("mx.dane-ta.test", ["mx.dane-ta.test"])
        certs["dane-ta"] = (ca.chain(ta_cert), ta_key)
        other, _ = TestCA.self_signed(ca.dir, "someone-else")
        spki = {n: TestCA.spki_sha256(c) for n, (c, _) in certs.items()}
        signed, bogus = [], []
        for name, ip in HOSTS.items():
            if name == "insecure":
                continue
            mx = "mx.%s.test" % name
            signed += [("%s.test" % name, "MX", "10 %s." % mx), (mx, "A", ip)]
        tlsa = "_%d._tcp.mx.%%s.test" % PORT
        signed += [(tlsa % "dane-ee", "TLSA", "3 1 1 " + spki["dane-ee"]),
                   (tlsa % "dane-bad", "TLSA", "3 1 1 " + TestCA.spki_sha256(other)),
                   (tlsa % "dane-ta", "TLSA", "2 1 1 " + TestCA.spki_sha256(ca.cert)),
                   (tlsa % "dane-notls", "TLSA", "3 1 1 " + spki["dane-ee"]),
                   ("nodane.test", "MX", "10 mx.dane-bad.test.")]
        bogus = [(tlsa % "bogus", "TLSA", "3 1 1 " + spki["bogus"])]
        insecure = {"insecure.test": [("insecure.test", "MX", "10 mx.insecure.test."),
                                      ("mx.insecure.test", "A", HOSTS["insecure"]),
                                      (tlsa % "insecure", "TLSA",
                                       "3 1 1 " + TestCA.spki_sha256(other))]}
        self.dns = dnssec.SignedDns(self.work, signed=signed, insecure=insecure, bogus=bogus)
        self.rx = {}
        for name, ip in HOSTS.items():
            script = {"hostname": "mx.%s.test" % name}
            if name != "dane-notls":
                script.update(starttls=True, tls_cert=certs[name][0], tls_key=certs[name][1])
            self.rx[name] = TestSmtpd(["%s:%d" % (ip, PORT)], script, self.work, name)

    def start(self):
        self.dns.start()
        for rx in self.rx.values():
            rx.start()
        self.pmta.write_config(CONFIG % {"dns": self.dns.server, "port": PORT})
        self.pmta.start()

    def stop(self):
        self.pmta.close()
        for rx in self.rx.values():
            rx.stop()
        self.dns.stop()

    def send(self, rcpt):
        with smtplib.SMTP("127.0.0.1", self.pmta.port, timeout=10) as s:
            s.sendmail(SENDER, [rcpt], message(rcpt))

    def queued(self, rcpt):
        return [r for m in qdump(self.pmta.spool) for r in m.get("recipients", [])
                if r.get("address") == rcpt]

    def line(self, pattern, timeout=20):
        hits = self.pmta.wait_log(pattern, timeout=timeout)
        return hits[0].string if hits else None


def delivered(tap, run, domain, verify, name):
    ok = run.line(r"delivered .* to=ok@%s " % domain.replace(".", r"\."))
    up = run.line(r"connection \d+ %s/\{default\} up: .*" % domain.replace(".", r"\."), 1)
    if verify:
        good = up and ("verify=%s" % verify) in up
    else:
        good = up and "tls=TLS" in up and "verify=" not in up
    tap.ok(ok and good, name, up or run.pmta.log()[-1500:])


def refused(tap, run, domain, status, rxname, name, why=None):
    line = run.line(r"deferred .* to=ok@%s .*status=%s" % (domain.replace(".", r"\."),
                                                          status.replace(".", r"\.")))
    rcpts = [e for e in run.rx[rxname].events("rcpt") if e["to"] == "ok@" + domain]
    tap.ok(line and not rcpts and run.queued("ok@" + domain) and (why is None or why in line),
           name, line or run.pmta.log()[-1500:])


def main():
    tap = Tap()
    require_root(tap)
    if not dnssec.available():
        sys.exit(tap.skip_all("unbound and ldnsutils are needed for a validating resolver"))
    run = Run()
    try:
        run.start()
        for d in ("dane-ee", "dane-bad", "dane-ta", "dane-notls", "insecure", "notlsa", "bogus",
                  "nodane"):
            run.send("ok@%s.test" % d)
        delivered(tap, run, "dane-ee.test", "dane",
                  "DANE-EE 3 1 1 matches the server's key: delivered, verify=dane")
        refused(tap, run, "dane-bad.test", "4.7.5", "dane-bad",
                "DANE-EE of another key: deferred 4.7.5, never sent (not retried in clear)",
                "not verified (dane)")
        delivered(tap, run, "dane-ta.test", "dane",
                  "DANE-TA 2 1 1 of the issuing CA (chain sent, name checked): delivered")
        refused(tap, run, "dane-notls.test", "4.7.4", "dane-notls",
                "TLSA records but no STARTTLS offered: deferred 4.7.4, nothing sent in clear")
        delivered(tap, run, "insecure.test", None,
                  "a TLSA record without the AD bit (unsigned zone) is ignored: "
                  "opportunistic TLS, delivered")
        delivered(tap, run, "notlsa.test", None,
                  "a signed zone without TLSA (validated denial): no DANE, delivered")
        line = run.line(r"deferred .* to=ok@bogus\.test .*status=4\.7\.5")
        tap.ok(line and "TLSA lookup" in line and not run.rx["bogus"].events("connect")
               and run.queued("ok@bogus.test"),
               "a TLSA answer that fails validation (SERVFAIL): the host is not even "
               "connected to, deferred 4.7.5", line or run.pmta.log()[-1500:])
        ok = run.line(r"delivered .* to=ok@nodane\.test ")
        tap.ok(ok and [e for e in run.rx["dane-bad"].events("mail") if e["tls"]],
               "use-dane no: the same host's wrong TLSA is not looked at, delivered over TLS")
    finally:
        run.stop()
    return tap.done()


if __name__ == "__main__":
    sys.exit(main())
