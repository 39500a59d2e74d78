"""The failsafe: when the backend (or the site's grid data) is gone, the current falls back
to a safe limit, and a lost link never raises it."""

from evse.compat import age_cap, ticks_diff


def random_s(top):
    """A uniformly random whole number of seconds in 0..top (the hardware RNG on a board)."""
    if top <= 0:
        return 0
    try:
        from os import urandom

        r = int.from_bytes(urandom(4), "little")
    except (ImportError, NotImplementedError):  # pragma: no cover - every port has one
        from random import getrandbits

        r = getrandbits(32)
    return r % (top + 1)


class Failsafe:
    """Two causes, one `failsafe` entry per scope.

    - The link: down for failsafe_after_s while a broker is configured. Each scope's
      failsafe becomes min(its backend limit, failsafe_current_a) (the station scope gets
      failsafe_current_a without one); the backend entries stay underneath, so nothing can
      rise. failsafe_mode "replace" drops the backend entries instead (EEBus LPC style).
      It ends, in every scope, when the backend next sets or clears a limit (release()).
    - The grid data (evse/balance.py): stale while site balancing is on. The station scope
      gets failsafe_current_a (the site entry, also kept, is the other bound) until fresh
      data comes back.
    When either ends, a random start delay (random_delay_s) holds the current where it was
    for a while, so a fleet does not step up in unison."""

    def __init__(self, cfg, events, station, conns, uptime, now):
        self._cfg = cfg
        self._events = events
        self._station = station  # the station's Limits
        self._conns = conns  # each connector's Limits
        self._uptime = uptime
        self._down_ms = now  # no link yet counts as down from boot
        self.active = False  # the link cause holds
        self.grid_stale = False  # the grid cause holds
        self.engaged = 0  # how often either cause engaged (diag)
        self.armed = False  # a link runs (evse/link.py): without one there is nothing to lose

    # -- the link -------------------------------------------------------------------------
    def link_up(self):
        self._down_ms = None

    def link_down(self, now):
        if self._down_ms is None:
            self._down_ms = now

    def restored(self):
        """At boot: failsafe entries came back from flash (evse/orders.py)."""
        for lim in [self._station] + self._conns:
            if lim.get("failsafe") is not None:
                self.active = True

    def step(self, now):
        if (self._down_ms is None or self.active or not self.armed
                or not self._cfg["mqtt.host"]):
            return  # no broker configured: nobody to lose, nothing to fail over from
        after = self._cfg["failsafe_after_s"] * 1000
        # Down longer than that: the stamp stops ageing there (ticks wrap after days).
        self._down_ms = age_cap(now, self._down_ms, after)
        if ticks_diff(now, self._down_ms) < after:
            return
        fs = self._cfg["failsafe_current_a"]
        replace = self._cfg["failsafe_mode"] == "replace"
        st_val = self._engage(self._station, fs, replace, True)
        for lim in self._conns:
            self._engage(lim, fs, replace, False)
        self.active = True
        self.engaged += 1
        self._events.add("warn", "Failsafe", 0, "link down: limit %.1f A" % st_val)

    def _engage(self, lim, fs, replace, always):
        b = lim.get("backend")
        if b is None and not always:
            return None  # the station scope's entry covers this connector
        amps = fs if (b is None or replace) else min(b, fs)
        if replace:
            lim.clear("backend")
        lim.set("failsafe", amps)
        return amps

    def release(self):
        """The backend set or cleared a limit: the link cause ends in every scope."""
        if not self.active:
            return
        self.active = False
        held = self._station.effective(self._uptime.s)[0]
        for lim in [self._station] + self._conns:
            lim.clear("failsafe")
        if self.grid_stale:
            self._station.set("failsafe", self._cfg["failsafe_current_a"])
        self._delay(held, "failsafe released")

    # -- the grid -------------------------------------------------------------------------
    def grid(self, stale):
        """The balancer's verdict on its grid data, every loop while site balancing is on."""
        if stale == self.grid_stale:
            return
        self.grid_stale = stale
        fs = self._cfg["failsafe_current_a"]
        if stale:
            self.engaged += 1
            v = self._station.get("failsafe")
            self._station.set("failsafe", fs if v is None else min(v, fs))
            self._events.add("warn", "Failsafe", 0, "grid data stale: limit %.1f A" % fs)
        else:
            held = self._station.effective(self._uptime.s)[0]
            if not self.active:
                self._station.clear("failsafe")
            self._delay(held, "grid data back")

    def _delay(self, held, why):
        r = random_s(self._cfg["random_delay_s"])
        if r and held is not None:
            self._station.set("startup_delay", held, self._uptime.s + r)
            self._events.add("info", "StartupDelay", 0, "%s: held for %d s" % (why, r))
