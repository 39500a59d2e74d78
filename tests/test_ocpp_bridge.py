"""The OCPP 1.6J bridge between a real simulated station on a real mosquitto and a CSMS
written here with the ocpp package: boot, an RFID session, a remote start with a profile,
the CSMS restarted mid-session, configuration, unknown and malformed calls, TLS."""

import asyncio
import calendar
import json
import os
import signal
import ssl
import subprocess
import sys
import threading
import time

import pytest
from ocpp.routing import on
from ocpp.v16 import ChargePoint, call, call_result
from ocpp.v16.enums import Action
from websockets.asyncio.server import basic_auth, serve

from backend import Backend
from broker import Broker, free_port, stop_process

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CP_ID = "evse-435031"
PASSWORD = "s3cret-pass-for-cp1"


class CsmsCP(ChargePoint):
    """The central system's side of one charge point's connection."""

    def __init__(self, id, ws, csms):
        super().__init__(id, ws)
        self.csms = csms

    def _rec(self, action, kw):
        return self.csms.record(self.id, action, kw)

    async def _gate(self, action):
        gate = self.csms.gates.get(action)
        while gate is not None and not gate.is_set():
            await asyncio.sleep(0.02)

    @on(Action.boot_notification)
    def on_boot(self, **kw):
        self._rec("BootNotification", kw)
        status, interval = (self.csms.boot_answers.pop(0) if self.csms.boot_answers
                            else ("Accepted", self.csms.heartbeat_s))
        return call_result.BootNotification(current_time=now_iso(), interval=interval,
                                            status=status)

    @on(Action.heartbeat)
    def on_heartbeat(self, **kw):
        self._rec("Heartbeat", kw)
        return call_result.Heartbeat(current_time=now_iso())

    @on(Action.status_notification)
    def on_status(self, **kw):
        self._rec("StatusNotification", kw)
        return call_result.StatusNotification()

    @on(Action.authorize)
    def on_authorize(self, id_tag, **kw):
        self._rec("Authorize", dict(kw, id_tag=id_tag))
        return call_result.Authorize(id_tag_info={"status": "Accepted"})

    @on(Action.start_transaction)
    async def on_start(self, **kw):
        self._rec("StartTransaction", kw)
        await self._gate("StartTransaction")
        txid = self.csms.new_txid()
        self._rec("StartTransaction.conf", {"transaction_id": txid})
        return call_result.StartTransaction(transaction_id=txid,
                                            id_tag_info={"status": "Accepted"})

    @on(Action.stop_transaction)
    def on_stop(self, **kw):
        self._rec("StopTransaction", kw)
        return call_result.StopTransaction()

    @on(Action.meter_values)
    def on_meter(self, **kw):
        self._rec("MeterValues", kw)
        return call_result.MeterValues()


def now_iso():
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class Csms:
    """A CSMS on 127.0.0.1 in its own thread and event loop; stop() and start() again on
    the same port are a CSMS restart (its records and transaction ids survive)."""

    def __init__(self, passwords, ssl_context=None):
        self.port = free_port()
        self.passwords = passwords
        self.ssl_context = ssl_context
        self.msgs = []  # (station, action, payload) in arrival order
        self.cv = threading.Condition()
        self.cps = {}
        self.connects = 0
        self.boot_answers = []  # (status, interval) for the next boots, then Accepted
        self.heartbeat_s = 2
        self.gates = {}  # action -> threading.Event: its answer waits until set
        self._txid = 1000
        self.server = None
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.start()

    def _do(self, coro, timeout=20):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def new_txid(self):
        self._txid += 1
        return self._txid

    def record(self, station, action, payload):
        with self.cv:
            self.msgs.append((station, action, payload))
            self.cv.notify_all()

    def mark(self):
        with self.cv:
            return len(self.msgs)

    def after(self, since, action=None):
        with self.cv:
            return [m for m in self.msgs[since:] if action is None or m[1] == action]

    def wait(self, action, pred=lambda p: True, *, since, timeout=15.0):
        end = time.monotonic() + timeout
        with self.cv:
            while True:
                for m in self.msgs[since:]:
                    if m[1] == action and pred(m[2]):
                        return m[2]
                left = end - time.monotonic()
                if left <= 0:
                    raise AssertionError("no %s after #%d: %r" % (
                        action, since, [m[1] for m in self.msgs[since:]][-20:]))
                self.cv.wait(left)

    async def _handler(self, ws):
        station = ws.request.path.strip("/")
        cp = CsmsCP(station, ws, self)
        self.cps[station] = cp
        self.connects += 1
        try:
            await cp.start()
        except Exception:
            pass

    def _check(self, user, password):
        return self.passwords.get(user) == password

    def start(self):
        async def go():
            self.server = await serve(
                self._handler, "127.0.0.1", self.port, subprotocols=["ocpp1.6"],
                process_request=basic_auth(realm="ocpp", check_credentials=self._check),
                ssl=self.ssl_context)
        self._do(go())

    def stop(self):
        async def go():
            self.server.close()
            await self.server.wait_closed()
        self._do(go())
        self.cps.clear()

    def close(self):
        try:
            self.stop()
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)

    def call(self, payload, station=CP_ID):
        return self._do(self.cps[station].call(payload))

    def raw(self, text, uid, station=CP_ID, timeout=10.0):
        """Send a frame as it is; the charge point's answer to uid (CallResult/CallError)."""
        cp = self.cps[station]

        async def go():
            await cp._send(text)
            return await cp._get_specific_response(uid, timeout)
        return self._do(go())


class BridgeProc:
    def __init__(self, broker_port, csms_url, state_dir, creds, extra=()):
        self.err_path = os.path.join(state_dir, "bridge.stderr")
        cmd = [sys.executable, os.path.join(ROOT, "tools", "ocpp_bridge.py"),
               "--broker", "127.0.0.1:%d" % broker_port, "--csms", csms_url,
               "--station", CP_ID, "--credentials", creds, "--state-dir", state_dir,
               "--backoff-max-s", "1", "--call-timeout-s", "10", *extra]
        self.err = open(self.err_path, "ab")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.err, cwd=ROOT)
        line = self.proc.stdout.readline()
        assert line.startswith(b"READY"), (line, self.stderr())

    def stderr(self):
        with open(self.err_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self):
        stop_process(self.proc, 10)
        self.err.close()


class Rig:
    broker = csms = be = st = bridge = None


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    r = Rig()
    r.tmp = tmp_path_factory.mktemp("ocpp")
    r.broker = Broker(allow_fallback=False)
    try:
        r.csms = Csms({CP_ID: PASSWORD})
        # The first boot is held Pending for 1 s: the bridge must ask again.
        r.csms.boot_answers = [("Pending", 1)]
        (r.tmp / "station").mkdir()
        r.be = Backend(r.tmp / "station", broker=r.broker, config=[
            'auth_mode="rfid+remote"', "meter_interval_s=1", "auth_timeout_s=8"])
        r.st = r.be.st
        r.creds = r.tmp / "creds.json"
        r.creds.write_text(json.dumps({CP_ID: PASSWORD}))
        r.state = r.tmp / "bridge"
        r.state.mkdir()
        r.bridge = BridgeProc(r.broker.port, "ws://127.0.0.1:%d" % r.csms.port, str(r.state),
                              str(r.creds))
        # Accepted: the status notifications follow the accepted boot.
        r.csms.wait("StatusNotification", since=0, timeout=30)
        yield r
    finally:
        for stop in (r.bridge and r.bridge.stop, r.be and r.be.stop, r.csms and r.csms.close):
            if stop:
                try:
                    stop()
                except Exception as e:
                    print("cleanup:", repr(e))
        r.broker.stop()


def outbox(be):
    return be.cmd("diag")["data"]["sessions"]["outbox"]


def wait_outbox(be, n, timeout=15.0):
    end = time.monotonic() + timeout
    while True:
        got = outbox(be)
        if got == n:
            return
        assert time.monotonic() < end, "outbox %d, want %d" % (got, n)
        time.sleep(0.2)


def txid_of(csms, since):
    return csms.wait("StartTransaction.conf", since=since)["transaction_id"]


def finish(rig):
    """Unplug, wait for the stop to be confirmed and the station idle."""
    rig.st.op("ev", request=False)
    rig.st.op("unplug")
    wait_outbox(rig.be, 0, timeout=20)


def test_boot_pending_then_accepted_heartbeat_and_status(rig):
    """Break: ignore a Pending boot (no second BootNotification); no heartbeat loop."""
    csms = rig.csms
    boots = csms.after(0, "BootNotification")
    info = json.loads(rig.be.retained("info"))
    csms.wait("BootNotification", since=csms.msgs.index(boots[0]) + 1)
    boots = csms.after(0, "BootNotification")
    assert len(boots) >= 2
    b = boots[0][2]
    assert b["charge_point_model"] == info["board"] and b["firmware_version"] == info["fw"]
    m = csms.mark()
    csms.wait("Heartbeat", since=m, timeout=10)
    sn = {p["connector_id"]: p for _, a, p in csms.after(0, "StatusNotification")}
    assert sn[0]["status"] == "Available" and sn[1]["status"] == "Available", sn
    assert sn[1]["error_code"] == "NoError"


def test_configuration_local_list_availability_and_profiles(rig):
    """Break: GetConfiguration without unknownKey; SendLocalList mode swapped; a W limit
    not divided by 230 V x phases; ClearChargingProfile not clearing."""
    csms, be = rig.csms, rig.be
    r = csms.call(call.GetConfiguration(key=["MeterValueSampleInterval", "NumberOfConnectors",
                                             "NoSuchKey"]))
    vals = {k["key"]: k for k in r.configuration_key}
    assert vals["MeterValueSampleInterval"]["value"] == "1"
    assert vals["NumberOfConnectors"] == {"key": "NumberOfConnectors", "readonly": True,
                                          "value": "1"}
    assert r.unknown_key == ["NoSuchKey"]
    assert csms.call(call.ChangeConfiguration(key="ConnectionTimeOut", value="90")).status \
        == "Accepted"
    assert be.cmd("config_get", keys=["connection_timeout_s"])["data"] == {
        "connection_timeout_s": 90}
    assert csms.call(call.ChangeConfiguration(key="NoSuchKey", value="1")).status \
        == "NotSupported"
    assert csms.call(call.ChangeConfiguration(key="NumberOfConnectors", value="2")).status \
        == "Rejected"
    assert csms.call(call.ChangeConfiguration(key="ConnectionTimeOut", value="x")).status \
        == "Rejected"

    lst = [{"idTag": "AABBCCDD", "idTagInfo": {"status": "Accepted"}}]
    assert csms.call(call.SendLocalList(list_version=5, update_type="Full",
                                        local_authorization_list=lst)).status == "Accepted"
    assert csms.call(call.GetLocalListVersion()).list_version == 5
    assert csms.call(call.SendLocalList(list_version=5, update_type="Differential",
                                        local_authorization_list=[])).status \
        == "VersionMismatch"

    m = csms.mark()
    assert csms.call(call.ChangeAvailability(connector_id=1, type="Inoperative")).status \
        == "Accepted"
    csms.wait("StatusNotification", lambda p: p["connector_id"] == 1
              and p["status"] == "Unavailable", since=m)
    csms.wait("StatusNotification", lambda p: p["connector_id"] == 0
              and p["status"] == "Unavailable", since=m)
    m = csms.mark()
    assert csms.call(call.ChangeAvailability(connector_id=1, type="Operative")).status \
        == "Accepted"
    csms.wait("StatusNotification", lambda p: p["connector_id"] == 1
              and p["status"] == "Available", since=m)

    # A station-wide maximum in W: 7590 W / (230 V x 3 phases) = 11 A.
    prof = {"chargingProfileId": 3, "stackLevel": 0,
            "chargingProfilePurpose": "ChargePointMaxProfile",
            "chargingProfileKind": "Absolute",
            "chargingSchedule": {"chargingRateUnit": "W",
                                 "chargingSchedulePeriod": [{"startPeriod": 0,
                                                             "limit": 7590.0}]}}
    m = be.mark()
    assert csms.call(call.SetChargingProfile(connector_id=0, cs_charging_profiles=prof)) \
        .status == "Accepted"
    be.status(lambda c: c["limit_a"] == 11.0 and c["limit_by"] == "backend", since=m)
    m = be.mark()
    assert csms.call(call.ClearChargingProfile(id=3)).status == "Accepted"
    be.status(lambda c: c["limit_by"] == "hardware", since=m)
    assert csms.call(call.ClearChargingProfile(id=3)).status == "Unknown"
    # A TxProfile without a transaction, and a two-period schedule that is not daily.
    tx = dict(prof, chargingProfilePurpose="TxProfile")
    assert csms.call(call.SetChargingProfile(connector_id=1, cs_charging_profiles=tx)) \
        .status == "Rejected"
    two = dict(prof, chargingProfilePurpose="TxDefaultProfile", chargingSchedule={
        "chargingRateUnit": "A", "chargingSchedulePeriod": [
            {"startPeriod": 0, "limit": 16.0}, {"startPeriod": 3600, "limit": 8.0}]})
    assert csms.call(call.SetChargingProfile(connector_id=1, cs_charging_profiles=two)) \
        .status == "Rejected"


def test_unknown_and_malformed_calls_get_callerror_and_the_connection_stays(rig):
    """Break: the package's route_message (a malformed frame unanswered), or a handler for
    DataTransfer that accepts."""
    csms = rig.csms
    connects = csms.connects
    r = csms.raw('[2,"u1","ReserveNow",{"connectorId":1,"expiryDate":"2030-01-01T00:00:00Z",'
                 '"idTag":"X","reservationId":1}]', "u1")
    assert (r.message_type_id, r.error_code) == (4, "NotSupported")
    r = csms.raw('[2,"u2","FooBar",{}]', "u2")
    assert (r.message_type_id, r.error_code) == (4, "NotImplemented")
    r = csms.raw('[2,"u3","Reset",{"type":"Sideways"}]', "u3")
    assert (r.message_type_id, r.error_code) == (4, "FormationViolation")
    r = csms.raw('[2,"u4","Reset"]', "u4")
    assert (r.message_type_id, r.error_code) == (4, "ProtocolError")
    r = csms.raw('[2,"u5","ChangeAvailability",{"connectorId":"one","type":"Operative"}]',
                 "u5")
    assert (r.message_type_id, r.error_code) == (4, "TypeConstraintViolation")
    csms._do(csms.cps[CP_ID]._send("this is not json"))
    # Garbage from the MQTT side too: logged, counted, nothing changes.
    for sub, payload in (("session", "{not json"), ("session", {"event": "start"}),
                         ("meter", {"connector": "x"}), ("status", {"connectors": 5}),
                         ("auth/req", [1, 2])):
        rig.be.publish("evse/%s/%s" % (CP_ID, sub), payload)
    r = csms.call(call.DataTransfer(vendor_id="com.example", message_id="x", data="y"))
    assert r.status == "UnknownVendorId"
    assert csms.call(call.GetLocalListVersion()).list_version >= 0
    assert csms.connects == connects  # the same connection throughout
    log = rig.bridge.stderr()
    for what in ("session is not JSON", "bad session ignored", "bad meter ignored",
                 "bad status ignored", "bad auth/req ignored"):
        assert what in log, what


def test_remote_start_with_profile_then_remote_stop(rig):
    """Break: the remote start's chargingProfile not applied; RemoteStop not mapped to the
    sid; the TxProfile's limit left in place after the stop."""
    csms, be, st = rig.csms, rig.be, rig.st
    assert csms.call(call.RemoteStopTransaction(transaction_id=999999)).status == "Rejected"
    prof = {"chargingProfileId": 9, "stackLevel": 0, "chargingProfilePurpose": "TxProfile",
            "chargingProfileKind": "Relative",
            "chargingSchedule": {"chargingRateUnit": "A",
                                 "chargingSchedulePeriod": [{"startPeriod": 0,
                                                             "limit": 10.0}]}}
    m, cm = be.mark(), csms.mark()
    r = csms.call(call.RemoteStartTransaction(id_tag="APP-7", connector_id=1,
                                              charging_profile=prof))
    assert r.status == "Accepted"
    be.status(lambda c: c["limit_a"] == 10.0 and c["limit_by"] == "backend", since=m)
    st.op("plug")
    st.op("ev", request=True, respond_s=0.2)
    start = csms.wait("StartTransaction", since=cm)
    assert start["id_tag"] == "APP-7" and start["connector_id"] == 1
    txid = txid_of(csms, cm)
    st.wait_for(lambda s: s["contactor"] and s["offered_a"] == 10.0, timeout=10,
                what="charging at 10 A")
    # Inoperative while charging: Scheduled, the session goes on, the disable comes after.
    assert csms.call(call.ChangeAvailability(connector_id=1, type="Inoperative")).status \
        == "Scheduled"
    time.sleep(0.5)
    assert st.op("get")["contactor"] and not csms.after(cm, "StopTransaction")
    m = be.mark()
    assert csms.call(call.RemoteStopTransaction(transaction_id=txid)).status == "Accepted"
    stop = csms.wait("StopTransaction", since=cm, timeout=20)
    assert stop["transaction_id"] == txid and stop["reason"] == "Remote"
    be.status(lambda c: c["limit_by"] != "backend", since=m, timeout=10)
    be.status(lambda c: c["state"] == "Unavailable", since=m, timeout=10)
    m = be.mark()
    assert csms.call(call.ChangeAvailability(connector_id=1, type="Operative")).status \
        == "Accepted"
    be.status(lambda c: c["state"] != "Unavailable", since=m, timeout=10)
    finish(rig)


def test_rfid_session_authorize_start_meter_stop_acked_after_confirmation(rig):
    """Break: ack the session message on receipt (outbox 0 while the CSMS holds the
    StartTransaction); MeterValues without the transactionId; reason not mapped."""
    csms, be, st = rig.csms, rig.be, rig.st
    gate = csms.gates["StartTransaction"] = threading.Event()
    try:
        st.op("plug")
        st.op("ev", request=True, respond_s=0.2)
        cm = csms.mark()
        st.op("tap", uid="04A1B2C3", hold_s=0.5)
        assert csms.wait("Authorize", since=cm)["id_tag"] == "04A1B2C3"
        start = csms.wait("StartTransaction", since=cm)
        assert start["id_tag"] == "04A1B2C3" and start["connector_id"] == 1
        time.sleep(0.5)
        assert outbox(be) == 1  # held by the CSMS: not acked yet
    finally:
        gate.set()
    txid = txid_of(csms, cm)
    wait_outbox(be, 0)
    st.op("meter", speed=300)
    mv = csms.wait("MeterValues", lambda p: p.get("transaction_id") == txid, since=cm)
    svs = {(s["measurand"], s.get("phase")): s for s in mv["meter_value"][0]["sampled_value"]}
    assert svs[("Energy.Active.Import.Register", None)]["unit"] == "Wh"
    assert ("Current.Import", "L3") in svs and ("Voltage", "L1-N") in svs
    assert int(svs[("Energy.Active.Import.Register", None)]["value"]) >= start["meter_start"]
    st.op("meter", speed=1)
    st.op("ev", request=False)
    st.op("unplug")
    stop = csms.wait("StopTransaction", since=cm, timeout=20)
    assert stop["transaction_id"] == txid and stop["reason"] == "EVDisconnected"
    assert stop["meter_stop"] > start["meter_start"]
    wait_outbox(be, 0)


def test_csms_restart_mid_session_bridge_killed_stop_delivered_once_in_order(rig):
    """Break: no disk queue (the meter values of the outage are lost with the killed
    bridge); no dedupe of the station's resend (two StopTransactions)."""
    csms, be, st = rig.csms, rig.be, rig.st
    st.op("plug")
    st.op("ev", request=True, respond_s=0.2)
    cm = csms.mark()
    st.op("tap", uid="11223344", hold_s=0.5)
    txid = txid_of(csms, cm)
    wait_outbox(be, 0)
    csms.stop()
    down_at = time.time()
    time.sleep(3)  # meter values every second: queued on disk
    rig.bridge.kill()
    rig.bridge.stop()
    rig.bridge = BridgeProc(rig.broker.port, "ws://127.0.0.1:%d" % csms.port, str(rig.state),
                            str(rig.creds))
    m = be.mark()
    st.op("ev", request=False)
    st.op("unplug")
    stop = be.mq.wait_json("/session", lambda d: d["event"] == "stop", since=m)
    # The station reconnects and sends its unacknowledged stop again: the same seq twice.
    m = be.mark()
    assert be.cmd("config_set", values={"mqtt.keepalive_s": 61})["ok"]
    be.mq.wait_json("/session", lambda d: d["seq"] == stop["seq"], since=m, timeout=15)
    assert outbox(be) == 1  # the CSMS is away: the stop stays the station's
    cm = csms.mark()
    csms.start()
    got = csms.wait("StopTransaction", since=cm, timeout=30)
    assert got["transaction_id"] == txid and got["reason"] == "EVDisconnected"
    wait_outbox(be, 0)
    time.sleep(2)  # anything more would come now
    msgs = csms.after(cm)
    acts = [(a, p.get("transaction_id")) for _, a, p in msgs]
    assert acts.count(("StopTransaction", txid)) == 1
    i_stop = acts.index(("StopTransaction", txid))
    during = [p for _, a, p in msgs if a == "MeterValues" and p.get("transaction_id") == txid]
    assert during, "no MeterValues of the transaction after the CSMS came back"
    assert [i for i, x in enumerate(acts) if x == ("MeterValues", txid)][-1] < i_stop
    stamps = [p["meter_value"][0]["timestamp"] for p in during]
    outage = [s for s in stamps if down_at + 0.5 < iso_s(s) < down_at + 3]
    assert outage, stamps  # queued through the outage and the bridge's death


def test_reset_reboots_the_station(rig):
    """Break: Reset not mapped to reboot (no Reboot event, no new boot of the station)."""
    m = rig.be.mark()
    assert rig.csms.call(call.Reset(type="Soft")).status == "Accepted"
    rig.be.event("Reboot", since=m, timeout=10)
    rig.be.wait_online(since=m, timeout=30)
    rig.be.status(lambda c: c["state"] == "Available", since=m, timeout=15)


def iso_s(text):
    return calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%SZ"))


def test_tls_security_profile_2(rig, tmp_path):
    """Break: no ssl context for wss (the connect fails) or no Authorization header."""
    from pki import make_pki

    pki = make_pki(tmp_path / "pki", {})
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(pki / "server.pem"), str(pki / "server.key"))
    tls = Csms({CP_ID: "tls-" + PASSWORD}, ssl_context=ctx)
    creds = tmp_path / "tls-creds.json"
    creds.write_text(json.dumps({"*": "tls-" + PASSWORD}))
    (tmp_path / "b2").mkdir()
    b2 = None
    try:
        b2 = BridgeProc(rig.broker.port, "wss://127.0.0.1:%d" % tls.port,
                        str(tmp_path / "b2"), str(creds),
                        ["--ca-file", str(pki / "ca.pem"), "--client-id", "ocpp-tls"])
        boot = tls.wait("BootNotification", since=0, timeout=20)
        assert boot["charge_point_serial_number"] == CP_ID
    finally:
        if b2:
            b2.stop()
        tls.close()


def test_map_stop_reasons_profiles_and_meter_values():
    """The pure translations. Break: a 2.0.1-only reason passed through unmapped; validTo
    not turned into ttl_s; a daily schedule's wrap at midnight lost."""
    import ocpp_map

    v16 = {"EVDisconnected", "Local", "Remote", "PowerLoss", "Reboot", "DeAuthorized",
           "EmergencyStop", "Other", "HardReset", "SoftReset", "UnlockCommand"}
    for reason in ("EVDisconnected", "Local", "Remote", "PowerLoss", "Reboot", "DeAuthorized",
                   "EmergencyStop"):
        assert ocpp_map.stop_reason(reason) == reason
    for reason in ("EnergyLimitReached", "LocalOutOfCredit", "TimeLimitReached",
                   "GroundFault", "OvercurrentFault", "SomethingNew", None):
        assert ocpp_map.stop_reason(reason) in v16 - {reason}
    now = 1_800_000_000
    one = {"charging_profile_kind": "Absolute", "valid_to": ocpp_map.iso(now + 600),
           "charging_schedule": {"charging_rate_unit": "W", "charging_schedule_period": [
               {"start_period": 0, "limit": 3680, "number_phases": 1}]}}
    assert ocpp_map.profile_orders(one, 3, "UTC0", now) == ("limit", 16.0, 600)
    daily = {"charging_profile_kind": "Recurring", "recurrency_kind": "Daily",
             "charging_schedule": {
                 "charging_rate_unit": "A", "start_schedule": "2027-01-01T22:00:00Z",
                 "charging_schedule_period": [{"start_period": 0, "limit": 32},
                                              {"start_period": 8 * 3600, "limit": 6}]}}
    kind, periods = ocpp_map.profile_orders(daily, 3, "UTC0", now)
    assert kind == "schedule" and [(p["start"], p["end"], p["current_a"]) for p in periods] \
        == [("22:00", "06:00", 32.0), ("06:00", "22:00", 6.0)]
    with pytest.raises(ocpp_map.Unfit):
        ocpp_map.profile_orders(daily, 3, "CET-1CEST,M3.5.0,M10.5.0/3", now)
    with pytest.raises(ocpp_map.Unfit):
        ocpp_map.profile_orders(dict(one, valid_to=ocpp_map.iso(now - 1)), 3, "UTC0", now)
    entries = ocpp_map.local_list_entries([
        {"id_tag": "A1", "id_tag_info": {"status": "Invalid", "parent_id_tag": "G",
                                         "expiry_date": "2027-01-01T00:00:00Z"}},
        {"id_tag": "A2"}], full=False)
    assert entries == [{"id_tag": "A1", "status": "Blocked", "expires": 1798761600,
                        "group": "G"}, {"id_tag": "A2", "status": None}]
    with pytest.raises(ValueError):
        ocpp_map.local_list_entries([{"id_tag": "A2"}], full=True)
    assert ocpp_map.auth_result("r1", {"status": "ConcurrentTx",
                                       "expiry_date": "2027-01-01T00:00:00+00:00"}) == {
        "rid": "r1", "status": "Invalid", "expires": 1798761600}
    m = {"ts": now, "connector": 1, "v": [230.1, 0.0, 0.0], "i": [16.0, 0.0, 0.0],
         "p_w": 3680, "e_wh": 1234, "f_hz": 50.0}
    svs = ocpp_map.sampled_values(m, 1)
    assert [(s["measurand"], s.get("phase"), s["value"]) for s in svs] == [
        ("Energy.Active.Import.Register", None, "1234"), ("Power.Active.Import", None, "3680"),
        ("Current.Import", "L1", "16.0"), ("Voltage", "L1-N", "230.1")]
