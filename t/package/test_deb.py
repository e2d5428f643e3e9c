#!/usr/bin/env python3
"""test_deb.py - the Debian package: built, linted, installed on a brand-new Debian 12 root.

`make check-deb` runs it (root; a few minutes; not part of `make check`):
  1. copies the source tree (the files git knows, as they are in the work tree, plus
     new files git does not ignore) to a temporary directory and runs
     `dpkg-buildpackage -us -uc -b` there, so the developer's own build is untouched;
     the result must be openpmta_VERSION_amd64.deb, VERSION from configure.ac;
  2. runs lintian on the .changes: no error;
  3. starts the scriptable receiver (t/lib/testsmtpd.py) on 127.0.0.1, then has
     build-aux/fresh-root run t/package/in-root.sh in a new minimal Debian 12 root
     (it shares this host's network): install with apt, the files, owners and
     conffiles, pmtad from the installed files under the unit's sandbox, a message
     through the installed sendmail, logrotate, purge; each of its checks is one
     test here;
  4. checks that the receiver got that message.

PMTA_FRESH_ROOT names another fresh-root script (build-aux/fresh-root by default).
Needs: dpkg-dev, debhelper, lintian, mmdebstrap (fresh-root installs it), and the
build dependencies of debian/control (build-aux/install-deps has them).
"""
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from pmtatest import Tap, free_port, require_root  # noqa: E402
from testsmtpd import TestSmtpd  # noqa: E402

SRC = os.environ.get("PMTA_SRCDIR",
                     os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))
tap = Tap()


def run(argv, cwd=None, timeout=1800, **kw):
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, **kw)


def package_version():
    text = open(os.path.join(SRC, "configure.ac")).read()
    return re.search(r"AC_INIT\(\[openpmta\], \[([^]]+)\]", text).group(1)


def copy_source(dest):
    """The work tree's files that git tracks or would track, copied to DEST."""
    files = run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                cwd=SRC).stdout.split("\0")
    for name in filter(None, files):
        src = os.path.join(SRC, name)
        if not os.path.lexists(src):  # deleted in the work tree, not yet in git
            continue
        os.makedirs(os.path.join(dest, os.path.dirname(name)), exist_ok=True)
        shutil.copy2(src, os.path.join(dest, name), follow_symlinks=False)


def build(workdir):
    """dpkg-buildpackage in a copy of the tree; the .deb's path, or None."""
    src = os.path.join(workdir, "openpmta")
    copy_source(src)
    t0 = time.monotonic()
    r = run(["dpkg-buildpackage", "-us", "-uc", "-b"], cwd=src)
    tap.diag("dpkg-buildpackage: %.0f s" % (time.monotonic() - t0))
    deb = os.path.join(workdir, "openpmta_%s_amd64.deb" % package_version())
    if not tap.ok(r.returncode == 0 and os.path.exists(deb),
                  "dpkg-buildpackage -us -uc -b builds " + os.path.basename(deb),
                  (r.stdout + r.stderr)[-3000:]):
        return None
    return deb


def lint(deb):
    changes = deb[:-len(".deb")] + ".changes"
    r = run(["lintian", "--fail-on", "error", changes], timeout=600)
    errors = [line for line in r.stdout.splitlines() if line.startswith("E:")]
    tap.ok(r.returncode == 0 and not errors, "lintian reports no errors",
           r.stdout[-2000:] + r.stderr[-1000:])


def fresh_root_script():
    path = os.environ.get("PMTA_FRESH_ROOT") or os.path.join(SRC, "build-aux", "fresh-root")
    return path if os.access(path, os.X_OK) else None


def install_in_clean_root(deb, fresh_root, workdir):
    """Run in-root.sh on a new Debian 12 root; its checks become tests here."""
    repo = os.path.join(workdir, "root-repo")
    os.makedirs(repo)
    shutil.copy(deb, repo)
    shutil.copy(os.path.join(SRC, "t", "package", "in-root.sh"), repo)
    git = ["git", "-c", "user.name=test_deb", "-c", "user.email=test_deb@localhost"]
    for argv in (["git", "init", "-q"], ["git", "add", "."], git + ["commit", "-q", "-m", "deb"]):
        run(argv, cwd=repo, check=True)

    token = "tok%d" % os.getpid()
    rx_port = free_port()
    with TestSmtpd(["127.0.0.1:%d" % rx_port], {}, os.path.join(workdir, "rx")) as rx:
        cmd = "bash in-root.sh %s %d %d %d %s" % (os.path.basename(deb), rx_port, free_port(),
                                                   free_port(), token)
        t0 = time.monotonic()
        r = run([fresh_root, "-r", repo, cmd], timeout=1800)
        tap.diag("fresh-root: %.0f s" % (time.monotonic() - t0))
        checks = 0
        for line in r.stdout.splitlines():
            m = re.match(r"^(ok|not ok) - (.*)$", line)
            if m:
                checks += 1
                tap.ok(m.group(1) == "ok", "clean root: " + m.group(2))
            elif line.startswith("# "):
                tap.diag(line[2:])
        tap.ok(r.returncode == 0 and checks >= 25,
               "the clean-root run passed (%d checks)" % checks,
               (r.stdout[-1500:] + r.stderr[-2500:]) if r.returncode or checks < 25 else None)
        datas = rx.events("data")
        tap.ok(any(token in open(d["file"], errors="replace").read() for d in datas),
               "the receiver got the message sent with the installed sendmail",
               "receiver saw %d messages" % len(datas))


def main():
    require_root(tap)
    for tool in ("dpkg-buildpackage", "dh", "lintian"):
        if shutil.which(tool) is None:
            tap.ok(False, "%s is installed (apt-get install dpkg-dev debhelper lintian)" % tool)
            return tap.done()
    fresh_root = fresh_root_script()
    workdir = tempfile.mkdtemp(prefix="test_deb.")
    try:
        deb = build(workdir)
        if deb is None:
            return tap.done()
        lint(deb)
        if fresh_root is None:
            tap.skip("install in a clean root", "no build-aux/fresh-root (set PMTA_FRESH_ROOT)")
        else:
            install_in_clean_root(deb, fresh_root, workdir)
        artefacts = os.environ.get("PMTA_ARTEFACTS")
        if artefacts:
            os.makedirs(artefacts, exist_ok=True)
            shutil.copy(deb, artefacts)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return tap.done()


if __name__ == "__main__":
    sys.exit(main())
