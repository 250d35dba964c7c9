"""The blocking control client (policyd/cli/control_client.py) against a scripted peer."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from policyd.cli.control_client import ControlClient, ControlError, Trouble
from policyd.codec import control
from policyd.codec.control import ErrorCode, results

STATUS_DOC: control.JsonObject = {
    "version": "1", "uptime": 1.0, "listeners": [], "store": "sqlite", "connections": None,
    "refused": None, "cache": {"answers": 0, "verdicts": 0, "overrides": 0},
    "lookups": {"lookups": 0, "hits": 0, "temp": 0, "perm": 0}, "probe": None,
    "mta_sts": None, "fleet": None, "prefetch": None,
}  # fmt: skip

Script = Callable[[socket.socket, list[control.Request]], None]


@contextlib.contextmanager
def _peer(path: str, script: Script) -> Iterator[None]:
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen()

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            decoder = control.request_decoder()
            requests: list[control.Request] = []
            while not requests:
                decoder.receive_data(conn.recv(65536))
                while (msg := decoder.next_message()) is not control.NEED_DATA:
                    requests.append(msg)
            script(conn, requests)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield
    listener.close()
    thread.join(timeout=5)


@pytest.fixture
def path(tmp_path: Path) -> str:
    return str(tmp_path / "control.sock")


def _ok(doc: control.JsonValue) -> bytes:
    return control.encode_reply(control.Ok(doc))


def test_exchange_pipelines_requests_and_keeps_their_order(path: str) -> None:
    def script(conn: socket.socket, reqs: list[control.Request]) -> None:
        conn.sendall(b"".join(_ok({"n": i}) for i, _ in enumerate(reqs)))

    with _peer(path, script):
        replies = ControlClient(path, 5.0).exchange([control.Status(), control.OverrideList()])
    assert replies == [control.Ok({"n": 0}), control.Ok({"n": 1})]


def test_call_decodes_the_typed_result(path: str) -> None:
    with _peer(path, lambda conn, _reqs: conn.sendall(_ok(STATUS_DOC))):
        result = ControlClient(path, 5.0).call(control.Status())
    assert isinstance(result, results.StatusResult) and result.store == "sqlite"


def test_a_failure_reply_raises_with_the_failure(path: str) -> None:
    failure = control.Failure(ErrorCode.NOTFOUND, "no override for a.example")
    reply = control.encode_reply(failure)
    with (
        _peer(path, lambda conn, _reqs: conn.sendall(reply)),
        pytest.raises(ControlError) as caught,
    ):
        ControlClient(path, 5.0).call(control.OverrideList())
    assert caught.value.trouble is Trouble.FAILED and caught.value.failure == failure


def test_the_deadline_bounds_the_whole_exchange(path: str) -> None:
    """One reply, then silence: the client gives up at its deadline with what it got."""
    done = threading.Event()

    def script(conn: socket.socket, _reqs: list[control.Request]) -> None:
        conn.sendall(_ok({"n": 0}))
        done.wait(5)

    with _peer(path, script):
        with pytest.raises(ControlError) as caught:
            ControlClient(path, 0.2).exchange([control.Status(), control.Status()])
        done.set()
    assert caught.value.trouble is Trouble.TIMEOUT
    assert caught.value.replies == (control.Ok({"n": 0}),)
    assert "within 0.2s" in caught.value.message


@pytest.mark.parametrize(
    ("reply", "trouble"),
    [(b"", Trouble.LOST), (b"garbage\n", Trouble.BAD_REPLY), (_ok({"x": 1}), Trouble.BAD_REPLY)],
)
def test_transport_and_protocol_trouble(path: str, reply: bytes, trouble: Trouble) -> None:
    with (
        _peer(path, lambda conn, _reqs: conn.sendall(reply)),
        pytest.raises(ControlError) as caught,
    ):
        ControlClient(path, 5.0).call(control.Status())
    assert caught.value.trouble is trouble


def test_no_daemon(path: str) -> None:
    with pytest.raises(ControlError) as caught:
        ControlClient(path, 5.0).exchange([control.Status()])
    assert caught.value.trouble is Trouble.UNREACHABLE
    assert caught.value.message.startswith(f"daemon unreachable at {path}")
