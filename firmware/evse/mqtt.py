"""A non-blocking MQTT 3.1.1 client: every call returns at once, so the control loop keeps
its timing whatever the network or the broker does.

umqtt.simple blocks by design (TCP connect, the CONNACK read, the PUBACK wait of a QoS 1
publish, reads in the middle of a packet and writes into a full socket), and a socket
timeout only bounds each of those calls, not the loop. This client keeps the same wire
format but runs as a state machine: poll() advances it, with a deadline on every state.
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
_OUTBOX_BYTES = const(8192)
_OUT_HIGH = const(4096)  # stop taking new packets in above this (back-pressure)
_INBOX_BYTES = const(2048)  # the largest packet we accept; bigger ones are skipped
_RECV_CHUNK = const(512)
_RECV_PER_POLL = const(2)

_IN_PROGRESS = sock.IN_PROGRESS


def _varlen(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | 0x80 if n else b)
        if not n:
            return out


def _str(s):
    b = s.encode() if isinstance(s, str) else s
    return bytes((len(b) >> 8, len(b) & 0xFF)) + b


class MQTTError(Exception):
    pass


class Client:
    """poll(now) drives it. on_message(topic: str, payload: bytes, retained) is called for
    incoming PUBLISHes; publish() queues and never blocks (False when the outbox is full)."""

    def __init__(self, client_id, keepalive_s=60, on_message=None, ssl_context=None):
        self.client_id = client_id
        self.keepalive_s = keepalive_s
        self.on_message = on_message
        self.ssl_context = ssl_context
        self.state = DISCONNECTED
        self.error = None
        self._sock = None
        self._poller = None
        self._out = bytearray()
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
        self._out = bytearray()
        self._in_len = 0
        self._skip = 0
        self.inflight = 0
        self._ping_out = False
        self.state = DISCONNECTED

    def disconnect(self, now):
        """Orderly DISCONNECT (the broker drops the last will). The socket is closed once
        the broker has closed its side (or after 1 s): closing with unread data (a late
        PUBACK) would send a TCP reset, and the broker might lose the DISCONNECT with it."""
        if self.state != CONNECTED:
            self.close()
            return
        self._out += b"\xe0\x00"
        self._set_state(CLOSING, now)
        self.poll(now)

    # -- packets --------------------------------------------------------------------------
    def _queue(self, header, body, limit=_OUTBOX_BYTES):
        n = len(body)
        pkt = bytes((header,)) + _varlen(n) + body
        if len(self._out) + len(pkt) > limit:
            return False
        self._out += pkt
        return True

    def outbox_bytes(self):
        return len(self._out)

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
        if isinstance(payload, str):
            payload = payload.encode()
        body = _str(topic)
        if qos:
            pid = self._next_pid()
            body += bytes((pid >> 8, pid & 0xFF))
        ok = self._queue(0x30 | (qos << 1) | (1 if retain else 0), body + payload,
                         _OUT_HIGH if paced else _OUTBOX_BYTES)
        if not ok:
            if not paced or len(body) + len(payload) + 5 > _OUT_HIGH:
                self.dropped += 1
                return None if paced else False  # None: never, not later
        elif qos:
            self.inflight += 1
        return ok

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
        while self._out:
            try:
                n = self._sock.write(self._out)
            except OSError as e:
                if e.args[0] in _IN_PROGRESS:
                    return
                raise
            if not n:
                return
            self.bytes_tx += n
            self._t_tx = now
            self._out = self._out[n:]

    def _recv(self, now):
        # At most a few chunks per poll: a flood of commands is worked off over several
        # loop iterations instead of stalling one. While the outbox is half full we stop
        # reading (back-pressure through TCP) instead of dropping replies.
        if self._in_len and not self._skip:
            self._parse(now)  # packets held back by back-pressure last time
        for _ in range(_RECV_PER_POLL):
            if len(self._out) > _OUT_HIGH:
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
        while self._in_len >= 2 and len(self._out) <= _OUT_HIGH:
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
                            self._queue(0x40, bytes(buf[head - 2 : head]))
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
                pid_hi, pid_lo = buf[p], buf[p + 1]
                p += 2
                self._queue(0x40, bytes((pid_hi, pid_lo)))  # PUBACK (QoS 2 is not used)
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
        if not self._out:
            self._t_tx = now  # nothing waiting: the stall clock starts with the next packet
        elif ticks_diff(now, self._t_tx) > _STALL_TIMEOUT_MS:
            raise MQTTError("send stalled")
        ka_ms = self.keepalive_s * 1000
        idle = ticks_diff(now, self._t_rx)
        if self._ping_out and idle > ka_ms:
            raise MQTTError("no PINGRESP")
        if not self._ping_out and idle > ka_ms // 2:
            self._out += b"\xc0\x00"
            self._ping_out = True
            self._t_rx = now
