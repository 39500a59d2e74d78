"""Tariffs (evse.tariff): set_tariff validation, a session's cost in integer millis rounded
once per component half up, the energy left under a cost cap, and the tariff on flash; the
same answers on the MicroPython unix port as on CPython."""

import json
import os
import random
import sys
from fractions import Fraction

import portrun
import pytest

from evse import tariff
from evse.store import Store

MICROPYTHON = portrun.MICROPYTHON
PRICES = ("energy_millis_per_kwh", "time_millis_per_h", "fee_millis", "idle_millis_per_h")


def T(currency="EUR", energy=0, time_h=0, fee=0, idle_h=0, grace_s=0):
    return {
        "currency": currency,
        "energy_millis_per_kwh": energy,
        "time_millis_per_h": time_h,
        "fee_millis": fee,
        "idle_millis_per_h": idle_h,
        "idle_grace_s": grace_s,
    }


def cost(t, wh=0, charging_s=0, idle_s=0):
    return tariff.cost(tariff.parse(t), wh, charging_s, idle_s)


# -- parse ----------------------------------------------------------------------------------
def test_parse_normalizes_and_defaults_missing_prices_to_0():
    assert tariff.parse({"currency": "EUR", "energy_millis_per_kwh": 35000}) == T(energy=35000)
    full = T("CHF", 1, 2, 3, 4, 5)
    assert tariff.parse(full) == full and tariff.parse(full) is not full
    # the command itself may be passed: its envelope is not a price
    assert tariff.parse(dict(full, rid="r1", cmd="set_tariff")) == full
    top = T("IDR", 10**9, 10**9, 10**9, 10**9, 86400)
    assert tariff.parse(top) == top


REFUSED = [
    ([1], "bad_arg", "tariff must be an object"),
    ({}, "bad_arg", "currency must be 3 capital letters"),
    ({"energy_millis_per_kwh": 1}, "bad_arg", "currency must be"),
    (T(None), "bad_arg", "currency must be"),
    (T("eur"), "bad_arg", "currency must be"),
    (T("EU"), "bad_arg", "currency must be"),
    (T("EURO"), "bad_arg", "currency must be"),
    (T("E1R"), "bad_arg", "currency must be"),
    (T("EU\u00c4"), "bad_arg", "currency must be"),
    (T(978), "bad_arg", "currency must be"),
    (dict(T(), energy_milis_per_kwh=1), "bad_arg", "unknown key 'energy_milis_per_kwh'"),
    (T(grace_s=86401), "out_of_range", "idle_grace_s must be 0..86400"),
    (T(grace_s=-1), "out_of_range", "idle_grace_s must be 0..86400"),
]
for _k in PRICES + ("idle_grace_s",):
    for _v in (True, False, 1.0, 0.5, "1", None, [1]):
        REFUSED.append((dict(T(), **{_k: _v}), "bad_arg", "%s must be an integer" % _k))
for _k in PRICES:
    for _v in (-1, 10**9 + 1, 2**64):
        REFUSED.append((dict(T(), **{_k: _v}), "out_of_range", "%s must be 0..1000000000" % _k))


@pytest.mark.parametrize("obj,code,detail", REFUSED, ids=range(len(REFUSED)))
def test_parse_refusals(obj, code, detail):
    """Break: drop the bool test -> True is taken as 1; drop the unknown-key test -> a typo
    prices energy at 0."""
    with pytest.raises(ValueError) as e:
        tariff.parse(obj)
    assert e.value.args[0] == code, e.value.args
    assert detail in e.value.args[1], e.value.args


# -- cost -----------------------------------------------------------------------------------
def parts(c):
    return (
        c["energy_millis"],
        c["time_millis"],
        c["fee_millis"],
        c["idle_millis"],
        c["total_millis"],
    )


def test_cost_by_hand():
    # 11 kWh at 0.35 EUR/kWh = 3.85 EUR = 385 cents = 385 000 millis
    c = cost(T(energy=35000), wh=11000)
    assert c == {
        "currency": "EUR",
        "total_millis": 385000,
        "energy_millis": 385000,
        "time_millis": 0,
        "fee_millis": 0,
        "idle_millis": 0,
    }
    # 3 400 s at 1 200 millis/h = 1 133.33 -> 1 133
    assert parts(cost(T(time_h=1200), charging_s=3400)) == (0, 1133, 0, 0, 1133)
    # everything at once; the total is the sum of the rounded parts
    c = cost(T("EUR", 35000, 1200, 500, 6000, 600), 11000, 3400, 1500)
    assert parts(c) == (385000, 1133, 500, 1500, 388133)
    assert all(type(v) is int for k, v in c.items() if k != "currency")


@pytest.mark.parametrize(
    "t,wh,charging_s,want",
    [
        # half up, each component on its own
        (T(energy=500), 1, 0, 1),  # 0.5 -> 1
        (T(energy=499), 1, 0, 0),  # 0.499 -> 0
        (T(energy=501), 1, 0, 1),
        (T(energy=500), 3, 0, 2),  # 1.5 -> 2
        (T(energy=500), 5, 0, 3),  # 2.5 -> 3 (banker's rounding would give 2)
        (T(energy=1), 1499, 0, 1),  # 1.499 -> 1
        (T(energy=1), 1500, 0, 2),  # 1.5 -> 2
        (T(time_h=600), 0, 3, 1),  # 0.5 -> 1
        (T(time_h=1799), 0, 1, 0),  # 0.4997 -> 0
        (T(time_h=1800), 0, 1, 1),  # 0.5 -> 1
        (T(time_h=1800), 0, 5, 3),  # 2.5 -> 3
        (T(time_h=3600), 0, 3599, 3599),
    ],
)
def test_each_component_rounds_once_half_up(t, wh, charging_s, want):
    """Break: `+ 499` for `+ 500` (or `+ 1799` for `+ 1800`) -> every exact half rounds
    down; Python's round() -> 2.5 becomes 2."""
    c = cost(t, wh, charging_s)
    assert c["energy_millis"] + c["time_millis"] == want == c["total_millis"]


def test_idle_fee_counts_only_the_seconds_beyond_the_grace():
    """Break: idle billed from 0 s -> 600 s within the grace cost 1000."""
    t = T(idle_h=6000, grace_s=600)
    assert cost(t, idle_s=0)["idle_millis"] == 0
    assert cost(t, idle_s=600)["idle_millis"] == 0  # within (up to) the grace
    assert cost(t, idle_s=601)["idle_millis"] == 2  # 1 s at 6000/h = 1.67 -> 2
    assert cost(t, idle_s=600 + 1800)["idle_millis"] == 3000
    assert cost(T(idle_h=1800, grace_s=10), idle_s=11)["idle_millis"] == 1  # 0.5 -> 1
    assert cost(T(idle_h=6000), idle_s=600)["idle_millis"] == 1000  # no grace


def test_zero_tariff_and_fee_only():
    assert parts(cost(T(), 10**7, 10**6, 10**6)) == (0, 0, 0, 0, 0)
    # the fee is per session, even one that delivered nothing
    assert parts(cost(T(fee=250000), 0, 0, 0)) == (0, 0, 250000, 0, 250000)


def test_negative_inputs_count_as_zero():
    """A meter swapped mid-session can give a negative difference: never a credit."""
    assert parts(cost(T("EUR", 35000, 1200, 0, 6000), -5, -1, -100)) == (0, 0, 0, 0, 0)


def test_cost_is_exact_for_large_sessions():
    # 1 GWh at the highest price: 10^15 millis, exact (a float would be off by ~0.1 here)
    c = cost(T(energy=10**9 - 1), 10**6)
    assert c["energy_millis"] == (10**6 * (10**9 - 1) + 500) // 1000 == 999999999000
    c = cost(T(time_h=10**9 - 7), 0, 10**8)
    assert c["time_millis"] == 27777777583333  # 27 777 777 583 333.33


def test_cost_matches_exact_fractions():
    """Every component equals the exact price rounded half up, and the total is their sum.
    Break: round the total instead of the parts -> the parts no longer add up."""
    rng = random.Random(3)
    half = Fraction(1, 2)
    for _ in range(3000):
        t = T(
            "EUR",
            *(rng.choice([0, 1, 499, 500, 1800, rng.randrange(10**9 + 1)]) for _ in range(4)),
            rng.randrange(3600),
        )
        wh, cs, idle = (rng.randrange(200000) for _ in range(3))
        c = cost(t, wh, cs, idle)
        idle_b = max(0, idle - t["idle_grace_s"])
        assert c["energy_millis"] == int(Fraction(wh * t["energy_millis_per_kwh"], 1000) + half)
        assert c["time_millis"] == int(Fraction(cs * t["time_millis_per_h"], 3600) + half)
        assert c["idle_millis"] == int(Fraction(idle_b * t["idle_millis_per_h"], 3600) + half)
        assert c["fee_millis"] == t["fee_millis"]
        assert c["total_millis"] == sum(parts(c)[:4])


# -- the energy left under a cost cap ---------------------------------------------------------
def test_max_energy_by_hand():
    t = tariff.parse(T(energy=35000))
    # 385 000 at 35 000/kWh is exactly 11 000 Wh; 11 001 Wh would cost 385 035
    assert tariff.max_energy_wh(t, 385000, 0) == 11000
    assert tariff.max_energy_wh(t, 385034, 0) == 11000
    # 11 001 Wh cost exactly 385 035
    assert tariff.max_energy_wh(t, 385035, 0) == 11001
    assert tariff.max_energy_wh(t, 385500, 500) == 11000  # the fee comes off first
    assert tariff.max_energy_wh(t, 0, 0) == 0
    assert tariff.max_energy_wh(t, 100, 200) == 0  # over budget already: stop now
    # 1 millis/kWh: 499 Wh still round to 0 millis
    assert tariff.max_energy_wh(tariff.parse(T(energy=1)), 0, 0) == 499
    assert tariff.max_energy_wh(tariff.parse(T(time_h=5)), 10, 0) is None  # energy is free


def test_max_energy_is_exactly_the_cap():
    """At the returned energy the session's cost is within the budget, one Wh more is over.
    Break: `+ 500` for `+ 499` -> one Wh too many at exact halves; floor division of the
    budget by the price alone -> up to 0.5 millis of budget unused."""
    rng = random.Random(11)
    n = 0
    for _ in range(20000):
        t = tariff.parse(
            T(
                "EUR",
                rng.choice(
                    [1, 2, 3, 7, 499, 500, 1000, 35000, 999983, rng.randrange(1, 10**9 + 1)]
                ),
                rng.randrange(5000),
                rng.randrange(1000),
                rng.randrange(5000),
                rng.randrange(600),
            )
        )
        cs, idle = rng.randrange(20000), rng.randrange(5000)
        c0 = tariff.cost(t, 0, cs, idle)
        other = c0["total_millis"]
        budget = other + rng.choice([0, 1, rng.randrange(10**6), rng.randrange(10**9)])
        e = tariff.max_energy_wh(t, budget, other)
        assert tariff.cost(t, e, cs, idle)["total_millis"] <= budget
        assert tariff.cost(t, e + 1, cs, idle)["total_millis"] > budget
        n += e > 0
    assert n > 10000


# -- flash ----------------------------------------------------------------------------------
def test_save_and_load(tmp_path):
    s = Store(str(tmp_path))
    assert tariff.load(s) == (None, False)
    t = T("EUR", 35000, 1200, 500, 6000, 600)
    tariff.save(s, dict(t, rid="r9", cmd="set_tariff"))
    assert json.loads((tmp_path / "tariff.json").read_text()) == t
    assert tariff.load(s) == (t, False)
    with pytest.raises(ValueError):
        tariff.save(s, dict(t, fee_millis=-1))
    assert tariff.load(s) == (t, False)


@pytest.mark.parametrize(
    "content",
    [
        "",
        "{",
        "[]",
        "null0",
        '{"currency": "EUR", "fee_millis": -1}',
        '"EUR"',
        '{"currency": "EUR", "fee_millis": 1.5}',
        '{"fee_millis": 1}',
    ],
)
def test_a_corrupt_file_is_no_tariff_and_a_flag(tmp_path, content):
    """Break: return the decoded file unchecked -> a negative fee would be billed."""
    (tmp_path / "tariff.json").write_text(content)
    assert tariff.load(Store(str(tmp_path))) == (None, True)


# -- on the MicroPython unix port ---------------------------------------------------------
PORT_SCRIPT = r"""
import sys
sys.path.insert(0, sys.argv[1])
import gc
import json
from evse import tariff
from evse.store import Store


def main():
    store = Store(sys.argv[2])
    with open(sys.argv[3]) as f:
        for line in f:
            c = json.loads(line)
            try:
                if c[0] == "parse":
                    out = tariff.parse(c[1])
                elif c[0] == "cost":
                    out = tariff.cost(tariff.parse(c[1]), c[2], c[3], c[4])
                elif c[0] == "max":
                    out = tariff.max_energy_wh(tariff.parse(c[1]), c[2], c[3])
                elif c[0] == "save":
                    out = tariff.save(store, c[1])
                else:
                    out = list(tariff.load(store))
            except ValueError as e:
                out = ["err", e.args[0], e.args[1]]
            # sorted keys: the unix port's dicts keep no insertion order
            print(json.dumps(out if not isinstance(out, dict) else sorted(out.items())))
            c = out = None
            gc.collect()


main()
"""


def port_cases():
    rng = random.Random(5)
    cases = [["parse", r[0]] for r in REFUSED if r[0] is not None]
    cases += [
        ["load"],
        ["save", T("EUR", 35000, 1200, 500, 6000, 600)],
        ["load"],
        ["save", T(fee=-1)],
        ["load"],
    ]
    hand = [
        (T(energy=35000), 11000, 0, 0),
        (T(time_h=1200), 0, 3400, 0),
        (T(energy=500), 5, 0, 0),
        (T(time_h=1800), 0, 5, 0),
        (T(idle_h=6000, grace_s=600), 0, 0, 601),
        (T(idle_h=6000, grace_s=600), 0, 0, 600),
        (T(), 10**7, 10**6, 10**6),
        (T(energy=10**9 - 1), 10**6, 0, 0),  # big ints on the ESP32 (beyond 2^30)
        (T("EUR", 35000, 1200, 500, 6000, 600), 11000, 3400, 1500),
    ]
    cases += [["cost", t, wh, cs, idle] for t, wh, cs, idle in hand]
    for _ in range(300):
        t = T(
            "EUR",
            *(rng.choice([0, 500, rng.randrange(10**9 + 1)]) for _ in range(4)),
            rng.randrange(3600),
        )
        cases.append(["cost", t, rng.randrange(10**6), rng.randrange(10**5), rng.randrange(10**5)])
        cases.append(["max", t, rng.randrange(10**9), rng.randrange(10**5)])
    return cases


def run_port_script(interpreter, tmp_path, name, cases):
    return portrun.run_port_script(interpreter, tmp_path, name, cases, PORT_SCRIPT, "64k", 120)


def test_same_results_on_the_micropython_unix_port(tmp_path):
    assert os.path.exists(MICROPYTHON), "no unix port at %s: make venv libs" % MICROPYTHON
    cases = port_cases()
    want = run_port_script(sys.executable, tmp_path, "cpython", cases)
    got = run_port_script(MICROPYTHON, tmp_path, "unix", cases)
    assert len(got) == len(want) == len(cases)
    bad = [(c, g, w) for c, g, w in zip(cases, got, want) if g != w]
    assert not bad, "%d differ, first: %s" % (len(bad), bad[:3])
    # positive evidence, from the CPython side: refusals, hand values, a saved tariff
    assert sum(w[0] == "err" for w in want if isinstance(w, list) and w) == len(REFUSED) + 1
    i = cases.index(["cost", T(energy=35000), 11000, 0, 0])
    assert dict(want[i])["total_millis"] == 385000
    assert dict(want[i + 1])["total_millis"] == 1133
    assert want[len(REFUSED)] == [None, False] and want[len(REFUSED) + 2][1] is False
