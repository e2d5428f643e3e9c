"""testca - a throw-away certificate authority for TLS tests (openssl CLI only).

    ca = TestCA(directory)              # makes ca.pem / ca.key
    cert, key = ca.issue("mx.dane.test", ["mx.dane.test"])
    sub = ca.intermediate("openpmta test sub-CA")   # a TestCA whose issuer is CA
    ca.spki_sha256(cert)                # hex, for a TLSA 3 1 1 / 2 1 1 record
    TestCA.self_signed(directory, "other")  # a certificate no CA vouches for

The CA's certificate (ca.pem) is what a test hands to openpmta as
smtp-tls-ca-file / mta-sts-ca-file: nothing touches the system trust store.
Keys are EC P-256 (fast to make). Owns: the files under DIRECTORY.
Security: test-only; the keys are written unencrypted to the test's directory.
"""

import os
import subprocess


def _run(args, **kw):
    return subprocess.run(args, check=True, capture_output=True, **kw)


class TestCA:
    def __init__(self, directory, name="openpmta test CA"):
        self.dir = directory
        os.makedirs(directory, exist_ok=True)
        # openpmta's workers (run-as-user pmta) read ca.pem: the path must be open to them
        for d in (directory, os.path.dirname(os.path.abspath(directory))):
            os.chmod(d, 0o755)
        self.key = os.path.join(directory, "ca.key")
        self.cert = os.path.join(directory, "ca.pem")
        _run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
              "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", self.key, "-out", self.cert,
              "-days", "3", "-subj", "/CN=" + name,
              "-addext", "basicConstraints=critical,CA:TRUE",
              "-addext", "keyUsage=critical,keyCertSign,cRLSign"])
        os.chmod(self.cert, 0o644)
        self.serial = 1

    def issue(self, cn, names, days=2):
        """A leaf certificate for NAMES (DNS SANs) signed by the CA: (cert path, key path)."""
        base = os.path.join(self.dir, "%s-%d" % (cn.replace("*", "star"), self.serial))
        key, csr, cert, ext = base + ".key", base + ".csr", base + ".pem", base + ".ext"
        _run(["openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
              "-nodes", "-keyout", key, "-out", csr, "-subj", "/CN=" + cn])
        with open(ext, "w") as f:
            f.write("subjectAltName=%s\nbasicConstraints=CA:FALSE\n"
                    "extendedKeyUsage=serverAuth\n" % ",".join("DNS:" + n for n in names))
        _run(["openssl", "x509", "-req", "-in", csr, "-CA", self.cert, "-CAkey", self.key,
              "-set_serial", str(self.serial), "-days", str(days), "-out", cert,
              "-extfile", ext])
        self.serial += 1
        os.chmod(key, 0o644)    # testsmtpd and the HTTPS server run as root anyway
        return cert, key

    def intermediate(self, name):
        """A CA certificate signed by this CA (a TestCA sharing the directory): what
        smtp-server-tls-ca-file must send along for a client that trusts this CA only."""
        sub = TestCA.__new__(TestCA)
        base = os.path.join(self.dir, "sub-%d" % self.serial)
        sub.dir, sub.key, sub.cert, sub.serial = self.dir, base + ".key", base + ".pem", 1000
        csr, ext = base + ".csr", base + ".ext"
        _run(["openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
              "-nodes", "-keyout", sub.key, "-out", csr, "-subj", "/CN=" + name])
        with open(ext, "w") as f:
            f.write("basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n")
        _run(["openssl", "x509", "-req", "-in", csr, "-CA", self.cert, "-CAkey", self.key,
              "-set_serial", str(self.serial), "-days", "3", "-out", sub.cert, "-extfile", ext])
        self.serial += 1
        os.chmod(sub.cert, 0o644)
        return sub

    def chain(self, cert):
        """CERT followed by the CA certificate (what a server sends for DANE-TA)."""
        path = cert[:-4] + "-chain.pem"
        with open(path, "w") as out:
            for p in (cert, self.cert):
                with open(p) as f:
                    out.write(f.read())
        return path

    @staticmethod
    def self_signed(directory, cn):
        key = os.path.join(directory, cn + "-self.key")
        cert = os.path.join(directory, cn + "-self.pem")
        _run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
              "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key, "-out", cert,
              "-days", "2", "-subj", "/CN=" + cn, "-addext", "subjectAltName=DNS:" + cn])
        return cert, key

    @staticmethod
    def spki_sha256(cert):
        """SHA-256 of the certificate's SubjectPublicKeyInfo, hex (TLSA selector 1, type 1)."""
        pub = _run(["openssl", "x509", "-in", cert, "-noout", "-pubkey"]).stdout
        der = _run(["openssl", "pkey", "-pubin", "-outform", "DER"], input=pub).stdout
        return _run(["openssl", "dgst", "-sha256", "-r"], input=der).stdout.split()[0].decode()
