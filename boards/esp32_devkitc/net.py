"""The DevKitC's network (board.net): the Wi-Fi station, name lookups and the RTC, all in the
shared boards/esp32_common/esp32net.py (README.md, "Wi-Fi, names and clock"). This board has
no other link, so its Net is the Wi-Fi station as it is."""

from esp32net import Wifi as Net  # noqa: F401 - board.py imports Net from here
