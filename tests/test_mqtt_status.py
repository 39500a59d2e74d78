"""The station reports to a real mosquitto: online/last will, info and retained status."""

import json

import pytest

from broker import Broker
from mqttc import Collector, retained
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
    m = mq.mark()
    st = Station(state_dir=str(tmp_path), broker="127.0.0.1:%d" % broker.port)
    try:
        mq.wait(lambda x: x[0] == BASE + "/online" and x[1] == b"online", since=m,
                what="online")
        info = mq.wait_json("/info", since=m)
        assert info["api"] == 1 and info["board"] == "sim" and info["connectors"] == 1
        s = mq.wait_json("/status", lambda d: d["connectors"][0]["state"] == "Available",
                         since=m)
        c = s["connectors"][0]
        assert c == {
            "id": 1, "state": "Available", "cp": "A", "contactor": False, "offered_a": 0.0,
            "limit_a": 32.0, "limit_by": "hardware", "session": None, "error": None,
        }
        assert isinstance(s["uptime_s"], int) and isinstance(s["ts"], int)
        m = mq.mark()
        charging(st)
        s = mq.wait_json("/status", lambda d: d["connectors"][0]["state"] == "Charging",
                         since=m)
        assert s["connectors"][0]["contactor"] is True
        assert s["connectors"][0]["offered_a"] == 32.0 and s["connectors"][0]["cp"] == "C"
        m = mq.mark()
        st.op("fault", kind="rcd", on=True)
        s = mq.wait_json("/status", lambda d: d["connectors"][0]["state"] == "Faulted",
                         since=m)
        assert s["connectors"][0]["error"] == "GroundFailure"
        ev = mq.wait_json("/event", lambda d: d["code"] == "GroundFailure", since=m)
        assert ev["level"] == "error" and ev["connector"] == 1
        # A retained status is what a backend that subscribes later gets first: the latest.
        got = retained(broker.port, BASE + "/status", first=True)
        assert len(got) == 1, got
        assert json.loads(got[0][1])["connectors"][0]["state"] == "Faulted"
        m = mq.mark()
        st.kill()  # power cut: the broker publishes the last will
        mq.wait(lambda x: x[0] == BASE + "/online" and x[1] == b"offline", since=m,
                timeout=100, what="last will")
        assert retained(broker.port, BASE + "/online", first=True) == [
            (BASE + "/online", b"offline")]
    finally:
        st.stop()
        mq.stop()
