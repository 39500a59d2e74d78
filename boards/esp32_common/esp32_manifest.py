"""What every ESP32 board's manifest.py freezes besides its own board.py and net.py: the port's
default manifest, the firmware, the parts the ESP32 boards share, and the libraries.

Included by boards/<name>/manifest.py (include("../esp32_common/esp32_manifest.py")); the
build runs it with this directory as the working directory, so the paths below resolve
against boards/esp32_common/ wherever the checkout lives. Not named manifest.py: it is no
board of its own, and `make deploy` skips files ending in manifest.py."""

# ruff: noqa: F821 - include/package/module/require are globals the build injects.

# The firmware's version and licence, the same on every board (each board's manifest.py
# adds its description).
metadata(version="0.1.0", license="MIT")

# The port's default manifest (_boot.py, filesystem setup, asyncio, networking bundle).
include("$(PORT_DIR)/boards/manifest.py")

# The application package and the composition root. A frozen main.py runs at boot even
# when the filesystem holds one; Ctrl-C at the REPL still stops it.
package("evse", base_path="../../firmware")
module("main.py", base_path="../../firmware")
module("service.py", base_path="../../firmware")  # the technician's kit at the console

# The ESP32 parts the boards share (pilot sampling, contactor, RCD, NTC, RS-485, clock) and
# the shared network pieces (Wi-Fi station, names, RTC).
module("esp32parts.py")
module("esp32net.py")

# main.py imports `ulogging` (the pinned micropython-ulogging that `make libs` fetches);
# micropython-lib's require("logging") provides `logging` instead, so freeze the pinned file.
module("ulogging.py", base_path="../../lib")
