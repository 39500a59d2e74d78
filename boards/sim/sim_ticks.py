"""ESP32 ticks for the simulated board: ticks_ms and ticks_us wrap at 2^30 as they do on
the ESP32 (the unix port's wrap at 2^62: never), and both start shortly before the wrap
(EVSE_TICKS_WRAP_MS after boot, default 2000) so every simulated run crosses it.

evse.compat picks this module up when it is on the path (only the sim board's folder
has it); on a real board the port's own ticks are used."""

import os
import time

from micropython import const

_PERIOD = const(0x40000000)
_MASK = const(0x3FFFFFFF)
_HALF = const(0x20000000)

try:
    _lead_ms = int(os.getenv("EVSE_TICKS_WRAP_MS") or 2000)
except ValueError:
    _lead_ms = 2000
_off_ms = (_PERIOD - _lead_ms - time.ticks_ms()) & _MASK
_off_us = (_PERIOD - _lead_ms * 1000 - time.ticks_us()) & _MASK


def ticks_ms():
    return (time.ticks_ms() + _off_ms) & _MASK


def ticks_us():
    return (time.ticks_us() + _off_us) & _MASK


def ticks_diff(a, b):
    d = (a - b) & _MASK
    return d - _PERIOD if d >= _HALF else d


def ticks_add(a, d):
    return (a + d) & _MASK
