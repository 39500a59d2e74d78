"""The MQTT API v1 (shared/spec/mqtt-api.md) against a real mosquitto: topics, retained
flags, every command of this issue and its error replies."""

import json
import os
import time

import pytest
from backend import BASE, Backend, retained
from scenario import charging


@pytest.fixture
def be(tmp_path):
    b = Backend(tmp_path)
    yield b
    b.stop()


def test_retained_topics_after_connect(be):
    port = be.broker.port
    assert retained(port, BASE + "/online") == (b"online", True)
    info, r = retained(port, BASE + "/info")
    assert r and json.loads(info)["api"] == 1
    cfg, r = retained(port, BASE + "/config")
    cfg = json.loads(cfg)
    assert r and cfg["max_current_a"] == 32.0 and cfg["mqtt.password"] == ""
    st, r = retained(port, BASE + "/status")
    assert r and json.loads(st)["connectors"][0]["state"] == "Available"


def test_reply_and_event_are_not_retained(be):
    assert be.cmd("diag")["ok"]
    be.cmd("nope")
    time.sleep(0.3)
    for topic, _, r in be.mq.msgs:
        if topic.endswith("/reply") or topic.endswith("/event"):
            assert r is False


def test_config_get_and_set(be):
    r = be.cmd("config_get")
    assert r["ok"] and r["data"]["max_current_a"] == 32.0 and r["data"]["prefix"] == "evse"
    r = be.cmd("config_get", keys=["phases", "auth_mode"])
    assert r["data"] == {"phases": 3, "auth_mode": "free"}
    m = be.mark()
    r = be.cmd("config_set", values={"max_current_a": 16, "mqtt.password": "s3cret"})
    assert r["ok"] and r["data"]["changed"] == ["max_current_a", "mqtt.password"]
    cfg = be.mq.wait_json("/config", lambda d: d["max_current_a"] == 16.0)
    assert cfg["mqtt.password"] == "***"
    assert be.cmd("config_get", keys=["mqtt.password"])["data"] == {"mqtt.password": "***"}
    ev = be.mq.wait_json("/event", lambda d: d["code"] == "ConfigChanged")
    assert "s3cret" not in json.dumps(ev)
    for topic, payload, _ in be.mq.msgs[m:]:
        if not topic.endswith("/cmd"):
            assert b"s3cret" not in payload, topic
    assert "s3cret" not in be.st.stderr()
    saved = json.loads(open(os.path.join(be.st.state_dir, "config.json")).read())
    assert saved["max_current_a"] == 16.0  # persisted on flash


def test_config_set_is_all_or_nothing(be):
    r = be.cmd("config_set", values={"max_current_a": 16, "phases": 5})
    assert r["ok"] is False and r["error"] == "out_of_range"
    assert be.cmd("config_get", keys=["max_current_a"])["data"]["max_current_a"] == 32.0
    r = be.cmd("config_set", values={"max_current_a": 16, "bogus": 1})
    assert r["error"] == "bad_arg"
    r = be.cmd("config_set", values={"prefix": "a/b"})
    assert r["error"] == "bad_arg"
    assert be.cmd("config_get", keys=["max_current_a"])["data"]["max_current_a"] == 32.0


def test_set_limit_clear_limit_and_ttl(be):
    charging(be.st)
    r = be.cmd("set_limit", connector=1, current_a=10)
    assert r["ok"]
    s = be.status(lambda c: c["limit_by"] == "backend")
    assert s["connectors"][0]["limit_a"] == 10.0 and s["connectors"][0]["offered_a"] == 10.0
    be.st.wait_for(lambda s: s["offered_a"] == 10.0)
    assert be.cmd("clear_limit", connector=1)["ok"]
    be.status(lambda c: c["limit_by"] == "hardware")
    # Station scope with a TTL: it lapses by itself.
    assert be.cmd("set_limit", connector=0, current_a=8, ttl_s=2)["ok"]
    be.status(lambda c: c["limit_by"] == "backend" and c["limit_a"] == 8.0)
    be.status(lambda c: c["limit_by"] == "hardware", timeout=5)


def test_enable_disable_and_stop(be):
    charging(be.st)
    assert be.cmd("disable", connector=1)["ok"]
    be.status(lambda c: c["state"] == "Unavailable")
    s = be.st.wait_for(lambda s: not s["contactor"])
    assert s["cp_high_v"] == -12.0  # state F
    assert be.cmd("enable", connector=1)["ok"]
    be.status(lambda c: c["state"] in ("SuspendedEVSE", "Charging"))
    be.status(lambda c: c["state"] == "Charging", timeout=8)
    assert be.cmd("stop", connector=1)["ok"]
    be.status(lambda c: c["state"] == "Finishing")
    # PWM off; this EV keeps S2 closed, so the contactor opens at the 6 s C1 timeout.
    be.st.wait_for(lambda s: not s["contactor"] and s["pwm_duty_pct"] is None, timeout=7.5)
    r = be.cmd("stop", connector=1)
    assert r["ok"] is False and r["error"] == "not_allowed"
    be.st.op("unplug")
    be.status(lambda c: c["state"] == "Available")


def test_diag(be):
    d = be.cmd("diag")["data"]
    for k in ("uptime_s", "heap_free", "loop_max_gap_ms", "reconnects", "fw", "outbox_bytes",
              "modbus"):
        assert k in d
    assert d["heap_free"] > 0 and d["connects"] == 1


def test_reboot_restarts_and_reconnects(be):
    m = be.mark()
    r = be.cmd("reboot", delay_s=1)
    assert r["ok"] and r["data"] == {"delay_s": 1}
    be.mq.wait_json("/event", lambda d: d["code"] == "Reboot", timeout=5)
    # The runner boots the firmware again: it announces itself anew.
    def online_again():
        seen = [x for x in be.mq.msgs[m:] if x[0] == BASE + "/online" and x[1] == b"online"]
        return len(seen) >= 1

    end = time.monotonic() + 10
    while not online_again() and time.monotonic() < end:
        time.sleep(0.05)
    assert online_again()
    assert be.cmd("diag")["data"]["uptime_s"] < 5


@pytest.mark.parametrize(
    "payload,rid,code",
    [
        (b"{not json", None, "bad_json"),
        (b"\xff\xfe\x00garbage", None, "bad_json"),
        (b"[1,2,3]", None, "bad_json"),
        (b'{"cmd":"diag"}', None, "bad_arg"),
        (b'{"rid":{"x":1},"cmd":"diag"}', None, "bad_arg"),
        (b'{"rid":"r1","cmd":"fly"}', "r1", "unknown_cmd"),
        (b'{"rid":"r2"}', "r2", "unknown_cmd"),
        (b'{"rid":"r3","cmd":"set_limit","connector":1}', "r3", "bad_arg"),
        (b'{"rid":"r4","cmd":"set_limit","connector":1,"current_a":"16"}', "r4", "bad_arg"),
        (b'{"rid":"r5","cmd":"set_limit","connector":1,"current_a":81}', "r5", "out_of_range"),
        (b'{"rid":"r6","cmd":"set_limit","connector":7,"current_a":16}', "r6", "out_of_range"),
        (b'{"rid":"r7","cmd":"set_limit","connector":1,"current_a":16,"ttl_s":0}', "r7",
         "out_of_range"),
        (b'{"rid":"r8","cmd":"enable","connector":true}', "r8", "bad_arg"),
        (b'{"rid":"r9","cmd":"reboot","delay_s":-1}', "r9", "out_of_range"),
        (b'{"rid":"r10","cmd":"config_get","keys":"phases"}', "r10", "bad_arg"),
        (b'{"rid":"r11","cmd":"config_set","values":[]}', "r11", "bad_arg"),
        (b'{"rid":"r12","cmd":"stop","sid":"nope"}', "r12", "not_found"),
        (b'{"rid":42,"cmd":"fly"}', 42, "unknown_cmd"),
    ],
)
def test_bad_input_gets_an_error_reply_and_changes_nothing(be, payload, rid, code):
    m = be.mark()
    be.publish(BASE + "/cmd", payload)
    r = be.mq.wait_json("/reply", lambda d: d.get("error") == code and d.get("rid") == rid)
    assert r["ok"] is False and r["detail"]
    ev = be.mq.wait_json("/event", lambda d: d["code"] == "RejectedInput")
    assert ev["level"] == "warn"
    time.sleep(0.2)
    replies = [x for x in be.mq.msgs[m:] if x[0].endswith("/reply")]
    assert len(replies) == 1  # exactly one reply
    assert be.cmd("config_get", keys=["max_current_a"])["data"]["max_current_a"] == 32.0


def test_huge_payload(be):
    be.publish(BASE + "/cmd", b'{"rid":"big","cmd":"diag","pad":"' + b"x" * 5000 + b'"}')
    r = be.mq.wait_json("/reply", lambda d: d.get("error") == "too_large")
    assert r["rid"] is None
    be.publish(BASE + "/cmd", b'{"rid":"mid","cmd":"diag","pad":"' + b"x" * 1950 + b'"}')
    r = be.mq.wait_json("/reply", lambda d: d.get("error") == "too_large")
    assert be.cmd("diag")["ok"]  # the link is still in sync


def test_retained_command_is_ignored(be):
    be.mq.c.publish(BASE + "/cmd", json.dumps({"rid": "old", "cmd": "disable", "connector": 1}),
                    qos=1, retain=True).wait_for_publish(5)
    time.sleep(0.5)
    # Live delivery of a retained publish is not flagged retained; the station acts once.
    # After a reconnect the broker would resend it flagged retained: it must not act again.
    be.mq.c.publish(BASE + "/cmd", b"", qos=1, retain=True).wait_for_publish(5)
    assert be.cmd("enable", connector=1)["ok"]


def test_meter_cadence_and_values(tmp_path):
    b = Backend(tmp_path, config=["meter_interval_s=1", "meter_idle_interval_s=10"])
    try:
        first = b.mq.wait_json("/meter")  # one reading right after connect
        assert first["connector"] == 1 and first["p_w"] == 0 and first["v"] == [230.0] * 3
        charging(b.st)
        b.status(lambda c: c["state"] == "Charging")
        m = b.mark()
        time.sleep(3.5)
        ms = [json.loads(x[1]) for x in b.mq.msgs[m:] if x[0] == BASE + "/meter"]
        assert 3 <= len(ms) <= 5  # every meter_interval_s while charging
        last = ms[-1]
        assert last["i"] == [32.0, 32.0, 32.0] and last["p_w"] == 22080
        assert isinstance(last["e_wh"], int) and last["e_wh"] >= first["e_wh"]
        assert all(not x[2] for x in b.mq.msgs[m:] if x[0] == BASE + "/meter")  # not retained
        b.st.op("ev", request=False)
        b.status(lambda c: c["state"] == "SuspendedEV")
        time.sleep(0.5)
        m = b.mark()
        time.sleep(3)
        assert not [x for x in b.mq.msgs[m:] if x[0] == BASE + "/meter"]  # idle cadence
        info = json.loads(retained(b.broker.port, BASE + "/info")[0])
        assert info["meter"] == "sdm630"  # the simulated meter speaks SDM630 RTU
    finally:
        b.stop()


def test_config_set_broker_takes_effect_by_clean_reconnect(tmp_path):
    from broker import Broker
    from mqttc import Collector
    from simctl import Station

    b1 = Broker(allow_fallback=False)
    b2 = Broker(allow_fallback=False)
    mq1 = Collector(b1.port, "#")
    mq2 = Collector(b2.port, "#")
    st = Station(state_dir=str(tmp_path),
                 config=['mqtt.host="127.0.0.1"', "mqtt.port=%d" % b1.port])
    try:
        mq1.wait(lambda m: m[0] == BASE + "/online" and m[1] == b"online", what="online b1")
        mq1.c.publish(BASE + "/cmd", json.dumps({"rid": "mv", "cmd": "config_set",
                                                 "values": {"mqtt.port": b2.port}}), qos=1)
        r = mq1.wait_json("/reply", lambda d: d.get("rid") == "mv")
        assert r["ok"]  # answered on the old connection before moving
        mq2.wait(lambda m: m[0] == BASE + "/online" and m[1] == b"online", timeout=10,
                 what="online b2")
        # A clean DISCONNECT: the old broker does not publish the last will.
        time.sleep(0.5)
        assert not [m for m in mq1.msgs if m[0] == BASE + "/online" and m[1] == b"offline"]
    finally:
        st.stop()
        mq1.stop()
        mq2.stop()
        b1.stop()
        b2.stop()
