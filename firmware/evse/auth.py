"""Who may charge: cards at the reader and the backend's answers, with OCPP 1.6 semantics
(docs/mqtt.md, Authorization).

A presented id is looked up in the local authorization list, then in the cache of the
backend's earlier answers, then asked of the backend (`auth/req`, answered on `auth/res`
within auth_timeout_s). Offline, the list and the cache decide (auth.offline_local), and an
unknown id is refused unless auth.offline_unknown. A start that was let through without the
backend's word (from the cache, or offline) is checked with the backend once it can be, and
a late Invalid answer stops the session (DeAuthorized, auth.stop_on_invalid)."""

import json
from os import urandom

from evse.authlist import Cache, LocalList
from evse.compat import const
from evse.connector import PLUGGED
from evse.report import dumps

_NEVER = const(0x3FFFFFFF)  # uptime s (34 years): still a small int on the ESP32
_PENDING_MAX = const(8)  # requests in flight; more taps than this wait for the next ones
_LATE_MAX = const(8)  # timed-out requests whose late answer still counts
_STATUSES = ("Accepted", "Blocked", "Expired", "Invalid", "NoCredit")
_CARD_MODES = ("rfid", "rfid+remote")
REMOTE_MODES = ("free", "remote", "rfid+remote")
# Kinds of request: a tap waiting for the answer, a running session to confirm, a tap that
# may stop a session of the same group.
_TAP = const(0)
_VERIFY = const(1)
_GROUP = const(2)


class Auth:
    def __init__(self, station, reader=None):
        self.st = station
        self.reader = reader
        self.list = LocalList(station.store)
        if self.list.corrupt:
            station.events.add("error", "AuthListCorrupt", 0, "local list unreadable: empty")
        self.cache = Cache(station.store)
        self.online = False
        self._rid = 0
        self._boot = "a%04x-" % (int.from_bytes(urandom(2), "little"))
        self.pending = []  # [rid, id_tag, kind, connector index, until uptime s]
        self.late = []  # pending entries that timed out: a late answer still counts
        self.out = []  # auth/req payloads waiting for the link
        self.taps = 0
        self.res_unknown = 0  # auth/res with a rid not asked (or garbled)
        self.last = None  # (id_tag, result) of the last presentation
        station.sessions.on_stop = self._stopped

    # -- the loop ---------------------------------------------------------------------------
    def step(self, now):
        r = self.reader
        if r is not None:
            uid = r.poll(now)
            if uid is not None:
                self.tap(uid)
        pend = self.pending
        if pend:
            up = self.st.uptime.s
            i = len(pend)
            while i:  # (no copy of the list: a confirmation may wait for hours)
                i -= 1
                p = pend[i]
                if up >= p[4]:
                    pend.pop(i)
                    self._timeout(p)

    def publish(self, send):
        while self.out:
            if not send(self.out[0]):
                return
            self.out.pop(0)

    # -- a card -----------------------------------------------------------------------------
    def tap(self, id_tag):
        st = self.st
        ses = st.sessions
        self.taps += 1
        # 1. The same id (or one of its group) ends its own session.
        e = self._known(id_tag)
        group = e[3] if e is not None else None
        for k, s in enumerate(ses.cur):
            if s is None or s.closing is not None:
                continue  # (an ending session's record waits for the meter: not a target)
            if s.id_tag == id_tag or (group is not None and s.group == group):
                self._result(id_tag, "Stop", k)
                ses.stop(k, "Local")
                return
        if st.cfg["auth_mode"] not in _CARD_MODES:
            self._result(id_tag, "Ignored", -1, "auth_mode %s" % st.cfg["auth_mode"])
            return
        k = self._target()
        if k is None:
            if e is None and self.online and any(
                    s is not None and s.group is not None for s in ses.cur):
                self._ask(id_tag, _GROUP, -1)  # it may belong to a running group
                return
            self._result(id_tag, "Ignored", -1, "no free connector")
            return
        self._decide(id_tag, k)

    def _known(self, id_tag):
        e = self.list.lookup(id_tag)
        if e is None:
            e = self.cache.get(id_tag, self.st.board.unix_time())
        return e

    def _target(self):
        """The connector a card is for: one whose EV waits (plugged in, not authorized),
        else a free one; with several free, len(connectors): whichever an EV plugs into
        first within connection_timeout_s. None: no connector is free."""
        ses = self.st.sessions
        free = None
        n = 0
        for k, c in enumerate(self.st.connectors):
            s = ses.cur[k]
            if (s is not None and s.closing is None) or not c.enabled or c.fault is not None:
                continue  # (a grant waits while an ending session's record is written)
            if c.cp in PLUGGED and not c.authorized:
                return k
            if c.cp == "A" and ses.grant[k] is None:
                free = k
                n += 1
        return free if n < 2 else len(self.st.connectors)

    def _decide(self, id_tag, k):
        cfg = self.st.cfg
        now_u = self.st.board.unix_time()
        local = self.online or cfg["auth.offline_local"]
        e = self.list.lookup(id_tag)
        if e is not None:
            status = _expired(e, now_u)
            if status == "Accepted" and local:
                self._grant(k, id_tag, "local_list", e[3], (e[2], None, None))
            else:
                self._result(id_tag, status if status != "Accepted" else "Offline", k)
            return
        e = self.cache.get(id_tag, now_u)
        if e is not None and e[0] == "Accepted":
            if not local:
                self._result(id_tag, "Offline", k)
                return
            self._grant(k, id_tag, "cache", e[3], (e[2], None, None))
            # OCPP LocalPreAuthorize: started at once, confirmed with the backend (offline:
            # once the link is back); a later invalid answer stops it.
            self._ask(id_tag, _VERIFY, k)
            return
        if self.online:
            self._ask(id_tag, _TAP, k)
            return
        self._offline(id_tag, k, e)

    def _offline(self, id_tag, k, cached):
        """No backend to ask (offline, or silent past auth_timeout_s)."""
        if cached is not None:
            self._result(id_tag, cached[0], k)  # its last known answer
        elif self.st.cfg["auth.offline_unknown"]:
            self._grant(k, id_tag, "offline", None, (None, None, None))
            # Checked with the backend when the link is back: a late Invalid stops it.
            self._ask(id_tag, _VERIFY, k)
        else:
            self._result(id_tag, "Offline", k)

    def _grant(self, k, id_tag, how, group, caps):
        self._result(id_tag, "Accepted", k)
        ses = self.st.sessions
        ses.authorize(k if k < len(ses.cur) else None, id_tag, how, group, caps)

    def _result(self, id_tag, result, k, detail=None):
        self.last = (id_tag, result)
        cid = k + 1 if 0 <= k < len(self.st.connectors) else 0
        if result in ("Accepted", "Stop"):
            return  # the session message is the record
        what = "%s %s" % (id_tag, detail or result)
        if result == "Ignored":
            self.st.events.add("info", "TagIgnored", cid, what)
        else:
            self.st.events.add("warn", "AuthRefused", cid, what)

    # -- the backend ------------------------------------------------------------------------
    def _ask(self, id_tag, kind, k):
        self._rid += 1
        # The boot's own prefix: an answer meant for a request from before a reboot never
        # matches a new one.
        rid = "%s%d" % (self._boot, self._rid)
        if len(self.pending) >= _PENDING_MAX:
            self.pending.pop(0)
        if len(self.out) >= _PENDING_MAX:
            self.out.pop(0)
        timeout = self.st.cfg["auth_timeout_s"]
        # A verification waits for the link however long: it is sent when the link is back.
        until = self.st.uptime.s + timeout if kind != _VERIFY else _NEVER
        self.pending.append([rid, id_tag, kind, k, until])
        self.out.append(dumps({"rid": rid, "id_tag": id_tag,
                               "connector": k + 1 if 0 <= k < len(self.st.connectors) else 0}))

    def _timeout(self, p):
        id_tag, kind, k = p[1], p[2], p[3]
        if len(self.late) >= _LATE_MAX:
            self.late.pop(0)
        self.late.append(p)
        if kind == _TAP:
            self.st.events.add("warn", "AuthTimeout", k + 1 if k < len(self.st.connectors) else 0,
                               "%s: no answer in %d s" % (id_tag, self.st.cfg["auth_timeout_s"]))
            if self._target() == k:
                self._offline(id_tag, k, self.cache.get(id_tag, self.st.board.unix_time()))

    def on_res(self, payload):
        """<base>/auth/res. An unknown rid or a garbled answer is counted and ignored."""
        try:
            obj = json.loads(payload)
            rid = obj["rid"]
            status = obj["status"]
            if status not in _STATUSES:
                raise ValueError
            max_wh = _opt_int(obj.get("max_wh"))
            max_cost = _opt_int(obj.get("max_cost_millis"))
            expires = _opt_int(obj.get("expires"))
            group = obj.get("group")
            if group is not None and (not isinstance(group, str) or not 0 < len(group) <= 20):
                raise ValueError
        except (ValueError, KeyError, TypeError, UnicodeError):
            self.res_unknown += 1
            self.st.events.add("warn", "RejectedInput", 0, "auth/res: malformed")
            return
        p = None
        late = False
        for q in self.pending:
            if q[0] == rid:
                p = q
                self.pending.remove(q)
                break
        if p is None:
            for q in self.late:
                if q[0] == rid:
                    p = q
                    late = True
                    self.late.remove(q)
                    break
        if p is None:
            self.res_unknown += 1
            return
        id_tag, kind, k = p[1], p[2], p[3]
        if self.list.lookup(id_tag) is None:
            try:
                if status in ("Accepted", "Blocked", "Expired"):
                    self.cache.put(id_tag, status, expires, max_wh, group)
                else:
                    self.cache.drop(id_tag)
            except ValueError:
                pass  # not cacheable (a far expiry, an odd group): used once, not kept
        ses = self.st.sessions
        if kind == _GROUP:
            for j, s in enumerate(ses.cur):
                if s is not None and status == "Accepted" and group is not None \
                        and s.group == group:
                    ses.stop(j, "Local")
                    return
            self._result(id_tag, "Ignored", -1, "not of a running session's group")
            return
        if kind == _TAP and not late:
            if status == "Accepted":
                n = len(ses.cur)
                if k < n and ses.cur[k] is None and ses.grant[k] is None:
                    use = k  # still free (an EV may be waiting on it)
                else:
                    use = self._target()
                if use is not None:
                    self._grant(use, id_tag, "backend", group, (max_wh, max_cost, None))
            else:
                self._result(id_tag, status, k)
            return
        # A verification, or a late answer: only an invalid id changes anything now.
        if status != "Accepted":
            self._deauthorize(id_tag, status)

    def _deauthorize(self, id_tag, status):
        ses = self.st.sessions
        for k, s in enumerate(ses.cur):
            if s is not None and s.id_tag == id_tag and s.auth in ("cache", "offline"):
                if self.st.cfg["auth.stop_on_invalid"]:
                    ses.stop(k, "DeAuthorized")
                self._result(id_tag, status, k)
                return
        for k, g in enumerate(ses.grant):
            if g is not None and g[0] == id_tag:
                ses.grant[k] = None  # not plugged in yet: the authorization is withdrawn
                self._result(id_tag, status, k)

    def _stopped(self, s, reason):
        # A session that ended needs no verification any more.
        for p in self.pending[:]:
            if p[2] == _VERIFY and p[1] == s.id_tag:
                self.pending.remove(p)

    def figures(self):
        """diag.auth"""
        return {"list_version": self.list.version, "list_entries": self.list.count,
                "cache": self.cache.count, "pending": len(self.pending), "taps": self.taps,
                "res_unknown": self.res_unknown, "online": self.online,
                "reader": None if self.reader is None else (
                    "failed" if self.reader.failed else "ok")}


def _expired(e, now_u):
    if e[0] == "Accepted" and e[1] is not None and now_u is not None and now_u >= e[1]:
        return "Expired"
    return e[0]


def _opt_int(v):
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ValueError
    return v
