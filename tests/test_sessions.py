"""Sessions on CPython with a fake board and a stepped clock: the journal on flash (torn
records, counters that never repeat, the outbox and its acknowledgements, compaction),
session start and stop with their reasons, caps, costs and the power-loss stop at boot."""

import json
import os

import fakes
from evse import journal as journals
from evse.journal import Journal
from evse.station import Station
from evse.store import Store
from fakes import Clock, FakeBoard, cmd, plug_and_charge
from fakes import session_messages as messages


class Meter:
    """A meter reading the sessions see (metering.meters[k]). `live`: read afresh every
    loop (ok_ms is now); else its last reading is as old as boot."""

    def __init__(self, wh=100000, p_w=0, live=True):
        self.name = "fake"
        self.wh = wh
        self.p_w = p_w
        self.reading = None
        self.live = live
        self.clk = None
        self.read()

    @property
    def ok_ms(self):
        return self.clk.now if self.live and self.clk is not None else None

    def read(self):
        self.reading = ([230.0] * 3, [0.0] * 3, self.p_w, self.wh, 50.0)


def boot(path, connectors=1, meter=None, **cfg):
    st, board, clk = fakes.boot(path, connectors, **cfg)
    if meter is not None:
        st.metering.meters[0] = meter
        meter.clk = clk
    return st, board, clk


# -- the journal --------------------------------------------------------------------------
def test_journal_counters_outbox_and_acks_survive_reload(tmp_path):
    """Break: counters not restored at load (seq/sid restart at 1) or acks not replayed."""
    store = Store(str(tmp_path))
    j = Journal(store)
    j.load()
    for _ in range(3):
        sid = j.next_sid("evse-x")
        j.message({"event": "start", "sid": sid, "connector": 1})
        j.message({"event": "stop", "sid": sid, "connector": 1})
    assert j.seq == 6 and j.sid_n == 3
    assert j.ack(2) == 1 and j.ack(2) is None and j.ack(99) is None
    assert j.sent(6) and not j.sent(7) and not j.sent(0)
    j2 = Journal(store)
    j2.load()
    assert (j2.seq, j2.sid_n) == (6, 3)
    assert [e[0] for e in j2.outbox] == [1, 3, 4, 5, 6]
    with j2.reader() as f:
        assert json.loads(j2.payload(j2.outbox[0][1], f))["seq"] == 1


def test_torn_last_record_is_skipped_and_never_glued_to(tmp_path):
    """A write cut short leaves a prefix: it is dropped at boot, counted, and the next
    record starts on a clean line. Break: no checksum check, or no compaction after a
    torn line -> the torn record reads back or the next one is glued to it."""
    store = Store(str(tmp_path))
    j = Journal(store)
    j.load()
    j.message({"event": "start", "sid": j.next_sid("s"), "connector": 1})
    full = journals._line(b"M", json.dumps({"event": "stop", "sid": "s-000001",
                                            "connector": 1, "seq": 2}))
    for cut in (5, 11, 20, len(full) - 1):
        with open(j.path, "rb") as f:
            good = f.read()
        with open(j.path, "ab") as f:
            f.write(full[:cut])  # the power went mid-write
        j2 = Journal(store)
        j2.load()
        assert j2.bad == 1, cut
        assert [e[0] for e in j2.outbox] == [1] and j2.seq == 1 and 1 in j2.open
        j2.message({"event": "stop", "sid": "s-000001", "connector": 1})
        j3 = Journal(store)
        j3.load()
        assert j3.bad == 0 and [e[0] for e in j3.outbox] == [1, 2] and not j3.open
        # back to the state before the torn write for the next cut
        with open(j.path, "wb") as f:
            f.write(good)


def test_a_corrupt_record_in_the_middle_costs_only_itself(tmp_path):
    store = Store(str(tmp_path))
    j = Journal(store)
    j.load()
    for i in range(3):
        j.message({"event": "start", "sid": j.next_sid("s"), "connector": i + 1})
    data = bytearray(open(j.path, "rb").read())
    second = data.index(b"\n") + 1
    data[second + 30] ^= 0x01  # one flipped bit in the second record
    open(j.path, "wb").write(data)
    j2 = Journal(store)
    j2.load()
    assert j2.bad == 1 and [e[0] for e in j2.outbox] == [1, 3] and j2.seq == 3


def test_compaction_keeps_counters_outbox_and_open_sessions(tmp_path):
    """Break: the header line left out of compaction -> seq/sid restart after reload."""
    store = Store(str(tmp_path))
    j = Journal(store)
    j.load()
    for _ in range(40):
        sid = j.next_sid("s")
        j.message({"event": "start", "sid": sid, "connector": 1, "pad": "x" * 300})
        j.message({"event": "stop", "sid": sid, "connector": 1})
        j.ack(j.seq - 1)
        j.ack(j.seq)
    sid = j.next_sid("s")
    j.message({"event": "start", "sid": sid, "connector": 2, "meter_start_wh": 5})
    j.ack(j.seq)  # acknowledged, still running
    j.checkpoint(2, {"sid": sid, "wh": 9})
    j.message({"event": "start", "sid": j.next_sid("s"), "connector": 1})  # unacknowledged
    before = j.size
    assert j.due(False) and not j.due(True)
    j.compact()
    assert j.size < before // 10
    j2 = Journal(store)
    j2.load()
    assert (j2.seq, j2.sid_n) == (82, 42)
    assert [e[0] for e in j2.outbox] == [82]
    assert j2.open[2]["m"]["sid"] == sid and j2.open[2]["c"]["wh"] == 9
    assert j2.open[1]["m"]["seq"] == 82


def test_compaction_cut_midway_leaves_the_old_journal(tmp_path, monkeypatch):
    store = Store(str(tmp_path))
    j = Journal(store)
    j.load()
    j.message({"event": "start", "sid": j.next_sid("s"), "connector": 1})
    old = open(j.path, "rb").read()

    def cut(*a):
        raise OSError("power cut")

    monkeypatch.setattr(journals.os, "rename", cut)
    try:
        j.compact()
    except OSError:
        pass
    assert open(j.path, "rb").read() == old
    j2 = Journal(store)
    j2.load()
    assert j2.seq == 1 and [e[0] for e in j2.outbox] == [1]


# -- sessions on a station ------------------------------------------------------------------
def test_free_mode_session_start_stop_on_unplug(tmp_path):
    m = Meter(wh=500000, p_w=7000)
    st, board, clk = boot(tmp_path, meter=m)
    hal = plug_and_charge(board, clk)
    assert hal.contactor.on
    s = st.sessions.cur[0]
    assert s is not None and s.sid == "evse-abcdef-000001" and s.meter_start == 500000
    clk.run(10_000)
    m.wh += 20
    m.read()
    clk.run(10)
    hal.ev = "A"
    clk.run(50)
    msgs = messages(st)
    assert [x["event"] for x in msgs] == ["start", "stop"]
    stop = msgs[1]
    assert stop["reason"] == "EVDisconnected" and stop["energy_wh"] == 20
    assert stop["meter_stop_wh"] == 500020 and not stop["estimated"]
    assert 9 <= stop["charging_s"] <= 11 and stop["seq"] == 2
    assert "cost" not in stop


def test_reasons_remote_disable_fault_reboot(tmp_path):
    st, board, clk = boot(tmp_path, meter=Meter())
    plug_and_charge(board, clk)
    sid = st.sessions.cur[0].sid
    assert cmd(st, "stop", sid=sid)["ok"]
    board.connectors[0].ev = "B"  # the EV answers X1
    clk.run(100)
    assert messages(st)[-1]["reason"] == "Remote"
    assert cmd(st, "stop", sid=sid)["error"] == "not_found"
    board.connectors[0].ev = "A"
    clk.run(100)
    plug_and_charge(board, clk)
    board.connectors[0].rcd = True
    clk.run(50)
    assert messages(st)[-1]["reason"] == "GroundFault"
    board.connectors[0].rcd = False


def test_remote_start_waits_for_plug_in_and_lapses(tmp_path):
    st, board, clk = boot(tmp_path, meter=Meter(), auth_mode="remote",
                          connection_timeout_s=10)
    hal = board.connectors[0]
    hal.ev = "B"
    clk.run(100)
    assert st.sessions.cur[0] is None and hal.pilot.mode == "+12"  # nobody authorized
    hal.ev = "A"
    clk.run(100)
    r = cmd(st, "start", connector=1, id_tag="APP1", max_wh=1000)
    assert r["ok"] and r["data"]["connection_timeout_s"] == 10
    clk.run(5000)
    plug_and_charge(board, clk)
    s = st.sessions.cur[0]
    assert s.id_tag == "APP1" and s.auth == "remote" and s.max_wh == 1000
    assert cmd(st, "start", connector=1, id_tag="APP2")["error"] == "busy"
    hal.ev = "A"
    clk.run(100)
    assert cmd(st, "start", connector=1, id_tag="APP3")["ok"]
    clk.run(12_000)
    hal.ev = "B"
    clk.run(200)
    assert st.sessions.cur[0] is None and hal.pilot.mode == "+12"


def test_energy_cap_stops_at_the_cap(tmp_path):
    m = Meter(wh=0, p_w=11000)
    st, board, clk = boot(tmp_path, meter=m, auth_mode="remote")
    assert cmd(st, "start", connector=1, id_tag="APP", max_wh=50)["ok"]
    hal = plug_and_charge(board, clk)
    for _ in range(100):  # 11 kW: ~3 Wh per one-second reading
        m.wh += 3
        m.read()
        clk.run(1000)
        if hal.pilot.mode != "pwm":
            break
    assert hal.pilot.mode == "+12"
    assert 47 <= m.wh <= 50, m.wh  # stopped at the reading that would have crossed 50 Wh
    hal.ev = "B"
    clk.run(100)
    stop = messages(st)[-1]
    assert stop["reason"] == "EnergyLimitReached" and stop["energy_wh"] == m.wh


def test_time_cap_and_cost_breakdown(tmp_path):
    m = Meter(wh=0, p_w=3600)
    st, board, clk = boot(tmp_path, meter=m, auth_mode="remote")
    assert cmd(st, "set_tariff", currency="EUR", energy_millis_per_kwh=35000,
               time_millis_per_h=1200, fee_millis=500, idle_millis_per_h=0,
               idle_grace_s=0)["ok"]
    assert cmd(st, "start", connector=1, id_tag="APP", max_s=60)["ok"]
    hal = plug_and_charge(board, clk)
    for _ in range(70):
        m.wh += 1
        m.read()
        clk.run(1000)
    assert hal.pilot.mode == "+12"
    hal.ev = "B"
    clk.run(100)
    stop = messages(st)[-1]
    assert stop["reason"] == "TimeLimitReached"
    e = stop["energy_wh"]
    cs = stop["charging_s"]
    cost = stop["cost"]
    assert cost["energy_millis"] == (e * 35000 + 500) // 1000
    assert cost["time_millis"] == (cs * 1200 + 1800) // 3600
    assert cost["total_millis"] == cost["energy_millis"] + cost["time_millis"] + 500


def test_power_loss_closes_the_session_at_boot_with_the_meter_reading(tmp_path):
    m = Meter(wh=1000, p_w=7000)
    st, board, clk = boot(tmp_path, meter=m)
    plug_and_charge(board, clk)
    sid = st.sessions.cur[0].sid
    clk.run(400_000)  # a checkpoint
    # the power goes: a new Station on the same flash; the meter kept counting
    m2 = Meter(wh=1500)
    board2 = FakeBoard(board.fs)
    st2 = Station(board2)
    st2.metering.meters[0] = m2
    m2.clk = Clock(st2)
    m2.clk.run(100)
    stop = messages(st2)[-1]
    assert stop["sid"] == sid and stop["reason"] == "PowerLoss"
    assert stop["meter_stop_wh"] == 1500 and stop["energy_wh"] == 500
    assert not stop["estimated"] and stop["duration_s"] >= 300
    assert st2.sessions.journal.seq == 2
    # and the next session gets new numbers
    plug_and_charge(board2, m2.clk)
    assert st2.sessions.cur[0].sid.endswith("000002")


def test_power_loss_without_meter_reading_is_estimated_after_meter_fail_s(tmp_path):
    st, board, clk = boot(tmp_path, meter=Meter(wh=1000))
    plug_and_charge(board, clk)
    board2 = FakeBoard(board.fs)
    st2 = Station(board2)
    dead = Meter()
    dead.reading = None
    st2.metering.meters[0] = dead
    clk2 = Clock(st2)
    clk2.run(5000)
    assert st2.sessions.journal.seq == 1  # waits for the meter
    clk2.run(7000)
    stop = messages(st2)[-1]
    assert stop["reason"] == "PowerLoss" and stop["estimated"]
    assert stop["meter_stop_wh"] == 1000


def test_outbox_full_refuses_new_sessions_and_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(journals, "OUTBOX_MAX", 4)
    st, board, clk = boot(tmp_path, meter=Meter())
    hal = board.connectors[0]
    for _ in range(2):
        plug_and_charge(board, clk)
        hal.ev = "A"
        clk.run(100)
    assert len(st.sessions.journal.outbox) == 4
    hal.ev = "B"
    clk.run(200)
    assert st.sessions.cur[0] is None and hal.pilot.mode == "+12"
    codes = [e[1] for e in st.events._q]
    assert "OutboxFull" in codes
    st.sessions.on_ack(b'{"seq":1}')
    st.sessions.on_ack(b'{"seq":2}')
    clk.run(200)
    assert st.sessions.cur[0] is not None and hal.pilot.mode == "pwm"


def test_garbled_acks_change_nothing_and_are_counted(tmp_path):
    st, board, clk = boot(tmp_path, meter=Meter())
    plug_and_charge(board, clk)
    ses = st.sessions
    for bad in (b"nope", b'{"seq":"1"}', b'{"seq":true}', b'{"seq":7}', b"[1]", b'{"x":1}'):
        ses.on_ack(bad)
    assert ses.acks_bad == 6 and len(ses.journal.outbox) == 1
    assert ses.on_ack(b'{"seq":1}') == "ok" and ses.on_ack(b'{"seq":1}') == "dup"
    assert not ses.journal.outbox


def test_journal_writes_per_session(tmp_path):
    """Flash wear: a short session costs two message lines and two ack lines."""
    st, board, clk = boot(tmp_path, meter=Meter())
    w0 = st.sessions.journal.writes
    hal = plug_and_charge(board, clk)
    hal.ev = "A"
    clk.run(100)
    st.sessions.on_ack(b'{"seq":1}')
    st.sessions.on_ack(b'{"seq":2}')
    assert st.sessions.journal.writes - w0 == 4
    assert os.path.getsize(st.sessions.journal.path) < 1000


def test_stop_reading_is_taken_after_the_contactor_opened(tmp_path):
    """The energy stops with the current: the stop waits for the first reading after the
    contactor opened (at most meter_fail_s, then the last one, estimated). Break: take the
    last reading at once -> 1000 instead of 1007 below."""
    m = Meter(wh=1000, live=False)
    st, board, clk = boot(tmp_path, meter=m)
    hal = plug_and_charge(board, clk)
    hal.ev = "A"
    clk.run(100)
    assert st.sessions.journal.seq == 1  # the stop waits for a fresh reading
    m.wh = 1007
    m.read()
    m.live = True
    clk.run(10)
    stop = messages(st)[-1]
    assert stop["event"] == "stop" and stop["meter_stop_wh"] == 1007 and not stop["estimated"]
    m.live = False
    hal = plug_and_charge(board, clk)
    hal.ev = "A"
    clk.run(5000)
    assert st.sessions.journal.seq == 3
    clk.run(6000)
    stop = messages(st)[-1]
    assert stop["event"] == "stop" and stop["estimated"] and stop["meter_stop_wh"] == 1007


def test_without_acknowledgements_plug_and_charge_never_stops(tmp_path, monkeypatch):
    """session_ack off (or no broker): the newest records are kept, never a refusal.
    Break: the outbox bound applied anyway -> the third session is refused."""
    monkeypatch.setattr(journals, "OUTBOX_MAX", 4)
    for cfg in ({"session_ack": False}, {"mqtt.host": ""}):
        st, board, clk = boot(tmp_path / str(len(cfg)) / list(cfg)[0], meter=Meter(), **cfg)
        hal = board.connectors[0]
        for _ in range(4):
            plug_and_charge(board, clk)
            assert hal.contactor.on
            hal.ev = "A"
            clk.run(100)
        j = st.sessions.journal
        assert j.seq == 8 and [e[0] for e in j.outbox] == [7, 8]


def test_an_ev_drawing_over_the_offer_is_stopped_overcurrentfault(tmp_path):
    """Over the offer + 5 A for more than 6 s (IEC's 5 s to follow, plus a poll): contactor
    open, OverCurrentFailure, the session stops with OvercurrentFault. Within 5 s, or within
    the margin, nothing. Break: no over-current check -> the EV charges on."""
    m = Meter(wh=0, p_w=11000)
    st, board, clk = boot(tmp_path, meter=m)
    hal = plug_and_charge(board, clk)
    c = st.connectors[0]
    assert c.offered_a == 32.0
    m.reading = ([230.0] * 3, [36.5, 36.5, 36.5], 25000, 0, 50.0)  # within 32 + 5 A
    clk.run(10_000)
    assert hal.contactor.on and c.fault is None
    m.reading = ([230.0] * 3, [37.5, 30.0, 30.0], 25000, 0, 50.0)  # over on one phase
    clk.run(5500)
    assert hal.contactor.on and c.fault is None  # the EV may take its 5 s
    clk.run(1000)
    assert not hal.contactor.on and c.fault == "OverCurrentFailure"
    clk.run(100)
    stop = messages(st)[-1]
    assert stop["event"] == "stop" and stop["reason"] == "OvercurrentFault"


def test_cost_cap_stops_out_of_credit_and_the_start_tariff_applies(tmp_path):
    """max_cost_millis: LocalOutOfCredit once the running cost (with the next poll's energy)
    reaches the cap. A tariff changed during the session does not apply to it. Break: the
    session takes the new tariff -> its cost is computed at 70000 millis/kWh."""
    m = Meter(wh=0, p_w=3600)
    st, board, clk = boot(tmp_path, meter=m, auth_mode="remote")
    assert cmd(st, "set_tariff", currency="EUR", energy_millis_per_kwh=35000,
               fee_millis=1000)["ok"]
    assert cmd(st, "start", connector=1, id_tag="APP", max_cost_millis=2000)["ok"]
    hal = plug_and_charge(board, clk)
    assert cmd(st, "set_tariff", currency="EUR", energy_millis_per_kwh=70000)["ok"]
    for _ in range(100):  # 1 Wh a second: 35 millis a second at the session's tariff
        m.wh += 1
        m.read()
        clk.run(1000)
        if hal.pilot.mode != "pwm":
            break
    assert hal.pilot.mode == "+12"
    hal.ev = "B"
    clk.run(100)
    stop = messages(st)[-1]
    assert stop["reason"] == "LocalOutOfCredit"
    # 1000 fee + 35 per Wh reaches 2000 at 28.6 Wh: stopped at the reading before
    assert stop["energy_wh"] == 28, stop
    assert stop["cost"]["energy_millis"] == (28 * 35000 + 500) // 1000 == 980
    assert stop["cost"]["total_millis"] == 1980 <= 2000


def test_idle_time_is_billed_beyond_the_grace(tmp_path):
    """Idle: current offered, the EV draws nothing, after it drew. Break: idle counted while
    the EV draws -> idle_s near the whole session."""
    m = Meter(wh=0, p_w=7000)
    st, board, clk = boot(tmp_path, meter=m)
    assert cmd(st, "set_tariff", currency="EUR", idle_millis_per_h=3600,
               idle_grace_s=10)["ok"]
    hal = plug_and_charge(board, clk)
    clk.run(20_000)  # drawing: not idle
    m.p_w = 0
    m.read()
    clk.run(30_000)  # the EV is full and stays plugged in
    hal.ev = "A"
    clk.run(100)
    stop = messages(st)[-1]
    assert 29 <= stop["idle_s"] <= 31, stop
    assert stop["cost"]["idle_millis"] == stop["idle_s"] - 10  # 1 milli per s beyond grace


def test_without_acknowledgements_every_message_is_still_sent_once(tmp_path, monkeypatch):
    """Letting the oldest go must not make the publisher skip the next new one. Break: the
    publishing cursor not moved back when the oldest is dropped -> a message never sent."""
    monkeypatch.setattr(journals, "OUTBOX_MAX", 4)
    st, board, clk = boot(tmp_path, meter=Meter(), session_ack=False)
    sent = []

    def send(p):
        sent.append(json.loads(p)["seq"])
        return True

    st.sessions.rewind()  # connected
    hal = board.connectors[0]
    for _ in range(4):
        plug_and_charge(board, clk)
        st.sessions.publish(send)
        hal.ev = "A"
        clk.run(100)
        st.sessions.publish(send)
    assert sent == list(range(1, 9))


def test_an_acknowledgement_does_not_make_the_publisher_skip_a_message(tmp_path):
    """Break: the cursor not moved back when an older message is acknowledged -> the next
    new message is not sent until a reconnect."""
    st, board, clk = boot(tmp_path, meter=Meter())
    sent = []

    def send(p):
        sent.append(json.loads(p)["seq"])
        return True

    st.sessions.rewind()
    hal = plug_and_charge(board, clk)
    hal.ev = "A"
    clk.run(100)
    st.sessions.publish(send)
    assert sent == [1, 2]
    assert st.sessions.on_ack(b'{"seq":1}') == "ok"
    plug_and_charge(board, clk)
    st.sessions.publish(send)
    assert sent == [1, 2, 3]
