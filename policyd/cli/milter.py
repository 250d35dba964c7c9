"""``policyd-milter``: warm policyd's answer for each recipient domain while the client is
still in the SMTP dialogue, and optionally warn about (or defer) mail whose destination's
enforced TLS policy cannot currently be met. See policyd-milter(8).

Why a separate process, talking to the daemon only through its control socket (commands
``warm`` and ``check``) rather than a milter listener inside the daemon:

* pymilter runs each SMTP connection's callbacks on libmilter's own POSIX threads. Kept
  in another process, those threads never touch the daemon's asyncio loop, its caches or
  its store, so no cross-thread bridge can stall or corrupt the socketmap hot path.
* Least privilege: the milter needs a listening socket for Postfix's smtpd and the right
  to send two read-only commands; it never resolves, fetches or probes anything itself.
* A bounded cost: every exchange with the daemon has one deadline
  (``[milter] timeout``, default 0.5 s) on a blocking unix socket. A slow, dead or
  restarting daemon costs an SMTP client at most that bound per RCPT (and once at
  end-of-message), after which the milter answers CONTINUE: policyd being down never
  stalls, defers or rejects mail. So does any other error here.

Actions (``[milter] action``): ``none`` only warms; ``log`` (default) logs a warning at
end of message for each recipient domain with a problem; ``header`` also adds
``X-Policyd-TLS: <domain> <problem>``; ``tempfail`` checks at RCPT time instead and answers
``451 4.7.5`` for a recipient in such a domain (Postfix retries; the client keeps the mail).

Its settings are the ``[milter]`` table of policyd.toml (:class:`policyd.settings.
MilterSettings`), read by :mod:`policyd.config` with the rest of the file, which
``--check-config`` checks whole. Every exchange with the daemon goes through the one
function :func:`make_exchange` returns.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Final

import Milter

from policyd import __version__
from policyd.cli.control_client import ControlClient, ControlError
from policyd.cli.logs import setup_logging
from policyd.cli.startup import config_or_exit
from policyd.codec import control
from policyd.codec.destination import DestinationError, parse_key
from policyd.config import DEFAULT_CONFIG_PATH, Config
from policyd.core.types import SMTP_PORT
from policyd.settings import MilterAction, MilterSettings

log = logging.getLogger("policyd.milter")

# Domains warmed within this many seconds are not warmed again, by any connection: the
# daemon keeps their evidence fresh, and a busy domain should not cost a round trip a mail.
WARM_MEMO_SECONDS: Final = 60.0
WARM_MEMO_ENTRIES: Final = 10_000  # domains remembered; the oldest are forgotten first
HEADER: Final = "X-Policyd-TLS"
MAX_TEXT: Final = 400  # characters of a problem in a header, log line or SMTP reply
TEMPFAIL_REPLY: Final = ("451", "4.7.5")  # RFC 3463 X.7.5: cryptographic failure
MILTER_NAME: Final = "policyd-milter"


def control_path(config: Config) -> str:
    """The daemon's control socket: ``[milter] control``, or else ``[server] control``, so
    that one file configures both ends."""
    return config.milter.control_path or config.server.control.path


# -- the daemon, with a deadline -------------------------------------------------------


# Requests sent on one connection -> the replies that arrived within the bound, in order.
Exchange = Callable[[Sequence[control.Request]], list[control.Reply]]


class DaemonLink:
    """The milter's exchanges with the daemon, through the one control client, with the
    daemon's health logged when it becomes unavailable and when it is back, not on every
    failure. Safe to share between libmilter threads: each exchange has its own connection.
    """

    def __init__(self, client: ControlClient) -> None:
        self._client = client
        self._lock = threading.Lock()
        self._down = False

    def exchange(self, requests: Sequence[control.Request]) -> list[control.Reply]:
        """Send the requests on one connection; the replies that arrived in time, in order."""
        try:
            replies = self._client.exchange(requests)
        except ControlError as exc:
            self._health(exc.message)
            return list(exc.replies)
        # A refusal (the milter's user is not in [control] read_group) is an outage too.
        failed = [r for r in replies if isinstance(r, control.Failure)]
        self._health(f"{failed[0].code.value}: {failed[0].message}" if failed else None)
        return replies

    def _health(self, problem: str | None) -> None:
        with self._lock:
            was_down, self._down = self._down, problem is not None
        path = self._client.path
        if problem is not None and not was_down:
            log.warning("policyd at %s unavailable: %s; mail continues", path, problem)
        elif problem is None and was_down:
            log.info("policyd at %s answers again", path)


class WarmMemo:
    """Domains warmed recently, shared by all connections (bounded, thread-safe)."""

    def __init__(self, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._at: dict[str, float] = {}

    def claim(self, keys: Sequence[str]) -> list[str]:
        """The keys not warmed in the last WARM_MEMO_SECONDS, now marked as warmed."""
        now = self._monotonic()
        fresh: list[str] = []
        with self._lock:
            for key in keys:
                at = self._at.get(key)
                if at is not None and now - at < WARM_MEMO_SECONDS:
                    continue
                self._at.pop(key, None)
                self._at[key] = now
                fresh.append(key)
            while len(self._at) > WARM_MEMO_ENTRIES:
                del self._at[next(iter(self._at))]
        return fresh


def one_line(text: str) -> str:
    """A problem made safe for a header, a log line and an SMTP reply."""
    clean = "".join(
        " " if c.isspace() else c if c.isprintable() and c.isascii() else "?" for c in text
    )
    return " ".join(clean.split())[:MAX_TEXT]


def recipient_domain(rcpt: str) -> str | None:
    """``<user@Exämple.COM>`` -> ``xn--exmple-cua.com``; None for anything without a
    domain or with an address literal (nothing to look up)."""
    address = rcpt.strip().removeprefix("<").removesuffix(">")
    _, at, domain = address.rpartition("@")
    if not at or not domain or domain.startswith("["):
        return None
    try:
        dest = parse_key(domain)
    except DestinationError:
        return None
    if dest.bracketed or dest.parent_form or dest.port != SMTP_PORT:
        return None
    return dest.key


# -- the milter ------------------------------------------------------------------------


def _problems(replies: Sequence[control.Reply]) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    for reply in replies:
        if not isinstance(reply, control.Ok) or not isinstance(reply.result, dict):
            continue
        domain, problem = reply.result.get("destination"), reply.result.get("problem")
        if isinstance(domain, str) and isinstance(problem, str) and problem:
            found.append((domain, one_line(problem)))
    return found


class PolicydMilter(Milter.Base):  # type: ignore[misc]  # pymilter ships no types
    """One SMTP connection. Every callback returns CONTINUE unless ``tempfail`` applies."""

    def __init__(self, settings: MilterSettings, exchange: Exchange, memo: WarmMemo) -> None:
        super().__init__()
        self.settings = settings
        self.exchange = exchange
        self.memo = memo
        self.domains: list[str] = []  # this message's recipient domains, in order
        self._deferred: set[str] = set()  # domains answered 451 at RCPT in this message

    def _guard(self, callback: Callable[[], int]) -> int:
        # The callback boundary is this milter's per-connection loop: an exception escaping
        # into pymilter becomes a TEMPFAIL for the client, so nothing may escape.
        try:
            return callback()
        except Exception:
            log.exception("%s: internal error; mail continues", MILTER_NAME)
            return int(Milter.CONTINUE)

    def envfrom(self, mailfrom: str, *params: str) -> int:
        self.domains = []
        self._deferred = set()
        return int(Milter.CONTINUE)

    def envrcpt(self, to: str, *params: str) -> int:
        return self._guard(lambda: self._recipient(to))

    def _recipient(self, to: str) -> int:
        domain = recipient_domain(to)
        if domain is None:
            return int(Milter.CONTINUE)
        if domain in self._deferred:
            return self._tempfail(domain, "", logged=True)
        if domain in self.domains or len(self.domains) >= self.settings.max_domains:
            return int(Milter.CONTINUE)
        self.domains.append(domain)
        dest = parse_key(domain)
        requests: list[control.Request] = []
        if self.memo.claim([domain]):
            requests.append(control.Warm((dest,)))
        if self.settings.action is MilterAction.TEMPFAIL:
            requests.append(control.Check(dest))
        if not requests:
            return int(Milter.CONTINUE)
        for found, problem in _problems(self.exchange(requests)):
            if found == domain:
                self._deferred.add(domain)
                return self._tempfail(domain, problem, logged=False)
        return int(Milter.CONTINUE)

    def _tempfail(self, domain: str, problem: str, *, logged: bool) -> int:
        if not logged:
            log.warning("%s: %s: deferring recipient: %s", self._queue_id(), domain, problem)
        text = f"TLS policy for {domain} cannot be met now, try again later"
        self.setreply(*TEMPFAIL_REPLY, text.replace("%", "%%"))
        return int(Milter.TEMPFAIL)

    def eom(self) -> int:
        return self._guard(self._end_of_message)

    def _end_of_message(self) -> int:
        action = self.settings.action
        if action in (MilterAction.NONE, MilterAction.TEMPFAIL) or not self.domains:
            return int(Milter.CONTINUE)
        checks: list[control.Request] = [control.Check(parse_key(d)) for d in self.domains]
        for domain, problem in _problems(self.exchange(checks)):
            log.warning("%s: %s: %s", self._queue_id(), domain, problem)
            if action is MilterAction.HEADER:
                self.addheader(HEADER, f"{domain} {problem}")
        return int(Milter.CONTINUE)

    def abort(self) -> int:
        self.domains = []
        self._deferred = set()
        return int(Milter.CONTINUE)

    def _queue_id(self) -> str:
        qid = self.getsymval("i")  # Postfix sends it at RCPT and end of message
        return qid if isinstance(qid, str) and qid else "NOQUEUE"


# -- the program -----------------------------------------------------------------------


def make_exchange(config: Config) -> Exchange:
    """The milter's one link to the daemon (every callback goes through it)."""
    return DaemonLink(ControlClient(control_path(config), config.milter.timeout)).exchange


def make_factory(config: Config) -> Callable[[], PolicydMilter]:
    exchange = make_exchange(config)
    memo = WarmMemo()
    return lambda: PolicydMilter(config.milter, exchange, memo)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=MILTER_NAME,
        description="A milter for Postfix's smtpd (smtpd_milters): while a message is "
        "being received, ask policyd to look up each recipient domain's TLS policy, so "
        "the answer is ready when the mail leaves; optionally log, tag or defer mail whose "
        "domain's enforced TLS policy cannot be met now ([milter] action). If policyd is "
        "slow or down, mail goes on unchecked. See policyd-milter(8).",
    )
    parser.add_argument(
        "--config",
        default=DEFAULT_CONFIG_PATH,
        metavar="PATH",
        help=f"policyd.toml, whose [milter] table is read (default {DEFAULT_CONFIG_PATH})",
    )
    parser.add_argument(
        "--check-config",
        action="store_true",
        help="check the configuration file, print what is wrong or 'ok', and exit",
    )
    parser.add_argument("--version", action="version", version=f"{MILTER_NAME} {__version__}")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    config = config_or_exit(MILTER_NAME, args.config, check_only=args.check_config)
    if isinstance(config, int):
        return config
    settings = config.milter
    setup_logging(MILTER_NAME, logging.INFO)
    Milter.factory = make_factory(config)
    # Ask Postfix only for the one modification this milter may make.
    flags = Milter.ADDHDRS if settings.action is MilterAction.HEADER else 0
    Milter.set_flags(flags)
    log.info(
        "listening on %s, daemon %s, action %s, bound %gs",
        settings.socket,
        control_path(config),
        settings.action.value,
        settings.timeout,
    )
    try:
        Milter.runmilter(MILTER_NAME, settings.socket, timeout=0)
    except Milter.milter.error as exc:
        log.error("cannot run: %s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
