"""Home Assistant MQTT discovery: retained entity configs under <ha_prefix>/."""

from evse.link import dumps


def configs(station, base):
    """[(topic, payload)] for every connector: state, offered current, power, session energy,
    a current-limit number and an enable switch, all bound to <base>/online."""
    out = []
    sid = station.station_id
    pre = station.cfg["ha_prefix"]
    dev = {
        "identifiers": [sid],
        "name": "EVSE " + sid,
        "manufacturer": "evse-firmware",
        "model": station.board.name,
        "sw_version": station.info()["fw"],
    }
    avail = {"availability_topic": base + "/online"}
    for c in station.connectors:
        n = c.id
        sel = "value_json.connectors[%d]" % (n - 1)
        uid = "%s_c%d" % (sid, n)

        def ent(component, key, cfg):
            cfg.update(avail)
            cfg["unique_id"] = "%s_%s" % (uid, key)
            cfg["object_id"] = "%s_%s" % (uid, key)
            cfg["device"] = dev
            out.append(("%s/%s/%s/%s/config" % (pre, component, uid, key), dumps(cfg)))

        ent("sensor", "state", {
            "name": "Connector %d state" % n,
            "state_topic": base + "/status",
            "value_template": "{{ %s.state }}" % sel,
            "icon": "mdi:ev-station",
        })
        ent("sensor", "offered", {
            "name": "Connector %d offered current" % n,
            "state_topic": base + "/status",
            "value_template": "{{ %s.offered_a }}" % sel,
            "unit_of_measurement": "A",
            "device_class": "current",
        })
        ent("sensor", "power", {
            "name": "Connector %d power" % n,
            "state_topic": base + "/meter",
            "value_template": "{{ value_json.p_w if value_json.connector == %d else this.state }}" % n,
            "unit_of_measurement": "W",
            "device_class": "power",
            "state_class": "measurement",
        })
        ent("sensor", "energy", {
            "name": "Connector %d session energy" % n,  # energy since plug-in
            "state_topic": base + "/status",
            "value_template": "{{ %s.energy_wh | default(0) }}" % sel,
            "unit_of_measurement": "Wh",
            "device_class": "energy",
            "state_class": "total_increasing",
        })
        ent("number", "limit", {
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
        ent("switch", "enabled", {
            "name": "Connector %d enabled" % n,
            "state_topic": base + "/status",
            "value_template": "{{ 'OFF' if %s.state == 'Unavailable' else 'ON' }}" % sel,
            "command_topic": base + "/cmd",
            "payload_on": '{"rid":"ha","cmd":"enable","connector":%d}' % n,
            "payload_off": '{"rid":"ha","cmd":"disable","connector":%d}' % n,
            "state_on": "ON",
            "state_off": "OFF",
        })
    return out
