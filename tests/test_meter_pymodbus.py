"""The meter path end to end against a third-party Modbus implementation.

A pymodbus server speaks Modbus RTU on a TCP socket (a serial-to-Ethernet gateway) and holds
the registers of one meter at slave 1. For every profile the registers are filled by an
encoder written here from docs/standards.md §5 (not from evse.meters), a fresh simulated
station reads them over `--meter tcp:HOST:PORT`, and its first <base>/meter message must carry
exactly the values put in, after the link's rounding. The request frames are also compared
byte for byte with the ones pymodbus's own RTU framer builds (docs/standards.md §6)."""

import asyncio
import json
import math
import struct
import threading
from fractions import Fraction

import pytest
from pymodbus import FramerType
from pymodbus.framer import FramerRTU
from pymodbus.pdu import DecodePDU
from pymodbus.pdu.register_message import ReadHoldingRegistersRequest, ReadInputRegistersRequest
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from backend import Backend
from evse import meters, modbus

SLAVE = 1
N_REGS = 0x6000  # covers ABB's 0x5B2C, the highest address in the published maps

# -- the register maps, transcribed from docs/standards.md §5 (not from evse.meters) ------
# name: (function code, word order, {quantity: (address, type, scale)}). `scale` is a decimal
# string: SI unit (V, A, W, Hz) per raw unit, and for "e" Wh per raw unit.
_SDM_3P = {
    "v1": (0x00, "f32", "1"), "v2": (0x02, "f32", "1"), "v3": (0x04, "f32", "1"),
    "i1": (0x06, "f32", "1"), "i2": (0x08, "f32", "1"), "i3": (0x0A, "f32", "1"),
    "p": (0x34, "f32", "1"), "f": (0x46, "f32", "1"), "e": (0x48, "f32", "1000"),  # kWh
}
PUBLISHED_MAPS = {
    "sdm630": (4, "abcd", _SDM_3P),
    "sdm72d-m-v2": (4, "abcd", _SDM_3P),
    "sdm120": (4, "abcd", {
        "v1": (0x00, "f32", "1"), "i1": (0x06, "f32", "1"), "p": (0x0C, "f32", "1"),
        "f": (0x46, "f32", "1"), "e": (0x48, "f32", "1000"),
    }),
    "abb-b23": (3, "abcd", {
        "v1": (0x5B00, "u32", "0.1"), "v2": (0x5B02, "u32", "0.1"), "v3": (0x5B04, "u32", "0.1"),
        "i1": (0x5B0C, "u32", "0.01"), "i2": (0x5B0E, "u32", "0.01"),
        "i3": (0x5B10, "u32", "0.01"), "p": (0x5B14, "s32", "0.01"),
        "f": (0x5B2C, "u16", "0.01"), "e": (0x5000, "u64", "10"),  # 0.01 kWh
    }),
    "em340": (4, "cdab", {
        "v1": (0x00, "s32", "0.1"), "v2": (0x02, "s32", "0.1"), "v3": (0x04, "s32", "0.1"),
        "i1": (0x0C, "s32", "0.001"), "i2": (0x0E, "s32", "0.001"),
        "i3": (0x10, "s32", "0.001"), "p": (0x28, "s32", "0.1"),
        "f": (0x33, "s16", "0.1"), "e": (0x34, "s32", "100"),  # 0.1 kWh
    }),
    "orno-we-516": (3, "abcd", {
        "v1": (0x0E, "f32", "1"), "v2": (0x10, "f32", "1"), "v3": (0x12, "f32", "1"),
        "i1": (0x16, "f32", "1"), "i2": (0x18, "f32", "1"), "i3": (0x1A, "f32", "1"),
        "p": (0x1C, "f32", "1000"),  # kW
        "f": (0x14, "f32", "1"), "e": (0x108, "f32", "1000"),
    }),
}

# A custom map exercising what the built-in ones do not: FC03 float32 *low word first*,
# 16-bit currents, a negative signed power, a small max block size (several reads), Wh in f32.
CUSTOM = {
    "fc": 3, "order": "cdab", "max": 16,
    "regs": {
        "v1": [100, "f32", 1], "v2": [102, "f32", 1], "v3": [104, "f32", 1],
        "i1": [120, "u16", 0.01], "i2": [121, "u16", 0.01], "i3": [122, "u16", 0.01],
        "p": [130, "s32", 0.1], "f": [140, "s16", 0.01], "e": [200, "f32", [1, 1]],
    },
}
PUBLISHED_MAPS["custom"] = (CUSTOM["fc"], CUSTOM["order"], {
    q: (a, t, "1" if q == "e" else repr(s)) for q, (a, t, s) in CUSTOM["regs"].items()})
# The runner hands --config items to the MicroPython unix port on its command line, and that
# port dies at startup ("FATAL: uncaught NLR") on any argument longer than 255 bytes (argv
# entries become qstrs). So the custom map goes compact, and must stay short.
CUSTOM_ARG = "meter.custom=" + json.dumps(CUSTOM, separators=(",", ":"))
assert len(CUSTOM_ARG.encode()) <= 255, len(CUSTOM_ARG)

# The physical values each meter shows (V, A, W, Hz, Wh), as decimal strings. Energy is chosen
# per meter to exercise exactness (in the register's unit):
#  - 1234.567 kWh: not a float32; the nearest float32 is ~0.017 Wh off, still 1234567 Wh;
#  - 1234.5625 kWh: exactly a float32 and exactly 1234562.5 Wh: rounds half up;
#  - 98765.43 kWh: float32 resolution there is 7.8 Wh, so the Wh come from the float32 value;
#  - ABB 42949796.41 kWh: a raw 0.01 kWh count above 2**32 (all four words matter);
#  - EM340 1234567.8 kWh: a raw 0.1 kWh count of 12345678;
#  - ORNO 4321.0987 kWh; custom 123456.5 Wh (a float32-exact tie).
BASE_VALUES = {"v": ("229.9", "230.4", "231.2"), "i": ("15.91", "16.02", "15.87"),
               "p": "11020", "f": "50.02"}
PER_METER = {
    "sdm630": {"e": "1234567"},
    "sdm72d-m-v2": {"e": "1234562.5"},
    "sdm120": {"e": "98765430"},
    "abb-b23": {"e": "42949796410"},
    "em340": {"e": "1234567800", "f": "49.9"},  # frequency has 0.1 Hz resolution
    "orno-we-516": {"e": "4321098.7"},
    "custom": {"e": "123456.5", "p": "-11020"},
}

_WORDS = {"u16": 1, "s16": 1, "u32": 2, "s32": 2, "f32": 2, "u64": 4}
_STRUCT = {"u16": ">H", "s16": ">h", "u32": ">I", "s32": ">i", "f32": ">f", "u64": ">Q"}


def physical(name):
    """{quantity: decimal string} of the values the meter `name` shows."""
    vals = {"v1": BASE_VALUES["v"][0], "v2": BASE_VALUES["v"][1], "v3": BASE_VALUES["v"][2],
            "i1": BASE_VALUES["i"][0], "i2": BASE_VALUES["i"][1], "i3": BASE_VALUES["i"][2],
            "p": BASE_VALUES["p"], "f": BASE_VALUES["f"]}
    vals.update(PER_METER[name])
    return vals


def raw_value(value, typ, scale):
    """What the register holds for physical `value` (decimal strings): a float32 (the one
    nearest value/scale) or an int (value/scale, which must be a whole number)."""
    raw = Fraction(value) / Fraction(scale)
    if typ == "f32":
        return struct.unpack(">f", struct.pack(">f", float(raw)))[0]
    assert raw.denominator == 1, "%s not representable with scale %s" % (value, scale)
    return int(raw)


def encode(raw, typ, order):
    """The registers (16-bit words, in address order) holding `raw`, per type and order."""
    b = struct.pack(_STRUCT[typ], raw)
    words = [int.from_bytes(b[k:k + 2], "big") for k in range(0, len(b), 2)]
    assert len(words) == _WORDS[typ]
    return words[::-1] if order == "cdab" else words  # cdab: least significant word first


def half_up(x, digits=0):
    """x (a Fraction) rounded to `digits` decimals, ties toward +infinity."""
    m = 10 ** digits
    return Fraction(math.floor(x * m + Fraction(1, 2)), m)


def expected(name):
    """(registers {address: word}, expected meter message fields) for meter `name`."""
    _fc, order, regs = PUBLISHED_MAPS[name]
    vals = physical(name)
    words = {}
    exact = {}
    for q, (addr, typ, scale) in regs.items():
        raw = raw_value(vals[q], typ, scale)
        for k, w in enumerate(encode(raw, typ, order)):
            words[addr + k] = w
        # What the register means, exactly: the stored number times its scale.
        exact[q] = Fraction(raw) * Fraction(scale)
    zero = Fraction(0)
    msg = {
        "connector": 1,
        "v": [float(half_up(exact.get(q, zero), 1)) for q in ("v1", "v2", "v3")],
        "i": [float(half_up(exact.get(q, zero), 2)) for q in ("i1", "i2", "i3")],
        "p_w": int(half_up(exact["p"])),
        "e_wh": int(half_up(exact["e"])),
        "f_hz": float(half_up(exact["f"], 2)),
    }
    return words, msg


# -- the pymodbus RTU-over-TCP server -----------------------------------------------------------
class RtuGateway:
    """pymodbus ModbusTcpServer with the RTU framer, on its own asyncio loop in a thread."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = self._run(self._start())
        self.port = self.server.transport.sockets[0].getsockname()[1]

    def _run(self, coro, timeout=10):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _start(self):
        bits = [SimData(0, values=[False] * 16, datatype=DataType.BITS)]
        # Separate blocks: (coils, discrete inputs, holding registers, input registers).
        dev = SimDevice(id=SLAVE, simdata=(
            bits, list(bits),
            [SimData(0, count=N_REGS, values=0, datatype=DataType.REGISTERS)],
            [SimData(0, count=N_REGS, values=0, datatype=DataType.REGISTERS)],
        ))
        server = ModbusTcpServer(dev, framer=FramerType.RTU, address=("127.0.0.1", 0))
        await server.serve_forever(background=True)
        return server

    def load(self, fc, words):
        """Zero both register banks, then write words {address: value} into bank fc (3/4)."""
        ctx = self.server.context
        for bank in (3, 4):
            assert self._run(ctx.async_setValues(SLAVE, bank, 0, [0] * N_REGS)) is None
        for addr, w in sorted(words.items()):
            assert self._run(ctx.async_setValues(SLAVE, fc, addr, [w])) is None

    def read(self, fc, addr, count):
        return self._run(self.server.context.async_getValues(SLAVE, fc, addr, count))

    def stop(self):
        self._run(self.server.shutdown())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(scope="module")
def gateway():
    g = RtuGateway()
    try:
        yield g
    finally:
        g.stop()


def _profile(name):
    return meters.custom_profile(CUSTOM) if name == "custom" else meters.PROFILES[name]


NAMES = list(meters.PROFILES) + ["custom"]


def test_published_maps_cover_every_profile():
    assert set(PUBLISHED_MAPS) == set(NAMES)


def test_encoder_self_check():
    # The test's own encoder against hand-computed words.
    assert encode(230.0, "f32", "abcd") == [0x4366, 0x0000]
    assert encode(230.0, "f32", "cdab") == [0x0000, 0x4366]
    assert encode(-110200, "s32", "cdab") == [0x5188, 0xFFFE]
    assert encode(2**32 + 12345, "u64", "abcd") == [0, 1, 0, 12345]
    assert half_up(Fraction(5, 2)) == 3 and half_up(Fraction(-5, 2)) == -2
    assert expected("sdm72d-m-v2")[1]["e_wh"] == 1234563  # 1234.5625 kWh = 1234562.5 Wh
    assert expected("custom")[1]["e_wh"] == 123457  # float32 123456.5 Wh, half up
    assert expected("abb-b23")[1]["e_wh"] == 42949796410


@pytest.mark.parametrize("name", NAMES)
def test_station_reads_meter(tmp_path, gateway, name):
    fc, _order, _regs = PUBLISHED_MAPS[name]
    words, want = expected(name)
    gateway.load(fc, words)
    assert gateway.read(fc, min(words), 2) == [words[min(words)], words[min(words) + 1]]
    config = ['meter.profile="%s"' % name, "meter_idle_interval_s=10"]
    if name == "custom":
        config.append(CUSTOM_ARG)
    b = Backend(tmp_path, config=config, meter="tcp:127.0.0.1:%d" % gateway.port)
    try:
        got = b.mq.wait_json("/meter", since=0, timeout=15)  # a fresh broker: all is new
    finally:
        b.stop()
    assert isinstance(got.pop("ts"), int)
    assert got == want


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("slave", [1, 17, 247])
def test_read_requests_match_pymodbus_framer(name, slave):
    fc, _order, _baud, max_regs, entries = _profile(name)
    framer = FramerRTU(DecodePDU(False))
    cls = {3: ReadHoldingRegistersRequest, 4: ReadInputRegistersRequest}[fc]
    blocks = meters.plan(entries, max_regs)
    assert blocks
    for start, count, _members in blocks:
        assert 1 <= count <= max_regs
        ours = bytes(modbus.read_request(slave, fc, start, count))
        theirs = framer.buildFrame(cls(dev_id=slave, address=start, count=count))
        assert ours == theirs, (name, start, count, ours.hex(), theirs.hex())


def test_crc_vectors():
    assert modbus.crc16(b"123456789") == 0x4B37
    assert FramerRTU.compute_CRC(b"123456789") == 0x374B  # pymodbus: bytes in wire order
    # Example frames of docs/standards.md §6.
    assert bytes(modbus.read_request(1, 4, 0x00, 2)) == bytes.fromhex("01040000000271CB")
    assert bytes(modbus.read_request(1, 4, 0x48, 2)) == bytes.fromhex("010400480002F1DD")
