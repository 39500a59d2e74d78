"""Start a local MQTT broker on 127.0.0.1 for tests, bench and the demo: mosquitto (Debian
package) when installed, otherwise amqtt (pure Python, from requirements-dev.txt)."""

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time


def stop_process(proc, timeout_s=5.0):
    """SIGTERM, and SIGKILL if it has not ended within timeout_s; waits for the end."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def mosquitto_path():
    return shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None
    )


class _PortTaken(RuntimeError):
    pass


def _wait_port(port, proc, timeout=10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise _PortTaken("broker exited with %s" % proc.returncode)
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("broker did not listen on %d" % port)


class Broker:
    """A broker process on 127.0.0.1:port; stop() ends it. `kind` says which one."""

    def __init__(self, port=None, allow_fallback=True, extra_conf="", per_listener=False):
        # A port chosen here may be taken by another process before the broker binds it
        # (the broker then exits): choose again, a few times.
        for attempt in range(5):
            try:
                self._start(port or free_port(), allow_fallback, extra_conf, per_listener)
                return
            except _PortTaken as e:
                if port or attempt == 4:
                    raise RuntimeError("broker did not start: %s" % e) from None

    def _start(self, port, allow_fallback, extra_conf, per_listener):
        self.port = port
        self.dir = tempfile.mkdtemp(prefix="evse-broker-")
        exe = mosquitto_path()
        if exe:
            self.kind = "mosquitto"
            conf = os.path.join(self.dir, "mosquitto.conf")
            with open(conf, "w") as f:
                head = "per_listener_settings true\n" if per_listener else ""
                if hasattr(os, "geteuid") and os.geteuid() == 0:
                    # As root mosquitto would drop to its own user, which cannot read the
                    # test's private temp dirs (certificates, password file).
                    head += "user root\n"
                f.write(
                    "%slistener %d 127.0.0.1\nallow_anonymous true\npersistence false\n"
                    # Test clients subscribed to '#' read slower than a flood arrives; the
                    # default queue (1000) would drop QoS 1 messages meant for them.
                    "max_queued_messages 100000\n%s" % (head, self.port, extra_conf)
                )
            cmd = [exe, "-c", conf]
        elif allow_fallback:
            self.kind = "amqtt"
            conf = os.path.join(self.dir, "amqtt.yaml")
            with open(conf, "w") as f:
                f.write(
                    "listeners:\n  default:\n    type: tcp\n    bind: 127.0.0.1:%d\n"
                    "plugins:\n  amqtt.plugins.authentication.AnonymousAuthPlugin:\n"
                    "    allow_anonymous: true\n" % self.port
                )
            amqtt = os.path.join(os.path.dirname(sys.executable), "amqtt")
            cmd = [amqtt, "-c", conf]
        else:
            raise RuntimeError("mosquitto not installed (make test installs the Debian package)")
        self.log = open(os.path.join(self.dir, "broker.log"), "wb")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        try:
            if self.kind == "mosquitto":
                # Someone else's listener on the port would also answer a connect: wait for
                # mosquitto's own word that it listens ("... running").
                self._wait_running()
            _wait_port(self.port, self.proc)
        except Exception:
            self.stop()
            raise

    def _wait_running(self, timeout=10.0):
        path = os.path.join(self.dir, "broker.log")
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with open(path, "rb") as f:
                text = f.read()
            if self.proc.poll() is not None:
                raise _PortTaken("mosquitto exited with %s: %s" % (
                    self.proc.returncode, text[-300:].decode("utf-8", "replace")))
            if b" running" in text:
                return
            time.sleep(0.02)
        raise RuntimeError("mosquitto did not start: %s" % text[-300:])

    def stop(self):
        stop_process(self.proc)
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
