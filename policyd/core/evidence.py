"""Typed evidence the decision core takes in. Adapters produce these; nothing here does I/O.

Times are seconds since the epoch (floats), always passed in by the caller.
"""

from __future__ import annotations

import enum
import functools
import ipaddress
from dataclasses import dataclass, field
from typing import Final

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import load_der_public_key

from policyd.core.frozen import quick_init
from policyd.core.names import domain_name, fold, host_name, is_address
from policyd.core.types import SMTP_PORT, Policy, one_line

# The most mx patterns one MTA-STS policy may carry. RFC 8461 sets no number and real
# policies name a handful; a bound keeps parsing, decide() and the Postfix reply small:
# match= plus, with STS attributes, one mx_host_pattern and one policy_string per pattern
# stay near 52 KB even at 64 names of 253 octets, far below the socketmap reply limit of
# 100,000 bytes. A policy with more is refused as invalid (policyd.codec.mtasts), so a
# cached policy stays in force and a new one is not enforced half.
MAX_MX_PATTERNS: Final = 64


class DnsStatus(enum.Enum):
    """Three outcomes of a DNS lookup that must never be confused (RFC 7672 2.1.1).

    SECURE: a validated answer (AD bit from the trusted local resolver), including a
    validated NXDOMAIN/NODATA. INSECURE: a completed answer without AD. FAILED: bogus,
    SERVFAIL, timeout, REFUSED, or any other lookup that did not complete.
    """

    SECURE = "secure"
    INSECURE = "insecure"
    FAILED = "failed"


class TlsaUsage(enum.IntEnum):
    """TLSA certificate usage (RFC 6698 2.1.1, names from RFC 7218)."""

    PKIX_TA = 0
    PKIX_EE = 1
    DANE_TA = 2
    DANE_EE = 3


class TlsaSelector(enum.IntEnum):
    """TLSA selector (RFC 6698 2.1.2): what of the certificate is matched."""

    CERT = 0  # the full certificate
    SPKI = 1  # its SubjectPublicKeyInfo


class TlsaMatchingType(enum.IntEnum):
    """TLSA matching type (RFC 6698 2.1.3): how the selected data is presented."""

    FULL = 0
    SHA256 = 1
    SHA512 = 2


# Usages SMTP can use (RFC 7672 3.1): PKIX-TA(0) and PKIX-EE(1) are unusable.
_SMTP_USAGES: Final = frozenset({TlsaUsage.DANE_TA, TlsaUsage.DANE_EE})
_SELECTORS: Final = frozenset(TlsaSelector)


@dataclass(frozen=True, slots=True)
class Tlsa:
    """One TLSA record (RFC 6698 2.1). The fields stay plain octets: a record may carry
    values no enum knows, and is then unusable, not invalid."""

    usage: int
    selector: int
    mtype: int
    data: bytes

    def __post_init__(self) -> None:
        for name in ("usage", "selector", "mtype"):
            value = getattr(self, name)
            if not 0 <= value <= 255:
                raise ValueError(f"TLSA {name} {value} out of range")

    @property
    def usable(self) -> bool:
        """Usable for SMTP per RFC 7672 3.1: DANE-TA(2) or DANE-EE(3), known selector and
        matching type, and a digest of the right length. PKIX-TA(0)/PKIX-EE(1) are unusable.

        Full data (matching type 0) must parse as what the selector names, a DER
        certificate (0) or SubjectPublicKeyInfo (1): OpenSSL's SSL_dane_tlsa_add() refuses
        anything else, so Postfix counts such a record unusable, and at dane-only with no
        other usable record it fails the connection (tls_client.c) where RFC 7672 3.1
        would have had encrypt."""
        if self.usage not in _SMTP_USAGES or self.selector not in _SELECTORS:
            return False
        expected = _DIGEST_LENGTH.get(self.mtype, -1)
        if expected == -1:
            return False
        if expected == 0:
            return _full_data_parses(self.selector, self.data)
        return len(self.data) == expected


@functools.lru_cache(maxsize=1024)
def _full_data_parses(selector: int, data: bytes) -> bool:
    """Whether TLSA full data is one DER certificate (selector 0) or one DER
    SubjectPublicKeyInfo (selector 1) with nothing after it, as OpenSSL's d2i_X509 /
    d2i_PUBKEY in SSL_dane_tlsa_add() require. Pure parsing, cached: decide() asks often."""
    if not data:
        return False
    try:
        if selector == TlsaSelector.CERT:
            x509.load_der_x509_certificate(data)
        else:
            load_der_public_key(data)
    except UnsupportedAlgorithm:
        # Well-formed, but a key type this library does not know: OpenSSL may know it.
        # Counting it unusable could turn dane-only into encrypt, a weaker answer.
        return True
    except (ValueError, TypeError):
        return False
    return True


# Matching type -> digest length in bytes (0: full data, any non-empty length). RFC 6698 2.1.3.
_DIGEST_LENGTH: Final[dict[int, int]] = {
    TlsaMatchingType.FULL: 0,
    TlsaMatchingType.SHA256: 32,
    TlsaMatchingType.SHA512: 64,
}


@quick_init
@dataclass(frozen=True, slots=True)
class MxHost:
    """One MX host of a destination with what DNS said about it.

    ``tlsa`` is None when TLSA was not looked up because the address records are not
    secure (RFC 7672 2.2.2: TLSA is only sought for hosts with secure addresses).
    ``address_error`` names failed address lookups: with ``address`` FAILED none gave
    an address; otherwise one family failed and the host is used over the other.
    ``name`` is a :class:`DomainName`, or the IP literal of an address destination.
    """

    name: str
    preference: int
    address: DnsStatus
    addresses: tuple[str, ...] = ()
    address_error: str = ""
    tlsa: DnsStatus | None = None
    tlsa_records: tuple[Tlsa, ...] = ()
    tlsa_error: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", host_name(self.name))


class MxKind(enum.Enum):
    """The shape of the MX answer (RFC 5321 5.1, RFC 7505)."""

    LISTED = "listed"
    IMPLICIT = "implicit"
    NULL = "null"
    NXDOMAIN = "nxdomain"


@quick_init
@dataclass(frozen=True, slots=True)
class DnsEvidence:
    """What DNS said about a destination: the MX RRset and, per host, addresses and TLSA."""

    mx: DnsStatus
    kind: MxKind = MxKind.LISTED
    hosts: tuple[MxHost, ...] = ()
    error: str = ""
    fetched_at: float = 0.0
    expires_at: float = 0.0


def is_ip_literal(pattern: str) -> bool:
    """An mx pattern whose last label is all digits, such as ``192.0.2.1``: no host name
    (RFC 3696 2: a top-level domain is never all-numeric), so it matches no MX host under
    RFC 8461 4.1, while OpenSSL would read it in Postfix's ``match=`` as an IP address
    check that fails every certificate (postfix-tlspol#70)."""
    last = fold(pattern).rpartition(".")[2]
    return last.isascii() and last.isdigit()


class StsMode(enum.Enum):
    """MTA-STS policy modes (RFC 8461 5)."""

    ENFORCE = "enforce"
    TESTING = "testing"
    NONE = "none"


@dataclass(frozen=True, slots=True)
class StsPolicy:
    """A fetched MTA-STS policy (RFC 8461 3.2) and when it was fetched. ``mx`` patterns
    are kept as published (the codec lower-cases them); they are compared through
    :func:`policyd.core.names.fold`."""

    mode: StsMode
    mx: tuple[str, ...]
    max_age: int
    policy_id: str
    fetched_at: float

    def __post_init__(self) -> None:
        if self.max_age < 0:
            raise ValueError("max_age must not be negative")
        if self.mode is StsMode.ENFORCE and not self.mx:
            raise ValueError("an enforce policy needs at least one mx pattern")
        if len(self.mx) > MAX_MX_PATTERNS:
            raise ValueError(f"more than {MAX_MX_PATTERNS} mx patterns")
        if any(is_ip_literal(p) for p in self.mx):
            raise ValueError("an mx pattern is an IP address, not a host name")

    @property
    def expires_at(self) -> float:
        return self.fetched_at + self.max_age

    def valid_at(self, now: float) -> bool:
        return now < self.expires_at


@dataclass(frozen=True, slots=True)
class StsEvidence:
    """The cached MTA-STS policy (if any) and how the latest discovery or fetch went.

    ``error`` names a failed TXT lookup or fetch; a cached unexpired policy still applies
    then (RFC 8461 3.3, 5.1). ``pending`` means a cold fetch is still running past the
    lookup's time bound, or could not be queued, so the answer is not known yet.
    """

    policy: StsPolicy | None = None
    error: str = ""
    pending: bool = False


class ProbeVerdict(enum.Enum):
    """What a STARTTLS probe of one MX address found."""

    VALID = "valid"
    EXPIRED = "expired"
    NOT_YET_VALID = "not-yet-valid"
    SELF_SIGNED = "self-signed"
    UNKNOWN_ISSUER = "unknown-issuer"
    NAME_MISMATCH = "name-mismatch"
    BAD_KEY_OR_SIGNATURE = "bad-key-or-signature"
    INVALID = "invalid"
    # The handshake completes only as Postfix does at may/encrypt (OpenSSL security level
    # 0), never at verify/secure: say TLS 1.0/1.1 with SHA-1 signatures ("legacy sigalg
    # disallowed"). Encrypted, never verified, whatever the certificate.
    LEGACY_TLS = "legacy-tls"
    NO_STARTTLS = "no-starttls"
    TLS_INTOLERANT = "tls-intolerant"
    UNREACHABLE = "unreachable"

    @property
    def reachable(self) -> bool:
        """Unreachable says nothing about TLS and is never held against the host."""
        return self is not ProbeVerdict.UNREACHABLE

    @property
    def encrypted(self) -> bool:
        return self not in (
            ProbeVerdict.NO_STARTTLS,
            ProbeVerdict.TLS_INTOLERANT,
            ProbeVerdict.UNREACHABLE,
        )


@dataclass(frozen=True, slots=True)
class ProbeHost:
    """The probe of one MX address; ``host`` is the :class:`MxHost` name it was probed
    for (stored records are read back as they were written, hence plain text)."""

    host: str
    address: str
    verdict: ProbeVerdict
    detail: str = ""
    protocol: str = ""
    cipher: str = ""
    leaf_sha256: str = ""
    spki_sha256: str = ""
    probed_at: float = 0.0

    def __post_init__(self) -> None:
        # detail quotes the remote server (SMTP replies, TLS alerts) and ends up on the
        # postmaster's terminal (policyctl explain) and in logs: an ESC or OSC sequence
        # in a 554 banner must arrive as text, not act (security review L3). Escaping is
        # idempotent, so stored records round-trip unchanged.
        for name in ("detail", "protocol", "cipher"):
            value = getattr(self, name)
            if not value.isprintable():
                object.__setattr__(self, name, one_line(value))


class ProbeLevel(enum.Enum):
    """The level probe evidence supports, strongest first."""

    VERIFY = "verify"
    ENCRYPT = "encrypt"
    MAY = "may"

    @property
    def strength(self) -> int:
        return {ProbeLevel.VERIFY: 3, ProbeLevel.ENCRYPT: 2, ProbeLevel.MAY: 1}[self]


@dataclass(frozen=True, slots=True)
class ProbeState:
    """Damped probe evidence for a destination (see :mod:`policyd.core.probe`).

    ``level`` is the level in force (None: nothing reachable was ever seen); ``pending``
    a weaker level observed but not yet confirmed, with how often and since when; or,
    with ``pending`` VERIFY, ``pending_names``: other verified names than those in force,
    not yet confirmed.
    """

    level: ProbeLevel | None
    hosts: tuple[ProbeHost, ...] = ()
    verified_names: tuple[str, ...] = ()
    pending: ProbeLevel | None = None
    pending_names: tuple[str, ...] = ()
    pending_count: int = 0
    pending_since: float = 0.0
    probed_at: float = 0.0


@dataclass(frozen=True, slots=True)
class Override:
    """A postmaster's manual policy for a destination, which outranks all evidence."""

    key: str
    policy: Policy | None
    expires_at: float | None = None
    comment: str = ""
    author: str = ""
    created_at: float = 0.0

    def active_at(self, now: float) -> bool:
        return self.expires_at is None or now < self.expires_at


class DestinationForm(enum.Enum):
    """How Postfix wrote the next hop (postconf(5) smtp_tls_policy_maps)."""

    DOMAIN = "domain"  # example.com[:port]: its MX hosts are looked up
    HOST = "host"  # [mx.example.com][:port]: that host, no MX lookup
    ADDRESS = "address"  # [192.0.2.1][:port], [ipv6:...]: no DNS at all
    PARENT = "parent"  # .example.com: the parent-domain form, for subdomains


@quick_init
@dataclass(frozen=True, slots=True)
class Destination:
    """A normalised lookup key. ``name`` is a :class:`DomainName`, or for ADDRESS the
    compressed text of the IP address."""

    name: str
    port: int = SMTP_PORT
    form: DestinationForm = DestinationForm.DOMAIN

    def __post_init__(self) -> None:
        # Runs per cache miss (parse_key): kept to one name check and two comparisons.
        form, port = self.form, self.port
        if form is DestinationForm.ADDRESS:
            name = ipaddress.ip_address(self.name).compressed
        else:
            name = domain_name(self.name)
        if name is not self.name:
            object.__setattr__(self, "name", name)
        if not 0 < port < 65536:
            raise ValueError(f"port {port} out of range")
        if form is DestinationForm.PARENT and port != SMTP_PORT:
            raise ValueError("the parent-domain form has no port")
        if form is DestinationForm.HOST and is_address(name):
            # [192.0.2.1] is an address to Postfix, never a host name to look up.
            raise ValueError(f"{name} is an address: the ADDRESS form, not HOST")

    @property
    def key(self) -> str:
        """The canonical key overrides and caches are stored under."""
        form = self.form
        if form is DestinationForm.PARENT:
            return "." + self.name
        port = "" if self.port == SMTP_PORT else f":{self.port}"
        if form is DestinationForm.DOMAIN:
            return self.name + port
        return f"[{self.name}]{port}"

    @property
    def bracketed(self) -> bool:
        """A bracketed next hop (HOST or ADDRESS): no MX lookup."""
        return self.form is DestinationForm.HOST or self.form is DestinationForm.ADDRESS

    @property
    def parent_form(self) -> bool:
        return self.form is DestinationForm.PARENT

    @property
    def is_address(self) -> bool:
        """A bracketed IP literal: no DNS, so only an override can give it a policy."""
        return self.form is DestinationForm.ADDRESS


@quick_init
@dataclass(frozen=True, slots=True)
class Evidence:
    """Everything known about one destination, as handed to :func:`decide`."""

    destination: Destination
    override: Override | None = None
    dns: DnsEvidence | None = None
    sts: StsEvidence = field(default_factory=StsEvidence)
    probe: ProbeState | None = None
