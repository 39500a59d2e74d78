"""Over-temperature derating with hysteresis: normal -> derate -> stop and back."""

NORMAL = 0
DERATE = 1
STOP = 2


class Thermal:
    def __init__(self):
        self.level = NORMAL

    def update(self, temp_c, derate_c, stop_c, hyst_c):
        """New level for this temperature; leaving a level needs hyst_c below its entry."""
        lvl = self.level
        if temp_c is None:
            return lvl
        if temp_c >= stop_c:
            lvl = STOP
        elif lvl == STOP and temp_c >= stop_c - hyst_c:
            lvl = STOP
        elif temp_c >= derate_c:
            lvl = DERATE
        elif lvl >= DERATE and temp_c >= derate_c - hyst_c:
            lvl = DERATE
        else:
            lvl = NORMAL
        self.level = lvl
        return lvl


_TEMP_EVERY_MS = 250  # temperature changes slowly; don't read it every loop


class ThermalGuard:
    """Reads the board temperature every 250 ms and turns it into the station's `thermal`
    limit: derate, stop, or stop on a failed sensor (without a temperature we cannot
    derate), with one event per change."""

    def __init__(self, board, cfg, events, limits):
        self._board = board
        self._cfg = cfg
        self._events = events
        self._limits = limits
        self.thermal = Thermal()
        self.temp_c = None
        self._read_ms = None
        self._failed = False

    @property
    def stop(self):
        return self.thermal.level == STOP

    def poll(self, now, ticks_diff):
        if self._read_ms is not None and ticks_diff(now, self._read_ms) < _TEMP_EVERY_MS:
            return
        self._read_ms = now
        cfg = self._cfg
        ev = self._events
        try:
            self.temp_c = self._board.temp_c()
        except Exception as e:  # noqa: BLE001 - an open or shorted sensor
            if not self._failed:
                self._failed = True
                ev.add("error", "TempSensorFailure", 0, repr(e))
            self._limits.set("thermal", 0.0)
            return
        if self._failed:
            self._failed = False
            ev.add("info", "TempSensorOk", 0, "%.1f C" % self.temp_c)
        was = self.thermal.level
        lvl = self.thermal.update(self.temp_c, cfg["thermal.derate_c"], cfg["thermal.stop_c"],
                                  cfg["thermal.hysteresis_c"])
        if lvl == DERATE:
            self._limits.set("thermal", cfg["thermal.derate_current_a"])
        elif lvl == STOP:
            self._limits.set("thermal", 0.0)
        else:
            self._limits.clear("thermal")
        if lvl != was:
            ev.add("warn" if lvl else "info", "HighTemperature" if lvl else "TemperatureNormal",
                   0, "%.1f C, thermal level %d" % (self.temp_c, lvl))
