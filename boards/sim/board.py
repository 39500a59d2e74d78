"""Simulated board: every HAL call is a line to the runner (tools/sim.py), which owns the
physical world (EV, cable, contactor, RCD, meter, the RFID reader). Outputs are sent the
moment the firmware commands them, so the runner stamps each change when it happens."""

import binascii
import socket
import sys
import time

from evse import pilot as _cp
from evse.hal import BoardBase
from evse.rs485 import Rs485
from evse.thermal import Ntc

# Replies come from a process on the same host; a silent runner means the world is gone.
_REPLY_TIMEOUT_S = 5
_NTC_SETTLE_WAIT_MS = 100  # evse.thermal.NTC_SETTLE_MS: only the first reading waits


class _World:
    """The line protocol to the runner: fire-and-forget outputs, request/reply inputs."""

    def __init__(self, port):
        s = socket.socket()
        s.connect(socket.getaddrinfo("127.0.0.1", port)[0][-1])
        # TCP_NODELAY (IPPROTO_TCP=6, option 1): without it Nagle holds each small request
        # behind the previous one's delayed ACK and a loop takes 40 ms instead of 5.
        s.setsockopt(6, 1, 1)
        s.settimeout(_REPLY_TIMEOUT_S)
        self._s = s

    def send(self, line):
        self._s.write(line)

    def ask(self, line):
        self._s.write(line)
        reply = self._s.readline()
        if not reply:
            raise OSError("sim runner gone")
        return reply


class Pilot:
    """The ESP32 board's pilot as the simulated world plays it: the world takes the tagged
    ADC reads of one synchronous acquisition (noise, spikes, PWM phase, read cost) and this
    board reduces them with the same evse.pilot.levels() as the ESP32 board."""

    def __init__(self, world, cid, hal):
        self._w = world
        self._p = b"P %d " % cid
        self._s = b"S %d\n" % cid
        self._q = b"Q %d\n" % cid
        self._hal = hal
        self._pwm = False
        self._high = self._low = 0  # the generator is off until the first command
        n = _cp.READS_MAX * _cp.PERIODS_MAX * 2
        self._vals = [0] * n
        self._tags = [0] * n
        self.reads = 0  # reads in the last sample, as on the ESP32 board

    def pwm(self, duty_u16):
        self._pwm = 0 < duty_u16 < 65535
        self._w.send(self._p + b"%d\n" % duty_u16)

    def plus12(self):
        self._pwm = False
        self._w.send(self._p + b"H\n")

    def duty_read(self):
        """The PWM pin's measured duty in percent (the world times the pin)."""
        return float(self._w.ask(self._q))

    def minus12(self):
        self._pwm = False
        self._w.send(self._p + b"L\n")

    def sample(self):
        """(high_mv, low_mv). The same reply carries the board's other inputs, latched at
        this instant, as one ADC/GPIO scan would on a real board."""
        f = self._w.ask(self._s).split()
        h = self._hal
        h.fb = f[0] == b"1"
        h.rcd = f[1] == b"1"
        h.pp = int(f[2])
        n = min(int(f[3]), len(self._vals))
        vals = self._vals
        tags = self._tags
        for i in range(n):
            vals[i] = int(f[4 + 2 * i])
            tags[i] = int(f[5 + 2 * i])
        self.reads = n
        self._high, self._low = _cp.levels(vals, tags, n, self._pwm, self._high, self._low)
        return self._high, self._low


class Contactor:
    def __init__(self, world, cid, hal):
        self._w = world
        self._k = b"K %d " % cid
        self._hal = hal

    def set(self, on):
        self._w.send(self._k + (b"1\n" if on else b"0\n"))

    def feedback(self):
        return self._hal.fb


class SimUart:
    """The meter's RS-485 line: bytes go to the runner, where the simulated meter answers
    with real RTU frames after their wire time. Same calls as machine.UART."""

    def __init__(self, world):
        self._w = world
        self._rx = bytearray()
        self._char_us = 1042  # 10 bits at 9600 baud
        self._tx_end_us = None

    def init(self, baudrate=9600, bits=8, parity=None, stop=1):
        self._char_us = 10000000 // baudrate
        self._w.send(b"B %d\n" % baudrate)

    def write(self, buf):
        self._w.send(b"U " + binascii.hexlify(buf) + b"\n")
        self._tx_end_us = time.ticks_add(time.ticks_us(), len(buf) * self._char_us)
        return len(buf)

    def flush(self):
        """Wait until the last stop bit is out, as machine.UART.flush() does."""
        if self._tx_end_us is not None:
            left = time.ticks_diff(self._tx_end_us, time.ticks_us())
            if left > 0:
                time.sleep_us(left)
            self._tx_end_us = None

    def any(self):
        if not self._rx:
            got = self._w.ask(b"u\n").strip()
            if got:
                self._rx += binascii.unhexlify(got)
        return len(self._rx)

    def readinto(self, mv):
        n = min(len(mv), len(self._rx))
        mv[:n] = self._rx[:n]
        self._rx = self._rx[n:]
        return n


class SimPin:
    """The reader's SDA/NSS pin (machine.Pin-like: called with 0 / 1, or value()). The chip
    starts a new SPI transaction, with an address byte, at each falling edge."""

    def __init__(self):
        self._v = 1  # idle high: deselected
        self.fell = False

    def __call__(self, v=None):
        if v is None:
            return self._v
        v = 1 if v else 0
        if self._v and not v:
            self.fell = True
        self._v = v

    def value(self, v=None):
        return self(v)


class SimSpi:
    """The reader's SPI bus (machine.SPI-like). The bytes clocked while NSS is low go to
    the runner's emulated MFRC522 (tools/simrfid.py) as one line, `R <hex>` after a falling
    edge of NSS and `r <hex>` for more bytes of the same transaction, answered with the
    bytes MISO carried. With NSS high the chip's MISO is off and nothing is sent."""

    def __init__(self, world, cs):
        self._w = world
        self._cs = cs

    def write_readinto(self, wbuf, rbuf):
        n = len(wbuf)
        if len(rbuf) != n:
            raise ValueError("buffers must be the same length")  # as machine.SPI
        cs = self._cs
        if cs._v:
            for i in range(n):
                rbuf[i] = 0  # nothing drives MISO
            return
        op = b"R " if cs.fell else b"r "
        cs.fell = False
        got = binascii.unhexlify(self._w.ask(op + binascii.hexlify(wbuf) + b"\n").strip())
        if len(got) != n:
            raise OSError("sim runner: bad SPI reply")
        rbuf[:] = got

    def write(self, buf):
        self.write_readinto(buf, bytearray(len(buf)))

    def readinto(self, buf, write=0):
        self.write_readinto(bytes([write]) * len(buf), buf)

    def read(self, n, write=0):
        buf = bytearray(n)
        self.readinto(buf, write)
        return bytes(buf)


class ConnectorHal:
    def __init__(self, world, cid):
        self.fb = False
        self.rcd = False
        self.pp = -1
        self._w = world
        self._t = b"T %d " % cid
        self.pilot = Pilot(world, cid, self)
        self.contactor = Contactor(world, cid, self)

    def rcd_tripped(self):
        return self.rcd

    def rcd_test(self, on):
        self._w.send(self._t + (b"1\n" if on else b"0\n"))

    def pp_ohms(self):
        return None if self.pp < 0 else self.pp


class _Wdt:
    def __init__(self, world, timeout_ms):
        self._w = world
        world.send(b"W %d\n" % timeout_ms)

    def feed(self):
        self._w.send(b"w\n")


def _args(argv):
    opts = {"config": []}
    i = 1
    while i < len(argv):
        k = argv[i]
        if k.startswith("--") and i + 1 < len(argv):
            v = argv[i + 1]
            if k == "--config":
                opts["config"].append(v)
            else:
                opts[k[2:]] = v
            i += 2
        else:
            i += 1
    return opts


class SerialOut:
    """The console's output as a UART at `baud` sends it: the writer waits for the wire
    (the ESP32 port's console UART blocks until the bytes are out), 10 bits a byte."""

    def __init__(self, stream, baud):
        self._s = stream
        self._us_per_byte = 10000000 // baud

    def write(self, s):
        self._s.write(s)
        time.sleep_us(len(s) * self._us_per_byte)


class SimNet:
    """The simulated network (board.net): always up; names are looked up at the runner's
    name service (the `dns` op makes it slow or dead) and the clock is set from the runner's
    NTP server (the `ntp` op). Like the ESP32's getaddrinfo, resolve() blocks its caller for
    as long as the name service takes, so a lookup on the control loop stalls the loop."""

    def __init__(self, board, dns_port, ntp_port):
        self._board = board
        self._dns = socket.getaddrinfo("127.0.0.1", dns_port)[0][-1]
        self.ntp_port = ntp_port

    def poll(self, now_ms, cfg):
        return True

    def diag(self):
        return {}

    def resolve(self, host):
        s = socket.socket()
        try:
            s.settimeout(120)  # the runner answers every query, however slowly
            s.connect(self._dns)
            s.write(host.encode() + b"\n")
            f = s.readline().split()
        finally:
            s.close()
        if not f or f[0] != b"A":
            raise OSError(int(f[1]) if len(f) > 1 else -202)
        return f[1].decode()

    def set_time(self, unix_s):
        self._board._clock_off = unix_s - time.time()
        self._board._w.send(b"C %d\n" % unix_s)  # the world logs when the clock was set


class Board(BoardBase):
    name = "sim"
    max_current_a = 32.0  # what the simulated contactor and wiring are rated for
    phases = 3

    def __init__(self, argv=None):
        opts = _args(argv if argv is not None else sys.argv)
        self._w = _World(int(opts["runner"]))
        # Safety first: contactors off before anything else runs (a real board does this
        # with the pin's reset state and the first line of board setup).
        n = int(opts.get("connectors", "1"))
        for cid in range(1, n + 1):
            self._w.send(b"K %d 0\n" % cid)
        self.connectors = [ConnectorHal(self._w, cid) for cid in range(1, n + 1)]
        self.fs = opts.get("state-dir", ".")
        self.uid = opts.get("uid", "5e0001")
        b = opts.get("broker")
        if b:
            # --broker fixes the broker on every boot; config shows it as the value in force.
            host, _, port = b.rpartition(":")
            self.config_pinned = {"mqtt.host": host, "mqtt.port": int(port)}
        self.config_overrides = opts["config"]
        if opts.get("console") == "1":
            self.console_in = sys.stdin  # the runner's stdin (sim.py --console)
            self.console_out = SerialOut(sys.stdout, 115200)
        if "config-file" in opts:
            with open(opts["config-file"]) as f:
                self.config_overrides += [ln for ln in f.read().split("\n") if ln]
        # The meter line's transceiver: DE is a line to the runner, which delivers a frame
        # only when sent with DE high and loses a reply that starts while DE is still high.
        self.uart = Rs485(SimUart(self._w), lambda v: self._w.send(b"D %d\n" % v))
        m = opts.get("meter", "sim")
        if m.startswith("tcp:"):
            self.meter_transport = m
        self._ntc = Ntc()  # the NTC's range pin: the world is told the range with each read
        # The MFRC522 reader (emulated by the runner) on SPI, with its NSS pin.
        self.rfid_cs = SimPin()
        self.spi = (SimSpi(self._w, self.rfid_cs), self.rfid_cs)
        # The runner's name service and NTP server; the RTC is unset until NTP sets it.
        self._clock_off = None
        if "dns-port" in opts:
            self.net = SimNet(self, int(opts["dns-port"]), int(opts["ntp-port"]))

    def temp_c(self):
        """The NTC through the same two-range divider and conversion as the ESP32 board
        (evse.thermal.Ntc); the world answers `t <range>` with the ADC's read_uv()."""
        ntc = self._ntc
        for _ in range(2):
            now = time.ticks_ms()
            if not ntc.settled(now, time.ticks_diff):
                if ntc.temp_c is not None:
                    return ntc.temp_c
                time.sleep_ms(_NTC_SETTLE_WAIT_MS)  # only before the first reading
                now = time.ticks_ms()
            t = ntc.update(int(self._w.ask(b"t 1\n" if ntc.cold else b"t 0\n")), now)
            if t is not None:
                return t
        raise OSError("NTC reading out of both ranges")

    def wdt(self, timeout_ms):
        return _Wdt(self._w, timeout_ms)

    def loop_gap(self, ms):
        """A new largest gap between control-loop iterations, as the firmware measured it."""
        self._w.send(b"G %d\n" % ms)

    def ready(self):
        self._w.send(b"U\n")

    def idle(self, ms):
        time.sleep_ms(ms)

    def unix_time(self):
        """None until the firmware's NTP client has set the clock (as an ESP32's RTC after
        a cold boot); without the runner's network (an old runner) the host's clock."""
        if self.net is None:
            return int(time.time())
        if self._clock_off is None:
            return None
        return int(time.time() + self._clock_off)

    def flash_write(self, f, data):
        """The runner says how much of this write reaches the flash before a power cut it
        has armed (the `flash` op): a torn write leaves a prefix, then the power goes; or
        that the flash is full (-1): nothing is written, OSError(ENOSPC)."""
        n = int(self._w.ask(b"F %d\n" % len(data)))
        if n < 0:
            raise OSError(28)  # ENOSPC: the flash is full, nothing of it was written
        if n >= len(data):
            f.write(data)
            return
        f.write(data[:n])
        f.flush()
        f.close()  # what reached the flash stays there
        self._w.send(b"PC\n")
        while True:
            time.sleep(1)  # the runner kills us with the rest of the process group

    def reset(self):
        self._w.send(b"X\n")
        sys.exit(0)
