"""MFRC522 driver: the UID (4, 7 or 10 bytes) of the ISO/IEC 14443 A card on the reader."""

from evse.compat import const, ticks_add, ticks_diff, ticks_us

# Registers (MFRC522 data sheet, section 9) as SPI address bytes: write (reg << 1) & 0x7E,
# read the same | 0x80.
_W_COMMAND = const(0x02)  # CommandReg 0x01
_W_COM_IRQ = const(0x08)  # ComIrqReg 0x04
_W_DIV_IRQ = const(0x0A)  # DivIrqReg 0x05
_W_FIFO = const(0x12)  # FIFODataReg 0x09
_W_FIFO_LEVEL = const(0x14)  # FIFOLevelReg 0x0A
_W_BIT_FRAMING = const(0x1A)  # BitFramingReg 0x0D
_R_COMMAND = const(0x82)
_R_COM_IRQ = const(0x88)
_R_DIV_IRQ = const(0x8A)
_R_ERROR = const(0x8C)  # ErrorReg 0x06
_R_FIFO = const(0x92)
_R_FIFO_LEVEL = const(0x94)
_R_CONTROL = const(0x98)  # ControlReg 0x0C: RxLastBits
_R_COLL = const(0x9C)  # CollReg 0x0E
_R_CRC_H = const(0xC2)  # CRCResultReg 0x21 (high byte)
_R_CRC_L = const(0xC4)  # CRCResultReg 0x22 (low byte, sent first)
_R_T_MODE = const(0xD4)  # TModeReg 0x2A
_R_VERSION = const(0xEE)  # VersionReg 0x37
# Commands
_IDLE = const(0x00)
_CALC_CRC = const(0x03)
_TRANSMIT = const(0x04)
_TRANSCEIVE = const(0x0C)
_SOFT_RESET = const(0x0F)
# ErrorReg: CollErr is handled by the anticollision; CRCErr is unused (the driver checks
# CRC_A itself); every other error (WrErr, TempErr, BufferOvfl, ParityErr, ProtocolErr)
# spoils the frame.
_COLL_ERR = const(0x08)
_BAD = const(0xD3)
_T_MODE = const(0x80)  # TAuto, prescaler high bits 0 (setup below); checked on every read
# After SoftReset (0x01 0x0F), in pairs of write-address byte and value:
_SETUP = (
    b"\x54\x80"  # TModeReg: TAuto (the timer starts when a frame is sent, stops on a reply)
    b"\x56\xa9"  # TPrescalerReg 169: 13.56 MHz / (2 * 169 + 1) = 40 kHz, 25 us a tick
    b"\x58\x00\x5a\x28"  # TReloadReg 40: no reply 1.025 ms after a frame = nobody there
    # (ISO/IEC 14443-3 layer 3 replies start 91 us after the frame)
    b"\x2a\x40"  # TxASKReg: 100 % ASK, which type A cards need
    b"\x22\x3d"  # ModeReg: CRC preset 0x6363 (CRC_A)
    b"\x1c\x00"  # CollReg: ValuesAfterColl 0 (bits after a collision read 0)
    b"\x28\x83"  # TxControlReg: antenna on (TX1, TX2)
)
_VERSIONS = (0x91, 0x92, 0x88, 0xB2, 0x89)  # v1.0, v2.0; FM17522 clones
_WAIT_US = const(10000)  # a wait the chip's own timer always ends in ~3 ms: it is gone
_RESET_WAIT_US = const(20000)
_ROUNDS = const(8)  # anticollision frames per cascade level: 8 cards apart at the most
_BUF = const(12)  # the longest SPI exchange: the FIFO burst of a SELECT, 1 + 9 bytes


class MFRC522:
    """The chip on `spi` (machine.SPI-like: write_readinto) with its NSS pin `cs` (called
    with 0 / 1). init() sets it up; read_uid() reads the card in the field.

    Several cards at once are resolved by the standard bit-oriented anticollision (at a
    collision the card with a 1 there goes on): one of them is read, always whole and
    right. A UID is reported only after the card confirmed all of it: every cascade level's
    BCC checked, the SELECT answered with a SAK whose CRC_A is right, and the SAK's cascade
    bit followed. Every wait has a deadline; the chip's timer ends a frame nobody answers."""

    def __init__(self, spi, cs):
        self._spi = spi
        self._cs = cs
        self._tx = bytearray(_BUF)
        self._rx = bytearray(_BUF)
        tv = memoryview(self._tx)
        rv = memoryview(self._rx)
        # Views of every length, made once: an exchange allocates nothing.
        self._txv = tuple(tv[:n] for n in range(_BUF + 1))
        self._rxv = tuple(rv[:n] for n in range(_BUF + 1))
        self._f = bytearray(10)  # the frame to send (and CRC_A input)
        self._d = bytearray(_BUF)  # the frame received
        self._cl = bytearray(5)  # this cascade level's UID bytes and BCC
        self.uid = bytearray(10)  # the UID read, byte 0 first
        self.version = None
        self._err = self._last = self._coll = 0

    # -- SPI -------------------------------------------------------------------------------
    def _xfer(self, n):
        cs = self._cs
        cs(0)
        try:
            self._spi.write_readinto(self._txv[n], self._rxv[n])
        finally:
            cs(1)

    def _w(self, addr, v):
        tx = self._tx
        tx[0] = addr
        tx[1] = v
        self._xfer(2)

    def _r(self, addr):
        tx = self._tx
        tx[0] = addr
        tx[1] = 0
        self._xfer(2)
        return self._rx[1]

    def _wait(self, addr, mask, clear=False):
        """Read the register until a bit of mask is set (clear: until all are clear). The
        last read comes after the deadline, so a stalled caller never misses an answer."""
        end = ticks_add(ticks_us(), _RESET_WAIT_US if clear else _WAIT_US)
        while True:
            late = ticks_diff(ticks_us(), end) >= 0
            v = self._r(addr)
            if (not v & mask) if clear else v & mask:
                return v
            if late:
                raise OSError("MFRC522 timeout")

    def _fifo(self, n):
        """Put self._f[:n] into the FIFO, emptied first."""
        self._w(_W_FIFO_LEVEL, 0x80)  # FlushBuffer
        tx = self._tx
        f = self._f
        tx[0] = _W_FIFO
        for i in range(n):
            tx[1 + i] = f[i]
        self._xfer(n + 1)

    # -- the chip ---------------------------------------------------------------------------
    def init(self):
        """Version check, soft reset, timer, 100 % ASK, CRC preset, antenna on. OSError: no
        reader (VersionReg reads 0x00 or 0xFF with nothing driving MISO) or not an MFRC522."""
        v = self._r(_R_VERSION)
        if v not in _VERSIONS:
            raise OSError("MFRC522 version 0x%02x" % v)
        self._w(_W_COMMAND, _SOFT_RESET)
        self._wait(_R_COMMAND, 0x10, True)  # PowerDown reads 1 until the reset is done
        s = _SETUP
        for i in range(0, len(s), 2):
            self._w(s[i], s[i + 1])
        self.version = v
        self.check()

    def check(self):
        """OSError unless the chip still answers as set up: VersionReg (0x00 / 0xFF: the chip
        is gone) and TModeReg (a reset chip, e.g. after a brown-out, lost its setup)."""
        tx = self._tx
        tx[0] = _R_VERSION
        tx[1] = _R_T_MODE
        tx[2] = 0
        self._xfer(3)
        rx = self._rx
        if rx[1] != self.version or rx[2] != _T_MODE:
            raise OSError("MFRC522 lost (0x%02x 0x%02x)" % (rx[1], rx[2]))

    def _crc(self, n):
        """CRC_A of self._f[:n] by the chip's coprocessor into _f[n], _f[n + 1] (low byte
        first, as sent)."""
        self._w(_W_COMMAND, _IDLE)
        self._w(_W_DIV_IRQ, 0x04)  # clear CRCIRq
        self._fifo(n)
        self._w(_W_COMMAND, _CALC_CRC)
        self._wait(_R_DIV_IRQ, 0x04)
        tx = self._tx
        tx[0] = _R_CRC_L
        tx[1] = _R_CRC_H
        tx[2] = 0
        self._xfer(3)  # CalcCRC runs on until the next command (the next frame's Idle)
        f = self._f
        f[n] = self._rx[1]
        f[n + 1] = self._rx[2]

    def _frame(self, n, framing, cmd=_TRANSCEIVE):
        """Send self._f[:n]; framing is BitFramingReg's RxAlign << 4 | TxLastBits (the bits
        of the last byte sent, 0 = 8). Returns the bytes received into self._d (0: no reply
        before the chip's timer ran out), with ErrorReg, RxLastBits and CollReg kept."""
        self._w(_W_COMMAND, _IDLE)
        self._w(_W_COM_IRQ, 0x7F)  # clear every IRQ bit
        self._fifo(n)
        if cmd == _TRANSMIT:
            self._w(_W_BIT_FRAMING, framing)
            self._w(_W_COMMAND, _TRANSMIT)
            self._wait(_R_COM_IRQ, 0x10)  # IdleIRq: sent
            return 0
        self._w(_W_COMMAND, _TRANSCEIVE)
        self._w(_W_BIT_FRAMING, 0x80 | framing)  # StartSend
        if not self._wait(_R_COM_IRQ, 0x21) & 0x20:  # RxIRq, or TimerIRq: nobody answered
            return 0
        tx = self._tx
        tx[0] = _R_ERROR
        tx[1] = _R_FIFO_LEVEL
        tx[2] = _R_CONTROL
        tx[3] = _R_COLL
        tx[4] = 0
        self._xfer(5)
        rx = self._rx
        self._err = rx[1]
        m = rx[2] & 0x7F
        self._last = rx[3] & 0x07
        self._coll = rx[4]
        if m > _BUF - 1:
            self._err |= 0x10  # more than any answer here: as an overflow
            return 0
        for i in range(m):
            tx[i] = _R_FIFO
        tx[m] = 0
        self._xfer(m + 1)
        d = self._d
        for i in range(m):
            d[i] = rx[1 + i]
        return m

    # -- ISO/IEC 14443-3 type A ------------------------------------------------------------
    def read_uid(self):
        """One read of the card in the field. Returns the UID's length (4, 7 or 10, the
        bytes in self.uid), 0 when no card answered, -1 when one did but gave no UID this
        time (cards not told apart, a card that left mid-read, a spoiled frame). OSError:
        the chip is gone (no answer, or not as set up)."""
        self.check()
        f = self._f
        # WUPA, not REQA: it wakes a card halted after its last read too, so a card lying on
        # the reader answers every time (REQA would find it only once).
        f[0] = 0x52
        m = self._frame(1, 0x07)  # a short frame: 7 bits
        if not m:
            return 0
        # An ATQA (2 bytes) with a collision is several cards of different types: resolved
        # below.
        n = self._uid() if m == 2 and not self._err & _BAD else -1
        # HLTA (0x50 0x00 + CRC_A): the card read sleeps until the next WUPA; one left READY
        # or ACTIVE by a failed read goes back to IDLE or HALT, so WUPA finds it again.
        f[0] = 0x50
        f[1] = 0
        self._crc(2)
        self._frame(4, 0, _TRANSMIT)
        return n

    def _uid(self):
        uid = self.uid
        cl = self._cl
        n = 0
        for level in range(3):
            if not self._select(0x93 + 2 * level):
                return -1
            if self._f[0] & 0x04:  # SAK: UID not complete, the next cascade level follows
                if cl[0] != 0x88 or level == 2:  # it must start with the cascade tag
                    return -1
                for i in range(3):
                    uid[n + i] = cl[1 + i]
                n += 3
            else:
                for i in range(4):
                    uid[n + i] = cl[i]
                return n + 4
        return -1

    def _select(self, sel):
        """Anticollision and SELECT at one cascade level (sel 0x93, 0x95, 0x97): True with
        this level's bytes in self._cl and the SAK in self._f[0]."""
        f = self._f
        cl = self._cl
        d = self._d
        known = 0  # UID bits of this level known so far
        for _ in range(_ROUNDS):
            q = known >> 3
            r = known & 7
            k = q + (1 if r else 0)
            f[0] = sel
            f[1] = ((2 + q) << 4) | r  # NVB: whole bytes sent, and bits
            for i in range(k):
                f[2 + i] = cl[i]
            # The last byte carries only r bits, and the card's answer continues at bit r.
            m = self._frame(2 + k, (r << 4) | r)
            if not m or self._err & _BAD or q + m > 5:
                return False
            lo = (1 << r) - 1
            cl[q] = (cl[q] & lo) | (d[0] & ~lo)
            for i in range(1, m):
                cl[q + i] = d[i]
            if self._err & _COLL_ERR:
                c = self._coll
                if c & 0x20:  # CollPosNotValid
                    return False
                # CollPos: the first collision's bit, 1-based, counting the RxAlign bits of
                # the first byte (NXP's reader ICs); 0 means the 32nd.
                pos = 8 * q + ((c & 0x1F) or 32)
                if pos <= known or pos > 32:
                    return False
                b = pos - 1
                i = b >> 3
                cl[i] = (cl[i] & ((1 << (b & 7)) - 1)) | (1 << (b & 7))  # take the 1 side
                known = pos
                continue
            if q + m != 5 or self._last:
                return False  # not the rest of this level's 40 bits
            if cl[0] ^ cl[1] ^ cl[2] ^ cl[3] != cl[4]:
                return False  # BCC: the bytes are not what a card sent
            break
        else:
            return False
        f[0] = sel
        f[1] = 0x70  # SELECT: all 40 bits
        for i in range(5):
            f[2 + i] = cl[i]
        self._crc(7)
        if self._frame(9, 0) != 3 or self._err & (_BAD | _COLL_ERR) or self._last:
            return False
        for i in range(3):
            f[i] = d[i]
        self._crc(3)  # SAK + its CRC_A: a right CRC_A leaves 0
        return not (f[3] or f[4])
