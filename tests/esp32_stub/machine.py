"""A stand-in for the ESP32 port's `machine`, for tests/test_board_pins.py only: it runs a
board's board.py on the MicroPython unix port (in a process of its own, with this directory
first on sys.path) and records every GPIO the board claims and how. No I/O."""

CLAIMS = []  # one (gpio, what) per Pin() built and per UART tx/rx pin: a GPIO twice = a clash
ALL_PINS = []  # every Pin object built, in order
ADCS = {}  # gpio -> the ADC on it
PWMS = {}  # gpio -> the PWM on it
UARTS = []
SPIS = []
OUTPUTS = set()  # GPIOs ever set to an output mode


class Pin:
    IN = 1  # the ESP32 port: GPIO_MODE_INPUT
    OUT = 3  # GPIO_MODE_INPUT_OUTPUT
    OPEN_DRAIN = 7
    PULL_UP = 2
    PULL_DOWN = 1

    def __init__(self, gpio, mode=-1, pull=-1, *, value=None):
        CLAIMS.append((gpio, "Pin"))
        ALL_PINS.append(self)
        self.id = gpio
        self.mode = None
        self.pull = None
        self.level = 0
        self.init(mode, pull, value=value)

    def init(self, mode=-1, pull=-1, *, value=None):
        if mode != -1:
            self.mode = mode
            if mode in (Pin.OUT, Pin.OPEN_DRAIN):
                OUTPUTS.add(self.id)
        if pull != -1:
            self.pull = pull
        if value is not None:
            self.level = 1 if value else 0

    def value(self, v=None):
        if v is None:
            return self.level
        self.level = 1 if v else 0

    def __call__(self, v=None):
        return self.value(v)

    def on(self):
        self.level = 1

    def off(self):
        self.level = 0


class ADC:
    ATTN_0DB = 0
    ATTN_11DB = 3

    def __init__(self, pin, atten=None):
        ADCS[pin.id] = self
        self.pin = pin
        self.atten = atten
        self.uv = 0  # what read_uv() returns, unless `source` is set
        self.source = None

    def read_uv(self):
        return self.uv if self.source is None else self.source()


class PWM:
    def __init__(self, pin, freq=None, duty_u16=None):
        PWMS[pin.id] = self
        self.pin = pin
        self.freq = freq
        self.duty = 0
        if duty_u16 is not None:
            self.duty_u16(duty_u16)

    def duty_u16(self, d=None):
        if d is None:
            return self.duty
        self.duty = d
        self.pin.level = 1 if d >= 65535 else 0  # a constant output reads back its level


class UART:
    def __init__(self, uart_id, baudrate=None, bits=None, parity=None, stop=None, tx=None,
                 rx=None, timeout=None, rxbuf=None):
        for gpio in (tx, rx):
            if gpio is not None:
                CLAIMS.append((gpio, "UART%d" % uart_id))
                if gpio == tx:
                    OUTPUTS.add(gpio)
        self.id = uart_id
        self.tx = tx
        self.rx = rx
        self.baudrate = baudrate
        UARTS.append(self)

    def init(self, **kw):
        pass

    def write(self, buf):
        return len(buf)

    def flush(self):
        pass

    def any(self):
        return 0

    def readinto(self, buf):
        return None


class SPI:
    def __init__(self, spi_id, baudrate=None, polarity=0, phase=0, sck=None, mosi=None,
                 miso=None):
        self.id = spi_id
        self.pins = (sck, mosi, miso)  # Pin objects: their claims are counted already
        for p in (sck, mosi):
            if p is not None:
                OUTPUTS.add(p.id)
        SPIS.append(self)


class WDT:
    def __init__(self, timeout=None):
        self.timeout = timeout

    def feed(self):
        pass


class RTC:
    def datetime(self, t=None):
        return t


def unique_id():
    return b"\x24\x0a\xc4\x12\x34\x56"


def reset():
    raise SystemExit("machine.reset()")
