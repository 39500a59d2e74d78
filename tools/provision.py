"""Provision a station's first configuration: check it against the firmware's own schema, then
write config.json (and the broker's CA certificate) to the board's flash over mpremote, or to
a directory that stands for the flash. One station from options, or many from a CSV file.

Secrets (Wi-Fi and MQTT passwords, any secret key given with --set) are never printed: not in
--dry-run, not in errors, not in mpremote's output. docs/installer.md is the installer's guide."""

import argparse
import csv
import json
import os
import shutil
import ssl
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
# The firmware's own modules validate and write the file, so the tool and the station can
# never disagree about keys, types, ranges or the file's shape. EVSE_FIRMWARE (a mutated
# copy of firmware/, as for the tests) is honoured like everywhere else.
sys.path.insert(0, os.environ.get("EVSE_FIRMWARE") or os.path.join(ROOT, "firmware"))

from evse import config as fwconfig  # noqa: E402
from evse.store import Store  # noqa: E402

MASK = "***"  # what config_get and the config topic show for a secret, too
# Waiting for the watchdog reset after mpremote's Ctrl-C stopped a running station: the
# watchdog's 2 s, the boot, and a margin (boards/esp32_devkitc/README.md, service boot).
SETTLE_S = 4.0

# option (as on the command line, without --) -> the configuration key it sets. --broker
# sets three keys, --ca copies a file; --port is a target. They are handled by name.
OPTION_KEYS = (
    ("station-id", "station_id"),
    ("wifi-ssid", "wifi.ssid"),
    ("wifi-password", "wifi.password"),
    ("mqtt-user", "mqtt.user"),
    ("mqtt-password", "mqtt.password"),
    ("meter-profile", "meter.profile"),
    ("meter-address", "meter.slave"),
    ("max-current", "max_current_a"),
    ("auth-mode", "auth_mode"),
)
OTHER_OPTIONS = ("broker", "ca", "port")
# Passwords may come from the environment instead of the command line (shell history, ps).
ENV_SECRETS = {"wifi-password": "EVSE_WIFI_PASSWORD", "mqtt-password": "EVSE_MQTT_PASSWORD"}
# The device-side commit: files were copied as .tmp; rename them into place (atomic on
# LittleFS, as evse/store.py relies on) and drop a service-boot flag left by the Ctrl-C, so
# the reset that follows starts the station. Paths are relative to the board's working
# directory, its flash root, as `mpremote fs cp` and `make deploy` use them.
DEVICE_COMMIT = (
    "import os\n"
    "for n in %r:\n"
    "    os.rename(n + '.tmp', n)\n"
    "try:\n"
    "    os.remove('nomain')\n"
    "except OSError:\n"
    "    pass\n"
)


class Failed(Exception):
    """A station whose configuration does not pass: nothing was written for it. The message
    says why (never with a secret)."""


class WriteFailed(Failed):
    """Writing failed part way (a full disk, a board that reset): the station's previous
    config.json is still in place, as every file is renamed into place only when complete."""


class Out:
    """Everything the tool prints goes through here: known secret values become ***."""

    def __init__(self):
        self.secrets = set()

    def secret(self, value):
        if isinstance(value, str) and value:
            self.secrets.add(value)

    def mask(self, text):
        # Longest first, so a secret that contains another is masked whole.
        for s in sorted(self.secrets, key=len, reverse=True):
            text = text.replace(s, MASK)
        return text

    def say(self, text):
        print(self.mask(text), flush=True)

    def err(self, text):
        print(self.mask(text), file=sys.stderr, flush=True)


def schema_type(key):
    for e in fwconfig.SCHEMA:
        if e[0] == key:
            return e[1]
    return None


def value_of(key, text):
    """An option's or cell's text as the value the schema expects: text for string keys and
    choices (an SSID "0123" stays a string), JSON for numbers, booleans and objects. Text
    that is not JSON stays text, so the schema check names the wrong type."""
    typ = schema_type(key)
    if typ is str or isinstance(typ, tuple):
        if len(text) >= 2 and text[0] == text[-1] == '"':
            try:
                return json.loads(text)  # "quoted" as the simulator's --config takes it
            except ValueError:
                pass
        return text
    if typ is bool and text.strip().lower() in ("true", "false"):
        return text.strip().lower() == "true"
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_broker(url):
    """mqtt://host[:port] or mqtts://host[:port] -> {mqtt.host, mqtt.port, mqtt.tls}."""
    shown = url
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        # Credentials in a URL end up in logs and shell history: they have their own options.
        shown = "%s://%s@%s" % (scheme, MASK, rest.rpartition("@")[2])
        raise Failed("bad broker URL %s: give the user and password with --mqtt-user and "
                     "--mqtt-password, not in the URL" % shown)
    scheme = scheme.lower()
    if not sep or scheme not in ("mqtt", "mqtts"):
        raise Failed("bad broker URL %r: expected mqtt://HOST:PORT or mqtts://HOST:PORT"
                     % shown)
    hostport = rest[:-1] if rest.endswith("/") else rest
    if not hostport or any(c in hostport for c in "/?#[]"):
        raise Failed("bad broker URL %r: expected mqtt://HOST:PORT or mqtts://HOST:PORT "
                     "(no path, no IPv6 literal)" % shown)
    host, colon, port = hostport.partition(":")
    tls = scheme == "mqtts"
    if not colon:
        port = "8883" if tls else "1883"  # the IANA ports for MQTT over TLS and plain
    if not host or not port.isdigit() or ":" in port:
        raise Failed("bad broker URL %r: expected mqtt://HOST:PORT or mqtts://HOST:PORT "
                     "with a numeric port" % shown)
    return {"mqtt.host": host, "mqtt.port": int(port), "mqtt.tls": tls}


def read_ca(path):
    """The CA certificate's bytes, checked the way the firmware will read it (evse/tls.py:
    PEM converted to DER, or DER as is) and loadable as a trust anchor."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise Failed("CA certificate %s: %s" % (path, e.strerror or e)) from None
    der = data
    if data.startswith(b"-----"):
        from evse.tls import pem_to_der

        try:
            der = pem_to_der(data)
        except (ValueError, UnicodeError) as e:
            raise Failed("CA certificate %s: not a PEM or DER X.509 certificate (%s)"
                         % (path, e)) from None
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=der)
    except (ssl.SSLError, ValueError, TypeError):
        raise Failed("CA certificate %s: not a PEM or DER X.509 certificate" % path) from None
    return data


class _Staging:
    """A Store that holds nothing: Config starts from the defaults, and update() validates
    exactly as on the station (types, ranges, cross-key rules, the custom meter map)."""

    def read_json(self, name):
        return None

    def write_json(self, name, obj):
        pass


class Plan:
    """One station's validated configuration and files, ready to write."""

    def __init__(self, station_id, values, ca_name=None, ca=None):
        self.station_id = station_id
        self.values = values  # {key: value}: only what the installer set
        self.ca_name = ca_name
        self.ca = ca

    def shown(self):
        """The values as printed: secrets masked as config_get masks them."""
        return {k: (MASK if fwconfig.is_secret(k) and v else v)
                for k, v in sorted(self.values.items())}

    def files(self):
        return ([self.ca_name] if self.ca is not None else []) + [fwconfig.FILE]


def plan(opts, sets, base_dir=None):
    """opts: {option: text} (options of OPTION_KEYS and OTHER_OPTIONS, empty = not given);
    sets: [(key, text)]. Raises Failed before anything is written."""
    changes = {}
    for opt, key in OPTION_KEYS:
        text = opts.get(opt)
        if text:
            changes[key] = value_of(key, text)
    for key, text in sets:
        if key in changes:
            raise Failed("%s is given twice (an option and --set)" % key)
        changes[key] = value_of(key, text)
    if opts.get("broker"):
        for key, v in parse_broker(opts["broker"]).items():
            if key in changes:
                raise Failed("%s is given twice (--broker and --set)" % key)
            changes[key] = v
    station_id = changes.get("station_id")
    if not station_id:
        raise Failed("no station id: give --station-id (it names the station's MQTT topics)")
    # Every key on its own first, so the installer sees all the mistakes at once; then the
    # whole set as config_set applies it (the rules between keys).
    errors = []
    for key, v in changes.items():
        try:
            fwconfig.check(key, v)
        except ValueError as e:
            errors.append(str(e))
    if errors:
        raise Failed("; ".join(errors))
    cfg = fwconfig.Config(_Staging())
    try:
        clean = cfg.update(changes)
    except ValueError as e:
        raise Failed(str(e)) from None
    if clean["station_id"] in (".", ".."):
        raise Failed("station_id %r is not a usable name" % clean["station_id"])
    ca_name = ca = None
    if opts.get("ca"):
        ca_name = cfg["mqtt.ca_file"]
        if "/" in ca_name or ca_name in (".", ".."):
            raise Failed("mqtt.ca_file must be a plain file name in the flash root to copy "
                         "the CA there (got %r)" % ca_name)
        ca_path = os.path.expanduser(opts["ca"])
        if base_dir:
            ca_path = os.path.join(base_dir, ca_path)  # a CSV's paths: next to the CSV
        ca = read_ca(ca_path)
    elif cfg["mqtt.tls"]:
        raise Failed("mqtts:// needs the broker's CA certificate: give --ca FILE (copied to "
                     "the flash as %s)" % cfg["mqtt.ca_file"])
    return Plan(clean["station_id"], clean, ca_name, ca)


def _write_atomic(path, data):
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, path)


def write_dir(p, flash):
    """Write to a directory that stands for the flash: the CA first, then config.json, both
    atomically, config.json with the firmware's own Store (its JSON, its temp-file rename)."""
    if os.path.exists(flash) and not os.path.isdir(flash):
        raise Failed("%s is not a directory" % flash)
    try:
        os.makedirs(flash, exist_ok=True)
        if p.ca is not None:
            _write_atomic(os.path.join(flash, p.ca_name), p.ca)
        Store(flash).write_json(fwconfig.FILE, p.values)
    except OSError as e:
        raise WriteFailed("writing to %s: %s" % (flash, e)) from None


def default_mpremote():
    cand = os.path.join(os.path.dirname(sys.executable), "mpremote")
    return cand if os.path.exists(cand) else (shutil.which("mpremote") or "mpremote")


def _run(out, cmd, what):
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise WriteFailed("%s: cannot run %s: %s" % (what, cmd[0], e)) from None
    if r.returncode != 0:
        tail = (r.stdout + r.stderr).strip().splitlines()[-5:]
        raise WriteFailed("%s: mpremote exited %d: %s" % (what, r.returncode, out.mask(
            " | ".join(tail))))


def write_port(out, p, port, mpremote, settle_s):
    """Copy to a board over its serial port with mpremote. First a no-op: its Ctrl-C stops a
    running station, which leaves the outputs safe and flags a service boot; the watchdog
    then resets the board into that boot (no watchdog there), where the copy has all the
    time it needs. Then copy as .tmp, rename into place, clear the flag, and reset."""
    _run(out, [mpremote, "connect", port, "exec", "pass"], "%s: reaching the REPL" % port)
    time.sleep(settle_s)
    with tempfile.TemporaryDirectory(prefix="evse-provision-") as stage:
        cmd = [mpremote, "connect", port]
        if p.ca is not None:
            _write_atomic(os.path.join(stage, p.ca_name), p.ca)
        Store(stage).write_json(fwconfig.FILE, p.values)
        for name in p.files():
            cmd += ["fs", "cp", os.path.join(stage, name), ":%s.tmp" % name, "+"]
        cmd += ["exec", DEVICE_COMMIT % (p.files(),), "+", "reset"]
        _run(out, cmd, "%s: copying (if the board reset meanwhile, run again)" % port)


def provision(out, p, target, args):
    """target: ("dir", path) or ("port", device). Prints one line per station."""
    kind, where = target
    files = " + ".join(p.files())
    if args.dry_run:
        dest = os.path.join(where, fwconfig.FILE) if kind == "dir" else "%s:%s" % (
            where, fwconfig.FILE)
        out.say("%s: would write %s%s:" % (p.station_id, dest, (
            " and %s" % p.ca_name) if p.ca is not None else ""))
        out.say(json.dumps(p.shown(), indent=2))
        return
    if kind == "dir":
        write_dir(p, where)
        out.say("%s: wrote %s to %s" % (p.station_id, files, where))
    else:
        write_port(out, p, where, args.mpremote, args.settle_s)
        out.say("%s: wrote %s to the board on %s and reset it" % (p.station_id, files, where))


# -- command line -------------------------------------------------------------------------------


def _split_set(item):
    key, eq, text = item.partition("=")
    if not eq or not key:
        # Not echoed: a mistyped item may well be a password.
        raise Failed("--set expects KEY=VALUE (an item has no '=')")
    return key.strip(), text


def _option_name(header):
    """A CSV header as an option name: '--wifi-ssid', 'wifi_ssid' and 'wifi-ssid' alike."""
    return header.strip().lstrip("-").replace("_", "-")


OPTION_NAMES = tuple(o for o, _ in OPTION_KEYS) + OTHER_OPTIONS
SECRET_OPTIONS = ("wifi-password", "mqtt-password")


def _columns(headers):
    """header -> ("opt", option) or ("set", key); raises Failed for an unknown column."""
    cols = {}
    for h in headers:
        name = _option_name(h or "")
        if name in OPTION_NAMES:
            cols[h] = ("opt", name)
        elif schema_type((h or "").strip()) is not None:
            cols[h] = ("set", h.strip())
        else:
            raise Failed("unknown column %r: use option names (%s) or configuration keys "
                         "(docs/mqtt.md, Configuration)" % (h, ", ".join(OPTION_NAMES)))
    return cols


def run_csv(out, args, base_opts, base_sets):
    path = args.csv
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            cols = _columns(reader.fieldnames or [])
            rows = []
            for row in reader:
                rows.append((reader.line_num, row))
    except (OSError, csv.Error, UnicodeError) as e:
        out.err("error: %s: %s" % (path, e))
        return 2
    except Failed as e:
        out.err("error: %s: %s" % (path, e))
        return 2
    if not cols:
        out.err("error: %s: no header line" % path)
        return 2
    # Every secret in the file is known before the first line is printed.
    for _, row in rows:
        for h, (kind, name) in cols.items():
            if (kind == "opt" and name in SECRET_OPTIONS) or (
                    kind == "set" and fwconfig.is_secret(name)):
                out.secret(row.get(h) or "")
    base_dir = os.path.dirname(os.path.abspath(path))
    seen = {}
    failed = []
    for line, row in rows:
        opts = dict(base_opts)
        sets = list(base_sets)
        for h, (kind, name) in cols.items():
            cell = (row.get(h) or "").strip() if name not in SECRET_OPTIONS else (
                row.get(h) or "")
            if not cell:
                continue  # empty: the command line's value, or the default
            if kind == "opt":
                opts[name] = cell
            else:
                sets = [s for s in sets if s[0] != name] + [(name, cell)]
        where = "%s line %d" % (path, line)
        try:
            if None in row:
                raise Failed("more cells than the header has columns")
            p = plan(opts, sets, base_dir)
            if p.station_id in seen:
                raise Failed("station_id %s is already on line %d" % (p.station_id,
                                                                     seen[p.station_id]))
            seen[p.station_id] = line
            if args.dir_root:
                target = ("dir", os.path.join(args.dir_root, p.station_id))
            elif opts.get("port"):
                target = ("port", opts["port"])
            else:
                raise Failed("no target: give --dir-root DIR or a port column")
            provision(out, p, target, args)
        except Failed as e:
            failed.append(line)
            out.err("error: %s: %s%s" % (where, e, "" if isinstance(e, WriteFailed) else
                                         " (nothing written for this line)"))
    done = "checked" if args.dry_run else "provisioned"
    if failed:
        out.err("%d of %d stations %s; failed: line%s %s" % (
            len(rows) - len(failed), len(rows), done, "s" if len(failed) > 1 else "",
            ", ".join(str(n) for n in failed)))
        return 1
    out.say("%d station%s %s" % (len(rows), "s" if len(rows) != 1 else "", done))
    return 0


def parser():
    ap = argparse.ArgumentParser(
        prog="provision.py",
        description="Write a station's first configuration (config.json, and the broker's CA "
                    "certificate) to its flash, checked against the firmware's schema first. "
                    "Nothing is written for a station whose configuration does not pass. "
                    "Passwords are never printed. Guide: docs/installer.md.",
        epilog="Examples:\n"
               "  provision.py --port /dev/ttyUSB0 --station-id bay-1 --wifi-ssid SiteNet "
               "--broker mqtts://broker.example:8883 --ca site-ca.pem --mqtt-user bay-1 "
               "--max-current 16\n"
               "  provision.py --csv stations.csv --dir-root out/ --broker "
               "mqtt://10.0.0.2:1883\n"
               "Passwords: --wifi-password/--mqtt-password, else the environment variables "
               "EVSE_WIFI_PASSWORD/EVSE_MQTT_PASSWORD.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    # Every value option is a plain string: argparse then never repeats a value in its own
    # error messages, and the firmware's schema does the type and range checks.
    g = ap.add_argument_group("the configuration")
    g.add_argument("--station-id", metavar="ID", help="station id (MQTT topics, client id); "
                   "required")
    g.add_argument("--wifi-ssid", metavar="SSID", help="Wi-Fi network")
    g.add_argument("--wifi-password", metavar="PASSWORD",
                   help="Wi-Fi password (default: $EVSE_WIFI_PASSWORD)")
    g.add_argument("--broker", metavar="URL",
                   help="mqtt://HOST:PORT or mqtts://HOST:PORT (TLS; needs --ca); the port "
                        "defaults to 1883 / 8883")
    g.add_argument("--mqtt-user", metavar="USER", help="MQTT user name")
    g.add_argument("--mqtt-password", metavar="PASSWORD",
                   help="MQTT password (default: $EVSE_MQTT_PASSWORD)")
    g.add_argument("--ca", metavar="FILE", help="the broker's CA certificate (PEM or DER), "
                   "copied to the flash as mqtt.ca_file (default ca.pem)")
    g.add_argument("--meter-profile", metavar="NAME", help="meter.profile, e.g. sdm630, "
                   "sdm72d-m-v2, sdm120, abb-b23, em340, orno-we-516, none")
    g.add_argument("--meter-address", metavar="N", help="the meter's Modbus address "
                   "(meter.slave, 1..247)")
    g.add_argument("--max-current", metavar="A", help="max_current_a: what the installation "
                   "may draw (6..80)")
    g.add_argument("--auth-mode", metavar="MODE", help="auth_mode (free)")
    g.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any other configuration key (docs/mqtt.md, Configuration); VALUE is "
                        "JSON for numbers, booleans and objects, text for strings; repeatable")
    t = ap.add_argument_group("where to write (one of)")
    t.add_argument("--port", metavar="DEVICE", help="the board's serial port, e.g. "
                   "/dev/ttyUSB0 (mpremote; the board is reset afterwards)")
    t.add_argument("--dir", metavar="DIR", help="a directory that stands for the flash")
    t.add_argument("--csv", metavar="FILE", help="one station per row; the header names "
                   "options (station-id, wifi-ssid, ..., port) or configuration keys; the "
                   "command line's options are the defaults for empty cells; relative CA "
                   "paths are relative to the CSV file")
    t.add_argument("--dir-root", metavar="DIR", help="with --csv: write each station to "
                   "DIR/<station_id>/ (otherwise each row's port column)")
    o = ap.add_argument_group("other")
    o.add_argument("--dry-run", action="store_true", help="check and print what would be "
                   "written (passwords as ***), write nothing")
    o.add_argument("--mpremote", metavar="CMD", default=None,
                   help="the mpremote to run (default: the one beside this Python, else PATH)")
    o.add_argument("--settle-s", type=float, default=SETTLE_S, metavar="S",
                   help="wait after stopping a running station for its watchdog reset into "
                        "the service boot (default %(default)s)")
    return ap


def main(argv=None):
    out = Out()
    ap = parser()
    args, extra = ap.parse_known_args(argv)
    if extra:
        # argparse would print the stray values, and a mistyped option's value may be a
        # password: name only what looks like an option.
        names = [x.split("=")[0] for x in extra if x.startswith("-")]
        ap.print_usage(sys.stderr)
        out.err("error: unknown option(s) %s (values not shown)" % (
            " ".join(names) if names else "<none; stray values>"))
        return 2
    if not 0 <= args.settle_s <= 60:
        out.err("error: --settle-s must be from 0 to 60")
        return 2
    args.mpremote = args.mpremote or default_mpremote()
    opts = {o: getattr(args, o.replace("-", "_")) or "" for o in OPTION_NAMES}
    for opt, env in ENV_SECRETS.items():
        if not opts[opt]:
            opts[opt] = os.environ.get(env, "")
    for opt in SECRET_OPTIONS:
        out.secret(opts[opt])
    try:
        sets = [_split_set(s) for s in args.set]
    except Failed as e:
        out.err("error: %s" % e)
        return 2
    for key, text in sets:
        if fwconfig.is_secret(key):
            out.secret(text)
    # Files written here hold passwords: readable by this user only.
    os.umask(0o077)
    if args.csv:
        if args.dir or args.port:
            out.err("error: --csv takes --dir-root (or a port column), not --dir or --port")
            return 2
        return run_csv(out, args, opts, sets)
    if args.dir_root:
        out.err("error: --dir-root is for --csv; one station takes --dir")
        return 2
    if bool(args.dir) == bool(args.port):
        out.err("error: give exactly one of --port DEVICE, --dir DIR or --csv FILE")
        return 2
    target = ("dir", args.dir) if args.dir else ("port", args.port)
    try:
        p = plan(opts, sets)
        provision(out, p, target, args)
    except Failed as e:
        out.err("error: %s%s" % (e, "" if isinstance(e, WriteFailed) else " (nothing written)"))
        return 1
    for key, hint in (("mqtt.host", "--broker"), ("wifi.ssid", "--wifi-ssid")):
        if key not in p.values:
            out.err("note: no %s: %s keeps its default (%r)" % (
                hint, key, fwconfig.Config(_Staging())[key]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
