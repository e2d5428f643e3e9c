"""childproc.py - stop a helper process (dnsmasq, a test receiver) the same way everywhere.

SIGTERM, a few seconds' grace, then SIGKILL; always reaped, so no test leaves
a zombie or a listener behind.
"""
import subprocess


def stop_child(proc, grace=5):
    """Terminate PROC (a subprocess.Popen) if it still runs, and reap it."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
