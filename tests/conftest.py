import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# EVSE_FIRMWARE points the unit tests (and, via tools/simctl.py, the simulated stations) at
# a mutated copy of firmware/: the way to prove a test fails when its behaviour breaks.
sys.path.insert(0, os.environ.get("EVSE_FIRMWARE") or os.path.join(ROOT, "firmware"))
sys.path.insert(0, os.path.join(ROOT, "tools"))
