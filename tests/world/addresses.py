"""Every address in the world, in one table.

All of 127.0.0.0/8 is routed to ``lo`` inside the namespace, so each server gets its own
127.0.x.y without any ``ip addr add``; DNS uses 127.0.0.x, hosts 127.0.1.x onwards.  Later
worlds (MTA-STS HTTPS servers, SMTP servers) bind their listeners to these addresses.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

RESOLVER: Final = "127.0.0.1"  # unbound, the validating resolver policyd and Postfix ask
AUTHORITATIVE: Final = "127.0.0.53"  # named, authoritative for every zone of the world

# Host name (no trailing dot) -> IPv4 address.  One address per host, never shared, so a
# server bound to a host's address is reached only through that host's name.
HOSTS: Final[Mapping[str, str]] = MappingProxyType(
    {
        "mx.dane-ee.test": "127.0.1.1",
        "mx.dane-ta.test": "127.0.1.2",
        "mx.dane-mismatch.test": "127.0.1.3",
        "mx1.dane-partial.test": "127.0.1.4",
        "mx2.dane-partial.test": "127.0.1.5",
        "mx.insecure.test": "127.0.1.6",
        "mx.bogus.test": "127.0.1.7",
        "mx.expired.test": "127.0.1.8",
        "mx.tlsa-bogus.test": "127.0.1.9",
        "mx.bogushost.test": "127.0.1.10",
        "mx.mx-cname.test": "127.0.1.11",
        "implicit.test": "127.0.1.12",
        "mx.dane-sts.test": "127.0.1.13",
        "mta-sts.dane-sts.test": "127.0.1.14",
        "mx.plain.test": "127.0.1.15",
    }
)
