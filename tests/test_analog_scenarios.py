"""Scenario tests of the board's analog inputs on the unix port: the NTC read through the
two-range divider and the ESP32 ADC model (a cold night must not read as an open sensor),
and the pilot read with ADC noise, spikes, a per-read cost, PWM phase and the PWM start
glitch of older MicroPython releases (docs/simulator.md, The physical model)."""

import time

import pytest

from backend import Backend
from scenario import charging, find, next_event, reaction_ms, wait_event, wait_loops

OPEN_LIMIT_MS = 100.0  # IEC 61851-1 Table A.6: contactor open within 100 ms of C->B


@pytest.fixture
def backend(tmp_path):
    made = []

    def start(**kw):
        b = Backend(tmp_path / ("b%d" % len(made)), **kw)
        made.append(b)
        return b

    for i in range(2):
        (tmp_path / ("b%d" % i)).mkdir()
    yield start
    for b in made:
        b.stop()


def wait_temp_reads(st, cold, n=3, timeout=5.0):
    """Positive evidence: the firmware took n more NTC readings (in the cold range if
    cold), i.e. it has seen the temperature just set."""
    key = "temp_reads_cold" if cold else "temp_reads"
    start = st.op("stats")[key]
    end = time.monotonic() + timeout
    while st.op("stats")[key] - start < n:
        if time.monotonic() > end:
            raise AssertionError("the firmware took no %s NTC readings" % key)
        time.sleep(0.05)


def test_minus_30_c_keeps_charging_and_an_open_sensor_stops_it(backend):
    be = backend()
    st = be.st
    charging(st)
    m = be.mark()
    n = next_event(st)
    cold0 = st.op("stats")["temp_reads_cold"]
    st.op("temp", c=-30)
    # The firmware took readings at -30 C (the old divider clipped there: "open") ...
    wait_temp_reads(st, cold=False, n=4)
    wait_loops(st, 100)
    # ... and nothing stopped: no sensor failure, PWM and contactor untouched.
    codes = [e["code"] for e in be.mq.json_after(m, "/event")]
    assert "TempSensorFailure" not in codes, codes
    assert find(st.ctl.events(n), "contactor", False) is None
    assert find(st.ctl.events(n), "pwm") is None
    s = st.op("get")
    assert s["contactor"] and s["ev_i"][0] > 0, s
    assert st.op("stats")["temp_reads_cold"] - cold0 >= 2  # in the cold range
    # -40 C too.
    st.op("temp", c=-40)
    wait_temp_reads(st, cold=True, n=3)
    assert find(st.ctl.events(n), "contactor", False) is None
    # A truly open sensor still stops charging, with the event.
    m = be.mark()
    n = next_event(st)
    st.op("temp", sensor="open")
    ev = be.event("TempSensorFailure", since=m)
    assert "open" in ev["detail"], ev
    wait_event(st, "pwm", None, since=n)
    wait_event(st, "contactor", False, since=n, timeout=10)


def test_adc_spikes_do_not_flip_the_state_and_c_to_b_stays_fast(backend):
    be = backend()
    st = be.st
    charging(st)
    # One read in 20 is a spike of 3-9 V, far beyond a real ADC: the old top-3 average
    # made a spike sample read a different state; two in a row changed it.
    st.op("hw", spikes=0.05)
    n = next_event(st)
    got = wait_loops(st, 600, timeout=20)
    assert got >= 600
    evs = [e for e in st.ctl.events(n) if e["what"] in ("contactor", "pwm", "pilot")]
    assert evs == [], evs
    n = next_event(st)
    st.op("ev", request=False)
    assert reaction_ms(st, "cp", "B", "contactor", False, since=n) <= OPEN_LIMIT_MS


def test_pwm_start_glitch_of_older_releases_is_harmless(backend):
    """MicroPython 1.23-1.25 start a new LEDC channel at 50 % for a period. Modelled at the
    next boot: the firmware still reads state B, offers current and charges."""
    be = backend()
    st = be.st
    st.op("hw", start_glitch=True)
    st.op("plug")
    n = next_event(st)
    st.op("hang", s=3)  # the watchdog resets the board: a fresh boot with the EV plugged
    wait_event(st, "watchdog", True, since=n, timeout=10)
    glitch = wait_event(st, "pwm", 50.0, since=n, timeout=15)
    after = wait_event(st, "pilot", "+12", since=glitch["i"] + 1)
    assert 0 < after["t_us"] - glitch["t_us"] < 5000, (glitch, after)
    m = be.mark()
    st.op("ev", request=True, respond_s=0.2)
    st.wait_for(lambda s: s["contactor"] and s["ev_i"][0] > 0, timeout=15, what="charging")
    c = be.status(lambda c: c["state"] == "Charging", since=m, timeout=10)
    assert c["connectors"][0]["cp"] == "C"
