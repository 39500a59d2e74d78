"""Which firmware runs: frozen modules or files left on flash (a deploy shadows a frozen
image silently on the ESP32, where '' comes before '.frozen' in sys.path)."""

import os
import subprocess

from evse.image import describe

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class M:
    def __init__(self, f):
        self.__file__ = f


def stat_of(files):
    def stat(p):
        if p not in files:
            raise OSError(2, "ENOENT")
        return (0,) * 10

    return stat


def test_all_frozen_all_files_and_mixed():
    mods = {"evse": M("evse/__init__.py"), "evse.connector": M("evse/connector.py"),
            "evse.link": M("evse/link.py"), "json": M("json.py"), "sys": object()}
    assert describe(mods, stat_of(set())) == "frozen"
    every = {"evse/__init__.py", "evse/connector.py", "evse/link.py"}
    assert describe(mods, stat_of(every)) == "files"
    # A deploy left evse/connector.mpy: that one module comes from flash.
    mods["evse.connector"] = M("evse/connector.mpy")
    got = describe(mods, stat_of({"evse/connector.mpy"}))
    assert got == "mixed: evse.connector", got


def test_frozen_modules_name_no_file_on_the_unix_port(tmp_path):
    """The rule rests on this: a frozen module's __file__ is a path that is not on the
    filesystem. The unix port freezes asyncio; imported from a directory without it, its
    __file__ names no file. Break: a port that gives frozen modules a real path -> red."""
    mp = os.path.join(ROOT, ".venv", "bin", "micropython")
    code = ("import sys, os\nsys.path.insert(0, %r)\nimport asyncio\nfrom evse.image import "
            "describe\nprint(asyncio.__file__)\n"
            "print(describe({'evse.x': asyncio}, os.stat))\n" % os.path.join(ROOT, "firmware"))
    out = subprocess.run([mp, "-c", code], cwd=str(tmp_path), capture_output=True, text=True,
                         timeout=30, env=dict(os.environ, MICROPYPATH=".frozen"))
    lines = out.stdout.split()
    assert out.returncode == 0, out.stderr
    assert lines[0].startswith("asyncio/"), lines
    assert lines[1] == "frozen", lines
