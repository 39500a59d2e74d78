"""Load management on CPython with a fake board and a stepped clock: the pause below 6 A,
sharing the station's limit, the failsafe's rules, standing orders on flash, the random
start delay and the graceful reboot."""

import os

import pytest

from evse import pilot
from evse.station import Station
from fakes import Clock, boot, cmd


def reboot(st, clk):
    """The same flash, a new Station: a power cut and a cold boot."""
    st2 = Station(st.board)
    clk2 = Clock(st2)
    clk2.run(50)
    return st2, clk2


def charge(board, clk, k=0):
    hal = board.connectors[k]
    hal.ev = "B"
    clk.run(50)
    hal.ev = "C"
    clk.run(300)
    assert hal.contactor.on
    return hal


def run_until(clk, pred, ms, step=5):
    t0 = clk.now
    while clk.now - t0 < ms:
        clk.run(step, step)
        if pred():
            return clk.now - t0
    return None


# -- the pause below 6 A ----------------------------------------------------------------
def test_pause_below_6a_lasts_min_pause_s_and_resumes_with_headroom(tmp_path):
    """Break: no min_pause (resume as soon as the limit allows) or no hysteresis (resume
    at 6.5 A) -> the contactor cycles again too early."""
    st, board, clk = boot(tmp_path, min_pause_s=60)
    hal = charge(board, clk)
    c = st.connectors[0]
    assert c.cycles == 1
    assert cmd(st, "set_limit", connector=0, current_a=5)["ok"]
    clk.run(10)
    assert hal.pilot.mode == "+12" and c.state == "SuspendedEVSE"
    hal.ev = "B"  # the EV answers the pause
    clk.run(20)
    assert not hal.contactor.on
    hal.ev = "C"  # and asks again at once
    assert cmd(st, "set_limit", connector=0, current_a=6.5)["ok"]  # above 6 A, no headroom
    clk.run(70_000)
    assert hal.pilot.mode == "+12" and c.cycles == 1  # within the hysteresis: still paused
    assert cmd(st, "set_limit", connector=0, current_a=8)["ok"]
    t = run_until(clk, lambda: hal.contactor.on, 1000)
    assert t is not None, "resumes once the limit clears 6 A by the hysteresis"
    assert c.cycles == 2 and c.offered_a == 8.0


def test_pause_resume_waits_for_min_pause_s(tmp_path):
    st, board, clk = boot(tmp_path, min_pause_s=60)
    hal = charge(board, clk)
    assert cmd(st, "set_limit", connector=0, current_a=0)["ok"]
    clk.run(10)
    t_pause = clk.now
    assert cmd(st, "set_limit", connector=0, current_a=16)["ok"]  # at once: too early
    t = run_until(clk, lambda: hal.pilot.mode == "pwm", 70_000, step=50)
    assert t is not None
    waited = clk.now - t_pause
    assert 59_000 <= waited <= 61_500, waited
    assert st.connectors[0].state in ("SuspendedEV", "Charging")


def test_a_pause_before_charging_began_does_not_hold(tmp_path):
    """No contactor cycle at stake (the EV in B, nothing drawn): no minimum pause."""
    st, board, clk = boot(tmp_path, min_pause_s=600)
    hal = board.connectors[0]
    hal.ev = "B"
    clk.run(50)
    assert hal.pilot.mode == "pwm"
    assert cmd(st, "set_limit", connector=0, current_a=0)["ok"]
    clk.run(20)
    assert hal.pilot.mode == "+12"
    assert cmd(st, "set_limit", connector=0, current_a=16)["ok"]
    assert run_until(clk, lambda: hal.pilot.mode == "pwm", 6000) is not None


# -- sharing ------------------------------------------------------------------------------
def test_connectors_share_the_station_limit(tmp_path):
    """Break: each connector gets the whole station limit -> 2 x 32 A on a 32 A supply."""
    st, board, clk = boot(tmp_path, connectors=2)
    h1 = charge(board, clk, 0)
    c1, c2 = st.connectors
    assert c1.offered_a == 32.0
    h2 = charge(board, clk, 1)
    assert c1.offered_a == 16.0 and c2.offered_a == 16.0  # the reduction is at once
    assert c1.limit_by == "hardware" and c1.limit_a == 16.0
    assert cmd(st, "set_limit", connector=0, current_a=20)["ok"]
    clk.run(10)
    assert c1.offered_a == 10.0 and c2.offered_a == 10.0
    assert c1.limit_by == "backend"
    h2.ev = "A"
    clk.run(6000)  # the increase waits for the 5 s spacing
    assert c1.offered_a == 20.0 and h1.contactor.on


# -- the failsafe -------------------------------------------------------------------------
def armed(path, **cfg):
    cfg.setdefault("failsafe_after_s", 10)
    cfg.setdefault("failsafe_current_a", 6.0)
    st, board, clk = boot(path, **cfg)
    st.failsafe.armed = True  # as evse/link.py does
    st.failsafe.link_up()
    return st, board, clk


def lose_link(st, clk, s=11):
    st.failsafe.link_down(clk.now)
    clk.run(s * 1000, step=50)


@pytest.mark.parametrize("backend, expect_a", [(None, 6.0), (4.0, 4.0), (16.0, 6.0)])
def test_failsafe_never_raises(tmp_path, backend, expect_a):
    """Break: failsafe_current_a replaces the backend limit (the old rule) -> 4 A becomes 6 A."""
    st, board, clk = armed(tmp_path)
    hal = charge(board, clk)
    if backend is not None:
        assert cmd(st, "set_limit", connector=1, current_a=backend)["ok"]
        clk.run(10)
    before = st.connectors[0].limit_a
    lose_link(st, clk)
    c = st.connectors[0]
    assert st.failsafe.active
    assert c.limit_a == expect_a and c.limit_by == "failsafe"
    assert c.limit_a <= before
    assert hal.pilot.duty == pilot.duty_u16(expect_a) if expect_a >= 6 else True


def test_failsafe_replace_mode_can_raise(tmp_path):
    st, board, clk = armed(tmp_path, failsafe_mode="replace")
    charge(board, clk)
    assert cmd(st, "set_limit", connector=1, current_a=0)["ok"]
    lose_link(st, clk)
    c = st.connectors[0]
    assert c.limit_a == 6.0 and c.limit_by == "failsafe"


def test_failsafe_waits_failsafe_after_s_and_ends_only_by_a_new_limit(tmp_path):
    st, board, clk = armed(tmp_path)
    charge(board, clk)
    assert cmd(st, "set_limit", connector=0, current_a=20)["ok"]
    st.failsafe.link_down(clk.now)
    clk.run(9900, step=50)
    assert not st.failsafe.active and st.connectors[0].limit_a == 20.0
    clk.run(200)
    assert st.failsafe.active and st.connectors[0].limit_a == 6.0
    st.failsafe.link_up()  # back, but silent: the failsafe holds
    clk.run(30_000, step=50)
    assert st.connectors[0].limit_by == "failsafe"
    assert cmd(st, "set_limit", connector=1, current_a=16)["ok"]
    clk.run(10)
    # Every scope's failsafe ends; the station's 20 A, never removed, is there again.
    assert st.limits.get("failsafe") is None and st.limits.get("backend") == 20.0
    assert st.connectors[0].limit_a == 16.0 and st.connectors[0].limit_by == "backend"


def test_no_broker_configured_no_failsafe(tmp_path):
    """A stand-alone wallbox (mqtt.host empty) has no link to lose."""
    st, board, clk = armed(tmp_path, **{"mqtt.host": ""})
    charge(board, clk)
    lose_link(st, clk, 30)
    assert not st.failsafe.active and st.connectors[0].limit_a == 32.0
    # Positive evidence the failsafe does run: the same station with a broker engages.
    st.cfg.values["mqtt.host"] = "broker.example"
    clk.run(100)
    assert st.failsafe.active and st.connectors[0].limit_a == 6.0


# -- standing orders on flash -----------------------------------------------------------
def test_limits_and_disable_survive_a_power_cut(tmp_path):
    """Break: orders not loaded at boot -> 32 A after the power cut."""
    st, board, clk = boot(tmp_path)
    assert cmd(st, "set_limit", connector=0, current_a=10)["ok"]
    assert cmd(st, "set_limit", connector=1, current_a=8, ttl_s=3600)["ok"]
    clk.run(10)
    st2, clk2 = reboot(st, clk)
    assert st2.limits.get("backend") == 10.0
    assert st2.connectors[0].limits.get("backend") == 8.0
    left = st2.connectors[0].limits.expires("backend") - st2.uptime.s
    assert 3590 <= left <= 3601, left
    assert cmd(st2, "disable", connector=1)["ok"]
    clk2.run(10)
    board.unix += 7200  # two hours off: the TTL lapsed meanwhile
    st3, clk3 = reboot(st2, clk2)
    c = st3.connectors[0]
    assert not c.enabled and c.state == "Unavailable"
    assert c.limits.get("backend") is None  # lapsed by the wall clock
    assert st3.limits.get("backend") == 10.0
    assert [e for e in st3.events._q if e[1] == "OrdersRestored"]


def test_a_ttl_limit_without_a_clock_comes_back_as_the_failsafe(tmp_path):
    st, board, clk = boot(tmp_path)
    assert cmd(st, "set_limit", connector=1, current_a=12, ttl_s=600)["ok"]
    assert cmd(st, "set_limit", connector=0, current_a=4, ttl_s=600)["ok"]
    clk.run(10)
    board.unix = None  # a cold boot: the clock is not set yet
    st2, clk2 = reboot(st, clk)
    c = st2.connectors[0]
    assert c.limits.get("failsafe") == 6.0  # min(12, failsafe 6)
    assert st2.limits.get("failsafe") == 4.0  # min(4, 6): never above what it was
    assert st2.failsafe.active
    board.connectors[0].ev = "B"
    clk2.run(100)
    assert c.offered_a == 0.0 and c.limit_by == "failsafe"  # 4 A: paused


def test_the_failsafe_survives_a_power_cut(tmp_path):
    st, board, clk = armed(tmp_path)
    assert cmd(st, "set_limit", connector=0, current_a=20)["ok"]
    lose_link(st, clk)
    assert st.failsafe.active
    st2, clk2 = reboot(st, clk)
    assert st2.failsafe.active and st2.limits.get("failsafe") == 6.0
    assert cmd(st2, "clear_limit", connector=0)["ok"]
    assert not st2.failsafe.active and st2.limits.get("failsafe") is None


def test_unreadable_orders_mean_the_failsafe(tmp_path):
    st, board, clk = boot(tmp_path)
    with open(os.path.join(str(tmp_path), "orders.json"), "w") as f:
        f.write('{"limits": [[0, "x"')
    st2, clk2 = reboot(st, clk)
    assert st2.limits.get("failsafe") == 6.0
    assert [e for e in st2.events._q if e[1] == "OrdersCorrupt"]


def test_orders_are_written_on_change_only(tmp_path):
    st, board, clk = boot(tmp_path)
    w = st.orders.writes
    clk.run(1000)
    assert st.orders.writes == w
    assert cmd(st, "set_limit", connector=0, current_a=10)["ok"]
    clk.run(1000)
    assert st.orders.writes == w + 1


# -- random start delay -------------------------------------------------------------------
def test_random_delay_at_power_up(tmp_path):
    for k in range(6):  # a draw of 0 s (no delay, no event) has 1 chance in 31: boot again
        d = tmp_path / str(k)
        d.mkdir()
        st, board, clk = boot(d, random_delay_s=30)
        ev = [e for e in st.events._q if e[1] == "StartupDelay"]
        if ev:
            break
    assert ev, "a delay was drawn"
    r = int(ev[0][3].split("held for ")[1].split()[0])
    hal = board.connectors[0]
    hal.ev = "B"
    clk.run(100)
    c = st.connectors[0]
    assert c.limit_by == "startup_delay" and hal.pilot.mode == "+12"
    t = run_until(clk, lambda: hal.pilot.mode == "pwm", 31_000, step=50)
    assert t is not None
    assert r * 1000 - 1200 <= t <= r * 1000 + 1100, (r, t)


def test_random_delay_after_the_failsafe_holds_the_failsafe_current(tmp_path):
    st, board, clk = armed(tmp_path, random_delay_s=20)
    for _ in range(20):  # a zero draw is possible: boot until the power-up delay is over
        clk.run(21_000, step=100)
        if st.limits.get("startup_delay") is None:
            break
    hal = charge(board, clk)
    lose_link(st, clk)
    assert st.connectors[0].offered_a == 6.0
    st.failsafe.link_up()
    assert cmd(st, "clear_limit", connector=0)["ok"]
    d = st.limits.get("startup_delay")
    if d is None:
        pytest.skip("the draw was 0 s")
    assert d == 6.0
    ev = [e for e in st.events._q if e[1] == "StartupDelay" and "failsafe" in e[3]]
    r = int(ev[-1][3].split("held for ")[1].split()[0])
    clk.run(500, step=50)
    assert st.connectors[0].offered_a == 6.0 and st.connectors[0].limit_by == "startup_delay"
    t = run_until(clk, lambda: st.connectors[0].offered_a == 32.0, 26_000, step=50)
    assert t is not None and r * 1000 - 1500 <= t + 500 <= r * 1000 + 6500, (r, t)
    assert hal.contactor.on


# -- the graceful reboot -----------------------------------------------------------------
def test_reboot_waits_for_the_ev_to_stop_drawing(tmp_path):
    st, board, clk = boot(tmp_path)
    hal = charge(board, clk)
    st.begin_reboot(clk.now)
    clk.run(10)
    assert hal.pilot.mode == "+12" and hal.contactor.on
    assert not st.reboot_due(clk.now)
    clk.run(1000)
    assert not st.reboot_due(clk.now)
    hal.ev = "B"
    clk.run(10)
    assert not hal.contactor.on and st.reboot_due(clk.now)


def test_reboot_of_an_ev_that_stays_in_c_opens_after_6s_and_offers_nothing_new(tmp_path):
    st, board, clk = boot(tmp_path, connectors=2)
    hal = charge(board, clk)
    st.begin_reboot(clk.now)
    t0 = clk.now
    t = run_until(clk, lambda: st.reboot_due(clk.now), 8000)
    assert t is not None and 6000 <= t <= 6100, t
    assert not hal.contactor.on
    h2 = board.connectors[1]
    h2.ev = "B"  # an EV plugged in while the reboot waits
    clk.run(500)
    assert h2.pilot.mode == "+12"
    assert clk.now - t0 < 7000


# -- schedules ----------------------------------------------------------------------------
# Monday 2026-11-23 00:00 in Berlin (CET, UTC+1) = 2026-11-22 23:00 UTC.
MON_BERLIN = 1795388400
BERLIN = "CET-1CEST,M3.5.0,M10.5.0/3"
EVENING = [{"start": "17:00", "end": "21:00", "days": "12345", "current_a": 6.0},
           {"start": "22:00", "end": "06:00", "days": "1234567", "current_a": 32.0},
           {"start": "06:00", "end": "17:00", "days": "67", "current_a": 16.0}]


def at(board, clk, st, day, hhmm):
    h, m = hhmm
    board.unix = MON_BERLIN + day * 86400 + h * 3600 + m * 60
    clk.run(1100)  # the timetable looks once a second
    return st.connectors[0]


def test_schedule_boundaries_in_local_time(tmp_path):
    """Break: the schedule read in UTC (tz ignored) -> the 17:00 boundary at 18:00 local."""
    st, board, clk = boot(tmp_path, tz=BERLIN)
    board.connectors[0].ev = "B"
    r = cmd(st, "set_schedule", connector=0, periods=EVENING)
    assert r["ok"] and r["data"] == {"periods": 3, "clock": True}, r
    c = at(board, clk, st, 0, (16, 59))  # Monday 16:59: no period
    assert c.limit_by == "hardware" and c.limit_a == 32.0
    c = at(board, clk, st, 0, (17, 0))  # 17:00 starts the evening peak
    assert c.limit_by == "schedule" and c.limit_a == 6.0
    c = at(board, clk, st, 0, (20, 59))
    assert c.limit_a == 6.0
    c = at(board, clk, st, 0, (21, 0))  # the end minute is not in the period
    assert c.limit_by == "hardware"
    c = at(board, clk, st, 5, (3, 0))  # Saturday 03:00: Friday's night period wraps
    assert c.limit_by in ("schedule", "hardware") and c.limit_a == 32.0
    c = at(board, clk, st, 5, (7, 0))  # Saturday 07:00: the weekend day period
    assert c.limit_by == "schedule" and c.limit_a == 16.0
    c = at(board, clk, st, 5, (17, 30))  # no evening peak at the weekend
    assert c.limit_by == "hardware"


def test_schedule_without_a_clock_is_not_applied_and_says_so(tmp_path):
    st, board, clk = boot(tmp_path, tz=BERLIN)
    board.unix = None
    r = cmd(st, "set_schedule", connector=1,
            periods=[{"start": "00:00", "end": "24:00", "days": "1234567", "current_a": 8}])
    assert r["ok"] and r["data"]["clock"] is False
    clk.run(2000)
    c = st.connectors[0]
    assert c.limits.get("schedule") is None and c.limit_a == 32.0
    ev = [e for e in st.events._q if e[1] == "ScheduleNotApplied"]
    assert ev and "clock" in ev[0][3]
    board.unix = MON_BERLIN
    clk.run(1100)
    assert c.limit_a == 8.0 and c.limit_by == "schedule"  # positive: it applies with a clock


def test_a_bad_schedule_is_refused_whole_and_the_old_one_stays(tmp_path):
    st, board, clk = boot(tmp_path, tz=BERLIN)
    assert cmd(st, "set_schedule", connector=0, periods=EVENING)["ok"]
    bad = [{"start": "10:00", "end": "12:00", "days": "1", "current_a": 10},
           {"start": "11:00", "end": "13:00", "days": "1", "current_a": 10}]
    for periods in (bad, [{"start": "25:00", "end": "12:00", "days": "1", "current_a": 10}],
                    [{"start": "10:00", "end": "12:00", "days": "8", "current_a": 10}],
                    [{"start": "10:00", "end": "12:00", "days": "1", "current_a": 99}],
                    [{"start": "12:00", "end": "10:00", "days": "x", "current_a": 10}],
                    "nope"):
        r = cmd(st, "set_schedule", connector=0, periods=periods)
        assert not r["ok"] and r["error"] in ("bad_arg", "out_of_range"), r
    c = at(board, clk, st, 0, (18, 0))
    assert c.limit_by == "schedule" and c.limit_a == 6.0  # the old one, in force


def test_schedule_survives_a_power_cut_and_an_empty_list_clears_it(tmp_path):
    st, board, clk = boot(tmp_path, tz=BERLIN)
    assert cmd(st, "set_schedule", connector=0, periods=EVENING)["ok"]
    clk.run(100)
    st2, clk2 = reboot(st, clk)
    c = at(board, clk2, st2, 1, (18, 0))
    assert c.limit_by == "schedule" and c.limit_a == 6.0
    assert cmd(st2, "set_schedule", connector=0, periods=[])["ok"]
    c = at(board, clk2, st2, 1, (18, 1))
    assert c.limit_by == "hardware"
    st3, clk3 = reboot(st2, clk2)
    c = at(board, clk3, st3, 1, (18, 2))
    assert c.limit_by == "hardware"


def test_tz_is_checked_by_config_set(tmp_path):
    st, board, clk = boot(tmp_path)
    r = cmd(st, "config_set", values={"tz": "CET-1CEST"})  # DST without its rule
    assert not r["ok"] and r["error"] == "bad_arg", r
    assert cmd(st, "config_set", values={"tz": BERLIN})["ok"]
