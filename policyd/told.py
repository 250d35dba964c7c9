"""What Postfix is told for a verdict, and the label it is counted under.

A policy too long for one socketmap reply (socketmap_table(5): 100,000 bytes) is told TEMP:
truncated, it would be a different policy, and weaker than the one decided; deferring mail
is the safe way to fail. The service logs, counts and explains the verdict as told.
"""

from __future__ import annotations

from policyd.codec import socketmap
from policyd.core.profile import Profile
from policyd.core.types import Outcome, Verdict


def as_sent(verdict: Verdict) -> Verdict:
    """The verdict as Postfix can be told it: itself, or TEMP when its policy does not fit."""
    if verdict.policy is None or verdict.outcome is Outcome.TEMP:
        return verdict
    try:
        socketmap.reply_for(verdict)
    except socketmap.ReplyTooLong as exc:
        return Verdict(Outcome.TEMP, verdict.rule, f"policy not sent: {exc}")
    return verdict


def label_of(verdict: Verdict) -> str:
    """The level as a metrics label: TEMP, NOTFOUND or the policy's level keyword."""
    if verdict.outcome is Outcome.TEMP:
        return "TEMP"
    if verdict.policy is None:
        return "NOTFOUND"
    return verdict.policy.level.value


def answer_label(verdict: Verdict, profile: Profile) -> str:
    """The level label of what Postfix was told (dry-run profiles tell NOTFOUND)."""
    return "NOTFOUND" if profile.dry_run else label_of(verdict)
