"""The failsafe: when the backend link stays down, its limits give way to a safe one."""

from evse.compat import age_cap, ticks_diff


class Failsafe:
    """The link reports up/down; after failsafe_after_s down, every scope's backend limit
    becomes the failsafe limit until the backend sets (or clears) a limit again."""

    def __init__(self, cfg, events, scopes, now):
        self._cfg = cfg
        self._events = events
        self._scopes = scopes  # the Limits of the station and of each connector
        self._down_ms = now  # no link yet counts as down from boot
        self.active = False

    def link_up(self):
        self._down_ms = None

    def link_down(self, now):
        if self._down_ms is None:
            self._down_ms = now

    def step(self, now):
        if self._down_ms is None:
            return
        after = self._cfg["failsafe_after_s"] * 1000
        # Down longer than that: the stamp stops ageing there (ticks wrap after days).
        self._down_ms = age_cap(now, self._down_ms, after)
        if ticks_diff(now, self._down_ms) < after:
            return
        amps = self._cfg["failsafe_current_a"]
        for lim in self._scopes:
            if lim.get("backend") is not None:
                lim.clear("backend")
                lim.set("failsafe", amps)
                self.active = True
                self._events.add("warn", "Failsafe", 0, "link down: limit %.1f A" % amps)
