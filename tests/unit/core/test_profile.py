"""policyd.core.profile: the shipped profiles, and what a profile name may be."""

from __future__ import annotations

import pytest

from policyd.core.profile import DEFAULT_PROFILES, Fallback, Profile


def test_profiles() -> None:
    names = [p.name for p in DEFAULT_PROFILES]
    assert names == ["postfix", "strict"]
    with pytest.raises(ValueError):
        Profile("")
    with pytest.raises(ValueError):
        Profile("has space")
    with pytest.raises(ValueError):
        Profile("x", probe_no_tls=Fallback.ENCRYPT)
    Profile("a-b_c.d1")
