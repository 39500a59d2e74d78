"""The operator's fleet CLI: discover stations, list them, act on one, a group or all.

    .venv/bin/python tools/fleet.py --broker 127.0.0.1:1883 ls
    .venv/bin/python tools/fleet.py limit --all --current-a 16 --ttl-s 600
    .venv/bin/python tools/fleet.py --help            # every subcommand; docs/fleet.md
"""

import argparse
import importlib
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import fleetcmd  # noqa: E402
import fleetdir  # noqa: E402
from fleetcmd import FleetError  # noqa: E402

EXIT_OK, EXIT_FAILED = 0, 1  # 2 and 3: FleetError.exit_code

DDL = (
    # Exactly this table: the ledger's reports join on it.
    "CREATE TABLE IF NOT EXISTS station_groups (station TEXT PRIMARY KEY, grp TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS fleet_group_config (grp TEXT NOT NULL, key TEXT NOT NULL, "
    "value TEXT NOT NULL, PRIMARY KEY (grp, key))",
    "CREATE TABLE IF NOT EXISTS fleet_group_tariff (grp TEXT PRIMARY KEY, tariff TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS fleet_group_auth (grp TEXT PRIMARY KEY, entries TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS fleet_auth_sent (station TEXT PRIMARY KEY, "
    "version INTEGER NOT NULL, entries TEXT NOT NULL, sent_ts INTEGER NOT NULL)",
)


# --- the group store ---------------------------------------------------------------------


class Store:
    """Groups, group profiles and the auth list each station was last sent, in tools/db.py."""

    def __init__(self, d):
        self.d = d
        with d.transaction():
            for sql in DDL:
                d.execute(sql)

    def groups(self):
        return dict(self.d.execute("SELECT station, grp FROM station_groups"))

    def members(self, grp):
        return [r[0] for r in self.d.execute(
            "SELECT station FROM station_groups WHERE grp = :g ORDER BY station", g=grp)]

    def set_group(self, grp, stations):
        with self.d.transaction():
            for st in stations:
                self.d.execute(
                    "INSERT INTO station_groups (station, grp) VALUES (:s, :g) "
                    "ON CONFLICT (station) DO UPDATE SET grp = excluded.grp", s=st, g=grp)

    def remove(self, stations):
        with self.d.transaction():
            for st in stations:
                self.d.execute("DELETE FROM station_groups WHERE station = :s", s=st)

    def config(self, grp):
        return {k: json.loads(v) for k, v in self.d.execute(
            "SELECT key, value FROM fleet_group_config WHERE grp = :g ORDER BY key", g=grp)}

    def set_config(self, grp, values):
        with self.d.transaction():
            for k, v in values.items():
                self.d.execute(
                    "INSERT INTO fleet_group_config (grp, key, value) VALUES (:g, :k, :v) "
                    "ON CONFLICT (grp, key) DO UPDATE SET value = excluded.value",
                    g=grp, k=k, v=json.dumps(v))

    def _blob(self, table, col, grp):
        rows = self.d.execute("SELECT %s FROM %s WHERE grp = :g" % (col, table), g=grp)
        return json.loads(rows[0][0]) if rows else None

    def _set_blob(self, table, col, grp, value):
        self.d.execute(
            "INSERT INTO %s (grp, %s) VALUES (:g, :v) ON CONFLICT (grp) DO UPDATE SET "
            "%s = excluded.%s" % (table, col, col, col), g=grp, v=json.dumps(value))

    def tariff(self, grp):
        return self._blob("fleet_group_tariff", "tariff", grp)

    def set_tariff(self, grp, tariff):
        self._set_blob("fleet_group_tariff", "tariff", grp, tariff)

    def auth_list(self, grp):
        return self._blob("fleet_group_auth", "entries", grp)

    def set_auth_list(self, grp, entries):
        self._set_blob("fleet_group_auth", "entries", grp, entries)

    def auth_sent(self, station):
        rows = self.d.execute(
            "SELECT version, entries FROM fleet_auth_sent WHERE station = :s", s=station)
        return (rows[0][0], json.loads(rows[0][1])) if rows else None

    def set_auth_sent(self, station, version, entries):
        self.d.execute(
            "INSERT INTO fleet_auth_sent (station, version, entries, sent_ts) "
            "VALUES (:s, :v, :e, :t) ON CONFLICT (station) DO UPDATE SET "
            "version = excluded.version, entries = excluded.entries, sent_ts = excluded.sent_ts",
            s=station, v=version, e=json.dumps(entries), t=int(time.time()))


def open_store(args, write=True):
    """The Store of --db; None for a read-only look at a SQLite file that does not exist
    (ls must not leave a fleet.db behind in whatever directory it ran in)."""
    import db

    url = args.db
    path = url[len("sqlite:///"):] if url.startswith("sqlite:///") else url
    if not write and "://" not in path and not os.path.exists(path):
        return None
    try:
        return Store(db.connect(url))
    except FleetError:
        raise
    except Exception as e:  # the DB layer's own errors differ between SQLite and PG
        raise FleetError("database %s: %s" % (url, e), fleetcmd.EXIT_UNREACHABLE) from None


# --- output -----------------------------------------------------------------------------


class Report:
    """Per-station results of one action: printed as they are settled, counted for the
    exit status. Every printed line goes through the secret mask."""

    def __init__(self, args, secrets=()):
        self.json = getattr(args, "json", False)
        self.timeout_s = args.timeout
        self.secrets = list(secrets)
        self.rows = []
        self.failed = 0
        self.width = 0  # the station column's width, once the targets are known

    def out(self, text, err=False):
        print(fleetcmd.masked(text, self.secrets), file=sys.stderr if err else sys.stdout,
              flush=True)

    def add(self, station, reply, rtt_s=None, step=None, result=None, text=None):
        if result is None:
            result, text = fleetcmd.outcome(reply)
            if result == "timeout":
                text = "no reply in %.1f s" % self.timeout_s
        if result not in ("ok", "unchanged", "skipped"):
            self.failed += 1
        row = {"station": station, "result": result, "detail": text or ""}
        if step:
            row["step"] = step
        if reply is not None:
            row["reply"] = reply
        if rtt_s is not None:
            row["round_trip_s"] = round(rtt_s, 4)
        self.rows.append(row)
        if not self.json:
            cells = [fleetdir.printable(station).ljust(self.width)] + (
                [step.ljust(9)] if step else [])
            label = result.upper() if result not in ("ok", "unchanged") else result
            cells += [label.ljust(9)] + ([text] if text else [])
            self.out("  ".join(cells).rstrip())

    def finish(self):
        n = len({r["station"] for r in self.rows})
        bad = {r["station"] for r in self.rows if r["result"] not in ("ok", "unchanged",
                                                                       "skipped")}
        timeouts = {r["station"] for r in self.rows if r["result"] == "timeout"}
        summary = {"stations": n, "ok": n - len(bad), "failed": len(bad - timeouts),
                   "timeout": len(timeouts)}
        if self.json:
            self.out(json.dumps({"results": self.rows, "summary": summary}))
        else:
            self.out("%d station%s: %d ok, %d failed, %d timed out" % (
                n, "" if n == 1 else "s", summary["ok"], summary["failed"],
                summary["timeout"]))
        return EXIT_FAILED if self.failed or not n else EXIT_OK


# --- targets ------------------------------------------------------------------------------


def check_ids(ids):
    """Station ids as the firmware allows them (docs/mqtt.md Configuration: station_id):
    one topic level, so a typo can never publish to a wildcard or another station's tree."""
    for sid in ids:
        if not sid or len(sid) > 64 or any(c in sid for c in "/+# ") or not sid.isprintable():
            raise FleetError("bad station id %r (1-64 characters, no / + # or space)" % sid)
    return ids


def conn_of(args):
    return fleetcmd.Conn(args.broker, args.prefix, args.user, args.password)


def discover(args, conn):
    return fleetdir.discover(conn, settle_s=args.settle_s, max_s=args.discover_max_s,
                             listen_s=getattr(args, "listen", 0.0) or 0.0)


def resolve_targets(args, conn, rep):
    """The stations an action goes to. Stations left out are reported: offline group
    members as OFFLINE (a failure), online stations --all cannot use on stderr."""
    ids = list(getattr(args, "ids", None) or [])
    for s in args.station or []:
        ids += [x for x in s.split(",") if x]
    chosen = [bool(ids), bool(args.group), bool(args.all)]
    if sum(chosen) != 1:
        raise FleetError("name the stations: station ids, --station ID, --group G or --all "
                         "(exactly one of these kinds)")
    if ids:
        # No discovery: a station that is not there times out.
        ids = check_ids(list(dict.fromkeys(ids)))
        rep.width = max(len(s) for s in ids)
        return ids
    directory = discover(args, conn)
    if args.all:
        skipped = directory.skipped_ids()
        if skipped:
            rep.out("note: not sent to %d online with a missing or malformed info: %s" % (
                len(skipped), ", ".join(fleetdir.printable(s) for s in skipped)), err=True)
        targets = directory.usable_ids()
        rep.width = max((len(s) for s in targets), default=0)
        return targets
    store = open_store(args, write=False)
    members = store.members(args.group) if store else []
    if not members:
        raise FleetError("group %s has no stations" % args.group)
    rep.width = max(len(s) for s in members)
    targets = []
    for st in members:
        view = directory.stations.get(st)
        if view is not None and view.online == "online":
            targets.append(st)
        else:
            rep.add(st, None, result="offline",
                    text="not sent: %s" % ("offline" if view else "never seen on the broker"))
    return targets


def run_simple(args, cmd, secrets=()):
    """One command to every target: the common shape of most actions."""
    rep = Report(args, secrets)
    with conn_of(args) as conn:
        targets = resolve_targets(args, conn, rep)
        if not targets and not rep.rows:
            rep.out("no station to send to", err=True)
        if targets:
            res = fleetcmd.broadcast(conn, targets, cmd, args.timeout)
            for st in targets:
                rep.add(st, *res[st])
    return rep.finish()


# --- actions ------------------------------------------------------------------------------


def cmd_ls(args):
    store = open_store(args, write=False)
    groups = store.groups() if store else {}
    with conn_of(args) as conn:
        directory = discover(args, conn)
    rows = fleetdir.rows(directory, groups)
    if args.group:
        rows = [r for r in rows if r["group"] == args.group]
    if args.ungrouped:
        rows = [r for r in rows if r["group"] is None]
    if args.state:
        want = args.state.lower()
        rows = [r for r in rows if want == (r["online"] or "").lower()
                or want in (s.lower() for s in r["state"] if isinstance(s, str))]
    if args.json:
        print(json.dumps({"stations": rows, "bad_topics": directory.bad_topics,
                          "bad_topic_examples": directory.bad_topic_examples}))
    else:
        print(fleetdir.table(rows))
        print(fleetdir.footer(directory, rows))
    return EXIT_OK


def cmd_limit(args):
    cmd = {"cmd": "set_limit", "connector": args.connector, "current_a": args.current_a}
    if args.ttl_s is not None:
        cmd["ttl_s"] = args.ttl_s
    return run_simple(args, cmd)


def cmd_connector(name):
    return lambda args: run_simple(args, {"cmd": name, "connector": args.connector})


def cmd_reboot(args):
    return run_simple(args, {"cmd": "reboot", "delay_s": args.delay_s})


def cmd_diag(args):
    return run_simple(args, {"cmd": "diag"})


def cmd_config_get(args):
    cmd = {"cmd": "config_get"}
    if args.keys:
        cmd["keys"] = args.keys
    return run_simple(args, cmd)


def cmd_config_set(args):
    values = fleetcmd.parse_assignments(args.values)
    return run_simple(args, {"cmd": "config_set", "values": values},
                      secrets=fleetcmd.secrets_of(values))


def tariff_cmd(args):
    if args.none:
        if args.values:
            raise FleetError("--none takes no prices")
        return {"cmd": "set_tariff", "currency": None}
    values = fleetcmd.parse_assignments(args.values)
    if "currency" not in values:
        raise FleetError("a tariff needs currency=XXX (or --none to remove it)")
    return dict(values, cmd="set_tariff")


def cmd_tariff_set(args):
    return run_simple(args, tariff_cmd(args))


def cmd_start(args):
    cmd = {"cmd": "start", "connector": args.connector, "id_tag": args.id_tag}
    for key in ("max_wh", "max_cost_millis", "max_s"):
        if getattr(args, key) is not None:
            cmd[key] = getattr(args, key)
    return run_simple(args, cmd)


def cmd_stop(args):
    if (args.sid is None) == (args.connector is None):
        raise FleetError("stop needs --connector N or --sid SID")
    return run_simple(args, {"cmd": "stop", "sid": args.sid} if args.sid else
                      {"cmd": "stop", "connector": args.connector})


def read_auth_csv(path):
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise FleetError("cannot read %s: %s" % (path, e)) from None
    entries, errors = fleetcmd.parse_auth_csv(text)
    if errors:
        raise FleetError("%s: %d bad lines, nothing sent:\n  %s" % (
            path, len(errors), "\n  ".join(errors[:20])))
    return entries


def push_auth(conn, store, wanted, rep, timeout_s, step=None):
    """Bring each station's local list to wanted[station]: diag, then a diff against what
    the fleet last sent it when the station still holds that version, else a full list.
    What was sent is recorded only once the station said ok to every part.
    Returns {station: result} ("ok", "unchanged", "error", "timeout")."""
    results = {}
    diag = fleetcmd.broadcast(conn, list(wanted), {"cmd": "diag"}, timeout_s)
    plans = {}
    for st, (reply, rtt) in diag.items():
        data = (reply or {}).get("data") if (reply or {}).get("ok") else None
        auth = data.get("auth") if isinstance(data, dict) else None
        if not isinstance(auth, dict) or not isinstance(auth.get("list_version"), int):
            if reply is not None and reply.get("ok"):
                rep.add(st, reply, rtt, step=step, result="error", text="diag has no auth")
            else:
                rep.add(st, reply, rtt, step=step)
            results[st] = rep.rows[-1]["result"]
            continue
        mode, cmds, version = fleetcmd.plan_auth_list(
            auth["list_version"], auth.get("list_entries"), store.auth_sent(st), wanted[st])
        if not cmds:
            rep.add(st, None, step=step, result="unchanged",
                    text="version %d already holds these %d entries" % (
                        version, len(wanted[st])))
            results[st] = "unchanged"
            continue
        plans[st] = (mode, cmds, version)
    last = {}
    # Part n of every station's plan in one round: the stations still go in parallel.
    for n in range(max((len(p[1]) for p in plans.values()), default=0)):
        part = {st: p[1][n] for st, p in plans.items() if n < len(p[1])}
        for st, (reply, rtt) in fleetcmd.send_each(conn, part, timeout_s).items():
            if reply is None or not reply.get("ok"):
                rep.add(st, reply, rtt, step=step)  # a failed part: the rest is not sent
                results[st] = rep.rows[-1]["result"]
                del plans[st]
            else:
                last[st] = (reply, rtt)
    for st, (mode, cmds, version) in plans.items():
        store.set_auth_sent(st, version, wanted[st])
        reply, rtt = last[st]
        text = "%s, %d command%s, version %d: %s" % (
            mode, len(cmds), "" if len(cmds) == 1 else "s", version,
            json.dumps(reply.get("data"), separators=(",", ":")))
        rep.add(st, reply, rtt, step=step, result="ok", text=text)
        results[st] = "ok"
    return results


def cmd_auth_push(args):
    entries = read_auth_csv(args.csv)
    store = open_store(args)
    rep = Report(args)
    with conn_of(args) as conn:
        targets = resolve_targets(args, conn, rep)
        if targets:
            push_auth(conn, store, {st: entries for st in targets}, rep, args.timeout)
    return rep.finish()


# --- groups -------------------------------------------------------------------------------


def cmd_group_set(args):
    open_store(args).set_group(args.group_name, check_ids(args.ids))
    n = len(set(args.ids))
    print("%d station%s in group %s" % (n, "" if n == 1 else "s", args.group_name))
    return EXIT_OK


def cmd_group_rm(args):
    open_store(args).remove(args.ids)
    n = len(set(args.ids))
    print("%d station%s out of their group" % (n, "" if n == 1 else "s"))
    return EXIT_OK


def _profile(store, grp):
    conf = store.config(grp)
    secret = fleetcmd.secrets_of(conf)
    return {"config": {k: "***" if k in fleetcmd.SECRET_KEYS and v else v
                       for k, v in conf.items()},
            "tariff": store.tariff(grp), "auth_list": store.auth_list(grp)}, secret


def cmd_group_ls(args):
    store = open_store(args, write=False)
    groups = {}
    for st, grp in sorted((store.groups() if store else {}).items()):
        groups.setdefault(grp, []).append(st)
    out = {}
    for grp, members in sorted(groups.items()):
        prof, _ = _profile(store, grp)
        out[grp] = {"stations": members, "config_keys": sorted(prof["config"]),
                    "tariff": prof["tariff"] is not None,
                    "auth_entries": None if prof["auth_list"] is None
                    else len(prof["auth_list"])}
    if args.json:
        print(json.dumps(out))
        return EXIT_OK
    for grp, g in out.items():
        print("%s  %d stations: %s" % (grp, len(g["stations"]), " ".join(g["stations"])))
        print("    config: %s; tariff: %s; auth list: %s" % (
            ", ".join(g["config_keys"]) or "-", "set" if g["tariff"] else "-",
            "-" if g["auth_entries"] is None else "%d entries" % g["auth_entries"]))
    if not out:
        print("no groups")
    return EXIT_OK


def cmd_group_show(args):
    store = open_store(args, write=False)
    prof = _profile(store, args.group_name)[0] if store else {}
    prof["stations"] = store.members(args.group_name) if store else []
    print(json.dumps(prof, indent=1))
    return EXIT_OK


def cmd_group_config(args):
    values = fleetcmd.parse_assignments(args.values)
    open_store(args).set_config(args.group_name, values)
    print("group %s config: %s" % (args.group_name, ", ".join(sorted(values))))
    return EXIT_OK


def cmd_group_tariff(args):
    cmd = tariff_cmd(args)
    cmd.pop("cmd")
    open_store(args).set_tariff(args.group_name, cmd)
    print("group %s tariff: %s" % (args.group_name, json.dumps(cmd)))
    return EXIT_OK


def cmd_group_auth(args):
    entries = read_auth_csv(args.csv)
    open_store(args).set_auth_list(args.group_name, entries)
    print("group %s auth list: %d entries" % (args.group_name, len(entries)))
    return EXIT_OK


def cmd_adopt(args):
    """Put new stations into a group and give them its profile: tariff, auth list, then
    config (a config change of mqtt.* makes the station reconnect, so it goes last)."""
    check_ids(args.ids)
    store = open_store(args)
    conf = store.config(args.group)
    tariff = store.tariff(args.group)
    entries = store.auth_list(args.group)
    rep = Report(args, fleetcmd.secrets_of(conf))
    with conn_of(args) as conn:
        directory = discover(args, conn)
        live = []
        rep.width = max(len(s) for s in args.ids)
        for st in dict.fromkeys(args.ids):
            view = directory.stations.get(st)
            if view is None or not view.usable():
                rep.add(st, None, step="group", result="offline", text="not adopted: %s" % (
                    "never seen on the broker" if view is None else
                    "malformed info" if view.online == "online" else "offline"))
            else:
                live.append(st)
        store.set_group(args.group, live)
        for st in live:
            rep.add(st, None, step="group", result="ok", text=args.group)
        steps = [("tariff", dict(tariff, cmd="set_tariff") if tariff else None),
                 ("auth-list", entries),
                 ("config", {"cmd": "config_set", "values": conf} if conf else None)]
        for step, what in steps:
            if what is None:
                for st in live:
                    rep.add(st, None, step=step, result="skipped", text="none in the group")
                continue
            if step == "auth-list":
                results = push_auth(conn, store, {st: entries for st in live}, rep,
                                    args.timeout, step)
            else:
                res = fleetcmd.broadcast(conn, live, what, args.timeout)
                results = {}
                for st in live:
                    rep.add(st, *res[st], step=step)
                    results[st] = rep.rows[-1]["result"]
            # A station that did not answer one step is not asked the next: each would only
            # cost another timeout.
            for st in [s for s in live if results.get(s) == "timeout"]:
                live.remove(st)
    return rep.finish()


# --- the parser ---------------------------------------------------------------------------


def _globals(p, suppress):
    d = (lambda v: argparse.SUPPRESS) if suppress else (lambda v: v)
    env = os.environ.get
    p.add_argument("--db", default=d(env("FLEET_DB") or "fleet.db"),
                   help="database URL (tools/db.py): a SQLite path or postgresql://... "
                   "(env FLEET_DB; default fleet.db)")
    p.add_argument("--broker", default=d(env("FLEET_BROKER") or "127.0.0.1:1883"),
                   help="MQTT broker HOST:PORT (env FLEET_BROKER; default 127.0.0.1:1883)")
    p.add_argument("--prefix", default=d("evse"), help="topic prefix (default evse)")
    p.add_argument("--user", default=d(None), help="broker user name")
    p.add_argument("--password", default=d(None), help="broker password")
    p.add_argument("--timeout", type=float, default=d(5.0), metavar="SECONDS",
                   help="how long to wait for the replies (default 5)")
    p.add_argument("--settle-s", type=float, default=d(0.5),
                   help="discovery: done once no retained message came for this long "
                   "(default 0.5)")
    p.add_argument("--discover-max-s", type=float, default=d(10.0),
                   help="discovery: never longer than this (default 10)")


def _targets(p, positional=True):
    if positional:
        p.add_argument("ids", nargs="*", metavar="ID", help="station ids")
    p.add_argument("--station", action="append", metavar="ID",
                   help="a station id (repeatable, or comma-separated)")
    p.add_argument("--group", help="every station of this group")
    p.add_argument("--all", action="store_true", help="every discovered online station")
    p.add_argument("--json", action="store_true", help="results as one JSON object")


def build_parser():
    common = argparse.ArgumentParser(add_help=False)
    _globals(common, suppress=True)  # global options also after the subcommand
    ap = argparse.ArgumentParser(prog="fleet", description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="Exit status: 0 all ok, 1 a station failed or did not "
                                 "answer, 2 bad input, 3 broker or database unreachable.")
    _globals(ap, suppress=False)
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def add(name, func, help_text, targets=True, positional=True, parent=sub):
        p = parent.add_parser(name, help=help_text, description=help_text, parents=[common])
        if targets:
            _targets(p, positional)
        p.set_defaults(func=func)
        return p

    p = add("ls", cmd_ls, "list the stations on the broker", targets=False)
    p.add_argument("--state", help="only stations with a connector in this state "
                   "(e.g. Charging), or online / offline")
    p.add_argument("--group", help="only stations of this group")
    p.add_argument("--ungrouped", action="store_true", help="only stations in no group")
    p.add_argument("--listen", type=float, default=0.0, metavar="SECONDS",
                   help="listen this much longer for meter readings (power); default 0")
    p.add_argument("--json", action="store_true", help="one JSON object")

    p = add("limit", cmd_limit, "set a current limit (set_limit)")
    p.add_argument("--current-a", type=float, required=True, help="the limit, 0..80 A")
    p.add_argument("--connector", type=int, default=0, help="0 = the station (default)")
    p.add_argument("--ttl-s", type=int, help="the limit lapses after this (default never)")
    p = add("clear-limit", cmd_connector("clear_limit"), "remove the backend limit")
    p.add_argument("--connector", type=int, default=0, help="0 = the station (default)")
    for name in ("enable", "disable"):
        p = add(name, cmd_connector(name), "%s connectors" % name)
        p.add_argument("--connector", type=int, default=0, help="0 = every connector")
    p = add("reboot", cmd_reboot, "reboot (charging ends first)")
    p.add_argument("--delay-s", type=int, default=0)
    add("diag", cmd_diag, "the stations' diagnostics (diag)")
    p = add("start", cmd_start, "remote start (start)")
    p.add_argument("--id-tag", required=True)
    p.add_argument("--connector", type=int, default=1)
    p.add_argument("--max-wh", type=int)
    p.add_argument("--max-cost-millis", type=int)
    p.add_argument("--max-s", type=int)
    p = add("stop", cmd_stop, "remote stop, by connector or session id")
    p.add_argument("--connector", type=int)
    p.add_argument("--sid")

    cp = sub.add_parser("config", help="read or change configuration keys",
                        description="read or change configuration keys")
    csub = cp.add_subparsers(dest="config_command", metavar="get|set")
    csub.required = True
    p = add("get", cmd_config_get, "config_get: the values of KEYS (all without)",
            positional=False, parent=csub)
    p.add_argument("keys", nargs="*", metavar="KEY")
    p = add("set", cmd_config_set, "config_set KEY=VALUE ...: all or nothing per station "
            "(VALUE is JSON, else text)", positional=False, parent=csub)
    p.add_argument("values", nargs="+", metavar="KEY=VALUE")

    ap_ = sub.add_parser("auth-list", help="push a local authorization list",
                         description="push a local authorization list")
    asub = ap_.add_subparsers(dest="auth_command", metavar="push")
    asub.required = True
    p = add("push", cmd_auth_push, "push CSV (id_tag,status,expires,max_wh[,group]): a diff "
            "when the station holds what the fleet last sent it, else the full list",
            positional=False, parent=asub)
    p.add_argument("csv", metavar="CSV")

    tp = sub.add_parser("tariff", help="set the tariff", description="set the tariff")
    tsub = tp.add_subparsers(dest="tariff_command", metavar="set")
    tsub.required = True
    p = add("set", cmd_tariff_set, "set_tariff currency=EUR energy_millis_per_kwh=35000 ...",
            positional=False, parent=tsub)
    p.add_argument("values", nargs="*", metavar="KEY=VALUE")
    p.add_argument("--none", action="store_true", help="remove the tariff")

    gp = sub.add_parser("group", help="groups and their profiles",
                        description="groups and their profiles (config, tariff, auth list)")
    gsub = gp.add_subparsers(dest="group_command", metavar="SUBCOMMAND")
    gsub.required = True
    p = add("set", cmd_group_set, "put stations into group G", targets=False, parent=gsub)
    p.add_argument("group_name", metavar="G")
    p.add_argument("ids", nargs="+", metavar="ID")
    p = add("rm", cmd_group_rm, "take stations out of their group", targets=False,
            parent=gsub)
    p.add_argument("ids", nargs="+", metavar="ID")
    p = add("ls", cmd_group_ls, "the groups, their stations and profiles", targets=False,
            parent=gsub)
    p.add_argument("--json", action="store_true")
    p = add("show", cmd_group_show, "one group's profile (secrets masked)", targets=False,
            parent=gsub)
    p.add_argument("group_name", metavar="G")
    p = add("config", cmd_group_config, "set config keys of group G's profile",
            targets=False, parent=gsub)
    p.add_argument("group_name", metavar="G")
    p.add_argument("values", nargs="+", metavar="KEY=VALUE")
    p = add("tariff", cmd_group_tariff, "set group G's tariff", targets=False, parent=gsub)
    p.add_argument("group_name", metavar="G")
    p.add_argument("values", nargs="*", metavar="KEY=VALUE")
    p.add_argument("--none", action="store_true", help="the group's stations get no tariff")
    p = add("auth-list", cmd_group_auth, "set group G's auth list from CSV", targets=False,
            parent=gsub)
    p.add_argument("group_name", metavar="G")
    p.add_argument("csv", metavar="CSV")

    p = add("adopt", cmd_adopt, "put new stations into group G and push its tariff, auth "
            "list and config", targets=False)
    p.add_argument("ids", nargs="+", metavar="ID")
    p.add_argument("--group", required=True, metavar="G")
    p.add_argument("--json", action="store_true")

    # The ledger's and the report's subcommands, when those tools are installed.
    for name in ("ledger", "report"):
        try:
            importlib.import_module(name).add_parser(sub, parents=[common])
        except ModuleNotFoundError as e:
            if e.name != name:
                print("fleet: %s subcommands unavailable: %s" % (name, e), file=sys.stderr)
        except Exception as e:  # a tool being rewritten must not take the fleet CLI down
            print("fleet: %s subcommands unavailable: %r" % (name, e), file=sys.stderr)
    return ap


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except FleetError as e:
        print("fleet: %s" % e, file=sys.stderr)
        return e.exit_code


if __name__ == "__main__":
    sys.exit(main())
