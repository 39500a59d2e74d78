"""The board interface: everything the firmware asks of a board, written down once.

A board module (`boards/<name>/board.py`, deployed as `board`) defines `class Board` as a
subclass of BoardBase. Required members raise NotImplementedError here; optional ones have
the defaults below, so the firmware never has to guess with getattr. docs/boards.md is the
same list for people adding a board."""


class BoardBase:
    # -- required --------------------------------------------------------------------------
    name = None  # short board name, reported in info.board
    max_current_a = None  # what the contactor, terminals and wiring are rated for (A)
    phases = 3  # phases wired to the outlet
    # connectors: list of per-connector HAL objects, each with
    #   .pilot: pwm(duty_u16), plus12(), minus12(), sample() -> (high_mv, low_mv),
    #           duty_read() -> the generator pin's measured duty in %, or None (cannot)
    #   .contactor: set(on), feedback() -> True/False, or None without a mirror contact
    #   rcd_tripped() -> bool, rcd_test(on), pp_ohms() -> ohms or None (no PP resistor)
    connectors = ()
    fs = "/"  # flash root for config and state files
    uid = None  # the board's unique id as lowercase hex (station id default)

    def temp_c(self):
        """Board temperature in degrees C; raise OSError on a failed sensor."""
        raise NotImplementedError

    def wdt(self, timeout_ms):
        """Start the hardware watchdog; the returned object has feed()."""
        raise NotImplementedError

    def idle(self, ms):
        """Sleep the rest of a control-loop period (ms may be 0)."""
        raise NotImplementedError

    def unix_time(self):
        """Seconds since 1970, or None while the clock is not set."""
        raise NotImplementedError

    def reset(self):
        """Hard reset; never returns."""
        raise NotImplementedError

    # -- optional --------------------------------------------------------------------------
    uart = None  # the meter's RS-485 UART (machine.UART-like, non-blocking reads), or None
    spi = None  # the RFID reader: (spi, cs_pin), machine.SPI-like (write_readinto) and its
    #             NSS pin (called with 0 / 1); None: no reader (evse.rfid.Reader)
    net = None  # network: poll(now_ms, cfg) -> link up?, resolve(host) (blocking, called
    #             on the lookup thread), set_time(unix_s), ntp_port, diag() (docs/boards.md)
    meter_transport = None  # overrides config meter.transport (e.g. the sim's "tcp:H:P")
    config_overrides = ()  # ["key=json", ...]: first-boot configuration (factory values)
    config_pinned = None  # {key: value} fixed on every boot, shown in config, not settable
    console_in = None  # the serial console's input (pollable, e.g. sys.stdin) for the
    #                    service console (evse/console.py), or None for none
    console_out = None  # its output stream (write(str)); None: sys.stdout

    def ready(self):
        """The first control-loop pass completed (LED on, confirm an OTA image)."""

    def flash_write(self, f, data):
        """Write data to an open flash file (the sim board models torn writes here)."""
        f.write(data)

    def led(self, state):
        """Status LED, if any."""

    def loop_gap(self, ms):
        """A new largest control-loop gap was measured (the sim reports it)."""

    def boot_escape(self):
        """True to skip starting the station at boot (a technician's REPL, no watchdog)."""
        return False

    def safe(self):
        """Every output to its safe state (contactors open, pilot +12 V); must not raise."""
        for hal in self.connectors:
            try:
                hal.contactor.set(False)
                hal.pilot.plus12()
            except Exception:  # noqa: BLE001 - keep going: the next connector matters too
                pass
