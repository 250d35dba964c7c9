"""policyctl's duration syntax: ``30m``, ``12h``, ``7d``, ``1h30m`` (policyd/cli/durations.py)."""

from __future__ import annotations

import pytest

from policyd.cli.durations import DurationError, format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90), ("45s", 45), ("30m", 1800), ("12h", 43200), ("7d", 604800), ("1w", 604800),
     ("1h30m", 5400), (" 2D ", 172800)],
)  # fmt: skip
def test_parse_duration(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "0m", "m", "5y", "1.5h", "-1h", "3h ago", "9999999999w"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(DurationError):
        parse_duration(text)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (59.6, "1m"), (125, "2m"), (3600, "1h"), (7500, "2h5m"), (36000 + 60, "10h"),
     (86400 * 3, "3d"), (86400 * 14, "2w"), (86400 * 15, "15d"), (-5, "0s")],
)  # fmt: skip
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
