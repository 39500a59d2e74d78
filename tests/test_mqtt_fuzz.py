"""Fuzz the command topic with 1,000 generated and mutated payloads (seeded, reproducible):
the station keeps charging, answers every payload exactly once (well-formed rids by rid),
and its configuration does not change."""

import json
import random
import time

from backend import BASE, Backend
from scenario import charging

SEED = 61851
N = 1000

# Templates that must never change state, even if valid: read-only commands, and
# state-changing commands whose arguments are wrong in a way a byte flip cannot repair.
TEMPLATES = [
    {"cmd": "diag"},
    {"cmd": "config_get"},
    {"cmd": "config_get", "keys": ["phases", "prefix"]},
    # A bare number needs two quotes removed and three letters turned into digits: five
    # edits, more than a mutation makes, so none of these can be repaired into a valid one.
    {"cmd": "config_set", "values": {"max_current_a": "sixteen"}},
    {"cmd": "config_set", "values": {"no.such.key": 1, "phases": "one"}},
    {"cmd": "set_limit", "connector": "one", "current_a": "ten"},
    {"cmd": "clear_limit", "connector": "one"},
    {"cmd": "disable", "connector": "one"},
    {"cmd": "enable", "connector": "all"},
    {"cmd": "stop", "sid": "no-such-session"},
    # No reboot template: a mutated argument name leaves "reboot" with its optional delay
    # missing, which is a valid command (the station did reboot when we had one).
    {"cmd": "frobnicate"},
]
WEIRD = [None, True, -1, 1e308, "", "x" * 300, [], {}, [[[[[]]]]], {"a": {"b": {"c": 1}}}]


def generate(rng):
    """(payload bytes, rid or None if the payload carries no usable rid)."""
    kind = rng.random()
    rid = "z%d" % rng.randrange(10**9)
    t = dict(rng.choice(TEMPLATES))
    if kind < 0.35:  # structurally valid JSON with wrong values
        t["rid"] = rid
        if rng.random() < 0.5:
            t[rng.choice(["connector", "current_a", "ttl_s", "values", "keys", "cmd"])] = (
                rng.choice(WEIRD))
        if t.get("cmd") not in ("diag", "config_get"):
            t["cmd"] = "frobnicate"  # a replaced argument could be a valid one
        return json.dumps(t).encode(), rid
    if kind < 0.55:  # bad or missing rid
        t["rid"] = rng.choice(WEIRD + [None])
        if t["rid"] is None and rng.random() < 0.5:
            del t["rid"]
        return json.dumps(t).encode(), None
    raw = bytearray(json.dumps(dict(t, rid=rid)).encode())
    if kind < 0.8:  # byte mutations
        for _ in range(rng.randint(1, 4)):
            op = rng.random()
            i = rng.randrange(len(raw))
            if op < 0.4:
                raw[i] = rng.randrange(256)
            elif op < 0.7:
                del raw[i]
            else:
                raw.insert(i, rng.randrange(256))
        payload = bytes(raw)
    elif kind < 0.9:  # truncation
        payload = bytes(raw[: rng.randrange(len(raw))])
    else:  # random bytes, sometimes long
        payload = bytes(rng.randrange(256) for _ in range(rng.choice([1, 10, 200, 3000])))
    return payload, _rid_if_wellformed(payload)


def _rid_if_wellformed(payload):
    try:
        obj = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(obj, dict):
        return None
    rid = obj.get("rid")
    if isinstance(rid, str) and 0 < len(rid) <= 64 and len(payload) <= 1900:
        return rid
    return None


def test_fuzz_commands(tmp_path):
    rng = random.Random(SEED)
    cases = [generate(rng) for _ in range(N)]
    be = Backend(tmp_path)
    try:
        charging(be.st)
        before = be.cmd("config_get")["data"]
        m = be.mark()
        for payload, _ in cases:
            be.mq.c.publish(BASE + "/cmd", payload, qos=1)
            time.sleep(0.002)
        want = {rid for _, rid in cases if rid is not None}
        end = time.monotonic() + 30
        while time.monotonic() < end:
            if len([x for x in be.mq.after(m) if x[0].endswith("/reply")]) >= N:
                break
            time.sleep(0.1)
        # Commands are answered in order: every reply to the fuzz comes before this one's,
        # so counting up to it counts them all, late duplicates included.
        after = be.cmd("config_get")
        replies = []
        for topic, payload, _ in be.mq.after(m):
            if topic.endswith("/reply"):
                r = json.loads(payload)
                if r.get("rid") == after["rid"]:
                    break
                replies.append(r)
        if len(replies) != N:
            print("diag:", be.cmd("diag")["data"])
            got_rids = {r.get("rid") for r in replies}
            print("missing:", [p[:80] for p, rid in cases if rid and rid not in got_rids][:10])
        acted = [r for r in replies if r["ok"] and "data" not in r]
        assert not acted, acted  # only read-only commands may succeed
        assert len(replies) == N  # exactly one reply per payload
        got = {r["rid"] for r in replies if isinstance(r.get("rid"), str)}
        assert want <= got
        assert all(isinstance(r["ok"], bool) for r in replies)
        s = be.st.op("get")
        assert s["contactor"] and s["ev_i"][0] == 32.0  # still charging at full current
        assert after["data"] == before
        assert be.st.proc.poll() is None and "firmware exited" not in be.st.stderr()
    finally:
        be.stop()
