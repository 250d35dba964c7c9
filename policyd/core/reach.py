"""Which addresses policyd may connect to on a remote domain's say (security review L2).

A STARTTLS probe connects to the addresses of a destination's MX hosts, an MTA-STS fetch to
those of ``mta-sts.<domain>``: both come from DNS that any domain owner writes. Without a
fence, a domain pointing its MX at 127.0.0.1, 10.0.0.5 or 169.254.169.254 would have policyd
open connections inside the mail host's own network (a TLS handshake and a banner, or a GET,
but connections all the same). :class:`Reach` refuses every address that is not globally
routable (:attr:`ipaddress.IPv4Address.is_global`: loopback, RFC 1918, link-local, shared
address space, documentation and reserved ranges, the unspecified address) and every
multicast address, unless ``[outbound] allow_networks`` lists a network containing it (a
site whose MX hosts are internal). An IPv4-mapped IPv6 address (``::ffff:127.0.0.1``)
reaches the IPv4 address it carries, and is judged as that one (so are NAT64's
``64:ff9b::/96`` and 6to4's ``2002::/16``).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Final, TypeAlias

Network: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network
Address: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address

_NAT64: Final = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052 2.1, the well-known prefix
ALLOW_KEY: Final = (
    "[outbound] allow_networks"  # named in every refusal, so the fix is one search away
)


def parse_networks(texts: tuple[str, ...]) -> tuple[Network, ...]:
    """``("10.0.0.0/8", "fd00::/8", "192.0.2.7")`` as networks; ValueError names a bad one.
    Host bits must be zero (``10.1.2.3/8`` is more likely a typo than a wish)."""
    return tuple(ipaddress.ip_network(text, strict=True) for text in texts)


def _carried(addr: Address) -> Address:
    """The IPv4 address an IPv6 one carries to its destination, else ``addr`` itself:
    IPv4-mapped (the kernel connects to the IPv4 address), NAT64's well-known prefix
    (RFC 6052 2.1: the translator connects to it) and 6to4 (RFC 3056)."""
    if isinstance(addr, ipaddress.IPv4Address):
        return addr
    if addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    if addr in _NAT64:
        return ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    return addr.sixtofour or addr


def _kind(addr: Address) -> str:
    """A word for why ``addr`` is not reachable by default."""
    if addr.is_unspecified:
        return "unspecified"
    if addr.is_loopback:
        return "loopback"
    if addr.is_link_local:
        return "link-local"
    if addr.is_multicast:
        return "multicast"
    if addr.is_private:
        return "private"
    return "not global"


@dataclass(frozen=True, slots=True)
class Reach:
    """The outbound fence: ``allow`` lists the non-global networks that may be reached."""

    allow: tuple[Network, ...] = ()

    @classmethod
    def of(cls, texts: tuple[str, ...]) -> Reach:
        return cls(parse_networks(texts))

    def refusal(self, address: str) -> str:
        """Why policyd must not connect to ``address`` ("" when it may). An address that
        does not parse is refused too: the resolver gave something that is no address."""
        try:
            addr: Address = ipaddress.ip_address(address.partition("%")[0])
        except ValueError:
            return f"address not allowed: {address[:64]!r} is not an IP address"
        addr = _carried(addr)
        if addr.is_global and not addr.is_multicast:
            return ""
        if any(addr.version == net.version and addr in net for net in self.allow):
            return ""
        return f"address not allowed: {address} is {_kind(addr)} (see {ALLOW_KEY})"

    def allows(self, address: str) -> bool:
        return not self.refusal(address)


GLOBAL_ONLY: Final = Reach()  # the default: globally routable addresses only
