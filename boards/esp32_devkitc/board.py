"""ESP32-DevKitC board: pin map and the HAL objects the core drives (circuits in README.md)."""

# Safety first, before any other import can fail or take time: the contactor output goes low
# (open) and the pilot GPIO low, which the generator turns into -12 V (state F, "EVSE not
# available"). The external pull-downs (README.md) hold the same levels from reset until here.
from machine import Pin
from micropython import const

_CONTACTOR = const(27)
_CP_PWM = const(25)

_contactor_pin = Pin(_CONTACTOR, Pin.OUT, value=0)
_cp_pin = Pin(_CP_PWM, Pin.OUT, value=0)

import binascii  # noqa: E402 - imports follow the safety lines on purpose
import sys  # noqa: E402
import time  # noqa: E402
from array import array  # noqa: E402
from time import ticks_diff, ticks_us  # noqa: E402

import machine  # noqa: E402
from machine import ADC, PWM, SPI, UART, WDT  # noqa: E402
from evse import pilot as _cp  # noqa: E402
from evse.hal import BoardBase  # noqa: E402
from evse.rs485 import Rs485  # noqa: E402
from evse.thermal import NTC_SETTLE_MS, Ntc  # noqa: E402
from net import Net  # noqa: E402 - Wi-Fi station and NTP (net.py)

if sys.implementation.version < (1, 26, 0):
    # Older esp32 ports start a new PWM channel at 50 % and give duty_u16(65535) a short low
    # pulse every period (README.md, Control pilot): not a clean X1, not a quiet start.
    print("board: MicroPython 1.26 or later required for the pilot PWM")

# -- pin map (GPIO numbers; README.md has the table) --------------------------------------
# Analog inputs are ADC1 only (GPIO32-39): ADC2 cannot be read while Wi-Fi is on.
_CP_ADC = const(36)  # SENSOR_VP, ADC1_CH0: buffered CP measurement divider
_PP_ADC = const(39)  # SENSOR_VN, ADC1_CH3: PP node, 1 kOhm pull-up to 3.3 V
_NTC_ADC = const(34)  # ADC1_CH6: NTC divider
_NTC_RANGE = const(14)  # 4.7 kOhm to the NTC node: driven high = hot range, input = cold
_CONTACTOR_FB = const(32)  # NC mirror contact to GND, pulled up
_RCD_TRIP = const(35)  # 6 mA DC detector output; input-only pin, pull-up is external
_RCD_TEST = const(26)  # test-winding driver: high injects the test current
_LED = const(2)  # strapping pin: the LED to GND keeps it low, as download mode needs
_RS485_TX = const(33)  # UART2 TXD -> transceiver DI
_RS485_RX = const(13)  # UART2 RXD <- transceiver RO
_RS485_DE = const(4)  # transceiver DE + /RE tied: high = drive the bus
# 1: an auto-direction transceiver (DE keyed from TXD in hardware): no DE pin to drive.
_RS485_AUTO_DIRECTION = const(0)
_SPI_SCK = const(18)  # VSPI = SPI(2) native pins
_SPI_MOSI = const(23)
_SPI_MISO = const(19)
_RFID_CS = const(21)  # MFRC522 SDA/NSS
_RFID_RST = const(22)  # MFRC522 NRSTPD: low = hard power-down

# Input polarities, as wired in README.md. Both fail safe: a broken wire reads as the fault.
_FB_CLOSED_LEVEL = const(1)  # NC mirror contact open (pin pulled high) = main contacts closed
_RCD_TRIP_LEVEL = const(1)  # detector releases its pull-down (or is unplugged) = tripped

# -- control pilot -------------------------------------------------------------------------
_PWM_HZ = const(1000)  # IEC 61851-1: 1 kHz nominal, 980-1020 Hz accepted
_DUTY_MAX = const(65535)

# CP measurement: CP --R1 100k-- node, node --R2 21.5k-- 3.3 V, node --R3 16.2k-- GND, node
# -> unity-gain buffer on 3.3 V (its output cannot leave the ADC's rails) -> GPIO36.
# Superposition: V_adc = K * CP + V_OFF, with G = 1/R1 + 1/R2 + 1/R3 = 118.24 uS,
#   K = (1/R1) / G = 0.084573        V_OFF = 3.3 V * (1/R2) / G = 1.2981 V
# so +12 V -> 2.313 V, -12 V -> 0.283 V and +-13 V -> 2.398 / 0.199 V: all inside the span
# the ESP32 ADC reads linearly at 11 dB (about 0.15-2.45 V).
# Inverse, in integers so nothing reaches the heap: CP_mV = (V_uV - V_OFF_uV) / K / 1000,
# computed as ((V_uV - V_OFF_uV) // 100) * (1000 / K) // 10000; every step is a small int.
_CP_OFF_UV = const(1298100)
_CP_INV_K_X1000 = const(11824)  # 1 / K = 11.824

# No ADC trigger from the PWM edge in MicroPython, so sample synchronously: poll the PWM pin
# (GPIO25 stays readable under LEDC on 1.26+) for the edge into a phase, wait the guard, then
# read while the pin stays there, tagging each read with the pin before and after it. The
# median of each phase's clean reads is the level (evse.pilot.levels): edges and one ADC
# spike never set it. At 5 % duty one read fits per 50 us high phase: up to 4 periods.
_CP_LIMIT_US = const(4400)  # evse.pilot.PERIODS_MAX periods + 10 %: the longest sample
_CP_BUF = const(40)  # 2 phases x READS_MAX x PERIODS_MAX

# -- other analog inputs -------------------------------------------------------------------
_VCC_MV = const(3300)  # the rail the PP pull-up and NTC divider hang from
_ADC_AVG = const(8)  # reads averaged for PP and NTC (both are quasi-static)
_PP_PULLUP_OHMS = const(1000)  # 0.1 % to 3.3 V: 100 Ohm -> 0.30 V ... 4.5 kOhm -> 2.70 V
_PP_OPEN_MV = const(3000)  # ~10 kOhm: no coding resistor (distinct from the 4.5 kOhm limit)
# The NTC's two-range divider and its conversion are in evse/thermal.py (Ntc), shared with
# the simulated board: 150 kOhm always, + 4.7 kOhm from GPIO14 for the hot range.

_RTC_VALID_YEAR = const(2024)  # an RTC before this was never set (no NTP yet)
_EPOCH_2000_S = const(946684800)  # 1970-01-01 -> 2000-01-01


def _cp_mv(adc_uv):
    return (adc_uv - _CP_OFF_UV) // 100 * _CP_INV_K_X1000 // 10000


def _avg_uv(read_uv):
    s = 0
    for _ in range(_ADC_AVG):
        s += read_uv()
    return s // _ADC_AVG


def _avg_mv(read_uv):
    return _avg_uv(read_uv) // 1000


class Pilot:
    """CP generator (LEDC PWM into the +-12 V op-amp) and the synchronous CP measurement."""

    def __init__(self, pin):
        # The pin is already low, so attaching LEDC at duty 0 keeps the line at -12 V
        # (1.26+: the channel starts at the given duty, not at 50 %).
        self._pwm = PWM(pin, freq=_PWM_HZ, duty_u16=0)
        self._level = pin  # Pin(25) is input/output: calling it reads the PWM output level
        self._duty = 0
        # Bound once: taking adc.read_uv per sample would allocate a bound method each time.
        self._read = ADC(Pin(_CP_ADC), atten=ADC.ATTN_11DB).read_uv
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
        # 65535/65536, a ~15 ns low pulse every period (README.md, Control pilot).
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
        """(high_mv, low_mv) of the CP line; allocates nothing. Up to _CP_LIMIT_US."""
        vals = self._vals
        tags = self._tags
        read = self._read
        pin = self._level
        d = self._duty
        pwm = 0 < d < _DUTY_MAX
        n = 0
        t0 = ticks_us()
        if not pwm:
            for _ in range(_cp.READS_MAX):
                b = pin()
                v = read()
                tags[n] = b | (pin() << 1)
                vals[n] = _cp_mv(v)
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
                        vals[n] = _cp_mv(v)
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

    def __init__(self, pin):
        self._out = pin
        # The internal pull-up (~45 kOhm) is backed by an external 1 kOhm for wetting current.
        self._fb = Pin(_CONTACTOR_FB, Pin.IN, Pin.PULL_UP)

    def set(self, on):
        self._out.value(1 if on else 0)

    def feedback(self):
        """True when the main contacts are closed (the mirror contact has opened)."""
        return self._fb.value() == _FB_CLOSED_LEVEL


class ConnectorHal:
    def __init__(self):
        self.pilot = Pilot(_cp_pin)
        self.contactor = Contactor(_contactor_pin)
        self._rcd = Pin(_RCD_TRIP, Pin.IN)  # GPIO35 has no internal pulls
        self._rcd_out = Pin(_RCD_TEST, Pin.OUT, value=0)
        self._pp_read = ADC(Pin(_PP_ADC), atten=ADC.ATTN_11DB).read_uv

    def rcd_tripped(self):
        return self._rcd.value() == _RCD_TRIP_LEVEL

    def rcd_test(self, on):
        self._rcd_out.value(1 if on else 0)

    def pp_ohms(self):
        """PP-PE resistance from the 1 kOhm pull-up divider; None with no resistor."""
        mv = _avg_mv(self._pp_read)
        if mv >= _PP_OPEN_MV:
            return None
        return _PP_PULLUP_OHMS * mv // (_VCC_MV - mv)


class Board(BoardBase):
    name = "esp32_devkitc"
    max_current_a = 32.0  # what the contactor, terminals and wiring of this build are rated for
    phases = 3  # wired for three phases; single-phase sites set "phases" in the config

    def __init__(self):
        self.connectors = [ConnectorHal()]
        self.fs = "/"
        self.console_in = sys.stdin  # the service console on the USB serial port
        self.uid = binascii.hexlify(machine.unique_id()).decode()
        # RS-485 Modbus meter, 9600 8N1. MicroPython has no RS-485 mode on ESP32, so
        # evse.rs485 drives DE around every frame (high, write, flush, low); with an
        # auto-direction transceiver (_RS485_AUTO_DIRECTION) the UART is used as it is.
        # timeout=0: reads never block the control loop.
        if not _RS485_AUTO_DIRECTION:
            self.uart_de = Pin(_RS485_DE, Pin.OUT, value=0)  # listen until a frame is sent
        uart = UART(
            2,
            baudrate=9600,
            bits=8,
            parity=None,
            stop=1,
            tx=_RS485_TX,
            rx=_RS485_RX,
            timeout=0,
            rxbuf=512,
        )
        self.uart = uart if _RS485_AUTO_DIRECTION else Rs485(uart, self.uart_de)
        # MFRC522 reader: 1 MHz is far below its 10 MHz limit, for long flying leads.
        self.rfid_cs = Pin(_RFID_CS, Pin.OUT, value=1)
        self.rfid_rst = Pin(_RFID_RST, Pin.OUT, value=1)
        self.spi = SPI(
            2,
            baudrate=1000000,
            polarity=0,
            phase=0,
            sck=Pin(_SPI_SCK),
            mosi=Pin(_SPI_MOSI),
            miso=Pin(_SPI_MISO),
        )
        self._led = Pin(_LED, Pin.OUT, value=0)
        self._ntc_read = ADC(Pin(_NTC_ADC), atten=ADC.ATTN_11DB).read_uv
        # Hot range at boot: GPIO14 drives the 4.7 kOhm high. pull=None: an internal pull
        # would load the cold range's 150 kOhm when the pin is an input.
        self._ntc_range = Pin(_NTC_RANGE, Pin.OUT, None, value=1)
        self._ntc = Ntc()
        self._ntc_cold = False
        # ESP32 MicroPython counts from 2000; ask the port rather than assume it.
        self._epoch_s = _EPOCH_2000_S if time.gmtime(0)[0] == 2000 else 0
        # Wi-Fi station (config wifi.ssid / wifi.password) and NTP (ntp.host), driven by the
        # MQTT link: net.poll() every loop; names resolved on the link's lookup thread
        # (net.resolve), the RTC set by the firmware's NTP client (net.set_time).
        self.net = Net()

    def temp_c(self):
        """NTC temperature in the range the last reading chose (evse.thermal.Ntc). Raises
        OSError on an open or shorted sensor, which the station treats as a sensor fault
        and stops charging (thermal limit 0 A). Waits only before the first reading."""
        ntc = self._ntc
        for _ in range(2):
            now = time.ticks_ms()
            if not ntc.settled(now, ticks_diff):
                if ntc.temp_c is not None:
                    return ntc.temp_c  # the node is settling after a range change
                time.sleep_ms(NTC_SETTLE_MS)
                now = time.ticks_ms()
            t = ntc.update(_avg_uv(self._ntc_read), now)
            if ntc.cold != self._ntc_cold:
                self._ntc_cold = ntc.cold
                if ntc.cold:
                    self._ntc_range.init(Pin.IN)  # high impedance: 150 kOhm alone
                else:
                    self._ntc_range.init(Pin.OUT, value=1)
            if t is not None:
                return t
        raise OSError("NTC reading out of both ranges")

    def wdt(self, timeout_ms):
        return WDT(timeout=timeout_ms)  # once started it cannot be stopped: only fed

    def led(self, state):
        self._led.value(1 if state else 0)

    def ready(self):
        """The first control-loop pass is done: LED on, and keep an OTA image that got here."""
        self._led.value(1)
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
        return t + self._epoch_s

    def reset(self):
        machine.reset()
