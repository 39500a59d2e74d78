"""The site-run host tools: metrics on hand-made recordings (answers worked out by hand in
the comments), the grid simulator's per-phase sums on a real mosquitto, the link proxy's cut,
the plot, and the runner's station configuration read back by the firmware's own parser."""

import importlib.util
import json
import os
import socket
import threading
import time

import paho.mqtt.client as mqtt
import pytest
import sitemetrics as sm
from gridsim import Bell, Constant, Csv, DumbLoad, Feed, GridSim, Steps
from linkproxy import LinkProxy

from broker import Broker
from evse.config import parse_overrides
from mqttc import Collector

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _site_module():
    # tools/site.py by path: `import site` would give Python's own site module.
    spec = importlib.util.spec_from_file_location(
        "site_runner", os.path.join(ROOT, "tools", "site.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# -- hand-made recordings ---------------------------------------------------------------------


def _meta(units, fuse_a=63, margin_a=1.0, mode="grid"):
    return {"type": "meta", "preset": "t", "mode": mode, "fuse_a": fuse_a,
            "margin_a": margin_a, "min_grid_a": 0, "managed": True,
            "units": [{"id": i, "c": 1, "phase_map": pm, "weight": w, "max_current_a": 32.0}
                      for i, pm, w in units]}


def _unit(sid, i, phases=3, max_a=32, wants=True, link=True):
    ev_i = [i, i, i] if phases == 3 else [i, 0.0, 0.0]
    return {"id": sid, "c": 1, "ev_i": ev_i, "offered_a": i, "cp": "C" if wants else "B",
            "plugged": wants, "max_a": max_a, "phases": phases, "link": link, "feed": True}


def _sample(t, grid, units=(), ev=(0.0, 0.0, 0.0), base=None, pv=(0.0, 0.0, 0.0),
            dumb=(0.0, 0.0, 0.0)):
    base = base if base is not None else [g - e for g, e in zip(grid, ev)]
    return {"type": "sample", "t": t, "grid": list(grid), "ev": list(ev), "base": list(base),
            "pv": list(pv), "dumb": list(dumb), "units": list(units)}


def test_overload_seconds_per_action_and_longest_run():
    # fuse 10 A; samples 1 s apart, each held until the next:
    # t      0  1     2   3  4     5     6     7     8    9
    # peak   5  10.9  12  5  10.5  11.5  11.5  11.5  -12  5   (t=8: export counts too)
    # >10 A: t=1,2,4..8 = 7 s; >11 A: t=2,5..8 = 5 s, longest 5..9 = 4 s from t=5.
    peaks = [5, 10.9, 12, 5, 10.5, 11.5, 11.5, 11.5, -12, 5]
    recs = [_meta([], fuse_a=10)]
    recs += [_sample(t, [p, 1.0, 2.0]) for t, p in enumerate(peaks)]
    recs += [{"type": "action", "t": 0, "do": "base", "i": [5, 1, 2]},
             {"type": "action", "t": 4, "do": "plug", "id": "S1"},
             {"type": "action", "t": 4, "do": "plug", "id": "S2"}]
    _, samples, _ = sm.split(recs)
    assert sm.over_s(samples, 10, 1.0) == pytest.approx(7.0)
    assert sm.over_s(samples, 10, 1.10) == pytest.approx(5.0)
    assert sm.longest_over(samples, 10, 1.10) == (pytest.approx(4.0), 5)
    # Per action until the next one; the two plugs at t=4 share one window: [0, 4) holds
    # t=1, 2 (2 s); [4, end) holds t=4..8 (5 s).
    assert sm.over_after_actions(recs) == [
        {"t": 0, "what": "base", "over_s": 2.0},
        {"t": 4, "what": "plug S1+plug S2", "over_s": 5.0}]
    m = sm.compute(recs)
    assert m["peak_pct"] == 120.0 and m["longest_over_110_s"] == 4.0


def test_weighted_shares_with_phase_map_single_phase_and_a_demand_cap():
    # fuse 63, margin 1, other load [12, 8, 10] -> room [50, 54, 52] per phase.
    # A: 3-phase w1; B: 3-phase w2; C: 1-phase w1 on connector L1 = grid L3 (map 312);
    # D: 3-phase w1 that takes at most 8 A.  At level x: L3 carries A+B+C+D = 5x, so D
    # reaches its 8 A first (L3 40 A). Then L3: 8 + x + 2x + x = 52 -> x = 11:
    # A 11, B 22, C 11, D 8; L3 exactly full.
    meta = _meta([("A", "123", 1), ("B", "231", 2), ("C", "312", 1), ("D", "123", 1)])
    units = [_unit("A", 3), _unit("B", 5), _unit("C", 7, phases=1), _unit("D", 2, max_a=8)]
    ev = [3 + 5 + 2, 3 + 5 + 2, 3 + 5 + 7 + 2]
    s = _sample(0, [12 + ev[0], 8 + ev[1], 10 + ev[2]], units, ev=ev)
    sh, scarce, constrained = sm.shares(s, meta)
    assert sh == {("A", 1): pytest.approx(11), ("B", 1): pytest.approx(22),
                  ("C", 1): pytest.approx(11), ("D", 1): pytest.approx(8)}
    assert not scarce
    assert not constrained  # D gets all it wants
    # A station whose link is cut is load the others live with: A's 3 A comes off every
    # phase's room and A gets no share. L3: 3 + 8 + 2x + x = 52 -> x = 41/3.
    units[0]["link"] = False
    sh, _, _ = sm.shares(s, meta)
    assert ("A", 1) not in sh
    assert sh[("B", 1)] == pytest.approx(82 / 3) and sh[("C", 1)] == pytest.approx(41 / 3)
    # Solar mode: room is the export only. PV -20 A per phase, other load 12/8/10 ->
    # export 8/12/10 A; B (w2) and C (L3) alone: L3 2x + x = 10 -> C 10/3 < 6 A: scarce.
    meta_solar = dict(meta, mode="solar")
    s2 = _sample(0, [-8, -12, -10], [_unit("B", 0), _unit("C", 0, phases=1)],
                 pv=[-20, -20, -20])
    sh, scarce, _ = sm.shares(s2, meta_solar)
    assert sh[("C", 1)] == pytest.approx(10 / 3) and scarce
    # Smart mode adds min_grid_a (6 A) of import: L3 room 16 -> C 16/3, B 32/3.
    sh, _, _ = sm.shares(s2, dict(meta, mode="smart", min_grid_a=6.0))
    assert sh[("C", 1)] == pytest.approx(16 / 3) and sh[("B", 1)] == pytest.approx(32 / 3)


def _two_units(t, a_i, b_i, other=32.0):
    # A w1 and B w2, both 3-phase on 123; room = 63 - 1 - other; at other = 32: A 10, B 20.
    ev = [a_i + b_i] * 3
    return _sample(t, [other + e for e in ev], [_unit("A", a_i), _unit("B", b_i)], ev=ev)


def test_fairness_over_steady_constrained_samples_only():
    meta = _meta([("A", "123", 1), ("B", "123", 2)])
    recs = [meta, {"type": "action", "t": 0, "do": "plug", "id": "B"}]
    # t 0..19: within 20 s of the action, ignored however wrong. t 20..29: A 11 (share 10)
    # and B 19 (share 20), except t=25 where other load 50 leaves 12 A: A 4, B 8, below
    # 6 A, so no single fair answer: skipped. 9 samples: A +1, B -1.
    for t in range(30):
        if t < 20:
            recs.append(_two_units(t, 30, 0))
        elif t == 25:
            recs.append(_two_units(t, 11, 19, other=50))
        else:
            recs.append(_two_units(t, 11, 19))
    f = sm.fairness(recs, settle_s=20)
    assert f["samples"] == 9
    assert f["units"]["A/1"] == {"mean_dev_a": 1.0, "mean_abs_dev_a": 1.0,
                                 "max_abs_dev_a": 1.0, "samples": 9}
    assert f["units"]["B/1"]["mean_dev_a"] == -1.0
    assert f["worst_mean_abs_dev_a"] == 1.0


def test_starved_counts_an_ev_left_paused_with_room_for_it():
    # A wants current and draws 0 throughout; B draws its share (samples 1 s apart, held).
    # One sample at t=12 ends the stretch: stretches 0..12 (12 s) and 13..29 (16 s); with
    # 10 s grace, 2 + 6 = 8 s count, the longest is 16 s.
    want = {"A/1": {"over_grace_s": 8.0, "longest_s": 16.0}}
    # (1) A w1, B w2; at t=12 other load 42.5 leaves room 19.5: A 6.5 A, B 13 A. 6.5 A is
    # too little for a paused station to resume (7 A): not starved then.
    other = {12: 42.5}
    recs = [_meta([("A", "123", 1), ("B", "123", 2)])]
    recs += [_two_units(t, 0, 20, other=other.get(t, 32.0)) for t in range(30)]
    assert sm.starved(recs, grace_s=10) == want
    assert sm.starved(recs, grace_s=30) == {}
    # (2) A w2, B w1 (at other load 32: A 20, B 10); at t=12 other load 47 leaves room 15:
    # A 10 A but B 5 A, below 6 A: the stations must take turns, so A waiting is right.
    other = {12: 47.0}
    recs = [_meta([("A", "123", 2), ("B", "123", 1)])]
    recs += [_two_units(t, 0, 10, other=other.get(t, 32.0)) for t in range(30)]
    assert sm.starved(recs, grace_s=10) == want


def test_convergence_time_after_an_arrival():
    meta = _meta([("A", "123", 1), ("B", "123", 2)])
    # B arrives at t=0 (share 20, A's 10). B: 0 0 5 12 19.5 20.5 20 18 then 20 from t=8:
    # within 1 A from t=4, broken at t=7 (18), within again from t=8 and still at t=13
    # (5 s held) -> 8 s. A second arrival at t=30 leaves only 2 s before the next action:
    # not converged.
    b = [0, 0, 5, 12, 19.5, 20.5, 20, 18] + [20] * 30
    recs = [meta, {"type": "action", "t": 0, "do": "plug", "id": "B", "request": True},
            {"type": "action", "t": 30, "do": "ev", "id": "A", "request": True},
            {"type": "action", "t": 32, "do": "base", "i": [1, 1, 1]}]
    recs += [_two_units(t, 10, b[t]) for t in range(36)]
    c = sm.convergence(recs, band_a=1.0, hold_s=5.0)
    assert [x["converge_s"] for x in c] == [8.0, None]
    assert c[0]["what"] == "plug B"
    assert "last 1.0 s" in c[1]["why"]


def test_contactor_cycles_per_hour():
    # A 30-minute span; S1 closes twice (4/h), S2 once (2/h); openings do not count.
    recs = [_meta([("S1", "123", 1), ("S2", "123", 1)]), _sample(0, [0, 0, 0]),
            _sample(1800, [0, 0, 0])]
    for t, sid, on in ((10, "S1", True), (20, "S1", False), (30, "S1", True),
                       (40, "S2", True)):
        recs.append({"type": "contactor", "t": t, "id": sid, "c": 1, "on": on})
    assert sm.contactor_cycles(recs) == {"S1/1": {"closes": 2, "per_h": 4.0},
                                         "S2/1": {"closes": 1, "per_h": 2.0}}


def test_pv_share_of_ev_energy():
    # t=0 (held 1 s): PV 30 A in all, base 6 A -> surplus 24 A; EVs 30 A: 24 from PV.
    # t=1 (held 1 s): no PV; EVs 30 A from the grid. t=2: last, held 0.
    # EV 60 A*s, from PV 24 A*s: share 0.4; surplus 24 A*s all used. At 230 V:
    # EV 60*230/3600 = 3.833 Wh, from PV 1.533 Wh, PV 30*230/3600 = 1.917 Wh.
    recs = [_meta([("S1", "123", 1)], mode="solar"),
            _sample(0, [2, 2, 2], ev=[10, 10, 10], base=[2, 2, 2], pv=[-10, -10, -10]),
            _sample(1, [12, 12, 12], ev=[10, 10, 10], base=[2, 2, 2]),
            _sample(2, [12, 12, 12], ev=[10, 10, 10], base=[2, 2, 2])]
    assert sm.pv_share(recs) == {"ev_wh": 3.8, "pv_wh": 1.9, "surplus_wh": 1.5,
                                 "ev_from_pv_wh": 1.5, "ev_pv_share": 0.4,
                                 "surplus_used": 1.0}


# -- the grid simulator on a real broker -----------------------------------------------------


def test_gridsim_publishes_mapped_per_phase_sums_and_cuts_one_feed():
    # What the stations' EVs draw, on each connector's own L1 L2 L3:
    readings = {("S1", 1): [10, 10, 10],   # 3-phase, map 123
                ("S2", 1): [16, 0, 0],     # 1-phase, map 231: connector L1 is grid L2
                ("S3", 1): [6, 6, 6],      # 3-phase, map 312
                ("S3", 2): [8, 0, 0]}      # 1-phase, map 312: connector L1 is grid L3
    # EVs on the grid: S1 [10,10,10] + S2 [0,16,0] + S3 [6,6,6] + [0,0,8] = [16, 32, 24].
    # Base [5, 4, 3]; dumb 16 A 3-phase on; PV bell with 40 A at noon (t=1 of a 0..2 day):
    # grid = [5+16+16-40, 4+16+32-40, 3+16+24-40] = [-3, 12, 3] (L1 exports).
    now = [100.0]
    feeds = [Feed("S1", phase_map="123"), Feed("S2", phase_map="231"),
             Feed("S3", phase_map="312", connectors=2)]
    with Broker(allow_fallback=False) as b:
        col = Collector(b.port, "evse/+/grid")
        gs = GridSim(feeds, broker_port=b.port, ttl_s=10.0, base=Constant([5, 4, 3]),
                     pv=Bell(40, 0, 2, phases=3), dumb=[DumbLoad(16, 3, on=True)],
                     reader=lambda f, c: readings[(f.id, c)], clock=lambda: now[0])
        try:
            now[0] = 101.0
            m = col.mark()
            rnd = gs.step()
            assert rnd["grid"] == [-3.0, 12.0, 3.0] and rnd["ev"] == [16.0, 32.0, 24.0]
            for sid in ("S1", "S2", "S3"):
                msg = col.wait(lambda x, sid=sid: x[0] == "evse/%s/grid" % sid, since=m)
                assert json.loads(msg[1]) == {"i": [-3.0, 12.0, 3.0], "ttl_s": 10}
                # An integer: the firmware refuses "ttl_s":10.0 (evse/balance.check_grid).
                assert b'"ttl_s":10}' in msg[1]
            # Not retained: a reading handed to a station that connects later would count as
            # fresh for ttl_s. A subscriber joining now gets a retained marker (so retained
            # delivery works) and nothing of the grid simulator's.
            mk = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
            mk.connect("127.0.0.1", b.port)
            mk.loop_start()
            mk.publish("evse/marker/grid", b"m", qos=1, retain=True).wait_for_publish(5)
            late = Collector(b.port, "evse/+/grid")
            late.wait(lambda x: x[0] == "evse/marker/grid" and x[2], since=0)
            time.sleep(0.3)
            assert [x[0] for x in late.after(0)] == ["evse/marker/grid"]
            late.stop()
            mk.loop_stop()
            mk.disconnect()
            # Cut S2's feed: the next round reaches S1 and S3 (seen first), not S2.
            gs.cut("S2")
            readings[("S1", 1)] = [0, 0, 0]
            m = col.mark()
            gs.step()
            col.wait(lambda x: x[0] == "evse/S3/grid" and json.loads(x[1])["i"][0] == -13,
                     since=m)
            col.wait(lambda x: x[0] == "evse/S1/grid", since=m)
            time.sleep(0.3)
            assert [x for x in col.after(m) if x[0] == "evse/S2/grid"] == []
            gs.restore("S2")
            m = col.mark()
            gs.step()
            col.wait(lambda x: x[0] == "evse/S2/grid", since=m)
        finally:
            gs.stop()
            col.stop()


def test_base_load_profiles_steps_and_csv(tmp_path):
    st = Steps([(10, [20, 20, 20]), (5, [10, 0, 0])], before=[1, 2, 3])
    assert st(0) == [1, 2, 3] and st(5) == [10, 0, 0] and st(9.9) == [10, 0, 0]
    assert st(10) == [20, 20, 20] and st(1e6) == [20, 20, 20]
    f = tmp_path / "base.csv"
    f.write_text("t_s,L1,L2,L3\n0,10,10,10\n10,20,30,40\n")
    held, lin = Csv(str(f)), Csv(str(f), interpolate=True)
    assert held(5) == [10, 10, 10] and held(10) == [20, 30, 40]
    assert lin(5) == [15, 20, 25] and lin(-1) == [10, 10, 10] and lin(99) == [20, 30, 40]


def test_gridsim_counts_a_dead_station_as_zero_and_keeps_publishing():
    def reader(f, c):
        if f.id == "S2":
            raise OSError("connection refused")
        return [5, 5, 5]

    gs = GridSim([Feed("S1"), Feed("S2", phase_map="231")], reader=reader,
                 base=Constant([1, 2, 3]))
    rnd = gs.step()
    assert rnd["grid"] == [6.0, 7.0, 8.0] and gs.read_errors == 1


# -- the link proxy ---------------------------------------------------------------------------


def _connected_client(port, got):
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    up = threading.Event()
    down = threading.Event()
    c.on_connect = lambda *a: up.set()
    c.on_disconnect = lambda *a: down.set()
    c.on_message = lambda cl, u, msg: got.append(msg.payload)
    c.connect("127.0.0.1", port, keepalive=60)
    c.subscribe("t/x", qos=1)
    c.loop_start()
    assert up.wait(5), "no CONNACK through the proxy"
    return c, down


def test_proxy_cut_drops_the_connection_and_refuses_new_ones():
    with Broker(allow_fallback=False) as b, LinkProxy(b.port) as px:
        got = []
        c, down = _connected_client(px.port, got)
        try:
            pub = Collector(b.port, "none/#")  # a second client straight on the broker
            deadline = time.monotonic() + 5
            while not got and time.monotonic() < deadline:
                pub.c.publish("t/x", b"hello", qos=1)
                time.sleep(0.1)
            assert got and got[0] == b"hello"  # bytes flow both ways through the proxy
            assert px.connections() == 1
            px.cut()
            assert down.wait(5), "the client's connection was not closed by the cut"
            assert px.connections() == 0
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", px.port), timeout=2)
            px.restore()
            s = socket.create_connection(("127.0.0.1", px.port), timeout=2)
            s.close()
            pub.stop()
        finally:
            c.loop_stop()
            c.disconnect()


_CONNECT = bytes([0x10, 13, 0, 4]) + b"MQTT" + bytes([4, 2, 0, 60, 0, 1]) + b"x"  # id "x"
_PINGREQ = bytes([0xC0, 0])


def test_proxy_silent_cut_keeps_the_sockets_and_drops_the_bytes():
    with Broker(allow_fallback=False) as b, LinkProxy(b.port) as px:
        old = socket.create_connection(("127.0.0.1", px.port), timeout=2)
        old.sendall(_CONNECT)
        assert old.recv(4)[:1] == b"\x20"  # CONNACK: the link works before the cut
        px.cut(silent=True)
        old.settimeout(1)
        old.sendall(_PINGREQ)  # a live broker answers PINGRESP at once
        with pytest.raises(socket.timeout):
            old.recv(10)
        new = socket.create_connection(("127.0.0.1", px.port), timeout=1)  # accepted...
        new.sendall(_CONNECT)
        with pytest.raises(socket.timeout):
            new.recv(10)  # ...and never answered
        px.restore()
        for s in (old, new):
            s.settimeout(2)
            assert s.recv(10) == b""  # connections that lived through the cut are closed
            s.close()
        s = socket.create_connection(("127.0.0.1", px.port), timeout=2)
        s.sendall(_CONNECT)
        assert s.recv(4)[:1] == b"\x20"  # CONNACK from the broker once restored
        s.close()


# -- the plot ---------------------------------------------------------------------------------


def test_siteplot_writes_a_png(tmp_path):
    import matplotlib.image
    import siteplot

    recs = [_meta([("A", "123", 1), ("B", "123", 2)]),
            {"type": "action", "t": 0, "do": "plug", "id": "B"},
            {"type": "action", "t": 5, "do": "cut_link", "id": "A"},
            {"type": "action", "t": 9, "do": "restore_link", "id": "A"}]
    recs += [_two_units(t, 10, 2 * t) for t in range(12)]
    png = tmp_path / "run.png"
    siteplot.plot(recs, str(png))
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    img = matplotlib.image.imread(str(png))
    assert img.shape[0] >= 600 and img.shape[1] >= 800
    assert img.std() > 0.05  # lines and text, not a blank canvas


# -- the runner's configuration ---------------------------------------------------------------


def test_station_config_reaches_the_firmware_parser_with_its_types():
    site = _site_module()
    sc = site.preset_grid5()
    assert site.validate(sc) == ["S1", "S2", "S3", "S4", "S5"]
    cfg = parse_overrides(site.station_config(sc, 1, "S2", managed=True))
    assert cfg["station_id"] == "S2"
    assert cfg["site.phase_map"] == "231"  # a string: a bare 231 would parse as a number
    assert cfg["site.fuse_a"] == 63 and cfg["site.mode"] == "grid"
    assert cfg["site.stations"] == 5 and cfg["random_delay_s"] == 2
    assert cfg["site.priority"] == 1
    assert parse_overrides(site.station_config(sc, 4, "S5", True))["site.priority"] == 2
    unmanaged = parse_overrides(site.station_config(sc, 1, "S2", managed=False))
    assert unmanaged == {"station_id": "S2"}


def test_every_preset_is_a_valid_scenario_and_bad_ones_are_refused():
    site = _site_module()
    for name, make in site.PRESETS.items():
        sc = make()
        assert sc["name"] == name
        site.validate(sc)
        assert sc["duration_s"] <= 240  # at most 4 minutes of wall time
    assert {"grid5", "grid5-cut", "grid5-dumb", "grid20", "solar"} <= set(site.PRESETS)
    sc = site.preset_grid5()
    sc["actions"].append({"t": 10, "do": "plug", "station": 6})
    with pytest.raises(ValueError, match="no station 6"):
        site.validate(sc)
    sc = site.preset_grid5()
    sc["stations"][0]["phase_map"] = "113"
    with pytest.raises(ValueError, match="phase_map"):
        site.validate(sc)
    sc = site.preset_grid5()
    sc["actions"].append({"t": 10, "do": "dumb", "on": True})
    with pytest.raises(ValueError, match="no dumb load"):
        site.validate(sc)
