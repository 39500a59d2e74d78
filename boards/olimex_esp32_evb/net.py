"""The ESP32-EVB's network (board.net): Ethernet first (the on-board LAN8710A PHY through
network.LAN), the Wi-Fi station as a fallback when wifi.ssid is set and the cable has given
no IP address for 30 s; name lookups and the RTC as on every ESP32 board (esp32net.NetBase).

Same contract as the DevKitC's Wi-Fi (boards/esp32_common/esp32net.py): poll() runs on every
control-loop pass and returns at once, True while the station holds an IP address, and
allocates nothing while nothing changes; resolve() blocks and runs on the link's lookup
thread only. The Ethernet driver is built and started at boot, once: link negotiation and
DHCP then run in the driver's own tasks, so poll() only reads isconnected(), which on the
ESP32 port is True once the interface has its IP address (ETH_GOT_IP).

Pins (README.md, Ethernet): the LAN8710A's RMII data lines are fixed by the ESP32's EMAC
(GPIO19, 21, 22, 25, 26, 27); MDC GPIO23 and MDIO GPIO18 are wired so on the board; the
50 MHz reference clock comes from the board's oscillator into GPIO0. The board sequences
the PHY's power and the oscillator from EN in hardware, so there is no power or reset pin."""

from time import ticks_diff

import network
from machine import Pin
from micropython import const

from esp32net import NetBase, Wifi

_MDC = const(23)
_MDIO = const(18)
_REF_CLK = const(0)  # 50 MHz in from the board's oscillator (EMAC_TX_CLK)
_PHY_ADDR = const(0)  # PHYAD0-2 strapped low on the board
# Ethernet without an IP this long (from boot, or since it was lost) before Wi-Fi is tried:
# link negotiation takes ~2-3 s and DHCP a few more, so a cable that works never waits.
_FALLBACK_MS = const(30000)
_WIFI_OFF = {"wifi.ssid": "", "wifi.password": ""}  # what the Wi-Fi sees while Ethernet is up


def lan():
    """The ESP32-EVB's Ethernet interface, started (esp_eth_start). Boot only: installing the
    driver resets the PHY over MDIO and takes a while; raises OSError if the PHY does not
    answer or this image has no network.LAN (CONFIG_IDF_TARGET_ESP32 images have it)."""
    nic = network.LAN(mdc=Pin(_MDC), mdio=Pin(_MDIO), phy_type=network.PHY_LAN8710,
                      phy_addr=_PHY_ADDR, ref_clk=Pin(_REF_CLK), ref_clk_mode=Pin.IN)
    nic.active(True)
    return nic


class Net(NetBase):
    def __init__(self):
        self._lan = None
        self.error = None  # why Ethernet is not available (the driver raised at boot)
        try:
            self._lan = lan()
        except Exception as e:  # noqa: BLE001 - charge offline (or on Wi-Fi), say why in diag
            self.error = repr(e)
        self._wifi = None  # built the first time the fallback is needed (esp_wifi_init)
        self._via = None  # "eth" or "wifi" while a link is up: what diag reports
        self._eth_up = False
        self._since_ms = None  # Ethernet without an IP since (first poll, or the loss)
        self._eth_gone = False  # ... for _FALLBACK_MS: Wi-Fi may take over
        self._wifi_on = False
        # Diagnostics, reported in diag ("net") and readable at the REPL.
        self.joins = 0  # Ethernet got an IP address
        self.losses = 0  # Ethernet lost it after being up
        self.last_status = None  # lan.status() when it was lost (4: link down, ETH_*)
        self.fallbacks = 0  # times Wi-Fi took over from Ethernet

    def diag(self):
        w = self._wifi
        return {"via": self._via, "joins": self.joins, "losses": self.losses,
                "last_status": self.last_status, "error": self.error,
                "fallbacks": self.fallbacks, "wifi": w.diag() if w is not None else None}

    def poll(self, now_ms, cfg):
        """True while the station holds an IP address (Ethernet, else the Wi-Fi fallback).
        Never blocks; the one slow call is the fallback's first Wi-Fi start (esp_wifi_init
        and active(True), tens of ms, once per boot) after 30 s without Ethernet."""
        nic = self._lan
        if nic is not None and nic.isconnected():
            if not self._eth_up:
                self._eth_up = True
                self._eth_gone = False
                self.joins += 1
            if self._wifi_on:
                # Back on the cable: Wi-Fi off (lwIP would keep routing through it), and
                # "down" for this one pass so the link drops its Wi-Fi connection and
                # reconnects over Ethernet.
                self._wifi_on = False
                self._wifi.poll(now_ms, _WIFI_OFF)
                self._via = None
                return False
            self._via = "eth"
            return True
        if self._eth_up:
            self._eth_up = False
            self.losses += 1
            self.last_status = nic.status()
            self._since_ms = now_ms
        elif self._since_ms is None:
            self._since_ms = now_ms
        if not self._eth_gone:
            # Latched once, so the stamp is never compared after it is 30 s old (ticks wrap).
            if ticks_diff(now_ms, self._since_ms) < _FALLBACK_MS:
                self._via = None
                return False
            self._eth_gone = True
        w = self._wifi
        if not self._wifi_on:
            if not cfg["wifi.ssid"]:
                self._via = None
                return False  # no Wi-Fi configured: wait for the cable
            if w is None:
                w = self._wifi = Wifi()
            self._wifi_on = True
            self.fallbacks += 1
        up = w.poll(now_ms, cfg)  # joins, retries, and switches off if wifi.ssid is cleared
        self._via = "wifi" if up else None
        return up
