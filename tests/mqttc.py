"""A small paho-mqtt collector for tests: subscribe, record messages, wait for one.

Every wait looks only at messages after a mark taken *before* the action under test
(`m = c.mark(); act(); c.wait(pred, since=m)`), so a message from before the action can
never satisfy a check about its effect. `since` has no default on purpose."""

import json
import threading
import time

import paho.mqtt.client as mqtt


class Collector:
    def __init__(self, port, topic="#", user=None, password=None):
        self.msgs = []
        self._cv = threading.Condition()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        self.c.on_message = self._on
        subscribed = threading.Event()
        self.c.on_subscribe = lambda *a: subscribed.set()
        if user:
            self.c.username_pw_set(user, password)
        self.c.connect("127.0.0.1", port)
        self.c.subscribe(topic, qos=1)
        self.c.loop_start()
        # Subscribed before anyone takes a mark: nothing published after it can be missed.
        if not subscribed.wait(5.0):
            self.stop()
            raise AssertionError("no SUBACK from the broker on port %d" % port)

    def _on(self, client, userdata, m):
        with self._cv:
            self.msgs.append((m.topic, m.payload, m.retain))
            self._cv.notify_all()

    def mark(self):
        """The index of the next message: wait(..., since=mark) sees only later ones."""
        with self._cv:
            return len(self.msgs)

    def after(self, since):
        with self._cv:
            return list(self.msgs[since:])

    def wait(self, pred, *, since, timeout=10.0, what="message"):
        """The first (topic, payload, retain) after index `since` with pred true."""
        end = time.monotonic() + timeout
        with self._cv:
            i = since
            while True:
                while i < len(self.msgs):
                    m = self.msgs[i]
                    i += 1
                    if pred(m):
                        return m
                left = end - time.monotonic()
                if left <= 0:
                    raise AssertionError("no %s after #%d in %r" % (
                        what, since, self.msgs[max(since, len(self.msgs) - 10):]))
                self._cv.wait(left)

    def wait_json(self, suffix, pred=lambda d: True, *, since, timeout=10.0):
        """The payload (parsed) of the first message after `since` on a topic ending with
        suffix whose JSON satisfies pred."""
        def match(m):
            if not m[0].endswith(suffix):
                return False
            try:
                return pred(json.loads(m[1]))
            except (ValueError, KeyError, TypeError, IndexError):
                return False

        return json.loads(self.wait(match, since=since, timeout=timeout, what=suffix)[1])

    def json_after(self, since, suffix):
        """Every parsed payload after `since` on topics ending with suffix."""
        return [json.loads(m[1]) for m in self.after(since) if m[0].endswith(suffix)]

    def stop(self):
        self.c.loop_stop()
        self.c.disconnect()


def retained(port, topic, timeout=1.5, first=False):
    """What a fresh subscriber receives for `topic` flagged retained: [(topic, payload)].

    Only a subscriber that joins after the publish sees the retain flag (MQTT 3.1.1
    §3.3.1.3: live deliveries carry retain=0), so this is the only honest retain check.
    Waits `timeout` after the SUBACK for the broker's retained deliveries (with `first`,
    only until the first one arrives)."""
    got = []
    subscribed = threading.Event()
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    c.on_message = lambda cl, u, m: got.append((m.topic, m.payload, m.retain))
    c.on_subscribe = lambda *a: subscribed.set()
    c.connect("127.0.0.1", port)
    c.loop_start()
    c.subscribe(topic, 1)
    if not subscribed.wait(5):
        raise AssertionError("no SUBACK for %s" % topic)
    end = time.monotonic() + timeout
    while time.monotonic() < end and not (first and got):
        time.sleep(0.02)
    c.loop_stop()
    c.disconnect()
    return [(t, p) for t, p, r in got if r]
