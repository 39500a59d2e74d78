"""The commissioning self-test (`s.selftest()` at the service console): RCD test, contactor
close/open with its mirror contact, pilot generator read back, meter communication.

It runs as a state machine stepped by the control loop, one short step per iteration, so
the loop never waits for it. It takes a connector's outputs only with no EV connected and
gives them back (the connector re-drives them) when done or aborted. A FAIL leaves the
outputs safe and raises the matching fault, as the connector would."""

from evse.compat import const, ticks_diff
from evse.rcd import FAILED, PASSED

_SETTLE_MS = const(30)  # pilot output settles (RC of the CP line, ADC averaging)
_CONTACT_MS = const(150)  # contacts travel and bounce (the connector blanks 250 ms)
_RCD_MS = const(1500)
_PLUS_MV = (10800, 13200)  # +12 V within 10 %
_MINUS_MV = (-13200, -10800)
_DUTY_TOL = 1.0  # percentage points (the tolerance quoted for IEC 61851-1; docs/standards.md)


class SelfTest:
    """`out(line)` gets one PASS/FAIL/SKIP line per check, then a summary."""

    def __init__(self, station, out):
        self.st = station
        self.out = out
        self.done = False
        self.failed = 0
        self._gen = self._run()
        next(self._gen)  # to the first yield: step() sends the time from then on

    def step(self, now):
        if self.done:
            return
        try:
            self._gen.send(now)
        except StopIteration:
            self.done = True
        except Exception as e:  # noqa: BLE001 - the test must end safe, whatever broke
            self._fail("selftest", "aborted: %r" % (e,))
            self._end()

    # -- helpers ---------------------------------------------------------------------------
    def _line(self, verdict, what, detail):
        self.out("%-4s %-18s %s" % (verdict, what, detail))

    def _fail(self, what, detail, conn=None, code=None, clear=None):
        self.failed += 1
        self._line("FAIL", what, detail)
        if conn is not None:
            conn.force_safe(self._now)
            conn.set_fault(code, clear, self._now, "self-test: " + detail)

    def _end(self):
        for c in self.st.connectors:
            if c.held:
                c.release()
        self.done = True
        self.out("selftest: %s" % ("PASS" if not self.failed else "%d FAIL" % self.failed))

    def _wait(self, ms, hal):
        # Sampling every loop, as the connector does: a board may latch its other inputs
        # (mirror contact, RCD) with the pilot sample.
        t0 = self._now
        while ticks_diff(self._now, t0) < ms:
            self._now = yield
            hal.pilot.sample()

    def _ev_connected(self, c):
        high, _ = c._hal.pilot.sample()
        return high < 10800 or high > 13200  # not state A under +12 V

    # -- the sequence ------------------------------------------------------------------------
    def _run(self):
        from evse.connector import CLEAR_RCD, CLEAR_UNPLUG, CLEAR_WELD

        self._now = yield
        st = self.st
        for c in st.connectors:
            # Never with an EV connected (B, C, D); a faulted connector may be tested (the
            # fault is what the technician is after), its contactor only with CP in A.
            if c.cp in ("B", "C", "D") or c.contactor:
                self.out("selftest refused: connector %d: %s" % (
                    c.id, "EV connected" if not c.contactor else "contactor closed"))
                self.done = True
                return
        for c in st.connectors:
            c.hold(self._now)  # the connector stops driving its outputs
        for c in st.connectors:
            hal = c._hal
            name = "c%d " % c.id if len(st.connectors) > 1 else ""
            # 1. Pilot generator: +12 V, -12 V, PWM levels read back (no EV on the line).
            hal.pilot.plus12()
            yield from self._wait(_SETTLE_MS, hal)
            high, _ = hal.pilot.sample()
            if not _PLUS_MV[0] <= high <= _PLUS_MV[1]:
                self._fail(name + "pilot +12 V", "read %.1f V" % (high / 1000), c,
                           "EVCommunicationError", CLEAR_UNPLUG)
                continue
            hal.pilot.minus12()
            yield from self._wait(_SETTLE_MS, hal)
            low, _ = hal.pilot.sample()
            if not _MINUS_MV[0] <= low <= _MINUS_MV[1]:
                self._fail(name + "pilot -12 V", "read %.1f V" % (low / 1000), c,
                           "EVCommunicationError", CLEAR_UNPLUG)
                continue
            hal.pilot.pwm(26214)  # 40 %: both phases long enough to read
            yield from self._wait(_SETTLE_MS, hal)
            ph, pl = hal.pilot.sample()
            duty = hal.pilot.duty_read()
            hal.pilot.plus12()
            if not (_PLUS_MV[0] <= ph <= _PLUS_MV[1] and _MINUS_MV[0] <= pl <= _MINUS_MV[1]):
                self._fail(name + "pilot PWM", "read %.1f / %.1f V" % (ph / 1000, pl / 1000),
                           c, "EVCommunicationError", CLEAR_UNPLUG)
                continue
            if duty is not None and abs(duty - 40.0) > _DUTY_TOL:
                self._fail(name + "pilot duty", "40.0 %% commanded, %.1f %% measured" % duty,
                           c, "EVCommunicationError", CLEAR_UNPLUG)
                continue
            self._line("PASS", name + "pilot", "+12 %.1f V, -12 %.1f V, PWM %.1f/%.1f V" % (
                high / 1000, low / 1000, ph / 1000, pl / 1000))
            self._line("PASS" if duty is not None else "SKIP", name + "pilot duty",
                       "40.0 %% commanded, %.1f %% measured" % duty if duty is not None
                       else "this board cannot time the PWM pin")
            # 2. RCD: test current -> trip -> release.
            c.rcd.start(self._now)
            t0 = self._now
            while c.rcd.busy() and ticks_diff(self._now, t0) < _RCD_MS:
                self._now = yield
                hal.pilot.sample()
                c.rcd.step(self._now, ticks_diff)
            if c.rcd.state == PASSED:
                self._line("PASS", name + "RCD", "tripped and released in %d ms" % ticks_diff(
                    self._now, t0))
            else:
                self._fail(name + "RCD", "no trip on the test current" if c.rcd.state == FAILED
                           else "test did not finish", c, "GroundFailure", CLEAR_RCD)
                continue
            # 3. Contactor: close, the mirror contact must follow; open, it must follow.
            if hal.contactor.feedback() is None:
                self._line("SKIP", name + "contactor", "no mirror contact on this board")
            else:
                if self._ev_connected(c):
                    self.out("selftest aborted: an EV was connected")
                    break
                hal.contactor.set(True)
                t0 = self._now
                yield from self._wait(_CONTACT_MS, hal)
                closed = hal.contactor.feedback()
                hal.contactor.set(False)
                yield from self._wait(_CONTACT_MS, hal)
                opened = not hal.contactor.feedback()
                if closed and opened:
                    self._line("PASS", name + "contactor", "closed and opened, mirror follows")
                elif not opened:
                    self._fail(name + "contactor", "mirror reads closed after opening (welded?)",
                               c, "PowerSwitchFailure", CLEAR_WELD)
                else:
                    self._fail(name + "contactor", "mirror stays open when closed", c,
                               "PowerSwitchFailure", CLEAR_UNPLUG)
        # 4. Meter(s): a reading within meter_fail_s.
        m = st.metering
        for k, c in enumerate(st.connectors):
            meter = m.meters[k]
            if meter is None:
                self._line("SKIP", "meter", "none configured")
                break
            t0 = self._now  # just after boot: wait for a first reading or the verdict
            limit = (st.cfg["meter_fail_s"] + 1) * 1000
            while meter.reading is None and not c.meter_failed and ticks_diff(
                    self._now, t0) < limit:
                self._now = yield
            r = meter.reading
            if r is not None and not c.meter_failed:
                self._line("PASS", "meter c%d" % c.id, "%s @%d: %.1f V, %d errors" % (
                    meter.name, meter.slave, r[0][0], meter.errors))
            else:
                self._fail("meter c%d" % c.id, "%s @%d: no reading (%d errors)" % (
                    meter.name, meter.slave, meter.errors))
        # 5. RFID reader: set up and answering (it retries by itself when not).
        r = st.auth.reader
        if r is None:
            self._line("SKIP", "RFID reader", "no reader on this board")
        elif r.failed:
            self._fail("RFID reader", "not answering: %s" % r.detail)
        else:
            self._line("PASS", "RFID reader", "answering")
        self._end()
