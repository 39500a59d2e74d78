"""The simulated board's flash and meter memory, as the runner keeps them.

Flash writes: the sim board asks before each write how many of its bytes reach the flash
(`F <n>` -> how many). Normally all; after the `flash` op armed a cut, the write that
crosses the armed byte count stops there and the power goes (the whole runner is killed as
by SIGKILL), so a torn write leaves exactly a prefix on the files, as on a flash without
atomic writes. A full flash (the `flash` op's `full`) refuses every write whole (`-1`): the
board raises OSError(ENOSPC) and nothing reaches the file, as littlefs commits nothing of a
write it cannot finish.

The meter's energy register is kept in a file next to the station's flash: a real meter
keeps its register through the station's power cuts. It is saved whenever the firmware
reads it, so no reading the firmware ever saw is lost by a cut."""

import json
import os
import signal


class Flash:
    def __init__(self):
        self.cut_after = None  # bytes still to write before the power goes, or None
        self.full = False  # every write refused (no space left)
        self.writes = 0
        self.bytes = 0
        self.refused = 0

    def arm(self, after_bytes):
        self.cut_after = after_bytes

    def allow(self, n):
        """How many of a write's n bytes land before the power goes (n: all of them; -1:
        none, the flash is full)."""
        if self.full:
            self.refused += 1
            return -1
        self.writes += 1
        c = self.cut_after
        if c is None or c >= n:
            if c is not None:
                self.cut_after = c - n
            self.bytes += n
            return n
        self.cut_after = None
        self.bytes += c
        return c


def power_cut():
    """The board asked for it after a torn write: everything dies at once."""
    os.killpg(os.getpgid(0), signal.SIGKILL)


class MeterMemory:
    def __init__(self, path):
        self.path = path
        self._saved = {}

    def load(self, conns):
        try:
            with open(self.path) as f:
                saved = json.load(f)
        except (OSError, ValueError):
            return
        for cid, c in conns.items():
            e = saved.get(str(cid))
            if isinstance(e, (int, float)):
                c.energy_wh = float(e)
                self._saved[cid] = c.energy_wh

    def seen(self, cid, energy_wh):
        if self._saved.get(cid) == energy_wh:
            return
        self._saved[cid] = energy_wh
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({str(k): v for k, v in self._saved.items()}, f)
        os.replace(tmp, self.path)
