"""policyd.cli.daemon: log lines are bounded (security review H2: remote text in reasons)."""

from __future__ import annotations

import logging

from policyd.cli.logs import MAX_LOG_LINE, BoundedFormatter


def record(msg: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord("policyd", logging.INFO, __file__, 1, msg, args, None)


def test_long_line_cut() -> None:
    fmt = BoundedFormatter("policyd[1]: %(message)s")
    out = fmt.format(record("%s: %s", "example.com", "x" * 100_000))
    assert len(out) == MAX_LOG_LINE
    assert out.startswith("policyd[1]: example.com: xxx")
    assert out.endswith("...")


def test_short_line_kept() -> None:
    fmt = BoundedFormatter("policyd[1]: %(message)s")
    assert fmt.format(record("a %s", "b")) == "policyd[1]: a b"


def test_traceback_still_follows() -> None:
    fmt = BoundedFormatter("%(message)s")
    try:
        raise ValueError("boom")
    except ValueError as exc:
        rec = record("y" * 5000)
        rec.exc_info = (type(exc), exc, exc.__traceback__)
    out = fmt.format(rec)
    assert out.startswith("y" * 100)
    assert "ValueError: boom" in out
