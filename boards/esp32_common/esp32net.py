"""The network pieces every ESP32 board here shares: name lookups and the RTC (NetBase) and
the Wi-Fi station (Wifi), driven by evse/link.py through board.net. NTP itself is
evse/ntp.py. boards/<name>/net.py builds the board's Net from these (the DevKitC: Wi-Fi;
the ESP32-EVB: Ethernet first, Wi-Fi as a fallback).

poll() runs on every control-loop pass (~5 ms) and must return at once: Wifi is a small state
machine over the non-blocking ESP32 WLAN calls (connect() only starts the join; the driver
reports the result through isconnected()). Nothing here sleeps or waits in a loop,
and on the hot path (nothing changed) it allocates nothing: two config look-ups, identity
compares, small ints and one isconnected() call. resolve() is the one call that blocks: the
firmware runs it on a thread of its own (evse/sock.py), never on the control loop."""

import socket
from time import ticks_add, ticks_diff

import network
from micropython import const

from esp32parts import set_rtc

_OFF = const(0)  # no SSID configured: interface inactive, poll() says "no link"
_WAIT = const(1)  # between attempts: connect() again once _retry_ms is reached
_JOINING = const(2)  # connect() issued: watching isconnected() until the deadline
_UP = const(3)  # associated and holding an IP address

_JOIN_MS = const(20000)  # give up an attempt that has no IP after 20 s
_SETTLE_MS = const(500)  # after disconnect(): let the driver drop the old association first
_BACKOFF_MIN_MS = const(2000)  # wait after the first failed attempt, doubled per failure
_BACKOFF_MAX_MS = const(60000)


class NetBase:
    """What board.net offers besides poll() and diag(), the same on every ESP32 link."""

    ntp_port = 123  # evse/ntp.py asks this UDP port

    def resolve(self, host):
        """The IPv4 address of host, as text. BLOCKS: the port's getaddrinfo waits for the
        DNS server (lwIP: about 7 s per silent server) or, for a `.local` name, for an mDNS
        answer (up to 5 s). evse/sock.py calls it on its own thread; the port releases the
        GIL meanwhile (MP_THREAD_GIL_EXIT around the lookup), so the control loop runs."""
        return socket.getaddrinfo(host, 0)[0][-1][0]

    def set_time(self, unix_s):
        """Set the RTC (UTC) from NTP (evse/ntp.py). board.unix_time() reads it back; from
        then on mbedTLS checks certificate dates against a real date."""
        set_rtc(unix_s)


class Wifi(NetBase):
    """The Wi-Fi station: joins wifi.ssid / wifi.password, retries with backoff, rejoins a
    lost or changed network; the radio is off while wifi.ssid is empty."""

    def __init__(self):
        self._wlan = None
        try:
            # esp_wifi_init: done here, when the board builds its Net (the DevKitC at boot),
            # so the control loop never pays for it. The radio stays off until poll() sees an
            # SSID.
            self._wlan = network.WLAN(network.STA_IF)
        except Exception:  # noqa: BLE001 - out of memory: charge offline, retry in _join()
            pass
        self._state = _OFF
        self._ssid = None  # the config objects last seen: an identity check per poll
        self._pw = None
        self._retry_ms = 0
        self._deadline_ms = 0
        self._backoff = _BACKOFF_MIN_MS
        # Diagnostics, reported in diag ("net") and readable at the REPL.
        self.joins = 0  # successful joins
        self.losses = 0  # connections lost after being up
        self.failures = 0  # attempts given up (no IP within 20 s, or the driver raised)
        self.last_status = None  # wlan.status() when the last attempt timed out (201 no AP...)

    def diag(self):
        return {"joins": self.joins, "losses": self.losses, "failures": self.failures,
                "last_status": self.last_status}

    # -- link hooks ------------------------------------------------------------------------
    def poll(self, now_ms, cfg):
        """True while the station holds an IP address. Never blocks."""
        ssid = cfg["wifi.ssid"]
        pw = cfg["wifi.password"]
        if ssid is not self._ssid or pw is not self._pw:
            self._credentials(now_ms, ssid, pw)  # rare: first poll or a config change
        s = self._state
        if s == _UP:
            if self._wlan.isconnected():
                return True
            self.losses += 1
            self._drop(now_ms, _SETTLE_MS)  # rejoin from scratch straight away
            return False
        if s == _JOINING:
            w = self._wlan
            if w.isconnected():
                self._state = _UP
                self._backoff = _BACKOFF_MIN_MS
                self.joins += 1
                return True
            if ticks_diff(now_ms, self._deadline_ms) >= 0:
                # status() only for the record: it is no reliable early verdict. The driver
                # keeps re-associating while an attempt is requested (STAT_CONNECTING), and
                # recent ports keep reporting the previous attempt's reason (201 no AP,
                # 202 auth, STAT_IDLE after disconnect()) until the next event, so ending an
                # attempt on it could end every new attempt on its first poll.
                self.last_status = w.status()
                self._fail(now_ms)
            return False
        if s == _WAIT and ticks_diff(now_ms, self._retry_ms) >= 0:
            self._join(now_ms)
        return False

    # -- the state machine -----------------------------------------------------------------
    def _credentials(self, now_ms, ssid, pw):
        changed = ssid != self._ssid or pw != self._pw
        self._ssid = ssid
        self._pw = pw
        if not changed:
            return  # the same text in new objects (the config was saved again)
        self._backoff = _BACKOFF_MIN_MS
        if ssid:
            if self._state == _OFF:
                self._state = _WAIT
                self._retry_ms = now_ms  # join in this very poll
            else:
                self._drop(now_ms, _SETTLE_MS)  # new network: leave the old one first
            return
        # No SSID: switch the radio off (also one left on by a soft reset).
        self._state = _OFF
        w = self._wlan
        if w is not None:
            try:
                if w.active():
                    w.disconnect()
                    w.active(False)
            except Exception:  # noqa: BLE001
                pass

    def _join(self, now_ms):
        try:
            w = self._wlan
            if w is None:
                w = self._wlan = network.WLAN(network.STA_IF)
            if not w.active():
                # esp_wifi_start: once per power-up (or after the SSID was cleared), a few
                # tens of ms; recent ports wait here for the driver's STA_START event.
                w.active(True)
            if w.isconnected():
                # Still associated from before a soft reset: keep it if it is our network.
                if w.config("ssid") == self._ssid:
                    self._state = _UP
                    self._backoff = _BACKOFF_MIN_MS
                    self.joins += 1
                    return
                self._drop(now_ms, _SETTLE_MS)
                return
            w.connect(self._ssid, self._pw)  # returns at once; the driver joins in background
        except Exception:  # noqa: BLE001 - OSError from the driver (e.g. "Wifi Invalid State")
            self.last_status = None
            self._fail(now_ms)
            return
        self._state = _JOINING
        self._deadline_ms = ticks_add(now_ms, _JOIN_MS)

    def _fail(self, now_ms):
        self.failures += 1
        self._drop(now_ms, self._backoff)
        self._backoff = min(self._backoff * 2, _BACKOFF_MAX_MS)

    def _drop(self, now_ms, wait_ms):
        """Stop the driver's own re-association, then try again after wait_ms."""
        w = self._wlan
        if w is not None:
            try:
                w.disconnect()
            except Exception:  # noqa: BLE001
                pass
        self._state = _WAIT
        self._retry_ms = ticks_add(now_ms, wait_ms)
