"""A stand-in for the ESP32 port's `network`, for tests/test_board_pins.py only: LAN() and
WLAN() record how a board builds them; the test sets what they report (link up or not)."""

STA_IF = 0
AP_IF = 1
PHY_LAN8710 = 0  # the ESP32 port's enum order (modnetwork.h)
PHY_LAN8720 = 1
ETH_INITIALIZED = 0
ETH_STARTED = 1
ETH_STOPPED = 2
ETH_CONNECTED = 3
ETH_DISCONNECTED = 4
ETH_GOT_IP = 5

LANS = []  # one entry per LAN() call: (kwargs, the interface)
WLANS = []
LAN_FAILS = None  # set by the test: LAN() raises OSError(this), as when the PHY is silent


class _Lan:
    def __init__(self):
        self.is_active = False
        self.connected = False  # set by the test: the interface has its IP address
        self.status_value = ETH_STARTED

    def active(self, on=None):
        if on is None:
            return self.is_active
        self.is_active = bool(on)

    def isconnected(self):
        return self.connected

    def status(self):
        return self.status_value


def LAN(**kw):  # noqa: N802 - the port's name
    if LAN_FAILS is not None:
        raise OSError(LAN_FAILS)
    nic = _Lan()
    LANS.append((kw, nic))
    return nic


class WLAN:
    def __init__(self, interface):
        self.interface = interface
        self.is_active = False
        self.connected = False  # set by the test
        self.connects = 0
        self.disconnects = 0
        self.ssid = None
        WLANS.append(self)

    def active(self, on=None):
        if on is None:
            return self.is_active
        self.is_active = bool(on)

    def connect(self, ssid, pw):
        self.connects += 1
        self.ssid = ssid

    def disconnect(self):
        self.disconnects += 1
        self.connected = False

    def isconnected(self):
        return self.connected

    def status(self):
        return 1001

    def config(self, key):
        return self.ssid
