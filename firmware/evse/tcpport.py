"""Modbus RTU frames over TCP (a serial-to-Ethernet gateway): a non-blocking stand-in for
machine.UART with the same write/any/readinto calls the Bus uses."""

from evse import sock
from evse.compat import const

_RX_BYTES = const(512)
_IN_PROGRESS = sock.IN_PROGRESS


class TcpPort:
    def __init__(self, host, port):
        self.host = host
        self.port = port
        self._sock = None
        self._rx = bytearray(_RX_BYTES)
        self._n = 0
        self.connects = 0

    def _open(self):
        self._sock = sock.connect(self.host, self.port)
        self.connects += 1

    def _drop(self):
        sock.close(self._sock)
        self._sock = None
        self._n = 0

    def init(self, **kw):
        pass  # the gateway owns baud rate and parity

    def write(self, buf):
        try:
            if self._sock is None:
                self._open()
            return self._sock.write(buf)
        except OSError:
            self._drop()  # the transaction times out; the next one reconnects
            return 0

    def any(self):
        if self._sock is None:
            return 0
        if self._n < _RX_BYTES:
            try:
                mv = memoryview(self._rx)[self._n :]
                got = self._sock.readinto(mv)
            except OSError as e:
                if e.args[0] not in _IN_PROGRESS:
                    self._drop()
                got = None
            if got == 0:
                self._drop()  # gateway closed the connection
            elif got:
                self._n += got
        return self._n

    def readinto(self, mv):
        n = min(len(mv), self._n)
        if not n:
            return 0
        mv[:n] = self._rx[:n]
        rest = self._n - n
        if rest:
            self._rx[:rest] = self._rx[n : self._n]
        self._n = rest
        return n
