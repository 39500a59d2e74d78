"""A test backend: a real mosquitto, one simulated station on it, and an MQTT client that
sends commands and collects what the station publishes.

Checks about the effect of an action look only at messages after a mark taken before it:
`m = be.mark(); act(); be.status(pred, since=m)`. cmd() takes its own mark."""

import itertools
import json

from broker import Broker
from mqttc import Collector, retained
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
        m = self.mark()
        self.st = Station(state_dir=str(self.tmp), broker="127.0.0.1:%d" % self.broker.port,
                          config=self.config, **args)
        self.wait_online(since=m)
        return self.st

    def mark(self):
        return self.mq.mark()

    def wait_online(self, since, timeout=15.0):
        return self.mq.wait(lambda m: m[0] == BASE + "/online" and m[1] == b"online",
                            since=since, timeout=timeout, what="online")

    def publish(self, topic, payload, qos=1, retain=False):
        if isinstance(payload, (dict, list)):
            payload = json.dumps(payload)
        self.mq.c.publish(topic, payload, qos=qos, retain=retain).wait_for_publish(5)

    def send(self, name, rid=None, **args):
        """Publish a command without waiting; returns its rid."""
        rid = rid or "t%d" % next(self._rid)
        body = {"rid": rid, "cmd": name}
        body.update(args)
        self.publish(BASE + "/cmd", body)
        return rid

    def cmd(self, name, timeout=5.0, **args):
        """Send a command, return its reply."""
        m = self.mark()
        rid = self.send(name, **args)
        return self.reply(rid, since=m, timeout=timeout)

    def reply(self, rid, *, since, timeout=5.0):
        return self.mq.wait_json("/reply", lambda d: d.get("rid") == rid, since=since,
                                 timeout=timeout)

    def event(self, code, *, since, pred=lambda d: True, timeout=5.0):
        return self.mq.wait_json("/event", lambda d: d["code"] == code and pred(d),
                                 since=since, timeout=timeout)

    def status(self, pred=lambda c: True, *, since, timeout=5.0, connector=1):
        """The first status after `since` whose connector matches pred."""
        return self.mq.wait_json(
            "/status", lambda d: pred(d["connectors"][connector - 1]), since=since,
            timeout=timeout)

    def retained(self, sub, timeout=3.0):
        """The retained payload a fresh subscriber gets on <base>/<sub> (None if none)."""
        got = retained(self.broker.port, BASE + "/" + sub, timeout, first=True)
        return got[0][1] if got else None

    def stop(self):
        if self.st:
            self.st.stop()
        self.mq.stop()
        if self.own_broker:
            self.broker.stop()
