"""The guard `make test` runs first: nothing built or oversized may be tracked."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

GUARD = Path(__file__).resolve().parents[2] / ".ci" / "check_tracked.py"


def run_guard(repo: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(GUARD)], cwd=repo, capture_output=True, text=True, check=False
    )


def git(repo: Path, *args: str) -> None:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, env=env)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    git(tmp_path, "init", "-q")
    (tmp_path / "policyd").mkdir()
    (tmp_path / "policyd" / "core.py").write_text("x = 1\n")
    git(tmp_path, "add", ".")
    return tmp_path


def test_clean_tree_passes(repo: Path) -> None:
    assert run_guard(repo).returncode == 0


@pytest.mark.parametrize(
    "path",
    [
        ".venv/bin/python3",
        "venv/pyvenv.cfg",
        "policyd/__pycache__/core.cpython-311.pyc",
        "policyd.egg-info/PKG-INFO",
        "dist/policyd-0.1.tar.gz",
        "build/lib/x.py",
        "lib/_x.so",
    ],
)
def test_built_files_fail_with_their_path(repo: Path, path: str) -> None:
    target = repo / path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("built\n")
    git(repo, "add", "-f", path)
    res = run_guard(repo)
    assert res.returncode == 1
    assert path in res.stderr
    assert "git rm -r --cached" in res.stderr


def test_file_over_one_mib_fails(repo: Path) -> None:
    (repo / "data.bin").write_bytes(b"\0" * (1024 * 1024 + 1))
    (repo / "ok.bin").write_bytes(b"\0" * (1024 * 1024))
    git(repo, "add", ".")
    res = run_guard(repo)
    assert res.returncode == 1
    assert "data.bin" in res.stderr
    assert "ok.bin" not in res.stderr


def test_this_checkout_tracks_nothing_built() -> None:
    assert run_guard(GUARD.parents[1]).returncode == 0
