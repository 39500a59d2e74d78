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


# -- one CP sample from tagged ADC reads (both boards, boards/esp32_devkitc/README.md) --------
# A board cannot trigger its ADC from the PWM edge, so it tags every read with the level of
# its PWM output pin, read just before and just after the conversion: TAG_HIGH, TAG_LOW, or
# an edge inside the read (the pin changed, the CP was slewing: the read is dropped).
TAG_LOW = const(0)
TAG_HIGH = const(3)  # pin high before (bit 0) and after (bit 1) the read
# Synchronous acquisition: after the pin enters a phase, wait GUARD_US (the CP's rise or fall,
# < 13 us, IEC 61851-1 Table A.2, plus the measurement filter) before the first read.
GUARD_US = const(15)
READS_MIN = const(3)  # a median of 3 outvotes one ADC spike
READS_MAX = const(5)  # reads per phase, per PWM period; more adds time, not robustness
PERIODS_MAX = const(4)  # at 5 % duty one read fits per high phase: 3 periods (+1 spare)


def median_mv(vals, tags, n, tag, scratch=None):
    """Median of the first n reads whose tag is `tag` (edge reads never match), or None.
    `scratch` (len >= n) holds the chosen reads, so a board allocates nothing per sample."""
    if scratch is None:
        scratch = [0] * n
    k = 0
    for i in range(n):
        if tags[i] == tag:
            v = vals[i]
            j = k
            while j > 0 and scratch[j - 1] > v:  # insertion sort: at most 20 reads
                scratch[j] = scratch[j - 1]
                j -= 1
            scratch[j] = v
            k += 1
    if not k:
        return None
    if k & 1:
        return scratch[k // 2]
    return (scratch[k // 2 - 1] + scratch[k // 2]) // 2


def levels(vals, tags, n, pwm, last_high, last_low, scratch=None):
    """(high_mv, low_mv) of one CP sample from n tagged reads: the median of the reads taken
    wholly in the high phase and of those wholly in the low phase, so one ADC spike never
    sets a level (the old top-3 average let a single spike fake a state). With a constant
    output (pwm false: +12 V, -12 V or off) there is one level: the median of the clean
    reads, reported as both. A level without any clean read keeps its last value."""
    hi = median_mv(vals, tags, n, TAG_HIGH, scratch)
    lo = median_mv(vals, tags, n, TAG_LOW, scratch)
    if not pwm:
        v = hi if lo is None else (lo if hi is None else None)
        if v is None:
            # Both tags in a constant-output sample: the output changed during the window.
            v = last_high if last_high is not None else hi
        return v, v
    return (last_high if hi is None else hi), (last_low if lo is None else lo)


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
# A pause below 6 A ends only at this limit or more: one amp of hysteresis, so a limit
# hovering around 6 A does not cycle the contactor (evse/connector.py, evse/balance.py).
RESUME_A = 7.0
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
