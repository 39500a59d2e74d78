"""Freeze manifest: MicroPython for ESP32 plus this firmware, board and libraries in one image,
for the Olimex ESP32-EVB.

Build, from a MicroPython checkout (after `make submodules` in ports/esp32), with `make libs`
already run in this repo so lib/ulogging.py exists:

    cd micropython/ports/esp32
    make BOARD=ESP32_GENERIC FROZEN_MANIFEST=/abs/path/to/boards/olimex_esp32_evb/manifest.py

(or `make firmware BOARD=olimex_esp32_evb MPY_DIR=... IDF_PATH=...` here). ESP32_GENERIC is
enough: every CONFIG_IDF_TARGET_ESP32 image has network.LAN with the LAN8710/LAN8720 PHY
driver, and net.py passes the pins and the clock mode itself.
"""

# ruff: noqa: F821 - include/package/module/require are globals the build injects.

# The port's default manifest, the firmware, the shared ESP32 parts, the libraries, the
# version and licence.
include("../esp32_common/esp32_manifest.py")
metadata(description="EVSE charge-point controller firmware for the Olimex ESP32-EVB board")

# This board, importable as `board` (the name main.py imports), and its Ethernet/Wi-Fi/NTP
# module.
module("board.py")
module("net.py")
