"""Layer 2: the connector state machine on CPython with a fake board and a stepped clock."""

import pytest

from evse import pilot
from evse.station import Station
from fakes import Clock, FakeBoard


@pytest.fixture
def rig(tmp_path):
    board = FakeBoard(str(tmp_path))
    st = Station(board)
    clk = Clock(st)
    clk.run(50)  # boot RCD self-test passes within a few steps
    return st, board.connectors[0], clk


def charge(st, hal, clk):
    hal.ev = "B"
    clk.run(50)
    hal.ev = "C"
    clk.run(300)
    assert hal.contactor.on
    return st.connectors[0]


def test_boot_self_test_then_available(rig):
    st, hal, clk = rig
    c = st.connectors[0]
    assert c.state == "Available"
    assert hal.pilot.mode == "+12"
    assert not hal.contactor.on
    assert hal.test_on is False


def test_plug_offers_pwm_and_closes_after_settle(rig):
    st, hal, clk = rig
    c = st.connectors[0]
    hal.ev = "B"
    clk.run(20)
    assert hal.pilot.mode == "pwm"
    assert c.offered_a == 32.0
    assert c.state == "SuspendedEV"
    hal.ev = "C"
    clk.run(100)
    assert not hal.contactor.on  # S2 settle (200 ms) not yet over
    clk.run(150)
    assert hal.contactor.on
    assert c.state == "Charging"


@pytest.mark.parametrize("to", ["B", "A", "E"])
def test_contactor_opens_within_two_samples(rig, to):
    st, hal, clk = rig
    c = charge(st, hal, clk)
    hal.ev = to
    clk.run(10)  # two 5 ms samples
    assert not hal.contactor.on
    if to == "E":
        assert c.state == "Faulted" and c.error == "EVCommunicationError"


def test_single_sample_glitch_does_not_open(rig):
    st, hal, clk = rig
    charge(st, hal, clk)
    hal.ev = "B"
    clk.run(5)
    hal.ev = "C"
    clk.run(50)
    assert hal.contactor.on


def test_rcd_trip_latches_until_unplug_and_self_test(rig):
    st, hal, clk = rig
    c = charge(st, hal, clk)
    clk.run(200)  # past the switching window
    hal.rcd = True
    clk.run(5)
    assert hal.contactor.on  # one read is not a trip ...
    clk.run(5)
    assert not hal.contactor.on  # ... the second one, a loop later, is
    assert c.state == "Faulted" and c.error == "GroundFailure"
    assert hal.pilot.mode == "-12"  # F pulse
    clk.run(400)
    assert hal.pilot.mode == "+12"  # then X1 so unplug can be seen
    hal.rcd = False
    clk.run(2000)
    assert c.state == "Faulted"  # latched while plugged
    hal.ev = "A"
    clk.run(100)
    assert c.state == "Available"
    hal.ev = "B"
    clk.run(50)
    assert hal.pilot.mode == "pwm"


def test_rcd_stays_latched_if_self_test_fails(rig):
    st, hal, clk = rig
    c = charge(st, hal, clk)
    hal.rcd = True
    clk.run(400)
    hal.rcd = False
    hal.rcd_healthy = False  # detector no longer answers its test winding
    hal.ev = "A"
    clk.run(1000)
    assert c.state == "Faulted" and c.error == "GroundFailure"
    hal.rcd_healthy = True
    clk.run(31000)  # retried after 30 s
    assert c.state == "Available"


def test_weld_is_power_switch_failure_without_pwm(rig):
    st, hal, clk = rig
    c = charge(st, hal, clk)
    hal.contactor.welded = True
    hal.ev = "B"
    clk.run(400)
    assert not hal.contactor.on
    assert c.state == "Faulted" and c.error == "PowerSwitchFailure"
    assert hal.pilot.mode != "pwm"
    hal.ev = "A"
    clk.run(100)
    assert c.state == "Faulted"  # still welded: stays faulted after unplug
    hal.contactor.welded = False
    clk.run(100)
    assert c.state == "Available"


def test_stuck_open_contactor(rig):
    st, hal, clk = rig
    hal.contactor.stuck_open = True
    hal.ev = "B"
    clk.run(50)
    hal.ev = "C"
    clk.run(600)
    assert c_state(st) == "Faulted"
    assert st.connectors[0].error == "PowerSwitchFailure"
    assert not hal.contactor.on


def c_state(st):
    return st.connectors[0].state


def test_missing_diode_never_closes(rig):
    st, hal, clk = rig
    hal.diode = False
    hal.ev = "B"
    clk.run(50)
    hal.ev = "C"
    clk.run(1000)
    assert not any(on for what, on in hal.log if what == "contactor")
    assert c_state(st) == "Faulted"
    assert st.connectors[0].error == "EVCommunicationError"


def test_state_d_without_ventilation_opens(rig):
    st, hal, clk = rig
    charge(st, hal, clk)
    hal.ev = "D"
    clk.run(10)
    assert not hal.contactor.on
    assert c_state(st) == "Faulted" and st.connectors[0].error == "OtherError"
    hal.ev = "B"
    clk.run(400)
    assert c_state(st) == "SuspendedEVSE"  # condition gone, fault cleared, PWM held back
    clk.run(5000)
    assert c_state(st) == "SuspendedEV" and hal.pilot.mode == "pwm"


def test_state_d_with_ventilation_charges(tmp_path):
    board = FakeBoard(str(tmp_path))
    st = Station(board, overrides={"ventilation": True})
    clk = Clock(st)
    hal = board.connectors[0]
    clk.run(50)
    hal.ev = "B"
    clk.run(50)
    hal.ev = "D"
    clk.run(300)
    assert hal.contactor.on and c_state(st) == "Charging"


def test_pwm_off_ev_stays_in_c_forced_open_after_6s(rig):
    st, hal, clk = rig
    charge(st, hal, clk)
    board = st.board
    board.temp = 90.0  # thermal stop: limit 0 -> X1
    clk.run(300)
    assert hal.pilot.mode == "+12"
    assert hal.contactor.on  # the EV gets 6 s to answer C->B
    assert c_state(st) == "SuspendedEVSE"
    assert st.connectors[0].error == "HighTemperature"
    clk.run(5500)
    assert hal.contactor.on
    clk.run(500)
    assert not hal.contactor.on


def test_duty_reduces_at_once_and_increases_after_5s(rig):
    st, hal, clk = rig
    c = charge(st, hal, clk)
    st.board.temp = 62.0  # derate to 10 A
    clk.run(300)
    assert c.offered_a == 10.0 and c.limit_by == "thermal"
    st.board.temp = 50.0
    clk.run(1000)
    assert c.offered_a == 10.0  # an increase waits for the 5 s spacing
    clk.run(4500)
    assert c.offered_a == 32.0 and c.limit_by == "hardware"


def test_thermal_hysteresis(rig):
    st, hal, clk = rig
    c = charge(st, hal, clk)
    st.board.temp = 61.0
    clk.run(300)
    assert c.limit_by == "thermal"
    st.board.temp = 57.0  # below 60 but not below 60 - 5: still derated
    clk.run(6000)
    assert c.limit_by == "thermal"
    st.board.temp = 54.0
    clk.run(6000)
    assert c.limit_by != "thermal"


def test_pp_caps_current_and_invalid_pp_means_no_charge(tmp_path):
    board = FakeBoard(str(tmp_path))
    st = Station(board, overrides={"socket": True})
    clk = Clock(st)
    hal = board.connectors[0]
    clk.run(50)
    hal.pp = 680
    hal.ev = "B"
    clk.run(50)
    assert st.connectors[0].offered_a == 20.0 and st.connectors[0].limit_by == "cable"
    hal.ev = "A"
    clk.run(50)
    hal.pp = None
    hal.ev = "B"
    clk.run(50)
    assert hal.pilot.mode == "+12"
    assert st.connectors[0].limit_a == 0.0


def test_config_max_current(tmp_path):
    board = FakeBoard(str(tmp_path))
    st = Station(board, overrides={"max_current_a": 16})
    clk = Clock(st)
    hal = board.connectors[0]
    clk.run(50)
    hal.ev = "B"
    clk.run(50)
    c = st.connectors[0]
    assert c.offered_a == 16.0 and c.limit_by == "config"
    assert hal.pilot.duty == pilot.duty_u16(16)


def test_exception_in_control_path_opens_contactor(rig):
    st, hal, clk = rig
    c = charge(st, hal, clk)
    hal.raise_on_sample = True
    clk.run(5)
    assert not hal.contactor.on
    assert c.state == "Faulted" and c.error == "InternalError"
    assert st.exceptions >= 1
    hal.raise_on_sample = False
    hal.ev = "A"
    clk.run(500)
    assert c.state == "Available"


def test_disable_and_enable(rig):
    """disable ends charging the IEC way: X1 at once, the contactor opens when the EV
    answers C->B, then state F. Break: disable opens at once (under load)."""
    st, hal, clk = rig
    c = charge(st, hal, clk)
    c.set_enabled(False)
    clk.run(5)
    assert hal.pilot.mode == "+12"  # PWM off at once ...
    assert hal.contactor.on  # ... but the EV still draws: no opening under load
    clk.run(2000)
    assert hal.contactor.on and c.state == "SuspendedEVSE"
    hal.ev = "B"  # the EV answers
    clk.run(10)
    assert not hal.contactor.on
    clk.run(20)
    assert hal.pilot.mode == "-12" and c.state == "Unavailable"
    hal.ev = "C"  # an EV asking for power while disabled gets nothing
    clk.run(500)
    assert not hal.contactor.on and hal.pilot.mode == "-12"
    c.set_enabled(True)
    clk.run(50)
    assert hal.pilot.mode == "+12" and c.state == "SuspendedEVSE"
    clk.run(5000)  # resuming PWM is an increase: 5 s after the last change
    assert hal.pilot.mode == "pwm"
    clk.run(300)
    assert c.state == "Charging" and hal.contactor.on


def test_disable_ev_that_stays_in_c_is_opened_after_6s(rig):
    st, hal, clk = rig
    c = charge(st, hal, clk)
    start = len(hal.log)
    c.set_enabled(False)
    clk.run(5)
    t_x1 = clk.now
    assert hal.pilot.mode == "+12"
    opened = None
    for _ in range(1600):
        clk.run(5)
        if not hal.contactor.on:
            opened = clk.now
            break
    assert opened is not None
    assert 6000 <= opened - t_x1 <= 6020, opened - t_x1
    clk.run(20)
    assert hal.pilot.mode == "-12" and c.state == "Unavailable"
    assert ("contactor", False) in hal.log[start:]


def test_two_connectors_are_independent(tmp_path):
    board = FakeBoard(str(tmp_path), connectors=2)
    st = Station(board)
    clk = Clock(st)
    h1, h2 = board.connectors
    clk.run(50)
    h1.ev = "B"
    clk.run(50)
    h1.ev = "C"
    clk.run(300)
    assert h1.contactor.on and not h2.contactor.on
    h2.rcd = True
    clk.run(10)
    assert h1.contactor.on
    assert st.connectors[1].state == "Faulted"


def test_broken_temperature_sensor_stops_charging_once(rig):
    st, hal, clk = rig
    c = charge(st, hal, clk)

    def broken():
        raise OSError("NTC open")

    st.board.temp_c = broken
    n = st.events.total
    clk.run(2000)
    assert c.limit_a == 0.0 and c.limit_by == "thermal" and hal.pilot.mode == "+12"
    assert st.events.total == n + 1  # one event, not one per reading
    assert c.state != "Faulted"


def test_replug_right_after_unplug_is_offered_at_once(rig):
    st, hal, clk = rig
    charge(st, hal, clk)
    hal.ev = "A"
    clk.run(15)
    assert hal.pilot.mode == "+12"
    hal.ev = "B"
    clk.run(15)
    assert hal.pilot.mode == "pwm"


def _close_log(hal, clk, ms, step=5):
    """Step ms and return the times (ms) at which the contactor was commanded closed."""
    out = []
    start = len(hal.log)
    for _ in range(ms // step):
        clk.run(step, step)
        for e in hal.log[start:]:
            if e == ("contactor", True):
                out.append(clk.now)
        start = len(hal.log)
    return out


def test_resume_after_a_pause_needs_a_settled_c_and_a_fresh_diode_check(rig):
    """A pause (X1) before the contactor closed, then PWM again: the close must wait for
    200 ms of settled C under the new PWM and a passing diode check after it started.
    Break: keep _creq_ms across the pause (the old code) -> closes 5 ms after PWM."""
    st, hal, clk = rig
    st.cfg.values["min_pause_s"] = 0  # the close rule alone, not the pause's length
    c = st.connectors[0]
    hal.ev = "B"
    clk.run(50)
    hal.ev = "C"
    clk.run(100)  # C settling, contactor not yet closed
    assert not hal.contactor.on
    c.limits.set("backend", 0.0)  # pause below 6 A: X1
    clk.run(50)
    assert hal.pilot.mode == "+12" and not hal.contactor.on
    c.limits.clear("backend")
    hal.diode = False  # the diode fails during the pause
    t_pwm = None
    for _ in range(2000):  # the resume waits for the 5 s increase spacing
        clk.run(5)
        if hal.pilot.mode == "pwm":
            t_pwm = clk.now
            break
    assert t_pwm is not None
    assert _close_log(hal, clk, 300) == []  # no diode: never closes, not even briefly
    assert c.error == "EVCommunicationError"


def test_resume_closes_only_after_settle(rig):
    st, hal, clk = rig
    st.cfg.values["min_pause_s"] = 0  # the close rule alone, not the pause's length
    c = st.connectors[0]
    hal.ev = "B"
    clk.run(50)
    hal.ev = "C"
    clk.run(100)
    c.limits.set("backend", 0.0)
    clk.run(50)
    c.limits.clear("backend")
    t_pwm = None
    for _ in range(2000):
        clk.run(5)
        if hal.pilot.mode == "pwm":
            t_pwm = clk.now
            break
    closes = _close_log(hal, clk, 400)
    assert closes, "it does close"
    assert closes[0] - t_pwm >= 200, closes[0] - t_pwm


def test_one_noisy_rcd_read_is_not_a_trip(rig):
    """Break: trip on the first tripped read (no second read) -> GroundFailure."""
    st, hal, clk = rig
    c = charge(st, hal, clk)
    clk.run(200)
    for _ in range(20):  # a glitch every 100 ms, one read long
        hal.rcd = True
        clk.run(5)
        hal.rcd = False
        clk.run(95)
    assert hal.contactor.on and c.fault is None and c.state == "Charging"


def test_rcd_transient_after_switching_is_ridden_through_a_real_trip_is_not(rig):
    """Inrush when the contacts close disturbs the detector for a few ms. Break: no longer
    confirmation within the switching window -> GroundFailure at every close."""
    st, hal, clk = rig
    hal.ev = "B"
    clk.run(50)
    hal.ev = "C"
    for _ in range(100):
        clk.run(5)
        if hal.contactor.on:
            break
    assert hal.contactor.on
    hal.rcd = True  # 20 ms of transient right after the close
    clk.run(20)
    hal.rcd = False
    clk.run(300)
    c = st.connectors[0]
    assert hal.contactor.on and c.fault is None
    # A real residual current at switching: open within the longer confirmation.
    hal.ev = "B"
    clk.run(50)
    assert not hal.contactor.on
    hal.ev = "C"
    for _ in range(2000):
        clk.run(5)
        if hal.contactor.on:
            break
    assert hal.contactor.on
    hal.rcd = True
    t = 0
    while hal.contactor.on:
        clk.run(5)
        t += 5
    assert 30 <= t <= 40 and c.fault == "GroundFailure", t


def test_one_noisy_mirror_read_is_not_a_weld(rig):
    """Break: fault on the first disagreeing read after blanking -> PowerSwitchFailure."""
    st, hal, clk = rig
    charge(st, hal, clk)
    hal.ev = "B"
    clk.run(1000)
    assert not hal.contactor.on
    c = st.connectors[0]
    for _ in range(10):  # the mirror reads closed for one read every 100 ms
        hal.contactor.welded = True
        clk.run(5)
        hal.contactor.welded = False
        clk.run(95)
    assert c.fault is None
    hal.contactor.welded = True  # a real weld: it stays
    clk.run(30)
    assert c.fault == "PowerSwitchFailure"
