"""The simulator's RFID reader: an MFRC522 emulated at the register, FIFO and RF-frame level,
with the ISO/IEC 14443 A cards in its field (docs/simulator.md, "The RFID reader").

The chip side: the SPI framing (address byte, burst reads and writes), the registers the
firmware's driver (evse/mfrc522.py) and common drivers use, the commands Idle, CalcCRC,
Transmit, Transceive and SoftReset, ComIrqReg/DivIrqReg with their Set1/Set2 write rule,
ErrorReg (CollErr, ParityErr, CRCErr, BufferOvfl), CollReg, the 64-byte FIFO, BitFramingReg
(TxLastBits, RxAlign, StartSend), TxCRCEn / RxCRCEn, the CRC coprocessor (real CRC_A,
preset from ModeReg) and the timer (TAuto: starts at the end of a transmission, stops at the
5th received bit).
Frames take their air time at 106 kbit/s, so a driver polling ComIrqReg sees the reply when
it would arrive. The card side: IDLE, READY, ACTIVE and HALT, REQA and WUPA, ATQA by UID
size, cascade levels with the cascade tag 0x88 and BCC, SAK with the cascade bit, CRC_A
checked on SELECT and HLTA, and several cards answering at once giving real collision bits.

Wrong-hardware cases: the chip gone (MISO stuck at 0x00 or 0xFF), a card that leaves after a
given number of frames (its reply is then missing and the chip's timer ends the wait), reply
bit errors, some of which the byte parity does not catch (then only BCC and CRC_A do), and
the RF dead until the driver sets 100 % ASK and switches the antenna on.

Pure CPython, no I/O: tools/simworld.py owns one and feeds it the sim board's SPI lines;
tests/test_rfid.py drives the firmware's driver against one in-process."""

import random
import time

FC_HZ = 13560000  # the carrier
BIT_US = 128 * 1e6 / FC_HZ  # one bit at 106 kbit/s: 9.44 us
FDT_US = 1236 * 1e6 / FC_HZ  # ISO/IEC 14443-3 frame delay time, reader -> card: 91 us
RESET_US = 50  # SoftReset: CommandReg's PowerDown bit reads 1 this long
FIFO_SIZE = 64

# Registers (MFRC522 data sheet, section 9).
COMMAND = 0x01
COM_IEN = 0x02
DIV_IEN = 0x03
COM_IRQ = 0x04
DIV_IRQ = 0x05
ERROR = 0x06
STATUS1 = 0x07
STATUS2 = 0x08
FIFO_DATA = 0x09
FIFO_LEVEL = 0x0A
WATER_LEVEL = 0x0B
CONTROL = 0x0C
BIT_FRAMING = 0x0D
COLL = 0x0E
MODE = 0x11
TX_MODE = 0x12
RX_MODE = 0x13
TX_CONTROL = 0x14
TX_ASK = 0x15
CRC_RESULT_H = 0x21  # the result's high byte (MSB) ...
CRC_RESULT_L = 0x22  # ... and its low byte, the one sent first
T_MODE = 0x2A
T_PRESCALER = 0x2B
T_RELOAD_H = 0x2C
T_RELOAD_L = 0x2D
T_COUNTER_H = 0x2E
T_COUNTER_L = 0x2F
VERSION = 0x37

# ComIrqReg / DivIrqReg bits
TX_IRQ = 0x40
RX_IRQ = 0x20
IDLE_IRQ = 0x10
HI_ALERT_IRQ = 0x08
LO_ALERT_IRQ = 0x04
ERR_IRQ = 0x02
TIMER_IRQ = 0x01
CRC_IRQ = 0x04  # DivIrqReg
# ErrorReg bits
WR_ERR = 0x80
TEMP_ERR = 0x40
BUFFER_OVFL = 0x10
COLL_ERR = 0x08
CRC_ERR = 0x04
PARITY_ERR = 0x02
PROTOCOL_ERR = 0x01
# CommandReg
IDLE = 0x0
MEM = 0x1
RANDOM_ID = 0x2
CALC_CRC = 0x3
TRANSMIT = 0x4
NO_CMD_CHANGE = 0x7
RECEIVE = 0x8
TRANSCEIVE = 0xC
MF_AUTHENT = 0xE
SOFT_RESET = 0xF
RCV_OFF = 0x20
POWER_DOWN = 0x10

# Reset values of the registers that are not 0x00 (data sheet, section 9.2).
RESET_VALUES = {COMMAND: 0x20, COM_IEN: 0x80, COM_IRQ: 0x14, STATUS1: 0x21, WATER_LEVEL: 0x08,
                CONTROL: 0x10, COLL: 0xA0, MODE: 0x3F, TX_CONTROL: 0x80, 0x16: 0x10,
                0x17: 0x84, 0x18: 0x84, 0x19: 0x4D, 0x1C: 0x62, 0x1F: 0xEB,
                CRC_RESULT_H: 0xFF, CRC_RESULT_L: 0xFF, 0x24: 0x26, 0x26: 0x48, 0x27: 0x88,
                0x28: 0x20, 0x29: 0x20}
READ_ONLY = (ERROR, STATUS1, STATUS2, VERSION, CRC_RESULT_H, CRC_RESULT_L, T_COUNTER_H,
             T_COUNTER_L)
CRC_PRESETS = (0x0000, 0x6363, 0xA671, 0xFFFF)  # ModeReg CRCPreset[1:0]

# ISO/IEC 14443-3 type A
REQA = 0x26
WUPA = 0x52
HLTA = 0x50
SEL = (0x93, 0x95, 0x97)  # cascade levels 1-3
CT = 0x88  # cascade tag
IDLE_ST, READY_ST, ACTIVE_ST, HALT_ST = "IDLE", "READY", "ACTIVE", "HALT"


def crc16(data, preset=0x6363):
    """The CRC of ISO/IEC 14443-3 (x^16 + x^12 + x^5 + 1, bits in reflected order, no final
    XOR) from `preset`; CRC_A is preset 0x6363. Sent low byte first, so the CRC of a frame
    followed by its CRC_A is 0."""
    crc = preset
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ 0x8408 if crc & 1 else crc >> 1
    return crc


def crc_a(data):
    """CRC_A of data as the two bytes sent after it (low byte first)."""
    c = crc16(data)
    return bytes((c & 0xFF, c >> 8))


def to_bits(data, nbits):
    """The first nbits of data in air order (each byte LSB first)."""
    return [(data[i >> 3] >> (i & 7)) & 1 for i in range(nbits)]


def from_bits(bits, align=0):
    """Bits packed into bytes, the first one at bit position `align` of byte 0 (RxAlign)."""
    out = bytearray((align + len(bits) + 7) // 8)
    for i, b in enumerate(bits):
        p = align + i
        out[p >> 3] |= b << (p & 7)
    return bytes(out)


def levels(uid):
    """The UID's cascade levels: 5 bytes each, CLn (with the cascade tag where the UID
    continues) and its BCC."""
    n = len(uid)
    if n == 4:
        parts = [uid]
    elif n == 7:
        parts = [bytes((CT,)) + uid[:3], uid[3:]]
    elif n == 10:
        parts = [bytes((CT,)) + uid[:3], bytes((CT,)) + uid[3:6], uid[6:]]
    else:
        raise ValueError("a UID has 4, 7 or 10 bytes")
    return [bytes(p) + bytes((p[0] ^ p[1] ^ p[2] ^ p[3],)) for p in parts]


class Card:
    """An ISO/IEC 14443 A card (PICC): its UID, state and answers to the reader's frames.
    `frames`: the card hears this many frames and is gone before the next one (a card
    swiped past the reader; None: it stays until removed)."""

    def __init__(self, uid, sak=None, until_us=None, frames=None):
        self.uid = bytes(uid)
        self.cls = levels(self.uid)
        n = len(self.cls)
        # ATQA: UID size in bits 8-7 (single, double, triple), bit frame anticollision in
        # bit 3 (as MIFARE Classic 1K / Ultralight); sent low byte first.
        self.atqa = bytes((((n - 1) << 6) | 0x04, 0x00))
        if sak is None:
            sak = (0x08, 0x00, 0x20)[n - 1]  # Classic 1K / Ultralight / ISO-DEP, for show
        self.sak = sak
        self.until_us = until_us
        self.frames = frames
        self.state = IDLE_ST
        self.halted = False  # woken from HALT by WUPA: an error or HLTA takes it back there
        self.level = 0
        self.read = False  # selected once during this presentation (the card_read event)

    @property
    def hex(self):
        return self.uid.hex().upper()

    def power_off(self):
        """Out of the field (or the field off): back to IDLE when powered again."""
        self.state = IDLE_ST
        self.halted = False
        self.level = 0

    def _other(self):
        """ISO/IEC 14443-3: any other command or a transmission error in READY or ACTIVE."""
        self.state = HALT_ST if self.halted else IDLE_ST
        self.level = 0

    def hear(self, frame, nbits):
        """One frame from the reader: nbits of frame in air order. Returns the reply bits or
        None (no reply); the second item says whether the card was just selected."""
        st = self.state
        if nbits == 7:
            cmd = frame[0] & 0x7F
            if (cmd == WUPA and st in (IDLE_ST, HALT_ST)) or (cmd == REQA and st == IDLE_ST):
                self.halted = st == HALT_ST
                self.state = READY_ST
                self.level = 0
                return to_bits(self.atqa, 16), False
            if st in (READY_ST, ACTIVE_ST):
                self._other()
            return None, False
        if st in (IDLE_ST, HALT_ST):
            return None, False  # only REQA / WUPA wake them
        if st == ACTIVE_ST:
            if nbits == 32 and frame[0] == HLTA and frame[1] == 0 and crc16(frame[:4]) == 0:
                self.state = HALT_ST  # no reply to HLTA
            else:
                self._other()
            return None, False
        # READY: anticollision and SELECT of the current cascade level
        if nbits < 16 or frame[0] != SEL[self.level]:
            self._other()
            return None, False
        cl = self.cls[self.level]
        nvb = frame[1]
        if nvb == 0x70:
            if nbits != 72 or crc16(frame[:9]) != 0:
                self._other()  # a transmission error
                return None, False
            if bytes(frame[2:7]) != cl:
                self._other()  # not this card
                return None, False
            more = self.level + 1 < len(self.cls)
            sak = 0x04 if more else self.sak  # SAK bit 3: UID not complete
            if more:
                self.level += 1
            else:
                self.state = ACTIVE_ST
            return to_bits(bytes((sak,)) + crc_a(bytes((sak,))), 24), not more
        known = ((nvb >> 4) - 2) * 8 + (nvb & 0x0F)
        if not (0x20 <= nvb <= 0x67 and (nvb & 0x0F) <= 7) or nbits != 16 + known:
            self._other()
            return None, False
        mine = to_bits(cl, 40)
        if to_bits(frame[2:], known) != mine[:known]:
            return None, False  # another card's UID: stays READY, silent
        return mine[known:], False


class Mfrc522:
    """The chip. spi(data, new) is one exchange while NSS is low; `clock()` gives the time
    in microseconds (the world's monotonic clock). on_event(t, what, value), if set, hears
    card_read and card_left."""

    def __init__(self, clock=None, version=0x92, rng=None):
        self.clock = clock or (lambda: time.monotonic_ns() // 1000)
        self.version = version
        self.rng = rng or random.Random(7)
        self.cards = {}  # UID hex -> Card in the field
        self.on_event = None
        self.down = False  # the chip does not answer: MISO reads down_miso
        self.down_miso = 0x00
        self.noise = 0.0  # probability of a bit error in a card's reply frame
        self.noise_caught = 0.5  # the share of those the byte parity catches (ParityErr)
        self._flips = {}  # reply frame number -> (bit, caught): a planned bit error
        # counters (the simulator's stats, tests, the bench)
        self.spi_bytes = 0
        self.spi_transactions = 0
        self.frames = 0  # frames sent on the RF
        self.replies = 0  # frames received
        self.selects = 0  # SELECT frames sent (NVB 0x70)
        self.collisions = 0  # frames received with a bit collision
        self.air_us = 0.0  # RF time of the frames sent: frame, reply or the timer running out
        self.power_on()

    # -- power, reset ------------------------------------------------------------------------
    def power_on(self):
        """Power-on reset: registers to their reset values, FIFO empty, antenna off."""
        self.regs = bytearray(64)
        for reg, v in RESET_VALUES.items():
            self.regs[reg] = v
        self.fifo = bytearray()
        self.cmd = IDLE
        self._crc = None  # the running CRC while CalcCRC is active
        self._rx = None  # the reception under way: dict(due, bytes, last, err, coll)
        self._tx_end = None  # a transmission's end: TxIRq (and IdleIRq for Transmit)
        self._timer_due = None
        self._reset_until = 0
        self._addr = None
        self._read_mode = False
        for c in self.cards.values():
            c.power_off()

    def set_down(self, on, miso=0x00):
        """The chip stops answering (on) or comes back (off: powered up again, reset)."""
        if on:
            self.down_miso = miso
        elif self.down:
            self.power_on()
        self.down = on

    # -- the field ---------------------------------------------------------------------------
    def place(self, uid, until_us=None, frames=None, sak=None):
        """A card enters the field (a card with the same UID is replaced)."""
        c = Card(uid, sak=sak, until_us=until_us, frames=frames)
        self.cards[c.hex] = c
        return c

    def remove(self, uid_hex, t=None):
        c = self.cards.pop(uid_hex.upper(), None)
        if c is not None and self.on_event:
            self.on_event(self.clock() if t is None else t, "card_left", c.hex)

    def clear(self):
        for k in list(self.cards):
            self.remove(k)

    def due(self, t):
        """Cards whose time in the field is up leave; the next such time or None."""
        nxt = None
        for k, c in list(self.cards.items()):
            if c.until_us is None:
                continue
            if c.until_us <= t:
                self.remove(k, t)
            elif nxt is None or c.until_us < nxt:
                nxt = c.until_us
        return nxt

    def flip(self, frame, bit, caught=False):
        """Plan a bit error: bit `bit` of the `frame`-th reply from now (0: the next one);
        `caught`: the parity check sees it (ParityErr), otherwise only BCC/CRC_A can."""
        self._flips[self.replies + frame] = (bit, caught)

    # -- SPI -----------------------------------------------------------------------------
    def spi(self, data, new=True, t=None):
        """One SPI exchange: MOSI bytes in, MISO bytes out. new: NSS has just fallen, so the
        first byte is an address byte: bit 7 read (1) or write (0), bits 6-1 the register.
        A read returns, for each following byte, the register named by the byte before it
        (the last MOSI byte 0x00 ends it); a write stores each following byte in the same
        register (a burst into the FIFO)."""
        t = self.clock() if t is None else t
        self.spi_bytes += len(data)
        if new:
            self.spi_transactions += 1
            self._addr = None
        if self.down:
            return bytes((self.down_miso,)) * len(data)
        out = bytearray(len(data))
        for i, b in enumerate(data):
            if self._addr is None:
                self._addr = b
                self._read_mode = bool(b & 0x80)
                continue  # MISO during the address byte: undefined, 0x00 here
            if self._read_mode:
                if self._addr & 0x80:
                    out[i] = self.read((self._addr >> 1) & 0x3F, t)
                self._addr = b  # the next address (0x00: the read ends)
            else:
                self.write((self._addr >> 1) & 0x3F, b, t)
        return bytes(out)

    # -- registers ---------------------------------------------------------------------------
    def read(self, reg, t=None):
        t = self.clock() if t is None else t
        self._advance(t)
        r = self.regs
        if reg == FIFO_DATA:
            return self.fifo.pop(0) if self.fifo else 0x00
        if reg == FIFO_LEVEL:
            return len(self.fifo)
        if reg == VERSION:
            return self.version
        if reg == COMMAND:
            if t < self._reset_until:
                return POWER_DOWN | SOFT_RESET
            return (r[COMMAND] & (RCV_OFF | POWER_DOWN)) | self.cmd
        if reg == STATUS1:
            n = len(self.fifo)
            wl = r[WATER_LEVEL] & 0x3F
            v = (1 if n <= wl else 0) | (2 if FIFO_SIZE - n <= wl else 0)
            if self._timer_due is not None:
                v |= 0x04  # TRunning
            if (r[COM_IRQ] & r[COM_IEN] & 0x7F) or (r[DIV_IRQ] & r[DIV_IEN] & 0x14):
                v |= 0x08  # IRq
            if self._crc is not None:
                v |= 0x10  # CRCReady
                if self._crc == 0:
                    v |= 0x20  # CRCOk
            return v
        if reg in (T_COUNTER_H, T_COUNTER_L):
            left = 0
            if self._timer_due is not None:
                left = max(0, int((self._timer_due - t) / self._tick_us()))
            return (left >> 8) & 0xFF if reg == T_COUNTER_H else left & 0xFF
        return r[reg]

    def write(self, reg, v, t=None):
        t = self.clock() if t is None else t
        self._advance(t)
        r = self.regs
        if t < self._reset_until:
            return  # resetting: the chip ignores the bus
        if reg == COMMAND:
            self._command(v, t)
        elif reg in (COM_IRQ, DIV_IRQ):
            # Set1 / Set2 (bit 7): the bits marked 1 are set; otherwise they are cleared.
            if v & 0x80:
                r[reg] |= v & 0x7F
            else:
                r[reg] &= ~v & 0x7F
        elif reg == FIFO_DATA:
            if self.cmd == CALC_CRC:
                self._crc = crc16(bytes((v,)), self._crc)  # fed straight to the coprocessor
                self._crc_done()
            elif len(self.fifo) < FIFO_SIZE:
                self.fifo.append(v)
            else:
                r[ERROR] |= BUFFER_OVFL
                r[COM_IRQ] |= ERR_IRQ
        elif reg == FIFO_LEVEL:
            if v & 0x80:  # FlushBuffer
                self.fifo.clear()
                r[ERROR] &= ~BUFFER_OVFL & 0xFF
        elif reg == CONTROL:
            if v & 0x80:  # TStopNow
                self._timer_due = None
            if v & 0x40:  # TStartNow
                self._timer_due = t + self._period_us()
        elif reg == BIT_FRAMING:
            r[reg] = v
            if v & 0x80 and self.cmd == TRANSCEIVE:  # StartSend
                self._transmit(t, True)
        elif reg == COLL:
            r[reg] = (r[reg] & 0x7F) | (v & 0x80)  # only ValuesAfterColl is writable
        elif reg == TX_CONTROL:
            r[reg] = v
            if not v & 0x03:
                for c in self.cards.values():
                    c.power_off()  # no field: the cards lose power
        elif reg not in READ_ONLY:
            r[reg] = v

    # -- commands ----------------------------------------------------------------------------
    def _command(self, v, t):
        r = self.regs
        r[COMMAND] = v & (RCV_OFF | POWER_DOWN)
        cmd = v & 0x0F
        if cmd == NO_CMD_CHANGE:
            return
        if cmd == SOFT_RESET:
            version = self.version
            self.power_on()
            self.version = version
            self._reset_until = t + RESET_US
            return
        # A new command ends the one under way (a reception in progress is abandoned).
        self._rx = None
        self._tx_end = None
        self.cmd = cmd
        if cmd == CALC_CRC:
            # The preset is loaded when the command starts; the FIFO's bytes go through it.
            self._crc = crc16(bytes(self.fifo), CRC_PRESETS[r[MODE] & 0x03])
            self.fifo.clear()
            self._crc_done()
        elif cmd == TRANSMIT:
            self._transmit(t, False)
        elif cmd in (IDLE, TRANSCEIVE, RECEIVE):
            pass  # Transceive waits for StartSend; Receive for a frame that never comes
        else:
            # Mem, Generate RandomID, MFAuthent are not modelled, and unknown codes: the
            # chip goes idle and flags it (data sheet: an unknown command sets IdleIRq).
            self.cmd = IDLE
            r[COM_IRQ] |= IDLE_IRQ

    def _crc_done(self):
        r = self.regs
        r[CRC_RESULT_H] = self._crc >> 8
        r[CRC_RESULT_L] = self._crc & 0xFF
        r[DIV_IRQ] |= CRC_IRQ

    def _tick_us(self):
        r = self.regs
        prescaler = ((r[T_MODE] & 0x0F) << 8) | r[T_PRESCALER]
        return (2 * prescaler + 1) * 1e6 / FC_HZ

    def _period_us(self):
        r = self.regs
        return ((r[T_RELOAD_H] << 8 | r[T_RELOAD_L]) + 1) * self._tick_us()

    def _transmit(self, t, receive):
        """Send the FIFO (TxLastBits of the last byte); with `receive`, take the cards'
        answer, due after the frame delay and its own air time, with RxAlign applied."""
        r = self.regs
        data = bytes(self.fifo)
        self.fifo.clear()
        framing = r[BIT_FRAMING]
        last = framing & 0x07
        if r[TX_MODE] & 0x80 and data and not last:
            data += crc_a(data)  # TxCRCEn: the chip appends CRC_A
        align = (framing >> 4) & 0x07
        nbits = len(data) * 8 - ((8 - last) if last and data else 0)
        r[ERROR] &= BUFFER_OVFL  # the error flags are those of this command
        r[COLL] = (r[COLL] & 0x80) | 0x20  # CollPosNotValid until a collision is seen
        tx_end = t + (1 + nbits + nbits // 8) * BIT_US  # SOF, data, a parity bit per byte
        self._tx_end = tx_end
        self.frames += 1
        if r[T_MODE] & 0x80:
            self._timer_due = tx_end + self._period_us()  # TAuto: from the end of the frame
        replies = []
        selected = []
        if data[:2] and nbits >= 16 and data[0] in SEL and data[1] == 0x70:
            self.selects += 1
        field = r[TX_CONTROL] & 0x03 and r[TX_ASK] & 0x40  # type A cards need 100 % ASK
        if field:
            for k, c in list(self.cards.items()):
                if c.frames is not None:
                    if c.frames <= 0:
                        self.remove(k, t)  # gone before this frame
                        continue
                    c.frames -= 1
                bits, sel = c.hear(data, nbits)
                if bits is not None:
                    replies.append(bits)
                if sel:
                    selected.append(c)
        for c in selected:
            if not c.read and self.on_event:
                self.on_event(t, "card_read", c.hex)
            c.read = True
        if not receive or not replies or r[COMMAND] & RCV_OFF:
            self.air_us += tx_end - t + (self._timer_due - tx_end if receive and
                                         self._timer_due is not None else 0)
            return
        # Several cards at once: where their bits differ the reader sees a collision.
        n = max(len(b) for b in replies)
        bits, coll = [], None
        for i in range(n):
            vals = {b[i] for b in replies if len(b) > i}
            if len(vals) > 1 and coll is None:
                coll = i
            bits.append(1 if len(vals) > 1 else vals.pop())  # a decoder gives 1 for a collision
        if coll is not None and not r[COLL] & 0x80:
            bits[coll:] = [0] * (n - coll)  # ValuesAfterColl 0: cleared from the collision on
        err = 0
        flip = self._flips.pop(self.replies, None)
        if flip is None and self.noise and self.rng.random() < self.noise:
            flip = (self.rng.randrange(n), self.rng.random() < self.noise_caught)
        if flip is not None and flip[0] < n:
            bits[flip[0]] ^= 1
            if flip[1]:
                err |= PARITY_ERR
        if r[RX_MODE] & 0x80 and n >= 24 and not n % 8 and coll is None:
            # RxCRCEn: the chip checks the reply's CRC_A (its bytes stay in the FIFO here)
            if crc16(from_bits(bits)) != 0:
                err |= CRC_ERR
        self.replies += 1
        rx_start = tx_end + FDT_US
        collpos = None
        if coll is not None:
            self.collisions += 1
            err |= COLL_ERR
            collpos = align + coll + 1  # 1-based, RxAlign included (NXP reader ICs)
        self._rx = {
            "start": rx_start,
            "due": rx_start + (2 + n + n // 8) * BIT_US,  # SOF, data, parity, EOF
            "data": from_bits(bits, align),
            "last": (align + n) % 8,
            "err": err,
            "collpos": collpos,
        }
        if self._timer_due is not None and rx_start + 5 * BIT_US < self._timer_due:
            self._timer_due = None  # TAuto: the timer stops at the 5th received bit
        self.air_us += self._rx["due"] - t

    def _advance(self, t):
        """Apply what has come due by t: end of transmission, reception, timer."""
        r = self.regs
        if self._tx_end is not None and t >= self._tx_end:
            self._tx_end = None
            r[COM_IRQ] |= TX_IRQ
            if self.cmd == TRANSMIT:
                self.cmd = IDLE
                r[COM_IRQ] |= IDLE_IRQ  # Transmit ends by itself
        rx = self._rx
        if rx is not None and t >= rx["due"]:
            self._rx = None
            for b in rx["data"]:
                if len(self.fifo) < FIFO_SIZE:
                    self.fifo.append(b)
                else:
                    rx["err"] |= BUFFER_OVFL
            r[CONTROL] = (r[CONTROL] & 0xF8) | rx["last"]
            r[ERROR] |= rx["err"]
            cp = rx["collpos"]
            if cp is not None:
                valid = cp <= 32
                r[COLL] = (r[COLL] & 0x80) | (0 if valid else 0x20) | (cp & 0x1F if valid else 0)
            r[COM_IRQ] |= RX_IRQ | (ERR_IRQ if r[ERROR] else 0)
        if self._timer_due is not None and t >= self._timer_due:
            self._timer_due = None
            r[COM_IRQ] |= TIMER_IRQ
