"""Session figures for `make bench`: time from a card tap to the contactor closing (a card
on the local list, and one the backend has to answer), and the flash a session costs
(journal writes and bytes, with the backend's acknowledgements), measured on the unix port
with the simulated reader, meter and flash."""

import json
import os
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from simctl import Station  # noqa: E402


class _Backend:
    """Answers every auth/req with Accepted and acknowledges every session message."""

    def __init__(self, broker, base):
        import paho.mqtt.client as mqtt

        host, _, port = broker.rpartition(":")
        self.base = base
        self.replies = {}
        self.sessions = []
        self.cv = threading.Condition()
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        c.on_message = self._on
        c.connect(host, int(port))
        c.subscribe(base + "/#", 1)
        c.loop_start()
        self.c = c

    def _on(self, client, userdata, m):
        t = m.topic[len(self.base) + 1:]
        try:
            d = json.loads(m.payload)
        except ValueError:
            return
        if t == "auth/req":
            client.publish(self.base + "/auth/res",
                           json.dumps({"rid": d["rid"], "status": "Accepted"}), qos=1)
        elif t == "session":
            client.publish(self.base + "/session/ack", json.dumps({"seq": d["seq"]}), qos=1)
            with self.cv:
                self.sessions.append(d)
                self.cv.notify_all()
        elif t == "reply":
            with self.cv:
                self.replies[d.get("rid")] = d
                self.cv.notify_all()

    def cmd(self, name, **args):
        rid = "b%d" % (len(self.replies) + 1)
        args.update(rid=rid, cmd=name)
        self.c.publish(self.base + "/cmd", json.dumps(args), qos=1)
        with self.cv:
            self.cv.wait_for(lambda: rid in self.replies, 5)
        return self.replies.get(rid)

    def stop(self):
        self.c.loop_stop()
        self.c.disconnect()


def _tap_to_close(st, uid):
    n = st.op("events", since=10**9)["next"]
    st.op("plug")
    st.op("ev", request=True, respond_s=0.1)
    time.sleep(0.5)
    st.op("tap", uid=uid, hold_s=0.5)
    end = time.monotonic() + 10
    tap = close = None
    while time.monotonic() < end and close is None:
        for e in st.ctl.events(n):
            if e["what"] == "tap" and tap is None:
                tap = e["t_us"]
            if e["what"] == "contactor" and e["value"] is True and tap is not None:
                close = e["t_us"]
        time.sleep(0.05)
    st.op("unplug")
    time.sleep(1.5)  # the stop record waits for a meter reading after the contactor opened
    return None if close is None or tap is None else (close - tap) / 1000.0


def run(broker, trials=5):
    d = tempfile.mkdtemp(prefix="evse-bench-session-")
    st = Station(state_dir=d, broker=broker, config=['auth_mode="rfid+remote"'])
    base = "evse/evse-" + st.id.encode().hex()
    be = _Backend(broker, base)
    out = {"local_ms": [], "backend_ms": []}
    try:
        time.sleep(1.0)
        be.cmd("auth_list", version=1, mode="full",
               entries=[{"id_tag": "04A1B2C3", "status": "Accepted"}])
        d0 = be.cmd("diag")["data"]["sessions"]
        for i in range(trials):
            out["local_ms"].append(_tap_to_close(st, "04A1B2C3"))
            out["backend_ms"].append(_tap_to_close(st, "0B%06X" % i))
        time.sleep(1.0)
        d1 = be.cmd("diag")["data"]["sessions"]
        n = 2 * trials
        out["sessions"] = n
        out["writes_per_session"] = (d1["flash_writes"] - d0["flash_writes"]) / n
        out["bytes_per_session"] = (d1["flash_bytes"] - d0["flash_bytes"]) / n
        out["journal_bytes"] = d1["journal_bytes"]
        out["outbox"] = d1["outbox"]
        sizes = [len(json.dumps(s)) for s in be.sessions]
        out["message_bytes"] = max(sizes) if sizes else None
    finally:
        be.stop()
        st.stop()
    return out


if __name__ == "__main__":
    import argparse

    from broker import Broker

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--trials", type=int, default=5, help="sessions per kind of card")
    a = ap.parse_args()
    with Broker() as b:
        print(run("127.0.0.1:%d" % b.port, a.trials))
