"""pmtaipc - the internal frame format (util/ipc.h) and the mail-path
messages (runtime/mailproto.h) for tests, stdlib only.

    from pmtaipc import CleanupConn
    c = CleanupConn(path)                 # RUNDIR/private/cleanup
    c.begin(1, sender="a@x.test")         # every BEGIN field has a default
    c.rcpt(1, "b@y.test")
    c.data(1, b"Subject: hi\\r\\n\\r\\nbody\\r\\n")   # split in MP_CHUNK_MAX pieces
    c.end(1)
    r = c.result(1)                       # Result(id, code, enhanced, text, msgid)

Frames: u32 length (whole frame), u16 type, u16 flags (0), u32 id, then
fields: u8 kind, u32 len, bytes. Kinds: 1 u32, 2 u64, 3 str, 4 bytes.
"""

import collections
import socket
import struct
import time

F_U32, F_U64, F_STR, F_BYTES = 1, 2, 3, 4
HEADER = 12
FRAME_MAX = 1024 * 1024
CHUNK_MAX = 64 * 1024

MP_TXN_BEGIN = 100
MP_TXN_RCPT = 101
MP_TXN_DATA = 102
MP_TXN_END = 103
MP_TXN_ABORT = 104
MP_TXN_RESULT = 105
MP_QUEUE_NEW = 106

MAIL_8BITMIME, MAIL_SMTPUTF8, MAIL_RET_FULL, MAIL_RET_HDRS = 0x01, 0x02, 0x04, 0x08
NOTIFY_NEVER, NOTIFY_SUCCESS, NOTIFY_FAILURE, NOTIFY_DELAY = 0x01, 0x02, 0x04, 0x08

Result = collections.namedtuple("Result", "id code enhanced text msgid")


def field(kind, value):
    if kind == F_U32:
        payload = struct.pack(">I", value)
    elif kind == F_U64:
        payload = struct.pack(">Q", value)
    elif kind == F_STR:
        payload = value.encode() if isinstance(value, str) else value
    else:
        payload = bytes(value)
    return struct.pack(">BI", kind, len(payload)) + payload


def frame(ftype, fid, fields, flags=0):
    """One frame; FIELDS is a list of (kind, value)."""
    body = b"".join(field(k, v) for k, v in fields)
    return struct.pack(">IHHI", HEADER + len(body), ftype, flags, fid) + body


def parse_fields(payload):
    """Every field of PAYLOAD as a list of Python values (str fields decoded)."""
    out, pos = [], 0
    while pos < len(payload):
        kind, n = struct.unpack_from(">BI", payload, pos)
        pos += 5
        raw = payload[pos:pos + n]
        if len(raw) != n:
            raise ValueError("short field")
        pos += n
        if kind == F_U32:
            out.append(struct.unpack(">I", raw)[0])
        elif kind == F_U64:
            out.append(struct.unpack(">Q", raw)[0])
        elif kind == F_STR:
            out.append(raw.decode(errors="replace"))
        else:
            out.append(raw)
    return out


def begin_frame(tid, sender="", client_ip="127.0.0.1", client_port=40000,
                local_ip="127.0.0.1", local_port=25, helo="client.test",
                listener_source="", auth_user="", tls_protocol="", tls_cipher="",
                mail_flags=0, envid="", declared_size=0):
    return frame(MP_TXN_BEGIN, tid, [
        (F_STR, client_ip), (F_U32, client_port), (F_STR, local_ip), (F_U32, local_port),
        (F_STR, helo), (F_STR, listener_source), (F_STR, auth_user), (F_STR, tls_protocol),
        (F_STR, tls_cipher), (F_STR, sender), (F_U32, mail_flags), (F_STR, envid),
        (F_U64, declared_size)])


class CleanupConn:
    """One smtpd-like connection to cleanup."""

    def __init__(self, path, timeout=30):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.inbuf = b""
        self.results = {}
        self.closed = False

    def send(self, data):
        self.sock.sendall(data)

    def begin(self, tid, **kw):
        self.send(begin_frame(tid, **kw))

    def rcpt(self, tid, address, orcpt="", notify=0):
        self.send(frame(MP_TXN_RCPT, tid, [(F_STR, address), (F_STR, orcpt), (F_U32, notify)]))

    def data(self, tid, content):
        for i in range(0, len(content), CHUNK_MAX):
            self.send(frame(MP_TXN_DATA, tid, [(F_BYTES, content[i:i + CHUNK_MAX])]))

    def end(self, tid, total):
        self.send(frame(MP_TXN_END, tid, [(F_U64, total)]))

    def abort(self, tid):
        self.send(frame(MP_TXN_ABORT, tid, []))

    def message(self, tid, sender, rcpts, content, **kw):
        """BEGIN, RCPTs, DATA and END of one message (no waiting)."""
        buf = [begin_frame(tid, sender=sender, **kw)]
        for r in rcpts:
            buf.append(frame(MP_TXN_RCPT, tid, [(F_STR, r), (F_STR, ""), (F_U32, 0)]))
        for i in range(0, len(content), CHUNK_MAX):
            buf.append(frame(MP_TXN_DATA, tid, [(F_BYTES, content[i:i + CHUNK_MAX])]))
        buf.append(frame(MP_TXN_END, tid, [(F_U64, len(content))]))
        self.send(b"".join(buf))

    def _read_frame(self):
        """One frame from the socket, or None at EOF."""
        while True:
            if len(self.inbuf) >= HEADER:
                n = struct.unpack_from(">I", self.inbuf)[0]
                if n < HEADER or n > FRAME_MAX:
                    raise ValueError("bad frame length %d" % n)
                if len(self.inbuf) >= n:
                    f, self.inbuf = self.inbuf[:n], self.inbuf[n:]
                    ftype, flags, fid = struct.unpack_from(">HHI", f, 4)
                    return ftype, fid, parse_fields(f[HEADER:])
            chunk = self.sock.recv(65536)
            if not chunk:
                self.closed = True
                return None
            self.inbuf += chunk

    def result(self, tid, timeout=30):
        """The MP_TXN_RESULT of transaction TID (None if the connection closed first)."""
        deadline = time.monotonic() + timeout
        while tid not in self.results:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            f = self._read_frame()
            if f is None:
                return None
            ftype, fid, fields = f
            if ftype != MP_TXN_RESULT:
                raise ValueError("unexpected frame type %d" % ftype)
            self.results[fid] = Result(fid, *fields)
        return self.results.pop(tid)

    def wait_closed(self, timeout=10):
        """True when cleanup closes this connection within TIMEOUT seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                if self._read_frame() is None:
                    return True
            except socket.timeout:
                return False
            except OSError:
                return True
        return False

    def close(self):
        self.sock.close()
