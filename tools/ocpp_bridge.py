"""The OCPP 1.6J bridge: each station's MQTT API as a charge point of a CSMS (docs/ocpp.md)."""

import argparse
import asyncio
import itertools
import json
import logging
import os
import random
import signal
import ssl
import sys
import time

import paho.mqtt.client as mqtt

from ocpp_station import StationLink

log = logging.getLogger("ocpp_bridge")

TOPICS = ("info", "online", "status", "meter", "session", "auth/req", "reply", "config")
COMMAND_TIMEOUT_S = 10.0  # well inside the CSMS's own wait for our answer (30 s usual)


def rss_kb():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def load_credentials(path):
    """The credentials file: a JSON object {station_id: password}; "*" is the password of
    stations not named. Raises ValueError with a clear message."""
    if not path:
        return {}
    with open(path, encoding="utf-8") as f:
        try:
            d = json.load(f)
        except ValueError as e:
            raise ValueError("%s: not JSON: %s" % (path, e)) from None
    if not isinstance(d, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and v for k, v in d.items()):
        raise ValueError("%s: must be a JSON object of station id -> non-empty password"
                         % path)
    return d


class Bridge:
    def __init__(self, opts, loop):
        self.loop = loop
        self.prefix = opts.prefix
        self.csms_url = opts.csms
        self.state_dir = opts.state_dir
        self.vendor = opts.vendor
        self.call_timeout_s = opts.call_timeout_s
        self.backoff_max_s = opts.backoff_max_s
        self.all = opts.all
        self.wanted = set(opts.station or [])
        self.credentials = load_credentials(opts.credentials)
        self.profile = opts.security_profile
        if self.profile is None:
            self.profile = 2 if self.csms_url.startswith("wss:") else (
                1 if self.credentials else 0)
        if self.profile == 2 and not self.csms_url.startswith("wss:"):
            raise ValueError("security profile 2 needs a wss:// CSMS URL")
        if self.profile < 2 and self.csms_url.startswith("wss:"):
            raise ValueError("a wss:// URL is security profile 2")
        self.ssl_context = None
        if self.csms_url.startswith("wss:"):
            self.ssl_context = ssl.create_default_context(cafile=opts.ca_file)
        self.links = {}
        self.pending = {}  # command rid -> future of the reply
        self._rid = itertools.count(1)
        self._rid_tag = "ocpp%04x" % random.getrandbits(16)
        self.bad_input = 0
        self.mqtt_connected = asyncio.Event()
        host, _, port = opts.broker.rpartition(":")
        self.mq = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=opts.client_id,
                              clean_session=False)
        if opts.mqtt_user:
            self.mq.username_pw_set(opts.mqtt_user,
                                    os.environ.get("OCPP_BRIDGE_MQTT_PASSWORD"))
        self.mq.on_connect = self._on_connect
        self.mq.on_message = self._on_message
        self.mq.reconnect_delay_set(1, 30)
        # Room for many stations' QoS 1 traffic in flight at once.
        self.mq.max_inflight_messages_set(100)
        self.mq.connect_async(host or "127.0.0.1", int(port))

    def password(self, station_id):
        return self.credentials.get(station_id, self.credentials.get("*"))

    # ---- MQTT (paho's thread for the callbacks, the loop for everything else) ----
    def _on_connect(self, client, userdata, flags, reason, props):
        if reason.is_failure:
            log.error("MQTT connect refused: %s", reason)
            return
        subs = []
        for sub in TOPICS:
            if self.all:
                subs.append(("%s/+/%s" % (self.prefix, sub), 1))
            else:
                subs += [("%s/%s/%s" % (self.prefix, s, sub), 1) for s in sorted(self.wanted)]
        for i in range(0, len(subs), 100):
            client.subscribe(subs[i:i + 100])
        self.loop.call_soon_threadsafe(self.mqtt_connected.set)

    def _on_message(self, client, userdata, m):
        self.loop.call_soon_threadsafe(self._dispatch, m.topic, m.payload)

    def publish(self, topic, payload, qos=1):
        self.mq.publish(topic, json.dumps(payload, separators=(",", ":")), qos=qos)

    def _dispatch(self, topic, payload):
        parts = topic.split("/", 2)
        if len(parts) < 3 or parts[0] != self.prefix:
            return
        sid, sub = parts[1], parts[2]
        if sub == "online":
            data = payload.decode("utf-8", "replace")
        else:
            try:
                data = json.loads(payload)
            except ValueError:
                self.bad_input += 1
                log.warning("%s: %s is not JSON: %r", sid, sub, payload[:100])
                return
        if sub == "reply":
            fut = self.pending.pop(data.get("rid"), None) if isinstance(data, dict) else None
            if fut is not None and not fut.done():
                fut.set_result(data)
            return
        link = self.links.get(sid)
        if link is None:
            if not (self.all or sid in self.wanted):
                return
            link = self.add(sid)
        try:
            {"info": link.on_info, "online": link.on_online, "status": link.on_status,
             "meter": link.on_meter, "session": link.on_session,
             "auth/req": link.on_auth_req, "config": link.on_config}[sub](data)
        except Exception:  # bad input never ends the bridge
            self.bad_input += 1
            log.exception("%s: handling %s", sid, sub)

    def add(self, station_id):
        link = StationLink(self, station_id)
        self.links[station_id] = link
        link.main = asyncio.ensure_future(link.run())
        log.info("%s: station found", station_id)
        return link

    async def command(self, station_id, name, timeout_s=COMMAND_TIMEOUT_S, **args):
        """Send a command to the station; its reply dict, or None when none came in time."""
        rid = "%s-%d" % (self._rid_tag, next(self._rid))
        fut = self.loop.create_future()
        self.pending[rid] = fut
        body = {"rid": rid, "cmd": name}
        body.update(args)
        self.publish("%s/%s/cmd" % (self.prefix, station_id), body)
        try:
            return await asyncio.wait_for(fut, timeout_s)
        except asyncio.TimeoutError:
            log.warning("%s: no reply to %s", station_id, name)
            return None
        finally:
            self.pending.pop(rid, None)

    def stats(self):
        per = [link.stats() for link in self.links.values()]
        out = {"t": round(time.time(), 1), "stations": len(per),
               "accepted": sum(1 for p in per if p["accepted"]),
               "queued": sum(p["queued"] for p in per), "bad_input": self.bad_input,
               "rss_kb": rss_kb()}
        for k in ("tx_sent", "acks", "dups", "connect_failures", "authorize"):
            out[k] = sum(p[k] for p in per)
        out["bad_input"] += sum(p["bad_input"] for p in per)
        return out

    async def run(self, stats_s=0):
        self.mq.loop_start()
        for sid in sorted(self.wanted):
            self.add(sid)
        await self.mqtt_connected.wait()
        print("READY", flush=True)
        while True:
            await asyncio.sleep(stats_s or 3600)
            if stats_s:
                print(json.dumps(self.stats()), flush=True)

    async def close(self):
        for link in self.links.values():
            if link.main:
                link.main.cancel()
            if link.ws is not None:
                await link.ws.close()
        self.mq.loop_stop()
        self.mq.disconnect()


def parse_args(argv):
    p = argparse.ArgumentParser(description="Bridge stations' MQTT API to an OCPP 1.6J CSMS.")
    p.add_argument("--broker", default="127.0.0.1:1883", help="MQTT broker HOST:PORT")
    p.add_argument("--prefix", default="evse", help="the stations' topic prefix")
    p.add_argument("--csms", required=True,
                   help="CSMS base URL (ws:// or wss://); the station id is appended")
    p.add_argument("--station", action="append", help="a station id to bridge (repeatable)")
    p.add_argument("--all", action="store_true",
                   help="bridge every station that publishes a retained <prefix>/+/info")
    p.add_argument("--credentials", help="JSON file {station_id: password, \"*\": default}")
    p.add_argument("--security-profile", type=int, choices=(0, 1, 2),
                   help="0 none, 1 basic auth, 2 TLS + basic auth (default: from the URL)")
    p.add_argument("--ca-file", help="CA certificate(s) to verify a wss:// CSMS")
    p.add_argument("--state-dir", default="ocpp-state",
                   help="per-station queue and transaction files")
    p.add_argument("--vendor", default="evse-oss", help="BootNotification chargePointVendor")
    p.add_argument("--client-id", default="ocpp-bridge", help="MQTT client id")
    p.add_argument("--mqtt-user", help="MQTT user (password in $OCPP_BRIDGE_MQTT_PASSWORD)")
    p.add_argument("--call-timeout-s", type=float, default=30.0,
                   help="how long to wait for the CSMS's answer before reconnecting")
    p.add_argument("--backoff-max-s", type=float, default=60.0,
                   help="longest wait between reconnect attempts")
    p.add_argument("--stats-s", type=float, default=0,
                   help="print a JSON stats line every this many seconds")
    p.add_argument("--log-level", default="INFO")
    opts = p.parse_args(argv)
    if not opts.all and not opts.station:
        p.error("give --station ID (repeatable) or --all")
    return opts


def main(argv=None):
    opts = parse_args(argv)
    logging.basicConfig(level=opts.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("websockets").setLevel(logging.WARNING)
    if opts.log_level.upper() != "DEBUG":
        logging.getLogger("ocpp_bridge.wire").setLevel(logging.WARNING)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        bridge = Bridge(opts, loop)
    except (ValueError, OSError) as e:
        print("ocpp_bridge: %s" % e, file=sys.stderr)
        return 2
    main_task = loop.create_task(bridge.run(opts.stats_s))
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, main_task.cancel)
    try:
        loop.run_until_complete(main_task)
    except asyncio.CancelledError:
        pass
    finally:
        loop.run_until_complete(bridge.close())
        loop.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
