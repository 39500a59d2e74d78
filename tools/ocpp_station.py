"""One station as an OCPP 1.6J charge point: its connection, boot, status and transactions."""

import asyncio
import base64
import logging
import random

from ocpp.exceptions import OCPPError
from ocpp.v16 import call
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

import ocpp_map
from ocpp_handlers import BridgeChargePoint, end_tx_profile
from ocpp_store import StationStore

log = logging.getLogger("ocpp_bridge")

BACKOFF_MIN_S = 1.0
TX_ATTEMPTS = 3  # OCPP's TransactionMessageAttempts default
TX_RETRY_S = 5.0  # between attempts after a CallError (TransactionMessageRetryInterval)
QUEUE_MAX = 20000  # per station; beyond it new transaction meter values are dropped


class Gone(Exception):
    """The connection is no longer usable: reconnect."""


class StationLink:
    def __init__(self, bridge, station_id):
        self.bridge = bridge
        self.id = station_id
        self.base = "%s/%s" % (bridge.prefix, station_id)
        self.store = StationStore(bridge.state_dir, station_id)
        self.info = None
        self.online = False
        self.status = None
        self.config = {}
        self.last_meter = {}  # connector -> latest meter payload
        self.heartbeat_s = 0
        self.accepted = False
        self.cp = None
        self.ws = None
        self.sent_status = {}  # connector -> (status, errorCode) last sent
        self.open_sids = {}  # connector -> sid, from the session records (ahead of status)
        self.pending_disable = set()  # connectors to disable once their session ends
        self.wake = asyncio.Event()  # the queue has work
        self.ready = asyncio.Event()  # info known and the station online
        self.tasks = set()
        self.counters = {"bad_input": 0, "connects": 0, "connect_failures": 0, "boots": 0,
                         "tx_sent": 0, "tx_dropped": 0, "acks": 0, "dups": 0,
                         "meter_dropped": 0, "authorize": 0}
        self.backoff_s = BACKOFF_MIN_S
        self.main = None

    # ---- MQTT inputs (on the asyncio loop) ----
    def bad(self, what, detail):
        self.counters["bad_input"] += 1
        log.warning("%s: bad %s ignored: %s", self.id, what, detail)

    def on_info(self, d):
        if not isinstance(d, dict) or not isinstance(d.get("connectors"), int):
            return self.bad("info", d)
        self.info = d
        self._check_ready()

    def on_online(self, text):
        self.online = text == "online"
        self._check_ready()
        if not self.online and self.ws is not None:
            # The charge point is really gone: the CSMS should see it disconnected.
            self._spawn(self.ws.close())

    def _check_ready(self):
        if self.info is not None and self.online:
            self.ready.set()
        else:
            self.ready.clear()

    def on_config(self, d):
        if isinstance(d, dict):
            self.config = d

    def on_status(self, d):
        try:
            conns = d["connectors"]
            [(c["id"], c["state"]) for c in conns]
        except (TypeError, KeyError):
            return self.bad("status", d)
        self.status = d
        for c in conns:
            if c["id"] in self.pending_disable and not c.get("session"):
                self.pending_disable.discard(c["id"])
                self._spawn(self.bridge.command(self.id, "disable", connector=c["id"]))
        if self.accepted:
            self._spawn(self.send_statuses())

    def conn_sid(self, connector):
        """The session running on a connector: `status` tells, but the start record may
        come before the status that shows it (statuses are coalesced)."""
        for c in (self.status or {}).get("connectors", []):
            if c.get("id") == connector and c.get("session"):
                return c["session"]
        return self.open_sids.get(connector)

    def on_meter(self, d):
        try:
            conn = int(d["connector"])
            int(d["e_wh"])
        except (TypeError, KeyError, ValueError):
            return self.bad("meter", d)
        self.last_meter[conn] = d
        phases = (self.info or {}).get("phases") or 3
        mv = {"timestamp": ocpp_map.iso(d.get("ts")),
              "sampled_value": ocpp_map.sampled_values(d, phases)}
        sid = self.conn_sid(conn)
        if sid:
            if len(self.store) >= QUEUE_MAX:
                self.counters["meter_dropped"] += 1
                return
            self.store.push({"kind": "meter", "sid": sid, "connector": conn, "mv": mv})
            self.wake.set()
        elif self.accepted:
            self._spawn(self._call(call.MeterValues(connector_id=conn, meter_value=[mv])))

    def on_session(self, d):
        try:
            item = {"kind": d["event"], "seq": int(d["seq"]), "sid": str(d["sid"]), "rec": d}
            int(d["connector"])
            if item["kind"] not in ("start", "stop"):
                raise ValueError(item["kind"])
        except (TypeError, KeyError, ValueError):
            return self.bad("session", d)
        if self.store.acked(item):
            # Confirmed before; our ack was lost or is still on its way: ack again.
            self.counters["dups"] += 1
            self._ack(item["seq"])
            return
        if self.store.queued(item):
            self.counters["dups"] += 1  # a resend of what waits for the CSMS
            return
        self.store.push(item, sync=True)
        self.wake.set()
        conn = int(d["connector"])
        if item["kind"] == "start":
            self.open_sids[conn] = item["sid"]
        elif self.open_sids.get(conn) == item["sid"]:
            del self.open_sids[conn]
        if item["kind"] == "stop":
            self._spawn(end_tx_profile(self, d["connector"]))

    def on_auth_req(self, d):
        try:
            rid, id_tag = d["rid"], d["id_tag"]
            if not isinstance(id_tag, str):
                raise TypeError(id_tag)
        except (TypeError, KeyError):
            return self.bad("auth/req", d)
        if not self.accepted:
            # Unanswered, the station decides the card offline, by its own rules.
            log.info("%s: auth/req %s while the CSMS is away: left to the station", self.id,
                     rid)
            return
        self._spawn(self._authorize(rid, id_tag))

    # ---- helpers ----
    def _spawn(self, coro):
        t = asyncio.ensure_future(coro)
        self.tasks.add(t)
        t.add_done_callback(self._done)
        return t

    def _done(self, t):
        self.tasks.discard(t)
        if not t.cancelled() and t.exception() is not None:
            e = t.exception()
            if not isinstance(e, (Gone, ConnectionClosed, OCPPError, asyncio.TimeoutError)):
                log.error("%s: task failed: %r", self.id, e)

    def _ack(self, seq):
        self.counters["acks"] += 1
        self.bridge.publish(self.base + "/session/ack", {"seq": seq})

    async def _call(self, payload, suppress=False):
        cp = self.cp
        if cp is None:
            raise Gone() from None
        try:
            return await cp.call(payload, suppress=suppress)
        except asyncio.TimeoutError:
            # A CSMS that does not answer in time: start afresh rather than wait forever.
            log.warning("%s: no answer to %s: reconnecting", self.id,
                        type(payload).__name__)
            await cp._connection.close()
            raise Gone() from None

    async def _authorize(self, rid, id_tag):
        self.counters["authorize"] += 1
        try:
            res = await self._call(call.Authorize(id_tag=id_tag))
        except OCPPError as e:
            log.warning("%s: Authorize %s: CallError %s", self.id, id_tag, e)
            return
        self.bridge.publish(self.base + "/auth/res",
                            ocpp_map.auth_result(rid, res.id_tag_info or {}))

    async def send_statuses(self, force=False):
        st = self.status
        if st is None:
            return
        conns = st["connectors"]
        want = {0: ocpp_map.station_status(conns)}
        for c in conns:
            want[c["id"]] = ocpp_map.connector_status(c)
        for cid, (status, code) in want.items():
            if not force and self.sent_status.get(cid) == (status, code):
                continue
            self.sent_status[cid] = (status, code)
            await self._call(call.StatusNotification(
                connector_id=cid, error_code=code, status=status,
                timestamp=ocpp_map.iso(st.get("ts"))))

    # ---- the connection ----
    def url(self):
        return "%s/%s" % (self.bridge.csms_url.rstrip("/"), self.id)

    def headers(self):
        pw = self.bridge.password(self.id)
        if pw is None:
            return {}
        tok = base64.b64encode(("%s:%s" % (self.id, pw)).encode()).decode()
        return {"Authorization": "Basic " + tok}

    async def run(self):
        if self.bridge.profile >= 1 and self.bridge.password(self.id) is None:
            log.error("%s: security profile %d needs a password in the credentials file: "
                      "not connected", self.id, self.bridge.profile)
            return
        while True:
            await self.ready.wait()
            try:
                ws = await connect(self.url(), subprotocols=["ocpp1.6"],
                                   additional_headers=self.headers(),
                                   ssl=self.bridge.ssl_context, open_timeout=10,
                                   max_size=2 ** 20)
            except (OSError, InvalidHandshake, asyncio.TimeoutError) as e:
                self.counters["connect_failures"] += 1
                log.warning("%s: connect to %s failed: %s", self.id, self.url(), e)
                await self._backoff()
                continue
            if ws.subprotocol != "ocpp1.6":
                log.error("%s: the CSMS did not agree to ocpp1.6", self.id)
                await ws.close()
                await self._backoff()
                continue
            self.counters["connects"] += 1
            self.ws = ws
            try:
                await self._serve(ws)
            except (ConnectionClosed, Gone, OCPPError, asyncio.TimeoutError) as e:
                log.info("%s: connection ended: %r", self.id, e)
            finally:
                self.accepted = False
                self.cp = None
                self.ws = None
                self.sent_status.clear()
                await ws.close()
            await self._backoff()

    async def _backoff(self):
        # Jitter spreads a fleet's reconnects after the CSMS comes back.
        await asyncio.sleep(self.backoff_s * random.uniform(0.5, 1.0))
        self.backoff_s = min(self.backoff_s * 2, self.bridge.backoff_max_s)

    async def _serve(self, ws):
        cp = BridgeChargePoint(self.id, ws, self, response_timeout=self.bridge.call_timeout_s)
        self.cp = cp
        recv = asyncio.ensure_future(cp.start())
        jobs = [recv]
        try:
            # Boot beside the receiver: a connection lost mid-call ends the wait at once,
            # not after the call timeout.
            boot = asyncio.ensure_future(self._boot(cp, recv))
            jobs.append(boot)
            await asyncio.wait([boot, recv], return_when=asyncio.FIRST_COMPLETED)
            if not boot.done():
                recv.result()
                raise Gone()
            boot.result()
            self.backoff_s = BACKOFF_MIN_S
            self._spawn(self.send_statuses(force=True))
            work = [asyncio.ensure_future(self._heartbeat()),
                    asyncio.ensure_future(self._drain())]
            jobs += work
            done, _ = await asyncio.wait([recv] + work, return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                t.result()
        finally:
            for t in jobs:
                t.cancel()
            await asyncio.gather(*jobs, return_exceptions=True)
            cp.cancel_all()

    async def _boot(self, cp, recv):
        info = self.info
        while True:
            self.counters["boots"] += 1
            res = await self._call(call.BootNotification(
                charge_point_vendor=self.bridge.vendor,
                charge_point_model=str(info.get("board") or "evse")[:20],
                charge_point_serial_number=self.id[:25],
                firmware_version=str(info.get("fw") or "")[:50]))
            if res.status == "Accepted":
                self.heartbeat_s = res.interval
                self.accepted = True
                log.info("%s: boot accepted, heartbeat %d s", self.id, res.interval)
                return
            # Pending or Rejected: ask again after the interval the CSMS gave.
            wait_s = res.interval if res.interval > 0 else 30
            log.info("%s: boot %s, again in %d s", self.id, res.status, wait_s)
            sleep = asyncio.ensure_future(asyncio.sleep(wait_s))
            await asyncio.wait([sleep, recv], return_when=asyncio.FIRST_COMPLETED)
            if recv.done():
                sleep.cancel()
                recv.result()
                raise Gone() from None

    async def _heartbeat(self):
        while True:
            await asyncio.sleep(self.heartbeat_s if self.heartbeat_s > 0 else 86400)
            if self.heartbeat_s > 0:
                await self._call(call.Heartbeat())

    async def _drain(self):
        while True:
            head = self.store.head()
            if head is None:
                self.wake.clear()
                await self.wake.wait()
                continue
            n, item = head
            for attempt in range(1, TX_ATTEMPTS + 1):
                try:
                    await self._deliver(item)
                    break
                except OCPPError as e:
                    log.warning("%s: %s %s: CallError %s (attempt %d)", self.id,
                                item["kind"], item.get("sid"), e, attempt)
                    if attempt == TX_ATTEMPTS:
                        # Dropped here, not acked: the station sends it again (every 300 s
                        # and after a reconnect), so a start or stop comes back.
                        self.counters["tx_dropped"] += 1
                    else:
                        await asyncio.sleep(TX_RETRY_S)
            self.store.done(n)

    async def _start_tx(self, rec):
        res = await self._call(call.StartTransaction(
            connector_id=int(rec["connector"]), id_tag=(rec.get("id_tag") or "free")[:20],
            meter_start=int(rec.get("meter_start_wh") or 0),
            timestamp=ocpp_map.iso(rec.get("start_ts"))))
        if (res.id_tag_info or {}).get("status") != "Accepted":
            log.warning("%s: StartTransaction %s: idTagInfo %s", self.id, rec["sid"],
                        res.id_tag_info)
        self.store.set_tx(rec["sid"], res.transaction_id, int(rec["connector"]))
        self.counters["tx_sent"] += 1
        return res.transaction_id

    async def _deliver(self, item):
        kind = item["kind"]
        if kind == "start":
            if self.store.tx(item["sid"]) is None:
                await self._start_tx(item["rec"])
            self.store.confirm(item)
            self._ack(item["seq"])
        elif kind == "stop":
            rec = item["rec"]
            tx = self.store.tx(item["sid"])
            if tx is None:
                # The start never reached this bridge (acked by someone else before, or
                # dropped): the CSMS needs a transaction to stop, so start it from the stop.
                await self._start_tx(rec)
                tx = self.store.tx(item["sid"])
            if not tx["stopped"]:
                meter = rec.get("meter_stop_wh")
                if meter is None:
                    meter = rec.get("meter_start_wh") or 0
                await self._call(call.StopTransaction(
                    meter_stop=int(meter), timestamp=ocpp_map.iso(rec.get("stop_ts")),
                    transaction_id=tx["txid"], reason=ocpp_map.stop_reason(rec.get("reason")),
                    id_tag=(rec.get("id_tag") or None)))
                self.counters["tx_sent"] += 1
                self.store.stopped(item["sid"])
            self.store.confirm(item)
            self._ack(item["seq"])
        elif kind == "meter":
            tx = self.store.tx(item["sid"])
            txid = tx["txid"] if tx and not tx["stopped"] else None
            await self._call(call.MeterValues(connector_id=item["connector"],
                                              meter_value=[item["mv"]], transaction_id=txid))

    def stats(self):
        return dict(self.counters, queued=len(self.store), accepted=self.accepted,
                    online=self.online)
