"""A station that runs for weeks: ticks_ms wraps at 2^30 ms on the ESP32 (12.4 days) and
ticks_diff is right only within 2^29 ms (6.2 days). Every stored time must still work
after a week. CPython, fake board, the clock stepped a minute at a time and started a
minute before the wrap (fakes.Clock wraps as the ESP32 does).

Each test names the break that turns it red."""

import json
import time

from evse import modbus
from evse.api import Api
from evse.link import Link
from evse.mqtt import CONNECTED, DISCONNECTED
from evse.station import Station
from fakes import Clock, FakeBoard, NoLink, SerialLine

START = 2**30 - 60000  # ticks a minute before the wrap
WEEK_MS = 7 * 24 * 3600 * 1000
MINUTE = 60000


def rig(tmp_path, board=None, **kw):
    board = board or FakeBoard(str(tmp_path))
    st = Station(board, now=START, **kw)
    clk = Clock(st)
    clk.run(50)  # the boot RCD self-test
    return st, board.connectors[0], clk


def charge(hal, clk):
    hal.ev = "B"
    clk.run(50)
    hal.ev = "C"
    clk.run(300)
    assert hal.contactor.on


def cmd(api, now, **body):
    r = api.handle(json.dumps(body).encode(), now)
    assert r["ok"], r
    return r


def test_a_raise_after_a_week_at_one_duty_comes_within_5_s(tmp_path):
    """Break: drop the age cap on _duty_ms -> the raise is held back for days."""
    st, hal, clk = rig(tmp_path)
    st.board.temp = 65.0  # above thermal.derate_c: 10 A
    charge(hal, clk)
    clk.run(2000)
    c = st.connectors[0]
    assert c.limit_a == 10.0 and c.limit_by == "thermal"
    low = hal.pilot.duty
    clk.run(WEEK_MS, step=MINUTE)
    assert hal.contactor.on and hal.pilot.duty == low  # a week at the same duty
    st.board.temp = 25.0
    clk.run(1100)  # the sensor is read once a second
    assert c.limit_a == 32.0
    clk.run(5000)  # reductions at once, increases after 5 s: by now it is up
    assert hal.pilot.duty > low


def test_a_fault_latched_for_a_week_still_lets_the_unplug_be_seen(tmp_path):
    """After its 300 ms F pulse a latched fault drives +12 V so the unplug that clears it
    can be read. Break: drop the age cap on _fault_ms -> -12 V again after 6.2 days, the
    unplug unseen, the station stuck Faulted."""
    st, hal, clk = rig(tmp_path)
    hal.diode = False  # no EV diode: EVCommunicationError, cleared by unplugging
    hal.ev = "B"
    clk.run(100)
    hal.ev = "C"
    clk.run(500)
    c = st.connectors[0]
    assert c.fault == "EVCommunicationError" and hal.pilot.mode == "+12"
    clk.run(WEEK_MS, step=MINUTE)
    assert hal.pilot.mode == "+12" and c.state == "Faulted"
    hal.ev = "A"
    clk.run(100)
    assert c.fault is None and c.state == "Available"


def test_a_weld_after_a_week_idle_is_seen_at_once(tmp_path):
    """Break: drop the age cap on _contactor_ms -> a week after the last switching the
    feedback check reads 'just switched' and a welded contactor goes unseen for days."""
    st, hal, clk = rig(tmp_path)
    charge(hal, clk)
    hal.ev = "A"
    clk.run(100)
    assert not hal.contactor.on
    clk.run(WEEK_MS, step=MINUTE)
    hal.contactor.welded = True  # the mirror contact now reads closed
    clk.run(500)
    c = st.connectors[0]
    assert c.fault == "PowerSwitchFailure", c.fault


def test_a_ttl_of_seven_days_lasts_seven_days(tmp_path):
    """The longest TTL the API takes is 7 days, past ticks_diff's range. Break: store the
    expiry as ticks_add(now, ttl * 1000) -> it lapses at once and the current rises."""
    st, hal, clk = rig(tmp_path)
    st.failsafe.link_up()  # the backend stays connected: no failsafe takes over its limit
    api = Api(st, NoLink())
    cmd(api, clk.now, rid="t", cmd="set_limit", connector=0, current_a=8, ttl_s=7 * 86400)
    charge(hal, clk)
    c = st.connectors[0]
    clk.run(MINUTE, step=1000)
    assert c.limit_a == 8.0 and c.limit_by == "backend"
    clk.run(WEEK_MS - 2 * MINUTE, step=MINUTE)
    assert c.limit_a == 8.0 and c.limit_by == "backend"  # a minute before it lapses
    clk.run(2 * MINUTE, step=1000)
    assert c.limit_by == "hardware" and c.limit_a == 32.0


def test_uptime_counts_past_the_wrap(tmp_path):
    """Break: uptime as ticks_diff(now, boot_ms) // 1000 -> negative after 6.2 days."""
    st, hal, clk = rig(tmp_path)
    clk.run(WEEK_MS, step=MINUTE)
    assert st.uptime.s == WEEK_MS // 1000  # the 50 ms of boot are not a whole second


class SilentAfter(SerialLine):
    """An RS-485 line to one meter that answers every request until `dead` is set."""

    def __init__(self):
        super().__init__()
        self.dead = False

    def init(self, **kw):
        pass

    def write(self, b):
        if not self.dead:
            n = b[5]  # register count of a read request
            body = bytes((b[0], b[1], 2 * n)) + bytes(2 * n)
            self.rx += modbus.frame(body[0], body[1], body[2:])
        return len(b)


def test_a_meter_dead_for_a_week_stays_failed(tmp_path):
    """meter_loss=suspend: no charging while the meter is gone, however long. Break: drop
    the age cap on the last reading's stamp -> after 6.2 days the suspension lifts."""
    port = SilentAfter()

    class MeterBoard(FakeBoard):
        uart = port

    st, hal, clk = rig(tmp_path, MeterBoard(str(tmp_path)),
                       overrides={"meter_fail_s": 10, "meter_loss": "suspend"})
    c = st.connectors[0]
    end = time.monotonic() + 5
    while st.metering.reading(0) is None and time.monotonic() < end:
        clk.run(5)  # the Modbus line's timing is real time underneath: give it some
        time.sleep(0.001)
    assert st.metering.reading(0) is not None and not c.meter_failed
    port.dead = True
    clk.run(15000, step=100)
    assert c.meter_failed and c.limit_by == "meter"
    hal.ev = "B"
    clk.run(WEEK_MS, step=MINUTE)
    assert c.meter_failed and c.limit_by == "meter" and c.limit_a == 0.0
    hal.ev = "C"
    clk.run(1000)
    assert not hal.contactor.on and hal.pilot.mode == "+12"


class FakeClient:
    """Stands for evse.mqtt.Client: connects when asked, publishes into the void."""

    def __init__(self):
        self.state = DISCONNECTED
        self.error = None
        self.connects = 0
        self.ssl_context = None
        self.client_id = None
        self.keepalive_s = 60
        self.bytes_tx = self.bytes_rx = 0

    def set_last_will(self, *a):
        pass

    def set_credentials(self, *a):
        pass

    def connect(self, host, port, now):
        self.connects += 1
        self.state = CONNECTED

    def poll(self, now):
        pass

    def subscribe(self, topic, qos):
        pass

    def publish(self, topic, payload, retain=False, qos=0, paced=False):
        return True

    def outbox_bytes(self):
        return 0

    def close(self, why=None):
        self.state = DISCONNECTED
        self.error = why


def test_a_link_up_for_a_week_reconnects_at_once_when_it_drops(tmp_path):
    """Break: keep the retry deadline of the last connect -> a week later it reads as
    still to come and the station stays off the broker for days."""
    st, hal, clk = rig(tmp_path, overrides={"mqtt.host": "127.0.0.1"})
    link = Link(st)
    link.client = fake = FakeClient()
    now = clk.now
    for _ in range(10):
        now = (now + 5) % 2**30
        link.poll(now)
    assert fake.connects == 1 and link.connects == 1
    for _ in range(WEEK_MS // MINUTE):
        now = (now + MINUTE) % 2**30
        link.poll(now)
    fake.close("broker restarted")
    for _ in range(400):  # 2 s: the first retry waits 1-1.5 s
        now = (now + 5) % 2**30
        link.poll(now)
    assert fake.connects == 2
