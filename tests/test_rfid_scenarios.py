"""Cards at the simulated MFRC522 on the unix port, with a real mosquitto and a test
backend: the local list, the backend's answers and its silence, stopping by the same card,
4/7/10-byte UIDs, collisions, a card held for seconds, the reader down and back."""

import json
import time

import pytest

from backend import BASE, Backend

LIST = [{"id_tag": "04A1B2C3", "status": "Accepted"},
        {"id_tag": "0BADC0DE", "status": "Blocked"},
        {"id_tag": "AA000001", "status": "Accepted", "group": "FLEET"},
        {"id_tag": "AA000002", "status": "Accepted", "group": "FLEET"}]


@pytest.fixture
def be(tmp_path):
    b = Backend(tmp_path, config=['auth_mode="rfid+remote"', "auth_timeout_s=2"])
    assert b.cmd("auth_list", version=1, mode="full", entries=LIST)["ok"]
    yield b
    b.stop()


def msgs(be, since, sub):
    return [json.loads(p) for t, p, *_ in be.mq.after(since) if t == BASE + "/" + sub]


def wait_msgs(be, since, sub, n=1, timeout=8.0):
    end = time.monotonic() + timeout
    while True:
        got = msgs(be, since, sub)
        if len(got) >= n or time.monotonic() > end:
            return got
        time.sleep(0.05)


def ev_waits(st):
    st.op("plug")
    st.op("ev", request=True, respond_s=0.2)
    time.sleep(0.3)


def test_local_list_card_charges_and_the_same_card_stops(be):
    st = be.st
    ev_waits(st)
    assert not st.op("get")["contactor"]  # rfid: a plugged EV alone gets nothing
    m = be.mark()
    st.op("tap", uid="04A1B2C3", hold_s=0.5)
    start = wait_msgs(be, m, "session")[0]
    assert start["auth"] == "local_list" and start["id_tag"] == "04A1B2C3"
    st.wait_for(lambda s: s["contactor"], timeout=5, what="contactor closed")
    assert not msgs(be, m, "auth/req")  # no round trip for a listed card
    time.sleep(1.0)  # the card has left the field
    st.op("tap", uid="04A1B2C3", hold_s=0.5)
    st.wait_for(lambda s: s["pwm_duty_pct"] is None, timeout=5, what="stopped")
    st.op("ev", request=False)  # the EV answers
    got = wait_msgs(be, m, "session", 2)
    assert got[1]["event"] == "stop" and got[1]["reason"] == "Local", got


def test_a_card_held_for_seconds_taps_once(be):
    """Break: no debounce -> one auth/req per reader poll while the card lies there."""
    st = be.st
    ev_waits(st)
    m = be.mark()
    st.op("tap", uid="11223344", hold_s=2.5)  # 25 reads of the reader
    time.sleep(3.0)
    reqs = wait_msgs(be, m, "auth/req")
    assert len(reqs) == 1 and reqs[0]["id_tag"] == "11223344", reqs


@pytest.mark.parametrize("uid", ["04112233", "04A1B2C3D4E5F6", "0A0B0C0D0E0F10111213"])
def test_uids_of_4_7_and_10_bytes_reach_the_backend_as_sent(be, uid):
    st = be.st
    ev_waits(st)
    m = be.mark()
    st.op("tap", uid=uid)
    req = wait_msgs(be, m, "auth/req")
    assert req and req[0]["id_tag"] == uid and req[0]["connector"] == 1, req
    be.publish(BASE + "/auth/res", {"rid": req[0]["rid"], "status": "Accepted",
                                    "max_wh": 5000})
    start = wait_msgs(be, m, "session")[0]
    assert start["auth"] == "backend" and start["id_tag"] == uid
    st.wait_for(lambda s: s["contactor"], timeout=5, what="contactor closed")


def test_backend_refusal_and_a_blocked_card(be):
    st = be.st
    ev_waits(st)
    m = be.mark()
    st.op("tap", uid="0BADC0DE", hold_s=0.3)
    be.event("AuthRefused", since=m, pred=lambda d: d["detail"] == "0BADC0DE Blocked")
    time.sleep(0.6)  # taken away before the next card is presented
    st.op("tap", uid="55667788")
    req = wait_msgs(be, m, "auth/req")[0]
    be.publish(BASE + "/auth/res", {"rid": req["rid"], "status": "Invalid"})
    be.event("AuthRefused", since=m, pred=lambda d: d["detail"] == "55667788 Invalid")
    time.sleep(0.5)
    assert not msgs(be, m, "session") and not st.op("get")["contactor"]


def test_backend_silent_then_offline_unknown(be):
    st = be.st
    ev_waits(st)
    m = be.mark()
    st.op("tap", uid="99999999")
    be.event("AuthTimeout", since=m, timeout=6)
    be.event("AuthRefused", since=m, pred=lambda d: d["detail"] == "99999999 Offline")
    assert be.cmd("config_set", values={"auth.offline_unknown": True})["ok"]
    time.sleep(1.0)
    m = be.mark()
    st.op("tap", uid="99999999")
    start = wait_msgs(be, m, "session", timeout=8)
    assert start and start[0]["auth"] == "offline", start
    st.wait_for(lambda s: s["contactor"], timeout=5, what="contactor closed")
    # its request is answered late, Invalid: DeAuthorized
    req = msgs(be, m, "auth/req")[-1]
    be.publish(BASE + "/auth/res", {"rid": req["rid"], "status": "Invalid"})
    st.wait_for(lambda s: s["pwm_duty_pct"] is None, timeout=5, what="stopped")
    st.op("ev", request=False)  # the EV answers
    got = wait_msgs(be, m, "session", 2, timeout=10)
    assert got[-1]["event"] == "stop" and got[-1]["reason"] == "DeAuthorized", got


def test_group_card_stops_another_card_is_ignored(be):
    st = be.st
    ev_waits(st)
    m = be.mark()
    st.op("tap", uid="AA000001", hold_s=0.3)
    wait_msgs(be, m, "session")
    time.sleep(1.0)
    st.op("tap", uid="04A1B2C3", hold_s=0.3)
    be.event("TagIgnored", since=m)
    time.sleep(1.0)
    assert st.op("get")["contactor"]
    st.op("tap", uid="AA000002", hold_s=0.3)
    st.wait_for(lambda s: s["pwm_duty_pct"] is None, timeout=5, what="stopped")
    st.op("ev", request=False)  # the EV answers
    got = wait_msgs(be, m, "session", 2)
    assert got[-1]["reason"] == "Local"


def test_collision_never_gives_a_wrong_uid(be):
    """Two or three cards in the field at once: one of them is read, or none; never a mix."""
    st = be.st
    ev_waits(st)
    for uids in (["04A1B2C3", "04A1B2C7"], ["04112233", "04A1B2C3D4E5F6",
                                            "0A0B0C0D0E0F10111213"]):
        m = be.mark()
        st.op("tap", uids=uids, hold_s=1.0)
        time.sleep(1.5)
        ids = [r["id_tag"] for r in msgs(be, m, "auth/req")]
        ids += [s["id_tag"] for s in msgs(be, m, "session")]
        assert all(i in uids for i in ids), (uids, ids)
        if ids:
            print("collision of %d cards: read %s" % (len(uids), ids[0]))
        st.op("unplug")
        time.sleep(1.0)
        ev_waits(st)


def test_reader_down_and_back_charging_by_start_goes_on(be):
    st = be.st
    m = be.mark()
    st.op("fault", kind="reader_down", on=True)
    be.event("ReaderFailure", since=m, timeout=10)
    be.status(lambda c: c["error"] == "ReaderFailure", since=m)
    assert be.cmd("diag")["data"]["auth"]["reader"] == "failed"
    r = be.cmd("start", connector=1, id_tag="APP-1")
    assert r["ok"], r
    ev_waits(st)
    st.wait_for(lambda s: s["contactor"], timeout=5, what="charging without the reader")
    m = be.mark()
    st.op("fault", kind="reader_down", on=False)
    be.event("ReaderRestored", since=m, timeout=70)
    be.status(lambda c: c["error"] is None, since=m)


def test_connection_timeout_on_the_unix_port(tmp_path):
    be = Backend(tmp_path, config=['auth_mode="remote"', "connection_timeout_s=5"])
    try:
        m = be.mark()
        assert be.cmd("start", connector=1, id_tag="APP-2")["ok"]
        be.event("AuthorizationExpired", since=m, timeout=10)
        ev_waits(be.st)
        time.sleep(1.0)
        assert not be.st.op("get")["contactor"] and not msgs(be, m, "session")
    finally:
        be.stop()
