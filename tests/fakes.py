"""A tiny in-process board for CPython unit tests of the core (no timing, no sockets)."""

import json
import os

from evse.hal import BoardBase

TICKS_PERIOD = 1 << 30  # ticks_ms wraps here on the ESP32

LEVEL_MV = {"A": 12000, "B": 9000, "C": 6000, "D": 3000, "E": 0}


class FakePilot:
    def __init__(self, hal):
        self.hal = hal
        self.mode = None
        self.duty = None

    def pwm(self, duty):
        self.mode, self.duty = "pwm", duty

    def plus12(self):
        self.mode, self.duty = "+12", None

    def duty_read(self):
        return None  # this fake cannot time its pin

    def minus12(self):
        self.mode, self.duty = "-12", None

    def sample(self):
        h = self.hal
        if h.raise_on_sample:
            raise RuntimeError("ADC gone")
        if self.mode == "-12":
            return -12000, -12000
        high = LEVEL_MV[h.ev]
        if self.mode != "pwm" or high == 0:
            return high, high
        return high, (-12000 if (h.diode or h.ev == "A") else -high)


class FakeContactor:
    def __init__(self, hal):
        self.hal = hal
        self.on = False
        self.welded = False
        self.stuck_open = False

    def set(self, on):
        self.on = on
        self.hal.log.append(("contactor", on))

    def feedback(self):
        if self.welded:
            return True
        if self.stuck_open:
            return False
        return self.on


class FakeHal:
    def __init__(self):
        self.ev = "A"
        self.diode = True
        self.rcd = False
        self.rcd_healthy = True
        self.test_on = False
        self.pp = None
        self.raise_on_sample = False
        self.log = []
        self.pilot = FakePilot(self)
        self.contactor = FakeContactor(self)

    def rcd_tripped(self):
        return self.rcd or (self.test_on and self.rcd_healthy)

    def rcd_test(self, on):
        self.test_on = on

    def pp_ohms(self):
        return self.pp


class SerialLine:
    """The receive side of a non-blocking UART (machine.UART-like): bytes queued in `rx`
    by the subclass's write() are read back with any()/readinto()."""

    def __init__(self):
        self.rx = bytearray()

    def any(self):
        return len(self.rx)

    def readinto(self, mv):
        n = min(len(mv), len(self.rx))
        mv[:n] = self.rx[:n]
        del self.rx[:n]
        return n


class NoLink:
    """Stands for evse.link.Link where the API calls it: counts reboots, nothing else."""

    def __init__(self):
        self.reboots = 0

    def schedule_reboot(self, now, delay_s):
        self.reboots += 1

    def config_changed(self, keys):
        pass


class FakeWdt:
    def feed(self):
        pass


class FakeBoard(BoardBase):
    name = "fake"
    max_current_a = 32.0
    phases = 3

    def __init__(self, fs, connectors=1):
        self.fs = fs
        self.uid = "ABCDEF"
        self.connectors = [FakeHal() for _ in range(connectors)]
        self.temp = 25.0
        self.unix = 1764000000
        # A full flash: writes raise OSError(ENOSPC); flash_prefix bytes of each still land
        # (littlefs lands none; another filesystem may keep a prefix).
        self.flash_full = False
        self.flash_prefix = 0
        self.flash_refused = 0

    def flash_write(self, f, data):
        if self.flash_full:
            self.flash_refused += 1
            f.write(data[:self.flash_prefix])
            raise OSError(28)
        f.write(data)

    def temp_c(self):
        return self.temp

    def unix_time(self):
        return self.unix  # None: the clock is not set (after a power cut, before NTP)

    def wdt(self, ms):
        return FakeWdt()


class Clock:
    """Drives a Station step by step in simulated milliseconds, as ESP32 ticks: they wrap
    at 2^30 (`start` near that makes a test cross the wrap)."""

    def __init__(self, station):
        self.st = station
        self.now = station.boot_ms  # Station(..., now=2**30 - 60000): the wrap comes soon

    def run(self, ms, step=5):
        while ms > 0:
            d = min(step, ms)
            ms -= d
            self.now = (self.now + d) & (TICKS_PERIOD - 1)
            self.st.step(self.now)


# -- a station on the fake board, for the unit tests ------------------------------------------
def boot(path, connectors=1, **cfg):
    """A Station on a FakeBoard whose flash is `path` (made if missing), past its boot RCD
    self-test: (station, board, clock)."""
    from evse.station import Station

    os.makedirs(str(path), exist_ok=True)
    board = FakeBoard(str(path), connectors=connectors)
    st = Station(board, overrides=cfg or None)
    clk = Clock(st)
    clk.run(50)  # the boot RCD self-test
    return st, board, clk


def cmd(st, name, **args):
    """A backend command through the station's API: its reply."""
    from evse.api import Api

    args.update(rid="r", cmd=name)  # (a new Api each time: no rid is remembered)
    return Api(st, NoLink()).handle(json.dumps(args).encode())


def plug_and_charge(board, clk, k=0):
    """Plug an EV into connector k+1 and let it ask for power (B, then C)."""
    hal = board.connectors[k]
    hal.ev = "B"
    clk.run(50)
    hal.ev = "C"
    clk.run(400)
    return hal


def session_messages(st):
    """The session messages waiting in the journal's outbox, oldest first."""
    j = st.sessions.journal
    with j.reader() as f:
        return [json.loads(j.payload(off, f)) for _, off in j.outbox]
