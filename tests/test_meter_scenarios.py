"""The metering chain on the unix port: the firmware's Modbus master talking real RTU frames
to the simulated SDM630 on the simulated UART, and the meter failure policy.

Durations come from the simulator's events log (world clock), with wide limits."""

import time

from backend import BASE, Backend
from scenario import charging, next_event, wait_event, wait_loops

DUTY_32A = 53.3


def test_meter_values_follow_the_ev(tmp_path):
    be = Backend(tmp_path, config=["meter_interval_s=1", "status_interval_s=5"])
    try:
        be.st.op("meter", energy_wh=1234567)
        charging(be.st)
        m = be.mark()
        be.st.op("ev", max_a=16)
        r = be.mq.wait_json(BASE + "/meter", lambda d: d["i"] == [16.0, 16.0, 16.0], since=m,
                            timeout=10)
        assert r["v"] == [230.0, 230.0, 230.0] and r["p_w"] == 11040 and r["f_hz"] == 50.0
        assert r["e_wh"] >= 1234567
        m = be.mark()
        be.st.op("meter", speed=3600)  # an hour per second: energy must rise by ~11 kWh/s
        r2 = be.mq.wait_json(BASE + "/meter", lambda d: d["e_wh"] > r["e_wh"] + 20000,
                             since=m, timeout=10)
        assert r2["e_wh"] - r["e_wh"] < 11040 * 10
        d = be.cmd("diag")["data"]["modbus"]
        assert d["ok"] > 0 and d["crc"] == 0 and d["timeout"] == 0
        # Status carries this plug-in's energy: the register difference since plug-in.
        s = be.status(lambda c: c.get("energy_wh", 0) > 20000, since=m, timeout=8)
        assert s["connectors"][0]["energy_wh"] < r2["e_wh"] - 1234567 + 11040 * 10
    finally:
        be.stop()


def test_meter_vanishes_mid_session_suspends_and_resumes(tmp_path):
    # min_pause_s=0: the resume right after the meter is back (the pause rule: test_load.py)
    be = Backend(tmp_path, config=["meter_fail_s=3", "min_pause_s=0"])
    try:
        m = be.mark()
        charging(be.st)
        be.status(lambda c: c["state"] == "Charging", since=m)
        n = next_event(be.st)
        m = be.mark()
        be.st.op("fault", kind="meter_down", on=True)
        s = be.status(lambda c: c["error"] == "PowerMeterFailure", since=m, timeout=8)
        c = s["connectors"][0]
        assert c["state"] == "SuspendedEVSE" and c["limit_by"] == "meter"
        # World clock: from the meter vanishing to the PWM going off. meter_fail_s (3 s)
        # counts from the last good reading, taken up to one poll (1 s) before it vanished.
        down = wait_event(be.st, "fault", {"kind": "meter_down", "on": True}, since=n)
        off = wait_event(be.st, "pwm", None, since=n)
        took = (off["t_us"] - down["t_us"]) / 1e6
        print("PWM off %.2f s after the meter vanished" % took)
        assert 1.5 <= took <= 5.0, took
        ev = be.event("PowerMeterFailure", since=m)
        assert ev["level"] == "error" and ev["connector"] == 1
        d = be.cmd("diag")["data"]["modbus"]
        assert d["timeout"] >= 2
        n = next_event(be.st)
        m = be.mark()
        be.st.op("fault", kind="meter_down", on=False)
        be.event("PowerMeterOk", since=m, timeout=5)
        be.status(lambda c: c["error"] is None, since=m, timeout=5)
        # PWM back (a resume is an increase: it waits the 5 s spacing), then the EV charges.
        wait_event(be.st, "pwm", DUTY_32A, since=n, timeout=10)
        be.status(lambda c: c["state"] == "Charging", since=m, timeout=12)
    finally:
        be.stop()


def test_meter_loss_continue_keeps_charging(tmp_path):
    be = Backend(tmp_path, config=["meter_fail_s=3", 'meter_loss="continue"'])
    try:
        charging(be.st)
        n = next_event(be.st)
        m = be.mark()
        be.st.op("fault", kind="meter_down", on=True)
        # Positive evidence: the failure was detected (where "suspend" turns the PWM off in
        # the same control step) ...
        s = be.status(lambda c: c["error"] == "PowerMeterFailure", since=m, timeout=8)
        c = s["connectors"][0]
        assert c["state"] == "Charging" and c["limit_by"] != "meter" and c["offered_a"] == 32.0
        be.event("PowerMeterFailure", since=m)
        # ... and the firmware kept running with it (200 control loops, about 1 s) ...
        wait_loops(be.st, 200)
        # ... without touching the PWM or the contactor.
        evs = [e for e in be.st.ctl.events(n) if e["what"] in ("pwm", "contactor")]
        assert evs == [], evs
        g = be.st.op("get")
        assert g["contactor"] and g["pwm_duty_pct"] == DUTY_32A
    finally:
        be.stop()


def test_garbage_on_the_line_is_counted_not_fatal(tmp_path):
    be = Backend(tmp_path, config=["meter_fail_s=30", "meter_interval_s=1"])
    try:
        charging(be.st)
        be.st.op("fault", kind="meter_garbage", on=True)
        end = time.monotonic() + 10
        while True:
            d = be.cmd("diag")["data"]["modbus"]
            bad = d["crc"] + d["short"] + d["wrong_slave"] + d["wrong_function"] + d["long"]
            if bad + d["timeout"] >= 3 or time.monotonic() > end:
                break
            time.sleep(0.2)
        assert bad + d["timeout"] >= 3, d
        be.st.op("fault", kind="meter_garbage", on=False)
        # Readings again: a value only a fresh reading can carry (the last good one is still
        # republished until meter_fail_s, so any meter message would not do).
        m = be.mark()
        be.st.op("meter", energy_wh=5_000_000)
        r = be.mq.wait_json(BASE + "/meter", lambda x: x["e_wh"] >= 5_000_000, since=m,
                            timeout=8)
        assert r["i"][0] == 32.0
        assert be.cmd("diag")["data"]["modbus"]["ok"] > d["ok"]
        assert be.st.op("get")["contactor"] and be.st.proc.poll() is None
    finally:
        be.stop()
