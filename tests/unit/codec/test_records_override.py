"""Override JSON: round trips, strict decoding, and only ValueError escapes."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from policyd.codec.postfix_policy import parse
from policyd.codec.records import override_from_json, override_to_json
from policyd.core.evidence import Override

OVERRIDE = Override(
    "example.test",
    parse("secure match=.example.test servername=hostname"),
    expires_at=1_800_000_600.0,
    comment="ticket 1234",
    author="root",
    created_at=1_800_000_000.0,
)


def _doc(**changes: object) -> str:
    doc = json.loads(override_to_json(OVERRIDE))
    doc.update(changes)
    return json.dumps(doc)


def test_round_trip() -> None:
    assert override_from_json("example.test", override_to_json(OVERRIDE)) == OVERRIDE
    notfound = Override("example.test", None)
    assert override_from_json("example.test", override_to_json(notfound)) == notfound


def test_missing_optional_fields_default() -> None:
    ov = override_from_json("k", '{"policy": "encrypt"}')
    assert (ov.expires_at, ov.comment, ov.author, ov.created_at) == (None, "", "", 0.0)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "{",
        "[]",
        "null",
        "{}",
        _doc(policy=3),
        _doc(policy="tls"),
        # A stored policy cannot carry what `policyctl override set` refuses.
        _doc(policy="verify match=.victim.example,tafile=/etc/passwd"),
        _doc(policy="encrypt ciphers=high\x00 protocols=TLSv1.2"),
        _doc(expires_at="soon"),
        _doc(expires_at=True),
        _doc(expires_at=-1),
        _doc(expires_at=10**400),  # OverflowError before the fix
        _doc(created_at=10**400),  # OverflowError before the fix
        _doc(comment=5),
        _doc(comment="x" * 2000),
        _doc(author=["root"]),
        '{"policy": "encrypt", "expires_at": NaN}',
        "[" * 10_000,
        "x" * 20_000,
    ],
)
def test_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        override_from_json("k", text)


@pytest.mark.parametrize(
    ("comment", "kept"),
    [
        ("two\nlines", "two\\nlines"),
        ("esc \x1b]52;c;AAAA\x07", "esc \\x1b]52;c;AAAA\\x07"),
        ("nul\x00", "nul\\x00"),
    ],
)
def test_control_characters_in_comment_and_author_are_escaped_not_refused(
    comment: str, kept: str
) -> None:
    # Refusing would drop the override, which may be all that keeps a destination strong.
    ov = override_from_json("k", _doc(comment=comment, author=comment))
    assert (ov.comment, ov.author) == (kept, kept)
    assert ov.policy == OVERRIDE.policy


@given(st.text(max_size=300))
def test_only_value_error_escapes(text: str) -> None:
    with contextlib.suppress(ValueError):
        override_from_json("k", text)


_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=10**308, max_value=10**400)
    | st.floats()
    | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=20,
)


@given(
    st.dictionaries(
        st.sampled_from(["policy", "expires_at", "comment", "author", "created_at"]), _json
    )
)
def test_only_value_error_escapes_for_json_objects(patch: dict[str, object]) -> None:
    doc = json.loads(override_to_json(OVERRIDE))
    doc.update(patch)
    with contextlib.suppress(ValueError):
        override_from_json("k", json.dumps(doc))
