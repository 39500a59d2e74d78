"""Over-temperature derating with hysteresis: normal -> derate -> stop and back; and the
board NTC's two-range divider turned into degrees (pure, shared by the ESP32 and sim boards)."""

from math import log

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


# -- the board NTC (boards/esp32_devkitc/README.md, Temperature) ------------------------------
# 10 kOhm B3950 NTC from the ADC node to GND. Pull-ups from 3.3 V: 150 kOhm always (the cold
# range), plus 4.7 kOhm from a GPIO driven high (the hot range). One divider cannot span
# -40 .. +130 C inside the span the ESP32 ADC reads linearly at 11 dB (0.15-2.45 V): the NTC
# changes 1270-fold over that range, the window allows about 60-fold.
NTC_R25_OHMS = 10000
NTC_BETA = 3950
NTC_VCC_UV = 3300000
NTC_PULLUP_COLD_OHMS = 150000  # -40 C -> 2.40 V, 25 C -> 0.21 V
NTC_PULLUP_HOT_OHMS = 4700  # in parallel with the 150 k: 4.56 k; 130 C -> 0.21 V, 20 C -> 2.42 V
ADC_LINEAR_MAX_UV = 2450000  # ESP32, 11 dB: linear up to here (ESP-IDF ADC docs)
# Cold range: the ADC clips near 3.13 V (raw 4095 in ESP-IDF's 11 dB lookup table); a reading
# this high means more than 1 MOhm, below -58 C: no sensor (open wire).
NTC_OPEN_UV = 2900000
# Hot range: this low means under 260 Ohm, above 133 C, or a shorted sensor. Above the ADC's
# floor (read_uv() reports about 142 mV for a raw 0, eFuse Vref calibration).
NTC_SHORT_UV = 180000
# Range changes, with hysteresis: both thresholds read inside both ranges' linear spans.
_TO_COLD_C = 22.0  # hot range reads 2.35 V here
_TO_HOT_C = 26.0  # cold range reads 0.20 V here
# The node (100 nF) settles within 9 time constants of the cold range (<= 11 ms) after a switch.
NTC_SETTLE_MS = 100


def ntc_c(adc_uv, pullup_ohms):
    """Degrees C of the NTC under pullup_ohms from one read_uv() value (Beta equation).
    Pure: no range checks (Ntc.update does those)."""
    r = pullup_ohms * adc_uv / (NTC_VCC_UV - adc_uv)
    t_k = 1 / (1 / 298.15 + log(r / NTC_R25_OHMS) / NTC_BETA)
    return round(t_k - 273.15, 1)


def _parallel(a, b):
    return a * b // (a + b)


class Ntc:
    """Which pull-up the board must select (`cold`) and what one reading in it means. Only a
    truly open sensor reads open: a saturated reading in the hot range first switches to
    the cold range, where -40 C still reads 2.40 V. Pure: the board reads the ADC and drives
    the range pin (cold=True: pin high-impedance; False: pin driven high)."""

    def __init__(self):
        self.cold = False
        self.temp_c = None  # the last good reading
        self._switched_ms = None

    def pullup_ohms(self):
        return NTC_PULLUP_COLD_OHMS if self.cold else _parallel(NTC_PULLUP_COLD_OHMS,
                                                                NTC_PULLUP_HOT_OHMS)

    def settled(self, now_ms, ticks_diff):
        """Whether the node has settled since the last range change."""
        s = self._switched_ms
        return s is None or ticks_diff(now_ms, s) >= NTC_SETTLE_MS

    def _switch(self, now_ms):
        self.cold = not self.cold
        self._switched_ms = now_ms

    def update(self, adc_uv, now_ms):
        """One (averaged) reading taken in the selected range, settled. Returns degrees C, or
        the last good value (None before the first) when the reading belongs to the other
        range (the range is switched: read again after NTC_SETTLE_MS). Raises OSError for
        an open or shorted sensor."""
        if self.cold:
            if adc_uv >= NTC_OPEN_UV:
                raise OSError("NTC open (%d mV)" % (adc_uv // 1000))
            if adc_uv < NTC_SHORT_UV:
                self._switch(now_ms)  # too warm for the cold range
                return self.temp_c
            t = ntc_c(adc_uv, self.pullup_ohms())
            if t > _TO_HOT_C:
                self._switch(now_ms)
        else:
            if adc_uv < NTC_SHORT_UV:
                raise OSError("NTC short (%d mV)" % (adc_uv // 1000))
            if adc_uv > ADC_LINEAR_MAX_UV:
                self._switch(now_ms)  # too cold for the hot range (or open: the cold range says)
                return self.temp_c
            t = ntc_c(adc_uv, self.pullup_ohms())
            if t < _TO_COLD_C:
                self._switch(now_ms)
        self.temp_c = t
        return t
