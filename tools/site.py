"""Multi-station site runs: a broker, N simulated stations (each behind a link proxy that can
be cut), the grid simulator (tools/gridsim.py) feeding every station's `<base>/grid`, and a
scenario (EVs arriving and leaving, base-load steps, a dumb charger, cut links) applied on a
timeline. Samples the site at a few Hz into a JSON-lines recording, stops everything it
started, and prints the metrics (tools/sitemetrics.py).

    .venv/bin/python tools/site.py --preset grid5 --out build/site [--plot]
    .venv/bin/python tools/site.py --preset all --out build/site --plot   # make bench-site
    .venv/bin/python tools/site.py --scenario my.json --out /tmp/run
    .venv/bin/python tools/site.py --metrics build/site/grid5.jsonl       # from a recording

(The file is named as the task asked; the runner's parts that tests import live in
gridsim.py, linkproxy.py and sitemetrics.py, because `import site` names Python's own module.)

Scenario (a dict, or the same as JSON):
    {"name": "...", "duration_s": 200, "sample_hz": 4, "fuse_a": 63, "margin_a": 1.0,
     "mode": "grid", "min_grid_a": 0, "ttl_s": 10, "period_s": 1.0,
     "config": {"random_delay_s": 2, "min_pause_s": 20},      # every station, first boot
     "stations": [{"phase_map": "123", "priority": 1, "connectors": 1, "config": {...}}, ...],
     "base": [L1, L2, L3] | {"csv": "file.csv", "interpolate": false},
     "pv": {"peak_a": 25, "start_s": 10, "end_s": 190, "phases": "123"},
     "dumb": {"a": 16, "phases": 3},
     "actions": [{"t": 5, "do": "plug", "station": 1, "max_a": 32, "phases": 3}, ...]}
Actions (`station` is 1-based or an id; `c` the connector, default 1):
    plug (max_a, phases, request=true, respond_s, cable_a), unplug, ev (request, max_a, ...:
    the control port's `ev` op), base (i: the new constant base load), dumb (on),
    cut_link / restore_link (the station's MQTT connection: closed and refused),
    cut_feed / restore_feed (the grid simulator stops publishing to the station).
"""

import argparse
import contextlib
import copy
import json
import os
import re
import resource
import shutil
import signal
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import gridsim  # noqa: E402
import sitemetrics  # noqa: E402
from linkproxy import LinkProxy  # noqa: E402

from broker import Broker  # noqa: E402
from simctl import Control, Station  # noqa: E402

# The configuration keys the site balancer reads (docs/mqtt.md once it has landed).
SITE_KEYS = ("site.fuse_a", "site.margin_a", "site.mode", "site.min_grid_a", "site.priority",
             "site.stations", "site.phase_map")
_PHASE_MAPS = ("123", "231", "312")


# -- presets --------------------------------------------------------------------------------


def _ev(t, k, max_a=32, phases=3, **kw):
    return dict(t=t, do="plug", station=k, max_a=max_a, phases=phases, **kw)


def preset_grid5():
    """5 stations on one 3 x 63 A connection: EVs arrive 20 s apart (one single-phase, one
    that takes only 16 A, one with priority 2), the base load steps up and down, an EV
    leaves and comes back."""
    return {
        "name": "grid5", "duration_s": 210, "sample_hz": 4, "fuse_a": 63, "margin_a": 1.0,
        "mode": "grid", "min_grid_a": 0, "ttl_s": 10, "period_s": 1.0,
        "config": {"random_delay_s": 2, "min_pause_s": 20},
        "stations": [{"phase_map": _PHASE_MAPS[k % 3], "priority": 2 if k == 4 else 1}
                     for k in range(5)],
        "base": [12, 8, 10],
        "actions": [
            _ev(5, 1), _ev(25, 2), _ev(45, 3, phases=1), _ev(65, 4, max_a=16), _ev(85, 5),
            {"t": 115, "do": "base", "i": [24, 20, 22]},
            {"t": 145, "do": "unplug", "station": 2},
            {"t": 165, "do": "base", "i": [10, 8, 10]},
            _ev(185, 2),
        ],
    }


def preset_grid5_cut():
    """grid5 with station 1's MQTT link cut at 100 s (before the base-load step at 115 s)
    and restored at 150 s."""
    s = preset_grid5()
    s["name"] = "grid5-cut"
    s["actions"] += [{"t": 100, "do": "cut_link", "station": 1},
                     {"t": 150, "do": "restore_link", "station": 1}]
    return s


def preset_grid5_dumb():
    """grid5 with a dumb 16 A 3-phase charger on the same connection from 100 s to 155 s:
    with the base-load step the shares fall below 6 A, so stations must pause."""
    s = preset_grid5()
    s["name"] = "grid5-dumb"
    s["dumb"] = {"a": 16, "phases": 3}
    s["actions"] += [{"t": 100, "do": "dumb", "on": True},
                     {"t": 155, "do": "dumb", "on": False}]
    return s


def preset_grid20():
    """20 stations on a 3 x 250 A connection, for scale: an EV every 3 s (two of them
    single-phase), a base-load step, five leave. Samples at 2 Hz."""
    acts = [_ev(5 + 3 * k, k + 1, phases=1 if k in (6, 13) else 3) for k in range(20)]
    acts += [{"t": 100, "do": "base", "i": [60, 55, 58]}]
    acts += [{"t": 130, "do": "unplug", "station": k} for k in (2, 7, 11, 16, 19)]
    acts += [{"t": 150, "do": "base", "i": [30, 25, 28]}]
    return {
        "name": "grid20", "duration_s": 180, "sample_hz": 2, "fuse_a": 250, "margin_a": 1.0,
        "mode": "grid", "min_grid_a": 0, "ttl_s": 10, "period_s": 1.0,
        "config": {"random_delay_s": 2, "min_pause_s": 20},
        "stations": [{"phase_map": _PHASE_MAPS[k % 3], "priority": 1} for k in range(20)],
        "base": [30, 25, 28],
        "actions": acts,
    }


def preset_solar():
    """A PV day compressed to 3 minutes (3-phase inverter, 25 A per phase at noon), mode
    solar: a 3-phase 16 A EV and a single-phase 32 A EV plugged from the start, a kettle
    step in the afternoon; site.solar_stop_s 20 s."""
    return {
        "name": "solar", "duration_s": 200, "sample_hz": 4, "fuse_a": 63, "margin_a": 1.0,
        "mode": "solar", "min_grid_a": 0, "ttl_s": 10, "period_s": 1.0,
        # A 12-hour day in 180 s: the default 120 s hold at 6 A below 6 A of surplus would
        # outlast the afternoon, so it is shortened as min_pause_s is.
        "config": {"random_delay_s": 2, "min_pause_s": 20, "site.solar_stop_s": 20},
        "stations": [{"phase_map": "123", "priority": 1}, {"phase_map": "231", "priority": 1}],
        "base": [3, 2, 4],
        "pv": {"peak_a": 25, "start_s": 10, "end_s": 190, "phases": "123"},
        "actions": [
            _ev(5, 1, max_a=16), _ev(5, 2, phases=1),
            {"t": 120, "do": "base", "i": [8, 6, 7]},
            {"t": 140, "do": "base", "i": [3, 2, 4]},
        ],
    }


def preset_smart():
    """The solar day in mode smart: the same stations and sun, and 6 A of grid import always
    allowed (site.min_grid_a), so charging goes on at a low rate through the cloudless
    morning and evening too."""
    sc = preset_solar()
    sc["name"] = "smart"
    sc["mode"] = "smart"
    sc["min_grid_a"] = 6
    return sc


def preset_resume():
    """One station on a 3 x 20 A connection: its EV charges, a base-load step pauses it
    (below 6 A), the base load drops again leaving 14 A of room: the station should resume
    after min_pause_s (20 s). 100 s."""
    return {
        "name": "resume", "duration_s": 100, "sample_hz": 4, "fuse_a": 20, "margin_a": 1.0,
        "mode": "grid", "min_grid_a": 0, "ttl_s": 10, "period_s": 1.0,
        "config": {"random_delay_s": 2, "min_pause_s": 20},
        "stations": [{"phase_map": "123", "priority": 1}],
        "base": [5, 5, 5],
        "actions": [_ev(3, 1), {"t": 20, "do": "base", "i": [17, 17, 17]},
                    {"t": 30, "do": "base", "i": [5, 5, 5]}],
    }


PRESETS = {"grid5": preset_grid5, "grid5-cut": preset_grid5_cut,
           "grid5-dumb": preset_grid5_dumb, "grid20": preset_grid20, "solar": preset_solar,
           "smart": preset_smart, "resume": preset_resume}


# -- helpers ----------------------------------------------------------------------------------


def firmware_has_site(firmware_dir):
    """Whether this firmware's configuration schema knows the site keys: a station given a
    key its schema does not know refuses the whole first-boot configuration."""
    try:
        with open(os.path.join(firmware_dir, "evse", "config.py")) as f:
            return '"site.fuse_a"' in f.read()
    except OSError:
        return False


ACTIONS = ("plug", "unplug", "ev", "base", "dumb", "cut_link", "restore_link", "cut_feed",
           "restore_feed")
_STATION_ACTIONS = ("plug", "unplug", "ev", "cut_link", "restore_link", "cut_feed",
                    "restore_feed")


def validate(sc):
    """Raise ValueError naming the first thing wrong with a scenario, before anything
    starts (a typo found 3 minutes into a run costs the run)."""
    for key in ("fuse_a", "duration_s", "stations"):
        if key not in sc:
            raise ValueError("scenario needs %r" % key)
    n = len(sc["stations"])
    if n < 1:
        raise ValueError("scenario needs at least one station")
    if sc.get("mode", "grid") not in ("grid", "solar", "smart"):
        raise ValueError("mode must be grid, solar or smart")
    ids = [s.get("id", "S%d" % (k + 1)) for k, s in enumerate(sc["stations"])]
    if len(set(ids)) != n:
        raise ValueError("station ids must be unique")
    for spec in sc["stations"]:
        gridsim.check_phase_map(spec.get("phase_map", "123"))
    for a in sc.get("actions", ()):
        if a.get("do") not in ACTIONS:
            raise ValueError("action %r: do must be one of %s" % (a, ", ".join(ACTIONS)))
        if not 0 <= a.get("t", -1) <= sc["duration_s"]:
            raise ValueError("action %r: t must be within the run" % (a,))
        if a["do"] in _STATION_ACTIONS:
            st = a.get("station")
            if not ((isinstance(st, int) and 1 <= st <= n) or st in ids):
                raise ValueError("action %r: no station %r" % (a, st))
            conns = sc["stations"][st - 1 if isinstance(st, int) else ids.index(st)].get(
                "connectors", 1)
            if not 1 <= a.get("c", 1) <= conns:
                raise ValueError("action %r: no connector %r" % (a, a.get("c")))
        if a["do"] == "base" and len(a.get("i", ())) != 3:
            raise ValueError("action %r: i must be [L1, L2, L3]" % (a,))
        if a["do"] == "dumb" and not sc.get("dumb"):
            raise ValueError("action %r: the scenario has no dumb load" % (a,))
    return ids


def station_config(sc, k, sid, managed):
    """The first-boot configuration of station k as `key=<JSON>` lines for simctl: JSON
    so that a phase map "231" stays a string (the firmware's parser would read a bare 231
    as a number)."""
    spec = sc["stations"][k]
    cfg = {"station_id": sid}
    if managed:
        cfg.update({"site.fuse_a": sc["fuse_a"], "site.margin_a": sc.get("margin_a", 1.0),
                    "site.mode": sc.get("mode", "grid"),
                    "site.min_grid_a": sc.get("min_grid_a", 0),
                    "site.priority": spec.get("priority", 1),
                    "site.stations": len(sc["stations"]),
                    "site.phase_map": spec.get("phase_map", "123")})
        cfg.update(sc.get("config", {}))
    cfg.update(spec.get("config", {}))
    return ["%s=%s" % (key, json.dumps(v)) for key, v in cfg.items()]


def group_cpu_s(pgid):
    """CPU seconds (user + system) of every live process in a process group."""
    tck = os.sysconf("SC_CLK_TCK")
    total = 0
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % p) as f:
                st = f.read()
        except OSError:
            continue
        f = st.rsplit(")", 1)[1].split()
        if int(f[2]) == pgid:
            total += int(f[11]) + int(f[12])
    return total / tck


def proc_cpu_s(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            f = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def self_cpu_s():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class StatusWatch:
    """The latest MQTT `status` of every station (`<prefix>/+/status`), per connector."""

    def __init__(self, port, prefix="evse"):
        import paho.mqtt.client as mqtt

        self.latest = {}  # id -> {connector: {...}}
        self.count = 0
        self._lock = threading.Lock()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="site-%d" % os.getpid())
        self.c.on_message = self._on
        self.c.connect("127.0.0.1", port)
        self.c.subscribe("%s/+/status" % prefix, qos=1)
        self.c.loop_start()

    def _on(self, client, userdata, m):
        try:
            d = json.loads(m.payload)
            sid = m.topic.split("/")[-2]
            per = {c["id"]: {"limit_a": c.get("limit_a"), "limit_by": c.get("limit_by"),
                             "state": c.get("state"), "status_offered_a": c.get("offered_a")}
                   for c in d["connectors"]}
        except (ValueError, KeyError, TypeError, IndexError):
            return
        with self._lock:
            self.latest[sid] = per
            self.count += 1

    def get(self, sid, c):
        with self._lock:
            return dict(self.latest.get(sid, {}).get(c, {}))

    def stop(self):
        self.c.loop_stop()
        self.c.disconnect()


# -- the run ----------------------------------------------------------------------------------


class SiteRun:
    """One scenario run. `run()` returns the metrics; `path` is the recording."""

    def __init__(self, scenario, out_dir, firmware=None, managed=None, quiet=False,
                 log=print):
        self.sc = copy.deepcopy(scenario)
        validate(self.sc)
        self.name = self.sc.get("name", "site")
        self.out_dir = out_dir
        self.firmware = firmware or os.environ.get("EVSE_FIRMWARE") or os.path.join(
            ROOT, "firmware")
        has = firmware_has_site(self.firmware)
        self.managed = has if managed is None else managed
        if self.managed and not has:
            raise RuntimeError("%s has no site.* configuration keys" % self.firmware)
        self.quiet = quiet
        self.log = log
        self.path = os.path.join(out_dir, self.name + ".jsonl")
        self.stations = []  # Station
        self.ids = []
        self.proxies = {}
        self.ev = {}  # (id, c) -> {"max_a", "phases"}: the EV's settings as we set them
        self.link = {}
        self.feed = {}
        self._rec = None

    # -- set-up ---------------------------------------------------------------------------

    def _meta(self):
        sc = self.sc
        units = []
        for k, spec in enumerate(sc["stations"]):
            for c in range(1, spec.get("connectors", 1) + 1):
                units.append({"id": self.ids[k], "c": c,
                              "phase_map": spec.get("phase_map", "123"),
                              "weight": spec.get("priority", 1),
                              "max_current_a": spec.get("config", {}).get("max_current_a",
                                                                          32.0)})
        return {"type": "meta", "preset": self.name, "mode": sc.get("mode", "grid"),
                "fuse_a": sc["fuse_a"], "margin_a": sc.get("margin_a", 1.0),
                "min_grid_a": sc.get("min_grid_a", 0), "managed": self.managed,
                "firmware": self.firmware, "units": units, "scenario": sc,
                "started_unix": time.time()}

    def _base_profile(self):
        b = self.sc.get("base", [0, 0, 0])
        if isinstance(b, dict) and "csv" in b:
            return gridsim.Csv(b["csv"], b.get("interpolate", False))
        if isinstance(b, dict) and "steps" in b:
            return gridsim.Steps(b["steps"], before=b.get("before", (0, 0, 0)))
        return gridsim.Constant(b)

    def start(self, stack):
        sc = self.sc
        os.makedirs(self.out_dir, exist_ok=True)
        state_root = os.path.join(self.out_dir, self.name + ".state")
        shutil.rmtree(state_root, ignore_errors=True)  # first boot: the config applies
        self.broker = Broker()
        stack.callback(self.broker.stop)
        self.ids = [s.get("id", "S%d" % (k + 1)) for k, s in enumerate(sc["stations"])]
        stack.callback(self._stop_stations)  # whichever have started, even if one fails
        for k, spec in enumerate(sc["stations"]):
            sid = self.ids[k]
            px = LinkProxy(self.broker.port)
            stack.callback(px.stop)
            self.proxies[sid] = px
            os.makedirs(os.path.join(state_root, sid))
            st = Station(state_dir=os.path.join(state_root, sid), broker=px.address,
                         station_id=sid, connectors=spec.get("connectors", 1),
                         config=station_config(sc, k, sid, self.managed),
                         firmware=self.firmware, ready_timeout=30.0)
            self.stations.append(st)
            self.link[sid] = self.feed[sid] = True
            for c in range(1, spec.get("connectors", 1) + 1):
                self.ev[(sid, c)] = {"max_a": 32.0, "phases": 3}
        self.status = StatusWatch(self.broker.port)
        stack.callback(self.status.stop)
        dumb = []
        if sc.get("dumb"):
            dumb = [gridsim.DumbLoad(sc["dumb"]["a"], sc["dumb"].get("phases", 3))]
        pv = None
        if sc.get("pv"):
            p = sc["pv"]
            pv = gridsim.Bell(p["peak_a"], p["start_s"], p["end_s"], p.get("phases", 3),
                              p.get("cloud", ()))
        feeds = [gridsim.Feed(sid, st.port, spec.get("phase_map", "123"),
                              spec.get("connectors", 1))
                 for sid, st, spec in zip(self.ids, self.stations, sc["stations"])]
        self.gs = gridsim.GridSim(feeds, broker_port=self.broker.port,
                                  period_s=sc.get("period_s", 1.0), ttl_s=sc.get("ttl_s", 10),
                                  base=self._base_profile(), pv=pv, dumb=dumb)
        stack.callback(self.gs.stop)
        # One control connection per station for sampling and actions (the grid simulator
        # has its own: a meter reads whatever the sampler is doing).
        self.ctl = {}
        for sid, st in zip(self.ids, self.stations):
            self.ctl[sid] = Control(st.port)
            stack.callback(self.ctl[sid].close)

    def _stop_stations(self):
        """SIGTERM to all at once (each takes a moment to reset its board)."""
        ts = [threading.Thread(target=st.stop) for st in self.stations]
        for t in ts:
            t.start()
        for t in ts:
            t.join(30)

    # -- the timeline -----------------------------------------------------------------------

    def _sid(self, a):
        s = a.get("station")
        if isinstance(s, int):
            return self.ids[s - 1]
        if s in self.ids:
            return s
        raise ValueError("action %r: no station %r" % (a, s))

    def _write(self, rec):
        self._rec.write(json.dumps(rec, separators=(",", ":")) + "\n")

    def apply(self, a, t):
        do = a["do"]
        rec = {"type": "action", "t": round(t, 3), "do": do}
        args = {k: v for k, v in a.items() if k not in ("t", "do", "station")}
        if do in ("plug", "unplug", "ev", "cut_link", "restore_link", "cut_feed",
                  "restore_feed"):
            sid = self._sid(a)
            rec["id"] = sid
            ctl = self.ctl[sid]
            c = a.get("c", 1)
            if do == "plug":
                ev = {k: a[k] for k in ("max_a", "phases", "respond_s") if k in a}
                ev["request"] = a.get("request", True)
                self._ok(ctl.op("ev", connector=c, **ev), a)
                self.ev[(sid, c)].update({k: ev[k] for k in ("max_a", "phases") if k in ev})
                plug = {"cable_a": a["cable_a"]} if "cable_a" in a else {}
                self._ok(ctl.op("plug", connector=c, **plug), a)
            elif do == "unplug":
                self._ok(ctl.op("unplug", connector=c), a)
            elif do == "ev":
                ev = {k: v for k, v in args.items() if k != "c"}
                self._ok(ctl.op("ev", connector=c, **ev), a)
                self.ev[(sid, c)].update({k: ev[k] for k in ("max_a", "phases") if k in ev})
            elif do == "cut_link":
                self.proxies[sid].cut(silent=a.get("silent", False))
                self.link[sid] = False
            elif do == "restore_link":
                self.proxies[sid].restore()
                self.link[sid] = True
            elif do == "cut_feed":
                self.gs.cut(sid)
                self.feed[sid] = False
            elif do == "restore_feed":
                self.gs.restore(sid)
                self.feed[sid] = True
        elif do == "base":
            self.gs.set_base(a["i"])
        elif do == "dumb":
            self.gs.switch(a.get("on", True), a.get("k", 0))
        else:
            raise ValueError("unknown action %r" % do)
        rec.update(args)
        self._write(rec)
        if not self.quiet:
            self.log("  t=%6.1f %s" % (t, " ".join("%s=%s" % kv for kv in rec.items()
                                                  if kv[0] not in ("type", "t"))))

    @staticmethod
    def _ok(reply, a):
        if not reply.get("ok"):
            raise RuntimeError("action %r: %s" % (a, reply.get("error")))

    def sample(self, t):
        units = []
        ev = {}
        for sid, spec in zip(self.ids, self.sc["stations"]):
            per = []
            for c in range(1, spec.get("connectors", 1) + 1):
                g = self.ctl[sid].op("get", connector=c)
                per.append(g["ev_i"])
                u = {"id": sid, "c": c, "ev_i": g["ev_i"], "offered_a": g["offered_a"],
                     "cp": g["cp"], "plugged": g["plugged"], "contactor": g["contactor"],
                     "link": self.link[sid], "feed": self.feed[sid]}
                u.update(self.ev[(sid, c)])
                u.update(self.status.get(sid, c))
                units.append(u)
            ev[sid] = per
        rnd = self.gs.compose(t, ev)
        rec = {"type": "sample", "t": round(t, 3)}
        rec.update({k: rnd[k] for k in ("grid", "ev", "base", "pv", "dumb")})
        rec["units"] = units
        self._write(rec)
        return rec

    def run(self):
        sc = self.sc
        stop = threading.Event()

        def on_term(signum, frame):
            raise KeyboardInterrupt

        old = signal.signal(signal.SIGTERM, on_term) if threading.current_thread() is \
            threading.main_thread() else None
        try:
            with contextlib.ExitStack() as stack:
                t_boot = time.monotonic()
                self.start(stack)
                boot_s = time.monotonic() - t_boot
                self._rec = open(self.path, "w")
                stack.callback(self._rec.close)
                self._write(self._meta())
                cpu0 = [group_cpu_s(st.proc.pid) for st in self.stations]
                bcpu0, scpu0 = proc_cpu_s(self.broker.proc.pid), self_cpu_s()
                self.t0 = time.monotonic()
                self.gs.t0 = self.t0
                self.gs.start()
                actions = sorted(sc.get("actions", []), key=lambda a: a["t"])
                period = 1.0 / sc.get("sample_hz", 4)
                next_sample, next_print, k = 0.0, 0.0, 0
                dur = sc["duration_s"]
                if not self.quiet:
                    self.log("%s: %d stations up in %.1f s (%s), %s s" % (
                        self.name, len(self.stations), boot_s,
                        "site-managed" if self.managed else "UNMANAGED: no site.* keys",
                        dur))
                while not stop.is_set():
                    t = time.monotonic() - self.t0
                    if t >= dur:
                        break
                    while k < len(actions) and actions[k]["t"] <= t:
                        self.apply(actions[k], t)
                        k += 1
                    if t >= next_sample:
                        s = self.sample(t)
                        next_sample += period
                        if next_sample < t:  # fell behind: no burst of catch-up samples
                            next_sample = t + period
                        if not self.quiet and t >= next_print:
                            next_print += 10.0
                            self.log("  t=%6.1f grid %s (fuse %g) I %s" % (
                                t, [round(x, 1) for x in s["grid"]], sc["fuse_a"],
                                " ".join("%.0f" % max(u["ev_i"]) for u in s["units"])))
                    nxt = min(next_sample, actions[k]["t"] if k < len(actions) else dur)
                    time.sleep(max(0.0, min(0.05, nxt - (time.monotonic() - self.t0))))
                t_end = time.monotonic() - self.t0
                span = max(t_end, 1e-3)
                cpu = [(group_cpu_s(st.proc.pid) - c0) / span
                       for st, c0 in zip(self.stations, cpu0)]
                end = {"type": "end", "t": round(t_end, 3),
                       "cpu_station": [round(x, 4) for x in cpu],
                       "cpu_broker": round((proc_cpu_s(self.broker.proc.pid) - bcpu0) / span, 4),
                       "cpu_runner": round((self_cpu_s() - scpu0) / span, 4),
                       "ncpu": os.cpu_count(), "loadavg": os.getloadavg(),
                       "boot_s": round(boot_s, 2), "status_msgs": self.status.count,
                       "grid_published": self.gs.published,
                       "grid_read_errors": self.gs.read_errors}
                end.update(self._health())
                self._contactors()
                self._write(end)
        finally:
            if old is not None:
                signal.signal(signal.SIGTERM, old)
        return sitemetrics.compute(sitemetrics.load(self.path))

    def _contactors(self):
        """The contactor commands from every station's events log, on the run's clock."""
        for sid in self.ids:
            for e in self.ctl[sid].events(0):
                if e["what"] == "contactor":
                    self._write({"type": "contactor", "t": round(e["t_us"] / 1e6 - self.t0, 3),
                                 "id": sid, "c": e["connector"], "on": e["value"]})

    def _health(self):
        """Per station: firmware restarts and watchdog resets, the largest loop gaps."""
        out = {"fw_exits": [], "watchdogs": [], "loop_max_gap_ms": [], "fw_loop_max_gap_ms": []}
        for sid, st in zip(self.ids, self.stations):
            out["fw_exits"].append(len(re.findall("firmware exited", st.stderr())))
            out["watchdogs"].append(sum(1 for e in self.ctl[sid].events(0)
                                        if e["what"] == "watchdog"))
            s = self.ctl[sid].op("stats")
            out["loop_max_gap_ms"].append(round(s["loop_max_gap_us"] / 1000.0, 1))
            out["fw_loop_max_gap_ms"].append(s["fw_loop_max_gap_ms"])
        return out


# -- reporting --------------------------------------------------------------------------------


def report(name, m, records, out=print):
    meta, samples, _ = sitemetrics.split(records)
    end = next((r for r in records if r["type"] == "end"), {})
    out("== %s (%s, %d samples over %.0f s) ==" % (
        name, "site-managed" if meta.get("managed") else "UNMANAGED", m.get("samples", 0),
        m.get("span_s", 0)))
    for ln in sitemetrics.summary_lines(m):
        out("  " + ln)
    for a in m.get("over_after_action", []):
        out("    after t=%6.1f %-28s above fuse %5.1f s" % (a["t"], a["what"], a["over_s"]))
    for c in m.get("convergence", []):
        out("    arrival t=%6.1f %-24s converged %s" % (
            c["t"], c["what"], "in %.1f s" % c["converge_s"] if c["converge_s"] is not None
            else "no (%s)" % c["why"]))
    f = m.get("fairness", {})
    for key, v in f.get("units", {}).items():
        out("    fairness %-6s mean I-share %+5.2f A, mean |.| %.2f A, max |.| %.2f A (%d)"
            % (key, v["mean_dev_a"], v["mean_abs_dev_a"], v["max_abs_dev_a"], v["samples"]))
    cyc = m.get("contactor_cycles", {})
    if cyc:
        out("    contactor closes: " + " ".join("%s=%d" % (k, v["closes"])
                                               for k, v in cyc.items()))
    if end.get("cpu_station"):
        cs = end["cpu_station"]
        out("  host CPU per station (runner + firmware, %% of one core): mean %.1f, min %.1f, "
            "max %.1f; all stations %.0f %% of %d cores; broker %.1f %%, site runner %.1f %%;"
            " load avg %.1f" % (100 * sum(cs) / len(cs), 100 * min(cs), 100 * max(cs),
                                100 * sum(cs) / end["ncpu"], end["ncpu"],
                                100 * end["cpu_broker"], 100 * end["cpu_runner"],
                                end["loadavg"][0]))
        out("  station health: firmware exits %d, watchdog resets %d, largest loop gap "
            "%.0f ms (world) / %d ms (firmware)" % (
                sum(end["fw_exits"]), sum(end["watchdogs"]), max(end["loop_max_gap_ms"]),
                max(end["fw_loop_max_gap_ms"])))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="presets: %s (--list describes them)"
                                 % ", ".join(PRESETS))
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--list", action="store_true", help="describe the presets")
    g.add_argument("--preset", help="a preset name, or 'all', or a comma list")
    g.add_argument("--scenario", help="a scenario JSON file")
    g.add_argument("--metrics", help="only the metrics of a recording (.jsonl), written "
                   "beside it as .metrics.json (and the plot with --plot)")
    ap.add_argument("--out", default=os.path.join(ROOT, "build", "site"),
                    help="recordings and state dirs (default build/site)")
    ap.add_argument("--firmware", default=None, help="a copy of firmware/ to run")
    ap.add_argument("--unmanaged", action="store_true",
                    help="do not give the stations the site.* keys (a baseline)")
    ap.add_argument("--duration-s", type=float, default=None, help="cut the run short")
    ap.add_argument("--plot", action="store_true", help="a PNG per run (tools/siteplot.py)")
    ap.add_argument("--quiet", action="store_true")
    a = ap.parse_args(argv)

    if a.list:
        for k, v in PRESETS.items():
            print("%s: %s" % (k, " ".join(v.__doc__.split())))
        return 0
    if a.metrics:
        recs = sitemetrics.load(a.metrics)
        m = sitemetrics.compute(recs)
        report(os.path.basename(a.metrics), m, recs)
        stem = os.path.splitext(a.metrics)[0]
        with open(stem + ".metrics.json", "w") as f:
            json.dump(m, f, indent=1)
        if a.plot:
            import siteplot

            print("  plot %s" % siteplot.plot(recs, stem + ".png", metrics=m))
        return 0
    if a.scenario:
        with open(a.scenario) as f:
            scenarios = [json.load(f)]
    else:
        names = list(PRESETS) if a.preset == "all" else a.preset.split(",")
        for n in names:
            if n not in PRESETS:
                ap.error("unknown preset %r (have %s)" % (n, ", ".join(PRESETS)))
        scenarios = [PRESETS[n]() for n in names]
    rc = 0
    for sc in scenarios:
        if a.duration_s:
            sc["duration_s"] = a.duration_s
        run = SiteRun(sc, a.out, firmware=a.firmware,
                      managed=False if a.unmanaged else None, quiet=a.quiet)
        try:
            m = run.run()
        except KeyboardInterrupt:
            print("interrupted; everything started was stopped", file=sys.stderr)
            return 130
        recs = sitemetrics.load(run.path)
        with open(os.path.join(a.out, run.name + ".metrics.json"), "w") as f:
            json.dump(m, f, indent=1)
        report(run.name, m, recs)
        if a.plot:
            import siteplot

            png = os.path.join(a.out, run.name + ".png")
            siteplot.plot(recs, png, metrics=m)
            print("  recording %s, plot %s" % (run.path, png))
        else:
            print("  recording %s" % run.path)
    return rc


if __name__ == "__main__":
    sys.exit(main())
