"""Freeze manifest: MicroPython for ESP32 plus this firmware, board and libraries in one image.

Build, from a MicroPython checkout (after `make submodules` in ports/esp32), with `make libs`
already run in this repo so lib/ulogging.py exists:

    cd micropython/ports/esp32
    make BOARD=ESP32_GENERIC FROZEN_MANIFEST=/abs/path/to/boards/esp32_devkitc/manifest.py

The build runs this file with its own directory as the working directory, so the relative
paths below resolve against boards/esp32_devkitc/ wherever the checkout lives.
"""

# ruff: noqa: F821 - include/package/module/require are globals the build injects.

metadata(
    description="EVSE charge-point controller firmware for the ESP32-DevKitC board",
    version="0.1.0",
    license="MIT",
)

# The port's default manifest (_boot.py, filesystem setup, asyncio, networking bundle).
include("$(PORT_DIR)/boards/manifest.py")

# The application package and the composition root. A frozen main.py runs at boot even
# when the filesystem holds one; Ctrl-C at the REPL still stops it.
package("evse", base_path="../../firmware")
module("main.py", base_path="../../firmware")
module("service.py", base_path="../../firmware")  # the technician's kit at the console

# This board, importable as `board` (the name main.py imports), and its Wi-Fi/NTP module.
module("board.py")
module("net.py")



# main.py imports `ulogging` (the pinned micropython-ulogging that `make libs` fetches);
# micropython-lib's require("logging") provides `logging` instead, so freeze the pinned file.
module("ulogging.py", base_path="../../lib")
