"""The session journal on flash: append-only lines, one checksum each, so a power cut in the
middle of a write costs at most that one record (detected and skipped at boot).

A line is `<kind> <crc32 hex> <body>\\n`:
  H  {"seq":S,"sid":N}      counters, first line after a compaction (they never go back)
  M  <message>\\t<extra>      a session message as published (start or stop), with the
                            station's private part of it (tariff at start, ...)
  C  {"sid":..,"wh":..}     checkpoint of an open session (meter reading, times)
  A  <seq>                  the backend acknowledged message seq

The outbox is every M line without an A line; messages are read back from the file when
published, so RAM holds only (seq, offset) pairs. Compaction rewrites the file (temp file +
rename: old or new after a cut, never half) with the counters, the outbox and the open
sessions, and happens only while no contactor is closed (a long flash write must not hold
the control loop while current flows), or when the file outgrows its hard bound."""

import json
import os

from evse.compat import const
from evse.report import dumps

try:
    from binascii import crc32
except ImportError:  # pragma: no cover - ports built without MICROPY_PY_BINASCII_CRC32

    def crc32(data, crc=0):
        crc ^= 0xFFFFFFFF
        for b in data:
            crc ^= b
            for _ in range(8):
                crc = (crc >> 1) ^ (0xEDB88320 if crc & 1 else 0)
        return crc ^ 0xFFFFFFFF


NAME = "journal.dat"
OUTBOX_MAX = const(200)  # unacknowledged messages kept (two per session: 100 sessions)
_COMPACT_BYTES = const(16384)  # compact (when idle) once the file is this big ...
_HARD_BYTES = const(131072)  # ... and even under load past this (never reached normally)


def _line(kind, body):
    b = body.encode() if isinstance(body, str) else body
    return b"%s %08x %s\n" % (kind, crc32(b) & 0xFFFFFFFF, b)


def parse(line):
    """(kind, body bytes) of a whole, intact line, else None."""
    if len(line) < 12 or line[-1:] != b"\n" or line[1:2] != b" " or line[10:11] != b" ":
        return None
    body = line[11:-1]
    try:
        if int(line[2:10], 16) != crc32(body) & 0xFFFFFFFF:
            return None
    except ValueError:
        return None
    return line[0:1], body


class Journal:
    def __init__(self, store):
        self._store = store
        self.path = store.path(NAME)
        self.seq = 0  # the last seq given out
        self.sid_n = 0  # the last session number given out
        self.outbox = []  # [seq, offset], oldest first
        self.open = {}  # connector id -> {"m": start message, "x": extra, "c": checkpoint}
        self.size = 0
        self.torn = False  # a failed write may have left a prefix at the end of the file
        self.writes = 0  # appends and compactions since boot (flash wear)
        self.bytes = 0  # bytes written since boot
        self.bad = 0  # lines skipped at load: torn or corrupt
        self.acked = 0
        self.limit = OUTBOX_MAX  # (the module's bound when built: tests make it small)

    # -- boot -------------------------------------------------------------------------------
    def load(self):
        """Read the file; a torn or corrupt line is skipped and counted, and the file is
        then compacted so new lines never follow a torn one."""
        self.outbox = []
        self.open = {}
        acks = set()
        msgs = []  # (seq, offset)
        off = 0
        try:
            f = open(self.path, "rb")
        except OSError:
            self.size = 0
            return
        with f:
            while True:
                line = f.readline()
                if not line:
                    break
                rec = parse(line)
                if rec is None:
                    self.bad += 1
                else:
                    self._replay(rec, off, acks, msgs)
                off += len(line)
        self.size = off
        for seq, o in msgs:
            if seq not in acks:
                self.outbox.append([seq, o])
        if self.bad:
            self.compact()

    def _replay(self, rec, off, acks, msgs):
        kind, body = rec
        try:
            if kind == b"A":
                acks.add(int(body))
                return
            if kind == b"M":
                raw, _, extra = body.partition(b"\t")
                m = json.loads(raw)
                x = json.loads(extra) if extra else None
                self._count(m["seq"], m.get("sid"))
                msgs.append((m["seq"], off))
                self._track(m, x)
                return
            d = json.loads(body)
            if kind == b"H":
                self._count(d["seq"], None)
                self.sid_n = max(self.sid_n, d["sid"])
            elif kind == b"O":  # an open session whose start was acknowledged (compaction)
                self._count(d["m"]["seq"], d["m"]["sid"])
                self.open[d["m"]["connector"]] = d
            elif kind == b"C":
                for o in self.open.values():
                    if o["m"]["sid"] == d["sid"]:
                        o["c"] = d
        except (ValueError, KeyError, TypeError):
            self.bad += 1  # intact but unreadable: never a reason not to boot

    def _count(self, seq, sid):
        if seq > self.seq:
            self.seq = seq
        if sid is not None:
            try:
                n = int(sid.rsplit("-", 1)[1])
            except (ValueError, IndexError):
                return
            if n > self.sid_n:
                self.sid_n = n

    # -- writing ----------------------------------------------------------------------------
    def _append(self, line):
        """Write one line; OSError (the flash is full, or failing) changes nothing here."""
        if self.torn:
            line = b"\n" + line  # end the prefix a failed write left: one corrupt line
        off = self.size
        try:
            with open(self.path, "ab") as f:
                self._store.write(f, line)
        except OSError:
            self._resync()
            raise
        # closed: on littlefs a file's new data is committed at close, not before
        if self.torn:
            self.torn = False
            off += 1
        self.size += len(line)
        self.writes += 1
        self.bytes += len(line)
        return off

    def _resync(self):
        """After a failed write: whatever part of it reached the file counts in the size
        (littlefs commits none of it; another filesystem may keep a prefix)."""
        try:
            n = os.stat(self.path)[6]
        except OSError:
            return
        if n != self.size:
            self.size = n
            self.torn = True

    def full(self, reserve):
        """Whether `reserve` more messages would overfill the outbox."""
        return len(self.outbox) + reserve > self.limit

    def next_sid(self, station_id):
        self.sid_n += 1
        return "%s-%06d" % (station_id, self.sid_n)

    def message(self, m, extra=None):
        """Give m the next seq, write it, queue it; returns the payload to publish. A write
        that fails (OSError) gives out no seq: the next message gets the same one."""
        seq = self.seq + 1
        m["seq"] = seq
        payload = dumps(m)  # compact, as everything the station publishes
        body = payload if extra is None else payload + "\t" + json.dumps(extra)
        off = self._append(_line(b"M", body))
        self.seq = seq
        self.outbox.append([seq, off])
        self._track(m, extra)
        return payload

    def _track(self, m, extra):
        """The open sessions, as a start or stop message changes them."""
        cid = m["connector"]
        if m["event"] == "start":
            self.open[cid] = {"m": m, "x": extra, "c": None}
        else:
            o = self.open.get(cid)
            if o is not None and o["m"]["sid"] == m["sid"]:
                del self.open[cid]

    def checkpoint(self, cid, d):
        o = self.open.get(cid)
        if o is not None:
            o["c"] = d
            self._append(_line(b"C", json.dumps(d)))

    def sent(self, seq):
        """Whether seq was ever given out."""
        return 1 <= seq <= self.seq

    def ack(self, seq):
        """Drop seq from the outbox (an A line on flash): the index it had there, or None
        when it is not there (acknowledged before, or never sent: see sent())."""
        for i, e in enumerate(self.outbox):
            if e[0] == seq:
                self._append(_line(b"A", str(seq)))
                self.outbox.pop(i)
                self.acked += 1
                return i
        return None

    def reader(self):
        """The journal opened for payload(): one open for a batch of messages."""
        return open(self.path, "rb")

    def payload(self, offset, f):
        """The message written at offset, as first published (bytes), or None."""
        rec = parse(self._raw(f, offset))
        if rec is None or rec[0] != b"M":
            return None
        return rec[1].partition(b"\t")[0]

    # -- compaction -------------------------------------------------------------------------
    def due(self, loaded):
        """Whether to compact now (loaded: a contactor is closed)."""
        if len(self.outbox) * 400 >= self.size:
            return False  # mostly outbox: rewriting would free nothing
        return self.size >= (_HARD_BYTES if loaded else _COMPACT_BYTES)

    def compact(self):
        tmp = self.path + ".tmp"
        out = []
        size = 0
        with open(tmp, "wb") as f, self.reader() as src:
            line = _line(b"H", json.dumps({"seq": self.seq, "sid": self.sid_n}))
            w = self._store.write
            w(f, line)
            size = len(line)
            keep = set(e[0] for e in self.outbox)
            open_seqs = set()
            for o in self.open.values():
                if o["m"]["seq"] not in keep:
                    line = _line(b"O", json.dumps(o))  # acknowledged, still running
                    w(f, line)
                    size += len(line)
                else:
                    open_seqs.add(o["m"]["seq"])
            for seq, off in self.outbox:
                p = self._raw(src, off)
                if parse(p) is None:
                    continue  # unreadable now: counted at the next boot
                out.append([seq, size])
                w(f, p)
                size += len(p)
            for o in self.open.values():
                if o["m"]["seq"] in open_seqs and o["c"] is not None:
                    line = _line(b"C", json.dumps(o["c"]))
                    w(f, line)
                    size += len(line)
        os.rename(tmp, self.path)
        self.outbox = out
        self.size = size
        self.torn = False
        self.writes += 1
        self.bytes += size

    @staticmethod
    def _raw(f, off):
        f.seek(off)
        return f.readline()
