"""Events (stamped at the event, coalesced repeats) and the API's memory of rids, on
CPython with the in-process fake board."""

import json

from evse.api import RID_MEMORY, RID_MEMORY_S, Api
from evse.clock import Uptime
from evse.events import Events, stamp
from evse.station import Station
from fakes import Clock, FakeBoard, NoLink


def test_event_stamped_when_it_happens():
    t = [1000]
    ev = Events(clock=lambda: t[0])
    ev.add("warn", "Failsafe", 0, "x")
    t[0] = 2000  # published much later
    e = ev.pop()
    assert stamp(e, t[0], 0) == 1000


def test_event_before_the_clock_was_set_is_dated_back():
    up = Uptime(0)
    up.tick(3000)
    ev = Events(clock=lambda: None, uptime=up)
    ev.add("info", "Connected", 0, "x")
    e = ev.pop()
    # 7 s of uptime later the clock reads 1764000000: the event was 7 s before that.
    up.tick(10000)
    assert stamp(e, 1764000000, up.s) == 1764000000 - 7
    assert stamp(e, None, up.s) is None


def test_event_queued_for_a_week_offline_is_dated_right():
    # Ticks wrap every 2^30 ms (12.4 days) and differ right only within 2^29 ms: an event
    # that waited 7 days for the link must still be dated 7 days back, not days off.
    up = Uptime(2**30 - 5000)  # ticks about to wrap
    ev = Events(clock=lambda: None, uptime=up)
    ev.add("warn", "Failsafe", 0, "link down")
    e = ev.pop()
    now = 2**30 - 5000
    for _ in range(7 * 24 * 60):  # a week, a minute at a time, as the loop would count it
        now = (now + 60000) & (2**30 - 1)
        up.tick(now)
    assert up.s == 7 * 24 * 3600
    assert stamp(e, 1764000000, up.s) == 1764000000 - 7 * 24 * 3600


def test_repeats_coalesce_others_queue_and_overflow_is_counted():
    ev = Events(depth=3)
    for i in range(10):
        ev.add("warn", "RejectedInput", 0, "bad %d" % i)
    assert ev.queued() == 1 and ev.coalesced == 9 and ev.dropped == 0
    e = ev.peek()
    assert e[6] == 10 and e[3] == "bad 9"  # count, newest detail
    ev.add("error", "GroundFailure", 1, "trip")
    ev.add("warn", "RejectedInput", 0, "again")  # not the newest: a new entry
    ev.add("info", "X", 0, "")
    assert ev.queued() == 3 and ev.dropped == 1  # the oldest went, and was counted
    assert [x[1] for x in ev._q] == ["GroundFailure", "RejectedInput", "X"]


def _api(tmp_path):
    st = Station(FakeBoard(str(tmp_path)))
    Clock(st).run(50)
    link = NoLink()
    return st, Api(st, link), link


def cmd(api, now, **body):
    return api.handle(json.dumps(body).encode(), now)


def test_repeated_rid_answered_from_memory(tmp_path):
    st, api, link = _api(tmp_path)
    first = cmd(api, 0, rid="r", cmd="reboot", delay_s=5)
    assert first["ok"] and link.reboots == 1
    assert cmd(api, 100, rid="r", cmd="reboot", delay_s=5) == first
    assert link.reboots == 1 and api.repeats == 1  # the retry did not reboot twice
    # Rejections are remembered too: one RejectedInput event, not one per retry.
    n = st.events.total
    bad = cmd(api, 200, rid="b", cmd="set_limit", connector=1, current_a=99)
    assert cmd(api, 300, rid="b", cmd="set_limit", connector=1, current_a=99) == bad
    assert st.events.total == n + 1


def test_rid_memory_is_bounded_in_count_and_time(tmp_path):
    st, api, link = _api(tmp_path)
    cmd(api, 0, rid="old", cmd="reboot")
    for i in range(RID_MEMORY):
        cmd(api, 10, rid="n%d" % i, cmd="enable", connector=1)
    cmd(api, 20, rid="old", cmd="reboot")  # forgotten: pushed out by 32 newer rids
    assert link.reboots == 2
    cmd(api, 30, rid="late", cmd="reboot")
    st.uptime.s += RID_MEMORY_S  # not yet too long ago: a retry
    cmd(api, 40, rid="late", cmd="reboot")
    assert link.reboots == 3
    st.uptime.s += 1  # now it is
    cmd(api, 50, rid="late", cmd="reboot")
    assert link.reboots == 4


def test_a_rid_from_a_week_ago_acts_again(tmp_path):
    """A backend that numbers its commands from 1 after its own restart reuses a rid from
    days ago: the station must act on it, not answer from memory. Ticks wrap (2^30 ms, and
    ticks_diff is right only within 2^29 ms), so this needs the whole week on the clock.
    Break: remember rids by ticks_ms -> the old reply comes back and nothing happens."""
    st = Station(FakeBoard(str(tmp_path)), now=2**30 - 60000)  # ticks wrap a minute after boot
    clk = Clock(st)
    clk.run(50)
    api, link = Api(st, NoLink()), None
    link = api.link
    api.handle(json.dumps({"rid": "1", "cmd": "reboot"}).encode(), clk.now)
    assert link.reboots == 1
    clk.run(7 * 24 * 3600 * 1000, step=60000)
    api.handle(json.dumps({"rid": "1", "cmd": "reboot"}).encode(), clk.now)
    assert link.reboots == 2 and api.repeats == 0


def test_read_only_commands_run_again(tmp_path):
    st, api, link = _api(tmp_path)
    link.diag = lambda now: {"uptime_s": now}
    assert cmd(api, 0, rid="d", cmd="diag")["data"] == {"uptime_s": 0}
    assert cmd(api, 9, rid="d", cmd="diag")["data"] == {"uptime_s": 9}  # fresh data


def test_a_rid_reused_for_other_commands_runs_them(tmp_path):
    """Home Assistant sends every command with rid "ha": disable, enable, disable must all
    act. Break: recall by (rid, cmd) over all remembered commands -> the second disable is
    answered from memory and the connector stays enabled."""
    st, api, link = _api(tmp_path)
    c = st.connectors[0]
    cmd(api, 0, rid="ha", cmd="disable", connector=1)
    assert not c.enabled
    cmd(api, 10, rid="ha", cmd="enable", connector=1)
    assert c.enabled
    cmd(api, 20, rid="ha", cmd="disable", connector=1)
    assert not c.enabled and api.repeats == 0
    cmd(api, 30, rid="ha", cmd="disable", connector=1)  # a true retry of the last one
    assert api.repeats == 1


def test_a_meter_setup_that_raises_anything_still_boots(tmp_path):
    """Break: Metering catching only ValueError/OSError -> TypeError at boot, a boot loop."""

    class BadUart:
        def init(self, **kw):
            raise TypeError("driver rejects these settings")

    class UartBoard(FakeBoard):
        uart = BadUart()

    st = Station(UartBoard(str(tmp_path)))
    codes = []
    while st.events.peek() is not None:
        codes.append(st.events.pop()[1])
    assert "PowerMeterFailure" in codes and st.metering.bus is None
    Clock(st).run(100)  # and the control loop runs
    assert st.exceptions == 0
