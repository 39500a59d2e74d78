"""Metrics of a multi-station site run (tools/site.py) from its JSON-lines recording: overload
time against the fuse, fairness and convergence against weighted max-min fair shares,
contactor cycles, the EV energy that came from PV surplus. Pure functions of the records, so
the tests feed them small hand-made recordings.

Recording lines (`type`):
- `meta`: `preset`, `mode` (grid|solar|smart), `fuse_a`, `margin_a`, `min_grid_a`, `units`
  (one per connector: `id`, `c`, `phase_map`, `weight`, `max_current_a`).
- `sample`: `t` (s), `grid`, `base`, `pv`, `dumb`, `ev` (each [L1, L2, L3] on the grid's
  phases; `ev` is every EV's measured current mapped to grid phases), `units`: per connector
  `id`, `c`, `ev_i` (on the connector's own phases), `offered_a`, `cp`, `plugged`, `max_a`
  and `phases` (the EV's), `link` and `feed` (false while cut), `limit_a`, `limit_by`,
  `state` (from the station's last MQTT status).
- `action`: `t`, `do` (plug, unplug, ev, base, dumb, cut_link, restore_link, cut_feed,
  restore_feed), `id` (station, where it applies) and its arguments.
- `contactor`: `t`, `id`, `c`, `on` (from the control port's events log).
- `end`: `t`, and the run's figures (cpu, ...).
"""

import json

MIN_A = 6.0  # IEC 61851-1: the smallest current a PWM may offer; below it a station pauses.
VOLTS = 230.0  # phase voltage for energies (the sim meter's nominal voltage)


def load(path):
    with open(path) as f:
        return [json.loads(ln) for ln in f if ln.strip()]


def split(records):
    meta = next((r for r in records if r["type"] == "meta"), {})
    samples = [r for r in records if r["type"] == "sample"]
    actions = [r for r in records if r["type"] == "action"]
    return meta, samples, actions


def _held(samples):
    """(sample, dt) with each sample held until the next one; the last one lasts 0."""
    out = []
    for k, s in enumerate(samples):
        dt = samples[k + 1]["t"] - s["t"] if k + 1 < len(samples) else 0.0
        out.append((s, dt))
    return out


def peak_frac(sample, fuse_a):
    """The most loaded grid phase as a fraction of the fuse (import or export alike: a fuse
    does not care which way the current flows)."""
    return max(abs(x) for x in sample["grid"]) / fuse_a


# -- overload -------------------------------------------------------------------------------


def over_s(samples, fuse_a, frac=1.0, t0=float("-inf"), t1=float("inf")):
    """Seconds in [t0, t1) with some grid phase above frac x fuse (samples held)."""
    total = 0.0
    for s, dt in _held(samples):
        if s["t"] >= t1 or s["t"] + dt <= t0:
            continue
        if peak_frac(s, fuse_a) > frac:
            total += min(s["t"] + dt, t1) - max(s["t"], t0)
    return total


def action_groups(actions):
    """[(t, [actions at t], t_next)]: actions at one instant form one group; t_next is the
    next group's time (inf for the last)."""
    groups = []
    for a in actions:
        if groups and groups[-1][1][0]["t"] == a["t"]:
            groups[-1][1].append(a)
        else:
            groups.append((a["t"], [a]))
    return [(t, g, groups[k + 1][0] if k + 1 < len(groups) else float("inf"))
            for k, (t, g) in enumerate(groups)]


def _label(group):
    return "+".join("%s%s" % (a["do"], " " + str(a["id"]) if a.get("id") else "")
                    for a in group)


def over_after_actions(records, frac=1.0):
    """Per action (actions at one instant together): seconds above frac x fuse from it
    until the next action, or the end."""
    meta, samples, actions = split(records)
    return [{"t": t, "what": _label(g),
             "over_s": round(over_s(samples, meta["fuse_a"], frac, t, t1), 3)}
            for t, g, t1 in action_groups(actions)]


def longest_over(samples, fuse_a, frac=1.10):
    """(seconds, start t) of the longest continuous stretch above frac x fuse."""
    best, best_t, run_t = 0.0, None, None
    for s, dt in _held(samples):
        if peak_frac(s, fuse_a) > frac:
            if run_t is None:
                run_t = s["t"]
            if s["t"] + dt - run_t > best:
                best, best_t = s["t"] + dt - run_t, run_t
        else:
            run_t = None
    return best, best_t


# -- fair shares ----------------------------------------------------------------------------


def unit_phases(unit, phase_map):
    """The grid phases (0-based) an EV at this connector draws on."""
    n = 1 if unit.get("phases", 3) == 1 else 3
    return [int(phase_map[k]) - 1 for k in range(n)]


def unit_current(unit):
    """The EV's current per phase (its largest phase)."""
    return max(unit["ev_i"])


def water_fill(cap, loads):
    """Weighted max-min fair currents. cap: [A per grid phase]; loads: [(weight, demand_a,
    [grid phases])]. Each load draws the same current x on each of its phases; raise
    x = weight * level for all together, freezing a load at its demand or when one of its
    phases is full. Returns [x per load]."""
    n = len(loads)
    x = [0.0] * n
    frozen = [False] * n
    used = [0.0, 0.0, 0.0]
    for k, (w, d, ph) in enumerate(loads):
        if w <= 0 or d <= 0 or not ph:
            frozen[k] = True
    level = 0.0
    for _ in range(n + 3):
        live = [k for k in range(n) if not frozen[k]]
        if not live:
            break
        # The next level at which something freezes: a demand met or a phase full.
        nxt = min(loads[k][1] / loads[k][0] for k in live)
        full = []
        for p in range(3):
            wsum = sum(loads[k][0] for k in live if p in loads[k][2])
            if wsum > 0:
                lp = level + (cap[p] - used[p]) / wsum
                if lp <= nxt + 1e-9:
                    if lp < nxt - 1e-9:
                        full = []
                    nxt = min(nxt, lp)
                    full.append(p)
        nxt = max(nxt, level)
        for k in live:
            x[k] = loads[k][0] * nxt
        used = [0.0, 0.0, 0.0]
        for k in range(n):
            for p in loads[k][2]:
                used[p] += x[k]
        for k in live:
            if x[k] >= loads[k][1] - 1e-9 or any(p in full for p in loads[k][2]):
                frozen[k] = True
                x[k] = min(x[k], loads[k][1])
        level = nxt
    return [max(0.0, v) for v in x]


def capacity(sample, meta, fixed):
    """A per grid phase the controlled EVs may share: the fuse less margin less everything
    else (base, dumb, PV as measured, and `fixed`, the EVs nobody controls now). Solar
    mode: the export only (no import on the phase); smart: the export plus min_grid_a of
    import; both never above the fuse (the firmware's targets, evse/balance.py)."""
    mode = meta.get("mode", "grid")
    cap = []
    for p in range(3):
        other = sample["grid"][p] - sample["ev"][p] + fixed[p]
        c = meta["fuse_a"] - meta.get("margin_a", 1.0) - other
        if mode in ("solar", "smart"):
            room = 0.0 if mode == "solar" else meta.get("min_grid_a", 0.0)
            c = min(c, max(0.0, room - other))
        cap.append(c)
    return cap


def shares(sample, meta):
    """{(id, c): share A} for the connectors whose EV wants current and whose station hears
    the grid; and whether the shares are scarce (some share below 6 A, so the stations
    must take turns and no single share is the right answer)."""
    units = {(u["id"], u["c"]): u for u in meta["units"]}
    fixed = [0.0, 0.0, 0.0]
    ctl = []
    for su in sample["units"]:
        mu = units[(su["id"], su["c"])]
        ph = unit_phases(su, mu["phase_map"])
        wants = su.get("plugged") and su.get("cp") in ("C", "D")
        if not (su.get("link", True) and su.get("feed", True)):
            for p in ph:  # its draw is load the others must live with
                fixed[p] += unit_current(su)
            continue
        if wants:
            demand = min(su.get("max_a", 32.0), mu.get("max_current_a", 32.0))
            ctl.append(((su["id"], su["c"]), (mu.get("weight", 1.0), demand, ph)))
    cap = capacity(sample, meta, fixed)
    x = water_fill(cap, [ld for _, ld in ctl])
    out = {key: v for (key, _), v in zip(ctl, x)}
    scarce = any(v < MIN_A for v in out.values())
    constrained = all(v < ld[1] - 1e-6 for (_, ld), v in zip(ctl, x))
    return out, scarce, constrained


def _settled(t, actions, settle_s):
    return not any(a["t"] <= t < a["t"] + settle_s for a in actions)


def fairness(records, settle_s=20.0):
    """Steady-state deviation of each connector's current from its weighted share, over the
    samples at least settle_s after any action, with two or more EVs wanting more than
    their share (every one constrained) and no share below 6 A. Per connector: the mean of
    (current - share), its mean absolute value and its largest absolute value."""
    meta, samples, actions = split(records)
    acc = {}
    n = 0
    for s in samples:
        if not _settled(s["t"], actions, settle_s):
            continue
        sh, scarce, constrained = shares(s, meta)
        if scarce or not constrained or len(sh) < 2:
            continue
        n += 1
        cur = {(u["id"], u["c"]): unit_current(u) for u in s["units"]}
        for key, v in sh.items():
            d = cur[key] - v
            a = acc.setdefault(key, [0.0, 0.0, 0.0, 0])
            a[0] += d
            a[1] += abs(d)
            a[2] = max(a[2], abs(d))
            a[3] += 1
    order = [(u["id"], u["c"]) for u in meta["units"]]
    per = {"%s/%d" % k: {"mean_dev_a": round(acc[k][0] / acc[k][3], 2),
                         "mean_abs_dev_a": round(acc[k][1] / acc[k][3], 2),
                         "max_abs_dev_a": round(acc[k][2], 2), "samples": acc[k][3]}
           for k in order if k in acc}
    worst = max((v["mean_abs_dev_a"] for v in per.values()), default=None)
    return {"samples": n, "units": per, "worst_mean_abs_dev_a": worst}


def starved(records, grace_s=30.0, room_a=MIN_A + 1.0, idle_a=1.0):
    """Per connector: stretches in which its EV wanted current and drew under idle_a while
    its fair share was at least room_a (6 A plus the 1 A a paused station needs to resume):
    an EV left waiting with room for it. A pause may last min_pause_s and a restart a few
    5 s steps, so only the part of a stretch beyond grace_s counts. A sample with shares
    below 6 A (taking turns is then right) ends a stretch. Lists only connectors that were
    starved: {key: {"over_grace_s", "longest_s"}}."""
    meta, samples, _ = split(records)
    runs = {}  # key -> start of the current stretch
    out = {}

    def close(key, t_end):
        t0 = runs.pop(key, None)
        if t0 is None:
            return
        length = t_end - t0
        if length > grace_s:
            o = out.setdefault("%s/%d" % key, {"over_grace_s": 0.0, "longest_s": 0.0})
            o["over_grace_s"] = round(o["over_grace_s"] + length - grace_s, 2)
            o["longest_s"] = round(max(o["longest_s"], length), 2)

    for s in samples:
        sh, scarce, _ = shares(s, meta)
        cur = {(u["id"], u["c"]): unit_current(u) for u in s["units"]}
        for key in cur:
            if not scarce and sh.get(key, 0.0) >= room_a and cur[key] < idle_a:
                runs.setdefault(key, s["t"])
            else:
                close(key, s["t"])
    if samples:
        for key in list(runs):
            close(key, samples[-1]["t"])
    return out


def _is_arrival(a):
    return (a["do"] == "plug" and a.get("request", True)) or (
        a["do"] == "ev" and a.get("request") is True)


def convergence(records, band_a=1.0, hold_s=5.0):
    """Per EV arrival: seconds until every wanting connector is within band_a of its share
    and stays so for hold_s, before the next action. None: not converged in that window
    (the reason given)."""
    meta, samples, actions = split(records)
    out = []
    for t0, group, t1 in action_groups(actions):
        if not any(_is_arrival(a) for a in group):
            continue
        window = [s for s in samples if t0 <= s["t"] < t1]
        start = None
        res = None
        why = "never within %.1f A" % band_a
        for s in window:
            sh, scarce, _ = shares(s, meta)
            if scarce:
                why = "shares below 6 A"
            cur = {(u["id"], u["c"]): unit_current(u) for u in s["units"]}
            ok = bool(sh) and not scarce and all(abs(cur[key] - v) <= band_a
                                                 for key, v in sh.items())
            if ok:
                if start is None:
                    start = s["t"]
                if s["t"] - start >= hold_s:
                    res = round(start - t0, 2)
                    break
            else:
                start = None
        if res is None and start is not None:
            why = "within band only for the last %.1f s" % (window[-1]["t"] - start)
        out.append({"t": t0, "what": _label(group), "converge_s": res,
                    "why": None if res is not None else why})
    return out


# -- contactors, PV ---------------------------------------------------------------------------


def contactor_cycles(records):
    """Per connector: contactor closings in the run and per hour of the run."""
    meta, samples, _ = split(records)
    span_s = samples[-1]["t"] - samples[0]["t"] if len(samples) > 1 else 0.0
    out = {}
    for u in meta["units"]:
        out["%s/%d" % (u["id"], u["c"])] = {"closes": 0, "per_h": 0.0}
    for r in records:
        if r["type"] == "contactor" and r["on"]:
            key = "%s/%d" % (r["id"], r["c"])
            out.setdefault(key, {"closes": 0, "per_h": 0.0})["closes"] += 1
    for v in out.values():
        v["per_h"] = round(v["closes"] * 3600.0 / span_s, 1) if span_s > 0 else None
    return out


def pv_share(records, volts=VOLTS):
    """EV energy and the part of it PV surplus covered: at each instant the site's surplus
    (PV production less base and dumb loads, all phases together, as a balancing meter
    nets them) goes to the EVs first."""
    _, samples, _ = split(records)
    ev = pv = surplus = from_pv = 0.0
    for s, dt in _held(samples):
        ev_w = sum(s["ev"]) * volts
        pv_w = -sum(s["pv"]) * volts
        load_w = (sum(s["base"]) + sum(s["dumb"])) * volts
        sur_w = max(0.0, pv_w - load_w)
        ev += ev_w * dt
        pv += max(0.0, pv_w) * dt
        surplus += sur_w * dt
        from_pv += min(max(0.0, ev_w), sur_w) * dt
    wh = 1 / 3600.0
    return {"ev_wh": round(ev * wh, 1), "pv_wh": round(pv * wh, 1),
            "surplus_wh": round(surplus * wh, 1), "ev_from_pv_wh": round(from_pv * wh, 1),
            "ev_pv_share": round(from_pv / ev, 3) if ev > 0 else None,
            "surplus_used": round(from_pv / surplus, 3) if surplus > 0 else None}


# -- everything -------------------------------------------------------------------------------


def compute(records):
    meta, samples, actions = split(records)
    if not samples:
        return {"samples": 0}
    fuse = meta["fuse_a"]
    longest, longest_t = longest_over(samples, fuse, 1.10)
    out = {
        "samples": len(samples),
        "span_s": round(samples[-1]["t"] - samples[0]["t"], 1),
        "peak_pct": round(100 * max(peak_frac(s, fuse) for s in samples), 1),
        "over_100_s": round(over_s(samples, fuse, 1.0), 2),
        "over_110_s": round(over_s(samples, fuse, 1.10), 2),
        "longest_over_110_s": round(longest, 2),
        "longest_over_110_at": longest_t,
        "over_after_action": over_after_actions(records, 1.0),
        "fairness": fairness(records),
        "convergence": convergence(records),
        "starved": starved(records),
        "contactor_cycles": contactor_cycles(records),
    }
    if any(any(x < 0 for x in s["pv"]) for s in samples):
        out["pv"] = pv_share(records)
    return out


def summary_lines(m, meta=None):
    """Human-readable figures (also the plot's title)."""
    if not m.get("samples"):
        return ["no samples"]
    lines = ["peak %.0f %% of fuse; above 100 %%: %.1f s, above 110 %%: %.1f s "
             "(longest %.1f s)" % (m["peak_pct"], m["over_100_s"], m["over_110_s"],
                                   m["longest_over_110_s"])]
    f = m["fairness"]
    if f["samples"]:
        lines.append("fairness: worst mean |I - share| %.2f A over %d steady samples"
                     % (f["worst_mean_abs_dev_a"], f["samples"]))
    else:
        lines.append("fairness: no steady constrained samples")
    conv = [c["converge_s"] for c in m["convergence"]]
    if conv:
        ok = [c for c in conv if c is not None]
        lines.append("convergence after arrival: %d/%d within +-1 A%s" % (
            len(ok), len(conv), ", max %.1f s" % max(ok) if ok else ""))
    if m.get("starved"):
        lines.append("EVs left paused with room for them (beyond 30 s): " + ", ".join(
            "%s %.0f s" % (k, v["over_grace_s"]) for k, v in m["starved"].items()))
    cyc = m["contactor_cycles"]
    if cyc:
        worst = max(cyc.items(), key=lambda kv: kv[1]["closes"])
        lines.append("contactor closes: max %d (%s, %s/h)" % (
            worst[1]["closes"], worst[0], worst[1]["per_h"]))
    if "pv" in m and m["pv"]["ev_pv_share"] is not None:
        lines.append("EV energy from PV surplus %.0f %% (%.0f of %.0f Wh); surplus used "
                     "%s" % (100 * m["pv"]["ev_pv_share"], m["pv"]["ev_from_pv_wh"],
                             m["pv"]["ev_wh"],
                             "%.0f %%" % (100 * m["pv"]["surplus_used"])
                             if m["pv"]["surplus_used"] is not None else "-"))
    return lines
