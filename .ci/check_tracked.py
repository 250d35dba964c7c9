"""Fail when git tracks anything built: a virtualenv, build output, caches, or a large file.

Run by `make test` before anything else, so a committed .venv (whose scripts carry one
machine's absolute path and break every other clone) is caught with a clear message.
Only the standard library: this runs before any virtualenv exists.
"""

from __future__ import annotations

import os
import subprocess
import sys

MAX_BYTES = 1024 * 1024  # 1 MiB: source, docs and test data stay far below it
BUILT_DIRS = frozenset(
    {
        ".venv",
        "venv",
        "__pycache__",
        "build",
        "dist",
        ".eggs",
        ".mypy_cache",
        ".ruff_cache",
        ".pytest_cache",
        ".hypothesis",
        "peer-venv",
    }
)
BUILT_SUFFIXES = (".pyc", ".pyo", ".so", ".o", ".whl", ".egg-info")
BUILT_NAMES = frozenset({"pyvenv.cfg"})


def why_built(path: str) -> str | None:
    parts = path.split("/")
    for part in parts[:-1]:
        if part in BUILT_DIRS or part.endswith(".egg-info"):
            return f"inside {part}/"
    name = parts[-1]
    if name in BUILT_NAMES or name.endswith(BUILT_SUFFIXES):
        return "built file"
    try:
        size = os.lstat(path).st_size
    except FileNotFoundError:
        return None  # deleted in the work tree; git status shows it
    if size > MAX_BYTES:
        return f"{size} bytes, over 1 MiB"
    return None


def main() -> int:
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z"], capture_output=True, check=True
        ).stdout.decode()
    except (OSError, subprocess.CalledProcessError):
        print("check_tracked: not a git checkout; nothing to check", file=sys.stderr)
        return 0
    bad = [(p, why) for p in out.split("\0") if p and (why := why_built(p)) is not None]
    if not bad:
        return 0
    print(f"make test: git tracks {len(bad)} built or oversized file(s):", file=sys.stderr)
    for path, why in bad[:20]:
        print(f"  {path}  ({why})", file=sys.stderr)
    if len(bad) > 20:
        print(f"  ... and {len(bad) - 20} more", file=sys.stderr)
    print(
        "Remove them with `git rm -r --cached PATH` and list them in .gitignore.", file=sys.stderr
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
