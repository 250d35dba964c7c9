"""What a hostile MTA-STS policy costs: parse and decide times for the worst bodies a
domain owner can serve (64 KiB, the RFC 8461 3.3 limit policyd enforces).

A policy with more than MAX_MX_PATTERNS distinct mx patterns is refused as invalid, so
the 8,000-pattern body must be refused quickly; a body repeating one pattern 8,000 times
is valid and must parse and decide quickly; a policy at the cap with the longest names
must decide quickly and fit one socketmap reply. Each figure is the median of --runs runs.

    .venv/bin/python bench/hostile_policy.py [--runs 50]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from policyd.codec.mtasts import MAX_POLICY_BYTES, StsGrammarError, parse_policy
from policyd.codec.socketmap import MAX_REPLY, reply_for
from policyd.core.decide import decide
from policyd.core.evidence import MAX_MX_PATTERNS, Destination, Evidence, StsEvidence
from policyd.core.profile import DEFAULT_PROFILES, Profile
from policyd.told import as_sent

BUDGET_MS = 10.0  # the bound issue 12 sets for parse + decide
# The built-in profiles, and one with the Postfix 3.10 attributes (the longest replies).
PROFILES = (*DEFAULT_PROFILES, Profile("tlsrpt", sts_attributes=True))
NOW = 1_800_000_000.0
DOMAIN = "hostile.example"


def body(patterns: list[str]) -> bytes:
    lines = ["version: STSv1", "mode: enforce", *(f"mx: {p}" for p in patterns), "max_age: 86400"]
    return ("\n".join(lines) + "\n").encode()


def fill(make: Callable[[int], str]) -> bytes:
    """As many ``mx`` lines as fit in MAX_POLICY_BYTES (8 bytes each for 3-letter names)."""
    fixed = len(body([]))
    count = (MAX_POLICY_BYTES - fixed) // len(f"mx: {make(0)}\n")
    return body([make(i) for i in range(count)])


def label(i: int) -> str:
    """A distinct 3-character LDH label per i (a TLD-like name: the shortest pattern)."""
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    return "abcdefghijklmnopqrstuvwxyz"[i // 1296 % 26] + alphabet[i // 36 % 36] + alphabet[i % 36]


def long_name(i: int) -> str:
    """A 253-octet name (RFC 1035 2.3.4), distinct per i."""
    head = f"h{i:03d}"
    labels = [head + "a" * (63 - len(head)), "b" * 63, "c" * 63, "d" * 61]
    return ".".join(labels)


def timed_ms(fn: Callable[[], object], runs: int) -> tuple[float, float]:
    """Median and best of ``runs`` runs, in milliseconds (the best shows the cost itself
    on a machine other jobs share)."""
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times), min(times)


def parse_and_decide(raw: bytes) -> tuple[str, int]:
    """Parse, then decide for every profile of PROFILES; the longest reply in bytes."""
    try:
        policy = parse_policy(raw, DOMAIN, NOW).policy("hostile1")
    except StsGrammarError as exc:
        return f"refused ({exc})", 0
    ev = Evidence(Destination(DOMAIN), sts=StsEvidence(policy))
    longest = max(len(reply_for(as_sent(decide(ev, p, NOW)))) for p in PROFILES)
    return f"valid, {len(policy.mx)} distinct patterns", longest


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    cases = {
        "distinct patterns": fill(label),
        "one pattern repeated": fill(lambda _i: "mxa"),
        f"{MAX_MX_PATTERNS} names of 253 octets (the cap)": body(
            [long_name(i) for i in range(MAX_MX_PATTERNS)]
        ),
    }
    runs = args.runs
    print(
        f"budget {BUDGET_MS:g} ms for parse + decide ({len(PROFILES)} profiles), median of {runs}"
    )
    worst = 0.0
    for name, raw in cases.items():
        count = raw.count(b"\nmx: ")
        outcome, reply = parse_and_decide(raw)
        ms, best = timed_ms(lambda raw=raw: parse_and_decide(raw), args.runs)  # type: ignore[misc]
        worst = max(worst, ms)
        fits = f", longest reply {reply} of {MAX_REPLY} bytes" if reply else ""
        print(
            f"{name}: {len(raw)} bytes, {count} mx lines: {ms:.2f} ms (best {best:.2f}),"
            f" {outcome}{fits}"
        )
    print(f"worst: {worst:.2f} ms ({'within' if worst < BUDGET_MS else 'OVER'} budget)")
    return 0 if worst < BUDGET_MS else 1


if __name__ == "__main__":
    sys.exit(main())
