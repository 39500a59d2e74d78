"""The simulated meters on the station's RS-485 line: SDM630-like slaves (connector n at
address n) that parse real RTU request frames and answer with real RTU frames, delivered
after their wire time at the line's baud rate (8N1 + the slave's turnaround)."""

import random
import struct

TURNAROUND_S = 0.005  # the slave's think time between request and response
GRID_SLAVE = 100  # the site's grid meter (config site.grid_slave's default)
VOLTS = 230.0


def sdm630(i, p_w, e_kwh):
    """An SDM630's input registers (float32, big-endian, high word first): 230 V per phase,
    currents i[3], total power p_w, 50 Hz, import energy e_kwh."""
    regs = {}

    def put(addr, val):
        hi, lo = struct.unpack(">HH", struct.pack(">f", val))
        regs[addr] = hi
        regs[addr + 1] = lo

    for k in range(3):
        put(0x00 + 2 * k, VOLTS)
        put(0x06 + 2 * k, i[k])
    put(0x34, p_w)
    put(0x46, 50.0)
    put(0x48, e_kwh)
    return regs


def crc16(data):
    crc = 0xFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def with_crc(body):
    c = crc16(body)
    return bytes(body) + bytes((c & 0xFF, c >> 8))


class Line:
    """Bytes the slaves put on the line, each frame released at its due time (us)."""

    def __init__(self, world):
        self.w = world
        self.baud = 9600
        self.pending = []  # (start_us, due_us, reply, request_sent_us)
        self.rng = random.Random(4711)
        self.requests = 0
        # The station's transceiver: DE high drives the line, DE low listens (/RE = DE).
        self.de = False
        self.frames_without_de = 0  # written with DE low: never reached the line
        self.replies_lost_to_de = 0  # began while DE was still high: the receiver was off
        self.frames_cut_by_de = 0  # DE fell before the request was on the wire

    def char_us(self):
        return 10 * 1_000_000 // self.baud

    def set_de(self, t, on):
        if not on and self.de:
            keep = []
            for p in self.pending:
                if p[0] < t:
                    self.replies_lost_to_de += 1  # began while the receiver was off
                elif t < p[3]:
                    self.frames_cut_by_de += 1  # DE fell before the request's last bit:
                    # the slave saw a truncated frame (bad CRC) and does not answer
                else:
                    keep.append(p)
            self.pending = keep
        self.de = on

    def write(self, t, data):
        if not self.de:
            self.frames_without_de += 1
            return
        self.requests += 1
        reply = self.answer(data)
        if reply is None:
            return
        sent = t + len(data) * self.char_us()  # the request's last stop bit
        start = sent + int(TURNAROUND_S * 1e6)
        self.pending.append((start, start + len(reply) * self.char_us(), reply, sent))

    def read(self, t):
        out = bytearray()
        keep = []
        for p in self.pending:
            if self.de and p[0] <= t:
                self.replies_lost_to_de += 1  # DE still high when it began
            elif p[1] <= t:
                out += p[2]
            else:
                keep.append(p)
        self.pending = keep
        return bytes(out)

    def registers(self, conn):
        """SDM630 input registers (float32 big-endian) driven by the EV's draw."""
        conn.accrue(self.w.now())
        if self.w.meter_memory is not None:
            self.w.meter_memory.seen(conn.id, conn.energy_wh)
        return sdm630(conn.ev_i, sum(conn.ev_i) * VOLTS, int(conn.energy_wh) / 1000.0)

    def grid_registers(self):
        """The grid meter: the site's other load (op grid, export negative) plus every
        connector's EV, phase by phase. Like a real SDM630 it reports current magnitudes;
        the direction shows in the total power's sign."""
        w = self.w
        i = list(w.grid_i)
        for c in w.conns.values():
            for k in range(3):
                i[k] += c.ev_i[k]
        return sdm630([abs(x) for x in i], sum(i) * VOLTS, 0.0)

    def answer(self, req):
        if len(req) < 4 or crc16(req[:-2]) != req[-2] | (req[-1] << 8):
            return None  # a slave ignores a frame with a bad CRC
        slave, fc = req[0], req[1]
        conn = self.w.conns.get(slave)
        if slave == GRID_SLAVE and self.w.grid_meter:
            faults = self.w.grid_faults
        elif conn is None:
            return None
        else:
            faults = self.w.faults[slave]
        if faults["meter_down"]:
            return None
        if fc != 4:
            reply = with_crc(bytes((slave, fc | 0x80, 1)))
        elif len(req) != 8:
            return None  # a read request is 8 bytes: anything else is a broken frame
        else:
            addr = (req[2] << 8) | req[3]
            count = (req[4] << 8) | req[5]
            if not 1 <= count <= 80:
                reply = with_crc(bytes((slave, 0x84, 3)))
            elif addr + count > 0x200:
                reply = with_crc(bytes((slave, 0x84, 2)))
            else:
                regs = self.registers(conn) if conn is not None else self.grid_registers()
                body = bytearray((slave, 4, 2 * count))
                for a in range(addr, addr + count):
                    body += struct.pack(">H", regs.get(a, 0))
                reply = with_crc(body)
        if faults["meter_garbage"]:
            # A noisy line: flipped bits (CRC errors) or stray bytes in place of a frame.
            reply = bytearray(reply)
            if self.rng.random() < 0.5:
                reply[self.rng.randrange(len(reply))] ^= 1 << self.rng.randrange(8)
            else:
                reply = bytes(self.rng.randrange(256) for _ in range(self.rng.randint(1, 9)))
        return bytes(reply)
