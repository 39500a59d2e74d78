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

# The parts both ESP32 boards share (boards/esp32_common/esp32parts.py; it also warns below
# MicroPython 1.26, which the pilot PWM needs: README.md, Control pilot). Imports follow the
# safety lines on purpose.
import esp32parts as parts  # noqa: E402
from net import Net  # noqa: E402 - Wi-Fi station and NTP (net.py)

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

# The PWM, the synchronous sampling and the PP, NTC and RCD reads are in esp32parts.py. The
# NTC's two-range divider and its conversion are in evse/thermal.py (Ntc), shared with the
# simulated board: 150 kOhm always, + 4.7 kOhm from GPIO14 for the hot range.


def _ntc_range(gpio):
    """GPIO14 drives the 4.7 kOhm high (hot range) or floats (cold range). pull=None: an
    internal pull would load the cold range's 150 kOhm while the pin is an input."""
    pin = Pin(gpio, Pin.OUT, None, value=1)

    def hot(on):
        if on:
            pin.init(Pin.OUT, value=1)
        else:
            pin.init(Pin.IN)  # high impedance: 150 kOhm alone

    return hot


class Board(parts.Esp32Board):
    name = "esp32_devkitc"
    max_current_a = 32.0  # what the contactor, terminals and wiring of this build are rated for
    phases = 3  # wired for three phases; single-phase sites set "phases" in the config

    def __init__(self):
        pilot = parts.Pilot(_cp_pin, _CP_ADC, _CP_OFF_UV, _CP_INV_K_X1000)
        # The internal pull-up (~45 kOhm) is backed by an external 1 kOhm for wetting current.
        contactor = parts.Contactor(_contactor_pin, _CONTACTOR_FB, Pin.PULL_UP,
                                    _FB_CLOSED_LEVEL)
        # GPIO35 has no internal pulls: the RCD's pull-up is external.
        hal = parts.ConnectorHal(pilot, contactor, _RCD_TRIP, _RCD_TRIP_LEVEL, _RCD_TEST,
                                 _PP_ADC)
        self.connectors = [hal]
        super().__init__()  # fs, console_in, uid
        # RS-485 Modbus meter on UART2, DE on GPIO4 (none with _RS485_AUTO_DIRECTION).
        self.uart, de = parts.rs485_line(2, _RS485_TX, _RS485_RX,
                                         None if _RS485_AUTO_DIRECTION else _RS485_DE)
        if de is not None:
            self.uart_de = de
        # MFRC522 reader on SPI(2), 1 MHz; NRSTPD high = run. board.spi is the pair (SPI,
        # SDA/NSS pin) that evse.rfid.Reader takes.
        self.rfid_rst = Pin(_RFID_RST, Pin.OUT, value=1)
        self.spi = parts.rfid_spi(2, _SPI_SCK, _SPI_MOSI, _SPI_MISO, _RFID_CS)
        self.rfid_cs = self.spi[1]
        self._led = Pin(_LED, Pin.OUT, value=0)
        # Hot range at boot: GPIO14 drives the 4.7 kOhm high.
        self._ntc = parts.NtcReader(_NTC_ADC, _ntc_range(_NTC_RANGE))
        # Wi-Fi station (config wifi.ssid / wifi.password) and NTP (ntp.host), driven by the
        # MQTT link: net.poll() every loop; names resolved on the link's lookup thread
        # (net.resolve), the RTC set by the firmware's NTP client (net.set_time).
        self.net = Net()

    def led(self, state):
        self._led.value(1 if state else 0)

    def ready(self):
        """The first control-loop pass is done: LED on, and keep an OTA image that got here."""
        self._led.value(1)
        super().ready()
