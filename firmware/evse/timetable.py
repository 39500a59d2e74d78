"""The schedules in force: one per scope (station or connector), applied by the station's
own clock and time zone (config `tz`, a POSIX TZ string), with no backend needed.

evse.schedule and evse.localtime are imported on first use: most stations never get a
schedule, and their bytecode would take the heap for nothing."""


class Timetable:
    def __init__(self, st):
        self._st = st
        self.parsed = [()] * (1 + len(st.connectors))  # scope 0 = station
        self.changes = 0  # for evse/orders.py
        self._tz_text = None
        self._tz = None
        self._s = -1  # the uptime second last applied
        self.clock_missing = False  # waiting for the clock: ScheduleApplied when it comes
        self._warned = False  # ScheduleNotApplied said (once, until the clock is set)

    def set(self, scope, periods):
        """Validate whole, then replace (raises ValueError("code: detail"))."""
        from evse import schedule

        parsed = schedule.parse(periods)
        self.parsed[scope] = parsed
        self.changes += 1
        self._s = -1  # apply now, not at the next second
        return parsed

    def restore(self, scope, periods):
        from evse import schedule

        self.parsed[scope] = schedule.parse(periods)

    def stored(self):
        """{scope: periods} for flash."""
        out = {}
        for k, p in enumerate(self.parsed):
            if p:
                from evse import schedule

                out[str(k)] = schedule.to_json(p)
        return out

    def step(self):
        """Once a second: set or clear each scope's `schedule` limit."""
        st = self._st
        if st.uptime.s == self._s:
            return
        self._s = st.uptime.s
        scopes = [st.limits] + [c.limits for c in st.connectors]
        any_set = False
        for p in self.parsed:
            if p:
                any_set = True
        if not any_set:
            for lim in scopes:
                lim.clear("schedule")
            return
        tz = self._zone()
        unix = st.board.unix_time()
        if unix is None or tz is None:
            # No clock yet (before NTP after a power cut): no schedule, rather than the
            # wrong hour's. The backend's and the failsafe's limits still apply.
            self.clock_missing = unix is None
            for lim in scopes:
                lim.clear("schedule")
            if not self._warned:
                self._warned = True
                why = "the clock is not set" if unix is None else "tz is not valid"
                st.events.add("warn", "ScheduleNotApplied", 0, why)
            return
        if self.clock_missing:
            self.clock_missing = False
            self._warned = False
            st.events.add("info", "ScheduleApplied", 0, "the clock is set")
        from evse import localtime, schedule

        wd, minute = localtime.local(unix, tz)
        for k, p in enumerate(self.parsed):
            a = schedule.current(p, wd, minute) if p else None
            if a is None:
                scopes[k].clear("schedule")
            else:
                scopes[k].set("schedule", a)

    def _zone(self):
        text = self._st.cfg["tz"]
        if text != self._tz_text:
            from evse import localtime

            self._tz_text = text
            try:
                self._tz = localtime.parse(text)
            except ValueError:
                self._tz = None  # config_set checks it; a stored bad one lands here
        return self._tz
