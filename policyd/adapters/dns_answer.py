"""What a DNS lookup returns to policyd, in policyd's types: :class:`DnsAnswer` with typed
records (:class:`MxRecord`, :class:`policyd.core.evidence.Tlsa`, address and TXT text) and
an :class:`Rcode`, built from either of the two ways :mod:`policyd.adapters.dns` asks (its
own UDP path through :mod:`policyd.codec.dns_wire`, or dnspython). Nothing of dnspython
leaves this module and :mod:`policyd.adapters.dns`.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdtypes.ANY.MX
import dns.rdtypes.ANY.TLSA
import dns.rdtypes.IN.A
import dns.rdtypes.IN.AAAA
import dns.rdtypes.txtbase

from policyd.codec import dns_wire
from policyd.core.evidence import DnsStatus, Tlsa
from policyd.core.frozen import quick_init
from policyd.core.names import DomainName, DomainNameError, domain_name

# Extended DNS Errors that mean DNSSEC validation failed (RFC 8914 4.7-4.13).
_BOGUS_EDE: Final = frozenset(
    {
        dns.edns.EDECode.DNSSEC_BOGUS,
        dns.edns.EDECode.SIGNATURE_EXPIRED,
        dns.edns.EDECode.SIGNATURE_NOT_YET_VALID,
        dns.edns.EDECode.DNSKEY_MISSING,
        dns.edns.EDECode.RRSIGS_MISSING,
        dns.edns.EDECode.NO_ZONE_KEY_BIT_SET,
        dns.edns.EDECode.NSEC_MISSING,
    }
)


class Rcode(enum.Enum):
    """Response codes (RFC 1035 4.1.1, RFC 6895 2.3) as answers carry them; an rcode
    outside this set is kept by its number's text in the error, never here."""

    NOERROR = "NOERROR"
    FORMERR = "FORMERR"
    SERVFAIL = "SERVFAIL"
    NXDOMAIN = "NXDOMAIN"
    NOTIMP = "NOTIMP"
    REFUSED = "REFUSED"
    YXDOMAIN = "YXDOMAIN"
    YXRRSET = "YXRRSET"
    NXRRSET = "NXRRSET"
    NOTAUTH = "NOTAUTH"
    NOTZONE = "NOTZONE"
    BADVERS = "BADVERS"

    @classmethod
    def of(cls, value: int) -> Rcode | None:
        return _RCODES.get(value)


_RCODES: Final[dict[int, Rcode]] = {int(dns.rcode.from_text(r.value)): r for r in Rcode}


@dataclass(frozen=True, slots=True)
class MxRecord:
    """One MX record (RFC 1035 3.3.9); ``exchange`` None is the root: a null MX (RFC 7505)."""

    preference: int
    exchange: DomainName | None


# What ``records`` holds, by the type asked for: MX -> MxRecord, TLSA -> Tlsa,
# A/AAAA -> address text, TXT -> the record's character-strings joined (RFC 8461 3.1) and
# decoded (anything not UTF-8 replaced), CNAME -> the target name.
Record = MxRecord | Tlsa | str


@quick_init
@dataclass(frozen=True, slots=True)
class DnsAnswer:
    """The outcome of one lookup.

    ``records`` are the records of the queried type (see :data:`Record`), at the end of any
    CNAME chain (``canonical_name``). ``rcode`` is NOERROR or NXDOMAIN for completed answers
    (NODATA: NOERROR without records), the failing rcode or None for FAILED ones. ``ttl`` is
    how many more seconds the answer may be used. ``error`` is set exactly when the
    status is FAILED.
    """

    name: str
    rdtype: str
    status: DnsStatus
    rcode: Rcode | None
    records: tuple[Record, ...] = ()
    canonical_name: str = ""
    ttl: int = 0
    error: str = ""

    def __post_init__(self) -> None:
        if (self.status is DnsStatus.FAILED) != bool(self.error):
            raise ValueError("a FAILED answer needs an error, and only a FAILED one")
        if self.ttl < 0:
            raise ValueError("ttl must not be negative")

    def with_ttl(self, ttl: int) -> DnsAnswer:
        """This answer with another TTL (the cache's bounds, or what is left of it); built
        directly, as ``dataclasses.replace`` costs several times more per answer."""
        return DnsAnswer(
            self.name,
            self.rdtype,
            self.status,
            self.rcode,
            self.records,
            self.canonical_name,
            ttl,
            self.error,
        )

    @property
    def failed(self) -> bool:
        return self.status is DnsStatus.FAILED

    @property
    def secure(self) -> bool:
        return self.status is DnsStatus.SECURE

    @property
    def nxdomain(self) -> bool:
        return self.rcode is Rcode.NXDOMAIN and not self.failed

    @property
    def nodata(self) -> bool:
        return self.rcode is Rcode.NOERROR and not self.failed and not self.records

    @property
    def negative(self) -> bool:
        """NXDOMAIN or NODATA (RFC 2308 1)."""
        return self.nxdomain or self.nodata

    @property
    def mx(self) -> tuple[MxRecord, ...]:
        return tuple(r for r in self.records if isinstance(r, MxRecord))

    @property
    def tlsa(self) -> tuple[Tlsa, ...]:
        return tuple(r for r in self.records if isinstance(r, Tlsa))

    @property
    def texts(self) -> tuple[str, ...]:
        """Addresses (A, AAAA) or TXT strings, by the type asked for."""
        return tuple(r for r in self.records if isinstance(r, str))


def failed(name: str, rdtype: str, error: str, rcode: Rcode | None = None) -> DnsAnswer:
    return DnsAnswer(name, rdtype, DnsStatus.FAILED, rcode, canonical_name=name, error=error)


# -- records ---------------------------------------------------------------------------


def _exchange(text: str) -> DomainName | None:
    """An MX exchange as wire text (lower-case labels, "" for the root); ValueError for a
    name policyd cannot use (Postfix skips such a record too: "malformed domain name")."""
    if not text:
        return None
    if not text.isascii():
        raise DomainNameError("exchange is not ASCII")
    return domain_name(text)


def _tlsa(usage: int, selector: int, mtype: int, data: bytes) -> Tlsa:
    return Tlsa(usage, selector, mtype, data)  # taken as published: Tlsa.usable judges


def _txt(strings: Iterable[bytes]) -> str:
    return b"".join(strings).decode("utf-8", "replace")


def wire_records(rtype: int, records: Iterable[dns_wire.Rr]) -> tuple[Record, ...]:
    """The typed records of a response read by :mod:`policyd.codec.dns_wire`; an MX whose
    exchange is no usable name is left out."""
    out: list[Record] = []
    for r in records:
        data: Any = r.data
        if rtype == dns_wire.TYPE_MX:
            try:
                out.append(MxRecord(data[0], _exchange(data[1])))
            except DomainNameError:
                continue
        elif rtype == dns_wire.TYPE_TLSA:
            out.append(_tlsa(*data))
        elif rtype == dns_wire.TYPE_TXT:
            out.append(_txt(data))
        elif isinstance(data, str):
            out.append(data)
    return tuple(out)


def library_records(rdatas: Iterable[object]) -> tuple[Record, ...]:
    """The typed records of dnspython rdata (the library path)."""
    out: list[Record] = []
    for r in rdatas:
        if isinstance(r, dns.rdtypes.ANY.MX.MX):
            root = r.exchange == dns.name.root
            text = "" if root else r.exchange.to_text(omit_final_dot=True).lower()
            try:
                out.append(MxRecord(r.preference, _exchange(text)))
            except DomainNameError:
                continue
        elif isinstance(r, dns.rdtypes.ANY.TLSA.TLSA):
            out.append(_tlsa(r.usage, r.selector, r.mtype, bytes(r.cert)))
        elif isinstance(r, dns.rdtypes.txtbase.TXTBase):
            out.append(_txt(r.strings))
        elif isinstance(r, dns.rdtypes.IN.A.A | dns.rdtypes.IN.AAAA.AAAA):
            out.append(str(r.address))
    return tuple(out)


# -- outcomes --------------------------------------------------------------------------


def name_text(name: dns.name.Name) -> str:
    return name.to_text(omit_final_dot=True).lower() or "."


def status_of(response: dns.message.Message | None) -> DnsStatus:
    """AD set by the trusted resolver: validated (RFC 4035 3.2.3, RFC 6840 5.8)."""
    if response is not None and response.flags & dns.flags.AD:
        return DnsStatus.SECURE
    return DnsStatus.INSECURE


def describe(error: object, response: dns.message.Message | None) -> str:
    """One server's failure, naming DNSSEC validation failures as "bogus" (RFC 8914)."""
    if response is not None:
        for ede in response.extended_errors():
            if ede.code in _BOGUS_EDE:
                return _bogus(int(ede.code), ede.text or "")
    if isinstance(error, str):
        return error  # an rcode: SERVFAIL, REFUSED, NOTIMP...
    if isinstance(error, dns.exception.Timeout):
        return "timeout"
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


def describe_wire(rcode: str, ede: Sequence[tuple[int, str]]) -> str:
    """As :func:`describe`, for a response read by :mod:`policyd.codec.dns_wire`."""
    for code, text in ede:
        if code in _BOGUS_EDE:
            return _bogus(code, text)
    return rcode


def _bogus(code: int, text: str) -> str:
    detail = dns.edns.EDECode.to_text(dns.edns.EDECode.make(code))
    return f"bogus (EDE {code} {detail}{': ' + text if text else ''})"


def library_errors(errors: Sequence[tuple[Any, ...]]) -> tuple[str, Rcode | None]:
    """(error text, rcode) from dnspython's (server, tcp, port, error, response) list."""
    texts: list[str] = []
    rcode: Rcode | None = None
    for entry in errors:
        error, response = entry[3], entry[4]
        if response is not None and rcode is None:
            rcode = Rcode.of(response.rcode())
        text = describe(error, response)
        if text not in texts:
            texts.append(text)
    return "; ".join(texts) or "no nameservers", rcode


def chain_of(qname: dns.name.Name, response: dns.message.Message | None) -> tuple[str, int]:
    """The end of the CNAME chain and the smallest TTL along it; for NXDOMAIN and
    NODATA the SOA's negative TTL is included (RFC 2308 5)."""
    if not isinstance(response, dns.message.QueryMessage):
        return name_text(qname), 0
    try:
        chain = response.resolve_chaining()
    except dns.exception.DNSException:
        return name_text(qname), 0
    return name_text(chain.canonical_name), int(chain.minimum_ttl)


def from_wire(name: str, rdtype: str, qtype: int, response: dns_wire.Response) -> DnsAnswer | None:
    """A completed answer (NOERROR, NXDOMAIN) from a decoded response; None for other
    rcodes (failures, left to the caller)."""
    if response.rcode not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
        return None
    status = DnsStatus.SECURE if response.authentic else DnsStatus.INSECURE
    try:
        chain = dns_wire.follow(response, name, qtype)
    except dns_wire.DnsWireError:
        chain = dns_wire.Chain(name.lower(), (), 0)
    canonical = chain.canonical or "."
    if response.rcode == dns.rcode.NXDOMAIN:
        return DnsAnswer(name, rdtype, status, Rcode.NXDOMAIN, (), canonical, chain.ttl)
    try:
        records = wire_records(qtype, chain.records)
    except (ValueError, TypeError) as exc:
        return failed(name, rdtype, f"FormError: {exc}", Rcode.NOERROR)
    return DnsAnswer(name, rdtype, status, Rcode.NOERROR, records, canonical, chain.ttl)
