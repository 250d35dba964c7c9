"""Shared fixtures: the test world (root, network namespace, real DNS) and a running policyd."""

from __future__ import annotations

from tests.world.fixtures import world  # noqa: F401  (the session-scoped test world)
