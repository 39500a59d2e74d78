"""Residual-current (6 mA DC) monitor: trip detection and a non-blocking self-test."""

from evse.compat import const

IDLE = 0
TESTING = 1  # test current injected, waiting for the detector to trip
RELEASING = 2  # test current removed, waiting for the detector to release
PASSED = 3
FAILED = 4

# esp32-evse expects the detector's answer to its test pulse within 500 ms.
_TEST_TIMEOUT_MS = const(500)


class RcdSelfTest:
    """Drive the test output, expect a trip, release, expect the trip to clear."""

    def __init__(self, hal):
        self._hal = hal
        self.state = IDLE
        self._t0 = 0

    def start(self, now_ms):
        if self._hal.rcd_test is None:
            self.state = PASSED  # a board without a test winding cannot self-test
            return
        if self._hal.rcd_tripped():
            self.state = FAILED  # residual current still present or detector stuck
            return
        self._hal.rcd_test(True)
        self.state = TESTING
        self._t0 = now_ms

    def step(self, now_ms, ticks_diff):
        s = self.state
        if s == TESTING:
            if self._hal.rcd_tripped():
                self._hal.rcd_test(False)
                self.state = RELEASING
                self._t0 = now_ms
            elif ticks_diff(now_ms, self._t0) > _TEST_TIMEOUT_MS:
                self._hal.rcd_test(False)
                self.state = FAILED
        elif s == RELEASING:
            if not self._hal.rcd_tripped():
                self.state = PASSED
            elif ticks_diff(now_ms, self._t0) > _TEST_TIMEOUT_MS:
                self.state = FAILED
        return self.state

    def busy(self):
        return self.state == TESTING or self.state == RELEASING
