"""Freeze manifest: MicroPython for ESP32 plus this firmware, board and libraries in one image.

Build, from a MicroPython checkout (after `make submodules` in ports/esp32), with `make libs`
already run in this repo so lib/ulogging.py exists:

    cd micropython/ports/esp32
    make BOARD=ESP32_GENERIC FROZEN_MANIFEST=/abs/path/to/boards/esp32_devkitc/manifest.py

(or `make firmware BOARD=esp32_devkitc MPY_DIR=... IDF_PATH=...` here). The build runs this
file with its own directory as the working directory, so the relative paths below resolve
against boards/esp32_devkitc/ wherever the checkout lives.
"""

# ruff: noqa: F821 - include/package/module/require are globals the build injects.

# The port's default manifest, the firmware, the shared ESP32 parts, the libraries, the
# version and licence.
include("../esp32_common/esp32_manifest.py")
metadata(description="EVSE charge-point controller firmware for the ESP32-DevKitC board")

# This board, importable as `board` (the name main.py imports), and its Wi-Fi/NTP module.
module("board.py")
module("net.py")
