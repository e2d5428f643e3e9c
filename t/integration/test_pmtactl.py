#!/usr/bin/env python3
"""test_pmtactl.py - pmtactl's PowerMTA verbs against a running pmtad with real traffic.

pmtad relays to t/lib/testsmtpd.py, which answers 450 to every tmp* recipient, so they
stay queued: job A (3 recipients from alice@src.test) and job B (2 from bob@src.test)
for hold.test, and 2 delivered recipients for ok.test. Then:
  list (all, --jobId, --rcpt with wildcards in any case, --orig, --maxitems), show jobs,
  show topqueues / topdomains, show version / registration, delete --jobId,
  delete --queue --rcpt, delete --older-than (nothing that old: exit 4), delete with no
  selector (exit 2), disable source IP/VMTA (mail for that VMTA waits) and enable source
  (it goes), reset counters, rotate acct (the file moves into move-to), test config
  (a good and a broken file), resolve [--connect] through dnsmasq (MX answer, the hosts
  in order, each one's greeting and EHLO reply; smtp-hosts; NXDOMAIN), and the exit statuses: 2 usage, 3 pmtad not running,
  4 nothing matches.
"""
import glob
import json
import os
import shutil
import smtplib
import subprocess
import sys
import time

from pmtatest import Pmta, Tap, build_dir, free_port, require_root, wait_for
from testsmtpd import TestSmtpd

tap = Tap()


def ctl(p, *args, config=None):
    """(exit status, stdout, stderr) of pmtactl against P's configuration."""
    r = subprocess.run([os.path.join(build_dir(), "tools", "pmtactl"), "-c",
                        config or p.config_path] + list(args),
                       capture_output=True, text=True, timeout=30)
    return r.returncode, r.stdout, r.stderr


def ctl_json(p, *args, config=None):
    rc, out, err = ctl(p, "--json", *args, config=config)
    return rc, (json.loads(out) if out.strip() else {}), err


def send(p, sender, rcpts, job=None, vmta=None):
    head = "Subject: pmtactl test\r\n"
    if job:
        head += "X-Job: %s\r\n" % job
    if vmta:
        head += "X-Virtual-MTA: %s\r\n" % vmta
    with smtplib.SMTP("127.0.0.1", p.port, timeout=30) as s:
        s.sendmail(sender, rcpts, head + "\r\nbody\r\n")


def queued(p):
    return ctl_json(p, "show", "status")[1].get("status", {}).get("recipients", {}).get("queued")


def list_tests(p):
    rc, out, _ = ctl(p, "list")
    tap.ok(rc == 0 and out.splitlines()[0].split()[:4] == ["queue", "rcpt", "orig", "jobId"] and
           "5 of 5 recipients shown." in out and out.count("hold.test/{default}") == 5,
           "list: a table of the 5 queued recipients", out)
    rc, doc, _ = ctl_json(p, "list", "--jobId=A")
    rows = doc.get("recipients", [])
    tap.ok(rc == 0 and sorted(r["rcpt"] for r in rows) == ["tmpa1@hold.test", "tmpa2@hold.test",
                                                            "tmpa3@hold.test"] and
           all(r["orig"] == "alice@src.test" and r["state"] == "deferred" and
               r["last_error"].startswith("450") for r in rows),
           "list --jobId=A: its 3 recipients, deferred, with sender and last error", doc)
    rc, doc, _ = ctl_json(p, "list", "--rcpt=TMPB*@HOLD.test")
    tap.ok(rc == 0 and doc.get("total") == 2, "list --rcpt: shell wildcards, any case", doc)
    rc, doc, _ = ctl_json(p, "list", "--orig", "bob@src.test", "hold.test")
    tap.ok(rc == 0 and doc.get("total") == 2 and all(r["jobId"] == "B" for r in doc["recipients"]),
           "list --orig=ADDRESS PATTERN", doc)
    rc, out, _ = ctl(p, "list", "--maxitems=2")
    tap.ok(rc == 0 and "2 of 5 recipients shown." in out, "list --maxitems=2", out)
    rc, out, err = ctl(p, "list", "--jobId=nosuch")
    tap.ok(rc == 4 and "no queued recipient matches" in err, "list matching nothing: exit 4",
           (rc, out, err))


def show_tests(p):
    rc, out, _ = ctl(p, "show", "jobs")
    lines = out.splitlines()
    tap.ok(rc == 0 and lines[0].split() == ["job-id", "#rcpt", "kbytes", "paused"] and
           lines[1].split()[:2] == ["A", "3"] and lines[2].split()[:2] == ["B", "2"] and
           "2 of 2 jobs shown." in out, "show jobs: job-id #rcpt kbytes, most first", out)
    rc, out, _ = ctl(p, "show", "topqueues")
    tap.ok(rc == 0 and out.splitlines()[1].startswith("hold.test/{default}"),
           "show topqueues: the queue with most recipients first", out)
    rc, out, _ = ctl(p, "show", "topdomains")
    tap.ok(rc == 0 and out.splitlines()[1].startswith("hold.test"), "show topdomains", out)
    rc, out, _ = ctl(p, "show", "version")
    tap.ok(rc == 0 and "(pmtactl)" in out and "(pmtad, qmgr pid" in out and
           "not reported" not in out, "show version: pmtactl's and pmtad's", out)
    rc, out, _ = ctl(p, "show", "registration")
    tap.ok(rc == 0 and "no license" in out, "show registration", out)


def delete_tests(p):
    acct = os.path.join(p.dir, "acct.csv")
    rc, out, _ = ctl(p, "delete", "--jobId=B")
    tap.ok(rc == 0 and "2 recipient(s) deleted from" in out and queued(p) == 3,
           "delete --jobId=B: its 2 recipients, the others stay", out)
    tap.ok(wait_for(lambda: open(acct).read().count("tmpb") >= 2 if os.path.exists(acct)
                    else False, timeout=10), "each deleted recipient gets a b record")
    rc, out, _ = ctl(p, "delete", "--queue=hold.test", "--rcpt=tmpa1@hold.test")
    tap.ok(rc == 0 and "1 recipient(s) deleted" in out and queued(p) == 2,
           "delete --queue --rcpt: that one recipient", out)
    rc, doc, _ = ctl_json(p, "list")
    tap.ok(sorted(r["rcpt"] for r in doc.get("recipients", [])) == ["tmpa2@hold.test",
                                                                     "tmpa3@hold.test"] and
           all(r["state"] == "deferred" for r in doc["recipients"]),
           "the rest keep their place and state", doc)
    rc, out, err = ctl(p, "delete", "--queue=hold.test", "--older-than=1h")
    tap.ok(rc == 4 and queued(p) == 2, "delete --older-than=1h: nothing that old, exit 4",
           (rc, out, err))
    rc, _, err = ctl(p, "delete", "--rcpt=tmpa2@hold.test")
    tap.ok(rc == 2 and "--jobId" in err, "delete without a queue or job: usage, exit 2", err)
    rc, _, err = ctl(p, "delete", "--queue=hold.test", "--older-than=soon")
    tap.ok(rc == 2 and "--older-than" in err, "a bad --older-than: exit 2", err)


def source_tests(p, rx):
    before = len([d for d in rx.events("data") if d["size"] > 0])
    rc, out, _ = ctl(p, "disable", "source", "127.0.0.1/mta1")
    tap.ok(rc == 0 and "source 127.0.0.1/mta1 disabled" in out, "disable source IP/VMTA", out)
    send(p, "carol@src.test", ["ok9@ok.test"], vmta="mta1")
    time.sleep(3)
    rc, doc, _ = ctl_json(p, "list", "--rcpt=ok9@ok.test")
    tap.ok(doc.get("total") == 1 and doc["recipients"][0]["queue"] == "ok.test/mta1" and
           len([d for d in rx.events("data") if d["size"] > 0]) == before,
           "mail for mta1 waits while its only source IP is disabled", doc)
    rc, out, _ = ctl(p, "enable", "source", "127.0.0.1/mta1")
    tap.ok(rc == 0 and "enabled" in out, "enable source", out)
    tap.ok(wait_for(lambda: len([d for d in rx.events("data") if d["size"] > 0]) == before + 1,
                    timeout=15), "and it is delivered")


def counters_and_files(p):
    rc, out, _ = ctl(p, "reset", "counters")
    st = ctl_json(p, "show", "status")[1].get("status", {})
    tap.ok(rc == 0 and "Counters reset." in out and st.get("delivered") == 0 and
           st.get("bounced") == 0 and st.get("deferred") == 0 and st["recipients"]["queued"] == 2,
           "reset counters: delivered, bounced, deferred zero; the queue stays", st)
    rc, out, err = ctl(p, "rotate", "acct")
    moved = glob.glob(os.path.join(p.dir, "acct-old", "acct-*.csv"))
    tap.ok(rc == 0 and "rotated" in out and moved, "rotate acct: the file moves into move-to",
           (rc, out, err, moved))
    rc, out, _ = ctl(p, "test", "config")
    tap.ok(rc == 0 and "configuration OK" in out, "test config on the running configuration", out)
    bad = os.path.join(p.dir, "bad.conf")
    with open(bad, "w") as f:
        f.write("smtp-listener 127.0.0.1:25\nmax-smpt-out 3\n")
    rc, out, err = ctl(p, "test", "config", config=bad)
    tap.ok(rc == 1 and "bad.conf:2: error" in err, "test config on a broken file: file:line, exit 1",
           (rc, err))


def resolve_tests(p, rx_port, rx):
    """resolve through dnsmasq: the MX answer, the hosts to try, and with --connect the
    greeting and EHLO reply of the receiver behind the MX host."""
    from dnsmasq import Dnsmasq
    with Dnsmasq(mx=[("mx.test", "mx1.mx.test", 10), ("mx.test", "mx2.mx.test", 20)],
                 hosts=[("mx1.mx.test", "127.0.0.1"), ("mx2.mx.test", "127.0.0.7")],
                 local=["test"]) as dns:
        conf = os.path.join(p.dir, "resolve.conf")
        with open(conf, "w") as f:
            f.write("host-name resolver.test.example\nname-server %s\n"
                    "<domain mx.test>\n  default-smtp-port %d\n</domain>\n"
                    "<domain routed.test>\n  smtp-hosts [127.0.0.1]:%d\n</domain>\n"
                    % (dns.server, rx_port, rx_port))
        rc, out, err = ctl(p, "resolve", "mx.test", config=conf)
        lines = out.splitlines()
        tap.ok(rc == 0 and any(l.split()[:3] == ["10", "mx1.mx.test", "127.0.0.1"] for l in lines)
               and any(l.split()[:3] == ["20", "mx2.mx.test", "127.0.0.7"] for l in lines)
               and "1. mx1.mx.test" in out and "127.0.0.1:%d" % rx_port in out,
               "resolve: the MX answer and the hosts in the order pmtad would try them",
               (rc, out, err))
        ehlos = len(rx.events("ehlo"))
        rc, out, err = ctl(p, "resolve", "--connect", "mx.test", config=conf)
        tap.ok(rc == 0 and "greeting" in out and "220 " in out and "EHLO" in out and
               "250-" in out and " ms" in out,
               "resolve --connect: each host's greeting and EHLO reply, timed", (rc, out, err))
        names = [e["name"] for e in rx.events("ehlo")[ehlos:]]
        tap.ok(names == ["resolver.test.example"],
               "it said EHLO with the configured host-name, once per reachable host", names)
        rc, doc, _ = ctl_json(p, "resolve", "routed.test", config=conf)
        rc2, doc2, err2 = ctl_json(p, "resolve", "nosuch.test", config=conf)
        tap.ok(rc == 0 and doc.get("smtpHosts") == "[127.0.0.1]:%d" % rx_port and
               [d["port"] for d in doc.get("destinations", [])] == [rx_port],
               "resolve follows smtp-hosts", doc)
        tap.ok(rc2 == 4 and doc2.get("mxStatus") == "nxdomain" and doc2.get("routeWhy"),
               "resolve of a domain that does not exist: NXDOMAIN, exit 4", (rc2, doc2, err2))


def main():
    require_root(tap)
    rx_port = free_port()
    with TestSmtpd(["127.0.0.1:%d" % rx_port], {}) as rx, Pmta(name="pmtactl") as p:
        p.write_config("""
<source 127.0.0.1>
    always-allow-relaying yes
    process-x-job yes
    process-x-virtual-mta yes
</source>
<virtual-mta mta1>
    smtp-source-host 127.0.0.1 mta1.test.example
</virtual-mta>
<domain *>
    smtp-hosts [127.0.0.1]:%d
    use-starttls no
    retry-after 1h
</domain>
<acct-file %s/acct.csv>
    records d,b
    move-to %s/acct-old
</acct-file>
""" % (rx_port, p.dir, p.dir))
        os.makedirs(os.path.join(p.dir, "acct-old"))
        shutil.chown(os.path.join(p.dir, "acct-old"), "pmta", "pmta")
        os.chmod(p.dir, 0o777)  # qmgr (pmta) writes the accounting file here
        p.start()
        send(p, "alice@src.test", ["tmpa%d@hold.test" % i for i in (1, 2, 3)], job="A")
        send(p, "bob@src.test", ["tmpb1@hold.test", "tmpb2@hold.test"], job="B")
        send(p, "carol@src.test", ["ok1@ok.test", "ok2@ok.test"])
        tap.ok(wait_for(lambda: (lambda st: st.get("deferred", 0) >= 5 and
                                 st.get("delivered") == 2)(
                                     ctl_json(p, "show", "status")[1].get("status", {})),
                        timeout=30), "5 recipients deferred, 2 delivered")
        # the deferrals are committed to the queue a moment after qmgr counts them
        wait_for(lambda: all(r["last_error"] for r in
                             ctl_json(p, "list")[1].get("recipients", [{}])), timeout=10)
        list_tests(p)
        show_tests(p)
        delete_tests(p)
        source_tests(p, rx)
        counters_and_files(p)
        resolve_tests(p, rx_port, rx)
        rc, _, err = ctl(p, "frobnicate", "queue")
        tap.ok(rc == 2 and "usage" in err, "an unknown command: exit 2")
        p.stop()
        rc, _, err = ctl(p, "show", "status")
        tap.ok(rc == 3 and "not running" in err, "pmtad stopped: show status exits 3", (rc, err))
        rc, _, err = ctl(p, "reload")
        tap.ok(rc == 3 and "not running" in err, "pmtad stopped: reload exits 3", (rc, err))
        tap.ok(not p.sanitizer_reports(), "no sanitizer reports", p.sanitizer_reports())
    sys.exit(tap.done())


if __name__ == "__main__":
    main()
