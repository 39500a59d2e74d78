"""Fleet bench (make bench-fleet): 1,000 stations of real firmware against one mosquitto.

The stations run in a few tools/fleetsim.py processes (its docstring says why CPython
processes and not one MicroPython unix-port process per station; this bench measures one
unix-port station to put a figure on it). The bench waits for every retained `online`, then
measures and prints, never asserts:
 (a) the round trip of a `set_limit` sent to every station at once, to each one's reply,
     and how many statuses then show the limit; with tools/fleet.py present, the time of its
     whole `limit --all 16` invocation;
 (b) sessions starting and stopping across the fleet for --seconds, stored and acknowledged
     by the ledger worker (tools/ledger.py on a throwaway SQLite or PostgreSQL database; the
     bench's minimal Acker when that tool is absent or --worker acker): ingest rate, lag
     from the station's flash write to the worker and to the ack back at the station, and,
     after the fleet stops plugging in and the outboxes drain, sessions lost (each
     station's seq and outbox against what the worker stored: must be 0) and duplicates;
 (c) the RSS of the broker, the worker and the fleet processes (per station), CPU per step;
 (d) the OCPP bridge: --ocpp-stations (200) more stations, in a fleet process of their own
     under the topic prefix `ocpp` (only the bridge acknowledges their session records; the
     ledger listens on `evse`), through one tools/ocpp_bridge.py process to a test CSMS
     written here (the ocpp package): time until all booted, a SetChargingProfile to all at
     once (round trip to each conf), and, after they stop plugging in and drain, each
     station's Start/StopTransactions at the CSMS against the session messages it wrote
     (lost, doubled); the bridge's memory and CPU.
"""

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from broker import Broker, stop_process  # noqa: E402
from fleetsim import rss_kb  # noqa: E402

PREFIX = "evse"
LIMIT_A = 16


def pct(values, p):
    """The p-th percentile (nearest rank) of values, or None for none."""
    if not values:
        return None
    v = sorted(values)
    return v[min(len(v) - 1, max(0, int(round(p / 100.0 * len(v) + 0.5)) - 1))]


def _client(broker, name):
    import paho.mqtt.client as mqtt

    host, _, port = broker.rpartition(":")
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="%s-%d" % (name, os.getpid()))
    c.max_inflight_messages_set(0)  # 0: no limit; a burst to 1,000 stations is not held back
    c.max_queued_messages_set(0)
    return c, host, int(port)


class Acker:
    """The minimal ledger stand-in: stores every session message (in memory) and then
    acknowledges it, as docs/mqtt.md (Sessions) asks of a backend; repeats are counted and
    acknowledged again."""

    def __init__(self, broker, prefix=PREFIX):
        self.prefix = prefix
        self.stored = {}  # (station, seq) -> (time.time() first received, message)
        self.received = 0
        self.dups = 0
        self.bad = 0
        self.lock = threading.Lock()
        c, host, port = _client(broker, "acker")
        c.on_connect = lambda cl, ud, fl, rc, pr: cl.subscribe(prefix + "/+/session", 1)
        c.on_message = self._on
        c.connect(host, port, 60)
        c.loop_start()
        self.c = c

    def _on(self, client, userdata, m):
        t = time.time()
        station = m.topic.split("/")[-2]
        try:
            d = json.loads(m.payload)
            seq = d["seq"]
        except (ValueError, KeyError, TypeError):
            self.bad += 1
            return
        with self.lock:
            self.received += 1
            key = (station, seq)
            if key in self.stored:
                self.dups += 1
            else:
                self.stored[key] = (t, d)
        client.publish("%s/%s/session/ack" % (self.prefix, station),
                       json.dumps({"seq": seq}), qos=1)

    def dump(self):
        with self.lock:
            recs = [[s, q, t, d.get("event")] for (s, q), (t, d) in self.stored.items()]
            return {"records": recs, "received": self.received, "dups": self.dups,
                    "bad": self.bad, "rss_kb": rss_kb()}

    def stop(self):
        self.c.loop_stop()
        self.c.disconnect()


def acker_main(broker):
    """`benchfleet.py --acker HOST:PORT`: an Acker in a process of its own (so its memory is
    its own), answering "dump" lines on stdin with one JSON line; EOF ends it."""
    a = Acker(broker)
    try:
        sys.stdout.write('{"ready":true}\n')
        sys.stdout.flush()
        for line in sys.stdin:
            if line.strip() == "dump":
                sys.stdout.write(json.dumps(a.dump()) + "\n")
                sys.stdout.flush()
    finally:
        a.stop()


class Child:
    """A child process spoken to in JSON lines over stdin/stdout."""

    def __init__(self, cmd):
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, cwd=ROOT)
        self.first = self.read()

    def read(self):
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("child %s exited (%s)" % (self.proc.args, self.proc.poll()))
        return json.loads(line)

    def ask(self, line):
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return self.read()

    def stop(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()  # EOF: the child ends and cleans up after itself
                self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                stop_process(self.proc)


class Observer:
    """Watches online, reply and status of every station (one wildcard subscription)."""

    def __init__(self, broker):
        self.online = set()
        self.replies = {}  # rid -> (time.monotonic() of arrival, reply)
        self.limits = {}  # station -> (limit_a, limit_by) of its latest status
        self.cv = threading.Condition()
        c, host, port = _client(broker, "observer")
        c.on_connect = lambda cl, ud, fl, rc, pr: cl.subscribe(
            [(PREFIX + "/+/online", 1), (PREFIX + "/+/reply", 1), (PREFIX + "/+/status", 0)])
        c.on_message = self._on
        c.connect(host, port, 60)
        c.loop_start()
        self.c = c

    def _on(self, client, userdata, m):
        t = time.monotonic()
        _, station, kind = m.topic.split("/", 2)
        with self.cv:
            if kind == "online":
                if m.payload == b"online":
                    self.online.add(station)
                else:
                    self.online.discard(station)
            elif kind == "reply":
                r = json.loads(m.payload)
                self.replies.setdefault(r.get("rid"), (t, r))
            elif kind == "status":
                c = json.loads(m.payload)["connectors"][0]
                self.limits[station] = (c["limit_a"], c["limit_by"])
            self.cv.notify_all()

    def wait(self, pred, timeout_s):
        end = time.monotonic() + timeout_s
        with self.cv:
            while not pred():
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self.cv.wait(min(left, 0.5))
        return True

    def stop(self):
        self.c.loop_stop()
        self.c.disconnect()


def broadcast_minimal(observer, broker, ids, cmd, timeout_s):
    """{station: (reply arrived or None, round trip s)}: one command to every station at
    once, each timed from its publish to its reply. Stands in for tools/fleetcmd.py's
    broadcast() until that exists."""
    c, host, port = _client(broker, "bench-cmd")
    c.connect(host, port, 60)
    c.loop_start()
    try:
        run = "b%d" % int(time.time())
        sent = {}
        for sid in ids:
            d = dict(cmd, rid="%s-%s" % (run, sid))
            sent[sid] = time.monotonic()
            c.publish("%s/%s/cmd" % (PREFIX, sid), json.dumps(d), qos=1)
        rids = ["%s-%s" % (run, sid) for sid in ids]
        observer.wait(lambda: all(r in observer.replies for r in rids), timeout_s)
        out = {}
        for sid, rid in zip(ids, rids):
            got = observer.replies.get(rid)
            out[sid] = (None, None) if got is None else (got[1], got[0] - sent[sid])
        return out
    finally:
        c.loop_stop()
        c.disconnect()


def broadcast(observer, broker, ids, cmd, timeout_s):
    """tools/fleetcmd.py's broadcast() (another helper's) when present, else ours; returns
    (which, {station: (reply or None, round trip s)})."""
    try:
        import fleetcmd
    except ImportError:
        return "bench's own client", broadcast_minimal(observer, broker, ids, cmd, timeout_s)
    try:
        with fleetcmd.Conn(broker=broker, prefix=PREFIX) as conn:
            return "tools/fleetcmd.py", fleetcmd.broadcast(conn, ids, cmd, timeout_s)
    except Exception as e:  # noqa: BLE001 - its API changed under us: say so, measure anyway
        print("fleetcmd.broadcast not usable (%r): the bench's own client instead" % (e,))
        return "bench's own client", broadcast_minimal(observer, broker, ids, cmd, timeout_s)


def fleet_cli_limit(broker, n):
    """(wall time s of the whole `tools/fleet.py limit --all` invocation, or None; what it
    said): discovery, the commands, the replies and the CLI's own start-up."""
    path = os.path.join(HERE, "fleet.py")
    if not os.path.exists(path):
        return None, "tools/fleet.py not present yet (hook)"
    tmp = tempfile.mkdtemp(prefix="evse-fleetdb-")
    try:
        cmd = [sys.executable, path, "limit", "--all", "--current-a", str(LIMIT_A),
               "--broker", broker, "--db", os.path.join(tmp, "fleet.db"), "--json"]
        t0 = time.monotonic()
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp)
        dt = time.monotonic() - t0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if r.returncode != 0:
        return None, "exit %d: %s" % (r.returncode, (r.stderr or r.stdout)[-300:].strip())
    try:
        sm = json.loads(r.stdout)["summary"]
        said = "%d stations: %d ok, %d failed, %d timed out" % (
            sm["stations"], sm["ok"], sm["failed"], sm["timeout"])
    except (ValueError, KeyError, TypeError):
        said = (r.stdout.strip().splitlines() or [""])[-1][:200]
    return dt, said


class AckerWorker:
    """The minimal Acker in a process of its own (so its memory is its own)."""

    def __init__(self, broker):
        self.kind = "minimal acker (benchfleet.Acker)"
        self.child = Child([sys.executable, os.path.abspath(__file__), "--acker", broker])
        self.pid = self.child.proc.pid

    def dump(self):
        return self.child.ask("dump")

    def stop(self):
        self.child.stop()


class LedgerWorker:
    """tools/ledger.py's worker (another helper's) in its own process on a throwaway
    database, SQLite or PostgreSQL (tools/pgserver.py); what it stored is read back from its
    ledger_records table, its duplicates from its stats file."""

    def __init__(self, broker, db_kind):
        self.tmp = tempfile.mkdtemp(prefix="evse-ledger-")
        self.pg = None
        self.proc = None
        self.log = None
        try:
            self._start(broker, db_kind)
        except BaseException:
            self.stop()  # the database server, if it was started
            raise

    def _start(self, broker, db_kind):
        if db_kind == "postgres":
            from pgserver import PgServer

            self.pg = PgServer()
            self.url = self.pg.url
        else:
            self.url = os.path.join(self.tmp, "ledger.db")
        self.kind = "tools/ledger.py on %s" % ("PostgreSQL" if self.pg else "SQLite")
        self.stats_path = os.path.join(self.tmp, "stats.json")
        self.log = open(os.path.join(self.tmp, "ledger.log"), "wb")
        self.proc = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "ledger.py"), "--db", self.url, "--broker",
             broker, "--stats-file", self.stats_path, "--stats-interval-s", "1"],
            stdout=self.log, stderr=subprocess.STDOUT, cwd=self.tmp)
        self.pid = self.proc.pid
        # Subscribed before the fleet starts: a record published before would only come
        # again at the station's next reconnect or 300 s resend.
        end = time.monotonic() + 20
        while not self.stats().get("connected"):
            if self.proc.poll() is not None or time.monotonic() > end:
                raise RuntimeError("ledger worker did not come up: %s" % self.tail())
            time.sleep(0.2)

    def stats(self):
        try:
            with open(self.stats_path) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}

    def tail(self):
        try:
            with open(os.path.join(self.tmp, "ledger.log"), "rb") as f:
                return f.read()[-600:].decode("utf-8", "replace")
        except OSError:
            return ""

    def dump(self):
        import db

        d = db.connect(self.url)
        try:
            rows = d.execute("SELECT station, seq, received_ms, event FROM ledger_records")
        finally:
            d.close()
        st = self.stats()
        return {"records": [[s, q, ms / 1000.0, ev] for s, q, ms, ev in rows],
                "received": st.get("received"), "dups": st.get("duplicates", 0),
                "bad": st.get("malformed"), "rss_kb": rss_kb(self.pid), "stats": st}

    def stop(self):
        try:
            if self.proc is not None:
                stop_process(self.proc, 15)  # the worker commits what it holds, then exits
        finally:
            if self.log is not None:
                self.log.close()
            if self.pg is not None:
                self.pg.stop()
            shutil.rmtree(self.tmp, ignore_errors=True)


def start_worker(broker, which, db_kind):
    """The session worker: tools/ledger.py when present (or asked for), else the Acker."""
    have = os.path.exists(os.path.join(HERE, "ledger.py"))
    if which == "ledger" or (which == "auto" and have):
        if db_kind == "auto":
            from pgserver import available

            db_kind = "postgres" if available() else "sqlite"
        return LedgerWorker(broker, db_kind)
    return AckerWorker(broker)


def unix_port_station(broker, sample_s=3.0):
    """One simulated station on the MicroPython unix port (tools/sim.py), once online:
    RSS in KiB of the micropython process and of its CPython world runner, and the CPU
    share of a core each uses: (mpy_kb, runner_kb, mpy_cpu, runner_cpu)."""
    from simctl import Station

    st = Station(broker=broker, station_id="UXP1")
    try:
        time.sleep(2)  # connected and publishing by now
        pids = [st.proc.pid] + _children(st.proc.pid)
        c0 = [cpu_s(p) or 0 for p in pids]
        time.sleep(sample_s)
        cpu = [((cpu_s(p) or 0) - c) / sample_s for p, c in zip(pids, c0)]
        return (sum(rss_kb(p) or 0 for p in pids[1:]), rss_kb(pids[0]), sum(cpu[1:]), cpu[0])
    finally:
        st.stop()
        shutil.rmtree(st.state_dir, ignore_errors=True)


def _children(pid):
    """The pids whose parent is pid (Linux /proc)."""
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open("/proc/%s/stat" % d) as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(d))
            except (OSError, IndexError, ValueError):
                pass
    return out


# -- (d) the OCPP bridge: a test CSMS and one bridge process ---------------------------------

def _iso():
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _csms_cp_class():
    """The CSMS's side of one charge point (the ocpp package, imported only for (d))."""
    from ocpp.routing import on
    from ocpp.v16 import ChargePoint, call_result
    from ocpp.v16.enums import Action

    class Cp(ChargePoint):
        def __init__(self, cp_id, ws, csms):
            super().__init__(cp_id, ws)
            self.csms = csms

        @on(Action.boot_notification)
        def on_boot(self, **kw):
            self.csms.seen(self.id, "BootNotification")
            return call_result.BootNotification(current_time=_iso(), interval=300,
                                                status="Accepted")

        @on(Action.heartbeat)
        def on_heartbeat(self, **kw):
            return call_result.Heartbeat(current_time=_iso())

        @on(Action.status_notification)
        def on_status(self, **kw):
            self.csms.seen(self.id, "StatusNotification")
            return call_result.StatusNotification()

        @on(Action.authorize)
        def on_authorize(self, id_tag, **kw):
            return call_result.Authorize(id_tag_info={"status": "Accepted"})

        @on(Action.start_transaction)
        def on_start_tx(self, **kw):  # (start() is ChargePoint's own)
            self.csms.seen(self.id, "StartTransaction")
            return call_result.StartTransaction(transaction_id=self.csms.txid(),
                                                id_tag_info={"status": "Accepted"})

        @on(Action.stop_transaction)
        def on_stop_tx(self, **kw):
            self.csms.seen(self.id, "StopTransaction")
            return call_result.StopTransaction()

        @on(Action.meter_values)
        def on_meter(self, **kw):
            return call_result.MeterValues()

    return Cp


class Csms:
    """A test CSMS on 127.0.0.1 (its own thread and event loop): accepts every charge point
    with the bench's password, answers at once, counts what each one sends."""

    def __init__(self, password):
        from websockets.asyncio.server import basic_auth, serve

        from broker import free_port

        self.port = free_port()
        self.cp_class = _csms_cp_class()
        self.cps = {}
        self.counts = {}  # action -> {station: n}
        self.lock = threading.Lock()
        self._tx = 0
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

        async def go():
            return await serve(self._handler, "127.0.0.1", self.port, subprotocols=["ocpp1.6"],
                               process_request=basic_auth(
                                   realm="ocpp", check_credentials=lambda u, p: p == password))
        self.server = self.do(go())

    def do(self, coro, timeout_s=60):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    async def _handler(self, ws):
        cp = self.cp_class(ws.request.path.rstrip("/").rsplit("/", 1)[-1], ws, self)
        self.cps[cp.id] = cp
        try:
            await cp.start()
        except Exception:  # noqa: BLE001 - the connection closed: the bridge reconnects
            pass

    def seen(self, station, action):
        with self.lock:
            d = self.counts.setdefault(action, {})
            d[station] = d.get(station, 0) + 1

    def count(self, action, stations=None):
        with self.lock:
            d = self.counts.get(action, {})
            return sum(n for s, n in d.items() if stations is None or s in stations)

    def stations(self, action):
        with self.lock:
            return set(self.counts.get(action, {}))

    def txid(self):
        with self.lock:
            self._tx += 1
            return self._tx

    def broadcast_limit(self, stations, amps):
        """SetChargingProfile (ChargePointMaxProfile, amps) to every station at once:
        {station: (status or None, round trip s)}."""
        from ocpp.v16 import call

        prof = {"chargingProfileId": 1, "stackLevel": 0,
                "chargingProfilePurpose": "ChargePointMaxProfile",
                "chargingProfileKind": "Absolute",
                "chargingSchedule": {"chargingRateUnit": "A", "chargingSchedulePeriod": [
                    {"startPeriod": 0, "limit": float(amps)}]}}

        async def one(sid):
            t0 = time.monotonic()
            try:
                r = await self.cps[sid].call(call.SetChargingProfile(
                    connector_id=0, cs_charging_profiles=prof))
                return sid, (r.status, time.monotonic() - t0)
            except Exception:  # noqa: BLE001 - no answer, or not connected
                return sid, (None, time.monotonic() - t0)

        async def all_():
            return dict(await asyncio.gather(*[one(s) for s in stations]))

        return self.do(all_(), 120)

    def close(self):
        async def go():
            self.server.close()
            await self.server.wait_closed()
        try:
            self.do(go(), 10)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)


class OcppPhase:
    """tools/ocpp_bridge.py (another helper's) bridging `stations` to the test CSMS, in
    one process; its stdout stats lines are kept (the latest), its log goes to a file."""

    PASSWORD = "bench-ocpp-secret"

    def __init__(self, broker, stations):
        self.stations = stations
        self.tmp = tempfile.mkdtemp(prefix="evse-ocpp-")
        self.csms = None
        self.proc = None
        self.err = None
        self.latest = {}
        try:
            self._start(broker)
        except BaseException:
            self.stop()
            raise

    def _start(self, broker):
        self.csms = Csms(self.PASSWORD)
        creds = os.path.join(self.tmp, "creds.json")
        with open(creds, "w") as f:
            json.dump({"*": self.PASSWORD}, f)
        cmd = [sys.executable, os.path.join(HERE, "ocpp_bridge.py"), "--broker", broker,
               "--prefix", OCPP_PREFIX,
               "--csms", "ws://127.0.0.1:%d/ocpp" % self.csms.port, "--credentials", creds,
               "--state-dir", os.path.join(self.tmp, "state"), "--stats-s", "2",
               "--log-level", "WARNING", "--client-id", "bench-ocpp-bridge"]
        for sid in self.stations:
            cmd += ["--station", sid]
        self.err = open(os.path.join(self.tmp, "bridge.log"), "wb")
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.err,
                                     cwd=self.tmp, text=True)
        self.pid = self.proc.pid
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            if line.startswith("{"):
                try:
                    self.latest = json.loads(line)
                except ValueError:
                    pass

    def log_tail(self):
        try:
            with open(os.path.join(self.tmp, "bridge.log"), "rb") as f:
                return f.read()[-400:].decode("utf-8", "replace").strip()
        except OSError:
            return ""

    def wait_booted(self, timeout_s):
        """Seconds until every station's BootNotification reached the CSMS, or None."""
        want = set(self.stations)
        end = self.t0 + timeout_s
        while time.monotonic() < end:
            if want <= self.csms.stations("BootNotification"):
                return time.monotonic() - self.t0
            if self.proc.poll() is not None:
                return None
            time.sleep(0.2)
        return None

    def stop(self):
        try:
            if self.proc is not None:
                stop_process(self.proc, 15)
        finally:
            if self.err is not None:
                self.err.close()
            if self.csms is not None:
                self.csms.close()
            shutil.rmtree(self.tmp, ignore_errors=True)


OCPP_PREFIX = "ocpp"


def ocpp_fleet(a, url):
    """The bridged stations, a fleet process of their own under the topic prefix `ocpp`:
    the bridge acknowledges their session records once the CSMS confirmed them, so the
    ledger (on `evse/+/session`) must not see them. An operator splits a fleet the same way
    (docs/ocpp.md). None when (d) is off."""
    if a.ocpp_stations <= 0 or not os.path.exists(os.path.join(HERE, "ocpp_bridge.py")):
        return None
    return Child([
        sys.executable, os.path.join(HERE, "fleetsim.py"), "--broker", url, "--first", "1",
        "--count", str(a.ocpp_stations), "--id-prefix", "ocpp-", "--topic-prefix",
        OCPP_PREFIX, "--period-ms", str(a.period_ms),
        "--charge-s", str(a.charge_s[0]), str(a.charge_s[1]),
        "--idle-s", str(a.idle_s[0]), str(a.idle_s[1])])


def ocpp_start(a, broker, fleet):
    """(d), first part: the bridge for the --ocpp-stations of `fleet`, booted and a
    SetChargingProfile round trip through it; (phase or None, figures)."""
    if a.ocpp_stations <= 0:
        return None, {"note": "not measured (--ocpp-stations 0)"}
    if fleet is None:
        # OCPP HOOK: tools/ocpp_bridge.py is not there.
        return None, {"note": "not measured: tools/ocpp_bridge.py not present"}
    ids = ["ocpp-%04d" % i for i in range(1, a.ocpp_stations + 1)]
    ph = OcppPhase(broker, ids)
    ph.fleet = fleet
    try:
        return ph, _ocpp_first(ph, ids)
    except BaseException:
        ph.stop()
        raise


def _ocpp_first(ph, ids):
    fig = {"stations": len(ids), "cpu0": cpu_s(ph.pid)}
    fig["boot_s"] = ph.wait_booted(60 + len(ids) / 10)
    if fig["boot_s"] is None:
        fig["note"] = "not every station booted at the CSMS (%d/%d): %s" % (
            len(ph.csms.stations("BootNotification") & set(ids)), len(ids), ph.log_tail())
        return fig
    res = ph.csms.broadcast_limit(ids, LIMIT_A)
    fig["rtt"] = [v[1] for v in res.values() if v[0] == "Accepted"]
    fig["not_accepted"] = sum(1 for v in res.values() if v[0] != "Accepted")
    return fig


def ocpp_finish(ph, fig, drain_s):
    """(d), second part: the bridged stations stop plugging in; once every session has ended
    and reached the CSMS (or after drain_s), each station's Start and Stop transactions at
    the CSMS against the starts and stops it wrote (seq counts both: with no session open,
    half each)."""
    if ph is None or fig.get("boot_s") is None:
        return
    ph.fleet.ask('{"op":"cycle","on":false}')
    end = time.monotonic() + drain_s
    while True:
        sts = ph.fleet.ask('{"op":"stats","detail":true}')["station"]
        want = {st["id"]: ((st["seq"] + 1) // 2, st["seq"] // 2) for st in sts}
        got = {sid: (ph.csms.count("StartTransaction", {sid}),
                     ph.csms.count("StopTransaction", {sid})) for sid in want}
        # (an odd seq: a session still open, its stop yet to come)
        closed = not any(st["seq"] % 2 for st in sts)
        if (closed and got == want) or time.monotonic() > end:
            break
        time.sleep(1.0)
    fig["written"] = sum(st["seq"] for st in sts)
    fig["open"] = sum(st["seq"] % 2 for st in sts)
    # Records published before the bridge first subscribed reach it only with the
    # station's next resend (after a reconnect, or 300 s): the bridge starts a missing
    # transaction from its stop, and acknowledges the start when it comes again.
    fig["pending"] = sum(len(st["outbox_seqs"]) for st in sts)
    fig["lost"] = sum(max(0, w - g) for sid in want for w, g in zip(want[sid], got[sid]))
    fig["dup"] = sum(max(0, g - w) for sid in want for w, g in zip(want[sid], got[sid]))
    fig["tx"] = (ph.csms.count("StartTransaction"), ph.csms.count("StopTransaction"))
    fig["rss_kb"] = rss_kb(ph.pid)
    fig["cpu_s"] = (cpu_s(ph.pid) or 0) - (fig["cpu0"] or 0)
    fig["wall_s"] = time.monotonic() - ph.t0
    fig["own"] = {k: ph.latest.get(k) for k in ("accepted", "queued", "tx_sent", "acks",
                                                 "dups", "connect_failures")}


def ocpp_rows(fig):
    """The summary rows of (d)."""
    if "note" in fig:
        return [("OCPP bridge", fig["note"])]
    rtt = fig["rtt"]
    rows = [("OCPP bridge: %d stations booted at the CSMS" % fig["stations"],
             "in %.1f s (one bridge process)" % fig["boot_s"]),
            ("  SetChargingProfile round trip p50 / p99 / max",
             "%.3f / %.3f / %.3f s; %d not accepted" % (
                 pct(rtt, 50) or 0, pct(rtt, 99) or 0, max(rtt or [0]), fig["not_accepted"]))]
    if "tx" in fig:
        rows.append(("  Start / StopTransaction at the CSMS",
                     "%d / %d for %d session messages written (%d still unacknowledged: "
                     "sent before the bridge subscribed, acked at the station's next resend)"
                     % (fig["tx"] + (fig["written"], fig["pending"]))))
        rows.append(("  transactions lost (must be 0); doubled; sessions still open",
                     "%d; %d; %d" % (fig["lost"], fig["dup"], fig["open"])))
        rows.append(("  bridge RSS; CPU", "%.1f MB; %.1f s in %.0f s" % (
            (fig["rss_kb"] or 0) / 1024, fig["cpu_s"], fig["wall_s"])))
        rows.append(("  bridge's own figures", ", ".join(
            "%s %s" % kv for kv in fig["own"].items())))
    return rows


def _written(fleets):
    """Session messages the fleet's stations have written so far."""
    return sum(st["seq"] for f in fleets for st in f.ask('{"op":"stats"}')["station"])


def cpu_s(pid):
    """User + system CPU seconds a process has used (Linux /proc), or None."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            parts = f.read().rsplit(")", 1)[1].split()
        return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return None


def _raise_nofile():
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # mosquitto inherits it
    return hard


def sessions_check(stations, dump):
    """Each station's written seqs against what the worker stored: lost, pending, phantom;
    lags from the station's flash write to the worker's receipt and to the ack's arrival
    back at the station."""
    stored = {}
    for s, q, t, _event in dump["records"]:
        stored[(s, q)] = t
    seq = {st["id"]: st["seq"] for st in stations}
    lost = pending = written = 0
    to_worker, to_ack = [], []
    for st in stations:
        have = set(st["outbox_seqs"])
        for q in range(1, st["seq"] + 1):
            written += 1
            t = stored.get((st["id"], q))
            w = st["written"].get(str(q))  # (JSON keys are strings)
            if t is None:
                if q in have:
                    pending += 1  # still on the station's flash: it will come again
                else:
                    lost += 1  # gone from the station, never stored
                continue
            if w is not None:
                to_worker.append(t - w)
                if str(q) in st["acked"]:
                    to_ack.append(st["acked"][str(q)] - w)
    phantom = sum(1 for (s, q) in stored if q > seq.get(s, 0))
    return {"written": written, "lost": lost, "pending": pending, "phantom": phantom,
            "lags": to_worker, "ack_lags": to_ack}


def start_fleet(a, url):
    """The fleet processes: --stations split over --procs (Child objects)."""
    per = -(-a.stations // a.procs)
    fleets = []
    for i in range(a.procs):
        count = min(per, a.stations - i * per)
        if count <= 0:
            break
        fleets.append(Child([
            sys.executable, os.path.join(HERE, "fleetsim.py"), "--broker", url, "--first",
            str(1 + i * per), "--count", str(count), "--period-ms", str(a.period_ms),
            "--charge-s", str(a.charge_s[0]), str(a.charge_s[1]),
            "--idle-s", str(a.idle_s[0]), str(a.idle_s[1])]))
    return fleets


def commands(a, fig, obs, url, ids):
    """(a): set_limit to every station at once; then the whole fleet.py CLI."""
    which, res = broadcast(obs, url, ids, {"cmd": "set_limit", "connector": 1,
                                           "current_a": LIMIT_A}, a.cmd_timeout_s)
    rtt = [v[1] for v in res.values() if v[0] is not None]
    fig["rtt"] = (which, rtt, sum(1 for v in res.values() if v[0] is None),
                  sum(1 for v in res.values() if v[0] is not None and not v[0].get("ok")))

    def shown():
        return sum(1 for v in obs.limits.values() if v == (float(LIMIT_A), "backend"))

    obs.wait(lambda: shown() >= len(ids), 5)
    fig["limit_shown"] = shown()
    print("set_limit round trip (%s): p50 %.3f s, p99 %.3f s, max %.3f s, %d without reply;"
          " status shows the limit on %d" % (which, pct(rtt, 50) or 0, pct(rtt, 99) or 0,
                                             max(rtt or [0]), fig["rtt"][2], fig["limit_shown"]))
    fig["cli"] = fleet_cli_limit(url, a.stations)
    print("tools/fleet.py limit --all --current-a %d: %s" % (LIMIT_A, (
        "%.2f s (%s)" % fig["cli"] if fig["cli"][0] is not None else fig["cli"][1])))


def sessions(a, fig, worker, fleets, broker):
    """(b): sessions for --seconds, then no more plug-ins until every outbox is empty;
    returns (the fleet's figures under load, with per-station detail after the drain, the
    worker's dump)."""
    d = worker.dump()
    n0, c0 = len(d["records"]), cpu_s(broker.proc.pid)
    w0 = _written(fleets)
    t_b = time.monotonic()
    while time.monotonic() - t_b < a.seconds:
        time.sleep(min(5.0, a.seconds - (time.monotonic() - t_b)))
        d = worker.dump()
        print("  %5.0f s: %d session messages stored" % (time.monotonic() - t_b,
                                                         len(d["records"])))
    window = time.monotonic() - t_b
    fig["ingest"] = ((len(d["records"]) - n0) / window, len(d["records"]) - n0, window)
    fig["broker_cpu"] = (cpu_s(broker.proc.pid) or 0) - (c0 or 0)
    loaded = [f.ask('{"op":"stats"}') for f in fleets]  # under load, for (c)
    fig["offered"] = (sum(st["seq"] for p in loaded for st in p["station"]) - w0) / window
    for f in fleets:
        f.ask('{"op":"cycle","on":false}')  # stop plugging in: every session ends
    t_d = time.monotonic()
    drained = False
    while not drained and time.monotonic() - t_d < a.drain_s:
        time.sleep(1.0)
        drained = not any(st["outbox"] or st["open"] for f in fleets
                          for st in f.ask('{"op":"stats"}')["station"])
    fig["drain_s"] = (time.monotonic() - t_d, drained)
    detail = [f.ask('{"op":"stats","detail":true}') for f in fleets]
    return loaded, detail, worker.dump()


def run(a):
    t_start = time.monotonic()
    fig = {"load": os.getloadavg()}
    nofile = _raise_nofile()
    conf = "max_connections -1\n"
    if a.broker_inflight is not None:
        # Per client: how many QoS 1 messages the broker has out unacknowledged. A worker
        # that PUBACKs only after its commit gets at most this many per commit.
        conf += "max_inflight_messages %d\n" % a.broker_inflight
    broker = Broker(allow_fallback=False, extra_conf=conf)
    url = "127.0.0.1:%d" % broker.port
    children = []
    obs = None
    try:
        print("broker: mosquitto on %s (nofile %d)" % (url, nofile))
        if not a.skip_unix_port:
            fig["unix_port"] = u = unix_port_station(url)
            print("unix port, one station: micropython %.1f MB, %.0f%% of a core; runner "
                  "%.1f MB, %.0f%%" % (u[0] / 1024, 100 * u[2], u[1] / 1024, 100 * u[3]))
        worker = start_worker(url, a.worker, a.db)
        children.append(worker)
        print("worker: %s" % worker.kind)
        obs = Observer(url)
        t0 = time.monotonic()
        fleets = start_fleet(a, url)
        children.extend(fleets)
        ofleet = ocpp_fleet(a, url)
        if ofleet is not None:
            children.append(ofleet)
        print("fleet: %d stations in %d processes, period %d ms; built in %.1f s" % (
            a.stations, len(fleets), a.period_ms, time.monotonic() - t0))
        ids = ["fleet-%04d" % i for i in range(1, a.stations + 1)]
        want = set(ids)  # (the unix-port station's retained `online` may still be there)
        obs.wait(lambda: want <= obs.online, 60 + a.stations / 20)
        fig["online"] = (len(want & obs.online), time.monotonic() - t0)
        print("online: %d/%d after %.1f s" % (fig["online"][0], a.stations, fig["online"][1]))

        commands(a, fig, obs, url, ids)  # (a)
        obs.c.unsubscribe(PREFIX + "/+/status")  # the bench's own load off the machine
        # (d), first part: the bridge boots its stations at the CSMS and passes a command;
        # it then bridges their sessions through (b)
        ocpp, fig["ocpp"] = ocpp_start(a, url, ofleet)
        if ocpp is not None:
            children.append(ocpp)
        for k, v in ocpp_rows(fig["ocpp"]):
            print("%s: %s" % (k.strip(), v))
        loaded, detail, dump = sessions(a, fig, worker, fleets, broker)  # (b)
        stations = [st for p in detail for st in p["station"]]
        fig["sessions"] = sessions_check(stations, dump)
        fig["dups"] = dump["dups"]
        fig["starts"] = sum(1 for r in dump["records"] if r[3] == "start")
        fig["stops"] = sum(1 for r in dump["records"] if r[3] == "stop")
        fig["exceptions"] = sum(st["exceptions"] for st in stations)
        fig["reconnects"] = sum(st["reconnects"] for st in stations)
        # (c) memory and CPU
        fig["broker_rss"] = rss_kb(broker.proc.pid)
        fig["worker"] = (worker.kind, rss_kb(worker.pid) or dump["rss_kb"])
        ws = dump.get("stats") or {}
        fig["worker_stats"] = "batches %s, commit max %s ms" % (
            ws.get("batches"), ws.get("commit_ms_max")) if ws else None
        fig["fleet"] = loaded
        ocpp_finish(ocpp, fig["ocpp"], a.drain_s)  # (d), second part
    finally:
        if obs is not None:
            obs.stop()
        for ch in reversed(children):
            ch.stop()
        broker.stop()
    fig["total_s"] = time.monotonic() - t_start
    fig["load"] += os.getloadavg()
    report(a, fig)


def report(a, fig):
    rows = []
    which, rtt, missing, refused = fig["rtt"]
    rows.append(("stations online", "%d of %d in %.1f s" % (
        fig["online"][0], a.stations, fig["online"][1])))
    rows.append(("set_limit round trip p50 / p99 / max",
                 "%.3f / %.3f / %.3f s (goal p99 <= 1 s)" % (
                     pct(rtt, 50) or 0, pct(rtt, 99) or 0, max(rtt or [0]))))
    rows.append(("  replies missing; not ok; statuses with the limit",
                 "%d; %d; %d (%s)" % (missing, refused, fig["limit_shown"], which)))
    cli = fig["cli"]
    rows.append(("fleet.py limit --all (whole CLI)",
                 "%.2f s (%s)" % cli if cli[0] is not None else cli[1]))
    rate, n, window = fig["ingest"]
    rows.append(("session ingest; written by the fleet", "%.1f msg/s (%d in %.0f s); %.1f msg/s"
                 % (rate, n, window, fig["offered"])))
    chk = fig["sessions"]
    lags = chk["lags"]
    rows.append(("lag flash write -> stored p50 / p99 / max", "%.3f / %.3f / %.3f s" % (
        pct(lags, 50) or 0, pct(lags, 99) or 0, max(lags or [0]))))
    lags = chk["ack_lags"]
    rows.append(("lag flash write -> ack at station p50/p99/max", "%.3f / %.3f / %.3f s" % (
        pct(lags, 50) or 0, pct(lags, 99) or 0, max(lags or [0]))))
    rows.append(("session messages written; starts / stops stored",
                 "%d; %d / %d" % (chk["written"], fig["starts"], fig["stops"])))
    rows.append(("sessions lost (must be 0)", "%d" % chk["lost"]))
    rows.append(("  unacked at the end; stored, never written",
                 "%d; %d" % (chk["pending"], chk["phantom"])))
    rows.append(("duplicates received", "%d" % fig["dups"]))
    rows.append(("drain after the last plug-in", "%.1f s%s" % (
        fig["drain_s"][0], "" if fig["drain_s"][1] else " (not drained)")))
    rows.append(("broker RSS; CPU during (b)", "%.1f MB; %.1f s" % (
        (fig["broker_rss"] or 0) / 1024, fig["broker_cpu"])))
    rows.append(("worker RSS", "%.1f MB (%s)" % ((fig["worker"][1] or 0) / 1024,
                                                 fig["worker"][0])))
    if fig.get("worker_stats"):
        rows.append(("  worker's own figures", fig["worker_stats"]))
    fl = fig["fleet"]
    rss = sum(p["rss_kb"] for p in fl)
    per = sum(p["rss_kb"] - p["rss_base_kb"] for p in fl) / max(1, a.stations)
    us = sum(p["cpu_s"] for p in fl) * 1e6 / max(1, sum(p["steps"] for p in fl))
    rows.append(("fleet RSS; per station", "%.1f MB in %d processes; %.1f KB" % (
        rss / 1024, len(fl), per)))
    rows.append(("fleet CPU per station step", "%.0f us" % us))
    rows.append(("pass p50 / max; overruns", "%s ms; %d" % (
        " / ".join("%.0f/%.0f" % (p["pass_ms_p50"], p["pass_ms_max"]) for p in fl),
        sum(p["overruns"] for p in fl))))
    rows.append(("reconnects; firmware exceptions", "%d; %d" % (
        fig["reconnects"], fig["exceptions"])))
    if "unix_port" in fig:
        mpy, runner, mpy_cpu, runner_cpu = fig["unix_port"]
        rows.append(("unix port: one station (mpy + runner)", "%.1f + %.1f MB, %.2f + %.2f "
                     "cores -> %d of them: %.1f GB, %.0f cores" % (
                         mpy / 1024, runner / 1024, mpy_cpu, runner_cpu, a.stations,
                         (mpy + runner) * a.stations / 1024 / 1024,
                         (mpy_cpu + runner_cpu) * a.stations)))
    rows.extend(ocpp_rows(fig["ocpp"]))
    rows.append(("bench wall time", "%.0f s" % fig["total_s"]))
    rows.append(("load average at start; at end", "%.1f %.1f %.1f; %.1f %.1f %.1f (2 cores, "
                 "shared)" % fig["load"]))
    w = max(len(r[0]) for r in rows)
    print("\nfleet bench summary (%d stations, %d procs, %d ms period)" % (
        a.stations, a.procs, a.period_ms))
    for k, v in rows:
        print("  %-*s  %s" % (w, k, v))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stations", type=int, default=1000)
    ap.add_argument("--procs", type=int, default=4, help="fleet processes")
    ap.add_argument("--seconds", type=float, default=30, help="the sessions phase (b)")
    ap.add_argument("--period-ms", type=int, default=100, help="a fleet process's pass")
    ap.add_argument("--charge-s", type=float, nargs=2, default=(10, 30), metavar=("MIN", "MAX"))
    ap.add_argument("--idle-s", type=float, nargs=2, default=(2, 8), metavar=("MIN", "MAX"))
    ap.add_argument("--cmd-timeout-s", type=float, default=10)
    ap.add_argument("--drain-s", type=float, default=60, help="wait this long for outboxes")
    ap.add_argument("--worker", choices=("auto", "ledger", "acker"), default="auto",
                    help="the session worker: tools/ledger.py (auto: when present) or the "
                    "bench's minimal acker")
    ap.add_argument("--db", choices=("auto", "sqlite", "postgres"), default="auto",
                    help="the ledger's database (auto: PostgreSQL when installed)")
    ap.add_argument("--broker-inflight", type=int, metavar="N",
                    help="mosquitto's max_inflight_messages (default: its own, 20)")
    ap.add_argument("--ocpp-stations", type=int, default=200,
                    help="stations bridged to a test CSMS for (d); 0: skip")
    ap.add_argument("--skip-unix-port", action="store_true",
                    help="do not measure one unix-port station")
    ap.add_argument("--acker", metavar="HOST:PORT", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.acker:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the bench ends it (EOF on stdin)
        acker_main(a.acker)
        return
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` cleans up as Ctrl-C does
    try:
        run(a)
    except KeyboardInterrupt:
        print("interrupted: everything started was stopped")


def _interrupt(signum, frame):
    raise KeyboardInterrupt


if __name__ == "__main__":
    main()
