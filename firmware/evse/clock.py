"""Uptime in whole seconds that never wraps, for anything kept longer than a few minutes."""

from evse.compat import ticks_add, ticks_diff


class Uptime:
    """Counts seconds from ticks, one loop at a time.

    ticks_ms wraps every 2^30 ms (12.4 days) on the ESP32 and ticks_diff is valid only
    within 2^29 ms, so a stamp kept for days (a limit's TTL, a queued event, a command id
    remembered) cannot be a ticks value. This counter is a small int for 34 years."""

    def __init__(self, now):
        self.s = 0
        self.boot_ms = now
        self._mark = now  # ticks of the last whole second counted

    def tick(self, now):
        while ticks_diff(now, self._mark) >= 1000:
            self._mark = ticks_add(self._mark, 1000)
            self.s += 1
