"""Layer 2: one connector's charging state machine (IEC 61851-1 sequences, OCPP 1.6 states)."""

from evse import pilot
from evse.compat import age_cap, const, ticks_add, ticks_diff
from evse.limits import Limits
from evse.pp import cable_a
from evse.rcd import FAILED, IDLE, PASSED, RcdSelfTest

# Pilot output modes.
OUT_X1 = const(0)  # constant +12 V: nothing offered, CP still readable
OUT_PWM = const(1)  # 1 kHz PWM: current offered (X2)
OUT_F = const(2)  # constant -12 V: state F, EVSE unavailable / faulted

# How a latched fault clears.
CLEAR_UNPLUG = const(0)  # CP back in A
CLEAR_COND = const(1)  # the condition is gone (CP back in A, B or C)
CLEAR_RCD = const(2)  # CP in A and an RCD self-test passed
CLEAR_WELD = const(3)  # feedback reads open and CP in A

# IEC 61851-1 Table A.5 as EVerest reads it: state F for at least 300 ms on an EVSE fault.
_F_PULSE_MS = const(300)
# S2 settle before closing; IEC 61851-1 Table A.6 seq. 4 allows up to 3 s after B2->C2.
_CLOSE_SETTLE_MS = const(200)
# IEC 61851-1 Table A.6 seq. 10.2: PWM off, EV stays in C -> open under load after 6 s.
_C1_TIMEOUT_MS = const(6000)
# "PWM may only be updated every 5 seconds" (EVerest, after IEC 61851-1): increases only.
_DUTY_SPACING_MS = const(5000)
# Mirror-contact debounce (Tinkerforge WARP uses 250 ms) before a disagreement is a fault.
_FEEDBACK_SETTLE_MS = const(250)
# ... and then the disagreement must last this long: one noisy read is not a weld.
_FEEDBACK_CONFIRM_MS = const(20)
# An RCD input reading tripped must still read so one loop later (a second read) ...
_RCD_CONFIRM_MS = const(4)
# ... and for this long within _SWITCH_BLANK_MS of a contactor command, while inrush and
# the contacts' travel and bounce disturb the detector. Worst-case reaction to a real trip
# at switching: 30 ms plus a loop, inside IEC 61851-1's 100 ms.
_RCD_CONFIRM_SWITCH_MS = const(30)
_SWITCH_BLANK_MS = const(100)
# Samples after an output change before CP readings reflect it.
_SETTLE_SAMPLES = const(2)
# Retry a failed RCD self-test this often while latched.
_RCD_RETRY_MS = const(30000)
# Longer than every window above: the age at which a stored stamp stops ageing (ticks wrap).
_STALE_MS = const(60000)

PLUGGED = (pilot.B, pilot.C, pilot.D)


class Connector:
    """Turns debounced CP state, faults, authorization and limits into pilot and contactor
    outputs. Transitions happen in step(); the only other ways to the outputs are the
    safety exits below (force_safe, fail_internal, shutdown), all of them towards off."""

    def __init__(self, cid, hal, cfg, events, uptime):
        self.id = cid
        self._uptime = uptime
        long_ago = ticks_add(uptime.boot_ms, -_STALE_MS)
        self._hal = hal
        self._cfg = cfg
        self._events = events
        self.det = pilot.Detector()
        self.limits = Limits()
        self.rcd = RcdSelfTest(hal)
        self.enabled = True
        self.authorized = False
        self.finished = False
        self.fault = None  # OCPP ChargePointErrorCode while Faulted
        self.fault_detail = None
        self._fault_clear = CLEAR_UNPLUG
        self._fault_ms = long_ago
        self._rcd_retry_ms = long_ago
        self.contactor = False
        self._contactor_ms = long_ago
        self._fb_bad_ms = None  # since when the mirror contact disagrees (after blanking)
        self._rcd_ms = None  # since when the RCD input reads tripped
        self.out = None  # unknown until the first step forces an output
        self.duty = None  # duty_u16 while OUT_PWM
        self._duty_ms = None  # last duty change; None = the next PWM start is immediate
        self._out_samples = 0
        self._x1_ms = long_ago
        self._creq_ms = None  # since when a settled C under this PWM asks for power
        self._diode_bad = 0
        self._diode_seen = False  # a passing diode check since the PWM (re)started
        self.held = False  # the outputs are the self-test's (evse/selftest.py)
        self.cp = pilot.A
        self.limit_a = 0.0
        self.limit_by = "hardware"
        self.state = "Available"
        self.thermal_stop = False
        self.meter_failed = False
        self.blocked = False  # no session may start now (evse/sessions.py): no self-authorizing
        self.halted = False  # a reboot is under way: offer nothing (Station.begin_reboot)
        self.cycles = 0  # contactor closes since boot (diag): contacts wear per cycle
        self.paused_s = None  # uptime second a limit pause began under load, else None
        self.share = None  # (amps, source): this connector's part of the station's limit

    # -- outputs -------------------------------------------------------------------------
    def _set_contactor(self, on, now):
        if on != self.contactor:
            self._hal.contactor.set(on)
            self.contactor = on
            self._contactor_ms = now
            if on:
                self.cycles += 1

    def _set_out(self, mode, duty, now):
        if mode == self.out and duty == self.duty:
            return
        p = self._hal.pilot
        if mode == OUT_PWM:
            p.pwm(duty)
        elif mode == OUT_F:
            p.minus12()
        else:
            p.plus12()
        if mode != self.out:
            self._out_samples = 0
            if mode == OUT_X1:
                self._x1_ms = now
        if mode == OUT_PWM or self.out == OUT_PWM:
            self._duty_ms = now
        if mode == OUT_PWM and self.out != OUT_PWM:
            self._diode_seen = False  # every PWM start needs its own diode check
        self.out = mode
        self.duty = duty if mode == OUT_PWM else None

    def force_safe(self, now):
        """Open the contactor at once, whatever the state (an exception, a reset)."""
        self._hal.contactor.set(False)
        self.contactor = False
        self._contactor_ms = now

    def fail_internal(self, now, detail):
        """The control path raised: contactor open, Faulted/InternalError until unplug."""
        try:
            self.force_safe(now)
        except Exception:  # noqa: BLE001 - the fault below must still be recorded
            pass
        self.set_fault("InternalError", CLEAR_UNPLUG, now, detail)
        self.state = "Faulted"  # the step that raised never got to derive it

    def hold(self, now):
        """Hand the outputs to the self-test: contactor open, no stepping until release()."""
        self.force_safe(now)
        self.held = True

    def release(self):
        """Outputs back: the next step drives them afresh from the state machine."""
        self.held = False
        self.out = None
        self.duty = None
        self._out_samples = 0

    def shutdown(self, now):
        """Before a reset: end charging, contactor open, pilot to +12 V (nothing offered)."""
        self.stop()
        self.force_safe(now)
        self._set_out(OUT_X1, None, now)

    # -- faults --------------------------------------------------------------------------
    def set_fault(self, code, clear, now, detail):
        if self.fault == code and self._fault_clear == clear:
            return
        self.fault = code
        self.fault_detail = detail
        self._fault_clear = clear
        self._fault_ms = now
        self.authorized = False
        if clear == CLEAR_RCD and not self.rcd.busy():
            self.rcd.state = IDLE  # a fresh trip needs a fresh self-test
        self._events.add("error", code, self.id, detail)

    def _clear_fault(self):
        self._events.add("info", "FaultCleared", self.id, self.fault)
        self.fault = None
        self.fault_detail = None

    def _check_fault_clear(self, now, cp, fb):
        rule = self._fault_clear
        if rule == CLEAR_COND:
            if cp == pilot.A or cp == pilot.B or cp == pilot.C:
                self._clear_fault()
        elif rule == CLEAR_UNPLUG:
            if cp == pilot.A:
                self._clear_fault()
        elif rule == CLEAR_WELD:
            if cp == pilot.A and not fb:
                self._clear_fault()
        elif rule == CLEAR_RCD and cp == pilot.A:
            st = self.rcd.state
            if st == PASSED:
                self._clear_fault()
            elif not self.rcd.busy() and (
                st != FAILED or ticks_diff(now, self._rcd_retry_ms) >= _RCD_RETRY_MS
            ):
                if st == FAILED:
                    self._events.add("error", "RcdSelfTestFailed", self.id, "retrying")
                self._rcd_retry_ms = now
                self.rcd.start(now)

    # -- commands ------------------------------------------------------------------------
    def set_enabled(self, on):
        self.enabled = on
        if not on:
            self.authorized = False

    def stop(self):
        """End charging for this plug-in (Finishing until unplugged)."""
        if self.authorized:
            self.finished = True
            self.authorized = False

    # -- the state machine ---------------------------------------------------------------
    def wants_current(self):
        """Whether this connector takes part in sharing the station's limit now."""
        return (self.fault is None and self.enabled and self.authorized
                and not self.finished and self.cp in PLUGGED)

    def step(self, now, share, thermal_stop):
        """share: (amps, source) of the station's limit that is this connector's."""
        if self.held:
            return  # the self-test owns the outputs for a second or two (no EV connected)
        hal = self._hal
        cfg = self._cfg
        self._age_stamps(now)
        high_mv, low_mv = hal.pilot.sample()
        prev_cp = self.cp
        cp = self.det.feed(high_mv, low_mv)
        self._out_samples += 1
        settled = self._out_samples > _SETTLE_SAMPLES and self.out != OUT_F
        fb = hal.contactor.feedback()

        # 1. Residual current: power off once a second read confirms it, latch until unplug
        #    and a passing self-test.
        if self.rcd.busy():
            self._rcd_ms = None
            if self.rcd.step(now, ticks_diff) == FAILED and self.fault is None:
                self.set_fault("GroundFailure", CLEAR_RCD, now, "RCD self-test failed")
        elif hal.rcd_tripped():
            if self._rcd_ms is None:
                self._rcd_ms = now
            switching = ticks_diff(now, self._contactor_ms) < _SWITCH_BLANK_MS
            confirm = _RCD_CONFIRM_SWITCH_MS if switching else _RCD_CONFIRM_MS
            if ticks_diff(now, self._rcd_ms) >= confirm:
                self._set_contactor(False, now)
                self.set_fault("GroundFailure", CLEAR_RCD, now, "residual current detected")
        else:
            self._rcd_ms = None

        # 2. Contactor mirror contact must follow the command (after the contacts' travel
        #    and bounce, and for more than one read).
        if (
            fb is None
            or fb == self.contactor
            or ticks_diff(now, self._contactor_ms) <= _FEEDBACK_SETTLE_MS
        ):
            self._fb_bad_ms = None
        else:
            if self._fb_bad_ms is None:
                self._fb_bad_ms = now
            if ticks_diff(now, self._fb_bad_ms) >= _FEEDBACK_CONFIRM_MS:
                if fb:
                    self.set_fault(
                        "PowerSwitchFailure", CLEAR_WELD, now,
                        "contactor welded: closed while commanded open",
                    )
                elif self.fault != "PowerSwitchFailure":
                    self._set_contactor(False, now)
                    self.set_fault(
                        "PowerSwitchFailure", CLEAR_UNPLUG, now, "contactor did not close"
                    )

        # 3. Pilot faults, judged only on readings taken with a settled, readable output.
        if settled and self.fault is None:
            if cp == pilot.E or cp == pilot.F:
                # E: CP shorted to PE. F while we drive +12 V: CP stuck low. Power off now.
                self._set_contactor(False, now)
                self.set_fault(
                    "EVCommunicationError", CLEAR_COND, now, "CP state %s (%d mV)" % (cp, high_mv)
                )
            elif cp == pilot.D and not cfg["ventilation"]:
                # State D asks for ventilation this site lacks: refuse, as EVerest does.
                self._set_contactor(False, now)
                self.set_fault("OtherError", CLEAR_COND, now, "EV requires ventilation (state D)")
            elif self.out == OUT_PWM and cp in PLUGGED and not self.det.diode_ok():
                # IEC 61851-1: check the -12 V low level (diode) before closing and while on.
                self._diode_bad += 1
                if self._diode_bad >= 2:
                    self._set_contactor(False, now)
                    self.set_fault(
                        "EVCommunicationError", CLEAR_UNPLUG, now,
                        "no EV diode (CP low %d mV)" % low_mv,
                    )
            else:
                self._diode_bad = 0
                if self.out == OUT_PWM and cp in PLUGGED:
                    self._diode_seen = True

        if self.fault is not None and settled:
            self._check_fault_clear(now, cp, fb)

        # 4. Plug-in / unplug edges (readable only while we do not drive F).
        if self.out != OUT_F:
            if cp == pilot.A:
                self.authorized = False
                self.finished = False
                self.paused_s = None
            elif cp in PLUGGED and prev_cp == pilot.A:
                self._duty_ms = None  # a new plug-in is offered current at once
            if (
                cp in PLUGGED
                and self.enabled
                and self.fault is None
                and not self.finished
                and not self.blocked
                and cfg["auth_mode"] == "free"
            ):
                # Plug and charge: a plugged EV is authorized whenever nothing forbids it,
                # so charging resumes after a cleared fault or re-enable. In the other modes
                # the sessions authorize (a card, the backend, a remote start).
                self.authorized = True
            self.cp = cp
        else:
            self.cp = pilot.F

        # 5. Limits: station-wide sources plus this connector's cable and backend entries.
        if cfg["socket"] and cp in PLUGGED:
            self.limits.set("cable", cable_a(hal.pp_ohms()))
        else:
            self.limits.clear("cable")
        limit, by = self.limits.effective(self._uptime.s)
        if share[0] is not None and (limit is None or share[0] < limit):
            limit, by = share  # on a tie the connector's own source is named
        if limit is None:
            limit, by = 0.0, "hardware"
        self.limit_a = limit
        self.limit_by = by
        self.thermal_stop = thermal_stop

        # 6. Decide the outputs.
        cp = self.cp
        if self.fault is not None:
            mode = OUT_F if ticks_diff(now, self._fault_ms) < _F_PULSE_MS else OUT_X1
            duty = None
        elif not self.enabled:
            # Disabled while charging: end it the IEC way first (X1, the EV answers C->B or
            # the contactor opens after 6 s), then state F.
            mode, duty = (OUT_X1 if self.contactor else OUT_F), None
        elif (
            self.authorized
            and not self.finished
            and not self.halted
            and cp in PLUGGED
            and self._limit_allows(limit, cp)
            and not self.rcd.busy()
        ):
            mode, duty = OUT_PWM, pilot.duty_u16(limit)
            if self.out == OUT_PWM:
                if duty > self.duty and ticks_diff(now, self._duty_ms) < _DUTY_SPACING_MS:
                    duty = self.duty  # increase later; reductions apply at once
            elif self._duty_ms is not None and ticks_diff(now, self._duty_ms) < _DUTY_SPACING_MS:
                mode, duty = OUT_X1, None  # resuming after a pause counts as an increase
        else:
            mode, duty = OUT_X1, None

        charge_req = cp == pilot.C or (cp == pilot.D and cfg["ventilation"])
        close = False
        if self.fault is None and charge_req:
            if mode == OUT_PWM and self.out == OUT_PWM and self._diode_bad == 0:
                if self.contactor:
                    close = True
                elif settled and self._diode_seen:
                    # IEC 61851-1 Table A.6 seq. 4: close after a settled C2 (here 200 ms,
                    # limit 3 s), measured under the PWM now on, diode checked under it.
                    if self._creq_ms is None:
                        self._creq_ms = now
                    close = ticks_diff(now, self._creq_ms) >= _CLOSE_SETTLE_MS
                else:
                    self._creq_ms = None
            else:
                self._creq_ms = None  # a pause restarts the settle: nothing carries over
                if self.contactor and mode == OUT_X1:
                    # Paused (X1) under load: the EV should answer C->B; force open after 6 s.
                    x1_ms = self._x1_ms if self.out == OUT_X1 else now
                    close = ticks_diff(now, x1_ms) < _C1_TIMEOUT_MS
        else:
            self._creq_ms = None

        # Open before changing the pilot, close only after PWM is already on.
        if not close:
            self._set_contactor(False, now)
        self._set_out(mode, duty, now)
        if close:
            self._set_contactor(True, now)

        self.state = self._derive_state(cp)

    def _limit_allows(self, limit, cp):
        """PWM at this limit? Below 6 A pauses; a pause that began under load lasts at
        least min_pause_s and ends only with some headroom above 6 A."""
        if limit < pilot.MIN_CURRENT_A:
            if self.paused_s is None and (self.contactor or cp == pilot.C or cp == pilot.D) \
                    and self.out == OUT_PWM:
                self.paused_s = self._uptime.s
            return False
        p = self.paused_s
        if p is None:
            return True
        if (self._uptime.s - p < self._cfg["min_pause_s"]
                or limit < pilot.RESUME_A):
            return False
        self.paused_s = None
        return True

    def _age_stamps(self, now):
        # ticks wrap every 2^30 ms and ticks_diff is right only within 2^29 ms (6.2 days):
        # a stamp left alone for a week would read as recent (a raise held for days, an F
        # pulse driven again, a weld unseen). Capped every loop, none ever gets that old.
        self._fault_ms = age_cap(now, self._fault_ms, _STALE_MS)
        self._rcd_retry_ms = age_cap(now, self._rcd_retry_ms, _STALE_MS)
        self._contactor_ms = age_cap(now, self._contactor_ms, _STALE_MS)
        self._duty_ms = age_cap(now, self._duty_ms, _STALE_MS)
        self._x1_ms = age_cap(now, self._x1_ms, _STALE_MS)
        self._creq_ms = age_cap(now, self._creq_ms, _STALE_MS)
        self._fb_bad_ms = age_cap(now, self._fb_bad_ms, _STALE_MS)
        self._rcd_ms = age_cap(now, self._rcd_ms, _STALE_MS)

    def _derive_state(self, cp):
        """OCPP 1.6 ChargePointStatus; priority as in MicroOcpp's Connector::getStatus."""
        if self.fault is not None:
            return "Faulted"
        if not self.enabled:
            # Winding down: the contactor opens when the EV answers (or after 6 s).
            return "SuspendedEVSE" if self.contactor else "Unavailable"
        if cp not in PLUGGED:
            return "Available"
        if self.finished:
            return "Finishing"
        if not self.authorized:
            return "Preparing"
        if self.contactor:
            return "Charging" if self.out == OUT_PWM else "SuspendedEVSE"
        if self.out == OUT_PWM:
            return "SuspendedEV"
        return "SuspendedEVSE"

    @property
    def offered_a(self):
        return pilot.offered_a(self.duty) if self.out == OUT_PWM else 0.0

    @property
    def error(self):
        if self.fault is not None:
            return self.fault
        if self.meter_failed:
            return "PowerMeterFailure"
        return "HighTemperature" if self.thermal_stop else None
