#!/usr/bin/env python3
"""test_privsep.py - privilege separation, asserted from outside.

Starts pmtad as root and checks, through /proc and as a real second user
(nobody, in a forked child that drops to it):
  - every worker runs as pmta with no capability at all (CapEff, CapPrm,
    CapInh, CapAmb 0), an empty bounding set (CapBnd 0) and NoNewPrivs 1,
    a restarted one too, while pmtad keeps its own;
  - a setuid-root program a worker starts (an acct-file pipe) runs as pmta;
  - the spool, the queue files and the DKIM key cannot be read by nobody;
    a world-readable key is warned about;
  - the control socket refuses nobody: the node's mode first, and qmgr's own
    SO_PEERCRED check when the node is opened up.
"""
import errno
import json
import os
import pwd
import signal
import shutil
import socket
import stat
import sys

from pmtatest import Tap, Pmta, proc_status, require_root, wait_for

tap = Tap()
require_root(tap)
PMTA = pwd.getpwnam("pmta")
NOBODY = pwd.getpwnam("nobody")
SRCDIR = os.environ.get("PMTA_SRCDIR", os.path.join(os.path.dirname(__file__), "..", ".."))
KEY = os.path.join(SRCDIR, "t", "data", "dkim", "test.key")


def as_nobody(fn):
    """Run FN() in a child process as nobody (no groups); its result (an errno or a string)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            os.setgroups([])
            os.setgid(NOBODY.pw_gid)
            os.setuid(NOBODY.pw_uid)
            out = fn()
        except OSError as e:
            out = "errno:%s" % errno.errorcode.get(e.errno, e.errno)
        except Exception as e:      # noqa: BLE001 - reported to the parent
            out = "error:%r" % e
        os.write(w, str(out).encode())
        os._exit(0)
    os.close(w)
    data = b""
    while True:
        chunk = os.read(r, 4096)
        if not chunk:
            break
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    return data.decode()


def read_file(path):
    with open(path, "rb") as f:
        return "read %d bytes" % len(f.read())


def list_dir(path):
    return "listed %d" % len(os.listdir(path))


def control_request(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(path)
    try:
        s.sendall(b'{"cmd":"status"}\n')
    except BrokenPipeError:
        pass                                 # refused at once: its line is still there to read
    data = b""
    while not data.endswith(b"\n"):
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    s.close()
    return data.decode().strip()


def caps(status):
    return {k: int(status.get(k, "ffff"), 16) for k in ("CapInh", "CapPrm", "CapEff", "CapBnd",
                                                        "CapAmb")}


with Pmta(name="test_privsep") as p:
    key = os.path.join(p.dir, "dkim.key")
    shutil.copy(KEY, key)
    os.chown(key, 0, PMTA.pw_gid)
    os.chmod(key, 0o640)
    # a setuid-root copy of touch, started by qmgr as an acct-file pipe
    suid = os.path.join(p.dir, "suid-touch")
    shutil.copy("/usr/bin/touch", suid)
    os.chown(suid, 0, 0)
    os.chmod(suid, 0o4755)
    drop = os.path.join(p.dir, "drop")
    os.mkdir(drop)
    os.chmod(drop, 0o1777)
    proof = os.path.join(drop, "proof")
    p.write_config("""
domain-key s1,example.com,%s
<acct-file "|%s %s">
    records d
</acct-file>
<domain *>
    dkim-sign yes
</domain>
""" % (key, suid, proof))
    r = p.run("--check-config", "-c", p.config_path)
    tap.ok(r.returncode == 0 and "readable by every local user" not in r.stdout + r.stderr,
           "a DKIM key of mode 0640 root:pmta loads without a warning", r.stdout + r.stderr)
    p.start()
    tap.ok(p.wait_workers({"smtpd": 2, "cleanup": 1, "qmgr": 1, "smtp-out": 2}, timeout=15),
           "every worker runs")

    # --- credentials and capabilities, from /proc ---------------------------------------------
    bad = []
    for pid in p.worker_pids():
        st = proc_status(pid)
        uids = set(st.get("Uid", "").split())
        c = caps(st)
        if (uids != {str(PMTA.pw_uid)} or any(c.values()) or st.get("NoNewPrivs") != "1"
                or st.get("Groups", "").split()):
            bad.append((pid, st.get("Name"), st.get("Uid"), c, st.get("NoNewPrivs")))
    tap.ok(p.worker_pids() and not bad,
           "every worker: uid pmta, CapEff/CapPrm/CapInh/CapAmb 0, CapBnd 0, NoNewPrivs 1",
           bad)
    master = proc_status(p.pid)
    tap.ok(caps(master)["CapEff"] != 0 and caps(master)["CapBnd"] != 0,
           "pmtad itself keeps its capabilities (it binds, and validates reloads as root)",
           caps(master))
    # a worker pmtad restarts goes through the same door
    old = p.worker_pids("smtpd")[0]
    os.kill(old, signal.SIGKILL)

    def restarted():
        # past the --exec-worker step: the process is smtpd itself
        pids = [x for x in p.worker_pids("smtpd") if proc_status(x).get("Name") == "smtpd"]
        return len(pids) == 2 and [x for x in pids if x != old]
    fresh = wait_for(restarted, timeout=15)
    st = proc_status(fresh[-1]) if fresh else {}
    tap.ok(fresh and not any(caps(st).values()) and st.get("NoNewPrivs") == "1"
           and st.get("Uid", "").split()[:1] == [str(PMTA.pw_uid)],
           "a restarted smtpd has no capability either", st)

    # --- a setuid program started by a worker stays unprivileged --------------------------------
    ran = wait_for(lambda: os.path.exists(proof), timeout=10)
    owner = os.stat(proof).st_uid if ran else None
    tap.ok(ran and owner == PMTA.pw_uid,
           "a setuid-root program run by qmgr (acct-file pipe) runs as pmta, not root",
           "proof file owner: %s" % owner)

    # --- files other users must not read -------------------------------------------------------
    st = os.stat(p.spool)
    tap.ok(stat.S_IMODE(st.st_mode) & 0o007 == 0 and st.st_uid == PMTA.pw_uid,
           "the spool is pmta's, nothing for others (mode %04o)" % stat.S_IMODE(st.st_mode))
    queue_files = []
    for root, dirs, files in os.walk(p.spool):
        queue_files += [os.path.join(root, f) for f in files]
    world = [f for f in queue_files if os.stat(f).st_mode & 0o004]
    tap.ok(queue_files and not world, "no file in the spool is readable by others", world)
    data_mdb = [f for f in queue_files if f.endswith("data.mdb")]
    tap.ok(data_mdb and as_nobody(lambda: read_file(data_mdb[0])) == "errno:EACCES",
           "nobody cannot read the queue (data.mdb)", data_mdb)
    tap.ok(as_nobody(lambda: list_dir(p.spool)) == "errno:EACCES", "nobody cannot list the spool")
    tap.ok(as_nobody(lambda: read_file(key)) == "errno:EACCES", "nobody cannot read the DKIM key")
    os.chmod(key, 0o644)
    r = p.run("--check-config", "-c", p.config_path)
    tap.ok(r.returncode == 0 and "is readable by every local user (mode 0644)" in r.stdout + r.stderr,
           "a world-readable DKIM key is warned about (--check-config)", r.stdout + r.stderr)
    os.chmod(key, 0o640)

    # --- the control socket ---------------------------------------------------------------------
    control = os.path.join(p.run_dir, "control")
    reply = json.loads(control_request(control))
    tap.ok(reply.get("ok") is True, "root uses the control socket", reply)
    tap.ok(as_nobody(lambda: control_request(control)) == "errno:EACCES",
           "nobody cannot connect to the control socket (mode %04o)"
           % stat.S_IMODE(os.stat(control).st_mode))
    os.chmod(control, 0o666)                 # an operator loosened the node
    out = as_nobody(lambda: control_request(control))
    os.chmod(control, 0o600)
    try:
        refused = json.loads(out)
    except ValueError:
        refused = {"raw": out}
    tap.ok(refused.get("ok") is False and "permission denied" in refused.get("error", ""),
           "with the node opened up, qmgr itself refuses nobody (SO_PEERCRED)", out)
    tap.ok(p.wait_log(r"control socket: refused uid %d" % NOBODY.pw_uid),
           "the refusal is logged with the uid")
    tap.ok(json.loads(control_request(control)).get("ok") is True, "root still gets in")

sys.exit(tap.done())
