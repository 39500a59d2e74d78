"""The RFID reader for the control loop: one tap per card presentation, reader failures."""

import binascii

from evse.compat import const, ticks_add, ticks_diff
from evse.mfrc522 import MFRC522

POLL_MS = const(100)  # the chip is read at most this often (one read: ~3-7 ms at 1 MHz)
ABSENT_POLLS = const(3)  # a card is gone after this many reads without it (~300 ms)
RETRY_FIRST_S = const(2)  # a failed reader is set up again after 2, 4, 8 ... s
RETRY_MAX_S = const(60)


class Reader:
    """poll(now_ms) -> the UID as uppercase hex (byte 0 first) once per presentation of a
    card, else None. A card lying on the reader taps once however long it lies there (it is
    read every POLL_MS: WUPA wakes it each time although the last read halted it); the same
    card taps again only after ABSENT_POLLS reads without it. Another card taps at once.

    A reader that fails (no chip at setup, SPI errors, the chip stops answering or loses
    its setup) raises the event ReaderFailure once and sets `failed`; it is set up again
    after RETRY_FIRST_S, doubling to RETRY_MAX_S; when that works, ReaderRestored.
    `spi_pair` is the board's (spi, cs_pin)."""

    def __init__(self, spi_pair, events, now_ms):
        self._drv = MFRC522(spi_pair[0], spi_pair[1])
        self._events = events
        self.failed = False
        self.detail = ""  # why it failed last
        self._ready = False  # the chip is set up
        self._retry_s = RETRY_FIRST_S
        self._next = now_ms  # the next read or setup attempt (ticks ms)
        self._uid = bytearray(10)  # the card presented now (it tapped), _n bytes
        self._n = 0
        self._absent = 0
        self._setup(now_ms)

    def _setup(self, now_ms):
        try:
            self._drv.init()
        except OSError as e:
            self._fail(now_ms, e)
            return
        self._ready = True
        self._retry_s = RETRY_FIRST_S
        self._next = ticks_add(now_ms, POLL_MS)
        if self.failed:
            self.failed = False
            self._events.add("info", "ReaderRestored", 0, "")

    def _fail(self, now_ms, e):
        self._ready = False
        self._next = ticks_add(now_ms, self._retry_s * 1000)
        self._retry_s = min(self._retry_s * 2, RETRY_MAX_S)
        if not self.failed:
            self.failed = True
            self.detail = str(e)
            self._events.add("error", "ReaderFailure", 0, self.detail)

    def poll(self, now_ms):
        if ticks_diff(now_ms, self._next) < 0:
            return None
        if not self._ready:
            self._setup(now_ms)  # this pass sets the chip up; the next one reads
            return None
        self._next = ticks_add(now_ms, POLL_MS)
        drv = self._drv
        try:
            n = drv.read_uid()
        except OSError as e:
            self._fail(now_ms, e)
            return None
        if n == 0:
            # Nothing answered. The card is gone after ABSENT_POLLS such reads in a row; a
            # card that answered but could not be read (n < 0) still counts as there.
            if self._n:
                self._absent += 1
                if self._absent >= ABSENT_POLLS:
                    self._n = 0
            return None
        self._absent = 0
        if n < 0:
            return None
        got = drv.uid
        cur = self._uid
        if n == self._n:
            for i in range(n):
                if got[i] != cur[i]:
                    break
            else:
                return None  # the card that tapped, still there
        for i in range(n):
            cur[i] = got[i]
        self._n = n
        return binascii.hexlify(memoryview(got)[:n]).decode().upper()
