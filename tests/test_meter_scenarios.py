"""The metering chain on the unix port: the firmware's Modbus master talking real RTU frames
to the simulated SDM630 on the simulated UART, and the meter failure policy."""

import time

from backend import Backend
from scenario import charging


def test_meter_values_follow_the_ev(tmp_path):
    be = Backend(tmp_path, config=["meter_interval_s=1", "status_interval_s=5"])
    try:
        be.st.op("meter", energy_wh=1234567)
        charging(be.st)
        be.st.op("ev", max_a=16)
        m = be.mq.wait_json("/meter", lambda d: d["i"] == [16.0, 16.0, 16.0], timeout=10)
        assert m["v"] == [230.0, 230.0, 230.0] and m["p_w"] == 11040 and m["f_hz"] == 50.0
        assert m["e_wh"] >= 1234567
        be.st.op("meter", speed=3600)  # an hour per second: energy must rise by ~11 kWh/s
        m2 = be.mq.wait_json("/meter", lambda d: d["e_wh"] > m["e_wh"] + 20000, timeout=10)
        assert m2["e_wh"] - m["e_wh"] < 11040 * 10
        d = be.cmd("diag")["data"]["modbus"]
        assert d["ok"] > 0 and d["crc"] == 0 and d["timeout"] == 0
        # Status carries this plug-in's energy: the register difference since plug-in.
        s = be.status(lambda c: c.get("energy_wh", 0) > 20000, timeout=8)
        assert s["connectors"][0]["energy_wh"] < m2["e_wh"] - 1234567 + 11040 * 10
    finally:
        be.stop()


def test_meter_vanishes_mid_session_suspends_and_resumes(tmp_path):
    be = Backend(tmp_path, config=["meter_fail_s=3"])
    try:
        charging(be.st)
        be.status(lambda c: c["state"] == "Charging")
        t0 = time.monotonic()
        be.st.op("fault", kind="meter_down", on=True)
        s = be.status(lambda c: c["error"] == "PowerMeterFailure", timeout=8)
        took = time.monotonic() - t0
        # meter_fail_s (3 s) counts from the last good reading, taken up to one poll (1 s)
        # before the meter vanished.
        assert 2.0 <= took <= 4.5, took
        c = s["connectors"][0]
        assert c["state"] == "SuspendedEVSE" and c["limit_by"] == "meter"
        be.st.wait_for(lambda s: s["pwm_duty_pct"] is None, what="PWM off")
        ev = be.mq.wait_json("/event", lambda d: d["code"] == "PowerMeterFailure")
        assert ev["level"] == "error" and ev["connector"] == 1
        d = be.cmd("diag")["data"]["modbus"]
        assert d["timeout"] >= 2
        be.st.op("fault", kind="meter_down", on=False)
        be.status(lambda c: c["error"] is None, timeout=5)
        be.status(lambda c: c["state"] == "Charging", timeout=12)
    finally:
        be.stop()


def test_meter_loss_continue_keeps_charging(tmp_path):
    be = Backend(tmp_path, config=["meter_fail_s=3", 'meter_loss="continue"'])
    try:
        charging(be.st)
        be.st.op("fault", kind="meter_down", on=True)
        s = be.status(lambda c: c["error"] == "PowerMeterFailure", timeout=8)
        assert s["connectors"][0]["state"] == "Charging"
        time.sleep(1)
        assert be.st.op("get")["contactor"]
    finally:
        be.stop()


def test_garbage_on_the_line_is_counted_not_fatal(tmp_path):
    be = Backend(tmp_path, config=["meter_fail_s=30", "meter_interval_s=1"])
    try:
        charging(be.st)
        be.st.op("fault", kind="meter_garbage", on=True)
        time.sleep(4)
        d = be.cmd("diag")["data"]["modbus"]
        bad = d["crc"] + d["short"] + d["wrong_slave"] + d["wrong_function"] + d["long"]
        assert bad + d["timeout"] >= 3
        be.st.op("fault", kind="meter_garbage", on=False)
        m = be.mark()
        be.mq.wait_json("/meter", lambda x: x["i"][0] == 32.0, timeout=5)
        assert be.st.op("get")["contactor"] and be.st.proc.poll() is None
        assert m >= 0
    finally:
        be.stop()
