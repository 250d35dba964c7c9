"""The session-scoped ``world`` fixture.  Import it from a conftest::

    from tests.world.fixtures import world  # noqa: F401

or load this module as a plugin: ``pytest -p tests.world.fixtures``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Final

import pytest

from tests.world import scenarios
from tests.world.procs import find_tool
from tests.world.world import World

# Programs the world starts or runs, with the Debian package that ships each.
TOOLS: Final = {
    "named": "bind9",
    "unbound": "unbound",
    "dnssec-keygen": "bind9-utils",
    "dnssec-signzone": "bind9-utils",
    "dnssec-dsfromkey": "bind9-utils",
    "ip": "iproute2",
}


def missing_requirement() -> str | None:
    """Why the world cannot be built here, or None when it can."""
    if os.geteuid() != 0:
        return "needs root: creates a network namespace"
    missing = [name for name in TOOLS if find_tool(name) is None]
    if missing:
        packages = sorted({TOOLS[name] for name in missing})
        return (
            f"missing {', '.join(missing)}: `make test` installs them "
            f"(Debian packages {', '.join(packages)})"
        )
    return None


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """The DANE world, built once per session.  The pytest main thread enters its network
    namespace for the rest of the session (until teardown), so every later subprocess and
    socket of the tests lives there."""
    reason = missing_requirement()
    if reason is not None:
        pytest.skip(reason)
    built = scenarios.build(tmp_path_factory.mktemp("world"))
    try:
        yield built
    finally:
        built.close()
