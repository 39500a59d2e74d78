"""Our non-blocking MQTT client puts the same bytes on the wire as micropython-lib's
umqtt.simple (the reference the MicroPython world uses), checked on the unix port."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIRMWARE = os.environ.get("EVSE_FIRMWARE") or os.path.join(ROOT, "firmware")

SCRIPT = r"""
import sys
sys.path.insert(0, FIRMWARE)
sys.path.insert(0, ROOT + '/lib')
import umqtt.simple as us
from evse import mqtt


class FakeSock:
    def __init__(self):
        self.tx = bytearray()
        self.rx = bytearray()

    def write(self, b, n=None):
        self.tx += b if n is None else b[:n]
        return len(b) if n is None else n

    def read(self, n):
        out = bytes(self.rx[:n])
        self.rx = self.rx[n:]
        return out

    def setblocking(self, flag):
        pass

    def connect(self, addr):
        pass

    def close(self):
        pass


SOCK = FakeSock()


class FakeSocketModule:
    @staticmethod
    def socket(*a):
        return SOCK

    @staticmethod
    def getaddrinfo(host, port):
        return [(2, 1, 0, '', (host, port))]


us.socket = FakeSocketModule  # umqtt creates its socket itself; hand it ours

ref = us.MQTTClient('evse-435031', '127.0.0.1', port=1883, user='station',
                    password='s3cret', keepalive=120)
ref.set_last_will('evse/evse-435031/online', 'offline', retain=True, qos=1)
SOCK.rx += b'\x20\x02\x00\x00'  # CONNACK
ref.connect()
ref_connect = bytes(SOCK.tx)
SOCK.tx = bytearray()
ref.publish('evse/evse-435031/status', b'{"a":1}', retain=True, qos=0)
ref_pub0 = bytes(SOCK.tx)
SOCK.tx = bytearray()
SOCK.rx += b'\x40\x02\x00\x01'  # PUBACK for packet id 1
ref.publish('evse/evse-435031/reply', b'{"rid":"1","ok":true}', retain=False, qos=1)
ref_pub1 = bytes(SOCK.tx)
SOCK.tx = bytearray()
ref.set_callback(lambda t, m: None)
SOCK.rx += b'\x90\x03\x00\x02\x01'  # SUBACK for packet id 2
ref.subscribe('evse/evse-435031/cmd', qos=1)
ref_sub = bytes(SOCK.tx)

ours = mqtt.Client('evse-435031', 120)
OUT = FakeSock()
ours._sock = OUT  # what our client sends goes through its outbox and the socket


def sent():
    ours._flush(0)
    if ours.outbox_bytes():
        raise SystemExit('outbox not drained')
    out = bytes(OUT.tx)
    OUT.tx = bytearray()
    return out


ours.set_last_will('evse/evse-435031/online', 'offline', True, 1)
ours.set_credentials('station', 's3cret')
ours._connect_packet()
our_connect = sent()
ours.state = mqtt.CONNECTED
ours.publish('evse/evse-435031/status', b'{"a":1}', True, 0)
our_pub0 = sent()
ours.publish('evse/evse-435031/reply', '{"rid":"1","ok":true}', False, 1)
our_pub1 = sent()
ours.subscribe('evse/evse-435031/cmd', 1)
our_sub = sent()

for name, a, b in (('CONNECT', ref_connect, our_connect), ('PUBLISH qos0', ref_pub0, our_pub0),
                   ('PUBLISH qos1', ref_pub1, our_pub1), ('SUBSCRIBE', ref_sub, our_sub)):
    if a != b:
        print('MISMATCH', name, a, b)
        raise SystemExit(1)
    print('same', name, len(a))
"""


def test_wire_format_matches_umqtt_simple():
    r = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "micropython"), "-c",
         "ROOT = %r\nFIRMWARE = %r\n" % (ROOT, FIRMWARE) + SCRIPT],
        capture_output=True, text=True, timeout=30,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("same") == 4, r.stdout
