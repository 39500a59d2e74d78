"""Helpers for scenario tests: the firmware on the unix port, driven via the control port."""

import os
import time


def find(events, what, value=None, after_us=None, connector=1):
    for e in events:
        if e["what"] != what or e.get("connector", 1) not in (connector, 0):
            continue
        if value is not None and e["value"] != value:
            continue
        if after_us is not None and e["t_us"] < after_us:
            continue
        return e
    return None


def reaction_ms(st, cause_what, cause_value, effect_what, effect_value, since=0, timeout=2.0):
    """ms from the first cause event (after index since) to the first effect event after it,
    both stamped by the simulated world."""
    end = time.monotonic() + timeout
    while True:
        evs = st.ctl.events(since)
        c = find(evs, cause_what, cause_value)
        e = find(evs, effect_what, effect_value, after_us=c["t_us"]) if c else None
        if e:
            return (e["t_us"] - c["t_us"]) / 1000.0
        if time.monotonic() > end:
            raise AssertionError(
                "no %s=%r after %s=%r in %r" % (effect_what, effect_value, cause_what,
                                                cause_value, evs)
            )
        time.sleep(0.02)


def charging(st, timeout=5.0):
    """Plug, request, and wait until the EV draws current."""
    st.op("plug")
    st.op("ev", request=True, respond_s=0.2)
    return st.wait_for(lambda s: s["contactor"] and s["ev_i"][0] > 0, timeout, what="charging")


def next_event(st):
    """The index the next world event will get: st.ctl.events(mark) sees only later ones."""
    return st.op("events", since=10**9)["next"]


ANY = object()


def wait_event(st, what, value=ANY, since=0, timeout=5.0, connector=1, after_us=None):
    """The first world event `what` (equal to value, None included, unless ANY) after index
    since (and at or after world time after_us), waiting for it."""
    end = time.monotonic() + timeout
    while True:
        evs = st.ctl.events(since)
        for e in evs:
            if e["what"] != what or e.get("connector", 1) not in (connector, 0):
                continue
            if value is not ANY and e["value"] != value:
                continue
            if after_us is not None and e["t_us"] < after_us:
                continue
            return e
        if time.monotonic() > end:
            raise AssertionError("no %s=%r after #%d in %r" % (what, value, since, evs[-10:]))
        time.sleep(0.02)


def wait_loops(st, n=100, timeout=5.0):
    """Positive evidence that the firmware kept running: wait until the world has answered
    n more pilot samples (one per control-loop iteration) on connector 1."""
    start = st.op("stats")["samples"]
    end = time.monotonic() + timeout
    while True:
        got = st.op("stats")["samples"] - start
        if got >= n:
            return got
        if time.monotonic() > end:
            raise AssertionError("the firmware ran only %d control loops in %.1f s" % (
                got, timeout))
        time.sleep(0.02)


def broker_log(broker):
    """What mosquitto has logged so far (connections, disconnects, TLS and auth errors)."""
    with open(os.path.join(broker.dir, "broker.log"), "rb") as f:
        return f.read().decode("utf-8", "replace")


def wait_log(broker, text, timeout=5.0):
    end = time.monotonic() + timeout
    while True:
        log = broker_log(broker)
        if text in log:
            return log
        if time.monotonic() > end:
            raise AssertionError("%r not in the broker log:\n%s" % (text, log[-2000:]))
        time.sleep(0.05)
