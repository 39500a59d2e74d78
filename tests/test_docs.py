"""The docs tell the truth about the code: docs/mqtt.md and README.md against the firmware.

Each check compares two lists, one read from the code, one from the docs, and fails with
the exact item and place that is missing on either side:

1. configuration keys (evse.config.SCHEMA) <-> the configuration table, with type,
   default and range, and the `config` defaults example;
2. commands (Api.cmd_*) <-> the commands table and ### sections;
3. error codes the firmware replies with <-> the error table;
4. event codes (and levels) the firmware and boards emit <-> the event-code table;
5. limit sources (evse.limits.SOURCES, and which ones the firmware sets) <-> the
   limit-source table;
6. MQTT topics the firmware publishes and subscribes to <-> the topic tables, and the
   `diag` fields (evse/report.py, evse/modbus.py) <-> their example and tables;
7. README.md: every `make X` is a Makefile target, every tool it runs has a CLI;
8. no file of the project points outside it.

CPython only, no broker; the code is read with `ast` and `re`, never run on a board.
"""

import ast
import json
import os
import re
import subprocess
import sys

import pytest

import evse
from evse.api import Api
from evse.clock import Uptime
from evse.config import SCHEMA
from evse.events import Events
from evse.limits import SOURCES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The firmware actually imported (conftest honours EVSE_FIRMWARE, a mutated copy).
FIRMWARE = os.path.dirname(os.path.dirname(os.path.abspath(evse.__file__)))
BOARDS = os.path.join(ROOT, "boards")
MQTT_MD = "docs/mqtt.md"
README = "README.md"


def read(rel):
    with open(os.path.join(ROOT, rel), encoding="utf-8") as f:
        return f.read()


def py_files(*dirs):
    for top in dirs:
        for d, _, names in os.walk(top):
            for n in sorted(names):
                if n.endswith(".py"):
                    yield os.path.join(d, n)


def where(path, line):
    """A path relative to the project (or to the mutated firmware copy), with its line."""
    for base, prefix in ((FIRMWARE, "firmware/"), (ROOT, "")):
        if path.startswith(base + os.sep):
            return "%s%s:%d" % (prefix, os.path.relpath(path, base), line)
    return "%s:%d" % (path, line)


# -- markdown ---------------------------------------------------------------------------------


def code_spans(text):
    return re.findall(r"`([^`]*)`", text)


def split_row(line):
    """'| a | `x|y` | b |' -> ['a', '`x|y`', 'b'] (a | inside backticks does not split)."""
    cells, cur, in_code = [], "", False
    for ch in line.strip().strip("|"):
        if ch == "`":
            in_code = not in_code
        if ch == "|" and not in_code:
            cells.append(cur.strip())
            cur = ""
        else:
            cur += ch
    cells.append(cur.strip())
    return cells


class Table:
    def __init__(self, line, header):
        self.line = line  # 1-based line number of the header
        self.header = [h.lower() for h in header]
        self.rows = []  # (line, cells)

    def col(self, cells, name):
        return cells[self.header.index(name)].replace("**", "").strip()


def tables(md, first_line=1):
    """Every pipe table outside code fences."""
    out, fence, table = [], False, None
    lines = md.splitlines()
    for i, line in enumerate(lines):
        n = first_line + i
        if line.startswith("```"):
            fence = not fence
        if fence or not line.startswith("|"):
            table = None
            continue
        if table is not None:
            table.rows.append((n, split_row(line)))
        elif i + 1 < len(lines) and re.fullmatch(r"\|[\s:|-]+\|", lines[i + 1].strip()):
            table = Table(n, split_row(line))
            out.append(table)
    for t in out:
        t.rows = [r for r in t.rows if not re.fullmatch(r"[\s:-]*", "".join(r[1]))]
    return out


def section(md, title):
    """(first line number, text) of the section whose heading is `title` (any level),
    up to the next heading of the same or a higher level."""
    lines = md.splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"(#+) (.*)", line)
        if m and m.group(2).strip() == title:
            level = len(m.group(1))
            end = len(lines)
            for j in range(i + 1, len(lines)):
                h = re.match(r"(#+) ", lines[j])
                if h and len(h.group(1)) <= level and not _in_fence(lines, j):
                    end = j
                    break
            return i + 1, "\n".join(lines[i:end])
    raise AssertionError("%s has no section titled %r" % (MQTT_MD, title))


def _in_fence(lines, j):
    return sum(1 for ln in lines[:j] if ln.startswith("```")) % 2 == 1


def find_table(md, columns, first_line=1, what="table"):
    for t in tables(md, first_line):
        if t.header[: len(columns)] == columns:
            return t
    raise AssertionError("%s: no %s with the columns | %s |"
                         % (MQTT_MD, what, " | ".join(columns)))


def one_code(cells, line, what):
    names = code_spans(cells[0])
    assert len(names) == 1, "%s line %d: the %s column must hold exactly one `name`, got %r" % (
        MQTT_MD, line, what, cells[0])
    return names[0]


# -- 1. configuration -------------------------------------------------------------------------

_SECRET, _TOPIC = 1, 2  # evse.config flags


def render_type(e):
    typ = e[1]
    if isinstance(typ, tuple):
        return "choice"
    name = {int: "int", float: "float", bool: "bool", str: "string", dict: "object"}[typ]
    return name + (", secret" if e[5] & _SECRET else "")


def render_default(e):
    v = e[2]
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, dict):
        return "`%s`" % json.dumps(v)
    return "`%s`" % v if v else '`""`'


def render_range(e):
    typ, lo, hi = e[1], e[3], e[4]
    if isinstance(typ, tuple):
        return ", ".join("`%s`" % c if c else '`""`' for c in typ)
    if typ is str:
        return "%d–%d chars" % (lo, hi) + (", no `/ + #` or space" if e[5] & _TOPIC else "")
    if typ in (int, float):
        return "%r..%r" % (lo, hi)
    return ""  # bool, dict: no range


def config_problems(md, schema=SCHEMA):
    problems = []
    by_key = {e[0]: e for e in schema}
    main = find_table(md, ["key", "type", "default", "range"], what="configuration table")
    in_main = {}
    for t in tables(md):
        is_main = t.line == main.line
        if t.header[:1] != ["key"] or "default" not in t.header:
            continue  # the configuration table and the small per-topic excerpts of it
        for line, cells in t.rows:
            key = one_code(cells, line, "key")
            if is_main:
                if key in in_main:
                    problems.append("%s line %d: `%s` is listed twice in the configuration "
                                    "table (also line %d)" % (MQTT_MD, line, key, in_main[key]))
                in_main[key] = line
            e = by_key.get(key)
            if e is None:
                problems.append("%s line %d: `%s` is documented but is not a key of "
                                "evse.config.SCHEMA" % (MQTT_MD, line, key))
                continue
            for col, render in (("type", render_type), ("default", render_default),
                                ("range", render_range)):
                if col in t.header:
                    got, want = t.col(cells, col), render(e)
                    if got != want:
                        problems.append("%s line %d: `%s` %s is %r, evse.config.SCHEMA says %r"
                                        % (MQTT_MD, line, key, col, got, want))
    for e in schema:
        if e[0] not in in_main:
            problems.append("evse.config.SCHEMA key `%s` is missing from the configuration "
                            "table of %s (line %d)" % (e[0], MQTT_MD, main.line))
    return problems


def config_example_problems(md, schema=SCHEMA):
    """The `config` payload example shows exactly the defaults (secrets unset: "")."""
    m = re.search(r"defaults\s+look\s+like\s+this:\s*```json\n(.*?)\n```", md, re.S)
    if m is None:
        return ["%s: no ```json block after 'The defaults look like this:'" % MQTT_MD]
    shown = json.loads(m.group(1))
    problems = []
    for e in schema:
        if e[0] not in shown:
            problems.append("%s config defaults example: `%s` is missing" % (MQTT_MD, e[0]))
        elif type(shown[e[0]]) is not type(e[2]) or shown[e[0]] != e[2]:
            problems.append("%s config defaults example: `%s` is %r, the default is %r"
                            % (MQTT_MD, e[0], shown[e[0]], e[2]))
    for k in sorted(set(shown) - {e[0] for e in schema}):
        problems.append("%s config defaults example: `%s` is not a configuration key"
                        % (MQTT_MD, k))
    return problems


def test_config_table():
    problems = config_problems(read(MQTT_MD))
    assert not problems, "\n".join(problems)


def test_config_defaults_example():
    problems = config_example_problems(read(MQTT_MD))
    assert not problems, "\n".join(problems)


# -- 2. commands --------------------------------------------------------------------------------


class _Station:
    """Just enough station for Api.handle to reject an unknown command."""

    def __init__(self):
        self.events = Events()
        self.uptime = Uptime(0)


def command_problems(md, api_cls=Api):
    problems = []
    in_code = {n[4:] for n in dir(api_cls) if n.startswith("cmd_")}
    first, sec = section(md, "Commands")
    table = find_table(sec, ["cmd", "status"], first, "commands table")
    implemented, planned = {}, {}
    for line, cells in table.rows:
        target = planned if "not implemented" in cells[1].lower() else implemented
        for name in code_spans(cells[0]):
            target[name] = line
    for i, text in enumerate(sec.splitlines()):
        if text.startswith("### "):
            for name in code_spans(text):
                implemented.setdefault(name, first + i)
    for name in sorted(in_code - set(implemented)):
        problems.append("Api.cmd_%s (evse/api.py) is not documented in %s: add it to the "
                        "commands table and give it a ### `%s` section" % (name, MQTT_MD, name))
    for name, line in sorted(implemented.items()):
        if name not in in_code:
            problems.append("%s line %d: command `%s` is documented, but evse.api.Api has no "
                            "cmd_%s" % (MQTT_MD, line, name, name))
    api = api_cls(_Station(), None)
    for name, line in sorted(planned.items()):
        if name in in_code:
            problems.append("%s line %d: `%s` is listed as not implemented yet, but Api has "
                            "cmd_%s" % (MQTT_MD, line, name, name))
            continue
        reply = api.handle(json.dumps({"rid": "1", "cmd": name}).encode(), 0)
        if reply.get("error") != "unknown_cmd":
            problems.append("%s line %d: `%s` is listed as not implemented yet (unknown_cmd), "
                            "but the firmware replies %r" % (MQTT_MD, line, name, reply))
    return problems


def test_commands():
    problems = command_problems(read(MQTT_MD))
    assert not problems, "\n".join(problems)


# -- 3. error codes ---------------------------------------------------------------------------

def _text_arg(call):
    """The literal text of a call's first argument: "x" or "x %s" % y -> the string."""
    a = call.args[0] if call.args else None
    if isinstance(a, ast.BinOp) and isinstance(a.op, ast.Mod):
        a = a.left
    return a.value if isinstance(a, ast.Constant) and isinstance(a.value, str) else None


def error_codes_in_code():
    """{code: "file:line"}: ApiError("code", ...), a reply dict {"error": "code"}, and the
    "code: detail" messages of evse/config.py's ValueErrors (they become replies)."""
    found = {}
    for path in py_files(FIRMWARE):
        config = path.endswith(os.path.join("evse", "config.py"))
        for node in ast.walk(ast.parse(open(path, encoding="utf-8").read(), path)):
            code = None
            if isinstance(node, ast.Call) and _name(node.func) == "ApiError":
                code = _text_arg(node)
            elif isinstance(node, ast.Call) and config and _name(node.func) == "ValueError":
                m = re.match(r"(\w+): ", _text_arg(node) or "")
                code = m and m.group(1)
            elif isinstance(node, ast.Dict):
                for k, v in zip(node.keys, node.values):
                    if (isinstance(k, ast.Constant) and k.value == "error"
                            and isinstance(v, ast.Constant) and isinstance(v.value, str)):
                        code = v.value
            if code:
                found.setdefault(code, where(path, node.lineno))
    return found


def error_problems(md, in_code):
    problems = []
    table = find_table(md, ["error", "when", "rid"], what="error code table")
    documented = {}
    for line, cells in table.rows:
        documented[one_code(cells, line, "error")] = line
    for code, loc in sorted(in_code.items()):
        if code not in documented:
            problems.append("error code `%s` (replied at %s) is missing from the error table "
                            "of %s (line %d)" % (code, loc, MQTT_MD, table.line))
    for code, line in sorted(documented.items()):
        if code not in in_code:
            problems.append("%s line %d: error code `%s` is documented but the firmware never "
                            "replies with it" % (MQTT_MD, line, code))
    return problems


def test_error_codes():
    found = error_codes_in_code()
    assert {"bad_json", "bad_arg", "unknown_cmd"} <= set(found), (
        "the error-code scan no longer understands the firmware: found only %r" % sorted(found))
    problems = error_problems(read(MQTT_MD), found)
    assert not problems, "\n".join(problems)


# -- 4. event codes ---------------------------------------------------------------------------


def _name(node):
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return ""


def _literals(node):
    """The strings an expression can be: "x" -> ["x"], a if c else b -> both; else None."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.IfExp):
        a, b = _literals(node.body), _literals(node.orelse)
        if a is not None and b is not None:
            return a + b
    return None


def _pairs(level, code):
    """(level, code) pairs of one add(level, code, ...); level None when not a literal.
    `"warn" if hot else "info", "Hot" if hot else "Normal"` pairs the branches."""
    codes, levels = _literals(code), _literals(level)
    if levels is None:
        return [(None, c) for c in codes]
    if len(levels) == 1:
        return [(levels[0], c) for c in codes]
    same_test = (isinstance(level, ast.IfExp) and isinstance(code, ast.IfExp)
                 and ast.dump(level.test) == ast.dump(code.test))
    if same_test and len(levels) == len(codes):
        return list(zip(levels, codes))
    return [(None, c) for c in codes]


def _is_queue_add(node, queues):
    """`<x>.events.add(a, b, ...)`, `self._events.add(...)` or `ev.add(...)` for an alias."""
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr == "add" and len(node.args) >= 2):
        return False
    receiver = _name(node.func.value)
    return receiver.lower().endswith("events") or receiver in queues


def _enclosing_function(node, parent):
    while node is not None and not isinstance(node, ast.FunctionDef):
        node = parent.get(node)
    return node


def events_in_code():
    """({code: {level or None: "file:line"}}, problems) for every event the firmware and
    boards can emit: `<...>events.add(level, code, ...)` with a literal code; calls with a
    literal of a function that passes its parameter on as the code (Connector.set_fault);
    and literal dicts with "level" and "code"."""
    found, forwarders, problems = {}, {}, []
    trees = [(p, ast.parse(open(p, encoding="utf-8").read(), p))
             for p in py_files(FIRMWARE, BOARDS)]

    def emit(level, code, path, node):
        found.setdefault(code, {}).setdefault(level, where(path, node.lineno))

    for path, tree in trees:
        parent = {c: p for p in ast.walk(tree) for c in ast.iter_child_nodes(p)}
        queues = {t.id for n in ast.walk(tree) if isinstance(n, ast.Assign)  # ev = self._events
                  and _name(n.value).lower().endswith("events")
                  for t in n.targets if isinstance(t, ast.Name)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Dict):
                d = {k.value: v.value for k, v in zip(node.keys, node.values)
                     if isinstance(k, ast.Constant) and isinstance(v, ast.Constant)}
                if isinstance(d.get("code"), str) and isinstance(d.get("level"), str):
                    emit(d["level"], d["code"], path, node)
            if not _is_queue_add(node, queues):
                continue
            level, code = node.args[0], node.args[1]
            fn = _enclosing_function(node, parent)
            params = [a.arg for a in fn.args.args] if fn is not None else []
            if _literals(code) is not None:
                for lv, c in _pairs(level, code):
                    emit(lv, c, path, node)
            elif isinstance(code, ast.Name) and code.id in params:
                index = params.index(code.id) - (1 if params[:1] == ["self"] else 0)
                forwarders[fn.name] = (index, code.id, _literals(level))
            else:
                problems.append("%s: events.add() with an event code the docs test cannot "
                                "read; pass a literal" % where(path, node.lineno))
    for path, tree in trees:
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and _name(node.func) in forwarders):
                continue
            index, param, levels = forwarders[_name(node.func)]
            arg = node.args[index] if index < len(node.args) else None
            arg = next((kw.value for kw in node.keywords if kw.arg == param), arg)
            for c in (_literals(arg) or []) if arg is not None else []:
                for lv in levels if levels is not None and len(levels) == 1 else [None]:
                    emit(lv, c, path, node)
    return found, problems


def event_problems(md, in_code):
    problems = []
    table = find_table(md, ["code", "level", "when"], what="event-code table")
    documented = {}
    for line, cells in table.rows:
        code = one_code(cells, line, "code")
        if code in documented:
            problems.append("%s line %d: event `%s` is listed twice" % (MQTT_MD, line, code))
        documented[code] = (line, table.col(cells, "level"))
    for code, levels in sorted(in_code.items()):
        loc = sorted(levels.values())[0]
        if code not in documented:
            problems.append("event `%s` (emitted at %s) is missing from the event-code table "
                            "of %s (line %d)" % (code, loc, MQTT_MD, table.line))
            continue
        line, doc_level = documented[code]
        literal = sorted(lv for lv in levels if lv is not None)
        if literal and doc_level not in literal:
            problems.append("%s line %d: event `%s` is documented with level %r, the firmware "
                            "emits it with %s (%s)" % (MQTT_MD, line, code, doc_level,
                                                       " or ".join(literal), loc))
    for code, (line, _) in sorted(documented.items()):
        if code not in in_code:
            problems.append("%s line %d: event `%s` is documented but the firmware never "
                            "emits it" % (MQTT_MD, line, code))
    return problems


def test_event_codes():
    found, unreadable = events_in_code()
    assert {"Connected", "RejectedInput", "GroundFailure"} <= set(found), (
        "the event scan no longer understands the firmware: found only %r" % sorted(found))
    problems = unreadable + event_problems(read(MQTT_MD), found)
    assert not problems, "\n".join(problems)


# -- 5. limit sources ---------------------------------------------------------------------------


def limit_sources_set():
    """{source: "file:line"} for every `<limits>.set("source", ...)` in firmware and boards."""
    found = {}
    for path in py_files(FIRMWARE, BOARDS):
        for node in ast.walk(ast.parse(open(path, encoding="utf-8").read(), path)):
            if (isinstance(node, ast.Call) and _name(node.func) == "set" and node.args
                    and isinstance(node.args[0], ast.Constant) and node.args[0].value in SOURCES):
                found.setdefault(node.args[0].value, where(path, node.lineno))
    return found


def limit_problems(md, emitted, sources=SOURCES):
    """The limit-source table lists SOURCES in their order; a source no code sets is marked
    "reserved" in its "set when" column, and only those are."""
    first, sec = section(md, "Limits, TTL and the failsafe")
    table = find_table(sec, ["source", "scope", "set when"], first, "limit-source table")
    problems, documented = [], []
    for line, cells in table.rows:
        src = one_code(cells, line, "source")
        documented.append(src)
        reserved = table.col(cells, "set when").lower().startswith("reserved")
        if src not in sources:
            problems.append("%s line %d: limit source `%s` is not in evse.limits.SOURCES"
                            % (MQTT_MD, line, src))
        elif reserved and src in emitted:
            problems.append("%s line %d: `%s` is documented as reserved, but the firmware sets "
                            "it (%s)" % (MQTT_MD, line, src, emitted[src]))
        elif not reserved and src not in emitted:
            problems.append("%s line %d: `%s` is documented as in use, but no firmware code "
                            "sets it: mark it 'reserved'" % (MQTT_MD, line, src))
    for src in sources:
        if src not in documented:
            problems.append("limit source `%s` (evse.limits.SOURCES) is missing from the "
                            "limit-source table of %s (line %d)" % (src, MQTT_MD, table.line))
    if [s for s in documented if s in sources] != [s for s in sources if s in documented]:
        problems.append("%s line %d: the limit-source table is not in the order of "
                        "evse.limits.SOURCES %r (the order breaks ties)"
                        % (MQTT_MD, table.line, sources))
    return problems


def test_limit_sources():
    problems = limit_problems(read(MQTT_MD), limit_sources_set())
    assert not problems, "\n".join(problems)


# -- 6. topics ---------------------------------------------------------------------------------


def _base_suffix(node):
    """`<...>base + "/x"` -> "x", else None."""
    if (isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add)
            and _name(node.left).lstrip("_") == "base" and isinstance(node.right, ast.Constant)
            and isinstance(node.right.value, str) and len(node.right.value) > 1
            and node.right.value.startswith("/")):
        return node.right.value[1:]
    return None


def topics_in_code():
    """(published, subscribed, mentioned): {suffix: "file:line"} under <base>/."""
    pub, sub, mentioned = {}, {}, {}
    for path in py_files(FIRMWARE):
        for node in ast.walk(ast.parse(open(path, encoding="utf-8").read(), path)):
            s = _base_suffix(node)
            if s is not None:
                mentioned.setdefault(s, where(path, node.lineno))
            if not isinstance(node, ast.Call) or not node.args:
                continue
            fn, arg = _name(node.func), node.args[0]
            literal = isinstance(arg, ast.Constant) and isinstance(arg.value, str)
            if fn in ("_pub", "_send") and literal:
                pub.setdefault(arg.value, where(path, node.lineno))  # self._send("status", ...)
            elif fn in ("publish", "_pub", "_send", "set_last_will") and _base_suffix(arg):
                pub.setdefault(_base_suffix(arg), where(path, node.lineno))
            elif fn == "subscribe" and _base_suffix(arg):
                sub.setdefault(_base_suffix(arg), where(path, node.lineno))
    return pub, sub, mentioned


def topic_problems(md, pub, sub):
    problems = []
    for title, marker, in_code in (("Station → broker", "not published yet", pub),
                                   ("Broker → station", "not subscribed yet", sub)):
        first, sec = section(md, title)
        table = find_table(sec, ["topic"], first, "topic table")
        live, planned = {}, {}
        for line, cells in table.rows:
            target = planned if marker in " ".join(cells).lower() else live
            for t in re.findall(r"<base>/([\w/]+)", cells[0]):
                target[t] = line
        for t, loc in sorted(in_code.items()):
            if t in planned:
                problems.append("%s line %d: `<base>/%s` is marked %r but the firmware uses it "
                                "(%s)" % (MQTT_MD, planned[t], t, marker, loc))
            elif t not in live:
                problems.append("topic `<base>/%s` (%s) is missing from the %r table of %s"
                                % (t, loc, title, MQTT_MD))
        for t, line in sorted(live.items()):
            if t not in in_code:
                problems.append("%s line %d: `<base>/%s` is documented in %r, but the firmware "
                                "does not use it: mark it %r" % (MQTT_MD, line, t, title, marker))
    return problems


def test_topics():
    pub, sub, mentioned = topics_in_code()
    assert {"status", "online"} <= set(pub) and "cmd" in sub, (
        "the topic scan no longer understands the firmware: published %r, subscribed %r"
        % (sorted(pub), sorted(sub)))
    problems = topic_problems(read(MQTT_MD), pub, sub)
    for t, loc in sorted(mentioned.items()):
        if t not in pub and t not in sub:
            problems.append("%s builds topic <base>/%s, which is neither published nor "
                            "subscribed as far as this test can see" % (loc, t))
    assert not problems, "\n".join(problems)


# -- 6b. diag fields ------------------------------------------------------------------------------


def diag_keys_in_code():
    """Keys of the dict literal a firmware function named diag() returns (evse/report.py)."""
    for path in py_files(FIRMWARE):
        for fn in ast.walk(ast.parse(open(path, encoding="utf-8").read(), path)):
            if isinstance(fn, ast.FunctionDef) and fn.name == "diag":
                for node in ast.walk(fn):
                    if isinstance(node, ast.Return) and isinstance(node.value, ast.Dict):
                        keys = [k.value for k in node.value.keys if isinstance(k, ast.Constant)]
                        if len(keys) >= 5:
                            return set(keys), where(path, node.lineno)
    raise AssertionError("no diag() returning a dict literal in the firmware")


def diag_problems(md, keys, modbus_keys):
    """The `diag` example reply and field table, and the diag.modbus table, name exactly
    the fields the firmware returns."""
    problems = []
    first, sec = section(md, "`diag`")
    example = [ln for ln in sec.splitlines() if '"data":{' in ln]
    if len(example) != 1:
        return ["%s: the `diag` section needs exactly one example reply line" % MQTT_MD]
    data = json.loads(example[0].split(" ", 1)[1])["data"]
    checks = [("the `diag` example reply", set(data), keys),
              ("the `diag` example's modbus object", set(data.get("modbus") or {}), modbus_keys)]
    table = find_table(sec, ["field", "meaning"], first, "diag field table")
    checks.append(("the `diag` field table (line %d)" % table.line,
                   {n for _, cells in table.rows for n in code_spans(cells[0])}, keys))
    first, sec = section(md, "Energy meter")
    table = find_table(sec, ["field", "meaning"], first, "diag.modbus table")
    checks.append(("the diag.modbus table (line %d)" % table.line,
                   {n for _, cells in table.rows for n in code_spans(cells[0])}, modbus_keys))
    for what, shown, want in checks:
        for k in sorted(want - shown):
            problems.append("%s: %s lacks the field `%s`" % (MQTT_MD, what, k))
        for k in sorted(shown - want):
            problems.append("%s: %s shows `%s`, which the firmware does not return"
                            % (MQTT_MD, what, k))
    return problems


def test_diag_fields():
    from evse.modbus import KINDS

    keys, _ = diag_keys_in_code()
    problems = diag_problems(read(MQTT_MD), keys, set(KINDS) | {"transactions", "exception_codes"})
    assert not problems, "\n".join(problems)


# -- 7. README commands -----------------------------------------------------------------------


def make_targets():
    return set(re.findall(r"^([A-Za-z0-9_.-]+)\s*:(?!=)", read("Makefile"), re.M))


def readme_code(md):
    """Every inline code span and every line of a fenced block, with its line number."""
    out, fence = [], False
    for n, line in enumerate(md.splitlines(), 1):
        if line.startswith("```"):
            fence = not fence
            continue
        if fence:
            out.append((n, line.strip(), True))
        else:
            out.extend((n, span, False) for span in code_spans(line))
    return out


def has_cli(tool):
    return re.search(r'^if __name__ == "__main__":', read("tools/" + tool), re.M) is not None


def _runs_tool(code, tool, fenced=False):
    """`python tools/x.py`, `tools/x.py --arg`, or a fenced line starting with tools/x.py."""
    t = "tools/" + re.escape(tool)
    return re.match(r"\S*python\S*\s+%s\b|%s\s+\S" % (t, t), code) is not None or (
        fenced and re.match(t + r"\b", code) is not None)


def readme_problems(md):
    problems = []
    targets = make_targets()
    for n, code, _ in readme_code(md):
        for target in re.findall(r"(?:^|;|&&)\s*make\s+([a-z][\w-]*)", code):
            if target not in targets:
                problems.append("%s line %d: `make %s` is not a Makefile target"
                                % (README, n, target))
    tools = sorted(f for f in os.listdir(os.path.join(ROOT, "tools")) if f.endswith(".py"))
    for n, code, fenced in readme_code(md):
        for tool in tools:
            if _runs_tool(code, tool, fenced) and not has_cli(tool):
                problems.append("%s line %d: tools/%s is presented as a command, but it is a "
                                "library (no __main__ block)" % (README, n, tool))
    table = None
    for t in tables(md):
        if t.header[:2] == ["command", "what it does"]:
            table = t
    if table is None:
        problems.append("%s: no 'Other commands' table (| command | what it does |)" % README)
    else:
        for line, cells in table.rows:
            code = (code_spans(cells[0]) or [""])[0]
            ok = code.startswith("make ") or any(_runs_tool(code, t) and has_cli(t) for t in tools)
            if not ok:
                problems.append("%s line %d: %r is neither a make target nor a tool with a CLI"
                                % (README, line, code))
    return problems


def readme_tools(md):
    """tools/*.py that README.md names (also as bare `x.py` in the layout)."""
    return [f for f in sorted(os.listdir(os.path.join(ROOT, "tools")))
            if f.endswith(".py") and re.search(r"(?<![\w/])(tools/)?%s\b" % re.escape(f), md)]


def test_readme_commands():
    problems = readme_problems(read(README))
    assert not problems, "\n".join(problems)


def venv_python():
    p = os.path.join(ROOT, ".venv", "bin", "python")
    return p if os.path.exists(p) else sys.executable


@pytest.mark.parametrize("tool", [t for t in readme_tools(read(README)) if has_cli(t)])
def test_readme_tool_help(tool):
    r = subprocess.run([venv_python(), os.path.join("tools", tool), "--help"], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, "tools/%s --help exited %d: %s" % (
        tool, r.returncode, r.stderr[-2000:])
    assert r.stdout.startswith("usage:"), "tools/%s --help prints no usage line: %r" % (
        tool, r.stdout[:200])


# -- 8. the product stands on its own ---------------------------------------------------------

# Pointers to documents outside this repository. Spelled in pieces so this file does not
# match itself.
OUTSIDE = re.compile(r"\.\./shared|shared/sp[e]c|standards[ -]dig[e]st|dig[e]st\s*§", re.I)
_NOT_PROJECT = (".git/", ".venv/", "lib/", "build/")


def project_files():
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                              "--exclude-standard"],
                             cwd=ROOT, capture_output=True, check=True).stdout.decode()
        names = [n for n in out.split("\0") if n]
    except (OSError, subprocess.CalledProcessError):
        names = [os.path.relpath(os.path.join(d, n), ROOT)
                 for d, _, ns in os.walk(ROOT) for n in ns]
    return sorted(n for n in set(names)
                  if not n.startswith(_NOT_PROJECT) and os.path.isfile(os.path.join(ROOT, n)))


def outside_references(files):
    hits = []
    for rel in files:
        with open(os.path.join(ROOT, rel), "rb") as f:
            text = f.read().decode("utf-8", "replace")
        for m in OUTSIDE.finditer(text):
            hits.append("%s:%d: %r" % (rel, text.count("\n", 0, m.start()) + 1, m.group(0)))
    return hits


def test_no_pointers_outside_the_project():
    hits = outside_references(project_files())
    assert not hits, ("these files point to documents outside the project (use docs/mqtt.md, "
                      "docs/simulator.md, docs/standards.md):\n" + "\n".join(hits))
