"""Send commands to many stations at once over MQTT and collect their replies by rid."""

import itertools
import json
import os
import threading
import time

import paho.mqtt.client as mqtt

# Keys whose values never leave this process in print (docs/mqtt.md: Secrets).
SECRET_KEYS = ("mqtt.password", "wifi.password")


EXIT_INPUT, EXIT_UNREACHABLE = 2, 3


class FleetError(Exception):
    """A problem the operator must fix (broker unreachable, bad input); never a traceback.
    exit_code: 2 for bad input, 3 when the broker or the database cannot be used."""

    def __init__(self, message, exit_code=EXIT_INPUT):
        super().__init__(message)
        self.exit_code = exit_code


def split_hostport(text, default_port=1883):
    host, _, port = text.rpartition(":")
    if not host:
        return text, default_port
    try:
        return host, int(port)
    except ValueError:
        raise FleetError("bad broker address %r (HOST:PORT)" % text) from None


class Conn:
    """One MQTT connection for the fleet tools.

    Conn(broker="127.0.0.1:1883", prefix="evse", user=None, password=None,
    connect_timeout_s=5.0). Use it as a context manager or call close(). Handlers added with
    add_handler(fn) get fn(topic_bytes, payload_bytes, retain) for every message, on paho's
    network thread."""

    def __init__(self, broker="127.0.0.1:1883", prefix="evse", user=None, password=None,
                 connect_timeout_s=5.0):
        self.prefix = prefix
        self.host, self.port = split_hostport(broker)
        self._handlers = []
        self._lock = threading.Lock()
        self._acks = {}  # mid -> threading.Event, for SUBACKs
        self._connected = threading.Event()
        self._refused = None
        # A fresh random client id per invocation: two operators never push each other off.
        cid = "fleet-%s" % os.urandom(4).hex()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid,
                             clean_session=True)
        if user:
            self.c.username_pw_set(user, password)
        # Many commands go out back to back: let more of them be in flight than paho's 20.
        self.c.max_inflight_messages_set(1000)
        self.c.on_connect = self._on_connect
        self.c.on_message = self._on_message
        self.c.on_subscribe = self._on_subscribe
        try:
            self.c.connect(self.host, self.port, keepalive=60)
        except (OSError, ValueError) as e:
            raise FleetError(
                "cannot reach the broker %s:%d: %s" % (self.host, self.port, e),
                EXIT_UNREACHABLE) from None
        self.c.loop_start()
        if not self._connected.wait(connect_timeout_s) or self._refused:
            self.close()
            raise FleetError("the broker %s:%d %s" % (
                self.host, self.port, "refused the connection: %s" % self._refused
                if self._refused else "did not answer CONNECT in %.0f s" % connect_timeout_s),
                EXIT_UNREACHABLE)

    def _on_connect(self, client, userdata, flags, reason, props):
        if reason.is_failure:
            self._refused = str(reason)
        self._connected.set()

    def _on_subscribe(self, client, userdata, mid, reasons, props):
        with self._lock:
            ev = self._acks.setdefault(mid, threading.Event())
        ev.set()

    def _on_message(self, client, userdata, m):
        for fn in list(self._handlers):
            fn(m._topic, m.payload, m.retain)  # raw bytes: a junk topic must not raise here

    def add_handler(self, fn):
        self._handlers.append(fn)

    def remove_handler(self, fn):
        if fn in self._handlers:
            self._handlers.remove(fn)

    def subscribe(self, topics, qos=1, timeout_s=5.0):
        """Subscribe and wait for the SUBACK, so nothing published afterwards is missed."""
        rc, mid = self.c.subscribe([(t, qos) for t in topics])
        if rc != mqtt.MQTT_ERR_SUCCESS:
            raise FleetError("subscribe failed: %s" % mqtt.error_string(rc), EXIT_UNREACHABLE)
        with self._lock:
            ev = self._acks.setdefault(mid, threading.Event())
        if not ev.wait(timeout_s):
            raise FleetError("no SUBACK from the broker in %.0f s" % timeout_s,
                             EXIT_UNREACHABLE)

    def unsubscribe(self, topics):
        self.c.unsubscribe(list(topics))

    def publish(self, topic, payload, qos=1, retain=False):
        return self.c.publish(topic, payload, qos=qos, retain=retain)

    def close(self):
        self.c.loop_stop()
        try:
            self.c.disconnect()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class _Collect:
    """The replies of one send_each() call: rid -> station, station -> (reply, t_sent)."""

    def __init__(self, prefix):
        self.prefix = prefix.encode()
        self.cv = threading.Condition()
        self.expect = {}  # rid -> station
        self.sent_at = {}  # station -> monotonic time of the publish
        self.got = {}  # station -> (reply dict, round trip s)
        self.stray = 0  # replies on our topics that match no rid of ours

    def on_message(self, topic, payload, retain):
        parts = topic.split(b"/")
        if len(parts) != 3 or parts[0] != self.prefix or parts[2] != b"reply":
            return
        now = time.monotonic()
        try:
            reply = json.loads(payload)
            rid = reply.get("rid")
        except (ValueError, AttributeError):
            return  # someone else's garbage on a reply topic
        with self.cv:
            st = self.expect.get(rid) if isinstance(rid, str) else None
            if st is None or st.encode() != parts[1] or st in self.got:
                self.stray += 1
                return
            self.got[st] = (reply, now - self.sent_at[st])
            self.cv.notify_all()


_run = itertools.count(1)


def new_rid_base():
    """A prefix for the rids of one invocation: unique across invocations (the station
    answers a repeated rid with the same payload from memory), short enough for 64 chars."""
    return "fl%s%d" % (os.urandom(3).hex(), next(_run))


def send_each(conn, commands, timeout_s, rid_base=None):
    """Send commands[station] (a dict without rid) to every station, all first, then wait
    up to timeout_s (from the last send) for the replies.

    Returns {station: (reply dict or None, round_trip_s or None)}; None for no reply."""
    base = rid_base or new_rid_base()
    col = _Collect(conn.prefix)
    conn.add_handler(col.on_message)
    try:
        # QoS 0: the broker queues at most max_queued_messages (mosquitto: 1000) QoS 1
        # messages per client beyond those in flight and drops the rest, so a thousand
        # replies at once would lose some; QoS 0 to a connected client is written straight
        # out. Measured: 3000 replies, none lost (docs/fleet.md).
        conn.subscribe(["%s/+/reply" % conn.prefix], qos=0)
        for n, (st, cmd) in enumerate(commands.items()):
            rid = "%s-%d" % (base, n)
            body = {"rid": rid}
            body.update(cmd)
            body["rid"] = rid
            with col.cv:
                col.expect[rid] = st
                col.sent_at[st] = time.monotonic()
            conn.publish("%s/%s/cmd" % (conn.prefix, st),
                         json.dumps(body, separators=(",", ":")))
        end = time.monotonic() + timeout_s
        with col.cv:
            while len(col.got) < len(commands):
                left = end - time.monotonic()
                if left <= 0:
                    break
                col.cv.wait(left)
            got = dict(col.got)
    finally:
        conn.remove_handler(col.on_message)
    return {st: got.get(st, (None, None)) for st in commands}


def broadcast(conn, station_ids, cmd_dict, timeout_s):
    """The same command to every station in station_ids, in parallel.

    conn: a Conn. cmd_dict: {"cmd": "set_limit", ...} (a rid is added per station).
    Returns {station: (reply dict or None, round_trip_s or None)}: round_trip_s is from this
    station's publish to its reply; (None, None) when it did not answer within timeout_s."""
    return send_each(conn, {st: dict(cmd_dict) for st in station_ids}, timeout_s)


def masked(text, secrets):
    """text with every secret value replaced by ***."""
    for s in secrets:
        if s:
            text = text.replace(s, "***")
    return text


def outcome(reply):
    """("ok"|"error"|"timeout", text) for one station's reply (None: no reply)."""
    if reply is None:
        return "timeout", ""
    if reply.get("ok") is True:
        data = reply.get("data")
        return "ok", "" if data is None else json.dumps(data, separators=(",", ":"))
    return "error", "%s: %s" % (reply.get("error"), reply.get("detail"))


# --- building commands from the operator's input --------------------------------------

AUTH_STATUSES = ("Accepted", "Blocked", "Expired")
AUTH_COLUMNS = ("id_tag", "status", "expires", "max_wh", "group")
MAX_U32 = 0xFFFFFFFE  # the station keeps expires and max_wh as 32-bit values
MAX_LIST_VERSION = 0x7FFFFFFF
# docs/mqtt.md auth_list: a command is at most 1900 bytes; keep room for the rid.
MAX_CMD_BYTES = 1800


def parse_value(text):
    """A value from the command line: JSON when it parses (16, true, null, "x"), else the
    text itself (rfid, CET-1CEST)."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_assignments(items):
    """["key=value", ...] -> {key: value}; FleetError naming the bad item."""
    out = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise FleetError("expected KEY=VALUE, got %r" % item.split("=")[0])
        if key in out:
            raise FleetError("key %s given twice" % key)
        out[key.strip()] = parse_value(value)
    return out


def secrets_of(values):
    """The secret values in a {key: value} dict, to mask them in anything printed."""
    return [str(v) for k, v in values.items() if k in SECRET_KEYS and v not in ("", None)]


def _tag_ok(s):
    return 0 < len(s) <= 20 and all(0x20 <= ord(c) <= 0x7E for c in s)


def _u32_cell(cell, what, where, errors):
    if cell == "":
        return None
    try:
        v = int(cell)
    except ValueError:
        errors.append("%s: %s %r is not an integer" % (where, what, cell))
        return None
    if not 0 <= v <= MAX_U32:
        errors.append("%s: %s %d out of range 0..%d" % (where, what, v, MAX_U32))
    return v


def parse_auth_csv(text):
    """The rows of an auth list CSV (id_tag,status,expires,max_wh[,group], an optional
    header line) -> (entries, errors). Entries are canonical: id_tag upper-cased (the
    station folds case), empty optional cells left out."""
    import csv
    import io

    entries, errors, seen = [], [], set()
    for n, row in enumerate(csv.reader(io.StringIO(text)), 1):
        if not row or all(not c.strip() for c in row) or row[0].lstrip().startswith("#"):
            continue
        cells = [c.strip() for c in row]
        if n == 1 and cells[0].lower() == "id_tag":
            continue  # the header
        where = "line %d" % n
        if not 4 <= len(cells) <= 5:
            errors.append("%s: %d columns, expected id_tag,status,expires,max_wh[,group]"
                          % (where, len(cells)))
            continue
        tag = cells[0].upper()
        if not _tag_ok(tag):
            errors.append("%s: id_tag must be 1..20 printable ASCII characters" % where)
            continue
        if tag in seen:
            errors.append("%s: id_tag %s given twice (tags are case-insensitive)"
                          % (where, tag))
            continue
        seen.add(tag)
        if cells[1] not in AUTH_STATUSES:
            errors.append("%s: status %r is not one of %s" % (
                where, cells[1], "|".join(AUTH_STATUSES)))
            continue
        e = {"id_tag": tag, "status": cells[1]}
        for key, cell in (("expires", cells[2]), ("max_wh", cells[3])):
            v = _u32_cell(cell, key, where, errors)
            if v is not None:
                e[key] = v
        if len(cells) == 5 and cells[4]:
            if not _tag_ok(cells[4]):
                errors.append("%s: group must be 1..20 printable ASCII characters" % where)
            e["group"] = cells[4]
        entries.append(e)
    if len(entries) > 1000:
        errors.append("%d entries: a station holds at most 1000" % len(entries))
    return entries, errors


def _chunks(entries):
    """entries split so that each auth_list command stays under MAX_CMD_BYTES."""
    head = len('{"rid":"%s","cmd":"auth_list","version":2147483647,"mode":"full","entries":[]}'
               % ("x" * 24))
    out, cur, size = [], [], head
    for e in entries:
        n = len(json.dumps(e, separators=(",", ":"))) + 1
        if cur and size + n > MAX_CMD_BYTES:
            out.append(cur)
            cur, size = [], head
        cur.append(e)
        size += n
    out.append(cur)
    return out


def auth_changes(old_entries, new_entries):
    """The diff entries that turn old into new: changed or new entries, and deletes
    (status null) for ids that are gone."""
    old = {e["id_tag"]: e for e in old_entries}
    new = {e["id_tag"]: e for e in new_entries}
    out = [e for tag, e in sorted(new.items()) if old.get(tag) != e]
    out += [{"id_tag": tag, "status": None} for tag in sorted(old) if tag not in new]
    return out


def plan_auth_list(held_version, held_entries, sent, entries):
    """The auth_list commands that bring a station to `entries`.

    held_version, held_entries: the station's diag.auth list_version and list_entries.
    sent: (version, entries) the fleet last sent this station and it accepted, or None.
    Returns (mode, [cmd dict, ...], final_version): "diff" when the station still holds what
    was sent (only the changes go), "full" otherwise, "unchanged" with no commands."""
    if sent and sent[0] == held_version and len(sent[1]) == held_entries and held_version:
        changes = auth_changes(sent[1], entries)
        if not changes:
            return "unchanged", [], held_version
        mode, parts, v = "diff", _chunks(changes), held_version
    else:
        mode, parts, v = "full", _chunks(entries), held_version
    if v + len(parts) > MAX_LIST_VERSION:
        # A full may carry any version: start the count again (a diff could not go higher).
        mode, parts, v = "full", _chunks(entries), 0
    cmds = []
    for n, part in enumerate(parts):
        v += 1
        cmds.append({"cmd": "auth_list", "version": v,
                     "mode": mode if n == 0 else "diff", "entries": part})
    return mode, cmds, v
