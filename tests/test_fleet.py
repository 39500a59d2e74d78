"""The fleet CLI (tools/fleet.py) against a real mosquitto and simulated stations: discovery
and ls with a foreign device's garbage on the broker, actions on one station, a group and
all, replies and timeouts, config, auth lists (full, then diff), tariff, groups and adopt."""

import contextlib
import io
import json
import os
import subprocess
import sys
import threading
import time
import types

import paho.mqtt.client as mqtt
import pytest

import fleet as fleet_cli
import fleetcmd
import fleetdir
from broker import Broker
from mqttc import Collector
from simctl import Station

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLEET = os.path.join(ROOT, "tools", "fleet.py")
A, B, C = "evse-4641", "evse-4642", "evse-4643"  # station_id FA, FB, FC
GARBAGE = [  # a foreign or broken device on the same broker, all retained
    ("evse/junk1/online", b"online"),
    ("evse/junk1/info", b"not json{"),
    ("evse/junk2/status", b'{"ts":"x","connectors":[{"id":1}]}'),
    ("evse/junk3/info", b"\xff\xfe\x00binary"),
    ("evse/junk4/info", b'{"api":"1","fw":3,"connectors":0}'),
    ("evse/junk5/online", b"maybe"),
    ("evse/junk6/info", b"[" * 100000),
    ("evse/a/b/status", b"{}"),
]


class Fleet:
    def __init__(self, broker, stations, mq):
        self.broker, self.stations, self.mq = broker, stations, mq
        self.port = broker.port
        self._rid = 0

    def run(self, *args, db, timeout=60):
        """The CLI as the operator runs it: a subprocess; (returncode, stdout, stderr)."""
        # Settle 0.3 s: a local broker's retained flood is over in milliseconds.
        cmd = [sys.executable, FLEET, "--broker", "127.0.0.1:%d" % self.port, "--db", str(db),
               "--settle-s", "0.3"]
        p = subprocess.run(cmd + list(args), capture_output=True, text=True, cwd=ROOT,
                           timeout=timeout)
        return p.returncode, p.stdout, p.stderr

    def local(self, *args, db):
        """The same CLI run in this process: for the checks around the action under test
        (a subprocess start costs more than the command)."""
        return run_main(["--db", str(db), "--broker", "127.0.0.1:%d" % self.port,
                         "--settle-s", "0.3"] + list(args))

    def publish(self, topic, payload, retain=False):
        if isinstance(payload, dict):
            payload = json.dumps(payload)
        self.mq.c.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)

    def ask(self, station, name, **args):
        """A command sent by the test itself (not through the tool): its reply."""
        self._rid += 1
        rid = "test%d" % self._rid
        m = self.mq.mark()
        self.publish("evse/%s/cmd" % station, dict(args, rid=rid, cmd=name))
        return self.mq.wait_json(station + "/reply", lambda d: d.get("rid") == rid, since=m)

    def wait(self, station, leaf, pred, since, timeout=10.0):
        return self.mq.wait_json("evse/%s/%s" % (station, leaf), pred, since=since,
                                 timeout=timeout)

    def cmds(self, station, since, name):
        return [d for d in self.mq.json_after(since, "evse/%s/cmd" % station)
                if d.get("cmd") == name]


@pytest.fixture(scope="module")
def fl(tmp_path_factory):
    broker = Broker(allow_fallback=False)
    stations, mq = {}, None
    try:
        mq = Collector(broker.port)
        m = mq.mark()
        for sid, name in (("FA", A), ("FB", B)):
            stations[name] = Station(state_dir=str(tmp_path_factory.mktemp(sid)),
                                     broker="127.0.0.1:%d" % broker.port, station_id=sid)
        f = Fleet(broker, stations, mq)
        for name in stations:
            f.wait(name, "status", lambda d: True, since=m, timeout=20)
        for topic, payload in GARBAGE:
            f.publish(topic, payload, retain=True)
        yield f
    finally:
        for st in stations.values():
            st.stop()
        if mq:
            mq.stop()
        broker.stop()


def run_main(argv):
    """fleet.main(argv) in this process: (returncode, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = fleet_cli.main(argv)
        except SystemExit as e:  # argparse: --help, usage errors
            rc = e.code
    return rc, out.getvalue(), err.getvalue()


def lines_of(out, station):
    return [ln for ln in out.splitlines() if ln.split()[:1] == [station]]


def result_of(out, station):
    """The result word of a station's line in an action's output."""
    got = lines_of(out, station)
    assert len(got) == 1, out
    return got[0].split()[1]


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


# --- discovery and ls --------------------------------------------------------------------


def test_ls_lists_stations_and_survives_a_foreign_devices_garbage(fl, tmp_path):
    """Break: check_info accepting any dict -> junk4 not malformed; feed() without the
    level check -> evse/a/b/status not counted; _json without RecursionError -> crash."""
    rc, out, err = fl.run("ls", db=tmp_path / "f.db")
    assert rc == 0, out + err
    for st in (A, B):
        cells = lines_of(out, st)[0].split()
        assert cells[1:3] == ["online", "Available"] and cells[6] == "0.1.0", out
    assert "junk1" in out and "info: not JSON" in out
    assert "1 messages on malformed topics ignored (evse/a/b/status)" in out
    assert "Traceback" not in err
    rc, out, err = fl.local("ls", "--json", db=tmp_path / "f.db")
    d = json.loads(out)
    rows = {r["id"]: r for r in d["stations"]}
    assert rows[A]["state"] == ["Available"] and rows[A]["fw"] == "0.1.0"
    assert not rows[A]["malformed"] and rows[A]["last_seen_s"] is not None
    for junk in ("junk1", "junk2", "junk3", "junk4", "junk5", "junk6"):
        assert rows[junk]["malformed"], rows[junk]
    assert "status: ts not a number" in rows["junk2"]["problems"]
    assert "online: neither online nor offline" in rows["junk5"]["problems"]
    assert d["bad_topics"] == 1
    assert not (tmp_path / "f.db").exists()  # ls only reads: it leaves no database behind


def test_ls_filters_by_state(fl, tmp_path):
    rc, out, _ = fl.local("ls", "--state", "available", "--json", db=tmp_path / "f.db")
    ids = {r["id"] for r in json.loads(out)["stations"]}
    assert {A, B} <= ids and "junk1" not in ids
    rc, out, _ = fl.local("ls", "--state", "Charging", "--json", db=tmp_path / "f.db")
    assert json.loads(out)["stations"] == []


# --- actions ------------------------------------------------------------------------------


def test_limit_all_reports_each_station_and_the_status_shows_it(fl, tmp_path):
    """Break: broadcast sending only the first station's command -> B times out;
    resolve_targets(--all) taking malformed stations too -> junk1 TIMEOUT, rc 1."""
    m = fl.mq.mark()
    rc, out, err = fl.run("limit", "--all", "--current-a", "13", "--ttl-s", "600",
                          db=tmp_path / "f.db")
    assert rc == 0, out + err
    assert result_of(out, A) == "ok" and result_of(out, B) == "ok"
    assert "2 stations: 2 ok, 0 failed, 0 timed out" in out
    assert "not sent to" in err and "junk1" in err  # online, but no usable info: not a target
    for st in (A, B):
        c = fl.wait(st, "status", lambda d: d["connectors"][0]["limit_a"] == 13.0,
                    since=m)["connectors"][0]
        assert c["limit_by"] == "backend"
        sent = fl.cmds(st, m, "set_limit")
        assert len(sent) == 1 and sent[0]["current_a"] == 13.0 and sent[0]["ttl_s"] == 600
    rows = {r["id"]: r for r in json.loads(fl.local("ls", "--json", db=tmp_path / "f.db")[1])[
        "stations"]}
    assert rows[A]["limit_a"] == [13.0] and rows[A]["limit_by"] == ["backend"]
    m = fl.mq.mark()
    rc, out, _ = fl.run("clear-limit", "--all", db=tmp_path / "f.db")
    assert rc == 0 and result_of(out, B) == "ok"
    for st in (A, B):
        fl.wait(st, "status", lambda d: d["connectors"][0]["limit_by"] == "hardware", since=m)


def test_a_station_that_does_not_answer_is_reported_as_timeout(fl, tmp_path):
    """Break: send_each returning only the stations that answered -> no TIMEOUT line and
    rc 0; Report.finish ignoring failures -> rc 0."""
    db = tmp_path / "f.db"
    # A station whose link died without the broker noticing yet: online still retained.
    ghost, dead = "evse-ghost1", None
    try:
        fl.publish("evse/%s/online" % ghost, b"online", retain=True)
        fl.publish("evse/%s/info" % ghost, {"api": 1, "fw": "0.1.0", "connectors": 1},
                   retain=True)
        # And a real station that lost power: its will says offline.
        m = fl.mq.mark()
        (tmp_path / "fc").mkdir()
        dead = Station(state_dir=str(tmp_path / "fc"), broker="127.0.0.1:%d" % fl.port,
                       station_id="FC")
        fl.wait(C, "status", lambda d: True, since=m, timeout=20)
        m = fl.mq.mark()
        dead.kill()
        fl.mq.wait(lambda x: x[0] == "evse/%s/online" % C and x[1] == b"offline", since=m)
        rc, out, err = fl.run("limit", "--all", "--current-a", "11", "--timeout", "2", db=db)
        assert result_of(out, A) == "ok" and result_of(out, B) == "ok", out + err
        assert result_of(out, ghost) == "TIMEOUT" and "no reply in 2.0 s" in out
        assert not lines_of(out, C)  # offline: not one of --all
        assert "3 stations: 2 ok, 0 failed, 1 timed out" in out and rc == 1
        rc, out, _ = fl.run("limit", C, A, "--current-a", "11", "--timeout", "1.5", db=db)
        assert result_of(out, A) == "ok" and result_of(out, C) == "TIMEOUT" and rc == 1
        # A group names its members: the offline one is reported, not sent to.
        assert fl.local("group", "set", "G", A, C, db=db)[0] == 0
        rc, out, _ = fl.run("clear-limit", "--group", "G", "--timeout", "1.5", db=db)
        assert result_of(out, A) == "ok" and result_of(out, C) == "OFFLINE" and rc == 1
        rows = {r["id"]: r for r in json.loads(fl.local("ls", "--json", db=db)[1])["stations"]}
        assert rows[C]["online"] == "offline" and rows[ghost]["online"] == "online"
    finally:
        if dead:
            dead.kill()
        for leaf in ("online", "info"):
            fl.publish("evse/%s/%s" % (ghost, leaf), b"", retain=True)
        fl.local("clear-limit", A, B, db=db)


def test_config_get_and_set_never_print_secrets(fl, tmp_path):
    """The tool prints no command values, and the replies carry set secrets as ***; the
    mask (test_the_secret_mask) guards what a station might echo."""
    db = tmp_path / "f.db"
    secret = "s3cret-%s" % os.urandom(4).hex()
    m = fl.mq.mark()
    rc, out, err = fl.run("config", "set", "--station", A, "status_interval_s=60",
                          "wifi.password=" + secret, "--json", db=db)
    assert rc == 0, out + err
    res = json.loads(out)["results"][0]
    assert res["reply"]["data"]["changed"] == ["status_interval_s", "wifi.password"]
    conf = fl.wait(A, "config", lambda d: d["status_interval_s"] == 60, since=m)
    assert conf["wifi.password"] == "***"
    assert secret not in out + err
    rc, out, err = fl.local("config", "get", "--station", "%s,%s" % (A, B), "status_interval_s",
                          "wifi.password", "--json", db=db)
    data = {r["station"]: r["reply"]["data"] for r in json.loads(out)["results"]}
    assert data[A] == {"status_interval_s": 60, "wifi.password": "***"}
    assert data[B] == {"status_interval_s": 300, "wifi.password": ""}
    # All or nothing: phases out of range refuses the whole set, the secret with it.
    other = "other-%s" % os.urandom(4).hex()
    rc, out, err = fl.run("config", "set", "--station", A, "wifi.password=" + other,
                          "status_interval_s=61", "phases=5", db=db)
    assert rc == 1 and result_of(out, A) == "ERROR" and "phases must be 1..3" in out
    assert other not in out + err
    assert fl.ask(A, "config_get", keys=["status_interval_s"])["data"] == {
        "status_interval_s": 60}
    fl.ask(A, "config_set", values={"status_interval_s": 300, "wifi.password": ""})


def test_the_secret_mask(capsys):
    """Break: masked() returning the text unchanged."""
    args = types.SimpleNamespace(json=False, timeout=5.0)
    rep = fleet_cli.Report(args, ["hunter2"])
    rep.add("evse-1", {"rid": "x", "ok": False, "error": "bad_arg", "detail": "hunter2 bad"})
    assert rep.finish() == 1
    out = capsys.readouterr().out
    assert "hunter2" not in out and "*** bad" in out


def test_auth_list_push_full_then_diff(fl, tmp_path):
    """Break: plan_auth_list always "full" -> the second push is no diff; auth_changes
    without the deletes -> entries 4, not 3."""
    db = tmp_path / "f.db"
    v0 = fl.ask(A, "diag")["data"]["auth"]["list_version"]
    csv1 = write(tmp_path, "a1.csv", "id_tag,status,expires,max_wh,group\n"
                 "04a1b2c3,Accepted,,,\nAA000001,Accepted,,20000,FLEET\n"
                 "0BADC0DE,Blocked,1798761600,,\n")
    m = fl.mq.mark()
    rc, out, err = fl.run("auth-list", "push", "--station", A, csv1, db=db)
    assert rc == 0 and "full, 1 command, version %d" % (v0 + 1) in out, out + err
    sent = fl.cmds(A, m, "auth_list")
    assert [s["mode"] for s in sent] == ["full"] and len(sent[0]["entries"]) == 3
    auth = fl.ask(A, "diag")["data"]["auth"]
    assert (auth["list_version"], auth["list_entries"]) == (v0 + 1, 3)
    # The same list again: nothing to send.
    m = fl.mq.mark()
    rc, out, _ = fl.local("auth-list", "push", "--station", A, csv1, db=db)
    assert rc == 0 and result_of(out, A) == "unchanged"
    assert fl.cmds(A, m, "diag") and not fl.cmds(A, m, "auth_list")
    # One changed, one gone, one new: a diff of exactly these.
    csv2 = write(tmp_path, "a2.csv", "04A1B2C3,Accepted,,,\nAA000001,Accepted,,30000,FLEET\n"
                 "NEW00001,Accepted,,,\n")
    m = fl.mq.mark()
    rc, out, _ = fl.local("auth-list", "push", "--station", A, csv2, db=db)
    assert rc == 0 and "diff, 1 command, version %d" % (v0 + 2) in out, out
    sent = fl.cmds(A, m, "auth_list")
    assert sent[0]["mode"] == "diff" and sent[0]["version"] == v0 + 2
    assert sorted(sent[0]["entries"], key=lambda e: e["id_tag"]) == [
        {"id_tag": "0BADC0DE", "status": None},
        {"id_tag": "AA000001", "status": "Accepted", "max_wh": 30000, "group": "FLEET"},
        {"id_tag": "NEW00001", "status": "Accepted"}]
    auth = fl.ask(A, "diag")["data"]["auth"]
    assert (auth["list_version"], auth["list_entries"]) == (v0 + 2, 3)
    # Someone else replaced the station's list: the fleet's record no longer holds, so the
    # next push is a full list again; one too large for a command goes as a full and then
    # diffs with rising versions.
    assert fl.ask(A, "auth_list", version=100, mode="full",
                  entries=[{"id_tag": "X1", "status": "Accepted"}])["ok"]
    big = write(tmp_path, "big.csv", "".join("TAG%05d,Accepted,,%d,\n" % (i, i * 100)
                                             for i in range(120)))
    n = len(fleetcmd._chunks(fleetcmd.parse_auth_csv(open(big).read())[0]))
    m = fl.mq.mark()
    rc, out, _ = fl.local("auth-list", "push", "--station", A, big, db=db)
    assert rc == 0 and n > 1 and "full, %d commands, version %d" % (n, 100 + n) in out, out
    assert [c["mode"] for c in fl.cmds(A, m, "auth_list")] == ["full"] + ["diff"] * (n - 1)
    auth = fl.ask(A, "diag")["data"]["auth"]
    assert (auth["list_version"], auth["list_entries"]) == (100 + n, 120)
    # Back to the short list: a diff deleting 119 and changing 2.
    rc, out, _ = fl.local("auth-list", "push", "--station", A, csv2, db=db)
    assert rc == 0 and "diff, " in out, out
    auth = fl.ask(A, "diag")["data"]["auth"]
    assert auth["list_entries"] == 3
    fl.ask(A, "auth_list", version=1, mode="full", entries=[])


def test_a_bad_csv_is_refused_with_its_lines_and_nothing_is_sent(fl, tmp_path):
    """Break: parse_auth_csv not checking the status -> rc 0 and a push."""
    bad = write(tmp_path, "bad.csv", "04A1,Accepted,,,\n04a1,Blocked,,,\nX,Maybe,,,\n"
                "Y,Accepted,soon,,\nZ,Accepted\n")
    m = fl.mq.mark()
    rc, out, err = fl.run("auth-list", "push", "--station", A, bad, db=tmp_path / "f.db")
    assert rc == 2 and "nothing sent" in err, out + err
    for text in ("line 2: id_tag 04A1 given twice", "line 3: status 'Maybe'",
                 "line 4: expires 'soon' is not an integer", "line 5: 2 columns"):
        assert text in err, err
    assert "Traceback" not in err
    # Positive evidence that the tool's commands would have been seen: a diag after it is.
    rc, out, _ = fl.local("diag", A, db=tmp_path / "f.db")
    assert rc == 0 and fl.cmds(A, m, "diag") and not fl.cmds(A, m, "auth_list")


def test_tariff_set_on_all(fl, tmp_path):
    """Break: tariff_cmd adding or dropping a price -> the command seen differs."""
    m = fl.mq.mark()
    rc, out, err = fl.run("tariff", "set", "--all", "currency=EUR",
                          "energy_millis_per_kwh=35000", "fee_millis=500", db=tmp_path / "f.db")
    assert rc == 0 and result_of(out, A) == "ok" and result_of(out, B) == "ok", out + err
    for st in (A, B):
        fl.wait(st, "event", lambda d: d["code"] == "TariffChanged" and d["detail"] == "EUR",
                since=m)
        sent = fl.cmds(st, m, "set_tariff")
        assert len(sent) == 1 and {k: v for k, v in sent[0].items() if k != "rid"} == {
            "cmd": "set_tariff", "currency": "EUR", "energy_millis_per_kwh": 35000,
            "fee_millis": 500}
    rc, out, _ = fl.local("tariff", "set", "--all", "currency=EUR", "energy_milis_per_kwh=1",
                        db=tmp_path / "f.db")
    assert rc == 1 and "bad_arg: unknown key 'energy_milis_per_kwh'" in out
    rc, out, err = fl.local("tariff", "set", "--all", "fee_millis=1", db=tmp_path / "f.db")
    assert rc == 2 and "currency" in err


def test_remote_start_and_stop(fl, tmp_path):
    st = fl.stations[A]
    m = fl.mq.mark()
    rc, out, err = fl.run("start", A, "--id-tag", "APP-7", "--max-wh", "5000",
                          db=tmp_path / "f.db")
    assert rc == 0 and '{"connection_timeout_s":60}' in out, out + err
    st.op("plug")
    st.op("ev", request=True, respond_s=0.2)
    start = fl.wait(A, "session", lambda d: d["event"] == "start", since=m)
    assert start["id_tag"] == "APP-7" and start["auth"] == "remote"
    try:
        rc, out, _ = fl.run("stop", A, "--connector", "1", db=tmp_path / "f.db")
        assert rc == 0 and '{"sid":"%s"}' % start["sid"] in out, out
        st.op("ev", request=False)
        stop = fl.wait(A, "session", lambda d: d["event"] == "stop", since=m)
        assert stop["sid"] == start["sid"] and stop["reason"] == "Remote"
        rc, out, _ = fl.local("stop", A, "--sid", start["sid"], db=tmp_path / "f.db")
        assert rc == 1 and "not_found" in out
    finally:
        st.op("unplug")


def test_groups_and_adopt(fl, tmp_path):
    """Break: adopt skipping the auth list step -> B's list stays empty; Store.members
    ignoring the group -> ls --group shows A."""
    db = tmp_path / "f.db"
    secret = "grp-%s" % os.urandom(4).hex()
    csv = write(tmp_path, "g.csv", "CARD0001,Accepted,,,\nCARD0002,Blocked,,,\n")
    for args in (("group", "config", "G1", "status_interval_s=45", "wifi.password=" + secret),
                 ("group", "tariff", "G1", "currency=SEK", "fee_millis=1000"),
                 ("group", "auth-list", "G1", csv)):
        rc, out, err = fl.local(*args, db=db)
        assert rc == 0, out + err
        assert secret not in out + err
    rc, out, _ = fl.local("group", "show", "G1", db=db)
    assert secret not in out and json.loads(out)["config"]["wifi.password"] == "***"
    m = fl.mq.mark()
    rc, out, err = fl.run("adopt", B, "evse-never", "--group", "G1", db=db)
    assert rc == 1, out + err  # evse-never was never seen: not adopted, reported
    assert secret not in out + err
    steps = {ln.split()[1]: ln.split()[2] for ln in lines_of(out, B)}
    assert steps == {"group": "ok", "tariff": "ok", "auth-list": "ok", "config": "ok"}, out
    assert "never seen on the broker" in lines_of(out, "evse-never")[0]
    fl.wait(B, "event", lambda d: d["code"] == "TariffChanged" and d["detail"] == "SEK",
            since=m)
    fl.wait(B, "config", lambda d: d["status_interval_s"] == 45, since=m)
    assert fl.ask(B, "diag")["data"]["auth"]["list_entries"] == 2
    groups = json.loads(fl.local("group", "ls", "--json", db=db)[1])
    assert groups["G1"]["stations"] == [B] and groups["G1"]["auth_entries"] == 2
    ids = [r["id"] for r in json.loads(fl.local("ls", "--group", "G1", "--json", db=db)[1])[
        "stations"]]
    assert ids == [B]
    ids = [r["id"] for r in json.loads(fl.local("ls", "--ungrouped", "--json", db=db)[1])[
        "stations"]]
    assert A in ids and B not in ids
    # Adopted again: the list is already there.
    rc, out, _ = fl.local("adopt", B, "--group", "G1", db=db)
    assert rc == 0 and "auth-list  unchanged" in out, out
    # An action on a group.
    assert fl.local("group", "set", "G2", A, db=db)[0] == 0
    m = fl.mq.mark()
    rc, out, _ = fl.run("disable", "--group", "G2", db=db)
    assert rc == 0 and result_of(out, A) == "ok" and not lines_of(out, B)
    fl.wait(A, "status", lambda d: d["connectors"][0]["state"] == "Unavailable", since=m)
    rc, out, _ = fl.local("enable", "--group", "G2", db=db)
    fl.wait(A, "status", lambda d: d["connectors"][0]["state"] == "Available", since=m)
    assert fl.local("group", "rm", A, db=db)[0] == 0
    assert "G2" not in json.loads(fl.local("group", "ls", "--json", db=db)[1])
    fl.ask(B, "config_set", values={"status_interval_s": 300, "wifi.password": ""})
    fl.ask(B, "set_tariff", currency=None)


def test_groups_in_the_database_table_the_ledger_joins_on(tmp_path):
    import db as dbmod

    d = dbmod.connect(str(tmp_path / "f.db"))
    store = fleet_cli.Store(d)
    store.set_group("G", ["s1", "s2"])
    store.set_group("H", ["s2"])
    assert sorted(d.execute("SELECT station, grp FROM station_groups")) == [
        ("s1", "G"), ("s2", "H")]
    d.close()


def test_reboot(fl, tmp_path):
    m = fl.mq.mark()
    rc, out, _ = fl.run("reboot", B, db=tmp_path / "f.db")
    assert rc == 0 and '{"delay_s":0}' in out
    fl.mq.wait(lambda x: x[0] == "evse/%s/online" % B and x[1] == b"online", since=m,
               timeout=30)


def test_usage_errors_and_an_unreachable_broker(fl, tmp_path):
    db = tmp_path / "f.db"
    rc, out, err = fl.local("limit", "--current-a", "10", db=db)
    assert rc == 2 and "name the stations" in err
    rc, out, err = fl.local("limit", A, "--all", "--current-a", "10", db=db)
    assert rc == 2 and "exactly one" in err
    rc, out, err = fl.local("config", "set", "--station", A, "novalue", db=db)
    assert rc == 2 and "expected KEY=VALUE" in err
    rc, out, err = fl.local("limit", "evse/+", "--current-a", "10", db=db)
    assert rc == 2 and "bad station id 'evse/+'" in err
    from broker import free_port

    p = subprocess.run([sys.executable, FLEET, "--broker", "127.0.0.1:%d" % free_port(),
                        "ls"], capture_output=True, text=True, cwd=str(tmp_path), timeout=30)
    assert p.returncode == 3 and "cannot reach the broker" in p.stderr
    assert "Traceback" not in p.stderr
    for sub in (["ls"], ["limit"], ["config", "set"], ["auth-list", "push"], ["group", "ls"],
                ["adopt"], ["tariff", "set"], ["start"], ["stop"], []):
        rc, out, _ = run_main(sub + ["--help"])
        assert rc == 0 and "usage: fleet" in out


# --- without a broker ----------------------------------------------------------------------


def test_directory_counts_junk_and_never_raises():
    """Break: feed() without the UnicodeDecodeError catch -> raises on the bad topic."""
    d = fleetdir.Directory("evse")
    d.feed(b"evse/s1/online", b"online", True)
    d.feed(b"evse/s1/info", b'{"api":1,"fw":"1.2","connectors":2}', True)
    d.feed(b"evse/s1/status", b'{"ts":null,"connectors":[{"state":"Charging","offered_a":16,'
           b'"limit_by":"backend"},{"state":"Available","offered_a":0.0}]}', True)
    d.feed(b"evse/s1/meter", b'{"connector":1,"p_w":11040}')
    d.feed(b"evse/s1/auth/req", b'{"rid":"x"}')
    d.feed(b"evse/\xff\xfe/info", b"{}", True)
    d.feed(b"evse/s2/status", b"\x00\x01", True)
    d.feed(b"evse/s3/info", b'{"api":2,"fw":"9","connectors":1}', True)
    d.feed(b"evse//info", b"{}", True)
    assert d.bad_topics == 2 and d.usable_ids() == ["s1"]
    row = fleetdir.rows(d)[0]
    assert row["state"] == ["Charging", "Available"] and row["power_w"] == 11040
    assert row["last_seen_s"] is None and not row["malformed"]
    assert "info: api 2 unknown" in d.stations["s3"].problem_list()
    text = fleetdir.table(fleetdir.rows(d))
    assert "Charging,Available" in text and "16.0,0.0" in text and "backend,-" in text


def test_plan_auth_list():
    """Break: plan_auth_list ignoring held_entries -> a station whose list was emptied by
    hand gets a diff."""
    e1 = [{"id_tag": "A", "status": "Accepted"}, {"id_tag": "B", "status": "Blocked"}]
    e2 = [{"id_tag": "A", "status": "Accepted", "max_wh": 5}]
    assert fleetcmd.plan_auth_list(0, 0, None, e1)[0:1] == ("full",)
    mode, cmds, v = fleetcmd.plan_auth_list(3, 2, (3, e1), e2)
    assert (mode, v) == ("diff", 4) and cmds[0]["entries"] == [
        {"id_tag": "A", "status": "Accepted", "max_wh": 5}, {"id_tag": "B", "status": None}]
    assert fleetcmd.plan_auth_list(3, 2, (3, e1), e1) == ("unchanged", [], 3)
    assert fleetcmd.plan_auth_list(3, 0, (3, e1), e2)[0] == "full"
    assert fleetcmd.plan_auth_list(4, 2, (3, e1), e2)[0] == "full"
    mode, cmds, v = fleetcmd.plan_auth_list(fleetcmd.MAX_LIST_VERSION, 0, None, e1)
    assert (mode, v) == ("full", 1)


def test_parse_assignments_and_values():
    assert fleetcmd.parse_assignments(["a=16", "b=true", "tz=CET-1CEST", "m=rfid+remote",
                                       'c="x"', "d="]) == {
        "a": 16, "b": True, "tz": "CET-1CEST", "m": "rfid+remote", "c": "x", "d": ""}
    for bad in (["novalue"], ["=3"], ["a=1", "a=2"]):
        with pytest.raises(fleetcmd.FleetError):
            fleetcmd.parse_assignments(bad)


def test_ledger_and_report_subcommands_are_registered_when_present(monkeypatch, capsys):
    def add_parser(subparsers, parents=()):
        p = subparsers.add_parser("ledger-demo", help="demo")
        p.set_defaults(func=lambda args: 7)

    monkeypatch.setitem(sys.modules, "ledger", types.SimpleNamespace(add_parser=add_parser))
    monkeypatch.setitem(sys.modules, "report", None)  # absent: its subcommands are missing
    assert fleet_cli.main(["ledger-demo"]) == 7

    def broken(subparsers):
        raise RuntimeError("half written")

    monkeypatch.setitem(sys.modules, "ledger", types.SimpleNamespace(add_parser=broken))
    with pytest.raises(SystemExit):
        fleet_cli.main(["ledger-demo"])
    assert "ledger subcommands unavailable" in capsys.readouterr().err


def test_broadcast_to_a_thousand_stations(fl):
    """Every one of 1000 stations' replies is matched to its station (one responder client
    plays them, so this measures the tool and the broker, not the firmware). Prints the
    time; asserts none."""
    n = 1000
    ids = ["evse-fake%04d" % i for i in range(n)]
    r = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)

    def answer(c, u, msg):
        st = msg.topic.split("/")[1]
        if st.startswith("evse-fake"):
            rid = json.loads(msg.payload)["rid"]
            c.publish("evse/%s/reply" % st, json.dumps({"rid": rid, "ok": True}), qos=1)

    sub = threading.Event()
    r.on_message = answer
    r.on_subscribe = lambda *a: sub.set()
    r.connect("127.0.0.1", fl.port)
    r.loop_start()
    try:
        r.subscribe("evse/+/cmd", 0)
        assert sub.wait(5)
        with fleetcmd.Conn("127.0.0.1:%d" % fl.port) as conn:
            t0 = time.monotonic()
            res = fleetcmd.broadcast(conn, ids, {"cmd": "set_limit", "connector": 0,
                                                 "current_a": 16}, timeout_s=20)
            took_s = time.monotonic() - t0
        rtts = sorted(v[1] for v in res.values() if v[0] is not None)
        assert len(rtts) == n and all(res[st][0]["ok"] for st in ids)
        assert len({res[st][0]["rid"] for st in ids}) == n  # one rid per station
        print("broadcast to %d stations: %.2f s, round trip p50 %.3f s, max %.3f s" % (
            n, took_s, rtts[n // 2], rtts[-1]))
    finally:
        r.loop_stop()
        r.disconnect()
