"""A Postfix configuration directory of the suite's own for the Postfix client programs the
tests and benchmarks run (``postmap``, ``posttls-finger``).

Debian's postfix package installed with "No configuration" leaves the system without a main.cf,
and a machine that has one carries someone else's settings: neither may decide a test.
Every Postfix command the suite runs names this directory (``postmap -c DIR``, or
``MAIL_CONFIG`` for programs whose ``-c`` means something else).
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import tempfile
from pathlib import Path

MAIN_CF = """\
# Written by the policyd test suite for Postfix's client programs; not a mail system.
compatibility_level = 3.6
smtp_tls_loglevel = 1
"""


@functools.cache
def client_config_dir() -> Path:
    """The directory (made once per process, removed at exit) holding a minimal main.cf."""
    directory = Path(tempfile.mkdtemp(prefix="policyd-postfix-client-"))
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    (directory / "main.cf").write_text(MAIN_CF)
    directory.chmod(0o755)
    return directory


def postmap_cmd(*args: str) -> list[str]:
    """``postmap -c <suite's directory> ARGS...``."""
    return ["postmap", "-c", str(client_config_dir()), *args]


def client_env() -> dict[str, str]:
    """The environment with ``MAIL_CONFIG`` set to the suite's directory."""
    return {**os.environ, "MAIL_CONFIG": str(client_config_dir())}
