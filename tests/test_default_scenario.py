"""scenarios/default.toml spells out the built-in defaults: every field it holds equals the default
(``scenarios.config.DEFAULTS``), and every default is in it, so the file is a complete, true list of
what `sudo make run-scenario` runs without a scenario."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from scenarios import config

DEFAULT_FILE = Path(__file__).resolve().parent.parent / "scenarios" / "default.toml"


def _flatten(table: dict, prefix: str = "") -> dict[str, object]:
    """{"links.access.delay_ms": 2.0, ...}: one entry per field, tables descended into."""
    fields = {}
    for key, value in table.items():
        if isinstance(value, dict):
            fields.update(_flatten(value, f"{prefix}{key}."))
        else:
            fields[f"{prefix}{key}"] = value
    return fields


def _same(value: object, default: object) -> bool:
    """Equal as TOML states it: 0 and 0.0 are the same number, but a bool is not a number."""
    if isinstance(value, bool) or isinstance(default, bool):
        return type(value) is type(default) and value == default
    if isinstance(value, list) and isinstance(default, list):
        return len(value) == len(default) and all(_same(a, b) for a, b in zip(value, default))
    return value == default


FILE = _flatten(tomllib.loads(DEFAULT_FILE.read_text()))
DEFAULTS = _flatten(config.DEFAULTS)


@pytest.mark.parametrize("field", sorted(FILE))
def test_every_field_of_the_file_is_the_default(field):
    assert field in DEFAULTS, f"scenarios/default.toml: {field} is not a scenario field"
    assert _same(FILE[field], DEFAULTS[field]), \
        f"scenarios/default.toml: {field} = {FILE[field]!r}, the built-in default is {DEFAULTS[field]!r}"


def test_every_default_is_in_the_file():
    missing = sorted(set(DEFAULTS) - set(FILE))
    assert not missing, f"scenarios/default.toml lacks {', '.join(missing)}"


def test_the_file_loads_as_the_defaults():
    from_file, built_in = config.load(DEFAULT_FILE), config.load(None)
    assert from_file.source == str(DEFAULT_FILE)
    assert {**from_file.parameters(), "source": None} == {**built_in.parameters(), "source": None}
