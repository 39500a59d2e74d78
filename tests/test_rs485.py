"""RS-485 direction: DE high for exactly the request's time on the wire, on the fake UART
(order of calls) and on the simulated line (which drops frames sent without DE, cuts
frames whose DE falls early and loses replies that start while DE is still high)."""

import time

import pytest

from evse.rs485 import Rs485
from simctl import Station


class Uart:
    def __init__(self, log, fail=False):
        self.log = log
        self.fail = fail

    def write(self, buf):
        self.log.append("write")
        if self.fail:
            raise OSError(5)
        return len(buf)

    def flush(self):
        self.log.append("flush")


def test_de_wraps_write_and_flush_and_always_falls():
    log = []
    port = Rs485(Uart(log), lambda v: log.append("de%d" % v))
    assert log == ["de0"]  # listening from the start
    assert port.write(b"\x01\x04\x00\x00\x00\x02\x71\xcb") == 8
    assert log == ["de0", "de1", "write", "flush", "de0"]
    log.clear()
    bad = Rs485(Uart(log, fail=True), lambda v: log.append("de%d" % v))
    with pytest.raises(OSError):
        bad.write(b"\x01")
    assert log[-1] == "de0"  # never left driving the bus


def test_simulated_line_sees_every_frame_with_de_and_no_loss(tmp_path):
    """Break: Rs485.write without flush -> frames cut; without de(1) -> frames unsent."""
    st = Station(state_dir=str(tmp_path), config=["meter_interval_s=1"])
    try:
        st.op("stats", reset=True)
        time.sleep(3)
        s = st.op("stats")
        assert s["meter_requests"] >= 6  # the meter was polled (three blocks a second)
        assert s["meter_frames_without_de"] == 0
        assert s["meter_frames_cut_by_de"] == 0
        assert s["meter_replies_lost_to_de"] == 0
    finally:
        st.stop()
