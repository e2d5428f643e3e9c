#!/usr/bin/python3
"""test_reload - a bad configuration can never stop the MTA.

A reload (SIGHUP or `pmtactl reload`) is validated in a child process; pmtad
accepts it only when that child exits 0 in time. Checked against a running
pmtad that relays to t/lib/testsmtpd.py through smtp-hosts:

  - the validator crashes (SIGSEGV, through the test hook --test-validator-fault)
    or hangs (killed at --test-validator-timeout): the reload is refused and
    logged with the reason, the master and the same workers carry on, and mail
    is still accepted and delivered;
  - the fuzz-found `<>` and a value that cannot work (an smtp-hosts port out
    of range) are refused with file:line, mail still flows;
  - a DKIM key that root can read but the run-as-user cannot is a
    --check-config error with file:line, and refuses a reload; a key that
    becomes unreadable before a reload keeps the last good one: the reload is
    refused and messages are still signed;
  - pmtactl reload goes through the same path, and a good config is published.
"""

import os
import pwd
import re
import shutil
import signal
import smtplib
import subprocess
import sys
import time
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from pmtatest import Pmta, Tap, build_dir, free_port, require_root, wait_for  # noqa: E402
from testsmtpd import TestSmtpd  # noqa: E402

RX_IP = "127.0.0.33"
DOMAIN = "reload.test"
TIMEOUT_S = 3
KEY = os.path.join(os.environ.get("PMTA_SRCDIR", os.path.join(os.path.dirname(__file__), "..", "..")),
                   "t", "data", "dkim", "test.key")
PMTACTL = os.path.join(build_dir(), "tools", "pmtactl")
RUN = uuid.uuid4().hex[:8]

tap = Tap()
require_root(tap)
try:
    pwd.getpwnam("pmta")
    HAVE_PMTA_USER = True
except KeyError:
    HAVE_PMTA_USER = False


def config(rx_port, key, extra=""):
    return """
<source 127.0.0.1>
    always-allow-relaying yes
</source>
domain-key s1,%s,%s
<domain %s>
    smtp-hosts [%s]:%d
    retry-after 1s
    dkim-sign yes
</domain>
%s""" % (DOMAIN, key, DOMAIN, RX_IP, rx_port, extra)


def send(p, tag):
    """One message through SMTP; its Message-ID, or None if it was not accepted."""
    mid = "<reload-%s-%s@%s>" % (RUN, tag, DOMAIN)
    body = ("From: <sender@%s>\r\nTo: <r@%s>\r\nSubject: reload %s\r\nMessage-ID: %s\r\n\r\n"
            "hello\r\n" % (DOMAIN, DOMAIN, tag, mid))
    try:
        with smtplib.SMTP("127.0.0.1", p.port, timeout=20) as s:
            s.sendmail("sender@%s" % DOMAIN, ["r@%s" % DOMAIN], body.encode())
        return mid
    except (smtplib.SMTPException, OSError):
        return None


def delivered(rx, mid, timeout=20):
    """The saved copy of MID at the receiver (its text), or None."""
    def find():
        for name in os.listdir(rx.datadir):
            with open(os.path.join(rx.datadir, name), errors="replace") as f:
                text = f.read()
            if mid in text:
                return text
        return None
    return wait_for(find, timeout)


def mail_flows(p, rx, tag, signed=True):
    mid = send(p, tag)
    text = delivered(rx, mid) if mid else None
    ok = text is not None and (not signed or "DKIM-Signature:" in text)
    tap.ok(ok, "%s: mail is still accepted and delivered%s" % (tag, ", signed" if signed else ""),
           p.log()[-2000:])


def refused(p, mark, reason, what):
    hit = p.wait_log(r"pmtad\[%d\]: error: reload refused; keeping configuration generation 1: %s"
                     % (p.pid, reason), since=mark, timeout=TIMEOUT_S + 15)
    tap.ok(hit, "%s: the reload is refused and says why" % what, p.log_since(mark))
    return hit


def test_validator_faults(p, rx, fault, good):
    pids = p.worker_pids()
    for word, reason in (("crash", "the configuration validator died of SIGSEGV"),
                         ("hang", "the configuration validator did not finish within %d s"
                          % TIMEOUT_S)):
        with open(fault, "w") as f:
            f.write(word + "\n")
        p.write_config(good + "# changed for %s\n" % word)
        mark = p.log_mark()
        p.send_signal(signal.SIGHUP)
        refused(p, mark, re.escape(reason), "validator %s" % word)
        time.sleep(0.5)
        tap.ok(p.running() and p.worker_pids() == pids
               and not os.path.exists(os.path.join(p.run_dir, "config.2")),
               "validator %s: the master and the same workers carry on with generation 1" % word,
               p.log_since(mark))
        mail_flows(p, rx, "after-" + word)
    os.unlink(fault)


def test_bad_configs(p, rx, good):
    for what, extra, needle, line_re in (
            ("fuzz-found <>", "<>\n", "<>", r"malformed tag '<>'"),
            ("smtp-hosts port out of range",
             "<domain other.test>\n smtp-hosts [127.0.0.2]:70000\n</domain>\n",
             "smtp-hosts [127.0.0.2]:70000", r"bad smtp-hosts")):
        text = good + extra
        p.write_config(text=text)
        line = next(i for i, l in enumerate(text.splitlines(), 1) if l.strip() == needle)
        mark = p.log_mark()
        p.send_signal(signal.SIGHUP)
        refused(p, mark, "the configuration has errors", what)
        tap.ok(re.search(r"config:%d: error: .*%s" % (line, line_re), p.log_since(mark)),
               "%s: logged with file:line" % what, p.log_since(mark))
        mail_flows(p, rx, "after-" + what.split()[0])


def test_keys_as_user(p, rx, rx_port):
    if not HAVE_PMTA_USER:
        tap.skip("keys as the run-as-user", "no user pmta")
        return
    private = os.path.join(p.dir, "root-only.key")
    shutil.copy(KEY, private)
    os.chmod(private, 0o600)            # root reads it, pmta cannot
    text = p.config_text(config(rx_port, private))
    bad_path = p.write_config(text=text, path=os.path.join(p.dir, "rootkey.conf"))
    line = next(i for i, l in enumerate(text.splitlines(), 1) if l.startswith("domain-key"))
    r = p.run("--check-config", "-c", bad_path)
    out = r.stdout + r.stderr
    tap.ok(r.returncode == 1 and re.search(r"rootkey\.conf:%d: error: cannot read DKIM key file "
                                           r"'%s': Permission denied" % (line, re.escape(private)),
                                           out),
           "--check-config: a key pmta cannot read is an error at its file:line", out)

    p.write_config(text=text)
    mark = p.log_mark()
    p.send_signal(signal.SIGHUP)
    refused(p, mark, "the configuration has errors", "a key only root can read")
    tap.ok(re.search(r"config:%d: error: cannot read DKIM key file .*Permission denied" % line,
                     p.log_since(mark)), "... logged with file:line", p.log_since(mark))
    mail_flows(p, rx, "after-rootkey")


def test_key_becomes_unreadable(p, rx, rx_port, key):
    p.write_config(config(rx_port, key))
    os.chmod(key, 0o000)
    try:
        mark = p.log_mark()
        p.send_signal(signal.SIGHUP)
        refused(p, mark, "the configuration has errors", "a key that became unreadable")
        mail_flows(p, rx, "after-unreadable-key")
    finally:
        os.chmod(key, 0o644)


def test_pmtactl_reload(p, rx, rx_port, key, fault):
    with open(fault, "w") as f:
        f.write("crash\n")
    p.write_config(config(rx_port, key, "# via pmtactl\n"))
    mark = p.log_mark()
    r = subprocess.run([PMTACTL, "-c", p.config_path, "reload"], capture_output=True, text=True,
                       timeout=30)
    tap.ok(r.returncode == 0 and "reload requested" in r.stdout,
           "pmtactl reload is accepted", r.stdout + r.stderr)
    refused(p, mark, "the configuration validator died of SIGSEGV", "pmtactl reload")
    os.unlink(fault)
    mark = p.log_mark()
    subprocess.run([PMTACTL, "-c", p.config_path, "reload"], capture_output=True, timeout=30)
    tap.ok(p.wait_log(r"configuration generation 2 published", since=mark, timeout=20)
           and p.wait_log(r"all \d+ workers use configuration generation 2", since=mark,
                          timeout=20),
           "pmtactl reload with a good config and no fault: generation 2 in force",
           p.log_since(mark))
    mail_flows(p, rx, "generation-2")


def main():
    with Pmta(name="test_reload") as p, \
            TestSmtpd(["%s:%d" % (RX_IP, free_port(RX_IP))], {}, workdir=p.dir, name="rx") as rx:
        rx_port = int(rx.listen[0].rsplit(":", 1)[1])
        key = os.path.join(p.dir, "dkim.key")
        shutil.copy(KEY, key)
        os.chmod(key, 0o644)
        fault = os.path.join(p.dir, "validator-fault")
        good = p.config_text(config(rx_port, key))
        p.write_config(text=good)
        try:
            p.start(args=("--test-validator-fault", fault,
                          "--test-validator-timeout", str(TIMEOUT_S)))
            mail_flows(p, rx, "before")
            test_validator_faults(p, rx, fault, good)
            test_bad_configs(p, rx, good)
            test_keys_as_user(p, rx, rx_port)
            test_key_becomes_unreadable(p, rx, rx_port, key)
            test_pmtactl_reload(p, rx, rx_port, key, fault)
            tap.ok(p.stop() == 0, "pmtad stops cleanly after all that")
        except Exception as e:  # report, never leave processes behind
            tap.ok(False, "exception: %r" % e, p.log()[-3000:])
            p.kill_everything()
    return tap.done()


if __name__ == "__main__":
    sys.exit(main())
