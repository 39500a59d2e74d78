"""One station's bridge state on disk: the transaction-message queue and the transactions."""

import json
import logging
import os

log = logging.getLogger("ocpp_bridge")

ACKED_KEEP = 2000  # session messages remembered as confirmed (resends are acked again)
TX_KEEP = 1000  # finished transactions remembered (a late stop resend finds its id)
COMPACT_AFTER = 200  # done markers in the queue file before it is rewritten


def _safe_name(station_id):
    # Station ids have no '/' (the firmware refuses it) but the file name must not escape.
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in station_id)


class StationStore:
    """The queue is an append-only file of lines `{"n":N,"item":{...}}` and `{"done":N}`:
    appending is cheap for 200 stations' meter values, a torn last line (the bridge killed
    mid-write) is skipped at load. The transactions and remembered acks are one small JSON
    file, rewritten (tmp + rename) when a transaction starts or stops."""

    def __init__(self, state_dir, station_id):
        os.makedirs(state_dir, exist_ok=True)
        name = _safe_name(station_id)
        self.qpath = os.path.join(state_dir, name + ".queue")
        self.spath = os.path.join(state_dir, name + ".json")
        self.items = {}  # n -> item, in insertion (= delivery) order
        self.next_n = 1
        self.done_lines = 0
        self.torn = 0
        self.state = {"tx": {}, "acked": [], "profiles": {}}
        self._load()
        self._acked = set(self.state["acked"])
        self._queued = {self.key(i) for i in self.items.values() if "seq" in i}

    @staticmethod
    def key(item):
        # seq alone would do, but an erased station restarts at seq 1; sid+event guard it.
        return "%s:%s:%s" % (item.get("seq"), item.get("sid"), item.get("kind"))

    def _load(self):
        try:
            with open(self.spath, encoding="utf-8") as f:
                st = json.load(f)
            if isinstance(st, dict):
                self.state.update(st)
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as e:
            log.error("%s: unreadable, starting without it: %s", self.spath, e)
        try:
            with open(self.qpath, encoding="utf-8") as f:
                lines = f.read().split("\n")
        except FileNotFoundError:
            return
        for line in lines:
            if not line:
                continue
            try:
                rec = json.loads(line)
                if "done" in rec:
                    self.items.pop(rec["done"], None)
                    self.done_lines += 1
                else:
                    self.items[rec["n"]] = rec["item"]
                    self.next_n = max(self.next_n, rec["n"] + 1)
            except (ValueError, KeyError, TypeError):
                self.torn += 1
        if self.torn:
            log.warning("%s: %d torn lines skipped", self.qpath, self.torn)
            self._compact()

    def _compact(self):
        tmp = self.qpath + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            for n, item in self.items.items():
                f.write(json.dumps({"n": n, "item": item}, separators=(",", ":")) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.qpath)
        self.done_lines = 0

    def _append(self, rec, sync):
        # Opened per write: a file descriptor per station would cap a fleet at ulimit -n.
        with open(self.qpath, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec, separators=(",", ":")) + "\n")
            if sync:
                f.flush()
                os.fsync(f.fileno())

    # -- the queue --
    def push(self, item, sync=False):
        n = self.next_n
        self.next_n += 1
        self.items[n] = item
        if "seq" in item:
            self._queued.add(self.key(item))
        self._append({"n": n, "item": item}, sync)
        return n

    def head(self):
        for n, item in self.items.items():
            return n, item
        return None

    def done(self, n):
        item = self.items.pop(n, None)
        if item is None:
            return
        self._queued.discard(self.key(item))
        self._append({"done": n}, "seq" in item)
        self.done_lines += 1
        if self.done_lines >= COMPACT_AFTER and self.done_lines > len(self.items):
            self._compact()

    def queued(self, item):
        return self.key(item) in self._queued

    def __len__(self):
        return len(self.items)

    # -- confirmed messages and transactions --
    def acked(self, item):
        return self.key(item) in self._acked

    def confirm(self, item):
        k = self.key(item)
        self._acked.add(k)
        self.state["acked"].append(k)
        del self.state["acked"][:-ACKED_KEEP]
        self._acked = set(self.state["acked"])
        self.save()

    def set_tx(self, sid, txid, connector):
        self.state["tx"][sid] = {"txid": txid, "connector": connector, "stopped": False}
        self.save()

    def tx(self, sid):
        return self.state["tx"].get(sid)

    def sid_of(self, txid):
        for sid, t in self.state["tx"].items():
            if t["txid"] == txid and not t["stopped"]:
                return sid
        return None

    def stopped(self, sid):
        t = self.state["tx"].get(sid)
        if t:
            t["stopped"] = True
        done = [s for s, t in self.state["tx"].items() if t["stopped"]]
        for s in done[:-TX_KEEP]:
            del self.state["tx"][s]
        self.save()

    def save(self):
        tmp = self.spath + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(self.state, f, separators=(",", ":"))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.spath)
