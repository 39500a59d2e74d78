"""A PNG of a site run (tools/site.py recording): grid current per phase against the fuse and
110 % of it, each station's EV current, PV and the surplus, over time, with the actions
marked and the key metrics in the title.

    .venv/bin/python tools/siteplot.py build/site/grid5.jsonl [-o grid5.png]
"""

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import sitemetrics  # noqa: E402

_PHASE_COLORS = ("#8c564b", "#111111", "#7f7f7f")  # brown, black, grey (IEC 60445 L1-L3)


def plot(records, png, metrics=None):
    """Write the PNG; returns its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    meta, samples, actions = sitemetrics.split(records)
    if not samples:
        raise ValueError("no samples in the recording")
    m = metrics if metrics is not None else sitemetrics.compute(records)
    fuse = meta["fuse_a"]
    t = [s["t"] for s in samples]
    has_pv = any(any(x < 0 for x in s["pv"]) for s in samples)
    fig, axes = plt.subplots(3, 1, figsize=(12, 10), sharex=True,
                             gridspec_kw={"height_ratios": [3, 3, 2]})
    ax = axes[0]
    for p in range(3):
        ax.plot(t, [s["grid"][p] for s in samples], color=_PHASE_COLORS[p], lw=1.2,
                label="grid L%d" % (p + 1))
    ax.axhline(fuse, color="red", lw=1.5, label="fuse %g A" % fuse)
    ax.axhline(1.1 * fuse, color="red", lw=1, ls="--", label="110 %")
    if has_pv:
        ax.axhline(0, color="#999999", lw=0.6)
    ax.set_ylabel("grid current per phase (A)")
    ax.legend(loc="upper left", fontsize=8, ncol=5)
    ax.grid(alpha=0.3)

    ax = axes[1]
    keys = [(u["id"], u["c"]) for u in meta["units"]]
    multi = any(c > 1 for _, c in keys)
    cmap = plt.get_cmap("tab20" if len(keys) > 10 else "tab10")
    # The weighted fair share each EV that wants current should get (sitemetrics.shares),
    # dotted in the station's colour; blank where the shares are below 6 A (turns).
    share = {key: [] for key in keys}
    for s in samples:
        sh, scarce, _ = sitemetrics.shares(s, meta)
        for key in keys:
            share[key].append(float("nan") if scarce or key not in sh else sh[key])
    for k, key in enumerate(keys):
        if len(keys) <= 10:
            ax.plot(t, share[key], color=cmap(k % cmap.N), lw=0.8, ls=":")
        ys = []
        for s in samples:
            u = next((u for u in s["units"] if (u["id"], u["c"]) == key), None)
            ys.append(max(u["ev_i"]) if u else 0.0)
        label = "%s/%d" % key if multi else key[0]
        w = next((u["weight"] for u in meta["units"] if (u["id"], u["c"]) == key), 1)
        if w != 1:
            label += " (w %g)" % w
        ax.plot(t, ys, color=cmap(k % cmap.N), lw=1.0, label=label)
    ax.set_ylabel("EV current per phase (A)\n(dotted: fair share)" if len(keys) <= 10
                  else "EV current per phase (A)")
    if len(keys) <= 10:
        ax.legend(loc="upper left", fontsize=8, ncol=min(len(keys), 5))
    ax.grid(alpha=0.3)

    ax = axes[2]
    avg = lambda v: sum(v) / 3.0  # noqa: E731
    if has_pv:
        pv = [-avg(s["pv"]) for s in samples]
        surplus = [max(0.0, -avg(s["pv"]) - avg(s["base"]) - avg(s["dumb"])) for s in samples]
        ax.fill_between(t, 0, pv, color="#ffd54f", alpha=0.6, label="PV production")
        ax.plot(t, surplus, color="#e69f00", lw=1.5, label="PV surplus (PV - base - dumb)")
    ax.plot(t, [avg(s["base"]) + avg(s["dumb"]) for s in samples], color="#555555", lw=1,
            label="base + dumb load")
    ax.plot(t, [avg(s["ev"]) for s in samples], color="#1f77b4", lw=1.2, label="all EVs")
    ax.set_ylabel("mean per phase (A)")
    ax.set_xlabel("time (s)")
    ax.legend(loc="upper left", fontsize=8, ncol=4)
    ax.grid(alpha=0.3)

    # Actions as thin lines; cut links / feeds as shaded spans.
    open_cut = {}
    for a in actions:
        for ax in axes:
            ax.axvline(a["t"], color="#bbbbbb", lw=0.6, zorder=0)
        lbl = a["do"] + (" " + a["id"] if a.get("id") else "")
        axes[0].annotate(lbl, (a["t"], 0.02), xycoords=("data", "axes fraction"), fontsize=6,
                         rotation=90, va="bottom", ha="right", color="#666666")
        if a["do"] in ("cut_link", "cut_feed"):
            open_cut[(a["do"][4:], a.get("id"))] = a["t"]
        elif a["do"] in ("restore_link", "restore_feed"):
            t0 = open_cut.pop((a["do"][8:], a.get("id")), None)
            if t0 is not None:
                for ax in axes:
                    ax.axvspan(t0, a["t"], color="#ff9896", alpha=0.15, zorder=0)
    for t0 in open_cut.values():
        for ax in axes:
            ax.axvspan(t0, t[-1], color="#ff9896", alpha=0.15, zorder=0)

    title = "%s (%s, mode %s, %d stations)" % (
        meta.get("preset", "site"), "site-managed" if meta.get("managed") else "UNMANAGED",
        meta.get("mode", "grid"), len({u["id"] for u in meta["units"]}))
    lines = [title] + sitemetrics.summary_lines(m)
    fig.text(0.06, 0.995, "\n".join(lines), fontsize=9, ha="left", va="top")
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.016 * (len(lines) + 0.5)))
    fig.savefig(png, dpi=90)
    plt.close(fig)
    return png


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("recording", help="a .jsonl recording from tools/site.py")
    ap.add_argument("-o", "--out", default=None, help="the PNG (default: beside the recording)")
    a = ap.parse_args(argv)
    out = a.out or os.path.splitext(a.recording)[0] + ".png"
    plot(sitemetrics.load(a.recording), out)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
