"""The station reports to a real mosquitto: online/last will, info and retained status."""

import pytest
from broker import Broker
from mqttc import Collector
from scenario import charging
from simctl import Station

BASE = "evse/evse-435031"  # prefix "evse", station id from the sim uid (hex of "CP1")


@pytest.fixture
def broker():
    b = Broker(allow_fallback=False)
    yield b
    b.stop()


def test_status_online_info_and_last_will(broker, tmp_path):
    mq = Collector(broker.port, "evse/#")
    st = Station(state_dir=str(tmp_path), broker="127.0.0.1:%d" % broker.port)
    try:
        mq.wait(lambda m: m[0] == BASE + "/online" and m[1] == b"online", what="online")
        info = mq.wait_json("/info")
        assert info["api"] == 1 and info["board"] == "sim" and info["connectors"] == 1
        s = mq.wait_json("/status", lambda d: d["connectors"][0]["state"] == "Available")
        c = s["connectors"][0]
        assert c == {
            "id": 1, "state": "Available", "cp": "A", "contactor": False, "offered_a": 0.0,
            "limit_a": 32.0, "limit_by": "hardware", "session": None, "error": None,
        }
        assert isinstance(s["uptime_s"], int) and isinstance(s["ts"], int)
        charging(st)
        s = mq.wait_json("/status", lambda d: d["connectors"][0]["state"] == "Charging")
        assert s["connectors"][0]["contactor"] is True
        assert s["connectors"][0]["offered_a"] == 32.0 and s["connectors"][0]["cp"] == "C"
        st.op("fault", kind="rcd", on=True)
        s = mq.wait_json("/status", lambda d: d["connectors"][0]["state"] == "Faulted")
        assert s["connectors"][0]["error"] == "GroundFailure"
        ev = mq.wait_json("/event", lambda d: d["code"] == "GroundFailure")
        assert ev["level"] == "error" and ev["connector"] == 1
        # A retained status is what a backend that subscribes later gets first.
        late = Collector(broker.port, BASE + "/status")
        m = late.wait(lambda m: True, what="retained status")
        assert m[2] is True
        late.stop()
        st.kill()  # power cut: the broker publishes the last will
        mq.wait(lambda m: m[0] == BASE + "/online" and m[1] == b"offline", timeout=100,
                what="last will")
    finally:
        st.stop()
        mq.stop()
