"""MQTT link (minimal): publishes online/info/status/event to <prefix>/<station_id>.

The full backend API (commands, replies, bounded I/O, failsafe) is the MQTT issue's; this
keeps the connection alive and reports, and never lets a network error reach the loop."""

import json

from evse.compat import const, ticks_add, ticks_diff

_COALESCE_MS = const(500)  # status at most every 0.5 s (API contract)
_CHECK_MS = const(100)
_BACKOFF_MIN_MS = const(1000)
_BACKOFF_MAX_MS = const(60000)
_KEEPALIVE_S = const(60)


class Link:
    def __init__(self, station, client_cls, host, port, log=None):
        self.st = station
        self._cls = client_cls
        self.host = host
        self.port = port
        self._log = log
        self.base = "%s/%s" % (station.cfg["prefix"], station.station_id)
        self.client = None
        self._retry_ms = None
        self._backoff = _BACKOFF_MIN_MS
        self._status_ms = None
        self._status_key = None
        self._check_ms = None
        self._ping_ms = 0
        self._failing = False
        self.reconnects = 0

    def _connect(self, now):
        cfg = self.st.cfg
        user = cfg["mqtt.user"] or None
        c = self._cls(
            self.st.station_id,
            self.host,
            port=self.port,
            user=user,
            password=cfg["mqtt.password"] if user else None,
            keepalive=_KEEPALIVE_S,
        )
        c.set_last_will(self.base + "/online", b"offline", retain=True, qos=1)
        c.connect()
        self.client = c
        self.reconnects += 1
        self._failing = False
        self._backoff = _BACKOFF_MIN_MS
        self._ping_ms = now
        self._pub("online", b"online", True)
        self._pub("info", json.dumps(self.st.info()), True)
        self._status_ms = None  # republish status at once

    def _pub(self, sub, payload, retain):
        self.client.publish(self.base + "/" + sub, payload, retain)

    def failed(self, exc):
        if self._log and (self.client is not None or not self._failing):
            self._log("warn", "mqtt %s:%d: %r" % (self.host, self.port, exc))
        self._failing = True
        if self.client is not None:
            try:
                self.client.sock.close()
            except Exception:  # noqa: BLE001
                pass
        self.client = None

    def poll(self, now):
        if self.client is None:
            if self._retry_ms is not None and ticks_diff(now, self._retry_ms) < 0:
                return
            self._retry_ms = ticks_add(now, self._backoff)
            self._backoff = min(self._backoff * 2, _BACKOFF_MAX_MS)
            self._connect(now)
            return
        st = self.st
        ev = st.events.pop()
        if ev is not None:
            self._pub(
                "event",
                json.dumps(
                    {
                        "ts": st.board.unix_time(),
                        "level": ev[0],
                        "code": ev[1],
                        "connector": ev[2],
                        "detail": ev[3],
                    }
                ),
                False,
            )
        # Look for status changes 10 times a second, not every loop: building the key
        # allocates, and the control loop runs 200 times a second.
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
                self._pub("status", json.dumps(st.status(now)), True)
        if ticks_diff(now, self._ping_ms) >= _KEEPALIVE_S * 500:
            self._ping_ms = now
            self.client.ping()
        self.client.check_msg()  # non-blocking: consumes PINGRESP, raises on a dead socket
