"""Pure translations between the station's MQTT payloads and OCPP 1.6J messages."""

import datetime

# The session records carry OCPP 2.0.1 stoppedReason names; OCPP 1.6's Reason enum lacks
# some of them. Each maps to the same name where 1.6 has it, else to the closest 1.6 value.
STOP_REASONS = {
    "EVDisconnected": "EVDisconnected",
    "Local": "Local",
    "Remote": "Remote",
    "PowerLoss": "PowerLoss",
    "Reboot": "Reboot",
    "DeAuthorized": "DeAuthorized",
    "EmergencyStop": "EmergencyStop",
    "EnergyLimitReached": "Other",
    "LocalOutOfCredit": "Other",
    "TimeLimitReached": "Other",
    # A ground or overcurrent fault opens the contactor like an emergency stop would, but
    # 1.6 has no fault reasons; Other keeps "the station ended it on its own".
    "GroundFault": "Other",
    "OvercurrentFault": "Other",
    "Other": "Other",
}

CONNECTOR_STATES = {"Available", "Preparing", "Charging", "SuspendedEVSE", "SuspendedEV",
                    "Finishing", "Reserved", "Unavailable", "Faulted"}
ERROR_CODES = {"ConnectorLockFailure", "EVCommunicationError", "GroundFailure",
               "HighTemperature", "InternalError", "LocalListConflict", "NoError",
               "OtherError", "OverCurrentFailure", "OverVoltage", "PowerMeterFailure",
               "PowerSwitchFailure", "ReaderFailure", "ResetFailure", "UnderVoltage",
               "WeakSignal"}

NOMINAL_V = 230.0  # a W limit becomes A at this phase voltage (the station has no setting)
TTL_MAX_S = 604800  # the station's set_limit ttl_s range
CURRENT_MAX_A = 80.0


def iso(ts):
    """Unix seconds -> OCPP timestamp; None -> now (the station's clock may be unset)."""
    if ts is None:
        dt = datetime.datetime.now(datetime.timezone.utc)
    else:
        dt = datetime.datetime.fromtimestamp(ts, datetime.timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_iso(text):
    """OCPP timestamp -> Unix seconds (int), or None when it cannot be read."""
    if not isinstance(text, str):
        return None
    try:
        dt = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=datetime.timezone.utc)
    return int(dt.timestamp())


def stop_reason(reason):
    return STOP_REASONS.get(reason, "Other")


def connector_status(conn):
    """A status connector -> (status, errorCode) in OCPP 1.6 terms."""
    state = conn.get("state")
    status = state if state in CONNECTOR_STATES else "Unavailable"
    err = conn.get("error")
    code = err if err in ERROR_CODES else ("OtherError" if err else "NoError")
    return status, code


def station_status(conns):
    """Connector 0 (the whole station): Unavailable when every connector is, else
    Available; the card reader's failure is the one station-wide error."""
    states = [connector_status(c) for c in conns]
    status = "Unavailable" if states and all(s == "Unavailable" for s, _ in states) \
        else "Available"
    reader = any(c.get("error") == "ReaderFailure" for c in conns)
    return status, "ReaderFailure" if reader else "NoError"


def _sv(value, measurand, unit, phase=None, context="Sample.Periodic"):
    d = {"value": str(value), "context": context, "measurand": measurand, "unit": unit,
         "location": "Outlet"}
    if phase:
        d["phase"] = phase
    return d


def sampled_values(meter, phases):
    """A `meter` message -> the sampledValue list of one MeterValue."""
    out = [_sv(int(meter["e_wh"]), "Energy.Active.Import.Register", "Wh")]
    if meter.get("p_w") is not None:
        out.append(_sv(int(meter["p_w"]), "Power.Active.Import", "W"))
    for n in range(max(1, min(3, phases))):
        i = meter.get("i") or []
        v = meter.get("v") or []
        if n < len(i):
            out.append(_sv(i[n], "Current.Import", "A", "L%d" % (n + 1)))
        if n < len(v):
            out.append(_sv(v[n], "Voltage", "V", "L%d-N" % (n + 1)))
    return out


class Unfit(ValueError):
    """A charging profile the station cannot carry out: the answer is Rejected."""


def _period_current_a(period, unit, phases):
    limit = float(period["limit"])
    if unit == "W":
        n = period.get("number_phases") or phases
        limit = limit / (NOMINAL_V * max(1, min(3, int(n))))
    if limit < 0:
        raise Unfit("negative limit")
    # A ceiling above what any station takes is simply no ceiling: clamp, not reject.
    return round(min(limit, CURRENT_MAX_A), 1)


def profile_orders(profile, phases, tz, now_s):
    """A csChargingProfiles object (snake_case keys, as the ocpp package hands them over)
    -> ("limit", current_a, ttl_s or None) or
    ("schedule", periods) for set_schedule. Raises Unfit for what does not fit."""
    sched = profile.get("charging_schedule") or {}
    unit = sched.get("charging_rate_unit")
    periods = sorted(sched.get("charging_schedule_period") or [],
                     key=lambda p: p.get("start_period", 0))
    if unit not in ("A", "W") or not periods:
        raise Unfit("no schedule")
    ttl_s = None
    valid_to = parse_iso(profile.get("valid_to")) if profile.get("valid_to") else None
    if valid_to is not None:
        ttl_s = valid_to - now_s
        if ttl_s <= 0:
            raise Unfit("validTo has passed")
    kind = profile.get("charging_profile_kind")
    if kind != "Recurring" and sched.get("duration"):
        # A schedule that ends after `duration` lapses like a TTL (from now: Relative, or an
        # Absolute one without startSchedule, which starts now).
        start = parse_iso(sched.get("start_schedule")) or now_s
        left = int(sched["duration"]) - max(0, now_s - start)
        if left <= 0:
            raise Unfit("schedule has ended")
        ttl_s = left if ttl_s is None else min(ttl_s, left)
    if ttl_s is not None and ttl_s > TTL_MAX_S:
        ttl_s = None  # beyond the station's 7 days: treated as no expiry (documented)
    if len(periods) == 1 and int(periods[0].get("start_period", 0)) == 0:
        return ("limit", _period_current_a(periods[0], unit, phases), ttl_s)
    if kind != "Recurring" or profile.get("recurrency_kind") != "Daily":
        raise Unfit("multi-period schedules must be daily recurring")
    if tz != "UTC0":
        # The station keeps schedules in its local time (config tz); the profile's times
        # are UTC. Only a station on UTC0 can take them unchanged.
        raise Unfit("station tz is not UTC0")
    start = parse_iso(sched.get("start_schedule"))
    if start is None:
        raise Unfit("a daily schedule needs startSchedule")
    if len(periods) > 24:
        raise Unfit("more than 24 periods")
    base_min = (start % 86400) // 60
    starts = []
    for p in periods:
        sp = int(p.get("start_period", 0))
        if sp % 60 or sp >= 86400:
            raise Unfit("startPeriod must be whole minutes within a day")
        starts.append(sp // 60)
    out = []
    for n, p in enumerate(periods):
        a = (base_min + starts[n]) % 1440
        b = (base_min + (starts[n + 1] if n + 1 < len(starts) else starts[0] + 1440)) % 1440
        if a == b:
            raise Unfit("empty period")
        out.append({"start": "%02d:%02d" % divmod(a, 60),
                    "end": "24:00" if b == 0 else "%02d:%02d" % divmod(b, 60),
                    "days": "1234567", "current_a": _period_current_a(p, unit, phases)})
    return ("schedule", out)


# OCPP configuration keys the station holds: OCPP key -> (station key, kind).
STATION_KEYS = {
    "MeterValueSampleInterval": ("meter_interval_s", "int"),
    "ConnectionTimeOut": ("connection_timeout_s", "int"),
    "LocalAuthorizeOffline": ("auth.offline_local", "bool"),
    "AllowOfflineTxForUnknownId": ("auth.offline_unknown", "bool"),
    "StopTransactionOnInvalidId": ("auth.stop_on_invalid", "bool"),
}
# Keys whose value is fixed by how the station works (read-only); NumberOfConnectors and
# HeartbeatInterval are filled in by the bridge.
FIXED_KEYS = {
    "LocalPreAuthorize": "true",
    "LocalAuthListEnabled": "true",
    "LocalAuthListMaxLength": "1000",
    "AuthorizeRemoteTxRequests": "false",
    "MeterValuesSampledData": "Energy.Active.Import.Register,Power.Active.Import,"
                              "Current.Import,Voltage",
    "SupportedFeatureProfiles": "Core,LocalAuthListManagement,SmartCharging,RemoteTrigger",
    "ChargeProfileMaxStackLevel": "0",
    "ChargingScheduleAllowedChargingRateUnit": "Current,Power",
    "ChargingScheduleMaxPeriods": "24",
    "MaxChargingProfilesInstalled": "3",
}


def config_to_ocpp(kind, value):
    if kind == "bool":
        return "true" if value else "false"
    return str(value)


def config_from_ocpp(kind, text):
    """An OCPP configuration value (a string) -> the station's value; ValueError if bad."""
    text = text.strip()
    if kind == "bool":
        if text.lower() not in ("true", "false"):
            raise ValueError(text)
        return text.lower() == "true"
    return int(text)


def local_list_entries(items, full):
    """SendLocalList localAuthorizationList -> auth_list entries; ValueError if bad."""
    out = []
    for it in items or []:
        info = it.get("id_tag_info")
        entry = {"id_tag": it["id_tag"]}
        if info is None:
            if full:
                raise ValueError("a full list needs idTagInfo for every entry")
            entry["status"] = None  # differential: removes the entry
        else:
            st = info.get("status")
            # A local list can only say yes or no: Invalid and ConcurrentTx mean no.
            entry["status"] = st if st in ("Accepted", "Blocked", "Expired") else "Blocked"
            exp = parse_iso(info.get("expiry_date")) if info.get("expiry_date") else None
            if exp is not None:
                entry["expires"] = exp
            if info.get("parent_id_tag"):
                entry["group"] = info["parent_id_tag"]
        out.append(entry)
    return out


def auth_result(rid, info):
    """Authorize.conf id_tag_info -> an auth/res payload."""
    st = info.get("status")
    # ConcurrentTx (the id charges elsewhere) is a refusal the station knows as Invalid.
    res = {"rid": rid,
           "status": st if st in ("Accepted", "Blocked", "Expired", "Invalid") else "Invalid"}
    exp = parse_iso(info.get("expiry_date")) if info.get("expiry_date") else None
    if exp is not None and exp >= 0:
        res["expires"] = exp
    if info.get("parent_id_tag"):
        res["group"] = info["parent_id_tag"]
    return res
