"""Control pilot layer 1: classify CP samples into states A-F, debounce, duty <-> current."""

from evse.compat import const

# States are one-letter strings: cheap to compare, readable in status and logs.
A = "A"
B = "B"
C = "C"
D = "D"
E = "E"
F = "F"

# Consecutive agreeing samples before a new state is accepted. Two samples suppress a
# single-sample glitch (as chargebyte does) and, at a 5 ms loop, keep C->B detection
# around 10 ms: the contactor must be open within 100 ms (IEC 61851-1 Table A.6 seq. 8.1).
_CONFIRM = const(2)

# The diode check: with PWM on, the low level must be about -12 V; Tinkerforge flags a
# fault above -10 V. IEC 61851-1 (quoted in SmartEVSE #83) requires it before closing.
DIODE_MAX_LOW_MV = const(-10000)


def classify(high_mv, prev):
    """CP+ level (mV) -> state, with the hysteresis gaps of IEC 61851-1 Table A.4
    (chargebyte's implementation) resolved by the previous state."""
    if high_mv > 13000:
        return E  # above the A band: a broken generator or divider, never "no EV"
    if high_mv >= 11000:
        return A
    if high_mv >= 10000:
        return A if prev == A else B
    if high_mv >= 8000:
        return B
    if high_mv >= 7000:
        return B if prev in (A, B) else C
    if high_mv >= 5000:
        return C
    if high_mv >= 4000:
        return C if prev in (A, B, C) else D
    if high_mv >= 2000:
        return D
    if high_mv >= -2000:
        return E  # CP shorted to PE (chargebyte tolerates -2..-1 V too)
    return F


class Detector:
    """Debounced CP state from raw (high_mv, low_mv) samples."""

    def __init__(self):
        self.state = A
        self._candidate = A
        self._count = 0
        self.high_mv = 0
        self.low_mv = 0

    def feed(self, high_mv, low_mv):
        self.high_mv = high_mv
        self.low_mv = low_mv
        s = classify(high_mv, self.state)
        if s == self.state:
            self._count = 0
            return self.state
        if s != self._candidate:
            self._candidate = s
            self._count = 1
        else:
            self._count += 1
        if self._count >= _CONFIRM:
            self.state = s
            self._count = 0
        return self.state

    def diode_ok(self):
        """Only meaningful while PWM is on (the low half-wave exists only then)."""
        return self.low_mv <= DIODE_MAX_LOW_MV


MIN_CURRENT_A = 6.0  # below 6 A there is no valid duty: pause in X1 (IEC 61851-1 §A.5)
MAX_CURRENT_A = 80.0


def duty_pct(current_a):
    """Duty (%) that offers current_a (IEC 61851-1 Table A.7), or None below 6 A (X1)."""
    if current_a is None or current_a < MIN_CURRENT_A:
        return None
    if current_a <= 51.0:
        return current_a / 0.6
    if current_a < 52.5:
        return 85.0  # the norm's gap between the two ranges: clamp to 51 A as EVerest does
    if current_a > MAX_CURRENT_A:
        current_a = MAX_CURRENT_A
    return current_a / 2.5 + 64.0


def duty_u16(current_a):
    """duty_pct as the 16-bit value a PWM peripheral takes (MicroPython's duty_u16)."""
    pct = duty_pct(current_a)
    if pct is None:
        return None
    return int(pct * 65535 / 100 + 0.5)


def offered_a(du16):
    """The current a duty_u16 offers, as the EV reads it, rounded to 0.1 A."""
    if du16 is None:
        return 0.0
    # Round to 0.01 % (finer than any PWM peripheral here) so 85 % reads as 51 A, not 52.5.
    pct = int(du16 * 10000 / 65535 + 0.5) / 100
    if pct < 8.0 or pct > 97.0:
        return 0.0
    if pct < 10.0:
        a = 6.0
    elif pct <= 85.0:
        a = pct * 0.6
    elif pct <= 96.0:
        a = (pct - 64.0) * 2.5
    else:
        a = 80.0
    return int(a * 10 + 0.5) / 10
