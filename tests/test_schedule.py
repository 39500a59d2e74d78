"""Local time from POSIX TZ strings (evse.localtime) agrees with the tz database and glibc,
and time-of-use periods (evse.schedule) are parsed, refused and looked up as the set_schedule
contract says; both give the same answers on the MicroPython unix port as on CPython."""

import json
import math
import os
import random
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone

import pytest

from evse import localtime, schedule

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIRMWARE = os.environ.get("EVSE_FIRMWARE") or os.path.join(ROOT, "firmware")
MICROPYTHON = os.path.join(os.path.dirname(sys.executable), "micropython")

# (tz database name, the POSIX TZ string the station would be configured with)
ZONES = (
    ("Europe/Berlin", "CET-1CEST,M3.5.0,M10.5.0/3"),
    ("Europe/London", "GMT0BST,M3.5.0/1,M10.5.0"),
    ("America/New_York", "EST5EDT,M3.2.0,M11.1.0"),
    ("Australia/Sydney", "AEST-10AEDT,M10.1.0,M4.1.0/3"),  # DST spans new year
    ("Asia/Kolkata", "IST-5:30"),
    ("America/Sao_Paulo", "<-03>3"),  # no DST since 2019
)
DST_ZONES = ("Europe/Berlin", "Europe/London", "America/New_York", "Australia/Sydney")

# The less common parts of the syntax (Jn, n, negative and >24 h rule times, seconds,
# explicit DST offsets, quoted names), checked against glibc's own reading of TZ. None of
# these moves a transition across new year, where glibc and this module pick the rule
# year differently (see test_rules_use_the_year_of_local_standard_time).
EXOTIC = (
    "EST5EDT,J60/-1,J300/26",
    "<+0330>-3:30<+0430>,J79/24,J263/24",
    "IST-2IDT,M3.4.4/26,M10.5.0",
    "<-02>2<-01>,M3.5.0/-1,M10.5.0/0",
    "AAA-10BBB-11:30,M10.1.0,M4.1.0/3",
    "NZST-12NZDT,M9.5.0,M4.1.0/3",
    "<+13>-13",
    "ABC+4:15:30DEF+3:15,59,300/1:02:03",
    "CCC0DDD,M1.1.0/0,M12.5.6/23:59:59",
    "III3JJJ2,M3.5.0/-25,M10.5.0/-3",
    "UTC0",
)

Y2024 = 1704067200  # 2024-01-01T00:00:00Z
Y2033 = 1988150400  # 2033-01-01T00:00:00Z
CYCLE_S = 146097 * 86400  # 400 Gregorian years: dates and weekdays repeat exactly


def utc(*a):
    return int(datetime(*a, tzinfo=timezone.utc).timestamp())


def zone(name):
    try:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError
    except ImportError:
        pytest.skip("zoneinfo module missing: no tz database to compare with")
    try:
        return ZoneInfo(name)
    except ZoneInfoNotFoundError:
        pytest.skip("tz database (/usr/share/zoneinfo or tzdata) has no %s" % name)


def expect_zoneinfo(t, zi):
    dt = datetime.fromtimestamp(t, zi)
    return (dt.isoweekday(), dt.hour * 60 + dt.minute), int(dt.utcoffset().total_seconds())


def transitions(offset_of, t0, t1):
    """Exact seconds in [t0, t1) at which offset_of(t) changes (hourly scan + bisection)."""
    out = []
    prev = offset_of(t0)
    for t in range(t0 + 3600, t1, 3600):
        cur = offset_of(t)
        if cur != prev:
            lo, hi = t - 3600, t  # offset_of(lo) == prev != offset_of(hi)
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if offset_of(mid) == prev:
                    lo = mid
                else:
                    hi = mid
            out.append(hi)
        prev = cur
    return out


def around(ts):
    """Every minute from 3 h before to 3 h after each instant, and the seconds next to it."""
    for t in ts:
        yield from range(t - 3 * 3600, t + 3 * 3600 + 1, 60)
        yield from range(t - 2, t + 3)


def check_against(tz, ts, oracle):
    bad = []
    for t in ts:
        want = oracle(t)
        got = (localtime.local(t, tz), localtime.offset_s(t, tz))
        if got != want:
            bad.append((t, got, want))
    assert not bad, "%d mismatches, first: %s" % (len(bad), bad[:5])


# -- localtime against the tz database ----------------------------------------------------
@pytest.mark.parametrize("name,posix", ZONES, ids=[z[0] for z in ZONES])
def test_local_matches_tz_database_every_hour_2024_to_2032(name, posix):
    zi = zone(name)
    tz = localtime.parse(posix)
    check_against(tz, range(Y2024, Y2033, 3600), lambda t: expect_zoneinfo(t, zi))


@pytest.mark.parametrize("name,posix", ZONES, ids=[z[0] for z in ZONES])
def test_local_matches_tz_database_around_each_transition(name, posix):
    zi = zone(name)
    tz = localtime.parse(posix)
    found = transitions(lambda t: expect_zoneinfo(t, zi)[1], Y2024, Y2033)
    # Positive evidence first: the DST zones really switch twice a year in 2024..2032.
    assert len(found) == (18 if name in DST_ZONES else 0), found
    check_against(tz, around(found), lambda t: expect_zoneinfo(t, zi))


@pytest.mark.parametrize("name,posix", ZONES, ids=[z[0] for z in ZONES])
def test_local_matches_tz_database_far_future(name, posix):
    """Beyond its last listed transition the tz database applies the same POSIX string:
    random instants up to year 9999 exercise the calendar (century leap years)."""
    zi = zone(name)
    tz = localtime.parse(posix)
    rng = random.Random(name)
    ts = [rng.randrange(Y2033, utc(9999, 12, 30)) for _ in range(3000)]
    check_against(tz, ts, lambda t: expect_zoneinfo(t, zi))


@pytest.mark.parametrize("posix", ["UTC0", "<+0530>-5:30", "<-03>3", "<+1245>-12:45"])
def test_fixed_offsets_from_year_1_to_9999(posix):
    """Negative unix times (before 1970) and every kind of leap year, against datetime."""
    tz = localtime.parse(posix)
    off = tz[1]
    rng = random.Random(posix)
    lo, hi = utc(1, 1, 2), utc(9999, 12, 30)
    ts = [rng.randrange(lo, hi) for _ in range(5000)] + [-1, 0, 1, 951782400, 4107542400]

    def want(t):
        dt = datetime(1970, 1, 1) + timedelta(seconds=t + off)
        return (dt.isoweekday(), dt.hour * 60 + dt.minute), off

    check_against(tz, ts, want)


# -- localtime against glibc --------------------------------------------------------------
def glibc_reads_tz():
    if not hasattr(time, "tzset"):
        return False
    old = os.environ.get("TZ")
    try:
        os.environ["TZ"] = "CET-1CEST,M3.5.0,M10.5.0/3"
        time.tzset()
        lt = time.localtime(utc(2024, 7, 1, 12))
        return lt.tm_hour == 14 and lt.tm_gmtoff == 7200
    finally:
        restore_tz(old)


def restore_tz(old):
    if old is None:
        os.environ.pop("TZ", None)
    else:
        os.environ["TZ"] = old
    time.tzset()


@pytest.mark.parametrize("posix", EXOTIC)
def test_local_matches_glibc_for_the_rest_of_the_syntax(posix):
    if not glibc_reads_tz():
        pytest.skip("this C library's time.tzset() does not read POSIX TZ strings")
    tz = localtime.parse(posix)
    old = os.environ.get("TZ")
    try:
        os.environ["TZ"] = posix
        time.tzset()

        def want(t):
            lt = time.localtime(t)
            return (lt.tm_wday + 1, lt.tm_hour * 60 + lt.tm_min), lt.tm_gmtoff

        found = transitions(lambda t: time.localtime(t).tm_gmtoff, Y2024, Y2024 + 3 * 365 * 86400)
        assert len(found) == (0 if tz[4] is None else 6), found
        rng = random.Random(posix)
        # glibc applies no DST rule before 1970: compare from 1970 on.
        ts = [rng.randrange(0, 2**32) for _ in range(3000)]
        check_against(tz, ts + list(around(found)), want)
    finally:
        restore_tz(old)


# -- localtime by hand ----------------------------------------------------------------------
BERLIN = "CET-1CEST,M3.5.0,M10.5.0/3"


def test_parse_gives_offsets_east_of_utc_and_rules():
    assert localtime.parse(BERLIN) == (
        "CET",
        3600,
        "CEST",
        7200,
        (2, 3, 5, 0, 7200),
        (2, 10, 5, 0, 10800),
    )
    assert localtime.parse("<+0530>-5:30") == ("+0530", 19800, None, 19800, None, None)
    assert localtime.parse("IST-5:30") == ("IST", 19800, None, 19800, None, None)
    assert localtime.parse("<-03>3") == ("-03", -10800, None, -10800, None, None)
    assert localtime.parse("UTC0") == ("UTC", 0, None, 0, None, None)
    assert localtime.parse("EST5EDT4:30,J60/-1:30,300/26:00:01") == (
        "EST",
        -18000,
        "EDT",
        -16200,
        (0, 60, 0, 0, -5400),
        (1, 300, 0, 0, 93601),
    )
    assert localtime.parse("A" * 60 + "+1") == ("A" * 60, -3600, None, -3600, None, None)


def test_local_by_hand():
    tz = localtime.parse(BERLIN)
    # 2024-03-31: 02:00 CET becomes 03:00 CEST at 01:00 UTC (a Sunday, ISO 7).
    assert localtime.local(utc(2024, 3, 31, 0, 59, 59), tz) == (7, 1 * 60 + 59)
    assert localtime.local(utc(2024, 3, 31, 1, 0, 0), tz) == (7, 3 * 60)
    # 2024-10-27: 03:00 CEST becomes 02:00 CET at 01:00 UTC; 02:xx happens twice.
    assert localtime.local(utc(2024, 10, 27, 0, 59, 59), tz) == (7, 2 * 60 + 59)
    assert localtime.local(utc(2024, 10, 27, 1, 0, 0), tz) == (7, 2 * 60)
    assert localtime.offset_s(utc(2024, 10, 27, 0, 59, 59), tz) == 7200
    assert localtime.offset_s(utc(2024, 10, 27, 1, 0, 0), tz) == 3600
    utc0 = localtime.parse("UTC0")
    assert localtime.local(0, utc0) == (4, 0)  # 1970-01-01 was a Thursday
    assert localtime.local(-1, utc0) == (3, 1439)
    assert localtime.local(0, localtime.parse("IST-5:30")) == (4, 330)
    assert localtime.local(0, localtime.parse("<-03>3")) == (3, 21 * 60)
    # Sydney: new year's midnight is in DST (AEDT, +11).
    syd = localtime.parse("AEST-10AEDT,M10.1.0,M4.1.0/3")
    assert localtime.local(utc(2024, 12, 31, 13, 0), syd) == (3, 0)
    assert localtime.local(utc(2024, 12, 31, 12, 59), syd) == (2, 1439)
    # 2100 is not a leap year, 2000 was: March 1 follows February 28 / 29.
    assert localtime.local(utc(2100, 3, 1), utc0) == (1, 0)
    assert localtime.local(utc(2000, 2, 29, 23, 59), utc0) == (2, 1439)


def test_rules_use_the_year_of_local_standard_time():
    """RFC 8536's all-year DST ("0/0,J365/25": on at January 1 00:00, off at 25:00 on
    December 31, which is January 1 00:00 again) is DST at every instant, the last hour of
    the year included. (glibc and Python's zoneinfo take the UTC year and show standard
    time in that hour.)"""
    tz = localtime.parse("XXX3YYY,0/0,J365/25")
    for y in (2023, 2024, 2025):
        for t in range(utc(y, 12, 31, 20), utc(y + 1, 1, 1, 6), 60):
            assert localtime.offset_s(t, tz) == -7200, t
        assert localtime.offset_s(utc(y, 7, 1), tz) == -7200


def test_unix_seconds_400_years_on_give_the_same_local_time():
    """Big ints (the ESP32's are above 2^30, so every unix time) are handled exactly."""
    rng = random.Random(5)
    for posix in (BERLIN, "AEST-10AEDT,M10.1.0,M4.1.0/3", "IST-5:30"):
        tz = localtime.parse(posix)
        for _ in range(300):
            t = rng.randrange(Y2024, Y2033)
            k = rng.choice((1, 2, 10**6, 2**40))
            assert localtime.local(t + k * CYCLE_S, tz) == localtime.local(t, tz)
            assert localtime.local(t - k * CYCLE_S, tz) == localtime.local(t, tz)


TZ_REFUSED = (
    (None, "bad_arg", "must be a string"),
    (3600, "bad_arg", "must be a string"),
    ("", "out_of_range", "length must be 1..64"),
    ("UTC0" + "x" * 61, "out_of_range", "length must be 1..64 (got 65)"),
    ("UT0", "bad_arg", "std name must be 3 or more letters"),
    ("0", "bad_arg", "std name"),
    ("<+5>-5", "bad_arg", "std name must have 3 or more characters"),
    ("<+05-5", "bad_arg", "'<' not closed"),
    ("<+0 5>-5", "bad_arg", "letters, digits, + and -"),
    ("UTC", "bad_arg", "offset expected after std name 'UTC'"),
    ("UTC+", "bad_arg", "std offset hours expected"),
    ("UTC25", "out_of_range", "std offset hours must be 0..24 (got 25)"),
    ("UTC0:60", "out_of_range", "std offset minutes must be 0..59"),
    ("UTC0:30:60", "out_of_range", "std offset seconds must be 0..59"),
    ("UTC0:", "bad_arg", "std offset minutes expected"),
    ("CET-1CEST", "bad_arg", "DST rule missing after 'CEST'"),
    ("EST5EDT", "bad_arg", "DST rule missing after 'EDT'"),
    ("CET-1CEST-25,M3.5.0,M10.5.0", "out_of_range", "dst offset hours must be 0..24"),
    ("CET-1CE,M3.5.0,M10.5.0", "bad_arg", "dst name must be 3 or more"),
    ("CET-1CEST;M3.5.0,M10.5.0", "bad_arg", "',' expected before the DST start rule"),
    ("CET-1CEST,M3.5.0", "bad_arg", "',' expected before the DST end rule"),
    ("CET-1CEST,M3.5.0,", "bad_arg", "end rule must be Mm.w.d, Jn or n"),
    ("CET-1CEST,X3,M10.5.0", "bad_arg", "start rule must be Mm.w.d, Jn or n"),
    ("CET-1CEST,M13.5.0,M10.5.0", "out_of_range", "start month must be 1..12 (got 13)"),
    ("CET-1CEST,M0.5.0,M10.5.0", "out_of_range", "start month must be 1..12 (got 0)"),
    ("CET-1CEST,M3.6.0,M10.5.0", "out_of_range", "start week must be 1..5 (got 6)"),
    ("CET-1CEST,M3.0.0,M10.5.0", "out_of_range", "start week must be 1..5 (got 0)"),
    ("CET-1CEST,M3.5.7,M10.5.0", "out_of_range", "start weekday (0=Sunday) must be 0..6"),
    ("CET-1CEST,M3.5,M10.5.0", "bad_arg", "'.' expected in start rule"),
    ("CET-1CEST,M3.5.0,M10", "bad_arg", "'.' expected in end rule"),
    ("CET-1CEST,M3.5.0,M10.5.", "bad_arg", "end weekday (0=Sunday) expected"),
    ("CET-1CEST,J0,J300", "out_of_range", "start day Jn must be 1..365 (got 0)"),
    ("CET-1CEST,J60,J366", "out_of_range", "end day Jn must be 1..365 (got 366)"),
    ("CET-1CEST,60,366", "out_of_range", "end day n must be 0..365 (got 366)"),
    ("CET-1CEST,M3.5.0/168,M10.5.0", "out_of_range", "start time hours must be 0..167"),
    ("CET-1CEST,M3.5.0,M10.5.0/-168", "out_of_range", "end time hours must be 0..167"),
    ("CET-1CEST,M3.5.0/,M10.5.0", "bad_arg", "start time hours expected"),
    ("CET-1CEST,M3.5.0/2:60,M10.5.0", "out_of_range", "start time minutes must be 0..59"),
    ("CET-1CEST,M3.5.0,M10.5.0/3x", "bad_arg", "unexpected 'x' at position 26"),
    ("CET-1CEST,M3.5.0,M10.5.0,", "bad_arg", "unexpected ','"),
    ("UTC0 ", "bad_arg", "dst name"),
)


@pytest.mark.parametrize("s,code,detail", TZ_REFUSED, ids=[repr(c[0]) for c in TZ_REFUSED])
def test_parse_refuses(s, code, detail):
    with pytest.raises(ValueError) as e:
        localtime.parse(s)
    msg = str(e.value)
    assert msg.startswith(code + ": tz "), msg
    assert detail in msg, msg


# -- schedule -------------------------------------------------------------------------------
def period(start, end, days="1234567", current_a=16.0):
    return {"start": start, "end": end, "days": days, "current_a": current_a}


MON, TUE, WED, THU, FRI, SAT, SUN = range(1, 8)


def hm(h, m=0):
    return h * 60 + m


def test_the_contract_example_parses():
    p = schedule.parse([period("22:00", "06:00")])
    assert p == ((0b1111111, 1320, 360, 160, 16.0),)
    assert schedule.parse([]) == ()
    assert schedule.current((), MON, 0) is None


def test_current_at_the_boundaries():
    p = schedule.parse(
        [
            period("08:00", "17:30", "12345", 10),
            period("22:00", "06:00", "5", 16.04),  # Friday night into Saturday
            period("20:00", "02:00", "7", 6),  # Sunday night into Monday
            period("18:00", "24:00", "3", 11.5),
            period("18:00", "00:00", "4", 12.5),  # wraps with nothing after midnight
        ][::-1]  # the order of the list does not matter
    )
    c = schedule.current
    # start minute included, end minute excluded
    assert c(p, MON, hm(7, 59)) is None
    assert c(p, MON, hm(8)) == 10.0
    assert c(p, MON, hm(17, 29)) == 10.0
    assert c(p, MON, hm(17, 30)) is None
    assert c(p, SAT, hm(10)) is None  # 08:00-17:30 is weekdays only
    # Friday 22:00-06:00 covers Saturday 00:00-06:00, not Friday's own early morning.
    assert c(p, FRI, hm(5)) is None
    assert c(p, FRI, hm(21, 59)) is None
    assert c(p, FRI, hm(22)) == 16.0
    assert c(p, FRI, hm(23, 59)) == 16.0
    assert c(p, SAT, hm(0)) == 16.0
    assert c(p, SAT, hm(5, 59)) == 16.0
    assert c(p, SAT, hm(6)) is None
    assert c(p, SAT, hm(22)) is None  # the period starts on Fridays only
    # Sunday 20:00-02:00 wraps into Monday morning (the week wraps too).
    assert c(p, SUN, hm(1)) is None
    assert c(p, SUN, hm(19, 59)) is None
    assert c(p, SUN, hm(20)) == 6.0
    assert c(p, MON, hm(0)) == 6.0
    assert c(p, MON, hm(1, 59)) == 6.0
    assert c(p, MON, hm(2)) is None
    assert c(p, TUE, hm(1)) is None
    # "24:00" ends at midnight; so does a wrap to "00:00".
    assert c(p, WED, hm(18)) == 11.5
    assert c(p, WED, hm(23, 59)) == 11.5
    assert c(p, THU, hm(0)) is None
    assert c(p, THU, hm(23, 59)) == 12.5
    assert c(p, FRI, hm(0)) is None
    assert type(c(p, MON, hm(8))) is float


def test_whole_day_and_zero_current():
    p = schedule.parse([period("00:00", "24:00", "6", 0), period("00:00", "24:00", "7", 80)])
    assert schedule.current(p, FRI, 1439) is None
    assert schedule.current(p, SAT, 0) == 0.0
    assert schedule.current(p, SAT, 1439) == 0.0
    assert schedule.current(p, SUN, 0) == 80.0
    assert schedule.current(p, MON, 0) is None


@pytest.mark.parametrize(
    "given,amps,deci",
    [
        (16.04, 16.0, 160),
        (16.05, 16.1, 161),
        (6, 6.0, 60),
        (0.04, 0.0, 0),
        (79.96, 80.0, 800),
        (80, 80.0, 800),
        (13.333, 13.3, 133),
    ],
)
def test_current_is_kept_to_one_decimal(given, amps, deci):
    p = schedule.parse([period("10:00", "11:00", "1", given)])
    assert p[0][3] == deci
    assert schedule.current(p, MON, hm(10)) == amps
    assert schedule.to_json(p)[0]["current_a"] == amps


def test_to_json_is_canonical_and_parses_back():
    given = [
        period("22:00", "06:00", "7531", 16.04),
        period("06:00", "24:00", "6", 7),
        period("18:00", "00:00", "2", 10.0),
    ]
    p = schedule.parse(given)
    out = schedule.to_json(p)
    assert out == [
        {"start": "22:00", "end": "06:00", "days": "1357", "current_a": 16.0},
        {"start": "06:00", "end": "24:00", "days": "6", "current_a": 7.0},
        {"start": "18:00", "end": "00:00", "days": "2", "current_a": 10.0},
    ]
    assert schedule.parse(json.loads(json.dumps(out))) == p
    assert schedule.to_json(()) == []


def covered(periods):
    """Reference model straight from the contract: {week minute: [period indexes]}."""
    seen = {}
    for i, e in enumerate(periods):
        s = int(e["start"][:2]) * 60 + int(e["start"][3:])
        t = int(e["end"][:2]) * 60 + int(e["end"][3:])
        for d in e["days"]:
            d = int(d) - 1
            if s < t:
                minutes = [d * 1440 + m for m in range(s, t)]
            else:  # the tail after midnight belongs to the start day
                minutes = [d * 1440 + m for m in range(s, 1440)]
                minutes += [(d + 1) % 7 * 1440 + m for m in range(t)]
            for m in minutes:
                seen.setdefault(m, []).append(i)
    return seen


def random_period(rng):
    s = rng.randrange(0, 24 * 4) * 15
    t = rng.randrange(0, 24 * 4 + 1) * 15
    days = "".join(rng.sample("1234567", rng.randint(1, 3)))
    return period(
        "%02d:%02d" % (s // 60, s % 60),
        "%02d:%02d" % (t // 60, t % 60),
        days,
        rng.randrange(0, 801) / 10,
    )


def test_current_and_overlap_check_agree_with_a_minute_by_minute_model():
    rng = random.Random(61851)
    accepted = refused = 0
    for _ in range(400):
        given = [random_period(rng) for _ in range(rng.randint(1, 4))]
        given = [e for e in given if e["start"] != e["end"]]
        seen = covered(given)
        overlap = any(len(v) > 1 for v in seen.values())
        if overlap:
            with pytest.raises(ValueError) as e:
                schedule.parse(given)
            assert str(e.value).startswith("bad_arg: periods "), e.value
            assert "overlap" in str(e.value)
            refused += 1
            continue
        p = schedule.parse(given)
        for m in range(7 * 1440):
            i = seen.get(m)
            want = None if i is None else round(given[i[0]]["current_a"], 1)
            assert schedule.current(p, m // 1440 + 1, m % 1440) == want, (given, m)
        accepted += 1
    assert accepted > 50 and refused > 50, (accepted, refused)


def test_24_periods_are_accepted():
    hours = [period("%02d:00" % h, "%02d:00" % (h + 1) if h < 23 else "24:00") for h in range(24)]
    p = schedule.parse(hours)
    assert len(p) == 24
    assert schedule.current(p, SUN, 1439) == 16.0


NOT_HHMM = ("7:00", "07:00:00", "0700", "07-00", 700, None, "ab:cd", "07:0x", "+7:00", " 7:00")
REFUSED = [
    ({"start": "22:00"}, "bad_arg", "periods must be a list"),
    (None, "bad_arg", "periods must be a list"),
    ("[]", "bad_arg", "periods must be a list"),
    ((period("22:00", "06:00"),), "bad_arg", "periods must be a list"),
    (
        [period("%02d:00" % (h % 24), "%02d:30" % (h % 24), str(h // 24 + 1)) for h in range(25)],
        "out_of_range",
        "at most 24 periods (got 25)",
    ),
    ([1], "bad_arg", "period 0 must be an object"),
    ([period("01:00", "02:00"), ["22:00"]], "bad_arg", "period 1 must be an object"),
    ([period("01:00", "02:00"), None], "bad_arg", "period 1 must be an object"),
    ([dict(period("01:00", "02:00"), phase=1)], "bad_arg", "period 0: unknown key 'phase'"),
    ([{"end": "06:00", "days": "1", "current_a": 6}], "bad_arg", "period 0: missing key 'start'"),
    ([{"start": "06:00", "days": "1", "current_a": 6}], "bad_arg", "period 0: missing key 'end'"),
    (
        [{"start": "06:00", "end": "07:00", "current_a": 6}],
        "bad_arg",
        "period 0: missing key 'days'",
    ),
    (
        [{"start": "06:00", "end": "07:00", "days": "1"}],
        "bad_arg",
        "period 0: missing key 'current_a'",
    ),
    ([period("24:00", "06:00")], "out_of_range", "period 0: start 24:00 must be 00:00..23:59"),
    ([period("23:60", "06:00")], "out_of_range", "period 0: start 23:60 must be 00:00..23:59"),
    ([period("25:00", "06:00")], "out_of_range", "period 0: start 25:00"),
    ([period("06:00", "24:01")], "out_of_range", "period 0: end 24:01 must be 00:00..24:00"),
    ([period("06:00", "24:30")], "out_of_range", "period 0: end 24:30"),
    ([period("06:00", "99:00")], "out_of_range", "period 0: end 99:00"),
    ([period("06:00", "06:00")], "bad_arg", "period 0: start equals end"),
    (
        [period("01:00", "02:00"), period("00:00", "00:00")],
        "bad_arg",
        "period 1: start equals end (a whole day is 00:00-24:00)",
    ),
]
REFUSED += [([period(v, "06:00")], "bad_arg", 'period 0: start must be "HH:MM"') for v in NOT_HHMM]
REFUSED += [([period("06:00", v)], "bad_arg", 'period 0: end must be "HH:MM"') for v in NOT_HHMM]
REFUSED += [
    ([period("01:00", "02:00", "")], "bad_arg", "period 0: days must be a string of digits 1-7"),
    ([period("01:00", "02:00", 1234567)], "bad_arg", "period 0: days must be a string"),
    ([period("01:00", "02:00", None)], "bad_arg", "period 0: days must be a string"),
    ([period("01:00", "02:00", ["1"])], "bad_arg", "period 0: days must be a string"),
    ([period("01:00", "02:00", "0")], "out_of_range", "period 0: day 0 must be 1..7 (1=Monday)"),
    ([period("01:00", "02:00", "128")], "out_of_range", "period 0: day 8 must be 1..7"),
    ([period("01:00", "02:00", "1123")], "bad_arg", "period 0: day 1 given twice"),
    ([period("01:00", "02:00", "1,2")], "bad_arg", "period 0: days must be digits 1-7, not ','"),
    ([period("01:00", "02:00", "Mo")], "bad_arg", "period 0: days must be digits 1-7, not 'M'"),
]
for bad_a in ("16", None, True, False, [16], {"a": 16}):
    REFUSED.append(
        ([period("01:00", "02:00", "1", bad_a)], "bad_arg", "period 0: current_a must be a number")
    )
for bad_a in (math.nan, math.inf, -math.inf, -0.1, 80.01, 81, 10**30, -1):
    REFUSED.append(
        (
            [period("01:00", "02:00", "1", bad_a)],
            "out_of_range",
            "period 0: current_a must be 0..80 (got ",
        )
    )
REFUSED += [
    # overlaps: the same minute of the same weekday in two periods
    (
        [period("08:00", "12:00", "1"), period("11:59", "13:00", "1")],
        "bad_arg",
        "periods 0 and 1 overlap on Monday at 11:59",
    ),
    (
        [period("08:00", "12:00", "135"), period("06:00", "09:00", "5")],
        "bad_arg",
        "periods 0 and 1 overlap on Friday at 08:00",
    ),
    (
        [period("22:00", "06:00", "5"), period("05:00", "07:00", "6")],
        "bad_arg",
        "periods 0 and 1 overlap on Saturday at 05:00",
    ),
    (
        [period("00:00", "01:00", "1"), period("23:00", "00:30", "7")],
        "bad_arg",
        "periods 0 and 1 overlap on Monday at 00:00",
    ),
    (
        [
            period("01:00", "02:00", "4"),
            period("23:00", "01:01", "3"),
            period("00:00", "24:00", "6"),
        ],
        "bad_arg",
        "periods 0 and 1 overlap on Thursday at 01:00",
    ),
    (
        [
            period("20:00", "10:00", "3"),
            period("12:00", "14:00", "3"),
            period("09:00", "11:00", "4"),
        ],
        "bad_arg",
        "periods 0 and 2 overlap on Thursday at 09:00",
    ),
    (
        [period("00:00", "24:00", "1234567"), period("12:00", "12:01", "7")],
        "bad_arg",
        "periods 0 and 1 overlap on Sunday at 12:00",
    ),
    (
        [period("22:00", "06:00", "1234567"), period("22:00", "06:00", "1")],
        "bad_arg",
        "periods 0 and 1 overlap on Monday at 22:00",
    ),
]


@pytest.mark.parametrize("periods,code,detail", REFUSED, ids=range(len(REFUSED)))
def test_set_schedule_refusals(periods, code, detail):
    with pytest.raises(ValueError) as e:
        schedule.parse(periods)
    msg = str(e.value)
    assert msg.startswith(code + ": "), msg
    assert detail in msg, msg


def test_touching_periods_do_not_overlap():
    p = schedule.parse(
        [
            period("22:00", "06:00", "5"),  # Friday night, tail on Saturday
            period("06:00", "22:00", "6", 10),
            period("22:00", "00:00", "6", 11),
            period("00:00", "01:00", "7", 12),
            period("23:00", "01:00", "7", 13),  # Sunday night into Monday 00:00-01:00
            period("01:00", "22:00", "1", 14),
        ]
    )
    got = [
        schedule.current(p, d, m)
        for d, m in (
            (SAT, 359),
            (SAT, 360),
            (SAT, 1319),
            (SAT, 1320),
            (SUN, 0),
            (SUN, 60),
            (SUN, 1380),
            (MON, 59),
            (MON, 60),
        )
    ]
    assert got == [16.0, 10.0, 10.0, 11.0, 12.0, None, 13.0, 13.0, 14.0]


# -- schedule and local time across DST -------------------------------------------------------
def minutes_in_force(p, tz, t0, t1):
    """UTC minutes (as "HH:MM" UTC) in [t0, t1) at which some period is in force."""
    out = []
    for t in range(t0, t1, 60):
        if schedule.current(p, *localtime.local(t, tz)) is not None:
            out.append("%02d:%02d" % (t // 3600 % 24, t // 60 % 60))
    return out


def test_periods_follow_the_wall_clock_across_dst():
    """Periods are wall-clock times. On the day DST starts (Berlin, 02:00 CET -> 03:00 CEST
    at 01:00 UTC) a period starting or ending in the skipped hour starts or ends at the jump,
    and one inside it does not happen. On the day DST ends (03:00 CEST -> 02:00 CET at 01:00
    UTC) each pass through the repeated hour is judged by its wall-clock reading."""
    tz = localtime.parse(BERLIN)
    spring = utc(2024, 3, 31)
    autumn = utc(2024, 10, 27)
    p = schedule.parse([period("02:30", "04:00", "7")])
    on = minutes_in_force(p, tz, spring, spring + 6 * 3600)
    assert on[0] == "01:00" and on[-1] == "01:59" and len(on) == 60  # 03:00-04:00 CEST
    inside = schedule.parse([period("02:10", "02:50", "7")])
    assert minutes_in_force(inside, tz, spring, spring + 6 * 3600) == []
    ends = schedule.parse([period("01:30", "02:30", "7")])
    assert minutes_in_force(ends, tz, spring, spring + 6 * 3600) == [
        "00:%02d" % m for m in range(30, 60)
    ]  # 01:30-02:00 CET, then the clock jumps past 02:30
    on = minutes_in_force(p, tz, autumn, autumn + 6 * 3600)
    # first pass 02:30-02:59 CEST (00:30-00:59 UTC), second pass 02:30 CET to 04:00 CET
    assert on == ["00:%02d" % m for m in range(30, 60)] + [
        "%02d:%02d" % (h, m) for h in (1, 2) for m in range(60) if (h, m) >= (1, 30)
    ]


# -- on the MicroPython unix port -------------------------------------------------------------
UNIX_PORT_SCRIPT = r"""
import sys
sys.path.insert(0, sys.argv[1])
import gc
import json
import micropython
from evse import localtime, schedule


def refusal(f, arg):
    try:
        f(arg)
    except ValueError as e:
        return str(e)
    return None


def no_alloc(p, tz, ts):
    # current() returns a stored float and offset_s() works in small ints: under a locked
    # heap any allocation would raise MemoryError.
    n = 0
    micropython.heap_lock()
    try:
        for t in ts:
            localtime.offset_s(t, tz)
        for d in range(1, 8):
            for m in range(1440):
                if schedule.current(p, d, m) is not None:
                    n += 1
    finally:
        micropython.heap_unlock()
    return n


def main():
    # One case per line, one answer per line: a 64 KB heap holds neither file whole.
    tzs, small, first = [], [], None
    with open(sys.argv[2]) as f:
        for line in f:
            c = json.loads(line)
            kind = c[0]
            if kind == "tz":
                tzs.append(localtime.parse(c[1]))
                out = None
            elif kind == "local":
                t, tz = c[1], tzs[c[2]]
                out = list(localtime.local(t, tz)) + [localtime.offset_s(t, tz)]
                if c[2] == 0 and -(1 << 60) < t < (1 << 60):
                    small.append(t)
            elif kind == "tz_refused":
                out = refusal(localtime.parse, c[1])
            elif kind == "sched":
                p = schedule.parse(c[1])
                first = first or p
                out = [schedule.to_json(p), [schedule.current(p, d, m) for d, m in c[2]]]
            else:
                out = refusal(schedule.parse, c[1])
            print(json.dumps(out))
            c = out = None
            gc.collect()
    print(json.dumps(["no_alloc_minutes", no_alloc(first, tzs[0], small), len(small)]))
    gc.collect()
    print(json.dumps(["mem_free", gc.mem_free()]))


main()
"""


def unix_port_cases():
    """[kind, ...] cases for UNIX_PORT_SCRIPT, with what CPython answers to each."""
    rng = random.Random(2024)
    tz_strings = [z[1] for z in ZONES] + list(EXOTIC) + ["XXX3YYY,0/0,J365/25"]
    cases = [["tz", s] for s in tz_strings]
    for i, s in enumerate(tz_strings):
        tz = localtime.parse(s)
        ts = []
        if tz[4] is not None:
            found = transitions(
                lambda t, tz=tz: localtime.offset_s(t, tz), Y2024, Y2024 + 400 * 86400
            )
            for t in found:
                ts += [t + d for d in (-61, -1, 0, 1, 60, 3599, 3600)]
        ts += [rng.randrange(-(2**34), 2**34) for _ in range(12)]
        # above the unix port's small ints (2^62): the big-int path, as on the ESP32
        ts += [
            rng.randrange(Y2024, Y2033) + rng.choice((1, -1)) * 2**33 * CYCLE_S for _ in range(4)
        ]
        cases += [["local", t, i] for t in ts]
    cases += [["tz_refused", r[0]] for r in TZ_REFUSED]
    queries = [
        [d, m]
        for d in range(1, 8)
        for m in (
            0,
            1,
            119,
            120,
            359,
            360,
            479,
            480,
            1049,
            1050,
            1079,
            1080,
            1199,
            1200,
            1319,
            1320,
            1439,
        )
    ]
    scheds = [
        [
            period("22:00", "06:00", "5", 16.04),
            period("20:00", "02:00", "7", 6),
            period("08:00", "17:30", "12345", 10),
            period("18:00", "24:00", "3", 11.5),
        ],
        [period("00:00", "24:00", "1234567", 32)],
        [],
    ]
    cases += [["sched", s, queries] for s in scheds]

    def in_json(v):  # JSON has no NaN, inf or tuple
        if isinstance(v, float):
            return math.isfinite(v)
        if isinstance(v, dict):
            return all(in_json(x) for x in v.values())
        if isinstance(v, list):
            return all(in_json(x) for x in v)
        return not isinstance(v, tuple)

    cases += [["sched_refused", r[0]] for r in REFUSED if in_json(r[0])]
    tzs = [localtime.parse(s) for s in tz_strings]

    def answer(c):
        if c[0] == "tz":
            return None
        if c[0] == "local":
            return [*localtime.local(c[1], tzs[c[2]]), localtime.offset_s(c[1], tzs[c[2]])]
        if c[0] == "sched":
            p = schedule.parse(c[1])
            return [schedule.to_json(p), [schedule.current(p, d, m) for d, m in c[2]]]
        f = localtime.parse if c[0] == "tz_refused" else schedule.parse
        try:
            f(c[1])
        except ValueError as e:
            return str(e)
        raise AssertionError("not refused on CPython: %r" % (c,))

    return cases, [answer(c) for c in cases]


def test_same_results_on_the_micropython_unix_port(tmp_path):
    assert os.path.exists(MICROPYTHON), "no unix port at %s: make venv libs" % MICROPYTHON
    cases, want = unix_port_cases()
    assert sum(c[0] == "local" for c in cases) > 300
    path = tmp_path / "cases.jsonl"
    path.write_text("".join(json.dumps(c) + "\n" for c in cases))
    r = subprocess.run(
        [MICROPYTHON, "-X", "heapsize=64k", "-c", UNIX_PORT_SCRIPT, FIRMWARE, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr
    lines = r.stdout.splitlines()
    got = [json.loads(x) for x in lines[: len(cases)]]
    bad = [(c, g, w) for c, g, w in zip(cases, got, want) if g != w]
    assert len(got) == len(cases) and not bad, "%d differ, first: %s" % (len(bad), bad[:5])
    name, minutes, n_small = json.loads(lines[len(cases)])
    # The first schedule covers 8 + 6 + 5 * 9.5 + 6 hours a week; all of it was looked up,
    # and offset_s() was run, with the heap locked.
    assert name == "no_alloc_minutes" and minutes == 60 * (8 + 6 + 5 * 9.5 + 6), lines
    assert n_small > 20
    print("unix port: %d cases, %s" % (len(cases), lines[-1]))
