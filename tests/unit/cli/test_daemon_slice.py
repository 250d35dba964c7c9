"""What the daemon says about [server] cpu_slice, for each answer the kernel may give
(the asking itself: tests/unit/adapters/test_cpu_slice.py, tests/integration/test_cpu_slice.py)."""

from __future__ import annotations

import logging

import pytest

from policyd.adapters.cpu_slice import Outcome, SliceResult
from policyd.cli import daemon as daemon_module


def said(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, result: SliceResult
) -> list[tuple[int, str]]:
    asked: list[float] = []

    def request_slice(seconds: float) -> SliceResult:
        asked.append(seconds)
        return result

    monkeypatch.setattr(daemon_module, "request_slice", request_slice)
    with caplog.at_level(logging.INFO, logger="policyd"):
        daemon_module.ask_cpu_slice(0.0001)
    assert asked == [0.0001]
    return [(r.levelno, r.getMessage()) for r in caplog.records]


def test_a_slice_taken_is_logged(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    result = SliceResult(Outcome.SET, slice=0.0001)
    assert said(monkeypatch, caplog, result) == [
        (logging.INFO, "scheduler slice 0.10 ms ([server] cpu_slice)")
    ]


def test_a_refusal_is_a_warning_that_names_the_filter(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    result = SliceResult(Outcome.REFUSED, detail="sched_setattr: Operation not permitted")
    [(level, message)] = said(monkeypatch, caplog, result)
    assert level == logging.WARNING
    assert "sched_setattr: Operation not permitted" in message
    assert "@resources" in message


@pytest.mark.parametrize(
    ("result", "words"),
    [
        (SliceResult(Outcome.IGNORED), "Linux 6.12 or later"),
        (SliceResult(Outcome.KEPT, detail="scheduling policy 5"), "scheduling policy 5"),
        (SliceResult(Outcome.UNSUPPORTED, detail="linux vax"), "not supported on linux vax"),
    ],
)
def test_the_other_answers_are_said(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    result: SliceResult,
    words: str,
) -> None:
    [(level, message)] = said(monkeypatch, caplog, result)
    assert level == logging.INFO
    assert message.startswith("[server] cpu_slice not applied: ")
    assert words in message


def test_zero_asks_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(daemon_module, "request_slice", pytest.fail)
    daemon_module.ask_cpu_slice(0.0)
