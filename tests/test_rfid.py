"""The RFID reader: the MFRC522 driver (evse/mfrc522.py) and the control loop's reader
(evse/rfid.py) against the simulator's register-level MFRC522 and its cards
(tools/simrfid.py), in this process over a fake SPI bus; then the same code on the
MicroPython unix port with the sim board's SPI through a real runner.

Breakages each test was seen to fail on are noted in its docstring ("Break: ...")."""

import os
import queue
import random
import subprocess
import sys
import threading
import time

import pytest
import simrfid

from evse.events import Events
from evse.mfrc522 import MFRC522
from evse.rfid import ABSENT_POLLS, POLL_MS, Reader

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIRMWARE = os.environ.get("EVSE_FIRMWARE") or os.path.join(ROOT, "firmware")
MICROPYTHON = os.path.join(os.path.dirname(sys.executable), "micropython")

UID4 = "04A1B2C3"
UID7 = "04A1B2C3D4E5F6"
UID10 = "04A1B2C3D4E5F60718A9"


class NssPin:
    """The reader's NSS pin: called with 0 / 1; a falling edge starts a transaction."""

    def __init__(self):
        self.v = 1
        self.fell = False

    def __call__(self, v=None):
        if v is None:
            return self.v
        if self.v and not v:
            self.fell = True
        self.v = 1 if v else 0


class ChipSpi:
    """machine.SPI's write_readinto, wired to the emulated chip; `error` makes it raise."""

    def __init__(self, chip, cs):
        self.chip = chip
        self.cs = cs
        self.error = None

    def write_readinto(self, w, r):
        assert len(w) == len(r)
        if self.error:
            raise self.error
        if self.cs.v:
            r[:] = bytes(len(r))  # NSS high: the chip does not drive MISO
            return
        r[:] = self.chip.spi(bytes(w), self.cs.fell)
        self.cs.fell = False


def rig(chip=None):
    chip = chip or simrfid.Mfrc522()
    cs = NssPin()
    spi = ChipSpi(chip, cs)
    return chip, spi, cs


def driver(chip=None):
    chip, spi, cs = rig(chip)
    d = MFRC522(spi, cs)
    d.init()
    return chip, d


def read(d):
    n = d.read_uid()
    return bytes(d.uid[:n]).hex().upper() if n > 0 else n


class Clock:
    """The control loop's now_ms for a Reader, stepped by the test."""

    def __init__(self):
        self.ms = 1 << 29  # far from 0: ticks arithmetic must not care

    def step(self, ms):
        self.ms = (self.ms + ms) & ((1 << 30) - 1)
        return self.ms


def reader(chip=None):
    chip, spi, cs = rig(chip)
    ev = Events()
    clock = Clock()
    r = Reader((spi, cs), ev, clock.ms)
    return chip, spi, r, ev, clock


def codes(ev):
    out = []
    while ev.queued():
        e = ev.pop()
        out += [(e[0], e[1], e[3])] * e[6]
    return out


def run(r, clock, ms, step=5):
    """Poll every `step` ms for `ms`: the taps, each with its time (ms from the start)."""
    taps = []
    for t in range(0, ms, step):
        uid = r.poll(clock.step(step))
        if uid is not None:
            taps.append((t + step, uid))
    return taps


# -- CRC_A ------------------------------------------------------------------------------------


def crc_a_iso(data):
    """ISO/IEC 14443-3 Annex B's byte-wise CRC_A, independent of the emulator's bitwise one."""
    crc = 0x6363
    for b in data:
        b ^= crc & 0xFF
        b = (b ^ (b << 4)) & 0xFF
        crc = ((crc >> 8) ^ (b << 8) ^ (b << 3) ^ (b >> 4)) & 0xFFFF
    return bytes((crc & 0xFF, crc >> 8))


KNOWN_CRC_A = [  # frames from card traces: the frame, its CRC_A low byte first
    ("5000", "57CD"),  # HLTA
    ("E050", "BCA5"),  # RATS
    ("3000", "02A8"),  # MIFARE READ block 0
    ("08", "B6DD"),  # SAK of a MIFARE Classic 1K
    ("04", "DA17"),  # SAK, UID not complete
    ("20", "FC70"),  # SAK of an ISO-DEP card
]


@pytest.mark.parametrize("frame,crc", KNOWN_CRC_A)
def test_crc_a_known_vectors(frame, crc):
    """The emulator's CRC_A, the independent one and the chip's coprocessor as the driver
    runs it (CalcCRC, DivIrqReg CRCIRq, CRCResultReg) all give the traced CRC_A.
    Break: CRCResultReg low/high swapped in the driver -> red; preset 0xFFFF in ModeReg
    (0x3F) -> red."""
    data = bytes.fromhex(frame)
    assert simrfid.crc_a(data).hex().upper() == crc
    assert crc_a_iso(data).hex().upper() == crc
    _, d = driver()
    d._f[: len(data)] = data
    d._crc(len(data))
    assert bytes(d._f[len(data): len(data) + 2]).hex().upper() == crc


def test_crc_a_random_against_independent_and_residue():
    rng = random.Random(3)
    _, d = driver()
    for _ in range(200):
        data = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 8)))
        assert simrfid.crc_a(data) == crc_a_iso(data)
        assert simrfid.crc16(data + crc_a_iso(data)) == 0  # what the SAK check relies on
    for _ in range(30):
        data = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 8)))
        d._f[: len(data)] = data
        d._crc(len(data))
        assert bytes(d._f[len(data): len(data) + 2]) == crc_a_iso(data)


# -- the chip and the cards, as the emulator plays them ---------------------------------------


def test_emulated_registers_fifo_and_irq_rules():
    """The register semantics the driver relies on, checked on the emulator itself: burst
    read, FIFO 64 bytes with BufferOvfl and FlushBuffer, Set1 write rule of ComIrqReg,
    CRC preset from ModeReg, SoftReset."""
    chip = simrfid.Mfrc522(version=0x91)
    assert chip.spi(bytes((0xEE, 0x82, 0x00)))[1:] == bytes((0x91, 0x20))  # version, command
    assert chip.spi(bytes((0x12,)) + bytes(range(70)))  # 70 bytes into the 64-byte FIFO
    assert chip.read(simrfid.FIFO_LEVEL) == 64
    assert chip.read(simrfid.ERROR) & simrfid.BUFFER_OVFL
    assert chip.read(simrfid.FIFO_DATA) == 0 and chip.read(simrfid.FIFO_DATA) == 1
    chip.write(simrfid.FIFO_LEVEL, 0x80)
    assert chip.read(simrfid.FIFO_LEVEL) == 0 and not chip.read(simrfid.ERROR)
    chip.write(simrfid.COM_IRQ, 0x80 | 0x21)  # Set1: set RxIRq, TimerIRq
    assert chip.read(simrfid.COM_IRQ) & 0x21 == 0x21
    chip.write(simrfid.COM_IRQ, 0x01)  # clear TimerIRq only
    assert chip.read(simrfid.COM_IRQ) & 0x21 == 0x20
    chip.write(simrfid.MODE, 0x3C)  # CRCPreset 0x0000
    chip.write(simrfid.FIFO_DATA, 0x50)
    chip.write(simrfid.COMMAND, simrfid.CALC_CRC)
    assert chip.read(simrfid.DIV_IRQ) & simrfid.CRC_IRQ
    want = simrfid.crc16(b"\x50", 0x0000)
    assert (chip.read(simrfid.CRC_RESULT_H), chip.read(simrfid.CRC_RESULT_L)) == (
        want >> 8, want & 0xFF)
    chip.write(simrfid.COMMAND, simrfid.SOFT_RESET)
    assert chip.read(simrfid.MODE) == 0x3F  # back to its reset value


def test_emulated_card_states_reqa_wupa_halt():
    """ISO/IEC 14443-3: REQA wakes an IDLE card, not a HALTed one; WUPA wakes both; the
    driver halts the card it read."""
    chip, d = driver()
    card = chip.place(bytes.fromhex(UID4))
    assert read(d) == UID4
    assert card.state == simrfid.HALT_ST
    framing = simrfid.BIT_FRAMING

    def short(cmd):
        chip.write(simrfid.COMMAND, simrfid.IDLE)
        chip.write(simrfid.FIFO_LEVEL, 0x80)
        chip.write(simrfid.FIFO_DATA, cmd)
        chip.write(simrfid.COMMAND, simrfid.TRANSCEIVE)
        chip.write(framing, 0x87)
        time.sleep(0.002)
        return chip.read(simrfid.FIFO_LEVEL)

    assert short(simrfid.REQA) == 0 and card.state == simrfid.HALT_ST
    assert short(simrfid.WUPA) == 2 and card.state == simrfid.READY_ST


def test_emulated_tx_and_rx_crc_enable():
    """TxCRCEn appends CRC_A to a frame sent, RxCRCEn checks the reply's (CRCErr), for drivers
    that let the chip do it (this one does not)."""
    chip = simrfid.Mfrc522()
    _, d = driver(chip)
    chip.place(bytes.fromhex(UID4))

    def xcv(frame, framing=0):
        chip.write(simrfid.COMMAND, simrfid.IDLE)
        chip.write(simrfid.COM_IRQ, 0x7F)
        chip.write(simrfid.FIFO_LEVEL, 0x80)
        for b in frame:
            chip.write(simrfid.FIFO_DATA, b)
        chip.write(simrfid.COMMAND, simrfid.TRANSCEIVE)
        chip.write(simrfid.BIT_FRAMING, 0x80 | framing)
        time.sleep(0.003)
        return bytes(chip.read(simrfid.FIFO_DATA) for _ in range(chip.read(simrfid.FIFO_LEVEL)))

    assert len(xcv(b"\x52", 7)) == 2
    cl = xcv(b"\x93\x20")
    assert cl == simrfid.levels(bytes.fromhex(UID4))[0]
    chip.write(simrfid.TX_MODE, 0x80)
    chip.write(simrfid.RX_MODE, 0x80)
    chip.flip(0, 5)  # the SAK, past the parity
    sak = xcv(b"\x93\x70" + cl)
    assert len(sak) == 3 and chip.read(simrfid.ERROR) & simrfid.CRC_ERR


# -- reading UIDs -----------------------------------------------------------------------------


@pytest.mark.parametrize("uid", [UID4, UID7, UID10, "FFFFFFFF", "00000000", "08123456",
                                 "04888888888888", "04888888888888888888"])
def test_uid_sizes_read_right(uid):
    """4, 7 and 10 bytes, byte 0 first, through every cascade level, and the reader's tap
    in uppercase hex. Break: UID bytes reversed -> red; the cascade tag kept in the UID ->
    red; no level 3 -> red."""
    chip, d = driver()
    chip.place(bytes.fromhex(uid))
    assert read(d) == uid
    assert read(d) == uid  # again: WUPA wakes the card the last read halted
    chip, _, r, _, clock = reader()
    chip.place(bytes.fromhex(uid))
    assert [u for _, u in run(r, clock, 300)] == [uid]


def test_no_card_is_zero_and_quick():
    """An empty field: the chip's timer ends the WUPA (1 ms), not the driver's 10 ms
    deadline (which would raise OSError: the chip gone)."""
    chip, d = driver()
    t0 = time.perf_counter()
    assert d.read_uid() == 0
    assert time.perf_counter() - t0 < 0.1


def _uid(rng, n):
    while True:
        b = bytes(rng.randrange(256) for _ in range(n))
        if not ((n == 4 and b[0] == 0x88) or (n == 7 and b[3] == 0x88)):
            return b


COLLISION_SETS = [
    ["86A083EE", "169A0A3B"],  # apart in the 5th bit
    ["04A1B2C3", "04A1B2C2"],  # apart in the last UID bit of the level
    ["04A1B2C3", "84A1B2C3"],  # apart in bit 8
    ["04A1B2C3D4E5F6", "04A1B2C4D4E5F6"],  # one CL1 cascade bytes apart
    ["04A1B2C3D4E5F6", "04A1B2C3D4E5F7"],  # the same CL1: both selected there, apart at CL2
    [UID4, UID7, UID10],  # three sizes: the ATQAs collide too
    ["11223344", "11223345", "11223346"],
    ["04A1B2C3D4E5F60718A9", "04A1B2C3D4E5F60718A8", "04A1B2C3D4E5F60718AB"],
]


def one_side(uids):
    """The card the standard anticollision ends at when it takes the 1 side of every
    collision: level by level, at the first bit (air order) where the cards left differ,
    those with a 1 go on."""
    cards = [(u, simrfid.levels(bytes.fromhex(u))) for u in uids]
    for level in range(3):
        at = [c for c in cards if len(c[1]) > level]
        bits = {u: simrfid.to_bits(cls[level], 40) for u, cls in at}
        for i in range(40):
            if len({b[i] for b in bits.values()}) > 1:
                bits = {u: b for u, b in bits.items() if b[i]}
        cards = [c for c in at if c[0] in bits]
        if len(cards) == 1:
            return cards[0][0]
    raise AssertionError(uids)


@pytest.mark.parametrize("uids", COLLISION_SETS, ids=lambda u: "+".join(u))
def test_collisions_resolve_to_one_whole_card(uids):
    """Several cards at once: the bit-oriented anticollision reads one of them, whole and
    right, the one on the 1 side of each collision; removing it, the next read gets
    another. Break: the collided bit not set (kept as received, 0) -> red; CollPos taken
    without the RxAlign bits (pos = CollPos - r) -> red; a collision read as a plain answer
    -> red."""
    chip, d = driver()
    for u in uids:
        chip.place(bytes.fromhex(u))
    left = set(uids)
    while left:
        before = chip.collisions
        got = read(d)
        assert got == one_side(left), (got, left)
        if len(left) > 1:
            assert chip.collisions > before  # it was resolved, not avoided
        assert read(d) == got  # the same card again (deterministic: the 1 side)
        chip.remove(got)
        left.discard(got)


def test_random_collisions_never_a_wrong_uid():
    rng = random.Random(5)
    chip, d = driver()
    for _ in range(150):
        chip.clear()
        uids = {_uid(rng, rng.choice((4, 7, 10))).hex().upper()
                for _ in range(rng.choice((2, 3)))}
        for u in uids:
            chip.place(bytes.fromhex(u))
        assert read(d) in uids


def test_noise_never_gives_a_wrong_uid():
    """Reply bit errors, half of them past the parity check: a read is right or no read.
    Break: BCC check and SAK CRC_A check both dropped -> red."""
    rng = random.Random(9)
    chip, d = driver()
    chip.noise = 0.1
    ok = 0
    for i in range(400):
        chip.clear()
        uids = {_uid(rng, rng.choice((4, 7, 10))).hex().upper()
                for _ in range(1 + i % 2)}
        for u in uids:
            chip.place(bytes.fromhex(u))
        got = read(d)
        assert got in uids or got in (0, -1), (got, uids)
        ok += got in uids
    assert ok > 100  # and most reads still work


def test_bcc_checked_before_select():
    """An anticollision answer with a bit error the parity missed: its BCC does not fit, no
    SELECT is sent, no UID. Break: no BCC check -> red (a SELECT goes out)."""
    chip, d = driver()
    chip.place(bytes.fromhex(UID4))
    chip.flip(1, 3)  # reply 0 is the ATQA, 1 the anticollision answer
    selects = chip.selects
    assert d.read_uid() == -1
    assert chip.selects == selects
    assert read(d) == UID4  # the next read is clean


def test_sak_crc_checked():
    """A 7-byte card whose first SAK loses its cascade bit (a bit error past the parity):
    without the CRC_A check the reader would report CT + 3 bytes as a 4-byte UID.
    Break: SAK CRC_A check dropped -> red (88 04 A1 B2 reported)."""
    chip, d = driver()
    chip.place(bytes.fromhex(UID7))
    chip.flip(2, 2)  # ATQA, CL1 answer, SAK 0x04 -> 0x00
    assert d.read_uid() == -1
    assert read(d) == UID7


def test_parity_error_spoils_the_frame():
    chip, d = driver()
    chip.place(bytes.fromhex(UID10))
    chip.flip(3, 7, caught=True)
    assert d.read_uid() == -1
    assert read(d) == UID10


@pytest.mark.parametrize("uid", [UID4, UID7, UID10])
def test_card_leaving_mid_read(uid):
    """A card swiped past: it hears k frames and is gone. Every cut gives no UID (the chip's
    timer ends the wait for the missing reply, well inside the deadlines), never a wrong
    one or an exception; a card there for the whole read is read.
    Break: RxIRq-only wait (no TimerIRq) -> red (OSError after the software deadline)."""
    chip, d = driver()
    frames_needed = {4: 3, 7: 5, 10: 7}[len(uid) // 2]  # WUPA, then 2 per level
    for k in range(frames_needed):
        chip.clear()
        chip.place(bytes.fromhex(uid), frames=k)
        t0 = time.perf_counter()
        got = d.read_uid()
        assert got == (0 if k == 0 else -1), k
        assert time.perf_counter() - t0 < 0.5
        assert not chip.cards
    chip.place(bytes.fromhex(uid), frames=frames_needed)
    assert read(d) == uid  # gone before the HLTA: the UID was whole already


def test_a_chip_that_stops_mid_frame_hits_the_deadline():
    """A chip whose IRQ bits never come (its oscillator stopped): the wait gives up after its
    deadline with OSError, not forever."""

    class Stuck(simrfid.Mfrc522):
        def _advance(self, t):
            pass

    chip, d = driver(Stuck())
    d.version = chip.version
    t0 = time.perf_counter()
    with pytest.raises(OSError):
        d.read_uid()
    assert 0.009 < time.perf_counter() - t0 < 0.5


# -- the control loop's reader ----------------------------------------------------------------


def test_one_presentation_one_tap():
    """A card held for 5 s taps once; lifted for 200 ms (two reads) and put back: no tap;
    lifted for 400 ms: the same card taps again. Break: no debounce (tap on every read)
    -> red; gone after one read without it (ABSENT_POLLS 1) -> red."""
    assert POLL_MS * ABSENT_POLLS == 300
    chip, _, r, _, clock = reader()
    chip.place(bytes.fromhex(UID7))
    assert [u for _, u in run(r, clock, 5000)] == [UID7]
    chip.remove(UID7)
    run(r, clock, 200)
    chip.place(bytes.fromhex(UID7))
    assert run(r, clock, 2000) == []
    chip.remove(UID7)
    run(r, clock, 400)
    chip.place(bytes.fromhex(UID7))
    assert [u for _, u in run(r, clock, 1000)] == [UID7]


def test_another_card_taps_at_once():
    chip, _, r, _, clock = reader()
    chip.place(bytes.fromhex(UID4))
    assert [u for _, u in run(r, clock, 500)] == [UID4]
    chip.clear()
    chip.place(bytes.fromhex(UID10))
    taps = run(r, clock, 500)
    assert [u for _, u in taps] == [UID10] and taps[0][0] <= POLL_MS + 5


def test_a_card_lying_there_stays_present_through_a_field_glitch():
    """The card read is halted; the next reads wake it with WUPA, so it stays present. A
    glitch that powers it down (moved in the field) then taps nothing new.
    Break: REQA instead of WUPA -> red (the halted card looks gone, then taps again)."""
    chip, _, r, _, clock = reader()
    card = chip.place(bytes.fromhex(UID4))
    assert [u for _, u in run(r, clock, 1000)] == [UID4]
    card.power_off()
    assert run(r, clock, 3000) == []


def test_two_cards_lying_there_tap_once():
    chip, _, r, _, clock = reader()
    for u in COLLISION_SETS[0]:
        chip.place(bytes.fromhex(u))
    taps = run(r, clock, 3000)
    assert len(taps) == 1 and taps[0][1] in COLLISION_SETS[0]


def test_poll_reads_the_chip_at_most_every_poll_ms():
    chip, _, r, _, clock = reader()
    reads = []
    real = r._drv.read_uid
    r._drv.read_uid = lambda: reads.append(clock.ms) or real()
    chip.place(bytes.fromhex(UID4))
    run(r, clock, 2000, step=1)
    gaps = {(b - a) & ((1 << 30) - 1) for a, b in zip(reads, reads[1:])}
    assert gaps == {POLL_MS} and 18 <= len(reads) <= 21


@pytest.mark.parametrize("miso", [0x00, 0xFF])
def test_reader_down_fails_once_retries_with_backoff_and_is_restored(miso):
    """The chip stops answering: ReaderFailure once, `failed`; set up again after 2, 4, 8,
    16, 32, 60, 60 s; back: ReaderRestored, and cards tap again.
    Break: no backoff (retry every poll) -> red; an event per failed retry -> red."""
    chip, spi, r, ev, clock = reader()
    assert codes(ev) == [] and not r.failed
    chip.place(bytes.fromhex(UID4))
    assert [u for _, u in run(r, clock, 300)] == [UID4]
    chip.set_down(True, miso)
    attempts = []
    t = 0
    for _ in range(250000 // 10):
        n = chip.spi_transactions
        r.poll(clock.step(10))
        t += 10
        if chip.spi_transactions != n:
            attempts.append(t)
    assert r.failed
    ev_codes = codes(ev)
    assert [c[1] for c in ev_codes] == ["ReaderFailure"]
    assert "0x%02x" % miso in ev_codes[0][2]
    # the read that found it gone, then setups after 2, 4, 8, 16, 32, 60, 60 s
    gaps = [(b - a) for a, b in zip(attempts, attempts[1:])]
    assert gaps[:7] == [2000, 4000, 8000, 16000, 32000, 60000, 60000], attempts
    chip.set_down(False)
    chip.clear()
    run(r, clock, 61000, step=50)
    assert not r.failed
    assert [c[1] for c in codes(ev)] == ["ReaderRestored"]
    chip.place(bytes.fromhex(UID10))
    assert [u for _, u in run(r, clock, 300)] == [UID10]


def test_a_chip_that_reset_itself_is_set_up_again():
    """A brown-out resets the chip (antenna off, timer lost): the next read notices the lost
    setup in TModeReg at once (not by waiting out a deadline) and it is set up again.
    Break: no TModeReg check -> red (found only by the 10 ms timeout)."""
    chip, _, r, ev, clock = reader()
    chip.power_on()
    run(r, clock, 200)
    assert r.failed and r.detail == "MFRC522 lost (0x92 0x00)"
    assert [c[1] for c in codes(ev)] == ["ReaderFailure"]
    chip.place(bytes.fromhex(UID4))
    taps = run(r, clock, 2500)
    assert not r.failed and [u for _, u in taps] == [UID4]
    assert [c[1] for c in codes(ev)] == ["ReaderRestored"]


@pytest.mark.parametrize("version", [0x00, 0xFF, 0x12, 0x90, 0x37])
def test_garbage_version_is_no_reader(version):
    chip, spi, cs = rig(simrfid.Mfrc522(version=version))
    with pytest.raises(OSError):
        MFRC522(spi, cs).init()
    chip, _, r, ev, clock = reader(simrfid.Mfrc522(version=version))
    assert r.failed
    got = codes(ev)
    assert [c[1] for c in got] == ["ReaderFailure"] and "version" in got[0][2]
    chip.place(bytes.fromhex(UID4))
    assert run(r, clock, 5000) == []


@pytest.mark.parametrize("version", [0x91, 0x92, 0x88, 0xB2, 0x89])
def test_genuine_and_clone_versions_accepted(version):
    chip, d = driver(simrfid.Mfrc522(version=version))
    chip.place(bytes.fromhex(UID4))
    assert read(d) == UID4


def test_spi_errors_are_a_reader_failure():
    chip, spi, r, ev, clock = reader()
    spi.error = OSError(5)
    run(r, clock, 300)
    assert r.failed and [c[1] for c in codes(ev)] == ["ReaderFailure"]
    spi.error = None
    run(r, clock, 2100)
    assert not r.failed and [c[1] for c in codes(ev)] == ["ReaderRestored"]


def test_the_driver_needs_the_setup_to_see_cards():
    """Without 100 % ASK and the antenna on, the emulated cards never answer: the setup is
    what makes reads work. Break: TxASKReg not written -> red."""
    chip, d = driver()
    chip.place(bytes.fromhex(UID4))
    chip.write(simrfid.TX_ASK, 0x00)
    assert d.read_uid() == 0
    chip.write(simrfid.TX_ASK, 0x40)
    assert read(d) == UID4


# -- the simulator: control ops and the board's SPI lines -------------------------------------


@pytest.fixture
def world():
    from simworld import World

    w = World()
    yield w
    w.stop()


@pytest.mark.parametrize("req,error", [
    ({"op": "tap"}, "give uid or uids"),
    ({"op": "tap", "uid": UID4, "uids": [UID7]}, "give uid or uids"),
    ({"op": "tap", "uids": UID4}, "uids must be a list"),
    ({"op": "tap", "uids": []}, "uids must be a list"),
    ({"op": "tap", "uids": [UID4] * 9}, "uids must be a list"),
    ({"op": "tap", "uids": [UID4, UID4.lower()]}, "uids must be different"),
    ({"op": "tap", "uids": [UID4, "XYZ"]}, "uid must be 8, 14 or 20"),
    ({"op": "tap", "uid": "88A1B2C3"}, "cascade tag"),
    ({"op": "tap", "uid": "04A1B288E5F6A7"}, "cascade tag"),
    ({"op": "tap", "uid": UID4, "frames": -1}, "frames must be"),
    ({"op": "tap", "uid": UID4, "frames": True}, "frames must be"),
    ({"op": "fault", "kind": "reader_down", "miso": 7}, "miso must be 0 or 255"),
    ({"op": "hw", "rfid_noise": 0.9}, "rfid_noise out of range"),
])
def test_sim_ops_refuse_bad_arguments(world, req, error):
    with pytest.raises(ValueError) as e:
        world.op(req)
    assert error in str(e.value)
    assert not world.rfid.cards and not world.rfid.down


def test_sim_tap_uids_reader_down_and_events(world):
    """`tap` with several cards logs a tap each; the cards leave at hold_s (card_left,
    stamped by the world's thread); `reader_down` is station-wide, MISO as asked; the
    board's lines R / r are one SPI transaction across two exchanges."""
    world.op({"op": "tap", "uids": [UID4, UID7], "hold_s": 0.2})
    assert sorted(world.rfid.cards) == [UID4, UID7]
    time.sleep(0.4)
    assert not world.rfid.cards
    ev = world.op({"op": "events"})["events"]
    taps = [e for e in ev if e["what"] == "tap"]
    left = [e for e in ev if e["what"] == "card_left"]
    assert [e["value"] for e in taps] == [UID4, UID7]
    assert sorted(e["value"] for e in left) == [UID4, UID7]
    assert all(e["connector"] == 0 for e in taps + left)
    assert 150000 <= left[0]["t_us"] - taps[0]["t_us"] <= 300000
    assert world.firmware_line("R ee\n") == "00\n"  # the address byte
    assert world.firmware_line("r 00\n") == "92\n"  # VersionReg, same transaction
    world.op({"op": "fault", "kind": "reader_down", "miso": 255})
    assert world.firmware_line("R ee00\n") == "ffff\n"
    world.op({"op": "fault", "kind": "reader_down", "on": False})
    assert world.firmware_line("R ee00\n") == "0092\n"
    f = [e for e in world.op({"op": "events"})["events"] if e["what"] == "fault"]
    assert [(e["value"], e["connector"]) for e in f] == [
        ({"kind": "reader_down", "on": True}, 0), ({"kind": "reader_down", "on": False}, 0)]
    assert world.op({"op": "hw", "rfid_noise": 0.1})["rfid_noise"] == 0.1
    assert world.rfid.noise == 0.1
    s = world.op({"op": "stats"})
    assert s["rfid_spi_transactions"] == 3 and s["rfid_spi_bytes"] == 6


# -- on the MicroPython unix port, through a real runner ---------------------------------------

UNIX_PORT_SCRIPT = r"""
import sys
sys.path[:0] = [sys.argv[1], sys.argv[2]]
import time
import board
from evse.compat import ticks_ms
from evse.rfid import Reader


class Events:
    def add(self, level, code, connector, detail):
        print("EV", code, detail)


w = board._World(int(sys.argv[3]))
cs = board.SimPin()
r = Reader((board.SimSpi(w, cs), cs), Events(), ticks_ms())
print("READY")
end = time.ticks_add(time.ticks_ms(), int(sys.argv[4]))
while time.ticks_diff(end, time.ticks_ms()) > 0:
    uid = r.poll(ticks_ms())
    if uid:
        print("TAP", uid)
    time.sleep_ms(5)
print("DONE")
"""


def test_on_the_unix_port_through_the_runner(tmp_path):
    """The driver and reader on the MicroPython unix port, the sim board's SimSpi/SimPin
    speaking the runner's line protocol to its world (tools/sim.py), ticks wrapping 2 s in:
    a 7-byte card held 1.5 s taps once; two cards at once tap one; reader_down gives
    ReaderFailure, clearing it ReaderRestored; a 10-byte card taps after that."""
    import sim

    runner = sim.Runner(sim.parse(["--state-dir", str(tmp_path / "state")]))
    runner.serve_firmware()
    world = runner.world
    script = tmp_path / "reader.py"
    script.write_text(UNIX_PORT_SCRIPT)
    p = subprocess.Popen([MICROPYTHON, str(script), os.path.join(ROOT, "boards", "sim"),
                          FIRMWARE, str(runner.fw_port), "30000"],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         cwd=str(tmp_path))
    lines = queue.Queue()
    threading.Thread(target=lambda: [lines.put(ln.strip()) for ln in p.stdout],
                     daemon=True).start()
    seen = []

    def expect(prefix, timeout=5.0):
        end = time.monotonic() + timeout
        while True:
            try:
                ln = lines.get(timeout=max(0.0, end - time.monotonic()))
            except queue.Empty:
                raise AssertionError("no %r; got %r" % (prefix, seen)) from None
            seen.append(ln)
            if ln.startswith(prefix):
                return ln
            if ln.startswith(("TAP", "EV", "Traceback")):
                raise AssertionError("%r before %r: %r" % (ln, prefix, seen))

    def quiet(s):
        end = time.monotonic() + s
        while time.monotonic() < end:
            try:
                ln = lines.get(timeout=max(0.0, end - time.monotonic()))
            except queue.Empty:
                return
            seen.append(ln)
            raise AssertionError("unexpected %r" % ln)

    try:
        expect("READY")
        world.op({"op": "tap", "uid": UID7, "hold_s": 1.5})
        assert expect("TAP") == "TAP " + UID7
        quiet(1.8)  # held: no second tap; then gone
        assert not world.rfid.cards
        world.op({"op": "tap", "uids": ["86A083EE", "169A0A3B"], "hold_s": 1.0})
        assert expect("TAP") in ("TAP 86A083EE", "TAP 169A0A3B")
        quiet(1.3)
        assert world.op({"op": "stats"})["rfid_collisions"] > 0
        world.op({"op": "fault", "kind": "reader_down"})
        expect("EV ReaderFailure")  # the chip lost mid-read (timeout) or at the check
        world.op({"op": "fault", "kind": "reader_down", "on": False})
        expect("EV ReaderRestored", timeout=4.0)
        world.op({"op": "tap", "uid": UID10, "hold_s": 0.5})
        assert expect("TAP") == "TAP " + UID10
        ev = world.op({"op": "events"})["events"]
        reads = [e for e in ev if e["what"] == "card_read"]
        assert [e["value"] for e in reads][0] == UID7 and reads[-1]["value"] == UID10
        t_tap = [e["t_us"] for e in ev if e["what"] == "tap"][0]
        assert 0 <= reads[0]["t_us"] - t_tap < 1000000  # read within a second of the tap
    finally:
        p.kill()
        p.wait()
