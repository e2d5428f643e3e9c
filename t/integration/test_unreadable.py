#!/usr/bin/env python3
"""test_unreadable - a message the queue store cannot read now is held, never forgotten.

The queue holds two messages (t/unit/qstore_fill). Before pmtad starts, the
envelope record of one is overwritten with a damaged one (mdb_dump /
mdb_load from lmdb-utils, the store's own tools), as a bad disk block
would. qmgr must still start and deliver the good message; the damaged
one's recipient must stay queued (a warning names it and the wait), never
be dropped from the schedule. With the record repaired, a restarted pmtad
delivers it.

Prints TAP. Needs root (pmtad's workers) and lmdb-utils.
"""
import os
import pwd
import shutil
import subprocess
import sys

from fakeout import FakeOut
from pmtatest import Pmta, Tap, build_dir, require_root, wait_for

FILL = os.path.join(build_dir(), "t", "unit", "qstore_fill")


def chown_queue(qdir):
    """The queue belongs to the workers' user (pmtad's lock files stay root's)."""
    pw = pwd.getpwnam("pmta")
    for n in [qdir] + [os.path.join(qdir, f) for f in os.listdir(qdir)]:
        os.chown(n, pw.pw_uid, pw.pw_gid)


def msg_db(qdir, action, text=None):
    """mdb_dump / mdb_load of the msg database."""
    if action == "dump":
        return subprocess.run(["mdb_dump", "-s", "msg", qdir], capture_output=True, text=True,
                              check=True).stdout
    subprocess.run(["mdb_load", "-s", "msg", qdir], input=text, text=True, check=True,
                   capture_output=True)


def damage(dump, msgid):
    """DUMP with the value of MSGID's envelope replaced by two bytes of nonsense."""
    key = " %016x" % msgid
    lines = dump.splitlines()
    i = lines.index(key)
    lines[i + 1] = " ffff"
    return "\n".join(lines) + "\n"


def main():
    tap = Tap()
    require_root(tap)
    if not (shutil.which("mdb_dump") and shutil.which("mdb_load")):
        return tap.skip_all("lmdb-utils (mdb_dump, mdb_load) is not installed")
    with Pmta(name="unreadable") as p:
        p.write_config("smtp-out-processes 0\n")
        qdir = os.path.join(p.spool, "queue")
        os.makedirs(qdir, exist_ok=True)
        r = subprocess.run([FILL, "-n", "2", "-r", "1", "-d", "ur", qdir], capture_output=True,
                           text=True, check=True)
        first, last = [int(x) for x in r.stdout.split()]
        good_dump = msg_db(qdir, "dump")
        msg_db(qdir, "load", damage(good_dump, first))
        chown_queue(qdir)

        p.start()
        fake = FakeOut(os.path.join(p.run_dir, "private", "qmgr")).start()
        wait_for(lambda: fake.delivered(), timeout=10)
        hold = p.wait_log(r"cannot read message %020X: .*; its 1 recipient\(s\) wait 30 s"
                          % first, timeout=10)  # the queue id as every log line spells it
        delivered = {msgid for (_, _, _, msgid, _, _) in fake.results}
        tap.ok(delivered == {last}, "the readable message is delivered, the damaged one is not",
               delivered)
        tap.ok(hold, "the damaged message is named in a warning with the wait", p.log()[-1500:])
        tap.ok(p.running() and p.worker_pids("qmgr"), "qmgr keeps running")
        fake.stop()
        p.stop()
        rcpts = subprocess.run(["mdb_dump", "-s", "rcpt", qdir], capture_output=True,
                               text=True).stdout
        tap.ok("recipient %d/0 is no longer in the queue" % first not in p.log() and
               " %016x%08x" % (first, 0) in rcpts.splitlines(),
               "its recipient is neither forgotten nor removed from the queue")

        # the block is repaired: the next start delivers it
        msg_db(qdir, "load", good_dump)
        chown_queue(qdir)
        p.start()
        fake = FakeOut(os.path.join(p.run_dir, "private", "qmgr")).start()
        ok = wait_for(lambda: first in {m for (_, _, _, m, _, _) in fake.results}, timeout=10)
        tap.ok(ok, "after the repair a restarted pmtad delivers it")
        fake.stop()
    return tap.done()


if __name__ == "__main__":
    sys.exit(main())
