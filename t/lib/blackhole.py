"""blackhole - a loopback TCP peer whose connects hang (never complete, never refused).

    from blackhole import Blackhole

    hole = Blackhole("127.0.0.9", port)
    why = hole.start()        # None: connects to 127.0.0.9:port now hang
    ...
    hole.stop()

Used by the integration tests for connect timeouts (test_smtpout, test_delivery).
start() returns a reason instead of None where the kernel does not drop the
SYNs (net.ipv4.tcp_abort_on_overflow 1, or a connect that completes anyway):
tests skip with it.
"""

import socket
import time


class Blackhole:
    """A TCP peer on ADDR:PORT that never completes a handshake.

    A listener with backlog 0 that never calls accept(), its accept queue filled
    by connections we hold open: Linux then drops further SYNs (unless
    net.ipv4.tcp_abort_on_overflow is 1), so a connect neither succeeds nor is
    refused; it hangs until the client's own timeout. Loopback only.
    """

    def __init__(self, addr, port):
        self.addr = (addr, port)
        self.socks = []

    def start(self):
        """Return None when connects to it hang, else why they do not."""
        try:
            with open("/proc/sys/net/ipv4/tcp_abort_on_overflow") as f:
                if f.read().strip() != "0":
                    return "net.ipv4.tcp_abort_on_overflow is not 0: a full queue resets"
        except OSError as err:
            return "cannot read net.ipv4.tcp_abort_on_overflow: %s" % err
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.socks.append(listener)
        try:
            listener.bind(self.addr)
        except OSError as err:
            return "cannot bind %s:%d: %s" % (self.addr[0], self.addr[1], err)
        listener.listen(0)
        for _ in range(2):          # one fills the queue, the next one hangs already
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.socks.append(s)
            s.setblocking(False)
            try:
                s.connect(self.addr)
            except BlockingIOError:
                pass
        time.sleep(0.1)
        try:
            socket.create_connection(self.addr, timeout=0.5).close()
            return "a connect to the full listener completed: SYNs are not dropped here"
        except socket.timeout:
            return None
        except OSError as err:
            return "a connect to the full listener failed at once (%s)" % err

    def stop(self):
        for s in self.socks:
            s.close()
        self.socks = []
