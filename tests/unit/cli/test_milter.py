"""policyd-milter: its settings, the bounded control client and the milter callbacks
(driven directly, without libmilter). The daemon's side of its two commands (warm,
check) is tested in tests/unit/test_admin.py."""

from __future__ import annotations

import logging
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import Milter
import pytest

from policyd.cli import milter as pm
from policyd.cli.control_client import ControlClient
from policyd.cli.milter import DaemonLink, PolicydMilter, WarmMemo, recipient_domain
from policyd.codec import control
from policyd.config import Config, ConfigError, parse
from policyd.core.evidence import (
    Destination,
)
from policyd.settings import MAX_MILTER_DOMAINS, MilterAction, MilterSettings

MARGIN = 0.4  # seconds of scheduling slack on a loaded test machine
BOUND = 0.3  # the milter's bound in these tests

# -- a fake daemon on a unix socket ----------------------------------------------------

Handler = Callable[[control.Request], control.Reply | None]  # None: never answer


class _Server(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True
    handler: Handler
    seen: list[control.Request]


class _Conn(socketserver.BaseRequestHandler):
    server: _Server

    def handle(self) -> None:
        decoder = control.request_decoder()
        while True:
            msg = decoder.next_message()
            if msg is control.NEED_DATA:
                data = self.request.recv(4096)
                if not data:
                    return
                decoder.receive_data(data)
                continue
            self.server.seen.append(msg)
            reply = self.server.handler(msg)
            if reply is None:
                self.request.recv(4096)  # hold the connection until the client gives up
                return
            self.request.sendall(control.encode_reply(reply))


class FakeDaemon:
    def __init__(self, path: str, handler: Handler) -> None:
        self.path = path
        self.server = _Server(path, _Conn)
        self.server.handler = handler
        self.server.seen = []
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def seen(self) -> list[control.Request]:
        return self.server.seen

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


PROBLEMS = {"broken.example": "MTA-STS enforce: no MX host (mx.other.net) matches (mx.x)"}


def answering(req: control.Request) -> control.Reply:
    if isinstance(req, control.Warm):
        return control.Ok({"scheduled": len(req.destinations), "requested": 1})
    if isinstance(req, control.Check):
        key = req.destination.key
        return control.Ok({"destination": key, "level": "secure", "problem": PROBLEMS.get(key)})
    return control.Failure(control.ErrorCode.USAGE, "unexpected")


def silent(req: control.Request) -> None:
    return None


@pytest.fixture
def sock_path(tmp_path: Path) -> str:
    return str(tmp_path / "c.sock")


@pytest.fixture
def daemon(sock_path: str) -> Iterator[FakeDaemon]:
    d = FakeDaemon(sock_path, answering)
    yield d
    d.close()


@pytest.fixture
def stuck(sock_path: str) -> Iterator[FakeDaemon]:
    d = FakeDaemon(sock_path, silent)
    yield d
    d.close()


# -- settings: [milter], read by the one loader (policyd.config) -------------------------


def test_defaults() -> None:
    s = MilterSettings()
    assert (s.socket, s.control, s.action, s.timeout, s.max_domains) == (
        "inet:8893@127.0.0.1",
        "",
        MilterAction.LOG,
        0.5,
        50,
    )
    assert pm.control_path(Config()) == "/run/policyd/control.sock"


def test_max_domains_bound_is_the_control_protocols() -> None:
    assert MAX_MILTER_DOMAINS == control.MAX_WARM_DOMAINS


def test_settings_take_the_control_socket_from_the_server_table() -> None:
    config = parse(
        {
            "server": {"control": "unix:/srv/policyd/control.sock"},
            "milter": {"action": "header", "timeout": 1, "socket": "unix:/run/m.sock"},
        }
    )
    s = config.milter
    assert pm.control_path(config) == "/srv/policyd/control.sock"
    assert s.action is MilterAction.HEADER and s.timeout == 1.0
    own = parse({"server": {"control": "unix:/a"}, "milter": {"control": "/b"}})
    assert pm.control_path(own) == "/b"
    prefixed = parse({"milter": {"control": "unix:/c"}})
    assert pm.control_path(prefixed) == "/c"
    assert parse({}).milter == MilterSettings()


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"actoin": "log"}, "milter.actoin: unknown key"),
        ({"action": "reject"}, "milter.action: 'reject' is not one of none, log, header, tempfail"),
        ({"timeout": 0}, "timeout must be more than 0"),
        ({"timeout": 60}, "at most 10 seconds"),
        ({"timeout": "fast"}, "milter.timeout: expected a number"),
        ({"max_domains": True}, "milter.max_domains: expected an integer"),
        ({"max_domains": 0}, "max_domains must be 1 to 100"),
        ({"socket": "8893"}, "expected inet:PORT@HOST"),
        ({"control": "inet:127.0.0.1:1"}, "control 'inet:127.0.0.1:1'"),
    ],
)
def test_bad_settings_are_named(table: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse({"milter": table})


def test_main_check_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.toml"
    good.write_text('[milter]\naction = "tempfail"\n')
    assert pm.main(["--config", str(good), "--check-config"]) == 0
    bad = tmp_path / "bad.toml"
    bad.write_text('[milter]\naction = "reject"\n')
    assert pm.main(["--config", str(bad), "--check-config"]) == 1
    assert "milter.action" in capsys.readouterr().err
    assert pm.main(["--config", str(tmp_path / "missing.toml"), "--check-config"]) == 1


# -- recipients ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rcpt", "domain"),
    [
        ("<User@Example.COM>", "example.com"),
        ("<a@Exämple.com.>", "xn--exmple-cua.com"),
        ('<"x@y"@z.example>', "z.example"),
        ("bare@example.org", "example.org"),
        ("<postmaster>", None),
        ("<>", None),
        ("<a@[192.0.2.1]>", None),
        ("<a@-bad.example>", None),
        ("<a@\udcff.example>", None),  # undecodable bytes (pymilter's surrogateescape)
    ],
)
def test_recipient_domain(rcpt: str, domain: str | None) -> None:
    assert recipient_domain(rcpt) == domain


def test_warm_memo_claims_each_domain_once_per_interval() -> None:
    now = [100.0]
    memo = WarmMemo(lambda: now[0])
    assert memo.claim(["a.example", "b.example"]) == ["a.example", "b.example"]
    assert memo.claim(["a.example", "c.example"]) == ["c.example"]
    now[0] += pm.WARM_MEMO_SECONDS
    assert memo.claim(["a.example"]) == ["a.example"]


# -- the control client ----------------------------------------------------------------


def test_client_pipelines_requests_on_one_connection(daemon: FakeDaemon) -> None:
    client = DaemonLink(ControlClient(daemon.path, BOUND))
    replies = client.exchange(
        [
            control.Warm((Destination("a.example"),)),
            control.Check(Destination("broken.example")),
        ]
    )
    assert [type(r) for r in replies] == [control.Ok, control.Ok]
    assert isinstance(replies[1], control.Ok)
    assert isinstance(replies[1].result, dict)
    assert replies[1].result["problem"] == PROBLEMS["broken.example"]


def test_client_gives_up_after_its_bound(
    stuck: FakeDaemon, caplog: pytest.LogCaptureFixture
) -> None:
    client = DaemonLink(ControlClient(stuck.path, BOUND))
    started = time.monotonic()
    assert client.exchange([control.Check(Destination("a.example"))]) == []
    assert time.monotonic() - started < BOUND + MARGIN
    assert "unavailable: no reply from the daemon within 0.3s" in caplog.text
    caplog.clear()
    client.exchange([control.Check(Destination("a.example"))])
    assert "unavailable" not in caplog.text  # logged once per outage, not per message


def test_client_without_a_daemon(sock_path: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="policyd.milter")
    client = DaemonLink(ControlClient(sock_path, BOUND))
    assert client.exchange([control.Check(Destination("a.example"))]) == []
    assert "unavailable" in caplog.text
    d = FakeDaemon(sock_path, answering)
    try:
        assert len(client.exchange([control.Check(Destination("a.example"))])) == 1
        assert "answers again" in caplog.text
    finally:
        d.close()


def test_a_refusal_is_logged_once_and_mail_continues(
    sock_path: str, caplog: pytest.LogCaptureFixture
) -> None:
    refusal = control.Failure(control.ErrorCode.REFUSED, "check: user policyd may not make queries")
    d = FakeDaemon(sock_path, lambda req: refusal)
    try:
        m, _ = make_milter(sock_path, MilterAction.TEMPFAIL)
        assert deliver(m, "<a@broken.example>", "<b@other.example>") == [Milter.CONTINUE] * 4
    finally:
        d.close()
    assert caplog.text.count("unavailable: refused: check: user policyd may not") == 1


def test_client_survives_a_garbage_reply(sock_path: str) -> None:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(sock_path)
    server.listen(1)

    def babble() -> None:
        conn, _ = server.accept()
        conn.recv(4096)
        conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n\n")
        conn.close()

    t = threading.Thread(target=babble, daemon=True)
    t.start()
    try:
        assert DaemonLink(ControlClient(sock_path, BOUND)).exchange([control.Status()]) == []
    finally:
        t.join(2)
        server.close()


# -- the milter callbacks, without libmilter -------------------------------------------


class FakeCtx:
    """Stands in for libmilter's milterContext (what Milter.Base calls on it)."""

    def __init__(self) -> None:
        self.priv: object = None
        self.headers: list[tuple[str, str]] = []
        self.reply: tuple[str, str | None, str | None] | None = None

    def setpriv(self, priv: object) -> None:
        self.priv = priv

    def getpriv(self) -> object:
        return self.priv

    def getsymval(self, name: str) -> str | None:
        return "4QueueId" if name == "i" else None

    def addheader(self, field: str, value: str, idx: int) -> None:
        self.headers.append((field, value))

    def setreply(self, rcode: str, xcode: str | None, msg: str | None, *more: str) -> None:
        self.reply = (rcode, xcode, msg)


def make_milter(path: str, action: MilterAction, **kw: Any) -> tuple[PolicydMilter, FakeCtx]:
    settings = MilterSettings(control=path, action=action, timeout=BOUND, **kw)
    m = pm.make_factory(Config(milter=settings))()
    ctx = FakeCtx()
    m._setctx(ctx)
    return m, ctx


def deliver(m: PolicydMilter, *rcpts: str) -> list[int]:
    results = [m.envfrom("<sender@example.net>")]
    results += [m.envrcpt(r) for r in rcpts]
    results.append(m.eom())
    return results


def test_warms_each_new_recipient_domain_once(daemon: FakeDaemon) -> None:
    m, _ = make_milter(daemon.path, MilterAction.NONE)
    results = deliver(m, "<a@Example.com>", "<b@example.com>", "<c@other.example>", "<d>")
    assert all(r == Milter.CONTINUE for r in results)
    warmed = [d.key for r in daemon.seen if isinstance(r, control.Warm) for d in r.destinations]
    assert warmed == ["example.com", "other.example"]
    assert not any(isinstance(r, control.Check) for r in daemon.seen)
    deliver(m, "<a@example.com>")  # within WARM_MEMO_SECONDS: no second round trip
    assert len([r for r in daemon.seen if isinstance(r, control.Warm)]) == 2


def test_log_action_warns_at_end_of_message(
    daemon: FakeDaemon, caplog: pytest.LogCaptureFixture
) -> None:
    m, ctx = make_milter(daemon.path, MilterAction.LOG)
    assert deliver(m, "<a@fine.example>", "<b@broken.example>")[-1] == Milter.CONTINUE
    checked = [r.destination.key for r in daemon.seen if isinstance(r, control.Check)]
    assert checked == ["fine.example", "broken.example"]
    assert f"4QueueId: broken.example: {PROBLEMS['broken.example']}" in caplog.text
    assert "fine.example:" not in caplog.text
    assert ctx.headers == []


def test_header_action_adds_one_header_per_problem(daemon: FakeDaemon) -> None:
    m, ctx = make_milter(daemon.path, MilterAction.HEADER)
    deliver(m, "<a@fine.example>", "<b@broken.example>")
    assert ctx.headers == [("X-Policyd-TLS", f"broken.example {PROBLEMS['broken.example']}")]


def test_tempfail_action_defers_the_recipient_at_rcpt(daemon: FakeDaemon) -> None:
    m, ctx = make_milter(daemon.path, MilterAction.TEMPFAIL)
    assert m.envfrom("<s@example.net>") == Milter.CONTINUE
    assert m.envrcpt("<a@fine.example>") == Milter.CONTINUE
    assert m.envrcpt("<b@broken.example>") == Milter.TEMPFAIL
    assert ctx.reply is not None and ctx.reply[:2] == ("451", "4.7.5")
    assert "broken.example" in (ctx.reply[2] or "")
    sent = len(daemon.seen)
    assert m.envrcpt("<c@broken.example>") == Milter.TEMPFAIL  # remembered for the message
    assert len(daemon.seen) == sent
    assert m.eom() == Milter.CONTINUE
    assert len(daemon.seen) == sent  # checked at RCPT already


def test_max_domains_bounds_the_work_per_message(daemon: FakeDaemon) -> None:
    m, _ = make_milter(daemon.path, MilterAction.LOG, max_domains=2)
    deliver(m, "<a@one.example>", "<a@two.example>", "<a@three.example>")
    checked = [r.destination.key for r in daemon.seen if isinstance(r, control.Check)]
    assert checked == ["one.example", "two.example"]


@pytest.mark.parametrize("action", list(MilterAction))
def test_a_stuck_daemon_costs_at_most_the_bound(stuck: FakeDaemon, action: MilterAction) -> None:
    m, ctx = make_milter(stuck.path, action)
    m.envfrom("<s@example.net>")
    callbacks: list[Callable[[], int]] = [lambda: m.envrcpt("<a@slow.example>"), m.eom]
    for callback in callbacks:
        started = time.monotonic()
        assert callback() == Milter.CONTINUE
        assert time.monotonic() - started < BOUND + MARGIN
    assert ctx.headers == [] and ctx.reply is None


@pytest.mark.parametrize("action", list(MilterAction))
def test_a_dead_daemon_never_stops_mail(sock_path: str, action: MilterAction) -> None:
    m, _ = make_milter(sock_path, action)
    assert deliver(m, "<a@broken.example>") == [Milter.CONTINUE] * 3


def test_an_internal_error_is_logged_and_mail_continues(
    daemon: FakeDaemon, caplog: pytest.LogCaptureFixture
) -> None:
    m, _ = make_milter(daemon.path, MilterAction.HEADER)
    m.envfrom("<s@example.net>")
    m.envrcpt("<b@broken.example>")
    m._setctx(None)  # addheader now fails inside the callback
    assert m.eom() == Milter.CONTINUE
    assert "internal error; mail continues" in caplog.text


def test_problem_text_is_made_safe_for_smtp_and_headers() -> None:
    assert pm.one_line("a\r\nb\tc\x00 ü") == "a b c? ?"
    assert len(pm.one_line("x" * 5000)) == pm.MAX_TEXT
