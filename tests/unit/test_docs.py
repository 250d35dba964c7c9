"""The documentation keeps up with the code.

* Every man page renders without a warning (``groff -ww -z -man``, and ``man -l``).
* Every key the configuration dataclasses define is in etc/policyd.toml and in
  policyd.toml(5), and nothing else is: the keys are found by introspecting the
  dataclasses, so a new option without documentation fails here.
* etc/policyd.toml loads as shipped, and with every setting uncommented it still gives
  exactly the defaults: each value it shows is the real default.

etc/policyd.toml's convention: a setting is ``#key = value`` or ``#[table]`` (no space
after ``#``); prose comments are ``# text``.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import tomllib
import typing
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
MAN_PAGES = sorted((ROOT / "man").glob("*.[1-8]"))
EXAMPLE = ROOT / "etc" / "policyd.toml"
MAN5 = ROOT / "man" / "policyd.toml.5"
_SETTING_LINE = re.compile(r"^#(?=\[|[A-Za-z_][A-Za-z0-9_]* = )", re.MULTILINE)
PROFILES = "profiles.NAME"


def test_the_pages_we_ship() -> None:
    names = {p.name for p in MAN_PAGES}
    assert {"policyd.8", "policyd.toml.5", "policyd-milter.8", "policyctl.8"} <= names


@pytest.mark.skipif(shutil.which("groff") is None, reason="groff not installed (groff-base)")
@pytest.mark.parametrize("page", MAN_PAGES, ids=lambda p: p.name)
def test_man_page_renders_clean_with_groff(page: Path) -> None:
    proc = subprocess.run(
        ["groff", "-ww", "-z", "-man", str(page)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0
    assert proc.stderr == ""


@pytest.mark.skipif(shutil.which("man") is None, reason="man not installed (man-db)")
@pytest.mark.parametrize("page", MAN_PAGES, ids=lambda p: p.name)
def test_man_page_renders_clean_with_man(page: Path) -> None:
    env = {**os.environ, "MANPAGER": "cat", "PAGER": "cat", "MANWIDTH": "80", "LC_ALL": "C.UTF-8"}
    proc = subprocess.run(
        ["man", "--warnings", "-l", str(page)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )
    assert proc.returncode == 0
    assert proc.stderr == ""
    assert page.name.split(".")[0].upper() in proc.stdout.upper()


# -- the keys the code defines ---------------------------------------------------------


def _config() -> ModuleType:
    module: ModuleType = pytest.importorskip(
        "policyd.config",
        reason="policyd.config does not import yet (a settings module it needs is missing)",
    )
    return module


def _is_dataclass_type(hint: Any) -> bool:
    return isinstance(hint, type) and dataclasses.is_dataclass(hint)


def _keys_of(cls: type[Any]) -> set[str]:
    """The file keys of one table: the dataclass's fields (every table is flat)."""
    return {f.name for f in dataclasses.fields(cls)}


def expected_keys() -> dict[str, set[str]]:
    """Table -> keys, from policyd.config.Config (the [milter] table included)."""
    cls = _config().Config
    hints = typing.get_type_hints(cls)
    tables: dict[str, set[str]] = {}
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if f.name == "profiles":
            (profile,) = {a for a in typing.get_args(hint) if a is not Ellipsis}
            tables[PROFILES] = _keys_of(profile) - {"name"}
        elif _is_dataclass_type(hint):
            tables[f.name] = _keys_of(hint)
    return tables


def uncommented() -> dict[str, Any]:
    return tomllib.loads(_SETTING_LINE.sub("", EXAMPLE.read_text()))


def test_example_loads_as_shipped() -> None:
    config = _config()
    assert config.load(EXAMPLE) == config.Config(path=str(EXAMPLE))


def test_example_lists_every_key() -> None:
    expected = expected_keys()
    profile_keys = expected.pop(PROFILES)
    data = uncommented()
    profiles = data.pop("profiles")
    assert {name: set(table) for name, table in data.items()} == expected
    builtin = [p.name for p in _config().Config().profiles]
    assert sorted(profiles) == sorted(builtin)
    for name, body in profiles.items():
        assert set(body) == profile_keys, f"[profiles.{name}]"


def test_example_values_are_the_defaults() -> None:
    config = _config()
    assert config.parse(uncommented(), "example") == config.Config(path="example")


def _man_items() -> dict[str, dict[str, str]]:
    """policyd.toml(5): ``.SS [table]`` -> key (``.TP`` then ``.B key``) -> its text."""
    tables: dict[str, dict[str, str]] = {}
    text = MAN5.read_text()
    for table, body in re.findall(r"^\.SS \[(.+?)\]\n(.*?)(?=^\.S[SH] )", text, re.M | re.S):
        items = tables.setdefault(table, {})
        for item in re.split(r"(?:^|\n)\.TP\n", body)[1:]:
            first, _, rest = item.partition("\n")
            assert first.startswith(".B "), f"[{table}]: {first!r}"
            items[first[3:].strip()] = rest
    return tables


def test_man_page_documents_every_key() -> None:
    assert {t: set(items) for t, items in _man_items().items()} == expected_keys()


def test_man_page_defaults_are_the_real_defaults() -> None:
    """Each key's ``Default: .BR value .`` in policyd.toml(5) equals the example's value,
    which test_example_values_are_the_defaults ties to the code."""
    data = uncommented()
    for table, items in _man_items().items():
        shown = data["profiles"]["postfix"] if table == PROFILES else data[table]
        for key, text in items.items():
            found = re.search(r"^Default:\n\.BR (.+) \.$", text, re.M)
            assert found is not None, f"[{table}] {key}: no Default"
            value = found.group(1).replace("\\(dq", '"').replace("\\-", "-")
            assert tomllib.loads(f"v = {value}")["v"] == shown[key], f"[{table}] {key}"
