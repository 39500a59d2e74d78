"""A small paho-mqtt collector for tests: subscribe, record messages, wait for one."""

import json
import threading
import time

import paho.mqtt.client as mqtt


class Collector:
    def __init__(self, port, topic="#"):
        self.msgs = []
        self._cv = threading.Condition()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        self.c.on_message = self._on
        self.c.connect("127.0.0.1", port)
        self.c.subscribe(topic, qos=1)
        self.c.loop_start()

    def _on(self, client, userdata, m):
        with self._cv:
            self.msgs.append((m.topic, m.payload, m.retain))
            self._cv.notify_all()

    def wait(self, pred, timeout=10.0, what="message"):
        """The first (topic, payload, retain) with pred true, waiting up to timeout."""
        end = time.monotonic() + timeout
        with self._cv:
            while True:
                for m in self.msgs:
                    if pred(m):
                        return m
                left = end - time.monotonic()
                if left <= 0:
                    raise AssertionError("no %s in %r" % (what, self.msgs[-10:]))
                self._cv.wait(left)

    def wait_json(self, suffix, pred=lambda d: True, timeout=10.0):
        def match(m):
            if not m[0].endswith(suffix):
                return False
            try:
                return pred(json.loads(m[1]))
            except ValueError:
                return False

        return json.loads(self.wait(match, timeout, suffix)[1])

    def stop(self):
        self.c.loop_stop()
        self.c.disconnect()
