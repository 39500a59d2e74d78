"""One script, the same cases, on CPython and on the MicroPython unix port: the tests of a
pure firmware module compare the two outputs line by line."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIRMWARE = os.environ.get("EVSE_FIRMWARE") or os.path.join(ROOT, "firmware")
MICROPYTHON = os.path.join(os.path.dirname(sys.executable), "micropython")


def run_port_script(interpreter, tmp_path, name, cases, script, heap, timeout):
    """Runs `script` (`-c`) with argv firmware dir, a fresh flash dir and a file of the
    cases (one JSON per line); returns its stdout, one JSON value per line. `heap`: the unix
    port's -X heapsize."""
    root = tmp_path / name
    root.mkdir()
    path = tmp_path / (name + ".jsonl")
    path.write_text("".join(json.dumps(c) + "\n" for c in cases))
    args = [interpreter] + (["-X", "heapsize=" + heap] if interpreter == MICROPYTHON else [])
    r = subprocess.run(args + ["-c", script, FIRMWARE, str(root), str(path)],
                       capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr
    return [json.loads(x) for x in r.stdout.splitlines()]
