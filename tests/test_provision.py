"""tools/provision.py: a provisioned flash boots a station with those values (TLS broker, CA,
credentials, station id, limits), bad input writes nothing, secrets are never printed, a CSV
batch provisions the good rows and names the bad ones, and the serial path drives mpremote
(a stand-in here) the way a board needs it."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
from pki import make_pki

from broker import Broker, free_port
from mqttc import Collector, retained
from scenario import wait_log
from simctl import Station

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, "tools", "provision.py")
WIFI_PW = "wifi-Secret-4711"
MQTT_PW = "mqtt-Secret-0815"
URL_PW = "url-Secret-1234"  # typed into a broker URL: the tool was never told it is secret


def provision(*args, cwd=None, env=None):
    e = dict(os.environ)
    e.pop("EVSE_WIFI_PASSWORD", None)
    e.pop("EVSE_MQTT_PASSWORD", None)
    e.update(env or {})
    return subprocess.run([sys.executable, TOOL, *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, env=e, timeout=60)


def assert_no_secrets(r, *secrets):
    for s in secrets or (WIFI_PW, MQTT_PW):
        assert s not in r.stdout and s not in r.stderr, "a secret was printed:\n%s\n%s" % (
            r.stdout, r.stderr)


def snapshot(d):
    """Every file under d with its bytes: 'nothing changed on disk' is this, unchanged."""
    out = {}
    for base, _, names in os.walk(d):
        for n in names:
            p = os.path.join(base, n)
            with open(p, "rb") as f:
                out[os.path.relpath(p, d)] = f.read()
    return out


@pytest.fixture
def pki(tmp_path):
    return make_pki(tmp_path / "pki", {"bay7": MQTT_PW})


def test_provisioned_station_comes_up_with_its_values(tmp_path, pki):
    tls_port = free_port()
    # A TLS listener that wants the password, and the plain one (anonymous) to watch from.
    conf = ("listener %d 127.0.0.1\ncafile %s\ncertfile %s\nkeyfile %s\npassword_file %s\n"
            "allow_anonymous false\n" % (tls_port, pki / "ca.pem", pki / "server.pem",
                                         pki / "server.key", pki / "passwd"))
    b = Broker(allow_fallback=False, extra_conf=conf, per_listener=True)
    flash = tmp_path / "flash"
    mq = st = None
    try:
        r = provision("--dir", flash, "--station-id", "bay-7", "--wifi-ssid", "SiteNet",
                      "--wifi-password", WIFI_PW, "--broker", "mqtts://127.0.0.1:%d" % tls_port,
                      "--ca", pki / "ca.pem", "--mqtt-user", "bay7", "--mqtt-password", MQTT_PW,
                      "--meter-profile", "sdm630", "--meter-address", "1", "--max-current", "13",
                      "--auth-mode", "free", "--set", "prefix=site4", "--set",
                      "status_interval_s=60")
        assert r.returncode == 0, r.stderr
        assert_no_secrets(r)
        assert "bay-7" in r.stdout
        # The CA sits in the flash root under the name the firmware opens (mqtt.ca_file).
        assert (flash / "ca.pem").read_bytes() == (pki / "ca.pem").read_bytes()
        mq = Collector(b.port, "#")
        m = mq.mark()
        # No --broker and no --config: everything the station knows comes from the flash.
        st = Station(state_dir=str(flash))
        base = "site4/bay-7"
        mq.wait(lambda x: x[0] == base + "/online" and x[1] == b"online", since=m,
                timeout=20, what="bay-7 online over TLS")
        # It came in on the TLS listener (so it verified the broker with the copied CA),
        # logged in as the provisioned user with the provisioned password.
        log = wait_log(b, "as bay-7 (", timeout=5)
        assert "on port %d." % tls_port in log
        assert "as bay-7 (p2, c1, k120, u'bay7')" in log, log[-1500:]
        got = retained(b.port, base + "/config")
        assert len(got) == 1, got
        cfg = json.loads(got[0][1])
        assert cfg["station_id"] == "bay-7" and cfg["prefix"] == "site4"
        assert cfg["wifi.ssid"] == "SiteNet" and cfg["mqtt.user"] == "bay7"
        assert cfg["wifi.password"] == "***" and cfg["mqtt.password"] == "***"
        assert cfg["mqtt.tls"] is True and cfg["mqtt.port"] == tls_port
        assert cfg["max_current_a"] == 13.0 and cfg["status_interval_s"] == 60
        assert cfg["meter.profile"] == "sdm630" and cfg["meter.slave"] == 1
        # The provisioned maximum is what the pilot offers an EV.
        st.op("plug")
        st.op("ev", request=True, respond_s=0.2)
        s = st.wait_for(lambda s: s["contactor"] and s["ev_i"][0] > 0, 10, what="charging")
        assert s["offered_a"] == 13.0
        assert WIFI_PW not in st.stderr() and MQTT_PW not in st.stderr()
    finally:
        if st:
            st.stop()
        if mq:
            mq.stop()
        b.stop()


GOOD = ("--station-id", "bay-1", "--wifi-ssid", "SiteNet", "--wifi-password", WIFI_PW,
        "--mqtt-user", "bay1", "--mqtt-password", MQTT_PW)
# (what the installer got wrong, the arguments, what the error must say)
BAD = {
    "unknown key": (["--set", "colour=blue"], "unknown key colour"),
    "out of range": (["--max-current", "99"], "max_current_a must be 6.0..80.0"),
    "wrong type": (["--set", "phases=three"], "phases must be an integer"),
    "bad choice": (["--meter-profile", "sdm999"], "meter.profile must be one of"),
    "rule between keys": (["--set", "thermal.stop_c=50"],
                          "thermal.stop_c must be above thermal.derate_c"),
    "broker scheme": (["--broker", "http://broker:1883"], "bad broker URL"),
    "broker port": (["--broker", "mqtt://broker:mqtt"], "bad broker URL"),
    "broker port range": (["--broker", "mqtt://broker:70000"], "mqtt.port must be 1..65535"),
    "password in the URL": (["--broker", "mqtts://bay1:%s@broker:8883" % URL_PW],
                            "not in the URL"),
    "missing CA file": (["--broker", "mqtts://broker:8883", "--ca", "nowhere/ca.pem"],
                        "nowhere/ca.pem"),
    "CA not a certificate": (["--broker", "mqtts://broker:8883", "--ca", "notes.txt"],
                             "not a PEM or DER"),
    "CA garbled": (["--broker", "mqtts://broker:8883", "--ca", "garbled.pem"],
                   "not a PEM or DER"),
    "TLS without a CA": (["--broker", "mqtts://broker:8883"], "needs the broker's CA"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_changes_nothing(tmp_path, case):
    args, message = BAD[case]
    flash = tmp_path / "flash"
    flash.mkdir()
    # What an earlier provisioning left: it must survive a failed run byte for byte.
    (flash / "config.json").write_text('{"station_id": "old", "max_current_a": 20}')
    (flash / "ca.pem").write_text("old CA\n")
    (tmp_path / "notes.txt").write_text("-----BEGIN NOTES-----\nnot a certificate\n")
    (tmp_path / "garbled.pem").write_text(
        "-----BEGIN CERTIFICATE-----\nMIIBAAAA\n-----END CERTIFICATE-----\n")
    before = snapshot(flash)
    r = provision("--dir", flash, *GOOD, *args, cwd=tmp_path)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert message in r.stderr, r.stderr
    assert "nothing written" in r.stderr
    assert snapshot(flash) == before
    assert_no_secrets(r, WIFI_PW, MQTT_PW, URL_PW)


def test_all_mistakes_at_once_and_no_station_id(tmp_path):
    r = provision("--dir", tmp_path / "flash", "--max-current", "2", "--set", "socket=maybe",
                  "--station-id", "bay 1", "--wifi-password", WIFI_PW)
    assert r.returncode == 1
    for part in ("station_id must not contain ' '", "max_current_a must be",
                 "socket must be a boolean"):
        assert part in r.stderr, r.stderr
    r = provision("--dir", tmp_path / "flash", "--max-current", "16")
    assert r.returncode == 1 and "no station id" in r.stderr
    assert not (tmp_path / "flash").exists()


def test_secrets_never_printed(tmp_path):
    # --dry-run shows the configuration, passwords masked, and writes nothing; a secret key
    # given with --set is masked too.
    r = provision("--dir", tmp_path / "flash", "--dry-run", "--station-id", "bay-1",
                  "--wifi-password", WIFI_PW, "--set", "mqtt.password=%s" % MQTT_PW,
                  "--max-current", "16")
    assert r.returncode == 0, r.stderr
    assert_no_secrets(r)
    shown = json.loads(r.stdout[r.stdout.index("{"):r.stdout.rindex("}") + 1])
    assert shown == {"station_id": "bay-1", "wifi.password": "***", "mqtt.password": "***",
                     "max_current_a": 16.0}
    assert not (tmp_path / "flash").exists()
    # The printed configuration masks by the schema's secret flag on its own, too (the
    # output filter above would also catch a password it was told about).
    from provision import Plan

    assert Plan("bay-1", {"wifi.password": "x1", "mqtt.user": "u"}).shown() == {
        "mqtt.user": "u", "wifi.password": "***"}
    # From the environment, as the help suggests; still masked, and written.
    r = provision("--dir", tmp_path / "flash", "--station-id", "bay-1",
                  env={"EVSE_WIFI_PASSWORD": WIFI_PW, "EVSE_MQTT_PASSWORD": MQTT_PW})
    assert r.returncode == 0, r.stderr
    assert_no_secrets(r)
    saved = json.loads((tmp_path / "flash" / "config.json").read_text())
    assert saved["wifi.password"] == WIFI_PW and saved["mqtt.password"] == MQTT_PW
    # A mistyped option: argparse would repeat the value that follows it.
    r = provision("--dir", tmp_path / "flash2", "--station-id", "bay-1", "--wifi-pasword",
                  WIFI_PW)
    assert r.returncode == 2 and "--wifi-pasword" in r.stderr
    assert_no_secrets(r)
    assert not (tmp_path / "flash2").exists()


def test_csv_batch_one_bad_row(tmp_path):
    (tmp_path / "stations.csv").write_text(textwrap.dedent("""\
        station_id,wifi-ssid,--wifi-password,max-current,phases
        bay-1,NetA,pwA-1111111,10,
        bay-2,NetB,pwB-2222222,99,1
        bay-3,NetC,pwC-3333333,16,1
        """))
    out = tmp_path / "out"
    # The command line's options are every row's defaults: here the (absent) broker.
    r = provision("--csv", "stations.csv", "--dir-root", out, "--broker", "mqtt://127.0.0.1:1",
                  cwd=tmp_path)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert_no_secrets(r, "pwA-1111111", "pwB-2222222", "pwC-3333333")
    assert "stations.csv line 3" in r.stderr and "max_current_a must be 6.0..80.0" in r.stderr
    assert "line 2" not in r.stderr and "line 4" not in r.stderr
    assert "2 of 3 stations provisioned" in r.stderr
    assert sorted(os.listdir(out)) == ["bay-1", "bay-3"]
    one = json.loads((out / "bay-1" / "config.json").read_text())
    assert one == {"station_id": "bay-1", "wifi.ssid": "NetA", "wifi.password": "pwA-1111111",
                   "max_current_a": 10.0, "mqtt.host": "127.0.0.1", "mqtt.port": 1,
                   "mqtt.tls": False}
    three = json.loads((out / "bay-3" / "config.json").read_text())
    assert three["wifi.ssid"] == "NetC" and three["phases"] == 1
    # The station booted from bay-3's flash offers bay-3's maximum (no broker needed).
    st = Station(state_dir=str(out / "bay-3"))
    try:
        st.op("plug")
        st.op("ev", request=True, respond_s=0.2)
        s = st.wait_for(lambda s: s["contactor"] and s["ev_i"][0] > 0, 10, what="charging")
        assert s["offered_a"] == 16.0
    finally:
        st.stop()


def test_csv_file_problems(tmp_path):
    # A column that is neither an option nor a key: the whole file is refused, nothing written.
    (tmp_path / "a.csv").write_text("station_id,colour\nbay-1,blue\n")
    r = provision("--csv", "a.csv", "--dir-root", "out", cwd=tmp_path)
    assert r.returncode == 2 and "unknown column 'colour'" in r.stderr
    assert not (tmp_path / "out").exists()
    # The same station twice: the second row fails, the first is written.
    (tmp_path / "b.csv").write_text("station-id,max_current_a\nbay-1,10\nbay-1,12\n")
    r = provision("--csv", "b.csv", "--dir-root", "out", cwd=tmp_path)
    assert r.returncode == 1
    assert "b.csv line 3" in r.stderr and "already on line 2" in r.stderr
    saved = json.loads((tmp_path / "out" / "bay-1" / "config.json").read_text())
    assert saved["max_current_a"] == 10.0


FAKE_MPREMOTE = r'''#!%s
"""Stands in for mpremote: records each run, and plays a board whose flash is $FAKE_FLASH
(fs cp, exec with the board's working directory at the flash root, reset)."""
import json, os, shutil, sys
args = sys.argv[1:]
with open(os.environ["FAKE_LOG"], "a") as f:
    f.write(json.dumps(args) + "\n")
runs = sum(1 for _ in open(os.environ["FAKE_LOG"]))
if str(runs) == os.environ.get("FAKE_FAIL_RUN"):
    sys.stderr.write("Traceback: board said %%s\n" %% os.environ.get("FAKE_ECHO", ""))
    sys.exit(1)
flash = os.environ["FAKE_FLASH"]
cmds, cur = [], []
for a in args:
    if a == "+":
        cmds.append(cur)
        cur = []
    else:
        cur.append(a)
cmds.append(cur)
for c in cmds:
    if c[:1] == ["connect"]:
        c = c[2:]
    if c[:2] == ["fs", "cp"]:
        assert c[3].startswith(":")
        shutil.copy(c[2], os.path.join(flash, c[3][1:]))
    elif c[:1] == ["exec"]:
        os.chdir(flash)
        exec(c[1], {})
    elif c[:1] == ["reset"]:
        open(os.path.join(flash, "reset"), "w").close()
''' % sys.executable


@pytest.fixture
def fake_mpremote(tmp_path):
    exe = tmp_path / "mpremote"
    exe.write_text(FAKE_MPREMOTE)
    exe.chmod(0o755)
    flash = tmp_path / "board"
    flash.mkdir()
    log = tmp_path / "mpremote.log"
    return exe, flash, log


def test_serial_port_target(tmp_path, pki, fake_mpremote):
    exe, flash, log = fake_mpremote
    # The Ctrl-C that stopped the station left the service-boot flag; an old config is there.
    (flash / "nomain").write_text("1")
    (flash / "config.json").write_text('{"station_id": "old"}')
    args = ("--station-id", "bay-9", "--wifi-password", WIFI_PW, "--mqtt-password", MQTT_PW,
            "--broker", "mqtts://broker.example", "--ca", pki / "ca.pem", "--max-current", "20")
    env = {"FAKE_FLASH": str(flash), "FAKE_LOG": str(log)}
    r = provision("--port", "/dev/ttyFAKE", "--mpremote", exe, "--settle-s", "0", *args,
                  env=env)
    assert r.returncode == 0, r.stderr
    assert_no_secrets(r)
    runs = [json.loads(x) for x in log.read_text().splitlines()]
    # First a no-op that stops a running station (its Ctrl-C), then one copy-and-reset.
    assert runs[0] == ["connect", "/dev/ttyFAKE", "exec", "pass"]
    assert runs[1][:2] == ["connect", "/dev/ttyFAKE"] and runs[1][-1] == "reset"
    assert [a for a in runs[1] if a.startswith(":")] == [":ca.pem.tmp", ":config.json.tmp"]
    # The staged copies (they hold the passwords) are gone from the host.
    assert not any(os.path.exists(a) for a in runs[1] if a.endswith(("ca.pem", "config.json")))
    assert sorted(os.listdir(flash)) == ["ca.pem", "config.json", "reset"]
    # Byte for byte what --dir writes (the format the station boots from, tested above).
    r = provision("--dir", tmp_path / "asdir", *args)
    assert r.returncode == 0, r.stderr
    assert (flash / "config.json").read_bytes() == (tmp_path / "asdir" / "config.json"
                                                    ).read_bytes()
    assert (flash / "ca.pem").read_bytes() == (pki / "ca.pem").read_bytes()
    # mpremote failing (a board that reset mid-copy): reported, exit 1, its output masked.
    env.update(FAKE_FAIL_RUN="4", FAKE_ECHO=MQTT_PW)
    r = provision("--port", "/dev/ttyFAKE", "--mpremote", exe, "--settle-s", "0", *args,
                  env=env)
    assert r.returncode == 1
    assert "mpremote exited 1" in r.stderr and "board said ***" in r.stderr, r.stderr
    assert_no_secrets(r)
    # The same for a password that only a CSV cell holds (a row per serial port).
    (tmp_path / "s.csv").write_text("station-id,mqtt-password,port\n"
                                    "bay-5,csv-Secret-555,/dev/ttyFAKE\n")
    env.update(FAKE_FAIL_RUN="6", FAKE_ECHO="csv-Secret-555")
    r = provision("--csv", tmp_path / "s.csv", "--mpremote", exe, "--settle-s", "0", env=env)
    assert r.returncode == 1
    assert "s.csv line 2" in r.stderr and "board said ***" in r.stderr, r.stderr
    assert_no_secrets(r, "csv-Secret-555")
