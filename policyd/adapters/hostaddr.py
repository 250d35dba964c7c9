"""Is a resolver address on this host? policyd trusts the AD bit, which only means
something when the validating resolver is local (RFC 6698 4.1; RFC 7672 2.1.1): an
attacker on the path to a remote resolver can set it on forged answers."""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path
from typing import Final

RESOLV_CONF: Final = "/etc/resolv.conf"  # where policyd's resolver looks when [dns] is empty


def is_local_address(text: str) -> bool:
    """True for loopback addresses and addresses assigned to this host (bindable)."""
    try:
        addr = ipaddress.ip_address(text.partition("%")[0])
    except ValueError:
        return False  # a name or DoH URL: not a local address
    if addr.is_loopback:
        return True
    family = socket.AF_INET6 if addr.version == 6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.bind((text, 0))  # only an address of this host can be bound
    except OSError:
        return False
    return True


def resolv_conf_nameservers(path: str = RESOLV_CONF) -> list[str]:
    """The ``nameserver`` lines of resolv.conf(5); none when it cannot be read."""
    try:
        lines = Path(path).read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return []
    return [ln.split()[1] for ln in lines if ln.startswith("nameserver") and len(ln.split()) > 1]


def remote_nameservers(nameservers: tuple[str, ...]) -> list[str]:
    """The configured nameservers that are not on this host."""
    return [ns for ns in nameservers if not is_local_address(ns)]
