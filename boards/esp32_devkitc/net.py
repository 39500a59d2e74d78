"""Wi-Fi station and NTP clock for the ESP32 board (board.net, driven by evse/link.py).

poll() runs on every control-loop pass (~5 ms) and must return at once: it is a small state
machine over the non-blocking ESP32 WLAN calls (connect() only starts the join; the driver
reports the result through isconnected()). Nothing here sleeps or waits in a loop,
and on the hot path (nothing changed) it allocates nothing: two config look-ups, identity
compares, small ints and one isconnected() call."""

from time import ticks_add, ticks_diff

import network
from micropython import const

_OFF = const(0)  # no SSID configured: interface inactive, poll() says "no link"
_WAIT = const(1)  # between attempts: connect() again once _retry_ms is reached
_JOINING = const(2)  # connect() issued: watching isconnected() until the deadline
_UP = const(3)  # associated and holding an IP address

_JOIN_MS = const(20000)  # give up an attempt that has no IP after 20 s
_SETTLE_MS = const(500)  # after disconnect(): let the driver drop the old association first
_BACKOFF_MIN_MS = const(2000)  # wait after the first failed attempt, doubled per failure
_BACKOFF_MAX_MS = const(60000)
_NTP_EVERY_MS = const(3600000)  # at most one NTP query per hour (it blocks; see online())


class Net:
    def __init__(self):
        self._wlan = None
        try:
            # esp_wifi_init: done here, at boot, so the control loop never pays for it. The
            # radio stays off until poll() sees an SSID.
            self._wlan = network.WLAN(network.STA_IF)
        except Exception:  # noqa: BLE001 - out of memory: charge offline, retry in _join()
            pass
        self._state = _OFF
        self._ssid = None  # the config objects last seen: an identity check per poll
        self._pw = None
        self._retry_ms = 0
        self._deadline_ms = 0
        self._backoff = _BACKOFF_MIN_MS
        self._ntp_ms = None
        # Diagnostics, reported in diag ("net") and readable at the REPL.
        self.joins = 0  # successful joins
        self.losses = 0  # connections lost after being up
        self.failures = 0  # attempts given up (no IP within 20 s, or the driver raised)
        self.last_status = None  # wlan.status() when the last attempt timed out (201 no AP...)
        self.clock_set = False  # True once NTP has set the RTC

    def diag(self):
        return {"joins": self.joins, "losses": self.losses, "failures": self.failures,
                "last_status": self.last_status, "clock_set": self.clock_set}

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

    def online(self, now_ms, cfg):
        """Called once after each MQTT connect: set the RTC by NTP, at most once an hour.

        This is the one call here that blocks. ntptime.settime() resolves the host
        (getaddrinfo: instant for an IP literal, normally tens of ms right after the broker
        connect proved DNS works, several seconds only if the DNS server stops answering) and
        then waits for the UDP reply with a 1 s socket timeout (ntptime's `timeout`, 1 s,
        hard-coded in older versions). So about 1 s at worst, once an hour, while DNS
        answers. Every exception is swallowed: a failed NTP query must never disturb the link
        or charging; it is not retried before the hour is up either."""
        last = self._ntp_ms
        if last is not None:
            d = ticks_diff(now_ms, last)
            if 0 <= d < _NTP_EVERY_MS:  # d < 0 only after a ticks wrap (days): query again
                return
        self._ntp_ms = now_ms
        try:
            host = cfg["ntp.host"]
            if not host:
                return
            import ntptime

            ntptime.host = host
            ntptime.timeout = 1  # the default; stated so the bound above holds
            ntptime.settime()
            self.clock_set = True
        except Exception:  # noqa: BLE001 - DNS, timeout, no ntptime module, bad reply
            pass

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
