#!/usr/bin/env python3
"""test_smtpd.py - real SMTP sessions against pmtad's smtpd, and the sendmail drop-in.

Sources by client address (all on loopback):
  127.0.0.1  relaying, STARTTLS      127.0.0.2  no relaying; 3 rcpts, 10k max, STARTTLS
  127.0.0.3  smtp-service no         127.0.0.4  plaintext AUTH allowed
  127.0.0.5  plaintext AUTH allowed, but require-starttls-before-auth
  127.0.0.6  require-auth (relaying)      127.0.0.7  allow-auth no, STARTTLS
The server certificate is issued by an intermediate CA that only
smtp-server-tls-ca-file holds: a client that trusts the root alone verifies it
only if smtpd sends the chain. A second listener speaks implicit TLS
(immediate-tls) with a certificate of its own (the listener's tls-certificate).
Users: <smtp-user alice> (authentication-method password), carol
(authentication-method system: warned about at load, cannot log in) and bob in
an auth_file with a SHA-512-crypt hash. Messages are checked in the queue with
tools/pmta-qdump.
"""
import os
import re
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import time

from pmtatest import (Tap, Pmta, SmtpRaw, body_of, find_message, free_port, make_cert, qdump,
                      require_root, sha512_crypt, tool_path, wait_for)
from testca import TestCA

tap = Tap()
require_root(tap)

EX_USAGE, EX_DATAERR, EX_NOUSER, EX_UNAVAILABLE, EX_TEMPFAIL = 64, 65, 67, 69, 75


def tls_context():
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def ehlo_keywords(port, source=None):
    s = smtplib.SMTP("127.0.0.1", port, timeout=10, source_address=(source, 0) if source else None)
    code, text = s.ehlo("client.test")
    s.quit()
    return code, text.decode().split("\n")


def chained_cert(directory):
    """(root CA file, server PEM, CA file): the server's certificate (mta.test.example) is
    issued by an intermediate; its PEM holds the certificate and key only, the CA file the
    intermediate and the root (smtp-server-tls-ca-file)."""
    ca = TestCA(os.path.join(directory, "ca"))
    sub = ca.intermediate("openpmta test sub-CA")
    cert, key = sub.issue("mta.test.example", ["mta.test.example"])
    pem = os.path.join(directory, "leaf.pem")
    cafile = os.path.join(directory, "chain.pem")
    for path, parts in ((pem, (cert, key)), (cafile, (sub.cert, ca.cert))):
        with open(path, "w") as out:
            for part in parts:
                with open(part) as f:
                    out.write(f.read())
    os.chmod(cafile, 0o644)
    os.chmod(pem, 0o600)
    try:
        import pwd
        pw = pwd.getpwnam("pmta")
        os.chown(pem, pw.pw_uid, pw.pw_gid)
    except KeyError:
        os.chmod(pem, 0o644)
    return ca.cert, pem, cafile


def subject_cn(der):
    """The CN of a DER certificate (openssl CLI)."""
    r = subprocess.run(["openssl", "x509", "-inform", "DER", "-noout", "-subject", "-nameopt",
                        "multiline"], input=der, capture_output=True, timeout=10)
    m = re.search(rb"commonName\s*=\s*(\S+)", r.stdout)
    return m.group(1).decode() if m else None


def msg(mid, extra="", body="Hello.\r\n"):
    return ("From: a@example.test\r\nTo: b@example.test\r\nSubject: test\r\n"
            "Message-ID: %s\r\n%s\r\n%s" % (mid, extra, body))


with Pmta(name="test_smtpd") as p:
    root, pem, cafile = chained_cert(p.dir)
    listener_pem = make_cert(p.dir, name="implicit.pem", cn="implicit.test.example")
    authfile = os.path.join(p.dir, "auth_file")
    with open(authfile, "w") as f:
        f.write("# user:hash\nbob:%s\n" % sha512_crypt("builder"))
    os.chmod(authfile, 0o644)
    tls_port = free_port()
    p.write_config("""
smtp-server-tls-certificate %s
smtp-server-tls-ca-file %s
relay-domain relay.test
auth_type = "auth_file"
auth_file = "%s"
<smtp-listener 127.0.0.1:%d>
    immediate-tls yes
    tls-certificate %s
</smtp-listener>
<source 127.0.0.1>
    always-allow-relaying yes
    allow-starttls yes
</source>
<source 127.0.0.2>
    allow-starttls yes
    max-rcpt-per-message 3
    max-message-size 10k
</source>
<source 127.0.0.3>
    smtp-service no
</source>
<source 127.0.0.4>
    allow-unencrypted-plain-auth yes
</source>
<source 127.0.0.5>
    allow-unencrypted-plain-auth yes
    require-starttls-before-auth yes
    allow-starttls yes
</source>
<source 127.0.0.6>
    always-allow-relaying yes
    require-auth yes
    allow-starttls yes
</source>
<source 127.0.0.7>
    allow-auth no
    allow-starttls yes
</source>
<smtp-user alice>
    password "wonderland"
    authentication-method password
</smtp-user>
<smtp-user carol>
    password "looking-glass"
    authentication-method system
</smtp-user>
""" % (pem, cafile, authfile, tls_port, listener_pem), processes={"smtp-out": 0})
    p.start()
    p.wait_log(r"cleanup\[\d+\]: info: queue .* open", timeout=20)   # before the first qdump
    port = p.port

    # --- EHLO per policy --------------------------------------------------------------------
    code, kw = ehlo_keywords(port)
    tap.ok(code == 250 and kw[0] == "mta.test.example", "EHLO answers with host-name", kw)
    size = [int(k.split()[1]) for k in kw if re.match(r"SIZE \d+$", k)]
    tap.ok("STARTTLS" in kw and "PIPELINING" in kw and "CHUNKING" in kw and size
           and size[0] < 1 << 30,
           "STARTTLS, PIPELINING, CHUNKING, SIZE offered to 127.0.0.1 (max-message-size "
           "unlimited: SIZE is what the queue, queue-map-size 1G, could hold)", kw)
    tap.ok(not any(k.startswith("AUTH") for k in kw), "AUTH not offered in plaintext", kw)
    code, kw = ehlo_keywords(port, "127.0.0.2")
    tap.ok("SIZE 10240" in kw, "max-message-size advertised as SIZE 10240", kw)
    code, kw = ehlo_keywords(port, "127.0.0.4")
    tap.ok(any(k.startswith("AUTH") and "PLAIN" in k and "LOGIN" in k for k in kw),
           "allow-unencrypted-plain-auth: AUTH PLAIN LOGIN offered in plaintext", kw)
    r = SmtpRaw(port, source="127.0.0.3")
    tap.ok(r.reply()[0] == 554, "smtp-service no: 554 greeting")
    tap.ok(r.cmd("EHLO x") == 503 and r.cmd("QUIT") == 221, "then only QUIT works")
    r.close()

    # --- a full transaction ------------------------------------------------------------------
    before = len(qdump(p.spool))
    s = smtplib.SMTP("127.0.0.1", port, timeout=10)
    refused = s.sendmail("a@example.test", ["b@example.test", "c@other.test"], msg("<t1@test>"))
    code, text = s.noop()
    s.quit()
    q = qdump(p.spool, body=True)
    m = find_message(q, "<t1@test>")
    tap.ok(refused == {} and len(q) == before + 1, "a transaction gets 250 and one message is queued")
    tap.ok(m and sorted(r["address"] for r in m["recipients"]) == ["b@example.test", "c@other.test"]
           and m["sender"] == "a@example.test", "the queued message has both recipients and the sender", m)
    tap.ok(m and "Hello." in body_of(m), "the body is stored", m)

    # --- relay policy --------------------------------------------------------------------------
    r = SmtpRaw(port, source="127.0.0.2")
    r.reply()
    r.cmd("EHLO client.test")
    r.cmd("MAIL FROM:<a@example.test>")
    tap.ok(r.cmd("RCPT TO:<x@elsewhere.test>") == 550, "relay denied: 550 from a source without relaying")
    r.send("RCPT TO:<x@elsewhere.test>\r\n")
    reply = r.reply()
    tap.ok(reply[0] == 550 and "5.7.1" in reply[1][0], "with enhanced code 5.7.1", reply)
    tap.ok(r.cmd("RCPT TO:<x@relay.test>") == 250, "relay-domain recipients are accepted")
    r.cmd("RCPT TO:<y@relay.test>")
    r.cmd("RCPT TO:<z@relay.test>")
    tap.ok(r.cmd("RCPT TO:<w@relay.test>") == 452, "max-rcpt-per-message 3: the 4th gets 452")
    r.cmd("RSET")
    tap.ok(r.cmd("MAIL FROM:<a@example.test> SIZE=20000") == 552, "declared SIZE over max-message-size: 552")
    r.cmd("QUIT")
    r.close()

    # --- STARTTLS + AUTH -------------------------------------------------------------------------
    s = smtplib.SMTP("127.0.0.1", port, timeout=10, source_address=("127.0.0.2", 0))
    s.ehlo("client.test")
    code, _ = s.starttls(context=tls_context())
    tap.ok(code == 220, "STARTTLS: 220 and the handshake succeeds")
    s.ehlo("client.test")
    auth = s.esmtp_features.get("auth", "")
    tap.ok("PLAIN" in auth and "LOGIN" in auth and "starttls" not in s.esmtp_features,
           "after STARTTLS: AUTH PLAIN LOGIN offered, STARTTLS no longer", s.esmtp_features)
    try:
        s.login("alice", "nope")
        bad = None
    except smtplib.SMTPAuthenticationError as e:
        bad = e.smtp_code
    tap.ok(bad == 535, "a wrong password gets 535")
    s.user, s.password = "alice", "wonderland"
    code, _ = s.auth("PLAIN", s.auth_plain)
    tap.ok(code == 235, "AUTH PLAIN against <smtp-user alice>: 235")
    refused = s.sendmail("alice@example.test", ["x@elsewhere.test"], msg("<t2@test>"))
    tap.ok(refused == {}, "authenticated: relaying allowed from a non-relay source")
    s.quit()
    m = find_message(qdump(p.spool, body=True), "<t2@test>")
    tap.ok(m and m["auth_user"] == "alice", "the queued message records auth_user alice", m)

    s = smtplib.SMTP("127.0.0.1", port, timeout=10, source_address=("127.0.0.2", 0))
    s.starttls(context=tls_context())
    s.ehlo("client.test")
    s.user, s.password = "bob", "builder"
    code, _ = s.auth("LOGIN", s.auth_login)
    tap.ok(code == 235, "AUTH LOGIN against auth_file (SHA-512-crypt): 235")
    s.quit()
    s = smtplib.SMTP("127.0.0.1", port, timeout=10, source_address=("127.0.0.2", 0))
    s.starttls(context=tls_context())
    s.ehlo("client.test")
    s.user, s.password = "bob", "wrong"
    try:
        code, _ = s.auth("LOGIN", s.auth_login)
    except smtplib.SMTPAuthenticationError as e:
        code = e.smtp_code
    tap.ok(code == 535, "auth_file: a wrong password gets 535")
    s.quit()

    # --- swaks: STARTTLS + AUTH + message in one go --------------------------------------------
    r = subprocess.run(["swaks", "--server", "127.0.0.1", "--port", str(port), "--local-interface",
                        "127.0.0.2", "--tls", "--auth", "PLAIN", "--auth-user", "bob",
                        "--auth-password", "builder", "--from", "bob@example.test", "--to",
                        "far@away.test", "--header", "Message-ID: <swaks1@test>"],
                       capture_output=True, text=True, timeout=30)
    tap.ok(r.returncode == 0 and find_message(qdump(p.spool, body=True), "<swaks1@test>"),
           "swaks --tls --auth: message queued", r.stdout[-800:])

    # --- require-starttls-before-auth, authentication-method ------------------------------------
    code, kw = ehlo_keywords(port, "127.0.0.5")
    tap.ok(not any(k.startswith("AUTH") for k in kw),
           "require-starttls-before-auth: no AUTH offered in plaintext (though "
           "allow-unencrypted-plain-auth yes)", kw)
    r = SmtpRaw(port, source="127.0.0.5")
    r.reply()
    r.cmd("EHLO client.test")
    r.send("AUTH PLAIN AGFsaWNlAHdvbmRlcmxhbmQ=\r\n")    # alice / wonderland
    reply = r.reply()
    r.close()
    tap.ok(reply[0] == 503 and "5.5.1" in reply[1][0],
           "require-starttls-before-auth: AUTH before STARTTLS is refused (503 5.5.1)", reply)
    s = smtplib.SMTP("127.0.0.1", port, timeout=10, source_address=("127.0.0.5", 0))
    s.ehlo("client.test")
    s.starttls(context=tls_context())
    s.ehlo("client.test")
    s.user, s.password = "alice", "wonderland"
    code, _ = s.auth("PLAIN", s.auth_plain)
    s.quit()
    tap.ok(code == 235, "require-starttls-before-auth: after STARTTLS the same AUTH gets 235")
    s = smtplib.SMTP("127.0.0.1", port, timeout=10, source_address=("127.0.0.2", 0))
    s.starttls(context=tls_context())
    s.ehlo("client.test")
    s.user, s.password = "carol", "looking-glass"
    try:
        code, _ = s.auth("PLAIN", s.auth_plain)
    except smtplib.SMTPAuthenticationError as e:
        code = e.smtp_code
    s.quit()
    line = [i for i, l in enumerate(open(p.config_path).read().splitlines(), 1)
            if "authentication-method system" in l][0]
    tap.ok(code == 535 and re.search(r"config:%d: warning: authentication-method system is not "
                                     r"implemented" % line, p.output() + p.log()),
           "authentication-method system: warned about at load (file:line), the user's "
           "password is not accepted (535)", (code, line))

    # --- require-auth, allow-auth ----------------------------------------------------------------
    r = SmtpRaw(port, source="127.0.0.6")
    r.reply()
    r.cmd("EHLO client.test")
    r.send("MAIL FROM:<a@example.test>\r\n")
    reply = r.reply()
    r.close()
    tap.ok(reply[0] == 530 and "5.7.0" in reply[1][0],
           "require-auth: MAIL before AUTH gets 530 5.7.0 (though the source may relay)", reply)
    s = smtplib.SMTP("127.0.0.1", port, timeout=10, source_address=("127.0.0.6", 0))
    s.starttls(context=tls_context())
    s.ehlo("client.test")
    s.login("alice", "wonderland")
    refused = s.sendmail("alice@example.test", ["x@elsewhere.test"], msg("<ra1@test>"))
    s.quit()
    tap.ok(refused == {} and find_message(qdump(p.spool, body=True), "<ra1@test>"),
           "require-auth: after AUTH the same source's mail is accepted")
    s = smtplib.SMTP("127.0.0.1", port, timeout=10, source_address=("127.0.0.7", 0))
    s.starttls(context=tls_context())
    s.ehlo("client.test")
    feats = dict(s.esmtp_features)
    code, _ = s.docmd("AUTH", "PLAIN AGFsaWNlAHdvbmRlcmxhbmQ=")
    s.quit()
    tap.ok("auth" not in feats and code == 503,
           "allow-auth no: no AUTH offered even after STARTTLS, and AUTH gets 503", (feats, code))

    # --- smtp-server-tls-ca-file: the chain goes with the certificate ---------------------------
    ctx = ssl.create_default_context(cafile=root)
    ctx.check_hostname = False
    try:
        s = smtplib.SMTP("127.0.0.1", port, timeout=10)
        s.starttls(context=ctx)
        cn = subject_cn(s.sock.getpeercert(binary_form=True))
        s.quit()
        verified = None
    except (ssl.SSLError, smtplib.SMTPException, OSError) as e:
        cn, verified = None, repr(e)
    tap.ok(verified is None and cn == "mta.test.example",
           "smtp-server-tls-ca-file: STARTTLS sends the intermediate; a client trusting only "
           "the root verifies mta.test.example", verified or cn)

    # --- implicit TLS listener ---------------------------------------------------------------------
    try:
        s = smtplib.SMTP_SSL("127.0.0.1", tls_port, timeout=10, context=tls_context())
        listener_cn = subject_cn(s.sock.getpeercert(binary_form=True))
        code, _ = s.ehlo("client.test")
        feats = dict(s.esmtp_features)
        refused = s.sendmail("a@example.test", ["b@example.test"], msg("<tls1@test>"))
        s.quit()
        ok = code == 250 and refused == {}
    except (OSError, smtplib.SMTPException) as e:
        ok, feats, listener_cn = False, str(e), None
    tap.ok(ok, "immediate-tls listener: TLS from the first byte, message accepted")
    tap.ok(listener_cn == "implicit.test.example",
           "the listener's tls-certificate is the one it presents (not the global one)",
           listener_cn)
    tap.ok("starttls" not in feats and "PLAIN" in feats.get("auth", ""),
           "implicit TLS: no STARTTLS offered, AUTH offered", feats)
    tap.ok(find_message(qdump(p.spool, body=True), "<tls1@test>"), "implicit-TLS message in the queue")

    # --- sendmail ------------------------------------------------------------------------------------
    env = dict(os.environ, PMTA_PICKUP_SOCKET=os.path.join(p.run_dir, "pickup"))
    sm = tool_path("sendmail")

    def sendmail(args, text, env=env):
        return subprocess.run([sm] + args, input=text.encode(), capture_output=True,
                              env=env, timeout=30)

    st = os.stat(os.path.join(p.run_dir, "pickup"))
    tap.ok(oct(st.st_mode & 0o777) == "0o666", "pickup socket exists with mode 0666")
    r = sendmail(["-f", "from@example.test", "r1@example.test", "r2@other.test"],
                 "Subject: sm1\nMessage-ID: <sm1@test>\n\nline one\n.hidden dot\n")
    m = find_message(qdump(p.spool, body=True), "<sm1@test>")
    tap.ok(r.returncode == 0 and m and m["sender"] == "from@example.test"
           and sorted(x["address"] for x in m["recipients"]) == ["r1@example.test", "r2@other.test"],
           "sendmail -f with recipients on the command line", r.stderr)
    tap.ok(m and "\r\n.hidden dot\r\n" in body_of(m) and m["source"] == "{pickup}",
           "sendmail: CRLF line ends, leading dot kept, source {pickup}", m)
    r = sendmail(["-t", "-f", "t@example.test"],
                 "To: To One <to1@example.test>, to2@example.test\nCc: cc@example.test\n"
                 "Bcc: hidden@example.test\nSubject: sm2\nMessage-ID: <sm2@test>\n\nbody\n")
    m = find_message(qdump(p.spool, body=True), "<sm2@test>")
    rcpts = sorted(x["address"] for x in m["recipients"]) if m else []
    tap.ok(r.returncode == 0 and rcpts == ["cc@example.test", "hidden@example.test",
                                           "to1@example.test", "to2@example.test"],
           "sendmail -t: To, Cc and Bcc recipients", (rcpts, r.stderr))
    tap.ok(m and "bcc:" not in body_of(m).lower() and "hidden@" not in body_of(m),
           "sendmail -t: the Bcc header is removed", m)
    r = sendmail(["-F", "Jane Doe", "-f", "jane@example.test", "r@example.test"],
                 "Subject: sm3\nMessage-ID: <sm3@test>\n\nhi\n")
    m = find_message(qdump(p.spool, body=True), "<sm3@test>")
    tap.ok(m and 'From: "Jane Doe" <jane@example.test>' in body_of(m), "sendmail -F adds From with the name",
           m and body_of(m)[:300])
    r = sendmail(["-i", "r@example.test"], "Subject: sm4\nMessage-ID: <sm4@test>\n\nbefore\n.\nafter\n")
    m = find_message(qdump(p.spool, body=True), "<sm4@test>")
    tap.ok(m and "\r\n.\r\nafter" in body_of(m), "sendmail -i: a lone dot is content",
           m and body_of(m))
    r = sendmail(["r@example.test"], "Subject: sm5\nMessage-ID: <sm5@test>\n\nbefore\n.\nafter\n")
    m = find_message(qdump(p.spool, body=True), "<sm5@test>")
    tap.ok(m and "after" not in body_of(m), "sendmail without -i: a lone dot ends the message")
    r = sendmail(["-oi", "r@example.test"], "Subject: sm6\nMessage-ID: <sm6@test>\n\n.\nend\n")
    m = find_message(qdump(p.spool, body=True), "<sm6@test>")
    tap.ok(m and "end" in body_of(m), "sendmail -oi works like -i")
    r = sendmail(["-bs"], "EHLO local\r\nMAIL FROM:<bs@example.test>\r\nRCPT TO:<r@example.test>\r\n"
                 "DATA\r\nMessage-ID: <bs1@test>\r\n\r\nvia -bs\r\n.\r\nQUIT\r\n")
    out = r.stdout.decode()
    tap.ok(r.returncode == 0 and out.startswith("220 ") and "250 2.0.0" in out and "221 " in out
           and find_message(qdump(p.spool, body=True), "<bs1@test>"), "sendmail -bs speaks SMTP on stdin/stdout", out)
    r = sendmail([], "Subject: x\n\nno rcpt\n")
    tap.ok(r.returncode == EX_USAGE, "sendmail: no recipients -> EX_USAGE", r.returncode)
    r = sendmail(["bad<addr>@example.test"], "x\n")
    tap.ok(r.returncode == EX_DATAERR, "sendmail: a bad address -> EX_DATAERR", r.returncode)
    cfg_env = dict(os.environ)
    cfg_env.pop("PMTA_PICKUP_SOCKET", None)
    r = sendmail(["-C", p.config_path, "r@example.test"], "Message-ID: <sm7@test>\n\nvia -C\n", env=cfg_env)
    tap.ok(r.returncode == 0 and find_message(qdump(p.spool, body=True), "<sm7@test>"),
           "sendmail -C CONFIG finds the socket through run-directory", r.stderr)
    r = subprocess.run(["su", "nobody", "-s", "/bin/sh", "-c",
                        "PMTA_PICKUP_SOCKET=%s %s -f n@example.test r@example.test" % (env["PMTA_PICKUP_SOCKET"], sm)],
                       input=b"Message-ID: <sm8@test>\n\nfrom nobody\n", capture_output=True, timeout=30)
    tap.ok(r.returncode == 0 and find_message(qdump(p.spool, body=True), "<sm8@test>"),
           "sendmail works for an unprivileged user (no setuid)", r.stderr)

    # --- drain: a session open at SIGTERM gets 421 4.3.2 ------------------------------------------
    idle = SmtpRaw(port)
    idle.reply()
    idle.cmd("EHLO client.test")
    # pmtad down the hard way: the socket node stays, nobody answers
    p.kill_everything()
    r = sendmail(["r@example.test"], "x\n")
    tap.ok(r.returncode == EX_TEMPFAIL, "sendmail when pmtad died (stale socket): EX_TEMPFAIL", r.stderr)
    idle.close()
    p.start()
    idle = SmtpRaw(port)
    idle.reply()
    idle.cmd("EHLO client.test")
    p.stop()
    reply = idle.reply()
    tap.ok(reply[0] == 421 and "4.3.2" in reply[1][0], "SIGTERM: an idle session gets 421 4.3.2", reply)
    idle.close()
    r = sendmail(["r@example.test"], "x\n")
    tap.ok(r.returncode == EX_UNAVAILABLE, "sendmail when pmtad is stopped (no socket): EX_UNAVAILABLE",
           r.stderr)
    lines = [l for l in p.log().splitlines() if "smtpd[" in l and ("error" in l or "panic" in l)]
    tap.ok(not lines, "no smtpd errors in the log", "\n".join(lines[-10:]))

sys.exit(tap.done())
