"""The log's file on flash: written only while no contactor is closed, at most every 10 s,
rotated at 16 KB; RAM waiting for it is bounded."""

import os

from evse.logring import FILE_MAX, LogRing


def test_lines_wait_while_a_contactor_is_closed(tmp_path):
    """Break: flush ignoring `busy` -> the file is written while charging."""
    p = str(tmp_path / "log.txt")
    r = LogRing(path=p)
    r.add("info", "one")
    r.flush(1000, busy=True)
    assert not os.path.exists(p)  # charging: nothing written
    r.flush(1005, busy=False)
    assert open(p).read() == "     0 info  one\n"
    r.add("warn", "two")
    r.flush(2000, busy=False)  # under 10 s since the last write: waits
    assert "two" not in open(p).read()
    r.flush(11005, busy=False)
    assert open(p).read().endswith("     0 warn  two\n")


def test_the_file_rotates_and_ram_is_bounded(tmp_path):
    """Break: no rotation -> the file grows without end; no budget -> RAM grows."""
    p = str(tmp_path / "log.txt")
    r = LogRing(path=p)
    now = 0
    for i in range(400):
        r.add("info", "line %d %s" % (i, "x" * 60))
        now += 10000
        r.flush(now, busy=False)
    assert os.stat(p).st_size <= FILE_MAX + 2048
    assert os.path.exists(str(tmp_path / "log.1.txt"))
    assert r.tail(1) == ["     0 info  line 399 " + "x" * 60]
    r2 = LogRing(path=p)
    for _ in range(1000):  # never written (always charging): the oldest go, counted
        r2.add("info", "y" * 50)
    assert r2._pending_bytes <= 2048 and r2.dropped > 900
