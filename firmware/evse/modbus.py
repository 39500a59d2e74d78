"""Modbus RTU master: CRC, frames, and a non-blocking bus that serializes transactions.

The bus is a state machine stepped from the control loop: it never waits for a byte. Every
transaction has a deadline; every failure is told apart and counted (docs/standards.md §6)."""

from evse.compat import age_cap, const, ticks_add, ticks_diff

# Failure kinds (also the keys of Bus.counters).
OK = "ok"
TIMEOUT = "timeout"
CRC = "crc"
EXCEPTION = "exception"
WRONG_SLAVE = "wrong_slave"
WRONG_FUNCTION = "wrong_function"
SHORT = "short"
LONG = "long"
GARBAGE = "garbage"  # bytes on the bus while no transaction was waiting for them
KINDS = (OK, TIMEOUT, CRC, EXCEPTION, WRONG_SLAVE, WRONG_FUNCTION, SHORT, LONG, GARBAGE)

_IDLE = const(0)
_WAIT = const(1)
_MAX_ADU = const(256)  # Modbus RTU ADU limit


def crc16(data, n=None):
    """CRC-16/MODBUS: reflected 0xA001, init 0xFFFF, no final XOR; sent low byte first."""
    crc = 0xFFFF
    for i in range(len(data) if n is None else n):
        crc ^= data[i]
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def frame(slave, fc, payload):
    """An RTU ADU: slave, function, payload, CRC (low byte first)."""
    b = bytearray((slave, fc)) + payload
    c = crc16(b)
    b.append(c & 0xFF)
    b.append(c >> 8)
    return b


def read_request(slave, fc, reg, count):
    """FC 03/04: read `count` registers from `reg`."""
    if not 1 <= count <= 125:
        raise ValueError("count")
    return frame(slave, fc, bytes((reg >> 8, reg & 0xFF, count >> 8, count & 0xFF)))


def write_single_request(slave, reg, value):
    """FC 06."""
    return frame(slave, 6, bytes((reg >> 8, reg & 0xFF, value >> 8 & 0xFF, value & 0xFF)))


def write_multiple_request(slave, reg, words):
    """FC 16."""
    n = len(words)
    if not 1 <= n <= 123:
        raise ValueError("count")
    p = bytearray((reg >> 8, reg & 0xFF, n >> 8, n & 0xFF, 2 * n))
    for w in words:
        p.append(w >> 8 & 0xFF)
        p.append(w & 0xFF)
    return frame(slave, 16, p)


def expected_len(req):
    """Length of a normal response to request frame `req`."""
    fc = req[1]
    if fc in (3, 4):
        return 5 + 2 * ((req[4] << 8) | req[5])
    return 8  # 06 and 16 echo address and value/count


def check_response(req, buf, n):
    """(kind, detail) for the n bytes in buf answering req. detail: exception code for
    EXCEPTION, else None. Call when n >= the expected length or the deadline passed."""
    if n < 5:
        return SHORT, None
    if buf[0] != req[0]:
        return WRONG_SLAVE, None
    fc = buf[1]
    if fc == (req[1] | 0x80):
        if crc16(buf, 3) != buf[3] | (buf[4] << 8):
            return CRC, None
        return EXCEPTION, buf[2]
    want = expected_len(req)
    if n < want:
        return SHORT, None
    if crc16(buf, want - 2) != buf[want - 2] | (buf[want - 1] << 8):
        return CRC, None
    if fc != req[1]:
        return WRONG_FUNCTION, None
    if req[1] in (3, 4) and buf[2] != want - 5:
        return SHORT, None
    if n > want:
        return LONG, None
    return OK, None


def char_us(baud, bits=10):
    return bits * 1000000 // baud


def t35_us(baud):
    """Inter-frame silence: 3.5 characters, fixed 1.75 ms above 19200 baud.

    docs/standards.md §6."""
    return 1750 if baud > 19200 else 35 * char_us(baud) // 10


class Bus:
    """One serial line (or TCP gateway) shared by several devices. submit() queues a
    request; step(now_us) drives it; the callback gets (kind, detail, buf, n).

    `port` needs write(buf), any() and readinto(buf) (non-blocking), as machine.UART has."""

    def __init__(self, port, baud=9600, timeout_ms=300, retries=1, depth=8):
        self.port = port
        self.baud = baud
        self.timeout_ms = timeout_ms
        self.retries = retries
        self._q = []
        self._depth = depth
        self._buf = bytearray(_MAX_ADU)
        self._mv = memoryview(self._buf)
        self._n = 0
        self._state = _IDLE
        self._req = None
        self._cb = None
        self._tries = 0
        self._t_send = 0
        self._t_rx = None  # last byte seen on the line (us); None: silent since boot
        self._deadline_us = 0
        self.counters = {}
        for k in KINDS:
            self.counters[k] = 0
        self.exceptions = {}  # exception code -> count
        self.transactions = 0
        self.wire_us = 0  # time the line was busy with our transactions (for the bench)

    def submit(self, req, cb):
        """Queue a transaction. False if the queue is full (the caller retries later)."""
        if len(self._q) >= self._depth:
            return False
        self._q.append((req, cb))
        return True

    def cancel(self, cbs):
        """Drop the queued (not yet sent) requests whose callback is in cbs: a device that
        stopped answering would only time out on them. Returns how many."""
        n = 0
        q = self._q
        i = 0
        while i < len(q):
            if q[i][1] in cbs:
                q.pop(i)
                n += 1
            else:
                i += 1
        return n

    def room(self):
        """Free queue slots: a device starts a read cycle only when all of it fits."""
        return self._depth - len(self._q)

    def busy(self):
        return self._req is not None or bool(self._q)

    def _drain(self, now_us):
        """Read whatever waits on the line into the buffer; returns bytes read."""
        got = 0
        while self.port.any():
            room = _MAX_ADU - self._n
            if room <= 0:
                # Over-long: keep reading to clear the line, count once at completion.
                n = self.port.readinto(self._mv[:_MAX_ADU])
                self._n = _MAX_ADU + 1
            else:
                n = self.port.readinto(self._mv[self._n : self._n + room])
                self._n += n or 0
            if not n:
                break
            got += n
            self._t_rx = now_us
        return got

    def step(self, now_us):
        if self._state == _IDLE:
            # Bytes nobody asked for: a noisy line or another master. Count and discard.
            if self._drain(now_us):
                self.counters[GARBAGE] += 1
                self._n = 0
            if self._req is None and not self._q:
                return
            # t3.5 of silence before a new frame (Modbus over serial line, §2.5.1.1). The
            # last byte's stamp stops ageing at 1 s: ticks_us wraps every 18 minutes.
            self._t_rx = age_cap(now_us, self._t_rx, 1000000)
            if self._t_rx is not None and ticks_diff(now_us, self._t_rx) < t35_us(self.baud):
                return
            if self._req is None:  # else: a retry of the current request
                self._req, self._cb = self._q.pop(0)
                self._tries = 0
            self._send(now_us)
            return
        # Waiting for the response.
        self._drain(now_us)
        want = expected_len(self._req)
        n = self._n
        exc = n >= 5 and self._buf[1] == (self._req[1] | 0x80)
        complete = n >= want or exc
        silent = n > 0 and ticks_diff(now_us, self._t_rx) >= t35_us(self.baud)
        if complete and not silent and n <= want:
            return  # one more t3.5 for trailing bytes, so an over-long frame is seen
        if not complete and not silent and ticks_diff(now_us, self._deadline_us) < 0:
            return
        if n == 0:
            kind, detail = TIMEOUT, None
        elif n > _MAX_ADU:
            kind, detail = LONG, None
        else:
            kind, detail = check_response(self._req, self._buf, n)
        self.wire_us += ticks_diff(now_us, self._t_send)
        self._finish(now_us, kind, detail)

    def _send(self, now_us):
        self._n = 0
        self.port.write(self._req)
        self._tries += 1
        self._t_send = now_us
        # Deadline: our request and the longest answer on the wire, plus the slave's time.
        wire = (len(self._req) + expected_len(self._req)) * char_us(self.baud)
        self._deadline_us = ticks_add(now_us, wire + self.timeout_ms * 1000)
        self._state = _WAIT

    def _finish(self, now_us, kind, detail):
        self.counters[kind] += 1
        if kind == EXCEPTION:
            self.exceptions[detail] = self.exceptions.get(detail, 0) + 1
        self._state = _IDLE
        self._t_rx = now_us  # the silence before the next frame counts from here
        if kind != OK and kind != EXCEPTION and self._tries <= self.retries:
            return  # self._req stays: step() resends it after t3.5
        self.transactions += 1
        cb = self._cb
        self._req = self._cb = None
        cb(kind, detail, self._buf, self._n)
