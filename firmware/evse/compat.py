"""Small shims so the pure core runs unchanged on MicroPython and on CPython (unit tests)."""

try:
    from micropython import const  # noqa: F401
except ImportError:

    def const(x):
        return x


try:
    from time import ticks_add, ticks_diff, ticks_ms, ticks_us  # noqa: F401
except ImportError:
    import time as _time

    _PERIOD = 1 << 30

    def ticks_ms():
        return int(_time.monotonic() * 1000) & (_PERIOD - 1)

    def ticks_us():
        return int(_time.monotonic() * 1000000) & (_PERIOD - 1)

    def ticks_diff(a, b):
        d = (a - b) & (_PERIOD - 1)
        return d - _PERIOD if d >= _PERIOD // 2 else d

    def ticks_add(a, d):
        return (a + d) & (_PERIOD - 1)
