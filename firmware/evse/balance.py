"""Site balancing: keep the grid connection under its fuse (or inside the PV surplus) by
adjusting only this station's current, with no coordinator.

Every station sharing a connection reads the same grid signal (phase currents, import
positive) and runs the same rule, additive increase / multiplicative decrease (AIMD, as TCP
congestion control; Chiu and Jain showed it converges to fair shares):
- over the target on a phase this station loads: cut at once, by a fraction that grows with
  the overload and is the same for every station (so shares keep their ratio);
- under it: add a step proportional to this station's weight (site.priority), at most every
  5 s (the IEC 61851-1 spacing of duty increases);
so the ratio of any two stations' currents moves towards the ratio of their weights.
A station that ignores the scheme (a dumb charger) is just load; a station whose signal is
lost falls back to the failsafe (evse/failsafe.py); a wrong site.stations hint only changes
step sizes, never the direction."""

from evse.compat import const, ticks_diff
from evse.failsafe import random_s
from evse.pilot import MIN_CURRENT_A as _MIN_A
from evse.pilot import RESUME_A as _START_A  # a paused connector resumes only from here

_INCREASE_MS = const(5000)  # IEC 61851-1: duty increases at most every 5 s
# After a cut the EVs take up to a few seconds to follow (the standard allows 5 s): the
# overload seen meanwhile is the one already answered, so it may deepen the cut, never
# compound it.
_RESPOND_MS = const(3000)
_GAIN = 2.0  # cut fraction per A of overload, relative to the phase current
_CUT_MAX = 0.5
_CUT_MIN = 0.15  # a cut always does something: it is what evens the shares out
_STEP_MAX_A = 2.0  # the largest additive step per 5 s at weight 1
# The smallest: the stations must keep probing past the target now and then, or the cuts
# that even out their shares would never come (kept well inside site.margin_a).
_STEP_MIN_A = 0.2
_HINT_DEFAULT = 4  # site.stations unknown: assume a few share the headroom
# After a cut, for this long, steps stay small (TCP's congestion avoidance): the last probe
# found the limit, and a wrong hint must not overshoot it again by its full error.
_CALM_S = const(60)
_CALM_STEP_A = 0.5
_USE_MARGIN_A = 3.0  # the allowance runs at most this far ahead of what is drawn
_DRAW_MIN_A = 1.0  # a phase carries this station's load above this current
# A charging station's cut stops at 6 A when the overload is no more than one station's
# 6 A: below it would pause, and a newcomer paused by its first cut could never come back
# against the stations already charging (their cuts make the room). Once only: an
# overload that persists, or a larger one, pauses it.
_FLOOR_CUTS = const(1)
_MAX_A = 1000.0


def check_grid(obj, fuse_a):
    """A <base>/grid payload -> ([i1, i2, i3], ttl_s), or raises ValueError(detail)."""
    if not isinstance(obj, dict):
        raise ValueError("not an object")
    i = obj.get("i")
    if not isinstance(i, list) or len(i) != 3:
        raise ValueError("i must be a list of 3 phase currents")
    top = 10 * fuse_a if fuse_a > 0 else _MAX_A
    out = [0.0, 0.0, 0.0]
    for k in range(3):
        v = i[k]
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ValueError("i[%d] is not a number" % k)
        if not -top <= v <= top:  # also false for NaN
            raise ValueError("i[%d] out of range" % k)
        out[k] = float(v)
    ttl = obj.get("ttl_s", 10)
    if isinstance(ttl, bool) or not isinstance(ttl, int) or not 1 <= ttl <= 3600:
        raise ValueError("ttl_s must be an integer 1..3600")
    return out, ttl


class Balancer:
    """Turns grid samples into this station's `site` (grid mode) or `solar` limit."""

    def __init__(self, st):
        self._st = st
        self._cfg = st.cfg
        self.grid = None  # the last accepted sample [i1, i2, i3]
        self._fresh = False  # a sample not yet acted on
        self._until_s = None  # uptime second the last sample goes stale
        self.alloc = None  # this station's allowance per phase (A), None = not balancing
        self._inc_ms = None
        self._cut_ms = None
        self._cut_ref = 0.0  # the allowance before the cut under way
        self._low_s = None  # since when solar surplus is below 6 A
        self._calm_s = None  # uptime second of the last cut
        self._floor_cuts = 0  # cuts in a row that found this station at 6 A
        self._below_s = None  # uptime second the allowance fell below 6 A
        self._turn_s = 0  # ... and the random part of its wait before it takes its turn
        self.samples = 0
        self.rejected = 0
        self.own = [0.0, 0.0, 0.0]  # this station's current per grid phase (last sample)

    def enabled(self):
        cfg = self._cfg
        return cfg["site.fuse_a"] > 0 or cfg["site.mode"] != "grid"

    def feed(self, obj):
        """A <base>/grid message (decoded JSON). Bad ones are counted and ignored."""
        try:
            i, ttl = check_grid(obj, self._cfg["site.fuse_a"])
        except ValueError as e:
            self.rejected += 1
            return str(e)
        self.sample(i, ttl)
        return None

    def sample(self, i, ttl_s):
        self.grid = i
        self._fresh = True
        self._until_s = self._st.uptime.s + ttl_s
        self.samples += 1

    def _own(self):
        """This station's current per grid phase: its meters, else what it offers."""
        st = self._st
        own = self.own
        own[0] = own[1] = own[2] = 0.0
        pmap = self._cfg["site.phase_map"]
        phases = self._cfg["phases"]
        for k, c in enumerate(st.connectors):
            r = st.metering.reading(k)
            for j in range(3):
                if r is not None and not c.meter_failed:
                    a = r[1][j]
                elif c.contactor and j < phases:
                    a = c.offered_a
                else:
                    a = 0.0
                own[ord(pmap[j]) - 49] += a
        return own

    def step(self, now):
        """Every control loop. Sets the station's site/solar limit; reports staleness."""
        st = self._st
        lim = st.limits
        if not self.enabled():
            if self.alloc is not None:
                self.alloc = None
                lim.clear("site")
                lim.clear("solar")
                st.failsafe.grid(False)
            return
        cfg = self._cfg
        solar = cfg["site.mode"] != "grid"
        lim.clear("site" if solar else "solar")
        stale = self._until_s is None or st.uptime.s >= self._until_s
        st.failsafe.grid(stale)
        if self.alloc is None:
            # Boot, or balancing just switched on: start from the failsafe, then slow up.
            self.alloc = 0.0 if solar else min(cfg["failsafe_current_a"],
                                               st.board.max_current_a)
            self._low_s = None
        if stale:
            self.alloc = min(self.alloc, cfg["failsafe_current_a"])
            self._fresh = False
            self._inc_ms = now  # data back: the first increase waits its 5 s
            self._put(solar)
            return
        if not self._fresh:
            return
        self._fresh = False
        self._decide(now, solar)
        self._put(solar)

    def _put(self, solar):
        if solar:
            self._st.limits.set("solar", self.alloc)
        else:
            self._st.limits.set("site", self.alloc)

    def _decide(self, now, solar):
        cfg = self._cfg
        g = self.grid
        own = self._own()
        target = cfg["site.fuse_a"] - cfg["site.margin_a"] if cfg["site.fuse_a"] > 0 else None
        if solar:
            room = 0.0 if cfg["site.mode"] == "solar" else cfg["site.min_grid_a"]
            target = room if target is None else min(target, room)
        # The phases this station loads: where it draws, else all it could draw on.
        pmap = cfg["site.phase_map"]
        drawing = own[0] > _DRAW_MIN_A or own[1] > _DRAW_MIN_A or own[2] > _DRAW_MIN_A
        over = None  # the worst (phase current - target) over those phases
        peak = 1.0
        for j in range(3):
            p = ord(pmap[j]) - 49
            if j >= cfg["phases"] and not drawing:
                continue
            if drawing and own[p] <= _DRAW_MIN_A:
                continue
            x = g[p] if solar else abs(g[p])  # the fuse sees export as much as import
            if over is None or x - target > over:
                over = x - target
            if abs(g[p]) > peak:
                peak = abs(g[p])
        mine = max(own) if drawing else 0.0
        a = self.alloc
        if over > 0:
            # Multiplicative decrease, at the first sample over: the same fraction for
            # every station (it depends on the shared signal only).
            cut = _GAIN * over / peak
            cut = _CUT_MIN if cut < _CUT_MIN else (_CUT_MAX if cut > _CUT_MAX else cut)
            if not drawing:
                self._keep(a, False)
                return  # it loads nothing: its cut would make no room
            base = min(a, mine)
            if self._cut_ms is not None and ticks_diff(now, self._cut_ms) < _RESPOND_MS:
                base = self._cut_ref  # the same overload: deepen the cut, don't compound
            else:
                self._cut_ref = base
                self._cut_ms = now
                if drawing and a <= _MIN_A:
                    self._floor_cuts += 1
            new = base * (1.0 - cut)
            if (drawing and not solar and new < _MIN_A <= a and over <= _MIN_A
                    and self._floor_cuts <= _FLOOR_CUTS):
                new = _MIN_A
            if new < a:
                a = new
            self._inc_ms = now  # and no increase straight after
            self._calm_s = self._st.uptime.s
        else:
            self._cut_ms = None
            self._floor_cuts = 0
            if self._inc_ms is None or ticks_diff(now, self._inc_ms) >= _INCREASE_MS:
                # Additive increase by weight, smaller when the headroom is small or
                # shared by many (the hint only scales the step).
                per = -over / (cfg["site.stations"] or _HINT_DEFAULT)
                per = _STEP_MIN_A if per < _STEP_MIN_A else (
                    _STEP_MAX_A if per > _STEP_MAX_A else per)
                calm = self._calm_s
                if calm is not None and self._st.uptime.s - calm < _CALM_S and per > _CALM_STEP_A:
                    per = _CALM_STEP_A
                step = cfg["site.priority"] * per
                if a < _MIN_A:
                    # Paused: back at 6 A where it fits, or after min_pause_s anyway (the
                    # others then make room, as for any newcomer): no station starves.
                    # Never all at once: each paused station draws its own random wait.
                    b = self._below_s
                    if b is None:
                        go = -over >= _START_A  # never paused under load (solar at dawn)
                    else:
                        waited = self._st.uptime.s - b
                        p = self._cfg["min_pause_s"]
                        r = self._turn_s
                        go = waited >= p + r or (-over >= _START_A and waited >= p + r // 4)
                    if go:
                        a = _START_A
                elif drawing:
                    # No allowance the EV does not use (a full step beyond it, so the
                    # weights still set the steps' ratio).
                    cap = mine + (step if step > _USE_MARGIN_A else _USE_MARGIN_A)
                    if a < cap:
                        a = min(a + step, cap)
                else:
                    a = _START_A  # nothing drawn: whoever comes starts low and climbs
                self._inc_ms = now
        if a > _MAX_A:
            a = _MAX_A
        if a < 0.0:
            a = 0.0
        if solar:
            a = self._solar_hold(a)
        self._keep(a, drawing)

    def _keep(self, a, drawing):
        if a < _MIN_A:
            if self._below_s is None and drawing:  # a pause under load
                self._below_s = self._st.uptime.s
                # Stations paused together must not all come back together: each waits
                # min_pause_s plus a random part of it (a quarter of that with room).
                self._turn_s = random_s(self._cfg["min_pause_s"])
        else:
            self._below_s = None
        self.alloc = int(a * 10) / 10

    def _solar_hold(self, a):
        """Below 6 A of surplus charging goes on at 6 A for site.solar_stop_s, then stops
        (a passing cloud must not cycle the contactor)."""
        if a >= _MIN_A:
            self._low_s = None
            return a
        now_s = self._st.uptime.s
        if self._low_s is None:
            self._low_s = now_s
        if now_s - self._low_s < self._cfg["site.solar_stop_s"] and self.alloc >= _MIN_A:
            return _MIN_A
        return a
