"""The physical world around a simulated charger: EV, cable, contactor, RCD, meter, clock,
the RFID reader and the cards on it (tools/simrfid.py).

Every change is applied under one lock and stamped with the monotonic microsecond clock at
the moment it happens here (a firmware command arriving, a control op, or a delayed physical
reaction coming due); stamps are never computed afterwards.
"""

import math
import random
import threading
import time

from simflash import Flash, power_cut

CONTACTOR_DELAY_S = 0.015  # mechanical: coil energised -> contacts (and mirror) follow
VOLTAGE_V = 230.0
PP_OHMS = {13: 1500, 20: 680, 32: 220, 63: 100}
CP_HIGH_MV = {"A": 12000, "B": 9000, "C": 6000, "D": 3000}
FAULT_KINDS = (
    "rcd",
    "weld",
    "stuck_open",
    "diode",
    "cp_short",
    "meter_down",
    "meter_garbage",
    "reader_down",
    "rcd_test_open",  # extension: the detector's test winding is open (self-test fails)
    "pilot_dead",  # extension: the pilot generator's output stage is dead (CP reads 0 V)
)


# Hardware imperfections the fault op sets by value: kind -> (hw key, default, maximum).
HW_FAULTS = {"bounce_ms": ("bounce_ms", 3.0, 1000), "adc_noise": ("noise_mv", 60.0, 2000)}


def _num(v, lo, hi):
    """v is a real number (not a bool, not NaN or infinite) within [lo, hi]."""
    return (not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)
            and lo <= v <= hi)


def now_us():
    return time.monotonic_ns() // 1000


# -- the board's analog front end, as the ESP32 board's (boards/esp32_devkitc/README.md) ----
# ESP32 ADC at 11 dB as read_uv() reports it (ESP-IDF line fitting with eFuse Vref 1100 mV,
# plus the lookup table that corrects the bend above 2.45 V): a raw 0 reads 142 mV, a raw
# 4095 reads about 3.135 V. Inputs outside that span clip there.
ADC_FLOOR_UV = 142000
ADC_CLIP_UV = 3135000
NTC_R25_OHMS = 10000
NTC_BETA = 3950
NTC_VCC_UV = 3300000
NTC_PULLUP_COLD_OHMS = 150000  # always
NTC_PULLUP_HOT_OHMS = 4700  # switched in by the range pin


def adc_read_uv(v_uv):
    """What read_uv() returns for this pin voltage: clipped to the ADC's span, whole mV."""
    v = min(max(v_uv, ADC_FLOOR_UV), ADC_CLIP_UV)
    return int(round(v / 1000.0)) * 1000


def ntc_ohms(temp_c):
    """The NTC (Beta model) at temp_c."""
    return NTC_R25_OHMS * math.exp(NTC_BETA * (1.0 / (temp_c + 273.15) - 1.0 / 298.15))


def ntc_node_uv(temp_c, cold, sensor="ok"):
    """The NTC divider's node voltage: range pin high-impedance (cold) or driven high."""
    if cold:
        pullup = NTC_PULLUP_COLD_OHMS
    else:
        pullup = NTC_PULLUP_COLD_OHMS * NTC_PULLUP_HOT_OHMS / (
            NTC_PULLUP_COLD_OHMS + NTC_PULLUP_HOT_OHMS
        )
    if sensor == "open":
        return NTC_VCC_UV
    if sensor == "short":
        return 0
    r = ntc_ohms(temp_c)
    return NTC_VCC_UV * r / (r + pullup)


# -- pilot acquisition, as the ESP32 board's Pilot.sample() takes it -----------------------
# Values mirror evse/pilot.py (GUARD_US, READS_MIN, READS_MAX, PERIODS_MAX); the world is
# not part of the firmware, so they are restated here and tests/test_pilot.py compares them.
PWM_PERIOD_US = 1000
GUARD_US = 15
READS_MIN = 3
READS_MAX = 5
PERIODS_MAX = 4
POLL_US = 3  # one pin() call in the board's wait loop
SLEW_US = 10  # CP edge: the generator's rise (< 7 us) or fall (< 13 us) and the RC filter
SAMPLE_AT_US = 6  # the ADC samples this long after the read starts (call overhead)
START_GLITCH_US = 1000  # MicroPython 1.23-1.25: a new LEDC channel runs 50 % for a period


def ev_reads_a(duty_pct):
    """What a vehicle takes a duty to offer (IEC 61851-1 Table A.8, EV side)."""
    if duty_pct is None or duty_pct < 8.0 or duty_pct > 97.0:
        return 0.0
    if duty_pct < 10.0:
        return 6.0
    if duty_pct <= 85.0:
        return duty_pct * 0.6
    if duty_pct <= 96.0:
        return (duty_pct - 64.0) * 2.5
    return 80.0


class Conn:
    """One connector's world: the EVSE's outputs and everything on the vehicle side."""

    def __init__(self, world, cid):
        self.w = world
        self.id = cid
        self.plugged = False
        self.cable_a = None
        self.request = False
        self.vent = False
        self.max_a = 32.0
        self.phases = 3
        self.respond_s = 1.0
        self.diode = True
        self.pilot = "off"  # "off" (board in reset), "+12", "-12", or "pwm"
        self.duty_u16 = None
        self.pwm_t0 = 0  # when the PWM (re)started: its periods count from here
        self._pending_pilot = None  # (due_us, mode, duty_u16): the start glitch's end
        self.contactor = False  # commanded
        self.closed = False  # the contacts, seen by the mirror contact
        self.rcd_test = False
        self.rcd = False
        self.ev_i = [0.0, 0.0, 0.0]
        self._pending_i = None  # (due_us, [i1, i2, i3])
        self._pending_contacts = None  # (due_us, closed)
        self.moved_us = None  # when the contacts last moved (bounce and RCD transient)
        self._glitched = False  # the last read of the inputs was flipped by EMI
        self._bounced = False  # the last mirror read caught a bounce blip
        self.cp = "A"
        self.energy_wh = 0.0

    # -- derived physics ----------------------------------------------------------------
    def ev_state(self):
        if not self.plugged:
            return "A"
        if self.w.faults[self.id]["cp_short"]:
            return "E"
        if self.pilot == "-12":
            return "F"
        if self.pilot == "off":
            return "E"  # no generator: CP sits at 0 V
        if self.request:
            return "D" if self.vent else "C"
        return "B"

    def pin_duty_pct(self):
        """The generator's GPIO, high for the duty of the PWM (100 % at +12 V)."""
        if self.pilot == "pwm":
            return self.duty_u16 * 100 / 65536 + self.w.hw["duty_error"]
        return 100.0 if self.pilot == "+12" else 0.0

    def duty_pct(self):
        if self.pilot != "pwm":
            return None
        return round(self.duty_u16 * 100 / 65535, 1)

    def sample(self):
        """CP (high_mv, low_mv) as the board's ADC sees it."""
        if self.pilot == "off" or self.w.faults[self.id]["pilot_dead"]:
            return 0, 0
        if self.pilot == "-12":
            return -12000, -12000
        if not self.plugged:
            high = 12000
        elif self.w.faults[self.id]["cp_short"]:
            high = 0
        else:
            high = CP_HIGH_MV[self.ev_state()]
        if self.pilot != "pwm" or high == 0:
            return high, high
        diode = self.diode and not self.w.faults[self.id]["diode"]
        if not self.plugged or diode:
            return high, -12000
        return high, -high  # without the diode the EV resistors load the negative half too

    def acquire(self, t0):
        """One Pilot.sample() of the ESP32 board, from t0: the tagged reads (mV of CP, tag
        0 low / 3 high / 1, 2 an edge inside the read) and the time it took (us). The reads
        land in the high or low phase by the duty and the time; each costs hw read_us, with
        ADC noise and occasional spikes. Levels are those at t0 (a window is <= 4.4 ms)."""
        hw = self.w.hw
        rng = self.w.rng
        high, low = self.sample()
        r = hw["read_us"]
        pwm = self.pilot == "pwm" and 0 < self.duty_u16 < 65535
        high_us = self.duty_u16 * PWM_PERIOD_US / 65536 if pwm else 0
        t_ref = self.pwm_t0
        const_pin = 1 if self.pilot == "+12" or (self.pilot == "pwm" and self.duty_u16) else 0

        def pin(t):
            if not pwm:
                return const_pin
            return 1 if (t - t_ref) % PWM_PERIOD_US < high_us else 0

        def enter(t, level):
            """The first time >= t at which the pin is at `level` (poll granularity)."""
            ph = (t - t_ref) % PWM_PERIOD_US
            if (ph < high_us) == (level == 1):
                return t
            edge = t + (PWM_PERIOD_US - ph if level else high_us - ph)
            return edge + POLL_US / 2

        def cp(t):
            if not pwm:
                return high
            ph = (t - t_ref) % PWM_PERIOD_US
            if ph < high_us:
                v, since, prev = high, ph, low
            else:
                v, since, prev = low, ph - high_us, high
            if since < SLEW_US:
                v = prev + (v - prev) * since / SLEW_US
            return v

        def read(t):
            v = cp(t + SAMPLE_AT_US) + rng.gauss(0.0, hw["noise_mv"])
            if rng.random() < hw["spikes"]:
                v += rng.choice((-1, 1)) * rng.uniform(3000, 9000)
            return int(v), pin(t) | (pin(t + r) << 1), t + r

        out = []
        t = float(t0)
        if not pwm:
            for _ in range(READS_MAX):
                v, tag, t = read(t)
                out.append((v, tag))
            return out, int(t - t0)
        limit = t0 + PERIODS_MAX * PWM_PERIOD_US
        seen, fresh = pin(t), False
        for level in (1, 0):
            want = 3 if level else 0
            got = 0
            while got < READS_MIN and t < limit:
                if not (seen == level and fresh):
                    if seen == level:
                        t = enter(t, 1 - level)  # this phase started unseen: skip it
                    t = enter(t, level)
                    seen, fresh = level, True
                t += GUARD_US
                while got < READS_MAX:
                    v, tag, t = read(t)
                    if tag != want:
                        seen = tag >> 1  # the pin changed during the read: dropped
                        fresh = seen != level
                        break
                    out.append((v, tag))
                    got += 1
                else:
                    fresh = False  # this phase goes on: the next look waits for a new edge
        return out, int(t - t0)

    def offered_a(self):
        return round(ev_reads_a(self.duty_pct()), 1)

    def target_i(self):
        st = self.ev_state()
        if not self.closed or st not in ("C", "D") or self.pilot != "pwm":
            return [0.0, 0.0, 0.0]
        a = min(ev_reads_a(self.duty_pct()), self.max_a)
        a = round(a, 1)
        return [a, a if self.phases == 3 else 0.0, a if self.phases == 3 else 0.0]

    # -- change propagation (caller holds the lock) --------------------------------------
    def settle(self, t):
        """Re-derive dependent state after any input change, stamping what changed."""
        w = self.w
        st = self.ev_state()
        if st != self.cp:
            self.cp = st
            w.event(t, "cp", st, self.id)
        f = w.faults[self.id]
        rcd = f["rcd"] or (self.rcd_test and not f["rcd_test_open"])
        if rcd != self.rcd:
            self.rcd = rcd
            w.event(t, "rcd", rcd, self.id)
        want = self.target_i()
        if not self.closed or not self.plugged:
            # No voltage at the inlet: the current stops with it, not after respond_s.
            self._pending_i = None
            self._set_i(t, want)
        elif want != self.ev_i:
            if self._pending_i is None or self._pending_i[1] != want:
                self._pending_i = (t + int(self.respond_s * 1e6), want)
        else:
            self._pending_i = None
        w.wake()

    def _set_i(self, t, i):
        if i != self.ev_i:
            self.accrue(t)
            self.ev_i = i
            self.w.event(t, "ev_i", list(i), self.id)

    def accrue(self, t):
        w = self.w
        dt = (t - w.energy_t.get(self.id, t)) / 3.6e9  # us -> h
        w.energy_t[self.id] = t
        if dt > 0:
            self.energy_wh += sum(self.ev_i) * VOLTAGE_V * dt * w.meter_speed

    def due(self, t):
        """Apply delayed reactions that have come due; return the next due time or None."""
        nxt = None
        pc = self._pending_contacts
        if pc is not None:
            if pc[0] <= t:
                self._pending_contacts = None
                self._move_contacts(t, pc[1])
            else:
                nxt = pc[0]
        pp = self._pending_pilot
        if pp is not None:
            if pp[0] <= t:
                self._pending_pilot = None
                self._apply_pilot(t, pp[1], pp[2])
            else:
                nxt = pp[0] if nxt is None else min(nxt, pp[0])
        pi = self._pending_i
        if pi is not None:
            if pi[0] <= t:
                self._pending_i = None
                self._set_i(t, pi[1])
            else:
                nxt = pi[0] if nxt is None else min(nxt, pi[0])
        return nxt

    def _move_contacts(self, t, closed):
        f = self.w.faults[self.id]
        if closed and f["stuck_open"]:
            closed = False
        if not closed and f["weld"] and self.closed:
            closed = True
        if closed != self.closed:
            self.closed = closed
            self.moved_us = t
            self.w.event(t, "contactor_feedback", closed, self.id)
            self.settle(t)

    def inputs(self, t):
        """(mirror contact, RCD) as the board's inputs read them at t: after the contacts
        move the mirror chatters and the detector sees a transient; EMI may flip one read.
        The world's own state (closed, rcd, and their events) is unaffected."""
        w = self.w
        hw = w.hw
        fb, rcd = self.closed, self.rcd
        if self.moved_us is not None:
            since = t - self.moved_us
            if since < hw["bounce_ms"] * 1000 and not self._bounced and w.rng.random() < 0.3:
                # A bounce blip is shorter than the time between two reads: a read may
                # catch one (3 in 10 do), never two reads in a row.
                fb = not fb
                w.mirror_bounce_reads += 1
                self._bounced = True
            else:
                self._bounced = False
            if since < hw["rcd_transient_ms"] * 1000 and not rcd:
                rcd = True
                w.rcd_transient_reads += 1
        # EMI: a spike shorter than the time between two reads flips one read, never two
        # in a row (a disturbance that lasts is a fault, not noise).
        g = hw["input_glitches"]
        last, self._glitched = self._glitched, False
        if g and not last:
            if w.rng.random() < g:
                fb = not fb
                self._glitched = True
                w.input_glitches += 1
            if not rcd and w.rng.random() < g:
                rcd = True
                self._glitched = True
                w.input_glitches += 1
        return fb, rcd

    # -- firmware outputs -----------------------------------------------------------------
    def set_pilot(self, t, mode, duty_u16=None):
        if self._pending_pilot is not None and mode != "off":
            self._pending_pilot = (self._pending_pilot[0], mode, duty_u16)  # after the glitch
            return
        self._pending_pilot = None
        if self.pilot == "off" and mode != "off" and self.w.hw["start_glitch"]:
            # MicroPython 1.23-1.25: the new LEDC channel first runs at 50 % for a period.
            self._apply_pilot(t, "pwm", 32768)
            self._pending_pilot = (t + START_GLITCH_US, mode, duty_u16)
            self.w.wake()
            return
        self._apply_pilot(t, mode, duty_u16)

    def _apply_pilot(self, t, mode, duty_u16=None):
        before = self.duty_pct()
        if mode != self.pilot:
            self.w.event(t, "pilot", mode, self.id)  # the generator's mode: pwm/+12/-12/off
            if mode == "pwm":
                self.pwm_t0 = t
        self.pilot = mode
        self.duty_u16 = duty_u16 if mode == "pwm" else None
        after = self.duty_pct()
        if before != after:
            self.w.event(t, "pwm", after, self.id)
        self.settle(t)

    def set_contactor(self, t, on):
        if on != self.contactor:
            self.contactor = on
            self.w.event(t, "contactor", on, self.id)
            self._pending_contacts = (t + int(CONTACTOR_DELAY_S * 1e6), on)
            self.w.wake()

    def set_rcd_test(self, t, on):
        self.rcd_test = on
        self.settle(t)


MAX_CARDS = 8  # cards in the reader's field at once (tap uids)
DNS_MODES = ("ok", "slow", "dead")
DNS_ERR_FAIL = -202  # what the ESP32's getaddrinfo raises when the DNS server is silent
DNS_ERR_NONAME = -2  # ... and for a name that does not exist


class World:
    # The network's services (extension): the name service and the NTP server the runner
    # plays (tools/sim.py). Class defaults; the `dns` and `ntp` ops set them per world.
    dns_mode = "ok"
    dns_delay_s = 3.0
    ntp_answer = True
    ntp_offset_s = 0.0

    def __init__(self, connectors=1):
        self.lock = threading.RLock()
        self._cond = threading.Condition(self.lock)
        self.faults = {c: {k: False for k in FAULT_KINDS} for c in range(1, connectors + 1)}
        self.conns = {c: Conn(self, c) for c in range(1, connectors + 1)}
        self.log = []
        self.temp_c = 25.0
        self.ntc_sensor = "ok"  # "ok", "open" or "short"
        self.temp_reads = 0  # NTC reads the board took (stats), and how many in the cold range
        self.temp_reads_cold = 0
        # Analog imperfections of the board (op `hw`): ADC noise (mV of CP, 1 sigma), spike
        # probability per read, the cost of one tagged read, MicroPython 1.23-1.25's PWM
        # start glitch. Seeded: a run is repeatable.
        self.hw = {"noise_mv": 60.0, "spikes": 0.002, "read_us": 25, "start_glitch": False,
                   # The board's digital inputs: the mirror contact chatters for bounce_ms
                   # after the contacts move, the RCD module reads tripped for
                   # rcd_transient_ms after they move (inrush, arcing), and with
                   # input_glitches (per read) EMI flips one read of either input.
                   "bounce_ms": 3.0, "rcd_transient_ms": 8.0, "input_glitches": 0.0,
                   # A PWM generator off by this many percentage points (a drifting
                   # timer): the pin and the CP follow it; the self-test measures it.
                   "duty_error": 0.0,
                   # RFID: the share of the cards' reply frames with a bit error (half of
                   # them caught by the byte parity, the rest only by BCC and CRC_A).
                   "rfid_noise": 0.0}
        self.mirror_bounce_reads = 0  # reads that caught the mirror contact mid-bounce
        self.rcd_transient_reads = 0  # RCD reads that caught a switching transient
        self.input_glitches = 0  # reads flipped by input_glitches
        self.rng = random.Random(1)
        self.grid_i = [0.0, 0.0, 0.0]
        # The site's grid meter on the meter line (address 100): it measures grid_i plus the
        # EVs. Its own faults: grid_meter_down, grid_meter_garbage.
        self.grid_meter = True
        self.grid_faults = {"meter_down": False, "meter_garbage": False}
        self.meter_speed = 1.0
        self.energy_t = {}
        # The RFID reader on the board's SPI bus and the cards in its field (tap).
        from simrfid import Mfrc522

        self.rfid = Mfrc522(clock=now_us, rng=random.Random(11))
        self.rfid.on_event = lambda t, what, uid: self.event(t, what, uid, 0)
        # Watchdog: armed by the firmware, fed every loop; the runner resets on expiry.
        self.wdt_timeout_us = None
        self.wdt_fed_us = None
        self.on_watchdog = None
        # Loop timing, as the world sees it: the gap between consecutive pilot samples.
        self.sample_last_us = None
        self.sample_max_gap_us = 0
        self.samples = 0
        self.sample_gaps_over_10ms = 0
        self.fw_loop_max_gap_ms = 0
        self.boot_commands = []  # per firmware boot: its first few commands (extension)
        self.hang_s = 0.0
        from simmeter import Line

        self.line = Line(self)
        self.flash = Flash()
        self.meter_memory = None  # simflash.MeterMemory: the register survives a power cut
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def now(self):
        return now_us()

    def event(self, t, what, value, connector=1):
        self.log.append(
            {"i": len(self.log), "t_us": t, "what": what, "value": value, "connector": connector}
        )

    def wake(self):
        self._cond.notify_all()

    def stop(self):
        with self.lock:
            self._stop = True
            self._cond.notify_all()

    def _run(self):
        """Apply delayed physical reactions (contacts, EV current) when they come due."""
        with self.lock:
            while not self._stop:
                t = now_us()
                nxt = None
                for n in [c.due(t) for c in self.conns.values()] + [self.rfid.due(t)]:
                    if n is not None and (nxt is None or n < nxt):
                        nxt = n
                if self.wdt_timeout_us is not None and self.wdt_fed_us is not None:
                    deadline = self.wdt_fed_us + self.wdt_timeout_us
                    if deadline <= t:
                        self.wdt_timeout_us = None
                        self.event(t, "watchdog", True, 0)
                        if self.on_watchdog:
                            threading.Thread(target=self.on_watchdog, daemon=True).start()
                    elif nxt is None or deadline < nxt:
                        nxt = deadline
                wait = 0.5 if nxt is None else max(0.0, (nxt - now_us()) / 1e6)
                self._cond.wait(wait)

    # -- board reset: every output de-energises ------------------------------------------
    def board_reset(self):
        with self.lock:
            t = now_us()
            self.wdt_timeout_us = None
            self.wdt_fed_us = None
            self.sample_last_us = None
            for c in self.conns.values():
                c.set_contactor(t, False)
                c.set_rcd_test(t, False)
                c._pending_pilot = None
                c.set_pilot(t, "off")

    # -- the firmware link protocol (one line in, at most one line out) ------------------
    def take_hang(self):
        with self.lock:
            s, self.hang_s = self.hang_s, 0.0
            return s

    def firmware_line(self, line):
        f = line.split()
        if not f:
            return None
        op = f[0]
        if op == "S":
            if self.hang_s:
                time.sleep(self.take_hang())  # outside the lock: the world goes on meanwhile
            reply, took_us = self._sample(int(f[1]))
            time.sleep(took_us / 1e6)  # the reads take this long on the board
            return reply
        with self.lock:
            t = now_us()
            if op == "P":
                c = self.conns[int(f[1])]
                if f[2] == "H":
                    c.set_pilot(t, "+12")
                elif f[2] == "L":
                    c.set_pilot(t, "-12")
                else:
                    c.set_pilot(t, "pwm", int(f[2]))
                return None
            if op == "K":
                self.conns[int(f[1])].set_contactor(t, f[2] == "1")
                return None
            if op == "T":
                self.conns[int(f[1])].set_rcd_test(t, f[2] == "1")
                return None
            if op == "G":
                self.fw_loop_max_gap_ms = max(self.fw_loop_max_gap_ms, int(f[1]))
                return None
            if op == "U":
                self.line.write(t, bytes.fromhex(f[1]))
                return None
            if op == "u":
                return self.line.read(t).hex() + "\n"
            if op == "D":
                self.line.set_de(t, f[1] == "1")
                return None
            if op == "B":
                self.line.baud = int(f[1])
                return None
            if op == "Q":
                # The PWM pin's duty as the board measures it (share of time high).
                return "%.1f\n" % self.conns[int(f[1])].pin_duty_pct()
            if op == "t":
                # The NTC divider in the range the board selected, through the ADC.
                cold = len(f) > 1 and f[1] == "1"
                self.temp_reads += 1
                self.temp_reads_cold += cold
                return "%d\n" % adc_read_uv(ntc_node_uv(self.temp_c, cold, self.ntc_sensor))
            if op == "w":
                self.wdt_fed_us = t
                return None
            if op == "C":
                self.event(t, "clock", int(f[1]), 0)  # the firmware set its clock (NTP)
                return None
            if op in ("R", "r"):
                # One SPI exchange with the reader while NSS is low (R: NSS just fell).
                self.rfid.due(t)
                got = self.rfid.spi(bytes.fromhex(f[1]) if len(f) > 1 else b"", op == "R", t)
                return got.hex() + "\n"
            if op == "F":
                n = self.flash.allow(int(f[1]))  # tools/simflash.py
                if n < 0:
                    self.event(t, "flash_refused", int(f[1]), 0)
                return "%d\n" % n
            if op == "PC":
                power_cut()
                return None
            if op == "W":
                self.wdt_timeout_us = int(f[1]) * 1000
                self.wdt_fed_us = t
                self.wake()
                return None
        return None

    def _sample(self, cid):
        """One pilot sample for the board: `fb rcd pp n v1 g1 ... vn gn` (n tagged reads)."""
        with self.lock:
            t = now_us()
            c = self.conns[cid]
            c.due(t)
            if c.id == 1:
                if self.sample_last_us is not None:
                    gap = t - self.sample_last_us
                    if gap > self.sample_max_gap_us:
                        self.sample_max_gap_us = gap
                    if gap > 10000:
                        self.sample_gaps_over_10ms += 1
                self.sample_last_us = t
                self.samples += 1
            reads, took_us = c.acquire(t)
            pp = -1
            if c.plugged and c.cable_a is not None:
                pp = PP_OHMS.get(c.cable_a, -1)
            fb, rcd = c.inputs(t)
            head = "%d %d %d %d" % (fb, rcd, pp, len(reads))
            return head + "".join(" %d %d" % vg for vg in reads) + "\n", took_us

    # -- control port ops ------------------------------------------------------------------
    def _conn(self, req):
        cid = req.get("connector", 1)
        if not isinstance(cid, int) or isinstance(cid, bool) or cid not in self.conns:
            raise ValueError("bad connector")
        return self.conns[cid]

    def op(self, req):
        """Apply one control request; return the reply dict."""
        if not isinstance(req, dict):
            raise ValueError("request must be a JSON object")
        name = req.get("op")
        fn = getattr(self, "op_" + name, None) if isinstance(name, str) else None
        if fn is None:
            raise ValueError("unknown op %r" % (name,))
        with self.lock:
            t = now_us()
            for c in self.conns.values():
                c.due(t)
            self.rfid.due(t)
            out = fn(req, t) or {}
        out["ok"] = True
        return out

    def op_plug(self, req, t):
        c = self._conn(req)
        cable = req.get("cable_a")
        if cable is not None and (isinstance(cable, bool) or not isinstance(cable, int)
                                  or cable not in PP_OHMS):
            raise ValueError("cable_a must be 13, 20, 32, 63 or null")
        c.cable_a = cable
        c.plugged = True
        c.settle(t)

    def op_unplug(self, req, t):
        c = self._conn(req)
        c.plugged = False
        c.request = False
        c.settle(t)

    def op_ev(self, req, t):
        c = self._conn(req)
        for k in ("request", "vent", "diode"):
            if k in req:
                if not isinstance(req[k], bool):
                    raise ValueError("%s must be a boolean" % k)
        for k, hi in (("max_a", 80), ("respond_s", 60)):
            if k in req and not _num(req[k], 0, hi):
                raise ValueError("%s must be a number from 0 to %d" % (k, hi))
        if "phases" in req and req["phases"] not in (1, 3):
            raise ValueError("phases must be 1 or 3")
        for k in ("request", "vent", "diode", "max_a", "phases", "respond_s"):
            if k in req:
                setattr(c, k, req[k])
        c.settle(t)

    def op_tap(self, req, t):
        """A card (`uid`) or several at once (`uids`) lie on the reader for hold_s; with
        `frames` each card hears that many reader frames and is gone before the next one
        (swiped past: a read cut short)."""
        if ("uid" in req) == ("uids" in req):
            raise ValueError("give uid or uids (a list)")
        uids = [req["uid"]] if "uid" in req else req["uids"]
        if not isinstance(uids, list) or not 1 <= len(uids) <= MAX_CARDS:
            raise ValueError("uids must be a list of 1 to %d UIDs" % MAX_CARDS)
        cards = []
        for uid in uids:
            if not isinstance(uid, str) or len(uid) not in (8, 14, 20):
                raise ValueError("uid must be 8, 14 or 20 hex characters")
            try:
                b = bytes.fromhex(uid)
            except ValueError:
                raise ValueError("uid must be hex") from None
            # ISO/IEC 14443-3: the cascade tag 0x88 never starts a single UID or a double
            # UID's second level (a reader would take it for a longer UID).
            if (len(b) == 4 and b[0] == 0x88) or (len(b) == 7 and b[3] == 0x88):
                raise ValueError("uid must not have the cascade tag 88 where a level starts")
            cards.append(b)
        if len({c for c in cards}) != len(cards):
            raise ValueError("uids must be different")
        hold = req.get("hold_s", 1.0)
        if not _num(hold, 0, 3600) or hold == 0:
            raise ValueError("hold_s must be a number of seconds in (0, 3600]")
        frames = req.get("frames")
        if frames is not None and (isinstance(frames, bool) or not isinstance(frames, int)
                                   or not 0 <= frames <= 1000):
            raise ValueError("frames must be an integer from 0 to 1000")
        for b in cards:
            self.rfid.place(b, until_us=t + int(hold * 1e6), frames=frames)
            self.event(t, "tap", b.hex().upper(), 0)
        self.wake()  # the world's thread takes them out of the field when hold_s is up

    def op_fault(self, req, t):
        kind = req.get("kind")
        if kind in HW_FAULTS:
            return self._hw_fault(kind, req, t)
        if kind == "reader_down":
            # Station-wide: the reader's chip stops answering; MISO, undriven, reads `miso`
            # (0: the DevKitC's GPIO19 has no pull-up; 255 on a MISO with a pull-up). Back
            # on: the chip powers up again from reset, as after a reconnected cable.
            on = req.get("on", True)
            miso = req.get("miso", 0)
            if not isinstance(on, bool):
                raise ValueError("on must be a boolean")
            if miso not in (0, 255) or isinstance(miso, bool):
                raise ValueError("miso must be 0 or 255")
            self.rfid.set_down(on, miso)
            self.event(t, "fault", {"kind": kind, "on": on}, 0)
            return None
        if kind in ("grid_meter_down", "grid_meter_garbage"):
            on = req.get("on", True)
            if not isinstance(on, bool):
                raise ValueError("on must be a boolean")
            self.grid_faults[kind[5:]] = on
            self.event(t, "fault", {"kind": kind, "on": on}, 0)
            return None
        if kind not in FAULT_KINDS:
            raise ValueError("kind must be one of " + ", ".join(
                FAULT_KINDS + ("grid_meter_down", "grid_meter_garbage")))
        on = req.get("on", True)
        if not isinstance(on, bool):
            raise ValueError("on must be a boolean")
        c = self._conn(req)
        self.faults[c.id][kind] = on
        self.event(t, "fault", {"kind": kind, "on": on}, c.id)
        if kind == "weld" and not on and not c.contactor:
            c._move_contacts(t, False)
        c.settle(t)

    def op_temp(self, req, t):
        sensor = req.get("sensor", "ok")
        if sensor not in ("ok", "open", "short"):
            raise ValueError("sensor must be ok, open or short")
        if "c" in req or sensor == "ok" and "sensor" not in req:
            v = req.get("c")
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not -60 <= v <= 200:
                raise ValueError("c must be a number from -60 to 200")
            self.temp_c = float(v)
        self.ntc_sensor = sensor

    def _hw_fault(self, kind, req, t):
        """`bounce_ms` / `adc_noise` with `value`: the board-wide hw settings by their fault
        names; `on: false` restores the default."""
        key, default, top = HW_FAULTS[kind]
        on = req.get("on", True)
        if not isinstance(on, bool):
            raise ValueError("on must be a boolean")
        v = req.get("value") if on else default
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= top:
            raise ValueError("value must be a number from 0 to %d" % top)
        self.hw[key] = float(v)
        self.event(t, "fault", {"kind": kind, "on": on, "value": v}, 0)
        return {key: self.hw[key]}

    def op_hw(self, req, t):
        """Extension: the board's analog imperfections (docs/simulator.md)."""
        checks = {
            "noise_mv": lambda v: 0 <= v <= 2000,
            "spikes": lambda v: 0 <= v <= 0.5,
            "read_us": lambda v: 5 <= v <= 200,
            "bounce_ms": lambda v: 0 <= v <= 1000,
            "rcd_transient_ms": lambda v: 0 <= v <= 100,
            "input_glitches": lambda v: 0 <= v <= 0.5,
            "duty_error": lambda v: -50 <= v <= 50,
            "rfid_noise": lambda v: 0 <= v <= 0.5,
        }
        new = {}
        for k, ok in checks.items():
            if k in req:
                v = req[k]
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not ok(v):
                    raise ValueError("%s out of range" % k)
                new[k] = v
        if "start_glitch" in req:
            if not isinstance(req["start_glitch"], bool):
                raise ValueError("start_glitch must be a boolean")
            new["start_glitch"] = req["start_glitch"]
        if "seed" in req:
            if isinstance(req["seed"], bool) or not isinstance(req["seed"], int):
                raise ValueError("seed must be an integer")
            self.rng.seed(req["seed"])
        self.hw.update(new)
        self.rfid.noise = self.hw["rfid_noise"]
        return dict(self.hw)

    def op_grid(self, req, t):
        i = req.get("i")
        if (
            not isinstance(i, list)
            or len(i) != 3
            or not all(_num(x, -1000, 1000) for x in i)
        ):
            raise ValueError("i must be [L1, L2, L3], amperes from -1000 to 1000")
        self.grid_i = [float(x) for x in i]

    def op_flash(self, req, t):
        """Arm a power cut: it comes when `cut_after_bytes` more bytes were written to the
        flash, in the middle of the write that crosses it (a torn write). `full`: every
        write is refused (no space left) until `full` is false again."""
        n = req.get("cut_after_bytes")
        full = req.get("full")
        if "cut_after_bytes" not in req and "full" not in req:
            raise ValueError("give cut_after_bytes or full")
        if "cut_after_bytes" in req and (
                isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= 10**7):
            raise ValueError("cut_after_bytes must be an integer from 0 to 10000000")
        if "full" in req and not isinstance(full, bool):
            raise ValueError("full must be true or false")
        if "cut_after_bytes" in req:
            self.flash.arm(n)
        if "full" in req:
            self.flash.full = full
            self.event(t, "flash_full", full, 0)
        return {"writes": self.flash.writes, "bytes": self.flash.bytes,
                "refused": self.flash.refused}

    def op_meter(self, req, t):
        # All checked before anything changes.
        c = self._conn(req)
        s = req.get("speed")
        if "speed" in req and not _num(s, 0, 1e6):
            raise ValueError("speed must be a number from 0 to 1000000")
        e = req.get("energy_wh")
        if "energy_wh" in req and (isinstance(e, bool) or not isinstance(e, int)
                                   or not 0 <= e <= 10**11):
            raise ValueError("energy_wh must be an integer from 0 to 100000000000")
        for x in self.conns.values():
            x.accrue(t)
        if "speed" in req:
            self.meter_speed = float(s)
        if "energy_wh" in req:
            c.energy_wh = float(e)

    def op_get(self, req, t):
        c = self._conn(req)
        c.accrue(t)
        high, _ = c.sample()
        return {
            "cp": c.cp,
            "cp_high_v": round(high / 1000, 1),
            "pwm_duty_pct": c.duty_pct(),
            "offered_a": c.offered_a(),
            "contactor": c.contactor,
            "contactor_feedback": c.closed,
            "ev_i": list(c.ev_i),
            "energy_wh": int(c.energy_wh),
            "temp_c": self.temp_c,
            "rcd": c.rcd,
            "plugged": c.plugged,
            "now_us": t,
        }

    def op_events(self, req, t):
        since = req.get("since", 0)
        if isinstance(since, bool) or not isinstance(since, int) or since < 0:
            raise ValueError("since must be a non-negative integer")
        return {"next": len(self.log), "events": self.log[since:]}

    def op_hang(self, req, t):
        """Extension: the board's next pilot sample blocks for `s` seconds, as a stuck
        ADC or bus driver would: the control loop stalls and the watchdog must act."""
        s = req.get("s", 5.0)
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not 0 < s <= 60:
            raise ValueError("s must be a number of seconds in (0, 60]")
        self.hang_s = float(s)

    def op_dns(self, req, t):
        """Extension: the name service. ok answers at once, slow after delay_s, dead fails
        after delay_s (as a silent DNS server does); `down: true` is dead."""
        mode = req.get("mode", self.dns_mode)
        if "down" in req:
            if not isinstance(req["down"], bool):
                raise ValueError("down must be a boolean")
            mode = "dead" if req["down"] else ("ok" if mode == "dead" else mode)
        if mode not in DNS_MODES:
            raise ValueError("mode must be ok, slow or dead")
        d = req.get("delay_s", self.dns_delay_s)
        if isinstance(d, bool) or not isinstance(d, (int, float)) or not 0 <= d <= 60:
            raise ValueError("delay_s must be a number of seconds in [0, 60]")
        self.dns_mode = mode
        self.dns_delay_s = float(d)
        return {"mode": mode, "delay_s": self.dns_delay_s}

    def op_ntp(self, req, t):
        """Extension: the NTP server. answer=false: requests go unanswered."""
        a = req.get("answer", self.ntp_answer)
        if not isinstance(a, bool):
            raise ValueError("answer must be a boolean")
        off = req.get("offset_s", self.ntp_offset_s)
        if isinstance(off, bool) or not isinstance(off, (int, float)) or abs(off) > 1e9:
            raise ValueError("offset_s must be a number of seconds")
        self.ntp_answer = a
        self.ntp_offset_s = float(off)
        return {"answer": a, "offset_s": self.ntp_offset_s}

    def dns_lookup(self, host):
        """One name query from the board (runner's name service thread): blocks the asking
        thread as the mode says; returns the line to answer (`A ip` or `E errno`)."""
        with self.lock:
            mode, delay = self.dns_mode, self.dns_delay_s
            self.event(now_us(), "dns", {"host": host, "query": True}, 0)
        if mode != "ok":
            time.sleep(delay)
        with self.lock:
            if mode == "dead":
                err = DNS_ERR_FAIL
            elif host.endswith(".invalid") or not host:
                err = DNS_ERR_NONAME  # RFC 2606: a name that never exists
            else:
                err = None
            v = {"host": host, "ip": "127.0.0.1"} if err is None else {"host": host,
                                                                        "error": err}
            self.event(now_us(), "dns", v, 0)
        return "A 127.0.0.1\n" if err is None else "E %d\n" % err

    def ntp_request(self):
        """One NTP request arrived (runner's NTP thread): the offset to answer with, or
        None when the server is silent."""
        with self.lock:
            self.event(now_us(), "ntp", {"answered": self.ntp_answer}, 0)
            return self.ntp_offset_s if self.ntp_answer else None

    def op_stats(self, req, t):
        """Extension: loop timing as seen from the world (gap between pilot samples)."""
        out = {
            "loop_max_gap_us": self.sample_max_gap_us,
            "loop_gaps_over_10ms": self.sample_gaps_over_10ms,
            "samples": self.samples,
            "meter_requests": self.line.requests,
            "meter_frames_without_de": self.line.frames_without_de,
            "meter_replies_lost_to_de": self.line.replies_lost_to_de,
            "meter_frames_cut_by_de": self.line.frames_cut_by_de,
            "fw_loop_max_gap_ms": self.fw_loop_max_gap_ms,
            "boot_commands": self.boot_commands,
            "temp_reads": self.temp_reads,
            "temp_reads_cold": self.temp_reads_cold,
            "mirror_bounce_reads": self.mirror_bounce_reads,
            "rcd_transient_reads": self.rcd_transient_reads,
            "input_glitches": self.input_glitches,
            "rfid_spi_transactions": self.rfid.spi_transactions,
            "rfid_spi_bytes": self.rfid.spi_bytes,
            "rfid_frames": self.rfid.frames,
            "rfid_collisions": self.rfid.collisions,
            "rfid_cards": sorted(self.rfid.cards),
            "now_us": t,
        }
        reset = req.get("reset", False)
        if not isinstance(reset, bool):
            raise ValueError("reset must be a boolean")
        if reset:
            self.sample_max_gap_us = 0
            self.sample_gaps_over_10ms = 0
            self.samples = 0
        return out
