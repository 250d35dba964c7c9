"""From STARTTLS probe findings to a level, with downgrade damping.

A stronger observation applies at once. A weaker one applies only after it was seen on
``confirm_probes`` consecutive probes spread over at least ``confirm_seconds``: an on-path
attacker who strips STARTTLS or swaps a certificate once must not lower the level Postfix
uses for that destination. Until then the stronger level holds and the caller logs the
observation as a possible attack. A verified round naming other MX hosts than the
verified names in force needs the same confirmation before the names change (they may
become ``secure match=``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from policyd.core.evidence import ProbeHost, ProbeLevel, ProbeState, ProbeVerdict

# Defaults for damping; configurable in [probe] (etc/policyd.toml).
DEFAULT_CONFIRM_PROBES = 3
DEFAULT_CONFIRM_SECONDS = 6 * 3600.0


@dataclass(frozen=True, slots=True)
class Damping:
    confirm_probes: int = DEFAULT_CONFIRM_PROBES
    confirm_seconds: float = DEFAULT_CONFIRM_SECONDS

    def __post_init__(self) -> None:
        if self.confirm_probes < 1 or self.confirm_seconds < 0:
            raise ValueError("damping needs confirm_probes >= 1 and confirm_seconds >= 0")


def observed_level(hosts: tuple[ProbeHost, ...]) -> ProbeLevel | None:
    """The level one round of probes supports; None when no MX address was reachable."""
    reachable = [h for h in hosts if h.verdict.reachable]
    if not reachable:
        return None
    if any(not h.verdict.encrypted for h in reachable):
        return ProbeLevel.MAY
    if all(h.verdict is ProbeVerdict.VALID for h in reachable):
        return ProbeLevel.VERIFY
    return ProbeLevel.ENCRYPT


def verified_names(hosts: tuple[ProbeHost, ...]) -> tuple[str, ...]:
    names: list[str] = []
    for h in hosts:
        if h.verdict is ProbeVerdict.VALID and h.host not in names:
            names.append(h.host)
    return tuple(names)


def advance(
    state: ProbeState | None, hosts: tuple[ProbeHost, ...], now: float, damping: Damping
) -> tuple[ProbeState, bool]:
    """Fold one round of probe findings into the damped state.

    Returns the new state and whether a weaker observation is being held back
    (a possible attack, worth a log line).
    """
    seen = observed_level(hosts)
    fresh = ProbeState(seen, hosts, verified_names(hosts), probed_at=now)
    if seen is None:
        # Nothing reachable: no evidence about TLS, keep what we had.
        if state is None:
            return fresh, False
        return replace(state, probed_at=now), False
    if state is None or state.level is None or seen.strength > state.level.strength:
        return fresh, False
    if seen is state.level:
        if seen is ProbeLevel.VERIFY:
            names = _names_seen(state, hosts)
            if set(names) != set(state.verified_names):
                return _hold_names(state, fresh, names, now, damping)
            return replace(fresh, verified_names=state.verified_names), False
        return fresh, False
    # Weaker than the level in force: count it, the least weak of the run wins.
    if state.pending is None or state.pending_names:
        pending, count, since = seen, 1, now
    else:
        pending = seen if seen.strength > state.pending.strength else state.pending
        count, since = state.pending_count + 1, state.pending_since
    if count >= damping.confirm_probes and now - since >= damping.confirm_seconds:
        return replace(fresh, level=pending), False
    held = replace(
        state,
        hosts=hosts,
        pending=pending,
        pending_names=(),
        pending_count=count,
        pending_since=since,
        probed_at=now,
    )
    return held, True


def _names_seen(state: ProbeState, hosts: tuple[ProbeHost, ...]) -> tuple[str, ...]:
    """The verified names this round supports: those verified now, plus those in force
    whose hosts were probed but unreachable (unreachable says nothing about TLS)."""
    names = list(verified_names(hosts))
    reached = {h.host for h in hosts if h.verdict.reachable}
    unreachable = {h.host for h in hosts if not h.verdict.reachable}
    for name in state.verified_names:
        if name in unreachable and name not in reached and name not in names:
            names.append(name)
    return tuple(names)


def _hold_names(
    state: ProbeState,
    fresh: ProbeState,
    names: tuple[str, ...],
    now: float,
    damping: Damping,
) -> tuple[ProbeState, bool]:
    """Verified, but by other MX names than those in force. With ``probe_verified =
    secure`` the names become ``secure match=``: a DNS forger present during one probe
    (its MX pointing at a host with a valid certificate of its own) must not re-pin
    them at once. The new set applies only after the confirmation a weaker level needs:
    seen on ``confirm_probes`` consecutive probes over ``confirm_seconds``."""
    if state.pending_names and set(state.pending_names) == set(names):
        count, since = state.pending_count + 1, state.pending_since
    else:
        count, since = 1, now
    if count >= damping.confirm_probes and now - since >= damping.confirm_seconds:
        return replace(fresh, verified_names=names), False
    held = replace(
        state,
        hosts=fresh.hosts,
        pending=ProbeLevel.VERIFY,
        pending_names=names,
        pending_count=count,
        pending_since=since,
        probed_at=now,
    )
    return held, True
