"""In-memory test PKIs for unit tests, built with :func:`tests.world.ca.build_certificate`
(the world's CA writes files; these stay in memory).

* :func:`make_cert` and :func:`make_pki`: certificates valid around a fixed :data:`NOW`,
  for code that takes the time as an argument (certificate verdicts);
* :class:`Ca`: a self-signed CA valid now, issuing PEM pairs for TLS servers in tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID
from cryptography.x509.verification import Store

from tests.world.ca import (
    CA_USAGE,
    PrivateKey,
    build_certificate,
    new_key,
    pem_cert,
    pem_key,
    validity_window,
)

__all__ = ["DAY", "NOW", "Ca", "Issued", "Pki", "PrivateKey", "make_cert", "make_pki", "new_key"]

NOW: Final = datetime(2026, 6, 1, tzinfo=UTC)
DAY: Final = timedelta(days=1)

# A CA that signs certificates and CRLs only; a TLS server key that signs and encrypts.
SIGNING_CA_USAGE: Final = x509.KeyUsage(False, False, False, False, False, True, True, False, False)
SERVER_USAGE: Final = x509.KeyUsage(True, False, True, False, False, False, False, False, False)


def cn(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_cert(
    subject: str,
    key: PrivateKey,
    issuer: tuple[x509.Certificate, PrivateKey] | None = None,
    *,
    ca: bool = False,
    sans: tuple[str, ...] = (),
    not_before: datetime = NOW - 30 * DAY,
    not_after: datetime = NOW + 60 * DAY,
) -> x509.Certificate:
    """A certificate for ``key``; self-signed when ``issuer`` is None."""
    issuer_name, signer = (cn(subject), key) if issuer is None else (issuer[0].subject, issuer[1])
    return build_certificate(
        cn(subject),
        key,
        issuer_name,
        signer,
        (not_before, not_after),
        ca=ca,
        sans=sans,
        usage=SIGNING_CA_USAGE if ca else SERVER_USAGE,
    )


@dataclass(frozen=True)
class Pki:
    root: x509.Certificate
    root_key: PrivateKey
    inter: x509.Certificate
    inter_key: PrivateKey

    @property
    def store(self) -> Store:
        return Store([self.root])

    def leaf(
        self,
        *sans: str,
        key: PrivateKey | None = None,
        not_before: datetime = NOW - 30 * DAY,
        not_after: datetime = NOW + 60 * DAY,
    ) -> tuple[x509.Certificate, PrivateKey]:
        leaf_key = key or new_key()
        cert = make_cert(
            sans[0],
            leaf_key,
            (self.inter, self.inter_key),
            sans=sans,
            not_before=not_before,
            not_after=not_after,
        )
        return cert, leaf_key


def make_pki(label: str = "Test") -> Pki:
    root_key, inter_key = new_key(), new_key()
    root = make_cert(f"{label} Root CA", root_key, ca=True, not_after=NOW + 3650 * DAY)
    inter = make_cert(
        f"{label} Issuing CA", inter_key, (root, root_key), ca=True, not_after=NOW + 1000 * DAY
    )
    return Pki(root, root_key, inter, inter_key)


@dataclass(frozen=True)
class Issued:
    cert_pem: bytes
    key_pem: bytes


class Ca:
    """A self-signed CA valid now; :meth:`issue` makes server certificates for one name."""

    def __init__(self, common_name: str) -> None:
        self.key = new_key()
        name = cn(common_name)
        self.cert = build_certificate(
            name,
            self.key,
            name,
            self.key,
            validity_window("valid"),
            ca=True,
            usage=CA_USAGE,
            authority_key=False,
        )

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(self, name: str) -> Issued:
        key = new_key()
        cert = build_certificate(
            cn(name), key, self.cert.subject, self.key, validity_window("valid"), sans=(name,)
        )
        return Issued(pem_cert(cert), pem_key(key))
