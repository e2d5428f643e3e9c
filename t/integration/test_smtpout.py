#!/usr/bin/env python3
"""test_smtpout - the outbound SMTP client library against real peers.

Drives t/unit/smtpout_tool (one delivery job per run, JSON lines out) against
dnsmasq on 127.0.0.1, our scriptable receiver (t/lib/testsmtpd.py) on
127.0.0.2-127.0.0.8 and Postfix's smtp-sink, with source address 127.0.0.10;
127.0.0.9 is a listener that never completes a TCP handshake. Only loopback
addresses are used. Prints TAP.
"""

import hashlib
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time

from blackhole import Blackhole
from dnsmasq import Dnsmasq, DnsStub, dnsmasq_path
from testsmtpd import TestSmtpd

from pmtatest import Tap

BUILD = os.environ.get("PMTA_BUILDDIR") or os.path.abspath(
    os.path.join(os.path.dirname(__file__), "..", ".."))
TOOL = os.path.join(BUILD, "t", "unit", "smtpout_tool")
SOURCE_IP = "127.0.0.10"
HELO = "mta1.sender.test"


def free_port_on_all(addrs):
    """A TCP port free on every address in ADDRS."""
    for _ in range(100):
        port = random.randint(20000, 60000)
        socks = []
        try:
            for a in addrs:
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                socks.append(s)
                s.bind((a, port))
            return port
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port")


class Env:
    def __init__(self, work, dns, port):
        self.work = work
        self.dns = dns
        self.port = port
        self.runs = 0
        self.unclean = []       # runs with stderr output or a non-zero exit

    def deliver(self, rcpts, message, extra=(), dns=None, timeout=30):
        """Run the tool; return its JSON events."""
        messages = message if isinstance(message, list) else [message]
        argv = [TOOL, "--dns", dns or self.dns.server, "--source", SOURCE_IP,
                "--helo", HELO, "--from", "sender@src.test", "--port", str(self.port),
                "--command-timeout-ms", "2000", "--connect-timeout-ms", "2000",
                "--greeting-timeout-ms", "2000", "--data-timeout-ms", "5000",
                "--dot-timeout-ms", "5000", "--dns-timeout-ms", "1000"]
        for r in rcpts:
            argv += ["--to", r]
        for m in messages:
            argv += ["--message", m]
        argv += list(extra)
        p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           timeout=timeout)
        events = []
        for line in p.stdout.decode().splitlines():
            try:
                events.append(json.loads(line))
            except ValueError:
                events.append({"event": "garbage", "line": line})
        self.runs += 1
        if p.returncode != 0 or p.stderr:
            events.append({"event": "tool-exit", "rc": p.returncode,
                           "stderr": p.stderr.decode(errors="replace")[-2000:]})
            self.unclean.append(events[-1])
        return events

    def message(self, name, data):
        path = os.path.join(self.work, name)
        with open(path, "wb") as f:
            f.write(data)
        return path


def results(events):
    return {(e["msg"], e["rcpt"]): e for e in events if e["event"] == "rcpt"}


def classes(events, msg=0):
    return {r: e["class"] for (m, r), e in results(events).items() if m == msg}


def ev(events, kind):
    return [e for e in events if e["event"] == kind]


def crlf(data):
    """What the receiver must see: every line ending CRLF, a final one added."""
    data = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    if data and not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data


def clean_tool_run(events):
    return ev(events, "done") and not ev(events, "tool-exit") and not ev(events, "garbage")


def main():
    tap = Tap()
    if dnsmasq_path() is None:
        tap.skip("smtpout integration", "dnsmasq not installed")
        return tap.done()
    if not os.access(TOOL, os.X_OK):
        tap.ok(False, "smtpout_tool is built", TOOL)
        return tap.done()
    work = tempfile.mkdtemp(prefix="pmta-smtpout-")
    port = free_port_on_all(["127.0.0.%d" % i for i in range(2, 10)])
    receivers = []
    dns = Dnsmasq(
        mx=[("pref.test", "mx1.pref.test", 10), ("pref.test", "mx2.pref.test", 20),
            ("fb.test", "dead.fb.test", 10), ("fb.test", "live.fb.test", 20),
            ("nullmx.test", ".", 0)],
        hosts=[("mx1.pref.test", "127.0.0.2"), ("mx2.pref.test", "127.0.0.3"),
               ("dead.fb.test", "127.0.0.4"), ("live.fb.test", "127.0.0.3"),
               ("aonly.test", "127.0.0.2")],
        local=["test"])
    try:
        dns.start()
        env = Env(work, dns, port)
        rx_a = TestSmtpd("127.0.0.2:%d" % port, {"hostname": "mx1.pref.test"}, work, "rx_a").start()
        rx_b = TestSmtpd("127.0.0.3:%d" % port, {"hostname": "mx2.pref.test"}, work, "rx_b").start()
        rx_tls = TestSmtpd("127.0.0.5:%d" % port, {"starttls": True, "hostname": "tls.test"},
                           work, "rx_tls").start()
        rx_plain = TestSmtpd("127.0.0.6:%d" % port,
                             {"pipelining": False, "8bitmime": False, "smtputf8": False,
                              "dsn": False, "hostname": "old.test"}, work, "rx_plain").start()
        receivers += [rx_a, rx_b, rx_tls, rx_plain]
        run_tests(tap, env, rx_a, rx_b, rx_tls, rx_plain)
    finally:
        for rx in receivers:
            rx.stop()
        dns.stop()
        if tap.failed == 0:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print("# work directory kept: %s" % work)
    return tap.done()


def one_off(env, script, name):
    """A receiver with a special behaviour on 127.0.0.7."""
    return TestSmtpd("127.0.0.7:%d" % env.port, script, env.work, name).start()


def run_tests(tap, env, rx_a, rx_b, rx_tls, rx_plain):
    port = env.port
    simple = env.message("simple.eml", b"From: a@src.test\nTo: b@pref.test\nSubject: t\n\nhello\n")

    # --- MX order, per-recipient results, pipelining, source IP and EHLO -------------
    e = env.deliver(["ok1@pref.test", "tmp1@pref.test", "bad1@pref.test"], simple)
    c = classes(e)
    tap.ok(clean_tool_run(e), "tool runs cleanly and reports done", e)
    tap.ok(c == {"ok1@pref.test": "ok", "tmp1@pref.test": "temp", "bad1@pref.test": "perm"},
           "one transaction: 250 delivered, 450 temporary, 550 permanent", e)
    r = results(e)
    tap.ok(r.get((0, "tmp1@pref.test"), {}).get("code") == 450
           and r.get((0, "bad1@pref.test"), {}).get("status") == "5.1.1"
           and "No such user" in r.get((0, "bad1@pref.test"), {}).get("text", ""),
           "reply code, enhanced status and text are passed up", e)
    tap.ok(len(rx_a.events("data")) == 1 and not rx_b.events("connect"),
           "MX preference 10 is used before 20", (rx_a.events(), rx_b.events()))
    conn = rx_a.events("connect")
    ehlo = rx_a.events("ehlo")
    tap.ok(conn and conn[0]["peer"] == SOURCE_IP and ehlo and ehlo[0]["name"] == HELO,
           "receiver sees source IP %s and EHLO %s" % (SOURCE_IP, HELO), (conn, ehlo))
    connected = ev(e, "connected")
    tap.ok(connected and connected[0]["source"] == SOURCE_IP and connected[0]["ip"] == "127.0.0.2"
           and connected[0]["mx"] == "mx1.pref.test",
           "connected event names source IP, destination IP and MX", connected)
    reads = {x["read"] for x in rx_a.events("mail") + rx_a.events("rcpt") + rx_a.events("data_cmd")}
    tap.ok(len(reads) == 1 and len(rx_a.events("rcpt")) == 3,
           "PIPELINING advertised: MAIL, RCPTs and DATA arrive in one read", rx_a.events())
    tap.ok(rx_a.events("quit"), "session ends with QUIT", rx_a.events())

    # --- fallback to the next MX -------------------------------------------------------
    rx_b.clear()
    e = env.deliver(["ok@fb.test"], simple)
    connecting = [x["ip"] for x in ev(e, "connecting")]
    tap.ok(classes(e) == {"ok@fb.test": "ok"} and connecting == ["127.0.0.4", "127.0.0.3"]
           and len(rx_b.events("data")) == 1,
           "first MX refuses connections: delivered through the next MX", e)

    # --- implicit MX -------------------------------------------------------------------
    rx_a.clear()
    e = env.deliver(["ok@aonly.test"], simple)
    tap.ok(classes(e) == {"ok@aonly.test": "ok"} and len(rx_a.events("data")) == 1
           and ev(e, "connected") and ev(e, "connected")[0]["mx"] == "aonly.test",
           "no MX record: implicit MX on the domain's A record", e)
    e = env.deliver(["ok@aonly.test"], simple, ["--bounce-upon-no-mx"])
    tap.ok(classes(e) == {"ok@aonly.test": "perm"} and not ev(e, "connecting"),
           "bounce-upon-no-mx: no MX is permanent", e)

    # --- DNS failures ------------------------------------------------------------------
    e = env.deliver(["ok@nope.test"], simple)
    r = results(e).get((0, "ok@nope.test"), {})
    tap.ok(r.get("class") == "perm" and r.get("status") == "5.1.2" and not ev(e, "connecting"),
           "NXDOMAIN is permanent (5.1.2)", e)
    e = env.deliver(["ok@nullmx.test"], simple)
    r = results(e).get((0, "ok@nullmx.test"), {})
    tap.ok(r.get("class") == "perm" and r.get("status") == "5.1.10",
           "null MX (RFC 7505) is permanent (5.1.10)", e)
    with DnsStub("nullmx") as stub:
        e = env.deliver(["ok@any.test"], simple, dns=stub.server)
    r = results(e).get((0, "ok@any.test"), {})
    tap.ok(r.get("class") == "perm" and r.get("status") == "5.1.10",
           "null MX from a hand-made answer is permanent too", e)
    with DnsStub("nullmx") as stub:
        e = env.deliver(["ok@any.test"], simple, ["--repeat", "3"], dns=stub.server)
        queries = stub.queries
    tap.ok(len(ev(e, "done")) == 3 and len(ev(e, "rcpt")) == 3 and queries == 1,
           "DNS cache: three jobs, one MX query (%d)" % queries, e)
    e = env.deliver(["ok@pref.test"], simple, ["--repeat", "2"])
    tap.ok(len(ev(e, "done")) == 2 and [x["class"] for x in ev(e, "rcpt")] == ["ok", "ok"],
           "two jobs in one process with one resolver (TTL 0 answers are not cached)", e)
    with DnsStub("servfail") as stub:
        e = env.deliver(["ok@pref.test"], simple, dns=stub.server)
    r = results(e).get((0, "ok@pref.test"), {})
    tap.ok(r.get("class") == "temp" and not ev(e, "connecting"), "SERVFAIL is temporary", e)
    with DnsStub("blackhole") as stub:
        t0 = time.monotonic()
        e = env.deliver(["ok@pref.test"], simple, ["--dns-timeout-ms", "300"], dns=stub.server)
        took = time.monotonic() - t0
    r = results(e).get((0, "ok@pref.test"), {})
    tap.ok(r.get("class") == "temp" and took < 10, "DNS timeout is temporary", (e, took))

    # --- smtp-hosts overrides ------------------------------------------------------------
    rx_a.clear()
    rx_b.clear()
    e = env.deliver(["ok@pref.test"], simple, ["--smtp-hosts", "[127.0.0.3]:%d" % port])
    tap.ok(classes(e) == {"ok@pref.test": "ok"} and len(rx_b.events("data")) == 1
           and not rx_a.events("connect"),
           "smtp-hosts [127.0.0.3]:port overrides the MX", e)
    rx_b.clear()
    e = env.deliver(["ok@pref.test"], simple,
                    ["--smtp-hosts", "[127.0.0.4]:%d; [127.0.0.3]:%d, [127.0.0.3]" % (port, port)])
    connecting = [x["ip"] for x in ev(e, "connecting")]
    tap.ok(classes(e) == {"ok@pref.test": "ok"} and connecting[:2] == ["127.0.0.4", "127.0.0.3"]
           and len(rx_b.events("data")) == 1,
           "smtp-hosts ';' levels: the second level after the first fails", e)
    rx_b.clear()
    e = env.deliver(["ok@pref.test"], simple,
                    ["--smtp-hosts", "lookup-mx:fb.test:%d" % port, "--port", "1"])
    tap.ok(classes(e) == {"ok@pref.test": "ok"} and len(rx_b.events("data")) == 1,
           "smtp-hosts lookup-mx:domain:port follows that domain's MX order", e)
    e = env.deliver(["ok@pref.test"], simple, ["--smtp-hosts", "mx2.pref.test"])
    tap.ok(classes(e) == {"ok@pref.test": "ok"}
           and ev(e, "connected") and ev(e, "connected")[0]["ip"] == "127.0.0.3",
           "smtp-hosts host name resolves its A record, default-smtp-port applies", e)

    bad_routes = ["", "[1.2.3.4", "[not.an.ip]:25", "host:99999", "host:0", "a b",
                  "h1;;h2", "h1,,h2", "::1", "lookup-mx:"]
    rejected = []
    for text in bad_routes:
        p = subprocess.run([TOOL, "--from", "a@b", "--to", "c@d", "--message", simple,
                            "--smtp-hosts", text], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=10)
        if p.returncode == 2 and b"smtp-hosts" in p.stderr:
            rejected.append(text)
    tap.ok(rejected == bad_routes, "malformed smtp-hosts values are rejected with a reason",
           set(bad_routes) - set(rejected))

    # --- no PIPELINING -----------------------------------------------------------------------
    hosts_plain = ["--smtp-hosts", "[127.0.0.6]:%d" % port]
    e = env.deliver(["ok1@old.test", "ok2@old.test"], simple, hosts_plain)
    reads = [x["read"] for x in rx_plain.events("mail") + rx_plain.events("rcpt")
             + rx_plain.events("data_cmd")]
    tap.ok(classes(e) == {"ok1@old.test": "ok", "ok2@old.test": "ok"}
           and len(reads) == 4 and len(set(reads)) == 4,
           "no PIPELINING advertised: one command per read", rx_plain.events())

    rx_a.clear()
    e = env.deliver(["ok1@pref.test", "ok2@pref.test"], simple, ["--ignore-pipelining"])
    reads = [x["read"] for x in rx_a.events("mail") + rx_a.events("rcpt") + rx_a.events("data_cmd")]
    tap.ok(classes(e) == {"ok1@pref.test": "ok", "ok2@pref.test": "ok"}
           and len(reads) == 4 and len(set(reads)) == 4,
           "ignore-pipelining: one command per read although advertised", rx_a.events())

    # --- 8BITMIME, SMTPUTF8, DSN ----------------------------------------------------------------
    rx_plain.clear()
    eight = env.message("8bit.eml", "Subject: caf\u00e9\n\nna\u00efve body\n".encode("utf-8"))
    e = env.deliver(["ok@old.test"], eight, hosts_plain)
    r = results(e).get((0, "ok@old.test"), {})
    tap.ok(r.get("class") == "perm" and r.get("status") == "5.6.3"
           and "8-bit data not accepted" in r.get("text", "")
           and not rx_plain.events("mail") and not rx_plain.events("data"),
           "8-bit message to a peer without 8BITMIME: permanent 5.6.3, nothing sent",
           (e, rx_plain.events()))
    rx_a.clear()
    e = env.deliver(["ok@pref.test"], eight)
    mail = rx_a.events("mail")
    got = rx_a.events("data")
    tap.ok(classes(e) == {"ok@pref.test": "ok"} and mail and "BODY=8BITMIME" in mail[0]["params"]
           and got and open(got[0]["file"], "rb").read() == crlf(open(eight, "rb").read()),
           "8-bit message to an 8BITMIME peer: BODY=8BITMIME, bytes intact", (e, mail))
    rx_plain.clear()
    e = env.deliver(["ok@old.test"], simple, hosts_plain + ["--smtputf8"])
    r = results(e).get((0, "ok@old.test"), {})
    tap.ok(r.get("class") == "perm" and r.get("status") == "5.6.7" and not rx_plain.events("mail"),
           "SMTPUTF8 message to a peer without SMTPUTF8: permanent 5.6.7", e)
    rx_a.clear()
    e = env.deliver(["ok@pref.test"], simple,
                    ["--notify", "SUCCESS,FAILURE", "--orcpt", "--ret", "hdrs", "--envid", "id+1"])
    mail = rx_a.events("mail")
    rcpt = rx_a.events("rcpt")
    tap.ok(mail and "RET=HDRS" in mail[0]["params"] and "ENVID=id+2B1" in mail[0]["params"]
           and rcpt and "NOTIFY=SUCCESS,FAILURE" in rcpt[0]["params"]
           and "ORCPT=rfc822;ok@pref.test" in rcpt[0]["params"],
           "DSN parameters (RET, ENVID as xtext, NOTIFY, ORCPT) sent to a DSN peer", (mail, rcpt))
    rx_plain.clear()
    e = env.deliver(["ok@old.test"], simple, hosts_plain + ["--notify", "NEVER", "--ret", "full"])
    mail = rx_plain.events("mail")
    rcpt = rx_plain.events("rcpt")
    tap.ok(classes(e) == {"ok@old.test": "ok"} and mail and rcpt
           and not any(p.startswith("RET=") for p in mail[0]["params"])
           and not rcpt[0]["params"],
           "no DSN parameters to a peer without DSN", (mail, rcpt))

    # --- STARTTLS ----------------------------------------------------------------------------------
    hosts_tls = ["--smtp-hosts", "[127.0.0.5]:%d" % port]
    e = env.deliver(["ok@tls.test"], simple, hosts_tls)
    tls = ev(e, "tls")
    mail = rx_tls.events("mail")
    tap.ok(classes(e) == {"ok@tls.test": "ok"} and tls and tls[0]["protocol"].startswith("TLS")
           and mail and mail[0]["tls"] and rx_tls.events("tls"),
           "STARTTLS with a self-signed certificate succeeds opportunistically", (e, rx_tls.events()))
    ehlos = rx_tls.events("ehlo")
    tap.ok(len(ehlos) == 2, "EHLO is sent again after STARTTLS", ehlos)
    rx_tls.clear()
    e = env.deliver(["ok@tls.test"], simple, hosts_tls + ["--starttls", "require"])
    tap.ok(classes(e) == {"ok@tls.test": "ok"} and rx_tls.events("mail")[0]["tls"],
           "require-starttls: delivered over TLS when offered", e)
    rx_tls.clear()
    e = env.deliver(["ok@tls.test"], simple, hosts_tls + ["--starttls", "no"])
    tap.ok(classes(e) == {"ok@tls.test": "ok"} and not rx_tls.events("starttls"),
           "use-starttls no: STARTTLS is not used", e)
    rx_a.clear()
    e = env.deliver(["ok@pref.test"], simple, ["--starttls", "require", "--smtp-hosts",
                                               "[127.0.0.2]:%d" % port])
    r = results(e).get((0, "ok@pref.test"), {})
    tap.ok(r.get("class") == "temp" and r.get("status") == "4.7.4" and rx_a.events("ehlo")
           and not rx_a.events("mail"),
           "require-starttls, no STARTTLS offered: temporary failure, no MAIL sent",
           (e, rx_a.events()))

    rx = one_off(env, {"starttls": True, "starttls_inject": True}, "rx_inject")
    e = env.deliver(["ok@x.test"], simple, ["--smtp-hosts", "[127.0.0.7]:%d" % port,
                                            "--starttls", "require"])
    rx.stop()
    r = results(e).get((0, "ok@x.test"), {})
    tap.ok(r.get("class") == "temp" and "injection" in r.get("text", "")
           and not rx.events("mail"),
           "reply injected in clear after STARTTLS 220: refused, nothing sent", (e, rx.events()))

    # --- greeting, drops, timeouts, EHLO fallback ----------------------------------------------------
    hosts_special = ["--smtp-hosts", "[127.0.0.7]:%d" % port]
    rx = one_off(env, {"greeting": "421 4.3.2 Service not available"}, "rx_421")
    e = env.deliver(["ok@x.test"], simple, hosts_special)
    rx.stop()
    r = results(e).get((0, "ok@x.test"), {})
    tap.ok(r.get("class") == "temp" and r.get("code") == 421 and not rx.events("ehlo"),
           "421 greeting is temporary", e)
    rx = one_off(env, {"greeting": "554 5.7.1 No SMTP service here"}, "rx_554")
    e = env.deliver(["ok@x.test", "ok2@x.test"], simple, hosts_special)
    rx.stop()
    c = classes(e)
    tap.ok(c == {"ok@x.test": "perm", "ok2@x.test": "perm"}
           and results(e)[(0, "ok@x.test")]["code"] == 554,
           "554 greeting is permanent for every recipient", e)
    rx = one_off(env, {"drop_in_data": True}, "rx_drop")
    big = env.message("drop.eml", b"Subject: drop\n\n" + b"x" * 100 + b"\n" * 2000)
    e = env.deliver(["ok1@x.test", "ok2@x.test"], big, hosts_special)
    rx.stop()
    tap.ok(classes(e) == {"ok1@x.test": "temp", "ok2@x.test": "temp"} and rx.events("drop")
           and not rx.events("data"),
           "connection dropped mid-DATA: temporary for all its recipients", (e, rx.events()))
    rx = one_off(env, {"delay": {"mail": 4}}, "rx_slow")
    t0 = time.monotonic()
    e = env.deliver(["ok@x.test"], simple, hosts_special + ["--command-timeout-ms", "1000"])
    took = time.monotonic() - t0
    rx.stop()
    r = results(e).get((0, "ok@x.test"), {})
    tap.ok(r.get("class") == "temp" and "timeout" in r.get("text", "") and took < 3.5,
           "slow receiver past the command timeout: temporary", (e, took))
    hole = Blackhole("127.0.0.9", port)
    try:
        why = hole.start()
        if why is None:
            t0 = time.monotonic()
            e = env.deliver(["ok1@x.test", "ok2@x.test"], simple,
                            ["--smtp-hosts", "[127.0.0.9]:%d" % port,
                             "--connect-timeout-ms", "2000"])
            took = time.monotonic() - t0
            t1 = time.monotonic()
            e2 = env.deliver(["ok@x.test"], simple,
                             ["--smtp-hosts", "[127.0.0.9]:%d; [127.0.0.3]:%d" % (port, port),
                              "--connect-timeout-ms", "1000"])
            took2 = time.monotonic() - t1
    finally:
        hole.stop()
    if why is None:
        r = results(e).get((0, "ok1@x.test"), {})
        closed = ev(e, "closed")
        tap.ok(r.get("stage") == "connect" and r.get("status", "").startswith("4.")
               and "timeout connecting to" in r.get("text", "")
               and r.get("text", "").endswith(" after 2 s")
               and closed and closed[-1].get("stage") == "connect"
               and not ev(e, "connected") and 1.5 <= took < 10,
               "peer never completes the handshake: connect-timeout 2 s fails the attempt"
               " at the connect stage after %.1f s" % took, (e, took))
        tap.ok(classes(e) == {"ok1@x.test": "temp", "ok2@x.test": "temp"}
               and all(x.get("status", "").startswith("4.") for x in ev(e, "rcpt")),
               "connect timeout: every recipient temporary (4.x.x), none bounced", e)
        connecting = [x["ip"] for x in ev(e2, "connecting")]
        tap.ok(classes(e2) == {"ok@x.test": "ok"} and connecting == ["127.0.0.9", "127.0.0.3"]
               and 0.75 <= took2 < 10,
               "connect timeout on the first smtp-hosts level: delivered through the next"
               " (%.1f s)" % took2, (e2, took2))
    else:
        tap.skip("connect-timeout against a peer that never completes the handshake", why)
        tap.skip("connect timeout: every recipient temporary", why)
        tap.skip("connect timeout on the first smtp-hosts level: next level", why)
    rx = one_off(env, {"rcpt": [["busy", "421 4.7.0 Too busy, closing"]]}, "rx_busy")
    two_levels = ["--smtp-hosts", "[127.0.0.7]:%d; [127.0.0.3]:%d" % (port, port)]
    e = env.deliver(["ok@x.test", "busy@x.test"], simple, two_levels)
    e2 = env.deliver(["ok@x.test", "busy@x.test"], simple,
                     two_levels + ["--smtp-421-means-mx-unavailable"])
    rx.stop()
    c = classes(e)
    r2 = results(e2)
    tap.ok(c == {"ok@x.test": "temp", "busy@x.test": "temp"}
           and results(e)[(0, "busy@x.test")]["code"] == 421
           and {k[1]: v["ip"] for k, v in r2.items()} == {"ok@x.test": "127.0.0.3",
                                                           "busy@x.test": "127.0.0.3"}
           and classes(e2) == {"ok@x.test": "ok", "busy@x.test": "ok"},
           "421 in a transaction: temporary; with smtp-421-means-mx-unavailable, next MX",
           (e, e2))
    rx = one_off(env, {"ehlo_reply": "502 5.5.1 EHLO not implemented"}, "rx_helo")
    e = env.deliver(["ok@x.test"], simple, hosts_special)
    rx.stop()
    tap.ok(classes(e) == {"ok@x.test": "ok"} and rx.events("helo")
           and rx.events("helo")[0]["name"] == HELO,
           "EHLO refused with 5xx: HELO fallback delivers", (e, rx.events()))
    evil = "550 5.1.1 " + "A" * 600 + "\u0001\u0007evil"
    rx = one_off(env, {"rcpt": [["evil", evil], ["crlf", "550 5.1.1 x\rinjected"]]}, "rx_evil")
    e = env.deliver(["evil@x.test", "crlf@x.test", "ok@x.test"], simple, hosts_special)
    rx.stop()
    r = results(e)
    texts = [r.get((0, a), {}).get("text", "") for a in ("evil@x.test", "crlf@x.test")]
    tap.ok(classes(e) == {"evil@x.test": "perm", "crlf@x.test": "perm", "ok@x.test": "ok"}
           and all(len(t) <= 512 and all(32 <= ord(ch) < 127 for ch in t) for t in texts)
           and texts[0].startswith("550 5.1.1 AAAA"),
           "hostile reply text is bounded (512) and sanitized", e)
    rx = one_off(env, {"rcpt": [["long", "550 5.1.1 " + "B" * 2100]]}, "rx_long")
    e = env.deliver(["long@x.test"], simple, hosts_special)
    rx.stop()
    r = results(e).get((0, "long@x.test"), {})
    tap.ok(r.get("class") == "temp" and "too long" in r.get("text", ""),
           "a reply line over 2048 bytes fails the session (temporary)", e)

    # --- content: dot-stuffing, 2 MB, reuse --------------------------------------------------------
    rx_a.clear()
    dots = b"Subject: dots\n\n.\n..\n.leading dot\n...three\nnot a dot\n. \n.\r\nCRLF line\r\nlast line no newline"
    path = env.message("dots.eml", dots)
    e = env.deliver(["ok@pref.test"], path)
    got = rx_a.events("data")
    tap.ok(classes(e) == {"ok@pref.test": "ok"} and got
           and open(got[0]["file"], "rb").read() == crlf(dots),
           "dot-stuffing round trip: lines starting with '.' arrive intact", got)
    rng = random.Random(42)
    lines = []
    size = 0
    while size < 2 * 1024 * 1024:
        n = rng.randint(0, 200)
        line = bytes(rng.choice(b"abcdefghij .,;-") for _ in range(n))
        if rng.random() < 0.05:
            line = b"." + line
        lines.append(line)
        size += len(line) + 1
    big_data = b"Subject: big\n\n" + b"\n".join(lines) + b"\n"
    big = env.message("big.eml", big_data)
    rx_a.clear()
    t0 = time.monotonic()
    e = env.deliver(["ok@pref.test"], big)
    took = time.monotonic() - t0
    got = rx_a.events("data")
    want = crlf(big_data)
    tap.ok(classes(e) == {"ok@pref.test": "ok"} and got
           and got[0]["sha256"] == hashlib.sha256(want).hexdigest(),
           "a 2 MB message arrives byte-identical (%.2f s)" % took, (e, got))
    rx_tls.clear()
    e = env.deliver(["ok@tls.test"], big, hosts_tls)
    got = rx_tls.events("data")
    tap.ok(classes(e) == {"ok@tls.test": "ok"} and got
           and got[0]["sha256"] == hashlib.sha256(want).hexdigest(),
           "the 2 MB message arrives byte-identical over TLS too", (e, got))
    rx_a.clear()
    e = env.deliver(["ok@pref.test", "tmp@pref.test"], [simple, path])
    got = rx_a.events("data")
    tap.ok(classes(e, 0) == {"ok@pref.test": "ok", "tmp@pref.test": "temp"}
           and classes(e, 1) == {"ok@pref.test": "ok", "tmp@pref.test": "temp"}
           and len(rx_a.events("connect")) == 1 and len(rx_a.events("rset")) == 1
           and len(got) == 2 and len(ev(e, "connecting")) == 1,
           "two transactions reuse one connection, with RSET between", (e, rx_a.events()))

    tap.ok(env.runs > 30 and not env.unclean,
           "all %d tool runs exited 0 with nothing on stderr (sanitizer-clean when built so)"
           % env.runs, env.unclean)

    # --- Postfix smtp-sink ---------------------------------------------------------------------------
    sink = shutil.which("smtp-sink") or ("/usr/sbin/smtp-sink" if os.path.exists("/usr/sbin/smtp-sink") else None)
    if sink is None:
        tap.skip("delivery to Postfix smtp-sink", "smtp-sink not installed")
        return
    argv = [sink]
    if os.geteuid() == 0:
        argv += ["-u", "nobody"]
    argv += ["127.0.0.8:%d" % port, "10"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.8", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        e = env.deliver(["a@sink.test", "b@sink.test"], [simple, big],
                        ["--smtp-hosts", "[127.0.0.8]:%d" % port])
        tap.ok(classes(e, 0) == {"a@sink.test": "ok", "b@sink.test": "ok"}
               and classes(e, 1) == {"a@sink.test": "ok", "b@sink.test": "ok"}
               and ev(e, "closed") and ev(e, "closed")[-1]["class"] == "ok",
               "delivery to Postfix smtp-sink completes (2 messages, one connection)", e)
    finally:
        proc.terminate()
        proc.wait(5)
        proc.stderr.close()


if __name__ == "__main__":
    sys.exit(main())
