"""Judge a certificate chain an MX host presented, as precisely as a postmaster needs.

The chain is verified with ``cryptography.x509.verification`` (WebPKI rules, RFC 5280 path
building, RFC 6125 names) against the roots Postfix would use (``smtp_tls_CAfile``). When
that fails, the certificates themselves are inspected (dates, issuer/subject, names, keys
and signatures) and the chain is re-verified with parts of the policy relaxed, so the
verdict names the cause without parsing the library's error text.
"""

from __future__ import annotations

import hashlib
import re
import warnings
from datetime import datetime
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from policyd.core.evidence import ProbeVerdict
from policyd.core.names import domain_name, fold

MIN_RSA_BITS: Final = 2048  # CA/Browser Forum Baseline Requirements 6.1.5; NIST SP 800-131A
# Named curves WebPKI accepts (CA/B BR 6.1.5, RFC 8422 5.1.1).
ACCEPTED_CURVES: Final = frozenset({"secp256r1", "secp384r1", "secp521r1"})
# Signature digests that no longer protect against forgery (RFC 6151 MD5, RFC 9155 SHA-1).
WEAK_DIGESTS: Final = frozenset({"md5", "sha1"})
MAX_NAMES_IN_DETAIL: Final = 4  # keep log lines short

_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----\r?\n.+?\r?\n-----END CERTIFICATE-----", re.S)

# Relaxed end-entity policy used only to classify a failure: subjectAltName optional and not
# matched against the MX name (RFC 6125 is checked separately), any EKU. Used with the
# client verifier, which does not insist on a subjectAltName naming the server.
_EE_NAME_RELAXED: Final = (
    ExtensionPolicy.webpki_defaults_ee()
    .may_be_present(x509.SubjectAlternativeName, Criticality.AGNOSTIC, None)
    .may_be_present(x509.ExtendedKeyUsage, Criticality.AGNOSTIC, None)
)
_CA_EKU_RELAXED: Final = ExtensionPolicy.webpki_defaults_ca().may_be_present(
    x509.ExtendedKeyUsage, Criticality.AGNOSTIC, None
)


def load_roots(ca_file: str | Path) -> Store:
    """Parse a PEM bundle (``smtp_tls_CAfile``) once, skipping certificates the library
    cannot load. Raises OSError when unreadable and ValueError when nothing usable is in it."""
    data = Path(ca_file).read_bytes()
    roots: list[x509.Certificate] = []
    with warnings.catch_warnings():
        # Some distribution bundles carry old roots with non-positive serials; cryptography
        # warns about each at every start. They load (or are skipped below) all the same.
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        for block in _PEM_CERT.findall(data):
            try:
                roots.append(x509.load_pem_x509_certificate(block))
            except ValueError:
                continue  # e.g. a negative serial or an unknown critical extension
    if not roots:
        raise ValueError(f"{ca_file}: no usable CA certificate")
    return Store(roots)


def fingerprints(leaf: x509.Certificate) -> tuple[str, str]:
    """SHA-256 of the certificate and of its public key (SPKI), as colon-separated upper-case
    hex: Postfix ``fingerprint`` match with smtp_tls_fingerprint_digest = sha256 (postconf(5))."""
    cert = leaf.public_bytes(serialization.Encoding.DER)
    spki = leaf.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return _colon_hex(hashlib.sha256(cert).digest()), _colon_hex(hashlib.sha256(spki).digest())


def verdict_for(
    chain: list[x509.Certificate], mx_host: str, store: Store, now: datetime
) -> tuple[ProbeVerdict, str]:
    """The verdict for ``chain`` (leaf first, as presented) for the MX name ``mx_host``,
    with a short detail for the log."""
    if not chain:
        return ProbeVerdict.INVALID, "no certificate presented"
    leaf, intermediates = chain[0], chain[1:]
    try:
        name = domain_name(mx_host)  # DomainNameError is a ValueError
        verifier = PolicyBuilder().store(store).time(now).build_server_verifier(x509.DNSName(name))
    except ValueError as exc:
        return ProbeVerdict.INVALID, f"cannot verify for {mx_host!r}: {exc}"
    try:
        path = verifier.verify(leaf, intermediates)
    except VerificationError as exc:
        return _classify_failure(chain, name, store, now, str(exc))
    weak = _weakness(path)
    if weak:
        return ProbeVerdict.BAD_KEY_OR_SIGNATURE, weak
    return ProbeVerdict.VALID, f"issued via {path[-1].subject.rfc4514_string()}"


def _classify_failure(
    chain: list[x509.Certificate], name: str, store: Store, now: datetime, message: str
) -> tuple[ProbeVerdict, str]:
    leaf = chain[0]
    dated = _dates(leaf, now, "leaf")
    if dated is not None:
        return dated
    if _chains_to_store(chain, store, now, _EE_NAME_RELAXED):
        # Trusted once the name is not checked: the name is the problem, unless it matches
        # by RFC 6125 and the failure lies in something the relaxed policy let through.
        names = _dns_names(leaf)
        if not names:
            subject = leaf.subject.rfc4514_string()
            return ProbeVerdict.NAME_MISMATCH, f"no DNS subjectAltName ({subject}), need {name}"
        if not any(_name_matches(pattern, name) for pattern in names):
            shown = ", ".join(names[:MAX_NAMES_IN_DETAIL])
            more = ", ..." if len(names) > MAX_NAMES_IN_DETAIL else ""
            return ProbeVerdict.NAME_MISMATCH, f"certificate names {shown}{more}; need {name}"
        return ProbeVerdict.INVALID, message
    # Only now the other certificates' dates: servers still send extra, expired
    # cross-signs that path building rightly ignores, and those must not hide a name error.
    for cert in chain[1:]:
        dated = _dates(cert, now, f"chain certificate {cert.subject.rfc4514_string()}")
        if dated is not None:
            return dated
    if leaf.issuer == leaf.subject:
        # Not a trust anchor itself, or the relaxed verification above would have passed.
        return ProbeVerdict.SELF_SIGNED, f"self-signed {leaf.subject.rfc4514_string()}"
    weak = _weakness(chain)
    if weak:
        return ProbeVerdict.BAD_KEY_OR_SIGNATURE, weak
    return _classify_path(chain, store, now, message)


def _classify_path(
    chain: list[x509.Certificate], store: Store, now: datetime, message: str
) -> tuple[ProbeVerdict, str]:
    """Follow issuers through the presented certificates: a bad signature on the way, or
    a top that does not lead to a trusted root."""
    current, used = chain[0], {0}
    root: x509.Certificate | None = None
    while root is None:
        index = next(
            (i for i, c in enumerate(chain) if i not in used and c.subject == current.issuer),
            None,
        )
        if index is None:
            break
        issuer = chain[index]
        problem = _signature_problem(current, issuer)
        if problem:
            return ProbeVerdict.BAD_KEY_OR_SIGNATURE, problem
        if issuer.issuer == issuer.subject:
            root = issuer
        else:
            current = issuer
            used.add(index)
    if _chains_to_store([current], store, now, ExtensionPolicy.permit_all()):
        return ProbeVerdict.INVALID, message  # the presented path leads to a trusted root
    issuer_name = current.issuer.rfc4514_string()
    if root is not None:
        return ProbeVerdict.UNKNOWN_ISSUER, f"untrusted root {issuer_name}"
    return (
        ProbeVerdict.UNKNOWN_ISSUER,
        f"issuer {issuer_name} not presented and not trusted (missing intermediate?)",
    )


def _signature_problem(cert: x509.Certificate, issuer: x509.Certificate) -> str:
    try:
        cert.verify_directly_issued_by(issuer)
    except InvalidSignature:
        return f"bad signature on {cert.subject.rfc4514_string()}"
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        return f"cannot check the signature on {cert.subject.rfc4514_string()}: {exc}"
    return ""


def _dates(cert: x509.Certificate, now: datetime, which: str) -> tuple[ProbeVerdict, str] | None:
    if cert.not_valid_after_utc < now:
        return ProbeVerdict.EXPIRED, f"{which} expired {cert.not_valid_after_utc:%Y-%m-%d}"
    if cert.not_valid_before_utc > now:
        when = f"{cert.not_valid_before_utc:%Y-%m-%d}"
        return ProbeVerdict.NOT_YET_VALID, f"{which} not valid before {when}"
    return None


def _chains_to_store(
    chain: list[x509.Certificate], store: Store, now: datetime, ee_policy: ExtensionPolicy
) -> bool:
    """Whether ``chain[0]`` leads to a trusted root under a relaxed end-entity policy."""
    verifier = (
        PolicyBuilder()
        .store(store)
        .time(now)
        .extension_policies(ca_policy=_CA_EKU_RELAXED, ee_policy=ee_policy)
        .build_client_verifier()
    )
    try:
        verifier.verify(chain[0], chain[1:])
    except VerificationError:
        return False
    return True


def _weakness(certs: list[x509.Certificate]) -> str:
    """Why a key or signature algorithm in ``certs`` is too weak to trust, or ''."""
    for cert in certs:
        subject = cert.subject.rfc4514_string()
        try:
            key = cert.public_key()
        except (ValueError, UnsupportedAlgorithm) as exc:
            return f"unsupported key in {subject}: {exc}"
        if isinstance(key, rsa.RSAPublicKey) and key.key_size < MIN_RSA_BITS:
            return f"{key.key_size}-bit RSA key in {subject}"
        if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name not in ACCEPTED_CURVES:
            return f"curve {key.curve.name} in {subject}"
        if isinstance(key, dsa.DSAPublicKey):
            return f"DSA key in {subject}"
        if not isinstance(
            key,
            rsa.RSAPublicKey
            | ec.EllipticCurvePublicKey
            | ed25519.Ed25519PublicKey
            | ed448.Ed448PublicKey,
        ):
            return f"unsupported key type in {subject}"
        if cert.issuer == cert.subject:
            continue  # a root's self-signature is not what makes it trusted
        try:
            digest = cert.signature_hash_algorithm
        except UnsupportedAlgorithm:
            return f"unsupported signature algorithm on {subject}"
        if isinstance(digest, hashes.HashAlgorithm) and digest.name in WEAK_DIGESTS:
            return f"{digest.name} signature on {subject}"
    return ""


def _dns_names(leaf: x509.Certificate) -> list[str]:
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return [fold(n) for n in san.value.get_values_for_type(x509.DNSName)]


def _name_matches(pattern: str, name: str) -> bool:
    """RFC 6125 6.4: exact match, or ``*`` as the whole left-most label standing for exactly
    one label (6.4.3; partial-label wildcards are not honoured, as in CA/B BR 3.2.2.6).
    ``*.b.example.test`` does not match ``mx.a.b.example.test``."""
    if pattern == name:
        return True
    if not pattern.startswith("*."):
        return False
    suffix = pattern[2:]
    if "*" in suffix or suffix.count(".") < 1:
        return False  # no wildcard for a single-label suffix such as *.com
    head, dot, rest = name.partition(".")
    return bool(head) and bool(dot) and rest == suffix


def _colon_hex(digest: bytes) -> str:
    return ":".join(f"{b:02X}" for b in digest)
