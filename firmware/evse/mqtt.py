"""A non-blocking MQTT 3.1.1 client: every call returns at once, so the control loop keeps
its timing whatever the network or the broker does.

umqtt.simple blocks by design (TCP connect, the CONNACK read, the PUBACK wait of a QoS 1
publish, reads in the middle of a packet and writes into a full socket), and a socket
timeout only bounds each of those calls, not the loop. This client keeps the same wire
format but runs as a state machine: poll() advances it, with a deadline on every state.

The outbox is a ring buffer allocated once: packets are written into it in place and sent
from it through memoryview slices, so publishing and sending neither grow nor copy buffers
on the heap (an 8 KB outbox copied on every partial write fragments an ESP32's heap).
"""

import errno
import select

from evse import sock
from evse.compat import const, ticks_diff

DISCONNECTED = const(0)
CONNECTING = const(1)  # TCP (and TLS) handshake under way
WAIT_CONNACK = const(2)
CONNECTED = const(3)
CLOSING = const(4)  # DISCONNECT sent, waiting for the broker to close its side

_CONNECT_TIMEOUT_MS = const(5000)
_CLOSE_TIMEOUT_MS = const(1000)
_STALL_TIMEOUT_MS = const(5000)  # outbox not draining, or a packet half received
_OUTBOX_BYTES = const(8192)  # what publishes, subscribes and PUBACKs may fill
_OUT_HIGH = const(4096)  # stop taking new packets in above this (back-pressure)
# The ring holds 4 bytes more: a PINGREQ and a DISCONNECT (2 bytes each) are queued even
# when the packets above have filled the outbox; only one of each can be beyond the limit
# (a second PINGREQ needs a PINGRESP, which is read only below _OUT_HIGH).
_RING_BYTES = const(8196)
_PINGREQ = b"\xc0\x00"
_DISCONNECT = b"\xe0\x00"
_INBOX_BYTES = const(2048)  # the largest packet we accept; bigger ones are skipped
_RECV_CHUNK = const(512)
_RECV_PER_POLL = const(2)

_IN_PROGRESS = sock.IN_PROGRESS


def _varlen_bytes(n):
    """Bytes the remaining length n takes in a fixed header (MQTT 3.1.1 §2.2.3)."""
    return 1 if n < 0x80 else 2 if n < 0x4000 else 3 if n < 0x200000 else 4


def _raw(s):
    # On MicroPython encode() copies nothing: the bytes object shares the str's UTF-8 data.
    return s.encode() if isinstance(s, str) else s


def _str(s):
    b = _raw(s)
    return bytes((len(b) >> 8, len(b) & 0xFF)) + b


def outbox():
    """A client's outbox, for main.py to allocate first thing at boot while the heap still
    has an 8 KB hole: allocated in Client(), after the station's modules were compiled from
    .py (which fragments the heap), it needed a heap about 30 KiB larger (make bench)."""
    return bytearray(_RING_BYTES)


class MQTTError(Exception):
    pass


class Client:
    """poll(now) drives it. on_message(topic: str, payload: bytes, retained) is called for
    incoming PUBLISHes; publish() queues and never blocks (False when the outbox is full)."""

    def __init__(self, client_id, keepalive_s=60, on_message=None, ssl_context=None,
                 ring=None):
        self.client_id = client_id
        self.keepalive_s = keepalive_s
        self.on_message = on_message
        self.ssl_context = ssl_context
        self.state = DISCONNECTED
        self.error = None
        self._sock = None
        self._poller = None
        # The outbox; never reallocated.
        self._ring = ring if ring is not None else outbox()
        self._rmv = memoryview(self._ring)
        self._head = 0  # where the next byte to send is
        self._offered = 0  # length of a write that would have blocked (TLS: offer it again)
        self._used = 0  # bytes waiting, from _head on (wrapping at _RING_BYTES)
        self._in = bytearray(_INBOX_BYTES)
        self._mv = memoryview(self._in)
        self._in_len = 0
        self._skip = 0  # bytes of an oversized packet still to discard
        self._pid = 0
        self._t_state = 0
        self._t_rx = 0
        self._t_tx = 0
        self._ping_out = False
        self.inflight = 0  # QoS 1 publishes not yet acknowledged
        self.dropped = 0  # publishes refused because the outbox was full
        self.oversized = 0
        self.bytes_tx = 0
        self.bytes_rx = 0
        self._will = None
        self._user = None
        self._password = None
        self._subs = []

    # -- setup ----------------------------------------------------------------------------
    def set_last_will(self, topic, payload, retain=True, qos=1):
        self._will = (topic, payload, retain, qos)

    def set_credentials(self, user, password):
        self._user = user or None
        self._password = password if user else None

    def connect(self, host, port, now):
        """Start connecting; poll() finishes the job (or fails it by the deadline)."""
        self.close()
        self.error = None
        s = sock.connect(host, port)
        self._sock = s
        self._poller = select.poll()
        self._poller.register(s, select.POLLOUT | select.POLLIN)
        self._host = host
        self._set_state(CONNECTING, now)

    def _set_state(self, st, now):
        self.state = st
        self._t_state = now

    def close(self, error=None):
        if error is not None and self.error is None:
            self.error = error
        sock.close(self._sock)
        self._sock = None
        self._poller = None
        self._head = self._used = 0  # what was waiting is lost, as documented
        self._offered = 0
        self._in_len = 0
        self._skip = 0
        self.inflight = 0
        self._ping_out = False
        self.state = DISCONNECTED

    def disconnect(self, now):
        """Orderly DISCONNECT (the broker drops the last will). The socket is closed once
        the broker has closed its side (or after 1 s): closing with unread data (a late
        PUBACK) would send a TCP reset, and the broker might lose the DISCONNECT with it."""
        if self.state != CONNECTED or not self._ctl(_DISCONNECT):
            self.close()
            return
        self._set_state(CLOSING, now)
        self.poll(now)

    # -- the outbox ring ------------------------------------------------------------------
    def _put(self, src):
        """Append bytes (room checked by the caller); a part that runs past the end of the
        ring continues at its start."""
        n = len(src)
        t = self._head + self._used
        if t >= _RING_BYTES:
            t -= _RING_BYTES
        k = _RING_BYTES - t  # contiguous room from t to the end of the ring
        if n <= k:
            self._rmv[t : t + n] = src
        else:
            src = memoryview(src)
            self._rmv[t:] = src[:k]
            self._rmv[: n - k] = src[k:]
        self._used += n

    def _put_byte(self, b):
        t = self._head + self._used
        if t >= _RING_BYTES:
            t -= _RING_BYTES
        self._ring[t] = b
        self._used += 1

    def _header(self, header, n):
        """Fixed header: type/flags byte and the remaining length n, 7 bits per byte."""
        self._put_byte(header)
        while True:
            b = n & 0x7F
            n >>= 7
            self._put_byte(b | 0x80 if n else b)
            if not n:
                return

    def _room(self, n, limit):
        """Whether a packet with remaining length n fits below limit."""
        return self._used + 1 + _varlen_bytes(n) + n <= limit

    def _ctl(self, pkt):
        # PINGREQ, DISCONNECT: they may use the ring's reserve beyond _OUTBOX_BYTES.
        if self._used + len(pkt) > _RING_BYTES:
            return False
        self._put(pkt)
        return True

    # -- packets --------------------------------------------------------------------------
    def _queue(self, header, body, limit=_OUTBOX_BYTES):
        n = len(body)
        if not self._room(n, limit):
            return False
        self._header(header, n)
        self._put(body)
        return True

    def _puback(self, pid_hi, pid_lo):
        if self._room(2, _OUTBOX_BYTES):
            self._put_byte(0x40)
            self._put_byte(2)
            self._put_byte(pid_hi)
            self._put_byte(pid_lo)

    def outbox_bytes(self):
        return self._used

    def _connect_packet(self):
        flags = 0x02  # clean session: the station republishes its state after every connect
        payload = _str(self.client_id)
        if self._will:
            t, p, r, q = self._will
            flags |= 0x04 | (q << 3) | (0x20 if r else 0)
            payload += _str(t) + _str(p)
        if self._user is not None:
            flags |= 0x80
            payload += _str(self._user)
            if self._password is not None:
                flags |= 0x40
                payload += _str(self._password)
        ka = self.keepalive_s
        var = b"\x00\x04MQTT\x04" + bytes((flags, ka >> 8, ka & 0xFF))
        self._queue(0x10, var + payload)

    def _next_pid(self):
        self._pid = self._pid % 0xFFFF + 1
        return self._pid

    def publish(self, topic, payload, retain=False, qos=0, paced=False):
        """Queue a PUBLISH. False when it does not fit: counted as dropped, except with
        `paced`, where the caller keeps the message and offers it again on a later poll
        (paced messages may fill the outbox only to the half mark, so replies always find
        room); a paced message larger than that half could never go and is dropped."""
        if self.state != CONNECTED:
            return False
        topic = _raw(topic)
        payload = _raw(payload)
        n = 2 + len(topic) + (2 if qos else 0) + len(payload)  # remaining length
        pid = self._next_pid() if qos else 0
        if not self._room(n, _OUT_HIGH if paced else _OUTBOX_BYTES):
            if not paced or n + 5 > _OUT_HIGH:
                self.dropped += 1
                return None if paced else False  # None: never, not later
            return False
        # Written straight into the ring: no packet is assembled on the heap.
        self._header(0x30 | (qos << 1) | (1 if retain else 0), n)
        tl = len(topic)
        self._put_byte(tl >> 8)
        self._put_byte(tl & 0xFF)
        self._put(topic)
        if qos:
            self._put_byte(pid >> 8)
            self._put_byte(pid & 0xFF)
            self.inflight += 1
        self._put(payload)
        return True

    def subscribe(self, topic, qos=1):
        pid = self._next_pid()
        return self._queue(0x82, bytes((pid >> 8, pid & 0xFF)) + _str(topic) + bytes((qos,)))

    # -- the state machine ----------------------------------------------------------------
    def poll(self, now):
        """Advance: finish connecting, send what the socket takes, parse what arrived.
        Returns the state. Any failure closes the socket and sets self.error."""
        st = self.state
        if st == DISCONNECTED:
            return st
        try:
            if st == CONNECTING:
                self._poll_connecting(now)
            elif st == CLOSING:
                self._poll_closing(now)
                return self.state
            if self.state >= WAIT_CONNACK:
                self._flush(now)
                self._recv(now)
                self._timers(now)
        except Exception as e:  # noqa: BLE001 - OSError, MQTTError, TLS ValueError, ...
            self.close(e)
        return self.state

    def _poll_connecting(self, now):
        if ticks_diff(now, self._t_state) > _CONNECT_TIMEOUT_MS:
            raise MQTTError("connect timeout")
        ev = self._poller.poll(0)
        if not ev:
            return
        if ev[0][1] & (select.POLLERR | select.POLLHUP):
            raise OSError(errno.ECONNREFUSED)
        if self.ssl_context is not None:
            # Handshake continues inside read/write of the non-blocking TLS socket.
            self._sock = self.ssl_context.wrap_socket(
                self._sock, server_hostname=self._host, do_handshake_on_connect=False
            )
        self._connect_packet()
        self._t_rx = self._t_tx = now
        self._set_state(WAIT_CONNACK, now)

    def _poll_closing(self, now):
        self._flush(now)
        if ticks_diff(now, self._t_state) > _CLOSE_TIMEOUT_MS:
            self.close()
            return
        for _ in range(_RECV_PER_POLL):
            try:
                if self._read(self._mv) is None:
                    return
            except MQTTError:
                self.close()  # the broker closed its side: done
                return

    def _flush(self, now):
        # The contiguous part first: a wrapped outbox goes out in two writes. The slice is a
        # view into the ring (the socket copies what it takes), not a copy of the outbox.
        while self._used:
            h = self._head
            end = h + self._used
            if end > _RING_BYTES:
                end = _RING_BYTES
            if self._offered and end - h > self._offered:
                # mbedTLS expects a write that would have blocked to be retried with the
                # same data: new packets appended since then wait for the next write.
                end = h + self._offered
            try:
                n = self._sock.write(self._rmv[h:end])
            except OSError as e:
                if e.args[0] in _IN_PROGRESS:
                    self._offered = end - h
                    return
                raise
            if not n:
                self._offered = end - h
                return
            self._offered = 0
            self.bytes_tx += n
            self._t_tx = now
            self._used -= n
            h += n
            # Empty: start again at 0, so the next packets lie in one piece.
            self._head = 0 if not self._used or h == _RING_BYTES else h

    def _recv(self, now):
        # At most a few chunks per poll: a flood of commands is worked off over several
        # loop iterations instead of stalling one. While the outbox is half full we stop
        # reading (back-pressure through TCP) instead of dropping replies.
        if self._in_len and not self._skip:
            self._parse(now)  # packets held back by back-pressure last time
        for _ in range(_RECV_PER_POLL):
            if self._used > _OUT_HIGH:
                return
            if self._skip:
                # Discard into the free end of the inbox (it is empty while skipping).
                n = self._read(self._mv[: min(self._skip, _RECV_CHUNK)])
                if n is None:
                    return
                self._skip -= n
            else:
                room = _INBOX_BYTES - self._in_len
                n = self._read(self._mv[self._in_len : self._in_len + min(room, _RECV_CHUNK)])
                if n is None:
                    return
                self._in_len += n
            self.bytes_rx += n
            self._t_rx = now
            if not self._skip:
                self._parse(now)

    def _read(self, mv):
        # The view's length is the limit: not every port honours readinto's nbytes.
        try:
            got = self._sock.readinto(mv)
        except OSError as e:
            if e.args[0] in _IN_PROGRESS:
                return None
            raise
        if got == 0:
            raise MQTTError("closed by broker")
        return got

    def _parse(self, now):
        buf = self._in
        while self._in_len >= 2 and self._used <= _OUT_HIGH:
            # Remaining length: up to 4 bytes of 7 bits.
            n = 0
            shift = 0
            i = 1
            while True:
                if i >= self._in_len:
                    return  # header incomplete
                b = buf[i]
                n |= (b & 0x7F) << shift
                i += 1
                if not b & 0x80:
                    break
                shift += 7
                if shift > 21:
                    raise MQTTError("bad remaining length")
            total = i + n
            if total > _INBOX_BYTES:
                # Too big to hold: skip it. A PUBLISH is still acknowledged (else its QoS 1
                # slot stays taken at the broker) and reported with payload None, so a
                # command gets its error reply.
                have = self._in_len
                h = buf[0]
                if h & 0xF0 == 0x30 and have >= i + 2:
                    tl = (buf[i] << 8) | buf[i + 1]
                    head = i + 2 + tl + (2 if h & 6 else 0)
                    if head <= _INBOX_BYTES:
                        if have < head:
                            return  # wait for the topic and packet id
                        if h & 6:
                            self._puback(buf[head - 2], buf[head - 1])
                        if self.on_message:
                            topic = bytes(buf[i + 2 : i + 2 + tl]).decode()
                            self.on_message(topic, None, bool(h & 1))
                elif h & 0xF0 == 0x30:
                    return  # not even the topic length yet
                self.oversized += 1
                self._in_len = 0
                self._skip = total - have
                return
            if self._in_len < total:
                return
            self._handle(buf[0], i, n, now)
            rest = self._in_len - total
            if rest:
                buf[:rest] = buf[total : self._in_len]
            self._in_len = rest

    def _handle(self, h, off, n, now):
        kind = h & 0xF0
        buf = self._in
        if kind == 0x30:  # PUBLISH
            tl = (buf[off] << 8) | buf[off + 1]
            topic = bytes(buf[off + 2 : off + 2 + tl]).decode()
            p = off + 2 + tl
            qos = (h >> 1) & 3
            if qos:
                self._puback(buf[p], buf[p + 1])  # PUBACK (QoS 2 is not used)
                p += 2
            if self.on_message:
                self.on_message(topic, bytes(buf[p : off + n]), bool(h & 1))
        elif kind == 0x20:  # CONNACK
            if buf[off + 1] != 0:
                raise MQTTError("connection refused, code %d" % buf[off + 1])
            self._set_state(CONNECTED, now)
        elif kind == 0x40:  # PUBACK
            if self.inflight:
                self.inflight -= 1
        elif kind == 0x90:  # SUBACK
            if buf[off + 2] == 0x80:
                raise MQTTError("subscription refused")
        elif kind == 0xD0:  # PINGRESP
            self._ping_out = False

    def _timers(self, now):
        if self.state == WAIT_CONNACK:
            if ticks_diff(now, self._t_state) > _CONNECT_TIMEOUT_MS:
                raise MQTTError("no CONNACK")
            return
        if not self._used:
            self._t_tx = now  # nothing waiting: the stall clock starts with the next packet
        elif ticks_diff(now, self._t_tx) > _STALL_TIMEOUT_MS:
            raise MQTTError("send stalled")
        ka_ms = self.keepalive_s * 1000
        idle = ticks_diff(now, self._t_rx)
        if self._ping_out and idle > ka_ms:
            raise MQTTError("no PINGRESP")
        if not self._ping_out and idle > ka_ms // 2:
            if not self._ctl(_PINGREQ):
                raise MQTTError("outbox overflow")  # cannot happen: the reserve is for it
            self._ping_out = True
            self._t_rx = now
