"""The MQTT link supervisor: owns the connection to the backend (shared/spec/mqtt-api.md).

Connects with a last will, publishes online/info/config/status after every connect,
resubscribes, reconnects with exponential backoff and jitter, answers commands and applies
the failsafe limit when the link stays down. poll() never blocks: the client underneath is
a state machine (evse/mqtt.py)."""

import json

from evse import VERSION
from evse.api import MAX_PAYLOAD, Api
from evse.compat import const, ticks_add, ticks_diff
from evse.mqtt import CONNECTED, DISCONNECTED, Client

_COALESCE_MS = const(500)  # status at most every 0.5 s (API contract)
_CHECK_MS = const(100)  # look for status changes 10 times a second, not every loop
_BACKOFF_MIN_MS = const(1000)
_BACKOFF_MAX_MS = const(60000)
_EVENTS_PER_POLL = const(2)

try:
    from random import getrandbits
except ImportError:  # pragma: no cover - every MicroPython port has random
    from os import urandom

    def getrandbits(n):
        return int.from_bytes(urandom(4), "little") & ((1 << n) - 1)


def dumps(obj):
    """Compact JSON: every byte counts on a metered cellular link."""
    try:
        return json.dumps(obj, separators=(",", ":"))
    except TypeError:  # older MicroPython without separators
        return json.dumps(obj)


class Link:
    def __init__(self, station, log=None, ssl_factory=None, discovery=None):
        self.st = station
        self._log = log
        self._ssl_factory = ssl_factory  # (cfg) -> SSLContext; from main.py (board-neutral)
        self._discovery = discovery  # (station, base) -> [(topic, payload)], optional
        self.api = Api(station, self)
        # Built once, at boot: its buffers are taken before the heap fragments.
        self.client = Client(station.station_id, 60, self._on_message)
        self.base = None
        self._host = None
        self._retry_ms = None
        self._backoff = _BACKOFF_MIN_MS
        self._up = False
        self._failing = False
        self._down_ms = station.boot_ms
        self.failsafe_active = False
        self._status_ms = None
        self._status_key = None
        self._check_ms = None
        self._config_dirty = False
        self._meter_ms = {}
        self._reconnect = False
        self._reboot_ms = None
        self.reconnects = 0
        self.connects = 0
        self.replies_dropped = 0
        self.bytes_tx = 0
        self.bytes_rx = 0

    # -- hooks for the API ----------------------------------------------------------------
    def config_changed(self, keys):
        self._config_dirty = True
        for k in keys:
            if k.startswith("mqtt.") or k in ("prefix", "station_id"):
                self._reconnect = True  # takes effect by a clean reconnect after the reply

    def schedule_reboot(self, now, delay_s):
        self._reboot_ms = ticks_add(now, delay_s * 1000 + 300)  # 300 ms: let the reply out

    def diag(self, now):
        st = self.st
        c = self.client
        try:
            import gc

            heap = gc.mem_free()
        except (ImportError, AttributeError):
            heap = None
        return {
            "fw": VERSION,
            "uptime_s": ticks_diff(now, st.boot_ms) // 1000,
            "heap_free": heap,
            "loop_max_gap_ms": st.loop_max_gap_ms,
            "loop_count": st.loop_count,
            "exceptions": st.exceptions,
            "reconnects": self.reconnects,
            "connects": self.connects,
            "mqtt_tx_bytes": self.bytes_tx + (c.bytes_tx if c else 0),
            "mqtt_rx_bytes": self.bytes_rx + (c.bytes_rx if c else 0),
            "outbox_bytes": len(c._out) if c else 0,
            "inflight": c.inflight if c else 0,
            "replies_dropped": self.replies_dropped,
            "commands": self.api.handled + self.api.rejected,
            "oversized": c.oversized if c else 0,
            "events_dropped": st.events.dropped,
            "modbus": self._modbus(),
        }

    def _modbus(self):
        bus = self.st.bus
        if bus is None:
            return None
        out = dict(bus.counters)
        out["transactions"] = bus.transactions
        out["exception_codes"] = {str(k): v for k, v in bus.exceptions.items()}
        return out

    # -- publishing -----------------------------------------------------------------------
    def _pub(self, sub, payload, retain=False, qos=1):
        return self.client.publish(self.base + "/" + sub, payload, retain, qos)

    def _reply(self, reply):
        if not self._pub("reply", dumps(reply)):
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
        elif self._log:
            self._log("info", "mqtt: ignored %s" % topic)

    def _on_connected(self, now):
        st = self.st
        self._up = True
        self._failing = False
        self._backoff = _BACKOFF_MIN_MS
        self.connects += 1
        c = self.client
        c.subscribe(self.base + "/cmd", 1)
        self._pub("online", "online", True)
        self._pub("info", dumps(st.info()), True)
        self._pub("config", dumps(st.cfg.public()), True)
        self._status_ms = None  # status at the next check
        self._meter_ms = {}  # and a meter reading
        self._config_dirty = False
        if self._discovery is not None and st.cfg["ha_discovery"]:
            for topic, payload in self._discovery(st, self.base):
                c.publish(topic, payload, True, 1)
        st.events.add("info", "Connected", 0, "%s" % self._host)
        net = getattr(st.board, "net", None)
        if net is not None:
            net.online(now, st.cfg)  # e.g. set the clock by NTP, once per connect

    def _went_down(self, now, why):
        c = self.client
        if c is not None:
            self.bytes_tx += c.bytes_tx
            self.bytes_rx += c.bytes_rx
            c.bytes_tx = c.bytes_rx = 0
        if self._up:
            self._up = False
            self._down_ms = now
            self.reconnects += 1
        if self._log and not self._failing:
            self._log("warn", "mqtt %s: %r" % (self._host, why))
        self._failing = True

    def _start(self, now):
        st = self.st
        cfg = st.cfg
        self.base = "%s/%s" % (cfg["prefix"], st.station_id)
        host, port = getattr(st.board, "broker", None) or (cfg["mqtt.host"], cfg["mqtt.port"])
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

    # -- the supervisor -------------------------------------------------------------------
    def poll(self, now):
        self._now = now
        st = self.st
        if self._reboot_ms is not None and ticks_diff(now, self._reboot_ms) >= 0:
            self._reboot(now)
        c = self.client
        if c is None or c.state == DISCONNECTED:
            if self._up or (c is not None and c.error is not None):
                self._went_down(now, c.error if c else None)
                if c is not None:
                    c.error = None
            self._failsafe(now)
            net = getattr(st.board, "net", None)
            if net is not None and not net.poll(now, st.cfg):
                return  # no IP link yet (Wi-Fi joining): nothing to connect over
            if self._retry_ms is not None and ticks_diff(now, self._retry_ms) < 0:
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
        net = getattr(st.board, "net", None)
        if net is not None and not net.poll(now, st.cfg):
            c.close("network down")
            return
        c.poll(now)
        if c.state != CONNECTED:
            return
        if not self._up:
            self._on_connected(now)
        if self._reconnect:
            self._reconnect = False
            if c._out:
                self._reconnect = True  # the reply to config_set goes out first
            else:
                c.disconnect(now)
                self._went_down(now, "config changed")
                self._retry_ms = None
                self._backoff = _BACKOFF_MIN_MS
                return
        for _ in range(_EVENTS_PER_POLL):
            ev = st.events.pop()
            if ev is None:
                break
            self._pub(
                "event",
                dumps(
                    {
                        "ts": st.board.unix_time(),
                        "level": ev[0],
                        "code": ev[1],
                        "connector": ev[2],
                        "detail": ev[3],
                    }
                ),
            )
        self._meter(now)
        if self._config_dirty:
            self._config_dirty = False
            self._pub("config", dumps(st.cfg.public()), True)
        if self._check_ms is None or ticks_diff(now, self._check_ms) >= _CHECK_MS:
            self._check_ms = now
            key = st.status_key()
            since = None if self._status_ms is None else ticks_diff(now, self._status_ms)
            if (
                since is None
                or (key != self._status_key and since >= _COALESCE_MS)
                or since >= st.cfg["status_interval_s"] * 1000
            ):
                self._status_ms = now
                self._status_key = key
                self._pub("status", dumps(st.status(now)), True)

    def _meter(self, now):
        """<base>/meter per connector: every meter_interval_s while it charges, every
        meter_idle_interval_s otherwise. Only fresh readings are sent."""
        st = self.st
        for k, m in enumerate(st.meters):
            if m is None or m.reading is None or st.connectors[k].meter_failed:
                continue
            c = st.connectors[k]
            key = "meter_interval_s" if c.state == "Charging" else "meter_idle_interval_s"
            last = self._meter_ms.get(c.id)
            if last is not None and ticks_diff(now, last) < st.cfg[key] * 1000:
                continue
            self._meter_ms[c.id] = now
            v, i, p_w, e_wh, f_hz = m.reading
            self._pub("meter", dumps({"ts": st.board.unix_time(), "connector": c.id,
                                      "v": v, "i": i, "p_w": p_w, "e_wh": e_wh,
                                      "f_hz": f_hz}), False, 0)

    def failed(self, exc):
        """The loop caught an exception from poll(): drop the connection, retry later."""
        if self.client is not None:
            self.client.close(exc)
        if self._log:
            self._log("error", "link: %r" % (exc,))

    def _failsafe(self, now):
        """Link down longer than failsafe_after_s: every backend limit becomes the failsafe
        limit until the backend sets (or clears) a limit again after reconnecting."""
        st = self.st
        if ticks_diff(now, self._down_ms) < st.cfg["failsafe_after_s"] * 1000:
            return
        amps = st.cfg["failsafe_current_a"]
        for lim in [st.limits] + [c.limits for c in st.connectors]:
            if lim.get("backend") is not None:
                lim.clear("backend")
                lim.set("failsafe", amps)
                st.events.add("warn", "Failsafe", 0, "link down: limit %.1f A" % amps)

    def _reboot(self, now):
        st = self.st
        for c in st.connectors:
            c.stop()
            c.force_safe(now)
        st.events.add("info", "Reboot", 0, "requested")
        c = self.client
        if c is not None and c.state == CONNECTED:
            self._pub("event", dumps({"ts": st.board.unix_time(), "level": "info",
                                      "code": "Reboot", "connector": 0, "detail": "requested"}))
            c.poll(now)
            c.disconnect(now)
        st.board.reset()

