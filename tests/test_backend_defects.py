"""Defects found by following docs/mqtt.md as a backend developer would; each test failed
on the code before its fix (the break that proves it is named in each docstring)."""

import json
import time

import pytest

from backend import BASE, Backend
from broker import Broker
from mqttc import Collector
from scenario import charging

HA = "homeassistant"
ENTITIES = 6  # per connector: state, offered, power, energy, limit, enabled


def _restart_broker(be):
    """Kill the broker and start a fresh one on the same port; returns a mark on the new
    collector taken before the station can reconnect."""
    port = be.broker.port
    be.mq.stop()
    be.broker.proc.kill()
    be.broker.proc.wait()
    be.broker.stop()
    be.broker = Broker(port=port, allow_fallback=False)
    be.mq = Collector(port, "#")
    return be.mark()


@pytest.mark.parametrize("connectors", [2, 4])
def test_connect_burst_loses_nothing(tmp_path, connectors):
    """Break: publish the discovery configs unpaced (evse/telemetry.py: ignore False from
    the paced publish) -> configs, Connected, status or meters go missing."""
    be = Backend(tmp_path, config=["ha_discovery=true", "meter_idle_interval_s=10"],
                 connectors=connectors)
    try:
        m = _restart_broker(be)
        be.wait_online(since=m, timeout=20)
        be.event("Connected", since=m, timeout=10)
        want = {"%s/%s/evse-435031_c%d/%s/config" % (HA, comp, n, key)
                for n in range(1, connectors + 1)
                for comp, key in (("sensor", "state"), ("sensor", "offered"),
                                  ("sensor", "power"), ("sensor", "energy"),
                                  ("number", "limit"), ("switch", "enabled"))}
        end = time.monotonic() + 10
        while time.monotonic() < end:
            got = {t for t, _, _ in be.mq.after(m) if t.startswith(HA + "/")}
            meters = {d["connector"] for d in be.mq.json_after(m, "/meter")}
            statuses = be.mq.json_after(m, "/status")
            if want <= got and len(meters) == connectors and statuses:
                break
            time.sleep(0.1)
        assert len(want) == ENTITIES * connectors
        assert want - got == set(), "discovery configs missing after reconnect"
        assert meters == set(range(1, connectors + 1)), "a meter reading per connector"
        assert statuses and len(statuses[-1]["connectors"]) == connectors
        d = be.cmd("diag")["data"]
        assert d["publish_dropped"] == 0 and d["events_dropped"] == 0
    finally:
        be.stop()


def test_burst_of_rejected_commands_drops_no_event(tmp_path):
    """Break: Events.add without coalescing (evse/events.py) -> events_dropped grows."""
    be = Backend(tmp_path)
    try:
        m = be.mark()
        n = 40
        for i in range(n):
            be.publish(BASE + "/cmd", {"rid": "bad%d" % i, "cmd": "fly"})
        end = time.monotonic() + 10
        while time.monotonic() < end:
            replies = be.mq.json_after(m, "/reply")
            events = [e for e in be.mq.json_after(m, "/event") if e["code"] == "RejectedInput"]
            if len(replies) >= n and sum(e.get("count", 1) for e in events) >= n:
                break
            time.sleep(0.1)
        assert len(replies) == n and all(r["error"] == "unknown_cmd" for r in replies)
        assert sum(e.get("count", 1) for e in events) == n  # every rejection accounted for
        assert be.cmd("diag")["data"]["events_dropped"] == 0
    finally:
        be.stop()


def test_event_ts_is_when_it_happened(tmp_path):
    """Break: report.event with ts = the clock at publish (ignore the stored stamp) -> a
    Failsafe queued offline carries the reconnect time."""
    broker = Broker(allow_fallback=False)
    be = Backend(tmp_path, broker=broker, config=["failsafe_after_s=5"])
    try:
        charging(be.st)
        assert be.cmd("set_limit", connector=1, current_a=20)["ok"]
        be.mq.stop()
        t_kill = time.time()
        broker.proc.kill()
        broker.proc.wait()
        be.st.wait_for(lambda s: s["offered_a"] == 6.0, timeout=15, what="failsafe")
        time.sleep(8)  # the event waits in the queue while the link is down
        broker.stop()
        broker = Broker(port=broker.port, allow_fallback=False)
        be.broker = broker
        be.mq = Collector(broker.port, "#")
        m = be.mark()
        t_back = time.time()
        ev = be.event("Failsafe", since=m, timeout=20)
        assert t_kill + 3 <= ev["ts"] <= t_back - 4, (t_kill, ev["ts"], t_back)
    finally:
        be.stop()
        broker.stop()


def test_repeated_rid_is_answered_from_memory_not_run_again(tmp_path):
    """Break: Api._recall returning None -> the retried set_limit runs again (10 A)."""
    be = Backend(tmp_path)
    try:
        m = be.mark()
        be.send("set_limit", rid="a", connector=1, current_a=10)
        first = be.reply("a", since=m)
        assert be.cmd("set_limit", connector=1, current_a=16)["ok"]
        m = be.mark()
        be.send("set_limit", rid="a", connector=1, current_a=10)  # a retry of "a"
        assert be.reply("a", since=m) == first
        time.sleep(0.6)  # a status after both commands (coalescing spaces them 0.5 s)
        s = json.loads(be.retained("status"))
        assert s["connectors"][0]["limit_a"] == 16.0  # the retry did not act again
        assert be.cmd("diag")["data"]["repeats"] == 1
        # The same rid with another command is a new command (a backend that reuses rids).
        m = be.mark()
        be.send("clear_limit", rid="a", connector=1)
        assert be.reply("a", since=m)["ok"]
        be.status(lambda c: c["limit_by"] == "hardware", since=m)
    finally:
        be.stop()


def test_status_energy_refreshes_with_the_meter(tmp_path):
    """Break: Telemetry._meter without the _status_due refresh -> energy_wh stays put."""
    be = Backend(tmp_path, config=["meter_interval_s=1", "status_interval_s=300"])
    try:
        charging(be.st)
        be.st.op("meter", speed=3600)  # ~22 kWh per second at 32 A
        be.status(lambda c: c["state"] == "Charging", since=0)
        time.sleep(1)
        m = be.mark()
        first = be.status(lambda c: c.get("energy_wh", 0) > 0, since=m, timeout=5)
        e0 = first["connectors"][0]["energy_wh"]
        later = be.status(lambda c: c.get("energy_wh", 0) > e0 + 15000, since=m, timeout=8)
        c = later["connectors"][0]
        assert c["state"] == "Charging" and c["offered_a"] == 32.0  # nothing else changed
        meter = be.mq.wait_json("/meter", since=m)
        assert meter["e_wh"] > 0
    finally:
        be.stop()


def test_four_connectors_all_charge(tmp_path):
    """Break: Meter.poll without the bus.room() check -> meters 3 and 4 never read."""
    be = Backend(tmp_path, connectors=4, config=["meter_fail_s=3"])
    try:
        charging(be.st)  # connector 1 first: the bus is busy with every meter
        be.st.op("plug", connector=4)
        be.st.op("ev", connector=4, request=True, respond_s=0.2)
        time.sleep(4)  # past meter_fail_s
        m = be.mark()
        s = be.status(lambda c: c["state"] == "Charging", since=m, timeout=10, connector=4)
        assert [c["error"] for c in s["connectors"]] == [None] * 4
        assert be.st.op("get", connector=4)["contactor"]
        meters = set()
        end = time.monotonic() + 12
        while meters != {1, 2, 3, 4} and time.monotonic() < end:
            meters = {d["connector"] for d in be.mq.json_after(0, "/meter")}
            time.sleep(0.2)
        assert meters == {1, 2, 3, 4}
    finally:
        be.stop()


def test_home_assistant_default_entity_id_and_rediscovery(tmp_path):
    """Break: drop the homeassistant/status subscription (evse/link.py) -> no configs
    after Home Assistant announces itself online."""
    be = Backend(tmp_path, config=["ha_discovery=true"])
    try:
        topic = HA + "/sensor/evse-435031_c1/state/config"
        cfg = json.loads(be.mq.wait(lambda x: x[0] == topic, since=0)[1])
        assert "object_id" not in cfg
        assert cfg["default_entity_id"] == "sensor.evse_435031_c1_state"
        time.sleep(0.5)
        m = be.mark()
        be.publish(HA + "/status", "online")  # Home Assistant restarted
        got = be.mq.wait(lambda x: x[0] == topic, since=m, timeout=5)
        assert json.loads(got[1]) == cfg
        m = be.mark()
        be.publish(HA + "/status", "offline")
        assert be.cmd("diag")["ok"]  # proof the station handled what came before it
        assert not [x for x in be.mq.after(m) if x[0] == topic]
    finally:
        be.stop()


def test_config_shows_the_broker_in_force(tmp_path):
    """Break: sim board without config_pinned (--broker ignored by config) -> 1883."""
    be = Backend(tmp_path)
    try:
        cfg = json.loads(be.retained("config"))
        assert cfg["mqtt.port"] == be.broker.port and cfg["mqtt.host"] == "127.0.0.1"
        r = be.cmd("config_set", values={"mqtt.port": 1884})
        assert r["ok"] is False and r["error"] == "not_allowed"
        assert be.cmd("config_get", keys=["mqtt.port"])["data"] == {
            "mqtt.port": be.broker.port}
    finally:
        be.stop()


def test_prefix_change_is_not_a_link_loss(tmp_path):
    """Break: _went_down counting deliberate disconnects -> reconnects 1."""
    be = Backend(tmp_path)
    try:
        m = be.mark()
        assert be.cmd("config_set", values={"prefix": "site7"})["ok"]
        be.mq.wait(lambda x: x[0] == "site7/evse-435031/online" and x[1] == b"online",
                   since=m, what="online under the new prefix")
        rid = "p1"
        m = be.mark()
        be.publish("site7/evse-435031/cmd", {"rid": rid, "cmd": "diag"})
        d = be.mq.wait_json("site7/evse-435031/reply", lambda x: x["rid"] == rid,
                            since=m)["data"]
        assert d["connects"] == 2 and d["reconnects"] == 0
    finally:
        be.stop()


def test_integral_floats_are_integers(tmp_path):
    """Break: api._int / config.check refusing floats -> bad_arg."""
    be = Backend(tmp_path)
    try:
        assert be.cmd("set_limit", connector=1, current_a=16, ttl_s=600.0)["ok"]
        r = be.cmd("config_set", values={"phases": 2.0})
        assert r["ok"], r
        assert be.cmd("config_get", keys=["phases"])["data"] == {"phases": 2}
        r = be.cmd("config_set", values={"phases": 2.5})
        assert r["error"] == "bad_arg"
        r = be.cmd("set_limit", connector=1, current_a=16, ttl_s=600.5)
        assert r["error"] == "bad_arg"
    finally:
        be.stop()


def test_enable_after_stop_stays_finishing_until_replug(tmp_path):
    """The documented rule: stop ends the charge for this plug-in; enable does not undo
    it. Break: Connector.set_enabled clearing `finished` -> Charging again."""
    be = Backend(tmp_path)
    try:
        charging(be.st)
        m = be.mark()
        assert be.cmd("stop", connector=1)["ok"]
        be.status(lambda c: c["state"] == "Finishing", since=m)
        m = be.mark()
        assert be.cmd("enable", connector=1)["ok"]
        assert be.cmd("diag")["ok"]
        time.sleep(1)
        assert be.st.op("get")["pwm_duty_pct"] is None
        s = json.loads(be.retained("status"))  # the latest view
        assert s["connectors"][0]["state"] == "Finishing"
        m = be.mark()
        be.st.op("unplug")
        be.status(lambda c: c["state"] == "Available", since=m)
        m = be.mark()
        charging(be.st)
        be.status(lambda c: c["state"] == "Charging", since=m)
    finally:
        be.stop()
