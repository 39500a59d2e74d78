"""Composition root: pick the board, build the station, run it."""

import board  # first: the board forces every contactor off before anything else runs

_board = board.Board()


def _logger():
    try:
        import ulogging

        lg = ulogging.getLogger("evse")
        levels = {"info": lg.info, "warn": lg.warning, "error": lg.error}

        def log(level, msg):
            levels.get(level, lg.info)(msg)

        return log
    except ImportError:
        return None


def main():
    from evse.station import Station, parse_overrides

    log = _logger()
    st = Station(_board, log, parse_overrides(getattr(_board, "config_overrides", None)))
    from evse import discovery, tls
    from evse.link import Link

    st.run(Link(st, log, tls.context, discovery.configs))


main()
