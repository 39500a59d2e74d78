"""OCPP 1.6 local authorization list (on flash, binary-searched) and authorization cache.

Id tags are OCPP CiString20 (case-insensitive): they are kept upper-cased, so "04a1b2" and
"04A1B2" are the same card. Groups are kept as sent (the caller compares them with the
groups of auth/res). Both classes store an entry as one fixed-width record of _REC bytes:
  id_tag   20 bytes  printable ASCII, NUL-padded (NUL sorts below every character, so
                     comparing padded records byte by byte sorts the tags as strings)
  status    1 byte   1 + index in _STATUSES (0 only marks a delete inside apply)
  expires   4 bytes  unix seconds, little-endian, 0xFFFFFFFF = none
  max_wh    4 bytes  Wh, little-endian, 0xFFFFFFFF = none
  group    20 bytes  the OCPP parentIdTag, NUL-padded, all NUL = none
"""

import os
import struct

from evse.compat import const

_KEY = const(20)  # OCPP 1.6 IdToken is CiString20
_REC = const(49)
_ST = const(20)
_EXP = const(21)
_WH = const(25)
_GRP = const(29)
_HDR = const(16)  # magic, record size, 0, version, count
_MAGIC = b"EVAL"
# Not const(): above the ESP32's 31-bit small ints.
_NONE = 0xFFFFFFFF
_MAX_U32 = 0xFFFFFFFE  # expires up to 2106-02-07
_MAX_VERSION = 0x7FFFFFFF  # OCPP listVersion is a 32-bit signed integer
# Accepted..Expired are what the local list may hold (auth_list); the cache also keeps the
# other answers auth/res may give.
_STATUSES = ("Accepted", "Blocked", "Expired", "Invalid", "NoCredit")
_LIST_STATUSES = const(3)
_ENTRY_KEYS = ("id_tag", "status", "expires", "max_wh", "group")


def _tag_into(buf, off, s, fold=True):
    """Writes tag s (upper-cased if fold) NUL-padded to buf[off:off + _KEY]; False if s is
    no tag.

    Works on a preallocated buffer so that a lookup allocates nothing for its key."""
    if not isinstance(s, str):
        return False
    n = len(s)
    if not 0 < n <= _KEY:
        return False
    for i in range(n):
        c = ord(s[i])
        if c < 0x20 or c > 0x7E:
            return False
        if fold and 0x61 <= c <= 0x7A:
            c -= 32
        buf[off + i] = c
    for i in range(n, _KEY):
        buf[off + i] = 0
    return True


def _cmp(a, off, b):
    """Sign of a[off:off + _KEY] - b[:_KEY] as byte strings, without slicing (no alloc)."""
    for i in range(_KEY):
        d = a[off + i] - b[i]
        if d:
            return d
    return 0


def _u32_into(buf, off, v, where, key):
    if v is None:
        v = _NONE
    elif isinstance(v, bool) or not isinstance(v, int):
        # floats refused, not rounded: the ESP32's single-precision floats hold only 24 bits
        raise ValueError("bad_arg", "%s%s must be an integer or null" % (where, key))
    elif not 0 <= v <= _MAX_U32:
        raise ValueError("out_of_range", "%s%s must be 0..%d" % (where, key, _MAX_U32))
    struct.pack_into("<I", buf, off, v)


def _u32(buf, off):
    if buf[off] & buf[off + 1] & buf[off + 2] & buf[off + 3] == 0xFF:
        return None
    return buf[off] | buf[off + 1] << 8 | buf[off + 2] << 16 | buf[off + 3] << 24


def _text(buf, off):
    n = 0
    while n < _KEY and buf[off + n]:
        n += 1
    return str(memoryview(buf)[off : off + n], "ascii") if n else None


def _pack(rec, tag, status, expires, max_wh, group, n_status, where):
    """One entry into the bytearray rec; raises ValueError(code, detail). status None -> 0."""
    if not _tag_into(rec, 0, tag):
        raise ValueError("bad_arg", where + "id_tag must be 1..20 printable ASCII characters")
    code = 0
    if status is not None:
        for i in range(n_status):
            if status == _STATUSES[i]:
                code = i + 1
        if not code:
            raise ValueError(
                "bad_arg", "%sstatus must be one of %s" % (where, "|".join(_STATUSES[:n_status]))
            )
    rec[_ST] = code
    _u32_into(rec, _EXP, expires, where, "expires")
    _u32_into(rec, _WH, max_wh, where, "max_wh")
    if group is None:
        for i in range(_GRP, _REC):
            rec[i] = 0
    elif not _tag_into(rec, _GRP, group, False):
        raise ValueError(
            "bad_arg", where + "group must be null or 1..20 printable ASCII characters"
        )


def _entry(rec, off):
    """(status, expires, max_wh, group) of the record at rec[off:], None if its status byte
    is not one we write."""
    st = rec[off + _ST]
    if not 0 < st <= len(_STATUSES):
        return None
    return (
        _STATUSES[st - 1],
        _u32(rec, off + _EXP),
        _u32(rec, off + _WH),
        _text(rec, off + _GRP),
    )


def status_at(status, expires, now_unix):
    """The status an entry has at now_unix: "Expired" once its expiry is reached (OCPP:
    honour expiryDate, from the list and the cache alike); None when it has an expiry and
    the clock is unset, since nothing then tells whether it still holds."""
    if expires is None:
        return status
    if now_unix is None:
        return None
    return "Expired" if now_unix >= expires else status


class LocalList:
    """The list as a file: a _HDR-byte header (b"EVAL", record size, 0, version, count:
    little-endian u16 u16 u32 u32), then the records sorted by tag. Lookups binary-search
    it with a few reads into preallocated buffers, so 1000 entries cost RAM for one record,
    not 1000. The file stays open for lookups (close() releases it).

    `corrupt` is True when the file was unreadable and the list was taken as empty."""

    def __init__(self, store, name="authlist.dat", max_entries=1000):
        self._store = store
        self._name = name
        self.max_entries = max_entries
        self._f = None
        self._rec = bytearray(_REC)
        mv = memoryview(self._rec)
        self._rec_key = mv[:_KEY]
        self._rec_rest = mv[_KEY:]
        self._want = bytearray(_KEY)
        self.version = 0
        self.count = 0
        self.corrupt = False
        # A power cut during apply() leaves a temp file beside the intact list: it is
        # never read, and would hold up to as much flash as the list itself.
        try:
            os.remove(store.path(name + ".tmp"))
        except OSError:
            pass
        try:
            f = open(store.path(name), "rb")
        except OSError:
            return  # no list yet
        with f:
            hdr = f.read(_HDR)
            size = f.seek(0, 2)
        if len(hdr) == _HDR and hdr[:4] == _MAGIC:
            rec, _, version, count = struct.unpack("<HHII", hdr[4:])
            if rec == _REC and version and size == _HDR + count * _REC:
                self.version = version
                self.count = count
                return
        self.corrupt = True

    def close(self):
        if self._f is not None:
            self._f.close()
            self._f = None

    def _find(self, key):
        """Index of the record whose tag is key (a padded tag), -1 if none; leaves the file
        just after that record's tag."""
        lo, hi = 0, self.count
        if not hi:
            return -1
        f = self._f
        if f is None:
            try:
                f = self._f = open(self._store.path(self._name), "rb")
            except OSError:
                self._lost()
                return -1
        while lo < hi:
            mid = (lo + hi) >> 1
            f.seek(_HDR + mid * _REC)
            if f.readinto(self._rec_key) != _KEY:
                self._lost()
                return -1
            d = _cmp(self._rec, 0, key)
            if d < 0:
                lo = mid + 1
            elif d > 0:
                hi = mid
            else:
                return mid
        return -1

    def _lost(self):
        # The file vanished or shrank under us: an empty list, and say so.
        self.close()
        self.version = self.count = 0
        self.corrupt = True

    def lookup(self, id_tag):
        """(status, expires, max_wh, group) or None."""
        if not _tag_into(self._want, 0, id_tag) or self._find(self._want) < 0:
            return None
        if self._f.readinto(self._rec_rest) != _REC - _KEY:
            self._lost()
            return None
        return _entry(self._rec, 0)

    def apply(self, version, mode, entries):
        """Carry out an auth_list command, all or nothing; returns the new count.

        Raises ValueError(code, detail) and changes nothing when any part is refused, and
        OSError (list unchanged) when the flash write fails."""
        if isinstance(version, bool) or not isinstance(version, int):
            raise ValueError("bad_arg", "version must be an integer")
        if not 1 <= version <= _MAX_VERSION:
            raise ValueError("out_of_range", "version must be 1..%d" % _MAX_VERSION)
        if mode != "full" and mode != "diff":
            raise ValueError("bad_arg", 'mode must be "full" or "diff"')
        if not isinstance(entries, list):
            raise ValueError("bad_arg", "entries must be a list")
        diff = mode == "diff"
        if diff and version <= self.version:
            # OCPP 1.6 SendLocalList answers VersionMismatch here: an old or repeated diff
            # applied over a newer list would undo part of it.
            raise ValueError(
                "out_of_range",
                "diff version %d must be above the list's version %d (send a full list)"
                % (version, self.version),
            )
        if not diff and len(entries) > self.max_entries:
            raise ValueError("out_of_range", self._too_many(len(entries)))
        recs = []
        rec = bytearray(_REC)
        for i, e in enumerate(entries):
            where = "entry %d: " % i
            if not isinstance(e, dict):
                raise ValueError("bad_arg", where + "must be an object")
            for k in e:
                if k not in _ENTRY_KEYS:
                    raise ValueError("bad_arg", "%sunknown key '%s'" % (where, k))
            if "id_tag" not in e or "status" not in e:
                raise ValueError("bad_arg", where + "id_tag and status are required")
            st = e["status"]
            if st is None and not diff:
                raise ValueError("bad_arg", where + "status null (delete) is for a diff only")
            _pack(
                rec,
                e["id_tag"],
                st,
                e.get("expires"),
                e.get("max_wh"),
                e.get("group"),
                _LIST_STATUSES,
                where,
            )
            recs.append(bytes(rec))
        # The tag leads each record, so sorting records sorts by tag; equal tags end up
        # next to each other.
        recs.sort()
        for i in range(1, len(recs)):
            if _cmp(recs[i], 0, recs[i - 1]) == 0:
                raise ValueError(
                    "bad_arg",
                    "id_tag %s given twice (tags are case-insensitive)" % _text(recs[i], 0),
                )
        n = len(recs)
        if diff:
            n = self.count
            for r in recs:
                found = self._find(r) >= 0
                if r[_ST] == 0:
                    n -= found
                else:
                    n += not found
        if n > self.max_entries:
            raise ValueError("out_of_range", self._too_many(n))
        self._write(version, n, recs, diff)
        return n

    def _too_many(self, n):
        return "the list would hold %d entries, at most %d" % (n, self.max_entries)

    def _write(self, version, n, recs, merge):
        self.close()
        tmp = self._name + ".tmp"
        src = None
        try:
            out = open(self._store.path(tmp), "wb")
            w = self._store.write  # the board's flash write (the sim can tear it)
            try:
                w(out, _MAGIC + struct.pack("<HHII", _REC, 0, version, n))
                if merge and self.count:
                    src = open(self._store.path(self._name), "rb")
                    src.seek(_HDR)
                    written = self._merge(src, out, recs)
                else:
                    written = 0
                    for r in recs:
                        if r[_ST]:
                            w(out, r)
                            written += 1
                out.flush()
            finally:
                out.close()
                if src is not None:
                    src.close()
            if written != n:
                # Only an unsorted (damaged) old file makes the merge disagree with the
                # count taken by binary search: keep the old file, it is no worse.
                raise OSError("local list merge wrote %d of %d records" % (written, n))
            # rename over the old file is atomic on LittleFS and POSIX: a power cut leaves
            # the old list or the new one.
            self._store.rename(tmp, self._name)
        except Exception:
            try:
                os.remove(self._store.path(tmp))
            except OSError:
                pass
            raise
        self.version = version
        self.count = n
        self.corrupt = False

    def _merge(self, src, out, recs):
        """Streams the sorted old records and the sorted diff into out; RAM: one record."""
        old = self._rec
        w = self._store.write
        left = self.count
        have = left and src.readinto(old) == _REC
        j = 0
        written = 0
        while have or j < len(recs):
            d = _cmp(old, 0, recs[j]) if have and j < len(recs) else (-1 if have else 1)
            if d < 0:
                w(out, old)
                written += 1
            else:
                r = recs[j]
                j += 1
                if r[_ST]:
                    w(out, r)
                    written += 1
                if d > 0:
                    continue  # the old record is still to be placed
            left -= 1
            have = left > 0 and src.readinto(old) == _REC
        return written


class Cache:
    """Bounded LRU cache of the backend's authorization answers, mirrored on flash.

    The flash copy is rewritten when an entry is added, changed or removed, not when a
    lookup only refreshes its recency (that would write flash on every card swipe): after a
    reboot the LRU order is the one of the last write, so eviction order is approximate.
    `corrupt`: the file was unreadable and the cache started empty. `failed`: the last
    flash write failed (the RAM copy still holds the change)."""

    def __init__(self, store, name="authcache.json", size=32):
        if not 0 < size <= 255:
            raise ValueError("bad_arg", "cache size must be 1..255")
        self._store = store
        self._name = name
        self.size = size
        self._recs = bytearray(size * _REC)
        self._order = bytearray(size)  # slots, least recently used first
        self._want = bytearray(_KEY)
        self.count = 0
        self.corrupt = False
        self.failed = False
        try:
            saved = store.read_json(name)
            if saved is None:
                return
            if not isinstance(saved, list):
                raise ValueError("bad_arg", "not a list")
            rec = bytearray(_REC)
            for e in saved[-size:]:
                if not isinstance(e, list) or len(e) != 5:
                    raise ValueError("bad_arg", "bad entry")
                _pack(rec, e[0], e[1], e[2], e[3], e[4], len(_STATUSES), "")
                if not rec[_ST]:
                    raise ValueError("bad_arg", "no status")
                self._set(rec)
        except (ValueError, OSError):
            self.count = 0
            self.corrupt = True

    def _slot(self, key):
        recs = self._recs
        for s in range(self.count):
            if _cmp(recs, s * _REC, key) == 0:
                return s
        return -1

    def _touch(self, slot):
        order = self._order
        n = self.count
        p = 0
        while order[p] != slot:
            p += 1
        while p < n - 1:
            order[p] = order[p + 1]
            p += 1
        order[n - 1] = slot

    def _set(self, rec):
        """Stores rec (most recently used); True if that changed what is stored."""
        s = self._slot(rec)
        if s < 0:
            if self.count < self.size:
                s = self.count
                self._order[s] = s
                self.count += 1
            else:
                s = self._order[0]  # evict the least recently used
        elif self._recs[s * _REC : (s + 1) * _REC] == rec:
            self._touch(s)
            return False
        self._recs[s * _REC : (s + 1) * _REC] = rec
        self._touch(s)
        return True

    def put(self, id_tag, status, expires, max_wh, group):
        """Remember the backend's answer; ValueError(code, detail) if it is not one."""
        rec = bytearray(_REC)
        if status is None:
            raise ValueError("bad_arg", "status must be one of " + "|".join(_STATUSES))
        _pack(rec, id_tag, status, expires, max_wh, group, len(_STATUSES), "")
        if self._set(rec):
            self._save()

    def get(self, id_tag, now_unix):
        """(status, expires, max_wh, group) or None; status per status_at()."""
        if not _tag_into(self._want, 0, id_tag):
            return None
        s = self._slot(self._want)
        if s < 0:
            return None
        e = _entry(self._recs, s * _REC)
        st = status_at(e[0], e[1], now_unix)
        if st is None:
            return None
        self._touch(s)
        return e if st == e[0] else (st, e[1], e[2], e[3])

    def drop(self, id_tag):
        """Forget id_tag (an id put on the local list is never cached); True if it was."""
        if not _tag_into(self._want, 0, id_tag):
            return False
        s = self._slot(self._want)
        if s < 0:
            return False
        last = self.count - 1
        order = self._order
        p = 0
        for i in range(self.count):
            if order[i] != s:
                # the record in the last slot moves into the freed one
                order[p] = s if order[i] == last else order[i]
                p += 1
        if s != last:
            self._recs[s * _REC : (s + 1) * _REC] = self._recs[last * _REC : (last + 1) * _REC]
        self.count = last
        self._save()
        return True

    def clear(self):
        self.count = 0
        self._save()

    def _save(self):
        out = []
        for i in range(self.count):
            off = self._order[i] * _REC
            out.append([_text(self._recs, off)] + list(_entry(self._recs, off)))
        try:
            self._store.write_json(self._name, out)
            self.failed = False
        except OSError:
            self.failed = True
