"""Simulated charger runner: the unchanged firmware on the MicroPython unix port with the sim
board, the physical world it drives, and the control port (docs/simulator.md)."""

import argparse
import json
import os
import shutil
import signal
import socket
import socketserver
import struct
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from simflash import MeterMemory  # noqa: E402

from simworld import World  # noqa: E402

MAX_LINE = 65536  # a control request longer than this is garbage, not a request
NTP_TO_UNIX_S = 2208988800  # 1900-01-01 -> 1970-01-01


def micropython_binary():
    cand = os.path.join(os.path.dirname(sys.executable), "micropython")
    if os.path.exists(cand):
        return cand
    found = shutil.which("micropython")
    if not found:
        raise SystemExit("sim: micropython (the unix port) not found; run 'make venv'")
    return found


class Runner:
    def __init__(self, args):
        self.args = args
        self.world = World(args.connectors)
        self.world.on_watchdog = self._watchdog
        self.proc = None
        self.stopping = False
        self.ready_printed = False
        self.boots = 0
        self._config_file = None
        self._lock = threading.Lock()
        os.makedirs(args.state_dir, exist_ok=True)
        mem = MeterMemory(os.path.join(args.state_dir, "world-meter.json"))
        mem.load(self.world.conns)
        self.world.meter_memory = mem
        self.world.dns_mode = args.dns
        self.world.dns_delay_s = args.dns_delay_s
        self.world.ntp_answer = args.ntp == "ok"

    # -- firmware link ----------------------------------------------------------------------
    def serve_firmware(self):
        srv = socket.socket()
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("127.0.0.1", 0))
        srv.listen(4)
        self.fw_port = srv.getsockname()[1]

        def accept():
            while True:
                conn, _ = srv.accept()
                threading.Thread(target=self._fw_conn, args=(conn,), daemon=True).start()

        threading.Thread(target=accept, daemon=True).start()

    def _fw_conn(self, conn):
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        f = conn.makefile("rb")
        first = []  # the firmware's first commands after this boot, for the boot-order test
        self.world.boot_commands.append(first)
        try:
            for raw in f:
                line = raw.decode("ascii", "replace")
                if len(first) < 4:
                    first.append(line.strip())
                if line == "U\n":  # the firmware's first loop ran
                    self._ready()
                    continue
                if line == "X\n":
                    continue  # firmware-requested reboot: the exit follows
                reply = self.world.firmware_line(line)
                if reply is not None:
                    conn.sendall(reply.encode())
        except OSError:
            pass
        finally:
            conn.close()

    def _ready(self):
        with self._lock:
            if self.ready_printed:
                return
            self.ready_printed = True
        sys.stdout.write("READY %d\n" % self.control_port)
        sys.stdout.flush()

    # -- the network's services: a name service and an NTP server -------------------------
    def serve_network(self):
        """The board's name lookups (one TCP connection per query: a line with the name, a
        line back) and an NTP server on UDP; both on 127.0.0.1, ports passed to the board.
        The world decides how they answer (ops `dns` and `ntp`)."""
        srv = socket.socket()
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("127.0.0.1", 0))
        srv.listen(8)
        self.dns_port = srv.getsockname()[1]
        world = self.world

        def answer(conn):
            try:
                host = conn.makefile("rb").readline().decode("ascii", "replace").strip()
                conn.sendall(world.dns_lookup(host).encode())
            except OSError:
                pass
            finally:
                conn.close()

        def accept():
            while True:
                conn, _ = srv.accept()
                threading.Thread(target=answer, args=(conn,), daemon=True).start()

        threading.Thread(target=accept, daemon=True).start()
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind(("127.0.0.1", 0))
        self.ntp_port = udp.getsockname()[1]

        def ntp():
            while True:
                try:
                    req, peer = udp.recvfrom(512)
                except OSError:
                    return
                if len(req) < 48:
                    continue
                off = world.ntp_request()
                if off is None:
                    continue  # a silent server
                t = time.time() + off + NTP_TO_UNIX_S
                ts = struct.pack("!II", int(t) & 0xFFFFFFFF, int((t % 1) * 2**32))
                # LI 0, version 4, mode 4 (server), stratum 2; originate = the request's
                # transmit timestamp, then receive and transmit time.
                reply = bytes((0x24, 2, 6, 0xEC)) + bytes(12) + ts + req[40:48] + ts + ts
                try:
                    udp.sendto(reply, peer)
                except OSError:
                    pass

        threading.Thread(target=ntp, daemon=True).start()

    # -- control port -----------------------------------------------------------------------
    def serve_control(self):
        world = self.world

        class Handler(socketserver.StreamRequestHandler):
            def handle(self):
                while True:
                    raw = self.rfile.readline(MAX_LINE + 1)
                    if not raw:
                        return
                    if len(raw) > MAX_LINE:
                        reply = {"ok": False, "error": "line too long"}
                        # drop the rest of the over-long line
                        while raw and not raw.endswith(b"\n"):
                            raw = self.rfile.readline(MAX_LINE + 1)
                    elif not raw.strip():
                        continue
                    else:
                        try:
                            req = json.loads(raw.decode("utf-8"))
                            reply = world.op(req)
                        except (ValueError, UnicodeDecodeError) as e:
                            reply = {"ok": False, "error": str(e)}
                    try:
                        self.wfile.write((json.dumps(reply) + "\n").encode())
                    except OSError:
                        return

        class Server(socketserver.ThreadingTCPServer):
            allow_reuse_address = True
            daemon_threads = True

        self.control = Server(("127.0.0.1", self.args.control_port), Handler)
        self.control_port = self.control.server_address[1]
        threading.Thread(target=self.control.serve_forever, daemon=True).start()

    # -- the firmware process ---------------------------------------------------------------
    def _cmd(self):
        a = self.args
        cmd = [micropython_binary()]
        if a.heapsize:
            cmd += ["-X", "heapsize=" + a.heapsize]
        cmd += [
            os.path.join(a.firmware, "main.py"),
            "--runner",
            str(self.fw_port),
            "--state-dir",
            os.path.abspath(a.state_dir),
            "--connectors",
            str(a.connectors),
            "--uid",
            a.id.encode().hex(),
        ]
        if a.broker:
            cmd += ["--broker", a.broker]
        cmd += ["--meter", a.meter]
        if a.console:
            cmd += ["--console", "1"]
        cmd += ["--dns-port", str(self.dns_port), "--ntp-port", str(self.ntp_port)]
        if a.config:
            # In a file, not as arguments: the unix port aborts on an argument over 255 bytes
            # (a long meter.custom map would never boot).
            if self._config_file is None:
                fd, self._config_file = tempfile.mkstemp(prefix="evse-config-", suffix=".txt")
                with os.fdopen(fd, "w") as f:
                    f.write("\n".join(a.config) + "\n")
            cmd += ["--config-file", self._config_file]
        return cmd

    def _env(self):
        env = dict(os.environ)
        # ".frozen" first: the unix port's own frozen modules (ssl, asyncio, ...).
        paths = [".frozen", os.path.join(ROOT, "boards", "sim"), os.path.join(ROOT, "lib")]
        env["MICROPYPATH"] = ":".join(paths)
        env["EVSE_TICKS_WRAP_MS"] = str(int(self.args.ticks_wrap_s * 1000))
        return env

    def supervise(self):
        """Boot the firmware; when it exits (reboot, crash, watchdog), reset and boot again."""
        fast_fails = 0
        while not self.stopping:
            started = time.monotonic()
            self.boots += 1
            # The firmware reads the service console from the runner's stdin with
            # --console, and nothing otherwise (a test's stdin is not a technician).
            self.proc = subprocess.Popen(self._cmd(), env=self._env(), cwd=ROOT,
                                         stdin=None if self.args.console else
                                         subprocess.DEVNULL)
            rc = self.proc.wait()
            self.world.board_reset()
            if self.stopping:
                break
            sys.stderr.write("sim: firmware exited (%s); rebooting\n" % rc)
            fast_fails = fast_fails + 1 if time.monotonic() - started < 2 else 0
            time.sleep(0.2 if fast_fails < 5 else 5.0)

    def _watchdog(self):
        sys.stderr.write("sim: watchdog expired: resetting the board\n")
        p = self.proc
        if p is not None and p.poll() is None:
            p.kill()

    def shutdown(self, *_):
        self.stopping = True
        p = self.proc
        if p is not None and p.poll() is None:
            p.terminate()
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
        self.world.board_reset()
        self.world.stop()
        if self._config_file:
            try:
                os.unlink(self._config_file)
            except OSError:
                pass
        sys.exit(0)


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--id", default="CP1", help="station name; the sim board's unique id")
    ap.add_argument("--broker", default=None, help="HOST:PORT of the MQTT broker")
    ap.add_argument("--state-dir", required=True, help="the station's flash")
    ap.add_argument("--control-port", type=int, default=7001)
    ap.add_argument("--connectors", type=int, default=1, choices=(1, 2, 3, 4))
    ap.add_argument("--meter", default="sim", help="sim (built-in SDM630) or tcp:HOST:PORT")
    ap.add_argument("--heapsize", default=None, help="MicroPython heap, e.g. 256k or 96wk")
    ap.add_argument("--config", action="append", help="key=value (JSON), first boot only")
    ap.add_argument("--console", action="store_true",
                    help="the firmware's service console on this process's stdin/stdout")
    ap.add_argument("--ticks-wrap-s", type=float, default=2.0,
                    help="ticks_ms/ticks_us wrap (at 2^30, as on the ESP32) this long after "
                         "each boot (default 2)")
    ap.add_argument("--dns", default="ok", choices=("ok", "slow", "dead"),
                    help="the name service at boot: ok, slow (answers after --dns-delay-s) "
                         "or dead (fails after --dns-delay-s); the dns op changes it")
    ap.add_argument("--dns-delay-s", type=float, default=3.0,
                    help="how long a slow or dead name service takes (default 3)")
    ap.add_argument("--ntp", default="ok", choices=("ok", "dead"),
                    help="the NTP server at boot: ok (answers) or dead (silent)")
    ap.add_argument("--firmware", default=os.path.join(ROOT, "firmware"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.meter != "sim" and not a.meter.startswith("tcp:"):
        ap.error("--meter must be sim or tcp:HOST:PORT")
    if not 0 <= a.dns_delay_s <= 60:
        ap.error("--dns-delay-s must be from 0 to 60")
    return a


def main(argv=None):
    args = parse(argv)
    r = Runner(args)
    signal.signal(signal.SIGTERM, r.shutdown)
    signal.signal(signal.SIGINT, r.shutdown)
    r.serve_firmware()
    r.serve_network()
    r.serve_control()
    t = threading.Thread(target=r.supervise, daemon=True)
    t.start()
    while t.is_alive():
        t.join(0.5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
