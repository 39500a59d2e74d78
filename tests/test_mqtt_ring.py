"""The MQTT client's outbox is a fixed ring buffer: what goes in comes out byte for byte and
in order, whatever short writes the socket makes and wherever the ring wraps; a full outbox
refuses as docs/mqtt.md says; and on the MicroPython unix port publishing and sending do not
copy the outbox on the heap."""

import errno
import json
import math
import os
import random
import subprocess
import sys

from evse import mqtt

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIRMWARE = os.environ.get("EVSE_FIRMWARE") or os.path.join(ROOT, "firmware")
MICROPYTHON = os.path.join(os.path.dirname(sys.executable), "micropython")

OUTBOX = 8192  # docs/mqtt.md, Buffers: "The send buffer (outbox) holds 8 KB"
PACED = 4096  # "... fills the outbox only up to 4 KB"


class Sock:
    """A non-blocking socket. Each write takes min_write..max_write bytes, and no more than
    `budget` until the test sets it again (None: no budget); a write that takes nothing
    returns None or raises EAGAIN, as MicroPython's sockets do. Readable bytes go in `rx`."""

    def __init__(self, rng=None, max_write=700, min_write=0):
        self.rng = rng or random.Random(1)
        self.min_write = min_write
        self.max_write = max_write
        self.budget = None
        self.tx = bytearray()
        self.rx = bytearray()
        self.client = None
        self.wraps = 0  # writes that ended at the end of the ring with more waiting

    def write(self, b):
        k = min(len(b), self.rng.randint(self.min_write, self.max_write))
        if self.budget is not None:
            k = min(k, self.budget)
            self.budget -= k
        c = self.client
        if c._head + len(b) == len(c._ring) and c.outbox_bytes() > len(b):
            self.wraps += 1
        if not k:
            if self.rng.random() < 0.5:
                raise OSError(errno.EAGAIN)
            return None
        self.tx += bytes(b[:k])  # copy now: the client reuses its buffer
        return k

    def readinto(self, mv):
        if not self.rx:
            raise OSError(errno.EAGAIN)
        n = min(len(mv), len(self.rx))
        mv[:n] = self.rx[:n]
        del self.rx[:n]
        return n

    def close(self):
        pass


def connected(sock, keepalive_s=60):
    c = mqtt.Client("evse-435031", keepalive_s)
    c._sock = sock  # as if connect() and the CONNACK had happened
    c.state = mqtt.CONNECTED
    sock.client = c
    return c


def varlen(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | 0x80 if n else b)
        if not n:
            return bytes(out)


def publish_body(topic, payload, qos=0, pid=0):
    """A PUBLISH after its fixed header (MQTT 3.1.1 §3.3), built independently of the client."""
    t = topic.encode() if isinstance(topic, str) else topic
    p = payload.encode() if isinstance(payload, str) else bytes(payload)
    return len(t).to_bytes(2, "big") + t + (pid.to_bytes(2, "big") if qos else b"") + p


def packet(topic, payload, qos=0, retain=False, pid=0):
    body = publish_body(topic, payload, qos, pid)
    return bytes((0x30 | qos << 1 | int(retain),)) + varlen(len(body)) + body


def sized(total, fill=b"x"):
    """A qos 0 PUBLISH (topic "") of exactly `total` bytes on the wire: (payload, bytes)."""
    n = total - 2
    while 1 + len(varlen(n)) + n != total:
        n -= 1
    payload = (fill * n)[: n - 2]
    return payload, packet("", payload)


def drain(c, s, now=0):
    s.budget = None
    for _ in range(100000):
        if not c.outbox_bytes():
            return
        c.poll(now)
    raise AssertionError("outbox never drained")


def test_random_publishes_come_out_whole_and_in_order():
    """Publishes of every kind and size against a socket of random short writes: the
    socket receives exactly the accepted packets, in order; the return values, counters and
    outbox_bytes() follow the documented rules at every step; the ring wraps many times."""
    rng = random.Random(61851)
    s = Sock(random.Random(7))
    c = connected(s)
    ring = len(c._ring)
    expected = bytearray()
    pid = dropped = inflight = 0
    topics = ["evse/evse-435031/status", "evse/evse-435031/réply", "t", b"evse/b"]
    sizes = [0, 1, 2, 100, 121, 122, 127, 128, 129, 300, 1000, 2500, 4086, 4091, 4092, 5000, 8185]
    for i in range(6000):
        size = rng.choice(sizes)
        kind = rng.random()
        if kind < 0.4:
            payload = ("é" * size)[: size // 2] + "x" * (size % 2)  # str, 2 bytes per é
        elif kind < 0.7:
            payload = bytes(rng.randrange(256) for _ in range(min(size, 40))) * (size // 40 + 1)
            payload = payload[:size]
        else:
            payload = bytearray(rng.randbytes(size))
        topic = rng.choice(topics)
        qos = rng.randrange(2)
        retain = rng.random() < 0.3
        paced = rng.random() < 0.6
        if qos:
            pid = pid % 0xFFFF + 1
        pkt = packet(topic, payload, qos, retain, pid)
        n = len(publish_body(topic, payload, qos, pid))  # the remaining length
        used = c.outbox_bytes()
        assert used == len(expected) - len(s.tx), i
        if used + len(pkt) <= (PACED if paced else OUTBOX):
            want = True
        elif paced and n + 5 > PACED:
            want = None  # could never go
        else:
            want = False
        if want is None or (want is False and not paced):
            dropped += 1
        got = c.publish(topic, payload, retain, qos, paced)
        assert got is want, (i, used, len(pkt), paced)
        if got:
            expected += pkt
            inflight += qos
        assert c.dropped == dropped and c.inflight == inflight
        assert c.outbox_bytes() == len(expected) - len(s.tx)
        # A link slower than the publishing, at times stuck: the outbox fills and wraps.
        s.budget = rng.choice([0, 0, 30, 300, 1500, 6000])
        c.poll(0)
        assert c.error is None and c.state == mqtt.CONNECTED, c.error
    drain(c, s)
    assert c.error is None, c.error
    assert bytes(s.tx) == bytes(expected)
    assert len(expected) > 50 * ring  # the ring went round many times
    assert s.wraps > 200, s.wraps
    assert dropped > 0 and c.dropped == dropped  # refusals did happen


def test_wrap_at_every_offset():
    """A packet starts at every offset of the ring in turn, so the wrap falls at every byte of
    a packet (fixed header, topic length, packet id, payload), with the link sending all but
    one byte in between: every packet comes out whole and in order."""
    s = Sock(random.Random(3), max_write=97, min_write=1)
    c = connected(s)
    ring = len(c._ring)
    topic = "evse/evse-435031/status"
    size = next(n for n in range(301, 400) if math.gcd(n, ring) == 1)  # visits every offset
    payload_len = size - 3 - (2 + len(topic) + 2)  # 3: fixed header with a 2-byte length
    starts = set()
    straddled = 0
    expected = bytearray()
    checked = 0
    for i in range(ring):
        start = (c._head + c.outbox_bytes()) % ring
        starts.add(start)
        straddled += start + size > ring
        payload = bytes((i + j) & 0xFF for j in range(payload_len))
        assert c.publish(topic, payload, False, 1) is True
        pkt = packet(topic, payload, 1, False, i % 0xFFFF + 1)
        assert len(pkt) == size
        expected += pkt
        s.budget = c.outbox_bytes() - 1  # one byte stays: the ring never empties
        c.poll(0)
        assert c.outbox_bytes() == 1 and c.error is None, (i, c.error)
        assert s.tx[checked:] == expected[checked : len(s.tx)], i
        checked = len(s.tx)
    drain(c, s)
    assert bytes(s.tx) == bytes(expected)
    assert starts == set(range(ring))
    assert straddled == size - 1  # the wrap fell inside a packet at each of its byte gaps


def test_a_full_outbox_refuses_without_a_trace():
    """The 8 KB and 4 KB limits hold to the byte: a packet that fits exactly is taken, one
    byte more is refused (False, counted as dropped unless paced; None for a paced message
    that could never fit), and a refused packet leaves nothing in the ring."""
    s = Sock(max_write=10**6)
    s.budget = 0  # the link is stuck
    c = connected(s)
    expected = bytearray()
    p4000, pkt4000 = sized(4000)
    for _ in range(2):
        assert c.publish("", p4000) is True
        expected += pkt4000
    p188, pkt188 = sized(188)
    p4, pkt4 = sized(4)
    assert c.publish("", p188) is True
    expected += pkt188
    assert c.outbox_bytes() == OUTBOX - 4
    assert c.publish("", p4 + b"x") is False  # 5 bytes: one too many
    assert c.dropped == 1
    assert c.publish("", p4) is True  # exactly full
    expected += pkt4
    assert c.outbox_bytes() == OUTBOX
    assert c.publish("", p4) is False and c.dropped == 2
    assert c.publish("", p4, paced=True) is False and c.dropped == 2  # later, not dropped
    assert c.publish("", b"y" * 4090, paced=True) is None and c.dropped == 3  # never
    assert c.outbox_bytes() == OUTBOX
    drain(c, s)
    assert bytes(s.tx) == bytes(expected)

    # Paced: up to 4 KB, the rest is kept for replies.
    s = Sock(max_write=10**6)
    s.budget = 0
    c = connected(s)
    assert c.publish("", sized(PACED - 4)[0], paced=True) is True
    assert c.publish("", p4, paced=True) is True
    assert c.outbox_bytes() == PACED
    assert c.publish("", p4, paced=True) is False and c.dropped == 0
    # remaining length 4091 (+5 = 4096): could fit an emptier outbox, so "later"
    assert c.publish("", b"y" * 4089, paced=True) is False and c.dropped == 0
    # remaining length 4092: more than a paced message may ever take
    assert c.publish("", b"y" * 4090, paced=True) is None and c.dropped == 1
    assert c.publish("", p4) is True  # a reply still finds room
    assert c.outbox_bytes() == PACED + 4


def test_pingreq_and_disconnect_fit_into_a_full_outbox():
    """Replies may fill the outbox to the byte; a PINGREQ and then a DISCONNECT still go
    out after them (the ring keeps room for both)."""
    s = Sock(max_write=10**6)
    s.budget = 0
    c = connected(s, keepalive_s=2)
    expected = bytearray()
    for total in (4000, 4000, 192):
        payload, pkt = sized(total)
        assert c.publish("", payload) is True
        expected += pkt
    assert c.outbox_bytes() == OUTBOX
    c.poll(1001)  # nothing received for more than keepalive/2: PINGREQ
    assert c.error is None and c.state == mqtt.CONNECTED, c.error
    assert c.outbox_bytes() == OUTBOX + 2
    c.disconnect(1002)
    assert c.state == mqtt.CLOSING and c.outbox_bytes() == OUTBOX + 4
    drain(c, s, 1003)
    assert bytes(s.tx) == bytes(expected) + b"\xc0\x00\xe0\x00"


def test_close_empties_the_outbox():
    """A dropped connection loses what was waiting (docs/mqtt.md): after a reconnect the
    socket gets only what was published since, even if the old outbox had wrapped and a
    packet was half sent."""
    s = Sock(max_write=10**6, min_write=1)
    c = connected(s)
    for _ in range(3):
        c.publish("evse/a", b"z" * 3000, False, 1)
        s.budget = 2500
        c.poll(0)
    # something waits, and it runs over the end of the ring
    assert c.outbox_bytes() and c._head + c.outbox_bytes() > len(c._ring)
    c.close("link lost")
    assert c.outbox_bytes() == 0 and c.inflight == 0
    s2 = Sock(max_write=10**6)
    s2.client = c
    c._sock = s2
    c.state = mqtt.CONNECTED
    assert c.publish("evse/b", "after", False, 1) is True
    drain(c, s2)
    assert bytes(s2.tx) == packet("evse/b", "after", 1, False, 4)


def test_puback_across_the_wrap_and_acknowledged_publishes():
    """An incoming QoS 1 PUBLISH is acknowledged with its packet id, also when the PUBACK
    straddles the end of the ring; a PUBACK from the broker ends one in-flight publish."""
    got = []
    s = Sock(max_write=10**6, min_write=1)
    c = connected(s)
    c.on_message = lambda t, p, r: got.append((t, p, r))
    ring = len(c._ring)
    # Our QoS 1 publish (packet id 1), then fill so the send position ends two bytes before
    # the end of the ring, the link sending all but one byte each time.
    fill = (ring - 2 - len(packet("evse/up", b"1", 1, False, 1))) // 2
    for topic, payload, qos in (
        ("evse/up", b"1", 1),
        ("", sized(fill)[0], 0),
        ("", sized(fill)[0], 0),
    ):
        assert c.publish(topic, payload, False, qos) is True
        s.budget = c.outbox_bytes() - 1
        c.poll(0)
    assert (c._head + c.outbox_bytes()) % ring == ring - 2 and c.outbox_bytes() == 1
    assert c.inflight == 1
    body = b"\x00\x0eevse/x/cmd/abc" + b"\x12\x34" + b'{"cmd":"diag"}'
    s.rx += bytes((0x32, len(body))) + body + b"\x40\x02\x00\x01"  # PUBLISH qos 1, PUBACK
    s.budget = 0
    c.poll(0)
    assert c.error is None, c.error
    assert got == [("evse/x/cmd/abc", b'{"cmd":"diag"}', False)]
    assert c.inflight == 0
    drain(c, s)
    assert bytes(s.tx[:14]) == packet("evse/up", b"1", 1, False, 1)
    assert bytes(s.tx[-5:]) == b"x\x40\x02\x12\x34", bytes(s.tx[-5:])  # filler, PUBACK


# -- on the MicroPython unix port ---------------------------------------------------------
def run_alloc(heap, *args):
    r = subprocess.run(
        [
            MICROPYTHON,
            "-X",
            "heapsize=" + heap,
            os.path.join(ROOT, "tools", "mqtt_alloc.py"),
            FIRMWARE,
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(r.stdout)


def test_publish_and_send_do_not_copy_on_micropython():
    """Heap allocated per publish() and per socket write does not grow with the payload:
    only small objects (one GC block, 4 words, each), never a packet or the outbox."""
    rows = run_alloc("4M", "sizes")
    word = 8 if sys.maxsize > 2**32 else 4  # the unix port's word is the host's
    block = 4 * word
    for r in rows:
        print(
            "payload %(payload)5d B: %(alloc_per_publish)6.0f B per publish and poll, "
            "%(alloc_in_publish)4.0f in publish(), %(alloc_per_write)5.1f per write" % r
        )
        assert not r["memory_error"], r
        assert r["accepted"] > 100 and r["writes"] > r["accepted"] // 2, r
        # the encoded topic and payload: bytes objects sharing the str's data
        assert r["alloc_in_publish"] <= 3 * block, r
        assert r["alloc_per_write"] <= 2 * block, r  # a view of the ring (no copy)


def test_soak_on_a_small_heap_on_micropython():
    """5,000 publishes of 0..4,000 bytes (str and bytes, QoS 0/1, paced or not) through a
    slow link with short writes, on a 104 KiB heap: no MemoryError, the link stays up, the
    socket gets exactly the packets accepted, and the heap in use does not grow. (Before the
    ring, copying the outbox on every partial write failed this on a 104 KiB heap.)"""
    r = run_alloc("104K", "soak", "5000")
    print(r)
    assert r["memory_errors"] == 0 and r["error"] == "None", r
    assert r["mismatch"] == 0 and r["unsent_packets"] == 0 and r["outbox_left"] == 0, r
    assert r["accepted"] > 4000 and r["refused"] > 0, r  # the outbox did fill up
    assert r["wraps"] > 1000, r
    assert r["heap_after"] - r["heap_before"] <= 1024, r


class TlsSock(Sock):
    """mbedTLS's rule for a non-blocking write: after one that would block, the next call
    must offer the same data again (it may report more than was newly offered as sent).
    Records every offered length; blocks the first write."""

    def __init__(self):
        super().__init__(max_write=10**6, min_write=10**6)
        self.offers = []
        self.block_next = True

    def write(self, b):
        self.offers.append(len(b))
        if self.block_next:
            self.block_next = False
            raise OSError(errno.EAGAIN)
        return super().write(b)


def test_a_write_that_would_block_is_offered_again_with_the_same_length():
    """Break: offer the whole outbox again (new packets appended since) -> mbedTLS would
    send the first length's worth and report the longer one as sent."""
    s = TlsSock()
    c = connected(s)
    assert c.publish("a", "x" * 100, False, 0)
    c.poll(0)  # the write would block
    first = s.offers[0]
    assert c.publish("b", "y" * 300, False, 0)  # lands behind it in the ring
    c.poll(0)
    assert s.offers[1] == first, s.offers
    drain(c, s)
    assert bytes(s.tx) == packet("a", "x" * 100) + packet("b", "y" * 300)
