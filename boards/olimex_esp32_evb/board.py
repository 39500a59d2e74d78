"""Olimex ESP32-EVB board: pin map and the HAL objects the core drives (circuits, board
changes and the reasons for every pin in README.md)."""

# Safety first, before any other import can fail or take time: the contactor relay's driver
# goes low (REL1 off, contactor open) and the pilot GPIO low, which the generator turns into
# -12 V (state F, "EVSE not available"). The board's own base pull-downs hold both from
# reset until here (GPIO32: R2 10k at Q1; GPIO12: R55 1k + R56 10k at Q7).
from machine import Pin
from micropython import const

_CONTACTOR = const(32)
_CP_PWM = const(12)

_contactor_pin = Pin(_CONTACTOR, Pin.OUT, value=0)
_cp_pin = Pin(_CP_PWM, Pin.OUT, value=0)

# The parts both ESP32 boards share (boards/esp32_common/esp32parts.py). Imports follow the
# safety lines on purpose.
import esp32parts as parts  # noqa: E402
from net import Net  # noqa: E402 - Ethernet first, Wi-Fi fallback, NTP (net.py)

# -- pin map (GPIO numbers; README.md has the table and the reasons) ----------------------
# Ethernet owns GPIO0 (50 MHz clock in), 18, 19, 21, 22, 23, 25, 26, 27 (net.py); UART0
# (GPIO1/3) is the console; 6-11 are the flash. Every other GPIO already has a job on this
# board; these reuse the ones whose job this firmware does not need.
# Analog inputs are ADC1 only (GPIO32-39): ADC2 cannot be read while Wi-Fi (the fallback) is
# on. GPIO36/39 stay analog: the ESP32 errata pulls their digital input low ~80 ns whenever
# the SAR ADC powers up, which the port's ADC reads do on every read.
_CP_ADC = const(36)  # SENSOR_VP, ADC1_CH0: buffered CP divider (R23 10k pull-up stays)
_NTC_ADC = const(39)  # SENSOR_VN, ADC1_CH3: NTC divider (IR receiver U7 removed)
_PP_ADC = const(35)  # ADC1_CH7: PP node (R13, R15 removed: CAN RX); unmodified: reads open
_NTC_RANGE = const(5)  # CAN TX line: low switches a P-FET that adds the 4.7 kOhm (hot range)
_CONTACTOR_FB = const(34)  # NC mirror contact to GND; R45 10k pull-up (BUT1's jumper)
_RCD_TRIP = const(13)  # 6 mA DC detector output to GND; R21 2.2k pull-up (UEXT SDA)
_RCD_TEST = const(33)  # REL2: its NO contact closes the detector's test circuit
_RS485_TX = const(4)  # UART2 TXD -> transceiver DI (UEXT pin 3)
_RS485_RX = const(16)  # UART2 RXD <- transceiver RO (UEXT pin 5, R18 2.2k pull-up)
# No GPIO is left for DE: an auto-direction transceiver (DE keyed from TXD in hardware).
_SPI_SCK = const(14)  # UEXT SPI on SPI(1) through the GPIO matrix (fine at 1 MHz)
_SPI_MOSI = const(2)
_SPI_MISO = const(15)
_RFID_CS = const(17)  # MFRC522 SDA/NSS (UEXT pin 10, R22 10k pull-up: idle high from reset)

# Input polarities, as wired in README.md. Both fail safe: a broken wire reads as the fault.
_FB_CLOSED_LEVEL = const(1)  # NC mirror contact open (pin pulled high) = main contacts closed
_RCD_TRIP_LEVEL = const(1)  # detector releases its pull-down (or is unplugged) = tripped

# -- control pilot -------------------------------------------------------------------------
# The DevKitC's divider and buffer (CP --R1 100k-- node, R2 21.5k to 3.3 V, R3 16.2k to GND,
# unity-gain buffer on 3.3 V, 100 Ohm to the pin): V_buf = K * CP + V_OFF, K = 0.084573,
# V_OFF = 1.2981 V. GPIO36 also carries the board's R23 10k pull-up to 3.3 V (UEXT RXD),
# which the buffer drives through the 100 Ohm: V_pin = (V_buf + 3.3 V * 100/10k) / 1.01, so
#   K' = K / 1.01 = 0.083736        V_OFF' = (V_OFF + 0.033 V) / 1.01 = 1.3179 V
# +12 V -> 2.323 V, -12 V -> 0.313 V, +-13 V -> 2.407 / 0.229 V: inside the ADC's 11 dB span.
# Inverse in small ints, as on the DevKitC: CP_mV = (V_uV - V_OFF'_uV) // 100 * 11942 // 10000.
_CP_OFF_UV = const(1317929)
_CP_INV_K_X1000 = const(11942)  # 1 / K' = 11.942


def _ntc_range(gpio):
    """The 4.7 kOhm of the NTC's hot range hangs from a P-FET's drain (source at 3.3 V): the
    pin low turns it on (hot range), high turns it off (cold range). A FET, because GPIO5 is
    also the CAN transceiver's TXD input: a floating GPIO5 is not the high impedance the
    cold range's 150 kOhm needs. From reset the gate's pull-up holds the FET off (cold)."""
    pin = Pin(gpio, Pin.OUT, value=0)

    def hot(on):
        pin.value(0 if on else 1)

    return hot


class Board(parts.Esp32Board):
    name = "olimex_esp32_evb"
    # The contactor is switched by REL1 (10 A / 250 VAC contacts on the board) driving its
    # coil; the main contacts, terminals and wiring of this build decide the current.
    max_current_a = 32.0
    phases = 3  # wired for three phases; single-phase sites set "phases" in the config

    def __init__(self):
        pilot = parts.Pilot(_cp_pin, _CP_ADC, _CP_OFF_UV, _CP_INV_K_X1000)
        # GPIO34 is input-only (no internal pulls): the board's R45 10k pulls it up, an
        # external 1 kOhm adds the mirror contact's wetting current.
        contactor = parts.Contactor(_contactor_pin, _CONTACTOR_FB, None, _FB_CLOSED_LEVEL)
        hal = parts.ConnectorHal(pilot, contactor, _RCD_TRIP, _RCD_TRIP_LEVEL, _RCD_TEST,
                                 _PP_ADC)
        self.connectors = [hal]
        super().__init__()  # fs, console_in, uid
        # RS-485 Modbus meter on UART2, auto-direction transceiver: nothing waits in the loop.
        self.uart, _ = parts.rs485_line(2, _RS485_TX, _RS485_RX, None)
        # MFRC522 reader on the UEXT SPI, SPI(1) at 1 MHz. NRSTPD is tied to 3.3 V (no GPIO
        # left): the driver resets the reader with its SoftReset command. board.spi is the
        # pair (SPI, SDA/NSS pin) that evse.rfid.Reader takes.
        self.spi = parts.rfid_spi(1, _SPI_SCK, _SPI_MOSI, _SPI_MISO, _RFID_CS)
        self.rfid_cs = self.spi[1]
        # Hot range at boot (GPIO5 low: the P-FET on).
        self._ntc = parts.NtcReader(_NTC_ADC, _ntc_range(_NTC_RANGE))
        # Ethernet (started here, at boot), the Wi-Fi fallback (config wifi.ssid) and NTP
        # (ntp.host), driven by the MQTT link as on the DevKitC (net.py).
        self.net = Net()
