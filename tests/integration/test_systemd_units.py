"""The systemd units pass ``systemd-analyze verify``, and the check can fail.

The units name /usr/bin/policyd and /usr/bin/policyd-milter, which a test machine does not
have; verify rejects a missing executable, so copies are checked with those two paths
pointed at /bin/true. Everything else verify says about a unit (an unknown directive, a bad
value, a missing section) fails the test; a deliberately broken copy proves it would.
"""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "systemd"
STAND_IN = "/bin/true"  # exists everywhere, accepts any arguments
OUR_BINARIES = re.compile(r"/usr/bin/(policyd-milter|policyd)\b")

pytestmark = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed (systemd)"
)


def verify(paths: list[Path]) -> list[str]:
    """What ``systemd-analyze verify`` says about the units, one finding per line."""
    proc = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    lines = (proc.stdout + proc.stderr).splitlines()
    return [line for line in lines if line.strip()]


def stage(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(OUR_BINARIES.sub(STAND_IN, text))
    return path


def staged_units(tmp_path: Path) -> list[Path]:
    return [stage(tmp_path, u.name, u.read_text()) for u in sorted(UNITS.glob("*.service"))]


def test_the_units_we_ship() -> None:
    names = {u.name for u in UNITS.glob("*.service")}
    assert {"policyd.service", "policyd-milter.service"} <= names


def test_units_verify_clean(tmp_path: Path) -> None:
    units = staged_units(tmp_path)
    for unit in units:
        assert "/usr/bin/policyd" not in unit.read_text()
    assert verify(units) == []


def test_verify_catches_a_real_unit_error(tmp_path: Path) -> None:
    good = (UNITS / "policyd-milter.service").read_text()
    assert "Restart=on-failure\n" in good and "ProtectSystem=strict\n" in good
    broken = good.replace("Restart=on-failure\n", "Restart=on-failure\nFrobnicate=yes\n")
    broken = broken.replace("ProtectSystem=strict\n", "ProtectSystem=strictly\n")
    findings = verify([stage(tmp_path, "broken.service", broken)])
    text = "\n".join(findings)
    assert "Frobnicate" in text
    assert "strictly" in text


def test_a_missing_executable_would_be_reported(tmp_path: Path) -> None:
    # The rewrite above hides exactly this finding, and only it.
    unit = (
        (UNITS / "policyd-milter.service")
        .read_text()
        .replace("/usr/bin/policyd-milter", "/nonexistent/policyd-milter")
    )
    path = tmp_path / "m.service"
    path.write_text(unit)
    findings = verify([path])
    assert any("/nonexistent/policyd-milter" in f for f in findings)


def service_section(name: str) -> dict[str, str]:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string((UNITS / name).read_text())
    return dict(parser["Service"])


def test_the_milter_has_a_user_of_its_own_in_the_daemons_group() -> None:
    """Security review L7: the milter's uid is not the daemon's (which would grant READ
    unnamed, the store's files and ptrace); the daemon's group admits it to the control
    socket and nothing more: the state directory has no group or other access."""
    daemon = service_section("policyd.service")
    milter = service_section("policyd-milter.service")
    assert milter["User"] == "policyd-milter" != daemon["User"]
    assert milter["Group"] != daemon["Group"]
    assert daemon["Group"] in milter["SupplementaryGroups"].split()
    assert int(daemon["StateDirectoryMode"], 8) & 0o077 == 0
    assert "StateDirectory" not in milter


def test_the_readme_creates_the_milter_user_as_its_unit_names_it() -> None:
    daemon = service_section("policyd.service")
    milter = service_section("policyd-milter.service")
    readme = (ROOT / "README.md").read_text()
    user, group = milter["User"], daemon["Group"]
    assert f"adduser --system --group --no-create-home {user}\n" in readme
    assert f"adduser {user} {group} " in readme
    assert f'read_group = "{group}"' in readme


def named_calls(entry: str) -> set[str]:
    """The system calls a SystemCallFilter= entry names: one call, or a @group expanded
    (groups name groups) as this systemd defines it."""
    if not entry.startswith("@"):
        return {entry}
    shown = subprocess.run(
        ["systemd-analyze", "syscall-filter", "--no-pager", entry],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    calls: set[str] = set()
    for line in shown.splitlines()[1:]:  # the first line is the group's own name
        word = line.strip()
        if word and not word.startswith("#"):
            calls |= named_calls(word)
    return calls


def test_the_daemons_filter_lets_it_ask_for_its_cpu_slice() -> None:
    """policyd asks for [server] cpu_slice with sched_getattr and sched_setattr
    (policyd.adapters.cpu_slice): its unit's allow list must hold both."""
    value = service_section("policyd.service")["SystemCallFilter"]
    assert not value.startswith("~"), value  # an allow list, as shipped
    allowed = set().union(*(named_calls(entry) for entry in value.split()))
    assert {"sched_getattr", "sched_setattr"} <= allowed
    assert "sched_setattr" not in named_calls("@basic-io")  # the check can fail
