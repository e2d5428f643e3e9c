"""pmtaipc - the internal frame format (util/ipc.h) and the mail-path
messages for tests, stdlib only. The message numbers, fields and caps are
read from runtime/mailproto.def at import time (the one copy of them).

    from pmtaipc import CleanupConn
    c = CleanupConn(path)                 # RUNDIR/private/cleanup
    c.begin(1, sender="a@x.test")         # every BEGIN field has a default
    c.rcpt(1, "b@y.test")
    c.data(1, b"Subject: hi\\r\\n\\r\\nbody\\r\\n")   # split in MP_CHUNK_MAX pieces
    c.end(1)
    r = c.result(1)                       # Result(id, code, enhanced, text, msgid)
    c.space                               # (capacity, room) cleanup last announced, or None

    encode("CONN_UP", 7, mx="mx.test", ...)   # one frame from the .def's field list
    decode(ftype, payload)                    # -> ("CONN_UP", {"mx": ..., ...})

Frames: u32 length (whole frame), u16 type, u16 flags (0), u32 id, then
fields: u8 kind, u32 len, bytes. Kinds: 1 u32, 2 u64, 3 str, 4 bytes.
"""

import collections
import os
import re
import socket
import struct
import time

F_U32, F_U64, F_STR, F_BYTES = 1, 2, 3, 4
HEADER = 12
FRAME_MAX = 1024 * 1024

DEF_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "runtime",
                        "mailproto.def")
_KINDS = {"U32": F_U32, "U64": F_U64, "STR": F_STR, "LINE": F_STR, "BYTES": F_BYTES}

Message = collections.namedtuple("Message", "name number fields")   # fields: [(name, kind, cap)]


def load_def(path=DEF_PATH):
    """(constants, messages by name) from a protocol .def (util/ipcdef.h's syntax)."""
    with open(path) as f:
        text = re.sub(r"/\*.*?\*/", " ", f.read(), flags=re.S)
    consts, msgs, cur = {}, {}, None
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        m = re.fullmatch(r"IPCDEF_CONST\((\w+),\s*(\w+)\)", line)
        if m:
            consts[m.group(1)] = int(m.group(2), 0)
            continue
        m = re.fullmatch(r"IPCDEF_MSG\((\w+),\s*(\w+),\s*(\d+)\)", line)
        if m:
            if m.group(1) != m.group(2).upper():
                raise ValueError("%s: names differ: %s" % (path, line))
            cur = Message(m.group(1), int(m.group(3)), [])
            continue
        m = re.fullmatch(r"F_(U32|U64|STR|LINE|BYTES)\((\w+)(?:,\s*(\w+))?\)", line)
        if m and cur is not None:
            cap = m.group(3)
            cap = None if cap is None else consts[cap] if cap in consts else int(cap, 0)
            cur.fields.append((m.group(2), _KINDS[m.group(1)], cap))
            continue
        if line == "IPCDEF_END" and cur is not None:
            if cur.name in msgs or cur.number in {x.number for x in msgs.values()}:
                raise ValueError("%s: %s defined twice" % (path, cur.name))
            msgs[cur.name], cur = cur, None
            continue
        raise ValueError("%s: cannot read %r" % (path, line))
    return consts, msgs


CONSTANTS, MESSAGES = load_def()
BY_NUMBER = {m.number: m for m in MESSAGES.values()}
# MP_TXN_BEGIN = 100, ..., MP_CHUNK_MAX, MP_RESULT_OK, MP_MAIL_8BITMIME, ...
globals().update({"MP_" + m.name: m.number for m in MESSAGES.values()})
globals().update(CONSTANTS)
CHUNK_MAX = CONSTANTS["MP_CHUNK_MAX"]

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


def parse_fields(payload, kinds=None):
    """Every field of PAYLOAD as a list of Python values (str fields decoded);
    with KINDS, the fields must be exactly of those kinds."""
    out, pos = [], 0
    while pos < len(payload):
        kind, n = struct.unpack_from(">BI", payload, pos)
        pos += 5
        raw = payload[pos:pos + n]
        if len(raw) != n:
            raise ValueError("short field")
        if kinds is not None and (len(out) >= len(kinds) or kinds[len(out)] != kind):
            raise ValueError("field %d: unexpected kind %d" % (len(out), kind))
        pos += n
        if kind == F_U32:
            out.append(struct.unpack(">I", raw)[0])
        elif kind == F_U64:
            out.append(struct.unpack(">Q", raw)[0])
        elif kind == F_STR:
            out.append(raw.decode(errors="replace"))
        else:
            out.append(raw)
    if kinds is not None and len(out) != len(kinds):
        raise ValueError("%d fields, expected %d" % (len(out), len(kinds)))
    return out


def encode(name, fid, **values):
    """One frame of message NAME (as in the .def, without MP_); every field must be given."""
    msg = MESSAGES[name]
    missing = {f[0] for f in msg.fields} ^ set(values)
    if missing:
        raise TypeError("%s: fields missing or unknown: %s" % (name, sorted(missing)))
    return frame(msg.number, fid, [(kind, values[fname]) for fname, kind, _ in msg.fields])


def decode(ftype, payload):
    """(name, {field: value}) of one frame's payload, checked against the .def."""
    msg = BY_NUMBER.get(ftype)
    if msg is None:
        raise ValueError("unknown frame type %d" % ftype)
    values = parse_fields(payload, [kind for _, kind, _ in msg.fields])
    return msg.name, {fname: v for (fname, _, _), v in zip(msg.fields, values)}


def begin_frame(tid, sender="", client_ip="127.0.0.1", client_port=40000,
                local_ip="127.0.0.1", local_port=25, helo="client.test",
                listener_source="", auth_user="", tls_protocol="", tls_cipher="",
                mail_flags=0, envid="", declared_size=0, submit_uid=None, submit_user=""):
    return encode("TXN_BEGIN", tid, client_ip=client_ip, client_port=client_port,
                  local_ip=local_ip, local_port=local_port, helo=helo,
                  listener_source=listener_source, auth_user=auth_user,
                  tls_protocol=tls_protocol, tls_cipher=tls_cipher, sender=sender,
                  mail_flags=mail_flags, envid=envid, declared_size=declared_size,
                  submit_uid=MP_NO_UID if submit_uid is None else submit_uid,  # noqa: F821
                  submit_user=submit_user)


def rcpt_frame(tid, address, orcpt="", notify=0):
    return encode("TXN_RCPT", tid, address=address, orcpt=orcpt, notify=notify)


def data_frames(tid, content):
    return [encode("TXN_DATA", tid, chunk=content[i:i + CHUNK_MAX])
            for i in range(0, len(content), CHUNK_MAX)]


class CleanupConn:
    """One smtpd-like connection to cleanup."""

    def __init__(self, path, timeout=30):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.inbuf = b""
        self.results = {}
        self.space = None
        self.closed = False

    def send(self, data):
        self.sock.sendall(data)

    def begin(self, tid, **kw):
        self.send(begin_frame(tid, **kw))

    def rcpt(self, tid, address, orcpt="", notify=0):
        self.send(rcpt_frame(tid, address, orcpt, notify))

    def data(self, tid, content):
        for f in data_frames(tid, content):
            self.send(f)

    def end(self, tid, total):
        self.send(encode("TXN_END", tid, total_bytes=total))

    def abort(self, tid):
        self.send(encode("TXN_ABORT", tid))

    def message(self, tid, sender, rcpts, content, **kw):
        """BEGIN, RCPTs, DATA and END of one message (no waiting)."""
        buf = [begin_frame(tid, sender=sender, **kw)]
        buf += [rcpt_frame(tid, r) for r in rcpts]
        buf += data_frames(tid, content)
        buf.append(encode("TXN_END", tid, total_bytes=len(content)))
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
                    return ftype, fid, f[HEADER:]
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
            ftype, fid, payload = f
            name, r = decode(ftype, payload)
            if name == "QUEUE_SPACE":
                self.space = (r["capacity"], r["room"])     # what the queue takes, in bytes
                continue
            if name != "TXN_RESULT":
                raise ValueError("unexpected frame %s" % name)
            self.results[fid] = Result(fid, r["code"], r["enhanced"], r["text"], r["msgid"])
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
