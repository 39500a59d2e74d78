"""A flash that fails (full, or worn out) on CPython with a fake board: no session starts
that cannot be recorded, no seq is lost, a running session's stop waits for the flash, and
charging itself is never held up by it."""

from test_sessions import Meter, boot

from evse.journal import Journal
from evse.station import Station
from fakes import Clock, FakeBoard, plug_and_charge
from fakes import session_messages as messages


def events(st):
    out = []
    while st.events.queued():
        e = st.events.pop()
        out.append((e[1], e[2]))
    return out


def test_no_session_starts_while_the_flash_refuses_its_record(tmp_path):
    """Break: write the start after the session is set up (or give out the seq first)."""
    st, board, clk = boot(tmp_path, meter=Meter(p_w=7000))
    events(st)
    board.flash_full = True
    hal = plug_and_charge(board, clk)
    assert board.flash_refused >= 1  # the station tried to record the start
    assert ("StorageFailure", 1) in events(st)
    assert not hal.contactor.on and st.sessions.cur[0] is None
    assert st.sessions.journal.seq == 0 and not st.sessions.journal.outbox
    tried = board.flash_refused
    clk.run(5_000)
    assert board.flash_refused == tried  # no write every loop: it waits before trying again
    clk.run(6_000)
    assert board.flash_refused == tried + 1  # ... and then tries again
    board.flash_full = False
    clk.run(11_000)
    assert hal.contactor.on and st.sessions.cur[0] is not None
    assert ("StorageRestored", 0) in events(st)
    assert [(m["event"], m["seq"]) for m in messages(st)] == [("start", 1)]


def test_a_stop_the_flash_refuses_is_written_once_it_works(tmp_path):
    """Break: clear the running session before its stop is on flash."""
    m = Meter(wh=200000, p_w=7000)
    st, board, clk = boot(tmp_path, meter=m)
    hal = plug_and_charge(board, clk)
    assert hal.contactor.on
    board.flash_full = True
    m.wh += 50
    m.read()
    hal.ev = "A"
    clk.run(200)
    assert not hal.contactor.on  # safety never waits for the flash
    assert board.flash_refused >= 1 and st.sessions.cur[0] is not None
    assert [x["event"] for x in messages(st)] == ["start"]
    board.flash_full = False
    clk.run(11_000)
    msgs = messages(st)
    assert [(x["event"], x["seq"]) for x in msgs] == [("start", 1), ("stop", 2)]
    assert msgs[1]["reason"] == "EVDisconnected" and msgs[1]["energy_wh"] == 50
    assert st.sessions.cur[0] is None
    # the journal on flash says the same after a reboot
    j = Journal(st.store)
    j.load()
    assert j.seq == 2 and not j.open and j.bad == 0


def test_a_failed_write_that_left_a_prefix_costs_only_itself(tmp_path):
    """A filesystem that keeps part of a failed write (not littlefs): the next record is
    not glued to the torn one. Break: no newline after a torn prefix."""
    st, board, clk = boot(tmp_path, meter=Meter(p_w=7000))
    board.flash_full = True
    board.flash_prefix = 25
    hal = plug_and_charge(board, clk)
    assert board.flash_refused >= 1 and not hal.contactor.on
    board.flash_full = False
    clk.run(11_000)
    assert hal.contactor.on
    hal.ev = "A"
    clk.run(200)
    assert [(x["event"], x["seq"]) for x in messages(st)] == [("start", 1), ("stop", 2)]
    j = Journal(st.store)
    j.load()
    assert j.bad == 1  # the prefix, skipped
    assert j.seq == 2 and [e[0] for e in j.outbox] == [1, 2]


def test_a_reboot_while_the_flash_fails_leaves_the_session_to_the_next_boot(tmp_path):
    """The stop cannot be written before the reset: the start is on flash, so the next boot
    closes the session (PowerLoss) with the meter's reading then."""
    m = Meter(wh=300000, p_w=7000)
    st, board, clk = boot(tmp_path, meter=m)
    plug_and_charge(board, clk)
    board.flash_full = True
    st.sessions.finish(clk.now, "Reboot")
    assert board.flash_refused >= 1 and st.sessions.cur[0] is None
    board.flash_full = False
    m2 = Meter(wh=300040)  # the power comes back: a new Station on the same flash
    st2 = Station(FakeBoard(board.fs))
    st2.metering.meters[0] = m2
    m2.clk = Clock(st2)
    m2.clk.run(200)
    msgs = messages(st2)
    assert [(x["event"], x["seq"]) for x in msgs] == [("start", 1), ("stop", 2)]
    assert msgs[1]["reason"] == "PowerLoss" and msgs[1]["energy_wh"] == 40


def test_an_ack_the_flash_refuses_leaves_the_message_to_be_sent_again(tmp_path):
    st, board, clk = boot(tmp_path, meter=Meter(p_w=7000))
    plug_and_charge(board, clk)
    board.flash_full = True
    assert st.sessions.on_ack(b'{"seq":1}') == "bad"
    assert board.flash_refused >= 1
    assert [e[0] for e in st.sessions.journal.outbox] == [1]
    board.flash_full = False
    assert st.sessions.on_ack(b'{"seq":1}') == "ok"
    assert not st.sessions.journal.outbox

