"""The field technician's kit, at the service console on the serial port (evse/console.py,
where `s` is this module: `s.help()`). Every call returns within a few ms: the station
keeps running and charging meanwhile. Secrets never print."""

import json

from evse import report

_W = 78


def _parts():
    import __main__

    st = getattr(__main__, "station", None)
    if st is None:
        raise RuntimeError("the station is not running (service boot: machine.reset())")
    return st, getattr(__main__, "link", None)


def _print(*args):
    """Output through the service console, which sends it a little per loop iteration (a
    long print straight to the ESP32's UART would hold the control loop); print() without
    one (a plain REPL)."""
    import __main__

    st = getattr(__main__, "station", None)
    con = getattr(st, "console", None)
    if con is None:
        print(*args)
    else:
        con.write(" ".join(str(a) for a in args) + "\n")


def _now():
    from evse.compat import ticks_ms

    return ticks_ms()


def _kv(d, skip=()):
    width = max([len(k) for k in d] + [1])
    for k in sorted(d):
        if k in skip:
            continue
        v = d[k]
        _print(("%-*s %s" % (width, k, v if isinstance(v, str) else json.dumps(v)))[:_W])


def help():  # noqa: A001 - the name a technician types
    """What this kit offers."""
    _print("""s.status()          the station, link and connectors at a glance
s.log(n=20)         the last n log lines; s.log(50, saved=True): the file on flash
s.config()          configuration (secrets masked)
s.set(key, value)   change one setting (checked like config_set)
s.wifi(ssid, pw)    join a Wi-Fi network (a fresh board has none)
s.meter()           live meter readings and Modbus counters
s.diag()            the diag counters the backend sees
s.outbox()          MQTT outbox and in-flight messages
s.sessions(n=5)     recent charging sessions
s.rfid()            the card reader
s.selftest()        RCD, contactor, pilot and meter check (no EV connected)""")


def status():
    """The station, the link and each connector, one line each."""
    st, link = _parts()
    up = st.uptime.s
    _print("station %s  fw %s (%s)  up %dd %02d:%02d:%02d" % (
        st.station_id, report.VERSION, st.image or "?", up // 86400, up // 3600 % 24,
        up // 60 % 60, up % 60))
    if link is not None:
        c = link.client
        state = "connected" if link.up else "down"
        _print("link    %s %s  connects %d  reconnects %d  outbox %d B" % (
            state, link.host or "-", link.connects, link.reconnects, c.outbox_bytes()))
    t = st.board.unix_time()
    temp = st.thermal.temp_c
    _print("clock   %s  temp %s" % ("not set" if t is None else "%d (unix)" % t,
                                   "-" if temp is None else "%.1f C" % temp))
    for c in st.connectors:
        _print("c%d      %-14s cp %s  contactor %s  %.1f A (limit %.1f A by %s)%s" % (
            c.id, c.state, c.cp, "closed" if c.contactor else "open",
            c.offered_a, c.limit_a, c.limit_by,
            "  error %s" % c.fault if c.fault else ""))


def log(n=20, saved=False):
    """The last n log lines; saved=True: from the file on flash, which survives a reset
    (written while no contactor is closed)."""
    import __main__

    ring = getattr(__main__, "logring", None)
    lines = [] if ring is None else ring.tail(n) if saved else ring.last(n)
    if not lines:
        _print("(no log lines)")
    for line in lines:
        _print(line[:_W])


def config():
    """Every setting; secrets show as ***."""
    st, _ = _parts()
    _kv(st.cfg.public())


def _config_set(values):
    st, link = _parts()
    if link is None:
        raise RuntimeError("no link: settings are changed through it")
    r = link.api.handle(json.dumps({"rid": "service", "cmd": "config_set",
                                    "values": values}).encode(), _now())
    if r.get("ok"):
        _print("ok: changed %s" % (", ".join(r["data"]["changed"]) or "nothing"))
    else:
        _print("refused: %s: %s" % (r.get("error"), r.get("detail")))
    return None


def set(key, value):  # noqa: A001 - the name a technician types
    """Change one setting, checked as the backend's config_set is (same rules, same event)."""
    return _config_set({key: value})


def wifi(ssid, password=""):
    """Join a Wi-Fi network: stored, then the board joins it (the password never prints)."""
    return _config_set({"wifi.ssid": ssid, "wifi.password": password})


def meter():
    """Live readings per connector, then the Modbus counters."""
    st, _ = _parts()
    m = st.metering
    if m.bus is None:
        _print("no meter (meter.profile %s)" % st.cfg["meter.profile"])
        return
    for k, c in enumerate(st.connectors):
        r = m.reading(k)
        if r is None:
            _print("c%d  no reading%s" % (c.id, "  FAILED" if c.meter_failed else ""))
            continue
        v, i, p, e, f = r
        _print("c%d  %s V  %s A  %d W  %d Wh  %.2f Hz%s" % (
            c.id, "/".join("%.1f" % x for x in v), "/".join("%.2f" % x for x in i), p, e, f,
            "  FAILED" if c.meter_failed else ""))
    _kv(m.diag(), skip=("exception_codes",))


def diag():
    """The counters the backend gets from the diag command."""
    st, link = _parts()
    if link is None:
        _print("no link")
        return
    _kv(report.diag(st, link, _now()), skip=("modbus",))


def outbox():
    """What waits to be sent to the broker."""
    _, link = _parts()
    c = link.client
    _print("outbox %d B  in flight %d  dropped %d  oversized %d" % (
        c.outbox_bytes(), c.inflight, c.dropped, c.oversized))


def sessions(n=5):
    """Running sessions, then the last n session messages not yet acknowledged."""
    st, _ = _parts()
    ses = st.sessions
    for k, s in enumerate(ses.cur):
        if s is not None:
            c = s.cost()
            _print("c%d %s %s (%s) %d Wh %d s charging%s%s" % (
                k + 1, s.sid, s.id_tag, s.auth, s.energy(), s.charging_s,
                "" if c is None else ", %d millis" % c["total_millis"],
                "" if s.closing is None else ", ending: " + s.closing[0]))
    j = ses.journal
    _print("outbox %d unacknowledged, seq %d, journal %d B" % (len(j.outbox), j.seq, j.size))
    if not j.outbox:
        return
    with j.reader() as f:
        for _, off in j.outbox[-n:]:
            p = j.payload(off, f)
            _print(p.decode() if p is not None else "(unreadable)")


def rfid():
    """The card reader and the last card presented."""
    st, _ = _parts()
    a = st.auth
    r = a.reader
    if r is None:
        _print("no RFID reader on this board")
    else:
        _print("reader %s" % ("FAILED (retrying)" if r.failed else "ok"))
    _print("mode %s, local list v%d (%d entries), cache %d, last card %s" % (
        st.cfg["auth_mode"], a.list.version, a.list.count, a.cache.count, a.last))


def selftest():
    """Start the commissioning self-test; its lines print as each check completes."""
    from evse.selftest import SelfTest

    st, _ = _parts()
    if st.job is not None:
        _print("a self-test is already running")
        return
    st.job = SelfTest(st, _print)
    _print("selftest: running (about 2 s)")
