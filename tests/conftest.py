"""Shared fixtures: the test world (root, network namespace, real DNS) and a running policyd.

Hypothesis runs under the ``ci`` profile unless HYPOTHESIS_PROFILE names another: CI is a
loaded 2-core machine, where wall-clock health checks and per-example deadlines fail tests
that are correct.  The profile drops only those timing checks; every property keeps its
example count and its assertions, and no example database carries state between runs.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

from tests.world.fixtures import world  # noqa: F401  (the session-scoped test world)

settings.register_profile(
    "ci",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    database=None,
    print_blob=True,
)
settings.register_profile("dev", deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
