"""Charging sessions: billing-grade records from authorization to stop (docs/mqtt.md).

A session starts when a connector is authorized and an EV is plugged in, and stops when
the connector is no longer authorized and its contactor is open (unplug, stop, cap, fault,
disable, reboot). Every start and stop is a message written to the journal before it is
published and kept until the backend acknowledges it. A session still open in the journal
at boot ended with the power: it is stopped with reason PowerLoss and the meter's reading
at boot (the contactor opened with the power)."""

import json

from evse import tariff as tariffs
from evse.compat import const, ticks_add, ticks_diff
from evse.connector import OUT_PWM, PLUGGED
from evse.journal import Journal

CHECKPOINT_S = const(300)  # an open session's meter reading and times, this often ...
CHECKPOINT_IDLE_S = const(1800)  # ... when they changed, else this often (a parked EV)
_IDLE_W = const(100)  # below this the EV is taken as drawing nothing
_PLAN_MS = const(1500)  # a cap due within this (the next reading, 1 s, and some) is timed
_RESEND_S = const(300)  # unacknowledged messages go out again this often while connected
_STORE_RETRY_S = const(10)  # after a failed flash write, session writes wait this long
_FAULT_REASON = {"GroundFailure": "GroundFault", "OverCurrentFailure": "OvercurrentFault"}


class Session:
    def __init__(self, sid, cid, id_tag, auth, group, caps, tariff, start_ts, meter_wh, up_s):
        self.sid = sid
        self.cid = cid
        self.id_tag = id_tag
        self.auth = auth
        self.group = group
        self.max_wh, self.max_cost, self.max_s = caps
        self.tariff = tariff  # the tariff in force at start applies to the whole session
        self.start_ts = start_ts
        self.meter_start = meter_wh
        self.wh = meter_wh  # the latest register reading
        self.start_s = up_s
        self.last_s = up_s
        self.charging_s = 0
        self.idle_s = 0
        self.drawn = False  # the EV has drawn power: idle time counts from then on
        self.ck_s = up_s
        self.ck_key = None
        self.reading = None  # the meter reading last looked at (identity: fresh or not)
        self.closing = None  # (reason, ticks when the contactor was open): stop record due
        self.cap_at = None  # (ticks, reason): a cap runs out then at the present power

    def energy(self):
        if self.wh is None or self.meter_start is None:
            return 0
        return self.wh - self.meter_start

    def cost(self):
        if self.tariff is None:
            return None
        return tariffs.cost(self.tariff, self.energy(), self.charging_s, self.idle_s)


class Sessions:
    def __init__(self, station):
        self.st = station
        n = len(station.connectors)
        self.journal = Journal(station.store)
        self.journal.load()
        if self.journal.bad:
            station.events.add("warn", "JournalRepaired", 0,
                               "%d torn or corrupt records skipped" % self.journal.bad)
        self.tariff, bad = tariffs.load(station.store)
        if bad:
            station.events.add("error", "TariffCorrupt", 0, "tariff file unreadable: no prices")
        self.cur = [None] * n
        self.grant = [None] * n  # (id_tag, auth, group, caps, until_s): waits for a plug-in
        self.grant_any = None  # the same, for whichever connector an EV plugs into first
        self.reason = [None] * n  # why a running session is being stopped
        # Open at the cut: stopped once the meter can be read (or meter_fail_s has passed).
        self.lost = list(self.journal.open.items())
        self.refused = 0
        self._full = False
        self.store_fail = None  # uptime s of the last failed flash write, while they fail
        self._cursor = 0
        self._sent_s = None
        self.acks_bad = 0
        self.acks_dup = 0
        self.on_stop = None  # (session, reason) -> None: the authorizer's hook

    # -- control ----------------------------------------------------------------------------
    def authorize(self, k, id_tag, auth, group=None, caps=(None, None, None)):
        """Let connector k+1 (k None: the first one an EV plugs into) charge for id_tag:
        at once if an EV is plugged in, else when one is within connection_timeout_s."""
        st = self.st
        g = (id_tag, auth, group, caps, st.uptime.s + st.cfg["connection_timeout_s"])
        if k is None:
            self.grant_any = g
        else:
            self.grant[k] = g

    def acked(self):
        """Whether session messages wait for the backend's acknowledgement: not without a
        broker, nor when session_ack is off (a backend that never acknowledges)."""
        cfg = self.st.cfg
        return cfg["session_ack"] and bool(cfg["mqtt.host"])

    def full(self):
        """No room for one more session's start and stop besides the stops of those
        running: no new session may start."""
        if not self.acked():
            return False
        n = 2
        for s in self.cur:
            if s is not None:
                n += 2
        return self.journal.full(n)

    def stop(self, k, reason):
        """End the session on connector k+1 the IEC way; the record follows when the
        contactor is open."""
        if self.reason[k] is None:
            self.reason[k] = reason
        self.st.connectors[k].stop()

    def find(self, sid):
        for k, s in enumerate(self.cur):
            if s is not None and s.sid == sid:
                return k
        return None

    # -- the loop ---------------------------------------------------------------------------
    def step(self, now):
        st = self.st
        up = st.uptime.s
        conns = st.connectors
        for k in range(len(conns)):  # (no enumerate object: this runs every loop)
            c = conns[k]
            s = self.cur[k]
            if s is None:
                self._maybe_start(k, c, up)
            elif s.closing is not None:
                self._close(k, c, s, now, False)
            elif not c.authorized and not c.contactor:
                s.closing = (self._reason(k, c), now)
                self._account(k, c, s, up, now)
                self._close(k, c, s, now, False)
            else:
                self._account(k, c, s, up, now)
        if self.lost:
            self._power_loss(up)
        g = self.grant_any
        if g is not None and up > g[4]:
            self.grant_any = None
            st.events.add("info", "AuthorizationExpired", 0,
                          "no EV plugged in within connection_timeout_s")
        j = self.journal
        if j.size >= 16384 and self._may_write(up):  # (cheap tests first: every loop)
            loaded = False
            for c in st.connectors:
                loaded = loaded or c.contactor
            if j.due(loaded):
                try:
                    j.compact()
                except OSError as e:
                    self._write_failed(e, 0)
                    return
                self._cursor = min(self._cursor, len(j.outbox))

    def _maybe_start(self, k, c, up):
        g = self.grant[k]
        if g is not None and up > g[4]:
            self.grant[k] = None
            g = None
            self.st.events.add("info", "AuthorizationExpired", c.id,
                               "no EV plugged in within connection_timeout_s")
        full = self.full()
        if not full:
            self._full = False
        # No new session while the outbox is full or the session the power cut ended is not
        # closed yet; a free-mode connector must not authorize itself meanwhile.
        blocked = full or not self._may_write(up)
        m = self.st.metering.meters[k]
        if m is not None and m.reading is None and not c.meter_failed:
            blocked = True  # a meter is there: the start waits for its first reading (boot)
        if self.lost:
            for e in self.lost:
                blocked = blocked or e[0] == c.id
        c.blocked = blocked
        if c.cp not in PLUGGED or not c.enabled or c.fault is not None or c.halted:
            return
        if g is None and not c.authorized and self.grant_any is not None:
            g = self.grant_any  # a card presented before any EV was plugged in
            self.grant_any = None
            self.grant[k] = g
        free = self.st.cfg["auth_mode"] == "free" and not c.finished
        if g is None and not c.authorized and not (free and c.blocked):
            return  # nobody asks for a session
        if c.blocked:
            c.authorized = False
            if full and not self._full:
                self._full = True
                self.refused += 1
                self.st.events.add("error", "OutboxFull", c.id,
                                   "%d unacknowledged session messages: no new session"
                                   % len(self.journal.outbox))
            return
        granted = g is not None
        if not granted:
            g = (None, "free", None, (None, None, None), 0)  # plug and charge
        if not self._start(k, c, g, up):
            c.authorized = False
            c.blocked = True  # (at once: the connector must not authorize itself meanwhile)
            return  # not on flash: no session, no charging; tried again after a pause
        if granted:
            c.finished = False  # a new authorization after a stop, same plug-in
        self.grant[k] = None
        c.authorized = True

    def _start(self, k, c, g, up):
        st = self.st
        id_tag, auth, group, caps, _ = g
        r = st.metering.reading(k)
        wh = r[3] if r is not None else None
        sid = self.journal.next_sid(st.station_id)
        s = Session(sid, c.id, id_tag, auth, group, caps, self.tariff, st.board.unix_time(),
                    wh, up)
        s.reading = r
        m = {"event": "start", "sid": sid, "connector": c.id, "id_tag": id_tag, "auth": auth,
             "start_ts": s.start_ts, "meter_start_wh": wh}
        # On flash first: a session the station could not record does not start.
        try:
            self.journal.message(m, {"t": s.tariff, "g": group})
        except OSError as e:
            self._write_failed(e, c.id)
            return False
        self._written()
        self.cur[k] = s
        self.reason[k] = None
        self._trim()
        return True

    def _account(self, k, c, s, up, now):
        """Per loop: a fresh meter reading is checked against the caps at once; times
        count per uptime second."""
        r = self.st.metering.reading(k)
        if r is not None and r is not s.reading:
            s.reading = r
            s.wh = r[3]
            self._caps(k, s, r[2], self.st.metering.meters[k].ok_ms)
        cap = s.cap_at
        if cap is not None and ticks_diff(now, cap[0]) >= 0:
            s.cap_at = None
            self.stop(k, cap[1])
        dt = up - s.last_s
        if dt <= 0:
            return
        s.last_s = up
        if c.contactor:
            s.charging_s += dt
            if r is None or r[2] >= _IDLE_W:
                s.drawn = True  # (no meter: a closed contactor is the best evidence)
        if s.drawn and c.out == OUT_PWM and (
                not c.contactor or (r is not None and r[2] < _IDLE_W)):
            s.idle_s += dt  # offered current and not taking it: the bay is blocked
        if s.max_s is not None and up - s.start_s >= s.max_s:
            self.stop(k, "TimeLimitReached")
        elif s.max_cost is not None and s.tariff is not None:
            self._cost_cap(k, s)
        if up - s.ck_s >= CHECKPOINT_S:
            key = (s.wh or 0) + s.charging_s  # both only grow: a sum detects a change
            if key != s.ck_key or up - s.ck_s >= CHECKPOINT_IDLE_S:
                s.ck_key = key
                s.ck_s = up
                try:
                    self.journal.checkpoint(c.id, {"sid": s.sid, "wh": s.wh,
                                                   "d": up - s.start_s, "cs": s.charging_s,
                                                   "i": s.idle_s,
                                                   "ts": self.st.board.unix_time()})
                except OSError as e:
                    self._write_failed(e, c.id)  # the next checkpoint, or the stop, will do

    def _caps(self, k, s, p_w, t_ms):
        """At each fresh reading: the energy still allowed (by max_wh, or by max_cost_millis
        at the session's energy price) is gone, or it will be before the next reading at the
        present power: the stop is timed for then, neither a poll late nor a poll early."""
        s.cap_at = None
        used = s.energy()
        left = None
        why = None
        if s.max_wh is not None:
            left = s.max_wh - used
            why = "EnergyLimitReached"
        if s.max_cost is not None and s.tariff is not None:
            c = s.cost()
            allowed = tariffs.max_energy_wh(s.tariff, s.max_cost,
                                            c["total_millis"] - c["energy_millis"])
            if allowed is not None and (left is None or allowed - used < left):
                left = allowed - used
                why = "LocalOutOfCredit"
        if left is None:
            return
        if left <= 0:
            self.stop(k, why)
        elif p_w > 0 and t_ms is not None:
            ms = left * 3600000 // p_w
            if ms < _PLAN_MS:
                s.cap_at = (ticks_add(t_ms, ms), why)

    def _cost_cap(self, k, s):
        """Each second: the time and idle prices may use the budget up too."""
        if s.cost()["total_millis"] >= s.max_cost:
            self.stop(k, "LocalOutOfCredit")

    def _reason(self, k, c):
        r = self.reason[k]
        if r is not None:
            return r
        if c.fault is not None:
            return _FAULT_REASON.get(c.fault, "Other")
        if c.halted:
            return "Reboot"
        if not c.enabled:
            return "Remote"
        if c.cp not in PLUGGED:
            return "EVDisconnected"
        return "Other"

    def _close(self, k, c, s, now, final):
        """The stop record, with the meter's first reading taken after the contactor
        opened (the energy stops with the current, not at the last poll before): it waits
        for that reading, at most meter_fail_s; then (or when final) the last one stands
        in, marked estimated."""
        st = self.st
        m = st.metering.meters[k]
        reason, t_open = s.closing
        estimated = False
        if m is not None:
            if s.meter_start is None:
                estimated = True  # no reading at the start: the energy is not known
            elif m.ok_ms is not None and ticks_diff(m.ok_ms, t_open) >= 0 \
                    and not c.meter_failed:
                s.wh = m.reading[3]
            elif final or c.meter_failed or \
                    ticks_diff(now, t_open) > st.cfg["meter_fail_s"] * 1000:
                estimated = True
            else:
                return
        up = st.uptime.s
        if not final and not self._may_write(up):
            return
        try:
            self._write_stop(s.sid, c.id, s.id_tag, s.start_ts, st.board.unix_time(),
                             s.meter_start, s.wh, up - s.start_s, s.charging_s, s.idle_s,
                             reason, estimated, s.tariff)
        except OSError as e:
            self._write_failed(e, c.id)
            if not final:
                return  # the session stays, closing: its stop is written once flash works
            # Before a reset: its start is on flash, so the next boot closes it (PowerLoss).
        self.cur[k] = None
        self.reason[k] = None
        if self.on_stop is not None:
            self.on_stop(s, reason)

    def finish(self, now, reason):
        """Before a reset: every session ends now, with the best reading there is."""
        for k, s in enumerate(self.cur):
            if s is not None:
                c = self.st.connectors[k]
                if s.closing is None:
                    s.closing = (self.reason[k] or reason, now)
                self._close(k, c, s, now, True)

    def _write_stop(self, sid, cid, id_tag, start_ts, stop_ts, m0, m1, dur, cs, idle, reason,
                    estimated, tariff):
        energy = m1 - m0 if m0 is not None and m1 is not None else 0
        m = {"event": "stop", "sid": sid, "connector": cid, "id_tag": id_tag,
             "start_ts": start_ts, "stop_ts": stop_ts, "meter_start_wh": m0,
             "meter_stop_wh": m1, "energy_wh": energy, "duration_s": dur,
             "charging_s": cs, "idle_s": idle, "reason": reason, "estimated": estimated}
        if tariff is not None:
            m["cost"] = tariffs.cost(tariff, energy, cs, idle)
        self.journal.message(m)
        self._written()
        self._trim()

    def _trim(self):
        """Nobody acknowledges (no broker, or session_ack off): the newest records are
        kept, up to half the outbox (still sent after each connect), the oldest let go."""
        j = self.journal
        if not self.acked():
            while len(j.outbox) > j.limit // 2:
                self._dropped(j.ack(j.outbox[0][0]))

    def _power_loss(self, up):
        """Sessions the power cut ended: closed with the meter's reading at boot."""
        st = self.st
        if not self._may_write(up):
            return
        keep = []
        for cid, o in self.lost:
            k = cid - 1
            r = st.metering.reading(k) if 0 <= k < len(st.connectors) else None
            meterless = k >= len(st.connectors) or st.metering.meters[k] is None
            if r is None and not meterless and up < st.cfg["meter_fail_s"]:
                keep.append((cid, o))
                continue
            m, x, ck = o["m"], o["x"] or {}, o["c"] or {}
            wh = r[3] if r is not None else ck.get("wh", m["meter_start_wh"])
            try:
                self._write_stop(m["sid"], cid, m["id_tag"], m["start_ts"],
                                 ck.get("ts", m["start_ts"]), m["meter_start_wh"], wh,
                                 ck.get("d", 0), ck.get("cs", 0), ck.get("i", 0),
                                 "PowerLoss", r is None and not meterless, x.get("t"))
            except OSError as e:
                self._write_failed(e, cid)
                keep.append((cid, o))
                continue
            self.journal.open.pop(cid, None)
        self.lost = keep

    # -- the backend side -------------------------------------------------------------------
    def rewind(self):
        """After a (re)connect every unacknowledged message goes out again, oldest first."""
        self._cursor = 0
        self._sent_s = self.st.uptime.s

    def publish(self, send):
        """send(payload) -> True (queued) or False (no room now)."""
        j = self.journal
        up = self.st.uptime.s
        if self._sent_s is not None and up - self._sent_s >= _RESEND_S and j.outbox \
                and self._cursor >= len(j.outbox):
            self.rewind()  # connected for long, still unacknowledged: maybe nobody got it
        if self._cursor >= len(j.outbox):
            return  # (the usual case, every loop: nothing opened)
        with j.reader() as f:
            while self._cursor < len(j.outbox):
                p = j.payload(j.outbox[self._cursor][1], f)
                if p is not None and not send(p):
                    return
                self._cursor += 1

    def on_ack(self, payload):
        """<base>/session/ack {"seq": n}: bad ones change nothing and are counted."""
        try:
            obj = json.loads(payload)
            seq = obj["seq"]
            if isinstance(seq, bool) or not isinstance(seq, int):
                raise TypeError
        except (ValueError, KeyError, TypeError, UnicodeError):
            self.acks_bad += 1
            return "bad"
        j = self.journal
        if not j.sent(seq):
            self.acks_bad += 1
            return "bad"
        try:
            i = j.ack(seq)
        except OSError as e:
            self._write_failed(e, 0)  # still in the outbox: sent again, acknowledged again
            return "bad"
        if i is None:
            self.acks_dup += 1
            return "dup"
        self._dropped(i)
        return "ok"

    # -- a flash that fails -------------------------------------------------------------------
    def _may_write(self, up):
        """Session writes go ahead unless one failed less than _STORE_RETRY_S ago."""
        f = self.store_fail
        return f is None or up - f >= _STORE_RETRY_S

    def _write_failed(self, e, cid):
        """A flash write failed (full, or worn out): no new session until one works, the
        running ones go on; their records are written once it works again."""
        if self.store_fail is None:
            self.st.events.add("error", "StorageFailure", cid,
                               "flash write failed (%s): no new session" % e)
        self.store_fail = self.st.uptime.s

    def _written(self):
        if self.store_fail is not None:
            self.store_fail = None
            self.st.events.add("info", "StorageRestored", 0, "flash writes work again")

    def _dropped(self, i):
        """The outbox lost its entry i: the publishing cursor keeps its message."""
        if i is not None and i < self._cursor:
            self._cursor -= 1

    def figures(self):
        """diag.sessions"""
        j = self.journal
        return {"outbox": len(j.outbox), "seq": j.seq, "open": sum(
            1 for s in self.cur if s is not None), "acks": j.acked, "acks_bad": self.acks_bad,
            "acks_dup": self.acks_dup, "flash_writes": j.writes, "flash_bytes": j.bytes,
            "journal_bytes": j.size, "refused": self.refused}

    def status(self, k):
        """(sid, energy_wh, cost_millis) of connector k+1's running session, or None."""
        s = self.cur[k]
        if s is None:
            return None
        c = s.cost()
        return s.sid, s.energy(), None if c is None else c["total_millis"]
