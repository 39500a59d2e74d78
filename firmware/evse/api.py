"""Backend commands (<base>/cmd): validate, apply, answer with exactly one reply.

Every handler validates all its arguments before it changes anything, so a rejected command
changes nothing. Errors are raised as ApiError(code, detail) and become ok:false replies.
"""

import json

from evse import tariff as tariffs
from evse.auth import REMOTE_MODES
from evse.compat import const, ticks_ms

MAX_PAYLOAD = 1900  # what fits the MQTT client's receive buffer with its topic
_MAX_RID = 64
_MAX_TTL_S = 86400 * 7
_MAX_REBOOT_DELAY_S = 3600
# Repeated rids: a backend that lost a reply retries with the same rid and payload; the
# station answers from memory instead of acting twice (rebooting twice, stopping a new
# session, ...).
RID_MEMORY = const(32)  # the last 32 answered commands
RID_MEMORY_S = const(600)  # ... for at most 10 minutes
_RID_REPLY_MAX = const(384)  # longer replies are remembered without their data
# Commands that change nothing: a repeat is simply run again (fresh data, no memory).
_READ_ONLY = ("diag", "config_get")


class ApiError(Exception):
    def __init__(self, code, detail):
        super().__init__(code)
        self.code = code
        self.detail = detail


def _num(args, key, lo, hi, required=True):
    if key not in args:
        if required:
            raise ApiError("bad_arg", "missing %s" % key)
        return None
    v = args[key]
    if v is None and not required:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ApiError("bad_arg", "%s must be a number" % key)
    if not lo <= v <= hi:
        raise ApiError("out_of_range", "%s must be %s..%s" % (key, lo, hi))
    return v


def _int(args, key, lo, hi, required=True):
    v = _num(args, key, lo, hi, required)
    if v is not None and not isinstance(v, int):
        # Many JSON encoders write 600 as 600.0: a number with no fractional part is an
        # integer; 600.5 is not.
        if not -1e15 < v < 1e15 or v != int(v):
            raise ApiError("bad_arg", "%s must be an integer" % key)
        v = int(v)
    return v


def _refused(e):
    """A validator's ValueError("code: detail") or ValueError(code, detail) as the
    ApiError it means."""
    if len(e.args) == 2:
        return ApiError(e.args[0], e.args[1])
    code, _, detail = str(e).partition(": ")
    return ApiError(code, detail)


def _tag(args):
    t = args.get("id_tag")
    if not isinstance(t, str) or not 0 < len(t) <= 20:
        raise ApiError("bad_arg", "id_tag must be a string of 1..20 characters")
    return t


def rid_of(obj):
    """The command's rid if usable (a short string or an integer), else None."""
    if not isinstance(obj, dict):
        return None
    rid = obj.get("rid")
    if isinstance(rid, str) and 0 < len(rid) <= _MAX_RID:
        return rid
    if isinstance(rid, int) and not isinstance(rid, bool):
        return rid
    return None


class Api:
    """Command dispatch for one station. `link` provides reconnect/reboot/publish hooks."""

    def __init__(self, station, link):
        self.st = station
        self.link = link
        self.handled = 0
        self.rejected = 0
        self.repeats = 0
        self._seen = []  # [rid, (len, hash) of the payload, reply, uptime_s], oldest first

    def _recall(self, rid, sig):
        """The remembered reply if this rid's latest command had the same payload."""
        seen = self._seen
        # Uptime seconds, not ticks: after days without commands a ticks stamp would
        # read as recent again and an old reply would answer a new command.
        now_s = self.st.uptime.s
        while seen and now_s - seen[0][3] > RID_MEMORY_S:
            seen.pop(0)
        for e in seen:
            if e[0] == rid:
                return e[2] if e[1] == sig else None
        return None

    def _remember(self, rid, sig, name, reply):
        if name in _READ_ONLY:
            return
        if "data" in reply and len(json.dumps(reply)) > _RID_REPLY_MAX:
            reply = {"rid": rid, "ok": reply["ok"]}
        seen = self._seen
        for i in range(len(seen)):
            if seen[i][0] == rid:
                seen.pop(i)  # only a rid's latest command counts: "ha", "ha", "ha"...
                break
        if len(seen) >= RID_MEMORY:
            seen.pop(0)
        seen.append([rid, sig, reply, self.st.uptime.s])

    def handle(self, payload, now=None):
        """payload (bytes) -> reply dict. Never raises. A repeat of a recently answered
        (rid, cmd) gets the remembered reply and is not carried out again."""
        if now is None:
            now = ticks_ms()
        rid = None
        name = None
        sig = None
        try:
            if len(payload) > MAX_PAYLOAD:
                raise ApiError("too_large", "payload over %d bytes" % MAX_PAYLOAD)
            try:
                obj = json.loads(payload)
            except (ValueError, UnicodeError):
                raise ApiError("bad_json", "payload is not valid UTF-8 JSON") from None
            rid = rid_of(obj)
            if not isinstance(obj, dict):
                raise ApiError("bad_json", "payload must be a JSON object")
            if rid is None:
                raise ApiError("bad_arg", "missing or unusable rid")
            name = obj.get("cmd")
            if not isinstance(name, str) or len(name) > 32:
                name = None
            # A retry repeats the payload byte for byte; a rid reused for anything else
            # (Home Assistant sends every command as "ha") is a new command.
            sig = (len(payload), hash(payload))
            old = self._recall(rid, sig)
            if old is not None:
                self.repeats += 1
                return old
            fn = getattr(self, "cmd_" + name, None) if name is not None else None
            if fn is None:
                raise ApiError("unknown_cmd", "unknown command %r" % (obj.get("cmd"),))
            data = fn(obj, now)
            self.handled += 1
            reply = {"rid": rid, "ok": True}
            if data is not None:
                reply["data"] = data
            self._remember(rid, sig, name, reply)
            return reply
        except ApiError as e:
            self.rejected += 1
            self.st.events.add("warn", "RejectedInput", 0, "%s: %s" % (e.code, e.detail))
            reply = {"rid": rid, "ok": False, "error": e.code, "detail": e.detail}
            if rid is not None:
                self._remember(rid, sig, name, reply)
            return reply
        except Exception as e:  # noqa: BLE001 - a bug in a handler must not kill the link
            self.rejected += 1
            self.st.events.add("error", "InternalError", 0, "cmd: %r" % (e,))
            return {"rid": rid, "ok": False, "error": "internal", "detail": repr(e)}

    # -- helpers --------------------------------------------------------------------------
    def _scope(self, args, allow_station=True):
        """connector argument -> list of Connector (0 = all, when allowed)."""
        n = len(self.st.connectors)
        cid = _int(args, "connector", 0 if allow_station else 1, n)
        if cid == 0:
            return 0, self.st.connectors
        return cid, [self.st.connectors[cid - 1]]

    def _limits(self, cid):
        return self.st.limits if cid == 0 else self.st.connectors[cid - 1].limits

    # -- commands -------------------------------------------------------------------------
    def cmd_set_limit(self, args, now):
        cid, _ = self._scope(args)
        amps = _num(args, "current_a", 0, 80)
        ttl = _int(args, "ttl_s", 1, _MAX_TTL_S, required=False)
        lim = self._limits(cid)
        # Expiry in uptime seconds (a TTL may be days, past ticks_diff's range); +1: the
        # second now under way has partly passed, so the limit never lapses early.
        expires = None if ttl is None else self.st.uptime.s + ttl + 1
        lim.set("backend", int(amps * 10 + 0.5) / 10, expires)
        self.st.failsafe.release()  # the backend spoke again: the failsafe ends everywhere
        return None

    def cmd_clear_limit(self, args, now):
        cid, _ = self._scope(args)
        self._limits(cid).clear("backend")
        self.st.failsafe.release()
        return None

    def cmd_set_schedule(self, args, now):
        cid, _ = self._scope(args)
        if "periods" not in args:
            raise ApiError("bad_arg", "missing periods")
        tt = self.st.timetable
        try:
            parsed = tt.set(cid, args["periods"])
        except ValueError as e:
            raise _refused(e) from None
        return {"periods": len(parsed), "clock": self.st.board.unix_time() is not None}

    def cmd_start(self, args, now):
        """Remote start: the app or a payment terminal has authorized id_tag."""
        st = self.st
        _, conns = self._scope(args, allow_station=False)
        c = conns[0]
        k = c.id - 1
        tag = _tag(args)
        caps = (_int(args, "max_wh", 1, 10 ** 7, required=False),
                _int(args, "max_cost_millis", 1, 10 ** 10, required=False),
                _int(args, "max_s", 1, 7 * 86400, required=False))
        _int(args, "priority", 1, 100, required=False)
        if st.cfg["auth_mode"] not in REMOTE_MODES:
            raise ApiError("not_allowed", "auth_mode %s takes cards only" % st.cfg["auth_mode"])
        if c.fault is not None:
            raise ApiError("not_allowed", "connector %d is faulted (%s)" % (c.id, c.fault))
        if not c.enabled:
            raise ApiError("not_allowed", "connector %d is disabled" % c.id)
        ses = st.sessions
        if ses.cur[k] is not None:
            raise ApiError("busy", "connector %d has session %s" % (c.id, ses.cur[k].sid))
        if ses.full():
            ses.refused += 1
            raise ApiError("busy", "session outbox full: waiting for acknowledgements")
        ses.authorize(k, tag, "remote", None, caps)
        return {"connection_timeout_s": st.cfg["connection_timeout_s"]}

    def cmd_set_tariff(self, args, now):
        if "currency" in args and args["currency"] is None and len(args) == 3:
            # {"currency": null} alone: no tariff any more (sessions carry no cost)
            try:
                tariffs.clear(self.st.store)
            except OSError as e:
                raise ApiError("storage", "could not save: %r" % (e,)) from None
            self.st.sessions.tariff = None
            self.st.events.add("info", "TariffChanged", 0, "none")
            return None
        obj = {}
        for k in args:
            if k not in ("rid", "cmd"):
                obj[k] = args[k]
        try:
            t = tariffs.parse(obj)
        except ValueError as e:
            raise _refused(e) from None
        try:
            tariffs.save(self.st.store, t)
        except OSError as e:
            raise ApiError("storage", "could not save: %r" % (e,)) from None
        self.st.sessions.tariff = t  # for sessions that start from now on
        self.st.events.add("info", "TariffChanged", 0, t["currency"])
        return None

    def cmd_auth_list(self, args, now):
        ver = _int(args, "version", 1, 2 ** 31 - 1)
        mode = args.get("mode")
        if mode not in ("full", "diff"):
            raise ApiError("bad_arg", "mode must be full or diff")
        entries = args.get("entries")
        if not isinstance(entries, list):
            raise ApiError("bad_arg", "entries must be a list")
        lst = self.st.auth.list
        try:
            n = lst.apply(ver, mode, entries)
        except ValueError as e:
            raise _refused(e) from None
        except OSError as e:
            raise ApiError("storage", "could not save: %r" % (e,)) from None
        for e in entries:
            if isinstance(e, dict):
                self.st.auth.cache.drop(e.get("id_tag"))  # a listed id is never cached
        return {"version": lst.version, "entries": n}

    def cmd_enable(self, args, now):
        _, conns = self._scope(args)
        for c in conns:
            c.set_enabled(True)
        return None

    def cmd_disable(self, args, now):
        _, conns = self._scope(args)
        for c in conns:
            c.set_enabled(False)
            self.st.sessions.grant[c.id - 1] = None
        return None

    def cmd_stop(self, args, now):
        ses = self.st.sessions
        if "sid" in args:
            sid = args["sid"]
            if not isinstance(sid, str):
                raise ApiError("bad_arg", "sid must be a string")
            k = ses.find(sid)
            if k is None:
                raise ApiError("not_found", "no session %s" % sid)
            if ses.cur[k].closing is not None:
                raise ApiError("not_allowed", "session %s is ending" % sid)
            ses.stop(k, "Remote")
            return {"sid": sid}
        _, conns = self._scope(args, allow_station=False)
        c = conns[0]
        k = c.id - 1
        s = ses.cur[k]
        if s is not None:
            if s.closing is not None:
                raise ApiError("not_allowed", "session %s is ending" % s.sid)
            ses.stop(k, "Remote")
            return {"sid": s.sid}
        if ses.grant[k] is not None:
            ses.grant[k] = None  # authorized, no EV yet: the authorization is withdrawn
            return None
        if not c.authorized:
            raise ApiError("not_allowed", "connector %d is not charging" % c.id)
        c.stop()
        return None

    def cmd_reboot(self, args, now):
        delay = _int(args, "delay_s", 0, _MAX_REBOOT_DELAY_S, required=False) or 0
        self.link.schedule_reboot(now, delay)
        return {"delay_s": delay}

    def cmd_diag(self, args, now):
        return self.link.diag(now)

    def cmd_config_get(self, args, now):
        pub = self.st.cfg.public()
        keys = args.get("keys")
        if keys is None:
            return pub
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise ApiError("bad_arg", "keys must be a list of strings")
        out = {}
        for k in keys:
            if k not in pub:
                raise ApiError("bad_arg", "unknown key %s" % k)
            out[k] = pub[k]
        return out

    def cmd_config_set(self, args, now):
        values = args.get("values")
        if not isinstance(values, dict) or not values:
            raise ApiError("bad_arg", "values must be a non-empty object")
        try:
            changed = self.st.cfg.update(values)
        except ValueError as e:
            raise _refused(e) from None
        except OSError as e:
            raise ApiError("storage", "could not save: %r" % (e,)) from None
        # Secrets are named, never shown.
        self.st.events.add("info", "ConfigChanged", 0, ",".join(sorted(changed)))
        self.link.config_changed(changed)
        return {"changed": sorted(changed)}
