"""Session prices (set_tariff) and a session's cost, in integer millis of the currency.

Money is integer "millis", 1/1000 of the currency's minor unit (0.35 EUR/kWh is 35000), and
every computation is in integers: the ESP32's MicroPython floats are single precision (24-bit
mantissa), so a float cannot even hold 11 kWh at 0.35 EUR/kWh (385 000 000 before the
division) exactly.

Rounding rule. Each component is computed as one exact integer fraction and rounded once, to
whole millis, half up:
    energy_millis = (energy_wh * energy_millis_per_kwh + 500) // 1000
    time_millis   = (charging_s * time_millis_per_h + 1800) // 3600
    idle_millis   = (max(0, idle_s - idle_grace_s) * idle_millis_per_h + 1800) // 3600
    fee_millis    = fee_millis (once per session)
    total_millis  = energy_millis + time_millis + fee_millis + idle_millis
Rounding once at the end, not per meter reading or per minute, keeps each component within
half a milli of the exact price however long the session; the total is the sum of the
rounded parts, so the breakdown sent to the backend always adds up to the total.

Price bounds: at most 10^9 millis (per kWh, per hour, per session): enough for currencies
with many minor units per kWh (2 500 IDR/kWh is 250 000 000), and below 2^30, so a price
stays a small int on the ESP32. idle_grace_s at most 86 400 (one day).
"""

from evse.compat import const

FILE = "tariff.json"
_MAX_PRICE = const(1000000000)
_MAX_GRACE_S = const(86400)
_PRICES = (
    "energy_millis_per_kwh",
    "time_millis_per_h",
    "fee_millis",
    "idle_millis_per_h",
    "idle_grace_s",
)
_ENVELOPE = ("rid", "cmd")  # the command's own keys, when the whole command is passed


def _currency(v):
    if isinstance(v, str) and len(v) == 3:
        for c in v:
            if not "A" <= c <= "Z":
                break
        else:
            return v
    raise ValueError("bad_arg", 'currency must be 3 capital letters (ISO 4217, as "EUR")')


def parse(obj):
    """set_tariff's arguments -> normalized tariff dict (missing prices are 0).

    Raises ValueError(code, detail), code "bad_arg" or "out_of_range"."""
    if not isinstance(obj, dict):
        raise ValueError("bad_arg", "tariff must be an object")
    for k in obj:
        if k != "currency" and k not in _PRICES and k not in _ENVELOPE:
            # a misspelt price would otherwise read as 0, i.e. free charging
            raise ValueError("bad_arg", "unknown key '%s'" % k)
    out = {"currency": _currency(obj.get("currency"))}
    for k in _PRICES:
        v = obj.get(k, 0)
        # bool is an int in Python, not in JSON; a float is refused rather than rounded.
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError("bad_arg", "%s must be an integer" % k)
        top = _MAX_GRACE_S if k == "idle_grace_s" else _MAX_PRICE
        if not 0 <= v <= top:
            raise ValueError("out_of_range", "%s must be 0..%d" % (k, top))
        out[k] = v
    return out


def cost(tariff, energy_wh, charging_s, idle_s):
    """The session's cost, by the rounding rule above; negative inputs count as 0."""
    energy_wh = max(0, int(energy_wh))
    charging_s = max(0, int(charging_s))
    idle_s = max(0, int(idle_s) - tariff["idle_grace_s"])
    energy = (energy_wh * tariff["energy_millis_per_kwh"] + 500) // 1000
    time_m = (charging_s * tariff["time_millis_per_h"] + 1800) // 3600
    idle = (idle_s * tariff["idle_millis_per_h"] + 1800) // 3600
    fee = tariff["fee_millis"]
    return {
        "currency": tariff["currency"],
        "total_millis": energy + time_m + fee + idle,
        "energy_millis": energy,
        "time_millis": time_m,
        "fee_millis": fee,
        "idle_millis": idle,
    }


def max_energy_wh(tariff, budget_millis, other_millis):
    """The largest session energy (Wh) whose energy_millis, added to other_millis (the
    session's fee + time + idle so far: cost's total_millis - energy_millis), stays within
    budget_millis; None when energy is free (energy never reaches the cap). Never negative:
    0 when nothing more fits.

    Exact: with R = budget - other, round_half_up(E * p / 1000) <= R holds iff
    E * p + 500 < 1000 * (R + 1), i.e. E <= (1000 * R + 499) / p. So cost() at the returned
    E is within the budget and at E + 1 Wh it is over. The time part grows while charging:
    recompute as other_millis changes."""
    p = tariff["energy_millis_per_kwh"]
    if not p:
        return None
    r = budget_millis - other_millis
    if r < 0:
        return 0
    return (r * 1000 + 499) // p


def load(store):
    """(tariff or None, corrupt): no file is no tariff; an unreadable or invalid one is no
    tariff too, with corrupt True so the caller can raise an event."""
    try:
        saved = store.read_json(FILE)
        if saved is None:
            return None, False
        return parse(saved), False
    except (ValueError, OSError):
        return None, True


def clear(store):
    """No tariff any more: the file goes (an absent file is no tariff)."""
    import os

    try:
        os.remove(store.path(FILE))
    except OSError:
        if store.read_json(FILE) is not None:
            raise


def save(store, tariff):
    """Atomic write of the (re-validated) tariff; OSError if the flash write fails."""
    store.write_json(FILE, parse(tariff))
