"""dnspython's side of :mod:`policyd.adapters.dns`: a lookup through the library resolver
(what the UDP path of :mod:`policyd.adapters.dns_udp` does not serve: a truncated
response retried over TCP, a name that is not ASCII, test servers), the breaker's health
query, and the nameservers of resolv.conf. Every library exception becomes a FAILED
:class:`~policyd.adapters.dns_answer.DnsAnswer` here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Final

import dns.asyncbackend
import dns.asyncresolver
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.nameserver
import dns.rdtypes.ANY.TLSA
import dns.resolver

from policyd.adapters.dns_answer import (
    DnsAnswer,
    Rcode,
    chain_of,
    failed,
    library_errors,
    library_records,
    status_of,
)
from policyd.settings import DnsSettings

# dnspython >= 2.8 rejects a TLSA record whose data length does not fit its matching
# type, and with it the whole response (FormError): one malformed record would turn the
# lookup into a failure and the domain into a deferral. RFC 7672 3.1 and Postfix treat
# such a record as unusable and go on with the others, so TLSA data is taken as
# published and judged by policyd.core.evidence.Tlsa.usable. (TLSA only, not SMIMEA.)
dns.rdtypes.ANY.TLSA.TLSA._cert_length_by_mtype = {}

# EDNS(0) UDP payload size: the DNS Flag Day 2020 value, which avoids IP fragmentation.
EDNS_PAYLOAD: Final = 1232


def build_library(
    s: DnsSettings, servers: Sequence[dns.nameserver.Nameserver], resolv_conf: str
) -> dns.asyncresolver.Resolver:
    """The library resolver for the settings: ``servers`` (tests), else the configured
    nameservers, else those of ``resolv_conf`` (NoResolverConfiguration if none)."""
    library = dns.asyncresolver.Resolver(configure=False)
    chosen: list[str | dns.nameserver.Nameserver] = list(servers)
    if not chosen:
        chosen = list(s.nameservers) or list(resolv_conf_nameservers(resolv_conf))
    library.nameservers = chosen
    library.port = s.port
    library.timeout = s.timeouts.per_try
    library.lifetime = s.timeouts.lifetime
    library.cache = None  # this class caches, with its own TTL bounds
    library.retry_servfail = False  # a validator's SERVFAIL (bogus) will not improve
    # AD in the query asks for the AD bit alone (RFC 6840 5.7); without DO the resolver
    # leaves out RRSIG and NSEC records (RFC 3225 3), which nothing here reads: answers
    # stay small and quick to parse. EDNS stays for the payload size and for Extended
    # DNS Errors (RFC 8914). CD stays clear: the resolver must validate.
    library.use_edns(0, 0, EDNS_PAYLOAD)
    library.flags = dns.flags.RD | dns.flags.AD
    return library


async def library_resolve(
    library_of: Callable[[], dns.asyncresolver.Resolver], name: str, rdtype: str, resolv_conf: str
) -> tuple[DnsAnswer, bool]:
    """One lookup through the library resolver (``library_of()``, which may raise
    NoResolverConfiguration naming ``resolv_conf``), and whether any server responded."""

    def failure(error: str, rcode: Rcode | None = None) -> tuple[DnsAnswer, bool]:
        return failed(name, rdtype, error, rcode), True

    try:
        qname = dns.name.from_text(name)
    except dns.exception.DNSException as exc:  # label too long, bad IDNA...
        return failure(f"invalid name: {exc}")
    try:
        library = library_of()
        result = await library.resolve(qname, rdtype, raise_on_no_answer=False)
    except dns.resolver.NXDOMAIN as exc:
        # A completed answer: its AD bit says whether the denial was validated.
        response = exc.kwargs.get("responses", {}).get(qname)
        canonical, ttl = chain_of(qname, response)
        status = status_of(response)
        return DnsAnswer(name, rdtype, status, Rcode.NXDOMAIN, (), canonical, ttl), True
    except dns.resolver.LifetimeTimeout as exc:
        errors = exc.kwargs.get("errors", [])
        return failed(name, rdtype, "timeout"), any(e[4] is not None for e in errors)
    except dns.resolver.NoNameservers as exc:
        errors = exc.kwargs.get("errors", [])
        error, rcode = library_errors(errors)
        return failed(name, rdtype, error, rcode), any(e[4] is not None for e in errors)
    except dns.resolver.YXDOMAIN:
        return failure("YXDOMAIN", Rcode.YXDOMAIN)
    except dns.resolver.NoResolverConfiguration:
        return failure(f"no nameservers in {resolv_conf}")
    except dns.exception.DNSException as exc:  # the library's root: anything else of it
        return failure(f"{type(exc).__name__}: {exc}")
    records = library_records(result.rrset) if result.rrset is not None else ()
    canonical, ttl = chain_of(qname, result.response)
    status = status_of(result.response)
    return DnsAnswer(name, rdtype, status, Rcode.NOERROR, records, canonical, ttl), True


async def answers(library: dns.asyncresolver.Resolver, name: str, timeout: float) -> bool:
    """Whether any of the library's nameservers responds to an A query for ``name``
    within ``timeout`` seconds, whatever its rcode."""
    request = dns.message.make_query(name, "A", flags=dns.flags.RD)
    backend = dns.asyncbackend.get_default_backend()
    for entry in library.nameservers:
        server = (
            dns.nameserver.Do53Nameserver(entry, library.port) if isinstance(entry, str) else entry
        )
        try:
            await server.async_query(request, timeout, None, 0, False, backend)
        except (dns.exception.DNSException, OSError, EOFError, ValueError):
            continue
        return True
    return False


def resolv_conf_nameservers(path: str) -> Sequence[str | dns.nameserver.Nameserver]:
    """Only the nameservers of resolv.conf: search lists, ndots and rotation do not apply
    to the absolute names we look up. Raises NoResolverConfiguration (translated by the
    caller) if there are none."""
    reader = dns.resolver.Resolver(configure=False)
    reader.read_resolv_conf(path)
    return reader.nameservers
