"""policyd.told: the verdict as Postfix can be told it, and its metrics label."""

from __future__ import annotations

from policyd.codec.postfix_policy import parse
from policyd.core.profile import Profile
from policyd.core.types import Outcome, Policy, Rule, TlsLevel, Verdict
from policyd.told import answer_label, as_sent, label_of

VERIFY = Verdict(Outcome.POLICY, Rule.PROBE, "probed", parse("verify"))
NOTFOUND = Verdict(Outcome.NOTFOUND, Rule.DEFAULT, "nothing")
TEMP = Verdict(Outcome.TEMP, Rule.DNS_FAILURE, "SERVFAIL")


def test_what_fits_is_sent_as_it_is() -> None:
    for verdict in (VERIFY, NOTFOUND, TEMP):
        assert as_sent(verdict) is verdict


def test_a_policy_too_long_for_one_reply_is_temp_with_the_same_rule() -> None:
    names = tuple(f"mx{i:05d}.example.test" for i in range(5000))
    huge = Verdict(Outcome.POLICY, Rule.MTA_STS, "enforce", Policy(TlsLevel.SECURE, names))
    sent = as_sent(huge)
    assert sent.outcome is Outcome.TEMP
    assert sent.rule is Rule.MTA_STS
    assert sent.reason.startswith("policy not sent: reply of ")


def test_labels() -> None:
    assert [label_of(v) for v in (VERIFY, NOTFOUND, TEMP)] == ["verify", "NOTFOUND", "TEMP"]
    assert answer_label(VERIFY, Profile("trial", dry_run=True)) == "NOTFOUND"
    assert answer_label(VERIFY, Profile("postfix")) == "verify"
