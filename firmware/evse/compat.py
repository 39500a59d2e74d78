"""Small shims so the pure core runs unchanged on MicroPython and on CPython (unit tests)."""

try:
    from micropython import const  # noqa: F401
except ImportError:

    def const(x):
        return x


def _cpython_ticks():
    import time

    period = 1 << 30

    def ticks_ms():
        return int(time.monotonic() * 1000) & (period - 1)

    def ticks_us():
        return int(time.monotonic() * 1000000) & (period - 1)

    def ticks_diff(a, b):
        d = (a - b) & (period - 1)
        return d - period if d >= period // 2 else d

    def ticks_add(a, d):
        return (a + d) & (period - 1)

    return ticks_add, ticks_diff, ticks_ms, ticks_us


try:
    # The simulated board's ticks wrap at 2^30 as the ESP32's do (the unix port's wrap at
    # 2^62, never), starting just before the wrap so every simulated run crosses it.
    from sim_ticks import ticks_add, ticks_diff, ticks_ms, ticks_us  # noqa: F401
except ImportError:
    try:
        from time import ticks_add, ticks_diff, ticks_ms, ticks_us  # noqa: F401
    except ImportError:
        ticks_add, ticks_diff, ticks_ms, ticks_us = _cpython_ticks()


def age_cap(now, t, cap):
    """t, or the time `cap` ms before now if t is older than that (None stays None).

    ticks wrap (every 2^30 ms on the ESP32) and ticks_diff is right only within 2^29 ms
    (6.2 days): a stamp kept longer reads as recent again. Passing each stored stamp
    through this every loop keeps its age at most `cap` (beyond any window it is compared
    with), so a comparison made after days or years still sees it as old."""
    if t is not None and ticks_diff(now, t) > cap:
        return ticks_add(now, -cap)
    return t
