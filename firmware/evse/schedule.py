"""Time-of-use current limits: weekly periods of local wall-clock time, each with a current."""

from evse.compat import const

_MAX_PERIODS = const(24)
_MAX_A = const(80)  # config's max_current_a ceiling
_DAY_MIN = const(1440)
_WEEK_MIN = const(10080)
_KEYS = ("start", "end", "days", "current_a")
_NAMES = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


def _hhmm(v, i, key):
    """Minute of the day of "HH:MM"; "24:00" (1440) is allowed for end only."""
    if not isinstance(v, str) or len(v) != 5 or v[2] != ":":
        raise ValueError('bad_arg: period %d: %s must be "HH:MM"' % (i, key))
    for c in v[:2] + v[3:]:
        if not "0" <= c <= "9":
            raise ValueError('bad_arg: period %d: %s must be "HH:MM"' % (i, key))
    h, m = int(v[:2]), int(v[3:])
    if h <= 23 and m <= 59:
        return h * 60 + m
    if key == "end" and v == "24:00":
        return _DAY_MIN
    top = "24:00" if key == "end" else "23:59"
    raise ValueError("out_of_range: period %d: %s %s must be 00:00..%s" % (i, key, v, top))


def _days(v, i):
    """Bit mask of ISO weekday digits: bit 0 = Monday (1) .. bit 6 = Sunday (7)."""
    if not isinstance(v, str) or not v:
        raise ValueError("bad_arg: period %d: days must be a string of digits 1-7" % i)
    mask = 0
    for c in v:
        if not "0" <= c <= "9":
            raise ValueError("bad_arg: period %d: days must be digits 1-7, not '%s'" % (i, c))
        if not "1" <= c <= "7":
            raise ValueError("out_of_range: period %d: day %s must be 1..7 (1=Monday)" % (i, c))
        bit = 1 << (ord(c) - 49)
        if mask & bit:
            raise ValueError("bad_arg: period %d: day %s given twice" % (i, c))
        mask |= bit
    return mask


def _deci_amps(v, i):
    # JSON has one number type: an int is a fine current, a bool is not.
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError("bad_arg: period %d: current_a must be a number" % i)
    if not 0 <= v <= _MAX_A:  # NaN fails both comparisons
        # %g: MicroPython's repr of a float may show more digits than were sent (80.01 reads
        # back as 80.01000000000001): six significant digits name it as the client wrote it.
        raise ValueError(
            "out_of_range: period %d: current_a must be 0..%d (got %g)" % (i, _MAX_A, v)
        )
    return int(v * 10 + 0.5)  # one decimal, half up: 16.04 -> 160, 16.05 -> 161


def _spans(p, out, i):
    """Append (first, end, i) week-minute spans of period p (Monday 00:00 = 0)."""
    mask, start, end = p[0], p[1], p[2]
    for d in range(7):
        if not mask & (1 << d):
            continue
        base = d * _DAY_MIN
        if start < end:
            out.append((base + start, base + end, i))
            continue
        # Wraps past midnight: the tail belongs to the day it starts on, so Friday
        # 22:00-06:00 takes Saturday 00:00-06:00; Sunday's tail is Monday's morning.
        out.append((base + start, base + _DAY_MIN, i))
        if end:
            base = (base + _DAY_MIN) % _WEEK_MIN
            out.append((base, base + end, i))


def parse(periods):
    """The set_schedule "periods" list -> tuple of (days_mask, start_min, end_min, deci_a,
    amps). Refuses the whole list with ValueError("bad_arg|out_of_range: period N: ...")."""
    if not isinstance(periods, list):
        raise ValueError("bad_arg: periods must be a list")
    if len(periods) > _MAX_PERIODS:
        raise ValueError(
            "out_of_range: at most %d periods (got %d)" % (_MAX_PERIODS, len(periods))
        )
    out = []
    for i, e in enumerate(periods):
        if not isinstance(e, dict):
            raise ValueError("bad_arg: period %d must be an object" % i)
        for k in e:
            if k not in _KEYS:
                raise ValueError("bad_arg: period %d: unknown key '%s'" % (i, k))
        for k in _KEYS:
            if k not in e:
                raise ValueError("bad_arg: period %d: missing key '%s'" % (i, k))
        start = _hhmm(e["start"], i, "start")
        end = _hhmm(e["end"], i, "end")
        if start == end:
            raise ValueError(
                "bad_arg: period %d: start equals end (a whole day is 00:00-24:00)" % i
            )
        mask = _days(e["days"], i)
        deci = _deci_amps(e["current_a"], i)
        # amps kept as a float object too: current() returns it without allocating.
        out.append((mask, start, end, deci, deci / 10))
    spans = []
    for i, p in enumerate(out):
        _spans(p, spans, i)
    spans.sort()
    # Sorted by first minute, a span overlaps an earlier one iff it starts before the
    # latest end seen so far.
    last_end, last_i = 0, 0
    for first, end, i in spans:
        if first < last_end:
            raise ValueError(
                "bad_arg: periods %d and %d overlap on %s at %s"
                % (
                    min(i, last_i),
                    max(i, last_i),
                    _NAMES[first // _DAY_MIN],
                    _text(first % _DAY_MIN),
                )
            )
        if end > last_end:
            last_end, last_i = end, i
    return tuple(out)


def current(parsed, weekday, minute):
    """Amps of the period covering ISO weekday (1=Monday..7=Sunday) and minute 0..1439 of
    local time, or None. A period covers its start minute, not its end minute."""
    bit = 1 << (weekday - 1)
    prev = 64 if weekday == 1 else bit >> 1  # the day before Monday is Sunday
    for p in parsed:
        start, end = p[1], p[2]
        if start < end:
            if start <= minute < end and p[0] & bit:
                return p[4]
        elif (minute >= start and p[0] & bit) or (minute < end and p[0] & prev):
            return p[4]
    return None


def _text(m):
    return "%02d:%02d" % (m // 60, m % 60)


def to_json(parsed):
    """Canonical list of dicts (days in order, current to one decimal): parse() of it gives
    `parsed` back."""
    out = []
    for p in parsed:
        days = ""
        for d in range(7):
            if p[0] & (1 << d):
                days += chr(49 + d)
        out.append({"start": _text(p[1]), "end": _text(p[2]), "days": days, "current_a": p[4]})
    return out
