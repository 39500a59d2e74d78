"""The station's clock from NTP (SNTP, RFC 4330) without blocking the control loop: at boot
as soon as the network is up, then every hour. The board sets its clock (board.net)."""

import select
import socket
import struct

from evse import sock
from evse.compat import const, ticks_add, ticks_diff

_REPLY_MS = const(2000)  # wait this long for the answer (ntptime: a 1 s socket timeout)
_RETRY_MIN_MS = const(3000)  # after a failure: 3 s, 6 s, 12 s, ... (the TLS link waits)
_RETRY_MAX_MS = const(60000)
_EVERY_MS = const(3600000)  # once set: again every hour (an RTC drifts seconds a day)
_NTP_TO_UNIX_S = 2208988800  # 1900-01-01 to 1970-01-01 (not a small int on the ESP32)
_MIN_NTP_S = 3913056000  # 2024-01-01 in NTP seconds: anything less has wrapped (2036)

_IDLE = const(0)
_RESOLVING = const(1)
_WAITING = const(2)

try:
    from random import getrandbits
except ImportError:  # pragma: no cover
    from os import urandom

    def getrandbits(n):
        return int.from_bytes(urandom(4), "little") & ((1 << n) - 1)


class Ntp:
    """poll(now, host) on every loop while the network is up. Name lookup through the
    resolver (off the loop), one UDP request from a non-blocking socket, the answer picked
    up on a later loop or given up after 2 s. A reply counts only if it echoes our request's
    transmit timestamp (random bytes), comes from a server (mode 4) that is synchronised
    (stratum 1-15, leap indicator not 3)."""

    def __init__(self, resolver, set_time, port=123):
        self.resolver = resolver
        self.set_time = set_time  # unix seconds -> the board's clock
        self.port = port
        self.state = _IDLE
        self._due = None  # ticks of the next query; None: now
        self._backoff = _RETRY_MIN_MS
        self._deadline = 0
        self._sock = None
        self._ready = None  # the socket's poll: ipoll on MicroPython (allocates nothing)
        self._pkt = bytearray(48)
        self._nonce = bytearray(8)
        self.syncs = 0  # answers that set the clock
        self.failures = 0  # attempts that did not (lookup, timeout, bad answer)
        self.last_error = None
        self.server = None  # the address last asked

    @property
    def tried(self):
        """At least one attempt has finished, one way or the other."""
        return self.syncs + self.failures > 0

    def poll(self, now, host):
        st = self.state
        if st == _IDLE:
            if not host or self._due is not None and ticks_diff(now, self._due) < 0:
                return
            self.state = st = _RESOLVING
        if st == _RESOLVING:
            try:
                ip = self.resolver.get(host) if host else None
            except OSError as e:
                self._done(now, e)
                return
            if ip is None:
                if not host:
                    self.state = _IDLE  # ntp.host cleared meanwhile
                return
            self._send(now, ip)
        elif st == _WAITING:
            self._receive(now)

    def _send(self, now, ip):
        pkt = self._pkt
        for i in range(48):
            pkt[i] = 0
        pkt[0] = 0x23  # LI 0, version 4, mode 3 (client)
        n = self._nonce
        for i in range(8):
            n[i] = getrandbits(8)
        pkt[40:48] = n  # the server echoes it as its originate timestamp
        self.server = ip
        s = None
        try:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setblocking(False)
            s.sendto(pkt, sock.addr(ip, self.port))
        except OSError as e:
            sock.close(s)
            self._done(now, e)
            return
        self._sock = s
        p = select.poll()
        p.register(s, select.POLLIN)
        self._ready = p.ipoll if hasattr(p, "ipoll") else p.poll
        self._deadline = ticks_add(now, _REPLY_MS)
        self.state = _WAITING

    def _receive(self, now):
        for _ in self._ready(0):
            break
        else:  # nothing yet: checked without raising (and allocating) an EAGAIN each loop
            if ticks_diff(now, self._deadline) >= 0:
                self._done(now, "no answer in %d ms" % _REPLY_MS)
            return
        try:
            data = self._sock.recv(64)
        except OSError as e:
            if e.args[0] not in sock.IN_PROGRESS:
                self._done(now, e)
            elif ticks_diff(now, self._deadline) >= 0:
                self._done(now, "no answer in %d ms" % _REPLY_MS)
            return
        if data is None:  # a port that returns None instead of raising EAGAIN
            if ticks_diff(now, self._deadline) >= 0:
                self._done(now, "no answer in %d ms" % _REPLY_MS)
            return
        if len(data) < 48 or data[24:32] != self._nonce:
            return  # not the answer to this request (late, or someone else's): keep waiting
        if data[0] & 7 != 4 or data[0] >> 6 == 3 or not 1 <= data[1] <= 15:
            self._done(now, "unsynchronised server (stratum %d)" % data[1])
            return
        secs = struct.unpack("!I", data[40:44])[0]
        if secs < _MIN_NTP_S:
            secs += 0x100000000  # the 32-bit seconds wrapped (February 2036)
        try:
            self.set_time(secs - _NTP_TO_UNIX_S)
        except Exception as e:  # noqa: BLE001 - the board's RTC refused the value
            self._done(now, e)
            return
        self._done(now, None)

    def _done(self, now, error):
        sock.close(self._sock)
        self._sock = None
        self._ready = None
        self.state = _IDLE
        if error is None:
            self.syncs += 1
            self._backoff = _RETRY_MIN_MS
            self._due = ticks_add(now, _EVERY_MS)
            return
        self.failures += 1
        self.last_error = error if isinstance(error, str) else repr(error)
        self._due = ticks_add(now, self._backoff)
        self._backoff = min(self._backoff * 2, _RETRY_MAX_MS)

    def diag(self):
        return {"syncs": self.syncs, "failures": self.failures, "last_error": self.last_error,
                "server": self.server}
