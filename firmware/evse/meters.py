"""Energy meter profiles as data, register decoding, and a meter that polls over a Bus.

Register numbers are 0-based PDU addresses (docs/standards.md §5). Energy becomes integer
Wh exactly: float32 registers are decoded bit by bit into a rational and rounded once, so a single-
precision MicroPython float never touches the energy value (resolution = the register's own:
float32 kWh is exact to 1 Wh below 8 388 kWh, 2 Wh below 16 777 kWh, and so on)."""

import struct

from evse import modbus
from evse.compat import age_cap, const, ticks_diff

# Quantities: v1 v2 v3 (V), i1 i2 i3 (A), p (W), e (import energy, Wh), f (Hz).
# A register entry: (quantity, address, type, scale). For "e" the scale is (num, den): Wh =
# raw * num / den. For the others it multiplies the raw value into the SI unit.
# Profile: (function code, word order, default baud, max registers per read, entries).

_SDM_3P = (
    ("v1", 0x00, "f32", 1.0), ("v2", 0x02, "f32", 1.0), ("v3", 0x04, "f32", 1.0),
    ("i1", 0x06, "f32", 1.0), ("i2", 0x08, "f32", 1.0), ("i3", 0x0A, "f32", 1.0),
    ("p", 0x34, "f32", 1.0), ("f", 0x46, "f32", 1.0), ("e", 0x48, "f32", (1000, 1)),
)

PROFILES = {
    # Eastron SDM630 v2: FC04 float32 big-endian [SE-MT][MBMD]; 9600 8N1 per the Eastron
    # SDM630MCT manual (ob121's "even parity" conflicts; config meter.parity overrides).
    # SDM630 reads at most 80 registers at once [SE-MT][OB121].
    "sdm630": (4, "abcd", 9600, 80, _SDM_3P),
    # Eastron SDM72D-M V2: same map as the SDM630 [MBMD sdm72v2]. (V1 has no V/I registers.)
    "sdm72d-m-v2": (4, "abcd", 9600, 80, _SDM_3P),
    # Eastron SDM120, single phase: 2400 baud by default [ESPH][SN][SDM120C] (evcc's 9600
    # is its generic default).
    "sdm120": (4, "abcd", 2400, 80, (
        ("v1", 0x00, "f32", 1.0), ("i1", 0x06, "f32", 1.0), ("p", 0x0C, "f32", 1.0),
        ("f", 0x46, "f32", 1.0), ("e", 0x48, "f32", (1000, 1)),
    )),
    # ABB B23/B24: FC03, U32/S32 big-endian, energy U64 in 0.01 kWh [MBMD][SE-MT][STARK].
    # Default baud is not published for this meter: 9600, override with meter.baud.
    "abb-b23": (3, "abcd", 9600, 125, (
        ("v1", 0x5B00, "u32", 0.1), ("v2", 0x5B02, "u32", 0.1), ("v3", 0x5B04, "u32", 0.1),
        ("i1", 0x5B0C, "u32", 0.01), ("i2", 0x5B0E, "u32", 0.01), ("i3", 0x5B10, "u32", 0.01),
        ("p", 0x5B14, "s32", 0.01), ("f", 0x5B2C, "u16", 0.01), ("e", 0x5000, "u64", (10, 1)),
    )),
    # Carlo Gavazzi EM340: FC04, INT32 low word first (CDAB) [SE-MT][MBMD][EM340D].
    "em340": (4, "cdab", 9600, 125, (
        ("v1", 0x00, "s32", 0.1), ("v2", 0x02, "s32", 0.1), ("v3", 0x04, "s32", 0.1),
        ("i1", 0x0C, "s32", 0.001), ("i2", 0x0E, "s32", 0.001), ("i3", 0x10, "s32", 0.001),
        ("p", 0x28, "s32", 0.1), ("f", 0x33, "s16", 0.1), ("e", 0x34, "s32", (100, 1)),
    )),
    # ORNO OR-WE-516/517: FC03 float32 big-endian, power in kW, 9600 8E1 [MBMD][EVCC].
    "orno-we-516": (3, "abcd", 9600, 125, (
        ("v1", 0x0E, "f32", 1.0), ("v2", 0x10, "f32", 1.0), ("v3", 0x12, "f32", 1.0),
        ("i1", 0x16, "f32", 1.0), ("i2", 0x18, "f32", 1.0), ("i3", 0x1A, "f32", 1.0),
        ("p", 0x1C, "f32", 1000.0), ("f", 0x14, "f32", 1.0), ("e", 0x108, "f32", (1000, 1)),
    )),
}
PARITY = {"orno-we-516": "even"}  # everyone else defaults to none

_WORDS = {"u16": 1, "s16": 1, "u32": 2, "s32": 2, "f32": 2, "u64": 4}

# Merge two register runs into one read when the gap costs fewer bytes on the wire than a
# second transaction (8-byte request + 5-byte response frame + two t3.5 gaps ~ 20 bytes).
_MERGE_GAP = const(8)
POLL_MS = const(1000)


def words_to_int(buf, off, nwords, order):
    """Unsigned integer from nwords registers at buf[off], in the profile's word order."""
    v = 0
    for k in range(nwords):
        w = nwords - 1 - k if order == "cdab" else k
        p = off + 2 * w
        v = (v << 16) | (buf[p] << 8) | buf[p + 1]
    return v


def decode(buf, off, typ, order):
    """A register value as int (integer types) or float (f32)."""
    n = _WORDS[typ]
    v = words_to_int(buf, off, n, order)
    if typ == "f32":
        return struct.unpack(">f", struct.pack(">I", v))[0]
    if typ[0] == "s":
        bits = 16 * n
        if v >= 1 << (bits - 1):
            v -= 1 << bits
    return v


def f32_bits_to_wh(bits, num, den):
    """round(float32(bits) * num / den) in integer arithmetic: exact, no float rounding."""
    sign = -1 if bits >> 31 else 1
    exp = (bits >> 23) & 0xFF
    mant = bits & 0x7FFFFF
    if exp == 0xFF:
        raise ValueError("energy register is NaN/inf")
    if exp:
        mant |= 0x800000
        shift = exp - 150
    else:
        shift = -149
    n = mant * num
    if shift >= 0:
        q, r = divmod(n << shift, den)
        d = den
    else:
        d = den << -shift
        q, r = divmod(n, d)
    if 2 * r >= d:
        q += 1
    return sign * q


def energy_wh(buf, off, typ, order, scale):
    num, den = scale
    if typ == "f32":
        return f32_bits_to_wh(words_to_int(buf, off, 2, order), num, den)
    raw = decode(buf, off, typ, order)
    q, r = divmod(raw * num, den)
    return q + (1 if 2 * r >= den else 0)


def plan(entries, max_regs):
    """Group register entries into read blocks: [(start, count, ((entry, offset), ...))]."""
    es = sorted(entries, key=lambda e: e[1])
    blocks = []
    for e in es:
        end = e[1] + _WORDS[e[2]]
        if blocks:
            start, count, members = blocks[-1]
            gap = e[1] - (start + count)
            if gap <= _MERGE_GAP and end - start <= max_regs:
                members.append(e)
                blocks[-1] = (start, max(count, end - start), members)
                continue
        blocks.append((e[1], end - e[1], [e]))
    return [(s, c, tuple(m)) for s, c, m in blocks]


def custom_profile(spec):
    """A profile from config meter.custom: {"fc":4,"order":"abcd","max":125,
    "regs":{"v1":[0,"f32",1.0], ..., "e":[72,"f32",[1000,1]]}}. Raises ValueError."""
    if not isinstance(spec, dict) or spec.get("fc") not in (3, 4):
        raise ValueError("meter.custom needs fc 3 or 4")
    order = spec.get("order", "abcd")
    if order not in ("abcd", "cdab"):
        raise ValueError("meter.custom order must be abcd or cdab")
    regs = spec.get("regs")
    if not isinstance(regs, dict) or "e" not in regs:
        raise ValueError("meter.custom needs regs with at least e")
    entries = []
    for q, r in regs.items():
        if q not in ("v1", "v2", "v3", "i1", "i2", "i3", "p", "f", "e"):
            raise ValueError("meter.custom: unknown quantity %s" % q)
        if not isinstance(r, list) or len(r) != 3 or r[1] not in _WORDS:
            raise ValueError("meter.custom: %s must be [address, type, scale]" % q)
        if not isinstance(r[0], int) or not 0 <= r[0] <= 0xFFFF:
            raise ValueError("meter.custom: %s address" % q)
        scale = r[2]
        if q == "e":
            if (not isinstance(scale, list) or len(scale) != 2
                    or not all(isinstance(x, int) and x > 0 for x in scale)):
                raise ValueError("meter.custom: e scale must be [num, den] integers")
            scale = (scale[0], scale[1])
        elif isinstance(scale, bool) or not isinstance(scale, (int, float)):
            raise ValueError("meter.custom: %s scale must be a number" % q)
        entries.append((q, r[0], r[1], scale))
    mx = spec.get("max", 125)
    if isinstance(mx, bool) or not isinstance(mx, int) or not 1 <= mx <= 125:
        raise ValueError("meter.custom max must be 1..125")
    baud = spec.get("baud", 9600)
    if isinstance(baud, bool) or not isinstance(baud, int) or not 1200 <= baud <= 115200:
        raise ValueError("meter.custom baud must be 1200..115200")
    return (spec["fc"], order, baud, mx, tuple(entries))


class Meter:
    """One meter on a bus. poll(now_ms) starts a read cycle every POLL_MS; `reading` holds
    the last complete one: (v[3], i[3], p_w, e_wh, f_hz); ok_ms when it was taken."""

    def __init__(self, bus, slave, profile, name, backoff_max_ms=0):
        self.bus = bus
        # A meter that stops answering costs the shared line a timeout per block each
        # cycle; with backoff_max_ms its cycles then space out (doubling up to this), so a
        # dead meter cannot starve the others on the line.
        self._backoff_max = backoff_max_ms
        self._fails = 0
        self._bad = False
        self.slave = slave
        self.name = name
        fc, self.order, _baud, max_regs, entries = profile
        self.blocks = plan(entries, max_regs)
        self._reqs = [modbus.read_request(slave, fc, s, c) for s, c, _ in self.blocks]
        self._cbs = [self._on_block(k) for k in range(len(self.blocks))]
        self._vals = [0.0] * 9
        self._e_wh = None
        self._pending = 0
        self._good = 0
        self._t_cycle = None
        self.reading = None
        self.ok_ms = None
        self.errors = 0

    def _on_block(self, k):
        _start, _count, members = self.blocks[k]
        start = self.blocks[k][0]

        def cb(kind, detail, buf, n):
            self._pending -= 1
            if kind != modbus.OK:
                self.errors += 1
                self._bad = True
                # This cycle cannot give a reading now: its other blocks leave the line.
                self._pending -= self.bus.cancel(self._cbs)
            else:
                for q, addr, typ, scale in members:
                    off = 3 + 2 * (addr - start)
                    if q == "e":
                        self._e_wh = energy_wh(buf, off, typ, self.order, scale)
                    else:
                        self._vals[_IDX[q]] = decode(buf, off, typ, self.order) * scale
                self._good += 1
            if self._pending:
                return
            if self._bad:
                self._fails += 1
            elif self._good < len(self.blocks):
                self._fails = 0  # a probe was answered: whole cycles again
            else:
                v = self._vals
                self.reading = (
                    [round(v[0], 1), round(v[1], 1), round(v[2], 1)],
                    [round(v[3], 2), round(v[4], 2), round(v[5], 2)],
                    int(round(v[6])),
                    self._e_wh,
                    round(v[8], 2),
                )
                self.ok_ms = self._t_cycle
                self._fails = 0

        return cb

    def poll(self, now_ms):
        if self._pending:
            return
        every = POLL_MS
        if self._fails and self._backoff_max:
            every = POLL_MS << min(self._fails, 6)
            if every > self._backoff_max:
                every = self._backoff_max
        self._t_cycle = age_cap(now_ms, self._t_cycle, every)  # ticks wrap: see compat
        if self._t_cycle is not None and ticks_diff(now_ms, self._t_cycle) < every:
            return
        # All blocks of a cycle or none: with several meters on one line a cycle that got
        # only some of its slots could never complete (a starved meter never reads).
        if self.bus.room() < len(self._reqs):
            return
        self._t_cycle = now_ms
        self._good = 0
        self._bad = False
        # A meter with backoff that failed is probed with its first block alone.
        n = 1 if (self._fails and self._backoff_max) else len(self._reqs)
        for k in range(n):
            if self.bus.submit(self._reqs[k], self._cbs[k]):
                self._pending += 1

    def read(self):
        """The last reading, or raises when there is none yet."""
        if self.reading is None:
            raise OSError("no meter reading yet")
        return self.reading


_IDX = {"v1": 0, "v2": 1, "v3": 2, "i1": 3, "i2": 4, "i3": 5, "p": 6, "f": 8}
