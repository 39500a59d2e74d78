"""The HAL parts every ESP32 board here is built from: the pilot's synchronous sampling, the
contactor with its mirror contact, the RCD input and test output, PP, the two-range NTC
reader, the RS-485 line, the clock (RTC <-> unix seconds) and the board duties they share.

Each board's board.py passes its pins and circuit constants (its README.md has the
circuits); nothing here knows a pin number. Frozen by every ESP32 board's manifest.py
(esp32_manifest.py) and copied next to board.py by `make deploy`."""

import binascii
import sys
import time
from array import array
from time import ticks_diff, ticks_us

import machine
from machine import ADC, PWM, SPI, UART, WDT, Pin
from micropython import const

from evse import pilot as _cp
from evse.hal import BoardBase
from evse.rs485 import Rs485
from evse.thermal import NTC_SETTLE_MS, Ntc

if sys.implementation.version < (1, 26, 0):
    # Older esp32 ports start a new PWM channel at 50 % and give duty_u16(65535) a short low
    # pulse every period (boards/esp32_devkitc/README.md, Control pilot): not a clean X1,
    # not a quiet start.
    print("board: MicroPython 1.26 or later required for the pilot PWM")

# -- control pilot -------------------------------------------------------------------------
_PWM_HZ = const(1000)  # IEC 61851-1: 1 kHz nominal, 980-1020 Hz accepted
_DUTY_MAX = const(65535)
# No ADC trigger from the PWM edge in MicroPython, so sample synchronously: poll the PWM pin
# (it stays readable under LEDC on 1.26+) for the edge into a phase, wait the guard, then
# read while the pin stays there, tagging each read with the pin before and after it. The
# median of each phase's clean reads is the level (evse.pilot.levels): edges and one ADC
# spike never set it. At 5 % duty one read fits per 50 us high phase: up to 4 periods.
_CP_LIMIT_US = const(4400)  # evse.pilot.PERIODS_MAX periods + 10 %: the longest sample
_CP_BUF = const(40)  # 2 phases x READS_MAX x PERIODS_MAX

# -- other analog inputs -------------------------------------------------------------------
_VCC_MV = const(3300)  # the rail the PP pull-up and the NTC divider hang from
_ADC_AVG = const(8)  # reads averaged for PP and NTC (both are quasi-static)
_PP_PULLUP_OHMS = const(1000)  # 0.1 % to 3.3 V: 100 Ohm -> 0.30 V ... 4.5 kOhm -> 2.70 V
_PP_OPEN_MV = const(3000)  # ~10 kOhm: no coding resistor (distinct from the 4.5 kOhm limit)

# -- clock ---------------------------------------------------------------------------------
_RTC_VALID_YEAR = const(2024)  # an RTC before this was never set (no NTP yet)
_EPOCH_2000_S = const(946684800)  # 1970-01-01 -> 2000-01-01
# ESP32 MicroPython counts from 2000 (older ports) or 1970: ask the port rather than assume.
EPOCH_S = _EPOCH_2000_S if time.gmtime(0)[0] == 2000 else 0


def set_rtc(unix_s):
    """Set the RTC (UTC) to unix_s (from NTP, evse/ntp.py, through board.net.set_time)."""
    tm = time.gmtime(unix_s - EPOCH_S)
    machine.RTC().datetime((tm[0], tm[1], tm[2], tm[6] + 1, tm[3], tm[4], tm[5], 0))


def adc_read_uv(gpio):
    """The bound read_uv of an ADC1 pin at 11 dB (about 0.15-2.45 V linear). Bound once:
    taking adc.read_uv per read would allocate a bound method each time."""
    return ADC(Pin(gpio), atten=ADC.ATTN_11DB).read_uv


def _avg_uv(read_uv):
    s = 0
    for _ in range(_ADC_AVG):
        s += read_uv()
    return s // _ADC_AVG


class Pilot:
    """CP generator (LEDC PWM into the +-12 V op-amp) and the synchronous CP measurement.

    `pin`: the PWM output, already driven low (the generator's -12 V); `adc_gpio`: the
    buffered CP divider; the divider's inverse as CP_mV = (V_uV - off_uv) // 100 *
    inv_k_x1000 // 10000, every step a small int so nothing reaches the heap."""

    def __init__(self, pin, adc_gpio, off_uv, inv_k_x1000):
        # The pin is already low, so attaching LEDC at duty 0 keeps the line at -12 V
        # (1.26+: the channel starts at the given duty, not at 50 %).
        self._pwm = PWM(pin, freq=_PWM_HZ, duty_u16=0)
        self._level = pin  # the pin is input/output: calling it reads the PWM output level
        self._duty = 0
        self._read = adc_read_uv(adc_gpio)
        self._off_uv = off_uv
        self._inv_k = inv_k_x1000
        self._vals = array("i", [0] * _CP_BUF)
        self._tags = bytearray(_CP_BUF)
        self._scratch = array("i", [0] * _CP_BUF)
        self._high = self._low = 0
        self.reads = 0  # clean reads in the last sample
        self.read_us = 0  # one tagged read (pin, read_uv, pin), measured at constant output

    def pwm(self, duty_u16):
        self._pwm.duty_u16(duty_u16)
        self._duty = duty_u16

    def plus12(self):
        # 65535 is a steady high from 1.26 on (a 100 % LEDC duty); 1.23-1.25 clamp it to
        # 65535/65536, a ~15 ns low pulse every period (DevKitC README, Control pilot).
        self.pwm(_DUTY_MAX)

    def minus12(self):
        self.pwm(0)

    def duty_read(self):
        """The PWM pin's duty in %: the share of polls finding it high over two whole
        periods (2 ms at 1 kHz; a few hundred polls, about 0.5 % resolution). For the
        self-test, not the control loop."""
        lv = self._level
        high = n = 0
        t0 = ticks_us()
        while ticks_diff(ticks_us(), t0) < 2000:
            high += lv()
            n += 1
        return 100.0 * high / n if n else None

    def sample(self):
        """(high_mv, low_mv) of the CP line, within _CP_LIMIT_US. The reads go into arrays
        allocated once; the only allocations are the two small result tuples (evse.pilot's
        levels() and this return)."""
        vals = self._vals
        tags = self._tags
        read = self._read
        pin = self._level
        off = self._off_uv
        ik = self._inv_k
        d = self._duty
        pwm = 0 < d < _DUTY_MAX
        n = 0
        t0 = ticks_us()
        if not pwm:
            for _ in range(_cp.READS_MAX):
                b = pin()
                v = read()
                tags[n] = b | (pin() << 1)
                vals[n] = (v - off) // 100 * ik // 10000
                n += 1
            self.read_us = ticks_diff(ticks_us(), t0) // _cp.READS_MAX
        else:
            seen = pin()
            fresh = False
            for level in (1, 0):
                want = _cp.TAG_HIGH if level else _cp.TAG_LOW
                got = 0
                while got < _cp.READS_MIN and ticks_diff(ticks_us(), t0) < _CP_LIMIT_US:
                    if not (seen == level and fresh):
                        # Wait for the pin to enter this phase: then the edge time is known.
                        if seen == level:
                            while pin() == level and ticks_diff(ticks_us(), t0) < _CP_LIMIT_US:
                                pass
                        while pin() != level and ticks_diff(ticks_us(), t0) < _CP_LIMIT_US:
                            pass
                        seen = level
                        fresh = True
                    g = ticks_us()
                    while ticks_diff(ticks_us(), g) < _cp.GUARD_US:
                        pass  # the CP is still slewing after the edge
                    while got < _cp.READS_MAX:
                        b = pin()
                        v = read()
                        a = pin()
                        if b | (a << 1) != want:
                            seen = a  # the phase ended during this read: dropped
                            fresh = a != level
                            break
                        vals[n] = (v - off) // 100 * ik // 10000
                        tags[n] = want
                        n += 1
                        got += 1
                    else:
                        fresh = False  # this phase goes on: the next look waits for an edge
        self.reads = n
        self._high, self._low = _cp.levels(vals, tags, n, pwm, self._high, self._low,
                                           self._scratch)
        return self._high, self._low


class Contactor:
    """Coil driver output and the NC mirror contact (IEC 60947-4-1 Annex F)."""

    def __init__(self, pin, fb_gpio, fb_pull, closed_level):
        self._out = pin
        self._fb = Pin(fb_gpio, Pin.IN, fb_pull)
        self._closed = closed_level

    def set(self, on):
        self._out.value(1 if on else 0)

    def feedback(self):
        """True when the main contacts are closed (the mirror contact has opened)."""
        return self._fb.value() == self._closed


class ConnectorHal:
    """One connector: pilot, contactor, the RCD's trip input and test output, PP."""

    def __init__(self, pilot, contactor, rcd_trip_gpio, rcd_trip_level, rcd_test_gpio,
                 pp_gpio):
        self.pilot = pilot
        self.contactor = contactor
        self._rcd = Pin(rcd_trip_gpio, Pin.IN)  # the pull-up is external (README.md)
        self._rcd_level = rcd_trip_level
        self._rcd_out = Pin(rcd_test_gpio, Pin.OUT, value=0)
        self._pp_read = adc_read_uv(pp_gpio)

    def rcd_tripped(self):
        return self._rcd.value() == self._rcd_level

    def rcd_test(self, on):
        self._rcd_out.value(1 if on else 0)

    def pp_ohms(self):
        """PP-PE resistance from the 1 kOhm pull-up divider; None with no resistor."""
        mv = _avg_uv(self._pp_read) // 1000
        if mv >= _PP_OPEN_MV:
            return None
        return _PP_PULLUP_OHMS * mv // (_VCC_MV - mv)


class NtcReader:
    """The two-range NTC divider (evse.thermal.Ntc: 150 kOhm alone, or with 4.7 kOhm in
    parallel) on an ADC pin. `hot(on)` switches the 4.7 kOhm in (True) or out (False); the
    board decides how (a GPIO driving it or floating, a transistor...) and builds it in the
    hot range, where evse.thermal.Ntc starts."""

    def __init__(self, adc_gpio, hot):
        self._read = adc_read_uv(adc_gpio)
        self._hot = hot
        self._ntc = Ntc()
        self._cold = False

    def temp_c(self):
        """NTC temperature in the range the last reading chose. Raises OSError on an open or
        shorted sensor, which the station treats as a sensor fault and stops charging
        (thermal limit 0 A). Waits only before the first reading."""
        ntc = self._ntc
        for _ in range(2):
            now = time.ticks_ms()
            if not ntc.settled(now, ticks_diff):
                if ntc.temp_c is not None:
                    return ntc.temp_c  # the node is settling after a range change
                time.sleep_ms(NTC_SETTLE_MS)
                now = time.ticks_ms()
            t = ntc.update(_avg_uv(self._read), now)
            if ntc.cold != self._cold:
                self._cold = ntc.cold
                self._hot(not ntc.cold)
            if t is not None:
                return t
        raise OSError("NTC reading out of both ranges")


def rs485_line(uart_id, tx, rx, de_gpio):
    """The meter's RS-485 line, 9600 8N1, and its DE pin (None with an auto-direction
    transceiver, DE keyed from TXD in hardware: then the UART is used as it is).
    MicroPython has no RS-485 mode on ESP32, so evse.rs485 drives DE around every frame
    (high, write, flush, low). timeout=0: reads never block the control loop."""
    de = None if de_gpio is None else Pin(de_gpio, Pin.OUT, value=0)  # listen until a frame
    uart = UART(uart_id, baudrate=9600, bits=8, parity=None, stop=1, tx=tx, rx=rx, timeout=0,
                rxbuf=512)
    return (uart if de is None else Rs485(uart, de)), de


def rfid_spi(spi_id, sck, mosi, miso, cs):
    """The MFRC522 reader's SPI bus and its SDA/NSS pin (idle high): the pair board.spi is.
    1 MHz is far below the reader's 10 MHz limit, for long flying leads. The esp32 port has
    SPI(1) (HSPI, IDF's SPI2) and SPI(2) (VSPI, SPI3); pins other than a bus's IO_MUX pins go
    through the GPIO matrix, fine at this speed (docs/boards.md, "The RFID reader")."""
    cs_pin = Pin(cs, Pin.OUT, value=1)
    spi = SPI(spi_id, baudrate=1000000, polarity=0, phase=0, sck=Pin(sck), mosi=Pin(mosi),
              miso=Pin(miso))
    return spi, cs_pin


class Esp32Board(BoardBase):
    """What every ESP32 board does the same way: flash root, serial console, unique id,
    watchdog, idle, the RTC as unix time, reset, and keeping an OTA image that booted."""

    def __init__(self):
        self.fs = "/"
        self.console_in = sys.stdin  # the service console on the USB serial port
        self.uid = binascii.hexlify(machine.unique_id()).decode()

    def temp_c(self):
        return self._ntc.temp_c()  # NtcReader, built by the board

    def wdt(self, timeout_ms):
        return WDT(timeout=timeout_ms)  # once started it cannot be stopped: only fed

    def ready(self):
        """The first control-loop pass is done: keep an OTA image that got here."""
        try:
            from esp32 import Partition

            Partition.mark_app_valid_cancel_rollback()
        except (ImportError, OSError):
            pass  # not booted from an OTA slot, or rollback not enabled in the bootloader

    def idle(self, ms):
        time.sleep_ms(ms)

    def unix_time(self):
        """Seconds since 1970, or None while the RTC is unset (better no timestamp). NTP
        (net.set_time(), from evse/ntp.py) sets the RTC to 2024 or later, as does an RTC kept
        across a reset."""
        t = time.time()
        if time.gmtime(t)[0] < _RTC_VALID_YEAR:
            return None
        return t + EPOCH_S

    def reset(self):
        machine.reset()
