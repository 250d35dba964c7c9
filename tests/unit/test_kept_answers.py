"""The kept answers' JSON: the memo of each verdict's part changes nothing in the text."""

from __future__ import annotations

import json

import pytest

from policyd import kept_answers
from policyd.codec import postfix_policy
from policyd.core.types import Outcome, Rule, Verdict
from policyd.kept_answers import answers_from_json, answers_to_json

VERDICTS = [
    Verdict(Outcome.NOTFOUND, Rule.DEFAULT, 'no "policy" \u00e9'),
    Verdict(Outcome.POLICY, Rule.DANE, "TLSA ok", postfix_policy.parse("dane-only")),
    Verdict(Outcome.POLICY, Rule.MTA_STS, "sts", postfix_policy.parse("encrypt")),
]


def reference(kept: dict[str, Verdict]) -> str:
    return json.dumps(
        {
            name: {
                "policy": None if v.policy is None else postfix_policy.render(v.policy),
                "rule": v.rule.value,
                "reason": v.reason,
            }
            for name, v in kept.items()
        },
        sort_keys=True,
    )


@pytest.mark.parametrize(
    "kept",
    [
        {},
        {"postfix": VERDICTS[0]},
        {"z\u00e9": VERDICTS[1], "postfix": VERDICTS[0], 'a"b': VERDICTS[2]},
    ],
)
def test_the_json_is_json_dumps_sorted_and_reads_back(kept: dict[str, Verdict]) -> None:
    for _ in range(2):  # encoded, then from the memo
        text = answers_to_json(kept)
        assert text == reference(kept)
        assert answers_from_json(text) == kept


def test_the_memo_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kept_answers, "MAX_ENCODED", 2)
    kept_answers._ENCODED.clear()
    for v in VERDICTS:
        answers_to_json({"postfix": v})
    assert len(kept_answers._ENCODED) <= 2
