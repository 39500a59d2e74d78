"""The MQTT API v1 (docs/mqtt.md) against a real mosquitto: topics, retained
flags, every command of this issue and its error replies.

Every check about an action's effect looks only at messages after a mark taken before the
action; retain flags are checked with a fresh subscriber (mqttc.retained), never on live
deliveries (MQTT 3.1.1 §3.3.1.3: those always carry retain=0)."""

import json
import os
import time

import pytest

from backend import BASE, Backend
from mqttc import retained
from scenario import charging, wait_log


@pytest.fixture
def be(tmp_path):
    b = Backend(tmp_path)
    yield b
    b.stop()


def _one(port, sub):
    """The retained payload a fresh subscriber gets on <base>/<sub>; asserts there is one."""
    got = retained(port, BASE + "/" + sub, first=True)
    assert len(got) == 1, (sub, got)
    return got[0][1]


def test_retained_topics_after_connect(be):
    port = be.broker.port
    assert _one(port, "online") == b"online"
    assert json.loads(_one(port, "info"))["api"] == 1
    cfg = json.loads(_one(port, "config"))
    assert cfg["max_current_a"] == 32.0 and cfg["mqtt.password"] == ""
    assert json.loads(_one(port, "status"))["connectors"][0]["state"] == "Available"


def test_reply_and_event_are_not_retained(be):
    m = be.mark()
    assert be.cmd("diag")["ok"]
    r = be.cmd("nope")
    assert r["error"] == "unknown_cmd"
    # Positive evidence first: a reply and an event were published after the mark ...
    be.reply(r["rid"], since=m)
    be.event("RejectedInput", since=m)
    # ... and a subscriber that joins now gets neither as a retained message, while it does
    # get the retained topics (so it could have seen them).
    got = dict(retained(be.broker.port, BASE + "/#", timeout=1.0))
    assert {BASE + "/online", BASE + "/status"} <= set(got), got
    assert BASE + "/reply" not in got and BASE + "/event" not in got, got


def test_config_get_and_set(be):
    r = be.cmd("config_get")
    assert r["ok"] and r["data"]["max_current_a"] == 32.0 and r["data"]["prefix"] == "evse"
    r = be.cmd("config_get", keys=["phases", "auth_mode"])
    assert r["data"] == {"phases": 3, "auth_mode": "free"}
    m = be.mark()
    r = be.cmd("config_set", values={"max_current_a": 16, "mqtt.password": "s3cret"})
    assert r["ok"] and r["data"]["changed"] == ["max_current_a", "mqtt.password"]
    cfg = be.mq.wait_json("/config", lambda d: d["max_current_a"] == 16.0, since=m)
    assert cfg["mqtt.password"] == "***"
    assert json.loads(_one(be.broker.port, "config"))["max_current_a"] == 16.0
    assert be.cmd("config_get", keys=["mqtt.password"])["data"] == {"mqtt.password": "***"}
    ev = be.event("ConfigChanged", since=m)
    assert "s3cret" not in json.dumps(ev)
    for topic, payload, _ in be.mq.after(m):
        if not topic.endswith("/cmd"):
            assert b"s3cret" not in payload, topic
    assert "s3cret" not in be.st.stderr()
    saved = json.loads(open(os.path.join(be.st.state_dir, "config.json")).read())
    assert saved["max_current_a"] == 16.0  # persisted on flash


def test_config_set_is_all_or_nothing(be):
    m = be.mark()
    r = be.cmd("config_set", values={"max_current_a": 16, "phases": 5})
    assert r["ok"] is False and r["error"] == "out_of_range"
    assert be.cmd("config_get", keys=["max_current_a"])["data"]["max_current_a"] == 32.0
    r = be.cmd("config_set", values={"max_current_a": 16, "bogus": 1})
    assert r["error"] == "bad_arg"
    r = be.cmd("config_set", values={"prefix": "a/b"})
    assert r["error"] == "bad_arg"
    assert be.cmd("config_get", keys=["max_current_a"])["data"]["max_current_a"] == 32.0
    # Nothing changed, so nothing was announced (the rejections were: positive evidence).
    be.event("RejectedInput", since=m)
    assert [e for e in be.mq.json_after(m, "/event") if e["code"] == "ConfigChanged"] == []
    assert all(c["max_current_a"] == 32.0 and c["phases"] == 3 and c["prefix"] == "evse"
               for c in be.mq.json_after(m, BASE + "/config"))


def test_set_limit_clear_limit_and_ttl(be):
    charging(be.st)
    m = be.mark()
    r = be.cmd("set_limit", connector=1, current_a=10)
    assert r["ok"]
    s = be.status(lambda c: c["limit_by"] == "backend", since=m)
    assert s["connectors"][0]["limit_a"] == 10.0 and s["connectors"][0]["offered_a"] == 10.0
    be.st.wait_for(lambda s: s["offered_a"] == 10.0)
    m = be.mark()
    assert be.cmd("clear_limit", connector=1)["ok"]
    s = be.status(lambda c: c["limit_by"] == "hardware", since=m)
    assert s["connectors"][0]["limit_a"] == 32.0
    # Station scope with a TTL: it lapses by itself.
    m = be.mark()
    assert be.cmd("set_limit", connector=0, current_a=8, ttl_s=3)["ok"]
    on = be.status(lambda c: c["limit_by"] == "backend" and c["limit_a"] == 8.0, since=m)
    m = be.mark()  # after the limit was seen in force: a later "hardware" is the lapse
    off = be.status(lambda c: c["limit_by"] == "hardware", since=m, timeout=8)
    assert off["connectors"][0]["limit_a"] == 32.0
    # Not early: by the station's own clock the two statuses are 2.5-3.1 s apart (3 s TTL,
    # a status up to 0.5 s after its change), so their whole-second uptimes differ by >= 2.
    assert off["uptime_s"] - on["uptime_s"] >= 2, (on, off)


def test_enable_disable_and_stop(be):
    charging(be.st)
    m = be.mark()
    assert be.cmd("disable", connector=1)["ok"]
    # Charging ends the IEC way: PWM off, the contactor stays until the EV answers C->B.
    be.status(lambda c: c["state"] == "SuspendedEVSE" and c["offered_a"] == 0.0, since=m)
    assert be.st.op("get")["contactor"]
    be.st.op("ev", request=False)
    be.status(lambda c: c["state"] == "Unavailable", since=m)
    s = be.st.wait_for(lambda s: not s["contactor"] and s["cp_high_v"] == -12.0)
    assert s["cp_high_v"] == -12.0  # state F
    be.st.op("ev", request=True)
    m = be.mark()
    assert be.cmd("enable", connector=1)["ok"]
    be.status(lambda c: c["state"] in ("SuspendedEVSE", "Charging"), since=m)
    be.status(lambda c: c["state"] == "Charging", since=m, timeout=8)
    m = be.mark()
    assert be.cmd("stop", connector=1)["ok"]
    be.status(lambda c: c["state"] == "Finishing", since=m)
    # PWM off; this EV keeps S2 closed, so the contactor opens at the 6 s C1 timeout.
    be.st.wait_for(lambda s: not s["contactor"] and s["pwm_duty_pct"] is None, timeout=10)
    r = be.cmd("stop", connector=1)
    assert r["ok"] is False and r["error"] == "not_allowed"
    m = be.mark()
    be.st.op("unplug")
    be.status(lambda c: c["state"] == "Available", since=m)


def test_stop_by_session_id(be):
    m = be.mark()
    charging(be.st)
    s = be.status(lambda c: c["state"] == "Charging", since=m)
    sid = s["connectors"][0]["session"]
    assert isinstance(sid, str) and sid, s
    m = be.mark()
    r = be.cmd("stop", sid=sid)
    assert r["ok"], r
    be.status(lambda c: c["state"] == "Finishing", since=m)
    be.st.wait_for(lambda s: s["pwm_duty_pct"] is None, what="PWM off after stop")


def test_diag(be):
    d = be.cmd("diag")["data"]
    assert d["fw_image"] == "files"  # the simulator runs the firmware from files
    for k in ("uptime_s", "heap_free", "loop_max_gap_ms", "reconnects", "fw", "outbox_bytes",
              "modbus"):
        assert k in d
    assert d["heap_free"] > 0 and d["connects"] == 1


def test_reboot_restarts_and_reconnects(be):
    assert be.cmd("diag")["data"]["uptime_s"] >= 0
    m = be.mark()
    r = be.cmd("reboot", delay_s=1)
    assert r["ok"] and r["data"] == {"delay_s": 1}
    be.event("Reboot", since=m)
    # The runner boots the firmware again: it announces itself anew (a clean DISCONNECT
    # first, so no last will in between).
    be.wait_online(since=m)
    assert not [x for x in be.mq.after(m) if x[0] == BASE + "/online" and x[1] != b"online"]
    d = be.cmd("diag")["data"]
    assert d["uptime_s"] < 5 and d["connects"] == 1  # a fresh boot, not just a reconnect


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
        (b'{"rid":"r12","cmd":"stop","sid":7}', "r12", "bad_arg"),
        (b'{"rid":42,"cmd":"fly"}', 42, "unknown_cmd"),
    ],
)
def test_bad_input_gets_an_error_reply_and_changes_nothing(be, payload, rid, code):
    m = be.mark()
    be.publish(BASE + "/cmd", payload)
    r = be.mq.wait_json("/reply", lambda d: d.get("error") == code and d.get("rid") == rid,
                        since=m)
    assert r["ok"] is False and r["detail"]
    ev = be.event("RejectedInput", since=m)
    assert ev["level"] == "warn"
    # Commands are answered in order: every reply to the bad payload comes before this one.
    after = be.mark()
    check = be.send("config_get", keys=["max_current_a"])
    got = be.reply(check, since=after)
    assert got["data"]["max_current_a"] == 32.0
    replies = []
    for topic, payload_, _ in be.mq.after(m):
        if topic.endswith("/reply"):
            d = json.loads(payload_)
            if d.get("rid") == check:
                break
            replies.append(d)
    assert len(replies) == 1, replies  # exactly one reply


def test_huge_payload(be):
    m = be.mark()
    be.publish(BASE + "/cmd", b'{"rid":"big","cmd":"diag","pad":"' + b"x" * 5000 + b'"}')
    r = be.mq.wait_json("/reply", lambda d: d.get("error") == "too_large", since=m)
    assert r["rid"] is None
    m = be.mark()
    be.publish(BASE + "/cmd", b'{"rid":"mid","cmd":"diag","pad":"' + b"x" * 1950 + b'"}')
    r = be.mq.wait_json("/reply", lambda d: d.get("error") == "too_large", since=m)
    assert be.cmd("diag")["ok"]  # the link is still in sync


def test_retained_command_is_ignored(be):
    """A retained command acts once, live; a reconnect must not replay it (the broker sends
    it again, flagged retained, to the new subscription)."""
    try:
        m = be.mark()
        be.publish(BASE + "/cmd", json.dumps({"rid": "old", "cmd": "disable", "connector": 1}),
                   retain=True)
        # Live delivery of a retained publish is not flagged retained: the station acts.
        assert be.reply("old", since=m)["ok"]
        be.status(lambda c: c["state"] == "Unavailable", since=m)
        m = be.mark()
        assert be.cmd("enable", connector=1)["ok"]
        be.status(lambda c: c["state"] == "Available", since=m)
        assert be.retained("cmd") is not None  # the broker still holds it for the reconnect
        # Reconnect: a reboot (a fresh process, so no memory of rid "old" either).
        m = be.mark()
        assert be.cmd("reboot")["ok"]
        be.wait_online(since=m)
        # Subscribed to cmd again: a fresh command is answered, and commands are handled in
        # order, so the retained one (delivered right after the SUBACK) came before it.
        assert be.cmd("diag")["data"]["connects"] == 1
        olds = [d for d in be.mq.json_after(m, "/reply") if d.get("rid") == "old"]
        assert not olds, olds
        assert be.st.op("get")["cp_high_v"] == 12.0  # X1, not state F: not disabled
        assert all(s["connectors"][0]["state"] != "Unavailable"
                   for s in be.mq.json_after(m, "/status"))
    finally:
        be.publish(BASE + "/cmd", b"", retain=True)  # clear the retained command


def _meters(b, since, n, timeout=8.0):
    """The first n meter messages after `since` (parsed), waiting for them."""
    end = time.monotonic() + timeout
    while True:
        ms = b.mq.json_after(since, BASE + "/meter")
        if len(ms) >= n or time.monotonic() > end:
            assert len(ms) >= n, "only %d meter messages: %r" % (len(ms), ms)
            return ms[:n]
        time.sleep(0.05)


def test_meter_cadence_and_values(tmp_path):
    b = Backend(tmp_path, config=["meter_interval_s=1", "meter_idle_interval_s=10"],
                station=False)
    try:
        m = b.mark()
        b.start_station()
        first = b.mq.wait_json(BASE + "/meter", since=m)  # one reading right after connect
        assert first["connector"] == 1 and first["p_w"] == 0 and first["v"] == [230.0] * 3
        m = b.mark()
        charging(b.st)
        b.status(lambda c: c["state"] == "Charging", since=m)
        m = b.mark()
        ms = _meters(b, m, 4)
        # Every meter_interval_s (1 s) while charging, by the station's own clock (ts, whole
        # seconds): 3 intervals span about 3 s.
        assert 2 <= ms[-1]["ts"] - ms[0]["ts"] <= 5, [x["ts"] for x in ms]
        last = ms[-1]
        assert last["i"] == [32.0, 32.0, 32.0] and last["p_w"] == 22080
        assert isinstance(last["e_wh"], int) and last["e_wh"] >= first["e_wh"]
        # Published (above), yet a subscriber joining now gets no retained meter message
        # (it does get the retained status: it could have seen one).
        got = dict(retained(b.broker.port, BASE + "/#", timeout=1.0))
        assert BASE + "/status" in got and BASE + "/meter" not in got, got
        m = b.mark()
        b.st.op("ev", request=False)
        b.status(lambda c: c["state"] == "SuspendedEV", since=m)
        m = b.mark()
        t0 = b.st.op("get")["now_us"]
        b.st.wait_for(lambda s: s["now_us"] >= t0 + 3_000_000, timeout=10, interval=0.1)
        # The link kept polling through those 3 s (a command is answered after them), yet
        # the 1 s charging cadence stopped: the idle one is 10 s.
        assert b.cmd("diag")["ok"]
        assert b.mq.json_after(m, BASE + "/meter") == []
        info = json.loads(b.retained("info"))
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
    m1, m2 = mq1.mark(), mq2.mark()
    st = Station(state_dir=str(tmp_path),
                 config=['mqtt.host="127.0.0.1"', "mqtt.port=%d" % b1.port])
    try:
        mq1.wait(lambda m: m[0] == BASE + "/online" and m[1] == b"online", since=m1,
                 what="online b1")
        m1 = mq1.mark()
        mq1.c.publish(BASE + "/cmd", json.dumps({"rid": "mv", "cmd": "config_set",
                                                 "values": {"mqtt.port": b2.port}}), qos=1)
        r = mq1.wait_json("/reply", lambda d: d.get("rid") == "mv", since=m1)
        assert r["ok"]  # answered on the old connection before moving
        mq2.wait(lambda m: m[0] == BASE + "/online" and m[1] == b"online", since=m2,
                 timeout=10, what="online b2")
        # Positive evidence: b1 saw the station go, by a DISCONNECT packet (mosquitto logs
        # "closed its connection" when the socket just drops) ...
        wait_log(b1, "Client evse-435031 disconnected.")
        # ... so it does not publish the last will.
        assert not [m for m in mq1.after(m1) if m[0] == BASE + "/online" and m[1] != b"online"]
        assert retained(b1.port, BASE + "/online", first=True) == [(BASE + "/online", b"online")]
    finally:
        st.stop()
        mq1.stop()
        mq2.stop()
        b1.stop()
        b2.stop()
