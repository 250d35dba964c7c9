"""DNS evidence (RFC 7672 for DANE; RFC 5321 5.1): MX hosts, their addresses and TLSA
records. The probe targets and the MTA-STS check use the same hosts.

What is looked up, and why:

* A domain's MX RRset (RFC 5321 5.1). A null MX ends it (RFC 7505); NODATA means the
  domain itself is the one host (implicit MX); NXDOMAIN means there is nothing to
  deliver to. A bracketed ``[host]:port`` destination skips MX: its name comes from
  Postfix's configuration, not from DNS, so that step is as trustworthy as it gets.
* Per host, A and AAAA at once. TLSA is sought only when the completed answers are
  secure and name an address (RFC 7672 2.2.2): an attacker who can forge addresses can
  route around TLSA. An unsigned NXDOMAIN for one host makes that host INSECURE, not a
  failure, so one stale MX record cannot hold up a whole domain. One failed family
  (say an AAAA SERVFAIL) leaves the host usable over the family that answered, as
  Postfix delivers over it; only a host with no address left is FAILED.
* TLSA at ``_port._tcp.`` of the host's secure CNAME expansion first, then of the
  host name itself (RFC 7672 2.2.2, RFC 7671 7).

The evidence expires with the shortest TTL among the answers used; the resolver gives
failed answers a short TTL, so a failure is retried soon.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final, Protocol

from policyd.adapters.dns import DnsAnswer, MxRecord
from policyd.core.evidence import Destination, DnsEvidence, DnsStatus, MxHost, MxKind
from policyd.core.frozen import quick_init
from policyd.core.names import DomainName, domain_name, fold

# MX hosts examined per destination, most preferred first. Postfix tries at most
# smtp_mx_session_limit (2) hosts and smtp_mx_address_limit (5) addresses per delivery;
# ten leaves room for hosts that fail while bounding the lookups an MX RRset can cause.
DEFAULT_MAX_MX_HOSTS: Final = 10
# An IP literal has no DNS to change; its (empty) evidence is kept this long (seconds).
ADDRESS_LITERAL_TTL: Final = 86400


class DnsQuery(Protocol):
    """What the source needs of :class:`policyd.adapters.dns.Resolver` (tests fake it)."""

    async def query(self, name: str, rdtype: str) -> DnsAnswer: ...


@quick_init
@dataclass(frozen=True, slots=True)
class _Host:
    """One host's evidence and the answers it came from (for the expiry)."""

    host: MxHost
    answers: tuple[DnsAnswer, ...]


class DnsSource:
    """Gathers :class:`DnsEvidence` for a destination through a DNS resolver."""

    def __init__(self, resolver: DnsQuery, max_mx_hosts: int = DEFAULT_MAX_MX_HOSTS) -> None:
        if max_mx_hosts < 1:
            raise ValueError("max_mx_hosts must be at least 1")
        self._resolver = resolver
        self._max_mx_hosts = max_mx_hosts

    async def gather(
        self, dest: Destination, now: float, takes_mail: Callable[[], object] | None = None
    ) -> DnsEvidence:
        """``takes_mail``: called once ``dest`` is known to have hosts to deliver to (or its
        MX lookup failed), before their lookups: the caller's other work for a destination
        that takes mail (its MTA-STS discovery) starts then."""
        if dest.is_address:
            # No DNS name, so no DANE: the literal is the one host, without TLSA.
            host = MxHost(dest.name, 0, DnsStatus.INSECURE, (dest.name,))
            return DnsEvidence(
                DnsStatus.SECURE, MxKind.LISTED, (host,), "", now, now + ADDRESS_LITERAL_TTL
            )
        if dest.bracketed:
            # [host]:port: no MX lookup (Postfix smtp(8)); the name is configuration.
            if takes_mail is not None:
                takes_mail()
            hosts = await self._hosts([(domain_name(dest.name), 0)], dest.port)
            return _evidence(DnsStatus.SECURE, MxKind.LISTED, hosts, [], now)
        mx = await self._resolver.query(dest.name, "MX")
        # Hosts to deliver to: the listed exchanges, or the implicit MX (no MX RRset).
        listed = _mx_hosts(mx.mx) if mx.records else []
        if takes_mail is not None and (mx.failed or mx.nodata or listed):
            takes_mail()
        if mx.failed:
            error = f"MX lookup for {dest.name}: {mx.error}"
            return DnsEvidence(
                DnsStatus.FAILED, error=error, fetched_at=now, expires_at=now + mx.ttl
            )
        if mx.nxdomain:
            return _evidence(mx.status, MxKind.NXDOMAIN, [], [mx], now)
        if mx.nodata:
            # No MX RRset: the domain itself is the implicit MX, preference 0 (RFC 5321 5.1).
            hosts = await self._hosts([(domain_name(dest.name), 0)], dest.port)
            return _evidence(mx.status, MxKind.IMPLICIT, hosts, [mx], now)
        if not listed:
            # Only "." exchanges: the domain accepts no mail (RFC 7505 3).
            return _evidence(mx.status, MxKind.NULL, [], [mx], now)
        hosts = await self._hosts(listed[: self._max_mx_hosts], dest.port)
        return _evidence(mx.status, MxKind.LISTED, hosts, [mx], now)

    async def _hosts(self, hosts: list[tuple[DomainName, int]], port: int) -> list[_Host]:
        if len(hosts) == 1:  # an implicit MX, a [host]: nothing to run alongside
            return [await self._host(*hosts[0], port)]
        return list(await asyncio.gather(*(self._host(n, p, port) for n, p in hosts)))

    async def _host(self, name: DomainName, preference: int, port: int) -> _Host:
        # A and AAAA at once: AAAA as a task, A awaited here (a task fewer than a gather,
        # on the path every cold destination takes).
        aaaa_task = asyncio.ensure_future(self._resolver.query(name, "AAAA"))
        try:
            a = await self._resolver.query(name, "A")
        except BaseException:
            aaaa_task.cancel()  # not left running unowned, its failure never retrieved
            raise
        aaaa = await aaaa_task
        addresses = (*a.texts, *aaaa.texts)
        error = "; ".join(f"{x.rdtype} {name}: {x.error}" for x in (a, aaaa) if x.failed)
        if error and not addresses:
            # Nothing to connect to, and the failed family may hold the only addresses.
            host = MxHost(name, preference, DnsStatus.FAILED, address_error=error)
            return _Host(host, (a, aaaa))
        # From here at most one family failed and the other named addresses: Postfix
        # delivers over that family (dns_lookup_v keeps the best status, DNS_OK), and so
        # may policyd. A and AAAA share one owner name, hence one zone: the completed
        # answer alone says whether the host is signed, and TLSA hangs off the host name,
        # not off a family (RFC 7672 2.2.2), so the failed answer hides nothing DANE needs.
        completed = [x for x in (a, aaaa) if not x.failed]
        if not all(x.secure for x in completed):
            # A completed unsigned answer, NXDOMAIN included: no DANE for this host, but
            # no failure either (RFC 7672 2.2.2).
            host = MxHost(name, preference, DnsStatus.INSECURE, addresses, address_error=error)
            return _Host(host, (a, aaaa))
        if not addresses:
            # Secure denial: the host cannot receive mail; nothing to authenticate.
            return _Host(MxHost(name, preference, DnsStatus.SECURE), (a, aaaa))
        tlsa, used = await self._tlsa(name, _expansion(name, a, aaaa), port)
        records = tlsa.tlsa
        host = MxHost(
            name,
            preference,
            DnsStatus.SECURE,
            addresses,
            address_error=error,
            tlsa=tlsa.status,
            tlsa_records=records,
            tlsa_error=f"TLSA {tlsa.name}: {tlsa.error}" if tlsa.failed else "",
        )
        return _Host(host, (a, aaaa, *used))

    async def _tlsa(
        self, name: str, expanded: str | None, port: int
    ) -> tuple[DnsAnswer, tuple[DnsAnswer, ...]]:
        """TLSA at the secure CNAME expansion, else at the original name (RFC 7672 2.2.2)."""
        used: tuple[DnsAnswer, ...] = ()
        if expanded is not None:
            first = await self._resolver.query(f"_{port}._tcp.{expanded}", "TLSA")
            if first.failed or first.records:
                return first, (first,)
            used = (first,)
        answer = await self._resolver.query(f"_{port}._tcp.{name}", "TLSA")
        return answer, (*used, answer)


def _expansion(name: str, *answers: DnsAnswer) -> str | None:
    """The name the secure address records were found at, if a CNAME led elsewhere."""
    for answer in answers:
        if answer.records and answer.canonical_name not in ("", fold(name)):
            return answer.canonical_name
    return None


def _mx_hosts(records: Iterable[MxRecord]) -> list[tuple[DomainName, int]]:
    """Deliverable (name, preference) pairs, most preferred first, each name once."""
    best: dict[DomainName, int] = {}
    for r in records:
        if r.exchange is None:
            continue  # "." is the null MX (RFC 7505), never a host
        best[r.exchange] = min(r.preference, best.get(r.exchange, r.preference))
    return sorted(best.items(), key=lambda item: (item[1], item[0]))


def _evidence(
    mx: DnsStatus,
    kind: MxKind,
    hosts: list[_Host],
    answers: list[DnsAnswer],
    now: float,
) -> DnsEvidence:
    used = [*answers, *(a for h in hosts for a in h.answers)]
    ttl = min((a.ttl for a in used), default=ADDRESS_LITERAL_TTL)
    return DnsEvidence(
        mx,
        kind,
        tuple(h.host for h in hosts),
        fetched_at=now,
        expires_at=now + ttl,
    )


# -- refreshes (prefetch) ------------------------------------------------------------------


class FreshDnsQuery(Protocol):
    """A resolver that can be asked past its cache (:meth:`policyd.adapters.dns.Resolver.query`)."""

    async def query(self, name: str, rdtype: str, *, fresh: bool = False) -> DnsAnswer: ...


class FreshQueries:
    """``resolver``'s lookups, never answered from its cache: what a refresh gathers its
    evidence through (``DnsSource(FreshQueries(resolver))``), so that the refreshed answer
    does not expire with the cached one it replaces."""

    __slots__ = ("_resolver",)

    def __init__(self, resolver: FreshDnsQuery) -> None:
        self._resolver = resolver

    async def query(self, name: str, rdtype: str) -> DnsAnswer:
        return await self._resolver.query(name, rdtype, fresh=True)
