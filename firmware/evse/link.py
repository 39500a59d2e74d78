"""The MQTT link supervisor: owns the connection to the backend (docs/mqtt.md).

Connects with a last will, resubscribes after every connect, reconnects with exponential
backoff and jitter, hands commands to the API and tells the failsafe whether the link is
up. What is published, and when, is the telemetry's job (evse/telemetry.py). poll() never
blocks: the client underneath is a state machine (evse/mqtt.py)."""

from evse.api import MAX_PAYLOAD, Api
from evse.compat import const, ticks_add, ticks_diff
from evse.mqtt import CONNECTED, DISCONNECTED, Client
from evse.report import dumps
from evse.telemetry import Telemetry

_BACKOFF_MIN_MS = const(1000)
_BACKOFF_MAX_MS = const(60000)

try:
    from random import getrandbits
except ImportError:  # pragma: no cover - every MicroPython port has random
    from os import urandom

    def getrandbits(n):
        return int.from_bytes(urandom(4), "little") & ((1 << n) - 1)


class Link:
    def __init__(self, station, log=None, ssl_factory=None, discovery=None, outbox=None):
        self.st = station
        self._log = log
        self._ssl_factory = ssl_factory  # (station) -> SSLContext; from main.py
        self.api = Api(station, self)
        self.telemetry = Telemetry(station, discovery)
        # Built once, at boot: its buffers are taken before the heap fragments.
        self.client = Client(station.station_id, 60, self._on_message, ring=outbox)
        self.base = None
        self._host = None
        self._ha_status = None
        self._retry_ms = None
        self._backoff = _BACKOFF_MIN_MS
        self._up = False
        self._failing = False
        self._reconnect = False
        self._reboot_ms = None
        self._now = station.boot_ms
        self.reconnects = 0  # links lost (not deliberate reconnects)
        self.connects = 0
        self.replies_dropped = 0
        self.bytes_tx = 0
        self.bytes_rx = 0

    # -- hooks for the API ----------------------------------------------------------------
    def config_changed(self, keys):
        self.telemetry.config_changed()
        for k in keys:
            if k.startswith("mqtt.") or k in ("prefix", "station_id"):
                self._reconnect = True  # takes effect by a clean reconnect after the reply

    def schedule_reboot(self, now, delay_s):
        self._reboot_ms = ticks_add(now, delay_s * 1000 + 300)  # 300 ms: let the reply out

    def diag(self, now):
        from evse.report import diag

        return diag(self.st, self, now)

    # -- messages -------------------------------------------------------------------------
    def _pub(self, topic, payload, retain, qos):
        return self.client.publish(topic, payload, retain, qos, True)

    def _reply(self, reply):
        if not self.client.publish(self.base + "/reply", dumps(reply), False, 1):
            self.replies_dropped += 1

    def _on_message(self, topic, payload, retained):
        # Runs inside client.poll(): commands are small and handled at once, so every rid
        # is answered in order and nothing queues up unbounded.
        if topic == self.base + "/cmd":
            if retained:
                return  # a stale retained command must not act again after a reconnect
            if payload is None:  # too large to receive: its rid is unknowable
                self.st.events.add("warn", "RejectedInput", 0, "too_large: oversized command")
                self._reply({"rid": None, "ok": False, "error": "too_large",
                             "detail": "payload over %d bytes" % MAX_PAYLOAD})
                return
            self._reply(self.api.handle(payload, self._now))
        elif topic == self._ha_status:
            if payload == b"online":
                self.telemetry.rediscover()  # Home Assistant restarted: it forgot us
        elif self._log:
            self._log("info", "mqtt: ignored %s" % topic)

    # -- the supervisor -------------------------------------------------------------------
    def _on_connected(self, now):
        st = self.st
        self._up = True
        self._failing = False
        self._backoff = _BACKOFF_MIN_MS
        self.connects += 1
        st.failsafe.link_up()
        c = self.client
        c.subscribe(self.base + "/cmd", 1)
        self._ha_status = None
        if st.cfg["ha_discovery"]:
            self._ha_status = st.cfg["ha_prefix"] + "/status"
            c.subscribe(self._ha_status, 1)
        self.telemetry.connected(self._pub, self.base)
        st.events.add("info", "Connected", 0, "%s" % self._host)
        if st.board.net is not None:
            st.board.net.online(now, st.cfg)  # e.g. set the clock by NTP, once per connect

    def _went_down(self, now, why, deliberate=False):
        c = self.client
        self.bytes_tx += c.bytes_tx
        self.bytes_rx += c.bytes_rx
        c.bytes_tx = c.bytes_rx = 0
        if self._up:
            self._up = False
            self.st.failsafe.link_down(now)
            if not deliberate:
                self.reconnects += 1
        if self._log and not self._failing and not deliberate:
            self._log("warn", "mqtt %s: %r" % (self._host, why))
        self._failing = not deliberate

    def _start(self, now):
        st = self.st
        cfg = st.cfg
        self.base = "%s/%s" % (cfg["prefix"], st.station_id)
        host, port = cfg["mqtt.host"], cfg["mqtt.port"]
        self._host = "%s:%d" % (host, port)
        if not host:
            return
        ctx = None
        if cfg["mqtt.tls"] and self._ssl_factory is not None:
            ctx = self._ssl_factory(st)
        c = self.client
        c.ssl_context = ctx
        c.client_id = st.station_id
        c.keepalive_s = cfg["mqtt.keepalive_s"]
        c.set_last_will(self.base + "/online", "offline", True, 1)
        c.set_credentials(cfg["mqtt.user"], cfg["mqtt.password"])
        c.connect(host, port, now)

    def poll(self, now):
        self._now = now
        st = self.st
        if self._reboot_ms is not None and ticks_diff(now, self._reboot_ms) >= 0:
            self._reboot(now)
        c = self.client
        net = st.board.net
        if self._retry_ms is not None and ticks_diff(now, self._retry_ms) >= 0:
            # Due: forgotten, up or down. Kept for days (ticks wrap) it would read as still
            # to come and hold the next reconnect back for days.
            self._retry_ms = None
        if c.state == DISCONNECTED:
            if self._up or c.error is not None:
                self._went_down(now, c.error)
                c.error = None
            if net is not None and not net.poll(now, st.cfg):
                return  # no IP link yet (Wi-Fi joining): nothing to connect over
            if self._retry_ms is not None:
                return
            # Exponential backoff with jitter, so a fleet does not reconnect in lockstep.
            jitter = getrandbits(16) % (self._backoff // 2 + 1)
            self._retry_ms = ticks_add(now, self._backoff + jitter)
            self._backoff = min(self._backoff * 2, _BACKOFF_MAX_MS)
            try:
                self._start(now)
            except Exception as e:  # noqa: BLE001 - DNS, TLS setup, bad address
                self._went_down(now, e)
            return
        if net is not None and not net.poll(now, st.cfg):
            c.close("network down")
            return
        c.poll(now)
        if c.state != CONNECTED:
            return
        if not self._up:
            self._on_connected(now)
        if self._reconnect:
            if c.outbox_bytes():
                return  # the reply to config_set goes out first
            self._reconnect = False
            c.disconnect(now)
            self._went_down(now, "config changed", deliberate=True)
            self._retry_ms = None
            self._backoff = _BACKOFF_MIN_MS
            return
        self.telemetry.poll(now)

    def failed(self, exc):
        """The loop caught an exception from poll(): drop the connection, retry later."""
        self.client.close(exc)
        if self._log:
            self._log("error", "link: %r" % (exc,))

    def _reboot(self, now):
        st = self.st
        st.events.add("info", "Reboot", 0, "requested")
        c = self.client
        if c.state == CONNECTED:
            for _ in range(8):  # the Reboot event (and anything queued before it) goes out
                if st.events.peek() is None:
                    break
                self.telemetry.poll(now)
                c.poll(now)
            c.disconnect(now)
        st.reboot(now)
