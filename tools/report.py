"""Billing reports from the ledger: sessions, kWh, charging time, revenue and flags per group.

    .venv/bin/python tools/report.py --db fleet.db [--by station|tag|group]
        [--per day|month|none] [--since 2026-11-01] [--until 2026-11-30] [--csv FILE|-]
        [--png FILE]
(or `fleet report ...`). Money stays integer millis until it is printed; currencies are never
summed together (one row per currency). Days are UTC days of the session's start.
"""

import argparse
import calendar
import csv
import datetime
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import db  # noqa: E402
import ledger  # noqa: E402

# ISO 4217 currencies whose minor unit is not 1/100 of the major one.
_EXPONENT = {c: 0 for c in ("BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG",
                            "RWF", "UGX", "UYI", "VND", "VUV", "XAF", "XOF", "XPF")}
_EXPONENT.update({c: 3 for c in ("BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND")})

COLUMNS = ("sessions", "open", "energy_wh", "charging_s", "revenue_millis", "idle_millis",
           "flagged")
NONE = "(none)"


def money(millis, currency):
    """Integer millis (1/1000 of the minor unit) as the currency's units, rounded half up
    to the minor unit: money(100000, "EUR") == "1.00". Exact integer arithmetic."""
    e = _EXPONENT.get(currency, 2)
    sign = "-" if millis < 0 else ""
    minor, rest = divmod(abs(millis), 1000)
    if rest >= 500:
        minor += 1
    if e == 0:
        return sign + str(minor)
    major, frac = divmod(minor, 10 ** e)
    return "%s%d.%0*d" % (sign, major, e, frac)


def hours(seconds):
    """Seconds as H:MM."""
    m = (seconds + 30) // 60
    return "%d:%02d" % (m // 60, m % 60)


def parse_date(text):
    """'YYYY-MM-DD' -> Unix seconds of that UTC midnight; ValueError with a clear message."""
    try:
        d = datetime.datetime.strptime(text, "%Y-%m-%d")
    except (TypeError, ValueError):
        raise ValueError("%r is not a date (YYYY-MM-DD)" % (text,)) from None
    return calendar.timegm(d.timetuple())


def period_of(ts, per):
    t = datetime.datetime.fromtimestamp(ts, datetime.timezone.utc)
    return {"day": t.strftime("%Y-%m-%d"), "month": t.strftime("%Y-%m"), "none": "all"}[per]


def fetch(d, since=None, until=None):
    """Every session in [since, until) (Unix seconds, by its start) as dicts."""
    ledger.ensure_schema(d)
    where, params = [], {}
    if since is not None:
        where.append("s.ts >= :since")
        params["since"] = since
    if until is not None:
        where.append("s.ts < :until")
        params["until"] = until
    rows = d.execute(
        "SELECT s.station, s.id_tag, g.grp, s.ts, CASE WHEN s.stop_seq IS NULL THEN 0 ELSE 1"
        " END, s.energy_wh, s.charging_s, s.currency, s.total_millis, s.idle_millis, s.flags"
        " FROM ledger_sessions s LEFT JOIN station_groups g ON g.station = s.station"
        " WHERE s.ts IS NOT NULL %s ORDER BY s.ts, s.station, s.sid"
        % ("".join(" AND " + w for w in where)), **params)
    keys = ("station", "tag", "group", "ts", "stopped", "energy_wh", "charging_s", "currency",
            "total_millis", "idle_millis", "flags")
    return [dict(zip(keys, r)) for r in rows]


def aggregate(sessions, by="station", per="none"):
    """[(key, period, currency, {column: int})], sorted. Open sessions (no stop yet) count
    under `open` only; a stop without a cost has the currency ''."""
    out = {}
    for s in sessions:
        key = s[by] if s[by] is not None else NONE
        cur = (s["currency"] or "") if s["stopped"] else ""
        row = out.setdefault((key, period_of(s["ts"], per), cur), dict.fromkeys(COLUMNS, 0))
        if s["flags"]:
            row["flagged"] += 1
        if not s["stopped"]:
            row["open"] += 1
            continue
        row["sessions"] += 1
        row["energy_wh"] += int(s["energy_wh"] or 0)
        row["charging_s"] += int(s["charging_s"] or 0)
        row["revenue_millis"] += int(s["total_millis"] or 0)
        row["idle_millis"] += int(s["idle_millis"] or 0)
    return sorted((k, p, c, v) for (k, p, c), v in out.items())


def totals(rows):
    """Per currency: the sums of every row."""
    t = {}
    for _, _, cur, v in rows:
        acc = t.setdefault(cur, dict.fromkeys(COLUMNS, 0))
        for c in COLUMNS:
            acc[c] += v[c]
    return sorted(t.items())


def _cells(key, period, cur, v):
    return [key, period, cur or "-", str(v["sessions"]), str(v["open"]),
            "%.3f" % (v["energy_wh"] / 1000.0), hours(v["charging_s"]),
            money(v["revenue_millis"], cur) if cur else "-",
            money(v["idle_millis"], cur) if cur else "-", str(v["flagged"])]


def table(rows, by):
    """The report as aligned text."""
    head = [by, "period", "currency", "sessions", "open", "energy_kwh", "charging_h",
            "revenue", "idle_fees", "flagged"]
    body = [_cells(*r) for r in rows]
    foot = [_cells("total", "", cur, v) for cur, v in totals(rows)]
    widths = [max(len(r[i]) for r in [head] + body + foot) for i in range(len(head))]

    def line(r):
        return "  ".join(c.ljust(w) if i < 3 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(r, widths))).rstrip()

    out = [line(head)] + [line(r) for r in body]
    if foot:
        out.append("-" * len(line(head)))
        out += [line(r) for r in foot]
    return "\n".join(out) + "\n"


def write_csv(rows, by, f):
    w = csv.writer(f, lineterminator="\n")
    w.writerow([by, "period", "currency", "sessions", "open", "energy_wh", "charging_s",
                "revenue_millis", "revenue", "idle_millis", "idle_fees", "flagged"])
    for key, period, cur, v in rows:
        w.writerow([key, period, cur, v["sessions"], v["open"], v["energy_wh"],
                    v["charging_s"], v["revenue_millis"], money(v["revenue_millis"], cur)
                    if cur else "", v["idle_millis"], money(v["idle_millis"], cur)
                    if cur else "", v["flagged"]])


def plot(sessions, path):
    """Energy (kWh) and revenue (one line per currency) per day, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = aggregate(sessions, by="station", per="day")
    days = sorted({p for _, p, _, _ in rows})
    kwh = {d: 0 for d in days}
    rev = {}
    for _, p, cur, v in rows:
        kwh[p] += v["energy_wh"] / 1000.0
        if cur:
            scale = 1000.0 * 10 ** _EXPONENT.get(cur, 2)
            rev.setdefault(cur, dict.fromkeys(days, 0.0))[p] += v["revenue_millis"] / scale
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    x = range(len(days))
    ax1.bar(x, [kwh[d] for d in days], color="tab:blue")
    ax1.set_ylabel("energy (kWh)")
    ax1.set_title("energy and revenue per day (UTC)")
    for cur, vals in sorted(rev.items()):
        ax2.plot(x, [vals[d] for d in days], marker="o", label=cur)
    if rev:
        ax2.legend()
    ax2.set_ylim(bottom=0)
    ax2.set_ylabel("revenue (currency units)")
    ax2.set_xticks(list(x))
    ax2.set_xticklabels(days, rotation=45, ha="right")
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


# -- command line -------------------------------------------------------------------------------

def _configure(p):
    p.add_argument("--by", choices=("station", "tag", "group"), default="station")
    p.add_argument("--per", choices=("day", "month", "none"), default="none")
    p.add_argument("--since", metavar="YYYY-MM-DD", help="sessions that started on or after")
    p.add_argument("--until", metavar="YYYY-MM-DD", help="... up to and including this day")
    p.add_argument("--csv", metavar="FILE", help="write CSV to FILE ('-': standard output)")
    p.add_argument("--png", metavar="FILE", help="plot energy and revenue per day")
    p.set_defaults(func=cmd_report)


def add_parser(subparsers, parents=()):
    """fleet.py: registers `report`; `parents` carry the fleet's global options."""
    p = subparsers.add_parser("report", help="billing report from the ledger",
                              parents=list(parents))
    _configure(p)
    return p


def cmd_report(args):
    try:
        since = parse_date(args.since) if args.since else None
        until = parse_date(args.until) + 86400 if args.until else None
    except ValueError as e:
        print("report: %s" % e, file=sys.stderr)
        return 2
    try:
        d = db.connect(args.db)
    except Exception as e:
        return ledger.open_failed("report", args.db, e)
    try:
        sessions = fetch(d, since, until)
    except Exception as e:  # the server went away, or the file is not a database
        print("report: cannot read the ledger: %s" % e, file=sys.stderr)
        return ledger.EXIT_UNREACHABLE
    finally:
        d.close()
    rows = aggregate(sessions, by=args.by, per=args.per)
    try:
        if args.csv == "-":
            write_csv(rows, args.by, sys.stdout)
        elif args.csv:
            with open(args.csv, "w", newline="") as f:
                write_csv(rows, args.by, f)
        if args.png:
            plot(sessions, args.png)
    except OSError as e:
        print("report: %s" % e, file=sys.stderr)
        return 2
    if args.csv != "-":
        sys.stdout.write(table(rows, args.by))
    return 0


def main(argv=None):
    p = argparse.ArgumentParser(prog="report.py", description=__doc__.split("\n")[0])
    ledger.add_global_options(p)
    _configure(p)
    args = p.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
