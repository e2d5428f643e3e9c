"""redis - a private Redis for openpmta cluster tests and benchmarks (stdlib only).

    from redis import Redis

    with Redis() as r:                  # redis-server on 127.0.0.1:<free port>
        ...                             # r.server is "127.0.0.1:PORT" (redis-server line)
        r.stop()                        # Redis fails: the nodes go on alone
        r.start()                       # and comes back on the same port
        r.command("HGETALL", "pmta:modes")

    Redis(password="pw", replica_of=primary) is a password-protected replica.

Redis runs Debian's redis-server in the foreground, bound to 127.0.0.1 only, on a
free port, in a temporary directory, with persistence off (no RDB, no AOF): each
test starts from an empty store. It is never the machine's service: no config
file of the system is read. command() is a minimal RESP client for checks.

Owns: the redis-server child (always stopped) and its directory.
Security: test-only; loopback only; protected mode stays on.
"""

import os
import shutil
import socket
import subprocess
import tempfile
import time

from childproc import stop_child


def redis_server_path():
    for p in ("/usr/bin/redis-server", shutil.which("redis-server")):
        if p and os.path.exists(p):
            return p
    return None


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Redis:
    def __init__(self, port=None, password=None, replica_of=None):
        self.port = port or _free_port()
        self.password = password
        self.replica_of = replica_of    # another Redis: this one is its replica
        self.dir = tempfile.mkdtemp(prefix="redis-test-")
        os.chmod(self.dir, 0o755)
        self.proc = None
        self.log_path = os.path.join(self.dir, "redis.log")

    @property
    def server(self):
        return "127.0.0.1:%d" % self.port

    def argv(self):
        args = [redis_server_path(), "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", self.dir, "--save", "", "--appendonly", "no", "--daemonize", "no",
                "--logfile", self.log_path, "--databases", "1"]
        if self.password:
            args += ["--requirepass", self.password, "--masterauth", self.password]
        if self.replica_of:
            args += ["--replicaof", "127.0.0.1", str(self.replica_of.port)]
        return args

    def start(self, timeout=10):
        self.proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.command("PING") == "PONG":
                    return self
            except OSError:
                pass
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError("redis-server did not start on %s" % self.server)

    def stop(self):
        stop_child(self.proc)
        self.proc = None

    def kill(self):
        """SIGKILL: Redis dies without a word (connections reset)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    # --- a minimal RESP client ------------------------------------------------------
    def command(self, *args, timeout=5):
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as s:
            f = s.makefile("rb")
            if self.password:
                s.sendall(self._encode(("AUTH", self.password)))
                self._read(f)
            s.sendall(self._encode(args))
            return self._read(f)

    @staticmethod
    def _encode(args):
        out = b"*%d\r\n" % len(args)
        for a in args:
            b = a if isinstance(a, bytes) else str(a).encode()
            out += b"$%d\r\n%s\r\n" % (len(b), b)
        return out

    def _read(self, f):
        line = f.readline()
        if not line:
            raise OSError("connection closed")
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            return RuntimeError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            data = f.read(n + 2)[:-2]
            return data.decode(errors="replace")
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self._read(f) for _ in range(n)]
        raise OSError("bad reply %r" % line)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
        return False
