#!/usr/bin/python3
"""test_acct_dirs.py - pmtad prepares <acct-file> directories for qmgr, and an
unusable accounting path is reported once and never takes qmgr down.

qmgr writes accounting files as the unprivileged worker user, so pmtad creates
a missing directory for each file (and its move-to) owned by that user; a
directory the user cannot write is named in a start-up warning, and qmgr keeps
running (it retries the file every minute) instead of crashing in a loop.
An acct-file with sync yes is fsynced as records are written (qmgr's fsync
calls, seen by strace), one without (sync no, the default) never.
"""
import os
import pwd
import sys
import time

import smtplib

from pmtatest import Pmta, Tap, count_syscalls, require_root, wait_for


def acct_fsyncs(sync):
    """qmgr's fsync calls while 3 discarded messages get d records (acct-file sync SYNC)."""
    with Pmta(name="acctsync") as p:
        acct = os.path.join(p.dir, "acct", "acct.csv")   # pmtad makes the directory
        p.write_config("<acct-file %s>\n  records d\n  sync %s\n</acct-file>\n"
                       "<source 127.0.0.1>\n  always-allow-relaying yes\n</source>\n"
                       "<domain *>\n  type discard\n</domain>\n" % (acct, sync),
                       processes={"smtp-out": 0})
        p.start()
        qmgr = wait_for(lambda: p.worker_pids("qmgr"), timeout=10)

        def deliver():
            with smtplib.SMTP("127.0.0.1", p.port, timeout=10) as s:
                for i in range(3):
                    s.sendmail("a@b.test", ["u%d@c.test" % i], "Subject: %d\r\n\r\nx\r\n" % i)
            wait_for(lambda: os.path.exists(acct) and open(acct).read().count("\nd,") >= 3,
                     timeout=10)
            time.sleep(1.5)     # the next flush
        n = count_syscalls(qmgr[0], ("fsync",), deliver) if qmgr else None
        return n if os.path.exists(acct) and open(acct).read().count("\nd,") >= 3 else None


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
    on, off = acct_fsyncs("yes"), acct_fsyncs("no")
    tap.ok(on is not None and off is not None and on >= 1 and off == 0,
           "acct-file sync yes: qmgr fsyncs the file as it writes records; sync no: never",
           "fsync calls with yes: %s, with no: %s" % (on, off))
    return tap.done()


if __name__ == "__main__":
    sys.exit(main())
