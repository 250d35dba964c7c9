"""Listener addresses and octal modes as policyd.toml writes them, parsed into values.

Import-light like :mod:`policyd.settings`, which uses them for ``[server]`` and ``[control]``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

DEFAULT_PORT: Final = 7672  # the default socketmap listener: inet:127.0.0.1:7672
MAX_MODE: Final = 0o777  # permission bits only: no setuid, setgid or sticky bit
MAX_TCP_PORT: Final = 65535


class ListenerKind(enum.Enum):
    UNIX = "unix"
    INET = "inet"


@dataclass(frozen=True, slots=True)
class Listener:
    """``unix:/path`` or ``inet:host:port`` (``inet:[::1]:8461`` for IPv6), parsed."""

    kind: ListenerKind
    path: str = ""  # unix
    host: str = ""  # inet, without brackets
    port: int = 0  # inet

    def __post_init__(self) -> None:
        if self.kind is ListenerKind.UNIX and not self.path:
            raise ValueError("a unix listener needs a path")
        if self.kind is ListenerKind.INET and not (self.host and 0 < self.port <= MAX_TCP_PORT):
            raise ValueError("an inet listener needs a host and a port 1-65535")

    def __str__(self) -> str:
        if self.kind is ListenerKind.UNIX:
            return f"unix:{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"inet:{host}:{self.port}"


def parse_listener(spec: str) -> Listener:
    kind, sep, rest = spec.partition(":")
    if not sep or not rest:
        raise ValueError(f"{spec!r}: expected unix:/path or inet:host:port")
    if kind == ListenerKind.UNIX.value:
        return Listener(ListenerKind.UNIX, path=rest)
    if kind == ListenerKind.INET.value:
        host, sep, port_text = rest.rpartition(":")
        digits = port_text.isascii() and port_text.isdigit()
        if not sep or not digits or not 0 < int(port_text) <= MAX_TCP_PORT:
            raise ValueError(f"{spec!r}: expected inet:host:port")
        host = host.removeprefix("[").removesuffix("]")
        if not host:
            raise ValueError(f"{spec!r}: missing host")
        return Listener(ListenerKind.INET, host=host, port=int(port_text))
    raise ValueError(f"{spec!r}: unknown listener type {kind!r}")


class OctalMode:
    """Marks an int setting written as an octal string: ``Annotated[int, OctalMode]``."""


def parse_mode(text: str) -> int:
    """An octal permission string such as ``"0660"``."""
    try:
        mode = int(text, 8)
    except ValueError:
        raise ValueError(f"{text!r} is not an octal mode") from None
    if not 0 <= mode <= MAX_MODE:
        raise ValueError("mode out of range")
    return mode
