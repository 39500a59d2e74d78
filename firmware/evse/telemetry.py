"""What the station publishes, and when: the burst after a connect, status on change and
periodically, meter readings at their cadence, queued events, config after a change and
Home Assistant discovery. Everything goes out paced through the MQTT outbox: a message
that does not fit now is offered again on a later poll, never silently lost."""

from evse import report
from evse.compat import age_cap, const, ticks_diff

_COALESCE_MS = const(500)  # status at most every 0.5 s (API contract)
_CHECK_MS = const(100)  # look for status changes 10 times a second, not every loop
_EVENTS_PER_POLL = const(2)


class Telemetry:
    def __init__(self, station, discovery=None):
        self.st = station
        self._discovery = discovery  # (station, base) -> iterable of (topic, payload)
        self._pub = None
        self._base = None
        self._head = 0  # the next of online/info/config after a connect (3 = done)
        self._disc = None  # the discovery configs still to send
        self._disc_item = None
        self._status_ms = None
        self._status_key = None
        self._status_energy = None
        self._status_due = True
        self._check_ms = None
        self._config_due = False
        self._meter_ms = [None] * len(station.connectors)
        self.lost = 0  # messages that could never be sent (larger than the outbox allows)
        # Bound once: a bound method taken in poll() would be a new object every loop.
        self._session_cb = self._session
        self._auth_req_cb = self._auth_req

    def connected(self, pub, base):
        """A new connection: `pub(topic, payload, retain, qos)` -> True (queued), False
        (no room now: offer it again later) or None (can never fit)."""
        self._pub = pub
        self._base = base
        self._head = 0
        self._status_due = True
        self._status_ms = None  # stamps from before the link went down may be days old
        self._check_ms = None
        self._config_due = False
        self._meter_ms = [None] * len(self.st.connectors)
        self.st.sessions.rewind()
        self.rediscover()

    def rediscover(self):
        """(Re)publish the Home Assistant discovery configs, paced."""
        st = self.st
        if self._discovery is not None and st.cfg["ha_discovery"]:
            self._disc = iter(self._discovery(st, self._base))
            self._disc_item = None

    def config_changed(self):
        self._config_due = True

    def _send(self, sub, payload, retain=False, qos=1):
        ok = self._pub(self._base + "/" + sub, payload, retain, qos)
        if ok is None:
            self.lost += 1
            return True  # it can never go: count it and move on
        return ok

    def poll(self, now):
        st = self.st
        # 1. Who we are, first: online, info, config (retained), in order.
        while self._head < 3:
            if self._head == 0:
                ok = self._send("online", "online", True)
            elif self._head == 1:
                ok = self._send("info", report.dumps(report.info(st)), True)
            else:
                ok = self._send("config", report.dumps(st.cfg.public()), True)
                self._config_due = False
            if not ok:
                return
            self._head += 1
        if self._config_due and self._send("config", report.dumps(st.cfg.public()), True):
            self._config_due = False
        # 2. Status: on change (coalesced), periodically, and when the energy moved.
        if self._check_ms is None or ticks_diff(now, self._check_ms) >= _CHECK_MS:
            self._check_ms = now
            self._status(now)
        # 3. Events, oldest first; one leaves the queue only once it is in the outbox.
        for _ in range(_EVENTS_PER_POLL):
            ev = st.events.peek()
            if ev is None or not self._send("event", report.dumps(report.event(st, ev, now))):
                break
            st.events.pop()
        # 4. Session messages (oldest first, until acknowledged) and card requests.
        st.sessions.publish(self._session_cb)
        st.auth.publish(self._auth_req_cb)
        # 5. Meter readings at their cadence.
        self._meter(now)
        # 6. Discovery configs, as room allows.
        while self._disc is not None:
            if self._disc_item is None:
                try:
                    self._disc_item = next(self._disc)
                except StopIteration:
                    self._disc = None
                    break
            topic, payload = self._disc_item
            ok = self._pub(topic, payload, True, 1)
            if ok is None:
                self.lost += 1
            elif not ok:
                break
            self._disc_item = None

    def _session(self, payload):
        return self._pub(self._base + "/session", payload, False, 1) is not False

    def _auth_req(self, payload):
        return self._pub(self._base + "/auth/req", payload, False, 1) is not False

    def _status(self, now):
        st = self.st
        key = report.status_key(st)
        # Capped (ticks wrap): a status held back for days by a full outbox is still due.
        self._status_ms = age_cap(now, self._status_ms, st.cfg["status_interval_s"] * 1000)
        since = None if self._status_ms is None else ticks_diff(now, self._status_ms)
        if not (
            self._status_due
            or since is None
            or (key != self._status_key and since >= _COALESCE_MS)
            or since >= st.cfg["status_interval_s"] * 1000
        ):
            return
        if self._status_due and since is not None and since < _COALESCE_MS:
            return  # an energy refresh still respects the 0.5 s spacing
        payload = report.status(st, now)
        if self._send("status", report.dumps(payload), True):
            self._status_ms = now
            self._status_key = key
            self._status_due = False
            self._status_energy = [c.get("energy_wh") for c in payload["connectors"]]

    def _meter(self, now):
        """<base>/meter per connector: every meter_interval_s while it charges, every
        meter_idle_interval_s otherwise. Only fresh readings are sent. The status's
        energy_wh is refreshed with the same cadence."""
        st = self.st
        cfg = st.cfg
        for k, c in enumerate(st.connectors):
            r = st.metering.reading(k)
            if r is None or c.meter_failed:
                self._meter_ms[k] = None  # the next fresh reading goes out at once
                continue
            key = "meter_interval_s" if c.state == "Charging" else "meter_idle_interval_s"
            # Capped (ticks wrap): after days without a reading the next one is due at once.
            self._meter_ms[k] = last = age_cap(now, self._meter_ms[k], cfg[key] * 1000)
            if last is not None and ticks_diff(now, last) < cfg[key] * 1000:
                continue
            if not self._send("meter", report.dumps(report.meter(st, k, r)), False, 0):
                return
            self._meter_ms[k] = now
            e = st.metering.energy_wh(k)
            if self._status_energy is not None and e != self._status_energy[k]:
                self._status_due = True
