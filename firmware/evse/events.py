"""Bounded queue of station events (faults, config problems) waiting to be published."""

from evse.compat import const

_DEPTH = const(16)


class Events:
    """Drops the oldest when full and counts the drops: memory stays bounded offline.

    Each event is stamped when it happens: Unix seconds from `clock()` when the clock is
    set, plus the station's uptime seconds so that one taken before the clock was set can
    still be dated once it is (uptime, not ticks: an event may wait offline for days).
    A repeat of the newest queued event (same level, code and connector) is coalesced into
    it with a count instead of taking a slot: a burst of rejected commands costs one entry,
    not the queue."""

    def __init__(self, log=None, depth=_DEPTH, clock=None, uptime=None):
        self._q = []  # [level, code, connector, detail, unix_s or None, uptime_s, count]
        self._uptime = uptime
        self._depth = depth
        self._clock = clock
        self.dropped = 0
        self.coalesced = 0
        self.total = 0
        self._log = log

    def add(self, level, code, connector, detail):
        self.total += 1
        if self._log:
            self._log(level, "%s c%d %s" % (code, connector, detail))
        q = self._q
        if q:
            last = q[-1]
            if last[1] == code and last[2] == connector and last[0] == level:
                last[3] = detail  # the newest detail; ts stays the first occurrence
                last[6] += 1
                self.coalesced += 1
                return
        if len(q) >= self._depth:
            q.pop(0)
            self.dropped += 1
        q.append([level, code, connector, detail,
                  self._clock() if self._clock else None,
                  self._uptime.s if self._uptime else 0, 1])

    def peek(self):
        return self._q[0] if self._q else None

    def pop(self):
        return self._q.pop(0) if self._q else None

    def queued(self):
        return len(self._q)


def stamp(ev, unix_now, uptime_s):
    """The event's Unix time: as stamped, or dated back from now when the clock was set
    after it happened; None while the clock is still unset."""
    if ev[4] is not None:
        return ev[4]
    if unix_now is None:
        return None
    return unix_now - (uptime_s - ev[5])
