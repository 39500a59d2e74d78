"""Benchmarks (`make bench`): figures measured on the simulator, printed, never asserted.

- contactor reaction times from the world's events log (C->B, ->A, ->E, RCD trip), p50/max;
- the largest gap between control-loop iterations (as the world sees pilot samples);
- the smallest MicroPython heap (-X heapsize=<n>wK, i.e. n KiB on a 32-bit board) on which a
  full charge cycle with MQTT completes;
- heap allocated per MQTT publish on the unix port (tools/mqtt_alloc.py);
- the RFID reader's poll: CPU time on the unix port, SPI bytes and RF time per read;
- the .mpy size of the firmware (mpy-cross -O1).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from broker import Broker  # noqa: E402
from simctl import Station  # noqa: E402

NO_BROKER = 'mqtt.host=""'


def _first(evs, what, value, after_us=0):
    for e in evs:
        if e["what"] == what and e["value"] == value and e["t_us"] >= after_us:
            return e
    return None


def _reaction(st, n, cause, value):
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        evs = st.ctl.events(n)
        c = _first(evs, cause, value)
        e = _first(evs, "contactor", False, c["t_us"]) if c else None
        if e:
            return (e["t_us"] - c["t_us"]) / 1000.0
        time.sleep(0.01)
    raise RuntimeError("no contactor opening after %s=%r" % (cause, value))


def _replug(st):
    # A fault holds state F for 300 ms, during which CP cannot be read: unplug after it,
    # and plug again once the station has seen state A (the RCD self-test runs then).
    time.sleep(0.4)
    st.op("unplug")
    time.sleep(0.3)
    st.op("plug")
    st.op("ev", request=True)


def _charge(st):
    st.wait_for(lambda s: s["contactor"], timeout=10, interval=0.005, what="charging")


def reactions(trials):
    st = Station(config=[NO_BROKER])
    out = {}
    try:
        st.op("ev", respond_s=0.05)
        st.op("plug")
        st.op("ev", request=True)
        _charge(st)
        st.op("stats", reset=True)
        # Each cause comes right after the contactor closed, or (wait 0.3) while charging:
        # within 100 ms of switching an RCD trip must read for 30 ms (inrush transients).
        rcd_on = lambda: st.op("fault", kind="rcd", on=True)  # noqa: E731
        rcd_off = lambda: (st.op("fault", kind="rcd", on=False), _replug(st))  # noqa: E731
        cases = (
            ("C->B (EV stops)", "cp", "B", 0,
             lambda: st.op("ev", request=False), lambda: st.op("ev", request=True)),
            ("C->A (unplug)", "cp", "A", 0,
             lambda: st.op("unplug"),
             lambda: (st.op("plug"), st.op("ev", request=True))),
            ("C->E (CP short)", "cp", "E", 0,
             lambda: st.op("fault", kind="cp_short", on=True),
             lambda: (st.op("fault", kind="cp_short", on=False), _replug(st))),
            ("RCD trip (charging)", "rcd", True, 0.3, rcd_on, rcd_off),
            ("RCD trip (at switching)", "rcd", True, 0, rcd_on, rcd_off),
        )
        for name, what, value, wait_s, cause, restore in cases:
            ms = []
            for _ in range(trials):
                time.sleep(wait_s)
                n = st.op("events", since=10**9)["next"]
                cause()
                ms.append(_reaction(st, n, what, value))
                restore()
                _charge(st)
            out[name] = ms
        stats = st.op("stats")
        gap = (stats["loop_max_gap_us"] / 1000.0, stats["loop_gaps_over_10ms"], stats["samples"],
               stats["fw_loop_max_gap_ms"])
    finally:
        st.stop()
    return out, gap


def mpy_tree():
    """The firmware as a board runs it: evse/*.mpy (mpy-cross -O1) plus main.py."""
    mpy = os.path.join(os.path.dirname(sys.executable), "mpy-cross")
    d = tempfile.mkdtemp(prefix="evse-mpy-")
    os.makedirs(os.path.join(d, "evse"))
    src = os.path.join(ROOT, "firmware", "evse")
    for f in os.listdir(src):
        if f.endswith(".py"):
            subprocess.run([mpy, "-O1", "-o", os.path.join(d, "evse", f[:-3] + ".mpy"),
                            os.path.join(src, f)], check=True)
    subprocess.run(["cp", os.path.join(ROOT, "firmware", "main.py"), d], check=True)
    return d


def _cycle_ok(heap, broker, firmware=None, full=True, pay=False):
    """One full charge cycle on a heap of `heap`; True if it completed without errors.
    full: with site balancing on grid data and a schedule; pay: also cards at the reader
    (auth_mode rfid, a local list), a tariff, and the backend acknowledging the session
    records (every part built so far at work); else the plain station (no schedule, no
    balancing; free mode, its sessions unacknowledged)."""
    import paho.mqtt.client as mqtt

    d = tempfile.mkdtemp(prefix="evse-heap-")
    try:
        # Everything built so far at work: site balancing on grid data, a schedule in local
        # time, the standing orders written to flash.
        st = Station(state_dir=d, heapsize=heap, broker=broker, ready_timeout=10,
                     firmware=firmware,
                     config=(["site.fuse_a=32", 'tz="CET-1CEST,M3.5.0,M10.5.0/3"'] if full
                             else []) + (['auth_mode="rfid"'] if pay else []))
    except RuntimeError:
        return False
    host, _, port = broker.rpartition(":")
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    base = "evse/evse-" + st.id.encode().hex()
    acks = []

    online = threading.Event()

    def on_message(client, userdata, m):
        if m.topic == base + "/online" and m.payload == b"online":
            online.set()
        if m.topic == base + "/session":  # the backend stores it, then acknowledges
            seq = json.loads(m.payload)["seq"]
            acks.append(seq)
            client.publish(base + "/session/ack", json.dumps({"seq": seq}), qos=1)

    c.on_message = on_message
    c.connect(host, int(port))
    c.subscribe(base + "/online", 1)
    if pay:
        c.subscribe(base + "/session", 1)
    c.loop_start()
    online.wait(15)  # commands sent before the station subscribes would be lost
    stop = []

    def grid():
        while not stop and full:
            c.publish(base + "/grid", json.dumps({"i": [8.0, 9.0, 10.0], "ttl_s": 5}))
            time.sleep(0.5)

    t = threading.Thread(target=grid, daemon=True)
    t.start()
    try:
        if full:
            c.publish(base + "/cmd", json.dumps({
                "rid": "h", "cmd": "set_schedule", "connector": 0,
                "periods": [{"start": "00:00", "end": "24:00", "days": "1234567",
                             "current_a": 16}]}), qos=1)
        c.publish(base + "/cmd", json.dumps({"rid": "l", "cmd": "set_limit", "connector": 1,
                                             "current_a": 20, "ttl_s": 600}), qos=1)
        if pay:
            c.publish(base + "/cmd", json.dumps({
                "rid": "a", "cmd": "auth_list", "version": 1, "mode": "full",
                "entries": [{"id_tag": "04A1B2C3D4E5F6", "status": "Accepted"}]}), qos=1)
            c.publish(base + "/cmd", json.dumps({
                "rid": "t", "cmd": "set_tariff", "currency": "EUR",
                "energy_millis_per_kwh": 35000, "time_millis_per_h": 1200,
                "fee_millis": 500}), qos=1)
        st.op("ev", respond_s=0.1)
        for _ in range(2):
            st.op("plug")
            st.op("ev", request=True)
            if pay:
                time.sleep(0.3)
                st.op("tap", uid="04A1B2C3D4E5F6", hold_s=0.3)
            st.wait_for(lambda s: s["ev_i"][0] > 0, timeout=5, what="charging")
            st.op("ev", request=False)
            st.wait_for(lambda s: not s["contactor"], timeout=5)
            st.op("unplug")
            if pay:
                time.sleep(0.5)  # unplugged long enough to be seen: the session ends
        time.sleep(2.0 if pay else 1.0)  # status publishing (and the last acks) on it
        ok = st.proc.poll() is None and "MemoryError" not in st.stderr()
        if pay:
            ok = ok and len(set(acks)) >= 4  # two sessions, started and stopped
            if os.environ.get("EVSE_BENCH_DEBUG"):
                print("pay cycle: acks %r" % acks, st.stderr()[-600:])
        ok = ok and "firmware exited" not in st.stderr()
        return ok
    except (AssertionError, RuntimeError, OSError, ValueError):
        return False
    finally:
        stop.append(1)
        t.join(2)
        c.loop_stop()
        c.disconnect()
        st.stop()


def min_heap(broker, firmware=None, full=True, pay=False):
    lo, hi = 4, 256  # KiB on a 32-bit board ("w" scales to the host's word size)
    if not _cycle_ok("%dwK" % hi, broker, firmware, full, pay):
        return None
    while hi - lo > 2:
        mid = (lo + hi) // 2
        if _cycle_ok("%dwK" % mid, broker, firmware, full, pay):
            hi = mid
        else:
            lo = mid
    return hi


def publish_alloc():
    """Heap bytes the MQTT client allocates per publish and per socket write, measured by
    tools/mqtt_alloc.py on the unix port (collector off while counting)."""
    r = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "micropython"), "-X", "heapsize=4M",
         os.path.join(HERE, "mqtt_alloc.py"), os.path.join(ROOT, "firmware"), "sizes"],
        capture_output=True, text=True, timeout=120, check=True,
    )
    return json.loads(r.stdout)


def mpy_sizes():
    mpy = os.path.join(os.path.dirname(sys.executable), "mpy-cross")
    sizes = {}
    with tempfile.TemporaryDirectory() as d:
        for top in ("firmware",):
            for dirpath, _, files in os.walk(os.path.join(ROOT, top)):
                for f in sorted(files):
                    if not f.endswith(".py"):
                        continue
                    src = os.path.join(dirpath, f)
                    out = os.path.join(d, "m.mpy")
                    subprocess.run([mpy, "-O1", "-o", out, src], check=True)
                    sizes[os.path.relpath(src, ROOT)] = os.path.getsize(out)
    return sizes


def _wire(topic, payload, qos):
    """Bytes of a PUBLISH on the wire (fixed header, topic, packet id) plus its PUBACK."""
    body = 2 + len(topic) + len(payload) + (2 if qos else 0)
    hdr = 2 if body < 128 else 3
    return hdr + body + (4 if qos else 0)


def bandwidth():
    """Bytes per hour on the wire (MQTT packets, both directions) at default settings:
    packet sizes measured from a live station, multiplied by the default cadences."""
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    import json

    from mqttc import Collector

    with Broker() as b:
        mq = Collector(b.port, "evse/#")
        d = tempfile.mkdtemp(prefix="evse-bw-")
        st = Station(state_dir=d, broker="127.0.0.1:%d" % b.port)
        try:
            st.op("ev", respond_s=0.1)
            mq.wait_json("/meter", since=0)  # this station's first messages (fresh broker)
            idle_status = mq.wait_json("/status", since=0)
            idle_meter = mq.wait_json("/meter", since=0)
            cfg = None
            for t, p, _ in mq.msgs:
                if t.endswith("/config"):
                    cfg = json.loads(p)
            st.op("plug")
            st.op("ev", request=True)
            st.wait_for(lambda s: s["ev_i"][0] > 0, timeout=5)
            time.sleep(1.0)
            msgs = list(mq.msgs)
            ch_status = [p for t, p, _ in msgs if t.endswith("/status")][-1]
            n0 = len(msgs)
            t0 = time.monotonic()
            time.sleep(12)
            live = [(t, p) for t, p, _ in mq.msgs[n0:]]
            live_s = time.monotonic() - t0
        finally:
            st.stop()
            mq.stop()
    base = "evse/evse-435031"
    js = json.dumps
    sz_status_idle = _wire(base + "/status", js(idle_status, separators=(",", ":")), 1)
    sz_meter = _wire(base + "/meter", js(idle_meter, separators=(",", ":")), 0)
    sz_status_ch = _wire(base + "/status", ch_status, 1)
    ping = 4  # PINGREQ + PINGRESP
    ka = cfg["mqtt.keepalive_s"]
    idle = (3600 / cfg["status_interval_s"] * sz_status_idle
            + 3600 / cfg["meter_idle_interval_s"] * sz_meter + 3600 / (ka / 2) * ping)
    charging = (3600 / cfg["status_interval_s"] * sz_status_ch
                + 3600 / cfg["meter_interval_s"] * sz_meter)
    live_bytes = sum(_wire(t, p, 0 if t.endswith("/meter") else 1) for t, p in live)
    return {
        "status_bytes": sz_status_idle, "meter_bytes": sz_meter,
        "idle_per_h": idle, "charging_per_h": charging,
        "live_charging_per_h": live_bytes * 3600 / live_s, "cfg": cfg,
    }


def link_conditions():
    """Loop gap and C->B reaction while the link is refused, hung, flooded or restarted."""
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from test_link_resilience import HungBroker

    from broker import free_port

    out = []

    def measure(name, st, settle):
        st.op("ev", respond_s=0.05)
        st.op("plug")
        st.op("ev", request=True)
        _charge(st)
        st.op("stats", reset=True)
        settle()
        ms = []
        for _ in range(10):
            n = st.op("events", since=10**9)["next"]
            st.op("ev", request=False)
            ms.append(_reaction(st, n, "cp", "B"))
            st.op("ev", request=True)
            _charge(st)
        stats = st.op("stats")
        out.append((name, max(ms), stats["loop_max_gap_us"] / 1000, stats["fw_loop_max_gap_ms"]))

    st = Station(broker="127.0.0.1:%d" % free_port())
    try:
        measure("refused", st, lambda: time.sleep(3))
    finally:
        st.stop()
    hb = HungBroker()
    st = Station(broker="127.0.0.1:%d" % hb.port)
    try:
        measure("hung (accepts, silent)", st, lambda: time.sleep(6))
    finally:
        st.stop()
        hb.stop()
    b = Broker()
    st = Station(broker="127.0.0.1:%d" % b.port)

    def restart():
        port = b.port
        b.proc.kill()
        b.proc.wait()
        time.sleep(1)
        restart.b2 = Broker(port=port)
        time.sleep(4)

    restart.b2 = None
    try:
        def flood():
            import paho.mqtt.client as mqtt

            c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
            c.connect("127.0.0.1", b.port)
            c.loop_start()
            for i in range(1000):
                c.publish("evse/evse-435031/cmd", '{"rid":"f%d","cmd":"diag"}' % i, qos=0)
                time.sleep(0.001)
            c.loop_stop()
            c.disconnect()

        measure("flood 1000 cmds / 1 s", st, flood)

        measure("broker killed + restarted", st, restart)
    finally:
        st.stop()
        b.stop()
        if getattr(restart, "b2", None) is not None:
            restart.b2.stop()
    return out


def meter_polls():
    """Per profile: transactions and wire time of one poll at 9600 8N1, our plan against
    the naive plan (one read per quantity) and the lower bound (one frame's overhead plus
    only the needed registers)."""
    sys.path.insert(0, os.path.join(ROOT, "firmware"))
    from evse import meters

    def wire_ms(blocks):
        char_ms = 10 / 9600 * 1000
        t35 = 3.5 * char_ms
        return sum((8 + 5 + 2 * c) * char_ms + 2 * t35 for _, c in blocks)

    rows = []
    for name, (_fc, _order, _baud, mx, entries) in meters.PROFILES.items():
        plan = [(s, c) for s, c, _ in meters.plan(entries, mx)]
        naive = [(e[1], meters._WORDS[e[2]]) for e in entries]
        need = sum(meters._WORDS[e[2]] for e in entries)
        rows.append((name, len(plan), sum(c for _, c in plan), wire_ms(plan),
                     len(naive), wire_ms(naive), need, wire_ms([(0, need)])))
    return rows


def console_gaps():
    """Loop gap while a technician types service-kit commands at the console, charging."""
    st = Station(config=[NO_BROKER], console=True)
    out = []
    try:
        st.op("plug")
        st.op("ev", request=True)
        _charge(st)
        for cmd in ("s.status()", "s.config()", "s.meter()", "s.diag()", "s.log(20)",
                    "s.help()"):
            time.sleep(0.2)
            st.op("stats", reset=True)
            m = st.console_mark()
            for _ in range(5):
                st.type(cmd)
            st.console_wait("evse> " * 1, m)
            time.sleep(0.3)
            s = st.op("stats")
            out.append((cmd, s["loop_max_gap_us"] / 1000.0))
    finally:
        st.stop()
    return out


RFID_BENCH_SCRIPT = r"""
import sys
sys.path.insert(0, sys.argv[1])
import gc, json, time
from evse.rfid import Reader

with open(sys.argv[2]) as f:
    cases = json.load(f)


class Replay:
    # SPI answering from a trace recorded against the emulator: the driver is deterministic
    # in what MISO gives it, so it asks exactly the recorded questions.
    def __init__(self, steps):
        self.steps = [bytes.fromhex(m) for _, m in steps]
        self.i = 0

    def write_readinto(self, w, r):
        r[:] = self.steps[self.i]
        self.i += 1


out = []
for c in cases:
    spi = Replay(c["init"] + c["poll"])
    r = Reader((spi, lambda v: None), None, 0)
    n0 = len(c["init"])
    spi.steps = spi.steps[n0:]
    times, allocs, got = [], [], None
    for k in range(c["reps"]):
        spi.i = 0
        gc.collect()
        gc.disable()
        a = gc.mem_alloc()
        t0 = time.ticks_us()
        uid = r.poll(100 * (k + 1))
        dt = time.ticks_diff(time.ticks_us(), t0)
        allocs.append(gc.mem_alloc() - a)
        gc.enable()
        times.append(dt)
        got = got or uid
    times.sort()
    out.append({"name": c["name"], "us": times[len(times) // 2], "tap": got,
                "alloc": sorted(allocs)[len(allocs) // 2]})
print(json.dumps(out))
"""


def rfid_poll_cost(reps=200):
    """One Reader.poll() reading the chip (evse/rfid.py, evse/mfrc522.py) on the unix port:
    empty field, and a card of 4, 7 and 10 bytes lying there (the steady state: read, no
    tap). The SPI answers from a trace recorded against tools/simrfid.py, each wait met at
    its first status read, so the figure is the driver's own CPU time and the trace gives
    the bytes and transactions; the RF time comes from the emulator's frame timing."""
    import simrfid

    sys.path.insert(0, os.path.join(ROOT, "firmware"))
    from evse.events import Events
    from evse.rfid import Reader

    cases = []
    for name, uid in (("no card", None), ("4-byte UID", "04A1B2C3"),
                      ("7-byte UID", "04A1B2C3D4E5F6"), ("10-byte UID", "04A1B2C3D4E5F60718A9")):
        now = [0]

        def clock(now=now):
            now[0] += 5000  # every reply due by the next status read
            return now[0]

        chip = simrfid.Mfrc522(clock=clock)
        trace = []
        fell = [False]

        def cs(v, fell=fell):
            fell[0] = fell[0] or not v

        class Spi:
            def write_readinto(self, w, r, chip=chip, trace=trace, fell=fell):
                r[:] = chip.spi(bytes(w), fell[0])
                fell[0] = False
                trace.append((bytes(w).hex(), bytes(r).hex()))

        rd = Reader((Spi(), cs), Events(), 0)
        init = list(trace)
        if uid:
            chip.place(bytes.fromhex(uid))
            rd.poll(100)  # the tap
        del trace[:]
        b0, t0, a0 = chip.spi_bytes, chip.spi_transactions, chip.air_us
        rd.poll(200)
        cases.append({"name": name, "init": init, "poll": list(trace), "reps": reps,
                      "bytes": chip.spi_bytes - b0, "xfers": chip.spi_transactions - t0,
                      "air_us": chip.air_us - a0})
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "cases.json")
        with open(path, "w") as f:
            json.dump(cases, f)
        script = os.path.join(d, "rfid_bench.py")
        with open(script, "w") as f:
            f.write(RFID_BENCH_SCRIPT)
        r = subprocess.run([os.path.join(os.path.dirname(sys.executable), "micropython"),
                            script, os.path.join(ROOT, "firmware"), path],
                           capture_output=True, text=True, timeout=120, check=True)
    got = json.loads(r.stdout)
    return [dict(c, us=g["us"], alloc=g["alloc"]) for c, g in zip(cases, got)]


def print_sessions():
    """Tap to contactor, flash per session, outbox capacity (tools/benchsession.py)."""
    import benchsession

    sys.path.insert(0, os.path.join(ROOT, "firmware"))
    from evse.journal import OUTBOX_MAX

    with Broker() as b:
        r = benchsession.run("127.0.0.1:%d" % b.port)
    for what, key in (("a card on the local list", "local_ms"),
                      ("a card the backend accepts", "backend_ms")):
        ms = [x for x in r[key] if x is not None]
        print("Tap to contactor closed, %s (EV plugged in and asking; %d of %d trials): "
              "p50 %.0f ms, max %.0f ms" % (what, len(ms), len(r[key]),
                                           statistics.median(ms) if ms else float("nan"),
                                           max(ms) if ms else float("nan")))
    print("  (the close waits for PWM on, the EV's diode check and a settled C: 200 ms)")
    print("Flash per session (journal, acknowledged): %.1f writes, %.0f bytes; a session "
          "message is at most %s B" % (r["writes_per_session"], r["bytes_per_session"],
                                       r["message_bytes"]))
    print("Outbox: %d unacknowledged messages = %d sessions (about %d KB of journal)"
          % (OUTBOX_MAX, OUTBOX_MAX // 2, OUTBOX_MAX * (r["message_bytes"] or 400) // 1000))


def print_rfid_poll_cost():
    print("RFID poll (evse.rfid.Reader.poll reading the MFRC522, once per POLL_MS = 100 ms):")
    print("  %-12s %8s %7s %6s %9s %8s %8s %10s" % (
        "field", "unix us", "heap B", "xfers", "SPI bytes", "SPI us", "RF us", "ESP32 ms>="))
    for c in rfid_poll_cost():
        spi_us = c["bytes"] * 8  # 1 MHz
        print("  %-12s %8d %7d %6d %9d %8d %8.0f %10.1f" % (
            c["name"], c["us"], c["alloc"], c["xfers"], c["bytes"], spi_us, c["air_us"],
            (spi_us + c["air_us"]) / 1000))
    print("  (unix us: the driver's CPU time here, each wait met at its first status read;"
          " heap B: allocated per poll")
    print("   SPI us: those bytes at 1 MHz; RF us: the frames at 106 kbit/s, and the chip's"
          " 1 ms timer for")
    print("   an unanswered WUPA, spent polling the chip. ESP32 ms>=: SPI + RF, the floor of a"
          " poll there;")
    print("   each exchange's call overhead (xfers, not measured here) comes on top)")


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--trials", type=int, default=30)
    ap.add_argument("--skip-heap", action="store_true")
    ap.add_argument("--skip-link", action="store_true")
    a = ap.parse_args(argv)

    print("Contactor reaction (cause -> contactor commanded open), %d trials each" % a.trials)
    res, gap = reactions(a.trials)
    print("  %-22s %8s %8s %8s" % ("cause", "p50 ms", "p95 ms", "max ms"))
    for name, ms in res.items():
        print("  %-22s %8.1f %8.1f %8.1f" % (name, statistics.median(ms), pct(ms, 95), max(ms)))
    print("  limit (IEC 61851-1 Table A.6): 100 ms; goal: <= 20 ms max")
    print(
        "Control loop (period 5 ms): largest gap between iterations %.1f ms as the world saw "
        "it (%d of %d gaps over 10 ms); %d ms as the firmware measured it since boot" % gap
    )

    print("Control loop while a technician types at the service console (charging; each "
          "command typed 5 times):")
    for cmd, gap in console_gaps():
        print("  %-14s largest loop gap %5.1f ms (world)" % (cmd, gap))

    if not a.skip_heap:
        with Broker() as b:
            br = "127.0.0.1:%d" % b.port
            tree = mpy_tree()
            rows = (("plain, from .py source (compiled on the board)", min_heap(br, None, False)),
                    ("plain, from .mpy (as deployed)", min_heap(br, tree, False)),
                    ("with balancing and a schedule, from .mpy", min_heap(br, tree, True)),
                    ("with all that, cards, a tariff and acknowledged sessions, from .mpy",
                     min_heap(br, tree, True, True)))
        for what, heap in rows:
            print("Smallest heap for a full charge cycle with MQTT and Modbus, %s: %s" % (
                what, "%d KiB (-X heapsize=%dwK)" % (heap, heap) if heap else "> 256 KiB"))
        print("  (goal: 96 KiB from .mpy; a frozen image keeps its bytecode in flash, not here)")

    if not a.skip_link:
        print("Link conditions (10 C->B trials each while charging)")
        print("  %-28s %12s %14s %14s" % ("condition", "C->B max ms", "gap world ms",
                                           "gap fw ms"))
        for name, ms, gap, fw in link_conditions():
            print("  %-28s %12.1f %14.1f %14d" % (name, ms, gap, fw))
        print("  (world: between pilot samples seen by the runner, includes host scheduling;"
              " fw: the firmware's own loop timer, max since boot)")
        print("  goals: C->B <= 100 ms, loop gap <= 50 ms")
        bw = bandwidth()
        cfg = bw["cfg"]
        print("Bandwidth at defaults (status every %d s, meter every %d s charging / %d s "
              "idle, keepalive %d s):" % (cfg["status_interval_s"], cfg["meter_interval_s"],
                                          cfg["meter_idle_interval_s"], cfg["mqtt.keepalive_s"]))
        print("  status %d B, meter %d B on the wire (incl. header, topic, PUBACK)"
              % (bw["status_bytes"], bw["meter_bytes"]))
        print("  idle      %7.0f B/h  (goal <= 10 KB/h)" % bw["idle_per_h"])
        print("  charging  %7.0f B/h  (goal <= 100 KB/h); live 12 s sample: %.0f B/h"
              % (bw["charging_per_h"], bw["live_charging_per_h"]))

    word = 8 if sys.maxsize > 2**32 else 4  # the unix port's word is the host's
    print("MQTT publish, heap allocated on the unix port (%d-bit: one GC block is %d B), str "
          "payload, QoS 0/1, paced, socket taking 1..700 B per write:" % (word * 8, 4 * word))
    print("  %-8s %18s %14s %16s %14s" % ("payload", "publish + poll B", "in publish B",
                                          "per write B", "writes/publish"))
    for r in publish_alloc():
        print("  %-8d %18.0f %14.0f %16.1f %14.1f" % (
            r["payload"], r["alloc_per_publish"], r["alloc_in_publish"], r["alloc_per_write"],
            r["writes"] / r["publishes"]))
    print("  (in publish: the encoded topic and payload, objects sharing the str's bytes; per "
          "write: a view of the outbox ring; every poll adds %.0f B, its receive view)"
          % r["alloc_idle_poll"])

    print("Meter poll at 9600 8N1 (wire time incl. 2 x t3.5 per transaction, no slave delay)")
    print("  %-12s %5s %5s %9s | %10s %9s | %9s %9s" % (
        "profile", "reads", "regs", "ours ms", "naive reads", "naive ms", "min regs", "bound ms"))
    for r in meter_polls():
        print("  %-12s %5d %5d %9.1f | %10d %9.1f | %9d %9.1f" % r)
    print("  (the control loop gap above was measured with the SDM630 polled every second)")

    print_rfid_poll_cost()
    print_sessions()

    sizes = mpy_sizes()
    print("Firmware .mpy size (mpy-cross -O1): %d bytes in %d modules" % (sum(sizes.values()),
                                                                        len(sizes)))
    for k, v in sorted(sizes.items(), key=lambda kv: -kv[1]):
        print("  %-32s %6d" % (k, v))
    return 0


if __name__ == "__main__":
    sys.exit(main())
