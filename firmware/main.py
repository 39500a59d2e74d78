"""Composition root: pick the board, build the station, run it."""

import board  # first: the board forces every contactor off before anything else runs

# The instance takes the module's name: at the REPL of a service boot a technician types
# board.temp_c(), board.connectors[0].pilot.sample(), board.uart ...
board = board.Board()
station = None
link = None
logring = None
# The MQTT outbox (8 KB in one piece) before anything else takes the heap apart.
from evse import mqtt  # noqa: E402

_outbox = mqtt.outbox()
# Flag file on flash: skip starting the station for one boot, so a technician gets a REPL
# without the watchdog (which, once started, cannot be stopped on the ESP32).
_NOMAIN = board.fs.rstrip("/") + "/nomain"


def _logger(ring):
    """Log lines to the console (ulogging) and to the RAM ring s.log() shows."""
    try:
        import ulogging

        lg = ulogging.getLogger("evse")
        levels = {"info": lg.info, "warn": lg.warning, "error": lg.error}
    except ImportError:
        levels = {}

    def log(level, msg):
        ring.add(level, msg)
        f = levels.get(level) or levels.get("info")
        if f:
            f(msg)

    return log


def main():
    global station, link, logring
    from evse import discovery, tls
    from evse.config import parse_overrides
    from evse.link import Link
    from evse.logring import LogRing
    from evse.station import Station

    logring = LogRing(path=board.fs.rstrip("/") + "/log.txt")
    log = _logger(logring)
    station = Station(board, log, parse_overrides(board.config_overrides),
                      board.config_pinned)
    logring.clock = lambda: station.uptime.s
    station.logbook = logring
    link = Link(station, log, tls.context, discovery.configs, _outbox)
    _say_image(station, log)
    if board.console_in is not None:
        # The service console: `s.status()` etc. typed on the serial port, run by the loop.
        import service

        from evse.console import Console

        g = globals()
        g["s"] = service
        station.console = Console(g, board.console_in, board.console_out)
    station.run(link)


def _say_image(station, log):
    """Frozen image or files on flash: a file left by a deploy shadows a frozen module."""
    from evse import VERSION, image

    station.image = image.running()
    if log:
        level = "warn" if station.image.startswith("mixed") else "info"
        log(level, "firmware %s, modules: %s" % (VERSION, station.image))


def _service_boot():
    """The flag (consumed: the next reset charges again) or the board's own escape."""
    import os

    try:
        os.remove(_NOMAIN)
        return True
    except OSError:
        return board.boot_escape()


def _say(msg):
    import sys

    sys.stderr.write(msg + "\n")  # the serial console on a board, the log in the sim


if _service_boot():
    _say("service: station not started, no watchdog. machine.reset() starts it again.")
else:
    try:
        try:
            main()
        finally:
            board.safe()  # every way out of the loop (exception, Ctrl-C, exit): outputs safe
    except KeyboardInterrupt:
        # Ctrl-C on the serial console. The watchdog resets the board within 2 s; the flag
        # makes that boot stop at the REPL, once.
        try:
            with open(_NOMAIN, "w") as f:
                f.write("1")
        except OSError:
            pass
        _say("service: outputs safe; after the watchdog reset the board stays at the REPL")
