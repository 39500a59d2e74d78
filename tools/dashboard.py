"""Live terminal demo of one simulated charger (`make sim`).

Starts a local MQTT broker and one simulated station (its flash in .sim/CP1, so sessions,
config and journals survive between demo runs), then shows the physical world (from the
control port) next to what the station tells a backend over MQTT, and lets you act as the
driver: plug, request charge, tap a card, inject faults.

    .venv/bin/python tools/dashboard.py                  # curses UI, keys shown on screen
    .venv/bin/python tools/dashboard.py --no-ui [--seconds N]   # scripted smoke test
"""

import argparse
import collections
import contextlib
import curses
import json
import os
import signal
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import paho.mqtt.client as mqtt  # noqa: E402

import simctl  # noqa: E402
from broker import Broker  # noqa: E402

STATION_ID = "CP1"
STATE_DIR = os.path.join(ROOT, ".sim", STATION_ID)
CARD_UID = "04A1B2C3D4E5F6"
VOLTAGE_V = 230.0  # what the simulated meter assumes per phase
TEMPS_C = (25.0, 65.0, 80.0)  # normal, derating, over-temperature
FAULT_KEYS = {"r": "rcd", "w": "weld", "d": "diode", "e": "cp_short"}
REFRESH_S = 0.2
RECENT_MSGS = 8

HELP = [  # each fits an 80-column terminal
    "keys: p plug  P plug 20 A cable  c EV requests charge  s EV stops  u unplug",
    "      t tap card  r RCD  w weld  d no diode  e CP short  h temp  q quit",
]


# -- MQTT: what a backend sees ------------------------------------------------------------


class MqttView:
    """Subscribes to evse/# and keeps the station's base topic, its latest status and the
    most recent messages. paho calls back on its own thread, so everything is locked."""

    def __init__(self, port):
        self._lock = threading.Lock()
        self.base = None
        self.status = None
        self.count = 0
        self.recent = collections.deque(maxlen=RECENT_MSGS)
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                                  client_id="evse-dashboard-%d" % os.getpid())
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        # Subscribing here (not once after connect) re-subscribes after a reconnect.
        client.subscribe("evse/#", qos=1)

    def _on_message(self, client, userdata, msg):
        text = msg.payload.decode("utf-8", "replace")
        with self._lock:
            self.count += 1
            self.recent.appendleft((time.strftime("%H:%M:%S"), msg.topic, text, msg.retain))
            if msg.topic.endswith("/status"):
                # The base topic depends on the station's config; learn it from the traffic.
                self.base = msg.topic[: -len("/status")]
                with contextlib.suppress(ValueError):
                    self.status = json.loads(text)
        if msg.topic.endswith("/session"):
            self._ack_session(msg.topic, text)

    def _ack_session(self, topic, text):
        # The demo plays the backend: unacknowledged session messages pile up on the
        # persistent flash run after run, and a full outbox stops new sessions.
        with contextlib.suppress(ValueError, TypeError, KeyError):
            seq = json.loads(text)["seq"]
            self.client.publish(topic + "/ack", json.dumps({"seq": seq}), qos=1)

    def connector(self, cid=1):
        """The latest status entry for one connector, or None."""
        with self._lock:
            for c in (self.status or {}).get("connectors") or ():
                if isinstance(c, dict) and c.get("id") == cid:
                    return dict(c)
        return None

    def messages(self):
        with self._lock:
            return list(self.recent), self.count, self.base

    def close(self):
        self.client.loop_stop()
        self.client.disconnect()


# -- starting and stopping everything -----------------------------------------------------


DEFERRED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@contextlib.contextmanager
def deferred_signals():
    """Hold Ctrl-C and SIGTERM back while a child starts: an exception inside Station() would
    lose the only handle on a process that runs in its own session and would outlive us.
    A signal that came meanwhile is re-raised afterwards, to the usual handler."""
    hit = []
    old = {s: signal.signal(s, lambda signum, frame: hit.append(signum))
           for s in DEFERRED_SIGNALS}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
    if hit:
        signal.raise_signal(hit[0])


def start_all(stack, say=print):
    """Broker, MQTT view and station; each registers its own stop on `stack` (run in reverse
    order on exit, whatever the reason)."""
    say("starting the MQTT broker ...")
    with deferred_signals():
        broker = stack.enter_context(Broker())
    say("broker: %s on 127.0.0.1:%d" % (broker.kind, broker.port))
    view = MqttView(broker.port)
    stack.callback(view.close)
    # Station opens its stderr log inside state_dir before starting, so it must exist.
    os.makedirs(STATE_DIR, exist_ok=True)
    say("starting station %s (flash in %s) ..." % (STATION_ID, os.path.relpath(STATE_DIR)))
    with deferred_signals():
        station = simctl.Station(broker="127.0.0.1:%d" % broker.port, station_id=STATION_ID,
                                 state_dir=STATE_DIR)
        stack.callback(station.stop)
    say("station ready: control port %d" % station.port)
    return broker, view, station


def exit_on_sigterm():
    """SIGTERM/SIGHUP (kill, closed terminal or tmux pane) unwind like Ctrl-C does, so the
    children are stopped and the terminal restored."""
    def handler(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGHUP, handler)


# -- formatting ---------------------------------------------------------------------------


def power_w(snap):
    return sum(snap.get("ev_i") or ()) * VOLTAGE_V


def fmt_num(v, unit, digits=1):
    return "-" if v is None else "%.*f %s" % (digits, v, unit)


def fmt_contactor(snap):
    cmd, fb = snap.get("contactor"), snap.get("contactor_feedback")
    text = "commanded %s, feedback %s" % ("ON" if cmd else "off",
                                          "closed" if fb else "open")
    if fb is not None and cmd != fb:
        text += "  << MISMATCH"
    return text


def fmt_cp(snap):
    cp = snap.get("cp", "?")
    v = snap.get("cp_high_v")
    return cp if v is None else "%s  (%+.1f V)" % (cp, v)


def world_rows(snap, faults):
    """(label, value) rows for the physical side, from the control port's `get`."""
    ev_i = snap.get("ev_i") or [0.0, 0.0, 0.0]
    on = [k for k, v in faults.items() if v]
    return [
        ("CP state", fmt_cp(snap)),
        ("PWM duty", fmt_num(snap.get("pwm_duty_pct"), "%")),
        ("Offered", fmt_num(snap.get("offered_a"), "A")),
        ("Contactor", fmt_contactor(snap)),
        ("EV current", " / ".join("%.1f" % i for i in ev_i) + " A"),
        ("Power", "%.2f kW" % (power_w(snap) / 1000)),
        ("Energy", "%d Wh" % snap.get("energy_wh", 0)),
        ("Temperature", fmt_num(snap.get("temp_c"), "C")),
        ("Plugged", "yes" if snap.get("plugged") else "no"),
        ("Faults", ", ".join(on) if on else "none"),
    ]


def station_rows(conn):
    """(label, value) rows for what the station publishes in <base>/status."""
    if conn is None:
        return [("State", "(no status yet)")]
    limit = conn.get("limit_a")
    return [
        ("State", str(conn.get("state"))),
        ("CP", str(conn.get("cp"))),
        ("Offered", fmt_num(conn.get("offered_a"), "A")),
        ("Limit", "%s by %s" % (fmt_num(limit, "A"), conn.get("limit_by"))),
        ("Session", str(conn.get("session") or "-")),
        ("Error", str(conn.get("error") or "-")),
    ]


def one_line(text):
    return " ".join(text.split())


# -- curses UI ----------------------------------------------------------------------------


class Ui:
    """The interactive dashboard: redraws every REFRESH_S and applies one key at a time."""

    def __init__(self, scr, broker, view, station):
        self.scr = scr
        self.broker = broker
        self.view = view
        self.station = station
        self.faults = {kind: False for kind in FAULT_KEYS.values()}
        self.temp_i = 0  # the world starts at TEMPS_C[0]
        self.last = "ready"
        self.colors = self._init_colors()

    @staticmethod
    def _init_colors():
        if not curses.has_colors():
            return {}
        curses.start_color()
        with contextlib.suppress(curses.error):
            curses.use_default_colors()
        pairs = {"good": curses.COLOR_GREEN, "bad": curses.COLOR_RED,
                 "warn": curses.COLOR_YELLOW, "head": curses.COLOR_CYAN}
        out = {}
        for n, (name, fg) in enumerate(pairs.items(), start=1):
            with contextlib.suppress(curses.error):
                curses.init_pair(n, fg, -1)
                out[name] = curses.color_pair(n)
        return out

    def run(self):
        curses.curs_set(0)
        next_draw = 0.0
        while True:
            now = time.monotonic()
            if now >= next_draw:
                self.draw()
                next_draw = now + REFRESH_S
            # Wait for a key only until the next redraw is due, so keys act at once.
            self.scr.timeout(max(1, int((next_draw - time.monotonic()) * 1000)))
            key = self.scr.getch()
            if key == -1 or key == curses.KEY_RESIZE:
                continue
            ch = chr(key) if 0 <= key < 256 else ""
            if ch == "q":
                return
            self.handle(ch)
            next_draw = 0.0  # show the effect of the key right away

    # -- keys ------------------------------------------------------------------------
    def action(self, ch):
        """(description, op name, op args) for a key, or None."""
        if ch == "p":
            return "plug in (tethered cable)", "plug", {"cable_a": None}
        if ch == "P":
            return "plug in (20 A Type 2 cable)", "plug", {"cable_a": 20}
        if ch == "c":
            return "EV requests charge", "ev", {"request": True}
        if ch == "s":
            return "EV stops requesting", "ev", {"request": False}
        if ch == "u":
            return "unplug", "unplug", {}
        if ch == "t":
            return "tap card " + CARD_UID, "tap", {"uid": CARD_UID}
        if ch in FAULT_KEYS:
            kind = FAULT_KEYS[ch]
            on = not self.faults[kind]
            what = "%s fault %s" % (kind, "on" if on else "off")
            return what, "fault", {"kind": kind, "on": on}
        if ch == "h":  # cycles through TEMPS_C
            c = TEMPS_C[(self.temp_i + 1) % len(TEMPS_C)]
            return "temperature %.0f C" % c, "temp", {"c": c}
        return None

    def handle(self, ch):
        act = self.action(ch)
        if act is None:
            self.last = "unknown key %r (see the keys below)" % ch
            return
        what, op, args = act
        try:
            reply = self.station.op(op, **args)
        except (OSError, ValueError) as e:  # station gone, or a garbled reply
            self.last = "%s: error: %s" % (what, e)
            return
        if not reply.get("ok"):
            self.last = "%s: error: %s" % (what, reply.get("error"))
            return
        self.last = "%s: ok" % what
        # Track toggles only once the world accepted them.
        if op == "fault":
            self.faults[args["kind"]] = args["on"]
        elif op == "temp":
            self.temp_i = (self.temp_i + 1) % len(TEMPS_C)

    # -- drawing ---------------------------------------------------------------------
    def put(self, y, x, text, attr=0):
        """Write clipped to the screen; curses raises on the last cell, which is harmless."""
        h, w = self.scr.getmaxyx()
        if 0 <= y < h and x < w:
            with contextlib.suppress(curses.error):
                self.scr.addnstr(y, x, text, w - x - 1, attr)

    def state_attr(self, state):
        if state == "Charging":
            return self.colors.get("good", 0) | curses.A_BOLD
        if state in ("Faulted", "Unavailable"):
            return self.colors.get("bad", 0) | curses.A_BOLD
        if state in ("SuspendedEV", "SuspendedEVSE", "Preparing", "Finishing"):
            return self.colors.get("warn", 0)
        return 0

    def section(self, y, x, title, rows, value_attr=None):
        self.put(y, x, title, self.colors.get("head", 0) | curses.A_BOLD)
        for i, (label, value) in enumerate(rows, start=1):
            self.put(y + i, x, "  %-12s %s" % (label, value),
                     value_attr(label, value) if value_attr else 0)
        return y + len(rows) + 1

    def draw(self):
        try:
            snap = self.station.op("get")
        except (OSError, ValueError) as e:
            snap = {"cp": "?"}
            self.last = "control port: %s" % e
        conn = self.view.connector()
        msgs, count, base = self.view.messages()
        h, w = self.scr.getmaxyx()
        self.scr.erase()
        self.put(0, 0, "EVSE simulator  station %s  broker %s 127.0.0.1:%d  flash %s"
                 % (base or "(waiting for MQTT)", self.broker.kind, self.broker.port,
                    os.path.relpath(STATE_DIR)), curses.A_BOLD)

        def status_attr(label, value):
            if label == "State":
                return self.state_attr(value)
            if label == "Error" and value != "-":
                return self.colors.get("bad", 0) | curses.A_BOLD
            return 0

        world = world_rows(snap, self.faults)
        station = station_rows(conn)
        # Side by side when there is room, else stacked.
        if w >= 100:
            y = max(self.section(2, 0, "Physical world (control port)", world),
                    self.section(2, 60, "Station (MQTT <base>/status)", station,
                                 status_attr))
        else:
            y = self.section(2, 0, "Physical world (control port)", world)
            y = self.section(y + 1, 0, "Station (MQTT <base>/status)", station, status_attr)
        self.draw_messages(y + 1, msgs, count, h - 4)
        self.draw_footer(h)
        self.scr.refresh()

    def draw_messages(self, y, msgs, count, last_row):
        self.put(y, 0, "MQTT messages, newest first (%d received)" % count,
                 self.colors.get("head", 0) | curses.A_BOLD)
        for i, (ts, topic, payload, retain) in enumerate(msgs, start=1):
            if y + i > last_row:
                break
            self.put(y + i, 0, "  %s %s %s %s" % (ts, "R" if retain else " ", topic,
                                                  one_line(payload)))

    def draw_footer(self, h):
        for i, line in enumerate(HELP):
            self.put(h - 3 + i, 0, line, curses.A_DIM)
        attr = curses.A_REVERSE
        if "error" in self.last:
            attr |= self.colors.get("bad", 0)
        self.put(h - 1, 0, " last: " + self.last + " ", attr)


def run_ui():
    with contextlib.ExitStack() as stack:
        broker, view, station = start_all(stack)
        # curses.wrapper restores the terminal on any exit, before the stack stops the rest.
        curses.wrapper(lambda scr: Ui(scr, broker, view, station).run())
    return 0


# -- scripted demo (--no-ui) --------------------------------------------------------------


def snapshot_line(t0, snap, conn):
    ev_i = snap.get("ev_i") or []
    state = conn.get("state") if conn else "-"
    return ("t=%4.1fs cp=%s duty=%s offered=%s contactor=%s/%s ev_i=%s P=%.0f W "
            "E=%d Wh status=%s" % (
                time.monotonic() - t0, snap.get("cp"), fmt_num(snap.get("pwm_duty_pct"), "%"),
                fmt_num(snap.get("offered_a"), "A"), snap.get("contactor"),
                snap.get("contactor_feedback"), "/".join("%.1f" % i for i in ev_i),
                power_w(snap), snap.get("energy_wh", 0), state))


def wait_until(pred, timeout, what):
    """Poll pred() until true; raise with `what` on timeout."""
    end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > end:
            raise TimeoutError("timed out waiting for " + what)
        time.sleep(0.05)


def step(station, op, **args):
    reply = station.op(op, **args)
    print("> %s %s -> %s" % (op, json.dumps(args) if args else "", "ok" if reply.get("ok")
                             else "error: %s" % reply.get("error")))
    if not reply.get("ok"):
        raise RuntimeError("control op %s failed: %s" % (op, reply.get("error")))
    return reply


def mqtt_state(view):
    conn = view.connector()
    return conn.get("state") if conn else None


def print_events(events, since):
    """Counts per kind, then the timeline since the plug, relative to it."""
    counts = collections.Counter(e["what"] for e in events)
    print("events log: %d events (%s)" % (len(events), ", ".join(
        "%s %d" % kv for kv in sorted(counts.items()))))
    tail = events[since:]
    t0 = tail[0]["t_us"] if tail else 0
    for e in tail:
        print("  %+9.3f s  %-18s %s" % ((e["t_us"] - t0) / 1e6, e["what"],
                                        json.dumps(e["value"])))


def run_script(seconds):
    with contextlib.ExitStack() as stack:
        broker, view, station = start_all(stack)
        since = station.op("events")["next"]
        t0 = time.monotonic()
        step(station, "plug", cable_a=None)
        # A real EV closes S2 only once the station offers current (PWM on the pilot).
        wait_until(lambda: station.op("get")["pwm_duty_pct"] is not None, 10, "PWM offer")
        print(snapshot_line(t0, station.op("get"), view.connector()))
        step(station, "ev", request=True)
        wait_until(lambda: power_w(station.op("get")) > 0, 15, "the EV to draw current")
        wait_until(lambda: mqtt_state(view) == "Charging", 10, "MQTT status Charging")
        print("charging after %.1f s" % (time.monotonic() - t0))
        for _ in range(seconds):
            print(snapshot_line(t0, station.op("get"), view.connector()))
            time.sleep(1.0)
        step(station, "ev", request=False)
        wait_until(lambda: not station.op("get")["contactor"], 10, "the contactor to open")
        print(snapshot_line(t0, station.op("get"), view.connector()))
        step(station, "unplug")
        wait_until(lambda: mqtt_state(view) == "Available", 10, "MQTT status Available")
        print(snapshot_line(t0, station.op("get"), view.connector()))
        print_events(station.op("events")["events"], since)
        _, count, base = view.messages()
        print("mqtt: %d messages from %s, last status %s" % (count, base, mqtt_state(view)))
    print("stopped station and broker")
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--no-ui", action="store_true",
                    help="run a scripted demo printing plain lines, then exit")
    ap.add_argument("--seconds", type=int, default=5, metavar="N",
                    help="--no-ui: print a snapshot every second for N seconds (default 5)")
    args = ap.parse_args(argv)
    if args.seconds < 0:
        ap.error("--seconds must be >= 0")
    exit_on_sigterm()
    try:
        return run_script(args.seconds) if args.no_ui else run_ui()
    except KeyboardInterrupt:
        print("dashboard: interrupted; station and broker stopped", file=sys.stderr)
        return 130
    except (RuntimeError, TimeoutError, AssertionError) as e:
        # Everything is already stopped; keep the report short and point at the logs.
        print("dashboard: %s\nstation log: %s" % (e, os.path.join(STATE_DIR, "sim.stderr")),
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
