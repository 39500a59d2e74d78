"""Discover the stations on a broker from their retained online/info/status topics."""

import json
import numbers
import time

# A station's own topics under <prefix>/<id>/; anything else under the prefix is foreign.
STATION_LEAVES = {"online", "info", "config", "status", "meter", "reply", "event", "session",
                  "cmd", "grid"}
STATION_SUBTOPICS = {("auth", "req"), ("auth", "res"), ("session", "ack")}
MAX_EXAMPLES = 3  # malformed topics named in the footer


def printable(text):
    """text safe for a terminal: a foreign device may put escape sequences in its id."""
    return "".join(ch if ch.isprintable() else "\\x%02x" % ord(ch) if ord(ch) < 256
                   else "\\u%04x" % ord(ch) for ch in text)


def _num(v):
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def check_info(d):
    """The problems of an `info` payload (docs/mqtt.md Payloads), [] when it is usable."""
    if not isinstance(d, dict):
        return ["info: not an object"]
    bad = []
    if not _int(d.get("api")):
        bad.append("info: api missing or not an integer")
    elif d["api"] != 1:
        bad.append("info: api %r unknown" % d["api"])
    if not isinstance(d.get("fw"), str):
        bad.append("info: fw missing or not a string")
    if not _int(d.get("connectors")) or d["connectors"] < 1:
        bad.append("info: connectors missing or not a positive integer")
    return bad


def check_status(d):
    """The problems of a `status` payload, [] when ls can show it."""
    if not isinstance(d, dict):
        return ["status: not an object"]
    bad = []
    if "ts" in d and d["ts"] is not None and not _num(d["ts"]):
        bad.append("status: ts not a number")
    cons = d.get("connectors")
    if not isinstance(cons, list) or not cons:
        return bad + ["status: connectors missing or not a list"]
    for n, c in enumerate(cons, 1):
        if not isinstance(c, dict):
            bad.append("status: connector %d not an object" % n)
            continue
        if not isinstance(c.get("state"), str):
            bad.append("status: connector %d state missing" % n)
        if not _num(c.get("offered_a")):
            bad.append("status: connector %d offered_a missing" % n)
        if c.get("limit_by") is not None and not isinstance(c["limit_by"], str):
            bad.append("status: connector %d limit_by not a string" % n)
    return bad


def _json(payload):
    try:
        return json.loads(payload), None
    except (ValueError, RecursionError):  # binary junk, bad UTF-8, absurd nesting
        return None, "not JSON"


class StationView:
    """What the broker told us about one station."""

    def __init__(self, sid):
        self.id = sid
        self.online = None  # "online" / "offline" / None (never seen)
        self.info = None
        self.status = None
        self.power_w = {}  # connector -> p_w of the latest meter message seen
        self.problems = {}  # leaf -> [problem text]: the latest message of each leaf decides

    @property
    def malformed(self):
        return bool(self.problem_list())

    def problem_list(self):
        out = [p for leaf in ("online", "info", "status", "meter")
               for p in self.problems.get(leaf, ())]
        if self.info is None and not self.problems.get("info"):
            # Every station publishes a retained info at each connect, right after online.
            out.insert(0, "info: missing")
        return out

    def usable(self):
        """Online, with an info we understand: a target for --all."""
        return self.online == "online" and self.info is not None and not (
            self.problems.get("info") or self.problems.get("online"))


class Directory:
    """Feed it every message under <prefix>/#; it keeps one StationView per station id."""

    def __init__(self, prefix):
        self.prefix = prefix
        self.stations = {}
        self.bad_topics = 0
        self.bad_topic_examples = []
        self.retained = 0
        self.last_retained = None  # monotonic time of the latest retained message

    def _bad_topic(self, topic):
        self.bad_topics += 1
        if len(self.bad_topic_examples) < MAX_EXAMPLES:
            self.bad_topic_examples.append(printable(topic.decode("utf-8", "replace")))

    def feed(self, topic, payload, retain=False):
        if retain:
            self.retained += 1
            self.last_retained = time.monotonic()
        parts = topic.split(b"/")
        try:
            parts = [p.decode("utf-8") for p in parts]
        except UnicodeDecodeError:
            self._bad_topic(topic)
            return
        if parts[0] != self.prefix:
            return
        if len(parts) == 4 and tuple(parts[2:]) in STATION_SUBTOPICS:
            return
        if len(parts) != 3 or not parts[1] or parts[2] not in STATION_LEAVES:
            self._bad_topic(topic)
            return
        leaf = parts[2]
        if leaf not in ("online", "info", "status", "meter"):
            return
        st = self.stations.get(parts[1])
        if st is None:
            st = self.stations[parts[1]] = StationView(parts[1])
        getattr(self, "_" + leaf)(st, payload)

    def _online(self, st, payload):
        if payload in (b"online", b"offline"):
            st.online = payload.decode()
            st.problems["online"] = []
        elif not payload:  # an empty retained publish clears it: the station is gone
            st.online = None
        else:
            st.online = None
            st.problems["online"] = ["online: neither online nor offline"]

    def _info(self, st, payload):
        d, err = _json(payload)
        bad = ["info: " + err] if err else check_info(d)
        st.problems["info"] = bad
        st.info = None if bad else d

    def _status(self, st, payload):
        d, err = _json(payload)
        bad = ["status: " + err] if err else check_status(d)
        st.problems["status"] = bad
        st.status = None if bad else d

    def _meter(self, st, payload):
        d, err = _json(payload)
        if err or not isinstance(d, dict) or not _int(d.get("connector")) or not _num(
                d.get("p_w")):
            st.problems["meter"] = ["meter: " + (err or "connector or p_w missing")]
            return
        st.problems["meter"] = []
        st.power_w[d["connector"]] = d["p_w"]

    def usable_ids(self):
        return sorted(s.id for s in self.stations.values() if s.usable())

    def skipped_ids(self):
        """Online stations that --all leaves out because their info is broken."""
        return sorted(s.id for s in self.stations.values()
                      if s.online == "online" and not s.usable())


def discover(conn, settle_s=0.5, max_s=10.0, listen_s=0.0):
    """A Directory of conn.prefix: subscribe, take the retained messages until none came
    for settle_s (at most max_s), then listen listen_s more for live ones (meter)."""
    d = Directory(conn.prefix)
    conn.add_handler(d.feed)
    try:
        # QoS 0: the broker's per-client queue limit for QoS 1 would drop part of a large
        # fleet's retained flood; QoS 0 to a connected client is written straight out.
        conn.subscribe(["%s/#" % conn.prefix], qos=0)
        start = time.monotonic()
        while True:
            now = time.monotonic()
            quiet_since = max(start, d.last_retained or start)
            if now - quiet_since >= settle_s or now - start >= max_s:
                break
            time.sleep(0.02)
        if listen_s > 0:
            time.sleep(listen_s)
        conn.unsubscribe(["%s/#" % conn.prefix])
    finally:
        conn.remove_handler(d.feed)
    return d


def _fmt_num(v):
    return "%.1f" % v if _num(v) else "-"


def rows(directory, groups=None, now_s=None):
    """One dict per station for `ls` (and its --json), sorted by id."""
    groups = groups or {}
    now_s = time.time() if now_s is None else now_s
    out = []
    for sid in sorted(directory.stations):
        st = directory.stations[sid]
        cons = (st.status or {}).get("connectors") or []
        ts = (st.status or {}).get("ts")
        out.append({
            "id": sid,
            "online": st.online,
            "state": [c.get("state") for c in cons],
            "offered_a": [c.get("offered_a") for c in cons],
            "limit_a": [c.get("limit_a") for c in cons],
            "limit_by": [c.get("limit_by") for c in cons],
            "power_w": sum(st.power_w.values()) if st.power_w else None,
            "fw": (st.info or {}).get("fw"),
            "last_seen_s": round(now_s - ts) if _num(ts) else None,
            "group": groups.get(sid),
            "malformed": st.malformed,
            "problems": st.problem_list(),
        })
    return out


def _age(s):
    if s is None:
        return "?"
    if s < 120:
        return "%ds" % s
    if s < 7200:
        return "%dm" % (s // 60)
    return "%dh" % (s // 3600) if s < 172800 else "%dd" % (s // 86400)


def table(row_list):
    """The ls table: one line per station, one cell per column."""
    head = ("ID", "ONLINE", "STATE", "OFFERED_A", "LIMIT_BY", "POWER_W", "FW", "SEEN",
            "GROUP", "PROBLEM")
    lines = [head]
    for r in row_list:
        lines.append((
            printable(r["id"]),
            r["online"] or "?",
            ",".join(printable(s or "?") for s in r["state"]) or "-",
            ",".join(_fmt_num(a) for a in r["offered_a"]) or "-",
            ",".join(printable(b or "-") for b in r["limit_by"]) or "-",
            "-" if r["power_w"] is None else "%d" % r["power_w"],
            printable(r["fw"] or "-"),
            _age(r["last_seen_s"]) if r["state"] else "-",
            printable(r["group"] or "-"),
            printable("; ".join(r["problems"])) if r["malformed"] else "",
        ))
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip()
                     for line in lines)


def footer(directory, shown):
    n_on = sum(1 for r in shown if r["online"] == "online")
    n_bad = sum(1 for r in shown if r["malformed"])
    text = "%d station%s, %d online, %d malformed" % (
        len(shown), "" if len(shown) == 1 else "s", n_on, n_bad)
    if directory.bad_topics:
        text += "; %d messages on malformed topics ignored (%s)" % (
            directory.bad_topics, ", ".join(directory.bad_topic_examples))
    return text
