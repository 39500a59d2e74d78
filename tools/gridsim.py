"""Site grid simulator: what a grid meter at the site's connection measures (every station's
real EV current on the grid phase it is wired to, plus base load, PV and dumb loads),
published to every station's `<base>/grid` as `{"i":[L1,L2,L3],"ttl_s":N}`.

The EV currents come from each station's control port (`get` -> `ev_i`): what the EV
physically draws, not what a station reports about itself. A station's `phase_map` ("231")
says which grid phase its connector's L1, L2 and L3 are wired to (connector L1 on grid L2,
L2 on L3, L3 on L1), the same meaning as the firmware's `site.phase_map`.

Library:
    gs = GridSim([Feed("S1", port=7001, phase_map="123"), ...], broker_port=1883,
                 base=Constant([10, 8, 12]), pv=Bell(30, 20, 200), dumb=[DumbLoad(16)])
    gs.start(); ...; gs.set_base([30, 25, 28]); gs.dumb[0].on = True; gs.cut("S3"); gs.stop()

CLI: `tools/gridsim.py --help`.
"""

import argparse
import bisect
import csv
import json
import math
import os
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

# A grid meter reports hundredths of an amp (the SDM630's current registers do too).
_ROUND = 2


def phase_vector(spec):
    """Which grid phases a load feeds: 3 or "123" -> (1, 1, 1); 1 -> (1, 0, 0); "2" -> L2
    only; a 3-list of weights is taken as it is."""
    if isinstance(spec, (list, tuple)):
        if len(spec) != 3:
            raise ValueError("phases must be 3 weights")
        return tuple(float(x) for x in spec)
    if spec in (3, "3"):
        return (1.0, 1.0, 1.0)
    if spec in (1, "1"):
        return (1.0, 0.0, 0.0)
    s = str(spec)
    if not s or any(c not in "123" for c in s):
        raise ValueError("phases must be 1, 3, a string of grid phases ('23') or 3 weights")
    return tuple(1.0 if str(p) in s else 0.0 for p in (1, 2, 3))


def check_phase_map(pm):
    """'123' and its permutations; anything else raises ValueError."""
    if not isinstance(pm, str) or sorted(pm) != ["1", "2", "3"]:
        raise ValueError("phase_map must be a permutation of '123', got %r" % (pm,))
    return pm


def map_phases(ev_i, phase_map):
    """A connector's [L1, L2, L3] currents on the grid's phases."""
    out = [0.0, 0.0, 0.0]
    for k in range(3):
        out[int(phase_map[k]) - 1] += ev_i[k]
    return out


# -- profiles: t (s since start) -> [L1, L2, L3] ---------------------------------------------


class Constant:
    """The same current per phase at all times."""

    def __init__(self, i):
        self.i = [float(x) for x in i]

    def __call__(self, t):
        return list(self.i)


class Steps:
    """Held steps: [(t_s, [L1, L2, L3]), ...]; before the first step, `before` (zeros)."""

    def __init__(self, steps, before=(0.0, 0.0, 0.0)):
        self.steps = sorted((float(t), [float(x) for x in i]) for t, i in steps)
        self.times = [t for t, _ in self.steps]
        self.before = [float(x) for x in before]

    def __call__(self, t):
        k = bisect.bisect_right(self.times, t) - 1
        return list(self.steps[k][1]) if k >= 0 else list(self.before)


class Csv(Steps):
    """A CSV file of rows `t_s,L1,L2,L3` (a header row is skipped): held steps, or linear
    between rows with interpolate=True. Held at the last row after the end."""

    def __init__(self, path, interpolate=False):
        rows = []
        with open(path, newline="") as f:
            for row in csv.reader(f):
                if not row or row[0].strip().startswith("#"):
                    continue
                try:
                    vals = [float(x) for x in row[:4]]
                except ValueError:
                    continue  # the header
                if len(vals) != 4:
                    raise ValueError("%s: a row needs t_s,L1,L2,L3: %r" % (path, row))
                rows.append((vals[0], vals[1:]))
        if not rows:
            raise ValueError("%s: no rows" % path)
        super().__init__(rows, before=rows[0][1] if interpolate else (0.0, 0.0, 0.0))
        self.interpolate = interpolate

    def __call__(self, t):
        if not self.interpolate:
            return super().__call__(t)
        k = bisect.bisect_right(self.times, t) - 1
        if k < 0:
            return list(self.steps[0][1])
        if k >= len(self.steps) - 1:
            return list(self.steps[-1][1])
        (t0, a), (t1, b) = self.steps[k], self.steps[k + 1]
        f = (t - t0) / (t1 - t0) if t1 > t0 else 1.0
        return [x + (y - x) * f for x, y in zip(a, b)]


class Bell:
    """PV over a compressed day: 0 before `start_s` and after `end_s`, a sin^2 bell between
    with `peak_a` per phase at noon; returned negative (export) on the phases the inverter
    feeds. `cloud` is an optional list of (t0, t1, factor): passing clouds."""

    def __init__(self, peak_a, start_s, end_s, phases=3, cloud=()):
        if end_s <= start_s:
            raise ValueError("end_s must be after start_s")
        self.peak_a = float(peak_a)
        self.start_s, self.end_s = float(start_s), float(end_s)
        self.w = phase_vector(phases)
        self.cloud = [(float(a), float(b), float(f)) for a, b, f in cloud]

    def __call__(self, t):
        if t <= self.start_s or t >= self.end_s:
            return [0.0, 0.0, 0.0]
        x = (t - self.start_s) / (self.end_s - self.start_s)
        a = self.peak_a * math.sin(math.pi * x) ** 2
        for t0, t1, f in self.cloud:
            if t0 <= t < t1:
                a *= f
        return [-a * w for w in self.w]


class DumbLoad:
    """A load that ignores everything: `a` per phase on its phases while `on`. A dumb 16 A
    3-phase charger is DumbLoad(16, 3)."""

    def __init__(self, a, phases=3, on=False, name="dumb"):
        self.a = float(a)
        self.w = phase_vector(phases)
        self.on = on
        self.name = name

    def __call__(self, t):
        return [self.a * w if self.on else 0.0 for w in self.w]


def add(*vecs):
    return [sum(v[k] for v in vecs) for k in range(3)]


# -- stations ---------------------------------------------------------------------------------


class Feed:
    """One station as the grid simulator sees it: its id (topic base `<prefix>/<id>`), its
    control port, the phase map of its connectors and how many connectors it has."""

    def __init__(self, station_id, port=None, phase_map="123", connectors=1, prefix="evse"):
        self.id = station_id
        self.port = port
        self.phase_map = check_phase_map(phase_map)
        self.connectors = int(connectors)
        self.topic = "%s/%s/grid" % (prefix, station_id)


class ControlReader:
    """Reads `ev_i` of (feed, connector) through each station's control port (one
    connection per station, opened on first use, reopened after an error)."""

    def __init__(self, timeout=2.0):
        self.timeout = timeout
        self._ctl = {}

    def __call__(self, feed, connector):
        from simctl import Control

        c = self._ctl.get(feed.id)
        try:
            if c is None:
                c = self._ctl[feed.id] = Control(feed.port, timeout=self.timeout)
            r = c.op("get", connector=connector)
        except (OSError, ValueError):
            self._ctl.pop(feed.id, None)
            if c is not None:
                c.close()
            raise
        return r["ev_i"]

    def close(self):
        for c in self._ctl.values():
            c.close()
        self._ctl.clear()


class GridSim:
    """Reads the stations, sums the site's grid currents and publishes them every period_s.

    `reader(feed, connector) -> [L1, L2, L3]` defaults to the control port. A station whose
    read fails counts 0 A for that round (and `read_errors` counts it): a meter does not
    stop because a station is down, and a dead station draws nothing."""

    def __init__(self, feeds, broker_port=None, broker_host="127.0.0.1", period_s=1.0,
                 ttl_s=10, base=None, pv=None, dumb=(), reader=None, clock=time.monotonic,
                 qos=0):
        self.feeds = list(feeds)
        ids = [f.id for f in self.feeds]
        if len(set(ids)) != len(ids):
            raise ValueError("station ids must be unique")
        self.period_s = float(period_s)
        # The firmware takes ttl_s as an integer 1..3600 (a 10.0 is refused, evse/balance.py).
        if isinstance(ttl_s, bool) or not float(ttl_s).is_integer() or not 1 <= ttl_s <= 3600:
            raise ValueError("ttl_s must be a whole number of seconds, 1..3600")
        self.ttl_s = int(ttl_s)
        self.base = base or Constant([0, 0, 0])
        self.pv = pv or Constant([0, 0, 0])
        self.dumb = list(dumb)
        self.reader = reader or ControlReader()
        self.clock = clock
        self.qos = qos
        self.t0 = clock()
        self.cut_ids = set()
        self.read_errors = 0
        self.published = 0  # messages handed to the client
        self.last = None  # the latest round: see step()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None
        self.client = None
        if broker_port is not None:
            import paho.mqtt.client as mqtt

            self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                                      client_id="gridsim-%d" % os.getpid())
            self.client.connect(broker_host, broker_port)
            self.client.loop_start()

    # -- what the site draws ------------------------------------------------------------------

    def set_base(self, i):
        """A step of the base load: constant `i` from now on."""
        with self._lock:
            self.base = Constant(i)

    def switch(self, on, k=0):
        with self._lock:
            self.dumb[k].on = bool(on)

    def cut(self, station_id):
        """Stop publishing to this station (its meter link is cut)."""
        with self._lock:
            self._feed(station_id)
            self.cut_ids.add(station_id)

    def restore(self, station_id):
        with self._lock:
            self.cut_ids.discard(station_id)

    def _feed(self, station_id):
        for f in self.feeds:
            if f.id == station_id:
                return f
        raise KeyError("no station %r" % station_id)

    def read_ev(self):
        """{station_id: [per-connector [L1, L2, L3] on the connector's own phases]}."""
        out = {}
        for f in self.feeds:
            per = []
            for c in range(1, f.connectors + 1):
                try:
                    per.append([float(x) for x in self.reader(f, c)])
                except (OSError, ValueError, KeyError):
                    self.read_errors += 1
                    per.append([0.0, 0.0, 0.0])
            out[f.id] = per
        return out

    def compose(self, t, ev):
        """The grid at time t from EV readings (as read_ev returns them): a dict with
        `grid`, `ev` (all EVs on grid phases), `base`, `pv`, `dumb` (each [L1, L2, L3])."""
        with self._lock:
            base, pv = self.base(t), self.pv(t)
            dumb = add(*[d(t) for d in self.dumb]) if self.dumb else [0.0, 0.0, 0.0]
        ev_grid = [0.0, 0.0, 0.0]
        for f in self.feeds:
            for conn_i in ev.get(f.id, ()):
                ev_grid = add(ev_grid, map_phases(conn_i, f.phase_map))
        grid = add(base, pv, dumb, ev_grid)
        r = lambda v: [round(x, _ROUND) + 0.0 for x in v]  # noqa: E731 (+0.0: no -0.0)
        return {"t": t, "grid": r(grid), "ev": r(ev_grid), "base": r(base), "pv": r(pv),
                "dumb": r(dumb)}

    # -- publishing ---------------------------------------------------------------------------

    def payload(self, grid):
        return json.dumps({"i": grid, "ttl_s": self.ttl_s}, separators=(",", ":"))

    def step(self):
        """One round: read, compose, publish to every station not cut. Returns the round."""
        t = self.clock() - self.t0
        rnd = self.compose(t, self.read_ev())
        msg = self.payload(rnd["grid"])
        with self._lock:
            cut = set(self.cut_ids)
        if self.client is not None:
            for f in self.feeds:
                if f.id not in cut:
                    self.client.publish(f.topic, msg, qos=self.qos)
                    self.published += 1
        rnd["cut"] = sorted(cut)
        self.last = rnd
        return rnd

    def start(self):
        self._thread = threading.Thread(target=self._run, daemon=True, name="gridsim")
        self._thread.start()
        return self

    def _run(self):
        nxt = self.clock()
        while not self._stop.is_set():
            try:
                self.step()
            except Exception as ex:  # a meter keeps metering; say why once per round
                sys.stderr.write("gridsim: %r\n" % (ex,))
            nxt += self.period_s
            wait = nxt - self.clock()
            if wait < 0:  # fell behind (a loaded host): start afresh, do not burst
                nxt = self.clock()
                wait = 0
            self._stop.wait(wait)

    def stop(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        if self.client is not None:
            self.client.loop_stop()
            self.client.disconnect()
            self.client = None
        if isinstance(self.reader, ControlReader):
            self.reader.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


# -- CLI --------------------------------------------------------------------------------------


def parse_feed(s, prefix="evse"):
    """ID:PORT[:PHASEMAP[:CONNECTORS]], e.g. S1:7001:231:1."""
    parts = s.split(":")
    if len(parts) < 2 or len(parts) > 4:
        raise argparse.ArgumentTypeError("station must be ID:PORT[:PHASEMAP[:CONNECTORS]]")
    try:
        return Feed(parts[0], int(parts[1]), parts[2] if len(parts) > 2 else "123",
                    int(parts[3]) if len(parts) > 3 else 1, prefix=prefix)
    except ValueError as ex:
        raise argparse.ArgumentTypeError(str(ex)) from None


def parse_vec(s):
    v = [float(x) for x in s.split(",")]
    if len(v) == 1:
        v = v * 3
    if len(v) != 3:
        raise argparse.ArgumentTypeError("a current is A or L1,L2,L3")
    return v


def parse_steps(s):
    """'T:L1,L2,L3;T:...' -> [(T, [..]), ...]."""
    out = []
    for part in s.split(";"):
        t, _, v = part.partition(":")
        out.append((float(t), parse_vec(v)))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="example: gridsim.py --broker 127.0.0.1:1883 --station S1:7001:123 "
               "--station S2:7002:231 --base 10,8,12 --steps '60:30,25,28;120:12,10,12' "
               "--pv-peak 30 --pv-day 20:200 --dumb 16 --dumb-on 90:150")
    ap.add_argument("--broker", required=True, help="HOST:PORT of the MQTT broker")
    ap.add_argument("--station", action="append", required=True, metavar="ID:PORT[:MAP[:N]]",
                    help="a station: id, control port, phase map (default 123), connectors")
    ap.add_argument("--prefix", default="evse", help="topic prefix (config key prefix)")
    ap.add_argument("--period-s", type=float, default=1.0, help="publish period (default 1)")
    ap.add_argument("--ttl-s", type=int, default=10, help="ttl_s in the payload (default 10)")
    ap.add_argument("--base", type=parse_vec, default=[0.0, 0.0, 0.0],
                    help="constant base load, A or L1,L2,L3")
    ap.add_argument("--steps", type=parse_steps, default=None,
                    help="base-load steps 'T:L1,L2,L3;T:...' (s since start; before the "
                         "first step: --base)")
    ap.add_argument("--csv", default=None, help="base load from a CSV of t_s,L1,L2,L3")
    ap.add_argument("--csv-interpolate", action="store_true", help="linear between rows")
    ap.add_argument("--pv-peak", type=float, default=0.0, help="PV peak per phase, A")
    ap.add_argument("--pv-day", default="0:300", help="PV day START:END, s since start")
    ap.add_argument("--pv-phases", default="123", help="grid phases the inverter feeds")
    ap.add_argument("--dumb", type=float, default=0.0, help="a dumb charger of this many A")
    ap.add_argument("--dumb-phases", default="123", help="its grid phases (default 123)")
    ap.add_argument("--dumb-on", default=None, help="ON:OFF times of the dumb charger, s")
    ap.add_argument("--cut", action="append", default=[], metavar="ID:FROM:TO",
                    help="stop publishing to station ID from FROM to TO s (a cut feed)")
    ap.add_argument("--duration-s", type=float, default=None, help="stop after this long")
    ap.add_argument("--quiet", action="store_true", help="no line per round")
    a = ap.parse_args(argv)

    host, _, port = a.broker.rpartition(":")
    feeds = [parse_feed(s, a.prefix) for s in a.station]
    if a.csv:
        base = Csv(a.csv, a.csv_interpolate)
    elif a.steps:
        base = Steps(a.steps, before=a.base)
    else:
        base = Constant(a.base)
    pv = None
    if a.pv_peak:
        d0, d1 = (float(x) for x in a.pv_day.split(":"))
        pv = Bell(a.pv_peak, d0, d1, a.pv_phases)
    dumb = [DumbLoad(a.dumb, a.dumb_phases)] if a.dumb else []
    dumb_on = [float(x) for x in a.dumb_on.split(":")] if a.dumb_on else None
    cuts = []
    for c in a.cut:
        sid, t0, t1 = c.rsplit(":", 2)
        cuts.append((sid, float(t0), float(t1)))
    gs = GridSim(feeds, broker_port=int(port), broker_host=host or "127.0.0.1",
                 period_s=a.period_s, ttl_s=a.ttl_s, base=base, pv=pv, dumb=dumb)
    try:
        while a.duration_s is None or gs.clock() - gs.t0 < a.duration_s:
            t = gs.clock() - gs.t0
            if dumb and dumb_on:
                dumb[0].on = dumb_on[0] <= t < dumb_on[1]
            for sid, t0, t1 in cuts:
                (gs.cut if t0 <= t < t1 else gs.restore)(sid)
            rnd = gs.step()
            if not a.quiet:
                print("t=%6.1f grid=%s ev=%s base=%s pv=%s dumb=%s cut=%s" % (
                    t, rnd["grid"], rnd["ev"], rnd["base"], rnd["pv"], rnd["dumb"],
                    ",".join(rnd["cut"]) or "-"), flush=True)
            time.sleep(max(0.0, a.period_s - (gs.clock() - gs.t0 - t)))
    except KeyboardInterrupt:
        pass
    finally:
        gs.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
