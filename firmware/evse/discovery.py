"""Home Assistant MQTT discovery: retained entity configs under <ha_prefix>/."""

from evse import VERSION
from evse.report import dumps


def _slug(s):
    """An entity id part as Home Assistant writes them: lowercase, '_' for the rest."""
    out = ""
    for ch in s.lower():
        out += ch if ("a" <= ch <= "z" or "0" <= ch <= "9") else "_"
    return out


def configs(station, base):
    """(topic, payload) for every connector, one at a time (the link sends them as the
    outbox allows): state, offered current, power, session energy, a current-limit number
    and an enable switch, all bound to <base>/online."""
    sid = station.station_id
    pre = station.cfg["ha_prefix"]
    dev = {
        "identifiers": [sid],
        "name": "EVSE " + sid,
        "manufacturer": "evse-firmware",
        "model": station.board.name,
        "sw_version": VERSION,
    }
    avail = {"availability_topic": base + "/online"}
    for c in station.connectors:
        n = c.id
        sel = "value_json.connectors[%d]" % (n - 1)
        uid = "%s_c%d" % (sid, n)

        def ent(component, key, cfg, uid=uid):
            cfg.update(avail)
            cfg["unique_id"] = "%s_%s" % (uid, key)
            # object_id is deprecated since Home Assistant 2025.10 (gone in 2026.4).
            cfg["default_entity_id"] = "%s.%s_%s" % (component, _slug(uid), key)
            cfg["device"] = dev
            return ("%s/%s/%s/%s/config" % (pre, component, uid, key), dumps(cfg))

        yield ent("sensor", "state", {
            "name": "Connector %d state" % n,
            "state_topic": base + "/status",
            "value_template": "{{ %s.state }}" % sel,
            "icon": "mdi:ev-station",
        })
        yield ent("sensor", "offered", {
            "name": "Connector %d offered current" % n,
            "state_topic": base + "/status",
            "value_template": "{{ %s.offered_a }}" % sel,
            "unit_of_measurement": "A",
            "device_class": "current",
        })
        yield ent("sensor", "power", {
            "name": "Connector %d power" % n,
            "state_topic": base + "/meter",
            "value_template":
                "{{ value_json.p_w if value_json.connector == %d else this.state }}" % n,
            "unit_of_measurement": "W",
            "device_class": "power",
            "state_class": "measurement",
        })
        yield ent("sensor", "energy", {
            "name": "Connector %d session energy" % n,  # energy since plug-in
            "state_topic": base + "/status",
            "value_template": "{{ %s.energy_wh | default(0) }}" % sel,
            "unit_of_measurement": "Wh",
            "device_class": "energy",
            "state_class": "total_increasing",
        })
        yield ent("number", "limit", {
            "name": "Connector %d current limit" % n,
            "state_topic": base + "/status",
            "value_template": "{{ %s.limit_a }}" % sel,
            "command_topic": base + "/cmd",
            "command_template": '{"rid":"ha","cmd":"set_limit","connector":%d,'
            '"current_a":{{ value }}}' % n,
            "min": 0,
            "max": station.board.max_current_a,
            "step": 0.1,
            "unit_of_measurement": "A",
            "mode": "box",
        })
        yield ent("switch", "enabled", {
            "name": "Connector %d enabled" % n,
            "state_topic": base + "/status",
            "value_template": "{{ 'OFF' if %s.state == 'Unavailable' else 'ON' }}" % sel,
            "command_topic": base + "/cmd",
            "payload_on": '{"rid":"ha","cmd":"enable","connector":%d}' % n,
            "payload_off": '{"rid":"ha","cmd":"disable","connector":%d}' % n,
            "state_on": "ON",
            "state_off": "OFF",
        })
