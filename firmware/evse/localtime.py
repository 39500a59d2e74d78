"""Local wall-clock time from UTC seconds and a POSIX TZ string ("CET-1CEST,M3.5.0,M10.5.0/3")."""

from evse.compat import const

_DAY = const(86400)
_MAX_LEN = const(64)
_DEFAULT_AT = const(7200)  # POSIX: a rule without /time applies at 02:00:00 local time
_MAX_AT_H = const(167)  # RFC 8536 3.3.1 widens the rule time to -167..167 hours
_MAX_OFF_H = const(24)  # POSIX: an offset's hours are 0..24

# Rule kinds, the first item of a rule tuple (kind, a, week, weekday, at_s).
_JULIAN = const(0)  # Jn: a = 1..365, February 29 never counted (J60 is always March 1)
_ZERO = const(1)  # n: a = 0..365, February 29 counted in leap years
_MONTH = const(2)  # Mm.w.d: a = month, week 1..5 (5 = last), weekday 0..6 (0 = Sunday)


def _fail(code, what, s, i):
    # The position helps whoever typed the string find the mistake; s is at most 64 chars.
    raise ValueError("%s: tz %s at position %d of '%s'" % (code, what, i, s))


def _is_digit(c):
    return "0" <= c <= "9"


def _is_alpha(c):
    return "a" <= c <= "z" or "A" <= c <= "Z"


def _name(s, i, which):
    """(name, next i): 3+ letters, or <...> of 3+ letters, digits, '+' or '-'."""
    n = len(s)
    if i < n and s[i] == "<":
        j = s.find(">", i + 1)
        if j < 0:
            _fail("bad_arg", which + " name '<' not closed by '>'", s, i)
        name = s[i + 1 : j]
        for c in name:
            if not (_is_alpha(c) or _is_digit(c) or c == "+" or c == "-"):
                _fail("bad_arg", "%s name may hold only letters, digits, + and -" % which, s, i)
        if len(name) < 3:
            _fail("bad_arg", which + " name must have 3 or more characters", s, i)
        return name, j + 1
    j = i
    while j < n and _is_alpha(s[j]):
        j += 1
    if j - i < 3:
        _fail("bad_arg", which + " name must be 3 or more letters or <quoted>", s, i)
    return s[i:j], j


def _num(s, i, lo, hi, what):
    """(value, next i) of the unsigned decimal at i, which must lie in lo..hi."""
    j, v = i, 0
    while j < len(s) and _is_digit(s[j]):
        v = v * 10 + ord(s[j]) - 48
        j += 1
    if j == i:
        _fail("bad_arg", what + " expected", s, i)
    if not lo <= v <= hi:
        _fail("out_of_range", "%s must be %d..%d (got %d)" % (what, lo, hi, v), s, i)
    return v, j


def _hms(s, i, max_h, what):
    """(seconds, next i) of [+-]h[:mm[:ss]] with hours 0..max_h."""
    sign = 1
    if i < len(s) and (s[i] == "+" or s[i] == "-"):
        sign = -1 if s[i] == "-" else 1
        i += 1
    h, i = _num(s, i, 0, max_h, what + " hours")
    v = h * 3600
    if i < len(s) and s[i] == ":":
        m, i = _num(s, i + 1, 0, 59, what + " minutes")
        v += m * 60
        if i < len(s) and s[i] == ":":
            sec, i = _num(s, i + 1, 0, 59, what + " seconds")
            v += sec
    return sign * v, i


def _dot(s, i, which):
    if i >= len(s) or s[i] != ".":
        _fail("bad_arg", "'.' expected in %s rule Mm.w.d" % which, s, i)
    return i + 1


def _rule(s, i, which):
    """(rule tuple, next i) of Mm.w.d[/time], Jn[/time] or n[/time]."""
    c = s[i] if i < len(s) else ""
    w = d = 0  # week and weekday: used by Mm.w.d only
    if c == "M":
        kind = _MONTH
        a, i = _num(s, i + 1, 1, 12, which + " month")
        w, i = _num(s, _dot(s, i, which), 1, 5, which + " week")
        d, i = _num(s, _dot(s, i, which), 0, 6, which + " weekday (0=Sunday)")
    elif c == "J":
        kind = _JULIAN
        a, i = _num(s, i + 1, 1, 365, which + " day Jn")
    elif _is_digit(c):
        kind = _ZERO
        a, i = _num(s, i, 0, 365, which + " day n")
    else:
        _fail("bad_arg", which + " rule must be Mm.w.d, Jn or n", s, i)
    at = _DEFAULT_AT
    if i < len(s) and s[i] == "/":
        at, i = _hms(s, i + 1, _MAX_AT_H, which + " time")
    return (kind, a, w, d, at), i


def parse(s):
    """POSIX TZ string -> tz tuple (std_name, std_off_s, dst_name, dst_off_s, start, end).

    Offsets are seconds EAST of UTC (local = UTC + offset: "CET-1" gives 3600, POSIX's
    sign turned round). Without DST: dst_name, start and end are None, dst_off_s = std_off_s.
    Raises ValueError("bad_arg: ...") or ValueError("out_of_range: ...")."""
    if not isinstance(s, str):
        raise ValueError("bad_arg: tz must be a string")
    n = len(s)
    if not 1 <= n <= _MAX_LEN:
        raise ValueError("out_of_range: tz length must be 1..%d (got %d)" % (_MAX_LEN, n))
    std, i = _name(s, 0, "std")
    if i >= n or not (_is_digit(s[i]) or s[i] == "+" or s[i] == "-"):
        _fail("bad_arg", "offset expected after std name '%s' (e.g. UTC0, CET-1)" % std, s, i)
    off, i = _hms(s, i, _MAX_OFF_H, "std offset")
    std_off = -off
    if i == n:
        return (std, std_off, None, std_off, None, None)
    dst, i = _name(s, i, "dst")
    dst_off = std_off + 3600  # POSIX: DST defaults to one hour ahead of standard time
    if i < n and (_is_digit(s[i]) or s[i] == "+" or s[i] == "-"):
        off, i = _hms(s, i, _MAX_OFF_H, "dst offset")
        dst_off = -off
    if i == n:
        # glibc falls back on the US rules here; a charger in Europe would then switch an
        # hour wrong for weeks each year, so the rule must be spelled out.
        _fail("bad_arg", "DST rule missing after '%s' (add e.g. ,M3.5.0,M10.5.0/3)" % dst, s, i)
    if s[i] != ",":
        _fail("bad_arg", "',' expected before the DST start rule", s, i)
    start, i = _rule(s, i + 1, "start")
    if i >= n or s[i] != ",":
        _fail("bad_arg", "',' expected before the DST end rule", s, i)
    end, i = _rule(s, i + 1, "end")
    if i != n:
        _fail("bad_arg", "unexpected '%s'" % s[i], s, i)
    return (std, std_off, dst, dst_off, start, end)


def _days(y, m, d):
    """Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's days_from_civil)."""
    if m <= 2:
        y -= 1
    era = y // 400  # floor division: right for years before 0 too
    yoe = y - era * 400
    doy = (153 * ((m + 9) % 12) + 2) // 5 + d - 1  # day of a year that starts on March 1
    return era * 146097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719468


def _year(z):
    """The year of day z since 1970-01-01 (H. Hinnant's civil_from_days, year only)."""
    z += 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    # Years here start on March 1: days from 306 on are January and February of the next.
    return yoe + era * 400 + (1 if doy >= 306 else 0)


def _rule_day(r, y, y0):
    """Day (since 1970-01-01) on which rule r falls in year y, whose January 1 is day y0."""
    kind, a = r[0], r[1]
    if kind == _ZERO:
        return y0 + a
    if kind == _JULIAN:
        leap = y % 4 == 0 and (y % 100 != 0 or y % 400 == 0)
        return y0 + a - (0 if leap and a >= 60 else 1)
    first = _days(y, a, 1)
    # Day 0 (1970-01-01) was a Thursday, weekday 4 counting from Sunday = 0.
    day = first + (r[3] - first - 4) % 7 + (r[2] - 1) * 7
    if r[2] == 5:  # "the last": week 5 falls back a week when the month is too short
        nxt = _days(y + 1, 1, 1) if a == 12 else _days(y, a + 1, 1)
        while day >= nxt:
            day -= 7
    return day


def _offset(day, sod, tz):
    # Small ints only from here (ESP32: below 2^30): seconds are counted from January 1 of
    # the year, never from 1970.
    std = tz[1]
    start = tz[4]
    if start is None:
        return std
    dst, end = tz[3], tz[5]
    # The rules are those of the year of local standard time; a southern-hemisphere zone,
    # whose DST spans new year, comes out right whichever side of it that year falls.
    y = _year(day + (sod + std) // _DAY)
    y0 = _days(y, 1, 1)
    t = (day - y0) * _DAY + sod
    # POSIX: the start time is given in standard time, the end time in DST.
    on = (_rule_day(start, y, y0) - y0) * _DAY + start[4] - std
    off = (_rule_day(end, y, y0) - y0) * _DAY + end[4] - dst
    if on <= off:
        return dst if on <= t < off else std
    return std if off <= t < on else dst


def offset_s(unix_s, tz):
    """Seconds to add to UTC for the local time at unix_s (3600 for CET, 7200 in CEST)."""
    return _offset(unix_s // _DAY, unix_s % _DAY, tz)


def local(unix_s, tz):
    """(ISO weekday 1=Monday..7=Sunday, minute of the local day 0..1439) at unix_s."""
    # The only two operations on unix_s: on the ESP32 it is a big int (above 2^30).
    day = unix_s // _DAY
    sod = unix_s % _DAY
    sod += _offset(day, sod, tz)
    day += sod // _DAY  # offsets are within +-25 h: at most one day either way
    sod %= _DAY
    return (day + 3) % 7 + 1, sod // 60  # day 0, 1970-01-01, was a Thursday: ISO 4
