"""The shapes of what the station reports (docs/mqtt.md): info, status, meter and event
payloads and the diag answer. Pure functions of the station's state; the link decides when
to send them."""

import json

from evse import VERSION
from evse.events import stamp


def dumps(obj):
    """Compact JSON: every byte counts on a metered cellular link."""
    try:
        return json.dumps(obj, separators=(",", ":"))
    except TypeError:  # older MicroPython without separators
        return json.dumps(obj)


def info(st):
    return {
        "api": 1,
        "fw": VERSION,
        "board": st.board.name,
        "connectors": len(st.connectors),
        "phases": st.cfg["phases"],
        "max_current_a": float(st.board.max_current_a),
        "meter": st.metering.name,
        "rfid": st.board.spi is not None,
    }


def status(st, now):
    conns = []
    for k, c in enumerate(st.connectors):
        d = {
            "id": c.id,
            "state": c.state,
            "cp": c.cp,
            "contactor": c.contactor,
            "offered_a": c.offered_a,
            "limit_a": round(c.limit_a, 1),
            "limit_by": c.limit_by,
            "session": None,
            "error": _error(st, c),
        }
        e = st.metering.energy_wh(k)
        if e is not None:
            d["energy_wh"] = e  # extension: energy since plug-in
        s = st.sessions.status(k)
        if s is not None:
            d["session"] = s[0]
            d["session_wh"] = s[1]  # extensions: the session's energy and running cost
            if s[2] is not None:
                d["cost_millis"] = s[2]
        conns.append(d)
    return {
        "ts": st.board.unix_time(),
        "uptime_s": st.uptime.s,
        "connectors": conns,
    }


def _error(st, c):
    e = c.error
    if e is None:
        r = st.auth.reader
        if r is not None and r.failed:
            return "ReaderFailure"  # charging by other means goes on
    return e


def status_key(st):
    """What a status change is judged on (everything but ts, uptime and energy, which
    refresh with the meter cadence instead)."""
    k = []
    for c in st.connectors:
        k.append((c.state, c.cp, c.contactor, c.duty, c.limit_a, c.limit_by, _error(st, c),
                  st.sessions.cur[c.id - 1] is not None))
    return k


def meter(st, k, reading):
    v, i, p_w, e_wh, f_hz = reading
    return {"ts": st.board.unix_time(), "connector": st.connectors[k].id, "v": v, "i": i,
            "p_w": p_w, "e_wh": e_wh, "f_hz": f_hz}


def event(st, ev, now):
    d = {"ts": stamp(ev, st.board.unix_time(), st.uptime.s), "level": ev[0], "code": ev[1],
         "connector": ev[2], "detail": ev[3]}
    if ev[6] > 1:
        d["count"] = ev[6]  # repeats coalesced into this event while it waited
    return d


def diag(st, link, now):
    c = link.client
    try:
        import gc

        heap = gc.mem_free()
    except (ImportError, AttributeError):
        heap = None
    return {
        "fw": VERSION,
        "fw_image": st.image,
        "uptime_s": st.uptime.s,
        "heap_free": heap,
        "loop_max_gap_ms": st.loop_max_gap_ms,
        "loop_count": st.loop_count,
        "exceptions": st.exceptions,
        "reconnects": link.reconnects,
        "connects": link.connects,
        "mqtt_tx_bytes": link.bytes_tx + c.bytes_tx,
        "mqtt_rx_bytes": link.bytes_rx + c.bytes_rx,
        "outbox_bytes": c.outbox_bytes(),
        "inflight": c.inflight,
        "replies_dropped": link.replies_dropped,
        "publish_dropped": c.dropped,
        "commands": link.api.handled + link.api.rejected,
        "repeats": link.api.repeats,
        "oversized": c.oversized,
        "events_dropped": st.events.dropped,
        "events_coalesced": st.events.coalesced,
        "modbus": st.metering.diag(),
        "net": st.board.net.diag() if st.board.net is not None else None,
        "link_wait": link.wait,
        "dns": link.resolver.diag(),
        "clock": link.clock_diag(),
        "tls_step_max_ms": link.tls_step_max_ms,
        "contactor_cycles": [c.cycles for c in st.connectors],
        "grid": grid_diag(st),
        "orders_writes": st.orders.writes,
        "sessions": st.sessions.figures(),
        "auth": st.auth.figures(),
    }


def grid_diag(st):
    b = st.balancer
    return {"samples": b.samples, "rejected": b.rejected, "last": b.grid,
            "stale": st.failsafe.grid_stale, "alloc_a": b.alloc,
            "failsafe": st.failsafe.active, "failsafe_engaged": st.failsafe.engaged}
