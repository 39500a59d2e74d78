"""Proximity pilot (Type 2 socket): cable coding resistor -> cable ampacity."""

# (min ohms, max ohms, amps): EVerest bring-up guide's accept windows for IEC 62196-2 coding.
_BANDS = (
    (80, 140, 63.0),
    (164, 308, 32.0),
    (400, 936, 20.0),
    (1100, 2460, 13.0),
)


def cable_a(ohms):
    """Ampacity of the plugged cable; 0.0 when the reading is invalid (no charge).
    Between two bands the lower ampacity applies; below 60 or above 4.5 kOhm is an error."""
    if ohms is None or ohms < 60 or ohms > 4500:
        return 0.0
    lower = 0.0
    for lo, hi, amps in _BANDS:
        if lo <= ohms <= hi:
            return amps
        if ohms > hi:
            lower = amps
        else:
            # ohms lies in the gap before this band: the next (higher-ohm) band is lower.
            return amps
    return lower
