"""The local authorization list (evse.authlist.LocalList: a sorted file on flash, binary
searched, replaced all or nothing) and the authorization cache (evse.authlist.Cache: bounded,
LRU, expiry, on flash); the same answers on the MicroPython unix port as on CPython."""

import os
import random
import struct
import sys

import portrun
import pytest

from evse import authlist
from evse.authlist import Cache, LocalList, status_at
from evse.store import Store

MICROPYTHON = portrun.MICROPYTHON
HDR, REC = 16, 49  # the file format: header, then one fixed-width record per entry


def E(tag, status="Accepted", expires=None, max_wh=None, group=None):
    return {"id_tag": tag, "status": status, "expires": expires, "max_wh": max_wh, "group": group}


def listed(tmp_path, entries, version=1, **kw):
    lst = LocalList(Store(str(tmp_path)), **kw)
    lst.apply(version, "full", entries)
    return lst


def raw(tmp_path, name="authlist.dat"):
    with open(os.path.join(str(tmp_path), name), "rb") as f:
        return f.read()


def tags_on_flash(tmp_path):
    data = raw(tmp_path)
    return [data[i : i + 20].rstrip(b"\0").decode() for i in range(HDR, len(data), REC)]


# -- local list ---------------------------------------------------------------------------
def test_no_file_is_an_empty_list_version_0(tmp_path):
    lst = LocalList(Store(str(tmp_path)))
    assert (lst.version, lst.count, lst.corrupt) == (0, 0, False)
    assert lst.lookup("04A1B2C3") is None


def test_full_replaces_everything_and_survives_a_reboot(tmp_path):
    """Break: full merging with the old file -> A and B are still found."""
    lst = listed(tmp_path, [E("A"), E("B", "Blocked")], version=3)
    assert lst.apply(4, "full", [E("C", "Expired", 1764000000, 5000, "fleet-1")]) == 1
    assert lst.lookup("A") is None and lst.lookup("B") is None
    want = ("Expired", 1764000000, 5000, "fleet-1")
    assert lst.lookup("C") == want
    again = LocalList(Store(str(tmp_path)))
    assert (again.version, again.count, again.corrupt) == (4, 1, False)
    assert again.lookup("c") == want
    # a full list may go back in version (OCPP: VersionMismatch is for diffs only)
    assert lst.apply(2, "full", []) == 0
    assert (lst.version, lst.count) == (2, 0) and lst.lookup("C") is None


def test_diff_inserts_updates_and_deletes_keeping_the_file_sorted(tmp_path):
    """Break: merge writing the diff record and the old one on a tie -> count 6 and a
    duplicate B on flash; deletes ignored -> A still found."""
    lst = listed(tmp_path, [E("A"), E("B"), E("C", max_wh=1)], version=7)
    n = lst.apply(
        8,
        "diff",
        [
            E("ZZ", group="g"),  # after the last
            E("B", "Blocked", max_wh=300),  # update
            E("A", None),  # delete the first
            E("X", None),  # delete of an absent id: nothing to do
            E("0", "Expired", expires=5),  # before the first
            E("BA"),  # between two
        ],
    )
    assert n == 5 and lst.count == 5 and lst.version == 8
    assert tags_on_flash(tmp_path) == ["0", "B", "BA", "C", "ZZ"]
    assert lst.lookup("A") is None and lst.lookup("X") is None
    assert lst.lookup("B") == ("Blocked", None, 300, None)
    assert lst.lookup("C") == ("Accepted", None, 1, None)
    assert lst.lookup("0") == ("Expired", 5, None, None)
    assert lst.lookup("zz") == ("Accepted", None, None, "g")
    assert lst.lookup("BA") == ("Accepted", None, None, None)
    assert len(raw(tmp_path)) == HDR + 5 * REC  # flash bytes per entry: REC
    # a diff on an empty list (and deleting everything) works too
    assert lst.apply(9, "diff", [E(t, None) for t in ("0", "B", "BA", "C", "ZZ")]) == 0
    assert lst.apply(10, "diff", [E("Q")]) == 1 and tags_on_flash(tmp_path) == ["Q"]


def test_diff_version_must_rise(tmp_path):
    """OCPP 1.6 SendLocalList: a diff whose version is not above the list's is refused
    (VersionMismatch). Break: drop the check -> the stale diff is applied."""
    lst = listed(tmp_path, [E("A")], version=5)
    for v in (5, 4, 1):
        with pytest.raises(ValueError) as e:
            lst.apply(v, "diff", [E("A", None)])
        assert e.value.args[0] == "out_of_range"
        assert "above the list's version 5" in e.value.args[1]
    assert lst.lookup("A") and lst.version == 5
    assert lst.apply(6, "diff", [E("A", None)]) == 0 and lst.version == 6


def test_tags_are_case_insensitive(tmp_path):
    """OCPP idTag is CiString20; a group is returned as sent. Break: no upper-casing ->
    "04a1" is not found; folding groups too -> "GRP"."""
    lst = listed(tmp_path, [E("04a1b2"), E("Abc", group="Grp")])
    assert lst.lookup("04A1B2") == ("Accepted", None, None, None)
    assert lst.lookup("aBC") == ("Accepted", None, None, "Grp")
    with pytest.raises(ValueError) as e:
        lst.apply(2, "full", [E("abc"), E("ABC")])
    assert e.value.args == ("bad_arg", "id_tag ABC given twice (tags are case-insensitive)")


def tag_of(i):
    # varied lengths and characters, unique per i; 8 distinct prefixes of each other
    return "%X" % (i * 2654435761 % 4294967291) + "-~ !"[i % 4] * (i % 3)


@pytest.mark.parametrize("n", [0, 1, 2, 3, 1000])
def test_lookup_first_last_middle_and_every_gap(tmp_path, n):
    """Every listed id is found with its own values, every id between two neighbours (and
    before the first, after the last) is absent. Break: `lo = mid` for `lo = mid + 1` ->
    the search never ends; `hi = mid - 1` -> ids next to a probe are missed."""
    tags = sorted({tag_of(i) for i in range(n)}, key=str.upper)
    assert len(tags) == n
    entries = [E(t, "Accepted" if i % 2 else "Blocked", None, i) for i, t in enumerate(tags)]
    rng = random.Random(n)
    rng.shuffle(entries)
    lst = LocalList(Store(str(tmp_path)))
    assert lst.apply(1, "full", entries) == n
    assert tags_on_flash(tmp_path) == tags
    got = [lst.lookup(t) for t in tags]
    assert got == [("Accepted" if i % 2 else "Blocked", None, i, None) for i in range(n)]
    # just below and just above each listed id: a prefix, an extension, a neighbour
    absent = ["!", "~" * 20, "0", "ZZZZZZZZZZZZZZZZZZZZ"]
    for t in tags:
        absent += [t + "!", t[:-1] + chr(ord(t[-1]) - 1), t[:-1] + chr(ord(t[-1]) + 1)]
    absent = [t for t in absent if t.upper() not in set(tags) and 0 < len(t) <= 20]
    assert len(absent) > 2 * n
    assert [t for t in absent if lst.lookup(t) is not None] == []
    if n:
        mid = tags[n // 2]
        assert lst.lookup(tags[0])[2] == 0 and lst.lookup(tags[-1])[2] == n - 1
        assert lst.lookup(mid)[2] == n // 2


def test_lookup_of_what_cannot_be_a_tag_is_none(tmp_path):
    lst = listed(tmp_path, [E("A")])
    for t in ("", "A" * 21, None, 7, b"A", "é", "A\n"):
        assert lst.lookup(t) is None


GOOD = [E("AAA"), E("BBB", "Blocked", 1764000000, 0, "G")]
REFUSED = [
    # (version, mode, entries, code, detail)
    (2, "full", GOOD + [E("")], "bad_arg", "entry 2: id_tag must be 1..20 printable"),
    (2, "full", GOOD + [E("A" * 21)], "bad_arg", "entry 2: id_tag must be 1..20"),
    (2, "full", [E("tab\there")] + GOOD, "bad_arg", "entry 0: id_tag must be"),
    (2, "full", [E("caf\u00e9")] + GOOD, "bad_arg", "entry 0: id_tag must be"),
    (2, "full", GOOD + [E(12345)], "bad_arg", "entry 2: id_tag must be"),
    (
        2,
        "full",
        GOOD + [E("C", "Invalid")],
        "bad_arg",
        "entry 2: status must be one of Accepted|Blocked|Expired",
    ),
    (2, "full", GOOD + [E("C", "accepted")], "bad_arg", "entry 2: status must be one of"),
    (2, "full", GOOD + [E("C", None)], "bad_arg", "entry 2: status null (delete) is for a diff"),
    (2, "full", GOOD + [E("C", expires=1.5)], "bad_arg", "entry 2: expires must be an integer"),
    (2, "full", GOOD + [E("C", expires=True)], "bad_arg", "entry 2: expires must be an integer"),
    (2, "full", GOOD + [E("C", expires="1")], "bad_arg", "entry 2: expires must be an integer"),
    (
        2,
        "full",
        GOOD + [E("C", expires=-1)],
        "out_of_range",
        "entry 2: expires must be 0..4294967294",
    ),
    (2, "full", GOOD + [E("C", expires=2**32)], "out_of_range", "entry 2: expires must be 0.."),
    (
        2,
        "full",
        GOOD + [E("C", max_wh=-1)],
        "out_of_range",
        "entry 2: max_wh must be 0..4294967294",
    ),
    (2, "full", GOOD + [E("C", max_wh=1000.0)], "bad_arg", "entry 2: max_wh must be an integer"),
    (2, "full", GOOD + [E("C", group="")], "bad_arg", "entry 2: group must be null or 1..20"),
    (2, "full", GOOD + [E("C", group="G" * 21)], "bad_arg", "entry 2: group must be"),
    (2, "full", GOOD + [E("C", group=5)], "bad_arg", "entry 2: group must be"),
    (2, "full", GOOD + [dict(E("C"), parent="x")], "bad_arg", "entry 2: unknown key 'parent'"),
    (2, "full", GOOD + [{"id_tag": "C"}], "bad_arg", "entry 2: id_tag and status are required"),
    (2, "full", GOOD + [{"status": "Accepted"}], "bad_arg", "entry 2: id_tag and status"),
    (2, "full", GOOD + [["C", "Accepted"]], "bad_arg", "entry 2: must be an object"),
    (2, "full", GOOD + [E("aaa")], "bad_arg", "id_tag AAA given twice"),
    (2, "diff", [E("Q"), E("Q", None)], "bad_arg", "id_tag Q given twice"),
    (
        2,
        "full",
        [E("T%d" % i) for i in range(6)],
        "out_of_range",
        "the list would hold 6 entries, at most 5",
    ),
    # the old list holds OLD_A..OLD_C: 3 + 3 new - 0 = 6 > 5
    (
        2,
        "diff",
        [E("N1"), E("N2"), E("N3")],
        "out_of_range",
        "the list would hold 6 entries, at most 5",
    ),
    (
        2,
        "diff",
        [E("N1"), E("N2"), E("N3"), E("NOT_THERE", None)],
        "out_of_range",
        "the list would hold 6 entries",
    ),
    (1, "diff", [E("N1")], "out_of_range", "diff version 1 must be above the list's version 1"),
    (0, "full", GOOD, "out_of_range", "version must be 1..2147483647"),
    (2**31, "full", GOOD, "out_of_range", "version must be 1..2147483647"),
    (-1, "full", GOOD, "out_of_range", "version must be 1.."),
    ("2", "full", GOOD, "bad_arg", "version must be an integer"),
    (2.0, "full", GOOD, "bad_arg", "version must be an integer"),
    (True, "full", GOOD, "bad_arg", "version must be an integer"),
    (None, "full", GOOD, "bad_arg", "version must be an integer"),
    (2, "Full", GOOD, "bad_arg", 'mode must be "full" or "diff"'),
    (2, None, GOOD, "bad_arg", "mode must be"),
    (2, "full", {"id_tag": "A"}, "bad_arg", "entries must be a list"),
    (2, "diff", None, "bad_arg", "entries must be a list"),
]


@pytest.mark.parametrize("version,mode,entries,code,detail", REFUSED, ids=range(len(REFUSED)))
def test_refused_whole_leaves_the_old_file_byte_identical(
    tmp_path, version, mode, entries, code, detail
):
    """Break: write records while validating -> the file changes; drop the max_entries
    check -> 6 entries are written; drop the duplicate check -> Q is written twice."""
    lst = listed(tmp_path, [E("OLD_A"), E("OLD_B", "Blocked"), E("OLD_C")], max_entries=5)
    before = raw(tmp_path)
    with pytest.raises(ValueError) as e:
        lst.apply(version, mode, entries)
    assert e.value.args[0] == code, e.value.args
    assert detail in e.value.args[1], e.value.args
    assert raw(tmp_path) == before
    assert sorted(os.listdir(str(tmp_path))) == ["authlist.dat"]  # no temp file either
    assert (lst.version, lst.count, lst.corrupt) == (1, 3, False)
    assert lst.lookup("OLD_B") == ("Blocked", None, None, None)
    assert lst.lookup("AAA") is None and lst.lookup("N1") is None


def test_exactly_max_entries_is_accepted(tmp_path):
    """Break: `n >= max_entries` -> a full list of exactly 5 is refused."""
    lst = listed(tmp_path, [E("T%d" % i) for i in range(5)], max_entries=5)
    assert lst.count == 5
    # deletes make room in the same diff
    assert lst.apply(2, "diff", [E("T0", None), E("T9")]) == 5
    assert tags_on_flash(tmp_path) == ["T1", "T2", "T3", "T4", "T9"]


class RenameFails(Store):
    def rename(self, name, new_name):
        raise OSError(5, "EIO")


def test_a_failed_rename_keeps_the_old_list(tmp_path):
    """The write of the new list fails at its last step. Break: rename before the write
    completes, or update version/count before the rename -> state disagrees with flash."""
    listed(tmp_path, [E("A"), E("B")], version=3)
    before = raw(tmp_path)
    lst = LocalList(RenameFails(str(tmp_path)))
    assert lst.lookup("A")  # the file is open for lookups while apply replaces it
    with pytest.raises(OSError):
        lst.apply(4, "diff", [E("C")])
    assert raw(tmp_path) == before
    assert os.listdir(str(tmp_path)) == ["authlist.dat"]  # the temp file was removed
    assert (lst.version, lst.count) == (3, 2)
    assert lst.lookup("A") and lst.lookup("B") and lst.lookup("C") is None


class PowerCut(BaseException):
    """Not an Exception: nothing after the cut runs, no cleanup either."""


class CutAfter:
    """A file whose writes stop (power cut) once `budget` bytes have reached flash."""

    def __init__(self, f, budget):
        self.f = f
        self.budget = budget

    def write(self, b):
        if len(b) > self.budget:
            self.f.write(bytes(b[: self.budget]))
            self.f.flush()
            raise PowerCut()
        self.budget -= len(b)
        return self.f.write(b)

    def __getattr__(self, name):
        return getattr(self.f, name)


@pytest.mark.parametrize("budget", [0, 5, HDR, HDR + 30, HDR + 2 * REC, HDR + 3 * REC - 1])
@pytest.mark.parametrize("mode", ["full", "diff"])
def test_a_power_cut_mid_write_leaves_the_old_list(tmp_path, monkeypatch, budget, mode):
    """Power fails while the new list is being written: after the reboot the old list is
    read (and the torn temp file deleted). Break: write the new list in place (no temp
    file) -> the reboot finds a torn list."""
    listed(tmp_path, [E("A"), E("B"), E("C")], version=3)
    before = raw(tmp_path)
    real_open = open

    def cut_open(path, mode="r"):
        f = real_open(path, mode)
        return CutAfter(f, budget) if "w" in mode else f

    lst = LocalList(Store(str(tmp_path)))
    monkeypatch.setattr(authlist, "open", cut_open, raising=False)
    with pytest.raises(PowerCut):
        lst.apply(4, mode, [E("A", "Blocked"), E("D"), E("E")])
    monkeypatch.undo()
    lst.close()
    tmp = os.path.join(str(tmp_path), "authlist.dat.tmp")
    assert os.path.getsize(tmp) == budget  # the torn new list is on flash
    assert raw(tmp_path) == before
    rebooted = LocalList(Store(str(tmp_path)))
    assert (rebooted.version, rebooted.count, rebooted.corrupt) == (3, 3, False)
    assert not os.path.exists(tmp)
    assert [rebooted.lookup(t) for t in "ABCD"] == [("Accepted", None, None, None)] * 3 + [None]


def test_a_power_cut_between_write_and_rename_leaves_the_old_list(tmp_path):
    class CutAtRename(Store):
        def rename(self, name, new_name):
            raise PowerCut()

    listed(tmp_path, [E("A")], version=3)
    before = raw(tmp_path)
    with pytest.raises(PowerCut):
        LocalList(CutAtRename(str(tmp_path))).apply(4, "full", [E("B")])
    # the complete new list, waiting for the rename that never came
    assert raw(tmp_path, "authlist.dat.tmp") == (
        b"EVAL"
        + struct.pack("<HHII", REC, 0, 4, 1)
        + b"B"
        + bytes(19)
        + b"\x01"
        + b"\xff" * 8
        + bytes(20)
    )
    assert raw(tmp_path) == before
    lst = LocalList(Store(str(tmp_path)))
    assert lst.version == 3 and lst.lookup("B") is None
    assert lst.lookup("A") == ("Accepted", None, None, None)
    assert os.listdir(str(tmp_path)) == ["authlist.dat"]


def corruptions():
    good = HDR + 2 * REC

    def header(magic=b"EVAL", rec=REC, zero=0, version=1, count=2):
        return (
            magic
            + rec.to_bytes(2, "little")
            + zero.to_bytes(2, "little")
            + version.to_bytes(4, "little")
            + count.to_bytes(4, "little")
        )

    return {
        "empty": lambda d: b"",
        "short_header": lambda d: d[:5],
        "header_only": lambda d: d[:HDR],
        "truncated_by_1": lambda d: d[: good - 1],
        "torn_record": lambda d: d[: HDR + REC + 7],
        "one_byte_extra": lambda d: d + b"\0",
        "bad_magic": lambda d: b"XVAL" + d[4:],
        "other_record_size": lambda d: header(rec=48) + d[HDR:],
        "version_0": lambda d: header(version=0) + d[HDR:],
        "count_too_high": lambda d: header(count=3) + d[HDR:],
        "count_too_low": lambda d: header(count=1) + d[HDR:],
        "json_instead": lambda d: b'{"entries": []}',
    }


@pytest.mark.parametrize("how", sorted(corruptions()))
def test_a_corrupt_file_is_an_empty_list_with_a_flag(tmp_path, how):
    """Break: trust the header without the size check -> count 3 on a 2-record file and a
    lookup that reads past the end; raise on a bad header -> the station cannot boot."""
    listed(tmp_path, [E("A"), E("B")])
    p = os.path.join(str(tmp_path), "authlist.dat")
    with open(p, "rb") as f:
        data = f.read()
    with open(p, "wb") as f:
        f.write(corruptions()[how](data))
    lst = LocalList(Store(str(tmp_path)))
    assert (lst.version, lst.count, lst.corrupt) == (0, 0, True)
    assert lst.lookup("A") is None and lst.lookup("B") is None
    # a new list (full, or a diff: any version is above 0) replaces it and clears the flag
    assert lst.apply(1, "diff", [E("C")]) == 1
    assert (lst.corrupt, lst.lookup("C")) == (False, ("Accepted", None, None, None))
    assert LocalList(Store(str(tmp_path))).corrupt is False


def test_a_file_that_shrinks_under_a_lookup_reads_as_empty(tmp_path):
    """Break: ignore a short readinto -> the lookup decodes stale buffer bytes."""
    lst = listed(tmp_path, [E("A"), E("B"), E("C")])
    assert lst.lookup("C")
    p = os.path.join(str(tmp_path), "authlist.dat")
    os.truncate(p, HDR + REC + 3)
    assert lst.lookup("C") is None
    assert (lst.corrupt, lst.count, lst.version) == (True, 0, 0)


# -- cache --------------------------------------------------------------------------------
class CountingStore(Store):
    def __init__(self, root):
        super().__init__(root)
        self.writes = 0

    def write_json(self, name, obj):
        self.writes += 1
        super().write_json(name, obj)


def cached(c):
    """The cached tags, least recently used first (white box: the order on flash)."""
    return [authlist._text(c._recs, c._order[i] * REC) for i in range(c.count)]


def test_cache_evicts_the_least_recently_used(tmp_path):
    """Break: evict slot 0 instead of order[0] -> A (just used) goes instead of B; no touch
    on get -> A goes."""
    c = Cache(Store(str(tmp_path)), size=3)
    for t in "ABC":
        c.put(t, "Accepted", None, None, None)
    assert c.get("A", None)  # A is now the most recently used
    c.put("D", "Accepted", None, None, None)
    assert c.get("B", None) is None
    assert [c.get(t, None) is not None for t in "ACD"] == [True] * 3
    c.put("C", "Blocked", None, None, None)  # an update is a use too
    c.put("E", "Accepted", None, None, None)  # order was A, D, C: A goes
    assert [c.get(t, None) is not None for t in "ABCDE"] == [False, False, True, True, True]
    assert c.count == 3 and cached(c) == ["C", "D", "E"]
    assert c.get("c", None) == ("Blocked", None, None, None)


def test_cache_writes_flash_only_when_an_entry_changes(tmp_path):
    """Break: save in get() -> a write per lookup; save on an unchanged put -> a write per
    repeated backend answer."""
    s = CountingStore(str(tmp_path))
    c = Cache(s, size=4)
    c.put("A", "Accepted", 100, 2000, "G")
    assert s.writes == 1
    c.put("a", "Accepted", 100, 2000, "G")  # the same answer again
    for _ in range(10):
        c.get("A", 50)
    assert s.writes == 1
    c.put("A", "Accepted", 200, 2000, "G")
    assert s.writes == 2
    c.put("A", "Accepted", 200, 2000, "g")  # a group is kept as sent: a change
    assert s.writes == 3 and c.get("A", 50)[3] == "g"
    assert c.drop("A") and s.writes == 4
    assert not c.drop("A") and s.writes == 4
    c.clear()
    assert s.writes == 5


def test_cache_survives_a_reboot_with_the_lru_order_of_the_last_write(tmp_path):
    """The order on flash is approximate by design: touches after the last write are lost.
    Break: a write in get() -> B would be the first to go after the reboot."""
    c = Cache(Store(str(tmp_path)), size=3)
    c.put("A", "Accepted", None, 10, None)
    c.put("B", "Invalid", 1764000000, None, "grp")
    c.put("C", "NoCredit", None, None, None)
    assert c.get("A", 1) is not None  # only in RAM
    again = Cache(Store(str(tmp_path)), size=3)
    assert (again.count, again.corrupt) == (3, False)
    assert cached(again) == ["A", "B", "C"]
    assert again.get("B", 1) == ("Invalid", 1764000000, None, "grp")
    again.put("D", "Accepted", None, None, None)
    assert again.get("A", 1) is None
    smaller = Cache(Store(str(tmp_path)), size=2)  # the newest entries are kept
    assert cached(smaller) == ["B", "D"] and not smaller.corrupt


def test_cache_honours_expiry_and_distrusts_it_without_a_clock(tmp_path):
    """OCPP: honour expiryDate even from the cache. Break: `>` for `>=` -> still Accepted
    at the expiry second; ignore now None -> an entry with an expiry is trusted."""
    c = Cache(Store(str(tmp_path)))
    c.put("A", "Accepted", 1000, 500, "G")
    c.put("B", "Blocked", 1000, None, None)
    c.put("N", "Accepted", None, None, None)
    assert c.get("A", 999) == ("Accepted", 1000, 500, "G")
    assert c.get("A", 1000) == ("Expired", 1000, 500, "G")
    assert c.get("A", 10**9) == ("Expired", 1000, 500, "G")
    assert c.get("B", 1001) == ("Expired", 1000, None, None)
    assert c.get("A", None) is None  # clock unset: could have expired
    assert c.get("N", None) == ("Accepted", None, None, None)
    assert c.get("X", 5) is None


def test_status_at():
    assert status_at("Accepted", None, None) == "Accepted"
    assert status_at("Blocked", None, 5) == "Blocked"
    assert status_at("Accepted", 10, 9) == "Accepted"
    assert status_at("Accepted", 10, 10) == "Expired"
    assert status_at("Accepted", 10, None) is None


def test_cache_drop_keeps_the_lru_order_of_the_others(tmp_path):
    """Dropping moves the last slot's record into the freed slot. Break: no renaming in
    the order -> eviction picks the wrong entry or a stale slot."""
    for victim in "ABCD":
        c = Cache(Store(str(tmp_path)), size=4)
        c.clear()
        for t in "ABCD":
            c.put(t, "Accepted", None, None, None)
        c.get("A", None)  # order B C D A
        assert c.drop(victim) and c.count == 3
        order = [t for t in "BCDA" if t != victim]
        assert cached(c) == order
        assert c.get(victim, None) is None
        c.put("E", "Accepted", None, None, None)
        c.put("F", "Accepted", None, None, None)  # evicts the oldest survivor
        assert cached(c) == order[1:] + ["E", "F"]
        assert [c.get(t, None) is not None for t in order[1:] + ["E", "F"]] == [True] * 4


def test_cache_refuses_what_is_no_answer(tmp_path):
    c = Cache(Store(str(tmp_path)))
    for args, code in [
        (("A", "ConcurrentTx", None, None, None), "bad_arg"),
        (("A", None, None, None, None), "bad_arg"),
        (("", "Accepted", None, None, None), "bad_arg"),
        (("A", "Accepted", -5, None, None), "out_of_range"),
        (("A", "Accepted", None, 1.0, None), "bad_arg"),
        (("A", "Accepted", None, None, ""), "bad_arg"),
    ]:
        with pytest.raises(ValueError) as e:
            c.put(*args)
        assert e.value.args[0] == code, args
    assert c.count == 0


@pytest.mark.parametrize(
    "content",
    [
        "{",
        "[1, 2]",
        '{"A": 1}',
        '[["A", "Maybe", null, null, null]]',
        '[["A", null, null, null, null]]',
        '[["A", "Accepted", null, null]]',
        '[["A", "Accepted", -1, null, null]]',
    ],
)
def test_a_corrupt_cache_file_is_an_empty_cache_with_a_flag(tmp_path, content):
    with open(os.path.join(str(tmp_path), "authcache.json"), "w") as f:
        f.write(content)
    c = Cache(Store(str(tmp_path)))
    assert (c.count, c.corrupt) == (0, True)
    c.put("A", "Accepted", None, None, None)
    assert not Cache(Store(str(tmp_path))).corrupt


def test_a_failed_cache_write_is_flagged_not_raised(tmp_path):
    class Full(Store):
        def write_json(self, name, obj):
            raise OSError(28, "ENOSPC")

    c = Cache(Full(str(tmp_path)))
    c.put("A", "Accepted", None, None, None)
    assert c.failed and c.get("A", None) == ("Accepted", None, None, None)


# -- on the MicroPython unix port ---------------------------------------------------------
# One script, run by CPython and by the unix port: the answers must be the same. It also
# builds a 1000-entry list by 20-entry diffs (what fits one MQTT payload) under a small heap,
# and measures a lookup there.
PORT_SCRIPT = r"""
import sys
sys.path.insert(0, sys.argv[1])
import gc
import json
from evse.authlist import Cache, LocalList
from evse.store import Store

try:
    import micropython
    from time import ticks_diff, ticks_us
except ImportError:
    micropython = None


def call(f, *a):
    try:
        r = f(*a)
    except ValueError as e:
        return ["err", e.args[0], e.args[1]]
    return list(r) if isinstance(r, tuple) else r


def tag(i):
    return "%08X" % (i * 2654435761 % 4294967291)


def run_cases(store, path):
    lst = cache = None
    with open(path) as f:
        for line in f:
            c = json.loads(line)
            op = c[0]
            if op == "list":
                lst = LocalList(store, "authlist.dat", c[1])
                out = [lst.version, lst.count, lst.corrupt]
            elif op == "apply":
                out = [call(lst.apply, c[1], c[2], c[3]), lst.version, lst.count]
            elif op == "lookup":
                out = call(lst.lookup, c[1])
            elif op == "cache":
                cache = Cache(store, "authcache.json", c[1])
                out = [cache.count, cache.corrupt]
            elif op == "put":
                out = call(cache.put, c[1], c[2], c[3], c[4], c[5])
            elif op == "get":
                out = call(cache.get, c[1], c[2])
            elif op == "drop":
                out = cache.drop(c[1])
            else:
                out = cache.clear()
            print(json.dumps(out))
            c = out = None
            gc.collect()
    lst.close()


def big_list(store):
    lst = LocalList(store, "big.dat")
    lst.apply(1, "full", [])
    for b in range(50):
        es = []
        for i in range(b * 20, b * 20 + 20):
            es.append({"id_tag": tag(i), "status": "Accepted", "expires": None,
                       "max_wh": i, "group": None})
        lst.apply(b + 2, "diff", es)
        es = None
        gc.collect()
    bad = 0
    for i in range(1000):
        r = lst.lookup(tag(i))
        if r is None or r[2] != i:
            bad += 1
        if lst.lookup(tag(i) + "0") is not None:
            bad += 1
    print(json.dumps(["big", lst.count, lst.version, bad]))
    if micropython is None:
        return
    want = tag(500)
    misses = (tag(0) + "!", tag(999) + "!", "ZZZZ", "0")
    gc.collect()
    t0 = ticks_us()
    for i in range(1000):
        lst.lookup(want)
    t_us = ticks_diff(ticks_us(), t0) / 1000
    # After a warm-up (the first use of a character interns its 1-char string, once for
    # good) a miss allocates nothing at all: under a locked heap any allocation raises.
    for t in misses:
        lst.lookup(t)
    micropython.heap_lock()
    try:
        for t in misses:
            lst.lookup(t)
    finally:
        micropython.heap_unlock()
    gc.collect()
    gc.disable()
    m0 = gc.mem_free()
    hit = lst.lookup(want)
    per_hit = m0 - gc.mem_free()
    gc.enable()
    print(json.dumps(["figures", t_us, per_hit, hit[2]]))
    lst.close()


run_cases(Store(sys.argv[2]), sys.argv[3])
big_list(Store(sys.argv[2]))
"""


def port_cases():
    rng = random.Random(7)
    tags = ["%X" % rng.randrange(16**8) for _ in range(60)]
    cases = [["list", 40]]
    v = 0
    for step in range(12):
        v += 1
        mode = "full" if step in (0, 6) else "diff"
        es = []
        for t in rng.sample(tags, 12):
            st = rng.choice(
                ["Accepted", "Blocked", "Expired", None if mode == "diff" else "Accepted"]
            )
            es.append(
                E(
                    t.lower() if rng.random() < 0.3 else t,
                    st,
                    rng.choice([None, rng.randrange(2**32 - 1)]),
                    rng.choice([None, 0, rng.randrange(10**6)]),
                    rng.choice([None, "grp" + t[:3]]),
                )
            )
        cases.append(["apply", v, mode, es])
        cases += [["lookup", t] for t in rng.sample(tags, 15)]
    cases += [["apply", r[0], r[1], r[2]] for r in REFUSED]
    cases += [["apply", 99, "full", [E("T%d" % i) for i in range(41)]], ["list", 40]]
    cases += [["lookup", t] for t in tags]
    cases.append(["cache", 4])
    for t in tags[:10]:
        cases.append(
            [
                "put",
                t,
                rng.choice(["Accepted", "Invalid", "NoCredit"]),
                rng.choice([None, 1000]),
                None,
                rng.choice([None, "g"]),
            ]
        )
        cases += [["get", rng.choice(tags[:10]), rng.choice([None, 999, 1000])]]
    cases += [["put", "x", "ConcurrentTx", None, None, None], ["drop", tags[9]], ["cache", 4]]
    cases += [["get", t, 5] for t in tags[:10]] + [["clear"], ["cache", 4]]
    return cases


def run_port_script(interpreter, tmp_path, name, cases):
    return portrun.run_port_script(interpreter, tmp_path, name, cases, PORT_SCRIPT, "96k", 300)


def test_same_results_on_the_micropython_unix_port(tmp_path):
    assert os.path.exists(MICROPYTHON), "no unix port at %s: make venv libs" % MICROPYTHON
    cases = port_cases()
    want = run_port_script(sys.executable, tmp_path, "cpython", cases)
    got = run_port_script(MICROPYTHON, tmp_path, "unix", cases)
    assert len(want) == len(cases) + 1 and len(got) == len(cases) + 2
    bad = [(c, g, w) for c, g, w in zip(cases, got, want) if g != w]
    assert not bad, "%d differ, first: %s" % (len(bad), bad[:3])
    # positive evidence: the cases hit, missed and refused
    assert (
        sum(isinstance(w, list) and w and w[0] in ("Accepted", "Blocked", "Expired") for w in want)
        >= 40
    )
    assert sum(w is None for w in want) > 20
    assert (
        sum(isinstance(w, list) and isinstance(w[0], list) and w[0][0] == "err" for w in want) > 30
    )
    assert want[len(cases)] == got[len(cases)] == ["big", 1000, 51, 0]
    name, t_us, per_hit, hit = got[-1]
    assert name == "figures" and hit == 500
    print("unix port, 1000 entries: lookup %.1f us, %d heap bytes per hit" % (t_us, per_hit))
