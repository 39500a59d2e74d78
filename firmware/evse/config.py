"""Configuration: one declarative schema, validated updates, stored on flash as JSON."""

from evse.compat import const

_SECRET = const(1)
_TOPIC = const(2)  # used as an MQTT topic level: no '/', '+', '#' or spaces

# (key, type, default, min, max, flags). type: int, float, bool, str, dict, or a tuple of
# choices. meter.baud 0 and meter.parity "" mean the profile's default.
# Later issues add their keys here; nothing else in the firmware invents configuration.
SCHEMA = (
    ("station_id", str, "", 0, 64, _TOPIC),
    ("prefix", str, "evse", 1, 32, _TOPIC),
    ("mqtt.host", str, "127.0.0.1", 0, 128, 0),
    ("mqtt.port", int, 1883, 1, 65535, 0),
    ("mqtt.user", str, "", 0, 64, 0),
    ("mqtt.password", str, "", 0, 128, _SECRET),
    ("mqtt.tls", bool, False, 0, 0, 0),
    ("mqtt.ca_file", str, "ca.pem", 1, 64, 0),
    ("mqtt.keepalive_s", int, 120, 10, 1200, 0),
    ("wifi.ssid", str, "", 0, 32, 0),
    ("wifi.password", str, "", 0, 64, _SECRET),
    ("ntp.host", str, "pool.ntp.org", 0, 64, 0),
    ("status_interval_s", int, 300, 5, 3600, 0),
    ("meter_interval_s", int, 10, 1, 3600, 0),
    ("meter_idle_interval_s", int, 300, 10, 86400, 0),
    ("ha_discovery", bool, False, 0, 0, 0),
    ("ha_prefix", str, "homeassistant", 1, 64, _TOPIC),
    ("max_current_a", float, 32.0, 6.0, 80.0, 0),
    ("phases", int, 3, 1, 3, 0),
    ("auth_mode", ("free", "rfid", "remote", "rfid+remote"), "free", 0, 0, 0),
    ("auth_timeout_s", int, 5, 1, 60, 0),
    ("connection_timeout_s", int, 60, 5, 600, 0),
    ("auth.offline_local", bool, True, 0, 0, 0),
    ("auth.offline_unknown", bool, False, 0, 0, 0),
    ("auth.stop_on_invalid", bool, True, 0, 0, 0),
    ("session_ack", bool, True, 0, 0, 0),
    ("ventilation", bool, False, 0, 0, 0),
    ("socket", bool, False, 0, 0, 0),
    ("thermal.derate_c", float, 60.0, 20.0, 120.0, 0),
    ("thermal.derate_current_a", float, 10.0, 6.0, 80.0, 0),
    ("thermal.stop_c", float, 75.0, 20.0, 130.0, 0),
    ("thermal.hysteresis_c", float, 5.0, 1.0, 30.0, 0),
    ("meter.profile", ("sdm630", "sdm72d-m-v2", "sdm120", "abb-b23", "em340", "orno-we-516",
                       "custom", "none"), "sdm630", 0, 0, 0),
    ("meter.slave", int, 1, 1, 247, 0),
    ("meter.baud", int, 0, 0, 115200, 0),
    ("meter.parity", ("", "none", "even", "odd"), "", 0, 0, 0),
    ("meter.transport", str, "uart", 4, 64, 0),
    ("meter.custom", dict, {}, 0, 0, 0),
    ("meter_fail_s", int, 10, 2, 3600, 0),
    ("meter_loss", ("suspend", "continue"), "suspend", 0, 0, 0),
    ("failsafe_after_s", int, 120, 5, 86400, 0),
    ("failsafe_current_a", float, 6.0, 0.0, 80.0, 0),
    ("failsafe_mode", ("min", "replace"), "min", 0, 0, 0),
    ("random_delay_s", int, 0, 0, 1800, 0),
    ("min_pause_s", int, 300, 0, 3600, 0),
    ("tz", str, "UTC0", 1, 64, 0),
    ("site.fuse_a", float, 0.0, 0.0, 2000.0, 0),
    ("site.margin_a", float, 1.0, 0.0, 100.0, 0),
    ("site.mode", ("grid", "solar", "smart"), "grid", 0, 0, 0),
    ("site.min_grid_a", float, 6.0, 0.0, 80.0, 0),
    ("site.priority", int, 1, 1, 100, 0),
    ("site.stations", int, 0, 0, 1000, 0),
    ("site.grid_meter", ("none", "sdm630", "sdm72d-m-v2", "sdm120", "abb-b23", "em340",
                         "orno-we-516"), "none", 0, 0, 0),
    ("site.grid_slave", int, 100, 1, 247, 0),
    ("site.phase_map", ("123", "231", "312", "132", "213", "321"), "123", 0, 0, 0),
    ("site.solar_stop_s", int, 120, 0, 3600, 0),
)

FILE = "config.json"


def is_secret(key):
    e = _entry(key)
    return e is not None and bool(e[5] & _SECRET)


def _entry(key):
    for e in SCHEMA:
        if e[0] == key:
            return e
    return None


def check(key, value):
    """The value coerced to the key's type, or raises ValueError("code: detail")."""
    e = _entry(key)
    if e is None:
        raise ValueError("bad_arg: unknown key %s" % key)
    typ, lo, hi = e[1], e[3], e[4]
    if isinstance(typ, tuple):
        if value not in typ:
            raise ValueError("out_of_range: %s must be one of %s" % (key, ",".join(typ)))
        return value
    if typ is bool:
        if value is True or value is False:
            return value
        raise ValueError("bad_arg: %s must be a boolean" % key)
    if typ is float:
        # JSON has one number type; an int is a fine float, a bool is not.
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError("bad_arg: %s must be a number" % key)
        value = float(value)
    elif typ is int:
        # 600.0 is how many JSON encoders write 600: integral floats are integers.
        if isinstance(value, float) and -1e15 < value < 1e15 and value == int(value):
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError("bad_arg: %s must be an integer" % key)
    elif typ is dict:
        if not isinstance(value, dict):
            raise ValueError("bad_arg: %s must be an object" % key)
        return value
    elif typ is str:
        if not isinstance(value, str):
            raise ValueError("bad_arg: %s must be a string" % key)
        if not lo <= len(value) <= hi:
            raise ValueError("out_of_range: %s length must be %d..%d" % (key, lo, hi))
        if e[5] & _TOPIC:
            for ch in "/+# ":
                if ch in value:
                    raise ValueError("bad_arg: %s must not contain '%s'" % (key, ch))
        return value
    if not lo <= value <= hi:
        raise ValueError("out_of_range: %s must be %s..%s" % (key, lo, hi))
    return value


def parse_overrides(items):
    """["key=json", ...] (the simulator's --config) -> {key: value}; bare strings allowed."""
    import json

    out = {}
    for item in items or ():
        k, _, v = item.partition("=")
        try:
            out[k] = json.loads(v)
        except ValueError:
            out[k] = v
    return out


class Config:
    """Current values, backed by a Store. Missing or corrupt file -> defaults + event.

    `overrides` are first-boot values (saved once, on a factory-fresh flash). `pinned` are
    values the board fixes on every boot (the simulator's --broker): they win over the
    stored ones, are shown as the values in force, and config_set may not change them."""

    def __init__(self, store, events=None, overrides=None, pinned=None):
        self._store = store
        self.pinned = pinned or {}
        self._under_pin = {}  # what the file holds for pinned keys: saved back unchanged
        self.values = {}
        for e in SCHEMA:
            self.values[e[0]] = e[2]
        try:
            saved = store.read_json(FILE)
            if saved is None:
                if events is not None:
                    events.add("info", "ConfigDefaults", 0, "no config file: defaults")
            elif not isinstance(saved, dict):
                raise ValueError("not an object")
        except (ValueError, OSError) as ex:
            saved = None
            # Keep the bad file for the technician, then carry on with defaults.
            try:
                store.rename(FILE, FILE + ".bad")
            except OSError:
                pass
            if events is not None:
                events.add("warn", "ConfigCorrupt", 0, "config unreadable (%s): defaults" % ex)
        if saved:
            for k, v in saved.items():
                try:
                    self.values[k] = check(k, v)
                except ValueError as ex:
                    # One bad stored value must not cost the others: keep its default.
                    if events is not None:
                        events.add("warn", "ConfigValue", 0, str(ex))
        elif overrides:
            # Factory state: the runner's first-boot overrides are applied and saved.
            self.update(overrides)
        for k, v in self.pinned.items():
            self._under_pin[k] = self.values[k]
            self.values[k] = check(k, v)

    def __getitem__(self, key):
        return self.values[key]

    def update(self, changes):
        """All-or-nothing: validate every key first, then apply and save once."""
        clean = {}
        for k, v in changes.items():
            clean[k] = check(k, v)
            if k in self.pinned and clean[k] != self.pinned[k]:
                raise ValueError("not_allowed: %s is fixed by the board (%r)"
                                 % (k, self.pinned[k]))
        new = dict(self.values)
        new.update(clean)
        if new["thermal.stop_c"] <= new["thermal.derate_c"]:
            raise ValueError("out_of_range: thermal.stop_c must be above thermal.derate_c")
        if "tz" in clean:
            from evse.localtime import parse

            parse(clean["tz"])  # raises ValueError("code: detail")
        if clean.get("meter.custom"):
            # Checked now, not at the next boot: a map the meter code cannot use would
            # leave the station without a meter until someone fixes it on site.
            from evse.meters import custom_profile

            try:
                custom_profile(clean["meter.custom"])
            except ValueError as e:
                raise ValueError("out_of_range: %s" % e) from None
        # Flash first: if the write fails, nothing changes in memory either.
        saved = new
        if self.pinned:
            saved = dict(new)
            saved.update(self._under_pin)
        self._store.write_json(FILE, saved)
        self.values = new
        return clean

    def public(self):
        """All values with secrets masked, for publishing and config_get."""
        out = {}
        for e in SCHEMA:
            v = self.values[e[0]]
            out[e[0]] = "***" if (e[5] & _SECRET and v) else v
        return out
