#!/usr/bin/env python3
"""test_outbound - what smtp-out does for the receiver beyond plain SMTP.

One pmtad, dnsmasq on 127.0.0.1 for MX/A records, and t/lib/testsmtpd.py
receivers on 127.0.0.2-7, all on one high port:

  auth.test      127.0.0.2  STARTTLS, then AUTH (PLAIN or LOGIN) offered only
                            after TLS and required before MAIL: auth-username /
                            auth-password authenticate inside TLS and the mail
                            arrives; the password is in no log or record of ours
  clear.test     127.0.0.3  no STARTTLS, AUTH PLAIN LOGIN in clear, required:
                            nothing is sent (never a password in clear), the
                            recipient stays queued, deferred 4.7.11
  allowclear.test 127.0.0.3 the same receiver with use-unencrypted-plain-auth
                            yes: AUTH in clear, delivered
  cram.test      127.0.0.4  only CRAM-MD5 offered, in clear: delivered
  badpass.test   127.0.0.2  a wrong password: 535 -> deferred 4.7.8, queued
  bdat.test      127.0.0.5  CHUNKING: BDAT n LAST, the message (dot lines, a
                            long body, an 8-bit line) byte-identical apart from
                            our Received header, and BDAT's count its size
  nobdat.test    127.0.0.5  ignore-chunking yes: DATA to the same receiver

Prints TAP. Needs root and dnsmasq. Only 127.0.0.0/8 is used.
"""

import csv
import os
import smtplib
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))

from dnsmasq import Dnsmasq, dnsmasq_path  # noqa: E402
from pmtatest import Pmta, Tap, qdump, require_root, wait_for  # noqa: E402
from testsmtpd import TestSmtpd  # noqa: E402

PORT = 2541
SENDER = "sender@sender.test"
PASSWORD = "s3cret-Pa55"
CREDS = {"user": "alice", "password": PASSWORD}

DOMAINS = {"auth.test": "127.0.0.2", "badpass.test": "127.0.0.2", "clear.test": "127.0.0.3",
           "allowclear.test": "127.0.0.3", "cram.test": "127.0.0.4", "bdat.test": "127.0.0.5",
           "nobdat.test": "127.0.0.5"}

CONFIG = """
name-server %(dns)s
<source 127.0.0.1>
  always-allow-relaying yes
</source>
<acct-file %(acct)s>
  records d,b,t
</acct-file>
<domain *>
  default-smtp-port %(port)d
  retry-after 1h
  retry-recipients-after 1h
</domain>
<domain auth.test>
  auth-username alice
  auth-password %(password)s
</domain>
<domain clear.test>
  auth-username alice
  auth-password %(password)s
</domain>
<domain allowclear.test>
  auth-username alice
  auth-password %(password)s
  use-unencrypted-plain-auth yes
</domain>
<domain cram.test>
  auth-username alice
  auth-password %(password)s
</domain>
<domain badpass.test>
  auth-username alice
  auth-password wrong-password
</domain>
<domain nobdat.test>
  ignore-chunking yes
</domain>
"""

BODY = (b"From: <sender@sender.test>\r\n"
        b"To: <ok@bdat.test>\r\n"
        b"Subject: chunking\r\n"
        b"Message-ID: <bdat.1@sender.test>\r\n"
        b"\r\n"
        b".a line starting with a dot\r\n"
        b"..\r\n"
        b".\r\n"
        b"caf\xc3\xa9 8-bit\r\n"
        + b"".join(b"line %06d of a long body that needs several writes\r\n" % i
                   for i in range(8000)))


def message(to, subject):
    return ("From: <%s>\r\nTo: <%s>\r\nSubject: %s\r\n\r\nbody of %s\r\n"
            % (SENDER, to, subject, subject)).encode()


class Run:
    def __init__(self):
        self.pmta = Pmta(name="outbound")
        w = self.pmta.dir
        self.rx = {
            "tls": TestSmtpd(["127.0.0.2:%d" % PORT],
                             {"starttls": True, "auth": dict(CREDS, tls_only=True, require=True,
                                                             mechanisms=["PLAIN", "LOGIN"])},
                             w, "tls"),
            "clear": TestSmtpd(["127.0.0.3:%d" % PORT],
                               {"auth": dict(CREDS, require=True, mechanisms=["PLAIN", "LOGIN"])},
                               w, "clear"),
            "cram": TestSmtpd(["127.0.0.4:%d" % PORT],
                              {"auth": dict(CREDS, require=True, mechanisms=["CRAM-MD5"])},
                              w, "cram"),
            "chunk": TestSmtpd(["127.0.0.5:%d" % PORT], {"chunking": True}, w, "chunk"),
        }
        self.dns = Dnsmasq(mx=[(d, "mx." + d, 10) for d in DOMAINS],
                           hosts=[("mx." + d, ip) for d, ip in DOMAINS.items()], local=["test"])
        self.acct = os.path.join(self.pmta.spool, "acct.csv")

    def start(self):
        self.dns.start()
        for rx in self.rx.values():
            rx.start()
        self.pmta.write_config(CONFIG % {"dns": self.dns.server, "port": PORT,
                                         "password": PASSWORD, "acct": self.acct})
        self.pmta.start()

    def stop(self):
        self.pmta.close()
        for rx in self.rx.values():
            rx.stop()
        self.dns.stop()

    def send(self, rcpts, data, sender=SENDER):
        with smtplib.SMTP("127.0.0.1", self.pmta.port, timeout=10) as s:
            s.sendmail(sender, rcpts, data)

    def delivered(self, name, rcpt):
        """The saved message RCPT arrived in at receiver NAME, and its data event."""
        rx, conn_of = self.rx[name], {}
        for ev in rx.events():
            if ev["event"] == "rcpt" and ev["to"] == rcpt and ev["reply"] == 250:
                conn_of[ev["conn"]] = True
            elif ev["event"] == "data" and conn_of.pop(ev["conn"], False):
                with open(ev["file"], "rb") as f:
                    return f.read(), ev
        return None, None

    def queued(self, rcpt):
        return [r for m in qdump(self.pmta.spool) for r in m.get("recipients", [])
                if r.get("address") == rcpt]

    def acct_rows(self):
        try:
            with open(self.acct, newline="") as f:
                return list(csv.DictReader(f))
        except FileNotFoundError:
            return []


def check_auth(tap, run):
    data, _ = run.delivered("tls", "ok@auth.test")
    wait_for(lambda: run.delivered("tls", "ok@auth.test")[0], timeout=15)
    data, _ = run.delivered("tls", "ok@auth.test")
    auths = [e for e in run.rx["tls"].events("auth") if e["user"] == "alice"]
    good = [e for e in auths if e["ok"]]
    tap.ok(data is not None and good and all(e["tls"] for e in auths),
           "auth-username/auth-password: AUTH inside STARTTLS, then the mail is accepted",
           (auths, data is not None))
    tap.ok(good and good[0]["mechanism"] == "PLAIN", "PLAIN is preferred when offered",
           good[:1])
    wait_for(lambda: run.pmta.wait_log(r"connection \d+ auth\.test/\{default\} up: .* auth=yes",
                                       timeout=0.1), timeout=5)
    tap.ok(run.pmta.wait_log(r"connection \d+ auth\.test/\{default\} up: .*tls=TLS.* auth=yes",
                             timeout=1),
           "the connection log line says tls and auth=yes")


def check_never_in_clear(tap, run):
    ok = run.pmta.wait_log(r"deferred .* to=ok@clear\.test .*status=4\.7\.11", timeout=15)
    tap.ok(ok is not None and run.queued("ok@clear.test"),
           "PLAIN/LOGIN offered only in clear: deferred 4.7.11, the recipient stays queued",
           run.pmta.log()[-2000:] if not ok else None)
    allowed = wait_for(lambda: run.delivered("clear", "ok@allowclear.test")[0], timeout=15)
    auths = run.rx["clear"].events("auth")
    mails = run.rx["clear"].events("mail")
    tap.ok(allowed and len(auths) == 1 and auths[0]["ok"] and not auths[0]["tls"]
           and len(mails) == 1,
           "use-unencrypted-plain-auth yes: AUTH in clear, delivered; clear.test's session "
           "sent no AUTH at all", (auths, mails))


def check_cram_and_refusal(tap, run):
    got = wait_for(lambda: run.delivered("cram", "ok@cram.test")[0], timeout=15)
    auths = run.rx["cram"].events("auth")
    tap.ok(got and auths and auths[0]["mechanism"] == "CRAM-MD5" and auths[0]["ok"],
           "CRAM-MD5 (the only mechanism offered) authenticates in clear", auths)
    ok = run.pmta.wait_log(r"deferred .* to=ok@badpass\.test .*status=4\.7\.8 "
                           r"reply=535 5\.7\.8", timeout=15)
    tap.ok(ok and run.queued("ok@badpass.test")
           and not [r for r in run.acct_rows() if r["rcpt"] == "ok@badpass.test"
                    and r["type"] == "b"],
           "refused credentials: deferred 4.7.8 with the server's reply, never bounced")


def check_secrets(tap, run):
    texts = [run.pmta.log(), run.pmta.output()]
    try:
        with open(run.acct) as f:
            texts.append(f.read())
    except FileNotFoundError:
        pass
    tap.ok(not any(PASSWORD in t or "wrong-password" in t for t in texts),
           "the passwords appear in no log line or accounting record")


def check_bdat(tap, run):
    wait_for(lambda: run.delivered("chunk", "ok@bdat.test")[0], timeout=20)
    data, ev = run.delivered("chunk", "ok@bdat.test")
    data = data or b""
    added = data[:-len(BODY)] if data.endswith(BODY) else b"?"
    names = {line.split(b":", 1)[0].lower() for line in added.split(b"\r\n")
             if line and line[:1] not in (b" ", b"\t")}
    bdats = run.rx["chunk"].events("bdat")
    tap.ok(ev is not None and ev["via"] == "bdat" and names == {b"received"},
           "CHUNKING: the message goes as BDAT, byte-identical apart from our Received "
           "(dot lines unstuffed, 8-bit, %d KB)" % (len(BODY) // 1024), (ev, added[:300]))
    tap.ok(bdats and bdats[0]["last"] and bdats[0]["size"] == len(data),
           "one chunk, BDAT n LAST, n = the bytes that follow", bdats[:1])
    mails = [e for e in run.rx["chunk"].events("mail")]
    rcpts = [e for e in run.rx["chunk"].events("rcpt") if e["to"] == "ok@bdat.test"]
    tap.ok(mails and rcpts and bdats and rcpts[0]["read"] == mails[0]["read"]
           and bdats[0]["read"] > rcpts[0]["read"],
           "MAIL and RCPT pipelined; BDAT waits for their replies", (mails[:1], rcpts, bdats[:1]))
    wait_for(lambda: run.delivered("chunk", "ok@nobdat.test")[0], timeout=15)
    data, ev = run.delivered("chunk", "ok@nobdat.test")
    tap.ok(ev is not None and ev["via"] == "data", "ignore-chunking yes: DATA instead", ev)
    bdat_refused = [e for e in run.rx["chunk"].events("rcpt") if e["to"] == "bad@bdat.test"]
    tap.ok(run.pmta.wait_log(r"bounced .* to=bad@bdat\.test", timeout=10) and bdat_refused
           and len(run.rx["chunk"].events("bdat")) == 1,
           "a refused recipient alone: no BDAT is sent for it")


def main():
    tap = Tap()
    require_root(tap)
    if dnsmasq_path() is None:
        sys.exit(tap.skip_all("dnsmasq is not installed"))
    run = Run()
    try:
        run.start()
        run.send(["ok@auth.test"], message("ok@auth.test", "auth"))
        run.send(["ok@clear.test"], message("ok@clear.test", "never in clear"))
        run.send(["ok@allowclear.test"], message("ok@allowclear.test", "clear allowed"))
        run.send(["ok@cram.test"], message("ok@cram.test", "cram"))
        run.send(["ok@badpass.test"], message("ok@badpass.test", "bad password"))
        run.send(["ok@bdat.test"], BODY)
        run.send(["bad@bdat.test"], message("bad@bdat.test", "refused"))
        run.send(["ok@nobdat.test"], message("ok@nobdat.test", "no chunking"))
        check_auth(tap, run)
        check_never_in_clear(tap, run)
        check_cram_and_refusal(tap, run)
        check_bdat(tap, run)
        check_secrets(tap, run)
    finally:
        run.stop()
    return tap.done()


if __name__ == "__main__":
    sys.exit(main())
