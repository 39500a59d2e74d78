"""One charging station: it composes the connectors, configuration, limits, thermal guard,
meters and failsafe, and runs the control loop. The jobs live in their own modules; new
ones (sessions, authorization, schedules, balancing) plug in here as one more part."""

import sys

from evse.auth import Auth
from evse.balance import Balancer
from evse.clock import Uptime
from evse.compat import const, ticks_diff, ticks_ms
from evse.config import Config
from evse.connector import Connector
from evse.events import Events
from evse.failsafe import Failsafe, random_s
from evse.limits import Limits
from evse.metering import Metering
from evse.orders import Orders
from evse.sessions import Sessions
from evse.store import Store
from evse.thermal import ThermalGuard
from evse.timetable import Timetable

LOOP_MS = const(5)  # control-loop period: CP changes are seen within ~2 loops
_WDT_MS = const(2000)  # hardware watchdog: a stalled loop resets the board
# A reboot waits for every contactor to open the IEC way (X1, then C->B or 6 s) first.
_REBOOT_WAIT_MS = const(7000)


class Station:
    def __init__(self, board, log=None, overrides=None, pinned=None, now=None):
        self.board = board
        self._log = log
        self.boot_ms = ticks_ms() if now is None else now
        self.uptime = Uptime(self.boot_ms)
        self.events = Events(log, clock=board.unix_time, uptime=self.uptime)
        self.store = Store(board.fs, board.flash_write)
        self.cfg = Config(self.store, self.events, overrides, pinned)
        self.limits = Limits()  # station scope: hardware, config, thermal, ...
        self.connectors = [
            Connector(i + 1, hal, self.cfg, self.events, self.uptime)
            for i, hal in enumerate(board.connectors)
        ]
        self.thermal = ThermalGuard(board, self.cfg, self.events, self.limits)
        self.metering = Metering(board, self.cfg, self.events, self.connectors)
        self.failsafe = Failsafe(self.cfg, self.events, self.limits,
                                 [c.limits for c in self.connectors], self.uptime,
                                 self.boot_ms)
        self.balancer = Balancer(self)
        self.metering.on_grid = self.balancer.sample
        self.timetable = Timetable(self)
        self.orders = Orders(self.store, self.events, board.unix_time, self.uptime)
        self.orders.load(self, self.cfg["failsafe_current_a"])
        self.failsafe.restored()
        self.sessions = Sessions(self)
        reader = None
        if board.spi is not None:
            from evse.rfid import Reader

            reader = Reader(board.spi, self.events, self.boot_ms)
        self.auth = Auth(self, reader)
        r = random_s(self.cfg["random_delay_s"])
        if r:
            # Power-up: nothing offered for a random while (a fleet after a blackout).
            self.limits.set("startup_delay", 0.0, r)
            self.events.add("info", "StartupDelay", 0, "power-up: held for %d s" % r)
        self.rebooting_ms = None  # a reboot waits for the contactors (reboot())
        self.image = None  # which modules run from files, not frozen (evse.image; main.py)
        self.console = None  # the service console (evse.console; main.py), polled each loop
        self.job = None  # a service job stepped by the loop (the self-test)
        self.logbook = None  # the log ring with its file on flash (evse.logring; main.py)
        self.loop_max_gap_ms = 0
        self.loop_count = 0
        self.exceptions = 0
        for c in self.connectors:
            c.rcd.start(self.boot_ms)  # self-test the residual-current detector first

    @property
    def station_id(self):
        return self.cfg["station_id"] or "evse-" + self.board.uid.lower()

    def step(self, now):
        """One control-loop iteration. Exceptions never leave a contactor closed."""
        self.uptime.tick(now)
        try:
            self.limits.set("hardware", self.board.max_current_a)
            self.limits.set("config", self.cfg["max_current_a"])
            self.thermal.poll(now, ticks_diff)
        except Exception as e:  # noqa: BLE001 - a sensor fault must not stop the pilot
            self._internal_error(None, now, e)
            self.limits.set("thermal", 0.0)
        try:
            self.metering.step(now)
        except Exception as e:  # noqa: BLE001 - a meter bug must not stop the pilot
            self._internal_error(None, now, e)
        try:
            self.timetable.step()
        except Exception as e:  # noqa: BLE001 - a schedule bug must not stop the pilot
            self._internal_error(None, now, e)
        try:
            self.balancer.step(now)
        except Exception as e:  # noqa: BLE001 - a balancing bug: the failsafe, not a stop
            self._internal_error(None, now, e)
            self.limits.set("failsafe", self.cfg["failsafe_current_a"])
        self.failsafe.step(now)
        stop = self.thermal.stop
        # Connectors share the station's limit (its supply): equal parts among those
        # that take current now.
        amps, by = self.limits.effective(self.uptime.s)
        n = 0
        for c in self.connectors:
            if c.wants_current():
                n += 1
        share = (amps, by) if amps is None or n < 2 else (int(amps * 10 / n) / 10, by)
        for c in self.connectors:
            try:
                c.step(now, share, stop)
            except Exception as e:  # noqa: BLE001 - IEC: power off on any fault
                self._internal_error(c, now, e)
        try:
            self.auth.step(now)  # the reader is polled here (bounded; evse/rfid.py)
        except Exception as e:  # noqa: BLE001 - a reader fault must not stop the pilot
            self._internal_error(None, now, e)
        try:
            self.sessions.step(now)
        except Exception as e:  # noqa: BLE001 - a journal fault must not stop the pilot
            self._internal_error(None, now, e)
        try:
            self.orders.poll(self)
        except Exception as e:  # noqa: BLE001 - flash trouble must not stop the pilot
            self._internal_error(None, now, e)

    def _internal_error(self, conn, now, exc):
        self.exceptions += 1
        if conn is not None:
            conn.fail_internal(now, repr(exc))
        else:
            self.events.add("error", "InternalError", 0, repr(exc))
        if self._log and hasattr(sys, "print_exception"):
            sys.print_exception(exc)

    def begin_reboot(self, now):
        """End charging the IEC way (X1 on every connector); reboot_due() says when the
        contactors are open, so a reset never breaks a current."""
        if self.rebooting_ms is None:
            self.rebooting_ms = now
            for c in self.connectors:
                c.stop()
                c.halted = True  # nothing offered until the reset, not even to a new EV

    def reboot_due(self, now):
        if self.rebooting_ms is None:
            return False
        waited = ticks_diff(now, self.rebooting_ms)
        for c in self.connectors:
            if c.contactor and waited < _REBOOT_WAIT_MS:
                return False
        # ... and for the stop records' meter readings (sessions.finish() takes the last
        # one after this)
        for s in self.sessions.cur:
            if s is not None and waited < _REBOOT_WAIT_MS + 3000:
                return False
        return True

    def reboot(self, now):
        """Reset the board (never returns): every contactor open, the pilot at +12 V."""
        for c in self.connectors:
            c.shutdown(now)
        try:
            self.sessions.finish(now, "Reboot")
        except Exception as e:  # noqa: BLE001 - the reset goes ahead: PowerLoss at boot
            self._internal_error(None, now, e)
        self.board.reset()

    def run(self, link=None):
        """The control loop. Never returns except by reset."""
        board = self.board
        wdt = board.wdt(_WDT_MS)
        last = ticks_ms()
        first = True
        while True:
            now = ticks_ms()
            gap = ticks_diff(now, last)
            last = now
            if gap > self.loop_max_gap_ms and not first:
                self.loop_max_gap_ms = gap
                board.loop_gap(gap)  # the sim reports it next to the world-side figure
            self.step(now)
            self.loop_count += 1
            if link is not None:
                try:
                    link.poll(now)
                except Exception as e:  # noqa: BLE001 - the network never stops charging
                    link.failed(e)
            if self.job is not None:
                self.job.step(now)
                if self.job.done:
                    self.job = None
            if self.console is not None:
                try:
                    self.console.poll()
                except Exception:  # noqa: BLE001 - a broken console must not stop charging
                    self.console = None
            if self.logbook is not None:
                closed = False
                for c in self.connectors:
                    closed = closed or c.contactor
                self.logbook.flush(now, closed)  # flash only while no contactor is closed
            wdt.feed()
            if first:
                board.ready()
                first = False
            spent = ticks_diff(ticks_ms(), now)
            board.idle(LOOP_MS - spent if spent < LOOP_MS else 0)
