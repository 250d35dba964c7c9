"""redis-py is an optional dependency (the `redis` extra): a SQLite installation, as the
README installs it, must start without it. The install test caught the daemon importing it
unconditionally; this keeps every entry point honest in the unit suite."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SHIPPED = Path(__file__).resolve().parents[2] / "etc" / "policyd.toml"
ENTRY_POINTS = ["policyd.cli.daemon", "policyd.cli.policyctl", "policyd.cli.milter"]


def without_redis(*lines: str) -> subprocess.CompletedProcess[str]:
    """``lines`` run by a fresh interpreter in which any import of redis-py raises
    ImportError."""
    code = "\n".join(["import sys", "sys.modules['redis'] = None", *lines]) + "\n"
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.parametrize("module", ENTRY_POINTS)
def test_entry_point_imports_without_redis(module: str) -> None:
    res = without_redis(f"import {module}")
    assert res.returncode == 0, res.stderr


def test_sqlite_daemon_starts_its_check_without_redis() -> None:
    res = without_redis(
        "from policyd.cli.daemon import main",
        f"sys.exit(main(['--check-config', '--config', {str(SHIPPED)!r}]))",
    )
    assert res.returncode == 0, res.stderr
