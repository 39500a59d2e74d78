"""The backend's standing orders on flash: limits (with their expiry), the failsafe and
which connectors are disabled. A station that reboots in a grid emergency comes back with
them, not at full power."""

FILE = "orders.json"


class Orders:
    def __init__(self, store, events, clock, uptime):
        self._store = store
        self._events = events
        self._clock = clock  # board.unix_time: None while unset
        self._uptime = uptime
        self._sig = None
        self.writes = 0
        self.failed = False

    def _signature(self, st):
        # Every loop: no lists built here.
        s = st.limits.changes
        for c in st.connectors:
            s = s * 7 + c.limits.changes
        for c in st.connectors:
            s = s * 2 + (0 if c.enabled else 1)
        return s * 1000 + st.timetable.changes % 1000

    def poll(self, st):
        """Every loop: write when a backend or failsafe entry or an enable state changed."""
        sig = self._signature(st)
        if sig == self._sig:
            return
        self._sig = sig
        self.save(st)

    def save(self, st):
        unix = self._clock()
        up = self._uptime.s
        limits, failsafe = [], []
        for scope, lim in enumerate([st.limits] + [c.limits for c in st.connectors]):
            b = lim.get("backend")
            if b is not None:
                exp = lim.expires("backend")
                # Wall-clock expiry, the only kind that means anything after a reboot;
                # unknown without a clock, and then a reboot treats the limit as expired.
                when = None if exp is None or unix is None else unix + exp - up
                limits.append([scope, b, when, exp is not None])
            f = lim.get("failsafe")
            if f is not None and st.failsafe.active:  # the link's; grid data comes anew
                failsafe.append([scope, f])
        off = [c.id for c in st.connectors if not c.enabled]
        try:
            self._store.write_json(FILE, {"limits": limits, "failsafe": failsafe,
                                          "disabled": off,
                                          "schedules": st.timetable.stored()})
            self.writes += 1
            self.failed = False
        except OSError as e:
            if not self.failed:
                self.failed = True
                self._events.add("error", "StorageFailure", 0, "orders: %r" % (e,))

    def load(self, st, failsafe_a):
        """At boot, before the first control loop."""
        try:
            d = self._store.read_json(FILE)
            if d is None:
                return
            limits, fs, off = d["limits"], d["failsafe"], d["disabled"]
            scopes = [st.limits] + [c.limits for c in st.connectors]
            unix = self._clock()
            up = self._uptime.s
            n = 0
            for scope, amps, when, ttl in limits:
                if not 0 <= scope < len(scopes):
                    continue
                lim = scopes[scope]
                if not ttl:
                    lim.set("backend", amps)
                elif when is not None and unix is not None:
                    if when > unix:
                        lim.set("backend", amps, up + when - unix)
                    else:
                        continue  # lapsed while the station was off
                else:
                    # Could have lapsed, or not: no clock to tell. The lower of it and
                    # the failsafe current holds until the backend speaks again.
                    lim.set("failsafe", min(amps, failsafe_a))
                n += 1
            for scope, amps in fs:
                if 0 <= scope < len(scopes):
                    v = scopes[scope].get("failsafe")
                    scopes[scope].set("failsafe", amps if v is None else min(v, amps))
                    n += 1
            for scope, periods in d.get("schedules", {}).items():
                scope = int(scope)
                if 0 <= scope < len(scopes):
                    st.timetable.restore(scope, periods)
                    n += 1
            for cid in off:
                if 1 <= cid <= len(st.connectors):
                    st.connectors[cid - 1].set_enabled(False)
                    n += 1
        except (ValueError, TypeError, KeyError, OSError) as e:
            # Unreadable: the safe reading of "unknown orders" is the failsafe everywhere.
            st.limits.set("failsafe", failsafe_a)
            self._events.add("error", "OrdersCorrupt", 0, "%r: failsafe %.1f A" % (e, failsafe_a))
            return
        if n:
            self._events.add("info", "OrdersRestored", 0, "%d limits, %d failsafe, %d disabled"
                             % (len(limits), len(fs), len(off)))
        self._sig = self._signature(st)
