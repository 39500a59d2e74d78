"""Failsafe limit when the link stays down; TLS with CA verification and credentials;
Home Assistant discovery payloads."""

import json
import os
import shutil
import subprocess
import time

import pytest
from backend import BASE, Backend, retained
from broker import Broker
from mqttc import Collector
from scenario import charging
from simctl import Station


def test_failsafe_after_link_loss_until_backend_speaks(tmp_path):
    broker = Broker(allow_fallback=False)
    be = Backend(tmp_path, broker=broker,
                 config=["failsafe_after_s=5", "failsafe_current_a=8"])
    broker2 = None
    try:
        charging(be.st)
        assert be.cmd("set_limit", connector=1, current_a=20)["ok"]
        be.st.wait_for(lambda s: s["offered_a"] == 20.0)
        be.mq.stop()
        t_down = time.monotonic()
        broker.proc.kill()
        broker.proc.wait()
        s = be.st.wait_for(lambda s: s["offered_a"] == 8.0, timeout=15, interval=0.05)
        waited = time.monotonic() - t_down
        # A killed broker's socket closes at once, so the station counts from the kill:
        # never before 5 s, and not much later (the poll interval of this test is 50 ms).
        print("failsafe applied %.2f s after the broker died" % waited)
        assert 5.0 <= waited <= 7.0, waited
        broker2 = Broker(port=broker.port, allow_fallback=False)
        be.mq = Collector(broker.port, "#")
        s = be.status(lambda c: c["state"] == "Charging", timeout=15)
        assert s["connectors"][0]["limit_by"] == "failsafe"
        assert s["connectors"][0]["limit_a"] == 8.0
        # Reconnected but the failsafe holds until the backend sets a limit again.
        time.sleep(6)
        assert be.st.op("get")["offered_a"] == 8.0
        assert be.cmd("set_limit", connector=1, current_a=16)["ok"]
        be.status(lambda c: c["limit_by"] == "backend" and c["limit_a"] == 16.0)
    finally:
        be.stop()
        broker.stop()
        if broker2 is not None:
            broker2.stop()


def test_no_backend_limit_no_failsafe(tmp_path):
    st = Station(state_dir=str(tmp_path), broker="127.0.0.1:1",
                 config=["failsafe_after_s=5", "failsafe_current_a=8"])
    try:
        charging(st)
        time.sleep(6)
        assert st.op("get")["offered_a"] == 32.0  # nothing set by a backend: nothing replaced
    finally:
        st.stop()


def _openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture
def pki(tmp_path):
    d = tmp_path / "pki"
    d.mkdir()
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
             "/CN=evse-test-ca", "-keyout", "ca.key", "-out", "ca.pem", cwd=d)
    (d / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
             "-keyout", "server.key", "-out", "server.csr", cwd=d)
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-days", "2", "-extfile", "san.cnf", "-out", "server.pem",
             cwd=d)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
             "/CN=other-ca", "-keyout", "other.key", "-out", "other.pem", cwd=d)
    pw = d / "passwd"
    pw.write_text("")
    subprocess.run(["mosquitto_passwd", "-b", str(pw), "station", "s3cret"], check=True)
    os.chmod(pw, 0o644)
    return d


def tls_broker(pki):
    from broker import free_port

    tls_port = free_port()
    conf = (
        "listener %d 127.0.0.1\ncafile %s\ncertfile %s\nkeyfile %s\n"
        "password_file %s\nallow_anonymous false\n"
        % (tls_port, pki / "ca.pem", pki / "server.pem", pki / "server.key", pki / "passwd")
    )
    # The plain listener (anonymous, from Broker) lets the test watch; per_listener_settings
    # keeps the TLS listener's password requirement to itself.
    b = Broker(allow_fallback=False, extra_conf=conf, per_listener=True)
    return b, tls_port


def test_tls_with_ca_verification_and_credentials(tmp_path, pki):
    b, tls_port = tls_broker(pki)
    state = tmp_path / "flash"
    state.mkdir()
    shutil.copy(pki / "ca.pem", state / "ca.pem")
    mq = Collector(b.port, "#")
    st = None
    try:
        st = Station(state_dir=str(state), config=[
            'mqtt.host="127.0.0.1"', "mqtt.port=%d" % tls_port, "mqtt.tls=true",
            'mqtt.user="station"', 'mqtt.password="s3cret"'])
        mq.wait(lambda m: m[0] == BASE + "/online" and m[1] == b"online", timeout=15,
                what="online over TLS")
        s = mq.wait_json("/status")
        assert s["connectors"][0]["state"] == "Available"
        assert "s3cret" not in st.stderr()
    finally:
        if st:
            st.stop()
        mq.stop()
        b.stop()


@pytest.mark.parametrize("case", ["wrong_ca", "wrong_password"])
def test_tls_refuses_bad_ca_or_credentials(tmp_path, pki, case):
    b, tls_port = tls_broker(pki)
    state = tmp_path / "flash"
    state.mkdir()
    shutil.copy(pki / ("other.pem" if case == "wrong_ca" else "ca.pem"), state / "ca.pem")
    pw = "nope" if case == "wrong_password" else "s3cret"
    mq = Collector(b.port, "#")
    st = None
    try:
        st = Station(state_dir=str(state), config=[
            'mqtt.host="127.0.0.1"', "mqtt.port=%d" % tls_port, "mqtt.tls=true",
            'mqtt.user="station"', 'mqtt.password="%s"' % pw])
        time.sleep(4)
        assert not [m for m in mq.msgs if m[0].startswith("evse/")]
        charging(st)  # and the charger does not care
    finally:
        if st:
            st.stop()
        mq.stop()
        b.stop()


def test_home_assistant_discovery(tmp_path):
    be = Backend(tmp_path, config=["ha_discovery=true"])
    try:
        uid = "evse-435031_c1"
        want = {
            "homeassistant/sensor/%s/state/config" % uid,
            "homeassistant/sensor/%s/offered/config" % uid,
            "homeassistant/sensor/%s/power/config" % uid,
            "homeassistant/sensor/%s/energy/config" % uid,
            "homeassistant/number/%s/limit/config" % uid,
            "homeassistant/switch/%s/enabled/config" % uid,
        }
        end = time.monotonic() + 5
        while time.monotonic() < end:
            got = {m[0]: m for m in be.mq.msgs if m[0].startswith("homeassistant/")}
            if want <= set(got):
                break
            time.sleep(0.05)
        assert want <= set(got)
        for topic in want:
            payload = got[topic][1]
            assert retained(be.broker.port, topic) == (payload, True)
            cfg = json.loads(payload)
            assert cfg["availability_topic"] == BASE + "/online"
            assert cfg["unique_id"].startswith(uid) and cfg["device"]["identifiers"]
            assert cfg["state_topic"].startswith(BASE + "/")
        num = json.loads(got["homeassistant/number/%s/limit/config" % uid][1])
        assert num["command_topic"] == BASE + "/cmd"
        # The number's command template renders into a valid set_limit command.
        cmd = json.loads(num["command_template"].replace("{{ value }}", "12.5"))
        assert cmd["cmd"] == "set_limit" and cmd["current_a"] == 12.5
        be.publish(BASE + "/cmd", cmd)
        be.status(lambda c: c["limit_a"] == 12.5 and c["limit_by"] == "backend")
        sw = json.loads(got["homeassistant/switch/%s/enabled/config" % uid][1])
        be.publish(BASE + "/cmd", sw["payload_off"])
        be.status(lambda c: c["state"] == "Unavailable")
    finally:
        be.stop()


def test_no_discovery_by_default(tmp_path):
    be = Backend(tmp_path)
    try:
        time.sleep(1)
        assert not [m for m in be.mq.msgs if m[0].startswith("homeassistant/")]
    finally:
        be.stop()
