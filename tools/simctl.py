"""Host-side helpers for the simulator: start a station (tools/sim.py) and talk to its
control port. Used by the tests, the bench and the dashboard."""

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


class Control:
    """One control-port connection: op(name, **args) -> reply dict."""

    def __init__(self, port, timeout=10.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.f = self.sock.makefile("rwb")
        self._lock = threading.Lock()

    def raw(self, line):
        with self._lock:
            self.f.write(line if isinstance(line, bytes) else line.encode())
            self.f.flush()
            return json.loads(self.f.readline())

    def op(self, name, **args):
        args["op"] = name
        return self.raw(json.dumps(args) + "\n")

    def events(self, since=0):
        return self.op("events", since=since)["events"]

    def close(self):
        try:
            self.f.close()
            self.sock.close()
        except OSError:
            pass


class Station:
    """A simulated station process (its own process group, so kill() is a power cut)."""

    def __init__(self, state_dir=None, broker=None, station_id="CP1", connectors=1,
                 heapsize=None, config=(), ready_timeout=20.0, quiet=True, meter=None,
                 firmware=None, sim_args=(), console=False):
        self.state_dir = state_dir or tempfile.mkdtemp(prefix="evse-state-")
        self.id = station_id
        # Port 0: the runner binds a free port itself and names it on its READY line, so
        # no other process can take the port between choosing and binding it.
        self.port = None
        cmd = [sys.executable, os.path.join(HERE, "sim.py"), "--id", station_id,
               "--state-dir", self.state_dir, "--control-port", "0",
               "--connectors", str(connectors)]
        if broker:
            cmd += ["--broker", broker]
        if heapsize:
            cmd += ["--heapsize", heapsize]
        # EVSE_FIRMWARE: run a mutated copy of firmware/ (proving a test can fail).
        firmware = firmware or os.environ.get("EVSE_FIRMWARE")
        if firmware:
            cmd += ["--firmware", firmware]
        if meter:  # "tcp:HOST:PORT": a Modbus RTU gateway instead of the built-in meter
            cmd += ["--meter", meter]
        for kv in config:
            cmd += ["--config", kv]
        cmd += list(sim_args)  # further runner options, e.g. ["--dns", "slow"]
        if console:
            cmd.append("--console")  # type() / console_wait(): the service console
        self.stderr_path = os.path.join(self.state_dir, "sim.stderr")
        self._err = open(self.stderr_path, "ab")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self._err,
                                     cwd=ROOT, start_new_session=True,
                                     stdin=subprocess.PIPE if console else subprocess.DEVNULL)
        self._out = bytearray()  # the console's output after READY
        self._out_cv = threading.Condition()
        self._wait_ready(ready_timeout)
        self.ctl = Control(self.port)
        if console:
            threading.Thread(target=self._read_console, daemon=True).start()

    def _read_console(self):
        while True:
            b = self.proc.stdout.read1(4096) if hasattr(self.proc.stdout, "read1") else (
                self.proc.stdout.read(1))
            if not b:
                return
            with self._out_cv:
                self._out += b
                self._out_cv.notify_all()

    def console_mark(self):
        with self._out_cv:
            return len(self._out)

    def type(self, line):
        """Type a line at the service console (as a technician on the serial port)."""
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def console_wait(self, text, since, timeout=10.0):
        """The console output after mark `since`, once it contains `text` (or once
        text(output) is true)."""
        end = time.monotonic() + timeout
        with self._out_cv:
            while True:
                out = self._out[since:].decode("utf-8", "replace")
                if text(out) if callable(text) else text in out:
                    return out
                left = end - time.monotonic()
                if left <= 0:
                    raise AssertionError("%r not on the console:\n%s" % (text, out[-3000:]))
                self._out_cv.wait(left)

    def _wait_ready(self, timeout):
        line = [None]

        def read():
            line[0] = self.proc.stdout.readline()

        t = threading.Thread(target=read, daemon=True)
        t.start()
        t.join(timeout)
        # The service console's first prompt may come before READY on the same line.
        if not line[0] or b"READY" not in line[0]:
            self.kill()
            raise RuntimeError("station not ready: %r\n%s" % (line[0], self.stderr()))
        self.port = int(line[0].split(b"READY", 1)[1].split()[0])

    def stderr(self):
        try:
            with open(self.stderr_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def op(self, name, **args):
        return self.ctl.op(name, **args)

    def wait_for(self, pred, timeout=5.0, interval=0.01, what="condition"):
        """Poll `get` until pred(snapshot) is true; return the snapshot."""
        end = time.monotonic() + timeout
        while True:
            snap = self.op("get")
            if pred(snap):
                return snap
            if time.monotonic() > end:
                raise AssertionError("timeout waiting for %s; last %r" % (what, snap))
            time.sleep(interval)

    def stop(self):
        """Orderly shutdown (SIGTERM)."""
        if hasattr(self, "ctl"):
            self.ctl.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()
        self._err.close()

    def kill(self):
        """Power cut: SIGKILL the whole process group."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
