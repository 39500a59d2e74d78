"""Configuration schema, validation and storage on flash."""

import json
import os

import pytest

from evse.config import SCHEMA, Config, check
from evse.events import Events
from evse.store import Store


def make(tmp_path, overrides=None):
    ev = Events()
    return Config(Store(str(tmp_path)), ev, overrides), ev


def test_defaults_when_missing(tmp_path):
    cfg, ev = make(tmp_path)
    assert cfg["max_current_a"] == 32.0 and cfg["auth_mode"] == "free"
    assert ev.pop()[1] == "ConfigDefaults"


def test_corrupt_file_gives_defaults_event_and_keeps_bad_copy(tmp_path):
    (tmp_path / "config.json").write_text('{"max_current_a": 16, ')
    cfg, ev = make(tmp_path)
    assert cfg["max_current_a"] == 32.0
    e = ev.pop()
    assert e[0] == "warn" and e[1] == "ConfigCorrupt"
    assert (tmp_path / "config.json.bad").read_text().startswith('{"max')


def test_not_an_object_is_corrupt(tmp_path):
    (tmp_path / "config.json").write_text("[1, 2]")
    cfg, ev = make(tmp_path)
    assert ev.pop()[1] == "ConfigCorrupt"


def test_one_bad_stored_value_keeps_the_others(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"max_current_a": 999, "phases": 1}))
    cfg, ev = make(tmp_path)
    assert cfg["max_current_a"] == 32.0 and cfg["phases"] == 1
    assert ev.pop()[1] == "ConfigValue"


def test_update_is_all_or_nothing_and_persisted(tmp_path):
    cfg, _ = make(tmp_path)
    with pytest.raises(ValueError):
        cfg.update({"max_current_a": 16, "phases": 7})
    assert cfg["max_current_a"] == 32.0
    assert not (tmp_path / "config.json").exists()
    cfg.update({"max_current_a": 16, "phases": 1})
    again, _ = make(tmp_path)
    assert again["max_current_a"] == 16.0 and again["phases"] == 1
    assert not (tmp_path / "config.json.tmp").exists()  # atomic: temp renamed away


def test_first_boot_overrides_only(tmp_path):
    cfg, _ = make(tmp_path, {"max_current_a": 20})
    assert cfg["max_current_a"] == 20.0
    cfg2, _ = make(tmp_path, {"max_current_a": 10})
    assert cfg2["max_current_a"] == 20.0  # flash wins after the first boot


@pytest.mark.parametrize(
    "key,value,code",
    [
        ("nope", 1, "bad_arg"),
        ("max_current_a", "16", "bad_arg"),
        ("max_current_a", True, "bad_arg"),
        ("max_current_a", 5.9, "out_of_range"),
        ("max_current_a", 81, "out_of_range"),
        ("phases", 2.5, "bad_arg"),
        ("phases", 0, "out_of_range"),
        ("ventilation", 1, "bad_arg"),
        ("auth_mode", "rfid_maybe", "out_of_range"),
        ("prefix", "", "out_of_range"),
        ("prefix", 5, "bad_arg"),
    ],
)
def test_check_rejects(key, value, code):
    with pytest.raises(ValueError) as e:
        check(key, value)
    assert str(e.value).startswith(code + ":")


def test_check_coerces_int_to_float():
    assert check("max_current_a", 16) == 16.0 and isinstance(check("max_current_a", 16), float)


def test_secrets_are_masked(tmp_path):
    cfg, _ = make(tmp_path)
    cfg.update({"mqtt.password": "hunter2", "mqtt.user": "u"})
    pub = cfg.public()
    assert pub["mqtt.password"] == "***" and pub["mqtt.user"] == "u"
    assert "hunter2" not in json.dumps(pub)


def test_schema_defaults_pass_their_own_checks():
    for key, _typ, default, *_ in SCHEMA:
        assert check(key, default) == default


def test_store_write_is_atomic_rename(tmp_path, monkeypatch):
    st = Store(str(tmp_path))
    st.write_json("x.json", {"a": 1})
    renames = []
    real = os.rename
    monkeypatch.setattr(os, "rename", lambda a, b: (renames.append((a, b)), real(a, b)))
    st.write_json("x.json", {"a": 2})
    assert renames == [(str(tmp_path / "x.json.tmp"), str(tmp_path / "x.json"))]
    assert st.read_json("x.json") == {"a": 2}


def test_integral_floats_are_integers_others_are_not():
    assert check("phases", 2.0) == 2 and isinstance(check("phases", 2.0), int)
    for bad in (2.5, float("nan"), "2", True):
        with pytest.raises(ValueError):
            check("phases", bad)


def test_pinned_values_win_are_shown_and_cannot_be_set(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"mqtt.port": 8883, "phases": 1}))
    cfg = Config(Store(str(tmp_path)), Events(), None, {"mqtt.port": 1999})
    assert cfg["mqtt.port"] == 1999 and cfg.public()["mqtt.port"] == 1999
    with pytest.raises(ValueError) as e:
        cfg.update({"mqtt.port": 1884})
    assert str(e.value).startswith("not_allowed")
    cfg.update({"phases": 3, "mqtt.port": 1999})  # the pinned value itself is fine
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["phases"] == 3 and saved["mqtt.port"] == 8883  # the file keeps its own


def test_meter_custom_is_checked_when_set(tmp_path):
    cfg, _ = make(tmp_path)
    bad = {"fc": 4, "regs": {"e": [0, "u32", [1, 1]]}, "baud": "fast"}
    with pytest.raises(ValueError) as e:
        cfg.update({"meter.custom": bad, "meter.profile": "custom"})
    assert str(e.value).startswith("out_of_range") and cfg["meter.profile"] == "sdm630"
    good = {"fc": 4, "regs": {"e": [0, "u32", [1, 1]]}}
    cfg.update({"meter.custom": good, "meter.profile": "custom"})
    assert cfg["meter.custom"] == good
