"""Helpers for scenario tests: the firmware on the unix port, driven via the control port."""

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
