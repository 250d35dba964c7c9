"""The name a STARTTLS probe announces in EHLO when ``[probe] helo_name`` is empty.

Postfix's ``myhostname`` (``postconf -h myhostname``): the name this host's mail already
goes out under; else this host's FQDN, which may be an internal name (security review L2).
Read once, at start.
"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Sequence
from typing import Final

# Postfix's own name for itself, read with postconf(1) when [probe] helo_name is empty.
POSTCONF_MYHOSTNAME: Final = ("postconf", "-h", "myhostname")
POSTCONF_TIMEOUT: Final = 5.0  # seconds; postconf answers in milliseconds


def default_helo_name(postconf: Sequence[str] = POSTCONF_MYHOSTNAME) -> str:
    """The name EHLO announces when ``[probe] helo_name`` is empty, read once at start:
    Postfix's ``myhostname`` (``postconf -h myhostname``), the name this host's mail
    already goes out under, else this host's FQDN (RFC 5321 4.1.4: the client's primary
    host name), which may be an internal name (security review L2). Blocking: at start."""
    try:
        done = subprocess.run(
            postconf, capture_output=True, text=True, timeout=POSTCONF_TIMEOUT, check=False
        )
        name = done.stdout.strip() if done.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError, UnicodeDecodeError):
        name = ""
    if not _helo_ok(name):
        name = socket.getfqdn()
    return name if _helo_ok(name) else "localhost"


def _helo_ok(name: str) -> bool:
    return bool(name) and name.isascii() and name.isprintable() and " " not in name
