"""The composition root (firmware/main.py) on the unix port: every way out of the control
loop leaves the outputs safe, and Ctrl-C gives a technician one boot at the REPL without
the watchdog (the service boot)."""

import os
import signal
import subprocess
import time

from scenario import charging
from simctl import Station


def _firmware_pid(st):
    out = subprocess.run(["pgrep", "-P", str(st.proc.pid), "micropython"],
                         capture_output=True, text=True).stdout.split()
    assert len(out) == 1, out
    return int(out[0])


def _wait_stderr(st, text, timeout=10.0):
    end = time.monotonic() + timeout
    while text not in st.stderr():
        if time.monotonic() > end:
            raise AssertionError("no %r in stderr:\n%s" % (text, st.stderr()[-2000:]))
        time.sleep(0.05)


def test_ctrl_c_makes_outputs_safe_and_gives_one_service_boot(tmp_path):
    """Break: main.py without the finally (no board.safe()) -> the contactor opens only by
    the board reset, with no +12 V pilot from the firmware; without the flag file there
    is no service boot."""
    st = Station(state_dir=str(tmp_path))
    try:
        charging(st)
        pid = _firmware_pid(st)
        n = len(st.ctl.events())
        os.kill(pid, signal.SIGINT)  # what Ctrl-C on the serial console does
        _wait_stderr(st, "service: outputs safe")
        # The next boot stops at the REPL once (no station, no watchdog) ...
        _wait_stderr(st, "service: station not started")
        evs = st.ctl.events(n)
        whats = [(e["what"], e["value"]) for e in evs]
        # The firmware itself opened the contactor and put the pilot to +12 V, before the
        # board reset that follows the process exit (pilot "off").
        assert ("contactor", False) in whats and ("pilot", "+12") in whats, whats
        assert whats.index(("pilot", "+12")) < whats.index(("pilot", "off")), whats
        assert not os.path.exists(os.path.join(str(tmp_path), "nomain"))  # consumed
        # ... and the one after charges again, as after any reset.
        st.wait_for(lambda s: s["contactor"], timeout=15, what="charging again")
    finally:
        st.stop()
