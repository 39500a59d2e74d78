"""A test backend: a real mosquitto, one simulated station on it, and an MQTT client that
sends commands and collects what the station publishes."""

import itertools
import json
import time

import paho.mqtt.client as mqtt
from broker import Broker
from mqttc import Collector
from simctl import Station

BASE = "evse/evse-435031"


class Backend:
    def __init__(self, tmp_path, config=(), broker=None, station=True, **kw):
        self.broker = broker or Broker(allow_fallback=False)
        self.own_broker = broker is None
        self.mq = Collector(self.broker.port, "#")
        self.tmp = tmp_path
        self.kw = kw
        self.config = list(config)
        self._rid = itertools.count(1)
        self.st = None
        if station:
            self.start_station()

    def start_station(self, **kw):
        args = dict(self.kw)
        args.update(kw)
        self.st = Station(state_dir=str(self.tmp), broker="127.0.0.1:%d" % self.broker.port,
                          config=self.config, **args)
        self.mq.wait(lambda m: m[0] == BASE + "/online" and m[1] == b"online", what="online")
        return self.st

    def publish(self, topic, payload, qos=1):
        if isinstance(payload, (dict, list)):
            payload = json.dumps(payload)
        self.mq.c.publish(topic, payload, qos=qos).wait_for_publish(5)

    def cmd(self, name, timeout=5.0, **args):
        """Send a command, return its reply."""
        rid = "t%d" % next(self._rid)
        body = {"rid": rid, "cmd": name}
        body.update(args)
        self.publish(BASE + "/cmd", body)
        return self.reply(rid, timeout)

    def reply(self, rid, timeout=5.0):
        return self.mq.wait_json("/reply", lambda d: d.get("rid") == rid, timeout)

    def status(self, pred=lambda c: True, timeout=5.0, since=0):
        """The first status (after message index since) whose connector 1 matches pred."""
        def match(m):
            if not m[0].endswith("/status"):
                return False
            return pred(json.loads(m[1])["connectors"][0])

        end = time.monotonic() + timeout
        while True:
            for m in self.mq.msgs[since:]:
                if match(m):
                    return json.loads(m[1])
            if time.monotonic() > end:
                raise AssertionError("no matching status in %r" % [
                    json.loads(m[1])["connectors"][0] for m in self.mq.msgs
                    if m[0].endswith("/status")][-5:])
            time.sleep(0.02)

    def mark(self):
        return len(self.mq.msgs)

    def stop(self):
        if self.st:
            self.st.stop()
        self.mq.stop()
        if self.own_broker:
            self.broker.stop()


def retained(port, topic, timeout=3.0):
    """What a fresh subscriber gets as the retained message on topic."""
    got = []
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    c.on_message = lambda cl, u, m: got.append((m.payload, m.retain))
    c.connect("127.0.0.1", port)
    c.subscribe(topic, 1)
    c.loop_start()
    end = time.monotonic() + timeout
    while not got and time.monotonic() < end:
        time.sleep(0.02)
    c.loop_stop()
    c.disconnect()
    return got[0] if got else None
