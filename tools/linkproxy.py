"""A TCP proxy on 127.0.0.1 that can cut a station's link to its broker: `cut()` closes every
connection through it and refuses new ones (the listening socket is closed, so a connect
gets ECONNREFUSED); `restore()` listens again on the same port. `cut(silent=True)` instead
keeps the connections open and drops every byte both ways, and accepts new connections that
never hear anything: a link that dies without a FIN or RST (a cable pulled, Wi-Fi gone),
which a station notices only by its keepalive or a stalled send.

One thread per proxy serves every connection through it (selectors), so twenty stations
cost twenty threads that sleep while nothing moves."""

import collections
import selectors
import socket
import threading


class LinkProxy:
    """127.0.0.1:port -> upstream_host:upstream_port. `port` 0 picks a free one."""

    def __init__(self, upstream_port, upstream_host="127.0.0.1", port=0):
        self.upstream = (upstream_host, upstream_port)
        self._sel = selectors.DefaultSelector()
        self._pairs = {}  # socket -> its peer socket
        self._clients = set()  # the station-side sockets now open
        self._pending = collections.deque()  # (what, silent, done) for the selector thread
        self._listener = None
        self._silent = False
        self.port = port
        self.accepted = 0  # connections accepted (all modes)
        self.cuts = 0
        self._listen()
        # A socketpair wakes the selector when cut()/restore()/stop() change things.
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._running = True
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name="linkproxy-%d" % self.port)
        self._thread.start()

    @property
    def address(self):
        return "127.0.0.1:%d" % self.port

    @property
    def is_cut(self):
        return self._listener is None or self._silent

    def connections(self):
        """Station-side connections now open through the proxy."""
        return len(self._clients)

    def _listen(self):
        ls = socket.socket()
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(("127.0.0.1", self.port))
        ls.listen(16)
        ls.setblocking(False)
        self.port = ls.getsockname()[1]
        self._listener = ls
        self._sel.register(ls, selectors.EVENT_READ, "listen")

    def _wake(self):
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass

    def cut(self, silent=False):
        """Cut the link. Returns once every connection is closed and the port refuses
        (close mode) or once bytes are being dropped (silent mode)."""
        done = threading.Event()
        self.cuts += 1
        self._pending.append(("cut", silent, done))
        self._wake()
        if not done.wait(5):
            raise RuntimeError("proxy did not cut")

    def restore(self):
        done = threading.Event()
        self._pending.append(("restore", None, done))
        self._wake()
        if not done.wait(5):
            raise RuntimeError("proxy did not restore")

    def stop(self):
        self._running = False
        self._wake()
        self._thread.join(5)

    # -- the selector thread ------------------------------------------------------------------

    def _close_pair(self, s):
        peer = self._pairs.pop(s, None)
        for x in (s, peer):
            if x is None:
                continue
            self._pairs.pop(x, None)
            self._clients.discard(x)
            try:
                self._sel.unregister(x)
            except (KeyError, ValueError):
                pass
            try:
                x.close()
            except OSError:
                pass

    def _close_all(self):
        for s in list(self._pairs) + list(self._clients):
            self._close_pair(s)

    def _apply(self, what, silent):
        if what == "cut":
            if silent:
                self._silent = True
                if self._listener is None:
                    self._listen()  # accepts, and then never answers
                return
            self._silent = False
            if self._listener is not None:
                self._sel.unregister(self._listener)
                self._listener.close()
                self._listener = None
            self._close_all()
        else:
            if self._silent:
                # Connections that lived through a silent cut have lost bytes: a real link
                # would have broken them, so they go.
                self._silent = False
                self._close_all()
            if self._listener is None:
                self._listen()

    def _accept(self):
        try:
            c, _ = self._listener.accept()
        except (BlockingIOError, OSError):
            return
        self.accepted += 1
        c.setblocking(False)
        self._clients.add(c)
        if self._silent:
            self._sel.register(c, selectors.EVENT_READ, ("client", None))
            return
        try:
            u = socket.create_connection(self.upstream, timeout=2)
        except OSError:
            self._clients.discard(c)
            c.close()  # the broker is down: the station sees its connection closed
            return
        u.setblocking(False)
        self._pairs[c] = u
        self._pairs[u] = c
        self._sel.register(c, selectors.EVENT_READ, ("client", u))
        self._sel.register(u, selectors.EVENT_READ, ("upstream", c))

    def _pump(self, s, peer):
        try:
            data = s.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._close_pair(s)
            return
        if self._silent or peer is None:
            return  # dropped on the floor
        try:
            peer.setblocking(True)
            peer.settimeout(2)
            peer.sendall(data)
            peer.setblocking(False)
        except OSError:
            self._close_pair(s)

    def _run(self):
        while self._running:
            for key, _ in self._sel.select(1.0):
                d = key.data
                if d == "wake":
                    try:
                        self._wake_r.recv(4096)
                    except BlockingIOError:
                        pass
                    while self._pending:
                        what, silent, done = self._pending.popleft()
                        self._apply(what, silent)
                        done.set()
                elif d == "listen":
                    if self._listener is not None:
                        self._accept()
                elif isinstance(d, tuple):
                    # A socket closed earlier in this batch (its peer's EOF) is skipped.
                    if key.fileobj.fileno() >= 0 and (
                            key.fileobj in self._pairs or key.fileobj in self._clients):
                        self._pump(key.fileobj, d[1])
        self._close_all()
        if self._listener is not None:
            self._sel.unregister(self._listener)
            self._listener.close()
            self._listener = None
        self._sel.unregister(self._wake_r)
        self._wake_r.close()
        self._wake_w.close()
        self._sel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
