"""The service console: Python lines typed on the serial port, run between two control-loop
iterations, while the station keeps charging.

On the ESP32 the REPL cannot run beside main.py's loop without a second thread, and a
thread that holds the GIL starves the other (FreeRTOS hands a released mutex to no one in
particular), so the loop would stall while a technician types. Here the loop itself reads
what is typed, a few characters per iteration; a finished line is run in the loop, so a
command costs the loop what it takes to run (a few ms for the service kit's calls).
Ctrl-C still stops the firmware (main.py: outputs safe, REPL after the reset)."""

import sys

from evse.compat import const

_LINE_MAX = const(200)
_CHARS_PER_LOOP = const(32)
# Output goes out a little per loop: the ESP32's console UART (115200 baud) blocks the
# writer, so 1.5 KB printed at once would hold the loop ~140 ms. 32 bytes: ~2.8 ms.
_OUT_PER_LOOP = const(32)
_OUT_MAX = const(4096)
PROMPT = "evse> "


class Console:
    """Polls `stream` (sys.stdin) for typed characters; runs each line in `namespace`."""

    def __init__(self, namespace, stream=None, out=None):
        self.ns = namespace
        self._in = stream if stream is not None else sys.stdin
        self._out = out if out is not None else sys.stdout
        self._line = []
        self._pending = bytearray()  # output not yet written to the console
        self.lost = 0  # output bytes dropped because more than _OUT_MAX waited
        self._poll = None
        self.lines = 0
        self.closed = False
        try:
            import select

            self._poll = select.poll()
            self._poll.register(self._in, select.POLLIN)
            # ipoll (MicroPython) iterates the poll object itself: no list allocated in
            # every loop iteration, as poll() would. Bound once, here.
            self._ipoll = getattr(self._poll, "ipoll", None)
        except (ImportError, AttributeError, OSError, TypeError):
            self.closed = True  # no pollable console on this board
            return
        self._write(PROMPT)

    def _readable(self):
        if self._ipoll is None:
            return bool(self._poll.poll(0))  # CPython
        for _ in self._ipoll(0):
            return True
        return False

    def write(self, s):
        """Queue output (str); it goes out _OUT_PER_LOOP bytes per loop iteration."""
        b = s.encode() if isinstance(s, str) else s
        room = _OUT_MAX - len(self._pending)
        if len(b) > room:
            self.lost += len(b) - room
            b = b[:room]
        self._pending += b

    _write = write

    def _drain(self):
        p = self._pending
        if not p:
            return
        n = min(len(p), _OUT_PER_LOOP)
        while 0 < n < len(p) and p[n] & 0xC0 == 0x80:
            n -= 1  # never split a UTF-8 character
        try:
            self._out.write(bytes(p[:n]).decode())
        except (OSError, UnicodeError):
            pass
        self._pending = p[n:]

    def poll(self):
        """Send some output, take what was typed (bounded), run a completed line. Never
        raises."""
        self._drain()
        if self.closed:
            return
        for _ in range(_CHARS_PER_LOOP):
            if not self._readable():
                return
            c = self._in.read(1)
            if not c:
                self.closed = True  # end of input (no terminal attached)
                return
            if c in "\r\n":
                if c == "\r" or self._line:
                    self._write("\n")
                    self.run("".join(self._line))
                    self._line = []
                    self._write(PROMPT)
                return  # one line per loop iteration at most
            if c in "\x08\x7f":
                if self._line:
                    self._line.pop()
                    self._write("\x08 \x08")
            elif len(self._line) < _LINE_MAX:
                self._line.append(c)

    def run(self, line):
        """An expression prints its value (None prints nothing); a statement just runs."""
        line = line.strip()
        if not line:
            return
        self.lines += 1
        try:
            try:
                v = eval(line, self.ns)  # a statement fails to compile: nothing ran yet
            except SyntaxError:
                exec(line, self.ns)
                return
            if v is not None:
                self._write(repr(v) + "\n")
        except Exception as e:  # noqa: BLE001 - a typo must never stop the station
            self._write(_trace(e))


def _trace(e):
    """The traceback MicroPython prints, as text (print_exception wants a real stream)."""
    try:
        import io

        buf = io.StringIO()
        sys.print_exception(e, buf)
        return buf.getvalue()
    except Exception:  # noqa: BLE001 - CPython (tests), or no print_exception
        return "%s: %s\n" % (type(e).__name__, e)
