"""The CSMS's calls carried out as station commands; CallErrors for the rest."""

import asyncio
import json
import logging
import time

from ocpp.exceptions import (
    InternalError,
    NotImplementedError,
    NotSupportedError,
    OCPPError,
    ProtocolError,
)
from ocpp.messages import MessageType, unpack
from ocpp.routing import on
from ocpp.v16 import ChargePoint, call_result
from ocpp.v16.enums import Action

import ocpp_map

log = logging.getLogger("ocpp_bridge")
wire = logging.getLogger("ocpp_bridge.wire")  # every frame at INFO: quiet unless DEBUG

# OCPP-J 1.6 names two error codes differently from the 2.0 names the package uses.
V16_CODES = {"FormatViolation": "FormationViolation",
             "OccurrenceConstraintViolation": "OccurenceConstraintViolation"}
KNOWN_ACTIONS = {a.value for a in Action}


async def apply_order(link, connector, order):
    """A profile order -> set_limit / set_schedule on one scope; True when ok."""
    if order[0] == "limit":
        args = {"connector": connector, "current_a": order[1]}
        if order[2] is not None:
            args["ttl_s"] = order[2]
        r = await link.bridge.command(link.id, "set_limit", **args)
    else:
        r = await link.bridge.command(link.id, "set_schedule", connector=connector,
                                      periods=order[1])
    return bool(r and r.get("ok"))


async def undo_order(link, connector, kind):
    if kind == "limit":
        r = await link.bridge.command(link.id, "clear_limit", connector=connector)
    else:
        r = await link.bridge.command(link.id, "set_schedule", connector=connector, periods=[])
    return bool(r and r.get("ok"))


def _order_now(p):
    order = list(p["order"])
    if order[0] == "limit" and p.get("until_s"):
        order[2] = max(1, int(p["until_s"] - time.time()))
    return order


async def end_tx_profile(link, connector):
    """A session ended (its stop record arrived, whether or not the CSMS is connected): its
    TxProfile goes; a TxDefaultProfile of that connector applies again."""
    profiles = link.store.state["profiles"]
    for pid, p in list(profiles.items()):
        if p["purpose"] == "TxProfile" and connector in p["connectors"]:
            del profiles[pid]
            link.store.save()
            default = next((d for d in profiles.values() if d["purpose"] == "TxDefaultProfile"
                            and connector in d["connectors"]), None)
            if default:
                await apply_order(link, connector, _order_now(default))
            else:
                await undo_order(link, connector, p["kind"])


class BridgeChargePoint(ChargePoint):
    """One websocket connection of one station (a new one per connect)."""

    def __init__(self, id, connection, link, response_timeout=30):
        super().__init__(id, connection, response_timeout=response_timeout, logger=wire)
        self.link = link
        self.calls = set()

    # ---- routing: incoming calls run as tasks, so a call waiting for the station's reply
    # never holds up the CallResults of our own transaction messages ----
    async def route_message(self, raw_msg):
        try:
            msg = unpack(raw_msg)
        except OCPPError as e:
            return await self._malformed(raw_msg, e)
        if msg.message_type_id == MessageType.Call:
            if not isinstance(msg.unique_id, str) or not isinstance(msg.action, str):
                return await self._malformed(raw_msg, ProtocolError(
                    details={"cause": "uniqueId and action must be strings"}))
            t = asyncio.ensure_future(self._run_call(msg))
            self.calls.add(t)
            t.add_done_callback(self.calls.discard)
        elif msg.message_type_id in (MessageType.CallResult, MessageType.CallError):
            self._response_queue.put_nowait(msg)

    async def _run_call(self, msg):
        try:
            await self._handle_call(msg)
        except OCPPError as e:
            self.link.counters["bad_input"] += 1
            log.warning("%s: CallError %s for %s: %s", self.id, V16_CODES.get(e.code, e.code),
                        msg.action, e.description)
            await self._send(self._error(msg.unique_id, e))
        except Exception as e:  # a bug here must not end the connection
            log.exception("%s: handling %s", self.id, msg.action)
            await self._send(self._error(msg.unique_id, InternalError(repr(e)[:200])))

    @staticmethod
    def _error(unique_id, e, code=None):
        code = code or V16_CODES.get(e.code, e.code)
        return json.dumps([4, unique_id, code, str(e.description or "")[:200],
                           e.details if isinstance(e.details, dict) else {}], default=str)

    async def _malformed(self, raw, e):
        self.link.counters["bad_input"] += 1
        log.warning("%s: malformed message from the CSMS: %s", self.id, str(raw)[:200])
        try:
            msg = json.loads(raw)
            uid = msg[1] if isinstance(msg, list) and len(msg) > 1 else None
        except (ValueError, TypeError):
            uid = None
        if isinstance(uid, str) and isinstance(msg, list) and msg[0] == MessageType.Call:
            await self._send(self._error(uid, e))
        # else nothing can be answered: without a uniqueId no CallError can be matched

    async def _handle_call(self, msg):
        if msg.action not in self.route_map:
            # OCPP-J 1.6 §4.2.3: NotImplemented = the action is not known, NotSupported =
            # recognized but not supported. (The ocpp package swaps the two.)
            if msg.action in KNOWN_ACTIONS:
                raise NotSupportedError("Requested Action is recognized but not supported",
                                        {"cause": "%s is not mapped" % msg.action})
            raise NotImplementedError("Requested Action is not known by receiver",
                                      {"cause": "unknown action %s" % msg.action})
        return await super()._handle_call(msg)

    def cancel_all(self):
        for t in list(self.calls):
            t.cancel()

    # ---- helpers ----
    async def cmd(self, name, **args):
        return await self.link.bridge.command(self.link.id, name, **args)

    def connectors(self):
        return list(range(1, int((self.link.info or {}).get("connectors") or 1) + 1))

    def phases(self):
        return int((self.link.info or {}).get("phases") or 3)

    @property
    def profiles(self):
        return self.link.store.state["profiles"]

    # ---- the calls ----
    @on(Action.remote_start_transaction)
    async def on_remote_start(self, id_tag, connector_id=None, charging_profile=None, **kw):
        st = self.link.status or {}
        if connector_id is None:
            free = [c["id"] for c in st.get("connectors", [])
                    if c.get("state") in ("Available", "Preparing") and not c.get("session")]
            if not free:
                return call_result.RemoteStartTransaction(status="Rejected")
            connector_id = free[0]
        order = None
        if charging_profile is not None:
            if charging_profile.get("charging_profile_purpose") != "TxProfile":
                return call_result.RemoteStartTransaction(status="Rejected")
            try:
                order = ocpp_map.profile_orders(charging_profile, self.phases(),
                                                self.link.config.get("tz", "UTC0"),
                                                int(time.time()))
            except (ocpp_map.Unfit, ValueError, TypeError, KeyError) as e:
                log.info("%s: RemoteStart profile refused: %s", self.id, e)
                return call_result.RemoteStartTransaction(status="Rejected")
        r = await self.cmd("start", connector=connector_id, id_tag=id_tag)
        if not (r and r.get("ok")):
            return call_result.RemoteStartTransaction(status="Rejected")
        if order is not None:
            if await apply_order(self.link, connector_id, order):
                self._remember(charging_profile, "TxProfile", [connector_id], order)
            else:
                log.warning("%s: the remote start's profile was refused", self.id)
        return call_result.RemoteStartTransaction(status="Accepted")

    @on(Action.remote_stop_transaction)
    async def on_remote_stop(self, transaction_id, **kw):
        sid = self.link.store.sid_of(transaction_id)
        r = await self.cmd("stop", sid=sid) if sid else None
        return call_result.RemoteStopTransaction(
            status="Accepted" if r and r.get("ok") else "Rejected")

    def _remember(self, profile, purpose, connectors, order):
        for pid, p in list(self.profiles.items()):  # one profile per purpose and scope
            if p["purpose"] == purpose and set(p["connectors"]) & set(connectors):
                del self.profiles[pid]
        until = None
        if order[0] == "limit" and order[2] is not None:
            until = int(time.time()) + order[2]
        self.profiles[str(profile.get("charging_profile_id"))] = {
            "purpose": purpose, "connectors": connectors, "stack_level":
            profile.get("stack_level"), "kind": order[0], "order": order, "until_s": until}
        self.link.store.save()

    @on(Action.set_charging_profile)
    async def on_set_charging_profile(self, connector_id, cs_charging_profiles, **kw):
        p = cs_charging_profiles
        purpose = p.get("charging_profile_purpose")
        if purpose == "ChargePointMaxProfile":
            scopes = [0] if connector_id == 0 else []
        elif purpose == "TxDefaultProfile":
            scopes = self.connectors() if connector_id == 0 else [connector_id]
        elif purpose == "TxProfile":
            # A TxProfile needs a transaction running on its connector.
            scopes = [connector_id] if connector_id and self.link.conn_sid(connector_id) \
                else []
        else:
            scopes = []
        if not scopes or any(c not in [0] + self.connectors() for c in scopes):
            return call_result.SetChargingProfile(status="Rejected")
        try:
            order = ocpp_map.profile_orders(p, self.phases(), self.link.config.get("tz", "UTC0"),
                                            int(time.time()))
        except (ocpp_map.Unfit, ValueError, TypeError, KeyError) as e:
            log.info("%s: SetChargingProfile refused: %s", self.id, e)
            return call_result.SetChargingProfile(status="Rejected")
        ok = True
        for c in scopes:
            ok = await apply_order(self.link, c, order) and ok
        if ok:
            self._remember(p, purpose, scopes, order)
        return call_result.SetChargingProfile(status="Accepted" if ok else "Rejected")

    @on(Action.clear_charging_profile)
    async def on_clear_charging_profile(self, id=None, connector_id=None,
                                        charging_profile_purpose=None, stack_level=None, **kw):
        hits = []
        for pid, p in self.profiles.items():
            if id is not None and pid != str(id):
                continue
            if connector_id is not None and connector_id not in p["connectors"] and not (
                    connector_id == 0 and 0 in p["connectors"]):
                continue
            if charging_profile_purpose and p["purpose"] != charging_profile_purpose:
                continue
            if stack_level is not None and p.get("stack_level") != stack_level:
                continue
            hits.append(pid)
        for pid in hits:
            p = self.profiles.pop(pid)
            for c in p["connectors"]:
                await undo_order(self.link, c, p["kind"])
        if hits:
            self.link.store.save()
        return call_result.ClearChargingProfile(status="Accepted" if hits else "Unknown")

    @on(Action.change_availability)
    async def on_change_availability(self, connector_id, type, **kw):
        if connector_id not in [0] + self.connectors():
            return call_result.ChangeAvailability(status="Rejected")
        targets = self.connectors() if connector_id == 0 else [connector_id]
        scheduled, ok = False, True
        for c in targets:
            if type == "Operative":
                self.link.pending_disable.discard(c)
                r = await self.cmd("enable", connector=c)
            elif self.link.conn_sid(c):
                # The station's disable would stop the session; OCPP lets it finish first.
                self.link.pending_disable.add(c)
                scheduled = True
                continue
            else:
                r = await self.cmd("disable", connector=c)
            ok = ok and bool(r and r.get("ok"))
        status = "Rejected" if not ok else ("Scheduled" if scheduled else "Accepted")
        return call_result.ChangeAvailability(status=status)

    def _bridge_keys(self):
        keys = dict(ocpp_map.FIXED_KEYS)
        keys["NumberOfConnectors"] = str(len(self.connectors()))
        return keys

    @on(Action.get_configuration)
    async def on_get_configuration(self, key=None, **kw):
        wanted = key if key else list(ocpp_map.STATION_KEYS) + ["HeartbeatInterval"] + list(
            self._bridge_keys())
        station = [k for k in wanted if k in ocpp_map.STATION_KEYS]
        values = {}
        if station:
            r = await self.cmd("config_get", keys=[ocpp_map.STATION_KEYS[k][0]
                                                   for k in station])
            values = (r or {}).get("data") or {}
        out, unknown = [], []
        fixed = self._bridge_keys()
        for k in wanted:
            if k in ocpp_map.STATION_KEYS:
                skey, kind = ocpp_map.STATION_KEYS[k]
                if skey in values:
                    out.append({"key": k, "readonly": False,
                                "value": ocpp_map.config_to_ocpp(kind, values[skey])})
                else:
                    unknown.append(k)  # the station did not answer
            elif k == "HeartbeatInterval":
                out.append({"key": k, "readonly": False, "value": str(self.link.heartbeat_s)})
            elif k in fixed:
                out.append({"key": k, "readonly": True, "value": fixed[k]})
            else:
                unknown.append(k)
        return call_result.GetConfiguration(configuration_key=out, unknown_key=unknown or None)

    @on(Action.change_configuration)
    async def on_change_configuration(self, key, value, **kw):
        if key == "HeartbeatInterval":
            try:
                self.link.heartbeat_s = max(0, int(value))
            except ValueError:
                return call_result.ChangeConfiguration(status="Rejected")
            return call_result.ChangeConfiguration(status="Accepted")
        if key in self._bridge_keys():
            return call_result.ChangeConfiguration(status="Rejected")  # read-only
        if key not in ocpp_map.STATION_KEYS:
            return call_result.ChangeConfiguration(status="NotSupported")
        skey, kind = ocpp_map.STATION_KEYS[key]
        try:
            v = ocpp_map.config_from_ocpp(kind, value)
        except ValueError:
            return call_result.ChangeConfiguration(status="Rejected")
        r = await self.cmd("config_set", values={skey: v})
        return call_result.ChangeConfiguration(
            status="Accepted" if r and r.get("ok") else "Rejected")

    @on(Action.reset)
    async def on_reset(self, type, **kw):
        # Hard and Soft alike: the station's reboot ends charging first, then resets.
        r = await self.cmd("reboot", delay_s=1)
        return call_result.Reset(status="Accepted" if r and r.get("ok") else "Rejected")

    @on(Action.send_local_list)
    async def on_send_local_list(self, list_version, update_type, local_authorization_list=None,
                                 **kw):
        full = update_type == "Full"
        try:
            entries = ocpp_map.local_list_entries(local_authorization_list, full)
        except (ValueError, KeyError, TypeError):
            return call_result.SendLocalList(status="Failed")
        r = await self.cmd("auth_list", version=list_version, mode="full" if full else "diff",
                           entries=entries)
        if r and r.get("ok"):
            return call_result.SendLocalList(status="Accepted")
        if r and not full and r.get("error") == "out_of_range" and "version" in str(
                r.get("detail")):
            return call_result.SendLocalList(status="VersionMismatch")
        return call_result.SendLocalList(status="Failed")

    @on(Action.get_local_list_version)
    async def on_get_local_list_version(self, **kw):
        r = await self.cmd("diag")
        try:
            version = int(r["data"]["auth"]["list_version"])
        except (TypeError, KeyError, ValueError):
            raise InternalError("the station did not answer") from None
        return call_result.GetLocalListVersion(list_version=version)

    @on(Action.data_transfer)
    async def on_data_transfer(self, vendor_id, **kw):
        return call_result.DataTransfer(status="UnknownVendorId")

    @on(Action.clear_cache)
    async def on_clear_cache(self, **kw):
        return call_result.ClearCache(status="Rejected")  # the station has no such command

    @on(Action.unlock_connector)
    async def on_unlock_connector(self, connector_id, **kw):
        return call_result.UnlockConnector(status="NotSupported")

    @on(Action.trigger_message)
    async def on_trigger_message(self, requested_message, connector_id=None, **kw):
        link = self.link
        if requested_message == "Heartbeat":
            link._spawn(link._call(self._call.Heartbeat()))
        elif requested_message == "StatusNotification":
            link.sent_status.clear()
            link._spawn(link.send_statuses())
        elif requested_message == "MeterValues" and link.last_meter:
            for c, m in link.last_meter.items():
                if connector_id in (None, 0, c):
                    link._spawn(self._meter_now(c, m))
        else:
            return call_result.TriggerMessage(status="NotImplemented")
        return call_result.TriggerMessage(status="Accepted")

    async def _meter_now(self, connector, m):
        mv = {"timestamp": ocpp_map.iso(m.get("ts")),
              "sampled_value": ocpp_map.sampled_values(m, self.phases())}
        for sv in mv["sampled_value"]:
            sv["context"] = "Trigger"
        await self.link._call(self._call.MeterValues(connector_id=connector, meter_value=[mv]))
