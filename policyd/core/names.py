"""Domain names as one value type: :class:`DomainName`, and the limits that go with it.

A :class:`DomainName` is the one spelling policyd compares, caches and sends: A-labels
(IDNA 2008 with UTS 46 mapping for names that arrive as U-labels, RFC 5890), lower case,
without the trailing dot of the root. Labels are 1-63 octets of letters, digits, hyphens
and underscores, neither starting nor ending with a hyphen (RFC 1035 2.3.4 for the
lengths; the underscore for names such as ``_25._tcp.mx.example``, RFC 8552), and the
name is at most :data:`MAX_NAME` octets. Anything else raises :class:`DomainNameError`.

At run time it is a plain ``str`` (a ``typing.NewType``), so dictionaries, logs, the
codecs and C libraries (uvloop's TLS, cryptography) take it unchanged and it costs no
memory beyond its text; :func:`domain_name` is the one way to make one.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Final, NewType, cast

import idna

# Octets of a name in text form without the trailing dot: 255 in wire form (RFC 1035
# 2.3.4) less the length octet of the first label and the root's zero octet.
MAX_NAME: Final = 253
MAX_LABEL: Final = 63  # octets per label (RFC 1035 2.3.4)
# A name already in normal form: the common case, checked in one match.
_NORMAL: Final = re.compile(
    r"(?!-)[a-z0-9_-]{1,63}(?<!-)(?:\.(?!-)[a-z0-9_-]{1,63}(?<!-))*", re.ASCII
)
_is_normal: Final = _NORMAL.fullmatch
# RFC 952 / RFC 1123 2.1 host-name labels (letters, digits, hyphens): what may appear in a
# URL's host or a certificate's dNSName.
_LDH_LABEL: Final = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?", re.ASCII)
_WILDCARD: Final = "*."  # RFC 8461 4.1: stands for exactly one left-most label


class DomainNameError(ValueError):
    """Text that is not a domain name policyd can use."""


# A validated, normalised domain name (see the module doc). Plain ``str`` at run time, so
# it costs nothing beyond the text (a str subclass adds 48 bytes to every name, and
# copies where a str would be shared); mypy tells it from other text. Made only by
# :func:`domain_name`.
DomainName = NewType("DomainName", str)


def domain_name(text: str) -> DomainName:
    """``text`` normalised (case, trailing dots, U-labels to A-labels) and validated, or
    :class:`DomainNameError`. The caller's own string when it is already normal."""
    if len(text) <= MAX_NAME and _is_normal(text):
        return cast(DomainName, text)
    return DomainName(_normalise(text))


def is_hostname(name: DomainName) -> bool:
    """Every label is a host-name label (letters, digits, inner hyphens: RFC 1123 2.1), as
    a URL host or a certificate name needs; no underscores."""
    return all(_LDH_LABEL.fullmatch(label) for label in name.split("."))


def matches_sts_pattern(name: DomainName, pattern: str) -> bool:
    """RFC 8461 4.1: ``pattern`` (any case, trailing dot or not) is ``name``, or ``*.``
    and its parent: the wildcard stands for exactly one left-most label."""
    return sts_pattern_matches(fold(pattern), name)


def sts_pattern_matches(pattern: str, host: str) -> bool:
    """RFC 8461 4.1 on text already in normal form (:func:`fold`): exact match, or
    ``*.`` standing for exactly one left-most label of ``host``."""
    if pattern.startswith(_WILDCARD):
        head, _, rest = host.partition(".")
        return bool(head) and rest == pattern[len(_WILDCARD) :]
    return host == pattern


def fold(text: str) -> str:
    """Text that names a host, or an MTA-STS mx pattern (RFC 8461 3.2), as names are
    compared without validating it: lower case, without a trailing dot. The caller's own
    string when it is already so (the usual case)."""
    normal = text.lower().rstrip(".")
    return text if normal == text else normal


def _normalise(text: str) -> str:
    name = text.rstrip(".")
    if not name:
        raise DomainNameError("empty domain name")
    if not name.isascii():
        try:
            name = idna.encode(name, uts46=True).decode("ascii")
        except idna.IDNAError as exc:
            raise DomainNameError(f"invalid internationalised name: {exc}") from exc
    name = name.lower()
    if len(name) > MAX_NAME:
        raise DomainNameError("domain name too long")
    if not _NORMAL.fullmatch(name):
        for label in name.split("."):
            if not _NORMAL.fullmatch(label):
                raise DomainNameError(f"invalid label {label[:MAX_LABEL]!r}")
        raise DomainNameError("invalid domain name")  # unreachable: some label fails
    return name


def host_name(text: str) -> str:
    """An MX host as evidence names it: the IP literal of an address destination as it
    is, any other name as a :class:`DomainName` (or :class:`DomainNameError`)."""
    if is_address(text):
        return text
    return domain_name(text)


def is_address(text: str) -> bool:
    """An IPv4 or IPv6 address in its text form."""
    if ":" not in text and not text.replace(".", "").isdigit():
        return False
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
