"""The last log lines in RAM, for the service kit's s.log(): bounded, oldest dropped."""

from evse.compat import const

_LINES = const(40)


class LogRing:
    def __init__(self, size=_LINES, clock=None):
        self._lines = [None] * size
        self._next = 0
        self.count = 0
        self.clock = clock  # () -> uptime seconds, once the station exists

    def add(self, level, msg):
        t = self.clock() if self.clock else 0
        self._lines[self._next] = "%6d %-5s %s" % (t, level, msg)
        self._next = (self._next + 1) % len(self._lines)
        self.count += 1

    def last(self, n):
        size = len(self._lines)
        n = min(n, size, self.count)
        return [self._lines[(self._next - n + i) % size] for i in range(n)]
