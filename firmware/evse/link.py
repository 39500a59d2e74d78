"""The MQTT link supervisor: owns the connection to the backend (docs/mqtt.md).

Connects with a last will, resubscribes after every connect, reconnects with exponential
backoff and jitter, hands commands to the API and tells the failsafe whether the link is
up. What is published, and when, is the telemetry's job (evse/telemetry.py). poll() never
blocks: the client underneath is a state machine (evse/mqtt.py), the broker's name is looked
up off the loop (evse/sock.py), the clock is set by NTP without waiting (evse/ntp.py), and a
TLS handshake is paced one step per loop (evse/tls.py)."""

import json

from evse import sock
from evse.api import MAX_PAYLOAD, Api
from evse.compat import const, ticks_add, ticks_diff, ticks_ms
from evse.mqtt import CONNECTED, DISCONNECTED, Client
from evse.ntp import Ntp
from evse.report import dumps
from evse.telemetry import Telemetry

_BACKOFF_MIN_MS = const(1000)
_BACKOFF_MAX_MS = const(60000)
# Without TLS the first connect after boot waits at most this long for the first NTP
# answer, so the first status carries a time stamp; TLS waits for the clock however long.
_CLOCK_GRACE_MS = const(3000)

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
        station.failsafe.armed = True
        self.telemetry = Telemetry(station, discovery)
        # Built once, at boot: its buffers are taken before the heap fragments.
        self.client = Client(station.station_id, 60, self._on_message, ring=outbox)
        self.base = None
        self.host = None
        self._ha_status = None
        self._retry_ms = None
        self._backoff = _BACKOFF_MIN_MS
        self.up = False
        self._failing = False
        self._reconnect = False
        self._reboot_ms = None
        self._now = station.boot_ms
        self.reconnects = 0  # links lost (not deliberate reconnects)
        self.connects = 0
        self.replies_dropped = 0
        self.bytes_tx = 0
        self.bytes_rx = 0
        # Names and the clock (board.net: resolve, set_time, ntp_port). Without a network
        # module the board's clock is whatever it is and names go to socket.getaddrinfo.
        self.resolver = sock.resolver
        net = station.board.net
        self.ntp = None
        if net is not None:
            self.resolver.lookup = net.resolve
            self.ntp = Ntp(self.resolver, net.set_time, net.ntp_port)
        self.wait = None  # why no connect is being tried: "network", "clock", "dns" or None
        self._up_ms = None  # when the network first came up (the clock grace counts from it)
        self._grace_over = False
        self._clock_ok = False
        self._clock_syncs = -1
        self.tls_step_max_ms = 0  # longest control-loop pass spent in a TLS handshake

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
        elif topic == self.base + "/grid":
            self._grid(payload)
        elif topic == self.base + "/session/ack":
            if payload is not None:
                self.st.sessions.on_ack(payload)
        elif topic == self.base + "/auth/res":
            if payload is not None:
                self.st.auth.on_res(payload)
        elif topic == self._ha_status:
            if payload == b"online":
                self.telemetry.rediscover()  # Home Assistant restarted: it forgot us
        elif self._log:
            self._log("info", "mqtt: ignored %s" % topic)

    def _grid(self, payload):
        """Site grid currents measured elsewhere: bad ones are counted (diag) and ignored,
        so stale data leads to the failsafe, never to more current."""
        bal = self.st.balancer
        try:
            obj = json.loads(payload) if payload is not None else None
        except (ValueError, UnicodeError):
            obj = None
        why = bal.feed(obj)
        if why is not None:  # a stream of them coalesces into one event with a count
            self.st.events.add("warn", "RejectedInput", 0, "grid: %s" % why)

    # -- the supervisor -------------------------------------------------------------------
    def _on_connected(self, now):
        st = self.st
        self.up = True
        self._failing = False
        self._backoff = _BACKOFF_MIN_MS
        self.connects += 1
        st.failsafe.link_up()
        c = self.client
        c.subscribe(self.base + "/cmd", 1)
        c.subscribe(self.base + "/grid", 0)  # a measurement: the next one replaces it
        c.subscribe(self.base + "/session/ack", 1)
        c.subscribe(self.base + "/auth/res", 1)
        st.auth.online = True
        self._ha_status = None
        if st.cfg["ha_discovery"]:
            self._ha_status = st.cfg["ha_prefix"] + "/status"
            c.subscribe(self._ha_status, 1)
        self.telemetry.connected(self._pub, self.base)
        st.events.add("info", "Connected", 0, "%s" % self.host)

    def _went_down(self, now, why, deliberate=False):
        c = self.client
        self.bytes_tx += c.bytes_tx
        self.bytes_rx += c.bytes_rx
        c.bytes_tx = c.bytes_rx = 0
        if self.up:
            self.up = False
            self.st.failsafe.link_down(now)
            self.st.auth.online = False
            if not deliberate:
                self.reconnects += 1
        if self._log and not self._failing and not deliberate:
            self._log("warn", "mqtt %s: %r" % (self.host, why))
        self._failing = not deliberate
        if not deliberate:
            self.resolver.refresh(self.st.cfg["mqtt.host"])  # the broker may have moved

    def _waiting(self, why):
        """No attempt now, for a reason that is not a failure (diag link_wait, logged once)."""
        if why == self.wait:
            return
        self.wait = why
        if self._log and why is not None:
            cfg = self.st.cfg
            if why == "clock":
                if not cfg["mqtt.tls"]:
                    msg = "waiting up to %d ms for the clock (NTP)" % _CLOCK_GRACE_MS
                elif self.ntp is None or not cfg["ntp.host"]:
                    msg = "TLS waits for the clock, and nothing sets it (no NTP)"
                else:
                    msg = "TLS waits for the clock (NTP from %s)" % cfg["ntp.host"]
            elif why == "dns":
                msg = "looking up %s" % cfg["mqtt.host"]
            else:
                msg = "no network"
            self._log("info", "mqtt: " + msg)

    def _hold(self, now):
        """Why the next connect attempt has to wait (None: go). Raises OSError when the
        broker's name could not be looked up. Never blocks."""
        st = self.st
        cfg = st.cfg
        host = cfg["mqtt.host"]
        if not host:
            return None
        # Asked first, so the lookup runs while the clock is being set.
        ip = self.resolver.get(host)
        if not self._clock_set():
            # mbedTLS checks the broker certificate's dates against the board's clock,
            # which starts in 2000 after a cold boot: a TLS handshake would always fail.
            if cfg["mqtt.tls"]:
                return "clock"
            if not self._grace_over:
                ntp = self.ntp
                if (ntp is None or ntp.tried or not cfg["ntp.host"]
                        or ticks_diff(now, self._up_ms) >= _CLOCK_GRACE_MS):
                    self._grace_over = True
                else:
                    return "clock"
        if ip is None:
            return "dns"  # the lookup runs on its own thread; the loop goes on
        return None

    def _clock_set(self):
        """Whether the board's clock holds a date. Asked again only when NTP has set it
        (unix_time() allocates on the ESP32; this runs every loop while waiting)."""
        ntp = self.ntp
        syncs = ntp.syncs if ntp is not None else 0
        if not self._clock_ok and syncs != self._clock_syncs:
            self._clock_syncs = syncs
            self._clock_ok = self.st.board.unix_time() is not None
        return self._clock_ok

    def _start(self, now):
        st = self.st
        cfg = st.cfg
        self.base = "%s/%s" % (cfg["prefix"], st.station_id)
        host, port = cfg["mqtt.host"], cfg["mqtt.port"]
        self.host = "%s:%d" % (host, port)
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

    def _retry_later(self, now):
        # Exponential backoff with jitter, so a fleet does not reconnect in lockstep.
        jitter = getrandbits(16) % (self._backoff // 2 + 1)
        self._retry_ms = ticks_add(now, self._backoff + jitter)
        self._backoff = min(self._backoff * 2, _BACKOFF_MAX_MS)

    def poll(self, now):
        self._now = now
        st = self.st
        cfg = st.cfg
        if self._reboot_ms is not None and ticks_diff(now, self._reboot_ms) >= 0:
            # Due: charging ends the IEC way first; the reset waits for the contactors.
            self._reboot_ms = None
            st.begin_reboot(now)
            st.events.add("info", "Reboot", 0, "requested")
        if st.reboot_due(now):
            self._reboot(now)
        c = self.client
        net = st.board.net
        self.resolver.now_s = st.uptime.s
        up = net is None or net.poll(now, cfg)
        if up:
            if self._up_ms is None:
                self._up_ms = now
            if self.ntp is not None:
                self.ntp.poll(now, cfg["ntp.host"])  # at boot, then hourly; never waits
        if self._retry_ms is not None and ticks_diff(now, self._retry_ms) >= 0:
            # Due: forgotten, up or down. Kept for days (ticks wrap) it would read as still
            # to come and hold the next reconnect back for days.
            self._retry_ms = None
        if c.state == DISCONNECTED:
            if self.up or c.error is not None:
                self._went_down(now, c.error)
                c.error = None
            if not up:
                self._waiting("network")  # no IP link yet (Wi-Fi joining)
                return
            if self._retry_ms is not None:
                return
            try:
                why = self._hold(now)
            except OSError as e:  # the lookup failed: a failed attempt, with backoff
                self._waiting("dns")
                self._retry_later(now)
                self.host = "%s:%d" % (cfg["mqtt.host"], cfg["mqtt.port"])
                self._went_down(now, e)
                return
            self._waiting(why)
            if why is not None:
                return
            self._retry_later(now)
            try:
                self._start(now)
            except Exception as e:  # noqa: BLE001 - TLS setup (CA file), bad address
                self._went_down(now, e)
            return
        if not up:
            c.close("network down")
            return
        ctx = c.ssl_context
        if ctx is not None and c.state != CONNECTED:
            # A TLS handshake: one paced step per pass (evse/tls.py), and the longest
            # pass measured (diag tls_step_max_ms), for the bench and the field.
            ctx.turn()
            t0 = ticks_ms()
            c.poll(now)
            dt = ticks_diff(ticks_ms(), t0)
            if dt > self.tls_step_max_ms:
                self.tls_step_max_ms = dt
        else:
            c.poll(now)
        if c.state != CONNECTED:
            return
        if not self.up:
            if ctx is not None:
                ctx.release()  # handshake done: no more pacing
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

    def clock_diag(self):
        d = {"set": self.st.board.unix_time() is not None, "syncs": 0, "failures": 0,
             "last_error": None, "server": None}
        if self.ntp is not None:
            d.update(self.ntp.diag())
        return d

    def failed(self, exc):
        """The loop caught an exception from poll(): drop the connection, retry later."""
        self.client.close(exc)
        if self._log:
            self._log("error", "link: %r" % (exc,))

    def _reboot(self, now):
        st = self.st
        c = self.client
        if c.state == CONNECTED:
            for _ in range(8):  # the Reboot event (and anything queued before it) goes out
                if st.events.peek() is None:
                    break
                self.telemetry.poll(now)
                c.poll(now)
            c.disconnect(now)
        st.reboot(now)
