"""The authorization pipeline on CPython (evse.auth): local list, cache, the backend's
answer within auth_timeout_s, the offline policies, stopping by the same card or its group,
remote start, and the connection timeout."""

import json

import fakes
from fakes import cmd, plug_and_charge, session_messages


def boot(path, online=True, connectors=1, **cfg):
    cfg.setdefault("auth_mode", "rfid+remote")
    st, board, clk = fakes.boot(path, connectors, **cfg)
    st.auth.online = online
    return st, board, clk


plug = plug_and_charge


def codes(st):
    return [(e[1], e[3]) for e in st.events._q]


def requests(st):
    return [json.loads(p) for p in st.auth.out]


def answer(st, rid, status, **kw):
    kw.update(rid=rid, status=status)
    st.auth.on_res(json.dumps(kw).encode())


def session(st):
    return st.sessions.cur[0]


LIST = [{"id_tag": "04A1B2C3", "status": "Accepted"},
        {"id_tag": "0BADC0DE", "status": "Blocked"},
        {"id_tag": "AA000001", "status": "Accepted", "group": "FLEET"},
        {"id_tag": "AA000002", "status": "Accepted", "group": "FLEET"}]


def test_local_list_card_charges_and_a_blocked_one_is_refused(tmp_path):
    """Break: list not consulted first (goes to the backend) -> no session at once."""
    st, board, clk = boot(tmp_path)
    assert cmd(st, "auth_list", version=1, mode="full", entries=LIST)["ok"]
    hal = plug(board, clk)
    assert session(st) is None and hal.pilot.mode == "+12"  # rfid: nobody authorized yet
    st.auth.tap("0BADC0DE")
    clk.run(400)
    assert session(st) is None and ("AuthRefused", "0BADC0DE Blocked") in codes(st)
    st.auth.tap("04A1B2C3")
    clk.run(400)
    s = session(st)
    assert s is not None and s.auth == "local_list" and s.id_tag == "04A1B2C3"
    assert hal.contactor.on and not st.auth.out  # no backend round trip


def test_backend_accepts_an_unknown_card_then_it_is_cached(tmp_path):
    st, board, clk = boot(tmp_path)
    hal = plug(board, clk)
    st.auth.tap("11223344")
    req = requests(st)
    assert req and req[-1]["id_tag"] == "11223344" and req[-1]["connector"] == 1
    clk.run(500)
    assert session(st) is None
    answer(st, req[-1]["rid"], "Accepted", max_wh=5000, max_cost_millis=None)
    clk.run(400)
    s = session(st)
    assert s.auth == "backend" and s.max_wh == 5000 and hal.contactor.on
    # unplug, plug again: the cache answers at once, and the backend is asked to confirm
    hal.ev = "A"
    clk.run(100)
    st.auth.out.clear()
    plug(board, clk)
    st.auth.tap("11223344")
    clk.run(400)
    assert session(st).auth == "cache" and hal.contactor.on
    verify = requests(st)[-1]
    answer(st, verify["rid"], "Blocked")  # the backend changed its mind: DeAuthorized
    clk.run(50)
    assert hal.pilot.mode == "+12"
    hal.ev = "B"
    clk.run(100)
    last = session_messages(st)[-1]
    assert last["event"] == "stop" and last["reason"] == "DeAuthorized"


def test_backend_refusal_and_unknown_rid(tmp_path):
    st, board, clk = boot(tmp_path)
    plug(board, clk)
    st.auth.tap("55667788")
    rid = requests(st)[-1]["rid"]
    answer(st, "nope", "Accepted")  # a rid never asked: ignored and counted
    st.auth.on_res(b"{garbage")
    st.auth.on_res(b'{"rid":"x","status":"Maybe"}')
    clk.run(400)
    assert session(st) is None and st.auth.res_unknown == 3
    answer(st, rid, "Invalid")
    clk.run(400)
    assert session(st) is None and ("AuthRefused", "55667788 Invalid") in codes(st)


def test_backend_silent_refuses_unless_offline_unknown(tmp_path):
    """Break: no timeout -> the tap waits forever; offline_unknown ignored -> no session."""
    st, board, clk = boot(tmp_path, auth_timeout_s=2)
    plug(board, clk)
    st.auth.tap("99999999")
    clk.run(2500)
    assert session(st) is None
    assert any(c == "AuthTimeout" for c, _ in codes(st))
    assert ("AuthRefused", "99999999 Offline") in codes(st)

    st, board, clk = boot(tmp_path / "b", auth_timeout_s=2, **{"auth.offline_unknown": True})
    hal = plug(board, clk)
    st.auth.tap("99999999")
    rid = requests(st)[-1]["rid"]
    clk.run(2500)
    s = session(st)
    assert s is not None and s.auth == "offline"
    clk.run(400)
    assert hal.contactor.on
    answer(st, rid, "Invalid")  # late, and invalid: the session is stopped
    clk.run(50)
    assert hal.pilot.mode == "+12" and st.sessions.reason[0] == "DeAuthorized"


def test_offline_policies(tmp_path):
    st, board, clk = boot(tmp_path, online=False)
    assert cmd(st, "auth_list", version=1, mode="full", entries=LIST)["ok"]
    plug(board, clk)
    st.auth.tap("12345678")  # unknown, offline, offline_unknown off
    clk.run(100)
    assert session(st) is None and not st.auth.out[:0]
    assert ("AuthRefused", "12345678 Offline") in codes(st)
    st.auth.tap("04A1B2C3")  # on the list: offline_local (default on)
    clk.run(400)
    assert session(st).auth == "local_list"

    st, board, clk = boot(tmp_path / "b", online=False, **{"auth.offline_local": False})
    assert cmd(st, "auth_list", version=1, mode="full", entries=LIST)["ok"]
    plug(board, clk)
    st.auth.tap("04A1B2C3")
    clk.run(400)
    assert session(st) is None


def test_same_card_or_group_stops_another_card_is_ignored(tmp_path):
    st, board, clk = boot(tmp_path)
    assert cmd(st, "auth_list", version=1, mode="full", entries=LIST)["ok"]
    hal = plug(board, clk)
    st.auth.tap("AA000001")
    clk.run(400)
    assert session(st).group == "FLEET" and hal.contactor.on
    st.auth.tap("04A1B2C3")  # another card: no free connector, ignored
    clk.run(50)
    assert hal.pilot.mode == "pwm"
    assert any(c == "TagIgnored" and d.startswith("04A1B2C3") for c, d in codes(st))
    st.auth.tap("AA000002")  # same group: stops it
    clk.run(50)
    assert hal.pilot.mode == "+12" and st.sessions.reason[0] == "Local"
    hal.ev = "B"
    clk.run(100)
    assert session(st) is None
    # the same card stops its own session
    st.auth.tap("04A1B2C3")
    clk.run(400)
    assert session(st).id_tag == "04A1B2C3"
    st.auth.tap("04A1B2C3")
    clk.run(50)
    last = session_messages(st)[-1]
    assert last["event"] == "stop" and last["id_tag"] == "04A1B2C3" and last["reason"] == "Local"


def test_tap_before_plug_in_and_the_connection_timeout(tmp_path):
    st, board, clk = boot(tmp_path, connection_timeout_s=10)
    assert cmd(st, "auth_list", version=1, mode="full", entries=LIST)["ok"]
    st.auth.tap("04A1B2C3")
    clk.run(5000)
    plug(board, clk)
    assert session(st).id_tag == "04A1B2C3"
    board.connectors[0].ev = "A"
    clk.run(200)
    st.auth.tap("04A1B2C3")
    clk.run(11_000)
    assert ("AuthorizationExpired", "no EV plugged in within connection_timeout_s") in \
        [(c, d) for c, d in codes(st)]
    plug(board, clk)
    assert session(st) is None


def test_modes(tmp_path):
    st, board, clk = boot(tmp_path, auth_mode="free")
    st.auth.tap("04A1B2C3")
    assert any(c == "TagIgnored" for c, _ in codes(st))
    st, board, clk = boot(tmp_path / "b", auth_mode="rfid")
    r = cmd(st, "start", connector=1, id_tag="APP")
    assert r["error"] == "not_allowed"
    st, board, clk = boot(tmp_path / "c", auth_mode="remote")
    assert cmd(st, "auth_list", version=1, mode="full", entries=LIST)["ok"]
    plug(board, clk)
    st.auth.tap("04A1B2C3")
    clk.run(400)
    assert session(st) is None
    board.connectors[0].rcd = True
    clk.run(100)
    r = cmd(st, "start", connector=1, id_tag="APP")
    assert r["error"] == "not_allowed" and "faulted" in r["detail"]


def test_auth_list_refused_whole_keeps_the_old_one(tmp_path):
    st, board, clk = boot(tmp_path)
    assert cmd(st, "auth_list", version=1, mode="full", entries=LIST)["ok"]
    r = cmd(st, "auth_list", version=2, mode="diff",
            entries=[{"id_tag": "FFFF0001", "status": "Accepted"},
                     {"id_tag": "x" * 21, "status": "Accepted"}])
    assert not r["ok"] and r["error"] == "bad_arg"
    assert st.auth.list.version == 1 and st.auth.list.lookup("FFFF0001") is None
    r = cmd(st, "auth_list", version=2, mode="diff",
            entries=[{"id_tag": "0BADC0DE", "status": None}])
    assert r["ok"] and r["data"] == {"version": 2, "entries": 3}


def test_a_card_before_plug_in_goes_to_the_connector_the_ev_plugs_into(tmp_path):
    """Two free connectors: the card is for whichever an EV plugs into first. Break: the
    first free connector takes it -> connector 2's EV gets nothing."""
    st, board, clk = boot(tmp_path, connectors=2)
    assert cmd(st, "auth_list", version=1, mode="full", entries=LIST)["ok"]
    for first, second in ((1, 0), (0, 1)):
        st.auth.tap("04A1B2C3")
        clk.run(2000)
        hal = plug(board, clk, first)
        s = st.sessions.cur[first]
        assert s is not None and s.id_tag == "04A1B2C3", first
        assert hal.contactor.on and st.sessions.cur[second] is None
        plug(board, clk, second)
        assert st.sessions.cur[second] is None  # one card, one session
        for h in board.connectors:
            h.ev = "A"
        clk.run(200)


def test_stop_on_invalid_off_lets_the_session_go_on(tmp_path):
    st, board, clk = boot(tmp_path, auth_timeout_s=2,
                          **{"auth.offline_unknown": True, "auth.stop_on_invalid": False})
    hal = plug(board, clk)
    st.auth.tap("99999999")
    rid = requests(st)[-1]["rid"]
    clk.run(3000)
    assert session(st).auth == "offline" and hal.contactor.on
    answer(st, rid, "Invalid")
    clk.run(1000)
    assert hal.contactor.on and st.sessions.reason[0] is None
    assert ("AuthRefused", "99999999 Invalid") in codes(st)
