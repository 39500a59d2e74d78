"""Current-limit arbitration: every source is an entry; the lowest live one wins."""

# Fixed order: on a tie the earlier source is reported as the one that set the limit.
SOURCES = (
    "hardware",
    "cable",
    "config",
    "thermal",
    "failsafe",
    "backend",
    "schedule",
    "site",
    "solar",
    "phase",
    "budget",
    "session",
    "startup_delay",
    "meter",  # charging suspended while the meter is unreachable (meter_loss)
)


class Limits:
    """Per-scope limits in amperes; an entry may carry an expiry: the station's uptime
    second (evse.clock.Uptime) from which it no longer applies. `changes` counts changes
    of the backend and failsafe entries (what evse/orders.py keeps on flash)."""

    def __init__(self):
        self._by = {}  # source -> (amps, expires_s or None)
        self.changes = 0

    def set(self, source, amps, expires_s=None):
        e = self._by.get(source)
        if e is not None and e[0] == amps and e[1] == expires_s:
            return  # called every control loop: no new tuple when nothing changed
        if source not in SOURCES:
            raise ValueError(source)
        self._by[source] = (amps, expires_s)
        if source == "backend" or source == "failsafe":
            self.changes += 1

    def clear(self, source):
        if self._by.pop(source, None) is not None and (
            source == "backend" or source == "failsafe"
        ):
            self.changes += 1

    def get(self, source):
        e = self._by.get(source)
        return None if e is None else e[0]

    def expires(self, source):
        e = self._by.get(source)
        return None if e is None else e[1]

    def effective(self, now_s, other=None):
        """(amps, source) of the lowest live limit, also considering `other` (a Limits
        for a wider scope, e.g. the station). Expired entries are dropped here."""
        best, by = None, None
        for scope in (self, other):
            if scope is None:
                continue
            for src in SOURCES:
                e = scope._by.get(src)
                if e is None:
                    continue
                if e[1] is not None and now_s >= e[1]:
                    scope._by.pop(src)  # safe: we iterate SOURCES, not the dict
                    scope.changes += 1
                    continue
                if best is None or e[0] < best:
                    best, by = e[0], src
        return best, by
