#!/usr/bin/python3
"""test_acct_dirs.py - pmtad prepares <acct-file> directories for qmgr, and an
unusable accounting path is reported once and never takes qmgr down.

qmgr writes accounting files as the unprivileged worker user, so pmtad creates
a missing directory for each file (and its move-to) owned by that user; a
directory the user cannot write is named in a start-up warning, and qmgr keeps
running (it retries the file every minute) instead of crashing in a loop.
"""
import os
import pwd
import sys
import time

from pmtatest import Pmta, Tap, require_root


def main():
    tap = Tap()
    require_root(tap)
    pmta_uid = pwd.getpwnam("pmta").pw_uid
    with Pmta(name="acctdirs") as p:
        good = os.path.join(p.dir, "acct", "new", "acct.csv")
        moved = os.path.join(p.dir, "acct", "old")
        locked_dir = os.path.join(p.dir, "rootonly")
        os.mkdir(locked_dir, 0o755)
        locked = os.path.join(locked_dir, "acct.csv")
        p.write_config("<acct-file %s>\n  records d,b,r\n  move-to %s\n</acct-file>\n"
                       "<acct-file %s>\n  records d\n</acct-file>\n" % (good, moved, locked),
                       processes={"smtp-out": 0})
        p.start()
        st = os.stat(os.path.dirname(good))
        tap.ok(st.st_uid == pmta_uid and oct(st.st_mode & 0o777) == "0o750",
               "a missing acct-file directory is created for the worker user (0750)",
               (st.st_uid, oct(st.st_mode)))
        st = os.stat(moved)
        tap.ok(st.st_uid == pmta_uid, "... and so is its move-to directory", st.st_uid)
        tap.ok(p.wait_log(r"pmtad\[\d+\]: warning: .*%s is not writable by pmta" % locked_dir, timeout=5),
               "a directory the worker user cannot write is named in a start-up warning",
               p.log()[-2000:])
        qmgr = p.worker_pids("qmgr")
        time.sleep(3)
        tap.ok(qmgr and p.worker_pids("qmgr") == qmgr and "SIGSEGV" not in p.log(),
               "qmgr keeps running with an unusable acct-file (no restart loop)",
               (qmgr, p.worker_pids("qmgr")))
        tap.ok(os.path.exists(good)
               and open(good).read().startswith("type,"),
               "the usable acct-file is opened with its header line")
    return tap.done()


if __name__ == "__main__":
    sys.exit(main())
