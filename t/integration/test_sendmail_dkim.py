#!/usr/bin/python3
"""test_sendmail_dkim.py - mail submitted with the sendmail drop-in is DKIM-signed
by cleanup, and the signature of the message as queued verifies.

pmtad runs with `dkim-sign yes` and a domain-key for example.com; messages go in
through tools/sendmail over the pickup socket; pmta-qdump -b reads each one back
from the LMDB queue; test_dkim.py --verify then checks it with dkimpy,
opendkim-testmsg and dkimverify (the last two in a private network namespace
with its own DNS), and checks that a tampered copy fails.
"""
import base64
import os
import shutil
import subprocess
import sys
import tempfile

from pmtatest import Pmta, Tap, qdump, require_root, tool_path

SRCDIR = os.environ.get("PMTA_SRCDIR", os.getcwd())
KEY = os.path.join(SRCDIR, "t", "data", "dkim", "test.key")

MESSAGES = {
    "plain": (["-f", "alice@example.com", "bob@dest.test"],
              "From: Alice <alice@example.com>\nTo: bob@dest.test\nSubject: plain\n"
              "Message-ID: <sm-plain@example.com>\nDate: Fri, 27 Nov 2026 10:00:00 +0000\n\n"
              "Hello Bob.\n.leading dot line\n"),
    "eightbit-folded-t": (["-t", "-i", "-f", "alice@example.com"],
                          "From: alice@example.com\nTo: carol@dest.test,\n dave@dest.test\n"
                          "Subject: a long folded\n subject line\nMessage-ID: <sm-8bit@example.com>\n"
                          "Date: Fri, 27 Nov 2026 10:00:00 +0000\nMIME-Version: 1.0\n"
                          "Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n"
                          "Grüße aus Köln.\n.\nThe lone dot above is content (-i).\n"),
}


def body_of(message):
    if message.get("body") is not None:
        return message["body"].encode("utf-8")
    return base64.b64decode(message.get("body_base64", ""))


def find(queue, message_id):
    for m in queue:
        if message_id.encode() in body_of(m):
            return m
    return None


def main():
    tap = Tap()
    require_root(tap)
    with Pmta(name="smdkim") as p:
        key = os.path.join(p.dir, "dkim.key")
        shutil.copy(KEY, key)
        shutil.chown(key, "pmta", "pmta")
        os.chmod(key, 0o600)
        p.write_config("domain-key s1,example.com,%s\n<domain *>\n  dkim-sign yes\n</domain>\n" % key,
                       processes={"smtp-out": 0})
        p.start()
        env = dict(os.environ, PMTA_PICKUP_SOCKET=os.path.join(p.run_dir, "pickup"))
        files = []
        with tempfile.TemporaryDirectory() as tmp:
            for name, (args, text) in MESSAGES.items():
                r = subprocess.run([tool_path("sendmail")] + args, input=text.encode(),
                                   capture_output=True, env=env, timeout=30)
                tap.ok(r.returncode == 0, "sendmail %s exits 0" % name, r.stderr)
                mid = text.split("Message-ID: ")[1].split("\n")[0]
                m = find(qdump(p.spool, body=True), mid)
                raw = body_of(m) if m else b""
                tap.ok(b"DKIM-Signature:" in raw and b"d=example.com" in raw,
                       "%s is queued with a DKIM-Signature for d=example.com" % name, raw[:600])
                path = os.path.join(tmp, "sendmail-" + name)
                with open(path, "wb") as f:
                    f.write(raw)
                files.append(path)
            verify = subprocess.run([sys.executable, os.path.join(SRCDIR, "t", "integration",
                                                                  "test_dkim.py"), "--verify"] + files,
                                    capture_output=True, text=True, timeout=120)
            relay_tap(tap, verify.stdout)
            tap.ok(verify.returncode == 0, "every verifier agrees", verify.stderr[-2000:])
    return tap.done()


def relay_tap(tap, output):
    """Re-number test_dkim.py's TAP lines into ours (skips stay skips)."""
    for line in output.splitlines():
        if line.startswith("ok ") or line.startswith("not ok "):
            ok = line.startswith("ok ")
            text = line.split(" - ", 1)[1] if " - " in line else line
            if "# SKIP" in text:
                name, reason = text.split("# SKIP", 1)
                tap.skip(name.strip(), reason.strip())
            else:
                tap.ok(ok, text)
        elif line.startswith("#"):
            print(line)


if __name__ == "__main__":
    sys.exit(main())
