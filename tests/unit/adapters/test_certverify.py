"""Certificate verdicts from a test PKI built here: a root, an intermediate and leaves."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.verification import Store

from policyd.adapters.certverify import fingerprints, load_roots, verdict_for
from policyd.core.evidence import ProbeVerdict
from tests.pki import DAY, NOW, Pki, PrivateKey, make_cert, make_pki, new_key

# Re-exported for test_probe_source and test_smtp_probe, which import them from here;
# tests.pki is their home now.
__all__ = ["DAY", "NOW", "PrivateKey", "make_pki"]


@pytest.fixture(scope="module")
def pki() -> Pki:
    return make_pki()


def served(
    pki: Pki, leaf: x509.Certificate, name: str = "mx.example.test"
) -> tuple[ProbeVerdict, str]:
    """The verdict on ``leaf`` served with the test intermediate, for ``name``."""
    return verdict_for([leaf, pki.inter], name, pki.store, NOW)


def test_valid_chain(pki: Pki) -> None:
    leaf, _ = pki.leaf("mx.example.test")
    verdict, detail = served(pki, leaf)
    assert verdict is ProbeVerdict.VALID
    assert "Test Root CA" in detail


def test_name_is_case_and_trailing_dot_insensitive(pki: Pki) -> None:
    leaf, _ = pki.leaf("mx.example.test")
    verdict, _ = served(pki, leaf, "MX.Example.TEST.")
    assert verdict is ProbeVerdict.VALID


def test_expired_leaf(pki: Pki) -> None:
    leaf, _ = pki.leaf("mx.example.test", not_before=NOW - 400 * DAY, not_after=NOW - DAY)
    verdict, detail = served(pki, leaf)
    assert verdict is ProbeVerdict.EXPIRED
    assert detail.startswith("leaf expired")


def test_expired_intermediate() -> None:
    root_key, inter_key = new_key(), new_key()
    root = make_cert("Old Root", root_key, ca=True)
    inter = make_cert("Old Issuing", inter_key, (root, root_key), ca=True, not_after=NOW - DAY)
    leaf = make_cert("mx.example.test", new_key(), (inter, inter_key), sans=("mx.example.test",))
    verdict, detail = verdict_for([leaf, inter], "mx.example.test", Store([root]), NOW)
    assert verdict is ProbeVerdict.EXPIRED
    assert "Old Issuing" in detail


def test_extra_expired_certificate_does_not_hide_a_wrong_name(pki: Pki) -> None:
    old_key = new_key()
    stale = make_cert(
        "Stale Cross-sign", old_key, ca=True, not_before=NOW - 900 * DAY, not_after=NOW - 300 * DAY
    )
    leaf, _ = pki.leaf("mail.other.test")
    chain = [leaf, pki.inter, stale]
    verdict, _ = verdict_for(chain, "mx.example.test", pki.store, NOW)
    assert verdict is ProbeVerdict.NAME_MISMATCH
    leaf, _ = pki.leaf("mx.example.test")
    verdict, _ = verdict_for([leaf, pki.inter, stale], "mx.example.test", pki.store, NOW)
    assert verdict is ProbeVerdict.VALID


def test_not_yet_valid(pki: Pki) -> None:
    leaf, _ = pki.leaf("mx.example.test", not_before=NOW + DAY, not_after=NOW + 90 * DAY)
    verdict, _ = served(pki, leaf)
    assert verdict is ProbeVerdict.NOT_YET_VALID


def test_self_signed(pki: Pki) -> None:
    leaf = make_cert("mx.example.test", new_key(), sans=("mx.example.test",))
    verdict, detail = verdict_for([leaf], "mx.example.test", pki.store, NOW)
    assert verdict is ProbeVerdict.SELF_SIGNED
    assert "mx.example.test" in detail


def test_self_signed_but_trusted_is_valid() -> None:
    leaf = make_cert("mx.example.test", new_key(), sans=("mx.example.test",))
    verdict, _ = verdict_for([leaf], "mx.example.test", Store([leaf]), NOW)
    assert verdict is ProbeVerdict.VALID


def test_wrong_name(pki: Pki) -> None:
    leaf, _ = pki.leaf("mail.other.test")
    verdict, detail = served(pki, leaf)
    assert verdict is ProbeVerdict.NAME_MISMATCH
    assert detail == "certificate names mail.other.test; need mx.example.test"


def test_cn_only_leaf_is_a_name_mismatch(pki: Pki) -> None:
    leaf = make_cert("mx.example.test", new_key(), (pki.inter, pki.inter_key))
    verdict, detail = served(pki, leaf)
    assert verdict is ProbeVerdict.NAME_MISMATCH
    assert "no DNS subjectAltName" in detail


def test_deep_wildcard_does_not_match_two_labels(pki: Pki) -> None:
    leaf, _ = pki.leaf("*.b.example.test")
    verdict, _ = served(pki, leaf, "mx.a.b.example.test")
    assert verdict is ProbeVerdict.NAME_MISMATCH


def test_one_label_wildcard_matches(pki: Pki) -> None:
    leaf, _ = pki.leaf("*.a.b.example.test")
    verdict, _ = served(pki, leaf, "mx.a.b.example.test")
    assert verdict is ProbeVerdict.VALID


def test_missing_intermediate_is_unknown_issuer(pki: Pki) -> None:
    leaf, _ = pki.leaf("mx.example.test")
    verdict, detail = verdict_for([leaf], "mx.example.test", pki.store, NOW)
    assert verdict is ProbeVerdict.UNKNOWN_ISSUER
    assert "Test Issuing CA" in detail


def test_untrusted_root_is_unknown_issuer(pki: Pki) -> None:
    other = make_pki("Rogue")
    leaf, _ = other.leaf("mx.example.test")
    chain = [leaf, other.inter, other.root]
    verdict, detail = verdict_for(chain, "mx.example.test", pki.store, NOW)
    assert verdict is ProbeVerdict.UNKNOWN_ISSUER
    assert detail == "untrusted root CN=Rogue Root CA"


def test_bad_signature(pki: Pki) -> None:
    # Claims the intermediate as issuer but is signed by another key.
    impostor = (pki.inter, new_key())
    leaf = make_cert("mx.example.test", new_key(), impostor, sans=("mx.example.test",))
    verdict, detail = served(pki, leaf)
    assert verdict is ProbeVerdict.BAD_KEY_OR_SIGNATURE
    assert "bad signature" in detail


def test_weak_rsa_key(pki: Pki) -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    leaf, _ = pki.leaf("mx.example.test", key=weak)
    verdict, detail = served(pki, leaf)
    assert verdict is ProbeVerdict.BAD_KEY_OR_SIGNATURE
    assert detail.startswith("1024-bit RSA key")


def test_ca_certificate_as_leaf_is_invalid(pki: Pki) -> None:
    leaf = make_cert(
        "mx.example.test",
        new_key(),
        (pki.inter, pki.inter_key),
        ca=True,
        sans=("mx.example.test",),
    )
    verdict, detail = served(pki, leaf)
    assert verdict is ProbeVerdict.INVALID
    assert "basicConstraints" in detail


def test_name_that_is_no_dns_name_is_invalid(pki: Pki) -> None:
    leaf, _ = pki.leaf("mx.example.test")
    verdict, detail = served(pki, leaf, "not a name!")
    assert verdict is ProbeVerdict.INVALID
    assert detail.startswith("cannot verify for 'not a name!'")


def test_empty_chain_is_invalid(pki: Pki) -> None:
    assert verdict_for([], "mx.example.test", pki.store, NOW)[0] is ProbeVerdict.INVALID


def test_fingerprints_are_postfix_format(pki: Pki) -> None:
    leaf, key = pki.leaf("mx.example.test")
    cert_fp, spki_fp = fingerprints(leaf)
    der = leaf.public_bytes(serialization.Encoding.DER)
    assert cert_fp == ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())
    spki = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert spki_fp.replace(":", "") == hashlib.sha256(spki).hexdigest().upper()
    assert re.fullmatch(r"([0-9A-F]{2}:){31}[0-9A-F]{2}", cert_fp)


def test_load_roots_skips_garbage(tmp_path: Path, pki: Pki) -> None:
    pem = pki.root.public_bytes(serialization.Encoding.PEM)
    junk = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    bundle = tmp_path / "ca.pem"
    bundle.write_bytes(b"# comment\n" + junk + pem)
    store = load_roots(bundle)
    leaf, _ = pki.leaf("mx.example.test")
    assert verdict_for([leaf, pki.inter], "mx.example.test", store, NOW)[0] is ProbeVerdict.VALID


def test_load_roots_without_certificates(tmp_path: Path) -> None:
    empty = tmp_path / "empty.pem"
    empty.write_text("nothing here\n")
    with pytest.raises(ValueError, match="no usable CA"):
        load_roots(empty)
