"""A resolver outage against the real daemon: unbound of the test world is stopped.

New destinations get TEMP within 5 s with the default DNS timeouts, and at once once the
outage is known (the adapter's breaker); known destinations keep their answers through the
outage, also after a restart during it (from the store); the breaker closes by itself when
unbound is back.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon import Daemon, base_sections, running
from tests.world.world import World

pytestmark = pytest.mark.integration

READ_TIMEOUT = 15.0


def ask(d: Daemon, key: str) -> tuple[bytes, float]:
    """One lookup on a fresh unix connection: (reply payload, seconds)."""
    payload = f"postfix {key}".encode()
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(READ_TIMEOUT)
        s.connect(d.socket)
        t0 = time.monotonic()
        s.sendall(b"%d:%s," % (len(payload), payload))
        buf = b""
        while not (b":" in buf and len(buf) > buf.index(b":") + int(buf[: buf.index(b":")])):
            chunk = s.recv(4096)
            assert chunk, "connection closed"
            buf += chunk
        elapsed = time.monotonic() - t0
    size = int(buf[: buf.index(b":")])
    start = buf.index(b":") + 1
    return buf[start : start + size], elapsed


@pytest.fixture
def daemon(world: World, tmp_path: Path) -> Iterator[Daemon]:
    sections = base_sections(tmp_path, world.resolver)
    sections["probe"] = {"enabled": False}
    # The default DNS timeouts (2 s per try, 5 s per lookup): "within 5 s" is about them.
    # Evidence lives 2 s at most, so that known destinations must be rebuilt during the
    # outage instead of coming from the answer cache.
    sections["dns"] = {"nameservers": [world.resolver], "min_ttl": 1, "max_ttl": 2}
    try:
        yield from running(Daemon(tmp_path, sections))
    finally:
        if not world.unbound.running:
            world.start_unbound()


def test_outage_new_destinations_temp_fast_known_ones_kept(daemon: Daemon, world: World) -> None:
    assert ask(daemon, "dane-ee.test")[0] == b"OK dane-only"
    assert ask(daemon, "insecure.test")[0] == b"NOTFOUND "
    time.sleep(1.5)  # the kept answers reach the store (one batch a second)
    world.stop_unbound()
    try:
        reply, took = ask(daemon, "dane-ta.test")  # never seen
        assert reply.startswith(b"TEMP"), reply
        assert took < 5.0, took
        reply, took = ask(daemon, "dane-partial.test")  # never seen, outage known now
        assert reply.startswith(b"TEMP"), reply
        assert took < 0.1, took
        time.sleep(3.0)  # the evidence of the known ones has expired
        assert ask(daemon, "dane-ee.test")[0] == b"OK dane-only"
        assert ask(daemon, "insecure.test")[0] == b"NOTFOUND "
        # a restart during the outage: the known answers come from the store
        daemon.restart()
        reply, took = ask(daemon, "dane-ee.test")
        assert reply == b"OK dane-only", reply
        assert took < 5.0, took
        assert ask(daemon, "insecure.test")[0] == b"NOTFOUND "
        reply, took = ask(daemon, "implicit.test")
        assert reply.startswith(b"TEMP"), reply
        assert took < 0.1, took
        assert "resolver not answering" in daemon.log()
    finally:
        world.start_unbound()
    # the breaker closes by itself once unbound answers again
    deadline = time.monotonic() + 15.0
    while True:
        reply, _ = ask(daemon, "dane-ta.test")
        if reply == b"OK dane-only":
            break
        assert time.monotonic() < deadline, reply
        time.sleep(0.5)
    assert "resolver answers again" in daemon.log()
