"""The simulator's control port takes bad input as the firmware's API does: a clear error
naming the argument, and the world unchanged (docs/simulator.md, Control port)."""

import json

import pytest

from simctl import Station

BAD = [
    ({"op": "ev", "max_a": float("inf")}, "max_a must be"),
    ({"op": "ev", "max_a": float("nan")}, "max_a must be"),
    ({"op": "ev", "respond_s": 1e308}, "respond_s must be"),
    ({"op": "plug", "cable_a": [13]}, "cable_a must be"),
    ({"op": "plug", "cable_a": {"a": 1}}, "cable_a must be"),
    ({"op": "plug", "cable_a": True}, "cable_a must be"),
    ({"op": "tap", "uid": "04A1B2C3", "hold_s": 1e308}, "hold_s must be"),
    ({"op": "grid", "i": [1, 2, float("nan")]}, "i must be"),
    ({"op": "meter", "speed": 5, "energy_wh": "x"}, "energy_wh must be"),
    ({"op": "meter", "speed": 5, "energy_wh": 10**30}, "energy_wh must be"),
    ({"op": "meter", "speed": 5, "connector": 9}, "bad connector"),
    ({"op": "stats", "reset": "yes"}, "reset must be a boolean"),
]


@pytest.fixture(scope="module")
def st():
    s = Station(config=['mqtt.host=""'])
    yield s
    s.stop()


@pytest.mark.parametrize("req,error", BAD, ids=[json.dumps(r)[:40] for r, _ in BAD])
def test_bad_input_is_refused_and_changes_nothing(st, req, error):
    """Break: the old checks (a list as cable_a closed the connection, NaN/inf accepted, a
    valid speed applied before energy_wh was refused)."""
    before = st.op("get")
    stats = st.op("stats")
    r = st.ctl.raw(json.dumps(req) + "\n")
    assert r["ok"] is False and error in r["error"], r
    after = st.op("get")
    for k in ("plugged", "energy_wh", "ev_i", "cp"):
        assert after[k] == before[k], (k, before, after)
    assert st.op("stats")["samples"] >= stats["samples"]  # not reset
    assert st.op("meter", speed=1.0)["ok"]  # still answering on the same connection


def test_the_sim_meter_ignores_a_short_read_frame_with_a_good_crc():
    """A cut or noisy frame may still pass the CRC: the simulated slave must stay silent,
    not crash the line. Break: no length check -> IndexError in the world's thread."""
    import simmeter
    from simworld import World

    line = simmeter.Line(World())
    short = simmeter.with_crc(bytes((1, 4, 0)))  # 5 bytes: slave, function, one byte
    assert line.answer(short) is None
    good = simmeter.with_crc(bytes((1, 4, 0, 0, 0, 2)))
    assert line.answer(good)[:3] == bytes((1, 4, 4))  # a real request still answered
