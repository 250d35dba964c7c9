"""A test PKI made at test time: root CA -> intermediate CA -> leaves, and TLSA data.

Nothing is checked in: every run makes fresh keys, so no test depends on a date that
passes.  PEM files go under one directory; ``root.pem`` is what policyd gets as its
``[tls] ca_file``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal, NamedTuple

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

KeyType = Literal["ec", "rsa"]
Validity = Literal["valid", "expired", "not-yet-valid"]
Issuer = Literal["intermediate", "root", "self"]
PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

CA_LIFETIME: Final = dt.timedelta(days=365)
LEAF_LIFETIME: Final = dt.timedelta(days=30)
# Backdating absorbs clock skew between "now" here and in the process that verifies.
BACKDATE: Final = dt.timedelta(days=1)
RSA_BITS: Final = 2048
RSA_EXPONENT: Final = 65537


class CertFiles(NamedTuple):
    """The PEM files a TLS server needs: unpacks as ``cert, key, chain``."""

    cert: Path
    key: Path
    chain: Path  # leaf + intermediate (just the leaf when self-signed or root-issued)


@dataclass(frozen=True)
class Leaf:
    names: tuple[str, ...]
    cert: x509.Certificate
    key: PrivateKey
    files: CertFiles


def new_key(key_type: KeyType = "ec") -> PrivateKey:
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=RSA_EXPONENT, key_size=RSA_BITS)
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "policyd test world"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def validity_window(validity: Validity) -> tuple[dt.datetime, dt.datetime]:
    now = dt.datetime.now(dt.UTC)
    if validity == "expired":
        return now - 2 * LEAF_LIFETIME, now - BACKDATE
    if validity == "not-yet-valid":
        return now + BACKDATE, now + 2 * LEAF_LIFETIME
    return now - BACKDATE, now + LEAF_LIFETIME


def pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def pem_key(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


# What a CA key may sign: certificates and CRLs (and its own OCSP or handshake signatures).
CA_USAGE: Final = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=True,
    encipher_only=False,
    decipher_only=False,
)


def build_certificate(
    subject: x509.Name,
    key: PrivateKey,
    issuer: x509.Name,
    signer: PrivateKey,
    window: tuple[dt.datetime, dt.datetime],
    *,
    ca: bool = False,
    path_length: int | None = None,
    sans: Sequence[str] = (),
    usage: x509.KeyUsage | None = None,
    authority_key: bool = True,
) -> x509.Certificate:
    """One certificate for ``key``, signed by ``signer`` (``key`` itself when self-signed)
    and valid over ``window``. A CA gets BasicConstraints ca=True; anything else is a TLS
    server certificate (serverAuth). ``sans``: the DNS names (none: no SAN extension, a
    CN-only certificate); ``usage``: a KeyUsage extension (critical); ``authority_key``:
    an AuthorityKeyIdentifier for ``signer``'s key."""
    not_before, not_after = window
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if usage is not None:
        builder = builder.add_extension(usage, critical=True)
    if not ca:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
    if sans:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in sans]), critical=False
        )
    if authority_key:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()),
            critical=False,
        )
    return builder.sign(signer, hashes.SHA256())


def _ca_cert(
    subject: str,
    key: PrivateKey,
    issuer: x509.Certificate | None,
    issuer_key: PrivateKey,
    path_length: int | None,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    return build_certificate(
        _name(subject),
        key,
        issuer.subject if issuer else _name(subject),
        issuer_key,
        (now - BACKDATE, now + CA_LIFETIME),
        ca=True,
        path_length=path_length,
        usage=CA_USAGE,
        authority_key=issuer is not None,
    )


class CertAuthority:
    """Root and intermediate CA; ``issue()`` makes leaves and writes their PEM files."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.root_key = new_key()
        self.root_cert = _ca_cert("policyd test root CA", self.root_key, None, self.root_key, 1)
        self.intermediate_key = new_key()
        self.intermediate_cert = _ca_cert(
            "policyd test intermediate CA",
            self.intermediate_key,
            self.root_cert,
            self.root_key,
            0,
        )
        self.root_file = self.dir / "root.pem"
        self.root_file.write_bytes(pem_cert(self.root_cert))
        self.intermediate_file = self.dir / "intermediate.pem"
        self.intermediate_file.write_bytes(pem_cert(self.intermediate_cert))

    @property
    def ca_file(self) -> Path:
        """The root certificate: policyd's ``[tls] ca_file``."""
        return self.root_file

    def issue(
        self,
        names: list[str] | tuple[str, ...],
        *,
        stem: str | None = None,
        validity: Validity = "valid",
        issuer: Issuer = "intermediate",
        key_type: KeyType = "ec",
    ) -> Leaf:
        """A server certificate for DNS ``names`` (first one is the CN); PEM files are
        written as ``<stem>.key``, ``<stem>.pem`` and ``<stem>.chain.pem``."""
        stem = stem or names[0]
        key = new_key(key_type)
        if issuer == "self":
            issuer_name, signer, chain_extra = _name(names[0]), key, b""
        elif issuer == "root":
            issuer_name, signer, chain_extra = self.root_cert.subject, self.root_key, b""
        else:
            issuer_name, signer = self.intermediate_cert.subject, self.intermediate_key
            chain_extra = pem_cert(self.intermediate_cert)
        cert = build_certificate(
            _name(names[0]),
            key,
            issuer_name,
            signer,
            validity_window(validity),
            sans=names,
            authority_key=issuer != "self",
        )
        files = CertFiles(
            cert=self.dir / f"{stem}.pem",
            key=self.dir / f"{stem}.key",
            chain=self.dir / f"{stem}.chain.pem",
        )
        files.key.touch(mode=0o600)
        files.key.write_bytes(pem_key(key))
        files.cert.write_bytes(pem_cert(cert))
        files.chain.write_bytes(pem_cert(cert) + chain_extra)
        return Leaf(tuple(names), cert, key, files)


def tlsa_data(cert: x509.Certificate, selector: int, mtype: int) -> bytes:
    """The TLSA certificate-association data (RFC 6698 2.1) for ``cert``.

    selector 0 = full certificate DER, 1 = SubjectPublicKeyInfo DER;
    mtype 0 = exact bytes, 1 = SHA-256, 2 = SHA-512.
    """
    if selector == 0:
        data = cert.public_bytes(serialization.Encoding.DER)
    elif selector == 1:
        data = cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    else:
        raise ValueError(f"TLSA selector {selector}")
    if mtype == 0:
        return data
    if mtype == 1:
        return hashlib.sha256(data).digest()
    if mtype == 2:
        return hashlib.sha512(data).digest()
    raise ValueError(f"TLSA matching type {mtype}")


def tlsa_rdata(cert: x509.Certificate, usage: int, selector: int, mtype: int) -> str:
    """The TLSA RDATA in zone-file form, e.g. ``"3 1 1 9f86d0..."``."""
    return f"{usage} {selector} {mtype} {tlsa_data(cert, selector, mtype).hex()}"
