"""The socketmap server against real Postfix (postmap) and against bad input.

The daemon runs as a real process in the test world (its resolver is the world's unbound),
so every answer here comes from real DNS evidence or a stored override.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from policyd.adapters.store import Kind, Record
from policyd.adapters.store_sqlite import SqliteStore
from policyd.codec.postfix_policy import parse
from policyd.codec.records import override_to_json
from policyd.core.evidence import Override
from tests.daemon import Daemon, base_sections, postmap
from tests.world.world import World

pytestmark = pytest.mark.integration

READ_TIMEOUT = 15.0


def put_overrides(db: Path, items: dict[str, str]) -> None:
    async def run() -> None:
        store = await SqliteStore.open(f"sqlite:///{db}")
        for key, text in items.items():
            ov = Override(key, parse(text), comment="test", author="root", created_at=time.time())
            await store.put(Record(Kind.OVERRIDE, key, override_to_json(ov), None))
        await store.close()

    asyncio.run(run())


@pytest.fixture
def daemon(world: World, tmp_path: Path) -> Iterator[Daemon]:
    sections = base_sections(tmp_path, world.resolver)
    sections["server"]["request_timeout"] = 2.0
    put_overrides(
        tmp_path / "policyd.db",
        {"override.test": "encrypt", ".parent.test": "secure match=.parent.test"},
    )
    d = Daemon(tmp_path, sections)
    d.start()
    yield d
    d.stop()


def ask(sock: socket.socket, payload: bytes) -> bytes:
    sock.sendall(b"%d:%s," % (len(payload), payload))
    return read_netstring(sock)


def read_netstring(sock: socket.socket) -> bytes:
    sock.settimeout(READ_TIMEOUT)
    buf = b""
    while b":" not in buf:
        chunk = sock.recv(1)
        if not chunk:
            return b"<closed>"
        buf += chunk
    size = int(buf[:-1])
    body = b""
    while len(body) < size + 1:
        chunk = sock.recv(size + 1 - len(body))
        if not chunk:
            return b"<closed>"
        body += chunk
    assert body.endswith(b",")
    return body[:-1]


def connect(d: Daemon) -> socket.socket:
    s = socket.socket(socket.AF_UNIX)
    s.connect(d.socket)
    return s


def still_serving(d: Daemon) -> None:
    with connect(d) as s:
        assert ask(s, b"postfix override.test") == b"OK encrypt"


def test_postmap_unix_and_inet(daemon: Daemon) -> None:
    assert daemon.postmap("override.test") == ["encrypt"]
    assert daemon.postmap("OVERRIDE.TEST.") == ["encrypt"]
    assert daemon.postmap("override.test", tcp=True) == ["encrypt"]
    assert daemon.postmap("nonexistent.test") == ["NOTFOUND"]
    assert daemon.postmap(".parent.test") == ["secure match=.parent.test"]
    assert daemon.postmap(".other.test") == ["NOTFOUND"]


def test_postmap_bulk_thousand_keys(daemon: Daemon) -> None:
    keys = [f"n{i}.nonexistent.test" for i in range(995)]
    keys += [
        "override.test",
        "Override.Test.",
        ".parent.test",
        "x.nonexistent.test",
        "[override.test]:587",
    ]
    got = daemon.postmap(*keys)
    assert len(got) == 1000
    expected = ["NOTFOUND"] * 995 + [
        "encrypt",
        "encrypt",
        "secure match=.parent.test",
        "NOTFOUND",
        "NOTFOUND",
    ]
    assert got == expected


def test_unknown_map_name_is_perm(daemon: Daemon) -> None:
    with connect(daemon) as s:
        assert ask(s, b"nosuchprofile override.test").startswith(b"PERM unknown map name")
        # the connection stays usable after a PERM for a well-formed request
        assert ask(s, b"postfix override.test") == b"OK encrypt"
    table = f"socketmap:unix:{daemon.socket}:nosuchprofile"
    assert postmap(table, ["override.test"])[0].startswith("ERROR")


def test_keys_as_postfix_sends_them(daemon: Daemon) -> None:
    with connect(daemon) as s:
        assert ask(s, b"postfix [override.test]") == b"NOTFOUND "
        assert ask(s, "postfix bücher.nonexistent.test".encode()) == b"NOTFOUND "
        assert ask(s, b"postfix a..b").startswith(b"PERM")
        assert ask(s, b"postfix foo bar").startswith(b"PERM")
        assert ask(s, b"postfix [unterminated").startswith(b"PERM")
        assert ask(s, b"postfix override.test") == b"OK encrypt"


@pytest.mark.parametrize(
    ("raw", "closes"),
    [
        (b"abc:postfix x,", True),  # non-digit length
        (b"10000000:" + b"a" * 4096, True),  # 10 MB length prefix followed by data
        (b"01:a,", True),  # leading zero
        (b"5:hello!", True),  # wrong terminator
        (b"10:postfixfoo,", False),  # missing space: a PERM reply, connection kept
        (b"0:,", False),  # empty request
        (b"14:postfix \xff\xfe\xfd\xfc\xfb\xfa,", False),  # invalid UTF-8
    ],
)
def test_bad_input_then_still_serving(daemon: Daemon, raw: bytes, closes: bool) -> None:
    with connect(daemon) as s:
        s.sendall(raw)
        reply = read_netstring(s)
        assert reply.startswith(b"PERM"), reply
        if closes:
            # a framing error cannot be resynchronised: the server closes
            assert s.recv(1) == b""
    still_serving(daemon)


def test_oversized_key(daemon: Daemon) -> None:
    with connect(daemon) as s:
        key = b"a" * 10000
        reply = ask(s, b"postfix " + key)
        assert reply.startswith(b"PERM")
    still_serving(daemon)


def test_half_netstring_then_silence_is_closed(daemon: Daemon) -> None:
    with connect(daemon) as s:
        s.sendall(b"30:postfix overr")
        s.settimeout(10)
        t0 = time.monotonic()
        assert s.recv(100) == b""  # closed after request_timeout (2 s here)
        assert time.monotonic() - t0 < 8
    still_serving(daemon)


def test_two_thousand_idle_connections(daemon: Daemon) -> None:
    socks = []
    try:
        for _ in range(2000):
            s = socket.socket(socket.AF_UNIX)
            s.connect(daemon.socket)
            socks.append(s)
        still_serving(daemon)
        # and every one of them still gets an answer
        for s in socks[::100]:
            assert ask(s, b"postfix override.test") == b"OK encrypt"
    finally:
        for s in socks:
            s.close()
    still_serving(daemon)


def test_many_requests_one_connection_pipelined(daemon: Daemon) -> None:
    with connect(daemon) as s:
        payloads = [f"postfix p{i}.nonexistent.test".encode() for i in range(200)]
        payloads[100] = b"postfix override.test"
        s.sendall(b"".join(b"%d:%s," % (len(p), p) for p in payloads))
        replies = [read_netstring(s) for _ in payloads]
    assert replies[100] == b"OK encrypt"
    assert replies[:100] == [b"NOTFOUND "] * 100


def test_sighup_bad_config_keeps_old_and_sigterm_exits_zero(daemon: Daemon) -> None:
    good = daemon.config_path.read_text()
    daemon.config_path.write_text(good + "\n[bogus]\nx = 1\n")
    daemon.signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while "keeping the old configuration" not in daemon.log():
        assert time.monotonic() < deadline, daemon.log()
        time.sleep(0.05)
    still_serving(daemon)
    daemon.config_path.write_text(good)
    assert daemon.stop() == 0
    assert "stopping" in daemon.log()


def test_sighup_names_tables_that_need_a_restart(daemon: Daemon) -> None:
    """Review L6: a change a reload cannot apply is said, never dropped silently."""
    good = daemon.config_path.read_text()
    daemon.config_path.write_text(good + "\n[probe]\nconcurrency = 3\n")
    try:
        daemon.signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "reloaded" not in daemon.log():
            assert time.monotonic() < deadline, daemon.log()
            time.sleep(0.05)
        assert "reload: changes to [probe] take effect after a restart" in daemon.log()
        still_serving(daemon)
    finally:
        daemon.config_path.write_text(good)


def test_restart_answers_from_store(daemon: Daemon) -> None:
    assert daemon.postmap("override.test") == ["encrypt"]
    daemon.restart()
    assert daemon.postmap("override.test") == ["encrypt"]


def test_decision_change_log_line(daemon: Daemon) -> None:
    daemon.postmap("override.test")
    deadline = time.monotonic() + 5
    while "override.test: level=encrypt reason=override by root: test" not in daemon.log():
        assert time.monotonic() < deadline, daemon.log()
        time.sleep(0.05)
    assert "policyd[" in daemon.log()


def test_trickled_request_closed_after_request_timeout(daemon: Daemon) -> None:
    # One byte per 0.5 s never leaves the connection silent, but the request started at the
    # first byte: request_timeout (2 s here, swept every second) closes it by about 3 s.
    request = b"60:postfix " + b"a" * 100
    with connect(daemon) as s:
        t0 = time.monotonic()
        closed_after = None
        for byte in request:
            try:
                s.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                closed_after = time.monotonic() - t0
                break
            s.settimeout(0.5)
            try:
                if s.recv(100) == b"":
                    closed_after = time.monotonic() - t0
                    break
            except TimeoutError:
                continue
            except ConnectionResetError:  # closed with our bytes unread: a reset
                closed_after = time.monotonic() - t0
                break
        assert closed_after is not None, "a trickled request kept its connection"
        assert closed_after < 4.5
    still_serving(daemon)


def test_max_connections_closes_the_longest_idle(world: World, tmp_path: Path) -> None:
    sections = base_sections(tmp_path, world.resolver)
    sections["server"]["max_connections"] = 20
    put_overrides(tmp_path / "policyd.db", {"override.test": "encrypt"})
    d = Daemon(tmp_path, sections)
    d.start()
    socks: list[socket.socket] = []
    try:
        for _ in range(20):
            socks.append(connect(d))
        # the first one speaks, so the second is now the longest idle
        assert ask(socks[0], b"postfix override.test") == b"OK encrypt"
        time.sleep(0.2)
        with connect(d) as newcomer:
            assert ask(newcomer, b"postfix override.test") == b"OK encrypt"
            socks[1].settimeout(5)
            assert socks[1].recv(1) == b""  # closed to admit the newcomer
            assert ask(socks[0], b"postfix override.test") == b"OK encrypt"
            assert ask(socks[2], b"postfix override.test") == b"OK encrypt"
    finally:
        for s in socks:
            s.close()
        d.stop()
