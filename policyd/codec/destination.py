"""Lookup keys as Postfix sends them, normalised into a :class:`Destination`.

Forms (postconf(5) smtp_tls_policy_maps): ``example.com``, ``EXAMPLE.COM.``,
``[mx.example.com]``, ``[mx.example.com]:587``, ``example.com:587``, and the parent-domain
form ``.example.com``. Internationalised names are turned into A-labels (IDNA 2008, UTS 46).
"""

from __future__ import annotations

import ipaddress
import re
from typing import Final

import idna

from policyd.core.evidence import Destination

MAX_NAME: Final = 253  # RFC 1035 2.3.4, without the trailing dot
_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")


class KeyError_(ValueError):
    """A key that is not a destination Postfix could send."""


def _a_label_name(name: str) -> str:
    name = name.rstrip(".")
    if not name:
        raise KeyError_("empty domain")
    if not name.isascii():
        try:
            name = idna.encode(name, uts46=True).decode("ascii")
        except idna.IDNAError as exc:
            raise KeyError_(f"invalid internationalised name: {exc}") from exc
    name = name.lower()
    if len(name) > MAX_NAME:
        raise KeyError_("domain name too long")
    for label in name.split("."):
        if not _LABEL.match(label):
            raise KeyError_(f"invalid label {label[:63]!r}")
    return name


def _port(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or len(text) > 5 or text.startswith("0"):
        raise KeyError_(f"invalid port {text[:8]!r}")
    port = int(text)
    if not 0 < port < 65536:
        raise KeyError_(f"port {port} out of range")
    return port


def parse_key(key: str) -> Destination:
    key = key.strip()
    if not key or any(c.isspace() for c in key):
        raise KeyError_("empty key or key with white space")
    if key.startswith("["):
        host, sep, rest = key[1:].partition("]")
        if not sep:
            raise KeyError_("unterminated '['")
        port = 25
        if rest:
            if not rest.startswith(":"):
                raise KeyError_("garbage after ']'")
            port = _port(rest[1:])
        try:
            # RFC 5321 4.1.3 spells the tag "IPv6:"; compare it case-insensitively.
            literal = ipaddress.ip_address(host[5:] if host[:5].lower() == "ipv6:" else host)
        except ValueError:
            return Destination(_a_label_name(host), port, bracketed=True)
        return Destination(literal.compressed, port, bracketed=True)
    if key.startswith("."):
        return Destination(_a_label_name(key[1:]), parent_form=True)
    name, sep, port_text = key.rpartition(":")
    if sep:
        return Destination(_a_label_name(name), _port(port_text))
    return Destination(_a_label_name(key))
