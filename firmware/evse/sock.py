"""Non-blocking sockets shared by the MQTT client, the Modbus TCP gateway port and NTP, and
the name resolver that keeps the blocking name lookup (getaddrinfo) off the control loop."""

import errno
import socket

from evse.compat import const

try:
    import _thread
except ImportError:  # pragma: no cover - the ESP32 and unix ports both have _thread
    _thread = None

# "Try again" errors of a non-blocking socket; 119 is EINPROGRESS on lwIP (ESP32).
IN_PROGRESS = (errno.EINPROGRESS, errno.EAGAIN, 119)

_REFRESH_S = const(600)  # a known address is looked up again (in the background) after this
_STUCK_S = const(60)  # a lookup running longer than this is reported as failed (not dropped)
_CACHE = const(4)  # names kept: broker, NTP server, Modbus gateway, one spare


def is_ip(host):
    """True for a dotted-quad IPv4 literal: it needs no lookup."""
    parts = host.split(".")
    if len(parts) != 4:
        return False
    for p in parts:
        if not p or len(p) > 3 or not p.isdigit() or int(p) > 255:
            return False
    return True


def addr(ip, port):
    """The socket address of an IPv4 literal. getaddrinfo parses a literal without asking a
    name server (lwIP and glibc alike), so this never blocks."""
    return socket.getaddrinfo(ip, port)[0][-1]


def default_lookup(host):
    """Blocking: the first IPv4 address of host, as text. Boards with a network module pass
    their own (board.net.resolve)."""
    a = socket.getaddrinfo(host, 0, socket.AF_INET)[0][-1]
    if isinstance(a, tuple):  # ESP32, CPython: (ip, port)
        return a[0]
    return "%d.%d.%d.%d" % (a[4], a[5], a[6], a[7])  # unix port: a raw struct sockaddr_in


class Resolver:
    """Names to IPv4 addresses without blocking the caller.

    getaddrinfo blocks its caller: on the ESP32 an mDNS name (`.local`) for up to 5 s
    (MDNS_QUERY_TIMEOUT_MS in ports/esp32/modsocket.c), a silent DNS server for about 7 s per
    configured server (lwIP asks 4 times, 1 + 1 + 2 + 3 s). So a lookup runs on a thread of
    its own: the ESP32 port releases the GIL around the lookup (MP_THREAD_GIL_EXIT in
    _socket_getaddrinfo2), so the control loop runs on meanwhile. One lookup at a time, one
    short-lived thread per lookup; the answer is handed over in a one-slot list that only
    the thread writes and only get() empties (the unix port's threads have no GIL).

    get() is what everything calls, from the control loop: the cached address, or None
    while a lookup is under way, or the lookup's error raised once (the next call starts a
    new lookup: the caller's backoff sets the pace). A cached address older than 10 minutes
    is still used while a fresh lookup runs in the background; a failed refresh keeps it."""

    def __init__(self, lookup=None):
        self.lookup = lookup or default_lookup  # blocking host -> "a.b.c.d"
        self.now_s = 0  # the station's uptime in seconds, set by the link every loop
        self._cache = {}  # host -> [ip or None, error or None, now_s when answered]
        self._job = None  # the host being looked up on the worker thread
        self._job_s = 0
        self._out = [None]  # the worker's answer: (host, ip, error); written once per job
        self._want = []  # hosts waiting for the worker, in order (at most _CACHE)
        self.lookups = 0  # lookups started
        self.failures = 0  # lookups that failed
        self.last_error = None  # repr of the last failure
        self._lit = None  # the last host tested for being an IP literal, and the verdict:
        self._lit_ip = False  # get() runs every loop while waiting, without allocating

    def busy(self, host):
        """True while host is being looked up or waits for its turn."""
        return self._job == host or host in self._want

    def get(self, host):
        """host's address (an IPv4 literal is its own), None while looking it up; raises
        the lookup's OSError once when it failed."""
        if host is not self._lit:
            self._lit = host
            self._lit_ip = is_ip(host)  # split() allocates: once per new config string
        if self._lit_ip:
            return host
        self._harvest()
        e = self._cache.get(host)
        if e is not None:
            if e[0] is not None:
                if self.now_s - e[2] >= _REFRESH_S and not self.busy(host):
                    self._ask(host)  # still answered from the cache meanwhile
                return e[0]
            if e[1] is not None:
                err = e[1]
                del self._cache[host]  # reported once; the next get() asks again
                raise err
        if self._job == host and self.now_s - self._job_s > _STUCK_S:
            raise OSError(errno.ETIMEDOUT)  # the thread is still out there: no second one
        if not self.busy(host):
            self._ask(host)
        return None

    def refresh(self, host):
        """Look host up again at the next get(): the address it gave stopped working."""
        e = self._cache.get(host)
        if e is not None and e[0] is not None:
            e[2] = self.now_s - _REFRESH_S

    def _ask(self, host):
        if self._job is None:
            self._start(host)
        elif host not in self._want and len(self._want) < _CACHE:
            self._want.append(host)

    def _start(self, host):
        self._job = host
        self._job_s = self.now_s
        self.lookups += 1
        if _thread is None:  # pragma: no cover - a port without threads: this one blocks
            self._work(host)
            return
        try:
            _thread.start_new_thread(self._work, (host,))
        except Exception as e:  # noqa: BLE001 - "can't create thread", MemoryError
            self._out[0] = (host, None, OSError(errno.ENOMEM, repr(e)))

    def _work(self, host):
        # On the worker thread: nothing here touches state the control loop uses.
        try:
            r = (host, self.lookup(host), None)
        except Exception as e:  # noqa: BLE001 - OSError(-202), OSError(-2), ...
            r = (host, None, e)
        self._out[0] = r

    def _harvest(self):
        r = self._out[0]
        if r is None:
            return
        self._out[0] = None
        self._job = None
        host, ip, err = r
        old = self._cache.get(host)
        if ip is None:
            self.failures += 1
            self.last_error = "%s: %r" % (host, err)
            if old is not None and old[0] is not None:
                old[2] = self.now_s  # a failed refresh: keep the address, ask again later
            else:
                self._put(host, [None, err if isinstance(err, OSError) else OSError(repr(err)),
                                 self.now_s])
        else:
            self._put(host, [ip, None, self.now_s])
        if self._want:
            self._start(self._want.pop(0))

    def _put(self, host, entry):
        c = self._cache
        if host not in c and len(c) >= _CACHE:
            oldest = None
            for h in c:
                if oldest is None or c[h][2] < c[oldest][2]:
                    oldest = h
            del c[oldest]
        c[host] = entry

    def diag(self):
        return {"lookups": self.lookups, "failures": self.failures,
                "last_error": self.last_error}


# The one resolver: the MQTT client and the Modbus gateway port reach it through connect().
resolver = Resolver()


def close(s):
    """Close, ignoring the errors of an already broken socket."""
    if s is not None:
        try:
            s.close()
        except OSError:
            pass


def connect(host, port):
    """A socket whose connect has been started without waiting for it to finish. A name is
    taken from the resolver; while it is being looked up this raises OSError(EAGAIN) and the
    caller tries again later (its next attempt finds the answer)."""
    ip = resolver.get(host)
    if ip is None:
        raise OSError(errno.EAGAIN, "looking up " + host)
    ai = socket.getaddrinfo(ip, port)[0]
    s = socket.socket(ai[0], socket.SOCK_STREAM)
    s.setblocking(False)
    try:
        s.connect(ai[-1])
    except OSError as e:
        if e.args[0] not in IN_PROGRESS:
            s.close()
            raise
    return s
