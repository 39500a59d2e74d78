"""The service console and kit on the unix port: a technician types at the station's serial
console (here the simulator's stdin/stdout) while it runs. Faults for the self-test's FAIL
lines are injected through the control port."""

import time

import pytest

from scenario import charging, next_event, reaction_ms
from simctl import Station

NO_BROKER = 'mqtt.host=""'
OPEN_LIMIT_MS = 100.0  # IEC 61851-1 Table A.6


@pytest.fixture
def con():
    made = []

    def start(config=()):
        st = Station(config=[NO_BROKER, "meter_fail_s=2", *config], console=True)
        made.append(st)
        return st

    yield start
    for st in made:
        st.stop()


def say(st, line, until, timeout=10.0):
    """Type a line; the console output after it once the line holding `until` is complete
    (output goes out a little per loop iteration)."""
    m = st.console_mark()
    st.type(line)
    return st.console_wait(lambda out: until in out and "\n" in out[out.index(until):], m,
                           timeout)


def test_status_config_and_set_with_secrets_masked(con):
    st = con()
    out = say(st, "s.status()", "c1 ")
    assert "station evse-435031" in out and "Available" in out and "cp A" in out
    out = say(st, "s.wifi('depot', 'hunter2-secret')", "ok: changed")
    assert "wifi.password" in out and "hunter2" not in out
    out = say(st, "s.config()", "wifi.ssid")
    assert "depot" in out and "***" in out and "hunter2" not in out
    out = say(st, "s.set('max_current_a', 99)", "refused")
    assert "out_of_range" in out
    say(st, "s.set('max_current_a', 16)", "ok: changed max_current_a")
    st.op("plug")
    s = st.wait_for(lambda s: s["pwm_duty_pct"] is not None, what="PWM")
    assert s["offered_a"] == 16.0  # the setting took effect
    out = say(st, "s.log(10)", "ConfigChanged c0 max_current_a")
    assert "wifi.password,wifi.ssid" in out and "hunter2" not in out


def test_a_typo_prints_an_error_and_the_station_keeps_charging(con):
    st = con()
    charging(st)
    n = next_event(st)
    out = say(st, "s.nonsense(", "SyntaxError")
    out = say(st, "1/0", "ZeroDivisionError")
    out = say(st, "s.meter()", "transactions")
    assert "230.0/230.0/230.0 V" in out
    assert say(st, "2 + 2", "4")
    assert st.op("get")["contactor"]
    assert [e for e in st.ctl.events(n) if e["what"] == "contactor"] == []


def test_selftest_passes_on_a_healthy_board(con):
    st = con()
    n = next_event(st)
    out = say(st, "s.selftest()", "selftest: PASS", timeout=15)
    for check in ("PASS pilot ", "PASS pilot duty", "40.0 % commanded, 40.0 % measured",
                  "PASS RCD", "PASS contactor", "PASS meter c1", "PASS RFID reader"):
        assert check in out, out
    # It really switched: the contactor closed and opened, the RCD test current flowed.
    evs = st.ctl.events(n)
    assert [e["value"] for e in evs if e["what"] == "contactor"] == [True, False]
    assert [e["value"] for e in evs if e["what"] == "rcd"] == [True, False]
    # And gave the outputs back: an EV plugged in afterwards is offered current.
    st.op("plug")
    st.wait_for(lambda s: s["pwm_duty_pct"] is not None, what="PWM after the self-test")


@pytest.mark.parametrize("kind,line,error", [
    ("stuck_open", "FAIL contactor          mirror stays open", "PowerSwitchFailure"),
    ("weld", "FAIL contactor          mirror reads closed after opening", "PowerSwitchFailure"),
    ("rcd_test_open", "FAIL RCD", "GroundFailure"),
    ("pilot_dead", "FAIL pilot +12 V", "EVCommunicationError"),
    ("meter_down", "FAIL meter c1", None),
    ("duty_error", "40.0 % commanded, 43.0 % measured", "EVCommunicationError"),
])
def test_selftest_fail_leaves_the_station_safe_and_faulted(con, kind, line, error):
    st = con()
    if kind == "duty_error":
        st.op("hw", duty_error=3.0)  # the generator's timer 3 points off
    else:
        st.op("fault", kind=kind, on=True)
    n = next_event(st)
    say(st, "s.selftest()", "selftest: ", timeout=15)
    out = st.console_wait("selftest: 1 FAIL\n", 0, timeout=15)
    assert line in out, out
    s = st.op("get")
    assert not s["contactor"]
    if error:
        if kind != "duty_error":
            st.op("fault", kind=kind, on=False)
        out = say(st, "s.status()", "c1 ")
        assert "error %s" % error in out or "Faulted" in out, out
    if kind == "stuck_open":  # it did try: the close was commanded
        assert [e["value"] for e in st.ctl.events(n) if e["what"] == "contactor"][:1] == [True]


def test_selftest_refuses_with_an_ev_connected(con):
    st = con()
    st.op("plug")
    st.wait_for(lambda s: s["pwm_duty_pct"] is not None, what="EV seen")
    n = next_event(st)
    out = say(st, "s.selftest()", "selftest refused")
    assert "EV connected" in out
    assert [e for e in st.ctl.events(n) if e["what"] in ("contactor", "rcd", "pilot")] == []


def test_the_log_file_survives_a_reset(con):
    """s.log(saved=True) reads the file on flash: the previous boot's lines are there.
    Break: no flush from the loop (station.logbook unset) -> only this boot's lines, none
    on flash."""
    st = con()
    say(st, "s.status()", "c1 ")
    boots = len(st.op("stats")["boot_commands"])
    st.type("station.reboot(0)")  # the console runs in main.py's namespace
    st.wait_for(lambda s: len(st.op("stats")["boot_commands"]) > boots, timeout=15,
                what="a second boot")
    say(st, "s.status()", "c1 ")  # the new boot's console runs: its loop has flushed
    m = st.console_mark()
    st.type("s.log(40, saved=True)")
    # Both boots' lines, read from flash (the RAM ring holds only this boot's).
    st.console_wait(lambda out: out.count("firmware 0.1.0, modules: files\n") == 2, m)


def test_console_output_never_holds_the_contactor(con):
    """The console's UART blocks its writer (the sim board sends at 115200 baud, as the
    ESP32's console does), so output goes out 32 bytes per loop iteration. Break: drain
    everything at once (evse/console.py _OUT_PER_LOOP = 4096) -> s.config()'s 1.5 KB hold
    the loop ~130 ms and the contactor opens late after C->B."""
    st = con()
    charging(st)
    for _ in range(3):
        st.type("s.config()")
    time.sleep(0.05)  # output is going out
    n = next_event(st)
    st.op("ev", request=False)
    assert reaction_ms(st, "cp", "B", "contactor", False, since=n) <= OPEN_LIMIT_MS
