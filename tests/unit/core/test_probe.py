"""policyd.core.probe: the observed level of a probe round, and damping."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from policyd.core import probe
from policyd.core.decide import decide
from policyd.core.evidence import (
    Destination,
    Evidence,
    ProbeHost,
    ProbeLevel,
    ProbeState,
    ProbeVerdict,
)
from policyd.core.profile import DEFAULT_PROFILES
from policyd.core.types import Policy, TlsLevel

HOUR = 3600.0


# --- probe: observed level and damping -------------------------------------------------


def ph(verdict: ProbeVerdict, host: str = "mx.example.com") -> ProbeHost:
    return ProbeHost(host, "192.0.2.1", verdict)


V, SS, NT, UR = (
    ProbeVerdict.VALID,
    ProbeVerdict.SELF_SIGNED,
    ProbeVerdict.NO_STARTTLS,
    ProbeVerdict.UNREACHABLE,
)
VERIFY_ROUND = (ph(V, "a"), ph(V, "b"))
ENCRYPT_ROUND = (ph(V, "a"), ph(SS, "b"))
MAY_ROUND = (ph(V, "a"), ph(NT, "b"))
UNREACHABLE_ROUND = (ph(UR, "a"), ph(UR, "b"))


@pytest.mark.parametrize(
    ("hosts", "level"),
    [
        ((), None),
        (UNREACHABLE_ROUND, None),
        (VERIFY_ROUND, ProbeLevel.VERIFY),
        ((ph(V, "a"), ph(UR, "b")), ProbeLevel.VERIFY),
        (ENCRYPT_ROUND, ProbeLevel.ENCRYPT),
        ((ph(ProbeVerdict.EXPIRED),), ProbeLevel.ENCRYPT),
        ((ph(ProbeVerdict.NAME_MISMATCH),), ProbeLevel.ENCRYPT),
        (MAY_ROUND, ProbeLevel.MAY),
        ((ph(ProbeVerdict.TLS_INTOLERANT), ph(UR)), ProbeLevel.MAY),
    ],
)
def test_observed_level(hosts: tuple[ProbeHost, ...], level: ProbeLevel | None) -> None:
    assert probe.observed_level(hosts) is level


def test_verified_names() -> None:
    hosts = (ph(V, "a"), ph(SS, "b"), ph(V, "a"), ph(V, "c"))
    assert probe.verified_names(hosts) == ("a", "c")


def test_damping_validation() -> None:
    with pytest.raises(ValueError):
        probe.Damping(confirm_probes=0)
    with pytest.raises(ValueError):
        probe.Damping(confirm_seconds=-1)


D = probe.Damping(confirm_probes=3, confirm_seconds=6 * HOUR)


def run(
    rounds: Sequence[tuple[float, tuple[ProbeHost, ...]]],
    state: ProbeState | None = None,
    damping: probe.Damping = D,
) -> list[tuple[ProbeState, bool]]:
    out: list[tuple[ProbeState, bool]] = []
    for now, hosts in rounds:
        state, held = probe.advance(state, hosts, now, damping)
        out.append((state, held))
    return out


def test_first_observation_applies() -> None:
    ((state, held),) = run([(0.0, MAY_ROUND)])
    assert state.level is ProbeLevel.MAY and not held
    assert state.probed_at == 0.0 and state.hosts == MAY_ROUND


def test_stronger_level_applies_at_once() -> None:
    res = run([(0.0, MAY_ROUND), (1.0, ENCRYPT_ROUND), (2.0, VERIFY_ROUND)])
    assert [s.level for s, _ in res] == [ProbeLevel.MAY, ProbeLevel.ENCRYPT, ProbeLevel.VERIFY]
    assert not any(h for _, h in res)
    assert res[-1][0].verified_names == ("a", "b")


def test_weaker_level_needs_k_probes_over_t() -> None:
    rounds = [(0.0, VERIFY_ROUND)] + [(i * 3 * HOUR, MAY_ROUND) for i in range(1, 4)]
    res = run(rounds)
    levels = [s.level for s, _ in res]
    # probes at 3h, 6h, 9h: the third one is the K-th and 6h after the first weaker one.
    assert levels == [ProbeLevel.VERIFY, ProbeLevel.VERIFY, ProbeLevel.VERIFY, ProbeLevel.MAY]
    assert [h for _, h in res] == [False, True, True, False]
    held = res[2][0]
    assert held.pending is ProbeLevel.MAY and held.pending_count == 2
    assert held.pending_since == 3 * HOUR
    assert held.verified_names == ("a", "b")  # the names behind the level in force
    final = res[-1][0]
    assert final.pending is None and final.pending_count == 0


def test_weaker_level_k_probes_too_fast_are_held() -> None:
    rounds = [(0.0, VERIFY_ROUND)] + [(float(i), MAY_ROUND) for i in range(1, 10)]
    res = run(rounds)
    assert all(s.level is ProbeLevel.VERIFY for s, _ in res)
    assert res[-1][0].pending_count == 9
    # once the spread is reached, the next weaker probe applies
    ((state, held),) = run([(1.0 + 6 * HOUR, MAY_ROUND)], res[-1][0])
    assert state.level is ProbeLevel.MAY and not held


def test_weaker_level_spread_but_too_few_probes_held() -> None:
    res = run([(0.0, VERIFY_ROUND), (1.0, MAY_ROUND), (100 * HOUR, MAY_ROUND)])
    assert res[-1][0].level is ProbeLevel.VERIFY and res[-1][1]


def test_stronger_observation_resets_the_run() -> None:
    rounds = [
        (0.0, VERIFY_ROUND),
        (1 * HOUR, MAY_ROUND),
        (4 * HOUR, MAY_ROUND),
        (5 * HOUR, VERIFY_ROUND),  # not consecutive any more
        (8 * HOUR, MAY_ROUND),
        (20 * HOUR, MAY_ROUND),
    ]
    res = run(rounds)
    assert res[3][0].pending is None
    assert res[-1][0].level is ProbeLevel.VERIFY
    assert res[-1][0].pending_count == 2 and res[-1][0].pending_since == 8 * HOUR


def test_equal_observation_resets_the_run() -> None:
    res = run([(0.0, ENCRYPT_ROUND), (1.0, MAY_ROUND), (2.0, ENCRYPT_ROUND)])
    assert res[-1][0].level is ProbeLevel.ENCRYPT and res[-1][0].pending is None


def test_least_weak_of_the_run_wins() -> None:
    rounds = [
        (0.0, VERIFY_ROUND),
        (1 * HOUR, MAY_ROUND),
        (4 * HOUR, ENCRYPT_ROUND),
        (7 * HOUR, MAY_ROUND),
    ]
    res = run(rounds)
    assert res[-1][0].level is ProbeLevel.ENCRYPT


def test_unreachable_round_keeps_level() -> None:
    res = run([(0.0, VERIFY_ROUND), (10.0, UNREACHABLE_ROUND)])
    state, held = res[-1]
    assert state.level is ProbeLevel.VERIFY and not held
    assert state.hosts == VERIFY_ROUND and state.verified_names == ("a", "b")
    assert state.probed_at == 10.0


def test_unreachable_round_keeps_pending_run() -> None:
    rounds = [(0.0, VERIFY_ROUND), (1.0, MAY_ROUND), (2.0, UNREACHABLE_ROUND)]
    state, _ = run(rounds)[-1]
    assert state.level is ProbeLevel.VERIFY
    assert state.pending is ProbeLevel.MAY and state.pending_count == 1


def test_unreachable_from_nothing() -> None:
    ((state, held),) = run([(5.0, UNREACHABLE_ROUND)])
    assert state.level is None and not held and state.probed_at == 5.0
    ((state, _),) = run([(6.0, MAY_ROUND)], state)
    assert state.level is ProbeLevel.MAY


def test_k_one_t_zero_applies_at_once() -> None:
    res = run([(0.0, VERIFY_ROUND), (1.0, MAY_ROUND)], damping=probe.Damping(1, 0.0))
    assert res[-1][0].level is ProbeLevel.MAY and not res[-1][1]


_rounds = st.lists(
    st.tuples(
        st.floats(0, 10 * HOUR),
        st.sampled_from([VERIFY_ROUND, ENCRYPT_ROUND, MAY_ROUND, UNREACHABLE_ROUND]),
    ),
    max_size=12,
)


@given(_rounds, st.integers(1, 4), st.floats(0, 12 * HOUR))
def test_damping_never_lowers_without_k_probes_over_t(
    steps: list[tuple[float, tuple[ProbeHost, ...]]], k: int, t: float
) -> None:
    """A level only drops after >= K consecutive weaker probes spread over >= T."""
    damping = probe.Damping(k, t)
    now = 0.0
    state: ProbeState | None = None
    weaker_run: list[float] = []
    for gap, hosts in steps:
        now += gap
        before = state.level if state is not None else None
        seen = probe.observed_level(hosts)
        state, _ = probe.advance(state, hosts, now, damping)
        if seen is None:
            assert state.level is before
            continue
        if before is None or seen.strength >= before.strength:
            weaker_run = []
            assert state.level is seen
            continue
        weaker_run.append(now)
        if state.level is not before:
            assert state.level is not None and state.level.strength < before.strength
            assert len(weaker_run) >= k and weaker_run[-1] - weaker_run[0] >= t
            weaker_run = []


# --- probe: verified names re-pinned only after confirmation (issue 12 point 6) ----------

AB = (ph(V, "a"), ph(V, "b"))
FORGED = (ph(V, "evil"),)  # the MX forged to a host with a valid certificate of its own


def test_other_verified_names_are_held() -> None:
    # A DNS forger present during one probe must not re-pin secure match= to its host.
    ((state, held),) = run([(HOUR, FORGED)], run([(0.0, AB)])[-1][0])
    assert held
    assert state.level is ProbeLevel.VERIFY
    assert state.verified_names == ("a", "b")
    assert state.pending is ProbeLevel.VERIFY and state.pending_names == ("evil",)
    assert (state.pending_count, state.pending_since) == (1, HOUR)
    assert state.hosts == FORGED  # what was seen, for explain


def test_other_verified_names_apply_after_k_probes_over_t() -> None:
    rounds = [(0.0, AB)] + [(i * 3 * HOUR, FORGED) for i in range(1, 4)]
    res = run(rounds)
    assert [s.verified_names for s, _ in res] == [("a", "b"), ("a", "b"), ("a", "b"), ("evil",)]
    assert [h for _, h in res] == [False, True, True, False]
    final = res[-1][0]
    assert final.pending is None and final.pending_names == () and final.pending_count == 0


def test_other_verified_names_too_fast_are_held() -> None:
    res = run([(0.0, AB)] + [(float(i), FORGED) for i in range(1, 10)])
    assert all(s.verified_names == ("a", "b") for s, _ in res)
    assert res[-1][0].pending_count == 9


def test_the_old_names_seen_again_reset_the_run() -> None:
    res = run([(0.0, AB), (1 * HOUR, FORGED), (4 * HOUR, AB), (8 * HOUR, FORGED)])
    assert res[2][0].pending is None and res[2][0].pending_names == ()
    assert res[-1][0].verified_names == ("a", "b")
    assert (res[-1][0].pending_count, res[-1][0].pending_since) == (1, 8 * HOUR)


def test_a_different_new_set_restarts_the_count() -> None:
    other = (ph(V, "other"),)
    res = run([(0.0, AB), (1 * HOUR, FORGED), (4 * HOUR, other), (8 * HOUR, FORGED)])
    assert all(s.verified_names == ("a", "b") for s, _ in res)
    assert res[-1][0].pending_count == 1


def test_same_names_in_another_order_are_no_change() -> None:
    ((state, held),) = run([(HOUR, (ph(V, "b"), ph(V, "a")))], run([(0.0, AB)])[-1][0])
    assert not held and state.verified_names == ("a", "b") and state.pending is None


def test_an_unreachable_host_keeps_its_verified_name() -> None:
    # Unreachable says nothing about TLS: not a change of the verified set.
    ((state, held),) = run([(HOUR, (ph(V, "a"), ph(UR, "b")))], run([(0.0, AB)])[-1][0])
    assert not held and state.verified_names == ("a", "b")


def test_a_removed_mx_host_is_a_change_too() -> None:
    ((state, held),) = run([(HOUR, (ph(V, "a"),))], run([(0.0, AB)])[-1][0])
    assert held and state.verified_names == ("a", "b") and state.pending_names == ("a",)


def test_weaker_round_during_a_name_change_starts_a_weaker_run() -> None:
    res = run([(0.0, AB), (1 * HOUR, FORGED), (2 * HOUR, MAY_ROUND)])
    state = res[-1][0]
    assert state.level is ProbeLevel.VERIFY and state.verified_names == ("a", "b")
    assert state.pending is ProbeLevel.MAY and state.pending_names == ()
    assert (state.pending_count, state.pending_since) == (1, 2 * HOUR)


def test_stronger_level_brings_its_names_at_once() -> None:
    # From encrypt to verify the names are new, not re-pinned: applied at once as before.
    ((state, held),) = run([(HOUR, FORGED)], run([(0.0, ENCRYPT_ROUND)])[-1][0])
    assert not held and state.verified_names == ("evil",)


def test_secure_profile_keeps_match_while_names_are_held() -> None:
    strict = next(p for p in DEFAULT_PROFILES if p.name == "strict")
    state = run([(0.0, AB), (HOUR, FORGED)])[-1][0]
    verdict = decide(Evidence(Destination("example.com"), probe=state), strict, 2 * HOUR)
    assert verdict.policy == Policy(TlsLevel.SECURE, ("a", "b"), (("servername", "hostname"),))
    assert "holding names against evil seen 1x" in verdict.reason


_name_rounds = st.lists(
    st.tuples(st.floats(0, 10 * HOUR), st.sampled_from([AB, FORGED, (ph(V, "c"),)])),
    max_size=12,
)


@given(_name_rounds, st.integers(1, 4), st.floats(0, 12 * HOUR))
def test_names_never_change_without_k_probes_over_t(
    steps: list[tuple[float, tuple[ProbeHost, ...]]], k: int, t: float
) -> None:
    """Verified names in force change only after >= K consecutive rounds naming the same
    new set, spread over >= T."""
    damping = probe.Damping(k, t)
    now = 0.0
    state, _ = probe.advance(None, AB, now, damping)
    run_sets: list[tuple[float, frozenset[str]]] = []
    for gap, hosts in steps:
        now += gap
        before = state.verified_names
        seen = frozenset(probe.verified_names(hosts))
        state, _ = probe.advance(state, hosts, now, damping)
        if seen == frozenset(before):
            run_sets = []
        elif run_sets and run_sets[-1][1] == seen:
            run_sets.append((now, seen))
        else:
            run_sets = [(now, seen)]
        if state.verified_names != before:
            assert frozenset(state.verified_names) == seen
            assert len(run_sets) >= k and now - run_sets[0][0] >= t
            run_sets = []
