"""The fleet runner (tools/fleetsim.py) really runs the firmware: 5 stations on a real
mosquitto come online, answer a set_limit and show it in their status, and write session
records that an acking subscriber acknowledges, after which their outboxes are empty."""

import json
import time

import paho.mqtt.client as mqtt
from benchfleet import Acker, Observer

from broker import Broker
from fleetsim import Fleet

N = 5


def run_until(fleet, pred, timeout_s, what):
    end = time.monotonic() + timeout_s
    while not pred():
        assert time.monotonic() < end, "timeout waiting for " + what
        fleet.run_pass()
        time.sleep(fleet.period_ms / 1000)


def test_five_stations_online_commands_and_acknowledged_sessions(tmp_path):
    """Breaks that turn it red: StreamSock.readinto returning 0 (as if the broker had
    closed) -> never online; the Acker not publishing its acks, or a firmware copy
    (EVSE_FIRMWARE) whose Sessions.on_ack ignores them -> the outboxes never empty."""
    ids = ["fleet-%04d" % i for i in range(1, N + 1)]
    broker = Broker(allow_fallback=False)
    url = "127.0.0.1:%d" % broker.port
    fleet = obs = acker = cmd = None
    try:
        obs = Observer(url)
        acker = Acker(url)
        fleet = Fleet(ids, url, str(tmp_path), period_ms=20, charge_s=(1.0, 1.5),
                      idle_s=(0.2, 0.5))
        run_until(fleet, lambda: obs.online >= set(ids), 10, "retained online")

        cmd = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        cmd.connect("127.0.0.1", broker.port)
        cmd.loop_start()
        for sid in ids:
            cmd.publish("evse/%s/cmd" % sid, json.dumps(
                {"rid": "t-" + sid, "cmd": "set_limit", "connector": 1, "current_a": 16}), qos=1)
        run_until(fleet, lambda: all(("t-" + s) in obs.replies for s in ids)
                  and all(obs.limits.get(s) == (16.0, "backend") for s in ids), 10,
                  "replies and statuses")
        assert all(obs.replies["t-" + s][1]["ok"] is True for s in ids)

        # Every station has completed at least one session: start and stop written.
        def done():
            return all(fs.st.sessions.journal.seq >= 2 for fs in fleet.stations)

        run_until(fleet, done, 15, "a session on every station")
        fleet.cycling(False)  # no more plug-ins: the sessions under way end

        def drained():
            return all(not fs.st.sessions.journal.outbox and fs.st.sessions.cur[0] is None
                       for fs in fleet.stations)

        run_until(fleet, drained, 10, "every session message acknowledged")
        stored = acker.dump()["records"]
        for fs in fleet.stations:
            seq = fs.st.sessions.journal.seq
            mine = sorted((q, ev) for s, q, t, ev in stored if s == fs.id)
            assert [q for q, ev in mine] == list(range(1, seq + 1)), fs.id
            assert [ev for q, ev in mine[:2]] == ["start", "stop"]
            assert fs.st.exceptions == 0
    finally:
        for c in (obs, acker):
            if c is not None:
                c.stop()
        if cmd is not None:
            cmd.loop_stop()
            cmd.disconnect()
        if fleet is not None:
            fleet.close()
        broker.stop()
