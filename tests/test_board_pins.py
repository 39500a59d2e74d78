"""The ESP32 boards' board.py and net.py, run as they are on the MicroPython unix port with
stand-ins for `machine` and `network` (tests/esp32_stub) that record every GPIO a board
claims. Each board runs in a MicroPython process of its own with the stand-ins first on its
sys.path; this test process imports neither (no sys.modules patching).

Checked against each board's README (the pin tables and circuits are the reference here):
no GPIO used twice; none the board reserves (flash, console, and on the ESP32-EVB the
Ethernet PHY's RMII, MDC/MDIO and 50 MHz clock pins); no output on an input-only pin; analog
inputs on ADC1 only (ADC2 stops working while Wi-Fi runs); Board() has everything
evse.hal.BoardBase requires; the pilot reads the CP levels its divider puts on the ADC pin;
the NTC switches its two ranges with the right polarity; safe() opens the contactor and
puts the pilot at +12 V; the network's poll() allocates nothing while nothing changes; the
EVB's Ethernet is built with the board's pins and falls back to Wi-Fi and back."""

import json
import os
import subprocess
from collections import Counter

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MICROPYTHON = os.path.join(ROOT, ".venv", "bin", "micropython")
STUB = os.path.join(ROOT, "tests", "esp32_stub")

FLASH = frozenset(range(6, 12))  # GPIO6-11: the module's SPI flash
CONSOLE = frozenset((1, 3))  # UART0: the USB serial console
INPUT_ONLY = frozenset((34, 35, 36, 37, 38, 39))
ADC1 = frozenset(range(32, 40))
# The ESP32-EVB's LAN8710A: REF_CLK in (GPIO0), RMII TXD0/TX_EN/TXD1/RXD0/RXD1/CRS_DV (fixed
# EMAC pins), MDIO 18 and MDC 23 (Olimex ESP32-EVB Rev K2 netlist).
EVB_PHY = frozenset((0, 18, 19, 21, 22, 23, 25, 26, 27))

# The CP measurement both boards share: CP --100k-- node, 21.5k to 3.3 V, 16.2k to GND, a
# unity-gain buffer, 100 Ohm to the pin. The EVB's GPIO36 also has the board's 10k pull-up.
_G = 1 / 100e3 + 1 / 21.5e3 + 1 / 16.2e3
_K = (1 / 100e3) / _G
_V_OFF = 3.3 * (1 / 21.5e3) / _G


def cp_pin_uv(cp_v, pullup_ohms=None, series_ohms=100.0):
    v = _K * cp_v + _V_OFF
    if pullup_ohms:
        r = series_ohms / pullup_ohms
        v = (v + 3.3 * r) / (1 + r)
    return int(round(v * 1e6))


BOARDS = {
    "esp32_devkitc": {
        "reserved": FLASH | CONSOLE,
        "contactor": 27, "cp_pwm": 25, "cp_adc": 36, "cp_pullup": None,
        "ntc_adc": 34, "ntc_range": 14,
        # GPIO14 drives the 4.7 kOhm high for the hot range, floats (input) for the cold one
        "ntc_hot": "p.mode == machine.Pin.OUT and p.level == 1",
    },
    "olimex_esp32_evb": {
        "reserved": FLASH | CONSOLE | EVB_PHY,
        "contactor": 32, "cp_pwm": 12, "cp_adc": 36, "cp_pullup": 10e3,
        "ntc_adc": 39, "ntc_range": 5,
        # GPIO5 low turns on the P-FET that adds the 4.7 kOhm
        "ntc_hot": "p.mode == machine.Pin.OUT and p.level == 0",
    },
}

SCRIPT = r"""
import sys, json, math, time
sys.path[:0] = [%(stub)r, %(board_dir)r, %(common)r, %(firmware)r]
import machine, network, micropython
import board
from evse.hal import BoardBase

out = {}
b = board.Board()
p = b.connectors[0]

# -- what BoardBase requires (docs/boards.md) ----------------------------------------------
problems = []
if not isinstance(b, BoardBase):
    problems.append("Board is not a BoardBase")
for m in ("temp_c", "wdt", "idle", "unix_time", "reset"):
    if getattr(type(b), m) is getattr(BoardBase, m):
        problems.append("%%s() not provided" %% m)
if not (isinstance(b.name, str) and b.name):
    problems.append("name")
if not (isinstance(b.max_current_a, float) and b.max_current_a > 0):
    problems.append("max_current_a")
if b.phases not in (1, 3):
    problems.append("phases")
if not (isinstance(b.connectors, list) and b.connectors):
    problems.append("connectors")
if not isinstance(b.fs, str):
    problems.append("fs")
if not (isinstance(b.uid, str) and b.uid and all(c in "0123456789abcdef" for c in b.uid)):
    problems.append("uid %%r" %% (b.uid,))
for hal in b.connectors:
    for obj, names in ((hal.pilot, ("pwm", "plus12", "minus12", "sample", "duty_read")),
                       (hal.contactor, ("set", "feedback")),
                       (hal, ("rcd_tripped", "rcd_test", "pp_ohms"))):
        for n in names:
            if not callable(getattr(obj, n, None)):
                problems.append("connector member %%s" %% n)
for n in ("write", "any", "readinto", "init"):
    if not callable(getattr(b.uart, n, None)):
        problems.append("uart.%%s" %% n)
for n in ("poll", "resolve", "set_time", "diag"):
    if not callable(getattr(b.net, n, None)):
        problems.append("net.%%s" %% n)
if b.net.ntp_port != 123:
    problems.append("net.ntp_port")
if b.spi is None:
    problems.append("spi")
try:
    out["wdt_timeout"] = b.wdt(2000).timeout
except NotImplementedError:
    problems.append("wdt() raises NotImplementedError")
out["problems"] = problems

# -- the pilot reads what its divider puts on the ADC pin ------------------------------------
cp = machine.ADCS[%(cp_adc)d]
p.pilot.plus12()
cp.uv = %(uv_plus12)d
hi = p.pilot.sample()
out["duty_plus12"] = p.pilot.duty_read()
p.pilot.minus12()
cp.uv = %(uv_minus12)d
lo = p.pilot.sample()
out["duty_minus12"] = p.pilot.duty_read()
out["cp"] = [list(hi), list(lo)]
out["cp_pwm"] = [g for g in machine.PWMS]

# -- the NTC: two ranges, switched with the board's polarity ---------------------------------
ntc = machine.ADCS[%(ntc_adc)d]
range_pin = [None]
temp = [25.0]
def ntc_uv():
    p = range_pin[0]
    hot = %(ntc_hot)s
    t = temp[0] + 273.15
    r = 10000.0 * math.exp(3950.0 * (1.0 / t - 1.0 / 298.15))
    up = 150000.0 * 4700.0 / (150000.0 + 4700.0) if hot else 150000.0
    return int(3300000.0 * r / (r + up))
ntc.source = ntc_uv
for o in machine.ALL_PINS:
    if o.id == %(ntc_range)d:
        range_pin[0] = o
if range_pin[0] is None:
    raise SystemExit("no Pin on the NTC range GPIO %(ntc_range)d (README)")
temps = []
temp[0] = 25.0
temps.append(b.temp_c())  # hot range (from boot)
temp[0] = -30.0
temps.append(b.temp_c())  # past the hot range's span: switches, the last value meanwhile
time.sleep_ms(120)
temps.append(b.temp_c())  # settled in the cold range
temp[0] = 60.0
temps.append(b.temp_c())  # too low for the cold range: back to hot, the last value
time.sleep_ms(120)
temps.append(b.temp_c())
out["temps"] = temps

# -- safe(): contactor open, pilot +12 V ------------------------------------------------------
p.contactor.set(True)
p.pilot.pwm(30000)
b.safe()
con = [o for o in machine.ALL_PINS if o.id == %(contactor)d][0]
out["safe"] = [con.level, machine.PWMS[%(cp_pwm)d].duty]

# -- the network: poll() allocates nothing once up -------------------------------------------
cfg = {"wifi.ssid": "home", "wifi.password": "secret"}
net = b.net
for nic in [x[1] for x in network.LANS]:
    nic.connected = True  # the EVB: Ethernet has its address
net.poll(1000, cfg)  # the DevKitC: joins (connect() issued)
for w in network.WLANS:
    w.connected = True
net.poll(1005, cfg)
net.poll(1010, cfg)
micropython.heap_lock()
up = net.poll(1015, cfg)
micropython.heap_unlock()
out["net_up_locked"] = up

out["claims"] = machine.CLAIMS
out["outputs"] = sorted(machine.OUTPUTS)
out["adcs"] = sorted(machine.ADCS)
out["lans"] = [[k, (v.id if hasattr(v, "id") else v)] for kw, _ in network.LANS
               for k, v in sorted(kw.items())]
out["lan_active"] = [nic.is_active for _, nic in network.LANS]
print("RESULT " + json.dumps(out))
"""


def run_mp(code, tmp_path):
    r = subprocess.run([MICROPYTHON, "-c", code], cwd=str(tmp_path), capture_output=True,
                       text=True, timeout=60)
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")]
    assert r.returncode == 0 and lines, r.stdout[-3000:] + r.stderr[-3000:]
    return json.loads(lines[-1][len("RESULT "):])


def run_board(name, tmp_path):
    spec = BOARDS[name]
    params = {
        "stub": STUB,
        "board_dir": os.path.join(ROOT, "boards", name),
        "common": os.path.join(ROOT, "boards", "esp32_common"),
        "firmware": os.path.join(ROOT, "firmware"),
        "uv_plus12": cp_pin_uv(12.0, spec["cp_pullup"]),
        "uv_minus12": cp_pin_uv(-12.0, spec["cp_pullup"]),
    }
    params.update({k: v for k, v in spec.items() if k != "reserved"})
    return run_mp(SCRIPT % params, tmp_path)


@pytest.fixture(scope="module", params=sorted(BOARDS))
def result(request, tmp_path_factory):
    name = request.param
    return name, run_board(name, tmp_path_factory.mktemp(name))


def board_claims(res):
    """The GPIOs the board's own functions claim: every claim but the Ethernet driver's."""
    lan = Counter(v for k, v in res["lans"] if k in ("mdc", "mdio", "ref_clk", "power",
                                                      "reset"))
    pins = []
    for gpio, _ in res["claims"]:
        if lan[gpio]:
            lan[gpio] -= 1
        else:
            pins.append(gpio)
    return pins


def test_no_gpio_used_twice(result):
    name, res = result
    counts = Counter(gpio for gpio, _ in res["claims"])
    twice = sorted(g for g, n in counts.items() if n > 1)
    assert not twice, "%s: GPIO used twice: %s (claims %s)" % (name, twice, res["claims"])


def test_no_reserved_gpio(result):
    name, res = result
    bad = sorted(set(board_claims(res)) & BOARDS[name]["reserved"])
    assert not bad, "%s uses GPIO the board reserves (flash, console, Ethernet PHY): %s" % (
        name, bad)


def test_inputs_only_and_adc1(result):
    name, res = result
    out_on_input = sorted(set(res["outputs"]) & INPUT_ONLY)
    assert not out_on_input, "%s drives input-only GPIO %s" % (name, out_on_input)
    adc2 = sorted(set(res["adcs"]) - ADC1)
    assert not adc2, "%s reads ADC2 pins %s, unusable while Wi-Fi runs" % (name, adc2)


def test_board_has_what_boardbase_requires(result):
    name, res = result
    assert res["problems"] == [], "%s: %s" % (name, res["problems"])
    assert res.get("wdt_timeout") == 2000


def test_pilot_reads_the_divider(result):
    """+12 V and -12 V on CP, as the board's divider (and, on the EVB, R23) puts them on the
    ADC pin, read back within 50 mV."""
    name, res = result
    (hi_h, hi_l), (lo_h, lo_l) = res["cp"]
    for got, want in ((hi_h, 12000), (hi_l, 12000), (lo_h, -12000), (lo_l, -12000)):
        assert abs(got - want) <= 50, "%s: CP %s mV, expected %s" % (name, res["cp"], want)
    assert res["cp_pwm"] == [BOARDS[name]["cp_pwm"]]
    # duty_read() times the PWM pin itself: constant +12 V reads 100 %, -12 V 0 %
    assert (res["duty_plus12"], res["duty_minus12"]) == (100.0, 0.0), name


def test_ntc_ranges_switch_with_the_board_polarity(result):
    """25 C in the hot range; -30 C after a switch to the cold range; 60 C after a switch
    back (the last value while the node settles). The stand-in ADC puts on the pin what the
    divider gives for the range the board's pin selects: a range pin driven the wrong way
    reads another temperature (or none)."""
    name, res = result
    want = [25.0, 25.0, -30.0, -30.0, 60.0]
    t = res["temps"]
    assert len(t) == len(want) and all(abs(a - b) < 1.0 for a, b in zip(t, want)), (name, t)


def test_safe_opens_the_contactor_and_sets_plus12(result):
    name, res = result
    assert res["safe"] == [0, 65535], (name, res["safe"])


def test_net_poll_allocates_nothing_once_up(result):
    name, res = result
    assert res["net_up_locked"] is True, name


def test_evb_ethernet_pins_and_start(result):
    """network.LAN gets the EVB's PHY: LAN8710A (PHY_LAN8710 = 0) at address 0, MDC 23,
    MDIO 18, the 50 MHz clock into GPIO0 (ref_clk_mode Pin.IN = 1); started at boot."""
    name, res = result
    if name != "olimex_esp32_evb":
        assert res["lans"] == [], name
        return
    assert dict(res["lans"]) == {"mdc": 23, "mdio": 18, "ref_clk": 0, "ref_clk_mode": 1,
                                 "phy_type": 0, "phy_addr": 0}, res["lans"]
    assert res["lan_active"] == [True]


NET_SCRIPT = r"""
import sys, json
sys.path[:0] = [%(stub)r, %(board_dir)r, %(common)r, %(firmware)r]
import network, micropython
import net as netmod

n = netmod.Net()
lan = network.LANS[0][1]
off = {"wifi.ssid": "", "wifi.password": ""}
cfg = {"wifi.ssid": "home", "wifi.password": "pw"}
steps = []

def step(t, c):
    up = n.poll(t, c)
    w = network.WLANS[0] if network.WLANS else None
    steps.append([t, up, n.diag()["via"], len(network.WLANS),
                  w.connects if w else 0, w.is_active if w else False])

step(0, off)  # no address yet
lan.connected = True
step(100, off)  # Ethernet up
lan.connected = False
lan.status_value = network.ETH_DISCONNECTED
step(200, off)  # cable pulled
step(30199, off)  # 29.999 s without Ethernet, no Wi-Fi configured
step(31200, off)  # 31 s: still no Wi-Fi (none configured)
step(31205, cfg)  # Wi-Fi configured: the fallback starts, joining
network.WLANS[0].connected = True
step(31210, cfg)  # on Wi-Fi
micropython.heap_lock()
locked = n.poll(31215, cfg)
micropython.heap_unlock()
lan.connected = True
step(31300, cfg)  # cable back: Wi-Fi off, down for this pass
step(31305, cfg)  # on Ethernet
lan.connected = False
step(31400, cfg)  # lost again
step(61399, cfg)  # 29.999 s: waits for the cable
step(61400, cfg)  # 30 s: Wi-Fi again
print("RESULT " + json.dumps({"steps": steps, "locked": locked, "diag": n.diag(),
                              "lans": len(network.LANS),
                              "disconnects": network.WLANS[0].disconnects}))
"""


def test_evb_net_ethernet_first_wifi_fallback(tmp_path):
    """Ethernet up -> True; lost -> False, and with no wifi.ssid it stays so (no radio
    started); with wifi.ssid, Wi-Fi takes over after 30 s without Ethernet, and gives way
    (radio off, one False so the link reconnects) as soon as Ethernet has its address again.
    The driver is built once, at boot; the Wi-Fi path allocates nothing once up."""
    name = "olimex_esp32_evb"
    res = run_mp(NET_SCRIPT % {"stub": STUB, "board_dir": os.path.join(ROOT, "boards", name),
                               "common": os.path.join(ROOT, "boards", "esp32_common"),
                               "firmware": os.path.join(ROOT, "firmware")}, tmp_path)
    # [t, up, via, WLANs built, connect() calls, radio on]
    assert res["steps"] == [
        [0, False, None, 0, 0, False],
        [100, True, "eth", 0, 0, False],
        [200, False, None, 0, 0, False],
        [30199, False, None, 0, 0, False],
        [31200, False, None, 0, 0, False],
        [31205, False, None, 1, 1, True],
        [31210, True, "wifi", 1, 1, True],
        [31300, False, None, 1, 1, False],
        [31305, True, "eth", 1, 1, False],
        [31400, False, None, 1, 1, False],
        [61399, False, None, 1, 1, False],
        [61400, False, None, 1, 2, True],
    ], res["steps"]
    assert res["locked"] is True
    assert res["lans"] == 1
    assert res["disconnects"] >= 1
    d = res["diag"]
    assert (d["joins"], d["losses"], d["fallbacks"], d["last_status"]) == (2, 2, 2, 4), d
    assert d["error"] is None and d["wifi"]["joins"] == 1, d


NET_FAIL_SCRIPT = r"""
import sys, json
sys.path[:0] = [%(stub)r, %(board_dir)r, %(common)r, %(firmware)r]
import network
network.LAN_FAILS = "esp_eth_driver_install failed"
import net as netmod

n = netmod.Net()
cfg = {"wifi.ssid": "home", "wifi.password": "pw"}
ups = [n.poll(0, cfg), n.poll(29999, cfg), n.poll(30000, cfg)]
network.WLANS[0].connected = True
ups.append(n.poll(30005, cfg))
print("RESULT " + json.dumps({"ups": ups, "diag": n.diag()}))
"""


def test_evb_net_without_ethernet_driver(tmp_path):
    """The PHY does not answer at boot: no exception out of Net(), diag says why, and the
    station still gets online over Wi-Fi after 30 s when wifi.ssid is set."""
    name = "olimex_esp32_evb"
    res = run_mp(NET_FAIL_SCRIPT % {
        "stub": STUB, "board_dir": os.path.join(ROOT, "boards", name),
        "common": os.path.join(ROOT, "boards", "esp32_common"),
        "firmware": os.path.join(ROOT, "firmware")}, tmp_path)
    assert res["ups"] == [False, False, False, True], res
    assert "esp_eth_driver_install failed" in res["diag"]["error"], res["diag"]
    assert res["diag"]["via"] == "wifi"
