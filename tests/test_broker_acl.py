"""The example ACL shipped in docs/examples/mosquitto.acl, loaded into a real mosquitto:
commands (which may carry secrets) are readable only by their station."""

import json
import os
import subprocess
import time

from broker import Broker
from mqttc import Collector
from simctl import Station

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ACL = os.path.join(ROOT, "docs", "examples", "mosquitto.acl")
SID = "evse-435031"
BASE = "evse/" + SID
USERS = {SID: "st-pw", "evse-999999": "other-pw", "backend": "be-pw",
         "homeassistant": "ha-pw"}


def test_example_acl_keeps_commands_to_their_station(tmp_path):
    pw = tmp_path / "passwd"
    pw.write_text("")
    for u, p in USERS.items():
        subprocess.run(["mosquitto_passwd", "-b", str(pw), u, p], check=True)
    os.chmod(pw, 0o644)
    b = Broker(allow_fallback=False, extra_conf="password_file %s\nacl_file %s\n" % (pw, ACL))
    # allow_anonymous true from Broker: anonymous clients get no ACL lines, so see nothing.
    backend = Collector(b.port, "#", "backend", USERS["backend"])
    other = Collector(b.port, "#", "evse-999999", USERS["evse-999999"])
    st = None
    try:
        st = Station(state_dir=str(tmp_path), config=[
            'mqtt.host="127.0.0.1"', "mqtt.port=%d" % b.port,
            'mqtt.user="%s"' % SID, 'mqtt.password="%s"' % USERS[SID]])
        backend.wait(lambda m: m[0] == BASE + "/online" and m[1] == b"online", since=0,
                     timeout=15, what="online, as the backend reads it")
        m = backend.mark()
        secret = "new-wifi-secret"
        backend.c.publish(BASE + "/cmd", json.dumps(
            {"rid": "s1", "cmd": "config_set", "values": {"wifi.password": secret}}), qos=1)
        r = backend.wait_json("/reply", lambda d: d["rid"] == "s1", since=m)
        assert r["ok"]  # the station read the command: the station may read its cmd
        backend.wait_json("/status", since=0)
        time.sleep(0.5)
        assert not [x for x in backend.after(0) if x[0].endswith("/cmd")]  # backend: no
        seen = [x[0] for x in other.after(0)]
        assert not [t for t in seen if t.startswith(BASE + "/")], seen  # other station: no
        # Another station cannot command this one either: no reply comes.
        m = backend.mark()
        other.c.publish(BASE + "/cmd", json.dumps({"rid": "x1", "cmd": "diag"}), qos=1)
        backend.c.publish(BASE + "/cmd", json.dumps({"rid": "x2", "cmd": "diag"}), qos=1)
        backend.wait_json("/reply", lambda d: d["rid"] == "x2", since=m)  # after x1's turn
        assert not [d for d in backend.json_after(m, "/reply") if d["rid"] == "x1"]
        assert secret not in st.stderr()
    finally:
        if st:
            st.stop()
        backend.stop()
        other.stop()
        b.stop()
