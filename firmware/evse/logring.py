"""The log for the service kit's s.log(): the last lines in RAM, and a rotating file on
flash that survives a reset.

Writing flash can stall for tens of ms (a sector erase), so lines wait in RAM and go to the
file only while every contactor is open and at most every 10 s: never on the safety path
of a charging connector. The file rotates at 16 KB (log.txt -> log.1.txt)."""

from evse.compat import age_cap, const, ticks_diff

_LINES = const(40)
_PENDING_MAX = const(2048)  # bytes waiting for the file; beyond that the oldest are dropped
_FLUSH_EVERY_MS = const(10000)
FILE_MAX = const(16384)


class LogRing:
    def __init__(self, size=_LINES, clock=None, path=None):
        self._lines = [None] * size
        self._next = 0
        self.count = 0
        self.clock = clock  # () -> uptime seconds, once the station exists
        self.path = path  # the log file on flash, or None
        self._pending = []
        self._pending_bytes = 0
        self.dropped = 0  # lines that never reached the file (RAM budget)
        self.file_errors = 0
        self._flushed_ms = None

    def add(self, level, msg):
        t = self.clock() if self.clock else 0
        line = "%6d %-5s %s" % (t, level, msg)
        self._lines[self._next] = line
        self._next = (self._next + 1) % len(self._lines)
        self.count += 1
        if self.path:
            self._pending.append(line)
            self._pending_bytes += len(line) + 1
            while self._pending_bytes > _PENDING_MAX:
                self._pending_bytes -= len(self._pending.pop(0)) + 1
                self.dropped += 1

    def last(self, n):
        size = len(self._lines)
        n = min(n, size, self.count)
        return [self._lines[(self._next - n + i) % size] for i in range(n)]

    def flush(self, now, busy):
        """Append the waiting lines to the file, unless `busy` (a contactor is closed) or
        the last write was under 10 s ago. Called from the control loop; never raises."""
        if not self._pending or busy:
            return
        self._flushed_ms = age_cap(now, self._flushed_ms, _FLUSH_EVERY_MS)  # ticks wrap
        if self._flushed_ms is not None and ticks_diff(now, self._flushed_ms) < _FLUSH_EVERY_MS:
            return
        self._flushed_ms = now
        try:
            import os

            try:
                if os.stat(self.path)[6] > FILE_MAX:
                    old = self.path[:-4] + ".1.txt"
                    try:
                        os.remove(old)  # FAT will not rename onto an existing file
                    except OSError:
                        pass
                    os.rename(self.path, old)
            except OSError:
                pass  # no file yet
            with open(self.path, "a") as f:
                f.write("\n".join(self._pending) + "\n")
            self._pending = []
            self._pending_bytes = 0
        except OSError:
            self.file_errors += 1  # a full or broken filesystem must not stop charging

    def tail(self, n):
        """The last n lines of the file (read at the console, not in the loop)."""
        out = []
        for p in (self.path[:-4] + ".1.txt", self.path) if self.path else ():
            try:
                with open(p) as f:
                    out += f.read().split("\n")
            except OSError:
                pass
        out = [x for x in out if x]
        return out[-n:] if n else []
