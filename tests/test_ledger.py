"""The billing ledger (tools/ledger.py) and its reports (tools/report.py): the store on SQLite
and PostgreSQL (exactly once, duplicates, gaps, flags, malformed records, racing workers),
reports against hand-computed sums, and the worker as a real process between a simulated
station and a real mosquitto."""

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from linkproxy import LinkProxy

import db
import ledger
import pgserver
import report
from broker import Broker, stop_process
from mqttc import Collector
from scenario import charging
from simctl import Station

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ST = "evse-435031"
TABLES = ("ledger_records", "ledger_sessions", "ledger_rejects", "ledger_counts",
          "station_groups")


# -- records as the firmware writes them (docs/mqtt.md, Sessions) ------------------------------

def start(seq, n=1, station=ST, ts=1795569692, meter=1234000, tag="APP-7", connector=1):
    return {"event": "start", "sid": "%s-%06d" % (station, n), "seq": seq,
            "connector": connector, "id_tag": tag, "auth": "remote", "start_ts": ts,
            "meter_start_wh": meter}


def stop(seq, n=1, station=ST, ts=1795569692, dur=10, meter=1234000, wh=1002, tag="APP-7",
         cost=(35070, 0, 500, 0), currency="EUR", charging_s=8, idle_s=0, estimated=False,
         connector=1):
    r = {"event": "stop", "sid": "%s-%06d" % (station, n), "seq": seq, "connector": connector,
         "id_tag": tag, "start_ts": ts, "stop_ts": ts + dur, "meter_start_wh": meter,
         "meter_stop_wh": meter + wh, "energy_wh": wh, "duration_s": dur,
         "charging_s": charging_s, "idle_s": idle_s, "reason": "Remote",
         "estimated": estimated}
    if cost is not None:
        e, t, f, i = cost
        r["cost"] = {"currency": currency, "total_millis": e + t + f + i, "energy_millis": e,
                     "time_millis": t, "fee_millis": f, "idle_millis": i}
    return r


def raw(rec):
    return json.dumps(rec, separators=(",", ":")).encode()


# -- the store on both databases -------------------------------------------------------------

@pytest.fixture(scope="module")
def pg():
    if not pgserver.available():
        yield None
        return
    srv = pgserver.PgServer()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, pg, tmp_path):
    if request.param == "sqlite":
        return str(tmp_path / "ledger.db")
    if pg is None:
        pytest.skip("PostgreSQL server not installed (make postgres)")
    d = db.connect(pg.url)
    for t in TABLES:
        d.execute("DROP TABLE IF EXISTS %s" % t)
    d.close()
    return pg.url


@pytest.fixture
def store(url):
    s = ledger.Store.open(url)
    yield s
    s.close()


def rows(store, sql, **kw):
    return store.d.execute(sql, **kw)


def session(store, sid_n=1, station=ST):
    cols = ("connector", "id_tag", "auth", "start_seq", "stop_seq", "start_ts", "stop_ts",
            "meter_start_wh", "meter_stop_wh", "energy_wh", "charging_s", "currency",
            "total_millis", "energy_millis", "fee_millis", "flags")
    got = rows(store, "SELECT %s FROM ledger_sessions WHERE station = :s AND sid = :sid"
               % ", ".join(cols), s=station, sid="%s-%06d" % (station, sid_n))
    return dict(zip(cols, got[0])) if got else None


def test_a_start_and_its_stop_make_one_session_row(store):
    """Break: the stop's columns not written (join lost) -> energy/cost None."""
    a = store.ingest(ST, raw(start(1)))
    b = store.ingest(ST, raw(stop(2)))
    assert (a.outcome, a.ack, b.outcome, b.ack) == ("stored", 1, "stored", 2)
    s = session(store)
    assert s == {"connector": 1, "id_tag": "APP-7", "auth": "remote", "start_seq": 1,
                 "stop_seq": 2, "start_ts": 1795569692, "stop_ts": 1795569702,
                 "meter_start_wh": 1234000, "meter_stop_wh": 1235002, "energy_wh": 1002,
                 "charging_s": 8, "currency": "EUR", "total_millis": 35570,
                 "energy_millis": 35070, "fee_millis": 500, "flags": ""}
    # the raw bytes are kept for disputes
    assert [r[0] for r in rows(store, "SELECT raw FROM ledger_records ORDER BY seq")] == [
        raw(start(1)).decode(), raw(stop(2)).decode()]


def test_a_duplicate_is_dropped_counted_and_acknowledged_again(store):
    """Break: ON CONFLICT DO UPDATE/insert twice, or no ack for a duplicate."""
    store.ingest(ST, raw(start(1)))
    again = store.ingest(ST, raw(start(1)))
    assert (again.outcome, again.ack) == ("duplicate", 1)
    assert rows(store, "SELECT COUNT(*) FROM ledger_records")[0][0] == 1
    st = store.status()[ST]
    assert (st["stored"], st["duplicates"], st["malformed"]) == (1, 1, 0)


def test_a_reused_seq_with_other_bytes_is_kept_aside_not_dropped(store):
    """A station whose flash was erased counts from seq 1 again: not a duplicate. Break:
    compare only (station, seq) -> the new record is silently dropped as a duplicate."""
    store.ingest(ST, raw(start(1)))
    other = store.ingest(ST, raw(start(1, ts=1795600000)))
    assert (other.outcome, other.ack) == ("conflict", 1)
    rej = store.rejects()
    assert len(rej) == 1 and "reused" in rej[0][2] and json.loads(rej[0][4])["start_ts"] \
        == 1795600000
    assert session(store)["start_ts"] == 1795569692  # the first one stands
    st = store.status()[ST]
    assert (st["stored"], st["duplicates"], st["conflicts"], st["malformed"]) == (1, 0, 1, 0)


def test_gaps_are_reported_and_close_when_the_records_arrive(store):
    """Break: the LAG() window over seqs -> no gap found."""
    for s in (1, 2):
        store.ingest(ST, raw(start(s, n=s)))
    r = store.ingest(ST, raw(start(5, n=5)))
    assert r.note == "gap: %s seq 3..4 missing (got 5)" % ST
    assert store.gaps() == [(ST, 3, 4)]
    assert store.status()[ST]["gaps"] == 2
    store.ingest(ST, raw(start(4, n=4)))
    store.ingest(ST, raw(start(3, n=3)))
    assert store.gaps() == [] and store.status()[ST]["gaps"] == 0


def test_a_stop_without_its_start_is_a_flagged_row_that_the_late_start_completes(store):
    store.ingest(ST, raw(stop(2)))
    s = session(store)
    assert s["stop_seq"] == 2 and s["start_seq"] is None and s["flags"] == "no_start"
    assert s["start_ts"] == 1795569692 and s["energy_wh"] == 1002
    r = store.ingest(ST, raw(start(1)))
    assert r.outcome == "stored" and "arrived after" in r.note
    assert "no_start" not in r.note
    s = session(store)
    assert (s["start_seq"], s["stop_seq"], s["auth"], s["flags"]) == (1, 2, "remote", "")


@pytest.mark.parametrize("rec,flags", [
    (stop(2, wh=-50), "meter_backwards,negative_energy"),
    (dict(stop(2, wh=-50), meter_stop_wh=None), "negative_energy"),
    (dict(stop(2), meter_stop_wh=1233000, energy_wh=-1000), "meter_backwards,negative_energy"),
    (dict(stop(2), stop_ts=1795569000), "stop_before_start"),
    (stop(2, estimated=True), "estimated"),
    (dict(stop(2), energy_wh=999), "energy_mismatch"),
    (dict(stop(2), cost={"currency": "EUR", "total_millis": 1, "energy_millis": 2,
                         "time_millis": 0, "fee_millis": 0, "idle_millis": 0}),
     "cost_mismatch"),
    (stop(2, tag="OTHER"), "start_mismatch"),
])
def test_anomalies_are_stored_as_sent_and_flagged(store, rec, flags):
    """Break: a flag check removed, or values 'fixed' (abs(), clamp)."""
    store.ingest(ST, raw(start(1)))
    r = store.ingest(ST, raw(rec))
    assert r.outcome == "stored" and r.note.endswith(": " + flags)  # logged by the worker
    s = session(store)
    assert s["flags"] == flags
    assert (s["energy_wh"], s["meter_stop_wh"], s["stop_ts"]) == (
        rec["energy_wh"], rec["meter_stop_wh"], rec["stop_ts"])
    assert store.status()[ST]["flagged"] == 1


BAD = [
    (b"{not json", None, "not JSON"),
    (b"\xff\xfe", None, "not JSON"),
    (b"[1,2]", None, "not a JSON object"),
    (b'{"event":"start","sid":"x","connector":1}', None, "seq"),
    (raw(dict(start(7), seq=True)), None, "seq"),
    (raw(dict(start(7), seq="7")), None, "seq"),
    (raw(dict(start(7), event="pause")), 7, "event"),
    (raw({k: v for k, v in start(7).items() if k != "auth"}), 7, "auth missing"),
    (raw(dict(start(7), connector="1")), 7, "connector must be int"),
    (raw(dict(start(7), sid="")), 7, "sid is empty"),
    (raw(dict(stop(7), energy_wh=1.5)), 7, "energy_wh must be int"),
    (raw(dict(stop(7), estimated=0)), 7, "estimated must be bool"),
    (raw(stop(7, currency="eur")), 7, "currency"),
    (raw(dict(stop(7), cost={"currency": "EUR"})), 7, "cost.total_millis missing"),
    (raw(dict(start(7), meter_start_wh=False)), 7, "meter_start_wh"),
]


@pytest.mark.parametrize("payload,ack,reason", BAD)
def test_malformed_records_are_kept_raw_and_acknowledged_when_their_seq_is_readable(
        store, payload, ack, reason):
    """Break: parse() accepting wrong types (e.g. bool as int) -> stored, not rejected."""
    r = store.ingest(ST, payload)
    assert (r.outcome, r.ack) == ("malformed", ack)
    assert reason in r.note
    assert rows(store, "SELECT COUNT(*) FROM ledger_records")[0][0] == 0
    assert rows(store, "SELECT COUNT(*) FROM ledger_sessions")[0][0] == 0
    (station, seq, why, times, kept), = store.rejects()
    assert (station, seq, times) == (ST, ack, 1) and reason in why
    assert kept == payload.decode("utf-8", "backslashreplace")
    # sent again (never acknowledged, or the ack was lost): one row, counted
    store.ingest(ST, payload)
    assert store.rejects()[0][3] == 2
    assert store.status()[ST]["malformed"] == 1


def test_a_batch_is_one_transaction(store, monkeypatch):
    """A failure in the middle of a batch stores none of it (then nothing is acked).
    Break: commit per record inside ingest_batch -> the first record stays."""
    real = store._rebuild_session
    calls = []

    def failing(*a):
        calls.append(a)
        if len(calls) == 2:
            raise RuntimeError("disk gone")
        return real(*a)

    monkeypatch.setattr(store, "_rebuild_session", failing)
    with pytest.raises(RuntimeError):
        store.ingest_batch([(ST, raw(start(1)), None), (ST, raw(stop(2)), None)])
    assert rows(store, "SELECT COUNT(*) FROM ledger_records")[0][0] == 0
    monkeypatch.setattr(store, "_rebuild_session", real)
    got = store.ingest_batch([(ST, raw(stop(2)), None), (ST, b"x", None),
                              (ST, raw(start(1)), None)])
    assert [r.outcome for r in got] == ["stored", "malformed", "stored"]
    assert session(store)["flags"] == ""


def test_two_connections_racing_on_the_same_records_store_each_once(url):
    """Two workers get a session's start and stop at the same moment, then each other's
    record (a resend), then the same record. Break: a plain INSERT (no ON CONFLICT) -> a
    unique violation; or (PostgreSQL) the session row locked only after reading the
    records -> one side of the join lost."""
    a, b = ledger.Store.open(url), ledger.Store.open(url)
    try:
        for n in range(1, 16):
            s_, p_, x_ = raw(start(3 * n - 2, n=n)), raw(stop(3 * n - 1, n=n)), raw(
                start(3 * n, n=100 + n))
            out = [[], []]
            gate = threading.Barrier(2)

            def run(i, store, payloads, gate=gate, out=out):
                for p in payloads:
                    gate.wait()
                    out[i].append(store.ingest(ST, p).outcome)

            ts = [threading.Thread(target=run, args=(0, a, [s_, p_, x_])),
                  threading.Thread(target=run, args=(1, b, [p_, s_, x_]))]
            for t in ts:
                t.start()
            for t in ts:
                t.join(30)
            steps = [sorted(o) for o in zip(*out)]
            assert steps == [["stored", "stored"], ["duplicate", "duplicate"],
                             ["duplicate", "stored"]], out
            s = session(a, n)
            assert (s["start_seq"], s["stop_seq"], s["flags"]) == (3 * n - 2, 3 * n - 1, ""), s
        st = a.status()[ST]
        assert (st["stored"], st["duplicates"], st["gaps"]) == (45, 45, 0)
    finally:
        a.close()
        b.close()


def test_reingest_stores_a_rejected_record_that_parses_now(store):
    """A record the ledger refused (say, a bug of the ledger's own) was acknowledged but kept:
    reingest stores it once. Break: reingest not deleting the reject -> stays listed."""
    store.ingest(ST, raw(start(1)))
    store._reject(ST, 2, "ledger bug", raw(stop(2)).decode(), 1, "malformed")
    done = store.reingest()
    assert [r.outcome for r in done] == ["stored"]
    assert store.rejects() == [] and session(store)["stop_seq"] == 2
    assert store.reingest() == []


# -- reports ------------------------------------------------------------------------------------

DAY1 = 1795564800  # 2026-11-25 00:00 UTC
DAY2 = DAY1 + 86400


@pytest.fixture
def billed(tmp_path):
    """A ledger with hand-made sessions over two days, two stations, two currencies."""
    path = str(tmp_path / "report.db")
    s = ledger.Store.open(path)
    a, b = "evse-a", "evse-b"
    recs = [
        (a, start(1, 1, a, DAY1 + 3600, tag="T1")),
        (a, stop(2, 1, a, DAY1 + 3600, wh=10000, tag="T1", cost=(350000, 0, 500, 0),
                 charging_s=3600)),
        (a, start(3, 2, a, DAY1 + 7200, tag="T2")),
        (a, stop(4, 2, a, DAY1 + 7200, wh=5500, tag="T2", cost=(192500, 1000, 500, 6667),
                 charging_s=1800, idle_s=1000, estimated=True)),
        (a, start(5, 3, a, DAY2 + 60, tag="T1")),
        (a, stop(6, 3, a, DAY2 + 60, wh=2000, tag="T1", cost=(70000, 0, 500, 0),
                 charging_s=600)),
        (a, start(7, 4, a, DAY2 + 120, tag="T1")),  # still charging: open
        (b, start(1, 1, b, DAY1 + 600, tag="T1")),
        (b, stop(2, 1, b, DAY1 + 600, wh=7777, tag="T1", currency="CHF",
                 cost=(276084, 1500, 500, 6667), charging_s=5401, idle_s=1000)),
        (b, stop(4, 2, b, DAY2 + 600, wh=1000, tag=None, cost=None, charging_s=60)),
    ]
    for station, r in recs:
        assert s.ingest(station, raw(r)).outcome == "stored"
    s.d.execute("INSERT INTO station_groups (station, grp) VALUES ('evse-a', 'depot')")
    s.close()
    return path


def test_money_is_exact_integer_millis_to_the_currency_unit():
    """Break: float division -> 0.1+0.2 style errors or no half-up rounding."""
    assert report.money(100000, "EUR") == "1.00"
    assert report.money(35570, "EUR") == "0.36"  # 35.57 cents, half up to the cent
    assert report.money(284751, "EUR") == "2.85"
    assert report.money(1, "EUR") == "0.00" and report.money(500, "EUR") == "0.01"
    assert report.money(123456789012345678, "EUR") == "1234567890123.46"
    assert report.money(100500, "EUR") == "1.01"  # 1.005 is 1.00499... as a float
    assert report.money(10 ** 20 + 500, "EUR") == "1000000000000000.01"
    assert report.money(1500, "JPY") == "2" and report.money(1234, "KWD") == "0.001"
    assert report.money(-100000, "EUR") == "-1.00"


def test_report_by_station_and_day_against_hand_computed_sums(billed):
    """Break: currencies summed together, or open sessions counted as sessions."""
    d = db.connect(billed)
    rows = report.aggregate(report.fetch(d), by="station", per="day")
    d.close()
    got = {(k, p, c): v for k, p, c, v in rows}
    assert got[("evse-a", "2026-11-25", "EUR")] == {
        "sessions": 2, "open": 0, "energy_wh": 15500, "charging_s": 5400,
        "revenue_millis": 350500 + 200667, "idle_millis": 6667, "flagged": 1}
    assert got[("evse-a", "2026-11-26", "EUR")]["revenue_millis"] == 70500
    assert got[("evse-a", "2026-11-26", "")] == {
        "sessions": 0, "open": 1, "energy_wh": 0, "charging_s": 0, "revenue_millis": 0,
        "idle_millis": 0, "flagged": 0}
    assert got[("evse-b", "2026-11-25", "CHF")]["revenue_millis"] == 284751
    # b's second stop came without its start: flagged; no tariff: no currency
    assert got[("evse-b", "2026-11-26", "")]["flagged"] == 1
    assert len(rows) == 5
    totals = dict(report.totals(rows))
    assert totals["EUR"]["revenue_millis"] == 621667 and totals["CHF"]["revenue_millis"] \
        == 284751


def test_report_by_tag_and_group_and_month(billed):
    d = db.connect(billed)
    sessions = report.fetch(d)
    d.close()
    by_tag = {(k, c): v for k, _, c, v in report.aggregate(sessions, by="tag")}
    assert by_tag[("T1", "EUR")]["sessions"] == 2 and by_tag[("T1", "EUR")]["energy_wh"] \
        == 12000
    assert by_tag[("(none)", "")]["sessions"] == 1
    by_group = {(k, p, c): v for k, p, c, v in report.aggregate(sessions, by="group",
                                                                  per="month")}
    assert by_group[("depot", "2026-11", "EUR")]["sessions"] == 3
    assert by_group[("(none)", "2026-11", "CHF")]["energy_wh"] == 7777


def _run(mod, argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = mod.main(argv)
    return rc, out.getvalue(), err.getvalue()


def test_report_cli_table_csv_and_png(billed, tmp_path):
    """Break: money printed from floats, or a CSV column shifted."""
    rc, out, _ = _run(report, ["--db", billed, "--since", "2026-11-25", "--until",
                               "2026-11-25"])
    assert rc == 0
    print(out)
    lines = out.splitlines()
    assert lines[0].split() == ["station", "period", "currency", "sessions", "open",
                                "energy_kwh", "charging_h", "revenue", "idle_fees", "flagged"]
    assert lines[1].split() == ["evse-a", "all", "EUR", "2", "0", "15.500", "1:30", "5.51",
                                "0.07", "1"]
    assert lines[2].split() == ["evse-b", "all", "CHF", "1", "0", "7.777", "1:30", "2.85",
                                "0.07", "0"]
    assert lines[-2].split()[:3] == ["total", "CHF", "1"]
    csv_path = str(tmp_path / "r.csv")
    png_path = str(tmp_path / "r.png")
    rc, _, _ = _run(report, ["--db", billed, "--per", "day", "--csv", csv_path, "--png",
                             png_path])
    assert rc == 0
    with open(csv_path) as f:
        text = f.read().splitlines()
    assert text[0] == ("station,period,currency,sessions,open,energy_wh,charging_s,"
                       "revenue_millis,revenue,idle_millis,idle_fees,flagged")
    assert "evse-a,2026-11-25,EUR,2,0,15500,5400,551167,5.51,6667,0.07,1" in text
    assert "evse-b,2026-11-26,,1,0,1000,60,0,,0,,1" in text
    with open(png_path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_bad_input_to_the_tools_is_a_message_not_a_crash(billed, tmp_path):
    rc, _, err = _run(report, ["--db", billed, "--since", "25.11.2026"])
    assert rc == 2 and "not a date" in err
    rc, _, err = _run(report, ["--db", "mysql://x/y"])
    assert rc == 2 and "cannot open the database" in err
    rc, _, err = _run(ledger, ["--db", "mysql://x/y", "status"])
    assert rc == 2 and "cannot open the database" in err
    rc, _, err = _run(ledger, ["--db", "postgresql://u@127.0.0.1:1/none", "status"])
    assert rc == 3 and "cannot open the database" in err
    rc, _, err = _run(ledger, ["--db", billed, "--broker", "nohost"])
    assert rc == 2 and "cannot start" in err
    notdb = tmp_path / "not.db"
    notdb.write_bytes(b"this is not a database" * 100)
    rc, _, err = _run(report, ["--db", str(notdb)])
    assert rc == 3 and "not.db" in err, err
    rc, _, err = _run(report, ["--db", billed, "--csv", str(tmp_path / "no" / "dir.csv")])
    assert rc == 2 and "dir.csv" in err


def test_ledger_status_cli(billed):
    rc, out, _ = _run(ledger, ["--db", billed, "status", "--gaps"])
    assert rc == 0
    print(out)
    assert "gap: evse-b seq 1..3 missing" not in out
    assert "gap: evse-b seq 3 missing" in out
    rc, out, _ = _run(ledger, ["--db", billed, "status", "--json"])
    st = json.loads(out)["stations"]
    assert st["evse-b"]["gaps"] == 1 and st["evse-a"]["open"] == 1


# -- the worker as a process, with a simulated station -------------------------------------------

class WorkerProc:
    """tools/ledger.py as a subprocess; its live figures from the stats file."""

    def __init__(self, tmp, url, port, *extra, name="w"):
        self.stats_path = os.path.join(str(tmp), "%s.stats.json" % name)
        self.log_path = os.path.join(str(tmp), "%s.log" % name)
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, os.path.join(ROOT, "tools", "ledger.py"), "--db", url,
             "--broker", "127.0.0.1:%d" % port, "--stats-file", self.stats_path,
             "--stats-interval-s", "0.3", *extra], stdout=self.log, stderr=self.log)
        self.wait(lambda s: s["connected"], what="worker connected")

    def stats(self):
        try:
            with open(self.stats_path) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def wait(self, pred, timeout=20.0, what="worker figures"):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            s = self.stats()
            if s and pred(s):
                return s
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError("%s: %r\n%s" % (what, self.stats(), self.text()))

    def text(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")[-3000:]

    def signal(self, sig):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stop(self):
        stop_process(self.proc, 10)
        self.log.close()


def diag_sessions(mq, base, rid):
    m = mq.mark()
    mq.c.publish(base + "/cmd", json.dumps({"rid": rid, "cmd": "diag"}), qos=1)
    return mq.wait_json(base + "/reply", lambda d: d["rid"] == rid, since=m)["data"]["sessions"]


def session_msgs(mq, base, since):
    return [json.loads(p) for t, p, _ in mq.after(since) if t == base + "/session"]


def test_end_to_end_the_station_lets_go_of_a_record_only_after_the_ledger_stored_it(tmp_path):
    """While the ledger's database is locked, the worker can store nothing: the station must
    keep both messages in its outbox. Break: publish the session ack before the commit ->
    the outbox empties while nothing is stored."""
    br = Broker(allow_fallback=False)
    st = w = mq = lock = None
    base = "evse/" + ST
    path = str(tmp_path / "ledger.db")
    try:
        mq = Collector(br.port, "evse/#")
        m = mq.mark()
        (tmp_path / "st").mkdir()
        st = Station(state_dir=str(tmp_path / "st"), broker="127.0.0.1:%d" % br.port)
        mq.wait(lambda x: x[0] == base + "/online" and x[1] == b"online", since=m, timeout=20)
        mq.c.publish(base + "/cmd", json.dumps({
            "rid": "t1", "cmd": "set_tariff", "currency": "EUR",
            "energy_millis_per_kwh": 35000, "fee_millis": 500}), qos=1)
        assert mq.wait_json(base + "/reply", lambda d: d["rid"] == "t1", since=m)["ok"]
        w = WorkerProc(tmp_path, path, br.port)
        lock = db.connect(path)
        lock.con.execute("BEGIN IMMEDIATE")  # the worker's commit waits behind this
        m = mq.mark()
        charging(st)
        st.op("meter", speed=200)
        time.sleep(1.0)
        st.op("unplug")
        mq.wait_json(base + "/session", lambda d: d["event"] == "stop", since=m, timeout=15)
        start, stp = session_msgs(mq, base, m)[:2]
        w.wait(lambda s: s["pending"] == 2, what="both records at the worker, waiting")
        time.sleep(1.0)
        assert diag_sessions(mq, base, "d1")["outbox"] == 2
        assert not [1 for t, *_ in mq.after(m) if t.endswith("/session/ack")]
        lock.con.execute("ROLLBACK")
        ack = mq.wait_json(base + "/session/ack", lambda d: d["seq"] == stp["seq"], since=m,
                           timeout=15)
        # the ack is out: the record is in the ledger already
        got = lock.execute("SELECT seq, raw FROM ledger_records WHERE station = :s ORDER BY"
                           " seq", s=ST)
        assert [json.loads(r) for _, r in got] == [start, stp], got
        assert ack == {"seq": stp["seq"]}
        end = time.monotonic() + 10
        while diag_sessions(mq, base, "d2")["outbox"] and time.monotonic() < end:
            time.sleep(0.2)
        assert diag_sessions(mq, base, "d3")["outbox"] == 0
        row = lock.execute("SELECT energy_wh, total_millis, currency, flags FROM"
                           " ledger_sessions WHERE sid = :sid", sid=start["sid"])
        assert row == [(stp["energy_wh"], stp["cost"]["total_millis"], "EUR", "")]
        assert stp["cost"]["total_millis"] >= 500 and stp["energy_wh"] > 0
        s = w.wait(lambda s: s["stored"] == 2)
        print("worker figures:", s)
    finally:
        for x in (lock, mq):
            if x:
                with contextlib.suppress(Exception):
                    (x.close if x is lock else x.stop)()
        if w:
            w.stop()
        if st:
            st.stop()
        br.stop()


def test_a_stop_sent_while_the_worker_was_down_is_stored_exactly_once(tmp_path):
    """The worker is killed after the start; the stop goes out twice while it is down (the
    station reconnects and resends it); the restarted worker stores it once. Break: no broker
    session for the single worker (clean) -> the stop waits for the 300 s resend; or
    duplicates stored -> two records."""
    br = Broker(allow_fallback=False)
    st = w = mq = proxy = d = None
    base = "evse/" + ST
    path = str(tmp_path / "ledger.db")
    try:
        proxy = LinkProxy(br.port)
        mq = Collector(br.port, "evse/#")
        w = WorkerProc(tmp_path, path, br.port)
        m = mq.mark()
        (tmp_path / "st").mkdir()
        st = Station(state_dir=str(tmp_path / "st"), broker="127.0.0.1:%d" % proxy.port)
        mq.wait(lambda x: x[0] == base + "/online" and x[1] == b"online", since=m, timeout=20)
        charging(st)
        start = mq.wait_json(base + "/session", since=m, timeout=15)
        mq.wait_json(base + "/session/ack", lambda a: a["seq"] == start["seq"], since=m)
        time.sleep(0.5)  # (its broker PUBACK follows the session ack)
        w.signal(signal.SIGKILL)
        w.proc.wait()
        w.stop()
        m = mq.mark()
        st.op("unplug")
        stp = mq.wait_json(base + "/session", lambda d: d["event"] == "stop", since=m,
                           timeout=15)
        proxy.cut()  # the station reconnects and sends the unacknowledged stop again
        time.sleep(0.3)
        proxy.restore()
        end = time.monotonic() + 20
        while sum(1 for t, p, _ in mq.after(m) if t == base + "/session") < 2:
            assert time.monotonic() < end, "the stop was not sent again"
            time.sleep(0.1)
        assert diag_sessions(mq, base, "d1")["outbox"] == 1
        w = WorkerProc(tmp_path, path, br.port, name="w2")
        mq.wait_json(base + "/session/ack", lambda a: a["seq"] == stp["seq"], since=m,
                     timeout=15)
        s = w.wait(lambda s: s["stored"] + s["duplicates"] >= 2, what="both copies handled")
        assert (s["stored"], s["duplicates"]) == (1, 1), s
        d = db.connect(path)
        got = d.execute("SELECT seq, event FROM ledger_records ORDER BY seq")
        assert got == [(start["seq"], "start"), (stp["seq"], "stop")]
        assert d.execute("SELECT start_seq, stop_seq, flags FROM ledger_sessions") == [
            (start["seq"], stp["seq"], "")]
        end = time.monotonic() + 10
        while diag_sessions(mq, base, "d2")["outbox"] and time.monotonic() < end:
            time.sleep(0.2)
        assert diag_sessions(mq, base, "d3")["outbox"] == 0
    finally:
        if d:
            d.close()
        if mq:
            mq.stop()
        if w:
            w.stop()
        if st:
            st.stop()
        if proxy:
            proxy.stop()
        br.stop()


@pytest.mark.parametrize("where", ["before", "after"])
def test_fleet_cli_runs_the_ledger_status_and_report(billed, where):
    """The fleet's global options go before or after its subcommands, the ledger's and the
    report's too (break: add_parser ignoring `parents`)."""
    fleet = [sys.executable, os.path.join(ROOT, "tools", "fleet.py")]
    for sub in (["ledger", "status", "--json"], ["report", "--by", "station", "--csv", "-"]):
        args = fleet + (["--db", billed] + sub if where == "before" else sub + ["--db", billed])
        r = subprocess.run(args, capture_output=True, timeout=30, text=True)
        assert r.returncode == 0, r.stderr
        if sub[0] == "ledger":
            assert json.loads(r.stdout)["stations"]["evse-a"]["stored"] == 7
        else:
            assert "evse-a" in r.stdout
