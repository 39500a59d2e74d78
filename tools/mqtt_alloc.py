"""Heap the MQTT client (evse/mqtt.py) allocates per publish, on the MicroPython unix port.

    micropython -X heapsize=4M tools/mqtt_alloc.py FIRMWARE_DIR sizes
    micropython -X heapsize=104K tools/mqtt_alloc.py FIRMWARE_DIR soak [PUBLISHES]

Run by tests/test_mqtt_ring.py and `make bench`, not by CPython. A fake non-blocking socket
takes short writes of pseudo-random sizes (sometimes none). Prints one JSON object:
- "sizes": for str payloads of several sizes, the heap bytes allocated (collector off while
  counting) per publish() call with its poll(), in publish() itself, in an idle poll() and
  per socket write beyond that, and socket writes per publish;
- "soak": publishes of mixed sizes and kinds with the collector on: whether the socket got
  exactly the packets accepted, in order; MemoryErrors; how often a write ended at the end
  of the wrapped outbox; the heap in use after a collection, before and after.
"""

import gc
import json
import sys

sys.path.insert(0, sys.argv[1])
from evse import mqtt  # noqa: E402

TOPIC = "evse/evse-435031/status"


class Rand:
    """A small LCG: no big ints, so drawing a number allocates nothing."""

    def __init__(self, seed):
        self.x = seed

    def next(self, n):
        self.x = (self.x * 25173 + 13849) & 0xFFFF
        return self.x % n


class CountingSock:
    """Takes 1..700 bytes per write, one write in 8 none at all; remembers only counts, so
    the socket side allocates nothing."""

    def __init__(self):
        self.rng = Rand(1)
        self.writes = 0
        self.bytes = 0

    def write(self, b):
        x = self.rng.next(5600)
        if x < 700:
            return None  # would block
        k = min(len(b), 1 + x % 700)
        self.writes += 1
        self.bytes += k
        return k

    def readinto(self, mv):
        return None  # nothing arrived (a non-blocking socket's EAGAIN)

    def close(self):
        pass


class CheckingSock:
    """Takes 0..700 bytes per write and at most `budget` bytes until the budget is set again
    (a slow or stuck link), and compares them with the packets expected, in order."""

    def __init__(self, client):
        self.client = client
        self.rng = Rand(7)
        self.budget = 0
        self.expected = []  # parts of packets accepted and not yet fully received
        self.pos = 0  # bytes of expected[0] already received
        self.bytes = 0
        self.mismatch = 0
        self.wraps = 0  # writes that ended at the end of the ring with more waiting

    def write(self, b):
        k = min(len(b), self.budget, self.rng.next(701))
        if not k:
            return None
        self.budget -= k
        c = self.client
        ring = getattr(c, "_ring", None)  # (absent from the client before the ring)
        if ring is not None and c._head + len(b) == len(ring) and c._used > len(b):
            self.wraps += 1
        off = 0
        while off < k:
            if not self.expected:
                self.mismatch += 1  # more bytes than were published
                return k
            part = self.expected[0]
            m = min(k - off, len(part) - self.pos)
            if b[off : off + m] != memoryview(part)[self.pos : self.pos + m]:
                self.mismatch += 1
            off += m
            self.pos += m
            if self.pos == len(part):
                self.expected.pop(0)
                self.pos = 0
        self.bytes += k
        return k

    def readinto(self, mv):
        return None

    def close(self):
        pass


def head(topic, payload_len, qos, retain, pid):
    """A PUBLISH up to its payload as MQTT 3.1.1 §3.3 lays it out, built here independently
    of the client."""
    t = topic.encode()
    n = 2 + len(t) + (2 if qos else 0) + payload_len
    out = bytearray((0x30 | qos << 1 | (1 if retain else 0),))
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | 0x80 if n else b)
        if not n:
            break
    out += bytes((len(t) >> 8, len(t) & 0xFF)) + t
    if qos:
        out += bytes((pid >> 8, pid & 0xFF))
    return out


def connected(s):
    c = mqtt.Client("evse-435031", 60)
    c._sock = s
    c.state = mqtt.CONNECTED
    return c


def idle_poll_alloc(n=100):
    """Heap one poll() allocates with nothing to send and nothing arriving."""
    c = connected(CountingSock())
    gc.collect()
    gc.disable()
    a0 = gc.mem_alloc()
    for _ in range(n):
        c.poll(0)
    a1 = gc.mem_alloc()
    gc.enable()
    return (a1 - a0) / n


def sizes(n=300):
    idle = idle_poll_alloc()
    out = []
    for size in (20, 200, 1000, 3000):
        payload = "x" * size
        s = CountingSock()
        c = connected(s)
        pub = poll = accepted = done = 0
        memory_error = False
        gc.collect()
        gc.disable()
        try:
            for i in range(n):
                a0 = gc.mem_alloc()
                ok = c.publish(TOPIC, payload, False, i & 1, True)
                a1 = gc.mem_alloc()
                c.poll(0)
                a2 = gc.mem_alloc()
                pub += a1 - a0
                poll += a2 - a1
                done += 1
                if ok:
                    accepted += 1
        except MemoryError:  # the heap ran out with the collector off
            memory_error = True
        gc.enable()
        done = max(1, done)
        out.append(
            {
                "payload": size,
                "publishes": done,
                "accepted": accepted,
                "writes": s.writes,
                "alloc_per_publish": (pub + poll) / done,
                "alloc_in_publish": pub / done,
                "alloc_idle_poll": idle,
                "bytes_sent": s.bytes,
                # what sending costs beyond a poll's fixed part (the receive view)
                "alloc_per_write": (poll - idle * done) / max(1, s.writes),
                "memory_error": memory_error or isinstance(c.error, MemoryError),
            }
        )
    return out


def soak(n):
    # Payloads made once: the loop itself should allocate little besides what is measured.
    # (payload, its bytes as the wire carries them: for a str, a view of its UTF-8 bytes)
    pool = []
    for size in (0, 1, 17, 120, 128, 300, 1000, 2500, 4000):
        text = "é" * (size // 2) + "x" * (size % 2)  # 2 bytes per é in UTF-8
        pool.append((text, memoryview(text)))
        pool.append((bytes(size), bytes(size)))
    topics = ("evse/evse-435031/status", "evse/evse-435031/reply", "t")
    rng = Rand(11)
    s = CheckingSock(None)
    c = connected(s)
    s.client = c
    gc.collect()
    heap0 = gc.mem_alloc()
    memory_errors = accepted = refused = never = 0
    for _ in range(n):
        payload, wire = pool[rng.next(len(pool))]
        topic = topics[rng.next(len(topics))]
        qos = rng.next(2)
        retain = rng.next(2)
        paced = rng.next(2)
        try:
            r = c.publish(topic, payload, retain, qos, paced)
        except MemoryError:
            memory_errors += 1
            continue
        if r:
            accepted += 1
            s.expected.append(head(topic, len(wire), qos, retain, c._pid))
            if len(wire):
                s.expected.append(wire)
        elif r is None:
            never += 1
        else:
            refused += 1
        # The link takes less on average than is published: the outbox fills up and wraps.
        s.budget = (0, 0, 50, 500, 1000, 3000)[rng.next(6)]
        try:
            c.poll(0)
        except MemoryError:
            memory_errors += 1
    for _ in range(100000):
        if not c.outbox_bytes():
            break
        s.budget = 1000
        c.poll(0)
    expected_left = len(s.expected)
    del s.expected[:]
    gc.collect()
    return {
        "publishes": n,
        "accepted": accepted,
        "refused": refused,
        "never": never,
        "memory_errors": memory_errors,
        "bytes": s.bytes,
        "mismatch": s.mismatch,
        "unsent_packets": expected_left,
        "outbox_left": c.outbox_bytes(),
        "wraps": s.wraps,
        "heap_before": heap0,
        "heap_after": gc.mem_alloc(),
        "error": repr(c.error),
        "word_bytes": 8 if sys.maxsize > 2**32 else 4,
    }


def main():
    if sys.argv[2] == "sizes":
        print(json.dumps(sizes()))
    else:
        print(json.dumps(soak(int(sys.argv[3]) if len(sys.argv) > 3 else 3000)))


main()
