"""The billing ledger: stores every station's session records exactly once, then acknowledges.

    .venv/bin/python tools/ledger.py --db fleet.db --broker 127.0.0.1:1883          # the worker
    .venv/bin/python tools/ledger.py --db postgresql://u@h/db --share ledger         # one of N
    .venv/bin/python tools/ledger.py --db fleet.db status [--gaps] [--json]
    .venv/bin/python tools/ledger.py --db fleet.db rejects
    .venv/bin/python tools/ledger.py --db fleet.db reingest
(or `fleet ledger ...` with the same options). docs/ledger.md is the operator's guide.
"""

import argparse
import hashlib
import json
import os
import queue
import signal
import socket
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import db  # noqa: E402  (tools/ on the path first, when run as a script)

# The same DDL on SQLite and PostgreSQL. BIGINT: millis and meter registers outgrow 32 bits.
SCHEMA = (
    "CREATE TABLE IF NOT EXISTS station_groups (station TEXT PRIMARY KEY, grp TEXT NOT NULL)",
    # One row per (station, seq): the exactly-once key. raw is the payload as received.
    "CREATE TABLE IF NOT EXISTS ledger_records ("
    " station TEXT NOT NULL, seq BIGINT NOT NULL, event TEXT NOT NULL, sid TEXT NOT NULL,"
    " rec_ts BIGINT, received_ms BIGINT NOT NULL, raw TEXT NOT NULL,"
    " PRIMARY KEY (station, seq))",
    "CREATE INDEX IF NOT EXISTS ledger_records_sid ON ledger_records (station, sid)",
    # A start and its stop joined; every column derived from the records (see _derive).
    "CREATE TABLE IF NOT EXISTS ledger_sessions ("
    " station TEXT NOT NULL, sid TEXT NOT NULL, connector INTEGER, id_tag TEXT, auth TEXT,"
    " start_seq BIGINT, stop_seq BIGINT, start_ts BIGINT, stop_ts BIGINT, ts BIGINT,"
    " meter_start_wh BIGINT, meter_stop_wh BIGINT, energy_wh BIGINT, duration_s BIGINT,"
    " charging_s BIGINT, idle_s BIGINT, reason TEXT, estimated INTEGER, currency TEXT,"
    " total_millis BIGINT, energy_millis BIGINT, time_millis BIGINT, fee_millis BIGINT,"
    " idle_millis BIGINT, flags TEXT NOT NULL DEFAULT '', updated_ms BIGINT,"
    " PRIMARY KEY (station, sid))",
    "CREATE INDEX IF NOT EXISTS ledger_sessions_ts ON ledger_sessions (ts)",
    # Records that could not be stored, kept as received; one row per distinct payload.
    "CREATE TABLE IF NOT EXISTS ledger_rejects ("
    " key TEXT PRIMARY KEY, station TEXT NOT NULL, seq BIGINT, reason TEXT NOT NULL,"
    " raw TEXT NOT NULL, first_ms BIGINT NOT NULL, last_ms BIGINT NOT NULL,"
    " times BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS ledger_counts ("
    " station TEXT PRIMARY KEY, duplicates BIGINT NOT NULL, conflicts BIGINT NOT NULL)",
)

ACK_TOPIC = "%s/%s/session/ack"
BATCH_MAX = 100  # records per transaction: one commit (one fsync) for a burst of resends


def ensure_schema(d):
    with d.transaction():
        for sql in SCHEMA:
            d.execute(sql)


def now_ms():
    return int(time.time() * 1000)


# -- parsing ------------------------------------------------------------------------------------

class Malformed(ValueError):
    """A record that cannot be stored; seq is its readable seq (it can be acknowledged)."""

    def __init__(self, reason, seq=None):
        super().__init__(reason)
        self.seq = seq


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


_INT = "int"
_INT_OR_NULL = "int|null"
_STR = "str"
_STR_OR_NULL = "str|null"
_BOOL = "bool"

_COMMON = {"sid": _STR, "connector": _INT, "id_tag": _STR_OR_NULL,
           "meter_start_wh": _INT_OR_NULL, "start_ts": _INT_OR_NULL}
_FIELDS = {
    "start": dict(_COMMON, auth=_STR),
    "stop": dict(_COMMON, stop_ts=_INT_OR_NULL, meter_stop_wh=_INT_OR_NULL, energy_wh=_INT,
                 duration_s=_INT, charging_s=_INT, reason=_STR, estimated=_BOOL),
}
_OPTIONAL = {"stop": {"idle_s": _INT}}  # an extension: absent counts as 0
_COST = ("total_millis", "energy_millis", "time_millis", "fee_millis", "idle_millis")


def _check(name, v, kind):
    ok = {_INT: _is_int(v), _INT_OR_NULL: v is None or _is_int(v), _STR: isinstance(v, str),
          _STR_OR_NULL: v is None or isinstance(v, str), _BOOL: isinstance(v, bool)}[kind]
    if not ok:
        raise Malformed("%s must be %s, not %s" % (name, kind, json.dumps(v)[:40]))


def parse(payload):
    """The record (a dict) of a session payload (bytes or str), or raises Malformed."""
    try:
        text = payload.decode("utf-8") if isinstance(payload, (bytes, bytearray)) else payload
        rec = json.loads(text)
    except (UnicodeError, ValueError) as e:
        raise Malformed("not JSON: %s" % str(e)[:80]) from None
    if not isinstance(rec, dict):
        raise Malformed("not a JSON object")
    seq = rec.get("seq")
    seq = seq if _is_int(seq) and seq >= 1 else None
    try:
        if seq is None:
            raise Malformed("seq must be an integer of 1 or more")
        event = rec.get("event")
        if event not in _FIELDS:
            raise Malformed("event must be start or stop, not %s" % json.dumps(event)[:40])
        for name, kind in _FIELDS[event].items():
            if name not in rec:
                raise Malformed("%s missing" % name)
            _check(name, rec[name], kind)
        for name, kind in _OPTIONAL.get(event, {}).items():
            if name in rec:
                _check(name, rec[name], kind)
        if not rec["sid"]:
            raise Malformed("sid is empty")
        cost = rec.get("cost")
        if cost is not None:
            if event != "stop" or not isinstance(cost, dict):
                raise Malformed("cost must be an object, in a stop")
            cur = cost.get("currency")
            if not (isinstance(cur, str) and len(cur) == 3 and cur.isalpha() and cur.isupper()):
                raise Malformed("cost.currency must be 3 capital letters")
            for name in _COST:
                if name not in cost:
                    raise Malformed("cost.%s missing" % name)
                _check("cost." + name, cost[name], _INT)
    except Malformed as e:
        e.seq = seq
        raise
    return rec


def _derive(station, start, stop, received_s):
    """The ledger_sessions columns of a session from its start and stop records (either may
    be None) and the flags of what does not add up. Nothing is corrected, only flagged."""
    a = start or {}
    b = stop or {}
    flags = set()
    if stop is not None:
        if start is None:
            flags.add("no_start")
        if b["energy_wh"] < 0:
            flags.add("negative_energy")
        m0, m1 = b["meter_start_wh"], b["meter_stop_wh"]
        if m0 is not None and m1 is not None:
            if m1 < m0:
                flags.add("meter_backwards")
            if b["energy_wh"] != m1 - m0:
                flags.add("energy_mismatch")
        if b["start_ts"] is not None and b["stop_ts"] is not None and b["stop_ts"] < b["start_ts"]:
            flags.add("stop_before_start")
        if b["estimated"]:
            flags.add("estimated")
        cost = b.get("cost")
        if cost and cost["total_millis"] != sum(cost[k] for k in _COST[1:]):
            flags.add("cost_mismatch")
        if start is not None and any(a[k] != b[k] for k in (
                "connector", "id_tag", "start_ts", "meter_start_wh")):
            flags.add("start_mismatch")
    cost = b.get("cost") or {}
    start_ts = a.get("start_ts") if start is not None else b.get("start_ts")
    ts = next((t for t in (start_ts, b.get("start_ts"), b.get("stop_ts")) if t is not None),
              int(received_s))
    return {
        "station": station, "sid": (a or b)["sid"], "connector": (a or b)["connector"],
        "id_tag": (a or b)["id_tag"], "auth": a.get("auth"),
        "start_seq": a.get("seq"), "stop_seq": b.get("seq"), "start_ts": start_ts,
        "stop_ts": b.get("stop_ts"), "ts": ts,
        "meter_start_wh": a["meter_start_wh"] if start is not None else b["meter_start_wh"],
        "meter_stop_wh": b.get("meter_stop_wh"), "energy_wh": b.get("energy_wh"),
        "duration_s": b.get("duration_s"), "charging_s": b.get("charging_s"),
        "idle_s": b.get("idle_s", 0 if stop is not None else None), "reason": b.get("reason"),
        "estimated": None if stop is None else int(b["estimated"]),
        "currency": cost.get("currency"),
        **{k: cost.get(k) for k in _COST},
        "flags": ",".join(sorted(flags)),
    }


_SESSION_COLS = ("station", "sid", "connector", "id_tag", "auth", "start_seq", "stop_seq",
                 "start_ts", "stop_ts", "ts", "meter_start_wh", "meter_stop_wh", "energy_wh",
                 "duration_s", "charging_s", "idle_s", "reason", "estimated", "currency") \
    + _COST + ("flags", "updated_ms")


# -- the store ----------------------------------------------------------------------------------

class Result:
    """What became of one message: outcome stored|duplicate|conflict|malformed; ack is the
    seq to acknowledge (None: nothing to acknowledge); note a log line for an anomaly."""

    __slots__ = ("outcome", "station", "seq", "ack", "note")

    def __init__(self, outcome, station, seq, ack, note=None):
        self.outcome, self.station, self.seq, self.ack, self.note = (
            outcome, station, seq, ack, note)

    def __repr__(self):
        return "Result(%s %s seq %s)" % (self.outcome, self.station, self.seq)


class Store:
    """The ledger's tables in one database (tools/db.py): ingest() and the status figures."""

    def __init__(self, d):
        self.d = d
        ensure_schema(d)

    @classmethod
    def open(cls, url):
        return cls(db.connect(url))

    def close(self):
        self.d.close()

    # -- ingest ---------------------------------------------------------------------------------
    def ingest(self, station, payload, received_ms=None):
        """Store one message in its own transaction; its Result."""
        return self.ingest_batch([(station, payload, received_ms)])[0]

    def ingest_batch(self, items):
        """Store [(station, payload, received_ms)] in ONE transaction; Results in the same
        order. Rows are locked in one global order (sessions by station and sid, then the
        counters by station), so two workers' batches on PostgreSQL cannot deadlock on them."""
        prepared = []
        for i, (station, payload, rms) in enumerate(items):
            raw = payload.decode("utf-8", "backslashreplace") if isinstance(
                payload, (bytes, bytearray)) else str(payload)
            try:
                rec, err = parse(payload), None
            except Malformed as e:
                rec, err = None, e
            key = (station, rec["sid"] if rec else "", rec["seq"] if rec else 0, i)
            prepared.append((key, i, station, raw, rec, err, rms or now_ms()))
        prepared.sort()
        results = [None] * len(items)
        counts = {}  # station -> [duplicates, conflicts], applied last
        with self.d.transaction():
            for _, i, station, raw, rec, err, rms in prepared:
                if err is not None:
                    results[i] = self._reject(station, err.seq, str(err), raw, rms, "malformed")
                else:
                    results[i] = self._store(station, raw, rec, rms, counts)
            for station in sorted(counts):
                dup, con = counts[station]
                self.d.execute(
                    "INSERT INTO ledger_counts (station, duplicates, conflicts)"
                    " VALUES (:s, :dup, :con) ON CONFLICT (station) DO UPDATE SET"
                    " duplicates = ledger_counts.duplicates + :dup,"
                    " conflicts = ledger_counts.conflicts + :con", s=station, dup=dup, con=con)
        return results

    def _store(self, station, raw, rec, rms, counts):
        seq, sid = rec["seq"], rec["sid"]
        # The session row first: it is the lock that orders two workers on one session.
        self.d.execute(
            "INSERT INTO ledger_sessions (station, sid, updated_ms) VALUES (:s, :sid, :t)"
            " ON CONFLICT (station, sid) DO UPDATE SET updated_ms = excluded.updated_ms",
            s=station, sid=sid, t=rms)
        rec_ts = rec.get("start_ts") if rec["event"] == "start" else rec.get("stop_ts")
        got = self.d.execute(
            "INSERT INTO ledger_records (station, seq, event, sid, rec_ts, received_ms, raw)"
            " VALUES (:s, :seq, :event, :sid, :rec_ts, :t, :raw)"
            " ON CONFLICT (station, seq) DO NOTHING RETURNING seq",
            s=station, seq=seq, event=rec["event"], sid=sid, rec_ts=rec_ts, t=rms, raw=raw)
        if not got:
            old = self.d.execute("SELECT raw FROM ledger_records WHERE station = :s AND"
                                 " seq = :seq", s=station, seq=seq)
            c = counts.setdefault(station, [0, 0])
            # (the row taken as a lock above is dropped if no record of that sid exists)
            self.d.execute("DELETE FROM ledger_sessions WHERE station = :s AND sid = :sid AND"
                           " start_seq IS NULL AND stop_seq IS NULL", s=station, sid=sid)
            if old and old[0][0] == raw:
                c[0] += 1
                return Result("duplicate", station, seq, seq)
            # The same seq with other bytes: a station whose flash was erased counts from 1
            # again. Dropping it as a duplicate would lose a billing record: keep it aside.
            c[1] += 1
            return self._reject(station, seq, "seq %d reused with different content (flash "
                                "erased?)" % seq, raw, rms, "conflict")
        row = self._rebuild_session(station, sid, rms)
        notes = [self._gap_note(station, seq)]
        if row["flags"]:
            notes.append("flagged: %s %s (seq %d): %s" % (station, sid, seq, row["flags"]))
        return Result("stored", station, seq, seq, "; ".join(n for n in notes if n) or None)

    def _rebuild_session(self, station, sid, rms):
        rows = self.d.execute("SELECT event, raw FROM ledger_records WHERE station = :s AND"
                              " sid = :sid ORDER BY seq", s=station, sid=sid)
        start = stop = None
        for event, raw in rows:
            if event == "start" and start is None:
                start = json.loads(raw)
            elif event == "stop" and stop is None:
                stop = json.loads(raw)
        row = _derive(station, start, stop, rms / 1000.0)
        row["updated_ms"] = rms
        sets = ", ".join("%s = :%s" % (c, c) for c in _SESSION_COLS[2:])
        self.d.execute("UPDATE ledger_sessions SET %s WHERE station = :station AND sid = :sid"
                       % sets, **row)
        return row

    def _gap_note(self, station, seq):
        """A log line when this seq opens a gap after the last one, or fills one."""
        below = self.d.execute("SELECT MAX(seq) FROM ledger_records WHERE station = :s AND"
                               " seq < :seq", s=station, seq=seq)[0][0]
        above = self.d.execute("SELECT MIN(seq) FROM ledger_records WHERE station = :s AND"
                               " seq > :seq", s=station, seq=seq)[0][0]
        if above is not None:
            return "gap: %s seq %d arrived after %d" % (station, seq, above)
        if below is not None and seq > below + 1:
            return "gap: %s seq %d..%d missing (got %d)" % (station, below + 1, seq - 1, seq)
        return None

    def _reject(self, station, seq, reason, raw, rms, outcome):
        key = station + ":" + hashlib.sha256(raw.encode("utf-8", "backslashreplace")) \
            .hexdigest()[:40]
        self.d.execute(
            "INSERT INTO ledger_rejects (key, station, seq, reason, raw, first_ms, last_ms,"
            " times) VALUES (:k, :s, :seq, :r, :raw, :t, :t, 1) ON CONFLICT (key) DO UPDATE"
            " SET last_ms = excluded.last_ms, times = ledger_rejects.times + 1",
            k=key, s=station, seq=seq, r=reason, raw=raw, t=rms)
        return Result(outcome, station, seq, seq,
                      "%s: %s seq %s: %s" % (outcome, station, seq, reason))

    def reingest(self):
        """Try every rejected record with a seq again (after a fix of the ledger): those that
        now parse are stored (exactly once, as ever) and leave the rejects. [Result]."""
        out = []
        with self.d.transaction():
            rows = self.d.execute("SELECT key, station, raw, last_ms FROM ledger_rejects"
                                  " WHERE reason NOT LIKE 'seq % reused%' ORDER BY station,"
                                  " seq")
            for key, station, raw, rms in rows:
                try:
                    rec = parse(raw)
                except Malformed:
                    continue
                counts = {}
                r = self._store(station, raw, rec, rms, counts)
                if r.outcome in ("stored", "duplicate"):
                    self.d.execute("DELETE FROM ledger_rejects WHERE key = :k", k=key)
                    out.append(r)
        return out

    # -- figures --------------------------------------------------------------------------------
    def gaps(self, station=None):
        """[(station, first_missing, last_missing)] between each station's lowest and highest
        seq seen (stored or rejected)."""
        where = "WHERE station = :s" if station else ""
        rows = self.d.execute(
            "SELECT station, prev + 1, seq - 1 FROM (SELECT station, seq, LAG(seq) OVER"
            " (PARTITION BY station ORDER BY seq) AS prev FROM (SELECT station, seq FROM"
            " ledger_records UNION SELECT station, seq FROM ledger_rejects WHERE seq IS NOT"
            " NULL) AS u %s) AS w WHERE seq > prev + 1 ORDER BY station, seq" % where,
            **({"s": station} if station else {}))
        return [(s, int(a), int(b)) for s, a, b in rows]

    def status(self):
        """{station: figures}: stored, duplicates, conflicts, malformed, first/last seq, gaps
        (missing seqs), open sessions, flagged sessions, last_received_ms, lag_s (the latest
        record's arrival minus its own time stamp)."""
        st = {}

        def get(s):
            return st.setdefault(s, {"stored": 0, "duplicates": 0, "conflicts": 0,
                                     "malformed": 0, "first_seq": None, "last_seq": None,
                                     "gaps": 0, "open": 0, "flagged": 0,
                                     "last_received_ms": None, "lag_s": None})

        for s, n, lo, hi, last in self.d.execute(
                "SELECT station, COUNT(*), MIN(seq), MAX(seq), MAX(received_ms)"
                " FROM ledger_records GROUP BY station"):
            g = get(s)
            g.update(stored=int(n), first_seq=int(lo), last_seq=int(hi),
                     last_received_ms=int(last))
        for s, rms, ts in self.d.execute(
                "SELECT r.station, r.received_ms, r.rec_ts FROM ledger_records r JOIN (SELECT"
                " station, MAX(received_ms) AS m FROM ledger_records GROUP BY station) AS l"
                " ON l.station = r.station AND l.m = r.received_ms"):
            if ts is not None:
                get(s)["lag_s"] = round(rms / 1000.0 - ts, 1)
        for s, dup, con in self.d.execute(
                "SELECT station, duplicates, conflicts FROM ledger_counts"):
            get(s).update(duplicates=int(dup), conflicts=int(con))
        for s, n in self.d.execute("SELECT station, COUNT(*) FROM ledger_rejects WHERE reason"
                                   " NOT LIKE 'seq % reused%' GROUP BY station"):
            get(s)["malformed"] = int(n)
        for s, opened, flagged in self.d.execute(
                "SELECT station, SUM(CASE WHEN stop_seq IS NULL THEN 1 ELSE 0 END),"
                " SUM(CASE WHEN flags <> '' THEN 1 ELSE 0 END) FROM ledger_sessions"
                " GROUP BY station"):
            get(s).update(open=int(opened or 0), flagged=int(flagged or 0))
        for s, a, b in self.gaps():
            get(s)["gaps"] += b - a + 1
        return st

    def rejects(self):
        return self.d.execute("SELECT station, seq, reason, times, raw FROM ledger_rejects"
                              " ORDER BY station, seq")


# -- the worker ---------------------------------------------------------------------------------

class _Msg:
    __slots__ = ("station", "payload", "mid", "qos", "gen", "t")

    def __init__(self, station, payload, mid, qos, gen):
        self.station, self.payload, self.mid, self.qos, self.gen = (
            station, payload, mid, qos, gen)
        self.t = time.monotonic()


class Worker:
    """Subscribes to <prefix>/+/session, stores each record, then acknowledges it.

    Messages are taken with manual MQTT acknowledgement: the broker's PUBACK, like the
    station's session ack, goes out only after the commit. stats() gives the live figures;
    with stats_file they are also written there (JSON) every stats_interval_s."""

    def __init__(self, url, broker="127.0.0.1:1883", prefix="evse", share=None, user=None,
                 password=None, client_id=None, persistent=None, stats_file=None,
                 stats_interval_s=10.0, log=None):
        import paho.mqtt.client as mqtt

        self.url = url
        self.prefix = prefix
        self.share = share
        self.topic = "%s/+/session" % prefix
        if share:
            self.topic = "$share/%s/%s" % (share, self.topic)
        self.stats_file = stats_file
        self.stats_interval_s = max(0.1, stats_interval_s)  # (0 would spin on the file)
        self._log = log or (lambda line: print(line, file=sys.stderr, flush=True))
        host, _, port = broker.rpartition(":")
        self.host, self.port = host or "127.0.0.1", int(port)  # (bad input before the DB)
        self.store = Store.open(url)
        # A single worker keeps a broker session (records published while it is down wait
        # there); workers of a shared subscription start clean, so a dead one's session ends
        # at once and the broker stops handing it messages.
        self.persistent = (not share) if persistent is None else persistent
        self.client_id = client_id or (
            "evse-ledger" if not share else "evse-ledger-%s-%d" % (socket.gethostname(),
                                                                   os.getpid()))
        v5 = bool(share)
        kw = {"client_id": self.client_id, "manual_ack": True,
              "protocol": mqtt.MQTTv5 if v5 else mqtt.MQTTv311}
        if not v5:
            kw["clean_session"] = not self.persistent
        self.mqtt = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, **kw)
        if user:
            self.mqtt.username_pw_set(user, password)
        self.mqtt.on_connect = self._on_connect
        self.mqtt.on_disconnect = self._on_disconnect
        self.mqtt.on_message = self._on_message
        self.mqtt.reconnect_delay_set(1, 30)
        self._v5 = v5
        self._q = queue.Queue()
        self._gen = 0  # connection generation: a PUBACK only on the connection it came over
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._t0 = time.monotonic()
        self._c = {"received": 0, "stored": 0, "duplicates": 0, "conflicts": 0,
                   "malformed": 0, "acked": 0, "not_acked": 0, "batches": 0, "db_errors": 0,
                   "connects": 0}
        self._connected = False
        self._busy = (0, None)  # (records, oldest arrival) in the transaction under way
        self._commit_ms_max = 0.0
        self._record_age_s = None
        self._last = (time.monotonic(), 0)  # (when, stored+duplicates) at the last figure
        self._rate = 0.0

    # -- MQTT side (paho's network thread) --------------------------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties=None):
        if reason_code.is_failure:
            self._log("ledger: broker refused the connection: %s" % reason_code)
            return
        with self._lock:
            self._gen += 1
            self._connected = True
            self._c["connects"] += 1
        client.subscribe(self.topic, qos=1)
        self._log("ledger: connected to %s:%d, subscribed to %s" % (self.host, self.port,
                                                                     self.topic))

    def _on_disconnect(self, client, userdata, flags, reason_code, properties=None):
        with self._lock:
            self._connected = False
        if not self._stop.is_set():
            self._log("ledger: disconnected (%s); reconnecting" % reason_code)

    def _on_message(self, client, userdata, m):
        topic = m.topic
        head = self.prefix + "/"
        station = topic[len(head):-len("/session")] if (
            topic.startswith(head) and topic.endswith("/session")) else None
        with self._lock:
            self._c["received"] += 1
            gen = self._gen
        if not station or "/" in station:
            self._log("ledger: ignored a message on %r" % topic)
            client.ack(m.mid, m.qos)
            return
        self._q.put(_Msg(station, bytes(m.payload), m.mid, m.qos, gen))

    # -- the ingest loop (the caller's thread) ----------------------------------------------
    def start(self):
        """Connect and start the network thread; run() or step() does the storing."""
        if self._v5:
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.properties import Properties

            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 86400 if self.persistent else 0
            self.mqtt.connect_async(self.host, self.port, keepalive=30,
                                    clean_start=not self.persistent, properties=props)
        else:
            self.mqtt.connect_async(self.host, self.port, keepalive=30)
        self.mqtt.loop_start()

    def stop(self):
        self._stop.set()

    def run(self):
        """Store and acknowledge until stop(); then what is queued, then disconnect."""
        # The figures come from a thread of their own: a database that blocks the ingest
        # shows as a growing lag instead of stopping the figures.
        done = threading.Event()

        def figures():
            while not done.wait(self.stats_interval_s):
                self._figure()

        t = threading.Thread(target=figures, daemon=True, name="ledger-figures")
        t.start()
        try:
            while not self._stop.is_set():
                self.step(timeout_s=0.5)
            while self.step(timeout_s=0):
                pass
        finally:
            done.set()
            t.join()
            self._figure()
            self.mqtt.disconnect()
            self.mqtt.loop_stop()
            self.store.close()

    def step(self, timeout_s=0.5):
        """Take what is queued (waiting up to timeout_s for the first), store it in one
        transaction, then acknowledge it. The number of messages handled."""
        try:
            batch = [self._q.get(timeout=timeout_s) if timeout_s else self._q.get_nowait()]
        except queue.Empty:
            return 0
        while len(batch) < BATCH_MAX:
            try:
                batch.append(self._q.get_nowait())
            except queue.Empty:
                break
        results = self._store(batch)
        if results is None:
            # The database failed: nothing is acknowledged. Put the batch back in front (in
            # order) and wait a little; the broker holds back the rest meanwhile.
            rest = []
            while True:
                try:
                    rest.append(self._q.get_nowait())
                except queue.Empty:
                    break
            for m in batch + rest:
                self._q.put(m)
            self._stop.wait(1.0)
            return 0
        self._acknowledge(batch, results)
        return len(batch)

    def _store(self, batch):
        t = time.monotonic()
        items = [(m.station, m.payload, None) for m in batch]
        with self._lock:
            self._busy = (len(batch), min(m.t for m in batch))
        try:
            results = self.store.ingest_batch(items)
        except Exception as e:  # the database, not the record: try again, acknowledge nothing
            with self._lock:
                self._c["db_errors"] += 1
                self._busy = (0, None)
            self._log("ledger: database error, %d records wait: %s" % (len(batch), e))
            self._reopen()
            return None
        ms = (time.monotonic() - t) * 1000.0
        with self._lock:
            self._busy = (0, None)
            self._c["batches"] += 1
            self._commit_ms_max = max(self._commit_ms_max, ms)
        return results

    def _reopen(self):
        try:
            self.store.close()
        except Exception:
            pass
        try:
            self.store = Store.open(self.url)
        except Exception as e:
            self._log("ledger: cannot reopen the database: %s" % e)

    def _acknowledge(self, batch, results):
        with self._lock:
            gen = self._gen
        for m, r in zip(batch, results):
            if r.note:
                self._log("ledger: " + r.note)
            if r.ack is not None:
                self.mqtt.publish(ACK_TOPIC % (self.prefix, m.station),
                                  json.dumps({"seq": r.ack}, separators=(",", ":")), qos=1)
            if m.gen == gen:
                self.mqtt.ack(m.mid, m.qos)
            with self._lock:
                self._c[{"stored": "stored", "duplicate": "duplicates", "conflict":
                         "conflicts", "malformed": "malformed"}[r.outcome]] += 1
                self._c["acked" if r.ack is not None else "not_acked"] += 1
        if results and results[-1].outcome == "stored":
            try:
                rec = json.loads(batch[-1].payload)
                ts = rec.get("stop_ts") if rec.get("event") == "stop" else rec.get("start_ts")
                if _is_int(ts):
                    self._record_age_s = round(time.time() - ts, 1)
            except ValueError:
                pass

    # -- figures --------------------------------------------------------------------------------
    def stats(self):
        """The live figures (a dict): counters since start, ingest_per_s (stored and
        duplicates per second over the last figure interval), pending (records received and
        not yet committed: queued, or in the transaction under way), lag_s (how long the
        oldest of them has waited), record_age_s (the last stored record's arrival minus its
        own time stamp), commit_ms_max, connected."""
        try:
            queued = self._q.queue[0].t if self._q.qsize() else None
        except IndexError:
            queued = None
        with self._lock:
            busy_n, busy_t = self._busy
            oldest = min([t for t in (queued, busy_t) if t is not None], default=None)
            d = dict(self._c)
            d.update(ts=round(time.time(), 3), uptime_s=round(time.monotonic() - self._t0, 1),
                     queue=self._q.qsize(), pending=self._q.qsize() + busy_n,
                     connected=self._connected,
                     lag_s=round(time.monotonic() - oldest, 3) if oldest else 0.0,
                     ingest_per_s=round(self._rate, 2), commit_ms_max=round(
                         self._commit_ms_max, 1), record_age_s=self._record_age_s,
                     client_id=self.client_id, share=self.share)
        return d

    def _figure(self):
        now = time.monotonic()
        with self._lock:
            done = self._c["stored"] + self._c["duplicates"]
            t0, n0 = self._last
            if now > t0:
                self._rate = (done - n0) / (now - t0)
            self._last = (now, done)
        s = self.stats()
        self._log("ledger: %.1f rec/s; stored %d, duplicates %d, malformed %d, conflicts %d;"
                  " pending %d, lag %.1f s" % (s["ingest_per_s"], s["stored"],
                                               s["duplicates"], s["malformed"],
                                               s["conflicts"], s["pending"], s["lag_s"]))
        if self.stats_file:
            tmp = self.stats_file + ".tmp"
            try:
                with open(tmp, "w") as f:
                    json.dump(s, f)
                os.replace(tmp, self.stats_file)  # a reader never sees half a file
            except OSError as e:
                self._log("ledger: cannot write %s: %s" % (self.stats_file, e))


# -- command line -------------------------------------------------------------------------------

def add_global_options(p):
    """The options fleet.py has globally, for running this module on its own."""
    p.add_argument("--db", default=os.environ.get("FLEET_DB", "fleet.db"),
                   help="sqlite file or sqlite:///PATH, or postgresql://USER@HOST:PORT/DB")
    p.add_argument("--broker", default=os.environ.get("FLEET_BROKER", "127.0.0.1:1883"),
                   help="HOST:PORT")
    p.add_argument("--prefix", default="evse")
    p.add_argument("--user")
    p.add_argument("--password")


def _configure(p, parents=()):
    p.add_argument("--share", metavar="NAME",
                   help="join the MQTT 5 shared subscription $share/NAME/... (several workers)")
    p.add_argument("--client-id", help="MQTT client id (default evse-ledger; with --share,"
                                       " evse-ledger-HOST-PID)")
    p.add_argument("--clean", action="store_true",
                   help="no broker session (the default with --share)")
    p.add_argument("--stats-file", metavar="FILE",
                   help="write the live figures (JSON) here every --stats-interval-s")
    p.add_argument("--stats-interval-s", type=float, default=10.0)
    p.set_defaults(func=run_worker)
    sub = p.add_subparsers(dest="ledger_cmd", metavar="{status,rejects,reingest}")
    s = sub.add_parser("status", help="stored, duplicates, malformed, gaps, lag per station",
                       parents=list(parents))
    s.add_argument("--gaps", action="store_true", help="list every gap")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_status)
    r = sub.add_parser("rejects", help="the records that could not be stored, as received",
                       parents=list(parents))
    r.set_defaults(func=cmd_rejects)
    g = sub.add_parser("reingest", help="store rejected records that parse now",
                       parents=list(parents))
    g.set_defaults(func=cmd_reingest)


def add_parser(subparsers, parents=()):
    """fleet.py: registers `ledger` (the worker) and its subcommands; `parents` carry the
    fleet's global options, so they may also follow the subcommand."""
    p = subparsers.add_parser("ledger", help="the billing ledger worker and its status",
                              parents=list(parents))
    _configure(p, parents)
    return p


EXIT_BAD_INPUT, EXIT_UNREACHABLE = 2, 3  # as fleet.py's


def open_failed(tool, url, e):
    """The message and exit status for a database that cannot be opened: a malformed URL is
    bad input (2), a server that does not answer is unreachable (3)."""
    print("%s: cannot open the database %r: %s" % (tool, url, e), file=sys.stderr)
    return EXIT_BAD_INPUT if isinstance(e, ValueError) else EXIT_UNREACHABLE


def _open_store(args):
    """(store, None) or (None, exit status)."""
    try:
        return Store.open(args.db), None
    except Exception as e:
        return None, open_failed("ledger", args.db, e)


def run_worker(args):
    try:
        w = Worker(args.db, broker=args.broker, prefix=args.prefix,
                   share=getattr(args, "share", None), user=getattr(args, "user", None),
                   password=getattr(args, "password", None),
                   client_id=getattr(args, "client_id", None),
                   persistent=False if getattr(args, "clean", False) else None,
                   stats_file=getattr(args, "stats_file", None),
                   stats_interval_s=getattr(args, "stats_interval_s", 10.0))
    except ValueError as e:  # --broker without a port, a malformed database URL
        print("ledger: cannot start: %s" % e, file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as e:
        return open_failed("ledger", args.db, e)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *a: w.stop())
    w.start()
    w.run()
    return 0


def _fmt_time(ms):
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ms / 1000.0)) if ms else "-"


def _with_store(cmd):
    """cmd(args, store) on the opened ledger, closed afterwards; an unopenable one is
    reported (its exit status)."""
    def run(args):
        store, rc = _open_store(args)
        if store is None:
            return rc
        try:
            return cmd(args, store)
        finally:
            store.close()
    return run


@_with_store
def cmd_status(args, store):
    st = store.status()
    gaps = store.gaps() if args.gaps else []
    if args.json:
        print(json.dumps({"stations": st, "gaps": [list(g) for g in gaps]}, indent=1,
                         sort_keys=True))
        return 0
    cols = ("stored", "duplicates", "malformed", "conflicts", "gaps", "open", "flagged",
            "first_seq", "last_seq", "lag_s")
    w = max([len("station")] + [len(s) for s in st])
    print("%-*s %s  %s" % (w, "station", " ".join("%10s" % c for c in cols), "last received"))
    for s in sorted(st):
        g = st[s]
        print("%-*s %s  %s" % (w, s, " ".join("%10s" % ("-" if g[c] is None else g[c])
                                                 for c in cols),
                                _fmt_time(g["last_received_ms"])))
    tot = {c: sum(st[s][c] for s in st) for c in cols[:7]}
    print("%-*s %s" % (w, "total", " ".join("%10d" % tot[c] for c in cols[:7])))
    for s, a, b in gaps:
        print("gap: %s seq %d..%d missing" % (s, a, b) if b > a else
              "gap: %s seq %d missing" % (s, a))
    return 0


@_with_store
def cmd_rejects(args, store):
    for station, seq, reason, times, raw in store.rejects():
        print("%s seq %s (%d times): %s\n  %s" % (station, seq, times, reason, raw[:300]))
    return 0


@_with_store
def cmd_reingest(args, store):
    done = store.reingest()
    print("reingested %d records (%d stored, %d already stored)" % (
        len(done), sum(r.outcome == "stored" for r in done),
        sum(r.outcome == "duplicate" for r in done)))
    print("acknowledge nothing: these records were acknowledged when they were rejected")
    return 0


def main(argv=None):
    p = argparse.ArgumentParser(prog="ledger.py", description=__doc__.split("\n")[0])
    add_global_options(p)
    _configure(p)
    args = p.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
