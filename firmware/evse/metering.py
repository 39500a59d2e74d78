"""The station's energy meters: one Modbus bus, one meter per connector, and the policy for
a meter that stops answering (billing is impossible without it)."""

from evse.compat import age_cap, const, ticks_diff, ticks_us
from evse.connector import CLEAR_UNPLUG, OUT_PWM

# A dead grid meter is asked at most this often, so the connector meters keep the line.
_GRID_BACKOFF_MS = const(16000)
# An EV drawing more than offered: over by OVER_A on any phase (OpenEVSE's margin) for
# longer than IEC 61851-1 gives an EV to follow a lower duty (5 s), plus one meter poll.
OVER_A = 5.0
OVER_MS = const(6000)


class Metering:
    """Builds the bus and meters from config and board, polls them from the control loop
    and applies meter_fail_s / meter_loss per connector."""

    def __init__(self, board, cfg, events, connectors):
        self._cfg = cfg
        self._events = events
        self._conns = connectors
        self.bus = None
        self.meters = [None] * len(connectors)
        self.grid = None  # the site's grid meter on the same line (site.grid_meter)
        self.on_grid = None  # (i[3] signed, ttl_s) -> None: the balancer's input
        self._grid_ms = None  # the grid reading last handed on
        self.plug_start_wh = [None] * len(connectors)  # register at plug-in
        self._over_ms = [None] * len(connectors)  # first reading over the offered current
        self._since_ms = None
        try:
            self._build(board)
        except Exception as e:  # noqa: BLE001 - whatever the stored map holds: boot on
            self.bus = None
            self.meters = [None] * len(connectors)
            events.add("error", "PowerMeterFailure", 0, "meter setup: %r" % e)

    def _build(self, board):
        """Connector n's meter at slave meter.slave+n-1, on the UART or a TCP gateway."""
        from evse import meters, modbus

        cfg = self._cfg
        name = cfg["meter.profile"]
        grid = cfg["site.grid_meter"]
        if name == "none" and grid == "none":
            return
        if name == "none":
            profile = None
            line_name, line = grid, meters.PROFILES[grid]  # the line's defaults: the grid's
        else:
            profile = meters.custom_profile(cfg["meter.custom"]) if name == "custom" else (
                meters.PROFILES[name])
            line_name, line = name, profile
        transport = board.meter_transport or cfg["meter.transport"]
        if transport.startswith("tcp:"):
            from evse.tcpport import TcpPort

            host, _, port = transport[4:].rpartition(":")
            uart = TcpPort(host, int(port))
        elif transport == "uart":
            uart = board.uart
        else:
            raise ValueError("meter.transport must be uart or tcp:HOST:PORT")
        if uart is None:
            return
        baud = cfg["meter.baud"] or line[2]
        parity = cfg["meter.parity"] or meters.PARITY.get(line_name, "none")
        if hasattr(uart, "init"):
            uart.init(baudrate=baud, bits=8, parity={"none": None, "even": 0, "odd": 1}[parity],
                      stop=1)
        self.bus = modbus.Bus(uart, baud)
        if profile is not None:
            for k in range(len(self._conns)):
                self.meters[k] = meters.Meter(self.bus, cfg["meter.slave"] + k, profile, name)
        if grid != "none":
            self.grid = meters.Meter(self.bus, cfg["site.grid_slave"], meters.PROFILES[grid],
                                     grid, _GRID_BACKOFF_MS)

    @property
    def name(self):
        m = self.meters[0] if self.meters else None
        return m.name if m is not None else None

    def reading(self, k):
        """(v[3], i[3], p_w, e_wh, f_hz) of connector k+1's meter, or None."""
        m = self.meters[k]
        return None if m is None else m.reading

    def energy_wh(self, k):
        """Energy since plug-in (register difference), or None without both readings."""
        r = self.reading(k)
        start = self.plug_start_wh[k]
        return None if r is None or start is None else r[3] - start

    def step(self, now):
        """Drive the bus, then judge each meter: meter_fail_s without a valid reading is a
        PowerMeterFailure; with meter_loss=suspend that connector stops charging until the
        meter answers again."""
        self._overcurrent(now)
        if self.bus is None:
            return
        self.bus.step(ticks_us())
        g = self.grid
        if g is not None:
            g.poll(now)
            if g.ok_ms is not None and g.ok_ms != self._grid_ms and self.on_grid is not None:
                self._grid_ms = g.ok_ms
                self.on_grid(self._signed(g.reading), self._cfg["meter_fail_s"])
        if self._since_ms is None:
            self._since_ms = now  # a meter that never answered counts from the first poll
        cfg = self._cfg
        fail_ms = cfg["meter_fail_s"] * 1000
        for k, m in enumerate(self.meters):
            if m is None:
                continue
            m.poll(now)
            c = self._conns[k]
            # The last reading's stamp stops ageing just past meter_fail_s: a meter dead for
            # a week stays failed (a ticks stamp that old would read as recent again).
            if m.ok_ms is None:
                self._since_ms = since = age_cap(now, self._since_ms, fail_ms + 1000)
            else:
                m.ok_ms = since = age_cap(now, m.ok_ms, fail_ms + 1000)
            failed = ticks_diff(now, since) > fail_ms
            if failed != c.meter_failed:
                c.meter_failed = failed
                if failed:
                    self._events.add("error", "PowerMeterFailure", c.id,
                                     "no valid reading for %d s" % cfg["meter_fail_s"])
                else:
                    self._events.add("info", "PowerMeterOk", c.id, "readings again")
            if c.cp == "A":
                self.plug_start_wh[k] = None
            elif self.plug_start_wh[k] is None and m.reading is not None:
                self.plug_start_wh[k] = m.reading[3]
            if failed and cfg["meter_loss"] == "suspend":
                c.limits.set("meter", 0.0)
            else:
                c.limits.clear("meter")

    def _overcurrent(self, now):
        """Over-current: contactor open, OverCurrentFailure until unplugged."""
        meters = self.meters
        for k in range(len(meters)):  # (no enumerate object: this runs every loop)
            m = meters[k]
            if m is None:
                continue
            c = self._conns[k]
            r = m.reading
            t = m.ok_ms
            if r is None or t is None or not c.contactor or c.out != OUT_PWM \
                    or c.fault is not None or max(r[1]) <= c.offered_a + OVER_A:
                self._over_ms[k] = None
                continue
            since = self._over_ms[k]
            if since is None:
                self._over_ms[k] = t
            elif ticks_diff(t, since) >= OVER_MS:
                self._over_ms[k] = None
                c.set_fault("OverCurrentFailure", CLEAR_UNPLUG, now,
                            "EV drew %.1f A, %.1f A offered" % (max(r[1]), c.offered_a))

    @staticmethod
    def _signed(r):
        """Phase currents with the direction of the total power: meters report current
        magnitudes, and import/export shows only in the power's sign. (For per-phase
        direction, publish <base>/grid.)"""
        i = r[1]
        if r[2] < 0:
            return [-i[0], -i[1], -i[2]]
        return [i[0], i[1], i[2]]

    def diag(self):
        bus = self.bus
        if bus is None:
            return None
        out = dict(bus.counters)
        out["transactions"] = bus.transactions
        out["exception_codes"] = {str(k): v for k, v in bus.exceptions.items()}
        return out
