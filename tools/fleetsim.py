"""Many charging stations in one CPython process, running the real firmware (make bench-fleet).

Design: each station is the firmware's own `Station` and `Link` (firmware/evse/station.py,
link.py, with its non-blocking MQTT client evse/mqtt.py on a real TCP socket to the broker)
on the unit tests' FakeBoard with a flash directory of its own. One process steps a few
hundred of them round-robin: each pass gives every station one control step and one link
poll, then sleeps out the rest of `period_ms` (the firmware's own loop runs every 5 ms; a
fleet on two cores cannot, so commands wait up to a period longer). The bench starts a few
such processes (4 x 250 for 1,000 stations). Measured by the bench on this 2-core machine:
a CPython station costs about 30 KB of RSS and 60 us of CPU per step, so 1,000 stepped ten
times a second take about 0.6 of a core. The other way to run the same code, the
MicroPython unix port (tools/sim.py), is one interpreter process per station (14 MB RSS,
about a tenth of a core at its 5 ms loop) plus its CPython world runner (17 MB): 1,000 of
those would need about 30 GB and over 100 cores.

Two stand-ins, and only these: CPython sockets lack the MicroPython stream methods the
client calls (write, readinto), so the socket the firmware's sock.connect() opens is wrapped
in StreamSock; and the energy meter is a LiveMeter object in metering.meters, as in
tests/test_sessions.py, instead of a Modbus line (not what this bench measures). A simulated
EV plugs in, charges and unplugs (the pilot driven as tests/fakes.plug_and_charge does), so
the stations write real session records that are resent until acknowledged.

Control, one JSON object per line: the parent writes {"op": ...} to stdin (stats, cycle,
quit), this process answers each on stdout. EOF on stdin, SIGTERM or Ctrl-C end it, and its
flash directories are removed."""

import argparse
import json
import os
import queue
import random
import shutil
import signal
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
# EVSE_FIRMWARE: a mutated copy of firmware/ (as for the unit tests), to prove a test fails.
sys.path.insert(0, os.environ.get("EVSE_FIRMWARE") or os.path.join(ROOT, "firmware"))
sys.path.insert(0, os.path.join(ROOT, "tests"))

from evse import sock  # noqa: E402
from evse.compat import ticks_diff, ticks_ms  # noqa: E402
from evse.link import Link  # noqa: E402
from evse.station import Station  # noqa: E402
from fakes import FakeBoard  # noqa: E402

VOLTS = 230.0
PLUG_B_MS = 300  # the EV sits in B this long before it asks for power (C)


class StreamSock:
    """A CPython socket with MicroPython's stream methods: write() and readinto() return
    what they moved and raise BlockingIOError (EAGAIN, which the client expects) when the
    socket would block; readinto() returns 0 when the broker closed the connection."""

    def __init__(self, s):
        self.s = s

    def write(self, b):
        return self.s.send(b)

    def readinto(self, mv):
        return self.s.recv_into(mv)

    def fileno(self):
        return self.s.fileno()

    def setblocking(self, flag):
        self.s.setblocking(flag)

    def close(self):
        self.s.close()


def _stream_connect(connect):
    def connect_stream(host, port):
        return StreamSock(connect(host, port))

    return connect_stream


class FleetBoard(FakeBoard):
    """The unit tests' fake board with the host's clock (as if NTP had set it)."""

    def unix_time(self):
        return int(time.time())


class LiveMeter:
    """What metering.meters[k] holds: a reading taken every step (ok_ms = now), its energy
    register counting while the contactor is closed at what the station offers."""

    name = "fleet"

    def __init__(self, wh):
        self.wh = float(wh)
        self.reading = None
        self.ok_ms = None
        self._on = None
        self._t = None
        self._set(0.0)

    def _set(self, amps):
        p_w = int(3 * VOLTS * amps)
        self.reading = ([VOLTS] * 3, [amps] * 3, p_w, int(self.wh), 50.0)

    def advance(self, now, hal, offered_a):
        on = hal.contactor.on
        if on and self._t is not None:
            self.wh += 3 * VOLTS * offered_a * ticks_diff(now, self._t) / 3600000.0
        if on or self._on:
            self._set(offered_a if on else 0.0)
        self._on = on
        self._t = now
        self.ok_ms = now


class Ev:
    """Plugs in after an idle spell, charges for a while, unplugs; `cycling` off lets the
    session under way end (unplug) and plugs in no more."""

    def __init__(self, hal, rng, charge_s, idle_s):
        self.hal = hal
        self.rng = rng
        self.charge_s = charge_s
        self.idle_s = idle_s
        self.cycling = True
        self.plugs = 0
        self._next = None  # when the next change is due (ticks ms)

    def _wait(self, now, span_s):
        return (now + int(1000 * self.rng.uniform(*span_s))) & ((1 << 30) - 1)

    def drive(self, now):
        hal = self.hal
        if self._next is None:
            self._next = self._wait(now, (0, self.idle_s[1]))  # stations start out of step
        if hal.ev != "A" and not self.cycling:
            hal.ev = "A"
            return
        if ticks_diff(now, self._next) < 0:
            return
        if hal.ev == "A":
            if self.cycling:
                hal.ev = "B"
                self.plugs += 1
                self._next = (now + PLUG_B_MS) & ((1 << 30) - 1)
        elif hal.ev == "B":
            hal.ev = "C"
            self._next = self._wait(now, self.charge_s)
        else:
            hal.ev = "A"
            self._next = self._wait(now, self.idle_s)


class FleetStation:
    """One station with its board, flash directory, link, meter and EV."""

    def __init__(self, station_id, fs, broker, rng, charge_s, idle_s, log, prefix="evse"):
        host, _, port = broker.rpartition(":")
        self.id = station_id
        self.board = FleetBoard(fs)
        over = {"station_id": station_id, "mqtt.host": host, "mqtt.port": int(port),
                "prefix": prefix}
        self.st = Station(self.board, log, over)
        self.link = Link(self.st, log)
        self.meter = LiveMeter(rng.randrange(10**6, 10**8))
        self.st.metering.meters[0] = self.meter
        self.ev = Ev(self.board.connectors[0], rng, charge_s, idle_s)
        # Instrumentation only (the firmware's own calls, then the time): when each session
        # message was written to flash and when the backend's ack for it arrived.
        self.written = {}  # seq -> time.time()
        self.acked = {}
        j = self.st.sessions.journal
        write, ack = j.message, j.ack

        def message(m, extra=None):
            p = write(m, extra)
            self.written[j.seq] = time.time()
            return p

        def acked(seq):
            i = ack(seq)
            if i is not None:
                self.acked[seq] = time.time()
            return i

        j.message, j.ack = message, acked

    def step(self, now):
        self.ev.drive(now)
        self.meter.advance(now, self.board.connectors[0], self.st.connectors[0].offered_a)
        self.st.step(now)
        self.st.loop_count += 1
        link = self.link
        try:
            link.poll(now)
        except Exception as e:  # noqa: BLE001 - as Station.run: the network never stops it
            link.failed(e)

    def figures(self, detail):
        j = self.st.sessions.journal
        d = {"id": self.id, "up": self.link.up, "connects": self.link.connects,
             "reconnects": self.link.reconnects, "seq": j.seq, "outbox": len(j.outbox),
             "open": self.st.connectors[0].contactor, "exceptions": self.st.exceptions,
             "plugs": self.ev.plugs, "limit_a": self.st.connectors[0].limit_a}
        if detail:
            d["outbox_seqs"] = [e[0] for e in j.outbox]
            d["written"] = self.written
            d["acked"] = self.acked
            d["sessions"] = self.st.sessions.figures()
        return d


class Log:
    """The stations' log lines, counted by level; the last few kept for the report."""

    def __init__(self):
        self.counts = {}
        self.last = []

    def __call__(self, level, msg):
        self.counts[level] = self.counts.get(level, 0) + 1
        if level != "info":
            self.last = (self.last + [msg])[-5:]


def rss_kb(pid="self"):
    """Resident set size of a process in KiB (Linux /proc), or None."""
    try:
        with open("/proc/%s/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class Fleet:
    """The stations of this process, stepped round-robin every `period_ms`."""

    def __init__(self, ids, broker, state_dir, period_ms=100, charge_s=(20, 60),
                 idle_s=(5, 20), seed=1, prefix="evse"):
        self.period_ms = period_ms
        self.state_dir = state_dir
        self.log = Log()
        self.rss_base_kb = rss_kb()
        rng = random.Random(seed)
        self.stations = []
        for sid in ids:
            fs = os.path.join(state_dir, sid)
            os.makedirs(fs, exist_ok=True)
            self.stations.append(FleetStation(sid, fs, broker, random.Random(rng.random()),
                                              charge_s, idle_s, self.log, prefix))
        self.passes = 0
        self.steps = 0
        self.cpu_s = 0.0  # CPU spent in the passes
        self.pass_ms = []  # wall time of the recent passes
        self.overruns = 0  # passes longer than period_ms
        # See StreamSock. Put back by close(): the unit tests share this process.
        self._connect = sock.connect
        sock.connect = _stream_connect(self._connect)

    def run_pass(self):
        t0 = time.perf_counter()
        c0 = time.process_time()
        for fs in self.stations:
            fs.step(ticks_ms())
        self.cpu_s += time.process_time() - c0
        self.passes += 1
        self.steps += len(self.stations)
        ms = (time.perf_counter() - t0) * 1000
        self.pass_ms = (self.pass_ms + [ms])[-500:]
        if ms > self.period_ms:
            self.overruns += 1
        return ms

    def close(self):
        """Drop every connection (no DISCONNECT: as a power cut would) and unwrap sockets."""
        for fs in self.stations:
            fs.link.client.close()
        sock.connect = self._connect

    def cycling(self, on):
        for fs in self.stations:
            fs.ev.cycling = on

    def figures(self, detail=False):
        n = len(self.stations)
        rss = rss_kb()
        ms = sorted(self.pass_ms) or [0.0]
        return {"pid": os.getpid(), "stations": n, "rss_kb": rss,
                "rss_base_kb": self.rss_base_kb,
                "kb_per_station": (rss - self.rss_base_kb) / n if n else None,
                "cpu_s": self.cpu_s, "passes": self.passes, "steps": self.steps,
                "us_per_step": 1e6 * self.cpu_s / self.steps if self.steps else None,
                "pass_ms_p50": ms[len(ms) // 2], "pass_ms_max": ms[-1],
                "overruns": self.overruns, "log": self.log.counts, "log_last": self.log.last,
                "up": sum(1 for fs in self.stations if fs.link.up),
                "station": [fs.figures(detail) for fs in self.stations]}


def _stdin_lines(q):
    for line in sys.stdin:
        q.put(line)
    q.put(None)  # EOF: the parent is gone


def _answer(obj):
    sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def serve(fleet):
    """Step the fleet; between passes answer the parent's requests."""
    q = queue.Queue()
    threading.Thread(target=_stdin_lines, args=(q,), daemon=True).start()
    _answer({"ready": True, "pid": os.getpid(), "stations": len(fleet.stations)})
    while True:
        ms = fleet.run_pass()
        while True:
            try:
                line = q.get_nowait()
            except queue.Empty:
                break
            if line is None:
                return
            req = json.loads(line)
            op = req.get("op")
            if op == "quit":
                _answer({"ok": True})
                return
            if op == "cycle":
                fleet.cycling(bool(req.get("on")))
                _answer({"ok": True})
            elif op == "stats":
                _answer(fleet.figures(bool(req.get("detail"))))
            else:
                _answer({"ok": False, "error": "unknown op %r" % op})
        if ms < fleet.period_ms:
            time.sleep((fleet.period_ms - ms) / 1000)


def _terminate(signum, frame):
    raise SystemExit(0)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--broker", required=True, help="HOST:PORT of the MQTT broker")
    ap.add_argument("--first", type=int, default=1, help="number of the first station")
    ap.add_argument("--count", type=int, default=250, help="stations in this process")
    ap.add_argument("--id-prefix", default="fleet-", help="station ids: PREFIX + 4 digits")
    ap.add_argument("--topic-prefix", default="evse",
                    help="the stations' `prefix` config key (their topics' first level)")
    ap.add_argument("--period-ms", type=int, default=100, help="one pass over all stations")
    ap.add_argument("--charge-s", type=float, nargs=2, default=(20, 60), metavar=("MIN", "MAX"))
    ap.add_argument("--idle-s", type=float, nargs=2, default=(5, 20), metavar=("MIN", "MAX"))
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # a socket per station
    except (ImportError, ValueError, OSError):
        pass
    state_dir = tempfile.mkdtemp(prefix="evse-fleet-")
    try:
        ids = ["%s%04d" % (a.id_prefix, i) for i in range(a.first, a.first + a.count)]
        fleet = Fleet(ids, a.broker, state_dir, a.period_ms, tuple(a.charge_s),
                      tuple(a.idle_s), a.seed + a.first, a.topic_prefix)
        try:
            serve(fleet)
        finally:
            fleet.close()
    except KeyboardInterrupt:
        pass
    finally:
        shutil.rmtree(state_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
