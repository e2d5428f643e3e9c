#!/usr/bin/python3
"""test_dkim.py - DKIM signatures from cleanup/ checked by independent verifiers.

Drives t/unit/dkim_sign_tool (cleanup_message + cleanup_dkim on one message)
and checks every signature with three verifiers:

  dkimpy      dkim.verify(msg, dnsfunc=...) with the key record handed over
              directly (python3-dkim, always available);
  testmsg     opendkim-testmsg, which looks the key up in DNS;
  dkimverify  python3-dkim's command-line tool, which looks it up in DNS too
              (it needs python3-dnspython).

The two DNS-based verifiers get real DNS: the script re-runs itself in a
private user+network+mount namespace (unshare -rnm), brings up loopback,
bind-mounts a resolv.conf naming 127.0.0.1 over /etc/resolv.conf (visible to
this namespace only) and serves the key's TXT records with dnsmasq on
127.0.0.1:53. Nothing leaves the namespace. Where that is not possible
(no unshare permission, no dnsmasq, no dnspython) those checks are reported
as SKIP, never as passes.

Prints TAP. Needs PMTA_BUILDDIR and PMTA_SRCDIR (set by `make check`).
"""

import os
import shutil
import subprocess
import sys
import tempfile
import time

import dkim

from pmtatest import Tap

BUILDDIR = os.environ.get("PMTA_BUILDDIR", os.getcwd())
SRCDIR = os.environ.get("PMTA_SRCDIR", BUILDDIR)
TOOL = os.path.join(BUILDDIR, "t", "unit", "dkim_sign_tool")
DATA = os.path.join(SRCDIR, "t", "data")
KEY = os.path.join(DATA, "dkim", "test.key")
MESSAGES = os.path.join(DATA, "messages")
NS_FLAG = "PMTA_DKIM_TEST_IN_NAMESPACE"

ED_KEY = os.path.join(DATA, "dkim", "test-ed25519.key")

with open(os.path.join(DATA, "dkim", "test.txt"), "rb") as f:
    TXT_RECORD = f.read().strip()
with open(os.path.join(DATA, "dkim", "test-ed25519.txt"), "rb") as f:
    ED_TXT_RECORD = f.read().strip()

# Every selector/domain the tests sign with, and the key record it publishes.
DNS_RECORDS = {
    "s1._domainkey.example.com": TXT_RECORD,
    "sub._domainkey.sub.example.com": TXT_RECORD,
    "net._domainkey.example.net": TXT_RECORD,
    "wild._domainkey.other.example": TXT_RECORD,
    "wild._domainkey.brand.example": TXT_RECORD,
    "ed._domainkey.example.com": ED_TXT_RECORD,
}
DNS_NAMES = list(DNS_RECORDS)


# --- TAP ---------------------------------------------------------------------

T = Tap()


# --- the namespace with its own DNS -----------------------------------------

def reexec_in_namespace():
    """Run this script again inside unshare -rnm; return only if impossible."""
    if os.environ.get(NS_FLAG) or not shutil.which("unshare"):
        return
    probe = subprocess.run(["unshare", "-rnm", "true"], capture_output=True)
    if probe.returncode != 0:
        return
    env = dict(os.environ, **{NS_FLAG: namespace_ids()})
    sys.stdout.flush()
    os.execvpe("unshare", ["unshare", "-rnm", sys.executable, os.path.abspath(__file__)]
               + sys.argv[1:], env)


def txt_record_args():
    # A TXT string holds at most 255 bytes: split the record, as zone files do.
    args = []
    for name, record in DNS_RECORDS.items():
        rec = record.decode()
        parts = [rec[i:i + 200] for i in range(0, len(rec), 200)]
        args.append("--txt-record=%s,%s" % (name, ",".join(parts)))  # dnsmasq: unquoted
    return args


def die_with_parent():
    """In the child: SIGTERM when this test dies, so dnsmasq never lingers."""
    try:
        import ctypes
        import signal
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def namespace_ids():
    return ",".join(os.readlink("/proc/self/ns/" + ns) for ns in ("net", "mnt"))


def in_private_namespace():
    """Never touch the host's resolv.conf: our namespaces must differ from the launcher's."""
    try:
        outer = os.environ.get(NS_FLAG, "").split(",")
        return all(a != b for a, b in zip(outer, namespace_ids().split(","))) \
            and len(outer) == 2
    except OSError:
        return False


def start_dns(tmp):
    """dnsmasq on 127.0.0.1:53 in our namespace; returns (process, why-not)."""
    if not os.environ.get(NS_FLAG) or not in_private_namespace():
        return None, "no private network namespace (unshare -rnm not permitted)"
    if not shutil.which("dnsmasq") or not shutil.which("ip"):
        return None, "dnsmasq or ip not installed"
    resolv = os.path.join(tmp, "resolv.conf")
    with open(resolv, "w") as f:
        f.write("nameserver 127.0.0.1\noptions attempts:1 timeout:2\n")
    for cmd in (["ip", "link", "set", "lo", "up"],
                ["mount", "--bind", resolv, "/etc/resolv.conf"]):
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            return None, "%s: %s" % (" ".join(cmd), r.stderr.strip())
    proc = subprocess.Popen(
        ["dnsmasq", "--no-daemon", "--port=53", "--listen-address=127.0.0.1",
         "--bind-interfaces", "--no-resolv", "--no-hosts", "--user=root", "--log-facility=-",
         "--pid-file=" + os.path.join(tmp, "dnsmasq.pid")] + txt_record_args(),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        preexec_fn=die_with_parent)
    for line in proc.stderr:          # "started" is logged once the socket is bound
        if "started" in line:
            return proc, None
    return None, "dnsmasq did not start"


def have_dnspython():
    try:
        import dns.resolver  # noqa: F401  (what dkimverify needs for DNS)
        return True
    except ImportError:
        return False


# --- running the signer and the verifiers -----------------------------------

def sign(msg, *args):
    """Run dkim_sign_tool; returns (exit code, output bytes, info dict, stderr)."""
    r = subprocess.run([TOOL] + list(args), input=msg, capture_output=True, timeout=60)
    err = r.stderr.decode(errors="replace")
    info = {}
    for line in err.splitlines():
        if line.startswith("info: ") and "=" in line:
            k, v = line[6:].split("=", 1)
            info[k] = v
    return r.returncode, r.stdout, info, err


def dnsfunc(name, timeout=5):
    return DNS_RECORDS.get(name.decode().rstrip("."))


def verify_dkimpy(msg):
    """Every DKIM-Signature of MSG must verify (dkim.verify checks only the first)."""
    try:
        d = dkim.DKIM(msg)
        n = len([f for f in d.headers if f[0].lower() == b"dkim-signature"])
        bad = [i for i in range(n) if not d.verify(idx=i, dnsfunc=dnsfunc)]
        return n > 0 and not bad, "signatures %s of %d do not verify" % (bad, n) if bad else ""
    except Exception as e:  # a verifier crash is a failure, with its reason
        return False, repr(e)


def verify_cmd(cmd, msg):
    r = subprocess.run(cmd, input=msg, capture_output=True, timeout=60)
    return r.returncode == 0, (r.stdout + r.stderr).decode(errors="replace")


class Verifiers:
    def __init__(self, dns_why):
        self.dns_why = dns_why
        self.dkimverify_why = dns_why or (None if have_dnspython() else
                                          "python3-dnspython not installed")
        if not shutil.which("opendkim-testmsg"):
            self.testmsg_why = "opendkim-testmsg not installed"
        else:
            self.testmsg_why = dns_why

    def each(self):
        yield "dkimpy", None, verify_dkimpy
        yield "opendkim-testmsg", self.testmsg_why, \
            lambda m: verify_cmd(["opendkim-testmsg"], m)
        yield "dkimverify", self.dkimverify_why, lambda m: verify_cmd(["dkimverify"], m)

    def expect(self, name, msg, good):
        """One TAP line per verifier: MSG must verify (GOOD) or must not."""
        for vname, why, fn in self.each():
            label = "%s: %s %s" % (name, vname, "verifies" if good else "rejects")
            if why:
                T.skip(label, why)
                continue
            ok, diag = fn(msg)
            # A rejection must be for the signature, not for a DNS failure.
            reason_ok = good or vname != "opendkim-testmsg" or "Bad signature" in diag
            T.ok(ok == good and reason_ok, label, diag)


def read_message(name):
    with open(os.path.join(MESSAGES, name), "rb") as f:
        return f.read()


def all_sig_tags(out):
    """Tags of every DKIM-Signature in OUT, unfolded, top first."""
    head = out.split(b"\r\n\r\n", 1)[0].decode(errors="replace")
    fields = head.replace("\r\n\t", "").replace("\r\n ", "").split("\r\n")
    sigs = []
    for f in fields:
        if f.lower().startswith("dkim-signature:"):
            tags = {}
            for part in f.split(":", 1)[1].split(";"):
                if "=" in part:
                    k, v = part.split("=", 1)
                    tags[k.strip()] = "".join(v.split())
            sigs.append(tags)
    return sigs


def sig_tags(out):
    """Tags of the first DKIM-Signature in OUT, unfolded."""
    sigs = all_sig_tags(out)
    return sigs[0] if sigs else None


KEY_S1 = "s1,example.com," + KEY
KEY_ED = "ed,example.com," + ED_KEY


# --- the cases ---------------------------------------------------------------

def signing_cases():
    plain = read_message("plain.eml")
    crlf = plain.replace(b"\n", b"\r\n")
    return [
        ("plain ASCII (LF input)", plain, [KEY_S1]),
        ("plain ASCII (CRLF input)", crlf, [KEY_S1]),
        ("mixed line endings", crlf.replace(b"\r\n", b"\n", 5).replace(b"here", b"he\rre"),
         [KEY_S1]),
        ("8-bit body", read_message("8bit.eml"), [KEY_S1]),
        ("folded long headers", read_message("folded.eml"), [KEY_S1]),
        ("multipart with base64 attachment", read_message("multipart.eml"), [KEY_S1]),
        ("body without final newline", plain.rstrip(b"\n"), [KEY_S1]),
        ("empty body", plain.split(b"\n\n")[0] + b"\n\n", [KEY_S1]),
        ("no body and no separator", plain.split(b"\n\n")[0] + b"\n", [KEY_S1]),
        ("trailing blank lines", plain + b"\n\n\n", [KEY_S1]),
        ("trailing whitespace lines", crlf + b"  \r\n\t\r\n", [KEY_S1]),
        ("Sender identity", read_message("sender.eml"),
         [KEY_S1, "net,example.net," + KEY]),
        ("simple/simple", read_message("folded.eml"), [KEY_S1, "-c", "simple/simple"]),
        ("relaxed/simple", read_message("multipart.eml"), [KEY_S1, "-c", "relaxed/simple"]),
        ("ed25519-sha256", read_message("multipart.eml"), [KEY_ED, "-A", "ed25519-sha256"]),
        ("ed25519-sha256 simple/simple", read_message("folded.eml"),
         [KEY_ED, "-A", "ed25519-sha256", "-c", "simple/simple"]),
        ("Ed25519 and RSA", read_message("8bit.eml"),
         [KEY_ED, KEY_S1, "-A", "ed25519-sha256,rsa-sha256"]),
        ("RSA and Ed25519, 64 at once on the thread pool", crlf,
         [KEY_S1, KEY_ED, "-A", "rsa-sha256 ed25519-sha256", "-N", "64"]),
    ]


def key_args(spec):
    args = []
    it = iter(spec)
    for s in it:
        if s.startswith("-"):
            args += [s, next(it)]
        else:
            args += ["-k", s]
    return args


def test_signing(v):
    for name, msg, spec in signing_cases():
        rc, out, info, err = sign(msg, *key_args(spec))
        if not T.ok(rc == 0 and info.get("signed") == "yes", "%s: signed" % name, err):
            continue
        v.expect(name, out, True)


def test_algorithms():
    """dkim-algorithm: one signature per algorithm, each with a key of its type, in order."""
    plain = read_message("plain.eml")
    rc, out, info, err = sign(plain, "-k", KEY_ED, "-k", KEY_S1,
                              "-A", "ed25519-sha256,rsa-sha256")
    sigs = all_sig_tags(out)
    T.ok([(t.get("a"), t.get("s")) for t in sigs] == [("ed25519-sha256", "ed"),
                                                       ("rsa-sha256", "s1")],
         "two signatures, the first asked on top, each with its own key", sigs)
    rc, out, info, err = sign(plain, "-k", KEY_ED, "-k", KEY_S1)
    sigs = all_sig_tags(out)
    T.ok([t.get("a") for t in sigs] == ["rsa-sha256"],
         "default rsa-sha256 skips the Ed25519 key listed first", sigs)
    rc, out, info, err = sign(plain, "-k", KEY_S1, "-A", "ed25519-sha256,rsa-sha256")
    sigs = all_sig_tags(out)
    T.ok(rc == 0 and [t.get("a") for t in sigs] == ["rsa-sha256"],
         "no Ed25519 key matching: the RSA signature alone", err)
    rc, out, info, err = sign(plain, "-k", KEY_S1, "-A", "ed25519-sha256")
    T.ok(rc == 0 and info.get("signed") == "no", "no key of the asked type: unsigned", err)


def test_keys_parsed_once():
    """A key is parsed when it is loaded, not for each message OpenDKIM signs with it."""
    rc, out, info, err = sign(read_message("plain.eml"), "-k", KEY_S1, "-k", KEY_ED,
                              "-A", "rsa-sha256,ed25519-sha256", "-N", "40")
    T.ok(rc == 0 and info.get("keys-parsed") == "2" and info.get("signatures-made") == "80"
         and info.get("key-reuses") == "80",
         "80 signatures, 2 key parses: every signature used the parsed key", err)


def test_sender_picks_sender_domain():
    rc, out, info, err = sign(read_message("sender.eml"), "-k", KEY_S1,
                              "-k", "net,example.net," + KEY)
    tags = sig_tags(out) or {}
    T.ok(tags.get("d") == "example.net" and tags.get("s") == "net",
         "identity from Sender: d=example.net", tags)


def test_tampering(v):
    plain = read_message("plain.eml")
    rc, out, info, err = sign(plain, "-k", KEY_S1)
    v.expect("tampered body", out.replace(b"Hello Bob", b"Hello Rob"), False)
    v.expect("tampered Subject", out.replace(b"Quarterly report", b"Quarterly rep0rt"), False)
    rc, out, info, err = sign(read_message("multipart.eml"), "-k", KEY_S1)
    lines = out.split(b"\r\n")
    idx = max(i for i, l in enumerate(lines) if len(l) == 76)   # a base64 line
    lines[idx] = lines[idx][:10] + (b"A" if lines[idx][10:11] != b"A" else b"B") + lines[idx][11:]
    v.expect("tampered attachment", b"\r\n".join(lines), False)
    # Relaxed canonicalisation must ignore what it is meant to ignore.
    v.expect("relaxed: re-folded header still", out.replace(
        b"Subject: Report with attachment", b"Subject: Report with\r\n  attachment"), True)


def test_signed_header_list():
    rc, out, info, err = sign(read_message("folded.eml"), "-k", KEY_S1)
    h = [x.lower() for x in (sig_tags(out) or {}).get("h", "").split(":")]
    want = ["from", "to", "subject", "date", "message-id", "list-unsubscribe",
            "list-unsubscribe-post", "mime-version", "content-type"]
    T.ok(all(w in h for w in want) and "received" not in h,
         "default dkim-headers signs the usual fields, not Received", h)
    rc, out, info, err = sign(read_message("folded.eml"), "-k", KEY_S1, "-H", "subject,date")
    h = [x.lower() for x in (sig_tags(out) or {}).get("h", "").split(":")]
    T.ok(sorted(h) == ["date", "from", "subject"], "dkim-headers honoured, From always added", h)
    T.ok(verify_dkimpy(out)[0], "custom dkim-headers: dkimpy verifies")


def test_key_choice():
    sub = read_message("plain.eml").replace(b"alice@example.com", b"alice@sub.example.com")
    rc, out, info, err = sign(sub, "-k", KEY_S1, "-k", "sub,sub.example.com," + KEY)
    tags = sig_tags(out) or {}
    T.ok(tags.get("d") == "example.com" and tags.get("s") == "s1",
         "parent-domain key (listed first) signs sub.example.com", tags)
    T.ok(verify_dkimpy(out)[0], "parent-domain signature verifies")

    rc, out, info, err = sign(sub, "-k", "sub,sub.example.com," + KEY, "-k", KEY_S1)
    tags = sig_tags(out) or {}
    T.ok(tags.get("d") == "sub.example.com", "exact key listed first wins", tags)

    other = read_message("plain.eml").replace(b"alice@example.com", b"alice@other.example")
    args = ["-k", KEY_S1, "-k", "wild,*," + KEY]
    rc, out, info, err = sign(other, *args)
    tags = sig_tags(out) or {}
    T.ok(tags.get("d") == "other.example" and tags.get("s") == "wild",
         "'*' key signs an unmatched domain as d=<identity domain>", tags)
    T.ok(verify_dkimpy(out)[0], "'*' signature verifies")
    rc, out, info, err = sign(read_message("plain.eml"), *args)
    T.ok((sig_tags(out) or {}).get("s") == "s1", "'*' key listed last does not shadow a match")

    rc, out, info, err = sign(other, "-k", KEY_S1)
    T.ok(rc == 0 and info.get("signed") == "no" and b"DKIM-Signature" not in out,
         "no matching key: delivered unsigned", err)

    noaddr = b"From: undisclosed-recipients:;\nSubject: x\n\nbody\n"
    rc, out, info, err = sign(noaddr, "-k", KEY_S1, "-F", "bounce@example.com")
    T.ok((sig_tags(out) or {}).get("d") == "example.com", "dkim-identity fallback used", err)
    rc, out, info, err = sign(b"Subject: x\n\nbody\n", "-k", KEY_S1, "-F", "b@example.com")
    T.ok(rc == 0 and info.get("signed") == "no", "no From: delivered unsigned", err)
    rc, out, info, err = sign(read_message("sender.eml"), "-k", KEY_S1, "-i", "@example.com")
    T.ok((sig_tags(out) or {}).get("d") == "example.com", "forced dkim-identity used", err)


def test_key_errors():
    msg = read_message("plain.eml")
    rc, out, info, err = sign(msg, "-k", "s1,example.com,/nonexistent/dkim.pem")
    T.ok(rc == 4 and "cannot read DKIM key /nonexistent/dkim.pem: No such file or directory"
         in err, "missing key file: clear error", err)
    bad = os.path.join(DATA, "dkim", "invalid.key")
    rc, out, info, err = sign(msg, "-k", "s1,example.com," + bad)
    T.ok(rc == 4 and "not an unencrypted private key in PEM form" in err,
         "invalid key file: clear error", err)
    with tempfile.TemporaryDirectory() as tmp:
        unreadable = os.path.join(tmp, "k.pem")
        shutil.copy(KEY, unreadable)
        os.chmod(unreadable, 0)
        if os.geteuid() == 0:
            T.skip("unreadable key file: clear error", "root reads mode-0 files")
        else:
            rc, out, info, err = sign(msg, "-k", "s1,example.com," + unreadable)
            T.ok(rc == 4 and "Permission denied" in err, "unreadable key file: clear error", err)


def header_names(out):
    head = out.split(b"\r\n\r\n", 1)[0].decode(errors="replace")
    return [f.split(":", 1)[0].lower() for f in head.split("\r\n") if f and f[0] not in " \t"]


def test_x_headers(v):
    msg = read_message("xheaders.eml")
    rc, out, info, err = sign(msg, "-k", KEY_S1, "-x", "vje")
    names = header_names(out)
    T.ok(info.get("virtual-mta") == "pool-a" and info.get("job-id") == "campaign-2023-11"
         and info.get("envid") == "env123", "X-Virtual-MTA / X-Job / X-EnvID extracted", info)
    T.ok(not {"x-virtual-mta", "x-job", "x-envid"} & set(names), "and removed", names)
    v.expect("after X-* removal", out, True)
    rc, out, info, err = sign(msg, "-k", KEY_S1, "-x", "vje", "-X", "vje")
    T.ok({"x-virtual-mta", "x-job", "x-envid"} <= set(header_names(out))
         and info.get("job-id") == "campaign-2023-11", "retained when asked", err)
    rc, out, info, err = sign(msg, "-k", KEY_S1)
    T.ok(info.get("virtual-mta") == "(none)" and "x-job" in header_names(out),
         "left alone without process-x-*", info)
    bad = msg.replace(b"campaign-2023-11", b"bad job")
    rc, out, info, err = sign(bad, "-x", "j")
    T.ok(info.get("job-id") == "(none)" and info.get("bad-job-id") == "1",
         "X-Job with whitespace refused", info)


def test_received_and_ids():
    msg = b"From: a@example.com\nSubject: s\n\nb\n"
    client = ["-e", "feeder.example.net", "-a", "192.0.2.7", "-u", "bulkuser", "-p", "ESMTPSA",
              "-n", "mta.example.com", "-q", "QID1", "-T", "1700000000"]
    rc, out, info, err = sign(msg, *client)
    rcvd = out.split(b"\r\nFrom:")[0].decode()
    T.ok(rcvd.startswith("Received: from feeder.example.net (unknown [192.0.2.7])")
         and "(Authenticated sender: bulkuser)" in rcvd
         and "by mta.example.com (openpmta) with ESMTPSA id QID1" in rcvd,
         "Received added with HELO, IP, auth user, host-name, queue id", rcvd)
    rc, out, info, err = sign(msg, "-R", "hide", *client)
    rcvd = out.split(b"\r\nFrom:")[0].decode()
    T.ok(rcvd.startswith("Received: by mta.example.com") and "192.0.2.7" not in rcvd
         and "feeder" not in rcvd and "bulkuser" not in rcvd,
         "hide-message-source leaves the feeder out", rcvd)
    rc, out, info, err = sign(msg, "-R", "no", *client)
    T.ok(b"Received:" not in out, "add-received-header no", out)
    rc, out, info, err = sign(msg, "-R", "no", "-M", "-D", "yes", *client)
    names = header_names(out)
    T.ok(names.count("message-id") == 1 and names.count("date") == 1,
         "Message-ID and Date added when missing", names)
    rc, out2, info, err = sign(out, "-R", "no", "-M", "-D", "yes", "-T", "1800000000")
    T.ok(out2 == out, "and not when present", out2)
    rc, out3, info, err = sign(out, "-R", "no", "-D", "override", "-T", "1800000000")
    T.ok(header_names(out3).count("date") == 1 and out3 != out, "add-date-header override")


def test_limits():
    many = b"".join(b"X-H%d: v\n" % i for i in range(10000)) + b"From: a@example.com\n\nb\n"
    rc, out, info, err = sign(many, "-k", KEY_S1)
    T.ok(rc == 3 and "more than 1000 header fields" in err and out == b"",
         "10,000 header fields refused", err)
    longline = b"From: a@example.com\nX-Long: " + b"a" * (1024 * 1024) + b"\n\nb\n"
    rc, out, info, err = sign(longline, "-k", KEY_S1)
    T.ok(rc == 3 and "header field longer than" in err and out == b"",
         "1 MB header line refused", err)


def verify_files(v, paths):
    """--verify FILE...: messages signed elsewhere (e.g. queued by pmtad) verify, and tampering is caught."""
    for path in paths:
        with open(path, "rb") as f:
            msg = f.read()
        name = os.path.basename(path)
        v.expect(name, msg, True)
        head, sep, body = msg.partition(b"\r\n\r\n")
        v.expect(name + " with its body changed", head + sep + body + b"tampered\r\n", False)


def main():
    reexec_in_namespace()
    if not os.access(TOOL, os.X_OK):
        T.ok(False, "dkim_sign_tool built", TOOL)
        return T.done()
    with tempfile.TemporaryDirectory() as tmp:
        dns, why = start_dns(tmp)
        try:
            v = Verifiers(why)
            print("# DNS-based verifiers: %s" % ("namespace DNS" if dns else why))
            if sys.argv[1:2] == ["--verify"]:
                verify_files(v, sys.argv[2:])
                return T.done()
            test_signing(v)
            test_algorithms()
            test_keys_parsed_once()
            test_sender_picks_sender_domain()
            test_tampering(v)
            test_signed_header_list()
            test_key_choice()
            test_key_errors()
            test_x_headers(v)
            test_received_and_ids()
            test_limits()
        finally:
            if dns:
                dns.terminate()
                dns.wait(timeout=10)
    return T.done()


if __name__ == "__main__":
    sys.exit(main())
