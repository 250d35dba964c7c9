"""policyd.core.types: levels and verdicts."""

from __future__ import annotations

import pytest

from policyd.core.types import Outcome, Policy, Rule, TlsLevel, Verdict, notfound, policy, temp


def test_level_strength_order() -> None:
    order = [TlsLevel.NONE, TlsLevel.MAY, TlsLevel.ENCRYPT, TlsLevel.DANE, TlsLevel.VERIFY]
    strengths = [lvl.strength for lvl in order]
    assert strengths == sorted(strengths) and len(set(strengths)) == len(strengths)
    assert TlsLevel.SECURE.strength == TlsLevel.VERIFY.strength == TlsLevel.FINGERPRINT.strength
    assert TlsLevel.DANE_ONLY.strength > TlsLevel.SECURE.strength
    assert {lvl for lvl in TlsLevel if lvl.takes_match} == {
        TlsLevel.FINGERPRINT,
        TlsLevel.VERIFY,
        TlsLevel.SECURE,
    }


def test_verdict_strength_order() -> None:
    nf = notfound(Rule.DEFAULT, "x")
    tmp = temp(Rule.DNS_FAILURE, "x")
    pols = [policy(Rule.DANE, "x", Policy(lvl)) for lvl in TlsLevel]
    assert all(nf.strength < p.strength < tmp.strength for p in pols)


@pytest.mark.parametrize(
    ("outcome", "pol", "reason"),
    [
        (Outcome.POLICY, None, "r"),
        (Outcome.NOTFOUND, Policy(TlsLevel.MAY), "r"),
        (Outcome.TEMP, Policy(TlsLevel.MAY), "r"),
    ],
)
def test_verdict_validates(outcome: Outcome, pol: Policy | None, reason: str) -> None:
    with pytest.raises(ValueError):
        Verdict(outcome, Rule.DEFAULT, reason, pol)


@pytest.mark.parametrize(
    ("reason", "escaped"),
    [
        ("two\nlines", "two\\nlines"),
        ("cr\r", "cr\\r"),
        ("nul\0 esc\x1b", "nul\\x00 esc\\x1b"),
        ("line\u2028sep", "line\\u2028sep"),
    ],
)
def test_verdict_reason_is_one_line_escaped_never_refused(reason: str, escaped: str) -> None:
    # Refusing would make the lookup TEMP (a newline in an override comment did).
    assert Verdict(Outcome.NOTFOUND, Rule.DEFAULT, reason).reason == escaped
