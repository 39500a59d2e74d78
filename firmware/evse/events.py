"""Bounded queue of station events (faults, config problems) waiting to be published."""

from evse.compat import const

_DEPTH = const(16)


class Events:
    """Drops the oldest when full and counts the drops: memory stays bounded offline."""

    def __init__(self, log=None, depth=_DEPTH):
        self._q = []
        self._depth = depth
        self.dropped = 0
        self.total = 0
        self._log = log

    def add(self, level, code, connector, detail):
        if len(self._q) >= self._depth:
            self._q.pop(0)
            self.dropped += 1
        self._q.append((level, code, connector, detail))
        self.total += 1
        if self._log:
            self._log(level, "%s c%d %s" % (code, connector, detail))

    def pop(self):
        return self._q.pop(0) if self._q else None
