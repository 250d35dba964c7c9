"""policyd.core.evidence: the evidence values validate themselves on construction."""

from __future__ import annotations

import pytest

from policyd.core.evidence import (
    Destination,
    DestinationForm,
    Override,
    ProbeHost,
    ProbeLevel,
    ProbeVerdict,
    StsMode,
    StsPolicy,
    Tlsa,
)
from tests.tlsa_der import CERT_DER, SPKI_DER


@pytest.mark.parametrize(
    ("rec", "usable"),
    [
        (Tlsa(3, 1, 1, b"\0" * 32), True),
        (Tlsa(3, 0, 1, b"\0" * 32), True),
        (Tlsa(2, 0, 2, b"\0" * 64), True),
        (Tlsa(2, 1, 0, SPKI_DER), True),
        (Tlsa(3, 0, 0, CERT_DER), True),
        (Tlsa(2, 1, 0, b"\x30\x01"), False),  # not a SubjectPublicKeyInfo (RFC review D11)
        (Tlsa(3, 0, 0, SPKI_DER), False),  # selector 0 wants a certificate
        (Tlsa(3, 1, 0, SPKI_DER + b"\0"), False),  # trailing bytes: OpenSSL refuses
        (Tlsa(3, 0, 0, CERT_DER[:-1]), False),
        # A well-formed SPKI of a key type cryptography does not know (OID 1.2.3.4):
        # benefit of the doubt, OpenSSL may know it.
        (Tlsa(3, 1, 0, bytes.fromhex("300c3005 06032a0304 0303000102".replace(" ", ""))), True),
        (Tlsa(3, 1, 0, b""), False),
        (Tlsa(3, 1, 1, b"\0" * 31), False),
        (Tlsa(3, 1, 1, b"\0" * 33), False),
        (Tlsa(3, 1, 2, b"\0" * 32), False),
        (Tlsa(3, 1, 3, b"\0" * 32), False),
        (Tlsa(3, 2, 1, b"\0" * 32), False),
        (Tlsa(0, 1, 1, b"\0" * 32), False),
        (Tlsa(1, 1, 1, b"\0" * 32), False),
        (Tlsa(4, 1, 1, b"\0" * 32), False),
        (Tlsa(255, 255, 255, b"\0"), False),
    ],
)
def test_tlsa_usable(rec: Tlsa, usable: bool) -> None:
    assert rec.usable is usable


@pytest.mark.parametrize("field", ["usage", "selector", "mtype"])
@pytest.mark.parametrize("value", [-1, 256])
def test_tlsa_range(field: str, value: int) -> None:
    args = {"usage": 3, "selector": 1, "mtype": 1, "data": b"\0" * 32, field: value}
    with pytest.raises(ValueError):
        Tlsa(**args)  # type: ignore[arg-type]


def test_sts_policy_validation_and_expiry() -> None:
    with pytest.raises(ValueError):
        StsPolicy(StsMode.ENFORCE, (), 86400, "id", 0.0)
    with pytest.raises(ValueError):
        StsPolicy(StsMode.TESTING, ("mx",), -1, "id", 0.0)
    StsPolicy(StsMode.NONE, (), 0, "id", 0.0)  # mode none needs no mx
    pol = StsPolicy(StsMode.ENFORCE, ("mx",), 100, "id", 1000.0)
    assert pol.expires_at == 1100.0
    assert pol.valid_at(1099.9) and not pol.valid_at(1100.0)


def test_override_active() -> None:
    assert Override("k", None).active_at(1e12)
    ov = Override("k", None, expires_at=10.0)
    assert ov.active_at(9.9) and not ov.active_at(10.0)


@pytest.mark.parametrize(
    ("detail", "shown"),
    [
        ("554 \x1b]52;c;cHduZWQ=\x07 go away", "554 \\x1b]52;c;cHduZWQ=\\x07 go away"),
        ("421 busy\r\nline two", "421 busy\\r\\nline two"),
        ("certificate verify failed: self-signed", "certificate verify failed: self-signed"),
        ("already \\x1b escaped", "already \\x1b escaped"),
    ],
)
def test_probe_detail_from_remote_servers_is_escaped(detail: str, shown: str) -> None:
    """Security review L3: remote SMTP reply text (an OSC 52 clipboard write, a line
    break) reaches policyctl explain and the log as text, never as control characters."""
    h = ProbeHost("mx.example.com", "192.0.2.1", ProbeVerdict.NO_STARTTLS, detail)
    assert h.detail == shown
    assert h.detail.isprintable()
    again = ProbeHost("mx.example.com", "192.0.2.1", ProbeVerdict.NO_STARTTLS, h.detail)
    assert again.detail == h.detail  # idempotent: stored records round-trip


def test_probe_verdict_properties() -> None:
    assert [v for v in ProbeVerdict if not v.reachable] == [ProbeVerdict.UNREACHABLE]
    assert {v for v in ProbeVerdict if not v.encrypted} == {
        ProbeVerdict.NO_STARTTLS,
        ProbeVerdict.TLS_INTOLERANT,
        ProbeVerdict.UNREACHABLE,
    }
    assert ProbeLevel.VERIFY.strength > ProbeLevel.ENCRYPT.strength > ProbeLevel.MAY.strength


@pytest.mark.parametrize(
    ("dest", "key", "is_address"),
    [
        (Destination("example.com"), "example.com", False),
        (Destination("example.com", 587), "example.com:587", False),
        (Destination("mx.example.com", form=DestinationForm.HOST), "[mx.example.com]", False),
        (Destination("mx.example.com", 26, DestinationForm.HOST), "[mx.example.com]:26", False),
        (Destination("example.com", form=DestinationForm.PARENT), ".example.com", False),
        (Destination("192.0.2.1", form=DestinationForm.ADDRESS), "[192.0.2.1]", True),
        (Destination("2001:db8::1", form=DestinationForm.ADDRESS), "[2001:db8::1]", True),
        (Destination("192.0.2.1"), "192.0.2.1", False),
    ],
)
def test_destination_key(dest: Destination, key: str, is_address: bool) -> None:
    assert dest.key == key
    assert dest.is_address is is_address
