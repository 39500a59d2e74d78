"""One charging station: its connectors, configuration, limits and the control loop."""

import sys

from evse import VERSION
from evse.compat import const, ticks_diff, ticks_ms, ticks_us
from evse.config import Config
from evse.connector import CLEAR_UNPLUG, Connector
from evse.events import Events
from evse.limits import Limits
from evse.store import Store
from evse.thermal import DERATE, STOP, Thermal

LOOP_MS = const(5)  # control-loop period: CP changes are seen within ~2 loops
_WDT_MS = const(2000)  # hardware watchdog: a stalled loop resets the board
_TEMP_EVERY_MS = const(250)  # temperature changes slowly; don't read it every loop


def parse_overrides(items):
    """["key=json", ...] (the runner's --config) -> {key: value}; bare strings allowed."""
    import json

    out = {}
    for item in items or ():
        k, _, v = item.partition("=")
        try:
            out[k] = json.loads(v)
        except ValueError:
            out[k] = v
    return out


class Station:
    def __init__(self, board, log=None, overrides=None):
        self.board = board
        self._log = log
        self.events = Events(log)
        self.store = Store(board.fs)
        self.cfg = Config(self.store, self.events, overrides)
        self.limits = Limits()  # station scope: hardware, config, thermal, ...
        self.thermal = Thermal()
        self.temp_c = None
        self._temp_ms = None
        self._temp_failed = False
        self.connectors = [
            Connector(i + 1, hal, self.cfg, self.events) for i, hal in enumerate(board.connectors)
        ]
        self.link = None
        self.bus = None
        self.meters = [None] * len(self.connectors)
        try:
            self._build_meters()
        except (ValueError, OSError) as e:
            self.events.add("error", "PowerMeterFailure", 0, "meter setup: %s" % e)
        self.boot_ms = ticks_ms()
        self.loop_max_gap_ms = 0
        self.loop_count = 0
        self.exceptions = 0
        now = self.boot_ms
        for c in self.connectors:
            c.rcd.start(now)  # self-test the residual-current detector before any charge

    def _build_meters(self):
        """One Modbus bus (UART or TCP gateway); connector n's meter at slave meter.slave+n-1."""
        from evse import meters, modbus

        cfg = self.cfg
        name = cfg["meter.profile"]
        if name == "none":
            return
        profile = meters.custom_profile(cfg["meter.custom"]) if name == "custom" else (
            meters.PROFILES[name])
        transport = getattr(self.board, "meter_transport", None) or cfg["meter.transport"]
        if transport.startswith("tcp:"):
            from evse.tcpport import TcpPort

            host, _, port = transport[4:].rpartition(":")
            uart = TcpPort(host, int(port))
        elif transport == "uart":
            uart = getattr(self.board, "uart", None)
        else:
            raise ValueError("meter.transport must be uart or tcp:HOST:PORT")
        if uart is None:
            return
        baud = cfg["meter.baud"] or profile[2]
        parity = cfg["meter.parity"] or meters.PARITY.get(name, "none")
        if hasattr(uart, "init"):
            uart.init(baudrate=baud, bits=8, parity={"none": None, "even": 0, "odd": 1}[parity],
                      stop=1)
        self.bus = modbus.Bus(uart, baud)
        for k in range(len(self.connectors)):
            self.meters[k] = meters.Meter(self.bus, cfg["meter.slave"] + k, profile, name)

    def _meter_policy(self, now):
        """meter_fail_s without a valid reading: PowerMeterFailure; with meter_loss=suspend
        the connector stops charging (billing impossible) until the meter answers again."""
        fail_ms = self.cfg["meter_fail_s"] * 1000
        for k, m in enumerate(self.meters):
            if m is None:
                continue
            m.poll(now)
            c = self.connectors[k]
            since = self.boot_ms if m.ok_ms is None else m.ok_ms
            failed = ticks_diff(now, since) > fail_ms
            if failed != c.meter_failed:
                c.meter_failed = failed
                if failed:
                    self.events.add("error", "PowerMeterFailure", c.id,
                                    "no valid reading for %d s" % self.cfg["meter_fail_s"])
                else:
                    self.events.add("info", "PowerMeterOk", c.id, "readings again")
            # Energy of this plug-in (register difference), until sessions own it.
            if c.cp == "A":
                c.plug_start_wh = None
            elif c.plug_start_wh is None and m.reading is not None:
                c.plug_start_wh = m.reading[3]
            if failed and self.cfg["meter_loss"] == "suspend":
                c.limits.set("meter", 0.0)
            else:
                c.limits.clear("meter")

    @property
    def station_id(self):
        return self.cfg["station_id"] or "evse-" + self.board.uid.lower()

    def _update_limits(self, now):
        cfg = self.cfg
        self.limits.set("hardware", self.board.max_current_a)
        self.limits.set("config", cfg["max_current_a"])
        if self._temp_ms is None or ticks_diff(now, self._temp_ms) >= _TEMP_EVERY_MS:
            self._temp_ms = now
            try:
                self.temp_c = self.board.temp_c()
            except Exception as e:  # noqa: BLE001 - an open or shorted sensor
                # Without a temperature we cannot derate: stop charging until it reads again.
                if not self._temp_failed:
                    self._temp_failed = True
                    self.events.add("error", "TempSensorFailure", 0, repr(e))
                self.limits.set("thermal", 0.0)
                return
            if self._temp_failed:
                self._temp_failed = False
                self.events.add("info", "TempSensorOk", 0, "%.1f C" % self.temp_c)
            was = self.thermal.level
            lvl = self.thermal.update(
                self.temp_c,
                cfg["thermal.derate_c"],
                cfg["thermal.stop_c"],
                cfg["thermal.hysteresis_c"],
            )
            if lvl == DERATE:
                self.limits.set("thermal", cfg["thermal.derate_current_a"])
            elif lvl == STOP:
                self.limits.set("thermal", 0.0)
            else:
                self.limits.clear("thermal")
            if lvl != was:
                self.events.add(
                    "warn" if lvl else "info",
                    "HighTemperature" if lvl else "TemperatureNormal",
                    0,
                    "%.1f C, thermal level %d" % (self.temp_c, lvl),
                )

    def step(self, now):
        """One control-loop iteration. Exceptions never leave a contactor closed."""
        try:
            self._update_limits(now)
        except Exception as e:  # noqa: BLE001 - a sensor fault must not stop the pilot
            self._internal_error(None, now, e)
            self.limits.set("thermal", 0.0)
        if self.bus is not None:
            try:
                self.bus.step(ticks_us())
                self._meter_policy(now)
            except Exception as e:  # noqa: BLE001 - a meter bug must not stop the pilot
                self._internal_error(None, now, e)
        stop = self.thermal.level == STOP
        for c in self.connectors:
            try:
                c.step(now, self.limits, stop)
            except Exception as e:  # noqa: BLE001 - IEC: power off on any fault
                self._internal_error(c, now, e)

    def _internal_error(self, conn, now, exc):
        self.exceptions += 1
        if conn is not None:
            try:
                conn.force_safe(now)
            except Exception:  # noqa: BLE001
                pass
            conn.set_fault("InternalError", CLEAR_UNPLUG, now, repr(exc))
            conn.state = "Faulted"  # the step that raised never got to derive it
        else:
            self.events.add("error", "InternalError", 0, repr(exc))
        if self._log and hasattr(sys, "print_exception"):
            sys.print_exception(exc)

    def status(self, now):
        """The status payload of the MQTT API (shared/spec/mqtt-api.md, Status)."""
        conns = []
        for c in self.connectors:
            conns.append(
                {
                    "id": c.id,
                    "state": c.state,
                    "cp": c.cp,
                    "contactor": c.contactor,
                    "offered_a": c.offered_a,
                    "limit_a": round(c.limit_a, 1),
                    "limit_by": c.limit_by,
                    "session": None,
                    "error": c.error,
                }
            )
            m = self.meters[c.id - 1]
            if m is not None and m.reading is not None and c.plug_start_wh is not None:
                conns[-1]["energy_wh"] = m.reading[3] - c.plug_start_wh  # extension
        return {
            "ts": self.board.unix_time(),
            "uptime_s": ticks_diff(now, self.boot_ms) // 1000,
            "connectors": conns,
        }

    def status_key(self):
        """What a status change is judged on (everything but ts/uptime)."""
        k = []
        for c in self.connectors:
            k.append((c.state, c.cp, c.contactor, c.duty, c.limit_a, c.limit_by, c.error))
        return k

    def info(self):
        return {
            "api": 1,
            "fw": VERSION,
            "board": self.board.name,
            "connectors": len(self.connectors),
            "phases": self.cfg["phases"],
            "max_current_a": float(self.board.max_current_a),
            "meter": self.meters[0].name if self.meters and self.meters[0] else None,
            "rfid": False,
        }

    def run(self, link=None):
        """The control loop. Never returns except by reset."""
        board = self.board
        wdt = board.wdt(_WDT_MS)
        report_gap = getattr(board, "loop_gap", None)
        last = ticks_ms()
        first = True
        while True:
            now = ticks_ms()
            gap = ticks_diff(now, last)
            last = now
            if gap > self.loop_max_gap_ms and not first:
                self.loop_max_gap_ms = gap
                if report_gap is not None:
                    report_gap(gap)  # the sim reports it next to the world-side figure
            self.step(now)
            self.loop_count += 1
            if link is not None:
                try:
                    link.poll(now)
                except Exception as e:  # noqa: BLE001 - the network never stops charging
                    link.failed(e)
            wdt.feed()
            if first:
                board.ready()
                first = False
            spent = ticks_diff(ticks_ms(), now)
            board.idle(LOOP_MS - spent if spent < LOOP_MS else 0)
